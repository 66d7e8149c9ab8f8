//! Whether a pod is injected, and why — in the same order and with the same meaning as Istio.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::annotations::{parse_inject_value, INJECT, STATUS};
use crate::config::{Config, Policy};
use crate::selectors::{Selection, DEFAULT_REVISION, REV_LABEL};

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

/// Istio's sidecar container.
pub const ISTIO_PROXY: &str = "istio-proxy";

/// Whether Istio injected the pod: it carries `sidecar.istio.io/status` and Istio's sidecar
/// (an `istio-proxy` container, or the status naming one). Our own injection never leaves an
/// `istio-proxy` container (a pod's own one is merged into `remora-proxy`).
pub fn injected_by_istio(pod: &Value) -> bool {
    let annotations = string_map(pod.pointer("/metadata/annotations"));
    let Some(status) = annotations.get(STATUS) else {
        return false;
    };
    let recorded: Value = serde_json::from_str(status).unwrap_or(Value::Null);
    ["containers", "initContainers"].iter().any(|list| {
        let in_status = recorded
            .get(*list)
            .and_then(Value::as_array)
            .is_some_and(|a| a.iter().any(|n| n.as_str() == Some(ISTIO_PROXY)));
        let in_spec = pod
            .pointer(&format!("/spec/{list}"))
            .and_then(Value::as_array)
            .is_some_and(|a| {
                a.iter()
                    .any(|c| c.get("name").and_then(Value::as_str) == Some(ISTIO_PROXY))
            });
        in_status || in_spec
    })
}

