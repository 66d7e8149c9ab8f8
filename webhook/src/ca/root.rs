//! The root of trust, pure: generate a root, read one back from a Secret's data (the CA's own
//! `remora-ca` or the user's plug-in `cacerts`), and check it can sign before it is used.
//!
//! Both Secrets use Istio's plug-in key names:
//! - `ca-cert.pem`: the signing CA certificate (the root itself, or the user's intermediate);
//! - `ca-key.pem`: its private key (PKCS#8, `BEGIN PRIVATE KEY`);
//! - `root-cert.pem`: the roots of trust (what workloads trust): one root, or during a root
//!   rotation a bundle of the old and the new root (Istio's procedure for plug-in CAs), all
//!   published and trusted together; `ca-cert.pem` must chain to one of them;
//! - `cert-chain.pem` (optional): the chain from `ca-cert.pem` up to the root; sent after each
//!   leaf (certificates equal to the root are left out: the root is always sent last).

use std::collections::BTreeMap;
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
use rustls_pki_types::CertificateDer;
use time::OffsetDateTime;

use super::authority::{pem_of, Authority, Origin, BACKDATE};
use crate::certs::issue::{fmt_time, pem_certs};

pub const CA_CERT: &str = "ca-cert.pem";
pub const CA_KEY: &str = "ca-key.pem";
pub const ROOT_CERT: &str = "root-cert.pem";
pub const CERT_CHAIN: &str = "cert-chain.pem";

/// Lifetime of a generated root.
pub const ROOT_VALIDITY: Duration = Duration::from_secs(10 * 365 * 86_400);
/// A new self-signed ECDSA P-256 root valid from `now` (backdated) for `validity`, as Secret
/// data (`ca-cert.pem` = `root-cert.pem`, `ca-key.pem`).
pub fn generate(
    now: OffsetDateTime,
    validity: Duration,
    trust_domain: &str,
) -> Result<BTreeMap<String, Vec<u8>>, String> {
    let key = KeyPair::generate().map_err(|e| format!("generating the root key: {e}"))?;
    let mut p = CertificateParams::new(Vec::<String>::new()).map_err(|e| format!("root: {e}"))?;
    p.distinguished_name = rcgen::DistinguishedName::new();
    p.distinguished_name
        .push(DnType::OrganizationName, trust_domain);
    p.distinguished_name.push(
        DnType::CommonName,
        format!("remora mesh root CA {}", now.unix_timestamp()),
    );
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    p.not_before = now - BACKDATE;
    p.not_after = now + validity;
    p.serial_number = Some(crate::ca::sign::random_serial());
    let cert = p
        .self_signed(&key)
        .map_err(|e| format!("signing the root: {e}"))?;
    let pem = cert.pem();
    Ok(BTreeMap::from([
        (CA_CERT.to_string(), pem.clone().into_bytes()),
        (CA_KEY.to_string(), key.serialize_pem().into_bytes()),
        (ROOT_CERT.to_string(), pem.into_bytes()),
    ]))
}

/// A generated root is renewed when less than this fraction of its lifetime is left (Istio's
/// self-signed CA renews at 20 %).
pub const RENEW_WHEN_LEFT: f64 = 0.2;

/// Is the generated root in `data` due for renewal at `now` (less than `left` of its lifetime
/// to go)? `Some(why)` when due.
pub fn renewal_due(
    data: &BTreeMap<String, Vec<u8>>,
    now: OffsetDateTime,
    left: f64,
) -> Result<Option<String>, String> {
    let pem = data
        .get(CA_CERT)
        .and_then(|b| std::str::from_utf8(b).ok())
        .ok_or_else(|| format!("{CA_CERT}: missing or not UTF-8"))?;
    let der = pem_certs(pem).map_err(|e| format!("{CA_CERT}: {e}"))?[0].clone();
    let (_, c) = x509_parser::parse_x509_certificate(der.as_ref())
        .map_err(|e| format!("{CA_CERT}: not an X.509 certificate ({e})"))?;
    let (from, until) = (
        c.validity().not_before.to_datetime(),
        c.validity().not_after.to_datetime(),
    );
    let lifetime = (until - from).as_seconds_f64();
    let remaining = (until - now).as_seconds_f64();
    Ok((remaining < left * lifetime).then(|| {
        format!(
            "it expires at {} ({:.0} % of its lifetime left, renewed below {:.0} %)",
            fmt_time(until),
            (remaining / lifetime).max(0.0) * 100.0,
            left * 100.0
        )
    }))
}

