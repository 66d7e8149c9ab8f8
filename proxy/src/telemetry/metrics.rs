//! The proxy's metrics: one [`Metrics`] handle, created at start-up, owning its own prometheus
//! [`Registry`] and every metric family the proxy exports (Istio's standard families and the
//! proxy's own `remora_*` ones). The admin server's `/stats/prometheus` serializes that
//! registry ([`Metrics::text`]); the parts of the proxy that count something are handed the
//! handle (through `state::Shared`, or explicitly where they are not given `Shared`).
//!
//! No count here is process-global (the only statics are the counter that numbers handles and
//! the per-thread HTTP series caches, whose entries carry their handle's number), so two proxies
//! (or two tests) in one process count apart.

use super::Peer;
use prometheus::core::Collector;
use prometheus::{
    Gauge, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Once};

/// Istio's request duration buckets (milliseconds).
const DURATION_BUCKETS_MS: &[f64] = &[
    0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0,
    60000.0, 300000.0, 600000.0, 1800000.0, 3600000.0,
];
/// Istio's size buckets (bytes).
const SIZE_BUCKETS: &[f64] = &[
    1.0,
    10.0,
    100.0,
    1000.0,
    10000.0,
    100000.0,
    1000000.0,
    10000000.0,
    100000000.0,
    1000000000.0,
];

/// Istio's standard labels of the HTTP families, in the order [`HttpLabels::values`] gives them.
const HTTP_LABELS: &[&str] = &[
    "reporter",
    "source_workload",
    "source_workload_namespace",
    "source_principal",
    "source_app",
    "source_version",
    "source_canonical_service",
    "source_canonical_revision",
    "source_cluster",
    "destination_workload",
    "destination_workload_namespace",
    "destination_principal",
    "destination_app",
    "destination_version",
    "destination_canonical_service",
    "destination_canonical_revision",
    "destination_cluster",
    "destination_service",
    "destination_service_name",
    "destination_service_namespace",
    "request_protocol",
    "response_code",
    "grpc_response_status",
    "response_flags",
    "connection_security_policy",
];

/// Istio's standard labels of the TCP families, in the order [`TcpLabels::values`] gives them.
const TCP_LABELS: &[&str] = &[
    "reporter",
    "source_workload",
    "source_workload_namespace",
    "source_principal",
    "source_app",
    "source_version",
    "source_canonical_service",
    "source_canonical_revision",
    "source_cluster",
    "destination_workload",
    "destination_workload_namespace",
    "destination_principal",
    "destination_app",
    "destination_version",
    "destination_canonical_service",
    "destination_canonical_revision",
    "destination_cluster",
    "destination_service",
    "destination_service_name",
    "destination_service_namespace",
    "request_protocol",
    "response_flags",
    "connection_security_policy",
];

/// A side's eight identity labels, in the families' order.
fn push_peer(out: &mut Vec<String>, p: &Peer) {
    for v in [
        &p.workload,
        &p.namespace,
        &p.principal,
        &p.app,
        &p.version,
        &p.canonical_service,
        &p.canonical_revision,
        &p.cluster,
    ] {
        out.push(v.to_string());
    }
}

