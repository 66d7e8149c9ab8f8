//! Process tests of `remora-proxy gateway`: Istio's Bookinfo Gateway and VirtualService
//! (`samples/bookinfo/networking/bookinfo-gateway.yaml`, read in place from the corpus) served
//! over a real socket to a real backend; HTTPS `SIMPLE` with two certificates chosen by SNI
//! (made with rcgen, one per Secret layout), MUTUAL with client certificates, a Secret rotated
//! as the kubelet does it, all checked with a real TLS client; `httpsRedirect`; TLS
//! `PASSTHROUGH` by SNI and a `TCP` server.

mod common;

use common::*;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// `remora-proxy gateway` with the pod labels of Istio's ingress gateway, its Gateway ports
/// mapped to `map` (`SERVICE=LISTEN,...`) on 127.0.0.1; admin ports from `ports`.
fn start_gateway(rules: &Path, map: &str, extra: &[String]) -> (ProxyProc, tempfile::TempDir) {
    start_gateway_as(
        "app=\"istio-ingressgateway\"\nistio=\"ingressgateway\"\n",
        rules,
        map,
        extra,
    )
}

/// [`start_gateway`] with the pod labels `labels` (downward-API lines).
fn start_gateway_as(
    labels_text: &str,
    rules: &Path,
    map: &str,
    extra: &[String],
) -> (ProxyProc, tempfile::TempDir) {
    let pod = tempfile::tempdir().unwrap();
    let labels = pod.path().join("labels");
    std::fs::write(&labels, labels_text).unwrap();
    let p = Ports::free();
    let mut cmd = Command::new(proxy_bin());
    cmd.args([
        "gateway".to_string(),
        format!("--admin-addr=127.0.0.1:{}", p.admin),
        format!("--health-addr=127.0.0.1:{}", p.health),
        format!("--prometheus-addr=127.0.0.1:{}", p.prometheus),
        format!("--rules-dir={}", rules.display()),
        "--rules-rescan-seconds=1".into(),
        format!("--pod-labels-file={}", labels.display()),
        "--namespace=testns".into(),
        "--drain-seconds=1".into(),
        "--kube-api=off".into(),
        "--gateway-address=127.0.0.1".into(),
        format!("--gateway-port-map={map}"),
        "--access-log-encoding=JSON".into(),
    ])
    .args(extra);
    for k in [
        "REMORA_LOG_LEVEL",
        "REMORA_GATEWAY_PORT_MAP",
        "POD_NAMESPACE",
    ] {
        cmd.env_remove(k);
    }
    cmd.stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .stdin(Stdio::null());
    let mut child = cmd.spawn().expect("spawn remora-proxy gateway");
    let stdout = Arc::new(Mutex::new(Vec::new()));
    let stderr = Arc::new(Mutex::new(Vec::new()));
    pump(child.stdout.take().unwrap(), stdout.clone());
    pump(child.stderr.take().unwrap(), stderr.clone());
    let mut proc = ProxyProc {
        child,
        ports: p,
        stdout,
        stderr,
        rules_dir: rules.to_path_buf(),
    };
    proc.wait_ready();
    (proc, pod)
}

/// A ServiceEntry giving `host` (in testns) one endpoint: the backend at `addr`.
fn endpoint(name: &str, port: u16, addr: SocketAddr) -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: {name}, namespace: testns}}
spec:
  hosts: [{name}.testns.svc.cluster.local]
  location: MESH_INTERNAL
  ports: [{{number: {port}, name: http, protocol: HTTP}}]
  resolution: STATIC
  endpoints: [{{address: 127.0.0.1, ports: {{http: {}}}}}]
",
        addr.port()
    )
}

#[test]
fn bookinfo_gateway_routes_productpage_and_404s_the_rest() {
    let file = remora_corpus::require!("networking/bookinfo-gateway.yaml");
    let bookinfo = std::fs::read_to_string(file).unwrap();
    let rt = rt();
    let backend = rt.block_on(spawn_http_echo(
        "127.0.0.1:0".parse().unwrap(),
        "productpage",
    ));
    let rules = RulesDir::new(&[
        ("bookinfo-gateway.yaml", &bookinfo),
        ("productpage.yaml", &endpoint("productpage", 9080, backend)),
    ]);
    // Bookinfo's Gateway port is 8080 (no Service port of the default map): listened on as
    // mapped here, a free port.
    let [http_port, https_port] = [free_ports(1)[0], free_ports(1)[0]];
    let (gw, _pod) = start_gateway(
        rules.path(),
        &format!("8080={http_port},443={https_port}"),
        &[],
    );
    let addr = SocketAddr::from(([127, 0, 0, 1], http_port));

    let r = http_get(addr, "/productpage", &[("host", "bookinfo.example.com")]).unwrap();
    assert_eq!(r.status, 200, "{}\n{}", r.body_text(), gw.stderr_text());
    let seen = r.json();
    assert_eq!(seen["server"], "productpage");
    assert_eq!(seen["path"], "/productpage");
    let r = http_get(addr, "/static/app.css?v=1", &[]).unwrap();
    assert_eq!(r.status, 200, "{}", r.body_text());
    assert_eq!(r.json()["path"], "/static/app.css?v=1");

    // Not one of the VirtualService's matches: Istio's 404 (no route).
    let r = http_get(addr, "/admin", &[("host", "bookinfo.example.com")]).unwrap();
    assert_eq!(r.status, 404, "{}", r.body_text());

    // The sidecar's access log and metrics, reporter "source".
    let line = gw.wait_log(|v| v["path"] == "/productpage");
    assert_eq!(line["status"], 200, "{line}");
    assert_eq!(line["virtual_service"], "testns/bookinfo", "{line}");
    let m = gw.metrics_when(
        "istio_requests_total",
        &[
            "reporter=\"source\"",
            "destination_service=\"productpage.testns.svc.cluster.local\"",
            "response_code=\"200\"",
        ],
        2.0,
    );
    assert!(
        m.contains("source_workload=\"istio-ingressgateway\""),
        "{m}"
    );
    let log = gw.stderr_text();
    assert!(
        log.contains("Gateways selected gateways=[\"testns/bookinfo-gateway\"]"),
        "{log}"
    );
    // What sidecars leave out is not reported as not applied by the gateway.
    assert!(!log.contains("not applied"), "{log}");
}

/// A self-signed certificate for `name`, PEM (certificate, key).
fn cert(name: &str) -> (String, String) {
    let c = rcgen::generate_simple_self_signed(vec![name.to_string()]).unwrap();
    (c.cert.pem(), c.key_pair.serialize_pem())
}

/// A CA and client certificates it signed, one per name: the CA's PEM, and each certificate's
/// PEM with its key's.
fn client_ca(names: &[&str]) -> (String, Vec<(String, String)>) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    p.distinguished_name
        .push(rcgen::DnType::CommonName, "test client CA");
    let ca = p.self_signed(&ca_key).unwrap();
    let leaves = names
        .iter()
        .map(|name| {
            let key = rcgen::KeyPair::generate().unwrap();
            let leaf = rcgen::CertificateParams::new(vec![name.to_string()])
                .unwrap()
                .signed_by(&key, &ca, &ca_key)
                .unwrap();
            (leaf.pem(), key.serialize_pem())
        })
        .collect();
    (ca.pem(), leaves)
}

/// A rustls client trusting `root` (PEM), with a client certificate (PEM certificate, PEM key)
/// when given.
fn client_config(root: &str, client: Option<(&str, &str)>) -> Arc<rustls::ClientConfig> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(root.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let b = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots);
    Arc::new(match client {
        None => b.with_no_client_auth(),
        Some((c, k)) => b
            .with_client_auth_cert(
                CertificateDer::pem_slice_iter(c.as_bytes())
                    .map(|c| c.unwrap())
                    .collect(),
                PrivateKeyDer::from_pem_slice(k.as_bytes()).unwrap(),
            )
            .unwrap(),
    })
}

/// One HTTPS GET through a real TLS client trusting `root`, with `sni` and optionally a client
/// certificate (PEM certificate, PEM key): the response and the DER of the certificate the
/// server showed, or what failed.
fn https_try(
    addr: SocketAddr,
    sni: &str,
    root: &str,
    path: &str,
    client: Option<(&str, &str)>,
) -> Result<(HttpResp, Vec<u8>), String> {
    use std::io::{Read, Write};
    let name = rustls::pki_types::ServerName::try_from(sni.to_string()).unwrap();
    let mut conn = rustls::ClientConnection::new(client_config(root, client), name).unwrap();
    let mut sock = std::net::TcpStream::connect(addr).map_err(|e| e.to_string())?;
    sock.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let mut tls = rustls::Stream::new(&mut conn, &mut sock);
    write!(
        tls,
        "GET {path} HTTP/1.1\r\nHost: {sni}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| format!("write: {e}"))?;
    let mut raw = Vec::new();
    // A close without close_notify is fine here: the response is complete.
    let read = tls.read_to_end(&mut raw);
    if raw.is_empty() {
        return Err(format!("no response: {read:?}"));
    }
    let shown = conn.peer_certificates().ok_or("no server certificate")?[0]
        .as_ref()
        .to_vec();
    Ok((parse_response(&raw).map_err(|e| e.to_string())?, shown))
}

fn https_get(addr: SocketAddr, sni: &str, root: &str, path: &str) -> (HttpResp, Vec<u8>) {
    https_try(addr, sni, root, path, None).unwrap_or_else(|e| panic!("https://{sni}{path}: {e}"))
}

fn der(pem: &str) -> Vec<u8> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes())
        .unwrap()
        .as_ref()
        .to_vec()
}

