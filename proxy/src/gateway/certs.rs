//! The TLS settings of a gateway's servers: certificates read from files (a Secret mounted
//! under `--gateway-credentials-dir/<credentialName>/`, or a server's `serverCertificate`,
//! `privateKey` and `caCertificates` paths), the protocol versions, and for `MUTUAL` the roots
//! client certificates must chain to. One rustls configuration per server; the connection's
//! SNI picks the server (`remora_model::gateway::server_for`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use remora_model::gateway::{ServerTls, TlsMode};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;

/// The two Secret layouts Istio reads: `kubernetes.io/tls` (`tls.crt`, `tls.key`, `ca.crt`)
/// and the generic one (`cert`, `key`, `cacert`).
const LAYOUTS: [(&str, &str, &str); 2] =
    [("tls.crt", "tls.key", "ca.crt"), ("cert", "key", "cacert")];

/// Where a server's certificate, key and (for MUTUAL) client roots are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: Option<PathBuf>,
}

/// Does the server check client certificates?
fn mutual(tls: &ServerTls) -> bool {
    matches!(tls.mode, Some(TlsMode::Mutual | TlsMode::OptionalMutual))
}

/// Every file a server's settings may come from (present or not): a change to any of them
/// (a Secret mounted, rotated or removed) makes the gateway read them again.
pub fn watched(dir: &Path, tls: &ServerTls) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Some(name) = &tls.credential_name {
        for secret in [dir.join(name), dir.join(format!("{name}-cacert"))] {
            for (c, k, ca) in LAYOUTS {
                out.extend([secret.join(c), secret.join(k), secret.join(ca)]);
            }
        }
    }
    for p in [
        &tls.server_certificate,
        &tls.private_key,
        &tls.ca_certificates,
    ]
    .into_iter()
    .flatten()
    {
        out.push(PathBuf::from(p));
    }
    out
}

/// Whether the `credentialName` Secret of `tls` is absent as a whole (its directory gone: a
/// deleted Secret), as opposed to caught in the middle of an update.
pub fn secret_gone(dir: &Path, tls: &ServerTls) -> bool {
    tls.credential_name
        .as_ref()
        .is_some_and(|n| !dir.join(n).exists())
}

/// Where a server's certificate, key and client roots are, or why they cannot be found.
pub fn files_for(dir: &Path, tls: &ServerTls) -> Result<TlsFiles, String> {
    let Some(name) = &tls.credential_name else {
        return match (&tls.server_certificate, &tls.private_key) {
            (Some(c), Some(k)) => Ok(TlsFiles {
                cert: PathBuf::from(c),
                key: PathBuf::from(k),
                ca: tls.ca_certificates.as_ref().map(PathBuf::from),
            }),
            _ => Err("neither credentialName nor serverCertificate and privateKey".to_string()),
        };
    };
    if name.contains('/') || name.starts_with('.') {
        return Err(format!(
            "credentialName {name:?}: not a Secret name (a Secret of the gateway's namespace is named without '/')"
        ));
    }
    let secret = dir.join(name);
    let Some((cert, key, ca)) = LAYOUTS
        .iter()
        .map(|(c, k, ca)| (secret.join(c), secret.join(k), secret.join(ca)))
        .find(|(c, k, _)| c.exists() && k.exists())
    else {
        return Err(format!(
            "credentialName {name:?}: no tls.crt and tls.key (or cert and key) in {} (no such Secret in the gateway's namespace, or not mounted there)",
            secret.display()
        ));
    };
    let mut files = TlsFiles {
        cert,
        key,
        ca: None,
    };
    if mutual(tls) {
        // Istio: the roots in the same Secret, else in the Secret `<name>-cacert`.
        let other = dir.join(format!("{name}-cacert"));
        files.ca = std::iter::once(ca)
            .chain(LAYOUTS.iter().map(|(_, _, ca)| other.join(ca)))
            .find(|p| p.exists());
        if files.ca.is_none() {
            return Err(format!(
                "credentialName {name:?}: {} needs client roots: no ca.crt (or cacert) in {} nor in {}",
                tls.mode.map_or("", TlsMode::as_str),
                secret.display(),
                other.display()
            ));
        }
    }
    Ok(files)
}

