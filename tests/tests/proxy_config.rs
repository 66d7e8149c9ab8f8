//! `remora proxy-config` against a real proxy: start `remora-proxy run` (from the build
//! directory, as the lab does) on free loopback ports with Istio's Bookinfo rules
//! (`$REMORA_SHARED/anchors/istio/networking/`, read in place) plus the rules below, read its
//! `/config_dump` from the admin port, and run the real `remora proxy-config ... --admin` and
//! `--file` against it.
//!
//! The same rules produced the `/config_dump` recorded in
//! `tests/fixtures/kube-api/cli/proxy-config.json` (used by the CLI contract tests and the unit
//! tests of `cli/src/proxyconfig.rs`); `recorded_fixture_is_what_the_proxy_serves`
//! fails when the proxy's dump drifts from it. Re-record with `REMORA_UPDATE_FIXTURES=1`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Our rules for the Bookinfo namespace: DestinationRules with traffic policies, a details
/// VirtualService with rewrite, header, timeout, retries and redirect, and a STATIC ServiceEntry
/// on loopback addresses with labelled endpoints.
const REMORA_BOOKINFO: &str = r#"apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: reviews
spec:
  host: reviews
  trafficPolicy:
    loadBalancer:
      simple: ROUND_ROBIN
    connectionPool:
      tcp:
        maxConnections: 100
      http:
        http1MaxPendingRequests: 10
        maxRequestsPerConnection: 1
    outlierDetection:
      consecutive5xxErrors: 3
      interval: 5s
      baseEjectionTime: 30s
      maxEjectionPercent: 50
  subsets:
  - name: v1
    labels:
      version: v1
    trafficPolicy:
      loadBalancer:
        consistentHash:
          httpHeaderName: end-user
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
  subsets:
  - name: v1
    labels:
      version: v1
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: details
spec:
  host: details
  subsets:
  - name: v1
    labels:
      version: v1
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: details
spec:
  hosts:
  - details
  http:
  - match:
    - uri:
        prefix: /v1/
    rewrite:
      uri: /
    headers:
      request:
        set:
          x-remora-route: details-v1
    route:
    - destination:
        host: details
        subset: v1
    timeout: 3s
    retries:
      attempts: 2
      perTryTimeout: 1s
      retryOn: 5xx,connect-failure
  - match:
    - uri:
        exact: /old
    redirect:
      uri: /v1/details
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: payments
spec:
  hosts:
  - payments.internal
  location: MESH_EXTERNAL
  ports:
  - number: 8080
    name: http
    protocol: HTTP
  resolution: STATIC
  endpoints:
  - address: 127.0.0.1
    ports:
      http: 18080
    labels:
      version: v1
  - address: 127.0.0.2
    ports:
      http: 18081
    labels:
      version: v2
    weight: 20
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: payments
spec:
  host: payments.internal
  trafficPolicy:
    tls:
      mode: SIMPLE
      sni: payments.internal
  subsets:
  - name: v1
    labels:
      version: v1
  - name: v2
    labels:
      version: v2
"#;

/// Istio's Bookinfo files used as they are.
const ANCHORS: [&str; 2] = [
    "virtual-service-reviews-jason-v2-v3.yaml",
    "virtual-service-ratings-test-delay.yaml",
];

const POD: &str = "reviews-v1-5d8f9c7b4-k2x8p";

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

fn bin(name: &str) -> PathBuf {
    let p = remora_e2e::admission::default_bin_dir().join(name);
    assert!(
        p.exists(),
        "{} is missing: build it first (cargo build -p remora-cli; cargo build -p remora-proxy --bin remora-proxy; scripts/test does)",
        p.display()
    );
    p
}

/// The rules directory: the anchors and our file. Tests that start a proxy first call
/// `remora_corpus::require!("networking")` (skipped, with a line saying so, without the corpus).
fn rules_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    for a in ANCHORS {
        let src = remora_corpus::istio_dir().join("networking").join(a);
        let text =
            std::fs::read_to_string(&src).unwrap_or_else(|e| panic!("{}: {e}", src.display()));
        std::fs::write(dir.path().join(a), text).expect("write rules");
    }
    std::fs::write(dir.path().join("remora-bookinfo.yaml"), REMORA_BOOKINFO).expect("write rules");
    dir
}

