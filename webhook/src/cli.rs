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
use crate::decide::string_map;
use crate::inject::{inject_pod_as, Outcome};
use crate::selectors::{check_revision, select, Entry, Selection, Source, DEFAULT_REVISION};
use crate::workload::{describe, pod_from_template, template_pointer};

/// What the offline commands know of the cluster: the installed revisions' injectors and, when
/// given (`--namespace-labels`), the namespace's labels. With them the webhook entries' selectors
/// decide which revision's injector is called (`selectors::select`), as the API server does.
#[derive(Clone, Debug)]
pub struct Offline {
    /// One injector config per installed revision (`--revision`), in the order given.
    pub injectors: Vec<Config>,
    /// The namespace's labels; `None`: not given, the first revision is assumed to be called.
    pub ns_labels: Option<BTreeMap<String, String>>,
}

impl Offline {
    /// `cfg` for each of `revisions` (none given: the config's own revision, `default` unless
    /// the file names one). A revision name that is not valid, or a config file naming another
    /// revision, is an error naming the flag or field.
    pub fn new(
        cfg: &Config,
        revisions: &[String],
        ns_labels: Option<BTreeMap<String, String>>,
    ) -> anyhow::Result<Offline> {
        let own = [cfg.revision().to_string()];
        let revisions = if revisions.is_empty() {
            &own[..]
        } else {
            revisions
        };
        let mut injectors: Vec<Config> = Vec::new();
        for r in revisions {
            check_revision(r).map_err(|why| anyhow!("--revision {r:?}: {why}"))?;
            if injectors.iter().any(|c| c.revision() == r) {
                bail!("--revision {r:?}: given twice");
            }
            injectors.push(cfg.clone().with_revision(r)?);
        }
        Ok(Offline {
            injectors,
            ns_labels,
        })
    }

    /// One revision's injector, the namespace labels not known (what `inject_docs` assumes).
    pub fn assumed(cfg: &Config) -> Offline {
        Offline {
            injectors: vec![cfg.clone()],
            ns_labels: None,
        }
    }

    fn revisions(&self) -> Vec<String> {
        self.injectors
            .iter()
            .map(|c| c.revision().to_string())
            .collect()
    }

    /// The entry called for a pod labelled `pod_labels` in `namespace`, and the injector of its
    /// revision; or why no entry is called.
    pub fn selection(
        &self,
        namespace: &str,
        pod_labels: &BTreeMap<String, String>,
    ) -> Result<(Selection, &Config), String> {
        let sel = match &self.ns_labels {
            Some(l) => select(namespace, l, pod_labels, &self.revisions())?,
            None => {
                let Some(first) = self.injectors.first() else {
                    return Err("no revision installed".into());
                };
                let rev = first.revision();
                let entry = if rev == DEFAULT_REVISION {
                    Entry::Namespace
                } else {
                    Entry::RevNamespace
                };
                Selection::new(rev, entry, Source::Assumed)
            }
        };
        let cfg = self
            .injectors
            .iter()
            .find(|c| c.revision() == sel.revision)
            .ok_or_else(|| format!("revision {} is not installed", sel.revision))?;
        Ok((sel, cfg))
    }
}

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

