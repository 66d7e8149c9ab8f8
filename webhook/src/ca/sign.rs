//! Issuance and refusal rules, pure: a CSR, the caller's authenticated identity, the requested
//! lifetime and the time in; a certificate chain or a refusal (bounded reason + one clear line)
//! out. No I/O, so every rule is a table row in the tests below.
//!
//! What is signed: exactly the SPIFFE identity of the token's service account,
//! `spiffe://<trust domain>/ns/<namespace>/sa/<service account>`, as the only URI SAN, for an
//! ECDSA P-256 or RSA 2048+ key. The leaf carries nothing else from the CSR: no subject, no DNS
//! names, not CA; key usage digitalSignature + keyEncipherment, extended key usage serverAuth +
//! clientAuth (Istio's workload certificates).

use std::sync::Arc;
use std::time::Duration;

use rcgen::{
    CertificateParams, CertificateSigningRequestParams, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, PublicKeyData, SanType, SerialNumber,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateSigningRequestDer, UnixTime};
use time::OffsetDateTime;
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::oid_registry as oids;
use x509_parser::prelude::FromDer;
use x509_parser::public_key::PublicKey;

use super::authority::{certs_of, Authority, BACKDATE};

/// Largest CSR read (PEM text); Istio's are under 1 KiB.
pub const MAX_CSR_BYTES: usize = 16 * 1024;
/// Longest text of the caller's copied into a refusal message.
const MAX_ECHO: usize = 200;

/// Why a request was refused: the bounded label set of `remora_ca_requests_refused_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reason {
    /// No bearer token, or not a bearer authorization.
    Unauthenticated,
    /// The API server did not authenticate the token (invalid, expired, wrong audience).
    TokenRejected,
    /// The TokenReview itself failed (API server unreachable, RBAC, timeout).
    TokenReviewFailed,
    /// The token authenticates, but not as a service account.
    NotServiceAccount,
    /// The CSR does not parse, its signature does not verify, or it is too large.
    BadCsr,
    /// The CSR's URI SAN is not the token's SPIFFE identity (or there is none, or more).
    IdentityMismatch,
    /// The CSR names a DNS SAN.
    DnsSan,
    /// The CSR names another kind of SAN (IP address, email, …).
    OtherSan,
    /// The CSR asks for a CA certificate.
    CaRequested,
    /// The key is not ECDSA P-256 or RSA 2048+ (or signs the CSR with another hash).
    KeyUnsupported,
    /// Signing failed on our side.
    Internal,
}

impl Reason {
    pub const ALL: [Reason; 11] = [
        Reason::Unauthenticated,
        Reason::TokenRejected,
        Reason::TokenReviewFailed,
        Reason::NotServiceAccount,
        Reason::BadCsr,
        Reason::IdentityMismatch,
        Reason::DnsSan,
        Reason::OtherSan,
        Reason::CaRequested,
        Reason::KeyUnsupported,
        Reason::Internal,
    ];

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Reason::Unauthenticated => "unauthenticated",
            Reason::TokenRejected => "token_rejected",
            Reason::TokenReviewFailed => "tokenreview_failed",
            Reason::NotServiceAccount => "not_service_account",
            Reason::BadCsr => "bad_csr",
            Reason::IdentityMismatch => "identity_mismatch",
            Reason::DnsSan => "dns_san",
            Reason::OtherSan => "other_san",
            Reason::CaRequested => "ca_requested",
            Reason::KeyUnsupported => "key_unsupported",
            Reason::Internal => "internal",
        }
    }
}

/// A refusal: the reason and the one line the caller and the log get.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub reason: Reason,
    pub message: String,
}

impl Refusal {
    pub fn new(reason: Reason, message: impl Into<String>) -> Refusal {
        Refusal {
            reason,
            message: message.into(),
        }
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.message, self.reason.label())
    }
}

/// Who the caller is, as the API server said.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub namespace: String,
    pub service_account: String,
    /// From the token's `authentication.kubernetes.io/pod-name` extra (bound tokens).
    pub pod: Option<String>,
}

impl Identity {
    /// `spiffe://<trust domain>/ns/<namespace>/sa/<service account>`
    pub fn spiffe(&self, trust_domain: &str) -> String {
        format!(
            "spiffe://{trust_domain}/ns/{}/sa/{}",
            self.namespace, self.service_account
        )
    }
}

/// Lifetimes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    pub trust_domain: String,
    /// Longest lifetime issued; longer requests are cut to it.
    pub max_ttl: Duration,
    /// Lifetime when the request names none (`validity_duration` ≤ 0).
    pub default_ttl: Duration,
}

