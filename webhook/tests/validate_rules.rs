//! The rules validating webhook (`POST /validate`) over real HTTPS: the in-process server on
//! 127.0.0.1:0 with an rcgen certificate, fed rules ConfigMaps built from Istio's Bookinfo
//! samples (`$REMORA_SHARED/anchors/istio/networking/`, used in place) and from
//! `manifests/rules-example.yaml`, plus broken variants of them.

// The workspace's test port allocator (ports outside the ephemeral range).
#[path = "../../tests/src/ports.rs"]
mod ports;

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use remora_webhook::client::{client_config, Client};
use remora_webhook::config::{Config, ConfigHandle};
use remora_webhook::server::{self, Running, ServeOptions};
use remora_webhook::validate_rules::review_for;
use serde_json::{json, Value};

static UID: AtomicU64 = AtomicU64::new(0);

fn uid() -> String {
    format!(
        "uid-{}-{}",
        std::process::id(),
        UID.fetch_add(1, Ordering::Relaxed)
    )
}

/// A file of Istio's Bookinfo rules; the tests using it start with
/// `remora_corpus::require!("networking")` (skipped, with a line saying so, without the corpus).
fn bookinfo(file: &str) -> String {
    let p = remora_corpus::istio_dir().join("networking").join(file);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

struct Server {
    _dir: tempfile::TempDir,
    running: Running,
    cert_pem: String,
}

async fn start(cfg: Config) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let cert = dir.path().join("tls.crt");
    let key = dir.path().join("tls.key");
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.key_pair.serialize_pem()).unwrap();
    let running = server::start(ServeOptions {
        listen: "127.0.0.1:0".parse().unwrap(),
        cert,
        key,
        config: ConfigHandle::fixed(cfg),
        reload_poll: Duration::from_secs(10),
        drain: Duration::from_secs(5),
        limits: Default::default(),
    })
    .await
    .unwrap();
    Server {
        _dir: dir,
        running,
        cert_pem: ck.cert.pem(),
    }
}

impl Server {
    async fn client(&self) -> Client {
        let cfg = client_config(&[self.cert_pem.as_bytes()]).unwrap();
        Client::connect(self.running.addr, "localhost", cfg)
            .await
            .unwrap()
    }

    /// Sends `cm` in a review with `operation`; returns the `response` of the answer.
    async fn review(&self, cm: &Value, operation: &str) -> Value {
        let id = uid();
        let body = serde_json::to_vec(&review_for(cm, &id, operation)).unwrap();
        let (status, body) = self
            .client()
            .await
            .post("/validate", Bytes::from(body))
            .await
            .unwrap();
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["apiVersion"], "admission.k8s.io/v1");
        assert_eq!(v["kind"], "AdmissionReview");
        assert_eq!(v["response"]["uid"], id.as_str());
        assert!(
            v["response"].get("patch").is_none(),
            "a validating webhook never patches"
        );
        v["response"].clone()
    }
}

fn rules_cm(ns: &str, data: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap",
           "metadata": {"name": "remora-mesh-rules", "namespace": ns, "uid": "0c1d2e3f"},
           "data": data})
}

fn message(resp: &Value) -> &str {
    resp["status"]["message"].as_str().unwrap_or("")
}