/// A Secret volume as the kubelet writes it: files in `..<version>/`, `..data` pointing there,
/// each name a symlink into `..data`; a new version swaps `..data` at once.
fn secret_volume(dir: &Path, version: u32, files: &[(&str, &str)]) {
    std::fs::create_dir_all(dir).unwrap();
    let v = format!("..v{version}");
    std::fs::create_dir(dir.join(&v)).unwrap();
    for (name, text) in files {
        std::fs::write(dir.join(&v).join(name), text).unwrap();
    }
    let tmp = dir.join("..data_tmp");
    std::os::unix::fs::symlink(&v, &tmp).unwrap();
    std::fs::rename(&tmp, dir.join("..data")).unwrap();
    for (name, _) in files {
        let link = dir.join(name);
        if std::fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink(format!("..data/{name}"), &link).unwrap();
        }
    }
}

#[test]
fn https_by_sni_mutual_rotation_and_https_redirect() {
    let rt = rt();
    let backend = rt.block_on(spawn_http_echo("127.0.0.1:0".parse().unwrap(), "web"));
    let creds = tempfile::tempdir().unwrap();
    let (secure_crt, secure_key) = cert("secure.example.com");
    let (other_crt, other_key) = cert("other.example.com");
    let (mtls_crt, mtls_key) = cert("mtls.example.com");
    let (client_ca_pem, clients) = client_ca(&["client.example.com", "unlisted.example.com"]);
    let (_, strangers) = client_ca(&["client.example.com"]);
    // The kubernetes.io/tls layout (as the kubelet mounts it) and Istio's generic one.
    let secure = creds.path().join("secure-cert");
    secret_volume(
        &secure,
        1,
        &[("tls.crt", &secure_crt), ("tls.key", &secure_key)],
    );
    std::fs::create_dir(creds.path().join("other-cert")).unwrap();
    std::fs::write(creds.path().join("other-cert/cert"), &other_crt).unwrap();
    std::fs::write(creds.path().join("other-cert/key"), &other_key).unwrap();
    secret_volume(
        &creds.path().join("mtls-cert"),
        1,
        &[
            ("tls.crt", &mtls_crt),
            ("tls.key", &mtls_key),
            ("ca.crt", &client_ca_pem),
        ],
    );
    let rules = RulesDir::new(&[
        (
            "gateway.yaml",
            "apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: web-gateway, namespace: testns}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: [secure.example.com]
    tls: {httpsRedirect: true}
  - port: {number: 443, name: https-secure, protocol: HTTPS}
    hosts: [secure.example.com]
    tls: {mode: SIMPLE, credentialName: secure-cert}
  - port: {number: 443, name: https-other, protocol: HTTPS}
    hosts: [other.example.com]
    tls: {mode: SIMPLE, credentialName: other-cert, minProtocolVersion: TLSV1_3}
  - port: {number: 443, name: https-missing, protocol: HTTPS}
    hosts: [missing.example.com]
    tls: {mode: SIMPLE, credentialName: no-such-secret}
  - port: {number: 443, name: https-mtls, protocol: HTTPS}
    hosts: [mtls.example.com]
    tls: {mode: MUTUAL, credentialName: mtls-cert, subjectAltNames: [client.example.com]}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: web, namespace: testns}
spec:
  hosts: [secure.example.com, other.example.com, mtls.example.com]
  gateways: [web-gateway]
  http:
  - match: [{uri: {prefix: /only-https}, scheme: {exact: https}}]
    route: [{destination: {host: web, port: {number: 8000}}}]
    headers: {response: {set: {x-matched: https}}}
  - route: [{destination: {host: web, port: {number: 8000}}}]
",
        ),
        ("web.yaml", &endpoint("web", 8000, backend)),
    ]);
    let [http_port, https_port] = [free_ports(1)[0], free_ports(1)[0]];
    let (gw, _pod) = start_gateway(
        rules.path(),
        &format!("80={http_port},443={https_port}"),
        &[format!(
            "--gateway-credentials-dir={}",
            creds.path().display()
        )],
    );
    let tls_addr = SocketAddr::from(([127, 0, 0, 1], https_port));
    let roots = format!("{secure_crt}{other_crt}{mtls_crt}");

    let (r, shown) = https_get(tls_addr, "secure.example.com", &roots, "/only-https/a");
    assert_eq!(r.status, 200, "{}\n{}", r.body_text(), gw.stderr_text());
    assert_eq!(
        shown,
        der(&secure_crt),
        "the secure.example.com certificate"
    );
    assert_eq!(r.json()["server"], "web");
    assert_eq!(r.json()["headers"]["x-forwarded-proto"], "https");
    assert_eq!(r.json()["headers"]["x-forwarded-for"], "127.0.0.1");
    assert_eq!(r.header("x-matched"), Some("https"));

    let (r, shown) = https_get(tls_addr, "other.example.com", &roots, "/b");
    assert_eq!(r.status, 200, "{}", r.body_text());
    assert_eq!(shown, der(&other_crt), "the other.example.com certificate");
    assert_eq!(r.json()["path"], "/b");

    // HTTP/2 over TLS (ALPN h2).
    let h2_roots = roots.clone();
    let (status, alpn, h2_path) = rt.block_on(async move {
        use http_body_util::{BodyExt, Empty};
        use rustls::pki_types::pem::PemObject;
        let mut store = rustls::RootCertStore::empty();
        for c in rustls::pki_types::CertificateDer::pem_slice_iter(h2_roots.as_bytes()) {
            store.add(c.unwrap()).unwrap();
        }
        let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(store)
        .with_no_client_auth();
        cfg.alpn_protocols = vec![b"h2".to_vec()];
        let tcp = tokio::net::TcpStream::connect(tls_addr).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("secure.example.com").unwrap();
        let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
            .connect(name, tcp)
            .await
            .unwrap();
        let alpn = tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
        let (mut send, conn) = hyper::client::conn::http2::handshake(
            hyper_util::rt::TokioExecutor::new(),
            hyper_util::rt::TokioIo::new(tls),
        )
        .await
        .unwrap();
        tokio::spawn(conn);
        let req = http::Request::get("https://secure.example.com/h2")
            .body(Empty::<bytes::Bytes>::new())
            .unwrap();
        let resp = send.send_request(req).await.unwrap();
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        (status, alpn, v["path"].clone())
    });
    assert_eq!((status, alpn.as_deref()), (200, Some(&b"h2"[..])));
    assert_eq!(h2_path, "/h2");
    let line = gw.wait_log(|l| l["path"] == "/h2");
    assert_eq!(line["request_protocol"], "http2", "{line}");
    assert_eq!(line["protocol"], "HTTP/2", "{line}");

    // The server whose Secret is missing is down, with one line naming it; the others serve.
    gw.wait_stderr("Gateway testns/web-gateway spec.servers[3] (port 443): TLS settings not loaded, this server is down: credentialName \"no-such-secret\"");
    assert!(https_try(tls_addr, "missing.example.com", &roots, "/", None).is_err());
    let m = gw.metrics_when("remora_gateway_servers", &["state=\"down\""], 1.0);
    assert_eq!(
        metric_value(&m, "remora_gateway_servers", &["state=\"down\""]),
        1.0,
        "{m}"
    );
    assert_eq!(
        metric_value(&m, "remora_gateway_servers", &["state=\"served\""]),
        4.0,
        "{m}"
    );
    // /config_dump shows the gateway's ports and servers (what `remora proxy-config
    // listeners` prints), the one whose Secret is missing as down.
    let r = http_get(gw.ports.admin_addr(), "/config_dump", &[]).unwrap();
    assert_eq!(r.status, 200);
    let dump: remora_model::dump::ConfigDump = serde_json::from_slice(&r.body).unwrap();
    let g = dump.gateway.expect("a gateway section");
    assert_eq!(g.gateways, ["testns/web-gateway"]);
    // The VirtualServices it routes by (what `remora proxy-config routes` lists): bound to it.
    assert!(!g.virtual_services.is_empty());
    assert!(g
        .virtual_services
        .iter()
        .all(|vs| remora_model::gateway::vs_bound_to(vs, &g.gateways)));
    let l = g.listeners.iter().find(|l| l.port == https_port).unwrap();
    assert_eq!((l.gateway_port, l.kind.as_str()), (443, "https"));
    let states: Vec<(&str, &str)> = l
        .servers
        .iter()
        .map(|s| (s.hosts[0].as_str(), s.state.as_str()))
        .collect();
    assert_eq!(
        states,
        [
            ("secure.example.com", "served"),
            ("other.example.com", "served"),
            ("missing.example.com", "down"),
            ("mtls.example.com", "served"),
        ]
    );
    // The certificate each server shows, as loaded (none for the one down).
    let shown: Vec<Option<Vec<String>>> = l
        .servers
        .iter()
        .map(|s| s.certificate.as_ref().map(|c| c.dns_names.clone()))
        .collect();
    assert_eq!(
        shown,
        [
            Some(vec!["secure.example.com".to_string()]),
            Some(vec!["other.example.com".to_string()]),
            None,
            Some(vec!["mtls.example.com".to_string()]),
        ]
    );
    assert!(dump
        .listeners
        .iter()
        .any(|x| x.name == format!("gateway {https_port}") && x.bound));
    assert!(dump
        .listeners
        .iter()
        .all(|x| x.name.starts_with("gateway ")));

    // MUTUAL: a client certificate from the Secret's ca.crt with the listed SAN is accepted;
    // none, one from another CA, or one without the SAN is refused.
    let pair = |p: &(String, String)| Some((p.0.clone(), p.1.clone()));
    let get = |client: Option<(String, String)>| {
        let c = client.as_ref().map(|(c, k)| (c.as_str(), k.as_str()));
        https_try(tls_addr, "mtls.example.com", &roots, "/m", c)
    };
    let (r, _) = get(pair(&clients[0])).unwrap();
    assert_eq!(r.status, 200, "{}", r.body_text());
    assert!(get(None).is_err(), "no client certificate");
    assert!(get(pair(&strangers[0])).is_err(), "another CA");
    assert!(get(pair(&clients[1])).is_err(), "a SAN not listed");

    // Plain HTTP on the redirecting server: 301 to https.
    let r = http_get(
        SocketAddr::from(([127, 0, 0, 1], http_port)),
        "/only-https/a?x=1",
        &[("host", "secure.example.com")],
    )
    .unwrap();
    assert_eq!(r.status, 301, "{}", r.body_text());
    assert_eq!(
        r.header("location"),
        Some("https://secure.example.com/only-https/a?x=1")
    );

    // The Secret rotated as the kubelet does it: new handshakes get the new certificate, and
    // no request fails meanwhile.
    let (new_crt, new_key) = cert("secure.example.com");
    secret_volume(&secure, 2, &[("tls.crt", &new_crt), ("tls.key", &new_key)]);
    let roots = format!("{roots}{new_crt}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(WAIT_S);
    loop {
        let (r, shown) = https_get(tls_addr, "secure.example.com", &roots, "/rotating");
        assert_eq!(r.status, 200, "{}", r.body_text());
        if shown == der(&new_crt) {
            break;
        }
        assert_eq!(shown, der(&secure_crt));
        assert!(
            std::time::Instant::now() < deadline,
            "the rotated certificate was not served; stderr:\n{}",
            gw.stderr_text()
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }

    // The missing Secret appears: with no connection to the gateway, the plan is made again
    // on its own and the metric says the server is up; then it serves.
    let (late_crt, late_key) = cert("missing.example.com");
    secret_volume(
        &creds.path().join("no-such-secret"),
        1,
        &[("tls.crt", &late_crt), ("tls.key", &late_key)],
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(WAIT_S);
    loop {
        let m = gw.metrics();
        if metric_value(&m, "remora_gateway_servers", &["state=\"down\""]) == 0.0 {
            assert_eq!(
                metric_value(&m, "remora_gateway_servers", &["state=\"served\""]),
                5.0,
                "{m}"
            );
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the new Secret was not picked up without traffic; stderr:\n{}",
            gw.stderr_text()
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let roots = format!("{roots}{late_crt}");
    // The handshake now succeeds with the new certificate (no VirtualService routes that host:
    // the gateway's own 404).
    let (r, shown) = https_get(tls_addr, "missing.example.com", &roots, "/late");
    assert_eq!(shown, der(&late_crt));
    assert_eq!(r.status, 404, "{}", r.body_text());
}

/// A ServiceEntry giving `name` (in testns) port `port` (`protocol`, its port name the protocol
/// lower-cased) with one endpoint: the backend at `addr`.
fn l4_endpoint(name: &str, port: u16, protocol: &str, addr: SocketAddr) -> String {
    let pname = protocol.to_ascii_lowercase();
    format!(
        "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: {name}, namespace: testns}}
spec:
  hosts: [{name}.testns.svc.cluster.local]
  location: MESH_INTERNAL
  ports: [{{number: {port}, name: {pname}, protocol: {protocol}}}]
  resolution: STATIC
  endpoints: [{{address: 127.0.0.1, ports: {{{pname}: {}}}}}]
",
        addr.port()
    )
}

/// A TLS server with its own certificate that answers each HTTP request with `name` and closes.
async fn spawn_tls_http(cert_pem: String, key_pem: String, name: &'static str) -> SocketAddr {
    use rustls::pki_types::pem::PemObject;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![rustls::pki_types::CertificateDer::from_pem_slice(cert_pem.as_bytes()).unwrap()],
        rustls::pki_types::PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).unwrap(),
    )
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else { return };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(s).await else {
                    return;
                };
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
                    match tls.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let reply = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{name}",
                    name.len()
                );
                let _ = tls.write_all(reply.as_bytes()).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    addr
}

/// Istio's SNI passthrough and TCP at the gateway: a `TLS` server with `tls.mode: PASSTHROUGH`
/// routes by the ClientHello's SNI with `tls` routes — a real rustls client checks each
/// backend's own certificate, so the gateway did not terminate — the most specific
/// VirtualService host winning; a name no server has is closed; a `TCP` server's `tcp` route
/// reaches an echo backend; both counted as TCP connections of the gateway.
#[test]
fn passthrough_by_sni_and_tcp_routes() {
    use std::io::{Read, Write};
    let rt = rt();
    let (api_crt, api_key) = cert("api.example.com");
    let (www_crt, www_key) = cert("www.example.com");
    let api = rt.block_on(spawn_tls_http(api_crt.clone(), api_key, "api"));
    let www = rt.block_on(spawn_tls_http(www_crt.clone(), www_key, "www"));
    let echo = rt.block_on(spawn_tcp_echo());
    let rules = RulesDir::new(&[
        (
            "gateway.yaml",
            "apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: edge, namespace: testns}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 443, name: tls, protocol: TLS}
    hosts: ['*.example.com']
    tls: {mode: PASSTHROUGH}
  - port: {number: 31400, name: tcp, protocol: TCP}
    hosts: ['*']
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: api, namespace: testns}
spec:
  hosts: [api.example.com]
  gateways: [edge]
  tls:
  - match: [{sniHosts: [api.example.com], port: 443}]
    route: [{destination: {host: api-backend, port: {number: 443}}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: www, namespace: testns}
spec:
  hosts: ['*.example.com']
  gateways: [edge]
  tls:
  - match: [{sniHosts: ['*.example.com']}]
    route: [{destination: {host: www-backend, port: {number: 443}}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: db, namespace: testns}
spec:
  hosts: ['*']
  gateways: [edge]
  tcp:
  - match: [{port: 31400}]
    route: [{destination: {host: echo-backend, port: {number: 5000}}}]
",
        ),
        (
            "backends.yaml",
            &[
                l4_endpoint("api-backend", 443, "TLS", api),
                l4_endpoint("www-backend", 443, "TLS", www),
                l4_endpoint("echo-backend", 5000, "TCP", echo),
            ]
            .join("---\n"),
        ),
    ]);
    let [tls_port, tcp_port] = [free_ports(1)[0], free_ports(1)[0]];
    let (gw, _pod) = start_gateway(
        rules.path(),
        &format!("80={},443={tls_port},31400={tcp_port}", free_ports(1)[0]),
        &[],
    );
    let tls_addr = SocketAddr::from(([127, 0, 0, 1], tls_port));
    let roots = format!("{api_crt}{www_crt}");
    for (sni, body, crt) in [
        ("api.example.com", "api", &api_crt),
        ("www.example.com", "www", &www_crt),
    ] {
        let (r, shown) = https_try(tls_addr, sni, &roots, "/", None)
            .unwrap_or_else(|e| panic!("{sni}: {e}\n{}", gw.stderr_text()));
        assert_eq!((r.status, r.body_text()), (200, body.to_string()), "{sni}");
        assert_eq!(shown, der(crt), "{sni}: the backend's own certificate");
    }
    // No server host for the name: the connection is closed, no handshake.
    assert!(
        https_try(tls_addr, "api.example.org", &roots, "/", None).is_err(),
        "api.example.org has no server"
    );
    // TCP: the echo backend answers through the gateway.
    let mut sock = std::net::TcpStream::connect(("127.0.0.1", tcp_port)).unwrap();
    sock.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    sock.write_all(b"hello through the gateway\n").unwrap();
    let mut got = vec![0u8; 26];
    sock.read_exact(&mut got).unwrap();
    assert_eq!(got, b"hello through the gateway\n");
    drop(sock);
    // The sidecar's TCP access log: one line per connection, to the backend routed to.
    for backend in [api, www, echo] {
        let line = gw.wait_log(|v| v["kind"] == "tcp" && v["upstream"] == backend.to_string());
        assert_eq!(line["direction"], "outbound", "{line}");
    }
}

/// A line sent over TLS (a real rustls client trusting `root`, with `sni` and optionally a
/// client certificate) and what comes back before the server closes or 10 s pass: the bytes and
/// the DER of the certificate the server showed, or what failed.
fn tls_line(
    addr: SocketAddr,
    sni: &str,
    root: &str,
    client: Option<(&str, &str)>,
    line: &[u8],
) -> Result<(Vec<u8>, Vec<u8>), String> {
    use std::io::{Read, Write};
    let name = rustls::pki_types::ServerName::try_from(sni.to_string()).unwrap();
    let mut conn = rustls::ClientConnection::new(client_config(root, client), name).unwrap();
    let mut sock = std::net::TcpStream::connect(addr).map_err(|e| e.to_string())?;
    sock.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let mut tls = rustls::Stream::new(&mut conn, &mut sock);
    tls.write_all(line).map_err(|e| format!("write: {e}"))?;
    let mut got = vec![0u8; line.len()];
    tls.read_exact(&mut got).map_err(|e| format!("read: {e}"))?;
    let shown = conn.peer_certificates().ok_or("no server certificate")?[0]
        .as_ref()
        .to_vec();
    Ok((got, shown))
}

/// Istio's TLS termination for non-HTTP traffic: `TLS` servers with `tls.mode: SIMPLE` and
/// `MUTUAL` (certificates from their `credentialName`, chosen by SNI) decrypt, and the
/// VirtualService's `tcp` routes carry the plain bytes to a TCP echo backend; the client sees
/// the gateway's certificate; `MUTUAL` refuses a client without a certificate.
#[test]
fn terminated_tls_servers_take_tcp_routes() {
    let rt = rt();
    let echo = rt.block_on(spawn_tcp_echo());
    let creds = tempfile::tempdir().unwrap();
    let (db_crt, db_key) = cert("db.example.com");
    let (mq_crt, mq_key) = cert("mq.example.com");
    let (client_ca_pem, clients) = client_ca(&["client.example.com"]);
    secret_volume(
        &creds.path().join("db-cert"),
        1,
        &[("tls.crt", &db_crt), ("tls.key", &db_key)],
    );
    secret_volume(
        &creds.path().join("mq-cert"),
        1,
        &[
            ("tls.crt", &mq_crt),
            ("tls.key", &mq_key),
            ("ca.crt", &client_ca_pem),
        ],
    );
    let rules = RulesDir::new(&[
        (
            "gateway.yaml",
            "apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: edge, namespace: testns}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 9443, name: tls-db, protocol: TLS}
    hosts: [db.example.com]
    tls: {mode: SIMPLE, credentialName: db-cert}
  - port: {number: 9443, name: tls-mq, protocol: TLS}
    hosts: [mq.example.com]
    tls: {mode: MUTUAL, credentialName: mq-cert}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: db, namespace: testns}
spec:
  hosts: [db.example.com, mq.example.com]
  gateways: [edge]
  tcp:
  - match: [{port: 9443}]
    route: [{destination: {host: echo-backend, port: {number: 5000}}}]
",
        ),
        (
            "backends.yaml",
            &l4_endpoint("echo-backend", 5000, "TCP", echo),
        ),
    ]);
    let port = free_ports(1)[0];
    let (gw, _pod) = start_gateway(
        rules.path(),
        &format!("80={},9443={port}", free_ports(1)[0]),
        &[format!(
            "--gateway-credentials-dir={}",
            creds.path().display()
        )],
    );
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let (got, shown) = tls_line(addr, "db.example.com", &db_crt, None, b"select 1;\n")
        .unwrap_or_else(|e| panic!("db: {e}\n{}", gw.stderr_text()));
    assert_eq!(got, b"select 1;\n");
    assert_eq!(shown, der(&db_crt), "the gateway's certificate for db");
    let (c, k) = &clients[0];
    let (got, shown) = tls_line(addr, "mq.example.com", &mq_crt, Some((c, k)), b"publish\n")
        .unwrap_or_else(|e| panic!("mq: {e}\n{}", gw.stderr_text()));
    assert_eq!(got, b"publish\n");
    assert_eq!(shown, der(&mq_crt));
    assert!(
        tls_line(addr, "mq.example.com", &mq_crt, None, b"publish\n").is_err(),
        "MUTUAL without a client certificate must fail"
    );
    // The decrypted connections went to the echo backend as TCP.
    let line = gw.wait_log(|v| v["kind"] == "tcp" && v["upstream"] == echo.to_string());
    assert_eq!(line["direction"], "outbound", "{line}");
}

/// Istio's egress gateway pattern over HTTP, with two real proxies: a sidecar sends a request for
/// an external host (a ServiceEntry) to the egress gateway (the VirtualService's `mesh` match),
/// and the egress gateway (pod labels `istio: egressgateway`, selected by the Gateway) sends it
/// on to the external host (the VirtualService's match bound to that Gateway); each hop is in its
/// own proxy's access log, and a host the Gateway does not serve gets the gateway's 404.
#[test]
fn egress_gateway_pattern_over_http() {
    let rt = rt();
    let external = rt.block_on(spawn_http_echo("127.0.0.1:0".parse().unwrap(), "external"));
    let gw_port = free_ports(1)[0];
    let rules = RulesDir::new(&[(
        "egress.yaml",
        &format!(
            "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: external, namespace: testns}}
spec:
  hosts: [edition.example.com]
  ports: [{{number: 80, name: http-port, protocol: HTTP}}]
  location: MESH_EXTERNAL
  resolution: STATIC
  endpoints: [{{address: 127.0.0.1, ports: {{http-port: {ext}}}}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: egressgateway, namespace: istio-system}}
spec:
  hosts: [istio-egressgateway.istio-system.svc.cluster.local]
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  location: MESH_INTERNAL
  resolution: STATIC
  endpoints: [{{address: 127.0.0.1, ports: {{http: {gw_port}}}}}]
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: istio-egressgateway, namespace: testns}}
spec:
  selector: {{istio: egressgateway}}
  servers:
  - port: {{number: 80, name: http, protocol: HTTP}}
    hosts: [edition.example.com]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: direct-through-egress-gateway, namespace: testns}}
spec:
  hosts: [edition.example.com]
  gateways: [istio-egressgateway, mesh]
  http:
  - match: [{{gateways: [mesh]}}]
    route:
    - destination: {{host: istio-egressgateway.istio-system.svc.cluster.local, port: {{number: 80}}}}
  - match: [{{gateways: [istio-egressgateway], port: 80}}]
    route:
    - destination: {{host: edition.example.com, port: {{number: 80}}}}
",
            ext = external.port()
        ),
    )]);
    let (gw, _pod) = start_gateway_as(
        "app=\"istio-egressgateway\"\nistio=\"egressgateway\"\n",
        rules.path(),
        &format!("80={gw_port},443={}", free_ports(1)[0]),
        &[],
    );
    // The app's own destination must never be used: a port where nothing answers.
    let nowhere = DeadPort::new();
    let mut o = ProxyOpts::new(rules.path());
    o.fixed_outbound = Some(nowhere.addr());
    let mut sidecar = ProxyProc::start(o);
    sidecar.wait_ready();

    let r = http_get(
        sidecar.ports.outbound_addr(),
        "/politics",
        &[("Host", "edition.example.com")],
    )
    .unwrap();
    assert_eq!(r.status, 200, "{}\n{}", r.body_text(), gw.stderr_text());
    let v = r.json();
    assert_eq!(v["server"], "external", "{v}");
    assert_eq!(v["path"], "/politics");
    // The sidecar sent it to the egress gateway, which sent it to the external host.
    let hop1 = sidecar.wait_log(|l| l["path"] == "/politics");
    assert_eq!(
        hop1["upstream"],
        format!("127.0.0.1:{gw_port}"),
        "sidecar → egress gateway: {hop1}"
    );
    let hop2 = gw.wait_log(|l| l["path"] == "/politics");
    assert_eq!(
        hop2["upstream"],
        external.to_string(),
        "egress gateway → external: {hop2}"
    );
    // Straight to the egress gateway, a host its Gateway does not serve: its 404.
    let r = http_get(
        SocketAddr::from(([127, 0, 0, 1], gw_port)),
        "/",
        &[("Host", "other.example.com")],
    )
    .unwrap();
    assert_eq!(r.status, 404, "{}", r.body_text());
}

