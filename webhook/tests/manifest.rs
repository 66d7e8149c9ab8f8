//! The shipped webhook configuration is what `selectors` defines, and a second revision rendered
//! by `remora-webhook manifest` can run beside the default one: its own objects do not collide
//! with the default revision's, every name its webhook is told is one of its objects, and no
//! selector of one revision picks the other's pods.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use remora_webhook::label_selector::Selector;
use remora_webhook::manifest::{is_own, render, serve_flags, OWN};
use remora_webhook::selectors::{mutating_webhook_configuration, REVISION_LABEL};
use remora_webhook::{cli, config::Config};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_remora-webhook");

fn manifests() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests")
}

fn docs(file: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(manifests().join(file)).unwrap();
    cli::parse_docs(&text).unwrap()
}

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

fn key(d: &Value) -> (String, String, String) {
    (
        d["kind"].as_str().unwrap_or("").to_string(),
        d["metadata"]["namespace"]
            .as_str()
            .unwrap_or("")
            .to_string(),
        d["metadata"]["name"].as_str().unwrap_or("").to_string(),
    )
}

fn map(v: &Value) -> BTreeMap<String, String> {
    v.as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_string()))
                .collect()
        })
        .unwrap_or_default()
}

/// A `spec.selector` of a Service (a plain map) as a selector.
fn service_selects(svc: &Value, pod_labels: &BTreeMap<String, String>) -> bool {
    let sel = map(&svc["spec"]["selector"]);
    !sel.is_empty() && sel.iter().all(|(k, v)| pod_labels.get(k) == Some(v))
}

fn label_selector(v: &Value) -> Selector {
    Selector::parse(Some(&serde_json::from_value(v.clone()).unwrap()), "s").unwrap()
}

#[test]
fn the_shipped_webhook_configuration_is_the_definition() {
    let mwc = find(
        &docs("webhook.yaml"),
        "MutatingWebhookConfiguration",
        "remora-sidecar-injector",
    )
    .clone();
    assert_eq!(mwc, mutating_webhook_configuration("default"));
    // install.yaml carries the same (scripts/render-install --check keeps it generated).
    let install = docs("install.yaml");
    assert_eq!(
        find(
            &install,
            "MutatingWebhookConfiguration",
            "remora-sidecar-injector"
        ),
        &mwc
    );
}

#[test]
fn the_default_revision_renders_as_install_yaml() {
    let install = docs("install.yaml");
    let same = render(&install, "default", false).unwrap();
    assert_eq!(same.len(), install.len());
    for (r, i) in same.iter().zip(&install) {
        assert_eq!(r, i, "{:?}", key(i));
    }
    let own = render(&install, "default", true).unwrap();
    let kinds: BTreeSet<(String, String)> = own.iter().map(|d| (key(d).0, key(d).2)).collect();
    let want: BTreeSet<(String, String)> = OWN
        .iter()
        .map(|(k, n)| (k.to_string(), n.to_string()))
        .collect();
    assert_eq!(kinds, want);
    // Every own object names its revision; no shared one does.
    for d in &install {
        let labelled = d["metadata"]["labels"][REVISION_LABEL] == "default";
        assert_eq!(labelled, is_own(d), "{:?}", key(d));
    }
}

