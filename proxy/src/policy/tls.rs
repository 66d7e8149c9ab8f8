//! TLS origination to an upstream (`trafficPolicy.tls.mode: SIMPLE`): the SNI to present and the
//! CA certificates to verify the server with (a PEM file, else the system roots).

use std::sync::Arc;

use pingora::utils::tls::{parse_x509, WrappedX509};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

use super::traffic::TlsMode;

/// How to originate TLS to a destination.
#[derive(Clone)]
pub struct Origination {
    /// `sni`; `None` = the request's host.
    pub sni: Option<String>,
    /// Verify with these CAs (`caCertificates`); `None` = the system roots.
    pub ca: Option<Arc<[WrappedX509]>>,
    /// `insecureSkipVerify: true`.
    pub insecure_skip_verify: bool,
}

impl std::fmt::Debug for Origination {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Origination")
            .field("sni", &self.sni)
            .field("ca_certificates", &self.ca.as_ref().map(|c| c.len()))
            .field("insecure_skip_verify", &self.insecure_skip_verify)
            .finish()
    }
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

/// The origination a `tls` setting asks for: `Ok(None)` for plain text.
pub fn origination(mode: &TlsMode) -> Result<Option<Origination>, String> {
    match mode {
        TlsMode::Disable => Ok(None),
        TlsMode::Unsupported(m) => Err(format!(
            "tls.mode {m} is not supported by remora (no mesh certificates); use SIMPLE or DISABLE"
        )),
        TlsMode::Simple {
            ca_certificates,
            sni,
            insecure_skip_verify,
        } => Ok(Some(Origination {
            sni: sni.clone(),
            ca: match ca_certificates {
                Some(p) => Some(load_ca(p)?),
                None => None,
            },
            insecure_skip_verify: *insecure_skip_verify,
        })),
    }
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
        let o = origination(&TlsMode::Simple {
            ca_certificates: Some(g.to_string()),
            sni: Some("api.test".into()),
            insecure_skip_verify: false,
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
        assert!(origination(&TlsMode::Disable).unwrap().is_none());
        assert!(origination(&TlsMode::Unsupported("ISTIO_MUTUAL".into()))
            .unwrap_err()
            .starts_with("tls.mode ISTIO_MUTUAL is not supported"));
    }
}
