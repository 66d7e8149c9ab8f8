//! Upstream side: the Pingora `ProxyHttp` that applies routing decisions, endpoint choice and
//! TCP connections to upstreams (with the inbound source address).

pub mod mtls;

use crate::policy;
use crate::policy::lb::HashInput;
use crate::policy::request::{RequestPolicy, Verdict};
use crate::policy::retry::Outcome;
use crate::route::{self, Decision, HeaderOps, RequestInfo};
use crate::rules::Protocol;
use crate::state::{Direction, Shared};
use crate::telemetry::{self, flags, HttpLabelsRef, HttpLogEntry, Metrics};
use async_trait::async_trait;
use bytes::Bytes;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorSource, ErrorType, Result};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::{TcpSocket, TcpStream};
use tracing::{debug, warn};

/// TLS over an opaque TCP connection (DestinationRule `tls` SIMPLE / MUTUAL), bounded by
/// `timeout`.
pub async fn tls_connect(
    config: Arc<rustls::ClientConfig>,
    sni: &str,
    tcp: TcpStream,
    timeout: Duration,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, String> {
    let name = rustls::pki_types::ServerName::try_from(sni.to_string())
        .map_err(|e| format!("sni {sni:?} is not a valid server name: {e}"))?;
    match tokio::time::timeout(
        timeout,
        tokio_rustls::TlsConnector::from(config).connect(name, tcp),
    )
    .await
    {
        Ok(Ok(t)) => Ok(t),
        Ok(Err(e)) => Err(format!("handshake: {e}")),
        Err(_) => Err(format!("handshake timed out after {timeout:?}")),
    }
}

/// Open a TCP connection to `dst`, optionally from source address `bind`.
/// With `fallback`, a failed bind is retried from 127.0.0.1 (testing only).
pub async fn connect_tcp(
    dst: SocketAddr,
    bind: Option<IpAddr>,
    fallback: bool,
    timeout: Duration,
) -> std::io::Result<TcpStream> {
    let socket = if dst.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if let Some(ip) = bind.filter(|ip| ip.is_ipv4() == dst.is_ipv4()) {
        if let Err(e) = socket.bind(SocketAddr::new(ip, 0)) {
            if fallback {
                warn!("bind {ip} failed ({e}); falling back to 127.0.0.1 (testing fallback)");
                socket.bind(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0))?;
            } else {
                return Err(std::io::Error::new(
                    e.kind(),
                    format!("bind source {ip}: {e}"),
                ));
            }
        }
    }
    socket.set_nodelay(true)?;
    match tokio::time::timeout(timeout, socket.connect(dst)).await {
        Ok(r) => r,
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("connect to {dst} timed out after {timeout:?}"),
        )),
    }
}

/// Per-request state.
pub struct ReqCtx {
    start: Instant,
    started_at: String,
    dst: Option<SocketAddr>,
    upstream: Option<SocketAddr>,
    upstream_h2: bool,
    authority: String,
    method: String,
    path: String,
    request_id: String,
    traceparent: Option<String>,
    route_name: Option<String>,
    virtual_service: Option<String>,
    destination_service: String,
    forward: Option<ForwardOps>,
    response_ops: HeaderOps,
    flags: &'static str,
    local_status: Option<u16>,
    grpc: bool,
    grpc_status: Option<String>,
    error: Option<String>,
    /// Traffic policies of this request (outbound requests with a route decision).
    policy: Option<RequestPolicy>,
    /// The address to use when the destination has no endpoint list.
    fixed_upstream: Option<SocketAddr>,
    /// A retry was decided; `upstream_peer` picks the next endpoint.
    retry_pending: bool,
    /// Fault injection delayed this request (flag `DI`).
    fault_delayed: bool,
    /// Headers added to the response (`x-ratelimit-*`).
    extra_response_headers: Vec<(String, String)>,
    /// Mirror copies waiting for the request body, and the body so far.
    mirrors: Vec<PendingMirror>,
    mirror_body: Option<bytes::BytesMut>,
    /// This request is the last its HTTP/1 upstream connection may carry
    /// (`connectionPool.http.maxRequestsPerConnection`): it goes out with `Connection: close`.
    close_upstream: bool,
}

/// Requests carried so far by each open HTTP/1 upstream connection (by socket), kept only for
/// destinations with `maxRequestsPerConnection`. A socket number is reused only after its
/// connection closed, and a new connection (`reused == false`) starts its count again.
static UPSTREAM_USES: std::sync::LazyLock<std::sync::Mutex<std::collections::HashMap<i32, u64>>> =
    std::sync::LazyLock::new(Default::default);

/// Count one more request on upstream socket `fd` (a fresh connection when `!reused`); true when
/// it is the connection's last one under `max` (> 0).
fn last_request_on_connection(fd: i32, reused: bool, max: u64) -> bool {
    let Ok(mut uses) = UPSTREAM_USES.lock() else {
        return false;
    };
    let n = if reused {
        let n = uses.entry(fd).or_insert(0);
        *n += 1;
        *n
    } else {
        uses.insert(fd, 1);
        1
    };
    if n >= max {
        uses.remove(&fd);
        return true;
    }
    false
}

/// A mirror copy to send once the request body is complete.
struct PendingMirror {
    target: SocketAddr,
    authority: String,
    timeout: Duration,
}

/// Request bodies up to this size are copied to mirrors; a larger body is not mirrored.
const MIRROR_BODY_LIMIT: usize = 64 * 1024;

struct ForwardOps {
    request: HeaderOps,
    authority: Option<String>,
    uri: Option<String>,
}

/// The `ProxyHttp` for one capture direction.
pub struct MeshHttp {
    pub dir: Direction,
    pub shared: Arc<Shared>,
    pub resolver: Arc<HostResolver>,
}

