//! The gateway's `credentialName` Secrets read through the API (`remora-proxy gateway
//! --gateway-credentials-source api`), against the recorded API: the real gateway binary lists
//! and watches the Secrets of its own namespace only, serves the certificate of a Secret that
//! exists at start, the new one after a MODIFIED event, a Secret ADDED later, and takes a server
//! down when its Secret is DELETED (handshakes by a real rustls client, the metric); a Secret
//! without TLS material is never written. And the gateway's rules ConfigMap through the API, an
//! AuthorizationPolicy selecting the gateway among them.

use remora_e2e::admission::default_bin_dir;
use remora_e2e::apiserver::{event, RecordedApi, Reply};
use remora_e2e::ports::free_ports;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

const NS: &str = "istio-system";
const SECRETS: &str = "/api/v1/namespaces/istio-system/secrets";
const PATIENCE: Duration = Duration::from_secs(30);

fn cert(name: &str) -> (String, String) {
    let c = rcgen::generate_simple_self_signed(vec![name.to_string()]).unwrap();
    (c.cert.pem(), c.key_pair.serialize_pem())
}

fn b64(s: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(s)
}

fn secret(name: &str, rv: &str, data: &[(&str, &str)]) -> Value {
    let data: serde_json::Map<String, Value> = data
        .iter()
        .map(|(k, v)| (k.to_string(), json!(b64(v))))
        .collect();
    json!({"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
           "metadata": {"name": name, "namespace": NS, "resourceVersion": rv, "uid": format!("uid-{name}")},
           "data": data})
}

/// The DER of the certificate the gateway shows for `sni`, or why the handshake failed.
fn shown(addr: SocketAddr, sni: &str, roots: &str) -> Result<Vec<u8>, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    use std::io::Write;
    let mut store = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(roots.as_bytes()) {
        store.add(c.unwrap()).unwrap();
    }
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(store)
    .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from(sni.to_string()).unwrap();
    let mut conn = rustls::ClientConnection::new(Arc::new(cfg), name).unwrap();
    let mut sock = std::net::TcpStream::connect(addr).map_err(|e| e.to_string())?;
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut tls = rustls::Stream::new(&mut conn, &mut sock);
    tls.write_all(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .map_err(|e| format!("handshake: {e}"))?;
    Ok(conn.peer_certificates().ok_or("no certificate")?[0]
        .as_ref()
        .to_vec())
}

fn der(pem: &str) -> Vec<u8> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes())
        .unwrap()
        .as_ref()
        .to_vec()
}

struct Gateway {
    child: Child,
    log: std::path::PathBuf,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Gateway {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `remora-proxy gateway` in namespace NS with the gateway's pod labels, the rules in
    /// `dir/rules`, admin/health/metrics on `ports[0..3]`, the API at `api_url`, discovery off,
    /// plus `extra` arguments; its log in `dir/gateway.log`.
    fn start(dir: &std::path::Path, ports: &[u16], api_url: &str, extra: &[String]) -> Gateway {
        let rules = dir.join("rules");
        std::fs::create_dir_all(&rules).unwrap();
        let labels = dir.join("labels");
        std::fs::write(&labels, "istio=\"ingressgateway\"\n").unwrap();
        let log = dir.join("gateway.log");
        let out = std::fs::File::create(&log).unwrap();
        let mut cmd = Command::new(default_bin_dir().join("remora-proxy"));
        cmd.args([
            "gateway".to_string(),
            format!("--admin-addr=127.0.0.1:{}", ports[0]),
            format!("--health-addr=127.0.0.1:{}", ports[1]),
            format!("--prometheus-addr=127.0.0.1:{}", ports[2]),
            format!("--rules-dir={}", rules.display()),
            format!("--pod-labels-file={}", labels.display()),
            format!("--namespace={NS}"),
            "--drain-seconds=1".into(),
            format!("--kube-api={api_url}"),
            "--discovery=off".into(),
            "--gateway-address=127.0.0.1".into(),
        ])
        .args(extra)
        .env_remove("REMORA_LOG_LEVEL")
        .env_remove("REMORA_RULES_CONFIGMAP")
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out);
        Gateway {
            child: cmd.spawn().expect("remora-proxy gateway"),
            log,
        }
    }
}

