//! DestinationRule `tls.mode` MUTUAL and ISTIO_MUTUAL, end to end: a real `remora-proxy run` on
//! loopback in front of real rustls servers that require client certificates (certificates made
//! with rcgen per test), asserting what the client sees, which client certificate the server saw,
//! the access-log response flag and the proxy's log lines; and ISTIO_MUTUAL reaching a plain-text
//! backend with its warning in `validate` output, the log, `/config_dump` and the metrics.

mod common;

use common::*;
use std::net::SocketAddr;
use std::sync::Arc;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn ca(cn: &str) -> (rcgen::Certificate, rcgen::KeyPair) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    p.distinguished_name.push(rcgen::DnType::CommonName, cn);
    (p.self_signed(&key).unwrap(), key)
}

/// A leaf certificate with common name `cn` and these SANs (`uri:` prefix = URI SAN).
fn leaf(
    cn: &str,
    sans: &[&str],
    issuer: &(rcgen::Certificate, rcgen::KeyPair),
) -> (rcgen::Certificate, rcgen::KeyPair) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name.push(rcgen::DnType::CommonName, cn);
    for s in sans {
        p.subject_alt_names.push(match s.strip_prefix("uri:") {
            Some(u) => rcgen::SanType::URI(u.try_into().unwrap()),
            None => rcgen::SanType::DnsName((*s).try_into().unwrap()),
        });
    }
    (p.signed_by(&key, &issuer.0, &issuer.1).unwrap(), key)
}

/// The files of one test: server CA, client certificates (good, from another CA, mismatched key).
struct Pki {
    dir: tempfile::TempDir,
    server_ca: (rcgen::Certificate, rcgen::KeyPair),
    client_ca: (rcgen::Certificate, rcgen::KeyPair),
}

const SERVER_NAME: &str = "api.example.test";
const SERVER_URI: &str = "spiffe://cluster.local/ns/shop/sa/api";

impl Pki {
    fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki {
            dir,
            server_ca: ca("remora test server CA"),
            client_ca: ca("remora test client CA"),
        };
        pki.write("server-ca.pem", &pki.server_ca.0.pem());
        let good = leaf(
            "remora-client",
            &["uri:spiffe://cluster.local/ns/testns/sa/client"],
            &pki.client_ca,
        );
        pki.write("client.pem", &good.0.pem());
        pki.write("client.key", &good.1.serialize_pem());
        let other_ca = ca("somebody else's CA");
        let wrong = leaf("intruder", &[], &other_ca);
        pki.write("wrong.pem", &wrong.0.pem());
        pki.write("wrong.key", &wrong.1.serialize_pem());
        // A key that belongs to no certificate here.
        pki.write(
            "mismatched.key",
            &rcgen::KeyPair::generate().unwrap().serialize_pem(),
        );
        pki.write(
            "garbage.key",
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        );
        pki
    }
    fn write(&self, name: &str, text: &str) {
        std::fs::write(self.dir.path().join(name), text).unwrap();
    }
    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).to_str().unwrap().to_string()
    }
}

/// An HTTPS server (HTTP/1.1 and HTTP/2 by ALPN, rustls, TLS 1.2 so that a rejected client certificate fails the
/// handshake itself) whose certificate is `api.example.test` + `SERVER_URI`, signed by the
/// server CA, and which requires a client certificate signed by the client CA. It answers 200
/// with `x-client-cn`: the common name of the client certificate it verified, and `x-version`.
async fn spawn_mtls_server(pki: &Pki, tls12_only: bool) -> SocketAddr {
    spawn_counting_server(pki, tls12_only, true).await.0
}

