//! `/config_dump`: what one proxy has loaded and what its live state is, as typed structs. The
//! proxy serves them (`remora-proxy`'s admin port) and the CLI (`remora proxy-config`,
//! `remora describe`, `remora proxy-status`) reads them back into the same types, so the
//! contract between the two is checked by the compiler and by a round-trip test.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::policy::outlier::OutlierConfig;
use crate::policy::ratelimit::RateLimitRule;
use crate::policy::traffic::TrafficPolicy;
use crate::rules::{
    Counts, DestinationRule, Ignored, ServiceEntry, Sidecar, Snapshot, VirtualService,
};
use crate::security::{AuthorizationPolicy, PeerAuthentication, RequestAuthentication};

/// The whole document.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ConfigDump {
    /// The proxy's version (its crate version).
    pub version: String,
    pub generation: u64,
    pub hash: String,
    pub source: String,
    pub rules_dir: String,
    pub rules: RulesDump,
    pub listeners: Vec<ListenerDump>,
    pub workload: WorkloadDump,
    pub sniff_timeout_ms: u64,
    /// The app probe paths the proxy answers (`/app-health/<container>/<kind>`).
    pub app_probes: Vec<String>,
    pub uptime_seconds: u64,
    pub policies: PoliciesDump,
    pub config_source: ConfigSourceDump,
    pub discovery: DiscoveryDump,
    /// Istio's `numTrustedProxies` as the proxy runs with it: which `X-Forwarded-For` entry
    /// is `remote.ip` (`security::authorization::remote_ip_from_xff`, at a gateway
    /// `remote_ip_at_gateway`); written when not 0.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub num_trusted_proxies: u32,
    /// The workload certificate (`None`: the proxy has no workload identity).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<IdentityDump>,
    /// A gateway's Gateways, listening ports and servers (`None`: a sidecar).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<GatewayDump>,
    /// The telemetry providers the proxy has, which the Telemetry rules (`rules.telemetry`)
    /// choose among.
    #[serde(default)]
    pub telemetry_providers: TelemetryProvidersDump,
}

/// The proxy's tracing and access-log providers.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct TelemetryProvidersDump {
    /// The default tracing provider (`zipkin host:port` ...); `None`: no spans unless a rule
    /// names a provider.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tracing_default: Option<String>,
    /// `name: protocol host:port path` per named tracing provider.
    pub tracing: Vec<String>,
    /// The access log without a rule: `TEXT`, `JSON` or `off`.
    pub access_log_default: String,
    /// `name: TEXT|JSON` per access-log provider (`envoy` is the mesh's own format).
    pub access_log: Vec<String>,
    /// Provider names the rules give that the proxy does not have: that side writes no spans
    /// (tracing) or no lines (access log) for them.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub unknown: Vec<String>,
}

/// What `remora-proxy gateway` serves (`remora_model::gateway::dump` builds it from the plan).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct GatewayDump {
    /// `namespace/name` of the Gateways that select this gateway.
    pub gateways: Vec<String>,
    pub listeners: Vec<GatewayListenerDump>,
    /// Servers left out, one line each with the reason.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_served: Vec<String>,
    /// The VirtualServices bound (at the top or in a match) to one of `gateways`, as loaded:
    /// what the gateway routes by (`remora proxy-config routes`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub virtual_services: Vec<crate::rules::VirtualService>,
}

/// One listening port of a gateway.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GatewayListenerDump {
    /// The port the proxy listens on.
    pub port: u16,
    /// The Gateway (Service) port.
    pub gateway_port: u16,
    /// `http`, `https`, `passthrough`, `tcp` or `tls` (terminated).
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bind: Option<String>,
    pub servers: Vec<GatewayServerDump>,
}

/// One server of a Gateway on a listener.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GatewayServerDump {
    /// `Gateway ns/name spec.servers[i]`.
    pub server: String,
    pub protocol: String,
    /// As written (`ns/host`, `./host`, `host`).
    pub hosts: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_mode: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential_name: Option<String>,
    /// `served`, or `down` (its TLS settings could not be loaded: see the log).
    pub state: String,
    /// The certificate it shows (from `credentialName` or `serverCertificate`), as loaded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate: Option<ServedCertificateDump>,
}

/// The leaf certificate a gateway server shows: public facts only.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServedCertificateDump {
    /// The subject, as `CN=shop.example.com, O=...`.
    pub subject: String,
    #[serde(default)]
    pub dns_names: Vec<String>,
    /// Hex.
    pub serial: String,
    /// Unix seconds.
    pub not_after: u64,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// The workload identity and its certificate (`remora proxy-config secret`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct IdentityDump {
    /// `spiffe://<trust domain>/ns/<namespace>/sa/<service account>`.
    pub spiffe_id: String,
    pub ca_address: String,
    pub trust_domain: String,
    /// `valid`, `waiting` (none issued yet) or `expired`.
    pub state: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    /// Unix seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_before: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_after: Option<u64>,
    /// Negative once expired.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_in_seconds: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_renewal_in_seconds: Option<i64>,
    pub requests: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// The certificate chain, leaf first, PEM each (public material only).
    #[serde(default)]
    pub chain_pem: Vec<String>,
    /// The trusted roots, PEM.
    #[serde(default)]
    pub roots_pem: String,
    /// Inbound mTLS connections open now.
    pub inbound_mtls_connections: usize,
}

