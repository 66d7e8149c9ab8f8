//! Local rate limiting: a token bucket per route or destination, configured by our own
//! `RateLimit` kind (`apiVersion: remora.dev/v1alpha1`) in the rules directory:
//!
//! ```yaml
//! apiVersion: remora.dev/v1alpha1
//! kind: RateLimit
//! metadata: {name: reviews-limit, namespace: default}
//! spec:
//!   host: reviews            # destination host (short names resolve in the namespace)
//!   route: v2-route          # optional: only requests routed by this http route name
//!   requestsPerUnit: 100     # tokens added per unit (also `requests_per_unit`)
//!   unit: SECOND             # SECOND | MINUTE | HOUR
//!   burst: 100               # optional: bucket size (default requestsPerUnit)
//! ```
//!
//! A request finding the bucket empty is answered 429 with `x-ratelimit-limit`,
//! `x-ratelimit-remaining: 0` and `x-ratelimit-reset` (seconds until a token is back).

pub use remora_model::policy::ratelimit::*;

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A token bucket (time passed in, so it is testable without sleeping).
#[derive(Debug)]
pub struct Bucket {
    capacity: f64,
    /// Tokens per second.
    rate: f64,
    tokens: f64,
    last: Instant,
}

/// The answer of one `take`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Take {
    Allowed { remaining: u64 },
    Limited { reset: Duration },
}

impl Bucket {
    pub fn new(capacity: u64, per_unit: u64, unit: Duration, now: Instant) -> Self {
        let secs = unit.as_secs_f64().max(1e-9);
        Bucket {
            capacity: capacity.max(1) as f64,
            rate: per_unit as f64 / secs,
            tokens: capacity.max(1) as f64,
            last: now,
        }
    }

    pub fn take(&mut self, now: Instant) -> Take {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = self.last.max(now);
        self.tokens = (self.tokens + dt * self.rate).min(self.capacity);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Take::Allowed {
                remaining: self.tokens.floor() as u64,
            }
        } else {
            let need = (1.0 - self.tokens) / self.rate.max(1e-12);
            Take::Limited {
                reset: Duration::from_secs_f64(need.min(1e9)),
            }
        }
    }
}

/// A rule with its live bucket, shared across requests.
#[derive(Debug)]
pub struct Limiter {
    pub rule: RateLimitRule,
    bucket: Mutex<Bucket>,
}

impl Limiter {
    pub fn new(rule: RateLimitRule) -> Self {
        let b = Bucket::new(
            rule.burst,
            rule.requests_per_unit,
            rule.unit,
            Instant::now(),
        );
        Limiter {
            rule,
            bucket: Mutex::new(b),
        }
    }

    pub fn take(&self) -> Take {
        match self.bucket.lock() {
            Ok(mut b) => b.take(Instant::now()),
            // A poisoned lock means a panic elsewhere; fail open rather than reject traffic.
            Err(_) => Take::Allowed { remaining: 0 },
        }
    }

    /// The `x-ratelimit-*` response headers for an answer.
    pub fn headers(&self, t: Take) -> Vec<(&'static str, String)> {
        let (remaining, reset) = match t {
            Take::Allowed { remaining } => (remaining, 0),
            Take::Limited { reset } => (0, reset.as_secs_f64().ceil() as u64),
        };
        vec![
            ("x-ratelimit-limit", self.rule.burst.to_string()),
            ("x-ratelimit-remaining", remaining.to_string()),
            ("x-ratelimit-reset", reset.to_string()),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_allows_burst_then_refills_at_the_rate() {
        let t0 = Instant::now();
        let mut b = Bucket::new(3, 10, Duration::from_secs(1), t0);
        assert_eq!(b.take(t0), Take::Allowed { remaining: 2 });
        assert_eq!(b.take(t0), Take::Allowed { remaining: 1 });
        assert_eq!(b.take(t0), Take::Allowed { remaining: 0 });
        match b.take(t0) {
            Take::Limited { reset } => {
                assert!((reset.as_secs_f64() - 0.1).abs() < 1e-6, "{reset:?}")
            }
            other => panic!("{other:?}"),
        }
        // 100 ms later exactly one token is back
        let t1 = t0 + Duration::from_millis(100);
        assert_eq!(b.take(t1), Take::Allowed { remaining: 0 });
        assert!(matches!(b.take(t1), Take::Limited { .. }));
        // a long idle period refills only up to the capacity
        let t2 = t1 + Duration::from_secs(60);
        assert_eq!(b.take(t2), Take::Allowed { remaining: 2 });
    }

    /// At twice the configured rate over 10 simulated seconds, about half is limited.
    #[test]
    fn twice_the_rate_limits_about_half() {
        let t0 = Instant::now();
        let mut b = Bucket::new(10, 100, Duration::from_secs(1), t0);
        let (mut ok, mut limited) = (0u32, 0u32);
        for i in 0..2000u64 {
            // 200 requests per second, evenly spaced
            match b.take(t0 + Duration::from_micros(i * 5000)) {
                Take::Allowed { .. } => ok += 1,
                Take::Limited { .. } => limited += 1,
            }
        }
        // 100/s for 10 s plus the initial burst of 10
        assert!((1000..=1011).contains(&ok), "ok {ok} limited {limited}");
    }

    #[test]
    fn limiter_headers() {
        let l = Limiter::new(RateLimitRule {
            key: "d/x".into(),
            host: "h".into(),
            route: None,
            requests_per_unit: 1,
            unit: Duration::from_secs(3600),
            unit_name: "HOUR".into(),
            burst: 1,
            source: String::new(),
        });
        let first = l.take();
        assert_eq!(first, Take::Allowed { remaining: 0 });
        let second = l.take();
        let h = l.headers(second);
        assert_eq!(h[0], ("x-ratelimit-limit", "1".to_string()));
        assert_eq!(h[1], ("x-ratelimit-remaining", "0".to_string()));
        let reset: u64 = h[2].1.parse().unwrap();
        assert!((3590..=3600).contains(&reset), "{reset}");
    }
}
