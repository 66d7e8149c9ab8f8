//! Pods inside workloads: where each kind keeps its pod template, and how to turn a template into
//! the Pod the API server would send to the webhook.

use serde_json::{json, Value};

/// JSON pointer to the pod template of a workload kind (`""` for a Pod itself).
pub fn template_pointer(kind: &str) -> Option<&'static str> {
    match kind {
        "Pod" => Some(""),
        "Deployment"
        | "StatefulSet"
        | "DaemonSet"
        | "ReplicaSet"
        | "Job"
        | "ReplicationController" => Some("/spec/template"),
        "CronJob" => Some("/spec/jobTemplate/spec/template"),
        _ => None,
    }
}

/// `kind/name` for messages.
pub fn describe(doc: &Value) -> String {
    let kind = doc.get("kind").and_then(Value::as_str).unwrap_or("?");
    let name = doc
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .or_else(|| {
            doc.pointer("/metadata/generateName")
                .and_then(Value::as_str)
        })
        .unwrap_or("?");
    format!("{kind}/{name}")
}

/// The Pod the API server would create from a workload's template (what the webhook sees),
/// owned by the workload (as `remora inject -f` names it: Istio's `kube-inject` takes the
/// workload's name too).
pub fn pod_from_template(doc: &Value, template: &Value, namespace: &str) -> Value {
    let name = doc
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("pod");
    let mut meta = template
        .get("metadata")
        .cloned()
        .filter(Value::is_object)
        .unwrap_or_else(|| json!({}));
    meta["generateName"] = json!(format!("{name}-"));
    meta["namespace"] = json!(namespace);
    if let Some(kind) = doc.get("kind").and_then(Value::as_str) {
        meta["ownerReferences"] = json!([{"kind": kind, "name": name, "controller": true}]);
    }
    if let Some(m) = meta.as_object_mut() {
        m.remove("name");
    }
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": meta,
        "spec": template.get("spec").cloned().unwrap_or_else(|| json!({})),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pointers() {
        assert_eq!(
            template_pointer("CronJob"),
            Some("/spec/jobTemplate/spec/template")
        );
        assert_eq!(template_pointer("Service"), None);
    }

    #[test]
    fn pod_from_deployment() {
        let d = json!({"kind": "Deployment", "metadata": {"name": "web"}, "spec": {"template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": []}}}});
        let p = pod_from_template(&d, d.pointer("/spec/template").unwrap(), "shop");
        assert_eq!(p["metadata"]["generateName"], "web-");
        assert_eq!(p["metadata"]["namespace"], "shop");
        assert_eq!(p["metadata"]["labels"]["app"], "web");
        assert_eq!(
            p["metadata"]["ownerReferences"],
            json!([{"kind": "Deployment", "name": "web", "controller": true}])
        );
        assert_eq!(describe(&d), "Deployment/web");
    }
}
