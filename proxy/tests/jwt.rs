//! Process tests: RequestAuthentication (JWT) enforced by the sidecar on inbound requests, with
//! Istio's semantics — no token passes authentication (AuthorizationPolicy decides), an invalid
//! token gets Envoy's 401 (403 for audiences), a valid one gives AuthorizationPolicy its
//! request principal and claims — using Istio's own sample tokens, JWKS and test key
//! (security/tools/jwt/samples, in the shared corpus). Each case is a real proxy in front of the
//! echo server, which shows the headers the app receives.

mod common;

use common::*;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const ISSUER: &str = "testing@secure.istio.io";
const DEMO_PRINCIPAL: &str = "testing@secure.istio.io/testing@secure.istio.io";

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Istio's JWT samples: the JWKS, the two signed tokens and the test key that signed them.
struct Samples {
    jwks: String,
    demo: String,
    groups: String,
    key: EncodingKey,
    kid: String,
}

impl Samples {
    fn load() -> Option<Samples> {
        let dir = remora_corpus::istio("jwt")?;
        let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap();
        let pem = read("key.pem");
        let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        use base64::Engine;
        let der = base64::engine::general_purpose::STANDARD
            .decode(body)
            .unwrap();
        let jwks = read("jwks.json");
        let kid = serde_json::from_str::<Value>(&jwks).unwrap()["keys"][0]["kid"]
            .as_str()
            .unwrap()
            .to_string();
        Some(Samples {
            jwks: jwks.trim().to_string(),
            demo: read("demo.jwt").trim().to_string(),
            groups: read("groups-scope.jwt").trim().to_string(),
            key: EncodingKey::from_rsa_der(&der),
            kid,
        })
    }

    /// A token signed with Istio's test key; `kid` None = the JWKS's kid.
    fn mint(&self, claims: Value, kid: Option<&str>) -> String {
        let mut h = Header::new(Algorithm::RS256);
        h.kid = Some(kid.unwrap_or(&self.kid).to_string());
        jsonwebtoken::encode(&h, &claims, &self.key).unwrap()
    }
}

fn doc(kind: &str, name: &str, spec: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1\nkind: {kind}\nmetadata: {{name: {name}, namespace: testns}}\nspec:\n{spec}\n---\n"
    )
}

/// A proxy whose inbound listener fronts `backend`, with `rules` (YAML) and extra flags.
fn start(backend: SocketAddr, rules: &str, extra: &[String]) -> (ProxyProc, RulesDir) {
    let dir = RulesDir::new(&[("jwt.yaml", rules)]);
    let mut o = ProxyOpts::new(dir.path());
    o.fixed_inbound = Some(backend);
    o.extra_args.push("--inbound-source-fallback".into());
    o.extra_args.extend(extra.iter().cloned());
    let mut p = ProxyProc::start(o);
    p.wait_ready();
    (p, dir)
}

fn get(p: &ProxyProc, path: &str, headers: &[(&str, &str)]) -> HttpResp {
    http_request(p.ports.inbound_addr(), "GET", path, headers, b"").unwrap()
}

fn bearer(t: &str) -> String {
    format!("Bearer {t}")
}

/// The headers the app received (the echo server's answer).
fn app_headers(r: &HttpResp) -> Value {
    r.json()["headers"].clone()
}

