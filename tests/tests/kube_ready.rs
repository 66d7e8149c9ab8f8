//! The real `remora-proxy` process against the recorded Kubernetes API: `/healthz/ready` waits
//! (bounded by `--discovery-ready-timeout`) for discovery's first list of every watched kind and
//! namespace and for the rules ConfigMap's first answer; a 403 does not hold it; without an API
//! it does not wait at all.
//!
//! The lists are answered from code (`Reply::after` holds one back until the test releases it,
//! or forever); shapes as in `tests/fixtures/kube-api/discovery/` (Kubernetes API reference:
//! `List` kinds with `metadata.resourceVersion`, BOOKMARK watch events, 403 `Status`).
//!
//! Nothing here asserts on elapsed time: every wait polls with a generous deadline.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use remora_e2e::apiserver::{RecordedApi, Release, Reply};
use serde_json::{json, Value};

/// The namespaces a proxy in `shop` with no rules watches.
const SCOPE: [&str; 2] = ["shop", "remora-system"];
const CONFIGMAPS: &str = "/api/v1/namespaces/shop/configmaps";
const SELECTOR: &str = "fieldSelector=metadata.name%3Dremora-mesh-rules";

/// Generous: several test binaries share two cores in CI.
const DEADLINE: Duration = Duration::from_secs(60);

fn slices_path(ns: &str) -> String {
    format!("/apis/discovery.k8s.io/v1/namespaces/{ns}/endpointslices")
}

/// `(path, list kind, apiVersion, watch object kind)` of the three watched kinds in `ns`.
fn kinds(ns: &str) -> [(String, &'static str, &'static str, &'static str); 3] {
    [
        (
            format!("/api/v1/namespaces/{ns}/services"),
            "ServiceList",
            "v1",
            "Service",
        ),
        (
            slices_path(ns),
            "EndpointSliceList",
            "discovery.k8s.io/v1",
            "EndpointSlice",
        ),
        (
            format!("/api/v1/namespaces/{ns}/pods"),
            "PartialObjectMetadataList",
            "meta.k8s.io/v1",
            "PartialObjectMetadata",
        ),
    ]
}

fn list(kind: &str, api_version: &str) -> Value {
    json!({"kind": kind, "apiVersion": api_version, "metadata": {"resourceVersion": "700"},
           "items": []})
}

fn bookmark(api_version: &str, kind: &str) -> Value {
    json!({"type": "BOOKMARK", "object": {"kind": kind, "apiVersion": api_version,
           "metadata": {"resourceVersion": "701"}}})
}

fn forbidden(what: &str, ns: &str) -> Reply {
    Reply::status(
        403,
        "Forbidden",
        &format!("{what} is forbidden: User \"system:serviceaccount:shop:default\" cannot list resource \"{what}\" in the namespace \"{ns}\""),
    )
}

/// Empty lists and held watches for every watched kind in the scope; `hold_slices`: the
/// EndpointSlice list of `shop` is answered only once released.
fn answer_discovery(api: &RecordedApi, hold_slices: Option<&Release>) {
    for ns in SCOPE {
        for (path, list_kind, api_version, kind) in kinds(ns) {
            let mut reply = Reply::json(200, list(list_kind, api_version));
            if let (Some(r), true) = (hold_slices, path == slices_path("shop")) {
                reply = Reply::after(r, reply);
            }
            api.on("GET", &path, reply);
            api.on(
                "GET",
                &format!("{path}?watch=true"),
                Reply::watch(vec![bookmark(api_version, kind)], true),
            );
        }
    }
}

/// The rules ConfigMap through the API: absent (an empty list), answered once `hold` is released.
fn answer_configmap(api: &RecordedApi, hold: Option<&Release>) {
    let mut reply = Reply::json(200, list("ConfigMapList", "v1"));
    if let Some(r) = hold {
        reply = Reply::after(r, reply);
    }
    api.on("GET", &format!("{CONFIGMAPS}?{SELECTOR}"), reply);
    api.on(
        "GET",
        &format!("{CONFIGMAPS}?{SELECTOR}&watch=true"),
        Reply::watch(vec![bookmark("v1", "ConfigMap")], true),
    );
}

/// The proxy process; killed (and reaped) on drop, even when the test fails.
struct Proxy {
    child: Child,
    admin: SocketAddr,
    health: SocketAddr,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn proxy_bin() -> PathBuf {
    let p = remora_e2e::admission::default_bin_dir().join("remora-proxy");
    assert!(
        p.exists(),
        "{} is missing: run `cargo build -p remora-proxy` first (scripts/test builds everything)",
        p.display()
    );
    p
}

use remora_e2e::ports::free_ports;

/// Start the proxy in namespace `shop` with an empty rules directory, on loopback ports, its
/// log in a file; `kube_api`: the recorded API's URL or `off`; `extra`: more flags; `env`:
/// more environment.
fn start_proxy(kube_api: &str, extra: &[&str], env: &[(&str, &str)]) -> Proxy {
    let dir = tempfile::tempdir().expect("tempdir");
    let rules = dir.path().join("rules");
    std::fs::create_dir(&rules).expect("rules dir");
    let log = dir.path().join("proxy.log");
    let log_file = std::fs::File::create(&log).expect("log file");
    let ports = free_ports(5);
    let at = |p: u16| SocketAddr::from(([127, 0, 0, 1], p));
    let mut cmd = Command::new(proxy_bin());
    cmd.args(["run", "--kube-api", kube_api, "--namespace", "shop"])
        .arg("--access-log-encoding=JSON")
        .arg("--rules-dir")
        .arg(&rules)
        .args(["--outbound-addr", &at(ports[0]).to_string()])
        .args(["--inbound-addr", &at(ports[1]).to_string()])
        .args(["--admin-addr", &at(ports[2]).to_string()])
        .args(["--health-addr", &at(ports[3]).to_string()])
        .args(["--prometheus-addr", &at(ports[4]).to_string()])
        .args([
            "--ipv6",
            "off",
            "--access-log",
            "off",
            "--inbound-source-fallback",
        ])
        .args(["--pod-labels-file", "/nonexistent"])
        .args(extra)
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env_remove("POD_NAME")
        .env_remove("REMORA_DISCOVERY_READY_TIMEOUT")
        .stdout(Stdio::null())
        .stderr(Stdio::from(log_file));
    for (k, v) in env {
        cmd.env(k, v);
    }
    let child = cmd.spawn().expect("spawn remora-proxy");
    Proxy {
        child,
        admin: at(ports[2]),
        health: at(ports[3]),
        log,
        _dir: dir,
    }
}

/// One HTTP/1.1 GET: (status, body).
fn get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n"
    )?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.trim_end().to_string())
        .unwrap_or_default();
    Ok((status, body))
}

