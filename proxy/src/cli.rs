//! Command line of `remora-proxy` (every flag also from the environment, see
//! docs/architecture.md) and the small start-up parsers it needs.

use clap::{Args, Parser, Subcommand};
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Parser)]
#[command(
    name = "remora-proxy",
    version,
    about = "remora sidecar proxy (Pingora)"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the sidecar: capture listeners, admin/health/metrics servers, rules watcher.
    Run(Box<RunArgs>),
    /// Check a rule set offline; exit 1 when it has errors.
    Validate(ValidateArgs),
    /// Run as an ingress gateway: no capture; listen on the ports of the Gateways that select
    /// this pod's labels and route by the VirtualServices bound to them (docs/gateways.md).
    Gateway(Box<GatewayArgs>),
}

/// `remora-proxy gateway`: `run`'s flags and the gateway's own.
#[derive(Debug, Args, Clone)]
pub struct GatewayArgs {
    #[command(flatten)]
    pub run: RunArgs,
    #[command(flatten)]
    pub gateway: crate::gateway::GatewayFlags,
}

#[derive(Debug, Args)]
pub struct ValidateArgs {
    /// The rules directory (as the ConfigMap is mounted).
    pub dir: PathBuf,
    /// Namespace for short host names.
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    pub namespace: String,
    #[arg(long, env = "REMORA_CLUSTER_DOMAIN", default_value = "cluster.local")]
    pub cluster_domain: String,
    /// The mesh's root namespace: its Sidecar and security policies without selector are
    /// mesh-wide, its DestinationRules the last fallback (the injector sets it from its config,
    /// the same value as the rules controller's).
    #[arg(long, env = "REMORA_ROOT_NAMESPACE",
          default_value = remora_model::kinds::DEFAULT_ROOT_NAMESPACE,
          value_parser = remora_model::kinds::parse_root_namespace)]
    pub root_namespace: String,
}