/// [`https_try`] with a given client configuration.
fn https_try_with(
    addr: SocketAddr,
    sni: &str,
    config: Arc<rustls::ClientConfig>,
    path: &str,
) -> Result<(HttpResp, Vec<u8>), String> {
    use std::io::{Read, Write};
    let name =
        rustls::pki_types::ServerName::try_from(sni.to_string()).map_err(|e| e.to_string())?;
    let mut conn = rustls::ClientConnection::new(config, name).map_err(|e| e.to_string())?;
    let mut sock = std::net::TcpStream::connect(addr).map_err(|e| e.to_string())?;
    sock.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let mut tls = rustls::Stream::new(&mut conn, &mut sock);
    write!(
        tls,
        "GET {path} HTTP/1.1\r\nHost: {sni}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| format!("write: {e}"))?;
    let mut raw = Vec::new();
    let read = tls.read_to_end(&mut raw);
    if raw.is_empty() {
        return Err(format!("no response: {read:?}"));
    }
    let shown = conn.peer_certificates().ok_or("no server certificate")?[0]
        .as_ref()
        .to_vec();
    Ok((parse_response(&raw).map_err(|e| e.to_string())?, shown))
}

/// A TLS 1.2-only client trusting `root` that offers the one cipher suite `suite`.
fn one_suite_client(root: &str, suite: rustls::SupportedCipherSuite) -> Arc<rustls::ClientConfig> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_slice_iter(root.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let mut provider = rustls::crypto::ring::default_provider();
    provider.cipher_suites = vec![suite];
    Arc::new(
        rustls::ClientConfig::builder_with_provider(Arc::new(provider))
            .with_protocol_versions(&[&rustls::version::TLS12])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

/// Istio's TLS modes side by side on one gateway port, the ClientHello's SNI deciding: a
/// `PASSTHROUGH` server (the client sees the backend's own certificate), a `SIMPLE` HTTPS
/// server (the client sees the gateway's certificate and gets the HTTP backend's answer), an
/// `AUTO_PASSTHROUGH` server (Istio's `outbound_.PORT_._.HOST` name reaches that service's
/// endpoint without a VirtualService; a service the registry does not know is closed), and
/// `cipherSuites`: the listed suite is accepted, a client offering only another is refused, and
/// a server listing a suite rustls does not have is down with its line while the others serve.
#[test]
fn tls_modes_share_a_port_by_sni_and_cipher_suites() {
    let rt = rt();
    let creds = tempfile::tempdir().unwrap();
    let (pass_crt, pass_key) = cert("pass.example.com");
    let auto_name = "outbound_.9443_._.auto-backend.testns.svc.cluster.local";
    let (auto_crt, auto_key) = cert(auto_name);
    let (web_crt, web_key) = cert("web.example.com");
    let (suites_crt, suites_key) = cert("suites.example.com");
    secret_volume(
        &creds.path().join("web-cert"),
        1,
        &[("tls.crt", &web_crt), ("tls.key", &web_key)],
    );
    secret_volume(
        &creds.path().join("suites-cert"),
        1,
        &[("tls.crt", &suites_crt), ("tls.key", &suites_key)],
    );
    let pass = rt.block_on(spawn_tls_http(pass_crt.clone(), pass_key, "pass"));
    let auto = rt.block_on(spawn_tls_http(auto_crt.clone(), auto_key, "auto"));
    let web = rt.block_on(spawn_http_echo("127.0.0.1:0".parse().unwrap(), "web"));
    let rules = RulesDir::new(&[
        (
            "gateway.yaml",
            "apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: edge, namespace: testns}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 443, name: tls-pass, protocol: TLS}
    hosts: [pass.example.com]
    tls: {mode: PASSTHROUGH}
  - port: {number: 443, name: https-web, protocol: HTTPS}
    hosts: [web.example.com]
    tls: {mode: SIMPLE, credentialName: web-cert}
  - port: {number: 443, name: auto, protocol: TLS}
    hosts: ['*.local']
    tls: {mode: AUTO_PASSTHROUGH}
  - port: {number: 443, name: https-suites, protocol: HTTPS}
    hosts: [suites.example.com]
    tls: {mode: SIMPLE, credentialName: suites-cert, maxProtocolVersion: TLSV1_2, cipherSuites: [ECDHE-ECDSA-AES128-GCM-SHA256]}
  - port: {number: 443, name: https-bad, protocol: HTTPS}
    hosts: [bad.example.com]
    tls: {mode: SIMPLE, credentialName: web-cert, cipherSuites: [AES128-SHA]}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: pass, namespace: testns}
spec:
  hosts: [pass.example.com]
  gateways: [edge]
  tls:
  - match: [{sniHosts: [pass.example.com]}]
    route: [{destination: {host: pass-backend, port: {number: 443}}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: web, namespace: testns}
spec:
  hosts: [web.example.com, suites.example.com, bad.example.com]
  gateways: [edge]
  http:
  - route: [{destination: {host: web-backend, port: {number: 8080}}}]
",
        ),
        (
            "backends.yaml",
            &[
                l4_endpoint("pass-backend", 443, "TLS", pass),
                l4_endpoint("auto-backend", 9443, "TLS", auto),
                endpoint("web-backend", 8080, web),
            ]
            .join("---\n"),
        ),
    ]);
    let port = free_ports(1)[0];
    let (gw, _pod) = start_gateway(
        rules.path(),
        &format!("80={},443={port}", free_ports(1)[0]),
        &[format!(
            "--gateway-credentials-dir={}",
            creds.path().display()
        )],
    );
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    // Passed through: the backend's own certificate and answer.
    let (r, shown) = https_try(addr, "pass.example.com", &pass_crt, "/", None)
        .unwrap_or_else(|e| panic!("pass: {e}\n{}", gw.stderr_text()));
    assert_eq!((r.status, r.body_text()), (200, "pass".to_string()));
    assert_eq!(shown, der(&pass_crt), "the backend's certificate");
    // Terminated by the gateway: its certificate, the HTTP backend's answer.
    let (r, shown) = https_try(addr, "web.example.com", &web_crt, "/web", None)
        .unwrap_or_else(|e| panic!("web: {e}\n{}", gw.stderr_text()));
    assert_eq!(r.status, 200, "{}", r.body_text());
    assert_eq!(r.json()["server"], "web");
    assert_eq!(shown, der(&web_crt), "the gateway's certificate");
    // AUTO_PASSTHROUGH: the service the name carries, untouched.
    let (r, shown) = https_try(addr, auto_name, &auto_crt, "/", None)
        .unwrap_or_else(|e| panic!("auto: {e}\n{}", gw.stderr_text()));
    assert_eq!((r.status, r.body_text()), (200, "auto".to_string()));
    assert_eq!(shown, der(&auto_crt));
    let unknown = "outbound_.9443_._.nobody.testns.svc.cluster.local";
    let (nobody_crt, _) = cert(unknown);
    assert!(
        https_try(addr, unknown, &nobody_crt, "/", None).is_err(),
        "a service the registry does not know is closed"
    );
    // cipherSuites: the listed TLS 1.2 suite is accepted, another is refused.
    use rustls::crypto::ring::cipher_suite as cs;
    let ok = one_suite_client(&suites_crt, cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256);
    let (r, shown) = https_try_with(addr, "suites.example.com", ok, "/suites")
        .unwrap_or_else(|e| panic!("suites: {e}\n{}", gw.stderr_text()));
    assert_eq!(r.status, 200, "{}", r.body_text());
    assert_eq!(shown, der(&suites_crt));
    let other = one_suite_client(
        &suites_crt,
        cs::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
    );
    let e = https_try_with(addr, "suites.example.com", other, "/suites").unwrap_err();
    assert!(!e.is_empty());
    // A suite rustls does not have: that server is down, with its line naming the field.
    assert!(
        https_try(addr, "bad.example.com", &web_crt, "/", None).is_err(),
        "bad.example.com's server is down"
    );
    let log = gw.stderr_text();
    assert!(
        log.contains("Gateway testns/edge spec.servers[4] (port 443): TLS settings not loaded, this server is down: tls.cipherSuites[0]: \"AES128-SHA\" is not supported by remora's TLS library (rustls)"),
        "{log}"
    );
    gw.metrics_when("remora_gateway_servers", &["state=\"down\""], 1.0);
}

/// A TLS server for `name` with a certificate signed by a test CA (returned, PEM) that answers
/// each HTTP request with 200 and the server name the client asked for (its SNI).
async fn spawn_https_origin(name: &str) -> (SocketAddr, String) {
    use rustls::pki_types::pem::PemObject;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (ca_pem, leaves) = client_ca(&[name]);
    let (crt, key) = &leaves[0];
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![rustls::pki_types::CertificateDer::from_pem_slice(crt.as_bytes()).unwrap()],
        rustls::pki_types::PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
    )
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else { return };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(s).await else {
                    return;
                };
                let sni = tls.get_ref().1.server_name().unwrap_or("").to_string();
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
                    match tls.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let body = format!("sni={sni}");
                let reply = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = tls.write_all(reply.as_bytes()).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    (addr, ca_pem)
}

/// Istio's egress gateway with TLS origination: the mesh sends plain HTTP to the egress
/// gateway, whose VirtualService routes it to the external host's port 443, and the
/// DestinationRule's `tls.mode: SIMPLE` for that host (the sidecar's own TLS origination code)
/// makes the gateway's upstream connection HTTPS: the external host (a local rustls server with
/// a test CA) sees the DestinationRule's `sni`, and the gateway checks its certificate against
/// `caCertificates` and `subjectAltNames` (a name the certificate does not carry: 503).
#[test]
fn egress_gateway_originates_tls() {
    let rt = rt();
    let (origin, ca_pem) = rt.block_on(spawn_https_origin("external.example.com"));
    let pki = tempfile::tempdir().unwrap();
    let ca_path = pki.path().join("external-ca.pem");
    std::fs::write(&ca_path, &ca_pem).unwrap();
    let gw_port = free_ports(1)[0];
    let entry = |host: &str, sans: &str| {
        let name = host.split('.').next().unwrap();
        format!(
            "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: {name}, namespace: testns}}
spec:
  hosts: [{host}]
  ports: [{{number: 80, name: http, protocol: HTTP}}, {{number: 443, name: https, protocol: HTTPS}}]
  location: MESH_EXTERNAL
  resolution: STATIC
  endpoints: [{{address: 127.0.0.1, ports: {{https: {o}}}}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: {name}, namespace: testns}}
spec:
  hosts: [{host}]
  gateways: [istio-egressgateway]
  http:
  - match: [{{port: 80}}]
    route:
    - destination: {{host: {host}, port: {{number: 443}}}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: {name}, namespace: testns}}
spec:
  host: {host}
  trafficPolicy:
    portLevelSettings:
    - port: {{number: 443}}
      tls: {{mode: SIMPLE, sni: external.example.com, caCertificates: {ca}, subjectAltNames: [{sans}]}}
",
            o = origin.port(),
            ca = ca_path.display(),
        )
    };
    let rules = RulesDir::new(&[
        (
            "gateway.yaml",
            "apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: istio-egressgateway, namespace: testns}
spec:
  selector: {istio: egressgateway}
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: [external.example.com, pinned.example.com]
",
        ),
        (
            "external.yaml",
            &entry("external.example.com", "external.example.com"),
        ),
        (
            "pinned.yaml",
            &entry("pinned.example.com", "someone-else.example.com"),
        ),
    ]);
    let (gw, _pod) = start_gateway_as(
        "app=\"istio-egressgateway\"\nistio=\"egressgateway\"\n",
        rules.path(),
        &format!("80={gw_port},443={}", free_ports(1)[0]),
        &[],
    );
    let addr = SocketAddr::from(([127, 0, 0, 1], gw_port));
    let r = http_get(addr, "/news", &[("Host", "external.example.com")]).unwrap();
    assert_eq!(r.status, 200, "{}\n{}", r.body_text(), gw.stderr_text());
    assert_eq!(r.body_text(), "sni=external.example.com");
    let line = gw.wait_log(|l| l["path"] == "/news");
    assert_eq!(line["upstream"], origin.to_string(), "{line}");
    // The certificate does not carry the DestinationRule's subjectAltNames: refused.
    let r = http_get(addr, "/pinned", &[("Host", "pinned.example.com")]).unwrap();
    assert_eq!(r.status, 503, "{}", r.body_text());
}

/// A Gateway `edge` (HTTP on port 80, every host) and the VirtualService `app` bound to it with
/// these `http` routes (YAML at the list's indentation), then `---`.
fn edge_with_routes(http: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: edge, namespace: testns}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: 80, name: http, protocol: HTTP}}
    hosts: ['*']
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: app, namespace: testns}}
spec:
  hosts: ['*']
  gateways: [edge]
  http:
{http}---
"
    )
}

