//! Re-injecting any output of ours is a no-op, at library level (`inject_pod`, `review::handle`):
//! with `reinvocationPolicy: IfNeeded` the API server calls the webhook again with its own output
//! whenever another webhook runs after it, and a denial then refuses the pod. Checked on every pod
//! of Istio's injection corpus (`$REMORA_SHARED/anchors/istio/inject/`) and our samples, with a
//! close look at the corpus's `proxy-override.yaml`, whose own proxy container raises privileges.
//! (Over HTTPS the same is checked by `server.rs`, and against the binary under load by
//! `abuse.rs`.)

use std::path::{Path, PathBuf};

use remora_webhook::config::Config;
use remora_webhook::inject::{inject_pod, inject_pod_as, Outcome, OVERRIDES};
use remora_webhook::selectors::{Entry, Selection, Source};
use remora_webhook::{cli, review, workload};
use serde_json::{json, Value};

fn shared() -> PathBuf {
    match std::env::var("REMORA_SHARED") {
        Ok(s) if !s.is_empty() => PathBuf::from(s),
        _ => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared"),
    }
}

fn docs_in(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    cli::parse_docs(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn pods_of(doc: &Value) -> Vec<(Value, String)> {
    let Some(ptr) = doc
        .get("kind")
        .and_then(Value::as_str)
        .and_then(workload::template_pointer)
    else {
        return vec![];
    };
    let ns = doc
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .unwrap_or("default")
        .to_string();
    if ptr.is_empty() {
        return vec![(doc.clone(), ns)];
    }
    let Some(t) = doc.pointer(ptr) else {
        return vec![];
    };
    vec![(workload::pod_from_template(doc, t, &ns), ns)]
}

fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    v.sort();
    v
}

/// Re-injects `out` (an output of ours) through `inject_pod_as` and through
/// `review::handle_at`, as the entry `sel` sends it; `Err` says how it was not a no-op.
fn reinjection_is_noop(out: &Value, ns: &str, cfg: &Config, sel: &Selection) -> Result<(), String> {
    match inject_pod_as(out, ns, cfg, sel) {
        Outcome::Injected { pod, .. } if &pod == out => {}
        Outcome::Injected { pod, .. } => {
            let diff = remora_webhook::patch::diff(out, &pod);
            return Err(format!(
                "inject_pod changed the pod: {}",
                serde_json::to_string(&diff).unwrap()
            ));
        }
        other => return Err(format!("inject_pod: {other:?}")),
    }
    let body = serde_json::to_vec(&review::review_for(out, "again", ns)).unwrap();
    let reply = review::handle_at(&body, cfg, &sel.entry.path(&sel.revision));
    let v: Value = serde_json::from_slice(&reply.body).map_err(|e| e.to_string())?;
    if reply.status != 200 || v["response"]["allowed"] != true {
        return Err(format!("review: {} {v}", reply.status));
    }
    if v["response"].get("patch").is_some() {
        return Err(format!("review carries a patch: {v}"));
    }
    Ok(())
}

/// As the default revision's `namespace.` entry sends pods (its namespace labelled
/// `istio-injection=enabled`): the corpus pod Istio already injected is left alone, every other
/// one injected; and as revision canary's `rev.namespace.` entry in a namespace moved to remora,
/// where Istio's injected pod is re-injected too.
#[test]
fn reinjecting_any_output_is_a_noop() {
    let default = Selection::new("default", Entry::Namespace, Source::Path);
    reinjecting_any_output_is_a_noop_with(&Config::default(), &default, 39);
    let canary = Config::default().with_revision("canary").unwrap();
    let moved = Selection::new("canary", Entry::RevNamespace, Source::Path);
    reinjecting_any_output_is_a_noop_with(&canary, &moved, 40);
}

/// The same without workload identity (no token and root volumes, no tlsMode label).
#[test]
fn reinjecting_any_output_is_a_noop_without_identity() {
    let cfg = Config::from_yaml("identity: {caAddress: \"off\"}\n").unwrap();
    assert!(cfg.identity().is_none());
    reinjecting_any_output_is_a_noop_with(&cfg, &Selection::legacy(), 39);
}

fn reinjecting_any_output_is_a_noop_with(cfg: &Config, sel: &Selection, at_least: usize) {
    let corpus = shared().join("anchors/istio/inject");
    assert!(
        corpus.is_dir(),
        "Istio corpus not found at {} (set REMORA_SHARED)",
        corpus.display()
    );
    let samples = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/samples");
    let (mut checked, mut failures) = (0, Vec::new());
    for file in yaml_files(&corpus)
        .iter()
        .chain(yaml_files(&samples).iter())
    {
        let name = file.file_name().unwrap().to_string_lossy().to_string();
        for (i, doc) in docs_in(file).iter().enumerate() {
            for (pod, ns) in pods_of(doc) {
                let Outcome::Injected { pod: out, .. } = inject_pod_as(&pod, &ns, cfg, sel) else {
                    continue;
                };
                checked += 1;
                if let Err(e) = reinjection_is_noop(&out, &ns, cfg, sel) {
                    failures.push(format!("{name} doc {i}: {e}"));
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "re-injection is not a no-op:\n{}",
        failures.join("\n")
    );
    assert!(checked >= at_least, "only {checked} injected pods");
}

fn proxy_override_pod() -> Value {
    let doc = docs_in(&shared().join("anchors/istio/inject/proxy-override.yaml")).remove(0);
    pods_of(&doc).remove(0).0
}

fn injected(pod: &Value) -> Value {
    match inject_pod(pod, "default", &Config::default()) {
        Outcome::Injected { pod, .. } => pod,
        other => panic!("not injected: {other:?}"),
    }
}

fn record(pod: &Value) -> Value {
    serde_json::from_str(
        pod.pointer("/metadata/annotations/proxy.istio.io~1overrides")
            .and_then(Value::as_str)
            .expect("an override record"),
    )
    .unwrap()
}

#[test]
fn proxy_override_output_comes_back_unchanged_but_the_record_alone_raises_nothing() {
    let cfg = Config::default();
    let once = injected(&proxy_override_pod());
    // The pod's own containers raised the proxy's privileges and chose the init image; the record
    // says so, and the rendered containers carry it.
    let rec = record(&once);
    assert_eq!(
        rec["proxy"][0]["securityContext"]["allowPrivilegeEscalation"],
        true
    );
    assert_eq!(rec["init"][0]["image"], "fake/custom-image");
    reinjection_is_noop(&once, "default", &cfg, &Selection::legacy()).unwrap();
    // Twice more, as a chain of reinvocations would.
    let twice = injected(&once);
    assert_eq!(injected(&twice), once);

    // The record is still no way to raise privileges: on a pod without the containers that carry
    // them (a fresh pod, or our output with the proxy's securityContext put back to what we
    // render), the same record is refused.
    let mut bare = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p",
        "annotations": {OVERRIDES: once["metadata"]["annotations"][OVERRIDES].clone()}},
        "spec": {"containers": [{"name": "hello", "image": "hello"}]}});
    match inject_pod(&bare, "default", &cfg) {
        Outcome::Denied(why) => assert!(
            why.contains("raising privileges (allowPrivilegeEscalation)")
                && why.contains("image \"fake/custom-image\" for remora-init"),
            "{why}"
        ),
        other => panic!("bare record not denied: {other:?}"),
    }
    let mut tamper = once.clone();
    let proxy = tamper["spec"]["initContainers"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|c| c["name"] == "remora-proxy")
        .unwrap();
    proxy["securityContext"]["allowPrivilegeEscalation"] = json!(false);
    match inject_pod(&tamper, "default", &cfg) {
        Outcome::Denied(why) => {
            assert!(why.contains("allowPrivilegeEscalation"), "{why}");
            assert!(
                !why.contains("image"),
                "the init image is in the spec: {why}"
            );
        }
        other => panic!("record raising beyond the spec not denied: {other:?}"),
    }
    // A record that adds a capability the containers do not have is refused too.
    let mut more = once.clone();
    let mut rec = record(&once);
    rec["proxy"][0]["securityContext"]["capabilities"] = json!({"add": ["NET_ADMIN"]});
    more["metadata"]["annotations"][OVERRIDES] = json!(rec.to_string());
    match inject_pod(&more, "default", &cfg) {
        Outcome::Denied(why) => assert!(why.contains("capabilities.add"), "{why}"),
        other => panic!("added capability not denied: {other:?}"),
    }
    bare["metadata"]["annotations"] = json!({});
    assert!(matches!(
        inject_pod(&bare, "default", &cfg),
        Outcome::Injected { .. }
    ));
}

#[test]
fn injected_containers_get_the_runtime_default_seccomp_profile_unless_the_pod_chooses() {
    let cfg = Config::default();
    let base = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
        "spec": {"containers": [{"name": "app", "image": "app"}]}});
    let find = |p: &Value, n: &str| -> Value {
        p["spec"]["initContainers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == n)
            .cloned()
            .unwrap()
    };
    let out = injected(&base);
    for n in ["remora-proxy", "remora-init"] {
        assert_eq!(
            find(&out, n)["securityContext"]["seccompProfile"],
            json!({"type": "RuntimeDefault"}),
            "{n}"
        );
    }
    // A pod-level profile applies to every container, ours included: not overridden.
    let mut own = base.clone();
    own["spec"]["securityContext"] =
        json!({"seccompProfile": {"type": "Localhost", "localhostProfile": "p.json"}});
    let out = injected(&own);
    for n in ["remora-proxy", "remora-init"] {
        assert!(
            find(&out, n)["securityContext"]
                .get("seccompProfile")
                .is_none(),
            "{n}"
        );
    }
    reinjection_is_noop(&out, "default", &cfg, &Selection::legacy()).unwrap();
    // The pod's own proxy container may choose one (Istio's override mechanism).
    let mut over = base.clone();
    over["spec"]["containers"].as_array_mut().unwrap().push(json!({"name": "istio-proxy",
        "securityContext": {"seccompProfile": {"type": "Localhost", "localhostProfile": "proxy.json"}}}));
    let out = injected(&over);
    assert_eq!(
        find(&out, "remora-proxy")["securityContext"]["seccompProfile"],
        json!({"type": "Localhost", "localhostProfile": "proxy.json"})
    );
    assert_eq!(
        find(&out, "remora-init")["securityContext"]["seccompProfile"],
        json!({"type": "RuntimeDefault"})
    );
    reinjection_is_noop(&out, "default", &cfg, &Selection::legacy()).unwrap();
}
