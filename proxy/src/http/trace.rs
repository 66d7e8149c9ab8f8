//! Tracing of one request, as Envoy's tracer does it in Istio: the trace context decided when
//! the request arrives (`telemetry::trace_context`: the W3C and B3 headers, else the request's
//! `x-request-id`), the W3C and B3 headers of the next hop rewritten to this proxy's span, and the
//! finished span handed to the exporter with Istio's name and tags. With tracing off nothing
//! here runs. A request that is not sampled makes no span and, on its usual path, gets no header:
//! its `x-request-id` (the client's or the one `request_id` gave it) is its roll, which the next
//! hops roll the same; only a request whose id carries no roll (not starting with 8 hex digits)
//! and that this proxy's random roll left unsampled gets `x-b3-sampled: 0`. The header cost
//! about 3 k instructions per request, mostly growing Pingora's two header maps of the upstream
//! request (docs/benchmarks.md). A request sampled by its id's roll has the id marked (Envoy's
//! trace nibble); a generated id is marked before it is set on the request, at no cost. On the
//! unsampled path nothing is allocated: the trace headers are found in one pass over the
//! request's headers, and span ids are drawn only for a sampled request.

use super::{header_str, ReqCtx};
use crate::state::Direction;
use crate::telemetry::span::{Kind, Span};
use crate::telemetry::trace_context::{self, Decision, Headers, TraceContext};
use crate::telemetry::tracer::Tracer;
use pingora::http::RequestHeader;
use pingora::Result;
use remora_model::telemetry::SideSettings;
use std::sync::Arc;

static TRACEPARENT: http::HeaderName = http::HeaderName::from_static("traceparent");
static TRACESTATE: http::HeaderName = http::HeaderName::from_static("tracestate");
static B3: http::HeaderName = http::HeaderName::from_static("b3");
static X_B3_TRACEID: http::HeaderName = http::HeaderName::from_static("x-b3-traceid");
static X_B3_SPANID: http::HeaderName = http::HeaderName::from_static("x-b3-spanid");
static X_B3_PARENTSPANID: http::HeaderName = http::HeaderName::from_static("x-b3-parentspanid");
static X_B3_SAMPLED: http::HeaderName = http::HeaderName::from_static("x-b3-sampled");

/// A sampled request's trace state.
pub(super) struct ReqTrace {
    /// The tracer of the provider the request's side uses.
    tracer: Arc<Tracer>,
    ctx: TraceContext,
    start_unix_nanos: u64,
    /// The request came with a single `b3` header (rewritten too).
    b3_single: bool,
    tracestate: Option<String>,
    /// Report the span (`false`: a Telemetry rule's `disableSpanReporting`).
    report: bool,
}

/// What the request path keeps of tracing.
#[derive(Default)]
pub(super) enum Traced {
    /// Tracing off, or not sampled with the headers or the request id already saying so.
    #[default]
    No,
    /// Not sampled by a random roll, and the next hop must be told.
    UnsampledRoot,
    Sampled(Box<ReqTrace>),
}

/// The tracer for a request whose side has `rules`: the provider a Telemetry rule names (none
/// when the proxy has no provider of that name), else the default one.
pub(super) fn tracer_for<'a>(
    s: &'a crate::state::Settings,
    rules: &SideSettings,
) -> Option<&'a Arc<Tracer>> {
    match &rules.tracing_provider {
        None => s.tracer.as_ref(),
        Some(name) => s.tracers.iter().find(|(n, _)| n == name).map(|(_, t)| t),
    }
}

/// The trace headers of `req`, in one pass over its headers (the first value of each name).
fn trace_headers(req: &RequestHeader) -> Headers<'_> {
    let mut h = Headers::default();
    for (name, value) in req.headers.iter() {
        let slot = match name.as_str() {
            "traceparent" => &mut h.traceparent,
            "b3" => &mut h.b3,
            "x-b3-traceid" => &mut h.x_b3_traceid,
            "x-b3-spanid" => &mut h.x_b3_spanid,
            "x-b3-sampled" => &mut h.x_b3_sampled,
            "x-b3-flags" => &mut h.x_b3_flags,
            _ => continue,
        };
        if slot.is_none() {
            *slot = value.to_str().ok();
        }
    }
    h
}

