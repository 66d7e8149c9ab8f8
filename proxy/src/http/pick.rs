//! Endpoint pick: where a routed request goes (the destination's load balancer over its
//! endpoints, the original destination, or a DNS answer), under its request policy (retries,
//! timeouts); and the next endpoint when a retry was decided.

use super::{local_reply, ReqCtx};
use crate::policy::lb::{HashInput, LbPolicy};
use crate::policy::limits::Admitted;
use crate::policy::request::RequestPolicy;
use crate::policy::{self, Destination};
use crate::route::Forward;
use crate::telemetry::flags;
use crate::upstream::HostResolver;
use pingora::proxy::Session;
use pingora::Result;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;
use tracing::debug;

/// Set up the request's policy and pick its first endpoint; `Ok(true)` when it was answered 503
/// instead (no healthy upstream). Takes the route's endpoints out of `f`.
#[allow(clippy::too_many_arguments)]
pub(super) async fn first(
    session: &mut Session,
    ctx: &mut ReqCtx,
    resolver: &HostResolver,
    dest: Arc<Destination>,
    admitted: Admitted,
    f: &mut Forward,
    port: u16,
    dst: SocketAddr,
) -> Result<bool> {
    // PASSTHROUGH: the address the client asked for, without load balancing.
    let passthrough = dest.policy.load_balancer == LbPolicy::Passthrough;
    let fixed = if passthrough {
        Some(dst)
    } else if f.endpoints.is_empty() {
        // The rules say whether the route still points at what the client
        // addressed (then the original destination reaches it) or elsewhere.
        if f.resolve_by_dns {
            match resolver.resolve(&f.host, port, dst).await {
                Ok(a) => Some(a),
                Err(e) => {
                    ctx.flags = flags::NO_HEALTHY_UPSTREAM;
                    ctx.error = Some(e);
                    return local_reply::send(session, ctx, 503, &[], "no healthy upstream\n")
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
    let endpoints = if passthrough {
        Vec::new()
    } else {
        std::mem::take(&mut f.endpoints)
    };
    let mut rp = RequestPolicy::new(
        Some(dest),
        endpoints,
        retry,
        &ctx.method,
        f.policy.timeout,
        Instant::now(),
    );
    rp.admitted = Some(admitted);
    let picked = rp.next_endpoint(
        fixed,
        Some(&hash_input(session, &ctx.path)),
        &mut rand::thread_rng(),
    );
    let Some(upstream) = picked else {
        ctx.flags = flags::NO_HEALTHY_UPSTREAM;
        return local_reply::send(session, ctx, 503, &[], "no healthy upstream\n").await;
    };
    ctx.upstream = Some(upstream);
    ctx.fixed_upstream = fixed;
    ctx.policy = Some(rp);
    Ok(false)
}

/// When a retry was decided, move the request to its next endpoint.
pub(super) fn on_retry(session: &Session, ctx: &mut ReqCtx) {
    if !ctx.retry_pending {
        return;
    }
    ctx.retry_pending = false;
    let input = hash_input(session, &ctx.path);
    if let Some(rp) = ctx.policy.as_mut() {
        if let Some(a) = rp.next_endpoint(ctx.fixed_upstream, Some(&input), &mut rand::thread_rng())
        {
            debug!(upstream = %a, attempt = rp.attempts(), "retry goes to this endpoint");
            ctx.upstream = Some(a);
        }
    }
}

/// What a consistent-hash balancer may hash on.
fn hash_input<'a>(session: &'a Session, path: &'a str) -> HashInput<'a> {
    HashInput {
        headers: &session.req_header().headers,
        path,
        source_ip: session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip()),
    }
}
