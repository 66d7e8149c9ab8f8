//! Least privilege of what remora runs, checked on real outputs rather than stated:
//! * every pod the injector renders from Istio's injection corpus
//!   (`$REMORA_SHARED/anchors/istio/inject/*.yaml`, used in place) gives the proxy a non-root uid
//!   (1337 unless the pod tightens it), `runAsNonRoot`, no privilege escalation, every capability
//!   dropped and a read-only root filesystem, and gives the init container exactly NET_ADMIN and
//!   NET_RAW. A pod may override fields of the proxy's securityContext by declaring an
//!   `istio-proxy`/`remora-proxy` container itself (Istio's behaviour, e.g. the corpus's
//!   `proxy-override.yaml`): the author's own spec, which PodSecurity admission governs. Only the
//!   fields it declares may differ from the defaults;
//! * the `proxy.istio.io/overrides` annotation (replayed by re-injection) cannot raise them;
//! * the webhook's own Deployment (`manifests/webhook.yaml`) runs non-root, read-only, with no
//!   capabilities.

use std::path::{Path, PathBuf};

use remora_webhook::config::Config;
use remora_webhook::inject::{inject_pod, inject_pod_as, Outcome};
use remora_webhook::selectors::{Entry, Selection, Source};
use remora_webhook::{cli, workload};
use serde_json::{json, Value};

fn docs_in(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    cli::parse_docs(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The pods a document stands for (workload templates become pods as the API server makes them).
fn pods_of(doc: &Value) -> Vec<(Value, String)> {
    let Some(ptr) = doc
        .get("kind")
        .and_then(Value::as_str)
        .and_then(workload::template_pointer)
    else {
        return vec![];
    };
    let ns = doc
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .unwrap_or("default")
        .to_string();
    if ptr.is_empty() {
        return vec![(doc.clone(), ns)];
    }
    let Some(t) = doc.pointer(ptr) else {
        return vec![];
    };
    vec![(workload::pod_from_template(doc, t, &ns), ns)]
}

fn find<'a>(pod: &'a Value, list: &str, name: &str) -> Option<&'a Value> {
    pod.pointer(&format!("/spec/{list}"))
        .and_then(Value::as_array)?
        .iter()
        .find(|c| c["name"] == name)
}