/// The rule set in effect (one snapshot).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RulesDump {
    pub generation: u64,
    pub hash: String,
    pub source: String,
    pub namespace: String,
    pub cluster_domain: String,
    /// The mesh's root namespace the proxy scoped its policies with (`--root-namespace`).
    #[serde(default = "default_root_namespace")]
    pub root_namespace: String,
    pub pod_labels: BTreeMap<String, String>,
    pub files: Vec<String>,
    /// `name: why` per entry of the rules directory that was not read.
    pub skipped_files: Vec<String>,
    pub counts: Counts,
    pub virtual_services: Vec<VirtualService>,
    pub destination_rules: Vec<DestinationRule>,
    pub service_entries: Vec<ServiceEntry>,
    pub sidecar: Option<Sidecar>,
    /// The `security.istio.io` policies that apply to this pod (the proxy enforces all three);
    /// written only when present.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub peer_authentications: Vec<PeerAuthentication>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub authorization_policies: Vec<AuthorizationPolicy>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub request_authentications: Vec<RequestAuthentication>,
    /// The `telemetry.istio.io` Telemetry rules that apply to this pod, and what they say for
    /// it (what the proxy applies); written only when present.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub telemetries: Vec<crate::telemetry::Telemetry>,
    #[serde(default, skip_serializing_if = "crate::telemetry::Effective::is_empty")]
    pub telemetry: crate::telemetry::Effective,
    pub ignored: Vec<Ignored>,
    /// One line per field Istio's API does not define (accepted and ignored).
    pub unknown_fields: Vec<String>,
    /// `resolution: DNS` names resolved while loading, and their answers.
    pub dns: BTreeMap<String, Vec<IpAddr>>,
}

fn default_root_namespace() -> String {
    crate::kinds::DEFAULT_ROOT_NAMESPACE.to_string()
}

impl RulesDump {
    pub fn of(snap: &Snapshot) -> RulesDump {
        RulesDump {
            generation: snap.generation,
            hash: snap.hash.clone(),
            source: snap.source.clone(),
            namespace: snap.ctx.namespace.clone(),
            cluster_domain: snap.ctx.cluster_domain.clone(),
            root_namespace: snap.ctx.root_namespace.clone(),
            pod_labels: snap.ctx.pod_labels.clone(),
            files: snap.files.clone(),
            skipped_files: snap
                .skipped_files
                .iter()
                .map(|(n, why)| format!("{n}: {why}"))
                .collect(),
            counts: snap.counts(),
            virtual_services: snap.virtual_services.clone(),
            destination_rules: snap.destination_rules.clone(),
            service_entries: snap.service_entries.clone(),
            sidecar: snap.sidecar.clone(),
            peer_authentications: snap.peer_authentications.clone(),
            authorization_policies: snap.authorization_policies.clone(),
            request_authentications: snap.request_authentications.clone(),
            telemetries: snap.telemetries.clone(),
            telemetry: snap.telemetry.clone(),
            ignored: snap.ignored.clone(),
            unknown_fields: snap.unknown_fields.iter().map(|e| e.to_string()).collect(),
            dns: snap.dns.clone(),
        }
    }
}

/// The rule set in effect as JSON (`RulesDump::of`), for tools and tests that read it untyped.
pub fn summary(snap: &Snapshot) -> serde_json::Value {
    serde_json::to_value(RulesDump::of(snap)).unwrap_or_default()
}

/// One capture listener.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListenerDump {
    /// `outbound`, `inbound`, `outbound-ipv6`, `inbound-ipv6`.
    pub name: String,
    /// `None` for an IPv6 listener that is not configured.
    pub address: Option<String>,
    pub bound: bool,
    /// A fixed target instead of the original destination (tests and benchmarks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fixed_target: Option<String>,
    /// The source address of inbound connections to the app.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_address: Option<String>,
}

/// The workload this proxy reports as.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkloadDump {
    pub name: String,
    pub namespace: String,
}

/// Live policy state: per destination used so far, and the rate limiters.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PoliciesDump {
    pub destinations: Vec<DestinationDump>,
    pub rate_limits: Vec<RateLimitRule>,
}

/// One destination (host, subset, port) with its effective policy and live counters.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DestinationDump {
    pub host: String,
    pub subset: Option<String>,
    pub port: u16,
    pub policy: TrafficPolicy,
    /// Why the DestinationRule's policy was not applied (defaults were used), if so.
    pub policy_error: Option<String>,
    pub connection_pool: PoolStats,
    /// One line: `DISABLE`, `SIMPLE sni=...`, `MUTUAL cert=... key=...`, ...
    pub tls: String,
    pub tls_error: Option<String>,
    pub outlier_detection: Option<OutlierDump>,
}

