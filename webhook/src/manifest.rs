//! A revision's install, rendered from `manifests/install.yaml` (`remora-webhook manifest`).
//!
//! `install.yaml` installs the default revision. Another revision `R` runs beside it with its
//! own copy of the default revision's own objects ([`OWN`]), each named `<name>-R`: its injector
//! config, its webhook Deployment (`--revision=R`, its own certificate Secret, Service, webhook
//! configurations and mesh CA Service), the Service, PodDisruptionBudget and NetworkPolicy of its
//! pods (labelled `app.kubernetes.io/name: remora-webhook-R`, so no selector of another revision
//! picks them), the RBAC naming those objects, its MutatingWebhookConfiguration (the entries of
//! `selectors` for `R`) and its ValidatingWebhookConfiguration. Everything else (the namespace,
//! the ServiceAccount, the mesh CA's root Secret and RBAC, the rules controller's RBAC and Lease,
//! the proxies' ClusterRoles) is shared by all revisions and rendered unchanged.

use std::collections::BTreeMap;
use std::process::ExitCode;

use anyhow::anyhow;
use serde_json::{json, Value};

use crate::cli::{parse_docs, read_input};
use crate::config::Config;
use crate::selectors::{
    check_revision, revision_name, webhooks, INJECTOR_CONFIGMAP, REVISION_LABEL, WEBHOOK_CONFIG,
    WEBHOOK_SERVICE,
};

/// The label that tells one revision's webhook pods from another's.
pub const NAME_LABEL: &str = "app.kubernetes.io/name";
/// The default revision's webhook certificate Secret (created at run time, not in the manifest).
pub const CERT_SECRET: &str = "remora-webhook-certs";
/// The ValidatingWebhookConfiguration of rules ConfigMaps.
pub const VALIDATOR: &str = "remora-rules-validator";
/// The mesh CA's Service.
pub const CA_SERVICE: &str = "remora-ca";
/// The cabundle RBAC (reads and patches the revision's webhook configurations).
pub const CABUNDLE_RBAC: &str = "remora-webhook-cabundle";

/// The default revision's own objects (kind, name): every revision has its own copy.
pub const OWN: [(&str, &str); 12] = [
    ("ConfigMap", INJECTOR_CONFIGMAP),
    ("Role", CERT_SECRET),
    ("RoleBinding", CERT_SECRET),
    ("ClusterRole", CABUNDLE_RBAC),
    ("ClusterRoleBinding", CABUNDLE_RBAC),
    ("Deployment", WEBHOOK_SERVICE),
    ("NetworkPolicy", WEBHOOK_SERVICE),
    ("PodDisruptionBudget", WEBHOOK_SERVICE),
    ("Service", WEBHOOK_SERVICE),
    ("Service", CA_SERVICE),
    ("MutatingWebhookConfiguration", WEBHOOK_CONFIG),
    ("ValidatingWebhookConfiguration", VALIDATOR),
];

/// The `serve` flags naming a revision's own objects, with their values for `rev`.
pub fn serve_flags(rev: &str) -> Vec<(&'static str, String)> {
    vec![
        ("--revision", rev.to_string()),
        ("--cert-secret", revision_name(CERT_SECRET, rev)),
        ("--service", revision_name(WEBHOOK_SERVICE, rev)),
        ("--webhook-config", revision_name(WEBHOOK_CONFIG, rev)),
        ("--validating-webhook-config", revision_name(VALIDATOR, rev)),
        ("--ca-service", revision_name(CA_SERVICE, rev)),
    ]
}

fn kind_name(doc: &Value) -> (&str, &str) {
    (
        doc.get("kind").and_then(Value::as_str).unwrap_or(""),
        doc.pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or(""),
    )
}

/// Whether a document is one of a revision's own objects (by the default revision's names).
pub fn is_own(doc: &Value) -> bool {
    OWN.contains(&kind_name(doc))
}

/// `labels[NAME_LABEL]` becomes the revision's pod name label wherever it is remora-webhook.
fn rename_name_label(labels: Option<&mut Value>, rev: &str) {
    if let Some(v) = labels.and_then(|l| l.get_mut(NAME_LABEL)) {
        if v == WEBHOOK_SERVICE {
            *v = json!(revision_name(WEBHOOK_SERVICE, rev));
        }
    }
}

fn set_flag(args: &mut Vec<Value>, flag: &str, value: &str) {
    let eq = format!("{flag}=");
    let new = json!(format!("{flag}={value}"));
    match args
        .iter()
        .position(|a| a.as_str().is_some_and(|s| s == flag || s.starts_with(&eq)))
    {
        Some(i) => {
            // `--flag value`: the value is the next argument.
            if args[i].as_str() == Some(flag) && i + 1 < args.len() {
                args.remove(i + 1);
            }
            args[i] = new;
        }
        None => args.push(new),
    }
}

fn fail(kind: &str, name: &str, why: &str) -> String {
    format!("{kind} {name}: {why}")
}

