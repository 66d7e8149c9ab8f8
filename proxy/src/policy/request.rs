//! The policy state of one HTTP request through the proxy: the route timeout's deadline, the
//! retry budget, the endpoints tried, and the destination's shared state (balancer, outlier
//! detection, connection pool). The data plane calls it at each step:
//! `next_endpoint` before each attempt, `try_timeout` for the attempt's read timeout, and
//! `on_status` / `on_failure` after it, which decide whether to retry.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::lb::{HashInput, InFlight};
use super::limits::{Admitted, RetryToken};
use super::outlier::Observed;
use super::retry::{self, Outcome, Retry};
use super::Destination;
use crate::route::Endpoint;

/// After an attempt: try again, or let this result be the answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Retry,
    Final(&'static str),
}

/// Per-request policy state.
pub struct RequestPolicy {
    pub dest: Option<Arc<Destination>>,
    pub endpoints: Vec<Endpoint>,
    pub retry: Retry,
    pub method: String,
    /// The route `timeout`, and when it expires.
    pub timeout: Option<Duration>,
    pub deadline: Option<Instant>,
    /// Endpoints attempted, in order.
    pub tried: Vec<SocketAddr>,
    current: Option<SocketAddr>,
    inflight: Option<InFlight>,
    pub admitted: Option<Admitted>,
    retry_tokens: Vec<RetryToken>,
}

impl RequestPolicy {
    pub fn new(
        dest: Option<Arc<Destination>>,
        endpoints: Vec<Endpoint>,
        retry: Retry,
        method: &str,
        timeout: Option<Duration>,
        now: Instant,
    ) -> Self {
        // Istio: `timeout: 0s` disables the route timeout.
        let timeout = timeout.filter(|t| !t.is_zero());
        RequestPolicy {
            dest,
            endpoints,
            retry,
            method: method.to_string(),
            timeout,
            deadline: timeout.map(|t| now + t),
            tried: Vec::new(),
            current: None,
            inflight: None,
            admitted: None,
            retry_tokens: Vec::new(),
        }
    }

    /// Attempts started so far.
    pub fn attempts(&self) -> u32 {
        self.tried.len() as u32
    }

    /// The endpoint for the next attempt: by the destination's balancer, avoiding ejected
    /// endpoints and, on a retry, those already tried. `fixed`: the address to use when the
    /// destination has no endpoint list (the original destination or a DNS answer).
    pub fn next_endpoint(
        &mut self,
        fixed: Option<SocketAddr>,
        input: Option<&HashInput<'_>>,
        rng: &mut impl rand::Rng,
    ) -> Option<SocketAddr> {
        let picked = match (&self.dest, self.endpoints.is_empty()) {
            (Some(d), false) => d.pick(&self.endpoints, &self.tried, input, rng),
            (None, false) => super::lb::weighted_pick(&self.endpoints, rng),
            (_, true) => fixed,
        }?;
        self.inflight = self.dest.as_ref().map(|d| d.balancer.start(picked));
        self.current = Some(picked);
        self.tried.push(picked);
        Some(picked)
    }

    /// Time left before the route timeout (`None`: no timeout).
    pub fn remaining(&self, now: Instant) -> Option<Duration> {
        self.deadline.map(|d| d.saturating_duration_since(now))
    }

    /// Has the route timeout expired?
    pub fn expired(&self, now: Instant) -> bool {
        self.deadline.is_some_and(|d| now >= d)
    }

    /// The read timeout of this attempt: the per-try timeout clipped to the route's remaining
    /// time.
    pub fn try_timeout(&self, now: Instant) -> Option<Duration> {
        self.retry
            .try_deadline(self.remaining(now))
            .map(|d| d.max(Duration::from_millis(1)))
    }

    fn decide(&mut self, outcome: Outcome, body_replayable: bool, now: Instant) -> Verdict {
        self.inflight = None;
        if self.expired(now) {
            return Verdict::Final("route timeout expired");
        }
        match self
            .retry
            .should_retry(&self.method, self.attempts(), outcome, body_replayable)
        {
            retry::Decision::Stop(why) => Verdict::Final(why),
            retry::Decision::Retry => {
                if let Some(d) = &self.dest {
                    match d.pool.retry() {
                        Some(t) => self.retry_tokens.push(t),
                        None => return Verdict::Final("connectionPool.http.maxRetries reached"),
                    }
                }
                Verdict::Retry
            }
        }
    }

    /// After a response header arrived from the current endpoint.
    pub fn on_status(
        &mut self,
        status: u16,
        grpc: Option<u8>,
        body_replayable: bool,
        now: Instant,
    ) -> Verdict {
        if let (Some(d), Some(a)) = (&self.dest, self.current) {
            d.record(a, Observed::Status(status), self.endpoints.len());
        }
        if status < 400 && grpc.is_none_or(|g| g == 0) {
            self.inflight = None;
            return Verdict::Final("success");
        }
        self.decide(Outcome::Status { status, grpc }, body_replayable, now)
    }

