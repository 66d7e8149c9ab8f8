//! Table tests of the pure JWT decisions. Tokens are minted here with HMAC and P-256 keys, and
//! with Istio's own test key and tokens when the corpus is there.

use super::*;
use jsonwebtoken::{EncodingKey, Header};
use remora_model::kinds::Meta;
use remora_model::security::request_authentication::RequestAuthenticationSpec;
use serde_json::json;

const NOW: u64 = 1_800_000_000;

fn b64(b: &[u8]) -> String {
    B64.encode(b)
}

fn policy(name: &str, rules: Value) -> RequestAuthentication {
    let spec: RequestAuthenticationSpec =
        serde_json::from_value(json!({ "jwtRules": rules })).unwrap();
    let meta = Meta {
        kind: "RequestAuthentication".into(),
        api_version: "security.istio.io/v1".into(),
        name: name.into(),
        namespace: "testns".into(),
        file: "ra.yaml".into(),
        document: 1,
    };
    RequestAuthentication::new(meta, spec, remora_model::kinds::DEFAULT_ROOT_NAMESPACE).unwrap()
}

fn authn(rules: Value) -> Authn {
    Authn::compile(&[policy("ra", rules)])
}

/// An HMAC JWKS with one key per `(kid, secret)`.
fn hs_jwks(keys: &[(&str, &str)]) -> String {
    let keys: Vec<Value> = keys
        .iter()
        .map(|(kid, secret)| json!({"kty": "oct", "kid": kid, "k": b64(secret.as_bytes()), "alg": "HS256"}))
        .collect();
    json!({ "keys": keys }).to_string()
}

fn hs_token(kid: &str, secret: &str, claims: Value) -> String {
    let mut h = Header::new(Algorithm::HS256);
    h.kid = Some(kid.into());
    jsonwebtoken::encode(&h, &claims, &EncodingKey::from_secret(secret.as_bytes())).unwrap()
}

/// A token from raw header and payload JSON (signature `sig`), for the parse errors.
fn raw(header: &str, payload: &str) -> String {
    format!(
        "{}.{}.c2ln",
        b64(header.as_bytes()),
        b64(payload.as_bytes())
    )
}

fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.append(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    h
}

#[test]
fn where_tokens_are_found() {
    let default = authn(json!([{"issuer": "a", "jwks": hs_jwks(&[("k", "s")])}]));
    let custom = authn(json!([{
        "issuer": "a", "jwks": hs_jwks(&[("k", "s")]),
        "fromHeaders": [{"name": "X-Jwt", "prefix": "Token "}, {"name": "x-raw"}],
        "fromParams": ["jwt"], "fromCookies": ["session"],
    }]));
    type Case<'a> = (
        &'a str,
        &'a Authn,
        &'a [(&'a str, &'a str)],
        &'a str,
        &'a [(&'a str, &'a str)],
    );
    let cases: &[Case] = &[
        (
            "bearer",
            &default,
            &[("authorization", "Bearer a.b.c")],
            "/",
            &[("header authorization", "a.b.c")],
        ),
        (
            "not bearer",
            &default,
            &[("authorization", "Basic dXNlcg==")],
            "/",
            &[],
        ),
        (
            "the run of token characters after the prefix",
            &default,
            &[("authorization", "Bearer  a.b-_c, x")],
            "/",
            &[("header authorization", "a.b-_c")],
        ),
        (
            "prefix is case-sensitive",
            &default,
            &[("authorization", "bearer a.b.c")],
            "/",
            &[],
        ),
        (
            "access_token, decoded",
            &default,
            &[],
            "/p?x=1&access_token=a.b%2Ec",
            &[("query parameter access_token", "a.b.c")],
        ),
        (
            "both",
            &default,
            &[("authorization", "Bearer h.h.h")],
            "/p?access_token=q.q.q",
            &[
                ("header authorization", "h.h.h"),
                ("query parameter access_token", "q.q.q"),
            ],
        ),
        (
            "custom locations only",
            &custom,
            &[("authorization", "Bearer a.b.c")],
            "/?access_token=x.y.z",
            &[],
        ),
        (
            "custom header, prefix",
            &custom,
            &[("x-jwt", "Token t.t.t")],
            "/",
            &[("header x-jwt", "t.t.t")],
        ),
        (
            "custom header without its prefix",
            &custom,
            &[("x-jwt", "t.t.t")],
            "/",
            &[],
        ),
        (
            "header without prefix: the whole value",
            &custom,
            &[("x-raw", "r.r.r")],
            "/",
            &[("header x-raw", "r.r.r")],
        ),
        (
            "param",
            &custom,
            &[],
            "/?jwt=p.p.p",
            &[("query parameter jwt", "p.p.p")],
        ),
        (
            "cookie",
            &custom,
            &[("cookie", "a=1; session=\"c.c.c\"")],
            "/",
            &[("cookie session", "c.c.c")],
        ),
        (
            "second cookie header",
            &custom,
            &[("cookie", "a=1"), ("cookie", "session=c.c.c")],
            "/",
            &[("cookie session", "c.c.c")],
        ),
    ];
    for (name, a, hs, path, want) in cases {
        let got: Vec<(String, String)> = extract(a, &headers(hs), path)
            .into_iter()
            .map(|f| (a.locations[f.location].0.describe(), f.token))
            .collect();
        let want: Vec<(String, String)> = want
            .iter()
            .map(|(l, t)| (l.to_string(), t.to_string()))
            .collect();
        assert_eq!(got, want, "{name}");
    }
    assert_eq!(after_prefix("Bearer", "Bearer "), None);
    assert_eq!(after_prefix("x Bearer ", "Bearer "), Some(""));
    assert!(is_cors_preflight(
        "OPTIONS",
        &headers(&[
            ("origin", "https://a"),
            ("access-control-request-method", "GET")
        ])
    ));
    assert!(!is_cors_preflight(
        "OPTIONS",
        &headers(&[("origin", "https://a")])
    ));
}

