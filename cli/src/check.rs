//! `remora check-inject` against a cluster (pure part): for one pod as the API server would send
//! it, evaluate every MutatingWebhookConfiguration that intercepts pod creation exactly as the
//! API server does (rules, namespaceSelector, objectSelector), then, for remora's own webhooks,
//! the injector's decision (`inject::inject_pod`, the code the webhook runs).
//!
//! The webhook configurations, namespaces and running pods are k8s-openapi's typed objects. The
//! pod handed to the injector stays raw JSON: the webhook receives the pod as the API server
//! serializes it, unknown fields included, and its decision is judged on that same object.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use k8s_openapi::api::admissionregistration::v1::{MutatingWebhook, MutatingWebhookConfiguration};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::Serialize;
use serde_json::Value;

use super::objects;
use super::selector::Selector;
use remora_webhook::annotations::STATUS;
use remora_webhook::config::Config;
use remora_webhook::inject::{inject_pod_as, Outcome};
use remora_webhook::selectors::{check_revision, Selection, DEFAULT_REVISION, REV_LABEL};
use remora_webhook::template::PROXY_NAME;

/// The Service remora's webhook runs behind: `name` for the default revision, `name-<revision>`
/// for another.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ServiceRef {
    pub namespace: String,
    pub name: String,
}

impl ServiceRef {
    /// The revision whose injector runs behind Service `ns/name`, when it is one of remora's.
    pub fn revision_of(&self, ns: &str, name: &str) -> Option<String> {
        if ns != self.namespace {
            return None;
        }
        if name == self.name {
            return Some(DEFAULT_REVISION.to_string());
        }
        let rev = name.strip_prefix(&self.name)?.strip_prefix('-')?;
        check_revision(rev).ok().map(|()| rev.to_string())
    }
}

impl Default for ServiceRef {
    fn default() -> Self {
        ServiceRef {
            namespace: "remora-system".into(),
            name: "remora-webhook".into(),
        }
    }
}

/// What one webhook does with the pod.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Verdict {
    /// remora's webhook is called and injects.
    Injected,
    /// remora's webhook is called and leaves the pod alone.
    NotInjected,
    /// remora's webhook is called and refuses the pod (pod creation fails).
    Denied,
    /// The API server does not call this webhook for the pod.
    NotCalled,
    /// Another product's webhook is called; what it does is not known here.
    Called,
    /// The webhook's configuration cannot be evaluated (the API server would reject it).
    Invalid,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Injected => "INJECTED",
            Verdict::NotInjected => "NOT INJECTED",
            Verdict::Denied => "DENIED",
            Verdict::NotCalled => "NOT CALLED",
            Verdict::Called => "CALLED",
            Verdict::Invalid => "INVALID",
        }
    }
}

/// One webhook's verdict and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct WebhookVerdict {
    /// `MutatingWebhookConfiguration` name.
    pub configuration: String,
    /// `webhooks[].name`.
    pub webhook: String,
    /// Points at remora's Service.
    pub remora: bool,
    /// remora's: the revision of the injector behind its Service.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    pub verdict: Verdict,
    pub reason: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

/// A pod that exists, and how it compares with the verdict.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RunningPod {
    pub name: String,
    pub injected: bool,
    pub note: String,
}

/// The whole answer for one pod or workload.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PodCheck {
    /// `Pod/web-1`, `Deployment/web`.
    pub object: String,
    pub namespace: String,
    /// INJECTED, NOT INJECTED or DENIED: what happens to a pod created now.
    pub verdict: Verdict,
    pub summary: String,
    pub webhooks: Vec<WebhookVerdict>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub running: Vec<RunningPod>,
}

/// Namespace labels as the API server sees them: the object's labels plus
/// `kubernetes.io/metadata.name`, which the API server always sets.
pub fn namespace_labels(ns_obj: &Namespace, ns: &str) -> BTreeMap<String, String> {
    let mut l = objects::labels(&ns_obj.metadata);
    l.entry("kubernetes.io/metadata.name".into())
        .or_insert_with(|| ns.to_string());
    l
}

/// Whether a webhook's `rules` send `CREATE` of core/v1 `pods` to it.
pub fn intercepts_pod_create(webhook: &MutatingWebhook) -> bool {
    let Some(rules) = &webhook.rules else {
        return false;
    };
    rules.iter().any(|r| {
        let has = |field: &Option<Vec<String>>, want: &[&str]| {
            field.iter().flatten().any(|x| want.contains(&x.as_str()))
        };
        let scope = r.scope.as_deref().unwrap_or("*");
        has(&r.operations, &["CREATE", "*"])
            && has(&r.api_groups, &["", "*"])
            && has(&r.api_versions, &["v1", "*"])
            && has(&r.resources, &["pods", "*", "*/*"])
            && (scope == "*" || scope == "Namespaced")
    })
}

