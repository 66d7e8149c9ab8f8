//! A DestinationRule's `trafficPolicy`, resolved for one destination (host, subset, port):
//! the top-level policy, overridden field by field (`loadBalancer`, `connectionPool`,
//! `outlierDetection`, `tls`) by the matching `portLevelSettings` entry, then by the subset's
//! policy and its own `portLevelSettings` (Istio's precedence).

use serde_json::{Map, Value};

use super::{lb, limits, outlier};
use crate::rules::DestinationRule;

/// `tls.mode` to an upstream.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub enum TlsMode {
    #[default]
    Disable,
    /// TLS with system roots, or `ca_certificates` (a CA file), and `sni`.
    Simple {
        ca_certificates: Option<String>,
        sni: Option<String>,
        insecure_skip_verify: bool,
    },
    /// `MUTUAL` / `ISTIO_MUTUAL` are not implemented by remora (no mesh CA yet).
    Unsupported(String),
}

/// The interpreted policy of one destination.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct TrafficPolicy {
    pub load_balancer: lb::LbPolicy,
    pub connection_pool: limits::PoolConfig,
    /// `None` = no outlier detection (Istio's default).
    pub outlier_detection: Option<outlier::OutlierConfig>,
    pub tls: TlsMode,
}

const FIELDS: [&str; 4] = ["loadBalancer", "connectionPool", "outlierDetection", "tls"];

fn port_of(entry: &Value) -> Option<u16> {
    entry
        .get("port")
        .and_then(|p| p.get("number"))
        .and_then(Value::as_u64)
        .and_then(|n| u16::try_from(n).ok())
}

/// Overlay `tp` (and its `portLevelSettings` entry for `port`) onto `into`.
fn overlay(into: &mut Map<String, Value>, tp: &Value, port: u16) {
    for f in FIELDS {
        if let Some(v) = tp.get(f) {
            into.insert(f.to_string(), v.clone());
        }
    }
    if let Some(pls) = tp.get("portLevelSettings").and_then(Value::as_array) {
        if let Some(e) = pls.iter().find(|e| port_of(e) == Some(port)) {
            for f in FIELDS {
                if let Some(v) = e.get(f) {
                    into.insert(f.to_string(), v.clone());
                }
            }
        }
    }
}

/// The effective raw policy object for a destination.
pub fn effective_raw(dr: &DestinationRule, subset: Option<&str>, port: u16) -> Value {
    let mut m = Map::new();
    if let Some(tp) = &dr.traffic_policy {
        overlay(&mut m, tp, port);
    }
    if let Some(s) = subset.and_then(|n| dr.subsets.iter().find(|s| s.name == n)) {
        if let Some(tp) = &s.traffic_policy {
            overlay(&mut m, tp, port);
        }
    }
    Value::Object(m)
}

/// Interpret a raw (effective) policy; `field` names it in errors.
pub fn parse(v: &Value, field: &str) -> Result<TrafficPolicy, String> {
    let mut t = TrafficPolicy::default();
    if let Some(x) = v.get("loadBalancer") {
        t.load_balancer = lb::parse(x, &format!("{field}.loadBalancer"))?;
    }
    if let Some(x) = v.get("connectionPool") {
        t.connection_pool = limits::parse(x, &format!("{field}.connectionPool"))?;
    }
    if let Some(x) = v.get("outlierDetection") {
        t.outlier_detection = Some(outlier::parse(x, &format!("{field}.outlierDetection"))?);
    }
    if let Some(x) = v.get("tls") {
        let f = format!("{field}.tls");
        let mode = x.get("mode").and_then(Value::as_str).unwrap_or("DISABLE");
        let s = |k: &str| x.get(k).and_then(Value::as_str).map(str::to_string);
        t.tls = match mode {
            "DISABLE" => TlsMode::Disable,
            "SIMPLE" => TlsMode::Simple {
                ca_certificates: s("caCertificates"),
                sni: s("sni"),
                insecure_skip_verify: x.get("insecureSkipVerify").and_then(Value::as_bool)
                    == Some(true),
            },
            "MUTUAL" | "ISTIO_MUTUAL" => TlsMode::Unsupported(mode.to_string()),
            other => {
                return Err(format!(
                    "{f}.mode: {other:?} is not DISABLE, SIMPLE, MUTUAL or ISTIO_MUTUAL"
                ))
            }
        };
    }
    Ok(t)
}