/// `spawn_mtls_server`, also returning the number of TLS connections it accepted.
async fn spawn_counting_server(
    pki: &Pki,
    tls12_only: bool,
    require_client_cert: bool,
) -> (SocketAddr, Arc<std::sync::atomic::AtomicU64>) {
    use http_body_util::Full;
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;
    let (cert, key) = leaf(
        SERVER_NAME,
        &[SERVER_NAME, &format!("uri:{SERVER_URI}")],
        &pki.server_ca,
    );
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(pki.client_ca.0.der().clone()).unwrap();
    let mut builder = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    );
    if !require_client_cert {
        builder = builder.allow_unauthenticated();
    }
    let client_verifier = builder.build().unwrap();
    static TLS12: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS12];
    let versions = if tls12_only {
        TLS12
    } else {
        rustls::DEFAULT_VERSIONS
    };
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .unwrap()
        .with_client_cert_verifier(client_verifier)
        .with_single_cert(
            vec![cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .unwrap();
    let mut config = config;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let accepted = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else { return };
            let acceptor = acceptor.clone();
            let count = count.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(s).await else {
                    return;
                };
                count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let cn = tls
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .and_then(|c| {
                        let (_, x) = x509_parser::parse_x509_certificate(c.as_ref()).ok()?;
                        let cn = x.subject().iter_common_name().next()?.as_str().ok()?;
                        Some(cn.to_string())
                    })
                    .unwrap_or_default();
                let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let cn = cn.clone();
                    let version = format!("{:?}", req.version());
                    async move {
                        Ok::<_, std::io::Error>(
                            hyper::Response::builder()
                                .status(200)
                                .header("x-client-cn", cn.as_str())
                                .header("x-version", version)
                                .body(Full::new(bytes::Bytes::from("mutual")))
                                .unwrap(),
                        )
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                )
                .serve_connection(TokioIo::new(tls), svc)
                .await;
            });
        }
    });
    (addr, accepted)
}

/// A ServiceEntry for `host` (port 9080) with one endpoint at `port` on loopback, and a
/// DestinationRule for it whose `tls` is `tls` (flow YAML).
fn host_rules(host: &str, port: u16, tls: &str) -> String {
    let name = host.split('.').next().unwrap();
    format!(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: {name}, namespace: testns}}\nspec:\n  hosts: [{host}]\n  location: MESH_EXTERNAL\n  ports: [{{number: 9080, name: http, protocol: HTTP}}]\n  resolution: STATIC\n  endpoints:\n  - {{address: 127.0.0.1, ports: {{http: {port}}}}}\n---\n\
         apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: {name}, namespace: testns}}\nspec:\n  host: {host}\n  trafficPolicy:\n    tls: {tls}\n"
    )
}

fn start(files: &[(&str, &str)]) -> (ProxyProc, RulesDir) {
    let rules = RulesDir::new(files);
    let mut o = ProxyOpts::new(rules.path());
    o.fixed_outbound = Some("127.0.0.1:9080".parse().unwrap());
    let mut p = ProxyProc::start(o);
    p.wait_ready();
    (p, rules)
}

fn get(p: &ProxyProc, host: &str, path: &str) -> HttpResp {
    let h = format!("{host}:9080");
    http_get(p.ports.outbound_addr(), path, &[("Host", h.as_str())]).unwrap()
}

fn flag(p: &ProxyProc, path: &str) -> serde_json::Value {
    p.wait_log(|l| l["path"] == path)["response_flags"].clone()
}

