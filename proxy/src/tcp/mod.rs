//! Opaque TCP: where a connection that is not HTTP goes (outbound: the rules' `tcp`/`tls`
//! routes and the destination's DestinationRule; inbound: the original destination), the
//! connection to it (with TLS origination when the rules ask), the byte copy ([`copy`]), and
//! its metrics and access-log line.

pub mod copy;

pub use copy::{copy_with_idle, CopyEnd};

use crate::guard;
use crate::state::{Direction, Settings, Shared};
use crate::telemetry::{self, flags, Metrics, TcpLabels, TcpLogEntry};
use crate::upstream::{self, HostResolver};
use pingora::protocols::Stream;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::warn;

/// Where an opaque TCP connection goes and under which policy.
struct TcpPlan {
    target: SocketAddr,
    /// The service host the rules chose (metrics label).
    service: Option<String>,
    route_name: Option<String>,
    /// The host's shared state under its DestinationRule (load balancing already applied),
    /// and how many endpoints it had: connection limits, connect timeout, outlier detection,
    /// TLS origination.
    dest: Option<(Arc<crate::policy::Destination>, usize)>,
    /// Originate TLS (DestinationRule `tls` SIMPLE / MUTUAL): client settings and SNI.
    tls: Option<(Arc<rustls::ClientConfig>, String)>,
    /// The target is one of the destination's endpoints (outlier detection watches it), not a
    /// DNS answer or the original destination.
    balanced: bool,
    /// Mesh mTLS to the target (`mtls::decide`): what the server's identity must be.
    mesh: Option<crate::mtls::outbound::Expect>,
    /// The target endpoint's labels in the rules (for the destination's labels in metrics).
    endpoint_labels: Option<std::collections::BTreeMap<String, String>>,
}

impl TcpPlan {
    fn direct(dst: SocketAddr) -> TcpPlan {
        TcpPlan {
            target: dst,
            service: None,
            route_name: None,
            dest: None,
            tls: None,
            balanced: false,
            mesh: None,
            endpoint_labels: None,
        }
    }
}

