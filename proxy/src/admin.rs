//! Admin and status servers, on their own small tokio runtime so proxy load never stalls them:
//! - 15020: `/stats/prometheus`, `/config_dump`, `/healthz/ready`,
//!   `/app-health/<container>/{livez,readyz,startupz}` (the app's original probes). It listens on
//!   the pod IP because the kubelet's rewritten probes come there; `/config_dump` (the whole
//!   configuration) and `/quitquitquit` answer loopback peers only: the pod itself, and a
//!   port-forward (the kubelet connects to `localhost` inside the pod), which is how
//!   `remora proxy-config` and `proxy-status` reach it.
//! - 15021: `/healthz/ready` (200 only once a config is loaded, the capture listeners are bound
//!   and discovery's first sync is in, or `--discovery-ready-timeout` passed: `discovery::ready`)
//! - 15090: `/stats/prometheus`
//!
//! With metrics merging (`ISTIO_PROMETHEUS_ANNOTATIONS`, set by the injector), 15020's
//! `/stats/prometheus` adds the app's own metrics after the proxy's (`telemetry::app_metrics`);
//! 15090's stays the proxy's alone.
//!
//! `/stats/prometheus` serializes the proxy's metrics handle (`Shared::metrics`).

use crate::app_probe::AppProbers;
use crate::discovery::ready::{GateState, ReadyGate};
use crate::state::Shared;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use remora_model::dump::{
    ApiState, ConfigDump, ConfigSourceDump, DiscoveryDump, ListenerDump, RulesDump, WorkloadDump,
};
use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;
use tokio::net::TcpListener;
use tracing::{debug, info, warn};

/// Which endpoints a server exposes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AdminKind {
    /// 15020: everything.
    Admin,
    /// 15021: readiness only.
    Health,
    /// 15090: metrics only.
    Prometheus,
}

/// What the admin servers read.
pub struct AdminState {
    pub shared: Arc<Shared>,
    pub probers: AppProbers,
    pub rules_dir: String,
    pub started: Instant,
    /// Set by the SIGTERM watcher: readiness turns 503 while draining.
    pub draining: AtomicBool,
    /// Cached once the capture listeners were seen bound.
    listeners_bound: AtomicBool,
    /// The rules sources (files and the ConfigMap through the API), when the API is used.
    pub rules_sources: Option<Arc<crate::discovery::rules_api::RulesSources>>,
    /// Kubernetes endpoint discovery, when on.
    pub discovery: Option<Arc<crate::discovery::kube::Discovery>>,
    /// Readiness also waits for discovery's first sync (bounded); `None`: it does not.
    pub ready_gate: Option<Arc<ReadyGate>>,
    /// Set the first time readiness is 200 (logged once).
    became_ready: AtomicBool,
    /// A gateway's router (`remora-proxy gateway`): its listening ports (which readiness waits
    /// for instead of the capture ports) and its plan for `/config_dump`.
    pub gateway: Option<Arc<crate::gateway::GatewayRouter>>,
    /// The app's own metrics, merged into 15020's `/stats/prometheus` (metrics merging).
    pub app_metrics: Option<crate::telemetry::app_metrics::AppMetrics>,
}

impl AdminState {
    pub fn new(shared: Arc<Shared>, probers: AppProbers, rules_dir: String) -> AdminState {
        AdminState {
            shared,
            probers,
            rules_dir,
            started: Instant::now(),
            draining: AtomicBool::new(false),
            listeners_bound: AtomicBool::new(false),
            rules_sources: None,
            discovery: None,
            ready_gate: None,
            became_ready: AtomicBool::new(false),
            app_metrics: None,
            gateway: None,
        }
    }

    /// Readiness also waits for `gate` (discovery's first sync, bounded).
    pub fn with_ready_gate(mut self, gate: Arc<ReadyGate>) -> AdminState {
        self.ready_gate = Some(gate);
        self
    }

    /// With the API-backed rules source and discovery (for `/config_dump`).
    pub fn with_kube(
        mut self,
        rules_sources: Option<Arc<crate::discovery::rules_api::RulesSources>>,
        discovery: Option<Arc<crate::discovery::kube::Discovery>>,
    ) -> AdminState {
        self.rules_sources = rules_sources;
        self.discovery = discovery;
        self
    }

    /// Are both capture listeners bound by this process?
    pub fn listeners_bound(&self) -> bool {
        if self.listeners_bound.load(Ordering::Relaxed) {
            return true;
        }
        let s = &self.shared.settings;
        let ok = match &self.gateway {
            Some(g) => g.ports().iter().all(|p| process_listens_on(*p)),
            None => [s.outbound_addr, s.inbound_addr]
                .iter()
                .all(|a| process_listens_on(a.port())),
        };
        if ok {
            self.listeners_bound.store(true, Ordering::Relaxed);
        }
        ok
    }

