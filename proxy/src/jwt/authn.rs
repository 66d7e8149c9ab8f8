//! The pure decisions of RequestAuthentication, as Istio has Envoy's `jwt_authn` filter make
//! them: where a token is looked for, how it is read, which checks it must pass (issuer, time
//! with 60 s of clock skew, audiences, a key of the JWKS, the signature) and what a verified
//! token gives the request (the request principal `<iss>/<sub>`, audiences, presenter, claims
//! for AuthorizationPolicy; headers for the app). No I/O: the keys of a `jwksUri` are handed in
//! by the caller (`jwt::jwks`).
//!
//! Istio's requirement, for the rules of every RequestAuthentication that applies (sorted by
//! issuer, as istiod sorts them): `any(P1, …, Pn, all(any(P1, allow_missing), …))`. With each
//! provider `Pi` needing a present token, at its locations, that it verifies, and
//! `allow_missing` passing with no token and failing when a token is present and invalid, this
//! comes to: no token passes; tokens that all verify pass; else the request passes only when
//! one rule finds tokens at its own locations and verifies all of them. Everything else is a
//! rejection: 401 with Envoy's message (403 for an audience that is not allowed).

use std::collections::BTreeSet;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::DecodePaddingMode;
use base64::Engine;
use http::HeaderMap;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk};
use jsonwebtoken::{Algorithm, DecodingKey};
use remora_model::security::authorization::JwtAuth;
use remora_model::security::request_authentication::RequestAuthentication;
use serde_json::{Map, Value};

/// Envoy's default clock skew for `exp` and `nbf` (Istio does not change it).
pub const CLOCK_SKEW_SECONDS: u64 = 60;
/// The JWKS fetch timeout when a rule sets none (Istio's default `timeout`).
pub const DEFAULT_FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest fetch timeout honoured, whatever a rule asks.
pub const MAX_FETCH_TIMEOUT: Duration = Duration::from_secs(60);
/// Tokens longer than this are refused as malformed without being decoded.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;
/// Claims Istio always treats as space-delimited (`scope`, `permission`).
const DEFAULT_SPACE_DELIMITED: &[&str] = &["permission", "scope"];

/// base64url, with or without padding (Envoy accepts both).
const B64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::URL_SAFE,
    GeneralPurposeConfig::new()
        .with_encode_padding(false)
        .with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Where a token may be (Envoy's JWT locations).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Location {
    /// A request header (name in lower case) and the prefix before the token (`"Bearer "`).
    Header { name: String, prefix: String },
    /// A query parameter.
    Param(String),
    /// A cookie.
    Cookie(String),
}

impl Location {
    /// `header authorization`, `query parameter access_token`, `cookie session` (for logs).
    pub fn describe(&self) -> String {
        match self {
            Location::Header { name, .. } => format!("header {name}"),
            Location::Param(p) => format!("query parameter {p}"),
            Location::Cookie(c) => format!("cookie {c}"),
        }
    }
}

/// The locations of a rule with no `fromHeaders`, `fromParams` or `fromCookies`:
/// `Authorization: Bearer <token>` and `?access_token=<token>`.
pub fn default_locations() -> Vec<Location> {
    vec![
        Location::Header {
            name: "authorization".into(),
            prefix: "Bearer ".into(),
        },
        Location::Param("access_token".into()),
    ]
}

/// Where a rule's keys come from.
#[derive(Clone, Debug)]
pub enum KeySource {
    /// `jwks`, parsed once (or why it cannot be used).
    Inline(Result<Arc<KeySet>, String>),
    /// `jwksUri`: fetched and cached by `jwt::jwks`.
    Uri(String),
    /// Neither is set: the issuer's OpenID discovery document (its URL, or why the issuer has
    /// none), fetched and cached by `jwt::jwks`.
    Discovery(Result<String, String>),
}