impl Proxy {
    /// `/healthz/ready` on the health port (off the test's runtime: blocking I/O).
    async fn ready(&self) -> Option<(u16, String)> {
        let health = self.health;
        tokio::task::spawn_blocking(move || get(health, "/healthz/ready").ok())
            .await
            .ok()
            .flatten()
    }

    /// Poll `/healthz/ready` until `f` accepts the answer; the accepted answer.
    async fn ready_until(&mut self, what: &str, f: impl Fn(u16, &str) -> bool) -> (u16, String) {
        let t = Instant::now();
        let mut last = None;
        loop {
            if let Some((code, body)) = self.ready().await {
                if f(code, &body) {
                    return (code, body);
                }
                last = Some((code, body));
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "remora-proxy exited ({status}) waiting for {what}; log:\n{}",
                    self.log_text()
                );
            }
            assert!(
                t.elapsed() < DEADLINE,
                "timed out waiting for {what}; last /healthz/ready answer {last:?}; log:\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn config_dump(&self) -> Value {
        let admin = self.admin;
        let (code, body) = tokio::task::spawn_blocking(move || get(admin, "/config_dump"))
            .await
            .expect("join")
            .expect("/config_dump");
        assert_eq!(code, 200, "{body}");
        serde_json::from_str(&body).expect("config_dump JSON")
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The log's lines containing `needle`.
    fn log_lines(&self, needle: &str) -> Vec<String> {
        self.log_text()
            .lines()
            .filter(|l| l.contains(needle))
            .map(str::to_string)
            .collect()
    }
}

fn lists_seen(api: &RecordedApi, path: &str) -> usize {
    api.requests()
        .iter()
        .filter(|r| r.path() == path && !r.path_and_query.contains("watch=true"))
        .count()
}

async fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed() < DEADLINE, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// While the EndpointSlice list of `shop` and the rules ConfigMap are unanswered, readiness is
/// 503 naming them; each answer removes its part of the reason; after both, 200.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_waits_for_the_endpointslice_list_and_the_rules_configmap() {
    let api = RecordedApi::start().await.unwrap();
    let slices = Release::new();
    let cm = Release::new();
    answer_discovery(&api, Some(&slices));
    answer_configmap(&api, Some(&cm));
    let mut proxy = start_proxy(&api.url(), &["--discovery-ready-timeout", "10m"], &[]);

    // Everything else lists quickly: then exactly these two are awaited.
    let waiting = "not ready: discovery not synced: endpointslices in shop; rules ConfigMap shop/remora-mesh-rules (";
    let (code, body) = proxy
        .ready_until(
            "readiness to wait for the slices and the ConfigMap only",
            |_, b| b.starts_with(waiting),
        )
        .await;
    assert_eq!(code, 503, "{body}");
    assert!(body.ends_with(" of 600s)"), "{body}");
    // The held requests did arrive: the proxy is waiting for answers, not for asking.
    assert!(lists_seen(&api, &slices_path("shop")) >= 1);
    assert!(lists_seen(&api, CONFIGMAPS) >= 1);
    let dump = proxy.config_dump().await;
    let r = &dump["discovery"]["readiness"];
    assert_eq!(r["state"], "waiting", "{r}");
    assert_eq!(
        r["waiting_for"],
        json!([
            "endpointslices in shop",
            "rules ConfigMap shop/remora-mesh-rules"
        ]),
        "{r}"
    );
    assert_eq!(r["timeout_seconds"], 600.0, "{r}");
    assert_eq!(
        dump["discovery"]["status"]["watches"]["endpointslices in namespace shop"], "listing",
        "{dump}"
    );

    // The slices arrive: only the ConfigMap is awaited.
    slices.release();
    let (code, body) = proxy
        .ready_until("the slices to count as listed", |_, b| {
            !b.contains("endpointslices")
        })
        .await;
    assert_eq!(code, 503, "{body}");
    assert!(
        body.starts_with(
            "not ready: discovery not synced: rules ConfigMap shop/remora-mesh-rules ("
        ),
        "{body}"
    );

    // The ConfigMap answers (absent): ready.
    cm.release();
    let (_, body) = proxy.ready_until("readiness", |code, _| code == 200).await;
    assert_eq!(body, "ready: generation 1");
    let dump = proxy.config_dump().await;
    let r = &dump["discovery"]["readiness"];
    assert_eq!(r["state"], "synced", "{r}");
    assert_eq!(r["waiting_for"], json!([]), "{r}");
    assert_eq!(
        dump["config_source"]["api"]["status"]
            .as_str()
            .map(|s| s.starts_with("not found")),
        Some(true),
        "{dump}"
    );
    let ready = proxy.log_lines("ready after");
    assert_eq!(ready.len(), 1, "one line when it turns ready: {ready:?}");
    assert!(ready[0].contains(" INFO "), "{}", ready[0]);
    assert!(
        ready[0].contains("rule generation 1, capture listeners bound, discovery synced after"),
        "{}",
        ready[0]
    );
    assert!(proxy.log_lines("--discovery-ready-timeout):").is_empty());
}

/// A list that never arrives holds readiness only until `--discovery-ready-timeout` (here from
/// the environment): then 200 and one warn line naming what is not synced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_turns_ready_after_the_timeout_when_a_list_never_arrives() {
    let api = RecordedApi::start().await.unwrap();
    let never = Release::new();
    answer_discovery(&api, Some(&never));
    answer_configmap(&api, None);
    let mut proxy = start_proxy(
        &api.url(),
        &[],
        &[("REMORA_DISCOVERY_READY_TIMEOUT", "1500ms")],
    );
    let (_, body) = proxy
        .ready_until("readiness after the timeout", |code, _| code == 200)
        .await;
    assert_eq!(body, "ready: generation 1");
    assert!(!never.is_released());
    assert_eq!(
        api.requests()
            .iter()
            .filter(|r| r.path() == slices_path("shop") && r.path_and_query.contains("watch=true"))
            .count(),
        0,
        "the slices were never listed, so never watched"
    );
    let warn = proxy.log_lines("--discovery-ready-timeout):");
    assert_eq!(warn.len(), 1, "one warn line: {warn:?}");
    let w = &warn[0];
    assert!(w.contains(" WARN "), "{w}");
    assert!(
        w.contains("readiness: discovery not synced after 1.5s (--discovery-ready-timeout):"),
        "{w}"
    );
    assert!(w.contains("endpointslices in shop"), "{w}");
    assert!(
        w.contains("the mounted rule files and the original destinations serve meanwhile"),
        "{w}"
    );
    let ready = proxy.log_lines("ready after");
    assert_eq!(ready.len(), 1, "{ready:?}");
    assert!(
        ready[0].contains("discovery not synced after the 1.5s timeout (")
            && ready[0].contains("endpointslices in shop"),
        "{}",
        ready[0]
    );
    let dump = proxy.config_dump().await;
    let r = &dump["discovery"]["readiness"];
    assert_eq!(r["state"], "timeout", "{r}");
    assert!(
        r["waiting_for"]
            .as_array()
            .is_some_and(|w| w.contains(&json!("endpointslices in shop"))),
        "{r}"
    );

