//! Fault injection (`fault.delay`, `fault.abort`), decided per request (pure).

use std::time::Duration;

use crate::kinds::FaultPolicy;

/// What to inject into one request.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Injection {
    /// Wait this long before forwarding (or aborting).
    pub delay: Option<Duration>,
    pub abort: Option<Abort>,
}

/// An injected local answer.
#[derive(Clone, Debug, PartialEq)]
pub enum Abort {
    /// `httpStatus`.
    Http(u16),
    /// `grpcStatus`: HTTP 200 with `grpc-status: <code>` (trailers-only response).
    Grpc(u8),
}

/// True with probability `percentage` / 100 (clamped to 0..=100).
pub fn sample(percentage: f64, rng: &mut impl rand::Rng) -> bool {
    if percentage.is_nan() || percentage <= 0.0 {
        return false;
    }
    if percentage >= 100.0 {
        return true;
    }
    rng.gen::<f64>() * 100.0 < percentage
}

/// gRPC status code names (`UNAVAILABLE`) or numbers (`14`) to the code.
pub fn grpc_code(s: &str) -> Option<u8> {
    const NAMES: [&str; 17] = [
        "OK",
        "CANCELLED",
        "UNKNOWN",
        "INVALID_ARGUMENT",
        "DEADLINE_EXCEEDED",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "PERMISSION_DENIED",
        "RESOURCE_EXHAUSTED",
        "FAILED_PRECONDITION",
        "ABORTED",
        "OUT_OF_RANGE",
        "UNIMPLEMENTED",
        "INTERNAL",
        "UNAVAILABLE",
        "DATA_LOSS",
        "UNAUTHENTICATED",
    ];
    let t = s.trim();
    if let Ok(n) = t.parse::<u8>() {
        return (usize::from(n) < NAMES.len()).then_some(n);
    }
    NAMES
        .iter()
        .position(|n| n.eq_ignore_ascii_case(t))
        .and_then(|i| u8::try_from(i).ok())
}

/// Decide the injection for one request. Delay and abort are sampled independently (Envoy).
pub fn decide(fault: Option<&FaultPolicy>, rng: &mut impl rand::Rng) -> Injection {
    let Some(f) = fault else {
        return Injection::default();
    };
    let delay = f
        .delay
        .as_ref()
        .filter(|d| sample(d.percentage, rng))
        .map(|d| d.fixed_delay);
    let abort = f.abort.as_ref().and_then(|a| {
        if !sample(a.percentage, rng) {
            return None;
        }
        match (a.http_status, a.grpc_status.as_deref().and_then(grpc_code)) {
            (Some(s), _) => Some(Abort::Http(s)),
            (None, Some(g)) => Some(Abort::Grpc(g)),
            (None, None) => None,
        }
    });
    Injection { delay, abort }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kinds::{FaultAbort, FaultDelay};
    use rand::SeedableRng;

    #[test]
    fn grpc_codes() {
        assert_eq!(grpc_code("UNAVAILABLE"), Some(14));
        assert_eq!(grpc_code("unavailable"), Some(14));
        assert_eq!(grpc_code("4"), Some(4));
        assert_eq!(grpc_code("17"), None);
        assert_eq!(grpc_code("NOPE"), None);
    }

    #[test]
    fn no_fault_injects_nothing_and_100_percent_always() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        assert_eq!(decide(None, &mut rng), Injection::default());
        let f = FaultPolicy {
            delay: Some(FaultDelay {
                fixed_delay: Duration::from_millis(5),
                percentage: 100.0,
            }),
            abort: Some(FaultAbort {
                http_status: None,
                grpc_status: Some("UNAVAILABLE".into()),
                percentage: 100.0,
            }),
        };
        for _ in 0..100 {
            let i = decide(Some(&f), &mut rng);
            assert_eq!(i.delay, Some(Duration::from_millis(5)));
            assert_eq!(i.abort, Some(Abort::Grpc(14)));
        }
    }

    /// Over 20,000 samples each percentage lands within 3 standard deviations.
    #[test]
    fn percentages_hold_within_three_sigma() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(42);
        for pct in [0.0, 0.1, 10.0, 33.3, 50.0, 99.0, 100.0] {
            let f = FaultPolicy {
                delay: None,
                abort: Some(FaultAbort {
                    http_status: Some(503),
                    grpc_status: None,
                    percentage: pct,
                }),
            };
            let n = 20_000f64;
            let hits = (0..20_000)
                .filter(|_| decide(Some(&f), &mut rng).abort == Some(Abort::Http(503)))
                .count() as f64;
            let p = pct / 100.0;
            let sd = (n * p * (1.0 - p)).sqrt();
            assert!(
                (hits - n * p).abs() <= 3.0 * sd + 1e-9,
                "{pct}%: {hits} of {n}"
            );
        }
    }
}
