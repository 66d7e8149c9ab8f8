//! Retries: `retryOn` parsing and the per-attempt decision (pure).
//!
//! Istio's semantics: `attempts` is the number of retries after the first try; `retryOn` is a
//! comma list of Envoy retry conditions and plain status codes. When a route has no `retries`,
//! Istio applies its default: 2 retries on `connect-failure,refused-stream,unavailable,
//! cancelled,retriable-status-codes` with status 503. A request whose method is not idempotent
//! is retried only when the route's rule asks for retries explicitly.

use std::time::Duration;

use crate::kinds::RetryPolicy;

/// One retry condition.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum RetryOn {
    /// `5xx`: any 5xx response, or a connect failure / reset (Envoy's definition).
    FiveXx,
    /// `gateway-error`: 502, 503, 504.
    GatewayError,
    /// `connect-failure`.
    ConnectFailure,
    /// `refused-stream`: an HTTP/2 REFUSED_STREAM.
    RefusedStream,
    /// `reset`: the upstream reset / closed the connection without a response.
    Reset,
    /// `retriable-4xx`: 409.
    Retriable4xx,
    /// gRPC `unavailable`, `cancelled`, `deadline-exceeded`, `resource-exhausted`, `internal`.
    Grpc(u8),
    /// `retriable-status-codes` (together with plain codes in the list).
    RetriableStatusCodes,
    /// A plain status code such as `503`.
    Status(u16),
}

/// What happened on one attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A response with this status (and the `grpc-status` header if it had one).
    Status { status: u16, grpc: Option<u8> },
    /// The TCP connect failed (refused, unreachable, connect timeout).
    ConnectFailure,
    /// The connection was reset or closed before a complete response header.
    Reset,
    /// HTTP/2 REFUSED_STREAM.
    RefusedStream,
    /// The per-try timeout expired.
    PerTryTimeout,
}

/// The interpreted retry policy of one route.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Retry {
    /// Retries after the first try (total tries = `attempts + 1`).
    pub attempts: u32,
    #[serde(skip)]
    pub per_try_timeout: Option<Duration>,
    pub on: Vec<RetryOn>,
    /// The route set `retries` itself (so non-idempotent methods may be retried).
    pub explicit: bool,
}

/// Parse a `retryOn` list. Unknown words are an error naming the word.
pub fn parse_retry_on(items: &[String]) -> Result<Vec<RetryOn>, String> {
    let mut out = Vec::new();
    for raw in items.iter().flat_map(|s| s.split(',')) {
        let w = raw.trim();
        if w.is_empty() {
            continue;
        }
        let c = match w {
            "5xx" => RetryOn::FiveXx,
            "gateway-error" => RetryOn::GatewayError,
            "connect-failure" => RetryOn::ConnectFailure,
            "refused-stream" => RetryOn::RefusedStream,
            "reset" | "reset-before-request" => RetryOn::Reset,
            "retriable-4xx" => RetryOn::Retriable4xx,
            "retriable-status-codes" => RetryOn::RetriableStatusCodes,
            "cancelled" => RetryOn::Grpc(1),
            "deadline-exceeded" => RetryOn::Grpc(4),
            "resource-exhausted" => RetryOn::Grpc(8),
            "internal" => RetryOn::Grpc(13),
            "unavailable" => RetryOn::Grpc(14),
            other => match other.parse::<u16>() {
                Ok(code) if (100..=599).contains(&code) => RetryOn::Status(code),
                _ => {
                    return Err(format!(
                        "retryOn: unknown condition {other:?} (expected 5xx, gateway-error, connect-failure, refused-stream, reset, retriable-4xx, retriable-status-codes, a gRPC status name, or a status code 100-599)"
                    ))
                }
            },
        };
        if !out.contains(&c) {
            out.push(c);
        }
    }
    Ok(out)
}

/// Istio's default when a route has no `retries`.
pub fn istio_default() -> Retry {
    Retry {
        attempts: 2,
        per_try_timeout: None,
        on: vec![
            RetryOn::ConnectFailure,
            RetryOn::RefusedStream,
            RetryOn::Grpc(14),
            RetryOn::Grpc(1),
            RetryOn::RetriableStatusCodes,
            RetryOn::Status(503),
        ],
        explicit: false,
    }
}