/// Read a certificate chain and its private key (PEM) and check that they belong together.
pub fn load(cert: &Path, key: &Path) -> Result<Arc<CertifiedKey>, String> {
    let chain = certificates(cert)?;
    let der = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| format!("{}: no PEM private key: {e}", key.display()))?;
    let provider = rustls::crypto::ring::default_provider();
    CertifiedKey::from_der(chain, der, &provider)
        .map(Arc::new)
        .map_err(|e| {
            format!(
                "{} and {}: unusable certificate and key: {e}",
                cert.display(),
                key.display()
            )
        })
}

fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("{}: {e}", path.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: not PEM certificates: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no PEM certificate in it", path.display()));
    }
    Ok(certs)
}

/// The public facts of the leaf certificate in `files.cert` (for `/config_dump`); `None` when
/// it cannot be read or parsed (the configuration built from it says why).
pub fn served_certificate(files: &TlsFiles) -> Option<remora_model::dump::ServedCertificateDump> {
    let der = certificates(&files.cert).ok()?.into_iter().next()?;
    let (_, c) = x509_parser::parse_x509_certificate(der.as_ref()).ok()?;
    let mut dns_names = Vec::new();
    if let Ok(Some(ext)) = c.subject_alternative_name() {
        for n in &ext.value.general_names {
            if let x509_parser::extensions::GeneralName::DNSName(d) = n {
                dns_names.push(d.to_string());
            }
        }
    }
    Some(remora_model::dump::ServedCertificateDump {
        subject: c.subject().to_string(),
        dns_names,
        serial: c.raw_serial_as_string().replace(':', ""),
        not_after: u64::try_from(c.validity().not_after.timestamp()).unwrap_or(0),
    })
}

/// The TLS versions of `minProtocolVersion`/`maxProtocolVersion` (rustls has TLS 1.2 and 1.3;
/// an older minimum means 1.2).
pub fn versions(tls: &ServerTls) -> Result<Vec<&'static rustls::SupportedProtocolVersion>, String> {
    let min13 = tls.min_protocol_version.as_deref() == Some("TLSV1_3");
    let max = tls.max_protocol_version.as_deref();
    if matches!(max, Some("TLSV1_0" | "TLSV1_1")) {
        return Err(format!(
            "maxProtocolVersion {}: only TLS 1.2 and 1.3 are served",
            max.unwrap_or_default()
        ));
    }
    let max12 = max == Some("TLSV1_2");
    match (min13, max12) {
        (true, true) => {
            Err("minProtocolVersion TLSV1_3 is above maxProtocolVersion TLSV1_2".to_string())
        }
        (true, false) => Ok(vec![&rustls::version::TLS13]),
        (false, true) => Ok(vec![&rustls::version::TLS12]),
        (false, false) => Ok(vec![&rustls::version::TLS13, &rustls::version::TLS12]),
    }
}

/// The cryptography of one server: ring's, with `cipherSuites` (Envoy's names) as its TLS 1.2
/// suites in that order when given (TLS 1.3's suites stay, as in Envoy). Err names the entry
/// (`tls.cipherSuites[j]`) and why it cannot be offered.
pub fn provider(tls: &ServerTls) -> Result<rustls::crypto::CryptoProvider, String> {
    use remora_model::cipher_suites::{check, Tls12Suite};
    use rustls::crypto::ring::cipher_suite as cs;
    let mut p = rustls::crypto::ring::default_provider();
    if tls.cipher_suites.is_empty() {
        return Ok(p);
    }
    let tls12 = check(&tls.cipher_suites, "tls")?;
    let mut suites: Vec<rustls::SupportedCipherSuite> = p
        .cipher_suites
        .iter()
        .filter(|s| s.version() == &rustls::version::TLS13)
        .copied()
        .collect();
    suites.extend(tls12.iter().map(|s| match s {
        Tls12Suite::EcdheEcdsaAes128GcmSha256 => cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        Tls12Suite::EcdheRsaAes128GcmSha256 => cs::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
        Tls12Suite::EcdheEcdsaAes256GcmSha384 => cs::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
        Tls12Suite::EcdheRsaAes256GcmSha384 => cs::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
        Tls12Suite::EcdheEcdsaChacha20Poly1305 => cs::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
        Tls12Suite::EcdheRsaChacha20Poly1305 => cs::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
    }));
    p.cipher_suites = suites;
    Ok(p)
}

