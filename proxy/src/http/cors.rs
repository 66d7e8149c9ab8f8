//! CORS (a route's `corsPolicy`): preflights are answered here; other requests from an allowed
//! origin get the CORS response headers. Runs before fault injection, as in Istio's filter
//! chain.

use super::{local_reply, ReqCtx};
use crate::policy::{self, Policies};
use crate::route::Forward;
use crate::rules::Snapshot;
use pingora::proxy::Session;
use pingora::Result;
use std::sync::Arc;

/// Apply the route's `corsPolicy`, if any; `Ok(true)` when the request was answered here.
pub(super) async fn apply(
    session: &mut Session,
    ctx: &mut ReqCtx,
    policies: &Policies,
    snap: &Snapshot,
    f: &Forward,
) -> Result<bool> {
    if !policies.has_cors(snap) {
        return Ok(false);
    }
    let Some(c) = route_cors(policies, snap, f) else {
        return Ok(false);
    };
    match c.decide(&ctx.method, &session.req_header().headers) {
        policy::cors::Action::Answer { status, headers } => {
            let hs: Vec<(&str, &str)> = headers
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            local_reply::send(session, ctx, status, &hs, "").await
        }
        policy::cors::Action::Forward { response_headers } => {
            ctx.extra_response_headers.extend(response_headers);
            Ok(false)
        }
    }
}

/// The `corsPolicy` of the route that decided the request (its VirtualService and
/// `spec.http[i]`, as the sidecar's or the gateway's routing chose them).
fn route_cors(
    policies: &Policies,
    snap: &Snapshot,
    f: &Forward,
) -> Option<Arc<policy::cors::Cors>> {
    let vs = f.virtual_service.as_deref()?;
    let route = f.route_path.as_deref()?;
    policies.cors(snap, vs, route)
}