/// `inject -f FILE [--config FILE] [-n NAMESPACE] [--revision R]... [--namespace-labels
/// k=v,...]`: prints the injected documents as YAML. Skipped pods (and pods no webhook entry is
/// called for, when the namespace labels are given) are said on stderr; a denied one is an
/// `error:` line on stderr, nothing is printed and the exit code is 1. `namespace` is for
/// objects that name none.
pub fn inject_command(
    file: &str,
    config: Option<&Path>,
    namespace: &str,
    revisions: &[String],
    namespace_labels: Option<&str>,
) -> anyhow::Result<ExitCode> {
    let cfg = load_config(config)?;
    let labels = namespace_labels.map(parse_labels).transpose()?;
    let offline = Offline::new(&cfg, revisions, labels)?;
    let docs = parse_docs(&read_input(file)?).map_err(|e| anyhow!("-f {file}: {e}"))?;
    let (docs, reports) = inject_docs_with(docs, namespace, &offline);
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

/// `check-inject -f FILE [--namespace-labels k=v,...] [--config FILE] [-n NAMESPACE]
/// [--revision R]...`: prints [`check_inject`]'s paragraphs.
pub fn check_inject_command(
    file: &str,
    namespace_labels: Option<&str>,
    config: Option<&Path>,
    namespace: &str,
    revisions: &[String],
) -> anyhow::Result<ExitCode> {
    let cfg = load_config(config)?;
    let labels = namespace_labels.map(parse_labels).transpose()?;
    let offline = Offline::new(&cfg, revisions, labels)?;
    let docs = parse_docs(&read_input(file)?).map_err(|e| anyhow!("-f {file}: {e}"))?;
    print!("{}", check_inject(&docs, namespace, &offline));
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

/// Serializes documents as multi-document YAML that YAML 1.1 readers (kubectl's) read back as
/// the same strings (see [`quote_yaml11_booleans`]).
pub fn to_yaml(docs: &[Value]) -> anyhow::Result<String> {
    let mut out = String::new();
    for (i, d) in docs.iter().enumerate() {
        if i > 0 {
            out.push_str("---\n");
        }
        let text = serde_yaml_ng::to_string(d).context("writing YAML")?;
        out.push_str(&quote_yaml11_booleans(&text));
    }
    Ok(out)
}

/// Plain scalars that YAML 1.1 (kubectl's parser) reads as booleans, though YAML 1.2 (ours)
/// reads them as strings.
const YAML11_BOOLEANS: &[&str] = &[
    "y", "Y", "yes", "Yes", "YES", "n", "N", "no", "No", "NO", "on", "On", "ON", "off", "Off",
    "OFF",
];

/// Quote the plain keys and values of `yaml` (as serde_yaml_ng writes it: one key or item per
/// line, block scalars indented under their key) that a YAML 1.1 reader would take for booleans:
/// an env value `"on"` written as `value: on` is the boolean `true` to kubectl, which then refuses
/// the object. Block scalar contents and quoted scalars are left as they are.
pub fn quote_yaml11_booleans(yaml: &str) -> String {
    let quote = |s: &str| {
        if YAML11_BOOLEANS.contains(&s) {
            format!("'{s}'")
        } else {
            s.to_string()
        }
    };
    let mut out = String::with_capacity(yaml.len() + 16);
    // Inside a block scalar: lines indented more than this belong to it.
    let mut block: Option<usize> = None;
    for line in yaml.split_inclusive('\n') {
        let body = line.trim_end_matches('\n');
        let indent = body.len() - body.trim_start().len();
        if let Some(b) = block {
            if body.trim().is_empty() || indent > b {
                out.push_str(line);
                continue;
            }
            block = None;
        }
        // Sequence markers first: `- - key: value`.
        let mut rest = &body[indent..];
        let mut prefix = body[..indent].to_string();
        while let Some(r) = rest.strip_prefix("- ") {
            prefix.push_str("- ");
            rest = r;
        }
        let key_indent = prefix.len();
        let rebuilt = if rest.starts_with('\'') || rest.starts_with('"') {
            // A quoted key or value: left as it is.
            None
        } else if let Some((key, value)) = rest.split_once(": ") {
            if value.starts_with('|') || value.starts_with('>') {
                block = Some(key_indent);
            }
            Some(format!("{prefix}{}: {}", quote(key), quote(value)))
        } else if let Some(key) = rest.strip_suffix(':') {
            Some(format!("{prefix}{}:", quote(key)))
        } else if rest == "|"
            || rest.starts_with("|-")
            || rest.starts_with("|+")
            || rest.starts_with('>')
        {
            block = Some(key_indent.saturating_sub(2));
            None
        } else if prefix.ends_with("- ") {
            Some(format!("{prefix}{}", quote(rest)))
        } else {
            None
        };
        match rebuilt {
            Some(r) => {
                out.push_str(&r);
                if line.ends_with('\n') {
                    out.push('\n');
                }
            }
            None => out.push_str(line),
        }
    }
    out
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

/// The labels of the pod a document makes (its pod template's, or its own for a Pod).
fn pod_labels_of(doc: &Value, ptr: &str) -> BTreeMap<String, String> {
    if ptr.is_empty() {
        string_map(doc.pointer("/metadata/labels"))
    } else {
        string_map(doc.pointer(&format!("{ptr}/metadata/labels")))
    }
}

/// Injects one document in place (Lists recursively); other kinds are left unchanged.
fn inject_doc(doc: &mut Value, default_ns: &str, offline: &Offline, reports: &mut Vec<DocReport>) {
    let kind = doc
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    if kind == "List" || kind.ends_with("List") {
        if let Some(items) = doc.get_mut("items").and_then(Value::as_array_mut) {
            for item in items {
                inject_doc(item, default_ns, offline, reports);
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
    let outcome = match offline.selection(&ns, &pod_labels_of(doc, ptr)) {
        Ok((sel, cfg)) => inject_pod_as(&pod, &ns, cfg, &sel),
        Err(why) => Outcome::Skipped(why),
    };
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

/// Injects every pod-bearing document as `cfg`'s revision's injector, assumed called (the
/// namespace labels not known); returns the documents and one report per pod template.
pub fn inject_docs(
    docs: Vec<Value>,
    default_ns: &str,
    cfg: &Config,
) -> (Vec<Value>, Vec<DocReport>) {
    inject_docs_with(docs, default_ns, &Offline::assumed(cfg))
}

/// Injects every pod-bearing document as the webhook entry `offline` selects for it would;
/// returns the documents and one report per pod template.
pub fn inject_docs_with(
    mut docs: Vec<Value>,
    default_ns: &str,
    offline: &Offline,
) -> (Vec<Value>, Vec<DocReport>) {
    let mut reports = Vec::new();
    for d in docs.iter_mut() {
        inject_doc(d, default_ns, offline, &mut reports);
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

/// `check-inject`: one paragraph per pod-bearing document saying which webhook entry is called
/// and what the injector of its revision does.
pub fn check_inject(docs: &[Value], default_ns: &str, offline: &Offline) -> String {
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
            match offline.selection(&ns, &pod_labels_of(d, ptr)) {
                Err(why) => {
                    out.push_str(&format!(
                        "{what} in namespace {ns}: NOT INJECTED\n  why: {why}\n"
                    ));
                }
                Ok((sel, _)) => {
                    let sel = sel.why();
                    let (_, reports) = inject_docs_with(vec![d.clone()], default_ns, offline);
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
mod yaml11_tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn yaml_1_1_booleans_are_quoted_and_nothing_else_changes() {
        let doc = json!({
            "env": [{"name": "A", "value": "on"}, {"name": "B", "value": "yes"},
                    {"name": "C", "value": "N"}, {"name": "D", "value": "onward"},
                    {"name": "E", "value": "true"}, {"name": "F", "value": "a: on"}],
            "labels": {"on": "off", "plain": "value"},
            "list": ["y", "x", ["no", "maybe"]],
            "block": "line one\non\n  yes: no\n",
            "nested": {"deeper": {"flag": "OFF"}},
        });
        let text = to_yaml(std::slice::from_ref(&doc)).unwrap();
        // Read back (YAML 1.2): the same document.
        let back: Value = serde_yaml_ng::from_str(&text).unwrap();
        assert_eq!(back, doc, "{text}");
        // No plain YAML 1.1 boolean left outside the block scalar.
        let mut in_block = false;
        for line in text.lines() {
            if line.trim_start().starts_with("block:") {
                in_block = true;
                continue;
            }
            if in_block && line.starts_with("  ") && !line.starts_with("  - ") {
                continue;
            }
            in_block = false;
            for token in line.split([' ', ':', '-']).filter(|t| !t.is_empty()) {
                assert!(
                    !YAML11_BOOLEANS.contains(&token),
                    "{token:?} plain in {line:?}\n{text}"
                );
            }
        }
        assert!(text.contains("value: 'on'"), "{text}");
        assert!(text.contains("'on': 'off'"), "{text}");
        // The block scalar's lines are as written.
        assert!(text.contains("\n  on\n    yes: no\n"), "{text}");
    }
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

    fn offline(revisions: &[&str], labels: &str) -> Offline {
        let revs: Vec<String> = revisions.iter().map(|s| s.to_string()).collect();
        Offline::new(
            &Config::default(),
            &revs,
            Some(parse_labels(labels).unwrap()),
        )
        .unwrap()
    }

    #[test]
    fn check_inject_reports_namespace_and_decision() {
        let docs = parse_docs(MULTI).unwrap();
        let text = check_inject(&docs, "default", &offline(&[], "istio-injection=enabled"));
        assert!(
            text.contains("CronJob/nightly in namespace default: INJECTED\n  webhook: remora-sidecar-injector/namespace.sidecar-injector.remora.dev (revision default): namespace label istio-injection=enabled\n"),
            "{text}"
        );
        assert!(
            text.contains("Deployment/bad in namespace default: DENIED"),
            "{text}"
        );
        let text = check_inject(&docs, "default", &offline(&[], ""));
        assert!(
            text.contains("CronJob/nightly in namespace default: NOT INJECTED\n  why: the namespace has no istio-injection=enabled or istio.io/rev label"),
            "{text}"
        );
        assert!(parse_labels("novalue").is_err());
    }

    #[test]
    fn check_inject_says_which_capture_mode_and_why() {
        let docs = parse_docs(OPTED).unwrap();
        let text = check_inject(&docs, "default", &offline(&["default", "b"], ""));
        assert!(
            text.contains("; capture: init container remora-init (NET_ADMIN, NET_RAW; injector setting cni.enabled is off)\n"),
            "{text}"
        );
        let cni = Config {
            cni: crate::config::CniConfig { enabled: true },
            ..Config::default()
        };
        let off = Offline::new(&cni, &[], Some(BTreeMap::new())).unwrap();
        let text = check_inject(&docs, "default", &off);
        assert!(
            text.contains("; capture: CNI mode (injector setting cni.enabled): the node's remora-cni programs it, remora-validation checks it without privileges\n"),
            "{text}"
        );
    }

    const OPTED: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: shop}
spec:
  selector: {matchLabels: {app: web}}
  template:
    metadata:
      labels: {app: web, sidecar.istio.io/inject: "true"}
    spec:
      containers: [{name: web, image: nginx}]
---
apiVersion: v1
kind: Pod
metadata: {name: canary-1, namespace: shop, labels: {istio.io/rev: b}}
spec:
  containers: [{name: web, image: nginx}]
"#;

    /// Istio's selectors offline: `istio.io/rev` on the namespace or the pod picks that
    /// revision, a pod label `sidecar.istio.io/inject=true` opts a pod of an unlabelled
    /// namespace into the default revision.
    #[test]
    fn check_inject_with_revisions_and_pod_opt_in() {
        let docs = parse_docs(OPTED).unwrap();
        let text = check_inject(&docs, "default", &offline(&["default", "b"], ""));
        assert!(
            text.contains("Deployment/web in namespace shop: INJECTED\n  webhook: remora-sidecar-injector/object.sidecar-injector.remora.dev (revision default): pod label sidecar.istio.io/inject=true"),
            "{text}"
        );
        assert!(
            text.contains("Pod/canary-1 in namespace shop: INJECTED\n  webhook: remora-sidecar-injector-b/rev.object.sidecar-injector.remora.dev (revision b): pod label istio.io/rev=b"),
            "{text}"
        );
        // Only b installed: the opted-in pod has no webhook.
        let text = check_inject(&docs, "default", &offline(&["b"], ""));
        assert!(
            text.contains("Deployment/web in namespace shop: NOT INJECTED\n  why: pod label sidecar.istio.io/inject=true selects the default revision, which is not among the installed revisions (b)"),
            "{text}"
        );
        // The namespace's istio.io/rev wins over the pod's.
        let text = check_inject(
            &docs,
            "default",
            &offline(&["default", "b"], "istio.io/rev=default"),
        );
        assert!(
            text.contains("Pod/canary-1 in namespace shop: INJECTED\n  webhook: remora-sidecar-injector/rev.namespace.sidecar-injector.remora.dev (revision default): namespace label istio.io/rev=default"),
            "{text}"
        );
        // The injector's status names the revision that injected.
        let (out, reports) = inject_docs_with(docs, "default", &offline(&["default", "b"], ""));
        assert_eq!(reports[1].decision, "injected");
        let status: Value = serde_json::from_str(
            out[1]["metadata"]["annotations"]["sidecar.istio.io/status"]
                .as_str()
                .unwrap(),
        )
        .unwrap();
        assert_eq!(status["revision"], "b");
    }

    #[test]
    fn offline_revisions_are_checked() {
        let cfg = Config::default();
        let e = Offline::new(&cfg, &["B".into()], None)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("--revision \"B\": must be lowercase"), "{e}");
        let e = Offline::new(&cfg, &["b".into(), "b".into()], None)
            .unwrap_err()
            .to_string();
        assert_eq!(e, "--revision \"b\": given twice");
        let named = Config::from_yaml("revision: b\n").unwrap();
        assert_eq!(Offline::new(&named, &[], None).unwrap().revisions(), ["b"]);
        let e = Offline::new(&named, &["default".into()], None)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("config field revision: invalid value \"b\""),
            "{e}"
        );
    }
}
