//! CNI mode's two halves against each other: the real `remora-cni-node` watches the pods of its
//! node through a recorded API server (list with `fieldSelector=spec.nodeName=…`, a held watch
//! fed MODIFIED/DELETED events, an expired watch's re-list) and writes the pod files; the real
//! `remora-cni` plugin's ADD then reads the file the agent wrote and installs the capture in a
//! network namespace this test made, proved with `remora-init validate` (a real connection only
//! the capture answers). Needs `cargo build --bins`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use remora_e2e::admission::default_bin_dir;
use remora_e2e::apiserver::{event, expired_event, RecordedApi, Reply};
use remora_e2e::netns::Netns;
use serde_json::{json, Value};

const PODS: &str = "/api/v1/pods";
const NODE: &str = "node-a";

fn bin(name: &str) -> PathBuf {
    let p = default_bin_dir().join(name);
    assert!(
        p.is_file(),
        "{} is missing: run cargo build --bins first",
        p.display()
    );
    p
}

fn pod(ns: &str, name: &str, rv: &str, annotations: Value) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "uid": format!("uid-{name}"),
                     "resourceVersion": rv, "labels": {"app": name}, "annotations": annotations},
        "spec": {
            "nodeName": NODE,
            "serviceAccountName": "default",
            "initContainers": [
                {"name": "remora-validation", "image": "remora-init", "securityContext": {"runAsUser": 1337}},
                {"name": "remora-proxy", "image": "remora-proxy", "restartPolicy": "Always",
                 "env": [{"name": "SECRET_LOOKING", "value": "not copied"}],
                 "securityContext": {"runAsUser": 1337, "runAsGroup": 1337}}
            ],
            "containers": [{"name": "app", "image": "app"}]
        }
    })
}

fn list(rv: &str, items: Vec<Value>) -> Reply {
    Reply::json(
        200,
        json!({"apiVersion": "v1", "kind": "PodList", "metadata": {"resourceVersion": rv}, "items": items}),
    )
}

struct Agent {
    child: Child,
    log: PathBuf,
}

