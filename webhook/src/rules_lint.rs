//! The rules linter shared by the validating webhook (`POST /validate`, [`crate::validate_rules`])
//! and `remora analyze`: the proxy's rule linter (`remora_model::lint`) over every rules
//! ConfigMap, plus the check only a cluster can answer, as `istioctl analyze` IST0101
//! (ReferencedResourceNotFound): a VirtualService destination host or DestinationRule host that
//! names no Service of the cluster and no ServiceEntry (the webhook, which reads no Services,
//! drops those findings).

use std::collections::BTreeSet;
use std::fmt::Write as _;

use base64::Engine as _;
use serde::Serialize;
use serde_json::Value;

use remora_model::lint::{self as validate, Finding};
use remora_model::rules::host::{match_score, qualify};
use remora_model::rules::load::{decode_inputs, Decoded, Inputs};
use remora_model::rules::LoadContext;

/// The label that marks a ConfigMap as rules (besides the configured name): checked by the
/// validating webhook and analyzed by `remora analyze`.
pub const RULES_LABEL: &str = "remora.dev/rules";

/// The proxy reads visible `*.yaml`, `*.yml`, `*.json` files of its rules directory
/// (`remora_model::rules::load::read_inputs`); the same filter over the ConfigMap's keys.
fn read_by_proxy(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    !name.starts_with('.')
        && (lower.ends_with(".yaml") || lower.ends_with(".yml") || lower.ends_with(".json"))
}

/// The files the kubelet writes for a ConfigMap (`data` and `binaryData` keys) that the proxy
/// reads, sorted by name. An absent ConfigMap (`None`) is the empty directory the optional volume
/// mounts.
pub fn config_map_files(cm: Option<&Value>) -> Result<Vec<(String, Vec<u8>)>, String> {
    let mut files = Vec::new();
    let Some(cm) = cm else {
        return Ok(files);
    };
    if let Some(data) = cm.get("data").and_then(Value::as_object) {
        for (k, v) in data {
            let s = v
                .as_str()
                .ok_or_else(|| format!("data.{k}: invalid value: must be a string"))?;
            files.push((k.clone(), s.as_bytes().to_vec()));
        }
    }
    if let Some(data) = cm.get("binaryData").and_then(Value::as_object) {
        for (k, v) in data {
            let bytes = v
                .as_str()
                .and_then(|s| base64::engine::general_purpose::STANDARD.decode(s).ok())
                .ok_or_else(|| format!("binaryData.{k}: invalid value: must be base64"))?;
            files.push((k.clone(), bytes));
        }
    }
    files.retain(|(k, _)| read_by_proxy(k));
    files.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(files)
}

/// One finding, with the ConfigMap it is in.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Message {
    /// `error` or `warning`.
    pub level: &'static str,
    /// `namespace/name` of the ConfigMap (empty for a finding about an Istio object).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub config_map: String,
    /// `Kind namespace/name` of an Istio object in the cluster the finding is about (empty for
    /// a finding about a ConfigMap's content).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub object: String,
    pub file: String,
    #[serde(skip_serializing_if = "is_zero")]
    pub document: usize,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub field: String,
    pub message: String,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// The result over all ConfigMaps.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Analysis {
    /// `namespace/name` of every ConfigMap analyzed.
    pub config_maps: Vec<String>,
    pub messages: Vec<Message>,
}

impl Analysis {
    pub fn errors(&self) -> usize {
        self.messages.iter().filter(|m| m.level == "error").count()
    }
    pub fn warnings(&self) -> usize {
        self.messages
            .iter()
            .filter(|m| m.level == "warning")
            .count()
    }
}

fn meta(v: &Value, field: &str) -> String {
    v.pointer(&format!("/metadata/{field}"))
        .and_then(Value::as_str)
        .unwrap_or("?")
        .to_string()
}

/// `(namespace, name)` of every Service.
pub fn service_set(services: &[Value]) -> BTreeSet<(String, String)> {
    services
        .iter()
        .map(|s| (meta(s, "namespace"), meta(s, "name")))
        .collect()
}

struct DecodedCm {
    key: String,
    ns: String,
    decoded: Decoded,
}

