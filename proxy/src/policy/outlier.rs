//! Passive outlier detection per destination (`trafficPolicy.outlierDetection`), Envoy's model
//! as Istio configures it:
//! - an endpoint is ejected after `consecutive5xxErrors` 5xx answers in a row (connect failures,
//!   resets and timeouts count as 5xx), or `consecutiveGatewayErrors` 502/503/504 in a row;
//! - it stays out for `baseEjectionTime` × the number of times it has been ejected (capped at
//!   300 s), then returns by itself;
//! - each `interval` during which a returned endpoint is not ejected again lowers that
//!   multiplier by one;
//! - at most `maxEjectionPercent` of the endpoints are out at once (at least one may be);
//! - when fewer than `minHealthPercent` of the endpoints are healthy, ejections are ignored and
//!   every endpoint takes traffic.

pub use remora_model::policy::outlier::*;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// What an attempt produced, as outlier detection sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Observed {
    Status(u16),
    /// Connect failure, reset, timeout: counts as a 5xx and as a gateway error.
    LocalFailure,
}

/// An ejection that just happened, for logs and metrics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ejection {
    pub addr: SocketAddr,
    pub reason: &'static str,
    pub duration: Duration,
    /// How many times this endpoint has been ejected (the multiplier).
    pub times: u32,
}

#[derive(Clone, Debug, Default, serde::Serialize)]
struct Host {
    consecutive_5xx: u32,
    consecutive_gateway: u32,
    #[serde(skip)]
    ejected_until: Option<Instant>,
    multiplier: u32,
    ejections_total: u64,
}

/// The live state of one destination's endpoints.
#[derive(Debug)]
pub struct Detector {
    pub config: OutlierConfig,
    hosts: HashMap<SocketAddr, Host>,
    last_tick: Instant,
}

/// One endpoint's state for `/config_dump`.
pub use remora_model::dump::HostState;

impl Detector {
    pub fn new(config: OutlierConfig, now: Instant) -> Self {
        Detector {
            config,
            hosts: HashMap::new(),
            last_tick: now,
        }
    }

    /// Return endpoints whose time is up and lower the multipliers of endpoints that stayed
    /// healthy through whole intervals.
    pub fn tick(&mut self, now: Instant) {
        // Intervals first: an endpoint that was out when they began does not earn them.
        let elapsed = now.saturating_duration_since(self.last_tick);
        let intervals = (elapsed.as_nanos() / self.config.interval.as_nanos().max(1)) as u32;
        if intervals > 0 {
            self.last_tick += self.config.interval * intervals;
            for h in self.hosts.values_mut() {
                if h.ejected_until.is_none() {
                    h.multiplier = h.multiplier.saturating_sub(intervals);
                }
            }
        }
        for h in self.hosts.values_mut() {
            if h.ejected_until.is_some_and(|t| now >= t) {
                h.ejected_until = None;
                h.consecutive_5xx = 0;
                h.consecutive_gateway = 0;
            }
        }
    }

    fn ejected_count(&self, now: Instant) -> usize {
        self.hosts
            .values()
            .filter(|h| h.ejected_until.is_some_and(|t| now < t))
            .count()
    }

