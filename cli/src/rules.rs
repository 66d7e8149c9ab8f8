//! `remora rules render`: offline, the `remora-mesh-rules` ConfigMap the rules controller would
//! write for one namespace from Istio objects in files (the controller's own code,
//! `remora_model::compile`), each object with a comment saying why it is there; objects left out
//! are listed on stderr with the reason.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{bail, Context};
use serde::Deserialize;
use serde_json::Value;

use remora_model::compile::{self, Settings};

/// Most files read from one directory argument.
const MAX_FILES: usize = 10_000;
/// Largest input file.
const MAX_FILE_BYTES: u64 = 8 << 20;

/// The files an argument names: a file, `-` (stdin), or a directory's `*.yaml`, `*.yml`,
/// `*.json` files (not recursive), in name order.
fn expand(arg: &str) -> anyhow::Result<Vec<(String, String)>> {
    if arg == "-" {
        return Ok(vec![(
            "stdin".to_string(),
            remora_webhook::cli::read_input("-")?,
        )]);
    }
    let path = Path::new(arg);
    let meta = std::fs::metadata(path).with_context(|| format!("-f {arg}: cannot read"))?;
    let read = |p: &Path| -> anyhow::Result<String> {
        let len = std::fs::metadata(p)
            .with_context(|| format!("-f {}: cannot read", p.display()))?
            .len();
        if len > MAX_FILE_BYTES {
            bail!(
                "-f {}: {len} bytes, more than the {MAX_FILE_BYTES} bytes accepted",
                p.display()
            );
        }
        std::fs::read_to_string(p).with_context(|| format!("-f {}: cannot read", p.display()))
    };
    if !meta.is_dir() {
        return Ok(vec![(arg.to_string(), read(path)?)]);
    }
    let mut names = Vec::new();
    for entry in std::fs::read_dir(path).with_context(|| format!("-f {arg}: cannot list"))? {
        let p = entry
            .with_context(|| format!("-f {arg}: cannot list"))?
            .path();
        let ext = p.extension().and_then(|e| e.to_str()).unwrap_or("");
        if p.is_file() && matches!(ext, "yaml" | "yml" | "json") {
            names.push(p);
        }
        if names.len() > MAX_FILES {
            bail!("-f {arg}: more than {MAX_FILES} files");
        }
    }
    names.sort();
    names
        .iter()
        .map(|p| Ok((p.display().to_string(), read(p)?)))
        .collect()
}

/// The objects of one file: every YAML document, `v1 List`s expanded; an object without
/// `metadata.namespace` is put in `default_ns` (as `kubectl apply -n` does).
fn objects_of(name: &str, text: &str, default_ns: &str) -> anyhow::Result<Vec<Value>> {
    let mut out = Vec::new();
    for (i, doc) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        let v = Value::deserialize(doc)
            .map_err(|e| anyhow::anyhow!("{name} doc {}: invalid YAML: {e}", i + 1))?;
        let items = match v {
            Value::Null => continue,
            Value::Object(ref m) if m.get("kind").and_then(Value::as_str) == Some("List") => m
                .get("items")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default(),
            other => vec![other],
        };
        for mut item in items {
            if let Some(md) = item.get_mut("metadata").and_then(Value::as_object_mut) {
                if md.get("namespace").and_then(Value::as_str).is_none() {
                    md.insert("namespace".into(), Value::String(default_ns.to_string()));
                }
            }
            out.push(item);
        }
    }
    Ok(out)
}

/// What `rules render` prints: the ConfigMap (YAML), and lines for stderr.
pub struct RenderOutput {
    pub configmap: Value,
    pub notes: Vec<String>,
}