    // The list arrives late: said once; readiness stays as it was decided.
    never.release();
    wait_for("the late sync line", || {
        !proxy.log_lines("discovery: first sync complete").is_empty()
    })
    .await;
    let late = proxy.log_lines("discovery: first sync complete");
    assert_eq!(late.len(), 1, "{late:?}");
    assert!(
        late[0].contains("(readiness had stopped waiting after 1.5s)"),
        "{}",
        late[0]
    );
    assert_eq!(
        proxy.ready().await,
        Some((200, "ready: generation 1".to_string()))
    );
    let dump = proxy.config_dump().await;
    assert_eq!(dump["discovery"]["readiness"]["state"], "timeout");
    assert_eq!(
        dump["discovery"]["status"]["watches"]["endpointslices in namespace shop"],
        "watching"
    );
}

/// Every list answered 403 (no RBAC): nothing is waited for, the proxy is ready well before its
/// ten-minute timeout, and says which watches it did not wait for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forbidden_lists_do_not_hold_readiness() {
    let api = RecordedApi::start().await.unwrap();
    for ns in SCOPE {
        for (path, _, _, _) in kinds(ns) {
            let what = path.rsplit('/').next().unwrap_or_default().to_string();
            api.on("GET", &path, forbidden(&what, ns));
        }
    }
    api.on(
        "GET",
        &format!("{CONFIGMAPS}?{SELECTOR}"),
        forbidden("configmaps", "shop"),
    );
    let mut proxy = start_proxy(&api.url(), &["--discovery-ready-timeout", "10m"], &[]);
    let (_, body) = proxy.ready_until("readiness", |code, _| code == 200).await;
    assert_eq!(body, "ready: generation 1");
    // It was the 403s, not a timeout: every list was asked and refused.
    for ns in SCOPE {
        for (path, _, _, _) in kinds(ns) {
            assert!(lists_seen(&api, &path) >= 1, "{path} never listed");
        }
    }
    let dump = proxy.config_dump().await;
    let r = &dump["discovery"]["readiness"];
    assert_eq!(r["state"], "synced", "{r}");
    let detail = r["detail"].as_str().unwrap_or_default();
    assert!(detail.starts_with("discovery synced after "), "{detail}");
    for ns in SCOPE {
        assert!(
            detail.contains(&format!("services, endpointslices, pods in {ns}")),
            "{detail}"
        );
    }
    assert!(detail.contains("(forbidden, not waited for: "), "{detail}");
    assert_eq!(dump["config_source"]["api"]["status"], "forbidden");
    let ready = proxy.log_lines("ready after");
    assert_eq!(ready.len(), 1, "{ready:?}");
    assert!(
        ready[0].contains("forbidden, not waited for"),
        "{}",
        ready[0]
    );
    assert!(proxy.log_lines("--discovery-ready-timeout):").is_empty());
    // The 403 warnings are logged once per watch, as before.
    wait_for("the 403 warnings", || {
        proxy.log_lines("forbidden to list/watch").len() >= 6
    })
    .await;
}