#[test]
fn mutual_presents_the_client_certificate_and_checks_the_server() {
    let rt = rt();
    let pki = Pki::new();
    let port = rt.block_on(spawn_mtls_server(&pki, true));
    let ca = pki.path("server-ca.pem");
    let mutual = |cert: &str, key: &str, extra: &str| {
        format!(
            "{{mode: MUTUAL, caCertificates: {ca}, clientCertificate: {}, privateKey: {}{extra}}}",
            pki.path(cert),
            pki.path(key)
        )
    };
    let port = port.port();
    let files = [
        // The right client certificate; the SNI names the server's certificate.
        host_rules(
            "good.example.test",
            port,
            &mutual("client.pem", "client.key", &format!(", sni: {SERVER_NAME}")),
        ),
        // No `sni`: the request's host is the SNI, which the certificate does not carry, but
        // `subjectAltNames` replaces the hostname check (Istio's semantics).
        host_rules(
            "san.example.test",
            port,
            &mutual(
                "client.pem",
                "client.key",
                &format!(", subjectAltNames: [\"{SERVER_URI}\"]"),
            ),
        ),
        // The same without `subjectAltNames`: the SNI check fails.
        host_rules(
            "nosan.example.test",
            port,
            &mutual("client.pem", "client.key", ""),
        ),
        // A name the server's certificate does not carry.
        host_rules(
            "badsan.example.test",
            port,
            &mutual(
                "client.pem",
                "client.key",
                &format!(
                    ", sni: {SERVER_NAME}, subjectAltNames: [spiffe://cluster.local/ns/shop/sa/other]"
                ),
            ),
        ),
        // SIMPLE: no client certificate; the server requires one.
        host_rules(
            "nocert.example.test",
            port,
            &format!("{{mode: SIMPLE, caCertificates: {ca}, sni: {SERVER_NAME}}}"),
        ),
        // A client certificate from a CA the server does not trust.
        host_rules(
            "wrong.example.test",
            port,
            &mutual("wrong.pem", "wrong.key", &format!(", sni: {SERVER_NAME}")),
        ),
        // A CA that did not sign the server's certificate, but insecureSkipVerify: accepted (the
        // client certificate is still presented).
        host_rules(
            "insecure.example.test",
            port,
            &format!(
                "{{mode: MUTUAL, caCertificates: {}, clientCertificate: {}, privateKey: {}, insecureSkipVerify: true, subjectAltNames: [nobody.test]}}",
                pki.path("client.pem"),
                pki.path("client.pem"),
                pki.path("client.key")
            ),
        ),
        // A key that does not belong to the certificate; a key file that is not a key; none.
        host_rules(
            "mismatch.example.test",
            port,
            &mutual("client.pem", "mismatched.key", &format!(", sni: {SERVER_NAME}")),
        ),
        host_rules(
            "garbage.example.test",
            port,
            &mutual("client.pem", "garbage.key", &format!(", sni: {SERVER_NAME}")),
        ),
        host_rules(
            "missing.example.test",
            port,
            &mutual("client.pem", "absent.key", &format!(", sni: {SERVER_NAME}")),
        ),
    ];
    let named: Vec<(String, &str)> = files
        .iter()
        .enumerate()
        .map(|(i, f)| (format!("r{i}.yaml"), f.as_str()))
        .collect();
    let named: Vec<(&str, &str)> = named.iter().map(|(n, f)| (n.as_str(), *f)).collect();
    let (p, _rules) = start(&named);

    let r = get(&p, "good.example.test", "/good");
    assert_eq!(r.status, 200, "{}", r.body_text());
    assert_eq!(r.body_text(), "mutual");
    assert_eq!(r.header("x-client-cn"), Some("remora-client"));
    // A second request (a reused or a new connection) works the same.
    let r = get(&p, "good.example.test", "/good2");
    assert_eq!(r.header("x-client-cn"), Some("remora-client"));

    let r = get(&p, "san.example.test", "/san");
    assert_eq!(r.status, 200, "{}", r.body_text());
    assert_eq!(r.header("x-client-cn"), Some("remora-client"));
    let r = get(&p, "san.example.test", "/san2");
    assert_eq!(r.status, 200, "{}", r.body_text());

    let r = get(&p, "insecure.example.test", "/insecure");
    assert_eq!(r.status, 200, "{}", r.body_text());
    assert_eq!(r.header("x-client-cn"), Some("remora-client"));

    for (host, path) in [
        ("nosan.example.test", "/nosan"),
        ("badsan.example.test", "/badsan"),
        ("nocert.example.test", "/nocert"),
        ("wrong.example.test", "/wrong"),
        ("mismatch.example.test", "/mismatch"),
        ("garbage.example.test", "/garbage"),
        ("missing.example.test", "/missing"),
    ] {
        let r = get(&p, host, path);
        assert_eq!(r.status, 503, "{host}: {}", r.body_text());
        assert_eq!(flag(&p, path), "UF", "{host}");
    }
    // Files that cannot be used: one log line naming the file and the reason.
    let l = p.wait_stderr("does not belong to clientCertificate");
    assert!(l.contains(&pki.path("mismatched.key")), "{l}");
    assert!(l.contains("mismatch.example.test"), "{l}");
    let l = p.wait_stderr("garbage.key");
    assert!(l.contains("privateKey"), "{l}");
    let l = p.wait_stderr("absent.key");
    assert!(l.contains("cannot read"), "{l}");
    // The server's certificate without the wanted name: the handshake error says which.
    let log = p.wait_log(|l| l["path"] == "/badsan");
    let e = log.to_string();
    assert!(
        e.contains("none of subjectAltNames")
            || p.stderr_text().contains("none of subjectAltNames"),
        "{e}"
    );
    // Nothing reached the server in plain text: it only speaks TLS, and every success above
    // carried the client certificate's name.
}