/// Where a webhook's `clientConfig` points, for messages; and, when that is remora's Service,
/// the revision of the injector behind it.
fn client_target(webhook: &MutatingWebhook, remora: &ServiceRef) -> (String, Option<String>) {
    let cc = &webhook.client_config;
    if let Some(svc) = &cc.service {
        let (ns, name) = (svc.namespace.as_str(), svc.name.as_str());
        return (format!("service {ns}/{name}"), remora.revision_of(ns, name));
    }
    let url = cc.url.as_deref().unwrap_or("(no clientConfig)");
    (format!("url {url}"), None)
}

/// The revisions whose injectors the configurations call (their Services are remora's).
pub fn remora_revisions(
    configurations: &[MutatingWebhookConfiguration],
    remora: &ServiceRef,
) -> Vec<String> {
    let mut out: Vec<String> = configurations
        .iter()
        .flat_map(|m| m.webhooks.iter().flatten())
        .filter_map(|w| client_target(w, remora).1)
        .collect();
    out.sort();
    out.dedup();
    out
}

/// Istio's sidecar injector webhooks (`*sidecar-injector.istio.io`).
fn is_istio_injector(w: &WebhookVerdict) -> bool {
    !w.remora && w.webhook.ends_with("sidecar-injector.istio.io")
}

/// The labels of a pod as the injector receives it (raw, see the module docs).
pub fn raw_pod_labels(pod: &Value) -> BTreeMap<String, String> {
    pod.get("metadata")
        .and_then(|m| serde_json::from_value::<ObjectMeta>(m.clone()).ok())
        .map(|m| objects::labels(&m))
        .unwrap_or_default()
}

/// Evaluates every webhook for `pod` (raw, as the webhook would receive it) created in
/// namespace `ns` (labels `ns_labels`). `configs` are the injector configs of remora's revisions
/// (a revision without one: the built-in defaults). Configurations are evaluated in the order the
/// API server calls them, by name.
pub fn evaluate_webhooks(
    pod: &Value,
    ns: &str,
    ns_labels: &BTreeMap<String, String>,
    configurations: &[MutatingWebhookConfiguration],
    configs: &BTreeMap<String, Config>,
    remora: &ServiceRef,
) -> Vec<WebhookVerdict> {
    let pod_labels = raw_pod_labels(pod);
    let mut out = Vec::new();
    let mut ordered: Vec<&MutatingWebhookConfiguration> = configurations.iter().collect();
    ordered.sort_by(|a, b| objects::name(&a.metadata).cmp(&objects::name(&b.metadata)));
    // The selections of remora's webhooks that are called, to judge Istio's injector after.
    let mut ours: Vec<(usize, Option<Selection>)> = Vec::new();
    for mwc in ordered {
        let cname = objects::name(&mwc.metadata).unwrap_or("?").to_string();
        let Some(hooks) = &mwc.webhooks else {
            continue;
        };
        for (i, wh) in hooks.iter().enumerate() {
            let wname = if wh.name.is_empty() { "?" } else { &wh.name }.to_string();
            let (target, revision) = client_target(wh, remora);
            let is_remora = revision.is_some();
            let intercepts = intercepts_pod_create(wh);
            if !intercepts && !is_remora {
                continue; // not about pods: irrelevant here
            }
            let mut v = WebhookVerdict {
                configuration: cname.clone(),
                webhook: wname,
                remora: is_remora,
                revision: revision.clone(),
                verdict: Verdict::NotCalled,
                reason: String::new(),
                notes: Vec::new(),
            };
            let no_ca = wh
                .client_config
                .ca_bundle
                .as_ref()
                .is_none_or(|ca| ca.0.is_empty());
            if is_remora && no_ca {
                v.notes.push("clientConfig.caBundle is empty: the API server cannot verify the webhook's certificate, so calls fail (the webhook fills it itself when run with --manage-certs)".into());
            }
            if let Some(mc) = &wh.match_conditions {
                if !mc.is_empty() {
                    v.notes.push(format!(
                        "{} matchConditions (CEL) are not evaluated here; they can still exclude the pod",
                        mc.len()
                    ));
                }
            }
            if !intercepts {
                v.reason = format!("its rules do not include CREATE of v1 pods ({target})");
                out.push(v);
                continue;
            }
            let field = |s: &str| format!("{cname}: webhooks[{i}].{s}");
            let ns_sel = match Selector::parse(
                wh.namespace_selector.as_ref(),
                &field("namespaceSelector"),
            ) {
                Ok(s) => s,
                Err(e) => {
                    v.verdict = Verdict::Invalid;
                    v.reason = e;
                    out.push(v);
                    continue;
                }
            };
            let obj_sel =
                match Selector::parse(wh.object_selector.as_ref(), &field("objectSelector")) {
                    Ok(s) => s,
                    Err(e) => {
                        v.verdict = Verdict::Invalid;
                        v.reason = e;
                        out.push(v);
                        continue;
                    }
                };
            let nm = ns_sel.evaluate(ns_labels);
            if !nm.matched {
                v.reason = format!("namespaceSelector: namespace {ns}: {}", nm.reason);
                out.push(v);
                continue;
            }
            let om = obj_sel.evaluate(&pod_labels);
            if !om.matched {
                v.reason = format!("objectSelector: pod: {}", om.reason);
                out.push(v);
                continue;
            }
            let called = format!(
                "called (namespaceSelector {}; objectSelector {})",
                nm.reason, om.reason
            );
            let Some(rev) = revision else {
                v.verdict = Verdict::Called;
                v.reason = format!(
                    "{called}; not remora's webhook ({target}), so its decision is not known here"
                );
                out.push(v);
                continue;
            };
            // The entry's path names the revision and entry it stands for; the injector behind
            // the Service checks them (as the webhook does with the request path).
            let path = wh
                .client_config
                .service
                .as_ref()
                .and_then(|s| s.path.as_deref())
                .unwrap_or("/");
            let selection = match Selection::from_path(path) {
                Ok(s) => s,
                Err(why) => {
                    v.verdict = Verdict::NotInjected;
                    v.reason = format!("{called}; injector skips: not injecting: {why}");
                    ours.push((out.len(), None));
                    out.push(v);
                    continue;
                }
            };
            let cfg = match configs.get(&rev) {
                Some(c) => c.clone(),
                None => match Config::default().with_revision(&rev) {
                    Ok(c) => c,
                    Err(e) => {
                        v.verdict = Verdict::Invalid;
                        v.reason = format!("{target}: {e:#}");
                        out.push(v);
                        continue;
                    }
                },
            };
            ours.push((out.len(), Some(selection.clone())));
            match inject_pod_as(pod, ns, &cfg, &selection) {
                Outcome::Injected { reason, .. } => {
                    v.verdict = Verdict::Injected;
                    v.reason = format!("{called}; injector (revision {rev}): {reason}");
                }
                Outcome::Skipped(reason) => {
                    v.verdict = Verdict::NotInjected;
                    v.reason = format!("{called}; injector (revision {rev}) skips: {reason}");
                }
                Outcome::Denied(reason) => {
                    v.verdict = Verdict::Denied;
                    v.reason = format!(
                        "{called}; injector denies the pod, so its creation fails: {reason}"
                    );
                }
            }
            out.push(v);
        }
    }
    istio_first(&mut out, &ours, ns);
    out
}

