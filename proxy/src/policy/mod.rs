//! Traffic policies: the pure pieces (`retry`, `fault`, `mirror`, `cors`, `lb`,
//! `outlier`, `limits`, `ratelimit`, `traffic`) and `Policies`, the state shared across
//! requests: per destination (host, subset, port) its balancer, outlier detector and
//! connection-pool counters; and the rate limiters of the `RateLimit` rules. Ejections, pool
//! overflows and rate-limited requests are counted in the metrics handle `Policies` is given.

pub use remora_model::policy::{cors, fault, retry, traffic};

pub mod lb;
pub mod limits;
pub mod mirror;
pub mod outlier;
pub mod ratelimit;
pub mod request;
pub mod tls;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use remora_model::dump::{DestinationDump, OutlierDump, PoliciesDump};

use crate::route::Endpoint;
use crate::rules::Snapshot;
use crate::telemetry::Metrics;

/// Identity of a destination's shared state. The effective policy text is part of it, so a
/// reload that changes a DestinationRule starts fresh state and one that does not keeps it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct DestKey {
    host: String,
    subset: Option<String>,
    port: u16,
    policy: String,
}

/// The shared state of one destination.
#[derive(Debug)]
pub struct Destination {
    pub host: String,
    pub subset: Option<String>,
    pub port: u16,
    pub policy: traffic::TrafficPolicy,
    /// The policy could not be interpreted; defaults apply (the message says why).
    pub policy_error: Option<String>,
    pub balancer: lb::Balancer,
    pub outlier: Option<Mutex<outlier::Detector>>,
    pub pool: limits::Pool,
    /// TLS origination (`tls.mode: SIMPLE`), or why it cannot be done (then requests to the
    /// destination fail with 503 rather than go out in plain text).
    pub tls: Result<Option<tls::Origination>, String>,
    /// The rustls client settings of `tls` for opaque TCP (built at first use).
    tcp_tls: OnceLock<Result<Arc<rustls::ClientConfig>, String>>,
    /// Where ejections and pool overflows are counted.
    metrics: Arc<Metrics>,
}

impl Destination {
    fn new(
        host: &str,
        subset: Option<&str>,
        port: u16,
        policy: traffic::TrafficPolicy,
        metrics: Arc<Metrics>,
    ) -> Self {
        Destination {
            host: host.to_string(),
            subset: subset.map(str::to_string),
            port,
            balancer: lb::Balancer::new(policy.load_balancer.clone()),
            outlier: policy
                .outlier_detection
                .clone()
                .map(|c| Mutex::new(outlier::Detector::new(c, Instant::now()))),
            pool: limits::Pool::new(policy.connection_pool.clone()),
            tls: tls::origination(&policy.tls_settings).inspect_err(|e| {
                tracing::warn!(
                    destination = %host,
                    subset = subset.unwrap_or(""),
                    port,
                    error = %e,
                    "TLS origination not possible: requests to this destination fail with 503 UF: {e}"
                );
            }),
            policy_error: None,
            tcp_tls: OnceLock::new(),
            policy,
            metrics,
        }
    }

    /// TLS origination for opaque TCP to this destination (`tls.mode` SIMPLE or MUTUAL): the
    /// client settings and the SNI (`sni`, else the host); `None` when the bytes go as they are
    /// (no `tls`, DISABLE, ISTIO_MUTUAL); `Err` when the settings cannot be used (the
    /// connection is then refused rather than sent in plain text).
    pub fn tcp_tls(&self) -> Option<Result<(Arc<rustls::ClientConfig>, String), String>> {
        let o = match &self.tls {
            Err(e) => return Some(Err(e.clone())),
            Ok(None) => return None,
            Ok(Some(o)) => o,
        };
        let config = self
            .tcp_tls
            .get_or_init(|| crate::upstream::mtls::client_config(&self.policy.tls_settings, &[]))
            .clone();
        let sni = o.sni.clone().unwrap_or_else(|| self.host.clone());
        Some(config.map(|c| (c, sni)))
    }