/// With TLS 1.3 the server judges the client certificate after the client's handshake is done:
/// a refused certificate surfaces on the first read, not at connect. Still never plain text.
#[test]
fn tls13_server_refusing_the_client_certificate_fails_the_request() {
    let rt = rt();
    let pki = Pki::new();
    let port = rt.block_on(spawn_mtls_server(&pki, false)).port();
    let ca = pki.path("server-ca.pem");
    let m = |cert: &str, key: &str| {
        format!(
            "{{mode: MUTUAL, caCertificates: {ca}, sni: {SERVER_NAME}, clientCertificate: {}, privateKey: {}}}",
            pki.path(cert),
            pki.path(key)
        )
    };
    let good = host_rules("good.example.test", port, &m("client.pem", "client.key"));
    let wrong = host_rules("wrong.example.test", port, &m("wrong.pem", "wrong.key"));
    let (p, _rules) = start(&[("a.yaml", good.as_str()), ("b.yaml", wrong.as_str())]);
    let r = get(&p, "good.example.test", "/good13");
    assert_eq!(r.status, 200, "{}", r.body_text());
    assert_eq!(r.header("x-client-cn"), Some("remora-client"));
    let r = get(&p, "wrong.example.test", "/wrong13");
    let f = flag(&p, "/wrong13");
    println!("TLS 1.3, refused client certificate: {} {f}", r.status);
    assert_eq!(r.status, 503, "{}", r.body_text());
    assert_eq!(f, "UC");
    assert_ne!(r.header("x-client-cn"), Some("intruder"));
}

/// HTTP/2 upstream (the port's protocol is HTTP2): ALPN h2 over mutual TLS, without and with
/// `subjectAltNames` (remora's certificate check on each new connection).
#[test]
fn mutual_tls_carries_http2_upstream() {
    let rt = rt();
    let pki = Pki::new();
    let port = rt.block_on(spawn_mtls_server(&pki, false)).port();
    let ca = pki.path("server-ca.pem");
    let rules = |host: &str, extra: &str| {
        host_rules(
            host,
            port,
            &format!(
                "{{mode: MUTUAL, caCertificates: {ca}, sni: {SERVER_NAME}, clientCertificate: {}, privateKey: {}{extra}}}",
                pki.path("client.pem"),
                pki.path("client.key")
            ),
        )
        .replace("protocol: HTTP}", "protocol: HTTP2}")
    };
    let a = rules("native.example.test", "");
    let b = rules(
        "checked.example.test",
        &format!(", subjectAltNames: [{SERVER_NAME}]"),
    );
    let (p, _rules) = start(&[("a.yaml", a.as_str()), ("b.yaml", b.as_str())]);
    for (host, path) in [
        ("native.example.test", "/h2native"),
        ("checked.example.test", "/h2checked"),
        ("checked.example.test", "/h2checked2"),
    ] {
        let r = get(&p, host, path);
        assert_eq!(r.status, 200, "{host}: {}", r.body_text());
        assert_eq!(r.header("x-version"), Some("HTTP/2.0"), "{host}");
        assert_eq!(r.header("x-client-cn"), Some("remora-client"), "{host}");
    }
}