impl Policy {
    /// The lifetime for a requested `validity_duration` (seconds; ≤ 0: not set).
    pub fn ttl(&self, requested_seconds: i64) -> Duration {
        let cap = self.max_ttl;
        match u64::try_from(requested_seconds) {
            Ok(s) if s > 0 => Duration::from_secs(s).min(cap),
            _ => self.default_ttl.min(cap),
        }
    }
}

/// A CSR that passed every rule: its public key, ready to be signed.
pub struct Checked {
    csr: CertificateSigningRequestParams,
}

impl std::fmt::Debug for Checked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Checked { .. }")
    }
}

/// What was issued.
#[derive(Clone, Debug)]
pub struct Issued {
    /// Leaf first, then the intermediates, the root last; PEM each.
    pub chain: Vec<String>,
    /// Serial number, lowercase hex.
    pub serial: String,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
}

fn echo(s: &str) -> String {
    if s.len() <= MAX_ECHO {
        return format!("{s:?}");
    }
    let mut end = MAX_ECHO;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{:?}… ({} bytes)", &s[..end], s.len())
}

/// Checks a PEM CSR against the identity `want` (the SPIFFE URI): parse, signature, key type,
/// CA request, SANs. The first failed rule is the refusal.
pub fn check_csr(pem: &str, want: &str) -> Result<Checked, Refusal> {
    let bad = |m: String| Refusal::new(Reason::BadCsr, m);
    if pem.len() > MAX_CSR_BYTES {
        return Err(bad(format!(
            "csr: {} bytes, more than {MAX_CSR_BYTES}",
            pem.len()
        )));
    }
    let der = CertificateSigningRequestDer::from_pem_slice(pem.as_bytes()).map_err(|_| {
        bad("csr: not a PEM CERTIFICATE REQUEST (-----BEGIN CERTIFICATE REQUEST-----)".into())
    })?;
    let (_, req) = X509CertificationRequest::from_der(der.as_ref())
        .map_err(|e| bad(format!("csr: not a PKCS#10 request ({e})")))?;
    req.verify_signature()
        .map_err(|_| bad("csr: its signature does not verify with its own key".into()))?;

    check_key(&req)?;

    let mut uris: Vec<&str> = Vec::new();
    if let Some(exts) = req.requested_extensions() {
        for ext in exts {
            match ext {
                ParsedExtension::BasicConstraints(bc) if bc.ca => {
                    return Err(Refusal::new(
                        Reason::CaRequested,
                        "csr asks for a CA certificate (basicConstraints CA:true); workloads get leaf certificates only",
                    ));
                }
                ParsedExtension::SubjectAlternativeName(san) => {
                    for name in &san.general_names {
                        match name {
                            GeneralName::URI(u) => uris.push(u),
                            GeneralName::DNSName(d) => {
                                return Err(Refusal::new(
                                    Reason::DnsSan,
                                    format!(
                                        "csr names DNS name {}; workload certificates carry only the SPIFFE identity {want}",
                                        echo(d)
                                    ),
                                ));
                            }
                            other => {
                                return Err(Refusal::new(
                                    Reason::OtherSan,
                                    format!(
                                        "csr names {}; workload certificates carry only the SPIFFE identity {want}",
                                        san_kind(other)
                                    ),
                                ));
                            }
                        }
                    }
                }
                _ => {}
            }
        }
    }
    match uris.as_slice() {
        [u] if *u == want => {}
        [] => {
            return Err(Refusal::new(
                Reason::IdentityMismatch,
                format!("csr names no URI SAN; the token's identity is {want}"),
            ))
        }
        [u] => {
            return Err(Refusal::new(
                Reason::IdentityMismatch,
                format!(
                    "csr asks for {}, but the token's identity is {want}",
                    echo(u)
                ),
            ))
        }
        many => {
            return Err(Refusal::new(
                Reason::IdentityMismatch,
                format!(
                    "csr names {} URI SANs; only the token's identity {want} is signed",
                    many.len()
                ),
            ))
        }
    }
    let csr = CertificateSigningRequestParams::from_der(&der).map_err(|e| {
        bad(format!(
            "csr: carries an extension remora does not read ({e}); send only subjectAltName (keyUsage, extendedKeyUsage are ignored)"
        ))
    })?;
    Ok(Checked { csr })
}