#[derive(Debug, Args, Clone)]
pub struct RunArgs {
    /// Outbound capture listener (iptables REDIRECTs the app's outgoing TCP here).
    #[arg(long, env = "REMORA_OUTBOUND_ADDR", default_value = "127.0.0.1:15001")]
    pub outbound_addr: SocketAddr,
    /// Inbound capture listener.
    #[arg(long, env = "REMORA_INBOUND_ADDR", default_value = "0.0.0.0:15006")]
    pub inbound_addr: SocketAddr,
    /// IPv6 capture listeners on `[::1]:<outbound port>` and `[::]:<inbound port>` (v6-only):
    /// auto = when the host has IPv6, on = required, off = never.
    #[arg(long, env = "REMORA_IPV6", default_value = "auto", value_parser = ["auto", "on", "off"])]
    pub ipv6: String,
    /// Admin/status server (`/stats/prometheus`, `/config_dump`, `/app-health/...`).
    #[arg(long, env = "REMORA_ADMIN_ADDR", default_value = "0.0.0.0:15020")]
    pub admin_addr: SocketAddr,
    /// Health server (`/healthz/ready`).
    #[arg(long, env = "REMORA_HEALTH_ADDR", default_value = "0.0.0.0:15021")]
    pub health_addr: SocketAddr,
    /// Prometheus server (`/stats/prometheus`).
    #[arg(long, env = "REMORA_PROMETHEUS_ADDR", default_value = "0.0.0.0:15090")]
    pub prometheus_addr: SocketAddr,
    /// The rules directory (ConfigMap `remora-mesh-rules`).
    #[arg(long, env = "REMORA_RULES_DIR", default_value = "/etc/remora/rules")]
    pub rules_dir: PathBuf,
    /// Periodic re-scan of the rules directory, seconds (in addition to file watching).
    #[arg(long, env = "REMORA_RULES_RESCAN_SECONDS", default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub rules_rescan_seconds: u64,
    /// Downward-API file with the pod's labels (`key="value"` per line).
    #[arg(
        long,
        env = "REMORA_POD_LABELS_FILE",
        default_value = "/etc/remora/pod/labels"
    )]
    pub pod_labels_file: PathBuf,
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    pub namespace: String,
    #[arg(long, env = "POD_NAME")]
    pub pod_name: Option<String>,
    /// The pod IP; app probes connect here (loopback when unset).
    #[arg(long, env = "INSTANCE_IP")]
    pub instance_ip: Option<IpAddr>,
    #[arg(long, env = "REMORA_CLUSTER_DOMAIN", default_value = "cluster.local")]
    pub cluster_domain: String,
    /// The mesh's root namespace: its Sidecar and security policies without selector are
    /// mesh-wide, its DestinationRules the last fallback (the injector sets it from its config,
    /// the same value as the rules controller's).
    #[arg(long, env = "REMORA_ROOT_NAMESPACE",
          default_value = remora_model::kinds::DEFAULT_ROOT_NAMESPACE,
          value_parser = remora_model::kinds::parse_root_namespace)]
    pub root_namespace: String,
    /// Workload name for metrics (default: `ISTIO_META_WORKLOAD_NAME`, which the injector sets
    /// from the pod's controller; else the pod's canonical-name or `app` label, else the pod
    /// name).
    #[arg(long, env = "REMORA_WORKLOAD_NAME")]
    pub workload_name: Option<String>,
    /// The cluster id in metrics (`source_cluster`, `destination_cluster`), Istio's
    /// `ISTIO_META_CLUSTER_ID`.
    #[arg(long, env = "ISTIO_META_CLUSTER_ID", default_value = "Kubernetes")]
    pub cluster_id: String,
    /// Proxy worker threads.
    #[arg(long, env = "REMORA_THREADS", default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..=64))]
    pub threads: u64,
    /// One work-stealing runtime per listener (`true`) or, per listener, one single-threaded
    /// runtime per worker thread with each connection kept on the thread that accepted it
    /// (`false`). The default is the cheaper one by measurement (docs/benchmarks.md).
    #[arg(long, env = "REMORA_WORK_STEALING", default_value_t = false, action = clap::ArgAction::Set)]
    pub work_stealing: bool,
    /// How idle upstream connections in the keep-alive pool are watched: `false` (default)
    /// checks a connection when it is taken and closes timed-out or server-closed ones in one
    /// sweep every 5 s; `true` is Pingora's own pool, a task per idle connection, woken on every
    /// reuse (kept for measuring the two, docs/benchmarks.md).
    #[arg(long, env = "REMORA_POOL_IDLE_WATCH", default_value_t = false, action = clap::ArgAction::Set)]
    pub pool_idle_watch: bool,
    /// Graceful drain on SIGTERM, seconds.
    #[arg(long, env = "REMORA_DRAIN_SECONDS", default_value_t = 5, value_parser = clap::value_parser!(u64).range(0..=3600))]
    pub drain_seconds: u64,
    /// trace, debug, info, warning, error, critical, off.
    #[arg(long, env = "REMORA_LOG_LEVEL", default_value = "info")]
    pub log_level: String,
    /// How long to wait for a client's first bytes before treating the connection as a
    /// server-first protocol (opaque TCP), milliseconds.
    #[arg(long, env = "REMORA_SNIFF_TIMEOUT_MS", default_value_t = 200, value_parser = clap::value_parser!(u64).range(1..=10000))]
    pub sniff_timeout_ms: u64,
    /// Upstream connect timeout, milliseconds.
    #[arg(long, env = "REMORA_CONNECT_TIMEOUT_MS", default_value_t = 10000, value_parser = clap::value_parser!(u64).range(1..=600000))]
    pub connect_timeout_ms: u64,
    /// Source address of inbound connections to the app (the init program exempts it).
    #[arg(long, env = "REMORA_INBOUND_SOURCE", default_value = "127.0.0.6")]
    pub inbound_source: IpAddr,
    /// TESTING ONLY: when binding --inbound-source fails, use 127.0.0.1.
    #[arg(long, env = "REMORA_INBOUND_SOURCE_FALLBACK")]
    pub inbound_source_fallback: bool,
    /// TESTING/DEBUGGING ONLY: treat every outbound connection as if its original destination
    /// were ADDR (to run without iptables). Never set this in a pod.
    #[arg(long, env = "REMORA_FIXED_OUTBOUND_TARGET", value_name = "ADDR")]
    pub fixed_outbound_target: Option<SocketAddr>,
    /// TESTING/DEBUGGING ONLY: the same for the inbound listener.
    #[arg(long, env = "REMORA_FIXED_INBOUND_TARGET", value_name = "ADDR")]
    pub fixed_inbound_target: Option<SocketAddr>,
    /// Kubernetes API for endpoint discovery and the rules ConfigMap: `auto` (in-cluster when
    /// KUBERNETES_SERVICE_HOST is set and a service-account token is mounted, else off), `off`,
    /// or the API server's URL (`http(s)://host:port`).
    #[arg(long, env = "REMORA_KUBE_API", default_value = "auto")]
    pub kube_api: String,
    /// The rules ConfigMap in POD_NAMESPACE, watched through the API when allowed (changes
    /// apply within a second instead of the kubelet's sync); `off` = files only.
    #[arg(long, env = "REMORA_RULES_CONFIGMAP", default_value = "remora-mesh-rules", value_parser = parse_configmap_name)]
    pub rules_configmap: String,
    /// Endpoint discovery (Services, EndpointSlices, Pods) through the API: on or off.
    #[arg(long, env = "REMORA_DISCOVERY", default_value = "on", value_parser = ["on", "off"])]
    pub discovery: String,
    /// The control plane's discovery service (`HOST:PORT`, served on the CA's TLS port by
    /// `remora-webhook serve --discovery on`): endpoints come from one subscription there
    /// instead of watches of the Kubernetes API (which then needs no rights for discovery);
    /// `off` = the direct API mode. Uses the CA's root and token files (`--ca-root-file`,
    /// `--ca-token-file`) and the pod's identity.
    #[arg(long, env = "REMORA_DISCOVERY_ADDRESS", default_value = "off")]
    pub discovery_address: String,
    /// The name the discovery server's certificate must carry (default: `--ca-server-name`
    /// when the address is the CA's, else the host of the address).
    #[arg(long, env = "REMORA_DISCOVERY_SERVER_NAME")]
    pub discovery_server_name: Option<String>,
    /// How long readiness waits for discovery's first list of every watched kind and namespace
    /// (and the rules ConfigMap's first answer through the API) before turning ready anyway:
    /// `10s`, `1500ms`, `2m`, a number of seconds, or `0` = don't wait (at most 1h).
    #[arg(long, env = "REMORA_DISCOVERY_READY_TIMEOUT", default_value = "10s", value_parser = parse_ready_timeout)]
    pub discovery_ready_timeout: Duration,
    /// Access log destination: stdout or off.
    #[arg(long, env = "REMORA_ACCESS_LOG", default_value = "stdout", value_parser = ["stdout", "off"])]
    pub access_log: String,
    /// Access-log encoding: `TEXT` (Istio's default line) or `JSON` (Istio's field names and
    /// remora's own); Istio's `accessLogEncoding`.
    #[arg(long, env = "REMORA_ACCESS_LOG_ENCODING", default_value = "TEXT", value_parser = ["TEXT", "JSON"])]
    pub access_log_encoding: String,
    /// The access-log providers a Telemetry rule may name besides `envoy` (the log above): a
    /// JSON list `[{"name": "...", "encoding": "TEXT"|"JSON"}]`, lines on stdout; the injector
    /// sets it from the mesh's `envoyFileAccessLog` providers.
    #[arg(long, env = "REMORA_ACCESS_LOG_PROVIDERS", value_parser = crate::telemetry::accesslog::parse_providers)]
    pub access_log_providers: Option<crate::telemetry::accesslog::NamedLogs>,
    /// How often the keys of a RequestAuthentication's `jwksUri` are fetched again (Istio: 20m);
    /// `1s` to `24h`.
    #[arg(long, env = "REMORA_JWKS_REFRESH_INTERVAL", default_value = "20m", value_parser = parse_jwks_refresh)]
    pub jwks_refresh_interval: Duration,
    /// Istio's `numTrustedProxies` (`gatewayTopology`): AuthorizationPolicy's `remote.ip` and
    /// `remoteIpBlocks` are the entry of `X-Forwarded-For` this many places left of the last
    /// one (0: the last entry); without such an entry, the peer's address. At the gateway
    /// (Envoy's `use_remote_address`): the client's own address with 0, else the entry this
    /// many places from the right (1: the last). At most 64.
    #[arg(long, env = "REMORA_NUM_TRUSTED_PROXIES", default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=64))]
    pub num_trusted_proxies: u32,
    /// Extra trusted roots (PEM) for HTTPS `jwksUri` servers, besides the system's.
    #[arg(long, env = "REMORA_JWKS_CA_FILE")]
    pub jwks_ca_file: Option<PathBuf>,
    /// Abuse limits and the privilege check (see `guard::LimitArgs`, docs/proxy.md "Limits").
    #[command(flatten)]
    pub limits: crate::guard::LimitArgs,
    /// The workload identity: where the certificate comes from (docs/security.md).
    #[command(flatten)]
    pub identity: IdentityArgs,
    /// Tracing: the collector and the sampling percentage (docs/observability.md).
    #[command(flatten)]
    pub tracing: TracingArgs,
}

