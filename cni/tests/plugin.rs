//! The `remora-cni` binary called exactly as a container runtime calls a chained plugin (root
//! only): `CNI_*` in the environment, the network configuration with `prevResult` on stdin, the
//! pod's network namespace one the test created (wired only to a peer namespace, no route out).
//! Real connections then show where traffic lands, with the traffic lab of `remora-init`'s own
//! netns tests (`init/tests/common/lab.rs`).

#[path = "../../init/tests/common/lab.rs"]
mod lab;
#[path = "../../init/tests/common/ns.rs"]
mod ns;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use lab::*;
use ns::Netns;
use serde_json::{json, Value};

const PLUGIN: &str = env!("CARGO_BIN_EXE_remora-cni");
const MARK: (&str, &str) = ("remora.dev/capture", "cni");

/// `remora-init`, built beside the plugin (`cargo build --bins`; scripts/test builds every
/// target first).
fn remora_init_bin() -> PathBuf {
    let p = Path::new(PLUGIN).with_file_name("remora-init");
    assert!(
        p.is_file(),
        "{} is missing: build it first (cargo build -p remora-init --bins)",
        p.display()
    );
    p
}

/// The node side: pod objects the plugin reads, its state and log.
struct Node {
    dir: tempfile::TempDir,
}

impl Node {
    fn new() -> Node {
        Node {
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    fn pods(&self) -> PathBuf {
        self.dir.path().join("pods")
    }

    fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// Write the pod object the plugin will read.
    fn pod(&self, namespace: &str, name: &str, pod: Value) {
        let dir = self.pods().join(namespace);
        std::fs::create_dir_all(&dir).expect("pods dir");
        std::fs::write(dir.join(format!("{name}.json")), pod.to_string()).expect("pod file");
    }

    fn config(&self, version: &str) -> Value {
        json!({
            "cniVersion": version,
            "name": "k8s-pod-network",
            "type": "remora-cni",
            "podInfo": {"source": "file", "dir": self.pods(), "waitMs": 300},
            "stateDir": self.state(),
            "logFile": self.dir.path().join("remora-cni.log"),
            "prevResult": prev_result(version),
        })
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("remora-cni.log")).unwrap_or_default()
    }
}

/// What a primary plugin (bridge, ptp) would have returned.
fn prev_result(version: &str) -> Value {
    json!({
        "cniVersion": version,
        "interfaces": [{"name": "eth0", "mac": "0a:58:0a:d5:00:02", "sandbox": "/var/run/netns/x"}],
        "ips": [{"address": "10.213.0.2/24", "gateway": "10.213.0.1", "interface": 0}],
        "dns": {}
    })
}

fn marked_pod(annotations: &[(&str, &str)]) -> Value {
    let mut ann: serde_json::Map<String, Value> = annotations
        .iter()
        .map(|(k, v)| (k.to_string(), json!(v)))
        .collect();
    ann.insert(MARK.0.into(), json!(MARK.1));
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"annotations": ann},
        "spec": {"containers": [{"name": "app"}, {"name": "remora-proxy", "securityContext": {"runAsUser": 1337}}]}
    })
}

/// One plugin call. `env` is the full CNI environment (PATH is added).
fn call(env: &[(&str, &str)], stdin: &str) -> Output {
    let mut c = Command::new(PLUGIN);
    c.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        c.env(k, v);
    }
    let mut child = c.spawn().expect("spawn remora-cni");
    if let Some(mut s) = child.stdin.take() {
        let _ = s.write_all(stdin.as_bytes());
    }
    child.wait_with_output().expect("wait remora-cni")
}

/// A kubelet's call for pod `namespace/name` in network namespace `netns`.
fn cni(command: &str, netns: &Netns, container: &str, pod: (&str, &str), config: &Value) -> Output {
    let path = format!("/var/run/netns/{}", netns.name);
    let args = format!(
        "IgnoreUnknown=1;K8S_POD_NAMESPACE={};K8S_POD_NAME={};K8S_POD_INFRA_CONTAINER_ID={container}",
        pod.0, pod.1
    );
    call(
        &[
            ("CNI_COMMAND", command),
            ("CNI_CONTAINERID", container),
            ("CNI_NETNS", &path),
            ("CNI_IFNAME", "eth0"),
            ("CNI_PATH", "/opt/cni/bin"),
            ("CNI_ARGS", &args),
        ],
        &config.to_string(),
    )
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The call succeeded; its stdout as JSON (Null when empty).
fn ok(out: &Output) -> Value {
    assert!(
        out.status.success(),
        "remora-cni failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    let s = text(&out.stdout);
    if s.trim().is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&s).unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {s}"))
    }
}