fn san_kind(n: &GeneralName<'_>) -> &'static str {
    match n {
        GeneralName::IPAddress(_) => "an IP address SAN",
        GeneralName::RFC822Name(_) => "an email SAN",
        GeneralName::DirectoryName(_) => "a directory name SAN",
        GeneralName::RegisteredID(_) => "a registered ID SAN",
        GeneralName::OtherName(..) => "an otherName SAN",
        _ => "an unsupported SAN",
    }
}

/// ECDSA P-256 signed with SHA-256, or RSA of 2048 to 8192 bits signed with SHA-256/384/512.
fn check_key(req: &X509CertificationRequest<'_>) -> Result<(), Refusal> {
    let spki = &req.certification_request_info.subject_pki;
    let sig = &req.signature_algorithm.algorithm;
    let unsupported = |what: String| {
        Refusal::new(
            Reason::KeyUnsupported,
            format!("csr key: {what}; only ECDSA P-256 (SHA-256) and RSA 2048+ keys are signed"),
        )
    };
    let alg = &spki.algorithm.algorithm;
    if *alg == oids::OID_KEY_TYPE_EC_PUBLIC_KEY {
        let curve = spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok());
        if curve.as_ref() != Some(&oids::OID_EC_P256) {
            let name = curve.map_or_else(|| "unnamed curve".to_string(), |c| c.to_id_string());
            return Err(unsupported(format!("ECDSA on curve {name}")));
        }
        if *sig != oids::OID_SIG_ECDSA_WITH_SHA256 {
            return Err(unsupported(format!(
                "ECDSA P-256 signed with {}",
                sig.to_id_string()
            )));
        }
        return Ok(());
    }
    if *alg == oids::OID_PKCS1_RSAENCRYPTION {
        let bits = match spki.parsed() {
            Ok(PublicKey::RSA(k)) => k.key_size(),
            _ => return Err(unsupported("RSA key does not parse".into())),
        };
        if !(2048..=8192).contains(&bits) {
            return Err(unsupported(format!("RSA {bits} bits")));
        }
        if ![
            oids::OID_PKCS1_SHA256WITHRSA,
            oids::OID_PKCS1_SHA384WITHRSA,
            oids::OID_PKCS1_SHA512WITHRSA,
        ]
        .contains(sig)
        {
            return Err(unsupported(format!(
                "RSA signed with {}",
                sig.to_id_string()
            )));
        }
        return Ok(());
    }
    Err(unsupported(format!("key type {}", alg.to_id_string())))
}

/// A random positive 128-bit serial number.
pub fn random_serial() -> SerialNumber {
    let mut b: [u8; 16] = rand::random();
    b[0] &= 0x7f;
    b[0] |= 0x01;
    SerialNumber::from_slice(&b)
}

fn leaf_params(
    uri: &str,
    a: &Authority,
    ttl: Duration,
    now: OffsetDateTime,
) -> Result<CertificateParams, Refusal> {
    let internal = |m: String| Refusal::new(Reason::Internal, m);
    // X.509 times have whole seconds.
    let now = now.replace_nanosecond(0).unwrap_or(now);
    let mut p = CertificateParams::default();
    p.distinguished_name = rcgen::DistinguishedName::new();
    let ia5 = uri
        .to_string()
        .try_into()
        .map_err(|e| internal(format!("identity {uri}: not an IA5 string ({e})")))?;
    p.subject_alt_names = vec![SanType::URI(ia5)];
    // Backdated for nodes whose clock is a little behind: a minute, or a quarter of the
    // lifetime when that is shorter (a one-minute certificate must still be valid ahead).
    p.not_before = now - BACKDATE.min(ttl / 4);
    p.not_after = std::cmp::min(p.not_before + ttl, a.ca_not_after);
    if p.not_after <= now {
        return Err(internal(format!(
            "the signing CA expires at {}: nothing can be issued",
            crate::certs::issue::fmt_time(a.ca_not_after)
        )));
    }
    p.is_ca = IsCa::ExplicitNoCa;
    p.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    p.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    p.use_authority_key_identifier_extension = true;
    p.serial_number = Some(random_serial());
    Ok(p)
}

fn finish(
    a: &Authority,
    cert: rcgen::Certificate,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
) -> Issued {
    let serial = cert
        .params()
        .serial_number
        .as_ref()
        .map(|s| s.as_ref().iter().map(|b| format!("{b:02x}")).collect())
        .unwrap_or_default();
    let mut chain = Vec::with_capacity(a.intermediates.len() + 2);
    chain.push(cert.pem());
    chain.extend(a.intermediates.iter().cloned());
    chain.push(a.root_pem.clone());
    Issued {
        chain,
        serial,
        not_before,
        not_after,
    }
}

/// Signs a checked CSR for `identity` (the SPIFFE URI `check_csr` matched) for `ttl` at `now`.
pub fn issue(
    a: &Authority,
    checked: Checked,
    identity: &str,
    ttl: Duration,
    now: OffsetDateTime,
) -> Result<Issued, Refusal> {
    let params = leaf_params(identity, a, ttl, now)?;
    let (nb, na) = (params.not_before, params.not_after);
    let req = CertificateSigningRequestParams {
        params,
        public_key: checked.csr.public_key,
    };
    let cert = req
        .signed_by(&a.issuer, &a.key)
        .map_err(|e| Refusal::new(Reason::Internal, format!("signing failed: {e}")))?;
    Ok(finish(a, cert, nb, na))
}