/// `--tracing-provider` and the other tracing settings; the injector sets them from the mesh
/// configuration (`enableTracing`, `defaultConfig.tracing.sampling`, `extensionProviders`).
#[derive(clap::Args, Clone, Debug)]
pub struct TracingArgs {
    /// The collector's protocol: `zipkin` (Zipkin v2 JSON over HTTP), `opentelemetry` (OTLP
    /// over HTTP, protobuf), `opentelemetry-grpc` (OTLP over gRPC), or `off`: no spans, trace
    /// headers forwarded unchanged.
    #[arg(long, env = "REMORA_TRACING_PROVIDER", default_value = "off", value_parser = ["off", "zipkin", "opentelemetry", "opentelemetry-grpc"])]
    pub tracing_provider: String,
    /// The collector's `host:port` (e.g. `zipkin.istio-system.svc.cluster.local:9411`).
    #[arg(long, env = "REMORA_TRACING_ADDRESS", value_parser = crate::telemetry::tracer::parse_address)]
    pub tracing_address: Option<String>,
    /// The collector's path (default: `/api/v2/spans` for zipkin, `/v1/traces` for
    /// opentelemetry; opentelemetry-grpc has none to choose).
    #[arg(long, env = "REMORA_TRACING_PATH")]
    pub tracing_path: Option<String>,
    /// Percentage of requests sampled when the request brings no decision of its own (0 to
    /// 100; Istio's `defaultConfig.tracing.sampling`, default 1).
    #[arg(long, env = "REMORA_TRACING_SAMPLING", default_value = "1", value_parser = crate::telemetry::tracer::parse_sampling)]
    pub tracing_sampling: f64,
    /// The tracing providers a Telemetry rule may name: a JSON list `[{"name": "...",
    /// "provider": "zipkin"|"opentelemetry"|"opentelemetry-grpc", "address": "host:port", "path": "/..."}]`; the
    /// injector sets it from the mesh's `extensionProviders`.
    #[arg(long, env = "REMORA_TRACING_PROVIDERS", value_parser = crate::telemetry::tracer::parse_providers)]
    pub tracing_providers: Option<crate::telemetry::tracer::NamedProviders>,
    /// Spans that may wait for the exporter before new ones are dropped (1 to 65536).
    #[arg(long, env = "REMORA_TRACING_QUEUE_SPANS", default_value_t = 4096, value_parser = clap::value_parser!(u64).range(1..=65536))]
    pub tracing_queue_spans: u64,
    /// The mesh id in spans (`istio.mesh_id`; Istio's default is the trust domain).
    #[arg(long, env = "ISTIO_META_MESH_ID")]
    pub mesh_id: Option<String>,
}