/// The call failed as the spec says: exit status non-zero, the error result on stdout, one line
/// on stderr. Returns the error result.
fn err(out: &Output) -> Value {
    assert!(
        !out.status.success(),
        "expected a failure, got {}",
        text(&out.stdout)
    );
    let v: Value = serde_json::from_str(&text(&out.stdout))
        .unwrap_or_else(|e| panic!("error result is not JSON ({e}): {}", text(&out.stdout)));
    for k in ["cniVersion", "code", "msg", "details"] {
        assert!(v.get(k).is_some(), "error result lacks {k}: {v}");
    }
    let stderr = text(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "stderr: {stderr}");
    assert!(stderr.starts_with("remora-cni: error: "), "{stderr}");
    v
}

/// Our chains in the namespace's nat table (nft backend, as auto picks in a fresh namespace).
fn remora_chains(netns: &Netns) -> Vec<String> {
    netns
        .nat_rules("iptables-nft-save")
        .into_iter()
        .filter(|l| l.starts_with(":REMORA_"))
        .collect()
}

/// ADD for a marked pod, then the probes; the plugin's stdout is the previous result.
fn run_case(tag: &str, pod: Value, ipv6: bool, probes: Vec<Probe>) {
    let lab = Lab::new(&format!("c{tag}"), ipv6);
    lab.assert_baseline(tag, &probes);
    let node = Node::new();
    node.pod("shop", "cart", pod);
    let config = node.config("1.0.0");
    let result = ok(&cni("ADD", &lab.pod, "ctr1", ("shop", "cart"), &config));
    assert_eq!(
        result,
        prev_result("1.0.0"),
        "ADD passes prevResult through"
    );
    let log = node.log();
    assert!(
        log.contains("IPv4: installed rules match the plan"),
        "{log}"
    );
    if ipv6 {
        assert!(
            log.contains("IPv6: installed rules match the plan"),
            "{log}"
        );
    }
    let failures = lab.failures(&probes);
    assert!(
        failures.is_empty(),
        "{tag}:\n{}\nplugin log:\n{log}",
        failures.join("\n")
    );
}

#[test]
fn a_marked_pod_is_captured_like_a_default_sidecar() {
    use Side::*;
    run_case(
        "dflt",
        marked_pod(&[]),
        false,
        vec![
            inbound(Peer, ROOT, "10.213.0.2:9080"),
            app(Peer, ROOT, "10.213.0.2:15021"),
            app(Peer, ROOT, "10.213.0.2:15008"),
            outbound(Pod, ROOT, "10.213.0.1:8080"),
            outbound(Pod, ROOT, "10.214.0.1:8081"),
            // uid 1337 (the proxy) is exempt.
            peer(PROXY, "10.213.0.1:8080"),
            app(Pod, ROOT, "127.0.0.1:9080"),
            inbound(Pod, PROXY, "10.213.0.2:9080"),
            Probe {
                src: Some("127.0.0.6"),
                ..app(Pod, PROXY, "10.213.0.2:9080")
            },
        ],
    );
}

