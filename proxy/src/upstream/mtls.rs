//! TLS origination that checks `subjectAltNames` (DestinationRule `tls`, modes SIMPLE and MUTUAL).
//!
//! pingora's rustls connector verifies the server certificate against the SNI only. For a
//! destination that lists `subjectAltNames`, pingora connects with the chain check alone (the
//! SNI check is off, as Istio replaces it by the SAN check), and each new connection is accepted
//! only if its leaf certificate (pingora's SHA-256 digest of it) is one that remora verified
//! itself: a check connection to the same endpoint with the same SNI, client certificate and CA,
//! whose rustls verifier checks the chain and then that the certificate carries one of the names.
//! Verified digests are remembered per destination, so the check costs one extra handshake per
//! server certificate, and connections are pooled by pingora as usual.

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use remora_model::policy::traffic::{TlsKind, TlsSettings};

/// Does one of the certificate's subject alternative names equal one of `wanted`? DNS names
/// compare case-insensitively and a certificate's `*.example.com` covers one label; URIs
/// (e.g. `spiffe://…`) compare exactly; IP addresses by value.
pub fn cert_has_san(cert_der: &[u8], wanted: &[String]) -> Result<bool, String> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der)
        .map_err(|e| format!("server certificate could not be parsed: {e}"))?;
    let Ok(Some(ext)) = cert.subject_alternative_name() else {
        return Ok(false);
    };
    use x509_parser::extensions::GeneralName;
    for name in &ext.value.general_names {
        for w in wanted {
            let hit = match name {
                GeneralName::DNSName(d) => dns_matches(d, w),
                GeneralName::URI(u) => *u == w.as_str(),
                GeneralName::IPAddress(b) => match w.parse::<IpAddr>() {
                    Ok(IpAddr::V4(a)) => *b == a.octets().as_slice(),
                    Ok(IpAddr::V6(a)) => *b == a.octets().as_slice(),
                    Err(_) => false,
                },
                _ => false,
            };
            if hit {
                return Ok(true);
            }
        }
    }
    Ok(false)
}

fn dns_matches(cert_name: &str, wanted: &str) -> bool {
    if cert_name.eq_ignore_ascii_case(wanted) {
        return true;
    }
    match cert_name.strip_prefix("*.") {
        Some(suffix) => match wanted.split_once('.') {
            Some((label, rest)) => !label.is_empty() && rest.eq_ignore_ascii_case(suffix),
            None => false,
        },
        None => false,
    }
}

/// Chain verification by webpki, then the `subjectAltNames` check in place of the SNI check.
#[derive(Debug)]
struct SanVerifier {
    inner: Arc<WebPkiServerVerifier>,
    names: Vec<String>,
}

impl ServerCertVerifier for SanVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // webpki checks the chain before the name: a name error means the chain is good.
        match self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            Ok(_)
            | Err(rustls::Error::InvalidCertificate(CertificateError::NotValidForName))
            | Err(rustls::Error::InvalidCertificate(CertificateError::NotValidForNameContext {
                ..
            })) => {}
            Err(e) => return Err(e),
        }
        match cert_has_san(end_entity.as_ref(), &self.names) {
            Ok(true) => Ok(ServerCertVerified::assertion()),
            Ok(false) => Err(rustls::Error::General(format!(
                "server certificate has none of subjectAltNames {:?}",
                self.names
            ))),
            Err(e) => Err(rustls::Error::General(e)),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// Remembered verified certificates per destination (a server normally has one or two).
const MAX_VERIFIED: usize = 16;

/// The rustls settings of one destination's `tls` (with `subjectAltNames`), and the digests of
/// the server certificates they accepted.
pub struct SanTls {
    config: Arc<ClientConfig>,
    verified: Mutex<VecDeque<Vec<u8>>>,
    /// Distinguishes this destination's settings in logs.
    pub id: u64,
}

impl std::fmt::Debug for SanTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SanTls").field("id", &self.id).finish()
    }
}

