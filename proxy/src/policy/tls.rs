//! TLS origination to an upstream (`trafficPolicy.tls.mode: SIMPLE` and `MUTUAL`): the SNI to
//! present, the CA certificates to verify the server with (a PEM file, else the system roots),
//! the client certificate and key (`MUTUAL`), and the `subjectAltNames` the server certificate
//! must carry. `ISTIO_MUTUAL` is not origination: it is the mesh's own mTLS (`crate::mtls`).

use std::sync::Arc;

use pingora::utils::tls::{parse_x509, CertKey, WrappedX509};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use super::traffic::{TlsKind, TlsSettings};

/// How to originate TLS to a destination.
#[derive(Clone)]
pub struct Origination {
    /// `sni`; `None` = the request's host.
    pub sni: Option<String>,
    /// Verify with these CAs (`caCertificates`); `None` = the system roots.
    pub ca: Option<Arc<[WrappedX509]>>,
    /// `insecureSkipVerify: true`.
    pub insecure_skip_verify: bool,
    /// `MUTUAL`: the client certificate chain and key to present.
    pub client: Option<Arc<CertKey>>,
    /// `subjectAltNames` (empty: the server certificate must match the SNI instead).
    pub subject_alt_names: Vec<String>,
    /// With `subjectAltNames` (and verification on): remora's verifier and the server
    /// certificates it accepted; pingora then skips its SNI check and each new connection's
    /// certificate must be one of these (`upstream::mtls`). Built when the destination is first
    /// used.
    pub san_check: Option<Arc<crate::upstream::mtls::SanTls>>,
}

impl std::fmt::Debug for Origination {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Origination")
            .field("sni", &self.sni)
            .field("ca_certificates", &self.ca.as_ref().map(|c| c.len()))
            .field("insecure_skip_verify", &self.insecure_skip_verify)
            .field("client_certificate", &self.client.is_some())
            .field("subject_alt_names", &self.subject_alt_names)
            .finish()
    }
}

fn wrap_x509(der: Vec<u8>) -> Option<WrappedX509> {
    // pingora's wrapper parses again and panics on failure: turn that into an error.
    std::panic::catch_unwind(move || WrappedX509::new(der, parse_x509)).ok()
}

/// Read a PEM file of CA certificates; each must parse as an X.509 trust anchor.
pub fn load_ca(path: &str) -> Result<Arc<[WrappedX509]>, String> {
    let iter = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("caCertificates {path:?}: cannot read: {e}"))?;
    let mut out = Vec::new();
    for (i, c) in iter.enumerate() {
        let der = c.map_err(|e| format!("caCertificates {path:?}: certificate {}: {e}", i + 1))?;
        let mut store = rustls::RootCertStore::empty();
        store.add(der.clone()).map_err(|e| {
            format!(
                "caCertificates {path:?}: certificate {} is not a valid CA certificate: {e}",
                i + 1
            )
        })?;
        let raw = der.as_ref().to_vec();
        // pingora's wrapper parses again and panics on failure; webpki accepted the
        // certificate above, and a parser disagreement is turned into an error here.
        let w =
            std::panic::catch_unwind(move || WrappedX509::new(raw, parse_x509)).map_err(|_| {
                format!(
                    "caCertificates {path:?}: certificate {} could not be parsed",
                    i + 1
                )
            })?;
        out.push(w);
    }
    if out.is_empty() {
        return Err(format!("caCertificates {path:?}: no PEM certificate found"));
    }
    Ok(out.into())
}

/// Read a PEM file of certificates (`clientCertificate`): the leaf first, then intermediates.
fn load_cert_chain(path: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let iter = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("clientCertificate {path:?}: cannot read: {e}"))?;
    let mut out = Vec::new();
    for (i, c) in iter.enumerate() {
        let der =
            c.map_err(|e| format!("clientCertificate {path:?}: certificate {}: {e}", i + 1))?;
        if wrap_x509(der.as_ref().to_vec()).is_none() {
            return Err(format!(
                "clientCertificate {path:?}: certificate {} could not be parsed",
                i + 1
            ));
        }
        out.push(der);
    }
    if out.is_empty() {
        return Err(format!(
            "clientCertificate {path:?}: no PEM certificate found"
        ));
    }
    Ok(out)
}