/// One `jwtRules[]` entry, ready for requests.
#[derive(Clone, Debug)]
pub struct Rule {
    /// `namespace/name` of its RequestAuthentication.
    pub policy: String,
    pub issuer: String,
    /// `audiences`, as Envoy compares them (without `http(s)://` and a trailing `/`).
    pub audiences: Vec<String>,
    pub locations: Vec<Location>,
    pub keys: KeySource,
    pub fetch_timeout: Duration,
    pub forward_original_token: bool,
    /// `outputPayloadToHeader` (lower case).
    pub payload_header: Option<String>,
    /// `outputClaimToHeaders`: header (lower case), claim.
    pub claim_headers: Vec<(String, String)>,
    /// `scope`, `permission` and `spaceDelimitedClaims`.
    pub space_delimited: BTreeSet<String>,
}

/// The RequestAuthentications that apply to the workload, compiled.
#[derive(Clone, Debug, Default)]
pub struct Authn {
    /// Sorted by issuer (istiod's order).
    pub rules: Vec<Rule>,
    /// Every location of every rule, once, with the rules that read it.
    pub locations: Vec<(Location, Vec<usize>)>,
    /// Headers removed from every request before anything else (Envoy's sanitizing): the
    /// output headers of every rule, so a client cannot forge them.
    pub output_headers: Vec<String>,
}

impl Authn {
    /// The rules of `policies` (already scoped to this workload).
    pub fn compile(policies: &[RequestAuthentication]) -> Authn {
        let mut rules: Vec<Rule> = policies
            .iter()
            .flat_map(|p| p.spec.jwt_rules.iter().map(move |r| (p.meta.key(), r)))
            .map(|(policy, r)| {
                let mut locations: Vec<Location> = r
                    .from_headers
                    .iter()
                    .map(|h| Location::Header {
                        name: h.name.to_ascii_lowercase(),
                        prefix: h.prefix.clone(),
                    })
                    .chain(r.from_params.iter().cloned().map(Location::Param))
                    .chain(r.from_cookies.iter().cloned().map(Location::Cookie))
                    .collect();
                if locations.is_empty() {
                    locations = default_locations();
                }
                locations.dedup();
                let keys = match (&r.jwks, r.jwks_url()) {
                    (Some(j), _) => KeySource::Inline(KeySet::parse(j).map(Arc::new)),
                    (None, Some(u)) => KeySource::Uri(u.to_string()),
                    (None, None) => KeySource::Discovery(super::oidc::discovery_url(&r.issuer)),
                };
                let fetch_timeout = r
                    .timeout
                    .as_deref()
                    .and_then(|t| remora_model::duration::parse_duration(t).ok())
                    .unwrap_or(DEFAULT_FETCH_TIMEOUT)
                    .min(MAX_FETCH_TIMEOUT);
                let lower = |h: &str| h.to_ascii_lowercase();
                Rule {
                    policy,
                    issuer: r.issuer.clone(),
                    audiences: r.audiences.iter().map(|a| sanitize_audience(a)).collect(),
                    locations,
                    keys,
                    fetch_timeout,
                    forward_original_token: r.forward_original_token,
                    payload_header: (!r.output_payload_to_header.is_empty())
                        .then(|| lower(&r.output_payload_to_header)),
                    claim_headers: r
                        .output_claim_to_headers
                        .iter()
                        .map(|c| (lower(&c.header), c.claim.clone()))
                        .collect(),
                    space_delimited: DEFAULT_SPACE_DELIMITED
                        .iter()
                        .map(|s| s.to_string())
                        .chain(r.space_delimited_claims.iter().cloned())
                        .collect(),
                }
            })
            .collect();
        // Stable: two rules of one issuer (in different policies) keep their policy order.
        rules.sort_by(|a, b| a.issuer.cmp(&b.issuer));
        let mut locations: Vec<(Location, Vec<usize>)> = Vec::new();
        for (i, r) in rules.iter().enumerate() {
            for l in &r.locations {
                match locations.iter_mut().find(|(have, _)| have == l) {
                    Some((_, users)) => users.push(i),
                    None => locations.push((l.clone(), vec![i])),
                }
            }
        }
        let mut output_headers: Vec<String> = rules
            .iter()
            .flat_map(|r| {
                r.payload_header
                    .iter()
                    .cloned()
                    .chain(r.claim_headers.iter().map(|(h, _)| h.clone()))
            })
            .collect();
        output_headers.sort();
        output_headers.dedup();
        Authn {
            rules,
            locations,
            output_headers,
        }
    }

