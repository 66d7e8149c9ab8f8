//! The real `remora` binary offline: `inject -f` and `check-inject -f` print what the webhook's
//! library (`remora_webhook::cli`, also behind `remora-webhook inject|check-inject`) computes, and
//! need no kubeconfig.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

use remora_webhook::cli;
use remora_webhook::config::Config;

const BIN: &str = env!("CARGO_BIN_EXE_remora");

fn sample(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../webhook/testdata/samples")
        .join(name)
}

/// `remora ARGS` with no cluster configuration at all.
fn remora(args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut child = Command::new(BIN)
        .args(args)
        .env("KUBECONFIG", "/nonexistent/kubeconfig")
        .env_remove("KUBERNETES_SERVICE_HOST")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run remora");
    let mut input = child.stdin.take().expect("stdin");
    if let Some(b) = stdin {
        input.write_all(b).expect("write stdin");
    }
    drop(input);
    child.wait_with_output().expect("remora output")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn inject_prints_the_libraries_yaml() {
    let f = sample("kinds.yaml");
    let out = remora(&["inject", "-f", f.to_str().unwrap(), "-n", "shop"], None);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let docs = cli::parse_docs(&std::fs::read_to_string(&f).unwrap()).unwrap();
    let (want, _) = cli::inject_docs(docs, "shop", &Config::default());
    assert_eq!(text(&out.stdout), cli::to_yaml(&want).unwrap());
    let err = text(&out.stderr);
    assert!(
        err.contains("DaemonSet/node-agent skipped") && err.contains("hostNetwork"),
        "{err}"
    );
    // The workload identity parts (on by default): Istio's label on the pod template, the CA
    // token and root volumes, the proxy's CA settings.
    let printed = cli::parse_docs(&text(&out.stdout)).unwrap();
    let sts = printed
        .iter()
        .find(|d| d["kind"] == "StatefulSet")
        .expect("the StatefulSet");
    let t = &sts["spec"]["template"];
    assert_eq!(
        t["metadata"]["labels"]["security.istio.io/tlsMode"], "istio",
        "{t}"
    );
    let vols = t["spec"]["volumes"].as_array().unwrap();
    let vol = |n: &str| vols.iter().find(|v| v["name"] == n).cloned();
    assert_eq!(
        vol("remora-ca-token").unwrap()["projected"]["sources"][0]["serviceAccountToken"]
            ["audience"],
        "remora-ca"
    );
    assert_eq!(
        vol("remora-ca-root").unwrap()["configMap"]["name"],
        "remora-ca-root-cert"
    );
    let proxy = &t["spec"]["initContainers"][0];
    assert_eq!(proxy["name"], "remora-proxy");
    assert!(
        proxy["env"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["name"] == "REMORA_CA_ADDRESS"
                && e["value"] == "remora-ca.remora-system.svc:15012"),
        "{proxy}"
    );
    // ... and with identity turned off in the config file, none of them.
    let dir = tempfile::tempdir().unwrap();
    let off = dir.path().join("injector.yaml");
    std::fs::write(&off, "identity:\n  caAddress: \"off\"\n").unwrap();
    let out = remora(
        &[
            "inject",
            "-f",
            f.to_str().unwrap(),
            "-n",
            "shop",
            "--config",
            off.to_str().unwrap(),
        ],
        None,
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let printed = text(&out.stdout);
    assert!(printed.contains("remora-proxy"), "{printed}");
    for absent in ["tlsMode", "remora-ca", "REMORA_CA", "serviceAccountToken"] {
        assert!(!printed.contains(absent), "{absent}:\n{printed}");
    }

    // A denial from stdin: exit 1, the reason on stderr, nothing on stdout.
    let bad = std::fs::read(sample("bad-annotations.yaml")).unwrap();
    let out = remora(&["inject", "-f", "-"], Some(&bad));
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(out.stdout.is_empty());
    let err = text(&out.stderr);
    assert!(
        err.contains("error: Deployment/bad-ports denied") && err.contains("70000"),
        "{err}"
    );

    // A bad --config is exit 2 with one line.
    let out = remora(
        &[
            "inject",
            "-f",
            f.to_str().unwrap(),
            "--config",
            "/nonexistent/injector.yaml",
        ],
        None,
    );
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        text(&out.stderr),
        "remora: --config /nonexistent/injector.yaml: no such file\n"
    );
}

#[test]
fn check_inject_file_prints_the_libraries_text() {
    let f = sample("kinds.yaml");
    let out = remora(
        &[
            "check-inject",
            "-f",
            f.to_str().unwrap(),
            "--namespace-labels",
            "istio-injection=enabled",
        ],
        None,
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let docs = cli::parse_docs(&std::fs::read_to_string(&f).unwrap()).unwrap();
    let labels = cli::parse_labels("istio-injection=enabled").unwrap();
    let offline = cli::Offline::new(&Config::default(), &[], Some(labels)).unwrap();
    let want = cli::check_inject(&docs, "default", &offline);
    assert_eq!(text(&out.stdout), want);
    assert!(
        want.contains("StatefulSet/mongodb in namespace default: INJECTED"),
        "{want}"
    );

    let out = remora(
        &[
            "check-inject",
            "-f",
            f.to_str().unwrap(),
            "--namespace-labels",
            "bad",
        ],
        None,
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("--namespace-labels"));

    // -f is the offline form: not with a target or -l, and the offline flags need it.
    for args in [
        &["check-inject", "-f", "x.yaml", "deploy/web"][..],
        &["check-inject", "-f", "x.yaml", "-l", "app=web"],
        &["check-inject", "deploy/web", "--namespace-labels", "a=b"],
        &["check-inject", "deploy/web", "--revision", "b"],
    ] {
        let out = remora(args, None);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?}: {}",
            text(&out.stderr)
        );
        assert!(out.stdout.is_empty(), "{args:?}");
    }
}

