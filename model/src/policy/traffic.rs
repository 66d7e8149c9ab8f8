//! The DestinationRule kind and its `trafficPolicy`, decoded once with the rule: each setting
//! (`loadBalancer`, `connectionPool`, `outlierDetection`, `tls`) is kept as written and
//! interpreted into its configuration type while decoding (`TrafficPolicySpec`, whose settings
//! are `serde_util::Setting`s; errors and unknown fields name the field path); `/config_dump`
//! shows them as written. `resolve` gives the policy of one destination (host, subset, port):
//! the top-level policy, overridden field by field by the matching `portLevelSettings` entry,
//! then by the subset's policy and its own `portLevelSettings` (Istio's precedence).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{lb, limits, outlier};
use crate::kinds::Meta;
use crate::serde_util::{IstioShape, Setting};

/// A DestinationRule subset.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Subset {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    /// The subset's `trafficPolicy`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traffic_policy: Option<TrafficPolicySpec>,
}

/// A DestinationRule.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DestinationRule {
    pub meta: Meta,
    /// Fully qualified; may be a wildcard.
    pub host: String,
    pub subsets: Vec<Subset>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub export_to: Vec<String>,
    /// `trafficPolicy`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traffic_policy: Option<TrafficPolicySpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload_selector: Option<BTreeMap<String, String>>,
}

/// A `trafficPolicy` (a DestinationRule's or a subset's): each setting as written and what it
/// means, interpreted when the rule is decoded; read and written in Istio's shape.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TrafficPolicySpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_balancer: Option<Setting<lb::LbPolicy>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_pool: Option<Setting<limits::PoolConfig>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outlier_detection: Option<Setting<outlier::OutlierConfig>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<Setting<TlsSettings>>,
    /// Overrides per destination port (the first entry for a port is used).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub port_level_settings: Vec<PortTrafficPolicy>,
    /// Istio's PROXY protocol, tunnelling and retry budget: accepted, not applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy_protocol: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tunnel: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_budget: Option<Value>,
}

/// One `portLevelSettings` entry: the settings of `trafficPolicy` for one destination port.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PortTrafficPolicy {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<PortSelector>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_balancer: Option<Setting<lb::LbPolicy>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_pool: Option<Setting<limits::PoolConfig>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outlier_detection: Option<Setting<outlier::OutlierConfig>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<Setting<TlsSettings>>,
}

/// `port` of a `portLevelSettings` entry.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
pub struct PortSelector {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub number: Option<u16>,
}

impl PortTrafficPolicy {
    /// The port this entry is for.
    pub fn port_number(&self) -> Option<u16> {
        self.port.and_then(|p| p.number)
    }
}

impl TrafficPolicySpec {
    /// Every port named in `portLevelSettings`.
    pub fn ports(&self) -> impl Iterator<Item = u16> + '_ {
        self.port_level_settings
            .iter()
            .filter_map(PortTrafficPolicy::port_number)
    }

    /// Overlay this policy (and its `portLevelSettings` entry for `port`) onto `into`, field by
    /// field.
    fn overlay(&self, into: &mut TrafficPolicySpec, port: u16) {
        let mut set = |lb: &Option<Setting<lb::LbPolicy>>,
                       pool: &Option<Setting<limits::PoolConfig>>,
                       od: &Option<Setting<outlier::OutlierConfig>>,
                       tls: &Option<Setting<TlsSettings>>| {
            if lb.is_some() {
                into.load_balancer.clone_from(lb);
            }
            if pool.is_some() {
                into.connection_pool.clone_from(pool);
            }
            if od.is_some() {
                into.outlier_detection.clone_from(od);
            }
            if tls.is_some() {
                into.tls.clone_from(tls);
            }
        };
        set(
            &self.load_balancer,
            &self.connection_pool,
            &self.outlier_detection,
            &self.tls,
        );
        let entry = self
            .port_level_settings
            .iter()
            .find(|e| e.port_number() == Some(port));
        if let Some(e) = entry {
            set(
                &e.load_balancer,
                &e.connection_pool,
                &e.outlier_detection,
                &e.tls,
            );
        }
    }
}

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
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
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

