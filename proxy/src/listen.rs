//! The capture listeners (outbound 127.0.0.1:15001, inbound 0.0.0.0:15006).
//!
//! Connections arrive through iptables REDIRECT. For each one: recover the original destination
//! (`SO_ORIGINAL_DST` / `IP6T_SO_ORIGINAL_DST`), refuse loops to the proxy itself, decide the
//! protocol (rules first, then sniffing), and hand HTTP to Pingora's HTTP proxy or copy opaque
//! TCP bytes to the destination.

use crate::detect::{self, Detected, SniffEnd};
use crate::guard::{self, Guard, HeadRead};
use crate::http::MeshHttp;
use crate::rules::Protocol;
use crate::state::{Direction, Settings, Shared};
use crate::telemetry::{self, flags, Metrics, TcpLabels, TcpLogEntry};
use crate::upstream;
use async_trait::async_trait;
use pingora::apps::{HttpServerApp, ServerApp};
use pingora::protocols::Stream;
use pingora::proxy::HttpProxy;
use pingora::server::ShutdownWatch;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::{debug, info, warn};

/// Is `dst` the proxy's own capture listener (which would make a loop)?
/// `local` is the address the connection was accepted on.
pub fn is_self_destination(
    dst: SocketAddr,
    local: Option<SocketAddr>,
    listeners: &[SocketAddr],
) -> bool {
    if Some(dst) == local {
        return true;
    }
    listeners.iter().any(|l| {
        l.port() == dst.port()
            && (l.ip() == dst.ip()
                || dst.ip().is_loopback()
                || dst.ip().is_unspecified()
                || (l.ip().is_unspecified() && local.is_some_and(|a| a.ip() == dst.ip())))
    })
}

/// The `ServerApp` behind each capture listener.
pub struct CaptureApp {
    pub dir: Direction,
    pub shared: Arc<Shared>,
    /// HTTP/1.1 proxy (h2c off: we already know it is HTTP/1).
    pub h1: Arc<HttpProxy<MeshHttp>>,
    /// h2c proxy (prior knowledge: the preface was seen).
    pub h2: Arc<HttpProxy<MeshHttp>>,
    /// DNS for TCP routes to hosts without endpoints.
    pub resolver: Arc<upstream::HostResolver>,
    /// Abuse limits and the per-proxy connection cap (one `Guard` shared by every listener).
    pub guard: Arc<Guard>,
}

impl CaptureApp {
    fn refuse(&self, reason: &'static str, detail: String) {
        warn!(
            listener = self.dir.as_str(),
            reason, "refused connection: {detail}"
        );
        Metrics::get()
            .refused_connections
            .with_label_values(&[self.dir.as_str(), reason])
            .inc();
    }
}