impl TracingArgs {
    /// The exporter's settings, or `None` for `off`; an error names the flag.
    pub fn config(&self) -> Result<Option<crate::telemetry::tracer::ExportConfig>, String> {
        use crate::telemetry::tracer::{ExportConfig, Protocol};
        if self.tracing_provider == "off" {
            return Ok(None);
        }
        let protocol = Protocol::parse(&self.tracing_provider)
            .map_err(|e| format!("--tracing-provider: {e}"))?;
        let Some(address) = self.tracing_address.clone() else {
            return Err(format!(
                "--tracing-address (REMORA_TRACING_ADDRESS): missing; --tracing-provider {} needs the collector's host:port",
                self.tracing_provider
            ));
        };
        let path = match &self.tracing_path {
            None => protocol.default_path().to_string(),
            Some(p) => match crate::telemetry::tracer::check_path(protocol, p) {
                Ok(()) => p.clone(),
                Err(e) => return Err(format!("--tracing-path (REMORA_TRACING_PATH) {p:?}: {e}")),
            },
        };
        Ok(Some(ExportConfig {
            protocol,
            address,
            path,
            queue_spans: self.tracing_queue_spans as usize,
        }))
    }
}

/// `--ca-address` and the other settings of the workload certificate.
#[derive(clap::Args, Clone, Debug)]
pub struct IdentityArgs {
    /// The mesh CA that issues the workload certificate (`host:port`, Istio's certificate
    /// service over TLS), or `off`: no workload identity, no mTLS between sidecars.
    #[arg(long, env = "REMORA_CA_ADDRESS", default_value = "off")]
    pub ca_address: String,
    /// The name the CA's serving certificate must carry (default: the host of --ca-address).
    #[arg(long, env = "REMORA_CA_SERVER_NAME")]
    pub ca_server_name: Option<String>,
    /// The mesh root certificate(s), PEM (the CA is verified with it, and so are peers).
    #[arg(
        long,
        env = "REMORA_CA_ROOT_FILE",
        default_value = "/var/run/secrets/remora/ca/root-cert.pem"
    )]
    pub ca_root_file: std::path::PathBuf,
    /// The projected service-account token the CA authenticates the pod by.
    #[arg(
        long,
        env = "REMORA_CA_TOKEN_FILE",
        default_value = "/var/run/secrets/tokens/remora-ca-token"
    )]
    pub ca_token_file: std::path::PathBuf,
    /// The trust domain of SPIFFE ids (`spiffe://<trust domain>/ns/<ns>/sa/<sa>`).
    #[arg(long, env = "REMORA_TRUST_DOMAIN", default_value = "cluster.local")]
    pub trust_domain: String,
    /// The pod's service account (the injector sets it from the pod spec).
    #[arg(long, env = "SERVICE_ACCOUNT", default_value = "default")]
    pub service_account: String,
    /// Lifetime asked of the CA for each certificate (`24h`, `2m`, `90s`; 1m to 90d).
    #[arg(long, env = "REMORA_CERT_TTL", default_value = "24h", value_parser = parse_cert_ttl)]
    pub cert_ttl: Duration,
    /// Renew once this fraction of the certificate's lifetime has passed (0.1 to 0.9; jitter
    /// of 5 % of the lifetime either way).
    #[arg(long, env = "REMORA_CERT_ROTATE_AT", default_value_t = 0.5, value_parser = parse_rotate_at)]
    pub cert_rotate_at: f64,
}

