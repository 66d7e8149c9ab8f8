//! What an upstream failure is answered with: Envoy's status and response flag for each kind of
//! failure, and for gRPC requests a trailers-only response carrying the mapped gRPC status.

use super::grpc_status::{code_label, grpc_error_response, grpc_status_for_http};
use super::ReqCtx;
use crate::telemetry::flags;
use bytes::Bytes;
use pingora::proxy::{FailToProxy, Session};
use pingora::{Error, ErrorSource, ErrorType};
use tracing::debug;

/// Answer the downstream after the request could not be proxied.
pub(super) async fn answer(session: &mut Session, e: &Error, ctx: &mut ReqCtx) -> FailToProxy {
    let (code, flag) = match e.etype() {
        ErrorType::HTTPStatus(code) => (*code, ctx.flags),
        ErrorType::ConnectTimedout
        | ErrorType::ConnectRefused
        | ErrorType::ConnectNoRoute
        | ErrorType::ConnectError
        | ErrorType::BindError
        | ErrorType::SocketError
        | ErrorType::TLSHandshakeFailure
        | ErrorType::TLSHandshakeTimedout
        | ErrorType::InvalidCert
        | ErrorType::HandshakeError => (503, flags::UPSTREAM_CONNECT_FAILURE),
        ErrorType::ReadTimedout | ErrorType::WriteTimedout => (504, flags::UPSTREAM_TIMEOUT),
        _ => match e.esource() {
            // Envoy's answers, which Istio users alert on: a response the upstream got
            // wrong is 502 `UPE`; a connection it closed or reset before answering is
            // 503 `UC` (the keep-alive race's familiar "503 UC").
            ErrorSource::Upstream => match e.etype() {
                ErrorType::InvalidHTTPHeader
                | ErrorType::H1Error
                | ErrorType::H2Error
                | ErrorType::InvalidH2
                | ErrorType::H2Downgrade => (502, flags::UPSTREAM_PROTOCOL_ERROR),
                _ => (503, flags::UPSTREAM_TERMINATION),
            },
            ErrorSource::Downstream => match e.etype() {
                ErrorType::WriteError | ErrorType::ReadError | ErrorType::ConnectionClosed => {
                    (0, flags::DOWNSTREAM_TERMINATION)
                }
                _ => (400, flags::NONE),
            },
            _ => (500, flags::NONE),
        },
    };
    if ctx.flags == flags::NONE || flag != flags::NONE {
        ctx.flags = flag;
    }
    ctx.error = Some(e.to_string());
    if code > 0 && ctx.grpc && session.response_written().is_none() {
        // gRPC clients need a gRPC status, as Envoy's local replies give them: a
        // trailers-only response (HTTP 200) with the status mapped from the HTTP code.
        let msg = format!("upstream error: {}", e.etype().as_str());
        match grpc_error_response(code, &msg) {
            Ok(resp) => {
                ctx.grpc_status = code_label(grpc_status_for_http(code));
                if session.write_response_header(resp, true).await.is_err() {
                    debug!("could not send the gRPC error response to the downstream");
                }
            }
            Err(_) => debug!("could not build the gRPC error response"),
        }
    } else if code > 0 {
        let body = Bytes::from(format!("upstream error: {}\n", e.etype().as_str()));
        if session.respond_error_with_body(code, body).await.is_err() {
            debug!("could not send the error response to the downstream");
        }
    }
    FailToProxy {
        error_code: code,
        can_reuse_downstream: false,
    }
}
