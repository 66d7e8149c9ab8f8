//! Discovery served by the control plane: the real `remora-webhook serve --discovery on`
//! watches Services, EndpointSlices and Pods (metadata) once, cluster-wide, in the recorded API
//! (`tests/fixtures/kube-api/ca/` for its root and TokenReviews), and streams them over
//! `remora.discovery.v1.Discovery/Subscribe` on the CA's TLS port. A real `remora-proxy` with
//! `--discovery-address` and no Kubernetes API at all routes to an endpoint it learned only
//! from that stream; an EndpointSlice change reaches it as a delta (timed), and so does what a
//! re-list after a 410 at the control plane finds changed; through a control-plane restart it
//! keeps routing from the last state and resynchronizes. 200 subscribers get every change
//! (timed). A real tonic client
//! checks scoping by namespace and the refusal of a forged identity.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use remora_e2e::apiserver::{event, expired_event, RecordedApi, Reply};
use remora_e2e::netns::Proc;
use remora_model::discovery_api::{DiscoveryResponse, SubscribeRequest, SUBSCRIBE};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use serde_json::{json, Value};

const SECRETS: &str = "/api/v1/namespaces/remora-system/secrets";
const ROOT_SECRET: &str = "/api/v1/namespaces/remora-system/secrets/remora-ca";
const CA_NAME: &str = "remora-ca.remora-system.svc";
const SLICES: &str = "/apis/discovery.k8s.io/v1/endpointslices";
const SERVICES: &str = "/api/v1/services";
const PODS: &str = "/api/v1/pods";
const TOKEN_REVIEWS: &str = "/apis/authentication.k8s.io/v1/tokenreviews";
/// Bound of every wait for something that takes a second or two on an idle machine.
const PATIENCE: Duration = Duration::from_secs(60);

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/kube-api/ca")
        .join(name)
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn unb64(v: &Value) -> String {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(v.as_str().expect("base64 string"))
        .expect("valid base64");
    String::from_utf8(bytes).unwrap()
}

fn secret_body(data: &[(&str, String)], rv: &str) -> Value {
    let data: serde_json::Map<String, Value> = data
        .iter()
        .map(|(k, v)| (k.to_string(), Value::String(b64(v.as_bytes()))))
        .collect();
    json!({"kind": "Secret", "apiVersion": "v1",
        "metadata": {"name": "remora-ca", "namespace": "remora-system", "resourceVersion": rv,
                     "uid": "6f1e2d3c-4b5a-4969-8877-665544332211"},
        "type": "Opaque", "data": data})
}

fn posts_to(api: &RecordedApi, path: &str) -> Vec<Value> {
    api.requests()
        .into_iter()
        .filter(|r| r.method == "POST" && r.path() == path)
        .filter_map(|r| r.body)
        .collect()
}

fn list(kind: &str, api_version: &str, items: Vec<Value>) -> Value {
    json!({"kind": kind, "apiVersion": api_version, "metadata": {"resourceVersion": "500"},
           "items": items})
}

fn bookmark(api_version: &str, kind: &str) -> Value {
    json!({"type": "BOOKMARK", "object": {"kind": kind, "apiVersion": api_version,
           "metadata": {"resourceVersion": "501"}}})
}

fn service(ns: &str, name: &str, port: u16) -> Value {
    json!({"kind": "Service", "apiVersion": "v1",
        "metadata": {"name": name, "namespace": ns, "resourceVersion": "400"},
        "spec": {"type": "ClusterIP", "clusterIP": "10.96.0.10",
                 "ports": [{"name": "http", "port": port, "targetPort": 8080, "protocol": "TCP"}]}})
}

fn slice(ns: &str, svc: &str, backend: SocketAddr, rv: &str) -> Value {
    json!({"kind": "EndpointSlice", "apiVersion": "discovery.k8s.io/v1",
        "metadata": {"name": format!("{svc}-1"), "namespace": ns, "resourceVersion": rv,
                     "labels": {"kubernetes.io/service-name": svc}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": backend.port(), "protocol": "TCP"}],
        "endpoints": [{"addresses": [backend.ip().to_string()], "conditions": {"ready": true},
                       "targetRef": {"kind": "Pod", "name": format!("{svc}-pod"), "namespace": ns}}]})
}

fn pod(ns: &str, name: &str) -> Value {
    pod_as(
        ns,
        name,
        "default",
        &[("app", "reviews"), ("version", "v1")],
    )
}

/// A Pod as the API server answers the control plane's watch (whole pods: it reads
/// `spec.serviceAccountName`), running as `sa`, with `labels`, and a container whose
/// environment must never reach a proxy.
fn pod_as(ns: &str, name: &str, sa: &str, labels: &[(&str, &str)]) -> Value {
    let labels: serde_json::Map<String, Value> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), Value::String(v.to_string())))
        .collect();
    json!({"kind": "Pod", "apiVersion": "v1",
        "metadata": {"name": name, "namespace": ns, "resourceVersion": "402",
                     "labels": labels},
        "spec": {"serviceAccountName": sa,
                 "containers": [{"name": "app", "image": "app:1",
                                 "env": [{"name": "DB_PASSWORD", "value": "s3cr3t"}]}]}})
}

/// The cluster the control plane lists: these objects, then held watches.
fn serve_cluster(api: &RecordedApi, svcs: Vec<Value>, slices: Vec<Value>, pods: Vec<Value>) {
    api.on(
        "GET",
        SERVICES,
        Reply::json(200, list("ServiceList", "v1", svcs)),
    );
    api.on(
        "GET",
        &format!("{SERVICES}?watch=true"),
        Reply::watch(vec![bookmark("v1", "Service")], true),
    );
    api.on(
        "GET",
        SLICES,
        Reply::json(
            200,
            list("EndpointSliceList", "discovery.k8s.io/v1", slices),
        ),
    );
    api.on(
        "GET",
        &format!("{SLICES}?watch=true"),
        Reply::watch(vec![bookmark("discovery.k8s.io/v1", "EndpointSlice")], true),
    );
    api.on("GET", PODS, Reply::json(200, list("PodList", "v1", pods)));
    api.on(
        "GET",
        &format!("{PODS}?watch=true"),
        Reply::watch(vec![bookmark("v1", "Pod")], true),
    );
}