/// Signs a certificate for `uri` with a key of ours (the load-time self-check).
pub(crate) fn probe(a: &Authority, now: OffsetDateTime) -> Result<Issued, String> {
    let key = KeyPair::generate().map_err(|e| format!("could not be made ({e})"))?;
    let uri = "spiffe://remora.invalid/ns/remora-probe/sa/remora-probe";
    let params =
        leaf_params(uri, a, Duration::from_secs(300), now).map_err(|r| r.message.clone())?;
    let (nb, na) = (params.not_before, params.not_after);
    let cert = signed(params, &key, a).map_err(|e| format!("could not be signed ({e})"))?;
    let issued = finish(a, cert, nb, na);
    verify(&issued.chain, &a.root_der, now).map_err(|e| format!("does not verify: {e}"))?;
    Ok(issued)
}

fn signed(
    params: CertificateParams,
    key: &impl PublicKeyData,
    a: &Authority,
) -> Result<rcgen::Certificate, rcgen::Error> {
    params.signed_by(key, &a.issuer, &a.key)
}

/// A TLS serving certificate for `dns_names` signed by the CA, with its key (the CA's own
/// gRPC endpoint). Returns the chain to serve (leaf, intermediates; not the root) and the key.
pub fn serving(
    a: &Authority,
    dns_names: &[String],
    ttl: Duration,
    now: OffsetDateTime,
) -> Result<(Vec<CertificateDer<'static>>, KeyPair), String> {
    let key = KeyPair::generate().map_err(|e| format!("generating the serving key: {e}"))?;
    let mut p = CertificateParams::new(dns_names.to_vec())
        .map_err(|e| format!("serving certificate names: {e}"))?;
    p.distinguished_name = rcgen::DistinguishedName::new();
    if let Some(first) = dns_names.first() {
        p.distinguished_name
            .push(rcgen::DnType::CommonName, first.clone());
    }
    p.not_before = now - BACKDATE;
    p.not_after = std::cmp::min(now + ttl, a.ca_not_after);
    p.is_ca = IsCa::ExplicitNoCa;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    p.use_authority_key_identifier_extension = true;
    p.serial_number = Some(random_serial());
    let cert = signed(p, &key, a).map_err(|e| format!("signing the serving certificate: {e}"))?;
    let mut chain = vec![cert.der().clone()];
    for pem in &a.intermediates {
        chain.extend(certs_of(pem));
    }
    Ok((chain, key))
}