/// [`edge_with_routes`] sending everything to the echo backend `app` at `backend`.
fn http_edge(backend: SocketAddr) -> String {
    edge_with_routes("  - route: [{destination: {host: app, port: {number: 9080}}}]\n")
        + &endpoint("app", 9080, backend)
}

/// A `security.istio.io/v1` object.
fn security(kind: &str, ns: &str, name: &str, spec: &str) -> String {
    format!(
        "---\napiVersion: security.istio.io/v1\nkind: {kind}\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n{spec}\n"
    )
}

/// A TCP connection to `addr` from the local address `src` (any 127.0.0.0/8 address: the
/// loopback interface holds them all), blocking, with 10 s timeouts.
fn connect_from(src: &str, addr: SocketAddr) -> std::net::TcpStream {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let src: std::net::IpAddr = src.parse().unwrap();
    let s = rt
        .block_on(async {
            let sock = tokio::net::TcpSocket::new_v4()?;
            sock.bind(SocketAddr::new(src, 0))?;
            tokio::time::timeout(std::time::Duration::from_secs(5), sock.connect(addr))
                .await
                .map_err(|_| std::io::Error::other("connect timed out"))?
                .and_then(|c| c.into_std())
        })
        .unwrap();
    s.set_nonblocking(false).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    s
}