#[test]
fn istio_sample_tokens_with_inline_jwks_and_request_principals() {
    let Some(s) = Samples::load() else { return };
    let rt = rt();
    let backend = rt.block_on(spawn_http_echo("127.0.0.1:0".parse().unwrap(), "app"));
    let rules = doc(
        "RequestAuthentication",
        "jwt-demo",
        &format!("  jwtRules:\n  - issuer: {ISSUER}\n    jwks: '{}'", s.jwks),
    ) + &doc(
        "AuthorizationPolicy",
        "require-jwt",
        &format!("  rules:\n  - from:\n    - source: {{requestPrincipals: [\"{DEMO_PRINCIPAL}\"]}}\n    to:\n    - operation: {{paths: [\"/api/*\"]}}\n  - to:\n    - operation: {{paths: [/groups]}}\n    when:\n    - key: request.auth.claims[groups]\n      values: [group1]"),
    );
    let (p, _dir) = start(backend, &rules, &[]);
    let t = now();
    let claims = |exp: u64| json!({"iss": ISSUER, "sub": ISSUER, "exp": exp});
    let expired = s.mint(claims(t - 3600), None);
    let in_skew = s.mint(claims(t - 30), None);
    let other_issuer = s.mint(
        json!({"iss": "evil@example.com", "sub": "x", "exp": t + 600}),
        None,
    );
    let unknown_kid = s.mint(claims(t + 600), Some("not-in-the-jwks"));
    let tampered = {
        let parts: Vec<&str> = s.demo.split('.').collect();
        use base64::Engine;
        let forged = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!(
            r#"{{"iss":"{ISSUER}","sub":"{ISSUER}","admin":true}}"#
        ));
        format!("{}.{forged}.{}", parts[0], parts[2])
    };
    let demo_query = format!("/api/items?access_token={}", s.demo);
    type Case<'a> = (&'a str, &'a str, Option<&'a str>, u16, &'a str);
    let cases: &[Case] = &[
        ("Istio's demo token", "/api/items", Some(&s.demo), 200, ""),
        (
            "no token: AuthorizationPolicy denies",
            "/api/items",
            None,
            403,
            "RBAC: access denied",
        ),
        (
            "not a JWT",
            "/api/items",
            Some("abc"),
            401,
            "Jwt is not in the form of Header.Payload.Signature with two dots and 3 sections",
        ),
        (
            "tampered payload",
            "/api/items",
            Some(&tampered),
            401,
            "Jwt verification fails",
        ),
        (
            "expired",
            "/api/items",
            Some(&expired),
            401,
            "Jwt is expired",
        ),
        (
            "expired 30 s ago: within the clock skew",
            "/api/items",
            Some(&in_skew),
            200,
            "",
        ),
        (
            "another issuer",
            "/api/items",
            Some(&other_issuer),
            401,
            "Jwt issuer is not configured",
        ),
        (
            "a kid the JWKS lacks",
            "/api/items",
            Some(&unknown_kid),
            401,
            "Jwks doesn't have key to match kid or alg from Jwt",
        ),
        (
            "claims: no groups in the demo token",
            "/groups",
            Some(&s.demo),
            403,
            "RBAC: access denied",
        ),
        (
            "claims: groups-scope.jwt has group1",
            "/groups",
            Some(&s.groups),
            200,
            "",
        ),
        ("access_token parameter", &demo_query, None, 200, ""),
    ];
    for (name, path, token, want, body) in cases {
        let auth = token.map(bearer);
        let headers: Vec<(&str, &str)> =
            auth.iter().map(|a| ("authorization", a.as_str())).collect();
        let r = get(&p, path, &headers);
        assert_eq!(r.status, *want, "{name}: {}", r.body_text());
        if *want == 200 {
            // forwardOriginalToken defaults to false: the app never sees the token header.
            assert_eq!(app_headers(&r).get("authorization"), None, "{name}");
        } else {
            assert_eq!(r.body_text(), *body, "{name}");
        }
        if *want == 401 {
            let www = r.header("www-authenticate").unwrap_or_default();
            assert!(
                www.starts_with("Bearer realm=\"http://")
                    && www.ends_with(&format!("{path}\", error=\"invalid_token\"")),
                "{name}: {www}"
            );
        }
    }
    // gRPC: UNAUTHENTICATED.
    let r = http_request(
        p.ports.inbound_addr(),
        "POST",
        "/pkg.Svc/Call",
        &[
            ("content-type", "application/grpc"),
            ("te", "trailers"),
            ("authorization", &bearer(&expired)),
        ],
        b"",
    )
    .unwrap();
    assert_eq!(
        r.header("grpc-status"),
        Some("16"),
        "{} {}",
        r.status,
        r.body_text()
    );

    // One line per refusal, naming the RequestAuthentication and the reason; never the token.
    let line = p.wait_stderr("request rejected: JWT from header authorization refused by RequestAuthentication testns/jwt-demo issuer \"testing@secure.istio.io\": Jwt is expired");
    assert!(line.contains("/api/items"), "{line}");
    p.wait_stderr("refused by RequestAuthentication testns/jwt-demo: Jwt issuer is not configured");
    let stderr = p.stderr_text();
    for token in [&expired, &tampered, &unknown_kid, &s.demo] {
        let signature = token.rsplit('.').next().unwrap();
        assert!(!stderr.contains(signature), "a token in the log:\n{stderr}");
    }
    let m = p.metrics_when("remora_jwt_rejected_total", &["reason=\"expired\""], 2.0);
    for (reason, n) in [
        ("expired", 2.0),
        ("malformed", 1.0),
        ("signature", 1.0),
        ("unknown_issuer", 1.0),
        ("unknown_key", 1.0),
    ] {
        assert_eq!(
            metric_value(
                &m,
                "remora_jwt_rejected_total",
                &[&format!("reason=\"{reason}\"")]
            ),
            n,
            "{reason}: {m}"
        );
    }
    let log = p.wait_log(|l| l["status"] == 401);
    assert!(
        log["error"]
            .as_str()
            .unwrap_or("")
            .starts_with("jwt_authn_access_denied{"),
        "{log}"
    );
}