/// Verifies an issued chain (leaf, intermediates, root) as a peer's client certificate against
/// `root` at `now`, with rustls' webpki: signatures, validity, CA constraints, clientAuth.
pub fn verify(
    chain: &[String],
    root: &CertificateDer<'_>,
    now: OffsetDateTime,
) -> Result<(), String> {
    let certs: Vec<CertificateDer<'static>> = chain.iter().flat_map(|p| certs_of(p)).collect();
    let Some((leaf, rest)) = certs.split_first() else {
        return Err("empty chain".into());
    };
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(root.clone().into_owned())
        .map_err(|e| format!("root unusable as trust anchor: {e}"))?;
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        Arc::new(rustls::crypto::ring::default_provider()),
    )
    .build()
    .map_err(|e| format!("verifier: {e}"))?;
    let secs = u64::try_from(now.unix_timestamp()).map_err(|_| "time before 1970".to_string())?;
    let at = UnixTime::since_unix_epoch(Duration::from_secs(secs));
    let intermediates: Vec<CertificateDer<'static>> =
        rest.iter().filter(|c| *c != root).cloned().collect();
    verifier
        .verify_client_cert(leaf, &intermediates, at)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ca::authority::{pem_of, Origin};
    use crate::ca::root;
    use rcgen::{CustomExtension, DnType};
    use std::collections::BTreeMap;

    const ID: &str = "spiffe://cluster.local/ns/default/sa/httpbin";
    const H: Duration = Duration::from_secs(3600);

    fn now() -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }

    fn authority() -> Authority {
        let data = root::generate(now(), root::ROOT_VALIDITY, "cluster.local").unwrap();
        root::load(
            &data,
            Origin::Generated("remora-system/remora-ca".into()),
            now(),
        )
        .unwrap()
    }

    /// A CSR for `sans` (URIs start with spiffe://, anything else is a DNS name).
    fn csr_with(key: &KeyPair, sans: &[&str], edit: impl FnOnce(&mut CertificateParams)) -> String {
        let mut p = CertificateParams::default();
        p.distinguished_name = rcgen::DistinguishedName::new();
        p.subject_alt_names = sans
            .iter()
            .map(|s| {
                if s.starts_with("spiffe://") {
                    SanType::URI(s.to_string().try_into().unwrap())
                } else {
                    SanType::DnsName(s.to_string().try_into().unwrap())
                }
            })
            .collect();
        edit(&mut p);
        p.serialize_request(key).unwrap().pem().unwrap()
    }

    fn csr(sans: &[&str]) -> String {
        csr_with(&KeyPair::generate().unwrap(), sans, |_| {})
    }

    fn parse(pem: &str) -> x509_parser::certificate::X509Certificate<'static> {
        let der = CertificateDer::from_pem_slice(pem.as_bytes()).unwrap();
        let bytes: &'static [u8] = Box::leak(der.as_ref().to_vec().into_boxed_slice());
        x509_parser::parse_x509_certificate(bytes).unwrap().1
    }

    #[test]
    fn refusal_rules() {
        let p384 = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
        let ed = KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        let ca_true = csr_with(&KeyPair::generate().unwrap(), &[ID], |p| {
            // basicConstraints { cA TRUE }: SEQUENCE { BOOLEAN TRUE }
            let mut ext = CustomExtension::from_oid_content(
                &[2, 5, 29, 19],
                vec![0x30, 0x03, 0x01, 0x01, 0xff],
            );
            ext.set_criticality(true);
            p.custom_extensions.push(ext);
        });
        let with_ip = csr_with(&KeyPair::generate().unwrap(), &[ID], |p| {
            p.subject_alt_names
                .push(SanType::IpAddress("10.0.0.1".parse().unwrap()));
        });
        // A valid CSR with one byte of its signature changed.
        let tampered = {
            let good = csr(&[ID]);
            let der = CertificateSigningRequestDer::from_pem_slice(good.as_bytes()).unwrap();
            let mut bytes = der.as_ref().to_vec();
            let last = bytes.len() - 5;
            bytes[last] ^= 0x01;
            use base64::Engine;
            let b64 = base64::engine::general_purpose::STANDARD.encode(&bytes);
            format!(
                "-----BEGIN CERTIFICATE REQUEST-----\n{b64}\n-----END CERTIFICATE REQUEST-----\n"
            )
        };
        let rows: Vec<(&str, String, Reason, &str)> = vec![
            ("not PEM", "hello".into(), Reason::BadCsr, "not a PEM CERTIFICATE REQUEST"),
            ("a certificate, not a CSR",
             rcgen::generate_simple_self_signed(vec!["a".into()]).unwrap().cert.pem(),
             Reason::BadCsr, "not a PEM CERTIFICATE REQUEST"),
            ("too large", "x".repeat(MAX_CSR_BYTES + 1), Reason::BadCsr, "more than 16384"),
            ("bad signature", tampered, Reason::BadCsr, "signature does not verify"),
            ("no SAN", csr(&[]), Reason::IdentityMismatch, "names no URI SAN; the token's identity is spiffe://cluster.local/ns/default/sa/httpbin"),
            ("another namespace", csr(&["spiffe://cluster.local/ns/other/sa/httpbin"]), Reason::IdentityMismatch,
             "asks for \"spiffe://cluster.local/ns/other/sa/httpbin\", but the token's identity is spiffe://cluster.local/ns/default/sa/httpbin"),
            ("another trust domain", csr(&["spiffe://evil.example/ns/default/sa/httpbin"]), Reason::IdentityMismatch, "but the token's identity"),
            ("prefix only", csr(&["spiffe://cluster.local/ns/default/sa/httpbin2"]), Reason::IdentityMismatch, "but the token's identity"),
            ("two URIs", csr(&[ID, "spiffe://cluster.local/ns/default/sa/other"]), Reason::IdentityMismatch, "names 2 URI SANs"),
            ("DNS SAN", csr(&[ID, "httpbin.default.svc"]), Reason::DnsSan, "names DNS name \"httpbin.default.svc\""),
            ("IP SAN", with_ip, Reason::OtherSan, "an IP address SAN"),
            ("CA:true", ca_true, Reason::CaRequested, "basicConstraints CA:true"),
            ("P-384 key", csr_with(&p384, &[ID], |_| {}), Reason::KeyUnsupported, "ECDSA on curve 1.3.132.0.34"),
            ("Ed25519 key", csr_with(&ed, &[ID], |_| {}), Reason::KeyUnsupported, "key type 1.3.101.112"),
        ];
        for (what, pem, reason, want) in rows {
            let r = check_csr(&pem, ID).expect_err(what);
            assert_eq!(r.reason, reason, "{what}: {}", r.message);
            assert!(r.message.contains(want), "{what}: {}", r.message);
        }
    }

    #[test]
    fn issues_exactly_the_identity_and_verifies_against_the_root() {
        let a = authority();
        let at = now();
        // The CSR asks for extra usages and a subject: none of it is copied.
        let pem = csr_with(&KeyPair::generate().unwrap(), &[ID], |p| {
            p.distinguished_name.push(DnType::CommonName, "admin");
            p.key_usages = vec![KeyUsagePurpose::KeyCertSign];
            p.extended_key_usages = vec![ExtendedKeyUsagePurpose::CodeSigning];
        });
        let checked = check_csr(&pem, ID).unwrap();
        let issued = issue(&a, checked, ID, 2 * H, at).unwrap();
        // Chain order: leaf, then the root last (no intermediates with a generated root).
        assert_eq!(issued.chain.len(), 2);
        assert_eq!(issued.chain[1], a.root_pem);
        let leaf = parse(&issued.chain[0]);
        assert!(!leaf.is_ca());
        assert_eq!(leaf.subject().iter().count(), 0, "no subject from the CSR");
        let san = leaf.subject_alternative_name().unwrap().unwrap().value;
        assert_eq!(san.general_names, vec![GeneralName::URI(ID)]);
        let ku = leaf.key_usage().unwrap().unwrap().value;
        assert!(ku.digital_signature() && ku.key_encipherment() && !ku.key_cert_sign());
        let eku = leaf.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.server_auth && eku.client_auth && !eku.code_signing);
        let v = leaf.validity();
        assert_eq!(
            (v.not_after.to_datetime() - v.not_before.to_datetime()).whole_seconds(),
            7200
        );
        assert_eq!(issued.not_after, v.not_after.to_datetime());
        assert_eq!(
            issued.serial,
            leaf.raw_serial()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        );
        // The signature verifies against the root (x509-parser) and the chain as TLS peers do.
        let root = parse(&a.root_pem);
        leaf.verify_signature(Some(root.public_key())).unwrap();
        verify(&issued.chain, &a.root_der, at).unwrap();
        // … and not against another root.
        let other = authority();
        assert!(verify(&issued.chain, &other.root_der, at).is_err());
        // An RSA CSR would be signed the same way; rcgen with ring cannot generate RSA keys,
        // so RSA is covered by the key checks' code path only.
    }

    /// A generated root is due for renewal below 20 % of its lifetime; the renewed root has
    /// the same key and subject, so a certificate signed by either verifies against the other
    /// (workloads still trusting only the old root accept the new chains, and the reverse), and
    /// the bundle trusts both until the old one expires.
    #[test]
    fn a_renewed_generated_root_keeps_trust_both_ways() {
        let t0 = now();
        let data = root::generate(t0, Duration::from_secs(100), "cluster.local").unwrap();
        // Lifetime 160 s (backdated 60 s): due once less than 32 s are left.
        assert_eq!(
            root::renewal_due(&data, t0, root::RENEW_WHEN_LEFT).unwrap(),
            None
        );
        assert_eq!(
            root::renewal_due(&data, t0 + Duration::from_secs(60), root::RENEW_WHEN_LEFT).unwrap(),
            None
        );
        let why = root::renewal_due(&data, t0 + Duration::from_secs(75), root::RENEW_WHEN_LEFT)
            .unwrap()
            .expect("due with 25 s of 160 left");
        assert!(
            why.contains("% of its lifetime left, renewed below 20 %"),
            "{why}"
        );
        let origin = || Origin::Generated("remora-system/remora-ca".into());
        let old = root::load(&data, origin(), t0).unwrap();
        let renewed = root::renew(&data, t0, root::ROOT_VALIDITY).unwrap();
        assert_eq!(renewed[root::CA_KEY], data[root::CA_KEY], "the key is kept");
        let new = root::load(&renewed, origin(), t0).unwrap();
        assert_eq!(new.roots, 2, "the new root and the old one");
        assert!(new.ca_not_after > old.ca_not_after + Duration::from_secs(86_400));
        assert_eq!(
            root::renewal_due(
                &renewed,
                t0 + Duration::from_secs(75),
                root::RENEW_WHEN_LEFT
            )
            .unwrap(),
            None
        );
        let (old_root, new_root) = (
            certs_of(std::str::from_utf8(&data[root::CA_CERT]).unwrap())[0].clone(),
            certs_of(std::str::from_utf8(&renewed[root::CA_CERT]).unwrap())[0].clone(),
        );
        assert_ne!(old_root, new_root);
        assert_eq!(
            parse(&pem_of(&old_root)).subject().to_string(),
            parse(&pem_of(&new_root)).subject().to_string()
        );
        let leaf = |a: &Authority| {
            let checked = check_csr(&csr(&[ID]), ID).unwrap();
            issue(a, checked, ID, H, t0).unwrap().chain
        };
        let (by_old, by_new) = (leaf(&old), leaf(&new));
        verify(&by_old, &new_root, t0).unwrap();
        verify(&by_new, &old_root, t0).unwrap();
        verify(&by_new, &new_root, t0).unwrap();
        // Once the old root has expired, the bundle drops it and the renewed root alone signs.
        let later = t0 + Duration::from_secs(200);
        let after = root::load(&renewed, origin(), later).unwrap();
        assert_eq!(after.roots, 1);
        assert_eq!(after.dropped.len(), 1, "{:?}", after.dropped);
        verify(&leaf(&after), &new_root, later).unwrap();
    }

    /// Certificates are backdated a minute, or a quarter of their lifetime when shorter: a
    /// one-minute certificate is valid 45 s ahead, not expired on arrival.
    #[test]
    fn short_lifetimes_are_backdated_less() {
        let a = authority();
        let at = now().replace_nanosecond(0).unwrap();
        for (ttl, back) in [
            (Duration::from_secs(60), 15),
            (Duration::from_secs(120), 30),
            (Duration::from_secs(240), 60),
            (2 * H, 60),
        ] {
            let key = KeyPair::generate().unwrap();
            let checked = check_csr(&csr_with(&key, &[ID], |_| {}), ID).unwrap();
            let issued = issue(&a, checked, ID, ttl, at).unwrap();
            assert_eq!(issued.not_before, at - Duration::from_secs(back), "{ttl:?}");
            assert_eq!(issued.not_after - issued.not_before, ttl, "{ttl:?}");
        }
    }

    #[test]
    fn ttl_is_capped_and_defaulted() {
        let p = Policy {
            trust_domain: "cluster.local".into(),
            max_ttl: 24 * H,
            default_ttl: 24 * H,
        };
        for (requested, want) in [
            (0, 24 * H),
            (-5, 24 * H),
            (3600, H),
            (48 * 3600, 24 * H),
            (i64::MAX, 24 * H),
        ] {
            assert_eq!(p.ttl(requested), want, "requested {requested}");
        }
        let short = Policy {
            max_ttl: H,
            default_ttl: H,
            ..p
        };
        assert_eq!(short.ttl(0), H);
        assert_eq!(short.ttl(7200), H);
        // Never beyond the signing CA's own expiry.
        let a = authority();
        let late = a.ca_not_after - time::Duration::hours(1);
        let checked = check_csr(&csr(&[ID]), ID).unwrap();
        let issued = issue(&a, checked, ID, 24 * H, late).unwrap();
        assert_eq!(issued.not_after, a.ca_not_after);
    }

    /// A user's plug-in CA (root → intermediate): leaf, intermediate, root; verifies.
    #[test]
    fn plug_in_intermediate_chain_order() {
        let at = now();
        let root_key = KeyPair::generate().unwrap();
        let mut rp = CertificateParams::new(Vec::<String>::new()).unwrap();
        rp.distinguished_name
            .push(DnType::OrganizationName, "Example Corp");
        rp.distinguished_name
            .push(DnType::CommonName, "Example Root CA");
        rp.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        rp.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let root_cert = rp.self_signed(&root_key).unwrap();
        let int_key = KeyPair::generate().unwrap();
        let mut ip = CertificateParams::new(Vec::<String>::new()).unwrap();
        ip.distinguished_name
            .push(DnType::OrganizationName, "Example Corp");
        ip.distinguished_name
            .push(DnType::CommonName, "Example Mesh Intermediate");
        ip.is_ca = IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
        ip.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        ip.use_authority_key_identifier_extension = true;
        let int_cert = ip.signed_by(&int_key, &root_cert, &root_key).unwrap();
        let data: BTreeMap<String, Vec<u8>> = [
            (root::CA_CERT, int_cert.pem()),
            (root::CA_KEY, int_key.serialize_pem()),
            (root::ROOT_CERT, root_cert.pem()),
            // Istio's samples put the root in cert-chain.pem too: it is sent once, last.
            (
                root::CERT_CHAIN,
                format!("{}{}", int_cert.pem(), root_cert.pem()),
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.into_bytes()))
        .collect();
        let a = root::load(&data, Origin::PlugIn("remora-system/cacerts".into()), at).unwrap();
        let checked = check_csr(&csr(&[ID]), ID).unwrap();
        let issued = issue(&a, checked, ID, H, at).unwrap();
        assert_eq!(issued.chain.len(), 3);
        assert_eq!(issued.chain[1], int_cert.pem());
        assert_eq!(issued.chain[2], root_cert.pem());
        let leaf = parse(&issued.chain[0]);
        // The leaf's issuer is the intermediate's subject, byte for byte.
        assert_eq!(
            leaf.issuer().as_raw(),
            parse(&int_cert.pem()).subject().as_raw()
        );
        verify(&issued.chain, root_cert.der(), at).unwrap();

        // Broken plug-ins are refused at load with the key and the reason.
        let mut wrong_key = data.clone();
        wrong_key.insert(
            root::CA_KEY.into(),
            KeyPair::generate().unwrap().serialize_pem().into_bytes(),
        );
        let e = root::load(&wrong_key, Origin::PlugIn("x".into()), at).unwrap_err();
        assert_eq!(
            e,
            "ca-key.pem: does not belong to ca-cert.pem (public keys differ)"
        );
        let mut wrong_root = data.clone();
        wrong_root.insert(root::ROOT_CERT.into(), authority().root_pem.into_bytes());
        let e = root::load(&wrong_root, Origin::PlugIn("x".into()), at).unwrap_err();
        assert!(
            e.starts_with("ca-cert.pem: a test certificate it signed does not verify"),
            "{e}"
        );
        let mut leaf_as_ca = data.clone();
        leaf_as_ca.insert(root::CA_CERT.into(), issued.chain[0].clone().into_bytes());
        let e = root::load(&leaf_as_ca, Origin::PlugIn("x".into()), at).unwrap_err();
        assert!(e.starts_with("ca-cert.pem: not a CA certificate"), "{e}");
        let mut missing = data;
        missing.remove(root::CA_KEY);
        assert_eq!(
            root::load(&missing, Origin::PlugIn("x".into()), at).unwrap_err(),
            "ca-key.pem: missing"
        );
    }

    /// Root rotation: `root-cert.pem` may hold the old and the new root; the CA signs with
    /// whichever `ca-cert.pem` chains to, publishes both, and a leaf of either verifies against
    /// the bundle. Unusable roots are left out with the reason; a bundle without the signing
    /// CA's root is refused.
    #[test]
    fn a_root_bundle_during_rotation() {
        let at = now();
        let old = authority();
        let new = authority();
        let bundle = format!("{}{}", old.root_pem, new.root_pem);
        // Still signing with the old root, trusting both.
        let mut data = root::generate(at, root::ROOT_VALIDITY, "cluster.local").unwrap();
        let old_data = data.clone();
        data.insert(root::ROOT_CERT.into(), bundle.clone().into_bytes());
        let e = root::load(&data, Origin::PlugIn("x".into()), at).unwrap_err();
        assert!(
            e.starts_with("ca-cert.pem: a test certificate it signed verifies against none of the 2 roots of root-cert.pem"),
            "{e}"
        );
        let mut with_own = old_data.clone();
        let own_root = String::from_utf8(old_data[root::ROOT_CERT].clone()).unwrap();
        with_own.insert(
            root::ROOT_CERT.into(),
            format!("{}{own_root}", new.root_pem).into_bytes(),
        );
        let a = root::load(&with_own, Origin::PlugIn("x".into()), at).unwrap();
        assert_eq!(a.roots, 2);
        assert_eq!(
            a.root_pem,
            format!("{}{own_root}", new.root_pem),
            "both published, in order"
        );
        assert_eq!(
            a.root_der,
            certs_of(&own_root)[0],
            "the anchor is the signing root"
        );
        assert!(
            a.intermediates.is_empty(),
            "no root is sent as an intermediate"
        );
        let issued = probe(&a, at).unwrap();
        assert_eq!(
            issued.chain.last().unwrap(),
            &a.root_pem,
            "the bundle ends the chain"
        );
        verify(&issued.chain, &a.root_der, at).unwrap();
        // A leaf of the other root verifies against that root of the bundle.
        let other = probe(&new, at).unwrap();
        verify(&other.chain, &certs_of(&new.root_pem)[0], at).unwrap();

        // An expired root in the bundle is left out, named.
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name
            .push(rcgen::DnType::CommonName, "Old Expired Root");
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        p.not_before = at - Duration::from_secs(7200);
        p.not_after = at - Duration::from_secs(3600);
        let expired = p.self_signed(&key).unwrap();
        let mut with_expired = old_data.clone();
        with_expired.insert(
            root::ROOT_CERT.into(),
            format!("{}{own_root}", expired.pem()).into_bytes(),
        );
        let a = root::load(&with_expired, Origin::PlugIn("x".into()), at).unwrap();
        assert_eq!(a.roots, 1);
        assert_eq!(a.root_pem, own_root);
        assert_eq!(a.dropped.len(), 1);
        assert!(
            a.dropped[0].starts_with("certificate 1 (CN=Old Expired Root): expired at"),
            "{:?}",
            a.dropped
        );
        let mut only_expired = old_data;
        only_expired.insert(root::ROOT_CERT.into(), expired.pem().into_bytes());
        let e = root::load(&only_expired, Origin::PlugIn("x".into()), at).unwrap_err();
        assert!(
            e.starts_with("root-cert.pem: no usable root certificate (certificate 1"),
            "{e}"
        );
    }

    #[test]
    fn every_reason_has_a_distinct_label() {
        let mut labels: Vec<&str> = Reason::ALL.iter().map(|r| r.label()).collect();
        labels.sort_unstable();
        labels.dedup();
        assert_eq!(labels.len(), Reason::ALL.len());
    }
}