/// Accepts any server certificate (`insecureSkipVerify: true`, and HTTPS probes: the kubelet
/// does not verify probe targets either); signatures are still checked so the handshake itself
/// is sound.
#[derive(Debug)]
pub(crate) struct NoVerify(pub(crate) Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
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
            &self.0.signature_verification_algorithms,
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
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// rustls client settings for a DestinationRule `tls` (SIMPLE or MUTUAL): the CA file (or the
/// system roots), the client certificate and key for MUTUAL, and the server check: the chain,
/// then `subjectAltNames` when listed, else the SNI name; none with `insecureSkipVerify`.
/// TLS 1.2 and 1.3 only; `alpn` offered as given.
pub fn client_config(t: &TlsSettings, alpn: &[&[u8]]) -> Result<Arc<ClientConfig>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier: Arc<dyn ServerCertVerifier> = if t.insecure_skip_verify {
        Arc::new(NoVerify(provider.clone()))
    } else {
        let mut roots = RootCertStore::empty();
        match &t.ca_certificates {
            Some(p) => {
                let iter = CertificateDer::pem_file_iter(p)
                    .map_err(|e| format!("caCertificates {p:?}: cannot read: {e}"))?;
                for c in iter {
                    let c = c.map_err(|e| format!("caCertificates {p:?}: {e}"))?;
                    roots
                        .add(c)
                        .map_err(|e| format!("caCertificates {p:?}: {e}"))?;
                }
            }
            None => pingora::tls::load_platform_certs_incl_env_into_store(&mut roots)
                .map_err(|e| format!("system CA certificates: {e}"))?,
        }
        if roots.is_empty() {
            return Err("no CA certificate to verify the server with".to_string());
        }
        let inner = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .build()
            .map_err(|e| format!("server certificate verifier: {e}"))?;
        if t.subject_alt_names.is_empty() {
            inner
        } else {
            Arc::new(SanVerifier {
                inner,
                names: t.subject_alt_names.clone(),
            })
        }
    };
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS versions: {e}"))?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut config = match (t.mode, &t.client_certificate, &t.private_key) {
        (TlsKind::Mutual, Some(cert), Some(key)) => {
            let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
                .map_err(|e| format!("clientCertificate {cert:?}: cannot read: {e}"))?
                .collect::<Result<_, _>>()
                .map_err(|e| format!("clientCertificate {cert:?}: {e}"))?;
            let k = PrivateKeyDer::from_pem_file(key)
                .map_err(|e| format!("privateKey {key:?}: cannot read: {e}"))?;
            builder
                .with_client_auth_cert(chain, k)
                .map_err(|e| format!("privateKey {key:?} / clientCertificate {cert:?}: {e}"))?
        }
        (TlsKind::Mutual, _, _) => {
            return Err("tls.mode MUTUAL needs clientCertificate and privateKey".to_string())
        }
        _ => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

impl SanTls {
    /// Read the CA, client certificate and key files of `t` and build the client settings.
    pub fn new(t: &TlsSettings) -> Result<Self, String> {
        let t = TlsSettings {
            insecure_skip_verify: false,
            ..t.clone()
        };
        Ok(SanTls {
            config: client_config(&t, &[b"http/1.1"])?,
            verified: Mutex::new(VecDeque::new()),
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
        })
    }

    fn knows(&self, digest: &[u8]) -> bool {
        self.verified
            .lock()
            .map(|v| v.iter().any(|d| d.as_slice() == digest))
            .unwrap_or(false)
    }

    fn remember(&self, digest: Vec<u8>) {
        if let Ok(mut v) = self.verified.lock() {
            if !v.contains(&digest) {
                if v.len() >= MAX_VERIFIED {
                    v.pop_front();
                }
                v.push_back(digest);
            }
        }
    }

    /// Accept a new connection to `addr` whose server certificate has SHA-256 `seen` (pingora's
    /// `SslDigest::cert_digest`) if remora's own verifier accepted that certificate: at once when
    /// it did before, else after a check connection (TCP, handshake with SNI `sni`, close).
    pub async fn accept(
        &self,
        addr: SocketAddr,
        sni: &str,
        seen: &[u8],
        timeout: Duration,
    ) -> Result<(), String> {
        if seen.is_empty() {
            return Err("no server certificate to check against subjectAltNames".to_string());
        }
        if self.knows(seen) {
            return Ok(());
        }
        let name = ServerName::try_from(sni.to_string())
            .map_err(|e| format!("sni {sni:?} is not a valid server name: {e}"))?;
        let check = async {
            let tcp = TcpStream::connect(addr)
                .await
                .map_err(|e| format!("connecting to {addr}: {e}"))?;
            let mut tls = tokio_rustls::TlsConnector::from(self.config.clone())
                .connect(name, tcp)
                .await
                .map_err(|e| format!("TLS handshake with {addr}: {e}"))?;
            let leaf = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .map(|c| ring::digest::digest(&ring::digest::SHA256, c.as_ref()))
                .map(|d| d.as_ref().to_vec());
            let _ = tls.shutdown().await;
            leaf.ok_or_else(|| format!("{addr} presented no certificate"))
        };
        let digest = match tokio::time::timeout(timeout, check).await {
            Ok(r) => r?,
            Err(_) => {
                return Err(format!(
                    "checking {addr}'s certificate: timeout {timeout:?}"
                ))
            }
        };
        self.remember(digest.clone());
        if digest.as_slice() == seen {
            Ok(())
        } else {
            Err(format!(
                "{addr} presented another certificate to the check connection than to the proxied one; not accepted"
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(names: &[&str]) -> Vec<u8> {
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        for n in names {
            p.subject_alt_names
                .push(if let Some(u) = n.strip_prefix("uri:") {
                    rcgen::SanType::URI(u.try_into().unwrap())
                } else if let Ok(ip) = n.parse::<IpAddr>() {
                    rcgen::SanType::IpAddress(ip)
                } else {
                    rcgen::SanType::DnsName((*n).try_into().unwrap())
                });
        }
        let k = rcgen::KeyPair::generate().unwrap();
        p.self_signed(&k).unwrap().der().to_vec()
    }

    #[test]
    fn subject_alt_names_match_by_kind() {
        let c = cert(&[
            "*.shop.example",
            "uri:spiffe://cluster.local/ns/shop/sa/reviews",
            "10.1.2.3",
        ]);
        let has = |w: &str| cert_has_san(&c, &[w.to_string()]).unwrap();
        assert!(has("reviews.shop.example"));
        assert!(has("REVIEWS.Shop.Example"));
        assert!(!has("a.b.shop.example"));
        assert!(!has("shop.example"));
        assert!(has("spiffe://cluster.local/ns/shop/sa/reviews"));
        assert!(!has("spiffe://cluster.local/ns/shop/sa/ratings"));
        assert!(has("10.1.2.3"));
        assert!(!has("10.1.2.4"));
        assert!(cert_has_san(&c, &["x".into(), "10.1.2.3".into()]).unwrap());
        assert!(cert_has_san(b"junk", &["x".into()]).is_err());
    }
}