fn strings(v: &Value) -> Vec<String> {
    let mut out: Vec<String> = v
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

/// The proxy securityContext the input pod declares itself through an override container.
fn declared_proxy_sc(input: &Value) -> Value {
    ["containers", "initContainers"]
        .iter()
        .find_map(|l| {
            ["remora-proxy", "istio-proxy"]
                .iter()
                .find_map(|n| find(input, l, n)?.get("securityContext").cloned())
        })
        .unwrap_or(Value::Null)
}

/// Every least-privilege property of one injected pod; `Err` lists the violations.
fn check_injected(input: &Value, out: &Value, cfg: &Config) -> Result<(), Vec<String>> {
    let mut bad = Vec::new();
    let proxy = find(out, "containers", "remora-proxy")
        .or_else(|| find(out, "initContainers", "remora-proxy"));
    let Some(proxy) = proxy else {
        return Err(vec!["no remora-proxy container".into()]);
    };
    let sc = &proxy["securityContext"];
    let declared = declared_proxy_sc(input);
    // Where the pod declares a field, the injector keeps it; everywhere else the default.
    let want = |k: &str, default: Value| declared.get(k).cloned().unwrap_or(default);
    let want_uid = want("runAsUser", json!(cfg.proxy_uid));
    if sc["runAsUser"] != want_uid || (declared.get("runAsUser").is_none() && sc["runAsUser"] == 0)
    {
        bad.push(format!(
            "proxy runAsUser {}, want {want_uid}",
            sc["runAsUser"]
        ));
    }
    let want_gid = want("runAsGroup", json!(cfg.proxy_uid));
    if sc["runAsGroup"] != want_gid {
        bad.push(format!(
            "proxy runAsGroup {}, want {want_gid}",
            sc["runAsGroup"]
        ));
    }
    for (k, default) in [
        ("runAsNonRoot", true),
        ("allowPrivilegeEscalation", false),
        ("readOnlyRootFilesystem", true),
    ] {
        let w = want(k, json!(default));
        if sc[k] != w {
            bad.push(format!("proxy {k} = {}, want {w}", sc[k]));
        }
    }
    if sc["privileged"] == json!(true) && declared.get("privileged").is_none() {
        bad.push("proxy privileged".into());
    }
    if declared.get("capabilities").is_none() {
        if !strings(&sc["capabilities"]["drop"]).contains(&"ALL".to_string()) {
            bad.push(format!(
                "proxy capabilities.drop {}",
                sc["capabilities"]["drop"]
            ));
        }
        if !strings(&sc["capabilities"]["add"]).is_empty() {
            bad.push(format!(
                "proxy capabilities.add {}",
                sc["capabilities"]["add"]
            ));
        }
    }
    if let Some(init) = find(out, "initContainers", "remora-init") {
        let sc = &init["securityContext"];
        if strings(&sc["capabilities"]["add"]) != ["NET_ADMIN", "NET_RAW"] {
            bad.push(format!(
                "init capabilities.add {}",
                sc["capabilities"]["add"]
            ));
        }
        if !strings(&sc["capabilities"]["drop"]).contains(&"ALL".to_string()) {
            bad.push(format!(
                "init capabilities.drop {}",
                sc["capabilities"]["drop"]
            ));
        }
        if sc["allowPrivilegeEscalation"] != json!(false) {
            bad.push(format!(
                "init allowPrivilegeEscalation {}",
                sc["allowPrivilegeEscalation"]
            ));
        }
        if sc["privileged"] == json!(true) {
            bad.push("init privileged".into());
        }
    }
    // No other container of the output may be one of ours with more rights (a leftover
    // istio-proxy/istio-init from a previous injection would be).
    for l in ["containers", "initContainers"] {
        for n in ["istio-proxy", "istio-init"] {
            if find(out, l, n).is_some() {
                bad.push(format!("{l} still has {n}"));
            }
        }
    }
    if bad.is_empty() {
        Ok(())
    } else {
        Err(bad)
    }
}

#[test]
fn every_injected_corpus_pod_is_least_privilege() {
    let dir = remora_corpus::require!("inject");
    // As the injector of revision canary in a namespace moved to remora (istio.io/rev=canary),
    // so the corpus pod Istio already injected is re-injected too.
    let cfg = Config::default().with_revision("canary").unwrap();
    let moved = Selection::new("canary", Entry::RevNamespace, Source::Path);
    let mut inputs: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    inputs.sort();
    let (mut injected, mut with_init, mut failures) = (0usize, 0usize, Vec::new());
    for input in &inputs {
        let name = input.file_name().unwrap().to_string_lossy().to_string();
        for (i, doc) in docs_in(input).iter().enumerate() {
            for (pod, ns) in pods_of(doc) {
                let Outcome::Injected { pod: out, .. } = inject_pod_as(&pod, &ns, &cfg, &moved)
                else {
                    continue;
                };
                injected += 1;
                if find(&out, "initContainers", "remora-init").is_some() {
                    with_init += 1;
                }
                if let Err(bad) = check_injected(&pod, &out, &cfg) {
                    failures.push(format!("{name} doc {i}: {}", bad.join("; ")));
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "least privilege violated:\n{}",
        failures.join("\n")
    );
    eprintln!(
        "least privilege holds on {injected} injected corpus pods ({with_init} with remora-init)"
    );
    assert!(injected >= 31, "only {injected} corpus pods were injected");
    assert!(
        with_init >= 25,
        "only {with_init} pods had an init container"
    );
}

#[test]
fn the_checker_catches_violations() {
    // The check itself must fail on a rendered pod that was made weaker.
    let cfg = Config::default();
    let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
        "spec": {"containers": [{"name": "app", "image": "app"}]}});
    let Outcome::Injected { pod: out, .. } = inject_pod(&pod, "default", &cfg) else {
        panic!("plain pod not injected");
    };
    assert_eq!(check_injected(&pod, &out, &cfg), Ok(()));
    let weaken = |ptr: &str, v: Value| {
        let mut o = out.clone();
        let list = if find(&o, "containers", "remora-proxy").is_some() {
            "containers"
        } else {
            "initContainers"
        };
        let target = o["spec"][list]
            .as_array_mut()
            .unwrap()
            .iter_mut()
            .find(|c| c["name"] == "remora-proxy")
            .unwrap();
        *target.pointer_mut(ptr).unwrap() = v;
        o
    };
    for (ptr, v, needle) in [
        ("/securityContext/runAsUser", json!(0), "runAsUser"),
        (
            "/securityContext/runAsNonRoot",
            json!(false),
            "runAsNonRoot",
        ),
        (
            "/securityContext/readOnlyRootFilesystem",
            json!(false),
            "readOnlyRootFilesystem",
        ),
        (
            "/securityContext/allowPrivilegeEscalation",
            json!(true),
            "allowPrivilegeEscalation",
        ),
        (
            "/securityContext/capabilities",
            json!({"add": ["NET_ADMIN"], "drop": ["ALL"]}),
            "capabilities.add",
        ),
    ] {
        let e = check_injected(&pod, &weaken(ptr, v), &cfg).unwrap_err();
        assert!(e.iter().any(|m| m.contains(needle)), "{ptr}: {e:?}");
    }
}

#[test]
fn overrides_change_only_what_they_declare_and_the_annotation_cannot_raise() {
    let cfg = Config::default();
    let base = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
        "spec": {"containers": [{"name": "app", "image": "app"}]}});
    // A pod-declared override that tightens (another non-root uid): kept, the rest default.
    let mut pod = base.clone();
    pod["spec"]["containers"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "istio-proxy", "securityContext": {"runAsUser": 2000}}));
    let Outcome::Injected { pod: out, .. } = inject_pod(&pod, "default", &cfg) else {
        panic!("not injected");
    };
    let proxy = find(&out, "containers", "remora-proxy")
        .or_else(|| find(&out, "initContainers", "remora-proxy"))
        .unwrap();
    assert_eq!(proxy["securityContext"]["runAsUser"], 2000);
    assert_eq!(proxy["securityContext"]["runAsNonRoot"], true);
    assert_eq!(proxy["securityContext"]["readOnlyRootFilesystem"], true);
    check_injected(&pod, &out, &cfg).unwrap();

    // The overrides annotation may not raise anything, for the proxy or the init container.
    for (role, sc) in [
        ("proxy", json!({"runAsUser": 0})),
        ("proxy", json!({"privileged": true})),
        ("proxy", json!({"capabilities": {"add": ["NET_ADMIN"]}})),
        ("proxy", json!({"allowPrivilegeEscalation": true})),
        ("init", json!({"privileged": true})),
        ("init", json!({"capabilities": {"add": ["SYS_ADMIN"]}})),
    ] {
        let mut pod = base.clone();
        let record = json!({ role: [{"securityContext": sc}] }).to_string();
        pod["metadata"]["annotations"] = json!({ "proxy.istio.io/overrides": record });
        match inject_pod(&pod, "default", &cfg) {
            Outcome::Denied(why) => assert!(
                why.contains("securityContext") && why.contains("raising privileges"),
                "{role} {sc}: {why}"
            ),
            other => panic!("{role} {sc}: not denied: {other:?}"),
        }
    }
}