    /// `(ready, reason)` for `/healthz/ready`. The first time it is ready, one info line says
    /// after how long and what discovery's part was (synced, timeout, not waited for).
    pub fn readiness(&self) -> (bool, String) {
        // Evaluated first so its outcome (and a timeout's warn line) comes when it happens.
        let gate = self.ready_gate.as_ref().map(|g| (g, g.check()));
        if self.draining.load(Ordering::Relaxed) {
            return (false, "draining".into());
        }
        let snap = self.shared.snapshot.load();
        if snap.generation == 0 {
            return (false, "no rule set loaded yet".into());
        }
        if !self.listeners_bound() {
            return (false, "capture listeners not bound yet".into());
        }
        if let Some(why) = self.shared.identity.as_ref().and_then(|i| i.waiting_for()) {
            return (false, format!("not ready: {why}"));
        }
        let discovery = match &gate {
            Some((g, state @ GateState::Waiting { .. })) => {
                return (false, format!("not ready: {}", g.describe(state)));
            }
            Some((g, state)) => g.describe(state),
            None => "discovery not waited for".to_string(),
        };
        if !self.became_ready.swap(true, Ordering::Relaxed) {
            info!(
                "ready after {:.1}s: rule generation {}, capture listeners bound, {discovery}",
                self.started.elapsed().as_secs_f64(),
                snap.generation
            );
        }
        (true, format!("ready: generation {}", snap.generation))
    }

    /// The `/config_dump` document.
    pub fn config_dump(&self) -> ConfigDump {
        let snap = self.shared.snapshot.load();
        let s = &self.shared.settings;
        let bound = self.listeners_bound();
        let addr = |a: Option<std::net::SocketAddr>| a.map(|a| a.to_string());
        let mut dump = ConfigDump {
            version: env!("CARGO_PKG_VERSION").to_string(),
            generation: snap.generation,
            hash: snap.hash.clone(),
            source: snap.source.clone(),
            rules_dir: self.rules_dir.clone(),
            rules: RulesDump::of(&snap),
            num_trusted_proxies: s.num_trusted_proxies,
            listeners: vec![
                ListenerDump {
                    name: "outbound".into(),
                    address: Some(s.outbound_addr.to_string()),
                    bound,
                    fixed_target: addr(s.fixed_outbound_target),
                    source_address: None,
                },
                ListenerDump {
                    name: "inbound".into(),
                    address: Some(s.inbound_addr.to_string()),
                    bound,
                    fixed_target: addr(s.fixed_inbound_target),
                    source_address: s.inbound_bind.map(|a| a.to_string()),
                },
                ListenerDump {
                    name: "outbound-ipv6".into(),
                    address: addr(s.outbound_addr6),
                    bound: bound && s.outbound_addr6.is_some(),
                    fixed_target: None,
                    source_address: None,
                },
                ListenerDump {
                    name: "inbound-ipv6".into(),
                    address: addr(s.inbound_addr6),
                    bound: bound && s.inbound_addr6.is_some(),
                    fixed_target: None,
                    source_address: None,
                },
            ],
            workload: WorkloadDump {
                name: s.workload.name.clone(),
                namespace: s.workload.namespace.clone(),
            },
            sniff_timeout_ms: s.sniff_timeout.as_millis() as u64,
            app_probes: self.probers.probes.keys().cloned().collect(),
            uptime_seconds: self.started.elapsed().as_secs(),
            policies: {
                // What the proxy does with each destination's `tls`, which depends on whether it
                // has a workload identity.
                let mut p = self.shared.policies.dump();
                let identity = self.shared.identity.is_some();
                for d in &mut p.destinations {
                    let mode = d.policy.tls_settings.mode;
                    if let Some(t) = mesh_tls_summary(d.policy.tls_set, mode, identity) {
                        d.tls = t.to_string();
                    }
                }
                p
            },
            config_source: match &self.rules_sources {
                Some(r) => r.dump(),
                None => ConfigSourceDump {
                    source: crate::discovery::rules_api::source_kind(&snap.source).to_string(),
                    generation: snap.generation,
                    hash: snap.hash.clone(),
                    configmap: None,
                    api: ApiState {
                        status: "off".into(),
                        ..ApiState::default()
                    },
                },
            },
            discovery: self.discovery_dump(),
            identity: self
                .shared
                .identity
                .as_ref()
                .map(|i| i.dump(self.shared.peers.len())),
            gateway: self.gateway.as_ref().map(|g| g.dump()),
            telemetry_providers: crate::telemetry::providers_dump(
                s.tracer.as_ref().map(|t| &t.config),
                &s.tracers
                    .iter()
                    .map(|(n, t)| (n.clone(), &t.config))
                    .collect::<Vec<_>>(),
                s.access_log,
                &s.access_log_providers,
                &snap.telemetry,
            ),
        };
        if let Some(g) = &self.gateway {
            // A gateway has no capture listeners: its listening ports instead.
            let address = g.flags.gateway_address;
            dump.listeners = g
                .ports()
                .into_iter()
                .map(|port| ListenerDump {
                    name: format!("gateway {port}"),
                    address: Some(std::net::SocketAddr::new(address, port).to_string()),
                    bound: true,
                    fixed_target: None,
                    source_address: None,
                })
                .collect();
        }
        dump
    }