/// One own object for revision `rev`.
fn render_own(mut doc: Value, rev: &str) -> Result<Value, String> {
    let (kind, name) = kind_name(&doc);
    let (kind, name) = (kind.to_string(), name.to_string());
    let new_name = revision_name(&name, rev);
    doc["metadata"]["name"] = json!(new_name);
    if !doc["metadata"]["labels"].is_object() {
        doc["metadata"]["labels"] = json!({});
    }
    doc["metadata"]["labels"][REVISION_LABEL] = json!(rev);
    rename_name_label(doc["metadata"].get_mut("labels"), rev);
    let renames: BTreeMap<String, String> = [CERT_SECRET, WEBHOOK_CONFIG, VALIDATOR]
        .iter()
        .map(|n| (n.to_string(), revision_name(n, rev)))
        .collect();
    match kind.as_str() {
        "ConfigMap" => {
            if let Some(text) = doc.pointer("/data/config.yaml").and_then(Value::as_str) {
                let cfg = Config::from_yaml(text)
                    .map_err(|e| fail(&kind, &name, &format!("config.yaml: {e:#}")))?;
                cfg.with_revision(rev)
                    .map_err(|e| fail(&kind, &name, &format!("config.yaml: {e:#}")))?;
            }
        }
        "Role" | "ClusterRole" => {
            let rules = doc.get_mut("rules").and_then(Value::as_array_mut);
            for rule in rules.into_iter().flatten() {
                let names = rule.get_mut("resourceNames").and_then(Value::as_array_mut);
                for n in names.into_iter().flatten() {
                    if let Some(new) = n.as_str().and_then(|s| renames.get(s)) {
                        *n = json!(new);
                    }
                }
            }
        }
        "RoleBinding" | "ClusterRoleBinding" => {
            doc["roleRef"]["name"] = json!(new_name);
        }
        "Deployment" => {
            rename_name_label(doc.pointer_mut("/spec/selector/matchLabels"), rev);
            let t = &mut doc["spec"]["template"];
            if !t["metadata"]["labels"].is_object() {
                return Err(fail(&kind, &name, "pod template has no labels"));
            }
            t["metadata"]["labels"][REVISION_LABEL] = json!(rev);
            rename_name_label(t["metadata"].get_mut("labels"), rev);
            let spec = &mut t["spec"];
            for term in spec
                .pointer_mut(
                    "/affinity/podAntiAffinity/preferredDuringSchedulingIgnoredDuringExecution",
                )
                .and_then(Value::as_array_mut)
                .into_iter()
                .flatten()
            {
                rename_name_label(
                    term.pointer_mut("/podAffinityTerm/labelSelector/matchLabels"),
                    rev,
                );
            }
            let volumes = spec.get_mut("volumes").and_then(Value::as_array_mut);
            for v in volumes.into_iter().flatten() {
                if v.pointer("/configMap/name").and_then(Value::as_str) == Some(INJECTOR_CONFIGMAP)
                {
                    v["configMap"]["name"] = json!(revision_name(INJECTOR_CONFIGMAP, rev));
                }
            }
            let containers = spec.get_mut("containers").and_then(Value::as_array_mut);
            let Some(c) = containers.and_then(|cs| {
                cs.iter_mut().find(|c| {
                    c["args"]
                        .as_array()
                        .is_some_and(|a| a.first().and_then(Value::as_str) == Some("serve"))
                })
            }) else {
                return Err(fail(&kind, &name, "no container runs `serve`"));
            };
            let args = c
                .get_mut("args")
                .and_then(Value::as_array_mut)
                .ok_or_else(|| fail(&kind, &name, "no args"))?;
            for (flag, value) in serve_flags(rev) {
                set_flag(args, flag, &value);
            }
        }
        "Service" | "PodDisruptionBudget" => {
            rename_name_label(doc.pointer_mut("/spec/selector/matchLabels"), rev);
            if kind == "Service" {
                rename_name_label(doc.pointer_mut("/spec/selector"), rev);
            }
        }
        "NetworkPolicy" => {
            rename_name_label(doc.pointer_mut("/spec/podSelector/matchLabels"), rev);
        }
        "MutatingWebhookConfiguration" => {
            doc["webhooks"] = json!(webhooks(rev));
        }
        "ValidatingWebhookConfiguration" => {
            let hooks = doc.get_mut("webhooks").and_then(Value::as_array_mut);
            for w in hooks.into_iter().flatten() {
                if w.pointer("/clientConfig/service/name")
                    .and_then(Value::as_str)
                    == Some(WEBHOOK_SERVICE)
                {
                    w["clientConfig"]["service"]["name"] =
                        json!(revision_name(WEBHOOK_SERVICE, rev));
                }
            }
        }
        _ => {}
    }
    Ok(doc)
}