#[test]
fn token_locations_output_headers_and_audiences() {
    let Some(s) = Samples::load() else { return };
    let rt = rt();
    let backend = rt.block_on(spawn_http_echo("127.0.0.1:0".parse().unwrap(), "app"));
    let rules = doc(
        "RequestAuthentication",
        "jwt-custom",
        &format!(
            "  jwtRules:\n  - issuer: {ISSUER}\n    jwks: '{}'\n    audiences: [api.example]\n    fromHeaders: [{{name: x-jwt, prefix: \"Token \"}}]\n    fromParams: [jwt]\n    forwardOriginalToken: true\n    outputPayloadToHeader: x-jwt-payload\n    outputClaimToHeaders:\n    - {{header: x-jwt-foo, claim: foo}}\n    - {{header: x-jwt-sub, claim: sub}}",
            s.jwks
        ),
    ) + &doc(
        "AuthorizationPolicy",
        "any-jwt",
        "  rules:\n  - from:\n    - source: {requestPrincipals: [\"*\"]}",
    );
    let (p, _dir) = start(backend, &rules, &[]);
    let exp = now() + 600;
    let token = s.mint(
        json!({"iss": ISSUER, "sub": "alice", "aud": "api.example", "foo": "bar", "exp": exp}),
        None,
    );
    let wrong_aud = s.mint(
        json!({"iss": ISSUER, "sub": "alice", "aud": "other.example", "exp": exp}),
        None,
    );
    let custom = format!("Token {token}");

    let r = get(&p, "/", &[("x-jwt", &custom), ("x-jwt-foo", "forged")]);
    assert_eq!(r.status, 200, "{}", r.body_text());
    let h = app_headers(&r);
    assert_eq!(h["x-jwt"], custom, "forwardOriginalToken keeps the header");
    assert_eq!(h["x-jwt-payload"], token.split('.').nth(1).unwrap());
    assert_eq!(
        h["x-jwt-foo"], "bar",
        "the client's own x-jwt-foo is replaced"
    );
    assert_eq!(h["x-jwt-sub"], "alice");

    // Only the configured locations are read: a Bearer token is not looked at (no principal).
    let r = get(&p, "/", &[("authorization", &bearer(&token))]);
    assert_eq!(
        (r.status, r.body_text().as_str()),
        (403, "RBAC: access denied")
    );
    // Forged output headers without a token never reach the app (nor pass as a principal).
    let r = get(
        &p,
        &format!("/?jwt={token}"),
        &[("x-jwt-payload", "forged")],
    );
    assert_eq!(r.status, 200, "{}", r.body_text());
    assert_eq!(
        app_headers(&r)["x-jwt-payload"],
        token.split('.').nth(1).unwrap()
    );
    // Audiences: another audience, or none (Istio's demo token), is refused with 403.
    for t in [&wrong_aud, &s.demo] {
        let r = get(&p, "/", &[("x-jwt", &format!("Token {t}"))]);
        assert_eq!(
            (r.status, r.body_text().as_str()),
            (403, "Audiences in Jwt are not allowed")
        );
    }
    let m = p.metrics_when("remora_jwt_rejected_total", &["reason=\"audience\""], 2.0);
    assert_eq!(
        metric_value(&m, "remora_jwt_rejected_total", &["reason=\"audience\""]),
        2.0,
        "{m}"
    );
}

