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

/// The gRPC status codes as label values (`0`..=`16`).
const CODES: [&str; 17] = [
    "0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12", "13", "14", "15", "16",
];

/// The label value of gRPC status `code`, if it is one (`0`..=`16`).
pub fn code_label(code: u32) -> Option<&'static str> {
    CODES.get(code as usize).copied()
}

/// Remember the `grpc-status` of an upstream's response headers or trailers, when it is a
/// gRPC status code: metrics label it, and a value the upstream made up (`999`, `abc`) would
/// be a new series per value. Anything else leaves the status unknown (empty).
pub(super) fn note_upstream(ctx: &mut ReqCtx, headers: &http::HeaderMap) {
    if let Some(g) = headers.get("grpc-status") {
        ctx.grpc_status = std::str::from_utf8(g.as_bytes())
            .ok()
            .and_then(|v| v.parse::<u32>().ok())
            .and_then(code_label);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_grpc_codes_are_labels() {
        assert_eq!(code_label(0), Some("0"));
        assert_eq!(code_label(16), Some("16"));
        assert_eq!(code_label(17), None);
        assert_eq!(code_label(999), None);
    }

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