/// Resolves route destination hosts that have no known endpoints and are not the service the
/// request was addressed to (e.g. a VirtualService sending `reviews` traffic to `ratings`), the way
/// a pod without a mesh would: DNS, cached for a few seconds.
#[derive(Default)]
pub struct HostResolver {
    cache: std::sync::Mutex<std::collections::HashMap<String, (Instant, Vec<IpAddr>)>>,
}

impl HostResolver {
    const TTL: Duration = Duration::from_secs(5);

    /// An address for `host:port`, preferring `dst`'s address family.
    pub async fn resolve(
        &self,
        host: &str,
        port: u16,
        dst: SocketAddr,
    ) -> Result<SocketAddr, String> {
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Ok(SocketAddr::new(ip, port));
        }
        let cached = self.cache.lock().ok().and_then(|c| {
            c.get(host)
                .filter(|(t, _)| t.elapsed() < Self::TTL)
                .map(|(_, ips)| ips.clone())
        });
        let ips = match cached {
            Some(ips) => ips,
            None => {
                let lookup = tokio::net::lookup_host((host, port));
                let ips: Vec<IpAddr> = match tokio::time::timeout(Duration::from_secs(2), lookup)
                    .await
                {
                    Ok(Ok(it)) => it.map(|a| a.ip()).collect(),
                    Ok(Err(e)) => return Err(format!("resolving route destination {host}: {e}")),
                    Err(_) => return Err(format!("resolving route destination {host}: timed out")),
                };
                if let Ok(mut c) = self.cache.lock() {
                    if c.len() > 1024 {
                        c.clear();
                    }
                    c.insert(host.to_string(), (Instant::now(), ips.clone()));
                }
                ips
            }
        };
        ips.iter()
            .find(|ip| ip.is_ipv4() == dst.is_ipv4())
            .or(ips.first())
            .map(|ip| SocketAddr::new(*ip, port))
            .ok_or_else(|| format!("route destination {host} has no addresses"))
    }
}

fn header_str(req: &RequestHeader, name: impl http::header::AsHeaderName) -> Option<&str> {
    req.headers.get(name).and_then(|v| v.to_str().ok())
}

/// Header names looked up on every request, parsed once (a `&str` name is parsed per lookup).
static TRACEPARENT: http::HeaderName = http::HeaderName::from_static("traceparent");
static X_REQUEST_ID: http::HeaderName = http::HeaderName::from_static("x-request-id");

/// The gRPC status Envoy uses for a local reply with HTTP status `code`.
pub fn grpc_status_for_http(code: u16) -> u32 {
    match code {
        400 => 13,             // INTERNAL
        401 => 16,             // UNAUTHENTICATED
        403 => 7,              // PERMISSION_DENIED
        404 => 12,             // UNIMPLEMENTED
        429 | 502..=504 => 14, // UNAVAILABLE
        _ => 2,                // UNKNOWN
    }
}

fn grpc_error_response(code: u16, message: &str) -> Result<Box<ResponseHeader>> {
    let mut resp = ResponseHeader::build(200, Some(4))?;
    resp.insert_header("content-type", "application/grpc")?;
    resp.insert_header("grpc-status", grpc_status_for_http(code).to_string())?;
    // grpc-message is percent-encoded; keep it to safe ASCII.
    let safe: String = message
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || " -_.:".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    resp.insert_header("grpc-message", safe.replace(' ', "%20"))?;
    resp.insert_header("content-length", "0")?;
    Ok(Box::new(resp))
}

/// The path a mirror copy asks for: the route's rewrite, else the client's.
fn mirror_path(ctx: &ReqCtx) -> String {
    ctx.forward
        .as_ref()
        .and_then(|f| f.uri.clone())
        .unwrap_or_else(|| ctx.path.clone())
}

/// A new `x-request-id` (UUID v4 form).
pub fn new_request_id() -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut b: [u8; 16] = rand::random();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let mut out = String::with_capacity(36);
    for (i, x) in b.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            out.push('-');
        }
        out.push(HEX[usize::from(x >> 4)] as char);
        out.push(HEX[usize::from(x & 0x0f)] as char);
    }
    out
}

fn apply_request_ops(req: &mut RequestHeader, ops: &HeaderOps) -> Result<()> {
    for name in &ops.remove {
        req.remove_header(name.as_str());
    }
    for (k, v) in &ops.set {
        req.insert_header(k.clone(), v.as_str())?;
    }
    for (k, v) in &ops.add {
        req.append_header(k.clone(), v.as_str())?;
    }
    Ok(())
}

fn apply_response_ops(resp: &mut ResponseHeader, ops: &HeaderOps) -> Result<()> {
    for name in &ops.remove {
        resp.remove_header(name.as_str());
    }
    for (k, v) in &ops.set {
        resp.insert_header(k.clone(), v.as_str())?;
    }
    for (k, v) in &ops.add {
        resp.append_header(k.clone(), v.as_str())?;
    }
    Ok(())
}