    /// `testns/a, testns/b`: the policies, for log lines.
    pub fn policies(&self) -> String {
        let mut p: Vec<&str> = self.rules.iter().map(|r| r.policy.as_str()).collect();
        p.dedup();
        p.join(", ")
    }
}

/// Envoy compares audiences without the scheme and a trailing slash.
pub fn sanitize_audience(a: &str) -> String {
    let a = a
        .strip_prefix("http://")
        .or_else(|| a.strip_prefix("https://"))
        .unwrap_or(a);
    a.strip_suffix('/').unwrap_or(a).to_string()
}

// ---------------------------------------------------------------------------------------------
// Extraction

/// A token found in the request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Found {
    /// Index in `Authn::locations`.
    pub location: usize,
    pub token: String,
}

/// Is this a CORS preflight (`OPTIONS` with `Origin` and `Access-Control-Request-Method`)?
/// Istio lets those through without a token check (`bypass_cors_preflight`).
pub fn is_cors_preflight(method: &str, headers: &HeaderMap) -> bool {
    method == "OPTIONS"
        && headers.contains_key(http::header::ORIGIN)
        && headers.contains_key(http::header::ACCESS_CONTROL_REQUEST_METHOD)
}

/// Characters a JWT is made of (base64url and the dots).
fn jwt_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.'
}

/// The token after `prefix` in a header value, as Envoy finds it: the prefix anywhere in the
/// value, then the first run of JWT characters after it. `None` when the prefix is absent.
pub fn after_prefix<'a>(value: &'a str, prefix: &str) -> Option<&'a str> {
    if prefix.is_empty() {
        return Some(value);
    }
    let at = value.find(prefix)? + prefix.len();
    let rest = &value[at..];
    let Some(start) = rest.find(jwt_char) else {
        return Some(rest);
    };
    let rest = &rest[start..];
    let end = rest.find(|c| !jwt_char(c)).unwrap_or(rest.len());
    Some(&rest[..end])
}

/// `%XX` decoded (a query parameter's value); `+` is a space.
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(v) => {
                        out.push(v);
                        i += 3;
                        continue;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The first value of query parameter `name` in a path (`/p?a=1&b=2`).
pub fn query_param(path: &str, name: &str) -> Option<String> {
    let q = path.split_once('?')?.1;
    let q = q.split('#').next().unwrap_or("");
    q.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (percent_decode(k) == name).then(|| percent_decode(v))
    })
}

/// The value of cookie `name` (quotes around it removed).
pub fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|kv| {
            let (k, v) = kv.trim().split_once('=')?;
            (k.trim() == name).then(|| {
                let v = v.trim();
                v.strip_prefix('"')
                    .and_then(|v| v.strip_suffix('"'))
                    .unwrap_or(v)
                    .to_string()
            })
        })
}