/// Decide the request's trace with `tracer` (its side's); the Telemetry rules'
/// `randomSamplingPercentage` replaces the configured percentage, `disableSpanReporting` keeps
/// the decision and its headers but reports no span. `ctx.request_id` is the request's id
/// (`request_id::take` ran; `new_id`: generated, not on the request yet); sampled by that id's
/// roll, the id is marked sampled.
pub(super) fn on_request(
    tracer: &Arc<Tracer>,
    rules: &SideSettings,
    req: &mut RequestHeader,
    ctx: &mut ReqCtx,
    new_id: bool,
) -> Result<()> {
    let h = trace_headers(req);
    let incoming = trace_context::incoming(&h);
    let id = trace_context::request_id_trace(&ctx.request_id);
    let percent = rules
        .random_sampling_percentage
        .unwrap_or_else(|| tracer.sampling());
    // The roll is drawn only when neither the headers nor the id decide; ids only when sampled.
    let d = trace_context::decide_lazy(incoming, id, percent, rand::random::<f64>, new_ids);
    ctx.trace = match d {
        Decision::Unsampled => Traced::No,
        Decision::UnsampledRoot => Traced::UnsampledRoot,
        Decision::Sampled(c) => Traced::Sampled(Box::new(ReqTrace {
            tracer: tracer.clone(),
            ctx: c,
            start_unix_nanos: unix_nanos(),
            b3_single: h.b3.is_some(),
            tracestate: h_tracestate(req),
            report: rules.disable_span_reporting != Some(true),
        })),
    };
    if matches!(ctx.trace, Traced::Sampled(_)) && trace_context::rolled_on_request_id(incoming, id)
    {
        super::request_id::mark_sampled(req, ctx, new_id)?;
    }
    Ok(())
}

fn h_tracestate(req: &RequestHeader) -> Option<String> {
    header_str(req, &TRACESTATE).map(str::to_string)
}

/// A new trace id and span id.
fn new_ids() -> (trace_context::TraceId, trace_context::SpanId) {
    let (a, b, c): (u64, u64, u64) = rand::random();
    let mut t = [0u8; 16];
    t[..8].copy_from_slice(&a.to_ne_bytes());
    t[8..].copy_from_slice(&b.to_ne_bytes());
    (nonzero(t), nonzero(c.to_ne_bytes()))
}

/// A random id is never all zero (an invalid id in both formats).
fn nonzero<const N: usize>(mut b: [u8; N]) -> [u8; N] {
    if b == [0u8; N] {
        b[N - 1] = 1;
    }
    b
}

fn unix_nanos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// The next hop's trace headers.
pub(super) fn on_upstream_request(req: &mut RequestHeader, ctx: &ReqCtx) -> Result<()> {
    match &ctx.trace {
        Traced::No => Ok(()),
        // A static name: the header's case-preserving copy is not allocated.
        Traced::UnsampledRoot => req
            .insert_header(
                bytes::Bytes::from_static(b"x-b3-sampled"),
                http::HeaderValue::from_static("0"),
            )
            .map(|_| ()),
        Traced::Sampled(t) => {
            let o = t.ctx.outgoing();
            req.insert_header(TRACEPARENT.clone(), o.traceparent)?;
            req.insert_header(X_B3_TRACEID.clone(), o.x_b3_traceid)?;
            req.insert_header(X_B3_SPANID.clone(), o.x_b3_spanid)?;
            match o.x_b3_parentspanid {
                Some(p) => {
                    req.insert_header(X_B3_PARENTSPANID.clone(), p)?;
                }
                None => {
                    req.remove_header(&X_B3_PARENTSPANID);
                }
            }
            req.insert_header(X_B3_SAMPLED.clone(), o.x_b3_sampled)?;
            if t.b3_single {
                req.insert_header(B3.clone(), o.b3)?;
            }
            Ok(())
        }
    }
}