    /// Choose an endpoint: not ejected, not in `tried` (a retry goes elsewhere when it can).
    pub fn pick(
        &self,
        eps: &[Endpoint],
        tried: &[SocketAddr],
        input: Option<&lb::HashInput<'_>>,
        rng: &mut impl rand::Rng,
    ) -> Option<SocketAddr> {
        let now = Instant::now();
        let total = eps.len();
        let det = self.outlier.as_ref().and_then(|m| m.lock().ok());
        let ejected = |a: SocketAddr| det.as_ref().is_some_and(|d| d.is_ejected(a, total, now));
        // First choice: neither ejected nor tried; then not ejected; then anything.
        let healthy_untried = |a: SocketAddr| !ejected(a) && !tried.contains(&a);
        if eps.iter().any(|e| healthy_untried(e.addr)) {
            return self.balancer.pick(eps, &healthy_untried, input, rng);
        }
        self.balancer.pick(eps, &|a| !ejected(a), input, rng)
    }

    /// Feed one attempt's result to outlier detection (logs and counts an ejection).
    pub fn record(&self, addr: SocketAddr, r: outlier::Observed, total: usize) {
        let Some(m) = &self.outlier else { return };
        let Ok(mut d) = m.lock() else { return };
        if let Some(e) = d.record(addr, r, total, Instant::now()) {
            tracing::warn!(
                destination = %self.host,
                subset = self.subset.as_deref().unwrap_or(""),
                endpoint = %e.addr,
                reason = e.reason,
                ejected_for_ms = e.duration.as_millis() as u64,
                times = e.times,
                "outlier detection ejected an endpoint"
            );
            self.metrics
                .outlier_ejections
                .with_label_values(&[&self.host, e.reason])
                .inc();
        }
    }

    /// Admit a request under the connection-pool limits (503 `UO` on `Err`).
    pub async fn admit(&self) -> Result<limits::Admitted, limits::Overflow> {
        let r = self.pool.admit().await;
        if let Err(o) = r {
            self.count_overflow(o);
        }
        r
    }

    /// Admit an opaque TCP connection under `tcp.maxConnections` (closed at once on `Err`, flag
    /// `UO`); the permit is held while the connection is open.
    pub fn admit_connection(
        &self,
    ) -> Result<Option<tokio::sync::OwnedSemaphorePermit>, limits::Overflow> {
        let r = self.pool.admit_connection();
        if let Err(o) = r {
            self.count_overflow(o);
        }
        r
    }

    fn count_overflow(&self, o: limits::Overflow) {
        let limit = match o {
            limits::Overflow::Pending => "http1MaxPendingRequests",
            limits::Overflow::Requests => "http2MaxRequests",
            limits::Overflow::Connections => "maxConnections",
        };
        self.metrics
            .upstream_overflows
            .with_label_values(&[&self.host, limit])
            .inc();
    }

    fn dump(&self) -> DestinationDump {
        let now = Instant::now();
        DestinationDump {
            host: self.host.clone(),
            subset: self.subset.clone(),
            port: self.port,
            policy: self.policy.clone(),
            policy_error: self.policy_error.clone(),
            connection_pool: self.pool.stats(),
            tls: self.policy.tls_settings.summary(),
            tls_error: self.tls.as_ref().err().cloned(),
            outlier_detection: self.outlier.as_ref().and_then(|m| m.lock().ok()).map(|d| {
                OutlierDump {
                    config: d.config.clone(),
                    endpoints: d.states(now),
                }
            }),
        }
    }
}

/// The live rate limiters of the snapshot `hash` (the rules come decoded in
/// `Snapshot::policy`; a limiter whose rule did not change keeps its bucket across reloads).
#[derive(Default)]
struct RateLimits {
    hash: String,
    limiters: Vec<Arc<ratelimit::Limiter>>,
}