/// Istio's injector called before remora's (configurations are called in name order) injects
/// the pod first, and remora's injector leaves a pod Istio injected alone unless the namespace is
/// moved to remora. Istio's own decision is not known here, so this says "when it injects".
fn istio_first(out: &mut [WebhookVerdict], called: &[(usize, Option<Selection>)], ns: &str) {
    for (i, sel) in called {
        let Some(istio) = out[..*i]
            .iter()
            .find(|w| is_istio_injector(w) && w.verdict == Verdict::Called)
            .map(|w| format!("{}/{}", w.configuration, w.webhook))
        else {
            continue;
        };
        let v = &mut out[*i];
        if sel.as_ref().is_some_and(Selection::namespace_moved) {
            v.notes.push(format!(
                "Istio's webhook {istio} is called first (the API server calls configurations in name order): it injects too, and this injector replaces its sidecar (the namespace is moved to remora); a remora revision named as one of Istio's revisions or tags makes both inject"
            ));
            continue;
        }
        if v.verdict == Verdict::Injected {
            v.verdict = Verdict::NotInjected;
            v.reason = format!(
                "{}; but Istio's webhook {istio} is called first (the API server calls configurations in name order), and a pod it injects is left alone by this injector: namespace {ns} is not moved to remora (label it {REV_LABEL}=<a remora revision other than {DEFAULT_REVISION}>)",
                v.reason
            );
        }
    }
}

/// A running pod as its controller submitted it: what an earlier injection added (the
/// containers, init containers and volumes listed in `sidecar.istio.io/status`, and that
/// annotation) is taken out, so the verdict is about creating the pod again, not about
/// re-injecting an injected object. Raw JSON in and out: the result goes to the injector, which
/// sees pods as the API server sends them (see the module docs).
pub fn as_created(pod: &Value) -> Value {
    let mut p = pod.clone();
    let Some(status) = pod
        .pointer("/metadata/annotations")
        .and_then(|a| a.get(STATUS))
        .and_then(Value::as_str)
    else {
        return p;
    };
    let recorded: Value = serde_json::from_str(status).unwrap_or(Value::Null);
    for (field, ptr) in [
        ("initContainers", "/spec/initContainers"),
        ("containers", "/spec/containers"),
        ("volumes", "/spec/volumes"),
    ] {
        let names: Vec<&str> = recorded
            .get(field)
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        if let Some(list) = p.pointer_mut(ptr).and_then(Value::as_array_mut) {
            list.retain(|c| {
                !c.get("name")
                    .and_then(Value::as_str)
                    .is_some_and(|n| names.contains(&n))
            });
        }
    }
    if let Some(a) = p
        .pointer_mut("/metadata/annotations")
        .and_then(Value::as_object_mut)
    {
        a.remove(STATUS);
    }
    p
}

/// Whether a pod (as it runs) carries remora's proxy.
pub fn has_proxy(pod: &Pod) -> bool {
    objects::containers(pod).any(|(c, _)| c.name == PROXY_NAME)
}

