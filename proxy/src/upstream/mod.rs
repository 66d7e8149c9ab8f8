//! Upstream side: the Pingora `ProxyHttp` that applies routing decisions, endpoint choice and
//! TCP connections to upstreams (with the inbound source address).

pub mod lb;

use crate::listen::{Direction, Shared};
use crate::route::{self, Decision, HeaderOps, RequestInfo};
use crate::rules::Protocol;
use crate::telemetry::{self, flags, HttpLabels, HttpLogEntry, Metrics};
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
}

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

fn header_str<'a>(req: &'a RequestHeader, name: &str) -> Option<&'a str> {
    req.headers.get(name).and_then(|v| v.to_str().ok())
}

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

/// A new `x-request-id` (UUID v4 form).
pub fn new_request_id() -> String {
    let b: [u8; 16] = rand::random();
    let mut b = b;
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
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

    fn port_protocol(&self, dst: SocketAddr, host: &str) -> Option<Protocol> {
        self.shared.snapshot.load().port_protocol(dst, Some(host))
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
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut ReqCtx) -> Result<bool> {
        ctx.start = Instant::now();
        ctx.started_at = telemetry::accesslog::now_rfc3339();
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
                .or_else(|| header_str(req, "host").map(str::to_string))
                .unwrap_or_default();
            ctx.traceparent = header_str(req, "traceparent").map(str::to_string);
            ctx.grpc =
                header_str(req, "content-type").is_some_and(|c| c.starts_with("application/grpc"));
            ctx.request_id = header_str(req, "x-request-id")
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
        let snap = self.shared.snapshot.load();
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
                let picked = lb::pick(&f.endpoints, &mut rand::thread_rng());
                let port = if f.port == 0 { dst.port() } else { f.port };
                let upstream = match picked {
                    Some(a) => Ok(a),
                    None => {
                        // The rules say whether the route still points at what the client
                        // addressed (then the original destination reaches it) or elsewhere.
                        drop(snap);
                        if f.resolve_by_dns {
                            self.resolver.resolve(&f.host, port, dst).await
                        } else {
                            Ok(SocketAddr::new(dst.ip(), port))
                        }
                    }
                };
                ctx.route_name = f.route_name;
                ctx.virtual_service = f.virtual_service;
                ctx.destination_service = f.host.clone();
                let upstream = match upstream {
                    Ok(a) => a,
                    Err(e) => {
                        ctx.flags = flags::NO_HEALTHY_UPSTREAM;
                        ctx.error = Some(e);
                        return self
                            .respond_local(session, ctx, 503, &[], "no healthy upstream\n")
                            .await;
                    }
                };
                ctx.upstream = Some(upstream);
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
        let Some(addr) = ctx.upstream else {
            return Error::e_explain(ErrorType::InternalError, "no upstream chosen");
        };
        let mut peer = HttpPeer::new(addr, false, String::new());
        let proto = ctx.dst.and_then(|d| self.port_protocol(d, &ctx.authority));
        ctx.upstream_h2 =
            session.is_http2() || matches!(proto, Some(Protocol::Http2) | Some(Protocol::Grpc));
        if ctx.upstream_h2 {
            peer.options.set_http_version(2, 2);
        } else {
            peer.options.set_http_version(1, 1);
        }
        let s = &self.shared.settings;
        peer.options.connection_timeout = Some(s.connect_timeout);
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

    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut ReqCtx,
    ) -> Result<()> {
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

    async fn response_filter(
        &self,
        _session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut ReqCtx,
    ) -> Result<()> {
        apply_response_ops(upstream_response, &ctx.response_ops)?;
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
        _session: &mut Session,
        peer: &HttpPeer,
        ctx: &mut ReqCtx,
        e: Box<Error>,
    ) -> Box<Error> {
        ctx.flags = flags::UPSTREAM_CONNECT_FAILURE;
        debug!(peer = %peer, "upstream connect failed: {e}");
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
            | ErrorType::SocketError => (503, flags::UPSTREAM_CONNECT_FAILURE),
            ErrorType::ReadTimedout | ErrorType::WriteTimedout => (504, flags::UPSTREAM_TIMEOUT),
            _ => match e.esource() {
                ErrorSource::Upstream => (502, flags::UPSTREAM_TERMINATION),
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
        let labels = HttpLabels {
            reporter: self.dir.reporter(),
            source_workload: sw,
            source_workload_namespace: sns,
            destination_workload: dw,
            destination_workload_namespace: dns,
            destination_service: ctx.destination_service.clone(),
            request_protocol: if ctx.grpc { "grpc" } else { "http" },
            response_code: status,
            grpc_response_status: ctx.grpc_status.clone().unwrap_or_default(),
            response_flags: ctx.flags.to_string(),
        };
        Metrics::get().record_http(&labels, duration_ms, req_bytes, resp_bytes);
        s.access_log.write(&HttpLogEntry {
            start_time: std::mem::take(&mut ctx.started_at),
            kind: "http",
            direction: self.dir.as_str(),
            method: std::mem::take(&mut ctx.method),
            path: std::mem::take(&mut ctx.path),
            authority: std::mem::take(&mut ctx.authority),
            protocol,
            status,
            duration_ms,
            upstream: ctx.upstream.map(|u| u.to_string()),
            original_dst: ctx.dst.map(|d| d.to_string()),
            downstream: session
                .client_addr()
                .and_then(|a| a.as_inet())
                .map(|a| a.to_string()),
            route_name: ctx.route_name.take(),
            virtual_service: ctx.virtual_service.take(),
            destination_service: std::mem::take(&mut ctx.destination_service),
            response_flags: ctx.flags.to_string(),
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
    fn request_ids_are_uuid_v4_shaped_and_distinct() {
        let a = new_request_id();
        let b = new_request_id();
        assert_ne!(a, b);
        assert_eq!(a.len(), 36);
        assert_eq!(&a[14..15], "4");
        assert!(matches!(&a[19..20], "8" | "9" | "a" | "b"), "{a}");
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