/// `x-ratelimit-*` headers.
pub type RateHeaders = Vec<(&'static str, String)>;

/// All policy state of the proxy.
pub struct Policies {
    dests: Mutex<Dests>,
    rate_limits: Mutex<RateLimits>,
    /// Where the destinations and rate limiters count (the proxy's metrics handle).
    metrics: Arc<Metrics>,
}

/// The destinations' shared state, and in front of it the answers already given under one
/// snapshot: within a snapshot the effective policy of a (host, subset, port) cannot change, so
/// a request finds its destination without rebuilding (and serializing) the policy text.
#[derive(Default)]
struct Dests {
    map: HashMap<DestKey, Arc<Destination>>,
    /// The snapshot (`generation`, `hash`) the `front` answers belong to.
    front_of: Option<(u64, String)>,
    /// host → (subset, port, state) looked up under `front_of`.
    front: HashMap<String, Vec<FrontEntry>>,
    front_len: usize,
}

/// (subset, port, state) of one host in `Dests::front`.
type FrontEntry = (Option<String>, u16, Arc<Destination>);

impl Dests {
    fn front_get(
        &mut self,
        snap: &Snapshot,
        host: &str,
        subset: Option<&str>,
        port: u16,
    ) -> Option<Arc<Destination>> {
        let current = self
            .front_of
            .as_ref()
            .is_some_and(|(g, h)| *g == snap.generation && *h == snap.hash);
        if !current {
            self.front.clear();
            self.front_len = 0;
            self.front_of = Some((snap.generation, snap.hash.clone()));
            return None;
        }
        self.front
            .get(host)?
            .iter()
            .find(|(s, p, _)| *p == port && s.as_deref() == subset)
            .map(|(_, _, d)| d.clone())
    }

    fn front_put(&mut self, host: &str, subset: Option<&str>, port: u16, d: &Arc<Destination>) {
        if self.front_len >= MAX_DESTINATIONS {
            self.front.clear();
            self.front_len = 0;
        }
        self.front.entry(host.to_string()).or_default().push((
            subset.map(str::to_string),
            port,
            d.clone(),
        ));
        self.front_len += 1;
    }
}

/// Bound on remembered destinations (each distinct host/subset/port/policy is one).
const MAX_DESTINATIONS: usize = 10_000;

impl Policies {
    /// Empty state; destinations, limiters and CORS policies fill in from each snapshot.
    /// Ejections, overflows and rate-limited requests count in `metrics`.
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Policies {
            dests: Mutex::new(Dests::default()),
            rate_limits: Mutex::new(RateLimits::default()),
            metrics,
        }
    }

    /// The shared state of a destination under the snapshot's DestinationRule.
    pub fn destination(
        &self,
        snap: &Snapshot,
        host: &str,
        subset: Option<&str>,
        port: u16,
    ) -> Arc<Destination> {
        let Ok(mut dests) = self.dests.lock() else {
            return Arc::new(Destination::new(
                host,
                subset,
                port,
                Default::default(),
                self.metrics.clone(),
            ));
        };
        if let Some(d) = dests.front_get(snap, host, subset, port) {
            return d;
        }
        if dests.map.len() >= MAX_DESTINATIONS {
            // Let the slow path drop the state no request holds any more.
            dests.front.clear();
            dests.front_len = 0;
        }
        let d = self.destination_slow(&mut dests.map, snap, host, subset, port);
        dests.front_put(host, subset, port, &d);
        d
    }

    /// The state for the effective policy text: kept when a reload leaves the policy alone.
    fn destination_slow(
        &self,
        map: &mut HashMap<DestKey, Arc<Destination>>,
        snap: &Snapshot,
        host: &str,
        subset: Option<&str>,
        port: u16,
    ) -> Arc<Destination> {
        let dr = snap.destination_rule(host);
        let raw = dr
            .map(|d| traffic::effective_raw(d, subset, port))
            .unwrap_or(serde_json::Value::Null);
        let key = DestKey {
            host: host.to_string(),
            subset: subset.map(str::to_string),
            port,
            policy: raw.to_string(),
        };
        if let Some(d) = map.get(&key) {
            return d.clone();
        }
        let (policy, err) = match dr.map(|d| traffic::resolve(d, subset, port)) {
            None => (traffic::TrafficPolicy::default(), None),
            Some(Ok(p)) => (p, None),
            Some(Err(e)) => {
                tracing::warn!(error = %e, "trafficPolicy not applied; defaults used");
                (traffic::TrafficPolicy::default(), Some(e))
            }
        };
        let mut d = Destination::new(host, subset, port, policy, self.metrics.clone());
        d.policy_error = err;
        let d = Arc::new(d);
        if map.len() >= MAX_DESTINATIONS {
            // Drop state no request holds any more.
            map.retain(|_, v| Arc::strong_count(v) > 1);
        }
        // Older policies of the same destination are replaced.
        map.retain(|k, _| !(k.host == key.host && k.subset == key.subset && k.port == key.port));
        map.insert(key, d.clone());
        d
    }

    fn refresh_rate_limits(&self, snap: &Snapshot) {
        let Ok(mut rl) = self.rate_limits.lock() else {
            return;
        };
        if rl.hash == snap.hash {
            return;
        }
        // Decoded and checked with the rule set: an invalid RateLimit or corsPolicy never
        // reaches a snapshot (the loader keeps the previous set).
        let rules = snap.policy.rate_limits.clone();
        let old = std::mem::take(&mut rl.limiters);
        rl.limiters = rules
            .into_iter()
            .map(|r| {
                old.iter()
                    .find(|l| l.rule == r)
                    .cloned()
                    .unwrap_or_else(|| Arc::new(ratelimit::Limiter::new(r)))
            })
            .collect();
        if !rl.limiters.is_empty() {
            tracing::info!(
                count = rl.limiters.len(),
                generation = snap.generation,
                "RateLimit rules applied"
            );
        }
        rl.hash = snap.hash.clone();
    }

    /// The `corsPolicy` of a VirtualService route (`vs`: `namespace/name`; `route_path`:
    /// `spec.http[i]`), if it has one.
    pub fn cors(&self, snap: &Snapshot, vs: &str, route_path: &str) -> Option<Arc<cors::Cors>> {
        snap.policy
            .cors
            .get(&(vs.to_string(), route_path.to_string()))
            .cloned()
    }

    /// Does any route have a `corsPolicy`? (Cheap check before looking the route up.)
    pub fn has_cors(&self, snap: &Snapshot) -> bool {
        !snap.policy.cors.is_empty()
    }

    /// Take a token for a request to `host` by `route`. `Err` carries the 429's headers.
    pub fn rate_limit(
        &self,
        snap: &Snapshot,
        host: &str,
        route: Option<&str>,
    ) -> Result<RateHeaders, RateHeaders> {
        self.refresh_rate_limits(snap);
        let limiters: Vec<Arc<ratelimit::Limiter>> = match self.rate_limits.lock() {
            Ok(rl) => rl
                .limiters
                .iter()
                .filter(|l| l.rule.applies(host, route))
                .cloned()
                .collect(),
            Err(_) => return Ok(vec![]),
        };
        let mut headers = Vec::new();
        for l in limiters {
            let t = l.take();
            let h = l.headers(t);
            if let ratelimit::Take::Limited { .. } = t {
                self.metrics
                    .rate_limited
                    .with_label_values(&[&l.rule.key])
                    .inc();
                return Err(h);
            }
            headers = h;
        }
        Ok(headers)
    }

    /// State for `/config_dump`.
    pub fn dump(&self) -> PoliciesDump {
        let mut destinations: Vec<DestinationDump> = match self.dests.lock() {
            Ok(m) => m.map.values().map(|d| d.dump()).collect(),
            Err(_) => vec![],
        };
        destinations.sort_by(|a, b| {
            (&a.host, &a.subset, a.port, &a.policy_error).cmp(&(
                &b.host,
                &b.subset,
                b.port,
                &b.policy_error,
            ))
        });
        let rate_limits = self
            .rate_limits
            .lock()
            .map(|r| r.limiters.iter().map(|l| l.rule.clone()).collect())
            .unwrap_or_default();
        PoliciesDump {
            destinations,
            rate_limits,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::LoadContext;

    fn snap(yaml: &str) -> Snapshot {
        snap_of(&[("r.yaml", yaml)])
    }

    fn test_metrics() -> Arc<Metrics> {
        Arc::new(Metrics::new(100).unwrap())
    }

    fn snap_of(files: &[(&str, &str)]) -> Snapshot {
        crate::rules::snapshot_from_yaml(files, &LoadContext::default(), 1)
            .unwrap_or_else(|e| panic!("{e:?}"))
    }

    #[test]
    fn destination_state_is_shared_and_replaced_when_the_policy_changes() {
        let y1 = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: r}\nspec:\n  host: r\n  trafficPolicy:\n    loadBalancer: {simple: ROUND_ROBIN}\n    outlierDetection: {consecutive5xxErrors: 1}\n";
        let s1 = snap(y1);
        let p = Policies::new(test_metrics());
        let host = "r.default.svc.cluster.local";
        let a = p.destination(&s1, host, None, 80);
        let b = p.destination(&s1, host, None, 80);
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(a.policy.load_balancer, lb::LbPolicy::RoundRobin);
        let ep = SocketAddr::from(([127, 0, 0, 1], 1));
        a.record(ep, outlier::Observed::Status(503), 3);
        let dump = p.dump();
        let od = dump.destinations[0].outlier_detection.as_ref();
        assert!(od.is_some_and(|o| o.endpoints[0].ejected), "{dump:?}");
        // a rule change starts a fresh state
        let s2 = snap(&y1.replace("ROUND_ROBIN", "RANDOM"));
        let c = p.destination(&s2, host, None, 80);
        assert!(!Arc::ptr_eq(&a, &c));
        assert_eq!(c.policy.load_balancer, lb::LbPolicy::Random);
        assert_eq!(p.dump().destinations.len(), 1);
        // a later generation with the same policy keeps the state; other ports have their own
        let s3 = crate::rules::snapshot_from_yaml(
            &[("r.yaml", y1.replace("ROUND_ROBIN", "RANDOM").as_str())],
            &LoadContext::default(),
            2,
        )
        .unwrap();
        assert!(Arc::ptr_eq(&c, &p.destination(&s3, host, None, 80)));
        assert!(Arc::ptr_eq(&c, &p.destination(&s3, host, None, 80)));
        let d = p.destination(&s3, host, None, 81);
        assert!(!Arc::ptr_eq(&c, &d));
        assert!(Arc::ptr_eq(&d, &p.destination(&s3, host, None, 81)));
        // back to the first rules: fresh state again, as before
        let e = p.destination(&s1, host, None, 80);
        assert!(!Arc::ptr_eq(&e, &a) && !Arc::ptr_eq(&e, &c));
        assert_eq!(e.policy.load_balancer, lb::LbPolicy::RoundRobin);
    }

    #[test]
    fn pick_avoids_ejected_and_tried_endpoints() {
        let y = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: r}\nspec:\n  host: r\n  trafficPolicy:\n    loadBalancer: {simple: ROUND_ROBIN}\n    outlierDetection: {consecutive5xxErrors: 1, maxEjectionPercent: 100}\n";
        let s = snap(y);
        let p = Policies::new(test_metrics());
        let d = p.destination(&s, "r.default.svc.cluster.local", None, 80);
        let eps: Vec<Endpoint> = (1..=3)
            .map(|i| Endpoint {
                addr: SocketAddr::from(([127, 0, 0, 1], i)),
                labels: Default::default(),
                weight: 0,
            })
            .collect();
        d.record(eps[0].addr, outlier::Observed::LocalFailure, 3);
        let mut rng = rand::thread_rng();
        for _ in 0..20 {
            let a = d.pick(&eps, &[eps[1].addr], None, &mut rng).unwrap();
            assert_eq!(a, eps[2].addr);
        }
        // everything healthy was tried: a healthy endpoint again rather than the ejected one
        for _ in 0..20 {
            let a = d
                .pick(&eps, &[eps[1].addr, eps[2].addr], None, &mut rng)
                .unwrap();
            assert_ne!(a, eps[0].addr);
        }
    }

    #[test]
    fn rate_limits_from_the_rules_directory() {
        let y = "apiVersion: remora.dev/v1alpha1\nkind: RateLimit\nmetadata: {name: rl}\nspec: {host: r, requestsPerUnit: 2, unit: HOUR}\n";
        let s = snap_of(&[
            ("dr.yaml", "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: r}\nspec: {host: r}\n"),
            ("rl.yaml", y),
        ]);
        let p = Policies::new(test_metrics());
        let host = "r.default.svc.cluster.local";
        assert!(p.rate_limit(&s, "other.example", None).is_ok());
        let first = p.rate_limit(&s, host, None).unwrap();
        assert_eq!(first[1], ("x-ratelimit-remaining", "1".to_string()));
        assert!(p.rate_limit(&s, host, None).is_ok());
        let limited = p.rate_limit(&s, host, None).unwrap_err();
        assert_eq!(limited[0], ("x-ratelimit-limit", "2".to_string()));
        assert_eq!(limited[1], ("x-ratelimit-remaining", "0".to_string()));
        assert_eq!(p.dump().rate_limits[0].key, "default/rl");
        // Counted in the handle the policies were given.
        assert_eq!(
            p.metrics
                .rate_limited
                .with_label_values(&["default/rl"])
                .get(),
            1
        );
    }

    #[test]
    fn cors_policies_are_read_per_route() {
        let y = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: v, namespace: prod}\nspec:\n  hosts: [v]\n  http:\n  - route: [{destination: {host: v}}]\n  - corsPolicy: {allowOrigins: [{exact: \"https://a\"}], allowMethods: [GET]}\n    route: [{destination: {host: v}}]\n";
        let s = snap_of(&[("v.yaml", y)]);
        let p = Policies::new(test_metrics());
        assert!(p.has_cors(&s));
        assert!(p.cors(&s, "prod/v", "spec.http[0]").is_none());
        let c = p.cors(&s, "prod/v", "spec.http[1]").unwrap();
        assert!(c.allows("https://a"));
        assert_eq!(c.allow_methods, vec!["GET".to_string()]);
    }
}