/// The proxy's metrics handle: its registry and every metric family. Created once at start-up
/// ([`Metrics::new`]) and shared as an `Arc`.
pub struct Metrics {
    /// Tells handles apart in the per-thread HTTP series caches.
    id: u64,
    registry: Registry,
    pub requests_total: IntCounterVec,
    pub request_duration_ms: HistogramVec,
    pub request_bytes: HistogramVec,
    pub response_bytes: HistogramVec,
    pub tcp_opened: IntCounterVec,
    pub tcp_closed: IntCounterVec,
    pub tcp_sent_bytes: IntCounterVec,
    pub tcp_received_bytes: IntCounterVec,
    /// Connections refused before proxying (loops, missing original destination), by reason.
    pub refused_connections: IntCounterVec,
    /// Downstream connections or requests turned away by the abuse limits (`guard`), by
    /// listener and reason.
    pub downstream_rejected: IntCounterVec,
    /// Downstream connections open now, by listener (the per-proxy cap counts them all).
    pub downstream_connections: IntGaugeVec,
    /// Label sets not registered because their family reached the series cap, by family.
    pub series_dropped: IntCounterVec,
    /// Seconds of validity left on the workload certificate (negative once expired).
    pub cert_expiry_seconds: Gauge,
    /// Certificate requests to the CA, by result (`issued`, `failed`).
    pub cert_requests: IntCounterVec,
    /// Connections between sidecars whose mutual TLS failed, by direction and reason.
    pub mtls_failures: IntCounterVec,
    /// Inbound requests (`http`) and connections (`tcp`) denied by AuthorizationPolicy.
    pub authz_denied: IntCounterVec,
    /// Inbound requests refused by RequestAuthentication (an invalid JWT), by reason (the
    /// fixed set `jwt::authn::REASONS`).
    pub jwt_rejected: IntCounterVec,
    /// Endpoints ejected by outlier detection, by destination and reason (`policy`).
    pub outlier_ejections: IntCounterVec,
    /// Requests (and TCP connections) refused by a connectionPool limit, by destination and
    /// limit (`policy`).
    pub upstream_overflows: IntCounterVec,
    /// Requests answered 429 by a RateLimit rule, by rule (`policy`).
    pub rate_limited: IntCounterVec,
    /// Mirrored request copies by result (`policy::mirror`).
    pub mirror_requests: IntCounterVec,
    /// The rules watcher's families (registered when first used).
    rules: OnFirstUse<RulesMetrics>,
    /// Kubernetes discovery's families (registered when discovery starts).
    discovery: OnFirstUse<DiscoveryMetrics>,
    /// Access-log lines dropped (registered at the first drop).
    access_log_dropped: OnFirstUse<IntCounter>,
    /// The span exporter's families (registered when tracing starts).
    tracing: OnFirstUse<TracingMetrics>,
    /// `ISTIO_MUTUAL` settings sent in plain text (registered when a rule set is first noted).
    mesh_plaintext: OnFirstUse<MeshPlaintext>,
    /// The HTTP families' label sets (they share them) under the cap.
    http_gate: SeriesGate,
    /// The TCP families' label sets under the cap.
    tcp_gate: SeriesGate,
    /// `series_dropped` of each HTTP and TCP family, resolved once.
    http_dropped: [IntCounter; 4],
    tcp_dropped: [IntCounter; 4],
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// The rules watcher's metrics (`rules::watch`, and the rules ConfigMap through the API).
#[derive(Debug)]
pub struct RulesMetrics {
    /// `remora_config_generation`
    pub generation: IntGauge,
    /// `remora_config_reloads_total`
    pub reloads: IntCounter,
    /// `remora_config_reload_errors_total`
    pub reload_errors: IntCounter,
}

/// The span exporter's metrics (`trace_export`), registered when tracing starts.
#[derive(Debug)]
pub struct TracingMetrics {
    /// `remora_tracing_spans_dropped_total`: spans not queued (the queue was full).
    pub dropped: IntCounter,
    /// `remora_tracing_spans_exported_total`: spans the collector accepted.
    pub exported: IntCounter,
    /// `remora_tracing_export_failures_total`: batches the collector did not accept.
    pub export_failures: IntCounter,
}

/// Kubernetes discovery's metrics (`discovery::kube`).
#[derive(Debug)]
pub struct DiscoveryMetrics {
    /// `remora_discovery_services`
    pub services: IntGauge,
    /// `remora_discovery_endpoints`
    pub endpoints: IntGauge,
    /// `remora_discovery_watch_restarts_total{resource}`: re-lists after the first list (410
    /// Gone, a broken watch) and failed list/watch calls.
    pub restarts: IntCounterVec,
}

/// `remora_tls_mesh_plaintext_destinations`, and the rule set it was last set from (the
/// gauge and its warn lines follow each applied rule set once: `rules::watch::note_applied`).
#[derive(Debug)]
pub struct MeshPlaintext {
    pub gauge: IntGauge,
    /// (hash, generation) of the rule set last noted.
    pub noted: Mutex<Option<(String, u64)>>,
}

/// Families registered in the handle's registry on first use instead of at start-up. A family
/// without labels is exported (at 0) from the moment it is registered; these only appear in
/// `/stats/prometheus` once their part of the proxy runs (the rules watcher, discovery) or once
/// they have something to say (a dropped access-log line, a noted rule set).
struct OnFirstUse<T> {
    families: T,
    registry: Registry,
    collectors: fn(&T) -> Vec<Box<dyn Collector>>,
    registered: Once,
}

impl<T> OnFirstUse<T> {
    fn new(
        registry: &Registry,
        families: T,
        collectors: fn(&T) -> Vec<Box<dyn Collector>>,
    ) -> Self {
        OnFirstUse {
            families,
            registry: registry.clone(),
            collectors,
            registered: Once::new(),
        }
    }

    /// The families, registered if they were not yet.
    fn get(&self) -> &T {
        self.registered.call_once(|| {
            for c in (self.collectors)(&self.families) {
                // Only a second family of the same name fails, and every name is registered
                // once per handle.
                if let Err(e) = self.registry.register(c) {
                    tracing::warn!(error = %e, "metric not registered");
                }
            }
        });
        &self.families
    }
}

/// The default of `REMORA_METRIC_SERIES_MAX`: series per metric family.
pub const DEFAULT_SERIES_MAX: usize = 10_000;

/// The cap on series per metric family from `REMORA_METRIC_SERIES_MAX` (default
/// [`DEFAULT_SERIES_MAX`]); read by start-up.
pub fn series_max_from_env() -> usize {
    std::env::var("REMORA_METRIC_SERIES_MAX")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(DEFAULT_SERIES_MAX)
}

/// The label sets registered in a group of metric families that share them, up to a cap.
///
/// Label values come from configuration and identity, so the cap is a backstop: it is only
/// consulted when a label set is new to the asking thread's cache (HTTP) or once per TCP
/// connection event, never per request on a label set already seen. The set holds the label
/// sets' 64-bit hashes (two sets colliding count once, which can only let the family pass the
/// cap by the odd series).
struct SeriesGate {
    max: usize,
    seen: Mutex<std::collections::HashSet<u64>>,
}

impl SeriesGate {
    fn new(max: usize) -> SeriesGate {
        SeriesGate {
            max,
            seen: Mutex::new(std::collections::HashSet::new()),
        }
    }

