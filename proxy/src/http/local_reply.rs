//! Answers the proxy gives itself instead of forwarding (rate limit, CORS preflight, fault
//! abort, overflow, no route, redirects, direct responses): plain text, or a gRPC status for
//! gRPC requests.

use super::grpc_status::{code_label, grpc_error_response, grpc_status_for_http};
use super::ReqCtx;
use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use pingora::Result;

/// Answer the request with `status`, `extra` headers and `body`; always `Ok(true)` (answered),
/// as `request_filter` returns it. A gRPC request gets an error status as a trailers-only gRPC
/// response instead.
pub(super) async fn send(
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
        ctx.grpc_status = code_label(grpc_status_for_http(status));
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