/// Read `MUTUAL`'s client certificate chain and private key, and check they belong together.
pub fn load_client(cert: &str, key: &str) -> Result<Arc<CertKey>, String> {
    let certs = load_cert_chain(cert)?;
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => {
            format!("privateKey {key:?}: no PEM private key found")
        }
        e => format!("privateKey {key:?}: cannot read: {e}"),
    })?;
    let provider = rustls::crypto::ring::default_provider();
    let signing = provider
        .key_provider
        .load_private_key(key_der.clone_key())
        .map_err(|e| format!("privateKey {key:?}: not a usable key: {e}"))?;
    let ck = rustls::sign::CertifiedKey::new(certs.clone(), signing);
    match ck.keys_match() {
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
        Err(e) => {
            return Err(format!(
                "privateKey {key:?} does not belong to clientCertificate {cert:?}: {e}"
            ))
        }
    }
    let raw_key = key_der.secret_der().to_vec();
    // pingora converts the key back with this very conversion (and panics if it fails).
    if PrivateKeyDer::try_from(raw_key.clone()).is_err() {
        return Err(format!("privateKey {key:?}: unrecognised key encoding"));
    }
    let chain: Vec<Vec<u8>> = certs.iter().map(|c| c.as_ref().to_vec()).collect();
    std::panic::catch_unwind(move || CertKey::new(chain, raw_key))
        .map(Arc::new)
        .map_err(|_| format!("clientCertificate {cert:?}: could not be parsed"))
}