/// What the rules make of an outbound opaque TCP connection, or `Err((flag, reason))` when they
/// forbid it. A host chosen by a `tcp`/`tls` route or by its default route (a ServiceEntry
/// address, a Service's ClusterIP) gets its DestinationRule: the endpoint is picked by its load
/// balancer (consistent hashing by source IP), skipping ejected ones.
async fn tcp_decision(
    shared: &Shared,
    resolver: &HostResolver,
    dst: SocketAddr,
    sni: Option<&str>,
    peer: Option<SocketAddr>,
    decided: Option<crate::route::Decision>,
) -> Result<TcpPlan, (&'static str, String)> {
    let (f, port, picked, dest, domain) = {
        let snap = shared.snapshot.load();
        let mut rng = rand::thread_rng();
        let decision = match decided {
            Some(d) => d,
            None => crate::route::route_tcp(&snap, dst, sni, &mut rng),
        };
        let f = match decision {
            crate::route::Decision::Forward(f) => f,
            crate::route::Decision::Passthrough => return Ok(TcpPlan::direct(dst)),
            crate::route::Decision::Deny { reason, .. } => return Err((flags::NO_ROUTE, reason)),
            crate::route::Decision::Redirect { .. }
            | crate::route::Decision::DirectResponse { .. } => {
                return Err((
                    flags::NO_ROUTE,
                    "an HTTP-only rule matched an opaque TCP connection".to_string(),
                ))
            }
        };
        let port = if f.port == 0 { dst.port() } else { f.port };
        let dest = shared
            .policies
            .destination(&snap, &f.host, f.subset.as_deref(), port);
        let headers = http::HeaderMap::new();
        let input = crate::policy::lb::HashInput {
            headers: &headers,
            path: "",
            source_ip: peer.map(|p| p.ip()),
        };
        let picked = dest.pick(&f.endpoints, &[], Some(&input), &mut rng);
        (f, port, picked, dest, snap.ctx.cluster_domain.clone())
    };
    // Mesh mTLS: the DestinationRule's `tls`, else whether the endpoint has a sidecar. Never
    // for TLS routed by SNI (the app's own TLS goes through as it is).
    let meshed = picked.is_some_and(|a| {
        f.endpoints
            .iter()
            .any(|e| e.addr == a && crate::mtls::endpoint_meshed(&e.labels))
    });
    let (how, _why) = crate::mtls::decide(
        dest.policy.tls_set,
        dest.policy.tls_settings.mode,
        meshed,
        shared.identity.is_some(),
    );
    let mesh = (how == crate::mtls::Upstream::Mesh && sni.is_none()).then(|| {
        // Who the server must be: the service accounts discovery knows of the endpoints' pods.
        let snap = shared.snapshot.load();
        let chosen = picked.and_then(|a| snap.endpoints.pod_of_ip(a.ip()));
        let accounts = crate::mtls::expect::accounts(
            chosen.as_deref(),
            f.endpoints
                .iter()
                .map(|e| snap.endpoints.pod_of_ip(e.addr.ip())),
        );
        crate::mtls::outbound::Expect::new(&f.host, port, f.subset.as_deref(), &domain)
            .with_accounts(accounts)
    });
    // TLS passthrough (routed by SNI) is already TLS: never wrap it again.
    let tls = match dest.tcp_tls().filter(|_| sni.is_none()) {
        None => None,
        Some(Ok(t)) => Some(t),
        Some(Err(e)) => {
            return Err((
                flags::UPSTREAM_CONNECT_FAILURE,
                format!(
                "TLS origination to {} not possible: {e}; refused rather than sent in plain text",
                f.host
            ),
            ))
        }
    };
    let balanced = picked.is_some();
    let endpoint_labels = picked
        .and_then(|a| f.endpoints.iter().find(|e| e.addr == a))
        .map(|e| e.labels.clone())
        .filter(|l| !l.is_empty());
    let target = match picked {
        Some(a) => a,
        None if f.resolve_by_dns => resolver
            .resolve(&f.host, port, dst)
            .await
            .map_err(|e| (flags::NO_ROUTE, e))?,
        None => SocketAddr::new(dst.ip(), port),
    };
    Ok(TcpPlan {
        target,
        service: Some(f.host),
        route_name: f.route_name,
        dest: Some((dest, f.endpoints.len())),
        tls,
        balanced,
        mesh,
        endpoint_labels,
    })
}

/// How a copy ended, as the access log and metrics report it.
fn copy_outcome(
    metrics: &Metrics,
    dir: Direction,
    target: SocketAddr,
    idle: Duration,
    labels: &mut TcpLabels,
    end: (CopyEnd, u64, u64),
) -> (u64, u64, Option<String>) {
    match end {
        (CopyEnd::Done, rx, tx) => (rx, tx, None),
        (CopyEnd::Idle, rx, tx) => {
            guard::record(
                metrics,
                dir.as_str(),
                guard::Reject::IdleTimeout,
                &format!(
                    "opaque TCP connection to {target} idle for {}s; closed",
                    idle.as_secs()
                ),
            );
            (rx, tx, Some(format!("idle for {}s", idle.as_secs())))
        }
        (CopyEnd::Error(e), rx, tx) => {
            labels.response_flags = flags::UPSTREAM_TERMINATION.to_string();
            (rx, tx, Some(format!("copy: {e}")))
        }
    }
}

/// A connection at the gateway (`remora-proxy gateway`): the gateway's routing decision
/// (`remora_model::gateway::route_l4`). It is authorized (AuthorizationPolicy, as on a
/// sidecar's inbound side) before it is routed.
pub struct AtGateway(pub crate::route::Decision);