const TLS_MODES: [(&str, TlsKind); 4] = [
    ("DISABLE", TlsKind::Disable),
    ("SIMPLE", TlsKind::Simple),
    ("MUTUAL", TlsKind::Mutual),
    ("ISTIO_MUTUAL", TlsKind::IstioMutual),
];

const TLS_LISTED: &str = "DISABLE, SIMPLE, MUTUAL or ISTIO_MUTUAL";

crate::string_schema!(TlsKind, "TlsMode", crate::typed::names_schema(&TLS_MODES));

impl<'de> Deserialize<'de> for TlsKind {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        crate::typed::one_of(d, &TLS_MODES, TLS_LISTED)
    }
}

/// `tls.mode`: an empty string is unset (DISABLE), like the other fields of `tls`.
fn tls_mode<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<TlsKind>, D::Error> {
    match Option::<String>::deserialize(d)? {
        Some(s) if !s.is_empty() => crate::typed::pick(&s, &TLS_MODES, TLS_LISTED)
            .map(Some)
            .map_err(serde::de::Error::custom),
        _ => Ok(None),
    }
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

/// `tls` as Istio writes it (`ClientTLSSettings`); `TlsSettings` is what it means.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClientTlsSpec {
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "tls_mode"
    )]
    pub mode: Option<TlsKind>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_certificate: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_certificates: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential_name: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subject_alt_names: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sni: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub insecure_skip_verify: Option<bool>,
    /// A certificate revocation list: accepted, not applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_crl: Option<Value>,
}

impl IstioShape for TlsSettings {
    type Spec = ClientTlsSpec;