fn warnings(resp: &Value) -> Vec<String> {
    resp["warnings"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|w| w.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

fn counter(metrics: &str, decision: &str) -> u64 {
    let prefix = format!("remora_webhook_rules_reviews_total{{decision=\"{decision}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

const DR_ALL: &str = "destination-rule-all.yaml";

/// Every Bookinfo VirtualService sample, each with the DestinationRules it routes to, is allowed
/// with no warning (a namespace running Bookinfo applies them without noise), and so is the
/// shipped example ConfigMap.
#[tokio::test]
async fn bookinfo_rules_are_allowed() {
    remora_corpus::require!("networking");
    let s = start(Config::default()).await;
    let mut checked = 0;
    let dir = remora_corpus::istio_dir().join("networking");
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        // (fault-injection-details-v1.yaml is left out: its second route can never match, a
        // warning, and it redefines DestinationRule details, which DR_ALL also defines.)
        .filter(|n| n.starts_with("virtual-service-"))
        .collect();
    files.sort();
    assert!(files.len() >= 10, "{files:?}");
    let mut failures = Vec::new();
    for f in &files {
        let cm = rules_cm(
            "bookinfo",
            json!({ f.as_str(): bookinfo(f), DR_ALL: bookinfo(DR_ALL) }),
        );
        let resp = s.review(&cm, "CREATE").await;
        if resp["allowed"] != true || !warnings(&resp).is_empty() {
            failures.push(format!("{f}: {} {:?}", message(&resp), warnings(&resp)));
        }
        checked += 1;
    }
    assert_eq!(failures, Vec::<String>::new());
    // The example manifest's ConfigMap, exactly as shipped.
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests/rules-example.yaml"),
    )
    .unwrap();
    let example: Value = serde_yaml_ng::from_str(&text).unwrap();
    let resp = s.review(&example, "UPDATE").await;
    assert_eq!(resp["allowed"], true, "{}", message(&resp));
    assert_eq!(warnings(&resp), Vec::<String>::new());
    assert!(checked >= 10);
    s.running.shutdown().await;
}

/// Each broken variant is denied; the message names the ConfigMap, the key, the document, the
/// field, the value and the reason.
#[tokio::test]
async fn invalid_rules_are_denied_with_key_field_and_reason() {
    remora_corpus::require!("networking");
    let s = start(Config::default()).await;
    let before = counter(
        &String::from_utf8_lossy(&s.client().await.get("/metrics").await.unwrap().1),
        "denied",
    );
    let vs = bookinfo("virtual-service-reviews-90-10.yaml");
    let dr = bookinfo(DR_ALL);
    let cases: Vec<(&str, String, Vec<&str>)> = vec![
        (
            "weights that do not sum to 100",
            vs.replace("weight: 10", "weight: 30"),
            vec!["reviews.yaml doc 1: spec.http[0].route: weights sum to 120, not 100"],
        ),
        (
            "a regex that does not compile",
            vs.replace(
                "  http:\n",
                "  http:\n  - match:\n    - uri:\n        regex: \"/api/([a-z\"\n    route:\n    - destination:\n        host: reviews\n        subset: v3\n",
            ),
            vec!["reviews.yaml doc 1: spec.http[0].match[0].uri.regex", "/api/([a-z"],
        ),
        (
            "an unknown (misspelled) field",
            vs.replace(
                "  http:\n",
                "  http:\n  - matches:\n    - headers:\n        end-user:\n          exact: jason\n    route:\n    - destination:\n        host: reviews\n        subset: v3\n",
            ),
            vec!["reviews.yaml doc 1: spec.http[0].matches: unknown field (did you mean \"match\"?)"],
        ),
        (
            "a YAML syntax error",
            format!("{vs}  tcp: [oops\n"),
            vec!["reviews.yaml doc 1: invalid YAML"],
        ),
    ];
    for (what, text, wants) in &cases {
        let cm = rules_cm("bookinfo", json!({"reviews.yaml": text, DR_ALL: dr}));
        let resp = s.review(&cm, "CREATE").await;
        assert_eq!(resp["allowed"], false, "{what}: {resp}");
        assert_eq!(resp["status"]["code"], 400, "{what}");
        assert_eq!(resp["status"]["status"], "Failure", "{what}");
        let msg = message(&resp);
        assert!(
            msg.starts_with("ConfigMap bookinfo/remora-mesh-rules: "),
            "{what}: {msg}"
        );
        for w in wants {
            assert!(msg.contains(w), "{what}: {msg:?} lacks {w:?}");
        }
        assert!(!msg.contains('\n'), "{what}: one line: {msg:?}");
    }

    // Two findings in one message, exactly as docs/webhook.md and docs/install.md show it.
    let two = format!(
        "{}---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: ratings\nspec:\n  hosts:\n  - ratings\n  http:\n  - match:\n    - uri:\n        regex: \"/api/([a-z\"\n    route:\n    - destination:\n        host: ratings\n",
        cases[0].1
    );
    let cm = rules_cm("bookinfo", json!({"reviews.yaml": two, DR_ALL: dr}));
    let resp = s.review(&cm, "CREATE").await;
    assert_eq!(
        message(&resp),
        "ConfigMap bookinfo/remora-mesh-rules: 2 invalid mesh rules: reviews.yaml doc 1: spec.http[0].route: weights sum to 120, not 100; reviews.yaml doc 2: spec.http[0].match[0].uri.regex: invalid regex \"/api/([a-z\": error: unclosed character class"
    );

    // An invalid trafficPolicy in the DestinationRule (a policy the proxy's loader rejects).
    let bad_dr = dr.replacen(
        "spec:\n  host: productpage\n",
        "spec:\n  host: productpage\n  trafficPolicy:\n    loadBalancer:\n      simple: FASTEST\n",
        1,
    );
    assert_ne!(bad_dr, dr, "the sample's first rule is for productpage");
    let cm = rules_cm("bookinfo", json!({"reviews.yaml": vs, DR_ALL: bad_dr}));
    let resp = s.review(&cm, "UPDATE").await;
    assert_eq!(resp["allowed"], false, "{resp}");
    let msg = message(&resp);
    assert!(
        msg.contains("destination-rule-all.yaml doc 1: ")
            && msg.contains("trafficPolicy.loadBalancer.simple: \"FASTEST\" is not ROUND_ROBIN"),
        "{msg}"
    );

    // A ConfigMap selected by its label rather than its name is checked the same way.
    let mut labelled = rules_cm("shop", json!({"vs.yaml": cases[0].1}));
    labelled["metadata"]["name"] = json!("team-a-routes");
    labelled["metadata"]["labels"] = json!({"remora.dev/rules": "true"});
    let resp = s.review(&labelled, "CREATE").await;
    assert_eq!(resp["allowed"], false, "{resp}");
    assert!(
        message(&resp).starts_with("ConfigMap shop/team-a-routes: "),
        "{}",
        message(&resp)
    );

    let after = counter(
        &String::from_utf8_lossy(&s.client().await.get("/metrics").await.unwrap().1),
        "denied",
    );
    assert!(
        after >= before + cases.len() as u64 + 2,
        "{before} -> {after}"
    );
    s.running.shutdown().await;
}

/// Findings that are warnings (here: a destination host no ServiceEntry defines, a key the
/// proxy does not read) allow the write and come back as `warnings`.
#[tokio::test]
async fn warnings_allow_and_are_returned() {
    let s = start(Config::default()).await;
    let vs = "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: payments
spec:
  hosts:
  - payments.example.com
  http:
  - route:
    - destination:
        host: payments.example.com
";
    let cm = rules_cm(
        "shop",
        json!({"payments.yaml": vs, "README.txt": "notes, not rules"}),
    );
    let resp = s.review(&cm, "CREATE").await;
    assert_eq!(resp["allowed"], true, "{resp}");
    let w = warnings(&resp);
    assert!(
        w.iter().any(|w| w.starts_with("ConfigMap shop/remora-mesh-rules: payments.yaml doc 1: spec.http[0].route[0].destination.host: host payments.example.com is not defined by any ServiceEntry")),
        "{w:?}"
    );
    assert!(
        w.iter()
            .any(|w| w.contains("README.txt: not read by the proxy")),
        "{w:?}"
    );
    assert_eq!(w.len(), 2, "{w:?}");
    s.running.shutdown().await;
}

/// Other ConfigMaps, DELETE, and other names under a configured rules name are allowed
/// untouched, even when their content would not pass.
#[tokio::test]
async fn unrelated_configmaps_and_deletes_are_allowed_untouched() {
    let s = start(Config::default()).await;
    let broken = json!({"rules.yaml": "a: [b"});
    let mut app = rules_cm("shop", broken.clone());
    app["metadata"]["name"] = json!("app-config");
    app["metadata"]["labels"] = json!({"remora.dev/rules": "false"});
    for (cm, op) in [
        (&app, "CREATE"),
        (&app, "UPDATE"),
        (&rules_cm("shop", broken.clone()), "DELETE"),
    ] {
        let resp = s.review(cm, op).await;
        assert_eq!(resp["allowed"], true, "{op}: {resp}");
        assert!(resp.get("warnings").is_none(), "{op}: {resp}");
        assert_eq!(message(&resp), "", "{op}");
    }
    s.running.shutdown().await;

    // The rules name comes from the injector config.
    let s = start(Config {
        rules_config_map: "mesh-routes".into(),
        ..Config::default()
    })
    .await;
    let resp = s.review(&rules_cm("shop", broken.clone()), "CREATE").await;
    assert_eq!(
        resp["allowed"], true,
        "remora-mesh-rules is not the rules name here"
    );
    let mut named = rules_cm("shop", broken);
    named["metadata"]["name"] = json!("mesh-routes");
    let resp = s.review(&named, "CREATE").await;
    assert_eq!(resp["allowed"], false, "{resp}");
    assert!(
        message(&resp).contains("rules.yaml doc 1: invalid YAML"),
        "{resp}"
    );
    s.running.shutdown().await;
}

/// Garbage gets a clean 400 with one line, and the server keeps answering.
#[tokio::test]
async fn garbage_bodies_get_400_and_the_server_keeps_serving() {
    let s = start(Config::default()).await;
    let mut c = s.client().await;
    let bodies: Vec<Vec<u8>> = vec![
        b"".to_vec(),
        b"\xff\xfe\x00garbage".to_vec(),
        b"{\"kind\": \"AdmissionReview\"".to_vec(),
        br#"{"kind":"AdmissionReview","apiVersion":"admission.k8s.io/v1"}"#.to_vec(),
        br#"{"kind":"AdmissionReview","apiVersion":"admission.k8s.io/v1","request":{"uid":"x","kind":7}}"#.to_vec(),
        br#"{"kind":"AdmissionReview","apiVersion":"admission.k8s.io/v1beta1","request":{"uid":"x"}}"#.to_vec(),
        serde_json::to_vec(&json!({"kind": "AdmissionReview", "apiVersion": "admission.k8s.io/v1",
            "request": {"uid": "x", "kind": {"group": "", "version": "v1", "kind": "ConfigMap"},
                        "resource": {"group": "", "version": "v1", "resource": "configmaps"},
                        "operation": "CREATE", "userInfo": {}, "object": null}})).unwrap(),
    ];
    for b in bodies {
        let (status, body) = c.post("/validate", Bytes::from(b.clone())).await.unwrap();
        let text = String::from_utf8_lossy(&body);
        assert_eq!(status, 400, "{:?} -> {text}", String::from_utf8_lossy(&b));
        assert!(text.starts_with("remora-webhook: "), "{text}");
        assert_eq!(text.lines().count(), 1, "{text}");
    }
    // Deeply nested JSON does not overflow the stack.
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let (status, _) = c.post("/validate", Bytes::from(deep)).await.unwrap();
    assert_eq!(status, 400);
    let (status, body) = c.get("/healthz").await.unwrap();
    assert_eq!(status, 200, "{body:?}");
    s.running.shutdown().await;
}

/// A small deterministic generator (xorshift64*), so a failure replays.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Flips, deletes, duplicates or inserts a few bytes.
fn mutate(rng: &mut Rng, input: &[u8]) -> Vec<u8> {
    const TOKENS: &[&[u8]] = &[
        b"{",
        b"}",
        b"[",
        b"]",
        b":",
        b",",
        b"\"",
        b"-",
        b"\n",
        b"  ",
        b"null",
        b"---\n",
        b"*",
        b"&a",
        b"!!binary",
        b"\xff",
        b"0",
        b"-1",
        b"1e999",
        b"\\u0000",
    ];
    let mut v = input.to_vec();
    for _ in 0..1 + rng.below(4) {
        let at = rng.below(v.len() + 1);
        match rng.below(4) {
            0 if !v.is_empty() => {
                let i = at.min(v.len() - 1);
                v[i] ^= 1 << rng.below(8);
            }
            1 => {
                let end = (at + rng.below(16)).min(v.len());
                v.drain(at..end);
            }
            2 => {
                let end = (at + rng.below(64)).min(v.len());
                let piece = v[at..end].to_vec();
                v.splice(at..at, piece);
            }
            _ => {
                let t = TOKENS[rng.below(TOKENS.len())];
                v.splice(at..at, t.iter().copied());
            }
        }
    }
    v
}

/// Mutated reviews and mutated rule texts never panic the handler: a malformed review gets a
/// 400 with one line; a well-formed one gets a review answer, and a denial names the ConfigMap.
/// (Bounded: 1500 of each, seeded.)
#[test]
fn mutated_input_never_panics() {
    remora_corpus::require!("networking");
    let cfg = Config::default();
    let rules = format!(
        "{}---\n{}",
        bookinfo("virtual-service-reviews-90-10.yaml"),
        bookinfo(DR_ALL)
    );
    let cm = rules_cm("bookinfo", json!({ "rules.yaml": rules }));
    let review = serde_json::to_vec(&review_for(&cm, "seed", "CREATE")).unwrap();
    let mut rng = Rng(0x005e_ed0f_7e57);
    let (mut ok, mut bad) = (0, 0);
    for _ in 0..1500 {
        let body = mutate(&mut rng, &review);
        let a = remora_webhook::validate_rules::handle(&body, &cfg);
        match a.status {
            200 => {
                let v: Value = serde_json::from_slice(&a.body).unwrap();
                assert_eq!(v["kind"], "AdmissionReview");
                assert!(v["response"]["allowed"].is_boolean(), "{v}");
                ok += 1;
            }
            400 => {
                let text = String::from_utf8(a.body).unwrap();
                assert!(text.starts_with("remora-webhook: "), "{text}");
                assert_eq!(text.lines().count(), 1, "{text}");
                bad += 1;
            }
            s => panic!("status {s}: {}", String::from_utf8_lossy(&a.body)),
        }
    }
    assert!(
        ok > 0 && bad > 0,
        "both paths exercised: {ok} answered, {bad} refused"
    );

    let (mut allowed, mut denied) = (0, 0);
    for i in 0..1500 {
        let text = mutate(&mut rng, rules.as_bytes());
        let text = String::from_utf8_lossy(&text).into_owned();
        let cm = rules_cm("bookinfo", json!({ "rules.yaml": text }));
        let id = format!("m{i}");
        let body = serde_json::to_vec(&review_for(&cm, &id, "UPDATE")).unwrap();
        let a = remora_webhook::validate_rules::handle(&body, &cfg);
        assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
        let v: Value = serde_json::from_slice(&a.body).unwrap();
        assert_eq!(v["response"]["uid"], id.as_str());
        if v["response"]["allowed"] == true {
            allowed += 1;
        } else {
            let msg = message(&v["response"]);
            assert!(
                msg.starts_with("ConfigMap bookinfo/remora-mesh-rules: ")
                    && msg.contains("rules.yaml"),
                "{msg}"
            );
            denied += 1;
        }
    }
    assert!(
        allowed > 0 && denied > 0,
        "{allowed} allowed, {denied} denied"
    );
}

/// The HTTP layer in front of the handler (the router, in process): a non-JSON content type gets
/// 415, a body over the 3 MiB limit 413, GET 405; the same review as JSON is answered.
#[tokio::test]
async fn http_layer_refusals() {
    use tower::ServiceExt;
    let app = server::router(
        ConfigHandle::fixed(Config::default()),
        std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true)),
    );
    let req = |ct: &str, body: Vec<u8>| {
        http::Request::builder()
            .method("POST")
            .uri("/validate")
            .header("content-type", ct)
            .body(axum::body::Body::from(body))
            .unwrap()
    };
    let cm = rules_cm("shop", json!({"a.yaml": "a: [b"}));
    let review = serde_json::to_vec(&review_for(&cm, "h1", "CREATE")).unwrap();
    let resp = app
        .clone()
        .oneshot(req("text/yaml", review.clone()))
        .await
        .unwrap();
    assert_eq!(resp.status(), 415);
    let resp = app
        .clone()
        .oneshot(req("application/json", vec![b' '; 5 * 1024 * 1024]))
        .await
        .unwrap();
    assert_eq!(resp.status(), 413);
    let resp = app
        .clone()
        .oneshot(
            http::Request::builder()
                .uri("/validate")
                .body(axum::body::Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), 405);
    // And the same review with the right content type is answered (denied: invalid YAML).
    let resp = app
        .oneshot(req("application/json; charset=utf-8", review))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .unwrap();
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["response"]["allowed"], false, "{v}");
}

