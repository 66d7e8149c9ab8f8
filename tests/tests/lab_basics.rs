//! The lab itself, without the mesh: pods, Services, the kube-proxy stand-in and the hosts files.

use remora_e2e::{Lab, LabOptions};
use std::collections::BTreeMap;
use std::time::Duration;

const BOOKINFO: &str = include_str!("../fixtures/bookinfo.yaml");

#[test]
fn unmeshed_bookinfo_spreads_over_backends_through_kube_proxy() {
    let mut lab = Lab::start(LabOptions::default()).expect("lab starts");
    lab.create_namespace("plain", &[]).unwrap();
    lab.apply(BOOKINFO, "plain")
        .unwrap_or_else(|e| panic!("{e:#}\n{}", lab.logs(20)));
    let client = lab.pod("client").unwrap();
    assert!(
        !client.reviewed && !client.meshed,
        "an unlabelled namespace is not sent to the webhook"
    );
    let mut versions: BTreeMap<String, u32> = BTreeMap::new();
    for _ in 0..30 {
        let r = lab
            .http(client, "productpage", 9080, "/productpage", &[])
            .unwrap();
        assert_eq!(r.status, 200);
        let v = r.json().unwrap();
        assert_eq!(v["details"]["service"], "details");
        let rv = v["reviews"]["version"]
            .as_str()
            .unwrap_or("none")
            .to_string();
        if rv != "v1" {
            assert_eq!(v["reviews"]["ratings"]["service"], "ratings", "{v}");
        }
        *versions.entry(rv).or_default() += 1;
    }
    assert_eq!(
        versions.keys().collect::<Vec<_>>(),
        ["v1", "v2", "v3"],
        "kube-proxy spreads over all backends: {versions:?}"
    );
    let rules = lab.nat_rules(client).unwrap();
    assert!(rules.contains("-A OUTPUT -j KUBE-SERVICES"), "{rules}");
    assert!(rules.contains("--mode random --probability"), "{rules}");
}

/// A pod with the real remora-init capture (the webhook's args) and a capture probe on 15001
/// running as the proxy's uid, plus a backend Service. No webhook: the spec is written by hand.
const CAPTURE_ORDER: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: backend}
spec:
  selector: {app: backend}
  ports: [{name: http, port: 8080, targetPort: 8080}]
---
apiVersion: v1
kind: Pod
metadata: {name: backend, labels: {app: backend}}
spec:
  containers:
  - name: backend
    command: ["lab-app", "http", "--service", "backend", "--port", "8080"]
    readinessProbe: {tcpSocket: {port: 8080}}
---
apiVersion: v1
kind: Pod
metadata: {name: captured, labels: {app: captured}}
spec:
  initContainers:
  - name: remora-init
    command: ["remora-init"]
    args: ["-p", "15001", "-z", "15006", "-u", "1337", "-m", "REDIRECT", "-i", "*", "-x", "", "-b", "*", "-d", "15090,15021,15020"]
    securityContext:
      runAsUser: 0
      allowPrivilegeEscalation: false
      capabilities: {add: [NET_ADMIN, NET_RAW], drop: [ALL]}
  containers:
  - name: probe
    command: ["lab-app", "orig-dst", "--port", "15001"]
    securityContext: {runAsUser: 1337, runAsGroup: 1337}
"#;

