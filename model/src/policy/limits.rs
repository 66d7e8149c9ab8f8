//! Connection pool limits per destination (`trafficPolicy.connectionPool`), Envoy's circuit
//! breakers as Istio configures them. Each HTTP request holds one upstream connection while it
//! is forwarded, so:
//! - `tcp.maxConnections` caps the requests being forwarded to the destination at once;
//! - `http.http1MaxPendingRequests` caps the requests waiting for one of those connections;
//!   beyond it a request fails at once with 503 and response flag `UO` (never an unbounded queue);
//! - `http.http2MaxRequests` caps all active requests (forwarded + waiting), also 503 `UO`;
//! - `http.maxRetries` caps retries outstanding at once across the destination (a retry over
//!   the cap is not made; the answer the client gets is the last attempt's).
//!
//! The other fields (`connectTimeout`, `tcpKeepalive`, `maxRequestsPerConnection`,
//! `idleTimeout`) are decoded here and applied to the upstream peer options.
//! `ConnectionPoolSpec` is Istio's shape, decoded with the rule; `PoolConfig` is what it means.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::serde_util::IstioShape;
use crate::typed::Dur;

/// Istio's "unset" for every limit (2^32 - 1).
pub const UNLIMITED: u64 = u32::MAX as u64;

/// A `connectionPool`, interpreted (Istio's defaults filled in).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PoolConfig {
    pub max_connections: u64,
    #[serde(with = "crate::serde_util::secs")]
    pub connect_timeout: Duration,
    pub tcp_keepalive: Option<TcpKeepalive>,
    pub http1_max_pending_requests: u64,
    pub http2_max_requests: u64,
    /// 0 = unlimited.
    pub max_requests_per_connection: u64,
    pub max_retries: u64,
    #[serde(with = "crate::serde_util::opt_secs")]
    pub idle_timeout: Option<Duration>,
}

/// `tcp.tcpKeepalive`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TcpKeepalive {
    pub probes: Option<u32>,
    #[serde(with = "crate::serde_util::opt_secs")]
    pub time: Option<Duration>,
    #[serde(with = "crate::serde_util::opt_secs")]
    pub interval: Option<Duration>,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            max_connections: UNLIMITED,
            // Istio's default connect timeout.
            connect_timeout: Duration::from_secs(10),
            tcp_keepalive: None,
            http1_max_pending_requests: UNLIMITED,
            http2_max_requests: UNLIMITED,
            max_requests_per_connection: 0,
            max_retries: UNLIMITED,
            idle_timeout: None,
        }
    }
}

/// `connectionPool` as Istio writes it; `PoolConfig` is what it means.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConnectionPoolSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<TcpSettingsSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpSettingsSpec>,
}

/// `connectionPool.tcp`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TcpSettingsSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect_timeout: Option<Dur>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp_keepalive: Option<TcpKeepaliveSpec>,
    /// Accepted, not applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connection_duration: Option<Value>,
}

/// `connectionPool.tcp.tcpKeepalive`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TcpKeepaliveSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<Dur>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<Dur>,
}

/// `connectionPool.http`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HttpSettingsSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http1_max_pending_requests: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http2_max_requests: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_requests_per_connection: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_retries: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout: Option<Dur>,
    /// Protocol choices: accepted, not applied (the proxy speaks what the client spoke).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub h2_upgrade_policy: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub use_client_protocol: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrent_streams: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http2_keep_alive: Option<Value>,
}

impl IstioShape for PoolConfig {
    type Spec = ConnectionPoolSpec;

    /// 0 means "unset" for the limits, as in Istio.
    fn from_spec(spec: &ConnectionPoolSpec) -> Result<PoolConfig, String> {
        let mut c = PoolConfig::default();
        let nz = |x: u64| if x == 0 { UNLIMITED } else { x };
        if let Some(t) = &spec.tcp {
            if let Some(n) = t.max_connections {
                c.max_connections = nz(n);
            }
            if let Some(d) = t.connect_timeout {
                c.connect_timeout = d.0;
            }
            c.tcp_keepalive = t.tcp_keepalive.as_ref().map(|k| TcpKeepalive {
                probes: k.probes.and_then(|p| u32::try_from(p).ok()),
                time: k.time.map(|d| d.0),
                interval: k.interval.map(|d| d.0),
            });
        }
        if let Some(h) = &spec.http {
            if let Some(n) = h.http1_max_pending_requests {
                c.http1_max_pending_requests = nz(n);
            }
            if let Some(n) = h.http2_max_requests {
                c.http2_max_requests = nz(n);
            }
            if let Some(n) = h.max_requests_per_connection {
                c.max_requests_per_connection = n;
            }
            if let Some(n) = h.max_retries {
                c.max_retries = nz(n);
            }
            c.idle_timeout = h.idle_timeout.map(|d| d.0);
        }
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: Value) -> Result<PoolConfig, String> {
        let tp = json!({ "connectionPool": v });
        crate::typed::decode::<crate::policy::traffic::TrafficPolicySpec>(
            &tp,
            "tp",
            &mut Vec::new(),
        )
        .map(|t| t.connection_pool.map(|s| s.value).unwrap_or_default())
        .map_err(|e| e.to_string())
    }

    #[test]
    fn fields_defaults_and_errors() {
        let c = parse(json!({
            "tcp": {"maxConnections": 100, "connectTimeout": "250ms",
                    "tcpKeepalive": {"probes": 3, "time": "7200s", "interval": "75s"}},
            "http": {"http1MaxPendingRequests": 0, "http2MaxRequests": 50,
                     "maxRequestsPerConnection": 1, "maxRetries": 2, "idleTimeout": "1m"}
        }))
        .unwrap();
        assert_eq!(
            c,
            PoolConfig {
                max_connections: 100,
                connect_timeout: Duration::from_millis(250),
                tcp_keepalive: Some(TcpKeepalive {
                    probes: Some(3),
                    time: Some(Duration::from_secs(7200)),
                    interval: Some(Duration::from_secs(75)),
                }),
                http1_max_pending_requests: UNLIMITED,
                http2_max_requests: 50,
                max_requests_per_connection: 1,
                max_retries: 2,
                idle_timeout: Some(Duration::from_secs(60)),
            }
        );
        assert_eq!(parse(json!({})).unwrap(), PoolConfig::default());
        assert_eq!(
            parse(json!({"tcp": {"maxConnections": -1}})).unwrap_err(),
            "tp.connectionPool.tcp.maxConnections: -1 is not a non-negative integer"
        );
        assert_eq!(
            parse(json!({"http": {"idleTimeout": 5}})).unwrap_err(),
            "tp.connectionPool.http.idleTimeout: expected a duration such as \"5s\" or \"100ms\", found the number 5"
        );
    }
}
