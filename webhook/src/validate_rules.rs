//! `POST /validate`: the validating admission webhook for rules ConfigMaps.
//!
//! A ConfigMap is a rules ConfigMap when its name is the injector config's `rulesConfigMap`
//! (default `remora-mesh-rules`) or it carries the label `remora.dev/rules=true` (the same
//! selection as `remora analyze`). On CREATE and UPDATE of one, its keys are linted exactly as
//! `remora analyze` lints them ([`crate::rules_lint::analyze`]: the proxy's own loader,
//! schema and policy checks from `remora_model::lint`), without the one check that needs the
//! cluster's Services (IST0101, which `remora analyze` still does):
//! * an error denies the request; `status.message` names the ConfigMap, then each finding as
//!   `FILE doc N: FIELD: reason` (the value is in the reason), and `status.code` is 400;
//! * an unknown field (usually a typo such as `matches:` for `match:`) is an error here: the
//!   proxy ignores it, which silently changes routing, and Kubernetes' strict field validation
//!   rejects unknown fields of Istio's own resources the same way;
//! * warnings (a host no ServiceEntry defines, a key the proxy does not read, ...) allow the
//!   request and come back as AdmissionResponse `warnings`, which kubectl prints.
//!
//! An UPDATE that leaves `data` and `binaryData` as they were (a label or annotation change) is
//! allowed even when the rules have errors, which come back as warnings: it did not introduce
//! them, and refusing it would block metadata edits of a set that predates the webhook.
//!
//! Anything else is allowed untouched: other ConfigMaps, DELETE and CONNECT, other kinds (a
//! misconfigured webhook must not block writes). A body that is not an `admission.k8s.io/v1`
//! AdmissionReview gets a 400 with one line. Pure: plain values in, plain values out.

use kube::core::admission::{AdmissionResponse, Operation};
use kube::core::response::StatusSummary;
use kube::core::Status;
use serde_json::Value;

use crate::config::Config;
use crate::review::{parse_envelope, Envelope};
pub use crate::rules_lint::RULES_LABEL;
use crate::rules_lint::{analyze, Message};

/// At most this many findings are spelled out in a denial (the rest are counted), and at most
/// this many warnings are returned: the API server and kubectl truncate long lists anyway.
pub const MAX_LISTED: usize = 20;

/// What the per-decision log line says.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DecisionLog {
    pub uid: String,
    pub namespace: String,
    pub name: String,
    pub operation: String,
    /// `allowed` (a rules ConfigMap that passed), `denied`, `skipped` (not checked) or `error`
    /// (the review itself was malformed).
    pub decision: &'static str,
    pub reason: String,
    pub errors: usize,
    pub warnings: usize,
}

/// The answer to one review: HTTP status (200 with a review, or 4xx/5xx with one line), body,
/// and the log record.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
    pub log: DecisionLog,
}

fn error(status: u16, msg: String, mut log: DecisionLog) -> Answer {
    log.decision = "error";
    log.reason = msg.clone();
    Answer {
        status,
        content_type: "text/plain; charset=utf-8",
        body: format!("remora-webhook: {msg}\n").into_bytes(),
        log,
    }
}

fn str_at<'a>(v: &'a Value, ptr: &str) -> Option<&'a str> {
    v.pointer(ptr)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

/// Whether `cm` is a rules ConfigMap under `cfg`, and why (for the log).
pub fn rules_selection(cm: &Value, cfg: &Config) -> Result<String, String> {
    let name = str_at(cm, "/metadata/name").unwrap_or_default();
    if name == cfg.rules_config_map {
        return Ok(format!("name {name}"));
    }
    let label = cm
        .pointer("/metadata/labels")
        .and_then(|l| l.get(RULES_LABEL))
        .and_then(Value::as_str);
    if label == Some("true") {
        return Ok(format!("label {RULES_LABEL}=true"));
    }
    Err(format!(
        "not a rules ConfigMap (name is not {} and no label {RULES_LABEL}=true): not checked",
        cfg.rules_config_map
    ))
}