/// The effective retry policy of a route: its own `retries` or Istio's default. A `retryOn`
/// that fails to parse falls back to Istio's default list (the loader validated it already).
pub fn effective(rule: Option<&RetryPolicy>) -> Retry {
    match rule {
        None => istio_default(),
        Some(r) => {
            let on = if r.retry_on.is_empty() {
                istio_default().on
            } else {
                parse_retry_on(&r.retry_on).unwrap_or_else(|_| istio_default().on)
            };
            Retry {
                attempts: r.attempts,
                // `perTryTimeout: 0s` means no per-try timeout.
                per_try_timeout: r.per_try_timeout.filter(|t| !t.is_zero()),
                on,
                explicit: true,
            }
        }
    }
}

/// RFC 9110 idempotent methods.
pub fn is_idempotent(method: &str) -> bool {
    matches!(
        method.to_ascii_uppercase().as_str(),
        "GET" | "HEAD" | "OPTIONS" | "TRACE" | "PUT" | "DELETE"
    )
}

impl Retry {
    /// Does this outcome match a retry condition?
    pub fn matches(&self, o: Outcome) -> bool {
        let codes_listed = self.on.contains(&RetryOn::RetriableStatusCodes)
            || self.on.iter().any(|c| matches!(c, RetryOn::Status(_)));
        self.on.iter().any(|c| match (c, o) {
            (RetryOn::FiveXx, Outcome::Status { status, .. }) => (500..600).contains(&status),
            (
                RetryOn::FiveXx,
                Outcome::ConnectFailure
                | Outcome::Reset
                | Outcome::RefusedStream
                | Outcome::PerTryTimeout,
            ) => true,
            (RetryOn::GatewayError, Outcome::Status { status, .. }) => {
                matches!(status, 502..=504)
            }
            (RetryOn::GatewayError, Outcome::PerTryTimeout | Outcome::ConnectFailure) => true,
            (RetryOn::ConnectFailure, Outcome::ConnectFailure) => true,
            (RetryOn::RefusedStream, Outcome::RefusedStream) => true,
            (RetryOn::Reset, Outcome::Reset) => true,
            (RetryOn::Retriable4xx, Outcome::Status { status: 409, .. }) => true,
            (RetryOn::Grpc(g), Outcome::Status { grpc: Some(x), .. }) => *g == x,
            (RetryOn::Status(code), Outcome::Status { status, .. }) => {
                codes_listed && *code == status
            }
            _ => false,
        })
    }

    /// Should attempt number `tried` (1 = the first try has happened) be followed by another?
    /// `body_replayable`: the request body is buffered whole (or empty).
    pub fn should_retry(
        &self,
        method: &str,
        tried: u32,
        outcome: Outcome,
        body_replayable: bool,
    ) -> Decision {
        if tried > self.attempts {
            return Decision::Stop("retries exhausted");
        }
        if !self.matches(outcome) {
            return Decision::Stop("outcome is not a retry condition");
        }
        // A connect failure never reached the server: any method may be retried.
        let sent = outcome != Outcome::ConnectFailure;
        if sent && !self.explicit && !is_idempotent(method) {
            return Decision::Stop("method is not idempotent and the route sets no retries");
        }
        if sent && !body_replayable {
            return Decision::Stop("request body exceeded the retry buffer");
        }
        Decision::Retry
    }