/// A running proxy, killed (and reaped) on drop even when the test fails.
struct Proxy {
    child: Child,
    admin: SocketAddr,
    health: SocketAddr,
    _rules: tempfile::TempDir,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

use remora_e2e::ports::free_ports;

/// A bare HTTP/1.1 GET on loopback: (status, body).
fn get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Ok((status, body.to_string()))
}

impl Proxy {
    /// Starts the proxy as the fixture was recorded (outbound and inbound on free loopback
    /// ports here) and waits (bounded) until it is ready.
    fn start() -> Proxy {
        let rules = rules_dir();
        let p = free_ports(5);
        let child = Command::new(bin("remora-proxy"))
            .args([
                "run".to_string(),
                format!("--outbound-addr=127.0.0.1:{}", p[0]),
                format!("--inbound-addr=127.0.0.1:{}", p[1]),
                format!("--admin-addr=127.0.0.1:{}", p[2]),
                format!("--health-addr=127.0.0.1:{}", p[3]),
                format!("--prometheus-addr=127.0.0.1:{}", p[4]),
                format!("--rules-dir={}", rules.path().display()),
                "--pod-labels-file=/nonexistent/remora-test-labels".into(),
                "--namespace=bookinfo".into(),
                format!("--pod-name={POD}"),
                "--workload-name=reviews".into(),
                "--ipv6=off".into(),
                "--kube-api=off".into(),
                "--drain-seconds=1".into(),
            ])
            .env_remove("REMORA_OUTBOUND_ADDR")
            .env_remove("REMORA_INBOUND_ADDR")
            .env_remove("KUBERNETES_SERVICE_HOST")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn remora-proxy");
        let mut proxy = Proxy {
            child,
            admin: SocketAddr::from(([127, 0, 0, 1], p[2])),
            health: SocketAddr::from(([127, 0, 0, 1], p[3])),
            _rules: rules,
        };
        // Generous: a debug build starting on a loaded CI machine.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(Some(st)) = proxy.child.try_wait() {
                let mut err = String::new();
                if let Some(mut e) = proxy.child.stderr.take() {
                    let _ = e.read_to_string(&mut err);
                }
                panic!("remora-proxy exited early ({st}):\n{err}");
            }
            if matches!(get(proxy.health, "/healthz/ready"), Ok((200, _))) {
                return proxy;
            }
            assert!(
                Instant::now() < deadline,
                "remora-proxy not ready within 60 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn config_dump(&self) -> Value {
        let (status, body) = get(self.admin, "/config_dump").expect("GET /config_dump");
        assert_eq!(status, 200, "{body}");
        serde_json::from_str(&body).expect("/config_dump is JSON")
    }
}