/// `FILE doc N: FIELD: message` (the parts a message has).
fn locate(m: &Message) -> String {
    let mut s = String::new();
    if !m.file.is_empty() {
        s.push_str(&m.file);
        if m.document > 0 {
            s.push_str(&format!(" doc {}", m.document));
        }
        s.push_str(": ");
    }
    if !m.field.is_empty() {
        s.push_str(&m.field);
        s.push_str(": ");
    }
    s.push_str(&m.message);
    s
}

/// The findings of the linter on one ConfigMap, split into what denies and what warns.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Findings {
    pub errors: Vec<String>,
    pub warnings: Vec<String>,
}

/// Lints one rules ConfigMap (`metadata.namespace` must be set) as `remora analyze` does, minus
/// the check against the cluster's Services; unknown fields count as errors. `root_namespace`:
/// the mesh's (the injector config's, which `serve --root-namespace` sets).
pub fn lint(cm: &Value, root_namespace: &str) -> Findings {
    let domain = remora_model::rules::LoadContext::default().cluster_domain;
    let analysis = analyze(std::slice::from_ref(cm), &[], &domain, root_namespace);
    let mut out = Findings::default();
    for m in &analysis.messages {
        // "No Service X in namespace Y (IST0101 ...)": with no Services given every cluster
        // host would be reported; the webhook does not read Services.
        if m.message.contains("IST0101") {
            continue;
        }
        if m.level == "error" {
            out.errors.push(locate(m));
        } else if m.message.starts_with("unknown field") {
            // The proxy's wording says what it does ("ignored"); here the object is refused.
            let mut m = m.clone();
            m.message = m.message.replacen(", ignored", "", 1);
            m.message = m.message.replacen("here, ignored", "here", 1);
            out.errors.push(locate(&m));
        } else {
            out.warnings.push(locate(m));
        }
    }
    out
}

/// Whether an update leaves what the proxy reads (`data`, `binaryData`) as it was.
fn same_rules(old: &Value, new: &Value) -> bool {
    let part = |v: &Value, k: &str| v.get(k).filter(|d| !d.is_null()).cloned();
    old.is_object()
        && part(old, "data") == part(new, "data")
        && part(old, "binaryData") == part(new, "binaryData")
}

/// The denial message: the ConfigMap, a count, then the findings (at most [`MAX_LISTED`]).
pub fn denial_message(cm_key: &str, errors: &[String]) -> String {
    let n = errors.len();
    let mut msg = format!(
        "ConfigMap {cm_key}: {n} invalid mesh rule{}: ",
        if n == 1 { "" } else { "s" }
    );
    msg.push_str(
        &errors
            .iter()
            .take(MAX_LISTED)
            .cloned()
            .collect::<Vec<_>>()
            .join("; "),
    );
    if n > MAX_LISTED {
        msg.push_str(&format!(
            "; and {} more (run `remora analyze` for all)",
            n - MAX_LISTED
        ));
    }
    msg
}

fn warnings_for(cm_key: &str, warnings: &[String]) -> Option<Vec<String>> {
    if warnings.is_empty() {
        return None;
    }
    let mut out: Vec<String> = warnings
        .iter()
        .take(MAX_LISTED)
        .map(|w| format!("ConfigMap {cm_key}: {w}"))
        .collect();
    if warnings.len() > MAX_LISTED {
        out.push(format!(
            "ConfigMap {cm_key}: {} more warnings (run `remora analyze` for all)",
            warnings.len() - MAX_LISTED
        ));
    }
    Some(out)
}

