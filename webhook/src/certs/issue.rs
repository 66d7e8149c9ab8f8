//! Pure certificate work: issue a CA and a serving certificate, read them back from the Secret's
//! data, and decide whether they can be served or must be replaced. No I/O; the time is a
//! parameter, so every decision is testable with fixed clocks.
//!
//! The Secret holds four PEM keys:
//! - `tls.crt` / `tls.key`: the serving certificate (SANs `<svc>`, `<svc>.<ns>`, `<svc>.<ns>.svc`,
//!   `<svc>.<ns>.svc.cluster.local`) and its key;
//! - `ca.crt`: the trust bundle written into the webhooks' `caBundle` — the current CA first,
//!   then earlier CAs that have not expired yet (so certificates they signed keep verifying while
//!   replicas pick up a CA rotation);
//! - `ca.key`: the current CA's key (it signs the next serving certificate).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use rustls::client::danger::ServerCertVerifier;
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use time::OffsetDateTime;

pub const TLS_CRT: &str = "tls.crt";
pub const TLS_KEY: &str = "tls.key";
pub const CA_CRT: &str = "ca.crt";
pub const CA_KEY: &str = "ca.key";

/// Certificates issued before `now` by this much still verify on a node whose clock is behind.
const BACKDATE: Duration = Duration::from_secs(300);
/// Most CAs kept in `ca.crt` (the current one plus earlier, unexpired ones).
const MAX_BUNDLE: usize = 4;

/// What to issue and when to replace it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    pub service: String,
    pub namespace: String,
    /// Lifetime of a serving certificate.
    pub cert_validity: Duration,
    /// Lifetime of a CA.
    pub ca_validity: Duration,
    /// A serving certificate is replaced once it has less than this left. A CA is replaced
    /// once it has less than `cert_validity + rotate_before` left (so every serving
    /// certificate it signs gets its full lifetime).
    pub rotate_before: Duration,
}

impl Policy {
    /// Checks that the durations allow a stable rotation; the error names the flag.
    pub fn validate(&self) -> Result<(), String> {
        for (flag, v) in [
            ("--service", &self.service),
            ("--namespace", &self.namespace),
        ] {
            if let Err(why) = dns_label(v) {
                return Err(format!("{flag} {v:?}: {why}"));
            }
        }
        if self.rotate_before >= self.cert_validity {
            return Err(format!(
                "--cert-rotate-before {}: must be shorter than --cert-validity {} (else every new certificate is already due for rotation)",
                fmt_duration(self.rotate_before),
                fmt_duration(self.cert_validity)
            ));
        }
        let ca_min = self.cert_validity + self.rotate_before;
        if self.ca_validity <= ca_min {
            return Err(format!(
                "--ca-validity {}: must be longer than --cert-validity + --cert-rotate-before ({})",
                fmt_duration(self.ca_validity),
                fmt_duration(ca_min)
            ));
        }
        Ok(())
    }

    /// The name the API server verifies: `<service>.<namespace>.svc`.
    pub fn server_name(&self) -> String {
        format!("{}.{}.svc", self.service, self.namespace)
    }

    /// The serving certificate's DNS SANs.
    pub fn dns_names(&self) -> Vec<String> {
        let (s, n) = (&self.service, &self.namespace);
        vec![
            s.clone(),
            format!("{s}.{n}"),
            format!("{s}.{n}.svc"),
            format!("{s}.{n}.svc.cluster.local"),
        ]
    }
}

/// Kubernetes names of Services and namespaces are RFC 1123 labels.
fn dns_label(v: &str) -> Result<(), &'static str> {
    if v.is_empty() || v.len() > 63 {
        return Err("must be 1 to 63 characters (an RFC 1123 DNS label)");
    }
    if !v
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err("must hold only lowercase letters, digits and '-' (an RFC 1123 DNS label)");
    }
    if v.starts_with('-') || v.ends_with('-') {
        return Err("must start and end with a letter or digit (an RFC 1123 DNS label)");
    }
    Ok(())
}

/// The certificates and keys a Secret holds, as PEM text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Material {
    pub tls_crt: String,
    pub tls_key: String,
    /// The trust bundle: the current CA first, then earlier unexpired CAs.
    pub ca_crt: String,
    pub ca_key: String,
}