/// SIMPLE checks `subjectAltNames` too (no client certificate; the server does not ask for one).
#[test]
fn simple_checks_subject_alt_names() {
    let rt = rt();
    let pki = Pki::new();
    let port = rt
        .block_on(spawn_counting_server(&pki, false, false))
        .0
        .port();
    let ca = pki.path("server-ca.pem");
    let simple =
        |san: &str| format!("{{mode: SIMPLE, caCertificates: {ca}, subjectAltNames: [\"{san}\"]}}");
    let ok = host_rules("ok.example.test", port, &simple(SERVER_URI));
    let bad = host_rules(
        "bad.example.test",
        port,
        &simple("spiffe://cluster.local/ns/shop/sa/other"),
    );
    let plain = host_rules(
        "plain.example.test",
        port,
        &format!("{{mode: SIMPLE, caCertificates: {ca}}}"),
    );
    let (p, _rules) = start(&[
        ("a.yaml", ok.as_str()),
        ("b.yaml", bad.as_str()),
        ("c.yaml", plain.as_str()),
    ]);
    // The SNI (ok.example.test) is not in the certificate; the URI SAN is: accepted.
    let r = get(&p, "ok.example.test", "/simple-san");
    assert_eq!(r.status, 200, "{}", r.body_text());
    assert_eq!(r.body_text(), "mutual");
    assert_eq!(r.header("x-client-cn"), Some(""));
    let r = get(&p, "bad.example.test", "/simple-badsan");
    assert_eq!(r.status, 503, "{}", r.body_text());
    assert_eq!(flag(&p, "/simple-badsan"), "UF");
    // Without subjectAltNames the SNI must match: it does not.
    let r = get(&p, "plain.example.test", "/simple-sni");
    assert_eq!(r.status, 503, "{}", r.body_text());
    assert_eq!(flag(&p, "/simple-sni"), "UF");
}

#[test]
fn istio_mutual_without_identity_is_plain_text_and_says_so() {
    let rt = rt();
    let echo = rt.block_on(spawn_http_echo("127.0.0.1:0".parse().unwrap(), "plain"));
    let rules = format!(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: reviews, namespace: shop}}\nspec:\n  hosts: [reviews.shop.svc.cluster.local]\n  location: MESH_INTERNAL\n  ports: [{{number: 9080, name: http, protocol: HTTP}}]\n  resolution: STATIC\n  endpoints:\n  - {{address: 127.0.0.1, ports: {{http: {}}}, labels: {{version: v1}}}}\n---\n\
         apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: reviews, namespace: shop}}\nspec:\n  host: reviews.shop.svc.cluster.local\n  trafficPolicy:\n    tls: {{mode: ISTIO_MUTUAL}}\n  subsets:\n  - name: v1\n    labels: {{version: v1}}\n",
        echo.port()
    );
    let want = "DestinationRule shop/reviews: spec.trafficPolicy.tls.mode ISTIO_MUTUAL: this proxy has no workload identity (--ca-address off); traffic to reviews.shop.svc.cluster.local goes in plain text between sidecars";

    // The linter: ISTIO_MUTUAL is mesh mTLS, nothing to warn about offline.
    let ctx = remora_proxy::rules::LoadContext::default();
    let report = remora_model::lint::run_files(&[("r.yaml", rules.as_str())], &ctx);
    assert!(report.is_ok(), "{report}");
    let text = report.to_string();
    assert_eq!(text.matches("ISTIO_MUTUAL").count(), 0, "{text}");

    let (p, _dir) = start(&[("r.yaml", rules.as_str())]);
    // `remora-proxy validate DIR`: exit 0, no warning.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_remora-proxy"))
        .arg("validate")
        .arg(_dir.path())
        .env_remove("POD_NAMESPACE")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(!stdout.contains("ISTIO_MUTUAL"), "{stdout}");
    let r = get(&p, "reviews.shop.svc.cluster.local", "/plain");
    assert_eq!(r.status, 200, "{}", r.body_text());
    assert_eq!(r.header("x-server"), Some("plain"));
    let r = get(&p, "reviews.shop.svc.cluster.local", "/plain2");
    assert_eq!(r.status, 200);
    // One warn line for the destination, however many requests.
    let l = p.wait_stderr(want);
    assert!(l.contains("WARN"), "{l}");
    assert_eq!(
        p.stderr_text().matches(want).count(),
        1,
        "{}",
        p.stderr_text()
    );
    // The admin view shows the effective mode.
    let dump = http_get(p.ports.admin_addr(), "/config_dump", &[]).unwrap();
    assert_eq!(dump.status, 200);
    let dests = dump.json()["policies"]["destinations"].clone();
    let d = dests
        .as_array()
        .and_then(|a| {
            a.iter()
                .find(|d| d["host"] == "reviews.shop.svc.cluster.local")
        })
        .unwrap_or_else(|| panic!("{dests:#}"));
    assert_eq!(
        d["tls"], "ISTIO_MUTUAL (plain text: no workload identity)",
        "{d:#}"
    );
    assert_eq!(d["tls_error"], serde_json::Value::Null, "{d:#}");
    let m = p.metrics();
    assert_eq!(
        metric_value(&m, "remora_tls_mesh_plaintext_destinations", &[]),
        1.0,
        "{m}"
    );
}

