//! Any bytes as the body of `POST /inject`, through `review::handle` (the function the server's
//! handler calls). The answer must be a well-formed AdmissionReview for the request's uid (with a
//! patch that applies to the pod) or a one-line plain-text error with a 4xx/5xx status.
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use remora_webhook::config::Config;
use remora_webhook::review;
use serde_json::Value;

static CFG: LazyLock<Config> = LazyLock::new(Config::default);

fuzz_target!(|data: &[u8]| {
    let reply = review::handle(data, &CFG);
    assert!(
        ["injected", "skipped", "denied", "error"].contains(&reply.log.decision),
        "unknown decision {:?}",
        reply.log.decision
    );
    if reply.status != 200 {
        assert!(
            (400..600).contains(&reply.status),
            "status {}",
            reply.status
        );
        assert_eq!(reply.log.decision, "error");
        assert!(reply.content_type.starts_with("text/plain"));
        let text = std::str::from_utf8(&reply.body).expect("error body is UTF-8");
        assert!(text.starts_with("remora-webhook: "), "{text:?}");
        assert!(
            text.ends_with('\n') && text.matches('\n').count() == 1,
            "error body is not one line: {text:?}"
        );
        return;
    }
    assert_eq!(reply.content_type, "application/json");
    let out: Value = serde_json::from_slice(&reply.body).expect("answer is JSON");
    assert_eq!(out["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(out["kind"], "AdmissionReview");
    // A 200 means the input was a review with a uid: the answer carries the same uid.
    let input: Value = serde_json::from_slice(data).expect("a 200 answer for a non-JSON body");
    assert_eq!(
        out.pointer("/response/uid"),
        input.pointer("/request/uid"),
        "uid not echoed"
    );
    let allowed = out
        .pointer("/response/allowed")
        .and_then(Value::as_bool)
        .expect("response.allowed is a bool");
    if !allowed {
        let msg = out
            .pointer("/response/status/message")
            .and_then(Value::as_str)
            .unwrap_or("");
        assert!(!msg.is_empty(), "a denial without a message: {out}");
        assert!(out.pointer("/response/patch").is_none(), "a denial with a patch");
        assert_eq!(reply.log.decision, "denied");
    }
    match review::response_patch(&out) {
        Ok(None) => {}
        Ok(Some(p)) => {
            assert_eq!(reply.log.decision, "injected");
            assert_eq!(
                out.pointer("/response/patchType").and_then(Value::as_str),
                Some("JSONPatch")
            );
            let mut pod = input
                .pointer("/request/object")
                .cloned()
                .unwrap_or(Value::Null);
            json_patch::patch(&mut pod, &p).expect("the patch applies to the pod");
            // The injected containers run the configured images, never one from the pod's
            // annotations (the pod may declare override containers of its own, which it can).
            let declares_override = ["containers", "initContainers"].iter().any(|l| {
                input
                    .pointer(&format!("/request/object/spec/{l}"))
                    .and_then(Value::as_array)
                    .is_some_and(|a| {
                        a.iter().any(|c| {
                            matches!(
                                c.get("name").and_then(Value::as_str),
                                Some("remora-proxy" | "istio-proxy" | "remora-init" | "istio-init")
                            )
                        })
                    })
            });
            if !declares_override {
                for list in ["containers", "initContainers"] {
                    for c in pod
                        .pointer(&format!("/spec/{list}"))
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten()
                    {
                        let name = c.get("name").and_then(Value::as_str).unwrap_or("");
                        let want = match name {
                            "remora-proxy" => &CFG.proxy.image,
                            "remora-init" => &CFG.init.image,
                            _ => continue,
                        };
                        assert_eq!(
                            c.get("image").and_then(Value::as_str),
                            Some(want.as_str()),
                            "{name} image chosen by the pod's annotations"
                        );
                    }
                }
            }
        }
        Err(e) => panic!("bad patch in the answer: {e}"),
    }
});