/// `remora-webhook serve --discovery on` with the CA on `ca`; stopped on drop.
fn start_control_plane(api: &RecordedApi, ca: SocketAddr, dir: &Path, name: &str) -> Proc {
    let bin = remora_e2e::admission::default_bin_dir().join("remora-webhook");
    assert!(bin.exists(), "{} is missing: build it first", bin.display());
    let d = dir.join(name);
    std::fs::create_dir_all(&d).unwrap();
    let web_cert = remora_e2e::admission::issue_serving_cert("discovery webhook").unwrap();
    std::fs::write(d.join("tls.crt"), &web_cert.cert_pem).unwrap();
    std::fs::write(d.join("tls.key"), &web_cert.key_pem).unwrap();
    let web = SocketAddr::from(([127, 0, 0, 1], remora_e2e::ports::free_port()));
    let mut cmd = std::process::Command::new(&bin);
    cmd.arg("serve")
        .args(["--listen", &web.to_string(), "--ca-addr", &ca.to_string()])
        .arg("--tls-cert")
        .arg(d.join("tls.crt"))
        .arg("--tls-key")
        .arg(d.join("tls.key"))
        .arg("--config")
        // Absent (the defaults) unless the test wrote it.
        .arg(d.join("config.yaml"))
        .args(["--kube-url", &api.url(), "--discovery", "on"])
        .env_remove("POD_NAMESPACE")
        .env("REMORA_LOG", "info");
    for (k, _) in std::env::vars() {
        if k.starts_with("REMORA_") {
            cmd.env_remove(k);
        }
    }
    Proc::spawn(name, cmd, d.join("webhook.log")).unwrap()
}

/// The recorded API with the CA's answers and `cluster`, a control plane that stored its root,
/// the root, and a directory holding it as `root.pem`.
async fn control_plane(
    cluster: impl FnOnce(&RecordedApi),
) -> (RecordedApi, Proc, SocketAddr, String, tempfile::TempDir) {
    control_plane_configured("", cluster).await
}

/// [`control_plane`] with its injector config file holding `config` (none when empty).
async fn control_plane_configured(
    config: &str,
    cluster: impl FnOnce(&RecordedApi),
) -> (RecordedApi, Proc, SocketAddr, String, tempfile::TempDir) {
    remora_webhook::tls::install_provider();
    let api = RecordedApi::start().await.unwrap();
    api.load(&fixture("tokenreviews.json")).unwrap();
    api.load(&fixture("root-publication.json")).unwrap();
    api.load(&fixture("secrets-absent.json")).unwrap();
    api.on("POST", SECRETS, Reply::json(201, secret_body(&[], "90100")));
    // A second process loses the create race and reads the first one's root.
    api.on(
        "POST",
        SECRETS,
        Reply::status(409, "AlreadyExists", "secrets \"remora-ca\" already exists"),
    );
    cluster(&api);
    let dir = tempfile::tempdir().unwrap();
    if !config.is_empty() {
        let d = dir.path().join("control-plane");
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("config.yaml"), config).unwrap();
    }
    let ca = SocketAddr::from(([127, 0, 0, 1], remora_e2e::ports::free_port()));
    let mut cp = start_control_plane(&api, ca, dir.path(), "control-plane");
    let t = Instant::now();
    while posts_to(&api, SECRETS).is_empty() {
        assert!(cp.exited().is_none(), "exited:\n{}", cp.log_tail(30));
        assert!(t.elapsed() < PATIENCE, "no root:\n{}", cp.log_tail(30));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let posted = &posts_to(&api, SECRETS)[0]["data"];
    let root = unb64(&posted["root-cert.pem"]);
    let data = [
        ("ca-cert.pem", unb64(&posted["ca-cert.pem"])),
        ("ca-key.pem", unb64(&posted["ca-key.pem"])),
        ("root-cert.pem", root.clone()),
    ];
    api.on(
        "GET",
        ROOT_SECRET,
        Reply::json(200, secret_body(&data, "90101")),
    );
    std::fs::write(dir.path().join("root.pem"), &root).unwrap();
    (api, cp, ca, root, dir)
}

/// An HTTP/1.1 server on 127.0.0.1 answering `body` to every request (until the test ends).
fn backend(body: &'static str) -> SocketAddr {
    use std::io::{Read, Write};
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
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
fn get(addr: SocketAddr, host: &str, path: &str) -> std::io::Result<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
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

async fn aget(addr: SocketAddr, host: &'static str, path: &'static str) -> (u16, String) {
    tokio::task::spawn_blocking(move || get(addr, host, path).unwrap_or((0, String::new())))
        .await
        .unwrap()
}

async fn config_dump(admin: SocketAddr) -> Value {
    let (code, body) = aget(admin, "localhost", "/config_dump").await;
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

const VS: &str = "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: default}
spec:
  hosts: [reviews]
  http:
  - route:
    - destination: {host: reviews}
";

struct Sidecar {
    proc: Proc,
    outbound: SocketAddr,
    admin: SocketAddr,
    health: SocketAddr,
    prometheus: SocketAddr,
}

/// `remora-proxy run` in namespace `default` as service account `httpbin` (token
/// `tok-httpbin`), no Kubernetes API, discovery from `ca`; its outbound capture fixed on
/// `original_dst`.
fn start_proxy(dir: &Path, ca: SocketAddr, original_dst: SocketAddr, identity: bool) -> Sidecar {
    let bin = remora_e2e::admission::default_bin_dir().join("remora-proxy");
    assert!(bin.exists(), "{} is missing: build it first", bin.display());
    let d = dir.join("proxy");
    std::fs::create_dir_all(d.join("rules")).unwrap();
    std::fs::write(d.join("rules/reviews.yaml"), VS).unwrap();
    std::fs::write(d.join("token"), "tok-httpbin").unwrap();
    let p = remora_e2e::ports::free_ports(5);
    let a = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));
    let mut cmd = std::process::Command::new(&bin);
    cmd.arg("run")
        .arg(format!("--outbound-addr={}", a(p[0])))
        .arg(format!("--inbound-addr={}", a(p[1])))
        .arg(format!("--admin-addr={}", a(p[2])))
        .arg(format!("--health-addr={}", a(p[3])))
        .arg(format!("--prometheus-addr={}", a(p[4])))
        .arg(format!("--rules-dir={}", d.join("rules").display()))
        .args(["--rules-rescan-seconds=1", "--ipv6=off", "--kube-api=off"])
        .args(["--access-log=off", "--inbound-source-fallback"])
        .arg("--pod-labels-file=/nonexistent/remora-test-labels")
        .args(["--namespace=default", "--workload-name=httpbin"])
        .arg(format!("--fixed-outbound-target={original_dst}"))
        .arg(format!("--discovery-address={ca}"))
        .arg(format!("--discovery-server-name={CA_NAME}"))
        .arg(format!("--ca-root-file={}", dir.join("root.pem").display()))
        .arg(format!("--ca-token-file={}", d.join("token").display()))
        .args(if identity {
            vec![
                format!("--ca-address={ca}"),
                format!("--ca-server-name={CA_NAME}"),
            ]
        } else {
            vec![]
        })
        .env("SERVICE_ACCOUNT", "httpbin")
        .env("POD_NAME", "httpbin-7d9c5b8f6-x2k4q")
        .env_remove("KUBERNETES_SERVICE_HOST");
    for (k, _) in std::env::vars() {
        if k.starts_with("REMORA_") || k == "POD_NAMESPACE" {
            cmd.env_remove(k);
        }
    }
    Sidecar {
        proc: Proc::spawn("proxy", cmd, d.join("proxy.log")).unwrap(),
        outbound: a(p[0]),
        admin: a(p[2]),
        health: a(p[3]),
        prometheus: a(p[4]),
    }
}

