//! Telemetry: the proxy's metrics (Istio's standard families and the proxy's own, in one
//! [`Metrics`] handle with its own registry, created at start-up), JSON access logs and
//! tracing (the trace context of a request, its span, the exporter).
//!
//! The metric names and label names are Istio's, so Kiali and the Istio Grafana dashboards work
//! unchanged. `reporter` is `source` on the outbound side and `destination` on the inbound side.

pub mod accesslog;
pub mod app_metrics;
pub mod exchange;
pub mod metrics;
pub mod otlp;
pub mod peer;
pub mod span;
pub mod trace_context;
pub mod tracer;

pub use accesslog::{AccessLog, HttpLogEntry, TcpLogEntry};
pub use metrics::{
    DiscoveryMetrics, HttpLabels, HttpLabelsRef, MeshPlaintext, Metrics, RulesMetrics, TcpLabels,
};
pub use peer::Peer;

/// What `/config_dump` says of the telemetry providers: the default tracer, the named tracers
/// and access-log providers, and the names the Telemetry rules `rules` give that are none of
/// them (`tracing: NAME` or `accessLogging: NAME`, once each).
pub fn providers_dump(
    default_tracer: Option<&tracer::ExportConfig>,
    tracers: &[(String, &tracer::ExportConfig)],
    access_log: AccessLog,
    logs: &[(String, AccessLog)],
    rules: &remora_model::telemetry::Effective,
) -> remora_model::dump::TelemetryProvidersDump {
    let export =
        |c: &tracer::ExportConfig| format!("{} {} {}", c.protocol.as_str(), c.address, c.path);
    let enc = |a: AccessLog| match a {
        AccessLog::Text => "TEXT",
        AccessLog::Json => "JSON",
        AccessLog::Off => "off",
    };
    let mut unknown = Vec::new();
    for side in [&rules.client, &rules.server] {
        if let Some(t) = &side.tracing_provider {
            if !tracers.iter().any(|(n, _)| n == t) {
                unknown.push(format!("tracing: {t}"));
            }
        }
        for l in &side.access_log_providers {
            if !logs.iter().any(|(n, _)| n == l) {
                unknown.push(format!("accessLogging: {l}"));
            }
        }
    }
    unknown.sort();
    unknown.dedup();
    remora_model::dump::TelemetryProvidersDump {
        tracing_default: default_tracer.map(export),
        tracing: tracers
            .iter()
            .map(|(n, c)| format!("{n}: {}", export(c)))
            .collect(),
        access_log_default: enc(access_log).to_string(),
        access_log: logs
            .iter()
            .map(|(n, a)| format!("{n}: {}", enc(*a)))
            .collect(),
        unknown,
    }
}

/// `destination_service` of a request or connection the rules leave to its original
/// destination (Istio's `PassthroughCluster`).
pub const PASSTHROUGH: &str = "PassthroughCluster";

/// A label value that is not known (no service the configuration or discovery knows).
pub const UNKNOWN: &str = "unknown";

/// The identity of the workload this proxy runs beside (labels `source_*` on outbound,
/// `destination_*` on inbound).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Workload {
    pub name: String,
    pub namespace: String,
    /// Its labels on a hop in plain text (principal `unknown`).
    pub plain: std::sync::Arc<Peer>,
    /// Its labels on a mutual-TLS hop (its SPIFFE id as principal, when it has one).
    pub mtls: std::sync::Arc<Peer>,
    /// Its `x-envoy-peer-metadata` and `-id` values for Istio's metadata exchange (empty: none
    /// sent).
    pub metadata: String,
    pub metadata_id: String,
}

impl Workload {
    /// Workload name as Istio derives it: an explicit name, else the `app.kubernetes.io/name` or
    /// `app` label, else the pod name, else `unknown`.
    pub fn derive(
        explicit: Option<&str>,
        labels: &std::collections::BTreeMap<String, String>,
        pod_name: Option<&str>,
        namespace: &str,
    ) -> Workload {
        let name = explicit
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .or_else(|| labels.get("service.istio.io/canonical-name").cloned())
            .or_else(|| labels.get("app.kubernetes.io/name").cloned())
            .or_else(|| labels.get("app").cloned())
            .or_else(|| pod_name.filter(|s| !s.is_empty()).map(str::to_string))
            .unwrap_or_else(|| "unknown".to_string());
        let plain = std::sync::Arc::new(peer::own(
            &name,
            namespace,
            labels,
            UNKNOWN,
            peer::DEFAULT_CLUSTER,
        ));
        Workload {
            name,
            namespace: namespace.to_string(),
            mtls: plain.clone(),
            plain,
            metadata: String::new(),
            metadata_id: String::new(),
        }
    }