/// Connection-pool counters of one destination.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolStats {
    pub active_requests: u64,
    pub pending_requests: u64,
    pub connections_in_use: u64,
    pub active_retries: u64,
    pub overflows_total: u64,
}

/// Outlier detection of one destination: its settings and each endpoint's state.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OutlierDump {
    pub config: OutlierConfig,
    pub endpoints: Vec<HostState>,
}

/// One endpoint's outlier-detection state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostState {
    pub address: String,
    pub ejected: bool,
    /// Milliseconds left in the ejection.
    pub ejected_for_ms: u64,
    pub consecutive_5xx: u32,
    pub consecutive_gateway_errors: u32,
    pub ejection_multiplier: u32,
    pub ejections_total: u64,
}

/// Where the rules come from: the mounted files, or the rules ConfigMap through the API.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigSourceDump {
    /// `files`, `api` or `none`.
    pub source: String,
    pub generation: u64,
    pub hash: String,
    /// The ConfigMap watched through the API, when that source is on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub configmap: Option<String>,
    pub api: ApiState,
}

/// The API side of the rules source.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiState {
    /// `off`, `starting`, `watching`, `not found`, `forbidden`, `unreachable`, `deleted`.
    pub status: String,
    /// The API's content is authoritative over the mounted files.
    #[serde(default)]
    pub live: bool,
    /// Content hash and resourceVersion of the ConfigMap as the API last showed it.
    #[serde(default)]
    pub hash: Option<String>,
    #[serde(default)]
    pub resource_version: Option<String>,
    /// Changes received through the API (applied, unchanged or rejected).
    #[serde(default)]
    pub updates: u64,
    /// The last error, if any.
    #[serde(default)]
    pub error: Option<String>,
}

/// Kubernetes endpoint discovery: `status` is `off` when the proxy runs without the API.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DiscoveryDump {
    pub status: DiscoveryStatus,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index: Option<IndexDump>,
    /// What readiness waits for (when the proxy waits for discovery).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub readiness: Option<ReadinessDump>,
}

impl DiscoveryDump {
    /// Discovery is not running.
    pub fn off() -> DiscoveryDump {
        DiscoveryDump {
            status: DiscoveryStatus::Off(Off::Off),
            hosts: Vec::new(),
            index: None,
            readiness: None,
        }
    }

    /// The live status, when discovery runs.
    pub fn running(&self) -> Option<&WatchStatus> {
        match &self.status {
            DiscoveryStatus::Running(s) => Some(s),
            DiscoveryStatus::Off(_) => None,
        }
    }
}

/// `"off"`, or the watches' status.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum DiscoveryStatus {
    Off(Off),
    Running(WatchStatus),
}

/// The one word `off`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Off {
    Off,
}

/// The discovery watches and the index sizes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchStatus {
    pub scope: String,
    pub namespaces: Vec<String>,
    pub services: usize,
    pub endpoints: usize,
    pub pods: usize,
    pub slices: usize,
    pub label_sets: usize,
    /// `resource in part` → `listing`, `watching`, `forbidden`, `error: ...`.
    pub watches: BTreeMap<String, String>,
    pub index_builds: u64,
    /// Discovery from the control plane (`--discovery-address`); absent in direct API mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub control_plane: Option<Box<ControlPlaneSync>>,
}

/// Where the subscription to the control plane's discovery service stands.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ControlPlaneSync {
    /// `HOST:PORT` subscribed to.
    pub address: String,
    /// `connecting`, `synced` (the last response applied and acknowledged) or `stale`
    /// (disconnected: serving the last state received).
    pub state: String,
    /// The version of the last response applied and acknowledged (0: none yet).
    pub version_acked: u64,
    /// Full snapshots and deltas applied since start.
    pub snapshots: u64,
    pub deltas: u64,
    /// Subscriptions made since start (1 + reconnects).
    pub connects: u64,
    /// The last error (a refusal, a lost connection), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// The discovered endpoint index, bounded per host and in all.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexDump {
    pub limits: IndexLimits,
    /// What the index holds (a sentence).
    pub indexed: String,
    pub endpoints_listed: usize,
    pub endpoints_omitted: usize,
    pub hosts_truncated: usize,
    pub hosts: Vec<HostDump>,
}

/// The caps of `IndexDump`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexLimits {
    pub endpoints_per_host: usize,
    pub endpoints_total: usize,
}

/// One discovered host.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostDump {
    pub host: String,
    pub ports: Vec<PortDump>,
    pub endpoints_omitted: usize,
}

/// One service port of a discovered host.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortDump {
    pub port: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub target_ports: Vec<u16>,
    pub endpoint_count: usize,
    pub endpoints: Vec<EndpointDump>,
}

/// One discovered endpoint.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointDump {
    pub address: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<BTreeMap<String, String>>,
}

/// Readiness's wait for discovery.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReadinessDump {
    /// `waiting`, or how the wait ended (`synced`, `timeout`, ...).
    pub state: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after_seconds: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub elapsed_seconds: Option<f64>,
    pub timeout_seconds: f64,
    pub waiting_for: Vec<String>,
    pub detail: String,
}