#[test]
fn port_annotations_select_what_is_captured() {
    use Side::*;
    run_case(
        "ports",
        marked_pod(&[
            ("traffic.sidecar.istio.io/includeInboundPorts", "9080"),
            ("traffic.sidecar.istio.io/excludeOutboundPorts", "8081"),
        ]),
        false,
        vec![
            inbound(Peer, ROOT, "10.213.0.2:9080"),
            app(Peer, ROOT, "10.213.0.2:9081"),
            outbound(Pod, ROOT, "10.213.0.1:8080"),
            peer(ROOT, "10.213.0.1:8081"),
        ],
    );
    run_case(
        "inexcl",
        marked_pod(&[
            ("traffic.sidecar.istio.io/excludeInboundPorts", "9081"),
            ("traffic.sidecar.istio.io/includeOutboundPorts", "8081"),
            ("traffic.sidecar.istio.io/includeOutboundIPRanges", ""),
        ]),
        false,
        vec![
            inbound(Peer, ROOT, "10.213.0.2:9080"),
            app(Peer, ROOT, "10.213.0.2:9081"),
            // No CIDR captured, but port 8081 always is.
            peer(ROOT, "10.213.0.1:8080"),
            outbound(Pod, ROOT, "10.213.0.1:8081"),
        ],
    );
}

#[test]
fn cidr_annotations_select_what_is_captured() {
    use Side::*;
    run_case(
        "cidrs",
        marked_pod(&[(
            "traffic.sidecar.istio.io/includeOutboundIPRanges",
            "10.214.0.0/24",
        )]),
        false,
        vec![
            outbound(Pod, ROOT, "10.214.0.1:8080"),
            peer(ROOT, "10.213.0.1:8080"),
        ],
    );
    run_case(
        "cidrx",
        marked_pod(&[(
            "traffic.sidecar.istio.io/excludeOutboundIPRanges",
            "10.214.0.0/24",
        )]),
        false,
        vec![
            peer(ROOT, "10.214.0.1:8080"),
            outbound(Pod, ROOT, "10.213.0.1:8080"),
        ],
    );
}

#[test]
fn the_proxy_uid_comes_from_the_pods_proxy_container() {
    use Side::*;
    let mut pod = marked_pod(&[]);
    pod["spec"]["containers"][1]["securityContext"]["runAsUser"] = json!(2000);
    let uid2000 = Who {
        uid: 2000,
        gid: 2000,
    };
    run_case(
        "uid",
        pod,
        false,
        vec![
            peer(uid2000, "10.213.0.1:8080"),
            outbound(Pod, PROXY, "10.213.0.1:8080"),
            outbound(Pod, ROOT, "10.213.0.1:8080"),
        ],
    );
}

#[test]
fn an_ipv6_pod_is_captured_in_both_families() {
    use Side::*;
    run_case(
        "v6",
        marked_pod(&[]),
        true,
        vec![
            inbound(Peer, ROOT, "[fd00:213::2]:9080"),
            outbound(Pod, ROOT, "[fd00:213::1]:8080"),
            peer(PROXY, "[fd00:213::1]:8080"),
            inbound(Peer, ROOT, "10.213.0.2:9080"),
            outbound(Pod, ROOT, "10.213.0.1:8080"),
        ],
    );
}

/// The rules the plugin installs for a pod's annotations are the rules `remora-init` installs
/// with the arguments the injector renders for those annotations (written out here as the
/// istio-iptables arguments Istio's injector gives them).
#[test]
fn the_plugin_installs_what_remora_init_installs() {
    type Case<'a> = (&'a [(&'a str, &'a str)], &'a [&'a str]);
    let cases: &[Case] = &[
        (
            &[],
            &[
                "-p",
                "15001",
                "-z",
                "15006",
                "-u",
                "1337",
                "-m",
                "REDIRECT",
                "-i",
                "*",
                "-x",
                "",
                "-b",
                "*",
                "-d",
                "15090,15021,15020",
            ],
        ),
        (
            &[
                ("traffic.sidecar.istio.io/includeInboundPorts", "9080,9081"),
                (
                    "traffic.sidecar.istio.io/excludeOutboundIPRanges",
                    "10.214.0.0/24",
                ),
                ("traffic.sidecar.istio.io/excludeOutboundPorts", "8081"),
                ("traffic.sidecar.istio.io/excludeInterfaces", "eth1"),
            ],
            &[
                "-p",
                "15001",
                "-z",
                "15006",
                "-u",
                "1337",
                "-m",
                "REDIRECT",
                "-i",
                "*",
                "-x",
                "10.214.0.0/24",
                "-b",
                "9080,9081",
                "-d",
                "15090,15021,15020",
                "-o",
                "8081",
                "-c",
                "eth1",
            ],
        ),
    ];
    let init = remora_init_bin();
    for (i, (annotations, init_args)) in cases.iter().enumerate() {
        let by_cni = Netns::new(&format!("eqc{i}"));
        let by_init = Netns::new(&format!("eqi{i}"));
        for n in [&by_cni, &by_init] {
            n.ip(&[
                "link", "add", "eth1", "type", "veth", "peer", "name", "eth1p",
            ]);
        }
        let node = Node::new();
        node.pod("shop", "cart", marked_pod(annotations));
        ok(&cni(
            "ADD",
            &by_cni,
            "ctr1",
            ("shop", "cart"),
            &node.config("1.0.0"),
        ));
        let init_out = by_init.exec(init.to_str().expect("path"), init_args);
        assert!(init_out.status.success(), "{}", text(&init_out.stderr));
        let (a, b) = (
            by_cni.nat_rules("iptables-nft-save"),
            by_init.nat_rules("iptables-nft-save"),
        );
        assert!(a.iter().any(|l| l.starts_with("-A REMORA_")), "{a:?}");
        assert_eq!(
            a, b,
            "case {i}: the plugin's nat table differs from remora-init's"
        );
    }
}

