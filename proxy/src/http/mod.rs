//! The HTTP side of the capture listeners: Pingora's `ProxyHttp` for one direction. Each step
//! of a request is a function of its own module; this impl only puts them in order.
//!
//! An outbound request is routed by the rules, then goes through the rate limit
//! ([`ratelimit`]), CORS ([`cors`]), fault injection ([`fault`]), mirroring ([`mirror`]), pool
//! admission ([`admission`]) and the endpoint pick ([`pick`]); its upstream peer is built by
//! [`peer`] and the request rewritten by [`rewrite`]; failures are retried by [`retry`] and
//! answered by [`failure`]; [`log`] records it. An inbound request goes through
//! RequestAuthentication ([`jwt`]) and AuthorizationPolicy ([`authz`]), then to the original
//! destination; at the gateway, the same two steps come before the gateway's routing.

mod admission;
pub mod authz;
mod cors;
mod exchange;
mod failure;
mod fault;
mod grpc_status;
mod jwt;
mod local_reply;
mod log;
mod max_requests;
mod mirror;
mod peer;
mod pick;
mod ratelimit;
mod request_id;
mod retry;
mod rewrite;
mod trace;

use crate::guard::stream_idle;
use crate::policy::request::RequestPolicy;
use crate::route::{self, Decision, Forward, HeaderOps, RequestInfo};
use crate::rules::Snapshot;
use crate::state::{Direction, Shared};
use crate::telemetry::{self, flags};
use crate::upstream::HostResolver;
use async_trait::async_trait;
use bytes::Bytes;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, Result};
use remora_model::telemetry::Side;
use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Per-request state.
pub struct ReqCtx {
    start: Instant,
    started_at: String,
    dst: Option<SocketAddr>,
    upstream: Option<SocketAddr>,
    upstream_h2: bool,
    /// The upstream connection is mesh mTLS (outbound).
    mesh_upstream: bool,
    /// The client's identity, when it came over mesh mTLS (inbound).
    peer_identity: Option<std::sync::Arc<crate::mtls::inbound::PeerInfo>>,
    /// What the peer sidecar said of itself in Istio's metadata exchange (over mesh mTLS only).
    exchanged: Option<Arc<telemetry::Peer>>,
    authority: String,
    method: String,
    path: String,
    request_id: String,
    traceparent: Option<String>,
    route_name: Option<String>,
    virtual_service: Option<String>,
    /// The service label of metrics and the access log: from the rules, discovery or the
    /// workload's identity, never the raw Host (see [`log`]).
    destination_service: Cow<'static, str>,
    forward: Option<ForwardOps>,
    response_ops: HeaderOps,
    flags: &'static str,
    local_status: Option<u16>,
    grpc: bool,
    /// A gRPC status code (`0`..=`16`) as its label value.
    grpc_status: Option<&'static str>,
    error: Option<String>,
    /// Why the last upstream connection attempt failed (Envoy's
    /// `%UPSTREAM_TRANSPORT_FAILURE_REASON%`).
    transport_failure: Option<String>,
    /// The local address of the upstream connection (plain TCP or TLS origination; a mesh mTLS
    /// connection goes through a local relay, whose address says nothing).
    upstream_local: Option<SocketAddr>,
    /// When the request was sent upstream (its headers, or the end of its body; the first
    /// attempt's, as Envoy measures from the end of the downstream request across retries).
    upstream_sent: Option<Instant>,
    /// Envoy's `x-envoy-upstream-service-time`: from `upstream_sent` to the upstream's response
    /// headers, whole milliseconds.
    upstream_service_ms: Option<u64>,
    /// Traffic policies of this request (outbound requests with a route decision).
    policy: Option<RequestPolicy>,
    /// The address to use when the destination has no endpoint list.
    fixed_upstream: Option<SocketAddr>,
    /// A retry was decided; `upstream_peer` picks the next endpoint.
    retry_pending: bool,
    /// Fault injection delayed this request (flag `DI`).
    fault_delayed: bool,
    /// Headers added to the response (`x-ratelimit-*`, CORS).
    extra_response_headers: Vec<(String, String)>,
    /// Mirror copies waiting for the request body, and the body so far.
    mirrors: Vec<mirror::PendingMirror>,
    mirror_body: Option<bytes::BytesMut>,
    /// This request is the last its HTTP/1 upstream connection may carry
    /// (`connectionPool.http.maxRequestsPerConnection`): it goes out with `Connection: close`.
    close_upstream: bool,
    /// The request's trace (tracing on): sampled or not, and the span's facts.
    trace: trace::Traced,
    /// Where its access-log lines go (the Telemetry rules of its side, read with the rules
    /// the request is routed by).
    log_to: telemetry::accesslog::LogTargets,
    /// The port and subset the rules routed an outbound request to (Istio's cluster name).
    route_port: u16,
    subset: Option<String>,
}