/// No Kubernetes API (the mesh lab, `--kube-api off`): readiness does not wait for discovery.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_api_readiness_does_not_wait() {
    let mut proxy = start_proxy("off", &["--discovery-ready-timeout", "10m"], &[]);
    let (_, body) = proxy.ready_until("readiness", |code, _| code == 200).await;
    assert_eq!(body, "ready: generation 1");
    let ready = proxy.log_lines("ready after");
    assert_eq!(ready.len(), 1, "{ready:?}");
    assert!(
        ready[0]
            .contains("discovery not waited for (nothing is watched through the Kubernetes API)"),
        "{}",
        ready[0]
    );
    let dump = proxy.config_dump().await;
    assert_eq!(dump["discovery"]["status"], "off");
    assert_eq!(dump["discovery"]["readiness"]["state"], "not waiting");
}

/// `--discovery off` with the API in use: only the rules ConfigMap's first answer is awaited;
/// no Service, EndpointSlice or Pod is ever asked for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_discovery_off_only_the_rules_configmap_is_awaited() {
    let api = RecordedApi::start().await.unwrap();
    let cm = Release::new();
    answer_configmap(&api, Some(&cm));
    let mut proxy = start_proxy(
        &api.url(),
        &["--discovery", "off", "--discovery-ready-timeout", "10m"],
        &[],
    );
    let (code, body) = proxy
        .ready_until("readiness to wait for the ConfigMap", |_, b| {
            b.starts_with("not ready: discovery not synced: ")
        })
        .await;
    assert_eq!(code, 503, "{body}");
    assert!(
        body.starts_with(
            "not ready: discovery not synced: rules ConfigMap shop/remora-mesh-rules ("
        ),
        "{body}"
    );
    cm.release();
    let (_, body) = proxy.ready_until("readiness", |code, _| code == 200).await;
    assert_eq!(body, "ready: generation 1");
    let dump = proxy.config_dump().await;
    assert_eq!(dump["discovery"]["status"], "off");
    assert_eq!(dump["discovery"]["readiness"]["state"], "synced");
    let asked: Vec<String> = api
        .requests()
        .iter()
        .map(|r| r.path().to_string())
        .filter(|p| p != CONFIGMAPS)
        .collect();
    assert!(
        asked.is_empty(),
        "only the ConfigMap is asked for: {asked:?}"
    );
}