impl Material {
    /// The Secret `data` map.
    pub fn to_data(&self) -> BTreeMap<String, Vec<u8>> {
        [
            (TLS_CRT, &self.tls_crt),
            (TLS_KEY, &self.tls_key),
            (CA_CRT, &self.ca_crt),
            (CA_KEY, &self.ca_key),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
        .collect()
    }

    /// Reads a Secret's `data`; the error names the missing or unreadable key.
    pub fn from_data(data: &BTreeMap<String, Vec<u8>>) -> Result<Material, String> {
        let get = |k: &str| -> Result<String, String> {
            let v = data.get(k).ok_or_else(|| format!("key {k} missing"))?;
            String::from_utf8(v.clone()).map_err(|_| format!("key {k} is not UTF-8 PEM text"))
        };
        Ok(Material {
            tls_crt: get(TLS_CRT)?,
            tls_key: get(TLS_KEY)?,
            ca_crt: get(CA_CRT)?,
            ca_key: get(CA_KEY)?,
        })
    }

    /// The serving certificate and key in the form rustls serves.
    pub fn certified_key(&self) -> Result<CertifiedKey, String> {
        let chain = pem_certs(&self.tls_crt).map_err(|e| format!("{TLS_CRT}: {e}"))?;
        let key = PrivateKeyDer::from_pem_slice(self.tls_key.as_bytes())
            .map_err(|e| format!("{TLS_KEY}: not a PEM private key ({e})"))?;
        CertifiedKey::from_der(chain, key, &rustls::crypto::ring::default_provider())
            .map_err(|e| format!("{TLS_KEY} does not fit {TLS_CRT}: {e}"))
    }
}

/// Validity of one certificate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Validity {
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
}

/// What to do with the Secret's certificates.
#[derive(Debug)]
pub enum Verdict {
    /// Serve them unchanged.
    Valid { serving: Validity, ca: Validity },
    /// The CA is fine, the serving certificate must be replaced (reason given).
    RenewServing(String),
    /// The CA (and therefore the serving certificate) must be replaced (reason given).
    RenewAll(String),
    /// Everything is valid, but `ca.crt` carries expired or unreadable earlier CAs: write this
    /// pruned bundle.
    PruneBundle { ca_crt: String, dropped: usize },
}

/// The next step for a Secret's data (`None`: no Secret).
#[derive(Debug)]
pub enum Plan {
    /// The stored material is valid: serve it.
    Keep {
        material: Material,
        serving: Validity,
        ca: Validity,
    },
    /// Write this material (create when there was no Secret, else replace), for `reason`.
    Write { material: Material, reason: String },
}

/// Decides what to serve for the stored `data` at `now`, issuing new certificates as needed.
/// Everything written has been checked by [`inspect`] first.
pub fn plan(
    data: Option<&BTreeMap<String, Vec<u8>>>,
    policy: &Policy,
    now: OffsetDateTime,
) -> Result<Plan, String> {
    let Some(data) = data else {
        let material = issue_all(policy, now, None)?;
        return checked(
            material,
            policy,
            now,
            "no Secret yet: issued a new CA and serving certificate".into(),
        );
    };
    let current = match Material::from_data(data) {
        Ok(m) => m,
        Err(e) => {
            // Keep whatever CAs of the old bundle still parse (another replica may serve them).
            let old_bundle = data
                .get(CA_CRT)
                .and_then(|b| String::from_utf8(b.clone()).ok());
            let material = issue_all(policy, now, old_bundle.as_deref())?;
            return checked(
                material,
                policy,
                now,
                format!("Secret unusable ({e}): issued a new CA and serving certificate"),
            );
        }
    };
    match inspect(&current, policy, now) {
        Verdict::Valid { serving, ca } => Ok(Plan::Keep {
            material: current,
            serving,
            ca,
        }),
        Verdict::PruneBundle { ca_crt, dropped } => {
            let material = Material { ca_crt, ..current };
            checked(
                material,
                policy,
                now,
                format!("dropped {dropped} expired or unreadable earlier CA(s) from {CA_CRT}"),
            )
        }
        Verdict::RenewServing(why) => {
            let same_ca = issue_serving(&current, policy, now).and_then(|m| {
                checked(
                    m,
                    policy,
                    now,
                    format!("{why}: issued a new serving certificate from the same CA"),
                )
            });
            match same_ca {
                Ok(p) => Ok(p),
                Err(e) => {
                    // E.g. a CA we did not issue, whose name we cannot reproduce exactly.
                    let material = issue_all(policy, now, Some(&current.ca_crt))?;
                    checked(
                        material,
                        policy,
                        now,
                        format!("{why}; the stored CA cannot sign a new one ({e}): issued a new CA and serving certificate"),
                    )
                }
            }
        }
        Verdict::RenewAll(why) => {
            let material = issue_all(policy, now, Some(&current.ca_crt))?;
            checked(
                material,
                policy,
                now,
                format!("{why}: issued a new CA and serving certificate"),
            )
        }
    }
}