/// The route's changes to the upstream request.
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
    /// Set in `remora-proxy gateway`: requests are routed by the Gateways' servers and the
    /// VirtualServices bound to them, and their destination is the gateway's own port.
    pub gateway: Option<Arc<crate::gateway::GatewayRouter>>,
}

fn header_str(req: &RequestHeader, name: impl http::header::AsHeaderName) -> Option<&str> {
    req.headers.get(name).and_then(|v| v.to_str().ok())
}

/// Parsed once (a `&str` name is parsed per lookup).
static TRACEPARENT: http::HeaderName = http::HeaderName::from_static("traceparent");

/// The request facts every later step reads.
fn note_request(req: &RequestHeader, ctx: &mut ReqCtx) {
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
}

/// The service an inbound request names, as metrics label it: the request's Host when it names
/// a service known to configuration or discovery (this workload's own Service
/// `<workload>.<namespace>.svc.<domain>`, the Service whose ClusterIP the request came to, a
/// host discovery knows, a ServiceEntry host), else `unknown`. Never the raw Host: a client
/// could make up one per request, and each would be a new series.
fn inbound_service(
    snap: &Snapshot,
    s: &crate::state::Settings,
    authority: &str,
    dst: SocketAddr,
) -> Cow<'static, str> {
    let unknown = Cow::Borrowed(telemetry::UNKNOWN);
    let (host, _) = remora_model::host::split_authority(authority);
    if host.is_empty() || host.parse::<std::net::IpAddr>().is_ok() {
        return unknown;
    }
    let (ns, domain) = (&snap.ctx.namespace, &snap.ctx.cluster_domain);
    let own = |c: &str| {
        c.strip_suffix(domain.as_str())
            .and_then(|c| c.strip_suffix(".svc."))
            .and_then(|c| c.strip_suffix(ns.as_str()))
            .and_then(|c| c.strip_suffix('.'))
            == Some(s.workload.name.as_str())
    };
    let cands = remora_model::host::candidates(&host, ns, domain);
    let by_ip = snap.endpoints.host_of_ip(dst.ip());
    cands
        .into_iter()
        .find(|c| {
            own(c)
                || by_ip.as_deref() == Some(c.as_str())
                || snap.endpoints.has_port(c, dst.port()).is_some()
                || snap.best_service_entry(std::slice::from_ref(c)).is_some()
        })
        .map_or(unknown, Cow::Owned)
}

impl MeshHttp {
    /// RequestAuthentication ([`jwt`]), then AuthorizationPolicy ([`authz`]): on the sidecar's
    /// inbound side, and at the gateway before routing. `Ok(true)` when refused (and answered).
    async fn authenticate(
        &self,
        session: &mut Session,
        ctx: &mut ReqCtx,
        snap: &Snapshot,
        dst: SocketAddr,
        at: authz::At,
    ) -> Result<bool> {
        let metrics = &self.shared.metrics;
        let auth = match jwt::check(session, ctx, snap, &self.shared.jwt, metrics).await? {
            jwt::Step::Answered => return Ok(true),
            jwt::Step::Continue(auth) => auth,
        };
        authz::check(session, ctx, snap, dst, auth, metrics, at).await
    }

