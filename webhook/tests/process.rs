//! The real `remora-webhook` binary: `serve` (log line, SIGTERM with a review in flight),
//! `inject` and `check-inject` exit codes and output.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use remora_webhook::client::{client_config, Client};
use remora_webhook::review;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const BIN: &str = env!("CARGO_BIN_EXE_remora-webhook");

fn samples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/samples")
}

/// Kills the server if a test fails before stopping it.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

// The workspace's test port allocator: ports outside the ephemeral range, so no parallel test's
// client socket takes one before the webhook binds it.
#[path = "../../tests/src/ports.rs"]
mod ports;

fn free_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], ports::free_port()))
}

struct Served {
    proc: Proc,
    addr: SocketAddr,
    cert_pem: String,
    _dir: tempfile::TempDir,
    stderr: std::sync::mpsc::Receiver<String>,
}

async fn serve() -> Served {
    serve_with(&[]).await
}

/// `serve --ca-addr off` on a free port with a self-signed certificate, plus `extra` flags.
async fn serve_with(extra: &[&str]) -> Served {
    let dir = tempfile::tempdir().unwrap();
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    std::fs::write(dir.path().join("tls.crt"), ck.cert.pem()).unwrap();
    std::fs::write(dir.path().join("tls.key"), ck.key_pair.serialize_pem()).unwrap();
    let addr = free_addr();
    let mut child = Command::new(BIN)
        .args([
            "serve",
            "--ca-addr",
            "off",
            "--listen",
            &addr.to_string(),
            "--drain-seconds",
            "10",
        ])
        .arg("--tls-cert")
        .arg(dir.path().join("tls.crt"))
        .arg("--tls-key")
        .arg(dir.path().join("tls.key"))
        .arg("--config")
        .arg(dir.path().join("absent.yaml"))
        .args(extra)
        .env_remove("REMORA_INJECT_CA_ADDRESS")
        .env_remove("REMORA_TRUST_DOMAIN")
        .env_remove("REMORA_CA_TOKEN_AUDIENCE")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let err = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let served = Served {
        proc: Proc(child),
        addr,
        cert_pem: ck.cert.pem(),
        _dir: dir,
        stderr: rx,
    };
    let cfg = client_config(&[served.cert_pem.as_bytes()]).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(mut c) = Client::connect(addr, "localhost", cfg.clone()).await {
            if c.get("/readyz").await.map(|r| r.0).unwrap_or(0) == 200 {
                return served;
            }
        }
        assert!(Instant::now() < deadline, "server did not become ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Bytes waiting unread in the receive queue of the server's end of the IPv4 loopback
/// connection `server` ↔ `client` (from `/proc/net/tcp`); `None` if the socket is not listed.
fn server_unread(server: SocketAddr, client: SocketAddr) -> Option<u64> {
    let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
    let port = |field: &str| {
        field
            .rsplit_once(':')
            .and_then(|(_, p)| u16::from_str_radix(p, 16).ok())
    };
    table.lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        if f.len() < 5 || port(f[1]) != Some(server.port()) || port(f[2]) != Some(client.port()) {
            return None;
        }
        u64::from_str_radix(f[4].split_once(':')?.1, 16).ok()
    })
}