fn wait_until(what: &str, gw: &Gateway, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !f() {
        assert!(
            Instant::now() < deadline,
            "{what}; gateway log:\n{}",
            gw.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn credential_secrets_come_through_the_api() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let api = rt.block_on(RecordedApi::start()).unwrap();
    let (web1, web1_key) = cert("web.example.com");
    let (web2, web2_key) = cert("web.example.com");
    let (late, late_key) = cert("late.example.com");
    api.on(
        "GET",
        SECRETS,
        Reply::json(
            200,
            json!({"apiVersion": "v1", "kind": "SecretList", "metadata": {"resourceVersion": "10"},
            "items": [
                secret("web-cert", "5", &[("tls.crt", &web1), ("tls.key", &web1_key)]),
                secret("db-password", "6", &[("password", "hunter2")]),
            ]}),
        ),
    );
    api.on(
        "GET",
        &format!("{SECRETS}?watch=true"),
        Reply::watch(vec![], true),
    );

    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules");
    let creds = dir.path().join("credentials");
    std::fs::create_dir_all(&rules).unwrap();
    std::fs::write(
        rules.join("gateway.yaml"),
        "apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: edge, namespace: istio-system}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 443, name: https-web, protocol: HTTPS}
    hosts: [web.example.com]
    tls: {mode: SIMPLE, credentialName: web-cert}
  - port: {number: 443, name: https-late, protocol: HTTPS}
    hosts: [late.example.com]
    tls: {mode: SIMPLE, credentialName: late-cert}
",
    )
    .unwrap();
    let p = free_ports(5);
    let gw = Gateway::start(
        dir.path(),
        &p,
        &api.url(),
        &[
            "--rules-configmap=off".into(),
            format!("--gateway-port-map=80={},443={}", p[3], p[4]),
            "--gateway-credentials-source=api".into(),
            format!("--gateway-credentials-dir={}", creds.display()),
        ],
    );
    let addr = SocketAddr::from(([127, 0, 0, 1], p[4]));
    let roots = format!("{web1}{web2}{late}");

    // The Secret listed at start serves; the one without TLS material is not written.
    wait_until("web-cert served", &gw, || {
        shown(addr, "web.example.com", &roots).ok() == Some(der(&web1))
    });
    assert!(creds.join("web-cert/tls.key").exists());
    assert!(!creds.join("db-password").exists());
    assert!(shown(addr, "late.example.com", &roots).is_err());

    // MODIFIED: the new certificate for new handshakes.
    wait_until("the watch held", &gw, || api.open_watches(SECRETS) > 0);
    api.emit(
        SECRETS,
        event(
            "MODIFIED",
            secret(
                "web-cert",
                "11",
                &[("tls.crt", &web2), ("tls.key", &web2_key)],
            ),
        ),
    );
    wait_until("the modified web-cert served", &gw, || {
        shown(addr, "web.example.com", &roots).ok() == Some(der(&web2))
    });
    // ADDED: a Secret created after the gateway started brings its server up.
    api.emit(
        SECRETS,
        event(
            "ADDED",
            secret(
                "late-cert",
                "12",
                &[("tls.crt", &late), ("tls.key", &late_key)],
            ),
        ),
    );
    wait_until("late-cert served", &gw, || {
        shown(addr, "late.example.com", &roots).ok() == Some(der(&late))
    });
    // DELETED: that server goes down, the other stays.
    api.emit(
        SECRETS,
        event(
            "DELETED",
            secret(
                "web-cert",
                "13",
                &[("tls.crt", &web2), ("tls.key", &web2_key)],
            ),
        ),
    );
    wait_until("web-cert's server down", &gw, || {
        shown(addr, "web.example.com", &roots).is_err()
    });
    assert_eq!(shown(addr, "late.example.com", &roots).unwrap(), der(&late));
    assert!(!creds.join("web-cert").exists());
    let metrics = || {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", p[2])).unwrap();
        use std::io::{Read, Write};
        s.write_all(b"GET /stats/prometheus HTTP/1.0\r\n\r\n")
            .unwrap();
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out
    };
    wait_until("the down server counted", &gw, || {
        metrics().contains("remora_gateway_servers{state=\"down\"} 1")
    });
    let log = gw.log();
    assert!(
        log.contains("gateway credentials: Secret written for credentialName late-cert"),
        "{log}"
    );
    assert!(log.contains("Secret web-cert deleted"), "{log}");

    // Least privilege: only the Secrets of its own namespace were asked for.
    let reqs = api.requests();
    let secret_calls: Vec<&str> = reqs
        .iter()
        .map(|r| r.path_and_query.as_str())
        .filter(|p| p.contains("secrets"))
        .collect();
    assert!(!secret_calls.is_empty());
    assert!(
        secret_calls.iter().all(|p| p.starts_with(SECRETS)),
        "{secret_calls:?}"
    );
}

const CONFIGMAPS_PATH: &str = "/api/v1/namespaces/istio-system/configmaps";
const CONFIGMAPS: &str =
    "/api/v1/namespaces/istio-system/configmaps?fieldSelector=metadata.name%3Dremora-mesh-rules";

/// The gateway's rules ConfigMap (`remora-mesh-rules` of its namespace) with a Gateway, a
/// VirtualService to the HTTP server at `backend`, and an AuthorizationPolicy selecting the
/// gateway's pod that denies `denied` paths.
fn gateway_rules(rv: &str, backend: SocketAddr, denied: &str) -> Value {
    let rules = format!(
        "apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: edge, namespace: {NS}}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: 80, name: http, protocol: HTTP}}
    hosts: ['*']
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: web, namespace: {NS}}}
spec:
  hosts: ['*']
  gateways: [edge]
  http:
  - route: [{{destination: {{host: web-app, port: {{number: 8000}}}}}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: web-app, namespace: {NS}}}
spec:
  hosts: [web-app.{NS}.svc.cluster.local]
  location: MESH_INTERNAL
  ports: [{{number: 8000, name: http, protocol: HTTP}}]
  resolution: STATIC
  endpoints: [{{address: 127.0.0.1, ports: {{http: {port}}}}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: ingress-deny, namespace: {NS}}}
spec:
  selector: {{matchLabels: {{istio: ingressgateway}}}}
  action: DENY
  rules: [{{to: [{{operation: {{paths: ['{denied}']}}}}]}}]
",
        port = backend.port()
    );
    json!({"apiVersion": "v1", "kind": "ConfigMap",
           "metadata": {"name": "remora-mesh-rules", "namespace": NS, "resourceVersion": rv,
                        "uid": "uid-rules"},
           "data": {"gateway.yaml": rules}})
}