/// `manifests/webhook.yaml` and the code agree: the ValidatingWebhookConfiguration calls the
/// route this server answers, for what the handler checks (the default rules name and the label
/// in its matchConditions), fails open, and its name is the one the Deployment passes to
/// `--validating-webhook-config` and the one the RBAC lets it patch.
#[test]
fn the_manifest_matches_the_code() {
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests/webhook.yaml"),
    )
    .unwrap();
    let docs = remora_webhook::cli::parse_docs(&text).unwrap();
    let find = |kind: &str| -> Vec<&Value> { docs.iter().filter(|d| d["kind"] == kind).collect() };
    let vwcs = find("ValidatingWebhookConfiguration");
    assert_eq!(vwcs.len(), 1);
    let vwc = vwcs[0];
    let name = vwc["metadata"]["name"].as_str().unwrap();
    assert_eq!(name, "remora-rules-validator");
    let hooks = vwc["webhooks"].as_array().unwrap();
    assert_eq!(hooks.len(), 2);
    // The second: every kind the rules controller compiles, failing open, never refused.
    let istio = &hooks[1];
    assert_eq!(istio["clientConfig"]["service"]["path"], "/validate");
    assert_eq!(istio["failurePolicy"], "Ignore");
    let mut covered: Vec<(String, String)> = istio["rules"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| {
            let g = r["apiGroups"][0].as_str().unwrap().to_string();
            r["resources"]
                .as_array()
                .unwrap()
                .iter()
                .map(move |p| (g.clone(), p.as_str().unwrap().to_string()))
        })
        .collect();
    covered.sort();
    let mut kinds: Vec<(String, String)> = remora_webhook::rules_controller::KINDS
        .iter()
        .map(|k| (k.group.to_string(), k.plural.to_string()))
        .collect();
    kinds.sort();
    assert_eq!(covered, kinds);
    let w = &hooks[0];
    assert_eq!(w["clientConfig"]["service"]["path"], "/validate");
    assert_eq!(w["clientConfig"]["service"]["name"], "remora-webhook");
    assert_eq!(w["failurePolicy"], "Ignore");
    assert_eq!(w["sideEffects"], "None");
    assert_eq!(w["timeoutSeconds"], 5);
    assert_eq!(w["admissionReviewVersions"], json!(["v1"]));
    assert_eq!(
        w["rules"],
        json!([{"operations": ["CREATE", "UPDATE"], "apiGroups": [""], "apiVersions": ["v1"],
                "resources": ["configmaps"], "scope": "Namespaced"}])
    );
    assert_eq!(
        w["namespaceSelector"]["matchExpressions"],
        json!([{"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": ["kube-system"]}])
    );
    let expr = w["matchConditions"][0]["expression"].as_str().unwrap();
    let rules_name = Config::default().rules_config_map;
    let label = remora_webhook::validate_rules::RULES_LABEL;
    assert!(
        expr.contains(&format!("object.metadata.name == '{rules_name}'")),
        "{expr}"
    );
    assert!(
        expr.contains(&format!("object.metadata.labels['{label}'] == 'true'")),
        "{expr}"
    );
    // The Deployment names it, and the ClusterRole lets it get and patch exactly that one.
    let deploy = find("Deployment")[0];
    let args: Vec<&str> = deploy["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        args.contains(&format!("--validating-webhook-config={name}").as_str()),
        "{args:?}"
    );
    let rule = find("ClusterRole")
        .iter()
        .flat_map(|r| r["rules"].as_array().unwrap().iter())
        .find(|r| r["resources"] == json!(["validatingwebhookconfigurations"]))
        .cloned()
        .expect("an RBAC rule for validatingwebhookconfigurations");
    assert_eq!(rule["resourceNames"], json!([name]));
    assert_eq!(rule["verbs"], json!(["get", "patch"]));
}