    /// Record one attempt's result against `addr`; `total` is the number of endpoints of the
    /// destination now. Returns the ejection it caused, if any.
    pub fn record(
        &mut self,
        addr: SocketAddr,
        r: Observed,
        total: usize,
        now: Instant,
    ) -> Option<Ejection> {
        self.tick(now);
        let cfg = self.config.clone();
        let h = self.hosts.entry(addr).or_default();
        if h.ejected_until.is_some() {
            // Results of requests started before the ejection do not extend it.
            return None;
        }
        let (is_5xx, is_gw) = match r {
            Observed::Status(s) => ((500..600).contains(&s), matches!(s, 502..=504)),
            Observed::LocalFailure => (true, true),
        };
        h.consecutive_5xx = if is_5xx { h.consecutive_5xx + 1 } else { 0 };
        h.consecutive_gateway = if is_gw { h.consecutive_gateway + 1 } else { 0 };
        let reason = if cfg.consecutive_5xx.is_some_and(|n| h.consecutive_5xx >= n) {
            "consecutive 5xx"
        } else if cfg
            .consecutive_gateway
            .is_some_and(|n| h.consecutive_gateway >= n)
        {
            "consecutive gateway errors"
        } else {
            return None;
        };
        // maxEjectionPercent, but at least one endpoint may be ejected (Envoy).
        let ejected = self.ejected_count(now);
        let total = total.max(1);
        let allowed = (total * cfg.max_ejection_percent as usize / 100).max(1);
        let h = self.hosts.entry(addr).or_default();
        if ejected >= allowed {
            h.consecutive_5xx = 0;
            h.consecutive_gateway = 0;
            return None;
        }
        h.multiplier += 1;
        h.ejections_total += 1;
        let duration = (cfg.base_ejection_time * h.multiplier)
            .min(MAX_EJECTION_TIME.max(cfg.base_ejection_time));
        h.ejected_until = Some(now + duration);
        h.consecutive_5xx = 0;
        h.consecutive_gateway = 0;
        Some(Ejection {
            addr,
            reason,
            duration,
            times: h.multiplier,
        })
    }

    /// Is `addr` out of the pool now? `total`: the destination's endpoint count, for
    /// `minHealthPercent` (below it, nothing counts as ejected).
    pub fn is_ejected(&self, addr: SocketAddr, total: usize, now: Instant) -> bool {
        let out = self
            .hosts
            .get(&addr)
            .is_some_and(|h| h.ejected_until.is_some_and(|t| now < t));
        if !out {
            return false;
        }
        let total = total.max(1);
        let healthy = total.saturating_sub(self.ejected_count(now));
        healthy * 100 >= total * self.config.min_health_percent as usize
    }