/// Resolve and interpret the policy of a destination under a DestinationRule.
pub fn resolve(
    dr: &DestinationRule,
    subset: Option<&str>,
    port: u16,
) -> Result<TrafficPolicy, String> {
    let field = format!(
        "DestinationRule {} ({} doc {}) trafficPolicy",
        dr.meta.key(),
        dr.meta.file,
        dr.meta.document
    );
    parse(&effective_raw(dr, subset, port), &field)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::model::{Meta, Subset};
    use serde_json::json;
    use std::time::Duration;

    fn dr(top: Value, subset_tp: Value) -> DestinationRule {
        DestinationRule {
            meta: Meta {
                kind: "DestinationRule".into(),
                api_version: "networking.istio.io/v1".into(),
                name: "r".into(),
                namespace: "default".into(),
                file: "r.yaml".into(),
                document: 1,
            },
            host: "r.default.svc.cluster.local".into(),
            subsets: vec![Subset {
                name: "v2".into(),
                labels: Default::default(),
                traffic_policy: Some(subset_tp),
            }],
            export_to: vec![],
            traffic_policy: Some(top),
            workload_selector: None,
        }
    }

    #[test]
    fn precedence_top_port_subset() {
        let d = dr(
            json!({"loadBalancer": {"simple": "RANDOM"},
                   "connectionPool": {"tcp": {"maxConnections": 10}},
                   "outlierDetection": {"consecutive5xxErrors": 7},
                   "portLevelSettings": [{"port": {"number": 9080},
                                          "loadBalancer": {"simple": "ROUND_ROBIN"}}]}),
            json!({"connectionPool": {"tcp": {"maxConnections": 1}},
                   "portLevelSettings": [{"port": {"number": 9081},
                                          "loadBalancer": {"consistentHash": {"useSourceIp": true}}}]}),
        );
        let t = resolve(&d, None, 80).unwrap();
        assert_eq!(t.load_balancer, lb::LbPolicy::Random);
        assert_eq!(t.connection_pool.max_connections, 10);
        assert_eq!(
            t.outlier_detection.as_ref().and_then(|o| o.consecutive_5xx),
            Some(7)
        );
        assert_eq!(
            resolve(&d, None, 9080).unwrap().load_balancer,
            lb::LbPolicy::RoundRobin
        );
        let s = resolve(&d, Some("v2"), 9080).unwrap();
        assert_eq!(s.load_balancer, lb::LbPolicy::RoundRobin);
        assert_eq!(s.connection_pool.max_connections, 1);
        // outlierDetection inherited from the top level
        assert_eq!(
            s.outlier_detection.map(|o| o.consecutive_5xx),
            Some(Some(7))
        );
        assert_eq!(
            resolve(&d, Some("v2"), 9081).unwrap().load_balancer,
            lb::LbPolicy::ConsistentHash(lb::HashKey::SourceIp)
        );
        assert_eq!(
            resolve(&d, Some("v2"), 9081)
                .unwrap()
                .connection_pool
                .connect_timeout,
            Duration::from_secs(10)
        );
    }

    #[test]
    fn tls_modes_and_errors() {
        let t = parse(
            &json!({"tls": {"mode": "SIMPLE", "sni": "api.example.com", "caCertificates": "/etc/ca.pem"}}),
            "tp",
        )
        .unwrap();
        assert_eq!(
            t.tls,
            TlsMode::Simple {
                ca_certificates: Some("/etc/ca.pem".into()),
                sni: Some("api.example.com".into()),
                insecure_skip_verify: false
            }
        );
        assert_eq!(
            parse(&json!({"tls": {"mode": "ISTIO_MUTUAL"}}), "tp")
                .unwrap()
                .tls,
            TlsMode::Unsupported("ISTIO_MUTUAL".into())
        );
        assert_eq!(
            parse(&json!({"tls": {"mode": "STRICT"}}), "tp").unwrap_err(),
            "tp.tls.mode: \"STRICT\" is not DISABLE, SIMPLE, MUTUAL or ISTIO_MUTUAL"
        );
        let d = dr(json!({"loadBalancer": {"simple": "NOPE"}}), json!({}));
        assert_eq!(
            resolve(&d, None, 80).unwrap_err(),
            "DestinationRule default/r (r.yaml doc 1) trafficPolicy.loadBalancer.simple: \"NOPE\" is not ROUND_ROBIN, RANDOM, LEAST_REQUEST or PASSTHROUGH"
        );
    }
}