#[test]
fn a_second_revision_runs_beside_the_default_one() {
    let install = docs("install.yaml");
    let full = render(&install, "b", false).unwrap();
    let own = render(&install, "b", true).unwrap();
    // The shared objects are install.yaml's, unchanged; the own ones are new names.
    let shared: Vec<&Value> = install.iter().filter(|d| !is_own(d)).collect();
    assert_eq!(full.len(), shared.len() + own.len());
    for s in &shared {
        assert!(full.contains(s), "{:?}", key(s));
    }
    let a_keys: BTreeSet<_> = install.iter().map(key).collect();
    for d in &own {
        assert!(
            !a_keys.contains(&key(d)),
            "{:?} collides with the default revision",
            key(d)
        );
        assert!(key(d).2.ends_with("-b"), "{:?}", key(d));
        assert_eq!(d["metadata"]["labels"][REVISION_LABEL], "b", "{:?}", key(d));
    }

    // The Deployments' pods: neither revision's Deployment, Services, PDB or NetworkPolicy
    // select the other's pods.
    let dep_a = find(&install, "Deployment", "remora-webhook");
    let dep_b = find(&own, "Deployment", "remora-webhook-b");
    let pods_a = map(&dep_a["spec"]["template"]["metadata"]["labels"]);
    let pods_b = map(&dep_b["spec"]["template"]["metadata"]["labels"]);
    assert_eq!(pods_b[REVISION_LABEL], "b");
    let sel_a = label_selector(&dep_a["spec"]["selector"]);
    let sel_b = label_selector(&dep_b["spec"]["selector"]);
    assert!(sel_a.matches(&pods_a) && !sel_a.matches(&pods_b));
    assert!(sel_b.matches(&pods_b) && !sel_b.matches(&pods_a));
    for (docs, name, mine, other) in [
        (&install, "remora-webhook", &pods_a, &pods_b),
        (&install, "remora-ca", &pods_a, &pods_b),
        (&own, "remora-webhook-b", &pods_b, &pods_a),
        (&own, "remora-ca-b", &pods_b, &pods_a),
    ] {
        let svc = find(docs, "Service", name);
        assert!(service_selects(svc, mine), "Service {name}");
        assert!(
            !service_selects(svc, other),
            "Service {name} selects the other revision's pods"
        );
    }
    for (docs, name, mine, other) in [
        (&install, "remora-webhook", &pods_a, &pods_b),
        (&own, "remora-webhook-b", &pods_b, &pods_a),
    ] {
        let pdb = label_selector(&find(docs, "PodDisruptionBudget", name)["spec"]["selector"]);
        assert!(pdb.matches(mine) && !pdb.matches(other), "PDB {name}");
        let np = label_selector(&find(docs, "NetworkPolicy", name)["spec"]["podSelector"]);
        assert!(
            np.matches(mine) && !np.matches(other),
            "NetworkPolicy {name}"
        );
    }

    // What revision b's webhook is told names b's objects.
    let c = &dep_b["spec"]["template"]["spec"]["containers"][0];
    let args: Vec<&str> = c["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    for (flag, value) in serve_flags("b") {
        let want = format!("{flag}={value}");
        assert_eq!(
            args.iter()
                .filter(|a| a.starts_with(&format!("{flag}=")))
                .collect::<Vec<_>>(),
            [&want.as_str()],
            "{args:?}"
        );
    }
    let flag = |f: &str| {
        serve_flags("b")
            .into_iter()
            .find(|(k, _)| *k == f)
            .unwrap()
            .1
    };
    // Its Service exists (above); its webhook configurations call it.
    let mwc = find(
        &own,
        "MutatingWebhookConfiguration",
        &flag("--webhook-config"),
    );
    assert_eq!(mwc, &mutating_webhook_configuration("b"));
    let vwc = find(
        &own,
        "ValidatingWebhookConfiguration",
        &flag("--validating-webhook-config"),
    );
    for w in mwc["webhooks"]
        .as_array()
        .unwrap()
        .iter()
        .chain(vwc["webhooks"].as_array().unwrap())
    {
        assert_eq!(
            w["clientConfig"]["service"]["name"],
            flag("--service").as_str()
        );
    }
    // Its CA Service is the one its proxies are sent to (--inject-ca-address=auto).
    find(&own, "Service", &flag("--ca-service"));
    assert!(args.contains(&"--inject-ca-address=auto"));
    // Its RBAC allows exactly its own Secret and configurations, bound to the shared account.
    let role = find(&own, "Role", "remora-webhook-certs-b");
    assert!(role
        .to_string()
        .contains(&format!("\"{}\"", flag("--cert-secret"))));
    assert!(!role.to_string().contains("\"remora-webhook-certs\""));
    let cr = find(&own, "ClusterRole", "remora-webhook-cabundle-b");
    let (named, unnamed): (Vec<&Value>, Vec<&Value>) = cr["rules"]
        .as_array()
        .unwrap()
        .iter()
        .partition(|r| r.get("resourceNames").is_some());
    let names: BTreeSet<&str> = named
        .iter()
        .flat_map(|r| {
            r["resourceNames"]
                .as_array()
                .unwrap()
                .iter()
                .map(|n| n.as_str().unwrap())
        })
        .collect();
    // The one rule without names: the revision's tag configurations, found by label.
    assert_eq!(
        unnamed,
        [
            &serde_json::json!({"apiGroups": ["admissionregistration.k8s.io"],
                              "resources": ["mutatingwebhookconfigurations"],
                              "verbs": ["list", "watch", "patch"]})
        ]
    );
    assert_eq!(
        names,
        [
            flag("--webhook-config").as_str(),
            flag("--validating-webhook-config").as_str()
        ]
        .into()
    );
    for (kind, name) in [
        ("RoleBinding", "remora-webhook-certs-b"),
        ("ClusterRoleBinding", "remora-webhook-cabundle-b"),
    ] {
        let b = find(&own, kind, name);
        assert_eq!(b["roleRef"]["name"], name);
        assert_eq!(
            b["subjects"][0]["name"],
            dep_b["spec"]["template"]["spec"]["serviceAccountName"]
        );
    }
    // Its injector config is its own ConfigMap, and the injector accepts it as revision b.
    let vol = &dep_b["spec"]["template"]["spec"]["volumes"][0];
    assert_eq!(vol["configMap"]["name"], "remora-injector-b");
    let cm = find(&own, "ConfigMap", "remora-injector-b");
    Config::from_yaml(cm["data"]["config.yaml"].as_str().unwrap())
        .unwrap()
        .with_revision("b")
        .unwrap();
}

