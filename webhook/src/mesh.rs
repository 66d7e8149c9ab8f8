//! The mesh-wide telemetry settings of the injector configuration, in Istio's MeshConfig shape
//! (`enableTracing`, `defaultConfig.tracing.sampling`, `defaultConfig.tracing.zipkin.address`,
//! `defaultProviders.tracing`, `extensionProviders` with `zipkin` / `opentelemetry`,
//! `envoyFileAccessLog`, `meshId`, `accessLogFile`, `accessLogEncoding`), checked, and turned
//! into the proxy's environment (`REMORA_TRACING_*`, `ISTIO_META_MESH_ID`, `REMORA_ACCESS_LOG*`).
//! Every tracing and access-log provider goes to the proxy by name, so that a Telemetry rule can
//! choose among them. Pure.

use serde::{Deserialize, Serialize};

use crate::values::check_host_port;

/// Istio's default sampling percentage (`defaultConfig.tracing.sampling`).
pub const DEFAULT_SAMPLING: f64 = 1.0;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct MeshSettings {
    /// Spans from every sidecar (off by default in remora; Istio's default profile turns it
    /// on, with a collector it expects at `zipkin.istio-system:9411`).
    pub enable_tracing: bool,
    pub default_config: DefaultConfig,
    pub default_providers: DefaultProviders,
    pub extension_providers: Vec<ExtensionProvider>,
    /// `istio.mesh_id` in spans (the proxy uses the trust domain when unset, as Istio does).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mesh_id: Option<String>,
    /// `/dev/stdout` (the access log on) or empty (off).
    pub access_log_file: String,
    /// `TEXT` (Istio's default line) or `JSON`.
    pub access_log_encoding: String,
    /// Who sees a Service without a `networking.istio.io/exportTo` annotation (`*`, `.`, `~`
    /// or namespace names; empty: everyone, Istio's default): the discovery service's scoping
    /// reads it at start-up.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub default_service_export_to: Vec<String>,
}

