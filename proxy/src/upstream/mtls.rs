//! TLS origination that checks `subjectAltNames` (DestinationRule `tls`, modes SIMPLE and MUTUAL).
//!
//! pingora's rustls connector verifies the server certificate against the SNI only. When a
//! destination lists `subjectAltNames`, remora does the handshake itself: the HTTP peer is a
//! plain-text one whose L4 connector (`custom_l4`) opens TCP, runs the rustls handshake with a
//! verifier that checks the chain (caCertificates, else the system roots) and then that the
//! certificate carries one of the names (replacing the SNI check, as Istio does), presents the
//! client certificate (MUTUAL), and hands pingora the encrypted stream as a virtual socket.

use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use pingora::connectors::L4Connect;
use pingora::protocols::l4::socket::SocketAddr;
use pingora::protocols::l4::stream::Stream;
use pingora::protocols::l4::virt::{VirtualSockOpt, VirtualSocket, VirtualSocketStream};
use pingora::{Error, ErrorType, Result};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::policy::traffic::{TlsKind, TlsSettings};

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

/// The rustls settings of one destination's `tls` (with `subjectAltNames`).
pub struct SanTls {
    h1: Arc<ClientConfig>,
    h2: Arc<ClientConfig>,
    /// Distinguishes this destination's pooled connections from any other's (pingora pools by
    /// address, SNI and this key).
    pub id: u64,
}

impl std::fmt::Debug for SanTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SanTls").field("id", &self.id).finish()
    }
}

impl SanTls {
    /// Read the CA, client certificate and key files of `t` and build the client settings.
    pub fn new(t: &TlsSettings) -> Result<Self, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
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
        let verifier = Arc::new(SanVerifier {
            inner,
            names: t.subject_alt_names.clone(),
        });
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
        let mut h2 = config.clone();
        h2.alpn_protocols = vec![b"h2".to_vec()];
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(SanTls {
            h1: Arc::new(config),
            h2: Arc::new(h2),
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
        })
    }

    /// The L4 connector of one upstream connection: TCP, then the handshake presenting `sni`.
    pub fn connector(
        &self,
        sni: &str,
        h2: bool,
        timeout: Duration,
    ) -> std::result::Result<Arc<dyn L4Connect + Send + Sync>, String> {
        let name = ServerName::try_from(sni.to_string())
            .map_err(|e| format!("sni {sni:?} is not a valid server name: {e}"))?;
        Ok(Arc::new(SanConnect {
            config: if h2 { self.h2.clone() } else { self.h1.clone() },
            name,
            h2,
            timeout,
        }))
    }
}

#[derive(Debug)]
struct SanConnect {
    config: Arc<ClientConfig>,
    name: ServerName<'static>,
    h2: bool,
    timeout: Duration,
}

#[async_trait::async_trait]
impl L4Connect for SanConnect {
    async fn connect(&self, addr: &SocketAddr) -> Result<Stream> {
        let Some(inet) = addr.as_inet().copied() else {
            return Error::e_explain(ErrorType::ConnectError, "not an IP address");
        };
        let work = async {
            let tcp = TcpStream::connect(inet).await.map_err(|e| {
                Error::explain(
                    ErrorType::ConnectRefused,
                    format!("connecting to {inet}: {e}"),
                )
            })?;
            let tls = tokio_rustls::TlsConnector::from(self.config.clone())
                .connect(self.name.clone(), tcp)
                .await
                .map_err(|e| {
                    Error::explain(
                        ErrorType::TLSHandshakeFailure,
                        format!("TLS handshake with {inet}: {e}"),
                    )
                })?;
            if self.h2 && tls.get_ref().1.alpn_protocol() != Some(b"h2".as_slice()) {
                return Err(Error::explain(
                    ErrorType::TLSHandshakeFailure,
                    format!(
                        "TLS handshake with {inet}: the server did not agree to HTTP/2 (ALPN h2)"
                    ),
                ));
            }
            Ok(tls)
        };
        let tls = match tokio::time::timeout(self.timeout, work).await {
            Ok(r) => r?,
            Err(_) => {
                return Error::e_explain(
                    ErrorType::ConnectTimedout,
                    format!("TLS connection to {inet}: timeout {:?}", self.timeout),
                )
            }
        };
        Ok(Stream::from(VirtualSocketStream::new(Box::new(TlsSocket(
            tls,
        )))))
    }
}

/// An established TLS connection as pingora's virtual socket.
#[derive(Debug)]
struct TlsSocket(TlsStream<TcpStream>);

impl VirtualSocket for TlsSocket {
    fn set_socket_option(&self, opt: VirtualSockOpt) -> std::io::Result<()> {
        match opt {
            VirtualSockOpt::NoDelay => self.0.get_ref().0.set_nodelay(true),
            // TCP keepalive is not applied to these connections (see docs/policies.md).
            _ => Ok(()),
        }
    }
}

impl AsyncRead for TlsSocket {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsSocket {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
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