/// `--cert-ttl`: a duration from one minute to 90 days.
pub fn parse_cert_ttl(v: &str) -> Result<Duration, String> {
    let d = remora_model::duration::parse_duration_days(v)
        .map_err(|e| format!("{v:?} is not a duration: {e}"))?;
    if d < Duration::from_secs(60) || d > Duration::from_secs(90 * 86_400) {
        return Err(format!("{v:?} is outside 1m to 90d"));
    }
    Ok(d)
}

/// `--jwks-refresh-interval`: an Istio duration from one second to a day.
pub fn parse_jwks_refresh(v: &str) -> Result<Duration, String> {
    let d = remora_model::duration::parse_duration(v)
        .map_err(|e| format!("{v:?} is not a duration: {e}"))?;
    if d < Duration::from_secs(1) || d > Duration::from_secs(86_400) {
        return Err(format!("{v:?} is outside 1s to 24h"));
    }
    Ok(d)
}

/// `--cert-rotate-at`: a fraction from 0.1 to 0.9.
pub fn parse_rotate_at(v: &str) -> Result<f64, String> {
    let f: f64 = v
        .trim()
        .parse()
        .map_err(|_| format!("{v:?} is not a number"))?;
    if !(0.1..=0.9).contains(&f) {
        return Err(format!("{v:?} is outside 0.1 to 0.9"));
    }
    Ok(f)
}