/// Answers one AdmissionReview body. Never panics; malformed input gets a 400 with one line.
pub fn handle(body: &[u8], cfg: &Config) -> Answer {
    let mut log = DecisionLog::default();
    // The ConfigMap stays raw JSON (its data is what is checked); the envelope is typed.
    let Envelope {
        request: req,
        object,
        old_object,
    } = match parse_envelope(body) {
        Ok(e) => e,
        Err((uid, msg)) => {
            log.uid = uid;
            return error(400, msg, log);
        }
    };
    log.uid = req.uid.clone();
    log.namespace = req
        .namespace
        .clone()
        .filter(|s| !s.is_empty())
        .or_else(|| str_at(&object, "/metadata/namespace").map(str::to_string))
        .unwrap_or_else(|| "default".to_string());
    log.name = str_at(&object, "/metadata/name")
        .map(str::to_string)
        .unwrap_or_else(|| req.name.clone());
    log.operation = format!("{:?}", req.operation).to_ascii_uppercase();
    let resp = AdmissionResponse::from(&req);
    let cm_key = format!("{}/{}", log.namespace, log.name);

    let istio_kind = crate::rules_controller::KINDS
        .iter()
        .any(|k| k.group == req.kind.group && k.kind == req.kind.kind);
    let resp = if istio_kind {
        if !matches!(req.operation, Operation::Create | Operation::Update) || !object.is_object() {
            log.decision = "skipped";
            log.reason = format!("operation {}: not checked", log.operation);
            resp
        } else {
            istio_object(resp, object, &mut log)
        }
    } else if req.kind.kind != "ConfigMap" || !req.kind.group.is_empty() {
        log.decision = "skipped";
        log.reason = format!(
            "remora-webhook validates ConfigMaps only; got {}/{} {}: allowed unchecked",
            req.kind.group, req.kind.version, req.kind.kind
        );
        resp
    } else if !matches!(req.operation, Operation::Create | Operation::Update) {
        log.decision = "skipped";
        log.reason = format!("operation {}: not checked", log.operation);
        resp
    } else if !object.is_object() {
        return error(
            400,
            format!(
                "AdmissionReview {} request has no object (the ConfigMap)",
                log.operation
            ),
            log,
        );
    } else {
        match rules_selection(&object, cfg) {
            Err(why) => {
                log.decision = "skipped";
                log.reason = why;
                resp
            }
            Ok(why) => {
                let mut cm = object;
                if let Some(md) = cm.get_mut("metadata").and_then(Value::as_object_mut) {
                    md.insert("namespace".into(), Value::String(log.namespace.clone()));
                }
                let found = lint(&cm, cfg.root_namespace());
                log.errors = found.errors.len();
                log.warnings = found.warnings.len();
                let mut resp = resp;
                resp.warnings = warnings_for(&cm_key, &found.warnings);
                let unchanged =
                    matches!(req.operation, Operation::Update) && same_rules(&old_object, &cm);
                if !found.errors.is_empty() && unchanged {
                    // An update that leaves the rules as they are (a label, an annotation, an
                    // owner reference) is not refused for errors it did not introduce; they
                    // are returned as warnings so they stay visible.
                    let mut all: Vec<String> = found
                        .errors
                        .iter()
                        .map(|e| format!("error (rules unchanged by this update): {e}"))
                        .collect();
                    all.extend(found.warnings.iter().cloned());
                    resp.warnings = warnings_for(&cm_key, &all);
                    log.decision = "allowed";
                    log.reason = format!(
                        "rules ConfigMap ({why}): data unchanged by this update, so its {} existing error{} are returned as warnings, not refused",
                        log.errors,
                        if log.errors == 1 { "" } else { "s" }
                    );
                    resp
                } else if found.errors.is_empty() {
                    log.decision = "allowed";
                    log.reason = format!(
                        "rules ConfigMap ({why}): valid, {} warning{}",
                        log.warnings,
                        if log.warnings == 1 { "" } else { "s" }
                    );
                    resp
                } else {
                    let msg = denial_message(&cm_key, &found.errors);
                    log.decision = "denied";
                    log.reason = msg.clone();
                    resp.allowed = false;
                    resp.result = Status {
                        status: Some(StatusSummary::Failure),
                        code: 400,
                        message: msg,
                        metadata: None,
                        reason: "BadRequest".to_string(),
                        details: None,
                    };
                    resp
                }
            }
        }
    };
    match serde_json::to_vec(&resp.into_review()) {
        Ok(body) => Answer {
            status: 200,
            content_type: "application/json",
            body,
            log,
        },
        Err(e) => error(500, format!("serializing the response: {e}"), log),
    }
}