/// An HTTPS server on 127.0.0.1 (certificate for the address, signed by a fresh CA) serving
/// `body` at any path with the status in `status`; counts the requests. Returns its address
/// and the CA's PEM.
async fn spawn_jwks_server(
    body: String,
    status: Arc<AtomicU16>,
    hits: Arc<AtomicUsize>,
) -> (SocketAddr, String) {
    let body = bytes::Bytes::from(body);
    spawn_https_server(Arc::new(move |_path: &str| {
        hits.fetch_add(1, Ordering::SeqCst);
        (status.load(Ordering::SeqCst), body.clone())
    }))
    .await
}

/// What the test HTTPS server answers for a path: status and body.
type Handler = Arc<dyn Fn(&str) -> (u16, bytes::Bytes) + Send + Sync>;

/// The HTTPS server of [`spawn_jwks_server`], answering each request with `handler(path)`.
async fn spawn_https_server(handler: Handler) -> (SocketAddr, String) {
    use http_body_util::Full;
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "remora jwks test CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params
        .subject_alt_names
        .push(rcgen::SanType::IpAddress("127.0.0.1".parse().unwrap()));
    let cert = params.signed_by(&key, &ca, &ca_key).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![cert.der().clone()],
        rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
    )
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((sock, _)) = l.accept().await else {
                return;
            };
            let (acceptor, handler) = (acceptor.clone(), handler.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(sock).await else {
                    return;
                };
                let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let (status, body) = handler(req.uri().path());
                    async move {
                        Ok::<_, std::io::Error>(
                            hyper::Response::builder()
                                .status(status)
                                .header("content-type", "application/json")
                                .body(Full::new(body))
                                .unwrap(),
                        )
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    (addr, ca.pem())
}

#[test]
fn jwks_uri_over_https_cached_refreshed_and_failing() {
    let Some(s) = Samples::load() else { return };
    let rt = rt();
    let backend = rt.block_on(spawn_http_echo("127.0.0.1:0".parse().unwrap(), "app"));
    let status = Arc::new(AtomicU16::new(200));
    let hits = Arc::new(AtomicUsize::new(0));
    let (jwks_addr, ca_pem) = rt.block_on(spawn_jwks_server(
        s.jwks.clone(),
        status.clone(),
        hits.clone(),
    ));
    let tmp = tempfile::tempdir().unwrap();
    let ca_file = tmp.path().join("jwks-ca.pem");
    std::fs::write(&ca_file, ca_pem).unwrap();
    let uri = format!("https://{jwks_addr}/jwks.json");
    let rules_for = |uri: &str| {
        doc(
            "RequestAuthentication",
            "jwt-remote",
            &format!("  jwtRules:\n  - issuer: {ISSUER}\n    jwksUri: {uri}\n    timeout: 2s"),
        ) + &doc(
            "AuthorizationPolicy",
            "require-jwt",
            &format!(
                "  rules:\n  - from:\n    - source: {{requestPrincipals: [\"{DEMO_PRINCIPAL}\"]}}"
            ),
        )
    };
    let ca_flag = format!("--jwks-ca-file={}", ca_file.display());
    let demo = bearer(&s.demo);

    // Fetched once, then served from the cache.
    let (p, _dir) = start(backend, &rules_for(&uri), std::slice::from_ref(&ca_flag));
    for _ in 0..5 {
        let r = get(&p, "/", &[("authorization", &demo)]);
        assert_eq!(r.status, 200, "{}", r.body_text());
    }
    assert_eq!(
        hits.load(Ordering::SeqCst),
        1,
        "one fetch for five requests"
    );
    p.wait_stderr(&format!("JWKS fetched from {uri}"));
    assert_eq!(
        get(&p, "/", &[]).status,
        403,
        "no token: the policy needs a principal"
    );
    drop(p);

    // Refreshed every second: a failed refresh keeps the keys it had.
    let (p, _dir2) = start(
        backend,
        &rules_for(&uri),
        &[ca_flag.clone(), "--jwks-refresh-interval=1s".into()],
    );
    assert_eq!(get(&p, "/", &[("authorization", &demo)]).status, 200);
    status.store(500, Ordering::SeqCst);
    std::thread::sleep(Duration::from_millis(1200));
    assert_eq!(get(&p, "/", &[("authorization", &demo)]).status, 200);
    p.wait_stderr(&format!(
        "JWKS refresh from {uri} failed, keeping the keys fetched before: HTTP status 500"
    ));
    assert_eq!(get(&p, "/", &[("authorization", &demo)]).status, 200);
    drop(p);

    // Until a first fetch succeeds, tokens of the issuer fail: a server that answers 500, a
    // server whose certificate the proxy does not trust (no --jwks-ca-file), nothing listening.
    let dead = DeadPort::new();
    let cases = [
        (uri.clone(), vec![ca_flag.clone()], "HTTP status 500"),
        (uri.clone(), vec![], "TLS with 127.0.0.1"),
        (
            format!("http://{}/jwks.json", dead.addr()),
            vec![],
            "connect to",
        ),
    ];
    for (u, flags, why) in cases {
        let (p, _d) = start(backend, &rules_for(&u), &flags);
        let r = get(&p, "/", &[("authorization", &demo)]);
        assert_eq!(
            (r.status, r.body_text().as_str()),
            (401, "Jwks remote fetch is failed"),
            "{u}"
        );
        let line = p.wait_stderr(&format!("JWKS could not be fetched from {u}: "));
        assert!(line.contains(why), "{line}");
        let line = p.wait_stderr("refused by RequestAuthentication testns/jwt-remote issuer");
        assert!(
            line.contains(&format!("the JWKS could not be fetched from {u}")),
            "{line}"
        );
        let m = p.metrics_when(
            "remora_jwt_rejected_total",
            &["reason=\"jwks_unavailable\""],
            1.0,
        );
        assert_eq!(
            metric_value(
                &m,
                "remora_jwt_rejected_total",
                &["reason=\"jwks_unavailable\""]
            ),
            1.0,
            "{m}"
        );
    }
    status.store(200, Ordering::SeqCst);
}

/// A rule with only `issuer`: the keys come from the issuer's OpenID discovery document and its
/// `jwks_uri`, on a local HTTPS server; cached, refreshed keeping the last good keys, and
/// refused while nothing could be fetched.
#[test]
fn jwks_from_openid_discovery() {
    let Some(s) = Samples::load() else { return };
    let rt = rt();
    let backend = rt.block_on(spawn_http_echo("127.0.0.1:0".parse().unwrap(), "app"));
    let me = Arc::new(std::sync::OnceLock::<SocketAddr>::new());
    let discovery_status = Arc::new(AtomicU16::new(200));
    let jwks_uri_scheme = Arc::new(std::sync::Mutex::new("https"));
    let hits = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let handler: Handler = {
        let (me, st, scheme, hits, jwks) = (
            me.clone(),
            discovery_status.clone(),
            jwks_uri_scheme.clone(),
            hits.clone(),
            s.jwks.clone(),
        );
        Arc::new(move |path: &str| {
            hits.lock().unwrap().push(path.to_string());
            let addr = me.get().copied().unwrap();
            match path {
                "/idp/.well-known/openid-configuration" => {
                    let scheme = *scheme.lock().unwrap();
                    let doc = json!({
                        "issuer": format!("https://{addr}/idp"),
                        "jwks_uri": format!("{scheme}://{addr}/idp/keys"),
                    });
                    (st.load(Ordering::SeqCst), doc.to_string().into())
                }
                "/idp/keys" => (200, jwks.clone().into()),
                _ => (404, "not found".into()),
            }
        })
    };
    let (addr, ca_pem) = rt.block_on(spawn_https_server(handler));
    me.set(addr).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let ca_file = tmp.path().join("jwks-ca.pem");
    std::fs::write(&ca_file, ca_pem).unwrap();
    let ca_flag = format!("--jwks-ca-file={}", ca_file.display());
    let issuer = format!("https://{addr}/idp");
    let rules = doc(
        "RequestAuthentication",
        "jwt-discovery",
        &format!("  jwtRules:\n  - issuer: {issuer}\n    timeout: 2s"),
    ) + &doc(
        "AuthorizationPolicy",
        "require-jwt",
        &format!("  rules:\n  - from:\n    - source: {{requestPrincipals: [\"{issuer}/alice\"]}}"),
    );
    let exp = now() + 3600;
    let token = bearer(&s.mint(json!({"iss": issuer, "sub": "alice", "exp": exp}), None));
    // Signed by Istio's key but for another subject, and one with a forged signature.
    let bob = bearer(&s.mint(json!({"iss": issuer, "sub": "bob", "exp": exp}), None));
    let forged = {
        let mut parts: Vec<String> = token.split('.').map(String::from).collect();
        let sig = parts[2].clone();
        parts[2] = format!(
            "{}{}",
            if sig.starts_with('A') { "B" } else { "A" },
            &sig[1..]
        );
        parts.join(".")
    };
    let discovery = format!("https://{addr}/idp/.well-known/openid-configuration");

    let (p, _dir) = start(
        backend,
        &rules,
        &[ca_flag.clone(), "--jwks-refresh-interval=1s".into()],
    );
    for _ in 0..3 {
        let r = get(&p, "/", &[("authorization", &token)]);
        assert_eq!(r.status, 200, "{}", r.body_text());
    }
    assert_eq!(
        *hits.lock().unwrap(),
        ["/idp/.well-known/openid-configuration", "/idp/keys"],
        "one discovery and one JWKS fetch for three requests"
    );
    p.wait_stderr(&format!("JWKS fetched from {discovery} (OpenID discovery)"));
    assert_eq!(get(&p, "/", &[("authorization", &bob)]).status, 403);
    let r = get(&p, "/", &[("authorization", &forged)]);
    assert_eq!(
        (r.status, r.body_text().as_str()),
        (401, "Jwt verification fails")
    );
    // A failed refresh (the discovery document answers 500) keeps the keys.
    discovery_status.store(500, Ordering::SeqCst);
    std::thread::sleep(Duration::from_millis(1200));
    assert_eq!(get(&p, "/", &[("authorization", &token)]).status, 200);
    p.wait_stderr(&format!(
        "JWKS refresh from {discovery} (OpenID discovery) failed, keeping the keys fetched before: HTTP status 500"
    ));
    assert_eq!(get(&p, "/", &[("authorization", &token)]).status, 200);
    drop(p);

    // Nothing fetched yet: a failing discovery document, a plain-HTTP jwks_uri, an issuer that
    // is not an https:// URL.
    let cases: [(u16, &str, String, &str); 3] = [
        (500, "https", issuer.clone(), "HTTP status 500"),
        (200, "http", issuer.clone(), "is not an https:// URL"),
        (
            200,
            "https",
            "testing@secure.istio.io".into(),
            "is not an https:// URL to read an OpenID discovery document from",
        ),
    ];
    for (status, scheme, iss, why) in cases {
        discovery_status.store(status, Ordering::SeqCst);
        *jwks_uri_scheme.lock().unwrap() = scheme;
        let rules = doc(
            "RequestAuthentication",
            "jwt-discovery",
            &format!("  jwtRules:\n  - issuer: {iss}"),
        );
        let t = bearer(&s.mint(json!({"iss": iss, "sub": "alice", "exp": exp}), None));
        let (p, _d) = start(backend, &rules, std::slice::from_ref(&ca_flag));
        let r = get(&p, "/", &[("authorization", &t)]);
        assert_eq!(
            (r.status, r.body_text().as_str()),
            (401, "Jwks remote fetch is failed"),
            "{iss} {status} {scheme}"
        );
        let line = p.wait_stderr("refused by RequestAuthentication testns/jwt-discovery issuer");
        assert!(line.contains(why), "{line}");
    }
}
