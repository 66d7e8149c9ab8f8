//! Why a downstream connection or request is turned away, the answer it gets, and how each
//! rejection is counted and logged: `remora_downstream_rejected_total{listener,reason}`, debug,
//! and a warning at most once per [`WARN_EVERY`].

use crate::telemetry::Metrics;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tracing::{debug, warn};

/// Why a downstream connection or request was turned away.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reject {
    /// Over the per-proxy connection cap: closed before reading.
    ConnectionLimit,
    /// Request line longer than the limit: 414.
    RequestLineTooLong,
    /// Request head larger than the limit: 431.
    HeadersTooLarge,
    /// More header fields than the limit: 431.
    TooManyHeaders,
    /// The head did not arrive in time: 408 (or a plain close when nothing arrived).
    HeaderTimeout,
    /// A keep-alive connection idle for longer than the idle timeout: closed.
    IdleTimeout,
    /// An HTTP/1 request or h2 stream on which nothing moved for the stream idle timeout: h2
    /// stream reset, HTTP/1 connection closed.
    StreamIdleTimeout,
    /// Bytes that are neither an HTTP/1 request nor the h2 preface on a port the rules declare
    /// HTTP: 400, never forwarded.
    NotHttp,
}

impl Reject {
    /// The `reason` label.
    pub fn as_str(self) -> &'static str {
        match self {
            Reject::ConnectionLimit => "connection_limit",
            Reject::RequestLineTooLong => "request_line_too_long",
            Reject::HeadersTooLarge => "headers_too_large",
            Reject::TooManyHeaders => "too_many_headers",
            Reject::HeaderTimeout => "header_timeout",
            Reject::IdleTimeout => "idle_timeout",
            Reject::NotHttp => "not_http",
            Reject::StreamIdleTimeout => "stream_idle_timeout",
        }
    }

    /// The HTTP status this is answered with, when it is answered at all.
    pub fn status(self) -> Option<(u16, &'static str)> {
        match self {
            Reject::RequestLineTooLong => Some((414, "URI Too Long")),
            Reject::HeadersTooLarge | Reject::TooManyHeaders => {
                Some((431, "Request Header Fields Too Large"))
            }
            Reject::HeaderTimeout => Some((408, "Request Timeout")),
            Reject::NotHttp => Some((400, "Bad Request")),
            Reject::ConnectionLimit | Reject::IdleTimeout | Reject::StreamIdleTimeout => None,
        }
    }
}

/// Interval of the rate-limited warning about rejections.
pub const WARN_EVERY: Duration = Duration::from_secs(10);
static LAST_WARN_S: AtomicU64 = AtomicU64::new(0);
static SUPPRESSED: AtomicU64 = AtomicU64::new(0);

/// Count a rejection, log it at debug, and warn at most once per [`WARN_EVERY`].
pub fn record(metrics: &Metrics, listener: &'static str, why: Reject, detail: &str) {
    metrics
        .downstream_rejected
        .with_label_values(&[listener, why.as_str()])
        .inc();
    debug!(
        listener,
        reason = why.as_str(),
        "downstream rejected: {detail}"
    );
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let last = LAST_WARN_S.load(Ordering::Relaxed);
    if now >= last.saturating_add(WARN_EVERY.as_secs())
        && LAST_WARN_S
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    {
        let more = SUPPRESSED.swap(0, Ordering::Relaxed);
        warn!(
            listener,
            reason = why.as_str(),
            suppressed_since_last_warning = more,
            "downstream rejected: {detail} (see remora_downstream_rejected_total)"
        );
    } else {
        SUPPRESSED.fetch_add(1, Ordering::Relaxed);
    }
}

/// The bytes of a rejection answer (`connection: close`, a one-line plain-text body).
pub fn answer(why: Reject) -> Option<Vec<u8>> {
    let (code, text) = why.status()?;
    let body = format!("{text}: {}\n", why.as_str());
    Some(
        format!(
            "HTTP/1.1 {code} {text}\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        )
        .into_bytes(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_carry_status_and_close() {
        let a = String::from_utf8(answer(Reject::TooManyHeaders).unwrap()).unwrap();
        assert!(
            a.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"),
            "{a}"
        );
        assert!(a.contains("\r\nconnection: close\r\n"), "{a}");
        let body = a.split("\r\n\r\n").nth(1).unwrap();
        assert!(a.contains(&format!("content-length: {}\r\n", body.len())));
        assert!(
            String::from_utf8(answer(Reject::RequestLineTooLong).unwrap())
                .unwrap()
                .starts_with("HTTP/1.1 414 ")
        );
        assert!(String::from_utf8(answer(Reject::HeaderTimeout).unwrap())
            .unwrap()
            .starts_with("HTTP/1.1 408 "));
        assert!(answer(Reject::ConnectionLimit).is_none());
        assert!(answer(Reject::IdleTimeout).is_none());
    }
}