/// The install of revision `rev` from the documents of `install.yaml` (the default revision's):
/// the shared objects unchanged (left out with `revision_only`) and the revision's own ones.
/// For `default` this is `install.yaml` itself, with the MutatingWebhookConfiguration's entries
/// as `selectors` defines them.
pub fn render(install: &[Value], rev: &str, revision_only: bool) -> Result<Vec<Value>, String> {
    check_revision(rev).map_err(|why| format!("--revision {rev:?}: {why}"))?;
    for (kind, name) in OWN {
        if !install.iter().any(|d| kind_name(d) == (kind, name)) {
            return Err(format!(
                "the install manifest has no {kind} {name}: give remora's manifests/install.yaml (the default revision's install)"
            ));
        }
    }
    if let Some(d) = install.iter().find(|d| {
        is_own(d)
            && d.pointer(&format!(
                "/metadata/labels/{}",
                REVISION_LABEL.replace('/', "~1")
            ))
            .and_then(Value::as_str)
            .is_some_and(|r| r != crate::selectors::DEFAULT_REVISION)
    }) {
        let (kind, name) = kind_name(d);
        return Err(format!(
            "{kind} {name} belongs to another revision ({REVISION_LABEL} is not default): render from the default revision's install.yaml"
        ));
    }
    let mut out = Vec::new();
    for d in install {
        if is_own(d) {
            out.push(render_own(d.clone(), rev)?);
        } else if !revision_only {
            out.push(d.clone());
        }
    }
    Ok(out)
}

/// The documents as a YAML stream of JSON documents: every string is quoted, so a YAML 1.1
/// reader (kubectl's) cannot take a value such as `on` for a boolean.
pub fn to_stream(docs: &[Value]) -> anyhow::Result<String> {
    let mut out = String::new();
    for (i, d) in docs.iter().enumerate() {
        if i > 0 {
            out.push_str("---\n");
        }
        out.push_str(&serde_json::to_string_pretty(d)?);
        out.push('\n');
    }
    Ok(out)
}

/// `manifest -f FILE --revision R [--revision-only]`: prints the install of revision `R`.
pub fn manifest_command(file: &str, rev: &str, revision_only: bool) -> anyhow::Result<ExitCode> {
    let docs = parse_docs(&read_input(file)?).map_err(|e| anyhow!("-f {file}: {e}"))?;
    let out = render(&docs, rev, revision_only).map_err(|e| anyhow!("-f {file}: {e}"))?;
    let what = if revision_only {
        "its own objects only"
    } else {
        "its own objects and the shared ones"
    };
    print!(
        "# remora revision {rev}: {what}, rendered by `remora-webhook manifest --revision {rev}` from {file}\n{}",
        to_stream(&out)?
    );
    Ok(ExitCode::SUCCESS)
}

/// `remora-webhook manifest --tag TAG --revision R`: tag `TAG`'s MutatingWebhookConfiguration
/// ([`crate::selectors::tag_configuration`]), nothing else.
pub fn tag_command(tag: &str, rev: &str) -> anyhow::Result<ExitCode> {
    check_revision(rev).map_err(|why| anyhow!("--revision {rev:?}: {why}"))?;
    crate::selectors::check_tag(tag, rev).map_err(|why| anyhow!("--tag {tag:?}: {why}"))?;
    print!(
        "# remora tag {tag} of revision {rev}: namespaces and pods labelled istio.io/rev={tag} are injected by revision {rev}; rendered by `remora-webhook manifest --tag {tag} --revision {rev}`\n{}",
        to_stream(&[crate::selectors::tag_configuration(tag, rev)])?
    );
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_are_replaced_in_either_form_or_added() {
        let mut args = vec![
            json!("serve"),
            json!("--service=remora-webhook"),
            json!("--cert-secret"),
            json!("remora-webhook-certs"),
            json!("--listen=0.0.0.0:15017"),
        ];
        set_flag(&mut args, "--service", "remora-webhook-b");
        set_flag(&mut args, "--cert-secret", "remora-webhook-certs-b");
        set_flag(&mut args, "--revision", "b");
        assert_eq!(
            args,
            [
                json!("serve"),
                json!("--service=remora-webhook-b"),
                json!("--cert-secret=remora-webhook-certs-b"),
                json!("--listen=0.0.0.0:15017"),
                json!("--revision=b")
            ]
        );
    }

    #[test]
    fn the_stream_quotes_every_string() {
        let docs = vec![
            json!({"kind": "A", "env": [{"name": "X", "value": "on"}]}),
            json!({"kind": "B"}),
        ];
        let text = to_stream(&docs).unwrap();
        assert!(text.contains("\"value\": \"on\""), "{text}");
        assert_eq!(text.matches("\n---\n").count(), 1, "{text}");
        assert_eq!(parse_docs(&text).unwrap(), docs);
    }

    #[test]
    fn an_install_without_the_default_revisions_objects_is_refused() {
        let e = render(
            &[json!({"kind": "Namespace", "metadata": {"name": "x"}})],
            "b",
            false,
        )
        .unwrap_err();
        assert!(
            e.starts_with("the install manifest has no ConfigMap remora-injector"),
            "{e}"
        );
        let e = render(&[], "B", false).unwrap_err();
        assert!(e.starts_with("--revision \"B\": must be lowercase"), "{e}");
    }
}