#[test]
fn webhook_deployment_is_non_root_read_only_without_capabilities() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests/webhook.yaml");
    let docs = docs_in(&path);
    let dep = docs
        .iter()
        .find(|d| d["kind"] == "Deployment")
        .expect("a Deployment in manifests/webhook.yaml");
    let spec = &dep["spec"]["template"]["spec"];
    let pod_sc = &spec["securityContext"];
    assert_eq!(pod_sc["runAsNonRoot"], true);
    assert!(
        pod_sc["runAsUser"].as_i64().is_some_and(|u| u > 0),
        "{pod_sc}"
    );
    assert_eq!(pod_sc["seccompProfile"]["type"], "RuntimeDefault");
    let containers = spec["containers"].as_array().unwrap();
    assert!(!containers.is_empty());
    for c in containers {
        let sc = &c["securityContext"];
        assert_eq!(sc["readOnlyRootFilesystem"], true, "{}", c["name"]);
        assert_eq!(sc["allowPrivilegeEscalation"], false, "{}", c["name"]);
        assert_ne!(sc["runAsNonRoot"], false, "{}", c["name"]);
        assert_ne!(sc["privileged"], true, "{}", c["name"]);
        assert!(
            strings(&sc["capabilities"]["drop"]).contains(&"ALL".to_string()),
            "{}",
            c["name"]
        );
        assert!(
            strings(&sc["capabilities"]["add"]).is_empty(),
            "{}",
            c["name"]
        );
        assert_ne!(sc["runAsUser"], 0, "{}", c["name"]);
    }
    assert_ne!(spec["hostNetwork"], true);
}

/// Where NetworkPolicy is enforced, the webhook's pods admit exactly the ports their containers
/// serve: the admission webhooks and the mesh CA the sidecars call (without 15012 no sidecar
/// would get a certificate).
#[test]
fn the_network_policy_admits_the_webhook_and_the_ca() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests/webhook.yaml");
    let docs = docs_in(&path);
    let np = docs
        .iter()
        .find(|d| d["kind"] == "NetworkPolicy")
        .expect("a NetworkPolicy in manifests/webhook.yaml");
    let mut allowed: Vec<i64> = np["spec"]["ingress"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|r| r["ports"].as_array().cloned().unwrap_or_default())
        .filter_map(|p| p["port"].as_i64())
        .collect();
    allowed.sort();
    let dep = docs
        .iter()
        .find(|d| d["kind"] == "Deployment")
        .expect("a Deployment in manifests/webhook.yaml");
    let mut served: Vec<i64> = dep["spec"]["template"]["spec"]["containers"][0]["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["containerPort"].as_i64())
        .collect();
    served.sort();
    assert_eq!(allowed, served);
    assert!(allowed.contains(&15012), "{allowed:?}");
}
