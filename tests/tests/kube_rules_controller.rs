//! Contract tests of the rules controller (`remora_webhook::rules_controller`) against the lab's
//! API stand-in (`labapi`, on 127.0.0.1): Istio objects applied as objects are compiled into
//! each meshed namespace's `remora-mesh-rules` ConfigMap by Istio's visibility rules; invalid
//! objects are left out with an Event; a user's ConfigMap is left alone; a change reaches the
//! ConfigMap quickly and an unchanged one is not rewritten; a watch expired by the API server
//! (410) is re-listed; of two replicas one leads and the other takes over when it stops; a
//! ConfigMap over the size limit is not written; a missing CRD group does not hold the rest.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use remora_e2e::labapi::LabApi;
use remora_webhook::rules_controller::{self, Options};
use serde_json::{json, Value};

const NET: &str = "networking.istio.io/v1";

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn client(api: &LabApi) -> kube::Client {
    let uri: http::Uri = api.url().parse().expect("url");
    kube::Client::try_from(kube::Config::new(uri)).expect("client")
}

fn options(identity: &str) -> Options {
    let mut o = Options::new("remora-system", identity);
    o.lease_duration = Duration::from_secs(3);
    o.renew_every = Duration::from_millis(500);
    o.retry_every = Duration::from_millis(200);
    o.resync = Duration::from_secs(2);
    o.missing_group_retry = Duration::from_millis(500);
    o
}

fn dr(ns: &str, name: &str, host: &str, subsets: &[&str], export: Option<Value>) -> Value {
    let subsets: Vec<Value> = subsets
        .iter()
        .map(|s| json!({"name": s, "labels": {"version": s}}))
        .collect();
    let mut spec = json!({"host": host, "subsets": subsets});
    if let Some(e) = export {
        spec["exportTo"] = e;
    }
    json!({"apiVersion": NET, "kind": "DestinationRule",
           "metadata": {"name": name, "namespace": ns}, "spec": spec})
}

fn vs(ns: &str, name: &str, spec: Value) -> Value {
    json!({"apiVersion": NET, "kind": "VirtualService",
           "metadata": {"name": name, "namespace": ns}, "spec": spec})
}

/// The data keys of `ns`'s rules ConfigMap, `None` while it does not exist.
fn keys(api: &LabApi, ns: &str) -> Option<Vec<String>> {
    api.object("configmaps", ns, "remora-mesh-rules").map(|cm| {
        cm["data"]
            .as_object()
            .map(|d| d.keys().cloned().collect())
            .unwrap_or_default()
    })
}

fn rv(api: &LabApi, ns: &str) -> Option<String> {
    api.object("configmaps", ns, "remora-mesh-rules")
        .and_then(|cm| {
            cm["metadata"]["resourceVersion"]
                .as_str()
                .map(str::to_string)
        })
}