/// Decides for a pod (raw JSON with `metadata` and `spec`) created in `namespace`, sent by the
/// webhook entry `sel` names.
///
/// Order: the selection (the entry belongs to this injector's revision, and the pod's labels
/// satisfy its objectSelector) → hostNetwork → ignored namespaces → a pod Istio injected is left
/// alone unless its namespace was moved to remora → the `sidecar.istio.io/inject` label, which
/// wins over the annotation of the same name → the configured policy. A pod that already carries
/// `sidecar.istio.io/status` is re-injected (the caller replaces the previous injection).
pub fn decide(pod: &Value, namespace: &str, cfg: &Config, sel: &Selection) -> Decision {
    let labels = string_map(pod.pointer("/metadata/labels"));
    let own = cfg.revision();
    if sel.revision != own {
        return Decision::Skip(format!(
            "sent by {} of revision {}, but this injector is revision {own}: not injecting (each revision's webhook configuration must call its own revision's Service)",
            sel.entry.webhook_name(),
            sel.revision
        ));
    }
    let object = sel.entry.object_selector(sel.label_value());
    let m = object.evaluate(&labels);
    if !m.matched {
        return Decision::Skip(format!(
            "the pod does not satisfy the objectSelector of {} (revision {}): {}; the API server does not call that entry for it, so it is not injected",
            sel.entry.webhook_name(),
            sel.revision,
            m.reason
        ));
    }
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
    let annotations = string_map(pod.pointer("/metadata/annotations"));
    let istio = injected_by_istio(pod);
    if istio && !sel.namespace_moved() {
        return Decision::Skip(format!(
            "already injected by Istio ({ISTIO_PROXY} container, {STATUS} annotation): left alone, namespace {namespace} is not moved to remora (label it {REV_LABEL}=<a remora revision other than {DEFAULT_REVISION}> to move it)"
        ));
    }
    let (source, value) = match (labels.get(INJECT), annotations.get(INJECT)) {
        (Some(v), _) => ("label", Some(v)),
        (None, Some(v)) => ("annotation", Some(v)),
        (None, None) => ("", None),
    };
    let again = if istio {
        format!(
            " (injected by Istio: its sidecar is replaced, namespace {namespace} is moved to remora by {REV_LABEL}={})",
            sel.label_value()
        )
    } else if annotations.contains_key(STATUS) {
        " (already injected: re-injecting in place)".to_string()
    } else {
        String::new()
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
                    &again,
                );
                return d;
            }
        }
    }
    policy_decision(
        cfg,
        "no sidecar.istio.io/inject label or annotation, so",
        &again,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::selectors::{select, Entry, Source};
    use serde_json::json;

    fn pod(labels: Value, annotations: Value) -> Value {
        json!({"metadata": {"labels": labels, "annotations": annotations}, "spec": {"containers": [{"name": "app", "image": "x"}]}})
    }

    /// As the webhook configuration from before revisions sent pods (path `/inject`).
    fn legacy(p: &Value, ns: &str, cfg: &Config) -> Decision {
        decide(p, ns, cfg, &Selection::legacy())
    }

    #[test]
    fn host_network_is_skipped_first() {
        let mut p = pod(json!({}), json!({INJECT: "true"}));
        p["spec"]["hostNetwork"] = json!(true);
        let d = legacy(&p, "default", &Config::default());
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
                matches!(legacy(&p, ns, &Config::default()), Decision::Skip(_)),
                "{ns}"
            );
        }
    }

    #[test]
    fn label_wins_over_annotation() {
        let p = pod(json!({INJECT: "no"}), json!({INJECT: "true"}));
        let d = legacy(&p, "default", &Config::default());
        assert!(
            matches!(d, Decision::Skip(ref r) if r.contains("pod label sidecar.istio.io/inject=\"no\"")),
            "{d:?}"
        );
        let p = pod(json!({INJECT: "true"}), json!({INJECT: "false"}));
        assert!(matches!(
            legacy(&p, "default", &Config::default()),
            Decision::Inject(_)
        ));
    }

    #[test]
    fn policy_applies_without_or_with_unknown_value() {
        let mut cfg = Config::default();
        let plain = pod(json!({}), json!({}));
        let odd = pod(json!({}), json!({INJECT: "sometimes"}));
        assert!(matches!(
            legacy(&plain, "default", &cfg),
            Decision::Inject(_)
        ));
        assert!(matches!(legacy(&odd, "default", &cfg), Decision::Inject(_)));
        cfg.policy = Policy::Disabled;
        assert!(matches!(legacy(&plain, "default", &cfg), Decision::Skip(_)));
        let d = legacy(&odd, "default", &cfg);
        assert!(
            matches!(d, Decision::Skip(ref r) if r.contains("sometimes")),
            "{d:?}"
        );
        let opted = pod(json!({}), json!({INJECT: "true"}));
        assert!(matches!(
            legacy(&opted, "default", &cfg),
            Decision::Inject(_)
        ));
    }

    #[test]
    fn already_injected_is_reinjected() {
        let p = pod(json!({}), json!({STATUS: "{}"}));
        let d = legacy(&p, "default", &Config::default());
        assert!(
            matches!(d, Decision::Inject(ref r) if r.contains("re-injecting")),
            "{d:?}"
        );
    }

    fn istio_injected() -> Value {
        let mut p = pod(
            json!({"app": "web"}),
            json!({STATUS: r#"{"initContainers":["istio-init","istio-proxy"],"containers":null,"volumes":["istio-envoy"],"imagePullSecrets":null,"revision":"default"}"#}),
        );
        p["spec"]["initContainers"] =
            json!([{"name": "istio-init"}, {"name": "istio-proxy", "restartPolicy": "Always"}]);
        p
    }

    #[test]
    fn istio_injection_is_recognised() {
        assert!(injected_by_istio(&istio_injected()));
        // Old style: istio-proxy a regular container, the status naming it.
        let mut old = pod(
            json!({}),
            json!({STATUS: r#"{"containers":["istio-proxy"],"initContainers":["istio-init"]}"#}),
        );
        assert!(injected_by_istio(&old));
        // A status that does not parse, with Istio's container present.
        old["metadata"]["annotations"][STATUS] = json!("garbage");
        old["spec"]["containers"] = json!([{"name": "app"}, {"name": "istio-proxy"}]);
        assert!(injected_by_istio(&old));
        // Our own injection, and a pod declaring its own istio-proxy override without a status.
        let ours = pod(
            json!({}),
            json!({STATUS: r#"{"initContainers":["remora-proxy","remora-init"],"containers":[]}"#}),
        );
        assert!(!injected_by_istio(&ours));
        let mut over = pod(json!({}), json!({}));
        over["spec"]["containers"] =
            json!([{"name": "app"}, {"name": "istio-proxy", "image": "auto"}]);
        assert!(!injected_by_istio(&over));
    }

    /// The whole selection: namespace labels × pod labels and annotations × installed revisions
    /// × the injector's revision → not called (and why), or called by an entry and then
    /// injected or skipped (and why). `select` is the API server's part (the configurations'
    /// selectors), `decide` the injector's.
    #[test]
    fn selection_and_decision_table() {
        enum Want<'a> {
            NotCalled(&'a str),
            Injected(&'a str, Entry, &'a str),
            Skipped(&'a str, Entry, &'a str),
        }
        use Want::*;
        struct Row<'a> {
            ns: Vec<(&'a str, &'a str)>,
            pod: Value,
            installed: &'a [&'a str],
            want: Want<'a>,
        }
        let en = ("istio-injection", "enabled");
        let dis = ("istio-injection", "disabled");
        let plain = || pod(json!({}), json!({}));
        let rows = vec![
            Row { ns: vec![en], pod: plain(), installed: &["default"],
                  want: Injected("default", Entry::Namespace, "default policy (enabled)") },
            Row { ns: vec![en], pod: pod(json!({}), json!({INJECT: "false"})), installed: &["default"],
                  want: Skipped("default", Entry::Namespace, "pod annotation sidecar.istio.io/inject=\"false\"") },
            Row { ns: vec![en], pod: pod(json!({INJECT: "false"}), json!({})), installed: &["default"],
                  want: NotCalled("pod label sidecar.istio.io/inject=false") },
            Row { ns: vec![dis], pod: pod(json!({INJECT: "true"}), json!({})), installed: &["default"],
                  want: NotCalled("istio-injection=disabled") },
            Row { ns: vec![("istio.io/rev", "b")], pod: plain(), installed: &["default", "b"],
                  want: Injected("b", Entry::RevNamespace, "default policy (enabled)") },
            Row { ns: vec![("istio.io/rev", "b")], pod: plain(), installed: &["default"],
                  want: NotCalled("istio.io/rev=b names no installed remora revision") },
            Row { ns: vec![], pod: pod(json!({"istio.io/rev": "b"}), json!({})), installed: &["default", "b"],
                  want: Injected("b", Entry::RevObject, "default policy (enabled)") },
            Row { ns: vec![], pod: pod(json!({INJECT: "true"}), json!({})), installed: &["default", "b"],
                  want: Injected("default", Entry::Object, "pod label sidecar.istio.io/inject=\"true\"") },
            Row { ns: vec![], pod: pod(json!({}), json!({INJECT: "true"})), installed: &["default"],
                  want: NotCalled("no webhook is called") },
            Row { ns: vec![], pod: plain(), installed: &["default", "b"], want: NotCalled("no webhook is called") },
            // Pods Istio injected: left alone, unless the namespace is moved to remora.
            Row { ns: vec![en], pod: istio_injected(), installed: &["default"],
                  want: Skipped("default", Entry::Namespace, "already injected by Istio") },
            Row { ns: vec![("istio.io/rev", "default")], pod: istio_injected(), installed: &["default"],
                  want: Skipped("default", Entry::RevNamespace, "namespace shop is not moved to remora") },
            Row { ns: vec![], pod: { let mut p = istio_injected(); p["metadata"]["labels"]["istio.io/rev"] = json!("b"); p },
                  installed: &["b"], want: Skipped("b", Entry::RevObject, "already injected by Istio") },
            Row { ns: vec![("istio.io/rev", "b")], pod: istio_injected(), installed: &["default", "b"],
                  want: Injected("b", Entry::RevNamespace, "injected by Istio: its sidecar is replaced, namespace shop is moved to remora by istio.io/rev=b") },
        ];
        for (i, r) in rows.into_iter().enumerate() {
            let installed: Vec<String> = r.installed.iter().map(|s| s.to_string()).collect();
            let ns_l =
                r.ns.iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect();
            let pod_l = string_map(r.pod.pointer("/metadata/labels"));
            let sel = select("shop", &ns_l, &pod_l, &installed);
            let ctx = format!(
                "row {i}: ns {:?} pod {} revisions {installed:?}: {sel:?}",
                r.ns, r.pod
            );
            let (rev, entry, inject, words) = match (r.want, &sel) {
                (NotCalled(words), Err(why)) => {
                    assert!(why.contains(words), "{ctx}");
                    continue;
                }
                (Injected(rv, e, w), Ok(_)) => (rv, e, true, w),
                (Skipped(rv, e, w), Ok(_)) => (rv, e, false, w),
                _ => panic!("{ctx}: selection differs"),
            };
            let Ok(sel) = sel else { unreachable!() };
            assert_eq!((sel.revision.as_str(), sel.entry), (rev, entry), "{ctx}");
            // The injector of that revision decides; the other installed revisions' skip it.
            let cfg = Config::default().with_revision(rev).unwrap();
            let d = decide(&r.pod, "shop", &cfg, &sel);
            match &d {
                Decision::Inject(why) => assert!(inject && why.contains(words), "{ctx}: {d:?}"),
                Decision::Skip(why) => assert!(!inject && why.contains(words), "{ctx}: {d:?}"),
            }
            for other in installed.iter().filter(|o| o.as_str() != rev) {
                let cfg = Config::default().with_revision(other).unwrap();
                let d = decide(&r.pod, "shop", &cfg, &sel);
                assert!(
                    matches!(&d, Decision::Skip(why) if why.contains(&format!("this injector is revision {other}"))),
                    "{ctx}: injector {other}: {d:?}"
                );
            }
        }
    }

    /// A tag's entry: the tag's revision injects (the objectSelector names the tag), a pod Istio
    /// injected in a namespace labelled with the tag is moved to remora, other revisions skip.
    #[test]
    fn a_tag_is_injected_by_its_revision() {
        let b = Config::default().with_revision("b").unwrap();
        let sel = Selection::tagged("b", "prod", Entry::RevObject, Source::Path);
        let p = pod(json!({"istio.io/rev": "prod"}), json!({}));
        assert!(matches!(decide(&p, "shop", &b, &sel), Decision::Inject(_)));
        let d = decide(
            &pod(json!({"istio.io/rev": "b"}), json!({})),
            "shop",
            &b,
            &sel,
        );
        assert!(
            matches!(&d, Decision::Skip(why) if why.contains("istio.io/rev=b does not satisfy istio.io/rev In [prod]")),
            "{d:?}"
        );
        let c = Config::default().with_revision("c").unwrap();
        let d = decide(&p, "shop", &c, &sel);
        assert!(
            matches!(&d, Decision::Skip(why) if why.contains("this injector is revision c")),
            "{d:?}"
        );
        let ns_sel = Selection::tagged("b", "prod", Entry::RevNamespace, Source::Path);
        assert!(ns_sel.namespace_moved());
        let d = decide(&istio_injected(), "shop", &b, &ns_sel);
        assert!(
            matches!(&d, Decision::Inject(why) if why.contains("moved to remora by istio.io/rev=prod")),
            "{d:?}"
        );
    }

    /// A selection whose objectSelector the pod does not satisfy (an edited configuration) is
    /// not injected: the injector checks the entry's objectSelector itself.
    #[test]
    fn the_entrys_object_selector_is_checked_again() {
        let cfg = Config::default().with_revision("b").unwrap();
        let sel = Selection::new("b", Entry::RevObject, Source::Path);
        let d = decide(
            &pod(json!({"istio.io/rev": "c"}), json!({})),
            "shop",
            &cfg,
            &sel,
        );
        assert!(
            matches!(&d, Decision::Skip(why) if why.contains("does not satisfy the objectSelector of rev.object.sidecar-injector.remora.dev (revision b): istio.io/rev=c does not satisfy istio.io/rev In [b]")),
            "{d:?}"
        );
        let d = decide(
            &pod(json!({"istio.io/rev": "b"}), json!({})),
            "shop",
            &cfg,
            &sel,
        );
        assert!(matches!(d, Decision::Inject(_)), "{d:?}");
    }
}
