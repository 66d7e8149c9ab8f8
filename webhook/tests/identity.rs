//! What the injector gives the proxy for its workload identity, as the API server receives it
//! (the JSON patch of `review::handle`) and as the offline `inject` prints it: the projected
//! token for the CA's audience, the published root, the `REMORA_CA_*` and `REMORA_TRUST_DOMAIN`
//! env, Istio's `security.istio.io/tlsMode` label; and none of it when identity is off.

use remora_webhook::config::Config;
use remora_webhook::{cli, review};
use serde_json::{json, Value};

fn pod() -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"generateName": "web-6d4b-", "labels": {"app": "web"}},
        "spec": {"serviceAccountName": "web", "containers": [{"name": "web", "image": "nginx"}]}})
}

/// The patch ops of one review, and the pod with the patch applied.
fn review(pod: &Value, cfg: &Config) -> (Vec<Value>, Value) {
    let body = serde_json::to_vec(&review::review_for(pod, "uid-1", "shop")).unwrap();
    let reply = review::handle(&body, cfg);
    assert_eq!(reply.status, 200);
    let v: Value = serde_json::from_slice(&reply.body).unwrap();
    assert_eq!(v["response"]["allowed"], true, "{v}");
    let patch = review::response_patch(&v).unwrap().expect("a patch");
    let ops = serde_json::to_value(&patch).unwrap();
    let mut out = pod.clone();
    json_patch::patch(&mut out, &patch).unwrap();
    (ops.as_array().unwrap().clone(), out)
}

fn op_at<'a>(ops: &'a [Value], path: &str) -> &'a Value {
    ops.iter()
        .find(|o| o["path"] == path)
        .unwrap_or_else(|| panic!("no op at {path}: {ops:#?}"))
}

fn named<'a>(list: &'a Value, name: &str) -> Option<&'a Value> {
    list.as_array()?.iter().find(|x| x["name"] == name)
}

fn off() -> Config {
    Config::from_yaml("identity: {caAddress: \"off\"}\n").unwrap()
}