/// What the finished request says, for its span.
pub(super) struct Finished<'a> {
    pub dir: Direction,
    pub gateway: bool,
    pub status: u16,
    pub response_flags: &'a str,
    pub protocol: &'static str,
    pub peer_address: Option<std::net::IpAddr>,
    pub request_size: u64,
    pub response_size: u64,
    pub user_agent: Option<&'a str>,
    /// Istio's `upstream_cluster` (`outbound|port|subset|host`, `inbound|port||`, ...).
    pub cluster: String,
    /// The port in the span's name (the routed port outbound, the app's inbound).
    pub port: u16,
    /// The Telemetry rules' `customTags`, and the request they read headers of.
    pub custom_tags: &'a std::collections::BTreeMap<String, remora_model::telemetry::CustomTag>,
    pub request: &'a RequestHeader,
}

/// Report a sampled request's span (Istio's name and tags) to its tracer.
pub(super) fn finish(ctx: &mut ReqCtx, f: &Finished<'_>) {
    let Traced::Sampled(t) = std::mem::take(&mut ctx.trace) else {
        return;
    };
    let t = *t;
    if !t.report {
        return;
    }
    let tracer = &*t.tracer;
    let own = &tracer.own;
    let service: &str = &ctx.destination_service;
    let cluster = f.cluster.clone();
    let name = if service == crate::telemetry::UNKNOWN && f.dir == Direction::Inbound {
        format!("{cluster}/*")
    } else {
        format!("{service}:{}/*", f.port)
    };
    let scheme = "http";
    let mut tags: Vec<(&'static str, String)> = vec![
        ("component", "proxy".into()),
        ("node_id", own.node_id.clone()),
        ("istio.canonical_service", own.canonical_service.clone()),
        ("istio.canonical_revision", own.canonical_revision.clone()),
        ("istio.mesh_id", own.mesh_id.clone()),
        ("istio.namespace", own.namespace.clone()),
        ("guid:x-request-id", ctx.request_id.clone()),
        (
            "http.url",
            format!("{scheme}://{}{}", ctx.authority, ctx.path),
        ),
        ("http.method", ctx.method.clone()),
        ("http.protocol", f.protocol.to_string()),
        ("http.status_code", f.status.to_string()),
        ("response_flags", f.response_flags.to_string()),
        ("upstream_cluster", cluster.clone()),
        ("upstream_cluster.name", cluster),
        ("downstream_cluster", "-".into()),
        ("request_size", f.request_size.to_string()),
        ("response_size", f.response_size.to_string()),
        ("user_agent", f.user_agent.unwrap_or("-").to_string()),
    ];
    if let Some(ip) = f.peer_address {
        tags.push(("peer.address", ip.to_string()));
    }
    let kind = match (f.dir, f.gateway) {
        (Direction::Inbound, _) | (Direction::Outbound, true) => Kind::Server,
        (Direction::Outbound, false) => Kind::Client,
    };
    let custom_tags = f
        .custom_tags
        .iter()
        .filter_map(|(name, tag)| Some((name.clone(), custom_tag_value(tag, f.request)?)))
        .collect();
    tracer.report(Span {
        ctx: t.ctx,
        kind,
        name,
        start_unix_nanos: t.start_unix_nanos,
        duration_nanos: ctx.start.elapsed().as_nanos() as u64,
        tags,
        custom_tags,
        error: f.status >= 500 || f.status == 0,
        tracestate: t.tracestate,
    });
}

/// A custom tag's value: the literal, the request header or the environment variable (its
/// `defaultValue` when absent; no tag when there is neither).
fn custom_tag_value(
    tag: &remora_model::telemetry::CustomTag,
    req: &RequestHeader,
) -> Option<String> {
    if let Some(l) = &tag.literal {
        return Some(l.value.clone());
    }
    if let Some(h) = &tag.header {
        return req
            .headers
            .get(h.name.as_str())
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
            .or_else(|| h.default_value.clone());
    }
    let e = tag.environment.as_ref()?;
    std::env::var(&e.name)
        .ok()
        .or_else(|| e.default_value.clone())
}
