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
//! `idleTimeout`) are parsed here and applied to the upstream peer options.

use std::time::Duration;

use serde_json::Value;

/// Istio's "unset" for every limit (2^32 - 1).
pub const UNLIMITED: u64 = u32::MAX as u64;

/// The parsed `connectionPool`.
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

fn obj<'a>(v: &'a Value, f: &str) -> Result<&'a serde_json::Map<String, Value>, String> {
    v.as_object()
        .ok_or_else(|| format!("{f}: expected a mapping, got {v}"))
}

fn count(o: &serde_json::Map<String, Value>, f: &str, k: &str) -> Result<Option<u64>, String> {
    match o.get(k) {
        None => Ok(None),
        Some(x) => x
            .as_u64()
            .map(Some)
            .ok_or_else(|| format!("{f}.{k}: {x} is not a non-negative integer")),
    }
}

fn dur(o: &serde_json::Map<String, Value>, f: &str, k: &str) -> Result<Option<Duration>, String> {
    match o.get(k) {
        None => Ok(None),
        Some(Value::String(s)) => crate::kinds::parse_duration(s)
            .map(Some)
            .map_err(|e| format!("{f}.{k}: {e}")),
        Some(x) => Err(format!("{f}.{k}: {x} is not a duration string")),
    }
}

/// Parse a `connectionPool` object (0 means "unset" for the limits, as in Istio).
pub fn parse(v: &Value, field: &str) -> Result<PoolConfig, String> {
    let o = obj(v, field)?;
    let mut c = PoolConfig::default();
    let nz = |x: u64| if x == 0 { UNLIMITED } else { x };
    if let Some(t) = o.get("tcp") {
        let f = format!("{field}.tcp");
        let t = obj(t, &f)?;
        if let Some(n) = count(t, &f, "maxConnections")? {
            c.max_connections = nz(n);
        }
        if let Some(d) = dur(t, &f, "connectTimeout")? {
            c.connect_timeout = d;
        }
        if let Some(k) = t.get("tcpKeepalive") {
            let kf = format!("{f}.tcpKeepalive");
            let k = obj(k, &kf)?;
            c.tcp_keepalive = Some(TcpKeepalive {
                probes: count(k, &kf, "probes")?.and_then(|p| u32::try_from(p).ok()),
                time: dur(k, &kf, "time")?,
                interval: dur(k, &kf, "interval")?,
            });
        }
    }
    if let Some(h) = o.get("http") {
        let f = format!("{field}.http");
        let h = obj(h, &f)?;
        if let Some(n) = count(h, &f, "http1MaxPendingRequests")? {
            c.http1_max_pending_requests = nz(n);
        }
        if let Some(n) = count(h, &f, "http2MaxRequests")? {
            c.http2_max_requests = nz(n);
        }
        if let Some(n) = count(h, &f, "maxRequestsPerConnection")? {
            c.max_requests_per_connection = n;
        }
        if let Some(n) = count(h, &f, "maxRetries")? {
            c.max_retries = nz(n);
        }
        if let Some(d) = dur(h, &f, "idleTimeout")? {
            c.idle_timeout = Some(d);
        }
    }
    Ok(c)
}