    /// May the label set hashing to `hash` have series (already registered, or room for it)?
    fn admit(&self, hash: u64) -> bool {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if seen.contains(&hash) {
            return true;
        }
        if seen.len() >= self.max {
            return false;
        }
        seen.insert(hash);
        true
    }
}

/// The four series one HTTP label set writes, looked up once per worker thread instead of
/// hashing thirteen label values four times per request.
struct HttpSeries {
    requests: prometheus::IntCounter,
    duration_ms: prometheus::Histogram,
    request_bytes: prometheus::Histogram,
    response_bytes: prometheus::Histogram,
}

/// One label set in a thread's cache: the handle it belongs to ([`Metrics::id`]), the labels,
/// and its series (`None`: the series cap refused the label set; its requests only count as
/// dropped).
type CachedSeries = (u64, HttpLabels, Option<HttpSeries>);

/// Label sets cached per thread before the cache starts over (bounds memory under label churn).
const SERIES_CACHE_MAX: usize = 4096;

thread_local! {
    /// By [`label_hash`] (which covers the handle's id): one label set per hash (a colliding
    /// set replaces it, which only costs a lookup in the metric families). The entry's handle
    /// id is checked on every hit, so handles in one process never share series.
    static HTTP_SERIES: std::cell::RefCell<std::collections::HashMap<u64, CachedSeries>> =
        std::cell::RefCell::new(std::collections::HashMap::new());
}

/// Ids of the handles: each handle's own, never reused in the process.
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// A multiply-rotate hash over 8-byte words (the request path hashes one label set per
/// request; SipHash over the six strings cost more than everything else in `record_http`).
#[derive(Default)]
struct WordHasher(u64);

impl WordHasher {
    const K: u64 = 0x517c_c1b7_2722_0a95;

