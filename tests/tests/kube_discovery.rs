//! Contract tests of the proxy's endpoint discovery against recorded Kubernetes API responses
//! (`tests/fixtures/kube-api/discovery/`): lists, watch BOOKMARKs, an ERROR 410 Expired that
//! forces a re-list, watch events applied live, 403 Forbidden; and the real `remora-proxy`
//! process routing to an endpoint it knows only from an EndpointSlice.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use remora_e2e::apiserver::{event, RecordedApi, Reply};
use remora_model::rules::{snapshot_from_yaml, EndpointSource, LoadContext};
use remora_proxy::discovery::kube::{Discovery, Timing};
use remora_proxy::discovery::Scope;
use remora_proxy::telemetry::Metrics;
use serde_json::{json, Value};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/kube-api/discovery")
        .join(name)
}

fn fast() -> Timing {
    Timing {
        debounce: Duration::from_millis(5),
        backoff: Duration::from_millis(50),
        max_backoff: Duration::from_millis(200),
        forbidden_retry: Duration::from_secs(60),
    }
}

/// The scope of a proxy in namespace `shop` with no Sidecar: shop and remora-system.
fn shop_scope() -> Scope {
    let ctx = LoadContext {
        namespace: "shop".into(),
        ..LoadContext::default()
    };
    let snap = snapshot_from_yaml(&[], &ctx, 1).expect("empty rules");
    Scope::from_snapshot(&snap, "shop")
}

fn addrs(d: &Discovery, host: &str, port: u16, subset: &[(&str, &str)]) -> Option<Vec<String>> {
    let sel: BTreeMap<String, String> = subset
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    d.endpoints
        .endpoints(host, port, (!subset.is_empty()).then_some(&sel))
        .map(|v| {
            let mut a: Vec<String> = v.iter().map(|e| e.addr.to_string()).collect();
            a.sort();
            a
        })
}

/// Poll `f` every 10 ms until it holds or `limit` passes.
async fn wait_for(limit: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed() < limit, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

const REVIEWS: &str = "reviews.shop.svc.cluster.local";

/// A metrics handle of the test's own.
fn metrics() -> Arc<Metrics> {
    Arc::new(Metrics::new(100).unwrap())
}

/// How long a wait for something that normally takes milliseconds may take on a slow, loaded CI
/// machine (waits poll and end as soon as the condition holds).
const PATIENCE: Duration = Duration::from_secs(60);

#[tokio::test]
async fn lists_bookmarks_a_410_relist_and_live_events() {
    let api = RecordedApi::start().await.unwrap();
    api.load(&fixture("shop-relist.json")).unwrap();
    // The test's own metrics handle: nothing else counts in it.
    let metrics = metrics();
    let d = Discovery::start(
        api.client().unwrap(),
        "cluster.local",
        fast(),
        metrics.clone(),
    );
    d.set_scope(shop_scope());

    // The first watch of the slices ends with ERROR 410: the re-list brings reviews-v2-d.
    wait_for(PATIENCE, "the re-listed endpoint", || {
        addrs(&d, REVIEWS, 9080, &[]).is_some_and(|a| a.contains(&"10.0.1.4:8080".to_string()))
    })
    .await;
    // Ready endpoints on the slice's port named like the service port; the terminating one is
    // out, and the re-list replaced the slice (10.0.1.3 gone).
    assert_eq!(
        addrs(&d, REVIEWS, 9080, &[]),
        Some(vec![
            "10.0.1.1:8080".to_string(),
            "10.0.1.2:8080".to_string(),
            "10.0.1.4:8080".to_string()
        ])
    );
    assert_eq!(
        addrs(&d, REVIEWS, 9080, &[("version", "v2")]),
        Some(vec![
            "10.0.1.2:8080".to_string(),
            "10.0.1.4:8080".to_string()
        ])
    );
    assert_eq!(
        addrs(&d, "reviews.shop", 9080, &[]).map(|a| a.len()),
        Some(3)
    );
    assert_eq!(
        addrs(&d, "ratings.shop.svc.cluster.local", 9080, &[]),
        Some(vec!["10.0.2.1:8080".to_string()])
    );
    // ExternalName services are left to DNS.
    assert_eq!(addrs(&d, "legacy.shop.svc.cluster.local", 80, &[]), None);
    assert!(
        metrics
            .discovery()
            .restarts
            .with_label_values(&["endpointslices"])
            .get()
            > 0,
        "the 410 re-list is counted"
    );

    // What was asked: paged lists, then watches from the list's resourceVersion with
    // bookmarks; the slices listed twice (the second after the 410).
    let reqs = api.requests();
    assert!(reqs.iter().all(|r| r.matched), "unmatched: {reqs:#?}");
    let slice_path = "/apis/discovery.k8s.io/v1/namespaces/shop/endpointslices";
    let lists: Vec<&str> = reqs
        .iter()
        .filter(|r| r.path() == slice_path && !r.path_and_query.contains("watch=true"))
        .map(|r| r.path_and_query.as_str())
        .collect();
    assert_eq!(lists.len(), 2, "{lists:?}");
    assert!(lists[0].contains("limit=500"), "{lists:?}");
    let watches: Vec<&str> = reqs
        .iter()
        .filter(|r| r.path() == slice_path && r.path_and_query.contains("watch=true"))
        .map(|r| r.path_and_query.as_str())
        .collect();
    assert!(watches.len() >= 2, "{watches:?}");
    assert!(watches[0].contains("resourceVersion=1000"), "{watches:?}");
    assert!(
        watches[0].contains("allowWatchBookmarks=true"),
        "{watches:?}"
    );
    assert!(watches[1].contains("resourceVersion=1010"), "{watches:?}");
    // Pods are read as metadata only.
    assert!(reqs
        .iter()
        .any(|r| r.path() == "/api/v1/namespaces/shop/pods"));

    // Live events on the held watches.
    let pods = "/api/v1/namespaces/shop/pods";
    wait_for(PATIENCE, "the pods watch", || api.open_watches(pods) > 0).await;
    let relabel = json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
        "metadata": {"name": "reviews-v2-d", "namespace": "shop", "resourceVersion": "1020",
                     "labels": {"app": "reviews", "version": "v3"}}});
    assert_eq!(api.emit(pods, event("MODIFIED", relabel)), 1);
    wait_for(PATIENCE, "the relabelled pod", || {
        addrs(&d, REVIEWS, 9080, &[("version", "v3")]) == Some(vec!["10.0.1.4:8080".to_string()])
    })
    .await;
    let services = "/api/v1/namespaces/shop/services";
    wait_for(PATIENCE, "the services watch", || {
        api.open_watches(services) > 0
    })
    .await;
    let gone = json!({"kind": "Service", "apiVersion": "v1",
        "metadata": {"name": "ratings", "namespace": "shop", "resourceVersion": "1021"},
        "spec": {"ports": [{"name": "http", "port": 9080}]}});
    api.emit(services, event("DELETED", gone));
    wait_for(PATIENCE, "the deleted service", || {
        addrs(&d, "ratings.shop.svc.cluster.local", 9080, &[]).is_none()
    })
    .await;
    let st = d.status();
    assert_eq!(st.namespaces, vec!["remora-system", "shop"]);
    assert_eq!(
        st.watches
            .get("endpointslices in namespace shop")
            .map(String::as_str),
        Some("watching")
    );
    assert_eq!((st.services, st.endpoints), (1, 3));
}

