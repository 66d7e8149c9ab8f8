//! Istio's metadata exchange on HTTP between sidecars (`telemetry::exchange`): read the peer's
//! headers on a mutual-TLS hop, send this workload's own to a sidecar over mesh mTLS (request)
//! or back to one (response), and remove the headers everywhere else so that the app never sees
//! them and cannot forge them.

use super::ReqCtx;
use crate::state::Direction;
use crate::telemetry::exchange::{decode, METADATA, METADATA_ID};
use crate::telemetry::Workload;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::Result;
use std::sync::Arc;

/// Decoded header values per worker thread before the cache starts over (a sidecar talks to a
/// bounded set of peers; this bounds memory when it does not).
const DECODED_MAX: usize = 256;

thread_local! {
    /// Header value → what it decodes to (`None`: not well formed), so that a peer's value is
    /// decoded once per thread, not per request.
    static DECODED: std::cell::RefCell<
        std::collections::HashMap<Box<str>, Option<Arc<crate::telemetry::Peer>>>,
    > = Default::default();
}

/// The peer's metadata in `headers`, if any and well formed.
fn read(headers: &http::HeaderMap) -> Option<Arc<crate::telemetry::Peer>> {
    let v = headers.get(METADATA)?.to_str().ok()?;
    DECODED.with(|c| {
        let mut c = c.borrow_mut();
        if let Some(p) = c.get(v) {
            return p.clone();
        }
        if c.len() >= DECODED_MAX {
            c.clear();
        }
        let p = decode(v).map(Arc::new);
        c.insert(Box::from(v), p.clone());
        p
    })
}

/// Inbound: the client's metadata, believed only when it came over mesh mTLS.
pub(super) fn on_request(dir: Direction, req: &RequestHeader, ctx: &mut ReqCtx) {
    // Only until the connection's client labels are decided (`http::log`): they are kept for
    // the connection's life.
    let undecided = ctx
        .peer_identity
        .as_ref()
        .is_some_and(|i| i.labels.get().is_none());
    if dir == Direction::Inbound && undecided {
        ctx.exchanged = read(&req.headers);
    }
}

/// The request as it leaves: never the headers the client sent; outbound to a sidecar over
/// mesh mTLS, this workload's own.
pub(super) fn on_upstream_request(
    dir: Direction,
    req: &mut RequestHeader,
    ctx: &ReqCtx,
    me: &Workload,
) -> Result<()> {
    req.remove_header(METADATA);
    req.remove_header(METADATA_ID);
    if dir == Direction::Outbound && ctx.mesh_upstream && !me.metadata.is_empty() {
        req.insert_header(METADATA, &me.metadata)?;
        req.insert_header(METADATA_ID, &me.metadata_id)?;
    }
    Ok(())
}

/// The response as it leaves: outbound, the server's metadata read (over mesh mTLS) and removed
/// before the app sees it; inbound, the app's removed and, to a client over mesh mTLS, this
/// workload's own added.
pub(super) fn on_response(
    dir: Direction,
    resp: &mut ResponseHeader,
    ctx: &mut ReqCtx,
    me: &Workload,
) -> Result<()> {
    if dir == Direction::Outbound && ctx.mesh_upstream {
        ctx.exchanged = read(&resp.headers);
    }
    resp.remove_header(METADATA);
    resp.remove_header(METADATA_ID);
    if dir == Direction::Inbound && ctx.peer_identity.is_some() && !me.metadata.is_empty() {
        resp.insert_header(METADATA, &me.metadata)?;
        resp.insert_header(METADATA_ID, &me.metadata_id)?;
    }
    Ok(())
}