#[test]
fn check_add_again_and_del_remove_only_what_was_added() {
    let lab = Lab::new("cdel", false);
    let node = Node::new();
    node.pod("shop", "cart", marked_pod(&[]));
    let config = node.config("1.0.0");
    let to_peer = "10.213.0.1:8080".parse().expect("addr");
    let to_pod = "10.213.0.2:9080".parse().expect("addr");
    // Somebody else's rule in the same table: DEL must leave it.
    lab.pod.must(
        "iptables-nft",
        &[
            "-t", "nat", "-A", "OUTPUT", "-p", "udp", "--dport", "9999", "-j", "RETURN",
        ],
    );
    let foreign = "-A OUTPUT -p udp -m udp --dport 9999 -j RETURN".to_string();

    ok(&cni("ADD", &lab.pod, "ctr1", ("shop", "cart"), &config));
    assert!(node.state().join("ctr1").is_file());
    assert_eq!(
        ok(&cni("CHECK", &lab.pod, "ctr1", ("shop", "cart"), &config)),
        Value::Null
    );
    let first = lab.pod.nat_rules("iptables-nft-save");
    assert!(first.contains(&foreign));

    // A second ADD changes nothing.
    ok(&cni("ADD", &lab.pod, "ctr1", ("shop", "cart"), &config));
    assert_eq!(lab.pod.nat_rules("iptables-nft-save"), first);
    assert_eq!(
        probe(&lab.pod.name, ROOT, None, to_peer),
        "outbound 10.213.0.1:8080"
    );

    // CHECK notices a rule gone, and ADD puts it back.
    lab.pod
        .must("iptables-nft", &["-t", "nat", "-F", "REMORA_OUTPUT"]);
    let e = err(&cni("CHECK", &lab.pod, "ctr1", ("shop", "cart"), &config));
    assert_eq!(e["code"], 100);
    let msg = e["msg"].as_str().unwrap_or_default();
    assert!(
        msg.starts_with("pod shop/cart: the capture is not as programmed: IPv4: the installed remora rules differ from the plan"),
        "{msg}"
    );
    ok(&cni("ADD", &lab.pod, "ctr1", ("shop", "cart"), &config));
    ok(&cni("CHECK", &lab.pod, "ctr1", ("shop", "cart"), &config));

    // DEL removes the capture and nothing else.
    ok(&cni("DEL", &lab.pod, "ctr1", ("shop", "cart"), &config));
    assert_eq!(remora_chains(&lab.pod), Vec::<String>::new());
    assert!(lab.pod.nat_rules("iptables-nft-save").contains(&foreign));
    assert!(!node.state().join("ctr1").exists());
    assert_eq!(
        probe(&lab.pod.name, ROOT, None, to_peer),
        "peer 10.213.0.1:8080"
    );
    assert_eq!(
        probe(&lab.peer.name, ROOT, None, to_pod),
        "app 10.213.0.2:9080"
    );
    // DEL again, and DEL of a container never added: nothing to do, success.
    ok(&cni("DEL", &lab.pod, "ctr1", ("shop", "cart"), &config));
    ok(&cni("DEL", &lab.pod, "other", ("shop", "cart"), &config));
    // CHECK of a container the plugin did not program: nothing to check.
    ok(&cni("CHECK", &lab.pod, "other", ("shop", "cart"), &config));
}