/// The origination a `tls` setting asks for: `Ok(None)` for none (`DISABLE`, and
/// `ISTIO_MUTUAL`, which `crate::mtls` does with the workload certificate).
/// `Err` = the destination cannot be reached safely: its requests fail with 503 `UF`.
pub fn origination(t: &TlsSettings) -> Result<Option<Origination>, String> {
    match t.mode {
        TlsKind::Disable | TlsKind::IstioMutual => return Ok(None),
        TlsKind::Simple | TlsKind::Mutual => {}
    }
    let client = if t.mode == TlsKind::Mutual {
        match (&t.client_certificate, &t.private_key) {
            (Some(c), Some(k)) => Some(load_client(c, k)?),
            _ => {
                return Err(match &t.credential_name {
                    Some(n) => format!(
                        "tls.credentialName {n:?}: remora does not read Kubernetes Secrets (no SDS); set clientCertificate and privateKey (PEM file paths)"
                    ),
                    None => "tls.mode MUTUAL needs clientCertificate and privateKey".to_string(),
                })
            }
        }
    } else {
        None
    };
    let ca = match &t.ca_certificates {
        Some(p) => Some(load_ca(p)?),
        None => None,
    };
    let mut o = Origination {
        sni: t.sni.clone(),
        ca,
        insecure_skip_verify: t.insecure_skip_verify,
        client,
        subject_alt_names: t.subject_alt_names.clone(),
        san_check: None,
    };
    if !o.insecure_skip_verify && !o.subject_alt_names.is_empty() {
        o.san_check = Some(Arc::new(crate::upstream::mtls::SanTls::new(t)?));
    }
    Ok(Some(o))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ca_files_load_and_bad_ones_are_explained() {
        let dir = tempfile::tempdir().unwrap();
        let ca = rcgen::generate_simple_self_signed(vec!["ca.test".into()]).unwrap();
        let good = dir.path().join("ca.pem");
        std::fs::write(&good, ca.cert.pem()).unwrap();
        let g = good.to_str().unwrap();
        assert_eq!(load_ca(g).unwrap().len(), 1);
        let o = origination(&TlsSettings {
            mode: TlsKind::Simple,
            ca_certificates: Some(g.to_string()),
            sni: Some("api.test".into()),
            ..Default::default()
        })
        .unwrap()
        .unwrap();
        assert_eq!(o.sni.as_deref(), Some("api.test"));
        assert!(o.ca.is_some());

        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let e = empty.to_str().unwrap();
        assert_eq!(
            load_ca(e).unwrap_err(),
            format!("caCertificates {e:?}: no PEM certificate found")
        );
        let missing = dir.path().join("missing.pem");
        assert!(load_ca(missing.to_str().unwrap())
            .unwrap_err()
            .contains("cannot read"));
        assert!(origination(&TlsSettings::default()).unwrap().is_none());
        // ISTIO_MUTUAL: no origination here (the mesh mTLS of `crate::mtls`).
        let istio = TlsSettings {
            mode: TlsKind::IstioMutual,
            ..Default::default()
        };
        assert!(origination(&istio).unwrap().is_none());
    }

    #[test]
    fn client_certificates_load_and_bad_ones_are_explained() {
        let dir = tempfile::tempdir().unwrap();
        let w = |n: &str, t: &str| {
            let p = dir.path().join(n);
            std::fs::write(&p, t).unwrap();
            p.to_str().unwrap().to_string()
        };
        let k = rcgen::KeyPair::generate().unwrap();
        let c = rcgen::CertificateParams::new(vec!["client.test".to_string()])
            .unwrap()
            .self_signed(&k)
            .unwrap();
        let cert = w("c.pem", &c.pem());
        let key = w("k.pem", &k.serialize_pem());
        let other = w(
            "o.pem",
            &rcgen::KeyPair::generate().unwrap().serialize_pem(),
        );
        let ck = load_client(&cert, &key).unwrap();
        assert_eq!(ck.intermediates().len(), 0);
        let mutual = |cert: &str, key: &str| TlsSettings {
            mode: TlsKind::Mutual,
            client_certificate: Some(cert.into()),
            private_key: Some(key.into()),
            ..Default::default()
        };
        let o = origination(&mutual(&cert, &key)).unwrap().unwrap();
        assert!(o.client.is_some() && o.san_check.is_none());
        let e = origination(&mutual(&cert, &other)).unwrap_err();
        assert!(
            e.starts_with(&format!(
                "privateKey {other:?} does not belong to clientCertificate {cert:?}"
            )),
            "{e}"
        );
        let e = load_client(&cert, &w("bad.pem", "nothing here\n")).unwrap_err();
        assert!(e.contains("no PEM private key found"), "{e}");
        let e = load_client(&key, &key).unwrap_err();
        assert!(
            e.contains("clientCertificate") && e.contains("no PEM certificate"),
            "{e}"
        );
        let missing = dir.path().join("none.pem");
        let e = load_client(&cert, missing.to_str().unwrap()).unwrap_err();
        assert!(
            e.starts_with("privateKey") && e.contains("cannot read"),
            "{e}"
        );
        let e = origination(&TlsSettings {
            mode: TlsKind::Mutual,
            credential_name: Some("client-secret".into()),
            ..Default::default()
        })
        .unwrap_err();
        assert!(
            e.starts_with(
                "tls.credentialName \"client-secret\": remora does not read Kubernetes Secrets"
            ),
            "{e}"
        );
        // subjectAltNames: remora runs the handshake (unless verification is skipped).
        let mut san = mutual(&cert, &key);
        san.subject_alt_names = vec!["spiffe://td/ns/a/sa/b".into()];
        san.ca_certificates = Some(cert.clone());
        assert!(origination(&san).unwrap().unwrap().san_check.is_some());
        san.insecure_skip_verify = true;
        assert!(origination(&san).unwrap().unwrap().san_check.is_none());
    }
}
