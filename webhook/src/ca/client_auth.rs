//! Optional client certificates on the CA's listener: a caller may present its workload
//! certificate; the chain is verified against the mesh roots in use (they follow a root
//! rotation), and the SPIFFE id of a verified leaf is handed to the methods as a request
//! extension ([`PeerIdentity`]); discovery authenticates subscribers with it. A caller without
//! a certificate is served as before (the token); one whose chain does not verify fails the
//! handshake.

use std::sync::{Arc, Mutex};

use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};

/// The SPIFFE id of the verified client certificate of the connection a request came on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerIdentity(pub String);

/// The `spiffe://` URI SAN of a certificate, when it has exactly one.
pub fn spiffe_of(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let san = cert.subject_alternative_name().ok()??;
    let mut ids = san.value.general_names.iter().filter_map(|n| match n {
        x509_parser::extensions::GeneralName::URI(u) if u.starts_with("spiffe://") => {
            Some(u.to_string())
        }
        _ => None,
    });
    let first = ids.next()?;
    ids.next().is_none().then_some(first)
}

/// Verifies client certificates against the current mesh roots, optionally.
pub struct MeshClientVerifier {
    current: super::Current,
    provider: Arc<rustls::crypto::CryptoProvider>,
    /// The verifier of the roots last seen (their PEM), rebuilt when they change.
    built: Mutex<Option<(String, Arc<dyn ClientCertVerifier>)>>,
}

impl std::fmt::Debug for MeshClientVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MeshClientVerifier")
    }
}

impl MeshClientVerifier {
    pub fn new(current: super::Current) -> MeshClientVerifier {
        MeshClientVerifier {
            current,
            provider: Arc::new(rustls::crypto::ring::default_provider()),
            built: Mutex::new(None),
        }
    }

    fn inner(&self) -> Result<Arc<dyn ClientCertVerifier>, rustls::Error> {
        let roots_pem = self.current.get().root_pem.clone();
        let mut b = self.built.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((pem, v)) = b.as_ref() {
            if *pem == roots_pem {
                return Ok(v.clone());
            }
        }
        let mut roots = RootCertStore::empty();
        for c in super::authority::certs_of(&roots_pem) {
            roots.add(c)?;
        }
        let v = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
            .allow_unauthenticated()
            .build()
            .map_err(|e| rustls::Error::General(format!("mesh roots: {e}")))?;
        *b = Some((roots_pem, v.clone()));
        Ok(v)
    }
}

impl ClientCertVerifier for MeshClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.inner()?
            .verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(sans: &[&str]) -> Vec<u8> {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::default();
        p.subject_alt_names = sans
            .iter()
            .map(|s| match s.strip_prefix("dns:") {
                Some(d) => rcgen::SanType::DnsName(d.to_string().try_into().unwrap()),
                None => rcgen::SanType::URI(s.to_string().try_into().unwrap()),
            })
            .collect();
        p.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn the_spiffe_id_of_a_certificate() {
        let id = "spiffe://cluster.local/ns/shop/sa/web";
        assert_eq!(spiffe_of(&cert(&[id, "dns:web.shop"])), Some(id.into()));
        assert_eq!(spiffe_of(&cert(&["dns:web.shop"])), None);
        assert_eq!(spiffe_of(&cert(&["https://example.com/x"])), None);
        assert_eq!(
            spiffe_of(&cert(&[id, "spiffe://cluster.local/ns/shop/sa/db"])),
            None,
            "two identities: none"
        );
        assert_eq!(spiffe_of(b"not a certificate"), None);
    }
}