/// Refuses to write material that would not itself be served.
fn checked(
    material: Material,
    policy: &Policy,
    now: OffsetDateTime,
    reason: String,
) -> Result<Plan, String> {
    match inspect(&material, policy, now) {
        Verdict::Valid { .. } => Ok(Plan::Write { material, reason }),
        Verdict::RenewServing(e) | Verdict::RenewAll(e) => Err(format!(
            "newly issued certificates fail their own check: {e}"
        )),
        Verdict::PruneBundle { .. } => Err("newly issued bundle holds expired CAs".into()),
    }
}

/// Checks stored material at `now`: the CA parses, is a CA, matches `ca.key` and lives long
/// enough; the serving certificate matches `tls.key`, chains to the CA, names
/// `<svc>.<ns>.svc` and is not within `rotate_before` of expiry; earlier CAs in the bundle are
/// still valid.
pub fn inspect(m: &Material, policy: &Policy, now: OffsetDateTime) -> Verdict {
    // The CA.
    let bundle = match pem_certs(&m.ca_crt) {
        Ok(b) => b,
        Err(e) => return Verdict::RenewAll(format!("{CA_CRT}: {e}")),
    };
    let ca_der = &bundle[0];
    let ca = match cert_facts(ca_der) {
        Ok(f) => f,
        Err(e) => return Verdict::RenewAll(format!("{CA_CRT}: {e}")),
    };
    if !ca.is_ca {
        return Verdict::RenewAll(format!(
            "{CA_CRT}: first certificate ({}) is not a CA",
            ca.subject
        ));
    }
    let ca_key = match KeyPair::from_pem(&m.ca_key) {
        Ok(k) => k,
        Err(e) => {
            return Verdict::RenewAll(format!("{CA_KEY}: not a usable PEM private key ({e})"))
        }
    };
    if ca_key.public_key_der() != ca.spki {
        return Verdict::RenewAll(format!("{CA_KEY} does not belong to the CA in {CA_CRT}"));
    }
    if now < ca.validity.not_before {
        return Verdict::RenewAll(format!(
            "CA not valid before {}",
            fmt_time(ca.validity.not_before)
        ));
    }
    let ca_min = policy.cert_validity + policy.rotate_before;
    if ca.validity.not_after <= now + ca_min {
        return Verdict::RenewAll(format!(
            "CA expires at {} (less than --cert-validity + --cert-rotate-before = {} left)",
            fmt_time(ca.validity.not_after),
            fmt_duration(ca_min)
        ));
    }

    // The serving certificate.
    let served = match m.certified_key() {
        Ok(c) => c,
        Err(e) => return Verdict::RenewServing(e),
    };
    let leaf = &served.cert[0];
    if let Err(e) = verify_chain(leaf, &served.cert[1..], ca_der, &policy.server_name(), now) {
        return Verdict::RenewServing(format!(
            "serving certificate does not verify as {} against the CA: {e}",
            policy.server_name()
        ));
    }
    let serving = match cert_facts(leaf) {
        Ok(f) => f.validity,
        Err(e) => return Verdict::RenewServing(format!("{TLS_CRT}: {e}")),
    };
    if serving.not_after <= now + policy.rotate_before {
        return Verdict::RenewServing(format!(
            "serving certificate expires at {} (within --cert-rotate-before {})",
            fmt_time(serving.not_after),
            fmt_duration(policy.rotate_before)
        ));
    }

    // Earlier CAs in the bundle.
    let (kept, dropped) = prune_bundle(&m.ca_crt, now, None, true);
    if dropped > 0 {
        return Verdict::PruneBundle {
            ca_crt: kept,
            dropped,
        };
    }
    Verdict::Valid {
        serving,
        ca: ca.validity,
    }
}