/// Every token at the locations of `authn` (the first value of a header, parameter or cookie).
pub fn extract(authn: &Authn, headers: &HeaderMap, path: &str) -> Vec<Found> {
    authn
        .locations
        .iter()
        .enumerate()
        .filter_map(|(i, (loc, _))| {
            let token = match loc {
                Location::Header { name, prefix } => {
                    let v = headers.get(name.as_str())?;
                    let v = String::from_utf8_lossy(v.as_bytes());
                    after_prefix(&v, prefix)?.to_string()
                }
                Location::Param(p) => query_param(path, p)?,
                Location::Cookie(c) => cookie(headers, c)?,
            };
            Some(Found { location: i, token })
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Failures

/// Why a token was refused: Envoy's status, its message (the response body) and the bounded
/// `reason` label of `remora_jwt_rejected_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
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
    /// The JWKS could not be fetched (or was not usable) and no earlier keys are cached.
    JwksFetchFailed,
    /// An inline `jwks` that has no usable key, or a rule with neither `jwks` nor `jwksUri`.
    JwksInvalid,
}

/// The reason labels, all of them (the metric's label set is bounded by this list).
pub const REASONS: &[&str] = &[
    "malformed",
    "unknown_issuer",
    "not_yet_valid",
    "expired",
    "audience",
    "unknown_key",
    "signature",
    "jwks_unavailable",
];

impl Failure {
    /// Envoy's message for it (`jwt_verify_lib`'s status strings), the body of the answer.
    pub fn message(self) -> &'static str {
        use Failure::*;
        match self {
            BadFormat => {
                "Jwt is not in the form of Header.Payload.Signature with two dots and 3 sections"
            }
            HeaderBadBase64 => "Jwt header is an invalid Base64url encoded",
            HeaderBadJson => "Jwt header is an invalid JSON",
            HeaderBadAlg => "Jwt header [alg] field is required and must be a string",
            AlgNotSupported => "Jwt header [alg] is not supported",
            HeaderBadKid => "Jwt header [kid] field is not a string",
            PayloadBadBase64 => "Jwt payload is an invalid Base64url encoded",
            PayloadBadJson => "Jwt payload is an invalid JSON",
            IssNotString => "Jwt payload [iss] field is not a string",
            SubNotString => "Jwt payload [sub] field is not a string",
            IatBad => "Jwt payload [iat] field is not a positive integer",
            NbfBad => "Jwt payload [nbf] field is not a positive integer",
            ExpBad => "Jwt payload [exp] field is not a positive integer",
            AudBad => "Jwt payload [aud] field is not a string or string list",
            SignatureBadBase64 => "Jwt signature is an invalid Base64url encoded",
            UnknownIssuer => "Jwt issuer is not configured",
            NotYetValid => "Jwt not yet valid",
            Expired => "Jwt is expired",
            AudienceNotAllowed => "Audiences in Jwt are not allowed",
            NoMatchingKey => "Jwks doesn't have key to match kid or alg from Jwt",
            VerificationFails => "Jwt verification fails",
            JwksFetchFailed => "Jwks remote fetch is failed",
            JwksInvalid => "Jwks doesn't have any valid public key",
        }
    }

    /// The `reason` label (one of [`REASONS`]).
    pub fn reason(self) -> &'static str {
        use Failure::*;
        match self {
            UnknownIssuer => "unknown_issuer",
            NotYetValid => "not_yet_valid",
            Expired => "expired",
            AudienceNotAllowed => "audience",
            NoMatchingKey => "unknown_key",
            VerificationFails => "signature",
            JwksFetchFailed | JwksInvalid => "jwks_unavailable",
            _ => "malformed",
        }
    }

    /// The HTTP status: 403 for an audience that is not allowed (as Envoy answers), else 401.
    pub fn status(self) -> u16 {
        if self == Failure::AudienceNotAllowed {
            403
        } else {
            401
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Parsing and the checks that need no key

/// A token read (not verified yet).
#[derive(Clone, Debug, PartialEq)]
pub struct Jwt {
    pub alg: Algorithm,
    pub alg_name: String,
    pub kid: Option<String>,
    pub iss: Option<String>,
    pub sub: Option<String>,
    pub aud: Vec<String>,
    pub azp: Option<String>,
    pub exp: Option<u64>,
    pub nbf: Option<u64>,
    pub payload: Map<String, Value>,
    /// The payload segment as sent (base64url), for `outputPayloadToHeader`.
    pub payload_b64: String,
    /// `header.payload`, the signed bytes.
    pub signing_input: String,
    pub signature: Vec<u8>,
}

/// A claim that must be a non-negative integer when present.
fn time_claim(
    payload: &Map<String, Value>,
    name: &str,
    bad: Failure,
) -> Result<Option<u64>, Failure> {
    match payload.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => match (n.as_u64(), n.as_f64()) {
            (Some(v), _) => Ok(Some(v)),
            (None, Some(f)) if f >= 0.0 && f.fract() == 0.0 => Ok(Some(f as u64)),
            _ => Err(bad),
        },
        Some(_) => Err(bad),
    }
}

fn string_claim(
    payload: &Map<String, Value>,
    name: &str,
    bad: Failure,
) -> Result<Option<String>, Failure> {
    match payload.get(name) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(bad),
    }
}

/// Read a token as `jwt_verify_lib` does, with its errors.
pub fn parse(token: &str) -> Result<Jwt, Failure> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(Failure::BadFormat);
    }
    let parts: Vec<&str> = token.split('.').collect();
    let [h, p, s] = parts[..] else {
        return Err(Failure::BadFormat);
    };
    let header: Value =
        serde_json::from_slice(&B64.decode(h).map_err(|_| Failure::HeaderBadBase64)?)
            .map_err(|_| Failure::HeaderBadJson)?;
    let Value::Object(header) = header else {
        return Err(Failure::HeaderBadJson);
    };
    let alg_name = match header.get("alg") {
        Some(Value::String(a)) => a.clone(),
        _ => return Err(Failure::HeaderBadAlg),
    };
    let alg = Algorithm::from_str(&alg_name).map_err(|_| Failure::AlgNotSupported)?;
    let kid = match header.get("kid") {
        None => None,
        Some(Value::String(k)) => Some(k.clone()),
        Some(_) => return Err(Failure::HeaderBadKid),
    };
    let payload: Value =
        serde_json::from_slice(&B64.decode(p).map_err(|_| Failure::PayloadBadBase64)?)
            .map_err(|_| Failure::PayloadBadJson)?;
    let Value::Object(payload) = payload else {
        return Err(Failure::PayloadBadJson);
    };
    let iss = string_claim(&payload, "iss", Failure::IssNotString)?;
    let sub = string_claim(&payload, "sub", Failure::SubNotString)?;
    time_claim(&payload, "iat", Failure::IatBad)?;
    let nbf = time_claim(&payload, "nbf", Failure::NbfBad)?;
    let exp = time_claim(&payload, "exp", Failure::ExpBad)?;
    let aud = match payload.get("aud") {
        None => Vec::new(),
        Some(Value::String(a)) => vec![a.clone()],
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| v.as_str().map(str::to_string).ok_or(Failure::AudBad))
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(Failure::AudBad),
    };
    let azp = payload
        .get("azp")
        .and_then(Value::as_str)
        .map(str::to_string);
    let signature = B64.decode(s).map_err(|_| Failure::SignatureBadBase64)?;
    Ok(Jwt {
        alg,
        alg_name,
        kid,
        iss,
        sub,
        aud,
        azp,
        exp,
        nbf,
        payload,
        payload_b64: p.to_string(),
        signing_input: format!("{h}.{p}"),
        signature,
    })
}