fn read_all(mut s: std::net::TcpStream) -> String {
    use std::io::{Read, Write};
    s.set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .unwrap();
    let _ = s.write_all(b"GET / HTTP/1.0\r\nHost: backend:8080\r\n\r\n");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

/// kube-proxy's DNAT must come after the sidecar's capture jump in OUTPUT: the app's connection to
/// a service IP is captured with the service IP as original destination (as in a cluster, where
/// kube-proxy runs on the node), the proxy's own connection (uid 1337) is DNATed to a backend.
/// Placed first, the DNAT would hide the connection from capture entirely (nat is consulted once).
#[test]
fn kube_proxy_dnat_runs_after_capture() {
    let mut lab = Lab::start(LabOptions::default()).expect("lab starts");
    lab.create_namespace("plain", &[]).unwrap();
    lab.apply(CAPTURE_ORDER, "plain")
        .unwrap_or_else(|e| panic!("{e:#}\n{}", lab.logs(20)));
    let pod = lab.pod("captured").unwrap();
    let backend = lab.pod("backend").unwrap();
    let vip = lab.service("plain", "backend").unwrap().vip;
    let addr = std::net::SocketAddr::from((vip, 8080));
    let t = std::time::Duration::from_secs(10);

    let rules = lab.nat_rules(pod).unwrap();
    let output: Vec<&str> = rules
        .lines()
        .filter(|l| l.starts_with("-A OUTPUT"))
        .collect();
    assert_eq!(output.len(), 2, "{rules}");
    assert!(
        output[0].contains("REMORA_OUTPUT") && output[1].ends_with("-j KUBE-SERVICES"),
        "{rules}"
    );

    let app = read_all(pod.netns.connect(addr, t).unwrap());
    assert_eq!(
        app.trim(),
        format!("ORIG {vip}:8080"),
        "the app's connection is captured first"
    );
    let proxy = read_all(pod.netns.connect_as(addr, 1337, 1337, t).unwrap());
    assert!(
        proxy.starts_with("HTTP/1.0 200")
            && proxy.contains(&format!("\"pod\":\"{}\"", backend.name)),
        "{proxy}"
    );

    // The wrong order, for contrast: DNAT first, capture never sees the connection.
    pod.netns
        .exec(&[
            "iptables",
            "-t",
            "nat",
            "-D",
            "OUTPUT",
            "-j",
            "KUBE-SERVICES",
        ])
        .unwrap();
    pod.netns
        .exec(&[
            "iptables",
            "-t",
            "nat",
            "-I",
            "OUTPUT",
            "1",
            "-j",
            "KUBE-SERVICES",
        ])
        .unwrap();
    let bypassed = read_all(pod.netns.connect(addr, t).unwrap());
    assert!(
        bypassed.starts_with("HTTP/1.0 200"),
        "with DNAT first the app reaches the backend uncaptured: {bypassed}"
    );
}

/// Namespaces of a lab whose process died are found and removed; live labs are left alone.
#[test]
fn stale_lab_namespaces_are_cleaned_up() {
    let live = Lab::start(LabOptions::default()).expect("lab starts");
    // 4194305 is above the kernel's largest possible pid (2^22), so no such process exists.
    // The lab number is this process's pid: a leftover of an earlier, interrupted run (another
    // pid) cannot make the `add` fail, and is cleaned up below like any stale namespace.
    let dead = format!("rl4194305x{}-node", std::process::id());
    let dead = dead.as_str();
    remora_e2e::netns::run("ip", &["netns", "add", dead]).unwrap();
    let stale = remora_e2e::lab::stale_namespaces().unwrap();
    assert!(stale.contains(&(dead.to_string(), 4194305)), "{stale:?}");
    assert!(
        !stale.iter().any(|(n, _)| n.starts_with(&live.id)),
        "{stale:?}"
    );
    let done = remora_e2e::lab::cleanup_stale().unwrap();
    assert!(done.iter().any(|d| d.starts_with(dead)), "{done:?}");
    let list = remora_e2e::netns::run("ip", &["netns", "list"]).unwrap();
    assert!(
        !list.contains(dead) && list.contains(&format!("{}-node", live.id)),
        "{list}"
    );
}

fn netns_exists(name: &str) -> bool {
    std::path::Path::new("/run/netns").join(name).exists()
}

/// A pod that cannot start makes `apply` fail with the reason; the lab still tears everything down.
#[test]
fn failing_init_container_is_reported_and_torn_down() {
    let mut lab = Lab::start(LabOptions::default()).expect("lab starts");
    let yaml = r#"
apiVersion: v1
kind: Pod
metadata: {name: broken}
spec:
  initContainers:
  - {name: setup, command: ["sh", "-c", "echo cannot configure; exit 3"]}
  containers:
  - {name: app, command: ["lab-app", "http", "--service", "x"]}
"#;
    let err = format!("{:#}", lab.apply(yaml, "plain").unwrap_err());
    assert!(
        err.contains("init container setup of pod broken failed")
            && err.contains("cannot configure"),
        "{err}"
    );
    let node = format!("{}-node", lab.id);
    let pod_ns = format!("{}-p0", lab.id);
    assert!(netns_exists(&node), "the lab itself keeps running");
    assert!(
        !netns_exists(&pod_ns),
        "the pod that failed is cleaned up at once"
    );
    let dir = lab.dir().to_path_buf();
    drop(lab);
    assert!(
        !netns_exists(&node) && !netns_exists(&pod_ns),
        "namespaces deleted"
    );
    assert!(!std::path::Path::new("/etc/netns").join(&pod_ns).exists());
    assert!(!dir.exists(), "lab directory removed");
}

const IDENTITY_POD: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  selector: {app: web}
  ports: [{name: http, port: 8080, targetPort: 8080}]
---
apiVersion: v1
kind: Pod
metadata: {name: web, labels: {app: web}}
spec:
  serviceAccountName: web-sa
  containers:
  - {name: web, command: ["lab-app", "http", "--service", "web", "--port", "8080"], readinessProbe: {tcpSocket: {port: 8080}}}
"#;

/// The proxy's environment as it runs (its process's initial environment).
fn proxy_env(pod: &remora_e2e::lab::Pod) -> BTreeMap<String, String> {
    let proxy = pod.container("remora-proxy").expect("a proxy container");
    let raw = std::fs::read(format!("/proc/{}/environ", proxy.proc.pid())).unwrap();
    raw.split(|b| *b == 0)
        .filter_map(|kv| {
            let kv = String::from_utf8_lossy(kv);
            kv.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
        })
        .collect()
}

/// Reads `path` as the proxy's uid would.
fn read_as_proxy(path: &str) -> String {
    let out = std::process::Command::new("setpriv")
        .args([
            "--reuid=1337",
            "--regid=1337",
            "--clear-groups",
            "cat",
            path,
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "uid 1337 cannot read {path}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Workload identity runs as a cluster install runs it: the lab's control plane (the webhook
/// with its mesh CA on the node) stores its root in Secret remora-system/remora-ca through the
/// lab's API and publishes it to the namespaces a webhook entry may inject (not to one labelled
/// istio-injection=disabled); the kubelet stand-in mounts that root
/// and writes the projected token, both readable by the proxy's uid; the proxy resolves the
/// injected CA address, gets its token reviewed and holds a certificate for its service
/// account; the app answers.
#[test]
fn injected_identity_gets_a_certificate_from_the_labs_ca() {
    let mut lab = Lab::start(LabOptions::default()).expect("lab starts");
    lab.create_namespace("shop", &[("istio-injection", "enabled")])
        .unwrap();
    // Before the webhook (and its CA) starts: its first publication pass sees both.
    lab.create_namespace("plain", &[]).unwrap();
    lab.create_namespace("off", &[("istio-injection", "disabled")])
        .unwrap();
    lab.apply(IDENTITY_POD, "shop")
        .unwrap_or_else(|e| panic!("{e:#}\n{}", lab.logs(20)));
    let pod = lab.pod("shop/web").unwrap();
    assert!(pod.reviewed && pod.meshed);
    assert_eq!(
        pod.object["metadata"]["labels"]["security.istio.io/tlsMode"],
        "istio"
    );
    let env = proxy_env(pod);
    assert_eq!(
        env.get("REMORA_CA_ADDRESS").map(String::as_str),
        Some("remora-ca.remora-system.svc:15012")
    );
    assert_eq!(
        env.get("REMORA_TRUST_DOMAIN").map(String::as_str),
        Some("cluster.local")
    );
    assert_eq!(
        env.get("SERVICE_ACCOUNT").map(String::as_str),
        Some("web-sa")
    );
    let root_file = &env["REMORA_CA_ROOT_FILE"];
    let token_file = &env["REMORA_CA_TOKEN_FILE"];
    // The lab points the in-container paths at its directories.
    assert!(
        root_file.starts_with(lab.dir().to_str().unwrap()),
        "{root_file}"
    );
    assert!(root_file.ends_with("/root-cert.pem"), "{root_file}");
    assert!(token_file.ends_with("/remora-ca-token"), "{token_file}");

    // The root the pod mounts is the CA's: the one it stored in its Secret and published.
    let root = read_as_proxy(root_file);
    assert!(root.starts_with("-----BEGIN CERTIFICATE-----"), "{root}");
    let secret = lab
        .api()
        .object("secrets", "remora-system", "remora-ca")
        .expect("the CA stored its root Secret through the lab's API");
    use base64::Engine as _;
    let stored = base64::engine::general_purpose::STANDARD
        .decode(secret["data"]["root-cert.pem"].as_str().unwrap())
        .unwrap();
    assert_eq!(root.as_bytes(), stored.as_slice());
    let cm = lab
        .api()
        .object("configmaps", "shop", "remora-ca-root-cert")
        .expect("the CA published the root to the namespace");
    assert_eq!(cm["data"]["root-cert.pem"].as_str(), Some(root.as_str()));
    // An unlabelled namespace gets it too (a pod there may opt in with its own labels), one
    // labelled istio-injection=disabled does not.
    assert_eq!(
        lab.api()
            .object("configmaps", "plain", "remora-ca-root-cert")
            .expect("the CA published the root to the unlabelled namespace")["data"]
            ["root-cert.pem"]
            .as_str(),
        Some(root.as_str())
    );
    assert!(
        lab.api()
            .object("configmaps", "off", "remora-ca-root-cert")
            .is_none(),
        "a namespace labelled istio-injection=disabled gets no root"
    );

    // The projected token: a JWT for the CA's audience, bound to the pod, 12 h.
    let token = read_as_proxy(token_file);
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3, "JWT-shaped: {token}");
    let claims: serde_json::Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(parts[1])
            .unwrap(),
    )
    .unwrap();
    assert_eq!(claims["aud"], serde_json::json!(["remora-ca"]));
    assert_eq!(claims["sub"], "system:serviceaccount:shop:web-sa");
    assert_eq!(claims["kubernetes.io"]["pod"]["name"], "web");
    let life = claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap();
    assert_eq!(life, 43_200);

    // The proxy is ready with its certificate (the lab waited for its readiness).
    let dump = lab.http_in_pod(pod, 15020, "GET", "/config_dump").unwrap();
    assert_eq!(dump.status, 200);
    let id = &dump.json().unwrap()["identity"];
    assert_eq!(
        id["spiffe_id"], "spiffe://cluster.local/ns/shop/sa/web-sa",
        "{id}"
    );
    assert_eq!(id["state"], "valid", "{id}");
    assert_eq!(id["ca_address"], "remora-ca.remora-system.svc:15012");
    let chain: Vec<String> = serde_json::from_value(id["chain_pem"].clone()).unwrap();
    assert_eq!(
        chain.last().map(|c| c.trim()),
        Some(root.trim()),
        "the chain ends in the CA's root"
    );
    assert!(id["expires_in_seconds"].as_i64().unwrap() > 3600, "{id}");

    // The CA asked the API about this very token, for its audience, and was told yes.
    let reviews: Vec<_> = lab
        .api()
        .requests()
        .into_iter()
        .filter(|r| r.path() == "/apis/authentication.k8s.io/v1/tokenreviews")
        .collect();
    assert!(!reviews.is_empty());
    let body = reviews[0].body.as_ref().unwrap();
    assert_eq!(
        body["spec"]["token"].as_str().map(str::trim),
        Some(token.trim())
    );
    assert_eq!(body["spec"]["audiences"], serde_json::json!(["remora-ca"]));
    let log = std::fs::read_to_string(&lab.webhook().unwrap().proc.log).unwrap();
    assert!(
        log.contains("certificate issued for spiffe://cluster.local/ns/shop/sa/web-sa")
            && log.contains("\"pod\":\"web\""),
        "{log}"
    );

    // The app answers through its sidecar.
    let r = lab.http(pod, "web", 8080, "/", &[]).unwrap();
    assert_eq!(r.status, 200);
}

/// Proxies sent to a CA that does not answer (an address nothing in the lab resolves) get no
/// certificate, and the pod never turns ready: the proxy says what it waits for.
#[test]
fn identity_from_an_unreachable_ca_keeps_the_pod_unready() {
    let mut lab = Lab::start(LabOptions {
        inject_ca_address: Some("remora-ca.elsewhere.svc:15012".to_string()),
        timeout: Duration::from_secs(8),
        ..LabOptions::default()
    })
    .expect("lab starts");
    lab.create_namespace("shop", &[("istio-injection", "enabled")])
        .unwrap();
    let err = lab.apply(IDENTITY_POD, "shop").unwrap_err();
    let text = format!("{err:#}\n{}", lab.logs(40));
    assert!(text.contains("/healthz/ready answered 503"), "{text}");
    assert!(
        text.contains("no workload certificate yet")
            && text.contains("remora-ca.elsewhere.svc:15012"),
        "{text}"
    );
}

/// With identity injection off the pod gets none of it, and runs the same.
#[test]
fn without_identity_nothing_of_it_is_injected() {
    let mut lab = Lab::start(LabOptions {
        inject_ca_address: None,
        ..LabOptions::default()
    })
    .expect("lab starts");
    lab.create_namespace("shop", &[("istio-injection", "enabled")])
        .unwrap();
    lab.apply(IDENTITY_POD, "shop")
        .unwrap_or_else(|e| panic!("{e:#}\n{}", lab.logs(20)));
    let pod = lab.pod("shop/web").unwrap();
    assert!(pod.reviewed && pod.meshed);
    // No `security.istio.io/tlsMode`; Istio's canonical-service labels are there regardless.
    assert_eq!(
        pod.object["metadata"]["labels"],
        serde_json::json!({"app": "web", "service.istio.io/canonical-name": "web",
                           "service.istio.io/canonical-revision": "latest"})
    );
    let vols: Vec<&str> = pod.object["spec"]["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert_eq!(vols, ["remora-rules", "remora-podinfo"]);
    let env = proxy_env(pod);
    assert!(
        !env.keys()
            .any(|k| k.starts_with("REMORA_CA") || k == "REMORA_TRUST_DOMAIN"),
        "{env:?}"
    );
    let r = lab.http(pod, "web", 8080, "/", &[]).unwrap();
    assert_eq!(r.status, 200);
}

/// `remora-lab up` runs meshed Bookinfo until SIGINT, then tears it down and exits 0.
#[test]
fn lab_cli_tears_down_on_sigint() {
    use std::io::BufRead;
    let bin_dir = remora_e2e::admission::default_bin_dir();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_remora-lab"))
        .arg("--bin-dir")
        .arg(&bin_dir)
        .arg("up")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let node = format!("rl{pid}x0-node");
    let stdout = child.stdout.take().unwrap();
    let mut lines = std::io::BufReader::new(stdout).lines();
    let mut seen = Vec::new();
    // Generous: the whole meshed Bookinfo starts (webhook, init, proxies) on a loaded machine.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(300);
    let mut ready = false;
    while std::time::Instant::now() < deadline {
        match lines.next() {
            Some(Ok(l)) => {
                ready |= l.contains("runs until Ctrl-C");
                seen.push(l);
                if ready {
                    break;
                }
            }
            _ => break,
        }
    }
    if !ready {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGINT,
        );
        let out = child.wait_with_output().unwrap();
        panic!(
            "remora-lab up did not come up:\n{}\n{}",
            seen.join("\n"),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert!(
        seen.iter()
            .any(|l| l.starts_with("productpage-v1-") && l.contains("remora-proxy")),
        "{seen:?}"
    );
    assert!(netns_exists(&node));
    // The curl line it prints for the ingress gateway works (from a pod outside the mesh);
    // the gateway reloads its rules a moment after they are written: bounded retries.
    // HTTP, and HTTPS with the gateway's test certificate.
    let mut gateway_lines = Vec::new();
    for l in lines.by_ref().take(5).map_while(Result::ok) {
        if l.contains("ingress gateway") || l.contains("HTTPS, the gateway") {
            gateway_lines.push(l);
        }
        if gateway_lines.len() == 2 {
            break;
        }
    }
    if gateway_lines.len() == 1 {
        gateway_lines.push("(no HTTPS line printed)".into());
    }
    // Checked after the lab is torn down, so a failure leaves nothing behind.
    let check = |line: Option<&str>| -> Result<(), String> {
        match line {
            Some(l) if l.trim_start().starts_with("ip netns exec") => {
                let argv: Vec<&str> = l.split_whitespace().take_while(|w| *w != "#").collect();
                let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
                loop {
                    let body = std::process::Command::new(argv[0])
                        .args(&argv[1..])
                        .args(["--max-time", "10"])
                        .output()
                        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                        .unwrap_or_else(|e| format!("{e}"));
                    if body.contains("\"service\":\"productpage\"") {
                        break Ok(());
                    }
                    if std::time::Instant::now() >= deadline {
                        break Err(format!("{l}: no product page within 30 s: {body}"));
                    }
                    std::thread::sleep(std::time::Duration::from_millis(200));
                }
            }
            Some(other) => Err(format!("not a command line: {other}")),
            None => {
                eprintln!("no ingress gateway line to try");
                Ok(())
            }
        }
    };
    let gateway_check = gateway_lines
        .iter()
        .map(|l| check(Some(l)))
        .collect::<Result<Vec<()>, String>>()
        .and_then(|v| if v.is_empty() { check(None) } else { Ok(()) });
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let status = child.wait().unwrap();
    if let Err(e) = gateway_check {
        panic!("{e}");
    }
    assert!(status.success(), "{status}");
    assert!(!netns_exists(&node), "node namespace deleted");
    assert!(
        !netns_exists(&format!("rl{pid}x0-p0")),
        "pod namespace deleted"
    );
}