/// A new CA and a serving certificate it signed. `previous_bundle` (the old `ca.crt`) donates
/// its CAs that still parse and have not expired, after the new one.
pub fn issue_all(
    policy: &Policy,
    now: OffsetDateTime,
    previous_bundle: Option<&str>,
) -> Result<Material, String> {
    let ca_key = KeyPair::generate().map_err(|e| format!("generating the CA key: {e}"))?;
    let ca_params = ca_params(
        &format!("remora-webhook-ca@{}", now.unix_timestamp()),
        now - BACKDATE,
        now + policy.ca_validity,
    )?;
    let ca_pem = ca_params
        .self_signed(&ca_key)
        .map_err(|e| format!("signing the CA: {e}"))?
        .pem();
    let mut ca_crt = ca_pem;
    if let Some(prev) = previous_bundle {
        let (rest, _) = prune_bundle(prev, now, Some(MAX_BUNDLE - 1), false);
        ca_crt.push_str(&rest);
    }
    let stub = Material {
        tls_crt: String::new(),
        tls_key: String::new(),
        ca_crt,
        ca_key: ca_key.serialize_pem(),
    };
    issue_serving(&stub, policy, now)
}

/// A new serving certificate signed by `m`'s CA (the first certificate of `ca.crt`, key
/// `ca.key`); the bundle is pruned of expired earlier CAs.
pub fn issue_serving(
    m: &Material,
    policy: &Policy,
    now: OffsetDateTime,
) -> Result<Material, String> {
    let bundle = pem_certs(&m.ca_crt).map_err(|e| format!("{CA_CRT}: {e}"))?;
    let ca = cert_facts(&bundle[0]).map_err(|e| format!("{CA_CRT}: {e}"))?;
    let ca_key =
        KeyPair::from_pem(&m.ca_key).map_err(|e| format!("{CA_KEY}: not a usable key ({e})"))?;
    // rcgen signs with the issuer's name and key: rebuild the CA's parameters from its subject
    // (we issued it; a foreign name encoding fails the check that follows every issuance).
    let issuer = ca_params(
        &ca.common_name,
        ca.validity.not_before,
        ca.validity.not_after,
    )?
    .self_signed(&ca_key)
    .map_err(|e| format!("loading the CA: {e}"))?;
    let key = KeyPair::generate().map_err(|e| format!("generating the serving key: {e}"))?;
    let mut params = CertificateParams::new(policy.dns_names())
        .map_err(|e| format!("serving certificate names: {e}"))?;
    params
        .distinguished_name
        .push(DnType::CommonName, policy.server_name());
    params.not_before = now - BACKDATE;
    params.not_after = std::cmp::min(now + policy.cert_validity, ca.validity.not_after);
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    let cert = params
        .signed_by(&key, &issuer, &ca_key)
        .map_err(|e| format!("signing the serving certificate: {e}"))?;
    // The current CA stays first; earlier ones are kept until they expire.
    let (ca_crt, _) = prune_bundle(&m.ca_crt, now, Some(MAX_BUNDLE), true);
    Ok(Material {
        tls_crt: cert.pem(),
        tls_key: key.serialize_pem(),
        ca_crt,
        ca_key: m.ca_key.clone(),
    })
}

fn ca_params(
    common_name: &str,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
) -> Result<CertificateParams, String> {
    let mut p = CertificateParams::new(Vec::<String>::new()).map_err(|e| format!("CA: {e}"))?;
    p.distinguished_name = rcgen::DistinguishedName::new();
    p.distinguished_name.push(DnType::CommonName, common_name);
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    p.not_before = not_before;
    p.not_after = not_after;
    Ok(p)
}

