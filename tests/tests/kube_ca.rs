//! Contract tests of the mesh CA in the real `remora-webhook serve` process against recorded
//! Kubernetes API answers (`tests/fixtures/kube-api/ca/`): a real tonic gRPC client over TLS,
//! trusting the root the CA published, sends real CSRs (rcgen, P-256) to
//! `istio.v1.auth.IstioCertificateService/CreateCertificate`. A valid token gets a chain for
//! exactly its SPIFFE identity; wrong audience, expired token, another namespace's identity, no
//! token and a DNS SAN are refused with the reason in the gRPC message, a log line and a metric.
//! Two processes starting against one API settle on one root (the 409 path); a plug-in
//! `cacerts` wins over a generated root.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use remora_e2e::apiserver::{RecordedApi, Reply};
use remora_e2e::netns::Proc;
use remora_webhook::ca::grpc::{IstioCertificateRequest, IstioCertificateResponse};
use remora_webhook::ca::sign;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use serde_json::{json, Value};
use tonic::Code;

const NS: &str = "remora-system";
const SECRETS: &str = "/api/v1/namespaces/remora-system/secrets";
const ROOT_SECRET: &str = "/api/v1/namespaces/remora-system/secrets/remora-ca";
const PLUGIN_SECRET: &str = "/api/v1/namespaces/remora-system/secrets/cacerts";
const DEFAULT_CMS: &str = "/api/v1/namespaces/default/configmaps";
const OTHER_CM: &str = "/api/v1/namespaces/other/configmaps/remora-ca-root-cert";
const TOKENREVIEWS: &str = "/apis/authentication.k8s.io/v1/tokenreviews";
const CA_NAME: &str = "remora-ca.remora-system.svc";
const HTTPBIN: &str = "spiffe://cluster.local/ns/default/sa/httpbin";
const POD: &str = "httpbin-7d9c5b8f6-x2k4q";
/// The cap the processes run with (`--ca-max-cert-ttl 12h`).
const CAP: Duration = Duration::from_secs(12 * 3600);
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

/// A Secret as the API server returns it, holding `data` (PEM texts).
fn secret_body(name: &str, data: &[(&str, String)], rv: &str) -> Value {
    let data: serde_json::Map<String, Value> = data
        .iter()
        .map(|(k, v)| (k.to_string(), Value::String(b64(v.as_bytes()))))
        .collect();
    json!({
        "kind": "Secret", "apiVersion": "v1",
        "metadata": {"name": name, "namespace": NS, "resourceVersion": rv,
                     "uid": "6f1e2d3c-4b5a-4969-8877-665544332211",
                     "creationTimestamp": "2026-11-22T08:00:00Z"},
        "type": "Opaque",
        "data": data
    })
}

/// The recorded API with the token reviews and the root publication loaded.
async fn api() -> RecordedApi {
    let api = RecordedApi::start().await.unwrap();
    api.load(&fixture("tokenreviews.json")).unwrap();
    api.load(&fixture("root-publication.json")).unwrap();
    api
}

/// A running `remora-webhook serve` with the CA on; stopped on drop.
struct CaProc {
    proc: Proc,
    ca: std::net::SocketAddr,
    web: std::net::SocketAddr,
    web_ca_pem: String,
    _dir: tempfile::TempDir,
}

impl CaProc {
    fn start(api: &RecordedApi) -> CaProc {
        CaProc::start_with(api, &[])
    }

    /// With extra `serve` flags.
    fn start_with(api: &RecordedApi, extra: &[&str]) -> CaProc {
        let bin = remora_e2e::admission::default_bin_dir().join("remora-webhook");
        assert!(
            bin.exists(),
            "{} is missing: build it first (cargo build -p remora-webhook)",
            bin.display()
        );
        let dir = tempfile::tempdir().unwrap();
        // The admission listener's own certificate (for /metrics), from files.
        let web_cert = remora_e2e::admission::issue_serving_cert("kube_ca webhook CA").unwrap();
        std::fs::write(dir.path().join("tls.crt"), &web_cert.cert_pem).unwrap();
        std::fs::write(dir.path().join("tls.key"), &web_cert.key_pem).unwrap();
        let ports = remora_e2e::ports::free_ports(2);
        let ca: std::net::SocketAddr = ([127, 0, 0, 1], ports[0]).into();
        let web: std::net::SocketAddr = ([127, 0, 0, 1], ports[1]).into();
        let mut cmd = std::process::Command::new(&bin);
        cmd.arg("serve")
            .args(["--listen", &web.to_string(), "--ca-addr", &ca.to_string()])
            .arg("--tls-cert")
            .arg(dir.path().join("tls.crt"))
            .arg("--tls-key")
            .arg(dir.path().join("tls.key"))
            .arg("--config")
            .arg(dir.path().join("absent.yaml"))
            .args(["--kube-url", &api.url(), "--ca-max-cert-ttl", "12h"])
            .args(extra)
            .env_remove("POD_NAMESPACE")
            .env("REMORA_LOG", "info");
        for (k, _) in std::env::vars() {
            if k.starts_with("REMORA_CA")
                || k == "REMORA_TRUST_DOMAIN"
                || k == "REMORA_ROOT_NAMESPACE"
                || k == "REMORA_INJECT_CA_ADDRESS"
            {
                cmd.env_remove(k);
            }
        }
        let proc = Proc::spawn("remora-webhook", cmd, dir.path().join("webhook.log")).unwrap();
        CaProc {
            proc,
            ca,
            web,
            web_ca_pem: web_cert.ca_pem,
            _dir: dir,
        }
    }

