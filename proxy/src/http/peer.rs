//! The upstream peer of a request: where and how Pingora connects (TLS origination, HTTP
//! version, connect/read/write/idle timeouts, TCP keep-alive, the inbound source address), and
//! whether a new upstream connection is accepted (`subjectAltNames`).

use super::ReqCtx;
use crate::rules::Protocol;
use crate::state::{Direction, Shared};
use crate::telemetry::flags;
use pingora::proxy::Session;
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorType, Result};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// The peer for the request's current endpoint.
pub(super) fn build(
    session: &Session,
    ctx: &mut ReqCtx,
    dir: Direction,
    shared: &Shared,
) -> Result<Box<HttpPeer>> {
    let Some(addr) = ctx.upstream else {
        return Error::e_explain(ErrorType::InternalError, "no upstream chosen");
    };
    let tls = match ctx.policy.as_ref().and_then(|rp| rp.dest.as_ref()) {
        Some(d) => d.tls.clone(),
        None => Ok(None),
    };
    ctx.upstream_h2 = session.is_http2()
        || matches!(
            ctx.dst
                .and_then(|d| port_protocol(shared, d, &ctx.authority)),
            Some(Protocol::Http2) | Some(Protocol::Grpc)
        );
    let mesh = match dir {
        Direction::Outbound => mesh_connect(ctx, shared, addr),
        Direction::Inbound => None,
    };
    ctx.mesh_upstream = mesh.is_some();
    let mut peer = match (tls, mesh) {
        (_, Some(m)) => {
            // Mesh mTLS: remora's own handshake (Istio ALPN, SPIFFE check) under a plain
            // Pingora peer whose address is a stand-in so that Pingora pools the connections
            // (`mtls::pooled`); the pool group names the endpoint and keeps these apart from
            // plain connections.
            let mut p = HttpPeer::new(
                crate::mtls::pooled::peer_addr(addr.port()),
                false,
                String::new(),
            );
            p.group_key = m.group_key();
            p.options.custom_l4 = Some(std::sync::Arc::new(m));
            p
        }
        (Ok(None), None) => HttpPeer::new(addr, false, String::new()),
        (Ok(Some(t)), None) => {
            // Istio: without `sni`, the request's host.
            let sni = t
                .sni
                .clone()
                .unwrap_or_else(|| crate::rules::host::split_authority(&ctx.authority).0);
            let mut p = HttpPeer::new(addr, true, sni);
            p.options.ca = t.ca.clone();
            p.client_cert_key = t.client.clone();
            if t.insecure_skip_verify {
                p.options.verify_cert = false;
                p.options.verify_hostname = false;
            } else if t.san_check.is_some() {
                // `subjectAltNames` replaces the SNI check: pingora checks the chain, and
                // `check_new_connection` the names (see `upstream::mtls`).
                p.options.verify_hostname = false;
            }
            p
        }
        (Err(e), None) => {
            // Never fall back to plain text when the rules ask for TLS.
            ctx.flags = flags::UPSTREAM_CONNECT_FAILURE;
            ctx.error = Some(e.clone());
            return Error::e_explain(ErrorType::ConnectError, e);
        }
    };
    if ctx.upstream_h2 {
        peer.options.set_http_version(2, 2);
    } else {
        peer.options.set_http_version(1, 1);
    }
    let s = &shared.settings;
    peer.options.connection_timeout = Some(s.connect_timeout);
    if let Some(rp) = &ctx.policy {
        let now = Instant::now();
        let mut connect = s.connect_timeout;
        if let Some(d) = &rp.dest {
            let cp = &d.policy.connection_pool;
            connect = connect.min(cp.connect_timeout);
            if let Some(t) = cp.idle_timeout {
                peer.options.idle_timeout = Some(t);
            }
            if let Some(k) = &cp.tcp_keepalive {
                // Unset fields keep the Linux defaults (7200 s idle, 75 s interval, 9 probes).
                peer.options.tcp_keepalive = Some(pingora::protocols::TcpKeepalive {
                    idle: k.time.unwrap_or(Duration::from_secs(7200)),
                    interval: k.interval.unwrap_or(Duration::from_secs(75)),
                    count: k.probes.unwrap_or(9) as usize,
                    user_timeout: Duration::ZERO,
                });
            }
        }
        if let Some(left) = rp.remaining(now) {
            connect = connect.min(left.max(Duration::from_millis(1)));
        }
        peer.options.connection_timeout = Some(connect);
        // The route timeout and the per-try timeout bound every read and write of this try.
        if let Some(t) = rp.try_timeout(now) {
            peer.options.read_timeout = Some(t);
            peer.options.write_timeout = Some(t);
        }
    }
    // Close idle upstream connections before typical app keep-alive timeouts (60 s+), unless
    // the DestinationRule's `http.idleTimeout` says otherwise.
    peer.options
        .idle_timeout
        .get_or_insert(Duration::from_secs(30));
    if dir == Direction::Inbound {
        // A stuck app must not hold an inbound request forever: a default per-read/write
        // timeout when no route timeout set one.
        let t = s.inbound_upstream_read_timeout;
        peer.options.read_timeout.get_or_insert(t);
        peer.options.write_timeout.get_or_insert(t);
        if let Some(ip) = s.inbound_bind.filter(|ip| ip.is_ipv4() == addr.is_ipv4()) {
            let mut bind = pingora::connectors::l4::BindTo::default();
            bind.addr = Some(SocketAddr::new(ip, 0));
            peer.options.bind_to = Some(bind);
        }
    }
    Ok(Box::new(peer))
}