/// One HTTP/1.1 GET (`Connection: close`) to `addr` from the local address `src`.
fn get_from(src: &str, addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> HttpResp {
    use std::io::{Read, Write};
    let mut s = connect_from(src, addr);
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: shop.example.com\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("Connection: close\r\n\r\n");
    s.write_all(req.as_bytes()).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    parse_response(&raw).unwrap()
}

/// AuthorizationPolicy at the gateway, as Istio applies it: the policies of the gateway's
/// namespace whose `selector` matches the gateway pod's labels (`istio: ingressgateway`), the
/// namespace's selector-less ones and the root namespace's, decided before routing (403 `RBAC:
/// access denied`); `ipBlocks` is the client's address; `remoteIpBlocks` is too by default
/// (Envoy's `use_remote_address` at the edge: a client cannot claim an address in
/// `X-Forwarded-For`), and the entry the trusted proxy appended with `--num-trusted-proxies`.
/// A policy selecting other pods, or of another namespace, leaves the gateway alone.
#[test]
fn authorization_policies_select_the_gateway_pod() {
    let rt = rt();
    let backend = rt.block_on(spawn_http_echo("127.0.0.1:0".parse().unwrap(), "app"));
    let to_gateway = "  selector: {matchLabels: {istio: ingressgateway}}\n";
    let policies = [
        security(
            "AuthorizationPolicy",
            "testns",
            "deny-admin",
            &format!("{to_gateway}  action: DENY\n  rules: [{{to: [{{operation: {{paths: ['/admin*']}}}}]}}]"),
        ),
        security(
            "AuthorizationPolicy",
            "testns",
            "deny-client",
            &format!("{to_gateway}  action: DENY\n  rules: [{{from: [{{source: {{ipBlocks: [127.0.0.2/32]}}}}]}}]"),
        ),
        // Namespace-wide (no selector): the gateway's namespace's policies apply to it.
        security(
            "AuthorizationPolicy",
            "testns",
            "deny-remote",
            "  action: DENY\n  rules: [{from: [{source: {remoteIpBlocks: [203.0.113.0/24, 127.0.0.3/32]}}]}]",
        ),
        // The root namespace's, selecting the gateway.
        security(
            "AuthorizationPolicy",
            "remora-system",
            "deny-internal",
            &format!("{to_gateway}  action: DENY\n  rules: [{{to: [{{operation: {{paths: [/internal]}}}}]}}]"),
        ),
        // Neither selects the gateway: another pod's, another namespace's.
        security(
            "AuthorizationPolicy",
            "testns",
            "reviews-deny-all",
            "  selector: {matchLabels: {app: reviews}}\n  action: DENY\n  rules: [{}]",
        ),
        security(
            "AuthorizationPolicy",
            "shop",
            "shop-allow-nothing",
            "  {}",
        ),
    ]
    .concat();
    let rules = RulesDir::new(&[
        ("edge.yaml", &http_edge(backend)),
        ("policies.yaml", &policies),
    ]);
    let port = free_ports(1)[0];
    let (gw, _pod) = start_gateway(rules.path(), &format!("80={port}"), &[]);
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    type Case<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)], u16);
    let cases: &[Case] = &[
        ("127.0.0.1", "/productpage", &[], 200),
        ("127.0.0.1", "/admin/users", &[], 403),
        ("127.0.0.1", "/internal", &[], 403),
        // Only the client's own address counts at the edge by default.
        (
            "127.0.0.1",
            "/productpage",
            &[("x-forwarded-for", "203.0.113.7")],
            200,
        ),
        ("127.0.0.2", "/productpage", &[], 403),
        ("127.0.0.3", "/productpage", &[], 403),
        ("127.0.0.4", "/productpage", &[], 200),
    ];
    for (src, path, headers, want) in cases {
        let r = get_from(src, addr, path, headers);
        assert_eq!(
            r.status,
            *want,
            "{src} {path} {headers:?}: {}\n{}",
            r.body_text(),
            gw.stderr_text()
        );
        if *want == 403 {
            assert_eq!(r.body_text(), "RBAC: access denied", "{src} {path}");
        } else {
            assert_eq!(r.json()["server"], "app", "{src} {path}");
        }
    }
    gw.wait_stderr("request denied: denied by DENY policy testns/deny-admin rule 0");
    gw.wait_stderr("request denied: denied by DENY policy remora-system/deny-internal rule 0");
    let line = gw.wait_log(|v| v["path"] == "/admin/users");
    assert_eq!(line["status"], 403, "{line}");
    assert_eq!(
        line["error"], "rbac_access_denied_matched_policy[ns[testns]-policy[deny-admin]-rule[0]]",
        "{line}"
    );
    let m = gw.metrics_when("remora_authz_denied_total", &["kind=\"http\""], 4.0);
    assert_eq!(
        metric_value(&m, "remora_authz_denied_total", &["kind=\"http\""]),
        4.0,
        "{m}"
    );
    // The policies that do not select the gateway are said so, once each.
    let log = gw.wait_stderr("testns/reviews-deny-all");
    assert!(
        log.contains("selector does not select this pod (label app=reviews is \"istio-ingressgateway\" here)"),
        "{log}"
    );
    drop(gw);

    // One trusted proxy in front (a cloud load balancer): the address it appended.
    let port = free_ports(1)[0];
    let (gw, _pod) = start_gateway(
        rules.path(),
        &format!("80={port}"),
        &["--num-trusted-proxies=1".into()],
    );
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    for (xff, want) in [
        ("198.51.100.1, 203.0.113.7", 403),
        ("203.0.113.7, 198.51.100.1", 200),
        ("", 200),
    ] {
        let headers: &[(&str, &str)] = if xff.is_empty() {
            &[]
        } else {
            &[("x-forwarded-for", xff)]
        };
        let r = get_from("127.0.0.1", addr, "/productpage", headers);
        assert_eq!(
            r.status,
            want,
            "XFF {xff:?}: {}\n{}",
            r.body_text(),
            gw.stderr_text()
        );
    }
}

