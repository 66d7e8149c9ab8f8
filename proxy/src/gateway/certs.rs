//! The certificates of a gateway's TLS servers: read from files (a Secret mounted under
//! `--gateway-credentials-dir/<credentialName>/`, or a server's `serverCertificate` and
//! `privateKey` paths), and chosen per connection by the ClientHello's SNI.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use remora_model::gateway::{server_for, Listener, ServerTls};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// The two Secret layouts Istio reads: `kubernetes.io/tls` (`tls.crt`, `tls.key`) and the
/// generic one (`cert`, `key`).
const LAYOUTS: [(&str, &str); 2] = [("tls.crt", "tls.key"), ("cert", "key")];

/// Where a server's certificate and key are.
pub fn files_for(dir: &Path, tls: &ServerTls) -> Result<(PathBuf, PathBuf), String> {
    if let Some(name) = &tls.credential_name {
        if name.contains('/') || name.starts_with('.') {
            return Err(format!(
                "credentialName {name:?}: not a Secret name (a Secret of the gateway's namespace is named without '/')"
            ));
        }
        let secret = dir.join(name);
        for (c, k) in LAYOUTS {
            let (c, k) = (secret.join(c), secret.join(k));
            if c.exists() && k.exists() {
                return Ok((c, k));
            }
        }
        return Err(format!(
            "credentialName {name:?}: no tls.crt and tls.key (or cert and key) in {} (mount the Secret there; Secrets are not read through the API yet)",
            secret.display()
        ));
    }
    match (&tls.server_certificate, &tls.private_key) {
        (Some(c), Some(k)) => Ok((PathBuf::from(c), PathBuf::from(k))),
        _ => Err("neither credentialName nor serverCertificate and privateKey".to_string()),
    }
}

/// Read a certificate chain and its private key (PEM) and check that they belong together.
pub fn load(cert: &Path, key: &Path) -> Result<Arc<CertifiedKey>, String> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| format!("{}: {e}", cert.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: not PEM certificates: {e}", cert.display()))?;
    if chain.is_empty() {
        return Err(format!("{}: no PEM certificate in it", cert.display()));
    }
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

/// The certificate of one TLS listener's servers, by SNI (Istio's per-server certificates).
#[derive(Debug)]
pub struct SniResolver {
    pub listener: Listener,
    /// One per `listener.servers` entry; `None`: that server's certificate could not be read
    /// (the handshake for its hosts fails).
    pub keys: Vec<Option<Arc<CertifiedKey>>>,
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let chosen = server_for(&self.listener, hello.server_name())?;
        let i = self
            .listener
            .servers
            .iter()
            .position(|b| std::ptr::eq(b, chosen))?;
        self.keys.get(i).cloned().flatten()
    }
}

/// A TLS server configuration for a listener: certificates by SNI, ALPN h2 and http/1.1.
pub fn server_config(resolver: SniResolver) -> Result<Arc<rustls::ServerConfig>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS settings: {e}"))?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(resolver));
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

    #[test]
    fn both_secret_layouts_and_clear_errors() {
        let d = tempfile::tempdir().unwrap();
        let (cert, key) = pem_pair("a.example.com");
        std::fs::create_dir(d.path().join("kube")).unwrap();
        std::fs::write(d.path().join("kube/tls.crt"), &cert).unwrap();
        std::fs::write(d.path().join("kube/tls.key"), &key).unwrap();
        std::fs::create_dir(d.path().join("istio")).unwrap();
        std::fs::write(d.path().join("istio/cert"), &cert).unwrap();
        std::fs::write(d.path().join("istio/key"), &key).unwrap();
        let tls = |name: &str| ServerTls {
            credential_name: Some(name.to_string()),
            ..Default::default()
        };
        for name in ["kube", "istio"] {
            let (c, k) = files_for(d.path(), &tls(name)).unwrap();
            assert!(load(&c, &k).is_ok(), "{name}");
        }
        let e = files_for(d.path(), &tls("missing")).unwrap_err();
        assert!(
            e.starts_with("credentialName \"missing\": no tls.crt and tls.key"),
            "{e}"
        );
        assert!(files_for(d.path(), &tls("../etc")).is_err());
        // A key of another certificate.
        let (_, other_key) = pem_pair("b.example.com");
        std::fs::write(d.path().join("kube/tls.key"), other_key).unwrap();
        let (c, k) = files_for(d.path(), &tls("kube")).unwrap();
        let e = load(&c, &k).unwrap_err();
        assert!(e.contains("unusable certificate and key"), "{e}");
        std::fs::write(d.path().join("kube/tls.crt"), "junk").unwrap();
        let e = load(&c, &k).unwrap_err();
        assert!(e.contains("no PEM certificate"), "{e}");
    }
}