/// Keeps the certificates of `bundle` that parse, are CAs and have not expired at `now` (the
/// first one unconditionally when `keep_first`: it is the current CA, checked elsewhere), no
/// duplicates, at most `max` in all. Returns the kept PEM text and how many were dropped.
pub fn prune_bundle(
    bundle: &str,
    now: OffsetDateTime,
    max: Option<usize>,
    keep_first: bool,
) -> (String, usize) {
    let mut kept: Vec<Vec<u8>> = Vec::new();
    let mut dropped = 0;
    for (i, item) in CertificateDer::pem_slice_iter(bundle.as_bytes()).enumerate() {
        let Ok(der) = item else {
            dropped += 1;
            continue;
        };
        let ok = match cert_facts(&der) {
            Ok(f) => (keep_first && i == 0) || (f.is_ca && f.validity.not_after > now),
            Err(_) => false,
        };
        if ok && !kept.iter().any(|k| k.as_slice() == der.as_ref()) {
            if max.is_some_and(|m| kept.len() >= m) {
                dropped += 1;
            } else {
                kept.push(der.as_ref().to_vec());
            }
        } else {
            dropped += 1;
        }
    }
    let text = kept
        .iter()
        .map(|d| pem_of(&CertificateDer::from(d.as_slice())))
        .collect();
    (text, dropped)
}

/// Verifies `leaf` (with `intermediates`) against `ca` as trust anchor for `name` at `now`,
/// the way a TLS client does (signature, validity, name, server-auth usage).
pub fn verify_chain(
    leaf: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    ca: &CertificateDer<'_>,
    name: &str,
    now: OffsetDateTime,
) -> Result<(), String> {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(ca.clone().into_owned())
        .map_err(|e| format!("CA unusable as trust anchor: {e}"))?;
    let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
        Arc::new(roots),
        Arc::new(rustls::crypto::ring::default_provider()),
    )
    .build()
    .map_err(|e| format!("verifier: {e}"))?;
    let server_name =
        ServerName::try_from(name.to_string()).map_err(|e| format!("name {name:?}: {e}"))?;
    let secs = u64::try_from(now.unix_timestamp()).map_err(|_| "time before 1970".to_string())?;
    let at = UnixTime::since_unix_epoch(Duration::from_secs(secs));
    let intermediates: Vec<CertificateDer<'static>> = intermediates
        .iter()
        .map(|c| c.clone().into_owned())
        .collect();
    verifier
        .verify_server_cert(
            &leaf.clone().into_owned(),
            &intermediates,
            &server_name,
            &[],
            at,
        )
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// The certificates of a PEM text, in order; an error when none or one does not parse.
pub fn pem_certs(pem: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| format!("not PEM certificates ({e})"))?;
    if certs.is_empty() {
        return Err("no PEM CERTIFICATE block".into());
    }
    Ok(certs)
}

/// What we need to know of one certificate.
struct Facts {
    validity: Validity,
    is_ca: bool,
    spki: Vec<u8>,
    subject: String,
    common_name: String,
}

fn cert_facts(der: &CertificateDer<'_>) -> Result<Facts, String> {
    let (_, c) = x509_parser::parse_x509_certificate(der.as_ref())
        .map_err(|e| format!("not an X.509 certificate ({e})"))?;
    let v = c.validity();
    let common_name = c
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .unwrap_or_default()
        .to_string();
    Ok(Facts {
        validity: Validity {
            not_before: v.not_before.to_datetime(),
            not_after: v.not_after.to_datetime(),
        },
        is_ca: c.is_ca(),
        spki: c.public_key().raw.to_vec(),
        subject: c.subject().to_string(),
        common_name,
    })
}

/// The validity of the first certificate of a PEM text.
pub fn validity_of(pem: &str) -> Result<Validity, String> {
    let certs = pem_certs(pem)?;
    cert_facts(&certs[0]).map(|f| f.validity)
}

