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

/// What the webhook injects for workload identity runs as injected: with no CA answering at
/// the install's address, the proxy gets no certificate and the pod never turns ready.
#[test]
fn injected_identity_without_a_ca_keeps_the_pod_unready() {
    let mut lab = Lab::start(LabOptions {
        inject_ca_address: Some(remora_webhook::config::DEFAULT_CA_ADDRESS.to_string()),
        timeout: Duration::from_secs(8),
        ..LabOptions::default()
    })
    .expect("lab starts");
    lab.create_namespace("shop", &[("istio-injection", "enabled")])
        .unwrap();
    // No CA answers at the install's address in the lab: the proxy never gets its certificate
    // and stays unready, saying what it waits for.
    let err = lab.apply(IDENTITY_POD, "shop").unwrap_err();
    let text = format!("{err:#}\n{}", lab.logs(40));
    assert!(text.contains("/healthz/ready answered 503"), "{text}");
    assert!(
        text.contains("no workload certificate yet")
            && text.contains("remora-ca.remora-system.svc:15012"),
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
    assert_eq!(
        pod.object["metadata"]["labels"],
        serde_json::json!({"app": "web"})
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
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}");
    assert!(!netns_exists(&node), "node namespace deleted");
    assert!(
        !netns_exists(&format!("rl{pid}x0-p0")),
        "pod namespace deleted"
    );
}