#[test]
fn rules_compile_as_istio_orders_them() {
    let a = Authn::compile(&[
        policy(
            "zeta",
            json!([{"issuer": "z", "jwks": hs_jwks(&[("k", "s")]), "outputPayloadToHeader": "X-Payload"}]),
        ),
        policy(
            "alpha",
            json!([
                {"issuer": "b", "jwksUri": "https://idp.example/jwks", "timeout": "2s",
                 "outputClaimToHeaders": [{"header": "x-sub", "claim": "sub"}]},
                {"issuer": "a", "jwks": "{\"keys\": []}", "forwardOriginalToken": true,
                 "audiences": ["https://api.example/"], "spaceDelimitedClaims": ["roles"]},
            ]),
        ),
    ]);
    let issuers: Vec<&str> = a.rules.iter().map(|r| r.issuer.as_str()).collect();
    assert_eq!(issuers, ["a", "b", "z"]);
    assert_eq!(a.rules[0].policy, "testns/alpha");
    assert!(
        matches!(&a.rules[0].keys, KeySource::Inline(Err(e)) if e.contains("doesn't have any valid public key"))
    );
    assert!(matches!(&a.rules[1].keys, KeySource::Uri(u) if u == "https://idp.example/jwks"));
    assert_eq!(a.rules[1].fetch_timeout, Duration::from_secs(2));
    assert_eq!(a.rules[2].fetch_timeout, DEFAULT_FETCH_TIMEOUT);
    assert!(matches!(&a.rules[2].keys, KeySource::Inline(Ok(k)) if k.len() == 1));
    assert_eq!(a.rules[0].audiences, ["api.example"]);
    assert!(a.rules[0].forward_original_token && !a.rules[1].forward_original_token);
    assert_eq!(
        a.rules[0]
            .space_delimited
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
        ["permission", "roles", "scope"]
    );
    // The default locations are shared by the three rules.
    assert_eq!(a.locations.len(), 2);
    assert_eq!(a.locations[0].1, [0, 1, 2]);
    assert_eq!(a.output_headers, ["x-payload", "x-sub"]);
    assert_eq!(a.policies(), "testns/alpha, testns/zeta");
}