    /// An empty string is an unset field; `MUTUAL` needs its certificate and key files unless
    /// `credentialName` is set (Istio's validation: "client certificate required for mutual
    /// tls").
    fn from_spec(spec: &ClientTlsSpec) -> Result<TlsSettings, String> {
        let set = |v: &Option<String>| v.clone().filter(|s| !s.is_empty());
        if let Some(i) = spec.subject_alt_names.iter().position(String::is_empty) {
            return Err(format!("subjectAltNames[{i}] must not be empty"));
        }
        let t = TlsSettings {
            mode: spec.mode.unwrap_or_default(),
            ca_certificates: set(&spec.ca_certificates),
            client_certificate: set(&spec.client_certificate),
            private_key: set(&spec.private_key),
            sni: set(&spec.sni),
            subject_alt_names: spec.subject_alt_names.clone(),
            insecure_skip_verify: spec.insecure_skip_verify.unwrap_or(false),
            credential_name: set(&spec.credential_name),
        };
        if t.mode == TlsKind::Mutual && t.credential_name.is_none() {
            if t.client_certificate.is_none() {
                return Err(
                    "clientCertificate is required when mode is MUTUAL (a PEM file path)"
                        .to_string(),
                );
            }
            if t.private_key.is_none() {
                return Err(
                    "privateKey is required when mode is MUTUAL (a PEM file path)".to_string(),
                );
            }
        }
        Ok(t)
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

/// The settings in effect for a destination: the rule's, overridden by the matching
/// `portLevelSettings` entry, then by the subset's policy and its entry (only the four
/// settings; `portLevelSettings` and the settings remora does not apply are left empty).
pub fn effective(dr: &DestinationRule, subset: Option<&str>, port: u16) -> TrafficPolicySpec {
    let mut out = TrafficPolicySpec::default();
    if let Some(tp) = &dr.traffic_policy {
        tp.overlay(&mut out, port);
    }
    if let Some(s) = subset.and_then(|n| dr.subsets.iter().find(|s| s.name == n)) {
        if let Some(tp) = &s.traffic_policy {
            tp.overlay(&mut out, port);
        }
    }
    out
}

/// `effective` in Istio's shape (`{"loadBalancer": {...}, "tls": {...}}`, only the settings that
/// are set): what tools show, and what identifies the policy of a destination.
pub fn effective_raw(dr: &DestinationRule, subset: Option<&str>, port: u16) -> Value {
    serde_json::to_value(effective(dr, subset, port)).unwrap_or_default()
}

impl From<TrafficPolicySpec> for TrafficPolicy {
    /// The settings of an effective policy, with Istio's defaults for those not set.
    fn from(spec: TrafficPolicySpec) -> TrafficPolicy {
        let tls_set = spec.tls.is_some();
        let tls_settings = spec.tls.map(|s| s.value).unwrap_or_default();
        let tls = match tls_settings.mode {
            TlsKind::Disable => TlsMode::Disable,
            TlsKind::Simple => TlsMode::Simple {
                ca_certificates: tls_settings.ca_certificates.clone(),
                sni: tls_settings.sni.clone(),
                insecure_skip_verify: tls_settings.insecure_skip_verify,
            },
            TlsKind::Mutual => TlsMode::Unsupported("MUTUAL".to_string()),
            TlsKind::IstioMutual => TlsMode::Unsupported("ISTIO_MUTUAL".to_string()),
        };
        TrafficPolicy {
            load_balancer: spec.load_balancer.map(|s| s.value).unwrap_or_default(),
            connection_pool: spec.connection_pool.map(|s| s.value).unwrap_or_default(),
            outlier_detection: spec.outlier_detection.map(|s| s.value),
            tls,
            tls_settings,
            tls_set,
        }
    }
}

/// The policy of a destination under a DestinationRule. Every setting was checked when the
/// rule was decoded (by the loader, or when a `/config_dump` is read back), so this is always
/// `Ok`; the `Result` keeps the callers' fallback to the defaults.
pub fn resolve(
    dr: &DestinationRule,
    subset: Option<&str>,
    port: u16,
) -> Result<TrafficPolicy, String> {
    Ok(effective(dr, subset, port).into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::time::Duration;

    fn tp(v: Value) -> TrafficPolicySpec {
        crate::typed::decode::<TrafficPolicySpec>(&v, "tp", &mut Vec::new()).unwrap()
    }

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
                traffic_policy: Some(tp(subset_tp)),
            }],
            export_to: vec![],
            traffic_policy: Some(tp(top)),
            workload_selector: None,
        }
    }

    fn parse(v: Value) -> Result<TrafficPolicy, String> {
        crate::typed::decode::<TrafficPolicySpec>(&v, "tp", &mut Vec::new())
            .map(TrafficPolicy::from)
            .map_err(|e| e.to_string())
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
        assert_eq!(
            effective_raw(&d, Some("v2"), 9081),
            json!({"loadBalancer": {"consistentHash": {"useSourceIp": true}},
                   "connectionPool": {"tcp": {"maxConnections": 1}},
                   "outlierDetection": {"consecutive5xxErrors": 7}})
        );
        assert_eq!(
            d.traffic_policy
                .as_ref()
                .unwrap()
                .ports()
                .collect::<Vec<_>>(),
            vec![9080]
        );
    }

    #[test]
    fn tls_modes_and_errors() {
        let t = parse(
            json!({"tls": {"mode": "SIMPLE", "sni": "api.example.com", "caCertificates": "/etc/ca.pem"}}),
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
        let t = parse(json!({"tls": {"mode": "ISTIO_MUTUAL"}})).unwrap();
        assert_eq!(t.tls, TlsMode::Unsupported("ISTIO_MUTUAL".into()));
        assert_eq!(t.tls_settings.mode, TlsKind::IstioMutual);
        assert_eq!(t.tls_settings.summary(), "ISTIO_MUTUAL (mesh mTLS)");
        let t = parse(
            json!({"tls": {"mode": "MUTUAL", "clientCertificate": "/c.pem", "privateKey": "/k.pem",
                            "caCertificates": "/ca.pem", "sni": "a.test",
                            "subjectAltNames": ["spiffe://td/ns/a/sa/b", "a.test"]}}),
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
            parse(json!({"tls": {"mode": "MUTUAL", "privateKey": "/k"}})).unwrap_err(),
            "tp.tls: clientCertificate is required when mode is MUTUAL (a PEM file path)"
        );
        assert_eq!(
            parse(json!({"tls": {"mode": "MUTUAL", "clientCertificate": "/c"}})).unwrap_err(),
            "tp.tls: privateKey is required when mode is MUTUAL (a PEM file path)"
        );
        // credentialName alone is accepted (Istio accepts it); the linter warns and the
        // destination fails closed.
        assert_eq!(
            parse(json!({"tls": {"mode": "MUTUAL", "credentialName": "s"}}))
                .unwrap()
                .tls_settings
                .credential_name
                .as_deref(),
            Some("s")
        );
        assert_eq!(
            parse(json!({"tls": {"mode": "SIMPLE", "subjectAltNames": "a"}})).unwrap_err(),
            "tp.tls.subjectAltNames: expected a list, found the string \"a\""
        );
        assert_eq!(
            parse(json!({"tls": {"mode": "SIMPLE", "subjectAltNames": ["a", ""]}})).unwrap_err(),
            "tp.tls: subjectAltNames[1] must not be empty"
        );
        assert_eq!(
            parse(json!({"tls": {"mode": "SIMPLE", "insecureSkipVerify": "yes"}})).unwrap_err(),
            "tp.tls.insecureSkipVerify: expected true or false, found the string \"yes\""
        );
        assert_eq!(
            parse(json!({"tls": {"mode": "", "sni": ""}}))
                .unwrap()
                .tls_settings,
            TlsSettings::default()
        );
        assert_eq!(
            parse(json!({"tls": {"mode": "STRICT"}})).unwrap_err(),
            "tp.tls.mode: \"STRICT\" is not DISABLE, SIMPLE, MUTUAL or ISTIO_MUTUAL"
        );
        assert_eq!(
            parse(json!({"portLevelSettings": [{"port": {"number": 80}, "loadBalancer": {"simple": "NOPE"}}]}))
                .unwrap_err(),
            "tp.portLevelSettings[0].loadBalancer.simple: \"NOPE\" is not ROUND_ROBIN, RANDOM, LEAST_REQUEST or PASSTHROUGH"
        );
    }

    #[test]
    fn dump_shape_round_trips() {
        let d = dr(
            json!({"loadBalancer": {"simple": "LEAST_CONN", "localityLbSetting": {"enabled": true}},
                   "tls": {"mode": "SIMPLE", "sni": "x"},
                   "portLevelSettings": [{"port": {"number": 9080}, "connectionPool": {"http": {"maxRetries": 3, "idleTimeout": "1m30s"}}}],
                   "tunnel": {"protocol": "CONNECT"}}),
            json!({}),
        );
        let text = serde_json::to_string(&d).unwrap();
        let back: DestinationRule = serde_json::from_str(&text).unwrap();
        assert_eq!(back, d);
        let v: Value = serde_json::from_str(&text).unwrap();
        // As written (durations in seconds).
        assert_eq!(
            v["traffic_policy"],
            json!({"loadBalancer": {"simple": "LEAST_CONN", "localityLbSetting": {"enabled": true}},
                   "tls": {"mode": "SIMPLE", "sni": "x"},
                   "portLevelSettings": [{"port": {"number": 9080}, "connectionPool": {"http": {"maxRetries": 3, "idleTimeout": "90s"}}}],
                   "tunnel": {"protocol": "CONNECT"}})
        );
    }
}