    fn mix(&mut self, w: u64) {
        self.0 = (self.0.rotate_left(5) ^ w).wrapping_mul(Self::K);
    }
}

impl std::hash::Hasher for WordHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            self.mix(u64::from_le_bytes(w));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut w = [0u8; 8];
            w[..rest.len()].copy_from_slice(rest);
            self.mix(u64::from_le_bytes(w) ^ ((rest.len() as u64) << 56));
        }
    }

    fn write_u8(&mut self, i: u8) {
        self.mix(u64::from(i));
    }

    fn write_u16(&mut self, i: u16) {
        self.mix(u64::from(i));
    }

    fn write_usize(&mut self, i: usize) {
        self.mix(i as u64);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// The hash of an HTTP label set of the handle `id`.
fn label_hash(id: u64, l: &HttpLabelsRef<'_>) -> u64 {
    let mut h = WordHasher::default();
    h.mix(id);
    std::hash::Hash::hash(l, &mut h);
    std::hash::Hasher::finish(&h)
}

fn counter(
    reg: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> prometheus::Result<IntCounterVec> {
    let c = IntCounterVec::new(Opts::new(name, help), labels)?;
    reg.register(Box::new(c.clone()))?;
    Ok(c)
}

fn gauge(
    reg: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> prometheus::Result<IntGaugeVec> {
    let g = IntGaugeVec::new(Opts::new(name, help), labels)?;
    reg.register(Box::new(g.clone()))?;
    Ok(g)
}

fn histogram(
    reg: &Registry,
    name: &str,
    help: &str,
    buckets: &[f64],
    labels: &[&str],
) -> prometheus::Result<HistogramVec> {
    let h = HistogramVec::new(
        HistogramOpts::new(name, help).buckets(buckets.to_vec()),
        labels,
    )?;
    reg.register(Box::new(h.clone()))?;
    Ok(h)
}

impl Metrics {
    /// A handle with its own registry and every family; HTTP and TCP label sets capped at
    /// `series_max` per family ([`series_max_from_env`] in the proxy). `Err` only for an
    /// invalid metric definition (they are constants).
    pub fn new(series_max: usize) -> prometheus::Result<Metrics> {
        let reg = Registry::new();
        let series_dropped = counter(
            &reg,
            "remora_metric_series_dropped_total",
            "Label sets not registered because their metric family reached the series cap \
             (REMORA_METRIC_SERIES_MAX), by family",
            &["metric"],
        )?;
        let dropped = |names: [&str; 4]| names.map(|n| series_dropped.with_label_values(&[n]));
        let rules = RulesMetrics {
            generation: IntGauge::new(
                "remora_config_generation",
                "Generation of the rules snapshot in effect (0 = none loaded).",
            )?,
            reloads: IntCounter::new(
                "remora_config_reloads_total",
                "Rules snapshots applied by the watcher.",
            )?,
            reload_errors: IntCounter::new(
                "remora_config_reload_errors_total",
                "Rules snapshots rejected by the watcher (invalid rule sets).",
            )?,
        };
        let discovery = DiscoveryMetrics {
            services: IntGauge::new(
                "remora_discovery_services",
                "Kubernetes services in the discovery index (in the Sidecar's scope).",
            )?,
            endpoints: IntGauge::new(
                "remora_discovery_endpoints",
                "Ready endpoints (service port x address) in the discovery index.",
            )?,
            restarts: IntCounterVec::new(
                Opts::new(
                    "remora_discovery_watch_restarts_total",
                    "Kubernetes watches restarted (re-list after 410 Gone or a failed watch, failed list calls).",
                ),
                &["resource"],
            )?,
        };
        let mesh_plaintext = MeshPlaintext {
            gauge: IntGauge::new(
                "remora_tls_mesh_plaintext_destinations",
                "DestinationRule tls settings (per rule, subset and port) with mode ISTIO_MUTUAL sent in plain text between sidecars, because the proxy has no workload identity",
            )?,
            noted: Mutex::new(None),
        };
        let access_log_dropped = IntCounter::new(
            "remora_access_log_dropped_total",
            "Access-log lines dropped because stdout could not keep up.",
        )?;
        let tracing_families = TracingMetrics {
            dropped: IntCounter::new(
                "remora_tracing_spans_dropped_total",
                "Spans dropped because the exporter's queue was full.",
            )?,
            exported: IntCounter::new(
                "remora_tracing_spans_exported_total",
                "Spans the trace collector accepted.",
            )?,
            export_failures: IntCounter::new(
                "remora_tracing_export_failures_total",
                "Span batches the trace collector did not accept (connection failed, timed out or answered other than 2xx); their spans are dropped.",
            )?,
        };
        let cert_expiry_seconds = Gauge::new(
            "remora_workload_cert_expiry_seconds",
            "Seconds of validity left on the workload certificate (negative once expired)",
        )?;
        reg.register(Box::new(cert_expiry_seconds.clone()))?;
        Ok(Metrics {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            http_dropped: dropped([
                "istio_requests_total",
                "istio_request_duration_milliseconds",
                "istio_request_bytes",
                "istio_response_bytes",
            ]),
            tcp_dropped: dropped([
                "istio_tcp_connections_opened_total",
                "istio_tcp_connections_closed_total",
                "istio_tcp_sent_bytes_total",
                "istio_tcp_received_bytes_total",
            ]),
            series_dropped,
            http_gate: SeriesGate::new(series_max),
            tcp_gate: SeriesGate::new(series_max),
            requests_total: counter(
                &reg,
                "istio_requests_total",
                "Requests handled by the proxy",
                HTTP_LABELS,
            )?,
            request_duration_ms: histogram(
                &reg,
                "istio_request_duration_milliseconds",
                "Request duration in milliseconds",
                DURATION_BUCKETS_MS,
                HTTP_LABELS,
            )?,
            request_bytes: histogram(
                &reg,
                "istio_request_bytes",
                "Request body size in bytes",
                SIZE_BUCKETS,
                HTTP_LABELS,
            )?,
            response_bytes: histogram(
                &reg,
                "istio_response_bytes",
                "Response body size in bytes",
                SIZE_BUCKETS,
                HTTP_LABELS,
            )?,
            tcp_opened: counter(
                &reg,
                "istio_tcp_connections_opened_total",
                "TCP connections opened",
                TCP_LABELS,
            )?,
            tcp_closed: counter(
                &reg,
                "istio_tcp_connections_closed_total",
                "TCP connections closed",
                TCP_LABELS,
            )?,
            tcp_sent_bytes: counter(
                &reg,
                "istio_tcp_sent_bytes_total",
                "Bytes sent to the downstream during TCP proxying (response direction)",
                TCP_LABELS,
            )?,
            tcp_received_bytes: counter(
                &reg,
                "istio_tcp_received_bytes_total",
                "Bytes received from the downstream during TCP proxying (request direction)",
                TCP_LABELS,
            )?,
            refused_connections: counter(
                &reg,
                "remora_refused_connections_total",
                "Connections the proxy refused before proxying, by reason",
                &["listener", "reason"],
            )?,
            downstream_rejected: counter(
                &reg,
                "remora_downstream_rejected_total",
                "Downstream connections or requests turned away by the abuse limits, by reason",
                &["listener", "reason"],
            )?,
            downstream_connections: gauge(
                &reg,
                "remora_downstream_connections",
                "Downstream connections open now",
                &["listener"],
            )?,
            cert_expiry_seconds,
            cert_requests: counter(
                &reg,
                "remora_workload_cert_requests_total",
                "Workload certificate requests to the CA, by result",
                &["result"],
            )?,
            authz_denied: counter(
                &reg,
                "remora_authz_denied_total",
                "Inbound requests and connections denied by AuthorizationPolicy, by kind",
                &["kind"],
            )?,
            jwt_rejected: counter(
                &reg,
                "remora_jwt_rejected_total",
                "Inbound requests refused by RequestAuthentication (an invalid JWT), by reason",
                &["reason"],
            )?,
            mtls_failures: counter(
                &reg,
                "remora_mtls_failures_total",
                "Connections between sidecars whose mutual TLS failed, by direction and reason",
                &["direction", "reason"],
            )?,
            outlier_ejections: counter(
                &reg,
                "remora_outlier_ejections_total",
                "Endpoints ejected by outlier detection",
                &["destination_service", "reason"],
            )?,
            upstream_overflows: counter(
                &reg,
                "remora_upstream_overflow_total",
                "Requests refused by a connectionPool limit (503 UO)",
                &["destination_service", "limit"],
            )?,
            rate_limited: counter(
                &reg,
                "remora_rate_limited_requests_total",
                "Requests answered 429 by a RateLimit rule",
                &["rule"],
            )?,
            mirror_requests: counter(
                &reg,
                "remora_mirror_requests_total",
                "Mirrored request copies by result (sent, failed, timeout, dropped)",
                &["result"],
            )?,
            rules: OnFirstUse::new(&reg, rules, |r| {
                vec![
                    Box::new(r.generation.clone()),
                    Box::new(r.reloads.clone()),
                    Box::new(r.reload_errors.clone()),
                ]
            }),
            discovery: OnFirstUse::new(&reg, discovery, |d| {
                vec![
                    Box::new(d.services.clone()),
                    Box::new(d.endpoints.clone()),
                    Box::new(d.restarts.clone()),
                ]
            }),
            access_log_dropped: OnFirstUse::new(&reg, access_log_dropped, |c| {
                vec![Box::new(c.clone())]
            }),
            tracing: OnFirstUse::new(&reg, tracing_families, |t| {
                vec![
                    Box::new(t.dropped.clone()),
                    Box::new(t.exported.clone()),
                    Box::new(t.export_failures.clone()),
                ]
            }),
            mesh_plaintext: OnFirstUse::new(&reg, mesh_plaintext, |m| {
                vec![Box::new(m.gauge.clone())]
            }),
            registry: reg,
        })
    }

    /// The registry every family of this handle is in.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The registry in Prometheus' text format (what `/stats/prometheus` serves).
    pub fn text(&self) -> prometheus::Result<String> {
        prometheus::TextEncoder::new().encode_to_string(&self.registry.gather())
    }

    /// The rules watcher's families (registered at the first call: the watcher's start).
    pub fn rules(&self) -> &RulesMetrics {
        self.rules.get()
    }

    /// Kubernetes discovery's families (registered at the first call: discovery's start).
    pub fn discovery(&self) -> &DiscoveryMetrics {
        self.discovery.get()
    }

    /// `remora_access_log_dropped_total` (registered at the first dropped line).
    pub fn access_log_dropped(&self) -> &IntCounter {
        self.access_log_dropped.get()
    }

    /// The span exporter's families (registered at the first call: tracing's start).
    pub fn tracing(&self) -> &TracingMetrics {
        self.tracing.get()
    }

    /// `remora_tls_mesh_plaintext_destinations` and the rule set it follows (registered when
    /// the first rule set is noted).
    pub fn mesh_plaintext(&self) -> &MeshPlaintext {
        self.mesh_plaintext.get()
    }

    /// Record one finished HTTP request.
    pub fn record_http(&self, l: &HttpLabels, duration_ms: f64, req_bytes: u64, resp_bytes: u64) {
        self.record_http_ref(&l.as_ref(), duration_ms, req_bytes, resp_bytes);
    }

    /// Record one finished HTTP request (labels borrowed from the request's state).
    ///
    /// The common path is a thread-local lookup by a cheap hash: no lock, no allocation. Only
    /// a label set new to this thread takes the series cap's lock (and allocates its key).
    pub fn record_http_ref(
        &self,
        l: &HttpLabelsRef<'_>,
        duration_ms: f64,
        req_bytes: u64,
        resp_bytes: u64,
    ) {
        let hash = label_hash(self.id, l);
        HTTP_SERIES.with(|cache| {
            let mut cache = cache.borrow_mut();
            let hit = cache
                .get(&hash)
                .filter(|(id, k, _)| *id == self.id && k.as_ref() == *l);
            let s = match hit {
                Some((_, _, s)) => s,
                None => {
                    if cache.len() >= SERIES_CACHE_MAX {
                        cache.clear();
                    }
                    let key = l.owned();
                    let series = self.http_gate.admit(hash).then(|| {
                        let owned = key.values();
                        let values = refs(&owned);
                        HttpSeries {
                            requests: self.requests_total.with_label_values(&values),
                            duration_ms: self.request_duration_ms.with_label_values(&values),
                            request_bytes: self.request_bytes.with_label_values(&values),
                            response_bytes: self.response_bytes.with_label_values(&values),
                        }
                    });
                    cache.insert(hash, (self.id, key, series));
                    match cache.get(&hash) {
                        Some((_, _, s)) => s,
                        None => return,
                    }
                }
            };
            let Some(s) = s else {
                for d in &self.http_dropped {
                    d.inc();
                }
                return;
            };
            s.requests.inc();
            s.duration_ms.observe(duration_ms);
            s.request_bytes.observe(req_bytes as f64);
            s.response_bytes.observe(resp_bytes as f64);
        });
    }

    /// Record a TCP connection opening.
    ///
    /// Once per connection event (not per request): the series cap's lock is taken here.
    pub fn tcp_open(&self, l: &TcpLabels) {
        let owned = l.values();
        if !self.tcp_admit(&owned) {
            self.tcp_dropped[0].inc();
            return;
        }
        self.tcp_opened.with_label_values(&refs(&owned)).inc();
    }

    fn tcp_admit(&self, values: &[String]) -> bool {
        let mut h = WordHasher::default();
        std::hash::Hash::hash(values, &mut h);
        self.tcp_gate.admit(std::hash::Hasher::finish(&h))
    }

    /// Record a TCP connection closing with its byte counts.
    pub fn tcp_close(&self, l: &TcpLabels, received: u64, sent: u64) {
        let owned = l.values();
        if !self.tcp_admit(&owned) {
            for d in &self.tcp_dropped[1..] {
                d.inc();
            }
            return;
        }
        let values = refs(&owned);
        self.tcp_closed.with_label_values(&values).inc();
        self.tcp_received_bytes
            .with_label_values(&values)
            .inc_by(received);
        self.tcp_sent_bytes.with_label_values(&values).inc_by(sent);
    }
}

fn refs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// Split an FQDN service host into (name, namespace) the way Istio labels do
/// (`reviews.default.svc.cluster.local` → `reviews`, `default`).
fn service_name_ns(service: &str) -> (String, String) {
    let host = service.split(':').next().unwrap_or(service);
    if host.parse::<std::net::IpAddr>().is_ok() || host == "unknown" {
        return (host.to_string(), "unknown".to_string());
    }
    let mut parts = host.split('.');
    let name = parts.next().unwrap_or("unknown").to_string();
    let ns = match (parts.next(), parts.next()) {
        (Some(ns), Some("svc")) => ns.to_string(),
        _ => "unknown".to_string(),
    };
    (name, ns)
}

/// Labels of one HTTP request.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct HttpLabels {
    pub reporter: &'static str,
    pub source: Arc<Peer>,
    pub destination: Arc<Peer>,
    pub destination_service: String,
    pub request_protocol: &'static str,
    pub response_code: u16,
    pub grpc_response_status: String,
    pub response_flags: String,
    /// `mutual_tls`, `none` or `unknown` (`peer::security_policy`).
    pub connection_security_policy: &'static str,
}

/// [`HttpLabels`] borrowed from a request's state (no copies on the request path).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct HttpLabelsRef<'a> {
    pub reporter: &'static str,
    pub source: &'a Arc<Peer>,
    pub destination: &'a Arc<Peer>,
    pub destination_service: &'a str,
    pub request_protocol: &'static str,
    pub response_code: u16,
    pub grpc_response_status: &'a str,
    pub response_flags: &'a str,
    /// `mutual_tls`, `none` or `unknown` (`peer::security_policy`).
    pub connection_security_policy: &'static str,
}

impl HttpLabelsRef<'_> {
    fn owned(self) -> HttpLabels {
        HttpLabels {
            reporter: self.reporter,
            source: self.source.clone(),
            destination: self.destination.clone(),
            destination_service: self.destination_service.to_string(),
            request_protocol: self.request_protocol,
            response_code: self.response_code,
            grpc_response_status: self.grpc_response_status.to_string(),
            response_flags: self.response_flags.to_string(),
            connection_security_policy: self.connection_security_policy,
        }
    }
}

