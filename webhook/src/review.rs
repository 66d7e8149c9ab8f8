//! AdmissionReview in, AdmissionReview out (`admission.k8s.io/v1`), with the patch as the
//! documented base64 string (kube-core serializes it as a number array).

use base64::Engine;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation};
use kube::core::DynamicObject;
use serde_json::{json, Value};

use crate::config::Config;
use crate::inject::{inject_pod_as, Outcome};
use crate::patch;
use crate::selectors::{Selection, INJECT_PATH};

/// The default largest `POST /inject` body (`--max-body-bytes`). A pod review is the pod once
/// (CREATE has no oldObject) plus about 1 KB of envelope: a typical Deployment pod makes a 3 KB
/// review, and one with a dozen containers and long env lists stays under 100 KB. 1 MiB is over
/// 300 times the typical review, and it bounds what concurrent reviews can hold in memory
/// (`--max-concurrent-reviews` × this, 32 MiB by default, against the webhook's 128 Mi limit).
/// Pods larger than this are refused with 413; etcd stores objects up to 1.5 MiB by default, so
/// a cluster with pods that large can raise it to 2 MiB.
pub const MAX_BODY: usize = 1024 * 1024;

/// The default largest `POST /validate` body (`--max-rules-body-bytes`): a ConfigMap UPDATE
/// review carries the new and the old object, each up to 1 MiB of data (JSON-escaped, a little
/// more), so 3 MiB, the API server's own request body limit.
pub const MAX_RULES_BODY: usize = 3 * 1024 * 1024;

/// What the per-review log line says.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ReviewLog {
    pub uid: String,
    pub namespace: String,
    pub pod: String,
    pub owner_kind: String,
    /// injected, skipped, denied or error.
    pub decision: &'static str,
    pub reason: String,
    /// The injector's revision.
    pub revision: String,
    /// Which webhook entry sent the pod, and what selects it (or why the request path names
    /// none).
    pub selection: String,
}

/// An HTTP answer: status code, JSON or text body, and the log record.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
    pub log: ReviewLog,
}

fn error(status: u16, msg: String, log: ReviewLog) -> Reply {
    // One line whatever the request carried: values quoted from it may hold line breaks.
    let msg = if msg.contains(|c: char| c.is_control()) {
        msg.chars()
            .map(|c| match c {
                '\n' => "\\n".to_string(),
                '\r' => "\\r".to_string(),
                c if c.is_control() => c.escape_unicode().to_string(),
                c => c.to_string(),
            })
            .collect()
    } else {
        msg
    };
    let log = ReviewLog {
        decision: "error",
        reason: msg.clone(),
        ..log
    };
    Reply {
        status,
        content_type: "text/plain; charset=utf-8",
        body: format!("remora-webhook: {msg}\n").into_bytes(),
        log,
    }
}

fn owner_kind(obj: &Value) -> String {
    let Some(refs) = obj
        .pointer("/metadata/ownerReferences")
        .and_then(Value::as_array)
    else {
        return String::new();
    };
    refs.iter()
        .find(|r| r.get("controller").and_then(Value::as_bool) == Some(true))
        .or(refs.first())
        .and_then(|r| r.get("kind"))
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

/// An AdmissionReview v1 taken apart: the typed request (without its objects) and the object and
/// old object as raw JSON (typed round trips would drop fields our types do not know).
pub struct Envelope {
    pub request: AdmissionRequest<DynamicObject>,
    pub object: Value,
    pub old_object: Value,
}

/// Parses an AdmissionReview v1 body, for the mutating and the validating endpoints alike.
/// `Err((uid, reason))`: one line for a 400 answer, with the request's uid when it got that far.
pub fn parse_envelope(body: &[u8]) -> Result<Envelope, (String, String)> {
    let fail = |uid: &str, msg: String| Err((uid.to_string(), msg));
    let mut raw: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => return fail("", format!("body is not JSON: {e}")),
    };
    let api_version = raw.get("apiVersion").and_then(Value::as_str).unwrap_or("");
    let kind = raw.get("kind").and_then(Value::as_str).unwrap_or("");
    if kind != "AdmissionReview" {
        return fail("", format!("kind {kind:?} is not AdmissionReview"));
    }
    if api_version != "admission.k8s.io/v1" {
        return fail(
            "",
            format!("apiVersion {api_version:?} is not supported; remora-webhook speaks admission.k8s.io/v1"),
        );
    }
    let Some(raw_req) = raw.get_mut("request").filter(|r| r.is_object()) else {
        return fail("", "AdmissionReview has no request".into());
    };
    let uid = raw_req
        .get("uid")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    if uid.is_empty() {
        return fail("", "AdmissionReview request has no uid".into());
    }
    let mut take = |k: &str| raw_req.get_mut(k).map(Value::take).unwrap_or(Value::Null);
    let object = take("object");
    let old_object = take("oldObject");
    let review: AdmissionReview<DynamicObject> = match serde_json::from_value(raw) {
        Ok(r) => r,
        Err(e) => return fail(&uid, format!("malformed AdmissionReview: {e}")),
    };
    match review.try_into() {
        Ok(request) => Ok(Envelope {
            request,
            object,
            old_object,
        }),
        Err(_) => fail(&uid, "AdmissionReview has no request".into()),
    }
}

