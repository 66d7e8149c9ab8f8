//! A DestinationRule's `trafficPolicy`, resolved for one destination (host, subset, port):
//! the top-level policy, overridden field by field (`loadBalancer`, `connectionPool`,
//! `outlierDetection`, `tls`) by the matching `portLevelSettings` entry, then by the subset's
//! policy and its own `portLevelSettings` (Istio's precedence).

use serde_json::{Map, Value};

use super::{lb, limits, outlier};
use crate::kinds::DestinationRule;

/// `tls.mode` to an upstream: the summary other tools print. `TrafficPolicy::tls_settings`
/// holds every field and is what the proxy acts on.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum TlsMode {
    #[default]
    Disable,
    /// TLS with system roots, or `ca_certificates` (a CA file), and `sni`.
    Simple {
        ca_certificates: Option<String>,
        sni: Option<String>,
        insecure_skip_verify: bool,
    },
    /// `MUTUAL` or `ISTIO_MUTUAL`: a mode this summary does not describe; read
    /// `TrafficPolicy::tls_settings` (`TlsSettings::summary`). `MUTUAL` is TLS with a client
    /// certificate; `ISTIO_MUTUAL` is mTLS between sidecars with the workload certificates.
    Unsupported(String),
}

/// The `tls.mode` values.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum TlsKind {
    #[default]
    #[serde(rename = "DISABLE")]
    Disable,
    #[serde(rename = "SIMPLE")]
    Simple,
    #[serde(rename = "MUTUAL")]
    Mutual,
    /// Istio's mesh mTLS with the workload certificates (plain text, with a warning, when the
    /// proxy has no workload identity).
    #[serde(rename = "ISTIO_MUTUAL")]
    IstioMutual,
}

/// Every field of a `tls` setting (`ClientTLSSettings`).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TlsSettings {
    pub mode: TlsKind,
    /// `caCertificates`: PEM file; `None` = the system roots.
    pub ca_certificates: Option<String>,
    /// `clientCertificate` (MUTUAL): PEM file, the leaf first, then intermediates.
    pub client_certificate: Option<String>,
    /// `privateKey` (MUTUAL): PEM file (PKCS#8, PKCS#1 or SEC1).
    pub private_key: Option<String>,
    /// `sni`; `None` = the request's host.
    pub sni: Option<String>,
    /// `subjectAltNames`: when not empty, the server certificate must carry one of them (and
    /// the hostname check against the SNI is replaced by this check, as in Istio).
    pub subject_alt_names: Vec<String>,
    pub insecure_skip_verify: bool,
    /// `credentialName`: a Kubernetes Secret (SDS). remora does not read it: MUTUAL then needs
    /// the file fields; the linter warns.
    pub credential_name: Option<String>,
}

impl TlsSettings {
    /// One line for humans: `MUTUAL sni=a cert=/c key=/k ca=/ca san=x,y`,
    /// `ISTIO_MUTUAL (mesh mTLS)`, `SIMPLE`, `DISABLE`.
    pub fn summary(&self) -> String {
        let mut t = match self.mode {
            TlsKind::Disable => return "DISABLE".to_string(),
            TlsKind::IstioMutual => return "ISTIO_MUTUAL (mesh mTLS)".to_string(),
            TlsKind::Simple => "SIMPLE".to_string(),
            TlsKind::Mutual => "MUTUAL".to_string(),
        };
        if let Some(sni) = &self.sni {
            t.push_str(&format!(" sni={sni}"));
        }
        if self.mode == TlsKind::Mutual {
            if let Some(c) = &self.client_certificate {
                t.push_str(&format!(" cert={c}"));
            }
            if let Some(k) = &self.private_key {
                t.push_str(&format!(" key={k}"));
            }
        }
        if let Some(ca) = &self.ca_certificates {
            t.push_str(&format!(" ca={ca}"));
        }
        if !self.subject_alt_names.is_empty() {
            t.push_str(&format!(" san={}", self.subject_alt_names.join(",")));
        }
        if self.insecure_skip_verify {
            t.push_str(" insecureSkipVerify");
        }
        t
    }
}

/// The interpreted policy of one destination.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TrafficPolicy {
    pub load_balancer: lb::LbPolicy,
    pub connection_pool: limits::PoolConfig,
    /// `None` = no outlier detection (Istio's default).
    pub outlier_detection: Option<outlier::OutlierConfig>,
    pub tls: TlsMode,
    /// The whole `tls` setting (what the proxy acts on).
    pub tls_settings: TlsSettings,
    /// A `tls` setting applies (then it decides, even `DISABLE`; without one, the proxy's
    /// automatic mTLS to sidecar endpoints does).
    #[serde(default)]
    pub tls_set: bool,
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
        t.tls_settings = parse_tls(x, &format!("{field}.tls"))?;
        t.tls_set = true;
        let ts = &t.tls_settings;
        t.tls = match ts.mode {
            TlsKind::Disable => TlsMode::Disable,
            TlsKind::Simple => TlsMode::Simple {
                ca_certificates: ts.ca_certificates.clone(),
                sni: ts.sni.clone(),
                insecure_skip_verify: ts.insecure_skip_verify,
            },
            TlsKind::Mutual => TlsMode::Unsupported("MUTUAL".to_string()),
            TlsKind::IstioMutual => TlsMode::Unsupported("ISTIO_MUTUAL".to_string()),
        };
    }
    Ok(t)
}