#[test]
fn a_config_naming_another_revision_is_refused() {
    let mut install = docs("install.yaml");
    for d in install.iter_mut() {
        if d["kind"] == "ConfigMap" && d["metadata"]["name"] == "remora-injector" {
            let text = d["data"]["config.yaml"].as_str().unwrap().to_string();
            d["data"]["config.yaml"] = Value::from(format!("{text}revision: default\n"));
        }
    }
    assert!(render(&install, "default", false).is_ok());
    let e = render(&install, "b", false).unwrap_err();
    assert!(
        e.starts_with("ConfigMap remora-injector: config.yaml: config field revision: invalid value \"default\": this injector is revision \"b\""),
        "{e}"
    );
    // A revision's own render is not an install to render from.
    let b = render(&docs("install.yaml"), "b", false).unwrap();
    let e = render(&b, "c", false).unwrap_err();
    assert!(
        e.contains("the install manifest has no ConfigMap remora-injector"),
        "{e}"
    );
}

#[test]
fn the_binary_prints_the_revision() {
    let out = Command::new(BIN)
        .args(["manifest", "--revision", "b", "-f"])
        .arg(manifests().join("install.yaml"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.starts_with("# remora revision b: "), "{text}");
    assert_eq!(
        cli::parse_docs(&text).unwrap(),
        render(&docs("install.yaml"), "b", false).unwrap()
    );
    let out = Command::new(BIN)
        .args(["manifest", "--revision-only", "--revision", "default", "-f"])
        .arg(manifests().join("install.yaml"))
        .output()
        .unwrap();
    assert!(out.status.success());
    let n = cli::parse_docs(&String::from_utf8(out.stdout).unwrap())
        .unwrap()
        .len();
    assert_eq!(n, OWN.len());
    // Bad input: one line naming the flag or the file.
    let out = Command::new(BIN)
        .args(["manifest", "--revision", "Canary", "-f"])
        .arg(manifests().join("install.yaml"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with("remora-webhook: -f ")
            && err.contains("--revision \"Canary\": must be lowercase")
            && err.trim().lines().count() == 1,
        "{err}"
    );
    let out = Command::new(BIN)
        .args(["manifest", "--revision", "b", "-f"])
        .arg(manifests().join("namespace.yaml"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("has no ConfigMap remora-injector"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `manifest --tag prod --revision b` prints the tag's configuration and nothing else: the
/// definition in `selectors`, which the API server evaluates as `check-inject` does.
#[test]
fn the_binary_prints_a_tag() {
    let out = Command::new(BIN)
        .args(["manifest", "--tag", "prod", "--revision", "b"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.starts_with("# remora tag prod of revision b: "),
        "{text}"
    );
    let docs = cli::parse_docs(&text).unwrap();
    assert_eq!(
        docs,
        [remora_webhook::selectors::tag_configuration("prod", "b")]
    );
    // Its entries select what the tag names and call revision b's Service.
    let hooks = docs[0]["webhooks"].as_array().unwrap();
    let prod_ns: BTreeMap<String, String> = [
        ("istio.io/rev".to_string(), "prod".to_string()),
        (
            "kubernetes.io/metadata.name".to_string(),
            "shop".to_string(),
        ),
    ]
    .into();
    assert!(label_selector(&hooks[0]["namespaceSelector"]).matches(&prod_ns));
    assert_eq!(
        hooks[0]["clientConfig"]["service"]["path"],
        "/inject/rev/b/tag/prod/rev.namespace"
    );
    // Bad input: one line naming the flag.
    for (args, words) in [
        (
            vec!["--tag", "default", "--revision", "b"],
            "--tag \"default\": the tag default is not supported",
        ),
        (
            vec!["--tag", "b", "--revision", "b"],
            "--tag \"b\": is the revision's own name",
        ),
        (
            vec!["--tag", "prod", "--revision", "B"],
            "--revision \"B\": must be lowercase",
        ),
    ] {
        let out = Command::new(BIN)
            .arg("manifest")
            .args(&args)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(words) && err.trim().lines().count() == 1,
            "{args:?}: {err}"
        );
    }
}
