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
    let want = cli::check_inject(&docs, "default", Some(&labels), &Config::default());
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