/// The generated root in `data` renewed at `now` for `validity`: the same key and subject with
/// a new validity and serial, so that every certificate either one signs verifies against the
/// other. `root-cert.pem` holds the new root then the old one (the old one drops out of the
/// bundle once it expires); the key is unchanged.
pub fn renew(
    data: &BTreeMap<String, Vec<u8>>,
    now: OffsetDateTime,
    validity: Duration,
) -> Result<BTreeMap<String, Vec<u8>>, String> {
    let text = |k: &str| {
        data.get(k)
            .and_then(|b| String::from_utf8(b.clone()).ok())
            .ok_or_else(|| format!("{k}: missing or not UTF-8"))
    };
    let (old_pem, key_pem) = (text(CA_CERT)?, text(CA_KEY)?);
    let old_der = pem_certs(&old_pem).map_err(|e| format!("{CA_CERT}: {e}"))?[0].clone();
    let key = KeyPair::from_pem(&key_pem).map_err(|e| format!("{CA_KEY}: {e}"))?;
    let mut p = CertificateParams::from_ca_cert_der(&old_der)
        .map_err(|e| format!("{CA_CERT}: cannot be renewed ({e})"))?;
    p.not_before = now - BACKDATE;
    p.not_after = now + validity;
    p.serial_number = Some(crate::ca::sign::random_serial());
    let new_pem = p
        .self_signed(&key)
        .map_err(|e| format!("signing the renewed root: {e}"))?
        .pem();
    let old_root = pem_of(&old_der);
    Ok(BTreeMap::from([
        (CA_CERT.to_string(), new_pem.clone().into_bytes()),
        (CA_KEY.to_string(), key_pem.into_bytes()),
        (
            ROOT_CERT.to_string(),
            format!("{new_pem}{old_root}").into_bytes(),
        ),
    ]))
}