#[test]
fn the_patch_carries_token_root_env_and_label() {
    let (ops, out) = review(&pod(), &Config::default());
    // The label is one op of its own: the pod's labels are otherwise left alone.
    assert_eq!(
        op_at(&ops, "/metadata/labels/security.istio.io~1tlsMode"),
        &json!({"op": "add", "path": "/metadata/labels/security.istio.io~1tlsMode", "value": "istio"})
    );
    assert!(!ops.iter().any(|o| o["path"] == "/metadata/labels/app"));
    let vols = &op_at(&ops, "/spec/volumes")["value"];
    assert_eq!(
        named(vols, "remora-ca-token"),
        Some(
            &json!({"name": "remora-ca-token", "projected": {"sources": [{"serviceAccountToken": {
            "audience": "remora-ca", "expirationSeconds": 43200, "path": "remora-ca-token"}}]}})
        )
    );
    assert_eq!(
        named(vols, "remora-ca-root"),
        Some(&json!({"name": "remora-ca-root", "configMap": {"name": "remora-ca-root-cert"}}))
    );
    let proxy = named(&out["spec"]["initContainers"], "remora-proxy").expect("the proxy");
    for (name, path) in [
        ("remora-ca-token", "/var/run/secrets/tokens"),
        ("remora-ca-root", "/var/run/secrets/remora/ca"),
    ] {
        assert_eq!(
            named(&proxy["volumeMounts"], name),
            Some(&json!({"name": name, "mountPath": path, "readOnly": true}))
        );
    }
    for (name, value) in [
        ("REMORA_CA_ADDRESS", "remora-ca.remora-system.svc:15012"),
        (
            "REMORA_CA_ROOT_FILE",
            "/var/run/secrets/remora/ca/root-cert.pem",
        ),
        (
            "REMORA_CA_TOKEN_FILE",
            "/var/run/secrets/tokens/remora-ca-token",
        ),
        ("REMORA_TRUST_DOMAIN", "cluster.local"),
    ] {
        assert_eq!(
            named(&proxy["env"], name),
            Some(&json!({"name": name, "value": value}))
        );
    }
    // The proxy still learns its service account and namespace from the downward API.
    assert_eq!(
        named(&proxy["env"], "SERVICE_ACCOUNT").unwrap()["valueFrom"]["fieldRef"]["fieldPath"],
        "spec.serviceAccountName"
    );
    let status: Value = serde_json::from_str(
        out["metadata"]["annotations"]["sidecar.istio.io/status"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        status["volumes"],
        json!([
            "remora-rules",
            "remora-podinfo",
            "remora-ca-token",
            "remora-ca-root"
        ])
    );
}

#[test]
fn configured_identity_is_what_is_injected() {
    let cfg = Config::from_yaml(
        "identity: {caAddress: \"ca.mesh.example:443\", audience: mesh-ca, trustDomain: example.org}\n",
    )
    .unwrap();
    let (ops, out) = review(&pod(), &cfg);
    let vols = &op_at(&ops, "/spec/volumes")["value"];
    assert_eq!(
        named(vols, "remora-ca-token").unwrap()["projected"]["sources"][0]["serviceAccountToken"]
            ["audience"],
        "mesh-ca"
    );
    let proxy = named(&out["spec"]["initContainers"], "remora-proxy").unwrap();
    assert_eq!(
        named(&proxy["env"], "REMORA_CA_ADDRESS").unwrap()["value"],
        "ca.mesh.example:443"
    );
    assert_eq!(
        named(&proxy["env"], "REMORA_TRUST_DOMAIN").unwrap()["value"],
        "example.org"
    );
}

#[test]
fn identity_off_injects_none_of_it() {
    let (ops, out) = review(&pod(), &off());
    let text = serde_json::to_string(&ops).unwrap();
    for absent in [
        "remora-ca",
        "REMORA_CA",
        "REMORA_TRUST_DOMAIN",
        "/var/run/secrets",
        "serviceAccountToken",
        "tlsMode",
    ] {
        assert!(!text.contains(absent), "{absent} in the patch: {text}");
    }
    // Istio's canonical service labels are there, identity or not.
    assert_eq!(
        out["metadata"]["labels"],
        json!({"app": "web", "service.istio.io/canonical-name": "web",
               "service.istio.io/canonical-revision": "latest"})
    );
    let vols: Vec<&str> = out["spec"]["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert_eq!(vols, ["remora-rules", "remora-podinfo"]);
    // The rest of the injection is unchanged.
    assert_eq!(out["spec"]["initContainers"][0]["name"], "remora-proxy");
    assert_eq!(out["spec"]["initContainers"][1]["name"], "remora-init");
}

#[test]
fn reinjection_is_a_noop_with_identity_on_and_off() {
    for cfg in [Config::default(), off()] {
        let (_, once) = review(&pod(), &cfg);
        let body = serde_json::to_vec(&review::review_for(&once, "uid-2", "shop")).unwrap();
        let v: Value = serde_json::from_slice(&review::handle(&body, &cfg).body).unwrap();
        assert_eq!(v["response"]["allowed"], true);
        assert!(v["response"].get("patch").is_none(), "{v}");
    }
}

#[test]
fn offline_inject_labels_the_workload_template() {
    let docs = cli::parse_docs(
        r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: shop, labels: {team: a}}
spec:
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers: [{name: web, image: nginx}]
"#,
    )
    .unwrap();
    let (out, reports) = cli::inject_docs(docs.clone(), "default", &Config::default());
    assert_eq!(reports[0].decision, "injected");
    let d = &out[0];
    assert_eq!(
        d["spec"]["template"]["metadata"]["labels"],
        json!({"app": "web", "security.istio.io/tlsMode": "istio",
               "service.istio.io/canonical-name": "web",
               "service.istio.io/canonical-revision": "latest"})
    );
    // The Deployment's own labels and selector are not the pod's: untouched.
    assert_eq!(d["metadata"]["labels"], json!({"team": "a"}));
    // The sidecar names its workload after the Deployment (as `istioctl kube-inject` does);
    // the template gets no owner of its own.
    let proxy = d["spec"]["template"]["spec"]["initContainers"]
        .as_array()
        .into_iter()
        .chain(d["spec"]["template"]["spec"]["containers"].as_array())
        .flatten()
        .find(|c| c["name"] == "remora-proxy")
        .unwrap();
    assert_eq!(
        named(&proxy["env"], "ISTIO_META_WORKLOAD_NAME").unwrap()["value"],
        "web"
    );
    assert!(d["spec"]["template"]["metadata"]
        .get("ownerReferences")
        .is_none());
    assert_eq!(
        d["spec"]["selector"],
        json!({"matchLabels": {"app": "web"}})
    );
    let yaml = cli::to_yaml(&out).unwrap();
    for part in [
        "security.istio.io/tlsMode: istio",
        "name: remora-ca-token",
        "audience: remora-ca",
        "expirationSeconds: 43200",
        "name: remora-ca-root-cert",
        "REMORA_CA_ADDRESS",
        "remora-ca.remora-system.svc:15012",
    ] {
        assert!(yaml.contains(part), "{part} missing:\n{yaml}");
    }
    let (off_out, _) = cli::inject_docs(docs, "default", &off());
    let yaml = cli::to_yaml(&off_out).unwrap();
    assert!(
        !yaml.contains("tlsMode") && !yaml.contains("remora-ca"),
        "{yaml}"
    );
}