/// Runs every check over `config_maps` against the cluster's `services`, for a mesh whose root
/// namespace is `root_namespace`.
pub fn analyze(
    config_maps: &[Value],
    services: &[Value],
    cluster_domain: &str,
    root_namespace: &str,
) -> Analysis {
    let mut out = Analysis::default();
    let svcs = service_set(services);
    let mut decoded_all = Vec::new();
    for cm in config_maps {
        let ns = meta(cm, "namespace");
        let key = format!("{ns}/{}", meta(cm, "name"));
        out.config_maps.push(key.clone());
        let push = |out: &mut Analysis, level: &'static str, f: Finding| {
            out.messages.push(Message {
                level,
                config_map: key.clone(),
                object: String::new(),
                file: f.file,
                document: f.document,
                field: f.field,
                message: f.reason,
            })
        };
        // Keys the proxy does not read.
        let mut all_keys: Vec<String> = ["data", "binaryData"]
            .iter()
            .filter_map(|f| cm.get(*f).and_then(Value::as_object))
            .flat_map(|m| m.keys().cloned())
            .collect();
        all_keys.sort();
        let files = match config_map_files(Some(cm)) {
            Ok(f) => f,
            Err(e) => {
                push(
                    &mut out,
                    "error",
                    Finding {
                        file: String::new(),
                        document: 0,
                        field: String::new(),
                        reason: e,
                    },
                );
                continue;
            }
        };
        for k in &all_keys {
            if !files.iter().any(|(n, _)| n == k) {
                push(&mut out, "warning", Finding {
                    file: k.clone(),
                    document: 0,
                    field: String::new(),
                    reason: "not read by the proxy: only visible *.yaml, *.yml and *.json keys are rules".into(),
                });
            }
        }
        let mut texts = Vec::new();
        for (name, bytes) in &files {
            match std::str::from_utf8(bytes) {
                Ok(t) => texts.push((name.as_str(), t)),
                Err(e) => push(
                    &mut out,
                    "error",
                    Finding {
                        file: name.clone(),
                        document: 0,
                        field: String::new(),
                        reason: format!("not UTF-8 text: {e}"),
                    },
                ),
            }
        }
        let ctx = LoadContext {
            namespace: ns.clone(),
            cluster_domain: cluster_domain.to_string(),
            root_namespace: root_namespace.to_string(),
            ..LoadContext::default()
        };
        let report = validate::run_files(&texts, &ctx);
        for e in report.errors {
            push(&mut out, "error", e);
        }
        for w in report.warnings {
            push(&mut out, "warning", w);
        }
        let inputs = Inputs {
            dir: key.clone().into(),
            files: files.clone(),
            skipped: Vec::new(),
            hash: String::new(),
        };
        decoded_all.push(DecodedCm {
            key: key.clone(),
            ns,
            decoded: decode_inputs(&inputs, &ctx),
        });
    }
    // ServiceEntry hosts of every rules ConfigMap analyzed.
    let se_hosts: Vec<String> = decoded_all
        .iter()
        .flat_map(|d| d.decoded.service_entries.iter())
        .flat_map(|se| se.hosts.iter().cloned())
        .collect();
    let suffix = format!(".svc.{cluster_domain}");
    let missing = |host: &str, rule_ns: &str| -> Option<String> {
        let h = qualify(host, rule_ns, cluster_domain);
        if h.starts_with('*') || se_hosts.iter().any(|p| match_score(p, &h).is_some()) {
            return None;
        }
        let local = h.strip_suffix(&suffix)?;
        let (name, ns) = local.split_once('.')?;
        if svcs.contains(&(ns.to_string(), name.to_string())) {
            return None;
        }
        Some(format!(
            "host {h}: no Service {name} in namespace {ns} and no ServiceEntry for it (IST0101 ReferencedResourceNotFound)"
        ))
    };
    for d in &decoded_all {
        let mut add = |file: &str, document: usize, field: String, msg: String| {
            out.messages.push(Message {
                level: "warning",
                config_map: d.key.clone(),
                object: String::new(),
                file: file.to_string(),
                document,
                field,
                message: msg,
            })
        };
        for vs in &d.decoded.virtual_services {
            let routes = vs
                .http
                .iter()
                .enumerate()
                .map(|(i, r)| (path_or(&r.path, "http", i), &r.route))
                .chain(
                    vs.tcp
                        .iter()
                        .enumerate()
                        .map(|(i, r)| (path_or(&r.path, "tcp", i), &r.route)),
                )
                .chain(
                    vs.tls
                        .iter()
                        .enumerate()
                        .map(|(i, r)| (path_or(&r.path, "tls", i), &r.route)),
                );
            for (rp, dests) in routes {
                for (di, wd) in dests.iter().enumerate() {
                    if let Some(m) = missing(&wd.destination.host, &d.ns) {
                        add(
                            &vs.meta.file,
                            vs.meta.document,
                            format!("{rp}.route[{di}].destination.host"),
                            m,
                        );
                    }
                }
            }
        }
        for dr in &d.decoded.destination_rules {
            if let Some(m) = missing(&dr.host, &d.ns) {
                add(&dr.meta.file, dr.meta.document, "spec.host".into(), m);
            }
        }
    }
    out
}

fn path_or(path: &str, kind: &str, i: usize) -> String {
    if path.is_empty() {
        format!("spec.{kind}[{i}]")
    } else {
        path.to_string()
    }
}