/// Waits (bounded) until a request for `reviews` through the proxy answers `want`; the time.
async fn routed_to(sc: &mut Sidecar, want: &str) -> Duration {
    let t = Instant::now();
    loop {
        let (code, body) = aget(sc.outbound, "reviews", "/x").await;
        if code == 200 && body == want {
            return t.elapsed();
        }
        assert!(sc.proc.exited().is_none(), "{}", sc.proc.log_tail(30));
        assert!(
            t.elapsed() < PATIENCE,
            "never routed to {want}: last {code} {body:?}\n{}",
            sc.proc.log_tail(30)
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_routes_from_the_control_plane_follows_deltas_and_a_relist_and_survives_its_restart(
) {
    let a = backend("pod-a");
    let b = backend("pod-b");
    // The Service's ClusterIP:port: nothing listens there, so only discovery can route.
    let nowhere = SocketAddr::from(([127, 0, 0, 1], remora_e2e::ports::free_port()));
    let (api, cp, ca, _root, dir) = control_plane(|api| {
        serve_cluster(
            api,
            vec![
                service("default", "reviews", nowhere.port()),
                service("books", "ratings", 9080),
            ],
            vec![
                slice("default", "reviews", a, "401"),
                slice("books", "ratings", b, "401"),
            ],
            vec![pod("default", "reviews-pod")],
        )
    })
    .await;
    let mut cp = Some(cp);
    // With a workload identity: its certificate from the same CA.
    let mut sc = start_proxy(dir.path(), ca, nowhere, true);

    // The snapshot: routed to the endpoint only the control plane knows.
    routed_to(&mut sc, "pod-a").await;
    // Ready once it also holds its certificate.
    let t = Instant::now();
    loop {
        let (code, body) = aget(sc.health, "x", "/healthz/ready").await;
        if code == 200 {
            break;
        }
        assert!(t.elapsed() < PATIENCE, "never ready: {code} {body}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let dump = config_dump(sc.admin).await;
    let st = &dump["discovery"]["status"];
    assert_eq!(st["control_plane"]["state"], "synced", "{st:#}");
    assert_eq!(st["control_plane"]["address"], ca.to_string());
    assert_eq!(st["control_plane"]["snapshots"], 1);
    let v1 = st["control_plane"]["version_acked"].as_u64().unwrap();
    assert!(v1 > 0, "{st:#}");
    // Scoped to its namespaces (default, remora-system): books' slice never reached it.
    assert_eq!(st["slices"], 1, "{st:#}");
    assert_eq!(
        dump["discovery"]["hosts"],
        json!(["reviews.default.svc.cluster.local"])
    );
    // The proxy asked no API server for anything: it has none.

    // A delta: the slice now names pod b.
    let t = Instant::now();
    while api.open_watches(SLICES) == 0 {
        assert!(t.elapsed() < PATIENCE, "the control plane's slice watch");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let sent = Instant::now();
    assert_eq!(
        api.emit(
            SLICES,
            event("MODIFIED", slice("default", "reviews", b, "510"))
        ),
        1
    );
    routed_to(&mut sc, "pod-b").await;
    let took = sent.elapsed();
    println!("EndpointSlice change at the API → the proxy routes by it: {took:?}");
    assert!(took < Duration::from_secs(5), "{took:?}");
    let st = config_dump(sc.admin).await["discovery"]["status"].clone();
    assert!(st["control_plane"]["deltas"].as_u64() >= Some(1), "{st:#}");
    assert!(st["control_plane"]["version_acked"].as_u64() > Some(v1));

    // The watch expires (410): the control plane lists again, and what changed meanwhile
    // (the list still names pod a) reaches the proxy as a delta. The recorded API serves a
    // route's replies in order, the last repeating: the re-list gets the first list again, and
    // the list queued now (pod b) is the next one, the restarted control plane's.
    api.on(
        "GET",
        SLICES,
        Reply::json(
            200,
            list(
                "EndpointSliceList",
                "discovery.k8s.io/v1",
                vec![
                    slice("default", "reviews", b, "530"),
                    slice("books", "ratings", b, "401"),
                ],
            ),
        ),
    );
    let sent = Instant::now();
    assert_eq!(api.emit(SLICES, expired_event("510")), 1);
    routed_to(&mut sc, "pod-a").await;
    println!(
        "410 at the control plane → re-list → the proxy routes by it: {:?}",
        sent.elapsed()
    );
    let st = config_dump(sc.admin).await["discovery"]["status"].clone();
    assert_eq!(
        st["control_plane"]["snapshots"], 1,
        "a delta, not a new snapshot: {st:#}"
    );

    // The proxy holds its certificate (it was ready): from now on it subscribes with it.
    let reviews = posts_to(&api, TOKEN_REVIEWS).len();

    // The control plane goes away: the proxy keeps routing from the last state (pod a).
    if let Some(mut p) = cp.take() {
        p.stop(Duration::from_secs(5));
    }
    let mut failed = 0;
    let mut sent = 0;
    let t = Instant::now();
    loop {
        let (code, body) = aget(sc.outbound, "reviews", "/x").await;
        sent += 1;
        if (code, body.as_str()) != (200, "pod-a") {
            failed += 1;
        }
        let st = config_dump(sc.admin).await["discovery"]["status"].clone();
        if st["control_plane"]["state"] == "stale" && t.elapsed() > Duration::from_millis(500) {
            break;
        }
        assert!(t.elapsed() < PATIENCE, "never stale: {st:#}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Readiness holds: the proxy is serving.
    assert_eq!(aget(sc.health, "x", "/healthz/ready").await.0, 200);

    // Back on the same address: the proxy resubscribes and gets the new state.
    let cp2 = start_control_plane(&api, ca, dir.path(), "control-plane-2");
    let t = Instant::now();
    loop {
        let (code, body) = aget(sc.outbound, "reviews", "/x").await;
        sent += 1;
        match (code, body.as_str()) {
            (200, "pod-b") => break,
            (200, "pod-a") => {}
            _ => failed += 1,
        }
        assert!(
            t.elapsed() < PATIENCE,
            "never resynced:\n{}\ncontrol plane:\n{}",
            sc.proc.log_tail(30),
            cp2.log_tail(30)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!(
        "control-plane restart: {sent} requests, {failed} failed, resynced {:?} after the new process started",
        t.elapsed()
    );
    assert_eq!(failed, 0, "requests failed across the restart");
    let st = config_dump(sc.admin).await["discovery"]["status"].clone();
    assert_eq!(st["control_plane"]["state"], "synced", "{st:#}");
    assert!(
        st["control_plane"]["connects"].as_u64() >= Some(2),
        "{st:#}"
    );
    assert!(
        st["control_plane"]["snapshots"].as_u64() >= Some(2),
        "{st:#}"
    );
    // It came back with its certificate: no TokenReview for it.
    assert_eq!(
        posts_to(&api, TOKEN_REVIEWS).len(),
        reviews,
        "the resubscription used the workload certificate"
    );
    assert!(
        cp2.log_tail(200)
            .contains("default/httpbin pod httpbin-7d9c5b8f6-x2k4q"),
        "{}",
        cp2.log_tail(30)
    );
}

/// A tonic client of the discovery service trusting `root`.
async fn client(addr: SocketAddr, root: &str) -> tonic::client::Grpc<tonic::transport::Channel> {
    client_with(addr, root, None).await
}

/// A client certificate: the chain (PEM, leaf first) and its key.
type ClientAuth = (Vec<String>, rcgen::KeyPair);

/// `client`, presenting `auth` as its TLS client certificate.
async fn client_with(
    addr: SocketAddr,
    root: &str,
    auth: Option<&ClientAuth>,
) -> tonic::client::Grpc<tonic::transport::Channel> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(root.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots);
    let mut tls = match auth {
        Some((chain, key)) => {
            let certs: Vec<CertificateDer<'static>> = chain
                .iter()
                .flat_map(|p| CertificateDer::pem_slice_iter(p.as_bytes()))
                .map(|c| c.unwrap())
                .collect();
            let key = rustls_pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
            builder.with_client_auth_cert(certs, key).unwrap()
        }
        None => builder.with_no_client_auth(),
    };
    tls.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(tls));
    let service = tower::service_fn(move |_: http::Uri| {
        let connector = connector.clone();
        async move {
            let tcp = tokio::net::TcpStream::connect(addr).await?;
            let name = rustls_pki_types::ServerName::try_from(CA_NAME).unwrap();
            let tls = connector.connect(name, tcp).await?;
            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tls))
        }
    });
    let t = Instant::now();
    loop {
        match tonic::transport::Endpoint::from_static("http://remora-ca.remora-system.svc:15012")
            .connect_with_connector(service.clone())
            .await
        {
            Ok(ch) => return tonic::client::Grpc::new(ch),
            Err(e) => {
                assert!(t.elapsed() < PATIENCE, "no connection: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Subscribe with `token` claiming `ns`/`sa` for `namespaces`: the first response or the status.
async fn subscribe(
    grpc: &mut tonic::client::Grpc<tonic::transport::Channel>,
    token: Option<&str>,
    ns: &str,
    sa: &str,
    namespaces: &[&str],
) -> Result<DiscoveryResponse, tonic::Status> {
    let first = SubscribeRequest {
        namespace: ns.into(),
        service_account: sa.into(),
        pod_name: String::new(),
        namespaces: namespaces.iter().map(|s| s.to_string()).collect(),
        ack_version: 0,
    };
    // The request stream stays open (the subscription lives as long as it does).
    let outbound = futures::stream::once(async move { first }).chain(futures::stream::pending());
    let mut req = tonic::Request::new(outbound);
    if let Some(t) = token {
        req.metadata_mut()
            .insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    grpc.ready().await.unwrap();
    let codec = tonic_prost::ProstCodec::<SubscribeRequest, DiscoveryResponse>::default();
    let mut stream = grpc
        .streaming(req, http::uri::PathAndQuery::from_static(SUBSCRIBE), codec)
        .await?
        .into_inner();
    let first = tokio::time::timeout(PATIENCE, stream.message())
        .await
        .expect("an answer");
    first?.ok_or_else(|| tonic::Status::unknown("stream ended"))
}

use futures::StreamExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_are_scoped_by_namespace_and_a_forged_identity_is_refused() {
    let a = SocketAddr::from(([127, 0, 0, 1], 18080));
    let (_api, mut cp, ca, root, dir) = control_plane(|api| {
        serve_cluster(
            api,
            vec![
                service("default", "reviews", 9080),
                service("books", "ratings", 9080),
                // Istio's exportTo: books' own; not for default's proxies.
                {
                    let mut s = service("books", "private", 9080);
                    s["metadata"]["annotations"] = json!({"networking.istio.io/exportTo": "."});
                    s
                },
            ],
            vec![
                slice("default", "reviews", a, "401"),
                slice("books", "ratings", a, "401"),
                slice("books", "private", a, "401"),
            ],
            vec![pod("default", "reviews-pod"), pod("books", "ratings-pod")],
        )
    })
    .await;
    let mut grpc = client(ca, &root).await;

    let names = |r: &DiscoveryResponse| {
        let mut v: Vec<String> = r
            .services
            .iter()
            .map(|s| format!("svc {}/{}", s.namespace, s.name))
            .chain(
                r.endpoint_slices
                    .iter()
                    .map(|s| format!("slice {}/{}", s.namespace, s.name)),
            )
            .chain(
                r.pods
                    .iter()
                    .map(|p| format!("pod {}/{} {}", p.namespace, p.name, p.workload)),
            )
            .collect();
        v.sort();
        v
    };
    let own = subscribe(
        &mut grpc,
        Some("tok-httpbin"),
        "default",
        "httpbin",
        &["default"],
    )
    .await
    .unwrap();
    assert!(own.full && own.version > 0);
    // The pod's service account reaches subscribers; nothing else of its spec does.
    assert_eq!(own.pods[0].service_account, "default");
    assert!(!String::from_utf8_lossy(&prost::Message::encode_to_vec(&own)).contains("s3cr3t"));
    assert_eq!(
        names(&own),
        [
            "pod default/reviews-pod reviews-pod",
            "slice default/reviews-1",
            "svc default/reviews"
        ]
    );
    let all = subscribe(&mut grpc, Some("tok-httpbin"), "default", "httpbin", &[])
        .await
        .unwrap();
    assert_eq!(
        names(&all),
        [
            "pod books/ratings-pod ratings-pod",
            "pod default/reviews-pod reviews-pod",
            "slice books/ratings-1",
            "slice default/reviews-1",
            "svc books/ratings",
            "svc default/reviews"
        ],
        "books/private is exported to books only"
    );

    // A token for default/httpbin claiming another namespace's identity.
    let forged = subscribe(&mut grpc, Some("tok-httpbin"), "books", "httpbin", &[])
        .await
        .unwrap_err();
    assert_eq!(forged.code(), tonic::Code::PermissionDenied, "{forged:?}");
    assert!(
        forged
            .message()
            .contains("claims books/httpbin (pod \"\") but its token is for default/httpbin"),
        "{}",
        forged.message()
    );
    let none = subscribe(&mut grpc, None, "default", "httpbin", &[])
        .await
        .unwrap_err();
    assert_eq!(none.code(), tonic::Code::Unauthenticated, "{none:?}");
    let bad = subscribe(
        &mut grpc,
        Some("tok-httpbin"),
        "default",
        "httpbin",
        &["Not_A_NS"],
    )
    .await
    .unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument, "{bad:?}");

    // A proxy whose control plane does not answer is not ready, and says why.
    let unused = SocketAddr::from(([127, 0, 0, 1], remora_e2e::ports::free_port()));
    let nowhere = SocketAddr::from(([127, 0, 0, 1], remora_e2e::ports::free_port()));
    let mut sc = start_proxy(dir.path(), unused, nowhere, false);
    let t = Instant::now();
    let (code, body) = loop {
        let (code, body) = aget(sc.health, "x", "/healthz/ready").await;
        if code != 0 {
            break (code, body);
        }
        assert!(sc.proc.exited().is_none(), "{}", sc.proc.log_tail(30));
        assert!(t.elapsed() < PATIENCE, "no readiness answer");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("discovery not synced"), "{body}");
    let t = Instant::now();
    loop {
        let st = config_dump(sc.admin).await["discovery"]["status"]["control_plane"].clone();
        if st["last_error"].is_string() {
            assert_eq!(st["state"], "connecting", "{st:#}");
            assert_eq!(st["version_acked"], 0, "{st:#}");
            break;
        }
        assert!(t.elapsed() < PATIENCE, "no error recorded: {st:#}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // One log line names who asked.
    cp.stop(Duration::from_secs(5));
    let log = std::fs::read_to_string(&cp.log).unwrap();
    let refusals: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("discovery subscription refused"))
        .collect();
    assert_eq!(refusals.len(), 3, "{log}");
    assert!(
        refusals.iter().any(|l| l.contains("identity_mismatch")
            && l.contains("books/httpbin")
            && l.contains("default/httpbin")),
        "{refusals:#?}"
    );
}

/// Many subscribers at once, with one token (one TokenReview for all of them): every one gets
/// its snapshot, then each EndpointSlice change
/// reaches all of them; the time from the API event to each subscriber holding the change is
/// measured (p50, p99, max) and must stay under a generous bound on a loaded machine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_reaches_every_one_of_many_subscribers() {
    const CONNECTIONS: usize = 20;
    const PER_CONNECTION: usize = 10;
    const CHANGES: usize = 10;
    let a = SocketAddr::from(([127, 0, 0, 1], 18080));
    let (api, mut cp, ca, root, _dir) = control_plane(|api| {
        serve_cluster(
            api,
            vec![service("default", "reviews", 9080)],
            vec![slice("default", "reviews", a, "401")],
            vec![],
        )
    })
    .await;
    // Each subscriber's stream, read by its own task: (change number, when it arrived).
    let (tx, mut rx) = tokio::sync::mpsc::channel::<(usize, usize, Instant)>(4096);
    let mut tasks = Vec::new();
    for c in 0..CONNECTIONS {
        let grpc = client(ca, &root).await;
        for s in 0..PER_CONNECTION {
            let mut grpc = grpc.clone();
            let tx = tx.clone();
            let id = c * PER_CONNECTION + s;
            tasks.push(tokio::spawn(async move {
                let first = SubscribeRequest {
                    namespace: "default".into(),
                    service_account: "httpbin".into(),
                    namespaces: vec!["default".into()],
                    ..Default::default()
                };
                let outbound =
                    futures::stream::once(async move { first }).chain(futures::stream::pending());
                let mut req = tonic::Request::new(outbound);
                req.metadata_mut()
                    .insert("authorization", "Bearer tok-httpbin".parse().unwrap());
                grpc.ready().await.unwrap();
                let codec =
                    tonic_prost::ProstCodec::<SubscribeRequest, DiscoveryResponse>::default();
                let mut stream = grpc
                    .streaming(req, http::uri::PathAndQuery::from_static(SUBSCRIBE), codec)
                    .await
                    .unwrap()
                    .into_inner();
                while let Ok(Some(m)) = stream.message().await {
                    let now = Instant::now();
                    // The change number is the slice's port (first: the snapshot).
                    let n = m
                        .endpoint_slices
                        .first()
                        .and_then(|s| s.ports.first())
                        .map_or(0, |p| p.port as usize);
                    if tx.send((id, n, now)).await.is_err() {
                        return;
                    }
                }
            }));
        }
    }
    drop(tx);
    let total = CONNECTIONS * PER_CONNECTION;
    // Every snapshot in.
    let t = Instant::now();
    let mut snapshots = std::collections::HashSet::new();
    while snapshots.len() < total {
        let (id, n, _) = tokio::time::timeout(PATIENCE, rx.recv())
            .await
            .expect("snapshots")
            .unwrap();
        assert_eq!(n, 18080, "the snapshot's port");
        snapshots.insert(id);
    }
    println!(
        "{total} subscribers hold their snapshot after {:?}",
        t.elapsed()
    );
    // They all came at once with one token: the API server saw one TokenReview.
    assert_eq!(
        posts_to(&api, TOKEN_REVIEWS).len(),
        1,
        "{total} subscribers with one token: one TokenReview"
    );
    let mut delays = Vec::new();
    for i in 1..=CHANGES {
        let port = 20000 + i as u16;
        let sent = Instant::now();
        assert_eq!(
            api.emit(
                SLICES,
                event(
                    "MODIFIED",
                    slice(
                        "default",
                        "reviews",
                        SocketAddr::from(([127, 0, 0, 1], port)),
                        &format!("{}", 600 + i)
                    )
                )
            ),
            1
        );
        let mut got = std::collections::HashSet::new();
        while got.len() < total {
            let (id, n, at) = tokio::time::timeout(PATIENCE, rx.recv())
                .await
                .expect("the change at every subscriber")
                .unwrap();
            if n == port as usize {
                got.insert(id);
                delays.push(at - sent);
            }
        }
    }
    delays.sort();
    let p = |q: f64| delays[((delays.len() as f64 * q) as usize).min(delays.len() - 1)];
    println!(
        "{CHANGES} EndpointSlice changes × {total} subscribers: p50 {:?}, p99 {:?}, max {:?}",
        p(0.5),
        p(0.99),
        delays[delays.len() - 1]
    );
    assert!(p(0.99) < Duration::from_secs(5), "p99 {:?}", p(0.99));
    for t in tasks {
        t.abort();
    }
    cp.stop(Duration::from_secs(5));
    let log = std::fs::read_to_string(&cp.log).unwrap();
    assert!(
        !log.contains("too slow"),
        "no subscriber was dropped as too slow"
    );
}

/// A certificate from the control plane's own CA for `id` (asked with `token`).
async fn issued(ca: SocketAddr, root: &str, token: &str, id: &str) -> ClientAuth {
    use remora_webhook::ca::grpc::{
        IstioCertificateRequest, IstioCertificateResponse, CREATE_CERTIFICATE,
    };
    let key = rcgen::KeyPair::generate().unwrap();
    let mut p = rcgen::CertificateParams::default();
    p.distinguished_name = rcgen::DistinguishedName::new();
    p.subject_alt_names = vec![rcgen::SanType::URI(id.to_string().try_into().unwrap())];
    let csr = p.serialize_request(&key).unwrap().pem().unwrap();
    let mut grpc = client(ca, root).await;
    let mut req = tonic::Request::new(IstioCertificateRequest {
        csr,
        validity_duration: 3600,
        metadata: None,
    });
    req.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    grpc.ready().await.unwrap();
    let codec =
        tonic_prost::ProstCodec::<IstioCertificateRequest, IstioCertificateResponse>::default();
    let chain = grpc
        .unary(
            req,
            http::uri::PathAndQuery::from_static(CREATE_CERTIFICATE),
            codec,
        )
        .await
        .unwrap()
        .into_inner()
        .cert_chain;
    (chain, key)
}

/// A subscriber presenting its workload certificate (issued by the real CA) is authenticated by
/// it, without a TokenReview; one claiming another identity than its certificate's is refused
/// PERMISSION_DENIED with one log line naming who asked; a certificate of another CA is refused
/// at the handshake; without a certificate the token still works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workload_certificate_authenticates_a_subscriber_and_a_forged_one_is_refused() {
    let a = SocketAddr::from(([127, 0, 0, 1], 18080));
    let (api, mut cp, ca, root, _dir) = control_plane(|api| {
        serve_cluster(
            api,
            vec![service("default", "reviews", 9080)],
            vec![slice("default", "reviews", a, "401")],
            vec![],
        )
    })
    .await;
    let own = issued(
        ca,
        &root,
        "tok-httpbin",
        "spiffe://cluster.local/ns/default/sa/httpbin",
    )
    .await;
    let reviews_before = posts_to(&api, TOKEN_REVIEWS).len();
    assert_eq!(reviews_before, 1, "the certificate's TokenReview");

    let mut grpc = client_with(ca, &root, Some(&own)).await;
    let snap = subscribe(&mut grpc, None, "default", "httpbin", &["default"])
        .await
        .unwrap();
    assert!(snap.full);
    assert_eq!(snap.services.len(), 1);
    assert_eq!(
        posts_to(&api, TOKEN_REVIEWS).len(),
        reviews_before,
        "no TokenReview for a subscriber with a certificate"
    );
    // The certificate wins over a token for another identity.
    let mismatch = subscribe(&mut grpc, Some("tok-httpbin"), "books", "httpbin", &[])
        .await
        .unwrap_err();
    assert_eq!(
        mismatch.code(),
        tonic::Code::PermissionDenied,
        "{mismatch:?}"
    );
    assert!(
        mismatch
            .message()
            .contains("claims books/httpbin (pod \"\") but its certificate is for default/httpbin"),
        "{}",
        mismatch.message()
    );

    // A certificate for the same SPIFFE id from a CA of our own: the handshake fails.
    let forger = rcgen::KeyPair::generate().unwrap();
    let mut cp_params = rcgen::CertificateParams::default();
    cp_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let forger_ca = cp_params.self_signed(&forger).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let mut leaf = rcgen::CertificateParams::default();
    leaf.subject_alt_names = vec![rcgen::SanType::URI(
        "spiffe://cluster.local/ns/default/sa/httpbin"
            .to_string()
            .try_into()
            .unwrap(),
    )];
    let forged_cert = leaf.signed_by(&key, &forger_ca, &forger).unwrap();
    let forged: ClientAuth = (vec![forged_cert.pem()], key);
    // The server refuses the certificate after the client's side of the handshake completes
    // (TLS 1.3): the connection, or the call on it, fails.
    let r = tokio::time::timeout(PATIENCE, async {
        let mut g = client_with_once(ca, &root, &forged).await?;
        subscribe(&mut g, None, "default", "httpbin", &[])
            .await
            .map_err(|s| s.to_string())
    })
    .await
    .expect("an answer");
    let e = r.expect_err("a forged certificate was refused");
    println!("forged certificate: {e}");

    // Without a certificate, the token still authenticates.
    let mut plain = client(ca, &root).await;
    subscribe(&mut plain, Some("tok-httpbin"), "default", "httpbin", &[])
        .await
        .unwrap();

    cp.stop(Duration::from_secs(5));
    let log = std::fs::read_to_string(&cp.log).unwrap();
    let refusals: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("discovery subscription refused"))
        .collect();
    assert_eq!(refusals.len(), 1, "{refusals:#?}");
    assert!(
        refusals[0].contains("identity_mismatch")
            && refusals[0].contains("books/httpbin")
            && refusals[0].contains("default/httpbin"),
        "{refusals:#?}"
    );
}

/// One connection attempt presenting `auth` (no retries): the error as text.
async fn client_with_once(
    addr: SocketAddr,
    root: &str,
    auth: &ClientAuth,
) -> Result<tonic::client::Grpc<tonic::transport::Channel>, String> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(root.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let certs: Vec<CertificateDer<'static>> = auth
        .0
        .iter()
        .flat_map(|p| CertificateDer::pem_slice_iter(p.as_bytes()))
        .map(|c| c.unwrap())
        .collect();
    let key = rustls_pki_types::PrivateKeyDer::Pkcs8(auth.1.serialize_der().into());
    let mut tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_client_auth_cert(certs, key)
    .unwrap();
    tls.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(tls));
    let service = tower::service_fn(move |_: http::Uri| {
        let connector = connector.clone();
        async move {
            let tcp = tokio::net::TcpStream::connect(addr).await?;
            let name = rustls_pki_types::ServerName::try_from(CA_NAME).unwrap();
            let tls = connector.connect(name, tcp).await?;
            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tls))
        }
    });
    tonic::transport::Endpoint::from_static("http://remora-ca.remora-system.svc:15012")
        .connect_with_connector(service)
        .await
        .map(tonic::client::Grpc::new)
        .map_err(|e| e.to_string())
}

/// A stand-in for a server sidecar on `ip:port` (a loopback address of its own, so that
/// discovery tells its pod apart by address): mutual TLS with `auth` (a certificate of the real
/// CA), a client certificate from `root` required, Istio's ALPN values; every HTTP/1.1 request
/// is answered 200 `body`.
async fn mtls_server_on(
    ip: [u8; 4],
    port: u16,
    root: &str,
    auth: ClientAuth,
    body: &'static str,
) -> SocketAddr {
    let (chain, key) = auth;
    let certs: Vec<CertificateDer<'static>> = chain
        .iter()
        .flat_map(|p| CertificateDer::pem_slice_iter(p.as_bytes()))
        .map(|c| c.unwrap())
        .collect();
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(root.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .unwrap();
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            certs,
            rustls_pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .unwrap();
    cfg.alpn_protocols = vec![b"istio-http/1.1".to_vec(), b"istio".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let listener = tokio::net::TcpListener::bind(SocketAddr::from((ip, port)))
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let service = hyper::service::service_fn(move |_req| async move {
                    Ok::<_, std::convert::Infallible>(http::Response::new(
                        http_body_util::Full::new(bytes::Bytes::from(body)),
                    ))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    addr
}

/// The control plane sends each endpoint's service account (the pod's
/// `spec.serviceAccountName`), and the client sidecar's mutual TLS checks the server's SPIFFE id
/// against it: two Services of namespace `default` whose servers both present the real CA's
/// certificate for `default/httpbin`; `reviews`' pod runs as `httpbin` and is reached, `ratings`'
/// pod runs as `ratings` and is refused (503, a warn line and
/// `remora_mtls_failures_total{reason="server_service_account"}` naming why).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_presenting_another_service_account_is_refused() {
    const MESHED: (&str, &str) = ("security.istio.io/tlsMode", "istio");
    // Known before the servers exist: their ports are picked now, on addresses of their own.
    let (reviews_port, ratings_port) = (
        remora_e2e::ports::free_port(),
        remora_e2e::ports::free_port(),
    );
    let reviews_at = SocketAddr::from(([127, 0, 0, 2], reviews_port));
    let ratings_at = SocketAddr::from(([127, 0, 0, 3], ratings_port));
    let nowhere = SocketAddr::from(([127, 0, 0, 1], remora_e2e::ports::free_port()));
    let (_api, mut cp, ca, root, dir) = control_plane(|api| {
        serve_cluster(
            api,
            vec![
                service("default", "reviews", nowhere.port()),
                service("default", "ratings", nowhere.port()),
            ],
            vec![
                slice("default", "reviews", reviews_at, "401"),
                slice("default", "ratings", ratings_at, "401"),
            ],
            vec![
                pod_as("default", "reviews-pod", "httpbin", &[MESHED]),
                pod_as("default", "ratings-pod", "ratings", &[MESHED]),
            ],
        )
    })
    .await;
    let id = "spiffe://cluster.local/ns/default/sa/httpbin";
    for (at, body) in [(reviews_at, "reviews"), (ratings_at, "ratings")] {
        let auth = issued(ca, &root, "tok-httpbin", id).await;
        let ip = match at.ip() {
            std::net::IpAddr::V4(v4) => v4.octets(),
            other => panic!("{other}"),
        };
        let bound = mtls_server_on(ip, at.port(), &root, auth, body).await;
        assert_eq!(bound, at);
    }
    let mut sc = start_proxy(dir.path(), ca, nowhere, true);
    let t = Instant::now();
    while aget(sc.health, "x", "/healthz/ready").await.0 != 200 {
        assert!(sc.proc.exited().is_none(), "{}", sc.proc.log_tail(30));
        assert!(
            t.elapsed() < PATIENCE,
            "never ready:\n{}",
            sc.proc.log_tail(30)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The right service account: reached over mutual TLS.
    routed_to(&mut sc, "reviews").await;
    let dump = config_dump(sc.admin).await;
    assert_eq!(
        dump["discovery"]["status"]["control_plane"]["state"],
        "synced"
    );

    // Another service account than the pod's: refused, every time.
    for _ in 0..3 {
        let (code, body) = aget(sc.outbound, "ratings", "/x").await;
        assert_eq!(code, 503, "{body}");
        assert_ne!(body, "ratings");
    }
    let (code, metrics) = aget(sc.prometheus, "x", "/stats/prometheus").await;
    assert_eq!(code, 200);
    let refused: f64 = metrics
        .lines()
        .filter(|l| {
            l.starts_with("remora_mtls_failures_total{")
                && l.contains(r#"direction="outbound""#)
                && l.contains(r#"reason="server_service_account""#)
        })
        .filter_map(|l| l.rsplit(" ").next()?.parse::<f64>().ok())
        .sum();
    assert!(refused >= 3.0, "{metrics}");
    assert!(
        !metrics
            .lines()
            .any(|l| l.starts_with("remora_mtls_failures_total{")
                && l.contains(r#"reason="handshake""#)),
        "the handshakes themselves succeeded: {metrics}"
    );
    let log = std::fs::read_to_string(&sc.proc.log).unwrap();
    let why = format!(
        "server {ratings_at} refused: {id} is not the service account of the endpoint's pod (default/ratings)"
    );
    assert!(
        log.lines().any(|l| l.contains("WARN")
            && l.contains("server_service_account")
            && l.contains(&why)),
        "{}",
        sc.proc.log_tail(30)
    );
    // The right one still passes after the refusals.
    assert_eq!(
        aget(sc.outbound, "reviews", "/x").await,
        (200, "reviews".into())
    );
    cp.stop(Duration::from_secs(5));
}

const SIDECARS: &str = "/apis/networking.istio.io/v1/sidecars";

fn sidecar_obj(
    ns: &str,
    name: &str,
    selector: Option<(&str, &str)>,
    hosts: &[&str],
    rv: &str,
) -> Value {
    let mut spec = json!({"egress": [{"hosts": hosts}]});
    if let Some((k, v)) = selector {
        spec["workloadSelector"] = json!({"labels": {k: v}});
    }
    json!({"apiVersion": "networking.istio.io/v1", "kind": "Sidecar",
        "metadata": {"name": name, "namespace": ns, "resourceVersion": rv,
                     "uid": format!("uid-{ns}-{name}")},
        "spec": spec})
}

/// The cluster's Sidecars (the group served at `networking.istio.io/v1`), then a held watch.
fn serve_sidecars(api: &RecordedApi, sidecars: Vec<Value>) {
    api.on(
        "GET",
        "/apis/networking.istio.io",
        Reply::json(
            200,
            json!({"kind": "APIGroup", "apiVersion": "v1", "name": "networking.istio.io",
                   "versions": [{"groupVersion": "networking.istio.io/v1", "version": "v1"}],
                   "preferredVersion": {"groupVersion": "networking.istio.io/v1", "version": "v1"}}),
        ),
    );
    api.on(
        "GET",
        SIDECARS,
        Reply::json(200, list("SidecarList", "networking.istio.io/v1", sidecars)),
    );
    api.on(
        "GET",
        &format!("{SIDECARS}?watch=true"),
        Reply::watch(vec![bookmark("networking.istio.io/v1", "Sidecar")], true),
    );
}

/// Subscribe as `default/httpbin` (its token, bound to pod `httpbin-7d9c5b8f6-x2k4q`) for every
/// namespace; the stream, kept open.
async fn open_subscription(
    grpc: &mut tonic::client::Grpc<tonic::transport::Channel>,
) -> tonic::Streaming<DiscoveryResponse> {
    let first = SubscribeRequest {
        namespace: "default".into(),
        service_account: "httpbin".into(),
        pod_name: "httpbin-7d9c5b8f6-x2k4q".into(),
        namespaces: vec![],
        ack_version: 0,
    };
    let outbound = futures::stream::once(async move { first }).chain(futures::stream::pending());
    let mut req = tonic::Request::new(outbound);
    req.metadata_mut()
        .insert("authorization", "Bearer tok-httpbin".parse().unwrap());
    grpc.ready().await.unwrap();
    let codec = tonic_prost::ProstCodec::<SubscribeRequest, DiscoveryResponse>::default();
    grpc.streaming(req, http::uri::PathAndQuery::from_static(SUBSCRIBE), codec)
        .await
        .unwrap()
        .into_inner()
}

async fn next_message(s: &mut tonic::Streaming<DiscoveryResponse>) -> DiscoveryResponse {
    tokio::time::timeout(PATIENCE, s.message())
        .await
        .expect("a message in time")
        .expect("no error")
        .expect("the stream goes on")
}

/// `svc ns/name`, `slice ns/name`, `-Kind ns/name` of a response, sorted (pods left out).
fn scope_names(r: &DiscoveryResponse) -> Vec<String> {
    let mut v: Vec<String> = r
        .services
        .iter()
        .map(|s| format!("svc {}/{}", s.namespace, s.name))
        .chain(
            r.endpoint_slices
                .iter()
                .map(|s| format!("slice {}/{}", s.namespace, s.name)),
        )
        .chain(
            r.removed
                .iter()
                .filter(|x| x.kind() != remora_model::discovery_api::Kind::Pod)
                .map(|x| format!("-{:?} {}/{}", x.kind(), x.namespace, x.name)),
        )
        .collect();
    v.sort();
    v
}

/// Sidecar egress scoping at the control plane: the real `remora-webhook serve --discovery on`
/// watches Sidecars too; a subscriber asking for every namespace gets only what the Sidecar
/// selecting its pod (by `workloadSelector`, over its namespace's default) admits, on top of
/// `exportTo`; editing that Sidecar widens the subscription live (a delta adding books), and
/// deleting it falls back to the namespace's default Sidecar (a delta removing books and adding
/// logs). Each step is timed from the API event to the subscriber holding it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sidecar_scopes_a_subscriber_and_an_edit_rescopes_it_live() {
    let a = SocketAddr::from(([127, 0, 0, 1], 18080));
    let (api, mut cp, ca, root, _dir) = control_plane(|api| {
        serve_cluster(
            api,
            vec![
                service("default", "reviews", 9080),
                service("books", "ratings", 9080),
                service("logs", "audit", 9080),
            ],
            vec![
                slice("default", "reviews", a, "401"),
                slice("books", "ratings", a, "401"),
                slice("logs", "audit", a, "401"),
            ],
            vec![
                pod_as(
                    "default",
                    "httpbin-7d9c5b8f6-x2k4q",
                    "httpbin",
                    &[("app", "httpbin")],
                ),
                pod("books", "ratings-pod"),
                pod("logs", "audit-pod"),
            ],
        );
        serve_sidecars(
            api,
            vec![
                sidecar_obj("default", "default", None, &["./*", "logs/*"], "700"),
                sidecar_obj(
                    "default",
                    "httpbin",
                    Some(("app", "httpbin")),
                    &["./*"],
                    "701",
                ),
            ],
        );
    })
    .await;
    let mut grpc = client(ca, &root).await;
    let mut stream = open_subscription(&mut grpc).await;
    let snap = next_message(&mut stream).await;
    assert!(snap.full);
    assert_eq!(
        scope_names(&snap),
        ["slice default/reviews-1", "svc default/reviews"],
        "the workload's own Sidecar (./*) wins over the namespace's default"
    );
    let pods: Vec<&str> = snap.pods.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(
        pods,
        ["httpbin-7d9c5b8f6-x2k4q"],
        "pods of admitted namespaces only"
    );

    let t = Instant::now();
    while api.open_watches(SIDECARS) == 0 {
        assert!(t.elapsed() < PATIENCE, "the control plane's Sidecar watch");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The workload's Sidecar now admits books too: books arrives as a delta.
    let sent = Instant::now();
    assert_eq!(
        api.emit(
            SIDECARS,
            event(
                "MODIFIED",
                sidecar_obj(
                    "default",
                    "httpbin",
                    Some(("app", "httpbin")),
                    &["./*", "books/*"],
                    "710"
                )
            )
        ),
        1
    );
    let d = next_message(&mut stream).await;
    println!(
        "Sidecar edit → the subscriber holds the wider scope: {:?}",
        sent.elapsed()
    );
    assert!(!d.full, "a delta, not a new snapshot");
    assert_eq!(
        scope_names(&d),
        ["slice books/ratings-1", "svc books/ratings"]
    );
    assert_eq!(d.pods.len(), 1, "books' pod");
    // A change in books now reaches it; one in logs does not.
    api.emit(
        SLICES,
        event(
            "MODIFIED",
            slice(
                "logs",
                "audit",
                SocketAddr::from(([127, 0, 0, 1], 18081)),
                "720",
            ),
        ),
    );
    api.emit(
        SLICES,
        event(
            "MODIFIED",
            slice(
                "books",
                "ratings",
                SocketAddr::from(([127, 0, 0, 1], 18082)),
                "721",
            ),
        ),
    );
    let d = next_message(&mut stream).await;
    assert_eq!(scope_names(&d), ["slice books/ratings-1"]);
    assert_eq!(d.endpoint_slices[0].ports[0].port, 18082);

    // The workload's Sidecar is deleted: the namespace's default applies (./*, logs/*).
    let sent = Instant::now();
    api.emit(
        SIDECARS,
        event(
            "DELETED",
            sidecar_obj(
                "default",
                "httpbin",
                Some(("app", "httpbin")),
                &["./*", "books/*"],
                "730",
            ),
        ),
    );
    let d = next_message(&mut stream).await;
    println!(
        "Sidecar deleted → the subscriber holds the default's scope: {:?}",
        sent.elapsed()
    );
    assert_eq!(
        scope_names(&d),
        [
            "-EndpointSlice books/ratings-1",
            "-Service books/ratings",
            "slice logs/audit-1",
            "svc logs/audit"
        ]
    );
    assert_eq!(
        d.endpoint_slices[0].ports[0].port, 18081,
        "logs' latest state"
    );
    cp.stop(Duration::from_secs(5));
    let log = std::fs::read_to_string(&cp.log).unwrap();
    assert!(
        log.contains("subscriber scoped again (its Sidecar changed)"),
        "{log}"
    );
}

/// The mesh's `defaultServiceExportTo` in the control plane's config file: a Service without
/// the `exportTo` annotation is exported as it says (here `.`: its own namespace only), one
/// with the annotation as the annotation says.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mesh_default_export_scopes_services_without_an_annotation() {
    let a = SocketAddr::from(([127, 0, 0, 1], 18080));
    let config = "mesh:\n  defaultServiceExportTo: [\".\"]\n";
    let (_api, mut cp, ca, root, _dir) = control_plane_configured(config, |api| {
        serve_cluster(
            api,
            vec![
                service("default", "reviews", 9080),
                service("books", "ratings", 9080),
                {
                    let mut s = service("books", "public", 9080);
                    s["metadata"]["annotations"] = json!({"networking.istio.io/exportTo": "*"});
                    s
                },
            ],
            vec![
                slice("default", "reviews", a, "401"),
                slice("books", "ratings", a, "401"),
                slice("books", "public", a, "401"),
            ],
            vec![],
        )
    })
    .await;
    let mut grpc = client(ca, &root).await;
    let all = subscribe(&mut grpc, Some("tok-httpbin"), "default", "httpbin", &[])
        .await
        .unwrap();
    let mut names: Vec<String> = all
        .services
        .iter()
        .map(|s| format!("{}/{}", s.namespace, s.name))
        .chain(
            all.endpoint_slices
                .iter()
                .map(|s| format!("slice {}/{}", s.namespace, s.name)),
        )
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "books/public",
            "default/reviews",
            "slice books/public-1",
            "slice default/reviews-1"
        ],
        "books/ratings has no annotation: exported to books only"
    );
    assert!(
        cp.log_tail(200).contains("mesh.defaultServiceExportTo"),
        "{}",
        cp.log_tail(30)
    );
    cp.stop(Duration::from_secs(5));
}