/// Mesh mTLS to `addr`, when the decision (`mtls::decide`) says so: the DestinationRule's
/// `tls` if it has one, else whether the endpoint has a sidecar.
fn mesh_connect(
    ctx: &ReqCtx,
    shared: &Shared,
    addr: SocketAddr,
) -> Option<crate::mtls::outbound::MeshConnect> {
    let identity = shared.identity.as_ref();
    let rp = ctx.policy.as_ref()?;
    let dest = rp.dest.as_ref()?;
    let meshed = rp
        .endpoints
        .iter()
        .find(|e| e.addr == addr)
        .is_some_and(|e| crate::mtls::endpoint_meshed(&e.labels));
    let tp = &dest.policy;
    let (how, why) =
        crate::mtls::decide(tp.tls_set, tp.tls_settings.mode, meshed, identity.is_some());
    tracing::trace!(%addr, host = %dest.host, ?how, why, "upstream security");
    if how != crate::mtls::Upstream::Mesh {
        return None;
    }
    let snap = shared.snapshot.load();
    let domain = snap.ctx.cluster_domain.clone();
    let identity = identity?;
    // Who the server must be: the service accounts discovery knows of the endpoints' pods.
    let chosen = snap.endpoints.pod_of_ip(addr.ip());
    let accounts = crate::mtls::expect::accounts(
        chosen.as_deref(),
        rp.endpoints
            .iter()
            .map(|e| snap.endpoints.pod_of_ip(e.addr.ip())),
    );
    Some(crate::mtls::outbound::MeshConnect {
        identity: identity.clone(),
        material: identity.current(),
        addr,
        what: if ctx.upstream_h2 {
            crate::identity::Carried::H2
        } else {
            crate::identity::Carried::Http1
        },
        expect: crate::mtls::outbound::Expect::new(
            &dest.host,
            dest.port,
            dest.subset.as_deref(),
            &domain,
        )
        .with_accounts(accounts),
        timeout: shared.settings.connect_timeout,
        metrics: shared.metrics.clone(),
    })
}

/// What the rules declare for the original destination `dst` (an h2 upstream for `http2` and
/// `grpc` ports).
fn port_protocol(shared: &Shared, dst: SocketAddr, host: &str) -> Option<Protocol> {
    let snap = shared.snapshot.load();
    // The host only counts through a ServiceEntry: without any, skip deriving its names.
    let host = (!snap.service_entries.is_empty()).then_some(host);
    snap.port_protocol(dst, host)
}

/// `subjectAltNames`: a new connection's server certificate must be one remora verified.
pub(super) async fn check_new_connection(
    reused: bool,
    peer: &HttpPeer,
    digest: Option<&pingora::protocols::Digest>,
    ctx: &mut ReqCtx,
    connect_timeout: Duration,
) -> Result<()> {
    let san = ctx
        .policy
        .as_ref()
        .and_then(|p| p.dest.as_ref())
        .and_then(|d| d.tls.as_ref().ok())
        .and_then(|o| o.as_ref())
        .and_then(|o| o.san_check.clone());
    let (false, Some(san)) = (reused, san) else {
        return Ok(());
    };
    let seen = digest
        .and_then(|d| d.ssl_digest.as_ref())
        .map(|s| s.cert_digest.clone())
        .unwrap_or_default();
    let checked = match pingora::upstreams::peer::Peer::address(peer).as_inet() {
        Some(addr) => {
            let timeout = peer.options.connection_timeout.unwrap_or(connect_timeout);
            san.accept(*addr, &peer.sni, &seen, timeout).await
        }
        None => Err("not an IP endpoint".to_string()),
    };
    if let Err(e) = checked {
        let e = format!("server certificate not accepted (subjectAltNames): {e}");
        ctx.flags = flags::UPSTREAM_CONNECT_FAILURE;
        ctx.error = Some(e.clone());
        return Error::e_explain(ErrorType::TLSHandshakeFailure, e);
    }
    Ok(())
}