/// `--discovery-ready-timeout 0`: ready without waiting, even while a list never arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zero_timeout_does_not_wait() {
    let api = RecordedApi::start().await.unwrap();
    let never = Release::new();
    answer_discovery(&api, Some(&never));
    answer_configmap(&api, Some(&never));
    let mut proxy = start_proxy(&api.url(), &["--discovery-ready-timeout", "0"], &[]);
    let (_, body) = proxy.ready_until("readiness", |code, _| code == 200).await;
    assert_eq!(body, "ready: generation 1");
    let ready = proxy.log_lines("ready after");
    assert_eq!(ready.len(), 1, "{ready:?}");
    assert!(
        ready[0].contains("discovery not waited for (--discovery-ready-timeout=0)"),
        "{}",
        ready[0]
    );
    assert!(proxy.log_lines("--discovery-ready-timeout):").is_empty());
    let dump = proxy.config_dump().await;
    assert_eq!(dump["discovery"]["readiness"]["state"], "not waiting");
}

/// A bad value from the environment: the proxy exits at once with one line naming the flag,
/// the value and the reason.
#[test]
fn a_bad_timeout_is_refused_naming_the_flag_and_value() {
    let out = Command::new(proxy_bin())
        .args(["run", "--kube-api", "off"])
        .env("REMORA_DISCOVERY_READY_TIMEOUT", "soon")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .expect("run remora-proxy");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--discovery-ready-timeout")
            && err.contains("\"soon\" is not a duration (e.g. 10s, 1500ms, 2m, or 0 to not wait)"),
        "{err}"
    );
}