/// Wait (bounded) until `f` holds; the time it took.
async fn until(what: &str, limit: Duration, f: impl Fn() -> bool) -> Duration {
    let start = Instant::now();
    while !f() {
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    start.elapsed()
}

/// How many times the controller replaced `ns`'s rules ConfigMap through the API.
fn configmap_writes(api: &LabApi, ns: &str) -> usize {
    let path = format!("/api/v1/namespaces/{ns}/configmaps/remora-mesh-rules");
    api.requests()
        .iter()
        .filter(|r| r.method == "PUT" && r.path() == path)
        .count()
}

fn lease_holder(api: &LabApi) -> Option<String> {
    api.object(
        "coordination.k8s.io/leases",
        "remora-system",
        "remora-rules-controller",
    )
    .and_then(|l| l["spec"]["holderIdentity"].as_str().map(str::to_string))
}

fn setup(api: &LabApi) {
    let meshed = labels(&[("istio-injection", "enabled")]);
    for ns in ["bookinfo", "frontend", "legacy"] {
        api.set_namespace(ns, &meshed);
    }
    api.set_namespace("plain", &labels(&[]));
    api.set_namespace("remora-system", &labels(&[]));
    api.set_namespace("istio-system", &labels(&[]));
    api.set_namespace("default", &labels(&[]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objects_reach_the_namespaces_that_see_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let api = LabApi::start_local(dir.path()).expect("api");
    setup(&api);
    api.apply(
        NET,
        "destinationrules",
        dr("bookinfo", "reviews", "reviews", &["v1"], None),
    );
    api.apply(
        NET,
        "destinationrules",
        dr("bookinfo", "private", "details", &[], Some(json!(["."]))),
    );
    api.apply(
        NET,
        "virtualservices",
        vs(
            "frontend",
            "reviews",
            json!({"hosts": ["reviews.bookinfo.svc.cluster.local"], "exportTo": ["."],
                   "http": [{"route": [{"destination": {"host": "reviews.bookinfo.svc.cluster.local", "subset": "v1"}}]}]}),
        ),
    );
    api.apply(
        NET,
        "virtualservices",
        vs(
            "bookinfo",
            "broken",
            json!({"hosts": ["x"], "http": [{"timeout": "soon"}]}),
        ),
    );
    api.apply(
        "security.istio.io/v1",
        "peerauthentications",
        json!({"apiVersion": "security.istio.io/v1", "kind": "PeerAuthentication",
               "metadata": {"name": "default", "namespace": "remora-system"},
               "spec": {"mtls": {"mode": "STRICT"}}}),
    );
    // Istio's root namespace is an ordinary one under the default root (remora-system): its
    // selector-less policy stays out of the other namespaces' ConfigMaps.
    api.apply(
        "security.istio.io/v1",
        "peerauthentications",
        json!({"apiVersion": "security.istio.io/v1", "kind": "PeerAuthentication",
               "metadata": {"name": "istio-default", "namespace": "istio-system"},
               "spec": {"mtls": {"mode": "DISABLE"}}}),
    );
    // The user's own ConfigMap in a meshed namespace.
    api.create_configmap(
        "legacy",
        json!({"apiVersion": "v1", "kind": "ConfigMap",
               "metadata": {"name": "remora-mesh-rules", "namespace": "legacy"},
               "data": {"mine.yaml": "# hand-written\n"}}),
    );

    let ctl = rules_controller::start(client(&api), options("replica-a"));
    until("the frontend ConfigMap", Duration::from_secs(20), || {
        keys(&api, "frontend").is_some() && keys(&api, "bookinfo").is_some()
    })
    .await;
    assert_eq!(lease_holder(&api).as_deref(), Some("replica-a"));
    assert_eq!(
        keys(&api, "frontend").expect("frontend"),
        [
            "bookinfo.destinationrule.reviews.yaml",
            "frontend.virtualservice.reviews.yaml",
            "remora-system.peerauthentication.default.yaml",
        ]
    );
    assert_eq!(
        keys(&api, "bookinfo").expect("bookinfo"),
        [
            "bookinfo.destinationrule.private.yaml",
            "bookinfo.destinationrule.reviews.yaml",
            "remora-system.peerauthentication.default.yaml",
        ]
    );
    let cm = api
        .object("configmaps", "frontend", "remora-mesh-rules")
        .expect("cm");
    assert_eq!(
        cm["metadata"]["labels"]["app.kubernetes.io/managed-by"],
        "remora-rules-controller"
    );
    let text = cm["data"]["bookinfo.destinationrule.reviews.yaml"]
        .as_str()
        .expect("text");
    assert!(
        text.starts_with("# DestinationRule bookinfo/reviews: from namespace bookinfo"),
        "{text}"
    );
    // Written where the kubelet mounts it: the proxy's loader takes the set.
    let mounted = dir.path().join("frontend").join("remora-mesh-rules");
    let ctx = remora_model::rules::LoadContext {
        namespace: "frontend".into(),
        ..Default::default()
    };
    let snap = remora_model::rules::load_dir(&mounted, &ctx, 1).expect("the proxy loads it");
    assert_eq!(snap.files.len(), 3);
    // Not meshed: nothing written; the user's ConfigMap: untouched.
    assert!(keys(&api, "plain").is_none());
    assert_eq!(keys(&api, "legacy").expect("legacy"), ["mine.yaml"]);
    // The invalid object: an Event on it, and on the user's ConfigMap.
    until("the Events", Duration::from_secs(10), || {
        let evs = api.objects("events.k8s.io/events");
        let has = |reason: &str, name: &str| {
            evs.iter()
                .any(|e| e["reason"] == reason && e["regarding"]["name"] == name)
        };
        has("InvalidRule", "broken") && has("UserOwnedConfigMap", "remora-mesh-rules")
    })
    .await;
    let evs = api.objects("events.k8s.io/events");
    let invalid = evs
        .iter()
        .find(|e| e["reason"] == "InvalidRule")
        .expect("event");
    assert_eq!(invalid["type"], "Warning");
    assert!(
        invalid["note"]
            .as_str()
            .unwrap_or_default()
            .contains("spec.http[0].timeout"),
        "{invalid}"
    );

    // A change reaches the ConfigMaps that hold the object.
    let before = rv(&api, "frontend");
    api.apply(
        NET,
        "destinationrules",
        dr("bookinfo", "reviews", "reviews", &["v1", "v2"], None),
    );
    let took = until(
        "the updated DestinationRule",
        Duration::from_secs(10),
        || {
            api.object("configmaps", "frontend", "remora-mesh-rules")
                .and_then(|cm| {
                    cm["data"]["bookinfo.destinationrule.reviews.yaml"]
                        .as_str()
                        .map(|t| t.contains("name: v2"))
                })
                .unwrap_or(false)
        },
    )
    .await;
    eprintln!("object change to ConfigMap write: {took:?}");
    assert_ne!(rv(&api, "frontend"), before);
    // The same content again: nothing is rewritten.
    let (rv_front, rv_book) = (rv(&api, "frontend"), rv(&api, "bookinfo"));
    api.apply(
        NET,
        "destinationrules",
        dr("bookinfo", "reviews", "reviews", &["v1", "v2"], None),
    );
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        (rv(&api, "frontend"), rv(&api, "bookinfo")),
        (rv_front, rv_book)
    );
    // An edit by hand of the controller's ConfigMap, then a change: the controller's write
    // meets a newer resourceVersion (409), re-reads and writes again; the hand edit is gone.
    let puts = || configmap_writes(&api, "frontend");
    let puts_before = puts();
    let mut edited = api
        .object("configmaps", "frontend", "remora-mesh-rules")
        .expect("cm");
    edited["data"]["by-hand.yaml"] = json!("# edited\n");
    api.replace_configmap("frontend", edited);
    api.apply(
        NET,
        "destinationrules",
        dr("bookinfo", "reviews", "reviews", &["v1", "v2", "v3"], None),
    );
    until(
        "the write after a conflict",
        Duration::from_secs(10),
        || {
            api.object("configmaps", "frontend", "remora-mesh-rules")
                .is_some_and(|cm| {
                    cm["data"].get("by-hand.yaml").is_none()
                        && cm["data"]["bookinfo.destinationrule.reviews.yaml"]
                            .as_str()
                            .is_some_and(|t| t.contains("name: v3"))
                })
        },
    )
    .await;
    // The controller's two writes: the stale one (409) and the retry (the hand edit went
    // around the recorded server, so it is not among its requests).
    assert_eq!(puts() - puts_before, 2);
    // A watch the API server expires is re-listed, and later changes still arrive.
    let lists_before = list_requests(&api, "/apis/networking.istio.io/v1/destinationrules");
    assert!(api.expire_watches("/apis/networking.istio.io/v1/destinationrules") >= 1);
    until("a re-list after 410", Duration::from_secs(10), || {
        list_requests(&api, "/apis/networking.istio.io/v1/destinationrules") > lists_before
    })
    .await;
    // Wait for the new watch before the next change (the stand-in does not replay a change
    // made between a list and its watch).
    until("the new watch", Duration::from_secs(10), || {
        api.open_watches("/apis/networking.istio.io/v1/destinationrules") >= 1
    })
    .await;
    api.delete(NET, "destinationrules", "bookinfo", "reviews");
    until(
        "the deleted DestinationRule gone",
        Duration::from_secs(10),
        || {
            keys(&api, "frontend").is_some_and(|k| {
                !k.iter()
                    .any(|k| k == "bookinfo.destinationrule.reviews.yaml")
            })
        },
    )
    .await;
    ctl.shutdown().await;
    // Released on shutdown.
    assert_eq!(lease_holder(&api), None);
}

fn list_requests(api: &LabApi, path: &str) -> usize {
    api.requests()
        .iter()
        .filter(|r| r.method == "GET" && r.path() == path && !r.path_and_query.contains("watch="))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_replica_leads_and_another_takes_over() {
    let dir = tempfile::tempdir().expect("tempdir");
    let api = LabApi::start_local(dir.path()).expect("api");
    setup(&api);
    let a = rules_controller::start(client(&api), options("replica-a"));
    until("a ConfigMap", Duration::from_secs(20), || {
        keys(&api, "bookinfo").is_some()
    })
    .await;
    let b = rules_controller::start(client(&api), options("replica-b"));
    // b stands by while a renews.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(lease_holder(&api).as_deref(), Some("replica-a"));
    let writes_by_a = api
        .requests()
        .iter()
        .filter(|r| r.method == "PUT" && r.path().ends_with("/leases/remora-rules-controller"))
        .count();
    assert!(writes_by_a >= 4, "a renewed {writes_by_a} times in 4 s");
    a.shutdown().await;
    until("b leading", Duration::from_secs(10), || {
        lease_holder(&api).as_deref() == Some("replica-b")
    })
    .await;
    // b does the work now.
    api.apply(
        NET,
        "destinationrules",
        dr("bookinfo", "ratings", "ratings", &["v1"], None),
    );
    until("b's write", Duration::from_secs(10), || {
        keys(&api, "bookinfo").is_some_and(|k| {
            k.iter()
                .any(|k| k == "bookinfo.destinationrule.ratings.yaml")
        })
    })
    .await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_large_is_refused_and_a_missing_group_holds_nothing_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let api = LabApi::start_local(dir.path()).expect("api");
    setup(&api);
    // No security.istio.io CRDs installed, and networking.istio.io without WorkloadEntry's (a
    // CRD file from before that kind was watched).
    api.set_served("security.istio.io", &[]);
    api.set_kind_missing("networking.istio.io", "workloadentries");
    api.apply(
        NET,
        "destinationrules",
        dr("frontend", "small", "web", &["v1"], None),
    );
    let routes: Vec<Value> = (0..300)
        .map(|i| {
            json!({"name": format!("r{i}"), "match": [{"uri": {"prefix": format!("/p{i}")}}],
                        "route": [{"destination": {"host": "big"}}]})
        })
        .collect();
    api.apply(
        NET,
        "virtualservices",
        vs(
            "bookinfo",
            "big",
            json!({"hosts": ["big"], "exportTo": ["."], "http": routes}),
        ),
    );
    let mut o = options("replica-a");
    o.settings.max_bytes = 16 * 1024;
    let ctl = rules_controller::start(client(&api), o);
    until("frontend's ConfigMap", Duration::from_secs(20), || {
        keys(&api, "frontend").is_some()
    })
    .await;
    assert_eq!(
        keys(&api, "frontend").expect("frontend"),
        ["frontend.destinationrule.small.yaml"]
    );
    until("the refusal Event", Duration::from_secs(10), || {
        api.objects("events.k8s.io/events").iter().any(|e| {
            e["reason"] == "RulesNotWritten"
                && e["regarding"]["kind"] == "Namespace"
                && e["regarding"]["name"] == "bookinfo"
                && e["note"]
                    .as_str()
                    .is_some_and(|n| n.contains("VirtualService bookinfo/big"))
        })
    })
    .await;
    assert!(
        keys(&api, "bookinfo").is_none(),
        "an oversized ConfigMap was written"
    );
    ctl.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_conditions_when_asked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let api = LabApi::start_local(dir.path()).expect("api");
    setup(&api);
    api.apply(
        NET,
        "destinationrules",
        dr("bookinfo", "reviews", "reviews", &["v1"], None),
    );
    // istiod's own condition, written through the status subresource.
    api.patch_status(
        NET,
        "destinationrules",
        "bookinfo",
        "reviews",
        json!({"status": {"conditions": [{"type": "Reconciled", "status": "True", "message": "istiod"}]}}),
    );
    api.apply(
        NET,
        "virtualservices",
        vs(
            "bookinfo",
            "broken",
            json!({"hosts": ["x"], "http": [{"timeout": "soon"}]}),
        ),
    );
    let mut o = options("replica-a");
    o.status = true;
    let ctl = rules_controller::start(client(&api), o);
    let ours = |kind: &str, name: &str| -> Option<Value> {
        api.object(kind, "bookinfo", name).and_then(|o| {
            o["status"]["conditions"].as_array().and_then(|cs| {
                cs.iter()
                    .find(|c| c["type"] == "remora.dev/Compiled")
                    .cloned()
            })
        })
    };
    until("both conditions", Duration::from_secs(20), || {
        ours("networking.istio.io/destinationrules", "reviews").is_some()
            && ours("networking.istio.io/virtualservices", "broken").is_some()
    })
    .await;
    let good = ours("networking.istio.io/destinationrules", "reviews").expect("condition");
    assert_eq!(good["status"], "True");
    assert_eq!(good["observedGeneration"], 1);
    assert!(good["lastTransitionTime"].is_string(), "{good}");
    let bad = ours("networking.istio.io/virtualservices", "broken").expect("condition");
    assert_eq!(bad["status"], "False");
    assert_eq!(bad["reason"], "Invalid");
    assert!(
        bad["message"]
            .as_str()
            .unwrap_or_default()
            .starts_with("spec.http[0].timeout"),
        "{bad}"
    );
    // Istio's own condition is kept.
    let dr_now = api
        .object(
            "networking.istio.io/destinationrules",
            "bookinfo",
            "reviews",
        )
        .expect("dr");
    assert!(
        dr_now["status"]["conditions"]
            .as_array()
            .is_some_and(|cs| cs
                .iter()
                .any(|c| c["type"] == "Reconciled" && c["message"] == "istiod")),
        "{dr_now}"
    );
    // A spec change: a new generation, a new condition; then quiet (no status write loop).
    api.apply(
        NET,
        "destinationrules",
        dr("bookinfo", "reviews", "reviews", &["v1", "v2"], None),
    );
    until("generation 2", Duration::from_secs(10), || {
        ours("networking.istio.io/destinationrules", "reviews")
            .is_some_and(|c| c["observedGeneration"] == 2)
    })
    .await;
    let patches = || {
        api.requests()
            .iter()
            .filter(|r| r.method == "PATCH" && r.path().ends_with("/status"))
            .count()
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let settled = patches();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(patches(), settled, "status writes keep coming");
    assert_eq!(settled, 3, "one per object, one for the new generation");
    ctl.shutdown().await;
}

/// A Sidecar's egress hosts keep other namespaces' objects out of its namespace's ConfigMap;
/// changes arriving together are written together (one batch, not one write per change).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sidecar_scope_and_batched_changes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let api = LabApi::start_local(dir.path()).expect("api");
    setup(&api);
    api.apply(
        NET,
        "destinationrules",
        dr("bookinfo", "reviews", "reviews", &["v1"], None),
    );
    api.apply(
        NET,
        "destinationrules",
        dr("legacy", "old", "old", &["v1"], None),
    );
    api.apply(
        NET,
        "sidecars",
        json!({"apiVersion": NET, "kind": "Sidecar",
               "metadata": {"name": "default", "namespace": "frontend"},
               "spec": {"egress": [{"hosts": ["./*", "bookinfo/*"]}]}}),
    );
    let ctl = rules_controller::start(client(&api), options("replica-a"));
    until("frontend's ConfigMap", Duration::from_secs(20), || {
        keys(&api, "frontend").is_some()
    })
    .await;
    assert_eq!(
        keys(&api, "frontend").expect("frontend"),
        [
            "bookinfo.destinationrule.reviews.yaml",
            "frontend.sidecar.default.yaml"
        ],
        "legacy's DestinationRule is outside frontend's Sidecar egress hosts"
    );
    // bookinfo has no Sidecar: it sees legacy's.
    assert!(keys(&api, "bookinfo")
        .expect("bookinfo")
        .contains(&"legacy.destinationrule.old.yaml".to_string()));
    // Five changes at once: one batch.
    let puts = || configmap_writes(&api, "frontend");
    let before = puts();
    for i in 2..=6 {
        let subsets: Vec<String> = (1..=i).map(|n| format!("v{n}")).collect();
        let refs: Vec<&str> = subsets.iter().map(String::as_str).collect();
        api.apply(
            NET,
            "destinationrules",
            dr("bookinfo", "reviews", "reviews", &refs, None),
        );
    }
    until("the last change", Duration::from_secs(10), || {
        api.object("configmaps", "frontend", "remora-mesh-rules")
            .and_then(|cm| {
                cm["data"]["bookinfo.destinationrule.reviews.yaml"]
                    .as_str()
                    .map(|t| t.contains("name: v6"))
            })
            .unwrap_or(false)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let writes = puts() - before;
    assert!(
        (1..=2).contains(&writes),
        "{writes} writes for five changes made together"
    );
    ctl.shutdown().await;
}

/// A WorkloadEntry applied as an object reaches the namespaces that see the ServiceEntry
/// selecting it (exported to all), and the proxy there loads it as that ServiceEntry's endpoint;
/// one nothing selects stays out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workload_entries_travel_with_their_service_entry() {
    let dir = tempfile::tempdir().expect("tempdir");
    let api = LabApi::start_local(dir.path()).expect("api");
    setup(&api);
    api.apply(
        NET,
        "serviceentries",
        json!({"apiVersion": NET, "kind": "ServiceEntry",
               "metadata": {"name": "vms", "namespace": "bookinfo"},
               "spec": {"hosts": ["vms.example.internal"], "resolution": "STATIC",
                        "ports": [{"number": 80, "name": "http", "protocol": "HTTP"}],
                        "workloadSelector": {"labels": {"app": "vms"}}}}),
    );
    for (name, app, addr) in [("vm-1", "vms", "10.1.0.1"), ("stray", "other", "10.1.0.2")] {
        api.apply(
            NET,
            "workloadentries",
            json!({"apiVersion": NET, "kind": "WorkloadEntry",
                   "metadata": {"name": name, "namespace": "bookinfo"},
                   "spec": {"address": addr, "labels": {"app": app}}}),
        );
    }
    let ctl = rules_controller::start(client(&api), options("replica-a"));
    until("frontend's ConfigMap", Duration::from_secs(20), || {
        keys(&api, "frontend").is_some()
    })
    .await;
    assert_eq!(
        keys(&api, "frontend").expect("frontend"),
        [
            "bookinfo.serviceentry.vms.yaml",
            "bookinfo.workloadentry.vm-1.yaml"
        ]
    );
    // What the proxy in frontend makes of it.
    let cm = api
        .object("configmaps", "frontend", "remora-mesh-rules")
        .expect("cm");
    let files: Vec<(String, String)> = cm["data"]
        .as_object()
        .expect("data")
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_string()))
        .collect();
    let refs: Vec<(&str, &str)> = files
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let ctx = remora_model::rules::LoadContext {
        namespace: "frontend".into(),
        ..Default::default()
    };
    let snap = remora_model::rules::snapshot_from_yaml(&refs, &ctx, 1).expect("loads");
    let eps: Vec<&str> = snap.service_entries[0]
        .endpoints
        .iter()
        .map(|e| e.address.as_str())
        .collect();
    assert_eq!(eps, ["10.1.0.1"]);
    ctl.shutdown().await;
}