#[test]
fn a_del_does_not_remove_capture_it_did_not_add() {
    // A pod captured by its own remora-init (sidecar mode) on a CNI-mode node.
    let pod = Netns::new("cinit");
    let init = remora_init_bin();
    let out = pod.exec(init.to_str().expect("path"), &["-i", "*", "-b", "*"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let before = pod.nat_rules("iptables-nft-save");
    let node = Node::new();
    node.pod("shop", "cart", json!({"metadata": {}}));
    ok(&cni(
        "DEL",
        &pod,
        "ctr1",
        ("shop", "cart"),
        &node.config("1.0.0"),
    ));
    assert_eq!(pod.nat_rules("iptables-nft-save"), before);
}

#[test]
fn unmarked_host_network_and_excluded_pods_pass_through() {
    let lab = Lab::new("cpass", false);
    let node = Node::new();
    let before = lab.pod.nat_rules("iptables-nft-save");
    node.pod(
        "shop",
        "plain",
        json!({"metadata": {"annotations": {"sidecar.istio.io/status": "{}"}}}),
    );
    let mut host = marked_pod(&[]);
    host["spec"]["hostNetwork"] = json!(true);
    node.pod("shop", "host", host);
    node.pod(
        "shop",
        "none",
        marked_pod(&[("sidecar.istio.io/interceptionMode", "NONE")]),
    );
    // The excluded namespace's pod is never read (no file for it).
    for (i, (ns, name, why)) in [
        ("shop", "plain", "no annotation remora.dev/capture"),
        ("shop", "host", "host-network pod"),
        ("shop", "none", "interceptionMode is NONE"),
        (
            "kube-system",
            "coredns",
            "namespace kube-system is excluded",
        ),
    ]
    .into_iter()
    .enumerate()
    {
        let id = format!("p{i}");
        for version in ["0.3.1", "1.1.0"] {
            let result = ok(&cni(
                "ADD",
                &lab.pod,
                &id,
                (ns, name),
                &node.config(version),
            ));
            assert_eq!(result, prev_result(version), "{ns}/{name}");
        }
        assert!(node.log().contains(why), "{why}: {}", node.log());
        assert!(!node.state().join(&id).exists());
        assert_eq!(
            lab.pod.nat_rules("iptables-nft-save"),
            before,
            "{ns}/{name}"
        );
    }
    // A pod with the mark whose traffic would otherwise be captured, for contrast.
    assert_eq!(
        probe(
            &lab.pod.name,
            ROOT,
            None,
            "10.213.0.1:8080".parse().expect("addr")
        ),
        "peer 10.213.0.1:8080"
    );
}

#[test]
fn bad_input_gets_a_cni_error_result() {
    let pod = Netns::new("cbad");
    let node = Node::new();
    node.pod("shop", "cart", marked_pod(&[]));
    node.pod(
        "shop",
        "badann",
        marked_pod(&[("traffic.sidecar.istio.io/includeInboundPorts", "http")]),
    );
    let config = node.config("1.0.0");
    let path = format!("/var/run/netns/{}", pod.name);
    let base: Vec<(&str, &str)> = vec![
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "ctr1"),
        ("CNI_NETNS", &path),
        ("CNI_IFNAME", "eth0"),
        ("CNI_PATH", "/opt/cni/bin"),
        ("CNI_ARGS", "K8S_POD_NAMESPACE=shop;K8S_POD_NAME=cart"),
    ];
    let without =
        |k: &str| -> Vec<(&str, &str)> { base.iter().filter(|(n, _)| *n != k).copied().collect() };
    let with = |k: &'static str, v: &'static str| -> Vec<(&str, &str)> {
        let mut e = without(k);
        e.push((k, v));
        e
    };
    let mut no_prev = config.clone();
    no_prev
        .as_object_mut()
        .expect("object")
        .remove("prevResult");
    let cfg = config.to_string();
    type Env<'a> = Vec<(&'a str, &'a str)>;
    let cases: Vec<(Env, String, u64, &str)> = vec![
        (base.clone(), "{\"cniVersion\": ".into(), 6, "the network configuration on stdin is not JSON"),
        (without("CNI_COMMAND"), cfg.clone(), 4, "CNI_COMMAND is not set"),
        (without("CNI_NETNS"), cfg.clone(), 4, "CNI_NETNS is not set"),
        (without("CNI_CONTAINERID"), cfg.clone(), 4, "CNI_CONTAINERID is not set"),
        (with("CNI_NETNS", "/var/run/netns/no-such-ns"), cfg.clone(), 3, "cannot open the network namespace"),
        (base.clone(), no_prev.to_string(), 7, "prevResult is missing"),
        (with("CNI_ARGS", "K8S_POD_NAMESPACE=shop;K8S_POD_NAME=gone"), cfg.clone(), 11, "pod shop/gone: cannot read"),
        (
            with("CNI_ARGS", "K8S_POD_NAMESPACE=shop;K8S_POD_NAME=badann"),
            cfg.clone(),
            7,
            "pod shop/badann: annotation traffic.sidecar.istio.io/includeInboundPorts: invalid value \"http\"",
        ),
    ];
    for (env, stdin, code, want) in cases {
        let e = err(&call(&env, &stdin));
        assert_eq!(e["code"], code, "{want}: {e}");
        let msg = e["msg"].as_str().unwrap_or_default();
        assert!(msg.starts_with(want), "expected {want:?}, got {msg:?}");
    }
    // Nothing was installed by any of them.
    assert_eq!(remora_chains(&pod), Vec::<String>::new());
    // The error result carries the configuration's version when it could be read.
    let e = err(&call(
        &without("CNI_NETNS"),
        &node.config("0.4.0").to_string(),
    ));
    assert_eq!(e["cniVersion"], "0.4.0");
}

#[test]
fn version_lists_the_supported_versions() {
    let v = ok(&call(
        &[("CNI_COMMAND", "VERSION")],
        "{\"cniVersion\": \"1.0.0\"}",
    ));
    assert_eq!(v["cniVersion"], "1.1.0");
    assert_eq!(
        v["supportedVersions"],
        json!(["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"])
    );
}

/// `remora-init validate` (the `remora-validation` container's check) run as the proxy uid in
/// the pod's namespace, no capabilities.
fn validate_as(netns: &Netns, uid: u32) -> Output {
    let init = remora_init_bin();
    let (reuid, regid) = (format!("--reuid={uid}"), format!("--regid={uid}"));
    netns.exec(
        "setpriv",
        &[
            &reuid,
            &regid,
            "--clear-groups",
            "--inh-caps=-all",
            "--bounding-set=-all",
            init.to_str().expect("path"),
            "validate",
            "--timeout-ms",
            "2000",
        ],
    )
}

#[test]
fn validation_passes_with_the_plugins_rules_and_fails_without() {
    let with_rules = Netns::new("cval");
    let without = Netns::new("cnoval");
    let node = Node::new();
    node.pod("shop", "cart", marked_pod(&[]));
    ok(&cni(
        "ADD",
        &with_rules,
        "ctr1",
        ("shop", "cart"),
        &node.config("1.0.0"),
    ));

    let out = validate_as(&with_rules, 1337);
    assert!(
        out.status.success(),
        "validation failed with the rules in place: {}",
        text(&out.stderr)
    );
    assert!(
        text(&out.stdout).contains("capture in place: a connection to 127.0.0.7:15002 as uid 1337 was redirected to the inbound capture port 15006"),
        "{}",
        text(&out.stdout)
    );

    let out = validate_as(&without, 1337);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with("remora-init: error: the traffic capture is not in place: a connection to 127.0.0.7:15002 as uid 1337 was not redirected"),
        "{stderr}"
    );

    // Run as another uid, the check would prove nothing: refused with the reason.
    let out = validate_as(&with_rules, 1000);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("must run as the proxy uid 1337"),
        "{}",
        text(&out.stderr)
    );
}