/// One line per message (errors first), then a summary line.
pub fn render_text(a: &Analysis) -> String {
    let mut out = String::new();
    if a.config_maps.is_empty() && a.messages.is_empty() {
        out.push_str(
            "no rules ConfigMaps found (remora-mesh-rules, or label remora.dev/rules=true)\n",
        );
        return out;
    }
    for level in ["error", "warning"] {
        for m in a.messages.iter().filter(|m| m.level == level) {
            if m.config_map.is_empty() {
                let _ = write!(out, "{level}: {}: ", m.object);
            } else {
                let _ = write!(out, "{level}: ConfigMap {}: ", m.config_map);
            }
            if !m.file.is_empty() {
                out.push_str(&m.file);
                if m.document > 0 {
                    let _ = write!(out, " doc {}", m.document);
                }
                out.push_str(": ");
            }
            if !m.field.is_empty() {
                let _ = write!(out, "{}: ", m.field);
            }
            let _ = writeln!(out, "{}", m.message);
        }
    }
    let plural = |n: usize, w: &str| format!("{n} {w}{}", if n == 1 { "" } else { "s" });
    let _ = writeln!(
        out,
        "analyzed {}: {}, {}",
        plural(a.config_maps.len(), "ConfigMap"),
        plural(a.errors(), "error"),
        plural(a.warnings(), "warning")
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const VS: &str = r#"apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  http:
  - route:
    - destination: {host: reviews, subset: v1}
      weight: 50
    - destination: {host: ratings}
      weight: 50
"#;
    const DR: &str = r#"apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews}
spec:
  host: reviews
  subsets:
  - name: v1
    labels: {version: v1}
"#;

    fn cm(ns: &str, data: Value) -> Value {
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "remora-mesh-rules", "namespace": ns}, "data": data})
    }
    fn svc(ns: &str, name: &str) -> Value {
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": ns}})
    }

    #[test]
    fn clean_rules_against_existing_services() {
        let a = analyze(
            &[cm("bookinfo", json!({"vs.yaml": VS, "dr.yaml": DR}))],
            &[svc("bookinfo", "reviews"), svc("bookinfo", "ratings")],
            "cluster.local",
            "remora-system",
        );
        assert_eq!(a.messages, vec![], "{}", render_text(&a));
        assert_eq!(
            render_text(&a),
            "analyzed 1 ConfigMap: 0 errors, 0 warnings\n"
        );
    }

    #[test]
    fn missing_service_is_ist0101_and_service_entry_counts() {
        let a = analyze(
            &[cm(
                "bookinfo",
                json!({"vs.yaml": VS, "dr.yaml": DR, "notes.txt": "x"}),
            )],
            &[svc("bookinfo", "reviews"), svc("other", "ratings")],
            "cluster.local",
            "remora-system",
        );
        let text = render_text(&a);
        assert_eq!(a.errors(), 0, "{text}");
        assert!(text.contains("warning: ConfigMap bookinfo/remora-mesh-rules: vs.yaml doc 1: spec.http[0].route[1].destination.host: host ratings.bookinfo.svc.cluster.local: no Service ratings in namespace bookinfo"), "{text}");
        assert!(text.contains("notes.txt: not read by the proxy"), "{text}");
        assert_eq!(a.warnings(), 2, "{text}");
        let se = r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ratings}
spec:
  hosts: [ratings.bookinfo.svc.cluster.local]
  ports: [{number: 80, name: http}]
  resolution: DNS
"#;
        let a = analyze(
            &[cm(
                "bookinfo",
                json!({"vs.yaml": VS, "dr.yaml": DR, "se.yaml": se}),
            )],
            &[svc("bookinfo", "reviews")],
            "cluster.local",
            "remora-system",
        );
        assert!(!render_text(&a).contains("IST0101"), "{}", render_text(&a));
    }

    #[test]
    fn linter_errors_are_errors() {
        let bad = VS.replace(
            "weight: 50\n    - destination: {host: ratings}\n      weight: 50",
            "weight: 50\n    - destination: {host: ratings}\n      weight: 10",
        );
        let a = analyze(
            &[cm("bookinfo", json!({"vs.yaml": bad}))],
            &[svc("bookinfo", "reviews"), svc("bookinfo", "ratings")],
            "cluster.local",
            "remora-system",
        );
        let text = render_text(&a);
        assert!(text.contains("error: ConfigMap bookinfo/remora-mesh-rules: vs.yaml doc 1: spec.http[0].route: weights sum to 60, not 100"), "{text}");
        assert!(text.contains("subset \"v1\" is not defined"), "{text}");
        assert_eq!(a.errors(), 2, "{text}");
        assert!(
            text.ends_with("analyzed 1 ConfigMap: 2 errors, 0 warnings\n"),
            "{text}"
        );
        assert_eq!(
            render_text(&Analysis::default()),
            "no rules ConfigMaps found (remora-mesh-rules, or label remora.dev/rules=true)\n"
        );
    }
}