impl RunArgs {
    /// The subscription settings of `--discovery-address`, or `None` for `off`; an error
    /// names the flag, the value and the reason.
    pub fn remote_discovery(
        &self,
    ) -> Result<Option<crate::discovery::remote::RemoteConfig>, String> {
        let addr = self.discovery_address.trim();
        if addr.is_empty() || addr == "off" {
            return Ok(None);
        }
        let host = match addr.rsplit_once(':') {
            Some((h, p)) if !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0) => {
                h.trim_start_matches('[').trim_end_matches(']')
            }
            _ => {
                return Err(format!(
                    "--discovery-address {addr:?}: not host:port or off"
                ))
            }
        };
        let id = &self.identity;
        let server_name = match (&self.discovery_server_name, &id.ca_server_name) {
            (Some(n), _) => n.clone(),
            (None, Some(n)) if addr == id.ca_address.trim() => n.clone(),
            _ => host.to_string(),
        };
        if rustls::pki_types::ServerName::try_from(server_name.clone()).is_err() {
            return Err(format!(
                "--discovery-server-name {server_name:?}: not a DNS name or IP address"
            ));
        }
        Ok(Some(crate::discovery::remote::RemoteConfig {
            address: addr.to_string(),
            server_name,
            root_file: id.ca_root_file.clone(),
            token_file: id.ca_token_file.clone(),
            namespace: self.namespace.clone(),
            service_account: id.service_account.clone(),
            pod_name: self.pod_name.clone().unwrap_or_default(),
            timeout: Duration::from_secs(10),
            certificate: None,
        }))
    }
}

impl IdentityArgs {
    /// The identity settings, or `None` for `--ca-address off`; an error names the flag.
    pub fn config(
        &self,
        namespace: &str,
    ) -> Result<Option<crate::identity::IdentityConfig>, String> {
        let addr = self.ca_address.trim();
        if addr.is_empty() || addr == "off" {
            return Ok(None);
        }
        let Some((host, port)) = addr.rsplit_once(':') else {
            return Err(format!("--ca-address {addr:?}: not host:port or off"));
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() || port.parse::<u16>().map_or(true, |p| p == 0) {
            return Err(format!("--ca-address {addr:?}: not host:port or off"));
        }
        let server_name = self
            .ca_server_name
            .clone()
            .unwrap_or_else(|| host.to_string());
        if rustls::pki_types::ServerName::try_from(server_name.clone()).is_err() {
            return Err(format!(
                "--ca-server-name {server_name:?}: not a DNS name or IP address"
            ));
        }
        let name_of = |v: &str, extra: u8| {
            !v.is_empty()
                && v.len() <= 253
                && v.bytes().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || b"-.".contains(&b) || b == extra
                })
        };
        // SPIFFE trust domains also allow '_'; service-account names are DNS subdomains.
        if !name_of(&self.trust_domain, b'_') {
            return Err(format!(
                "--trust-domain {:?}: not a SPIFFE trust domain (lower-case letters, digits, '-', '.', '_')",
                self.trust_domain
            ));
        }
        if !name_of(&self.service_account, b'-') {
            return Err(format!(
                "SERVICE_ACCOUNT {:?}: not a Kubernetes service-account name",
                self.service_account
            ));
        }
        Ok(Some(crate::identity::IdentityConfig {
            ca: crate::identity::ca_client::Endpoint {
                address: addr.to_string(),
                server_name,
                timeout: Duration::from_secs(10),
            },
            root_file: self.ca_root_file.clone(),
            token_file: self.ca_token_file.clone(),
            trust_domain: self.trust_domain.clone(),
            namespace: namespace.to_string(),
            service_account: self.service_account.clone(),
            cert_ttl: self.cert_ttl,
            rotate_at: self.cert_rotate_at,
        }))
    }
}

/// `--rules-configmap`: `off` or a ConfigMap name (DNS-1123 subdomain).
pub fn parse_configmap_name(v: &str) -> Result<String, String> {
    if v == "off" {
        return Ok(v.to_string());
    }
    let ok = !v.is_empty()
        && v.len() <= 253
        && v.split('.').all(|l| {
            !l.is_empty()
                && l.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        });
    if ok {
        Ok(v.to_string())
    } else {
        Err(format!(
            "{v:?} is not a ConfigMap name (lower-case letters, digits, '-' and '.', at most 253) or off"
        ))
    }
}

/// `--discovery-ready-timeout`: `<n>` seconds or `<n>ms|s|m` (a whole number), at most 1h.
pub fn parse_ready_timeout(v: &str) -> Result<Duration, String> {
    let t = v.trim();
    let digits = t.bytes().take_while(u8::is_ascii_digit).count();
    let (num, unit) = t.split_at(digits);
    let bad = || format!("{v:?} is not a duration (e.g. 10s, 1500ms, 2m, or 0 to not wait)");
    let n: u64 = num.parse().map_err(|_| bad())?;
    let d = match unit {
        "" | "s" => Duration::from_secs(n),
        "ms" => Duration::from_millis(n),
        "m" => Duration::from_secs(n.saturating_mul(60)),
        _ => return Err(bad()),
    };
    if d > Duration::from_secs(3600) {
        return Err(format!("{v:?} is longer than 1h"));
    }
    Ok(d)
}