/// `nbf` and `exp` against `now` (Unix seconds) with Envoy's clock skew, `nbf` first.
pub fn check_time(jwt: &Jwt, now: u64) -> Result<(), Failure> {
    if jwt
        .nbf
        .is_some_and(|nbf| now.saturating_add(CLOCK_SKEW_SECONDS) < nbf)
    {
        return Err(Failure::NotYetValid);
    }
    if jwt
        .exp
        .is_some_and(|exp| now > exp.saturating_add(CLOCK_SKEW_SECONDS))
    {
        return Err(Failure::Expired);
    }
    Ok(())
}

/// With `audiences` set, one of the token's `aud` must be among them (both sanitized).
pub fn check_audiences(jwt: &Jwt, audiences: &[String]) -> Result<(), Failure> {
    if audiences.is_empty()
        || jwt
            .aud
            .iter()
            .any(|a| audiences.contains(&sanitize_audience(a)))
    {
        Ok(())
    } else {
        Err(Failure::AudienceNotAllowed)
    }
}

// ---------------------------------------------------------------------------------------------
// Keys and signatures

/// The kind of a JWK, which decides the algorithms it can check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum KeyKind {
    Rsa,
    EcP256,
    EcP384,
    Ed25519,
    Hmac,
}

impl KeyKind {
    fn fits(self, alg: Algorithm) -> bool {
        use Algorithm::*;
        match self {
            KeyKind::Rsa => matches!(alg, RS256 | RS384 | RS512 | PS256 | PS384 | PS512),
            KeyKind::EcP256 => alg == ES256,
            KeyKind::EcP384 => alg == ES384,
            KeyKind::Ed25519 => alg == EdDSA,
            KeyKind::Hmac => matches!(alg, HS256 | HS384 | HS512),
        }
    }
}