fn remora(args: &[&str]) -> Output {
    let mut child = Command::new(bin("remora"))
        .args(args)
        .env_remove("KUBECONFIG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("remora runs");
    // Bounded: the CLI's own timeout is 5 s.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if child.try_wait().expect("wait").is_some() {
            return child.wait_with_output().expect("output");
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("remora {args:?} did not finish within 60 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn text(o: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}--- stderr\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Cells of a table line (columns are separated by at least three spaces).
fn cols(line: &str) -> Vec<&str> {
    line.split("   ")
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .collect()
}

#[test]
fn proxy_config_reads_a_running_proxy_through_its_admin_port() {
    remora_corpus::require!("networking");
    let proxy = Proxy::start();
    let admin = proxy.admin.to_string();

    // routes: the Bookinfo reviews VirtualService as the proxy loaded it.
    let o = remora(&["proxy-config", "routes", "--admin", &admin]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    let rows: Vec<Vec<&str>> = out.lines().map(cols).collect();
    assert_eq!(
        rows[0],
        [
            "VIRTUAL SERVICE",
            "HOSTS",
            "ROUTE",
            "MATCH",
            "DESTINATION",
            "POLICY"
        ]
    );
    let reviews: Vec<&Vec<&str>> = rows
        .iter()
        .filter(|r| r.first() == Some(&"bookinfo/reviews"))
        .collect();
    assert_eq!(reviews.len(), 2, "{out}");
    assert_eq!(
        reviews[0][1..5],
        [
            "reviews.bookinfo.svc.cluster.local",
            "spec.http[0]",
            "header end-user=jason",
            "reviews.bookinfo.svc.cluster.local|v2"
        ]
    );
    assert_eq!(
        reviews[1][3..5],
        ["*", "reviews.bookinfo.svc.cluster.local|v3"]
    );
    let ratings = rows
        .iter()
        .find(|r| r.first() == Some(&"bookinfo/ratings"))
        .expect("ratings route");
    assert_eq!(ratings[5], "fault delay 7s", "{out}");

    // clusters: the reviews subsets with the DestinationRule's policy, filtered like istioctl.
    let o = remora(&[
        "proxy-config",
        "clusters",
        "--admin",
        &admin,
        "--fqdn",
        "reviews",
        "-o",
        "json",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let v: Value = serde_json::from_slice(&o.stdout).expect("JSON output");
    assert_eq!(v["proxy"]["target"], admin.as_str());
    assert_eq!(v["proxy"]["workload"], "bookinfo/reviews");
    let clusters = v["clusters"].as_array().expect("clusters");
    let subsets: Vec<&str> = clusters
        .iter()
        .filter_map(|c| c["subset"].as_str())
        .collect();
    assert_eq!(subsets, ["v1", "v2", "v3"]);
    assert!(clusters
        .iter()
        .all(|c| c["host"] == "reviews.bookinfo.svc.cluster.local"
            && c["destination_rule"] == "bookinfo/reviews"));
    let v1 = clusters.iter().find(|c| c["subset"] == "v1").expect("v1");
    assert_eq!(v1["load_balancer"], "CONSISTENT_HASH header end-user");
    let v3 = clusters.iter().find(|c| c["subset"] == "v3").expect("v3");
    assert_eq!(v3["load_balancer"], "ROUND_ROBIN");
    assert_eq!(
        v3["outlier_detection"],
        "5xx x3, interval 5s, eject 30s, max 50%"
    );

    // endpoints of a subset; listeners with the addresses the proxy bound.
    let o = remora(&[
        "proxy-config",
        "endpoints",
        "--admin",
        &admin,
        "--subset",
        "v2",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    let lines: Vec<Vec<&str>> = out.lines().map(cols).collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert_eq!(
        lines[1][..4],
        [
            "payments.internal:8080",
            "127.0.0.2:18081",
            "version=v2",
            "v2"
        ]
    );
    let o = remora(&["proxy-config", "listeners", "--admin", &admin, "-o", "yaml"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let v: Value = serde_yaml_ng::from_slice(&o.stdout).expect("YAML output");
    let listeners = v["listeners"]["listeners"].as_array().expect("listeners");
    assert_eq!(listeners.len(), 2, "{v}");
    assert!(listeners.iter().all(|l| l["bound"] == true));

    // --file on a saved dump answers the same as the live proxy.
    let dump = proxy.config_dump();
    let dir = tempfile::tempdir().expect("temp dir");
    let saved = dir.path().join("config_dump.json");
    std::fs::write(&saved, serde_json::to_vec(&dump).expect("dump")).expect("write");
    let live = remora(&["proxy-config", "all", "--admin", &admin, "-o", "json"]);
    let offline = remora(&[
        "proxy-config",
        "all",
        "--file",
        saved.to_str().expect("utf-8 path"),
        "-o",
        "json",
    ]);
    assert_eq!(live.status.code(), Some(0), "{}", text(&live));
    assert_eq!(offline.status.code(), Some(0), "{}", text(&offline));
    let a: Value = serde_json::from_slice(&live.stdout).expect("json");
    let b: Value = serde_json::from_slice(&offline.stdout).expect("json");
    for view in ["routes", "clusters", "endpoints", "listeners"] {
        assert_eq!(a[view], b[view], "{view}");
    }
}

#[test]
fn proxy_config_admin_errors_are_one_line() {
    // Nothing listens on a port we bound and released.
    let port = free_ports(1)[0];
    let o = remora(&[
        "proxy-config",
        "routes",
        "--admin",
        &format!("127.0.0.1:{port}"),
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with(&format!("remora: --admin 127.0.0.1:{port}: cannot connect")),
        "{err}"
    );
    // An HTTP server that is not a remora proxy's admin port: the proxy's health port.
    remora_corpus::require!("networking");
    let proxy = Proxy::start();
    let o = remora(&[
        "proxy-config",
        "routes",
        "--admin",
        &proxy.health.to_string(),
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("cannot read /config_dump"), "{err}");
}

/// `remora proxy-config POD` reaches the proxy through the API server's port-forward (the
/// recorded API forwarding to the proxy's admin port, as the kubelet does) and shows what
/// `--admin` shows.
#[test]
fn proxy_config_through_the_api_servers_port_forward() {
    use remora_e2e::apiserver::{PodPort, RecordedApi, Reply};
    use serde_json::json;

    remora_corpus::require!("networking");
    let proxy = Proxy::start();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let api = rt.block_on(RecordedApi::start()).expect("recorded API");
    api.on(
        "GET",
        &format!("/api/v1/namespaces/bookinfo/pods/{POD}"),
        Reply::json(
            200,
            json!({"apiVersion": "v1", "kind": "Pod",
                   "metadata": {"name": POD, "namespace": "bookinfo"},
                   "spec": {"initContainers": [{"name": "remora-proxy", "restartPolicy": "Always"}],
                            "containers": [{"name": "reviews"}]},
                   "status": {"phase": "Running"}}),
        ),
    );
    api.on_port_forward(
        "bookinfo",
        POD,
        15020,
        PodPort::Connect {
            addr: proxy.admin,
            netns: None,
        },
    );
    let url = api.url();
    let pod = format!("{POD}.bookinfo");
    let forwarded = remora(&["--server", &url, "proxy-config", "all", &pod, "-o", "json"]);
    assert_eq!(forwarded.status.code(), Some(0), "{}", text(&forwarded));
    let admin = proxy.admin.to_string();
    let direct = remora(&["proxy-config", "all", "--admin", &admin, "-o", "json"]);
    assert_eq!(direct.status.code(), Some(0), "{}", text(&direct));
    let a: Value = serde_json::from_slice(&forwarded.stdout).expect("json");
    let b: Value = serde_json::from_slice(&direct.stdout).expect("json");
    assert_eq!(a["proxy"]["target"], format!("bookinfo/{POD}"));
    for view in ["routes", "clusters", "endpoints", "listeners"] {
        assert_eq!(a[view], b[view], "{view}");
    }
    let forwards: Vec<String> = api
        .requests()
        .iter()
        .filter(|s| s.path().ends_with("/portforward"))
        .map(|s| format!("{} {}", s.path_and_query, s.matched))
        .collect();
    assert_eq!(
        forwards,
        [format!(
            "/api/v1/namespaces/bookinfo/pods/{POD}/portforward?&ports=15020 true"
        )]
    );
    drop(api);
}

/// The `/config_dump` recorded in the CLI fixture is what this proxy serves for the same rules
/// (same content hash and the same rules, listeners aside, which name the ports).
#[test]
fn recorded_fixture_is_what_the_proxy_serves() {
    remora_corpus::require!("networking");
    let proxy = Proxy::start();
    let live = proxy.config_dump();
    let path = workspace().join("tests/fixtures/kube-api/cli/proxy-config.json");
    let mut fx: Value =
        serde_json::from_str(&std::fs::read_to_string(&path).expect("fixture")).expect("JSON");
    let suffix = format!("/pods/{POD}/portforward?ports=15020");
    let ex = fx["exchanges"]
        .as_array_mut()
        .expect("exchanges")
        .iter_mut()
        .find(|e| e["path"].as_str().is_some_and(|p| p.ends_with(&suffix)))
        .expect("the recorded port-forward to the admin port")
        .pointer_mut("/port_forward/http/~1config_dump")
        .expect("the recorded /config_dump answer");
    if std::env::var_os("REMORA_UPDATE_FIXTURES").is_some() {
        // Keep the recorded listener addresses (the pod's ports), take everything else.
        let mut body = live.clone();
        body["listeners"] = ex["body"]["listeners"].clone();
        ex["body"] = body;
        std::fs::write(
            &path,
            serde_json::to_string_pretty(&fx).expect("JSON") + "\n",
        )
        .expect("write fixture");
        return;
    }
    let recorded = &ex["body"];
    assert_eq!(live["hash"], recorded["hash"], "rule files changed");
    for key in [
        "virtual_services",
        "destination_rules",
        "service_entries",
        "sidecar",
        "ignored",
        "counts",
        "files",
    ] {
        assert_eq!(
            live["rules"][key], recorded["rules"][key],
            "rules.{key} differs from the recorded dump: re-record with REMORA_UPDATE_FIXTURES=1"
        );
    }
    let names = |d: &Value| -> Vec<String> {
        d.as_object()
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default()
    };
    assert_eq!(
        names(&live),
        names(recorded),
        "top-level /config_dump keys differ: re-record with REMORA_UPDATE_FIXTURES=1"
    );
}

// ------------------------------------------------------------- with Kubernetes discovery

/// An HTTP/1.1 server on 127.0.0.1 answering 200 to every request until the test ends.
fn backend() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr");
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            std::thread::spawn(move || {
                let mut s = s;
                let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut chunk) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let _ = s.write_all(
                    b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
                );
            });
        }
    });
    addr
}

/// The real proxy with endpoint discovery through the recorded API: after one request to
/// `reviews` (known only from an EndpointSlice), `proxy-config` shows the discovered host, the
/// endpoint the outlier detector tracks with its health, and the destination in use.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_config_shows_discovery_and_live_destination_state() {
    use remora_e2e::apiserver::{RecordedApi, Reply};
    use serde_json::json;

    let backend = backend();
    // The Service's port (the original destination): nothing listens there.
    let nowhere = SocketAddr::from(([127, 0, 0, 1], free_ports(1)[0]));
    let api = RecordedApi::start().await.expect("recorded API");
    let list = |kind: &str, v: &str, items: Vec<Value>| json!({"kind": kind, "apiVersion": v, "metadata": {"resourceVersion": "500"}, "items": items});
    let bookmark = |v: &str, kind: &str| json!({"type": "BOOKMARK", "object": {"kind": kind, "apiVersion": v, "metadata": {"resourceVersion": "501"}}});
    for ns in ["shop", "remora-system"] {
        let (svcs, slices) = if ns == "shop" {
            (
                vec![json!({"kind": "Service", "apiVersion": "v1",
                    "metadata": {"name": "reviews", "namespace": "shop", "resourceVersion": "400"},
                    "spec": {"type": "ClusterIP", "clusterIP": "10.96.0.10",
                             "ports": [{"name": "http", "port": nowhere.port(), "targetPort": 9080, "protocol": "TCP"}]}})],
                vec![
                    json!({"kind": "EndpointSlice", "apiVersion": "discovery.k8s.io/v1",
                    "metadata": {"name": "reviews-x7k2p", "namespace": "shop", "resourceVersion": "401",
                                 "labels": {"kubernetes.io/service-name": "reviews"}},
                    "addressType": "IPv4",
                    "ports": [{"name": "http", "port": backend.port(), "protocol": "TCP"}],
                    "endpoints": [
                        {"addresses": ["127.0.0.1"], "conditions": {"ready": true},
                         "targetRef": {"kind": "Pod", "name": "reviews-v1-abc", "namespace": "shop"}},
                        // Terminating: not indexed, so not shown.
                        {"addresses": ["127.0.0.3"], "conditions": {"ready": false, "terminating": true},
                         "targetRef": {"kind": "Pod", "name": "reviews-v2-old", "namespace": "shop"}}
                    ]}),
                ],
            )
        } else {
            (vec![], vec![])
        };
        let pods = if ns == "shop" {
            ["reviews-v1-abc", "reviews-v2-old"]
                .iter()
                .map(|name| {
                    let version = if name.contains("v1") { "v1" } else { "v2" };
                    json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
                           "metadata": {"name": name, "namespace": "shop", "resourceVersion": "402",
                                        "labels": {"app": "reviews", "version": version}}})
                })
                .collect()
        } else {
            vec![]
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
    let rules = tempfile::tempdir().expect("temp dir");
    std::fs::write(
        rules.path().join("reviews.yaml"),
        "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  http:
  - route:
    - destination: {host: reviews}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews}
spec:
  host: reviews
  trafficPolicy:
    outlierDetection: {consecutive5xxErrors: 2, interval: 10s, baseEjectionTime: 30s}
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
---
apiVersion: remora.dev/v1alpha1
kind: RateLimit
metadata: {name: reviews}
spec: {host: reviews, requestsPerUnit: 100, unit: MINUTE, burst: 10}
",
    )
    .expect("write rules");
    let p = free_ports(5);
    let at = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));
    let child = Command::new(bin("remora-proxy"))
        .args(["run", "--kube-api", &api.url(), "--namespace", "shop"])
        .arg("--access-log-encoding=JSON")
        .args(["--rules-configmap", "off", "--ipv6", "off"])
        .arg(format!("--rules-dir={}", rules.path().display()))
        .arg(format!("--outbound-addr={}", at(p[0])))
        .arg(format!("--inbound-addr={}", at(p[1])))
        .arg(format!("--admin-addr={}", at(p[2])))
        .arg(format!("--health-addr={}", at(p[3])))
        .arg(format!("--prometheus-addr={}", at(p[4])))
        .arg(format!("--fixed-outbound-target={nowhere}"))
        .args(["--pod-labels-file", "/nonexistent/remora-test-labels"])
        .env_remove("KUBERNETES_SERVICE_HOST")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn remora-proxy");
    let proxy = Proxy {
        child,
        admin: at(p[2]),
        health: at(p[3]),
        _rules: rules,
    };
    // One request through the outbound listener, repeated (bounded) until discovery has the
    // endpoint: the request reaches the backend only through it.
    let outbound = at(p[0]);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let r = tokio::task::spawn_blocking(move || {
            let mut s = TcpStream::connect_timeout(&outbound, Duration::from_secs(2))?;
            s.set_read_timeout(Some(Duration::from_secs(30)))?;
            s.write_all(b"GET / HTTP/1.1\r\nhost: reviews\r\nconnection: close\r\n\r\n")?;
            let mut out = String::new();
            s.read_to_string(&mut out)?;
            Ok::<String, std::io::Error>(out)
        })
        .await
        .expect("join");
        if r.as_ref().is_ok_and(|o| o.starts_with("HTTP/1.1 200")) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the request never reached the discovered endpoint: {r:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The endpoint can route before the pods list (labels, pod names) is in: wait (bounded)
    // until every watch has listed, so the pod and subset columns below are settled.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let dump = proxy.config_dump();
        let watches = &dump["discovery"]["status"]["watches"];
        if watches
            .as_object()
            .is_some_and(|w| !w.is_empty() && w.values().all(|s| s == "watching"))
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "discovery's watches never all listed: {watches}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let admin = proxy.admin.to_string();
    let o = remora(&["proxy-config", "all", "--admin", &admin, "-o", "json"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let v: Value = serde_json::from_slice(&o.stdout).expect("JSON");
    let host = "reviews.shop.svc.cluster.local";
    let eps = v["endpoints"].as_array().expect("endpoints");
    let seen = eps
        .iter()
        .find(|e| e["address"] == format!("127.0.0.1:{}", backend.port()))
        .unwrap_or_else(|| panic!("no discovered endpoint in {eps:#?}"));
    assert_eq!(seen["host"], host);
    assert_eq!(seen["port"], nowhere.port());
    assert_eq!(seen["health"], "HEALTHY");
    // Listed from discovery's index: the pod, its labels and the subsets they select.
    assert_eq!(seen["source"], "Kubernetes discovery");
    assert_eq!(seen["pod"], "reviews-v1-abc");
    assert_eq!(seen["labels"], json!({"app": "reviews", "version": "v1"}));
    assert_eq!(seen["subsets"], json!(["v1"]));
    // The terminating endpoint is not indexed; the host's only row is the ready one.
    let rows_of_host: Vec<&Value> = eps.iter().filter(|e| e["host"] == host).collect();
    assert_eq!(rows_of_host.len(), 1, "{rows_of_host:#?}");
    let notes: Vec<&str> = v["notes"]
        .as_array()
        .expect("notes")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        !notes.iter().any(|n| n.contains("Kubernetes discovery")),
        "nothing left out, nothing to say: {notes:?}"
    );
    // The dump itself: the index with its caps.
    let dump = proxy.config_dump();
    let idx = &dump["discovery"]["index"];
    assert_eq!(idx["limits"]["endpoints_per_host"], 100, "{idx}");
    assert_eq!(idx["limits"]["endpoints_total"], 5000, "{idx}");
    assert_eq!(idx["endpoints_omitted"], 0, "{idx}");
    // The destination in use, on the port the client addressed, with the DestinationRule.
    let clusters = v["clusters"].as_array().expect("clusters");
    let used = clusters
        .iter()
        .find(|c| c["host"] == host && c["port"] == nowhere.port())
        .unwrap_or_else(|| panic!("no cluster {host}:{} in {clusters:#?}", nowhere.port()));
    assert_eq!(used["destination_rule"], "shop/reviews");
    assert_eq!(
        used["outlier_detection"],
        "5xx x2, interval 10s, eject 30s, max 10%"
    );
    assert_eq!(
        used["sources"],
        json!([
            "DestinationRule shop/reviews",
            "VirtualService shop/reviews",
            "discovery",
            "in use"
        ]),
        "{used}"
    );
    assert!(used["connection_pool_stats"].is_object(), "{used}");
    // The discovered port and its endpoints, per subset too.
    assert_eq!(
        used["discovery"],
        format!("port http -> {}: 1 ready endpoint", backend.port())
    );
    for (subset, want) in [("v1", "1 of 1"), ("v2", "0 of 1")] {
        let row = clusters
            .iter()
            .find(|c| c["host"] == host && c["subset"] == subset)
            .unwrap_or_else(|| panic!("no cluster {host}|{subset} in {clusters:#?}"));
        assert_eq!(row["port"], nowhere.port());
        assert_eq!(
            row["discovery"],
            format!("port http -> {}: {want} ready endpoint", backend.port())
        );
    }
    // The RateLimit on the host shows on the route that sends there.
    let routes = v["routes"].as_array().expect("routes");
    let route = routes
        .iter()
        .find(|r| r["virtual_service"] == "shop/reviews")
        .unwrap_or_else(|| panic!("{routes:#?}"));
    assert_eq!(
        route["policy"],
        "ratelimit 100/MINUTE burst 10 (shop/reviews)"
    );
    // The table says the same.
    let o = remora(&[
        "proxy-config",
        "endpoints",
        "--admin",
        &admin,
        "--fqdn",
        "reviews.shop",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    let row = out
        .lines()
        .map(cols)
        .find(|r| r.get(1) == Some(&format!("127.0.0.1:{}", backend.port()).as_str()))
        .unwrap_or_else(|| panic!("{out}"));
    // The Service port the client addressed, and the endpoint's own address.
    assert_eq!(row[0], format!("{host}:{}", nowhere.port()));
    assert!(
        row.contains(&"v1") && out.contains("Kubernetes discovery (pod reviews-v1-abc)"),
        "{out}"
    );
    // --subset v2 selects no discovered endpoint of the host; v1 selects it.
    for (subset, shown) in [("v1", true), ("v2", false)] {
        let o = remora(&[
            "proxy-config",
            "endpoints",
            "--admin",
            &admin,
            "--fqdn",
            "reviews.shop",
            "--subset",
            subset,
        ]);
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
        let out = String::from_utf8_lossy(&o.stdout).into_owned();
        assert_eq!(
            out.contains("reviews-v1-abc"),
            shown,
            "--subset {subset}: {out}"
        );
    }
    drop(proxy);
}

// ------------------------------------------------------------- authorization

/// `remora proxy-config authz` against a real proxy with AuthorizationPolicies: for each
/// request, the decision the CLI prints (from the proxy's `/config_dump`, through the model's
/// verdict) is what the proxy does with that request on its inbound listener; `--file` on the
/// saved dump says the same.
#[test]
fn proxy_config_authz_agrees_with_the_proxy() {
    const AUTHZ: &str = r#"apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-admin, namespace: bookinfo}
spec:
  action: DENY
  rules: [{to: [{operation: {paths: ["/admin*"]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-reads, namespace: bookinfo}
spec:
  rules:
  - to: [{operation: {methods: [GET], paths: ["/api/*"]}}]
  - from: [{source: {remoteIpBlocks: [203.0.113.0/24]}}]
  - when: [{key: "request.headers[x-team]", values: [ops]}]
"#;
    let rules = tempfile::tempdir().expect("temp dir");
    std::fs::write(rules.path().join("authz.yaml"), AUTHZ).expect("write rules");
    let app = backend();
    let p = free_ports(5);
    let inbound = SocketAddr::from(([127, 0, 0, 1], p[1]));
    let child = Command::new(bin("remora-proxy"))
        .args([
            "run".to_string(),
            format!("--outbound-addr=127.0.0.1:{}", p[0]),
            format!("--inbound-addr={inbound}"),
            format!("--admin-addr=127.0.0.1:{}", p[2]),
            format!("--health-addr=127.0.0.1:{}", p[3]),
            format!("--prometheus-addr=127.0.0.1:{}", p[4]),
            format!("--rules-dir={}", rules.path().display()),
            format!("--fixed-inbound-target={app}"),
            "--inbound-source-fallback".into(),
            "--pod-labels-file=/nonexistent/remora-test-labels".into(),
            "--namespace=bookinfo".into(),
            format!("--pod-name={POD}"),
            "--ipv6=off".into(),
            "--kube-api=off".into(),
            "--ca-address=off".into(),
            "--drain-seconds=1".into(),
        ])
        .env_remove("REMORA_OUTBOUND_ADDR")
        .env_remove("REMORA_INBOUND_ADDR")
        .env_remove("KUBERNETES_SERVICE_HOST")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn remora-proxy");
    let proxy = Proxy {
        child,
        admin: SocketAddr::from(([127, 0, 0, 1], p[2])),
        health: SocketAddr::from(([127, 0, 0, 1], p[3])),
        _rules: rules,
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while !matches!(get(proxy.health, "/healthz/ready"), Ok((200, _))) {
        assert!(
            Instant::now() < deadline,
            "remora-proxy not ready within 60 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let admin = proxy.admin.to_string();
    let dir = tempfile::tempdir().expect("temp dir");
    let saved = dir.path().join("config_dump.json");
    std::fs::write(
        &saved,
        serde_json::to_vec(&proxy.config_dump()).expect("dump"),
    )
    .expect("write");
    let saved = saved.to_str().expect("utf-8 path").to_string();

    type Case<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)], &'a str);
    let cases: &[Case] = &[
        (
            "GET",
            "/api/items",
            &[],
            "allowed by ALLOW policy bookinfo/allow-reads rule 0",
        ),
        (
            "POST",
            "/api/items",
            &[],
            "denied: ALLOW policies bookinfo/allow-reads apply and none matched",
        ),
        (
            "GET",
            "/api/../admin/x",
            &[],
            "denied by DENY policy bookinfo/deny-admin rule 0",
        ),
        (
            "POST",
            "/other",
            &[("x-team", "ops")],
            "allowed by ALLOW policy bookinfo/allow-reads rule 2",
        ),
        (
            "POST",
            "/other",
            &[("x-forwarded-for", "198.51.100.1, 203.0.113.7")],
            "allowed by ALLOW policy bookinfo/allow-reads rule 1",
        ),
        (
            "POST",
            "/other",
            &[("x-forwarded-for", "203.0.113.7, 198.51.100.1")],
            "denied: ALLOW policies bookinfo/allow-reads apply and none matched",
        ),
    ];
    for (method, path, headers, reason) in cases {
        let mut args = vec![
            "proxy-config".to_string(),
            "authz".into(),
            "--method".into(),
            method.to_string(),
            "--path".into(),
            path.to_string(),
            "--source-ip".into(),
            "127.0.0.1".into(),
            "--port".into(),
            app.port().to_string(),
        ];
        for (k, v) in headers.iter() {
            args.push("--header".into());
            args.push(format!("{k}={v}"));
        }
        let mut outs = Vec::new();
        for source in [["--admin", admin.as_str()], ["--file", saved.as_str()]] {
            let mut a: Vec<&str> = args.iter().map(String::as_str).collect();
            a.extend(source);
            let o = remora(&a);
            assert_eq!(o.status.code(), Some(0), "{}", text(&o));
            outs.push(String::from_utf8_lossy(&o.stdout).into_owned());
        }
        assert_eq!(outs[0], outs[1], "--admin and --file");
        let line = outs[0]
            .lines()
            .find(|l| l.starts_with("decision: "))
            .unwrap_or_else(|| panic!("no decision line:\n{}", outs[0]));
        assert!(line.contains(reason), "{method} {path} {headers:?}: {line}");
        let denied = line.starts_with("decision: DENY");
        // The proxy's answer to the same request.
        let mut s = TcpStream::connect_timeout(&inbound, Duration::from_secs(2)).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(30)))
            .expect("timeout");
        let mut req = format!("{method} {path} HTTP/1.1\r\nHost: reviews\r\nConnection: close\r\ncontent-length: 0\r\n");
        for (k, v) in headers.iter() {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        s.write_all(req.as_bytes()).expect("write");
        let mut raw = String::new();
        let _ = s.read_to_string(&mut raw);
        let status = raw.split_whitespace().nth(1).unwrap_or("");
        assert_eq!(
            status == "403",
            denied,
            "{method} {path} {headers:?}: the CLI says {line:?}, the proxy answered {raw:?}"
        );
        if !denied {
            assert_eq!(status, "200", "{raw}");
        }
    }
    // -o json carries the verdict.
    let o = remora(&[
        "proxy-config",
        "authz",
        "--file",
        &saved,
        "--path",
        "/admin",
        "-o",
        "json",
    ]);
    let v: Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(v["authz"]["check"]["decision"], "DENY", "{v}");
    assert_eq!(
        v["authz"]["check"]["verdict"]["policy"], "bookinfo/deny-admin",
        "{v}"
    );
    // A request flag on another view is one line naming it.
    let o = remora(&["proxy-config", "routes", "--file", &saved, "--path", "/x"]);
    assert_eq!(o.status.code(), Some(2));
    assert_eq!(
        String::from_utf8_lossy(&o.stderr).trim(),
        "remora: --path: not a filter of the routes view (it describes a request for the authz view)"
    );
}