impl HttpLabels {
    /// The same labels, borrowed.
    pub fn as_ref(&self) -> HttpLabelsRef<'_> {
        HttpLabelsRef {
            reporter: self.reporter,
            source: &self.source,
            destination: &self.destination,
            destination_service: &self.destination_service,
            request_protocol: self.request_protocol,
            response_code: self.response_code,
            grpc_response_status: &self.grpc_response_status,
            response_flags: &self.response_flags,
            connection_security_policy: self.connection_security_policy,
        }
    }

    fn values(&self) -> Vec<String> {
        let (svc_name, svc_ns) = service_name_ns(&self.destination_service);
        let mut v = Vec::with_capacity(HTTP_LABELS.len());
        v.push(self.reporter.to_string());
        push_peer(&mut v, &self.source);
        push_peer(&mut v, &self.destination);
        v.extend([
            self.destination_service.clone(),
            svc_name,
            svc_ns,
            self.request_protocol.to_string(),
            self.response_code.to_string(),
            self.grpc_response_status.clone(),
            self.response_flags.clone(),
            self.connection_security_policy.to_string(),
        ]);
        v
    }
}

/// Labels of one TCP connection.
#[derive(Clone, Debug)]
pub struct TcpLabels {
    pub reporter: &'static str,
    pub source: Arc<Peer>,
    pub destination: Arc<Peer>,
    pub destination_service: String,
    pub response_flags: String,
    /// `mutual_tls`, `none` or `unknown` (`peer::security_policy`).
    pub connection_security_policy: &'static str,
}

