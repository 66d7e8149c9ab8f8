//! Telemetry: Istio's standard metrics (in prometheus's default registry) and JSON access logs.
//!
//! The metric names and label names are Istio's, so Kiali and the Istio Grafana dashboards work
//! unchanged. `reporter` is `source` on the outbound side and `destination` on the inbound side.

pub mod accesslog;
pub mod metrics;

pub use accesslog::{AccessLog, HttpLogEntry, TcpLogEntry};
pub use metrics::{HttpLabels, Metrics, TcpLabels};

/// The identity of the workload this proxy runs beside (labels `source_workload` on outbound,
/// `destination_workload` on inbound).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Workload {
    pub name: String,
    pub namespace: String,
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
        Workload {
            name,
            namespace: namespace.to_string(),
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
    /// Downstream connection termination.
    pub const DOWNSTREAM_TERMINATION: &str = "DC";
    /// No route / refused (e.g. a loop to the proxy itself).
    pub const NO_ROUTE: &str = "NR";
    /// No healthy upstream.
    pub const NO_HEALTHY_UPSTREAM: &str = "UH";
}
