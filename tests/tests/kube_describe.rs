//! Contract tests of `remora describe`: the real `remora` binary run with `--server` against the
//! recorded Kubernetes API (`remora_e2e::apiserver::RecordedApi`), replies written to the
//! Kubernetes API reference in this file (Pod, Service, ConfigMap, Deployment and their Lists,
//! `Status` failures).
//!
//! Provenance of the rules: `VS_REVIEWS_80_20`, `DR_ALL_MTLS` and `VS_REVIEWS_V3` are copied
//! verbatim from Istio's `samples/bookinfo/networking/virtual-service-reviews-80-20.yaml`,
//! `destination-rule-all-mtls.yaml` and `virtual-service-reviews-v3.yaml` (istio/istio commit
//! 86c9f01fd735fb01d8192f5bcaf0d424afb7f14c, Apache-2.0, Copyright Istio Authors; our copy and
//! its notes: /work/shared/anchors/istio, SOURCE.md). The Sidecar, the pods, Services and
//! Deployment are ours, modelled on Bookinfo (tests/fixtures/bookinfo.yaml).

use remora_e2e::apiserver::{status_body, RecordedApi, Reply};
use remora_e2e::clitest::{remora, remora_args, unmatched, workspace, Run};
use serde_json::{json, Value};

/// Istio samples/bookinfo/networking/virtual-service-reviews-80-20.yaml (verbatim).
const VS_REVIEWS_80_20: &str = r#"apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: reviews
spec:
  hosts:
    - reviews
  http:
  - route:
    - destination:
        host: reviews
        subset: v1
      weight: 80
    - destination:
        host: reviews
        subset: v2
      weight: 20
"#;

/// Istio samples/bookinfo/networking/destination-rule-all-mtls.yaml (verbatim).
const DR_ALL_MTLS: &str = r#"apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: productpage
spec:
  host: productpage
  trafficPolicy:
    tls:
      mode: ISTIO_MUTUAL
  subsets:
  - name: v1
    labels:
      version: v1
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: reviews
spec:
  host: reviews
  trafficPolicy:
    tls:
      mode: ISTIO_MUTUAL
  subsets:
  - name: v1
    labels:
      version: v1
  - name: v2
    labels:
      version: v2
  - name: v3
    labels:
      version: v3
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: ratings
spec:
  host: ratings
  trafficPolicy:
    tls:
      mode: ISTIO_MUTUAL
  subsets:
  - name: v1
    labels:
      version: v1
  - name: v2
    labels:
      version: v2
  - name: v2-mysql
    labels:
      version: v2-mysql
  - name: v2-mysql-vm
    labels:
      version: v2-mysql-vm
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: details
spec:
  host: details
  trafficPolicy:
    tls:
      mode: ISTIO_MUTUAL
  subsets:
  - name: v1
    labels:
      version: v1
  - name: v2
    labels:
      version: v2
---
"#;

/// Istio samples/bookinfo/networking/virtual-service-reviews-v3.yaml (verbatim): staged in a
/// ConfigMap labelled remora.dev/rules=true, which no proxy loads.
const VS_REVIEWS_V3: &str = r#"apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: reviews
spec:
  hosts:
    - reviews
  http:
  - route:
    - destination:
        host: reviews
        subset: v3
"#;

/// Ours: the namespace's Sidecar (no workloadSelector), egress to the namespace and
/// istio-system only, unknown external hosts refused.
const SIDECAR_DEFAULT: &str = r#"apiVersion: networking.istio.io/v1
kind: Sidecar
metadata:
  name: default
spec:
  egress:
  - hosts:
    - "./*"
    - "istio-system/*"
  outboundTrafficPolicy:
    mode: REGISTRY_ONLY
"#;

const REVIEWS_POD: &str = "reviews-v1-5d8f9c7b4-k2x8p";

fn meta(name: &str, ns: &str, rv: &str) -> Value {
    json!({
        "name": name,
        "namespace": ns,
        "uid": format!("0b5e3c1a-7d2f-4e8b-9c6a-{:012x}", name.len() * 7919 + ns.len()),
        "resourceVersion": rv,
        "creationTimestamp": "2026-11-21T10:00:00Z",
    })
}