/// One usable public key of a JWKS.
#[derive(Clone)]
struct Key {
    kid: Option<String>,
    alg: Option<String>,
    kind: KeyKind,
    key: DecodingKey,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Key")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .field("kind", &self.kind)
            .finish()
    }
}

/// The usable keys of a JSON Web Key Set.
#[derive(Clone, Debug)]
pub struct KeySet {
    keys: Vec<Key>,
    /// Keys of the document that were skipped (unsupported type or curve, bad fields).
    pub skipped: usize,
}

impl KeySet {
    /// Parse a JWKS document. Keys that cannot be used are skipped, as Envoy skips them; a set
    /// with no usable key is an error.
    pub fn parse(text: &str) -> Result<KeySet, String> {
        let doc: Value =
            serde_json::from_str(text).map_err(|e| format!("Jwks is an invalid JSON: {e}"))?;
        let keys = match doc.get("keys") {
            None => return Err("Jwks does not have [keys] field".into()),
            Some(Value::Array(k)) => k,
            Some(_) => return Err("[keys] in Jwks is not an array".into()),
        };
        let mut out = Vec::new();
        let mut skipped = 0;
        for k in keys {
            match Self::key(k) {
                Some(key) => out.push(key),
                None => skipped += 1,
            }
        }
        if out.is_empty() {
            return Err(format!(
                "Jwks doesn't have any valid public key ({} key(s) in the set, none usable)",
                keys.len()
            ));
        }
        Ok(KeySet { keys: out, skipped })
    }

