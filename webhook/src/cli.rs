//! Offline `inject` and `check-inject`: the same decide/render path as the server, on YAML files
//! holding Pods, Deployments, StatefulSets, DaemonSets, ReplicaSets, Jobs, CronJobs or Lists.
//! [`inject_command`] and [`check_inject_command`] are the whole commands, run by `remora inject`
//! and `remora check-inject -f` and by their aliases `remora-webhook inject|check-inject`.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{anyhow, bail, Context};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::config::Config;
use crate::decide::{namespace_selected, string_map};
use crate::inject::{inject_pod, Outcome};
use crate::workload::{describe, pod_from_template, template_pointer};

/// Reads `-f FILE` (or stdin for `-`).
pub fn read_input(file: &str) -> anyhow::Result<String> {
    if file == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .context("reading stdin")?;
        Ok(s)
    } else {
        std::fs::read_to_string(Path::new(file)).with_context(|| format!("-f {file}: cannot read"))
    }
}

/// Loads `--config FILE` (the built-in defaults without one).
pub fn load_config(path: Option<&Path>) -> anyhow::Result<Config> {
    match path {
        None => Ok(Config::default()),
        Some(p) => {
            Config::from_file(p)?.ok_or_else(|| anyhow!("--config {}: no such file", p.display()))
        }
    }
}

/// `inject -f FILE [--config FILE] [-n NAMESPACE]`: prints the injected documents as YAML.
/// Skipped pods are said on stderr; a denied one is an `error:` line on stderr, nothing is
/// printed and the exit code is 1. `namespace` is for objects that name none.
pub fn inject_command(
    file: &str,
    config: Option<&Path>,
    namespace: &str,
) -> anyhow::Result<ExitCode> {
    let cfg = load_config(config)?;
    let docs = parse_docs(&read_input(file)?).map_err(|e| anyhow!("-f {file}: {e}"))?;
    let (docs, reports) = inject_docs(docs, namespace, &cfg);
    let mut denied = false;
    for r in &reports {
        match r.decision {
            "denied" => {
                denied = true;
                eprintln!("error: {} denied: {}", r.what, r.reason);
            }
            "skipped" => eprintln!("{} skipped: {}", r.what, r.reason),
            _ => {}
        }
    }
    if denied {
        return Ok(ExitCode::FAILURE);
    }
    print!("{}", to_yaml(&docs)?);
    Ok(ExitCode::SUCCESS)
}

/// `check-inject -f FILE [--namespace-labels k=v,...] [--config FILE] [-n NAMESPACE]`: prints
/// [`check_inject`]'s paragraphs.
pub fn check_inject_command(
    file: &str,
    namespace_labels: Option<&str>,
    config: Option<&Path>,
    namespace: &str,
) -> anyhow::Result<ExitCode> {
    let cfg = load_config(config)?;
    let labels = namespace_labels.map(parse_labels).transpose()?;
    let docs = parse_docs(&read_input(file)?).map_err(|e| anyhow!("-f {file}: {e}"))?;
    print!("{}", check_inject(&docs, namespace, labels.as_ref(), &cfg));
    Ok(ExitCode::SUCCESS)
}

/// Parses a (multi-document) YAML or JSON text into JSON values; empty documents are dropped.
pub fn parse_docs(text: &str) -> anyhow::Result<Vec<Value>> {
    let mut out = Vec::new();
    for (i, doc) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        let v = Value::deserialize(doc).map_err(|e| anyhow!("document {}: {e}", i + 1))?;
        match v {
            Value::Null => {}
            Value::Object(_) => out.push(v),
            other => bail!(
                "document {}: expected a Kubernetes object, got {}",
                i + 1,
                other
            ),
        }
    }
    Ok(out)
}

/// Serializes documents as multi-document YAML.
pub fn to_yaml(docs: &[Value]) -> anyhow::Result<String> {
    let mut out = String::new();
    for (i, d) in docs.iter().enumerate() {
        if i > 0 {
            out.push_str("---\n");
        }
        out.push_str(&serde_yaml_ng::to_string(d).context("writing YAML")?);
    }
    Ok(out)
}

/// The result of one pod-bearing document.
#[derive(Debug, Clone, PartialEq)]
pub struct DocReport {
    pub what: String,
    pub namespace: String,
    /// injected, skipped or denied.
    pub decision: &'static str,
    pub reason: String,
}

fn namespace_of(doc: &Value, default_ns: &str) -> String {
    doc.pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .unwrap_or(default_ns)
        .to_string()
}

/// Injects one document in place (Lists recursively); other kinds are left unchanged.
fn inject_doc(doc: &mut Value, default_ns: &str, cfg: &Config, reports: &mut Vec<DocReport>) {
    let kind = doc
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    if kind == "List" || kind.ends_with("List") {
        if let Some(items) = doc.get_mut("items").and_then(Value::as_array_mut) {
            for item in items {
                inject_doc(item, default_ns, cfg, reports);
            }
        }
        return;
    }
    let Some(ptr) = template_pointer(&kind) else {
        return;
    };
    let ns = namespace_of(doc, default_ns);
    let what = describe(doc);
    let pod = if ptr.is_empty() {
        doc.clone()
    } else {
        match doc.pointer(ptr) {
            Some(t) => pod_from_template(doc, t, &ns),
            None => {
                reports.push(DocReport {
                    what,
                    namespace: ns,
                    decision: "denied",
                    reason: format!("{kind} has no pod template at {ptr}"),
                });
                return;
            }
        }
    };
    let outcome = inject_pod(&pod, &ns, cfg);
    reports.push(DocReport {
        what,
        namespace: ns,
        decision: outcome.decision(),
        reason: outcome.reason().to_string(),
    });
    if let Outcome::Injected { pod: injected, .. } = outcome {
        if ptr.is_empty() {
            *doc = injected;
        } else if let Some(t) = doc.pointer_mut(ptr) {
            if !t.get("metadata").is_some_and(Value::is_object) {
                t["metadata"] = json!({});
            }
            t["metadata"]["annotations"] = injected
                .pointer("/metadata/annotations")
                .cloned()
                .unwrap_or_else(|| json!({}));
            if let Some(labels) = injected.pointer("/metadata/labels") {
                t["metadata"]["labels"] = labels.clone();
            }
            t["spec"] = injected.get("spec").cloned().unwrap_or_else(|| json!({}));
        }
    }
}

