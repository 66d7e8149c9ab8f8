//! Contract tests of the `remora` user CLI: the real binary (`target/<profile>/remora`, built by
//! `cargo build -p remora-cli` or `scripts/test`) run with `--server` against
//! the recorded Kubernetes API (`remora_e2e::apiserver::RecordedApi`), fixtures in
//! `tests/fixtures/kube-api/cli/`.

use std::path::PathBuf;
use std::time::Duration;

use remora_e2e::apiserver::{PodPort, RecordedApi, Reply};
use serde_json::{json, Value};

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

fn fixture(name: &str) -> PathBuf {
    workspace().join("tests/fixtures/kube-api/cli").join(name)
}

fn remora_bin() -> PathBuf {
    remora_e2e::clitest::remora_bin().unwrap_or_else(|e| panic!("{e}"))
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn all(&self) -> String {
        format!(
            "exit {}\n--- stdout\n{}--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
    /// The stdout line that starts with `prefix` (after trimming).
    fn line(&self, prefix: &str) -> &str {
        self.stdout
            .lines()
            .map(str::trim)
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no line starting with {prefix:?}\n{}", self.all()))
    }
}

async fn remora(api: &RecordedApi, args: &[&str]) -> Run {
    let url = api.url();
    let mut full = vec!["--server", url.as_str()];
    full.extend_from_slice(args);
    remora_args(&full).await
}

/// Runs `remora ARGS` (no `--server` added).
async fn remora_args(args: &[&str]) -> Run {
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new(remora_bin())
            .args(args)
            .env_remove("KUBECONFIG")
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("remora finished within 60 s")
    .expect("remora runs");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

async fn api_with(file: &str) -> RecordedApi {
    let api = RecordedApi::start().await.expect("recorded API starts");
    api.load(&fixture(file)).expect("fixture loads");
    api
}

fn unmatched(api: &RecordedApi) -> Vec<String> {
    api.requests()
        .into_iter()
        .filter(|s| !s.matched)
        .map(|s| format!("{} {}", s.method, s.path_and_query))
        .collect()
}

// ---------------------------------------------------------------- check-inject

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_inject_injected_pod_and_the_pod_that_predates_the_label() {
    let api = api_with("check-inject.json").await;
    let r = remora(
        &api,
        &["check-inject", "-n", "shop", "pod", "web-6d8f7c9b5-x2k9q"],
    )
    .await;
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(
        r.line("Pod/web-6d8f7c9b5-x2k9q in namespace shop:")
            .contains(": INJECTED ("),
        "{}",
        r.all()
    );
    let wh =
        r.line("webhook remora-sidecar-injector/namespace.sidecar-injector.remora.dev [remora]:");
    assert!(wh.contains(": INJECTED: called"), "{wh}");
    assert!(wh.contains("istio-injection In [enabled]"), "{wh}");
    assert!(wh.contains("default policy (enabled)"), "{wh}");
    // Judged as its controller creates it again, not as an object being re-injected.
    assert!(!wh.contains("re-injecting"), "{wh}");
    // The Secrets webhook is not about pods: not listed.
    assert!(!r.stdout.contains("secrets-defaulter"), "{}", r.all());
    assert!(
        r.line("pod web-6d8f7c9b5-x2k9q:")
            .contains("running pod is injected"),
        "{}",
        r.all()
    );
    assert!(
        r.stdout
            .contains("note: injector config from ConfigMap remora-system/remora-injector"),
        "{}",
        r.all()
    );

    let r = remora(
        &api,
        &["check-inject", "-n", "shop", "pod/web-6d8f7c9b5-m4tzr"],
    )
    .await;
    assert_eq!(r.code, 0, "{}", r.all());
    let note = r.line("pod web-6d8f7c9b5-m4tzr:");
    assert!(note.contains("has no remora-proxy container"), "{note}");
    assert!(note.contains("2026-11-19T16:40:00Z"), "{note}");
    assert!(
        note.contains("kubectl -n shop rollout restart deployment/web"),
        "{note}"
    );
    assert!(unmatched(&api).is_empty(), "{:?}", unmatched(&api));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_inject_deployment_lists_its_pods_and_json_output() {
    let api = api_with("check-inject.json").await;
    let r = remora(
        &api,
        &["check-inject", "-n", "shop", "deploy/web", "-o", "json"],
    )
    .await;
    assert_eq!(r.code, 0, "{}", r.all());
    let v: Value = serde_json::from_str(&r.stdout).expect("JSON output");
    let c = &v[0];
    assert_eq!(c["object"], "Deployment/web");
    assert_eq!(c["verdict"], "INJECTED");
    // The default revision's four entries (Istio's layout); only the namespace entry is called.
    assert_eq!(c["webhooks"].as_array().map(Vec::len), Some(4), "{v:#}");
    assert!(
        c["webhooks"]
            .as_array()
            .unwrap()
            .iter()
            .all(|w| w["remora"] == true && w["revision"] == "default"),
        "{v:#}"
    );
    let called: Vec<&Value> = c["webhooks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|w| w["verdict"] != "NOT_CALLED")
        .collect();
    assert_eq!(called.len(), 1, "{v:#}");
    assert_eq!(
        called[0]["webhook"],
        "namespace.sidecar-injector.remora.dev"
    );
    let running: Vec<(String, bool)> = c["running"]
        .as_array()
        .expect("running pods")
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap_or("").to_string(),
                p["injected"].as_bool().unwrap_or(false),
            )
        })
        .collect();
    assert_eq!(
        running,
        [
            ("web-6d8f7c9b5-x2k9q".to_string(), true),
            ("web-6d8f7c9b5-m4tzr".to_string(), false)
        ]
    );
    // The pods were listed by the Deployment's selector.
    assert!(
        api.requests()
            .iter()
            .any(|s| s.path_and_query == "/api/v1/namespaces/shop/pods?labelSelector=app%3Dweb"),
        "{:?}",
        api.requests()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_inject_not_injected_for_each_reason() {
    let api = api_with("check-inject.json").await;
    // (args, verdict, webhook line must contain)
    let cases: &[(&[&str], &str, &str)] = &[
        (
            &["-n", "plain", "pod", "app-1"],
            "NOT INJECTED",
            "NOT CALLED: namespaceSelector: namespace plain: no istio-injection label does not satisfy istio-injection In [enabled]",
        ),
        (
            &["-n", "shop", "deploy/batch"],
            "NOT INJECTED",
            "NOT CALLED: objectSelector: pod: sidecar.istio.io/inject=false does not satisfy sidecar.istio.io/inject NotIn [false]",
        ),
        (
            &["-n", "shop", "report-7f6c"],
            "NOT INJECTED",
            "NOT INJECTED: called",
        ),
        (
            &["-n", "shop", "pod", "node-agent-9xk2p"],
            "NOT INJECTED",
            "injector (revision default) skips: pod uses hostNetwork: true",
        ),
        (
            &["-n", "legacy", "pod", "app-2"],
            "NOT INJECTED",
            "injector (revision default) skips: namespace legacy is a system namespace, never injected",
        ),
        (
            &["-n", "shop", "pod", "ports-1"],
            "DENIED",
            "70000",
        ),
    ];
    for (args, verdict, why) in cases {
        let mut full = vec!["check-inject"];
        full.extend_from_slice(args);
        let r = remora(&api, &full).await;
        assert_eq!(r.code, 0, "{args:?}: {}", r.all());
        let head = r.stdout.lines().next().unwrap_or("");
        assert!(
            head.contains(&format!(": {verdict} (")),
            "{args:?}: want {verdict}\n{}",
            r.all()
        );
        let wh = r.line(
            "webhook remora-sidecar-injector/namespace.sidecar-injector.remora.dev [remora]:",
        );
        assert!(wh.contains(why), "{args:?}: want {why:?}\n{}", r.all());
    }
    // The annotation case names the annotation.
    // No entry called at all: said once in the summary.
    let r = remora(&api, &["check-inject", "-n", "plain", "pod", "app-1"]).await;
    assert!(
        r.stdout
            .starts_with("Pod/app-1 in namespace plain: NOT INJECTED (none of remora's 4 webhook entries is called for it)"),
        "{}",
        r.all()
    );
    let r = remora(&api, &["check-inject", "-n", "shop", "report-7f6c"]).await;
    assert!(
        r.stdout
            .contains("pod annotation sidecar.istio.io/inject=\"false\""),
        "{}",
        r.all()
    );
    // The opted-out Deployment's running pod is not injected, as expected.
    let r = remora(&api, &["check-inject", "-n", "shop", "deployment/batch"]).await;
    assert!(
        r.line("pod batch-5c7d9f8b6-q8w2e:")
            .contains("not injected, as expected"),
        "{}",
        r.all()
    );
    assert!(unmatched(&api).is_empty(), "{:?}", unmatched(&api));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_inject_by_label_selector_and_other_webhooks() {
    let api = api_with("check-inject.json").await;
    let r = remora(&api, &["check-inject", "-n", "shop", "-l", "app=web"]).await;
    assert_eq!(r.code, 0, "{}", r.all());
    let heads: Vec<&str> = r.stdout.lines().filter(|l| l.starts_with("Pod/")).collect();
    assert_eq!(heads.len(), 2, "{}", r.all());

    // Istio's injector installed too: remora shows it as called, and says it is not remora's.
    let istio = json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfigurationList",
        "metadata": {"resourceVersion": "4000"},
        "items": [{
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "MutatingWebhookConfiguration",
            "metadata": {"name": "istio-sidecar-injector", "resourceVersion": "700"},
            "webhooks": [{
                "name": "namespace.sidecar-injector.istio.io",
                "admissionReviewVersions": ["v1"], "sideEffects": "None", "failurePolicy": "Fail",
                "clientConfig": {"service": {"name": "istiod", "namespace": "istio-system", "path": "/inject", "port": 443}, "caBundle": "Zm9v"},
                "rules": [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"]}],
                "namespaceSelector": {"matchExpressions": [{"key": "istio-injection", "operator": "In", "values": ["enabled"]}]},
                "objectSelector": {"matchExpressions": [{"key": "sidecar.istio.io/inject", "operator": "NotIn", "values": ["false"]}]}
            }]
        }]
    });
    let api2 = api_with("check-inject.json").await;
    // A later reply for the same route replaces the recorded list after its first use; serve it
    // first by asking once.
    api2.on(
        "GET",
        "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations",
        Reply::json(200, istio),
    );
    let first = remora(
        &api2,
        &["check-inject", "-n", "shop", "web-6d8f7c9b5-x2k9q"],
    )
    .await;
    assert!(first.stdout.contains("[remora]"), "{}", first.all());
    let r = remora(
        &api2,
        &["check-inject", "-n", "shop", "web-6d8f7c9b5-x2k9q"],
    )
    .await;
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(
        r.stdout
            .lines()
            .next()
            .unwrap_or("")
            .contains(": NOT INJECTED ("),
        "{}",
        r.all()
    );
    assert!(
        r.stdout.contains(
            "no MutatingWebhookConfiguration calls remora's service remora-system/remora-webhook"
        ),
        "{}",
        r.all()
    );
    let wh = r.line("webhook istio-sidecar-injector/namespace.sidecar-injector.istio.io:");
    assert!(
        wh.contains(": CALLED: ") && wh.contains("istio-system/istiod"),
        "{wh}"
    );
    // The running pod has remora's proxy but nothing would inject it now.
    assert!(
        r.line("pod web-6d8f7c9b5-x2k9q:")
            .contains("would not get it"),
        "{}",
        r.all()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_inject_errors_are_one_clear_line() {
    let api = api_with("check-inject.json").await;
    let r = remora(&api, &["check-inject", "-n", "shop", "pod", "missing"]).await;
    assert_eq!(r.code, 2, "{}", r.all());
    assert_eq!(
        r.stderr.trim(),
        "remora: pod \"missing\" not found in namespace shop",
        "{}",
        r.all()
    );
    let r = remora(&api, &["check-inject", "-n", "nowhere", "pod", "x"]).await;
    assert_eq!(r.code, 2, "{}", r.all());
    assert!(
        r.stderr.contains("namespace \"nowhere\" not found"),
        "{}",
        r.all()
    );
    let r = remora(&api, &["check-inject", "-n", "shop", "svc/web"]).await;
    assert_eq!(r.code, 2, "{}", r.all());
    assert!(
        r.stderr.contains("target: invalid value \"svc/web\""),
        "{}",
        r.all()
    );
    let r = remora(&api, &["check-inject", "-n", "shop"]).await;
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("target: missing"), "{}", r.all());
    // An API server that is not there.
    let gone = remora_e2e::ports::free_port();
    let out = tokio::process::Command::new(remora_bin())
        .args([
            "--server",
            &format!("http://127.0.0.1:{gone}"),
            "check-inject",
            "-n",
            "shop",
            "x",
        ])
        .kill_on_drop(true)
        .output()
        .await
        .expect("runs");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with("remora: ") && err.trim().lines().count() == 1,
        "{err}"
    );
}

/// Two revisions and Istio's own injector in one cluster (fixture
/// `check-inject-revisions.json`): each revision's entries are evaluated with that revision's
/// injector config, and a pod Istio's injector (called first) injects is left alone by remora.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_inject_with_revisions_next_to_istio() {
    let api = api_with("check-inject-revisions.json").await;
    // canary is labelled istio.io/rev=b: revision b's entry, b's injector and config.
    let r = remora(&api, &["check-inject", "-n", "canary", "pod", "web-2"]).await;
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(
        r.stdout.starts_with("Pod/web-2 in namespace canary: INJECTED (remora-sidecar-injector-b/rev.namespace.sidecar-injector.remora.dev injects it)"),
        "{}",
        r.all()
    );
    let wh = r.line(
        "webhook remora-sidecar-injector-b/rev.namespace.sidecar-injector.remora.dev [remora]:",
    );
    assert!(
        wh.contains("istio.io/rev In [b]") && wh.contains("injector (revision b):"),
        "{wh}"
    );
    assert!(
        r.stdout
            .contains("note: injector config from ConfigMap remora-system/remora-injector-b"),
        "{}",
        r.all()
    );
    // Istio's entries for its default revision are not called for istio.io/rev=b.
    let istio = r.line("webhook istio-sidecar-injector/rev.namespace.sidecar-injector.istio.io:");
    assert!(istio.contains(": NOT CALLED: namespaceSelector: namespace canary: istio.io/rev=b does not satisfy istio.io/rev In [default]"), "{istio}");
    assert!(
        r.line("pod web-2:").contains("running pod is injected"),
        "{}",
        r.all()
    );

    // shop is labelled istio-injection=enabled, which Istio's injector selects too and is called
    // first: remora's default revision leaves the pod it injects alone.
    let r = remora(&api, &["check-inject", "-n", "shop", "pod", "web-1"]).await;
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(
        r.stdout.starts_with("Pod/web-1 in namespace shop: NOT INJECTED (remora-sidecar-injector/namespace.sidecar-injector.remora.dev is called and does not inject it)"),
        "{}",
        r.all()
    );
    let lines: Vec<&str> = r
        .stdout
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("webhook "))
        .collect();
    assert!(
        lines[0].starts_with("webhook istio-sidecar-injector/"),
        "in the API server's order: {lines:?}"
    );
    let wh =
        r.line("webhook remora-sidecar-injector/namespace.sidecar-injector.remora.dev [remora]:");
    assert!(
        wh.contains(": NOT INJECTED: called")
            && wh.contains("but Istio's webhook istio-sidecar-injector/namespace.sidecar-injector.istio.io is called first")
            && wh.contains("namespace shop is not moved to remora"),
        "{wh}"
    );
    assert!(
        r.line("pod web-1:").contains("not injected, as expected"),
        "{}",
        r.all()
    );

    // plain is unlabelled; the pod opts in with sidecar.istio.io/inject=true: Istio's object
    // entry and remora's default revision's object entry are both called, Istio's first.
    let r = remora(
        &api,
        &[
            "check-inject",
            "-n",
            "plain",
            "pod",
            "opted-1",
            "-o",
            "json",
        ],
    )
    .await;
    assert_eq!(r.code, 0, "{}", r.all());
    let v: Value = serde_json::from_str(&r.stdout).expect("JSON output");
    let hooks = v[0]["webhooks"].as_array().expect("webhooks");
    let called: Vec<(String, String)> = hooks
        .iter()
        .filter(|w| w["verdict"] != "NOT_CALLED")
        .map(|w| {
            (
                w["webhook"].as_str().unwrap_or("").to_string(),
                w["verdict"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    assert_eq!(
        called,
        [
            (
                "object.sidecar-injector.istio.io".to_string(),
                "CALLED".to_string()
            ),
            (
                "object.sidecar-injector.remora.dev".to_string(),
                "NOT_INJECTED".to_string()
            )
        ],
        "{v:#}"
    );
    assert!(unmatched(&api).is_empty(), "{:?}", unmatched(&api));
}

// ---------------------------------------------------------------- proxy-status

/// The hash a proxy computes after the kubelet writes `cm`'s data into its rules directory:
/// the proxy's own reader over a real directory.
fn proxy_hash_of(cm: &Value) -> String {
    let dir = tempfile::tempdir().expect("tempdir");
    for (k, v) in cm["data"].as_object().expect("data") {
        std::fs::write(dir.path().join(k), v.as_str().expect("string")).expect("write");
    }
    remora_model::rules::load::read_inputs(dir.path())
        .expect("read")
        .hash
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_status_synced_stale_unreachable() {
    let fx: Value = serde_json::from_str(
        &std::fs::read_to_string(fixture("proxy-status.json")).expect("fixture"),
    )
    .expect("json");
    // The fixture's "current" config_dump hash is what a real proxy computes for the ConfigMap.
    let cm = fx["exchanges"]
        .as_array()
        .expect("exchanges")
        .iter()
        .find(|x| x["path"] == "/api/v1/namespaces/shop/configmaps/remora-mesh-rules")
        .expect("rules ConfigMap")["body"]
        .clone();
    assert_eq!(
        fx["current_hash"].as_str(),
        Some(proxy_hash_of(&cm).as_str())
    );

    let api = api_with("proxy-status.json").await;
    let r = remora(&api, &["proxy-status", "-n", "shop"]).await;
    assert_eq!(r.code, 0, "{}", r.all());
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert_eq!(
        lines[0].split_whitespace().collect::<Vec<_>>(),
        [
            "NAME",
            "NAMESPACE",
            "VERSION",
            "GENERATION",
            "SOURCE",
            "PROXY",
            "HASH",
            "CONFIGMAP",
            "HASH",
            "STATUS",
            "CERT",
            "DISCOVERY"
        ],
        "{}",
        r.all()
    );
    let cur = &fx["current_hash"].as_str().expect("hash")[..12];
    let old = &fx["stale_hash"].as_str().expect("hash")[..12];
    let row = |name: &str| -> Vec<String> {
        r.line(name)
            .split_whitespace()
            .map(str::to_string)
            .collect()
    };
    assert_eq!(
        row("api-0"),
        ["api-0", "shop", "0.1.0", "1", "files", old, cur, "STALE", "-", "-"]
    );
    assert_eq!(
        row("cart-58c9d-7hq2w"),
        [
            "cart-58c9d-7hq2w",
            "shop",
            "-",
            "-",
            "-",
            "-",
            cur,
            "UNREACHABLE",
            "-",
            "-"
        ]
    );
    assert_eq!(
        row("queue-0"),
        [
            "queue-0",
            "shop",
            "-",
            "-",
            "-",
            "-",
            cur,
            "UNREACHABLE",
            "-",
            "-"
        ]
    );
    assert_eq!(
        row("web-6d8f7c9b5-x2k9q"),
        [
            "web-6d8f7c9b5-x2k9q",
            "shop",
            "0.1.0",
            "2",
            "files",
            cur,
            cur,
            "SYNCED",
            "-",
            "-"
        ]
    );
    assert!(
        !r.stdout.contains("batch"),
        "unmeshed pods are not listed\n{}",
        r.all()
    );
    assert!(
        r.line("shop/cart-58c9d-7hq2w: UNREACHABLE:")
            .contains("connection refused"),
        "{}",
        r.all()
    );
    assert!(
        r.line("shop/queue-0: UNREACHABLE:").contains("Pending"),
        "{}",
        r.all()
    );
    assert!(
        r.line("shop/api-0: STALE:").contains("generation 1"),
        "{}",
        r.all()
    );
    // The Pending pod's proxy was not asked; the others were, through a port-forward to their
    // admin port (the pods/portforward subresource).
    let asked: Vec<String> = api
        .requests()
        .into_iter()
        .filter(|s| s.path().ends_with("/portforward"))
        .map(|s| s.path_and_query)
        .collect();
    assert_eq!(asked.len(), 3, "{asked:?}");
    assert!(
        asked.iter().all(|p| p.ends_with("?&ports=15020")),
        "{asked:?}"
    );
    assert!(unmatched(&api).is_empty(), "{:?}", unmatched(&api));

    let r = remora(&api, &["proxy-status", "-A", "-o", "json"]).await;
    assert_eq!(r.code, 0, "{}", r.all());
    let v: Value = serde_json::from_str(&r.stdout).expect("JSON");
    let statuses: Vec<(&str, &str)> = v
        .as_array()
        .expect("rows")
        .iter()
        .map(|x| {
            (
                x["name"].as_str().unwrap_or(""),
                x["status"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(
        statuses,
        [
            ("api-0", "STALE"),
            ("cart-58c9d-7hq2w", "UNREACHABLE"),
            ("queue-0", "UNREACHABLE"),
            ("web-6d8f7c9b5-x2k9q", "SYNCED")
        ]
    );
    assert_eq!(v[3]["proxy_hash"], fx["current_hash"]);
    assert_eq!(v[3]["config_map"], "shop/remora-mesh-rules");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_status_shows_the_api_source_and_version_skew() {
    let api = api_with("proxy-status.json").await;
    let fx: Value = serde_json::from_str(
        &std::fs::read_to_string(fixture("proxy-status.json")).expect("fixture"),
    )
    .expect("json");
    let h = fx["current_hash"].as_str().expect("hash");
    // A proxy that reads its rules through the API reports config_source.source = api; this one
    // runs a newer version than the others (mid-upgrade).
    api.on_port_forward(
        "shop",
        "api-0",
        15020,
        PodPort::Http(
            [(
                "/config_dump".to_string(),
                (
                    200,
                    json!({
                        "version": "0.2.0", "generation": 5, "hash": h,
                        "source": "api:configmap/shop/remora-mesh-rules resourceVersion 2890",
                        "config_source": {"source": "api", "generation": 5, "hash": h, "configmap": "shop/remora-mesh-rules"}
                    }),
                ),
            )]
            .into(),
        ),
    );
    // The recorded reply is served first, then ours.
    let _ = remora(&api, &["proxy-status", "-n", "shop"]).await;
    let r = remora(&api, &["proxy-status", "-n", "shop"]).await;
    let row: Vec<&str> = r.line("api-0").split_whitespace().collect();
    assert_eq!(
        row,
        [
            "api-0",
            "shop",
            "0.2.0",
            "5",
            "api",
            &h[..12],
            &h[..12],
            "SYNCED",
            "-",
            "-"
        ],
        "{}",
        r.all()
    );
}

// ---------------------------------------------------------------- proxy-config

const REVIEWS_POD: &str = "reviews-v1-5d8f9c7b4-k2x8p";

/// The port-forwards asked for (pods/portforward), without the query.
fn proxied(api: &RecordedApi) -> Vec<String> {
    api.requests()
        .into_iter()
        .filter(|s| s.path().ends_with("/portforward"))
        .map(|s| s.path().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_config_reads_the_admin_port_through_a_port_forward() {
    let api = api_with("proxy-config.json").await;
    // POD.NAMESPACE, as istioctl takes it.
    let r = remora(
        &api,
        &["proxy-config", "routes", &format!("{REVIEWS_POD}.bookinfo")],
    )
    .await;
    assert_eq!(r.code, 0, "{}", r.all());
    let jason: Vec<&str> = r
        .line("bookinfo/reviews")
        .split("   ")
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .collect();
    assert_eq!(
        jason,
        [
            "bookinfo/reviews",
            "reviews.bookinfo.svc.cluster.local",
            "spec.http[0]",
            "header end-user=jason",
            "reviews.bookinfo.svc.cluster.local|v2",
            "-"
        ],
        "{}",
        r.all()
    );
    assert_eq!(
        proxied(&api),
        [format!(
            "/api/v1/namespaces/bookinfo/pods/{REVIEWS_POD}/portforward"
        )]
    );
    assert!(
        api.requests()
            .iter()
            .any(|s| s.path_and_query.ends_with("/portforward?&ports=15020")),
        "{:?}",
        api.requests()
    );
    assert!(unmatched(&api).is_empty(), "{:?}", unmatched(&api));

    // -n, filters and JSON: the reviews subsets and their DestinationRule policy.
    let r = remora(
        &api,
        &[
            "-n",
            "bookinfo",
            "proxy-config",
            "clusters",
            REVIEWS_POD,
            "--fqdn",
            "reviews.bookinfo",
            "--subset",
            "v1",
            "-o",
            "json",
        ],
    )
    .await;
    assert_eq!(r.code, 0, "{}", r.all());
    let v: Value = serde_json::from_str(&r.stdout).expect("JSON");
    assert_eq!(v["proxy"]["target"], format!("bookinfo/{REVIEWS_POD}"));
    assert_eq!(v["proxy"]["generation"], 1);
    let c = v["clusters"].as_array().expect("clusters");
    assert_eq!(c.len(), 1, "{}", r.all());
    assert_eq!(c[0]["host"], "reviews.bookinfo.svc.cluster.local");
    assert_eq!(c[0]["destination_rule"], "bookinfo/reviews");
    assert_eq!(c[0]["load_balancer"], "CONSISTENT_HASH header end-user");
    assert_eq!(
        c[0]["connection_pool"],
        "maxConnections 100, http1MaxPending 10, maxRequestsPerConnection 1"
    );
    assert!(v.get("routes").is_none(), "only the clusters view: {v}");

    // `all` shows every view under a heading; --admin-port changes the forwarded port.
    api.on_port_forward(
        "bookinfo",
        REVIEWS_POD,
        15999,
        PodPort::Refused("error forwarding port 15999 to pod 3f1c2a9e, uid : failed to connect to localhost:15999 inside namespace \"3f1c2a9e\", IPv4: dial tcp4 127.0.0.1:15999: connect: connection refused".into()),
    );
    let r = remora(
        &api,
        &["proxy-config", "all", REVIEWS_POD, "-n", "bookinfo"],
    )
    .await;
    assert_eq!(r.code, 0, "{}", r.all());
    for heading in ["LISTENERS", "ROUTES", "CLUSTERS", "ENDPOINTS"] {
        assert!(
            r.stdout.lines().any(|l| l == heading),
            "{heading}: {}",
            r.all()
        );
    }
    let r = remora(
        &api,
        &[
            "proxy-config",
            "listeners",
            REVIEWS_POD,
            "-n",
            "bookinfo",
            "--admin-port",
            "15999",
        ],
    )
    .await;
    assert_eq!(r.code, 2, "{}", r.all());
    assert!(
        r.stderr.contains("through a port-forward to its admin port 15999: the kubelet could not forward port 15999: error forwarding port 15999"),
        "{}",
        r.all()
    );

    // deploy/NAME: the first running meshed pod of the Deployment (the Pending one is skipped).
    let r = remora(
        &api,
        &[
            "proxy-config",
            "clusters",
            "deploy/reviews-v1.bookinfo",
            "-o",
            "json",
        ],
    )
    .await;
    assert_eq!(r.code, 0, "{}", r.all());
    let v: Value = serde_json::from_str(&r.stdout).expect("JSON");
    assert_eq!(v["proxy"]["target"], format!("bookinfo/{REVIEWS_POD}"));
    assert_eq!(
        r.stderr.trim(),
        format!("remora: Deployment bookinfo/reviews-v1: showing pod {REVIEWS_POD} (the first of 1 running meshed pods)")
    );
    assert!(
        proxied(&api).iter().all(|p| !p.contains("b7w4t")),
        "{:?}",
        proxied(&api)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_config_errors_are_one_clear_line() {
    let api = api_with("proxy-config.json").await;
    let cases: &[(&[&str], &str)] = &[
        (
            &["proxy-config", "routes", "productpage-v1-gone", "-n", "bookinfo"],
            "remora: pod \"productpage-v1-gone\" not found in namespace bookinfo",
        ),
        (
            &["proxy-config", "routes", "mysqldb-v1-0.bookinfo"],
            "remora: pod bookinfo/mysqldb-v1-0 is not meshed: it has no remora-proxy container (inject it: label namespace bookinfo istio-injection=enabled and re-create the pod; remora check-inject pod mysqldb-v1-0 -n bookinfo says why it was not injected)",
        ),
        (
            &["proxy-config", "clusters", "details-v1-7f8e9d6c5-p2r8s.bookinfo"],
            "remora: pod bookinfo/details-v1-7f8e9d6c5-p2r8s is Pending, not Running",
        ),
        (
            &["proxy-config", "endpoints", "ratings-v1-6c9b7d8f5-m7n4q.bookinfo"],
            "remora: proxy of pod bookinfo/ratings-v1-6c9b7d8f5-m7n4q unreachable: cannot read its /config_dump through a port-forward to its admin port 15020: the kubelet could not forward port 15020: error forwarding port 15020 to pod ",
        ),
        (
            &["proxy-config", "routes", "sts/mysqldb-v1", "-n", "bookinfo"],
            "remora: StatefulSet bookinfo/mysqldb-v1 has no running meshed pod (1 pods match its selector app=mysqldb,version=v1;",
        ),
        (
            &["proxy-config", "routes", "deploy/ratings-v2", "-n", "bookinfo"],
            "remora: Deployment \"ratings-v2\" not found in namespace bookinfo",
        ),
        (
            &["proxy-config", "routes", "svc/reviews", "-n", "bookinfo"],
            "remora: pod: invalid value \"svc/reviews\": KIND/NAME with KIND one of",
        ),
        (
            &["proxy-config", "routes", REVIEWS_POD, "-n", "bookinfo", "--subset", "v1"],
            "remora: --subset: not a filter of the routes view (it applies to clusters and endpoints)",
        ),
        (
            &["proxy-config", "clusters", REVIEWS_POD, "--name", "reviews"],
            "remora: --name: not a filter of the clusters view",
        ),
        (
            &["proxy-config", "routes", "--admin", "http://127.0.0.1:15020"],
            "remora: --admin: invalid value \"http://127.0.0.1:15020\": expected HOST:PORT",
        ),
        (
            &["proxy-config", "routes", "--file", "/nonexistent/config_dump.json"],
            "remora: --file /nonexistent/config_dump.json: cannot read:",
        ),
    ];
    for (args, want) in cases {
        let before = api.requests().len();
        let r = remora(&api, args).await;
        if want.starts_with("remora: --") {
            // Flag errors come before any request.
            assert_eq!(api.requests().len(), before, "{args:?} asked the API");
        }
        assert_eq!(r.code, 2, "{args:?}: {}", r.all());
        assert!(r.stdout.is_empty(), "{args:?}: {}", r.all());
        assert_eq!(r.stderr.lines().count(), 1, "{args:?}: {}", r.all());
        assert!(r.stderr.starts_with(want), "{args:?}: {}", r.all());
    }
    // Neither the unmeshed nor the Pending pod's proxy was asked.
    let asked = proxied(&api);
    assert!(
        asked
            .iter()
            .all(|p| !p.contains("mysqldb") && !p.contains("details")),
        "{asked:?}"
    );
    // Bad flag values are refused by the parser before anything is asked (clap's exit code 2).
    for args in [
        &["proxy-config", "routes", REVIEWS_POD, "--port", "0"][..],
        &["proxy-config", "routes", REVIEWS_POD, "--port", "http"],
        &["proxy-config", "route", REVIEWS_POD],
        &["proxy-config", "routes"],
        &[
            "proxy-config",
            "routes",
            REVIEWS_POD,
            "--admin",
            "127.0.0.1:15020",
        ],
        &["proxy-config", "routes", REVIEWS_POD, "-o", "xml"],
    ] {
        let before = api.requests().len();
        let r = remora(&api, args).await;
        assert_eq!(r.code, 2, "{args:?}: {}", r.all());
        assert!(r.stderr.starts_with("error: "), "{args:?}: {}", r.all());
        assert_eq!(api.requests().len(), before, "{args:?} asked the API");
    }
}

// ---------------------------------------------------------------- analyze

/// manifests/rules-example.yaml as the API server returns it.
fn rules_example() -> Value {
    let text = std::fs::read_to_string(workspace().join("manifests/rules-example.yaml"))
        .expect("manifests/rules-example.yaml");
    let mut v: Value = serde_yaml_ng::from_str(&text).expect("YAML");
    v["metadata"]["uid"] = json!("6f1c3a52-0d7e-4c1b-9a55-3b8f0e2d4c11");
    v["metadata"]["resourceVersion"] = json!("812");
    v["metadata"]["creationTimestamp"] = json!("2026-11-20T08:00:00Z");
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn analyze_clean_the_shipped_example() {
    let api = api_with("analyze.json").await;
    api.on(
        "GET",
        "/api/v1/namespaces/bookinfo/configmaps/remora-mesh-rules",
        Reply::json(200, rules_example()),
    );
    let r = remora(&api, &["analyze", "-n", "bookinfo"]).await;
    assert_eq!(r.code, 0, "{}", r.all());
    assert_eq!(
        r.stdout,
        "analyzed 1 ConfigMap: 0 errors, 0 warnings\n",
        "{}",
        r.all()
    );
    assert!(unmatched(&api).is_empty(), "{:?}", unmatched(&api));
    // A namespace without rules.
    let r = remora(&api, &["analyze", "-n", "empty"]).await;
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(
        r.stdout.starts_with("no rules ConfigMaps found"),
        "{}",
        r.all()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn analyze_error_and_missing_host_warning() {
    let api = api_with("analyze.json").await;
    let r = remora(&api, &["analyze", "-n", "shop"]).await;
    assert_eq!(r.code, 1, "errors exit 1\n{}", r.all());
    assert!(
        r.stdout.contains("error: ConfigMap shop/canary-rules: canary.yaml doc 1: spec.http[0].route: weights sum to 110, not 100"),
        "{}",
        r.all()
    );
    assert!(
        r.stdout.contains("warning: ConfigMap shop/remora-mesh-rules: checkout.yaml doc 1: spec.http[0].route[0].destination.host: host payments.shop.svc.cluster.local: no Service payments in namespace shop and no ServiceEntry for it (IST0101 ReferencedResourceNotFound)"),
        "{}",
        r.all()
    );
    assert!(
        r.stdout
            .ends_with("analyzed 2 ConfigMaps: 1 error, 1 warning\n"),
        "{}",
        r.all()
    );
    let r = remora(&api, &["analyze", "-n", "shop", "-o", "json"]).await;
    assert_eq!(r.code, 1);
    let v: Value = serde_json::from_str(&r.stdout).expect("JSON");
    assert_eq!(
        v["config_maps"],
        json!(["shop/remora-mesh-rules", "shop/canary-rules"])
    );
    assert_eq!(v["messages"].as_array().map(Vec::len), Some(2), "{v:#}");
    assert!(unmatched(&api).is_empty(), "{:?}", unmatched(&api));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn analyze_all_namespaces() {
    let api = api_with("analyze.json").await;
    let r = remora(&api, &["analyze", "-A"]).await;
    assert_eq!(r.code, 1, "{}", r.all());
    assert!(
        r.stdout
            .ends_with("analyzed 2 ConfigMaps: 1 error, 1 warning\n"),
        "{}",
        r.all()
    );
    let lists: Vec<String> = api
        .requests()
        .into_iter()
        .map(|s| s.path_and_query)
        .filter(|p| p.starts_with("/api/v1/configmaps?"))
        .collect();
    assert_eq!(
        lists,
        [
            "/api/v1/configmaps?fieldSelector=metadata.name%3Dremora-mesh-rules",
            "/api/v1/configmaps?labelSelector=remora.dev/rules%3Dtrue"
        ]
    );
    assert!(unmatched(&api).is_empty(), "{:?}", unmatched(&api));
}

/// With Istio's CRDs installed: an object the rules controller leaves out is an error naming
/// it, and a user's own rules ConfigMap that keeps visible objects from the proxies a warning.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn analyze_istio_objects_for_the_rules_controller() {
    let api = api_with("analyze-istio-objects.json").await;
    let r = remora(&api, &["analyze", "-n", "shop"]).await;
    assert_eq!(r.code, 1, "errors exit 1\n{}", r.all());
    assert!(
        r.stdout.contains("error: VirtualService shop/cart-timeout: left out of every remora-mesh-rules ConfigMap by the rules controller: spec.http[0].timeout: "),
        "{}",
        r.all()
    );
    assert!(
        r.stdout.contains("warning: ConfigMap shop/remora-mesh-rules: the user's own (no label app.kubernetes.io/managed-by=remora-rules-controller): the rules controller does not overwrite it, so the Istio objects visible in shop (1: DestinationRule shop/cart) do not reach its proxies"),
        "{}",
        r.all()
    );
    assert!(
        r.stdout
            .ends_with("analyzed 2 ConfigMaps: 2 errors, 2 warnings\n"),
        "{}",
        r.all()
    );
    assert!(unmatched(&api).is_empty(), "{:?}", unmatched(&api));
}

/// Gateways: a VirtualService bound to a missing Gateway (error) or to one none of whose hosts
/// it matches (warning), a Gateway whose selector matches no pod, a `credentialName` with no
/// Secret where the gateway pods run, and the Kubernetes Gateway API's objects (not applied).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn analyze_gateways() {
    let api = api_with("analyze-gateways.json").await;
    let r = remora(&api, &["analyze", "-A"]).await;
    assert_eq!(r.code, 1, "errors exit 1\n{}", r.all());
    for line in [
        "error: VirtualService bookinfo/bookinfo-typo: spec.gateways[0]: bound to Gateway istio-system/bookinfo-gateway, which does not exist: no gateway routes by this VirtualService there\n",
        "warning: VirtualService bookinfo/bookinfo-edge: spec.hosts: none of the hosts reviews.example.org matches a host of Gateway bookinfo/bookinfo-https (its server hosts: bookinfo.example.com): the gateway never routes by this VirtualService\n",
        "error: Gateway bookinfo/bookinfo-https: spec.servers[0].tls.credentialName: no Secret \"bookinfo-cert\" in namespace istio-system (where the gateway pods that serve this Gateway run): this server stays down until it exists\n",
        "warning: Gateway shop/shop-gateway: spec.selector: no pod has the labels istio=shop-gateway: no gateway serves this Gateway\n",
        "warning: Gateway shop/shop-edge: Kubernetes Gateway API (gateway.networking.k8s.io) objects are not applied by remora yet: no remora gateway or sidecar routes by this Gateway; use Istio's Gateway and VirtualService\n",
        "warning: HTTPRoute shop/storefront: Kubernetes Gateway API (gateway.networking.k8s.io) objects are not applied by remora yet",
    ] {
        assert!(r.stdout.contains(line), "missing {line:?}\n{}", r.all());
    }
    // The VirtualService bound to an existing Gateway through a matching host: nothing said.
    assert!(
        !r.stdout.contains("VirtualService bookinfo/bookinfo:"),
        "{}",
        r.all()
    );
    // The Secret was looked up by name only where the gateway pod runs.
    let secrets: Vec<String> = api
        .requests()
        .into_iter()
        .map(|s| s.path_and_query)
        .filter(|p| p.contains("/secrets"))
        .collect();
    assert_eq!(
        secrets,
        ["/api/v1/namespaces/istio-system/secrets/bookinfo-cert"]
    );
    assert!(unmatched(&api).is_empty(), "{:?}", unmatched(&api));
}

/// `rules import`: the namespace's objects from the cluster as a ConfigMap to keep by hand.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_import_prints_a_users_configmap() {
    let api = api_with("analyze-istio-objects.json").await;
    let r = remora(&api, &["rules", "import", "-n", "shop"]).await;
    assert_eq!(r.code, 0, "{}", r.all());
    let cm: Value = serde_yaml_ng::from_str(&r.stdout).expect("YAML");
    assert_eq!(cm["metadata"]["name"], "remora-mesh-rules");
    assert!(cm["metadata"]["labels"]
        .get("app.kubernetes.io/managed-by")
        .is_none());
    let keys: Vec<&String> = cm["data"].as_object().expect("data").keys().collect();
    assert_eq!(keys, ["shop.destinationrule.cart.yaml"]);
    assert!(
        r.stderr
            .contains("left out (invalid): VirtualService shop/cart-timeout: spec.http[0].timeout"),
        "{}",
        r.all()
    );
    assert!(unmatched(&api).is_empty(), "{:?}", unmatched(&api));
}

// ---------------------------------------------------------------- kubeconfig

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubeconfig_context_and_its_namespace() {
    let api = api_with("check-inject.json").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let kc = dir.path().join("config");
    std::fs::write(
        &kc,
        format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: shop\n\
             clusters:\n- name: recorded\n  cluster:\n    server: {}\n\
             contexts:\n- name: shop\n  context: {{cluster: recorded, namespace: shop, user: nobody}}\n\
             - name: plain\n  context: {{cluster: recorded, namespace: plain, user: nobody}}\n\
             users:\n- name: nobody\n  user: {{}}\n",
            api.url()
        ),
    )
    .expect("write kubeconfig");
    let kc = kc.to_string_lossy().into_owned();
    // The current context's namespace is the default namespace.
    let r = remora_args(&["--kubeconfig", &kc, "check-inject", "web-6d8f7c9b5-x2k9q"]).await;
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(
        r.stdout
            .starts_with("Pod/web-6d8f7c9b5-x2k9q in namespace shop: INJECTED"),
        "{}",
        r.all()
    );
    // --context picks another one; -n still wins over it.
    let r = remora_args(&[
        "--kubeconfig",
        &kc,
        "--context",
        "plain",
        "check-inject",
        "app-1",
    ])
    .await;
    assert!(
        r.stdout
            .starts_with("Pod/app-1 in namespace plain: NOT INJECTED"),
        "{}",
        r.all()
    );
    let r = remora_args(&[
        "--kubeconfig",
        &kc,
        "--context",
        "plain",
        "-n",
        "legacy",
        "check-inject",
        "app-2",
    ])
    .await;
    assert!(
        r.stdout.starts_with("Pod/app-2 in namespace legacy:"),
        "{}",
        r.all()
    );
    let r = remora_args(&[
        "--kubeconfig",
        &kc,
        "--context",
        "nope",
        "check-inject",
        "x",
    ])
    .await;
    assert_eq!(r.code, 2, "{}", r.all());
    assert!(r.stderr.starts_with("remora: --kubeconfig"), "{}", r.all());
    let missing = dir.path().join("absent").to_string_lossy().into_owned();
    let r = remora_args(&["--kubeconfig", &missing, "check-inject", "x"]).await;
    assert_eq!(r.code, 2, "{}", r.all());
    assert!(r.stderr.contains("cannot read"), "{}", r.all());
    assert!(unmatched(&api).is_empty(), "{:?}", unmatched(&api));
}

// ---------------------------------------------------------------- https API server

/// A TLS front (self-signed for 127.0.0.1) that relays to the recorded API; stops on drop.
struct TlsFront {
    url: String,
    ca_pem: String,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TlsFront {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn tls_front(api: &RecordedApi) -> TlsFront {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let ck = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).expect("cert");
    let key = rustls_pki_types::PrivateKeyDer::Pkcs8(ck.key_pair.serialize_der().into());
    let cfg = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(vec![ck.cert.der().clone()], key)
        .expect("server config");
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(cfg));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let backend = api.url().trim_start_matches("http://").to_string();
    let task = tokio::spawn(async move {
        let mut conns = tokio::task::JoinSet::new();
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let backend = backend.clone();
            conns.spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let Ok(mut up) = tokio::net::TcpStream::connect(&backend).await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut up).await;
            });
        }
    });
    TlsFront {
        url: format!("https://127.0.0.1:{port}"),
        ca_pem: ck.cert.pem(),
        task,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_server_is_verified_against_the_given_ca() {
    let api = api_with("check-inject.json").await;
    let front = tls_front(&api).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &front.ca_pem).expect("write CA");
    let ca = ca.to_string_lossy().into_owned();
    let args = |extra: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = vec!["--server".into(), front.url.clone()];
        v.extend(extra.iter().map(|s| s.to_string()));
        v.extend(["check-inject", "-n", "shop", "web-6d8f7c9b5-x2k9q"].map(String::from));
        v
    };
    let run = |v: Vec<String>| async move {
        let refs: Vec<&str> = v.iter().map(String::as_str).collect();
        remora_args(&refs).await
    };
    // Not trusted: one line, exit 2, and no request reached the API.
    let r = run(args(&[])).await;
    assert_eq!(r.code, 2, "{}", r.all());
    assert_eq!(r.stderr.trim().lines().count(), 1, "{}", r.all());
    assert!(api.requests().is_empty(), "{:?}", api.requests());
    // Trusted through --certificate-authority, or not verified at all.
    let r = run(args(&["--certificate-authority", &ca])).await;
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(r.stdout.contains(": INJECTED ("), "{}", r.all());
    let seen = api.requests().len();
    assert!(seen > 0);
    let r = run(args(&["--insecure-skip-tls-verify"])).await;
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(api.requests().len() > seen);
}