    /// The same workload with its pod labels, SPIFFE id (`None`: no workload identity) and
    /// cluster id in its metric labels.
    pub fn with_identity(
        self,
        labels: &std::collections::BTreeMap<String, String>,
        principal: Option<&str>,
        cluster: &str,
    ) -> Workload {
        let plain = peer::own(&self.name, &self.namespace, labels, UNKNOWN, cluster);
        let mtls = principal.map_or_else(|| plain.clone(), |p| plain.with_principal(p));
        Workload {
            plain: std::sync::Arc::new(plain),
            mtls: std::sync::Arc::new(mtls),
            ..self
        }
    }

    /// The same workload with its metadata-exchange values, for the pod `pod_name` at `ip`.
    pub fn with_exchange(self, pod_name: &str, ip: &str, cluster_domain: &str) -> Workload {
        Workload {
            metadata: exchange::encode(&self.plain, pod_name),
            metadata_id: exchange::encode_id(ip, pod_name, &self.namespace, cluster_domain),
            ..self
        }
    }

    /// Its labels on a hop over mutual TLS or not.
    pub fn labels(&self, mutual_tls: bool) -> &std::sync::Arc<Peer> {
        if mutual_tls {
            &self.mtls
        } else {
            &self.plain
        }
    }
}

/// Envoy/Istio response flags used in metrics and logs.
pub mod flags {
    /// No flag.
    pub const NONE: &str = "-";
    /// Upstream connection failure.
    pub const UPSTREAM_CONNECT_FAILURE: &str = "UF";
    /// Upstream request timeout.
    pub const UPSTREAM_TIMEOUT: &str = "UT";
    /// Upstream connection termination.
    pub const UPSTREAM_TERMINATION: &str = "UC";
    /// The upstream's response could not be parsed (HTTP/1 head, HTTP/2 frames).
    pub const UPSTREAM_PROTOCOL_ERROR: &str = "UPE";
    /// Downstream connection termination.
    pub const DOWNSTREAM_TERMINATION: &str = "DC";
    /// No route / refused (e.g. a loop to the proxy itself).
    pub const NO_ROUTE: &str = "NR";
    /// No healthy upstream.
    pub const NO_HEALTHY_UPSTREAM: &str = "UH";
    /// Upstream overflow: a connectionPool limit refused the request.
    pub const UPSTREAM_OVERFLOW: &str = "UO";
    /// Upstream retry limit exceeded (the answer is the last try's).
    pub const RETRY_LIMIT_EXCEEDED: &str = "URX";
    /// Request delayed by fault injection.
    pub const DELAY_INJECTED: &str = "DI";
    /// Request aborted by fault injection.
    pub const FAULT_INJECTED: &str = "FI";
    /// Rate limited locally.
    pub const RATE_LIMITED: &str = "RL";
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn workload_name_precedence() {
        let mut labels = BTreeMap::new();
        labels.insert("app".to_string(), "reviews".to_string());
        let w = Workload::derive(None, &labels, Some("reviews-v2-5f6d-abcde"), "ns1");
        assert_eq!((w.name.as_str(), w.namespace.as_str()), ("reviews", "ns1"));
        labels.insert(
            "app.kubernetes.io/name".to_string(),
            "reviews-k8s".to_string(),
        );
        assert_eq!(
            Workload::derive(None, &labels, None, "ns1").name,
            "reviews-k8s"
        );
        labels.insert(
            "service.istio.io/canonical-name".to_string(),
            "reviews-canonical".to_string(),
        );
        assert_eq!(
            Workload::derive(None, &labels, None, "ns1").name,
            "reviews-canonical"
        );
        assert_eq!(
            Workload::derive(Some("explicit"), &labels, None, "ns1").name,
            "explicit"
        );
        assert_eq!(
            Workload::derive(Some(""), &BTreeMap::new(), Some("pod-1"), "n").name,
            "pod-1"
        );
        assert_eq!(
            Workload::derive(None, &BTreeMap::new(), None, "n").name,
            "unknown"
        );
    }
}
