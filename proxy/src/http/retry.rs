//! Retries and the route timeout: the route's retry policy decides after each failed attempt
//! (connect failure, reset, per-try timeout, retriable status), and the route timeout bounds the
//! whole response.

use super::ReqCtx;
use crate::policy::request::Verdict;
use crate::policy::retry::Outcome;
use crate::telemetry::flags;
use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorSource, ErrorType, Result};
use std::time::{Duration, Instant};
use tracing::debug;

/// An upstream answered: retry when its status is one of the route's retry conditions.
pub(super) fn on_status(
    session: &mut Session,
    upstream_response: &mut ResponseHeader,
    ctx: &mut ReqCtx,
) -> Result<()> {
    let Some(rp) = ctx.policy.as_mut() else {
        return Ok(());
    };
    let status = upstream_response.status.as_u16();
    let grpc = upstream_response
        .headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.trim().parse::<u8>().ok());
    let replayable = !session.retry_buffer_truncated();
    match rp.on_status(status, grpc, replayable, Instant::now()) {
        Verdict::Retry => {
            ctx.retry_pending = true;
            debug!(
                status,
                attempt = rp.attempts(),
                upstream = ?ctx.upstream,
                "retrying: the status is a retry condition of the route"
            );
            let mut e = Error::explain(ErrorType::HTTPStatus(status), "retriable upstream status");
            e.set_retry(true);
            Err(e)
        }
        Verdict::Final(why) => {
            if why == "retries exhausted" && rp.attempts() > 1 {
                ctx.flags = flags::RETRY_LIMIT_EXCEEDED;
            }
            Ok(())
        }
    }
}

/// The route timeout covers the whole response (not upgraded streams such as WebSocket).
pub(super) fn check_route_timeout(session: &Session, ctx: &mut ReqCtx) -> Result<Option<Duration>> {
    if let Some(rp) = &ctx.policy {
        if rp.expired(Instant::now()) && !session.was_upgraded() {
            ctx.flags = flags::UPSTREAM_TIMEOUT;
            return Error::e_explain(
                ErrorType::ReadTimedout,
                "route timeout expired while the response was streaming",
            );
        }
    }
    Ok(None)
}

/// The peer for messages: a mesh peer's address is a stand-in (`mtls::relay`), so the endpoint
/// is named instead.
fn peer_name(peer: &HttpPeer, ctx: &ReqCtx) -> String {
    match (ctx.mesh_upstream, ctx.upstream) {
        (true, Some(a)) => format!("{a} (mesh mTLS)"),
        _ => peer.to_string(),
    }
}

/// Connecting to the upstream failed: retry it when the route allows.
pub(super) fn on_connect_failure(
    session: &mut Session,
    peer: &HttpPeer,
    ctx: &mut ReqCtx,
    e: Box<Error>,
) -> Box<Error> {
    ctx.flags = flags::UPSTREAM_CONNECT_FAILURE;
    debug!(peer = %peer_name(peer, ctx), "upstream connect failed: {e}");
    ctx.transport_failure = Some(transport_failure_reason(&e));
    let mut e = e;
    let replayable = !session.retry_buffer_truncated();
    if let Some(rp) = ctx.policy.as_mut() {
        match rp.on_failure(Outcome::ConnectFailure, replayable, Instant::now()) {
            Verdict::Retry => {
                ctx.retry_pending = true;
                e.set_retry(true);
            }
            Verdict::Final(why) => {
                debug!("connect failure not retried: {why}");
                e.set_retry(false);
            }
        }
    }
    e
}

/// An attempt failed after connecting: retry it when the route allows (without a route policy,
/// Pingora's default: a reused connection that failed is tried once more).
pub(super) fn on_proxy_error(
    peer: &HttpPeer,
    session: &mut Session,
    e: Box<Error>,
    ctx: &mut ReqCtx,
    client_reused: bool,
) -> Box<Error> {
    let mut e = e.more_context(format!("Peer: {}", peer_name(peer, ctx)));
    if ctx.retry_pending {
        // Decided in upstream_response_filter.
        e.set_retry(true);
        return e;
    }
    let replayable = !session.retry_buffer_truncated();
    let Some(rp) = ctx.policy.as_mut() else {
        // Pingora's default: a reused connection that failed is tried once more.
        if !session.req_header().method.is_idempotent() || !replayable {
            e.set_retry(false);
        } else {
            e.retry.decide_reuse(client_reused);
        }
        return e;
    };
    if e.esource() == &ErrorSource::Downstream {
        e.set_retry(false);
        return e;
    }
    let outcome = match e.etype() {
        ErrorType::ReadTimedout | ErrorType::WriteTimedout => Outcome::PerTryTimeout,
        _ => Outcome::Reset,
    };
    let stale_pooled = client_reused
        && outcome == Outcome::Reset
        && session.req_header().method.is_idempotent()
        && replayable;
    let verdict = if stale_pooled {
        // A kept-alive connection the server had closed: not the endpoint's failure.
        Verdict::Retry
    } else {
        rp.on_failure(outcome, replayable, Instant::now())
    };
    match verdict {
        Verdict::Retry => {
            ctx.retry_pending = true;
            debug!(error = %e, attempt = rp.attempts(), "retrying after an upstream failure");
            e.set_retry(true);
        }
        Verdict::Final(why) => {
            debug!(error = %e, "not retried: {why}");
            e.set_retry(false);
        }
    }
    e
}

/// Envoy's `%UPSTREAM_TRANSPORT_FAILURE_REASON%` for a failed connection attempt: the cause
/// the system or TLS gave (`Connection refused (os error 111)`, a certificate check), else the
/// kind of failure; at most 256 bytes.
fn transport_failure_reason(e: &pingora::Error) -> String {
    let mut why = match &e.cause {
        Some(c) => format!("{}: {c}", e.etype().as_str()),
        None => e.etype().as_str().to_string(),
    };
    if why.len() > 256 {
        let mut end = 256;
        while !why.is_char_boundary(end) {
            end -= 1;
        }
        why.truncate(end);
    }
    why
}

#[cfg(test)]
mod failure_reason_tests {
    use super::transport_failure_reason;
    use pingora::{Error, ErrorType};

    #[test]
    fn the_reason_names_the_kind_and_the_cause_bounded() {
        let e = Error::because(
            ErrorType::ConnectRefused,
            "connecting",
            std::io::Error::from(std::io::ErrorKind::ConnectionRefused),
        );
        let r = transport_failure_reason(&e);
        assert!(r.starts_with("ConnectRefused: "), "{r}");
        assert!(r.to_lowercase().contains("refused"), "{r}");
        let plain = Error::new(ErrorType::ConnectTimedout);
        assert_eq!(transport_failure_reason(&plain), "ConnectTimedout");
        let long = Error::because(ErrorType::TLSHandshakeFailure, "tls", "é".repeat(300));
        assert!(transport_failure_reason(&long).len() <= 256);
    }
}