#[async_trait]
impl ServerApp for CaptureApp {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        // The per-proxy connection cap comes first: nothing is read from a connection over it.
        let Some(_slot) = self.guard.gate.try_acquire(self.dir.as_str()) else {
            guard::record(
                self.dir.as_str(),
                guard::Reject::ConnectionLimit,
                &format!(
                    "{} downstream connections open (--max-downstream-connections); closed",
                    self.guard.limits.max_connections
                ),
            );
            return None;
        };
        let digest = stream.get_socket_digest();
        let local = digest
            .as_ref()
            .and_then(|d| d.local_addr())
            .and_then(|a| a.as_inet())
            .copied();
        let peer = digest
            .as_ref()
            .and_then(|d| d.peer_addr())
            .and_then(|a| a.as_inet())
            .copied();
        let Some(dst) = self.shared.original_dst(self.dir, digest.as_deref()) else {
            self.refuse(
                "no_original_dst",
                format!("from {peer:?}: no original destination (not redirected by iptables?)"),
            );
            return None;
        };
        let s = &self.shared.settings;
        if is_self_destination(dst, local, &self.shared.all_listener_addrs()) {
            self.refuse(
                "loop",
                format!("from {peer:?}: original destination {dst} is the proxy's own listener"),
            );
            return None;
        }
        let declared = self.shared.snapshot.load().port_protocol(dst, None);
        let (wait, is_http_port) = match declared {
            Some(Protocol::Tcp) => (None, false),
            // TLS: look for the SNI (bounded), never for HTTP.
            Some(Protocol::Tls) => (Some(s.sniff_timeout), false),
            Some(_) => (Some(s.http_first_byte_timeout), true),
            None => (Some(s.sniff_timeout), false),
        };
        let (stream, detected, how, sni) = match wait {
            None => (stream, Detected::Tcp, "rules", None),
            Some(wait) => match detect::sniff(stream, wait).await {
                Ok(x) => {
                    let how = match (declared, x.end) {
                        (Some(_), _) => "rules+sniff",
                        (None, SniffEnd::Timeout) => "sniff-timeout",
                        (None, SniffEnd::Closed) => "sniff-closed",
                        (None, _) => "sniff",
                    };
                    let detected = match (declared, x.detected, x.end) {
                        (Some(Protocol::Tls), _, _) => Detected::Tcp,
                        (_, Detected::Tcp, SniffEnd::Timeout) if is_http_port => Detected::Http1,
                        (_, d, _) => d,
                    };
                    if is_http_port && detected == Detected::Tcp {
                        warn!(%dst, "port declared HTTP but the client sent non-HTTP bytes; proxying as TCP");
                    }
                    (x.stream, detected, how, x.sni)
                }
                Err(e) => {
                    warn!(%dst, "dropping connection: {e}");
                    return None;
                }
            },
        };
        debug!(listener = self.dir.as_str(), %dst, ?peer, ?detected, how, ?sni, "connection classified");
        match detected {
            // h2c: Pingora serves the whole connection (h2 settings carry the limits).
            Detected::H2c => self.h2.process_new(stream, shutdown).await.and(None),
            Detected::Http1 => {
                self.serve_http1(stream, shutdown).await;
                None
            }
            Detected::Tcp => {
                proxy_tcp(self, stream, dst, peer, sni).await;
                None
            }
        }
    }
}

impl CaptureApp {
    /// Serve an HTTP/1 connection request by request: each request head is read under the
    /// abuse limits (`guard::read_head`) before Pingora parses it; between requests the idle
    /// timeout applies. This is Pingora's own keep-alive loop (`ServerApp for HttpServerApp`)
    /// with the guard in front of every request.
    async fn serve_http1(&self, stream: Stream, shutdown: &ShutdownWatch) {
        let listener = self.dir.as_str();
        let limits = &self.guard.limits;
        let keepalive_secs = limits.idle_timeout.as_secs().max(1);
        let mut next: Option<(Stream, Option<pingora::apps::HttpPersistentSettings>)> =
            Some((stream, None));
        let mut keepalive = false;
        while let Some((stream, persisted)) = next.take() {
            let stream = match guard::read_head(stream, limits, listener, keepalive).await {
                HeadRead::Ready(s) => s,
                HeadRead::Closed | HeadRead::Rejected(_) => return,
            };
            let mut session = pingora::protocols::http::ServerSession::new_http1(stream);
            match persisted {
                Some(p) => p.apply_to_session(&mut session),
                None => {
                    session.set_keepalive(if *shutdown.borrow() {
                        None
                    } else {
                        Some(keepalive_secs)
                    });
                    session.set_keepalive_reuses_remaining(
                        self.h1
                            .server_options
                            .as_ref()
                            .and_then(|o| o.keepalive_request_limit),
                    );
                }
            }
            let reused = HttpServerApp::process_new_http(&self.h1, session, shutdown).await;
            if *shutdown.borrow() {
                return;
            }
            next = reused.map(|r| {
                let (s, p) = r.consume();
                (s, p)
            });
            keepalive = true;
        }
    }
}

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
        }
    }
}

/// What the rules make of an outbound opaque TCP connection, or `Err((flag, reason))` when they
/// forbid it. A host chosen by a `tcp`/`tls` route or by its default route (a ServiceEntry
/// address, a Service's ClusterIP) gets its DestinationRule: the endpoint is picked by its load
/// balancer (consistent hashing by source IP), skipping ejected ones.
async fn tcp_decision(
    shared: &Shared,
    resolver: &upstream::HostResolver,
    dst: SocketAddr,
    sni: Option<&str>,
    peer: Option<SocketAddr>,
) -> Result<TcpPlan, (&'static str, String)> {
    let (f, port, picked, dest) = {
        let snap = shared.snapshot.load();
        let mut rng = rand::thread_rng();
        let f = match crate::route::route_tcp(&snap, dst, sni, &mut rng) {
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
        (f, port, picked, dest)
    };
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
    })
}

