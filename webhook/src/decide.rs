//! Whether a pod is injected, and why — in the same order and with the same meaning as Istio.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::annotations::{parse_inject_value, INJECT, STATUS};
use crate::config::{Config, Policy};

/// The injection decision with its reason in words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Inject(String),
    Skip(String),
}

impl Decision {
    pub fn reason(&self) -> &str {
        match self {
            Decision::Inject(r) | Decision::Skip(r) => r,
        }
    }
}

/// A string map under `obj[key]` (labels, annotations); non-string values are ignored.
pub fn string_map(obj: Option<&Value>) -> BTreeMap<String, String> {
    obj.and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| v.as_str().map(|s| (k.clone(), s.to_string())))
                .collect()
        })
        .unwrap_or_default()
}

/// Decides for a pod (raw JSON with `metadata` and `spec`) created in `namespace`.
///
/// Order: hostNetwork → ignored namespaces → the `sidecar.istio.io/inject` label, which wins over
/// the annotation of the same name → the configured policy. A pod that already carries
/// `sidecar.istio.io/status` is re-injected (the caller replaces the previous injection).
pub fn decide(pod: &Value, namespace: &str, cfg: &Config) -> Decision {
    if pod
        .pointer("/spec/hostNetwork")
        .and_then(Value::as_bool)
        .unwrap_or(false)
    {
        return Decision::Skip("pod uses hostNetwork: true; its traffic cannot be captured".into());
    }
    if let Some(why) = cfg.namespace_ignored(namespace) {
        return Decision::Skip(why);
    }
    let labels = string_map(pod.pointer("/metadata/labels"));
    let annotations = string_map(pod.pointer("/metadata/annotations"));
    let (source, value) = match (labels.get(INJECT), annotations.get(INJECT)) {
        (Some(v), _) => ("label", Some(v)),
        (None, Some(v)) => ("annotation", Some(v)),
        (None, None) => ("", None),
    };
    let again = if annotations.contains_key(STATUS) {
        " (already injected: re-injecting in place)"
    } else {
        ""
    };
    if let Some(v) = value {
        match parse_inject_value(v) {
            Some(true) => {
                return Decision::Inject(format!("pod {source} {INJECT}={v:?}{again}"));
            }
            Some(false) => return Decision::Skip(format!("pod {source} {INJECT}={v:?}")),
            None => {
                let d = policy_decision(
                    cfg,
                    &format!("pod {source} {INJECT}={v:?} is not true or false, so"),
                    again,
                );
                return d;
            }
        }
    }
    policy_decision(
        cfg,
        "no sidecar.istio.io/inject label or annotation, so",
        again,
    )
}

fn policy_decision(cfg: &Config, why: &str, again: &str) -> Decision {
    match cfg.policy {
        Policy::Enabled => {
            Decision::Inject(format!("{why} the default policy (enabled) applies{again}"))
        }
        Policy::Disabled => Decision::Skip(format!("{why} the default policy (disabled) applies")),
    }
}

/// Whether the webhook's `namespaceSelector`/`objectSelector` (as our manifests and Istio's set
/// them) would send the pod to the webhook at all. Used by `check-inject`, which sees the
/// namespace labels the API server does not put in the AdmissionReview.
pub fn namespace_selected(
    ns_labels: &BTreeMap<String, String>,
    pod_labels: &BTreeMap<String, String>,
) -> Result<String, String> {
    match ns_labels.get("istio-injection").map(String::as_str) {
        Some("disabled") => {
            return Err(
                "namespace label istio-injection=disabled: the webhook is not called".into(),
            )
        }
        Some("enabled") => return Ok("namespace label istio-injection=enabled".into()),
        _ => {}
    }
    if let Some(rev) = ns_labels.get("istio.io/rev") {
        return Ok(format!("namespace label istio.io/rev={rev}"));
    }
    if pod_labels.get(INJECT).map(String::as_str) == Some("true") {
        return Ok(format!("pod label {INJECT}=true (namespace not labelled)"));
    }
    Err("namespace has no istio-injection=enabled label and the pod no sidecar.istio.io/inject=true label: the webhook is not called".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(labels: Value, annotations: Value) -> Value {
        json!({"metadata": {"labels": labels, "annotations": annotations}, "spec": {"containers": [{"name": "app", "image": "x"}]}})
    }

    #[test]
    fn host_network_is_skipped_first() {
        let mut p = pod(json!({}), json!({INJECT: "true"}));
        p["spec"]["hostNetwork"] = json!(true);
        let d = decide(&p, "default", &Config::default());
        assert!(
            matches!(d, Decision::Skip(ref r) if r.contains("hostNetwork")),
            "{d:?}"
        );
    }

    #[test]
    fn system_and_mesh_namespaces_are_skipped() {
        let p = pod(json!({}), json!({INJECT: "true"}));
        for ns in [
            "kube-system",
            "kube-public",
            "kube-node-lease",
            "remora-system",
        ] {
            assert!(
                matches!(decide(&p, ns, &Config::default()), Decision::Skip(_)),
                "{ns}"
            );
        }
    }

    #[test]
    fn label_wins_over_annotation() {
        let p = pod(json!({INJECT: "false"}), json!({INJECT: "true"}));
        let d = decide(&p, "default", &Config::default());
        assert!(
            matches!(d, Decision::Skip(ref r) if r.contains("label")),
            "{d:?}"
        );
        let p = pod(json!({INJECT: "true"}), json!({INJECT: "false"}));
        assert!(matches!(
            decide(&p, "default", &Config::default()),
            Decision::Inject(_)
        ));
    }

    #[test]
    fn policy_applies_without_or_with_unknown_value() {
        let mut cfg = Config::default();
        let plain = pod(json!({}), json!({}));
        let odd = pod(json!({}), json!({INJECT: "sometimes"}));
        assert!(matches!(
            decide(&plain, "default", &cfg),
            Decision::Inject(_)
        ));
        assert!(matches!(decide(&odd, "default", &cfg), Decision::Inject(_)));
        cfg.policy = Policy::Disabled;
        assert!(matches!(decide(&plain, "default", &cfg), Decision::Skip(_)));
        let d = decide(&odd, "default", &cfg);
        assert!(
            matches!(d, Decision::Skip(ref r) if r.contains("sometimes")),
            "{d:?}"
        );
        let opted = pod(json!({}), json!({INJECT: "true"}));
        assert!(matches!(
            decide(&opted, "default", &cfg),
            Decision::Inject(_)
        ));
    }

    #[test]
    fn already_injected_is_reinjected() {
        let p = pod(json!({}), json!({STATUS: "{}"}));
        let d = decide(&p, "default", &Config::default());
        assert!(
            matches!(d, Decision::Inject(ref r) if r.contains("re-injecting")),
            "{d:?}"
        );
    }

    #[test]
    fn namespace_selection() {
        let m = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        assert!(namespace_selected(&m(&[("istio-injection", "enabled")]), &m(&[])).is_ok());
        assert!(namespace_selected(
            &m(&[("istio-injection", "disabled")]),
            &m(&[(INJECT, "true")])
        )
        .is_err());
        assert!(namespace_selected(&m(&[("istio.io/rev", "default")]), &m(&[])).is_ok());
        assert!(namespace_selected(&m(&[]), &m(&[])).is_err());
        assert!(namespace_selected(&m(&[]), &m(&[(INJECT, "true")])).is_ok());
    }
}
