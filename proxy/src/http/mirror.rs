//! Request mirroring (a route's `mirror`/`mirrors`): copies sent without waiting, whose outcome
//! never reaches the caller. A request without a body is copied at once; one with a body once
//! the body is complete, and not at all when the body is larger than [`MIRROR_BODY_LIMIT`].

use super::{MeshHttp, ReqCtx};
use crate::policy;
use crate::route::{self, Forward};
use crate::rules::Snapshot;
use crate::telemetry::Metrics;
use bytes::Bytes;
use pingora::proxy::Session;
use std::net::SocketAddr;
use std::time::Duration;
use tracing::debug;

/// Request bodies up to this size are copied to mirrors; a larger body is not mirrored.
pub const MIRROR_BODY_LIMIT: usize = 64 * 1024;

/// A mirror copy to send once the request body is complete.
pub(super) struct PendingMirror {
    target: SocketAddr,
    authority: String,
    timeout: Duration,
}

/// Start the mirror copies the route asks for: at once when the request has no body, else once
/// the body is complete ([`on_body`]). `http`: the proxy the request came to (its resolver for
/// mirror hosts without endpoints, its metrics for the copies' results).
pub(super) async fn start(
    session: &mut Session,
    ctx: &mut ReqCtx,
    http: &MeshHttp,
    snap: &Snapshot,
    f: &Forward,
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
    let authority =
        policy::mirror::shadow_authority(f.authority_rewrite.as_deref().unwrap_or(&ctx.authority));
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
            None => http.resolver.resolve(&m.host, mport, dst).await,
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
        let metrics = &http.shared.metrics;
        for p in pending {
            policy::mirror::spawn(
                metrics,
                policy::mirror::Copy {
                    target: p.target,
                    method: req.method.clone(),
                    path: path.clone(),
                    authority: p.authority,
                    headers: req.headers.clone(),
                    body: Bytes::new(),
                    timeout: p.timeout,
                },
            );
        }
    }
}

/// Collect a chunk of the request body for the waiting mirror copies, and send them once the
/// body is complete (their results counted in `metrics`).
pub(super) fn on_body(
    session: &Session,
    ctx: &mut ReqCtx,
    body: &Option<Bytes>,
    end_of_stream: bool,
    metrics: &Metrics,
) {
    let Some(buf) = ctx.mirror_body.as_mut() else {
        return;
    };
    if let Some(b) = body.as_ref() {
        if buf.len() + b.len() > MIRROR_BODY_LIMIT {
            debug!("request body above {MIRROR_BODY_LIMIT} bytes; not mirrored");
            ctx.mirror_body = None;
            ctx.mirrors.clear();
            return;
        }
        buf.extend_from_slice(b);
    }
    if end_of_stream {
        let body = ctx.mirror_body.take().unwrap_or_default().freeze();
        let path = mirror_path(ctx);
        let req = session.req_header();
        for p in ctx.mirrors.drain(..) {
            policy::mirror::spawn(
                metrics,
                policy::mirror::Copy {
                    target: p.target,
                    method: req.method.clone(),
                    path: path.clone(),
                    authority: p.authority,
                    headers: req.headers.clone(),
                    body: body.clone(),
                    timeout: p.timeout,
                },
            );
        }
    }
}

/// The path a mirror copy asks for: the route's rewrite, else the client's.
fn mirror_path(ctx: &ReqCtx) -> String {
    ctx.forward
        .as_ref()
        .and_then(|f| f.uri.clone())
        .unwrap_or_else(|| ctx.path.clone())
}