#[tokio::test]
async fn forbidden_slices_leave_services_unclaimed_and_are_not_retried_hot() {
    let api = RecordedApi::start().await.unwrap();
    api.load(&fixture("shop-forbidden-slices.json")).unwrap();
    let d = Discovery::start(api.client().unwrap(), "cluster.local", fast(), metrics());
    d.set_scope(shop_scope());
    wait_for(PATIENCE, "the 403", || {
        d.status()
            .watches
            .get("endpointslices in namespace shop")
            .is_some_and(|s| s == "forbidden")
    })
    .await;
    wait_for(PATIENCE, "services listed", || {
        d.status()
            .watches
            .get("services in namespace shop")
            .is_some_and(|s| s == "watching")
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Services alone do not claim a host: without its endpoints the proxy would answer 503;
    // unknown, the request keeps its original destination (kube-proxy's ClusterIP).
    assert_eq!(addrs(&d, REVIEWS, 9080, &[]), None);
    let lists = api
        .requests()
        .iter()
        .filter(|r| r.path() == "/apis/discovery.k8s.io/v1/namespaces/shop/endpointslices")
        .count();
    assert_eq!(lists, 1, "a 403 is retried after a minute, not in a loop");
}

#[tokio::test]
async fn scope_change_stops_watches_and_forgets_their_services() {
    let api = RecordedApi::start().await.unwrap();
    api.load(&fixture("shop-relist.json")).unwrap();
    let d = Discovery::start(api.client().unwrap(), "cluster.local", fast(), metrics());
    d.set_scope(shop_scope());
    wait_for(PATIENCE, "reviews", || {
        addrs(&d, REVIEWS, 9080, &[]).is_some()
    })
    .await;
    // A Sidecar now limits egress to remora-system.
    let ctx = LoadContext {
        namespace: "shop".into(),
        ..LoadContext::default()
    };
    let snap = snapshot_from_yaml(
        &[(
            "sc.yaml",
            "apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {name: default, namespace: shop}\nspec:\n  egress:\n  - hosts: [\"remora-system/*\"]\n",
        )],
        &ctx,
        2,
    )
    .unwrap();
    d.set_scope(Scope::from_snapshot(&snap, "shop"));
    wait_for(PATIENCE, "reviews forgotten", || {
        addrs(&d, REVIEWS, 9080, &[]).is_none()
    })
    .await;
    let st = d.status();
    assert_eq!(st.namespaces, vec!["remora-system"]);
    assert!(
        st.watches
            .keys()
            .all(|k| k.ends_with("namespace remora-system")),
        "{:?}",
        st.watches
    );
    assert_eq!((st.services, st.pods, st.slices), (0, 0, 0));
}

// ---------------------------------------------------------------------------------------------
// The real process.

mod process {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::process::Child;

    pub struct Proc(pub Child);
    impl Drop for Proc {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    pub fn proxy_bin() -> PathBuf {
        let p = remora_e2e::admission::default_bin_dir().join("remora-proxy");
        assert!(
            p.exists(),
            "{} is missing: run `cargo build -p remora-proxy` first (scripts/test builds everything)",
            p.display()
        );
        p
    }

    pub use remora_e2e::ports::free_ports;

    /// An HTTP/1.1 server on 127.0.0.1 answering `body` to every request (until the test ends).
    pub fn backend(body: &'static str) -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        std::thread::spawn(move || {
            for s in l.incoming().flatten() {
                std::thread::spawn(move || {
                    let mut s = s;
                    let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    loop {
                        if buf.windows(4).any(|w| w == b"\r\n\r\n") {
                            let resp = format!(
                                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                                body.len()
                            );
                            let _ = s.write_all(resp.as_bytes());
                            return;
                        }
                        match s.read(&mut chunk) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                });
            }
        });
        addr
    }

    /// One HTTP/1.1 GET; (status, body).
    pub fn get(addr: SocketAddr, host: &str, path: &str) -> std::io::Result<(u16, String)> {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        s.set_read_timeout(Some(Duration::from_secs(30)))?;
        write!(
            s,
            "GET {path} HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n\r\n"
        )?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        let status = out
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let body = out
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        Ok((status, body))
    }

    pub fn config_dump(admin: SocketAddr) -> Option<Value> {
        let (code, body) = get(admin, "localhost", "/config_dump").ok()?;
        (code == 200).then(|| serde_json::from_str(&body).ok())?
    }
}

const VS: &str = "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: shop}
spec:
  hosts: [reviews]
  http:
  - route:
    - destination: {host: reviews}
";

fn configmap(rv: &str, data: &[(&str, &str)]) -> Value {
    let data: serde_json::Map<String, Value> = data
        .iter()
        .map(|(k, v)| (k.to_string(), Value::String(v.to_string())))
        .collect();
    json!({"kind": "ConfigMap", "apiVersion": "v1",
           "metadata": {"name": "remora-mesh-rules", "namespace": "shop", "resourceVersion": rv,
                        "uid": "uid-rules"},
           "data": data})
}

/// The real proxy, pointed at the recorded API: a request for `reviews` (a VirtualService
/// routes it to the cluster service) reaches the backend whose address only an EndpointSlice
/// names; then a ConfigMap change through the API is live in `/config_dump` (source api).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_routes_to_an_endpoint_known_only_from_an_endpointslice() {
    let backend = process::backend("from-the-endpointslice");
    // The original destination (the Service's ClusterIP:port in a cluster): nothing listens
    // there, so only discovery can make the request work.
    let nowhere = SocketAddr::from(([127, 0, 0, 1], process::free_ports(1)[0]));
    let api = RecordedApi::start().await.unwrap();
    let list = |kind: &str, api_version: &str, items: Vec<Value>| json!({"kind": kind, "apiVersion": api_version, "metadata": {"resourceVersion": "500"}, "items": items});
    let bookmark = |api_version: &str, kind: &str| json!({"type": "BOOKMARK", "object": {"kind": kind, "apiVersion": api_version, "metadata": {"resourceVersion": "501"}}});
    for ns in ["shop", "remora-system"] {
        let (svcs, slices) = if ns == "shop" {
            (
                vec![json!({"kind": "Service", "apiVersion": "v1",
                    "metadata": {"name": "reviews", "namespace": "shop", "resourceVersion": "400"},
                    "spec": {"type": "ClusterIP", "clusterIP": "10.96.0.10",
                             "ports": [{"name": "http", "port": nowhere.port(), "targetPort": 8080, "protocol": "TCP"}]}})],
                vec![
                    json!({"kind": "EndpointSlice", "apiVersion": "discovery.k8s.io/v1",
                    "metadata": {"name": "reviews-1", "namespace": "shop", "resourceVersion": "401",
                                 "labels": {"kubernetes.io/service-name": "reviews"}},
                    "addressType": "IPv4",
                    "ports": [{"name": "http", "port": backend.port(), "protocol": "TCP"}],
                    "endpoints": [{"addresses": ["127.0.0.1"], "conditions": {"ready": true}}]}),
                ],
            )
        } else {
            (vec![], vec![])
        };
        let s = format!("/api/v1/namespaces/{ns}/services");
        let e = format!("/apis/discovery.k8s.io/v1/namespaces/{ns}/endpointslices");
        let p = format!("/api/v1/namespaces/{ns}/pods");
        api.on("GET", &s, Reply::json(200, list("ServiceList", "v1", svcs)));
        api.on(
            "GET",
            &format!("{s}?watch=true"),
            Reply::watch(vec![bookmark("v1", "Service")], true),
        );
        api.on(
            "GET",
            &e,
            Reply::json(
                200,
                list("EndpointSliceList", "discovery.k8s.io/v1", slices),
            ),
        );
        api.on(
            "GET",
            &format!("{e}?watch=true"),
            Reply::watch(vec![bookmark("discovery.k8s.io/v1", "EndpointSlice")], true),
        );
        api.on(
            "GET",
            &p,
            Reply::json(
                200,
                list("PartialObjectMetadataList", "meta.k8s.io/v1", vec![]),
            ),
        );
        api.on(
            "GET",
            &format!("{p}?watch=true"),
            Reply::watch(
                vec![bookmark("meta.k8s.io/v1", "PartialObjectMetadata")],
                true,
            ),
        );
    }
    // The ConfigMap as the API serves it: the same content as the mounted files.
    let cms = "/api/v1/namespaces/shop/configmaps";
    api.on(
        "GET",
        &format!("{cms}?fieldSelector=metadata.name%3Dremora-mesh-rules"),
        Reply::json(
            200,
            list(
                "ConfigMapList",
                "v1",
                vec![configmap("600", &[("reviews.yaml", VS)])],
            ),
        ),
    );
    api.on(
        "GET",
        &format!("{cms}?fieldSelector=metadata.name%3Dremora-mesh-rules&watch=true"),
        Reply::watch(vec![bookmark("v1", "ConfigMap")], true),
    );

    let rules = tempfile::tempdir().unwrap();
    std::fs::write(rules.path().join("reviews.yaml"), VS).unwrap();
    let ports = process::free_ports(5);
    let at = |p: u16| SocketAddr::from(([127, 0, 0, 1], p));
    let child = Command::new(process::proxy_bin())
        .args(["run", "--kube-api", &api.url(), "--namespace", "shop"])
        .arg("--access-log-encoding=JSON")
        .arg("--rules-dir")
        .arg(rules.path())
        .args(["--outbound-addr", &at(ports[0]).to_string()])
        .args(["--inbound-addr", &at(ports[1]).to_string()])
        .args(["--admin-addr", &at(ports[2]).to_string()])
        .args(["--health-addr", &at(ports[3]).to_string()])
        .args(["--prometheus-addr", &at(ports[4]).to_string()])
        .args(["--fixed-outbound-target", &nowhere.to_string()])
        .args([
            "--ipv6",
            "off",
            "--access-log",
            "off",
            "--inbound-source-fallback",
        ])
        .args([
            "--pod-labels-file",
            "/nonexistent",
            "--rules-rescan-seconds",
            "1",
        ])
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env_remove("POD_NAME")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let _proc = process::Proc(child);
    let admin = at(ports[2]);

    let t = Instant::now();
    let outbound = at(ports[0]);
    loop {
        let r = tokio::task::spawn_blocking(move || process::get(outbound, "reviews", "/x"))
            .await
            .unwrap();
        if let Ok((200, body)) = &r {
            assert_eq!(body, "from-the-endpointslice");
            break;
        }
        assert!(
            t.elapsed() < PATIENCE,
            "never routed through discovery; last answer {r:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let dump = tokio::task::spawn_blocking(move || process::config_dump(admin))
        .await
        .unwrap()
        .expect("config_dump");
    assert_eq!(dump["discovery"]["hosts"][0], REVIEWS);
    assert_eq!(dump["discovery"]["status"]["endpoints"], 1);
    let generation = dump["generation"].as_u64().unwrap();
    // The API's content equals the files': the source stays as it was, the API is watching.
    assert_eq!(dump["config_source"]["api"]["status"], "watching");
    assert_eq!(dump["config_source"]["api"]["resource_version"], "600");

    // A change through the API (the mount would take a kubelet sync).
    let v2 = VS.replace(
        "- destination: {host: reviews}",
        "- destination: {host: reviews}\n    headers: {request: {set: {x-rules: api}}}",
    );
    wait_for(PATIENCE, "the ConfigMap watch", || {
        api.open_watches(cms) > 0
    })
    .await;
    let sent = Instant::now();
    assert_eq!(
        api.emit(
            cms,
            event("MODIFIED", configmap("601", &[("reviews.yaml", &v2)]))
        ),
        1
    );
    let dump = loop {
        let d = tokio::task::spawn_blocking(move || process::config_dump(admin))
            .await
            .unwrap();
        // Wait for the next generation (the API state may show the new resourceVersion a moment
        // before the snapshot is stored); what it holds is asserted below.
        if let Some(d) = d.filter(|d| d["generation"].as_u64() > Some(generation)) {
            break d;
        }
        assert!(sent.elapsed() < PATIENCE, "the API change never applied");
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let took = sent.elapsed();
    println!("ConfigMap change through the API visible in /config_dump after {took:?}");
    assert_eq!(dump["generation"].as_u64(), Some(generation + 1));
    assert_eq!(
        dump["config_source"]["generation"].as_u64(),
        Some(generation + 1)
    );
    assert_eq!(dump["config_source"]["api"]["resource_version"], "601");
    assert!(dump["source"]
        .as_str()
        .unwrap()
        .starts_with("api:configmap/shop/remora-mesh-rules"));
    // The mounted files still hold the old content: they lag and are not applied (the
    // rescan runs every second).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let dump = tokio::task::spawn_blocking(move || process::config_dump(admin))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(dump["config_source"]["source"], "api");
    assert_eq!(dump["generation"].as_u64(), Some(generation + 1));
}

/// A DestinationRule alone (no VirtualService, no ServiceEntry) for a Service the proxy knows
/// only from EndpointSlices: the Service's default route balances over its pods by the
/// DestinationRule's `loadBalancer` (ROUND_ROBIN: exactly even), and once the rule changes
/// through the API to `consistentHash` on `x-user`, each user sticks to one pod.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destination_rule_alone_steers_a_discovered_service() {
    fn get_as(addr: SocketAddr, user: &str) -> std::io::Result<(u16, String)> {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        s.set_read_timeout(Some(Duration::from_secs(30)))?;
        write!(
            s,
            "GET /u HTTP/1.1\r\nhost: reviews:9080\r\nx-user: {user}\r\nconnection: close\r\n\r\n"
        )?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        let status = out
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let body = out.split_once("\r\n\r\n").map(|(_, b)| b.to_string());
        Ok((status, body.unwrap_or_default()))
    }
    let dr = |lb: &str| {
        format!(
            "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: reviews, namespace: shop}}\nspec:\n  host: reviews\n  trafficPolicy:\n    loadBalancer: {lb}\n"
        )
    };
    let pods = [
        process::backend("pod-a"),
        process::backend("pod-b"),
        process::backend("pod-c"),
    ];
    // The original destination (the ClusterIP): nothing listens there.
    let nowhere = SocketAddr::from(([127, 0, 0, 1], process::free_ports(1)[0]));
    let api = RecordedApi::start().await.unwrap();
    let service = json!({"kind": "Service", "apiVersion": "v1",
        "metadata": {"name": "reviews", "namespace": "shop", "resourceVersion": "400"},
        "spec": {"type": "ClusterIP", "clusterIP": "10.96.0.10",
                 "ports": [{"name": "http", "port": nowhere.port(), "targetPort": 9080, "protocol": "TCP"}]}});
    let round_robin = dr("{simple: ROUND_ROBIN}");
    serve_shop(
        &api,
        vec![service],
        slices_of("reviews", "http", &pods),
        &round_robin,
    );
    let cms = "/api/v1/namespaces/shop/configmaps";
    let rules = tempfile::tempdir().unwrap();
    std::fs::write(rules.path().join("reviews.yaml"), &round_robin).unwrap();
    let (_proc, ports) = start_proxy(&api, rules.path(), nowhere);
    let at = |p: u16| SocketAddr::from(([127, 0, 0, 1], p));
    let admin = at(ports[2]);
    let outbound = at(ports[0]);
    let ask = |user: String| async move {
        tokio::task::spawn_blocking(move || get_as(outbound, &user))
            .await
            .unwrap()
    };

    // Until discovery has the pods, the request goes to the original destination (nothing).
    let t = Instant::now();
    loop {
        if let Ok((200, _)) = ask("warm-up".into()).await {
            break;
        }
        assert!(t.elapsed() < PATIENCE, "the Service's pods never answered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The exact spread below needs a settled proxy: all three pods discovered and the rules
    // ConfigMap watched (a late endpoint update or reload while counting could restart the
    // rotation). Waiting for that here takes nothing from what is asserted.
    let t = Instant::now();
    loop {
        let d = tokio::task::spawn_blocking(move || process::config_dump(admin))
            .await
            .unwrap();
        if d.as_ref().is_some_and(|d| {
            d["discovery"]["status"]["endpoints"] == 3
                && d["config_source"]["api"]["status"] == "watching"
        }) {
            break;
        }
        assert!(
            t.elapsed() < PATIENCE,
            "discovery never settled on the 3 pods: {d:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // ROUND_ROBIN from the DestinationRule: one user's 30 requests spread exactly evenly.
    let mut tally: BTreeMap<String, u32> = BTreeMap::new();
    for _ in 0..30 {
        let (status, body) = ask("alice".into()).await.unwrap();
        assert_eq!(status, 200, "{body}");
        *tally.entry(body).or_default() += 1;
    }
    assert_eq!(
        tally,
        BTreeMap::from([
            ("pod-a".to_string(), 10),
            ("pod-b".to_string(), 10),
            ("pod-c".to_string(), 10)
        ])
    );

    // The DestinationRule changes through the API: consistentHash on the x-user header.
    let generation = tokio::task::spawn_blocking(move || process::config_dump(admin))
        .await
        .unwrap()
        .and_then(|d| d["generation"].as_u64())
        .expect("config_dump generation");
    wait_for(PATIENCE, "the ConfigMap watch", || {
        api.open_watches(cms) > 0
    })
    .await;
    let hashed = dr("{consistentHash: {httpHeaderName: x-user}}");
    assert_eq!(
        api.emit(
            cms,
            event("MODIFIED", configmap("601", &[("reviews.yaml", &hashed)]))
        ),
        1
    );
    let t = Instant::now();
    loop {
        let g = tokio::task::spawn_blocking(move || process::config_dump(admin))
            .await
            .unwrap()
            .and_then(|d| d["generation"].as_u64());
        if g > Some(generation) {
            break;
        }
        assert!(t.elapsed() < PATIENCE, "the API change never applied");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Each user's 10 requests land on one pod; 20 users use more than one pod.
    let mut used = std::collections::BTreeSet::new();
    for u in 0..20 {
        let user = format!("user-{u}");
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..10 {
            let (status, body) = ask(user.clone()).await.unwrap();
            assert_eq!(status, 200, "{body}");
            seen.insert(body);
        }
        assert_eq!(seen.len(), 1, "{user} went to {seen:?}");
        used.extend(seen);
    }
    assert!(used.len() >= 2, "every user on one pod: {used:?}");
}

/// One EndpointSlice per pod address for Service `svc` (port name `port_name`; each pod listens
/// on its own loopback port).
fn slices_of(svc: &str, port_name: &str, pods: &[SocketAddr]) -> Vec<Value> {
    pods.iter()
        .enumerate()
        .map(|(i, pod)| {
            json!({"kind": "EndpointSlice", "apiVersion": "discovery.k8s.io/v1",
                "metadata": {"name": format!("{svc}-{i}"), "namespace": "shop",
                             "resourceVersion": format!("41{i}"),
                             "labels": {"kubernetes.io/service-name": svc}},
                "addressType": "IPv4",
                "ports": [{"name": port_name, "port": pod.port(), "protocol": "TCP"}],
                "endpoints": [{"addresses": [pod.ip().to_string()], "conditions": {"ready": true}}]})
        })
        .collect()
}

/// Recorded replies for a proxy in namespace `shop`: lists (then quiet watches) of these
/// Services and EndpointSlices in `shop`, nothing in `remora-system`, no pods, and the rules
/// ConfigMap `remora-mesh-rules` with `rules.yaml` under key `reviews.yaml`.
fn serve_shop(api: &RecordedApi, svcs: Vec<Value>, slices: Vec<Value>, rules: &str) {
    serve_shop_with_pods(api, svcs, slices, vec![], rules)
}

/// `serve_shop`, with these pods' metadata in `shop`.
fn serve_shop_with_pods(
    api: &RecordedApi,
    svcs: Vec<Value>,
    slices: Vec<Value>,
    pods: Vec<Value>,
    rules: &str,
) {
    let mut shop_pods = Some(pods);
    let list = |kind: &str, api_version: &str, items: Vec<Value>| json!({"kind": kind, "apiVersion": api_version, "metadata": {"resourceVersion": "500"}, "items": items});
    let bookmark = |api_version: &str, kind: &str| json!({"type": "BOOKMARK", "object": {"kind": kind, "apiVersion": api_version, "metadata": {"resourceVersion": "501"}}});
    let mut shop = Some((svcs, slices));
    for ns in ["shop", "remora-system"] {
        let (svcs, slices) = if ns == "shop" {
            shop.take().unwrap_or_default()
        } else {
            (vec![], vec![])
        };
        let s = format!("/api/v1/namespaces/{ns}/services");
        let e = format!("/apis/discovery.k8s.io/v1/namespaces/{ns}/endpointslices");
        let p = format!("/api/v1/namespaces/{ns}/pods");
        api.on("GET", &s, Reply::json(200, list("ServiceList", "v1", svcs)));
        api.on(
            "GET",
            &format!("{s}?watch=true"),
            Reply::watch(vec![bookmark("v1", "Service")], true),
        );
        api.on(
            "GET",
            &e,
            Reply::json(
                200,
                list("EndpointSliceList", "discovery.k8s.io/v1", slices),
            ),
        );
        api.on(
            "GET",
            &format!("{e}?watch=true"),
            Reply::watch(vec![bookmark("discovery.k8s.io/v1", "EndpointSlice")], true),
        );
        let pods = if ns == "shop" {
            shop_pods.take().unwrap_or_default()
        } else {
            vec![]
        };
        api.on(
            "GET",
            &p,
            Reply::json(
                200,
                list("PartialObjectMetadataList", "meta.k8s.io/v1", pods),
            ),
        );
        api.on(
            "GET",
            &format!("{p}?watch=true"),
            Reply::watch(
                vec![bookmark("meta.k8s.io/v1", "PartialObjectMetadata")],
                true,
            ),
        );
    }
    let cms = "/api/v1/namespaces/shop/configmaps";
    api.on(
        "GET",
        &format!("{cms}?fieldSelector=metadata.name%3Dremora-mesh-rules"),
        Reply::json(
            200,
            list(
                "ConfigMapList",
                "v1",
                vec![configmap("600", &[("reviews.yaml", rules)])],
            ),
        ),
    );
    api.on(
        "GET",
        &format!("{cms}?fieldSelector=metadata.name%3Dremora-mesh-rules&watch=true"),
        Reply::watch(vec![bookmark("v1", "ConfigMap")], true),
    );
}

/// The real proxy in namespace `shop` against the recorded API, its outbound capture fixed on
/// `original_dst`; its ports: outbound, inbound, admin, health, prometheus.
fn start_proxy(
    api: &RecordedApi,
    rules_dir: &std::path::Path,
    original_dst: SocketAddr,
) -> (process::Proc, Vec<u16>) {
    start_proxy_with(api, rules_dir, original_dst, &[])
}

/// `start_proxy` with `extra` flags.
fn start_proxy_with(
    api: &RecordedApi,
    rules_dir: &std::path::Path,
    original_dst: SocketAddr,
    extra: &[&str],
) -> (process::Proc, Vec<u16>) {
    let ports = process::free_ports(5);
    let at = |p: u16| SocketAddr::from(([127, 0, 0, 1], p));
    let child = Command::new(process::proxy_bin())
        .args(["run", "--kube-api", &api.url(), "--namespace", "shop"])
        .arg("--access-log-encoding=JSON")
        .arg("--rules-dir")
        .arg(rules_dir)
        .args(["--outbound-addr", &at(ports[0]).to_string()])
        .args(["--inbound-addr", &at(ports[1]).to_string()])
        .args(["--admin-addr", &at(ports[2]).to_string()])
        .args(["--health-addr", &at(ports[3]).to_string()])
        .args(["--prometheus-addr", &at(ports[4]).to_string()])
        .args(["--fixed-outbound-target", &original_dst.to_string()])
        .args([
            "--ipv6",
            "off",
            "--access-log",
            "off",
            "--inbound-source-fallback",
        ])
        .args([
            "--pod-labels-file",
            "/nonexistent",
            "--rules-rescan-seconds",
            "1",
        ])
        .args(extra)
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env_remove("POD_NAME")
        .env_remove("ISTIO_META_WORKLOAD_NAME")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    (process::Proc(child), ports)
}

/// The metrics' peer labels from discovery: a pod known from the Service's EndpointSlice
/// (`targetRef`) and its metadata (labels, its ReplicaSet) names the destination of a request to
/// it and the source of a request from its address, its Deployment as the workload; in plain
/// text, so the principals stay `unknown`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_name_discovered_pods_by_their_deployment() {
    let pod = process::backend("reviews-v2");
    let nowhere = SocketAddr::from(([127, 0, 0, 1], process::free_ports(1)[0]));
    let api = RecordedApi::start().await.unwrap();
    let service = json!({"kind": "Service", "apiVersion": "v1",
        "metadata": {"name": "reviews", "namespace": "shop", "resourceVersion": "400"},
        "spec": {"type": "ClusterIP", "clusterIP": "10.96.0.10",
                 "ports": [{"name": "http", "port": nowhere.port(), "targetPort": 9080, "protocol": "TCP"}]}});
    let mut slices = slices_of("reviews", "http", &[pod]);
    slices[0]["endpoints"][0]["targetRef"] =
        json!({"kind": "Pod", "name": "reviews-v2-5f6d8c9b7-abcde", "namespace": "shop"});
    let meta = json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
        "metadata": {"name": "reviews-v2-5f6d8c9b7-abcde", "generateName": "reviews-v2-5f6d8c9b7-",
                     "namespace": "shop", "resourceVersion": "420",
                     "labels": {"app": "reviews", "version": "v2", "pod-template-hash": "5f6d8c9b7"},
                     "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                                          "name": "reviews-v2-5f6d8c9b7", "uid": "u1", "controller": true}]}});
    let dr = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: reviews, namespace: shop}\nspec:\n  host: reviews\n";
    serve_shop_with_pods(&api, vec![service], slices, vec![meta], dr);
    let rules = tempfile::tempdir().unwrap();
    std::fs::write(rules.path().join("reviews.yaml"), dr).unwrap();
    // Inbound requests come from 127.0.0.1, the pod's address in the EndpointSlice.
    let app = process::backend("the app");
    let inbound_target = format!("--fixed-inbound-target={app}");
    let (_proc, ports) = start_proxy_with(
        &api,
        rules.path(),
        nowhere,
        &["--workload-name=productpage-v1", &inbound_target],
    );
    let at = |p: u16| SocketAddr::from(([127, 0, 0, 1], p));
    let (outbound, inbound, prometheus) = (at(ports[0]), at(ports[1]), at(ports[4]));
    let metrics = move || {
        process::get(prometheus, "x", "/stats/prometheus")
            .map(|(_, b)| remora_e2e::client::parse_prometheus(&b))
            .unwrap_or_default()
    };
    let want_dst = [
        ("reporter", "source"),
        ("source_workload", "productpage-v1"),
        ("source_workload_namespace", "shop"),
        ("destination_workload", "reviews-v2"),
        ("destination_workload_namespace", "shop"),
        ("destination_app", "reviews"),
        ("destination_version", "v2"),
        ("destination_canonical_service", "reviews"),
        ("destination_canonical_revision", "v2"),
        ("destination_cluster", "Kubernetes"),
        ("destination_principal", "unknown"),
        ("destination_service", REVIEWS),
        ("connection_security_policy", "unknown"),
    ];
    // Until discovery has the pod, the request goes to the original destination (nothing).
    let t = Instant::now();
    loop {
        let r = tokio::task::spawn_blocking(move || process::get(outbound, "reviews", "/x"))
            .await
            .unwrap();
        if let Ok((200, body)) = &r {
            assert_eq!(body, "reviews-v2");
            let m = tokio::task::spawn_blocking(metrics).await.unwrap();
            // The pod's metadata may come a moment after its EndpointSlice.
            if remora_e2e::client::sum(&m, "istio_requests_total", &want_dst) >= 1.0 {
                break;
            }
        }
        assert!(
            t.elapsed() < PATIENCE,
            "never named the discovered pod; last answer {r:?}\n{:#?}",
            tokio::task::spawn_blocking(metrics).await.unwrap()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (code, body) = tokio::task::spawn_blocking(move || process::get(inbound, "x", "/in"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!((code, body.as_str()), (200, "the app"));
    let m = tokio::task::spawn_blocking(metrics).await.unwrap();
    let want_src = [
        ("reporter", "destination"),
        ("source_workload", "reviews-v2"),
        ("source_workload_namespace", "shop"),
        ("source_app", "reviews"),
        ("source_version", "v2"),
        ("source_canonical_service", "reviews"),
        ("source_canonical_revision", "v2"),
        ("source_cluster", "Kubernetes"),
        ("source_principal", "unknown"),
        ("destination_workload", "productpage-v1"),
        ("connection_security_policy", "none"),
    ];
    assert_eq!(
        remora_e2e::client::sum(&m, "istio_requests_total", &want_src),
        1.0,
        "{m:#?}"
    );
}

/// Opaque TCP to a Service's ClusterIP: the proxy knows the address from the Service's
/// `clusterIP` and sends the connection to a pod from its EndpointSlices, balanced by the
/// DestinationRule (ROUND_ROBIN) — nothing listens on the ClusterIP itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opaque_tcp_to_a_cluster_ip_reaches_the_service_pods() {
    use std::io::{BufRead, BufReader};
    // Two "database" pods that greet each connection with their name (server speaks first).
    let pod = |name: &'static str| {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        std::thread::spawn(move || {
            for s in l.incoming().flatten() {
                use std::io::Write;
                let mut s = s;
                let _ = s.write_all(format!("{name}\n").as_bytes());
            }
        });
        addr
    };
    let pods = [pod("db-0"), pod("db-1")];
    // The ClusterIP: an address on loopback where nothing listens.
    let cluster_ip = SocketAddr::from(([127, 0, 0, 71], 5432));
    let api = RecordedApi::start().await.unwrap();
    let service = json!({"kind": "Service", "apiVersion": "v1",
        "metadata": {"name": "db", "namespace": "shop", "resourceVersion": "400"},
        "spec": {"type": "ClusterIP", "clusterIP": "127.0.0.71", "clusterIPs": ["127.0.0.71"],
                 "ports": [{"name": "tcp-postgres", "port": 5432, "targetPort": 5432, "protocol": "TCP"}]}});
    let rr = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: db, namespace: shop}\nspec:\n  host: db\n  trafficPolicy: {loadBalancer: {simple: ROUND_ROBIN}}\n";
    serve_shop(
        &api,
        vec![service],
        slices_of("db", "tcp-postgres", &pods),
        rr,
    );
    let rules = tempfile::tempdir().unwrap();
    std::fs::write(rules.path().join("db.yaml"), rr).unwrap();
    let (_proc, ports) = start_proxy(&api, rules.path(), cluster_ip);
    let outbound = SocketAddr::from(([127, 0, 0, 1], ports[0]));
    let greet = move || -> Option<String> {
        let s = std::net::TcpStream::connect_timeout(&outbound, Duration::from_secs(5)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(15))).ok()?;
        let mut line = String::new();
        BufReader::new(s).read_line(&mut line).ok()?;
        (!line.is_empty()).then(|| line.trim_end().to_string())
    };
    // Until discovery has listed the Service, the connection goes to the ClusterIP itself
    // (nothing there): wait for the first greeting.
    let t = Instant::now();
    loop {
        if tokio::task::spawn_blocking(greet).await.unwrap().is_some() {
            break;
        }
        assert!(
            t.elapsed() < PATIENCE,
            "no pod of the Service ever answered through its ClusterIP"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut tally: BTreeMap<String, u32> = BTreeMap::new();
    for _ in 0..10 {
        let g = tokio::task::spawn_blocking(greet).await.unwrap();
        *tally.entry(g.expect("a greeting")).or_default() += 1;
    }
    assert_eq!(
        tally,
        BTreeMap::from([("db-0".to_string(), 5), ("db-1".to_string(), 5)]),
        "ROUND_ROBIN over the Service's two pods"
    );
}