/// An HTTP/1.1 server answering every request `200 app` and closing.
async fn spawn_app() -> SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = s
                    .write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\nconnection: close\r\n\r\napp",
                    )
                    .await;
                let _ = s.shutdown().await;
            });
        }
    });
    addr
}

/// The status of one `GET path` to the gateway, or 0 when it did not answer.
fn status(addr: SocketAddr, path: &str) -> u16 {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)) else {
        return 0;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let req = format!("GET {path} HTTP/1.1\r\nhost: web.example.com\r\nconnection: close\r\n\r\n");
    if s.write_all(req.as_bytes()).is_err() {
        return 0;
    }
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

/// The gateway's rules through the API, as the sidecar's: the real gateway binary, with no
/// mounted rules, lists and watches its namespace's `remora-mesh-rules` ConfigMap (that one
/// name only) and serves its Gateway, route and the AuthorizationPolicy selecting its pod; a
/// MODIFIED event changes what the policy denies within the watch, no restart.
#[test]
fn gateway_rules_and_policies_come_through_the_api() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let api = rt.block_on(RecordedApi::start()).unwrap();
    let app = rt.block_on(spawn_app());
    api.on(
        "GET",
        CONFIGMAPS,
        Reply::json(
            200,
            json!({"apiVersion": "v1", "kind": "ConfigMapList", "metadata": {"resourceVersion": "10"},
                   "items": [gateway_rules("5", app, "/admin*")]}),
        ),
    );
    api.on(
        "GET",
        &format!("{CONFIGMAPS}&watch=true"),
        Reply::watch(vec![], true),
    );
    let dir = tempfile::tempdir().unwrap();
    let p = free_ports(4);
    let gw = Gateway::start(
        dir.path(),
        &p,
        &api.url(),
        &[format!("--gateway-port-map=80={}", p[3])],
    );
    let addr = SocketAddr::from(([127, 0, 0, 1], p[3]));
    wait_until("the API's rules served", &gw, || {
        status(addr, "/page") == 200
    });
    assert_eq!(status(addr, "/admin/users"), 403);

    // MODIFIED: the policy now denies /page*, and /admin is routed again.
    wait_until("the watch held", &gw, || {
        api.open_watches(CONFIGMAPS_PATH) > 0
    });
    api.emit(
        CONFIGMAPS_PATH,
        event("MODIFIED", gateway_rules("11", app, "/page*")),
    );
    wait_until("the modified policy applied", &gw, || {
        status(addr, "/page") == 403
    });
    assert_eq!(status(addr, "/admin/users"), 200);
    // Only that ConfigMap was asked for.
    let reqs = api.requests();
    let cm_calls: Vec<&str> = reqs
        .iter()
        .map(|r| r.path_and_query.as_str())
        .filter(|p| p.contains("configmaps"))
        .collect();
    assert!(!cm_calls.is_empty());
    assert!(
        cm_calls
            .iter()
            .all(|p| p.contains("fieldSelector=metadata.name%3Dremora-mesh-rules")),
        "{cm_calls:?}"
    );
}