fn lines_until(rx: &std::sync::mpsc::Receiver<String>, pred: impl Fn(&str) -> bool) -> Vec<String> {
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(l) => {
                let hit = pred(&l);
                seen.push(l);
                if hit {
                    return seen;
                }
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            Err(_) => break,
        }
    }
    panic!("log line not found; saw: {seen:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_logs_one_structured_line_per_review_and_drains_on_sigterm() {
    let s = serve().await;
    let cfg = client_config(&[s.cert_pem.as_bytes()]).unwrap();
    let mut c = Client::connect(s.addr, "localhost", cfg.clone())
        .await
        .unwrap();
    let pod = json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"generateName": "web-6d4b-", "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-6d4b", "uid": "x", "controller": true}]},
        "spec": {"containers": [{"name": "web", "image": "nginx"}]}});
    let body = serde_json::to_vec(&review::review_for(&pod, "uid-log-1", "shop")).unwrap();
    let (status, _) = c.post("/inject", Bytes::from(body)).await.unwrap();
    assert_eq!(status, 200);
    let lines = lines_until(&s.stderr, |l| l.contains("uid-log-1"));
    let line: Value = serde_json::from_str(lines.last().unwrap()).unwrap();
    assert_eq!(line["uid"], "uid-log-1");
    assert_eq!(line["namespace"], "shop");
    assert_eq!(line["pod"], "web-6d4b-");
    assert_eq!(line["owner_kind"], "ReplicaSet");
    assert_eq!(line["decision"], "injected");
    assert!(line["reason"].as_str().unwrap().contains("default policy"));
    assert!(line["duration_ms"].as_f64().unwrap() >= 0.0);

    // A review in flight when SIGTERM arrives: headers and half the body sent before, the rest after.
    let body = serde_json::to_vec(&review::review_for(&pod, "uid-inflight", "shop")).unwrap();
    let tcp = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    let client_addr = tcp.local_addr().unwrap();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(cfg.clone())
        .connect(name, tcp)
        .await
        .unwrap();
    let head = format!(
        "POST /inject HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    tls.write_all(head.as_bytes()).await.unwrap();
    let half = body.len() / 2;
    tls.write_all(&body[..half]).await.unwrap();
    tls.flush().await.unwrap();
    // The review must be in flight when SIGTERM lands: a connection whose request head the
    // server has not read yet counts as idle and is closed. A fixed pause is not enough on a
    // loaded machine, so wait (bounded) until the server has taken every byte we sent off its
    // socket (its receive queue is empty), then give it a moment to act on them.
    let deadline = Instant::now() + Duration::from_secs(30);
    while server_unread(s.addr, client_addr) != Some(0) {
        assert!(
            Instant::now() < deadline,
            "the server never read the request head ({:?} bytes unread)",
            server_unread(s.addr, client_addr)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let pid = s.proc.0.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    lines_until(&s.stderr, |l| l.contains("shutting down"));
    // New connections are refused once shutdown began.
    assert!(tokio::net::TcpStream::connect(s.addr).await.is_err());
    tls.write_all(&body[half..]).await.unwrap();
    tls.flush().await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(30), tls.read_to_end(&mut answer)).await;
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains("uid-inflight"), "{text}");
    let mut proc = s.proc;
    let deadline = Instant::now() + Duration::from_secs(60);
    let code = loop {
        if let Some(st) = proc.0.try_wait().unwrap() {
            break st;
        }
        assert!(
            Instant::now() < deadline,
            "server did not exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(code.success(), "exit status {code:?}");
}

/// `serve --root-namespace`: a bad name, or an injector config naming another root namespace
/// (proxies and the rules controller would disagree), stops the start with one line.
#[test]
fn serve_refuses_a_bad_or_contradicted_root_namespace() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .args(["serve", "--root-namespace=mesh-"])
        .env_remove("REMORA_ROOT_NAMESPACE")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("'--root-namespace <ROOT_NAMESPACE>': \"mesh-\" is not a namespace name"),
        "{err}"
    );
    let cfg = dir.path().join("config.yaml");
    std::fs::write(&cfg, "rootNamespace: istio-system\n").unwrap();
    let out = Command::new(BIN)
        .args(["serve", "--ca-addr", "off", "--listen", "127.0.0.1:0"])
        .arg("--config")
        .arg(&cfg)
        .env("REMORA_ROOT_NAMESPACE", "mesh-root")
        .output()
        .unwrap();
    assert_ne!(out.status.code(), Some(0));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("config field rootNamespace: invalid value \"istio-system\": the rules controller and this injector use --root-namespace \"mesh-root\""),
        "{err}"
    );
}

#[test]
fn serve_without_cert_fails_with_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .args(["serve", "--ca-addr", "off", "--listen", "127.0.0.1:0"])
        .arg("--tls-cert")
        .arg(dir.path().join("missing.crt"))
        .arg("--tls-key")
        .arg(dir.path().join("missing.key"))
        .arg("--config")
        .arg(dir.path().join("absent.yaml"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("missing.crt"), "{err}");
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "policy: sometimes\n").unwrap();
    let out = Command::new(BIN)
        .args(["inject", "-f"])
        .arg(samples().join("bookinfo.yaml"))
        .arg("--config")
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.yaml") && err.contains("sometimes"),
        "{err}"
    );
}