/// RequestAuthentication at the gateway with Istio's own sample JWKS and tokens, and Istio's
/// "require a JWT at the ingress" pattern (ALLOW `requestPrincipals: ["*"]`, both selecting
/// `istio: ingressgateway`): no token → 403, an invalid token → 401 with Envoy's
/// `www-authenticate`, Istio's demo token → 200 (the token header not passed on).
#[test]
fn request_authentication_and_request_principals_at_the_gateway() {
    let Some(dir) = remora_corpus::istio("jwt") else {
        return;
    };
    let read = |f: &str| {
        std::fs::read_to_string(dir.join(f))
            .unwrap()
            .trim()
            .to_string()
    };
    let (jwks, demo, groups) = (
        read("jwks.json"),
        read("demo.jwt"),
        read("groups-scope.jwt"),
    );
    // The demo token's claims with the other token's signature: not a valid signature.
    let forged = format!(
        "{}.{}",
        demo.rsplit_once('.').unwrap().0,
        groups.rsplit_once('.').unwrap().1
    );
    let rt = rt();
    let backend = rt.block_on(spawn_http_echo("127.0.0.1:0".parse().unwrap(), "app"));
    let to_gateway = "  selector: {matchLabels: {istio: ingressgateway}}\n";
    let policies = security(
        "RequestAuthentication",
        "testns",
        "ingress-jwt",
        &format!("{to_gateway}  jwtRules:\n  - issuer: testing@secure.istio.io\n    jwks: '{jwks}'"),
    ) + &security(
        "AuthorizationPolicy",
        "testns",
        "ingress-require-jwt",
        &format!("{to_gateway}  action: ALLOW\n  rules: [{{from: [{{source: {{requestPrincipals: ['*']}}}}]}}]"),
    );
    let rules = RulesDir::new(&[
        ("edge.yaml", &http_edge(backend)),
        ("policies.yaml", &policies),
    ]);
    let port = free_ports(1)[0];
    let (gw, _pod) = start_gateway(rules.path(), &format!("80={port}"), &[]);
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let r = get_from("127.0.0.1", addr, "/productpage", &[]);
    assert_eq!(
        r.status,
        403,
        "no token: {}\n{}",
        r.body_text(),
        gw.stderr_text()
    );
    assert_eq!(r.body_text(), "RBAC: access denied");
    let bad = format!("Bearer {forged}");
    let r = get_from(
        "127.0.0.1",
        addr,
        "/productpage",
        &[("authorization", &bad)],
    );
    assert_eq!(r.status, 401, "forged token: {}", r.body_text());
    assert!(
        r.header("www-authenticate")
            .is_some_and(|h| h.starts_with("Bearer realm=") && h.contains("invalid_token")),
        "{:?}",
        r.headers
    );
    let good = format!("Bearer {demo}");
    let r = get_from(
        "127.0.0.1",
        addr,
        "/productpage",
        &[("authorization", &good)],
    );
    assert_eq!(r.status, 200, "demo token: {}", r.body_text());
    let seen = r.json();
    assert_eq!(seen["server"], "app");
    assert!(
        seen["headers"].get("authorization").is_none(),
        "the verified token is not forwarded: {seen}"
    );
    gw.wait_stderr("refused by RequestAuthentication testns/ingress-jwt");
    let m = gw.metrics();
    assert!(
        metric_value(&m, "remora_jwt_rejected_total", &[]) >= 1.0,
        "{m}"
    );
}