    fn key(v: &Value) -> Option<Key> {
        let jwk: Jwk = serde_json::from_value(v.clone()).ok()?;
        let kind = match &jwk.algorithm {
            AlgorithmParameters::RSA(_) => KeyKind::Rsa,
            AlgorithmParameters::EllipticCurve(p) => match p.curve {
                EllipticCurve::P256 => KeyKind::EcP256,
                EllipticCurve::P384 => KeyKind::EcP384,
                _ => return None,
            },
            AlgorithmParameters::OctetKeyPair(p) => match p.curve {
                EllipticCurve::Ed25519 => KeyKind::Ed25519,
                _ => return None,
            },
            AlgorithmParameters::OctetKey(_) => KeyKind::Hmac,
        };
        let key = DecodingKey::from_jwk(&jwk).ok()?;
        Some(Key {
            kid: v.get("kid").and_then(Value::as_str).map(str::to_string),
            alg: v.get("alg").and_then(Value::as_str).map(str::to_string),
            kind,
            key,
        })
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Check the signature as `jwt_verify_lib` does: the keys whose `kid` (when both have one)
    /// and `alg` (when the key has one) match the token's; none → `NoMatchingKey`; one of them
    /// verifies → `Ok`; else `VerificationFails`. A key is only ever used with an algorithm of
    /// its type (an RSA key never as an HMAC secret).
    pub fn verify(&self, jwt: &Jwt) -> Result<(), Failure> {
        let mut matched = false;
        for k in &self.keys {
            if let (Some(want), Some(have)) = (&jwt.kid, &k.kid) {
                if want != have {
                    continue;
                }
            }
            if k.alg.as_ref().is_some_and(|a| *a != jwt.alg_name) {
                continue;
            }
            matched = true;
            if !k.kind.fits(jwt.alg) {
                continue;
            }
            let sig = B64.encode(&jwt.signature);
            if jsonwebtoken::crypto::verify(&sig, jwt.signing_input.as_bytes(), &k.key, jwt.alg)
                .unwrap_or(false)
            {
                return Ok(());
            }
        }
        Err(if matched {
            Failure::VerificationFails
        } else {
            Failure::NoMatchingKey
        })
    }
}

// ---------------------------------------------------------------------------------------------
// What a verified token gives

/// The request principal Istio derives from a token: `<iss>/<sub>`.
pub fn principal(iss: &str, sub: &str) -> String {
    format!("{iss}/{sub}")
}

/// The claims AuthorizationPolicy sees: the payload, with the space-delimited claims
/// (`scope`, `permission`, `spaceDelimitedClaims`) that are strings split into lists.
pub fn normalized_claims(
    payload: &Map<String, Value>,
    space_delimited: &BTreeSet<String>,
) -> Value {
    let mut out = payload.clone();
    for name in space_delimited {
        if let Some(Value::String(s)) = out.get(name) {
            let list = s
                .split(' ')
                .filter(|p| !p.is_empty())
                .map(|p| Value::String(p.to_string()))
                .collect();
            out.insert(name.clone(), Value::Array(list));
        }
    }
    Value::Object(out)
}

/// `request.auth.*` of a verified token.
pub fn jwt_auth(jwt: &Jwt, rule: &Rule) -> JwtAuth {
    JwtAuth {
        principal: principal(
            jwt.iss.as_deref().unwrap_or_default(),
            jwt.sub.as_deref().unwrap_or_default(),
        ),
        audiences: jwt.aud.clone(),
        presenter: jwt.azp.clone(),
        claims: normalized_claims(&jwt.payload, &rule.space_delimited),
    }
}

/// The header value of a claim for `outputClaimToHeaders`: a string as it is, a number or a
/// boolean as text; nested claims by `a.b`. Lists and objects give no header.
pub fn claim_header_value(payload: &Map<String, Value>, claim: &str) -> Option<String> {
    let mut path = claim.split('.');
    let mut v = payload.get(path.next()?)?;
    for name in path {
        v = v.get(name)?;
    }
    let text = match v {
        Value::String(s) => s.clone(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => i.to_string(),
            (None, Some(f)) if f.fract() == 0.0 && f.abs() < 9.0e15 => format!("{}", f as i64),
            (None, Some(f)) => f.to_string(),
            _ => return None,
        },
        _ => return None,
    };
    http::HeaderValue::from_str(&text).ok().map(|_| text)
}

// ---------------------------------------------------------------------------------------------
// The decision

/// A token after the checks that need no key.
#[derive(Clone, Debug)]
pub struct Checked {
    pub found: Found,
    /// The rule of the token's issuer at its location, when there is one.
    pub rule: Option<usize>,
    /// The token read and the checks so far: `Ok` needs the signature check still.
    pub state: Result<Jwt, Failure>,
}

/// Read each token, find its rule (the one with the token's issuer among the rules of its
/// location) and check time and audiences.
pub fn precheck(authn: &Authn, found: Vec<Found>, now: u64) -> Vec<Checked> {
    found
        .into_iter()
        .map(|f| {
            let users = &authn.locations[f.location].1;
            let parsed = parse(&f.token);
            let rule = parsed.as_ref().ok().and_then(|jwt| {
                let iss = jwt.iss.as_deref()?;
                users
                    .iter()
                    .copied()
                    .find(|&i| authn.rules[i].issuer == iss)
            });
            let state = parsed.and_then(|jwt| {
                let r = &authn.rules[rule.ok_or(Failure::UnknownIssuer)?];
                check_time(&jwt, now)?;
                check_audiences(&jwt, &r.audiences)?;
                Ok(jwt)
            });
            Checked {
                found: f,
                rule,
                state,
            }
        })
        .collect()
}

/// The rules whose keys the signature checks need.
pub fn rules_needing_keys(checked: &[Checked]) -> Vec<usize> {
    let mut v: Vec<usize> = checked
        .iter()
        .filter(|c| c.state.is_ok())
        .filter_map(|c| c.rule)
        .collect();
    v.sort_unstable();
    v.dedup();
    v
}

/// The keys of a rule as the caller found them: the set, or why there is none.
pub type Keys = Result<Arc<KeySet>, KeyError>;

/// Why a rule has no keys.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyError {
    pub failure: Failure,
    /// For the log line (e.g. why the fetch failed); never sent to the client.
    pub detail: String,
}