/// An Istio object (a kind the rules controller compiles) is never refused — Istio may share
/// the cluster and accept what remora does not — but what the rules controller would leave out,
/// and fields remora ignores, come back as warnings, which kubectl prints.
fn istio_object(
    mut resp: AdmissionResponse,
    mut object: Value,
    log: &mut DecisionLog,
) -> AdmissionResponse {
    if let Some(md) = object.get_mut("metadata").and_then(Value::as_object_mut) {
        md.insert("namespace".into(), Value::String(log.namespace.clone()));
    }
    let id = format!(
        "{} {}/{}",
        str_at(&object, "/kind").unwrap_or("?"),
        log.namespace,
        log.name
    );
    let mut warnings = Vec::new();
    match remora_model::compile::check(&object, "cluster.local") {
        Ok(c) => {
            warnings.extend(c.warnings.iter().map(|w| format!("remora: {id}: {w}")));
            log.decision = "allowed";
            log.reason = format!(
                "{id}: the rules controller applies it; {} warning{}",
                warnings.len(),
                if warnings.len() == 1 { "" } else { "s" }
            );
        }
        Err(e) => {
            warnings.push(format!(
                "remora: {id} is left out of every remora-mesh-rules ConfigMap by the rules controller (remora's sidecars do not apply it): {}",
                e.reason
            ));
            log.decision = "allowed";
            log.reason = format!(
                "{id}: allowed with a warning (remora never refuses Istio objects): {}",
                e.reason
            );
        }
    }
    warnings.truncate(MAX_LISTED);
    log.warnings = warnings.len();
    if !warnings.is_empty() {
        resp.warnings = Some(warnings);
    }
    resp
}