/// AuthorizationPolicy on the gateway's `TCP` and TLS `PASSTHROUGH` servers: a connection the
/// policy denies (by client address and the gateway's listening port; by the ClientHello's
/// server name, `connection.sni`) is closed unanswered, counted, and logged with Envoy's
/// connection termination details; the others are served.
#[test]
fn tcp_and_passthrough_servers_are_authorized() {
    use std::io::{Read, Write};
    let rt = rt();
    let echo = rt.block_on(spawn_tcp_echo());
    let (api_crt, api_key) = cert("api.example.com");
    let (www_crt, www_key) = cert("www.example.com");
    let api = rt.block_on(spawn_tls_http(api_crt.clone(), api_key, "api"));
    let www = rt.block_on(spawn_tls_http(www_crt.clone(), www_key, "www"));
    let [tls_port, tcp_port] = [free_ports(1)[0], free_ports(1)[0]];
    let gateway = "apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: edge, namespace: testns}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 443, name: tls, protocol: TLS}
    hosts: ['*.example.com']
    tls: {mode: PASSTHROUGH}
  - port: {number: 31400, name: tcp, protocol: TCP}
    hosts: ['*']
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: tls, namespace: testns}
spec:
  hosts: ['*.example.com']
  gateways: [edge]
  tls:
  - match: [{sniHosts: [api.example.com]}]
    route: [{destination: {host: api-backend, port: {number: 443}}}]
  - match: [{sniHosts: [www.example.com]}]
    route: [{destination: {host: www-backend, port: {number: 443}}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: db, namespace: testns}
spec:
  hosts: ['*']
  gateways: [edge]
  tcp:
  - route: [{destination: {host: echo-backend, port: {number: 5000}}}]
";
    let policies = security(
        "AuthorizationPolicy",
        "testns",
        "tcp-guard",
        &format!(
            "  selector: {{matchLabels: {{istio: ingressgateway}}}}\n  action: DENY\n  rules:\n  - from: [{{source: {{ipBlocks: [127.0.0.2/32]}}}}]\n    to: [{{operation: {{ports: ['{tcp_port}']}}}}]\n  - when: [{{key: connection.sni, values: [www.example.com]}}]"
        ),
    );
    let rules = RulesDir::new(&[
        ("edge.yaml", gateway),
        (
            "backends.yaml",
            &[
                l4_endpoint("api-backend", 443, "TLS", api),
                l4_endpoint("www-backend", 443, "TLS", www),
                l4_endpoint("echo-backend", 5000, "TCP", echo),
            ]
            .join("---\n"),
        ),
        ("policies.yaml", &policies),
    ]);
    let (gw, _pod) = start_gateway(
        rules.path(),
        &format!("80={},443={tls_port},31400={tcp_port}", free_ports(1)[0]),
        &[],
    );
    let tcp = SocketAddr::from(([127, 0, 0, 1], tcp_port));
    let echoed = |src: &str| -> Vec<u8> {
        let mut s = connect_from(src, tcp);
        s.write_all(b"hello\n").unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 16];
        while got.len() < 6 {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
        got
    };
    assert_eq!(echoed("127.0.0.1"), b"hello\n", "{}", gw.stderr_text());
    assert_eq!(echoed("127.0.0.2"), b"", "denied by source address: closed");
    let line = gw.wait_log(|v| {
        v["kind"] == "tcp"
            && v["downstream"]
                .as_str()
                .is_some_and(|d| d.starts_with("127.0.0.2:"))
    });
    assert_eq!(
        line["connection_termination_details"],
        "rbac_access_denied_matched_policy[ns[testns]-policy[tcp-guard]-rule[0]]",
        "{line}"
    );
    // PASSTHROUGH: the SNI the gateway read decides.
    let tls = SocketAddr::from(([127, 0, 0, 1], tls_port));
    let roots = format!("{api_crt}{www_crt}");
    let (r, _) = https_try(tls, "api.example.com", &roots, "/", None)
        .unwrap_or_else(|e| panic!("api: {e}\n{}", gw.stderr_text()));
    assert_eq!((r.status, r.body_text()), (200, "api".to_string()));
    assert!(
        https_try(tls, "www.example.com", &roots, "/", None).is_err(),
        "www.example.com is denied by connection.sni"
    );
    gw.wait_log(|v| {
        v["kind"] == "tcp"
            && v["connection_termination_details"]
                == "rbac_access_denied_matched_policy[ns[testns]-policy[tcp-guard]-rule[1]]"
    });
    let m = gw.metrics_when("remora_authz_denied_total", &["kind=\"tcp\""], 2.0);
    assert_eq!(
        metric_value(&m, "remora_authz_denied_total", &["kind=\"tcp\""]),
        2.0,
        "{m}"
    );
}

/// The sidecar's route features at the gateway, from the same code: a fault abort, a route
/// `timeout` against a backend that never answers (504), header operations both ways, a
/// `corsPolicy` preflight answered at the gateway; and `GRPC` and `HTTP2` servers taking HTTP/2
/// with prior knowledge (h2c), as gRPC clients send it.
#[test]
fn sidecar_route_features_at_the_gateway_and_h2c() {
    use http_body_util::{BodyExt, Empty};
    let rt = rt();
    let backend = rt.block_on(spawn_http_echo("127.0.0.1:0".parse().unwrap(), "app"));
    // Accepts and never answers (the connections held until the test ends).
    let hang = rt.block_on(async {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = l.accept().await {
                if held.len() < 64 {
                    held.push(s);
                }
            }
        });
        addr
    });
    let rules = RulesDir::new(&[
        (
            "edge.yaml",
            "apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: edge, namespace: testns}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: ['*']
  - port: {number: 9090, name: grpc, protocol: GRPC}
    hosts: ['*']
  - port: {number: 8081, name: http2, protocol: HTTP2}
    hosts: ['*']
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: app, namespace: testns}
spec:
  hosts: ['*']
  gateways: [edge]
  http:
  - match: [{uri: {prefix: /teapot}}]
    fault: {abort: {httpStatus: 418, percentage: {value: 100}}}
    route: [{destination: {host: app, port: {number: 9080}}}]
  - match: [{uri: {prefix: /slow}}]
    timeout: 0.5s
    route: [{destination: {host: hang, port: {number: 9080}}}]
  - route: [{destination: {host: app, port: {number: 9080}}}]
    headers:
      request: {set: {x-gateway: edge}}
      response: {add: {x-served-by: gateway}}
    corsPolicy:
      allowOrigins: [{exact: 'https://shop.example.com'}]
      allowMethods: [GET]
",
        ),
        (
            "backends.yaml",
            &[endpoint("app", 9080, backend), endpoint("hang", 9080, hang)].join("---\n"),
        ),
    ]);
    let [http_port, grpc_port, h2_port] = [free_ports(1)[0], free_ports(1)[0], free_ports(1)[0]];
    let (gw, _pod) = start_gateway(
        rules.path(),
        &format!("80={http_port},9090={grpc_port},8081={h2_port}"),
        &[],
    );
    let addr = SocketAddr::from(([127, 0, 0, 1], http_port));
    let r = http_get(addr, "/teapot", &[]).unwrap();
    assert_eq!(
        r.status,
        418,
        "fault abort: {}\n{}",
        r.body_text(),
        gw.stderr_text()
    );
    let t = std::time::Instant::now();
    let r = http_get(addr, "/slow", &[]).unwrap();
    assert_eq!(r.status, 504, "route timeout: {}", r.body_text());
    assert!(
        t.elapsed() < std::time::Duration::from_secs(5),
        "{:?}",
        t.elapsed()
    );
    let r = http_get(addr, "/page", &[]).unwrap();
    assert_eq!(r.status, 200, "{}", r.body_text());
    assert_eq!(
        r.json()["headers"]["x-gateway"],
        "edge",
        "{}",
        r.body_text()
    );
    assert_eq!(r.header("x-served-by"), Some("gateway"), "{:?}", r.headers);
    let r = http_request(
        addr,
        "OPTIONS",
        "/page",
        &[
            ("origin", "https://shop.example.com"),
            ("access-control-request-method", "GET"),
        ],
        b"",
    )
    .unwrap();
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://shop.example.com"),
        "CORS preflight: {} {:?}",
        r.status,
        r.headers
    );
    assert!(
        !r.body_text().contains("\"server\""),
        "the preflight is answered at the gateway, not by the app: {}",
        r.body_text()
    );
    // h2c with prior knowledge on the GRPC and HTTP2 servers' ports.
    for port in [grpc_port, h2_port] {
        let to = SocketAddr::from(([127, 0, 0, 1], port));
        let (status, path) = rt.block_on(async move {
            let tcp = tokio::net::TcpStream::connect(to).await.unwrap();
            let (mut send, conn) = hyper::client::conn::http2::handshake(
                hyper_util::rt::TokioExecutor::new(),
                hyper_util::rt::TokioIo::new(tcp),
            )
            .await
            .unwrap();
            tokio::spawn(conn);
            let req = http::Request::get("http://grpc.example.com/h2c")
                .body(Empty::<bytes::Bytes>::new())
                .unwrap();
            let resp = send.send_request(req).await.unwrap();
            let status = resp.status().as_u16();
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
            (status, v["path"].as_str().unwrap_or("").to_string())
        });
        assert_eq!((status, path.as_str()), (200, "/h2c"), "port {port}");
    }
}