/// A Pod as the API server returns it; `meshed` adds what remora's injector adds.
fn pod(ns: &str, name: &str, labels: Value, owner: Option<(&str, &str)>, meshed: bool) -> Value {
    let mut m = meta(name, ns, "2201");
    m["labels"] = labels;
    if let Some((kind, oname)) = owner {
        m["ownerReferences"] = json!([{
            "apiVersion": "apps/v1", "kind": kind, "name": oname,
            "uid": "c7b6a5f4-e3d2-4f1a-9e6c-d7b8e9a2c1f3",
            "controller": true, "blockOwnerDeletion": true,
        }]);
    }
    let app = name.split('-').next().unwrap_or(name);
    let mut spec = json!({
        "containers": [{
            "name": app,
            "image": format!("docker.io/istio/examples-bookinfo-{app}-v1:1.20.2"),
            "ports": [{"containerPort": 9080, "protocol": "TCP"}],
            "imagePullPolicy": "IfNotPresent",
        }],
        "restartPolicy": "Always",
        "serviceAccountName": format!("bookinfo-{app}"),
        "nodeName": "node-1",
        "dnsPolicy": "ClusterFirst",
    });
    if meshed {
        m["annotations"] = json!({
            "sidecar.istio.io/status": "{\"initContainers\":[\"remora-proxy\",\"remora-init\"],\"containers\":[],\"volumes\":[\"remora-rules\",\"remora-podinfo\"],\"revision\":\"default\"}",
        });
        spec["initContainers"] = json!([
            {"name": "remora-init", "image": "ghcr.io/remora-mesh/remora-init:0.1.0",
             "command": ["remora-init"],
             "args": ["-p", "15001", "-z", "15006", "-u", "1337", "-m", "REDIRECT", "-i", "*", "-x", "", "-b", "*", "-d", "15090,15021,15020"]},
            {"name": "remora-proxy", "image": "ghcr.io/remora-mesh/remora-proxy:0.1.0",
             "command": ["remora-proxy"], "args": ["run"], "restartPolicy": "Always",
             "volumeMounts": [{"name": "remora-rules", "mountPath": "/etc/remora/rules", "readOnly": true}]},
        ]);
        spec["volumes"] = json!([
            {"name": "remora-rules", "configMap": {"name": "remora-mesh-rules", "optional": true, "defaultMode": 420}},
            {"name": "remora-podinfo", "downwardAPI": {"items": [{"path": "labels", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.labels"}}], "defaultMode": 420}},
        ]);
    }
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": m,
        "spec": spec,
        "status": {"phase": "Running", "podIP": "10.244.1.23", "hostIP": "172.18.0.3",
                   "startTime": "2026-11-21T10:00:00Z", "podIPs": [{"ip": "10.244.1.23"}]},
    })
}

fn reviews_pod() -> Value {
    let mut p = pod(
        "bookinfo",
        REVIEWS_POD,
        json!({"app": "reviews", "version": "v1", "pod-template-hash": "5d8f9c7b4"}),
        Some(("ReplicaSet", "reviews-v1-5d8f9c7b4")),
        true,
    );
    // The owner's annotation, and the -d the injector rendered from it.
    p["metadata"]["annotations"]["traffic.sidecar.istio.io/excludeInboundPorts"] = json!("9090");
    p["spec"]["initContainers"][0]["args"][15] = json!("15090,15021,15020,9090");
    p
}

/// A ClusterIP Service (list item: the API server leaves out kind and apiVersion there).
fn service(ns: &str, name: &str, ip: &str, port_name: &str, port: u16) -> Value {
    let mut m = meta(name, ns, "1804");
    m["labels"] = json!({"app": name, "service": name});
    json!({
        "metadata": m,
        "spec": {
            "ports": [{"name": port_name, "protocol": "TCP", "port": port, "targetPort": port}],
            "selector": {"app": name},
            "clusterIP": ip,
            "clusterIPs": [ip],
            "type": "ClusterIP",
            "sessionAffinity": "None",
            "ipFamilies": ["IPv4"],
            "ipFamilyPolicy": "SingleStack",
            "internalTrafficPolicy": "Cluster",
        },
        "status": {"loadBalancer": {}},
    })
}

fn list(kind: &str, items: Vec<Value>) -> Value {
    json!({"kind": kind, "apiVersion": "v1", "metadata": {"resourceVersion": "2300"}, "items": items})
}

fn config_map(ns: &str, name: &str, labels: Option<Value>, data: Value) -> Value {
    let mut m = meta(name, ns, "812");
    if let Some(l) = labels {
        m["labels"] = l;
    }
    json!({"kind": "ConfigMap", "apiVersion": "v1", "metadata": m, "data": data})
}

fn not_found(kind: &str, name: &str) -> Reply {
    let mut body = status_body(404, "NotFound", &format!("{kind} \"{name}\" not found"));
    body["details"] = json!({"name": name, "kind": kind});
    Reply::json(404, body)
}

const LABELLED: &str = "labelSelector=remora.dev/rules%3Dtrue";

/// Namespace bookinfo: reviews-v1 (meshed), mysqldb-v1-0 (not meshed), sleep (meshed, no
/// Service), the Services reviews, ratings and mysqldb, the rules ConfigMap and a staged one.
/// Namespace tools: a pod, no Services, no rules ConfigMap.
async fn api() -> RecordedApi {
    let api = RecordedApi::start().await.expect("recorded API starts");
    let get = |path: &str, body: Value| api.on("GET", path, Reply::json(200, body));
    get(
        &format!("/api/v1/namespaces/bookinfo/pods/{REVIEWS_POD}"),
        reviews_pod(),
    );
    get(
        "/api/v1/namespaces/bookinfo/pods/mysqldb-v1-0",
        pod(
            "bookinfo",
            "mysqldb-v1-0",
            json!({"app": "mysqldb", "version": "v1"}),
            Some(("StatefulSet", "mysqldb-v1")),
            false,
        ),
    );
    get(
        "/api/v1/namespaces/bookinfo/pods/sleep-7b9f8c6d5-q4w2e",
        pod(
            "bookinfo",
            "sleep-7b9f8c6d5-q4w2e",
            json!({"app": "sleep", "pod-template-hash": "7b9f8c6d5"}),
            Some(("ReplicaSet", "sleep-7b9f8c6d5")),
            true,
        ),
    );
    api.on(
        "GET",
        "/api/v1/namespaces/bookinfo/pods/reviews-v9",
        not_found("pods", "reviews-v9"),
    );
    get(
        "/api/v1/namespaces/bookinfo/services",
        list(
            "ServiceList",
            vec![
                service("bookinfo", "reviews", "10.96.14.21", "http", 9080),
                service("bookinfo", "ratings", "10.96.14.22", "http", 9080),
                service("bookinfo", "mysqldb", "10.96.14.23", "tcp", 3306),
            ],
        ),
    );
    get(
        "/api/v1/namespaces/bookinfo/configmaps/remora-mesh-rules",
        config_map(
            "bookinfo",
            "remora-mesh-rules",
            None,
            json!({
                "virtual-service-reviews-80-20.yaml": VS_REVIEWS_80_20,
                "destination-rule-all-mtls.yaml": DR_ALL_MTLS,
                "sidecar.yaml": SIDECAR_DEFAULT,
            }),
        ),
    );
    get(
        &format!("/api/v1/namespaces/bookinfo/configmaps?{LABELLED}"),
        list(
            "ConfigMapList",
            vec![config_map(
                "bookinfo",
                "canary-rules",
                Some(json!({"remora.dev/rules": "true"})),
                json!({"virtual-service-reviews-v3.yaml": VS_REVIEWS_V3}),
            )],
        ),
    );
    // The injector config is absent: the built-in default rules ConfigMap name.
    api.on(
        "GET",
        "/api/v1/namespaces/remora-system/configmaps/remora-injector",
        not_found("configmaps", "remora-injector"),
    );
    // A Deployment and the pods its selector lists.
    let mut deploy = json!({
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": meta("reviews-v1", "bookinfo", "2150"),
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "reviews", "version": "v1"}},
                 "template": {"metadata": {"labels": {"app": "reviews", "version": "v1"}},
                              "spec": {"containers": [{"name": "reviews", "image": "docker.io/istio/examples-bookinfo-reviews-v1:1.20.2"}]}}},
        "status": {"observedGeneration": 1, "replicas": 1, "readyReplicas": 1, "updatedReplicas": 1, "availableReplicas": 1},
    });
    deploy["metadata"]["generation"] = json!(1);
    get(
        "/apis/apps/v1/namespaces/bookinfo/deployments/reviews-v1",
        deploy,
    );
    let mut item = reviews_pod();
    if let Some(o) = item.as_object_mut() {
        o.remove("kind");
        o.remove("apiVersion");
    }
    get(
        "/api/v1/namespaces/bookinfo/pods?labelSelector=app%3Dreviews%2Cversion%3Dv1",
        list("PodList", vec![item]),
    );
    // Namespace tools: no Services, no rules.
    get(
        "/api/v1/namespaces/tools/pods/toolbox-0",
        pod(
            "tools",
            "toolbox-0",
            json!({"app": "toolbox"}),
            Some(("StatefulSet", "toolbox")),
            true,
        ),
    );
    get(
        "/api/v1/namespaces/tools/services",
        list("ServiceList", vec![]),
    );
    api.on(
        "GET",
        "/api/v1/namespaces/tools/configmaps/remora-mesh-rules",
        not_found("configmaps", "remora-mesh-rules"),
    );
    get(
        &format!("/api/v1/namespaces/tools/configmaps?{LABELLED}"),
        list("ConfigMapList", vec![]),
    );
    api
}