    /// A request the rules forward: the request steps in order, each of which may answer it
    /// (`Ok(true)`, as `request_filter` returns it).
    async fn forward(
        &self,
        session: &mut Session,
        ctx: &mut ReqCtx,
        snap: &Snapshot,
        mut f: Forward,
        dst: SocketAddr,
    ) -> Result<bool> {
        let port = if f.port == 0 { dst.port() } else { f.port };
        ctx.route_name = f.route_name.clone();
        ctx.virtual_service = f.virtual_service.clone();
        ctx.destination_service = Cow::Owned(f.host.clone());
        ctx.route_port = port;
        ctx.subset = f.subset.clone();
        let policies = &self.shared.policies;
        if ratelimit::check(session, ctx, policies, snap, &f).await? {
            return Ok(true);
        }
        if cors::apply(session, ctx, policies, snap, &f).await? {
            return Ok(true);
        }
        if fault::inject(session, ctx, &f).await? {
            return Ok(true);
        }
        mirror::start(session, ctx, self, snap, &f, port, dst).await;
        let dest = policies.destination(snap, &f.host, f.subset.as_deref(), port);
        let Some(admitted) = admission::admit(session, ctx, &dest).await? else {
            return Ok(true);
        };
        if pick::first(
            session,
            ctx,
            &self.resolver,
            dest,
            admitted,
            &mut f,
            port,
            dst,
        )
        .await?
        {
            return Ok(true);
        }
        ctx.response_ops = f.response_headers;
        ctx.forward = Some(ForwardOps {
            request: f.request_headers,
            authority: f.authority_rewrite,
            uri: f.uri_rewrite,
        });
        Ok(false)
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
            mesh_upstream: false,
            peer_identity: None,
            exchanged: None,
            authority: String::new(),
            method: String::new(),
            path: String::new(),
            request_id: String::new(),
            traceparent: None,
            route_name: None,
            virtual_service: None,
            destination_service: Cow::Borrowed(telemetry::UNKNOWN),
            forward: None,
            response_ops: HeaderOps::default(),
            flags: flags::NONE,
            local_status: None,
            grpc: false,
            grpc_status: None,
            error: None,
            transport_failure: None,
            upstream_local: None,
            upstream_sent: None,
            upstream_service_ms: None,
            policy: None,
            fixed_upstream: None,
            retry_pending: false,
            fault_delayed: false,
            extra_response_headers: Vec::new(),
            mirrors: Vec::new(),
            mirror_body: None,
            close_upstream: false,
            trace: trace::Traced::No,
            log_to: telemetry::accesslog::LogTargets::Default,
            route_port: 0,
            subset: None,
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut ReqCtx) -> Result<bool> {
        // (`started_at` is new_ctx's, a moment ago: formatting it twice cost a string per request.)
        ctx.start = Instant::now();
        stream_idle::touch();
        let socket = session.digest().and_then(|d| d.socket_digest.clone());
        ctx.dst = match &self.gateway {
            Some(_) => crate::gateway::local_addr(socket.as_deref()),
            None => self.shared.original_dst(self.dir, socket.as_deref()),
        };
        // Inbound mTLS, or a gateway's ISTIO_MUTUAL server: the client's checked identity.
        if (self.dir == Direction::Inbound || self.gateway.is_some())
            && self.shared.identity.is_some()
        {
            ctx.peer_identity = socket
                .as_ref()
                .and_then(|d| d.peer_addr())
                .and_then(|a| a.as_inet())
                .and_then(|a| self.shared.peers.get(*a));
        }
        note_request(session.req_header(), ctx);
        exchange::on_request(self.dir, session.req_header(), ctx);
        let new_id = request_id::take(session.req_header(), ctx);
        // One snapshot for the whole request: its Telemetry settings, then its route or its
        // inbound policies.
        let snap = self.shared.snapshot.load_full();
        let side = match self.dir {
            Direction::Outbound => Side::Client,
            Direction::Inbound => Side::Server,
        };
        let rules = snap.telemetry.side(side);
        let s = &self.shared.settings;
        ctx.log_to = telemetry::accesslog::log_targets(&s.access_log_providers, rules);
        if let Some(tracer) = trace::tracer_for(s, rules) {
            trace::on_request(tracer, rules, session.req_header_mut(), ctx, new_id)?;
        }
        if new_id {
            request_id::put(session, ctx)?;
        }
        let Some(dst) = ctx.dst else {
            ctx.flags = flags::NO_ROUTE;
            return local_reply::send(session, ctx, 503, &[], "no original destination\n").await;
        };
        if self.dir == Direction::Inbound {
            ctx.upstream = Some(dst);
            ctx.destination_service =
                inbound_service(&snap, &self.shared.settings, &ctx.authority, dst);
            let num_trusted_proxies = self.shared.settings.num_trusted_proxies;
            let at = authz::At::Inbound {
                num_trusted_proxies,
            };
            return self.authenticate(session, ctx, &snap, dst, at).await;
        }
        if self.gateway.is_some() {
            // The gateway's pod is the workload: its policies, before routing.
            let num_trusted_proxies = self.shared.settings.num_trusted_proxies;
            let at = authz::At::Gateway {
                num_trusted_proxies,
            };
            if self.authenticate(session, ctx, &snap, dst, at).await? {
                return Ok(true);
            }
        }
        let decision = {
            let req = session.req_header();
            let info = RequestInfo {
                authority: &ctx.authority,
                method: &ctx.method,
                path: &ctx.path,
                headers: &req.headers,
                dst,
            };
            match &self.gateway {
                Some(g) => g.route(&snap, &info, crate::gateway::peer_ip(socket.as_deref())),
                None => route::route(&snap, &info, &mut rand::thread_rng()),
            }
        };
        match decision {
            Decision::Passthrough => {
                ctx.upstream = Some(dst);
                ctx.destination_service = Cow::Borrowed(telemetry::PASSTHROUGH);
                Ok(false)
            }
            Decision::Forward(f) => self.forward(session, ctx, &snap, f, dst).await,
            Decision::Redirect { status, location } => {
                local_reply::send(session, ctx, status, &[("location", &location)], "").await
            }
            Decision::Deny { status, reason } => {
                ctx.flags = flags::NO_ROUTE;
                if reason.starts_with(route::BLACK_HOLE) {
                    ctx.destination_service = Cow::Borrowed(route::BLACK_HOLE);
                }
                ctx.error = Some(reason.clone());
                local_reply::send(session, ctx, status, &[], &format!("{reason}\n")).await
            }
            Decision::DirectResponse { status, body } => {
                local_reply::send(session, ctx, status, &[], &body).await
            }
        }
    }