/// How a copy ended, as the access log and metrics report it.
fn copy_outcome(
    dir: Direction,
    target: SocketAddr,
    idle: Duration,
    labels: &mut TcpLabels,
    end: (guard::CopyEnd, u64, u64),
) -> (u64, u64, Option<String>) {
    match end {
        (guard::CopyEnd::Done, rx, tx) => (rx, tx, None),
        (guard::CopyEnd::Idle, rx, tx) => {
            guard::record(
                dir.as_str(),
                guard::Reject::IdleTimeout,
                &format!(
                    "opaque TCP connection to {target} idle for {}s; closed",
                    idle.as_secs()
                ),
            );
            (rx, tx, Some(format!("idle for {}s", idle.as_secs())))
        }
        (guard::CopyEnd::Error(e), rx, tx) => {
            labels.response_flags = flags::UPSTREAM_TERMINATION.to_string();
            (rx, tx, Some(format!("copy: {e}")))
        }
    }
}

/// Copy bytes both ways between the downstream and the destination (closed when idle for
/// `--idle-timeout-seconds`).
async fn proxy_tcp(
    app: &CaptureApp,
    mut down: Stream,
    dst: SocketAddr,
    peer: Option<SocketAddr>,
    sni: Option<String>,
) {
    let (dir, shared, resolver) = (app.dir, &*app.shared, &*app.resolver);
    let idle = app.guard.limits.idle_timeout;
    let s = &shared.settings;
    let start = Instant::now();
    let started_at = telemetry::accesslog::now_rfc3339();
    let bind = match dir {
        Direction::Inbound => s.inbound_bind,
        Direction::Outbound => None,
    };
    let decided = match dir {
        Direction::Outbound => tcp_decision(shared, resolver, dst, sni.as_deref(), peer).await,
        Direction::Inbound => Ok(TcpPlan::direct(dst)),
    };
    let mut labels = tcp_labels(dir, s, dst);
    let metrics = Metrics::get();
    let refuse = |labels: &mut TcpLabels, flag: &str, reason: String| {
        // Refused by the rules (e.g. REGISTRY_ONLY) or a connection limit: close, count, log.
        labels.response_flags = flag.to_string();
        warn!(listener = dir.as_str(), %dst, "tcp connection refused: {reason}");
        metrics.tcp_open(labels);
        metrics.tcp_close(labels, 0, 0);
        s.access_log.write(&TcpLogEntry {
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
        });
    };
    let plan = match decided {
        Ok(plan) => plan,
        Err((flag, reason)) => return refuse(&mut labels, flag, reason),
    };
    if let Some(svc) = &plan.service {
        labels.destination_service = svc.clone();
    }
    let target = plan.target;
    // `connectionPool.tcp.maxConnections`: held until the connection ends.
    let _slot = match plan.dest.as_ref().map(|(d, _)| d.admit_connection()) {
        None | Some(Ok(None)) => None,
        Some(Ok(Some(permit))) => Some(permit),
        Some(Err(o)) => {
            let reason = format!("{} for {}", o.reason(), labels.destination_service);
            return refuse(&mut labels, flags::UPSTREAM_OVERFLOW, reason);
        }
    };
    let connect_timeout = plan.dest.as_ref().map_or(s.connect_timeout, |(d, _)| {
        s.connect_timeout
            .min(d.policy.connection_pool.connect_timeout)
    });
    metrics.tcp_open(&labels);
    let connected =
        upstream::connect_tcp(target, bind, s.inbound_bind_fallback, connect_timeout).await;
    if let Some((d, total)) = plan.dest.as_ref().filter(|_| plan.balanced) {
        let seen = match &connected {
            Ok(_) => crate::policy::outlier::Observed::Status(200),
            Err(_) => crate::policy::outlier::Observed::LocalFailure,
        };
        d.record(target, seen, *total);
    }
    let (upstream, received, sent, reason) = match connected {
        Ok(mut up) => {
            let local = up.local_addr().ok();
            match &plan.tls {
                None => {
                    let end = guard::copy_with_idle(&mut down, &mut up, idle).await;
                    let (rx, tx, why) = copy_outcome(dir, target, idle, &mut labels, end);
                    (local, rx, tx, why)
                }
                Some((config, sni)) => {
                    match upstream::tls_connect(config.clone(), sni, up, connect_timeout).await {
                        Ok(mut tls) => {
                            let end = guard::copy_with_idle(&mut down, &mut tls, idle).await;
                            let (rx, tx, why) = copy_outcome(dir, target, idle, &mut labels, end);
                            (local, rx, tx, why)
                        }
                        Err(e) => {
                            labels.response_flags = flags::UPSTREAM_CONNECT_FAILURE.to_string();
                            warn!(listener = dir.as_str(), %dst, %target, "tcp upstream TLS handshake failed: {e}");
                            (local, 0, 0, Some(format!("tls: {e}")))
                        }
                    }
                }
            }
        }
        Err(e) => {
            labels.response_flags = flags::UPSTREAM_CONNECT_FAILURE.to_string();
            warn!(listener = dir.as_str(), %dst, %target, "tcp upstream connect failed: {e}");
            (None, 0, 0, Some(format!("connect: {e}")))
        }
    };
    metrics.tcp_close(&labels, received, sent);
    s.access_log.write(&TcpLogEntry {
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
    });
}