#[test]
fn inject_cli_prints_injected_yaml_and_fails_on_denial() {
    let out = Command::new(BIN)
        .args(["inject", "-f"])
        .arg(samples().join("kinds.yaml"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let docs = remora_webhook::cli::parse_docs(&String::from_utf8_lossy(&out.stdout)).unwrap();
    assert_eq!(docs.len(), 7);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("DaemonSet/node-agent skipped") && err.contains("hostNetwork"),
        "{err}"
    );
    let cron = docs.iter().find(|d| d["kind"] == "CronJob").unwrap();
    assert_eq!(
        cron.pointer("/spec/jobTemplate/spec/template/spec/initContainers/0/name"),
        Some(&json!("remora-proxy"))
    );
    // Stdin, and a denial: non-zero, message on stderr, nothing on stdout.
    let mut child = Command::new(BIN)
        .args(["inject", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(&std::fs::read(samples().join("bad-annotations.yaml")).unwrap())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("Deployment/bad-ports denied") && err.contains("70000"),
        "{err}"
    );
    assert!(err.contains("sidecar.istio.io/proxyMemory"), "{err}");
}

#[test]
fn check_inject_cli_explains() {
    let out = Command::new(BIN)
        .args(["check-inject", "-f"])
        .arg(samples().join("kinds.yaml"))
        .args(["--namespace-labels", "istio-injection=enabled"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("StatefulSet/mongodb in namespace default: INJECTED"),
        "{text}"
    );
    // Its pod label sidecar.istio.io/inject=false keeps it away from every entry.
    assert!(
        text.contains("DaemonSet/node-logger in namespace default: NOT INJECTED\n  why: pod label sidecar.istio.io/inject=false: every entry's objectSelector excludes the pod"),
        "{text}"
    );
    let out = Command::new(BIN)
        .args(["check-inject", "-f"])
        .arg(samples().join("kinds.yaml"))
        .args(["--namespace-labels", "bad"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--namespace-labels"));
    // Revisions: the namespace's istio.io/rev picks revision canary's entry, when installed.
    let out = Command::new(BIN)
        .args(["check-inject", "-f"])
        .arg(samples().join("kinds.yaml"))
        .args(["--namespace-labels", "istio.io/rev=canary"])
        .args(["--revision", "default", "--revision", "canary"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("StatefulSet/mongodb in namespace default: INJECTED\n  webhook: remora-sidecar-injector-canary/rev.namespace.sidecar-injector.remora.dev (revision canary): namespace label istio.io/rev=canary"),
        "{text}"
    );
    let out = Command::new(BIN)
        .args(["check-inject", "-f"])
        .arg(samples().join("kinds.yaml"))
        .args(["--namespace-labels", "istio.io/rev=canary"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("StatefulSet/mongodb in namespace default: NOT INJECTED\n  why: namespace label istio.io/rev=canary names no installed remora revision (installed: default)"),
        "{text}"
    );
    let out = Command::new(BIN)
        .args(["check-inject", "-f"])
        .arg(samples().join("kinds.yaml"))
        .args(["--revision", "Canary"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "remora-webhook: --revision \"Canary\": must be lowercase letters, digits and '-', starting and ending with a letter or digit (e.g. canary, 1-2-0)\n"
    );
}

/// The proxy container of one review's patched pod.
async fn injected_proxy(s: &Served, uid: &str) -> Value {
    let cfg = client_config(&[s.cert_pem.as_bytes()]).unwrap();
    let mut c = Client::connect(s.addr, "localhost", cfg).await.unwrap();
    let pod = json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"generateName": "web-", "labels": {"app": "web"}},
        "spec": {"containers": [{"name": "web", "image": "nginx"}]}});
    let body = serde_json::to_vec(&review::review_for(&pod, uid, "shop")).unwrap();
    let (status, answer) = c.post("/inject", Bytes::from(body)).await.unwrap();
    assert_eq!(status, 200);
    let v: Value = serde_json::from_slice(&answer).unwrap();
    let patch = review::response_patch(&v).unwrap().unwrap();
    let mut out = pod.clone();
    json_patch::patch(&mut out, &patch).unwrap();
    let mut proxy = out["spec"]["initContainers"][0].clone();
    assert_eq!(proxy["name"], "remora-proxy");
    // Carry what the pod level says about identity along, for the asserts.
    proxy["x-pod-volumes"] = out["spec"]["volumes"].clone();
    proxy["x-pod-labels"] = out["metadata"]["labels"].clone();
    proxy
}

fn env_of<'a>(c: &'a Value, name: &str) -> Option<&'a Value> {
    c["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == name)
        .map(|e| &e["value"])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ca_off_means_no_identity_unless_an_address_is_given() {
    // --ca-addr off and --inject-ca-address auto (the default): nothing about identity.
    let s = serve().await;
    lines_until(&s.stderr, |l| l.contains("not injecting workload identity"));
    let proxy = injected_proxy(&s, "uid-off").await;
    assert_eq!(env_of(&proxy, "REMORA_CA_ADDRESS"), None);
    assert_eq!(
        proxy["x-pod-labels"],
        json!({"app": "web", "service.istio.io/canonical-name": "web",
               "service.istio.io/canonical-revision": "latest"})
    );
    assert_eq!(proxy["x-pod-volumes"].as_array().unwrap().len(), 2);
    drop(s);

    // An explicit address (a CA run elsewhere), with the trust domain and audience flags.
    let s = serve_with(&[
        "--inject-ca-address",
        "ca.mesh.example:443",
        "--trust-domain",
        "example.org",
        "--ca-token-audience",
        "mesh-ca",
    ])
    .await;
    lines_until(&s.stderr, |l| {
        l.contains("injecting workload identity") && l.contains("ca.mesh.example:443")
    });
    let proxy = injected_proxy(&s, "uid-on").await;
    assert_eq!(
        env_of(&proxy, "REMORA_CA_ADDRESS"),
        Some(&json!("ca.mesh.example:443"))
    );
    assert_eq!(
        env_of(&proxy, "REMORA_TRUST_DOMAIN"),
        Some(&json!("example.org"))
    );
    assert_eq!(
        proxy["x-pod-labels"]["security.istio.io/tlsMode"],
        json!("istio")
    );
    let token = proxy["x-pod-volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "remora-ca-token")
        .expect("the token volume");
    assert_eq!(
        token["projected"]["sources"][0]["serviceAccountToken"]["audience"],
        "mesh-ca"
    );
}

#[test]
fn bad_identity_settings_fail_with_one_line_naming_them() {
    let dir = tempfile::tempdir().unwrap();
    let bad_cfg = dir.path().join("bad-identity.yaml");
    std::fs::write(
        &bad_cfg,
        "identity:\n  caAddress: remora-ca.remora-system.svc\n",
    )
    .unwrap();
    let cases: [(&[&str], &str); 5] = [
        (
            &["--inject-ca-address", "remora-ca"],
            r#"remora-webhook: --inject-ca-address "remora-ca": no port: expected auto, off or HOST:PORT (e.g. remora-ca.remora-system.svc:15012)"#,
        ),
        (
            &["--inject-ca-address", "https://ca:443"],
            r#"remora-webhook: --inject-ca-address "https://ca:443": host "https://ca" is not a DNS name or an IP address"#,
        ),
        (
            &[
                "--inject-ca-address",
                "ca:443",
                "--trust-domain",
                "Example.org",
            ],
            r#"remora-webhook: --trust-domain "Example.org": a SPIFFE trust domain"#,
        ),
        (
            &["--inject-ca-address", "ca:443", "--ca-token-audience", ""],
            r#"remora-webhook: --ca-token-audience "": must be 1-256 characters without spaces"#,
        ),
        (
            &["--config", bad_cfg.to_str().unwrap()],
            r#"config field identity.caAddress: invalid value "remora-ca.remora-system.svc": no port"#,
        ),
    ];
    for (args, want) in cases {
        let mut cmd = Command::new(BIN);
        cmd.args(["serve", "--ca-addr", "off", "--listen", "127.0.0.1:0"]);
        if !args.contains(&"--config") {
            cmd.arg("--config").arg(dir.path().join("absent.yaml"));
        }
        let out = cmd
            .args(args)
            .env_remove("REMORA_INJECT_CA_ADDRESS")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        let last = err.lines().last().unwrap_or("");
        assert!(last.contains(want), "{args:?}: {err}");
    }
}

/// The canary upgrade with two real injector processes, revision `default` (the installed `a`)
/// and `b`, the API server's part played by the webhook entries' selectors (the same definition
/// the shipped configurations are rendered from): a namespace on the default revision, relabelled
/// `istio.io/rev=b`, then labelled with a tag pointing to `b`, then moved back. Each pod goes to
/// the process behind the selected entry's Service, at the entry's path; the injected pod's
/// `sidecar.istio.io/status` names the revision that injected it, and an entry sent to the wrong
/// revision's process is not injected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canary_two_revisions_relabel_and_tag() {
    use remora_webhook::selectors::{revision_name, select_with_tags, Tag, WEBHOOK_SERVICE};
    let a = serve_with(&["--revision", "default"]).await;
    let b = serve_with(&["--revision", "b"]).await;
    let installed = vec!["default".to_string(), "b".to_string()];
    let tags = [Tag::parse("prod=b").unwrap()];
    let pod = json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "web-1", "labels": {"app": "web"}},
        "spec": {"containers": [{"name": "web", "image": "nginx"}]}});
    // The process behind a revision's Service.
    let by_service = |svc: &str| -> &Served {
        if svc == revision_name(WEBHOOK_SERVICE, "b") {
            &b
        } else {
            &a
        }
    };
    let send = |to: &'static str, s: &Served, path: String| {
        let cfg = client_config(&[s.cert_pem.as_bytes()]).unwrap();
        let addr = s.addr;
        let pod = pod.clone();
        async move {
            let mut c = Client::connect(addr, "localhost", cfg).await.unwrap();
            let body = serde_json::to_vec(&review::review_for(&pod, "uid-1", "shop")).unwrap();
            let (status, body) = c.post(&path, Bytes::from(body)).await.unwrap();
            assert_eq!(status, 200, "{to}: {}", String::from_utf8_lossy(&body));
            let v: Value = serde_json::from_slice(&body).unwrap();
            let status = review::response_patch(&v)
                .unwrap()
                .map(|p| serde_json::to_string(&p).unwrap())
                .unwrap_or_default();
            (v, status)
        }
    };
    // (namespace labels, the revision that must inject)
    for (labels, want) in [
        (json!({"istio-injection": "enabled"}), "default"),
        (json!({"istio.io/rev": "b"}), "b"),
        (json!({"istio.io/rev": "prod"}), "b"),
        (json!({"istio-injection": "enabled"}), "default"),
    ] {
        let ns_labels: std::collections::BTreeMap<String, String> =
            serde_json::from_value(labels.clone()).unwrap();
        let sel = select_with_tags("shop", &ns_labels, &Default::default(), &installed, &tags)
            .unwrap_or_else(|e| panic!("{labels}: {e}"));
        assert_eq!(sel.revision, want, "{labels}");
        let path = match &sel.tag {
            Some(t) => sel.entry.tag_path(&sel.revision, t),
            None => sel.entry.path(&sel.revision),
        };
        let target = by_service(&revision_name(WEBHOOK_SERVICE, &sel.revision));
        let (v, patch) = send("selected", target, path.clone()).await;
        assert_eq!(v["response"]["allowed"], true, "{labels}: {v}");
        assert!(
            patch.contains(&format!("\\\"revision\\\":\\\"{want}\\\"")),
            "{labels}: injected by {want}: {patch}"
        );
        // The other revision's process, sent the same entry, injects nothing.
        let other = if want == "b" { &a } else { &b };
        let (v, patch) = send("other", other, path).await;
        assert_eq!(v["response"]["allowed"], true, "{labels}: {v}");
        assert!(
            patch.is_empty(),
            "{labels}: the other revision injected: {patch}"
        );
    }
}