    /// `/config_dump`'s `discovery` section: the watches and index, and what readiness waits for.
    fn discovery_dump(&self) -> DiscoveryDump {
        let mut d = match &self.discovery {
            Some(d) => d.dump(),
            None => DiscoveryDump::off(),
        };
        d.readiness = self.ready_gate.as_ref().map(|g| g.dump());
        d
    }
}

/// `/config_dump`'s word for a destination's TLS where the mesh's mTLS decides: no `tls`
/// setting (automatic mTLS to endpoints with a sidecar), or `ISTIO_MUTUAL`; each depends on
/// whether the proxy has a workload identity. `None`: the setting's own summary stands.
pub fn mesh_tls_summary(
    tls_set: bool,
    mode: remora_model::policy::traffic::TlsKind,
    identity: bool,
) -> Option<&'static str> {
    use remora_model::policy::traffic::TlsKind;
    match (tls_set, mode, identity) {
        (false, _, true) => Some("not set: automatic mTLS to endpoints with a sidecar"),
        (false, _, false) => Some("not set: plain text (no workload identity)"),
        (true, TlsKind::IstioMutual, false) => {
            Some("ISTIO_MUTUAL (plain text: no workload identity)")
        }
        _ => None,
    }
}

/// Does this process hold a listening TCP socket on `port` (IPv4 or IPv6)?
pub fn process_listens_on(port: u16) -> bool {
    let mut inodes = HashSet::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            if cols.len() < 10 || cols[3] != "0A" {
                continue;
            }
            let Some((_, hex_port)) = cols[1].rsplit_once(':') else {
                continue;
            };
            if u16::from_str_radix(hex_port, 16) == Ok(port) {
                inodes.insert(cols[9].to_string());
            }
        }
    }
    if inodes.is_empty() {
        return false;
    }
    let Ok(fds) = std::fs::read_dir("/proc/self/fd") else {
        return false;
    };
    fds.flatten().any(|fd| {
        std::fs::read_link(fd.path())
            .ok()
            .and_then(|t| {
                t.to_str().and_then(|s| {
                    s.strip_prefix("socket:[")?
                        .strip_suffix(']')
                        .map(str::to_string)
                })
            })
            .is_some_and(|ino| inodes.contains(&ino))
    })
}

fn text(status: StatusCode, body: impl Into<Bytes>, ctype: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(ctype),
    );
    r
}

/// The proxy's metrics handle in Prometheus' text format.
fn metrics_text(metrics: &crate::telemetry::Metrics) -> Response<Full<Bytes>> {
    match metrics.text() {
        Ok(s) => text(StatusCode::OK, s, "text/plain; version=0.0.4"),
        Err(e) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("encoding metrics: {e}\n"),
            "text/plain",
        ),
    }
}

/// The proxy's metrics followed by the app's (when the app answers; see `app_metrics`).
async fn merged_metrics_text(state: &AdminState) -> Response<Full<Bytes>> {
    let app = match &state.app_metrics {
        Some(a) => a.fetch().await,
        None => None,
    };
    match state.shared.metrics.text() {
        Ok(s) => text(
            StatusCode::OK,
            crate::telemetry::app_metrics::merged(s, app),
            "text/plain; version=0.0.4",
        ),
        Err(e) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("encoding metrics: {e}\n"),
            "text/plain",
        ),
    }
}