    /// After an attempt failed without a response.
    pub fn on_failure(&mut self, outcome: Outcome, body_replayable: bool, now: Instant) -> Verdict {
        if let (Some(d), Some(a)) = (&self.dest, self.current) {
            d.record(a, Observed::LocalFailure, self.endpoints.len());
        }
        self.decide(outcome, body_replayable, now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Policies;
    use crate::route::RetryPolicy;
    use crate::rules::{snapshot_from_yaml, LoadContext};

    fn eps() -> Vec<Endpoint> {
        (1..=3)
            .map(|i| Endpoint {
                addr: SocketAddr::from(([127, 0, 0, 1], i)),
                labels: Default::default(),
                weight: 0,
            })
            .collect()
    }

    fn dest(yaml_tp: &str) -> Arc<Destination> {
        let y = format!("apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: r}}\nspec:\n  host: r\n  trafficPolicy: {yaml_tp}\n");
        let s = snapshot_from_yaml(&[("r.yaml", &y)], &LoadContext::default(), 1).unwrap();
        let metrics = Arc::new(crate::telemetry::Metrics::new(100).unwrap());
        Policies::new(metrics).destination(&s, "r.default.svc.cluster.local", None, 80)
    }

    #[test]
    fn retries_go_to_other_endpoints_and_stop_after_attempts() {
        let d = dest("{loadBalancer: {simple: ROUND_ROBIN}}");
        let rule = RetryPolicy {
            attempts: 2,
            per_try_timeout: None,
            retry_on: vec!["503".into()],
            retry_remote_localities: None,
        };
        let now = Instant::now();
        let mut p = RequestPolicy::new(
            Some(d),
            eps(),
            retry::effective(Some(&rule)),
            "GET",
            None,
            now,
        );
        let mut rng = rand::thread_rng();
        let a = p.next_endpoint(None, None, &mut rng).unwrap();
        assert_eq!(p.on_status(503, None, true, now), Verdict::Retry);
        let b = p.next_endpoint(None, None, &mut rng).unwrap();
        assert_ne!(a, b);
        assert_eq!(p.on_status(503, None, true, now), Verdict::Retry);
        let c = p.next_endpoint(None, None, &mut rng).unwrap();
        assert!(c != a && c != b);
        assert_eq!(
            p.on_status(503, None, true, now),
            Verdict::Final("retries exhausted")
        );
        assert_eq!(p.attempts(), 3);
    }

    #[test]
    fn timeouts_bound_tries_and_stop_retries() {
        let rule = RetryPolicy {
            attempts: 5,
            per_try_timeout: Some(Duration::from_millis(300)),
            retry_on: vec!["5xx".into()],
            retry_remote_localities: None,
        };
        let t0 = Instant::now();
        let mut p = RequestPolicy::new(
            None,
            vec![],
            retry::effective(Some(&rule)),
            "GET",
            Some(Duration::from_secs(1)),
            t0,
        );
        let fixed = SocketAddr::from(([127, 0, 0, 1], 9));
        let mut rng = rand::thread_rng();
        assert_eq!(p.next_endpoint(Some(fixed), None, &mut rng), Some(fixed));
        assert_eq!(p.try_timeout(t0), Some(Duration::from_millis(300)));
        let t1 = t0 + Duration::from_millis(800);
        assert_eq!(p.try_timeout(t1), Some(Duration::from_millis(200)));
        assert_eq!(
            p.on_failure(Outcome::PerTryTimeout, true, t1),
            Verdict::Retry
        );
        let t2 = t0 + Duration::from_secs(1);
        assert!(p.expired(t2));
        assert_eq!(
            p.on_failure(Outcome::PerTryTimeout, true, t2),
            Verdict::Final("route timeout expired")
        );
    }

    #[test]
    fn zero_timeouts_mean_none() {
        let rule = RetryPolicy {
            attempts: 1,
            per_try_timeout: Some(Duration::ZERO),
            retry_on: vec!["5xx".into()],
            retry_remote_localities: None,
        };
        let t0 = Instant::now();
        let p = RequestPolicy::new(
            None,
            vec![],
            retry::effective(Some(&rule)),
            "GET",
            Some(Duration::ZERO),
            t0,
        );
        assert_eq!(p.deadline, None);
        assert!(!p.expired(t0 + Duration::from_secs(3600)));
        assert_eq!(p.try_timeout(t0), None);
    }

    #[test]
    fn max_retries_of_the_pool_caps_retries() {
        let d = dest("{connectionPool: {http: {maxRetries: 1}}}");
        let now = Instant::now();
        let mk = || {
            RequestPolicy::new(
                Some(d.clone()),
                eps(),
                retry::istio_default(),
                "GET",
                None,
                now,
            )
        };
        let mut rng = rand::thread_rng();
        let mut p1 = mk();
        p1.next_endpoint(None, None, &mut rng);
        assert_eq!(p1.on_status(503, None, true, now), Verdict::Retry);
        let mut p2 = mk();
        p2.next_endpoint(None, None, &mut rng);
        assert_eq!(
            p2.on_status(503, None, true, now),
            Verdict::Final("connectionPool.http.maxRetries reached")
        );
        drop(p1);
        let mut p3 = mk();
        p3.next_endpoint(None, None, &mut rng);
        assert_eq!(p3.on_status(503, None, true, now), Verdict::Retry);
    }

    #[test]
    fn success_is_final_and_counts_for_outlier_detection() {
        let d = dest("{outlierDetection: {consecutive5xxErrors: 2, maxEjectionPercent: 100}, loadBalancer: {simple: ROUND_ROBIN}}");
        let now = Instant::now();
        let mut rng = rand::thread_rng();
        // two failing requests on the same endpoint eject it
        let target = eps()[0].addr;
        for _ in 0..2 {
            let mut p = RequestPolicy::new(
                Some(d.clone()),
                vec![eps()[0].clone()],
                retry::effective(Some(&RetryPolicy::default())),
                "GET",
                None,
                now,
            );
            assert_eq!(p.next_endpoint(None, None, &mut rng), Some(target));
            assert_eq!(
                p.on_status(500, None, true, now),
                Verdict::Final("retries exhausted")
            );
        }
        let mut p = RequestPolicy::new(Some(d), eps(), retry::istio_default(), "GET", None, now);
        for _ in 0..3 {
            let a = p.next_endpoint(None, None, &mut rng).unwrap();
            assert_ne!(a, target);
            assert_eq!(p.on_status(200, None, true, now), Verdict::Final("success"));
            p.tried.clear();
        }
    }
}