    async fn upstream_peer(
        &self,
        session: &mut Session,
        ctx: &mut ReqCtx,
    ) -> Result<Box<HttpPeer>> {
        pick::on_retry(session, ctx);
        peer::build(session, ctx, self.dir, &self.shared)
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
        let connect_timeout = self.shared.settings.connect_timeout;
        if !ctx.mesh_upstream {
            ctx.upstream_local = digest
                .and_then(|d| d.socket_digest.as_ref())
                .and_then(|s| s.local_addr())
                .and_then(|a| a.as_inet())
                .copied();
        }
        peer::check_new_connection(reused, peer, digest, ctx, connect_timeout).await?;
        let max = ctx
            .policy
            .as_ref()
            .and_then(|p| p.dest.as_ref())
            .map_or(0, |d| d.policy.connection_pool.max_requests_per_connection);
        ctx.close_upstream = max > 0
            && !ctx.upstream_h2
            && max_requests::last_request_on_connection(fd, reused, max);
        Ok(())
    }

    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut ReqCtx,
    ) -> Result<()> {
        ctx.upstream_sent.get_or_insert_with(Instant::now);
        rewrite::upstream_request(upstream_request, ctx)?;
        trace::on_upstream_request(upstream_request, ctx)?;
        exchange::on_upstream_request(
            self.dir,
            upstream_request,
            ctx,
            &self.shared.settings.workload,
        )
    }

    async fn request_body_filter(
        &self,
        session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut ReqCtx,
    ) -> Result<()> {
        stream_idle::touch();
        if end_of_stream && ctx.upstream_sent.is_some() {
            ctx.upstream_sent = Some(Instant::now());
        }
        mirror::on_body(session, ctx, body, end_of_stream, &self.shared.metrics);
        Ok(())
    }

    async fn upstream_response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut ReqCtx,
    ) -> Result<()> {
        stream_idle::touch();
        ctx.upstream_service_ms = ctx
            .upstream_sent
            .map(|t| t.elapsed().as_millis().try_into().unwrap_or(u64::MAX));
        retry::on_status(session, upstream_response, ctx)
    }

    fn upstream_response_body_filter(
        &self,
        session: &mut Session,
        _body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut ReqCtx,
    ) -> Result<Option<Duration>> {
        stream_idle::touch();
        retry::check_route_timeout(session, ctx)
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut ReqCtx,
        client_reused: bool,
    ) -> Box<Error> {
        retry::on_proxy_error(peer, session, e, ctx, client_reused)
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut ReqCtx,
    ) -> Result<()> {
        rewrite::response(upstream_response, ctx)?;
        exchange::on_response(
            self.dir,
            upstream_response,
            ctx,
            &self.shared.settings.workload,
        )?;
        grpc_status::note_upstream(ctx, &upstream_response.headers);
        Ok(())
    }

    fn upstream_response_trailer_filter(
        &self,
        _session: &mut Session,
        trailers: &mut http::HeaderMap,
        ctx: &mut ReqCtx,
    ) -> Result<()> {
        grpc_status::note_upstream(ctx, trailers);
        Ok(())
    }

    fn fail_to_connect(
        &self,
        session: &mut Session,
        peer: &HttpPeer,
        ctx: &mut ReqCtx,
        e: Box<Error>,
    ) -> Box<Error> {
        retry::on_connect_failure(session, peer, ctx, e)
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut ReqCtx,
    ) -> FailToProxy {
        failure::answer(session, e, ctx).await
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut ReqCtx) {
        log::record(
            self.dir,
            self.gateway.is_some(),
            &self.shared,
            session,
            e,
            ctx,
        );
    }
}