#[test]
fn reading_a_token() {
    let ok_header = r#"{"alg":"HS256"}"#;
    let cases: &[(&str, String, Failure)] = &[
        ("one part", "abc".into(), Failure::BadFormat),
        ("four parts", "a.b.c.d".into(), Failure::BadFormat),
        (
            "too long",
            format!("{}.e30.c2ln", "a".repeat(MAX_TOKEN_BYTES)),
            Failure::BadFormat,
        ),
        (
            "header not base64url",
            "!!.e30.c2ln".into(),
            Failure::HeaderBadBase64,
        ),
        (
            "header not JSON",
            format!("{}.e30.c2ln", b64(b"nope")),
            Failure::HeaderBadJson,
        ),
        (
            "header not an object",
            raw("[1]", "{}"),
            Failure::HeaderBadJson,
        ),
        (
            "no alg",
            raw(r#"{"typ":"JWT"}"#, "{}"),
            Failure::HeaderBadAlg,
        ),
        (
            "alg none",
            raw(r#"{"alg":"none"}"#, "{}"),
            Failure::AlgNotSupported,
        ),
        (
            "alg ES512",
            raw(r#"{"alg":"ES512"}"#, "{}"),
            Failure::AlgNotSupported,
        ),
        (
            "kid a number",
            raw(r#"{"alg":"HS256","kid":5}"#, "{}"),
            Failure::HeaderBadKid,
        ),
        (
            "payload not base64url",
            format!("{}.!!.c2ln", b64(ok_header.as_bytes())),
            Failure::PayloadBadBase64,
        ),
        (
            "payload not an object",
            raw(ok_header, "[1]"),
            Failure::PayloadBadJson,
        ),
        (
            "iss a number",
            raw(ok_header, r#"{"iss":5}"#),
            Failure::IssNotString,
        ),
        (
            "sub a list",
            raw(ok_header, r#"{"sub":["a"]}"#),
            Failure::SubNotString,
        ),
        (
            "exp text",
            raw(ok_header, r#"{"exp":"soon"}"#),
            Failure::ExpBad,
        ),
        (
            "exp negative",
            raw(ok_header, r#"{"exp":-1}"#),
            Failure::ExpBad,
        ),
        (
            "nbf fraction",
            raw(ok_header, r#"{"nbf":1.5}"#),
            Failure::NbfBad,
        ),
        (
            "iat text",
            raw(ok_header, r#"{"iat":"x"}"#),
            Failure::IatBad,
        ),
        (
            "aud a number",
            raw(ok_header, r#"{"aud":5}"#),
            Failure::AudBad,
        ),
        (
            "aud a list with a number",
            raw(ok_header, r#"{"aud":["a",5]}"#),
            Failure::AudBad,
        ),
        (
            "signature not base64url",
            format!("{}.e30.!!", b64(ok_header.as_bytes())),
            Failure::SignatureBadBase64,
        ),
    ];
    for (name, token, want) in cases {
        assert_eq!(parse(token).unwrap_err(), *want, "{name}");
        assert_eq!(want.status(), 401);
        assert_eq!(want.reason(), "malformed", "{name}");
    }
    let t = raw(
        r#"{"alg":"RS256","kid":"k1"}"#,
        r#"{"iss":"i","sub":"s","aud":["x","y"],"azp":"app","exp":2000000000.0,"nbf":1}"#,
    );
    let jwt = parse(&t).unwrap();
    assert_eq!(
        (jwt.alg, jwt.kid.as_deref()),
        (Algorithm::RS256, Some("k1"))
    );
    assert_eq!(
        (jwt.iss.as_deref(), jwt.sub.as_deref()),
        (Some("i"), Some("s"))
    );
    assert_eq!(jwt.aud, ["x", "y"]);
    assert_eq!(jwt.azp.as_deref(), Some("app"));
    assert_eq!((jwt.exp, jwt.nbf), (Some(2_000_000_000), Some(1)));
    assert_eq!(jwt.signature, b"sig");
    assert_eq!(
        parse(&raw(r#"{"alg":"HS256"}"#, r#"{"aud":"one"}"#))
            .unwrap()
            .aud,
        ["one"]
    );
}

#[test]
fn time_with_istios_clock_skew() {
    let at = |exp: Option<u64>, nbf: Option<u64>| {
        let mut p = json!({});
        if let Some(e) = exp {
            p["exp"] = json!(e);
        }
        if let Some(n) = nbf {
            p["nbf"] = json!(n);
        }
        check_time(
            &parse(&raw(r#"{"alg":"HS256"}"#, &p.to_string())).unwrap(),
            NOW,
        )
    };
    let cases = [
        (None, None, Ok(())),
        (Some(NOW + 3600), None, Ok(())),
        (Some(NOW - 59), None, Ok(())),
        (Some(NOW - 60), None, Ok(())),
        (Some(NOW - 61), None, Err(Failure::Expired)),
        (None, Some(NOW + 60), Ok(())),
        (None, Some(NOW + 61), Err(Failure::NotYetValid)),
        // nbf is checked first.
        (
            Some(NOW - 3600),
            Some(NOW + 3600),
            Err(Failure::NotYetValid),
        ),
    ];
    for (exp, nbf, want) in cases {
        assert_eq!(at(exp, nbf), want, "exp {exp:?} nbf {nbf:?}");
    }
    assert_eq!(Failure::Expired.message(), "Jwt is expired");
    assert_eq!(Failure::Expired.reason(), "expired");
}

#[test]
fn audiences_as_envoy_compares_them() {
    let jwt =
        |aud: Value| parse(&raw(r#"{"alg":"HS256"}"#, &json!({"aud": aud}).to_string())).unwrap();
    let conf = |a: &[&str]| a.iter().map(|x| sanitize_audience(x)).collect::<Vec<_>>();
    let cases = [
        (json!("api.example"), conf(&["https://api.example/"]), true),
        (json!("http://api.example"), conf(&["api.example"]), true),
        (
            json!(["other", "https://api.example/"]),
            conf(&["api.example"]),
            true,
        ),
        (json!("other"), conf(&["api.example"]), false),
        (json!([]), conf(&["api.example"]), false),
        (json!("anything"), conf(&[]), true),
    ];
    for (aud, conf, ok) in cases {
        let got = check_audiences(&jwt(aud.clone()), &conf);
        assert_eq!(got.is_ok(), ok, "{aud} against {conf:?}");
    }
    assert_eq!(Failure::AudienceNotAllowed.status(), 403);
    assert_eq!(
        Failure::AudienceNotAllowed.message(),
        "Audiences in Jwt are not allowed"
    );
}

#[test]
fn what_a_verified_token_gives() {
    let a = authn(
        json!([{"issuer": "https://idp.example", "jwks": hs_jwks(&[("k", "s")]), "spaceDelimitedClaims": ["roles"]}]),
    );
    let t = raw(
        r#"{"alg":"HS256"}"#,
        r#"{"iss":"https://idp.example","sub":"alice","aud":["web"],"azp":"cli","scope":"read  write","roles":"admin","permission":["x"],"n":{"team":"a"}}"#,
    );
    let jwt = parse(&t).unwrap();
    let auth = jwt_auth(&jwt, &a.rules[0]);
    assert_eq!(auth.principal, "https://idp.example/alice");
    assert_eq!(auth.audiences, ["web"]);
    assert_eq!(auth.presenter.as_deref(), Some("cli"));
    assert_eq!(auth.claims["scope"], json!(["read", "write"]));
    assert_eq!(auth.claims["roles"], json!(["admin"]));
    assert_eq!(auth.claims["permission"], json!(["x"]));
    assert_eq!(auth.claims["sub"], json!("alice"));
    assert_eq!(principal("iss", ""), "iss/");
    let p = json!({"s": "v", "i": 42, "f": 1.5, "big": 1e3, "b": true, "l": ["a"], "o": {"k": "deep"}, "nl": "a\nb"});
    let Value::Object(p) = p else { unreachable!() };
    let cases = [
        ("s", Some("v")),
        ("i", Some("42")),
        ("f", Some("1.5")),
        ("big", Some("1000")),
        ("b", Some("true")),
        ("l", None),
        ("o", None),
        ("o.k", Some("deep")),
        ("o.missing", None),
        ("missing", None),
        ("nl", None),
    ];
    for (claim, want) in cases {
        assert_eq!(claim_header_value(&p, claim).as_deref(), want, "{claim}");
    }
}

#[test]
fn keys_and_signatures() {
    let set = KeySet::parse(&hs_jwks(&[("k1", "secret-1"), ("k2", "secret-2")])).unwrap();
    let claims = json!({"iss": "a", "sub": "s"});
    let check = |t: &str| set.verify(&parse(t).unwrap());
    assert_eq!(check(&hs_token("k1", "secret-1", claims.clone())), Ok(()));
    assert_eq!(check(&hs_token("k2", "secret-2", claims.clone())), Ok(()));
    assert_eq!(
        check(&hs_token("k1", "secret-2", claims.clone())),
        Err(Failure::VerificationFails)
    );
    assert_eq!(
        check(&hs_token("k9", "secret-1", claims.clone())),
        Err(Failure::NoMatchingKey)
    );
    // No kid in the token: every key is tried.
    let no_kid = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(b"secret-2"),
    )
    .unwrap();
    assert_eq!(check(&no_kid), Ok(()));
    // A key whose alg differs does not match.
    let hs384 = {
        let mut h = Header::new(Algorithm::HS384);
        h.kid = Some("k1".into());
        jsonwebtoken::encode(&h, &claims, &EncodingKey::from_secret(b"secret-1")).unwrap()
    };
    assert_eq!(check(&hs384), Err(Failure::NoMatchingKey));
    // A tampered payload.
    let good = hs_token("k1", "secret-1", claims.clone());
    let parts: Vec<&str> = good.split('.').collect();
    let forged = format!(
        "{}.{}.{}",
        parts[0],
        b64(br#"{"iss":"a","sub":"root"}"#),
        parts[2]
    );
    assert_eq!(check(&forged), Err(Failure::VerificationFails));

    // ES256 with a P-256 key; an HMAC token against it never uses the EC key as a secret.
    let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let raw_pub = kp.public_key_raw();
    let ec = json!({"keys": [{"kty": "EC", "crv": "P-256", "kid": "e1",
        "x": b64(&raw_pub[1..33]), "y": b64(&raw_pub[33..65])}]})
    .to_string();
    let ec = KeySet::parse(&ec).unwrap();
    let mut h = Header::new(Algorithm::ES256);
    h.kid = Some("e1".into());
    let es =
        jsonwebtoken::encode(&h, &claims, &EncodingKey::from_ec_der(&kp.serialize_der())).unwrap();
    assert_eq!(ec.verify(&parse(&es).unwrap()), Ok(()));
    assert_eq!(
        ec.verify(&parse(&hs_token("e1", "secret", claims.clone())).unwrap()),
        Err(Failure::VerificationFails)
    );

    // Key sets: unusable keys are skipped; none usable is an error.
    let mixed = json!({"keys": [{"kty": "EC", "crv": "P-521", "x": "AA", "y": "AA"},
        {"kty": "what"}, {"kty": "oct", "k": b64(b"s")}]})
    .to_string();
    let m = KeySet::parse(&mixed).unwrap();
    assert_eq!((m.len(), m.skipped), (1, 2));
    for (doc, want) in [
        ("nope", "Jwks is an invalid JSON"),
        ("{}", "Jwks does not have [keys] field"),
        (r#"{"keys": 1}"#, "[keys] in Jwks is not an array"),
        (
            r#"{"keys": [{"kty": "RSA"}]}"#,
            "Jwks doesn't have any valid public key",
        ),
    ] {
        let e = KeySet::parse(doc).unwrap_err();
        assert!(e.starts_with(want), "{doc}: {e}");
    }
}

/// Istio's sample tokens (security/tools/jwt/samples) against their JWKS, and tokens minted
/// with their test key.
#[test]
fn istio_sample_tokens() {
    let dir = remora_corpus::require!("jwt");
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap();
    let set = KeySet::parse(&read("jwks.json")).unwrap();
    let demo = parse(read("demo.jwt").trim()).unwrap();
    assert_eq!(demo.iss.as_deref(), Some("testing@secure.istio.io"));
    assert_eq!(demo.sub.as_deref(), Some("testing@secure.istio.io"));
    // The README's "very long in the future": year 2118.
    assert_eq!(demo.exp, Some(4_685_989_700));
    assert_eq!(check_time(&demo, NOW), Ok(()));
    assert_eq!(set.verify(&demo), Ok(()));
    let groups = parse(read("groups-scope.jwt").trim()).unwrap();
    assert_eq!(set.verify(&groups), Ok(()));
    assert_eq!(groups.payload["groups"], json!(["group1", "group2"]));

    let pem = read("key.pem");
    let der = pem_to_der(&pem);
    let key = EncodingKey::from_rsa_der(&der);
    let mint = |kid: &str| {
        let mut h = Header::new(Algorithm::RS256);
        h.kid = Some(kid.into());
        jsonwebtoken::encode(
            &h,
            &json!({"iss": "testing@secure.istio.io", "sub": "x"}),
            &key,
        )
        .unwrap()
    };
    assert_eq!(
        set.verify(&parse(&mint(demo.kid.as_deref().unwrap())).unwrap()),
        Ok(())
    );
    assert_eq!(
        set.verify(&parse(&mint("other")).unwrap()),
        Err(Failure::NoMatchingKey)
    );
}

/// The DER inside a PEM block (test helper; the proxy never reads PEM keys).
pub(crate) fn pem_to_der(pem: &str) -> Vec<u8> {
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    base64::engine::general_purpose::STANDARD
        .decode(body)
        .unwrap()
}

#[test]
fn requests_decided_as_istio_requires() {
    let a = Authn::compile(&[
        policy(
            "ra-a",
            json!([{"issuer": "A", "jwks": hs_jwks(&[("a", "secret-a")]),
            "outputPayloadToHeader": "x-payload",
            "outputClaimToHeaders": [{"header": "x-sub", "claim": "sub"}]}]),
        ),
        policy(
            "ra-b",
            json!([{"issuer": "B", "jwks": hs_jwks(&[("b", "secret-b")]),
            "fromHeaders": [{"name": "x-b"}], "forwardOriginalToken": true}]),
        ),
        policy(
            "ra-c",
            json!([{"issuer": "C", "jwksUri": "https://idp.example/jwks"}]),
        ),
    ]);
    let exp = NOW + 600;
    let ta = hs_token(
        "a",
        "secret-a",
        json!({"iss": "A", "sub": "alice", "exp": exp}),
    );
    let ta_bad = hs_token(
        "a",
        "wrong",
        json!({"iss": "A", "sub": "alice", "exp": exp}),
    );
    let ta_old = hs_token(
        "a",
        "secret-a",
        json!({"iss": "A", "sub": "alice", "exp": NOW - 3600}),
    );
    let tb = hs_token("b", "secret-b", json!({"iss": "B", "sub": "bob"}));
    let tc = hs_token("c", "x", json!({"iss": "C", "sub": "carol"}));
    let tz = hs_token("a", "secret-a", json!({"iss": "Z", "sub": "zed"}));
    let keys = |i: usize| -> Keys {
        match &a.rules[i].keys {
            KeySource::Inline(Ok(k)) => Ok(k.clone()),
            _ => Err(KeyError {
                failure: Failure::JwksFetchFailed,
                detail: "connection refused".into(),
            }),
        }
    };
    let run = |hs: &[(&str, &str)], path: &str| {
        let found = extract(&a, &headers(hs), path);
        decide(&a, precheck(&a, found, NOW), &keys)
    };
    let bearer = |t: &str| format!("Bearer {t}");
    assert_eq!(run(&[], "/"), Outcome::NoToken);
    assert_eq!(
        run(&[("authorization", "Basic eA==")], "/"),
        Outcome::NoToken
    );

    let Outcome::Verified { auth, remove, set } = run(&[("authorization", &bearer(&ta))], "/")
    else {
        panic!("A's token")
    };
    assert_eq!(auth.principal, "A/alice");
    assert_eq!(remove, ["authorization"]);
    let payload = ta.split('.').nth(1).unwrap().to_string();
    assert_eq!(
        set,
        [
            ("x-payload".to_string(), payload),
            ("x-sub".to_string(), "alice".to_string())
        ]
    );

    // forwardOriginalToken: the header stays.
    let Outcome::Verified { auth, remove, set } = run(&[("x-b", &tb)], "/") else {
        panic!("B's token")
    };
    assert_eq!(
        (auth.principal.as_str(), remove.len(), set.len()),
        ("B/bob", 0, 0)
    );

    let rejected = |o: Outcome| match o {
        Outcome::Rejected {
            failure,
            rule,
            location,
            detail,
        } => (
            failure,
            rule.map(|i| a.rules[i].issuer.clone()),
            a.locations[location].0.describe(),
            detail,
        ),
        o => panic!("not rejected: {o:?}"),
    };
    type Row<'a> = (
        &'a str,
        Vec<(&'a str, String)>,
        &'a str,
        Failure,
        Option<&'a str>,
        &'a str,
    );
    let rows: Vec<Row> = vec![
        (
            "garbage",
            vec![("authorization", bearer("abc"))],
            "/",
            Failure::BadFormat,
            None,
            "header authorization",
        ),
        (
            "an issuer no rule has",
            vec![("authorization", bearer(&tz))],
            "/",
            Failure::UnknownIssuer,
            None,
            "header authorization",
        ),
        (
            "B's token where only A and C look",
            vec![("authorization", bearer(&tb))],
            "/",
            Failure::UnknownIssuer,
            None,
            "header authorization",
        ),
        (
            "expired",
            vec![("authorization", bearer(&ta_old))],
            "/",
            Failure::Expired,
            Some("A"),
            "header authorization",
        ),
        (
            "bad signature",
            vec![("authorization", bearer(&ta_bad))],
            "/",
            Failure::VerificationFails,
            Some("A"),
            "header authorization",
        ),
        (
            "a good and a bad token where A looks",
            vec![("authorization", bearer(&ta))],
            "/?access_token=abc",
            Failure::BadFormat,
            None,
            "query parameter access_token",
        ),
        (
            "C's keys cannot be fetched",
            vec![("authorization", bearer(&tc))],
            "/",
            Failure::JwksFetchFailed,
            Some("C"),
            "header authorization",
        ),
    ];
    for (name, hs, path, failure, issuer, location) in rows {
        let hs: Vec<(&str, &str)> = hs.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let (f, iss, loc, detail) = rejected(run(&hs, path));
        assert_eq!(
            (f, iss.as_deref(), loc.as_str()),
            (failure, issuer, location),
            "{name}"
        );
        assert_eq!(
            detail.is_some(),
            failure == Failure::JwksFetchFailed,
            "{name}"
        );
    }
    // A's token verified at all of A's locations passes even with a bad token in B's header
    // (Istio's outer "any provider" of the requirement).
    let Outcome::Verified { auth, .. } =
        run(&[("authorization", &bearer(&ta)), ("x-b", "junk")], "/")
    else {
        panic!("A alone")
    };
    assert_eq!(auth.principal, "A/alice");
    // Both valid: the first gives the principal, both apply their header changes.
    let Outcome::Verified { auth, remove, .. } =
        run(&[("authorization", &bearer(&ta)), ("x-b", &tb)], "/")
    else {
        panic!("both")
    };
    assert_eq!(
        (auth.principal.as_str(), remove),
        ("A/alice", vec!["authorization".to_string()])
    );
}

#[test]
fn reasons_are_a_fixed_set() {
    use Failure::*;
    let all = [
        BadFormat,
        HeaderBadBase64,
        HeaderBadJson,
        HeaderBadAlg,
        AlgNotSupported,
        HeaderBadKid,
        PayloadBadBase64,
        PayloadBadJson,
        IssNotString,
        SubNotString,
        IatBad,
        NbfBad,
        ExpBad,
        AudBad,
        SignatureBadBase64,
        UnknownIssuer,
        NotYetValid,
        Expired,
        AudienceNotAllowed,
        NoMatchingKey,
        VerificationFails,
        JwksFetchFailed,
        JwksInvalid,
    ];
    for f in all {
        assert!(REASONS.contains(&f.reason()), "{f:?}");
        assert!(!f.message().is_empty(), "{f:?}");
    }
    let used: BTreeSet<&str> = all.iter().map(|f| f.reason()).collect();
    assert_eq!(used.len(), REASONS.len(), "every listed reason is used");
}