/// The outcome for a request.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// No token at any location: authentication passes, no request principal.
    NoToken,
    /// Passed: what the first verified token gives, and the header changes.
    Verified {
        auth: JwtAuth,
        /// Headers to remove (the tokens' headers, `forwardOriginalToken: false`).
        remove: Vec<String>,
        /// Headers to set (`outputPayloadToHeader`, `outputClaimToHeaders`).
        set: Vec<(String, String)>,
    },
    /// Refused: the first failure, the rule of the token when known, the location, details.
    Rejected {
        failure: Failure,
        rule: Option<usize>,
        location: usize,
        detail: Option<String>,
    },
}

/// Finish the checks with the rules' keys and decide (see the module's doc for the rule).
pub fn decide(authn: &Authn, checked: Vec<Checked>, keys: &dyn Fn(usize) -> Keys) -> Outcome {
    if checked.is_empty() {
        return Outcome::NoToken;
    }
    /// Per token: the verified token and its rule, or the failure and its details.
    type Verdict<'a> = Result<(&'a Jwt, usize), (Failure, Option<String>)>;
    let results: Vec<(&Checked, Verdict)> = checked
        .iter()
        .map(|c| {
            let r = match (&c.state, c.rule) {
                (Err(f), _) => Err((*f, None)),
                (Ok(_), None) => Err((Failure::UnknownIssuer, None)),
                (Ok(jwt), Some(i)) => match keys(i) {
                    Err(e) => Err((e.failure, Some(e.detail))),
                    Ok(set) => set.verify(jwt).map(|_| (jwt, i)).map_err(|f| (f, None)),
                },
            };
            (c, r)
        })
        .collect();
    let all_ok = results.iter().all(|(_, r)| r.is_ok());
    // Else: one rule that found tokens at its own locations and verified every one of them.
    let one_rule = || {
        (0..authn.rules.len()).find(|&i| {
            let mine: Vec<_> = results
                .iter()
                .filter(|(c, _)| authn.locations[c.found.location].1.contains(&i))
                .collect();
            !mine.is_empty()
                && mine
                    .iter()
                    .all(|(_, r)| matches!(r, Ok((_, by)) if *by == i))
        })
    };
    let passed = all_ok || one_rule().is_some();
    if !passed {
        // Not all passed, so one failed: the first failure decides.
        if let Some((c, Err((failure, detail)))) = results.iter().find(|(_, r)| r.is_err()) {
            return Outcome::Rejected {
                failure: *failure,
                rule: c.rule,
                location: c.found.location,
                detail: detail.clone(),
            };
        }
    }
    let mut auth = None;
    let mut remove = Vec::new();
    let mut set = Vec::new();
    for (c, r) in &results {
        let Ok((jwt, i)) = r else { continue };
        let rule = &authn.rules[*i];
        auth.get_or_insert_with(|| jwt_auth(jwt, rule));
        if !rule.forward_original_token {
            if let Location::Header { name, .. } = &authn.locations[c.found.location].0 {
                remove.push(name.clone());
            }
        }
        if let Some(h) = &rule.payload_header {
            set.push((h.clone(), jwt.payload_b64.clone()));
        }
        for (h, claim) in &rule.claim_headers {
            if let Some(v) = claim_header_value(&jwt.payload, claim) {
                set.push((h.clone(), v));
            }
        }
    }
    remove.sort();
    remove.dedup();
    match auth {
        Some(auth) => Outcome::Verified { auth, remove, set },
        // Passed with tokens means one verified; never without one.
        None => Outcome::NoToken,
    }
}

#[cfg(test)]
#[path = "authn_tests.rs"]
mod tests;