/// Interpret a `tls` object (`ClientTLSSettings`); `f` names it in errors.
pub fn parse_tls(x: &Value, f: &str) -> Result<TlsSettings, String> {
    if !x.is_object() {
        return Err(format!("{f}: must be an object"));
    }
    let s = |k: &str| -> Result<Option<String>, String> {
        match x.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(v)) if v.is_empty() => Ok(None),
            Some(Value::String(v)) => Ok(Some(v.clone())),
            Some(other) => Err(format!("{f}.{k}: {other} is not a string")),
        }
    };
    let mode = match s("mode")?.as_deref().unwrap_or("DISABLE") {
        "DISABLE" => TlsKind::Disable,
        "SIMPLE" => TlsKind::Simple,
        "MUTUAL" => TlsKind::Mutual,
        "ISTIO_MUTUAL" => TlsKind::IstioMutual,
        other => {
            return Err(format!(
                "{f}.mode: {other:?} is not DISABLE, SIMPLE, MUTUAL or ISTIO_MUTUAL"
            ))
        }
    };
    let insecure_skip_verify = match x.get("insecureSkipVerify") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(other) => {
            return Err(format!(
                "{f}.insecureSkipVerify: {other} is not true or false"
            ))
        }
    };
    let subject_alt_names = match x.get("subjectAltNames") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(a)) => {
            let mut out = Vec::new();
            for (i, v) in a.iter().enumerate() {
                match v.as_str() {
                    Some(n) if !n.is_empty() => out.push(n.to_string()),
                    _ => {
                        return Err(format!(
                            "{f}.subjectAltNames[{i}]: {v} is not a non-empty string"
                        ))
                    }
                }
            }
            out
        }
        Some(other) => return Err(format!("{f}.subjectAltNames: {other} is not a list")),
    };
    let t = TlsSettings {
        mode,
        ca_certificates: s("caCertificates")?,
        client_certificate: s("clientCertificate")?,
        private_key: s("privateKey")?,
        sni: s("sni")?,
        subject_alt_names,
        insecure_skip_verify,
        credential_name: s("credentialName")?,
    };
    if t.mode == TlsKind::Mutual && t.credential_name.is_none() {
        // Istio's validation rejects this too ("client certificate required for mutual tls").
        if t.client_certificate.is_none() {
            return Err(format!(
                "{f}.clientCertificate: required when mode is MUTUAL (a PEM file path)"
            ));
        }
        if t.private_key.is_none() {
            return Err(format!(
                "{f}.privateKey: required when mode is MUTUAL (a PEM file path)"
            ));
        }
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
    use crate::kinds::{Meta, Subset};
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
        let t = parse(&json!({"tls": {"mode": "ISTIO_MUTUAL"}}), "tp").unwrap();
        assert_eq!(t.tls, TlsMode::Unsupported("ISTIO_MUTUAL".into()));
        assert_eq!(t.tls_settings.mode, TlsKind::IstioMutual);
        assert_eq!(t.tls_settings.summary(), "ISTIO_MUTUAL (mesh mTLS)");
        let t = parse(
            &json!({"tls": {"mode": "MUTUAL", "clientCertificate": "/c.pem", "privateKey": "/k.pem",
                            "caCertificates": "/ca.pem", "sni": "a.test",
                            "subjectAltNames": ["spiffe://td/ns/a/sa/b", "a.test"]}}),
            "tp",
        )
        .unwrap();
        assert_eq!(
            t.tls_settings,
            TlsSettings {
                mode: TlsKind::Mutual,
                ca_certificates: Some("/ca.pem".into()),
                client_certificate: Some("/c.pem".into()),
                private_key: Some("/k.pem".into()),
                sni: Some("a.test".into()),
                subject_alt_names: vec!["spiffe://td/ns/a/sa/b".into(), "a.test".into()],
                insecure_skip_verify: false,
                credential_name: None,
            }
        );
        assert_eq!(
            t.tls_settings.summary(),
            "MUTUAL sni=a.test cert=/c.pem key=/k.pem ca=/ca.pem san=spiffe://td/ns/a/sa/b,a.test"
        );
        assert_eq!(
            parse(
                &json!({"tls": {"mode": "MUTUAL", "privateKey": "/k"}}),
                "tp"
            )
            .unwrap_err(),
            "tp.tls.clientCertificate: required when mode is MUTUAL (a PEM file path)"
        );
        assert_eq!(
            parse(
                &json!({"tls": {"mode": "MUTUAL", "clientCertificate": "/c"}}),
                "tp"
            )
            .unwrap_err(),
            "tp.tls.privateKey: required when mode is MUTUAL (a PEM file path)"
        );
        // credentialName alone is accepted (Istio accepts it); the linter warns and the
        // destination fails closed.
        assert_eq!(
            parse(
                &json!({"tls": {"mode": "MUTUAL", "credentialName": "s"}}),
                "tp"
            )
            .unwrap()
            .tls_settings
            .credential_name
            .as_deref(),
            Some("s")
        );
        assert_eq!(
            parse(
                &json!({"tls": {"mode": "SIMPLE", "subjectAltNames": "a"}}),
                "tp"
            )
            .unwrap_err(),
            "tp.tls.subjectAltNames: \"a\" is not a list"
        );
        assert_eq!(
            parse(
                &json!({"tls": {"mode": "SIMPLE", "insecureSkipVerify": "yes"}}),
                "tp"
            )
            .unwrap_err(),
            "tp.tls.insecureSkipVerify: \"yes\" is not true or false"
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