/// Answers one AdmissionReview body posted to `/inject` (see [`handle_at`]).
pub fn handle(body: &[u8], cfg: &Config) -> Reply {
    handle_at(body, cfg, INJECT_PATH)
}

/// Answers one AdmissionReview body posted to `path`, which names the webhook entry that sent
/// it (`/inject/rev/<revision>/<entry>`; `/inject` for a configuration from before revisions).
/// Never panics; malformed input gets a 400 with one line.
pub fn handle_at(body: &[u8], cfg: &Config, path: &str) -> Reply {
    let mut log = ReviewLog {
        revision: cfg.revision().to_string(),
        ..ReviewLog::default()
    };
    let selection = Selection::from_path(path);
    log.selection = match &selection {
        Ok(s) => s.why(),
        Err(e) => e.clone(),
    };
    let Envelope {
        request: req,
        object,
        ..
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
        .or_else(|| {
            object
                .pointer("/metadata/namespace")
                .and_then(Value::as_str)
                .map(str::to_string)
        })
        .unwrap_or_else(|| "default".to_string());
    log.pod = object
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .or_else(|| {
            object
                .pointer("/metadata/generateName")
                .and_then(Value::as_str)
                .map(str::to_string)
        })
        .unwrap_or_else(|| req.name.clone());
    log.owner_kind = owner_kind(&object);

    let resp = AdmissionResponse::from(&req);
    let (resp, patch_bytes) = if req.kind.kind != "Pod" || !req.kind.group.is_empty() {
        let msg = format!(
            "remora-webhook injects Pods only; got {}/{} {}",
            req.kind.group, req.kind.version, req.kind.kind
        );
        log.decision = "denied";
        log.reason = msg.clone();
        (resp.deny(msg), None)
    } else if !matches!(req.operation, Operation::Create) {
        log.decision = "skipped";
        log.reason = format!(
            "operation {:?}: only pod creation is injected",
            req.operation
        );
        (resp, None)
    } else if !object.is_object() {
        let msg = "AdmissionReview request has no object (the pod)".to_string();
        log.decision = "denied";
        log.reason = msg.clone();
        (resp.deny(msg), None)
    } else {
        let outcome = match &selection {
            Ok(sel) => inject_pod_as(&object, &log.namespace, cfg, sel),
            Err(why) => Outcome::Skipped(format!("not injecting: {why}")),
        };
        log.decision = outcome.decision();
        log.reason = outcome.reason().to_string();
        match outcome {
            Outcome::Injected { pod, notes, .. } => {
                let p = patch::diff(&object, &pod);
                let mut resp = resp;
                if !notes.is_empty() {
                    resp.warnings = Some(notes);
                }
                if p.0.is_empty() {
                    log.reason.push_str("; nothing to change");
                    (resp, None)
                } else {
                    // `with_patch` sets patchType; the bytes it stores would serialize as a
                    // number array (one JSON value per byte), so they are dropped here and the
                    // documented base64 string is put in the serialized review below.
                    match (
                        serde_json::to_vec(&p),
                        resp.with_patch(json_patch::Patch(Vec::new())),
                    ) {
                        (Ok(bytes), Ok(mut r)) => {
                            r.patch = None;
                            (r, Some(bytes))
                        }
                        (Err(e), _) => {
                            return error(500, format!("serializing the patch: {e}"), log)
                        }
                        (_, Err(e)) => {
                            return error(500, format!("serializing the patch: {e}"), log)
                        }
                    }
                }
            }
            Outcome::Skipped(_) => (resp, None),
            Outcome::Denied(msg) => (resp.deny(msg), None),
        }
    };
    // Serialized in one pass; the base64 patch goes in as the first member of "response"
    // (TypeMeta comes first and was checked to be exactly admission.k8s.io/v1 AdmissionReview,
    // so the first `"response":{` is the response object's opening).
    let mut body = match serde_json::to_vec(&resp.into_review()) {
        Ok(b) => b,
        Err(e) => return error(500, format!("serializing the response: {e}"), log),
    };
    if let Some(bytes) = patch_bytes {
        const KEY: &[u8] = b"\"response\":{";
        let Some(at) = body.windows(KEY.len()).position(|w| w == KEY) else {
            return error(
                500,
                "serialized response has no response object".into(),
                log,
            );
        };
        let b64 = base64::engine::general_purpose::STANDARD.encode(bytes);
        let member = format!("\"patch\":\"{b64}\",");
        body.splice(at + KEY.len()..at + KEY.len(), member.into_bytes());
    }
    Reply {
        status: 200,
        content_type: "application/json",
        body,
        log,
    }
}

/// Wraps a pod into an AdmissionReview request (tests, benchmarks, `check-inject`).
pub fn review_for(pod: &Value, uid: &str, namespace: &str) -> Value {
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
            "requestResource": {"group": "", "version": "v1", "resource": "pods"},
            "name": pod.pointer("/metadata/name").and_then(Value::as_str).unwrap_or(""),
            "namespace": namespace,
            "operation": "CREATE",
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
            "object": pod,
            "oldObject": null,
            "dryRun": false,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"}
        }
    })
}