/// Copy bytes both ways between the downstream and the destination (closed when idle for
/// `--idle-timeout-seconds`). `gateway`: a gateway's connection, with the decision the gateway
/// made; else the sidecar's `route_tcp` decides (outbound).
#[allow(clippy::too_many_arguments)]
pub async fn proxy(
    dir: Direction,
    shared: &Shared,
    resolver: &HostResolver,
    idle: Duration,
    mut down: Stream,
    dst: SocketAddr,
    peer: Option<SocketAddr>,
    sni: Option<String>,
    gateway: Option<AtGateway>,
) {
    let s = &shared.settings;
    let start = Instant::now();
    let started_at = telemetry::accesslog::now_rfc3339();
    let bind = match dir {
        Direction::Inbound => s.inbound_bind,
        Direction::Outbound => None,
    };
    // Inbound over mesh mTLS: the client's identity (the listener terminated its TLS).
    let peer_info = match (dir, peer) {
        (Direction::Inbound, Some(p)) if shared.identity.is_some() => shared.peers.get(p),
        _ => None,
    };
    let peer_principal = peer_info.as_ref().map(|i| i.principal.clone());
    // The other side as far as known now: inbound, the client; outbound, not chosen yet.
    let other = match dir {
        Direction::Inbound => tcp_peer(shared, peer, peer_info.as_deref(), None, None),
        Direction::Outbound => telemetry::Peer::unknown(),
    };
    let mut labels = tcp_labels(dir, s, dst, other, peer_info.is_some());
    let metrics = &*shared.metrics;
    let refuse = |labels: &mut TcpLabels, flag: &str, reason: String, details: Option<String>| {
        // Refused by the rules (e.g. REGISTRY_ONLY) or a connection limit: close, count, log.
        labels.response_flags = flag.to_string();
        warn!(listener = dir.as_str(), %dst, "tcp connection refused: {reason}");
        metrics.tcp_open(labels);
        metrics.tcp_close(labels, 0, 0);
        write_log(
            shared,
            dir,
            metrics,
            &TcpLogEntry {
                start_time: started_at.clone(),
                kind: "tcp",
                direction: dir.as_str(),
                protocol: "tcp",
                duration_ms: start.elapsed().as_secs_f64() * 1000.0,
                upstream: None,
                original_dst: Some(dst.to_string()),
                downstream: peer.map(|p| p.to_string()),
                route_name: None,
                response_flags: labels.response_flags.clone(),
                bytes_received: 0,
                bytes_sent: 0,
                reason: Some(reason),
                connection_security_policy: hop_security(labels.connection_security_policy),
                peer_principal: peer_principal.clone(),
                connection_termination_details: details,
            },
        );
    };
    // Inbound and at the gateway: AuthorizationPolicy on what a TCP connection shows (peer
    // identity, addresses, the SNI of TLS the gateway read), before it is routed. At the
    // gateway the client has a principal only on an ISTIO_MUTUAL server (its handshake
    // recorded it).
    if dir == Direction::Inbound || gateway.is_some() {
        let principal = match (&gateway, peer) {
            (None, _) => peer_principal.clone(),
            (Some(_), Some(p)) if shared.identity.is_some() => {
                shared.peers.get(p).map(|i| i.principal.clone())
            }
            (Some(_), _) => None,
        };
        let snap = shared.snapshot.load();
        let denied = crate::http::authz::check_tcp(
            &snap,
            principal.as_deref(),
            peer,
            dst,
            sni.as_deref().filter(|_| gateway.is_some()),
        );
        if let Some(denied) = denied {
            metrics.authz_denied.with_label_values(&["tcp"]).inc();
            let reason = format!("connection {}", denied.reason);
            return refuse(&mut labels, flags::NONE, reason, Some(denied.details));
        }
    }
    let decided = match dir {
        Direction::Outbound => {
            let decided = gateway.map(|g| g.0);
            tcp_decision(shared, resolver, dst, sni.as_deref(), peer, decided).await
        }
        Direction::Inbound => Ok(TcpPlan::direct(dst)),
    };
    let plan = match decided {
        Ok(plan) => plan,
        Err((flag, reason)) => {
            // Istio's BlackHoleCluster (REGISTRY_ONLY): the label names it, not the address.
            if reason.starts_with(crate::route::BLACK_HOLE) {
                labels.destination_service = crate::route::BLACK_HOLE.to_string();
            }
            return refuse(&mut labels, flag, reason, None);
        }
    };
    match &plan.service {
        Some(svc) => labels.destination_service = svc.clone(),
        // Left to its original destination: Istio's PassthroughCluster, whatever the address.
        None if dir == Direction::Outbound => {
            labels.destination_service = telemetry::PASSTHROUGH.to_string()
        }
        None => {}
    }
    let target = plan.target;
    // `connectionPool.tcp.maxConnections`: held until the connection ends.
    let _slot = match plan.dest.as_ref().map(|(d, _)| d.admit_connection()) {
        None | Some(Ok(None)) => None,
        Some(Ok(Some(permit))) => Some(permit),
        Some(Err(o)) => {
            let reason = format!("{} for {}", o.reason(), labels.destination_service);
            return refuse(&mut labels, flags::UPSTREAM_OVERFLOW, reason, None);
        }
    };
    let connect_timeout = plan.dest.as_ref().map_or(s.connect_timeout, |(d, _)| {
        s.connect_timeout
            .min(d.policy.connection_pool.connect_timeout)
    });
    let connected =
        upstream::connect_tcp(target, bind, s.inbound_bind_fallback, connect_timeout).await;
    if let Some((d, total)) = plan.dest.as_ref().filter(|_| plan.balanced) {
        let seen = match &connected {
            Ok(_) => crate::policy::outlier::Observed::Status(200),
            Err(_) => crate::policy::outlier::Observed::LocalFailure,
        };
        d.record(target, seen, *total);
    }
    // The upstream stream (after mesh mTLS or TLS origination), the server's SPIFFE id (mesh
    // mTLS), or why there is none.
    let (up, server_id, local) = match connected {
        Ok(up) => {
            let local = up.local_addr().ok();
            match (&plan.mesh, &plan.tls) {
                (Some(expect), _) => {
                    let handshake = match shared.identity.as_ref() {
                        Some(identity) => {
                            crate::mtls::outbound::handshake(
                                identity,
                                crate::identity::Carried::Tcp,
                                expect,
                                up,
                                connect_timeout,
                            )
                            .await
                        }
                        None => Err(crate::mtls::expect::Refused {
                            label: "handshake",
                            message: "no workload identity".to_string(),
                        }),
                    };
                    match handshake {
                        Ok((tls, server)) => {
                            (Ok(Upstream::Tls(Box::new(tls))), Some(server), local)
                        }
                        Err(e) => {
                            metrics
                                .mtls_failures
                                .with_label_values(&["outbound", e.label])
                                .inc();
                            warn!(listener = dir.as_str(), %dst, %target, "tcp upstream mTLS failed: {e}");
                            (Err(format!("mtls: {e}")), None, local)
                        }
                    }
                }
                (None, None) => (Ok(Upstream::Plain(up)), None, local),
                (None, Some((config, sni))) => {
                    match upstream::tls_connect(config.clone(), sni, up, connect_timeout).await {
                        Ok(tls) => (Ok(Upstream::Tls(Box::new(tls))), None, local),
                        Err(e) => {
                            warn!(listener = dir.as_str(), %dst, %target, "tcp upstream TLS handshake failed: {e}");
                            (Err(format!("tls: {e}")), None, local)
                        }
                    }
                }
            }
        }
        Err(e) => {
            warn!(listener = dir.as_str(), %dst, %target, "tcp upstream connect failed: {e}");
            (Err(format!("connect: {e}")), None, None)
        }
    };
    if dir == Direction::Outbound {
        // The destination: the endpoint connected to, and over mesh mTLS the identity its
        // certificate proved.
        let mutual_tls = plan.mesh.is_some();
        labels.destination = tcp_peer(
            shared,
            Some(target),
            None,
            server_id.as_deref(),
            plan.endpoint_labels.as_ref(),
        );
        labels.source = s.workload.labels(mutual_tls).clone();
        labels.connection_security_policy = telemetry::peer::security_policy(false, mutual_tls);
    }
    if up.is_err() {
        labels.response_flags = flags::UPSTREAM_CONNECT_FAILURE.to_string();
    }
    metrics.tcp_open(&labels);
    let (upstream, received, sent, reason) = match up {
        Ok(Upstream::Tls(mut tls)) => {
            let end = copy_with_idle(&mut down, &mut tls, idle).await;
            let (rx, tx, why) = copy_outcome(metrics, dir, target, idle, &mut labels, end);
            (local, rx, tx, why)
        }
        Ok(Upstream::Plain(mut up)) => {
            let end = copy_with_idle(&mut down, &mut up, idle).await;
            let (rx, tx, why) = copy_outcome(metrics, dir, target, idle, &mut labels, end);
            (local, rx, tx, why)
        }
        Err(why) => (local, 0, 0, Some(why)),
    };
    metrics.tcp_close(&labels, received, sent);
    write_log(
        shared,
        dir,
        metrics,
        &TcpLogEntry {
            start_time: started_at,
            kind: "tcp",
            direction: dir.as_str(),
            protocol: "tcp",
            duration_ms: start.elapsed().as_secs_f64() * 1000.0,
            upstream: Some(target.to_string()),
            original_dst: Some(dst.to_string()),
            downstream: peer.map(|p| p.to_string()),
            route_name: plan.route_name,
            response_flags: labels.response_flags.clone(),
            bytes_received: received,
            bytes_sent: sent,
            reason: reason.or_else(|| upstream.map(|u| format!("upstream source {u}"))),
            connection_security_policy: hop_security(labels.connection_security_policy),
            peer_principal,
            connection_termination_details: None,
        },
    );
}