/// A plain HTTP/1.1 backend that counts its requests by path and answers each with the status
/// `answer(path, n)` gives for the path's `n`th request (from 1), `x-server` its name and the
/// name as the body.
struct Counted {
    addr: SocketAddr,
    hits: Arc<Mutex<std::collections::BTreeMap<String, u32>>>,
}

impl Counted {
    /// Requests whose path starts with `prefix`.
    fn hits(&self, prefix: &str) -> u32 {
        self.hits
            .lock()
            .unwrap()
            .iter()
            .filter(|(p, _)| p.starts_with(prefix))
            .map(|(_, n)| n)
            .sum()
    }
}

async fn spawn_counted(name: &'static str, answer: fn(&str, u32) -> u16) -> Counted {
    use http_body_util::{BodyExt, Full};
    use hyper::service::service_fn;
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let hits = Arc::new(Mutex::new(std::collections::BTreeMap::new()));
    let seen = hits.clone();
    tokio::spawn(async move {
        while let Ok((sock, _)) = l.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let path = req.uri().path().to_string();
                    let n = {
                        let mut m = seen.lock().unwrap();
                        let n = m.entry(path.clone()).or_insert(0u32);
                        *n += 1;
                        *n
                    };
                    async move {
                        let _ = req.into_body().collect().await;
                        hyper::Response::builder()
                            .status(answer(&path, n))
                            .header("x-server", name)
                            .body(Full::new(bytes::Bytes::from(name)))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(sock), svc)
                    .await;
            });
        }
    });
    Counted { addr, hits }
}

/// Waits (bounded) until `f` holds.
fn wait_until(what: &str, f: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(WAIT_S);
    while !f() {
        assert!(std::time::Instant::now() < deadline, "never: {what}");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// The traffic policies of the sidecar at the gateway, from the same request steps: `retries`
/// (an upstream failing the first three tries of a path with 503: 200 at the fourth, which
/// Istio's default of two retries would not reach; `attempts: 0` leaves one try), `mirror`
/// with `mirrorPercentage` (the shadow gets a copy of each request), the local `RateLimit` of
/// one route (429 `RL` once its bucket of 3 is empty, the other routes to the same host not
/// limited), and a DestinationRule's `ROUND_ROBIN` alternating over two endpoints until
/// `outlierDetection` ejects the one failing with 500.
#[test]
fn sidecar_traffic_policies_at_the_gateway() {
    let rt = rt();
    let flaky = rt.block_on(spawn_counted(
        "flaky",
        |_, n| if n <= 3 { 503 } else { 200 },
    ));
    let app = rt.block_on(spawn_counted("app", |_, _| 200));
    let shadow = rt.block_on(spawn_counted("shadow", |_, _| 200));
    let good = rt.block_on(spawn_counted("good", |_, _| 200));
    let bad = rt.block_on(spawn_counted("bad", |_, _| 500));
    let pool = format!(
        "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: pool, namespace: testns}}
spec:
  hosts: [pool.testns.svc.cluster.local]
  location: MESH_INTERNAL
  ports: [{{number: 9080, name: http, protocol: HTTP}}]
  resolution: STATIC
  endpoints:
  - {{address: 127.0.0.1, ports: {{http: {}}}}}
  - {{address: 127.0.0.1, ports: {{http: {}}}}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: pool, namespace: testns}}
spec:
  host: pool
  trafficPolicy:
    loadBalancer: {{simple: ROUND_ROBIN}}
    outlierDetection: {{consecutive5xxErrors: 3, interval: 1s, baseEjectionTime: 60s, maxEjectionPercent: 100}}
",
        good.addr.port(),
        bad.addr.port()
    );
    let rules = RulesDir::new(&[
        (
            "edge.yaml",
            &(edge_with_routes(
                "  - name: retried
    match: [{uri: {prefix: /retry}}]
    retries: {attempts: 3, retryOn: '503'}
    route: [{destination: {host: flaky, port: {number: 9080}}}]
  - name: once
    match: [{uri: {prefix: /once}}]
    retries: {attempts: 0}
    route: [{destination: {host: flaky, port: {number: 9080}}}]
  - name: mirrored
    match: [{uri: {prefix: /mirror}}]
    route: [{destination: {host: app, port: {number: 9080}}}]
    mirror: {host: shadow}
    mirrorPercentage: {value: 100}
  - name: limited
    match: [{uri: {prefix: /limited}}]
    route: [{destination: {host: app, port: {number: 9080}}}]
  - name: pool
    match: [{uri: {prefix: /pool}}]
    retries: {attempts: 0}
    route: [{destination: {host: pool, port: {number: 9080}}}]
",
            ) + "apiVersion: remora.dev/v1alpha1
kind: RateLimit
metadata: {name: limited, namespace: testns}
spec: {host: app, route: limited, requestsPerUnit: 1, unit: MINUTE, burst: 3}
"),
        ),
        (
            "backends.yaml",
            &[
                endpoint("flaky", 9080, flaky.addr),
                endpoint("app", 9080, app.addr),
                endpoint("shadow", 9080, shadow.addr),
                pool,
            ]
            .join("---\n"),
        ),
    ]);
    let http_port = free_ports(1)[0];
    let (gw, _pod) = start_gateway(rules.path(), &format!("80={http_port}"), &[]);
    let addr = SocketAddr::from(([127, 0, 0, 1], http_port));

    // retries: three 503s, then the fourth try answers.
    let r = http_get(addr, "/retry/a", &[]).unwrap();
    assert_eq!(r.status, 200, "{}\n{}", r.body_text(), gw.stderr_text());
    assert_eq!(flaky.hits("/retry/a"), 4, "1 try + 3 retries");
    // attempts: 0: one try, its 503 is the answer.
    let r = http_get(addr, "/once/a", &[]).unwrap();
    assert_eq!(r.status, 503, "{}", r.body_text());
    assert_eq!(flaky.hits("/once/a"), 1, "no retry");

    // mirror: each request's copy reaches the shadow; the caller's answer is the app's.
    for i in 0..5 {
        let r = http_request(addr, "POST", &format!("/mirror/{i}"), &[], b"copy me").unwrap();
        assert_eq!((r.status, r.header("x-server")), (200, Some("app")));
    }
    wait_until("5 mirror copies at the shadow", || {
        shadow.hits("/mirror/") == 5
    });
    assert_eq!(app.hits("/mirror/"), 5);

    // The route's bucket of 3 (1 a minute): the 4th is refused here, not at the app.
    for i in 0..3 {
        let r = http_get(addr, &format!("/limited/{i}"), &[]).unwrap();
        assert_eq!(r.status, 200, "request {i}: {}", r.body_text());
        assert_eq!(r.header("x-ratelimit-limit"), Some("3"), "{:?}", r.headers);
    }
    let r = http_get(addr, "/limited/3", &[]).unwrap();
    assert_eq!(r.status, 429, "{}", r.body_text());
    assert_eq!(
        r.header("x-ratelimit-remaining"),
        Some("0"),
        "{:?}",
        r.headers
    );
    assert_eq!(app.hits("/limited/"), 3);
    let line = gw.wait_log(|v| v["path"] == "/limited/3");
    assert_eq!(line["response_flags"], "RL", "{line}");
    // Another route to the same host is not limited.
    assert_eq!(http_get(addr, "/mirror/x", &[]).unwrap().status, 200);

    // ROUND_ROBIN: 6 requests alternate, 3 each; the third 500 ejects the bad endpoint.
    let mut statuses = Vec::new();
    for i in 0..6 {
        statuses.push(http_get(addr, &format!("/pool/{i}"), &[]).unwrap().status);
    }
    assert_eq!(
        (good.hits("/pool/"), bad.hits("/pool/")),
        (3, 3),
        "{statuses:?}"
    );
    // Ejected for 60 s: every request now goes to the good endpoint.
    for i in 6..16 {
        let r = http_get(addr, &format!("/pool/{i}"), &[]).unwrap();
        assert_eq!(
            (r.status, r.header("x-server")),
            (200, Some("good")),
            "request {i} after the ejection"
        );
    }
    assert_eq!(
        bad.hits("/pool/"),
        3,
        "the ejected endpoint got nothing more"
    );
    let metrics = gw.metrics();
    assert!(
        metric_value(
            &metrics,
            "remora_outlier_ejections_total",
            &["pool.testns.svc.cluster.local", "consecutive 5xx"]
        ) >= 1.0,
        "{metrics}"
    );
}