impl TcpLabels {
    fn values(&self) -> Vec<String> {
        let (svc_name, svc_ns) = service_name_ns(&self.destination_service);
        let mut v = Vec::with_capacity(TCP_LABELS.len());
        v.push(self.reporter.to_string());
        push_peer(&mut v, &self.source);
        push_peer(&mut v, &self.destination);
        v.extend([
            self.destination_service.clone(),
            svc_name,
            svc_ns,
            "tcp".to_string(),
            self.response_flags.clone(),
            self.connection_security_policy.to_string(),
        ]);
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_labels_split_fqdn() {
        assert_eq!(
            service_name_ns("reviews.default.svc.cluster.local"),
            ("reviews".to_string(), "default".to_string())
        );
        assert_eq!(
            service_name_ns("10.0.0.1:8080"),
            ("10.0.0.1".to_string(), "unknown".to_string())
        );
        assert_eq!(
            service_name_ns("api.example.com"),
            ("api".to_string(), "unknown".to_string())
        );
    }

    fn labels(workload: &str) -> HttpLabels {
        HttpLabels {
            reporter: "source",
            source: Arc::new(crate::telemetry::peer::own(
                workload,
                "ns1",
                &Default::default(),
                "unknown",
                "Kubernetes",
            )),
            destination: Peer::unknown(),
            destination_service: "reviews.ns1.svc.cluster.local".into(),
            request_protocol: "http",
            response_code: 200,
            grpc_response_status: String::new(),
            response_flags: "-".into(),
            connection_security_policy: "none",
        }
    }

    /// `istio_requests_total` of `workload` and `code` in the handle's text.
    fn requests(m: &Metrics, workload: &str, code: &str) -> Option<String> {
        m.text()
            .unwrap()
            .lines()
            .find(|x| {
                x.starts_with("istio_requests_total{")
                    && x.contains(&format!("source_workload=\"{workload}\""))
                    && x.contains(&format!("response_code=\"{code}\""))
            })
            .map(|x| x.rsplit(' ').next().unwrap().to_string())
    }

    #[test]
    fn http_request_lands_in_the_handles_registry() {
        let m = Metrics::new(DEFAULT_SERIES_MAX).unwrap();
        let l = labels("unit-test-wl");
        m.record_http(&l, 3.0, 10, 20);
        let text = m.text().unwrap();
        let line = text
            .lines()
            .find(|l| l.starts_with("istio_requests_total{") && l.contains("unit-test-wl"))
            .unwrap();
        assert!(line.contains("reporter=\"source\""), "{line}");
        assert!(
            line.contains("destination_service_name=\"reviews\""),
            "{line}"
        );
        assert!(line.contains("response_code=\"200\""), "{line}");
        assert!(line.ends_with(" 1"), "{line}");

        // The cached series keep counting, and another label set is its own series.
        m.record_http(&l, 3.0, 10, 20);
        let other = HttpLabels {
            response_code: 503,
            ..l.clone()
        };
        m.record_http(&other, 1.0, 0, 0);
        assert_eq!(requests(&m, "unit-test-wl", "200").as_deref(), Some("2"));
        assert_eq!(requests(&m, "unit-test-wl", "503").as_deref(), Some("1"));
        // Nothing went to prometheus' default registry.
        assert!(prometheus::gather()
            .iter()
            .all(|f| f.name() != "istio_requests_total"));
    }

    #[test]
    fn every_family_carries_istios_full_label_set() {
        let m = Metrics::new(DEFAULT_SERIES_MAX).unwrap();
        let mut l = labels("full-set");
        l.destination = Arc::new(crate::telemetry::peer::own(
            "reviews-v2",
            "ns1",
            &[("app", "reviews"), ("version", "v2")]
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            "spiffe://cluster.local/ns/ns1/sa/reviews",
            "Kubernetes",
        ));
        m.record_http(&l, 1.0, 0, 0);
        m.tcp_open(&TcpLabels {
            reporter: "destination",
            source: l.source.clone(),
            destination: l.destination.clone(),
            destination_service: "reviews.ns1.svc.cluster.local".into(),
            response_flags: "-".into(),
            connection_security_policy: "mutual_tls",
        });
        let text = m.text().unwrap();
        let side = [
            "workload",
            "workload_namespace",
            "principal",
            "app",
            "version",
            "canonical_service",
            "canonical_revision",
            "cluster",
        ];
        let mut want: Vec<String> = vec!["reporter".into()];
        for s in ["source", "destination"] {
            want.extend(side.iter().map(|f| format!("{s}_{f}")));
        }
        want.extend(
            [
                "destination_service",
                "destination_service_name",
                "destination_service_namespace",
                "request_protocol",
                "response_flags",
                "connection_security_policy",
            ]
            .map(String::from),
        );
        let names = |line: &str| -> Vec<String> {
            let inner = &line[line.find('{').unwrap() + 1..line.rfind('}').unwrap()];
            let mut v: Vec<String> = inner
                .split("\",")
                .map(|kv| kv.split('=').next().unwrap().to_string())
                .collect();
            v.sort();
            v
        };
        let line = |family: &str| {
            text.lines()
                .find(|x| x.starts_with(&format!("{family}{{")))
                .unwrap_or_else(|| panic!("{family}:\n{text}"))
                .to_string()
        };
        let mut tcp = want.clone();
        tcp.sort();
        assert_eq!(names(&line("istio_tcp_connections_opened_total")), tcp);
        let mut http = want;
        http.extend(["response_code".into(), "grpc_response_status".into()]);
        http.sort();
        let req = line("istio_requests_total");
        assert_eq!(names(&req), http);
        for v in [
            "destination_workload=\"reviews-v2\"",
            "destination_app=\"reviews\"",
            "destination_version=\"v2\"",
            "destination_canonical_revision=\"v2\"",
            "destination_principal=\"spiffe://cluster.local/ns/ns1/sa/reviews\"",
            "destination_cluster=\"Kubernetes\"",
            "source_workload=\"full-set\"",
            "source_canonical_service=\"full-set\"",
            "source_canonical_revision=\"latest\"",
            "source_principal=\"unknown\"",
        ] {
            assert!(req.contains(v), "{v}: {req}");
        }
    }

    #[test]
    fn two_handles_on_one_thread_count_apart() {
        let a = Metrics::new(DEFAULT_SERIES_MAX).unwrap();
        let b = Metrics::new(DEFAULT_SERIES_MAX).unwrap();
        let l = labels("two-handles");
        a.record_http(&l, 1.0, 0, 0);
        a.record_http(&l, 1.0, 0, 0);
        b.record_http(&l, 1.0, 0, 0);
        assert_eq!(requests(&a, "two-handles", "200").as_deref(), Some("2"));
        assert_eq!(requests(&b, "two-handles", "200").as_deref(), Some("1"));
        // A handle whose cap is reached drops the label set; the other still counts it.
        let capped = Metrics::new(0).unwrap();
        capped.record_http(&l, 1.0, 0, 0);
        a.record_http(&l, 1.0, 0, 0);
        assert_eq!(requests(&capped, "two-handles", "200"), None);
        assert_eq!(requests(&a, "two-handles", "200").as_deref(), Some("3"));
        assert!(capped
            .text()
            .unwrap()
            .contains("remora_metric_series_dropped_total{metric=\"istio_requests_total\"} 1"));
    }

    #[test]
    fn families_without_labels_appear_once_their_part_runs() {
        let m = Metrics::new(DEFAULT_SERIES_MAX).unwrap();
        let text = m.text().unwrap();
        assert!(
            text.contains("remora_workload_cert_expiry_seconds 0"),
            "{text}"
        );
        for late in [
            "remora_config_generation",
            "remora_discovery_services",
            "remora_access_log_dropped_total",
            "remora_tls_mesh_plaintext_destinations",
        ] {
            assert!(!text.contains(late), "{late} before its first use:\n{text}");
        }
        m.rules().generation.set(3);
        m.discovery();
        m.access_log_dropped();
        m.access_log_dropped().inc();
        let text = m.text().unwrap();
        for (line, help) in [
            (
                "remora_config_generation 3",
                "# HELP remora_config_generation Generation of the rules snapshot in effect (0 = none loaded).",
            ),
            ("remora_config_reloads_total 0", "# TYPE remora_config_reloads_total counter"),
            ("remora_discovery_services 0", "# TYPE remora_discovery_services gauge"),
            ("remora_access_log_dropped_total 1", "# TYPE remora_access_log_dropped_total counter"),
        ] {
            assert!(text.contains(line), "{line}:\n{text}");
            assert!(text.contains(help), "{help}:\n{text}");
        }
        assert!(
            !text.contains("remora_tls_mesh_plaintext_destinations"),
            "{text}"
        );
    }
}