async fn run(api: &RecordedApi, args: &[&str]) -> Run {
    remora(api, args).await.expect("remora runs")
}

fn has(r: &Run, text: &str) {
    assert!(r.stdout.contains(text), "missing {text:?}\n{}", r.all());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn describe_bookinfo_reviews_v1() {
    let api = api().await;
    let r = run(
        &api,
        &["describe", "pod", &format!("{REVIEWS_POD}.bookinfo")],
    )
    .await;
    assert_eq!(r.code, 0, "{}", r.all());
    has(&r, &format!("Pod: {REVIEWS_POD} (namespace bookinfo)"));
    has(
        &r,
        "workload: Deployment reviews-v1 (owner ReplicaSet reviews-v1-5d8f9c7b4",
    );
    has(
        &r,
        "labels: app=reviews, pod-template-hash=5d8f9c7b4, version=v1",
    );
    has(
        &r,
        "injected: yes, proxy image ghcr.io/remora-mesh/remora-proxy:0.1.0, version 0.1.0",
    );
    has(&r, "capture: inbound: every TCP port except 15090, 15021, 15020, 9090, 15008 (tunnel) is redirected to 15006");
    has(&r, "rules: ConfigMap bookinfo/remora-mesh-rules: 3 files, 1 VirtualService, 4 DestinationRules, 0 ServiceEntries, 1 Sidecar");
    has(
        &r,
        "staged (labelled remora.dev/rules=true, not loaded by proxies): bookinfo/canary-rules",
    );
    // The Service that selects the pod, not the others.
    has(&r, "Service reviews (reviews.bookinfo.svc.cluster.local): its selector app=reviews matches the pod's labels");
    assert!(!r.stdout.contains("Service ratings"), "{}", r.all());
    has(
        &r,
        "port 9080/TCP \"http\" -> targetPort 9080: remora: HTTP: declared by the Service's port name \"http\"",
    );
    // The VirtualService route, its weights, this pod's subset.
    has(&r, "VirtualService bookinfo/reviews: applies to HTTP traffic for reviews.bookinfo.svc.cluster.local");
    has(&r, "http route spec.http[0] (every request):");
    has(
        &r,
        "-> reviews.bookinfo.svc.cluster.local subset v1: weight 80 (80%)  <- this pod",
    );
    has(
        &r,
        "-> reviews.bookinfo.svc.cluster.local subset v2: weight 20 (20%)\n",
    );
    has(
        &r,
        "this pod receives 80% of this route's traffic (via subset v1)",
    );
    // The DestinationRule and its policy, the pod's subset.
    has(&r, "DestinationRule bookinfo/reviews: host reviews.bookinfo.svc.cluster.local names this Service");
    has(&r, "traffic policy (port 9080, subset v1):");
    has(
        &r,
        "load balancer: LEAST_REQUEST (not set: Istio's default)",
    );
    has(
        &r,
        "TLS: ISTIO_MUTUAL: mutual TLS between sidecars with the workload certificates",
    );
    has(&r, "subset v1 (version=v1)  <- this pod");
    has(&r, "subset v2 (version=v2)\n");
    // The Sidecar and the annotation.
    has(
        &r,
        "Sidecar bookinfo/default: no workloadSelector: the default of namespace bookinfo",
    );
    has(&r, "egress hosts: bookinfo/*, istio-system/*");
    has(&r, "outboundTrafficPolicy: REGISTRY_ONLY");
    has(&r, "traffic.sidecar.istio.io/excludeInboundPorts=\"9090\": inbound traffic to ports 9090 bypasses the proxy");
    assert!(unmatched(&api).is_empty(), "{:?}", unmatched(&api));
    // docs/install.md shows this very output.
    let docs =
        std::fs::read_to_string(workspace().join("docs/install.md")).expect("docs/install.md");
    assert!(
        docs.contains(&format!(
            "$ remora describe pod {REVIEWS_POD}.bookinfo\n{}",
            r.stdout
        )),
        "docs/install.md's example of remora describe differs from the output:\n{}",
        r.stdout
    );

    // The same by its Deployment, and with -n.
    let r2 = run(&api, &["describe", "deploy/reviews-v1", "-n", "bookinfo"]).await;
    assert_eq!(r2.code, 0, "{}", r2.all());
    assert_eq!(r2.stdout, r.stdout, "{}", r2.all());
    assert!(
        r2.stderr.contains(&format!("describing pod {REVIEWS_POD}")),
        "{}",
        r2.all()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn describe_json_output() {
    let api = api().await;
    let r = run(
        &api,
        &["describe", REVIEWS_POD, "-n", "bookinfo", "-o", "json"],
    )
    .await;
    assert_eq!(r.code, 0, "{}", r.all());
    let v: Value = serde_json::from_str(&r.stdout).expect("JSON output");
    assert_eq!(v["pod"], REVIEWS_POD);
    assert_eq!(v["workload"]["kind"], "Deployment");
    assert_eq!(v["injection"]["injected"], true);
    assert_eq!(v["injection"]["proxy_version"], "0.1.0");
    let svcs = v["services"].as_array().expect("services");
    assert_eq!(svcs.len(), 1, "{v:#}");
    let s = &svcs[0];
    assert_eq!(s["host"], "reviews.bookinfo.svc.cluster.local");
    assert_eq!(s["ports"][0]["protocol"], "HTTP");
    assert_eq!(s["ports"][0]["declared"], "HTTP");
    let vs = &s["virtual_services"][0];
    assert_eq!(vs["name"], "bookinfo/reviews");
    assert_eq!(vs["applies"], true);
    let route = &vs["routes"][0];
    assert_eq!(route["this_pod_percent"], 80);
    let dests: Vec<(Value, Value, Value)> = route["destinations"]
        .as_array()
        .expect("destinations")
        .iter()
        .map(|d| {
            (
                d["subset"].clone(),
                d["weight"].clone(),
                d["this_pod"].clone(),
            )
        })
        .collect();
    assert_eq!(
        dests,
        [
            (json!("v1"), json!(80), json!(true)),
            (json!("v2"), json!(20), json!(false))
        ]
    );
    let dr = &s["destination_rule"];
    assert_eq!(dr["name"], "bookinfo/reviews");
    assert_eq!(dr["pod_subsets"], json!(["v1"]));
    assert!(dr["traffic_policy"][0]["tls"]
        .as_str()
        .unwrap_or("")
        .starts_with("ISTIO_MUTUAL"));
    assert_eq!(v["sidecar"]["name"], "bookinfo/default");
    assert_eq!(v["rules"]["staged"], json!(["bookinfo/canary-rules"]));
    assert_eq!(
        v["annotations"][1]["key"],
        "traffic.sidecar.istio.io/excludeInboundPorts"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn describe_pod_not_injected() {
    let api = api().await;
    let r = run(&api, &["describe", "pod", "mysqldb-v1-0", "-n", "bookinfo"]).await;
    assert_eq!(r.code, 0, "{}", r.all());
    has(
        &r,
        "workload: StatefulSet mysqldb-v1 (owner StatefulSet mysqldb-v1 (ownerReferences))",
    );
    has(&r, "injected: NO: the pod has no remora-proxy container");
    has(
        &r,
        "`remora check-inject pod mysqldb-v1-0 -n bookinfo` says why it was not injected",
    );
    // Its Service still gets the clients' treatment: the port named "tcp" is opaque TCP.
    has(&r, "Service mysqldb (mysqldb.bookinfo.svc.cluster.local)");
    has(&r, "port 3306/TCP \"tcp\" -> targetPort 3306: remora: TCP: declared by the Service's port name \"tcp\"");
    has(
        &r,
        "note: no VirtualService for mysqldb.bookinfo.svc.cluster.local",
    );
    has(
        &r,
        "note: no DestinationRule for mysqldb.bookinfo.svc.cluster.local",
    );
    // Not meshed: the rules ConfigMap name came from the (absent) injector config's default.
    assert!(
        api.requests()
            .iter()
            .any(|s| s.path() == "/api/v1/namespaces/remora-system/configmaps/remora-injector"),
        "{:?}",
        api.requests()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn describe_pod_outside_every_service_and_without_rules() {
    let api = api().await;
    let r = run(&api, &["describe", "sleep-7b9f8c6d5-q4w2e.bookinfo"]).await;
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(!r.stdout.contains("\nService "), "{}", r.all());
    has(&r, "note: no Service in namespace bookinfo selects this pod: no VirtualService or DestinationRule routes traffic to it");
    has(&r, "Sidecar bookinfo/default");

    // Namespace tools has no rules ConfigMap: one line says so, the report goes on.
    let r = run(&api, &["describe", "pod", "toolbox-0", "-n", "tools"]).await;
    assert_eq!(r.code, 0, "{}", r.all());
    let rules: Vec<&str> = r
        .stdout
        .lines()
        .filter(|l| l.contains("no rules ConfigMap"))
        .collect();
    assert_eq!(
        rules,
        ["  rules: no rules ConfigMap tools/remora-mesh-rules: no VirtualService, DestinationRule or Sidecar applies; traffic to each Service goes to all its endpoints (kubectl -n tools apply the rules as ConfigMap remora-mesh-rules)"],
        "{}",
        r.all()
    );
    has(&r, "Sidecar: none:");
    assert!(unmatched(&api).is_empty(), "{:?}", unmatched(&api));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn describe_errors_are_one_line() {
    let api = api().await;
    let r = run(&api, &["describe", "pod", "reviews-v9", "-n", "bookinfo"]).await;
    assert_eq!(r.code, 2, "{}", r.all());
    assert_eq!(r.stdout, "", "{}", r.all());
    assert_eq!(
        r.stderr,
        "remora: pod \"reviews-v9\" not found in namespace bookinfo\n",
        "{}",
        r.all()
    );

    let r = run(&api, &["describe", "svc/reviews", "-n", "bookinfo"]).await;
    assert_eq!(r.code, 2, "{}", r.all());
    assert_eq!(r.stderr.lines().count(), 1, "{}", r.all());
    assert!(
        r.stderr
            .starts_with("remora: target: invalid value \"svc/reviews\""),
        "{}",
        r.all()
    );

    // An API server that is not there.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}", closed.local_addr().expect("addr"));
    drop(closed);
    let r = remora_args(&[
        "--server",
        &url,
        "describe",
        "pod",
        REVIEWS_POD,
        "-n",
        "bookinfo",
    ])
    .await
    .expect("remora runs");
    assert_eq!(r.code, 2, "{}", r.all());
    assert_eq!(r.stderr.lines().count(), 1, "{}", r.all());
    assert!(
        r.stderr.starts_with(&format!(
            "remora: reading pod bookinfo/{REVIEWS_POD}: cannot connect to the API server at {url}/ ("
        )),
        "{}",
        r.all()
    );
}

const GATEWAY_POD: &str = "istio-ingressgateway-6c8d9f7b5-x2k4p";

/// Ours, modelled on Istio's bookinfo-gateway.yaml with an HTTPS server: the ingress gateway's
/// Gateway (HTTP on 80, HTTPS on 443 with the Secret `bookinfo-cert`), the VirtualService bound
/// to it, and a namespace-wide STRICT PeerAuthentication, which sidecars enforce and a gateway
/// does not.
const GATEWAY_RULES: &str = r#"apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: bookinfo-gateway, namespace: istio-system}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: ["*"]
  - port: {number: 443, name: https, protocol: HTTPS}
    hosts: [bookinfo.example.com]
    tls: {mode: SIMPLE, credentialName: bookinfo-cert}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: bookinfo, namespace: istio-system}
spec:
  hosts: ["*"]
  gateways: [bookinfo-gateway]
  http:
  - route: [{destination: {host: productpage.bookinfo.svc.cluster.local, port: {number: 9080}}}]
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: istio-system}
spec: {mtls: {mode: STRICT}}
"#;

/// The ingress gateway's pod as `manifests/gateway.yaml` makes it: container `istio-proxy`
/// running `remora-proxy gateway`, Gateway ports 80 and 443 on 8080 and 8443.
fn gateway_pod() -> Value {
    let mut p = pod(
        "istio-system",
        GATEWAY_POD,
        json!({"app": "istio-ingressgateway", "istio": "ingressgateway", "pod-template-hash": "6c8d9f7b5"}),
        Some(("ReplicaSet", "istio-ingressgateway-6c8d9f7b5")),
        false,
    );
    p["spec"]["containers"] = json!([{
        "name": "istio-proxy",
        "image": "ghcr.io/remora-mesh/remora-proxy:0.1.0",
        "args": ["gateway"],
        "env": [{"name": "REMORA_GATEWAY_PORT_MAP", "value": "80=8080,443=8443"}],
        "ports": [{"containerPort": 8080, "protocol": "TCP"}, {"containerPort": 8443, "protocol": "TCP"}],
    }]);
    p
}

/// The gateway's `/config_dump`: the dump a real proxy wrote (the proxy-config fixture's),
/// with the gateway section the model's own `gateway::dump` makes of these rules, the HTTPS
/// server showing its certificate.
fn gateway_config_dump() -> Value {
    use remora_model::dump::{ConfigDump, ServedCertificateDump};
    let fixture: Value = serde_json::from_str(
        &std::fs::read_to_string(workspace().join("tests/fixtures/kube-api/cli/proxy-config.json"))
            .expect("the proxy-config fixture"),
    )
    .expect("JSON");
    let body = fixture["exchanges"]
        .as_array()
        .expect("exchanges")
        .iter()
        .find_map(|x| {
            x["port_forward"]["http"]["/config_dump"]["body"]
                .as_object()
                .cloned()
        })
        .expect("a recorded /config_dump");
    let mut dump: ConfigDump = serde_json::from_value(Value::Object(body)).expect("a ConfigDump");
    let ctx = remora_model::rules::LoadContext {
        namespace: "istio-system".into(),
        cluster_domain: "cluster.local".into(),
        pod_labels: Default::default(),
        root_namespace: "remora-system".into(),
    };
    let snap = remora_model::rules::snapshot_from_yaml(&[("rules.yaml", GATEWAY_RULES)], &ctx, 1)
        .expect("rules load");
    let labels = [("istio".to_string(), "ingressgateway".to_string())].into();
    let ports = remora_model::gateway::PortMap::parse("80=8080,443=8443").expect("port map");
    let plan = remora_model::gateway::plan(&snap.gateways, &labels, &ports);
    dump.gateway = Some(remora_model::gateway::dump(
        &plan,
        &snap.gateway_virtual_services,
        |_, _| false,
        |port, _| {
            (port == 8443).then(|| ServedCertificateDump {
                subject: "CN=bookinfo.example.com, O=Bookinfo".into(),
                dns_names: vec!["bookinfo.example.com".into()],
                serial: "5c1e0f27a9".into(),
                not_after: 1_798_675_200,
            })
        },
    ));
    serde_json::to_value(dump).expect("serializes")
}

/// `describe` of a gateway pod: its servers with the certificate each serves, from the
/// gateway's own `/config_dump` through a port-forward, in `proxy-config listeners`' words
/// (which now reads a gateway pod too); when the gateway cannot be asked, whether each
/// `credentialName` Secret exists. No PeerAuthentication mode is shown as applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn describe_gateway_pod_shows_its_certificates() {
    let api = api().await;
    let get = |path: &str, body: Value| api.on("GET", path, Reply::json(200, body));
    get(
        &format!("/api/v1/namespaces/istio-system/pods/{GATEWAY_POD}"),
        gateway_pod(),
    );
    get(
        "/api/v1/namespaces/istio-system/services",
        list("ServiceList", vec![]),
    );
    get(
        "/api/v1/namespaces/istio-system/configmaps/remora-mesh-rules",
        config_map(
            "istio-system",
            "remora-mesh-rules",
            None,
            json!({"gateway.yaml": GATEWAY_RULES}),
        ),
    );
    get(
        &format!("/api/v1/namespaces/istio-system/configmaps?{LABELLED}"),
        list("ConfigMapList", vec![]),
    );
    api.on_port_forward(
        "istio-system",
        GATEWAY_POD,
        15020,
        remora_e2e::apiserver::PodPort::Http(
            [("/config_dump".to_string(), (200, gateway_config_dump()))].into(),
        ),
    );
    let cert = "certificate CN=bookinfo.example.com, O=Bookinfo [bookinfo.example.com] serial 5c1e0f27a9 expires 2026-12-31T00:00:00Z";
    let r = run(
        &api,
        &["describe", "pod", GATEWAY_POD, "-n", "istio-system"],
    )
    .await;
    assert_eq!(r.code, 0, "{}", r.all());
    has(&r, "Gateway (remora-proxy gateway):\n  selected by: istio-system/bookinfo-gateway\n  servers and certificates: as the gateway serves them (its /config_dump, rules generation 1)\n");
    has(&r, &format!("  port 8443 (Gateway port 443): TLS terminated (the SNI picks the server), then HTTP\n    Gateway istio-system/bookinfo-gateway spec.servers[1] HTTPS [bookinfo.example.com] tls SIMPLE credentialName bookinfo-cert {cert}\n"));
    has(
        &r,
        "    Gateway istio-system/bookinfo-gateway spec.servers[0] HTTP [*]\n",
    );
    has(&r, "  mTLS mode: none: PeerAuthentication does not apply to a gateway: its TLS comes from its Gateway servers");
    has(&r, "  not applied: PeerAuthentication istio-system/default (mode STRICT): namespace-wide (namespace istio-system, no selector), but a gateway takes no PeerAuthentication\n");
    assert!(unmatched(&api).is_empty(), "{:?}", unmatched(&api));
    // The same certificate line as proxy-config listeners prints, from the same dump.
    let r2 = run(
        &api,
        &[
            "proxy-config",
            "listeners",
            &format!("{GATEWAY_POD}.istio-system"),
        ],
    )
    .await;
    assert_eq!(r2.code, 0, "{}", r2.all());
    assert!(r2.stdout.contains(cert), "{}", r2.all());
    // JSON: the certificate in the gateway section, and where it came from.
    let r3 = run(
        &api,
        &["describe", GATEWAY_POD, "-n", "istio-system", "-o", "json"],
    )
    .await;
    let v: Value = serde_json::from_str(&r3.stdout).expect("JSON output");
    assert_eq!(v["gateway_tls"]["live"], true, "{v:#}");
    assert_eq!(
        v["gateway"]["listeners"][1]["servers"][0]["certificate"]["serial"],
        "5c1e0f27a9"
    );

    // The gateway cannot be asked (another admin port the kubelet cannot reach): the Secret
    // is looked up by name; it is missing, so the server is down until it exists.
    api.on_port_forward(
        "istio-system",
        GATEWAY_POD,
        15999,
        remora_e2e::apiserver::PodPort::Refused("error forwarding port 15999 to pod 7a1d, uid : failed to connect to localhost:15999 inside namespace \"7a1d\", IPv4: dial tcp4 127.0.0.1:15999: connect: connection refused".into()),
    );
    api.on(
        "GET",
        "/api/v1/namespaces/istio-system/secrets/bookinfo-cert",
        not_found("secrets", "bookinfo-cert"),
    );
    let r = run(
        &api,
        &[
            "describe",
            "pod",
            GATEWAY_POD,
            "-n",
            "istio-system",
            "--admin-port",
            "15999",
        ],
    )
    .await;
    assert_eq!(r.code, 0, "{}", r.all());
    has(&r, "  servers and certificates: planned from the rules; states and certificates not known (cannot read its /config_dump through a port-forward to its admin port 15999: ");
    has(&r, "    Gateway istio-system/bookinfo-gateway spec.servers[1] HTTPS [bookinfo.example.com] tls SIMPLE credentialName bookinfo-cert\n      no Secret bookinfo-cert in the gateway's namespace: this server is down until it exists\n");
    assert!(!r.stdout.contains("certificate CN="), "{}", r.all());
    assert!(unmatched(&api).is_empty(), "{:?}", unmatched(&api));
}