/// Render `namespace` from the objects of `inputs` (file name, text).
pub fn render(
    inputs: &[(String, String)],
    namespace: &str,
    cluster_domain: &str,
) -> anyhow::Result<RenderOutput> {
    let mut checked = Vec::new();
    let mut notes = Vec::new();
    let mut seen = BTreeMap::new();
    for (name, text) in inputs {
        for v in objects_of(name, text, namespace)? {
            match compile::check(&v, cluster_domain) {
                Ok(c) => {
                    if let Some(first) = seen.insert(c.id.clone(), name.clone()) {
                        // As `kubectl apply -f` does: the later definition replaces it.
                        notes.push(format!(
                            "replaced: {} of {first} by the one in {name}",
                            c.id
                        ));
                        checked.retain(|o: &compile::Checked| o.id != c.id);
                    }
                    for w in &c.warnings {
                        notes.push(format!("warning: {}: {w}", c.id));
                    }
                    checked.push(c);
                }
                Err(e) if e.unsupported => notes.push(format!("left out: {e}")),
                Err(e) => notes.push(format!("left out (invalid): {name}: {e}")),
            }
        }
    }
    let settings = Settings {
        cluster_domain: cluster_domain.to_string(),
        ..Settings::default()
    };
    let rendered =
        compile::render(&checked, namespace, &settings).map_err(|e| anyhow::anyhow!(e))?;
    for (id, why) in &rendered.excluded {
        notes.push(format!("not in {namespace}: {id}: {why}"));
    }
    Ok(RenderOutput {
        configmap: rendered.configmap(),
        notes,
    })
}

/// `remora rules render -f ... -n NS`.
pub fn render_command(
    files: &[String],
    namespace: Option<&str>,
    cluster_domain: &str,
) -> anyhow::Result<String> {
    let Some(ns) = namespace else {
        bail!("-n: missing: name the namespace whose ConfigMap to render");
    };
    if files.is_empty() {
        bail!("-f: missing: name the files or directories holding the Istio objects");
    }
    let mut inputs = Vec::new();
    for f in files {
        inputs.extend(expand(f)?);
    }
    let out = render(&inputs, ns, cluster_domain)?;
    for n in &out.notes {
        eprintln!("{n}");
    }
    Ok(serde_yaml_ng::to_string(&out.configmap)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    const OBJECTS: &str = r#"
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: bookinfo}
spec:
  host: reviews
  subsets: [{name: v1, labels: {version: v1}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews.bookinfo.svc.cluster.local]
  http: [{route: [{destination: {host: reviews.bookinfo.svc.cluster.local, subset: v1}}]}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: broken, namespace: frontend}
spec: {hosts: [x], http: [{timeout: soon}]}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: private, namespace: bookinfo}
spec: {host: details, exportTo: ["."]}
"#;

    #[test]
    fn renders_the_namespace_view_with_reasons_and_notes() {
        let out = render(
            &[("objects.yaml".into(), OBJECTS.into())],
            "frontend",
            "cluster.local",
        )
        .expect("renders");
        let data = out.configmap["data"].as_object().expect("data");
        let keys: Vec<&str> = data.keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            [
                "bookinfo.destinationrule.reviews.yaml",
                "frontend.virtualservice.reviews.yaml"
            ]
        );
        assert_eq!(
            data["bookinfo.destinationrule.reviews.yaml"]
                .as_str()
                .and_then(|s| s.lines().next()),
            Some("# DestinationRule bookinfo/reviews: from namespace bookinfo (no exportTo: exported to every namespace)")
        );
        assert_eq!(out.configmap["metadata"]["namespace"], "frontend");
        assert_eq!(
            out.configmap["metadata"]["labels"]["app.kubernetes.io/managed-by"],
            "remora-rules-controller"
        );
        let notes = out.notes.join("\n");
        assert!(
            notes.contains("left out (invalid): objects.yaml: VirtualService frontend/broken: spec.http[0].timeout"),
            "{notes}"
        );
        assert!(
            notes.contains("not in frontend: DestinationRule bookinfo/private: not exported to frontend (exportTo: .)"),
            "{notes}"
        );
    }

    #[test]
    fn an_object_defined_twice_is_the_later_one_as_kubectl_apply_does() {
        let one = |egress: &str| {
            format!("apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {{name: s, namespace: a}}\nspec: {egress}\n")
        };
        let out = render(
            &[
                ("a.yaml".into(), one("{}")),
                ("b.yaml".into(), one("{egress: [{hosts: [\"./*\"]}]}")),
            ],
            "a",
            "cluster.local",
        )
        .expect("renders");
        assert_eq!(
            out.notes,
            ["replaced: Sidecar a/s of a.yaml by the one in b.yaml"]
        );
        let text = out.configmap["data"]["a.sidecar.s.yaml"]
            .as_str()
            .expect("one");
        assert!(text.contains("./*"), "{text}");
    }
}