#[test]
fn bookinfo_all_mtls_rules_validate_without_warnings() {
    let path = remora_corpus::require!("networking/destination-rule-all-mtls.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    let ctx = remora_proxy::rules::LoadContext::default();
    let report = remora_model::lint::run_files(&[("all-mtls.yaml", text.as_str())], &ctx);
    assert!(report.is_ok(), "{report}");
    assert!(report.warnings.is_empty(), "{report}");
    // A proxy without a workload identity would send each in plain text, and says so per rule.
    let rules = text.matches("kind: DestinationRule").count();
    assert!(rules >= 4, "{rules}");
    let inputs = remora_model::rules::load::Inputs {
        dir: std::path::PathBuf::from("memory"),
        files: vec![("all-mtls.yaml".to_string(), text.into_bytes())],
        skipped: Vec::new(),
        hash: String::new(),
    };
    let decoded = remora_model::rules::load::decode_inputs(&inputs, &ctx);
    let mtls =
        remora_model::lint::policy::istio_mutual_without_identity(&decoded.destination_rules);
    assert_eq!(mtls.len(), rules, "{mtls:#?}");
    for host in ["productpage", "reviews", "ratings", "details"] {
        assert!(
            mtls.iter().any(|w| w.to_string().contains(&format!(
                "traffic to {host}.default.svc.cluster.local goes in plain text between sidecars"
            ))),
            "{host}: {mtls:#?}"
        );
    }
}

/// Measurement, not a test: sequential requests through the proxy to the mutual-TLS server,
/// without and with `subjectAltNames` (then remora verifies each new server certificate once with
/// a check connection of its own; pingora pools the connections in both cases). Run with
/// `cargo test -p remora-proxy --release --test tls_modes -- --ignored --nocapture`.
#[test]
#[ignore]
fn bench_mutual_tls_paths() {
    let rt = rt();
    let pki = Pki::new();
    let ca = pki.path("server-ca.pem");
    let tls = |extra: &str| {
        format!(
            "{{mode: MUTUAL, caCertificates: {ca}, sni: {SERVER_NAME}, clientCertificate: {}, privateKey: {}{extra}}}",
            pki.path("client.pem"),
            pki.path("client.key")
        )
    };
    const N: usize = 300;
    for (label, extra) in [
        ("MUTUAL", String::new()),
        (
            "MUTUAL + subjectAltNames (remora's check)",
            format!(", subjectAltNames: [{SERVER_NAME}]"),
        ),
    ] {
        let (addr, accepted) = rt.block_on(spawn_counting_server(&pki, false, true));
        let rules = host_rules("bench.example.test", addr.port(), &tls(&extra));
        let (p, _rules) = start(&[("a.yaml", rules.as_str())]);
        let t = std::time::Instant::now();
        for i in 0..N {
            let r = get(&p, "bench.example.test", &format!("/b{i}"));
            assert_eq!(r.status, 200);
        }
        let el = t.elapsed();
        println!(
            "{label}: {N} sequential requests in {:.0} ms ({:.0} µs each), {} TLS connections at the server",
            el.as_secs_f64() * 1e3,
            el.as_secs_f64() * 1e6 / N as f64,
            accepted.load(std::sync::atomic::Ordering::Relaxed)
        );
    }
}