/// A namespace labelled `istio.io/rev`, a pod labelled `istio.io/rev`, and a pod opting in with
/// the label `sidecar.istio.io/inject=true` from an unlabelled namespace, as Istio's selectors
/// treat them, for the revisions given.
const REVISIONED: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec: {containers: [{name: web, image: nginx}]}
---
apiVersion: v1
kind: Pod
metadata: {name: canary-1, labels: {istio.io/rev: b}}
spec: {containers: [{name: web, image: nginx}]}
---
apiVersion: v1
kind: Pod
metadata: {name: opted-1, labels: {sidecar.istio.io/inject: "true"}}
spec: {containers: [{name: web, image: nginx}]}
"#;

#[test]
fn check_inject_file_with_revisions_and_pod_opt_in() {
    let check = |labels: &str, revs: &[&str]| {
        let mut args = vec![
            "check-inject",
            "-f",
            "-",
            "-n",
            "shop",
            "--namespace-labels",
            labels,
        ];
        for r in revs {
            args.extend(["--revision", r]);
        }
        let out = remora(&args, Some(REVISIONED.as_bytes()));
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        text(&out.stdout)
    };
    // The namespace labelled for revision b: every pod goes to b's entry.
    let t = check("istio.io/rev=b", &["default", "b"]);
    for what in ["Deployment/web", "Pod/canary-1", "Pod/opted-1"] {
        assert!(
            t.contains(&format!("{what} in namespace shop: INJECTED\n  webhook: remora-sidecar-injector-b/rev.namespace.sidecar-injector.remora.dev (revision b): namespace label istio.io/rev=b")),
            "{what}:\n{t}"
        );
    }
    // An unlabelled namespace: the pods' own labels.
    let t = check("", &["default", "b"]);
    assert!(
        t.contains("Deployment/web in namespace shop: NOT INJECTED\n  why: the namespace has no istio-injection=enabled or istio.io/rev label and the pod no istio.io/rev or sidecar.istio.io/inject=true label"),
        "{t}"
    );
    assert!(
        t.contains("Pod/canary-1 in namespace shop: INJECTED\n  webhook: remora-sidecar-injector-b/rev.object.sidecar-injector.remora.dev (revision b): pod label istio.io/rev=b"),
        "{t}"
    );
    assert!(
        t.contains("Pod/opted-1 in namespace shop: INJECTED\n  webhook: remora-sidecar-injector/object.sidecar-injector.remora.dev (revision default): pod label sidecar.istio.io/inject=true"),
        "{t}"
    );
    // Revision b not installed: its pod has no webhook.
    let t = check("", &[]);
    assert!(
        t.contains("Pod/canary-1 in namespace shop: NOT INJECTED\n  why: pod label istio.io/rev=b names no installed remora revision (installed: default)"),
        "{t}"
    );
    // istio-injection=disabled wins.
    let t = check("istio-injection=disabled,istio.io/rev=b", &["default", "b"]);
    assert_eq!(
        t.matches("NOT INJECTED\n  why: namespace label istio-injection=disabled")
            .count(),
        3,
        "{t}"
    );
}

/// A manifest Istio injected (`istioctl kube-inject`): left alone unless the namespace is moved
/// to remora (labelled with a remora revision other than default).
#[test]
fn inject_leaves_istios_injection_alone_unless_the_namespace_moved() {
    let istio = r#"
apiVersion: v1
kind: Pod
metadata:
  name: web-1
  annotations:
    sidecar.istio.io/status: '{"initContainers":["istio-init","istio-proxy"],"containers":null,"volumes":["istio-envoy"],"imagePullSecrets":null,"revision":"default"}'
spec:
  initContainers:
  - {name: istio-init, image: docker.io/istio/proxyv2:1.28.0}
  - {name: istio-proxy, image: docker.io/istio/proxyv2:1.28.0, restartPolicy: Always}
  containers: [{name: web, image: nginx}]
  volumes: [{name: istio-envoy, emptyDir: {}}]
"#;
    let out = remora(
        &[
            "inject",
            "-f",
            "-",
            "-n",
            "shop",
            "--namespace-labels",
            "istio-injection=enabled",
        ],
        Some(istio.as_bytes()),
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(
        cli::parse_docs(&text(&out.stdout)).unwrap(),
        cli::parse_docs(istio).unwrap(),
        "printed unchanged"
    );
    assert_eq!(
        text(&out.stderr),
        "Pod/web-1 skipped: already injected by Istio (istio-proxy container, sidecar.istio.io/status annotation): left alone, namespace shop is not moved to remora (label it istio.io/rev=<a remora revision other than default> to move it)\n"
    );
    let out = remora(
        &[
            "inject",
            "-f",
            "-",
            "-n",
            "shop",
            "--namespace-labels",
            "istio.io/rev=b",
            "--revision",
            "b",
        ],
        Some(istio.as_bytes()),
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let printed = text(&out.stdout);
    assert!(
        printed.contains("name: remora-proxy") && !printed.contains("istio-proxy"),
        "{printed}"
    );
    assert!(printed.contains(r#""revision":"b""#), "{printed}");
}
