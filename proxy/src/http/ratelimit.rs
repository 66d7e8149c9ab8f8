//! Local rate limiting (the `RateLimit` kind): a request over its route's token bucket is
//! answered 429 here; one within it carries the `x-ratelimit-*` response headers.

use super::{local_reply, ReqCtx};
use crate::policy::Policies;
use crate::route::Forward;
use crate::rules::Snapshot;
use crate::telemetry::flags;
use pingora::proxy::Session;
use pingora::Result;

/// Take a token for the request's route; `Ok(true)` when it was answered 429 instead.
pub(super) async fn check(
    session: &mut Session,
    ctx: &mut ReqCtx,
    policies: &Policies,
    snap: &Snapshot,
    f: &Forward,
) -> Result<bool> {
    match policies.rate_limit(snap, &f.host, f.route_name.as_deref()) {
        Ok(h) => {
            ctx.extra_response_headers = h.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
            Ok(false)
        }
        Err(h) => {
            ctx.flags = flags::RATE_LIMITED;
            ctx.error = Some("local rate limit".into());
            let hs: Vec<(&str, &str)> = h.iter().map(|(k, v)| (*k, v.as_str())).collect();
            local_reply::send(session, ctx, 429, &hs, "local_rate_limited\n").await
        }
    }
}