/// The rustls configuration of one server: its certificate, its versions and cipher suites
/// ([`provider`]), client certificates
/// for MUTUAL (required) and OPTIONAL_MUTUAL (checked when sent), ALPN h2 and http/1.1.
pub fn server_config(
    tls: &ServerTls,
    files: &TlsFiles,
) -> Result<Arc<rustls::ServerConfig>, String> {
    let provider = Arc::new(provider(tls)?);
    let key = load(&files.cert, &files.key)?;
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&versions(tls)?)
        .map_err(|e| format!("TLS settings: {e}"))?;
    let builder = match (&files.ca, mutual(tls)) {
        (Some(ca), true) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in certificates(ca)? {
                roots
                    .add(c)
                    .map_err(|e| format!("{}: not a CA certificate: {e}", ca.display()))?;
            }
            let v = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            );
            let v = if tls.mode == Some(TlsMode::OptionalMutual) {
                v.allow_unauthenticated()
            } else {
                v
            };
            let v = v
                .build()
                .map_err(|e| format!("{}: client roots: {e}", ca.display()))?;
            builder.with_client_cert_verifier(v)
        }
        (None, true) => return Err("MUTUAL without client roots (caCertificates)".to_string()),
        _ => builder.with_no_client_auth(),
    };
    let mut cfg = builder.with_cert_resolver(Arc::new(rustls::sign::SingleCertAndKey::from(key)));
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pem_pair(name: &str) -> (String, String) {
        let c = rcgen::generate_simple_self_signed(vec![name.to_string()]).unwrap();
        (c.cert.pem(), c.key_pair.serialize_pem())
    }

    fn tls(name: &str, mode: TlsMode) -> ServerTls {
        ServerTls {
            credential_name: Some(name.to_string()),
            mode: Some(mode),
            ..Default::default()
        }
    }

    #[test]
    fn both_secret_layouts_client_roots_and_clear_errors() {
        let d = tempfile::tempdir().unwrap();
        let (cert, key) = pem_pair("a.example.com");
        let (ca, _) = pem_pair("ca.example.com");
        let write = |dir: &str, files: &[(&str, &str)]| {
            std::fs::create_dir_all(d.path().join(dir)).unwrap();
            for (f, text) in files {
                std::fs::write(d.path().join(dir).join(f), text).unwrap();
            }
        };
        write(
            "kube",
            &[("tls.crt", &cert), ("tls.key", &key), ("ca.crt", &ca)],
        );
        write("istio", &[("cert", &cert), ("key", &key)]);
        write("istio-cacert", &[("cacert", &ca)]);
        for name in ["kube", "istio"] {
            for mode in [TlsMode::Simple, TlsMode::Mutual, TlsMode::OptionalMutual] {
                let t = tls(name, mode);
                let f = files_for(d.path(), &t).unwrap();
                assert_eq!(f.ca.is_some(), mode != TlsMode::Simple, "{name} {mode:?}");
                assert!(server_config(&t, &f).is_ok(), "{name} {mode:?}");
            }
        }
        assert_eq!(
            files_for(d.path(), &tls("istio", TlsMode::Mutual))
                .unwrap()
                .ca,
            Some(d.path().join("istio-cacert/cacert"))
        );
        write("noca", &[("tls.crt", &cert), ("tls.key", &key)]);
        let e = files_for(d.path(), &tls("noca", TlsMode::Mutual)).unwrap_err();
        assert!(
            e.contains("MUTUAL needs client roots: no ca.crt (or cacert)"),
            "{e}"
        );
        let e = files_for(d.path(), &tls("missing", TlsMode::Simple)).unwrap_err();
        assert!(
            e.starts_with("credentialName \"missing\": no tls.crt and tls.key"),
            "{e}"
        );
        assert!(files_for(d.path(), &tls("../etc", TlsMode::Simple)).is_err());
        assert!(watched(d.path(), &tls("kube", TlsMode::Simple))
            .contains(&d.path().join("kube/tls.crt")));
        // A key of another certificate; junk.
        let (_, other_key) = pem_pair("b.example.com");
        std::fs::write(d.path().join("kube/tls.key"), other_key).unwrap();
        let f = files_for(d.path(), &tls("kube", TlsMode::Simple)).unwrap();
        let e = load(&f.cert, &f.key).unwrap_err();
        assert!(e.contains("unusable certificate and key"), "{e}");
        std::fs::write(d.path().join("kube/tls.crt"), "junk").unwrap();
        let e = load(&f.cert, &f.key).unwrap_err();
        assert!(e.contains("no PEM certificate"), "{e}");
    }

    #[test]
    fn cipher_suites_configure_tls12_only() {
        use rustls::CipherSuite::*;
        let p = |names: &[&str]| {
            let t = ServerTls {
                cipher_suites: names.iter().map(|s| s.to_string()).collect(),
                ..Default::default()
            };
            provider(&t).map(|p| {
                p.cipher_suites
                    .iter()
                    .map(|s| s.suite())
                    .collect::<Vec<_>>()
            })
        };
        let tls13 = [
            TLS13_AES_256_GCM_SHA384,
            TLS13_AES_128_GCM_SHA256,
            TLS13_CHACHA20_POLY1305_SHA256,
        ];
        let got = p(&[
            "ECDHE-RSA-CHACHA20-POLY1305",
            "ECDHE-ECDSA-AES128-GCM-SHA256",
        ])
        .unwrap();
        assert_eq!(got[..3], tls13);
        assert_eq!(
            got[3..],
            [
                TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
                TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
            ]
        );
        // Not listed: ring's defaults (TLS 1.3 and 1.2).
        assert_eq!(p(&[]).unwrap().len(), 9);
        // What /config_dump shows of the certificate served.
        let dir = tempfile::tempdir().unwrap();
        let (crt, _) = pem_pair("shop.example.com");
        std::fs::write(dir.path().join("tls.crt"), &crt).unwrap();
        let files = TlsFiles {
            cert: dir.path().join("tls.crt"),
            key: dir.path().join("tls.key"),
            ca: None,
        };
        let c = served_certificate(&files).unwrap();
        assert_eq!(c.dns_names, ["shop.example.com"]);
        assert!(
            c.subject.contains("CN=rcgen self signed cert"),
            "{}",
            c.subject
        );
        assert!(!c.serial.is_empty() && c.not_after > 1_700_000_000, "{c:?}");
        let e = p(&["ECDHE-RSA-AES128-GCM-SHA256", "AES256-SHA"]).unwrap_err();
        assert!(
            e.starts_with("tls.cipherSuites[1]: \"AES256-SHA\" is not supported"),
            "{e}"
        );
    }

    #[test]
    fn protocol_versions() {
        let v = |min: Option<&str>, max: Option<&str>| {
            let t = ServerTls {
                min_protocol_version: min.map(str::to_string),
                max_protocol_version: max.map(str::to_string),
                ..Default::default()
            };
            versions(&t).map(|v| v.iter().map(|v| v.version).collect::<Vec<_>>())
        };
        use rustls::ProtocolVersion::{TLSv1_2, TLSv1_3};
        assert_eq!(v(None, None), Ok(vec![TLSv1_3, TLSv1_2]));
        assert_eq!(
            v(Some("TLSV1_0"), Some("TLS_AUTO")),
            Ok(vec![TLSv1_3, TLSv1_2])
        );
        assert_eq!(v(Some("TLSV1_3"), None), Ok(vec![TLSv1_3]));
        assert_eq!(v(None, Some("TLSV1_2")), Ok(vec![TLSv1_2]));
        assert!(v(Some("TLSV1_3"), Some("TLSV1_2")).is_err());
        assert!(v(None, Some("TLSV1_1"))
            .unwrap_err()
            .contains("only TLS 1.2 and 1.3"));
    }
}
