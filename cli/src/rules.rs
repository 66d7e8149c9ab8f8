//! The rules controller's views in the CLI (its own code, `remora_model::compile`):
//! - `remora rules render`: offline, the `remora-mesh-rules` ConfigMap the controller would
//!   write for one namespace from Istio objects in files, each object with a comment saying why
//!   it is there; objects left out are listed on stderr with the reason;
//! - [`findings`], for `remora analyze`: Istio objects in the cluster the controller leaves out,
//!   and meshed namespaces whose ConfigMap does not hold what the controller would write (the
//!   user's own ConfigMap, one over 1 MiB, one not written yet).

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{bail, Context};
use serde::Deserialize;
use serde_json::Value;

use remora_model::compile::{self, RenderError, Settings};
use remora_webhook::rules_controller::plan::meshed;
use remora_webhook::rules_lint::Message;

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
    settings: &Settings,
    view: compile::View,
) -> anyhow::Result<RenderOutput> {
    let mut checked = Vec::new();
    let mut notes = Vec::new();
    let mut seen = BTreeMap::new();
    for (name, text) in inputs {
        for v in objects_of(name, text, namespace)? {
            match compile::check(&v, &settings.cluster_domain) {
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
    let rendered = compile::render_view(&checked, namespace, settings, view)
        .map_err(|e| anyhow::anyhow!(e))?;
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
    settings: &Settings,
    gateway: bool,
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
    let view = if gateway {
        compile::View::Gateway
    } else {
        compile::View::Sidecars
    };
    let out = render(&inputs, ns, settings, view)?;
    for n in &out.notes {
        eprintln!("{n}");
    }
    Ok(serde_yaml_ng::to_string(&out.configmap)?)
}

/// `remora rules import`: the ConfigMap (YAML) `namespace` gets from the cluster's `objects`
/// (its sidecars' or a gateway's `view`), named `name` and without the controller's label (the
/// user's from then on), and lines for stderr.
pub fn import(
    objects: &[Value],
    namespace: &str,
    name: &str,
    settings: &Settings,
    view: compile::View,
) -> anyhow::Result<(String, Vec<String>)> {
    let mut checked = Vec::new();
    let mut notes = Vec::new();
    for v in objects {
        match compile::check(v, &settings.cluster_domain) {
            Ok(c) => checked.push(c),
            Err(e) if e.unsupported => {}
            Err(e) => notes.push(format!("left out (invalid): {e}")),
        }
    }
    let rendered = compile::render_view(&checked, namespace, settings, view)
        .map_err(|e| anyhow::anyhow!(e))?;
    let mut cm = rendered.configmap();
    cm["metadata"] = serde_json::json!({
        "name": name,
        "namespace": namespace,
        "labels": {"app.kubernetes.io/part-of": "remora"},
    });
    notes.push(format!(
        "{} objects visible in {namespace}; the ConfigMap has no {} label, so the rules controller will not overwrite it",
        rendered.included.len(),
        compile::MANAGED_BY.0
    ));
    Ok((serde_yaml_ng::to_string(&cm)?, notes))
}

/// A rules ConfigMap as `analyze` sees it.
#[derive(Clone, Debug, Default)]
pub struct ConfigMapView {
    pub managed: bool,
    pub data: BTreeMap<String, String>,
}

fn message(level: &'static str, config_map: String, object: String, text: String) -> Message {
    Message {
        level,
        config_map,
        object,
        file: String::new(),
        document: 0,
        field: String::new(),
        message: text,
    }
}

/// What `remora analyze` says about the cluster's Istio objects (`objects`, as listed, with
/// `apiVersion` and `kind`) and the rules ConfigMaps (`configmaps`, by namespace) of the meshed
/// namespaces among `namespaces` (name, labels) in `scope` (all when `None`).
pub fn findings(
    objects: &[Value],
    namespaces: &[(String, BTreeMap<String, String>)],
    configmaps: &BTreeMap<String, ConfigMapView>,
    scope: Option<&str>,
    settings: &Settings,
) -> Vec<Message> {
    let mut out = Vec::new();
    let mut checked = Vec::new();
    for v in objects {
        match compile::check(v, &settings.cluster_domain) {
            Ok(c) => checked.push(c),
            Err(e) if e.unsupported => {}
            Err(e) => {
                let Some(id) = e.id.clone() else { continue };
                if scope.is_some_and(|s| s != id.namespace) {
                    continue;
                }
                out.push(message(
                    "error",
                    String::new(),
                    id.to_string(),
                    format!(
                        "left out of every {} ConfigMap by the rules controller: {}",
                        compile::CONFIGMAP,
                        e.reason
                    ),
                ));
            }
        }
    }
    for (ns, labels) in namespaces {
        if !meshed(labels) || scope.is_some_and(|s| s != ns) {
            continue;
        }
        let cm_key = format!("{ns}/{}", compile::CONFIGMAP);
        let existing = configmaps.get(ns);
        match compile::render(&checked, ns, settings) {
            Err(e @ (RenderError::TooLarge(_) | RenderError::Rejected { .. })) => {
                out.push(message("error", cm_key, String::new(), e.to_string()))
            }
            Ok(r) if r.included.is_empty() => {}
            Ok(r) => {
                let n = r.included.len();
                let first: Vec<String> = r
                    .included
                    .iter()
                    .take(3)
                    .map(|i| i.id.to_string())
                    .collect();
                let objects = format!(
                    "Istio objects visible in {ns} ({n}: {}{})",
                    first.join(", "),
                    if n > 3 { ", …" } else { "" }
                );
                let text = match existing {
                    None => Some(format!(
                        "missing: the {objects} do not reach its proxies; is the rules controller running (remora-webhook --rules-controller on)?"
                    )),
                    Some(c) if !c.managed => Some(format!(
                        "the user's own (no label {}={}): the rules controller does not overwrite it, so the {objects} do not reach its proxies; delete it to let the controller write it",
                        compile::MANAGED_BY.0,
                        compile::MANAGED_BY.1
                    )),
                    Some(c) if c.data != r.data => Some(format!(
                        "differs from what the rules controller writes for the {objects}: the controller is not running or has not caught up (see the remora-webhook log)"
                    )),
                    Some(_) => None,
                };
                if let Some(t) = text {
                    out.push(message("warning", cm_key, String::new(), t));
                }
            }
        }
    }
    out
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

    fn cluster_objects() -> Vec<Value> {
        objects_of("objects.yaml", OBJECTS, "frontend").expect("objects")
    }

    #[test]
    fn analyze_findings_for_objects_and_configmaps() {
        let ns = |name: &str, meshed: bool| {
            let mut l = BTreeMap::new();
            if meshed {
                l.insert("istio-injection".to_string(), "enabled".to_string());
            }
            (name.to_string(), l)
        };
        let namespaces = [
            ns("bookinfo", true),
            ns("frontend", true),
            ns("plain", false),
        ];
        let objects = cluster_objects();
        // bookinfo: the user's own ConfigMap; frontend: none.
        let mut cms = BTreeMap::new();
        cms.insert("bookinfo".to_string(), ConfigMapView::default());
        let f = findings(&objects, &namespaces, &cms, None, &Settings::default());
        let lines: Vec<String> = f
            .iter()
            .map(|m| format!("{} [{}|{}] {}", m.level, m.config_map, m.object, m.message))
            .collect();
        assert_eq!(lines.len(), 3, "{lines:#?}");
        assert!(lines[0].starts_with("error [|VirtualService frontend/broken] left out of every remora-mesh-rules ConfigMap by the rules controller: spec.http[0].timeout"), "{}", lines[0]);
        assert!(lines[1].starts_with("warning [bookinfo/remora-mesh-rules|] the user's own (no label app.kubernetes.io/managed-by=remora-rules-controller)"), "{}", lines[1]);
        assert!(lines[2].starts_with("warning [frontend/remora-mesh-rules|] missing: the Istio objects visible in frontend (2: DestinationRule bookinfo/reviews, VirtualService frontend/reviews)"), "{}", lines[2]);
        // Written as the controller would: only frontend's invalid object is left to say;
        // scoped to frontend, the other namespaces' findings are not shown.
        let rendered = render(
            &[("o.yaml".into(), OBJECTS.into())],
            "frontend",
            &Settings::default(),
            compile::View::Sidecars,
        )
        .expect("renders");
        let data: BTreeMap<String, String> =
            serde_json::from_value(rendered.configmap["data"].clone()).expect("data");
        cms.insert(
            "frontend".to_string(),
            ConfigMapView {
                managed: true,
                data: data.clone(),
            },
        );
        let f = findings(
            &objects,
            &namespaces,
            &cms,
            Some("frontend"),
            &Settings::default(),
        );
        assert_eq!(f.len(), 1, "{f:#?}");
        assert_eq!(f[0].object, "VirtualService frontend/broken");
        // Stale: the controller has not caught up.
        let mut stale = data;
        stale.pop_first();
        cms.insert(
            "frontend".to_string(),
            ConfigMapView {
                managed: true,
                data: stale,
            },
        );
        let f = findings(
            &objects,
            &namespaces,
            &cms,
            Some("frontend"),
            &Settings::default(),
        );
        assert_eq!(f.len(), 2);
        assert!(
            f[1].message
                .starts_with("differs from what the rules controller writes"),
            "{}",
            f[1].message
        );
    }

    #[test]
    fn import_is_the_render_without_the_controller_label() {
        let (text, notes) = import(
            &cluster_objects(),
            "frontend",
            "my-rules",
            &Settings::default(),
            compile::View::Sidecars,
        )
        .expect("imports");
        let cm: Value = serde_yaml_ng::from_str(&text).expect("YAML");
        assert_eq!(cm["metadata"]["name"], "my-rules");
        assert_eq!(cm["metadata"]["namespace"], "frontend");
        assert!(cm["metadata"]["labels"]
            .get("app.kubernetes.io/managed-by")
            .is_none());
        let keys: Vec<&String> = cm["data"].as_object().expect("data").keys().collect();
        assert_eq!(
            keys,
            [
                "bookinfo.destinationrule.reviews.yaml",
                "frontend.virtualservice.reviews.yaml"
            ]
        );
        assert!(
            notes[0].starts_with("left out (invalid): VirtualService frontend/broken"),
            "{notes:?}"
        );
    }

    #[test]
    fn renders_the_namespace_view_with_reasons_and_notes() {
        let out = render(
            &[("objects.yaml".into(), OBJECTS.into())],
            "frontend",
            &Settings::default(),
            compile::View::Sidecars,
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
    fn renders_a_gateway_namespace_view() {
        let objects = "apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: bookinfo-gateway, namespace: bookinfo}
spec:
  selector: {istio: ingressgateway}
  servers: [{port: {number: 8080, name: http, protocol: HTTP}, hosts: ['*']}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: bookinfo, namespace: bookinfo}
spec:
  hosts: ['*']
  gateways: [bookinfo-gateway]
  http: [{route: [{destination: {host: productpage, port: {number: 9080}}}]}]
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: default, namespace: istio-system}
spec: {egress: [{hosts: ['./*']}]}
";
        let keys = |view| -> Vec<String> {
            let out = render(
                &[("gw.yaml".into(), objects.into())],
                "istio-system",
                &Settings::default(),
                view,
            )
            .expect("renders");
            out.configmap["data"]
                .as_object()
                .expect("data")
                .keys()
                .cloned()
                .collect()
        };
        assert_eq!(
            keys(compile::View::Gateway),
            [
                "bookinfo.gateway.bookinfo-gateway.yaml",
                "bookinfo.virtualservice.bookinfo.yaml"
            ]
        );
        assert_eq!(
            keys(compile::View::Sidecars),
            ["istio-system.sidecar.default.yaml"]
        );
        // `rules import --gateway`: the same view from the cluster's objects.
        let cluster = objects_of("gw.yaml", objects, "istio-system").expect("objects");
        let (text, _) = import(
            &cluster,
            "istio-system",
            "remora-mesh-rules",
            &Settings::default(),
            compile::View::Gateway,
        )
        .expect("imports");
        let cm: Value = serde_yaml_ng::from_str(&text).expect("YAML");
        let keys: Vec<&String> = cm["data"].as_object().expect("data").keys().collect();
        assert_eq!(
            keys,
            [
                "bookinfo.gateway.bookinfo-gateway.yaml",
                "bookinfo.virtualservice.bookinfo.yaml"
            ]
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
            &Settings::default(),
            compile::View::Sidecars,
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