    /// Waits (bounded) until `cond` holds, failing with the log when the process exits.
    async fn wait_for(&mut self, what: &str, mut cond: impl FnMut() -> bool) {
        let deadline = Instant::now() + PATIENCE;
        while !cond() {
            assert!(
                self.proc.exited().is_none(),
                "exited while waiting for {what}:\n{}",
                self.proc.log_tail(30)
            );
            assert!(
                Instant::now() < deadline,
                "no {what} within {PATIENCE:?}:\n{}",
                self.proc.log_tail(30)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A gRPC client trusting `root_pem`, connected (retrying while the CA comes up).
    async fn client(&mut self, root_pem: &str) -> CaClient {
        let deadline = Instant::now() + PATIENCE;
        loop {
            match CaClient::connect(self.ca, root_pem).await {
                Ok(c) => return c,
                Err(e) => {
                    assert!(
                        self.proc.exited().is_none(),
                        "exited:\n{}",
                        self.proc.log_tail(30)
                    );
                    assert!(
                        Instant::now() < deadline,
                        "no gRPC connection to the CA: {e:#}\n{}",
                        self.proc.log_tail(30)
                    );
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    async fn metrics(&self) -> Vec<remora_e2e::client::Sample> {
        let cfg = remora_webhook::client::client_config(&[self.web_ca_pem.as_bytes()]).unwrap();
        let mut c = remora_webhook::client::Client::connect(
            self.web,
            "remora-webhook.remora-system.svc",
            cfg,
        )
        .await
        .unwrap();
        let (code, body) = c.get("/metrics").await.unwrap();
        assert_eq!(code, 200);
        remora_e2e::client::parse_prometheus(&String::from_utf8_lossy(&body))
    }

    /// A pod of namespace `default` as this process's injector patches it.
    async fn injected(&self) -> Value {
        let cfg = remora_webhook::client::client_config(&[self.web_ca_pem.as_bytes()]).unwrap();
        let mut c = remora_webhook::client::Client::connect(
            self.web,
            "remora-webhook.remora-system.svc",
            cfg,
        )
        .await
        .unwrap();
        let pod = json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"generateName": "httpbin-", "labels": {"app": "httpbin"}},
            "spec": {"serviceAccountName": "httpbin", "containers": [{"name": "httpbin", "image": "httpbin"}]}});
        let review = remora_webhook::review::review_for(&pod, "uid-ca", "default");
        let (code, body) = c
            .post(
                "/inject",
                bytes::Bytes::from(serde_json::to_vec(&review).unwrap()),
            )
            .await
            .unwrap();
        assert_eq!(code, 200);
        let v: Value = serde_json::from_slice(&body).unwrap();
        let patch = remora_webhook::review::response_patch(&v).unwrap().unwrap();
        let mut out = pod;
        json_patch::patch(&mut out, &patch).unwrap();
        out
    }

    /// Stops the process and returns its log lines as JSON objects.
    fn stop_and_log(&mut self) -> Vec<Value> {
        self.proc.stop(Duration::from_secs(10));
        std::fs::read_to_string(&self.proc.log)
            .unwrap()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }
}

/// A tonic client of the CA over TLS (rustls, ring), trusting one root, verifying the name
/// `remora-ca.remora-system.svc`.
struct CaClient {
    grpc: tonic::client::Grpc<tonic::transport::Channel>,
}

impl CaClient {
    async fn connect(addr: std::net::SocketAddr, root_pem: &str) -> anyhow::Result<CaClient> {
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(root_pem.as_bytes()) {
            roots.add(c?)?;
        }
        let mut tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
        tls.alpn_protocols = vec![b"h2".to_vec()];
        let connector = tokio_rustls::TlsConnector::from(Arc::new(tls));
        let service = tower::service_fn(move |_: http::Uri| {
            let connector = connector.clone();
            async move {
                let tcp = tokio::net::TcpStream::connect(addr).await?;
                tcp.set_nodelay(true)?;
                let name = rustls_pki_types::ServerName::try_from(CA_NAME).unwrap();
                let tls = connector.connect(name, tcp).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tls))
            }
        });
        let channel = tokio::time::timeout(
            Duration::from_secs(10),
            tonic::transport::Endpoint::from_static("http://remora-ca.remora-system.svc:15012")
                .connect_with_connector(service),
        )
        .await??;
        Ok(CaClient {
            grpc: tonic::client::Grpc::new(channel),
        })
    }

    async fn create(
        &mut self,
        token: Option<&str>,
        csr: &str,
        validity_seconds: i64,
    ) -> Result<Vec<String>, tonic::Status> {
        let mut req = tonic::Request::new(IstioCertificateRequest {
            csr: csr.to_string(),
            validity_duration: validity_seconds,
            metadata: None,
        });
        if let Some(t) = token {
            req.metadata_mut()
                .insert("authorization", format!("Bearer {t}").parse().unwrap());
        }
        req.set_timeout(Duration::from_secs(20));
        self.grpc
            .ready()
            .await
            .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        let path = http::uri::PathAndQuery::from_static(
            "/istio.v1.auth.IstioCertificateService/CreateCertificate",
        );
        let codec =
            tonic_prost::ProstCodec::<IstioCertificateRequest, IstioCertificateResponse>::default();
        self.grpc
            .unary(req, path, codec)
            .await
            .map(|r| r.into_inner().cert_chain)
    }
}

/// A P-256 CSR as an Istio agent makes it: no subject, the SANs given (URIs for `spiffe://`,
/// DNS names otherwise).
fn csr(sans: &[&str]) -> String {
    csr_with(&rcgen::KeyPair::generate().unwrap(), sans)
}

/// `csr` for the key `key`.
fn csr_with(key: &rcgen::KeyPair, sans: &[&str]) -> String {
    let mut p = rcgen::CertificateParams::default();
    p.distinguished_name = rcgen::DistinguishedName::new();
    p.subject_alt_names = sans
        .iter()
        .map(|s| {
            if s.starts_with("spiffe://") {
                rcgen::SanType::URI(s.to_string().try_into().unwrap())
            } else {
                rcgen::SanType::DnsName(s.to_string().try_into().unwrap())
            }
        })
        .collect();
    p.serialize_request(key).unwrap().pem().unwrap()
}

fn posts_to(api: &RecordedApi, path: &str) -> Vec<Value> {
    api.requests()
        .into_iter()
        .filter(|s| s.method == "POST" && s.path() == path)
        .filter_map(|s| s.body)
        .collect()
}

fn puts_to(api: &RecordedApi, path: &str) -> Vec<Value> {
    api.requests()
        .into_iter()
        .filter(|s| s.method == "PUT" && s.path() == path)
        .filter_map(|s| s.body)
        .collect()
}

fn der(pem: &str) -> CertificateDer<'static> {
    CertificateDer::from_pem_slice(pem.as_bytes()).unwrap()
}

/// Checks an issued chain: leaf for exactly `identity`, lifetime ≤ `cap` (= `want` seconds),
/// the root last, verifying against `root_pem`.
fn check_chain(chain: &[String], identity: &str, want_seconds: i64, root_pem: &str) {
    assert_eq!(chain.last().map(String::as_str), Some(root_pem));
    let leaf_der = der(&chain[0]);
    let (_, leaf) = x509_parser::parse_x509_certificate(leaf_der.as_ref()).unwrap();
    let san = leaf.subject_alternative_name().unwrap().unwrap().value;
    assert_eq!(
        san.general_names,
        vec![x509_parser::extensions::GeneralName::URI(identity)]
    );
    assert!(!leaf.is_ca());
    let v = leaf.validity();
    let life = (v.not_after.to_datetime() - v.not_before.to_datetime()).whole_seconds();
    assert_eq!(life, want_seconds);
    assert!(life <= CAP.as_secs() as i64);
    sign::verify(
        chain,
        &der(root_pem),
        remora_webhook::certs::OffsetDateTime::now_utc(),
    )
    .unwrap();
}

fn gauge(samples: &[remora_e2e::client::Sample], name: &str, filter: &[(&str, &str)]) -> f64 {
    remora_e2e::client::sum(samples, name, filter)
}

#[tokio::test]
async fn issues_the_token_identity_and_refuses_everything_else() {
    remora_webhook::tls::install_provider();
    let api = api().await;
    api.load(&fixture("secrets-absent.json")).unwrap();
    api.on(
        "POST",
        SECRETS,
        Reply::json(201, secret_body("remora-ca", &[], "90100")),
    );
    let mut ca = CaProc::start(&api);

    // The root is generated, stored, and published to every namespace a revision's webhook
    // entry may inject: labelled istio-injection=enabled (default, other), labelled with a
    // revision (canary), unlabelled (plain: a pod may opt in); not to off
    // (istio-injection=disabled) nor to kube-system.
    let (canary, plain) = (
        "/api/v1/namespaces/canary/configmaps",
        "/api/v1/namespaces/plain/configmaps",
    );
    ca.wait_for("root publication", || {
        !posts_to(&api, DEFAULT_CMS).is_empty()
            && !puts_to(&api, OTHER_CM).is_empty()
            && !posts_to(&api, canary).is_empty()
            && !posts_to(&api, plain).is_empty()
    })
    .await;
    for never in ["/api/v1/namespaces/off/", "/api/v1/namespaces/kube-system/"] {
        assert!(
            !api.requests().iter().any(|s| s.path().starts_with(never)),
            "{never}: {:?}",
            api.requests()
        );
    }
    let stored = posts_to(&api, SECRETS);
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0]["metadata"]["name"], "remora-ca");
    let root = unb64(&stored[0]["data"]["root-cert.pem"]);
    assert_eq!(unb64(&stored[0]["data"]["ca-cert.pem"]), root);
    assert!(unb64(&stored[0]["data"]["ca-key.pem"]).contains("PRIVATE KEY"));
    let published = &posts_to(&api, DEFAULT_CMS)[0];
    assert_eq!(published["metadata"]["name"], "remora-ca-root-cert");
    assert_eq!(published["data"]["root-cert.pem"], root.as_str());
    let replaced = &puts_to(&api, OTHER_CM)[0];
    assert_eq!(replaced["metadata"]["resourceVersion"], "4711");
    assert_eq!(replaced["data"]["root-cert.pem"], root.as_str());
    assert_eq!(
        posts_to(&api, canary)[0]["data"]["root-cert.pem"],
        root.as_str()
    );

    // A client trusting only the published root.
    let mut client = ca.client(&root).await;
    let chain = client
        .create(Some("tok-httpbin"), &csr(&[HTTPBIN]), 48 * 3600)
        .await
        .unwrap_or_else(|s| panic!("refused: {s:?}\n{}", ca.proc.log_tail(20)));
    assert_eq!(chain.len(), 2, "leaf, root");
    check_chain(&chain, HTTPBIN, CAP.as_secs() as i64, &root);
    // No validity asked: the default (24h) cut to the cap.
    let chain = client
        .create(Some("tok-httpbin"), &csr(&[HTTPBIN]), 0)
        .await
        .unwrap();
    check_chain(&chain, HTTPBIN, CAP.as_secs() as i64, &root);
    let chain = client
        .create(Some("tok-httpbin"), &csr(&[HTTPBIN]), 3600)
        .await
        .unwrap();
    check_chain(&chain, HTTPBIN, 3600, &root);
    // Every TokenReview named the CA's audience.
    for r in posts_to(&api, TOKENREVIEWS) {
        assert_eq!(r["spec"]["audiences"], json!(["remora-ca"]), "{r}");
    }
    // The injector of the same process gives proxies exactly what this CA wants: its address
    // (the name its certificate carries, the port it listens on), a token for the audience its
    // TokenReviews name, the trust domain it signs.
    let pod = ca.injected().await;
    let proxy = &pod["spec"]["initContainers"][0];
    let env = |name: &str| {
        proxy["env"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == name)
            .map(|e| e["value"].clone())
    };
    assert_eq!(
        env("REMORA_CA_ADDRESS"),
        Some(json!(format!("{CA_NAME}:{}", ca.ca.port())))
    );
    assert_eq!(env("REMORA_TRUST_DOMAIN"), Some(json!("cluster.local")));
    assert!(HTTPBIN.starts_with("spiffe://cluster.local/"));
    let token = pod["spec"]["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "remora-ca-token")
        .expect("the token volume");
    assert_eq!(
        json!([token["projected"]["sources"][0]["serviceAccountToken"]["audience"]]),
        posts_to(&api, TOKENREVIEWS)[0]["spec"]["audiences"]
    );
    assert_eq!(
        pod["metadata"]["labels"]["security.istio.io/tlsMode"],
        "istio"
    );

    let refusals: Vec<(&str, Option<&str>, String, Code, &str)> = vec![
        ("wrong audience", Some("tok-wrong-audience"), csr(&[HTTPBIN]), Code::Unauthenticated,
         "token audiences [\"https://kubernetes.default.svc.cluster.local\"] is invalid for the target audiences [\"remora-ca\"]"),
        ("expired", Some("tok-expired"), csr(&[HTTPBIN]), Code::Unauthenticated, "service account token has expired"),
        ("another namespace's identity", Some("tok-other-ns"), csr(&[HTTPBIN]), Code::PermissionDenied,
         "asks for \"spiffe://cluster.local/ns/default/sa/httpbin\", but the token's identity is spiffe://cluster.local/ns/other/sa/sleep"),
        ("no token", None, csr(&[HTTPBIN]), Code::Unauthenticated, "no authorization header"),
        ("DNS SAN", Some("tok-httpbin"), csr(&[HTTPBIN, "httpbin.default.svc"]), Code::InvalidArgument,
         "names DNS name \"httpbin.default.svc\""),
    ];
    let reasons = [
        "token_rejected",
        "token_rejected",
        "identity_mismatch",
        "unauthenticated",
        "dns_san",
    ];
    for ((what, token, csr, code, want), reason) in refusals.into_iter().zip(reasons) {
        let s = client.create(token, &csr, 0).await.expect_err(what);
        assert_eq!(s.code(), code, "{what}: {s:?}");
        assert!(s.message().contains(want), "{what}: {}", s.message());
        assert!(
            s.message().ends_with(&format!("(reason: {reason})")),
            "{what}: {}",
            s.message()
        );
    }

    // Latency of a whole CreateCertificate (TokenReview to the recorded API included).
    let n = 50;
    let mut took = Vec::with_capacity(n);
    for _ in 0..n {
        let c = csr(&[HTTPBIN]);
        let t = Instant::now();
        client.create(Some("tok-httpbin"), &c, 0).await.unwrap();
        took.push(t.elapsed());
    }
    took.sort();
    let m = ca.metrics().await;
    let issued = gauge(&m, "remora_ca_certificates_issued_total", &[]);
    assert_eq!(issued, 3.0 + n as f64);
    for (reason, want) in [
        ("token_rejected", 2.0),
        ("identity_mismatch", 1.0),
        ("unauthenticated", 1.0),
        ("dns_san", 1.0),
        ("ca_requested", 0.0),
    ] {
        assert_eq!(
            gauge(
                &m,
                "remora_ca_requests_refused_total",
                &[("reason", reason)]
            ),
            want,
            "{reason}"
        );
    }
    let count = gauge(&m, "remora_ca_sign_seconds_count", &[]);
    let sum = gauge(&m, "remora_ca_sign_seconds_sum", &[]);
    assert_eq!(count, issued);
    println!(
        "measured: CreateCertificate over TLS/gRPC (TokenReview to the recorded API included), {n} sequential: p50 {:?}, p90 {:?}, max {:?}; sign only (remora_ca_sign_seconds): mean {:.0} µs over {count} certificates",
        took[n / 2],
        took[n * 9 / 10],
        took[n - 1],
        sum / count * 1e6
    );

    // One log line per issuance and per refusal, with the identity, pod, serial and expiry.
    let log = ca.stop_and_log();
    let issued_lines: Vec<&Value> = log
        .iter()
        .filter(|l| {
            l["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("certificate issued for "))
        })
        .collect();
    assert_eq!(issued_lines.len(), 3 + n);
    let l = issued_lines[0];
    assert_eq!(l["namespace"], "default");
    assert_eq!(l["service_account"], "httpbin");
    assert_eq!(l["pod"], POD);
    assert_eq!(l["identity"], HTTPBIN);
    assert!(l["serial"].as_str().is_some_and(|s| s.len() == 32), "{l}");
    assert!(
        l["not_after"].as_str().is_some_and(|s| s.ends_with('Z')),
        "{l}"
    );
    let refused: Vec<&Value> = log
        .iter()
        .filter(|l| {
            l["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("certificate refused: "))
        })
        .collect();
    let got: Vec<&str> = refused
        .iter()
        .filter_map(|l| l["reason"].as_str())
        .collect();
    assert_eq!(got, reasons);
    assert_eq!(refused[2]["namespace"], "other");
    assert_eq!(refused[2]["service_account"], "sleep");
    assert_eq!(refused[2]["pod"], "sleep-5c7f9d8b4-q9wzl");
    assert!(log.iter().any(|l| l["message"]
        .as_str()
        .is_some_and(|m| m.starts_with("mesh CA: no root yet: generated an ECDSA P-256 root"))));
}

/// Two replicas start against one API: the first creates the Secret, the second's create is
/// answered 409 AlreadyExists and it signs with the winner's root.
#[tokio::test]
async fn two_replicas_settle_on_one_root() {
    remora_webhook::tls::install_provider();
    let api = api().await;
    api.load(&fixture("secrets-absent.json")).unwrap();
    api.on(
        "POST",
        SECRETS,
        Reply::json(201, secret_body("remora-ca", &[], "90100")),
    );
    api.on(
        "POST",
        SECRETS,
        Reply::status(409, "AlreadyExists", "secrets \"remora-ca\" already exists"),
    );
    let mut a = CaProc::start(&api);
    a.wait_for("the first replica's Secret", || {
        !posts_to(&api, SECRETS).is_empty()
    })
    .await;
    let winner = &posts_to(&api, SECRETS)[0]["data"];
    let root = unb64(&winner["root-cert.pem"]);
    let data = [
        ("ca-cert.pem", unb64(&winner["ca-cert.pem"])),
        ("ca-key.pem", unb64(&winner["ca-key.pem"])),
        ("root-cert.pem", root.clone()),
    ];
    // From now on the Secret exists (after one more 404: the second replica's first read).
    api.on(
        "GET",
        ROOT_SECRET,
        Reply::json(200, secret_body("remora-ca", &data, "90101")),
    );

    let mut b = CaProc::start(&api);
    b.wait_for("the second replica's lost create", || {
        posts_to(&api, SECRETS).len() >= 2
    })
    .await;
    // Both serve (their TLS certificates chain to the one root) and sign with it.
    for p in [&mut a, &mut b] {
        let mut c = p.client(&root).await;
        let chain = c
            .create(Some("tok-httpbin"), &csr(&[HTTPBIN]), 600)
            .await
            .unwrap();
        check_chain(&chain, HTTPBIN, 600, &root);
    }
    let log_b = b.stop_and_log();
    assert!(
        log_b
            .iter()
            .any(|l| l["message"].as_str().is_some_and(|m| m.starts_with(
                "mesh CA: lost the create race (409) for Secret remora-system/remora-ca"
            ))),
        "{log_b:?}"
    );
    assert!(log_b.iter().any(|l| l["message"]
        .as_str()
        .is_some_and(|m| m == "mesh CA: using the root in Secret remora-system/remora-ca")));
    a.stop_and_log();
    // Both published the same root.
    for p in posts_to(&api, DEFAULT_CMS) {
        assert_eq!(p["data"]["root-cert.pem"], root.as_str());
    }
}

/// The user's intermediate from Istio's plug-in Secret `cacerts` wins: nothing is generated,
/// chains are leaf, intermediate, root, and the plug-in root is published.
#[tokio::test]
async fn a_plug_in_cacerts_wins() {
    remora_webhook::tls::install_provider();
    let root_key = rcgen::KeyPair::generate().unwrap();
    let mut rp = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    rp.distinguished_name
        .push(rcgen::DnType::CommonName, "Example Corp Root CA");
    rp.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    rp.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    let root = rp.self_signed(&root_key).unwrap();
    let int_key = rcgen::KeyPair::generate().unwrap();
    let mut ip = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ip.distinguished_name
        .push(rcgen::DnType::CommonName, "Example Corp mesh intermediate");
    ip.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
    ip.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    let int = ip.signed_by(&int_key, &root, &root_key).unwrap();
    let api = api().await;
    api.on(
        "GET",
        PLUGIN_SECRET,
        Reply::json(
            200,
            secret_body(
                "cacerts",
                &[
                    ("ca-cert.pem", int.pem()),
                    ("ca-key.pem", int_key.serialize_pem()),
                    ("root-cert.pem", root.pem()),
                    ("cert-chain.pem", format!("{}{}", int.pem(), root.pem())),
                ],
                "77",
            ),
        ),
    );
    let mut ca = CaProc::start(&api);
    ca.wait_for("root publication", || {
        !posts_to(&api, DEFAULT_CMS).is_empty()
    })
    .await;
    assert_eq!(
        posts_to(&api, DEFAULT_CMS)[0]["data"]["root-cert.pem"],
        root.pem().as_str()
    );
    let mut c = ca.client(&root.pem()).await;
    let chain = c
        .create(Some("tok-httpbin"), &csr(&[HTTPBIN]), 0)
        .await
        .unwrap();
    assert_eq!(chain.len(), 3, "leaf, intermediate, root");
    assert_eq!(chain[1], int.pem());
    check_chain(&chain, HTTPBIN, CAP.as_secs() as i64, &root.pem());
    let log = ca.stop_and_log();
    assert!(posts_to(&api, SECRETS).is_empty(), "nothing generated");
    assert!(
        !api.requests().iter().any(|s| s.path() == ROOT_SECRET),
        "the generated root's Secret is not even read"
    );
    assert!(log.iter().any(|l| l["message"].as_str().is_some_and(|m| m
        .starts_with("mesh CA: using the plug-in CA from Secret remora-system/cacerts (it wins"))));
}

/// A CA certificate named `cn`: self-signed (`issuer: None`, a root) or signed by `issuer`.
fn ca_cert(
    cn: &str,
    issuer: Option<(&rcgen::Certificate, &rcgen::KeyPair)>,
) -> (rcgen::Certificate, rcgen::KeyPair) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name.push(rcgen::DnType::CommonName, cn);
    p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    p.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    let cert = match issuer {
        None => p.self_signed(&key).unwrap(),
        Some((c, k)) => p.signed_by(&key, c, k).unwrap(),
    };
    (cert, key)
}

/// Root rotation as Istio documents it for plug-in CAs, while the CA runs: `cacerts` first
/// trusts the old and the new root (a bundle in `root-cert.pem`), then signs with the new
/// intermediate, then trusts the new root alone. Each step is taken at the next pass without a
/// restart: the published roots, the chains issued and the CA's own serving certificate follow.
/// A broken Secret in between leaves the current CA signing, with the reason in the log.
#[tokio::test]
async fn the_plug_in_root_rotates_while_the_ca_runs() {
    remora_webhook::tls::install_provider();
    let (root_a, root_a_key) = ca_cert("Example Old Root", None);
    let (int_a, int_a_key) = ca_cert("Example Old Intermediate", Some((&root_a, &root_a_key)));
    let (root_b, root_b_key) = ca_cert("Example New Root", None);
    let (int_b, int_b_key) = ca_cert("Example New Intermediate", Some((&root_b, &root_b_key)));
    let bundle = format!("{}{}", root_a.pem(), root_b.pem());
    let api = api().await;
    let set = |int: &rcgen::Certificate, key: &rcgen::KeyPair, roots: &str, rv: &str| {
        api.on(
            "GET",
            PLUGIN_SECRET,
            Reply::json(
                200,
                secret_body(
                    "cacerts",
                    &[
                        ("ca-cert.pem", int.pem()),
                        ("ca-key.pem", key.serialize_pem()),
                        ("root-cert.pem", roots.to_string()),
                    ],
                    rv,
                ),
            ),
        );
    };
    let reads = || {
        api.requests()
            .iter()
            .filter(|r| r.method == "GET" && r.path() == PLUGIN_SECRET)
            .count()
    };
    let published = || {
        posts_to(&api, DEFAULT_CMS)
            .last()
            .and_then(|c| c["data"]["root-cert.pem"].as_str().map(String::from))
    };
    set(&int_a, &int_a_key, &root_a.pem(), "1");
    let mut ca = CaProc::start_with(&api, &["--ca-publish-interval", "1s"]);
    ca.wait_for("the old root published", || {
        published() == Some(root_a.pem())
    })
    .await;
    let mut c = ca.client(&root_a.pem()).await;
    let chain = c
        .create(Some("tok-httpbin"), &csr(&[HTTPBIN]), 0)
        .await
        .unwrap();
    assert_eq!(chain[1], int_a.pem());
    check_chain(&chain, HTTPBIN, CAP.as_secs() as i64, &root_a.pem());

    // 1. Both roots trusted, still signing with the old intermediate.
    set(&int_a, &int_a_key, &bundle, "2");
    ca.wait_for("the bundle published", || {
        published().as_deref() == Some(bundle.as_str())
    })
    .await;
    let chain = c
        .create(Some("tok-httpbin"), &csr(&[HTTPBIN]), 0)
        .await
        .unwrap();
    assert_eq!(chain[1], int_a.pem());
    assert_eq!(chain.last(), Some(&bundle), "the bundle ends the chain");
    sign::verify(
        &chain,
        &der(&root_a.pem()),
        remora_webhook::certs::OffsetDateTime::now_utc(),
    )
    .unwrap();

    // A broken Secret (the new key with the old certificate) is not taken.
    set(&int_a, &int_b_key, &bundle, "3");
    let before = reads();
    ca.wait_for("two more reads of cacerts", || reads() >= before + 2)
        .await;
    let chain = c
        .create(Some("tok-httpbin"), &csr(&[HTTPBIN]), 0)
        .await
        .unwrap();
    assert_eq!(chain[1], int_a.pem(), "the current CA still signs");

    // 2. The new intermediate signs; both roots still trusted. A client trusting the bundle
    // reaches the CA, whose serving certificate now comes from the new intermediate.
    set(&int_b, &int_b_key, &bundle, "4");
    let deadline = Instant::now() + PATIENCE;
    let chain = loop {
        let chain = c
            .create(Some("tok-httpbin"), &csr(&[HTTPBIN]), 0)
            .await
            .unwrap();
        if chain[1] == int_b.pem() {
            break chain;
        }
        assert!(
            Instant::now() < deadline,
            "still signing with the old intermediate"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(chain.last(), Some(&bundle));
    sign::verify(
        &chain,
        &der(&root_b.pem()),
        remora_webhook::certs::OffsetDateTime::now_utc(),
    )
    .unwrap();
    assert!(
        sign::verify(
            &chain,
            &der(&root_a.pem()),
            remora_webhook::certs::OffsetDateTime::now_utc()
        )
        .is_err(),
        "a new chain leads to the new root only"
    );

    // 3. The old root retired.
    set(&int_b, &int_b_key, &root_b.pem(), "5");
    ca.wait_for("the new root alone published", || {
        published() == Some(root_b.pem())
    })
    .await;
    let mut only_new = ca.client(&root_b.pem()).await;
    let chain = only_new
        .create(Some("tok-httpbin"), &csr(&[HTTPBIN]), 0)
        .await
        .unwrap();
    assert_eq!(chain[1], int_b.pem());
    check_chain(&chain, HTTPBIN, CAP.as_secs() as i64, &root_b.pem());

    let log = ca.stop_and_log();
    let messages: Vec<&str> = log.iter().filter_map(|l| l["message"].as_str()).collect();
    let changed = messages
        .iter()
        .filter(|m| m.starts_with("mesh CA: the root Secret changed (plug-in CA in Secret remora-system/cacerts); now signing with it"))
        .count();
    assert_eq!(changed, 3, "{messages:#?}");
    assert!(
        log.iter().any(|l| l["message"]
            == "mesh CA: the root Secret changed but does not hold a usable CA; keeping the current one"
            && l["error"]
                .as_str()
                .is_some_and(|e| e.starts_with("ca-key.pem: does not belong to ca-cert.pem"))),
        "{messages:#?}"
    );
}

/// A generated root due for renewal (here at once: `--ca-root-renew-when-left 0.99`) is renewed
/// while the CA runs: written over the version read with the same key, a new certificate for
/// the same subject and both roots in `root-cert.pem`; at the next pass the CA publishes both
/// and signs with the renewed one, and a workload that still trusts only the old root accepts
/// the new chains. Renewed once: the renewed root is not due.
#[tokio::test]
async fn a_generated_root_due_for_renewal_is_renewed_while_the_ca_runs() {
    remora_webhook::tls::install_provider();
    let now = remora_webhook::certs::OffsetDateTime::now_utc;
    let data =
        remora_webhook::ca::root::generate(now(), Duration::from_secs(3600), "cluster.local")
            .unwrap();
    let text = |k: &str| String::from_utf8(data[k].clone()).unwrap();
    let (old_root, key) = (text("ca-cert.pem"), text("ca-key.pem"));
    let api = api().await;
    api.on(
        "GET",
        ROOT_SECRET,
        Reply::json(
            200,
            secret_body(
                "remora-ca",
                &[
                    ("ca-cert.pem", old_root.clone()),
                    ("ca-key.pem", key.clone()),
                    ("root-cert.pem", old_root.clone()),
                ],
                "1",
            ),
        ),
    );
    api.on(
        "PUT",
        ROOT_SECRET,
        Reply::json(200, secret_body("remora-ca", &[], "2")),
    );
    let mut ca = CaProc::start_with(
        &api,
        &[
            "--ca-publish-interval",
            "1s",
            "--ca-root-renew-when-left",
            "0.99",
        ],
    );
    ca.wait_for("the renewed root written", || {
        !puts_to(&api, ROOT_SECRET).is_empty()
    })
    .await;
    let put = puts_to(&api, ROOT_SECRET)[0].clone();
    assert_eq!(
        put["metadata"]["resourceVersion"], "1",
        "written over the version read"
    );
    let new_root = unb64(&put["data"]["ca-cert.pem"]);
    assert_ne!(new_root, old_root);
    assert_eq!(unb64(&put["data"]["ca-key.pem"]), key, "the key is kept");
    let bundle = format!("{new_root}{old_root}");
    assert_eq!(unb64(&put["data"]["root-cert.pem"]), bundle);

    // The API holds it now: the CA takes it at its next pass.
    let mut stored = put.clone();
    stored["metadata"]["resourceVersion"] = json!("2");
    api.on("GET", ROOT_SECRET, Reply::json(200, stored));
    ca.wait_for("both roots published", || {
        posts_to(&api, DEFAULT_CMS)
            .last()
            .and_then(|c| c["data"]["root-cert.pem"].as_str().map(String::from))
            == Some(bundle.clone())
    })
    .await;
    // A client trusting only the old root reaches the CA (its serving certificate comes from
    // the renewed root) and gets a chain that verifies against either root.
    let mut c = ca.client(&old_root).await;
    let chain = c
        .create(Some("tok-httpbin"), &csr(&[HTTPBIN]), 0)
        .await
        .unwrap();
    assert_eq!(chain.last(), Some(&bundle), "both roots end the chain");
    sign::verify(&chain, &der(&old_root), now()).unwrap();
    sign::verify(&chain, &der(&new_root), now()).unwrap();
    // Not renewed again: two more passes write nothing.
    let writes = puts_to(&api, ROOT_SECRET).len();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(puts_to(&api, ROOT_SECRET).len(), writes);
    let log = ca.stop_and_log();
    assert!(
        log.iter().any(|l| l["message"].as_str().is_some_and(
            |m| m.starts_with("mesh CA: renewed the generated root (same key and subject)")
        )),
        "{log:#?}"
    );
}

// ---------------------------------------------------------------------------------------------
// The sidecars the CA serves: two real `remora-proxy` processes get their workload certificates
// from this CA (tokens answered by the recorded TokenReviews) and talk mTLS to each other.

/// A `remora-proxy run` on loopback ports; stopped on drop.
struct Sidecar {
    proc: Proc,
    outbound: std::net::SocketAddr,
    inbound: std::net::SocketAddr,
    admin: std::net::SocketAddr,
    health: std::net::SocketAddr,
    prometheus: std::net::SocketAddr,
}

impl Sidecar {
    /// Identity `namespace`/`service_account` with `token`; `fixed_inbound`: the app.
    #[allow(clippy::too_many_arguments)]
    fn start(
        name: &str,
        dir: &Path,
        ca: std::net::SocketAddr,
        namespace: &str,
        service_account: &str,
        token: &str,
        rules: &str,
        fixed: (&str, std::net::SocketAddr),
        extra: &[&str],
    ) -> Sidecar {
        let bin = remora_e2e::admission::default_bin_dir().join("remora-proxy");
        assert!(bin.exists(), "{} is missing: build it first", bin.display());
        let d = dir.join(name);
        std::fs::create_dir_all(d.join("rules")).unwrap();
        std::fs::write(d.join("rules/rules.yaml"), rules).unwrap();
        std::fs::write(d.join("token"), token).unwrap();
        let p = remora_e2e::ports::free_ports(5);
        let a = |port: u16| std::net::SocketAddr::from(([127, 0, 0, 1], port));
        let mut cmd = std::process::Command::new(&bin);
        cmd.arg("run")
            .arg("--access-log-encoding=JSON")
            .arg(format!("--outbound-addr={}", a(p[0])))
            .arg(format!("--inbound-addr={}", a(p[1])))
            .arg(format!("--admin-addr={}", a(p[2])))
            .arg(format!("--health-addr={}", a(p[3])))
            .arg(format!("--prometheus-addr={}", a(p[4])))
            .arg(format!("--rules-dir={}", d.join("rules").display()))
            .args(["--rules-rescan-seconds=1", "--ipv6=off", "--kube-api=off"])
            .arg("--pod-labels-file=/nonexistent/remora-test-labels")
            .arg(format!("--namespace={namespace}"))
            .arg(format!("--workload-name={name}"))
            .args(["--drain-seconds=1", "--inbound-source-fallback"])
            .arg(format!("--{}={}", fixed.0, fixed.1))
            .arg(format!("--ca-address={ca}"))
            .arg(format!("--ca-server-name={CA_NAME}"))
            .arg(format!("--ca-root-file={}", dir.join("root.pem").display()))
            .arg(format!("--ca-token-file={}", d.join("token").display()))
            .args(extra)
            .env("SERVICE_ACCOUNT", service_account)
            .env("POD_NAMESPACE", namespace);
        for (k, _) in std::env::vars() {
            if k.starts_with("REMORA_") {
                cmd.env_remove(k);
            }
        }
        let proc = Proc::spawn(name, cmd, d.join("proxy.log")).unwrap();
        Sidecar {
            proc,
            outbound: a(p[0]),
            inbound: a(p[1]),
            admin: a(p[2]),
            health: a(p[3]),
            prometheus: a(p[4]),
        }
    }

    /// Waits (bounded) for `/healthz/ready` to answer 200; returns the bodies seen meanwhile.
    async fn ready(&mut self) -> Vec<String> {
        let deadline = Instant::now() + PATIENCE;
        let mut seen = Vec::new();
        loop {
            if let Ok((code, body)) = get(self.health, "x", "/healthz/ready").await {
                if code == 200 {
                    return seen;
                }
                if seen.last() != Some(&body) {
                    seen.push(body);
                }
            }
            assert!(
                self.proc.exited().is_none(),
                "{} exited:\n{}",
                self.proc.name,
                self.proc.log_tail(40)
            );
            assert!(
                Instant::now() < deadline,
                "{} not ready within {PATIENCE:?} ({seen:?}):\n{}",
                self.proc.name,
                self.proc.log_tail(40)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn metrics(&self) -> Vec<remora_e2e::client::Sample> {
        let (code, body) = get(self.prometheus, "x", "/stats/prometheus")
            .await
            .unwrap();
        assert_eq!(code, 200);
        remora_e2e::client::parse_prometheus(&body)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.proc.log).unwrap_or_default()
    }
}

impl Sidecar {
    /// `remora-proxy gateway` with identity `namespace`/`service_account` (`token`), the pod
    /// labels of Istio's ingress gateway, Gateway port 443 listened on at `outbound` (the
    /// returned `outbound`; `inbound` is the same, unused).
    fn start_gateway(
        dir: &Path,
        ca: std::net::SocketAddr,
        (namespace, service_account, token): (&str, &str, &str),
        rules: &str,
    ) -> Sidecar {
        let name = "ingressgateway";
        let bin = remora_e2e::admission::default_bin_dir().join("remora-proxy");
        assert!(bin.exists(), "{} is missing: build it first", bin.display());
        let d = dir.join(name);
        std::fs::create_dir_all(d.join("rules")).unwrap();
        std::fs::write(d.join("rules/rules.yaml"), rules).unwrap();
        std::fs::write(d.join("token"), token).unwrap();
        std::fs::write(
            d.join("labels"),
            "app=\"istio-ingressgateway\"\nistio=\"ingressgateway\"\n",
        )
        .unwrap();
        let p = remora_e2e::ports::free_ports(5);
        let a = |port: u16| std::net::SocketAddr::from(([127, 0, 0, 1], port));
        let mut cmd = std::process::Command::new(&bin);
        cmd.arg("gateway")
            .arg("--access-log-encoding=JSON")
            .arg("--gateway-address=127.0.0.1")
            .arg(format!("--gateway-port-map=443={},80={}", p[0], p[1]))
            .arg(format!("--admin-addr={}", a(p[2])))
            .arg(format!("--health-addr={}", a(p[3])))
            .arg(format!("--prometheus-addr={}", a(p[4])))
            .arg(format!("--rules-dir={}", d.join("rules").display()))
            .args(["--rules-rescan-seconds=1", "--kube-api=off"])
            .arg(format!("--pod-labels-file={}", d.join("labels").display()))
            .arg(format!("--namespace={namespace}"))
            .arg(format!("--workload-name={name}"))
            .arg("--drain-seconds=1")
            .arg(format!("--ca-address={ca}"))
            .arg(format!("--ca-server-name={CA_NAME}"))
            .arg(format!("--ca-root-file={}", dir.join("root.pem").display()))
            .arg(format!("--ca-token-file={}", d.join("token").display()))
            .env("SERVICE_ACCOUNT", service_account)
            .env("POD_NAMESPACE", namespace);
        for (k, _) in std::env::vars() {
            if k.starts_with("REMORA_") {
                cmd.env_remove(k);
            }
        }
        let proc = Proc::spawn(name, cmd, d.join("proxy.log")).unwrap();
        Sidecar {
            proc,
            outbound: a(p[0]),
            inbound: a(p[0]),
            admin: a(p[2]),
            health: a(p[3]),
            prometheus: a(p[4]),
        }
    }
}

/// Istio's `ISTIO_MUTUAL` gateway server: the gateway (its workload certificate from the CA)
/// terminates a client sidecar's mesh mTLS — the client checked by the mesh roots, its SPIFFE
/// id in the gateway's access log and seen by AuthorizationPolicy (a DENY for that principal on
/// one path: 403) — and routes the request by the VirtualService bound to the Gateway; a client
/// without a mesh certificate gets no answer.
#[tokio::test]
async fn gateway_istio_mutual_server_takes_mesh_clients() {
    let (_api, ca, _root, dir) = ca_with_root().await;
    let (_app, app_addr) = start_app(dir.path(), &["http", "--service", "httpbin"]);
    let rules = format!(
        "apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: edge, namespace: default}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: 443, name: https-mesh, protocol: HTTPS}}
    hosts: ['*']
    tls: {{mode: ISTIO_MUTUAL}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: web, namespace: default}}
spec:
  hosts: [gw.example.com]
  gateways: [edge]
  http:
  - route: [{{destination: {{host: httpbin-app, port: {{number: 8000}}}}}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: httpbin-app, namespace: default}}
spec:
  hosts: [httpbin-app.default.svc.cluster.local]
  location: MESH_INTERNAL
  ports: [{{number: 8000, name: http, protocol: HTTP}}]
  resolution: STATIC
  endpoints: [{{address: 127.0.0.1, ports: {{http: {}}}}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: gateway-principals, namespace: default}}
spec:
  action: DENY
  rules:
  - from: [{{source: {{principals: [cluster.local/ns/other/sa/sleep]}}}}]
    to: [{{operation: {{paths: ['/denied*']}}}}]
",
        app_addr.port()
    );
    let mut gw = Sidecar::start_gateway(
        dir.path(),
        ca.ca,
        ("default", "httpbin", "tok-httpbin"),
        &rules,
    );
    gw.ready().await;
    // The client knows the gateway as a mesh endpoint: automatic mTLS to it.
    let client_rules = format!(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: gw, namespace: other}}\nspec:\n  hosts: [gw.example.com]\n  location: MESH_INTERNAL\n  ports: [{{number: {p}, name: http, protocol: HTTP}}]\n  resolution: STATIC\n  endpoints:\n  - address: 127.0.0.1\n    ports: {{http: {p}}}\n    labels: {{app: istio-ingressgateway, security.istio.io/tlsMode: istio}}\n",
        p = gw.outbound.port()
    );
    let mut client = Sidecar::start(
        "sleep",
        dir.path(),
        ca.ca,
        "other",
        "sleep",
        "tok-other-ns",
        &client_rules,
        ("fixed-outbound-target", gw.outbound),
        &[],
    );
    client.ready().await;
    let (code, body) = get(client.outbound, "gw.example.com", "/get/through-gateway")
        .await
        .unwrap();
    assert_eq!(code, 200, "{body}\n{}\n{}", client.log(), gw.log());
    assert!(body.contains("httpbin"), "{body}");
    // The gateway recorded the client's identity.
    let deadline = Instant::now() + PATIENCE;
    let line = loop {
        let log = gw.log();
        if let Some(l) = log
            .lines()
            .find(|l| l.starts_with('{') && l.contains("/get/through-gateway"))
        {
            break l.to_string();
        }
        assert!(Instant::now() < deadline, "no access-log line:\n{log}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let v: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(
        v["peer_principal"], "spiffe://cluster.local/ns/other/sa/sleep",
        "{line}"
    );
    // AuthorizationPolicy at the gateway sees that principal (ISTIO_MUTUAL): its DENY rule
    // for the client's principal holds on its path only.
    let (code, body) = get(client.outbound, "gw.example.com", "/denied/x")
        .await
        .unwrap();
    assert_eq!(code, 403, "{body}\n{}", gw.log());
    assert_eq!(body, "RBAC: access denied");
    // Plain text (no mesh certificate): no answer.
    let plain = get(gw.outbound, "gw.example.com", "/plain").await;
    assert!(plain.is_err(), "{plain:?}");
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        self.proc.stop(Duration::from_secs(5));
    }
}

/// One plain HTTP/1.1 GET to `addr` with `Host: host`: (status, body).
async fn get(addr: std::net::SocketAddr, host: &str, path: &str) -> anyhow::Result<(u16, String)> {
    use http_body_util::BodyExt;
    let fut = async {
        let tcp = tokio::net::TcpStream::connect(addr).await?;
        let (mut send, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp)).await?;
        tokio::spawn(conn);
        let req = http::Request::builder()
            .uri(path)
            .header("host", host)
            .body(http_body_util::Empty::<bytes::Bytes>::new())?;
        let resp = send.send_request(req).await?;
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await?.to_bytes();
        Ok::<_, anyhow::Error>((status, String::from_utf8_lossy(&body).into_owned()))
    };
    tokio::time::timeout(Duration::from_secs(10), fut)
        .await
        .map_err(|_| anyhow::anyhow!("GET {path} via {addr} timed out"))?
}

/// One HTTP/2 GET (prior knowledge, h2c) to `addr` on a new connection: (status, body).
async fn get_h2(
    addr: std::net::SocketAddr,
    host: &str,
    path: &str,
) -> anyhow::Result<(u16, String)> {
    use http_body_util::BodyExt;
    let fut = async {
        let tcp = tokio::net::TcpStream::connect(addr).await?;
        let (mut send, conn) = hyper::client::conn::http2::handshake(
            hyper_util::rt::TokioExecutor::new(),
            hyper_util::rt::TokioIo::new(tcp),
        )
        .await?;
        tokio::spawn(conn);
        let req = http::Request::builder()
            .uri(format!("http://{host}{path}"))
            .body(http_body_util::Empty::<bytes::Bytes>::new())?;
        let resp = send.send_request(req).await?;
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await?.to_bytes();
        Ok::<_, anyhow::Error>((status, String::from_utf8_lossy(&body).into_owned()))
    };
    tokio::time::timeout(Duration::from_secs(10), fut)
        .await
        .map_err(|_| anyhow::anyhow!("h2 GET {path} via {addr} timed out"))?
}

const SLEEP: &str = "spiffe://cluster.local/ns/other/sa/sleep";

/// The server's rules: PeerAuthentication for its namespace, and an AuthorizationPolicy that
/// lets only the client's identity read `/get/*` (and anyone `/plain`).
fn server_rules(mode: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {{name: default, namespace: default}}\nspec:\n  mtls: {{mode: {mode}}}\n---\n\
         apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: httpbin, namespace: default}}\nspec:\n  rules:\n  - from:\n    - source: {{principals: [cluster.local/ns/other/sa/sleep]}}\n    to:\n    - operation: {{paths: [/get/*]}}\n  - to:\n    - operation: {{paths: [/plain]}}\n"
    )
}

/// The client's rules: the server as a mesh endpoint (`security.istio.io/tlsMode: istio`).
fn client_rules(server_inbound: std::net::SocketAddr) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: httpbin, namespace: other}}\nspec:\n  hosts: [httpbin.default.svc.cluster.local]\n  location: MESH_INTERNAL\n  ports: [{{number: 8000, name: http, protocol: HTTP}}, {{number: 8001, name: tcp, protocol: TCP}}]\n  resolution: STATIC\n  endpoints:\n  - address: 127.0.0.1\n    ports: {{http: {p}, tcp: {p}}}\n    labels: {{app: httpbin, security.istio.io/tlsMode: istio}}\n",
        p = server_inbound.port()
    )
}

/// The CA, an app, its sidecar (default/httpbin, PeerAuthentication `mode`) and a client
/// sidecar (other/sleep) that knows the server as a mesh endpoint; both ready. `extra`: flags
/// for both sidecars.
struct Pair {
    ca: CaProc,
    _api: RecordedApi,
    app: Proc,
    server: Sidecar,
    client: Sidecar,
    root: String,
    dir: tempfile::TempDir,
    /// What the server's readiness said while it waited.
    server_waits: Vec<String>,
}

/// The recorded API with the CA's answers, a running CA that has stored its root, the root, and
/// a directory holding it as `root.pem` (what the sidecars mount).
async fn ca_with_root() -> (RecordedApi, CaProc, String, tempfile::TempDir) {
    remora_webhook::tls::install_provider();
    let api = api().await;
    api.load(&fixture("secrets-absent.json")).unwrap();
    api.on(
        "POST",
        SECRETS,
        Reply::json(201, secret_body("remora-ca", &[], "90100")),
    );
    let mut ca = CaProc::start(&api);
    ca.wait_for("the root stored", || !posts_to(&api, SECRETS).is_empty())
        .await;
    let root = unb64(&posts_to(&api, SECRETS)[0]["data"]["root-cert.pem"]);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("root.pem"), &root).unwrap();
    (api, ca, root, dir)
}

/// A `lab-app` on a free loopback port with `mode` (e.g. `http --service x`, `kv`).
fn start_app(dir: &Path, mode: &[&str]) -> (Proc, std::net::SocketAddr) {
    let port = remora_e2e::ports::free_port();
    let mut cmd =
        std::process::Command::new(remora_e2e::admission::default_bin_dir().join("lab-app"));
    cmd.arg("--port").arg(port.to_string()).args(mode);
    let app = Proc::spawn("lab-app", cmd, dir.join("app.log")).unwrap();
    (app, std::net::SocketAddr::from(([127, 0, 0, 1], port)))
}

async fn pair(mode: &str, extra: &[&str]) -> Pair {
    let (api, ca, root, dir) = ca_with_root().await;
    // The app behind the server sidecar.
    let (app, app_addr) = start_app(dir.path(), &["http", "--service", "httpbin"]);

    // The client reaches the server through its outbound listener (the original destination
    // fixed to the server's inbound listener).
    let mut server = Sidecar::start(
        "httpbin",
        dir.path(),
        ca.ca,
        "default",
        "httpbin",
        "tok-httpbin",
        &server_rules(mode),
        ("fixed-inbound-target", app_addr),
        extra,
    );
    let server_waits = server.ready().await;
    let mut client = Sidecar::start(
        "sleep",
        dir.path(),
        ca.ca,
        "other",
        "sleep",
        "tok-other-ns",
        &client_rules(server.inbound),
        ("fixed-outbound-target", server.inbound),
        extra,
    );
    client.ready().await;
    Pair {
        ca,
        _api: api,
        app,
        server,
        client,
        root,
        dir,
        server_waits,
    }
}

#[tokio::test]
async fn sidecars_get_their_identity_from_the_ca_and_talk_mutual_tls() {
    let Pair {
        mut ca,
        _api,
        mut app,
        server,
        client,
        root,
        dir,
        server_waits: waits,
    } = pair("STRICT", &[]).await;
    // Readiness waited for the certificate, and said so (when it was slow enough to be seen).
    for w in &waits {
        assert!(
            w.contains("certificate") || w.contains("rule set") || w.contains("listeners"),
            "{w}"
        );
    }

    // Through the client sidecar: 200 from the app, over mTLS.
    let host = "httpbin.default.svc.cluster.local:8000";
    for i in 0..5 {
        let (code, body) = get(client.outbound, host, &format!("/get/{i}"))
            .await
            .unwrap();
        assert_eq!(code, 200, "{body}\n{}\n{}", client.log(), server.log());
        assert!(body.contains("httpbin"), "{body}");
    }
    // The same identity, a path its AuthorizationPolicy does not allow: Istio's 403.
    let (code, body) = get(client.outbound, host, "/other").await.unwrap();
    assert_eq!((code, body.as_str()), (403, "RBAC: access denied"));
    // Straight to the server's inbound listener in plain text: STRICT refuses it.
    let plain = get(server.inbound, host, "/plain").await;
    assert!(plain.is_err(), "{plain:?}");
    assert!(
        server
            .log()
            .contains("PeerAuthentication default/default requires mutual TLS (STRICT)"),
        "{}",
        server.log()
    );
    // The server saw the client's identity: metrics and access log.
    let m = server.metrics().await;
    let mtls = remora_e2e::client::sum(
        &m,
        "istio_requests_total",
        &[
            ("reporter", "destination"),
            ("connection_security_policy", "mutual_tls"),
        ],
    );
    assert_eq!(mtls, 6.0, "{m:?}");
    let refused = remora_e2e::client::sum(
        &m,
        "remora_refused_connections_total",
        &[("reason", "mtls_required")],
    );
    assert!(refused >= 1.0, "{m:?}");
    // The access log is written in batches (every 20 ms): wait (bounded) for the lines.
    let principal_lines = || {
        server
            .log()
            .lines()
            .filter(|l| l.contains(&format!("\"peer_principal\":\"{SLEEP}\"")))
            .count()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while principal_lines() < 6 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(principal_lines(), 6, "{}", server.log());
    let cm = client.metrics().await;
    assert_eq!(
        remora_e2e::client::sum(
            &cm,
            "istio_requests_total",
            &[
                ("reporter", "source"),
                ("connection_security_policy", "mutual_tls")
            ],
        ),
        6.0
    );
    let exp = remora_e2e::client::sum(&cm, "remora_workload_cert_expiry_seconds", &[]);
    assert!(exp > 3600.0, "{exp}");
    // The identity in the dump (what `remora proxy-config secret` shows).
    let (code, dump) = get(client.admin, "x", "/config_dump").await.unwrap();
    assert_eq!(code, 200);
    let dump: Value = serde_json::from_str(&dump).unwrap();
    assert_eq!(dump["identity"]["spiffe_id"], SLEEP);
    assert_eq!(dump["identity"]["state"], "valid");
    let chain: Vec<String> = serde_json::from_value(dump["identity"]["chain_pem"].clone()).unwrap();
    // Asked for 24 h, capped by the CA at 12 h.
    check_chain(&chain, SLEEP, CAP.as_secs() as i64, &root);
    // `remora proxy-config secret`, as istioctl shows it.
    let out = std::process::Command::new(remora_e2e::admission::default_bin_dir().join("remora"))
        .args([
            "proxy-config",
            "secret",
            "--admin",
            &client.admin.to_string(),
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let serial = dump["identity"]["serial"].as_str().unwrap();
    let default_row = text
        .lines()
        .find(|l| l.starts_with("default "))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(
        default_row.contains("Cert Chain") && default_row.contains("ACTIVE"),
        "{text}"
    );
    assert!(default_row.contains(serial), "{text}");
    assert!(text.lines().any(|l| l.starts_with("ROOTCA ")), "{text}");
    assert!(
        text.contains(&format!("identity {SLEEP} from the CA at {}", ca.ca)),
        "{text}"
    );
    // A host the client's rules do not know goes out as it came (plain text, passthrough):
    // STRICT refuses it, and the client answers 503.
    let (code, body) = get(client.outbound, "unknown.example", "/passthrough")
        .await
        .unwrap();
    assert_eq!(code, 503, "{body}");

    // PERMISSIVE takes plain text too.
    std::fs::write(
        dir.path().join("httpbin/rules/rules.yaml"),
        server_rules("PERMISSIVE"),
    )
    .unwrap();
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Ok((200, _)) = get(server.inbound, host, "/plain").await {
            break;
        }
        assert!(Instant::now() < deadline, "{}", server.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(client);
    drop(server);
    app.stop(Duration::from_secs(2));
    ca.stop_and_log();
}

/// Two-minute certificates renewed at a tenth of their life: requests keep flowing across the
/// renewals, none fails, and both sides end on new certificates.
#[tokio::test]
async fn short_certificates_rotate_under_load_without_a_failed_request() {
    let Pair {
        mut ca,
        _api,
        mut app,
        server,
        client,
        dir: _dir,
        ..
    } = pair("STRICT", &["--cert-ttl=2m", "--cert-rotate-at=0.1"]).await;
    let serial = |dump: &str| -> String {
        let v: Value = serde_json::from_str(dump).unwrap();
        v["identity"]["serial"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    let (_, d) = get(client.admin, "x", "/config_dump").await.unwrap();
    let first_client = serial(&d);
    let (_, d) = get(server.admin, "x", "/config_dump").await.unwrap();
    let first_server = serial(&d);
    assert!(!first_client.is_empty() && !first_server.is_empty());
    // The CA backdates a minute, so a 2-minute certificate has a minute ahead: renewal comes 3
    // to 9 s after issuance. Load for up to 40 s (bounded in count too) until both sides have
    // renewed and a few more requests went through.
    let host = "httpbin.default.svc.cluster.local:8000";
    let deadline = Instant::now() + Duration::from_secs(40);
    let (mut ok, mut failed, mut after) = (0u32, Vec::new(), 0u32);
    for i in 0..4000u32 {
        match get(client.outbound, host, &format!("/get/r{i}")).await {
            Ok((200, _)) => ok += 1,
            other => failed.push(format!("{i}: {other:?}")),
        }
        if i % 20 == 0 {
            let (_, c) = get(client.admin, "x", "/config_dump").await.unwrap();
            let (_, s) = get(server.admin, "x", "/config_dump").await.unwrap();
            if serial(&c) != first_client && serial(&s) != first_server {
                after += 1;
                if after > 5 {
                    break;
                }
            }
        }
        if Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        failed.is_empty(),
        "{} failed of {}: {:?}",
        failed.len(),
        ok,
        &failed[..failed.len().min(5)]
    );
    assert!(
        after > 5,
        "no renewal on both sides within 40 s ({ok} requests)\n{}\n{}",
        client.log(),
        server.log()
    );
    let issued = |log: &str| log.matches("workload certificate issued by the CA").count();
    // Renewed, and not in a loop: a handful of issuances in the test's seconds.
    for (who, log) in [("client", client.log()), ("server", server.log())] {
        let n = issued(&log);
        assert!((2..=8).contains(&n), "{who}: {n} issuances\n{log}");
    }
    drop(client);
    drop(server);
    app.stop(Duration::from_secs(2));
    ca.stop_and_log();
}

/// The labels of the one `name` series at a sidecar whose labels include `filter` (the test
/// fails if there is not exactly one).
fn one_series(
    m: &[remora_e2e::client::Sample],
    name: &str,
    filter: &[(&str, &str)],
) -> std::collections::BTreeMap<String, String> {
    let found: Vec<_> = m
        .iter()
        .filter(|s| s.name == name)
        .filter(|s| {
            filter
                .iter()
                .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .collect();
    assert_eq!(found.len(), 1, "{name} {filter:?}: {found:#?}");
    found[0].labels.clone()
}

/// Both sides of a request between two sidecars over mTLS name each other with Istio's labels:
/// the server (reporter `destination`) names the client by its certificate (principal,
/// namespace) and what it said of itself in the metadata exchange (workload), and itself fully;
/// the client (reporter `source`) names the server by the SPIFFE id its certificate proved, the
/// server's answer in the exchange and the endpoint's labels in the rules, and itself fully.
#[tokio::test]
async fn metrics_name_both_sides_of_a_mutual_tls_request() {
    let Pair {
        mut ca,
        _api,
        mut app,
        server,
        client,
        ..
    } = pair("STRICT", &[]).await;
    let host = "httpbin.default.svc.cluster.local:8000";
    for i in 0..3 {
        let (code, body) = get(client.outbound, host, &format!("/get/{i}"))
            .await
            .unwrap();
        assert_eq!(code, 200, "{body}\n{}\n{}", client.log(), server.log());
    }
    let want_server = [
        ("reporter", "destination"),
        ("response_code", "200"),
        ("source_principal", SLEEP),
        ("source_workload_namespace", "other"),
        // What the client sidecar said of itself (Istio's metadata exchange, over mTLS).
        ("source_workload", "sleep"),
        ("source_canonical_service", "sleep"),
        ("source_canonical_revision", "latest"),
        ("source_cluster", "Kubernetes"),
        ("destination_workload", "httpbin"),
        ("destination_workload_namespace", "default"),
        ("destination_principal", HTTPBIN),
        ("destination_canonical_service", "httpbin"),
        ("destination_canonical_revision", "latest"),
        ("destination_cluster", "Kubernetes"),
        ("connection_security_policy", "mutual_tls"),
    ];
    let m = server.metrics().await;
    let l = one_series(&m, "istio_requests_total", &want_server);
    assert_eq!(
        remora_e2e::client::sum(&m, "istio_requests_total", &want_server),
        3.0,
        "{l:?}"
    );
    for family in [
        "istio_request_duration_milliseconds_count",
        "istio_request_bytes_count",
        "istio_response_bytes_count",
    ] {
        assert_eq!(
            remora_e2e::client::sum(&m, family, &want_server),
            3.0,
            "{family}"
        );
    }
    let want_client = [
        ("reporter", "source"),
        ("response_code", "200"),
        ("source_workload", "sleep"),
        ("source_workload_namespace", "other"),
        ("source_principal", SLEEP),
        ("source_canonical_service", "sleep"),
        ("source_canonical_revision", "latest"),
        ("source_cluster", "Kubernetes"),
        ("destination_workload_namespace", "default"),
        ("destination_principal", HTTPBIN),
        // What the server sidecar answered of itself (the metadata exchange).
        ("destination_workload", "httpbin"),
        ("destination_canonical_revision", "latest"),
        // The endpoint's labels in the client's rules (a ServiceEntry): `app: httpbin`.
        ("destination_app", "httpbin"),
        ("destination_canonical_service", "httpbin"),
        ("destination_cluster", "Kubernetes"),
        ("destination_service", "httpbin.default.svc.cluster.local"),
        ("connection_security_policy", "mutual_tls"),
    ];
    let cm = client.metrics().await;
    let l = one_series(&cm, "istio_requests_total", &want_client);
    assert_eq!(
        remora_e2e::client::sum(&cm, "istio_requests_total", &want_client),
        3.0,
        "{l:?}"
    );
    drop(client);
    drop(server);
    app.stop(Duration::from_secs(2));
    ca.stop_and_log();
}

/// Opaque TCP between sidecars goes over mTLS too: a line protocol (not HTTP) through the
/// client's outbound listener to a ServiceEntry endpoint with a sidecar; the server sidecar
/// terminates the mTLS, classifies the bytes as TCP and counts the connection `mutual_tls`
/// with the client's principal in its access log.
#[tokio::test]
async fn opaque_tcp_between_sidecars_is_mutual_tls() {
    let (_api, mut ca, _root, dir) = ca_with_root().await;
    let (mut app, app_addr) = start_app(dir.path(), &["kv"]);
    let mut server = Sidecar::start(
        "kv",
        dir.path(),
        ca.ca,
        "default",
        "httpbin",
        "tok-httpbin",
        // PeerAuthentication only: the HTTP app's AuthorizationPolicy (paths) would deny TCP.
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: default, namespace: default}\nspec:\n  mtls: {mode: STRICT}\n",
        ("fixed-inbound-target", app_addr),
        &[],
    );
    server.ready().await;
    // The client's rules: a TCP ServiceEntry at the server sidecar's inbound address (the
    // client's original destination), its endpoint labelled as having a sidecar.
    let p = server.inbound.port();
    let rules = format!(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: kv, namespace: other}}\nspec:\n  hosts: [kv.default.svc.cluster.local]\n  addresses: [127.0.0.1/32]\n  location: MESH_INTERNAL\n  ports: [{{number: {p}, name: tcp, protocol: TCP}}]\n  resolution: STATIC\n  endpoints:\n  - address: 127.0.0.1\n    labels: {{app: kv, security.istio.io/tlsMode: istio}}\n"
    );
    let mut client = Sidecar::start(
        "sleep",
        dir.path(),
        ca.ca,
        "other",
        "sleep",
        "tok-other-ns",
        &rules,
        ("fixed-outbound-target", server.inbound),
        &[],
    );
    client.ready().await;

    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let tcp = tokio::net::TcpStream::connect(client.outbound)
        .await
        .unwrap();
    let (r, mut w) = tcp.into_split();
    let mut lines = BufReader::new(r).lines();
    async fn ask(
        w: &mut tokio::net::tcp::OwnedWriteHalf,
        lines: &mut tokio::io::Lines<BufReader<tokio::net::tcp::OwnedReadHalf>>,
        q: &str,
    ) -> String {
        w.write_all(format!("{q}\r\n").as_bytes()).await.unwrap();
        tokio::time::timeout(Duration::from_secs(10), lines.next_line())
            .await
            .expect("an answer within 10 s")
            .unwrap()
            .unwrap_or_default()
    }
    let pong = ask(&mut w, &mut lines, "PING").await;
    assert_eq!(pong, "+PONG", "{}\n{}", client.log(), server.log());
    assert_eq!(ask(&mut w, &mut lines, "SET k v").await, "+OK");
    assert_eq!(ask(&mut w, &mut lines, "GET k").await, "$v");
    drop(w);
    drop(lines);
    // The connection's end is recorded on both sides (bounded wait).
    let deadline = Instant::now() + PATIENCE;
    loop {
        let m = server.metrics().await;
        let closed = remora_e2e::client::sum(
            &m,
            "istio_tcp_connections_closed_total",
            &[
                ("reporter", "destination"),
                ("connection_security_policy", "mutual_tls"),
            ],
        );
        if closed >= 1.0 {
            break;
        }
        assert!(Instant::now() < deadline, "{m:?}\n{}", server.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let m = client.metrics().await;
    assert!(
        remora_e2e::client::sum(
            &m,
            "istio_tcp_connections_opened_total",
            &[
                ("reporter", "source"),
                ("connection_security_policy", "mutual_tls")
            ],
        ) >= 1.0,
        "{m:?}"
    );
    // Both sides named with Istio's labels: the client by its certificate at the server, the
    // server by the identity its certificate proved and its endpoint's labels at the client.
    let sm = server.metrics().await;
    one_series(
        &sm,
        "istio_tcp_connections_closed_total",
        &[
            ("reporter", "destination"),
            ("source_principal", SLEEP),
            ("source_workload_namespace", "other"),
            ("destination_workload", "kv"),
            ("destination_principal", HTTPBIN),
            ("destination_canonical_service", "kv"),
            ("request_protocol", "tcp"),
        ],
    );
    one_series(
        &m,
        "istio_tcp_connections_opened_total",
        &[
            ("reporter", "source"),
            ("source_workload", "sleep"),
            ("source_principal", SLEEP),
            ("destination_principal", HTTPBIN),
            ("destination_workload_namespace", "default"),
            ("destination_app", "kv"),
            ("destination_service", "kv.default.svc.cluster.local"),
        ],
    );
    // The access log is written by a thread of its own, a moment after the metric (bounded
    // wait).
    let deadline = Instant::now() + PATIENCE;
    while !server.log().lines().any(|l| {
        l.contains("\"kind\":\"tcp\"") && l.contains(&format!("\"peer_principal\":\"{SLEEP}\""))
    }) {
        assert!(Instant::now() < deadline, "{}", server.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(client);
    drop(server);
    app.stop(Duration::from_secs(2));
    ca.stop_and_log();
}

/// The server sidecar's access-log lines of inbound HTTP requests, once there are `n` of them
/// (bounded wait: the log is written by a task of its own).
async fn inbound_requests(server: &Sidecar, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let lines: Vec<Value> = server
            .log()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v["kind"] == "http" && v["direction"] == "inbound")
            .collect();
        if lines.len() >= n {
            return lines;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {n} access-log lines\n{}",
            lines.len(),
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// HTTP requests between sidecars reuse the mTLS connections, HTTP/1.1 and HTTP/2 alike, and
/// every request on a reused connection carries that connection's client identity. Two client
/// sidecars with different identities (other/sleep, default/httpbin) send interleaved requests,
/// each on a new connection to their sidecar; the server sidecar's access log names, per
/// request, the connection it came on (`downstream`, the client sidecar's address) and the
/// client's SPIFFE id, which its AuthorizationPolicy acts on (sleep may read `/get/*`, httpbin
/// may not).
#[tokio::test]
async fn requests_between_sidecars_reuse_mutual_tls_connections() {
    let Pair {
        mut ca,
        _api,
        mut app,
        server,
        client,
        dir,
        ..
    } = pair("STRICT", &[]).await;
    let mut other = Sidecar::start(
        "curl",
        dir.path(),
        ca.ca,
        "default",
        "httpbin",
        "tok-httpbin",
        &client_rules(server.inbound),
        ("fixed-outbound-target", server.inbound),
        &[],
    );
    other.ready().await;
    const N: usize = 30;
    let host = "httpbin.default.svc.cluster.local:8000";
    let logs = || format!("{}\n{}\n{}", client.log(), other.log(), server.log());
    // The time of each of sleep's requests, per protocol (a new connection to its sidecar
    // included).
    let mut took: Vec<(&str, Vec<Duration>)> = Vec::new();
    for proto in ["h1", "h2"] {
        let mut times = Vec::with_capacity(N);
        for i in 0..N {
            let get_as = |sidecar: &Sidecar, who: &str| {
                let (addr, path) = (sidecar.outbound, format!("/get/{proto}-{who}-{i}"));
                async move {
                    if proto == "h1" {
                        get(addr, host, &path).await
                    } else {
                        get_h2(addr, host, &path).await
                    }
                }
            };
            let t = Instant::now();
            let (code, body) = get_as(&client, "sleep").await.unwrap();
            times.push(t.elapsed());
            assert_eq!(code, 200, "{proto} {i}: {body}\n{}", logs());
            let (code, body) = get_as(&other, "httpbin").await.unwrap();
            assert_eq!(
                (code, body.as_str()),
                (403, "RBAC: access denied"),
                "{proto} {i}\n{}",
                logs()
            );
        }
        times.sort();
        took.push((proto, times));
    }

    let lines = inbound_requests(&server, 4 * N).await;
    assert_eq!(lines.len(), 4 * N);
    // (protocol, client) -> the connections its requests came on.
    let mut conns: std::collections::BTreeMap<(String, &str), std::collections::BTreeSet<String>> =
        Default::default();
    // connection -> the identities seen on it.
    let mut ids: std::collections::BTreeMap<String, std::collections::BTreeSet<String>> =
        Default::default();
    for l in &lines {
        let path = l["path"].as_str().unwrap_or_default();
        let (proto, who) = path
            .strip_prefix("/get/")
            .and_then(|p| p.split_once('-'))
            .map(|(proto, rest)| (proto, rest.split('-').next().unwrap_or_default()))
            .unwrap_or_else(|| panic!("{l}"));
        let want = if who == "sleep" { SLEEP } else { HTTPBIN };
        assert_eq!(l["peer_principal"], want, "{l}");
        assert_eq!(l["connection_security_policy"], "mutual_tls", "{l}");
        let protocol = if proto == "h1" { "http" } else { "http2" };
        assert_eq!(l["request_protocol"], protocol, "{l}");
        let conn = l["downstream"].as_str().unwrap_or_default().to_string();
        conns
            .entry((
                proto.to_string(),
                if who == "sleep" { "sleep" } else { "httpbin" },
            ))
            .or_default()
            .insert(conn.clone());
        ids.entry(conn).or_default().insert(want.to_string());
    }
    // Never two identities on one connection.
    for (conn, who) in &ids {
        assert_eq!(who.len(), 1, "{conn}: {who:?}");
    }
    let counts: Vec<String> = conns
        .iter()
        .map(|((proto, who), c)| format!("{proto} {who}: {} connections", c.len()))
        .collect();
    println!(
        "measured: {N} requests each, mTLS connections the server sidecar accepted: {counts:?}"
    );
    for (proto, t) in &took {
        println!(
            "measured: sleep's {proto} requests through both sidecars (debug build, each on a new connection to the client sidecar): p50 {:?}, max {:?}",
            t[N / 2],
            t[N - 1]
        );
    }
    assert_eq!(conns.len(), 4, "{conns:?}");
    for ((proto, who), c) in &conns {
        // Sequential requests: one connection, give or take a request that came in while the
        // previous one's connection was on its way back to the pool.
        assert!(
            c.len() <= N / 10,
            "{proto} {who}: {} connections for {N} requests: {c:?}",
            c.len()
        );
    }
    let m = server.metrics().await;
    assert_eq!(
        remora_e2e::client::sum(
            &m,
            "istio_requests_total",
            &[
                ("reporter", "destination"),
                ("connection_security_policy", "mutual_tls"),
            ],
        ),
        (4 * N) as f64
    );
    drop(other);
    drop(client);
    drop(server);
    app.stop(Duration::from_secs(2));
    ca.stop_and_log();
}

/// A server sidecar's mTLS, as the stand-in below sees each connection: the client
/// certificate's serial, the SNI and the ALPN value agreed.
#[derive(Clone, Debug)]
struct SeenConnection {
    serial: String,
    sni: Option<String>,
    alpn: Option<String>,
}

/// A stand-in for a server sidecar, to see what the client sidecar presents: it terminates
/// mTLS with a certificate the CA issued for default/httpbin, requires a client certificate from
/// the mesh root, agrees on Istio's ALPN values, records each connection, and answers every
/// HTTP/1.1 request 200 with the number of the connection it came on.
async fn stand_in_server(
    ca: &mut CaProc,
    root: &str,
) -> (
    std::net::SocketAddr,
    Arc<std::sync::Mutex<Vec<SeenConnection>>>,
) {
    use rustls_pki_types::PrivateKeyDer;
    let key = rcgen::KeyPair::generate().unwrap();
    let mut c = ca.client(root).await;
    let chain = c
        .create(Some("tok-httpbin"), &csr_with(&key, &[HTTPBIN]), 3600)
        .await
        .unwrap();
    let certs: Vec<CertificateDer<'static>> = chain.iter().map(|p| der(p)).collect();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(der(root)).unwrap();
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
        .with_single_cert(certs, PrivateKeyDer::Pkcs8(key.serialize_der().into()))
        .unwrap();
    cfg.alpn_protocols = vec![b"istio-http/1.1".to_vec(), b"istio".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let record = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let Ok(tls) = acceptor.accept(tcp).await else {
                continue;
            };
            let conn = tls.get_ref().1;
            let leaf = conn.peer_certificates().unwrap()[0].clone();
            let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref()).unwrap();
            let n = {
                let mut s = record.lock().unwrap();
                s.push(SeenConnection {
                    serial: cert.raw_serial_as_string().replace(':', ""),
                    sni: conn.server_name().map(str::to_string),
                    alpn: conn
                        .alpn_protocol()
                        .map(|a| String::from_utf8_lossy(a).into_owned()),
                });
                s.len() - 1
            };
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |_req| async move {
                    Ok::<_, std::convert::Infallible>(http::Response::new(
                        http_body_util::Full::new(bytes::Bytes::from(n.to_string())),
                    ))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    (addr, seen)
}

/// After the client sidecar's certificate rotates, its requests go on new connections that
/// present the new certificate (the old connections are not handed out again); before, they
/// share a connection. Two-minute certificates renewed at a tenth of their life (a renewal
/// every few seconds); the server is a stand-in that records the certificate of each connection.
#[tokio::test]
async fn after_a_rotation_new_connections_present_the_new_certificate() {
    let (_api, mut ca, root, dir) = ca_with_root().await;
    let (addr, seen) = stand_in_server(&mut ca, &root).await;
    let mut client = Sidecar::start(
        "sleep",
        dir.path(),
        ca.ca,
        "other",
        "sleep",
        "tok-other-ns",
        &client_rules(addr),
        ("fixed-outbound-target", addr),
        &["--cert-ttl=2m", "--cert-rotate-at=0.1"],
    );
    client.ready().await;
    let serial = |dump: &str| -> String {
        let v: Value = serde_json::from_str(dump).unwrap();
        v["identity"]["serial"]
            .as_str()
            .unwrap_or_default()
            .to_lowercase()
    };
    let host = "httpbin.default.svc.cluster.local:8000";
    // The client's serials in the order they appeared; per request: the serial current just
    // before it was sent, and the connection it went on.
    let mut serials: Vec<String> = Vec::new();
    let mut sent: Vec<(usize, usize)> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(40);
    let mut after = 0;
    for i in 0..2000 {
        let (_, d) = get(client.admin, "x", "/config_dump").await.unwrap();
        let s = serial(&d);
        if serials.last() != Some(&s) {
            serials.push(s);
        }
        let (code, body) = get(client.outbound, host, &format!("/r{i}")).await.unwrap();
        assert_eq!(code, 200, "{body}\n{}", client.log());
        sent.push((serials.len() - 1, body.trim().parse().unwrap()));
        if serials.len() > 1 {
            after += 1;
            if after >= 20 {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no rotation within 40 s ({serials:?})\n{}",
            client.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let seen = seen.lock().unwrap().clone();
    // Istio's SNI (the port is the original destination's) and ALPN value.
    let sni = format!(
        "outbound_.{}_._.httpbin.default.svc.cluster.local",
        addr.port()
    );
    for c in &seen {
        assert_eq!(c.sni.as_deref(), Some(sni.as_str()));
        assert_eq!(c.alpn.as_deref(), Some("istio-http/1.1"));
    }
    for (n, (current, conn)) in sent.iter().enumerate() {
        let presented = &seen[*conn].serial;
        let at = serials
            .iter()
            .position(|s| s == presented)
            .unwrap_or_else(|| {
                panic!("request {n}: serial {presented} never current ({serials:?})")
            });
        // The certificate of the connection is the one current when the request was sent, or
        // a newer one (a renewal between the dump and the request).
        assert!(
            at >= *current,
            "request {n} went on connection {conn} with the old certificate {presented} ({serials:?})"
        );
    }
    let requests = sent.len();
    println!(
        "measured: {requests} requests, {} serials, {} mTLS connections",
        serials.len(),
        seen.len()
    );
    // One connection per certificate, give or take a request that came in while the previous
    // one's connection was on its way back to the pool.
    assert!(
        seen.len() <= 2 * serials.len() + 2,
        "{} connections for {requests} requests and {} certificates",
        seen.len(),
        serials.len()
    );
    drop(client);
    ca.stop_and_log();
}