fn pem_of(der: &CertificateDer<'_>) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der.as_ref());
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

/// RFC 3339, seconds precision.
pub fn fmt_time(t: OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

/// `90d`, `12h`, `30m`, `45s`, or a combination such as `1d12h`.
pub fn fmt_duration(d: Duration) -> String {
    let mut s = d.as_secs();
    if s == 0 {
        return "0s".into();
    }
    let mut out = String::new();
    for (unit, len) in [("d", 86_400), ("h", 3_600), ("m", 60), ("s", 1)] {
        if s >= len {
            out.push_str(&format!("{}{unit}", s / len));
            s %= len;
        }
    }
    out
}

pub use remora_model::rules::model::parse_duration_days as parse_duration;

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: Duration = Duration::from_secs(86_400);

    fn policy() -> Policy {
        Policy {
            service: "remora-webhook".into(),
            namespace: "remora-system".into(),
            cert_validity: 90 * DAY,
            ca_validity: 3650 * DAY,
            rotate_before: 30 * DAY,
        }
    }

    fn t0() -> OffsetDateTime {
        // 2026-11-22T00:00:00Z
        OffsetDateTime::from_unix_timestamp(1_795_305_600).unwrap()
    }

    fn write(plan: Plan) -> (Material, String) {
        match plan {
            Plan::Write { material, reason } => (material, reason),
            Plan::Keep { .. } => panic!("expected a write, got keep"),
        }
    }

    fn keep(plan: Plan) -> (Material, Validity, Validity) {
        match plan {
            Plan::Keep {
                material,
                serving,
                ca,
            } => (material, serving, ca),
            Plan::Write { reason, .. } => panic!("expected keep, got write: {reason}"),
        }
    }

    #[test]
    fn first_issue_verifies_for_the_service_name_and_not_for_others() {
        let p = policy();
        let (m, reason) = write(plan(None, &p, t0()).unwrap());
        assert!(reason.contains("no Secret"), "{reason}");
        let chain = pem_certs(&m.tls_crt).unwrap();
        let ca = pem_certs(&m.ca_crt).unwrap();
        assert_eq!(ca.len(), 1);
        for name in p.dns_names() {
            verify_chain(&chain[0], &[], &ca[0], &name, t0()).unwrap();
        }
        let wrong = verify_chain(&chain[0], &[], &ca[0], "other.remora-system.svc", t0());
        assert!(wrong.is_err());
        // A different CA does not verify it.
        let (other, _) = write(plan(None, &p, t0()).unwrap());
        let other_ca = pem_certs(&other.ca_crt).unwrap();
        assert!(verify_chain(&chain[0], &[], &other_ca[0], &p.server_name(), t0()).is_err());
        let v = validity_of(&m.tls_crt).unwrap();
        assert_eq!(v.not_after, t0() + 90 * DAY);
        let v = validity_of(&m.ca_crt).unwrap();
        assert_eq!(v.not_after, t0() + 3650 * DAY);
    }

    #[test]
    fn valid_material_is_kept_through_its_life_until_rotate_before() {
        let p = policy();
        let (m, _) = write(plan(None, &p, t0()).unwrap());
        let data = m.to_data();
        let (kept, serving, _) = keep(plan(Some(&data), &p, t0() + 10 * DAY).unwrap());
        assert_eq!(kept, m);
        assert_eq!(serving.not_after, t0() + 90 * DAY);
        // 59 days in: 31 days left, still kept.
        keep(plan(Some(&data), &p, t0() + 59 * DAY).unwrap());
        // 61 days in: 29 days left < 30 d rotate-before: a new serving cert, same CA.
        let (renewed, reason) = write(plan(Some(&data), &p, t0() + 61 * DAY).unwrap());
        assert!(reason.contains("within --cert-rotate-before"), "{reason}");
        assert!(reason.contains("same CA"), "{reason}");
        assert_eq!(renewed.ca_crt, m.ca_crt);
        assert_eq!(renewed.ca_key, m.ca_key);
        assert_ne!(renewed.tls_crt, m.tls_crt);
        assert_ne!(renewed.tls_key, m.tls_key);
        let v = validity_of(&renewed.tls_crt).unwrap();
        assert_eq!(v.not_after, t0() + 61 * DAY + 90 * DAY);
    }

    #[test]
    fn expired_serving_cert_is_replaced() {
        let p = policy();
        let (m, _) = write(plan(None, &p, t0()).unwrap());
        let (_, reason) = write(plan(Some(&m.to_data()), &p, t0() + 200 * DAY).unwrap());
        assert!(
            reason.contains("does not verify") || reason.contains("expires"),
            "{reason}"
        );
        assert!(reason.contains("same CA"), "{reason}");
    }

    #[test]
    fn ca_near_expiry_rotates_and_keeps_old_ca_in_bundle_until_it_expires() {
        let p = policy();
        let (m, _) = write(plan(None, &p, t0()).unwrap());
        // CA lives 3650 d; it must rotate once less than 120 d (90 + 30) remain.
        let late = t0() + 3540 * DAY;
        let (rotated, reason) = write(plan(Some(&m.to_data()), &p, late).unwrap());
        assert!(reason.contains("CA expires at"), "{reason}");
        let bundle = pem_certs(&rotated.ca_crt).unwrap();
        assert_eq!(bundle.len(), 2, "new CA then the old one");
        let old_ca = pem_certs(&m.ca_crt).unwrap();
        assert_eq!(bundle[1], old_ca[0]);
        assert_ne!(rotated.ca_key, m.ca_key);
        // The old serving cert (issued by the old CA, renewed late in its life) still verifies
        // against the bundle's old CA, the new one against the new CA.
        let (old_serving, _) = write(plan(Some(&m.to_data()), &p, late - 40 * DAY).unwrap());
        let leaf = pem_certs(&old_serving.tls_crt).unwrap();
        verify_chain(&leaf[0], &[], &bundle[1], &p.server_name(), late).unwrap();
        let new_leaf = pem_certs(&rotated.tls_crt).unwrap();
        verify_chain(&new_leaf[0], &[], &bundle[0], &p.server_name(), late).unwrap();
        // Kept while the old CA lives.
        let (kept, _, _) = keep(plan(Some(&rotated.to_data()), &p, late + DAY).unwrap());
        assert_eq!(pem_certs(&kept.ca_crt).unwrap().len(), 2);
        // The next serving renewal after the old CA expired leaves it out.
        let after_old = t0() + 3651 * DAY;
        let (renewed, reason) = write(plan(Some(&rotated.to_data()), &p, after_old).unwrap());
        assert!(reason.contains("same CA"), "{reason}");
        let bundle_after = pem_certs(&renewed.ca_crt).unwrap();
        assert_eq!(bundle_after, vec![bundle[0].clone()]);
    }

    #[test]
    fn expired_earlier_ca_is_pruned_without_touching_the_certificates() {
        let p = policy();
        let (current, _) = write(plan(None, &p, t0()).unwrap());
        // A CA issued 3649 days before t0 expires one day after t0.
        let (old, _) = write(plan(None, &p, t0() - 3649 * DAY).unwrap());
        let both = Material {
            ca_crt: format!("{}{}", current.ca_crt, old.ca_crt),
            ..current.clone()
        };
        keep(plan(Some(&both.to_data()), &p, t0()).unwrap());
        let (pruned, reason) = write(plan(Some(&both.to_data()), &p, t0() + 2 * DAY).unwrap());
        assert!(reason.contains("dropped 1 expired"), "{reason}");
        assert_eq!(pruned, current);
    }

    #[test]
    fn serving_cert_never_outlives_its_ca() {
        let p = Policy {
            cert_validity: 90 * DAY,
            ca_validity: 121 * DAY,
            ..policy()
        };
        let (m, _) = write(plan(None, &p, t0()).unwrap());
        // At day 0 the CA has 121 d left (> 120): fine. A serving renewal on day 0.5 is
        // clamped to the CA's end only if it would pass it; here it does not.
        let v = validity_of(&m.tls_crt).unwrap();
        assert!(v.not_after <= validity_of(&m.ca_crt).unwrap().not_after);
    }

    #[test]
    fn garbage_is_replaced_with_a_reason_naming_the_key() {
        let p = policy();
        let mut data = BTreeMap::new();
        data.insert(TLS_CRT.to_string(), b"not a cert".to_vec());
        let (_, reason) = write(plan(Some(&data), &p, t0()).unwrap());
        assert!(reason.contains("key tls.key missing"), "{reason}");

        let (m, _) = write(plan(None, &p, t0()).unwrap());
        let mut bad = m.to_data();
        bad.insert(
            CA_CRT.into(),
            b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n".to_vec(),
        );
        let (fixed, reason) = write(plan(Some(&bad), &p, t0()).unwrap());
        assert!(reason.starts_with("ca.crt:"), "{reason}");
        keep(plan(Some(&fixed.to_data()), &p, t0()).unwrap());

        // A serving key that belongs to another certificate.
        let (other, _) = write(plan(None, &p, t0()).unwrap());
        let mut mismatched = m.to_data();
        mismatched.insert(TLS_KEY.into(), other.tls_key.into_bytes());
        let (fixed, reason) = write(plan(Some(&mismatched), &p, t0()).unwrap());
        assert!(reason.contains("does not fit"), "{reason}");
        assert_eq!(fixed.ca_crt, m.ca_crt, "CA kept");

        // A CA key that belongs to another CA.
        let mut wrong_ca_key = m.to_data();
        wrong_ca_key.insert(CA_KEY.into(), other.ca_key.into_bytes());
        let (_, reason) = write(plan(Some(&wrong_ca_key), &p, t0()).unwrap());
        assert!(reason.contains("does not belong"), "{reason}");
    }

    #[test]
    fn serving_cert_for_another_service_is_replaced() {
        let p = policy();
        let other = Policy {
            service: "someone-else".into(),
            ..policy()
        };
        let (m, _) = write(plan(None, &other, t0()).unwrap());
        let (fixed, reason) = write(plan(Some(&m.to_data()), &p, t0()).unwrap());
        assert!(
            reason.contains("does not verify as remora-webhook.remora-system.svc"),
            "{reason}"
        );
        assert_eq!(fixed.ca_crt, m.ca_crt);
    }

    #[test]
    fn a_foreign_ca_that_cannot_be_reproduced_is_replaced_not_retried_forever() {
        let p = policy();
        // A CA named with O and CN (ours carry only CN), and a serving cert for another name.
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = ca_params("acme-ca", t0() - DAY, t0() + 3000 * DAY).unwrap();
        ca.distinguished_name.push(DnType::OrganizationName, "acme");
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let leaf_key = KeyPair::generate().unwrap();
        let mut leaf = CertificateParams::new(vec!["elsewhere.svc".to_string()]).unwrap();
        leaf.not_before = t0() - DAY;
        leaf.not_after = t0() + 90 * DAY;
        let leaf = leaf.signed_by(&leaf_key, &ca_cert, &ca_key).unwrap();
        let foreign = Material {
            tls_crt: leaf.pem(),
            tls_key: leaf_key.serialize_pem(),
            ca_crt: ca_cert.pem(),
            ca_key: ca_key.serialize_pem(),
        };
        let (m, reason) = write(plan(Some(&foreign.to_data()), &p, t0()).unwrap());
        assert!(
            reason.contains("the stored CA cannot sign a new one"),
            "{reason}"
        );
        assert_ne!(m.ca_key, foreign.ca_key);
        // The foreign CA stays in the bundle (its certificates may still be served).
        assert_eq!(pem_certs(&m.ca_crt).unwrap().len(), 2);
        keep(plan(Some(&m.to_data()), &p, t0()).unwrap());
    }

    #[test]
    fn a_leaf_in_ca_crt_is_not_a_ca() {
        let p = policy();
        let (m, _) = write(plan(None, &p, t0()).unwrap());
        let mut data = m.to_data();
        data.insert(CA_CRT.into(), m.tls_crt.clone().into_bytes());
        let (_, reason) = write(plan(Some(&data), &p, t0()).unwrap());
        assert!(reason.contains("is not a CA"), "{reason}");
    }

    #[test]
    fn policy_rejects_unstable_durations() {
        let mut p = policy();
        p.rotate_before = 90 * DAY;
        assert!(p
            .validate()
            .unwrap_err()
            .starts_with("--cert-rotate-before 90d"));
        let mut p = policy();
        p.ca_validity = 120 * DAY;
        assert!(p.validate().unwrap_err().starts_with("--ca-validity 120d"));
        policy().validate().unwrap();
        let mut p = policy();
        p.service = "Remora_Webhook".into();
        assert!(p
            .validate()
            .unwrap_err()
            .starts_with("--service \"Remora_Webhook\": must hold only lowercase"));
        let mut p = policy();
        p.namespace = String::new();
        assert!(p
            .validate()
            .unwrap_err()
            .starts_with("--namespace \"\": must be 1 to 63"));
    }

    #[test]
    fn durations_parse_and_print() {
        assert_eq!(parse_duration("90d").unwrap(), 90 * DAY);
        assert_eq!(
            parse_duration("1d12h").unwrap(),
            DAY + 12 * 3600 * Duration::from_secs(1)
        );
        assert_eq!(parse_duration("45").unwrap(), Duration::from_secs(45));
        assert!(parse_duration("10x").unwrap_err().contains("unknown unit"));
        assert!(parse_duration("d")
            .unwrap_err()
            .contains("expected a number"));
        assert!(parse_duration("5d3").unwrap_err().contains("missing unit"));
        assert_eq!(fmt_duration(DAY + Duration::from_secs(3661)), "1d1h1m1s");
        assert_eq!(fmt_time(t0()), "2026-11-22T00:00:00Z");
    }
}