/// Wraps a ConfigMap into an AdmissionReview request (tests, benchmarks).
pub fn review_for(cm: &Value, uid: &str, operation: &str) -> Value {
    let (object, old) = if operation == "DELETE" {
        (Value::Null, cm.clone())
    } else {
        (cm.clone(), Value::Null)
    };
    serde_json::json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "kind": {"group": "", "version": "v1", "kind": "ConfigMap"},
            "resource": {"group": "", "version": "v1", "resource": "configmaps"},
            "requestKind": {"group": "", "version": "v1", "kind": "ConfigMap"},
            "requestResource": {"group": "", "version": "v1", "resource": "configmaps"},
            "name": cm.pointer("/metadata/name").and_then(Value::as_str).unwrap_or(""),
            "namespace": cm.pointer("/metadata/namespace").and_then(Value::as_str).unwrap_or("default"),
            "operation": operation,
            "userInfo": {"username": "kubernetes-admin", "groups": ["system:masters", "system:authenticated"]},
            "object": object,
            "oldObject": old,
            "dryRun": false,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": if operation == "DELETE" { "DeleteOptions" } else if operation == "UPDATE" { "UpdateOptions" } else { "CreateOptions" }}
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const VS: &str = "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  http:
  - route:
    - destination: {host: reviews, subset: v1}
";
    const DR: &str = "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews}
spec:
  host: reviews
  subsets:
  - name: v1
    labels: {version: v1}
";

    fn cm(name: &str, data: Value) -> Value {
        json!({"apiVersion": "v1", "kind": "ConfigMap",
               "metadata": {"name": name, "namespace": "bookinfo"}, "data": data})
    }

    fn answer(v: &Value) -> (Answer, Value) {
        let a = handle(&serde_json::to_vec(v).unwrap(), &Config::default());
        let body = serde_json::from_slice(&a.body).unwrap_or(Value::Null);
        (a, body)
    }

    #[test]
    fn selection_by_name_or_label() {
        let cfg = Config::default();
        assert!(rules_selection(&cm("remora-mesh-rules", json!({})), &cfg).is_ok());
        let mut other = cm("app-config", json!({}));
        assert!(rules_selection(&other, &cfg).is_err());
        other["metadata"]["labels"] = json!({RULES_LABEL: "true"});
        assert_eq!(
            rules_selection(&other, &cfg).unwrap(),
            "label remora.dev/rules=true"
        );
        other["metadata"]["labels"] = json!({RULES_LABEL: "false"});
        assert!(rules_selection(&other, &cfg).is_err());
        let cfg = Config {
            rules_config_map: "mesh".into(),
            ..Config::default()
        };
        assert!(rules_selection(&cm("mesh", json!({})), &cfg).is_ok());
        assert!(rules_selection(&cm("remora-mesh-rules", json!({})), &cfg).is_err());
    }

    #[test]
    fn valid_rules_allowed_without_cluster_service_warnings() {
        let c = cm("remora-mesh-rules", json!({"vs.yaml": VS, "dr.yaml": DR}));
        let (a, body) = answer(&review_for(&c, "u1", "CREATE"));
        assert_eq!(a.status, 200);
        assert_eq!(body["response"]["uid"], "u1");
        assert_eq!(body["response"]["allowed"], true, "{body}");
        assert!(body["response"].get("warnings").is_none(), "{body}");
        assert_eq!(a.log.decision, "allowed");
        assert_eq!(a.log.name, "remora-mesh-rules");
        assert_eq!(a.log.namespace, "bookinfo");
    }

    #[test]
    fn errors_deny_with_location() {
        let bad = VS.replace("subset: v1", "subset: v9");
        let c = cm("remora-mesh-rules", json!({"vs.yaml": bad, "dr.yaml": DR}));
        let (a, body) = answer(&review_for(&c, "u2", "UPDATE"));
        assert_eq!(body["response"]["allowed"], false);
        assert_eq!(body["response"]["status"]["code"], 400);
        let msg = body["response"]["status"]["message"].as_str().unwrap();
        assert!(msg.starts_with("ConfigMap bookinfo/remora-mesh-rules: 1 invalid mesh rule: vs.yaml doc 1: spec.http[0].route[0].destination.subset: subset \"v9\""), "{msg}");
        assert_eq!(a.log.decision, "denied");
        assert_eq!(a.log.operation, "UPDATE");
    }

    #[test]
    fn unknown_field_denies_without_saying_ignored() {
        let bad = VS.replace(
            "  - route:",
            "  - matches: [{uri: {prefix: /a}}]\n    route:",
        );
        let c = cm("remora-mesh-rules", json!({"vs.yaml": bad, "dr.yaml": DR}));
        let (_, body) = answer(&review_for(&c, "u3", "CREATE"));
        assert_eq!(body["response"]["allowed"], false);
        let msg = body["response"]["status"]["message"].as_str().unwrap();
        assert!(
            msg.contains(
                "vs.yaml doc 1: spec.http[0].matches: unknown field (did you mean \"match\"?)"
            ),
            "{msg}"
        );
        assert!(!msg.contains("ignored"), "{msg}");
    }

    #[test]
    fn metadata_only_updates_of_invalid_rules_are_allowed_with_warnings() {
        let bad = cm("remora-mesh-rules", json!({"vs.yaml": "a: [b"}));
        let mut v = review_for(&bad, "u7", "UPDATE");
        let mut labelled = bad.clone();
        labelled["metadata"]["labels"] = json!({"team": "a"});
        v["request"]["object"] = labelled;
        v["request"]["oldObject"] = bad.clone();
        let (a, body) = answer(&v);
        assert_eq!(body["response"]["allowed"], true, "{body}");
        assert_eq!(a.log.decision, "allowed");
        assert!(a.log.reason.contains("data unchanged"), "{}", a.log.reason);
        let w = body["response"]["warnings"][0].as_str().unwrap();
        assert!(
            w.starts_with("ConfigMap bookinfo/remora-mesh-rules: error (rules unchanged by this update): vs.yaml doc 1: invalid YAML"),
            "{w}"
        );
        // Changing the data (even to other invalid data) is checked as usual.
        let mut changed = bad.clone();
        changed["data"]["vs.yaml"] = json!("a: [c");
        v["request"]["object"] = changed;
        assert_eq!(answer(&v).1["response"]["allowed"], false);
        // CREATE never compares (there is no old object).
        let (_, body) = answer(&review_for(&bad, "u8", "CREATE"));
        assert_eq!(body["response"]["allowed"], false);
    }

    #[test]
    fn long_lists_are_capped() {
        let errs: Vec<String> = (0..25).map(|i| format!("e{i}")).collect();
        let m = denial_message("ns/x", &errs);
        assert!(
            m.starts_with("ConfigMap ns/x: 25 invalid mesh rules: e0; e1;"),
            "{m}"
        );
        assert!(
            m.ends_with("e19; and 5 more (run `remora analyze` for all)"),
            "{m}"
        );
        let w = warnings_for("ns/x", &errs).unwrap();
        assert_eq!(w.len(), MAX_LISTED + 1);
        assert_eq!(w[0], "ConfigMap ns/x: e0");
        assert!(warnings_for("ns/x", &[]).is_none());
    }

    #[test]
    fn istio_objects_are_allowed_with_what_remora_leaves_out_as_warnings() {
        let review = |obj: &Value, op: &str| {
            let mut r = review_for(obj, "u1", op);
            r["request"]["kind"] =
                json!({"group": "networking.istio.io", "version": "v1", "kind": "VirtualService"});
            r["request"]["resource"] = json!({"group": "networking.istio.io", "version": "v1", "resource": "virtualservices"});
            r
        };
        let bad = json!({"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
                         "metadata": {"name": "r", "namespace": "shop"},
                         "spec": {"hosts": ["r"], "http": [{"timeout": "soon"}]}});
        let (a, v) = answer(&review(&bad, "CREATE"));
        assert_eq!(a.status, 200);
        assert_eq!(v["response"]["allowed"], true);
        let w = v["response"]["warnings"][0].as_str().unwrap_or_default();
        assert!(
            w.starts_with("remora: VirtualService shop/r is left out of every remora-mesh-rules ConfigMap by the rules controller (remora's sidecars do not apply it): spec.http[0].timeout"),
            "{w}"
        );
        assert_eq!(a.log.decision, "allowed");
        let good = json!({"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
                          "metadata": {"name": "r", "namespace": "shop"},
                          "spec": {"hosts": ["r"], "htp": [], "http": [{"route": [{"destination": {"host": "r"}}]}]}});
        let (_, v) = answer(&review(&good, "UPDATE"));
        assert_eq!(v["response"]["allowed"], true);
        let w = v["response"]["warnings"][0].as_str().unwrap_or_default();
        assert!(
            w.starts_with("remora: VirtualService shop/r: spec.htp"),
            "{w}"
        );
    }

    #[test]
    fn not_checked_cases_and_bad_reviews() {
        let bad = cm("remora-mesh-rules", json!({"vs.yaml": "a: [b"}));
        // DELETE of even an invalid set is allowed.
        let (a, body) = answer(&review_for(&bad, "u4", "DELETE"));
        assert_eq!(body["response"]["allowed"], true);
        assert_eq!(a.log.decision, "skipped");
        // Another kind: allowed, never blocked.
        let mut v = review_for(&bad, "u5", "CREATE");
        v["request"]["kind"] = json!({"group": "apps", "version": "v1", "kind": "Deployment"});
        let (a, body) = answer(&v);
        assert_eq!(body["response"]["allowed"], true);
        assert!(a.log.reason.contains("ConfigMaps only"), "{}", a.log.reason);
        // Malformed reviews: 400 with one line.
        for (v, want) in [
            (
                json!({"kind": "AdmissionReview", "apiVersion": "admission.k8s.io/v1beta1"}),
                "apiVersion",
            ),
            (
                json!({"kind": "AdmissionReview", "apiVersion": "admission.k8s.io/v1", "request": {"uid": ""}}),
                "uid",
            ),
            (json!([1, 2]), "not AdmissionReview"),
        ] {
            let (a, _) = answer(&v);
            assert_eq!(a.status, 400, "{v}");
            assert!(a.log.reason.contains(want), "{}", a.log.reason);
        }
        let mut v = review_for(&bad, "u6", "CREATE");
        v["request"]["object"] = Value::Null;
        let (a, _) = answer(&v);
        assert_eq!(a.status, 400);
        assert!(a.log.reason.contains("no object"), "{}", a.log.reason);
        let a = handle(b"\xff\x00garbage", &Config::default());
        assert_eq!(a.status, 400);
    }
}