/// Answer one admin request (pure apart from running app probes and `/quitquitquit`).
pub async fn handle(
    state: &AdminState,
    kind: AdminKind,
    method: &http::Method,
    peer: Option<SocketAddr>,
    path: &str,
) -> Response<Full<Bytes>> {
    let path = path.split('?').next().unwrap_or(path);
    match (kind, path) {
        (AdminKind::Admin, "/quitquitquit") => {
            // Istio's way for a Job's app to stop its sidecar: POST from inside the pod.
            if method != http::Method::POST {
                return text(StatusCode::METHOD_NOT_ALLOWED, "use POST\n", "text/plain");
            }
            if !from_pod_itself(state, peer) {
                return text(StatusCode::FORBIDDEN, "only from localhost\n", "text/plain");
            }
            tracing::info!("POST /quitquitquit: shutting down gracefully");
            let me = nix::unistd::Pid::this();
            if let Err(e) = nix::sys::signal::kill(me, nix::sys::signal::Signal::SIGTERM) {
                return text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("signal: {e}\n"),
                    "text/plain",
                );
            }
            text(StatusCode::OK, "OK\n", "text/plain")
        }
        (AdminKind::Admin, "/stats/prometheus") if state.app_metrics.is_some() => {
            merged_metrics_text(state).await
        }
        (AdminKind::Admin | AdminKind::Prometheus, "/stats/prometheus") => {
            metrics_text(&state.shared.metrics)
        }
        (AdminKind::Prometheus, "/metrics") => metrics_text(&state.shared.metrics),
        (AdminKind::Admin | AdminKind::Health, "/healthz/ready") => {
            let (ok, why) = state.readiness();
            let code = if ok {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            text(code, format!("{why}\n"), "text/plain")
        }
        (AdminKind::Admin, "/config_dump") => {
            if !from_pod_itself(state, peer) {
                return text(
                    StatusCode::FORBIDDEN,
                    "only from localhost: use a port-forward (remora proxy-config POD, or kubectl port-forward POD 15020)\n",
                    "text/plain",
                );
            }
            let body = serde_json::to_string_pretty(&state.config_dump()).unwrap_or_default();
            text(StatusCode::OK, body, "application/json")
        }
        (AdminKind::Admin, p) if p.starts_with("/app-health/") => {
            match state.probers.run(p).await {
                Some(r) if r.ok => text(StatusCode::OK, format!("{}\n", r.message), "text/plain"),
                Some(r) => {
                    debug!(probe = p, "app probe failed: {}", r.message);
                    text(
                        StatusCode::SERVICE_UNAVAILABLE,
                        format!("{}\n", r.message),
                        "text/plain",
                    )
                }
                None => text(
                    StatusCode::NOT_FOUND,
                    format!("no app probe registered for {p}\n"),
                    "text/plain",
                ),
            }
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n", "text/plain"),
    }
}

/// Whether the peer is the pod itself (or a port-forward into it): a loopback address (IPv4
/// mapped into IPv6 included) other than the source of the proxy's own inbound connections
/// (127.0.0.6), which carries remote clients' connections should a pod capture this port.
fn from_pod_itself(state: &AdminState, peer: Option<SocketAddr>) -> bool {
    let inbound = state.shared.settings.inbound_bind;
    peer.is_some_and(|p| {
        let ip = p.ip().to_canonical();
        ip.is_loopback() && Some(ip) != inbound
    })
}

/// Evaluate readiness every `every` until it is first ready (or draining starts), so the
/// "ready after" line and a discovery timeout's warn line come when they happen, not at the
/// next probe. When readiness stopped waiting at the timeout, also say (once) when discovery's
/// first sync does complete, checking every second.
pub async fn watch_readiness(state: Arc<AdminState>, every: std::time::Duration) {
    loop {
        if state.draining.load(Ordering::Relaxed) {
            return;
        }
        if state.readiness().0 {
            break;
        }
        tokio::time::sleep(every).await;
    }
    let Some(gate) = state.ready_gate.clone() else {
        return;
    };
    if !gate.timed_out() {
        return;
    }
    loop {
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        if gate.awaited().pending.is_empty() {
            info!(
                "discovery: first sync complete {:.1}s after start (readiness had stopped waiting after {})",
                state.started.elapsed().as_secs_f64(),
                crate::discovery::ready::human(gate.timeout())
            );
            return;
        }
    }
}

/// Serve `kind` on an already bound listener until the runtime stops.
pub async fn serve(listener: TcpListener, state: Arc<AdminState>, kind: AdminKind) {
    loop {
        let (sock, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                warn!(?kind, "admin accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let state = state.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req: Request<Incoming>| {
                let state = state.clone();
                async move {
                    let path = req.uri().path().to_string();
                    let r = handle(&state, kind, req.method(), Some(peer), &path).await;
                    Ok::<_, std::convert::Infallible>(r)
                }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(std::time::Duration::from_secs(10))
                .serve_connection(TokioIo::new(sock), svc);
            if let Err(e) = conn.await {
                debug!(?kind, "admin connection error: {e}");
            }
        });
    }
}

/// Bind an admin listener, with a clear error naming the flag.
pub async fn bind(addr: SocketAddr, what: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("{what} listener {addr}: {e}"))
}