/// Decodes the base64 patch of a response review (`None` when there is none).
pub fn response_patch(review: &Value) -> Result<Option<json_patch::Patch>, String> {
    let Some(p) = review.pointer("/response/patch") else {
        return Ok(None);
    };
    let s = p
        .as_str()
        .ok_or_else(|| format!("response.patch is not a base64 string: {p}"))?;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(s)
        .map_err(|e| format!("response.patch is not base64: {e}"))?;
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| format!("response.patch is not a JSON patch: {e}"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn an_error_quoting_a_line_break_stays_one_line() {
        let body = br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u","kind":{"group":"","version":"v1","kind":"Pod"},"resource":{"group":"","version":"v1","resource":"pods"},"namespace":"default","operation":"C\nX:\r y","object":{}}}"#;
        let r = super::handle(body, &crate::config::Config::default());
        assert_eq!(r.status, 400);
        let text = String::from_utf8(r.body).unwrap();
        assert_eq!(text.matches('\n').count(), 1, "{text:?}");
        assert!(
            text.ends_with('\n') && text.contains("C\\nX:\\r y"),
            "{text:?}"
        );
    }

    use super::*;

    fn pod() -> Value {
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"generateName": "web-", "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-1", "uid": "u", "controller": true}]},
               "spec": {"containers": [{"name": "web", "image": "nginx"}]}})
    }

    fn reply(v: &Value) -> (Reply, Value) {
        let r = handle(&serde_json::to_vec(v).unwrap(), &Config::default());
        let body = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
        (r, body)
    }

    #[test]
    fn injects_with_base64_patch_that_applies() {
        let p = pod();
        let (r, body) = reply(&review_for(&p, "abc", "shop"));
        assert_eq!(r.status, 200);
        assert_eq!(body["response"]["uid"], "abc");
        assert_eq!(body["response"]["allowed"], true);
        assert_eq!(body["response"]["patchType"], "JSONPatch");
        assert_eq!(body["apiVersion"], "admission.k8s.io/v1");
        let patch = response_patch(&body).unwrap().unwrap();
        let mut doc = p.clone();
        json_patch::patch(&mut doc, &patch).unwrap();
        assert_eq!(doc["spec"]["initContainers"][0]["name"], "remora-proxy");
        assert_eq!(r.log.decision, "injected");
        assert_eq!(r.log.pod, "web-");
        assert_eq!(r.log.namespace, "shop");
        assert_eq!(r.log.owner_kind, "ReplicaSet");
    }

    #[test]
    fn bad_inputs_get_clear_errors() {
        let r = handle(b"{not json", &Config::default());
        assert_eq!(r.status, 400);
        assert!(String::from_utf8_lossy(&r.body).contains("not JSON"));
        let mut v = review_for(&pod(), "abc", "shop");
        v["apiVersion"] = json!("admission.k8s.io/v1beta1");
        assert_eq!(reply(&v).0.status, 400);
        let mut v = review_for(&pod(), "abc", "shop");
        v["request"]["uid"] = json!("");
        let (r, _) = reply(&v);
        assert_eq!(r.status, 400);
        assert!(r.log.reason.contains("uid"));
        let mut v = review_for(&pod(), "abc", "shop");
        v["kind"] = json!("Pod");
        assert_eq!(reply(&v).0.status, 400);
        let mut v = review_for(&pod(), "abc", "shop");
        v["request"]["kind"] = json!({"group": "apps", "version": "v1", "kind": "Deployment"});
        let (r, body) = reply(&v);
        assert_eq!(r.status, 200);
        assert_eq!(body["response"]["allowed"], false);
        assert!(body["response"]["status"]["message"]
            .as_str()
            .unwrap()
            .contains("Pods only"));
    }

    #[test]
    fn denial_carries_the_message() {
        let mut p = pod();
        p["metadata"]["annotations"] =
            json!({"traffic.sidecar.istio.io/excludeOutboundPorts": "bad"});
        let (r, body) = reply(&review_for(&p, "u1", "shop"));
        assert_eq!(r.log.decision, "denied");
        assert_eq!(body["response"]["allowed"], false);
        let msg = body["response"]["status"]["message"].as_str().unwrap();
        assert!(
            msg.contains("traffic.sidecar.istio.io/excludeOutboundPorts") && msg.contains("bad"),
            "{msg}"
        );
    }

    /// A pod Istio injected (Istio's status annotation, `istio-init` and `istio-proxy`).
    fn istio_pod() -> Value {
        let mut p = pod();
        p["metadata"]["annotations"] = json!({"sidecar.istio.io/status": r#"{"initContainers":["istio-init","istio-proxy"],"containers":null,"volumes":["workload-socket","istio-envoy","istio-data","istio-podinfo","istio-token","istiod-ca-cert"],"imagePullSecrets":null,"revision":"default"}"#});
        p["spec"]["initContainers"] = json!([
            {"name": "istio-init", "image": "docker.io/istio/proxyv2:1.28.0"},
            {"name": "istio-proxy", "image": "docker.io/istio/proxyv2:1.28.0", "restartPolicy": "Always"}
        ]);
        p["spec"]["volumes"] = json!([{"name": "istio-envoy", "emptyDir": {}}]);
        p
    }

    fn reply_at(v: &Value, cfg: &Config, path: &str) -> (Reply, Value) {
        let r = handle_at(&serde_json::to_vec(v).unwrap(), cfg, path);
        let body = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
        (r, body)
    }

    #[test]
    fn a_pod_istio_injected_is_left_alone_unless_the_namespace_moved() {
        let p = istio_pod();
        // Namespace labelled istio-injection=enabled (Istio's label too), default revision.
        for path in [
            "/inject/rev/default/namespace",
            "/inject",
            "/inject/rev/default/rev.namespace",
        ] {
            let (r, body) = reply_at(&review_for(&p, "u", "shop"), &Config::default(), path);
            assert_eq!(r.status, 200);
            assert_eq!(body["response"]["allowed"], true, "{path}");
            assert!(body["response"].get("patch").is_none(), "{path}: {body}");
            assert!(
                body["response"].get("patchType").is_none(),
                "{path}: {body}"
            );
            assert_eq!(r.log.decision, "skipped", "{path}");
            assert_eq!(
                r.log.reason,
                "already injected by Istio (istio-proxy container, sidecar.istio.io/status annotation): left alone, namespace shop is not moved to remora (label it istio.io/rev=<a remora revision other than default> to move it)",
                "{path}"
            );
            assert_eq!(r.log.revision, "default");
        }
        let (r, _) = reply_at(
            &review_for(&p, "u", "shop"),
            &Config::default(),
            "/inject/rev/default/namespace",
        );
        assert_eq!(
            r.log.selection,
            "remora-sidecar-injector/namespace.sidecar-injector.remora.dev (revision default): namespace label istio-injection=enabled"
        );
        // The namespace moved to remora (istio.io/rev=b, b a remora revision): re-injected in
        // place, Istio's containers and volumes replaced by ours.
        let cfg = Config::default().with_revision("b").unwrap();
        let (r, body) = reply_at(
            &review_for(&p, "u", "shop"),
            &cfg,
            "/inject/rev/b/rev.namespace",
        );
        assert_eq!(r.log.decision, "injected", "{}", r.log.reason);
        assert!(
            r.log.reason.contains("its sidecar is replaced"),
            "{}",
            r.log.reason
        );
        let mut doc = p.clone();
        json_patch::patch(&mut doc, &response_patch(&body).unwrap().unwrap()).unwrap();
        let names = |list: &str| -> Vec<String> {
            doc["spec"][list]
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|c| c["name"].as_str().unwrap().to_string())
                        .collect()
                })
                .unwrap_or_default()
        };
        assert_eq!(names("initContainers"), ["remora-proxy", "remora-init"]);
        assert!(!names("volumes").contains(&"istio-envoy".to_string()));
        let status: Value = serde_json::from_str(
            doc["metadata"]["annotations"]["sidecar.istio.io/status"]
                .as_str()
                .unwrap(),
        )
        .unwrap();
        assert_eq!(status["revision"], "b");
    }

    #[test]
    fn an_injector_injects_only_for_its_revision_and_names_it() {
        let b = Config::default().with_revision("b").unwrap();
        // The default revision's entry calls revision b's Service: misconfigured, not injected.
        let (r, body) = reply_at(
            &review_for(&pod(), "u", "shop"),
            &b,
            "/inject/rev/default/namespace",
        );
        assert_eq!(r.log.decision, "skipped");
        assert!(body["response"].get("patch").is_none());
        assert!(r.log.reason.starts_with("sent by namespace.sidecar-injector.remora.dev of revision default, but this injector is revision b"), "{}", r.log.reason);
        assert_eq!(r.log.revision, "b");
        // Its own entry: injected, and the log says which entry and why.
        let mut p = pod();
        p["metadata"]["labels"] = json!({"istio.io/rev": "b"});
        let (r, _) = reply_at(&review_for(&p, "u", "shop"), &b, "/inject/rev/b/rev.object");
        assert_eq!(r.log.decision, "injected", "{}", r.log.reason);
        assert_eq!(r.log.selection, "remora-sidecar-injector-b/rev.object.sidecar-injector.remora.dev (revision b): pod label istio.io/rev=b (the namespace has neither istio-injection nor istio.io/rev)");
        // A path that names no entry: not injected, the log names the path.
        let (r, body) = reply_at(&review_for(&pod(), "u", "shop"), &b, "/inject/rev/b");
        assert_eq!((r.status, r.log.decision), (200, "skipped"));
        assert_eq!(body["response"]["allowed"], true);
        assert!(
            r.log
                .reason
                .contains("request path \"/inject/rev/b\": no entry"),
            "{}",
            r.log.reason
        );
    }

    #[test]
    fn skipped_has_no_patch() {
        let (r, body) = reply(&review_for(&pod(), "u2", "kube-system"));
        assert_eq!(r.log.decision, "skipped");
        assert_eq!(body["response"]["allowed"], true);
        assert!(body["response"].get("patch").is_none());
    }
}