/// Reads and checks a CA from Secret data at `now`: the key matches `ca-cert.pem`, which is a
/// CA valid now, and a certificate it signs verifies against `root-cert.pem` through
/// `cert-chain.pem`. Errors name the key and the reason.
pub fn load(
    data: &BTreeMap<String, Vec<u8>>,
    origin: Origin,
    now: OffsetDateTime,
) -> Result<Authority, String> {
    let text = |k: &str| -> Result<Option<String>, String> {
        match data.get(k) {
            None => Ok(None),
            Some(b) => String::from_utf8(b.clone())
                .map(Some)
                .map_err(|_| format!("{k}: not UTF-8 PEM text")),
        }
    };
    let ca_pem = text(CA_CERT)?.ok_or_else(|| format!("{CA_CERT}: missing"))?;
    let key_pem = text(CA_KEY)?.ok_or_else(|| format!("{CA_KEY}: missing"))?;
    let root_text = match text(ROOT_CERT)? {
        Some(r) if !r.trim().is_empty() => r,
        // A generated root signs itself: root-cert.pem may be left out.
        _ => ca_pem.clone(),
    };
    let chain_text = text(CERT_CHAIN)?.unwrap_or_default();

    let ca_certs = pem_certs(&ca_pem).map_err(|e| format!("{CA_CERT}: {e}"))?;
    let ca_der = ca_certs[0].clone();
    let (_, ca) = x509_parser::parse_x509_certificate(ca_der.as_ref())
        .map_err(|e| format!("{CA_CERT}: not an X.509 certificate ({e})"))?;
    if !ca.is_ca() {
        return Err(format!(
            "{CA_CERT}: not a CA certificate (basicConstraints CA:false or missing)"
        ));
    }
    if let Ok(Some(ku)) = ca.key_usage() {
        if !ku.value.key_cert_sign() {
            return Err(format!("{CA_CERT}: key usage does not allow keyCertSign"));
        }
    }
    let (from, until) = (
        ca.validity().not_before.to_datetime(),
        ca.validity().not_after.to_datetime(),
    );
    if now < from {
        return Err(format!("{CA_CERT}: not valid before {}", fmt_time(from)));
    }
    if now >= until {
        return Err(format!("{CA_CERT}: expired at {}", fmt_time(until)));
    }
    let key = KeyPair::from_pem(&key_pem).map_err(|e| {
        format!("{CA_KEY}: not a usable private key ({e}); PKCS#8 (BEGIN PRIVATE KEY) is read: convert with `openssl pkcs8 -topk8 -nocrypt`")
    })?;
    if key.public_key_der() != ca.public_key().raw {
        return Err(format!(
            "{CA_KEY}: does not belong to {CA_CERT} (public keys differ)"
        ));
    }

    // The roots of trust: every usable CA certificate of root-cert.pem (a rotation bundle holds
    // the old and the new root); unusable ones are left out, named in `dropped`.
    let mut roots: Vec<CertificateDer<'static>> = Vec::new();
    let mut dropped = Vec::new();
    for (i, der) in pem_certs(&root_text)
        .map_err(|e| format!("{ROOT_CERT}: {e}"))?
        .into_iter()
        .enumerate()
    {
        let n = i + 1;
        let (_, root) = x509_parser::parse_x509_certificate(der.as_ref())
            .map_err(|e| format!("{ROOT_CERT}: certificate {n}: not an X.509 certificate ({e})"))?;
        let subject = root.subject().to_string();
        if !root.is_ca() {
            dropped.push(format!("certificate {n} ({subject}): not a CA certificate"));
        } else if now >= root.validity().not_after.to_datetime() {
            dropped.push(format!(
                "certificate {n} ({subject}): expired at {}",
                fmt_time(root.validity().not_after.to_datetime())
            ));
        } else if !roots.contains(&der) {
            roots.push(der);
        }
    }
    if roots.is_empty() {
        return Err(format!(
            "{ROOT_CERT}: no usable root certificate ({})",
            if dropped.is_empty() {
                "none found".to_string()
            } else {
                dropped.join("; ")
            }
        ));
    }
    // Between the leaf and the root: ca-cert.pem (unless it is the root), then the chain
    // without duplicates and without the root.
    let mut between: Vec<CertificateDer<'static>> = Vec::new();
    let chain = if chain_text.trim().is_empty() {
        Vec::new()
    } else {
        pem_certs(&chain_text).map_err(|e| format!("{CERT_CHAIN}: {e}"))?
    };
    for c in std::iter::once(ca_der.clone()).chain(chain) {
        if !roots.contains(&c) && !between.contains(&c) {
            between.push(c);
        }
    }
    let intermediates = between.iter().map(pem_of).collect();
    let params = CertificateParams::from_ca_cert_der(&ca_der)
        .map_err(|e| format!("{CA_CERT}: rcgen cannot sign with it ({e})"))?;
    let issuer = params
        .self_signed(&key)
        .map_err(|e| format!("{CA_CERT}: rcgen cannot sign with it ({e})"))?;
    let mut authority = Authority {
        issuer,
        key,
        ca_not_after: until,
        intermediates,
        root_pem: roots.iter().map(pem_of).collect(),
        root_der: roots[0].clone(),
        roots: roots.len(),
        dropped,
        origin,
    };
    // The proof: a certificate it signs verifies against one of the roots as a workload's
    // would; that root is the anchor.
    let mut failures = Vec::new();
    for (i, root) in roots.iter().enumerate() {
        authority.root_der = root.clone();
        match crate::ca::sign::probe(&authority, now) {
            Ok(_) => return Ok(authority),
            Err(e) => failures.push(format!("root {}: {e}", i + 1)),
        }
    }
    Err(if roots.len() == 1 {
        format!(
            "{CA_CERT}: a test certificate it signed {}",
            failures.join("; ").trim_start_matches("root 1: ")
        )
    } else {
        format!(
            "{CA_CERT}: a test certificate it signed verifies against none of the {} roots of {ROOT_CERT} ({})",
            roots.len(),
            failures.join("; ")
        )
    })
}