impl Default for MeshSettings {
    fn default() -> Self {
        MeshSettings {
            enable_tracing: false,
            default_config: DefaultConfig::default(),
            default_providers: DefaultProviders::default(),
            extension_providers: Vec::new(),
            mesh_id: None,
            access_log_file: "/dev/stdout".into(),
            access_log_encoding: "TEXT".into(),
            default_service_export_to: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct DefaultConfig {
    pub tracing: TracingDefaults,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct TracingDefaults {
    /// Percentage of requests sampled (0–100).
    pub sampling: f64,
    /// The legacy Zipkin collector (`address: host:port`), used when no provider is named.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub zipkin: Option<ZipkinAddress>,
}

impl Default for TracingDefaults {
    fn default() -> Self {
        TracingDefaults {
            sampling: DEFAULT_SAMPLING,
            zipkin: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ZipkinAddress {
    pub address: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct DefaultProviders {
    /// The tracing provider every proxy uses (the first; Istio takes one).
    pub tracing: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ExtensionProvider {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zipkin: Option<ServicePort>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub opentelemetry: Option<OtelProvider>,
    /// An access log on a file: only `/dev/stdout`, in Istio's default TEXT line or its default
    /// JSON (`logFormat.labels: {}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub envoy_file_access_log: Option<FileAccessLogProvider>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct FileAccessLogProvider {
    #[serde(default)]
    pub path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_format: Option<LogFormat>,
}

/// `logFormat`: `text` (a format string) or `labels` (JSON fields); remora writes Istio's
/// defaults only, so both must be empty.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LogFormat {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<std::collections::BTreeMap<String, serde_json::Value>>,
}

/// A named tracing provider, as the proxy's `REMORA_TRACING_PROVIDERS` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NamedCollector {
    pub name: String,
    pub provider: &'static str,
    pub address: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

/// A named access-log provider, as the proxy's `REMORA_ACCESS_LOG_PROVIDERS` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NamedAccessLog {
    pub name: String,
    /// `TEXT` or `JSON`.
    pub encoding: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServicePort {
    pub service: String,
    pub port: u16,
    /// Istio's `maxTagLength` and the like are accepted and not used.
    #[serde(flatten, default, skip_serializing)]
    pub other: std::collections::BTreeMap<String, serde_json::Value>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct OtelProvider {
    pub service: String,
    pub port: u16,
    /// OTLP over HTTP, with its path; without it, OTLP over gRPC (Istio's default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<OtelHttp>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct OtelHttp {
    #[serde(default)]
    pub path: Option<String>,
}

/// The collector a proxy exports to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Collector {
    /// `zipkin`, `opentelemetry` (OTLP/HTTP) or `opentelemetry-grpc` (the proxy's
    /// `REMORA_TRACING_PROVIDER`).
    pub provider: &'static str,
    pub address: String,
    pub path: Option<String>,
}

/// What one extension provider is.
enum ProviderKind {
    Tracing(Collector),
    AccessLog(&'static str),
}

/// Extension provider `i` checked: its kind, or an error naming the field.
fn provider_kind(i: usize, p: &ExtensionProvider) -> Result<ProviderKind, String> {
    let addr = |field: String, service: &str, port: u16| -> Result<String, String> {
        let a = format!("{service}:{port}");
        check_host_port(&a)
            .map(|_| a.clone())
            .map_err(|why| format!("mesh.{field}: invalid value {a:?}: {why}"))
    };
    match (&p.zipkin, &p.opentelemetry, &p.envoy_file_access_log) {
        (Some(z), None, None) => Ok(ProviderKind::Tracing(Collector {
            provider: "zipkin",
            address: addr(format!("extensionProviders[{i}].zipkin"), &z.service, z.port)?,
            path: None,
        })),
        // Istio's opentelemetry provider: OTLP/HTTP with `http`, OTLP/gRPC without (its default).
        (None, Some(o), None) => Ok(ProviderKind::Tracing(Collector {
            provider: match o.http {
                Some(_) => "opentelemetry",
                None => "opentelemetry-grpc",
            },
            address: addr(
                format!("extensionProviders[{i}].opentelemetry"),
                &o.service,
                o.port,
            )?,
            path: o.http.as_ref().and_then(|h| h.path.clone()),
        })),
        (None, None, Some(f)) => {
            let field = format!("mesh.extensionProviders[{i}].envoyFileAccessLog");
            if f.path != "/dev/stdout" {
                return Err(format!(
                    "{field}.path: invalid value {:?}: only /dev/stdout is supported",
                    f.path
                ));
            }
            let format = f.log_format.as_ref();
            if let Some(t) = format.and_then(|l| l.text.as_ref()).filter(|t| !t.is_empty()) {
                return Err(format!(
                    "{field}.logFormat.text: invalid value {t:?}: custom formats are not supported yet (leave it empty for Istio's default line)"
                ));
            }
            let labels = format.and_then(|l| l.labels.as_ref());
            if labels.is_some_and(|l| !l.is_empty()) {
                return Err(format!(
                    "{field}.logFormat.labels: invalid value: custom JSON fields are not supported yet (use {{}} for Istio's default JSON)"
                ));
            }
            Ok(ProviderKind::AccessLog(if labels.is_some() {
                "JSON"
            } else {
                "TEXT"
            }))
        }
        _ => Err(format!(
            "mesh.extensionProviders[{i}] ({:?}): invalid value: a provider needs exactly one of zipkin, opentelemetry, envoyFileAccessLog",
            p.name
        )),
    }
}

impl MeshSettings {
    /// Every tracing provider by name (whether or not tracing is on by default: a Telemetry
    /// rule may name one), or an error naming the field.
    pub fn tracing_providers(&self) -> Result<Vec<NamedCollector>, String> {
        let mut out = Vec::new();
        for (i, p) in self.extension_providers.iter().enumerate() {
            if let ProviderKind::Tracing(c) = provider_kind(i, p)? {
                out.push(NamedCollector {
                    name: p.name.clone(),
                    provider: c.provider,
                    address: c.address,
                    path: c.path,
                });
            }
        }
        Ok(out)
    }

    /// Every access-log provider by name (`envoyFileAccessLog` entries), or an error naming the
    /// field.
    pub fn access_log_providers(&self) -> Result<Vec<NamedAccessLog>, String> {
        let mut out = Vec::new();
        for (i, p) in self.extension_providers.iter().enumerate() {
            if let ProviderKind::AccessLog(encoding) = provider_kind(i, p)? {
                out.push(NamedAccessLog {
                    name: p.name.clone(),
                    encoding,
                });
            }
        }
        Ok(out)
    }

    /// The collector tracing goes to (`None`: tracing off), or an error naming the field.
    pub fn collector(&self) -> Result<Option<Collector>, String> {
        if !self.enable_tracing {
            return Ok(None);
        }
        if let Some(name) = self.default_providers.tracing.first() {
            let Some((i, p)) = self
                .extension_providers
                .iter()
                .enumerate()
                .find(|(_, p)| &p.name == name)
            else {
                return Err(format!(
                    "mesh.defaultProviders.tracing: invalid value {name:?}: no extensionProviders entry has that name"
                ));
            };
            return match provider_kind(i, p)? {
                ProviderKind::Tracing(c) => Ok(Some(c)),
                ProviderKind::AccessLog(_) => Err(format!(
                    "mesh.defaultProviders.tracing: invalid value {name:?}: extensionProviders[{i}] is an access-log provider, not a tracing one"
                )),
            };
        }
        match &self.default_config.tracing.zipkin {
            Some(z) => {
                check_host_port(&z.address).map_err(|why| {
                    format!(
                        "mesh.defaultConfig.tracing.zipkin.address: invalid value {:?}: {why}",
                        z.address
                    )
                })?;
                Ok(Some(Collector {
                    provider: "zipkin",
                    address: z.address.clone(),
                    path: None,
                }))
            }
            None => Err(
                "mesh.enableTracing: invalid value true: no collector; set mesh.defaultProviders.tracing (naming an extensionProviders entry) or mesh.defaultConfig.tracing.zipkin.address"
                    .into(),
            ),
        }
    }

    /// Checks every field; the error names the field, the value and why.
    pub fn validate(&self) -> Result<(), String> {
        for (i, v) in self.default_service_export_to.iter().enumerate() {
            if !matches!(v.as_str(), "*" | "." | "~") && !crate::discovery::is_namespace(v) {
                return Err(format!(
                    "mesh.defaultServiceExportTo[{i}]: invalid value {v:?}: must be *, ., ~ or a namespace name"
                ));
            }
        }
        let s = self.default_config.tracing.sampling;
        if !(0.0..=100.0).contains(&s) {
            return Err(format!(
                "mesh.defaultConfig.tracing.sampling: invalid value {s}: must be 0 to 100"
            ));
        }
        if let Some(p) = self
            .extension_providers
            .iter()
            .filter_map(|p| p.opentelemetry.as_ref()?.http.as_ref()?.path.as_ref())
            .find(|p| !p.starts_with('/') || p.bytes().any(|b| b.is_ascii_whitespace()))
        {
            return Err(format!(
                "mesh.extensionProviders[].opentelemetry.http.path: invalid value {p:?}: must start with /"
            ));
        }
        for (i, p) in self.extension_providers.iter().enumerate() {
            if p.name.is_empty()
                || p.name.len() > 253
                || p.name
                    .bytes()
                    .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
            {
                return Err(format!(
                    "mesh.extensionProviders[{i}].name: invalid value {:?}: a name without spaces is required (at most 253)",
                    p.name
                ));
            }
            if self.extension_providers[..i]
                .iter()
                .any(|q| q.name == p.name)
            {
                return Err(format!(
                    "mesh.extensionProviders[{i}].name: invalid value {:?}: the name of another entry",
                    p.name
                ));
            }
            provider_kind(i, p)?;
        }
        if let Some(m) = &self.mesh_id {
            if m.is_empty()
                || m.len() > 253
                || !m
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
            {
                return Err(format!(
                    "mesh.meshId: invalid value {m:?}: letters, digits, '-', '.', '_' (at most 253)"
                ));
            }
        }
        match self.access_log_file.as_str() {
            "" | "/dev/stdout" => {}
            f => {
                return Err(format!(
                    "mesh.accessLogFile: invalid value {f:?}: only /dev/stdout or empty (off) are supported"
                ))
            }
        }
        match self.access_log_encoding.as_str() {
            "TEXT" | "JSON" => {}
            e => {
                return Err(format!(
                    "mesh.accessLogEncoding: invalid value {e:?}: must be TEXT or JSON"
                ))
            }
        }
        self.collector().map(|_| ())
    }

    /// The proxy's environment for these settings (after [`MeshSettings::validate`]).
    pub fn proxy_env(&self) -> Vec<(&'static str, String)> {
        let mut env = vec![
            (
                "REMORA_ACCESS_LOG",
                if self.access_log_file.is_empty() {
                    "off".to_string()
                } else {
                    "stdout".to_string()
                },
            ),
            (
                "REMORA_ACCESS_LOG_ENCODING",
                self.access_log_encoding.clone(),
            ),
        ];
        if let Ok(logs) = self.access_log_providers() {
            if !logs.is_empty() {
                env.push((
                    "REMORA_ACCESS_LOG_PROVIDERS",
                    serde_json::to_string(&logs).unwrap_or_default(),
                ));
            }
        }
        let collector = self.collector().ok().flatten();
        let named = self.tracing_providers().unwrap_or_default();
        if let Some(c) = &collector {
            env.push(("REMORA_TRACING_PROVIDER", c.provider.to_string()));
            env.push(("REMORA_TRACING_ADDRESS", c.address.clone()));
            if let Some(p) = &c.path {
                env.push(("REMORA_TRACING_PATH", p.clone()));
            }
        }
        if !named.is_empty() {
            env.push((
                "REMORA_TRACING_PROVIDERS",
                serde_json::to_string(&named).unwrap_or_default(),
            ));
        }
        if collector.is_some() || !named.is_empty() {
            env.push((
                "REMORA_TRACING_SAMPLING",
                self.default_config.tracing.sampling.to_string(),
            ));
        }
        if let Some(m) = &self.mesh_id {
            env.push(("ISTIO_META_MESH_ID", m.clone()));
        }
        env
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from(yaml: &str) -> MeshSettings {
        serde_yaml_ng::from_str(yaml).unwrap()
    }

    #[test]
    fn defaults_log_text_to_stdout_and_do_not_trace() {
        let m = MeshSettings::default();
        assert_eq!(m.validate(), Ok(()));
        assert_eq!(
            m.proxy_env(),
            vec![
                ("REMORA_ACCESS_LOG", "stdout".to_string()),
                ("REMORA_ACCESS_LOG_ENCODING", "TEXT".to_string()),
            ]
        );
    }

    #[test]
    fn the_default_service_export_is_checked() {
        let m = from("defaultServiceExportTo: [\".\", shop]\n");
        assert_eq!(m.default_service_export_to, [".", "shop"]);
        assert_eq!(m.validate(), Ok(()));
        for bad in ["Shop", "a/b", ""] {
            let m = MeshSettings {
                default_service_export_to: vec!["*".into(), bad.into()],
                ..MeshSettings::default()
            };
            assert_eq!(
                m.validate(),
                Err(format!("mesh.defaultServiceExportTo[1]: invalid value {bad:?}: must be *, ., ~ or a namespace name"))
            );
        }
    }

    #[test]
    fn providers_become_the_proxys_collector() {
        let m = from(
            r#"
enableTracing: true
defaultConfig: {tracing: {sampling: 10}}
defaultProviders: {tracing: [otel]}
meshId: mesh1
accessLogFile: ""
accessLogEncoding: JSON
extensionProviders:
- name: zipkin
  zipkin: {service: zipkin.istio-system.svc.cluster.local, port: 9411, maxTagLength: 256}
- name: otel
  opentelemetry: {service: otel.observability.svc.cluster.local, port: 4318, http: {path: /v1/traces}}
"#,
        );
        assert_eq!(m.validate(), Ok(()));
        assert_eq!(
            m.proxy_env(),
            vec![
                ("REMORA_ACCESS_LOG", "off".to_string()),
                ("REMORA_ACCESS_LOG_ENCODING", "JSON".to_string()),
                ("REMORA_TRACING_PROVIDER", "opentelemetry".to_string()),
                (
                    "REMORA_TRACING_ADDRESS",
                    "otel.observability.svc.cluster.local:4318".to_string()
                ),
                ("REMORA_TRACING_PATH", "/v1/traces".to_string()),
                (
                    "REMORA_TRACING_PROVIDERS",
                    concat!(
                        r#"[{"name":"zipkin","provider":"zipkin","address":"zipkin.istio-system.svc.cluster.local:9411"},"#,
                        r#"{"name":"otel","provider":"opentelemetry","address":"otel.observability.svc.cluster.local:4318","path":"/v1/traces"}]"#
                    )
                    .to_string()
                ),
                ("REMORA_TRACING_SAMPLING", "10".to_string()),
                ("ISTIO_META_MESH_ID", "mesh1".to_string()),
            ]
        );
        let legacy = from(
            "enableTracing: true\ndefaultConfig: {tracing: {zipkin: {address: zipkin.istio-system:9411}}}",
        );
        assert_eq!(
            legacy.collector(),
            Ok(Some(Collector {
                provider: "zipkin",
                address: "zipkin.istio-system:9411".into(),
                path: None
            }))
        );
        assert!(legacy
            .proxy_env()
            .contains(&("REMORA_TRACING_SAMPLING", "1".to_string())));
        // Without `http`, Istio's opentelemetry provider exports over gRPC.
        let grpc = from(
            "enableTracing: true\ndefaultProviders: {tracing: [otel]}\nextensionProviders:\n- name: otel\n  opentelemetry: {service: otel.observability.svc.cluster.local, port: 4317}",
        );
        assert_eq!(
            grpc.collector(),
            Ok(Some(Collector {
                provider: "opentelemetry-grpc",
                address: "otel.observability.svc.cluster.local:4317".into(),
                path: None
            }))
        );
        assert_eq!(
            grpc.tracing_providers().unwrap()[0].provider,
            "opentelemetry-grpc"
        );
    }

    /// Tracing off by default, the providers still go to the proxy by name (a Telemetry rule
    /// may choose one), and the file access-log providers with their encoding.
    #[test]
    fn named_providers_go_to_the_proxy_without_default_tracing() {
        let m = from(
            r#"
extensionProviders:
- name: zipkin
  zipkin: {service: zipkin.istio-system, port: 9411}
- name: stdout-json
  envoyFileAccessLog: {path: /dev/stdout, logFormat: {labels: {}}}
- name: stdout-text
  envoyFileAccessLog: {path: /dev/stdout}
"#,
        );
        assert_eq!(m.validate(), Ok(()));
        assert_eq!(m.collector(), Ok(None));
        assert_eq!(
            m.proxy_env(),
            vec![
                ("REMORA_ACCESS_LOG", "stdout".to_string()),
                ("REMORA_ACCESS_LOG_ENCODING", "TEXT".to_string()),
                (
                    "REMORA_ACCESS_LOG_PROVIDERS",
                    r#"[{"name":"stdout-json","encoding":"JSON"},{"name":"stdout-text","encoding":"TEXT"}]"#
                        .to_string()
                ),
                (
                    "REMORA_TRACING_PROVIDERS",
                    r#"[{"name":"zipkin","provider":"zipkin","address":"zipkin.istio-system:9411"}]"#
                        .to_string()
                ),
                ("REMORA_TRACING_SAMPLING", "1".to_string()),
            ]
        );
    }

    #[test]
    fn bad_settings_name_the_field() {
        for (yaml, field) in [
            ("enableTracing: true", "mesh.enableTracing"),
            (
                "enableTracing: true\ndefaultProviders: {tracing: [nope]}",
                "mesh.defaultProviders.tracing",
            ),
            (
                "enableTracing: true\ndefaultProviders: {tracing: [z]}\nextensionProviders: [{name: z}]",
                "mesh.extensionProviders[0]",
            ),
            (
                "enableTracing: true\ndefaultProviders: {tracing: [z]}\nextensionProviders: [{name: z, zipkin: {service: 'bad host', port: 9411}}]",
                "mesh.extensionProviders[0].zipkin",
            ),
            (
                "defaultConfig: {tracing: {sampling: 101}}",
                "mesh.defaultConfig.tracing.sampling",
            ),
            ("accessLogFile: /var/log/x", "mesh.accessLogFile"),
            (
                "extensionProviders: [{name: f, envoyFileAccessLog: {path: /var/log/a}}]",
                "mesh.extensionProviders[0].envoyFileAccessLog.path",
            ),
            (
                "extensionProviders: [{name: f, envoyFileAccessLog: {path: /dev/stdout, logFormat: {text: '%START_TIME%'}}}]",
                "mesh.extensionProviders[0].envoyFileAccessLog.logFormat.text",
            ),
            (
                "extensionProviders: [{name: f, envoyFileAccessLog: {path: /dev/stdout, logFormat: {labels: {a: b}}}}]",
                "mesh.extensionProviders[0].envoyFileAccessLog.logFormat.labels",
            ),
            (
                "extensionProviders: [{name: z, zipkin: {service: z, port: 1}}, {name: z, zipkin: {service: y, port: 1}}]",
                "mesh.extensionProviders[1].name",
            ),
            (
                "extensionProviders: [{name: '', zipkin: {service: z, port: 1}}]",
                "mesh.extensionProviders[0].name",
            ),
            (
                "enableTracing: true\ndefaultProviders: {tracing: [f]}\nextensionProviders: [{name: f, envoyFileAccessLog: {path: /dev/stdout}}]",
                "mesh.defaultProviders.tracing",
            ),
            ("accessLogEncoding: XML", "mesh.accessLogEncoding"),
            ("meshId: 'a b'", "mesh.meshId"),
        ] {
            let e = from(yaml).validate().unwrap_err();
            assert!(e.starts_with(field), "{yaml}: {e}");
        }
        assert!(serde_yaml_ng::from_str::<MeshSettings>("enableTracin: true").is_err());
    }
}