impl MeshHttp {
    async fn respond_local(
        &self,
        session: &mut Session,
        ctx: &mut ReqCtx,
        status: u16,
        extra: &[(&str, &str)],
        body: &str,
    ) -> Result<bool> {
        if ctx.grpc && status >= 400 {
            let mut resp = grpc_error_response(status, body.trim())?;
            resp.insert_header("x-request-id", ctx.request_id.as_str())?;
            ctx.local_status = Some(200);
            ctx.grpc_status = Some(grpc_status_for_http(status).to_string());
            session.write_response_header(resp, true).await?;
            return Ok(true);
        }
        let mut resp = ResponseHeader::build(status, Some(extra.len() + 2))?;
        for (k, v) in extra {
            resp.insert_header(k.to_string(), *v)?;
        }
        resp.insert_header("content-length", body.len().to_string())?;
        if !body.is_empty() {
            resp.insert_header("content-type", "text/plain")?;
        }
        resp.insert_header("x-request-id", ctx.request_id.as_str())?;
        ctx.local_status = Some(status);
        session
            .write_response_header(Box::new(resp), body.is_empty())
            .await?;
        if !body.is_empty() {
            session
                .write_response_body(Some(Bytes::from(body.to_string())), true)
                .await?;
        }
        Ok(true)
    }

    /// Start the mirror copies a route asks for: at once when the request has no body, else
    /// once the body is complete (`request_body_filter`).
    async fn start_mirrors(
        &self,
        session: &mut Session,
        ctx: &mut ReqCtx,
        snap: &crate::rules::Snapshot,
        f: &route::Forward,
        port: u16,
        dst: SocketAddr,
    ) {
        let chosen: Vec<route::Mirror> =
            policy::mirror::select(&f.policy.mirrors, &mut rand::thread_rng())
                .into_iter()
                .cloned()
                .collect();
        if chosen.is_empty() {
            return;
        }
        let authority = policy::mirror::shadow_authority(
            f.authority_rewrite.as_deref().unwrap_or(&ctx.authority),
        );
        let timeout = f
            .policy
            .timeout
            .filter(|t| !t.is_zero())
            .unwrap_or(policy::mirror::DEFAULT_TIMEOUT);
        let mut pending = Vec::new();
        for m in chosen {
            let mport = m.port.unwrap_or(port);
            let labels = m.subset.as_ref().and_then(|s| {
                snap.destination_rule(&m.host)
                    .and_then(|dr| dr.subsets.iter().find(|x| &x.name == s))
                    .map(|x| x.labels.clone())
            });
            let known = snap
                .endpoints
                .endpoints(&m.host, mport, labels.as_ref())
                .and_then(|eps| policy::lb::weighted_pick(&eps, &mut rand::thread_rng()));
            let target = match known {
                Some(a) => Ok(a),
                None => self.resolver.resolve(&m.host, mport, dst).await,
            };
            match target {
                Ok(target) => pending.push(PendingMirror {
                    target,
                    authority: authority.clone(),
                    timeout,
                }),
                Err(e) => debug!(mirror = %m.host, "mirror target not resolved: {e}"),
            }
        }
        let h2_body_pending = session.is_http2() && !session.is_body_done();
        let req = session.req_header();
        let has_body = req
            .headers
            .get("content-length")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .is_some_and(|n| n > 0)
            || req.headers.contains_key("transfer-encoding")
            || h2_body_pending;
        if has_body {
            ctx.mirrors = pending;
            ctx.mirror_body = Some(bytes::BytesMut::new());
        } else {
            let path = mirror_path(ctx);
            for p in pending {
                policy::mirror::spawn(policy::mirror::Copy {
                    target: p.target,
                    method: req.method.clone(),
                    path: path.clone(),
                    authority: p.authority,
                    headers: req.headers.clone(),
                    body: Bytes::new(),
                    timeout: p.timeout,
                });
            }
        }
    }

    /// The `corsPolicy` of the route this request takes (looked up again: the route decision
    /// does not carry it).
    fn route_cors(
        &self,
        session: &Session,
        ctx: &ReqCtx,
        snap: &crate::rules::Snapshot,
        dst: SocketAddr,
    ) -> Option<Arc<policy::cors::Cors>> {
        let (name, _) = crate::rules::host::split_authority(&ctx.authority);
        let cands =
            crate::rules::host::candidates(&name, &snap.ctx.namespace, &snap.ctx.cluster_domain);
        let vs = route::best_virtual_service(snap, &cands)?;
        let info = RequestInfo {
            authority: &ctx.authority,
            method: &ctx.method,
            path: &ctx.path,
            headers: &session.req_header().headers,
            dst,
        };
        let (r, _) = route::select_route(snap, vs, &info)?;
        self.shared.policies.cors(snap, &vs.meta.key(), &r.path)
    }

    fn port_protocol(&self, dst: SocketAddr, host: &str) -> Option<Protocol> {
        let snap = self.shared.snapshot.load();
        // The host only counts through a ServiceEntry: without any, skip deriving its names.
        let host = (!snap.service_entries.is_empty()).then_some(host);
        snap.port_protocol(dst, host)
    }
}

#[async_trait]
impl ProxyHttp for MeshHttp {
    type CTX = ReqCtx;

