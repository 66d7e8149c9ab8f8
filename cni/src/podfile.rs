//! What the node agent writes for one pod (pure): the Pod object as the API serves it becomes
//! the file the plugin's `file` pod source reads (`<namespace>/<name>.json`).
//!
//! Kept: the metadata the plugin and an operator need (name, namespace, uid, and for a pod with
//! the capture mark its annotations and labels), `spec.hostNetwork` when true (the plugin passes
//! host-network pods through) and the proxy container's `runAsUser` (the uid the capture
//! exempts). Nothing else of the spec. A pod without the mark gets a file too, with no
//! annotations: the plugin then passes it through at once instead of waiting for a file that
//! would never come.

use remora_init::pod::{CAPTURE_MARK, PROXY_CONTAINER};
use serde_json::{json, Map, Value};

use crate::podinfo::PodInfo;

/// The longest file name most file systems take; `<name>.json` must fit.
pub const MAX_FILE_NAME: usize = 255;

/// One pod's file.
#[derive(Debug, Clone, PartialEq)]
pub struct PodFile {
    pub namespace: String,
    pub name: String,
    /// Whether the pod carries the capture mark (any value: the plugin decides on it).
    pub marked: bool,
    pub content: Value,
}

impl PodFile {
    /// The file's path below the pods directory.
    pub fn rel_path(&self) -> String {
        format!("{}/{}.json", self.namespace, self.name)
    }
}

/// A DNS-1123 label (a namespace): 1-63 of `a-z0-9-`, alphanumeric at both ends.
pub fn check_label(field: &str, v: &str) -> Result<(), String> {
    let ok = !v.is_empty()
        && v.len() <= 63
        && v.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !v.starts_with('-')
        && !v.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{field} {v:?} is not a DNS-1123 label (1-63 of a-z, 0-9, '-', alphanumeric at both ends)"
        ))
    }
}

/// A DNS-1123 subdomain (a pod name): dot-separated labels, at most 253 characters, and short
/// enough that `<name>.json` is a valid file name.
pub fn check_subdomain(field: &str, v: &str) -> Result<(), String> {
    let labels_ok =
        !v.is_empty() && v.len() <= 253 && v.split('.').all(|l| check_label(field, l).is_ok());
    if !labels_ok {
        return Err(format!(
            "{field} {v:?} is not a DNS-1123 subdomain (dot-separated labels of a-z, 0-9, '-', at most 253 characters)"
        ));
    }
    if v.len() + ".json".len() > MAX_FILE_NAME {
        return Err(format!(
            "{field} {v:?} is too long for a file name ({} characters, at most {})",
            v.len(),
            MAX_FILE_NAME - ".json".len()
        ));
    }
    Ok(())
}

fn meta_str<'a>(pod: &'a Value, key: &str) -> Result<&'a str, String> {
    match pod.pointer(&format!("/metadata/{key}")) {
        Some(Value::String(s)) => Ok(s),
        None | Some(Value::Null) => Err(format!("metadata.{key} is missing")),
        Some(other) => Err(format!("metadata.{key} is {other}: must be a string")),
    }
}

fn string_map(pod: &Value, key: &str) -> Result<Map<String, Value>, String> {
    match pod.pointer(&format!("/metadata/{key}")) {
        None | Some(Value::Null) => Ok(Map::new()),
        Some(Value::Object(m)) => {
            for (k, v) in m {
                if !v.is_string() {
                    return Err(format!("metadata.{key}[{k:?}] is {v}: values are strings"));
                }
            }
            Ok(m.clone())
        }
        Some(other) => Err(format!("metadata.{key} is {other}: must be a map")),
    }
}