/// Kills the binary if a test fails before it is stopped.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The real binary logs one JSON line per rules decision: the ConfigMap, the operation, the
/// decision, the counts and the reason.
#[tokio::test]
async fn the_binary_logs_one_line_per_decision() {
    remora_corpus::require!("networking");
    let dir = tempfile::tempdir().unwrap();
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    std::fs::write(dir.path().join("tls.crt"), ck.cert.pem()).unwrap();
    std::fs::write(dir.path().join("tls.key"), ck.key_pair.serialize_pem()).unwrap();
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], ports::free_port()));
    let log = dir.path().join("stderr.log");
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_remora-webhook"))
        .args(["serve", "--ca-addr", "off", "--listen", &addr.to_string()])
        .arg("--tls-cert")
        .arg(dir.path().join("tls.crt"))
        .arg("--tls-key")
        .arg(dir.path().join("tls.key"))
        .arg("--config")
        .arg(dir.path().join("absent.yaml"))
        .env("REMORA_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut child = Child(child);
    let cfg = client_config(&[ck.cert.pem().as_bytes()]).unwrap();
    let mut client = None;
    // Bounded (a minute or more: a debug binary starting on a loaded machine).
    for _ in 0..1200 {
        if let Ok(c) = Client::connect(addr, "localhost", cfg.clone()).await {
            client = Some(c);
            break;
        }
        assert!(child.0.try_wait().unwrap().is_none(), "exited early");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut c = client.expect("the server did not start");
    let vs = bookinfo("virtual-service-reviews-90-10.yaml");
    let bad = rules_cm(
        "bookinfo",
        json!({"reviews.yaml": vs.replace("weight: 10", "weight: 30"), DR_ALL: bookinfo(DR_ALL)}),
    );
    let good = rules_cm(
        "bookinfo",
        json!({"reviews.yaml": vs, DR_ALL: bookinfo(DR_ALL)}),
    );
    for (cm, op) in [(&bad, "CREATE"), (&good, "UPDATE")] {
        let body = serde_json::to_vec(&review_for(cm, &uid(), op)).unwrap();
        let (status, _) = c.post("/validate", Bytes::from(body)).await.unwrap();
        assert_eq!(status, 200);
    }
    let (status, _) = c
        .post("/validate", Bytes::from_static(b"nope"))
        .await
        .unwrap();
    assert_eq!(status, 400);
    // Bounded wait for the three lines (30 s or more).
    let mut lines: Vec<Value> = Vec::new();
    for _ in 0..600 {
        lines = std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| {
                v["message"]
                    .as_str()
                    .is_some_and(|m| m.starts_with("rules review"))
            })
            .collect();
        if lines.len() >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(lines.len(), 3, "{lines:#?}");
    let denied = &lines[0];
    assert_eq!(denied["message"], "rules review");
    assert_eq!(denied["level"], "INFO");
    assert_eq!(denied["configmap"], "bookinfo/remora-mesh-rules");
    assert_eq!(denied["operation"], "CREATE");
    assert_eq!(denied["decision"], "denied");
    assert_eq!(denied["errors"], 1);
    assert!(
        denied["reason"]
            .as_str()
            .unwrap()
            .contains("reviews.yaml doc 1: spec.http[0].route: weights sum to 120, not 100"),
        "{denied}"
    );
    assert!(denied["duration_ms"].is_number());
    let allowed = &lines[1];
    assert_eq!(allowed["decision"], "allowed");
    assert_eq!(allowed["operation"], "UPDATE");
    assert_eq!(
        allowed["reason"],
        "rules ConfigMap (name remora-mesh-rules): valid, 0 warnings"
    );
    let refused = &lines[2];
    assert_eq!(refused["message"], "rules review refused");
    assert_eq!(refused["decision"], "error");
    assert!(
        refused["reason"]
            .as_str()
            .unwrap()
            .starts_with("body is not JSON"),
        "{refused}"
    );
}
