//! Request ids: the client's `x-request-id`, or a new UUID v4 set on the request when it has
//! none. With tracing on, the id is also the request's sampling roll and carries a sampled
//! decision (`telemetry::trace_context`).

use super::ReqCtx;
use pingora::http::RequestHeader;
use pingora::proxy::Session;
use pingora::Result;

/// Parsed once (a `&str` name is parsed per lookup).
static X_REQUEST_ID: http::HeaderName = http::HeaderName::from_static("x-request-id");

/// Take the request's `x-request-id` into `ctx`, or a new one into `ctx` alone: `true` when new
/// (then [`put`] sets it on the request, after the trace decision may have marked it).
pub(super) fn take(req: &RequestHeader, ctx: &mut ReqCtx) -> bool {
    ctx.request_id = super::header_str(req, &X_REQUEST_ID)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .unwrap_or_default();
    if ctx.request_id.is_empty() {
        ctx.request_id = new_request_id();
        return true;
    }
    false
}

/// Give the request its new id (`take` returned `true`).
pub(super) fn put(session: &mut Session, ctx: &ReqCtx) -> Result<()> {
    session
        .req_header_mut()
        .insert_header("x-request-id", ctx.request_id.as_str())
}

/// Mark the request's id sampled (Envoy's trace nibble, `telemetry::trace_context`) in `ctx`,
/// and on the request unless the id is `new` (not on it yet: [`put`] sets the marked one); an id
/// without UUID length is left as it is.
pub(super) fn mark_sampled(req: &mut RequestHeader, ctx: &mut ReqCtx, new: bool) -> Result<()> {
    if let Some(marked) = crate::telemetry::trace_context::mark_sampled(&ctx.request_id) {
        if !new {
            // The name is already in both of the request's header maps: replaced, not grown.
            req.insert_header(X_REQUEST_ID.clone(), marked.as_str())?;
        }
        ctx.request_id = marked;
    }
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
