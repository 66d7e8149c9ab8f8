//! CORS (a route's `corsPolicy`): preflights are answered here; other requests from an allowed
//! origin get the CORS response headers. Runs before fault injection, as in Istio's filter
//! chain.

use super::{local_reply, ReqCtx};
use crate::policy::{self, Policies};
use crate::route::{self, Forward, RequestInfo};
use crate::rules::Snapshot;
use pingora::proxy::Session;
use pingora::Result;
use std::net::SocketAddr;
use std::sync::Arc;

/// Apply the route's `corsPolicy`, if any; `Ok(true)` when the request was answered here.
pub(super) async fn apply(
    session: &mut Session,
    ctx: &mut ReqCtx,
    policies: &Policies,
    snap: &Snapshot,
    f: &Forward,
    dst: SocketAddr,
) -> Result<bool> {
    if f.virtual_service.is_none() || !policies.has_cors(snap) {
        return Ok(false);
    }
    let Some(c) = route_cors(session, ctx, policies, snap, dst) else {
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

/// The `corsPolicy` of the route this request takes (looked up again: the route decision
/// does not carry it).
fn route_cors(
    session: &Session,
    ctx: &ReqCtx,
    policies: &Policies,
    snap: &Snapshot,
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
    policies.cors(snap, &vs.meta.key(), &r.path)
}
