//! gRPC status mapping: the gRPC status Envoy gives a local reply or an upstream failure with a
//! given HTTP status, the trailers-only error response that carries it, and the `grpc-status`
//! an upstream answered with (for metrics and the access log).

use super::ReqCtx;
use pingora::http::ResponseHeader;
use pingora::Result;

/// The gRPC status Envoy uses for a local reply with HTTP status `code`.
pub fn grpc_status_for_http(code: u16) -> u32 {
    match code {
        400 => 13,             // INTERNAL
        401 => 16,             // UNAUTHENTICATED
        403 => 7,              // PERMISSION_DENIED
        404 => 12,             // UNIMPLEMENTED
        429 | 502..=504 => 14, // UNAVAILABLE
        _ => 2,                // UNKNOWN
    }
}

/// A trailers-only gRPC response (HTTP 200) with the status mapped from `code`.
pub(super) fn grpc_error_response(code: u16, message: &str) -> Result<Box<ResponseHeader>> {
    let mut resp = ResponseHeader::build(200, Some(4))?;
    resp.insert_header("content-type", "application/grpc")?;
    resp.insert_header("grpc-status", grpc_status_for_http(code).to_string())?;
    // grpc-message is percent-encoded; keep it to safe ASCII.
    let safe: String = message
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || " -_.:".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    resp.insert_header("grpc-message", safe.replace(' ', "%20"))?;
    resp.insert_header("content-length", "0")?;
    Ok(Box::new(resp))
}

/// Remember the `grpc-status` of an upstream's response headers or trailers.
pub(super) fn note_upstream(ctx: &mut ReqCtx, headers: &http::HeaderMap) {
    if let Some(g) = headers.get("grpc-status").and_then(|v| v.to_str().ok()) {
        ctx.grpc_status = Some(g.to_string());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_local_replies_map_http_status_like_envoy() {
        let cases = [
            (503, 14),
            (502, 14),
            (504, 14),
            (429, 14),
            (404, 12),
            (403, 7),
            (401, 16),
            (400, 13),
            (500, 2),
        ];
        for (http, grpc) in cases {
            assert_eq!(grpc_status_for_http(http), grpc, "{http}");
        }
        let r = grpc_error_response(503, "no healthy upstream: a/b").unwrap();
        assert_eq!(r.status.as_u16(), 200);
        assert_eq!(r.headers.get("content-type").unwrap(), "application/grpc");
        assert_eq!(r.headers.get("grpc-status").unwrap(), "14");
        assert_eq!(
            r.headers.get("grpc-message").unwrap(),
            "no%20healthy%20upstream:%20a_b"
        );
    }
}