/// Whether the pod runs remora's proxy: injected ([`has_proxy`]) or as a gateway
/// (`remora-proxy gateway`, whatever its container is called: the shipped gateway's is
/// `istio-proxy`, as Istio's).
pub fn runs_proxy(pod: &Pod) -> bool {
    has_proxy(pod) || super::gateway_view::gateway_container(pod).is_some()
}

/// The overall verdict for a pod created now, from the per-webhook verdicts.
pub fn overall(webhooks: &[WebhookVerdict], remora: &ServiceRef) -> (Verdict, String) {
    let ours: Vec<&WebhookVerdict> = webhooks.iter().filter(|w| w.remora).collect();
    if ours.is_empty() {
        return (
            Verdict::NotInjected,
            format!(
                "no MutatingWebhookConfiguration calls remora's service {}/{} (or {}-<revision>): nothing injects (is remora installed? kubectl apply -f manifests/install.yaml)",
                remora.namespace, remora.name, remora.name
            ),
        );
    }
    if let Some(w) = ours.iter().find(|w| w.verdict == Verdict::Denied) {
        return (
            Verdict::Denied,
            format!("{}/{} denies it", w.configuration, w.webhook),
        );
    }
    if let Some(w) = ours.iter().find(|w| w.verdict == Verdict::Injected) {
        return (
            Verdict::Injected,
            format!("{}/{} injects it", w.configuration, w.webhook),
        );
    }
    if let Some(w) = ours.iter().find(|w| w.verdict == Verdict::NotInjected) {
        return (
            Verdict::NotInjected,
            format!(
                "{}/{} is called and does not inject it",
                w.configuration, w.webhook
            ),
        );
    }
    if ours.iter().all(|w| w.verdict == Verdict::NotCalled) {
        return (
            Verdict::NotInjected,
            format!(
                "none of remora's {} webhook entries is called for it",
                ours.len()
            ),
        );
    }
    let why: Vec<String> = ours
        .iter()
        .map(|w| format!("{}/{}: {}", w.configuration, w.webhook, w.verdict.as_str()))
        .collect();
    (Verdict::NotInjected, why.join("; "))
}

/// How an existing pod compares with what would happen to it now.
pub fn running_note(pod: &Pod, verdict: Verdict, restart_hint: &str) -> RunningPod {
    let name = objects::name(&pod.metadata).unwrap_or("?").to_string();
    let created = pod
        .metadata
        .creation_timestamp
        .as_ref()
        .map(objects::timestamp)
        .unwrap_or_else(|| "an unknown time".to_string());
    let injected = has_proxy(pod);
    let note = match (injected, verdict) {
        (true, Verdict::Injected) => "running pod is injected (has the remora-proxy container)".to_string(),
        (true, _) => format!(
            "running pod has the remora-proxy container, but a pod created now would not get it; to remove it, {restart_hint}"
        ),
        (false, Verdict::Injected) => format!(
            "running pod has no remora-proxy container: it was created ({created}) before the namespace was labelled or the webhook installed, or while the webhook was unreachable; to inject it, {restart_hint}"
        ),
        (false, _) => "running pod is not injected, as expected".to_string(),
    };
    RunningPod {
        name,
        injected,
        note,
    }
}