    /// The deadline of one try: the per-try timeout clipped to what is left of the route timeout.
    pub fn try_deadline(&self, remaining: Option<Duration>) -> Option<Duration> {
        match (self.per_try_timeout, remaining) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

/// The retry decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    Retry,
    /// Do not retry, and why.
    Stop(&'static str),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn parse_retry_on_words_and_codes() {
        let got = parse_retry_on(&s(&["5xx, connect-failure", "503", "unavailable,5xx"])).unwrap();
        assert_eq!(
            got,
            vec![
                RetryOn::FiveXx,
                RetryOn::ConnectFailure,
                RetryOn::Status(503),
                RetryOn::Grpc(14)
            ]
        );
        let e = parse_retry_on(&s(&["5xx,bogus"])).unwrap_err();
        assert!(e.starts_with("retryOn: unknown condition \"bogus\""), "{e}");
        assert!(parse_retry_on(&s(&["700"])).is_err());
    }

    fn st(status: u16) -> Outcome {
        Outcome::Status { status, grpc: None }
    }

    #[test]
    fn conditions_table() {
        let r = |words: &[&str]| Retry {
            attempts: 3,
            per_try_timeout: None,
            on: parse_retry_on(&s(words)).unwrap(),
            explicit: true,
        };
        let cases: Vec<(&[&str], Outcome, bool)> = vec![
            (&["5xx"], st(500), true),
            (&["5xx"], st(503), true),
            (&["5xx"], st(404), false),
            (&["5xx"], Outcome::Reset, true),
            (&["5xx"], Outcome::ConnectFailure, true),
            (&["gateway-error"], st(500), false),
            (&["gateway-error"], st(502), true),
            (&["gateway-error"], st(504), true),
            (&["connect-failure"], Outcome::ConnectFailure, true),
            (&["connect-failure"], st(503), false),
            (&["reset"], Outcome::Reset, true),
            (&["reset"], st(503), false),
            (&["refused-stream"], Outcome::RefusedStream, true),
            (&["retriable-4xx"], st(409), true),
            (&["retriable-4xx"], st(400), false),
            (&["503"], st(503), true),
            (&["503"], st(500), false),
            (
                &["unavailable"],
                Outcome::Status {
                    status: 200,
                    grpc: Some(14),
                },
                true,
            ),
            (
                &["unavailable"],
                Outcome::Status {
                    status: 200,
                    grpc: Some(2),
                },
                false,
            ),
        ];
        for (words, o, want) in cases {
            assert_eq!(r(words).matches(o), want, "{words:?} {o:?}");
        }
    }

    #[test]
    fn istio_default_retries_503_and_connect_failures_for_idempotent_methods_only() {
        let d = effective(None);
        assert_eq!(d.attempts, 2);
        assert!(!d.explicit);
        assert_eq!(d.should_retry("GET", 1, st(503), true), Decision::Retry);
        assert_eq!(d.should_retry("GET", 2, st(503), true), Decision::Retry);
        assert_eq!(
            d.should_retry("GET", 3, st(503), true),
            Decision::Stop("retries exhausted")
        );
        assert_eq!(
            d.should_retry("GET", 1, st(500), true),
            Decision::Stop("outcome is not a retry condition")
        );
        assert_eq!(
            d.should_retry("POST", 1, st(503), true),
            Decision::Stop("method is not idempotent and the route sets no retries")
        );
        // nothing reached the server: safe for POST too
        assert_eq!(
            d.should_retry("POST", 1, Outcome::ConnectFailure, true),
            Decision::Retry
        );
    }

    #[test]
    fn explicit_rule_retries_post_when_the_body_is_buffered() {
        let rule = RetryPolicy {
            attempts: 3,
            per_try_timeout: Some(Duration::from_millis(200)),
            retry_on: s(&["5xx"]),
            retry_remote_localities: None,
        };
        let r = effective(Some(&rule));
        assert!(r.explicit);
        assert_eq!(r.should_retry("POST", 1, st(502), true), Decision::Retry);
        assert_eq!(
            r.should_retry("POST", 1, st(502), false),
            Decision::Stop("request body exceeded the retry buffer")
        );
        assert_eq!(r.should_retry("POST", 3, st(502), true), Decision::Retry);
        assert_eq!(
            r.should_retry("POST", 4, st(502), true),
            Decision::Stop("retries exhausted")
        );
        // attempts: 0 disables retries
        let none = effective(Some(&RetryPolicy {
            attempts: 0,
            ..rule.clone()
        }));
        assert_eq!(
            none.should_retry("GET", 1, st(503), true),
            Decision::Stop("retries exhausted")
        );
        // empty retryOn: Istio's default conditions
        let empty_on = effective(Some(&RetryPolicy {
            retry_on: vec![],
            ..rule
        }));
        assert!(empty_on.matches(st(503)));
        assert!(!empty_on.matches(st(500)));
    }

    #[test]
    fn per_try_deadline_is_clipped_by_the_route_timeout() {
        let mut r = istio_default();
        assert_eq!(r.try_deadline(None), None);
        assert_eq!(
            r.try_deadline(Some(Duration::from_secs(1))),
            Some(Duration::from_secs(1))
        );
        r.per_try_timeout = Some(Duration::from_millis(300));
        assert_eq!(r.try_deadline(None), Some(Duration::from_millis(300)));
        assert_eq!(
            r.try_deadline(Some(Duration::from_millis(100))),
            Some(Duration::from_millis(100))
        );
    }

    #[test]
    fn idempotent_methods() {
        for m in ["GET", "head", "PUT", "DELETE", "OPTIONS", "TRACE"] {
            assert!(is_idempotent(m), "{m}");
        }
        for m in ["POST", "PATCH", "CONNECT"] {
            assert!(!is_idempotent(m), "{m}");
        }
    }
}