impl Agent {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_until(what: &str, agent: &Agent, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; agent log:\n{}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn read(p: &Path) -> Value {
    std::fs::read_to_string(p)
        .ok()
        .and_then(|s| serde_json::from_str(&s).ok())
        .unwrap_or(Value::Null)
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The container runtime's ADD for pod `ns/name` in `netns`, the plugin's config naming the
/// agent's pods directory.
fn cni_add(netns: &Netns, ns: &str, name: &str, pods: &Path, state: &Path) -> Output {
    let config = json!({
        "cniVersion": "1.0.0",
        "name": "k8s-pod-network",
        "type": "remora-cni",
        "podInfo": {"source": "file", "dir": pods, "waitMs": 2000},
        "stateDir": state,
        "prevResult": {
            "cniVersion": "1.0.0",
            "interfaces": [{"name": "eth0", "sandbox": netns.path()}],
            "ips": [{"address": "10.213.0.2/24", "gateway": "10.213.0.1", "interface": 0}]
        }
    });
    let mut child = Command::new(bin("remora-cni"))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("CNI_COMMAND", "ADD")
        .env("CNI_CONTAINERID", format!("ctr-{name}"))
        .env("CNI_NETNS", netns.path())
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", "/opt/cni/bin")
        .env(
            "CNI_ARGS",
            format!("IgnoreUnknown=1;K8S_POD_NAMESPACE={ns};K8S_POD_NAME={name}"),
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn remora-cni");
    if let Some(mut s) = child.stdin.take() {
        let _ = s.write_all(config.to_string().as_bytes());
    }
    child.wait_with_output().expect("wait remora-cni")
}

/// `remora-init validate` (the `remora-validation` container's check) as uid 1337, no
/// capabilities, in the pod's namespace.
fn validate(netns: &Netns) -> Output {
    let init = bin("remora-init");
    Command::new("ip")
        .args(["netns", "exec", netns.name(), "setpriv"])
        .args([
            "--reuid=1337",
            "--regid=1337",
            "--clear-groups",
            "--inh-caps=-all",
            "--bounding-set=-all",
        ])
        .arg(init)
        .args(["validate", "--timeout-ms", "2000"])
        .output()
        .expect("run remora-init validate")
}

#[test]
fn the_agent_writes_pod_files_from_the_api_and_the_plugin_captures_from_them() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let api = rt.block_on(RecordedApi::start()).unwrap();
    let mark = json!({"remora.dev/capture": "cni"});
    let cart = pod("shop", "cart", "5", mark.clone());
    let web = pod("shop", "web", "6", json!({"team": "web"}));
    let dns = pod("kube-system", "dns", "7", mark.clone());
    // The first list, then (after the watch expires) a re-list without the pods deleted since.
    api.on(
        "GET",
        PODS,
        list("10", vec![cart.clone(), web.clone(), dns]),
    );
    api.on("GET", PODS, list("20", vec![]));
    api.on(
        "GET",
        &format!("{PODS}?watch=true"),
        Reply::watch(vec![], true),
    );

    let dir = tempfile::tempdir().unwrap();
    let (cni_bin, conf, pods, state) = (
        dir.path().join("bin"),
        dir.path().join("net.d"),
        dir.path().join("pods"),
        dir.path().join("state"),
    );
    std::fs::create_dir_all(&cni_bin).unwrap();
    std::fs::create_dir_all(&conf).unwrap();
    std::fs::write(
        conf.join("10-bridge.conflist"),
        json!({"cniVersion": "1.0.0", "name": "k8s-pod-network", "plugins": [{"type": "bridge"}]})
            .to_string(),
    )
    .unwrap();
    let log = dir.path().join("agent.log");
    let out = std::fs::File::create(&log).unwrap();
    let child = Command::new(bin("remora-cni-node"))
        .arg("run")
        .arg(format!("--cni-bin-dir={}", cni_bin.display()))
        .arg(format!("--cni-conf-dir={}", conf.display()))
        .arg(format!("--plugin-binary={}", bin("remora-cni").display()))
        .arg(format!("--pod-dir={}", pods.display()))
        .arg("--poll-ms=50")
        .arg(format!("--kube-api={}", api.url()))
        .arg("--debug")
        .env("NODE_NAME", NODE)
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .expect("spawn remora-cni-node");
    let agent = Agent { child, log };

    // The list: a file per pod of the node, the marked one with its capture settings only.
    let cart_file = pods.join("shop/cart.json");
    let web_file = pods.join("shop/web.json");
    wait_until("the pod files", &agent, || {
        cart_file.is_file() && web_file.is_file()
    });
    assert_eq!(
        read(&cart_file),
        json!({"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": "cart", "namespace": "shop", "uid": "uid-cart",
                            "labels": {"app": "cart"}, "annotations": {"remora.dev/capture": "cni"}},
               "spec": {"containers": [{"name": "remora-proxy", "securityContext": {"runAsUser": 1337}}]}})
    );
    // Not marked: nothing but its name (the plugin passes it through at once).
    assert_eq!(
        read(&web_file),
        json!({"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": "web", "namespace": "shop", "uid": "uid-web"}})
    );
    // An excluded namespace (kube-system by default) gets no file.
    assert!(!pods.join("kube-system").exists());
    // The plugin is installed and chained too.
    wait_until("the plugin chained", &agent, || {
        cni_bin.join("remora-cni").is_file()
            && std::fs::read_to_string(conf.join("10-bridge.conflist"))
                .is_ok_and(|s| s.contains("remora-cni"))
    });

    // Only the node's pods were asked for, in the list and in the watch.
    let reqs = api.requests();
    let pod_reqs: Vec<_> = reqs.iter().filter(|r| r.path() == PODS).collect();
    assert!(pod_reqs.len() >= 2, "{reqs:?}");
    for r in &pod_reqs {
        assert!(
            r.query()
                .contains(&("fieldSelector".to_string(), format!("spec.nodeName={NODE}"))),
            "{}",
            r.path_and_query
        );
    }
    assert!(reqs.iter().all(|r| r.path() == PODS), "{reqs:?}");

    // MODIFIED: the file is rewritten with the new annotation.
    wait_until("the watch held", &agent, || api.open_watches(PODS) > 0);
    let modified = pod(
        "shop",
        "cart",
        "11",
        json!({"remora.dev/capture": "cni", "traffic.sidecar.istio.io/excludeOutboundPorts": "5432"}),
    );
    api.emit(PODS, event("MODIFIED", modified));
    wait_until("the modified file", &agent, || {
        read(&cart_file)
            .pointer("/metadata/annotations/traffic.sidecar.istio.io~1excludeOutboundPorts")
            == Some(&json!("5432"))
    });

    // The plugin's ADD reads the file the agent wrote and installs the capture: the validation
    // container's check passes in that pod, and not in the unmarked pod.
    let tag = std::process::id();
    let cart_ns = Netns::create(&format!("cagc{tag}")).unwrap();
    let web_ns = Netns::create(&format!("cagw{tag}")).unwrap();
    let out = cni_add(&cart_ns, "shop", "cart", &pods, &state);
    assert!(
        out.status.success(),
        "ADD cart: {} {}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let v = validate(&cart_ns);
    assert!(
        v.status.success() && text(&v.stdout).contains("capture in place"),
        "validate in cart: {} {}",
        text(&v.stdout),
        text(&v.stderr)
    );
    let out = cni_add(&web_ns, "shop", "web", &pods, &state);
    assert!(
        out.status.success(),
        "ADD web: {} {}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let v = validate(&web_ns);
    assert!(
        !v.status.success() && text(&v.stderr).contains("the traffic capture is not in place"),
        "validate in web: {} {}",
        text(&v.stdout),
        text(&v.stderr)
    );

    // DELETED: the file goes.
    api.emit(PODS, event("DELETED", pod("shop", "cart", "12", mark)));
    wait_until("the deleted pod's file removed", &agent, || {
        !cart_file.exists()
    });
    assert!(web_file.is_file());

    // The watch expires; the re-list no longer has web (deleted while not watched): removed.
    api.emit(PODS, expired_event("12"));
    wait_until("the re-listed pods' files", &agent, || !web_file.exists());
    let log = agent.log();
    assert!(
        log.contains("listed the pods on node node-a: 2 files (1 marked), 2 written, 0 unchanged, 0 removed, 0 not written"),
        "{log}"
    );
    assert!(
        log.contains("listed the pods on node node-a: 0 files (0 marked), 0 written, 0 unchanged, 1 removed, 0 not written"),
        "{log}"
    );
    // An expired watch is routine: no error line.
    assert!(
        log.contains("the watch of the pods expired (410): listing them again"),
        "{log}"
    );
    assert!(!log.contains("error"), "{log}");
    assert!(
        log.contains("debug: wrote shop/cart.json (marked)"),
        "{log}"
    );
    assert!(
        log.contains("debug: removed shop/cart.json (pod deleted)"),
        "{log}"
    );
    drop(agent);
    drop(api);
}

#[test]
fn an_api_failure_is_logged_once_until_it_recovers() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let api = rt.block_on(RecordedApi::start()).unwrap();
    // No RBAC yet: the list is forbidden twice, then allowed.
    let forbidden = Reply::status(
        403,
        "Forbidden",
        "pods is forbidden: User \"system:serviceaccount:remora-system:remora-cni-node\" cannot list resource \"pods\" in API group \"\" at the cluster scope",
    );
    api.on("GET", PODS, forbidden.clone());
    api.on("GET", PODS, forbidden);
    api.on(
        "GET",
        PODS,
        list(
            "10",
            vec![pod(
                "shop",
                "cart",
                "5",
                json!({"remora.dev/capture": "cni"}),
            )],
        ),
    );
    api.on(
        "GET",
        &format!("{PODS}?watch=true"),
        Reply::watch(vec![], true),
    );

    let dir = tempfile::tempdir().unwrap();
    let (cni_bin, conf, pods) = (
        dir.path().join("bin"),
        dir.path().join("net.d"),
        dir.path().join("pods"),
    );
    std::fs::create_dir_all(&cni_bin).unwrap();
    std::fs::create_dir_all(&conf).unwrap();
    let log = dir.path().join("agent.log");
    let out = std::fs::File::create(&log).unwrap();
    let child = Command::new(bin("remora-cni-node"))
        .arg("run")
        .arg(format!("--cni-bin-dir={}", cni_bin.display()))
        .arg(format!("--cni-conf-dir={}", conf.display()))
        .arg(format!("--plugin-binary={}", bin("remora-cni").display()))
        .arg(format!("--pod-dir={}", pods.display()))
        .arg("--poll-ms=50")
        .arg(format!("--kube-api={}", api.url()))
        .arg(format!("--node-name={NODE}"))
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .expect("spawn remora-cni-node");
    let agent = Agent { child, log };
    wait_until("the pod file after the API recovered", &agent, || {
        pods.join("shop/cart.json").is_file()
    });
    wait_until("the recovery logged", &agent, || {
        agent.log().contains("recovered")
    });
    let log = agent.log();
    let forbidden_lines: Vec<&str> = log.lines().filter(|l| l.contains("forbidden")).collect();
    assert_eq!(forbidden_lines.len(), 1, "{log}");
    assert!(
        forbidden_lines[0] == "remora-cni-node: error: watching the pods through the API: the list failed: 403 Forbidden: pods is forbidden: User \"system:serviceaccount:remora-system:remora-cni-node\" cannot list resource \"pods\" in API group \"\" at the cluster scope (logged once until it recovers)",
        "{log}"
    );
    assert!(
        log.contains("remora-cni-node: watching the pods through the API: recovered"),
        "{log}"
    );
    let lists = api
        .requests()
        .iter()
        .filter(|r| r.path() == PODS && !r.query().iter().any(|(k, _)| k == "watch"))
        .count();
    assert!(lists >= 3, "{lists} lists");
    // Without --debug no per-file line.
    assert!(!log.contains("debug:"), "{log}");
    drop(agent);
    drop(api);
}

#[test]
fn bad_pod_watch_flags_fail_before_anything_is_installed() {
    let dir = tempfile::tempdir().unwrap();
    let cni_bin = dir.path().join("bin");
    std::fs::create_dir_all(&cni_bin).unwrap();
    for (flags, want) in [
        (
            vec!["--node-name=Node_A", "--kube-api=http://127.0.0.1:1"],
            "--node-name \"Node_A\" is not a DNS-1123 subdomain",
        ),
        (
            vec!["--node-name=node-a", "--kube-api=127.0.0.1:6443"],
            "invalid --kube-api \"127.0.0.1:6443\"",
        ),
    ] {
        let out = Command::new(bin("remora-cni-node"))
            .arg("run")
            .arg(format!("--cni-bin-dir={}", cni_bin.display()))
            .arg(format!("--cni-conf-dir={}", dir.path().display()))
            .arg(format!("--plugin-binary={}", bin("remora-cni").display()))
            .args(&flags)
            .env_remove("NODE_NAME")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{flags:?}");
        let err = text(&out.stderr);
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(
            err.starts_with("remora-cni-node: error: ") && err.contains(want),
            "{err}"
        );
        assert!(!cni_bin.join("remora-cni").exists(), "{flags:?}");
    }
}