fn tcp_labels(dir: Direction, s: &Settings, dst: SocketAddr) -> TcpLabels {
    let (sw, sns, dw, dns) = match dir {
        Direction::Outbound => (
            s.workload.name.clone(),
            s.workload.namespace.clone(),
            "unknown".to_string(),
            "unknown".to_string(),
        ),
        Direction::Inbound => (
            "unknown".to_string(),
            "unknown".to_string(),
            s.workload.name.clone(),
            s.workload.namespace.clone(),
        ),
    };
    TcpLabels {
        reporter: dir.reporter(),
        source_workload: sw,
        source_workload_namespace: sns,
        destination_workload: dw,
        destination_workload_namespace: dns,
        destination_service: dst.to_string(),
        response_flags: flags::NONE.to_string(),
    }
}

/// The default inbound source address (see docs/architecture.md).
pub const INBOUND_SOURCE: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 6));

/// Log what the listeners are and how connections will be treated.
pub fn log_listeners(s: &Settings) {
    info!(
        outbound = %s.outbound_addr,
        inbound = %s.inbound_addr,
        outbound6 = ?s.outbound_addr6,
        inbound6 = ?s.inbound_addr6,
        sniff_timeout_ms = s.sniff_timeout.as_millis() as u64,
        inbound_source = ?s.inbound_bind,
        fixed_outbound_target = ?s.fixed_outbound_target,
        fixed_inbound_target = ?s.fixed_inbound_target,
        "capture listeners configured"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loop_detection_table() {
        let out: SocketAddr = "127.0.0.1:15001".parse().unwrap();
        let inb: SocketAddr = "0.0.0.0:15006".parse().unwrap();
        let ls = [out, inb];
        let cases: &[(&str, Option<&str>, bool)] = &[
            ("127.0.0.1:15001", Some("127.0.0.1:15001"), true),
            ("127.0.0.1:15001", None, true),
            ("127.0.0.5:15006", None, true),
            ("10.1.2.3:15006", Some("10.1.2.3:15006"), true),
            ("10.1.2.3:15006", Some("127.0.0.1:15006"), false),
            ("0.0.0.0:15006", None, true),
            ("10.1.2.3:8080", Some("10.1.2.3:15006"), false),
            ("127.0.0.1:8080", Some("127.0.0.1:15001"), false),
            ("93.184.216.34:15001", Some("127.0.0.1:15001"), false),
            ("[::1]:15001", None, true),
        ];
        for (dst, local, want) in cases {
            let dst: SocketAddr = dst.parse().unwrap();
            let local = local.map(|l| l.parse().unwrap());
            assert_eq!(
                is_self_destination(dst, local, &ls),
                *want,
                "{dst} {local:?}"
            );
        }
    }
}