    /// Every known endpoint's state, sorted by address.
    pub fn states(&self, now: Instant) -> Vec<HostState> {
        let mut v: Vec<HostState> = self
            .hosts
            .iter()
            .map(|(a, h)| {
                let left = h
                    .ejected_until
                    .map(|t| t.saturating_duration_since(now))
                    .unwrap_or_default();
                HostState {
                    address: a.to_string(),
                    ejected: !left.is_zero(),
                    ejected_for_ms: left.as_millis() as u64,
                    consecutive_5xx: h.consecutive_5xx,
                    consecutive_gateway_errors: h.consecutive_gateway,
                    ejection_multiplier: h.multiplier,
                    ejections_total: h.ejections_total,
                }
            })
            .collect();
        v.sort_by(|a, b| a.address.cmp(&b.address));
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(p: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], p))
    }

    fn cfg(n5: u32) -> OutlierConfig {
        OutlierConfig {
            consecutive_5xx: Some(n5),
            consecutive_gateway: None,
            interval: Duration::from_secs(1),
            base_ejection_time: Duration::from_secs(10),
            max_ejection_percent: 100,
            min_health_percent: 0,
        }
    }

    #[test]
    fn ejects_after_n_consecutive_and_returns_after_base_time() {
        let t0 = Instant::now();
        let mut d = Detector::new(cfg(3), t0);
        assert_eq!(d.record(a(1), Observed::Status(503), 3, t0), None);
        assert_eq!(d.record(a(1), Observed::Status(200), 3, t0), None); // resets
        assert_eq!(d.record(a(1), Observed::Status(500), 3, t0), None);
        assert_eq!(d.record(a(1), Observed::LocalFailure, 3, t0), None);
        let e = d.record(a(1), Observed::Status(502), 3, t0).unwrap();
        assert_eq!(e.reason, "consecutive 5xx");
        assert_eq!(e.duration, Duration::from_secs(10));
        assert!(d.is_ejected(a(1), 3, t0));
        assert!(!d.is_ejected(a(2), 3, t0));
        assert!(d.is_ejected(a(1), 3, t0 + Duration::from_millis(9999)));
        let back = t0 + Duration::from_secs(10);
        d.tick(back);
        assert!(!d.is_ejected(a(1), 3, back));
        // ejected again soon: twice the base time
        for _ in 0..2 {
            assert_eq!(d.record(a(1), Observed::Status(503), 3, back), None);
        }
        let e2 = d.record(a(1), Observed::Status(503), 3, back).unwrap();
        assert_eq!((e2.duration, e2.times), (Duration::from_secs(20), 2));
        let st = d.states(back);
        assert_eq!(st[0].ejections_total, 2);
        assert!(st[0].ejected);
    }

    #[test]
    fn healthy_intervals_lower_the_multiplier() {
        let t0 = Instant::now();
        let mut d = Detector::new(cfg(1), t0);
        d.record(a(1), Observed::Status(503), 3, t0).unwrap();
        let t1 = t0 + Duration::from_secs(10);
        d.tick(t1);
        assert_eq!(d.states(t1)[0].ejection_multiplier, 1);
        // one interval later the multiplier is back to 0, so the next ejection is base time
        let t2 = t1 + Duration::from_secs(1);
        let e = d.record(a(1), Observed::Status(503), 3, t2).unwrap();
        assert_eq!(e.duration, Duration::from_secs(10));
    }

    #[test]
    fn gateway_errors_only_count_502_to_504_and_local_failures() {
        let t0 = Instant::now();
        let mut d = Detector::new(
            OutlierConfig {
                consecutive_5xx: None,
                consecutive_gateway: Some(2),
                ..cfg(1)
            },
            t0,
        );
        assert_eq!(d.record(a(1), Observed::Status(500), 3, t0), None);
        assert_eq!(d.record(a(1), Observed::Status(500), 3, t0), None);
        assert_eq!(d.record(a(1), Observed::Status(504), 3, t0), None);
        let e = d.record(a(1), Observed::LocalFailure, 3, t0).unwrap();
        assert_eq!(e.reason, "consecutive gateway errors");
    }

    #[test]
    fn max_ejection_percent_caps_but_allows_one() {
        let t0 = Instant::now();
        let mut d = Detector::new(
            OutlierConfig {
                max_ejection_percent: 10,
                ..cfg(1)
            },
            t0,
        );
        // 10% of 3 rounds to 0, but one ejection is allowed
        assert!(d.record(a(1), Observed::Status(503), 3, t0).is_some());
        assert!(d.record(a(2), Observed::Status(503), 3, t0).is_none());
        assert!(!d.is_ejected(a(2), 3, t0));
        let mut d = Detector::new(
            OutlierConfig {
                max_ejection_percent: 67,
                ..cfg(1)
            },
            t0,
        );
        assert!(d.record(a(1), Observed::Status(503), 3, t0).is_some());
        assert!(d.record(a(2), Observed::Status(503), 3, t0).is_some());
        assert!(d.record(a(3), Observed::Status(503), 3, t0).is_none());
    }

    #[test]
    fn below_min_health_percent_ejections_are_ignored() {
        let t0 = Instant::now();
        let mut d = Detector::new(
            OutlierConfig {
                min_health_percent: 50,
                ..cfg(1)
            },
            t0,
        );
        d.record(a(1), Observed::Status(503), 3, t0).unwrap();
        // 2 of 3 healthy = 66% >= 50%: the ejection holds
        assert!(d.is_ejected(a(1), 3, t0));
        d.record(a(2), Observed::Status(503), 3, t0).unwrap();
        // 1 of 3 healthy = 33% < 50%: panic mode, everything takes traffic
        assert!(!d.is_ejected(a(1), 3, t0));
        assert!(!d.is_ejected(a(2), 3, t0));
    }
}