/// Map Istio's log levels (`sidecar.istio.io/logLevel`) to a tracing filter.
pub fn log_filter(level: &str) -> Result<String, String> {
    let l = match level.trim().to_ascii_lowercase().as_str() {
        "trace" => "trace",
        "debug" => "debug",
        "info" => "info",
        "warning" | "warn" => "warn",
        "error" | "critical" => "error",
        "off" => "off",
        other => {
            return Err(format!(
                "--log-level/REMORA_LOG_LEVEL: {other:?} is not one of trace, debug, info, warning, error, critical, off"
            ))
        }
    };
    // Pingora logs every failed request at error level; our own access log covers those.
    let quiet = match l {
        "trace" | "debug" => l,
        _ => "off",
    };
    Ok(format!(
        "{l},pingora_core={quiet},pingora_proxy={quiet},pingora={quiet},h2=off,hyper=off"
    ))
}

/// Parse the downward-API labels file (`key="value"` per line, values Go-quoted).
pub fn parse_pod_labels(text: &str) -> Result<BTreeMap<String, String>, String> {
    let mut out = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let (k, v) = line
            .split_once('=')
            .ok_or_else(|| format!("line {}: {line:?} is not key=\"value\"", i + 1))?;
        let k = k.trim();
        if k.is_empty() {
            return Err(format!("line {}: empty label key", i + 1));
        }
        let v = v.trim();
        let v = if v.starts_with('"') {
            serde_json::from_str::<String>(v)
                .map_err(|e| format!("line {}: label {k}: bad quoted value {v}: {e}", i + 1))?
        } else {
            v.to_string()
        };
        out.insert(k.to_string(), v);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #[test]
    fn identity_settings_are_checked_with_the_flag_named() {
        use clap::Parser;
        #[derive(clap::Parser)]
        struct T {
            #[command(flatten)]
            id: super::IdentityArgs,
        }
        let cfg = |args: &[&str]| {
            let mut v = vec!["t"];
            v.extend_from_slice(args);
            T::try_parse_from(v)
                .map_err(|e| e.to_string())?
                .id
                .config("shop")
        };
        assert!(cfg(&[]).unwrap().is_none(), "off by default");
        let c = cfg(&[
            "--ca-address",
            "remora-ca.remora-system.svc:15012",
            "--trust-domain",
            "corp_x.local",
        ])
        .unwrap()
        .unwrap();
        assert_eq!(c.ca.server_name, "remora-ca.remora-system.svc");
        assert_eq!(c.namespace, "shop");
        assert!(cfg(&["--ca-address", "nohost"])
            .unwrap_err()
            .starts_with("--ca-address \"nohost\""));
        assert!(cfg(&["--ca-address", "h:0"]).is_err());
        assert!(
            cfg(&["--ca-address", "h:1", "--trust-domain", "Bad Domain"])
                .unwrap_err()
                .starts_with("--trust-domain \"Bad Domain\"")
        );
        assert!(cfg(&["--cert-ttl", "10s"]).is_err());
        assert!(cfg(&["--cert-rotate-at", "0.95"]).is_err());
    }

    use super::*;

    #[test]
    fn labels_file_kubelet_format() {
        let l = parse_pod_labels(
            "app=\"reviews\"\nversion=\"v2\"\n\npod-template-hash=\"5f6d\"\nx=\"a\\\"b\"\n",
        )
        .unwrap();
        assert_eq!(l["app"], "reviews");
        assert_eq!(l["version"], "v2");
        assert_eq!(l["x"], "a\"b");
        assert_eq!(l.len(), 4);
        assert!(parse_pod_labels("garbage").unwrap_err().contains("line 1"));
        assert!(parse_pod_labels("a=\"unterminated")
            .unwrap_err()
            .contains("label a"));
    }

    #[test]
    fn log_levels() {
        assert!(log_filter("warning").unwrap().starts_with("warn,"));
        assert!(log_filter("critical").unwrap().starts_with("error,"));
        assert!(log_filter("DEBUG")
            .unwrap()
            .starts_with("debug,pingora_core=debug"));
        assert!(log_filter("loud").unwrap_err().contains("\"loud\""));
    }

    #[test]
    fn kube_flags() {
        let cli = Cli::try_parse_from(["remora-proxy", "run"]).unwrap();
        let Command::Run(r) = cli.command else {
            panic!()
        };
        assert_eq!(
            (
                r.kube_api.as_str(),
                r.rules_configmap.as_str(),
                r.discovery.as_str()
            ),
            ("auto", "remora-mesh-rules", "on")
        );
        let e = Cli::try_parse_from(["remora-proxy", "run", "--rules-configmap", "Bad_Name"])
            .unwrap_err();
        assert!(e.to_string().contains("--rules-configmap"), "{e}");
        assert!(
            e.to_string()
                .contains("\"Bad_Name\" is not a ConfigMap name"),
            "{e}"
        );
        assert_eq!(parse_configmap_name("off").as_deref(), Ok("off"));
        assert_eq!(r.discovery_ready_timeout, Duration::from_secs(10));
        assert!(parse_configmap_name("rules.v2").is_ok());
        assert!(parse_configmap_name("-x").is_err());
    }

    #[test]
    fn discovery_ready_timeout() {
        let parse = |args: &[&str]| {
            let mut v = vec!["remora-proxy", "run"];
            v.extend_from_slice(args);
            Cli::try_parse_from(v).map(|c| match c.command {
                Command::Run(r) => r.discovery_ready_timeout,
                _ => panic!("run expected"),
            })
        };
        assert_eq!(
            parse(&["--discovery-ready-timeout", "0"]).unwrap(),
            Duration::ZERO
        );
        assert_eq!(
            parse(&["--discovery-ready-timeout", "1500ms"]).unwrap(),
            Duration::from_millis(1500)
        );
        assert_eq!(
            parse(&["--discovery-ready-timeout=2m"]).unwrap(),
            Duration::from_secs(120)
        );
        assert_eq!(
            parse(&["--discovery-ready-timeout", "30"]).unwrap(),
            Duration::from_secs(30)
        );
        let e = parse(&["--discovery-ready-timeout", "soon"]).unwrap_err();
        assert!(e.to_string().contains("--discovery-ready-timeout"), "{e}");
        assert!(e.to_string().contains("\"soon\" is not a duration"), "{e}");
        assert!(parse_ready_timeout("2h").is_err());
        assert!(parse_ready_timeout("61m")
            .unwrap_err()
            .contains("longer than 1h"));
        assert!(parse_ready_timeout("-1s").is_err());
        assert!(parse_ready_timeout("1.5s").is_err());
    }

    #[test]
    fn run_defaults_are_istio_ports() {
        let cli = Cli::try_parse_from(["remora-proxy", "run"]).unwrap();
        let Command::Run(r) = cli.command else {
            panic!()
        };
        assert_eq!(r.outbound_addr.port(), 15001);
        assert_eq!(r.inbound_addr.port(), 15006);
        assert_eq!(r.admin_addr.port(), 15020);
        assert_eq!(r.health_addr.port(), 15021);
        assert_eq!(r.prometheus_addr.port(), 15090);
        assert_eq!(r.threads, 2);
        assert!(!r.work_stealing);
        assert!(!r.pool_idle_watch);
        assert_eq!(r.jwks_refresh_interval, Duration::from_secs(1200));
        assert_eq!(r.jwks_ca_file, None);
        assert_eq!(parse_jwks_refresh("90s"), Ok(Duration::from_secs(90)));
        assert!(parse_jwks_refresh("500ms")
            .unwrap_err()
            .contains("outside 1s to 24h"));
        assert!(parse_jwks_refresh("soon").is_err());
        let e = Cli::try_parse_from(["remora-proxy", "run", "--threads", "0"]).unwrap_err();
        assert!(e.to_string().contains("--threads"), "{e}");
        let cli = Cli::try_parse_from(["remora-proxy", "run", "--work-stealing", "true"]).unwrap();
        let Command::Run(r) = cli.command else {
            panic!()
        };
        assert!(r.work_stealing);
        let e = Cli::try_parse_from(["remora-proxy", "run", "--work-stealing", "no"]).unwrap_err();
        assert!(e.to_string().contains("--work-stealing"), "{e}");
    }
}