/// Injects every pod-bearing document; returns the documents and one report per pod template.
pub fn inject_docs(
    mut docs: Vec<Value>,
    default_ns: &str,
    cfg: &Config,
) -> (Vec<Value>, Vec<DocReport>) {
    let mut reports = Vec::new();
    for d in docs.iter_mut() {
        inject_doc(d, default_ns, cfg, &mut reports);
    }
    (docs, reports)
}

/// Parses `k=v,k2=v2`.
pub fn parse_labels(s: &str) -> anyhow::Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let Some((k, v)) = item.split_once('=') else {
            bail!("--namespace-labels: invalid value {item:?}: expected key=value");
        };
        if k.is_empty() {
            bail!("--namespace-labels: invalid value {item:?}: empty key");
        }
        out.insert(k.trim().to_string(), v.trim().to_string());
    }
    Ok(out)
}

/// `check-inject`: one paragraph per pod-bearing document saying what the webhook would do.
pub fn check_inject(
    docs: &[Value],
    default_ns: &str,
    ns_labels: Option<&BTreeMap<String, String>>,
    cfg: &Config,
) -> String {
    let mut out = String::new();
    let mut any = false;
    for doc in docs {
        let mut one = vec![doc.clone()];
        // Lists: check each item.
        if let Some(items) = doc.get("items").and_then(Value::as_array) {
            one = items.clone();
        }
        for d in &one {
            let Some(ptr) = d
                .get("kind")
                .and_then(Value::as_str)
                .and_then(template_pointer)
            else {
                continue;
            };
            any = true;
            let ns = namespace_of(d, default_ns);
            let what = describe(d);
            let pod_labels = string_map(
                d.pointer(&format!("{ptr}/metadata/labels"))
                    .or_else(|| d.pointer("/metadata/labels")),
            );
            let selected = match ns_labels {
                Some(l) => namespace_selected(l, &pod_labels),
                None => Ok("namespace labels not given (--namespace-labels); assuming the webhook is called".into()),
            };
            match selected {
                Err(why) => {
                    out.push_str(&format!(
                        "{what} in namespace {ns}: NOT INJECTED\n  why: {why}\n"
                    ));
                }
                Ok(sel) => {
                    let (_, reports) = inject_docs(vec![d.clone()], default_ns, cfg);
                    for r in reports {
                        let verdict = match r.decision {
                            "injected" => "INJECTED",
                            "skipped" => "NOT INJECTED (skipped)",
                            _ => "DENIED (pod creation fails)",
                        };
                        out.push_str(&format!(
                            "{what} in namespace {ns}: {verdict}\n  webhook: {sel}\n  why: {}\n",
                            r.reason
                        ));
                    }
                }
            }
        }
    }
    if !any {
        out.push_str("no Pod or workload (Deployment, StatefulSet, DaemonSet, ReplicaSet, Job, CronJob) in the input\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const MULTI: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: web}
spec: {ports: [{port: 80}]}
---
apiVersion: batch/v1
kind: CronJob
metadata: {name: nightly}
spec:
  schedule: "0 1 * * *"
  jobTemplate:
    spec:
      template:
        spec:
          restartPolicy: OnFailure
          containers: [{name: job, image: busybox}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: bad}
spec:
  selector: {matchLabels: {app: bad}}
  template:
    metadata:
      labels: {app: bad}
      annotations: {traffic.sidecar.istio.io/includeInboundPorts: "70000"}
    spec:
      containers: [{name: bad, image: busybox}]
"#;

    #[test]
    fn multi_doc_inject() {
        let docs = parse_docs(MULTI).unwrap();
        assert_eq!(docs.len(), 3);
        let (out, reports) = inject_docs(docs.clone(), "default", &Config::default());
        assert_eq!(out[0], docs[0], "non-workloads pass unchanged");
        let inits = out[1]
            .pointer("/spec/jobTemplate/spec/template/spec/initContainers")
            .unwrap();
        assert_eq!(inits[0]["name"], "remora-proxy");
        assert_eq!(reports.len(), 2);
        assert_eq!(reports[0].decision, "injected");
        assert_eq!(reports[1].decision, "denied");
        assert!(reports[1].reason.contains("70000"));
        let yaml = to_yaml(&out).unwrap();
        assert_eq!(parse_docs(&yaml).unwrap(), out);
    }

    #[test]
    fn check_inject_reports_namespace_and_decision() {
        let docs = parse_docs(MULTI).unwrap();
        let labels = parse_labels("istio-injection=enabled").unwrap();
        let text = check_inject(&docs, "default", Some(&labels), &Config::default());
        assert!(
            text.contains("CronJob/nightly in namespace default: INJECTED"),
            "{text}"
        );
        assert!(
            text.contains("Deployment/bad in namespace default: DENIED"),
            "{text}"
        );
        let none = parse_labels("").unwrap();
        let text = check_inject(&docs, "default", Some(&none), &Config::default());
        assert!(
            text.contains("CronJob/nightly in namespace default: NOT INJECTED"),
            "{text}"
        );
        assert!(parse_labels("novalue").is_err());
    }
}