/// Write a connection's line where the Telemetry rules of its side say (`dir`'s: outbound is
/// the client side, inbound the server side).
fn write_log(shared: &Shared, dir: Direction, metrics: &Metrics, entry: &TcpLogEntry) {
    let side = match dir {
        Direction::Outbound => remora_model::telemetry::Side::Client,
        Direction::Inbound => remora_model::telemetry::Side::Server,
    };
    let snap = shared.snapshot.load();
    let targets = telemetry::accesslog::log_targets(
        &shared.settings.access_log_providers,
        snap.telemetry.side(side),
    );
    for a in targets.encodings(&shared.settings.access_log) {
        a.write_tcp(metrics, entry);
    }
}

/// What the access log says of the hop: `mutual_tls` or `none` (plain text), on both sides.
fn hop_security(policy: &'static str) -> &'static str {
    if policy == "mutual_tls" {
        policy
    } else {
        "none"
    }
}

/// A connected upstream: TLS (mesh mTLS or origination) or plain.
enum Upstream {
    /// Boxed: a TLS stream is a kilobyte, a TCP stream a few words.
    Tls(Box<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>),
    Plain(tokio::net::TcpStream),
}

/// The other side's labels of a TCP connection: inbound, the client at `addr` (its mTLS
/// identity `info`, decided once per connection); outbound, the endpoint `addr` (the server's
/// SPIFFE id `server` over mesh mTLS, the endpoint's labels in the rules). Its pod by address
/// from discovery either way.
fn tcp_peer(
    shared: &Shared,
    addr: Option<SocketAddr>,
    info: Option<&crate::mtls::inbound::PeerInfo>,
    server: Option<&str>,
    endpoint_labels: Option<&std::collections::BTreeMap<String, String>>,
) -> Arc<telemetry::Peer> {
    let snap = shared.snapshot.load();
    let pod = addr.and_then(|a| snap.endpoints.pod_of_ip(a.ip()));
    let facts = |principal| telemetry::peer::PeerFacts {
        principal,
        pod: pod.as_deref(),
        exchanged: None,
        endpoint_labels,
        cluster: &shared.settings.workload.plain.cluster,
    };
    if let Some(info) = info {
        let f = facts(Some(&info.principal));
        return info
            .labels
            .get_or_init(|| Arc::new(telemetry::peer::peer_of(&f)))
            .clone();
    }
    if server.is_none() && pod.is_none() && endpoint_labels.is_none() {
        return telemetry::Peer::unknown();
    }
    Arc::new(telemetry::peer::peer_of(&facts(server)))
}

/// The labels of a connection on `dir` to `dst`, `other` being the other side.
fn tcp_labels(
    dir: Direction,
    s: &Settings,
    dst: SocketAddr,
    other: Arc<telemetry::Peer>,
    mutual_tls: bool,
) -> TcpLabels {
    let me = s.workload.labels(mutual_tls).clone();
    let (source, destination) = match dir {
        Direction::Outbound => (me, other),
        Direction::Inbound => (other, me),
    };
    TcpLabels {
        reporter: dir.reporter(),
        source,
        destination,
        destination_service: dst.to_string(),
        response_flags: flags::NONE.to_string(),
        connection_security_policy: telemetry::peer::security_policy(
            dir == Direction::Inbound,
            mutual_tls,
        ),
    }
}