/// The file for `pod` (a Pod object as JSON). `Err` is one line naming the pod (when it has a
/// name), the field, its value and what is wrong.
pub fn pod_file(pod: &Value) -> Result<PodFile, String> {
    let name = meta_str(pod, "name")?;
    let namespace = meta_str(pod, "namespace")
        .map_err(|e| format!("pod {name:?}: {e}"))?
        .to_string();
    let whom = format!("pod {namespace}/{name}");
    check_label("metadata.namespace", &namespace).map_err(|e| format!("{whom}: {e}"))?;
    check_subdomain("metadata.name", name).map_err(|e| format!("{whom}: {e}"))?;
    // The plugin's own reading of the object: the same checks (annotation values, hostNetwork,
    // the proxy's runAsUser) before anything is written.
    let info = PodInfo::from_pod(pod).map_err(|e| format!("{whom}: {e}"))?;
    let mut meta = json!({"name": name, "namespace": namespace});
    if let Some(uid) = pod.pointer("/metadata/uid").and_then(Value::as_str) {
        meta["uid"] = json!(uid);
    }
    let marked = info.annotations.contains_key(CAPTURE_MARK);
    if marked {
        meta["annotations"] =
            Value::Object(string_map(pod, "annotations").map_err(|e| format!("{whom}: {e}"))?);
        let labels = string_map(pod, "labels").map_err(|e| format!("{whom}: {e}"))?;
        if !labels.is_empty() {
            meta["labels"] = Value::Object(labels);
        }
    }
    let mut spec = Map::new();
    if info.host_network {
        spec.insert("hostNetwork".into(), json!(true));
    }
    if marked {
        if let Some(uid) = info.proxy_uid {
            spec.insert(
                "containers".into(),
                json!([{"name": PROXY_CONTAINER, "securityContext": {"runAsUser": uid}}]),
            );
        }
    }
    let mut content = json!({"apiVersion": "v1", "kind": "Pod", "metadata": meta});
    if !spec.is_empty() {
        content["spec"] = Value::Object(spec);
    }
    Ok(PodFile {
        name: name.to_string(),
        namespace,
        marked,
        content,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(meta: Value, spec: Value) -> Value {
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec, "status": {"podIP": "10.0.0.9"}})
    }

    #[test]
    fn marked_pods_keep_metadata_and_the_proxy_uid_only() {
        let spec = json!({
            "nodeName": "node-a",
            "serviceAccountName": "cart",
            "volumes": [{"name": "token", "secret": {"secretName": "s"}}],
            "initContainers": [
                {"name": "remora-validation", "image": "v", "securityContext": {"runAsUser": 1337}},
                {"name": "remora-proxy", "image": "p", "env": [{"name": "X", "value": "y"}],
                 "securityContext": {"runAsUser": 2000, "runAsGroup": 2000}}
            ],
            "containers": [{"name": "app", "image": "a", "securityContext": {"runAsUser": 5}}]
        });
        let cases = [
            (
                "marked, proxy as a native sidecar",
                pod(
                    json!({"name": "cart-1", "namespace": "shop", "uid": "u-1",
                           "labels": {"app": "cart"},
                           "annotations": {"remora.dev/capture": "cni", "traffic.sidecar.istio.io/excludeOutboundPorts": "5432"},
                           "managedFields": [{"manager": "kubelet"}], "resourceVersion": "7"}),
                    spec.clone(),
                ),
                true,
                json!({"apiVersion": "v1", "kind": "Pod",
                       "metadata": {"name": "cart-1", "namespace": "shop", "uid": "u-1",
                                    "labels": {"app": "cart"},
                                    "annotations": {"remora.dev/capture": "cni", "traffic.sidecar.istio.io/excludeOutboundPorts": "5432"}},
                       "spec": {"containers": [{"name": "remora-proxy", "securityContext": {"runAsUser": 2000}}]}}),
            ),
            (
                "marked, no proxy uid, no labels",
                pod(
                    json!({"name": "a", "namespace": "b", "annotations": {"remora.dev/capture": "cni"}}),
                    json!({"containers": [{"name": "app"}]}),
                ),
                true,
                json!({"apiVersion": "v1", "kind": "Pod",
                       "metadata": {"name": "a", "namespace": "b", "annotations": {"remora.dev/capture": "cni"}}}),
            ),
            (
                "unmarked: name, namespace and uid only",
                pod(
                    json!({"name": "web", "namespace": "shop", "uid": "u-2", "labels": {"app": "web"},
                           "annotations": {"secret-ish": "value"}}),
                    spec.clone(),
                ),
                false,
                json!({"apiVersion": "v1", "kind": "Pod",
                       "metadata": {"name": "web", "namespace": "shop", "uid": "u-2"}}),
            ),
            (
                "host network kept",
                pod(
                    json!({"name": "h", "namespace": "shop", "annotations": {"remora.dev/capture": "cni"}}),
                    json!({"hostNetwork": true, "containers": []}),
                ),
                true,
                json!({"apiVersion": "v1", "kind": "Pod",
                       "metadata": {"name": "h", "namespace": "shop", "annotations": {"remora.dev/capture": "cni"}},
                       "spec": {"hostNetwork": true}}),
            ),
        ];
        for (what, input, marked, want) in cases {
            let f = pod_file(&input).unwrap_or_else(|e| panic!("{what}: {e}"));
            assert_eq!(f.content, want, "{what}");
            assert_eq!(f.marked, marked, "{what}");
            // The plugin reads back what it would have read from the full object.
            let full = PodInfo::from_pod(&input).unwrap();
            let back = PodInfo::from_pod(&f.content).unwrap();
            assert_eq!(back.host_network, full.host_network, "{what}");
            if marked {
                assert_eq!(back, full, "{what}");
            } else {
                assert!(back.annotations.is_empty(), "{what}");
            }
        }
        let f = pod_file(&pod(json!({"name": "a.b-1", "namespace": "n"}), json!({}))).unwrap();
        assert_eq!(f.rel_path(), "n/a.b-1.json");
    }

    #[test]
    fn bad_objects_are_refused_with_the_field() {
        // Four labels of 62: a valid subdomain of 251 characters, one too many for `<name>.json`.
        let long = [
            "a".repeat(62),
            "b".repeat(62),
            "c".repeat(62),
            "d".repeat(62),
        ]
        .join(".");
        let cases = [
            (
                json!({"metadata": {"namespace": "n"}}),
                "metadata.name is missing",
            ),
            (
                json!({"metadata": {"name": "p"}}),
                "pod \"p\": metadata.namespace is missing",
            ),
            (
                json!({"metadata": {"name": 3, "namespace": "n"}}),
                "metadata.name is 3",
            ),
            (
                json!({"metadata": {"name": "../x", "namespace": "n"}}),
                "pod n/../x: metadata.name \"../x\" is not a DNS-1123 subdomain",
            ),
            (
                json!({"metadata": {"name": "p", "namespace": "a/b"}}),
                "metadata.namespace \"a/b\" is not a DNS-1123 label",
            ),
            (
                json!({"metadata": {"name": "p", "namespace": "Shop"}}),
                "metadata.namespace \"Shop\" is not a DNS-1123 label",
            ),
            (
                json!({"metadata": {"name": "p", "namespace": ""}}),
                "metadata.namespace \"\" is not a DNS-1123 label",
            ),
            (
                json!({"metadata": {"name": long, "namespace": "n"}}),
                "is too long for a file name (251 characters, at most 250)",
            ),
            (
                json!({"metadata": {"name": "p", "namespace": "n", "annotations": {"remora.dev/capture": 1}}}),
                "pod n/p: metadata.annotations[\"remora.dev/capture\"] is 1",
            ),
            (
                json!({"metadata": {"name": "p", "namespace": "n", "annotations": {"remora.dev/capture": "cni"}, "labels": {"a": true}}}),
                "pod n/p: metadata.labels[\"a\"] is true",
            ),
            (
                json!({"metadata": {"name": "p", "namespace": "n"}, "spec": {"containers": [{"name": "remora-proxy", "securityContext": {"runAsUser": "x"}}]}}),
                "runAsUser is \"x\": must be a uid",
            ),
        ];
        for (input, want) in cases {
            let e = pod_file(&input).unwrap_err();
            assert!(e.contains(want), "{input}: {e}");
            assert_eq!(e.lines().count(), 1, "{e}");
        }
    }
}