    fn new_ctx(&self) -> ReqCtx {
        ReqCtx {
            start: Instant::now(),
            started_at: telemetry::accesslog::now_rfc3339(),
            dst: None,
            upstream: None,
            upstream_h2: false,
            authority: String::new(),
            method: String::new(),
            path: String::new(),
            request_id: String::new(),
            traceparent: None,
            route_name: None,
            virtual_service: None,
            destination_service: String::new(),
            forward: None,
            response_ops: HeaderOps::default(),
            flags: flags::NONE,
            local_status: None,
            grpc: false,
            grpc_status: None,
            error: None,
            policy: None,
            fixed_upstream: None,
            retry_pending: false,
            fault_delayed: false,
            extra_response_headers: Vec::new(),
            mirrors: Vec::new(),
            mirror_body: None,
            close_upstream: false,
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut ReqCtx) -> Result<bool> {
        // (`started_at` is new_ctx's, a moment ago: formatting it twice cost a string per request.)
        ctx.start = Instant::now();
        let socket = session.digest().and_then(|d| d.socket_digest.clone());
        ctx.dst = self.shared.original_dst(self.dir, socket.as_deref());
        {
            let req = session.req_header();
            ctx.method = req.method.as_str().to_string();
            ctx.path = req
                .uri
                .path_and_query()
                .map(|p| p.as_str().to_string())
                .unwrap_or_else(|| "/".to_string());
            ctx.authority = req
                .uri
                .authority()
                .map(|a| a.as_str().to_string())
                .or_else(|| header_str(req, &http::header::HOST).map(str::to_string))
                .unwrap_or_default();
            ctx.traceparent = header_str(req, &TRACEPARENT).map(str::to_string);
            ctx.grpc = header_str(req, &http::header::CONTENT_TYPE)
                .is_some_and(|c| c.starts_with("application/grpc"));
            ctx.request_id = header_str(req, &X_REQUEST_ID)
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .unwrap_or_default();
        }
        if ctx.request_id.is_empty() {
            ctx.request_id = new_request_id();
            session
                .req_header_mut()
                .insert_header("x-request-id", ctx.request_id.as_str())?;
        }
        let Some(dst) = ctx.dst else {
            ctx.flags = flags::NO_ROUTE;
            return self
                .respond_local(session, ctx, 503, &[], "no original destination\n")
                .await;
        };
        ctx.destination_service = if ctx.authority.is_empty() {
            dst.to_string()
        } else {
            ctx.authority.clone()
        };
        if self.dir == Direction::Inbound {
            ctx.upstream = Some(dst);
            return Ok(false);
        }
        let snap = self.shared.snapshot.load_full();
        let decision = {
            let req = session.req_header();
            let info = RequestInfo {
                authority: &ctx.authority,
                method: &ctx.method,
                path: &ctx.path,
                headers: &req.headers,
                dst,
            };
            route::route(&snap, &info, &mut rand::thread_rng())
        };
        match decision {
            Decision::Passthrough => {
                ctx.upstream = Some(dst);
                Ok(false)
            }
            Decision::Forward(f) => {
                let port = if f.port == 0 { dst.port() } else { f.port };
                ctx.route_name = f.route_name.clone();
                ctx.virtual_service = f.virtual_service.clone();
                ctx.destination_service = f.host.clone();
                let policies = self.shared.policies.clone();
                // Local rate limit (the RateLimit kind).
                match policies.rate_limit(&snap, &f.host, f.route_name.as_deref()) {
                    Ok(h) => {
                        ctx.extra_response_headers =
                            h.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
                    }
                    Err(h) => {
                        ctx.flags = flags::RATE_LIMITED;
                        ctx.error = Some("local rate limit".into());
                        let hs: Vec<(&str, &str)> =
                            h.iter().map(|(k, v)| (*k, v.as_str())).collect();
                        return self
                            .respond_local(session, ctx, 429, &hs, "local_rate_limited\n")
                            .await;
                    }
                }
                // CORS (before fault injection, as in Istio's filter chain).
                if f.virtual_service.is_some() && policies.has_cors(&snap) {
                    if let Some(c) = self.route_cors(session, ctx, &snap, dst) {
                        match c.decide(&ctx.method, &session.req_header().headers) {
                            policy::cors::Action::Answer { status, headers } => {
                                let hs: Vec<(&str, &str)> = headers
                                    .iter()
                                    .map(|(k, v)| (k.as_str(), v.as_str()))
                                    .collect();
                                return self.respond_local(session, ctx, status, &hs, "").await;
                            }
                            policy::cors::Action::Forward { response_headers } => {
                                ctx.extra_response_headers.extend(response_headers);
                            }
                        }
                    }
                }
                // Fault injection, before any upstream work.
                let inj = policy::fault::decide(f.policy.fault.as_ref(), &mut rand::thread_rng());
                if let Some(d) = inj.delay {
                    ctx.fault_delayed = true;
                    tokio::time::sleep(d).await;
                }
                match inj.abort {
                    Some(policy::fault::Abort::Http(status)) => {
                        ctx.flags = flags::FAULT_INJECTED;
                        return self
                            .respond_local(session, ctx, status, &[], "fault filter abort\n")
                            .await;
                    }
                    Some(policy::fault::Abort::Grpc(code)) => {
                        ctx.flags = flags::FAULT_INJECTED;
                        let c = code.to_string();
                        ctx.grpc_status = Some(c.clone());
                        return self
                            .respond_local(
                                session,
                                ctx,
                                200,
                                &[
                                    ("content-type", "application/grpc"),
                                    ("grpc-status", &c),
                                    ("grpc-message", "fault filter abort"),
                                ],
                                "",
                            )
                            .await;
                    }
                    None => {}
                }
                // Mirrors: copies sent without waiting; their outcome never reaches the caller.
                self.start_mirrors(session, ctx, &snap, &f, port, dst).await;
                // Connection-pool limits of the destination: fail fast with 503 UO.
                let dest = policies.destination(&snap, &f.host, f.subset.as_deref(), port);
                let admitted = match dest.admit().await {
                    Ok(a) => a,
                    Err(o) => {
                        ctx.flags = flags::UPSTREAM_OVERFLOW;
                        ctx.error = Some(o.reason().to_string());
                        return self
                            .respond_local(
                                session,
                                ctx,
                                503,
                                &[],
                                "upstream connect error or disconnect/reset before headers. reset reason: overflow\n",
                            )
                            .await;
                    }
                };
                // PASSTHROUGH: the address the client asked for, without load balancing.
                let passthrough = dest.policy.load_balancer == policy::lb::LbPolicy::Passthrough;
                let fixed = if passthrough {
                    Some(dst)
                } else if f.endpoints.is_empty() {
                    // The rules say whether the route still points at what the client
                    // addressed (then the original destination reaches it) or elsewhere.
                    if f.resolve_by_dns {
                        match self.resolver.resolve(&f.host, port, dst).await {
                            Ok(a) => Some(a),
                            Err(e) => {
                                ctx.flags = flags::NO_HEALTHY_UPSTREAM;
                                ctx.error = Some(e);
                                return self
                                    .respond_local(session, ctx, 503, &[], "no healthy upstream\n")
                                    .await;
                            }
                        }
                    } else {
                        Some(SocketAddr::new(dst.ip(), port))
                    }
                } else {
                    None
                };
                let retry = policy::retry::effective(f.policy.retries.as_ref());
                if retry.attempts > 0 {
                    session.enable_retry_buffering();
                }
                let endpoints = if passthrough { Vec::new() } else { f.endpoints };
                let mut rp = RequestPolicy::new(
                    Some(dest),
                    endpoints,
                    retry,
                    &ctx.method,
                    f.policy.timeout,
                    Instant::now(),
                );
                rp.admitted = Some(admitted);
                let picked = {
                    let input = HashInput {
                        headers: &session.req_header().headers,
                        path: &ctx.path,
                        source_ip: session
                            .client_addr()
                            .and_then(|a| a.as_inet())
                            .map(|a| a.ip()),
                    };
                    rp.next_endpoint(fixed, Some(&input), &mut rand::thread_rng())
                };
                let Some(upstream) = picked else {
                    ctx.flags = flags::NO_HEALTHY_UPSTREAM;
                    return self
                        .respond_local(session, ctx, 503, &[], "no healthy upstream\n")
                        .await;
                };
                ctx.upstream = Some(upstream);
                ctx.fixed_upstream = fixed;
                ctx.policy = Some(rp);
                ctx.response_ops = f.response_headers;
                ctx.forward = Some(ForwardOps {
                    request: f.request_headers,
                    authority: f.authority_rewrite,
                    uri: f.uri_rewrite,
                });
                Ok(false)
            }
            Decision::Redirect { status, location } => {
                self.respond_local(session, ctx, status, &[("location", &location)], "")
                    .await
            }
            Decision::Deny { status, reason } => {
                ctx.flags = flags::NO_ROUTE;
                ctx.error = Some(reason.clone());
                self.respond_local(session, ctx, status, &[], &format!("{reason}\n"))
                    .await
            }
            Decision::DirectResponse { status, body } => {
                self.respond_local(session, ctx, status, &[], &body).await
            }
        }
    }

    async fn upstream_peer(
        &self,
        session: &mut Session,
        ctx: &mut ReqCtx,
    ) -> Result<Box<HttpPeer>> {
        if ctx.retry_pending {
            ctx.retry_pending = false;
            if let Some(rp) = ctx.policy.as_mut() {
                let input = HashInput {
                    headers: &session.req_header().headers,
                    path: &ctx.path,
                    source_ip: session
                        .client_addr()
                        .and_then(|a| a.as_inet())
                        .map(|a| a.ip()),
                };
                if let Some(a) =
                    rp.next_endpoint(ctx.fixed_upstream, Some(&input), &mut rand::thread_rng())
                {
                    debug!(upstream = %a, attempt = rp.attempts(), "retry goes to this endpoint");
                    ctx.upstream = Some(a);
                }
            }
        }
        let Some(addr) = ctx.upstream else {
            return Error::e_explain(ErrorType::InternalError, "no upstream chosen");
        };
        let tls = match ctx.policy.as_ref().and_then(|rp| rp.dest.as_ref()) {
            Some(d) => d.tls.clone(),
            None => Ok(None),
        };
        ctx.upstream_h2 = session.is_http2()
            || matches!(
                ctx.dst.and_then(|d| self.port_protocol(d, &ctx.authority)),
                Some(Protocol::Http2) | Some(Protocol::Grpc)
            );
        let mut peer = match tls {
            Ok(None) => HttpPeer::new(addr, false, String::new()),
            Ok(Some(t)) => {
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
                    // `connected_to_upstream` the names (see `mtls`).
                    p.options.verify_hostname = false;
                }
                p
            }
            Err(e) => {
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
        let s = &self.shared.settings;
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
        // Close idle upstream connections before typical app keep-alive timeouts (60 s+).
        peer.options.idle_timeout = Some(Duration::from_secs(30));
        if self.dir == Direction::Inbound {
            if let Some(ip) = s.inbound_bind.filter(|ip| ip.is_ipv4() == addr.is_ipv4()) {
                let mut bind = pingora::connectors::l4::BindTo::default();
                bind.addr = Some(SocketAddr::new(ip, 0));
                peer.options.bind_to = Some(bind);
            }
        }
        Ok(Box::new(peer))
    }

    async fn connected_to_upstream(
        &self,
        _session: &mut Session,
        reused: bool,
        peer: &HttpPeer,
        fd: std::os::unix::io::RawFd,
        digest: Option<&pingora::protocols::Digest>,
        ctx: &mut ReqCtx,
    ) -> Result<()> {
        // `subjectAltNames`: a new connection's server certificate must be one remora verified.
        let san = ctx
            .policy
            .as_ref()
            .and_then(|p| p.dest.as_ref())
            .and_then(|d| d.tls.as_ref().ok())
            .and_then(|o| o.as_ref())
            .and_then(|o| o.san_check.clone());
        if let (false, Some(san)) = (reused, san) {
            let seen = digest
                .and_then(|d| d.ssl_digest.as_ref())
                .map(|s| s.cert_digest.clone())
                .unwrap_or_default();
            let checked = match pingora::upstreams::peer::Peer::address(peer).as_inet() {
                Some(addr) => {
                    let timeout = peer
                        .options
                        .connection_timeout
                        .unwrap_or(self.shared.settings.connect_timeout);
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
        }
        let max = ctx
            .policy
            .as_ref()
            .and_then(|p| p.dest.as_ref())
            .map_or(0, |d| d.policy.connection_pool.max_requests_per_connection);
        ctx.close_upstream =
            max > 0 && !ctx.upstream_h2 && last_request_on_connection(fd, reused, max);
        Ok(())
    }

    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut ReqCtx,
    ) -> Result<()> {
        if ctx.close_upstream {
            upstream_request.insert_header("connection", "close")?;
        }
        if let Some(f) = &ctx.forward {
            apply_request_ops(upstream_request, &f.request)?;
            if let Some(uri) = &f.uri {
                let mut parts = upstream_request.uri.clone().into_parts();
                parts.path_and_query = Some(uri.parse().map_err(|e| {
                    Error::because(ErrorType::InternalError, format!("uri rewrite {uri:?}"), e)
                })?);
                let new = http::Uri::from_parts(parts)
                    .map_err(|e| Error::because(ErrorType::InternalError, "uri rewrite", e))?;
                upstream_request.set_uri(new);
            }
            if let Some(a) = &f.authority {
                upstream_request.insert_header("host", a.as_str())?;
                if upstream_request.uri.authority().is_some() {
                    let mut parts = upstream_request.uri.clone().into_parts();
                    parts.authority = Some(a.parse().map_err(|e| {
                        Error::because(
                            ErrorType::InternalError,
                            format!("authority rewrite {a:?}"),
                            e,
                        )
                    })?);
                    if let Ok(u) = http::Uri::from_parts(parts) {
                        upstream_request.set_uri(u);
                    }
                }
            }
        }
        // h1 → h2 upstream: the h2 client needs :authority; take it from Host.
        if ctx.upstream_h2 && upstream_request.uri.authority().is_none() {
            let host = header_str(upstream_request, "host").map(str::to_string);
            if let Some(host) = host {
                let pq = upstream_request
                    .uri
                    .path_and_query()
                    .map(|p| p.as_str().to_string())
                    .unwrap_or_else(|| "/".into());
                if let Ok(u) = http::Uri::builder()
                    .scheme("http")
                    .authority(host.as_str())
                    .path_and_query(pq)
                    .build()
                {
                    upstream_request.set_uri(u);
                }
            }
        }
        Ok(())
    }

    async fn request_body_filter(
        &self,
        session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut ReqCtx,
    ) -> Result<()> {
        if let Some(buf) = ctx.mirror_body.as_mut() {
            if let Some(b) = body.as_ref() {
                if buf.len() + b.len() > MIRROR_BODY_LIMIT {
                    debug!("request body above {MIRROR_BODY_LIMIT} bytes; not mirrored");
                    ctx.mirror_body = None;
                    ctx.mirrors.clear();
                    return Ok(());
                }
                buf.extend_from_slice(b);
            }
            if end_of_stream {
                let body = ctx.mirror_body.take().unwrap_or_default().freeze();
                let path = mirror_path(ctx);
                let req = session.req_header();
                for p in ctx.mirrors.drain(..) {
                    policy::mirror::spawn(policy::mirror::Copy {
                        target: p.target,
                        method: req.method.clone(),
                        path: path.clone(),
                        authority: p.authority,
                        headers: req.headers.clone(),
                        body: body.clone(),
                        timeout: p.timeout,
                    });
                }
            }
        }
        Ok(())
    }

    async fn upstream_response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut ReqCtx,
    ) -> Result<()> {
        let Some(rp) = ctx.policy.as_mut() else {
            return Ok(());
        };
        let status = upstream_response.status.as_u16();
        let grpc = upstream_response
            .headers
            .get("grpc-status")
            .and_then(|v| v.to_str().ok())
            .and_then(|s| s.trim().parse::<u8>().ok());
        let replayable = !session.retry_buffer_truncated();
        match rp.on_status(status, grpc, replayable, Instant::now()) {
            Verdict::Retry => {
                ctx.retry_pending = true;
                debug!(
                    status,
                    attempt = rp.attempts(),
                    upstream = ?ctx.upstream,
                    "retrying: the status is a retry condition of the route"
                );
                let mut e =
                    Error::explain(ErrorType::HTTPStatus(status), "retriable upstream status");
                e.set_retry(true);
                Err(e)
            }
            Verdict::Final(why) => {
                if why == "retries exhausted" && rp.attempts() > 1 {
                    ctx.flags = flags::RETRY_LIMIT_EXCEEDED;
                }
                Ok(())
            }
        }
    }

    fn upstream_response_body_filter(
        &self,
        session: &mut Session,
        _body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut ReqCtx,
    ) -> Result<Option<Duration>> {
        // The route timeout covers the whole response (not upgraded streams such as WebSocket).
        if let Some(rp) = &ctx.policy {
            if rp.expired(Instant::now()) && !session.was_upgraded() {
                ctx.flags = flags::UPSTREAM_TIMEOUT;
                return Error::e_explain(
                    ErrorType::ReadTimedout,
                    "route timeout expired while the response was streaming",
                );
            }
        }
        Ok(None)
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut ReqCtx,
        client_reused: bool,
    ) -> Box<Error> {
        let mut e = e.more_context(format!("Peer: {peer}"));
        if ctx.retry_pending {
            // Decided in upstream_response_filter.
            e.set_retry(true);
            return e;
        }
        let replayable = !session.retry_buffer_truncated();
        let Some(rp) = ctx.policy.as_mut() else {
            // Pingora's default: a reused connection that failed is tried once more.
            if !session.req_header().method.is_idempotent() || !replayable {
                e.set_retry(false);
            } else {
                e.retry.decide_reuse(client_reused);
            }
            return e;
        };
        if e.esource() == &ErrorSource::Downstream {
            e.set_retry(false);
            return e;
        }
        let outcome = match e.etype() {
            ErrorType::ReadTimedout | ErrorType::WriteTimedout => Outcome::PerTryTimeout,
            _ => Outcome::Reset,
        };
        let stale_pooled = client_reused
            && outcome == Outcome::Reset
            && session.req_header().method.is_idempotent()
            && replayable;
        let verdict = if stale_pooled {
            // A kept-alive connection the server had closed: not the endpoint's failure.
            Verdict::Retry
        } else {
            rp.on_failure(outcome, replayable, Instant::now())
        };
        match verdict {
            Verdict::Retry => {
                ctx.retry_pending = true;
                debug!(error = %e, attempt = rp.attempts(), "retrying after an upstream failure");
                e.set_retry(true);
            }
            Verdict::Final(why) => {
                debug!(error = %e, "not retried: {why}");
                e.set_retry(false);
            }
        }
        e
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut ReqCtx,
    ) -> Result<()> {
        apply_response_ops(upstream_response, &ctx.response_ops)?;
        for (k, v) in &ctx.extra_response_headers {
            upstream_response.insert_header(k.clone(), v.as_str())?;
        }
        if let Some(g) = upstream_response
            .headers
            .get("grpc-status")
            .and_then(|v| v.to_str().ok())
        {
            ctx.grpc_status = Some(g.to_string());
        }
        Ok(())
    }

    fn upstream_response_trailer_filter(
        &self,
        _session: &mut Session,
        trailers: &mut http::HeaderMap,
        ctx: &mut ReqCtx,
    ) -> Result<()> {
        if let Some(g) = trailers.get("grpc-status").and_then(|v| v.to_str().ok()) {
            ctx.grpc_status = Some(g.to_string());
        }
        Ok(())
    }

    fn fail_to_connect(
        &self,
        session: &mut Session,
        peer: &HttpPeer,
        ctx: &mut ReqCtx,
        e: Box<Error>,
    ) -> Box<Error> {
        ctx.flags = flags::UPSTREAM_CONNECT_FAILURE;
        debug!(peer = %peer, "upstream connect failed: {e}");
        let mut e = e;
        let replayable = !session.retry_buffer_truncated();
        if let Some(rp) = ctx.policy.as_mut() {
            match rp.on_failure(Outcome::ConnectFailure, replayable, Instant::now()) {
                Verdict::Retry => {
                    ctx.retry_pending = true;
                    e.set_retry(true);
                }
                Verdict::Final(why) => {
                    debug!("connect failure not retried: {why}");
                    e.set_retry(false);
                }
            }
        }
        e
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut ReqCtx,
    ) -> FailToProxy {
        let (code, flag) = match e.etype() {
            ErrorType::HTTPStatus(code) => (*code, ctx.flags),
            ErrorType::ConnectTimedout
            | ErrorType::ConnectRefused
            | ErrorType::ConnectNoRoute
            | ErrorType::ConnectError
            | ErrorType::BindError
            | ErrorType::SocketError
            | ErrorType::TLSHandshakeFailure
            | ErrorType::TLSHandshakeTimedout
            | ErrorType::InvalidCert
            | ErrorType::HandshakeError => (503, flags::UPSTREAM_CONNECT_FAILURE),
            ErrorType::ReadTimedout | ErrorType::WriteTimedout => (504, flags::UPSTREAM_TIMEOUT),
            _ => match e.esource() {
                // Envoy's answers, which Istio users alert on: a response the upstream got
                // wrong is 502 `UPE`; a connection it closed or reset before answering is
                // 503 `UC` (the keep-alive race's familiar "503 UC").
                ErrorSource::Upstream => match e.etype() {
                    ErrorType::InvalidHTTPHeader
                    | ErrorType::H1Error
                    | ErrorType::H2Error
                    | ErrorType::InvalidH2
                    | ErrorType::H2Downgrade => (502, flags::UPSTREAM_PROTOCOL_ERROR),
                    _ => (503, flags::UPSTREAM_TERMINATION),
                },
                ErrorSource::Downstream => match e.etype() {
                    ErrorType::WriteError | ErrorType::ReadError | ErrorType::ConnectionClosed => {
                        (0, flags::DOWNSTREAM_TERMINATION)
                    }
                    _ => (400, flags::NONE),
                },
                _ => (500, flags::NONE),
            },
        };
        if ctx.flags == flags::NONE || flag != flags::NONE {
            ctx.flags = flag;
        }
        ctx.error = Some(e.to_string());
        if code > 0 && ctx.grpc && session.response_written().is_none() {
            // gRPC clients need a gRPC status, as Envoy's local replies give them: a
            // trailers-only response (HTTP 200) with the status mapped from the HTTP code.
            let msg = format!("upstream error: {}", e.etype().as_str());
            match grpc_error_response(code, &msg) {
                Ok(resp) => {
                    ctx.grpc_status = Some(grpc_status_for_http(code).to_string());
                    if session.write_response_header(resp, true).await.is_err() {
                        debug!("could not send the gRPC error response to the downstream");
                    }
                }
                Err(_) => debug!("could not build the gRPC error response"),
            }
        } else if code > 0 {
            let body = Bytes::from(format!("upstream error: {}\n", e.etype().as_str()));
            if session.respond_error_with_body(code, body).await.is_err() {
                debug!("could not send the error response to the downstream");
            }
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut ReqCtx) {
        let status = session
            .response_written()
            .map(|r| r.status.as_u16())
            .or(ctx.local_status)
            .unwrap_or(0);
        if let (Some(e), None) = (e, &ctx.error) {
            ctx.error = Some(e.to_string());
        }
        let s = &self.shared.settings;
        let delayed_flags;
        let response_flags: &str = match (ctx.fault_delayed, ctx.flags) {
            (false, f) => f,
            (true, flags::NONE) => flags::DELAY_INJECTED,
            (true, f) => {
                delayed_flags = format!("{},{f}", flags::DELAY_INJECTED);
                &delayed_flags
            }
        };
        let duration_ms = ctx.start.elapsed().as_secs_f64() * 1000.0;
        let req_bytes = session.body_bytes_read() as u64;
        let resp_bytes = session.body_bytes_sent() as u64;
        let protocol: &'static str = if ctx.grpc {
            "grpc"
        } else if session.is_http2() {
            "http2"
        } else {
            "http"
        };
        let (sw, sns, dw, dns) = match self.dir {
            Direction::Outbound => (
                s.workload.name.as_str(),
                s.workload.namespace.as_str(),
                "unknown",
                "unknown",
            ),
            Direction::Inbound => (
                "unknown",
                "unknown",
                s.workload.name.as_str(),
                s.workload.namespace.as_str(),
            ),
        };
        let labels = HttpLabelsRef {
            reporter: self.dir.reporter(),
            source_workload: sw,
            source_workload_namespace: sns,
            destination_workload: dw,
            destination_workload_namespace: dns,
            destination_service: &ctx.destination_service,
            request_protocol: if ctx.grpc { "grpc" } else { "http" },
            response_code: status,
            grpc_response_status: ctx.grpc_status.as_deref().unwrap_or_default(),
            response_flags,
        };
        Metrics::get().record_http_ref(&labels, duration_ms, req_bytes, resp_bytes);
        s.access_log.write_http(&HttpLogEntry {
            start_time: std::mem::take(&mut ctx.started_at),
            kind: "http",
            direction: self.dir.as_str(),
            method: std::mem::take(&mut ctx.method),
            path: std::mem::take(&mut ctx.path),
            authority: std::mem::take(&mut ctx.authority),
            protocol,
            status,
            duration_ms,
            upstream: ctx.upstream,
            original_dst: ctx.dst,
            downstream: session.client_addr().and_then(|a| a.as_inet()).copied(),
            route_name: ctx.route_name.take(),
            virtual_service: ctx.virtual_service.take(),
            destination_service: std::mem::take(&mut ctx.destination_service),
            response_flags,
            bytes_received: req_bytes,
            bytes_sent: resp_bytes,
            request_id: std::mem::take(&mut ctx.request_id),
            traceparent: ctx.traceparent.take(),
            error: ctx.error.take(),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_local_replies_map_http_status_like_envoy() {
        let cases = [
            (503, 14),
            (502, 14),
            (504, 14),
            (429, 14),
            (404, 12),
            (403, 7),
            (401, 16),
            (400, 13),
            (500, 2),
        ];
        for (http, grpc) in cases {
            assert_eq!(grpc_status_for_http(http), grpc, "{http}");
        }
        let r = grpc_error_response(503, "no healthy upstream: a/b").unwrap();
        assert_eq!(r.status.as_u16(), 200);
        assert_eq!(r.headers.get("content-type").unwrap(), "application/grpc");
        assert_eq!(r.headers.get("grpc-status").unwrap(), "14");
        assert_eq!(
            r.headers.get("grpc-message").unwrap(),
            "no%20healthy%20upstream:%20a_b"
        );
    }

    #[test]
    fn connections_close_after_their_last_allowed_request() {
        // fd numbers far from real ones: the table is process-wide.
        let fd = 1_000_001;
        let seq: Vec<bool> = [false, true, true, false, true]
            .iter()
            .map(|&reused| last_request_on_connection(fd, reused, 3))
            .collect();
        // 1st, 2nd, 3rd (last) on one connection; a new connection on the same fd starts over.
        assert_eq!(seq, [false, false, true, false, false]);
        assert!(
            last_request_on_connection(fd + 1, false, 1),
            "1 disables keep-alive"
        );
    }

    #[test]
    fn request_ids_are_uuid_v4_shaped_and_distinct() {
        let a = new_request_id();
        let b = new_request_id();
        assert_ne!(a, b);
        assert_eq!(a.len(), 36);
        assert_eq!(&a[14..15], "4");
        assert!(matches!(&a[19..20], "8" | "9" | "a" | "b"), "{a}");
        for (i, c) in a.chars().enumerate() {
            if matches!(i, 8 | 13 | 18 | 23) {
                assert_eq!(c, '-', "{a}");
            } else {
                assert!(c.is_ascii_hexdigit() && !c.is_ascii_uppercase(), "{a}");
            }
        }
    }

    #[test]
    fn header_ops_apply_in_istio_order() {
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        req.insert_header("x-old", "1").unwrap();
        req.insert_header("x-keep", "1").unwrap();
        let ops = HeaderOps {
            set: vec![("x-set".into(), "a".into()), ("x-keep".into(), "2".into())],
            add: vec![("x-add".into(), "b".into()), ("x-keep".into(), "3".into())],
            remove: vec!["x-old".into()],
        };
        apply_request_ops(&mut req, &ops).unwrap();
        assert!(req.headers.get("x-old").is_none());
        assert_eq!(req.headers.get("x-set").unwrap(), "a");
        let keep: Vec<_> = req.headers.get_all("x-keep").iter().collect();
        assert_eq!(keep, vec!["2", "3"]);
        assert_eq!(req.headers.get("x-add").unwrap(), "b");
    }
}