/// `check-inject` text: a header line with the overall verdict, one line per webhook, then one
/// line per running pod.
pub fn render_text(c: &PodCheck) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{} in namespace {}: {} ({})",
        c.object,
        c.namespace,
        c.verdict.as_str(),
        c.summary
    );
    for w in &c.webhooks {
        let tag = if w.remora { " [remora]" } else { "" };
        let _ = writeln!(
            out,
            "  webhook {}/{}{tag}: {}: {}",
            w.configuration,
            w.webhook,
            w.verdict.as_str(),
            w.reason
        );
        for n in &w.notes {
            let _ = writeln!(out, "    note: {n}");
        }
    }
    for r in &c.running {
        let _ = writeln!(out, "  pod {}: {}", r.name, r.note);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    use remora_webhook::selectors::mutating_webhook_configuration;

    fn typed<T: serde::de::DeserializeOwned>(v: Value) -> T {
        serde_json::from_value(v).unwrap()
    }

    fn mwc() -> Value {
        // A configuration from before revisions (one entry calling /inject), as
        // manifests/webhook.yaml installed it then; the injector takes it as the default
        // revision's namespace entry.
        json!({
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "MutatingWebhookConfiguration",
            "metadata": {"name": "remora-sidecar-injector"},
            "webhooks": [{
                "name": "sidecar-injector.remora.dev",
                "clientConfig": {"service": {"name": "remora-webhook", "namespace": "remora-system", "path": "/inject"}, "caBundle": "Zm9v"},
                "rules": [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"], "scope": "Namespaced"}],
                "namespaceSelector": {"matchExpressions": [
                    {"key": "istio-injection", "operator": "In", "values": ["enabled"]},
                    {"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": ["kube-system", "remora-system"]}
                ]},
                "objectSelector": {"matchExpressions": [{"key": "sidecar.istio.io/inject", "operator": "NotIn", "values": ["false"]}]}
            }]
        })
    }

    fn pod(labels: Value, annotations: Value) -> Value {
        json!({"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": "web-1", "namespace": "shop", "labels": labels, "annotations": annotations},
               "spec": {"containers": [{"name": "web", "image": "nginx"}]}})
    }

    fn run(p: &Value, ns: &str, ns_labels: Value) -> Vec<WebhookVerdict> {
        let nsl = namespace_labels(&typed(json!({"metadata": {"labels": ns_labels}})), ns);
        evaluate_webhooks(
            p,
            ns,
            &nsl,
            &[typed(mwc())],
            &BTreeMap::new(),
            &ServiceRef::default(),
        )
    }

    #[test]
    fn injected_when_namespace_labelled() {
        let v = run(
            &pod(json!({"app": "web"}), json!({})),
            "shop",
            json!({"istio-injection": "enabled"}),
        );
        assert_eq!(v.len(), 1);
        assert!(v[0].remora);
        assert_eq!(v[0].verdict, Verdict::Injected, "{}", v[0].reason);
        assert!(v[0].reason.contains("default policy"), "{}", v[0].reason);
        assert!(v[0].notes.is_empty());
    }

    #[test]
    fn namespace_selector_reason_names_the_label() {
        let v = run(&pod(json!({}), json!({})), "shop", json!({}));
        assert_eq!(v[0].verdict, Verdict::NotCalled);
        assert!(
            v[0].reason
                .contains("no istio-injection label does not satisfy istio-injection In [enabled]"),
            "{}",
            v[0].reason
        );
        // The automatic kubernetes.io/metadata.name label keeps remora-system out.
        let v = run(
            &pod(json!({}), json!({})),
            "remora-system",
            json!({"istio-injection": "enabled"}),
        );
        assert_eq!(v[0].verdict, Verdict::NotCalled);
        assert!(
            v[0].reason
                .contains("kubernetes.io/metadata.name=remora-system"),
            "{}",
            v[0].reason
        );
    }

    #[test]
    fn object_selector_opt_out_label() {
        let v = run(
            &pod(json!({"sidecar.istio.io/inject": "false"}), json!({})),
            "shop",
            json!({"istio-injection": "enabled"}),
        );
        assert_eq!(v[0].verdict, Verdict::NotCalled);
        assert!(
            v[0].reason
                .starts_with("objectSelector: pod: sidecar.istio.io/inject=false does not satisfy"),
            "{}",
            v[0].reason
        );
    }

    #[test]
    fn annotation_and_host_network_are_the_injectors_decision() {
        let v = run(
            &pod(json!({}), json!({"sidecar.istio.io/inject": "false"})),
            "shop",
            json!({"istio-injection": "enabled"}),
        );
        assert_eq!(v[0].verdict, Verdict::NotInjected);
        assert!(v[0].reason.contains("annotation"), "{}", v[0].reason);
        let mut p = pod(json!({}), json!({}));
        p["spec"]["hostNetwork"] = json!(true);
        let v = run(&p, "shop", json!({"istio-injection": "enabled"}));
        assert_eq!(v[0].verdict, Verdict::NotInjected);
        assert!(v[0].reason.contains("hostNetwork"), "{}", v[0].reason);
        let bad = pod(
            json!({}),
            json!({"traffic.sidecar.istio.io/includeInboundPorts": "70000"}),
        );
        let v = run(&bad, "shop", json!({"istio-injection": "enabled"}));
        assert_eq!(v[0].verdict, Verdict::Denied, "{}", v[0].reason);
    }

    #[test]
    fn other_webhooks_and_rules() {
        let mut other = mwc();
        other["metadata"]["name"] = json!("istio-sidecar-injector");
        other["webhooks"][0]["clientConfig"] =
            json!({"service": {"name": "istiod", "namespace": "istio-system"}});
        let mut secrets = mwc();
        secrets["metadata"]["name"] = json!("secrets-hook");
        secrets["webhooks"][0]["clientConfig"] = json!({"url": "https://x"});
        secrets["webhooks"][0]["rules"][0]["resources"] = json!(["secrets"]);
        let nsl = namespace_labels(
            &typed(json!({"metadata": {"labels": {"istio-injection": "enabled"}}})),
            "shop",
        );
        let v = evaluate_webhooks(
            &pod(json!({}), json!({})),
            "shop",
            &nsl,
            &[typed(mwc()), typed(other), typed(secrets)],
            &BTreeMap::new(),
            &ServiceRef::default(),
        );
        // In the API server's order, by configuration name.
        assert_eq!(v.len(), 2, "{v:?}");
        assert_eq!(v[0].verdict, Verdict::Called);
        assert!(!v[0].remora);
        assert!(
            v[0].reason.contains("istio-system/istiod"),
            "{}",
            v[0].reason
        );
        let (verdict, _) = overall(&v, &ServiceRef::default());
        assert_eq!(verdict, Verdict::Injected);
        let (verdict, why) = overall(&v[..1], &ServiceRef::default());
        assert_eq!(verdict, Verdict::NotInjected);
        assert!(why.contains("no MutatingWebhookConfiguration"), "{why}");
    }

    #[test]
    fn invalid_selector_and_missing_ca_bundle() {
        let mut m = mwc();
        m["webhooks"][0]["namespaceSelector"] =
            json!({"matchExpressions": [{"key": "a", "operator": "Is"}]});
        m["webhooks"][0]["clientConfig"]["caBundle"] = json!("");
        let nsl = namespace_labels(&Namespace::default(), "shop");
        let v = evaluate_webhooks(
            &pod(json!({}), json!({})),
            "shop",
            &nsl,
            &[typed(m)],
            &BTreeMap::new(),
            &ServiceRef::default(),
        );
        assert_eq!(v[0].verdict, Verdict::Invalid);
        assert!(
            v[0].reason
                .contains("webhooks[0].namespaceSelector.matchExpressions[0].operator"),
            "{}",
            v[0].reason
        );
        assert!(v[0].notes[0].contains("caBundle"), "{:?}", v[0].notes);
    }

    #[test]
    fn an_injected_pod_is_judged_as_created() {
        let mut p = pod(json!({}), json!({}));
        let (injected, _) =
            remora_webhook::cli::inject_docs(vec![p.clone()], "shop", &Config::default());
        let injected = injected[0].clone();
        assert!(has_proxy(&typed(injected.clone())));
        let back = as_created(&injected);
        assert!(!has_proxy(&typed(back.clone())));
        assert!(back
            .pointer("/metadata/annotations/sidecar.istio.io~1status")
            .is_none());
        assert_eq!(back["spec"]["containers"], p["spec"]["containers"]);
        let v = run(&back, "shop", json!({"istio-injection": "enabled"}));
        assert!(!v[0].reason.contains("re-injecting"), "{}", v[0].reason);
        // A pod never injected is unchanged.
        p["metadata"]["annotations"] = json!({"a": "b"});
        assert_eq!(as_created(&p), p);
    }

    #[test]
    fn rules_that_send_pod_creation() {
        let wh = |rule: Value| typed::<MutatingWebhook>(json!({"rules": [rule]}));
        let base = json!({"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"]});
        assert!(intercepts_pod_create(&wh(base.clone())));
        for (field, value, want) in [
            ("operations", json!(["*"]), true),
            ("operations", json!(["UPDATE"]), false),
            ("apiGroups", json!(["*"]), true),
            ("apiGroups", json!(["apps"]), false),
            ("apiVersions", json!(["v1beta1"]), false),
            ("resources", json!(["*/*"]), true),
            ("resources", json!(["pods/status"]), false),
            ("scope", json!("Cluster"), false),
            ("scope", json!("*"), true),
        ] {
            let mut r = base.clone();
            r[field] = value.clone();
            assert_eq!(intercepts_pod_create(&wh(r)), want, "{field}={value}");
        }
        assert!(!intercepts_pod_create(&MutatingWebhook::default()));
        // remora's webhook with rules that miss pods is listed, and says so.
        let mut m = mwc();
        m["webhooks"][0]["rules"][0]["operations"] = json!(["UPDATE"]);
        m["webhooks"][0]["matchConditions"] = json!([{"name": "x", "expression": "true"}]);
        let nsl = namespace_labels(
            &typed(json!({"metadata": {"labels": {"istio-injection": "enabled"}}})),
            "shop",
        );
        let v = evaluate_webhooks(
            &pod(json!({}), json!({})),
            "shop",
            &nsl,
            &[typed(m)],
            &BTreeMap::new(),
            &ServiceRef::default(),
        );
        assert_eq!(v[0].verdict, Verdict::NotCalled);
        assert!(
            v[0].reason.contains("do not include CREATE of v1 pods"),
            "{}",
            v[0].reason
        );
        assert!(
            v[0].notes.iter().any(|n| n.contains("matchConditions")),
            "{:?}",
            v[0].notes
        );
    }

    #[test]
    fn running_pod_notes() {
        let mut injected = pod(json!({}), json!({}));
        injected["spec"]["initContainers"] = json!([{"name": "remora-proxy"}]);
        let mut plain = pod(json!({}), json!({}));
        plain["metadata"]["creationTimestamp"] = json!("2024-05-01T10:00:00Z");
        let plain: Pod = typed(plain);
        let injected: Pod = typed(injected);
        let hint = "kubectl -n shop rollout restart deployment/web";
        assert!(running_note(&injected, Verdict::Injected, hint).injected);
        let n = running_note(&plain, Verdict::Injected, hint);
        assert!(!n.injected);
        assert!(
            n.note.contains(
                "it was created (2024-05-01T10:00:00Z) before the namespace was labelled"
            ) && n.note.contains(hint),
            "{}",
            n.note
        );
        let n = running_note(&injected, Verdict::NotInjected, hint);
        assert!(n.note.contains("would not get it"), "{}", n.note);
    }

    /// The shipped configurations of two revisions (the definition's), with a caBundle.
    fn revisions() -> Vec<MutatingWebhookConfiguration> {
        ["default", "b"]
            .iter()
            .map(|r| {
                let mut m = mutating_webhook_configuration(r);
                for w in m["webhooks"].as_array_mut().unwrap() {
                    w["clientConfig"]["caBundle"] = json!("Zm9v");
                }
                typed(m)
            })
            .collect()
    }

    fn eval(
        mwcs: &[MutatingWebhookConfiguration],
        p: &Value,
        ns_labels: Value,
    ) -> Vec<WebhookVerdict> {
        let nsl = namespace_labels(&typed(json!({"metadata": {"labels": ns_labels}})), "shop");
        let mut configs = BTreeMap::new();
        configs.insert(
            "b".to_string(),
            Config::default().with_revision("b").unwrap(),
        );
        evaluate_webhooks(p, "shop", &nsl, mwcs, &configs, &ServiceRef::default())
    }

    fn the<'a>(v: &'a [WebhookVerdict], configuration: &str, webhook: &str) -> &'a WebhookVerdict {
        v.iter()
            .find(|w| w.configuration == configuration && w.webhook == webhook)
            .unwrap_or_else(|| panic!("no {configuration}/{webhook}: {v:?}"))
    }

    #[test]
    fn each_revisions_entries_and_injector() {
        let mwcs = revisions();
        let plain = pod(json!({}), json!({}));
        // (namespace labels, pod labels, the configuration and entry that injects)
        for (ns_l, pod_l, cfg, entry) in [
            (
                json!({"istio-injection": "enabled"}),
                json!({}),
                "remora-sidecar-injector",
                "namespace",
            ),
            (
                json!({"istio.io/rev": "b"}),
                json!({}),
                "remora-sidecar-injector-b",
                "rev.namespace",
            ),
            (
                json!({}),
                json!({"istio.io/rev": "b"}),
                "remora-sidecar-injector-b",
                "rev.object",
            ),
            (
                json!({}),
                json!({"sidecar.istio.io/inject": "true"}),
                "remora-sidecar-injector",
                "object",
            ),
            (
                json!({"istio.io/rev": "default"}),
                json!({"istio.io/rev": "b"}),
                "remora-sidecar-injector",
                "rev.namespace",
            ),
        ] {
            let p = pod(pod_l.clone(), json!({}));
            let v = eval(&mwcs, &p, ns_l.clone());
            let ctx = format!("ns {ns_l} pod {pod_l}: {v:#?}");
            assert_eq!(v.len(), 6, "{ctx}");
            let hook = format!("{entry}.sidecar-injector.remora.dev");
            let w = the(&v, cfg, &hook);
            assert_eq!(w.verdict, Verdict::Injected, "{ctx}");
            let rev = if cfg.ends_with("-b") { "b" } else { "default" };
            assert_eq!(w.revision.as_deref(), Some(rev), "{ctx}");
            assert!(
                w.reason.contains(&format!("injector (revision {rev})")),
                "{ctx}"
            );
            // Every other entry is not called: the entries exclude each other.
            assert_eq!(
                v.iter().filter(|w| w.verdict == Verdict::NotCalled).count(),
                5,
                "{ctx}"
            );
            let (verdict, summary) = overall(&v, &ServiceRef::default());
            assert_eq!(verdict, Verdict::Injected, "{ctx}");
            assert_eq!(summary, format!("{cfg}/{hook} injects it"));
        }
        let v = eval(&mwcs, &plain, json!({"istio.io/rev": "c"}));
        assert!(v.iter().all(|w| w.verdict == Verdict::NotCalled), "{v:#?}");
        assert!(
            the(
                &v,
                "remora-sidecar-injector-b",
                "rev.namespace.sidecar-injector.remora.dev"
            )
            .reason
            .contains("istio.io/rev=c does not satisfy istio.io/rev In [b]"),
            "{v:#?}"
        );
    }

    /// The cluster check reads a tag's configuration (the definition's, as `manifest --tag`
    /// prints it) like any other: a namespace labelled with the tag is injected by its revision.
    #[test]
    fn a_tag_is_injected_by_its_revision() {
        let mut mwcs = revisions();
        let mut tag = remora_webhook::selectors::tag_configuration("prod", "b");
        for w in tag["webhooks"].as_array_mut().unwrap() {
            w["clientConfig"]["caBundle"] = json!("Zm9v");
        }
        mwcs.push(typed(tag));
        for (ns_l, pod_l, hook) in [
            (json!({"istio.io/rev": "prod"}), json!({}), "rev.namespace"),
            (json!({}), json!({"istio.io/rev": "prod"}), "rev.object"),
        ] {
            let v = eval(&mwcs, &pod(pod_l.clone(), json!({})), ns_l.clone());
            let ctx = format!("ns {ns_l} pod {pod_l}: {v:#?}");
            let w = the(
                &v,
                "remora-revision-tag-prod",
                &format!("{hook}.sidecar-injector.remora.dev"),
            );
            assert_eq!(w.verdict, Verdict::Injected, "{ctx}");
            assert_eq!(w.revision.as_deref(), Some("b"), "{ctx}");
            assert_eq!(
                v.iter().filter(|w| w.verdict == Verdict::Injected).count(),
                1,
                "{ctx}"
            );
        }
    }

    #[test]
    fn a_revisions_entry_calling_another_revisions_service_does_not_inject() {
        let mut b = mutating_webhook_configuration("b");
        for w in b["webhooks"].as_array_mut().unwrap() {
            w["clientConfig"]["service"]["name"] = json!("remora-webhook");
        }
        let v = eval(
            &[typed(b)],
            &pod(json!({}), json!({})),
            json!({"istio.io/rev": "b"}),
        );
        let w = the(
            &v,
            "remora-sidecar-injector-b",
            "rev.namespace.sidecar-injector.remora.dev",
        );
        assert_eq!(w.verdict, Verdict::NotInjected);
        assert_eq!(w.revision.as_deref(), Some("default"));
        assert!(
            w.reason.contains("but this injector is revision default"),
            "{}",
            w.reason
        );
        let (verdict, summary) = overall(&v, &ServiceRef::default());
        assert_eq!(verdict, Verdict::NotInjected);
        assert!(
            summary.contains("is called and does not inject it"),
            "{summary}"
        );
        // Only remora's own Services (NAME, NAME-<revision>) count as remora.
        let r = ServiceRef::default();
        assert_eq!(
            r.revision_of("remora-system", "remora-webhook-b")
                .as_deref(),
            Some("b")
        );
        assert_eq!(
            r.revision_of("remora-system", "remora-webhook"),
            Some("default".into())
        );
        assert_eq!(r.revision_of("istio-system", "remora-webhook"), None);
        assert_eq!(r.revision_of("remora-system", "remora-webhookb"), None);
        assert_eq!(r.revision_of("remora-system", "remora-webhook-B"), None);
    }

    /// Istio's own injector, installed too, is called first (its configuration's name sorts
    /// first); remora's injector leaves the pod it injects alone unless the namespace is moved.
    #[test]
    fn istios_injector_called_first() {
        let istio = typed::<MutatingWebhookConfiguration>(json!({
            "metadata": {"name": "istio-sidecar-injector"},
            "webhooks": [{
                "name": "namespace.sidecar-injector.istio.io",
                "clientConfig": {"service": {"name": "istiod", "namespace": "istio-system", "path": "/inject"}},
                "rules": [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"]}],
                "namespaceSelector": {"matchExpressions": [{"key": "istio-injection", "operator": "In", "values": ["enabled"]}]},
                "objectSelector": {"matchExpressions": [{"key": "sidecar.istio.io/inject", "operator": "NotIn", "values": ["false"]}]}
            }, {
                "name": "rev.namespace.sidecar-injector.istio.io",
                "clientConfig": {"service": {"name": "istiod", "namespace": "istio-system", "path": "/inject"}},
                "rules": [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"]}],
                "namespaceSelector": {"matchExpressions": [
                    {"key": "istio.io/rev", "operator": "In", "values": ["b"]},
                    {"key": "istio-injection", "operator": "DoesNotExist"}]}
            }]
        }));
        // remora's configurations listed first: the API server's order is by name regardless.
        let mut mwcs = revisions();
        mwcs.push(istio);
        let p = pod(json!({}), json!({}));
        let v = eval(&mwcs, &p, json!({"istio-injection": "enabled"}));
        assert_eq!(
            v[0].configuration, "istio-sidecar-injector",
            "evaluated in name order"
        );
        assert_eq!(v[0].verdict, Verdict::Called);
        let w = the(
            &v,
            "remora-sidecar-injector",
            "namespace.sidecar-injector.remora.dev",
        );
        assert_eq!(w.verdict, Verdict::NotInjected, "{}", w.reason);
        assert!(
            w.reason.contains("but Istio's webhook istio-sidecar-injector/namespace.sidecar-injector.istio.io is called first")
                && w.reason.contains("namespace shop is not moved to remora"),
            "{}",
            w.reason
        );
        assert_eq!(overall(&v, &ServiceRef::default()).0, Verdict::NotInjected);
        // The namespace moved to remora revision b: Istio's webhook is not called, b injects.
        let v = eval(&mwcs[..2], &p, json!({"istio.io/rev": "b"}));
        assert_eq!(overall(&v, &ServiceRef::default()).0, Verdict::Injected);
        // An Istio revision of the same name: both are called, remora replaces Istio's sidecar
        // and says so.
        let v = eval(&mwcs, &p, json!({"istio.io/rev": "b"}));
        let w = the(
            &v,
            "remora-sidecar-injector-b",
            "rev.namespace.sidecar-injector.remora.dev",
        );
        assert_eq!(w.verdict, Verdict::Injected, "{}", w.reason);
        assert!(
            w.notes
                .iter()
                .any(|n| n.contains("this injector replaces its sidecar")),
            "{:?}",
            w.notes
        );
    }
}
