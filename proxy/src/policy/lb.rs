//! Load balancing per destination (`trafficPolicy.loadBalancer`): ROUND_ROBIN, RANDOM,
//! LEAST_REQUEST (power of two choices on in-flight requests), PASSTHROUGH, and
//! `consistentHash` on a header, a cookie, the source IP or a query parameter (rendezvous
//! hashing: sticky per key, and only the keys of a removed endpoint move).

pub use remora_model::policy::lb::*;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crate::route::Endpoint;

/// Per-destination balancer state shared across requests: a round-robin cursor and
/// in-flight request counts per endpoint.
#[derive(Debug, Default)]
pub struct Balancer {
    pub policy: LbPolicy,
    cursor: AtomicUsize,
    inflight: Mutex<HashMap<SocketAddr, Arc<AtomicU64>>>,
}

/// Counts one in-flight request to an endpoint until dropped.
#[derive(Debug)]
pub struct InFlight(Arc<AtomicU64>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Balancer {
    pub fn new(policy: LbPolicy) -> Self {
        Balancer {
            policy,
            ..Default::default()
        }
    }

    fn counter(&self, a: SocketAddr) -> Arc<AtomicU64> {
        match self.inflight.lock() {
            Ok(mut m) => m.entry(a).or_default().clone(),
            Err(_) => Arc::new(AtomicU64::new(0)),
        }
    }

    /// In-flight requests to `a` now.
    pub fn in_flight(&self, a: SocketAddr) -> u64 {
        self.counter(a).load(Ordering::Relaxed)
    }

    /// Mark a request to `a` as started; the guard ends it.
    pub fn start(&self, a: SocketAddr) -> InFlight {
        let c = self.counter(a);
        c.fetch_add(1, Ordering::Relaxed);
        InFlight(c)
    }

    /// Choose an endpoint. `usable` filters out ejected endpoints and ones a retry already
    /// tried; when it leaves none, all candidates are used (a pick is better than no pick).
    pub fn pick(
        &self,
        eps: &[Endpoint],
        usable: &dyn Fn(SocketAddr) -> bool,
        input: Option<&HashInput<'_>>,
        rng: &mut impl rand::Rng,
    ) -> Option<SocketAddr> {
        let mut cands: Vec<&Endpoint> = eps.iter().filter(|e| usable(e.addr)).collect();
        if cands.is_empty() {
            cands = eps.iter().collect();
        }
        if cands.is_empty() {
            return None;
        }
        match &self.policy {
            LbPolicy::RoundRobin => {
                let i = self.cursor.fetch_add(1, Ordering::Relaxed);
                Some(cands[i % cands.len()].addr)
            }
            LbPolicy::Random | LbPolicy::Passthrough => weighted_pick(&cands, rng),
            LbPolicy::LeastRequest => {
                if cands.len() == 1 {
                    Some(cands[0].addr)
                } else {
                    let i = rng.gen_range(0..cands.len());
                    let mut j = rng.gen_range(0..cands.len() - 1);
                    if j >= i {
                        j += 1;
                    }
                    let (a, b) = (cands[i].addr, cands[j].addr);
                    Some(if self.in_flight(b) < self.in_flight(a) {
                        b
                    } else {
                        a
                    })
                }
            }
            LbPolicy::ConsistentHash(k) => match input.and_then(|i| key_of(k, i)) {
                Some(key) => rendezvous(&key, &cands).or(Some(cands[0].addr)),
                None => weighted_pick(&cands, rng),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use std::net::IpAddr;

    fn ep(port: u16) -> Endpoint {
        Endpoint {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            labels: Default::default(),
            weight: 0,
        }
    }

    fn eps3() -> Vec<Endpoint> {
        vec![ep(1), ep(2), ep(3)]
    }

    #[test]
    fn round_robin_is_exact() {
        let b = Balancer::new(LbPolicy::RoundRobin);
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let mut counts = [0u32; 3];
        for _ in 0..300 {
            let a = b.pick(&eps3(), &|_| true, None, &mut rng).unwrap();
            counts[usize::from(a.port() - 1)] += 1;
        }
        assert_eq!(counts, [100, 100, 100]);
    }

    #[test]
    fn random_within_three_sigma() {
        let b = Balancer::new(LbPolicy::Random);
        let mut rng = rand::rngs::StdRng::seed_from_u64(9);
        let mut counts = [0f64; 3];
        let n = 30_000f64;
        for _ in 0..30_000 {
            let a = b.pick(&eps3(), &|_| true, None, &mut rng).unwrap();
            counts[usize::from(a.port() - 1)] += 1.0;
        }
        let sd = (n * (1.0 / 3.0) * (2.0 / 3.0)).sqrt();
        for c in counts {
            assert!((c - n / 3.0).abs() < 3.0 * sd, "{counts:?}");
        }
    }

    #[test]
    fn least_request_prefers_the_least_loaded() {
        let b = Balancer::new(LbPolicy::LeastRequest);
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        let eps = eps3();
        // endpoint 1 is slow: 10 requests stuck on it; endpoint 2 has 1
        let _stuck: Vec<InFlight> = (0..10).map(|_| b.start(eps[0].addr)).collect();
        let _one = b.start(eps[1].addr);
        let mut counts = [0u32; 3];
        for _ in 0..3000 {
            let a = b.pick(&eps, &|_| true, None, &mut rng).unwrap();
            counts[usize::from(a.port() - 1)] += 1;
        }
        // endpoint 1 loses every pairing; 3 wins against both others
        assert_eq!(counts[0], 0, "{counts:?}");
        assert!(counts[2] > counts[1], "{counts:?}");
        // the guards count down
        drop(_stuck);
        assert_eq!(b.in_flight(eps[0].addr), 0);
    }

    #[test]
    fn consistent_hash_is_sticky_per_key_and_spreads_keys() {
        let eps = eps3();
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        for (key, input_fn) in [
            (
                HashKey::Header("x-user".into()),
                Box::new(|u: &str| {
                    let mut h = http::HeaderMap::new();
                    h.insert("x-user", u.parse().unwrap());
                    (h, "/".to_string(), None)
                })
                    as Box<dyn Fn(&str) -> (http::HeaderMap, String, Option<IpAddr>)>,
            ),
            (
                HashKey::Cookie("sid".into()),
                Box::new(|u: &str| {
                    let mut h = http::HeaderMap::new();
                    h.insert("cookie", format!("a=1; sid={u}").parse().unwrap());
                    (h, "/".to_string(), None)
                }),
            ),
            (
                HashKey::QueryParameter("u".into()),
                Box::new(|u: &str| (http::HeaderMap::new(), format!("/p?x=1&u={u}"), None)),
            ),
            (
                HashKey::SourceIp,
                Box::new(|u: &str| {
                    let n: u8 = u.trim_start_matches("user").parse().unwrap();
                    (
                        http::HeaderMap::new(),
                        "/".to_string(),
                        Some(IpAddr::from([10, 0, 0, n])),
                    )
                }),
            ),
        ] {
            let b = Balancer::new(LbPolicy::ConsistentHash(key.clone()));
            let mut used = std::collections::BTreeSet::new();
            for u in 0..60 {
                let (h, p, ip) = input_fn(&format!("user{u}"));
                let inp = HashInput {
                    headers: &h,
                    path: &p,
                    source_ip: ip,
                };
                assert!(key_of(&key, &inp).is_some(), "{key:?}");
                let first = b.pick(&eps, &|_| true, Some(&inp), &mut rng).unwrap();
                for _ in 0..20 {
                    assert_eq!(b.pick(&eps, &|_| true, Some(&inp), &mut rng), Some(first));
                }
                used.insert(first);
                // removing another endpoint does not move this key
                let others: Vec<Endpoint> = eps
                    .iter()
                    .filter(|e| e.addr == first || e.addr.port() != first.port() % 3 + 1)
                    .cloned()
                    .collect();
                assert_eq!(
                    b.pick(&others, &|_| true, Some(&inp), &mut rng),
                    Some(first)
                );
            }
            assert_eq!(used.len(), 3, "{key:?}: 60 keys use all endpoints");
        }
    }

    #[test]
    fn usable_filter_and_fallback() {
        let b = Balancer::new(LbPolicy::RoundRobin);
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let eps = eps3();
        for _ in 0..10 {
            let a = b.pick(&eps, &|a| a.port() != 2, None, &mut rng).unwrap();
            assert_ne!(a.port(), 2);
        }
        // nothing usable: fall back to all
        assert!(b.pick(&eps, &|_| false, None, &mut rng).is_some());
        assert_eq!(b.pick(&[], &|_| true, None, &mut rng), None);
    }
}
