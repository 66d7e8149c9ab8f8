//! A workload certificate made usable: the chain and key as rustls wants them, the trust roots,
//! the SPIFFE id, serial and validity read from the leaf, and the TLS configurations built once
//! per certificate (the client ones per Istio ALPN value, sharing one session cache so
//! connections between sidecars resume; the server one requiring a client certificate).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::{ParsedCertificate, WebPkiClientVerifier};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};

/// Istio's ALPN values a client sidecar offers, by what it carries.
pub const ALPN_HTTP11: &[u8] = b"istio-http/1.1";
pub const ALPN_HTTP10: &[u8] = b"istio-http/1.0";
pub const ALPN_H2: &[u8] = b"istio-h2";
pub const ALPN_TCP: &[u8] = b"istio";
pub const ALPN_PEER_EXCHANGE: &[u8] = b"istio-peer-exchange";

/// Is `alpn` one of the values Istio's sidecars offer on connections between sidecars?
pub fn is_mesh_alpn(alpn: &[u8]) -> bool {
    [
        ALPN_HTTP11,
        ALPN_HTTP10,
        ALPN_H2,
        ALPN_TCP,
        ALPN_PEER_EXCHANGE,
    ]
    .contains(&alpn)
}

/// What a mesh connection carries, which picks the ALPN the client offers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Carried {
    Http1,
    H2,
    Tcp,
}

/// The certificate and everything built from it.
pub struct Material {
    /// `spiffe://<trust domain>/ns/<namespace>/sa/<service account>`.
    pub spiffe_id: String,
    /// The leaf's serial number, hex.
    pub serial: String,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    /// The chain as the CA returned it (leaf first), PEM each, and the roots trusted, PEM.
    pub chain_pem: Vec<String>,
    pub roots_pem: String,
    client_http1: Arc<ClientConfig>,
    client_h2: Arc<ClientConfig>,
    client_tcp: Arc<ClientConfig>,
    /// Inbound termination: a client certificate from the trust roots required.
    pub server: Arc<ServerConfig>,
    /// The control plane's TLS port (discovery): its certificate verified by the trust roots
    /// and its name (webpki), this certificate presented; ALPN h2.
    pub control_plane: Arc<ClientConfig>,
}

impl std::fmt::Debug for Material {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Material")
            .field("spiffe_id", &self.spiffe_id)
            .field("serial", &self.serial)
            .field("not_after", &self.not_after)
            .finish()
    }
}

impl Material {
    /// The client configuration for a connection carrying `what`.
    pub fn client(&self, what: Carried) -> Arc<ClientConfig> {
        match what {
            Carried::Http1 => self.client_http1.clone(),
            Carried::H2 => self.client_h2.clone(),
            Carried::Tcp => self.client_tcp.clone(),
        }
    }

    /// Seconds of validity left at `now` (negative once expired).
    pub fn remaining(&self, now: SystemTime) -> f64 {
        match self.not_after.duration_since(now) {
            Ok(d) => d.as_secs_f64(),
            Err(e) => -e.duration().as_secs_f64(),
        }
    }

    /// Build from the CA's answer (PEM chain, leaf first), our private key (PKCS#8 DER) and
    /// the trust roots (PEM). The leaf must carry exactly `want_id` as a URI SAN.
    pub fn build(
        chain: &[String],
        key_pkcs8: &[u8],
        roots_pem: &str,
        want_id: &str,
    ) -> Result<Material, String> {
        let mut certs: Vec<CertificateDer<'static>> = Vec::new();
        for (i, pem) in chain.iter().enumerate() {
            for c in CertificateDer::pem_slice_iter(pem.as_bytes()) {
                certs.push(c.map_err(|e| format!("certificate chain item {}: {e}", i + 1))?);
            }
        }
        let leaf = certs
            .first()
            .ok_or_else(|| "the CA answered an empty certificate chain".to_string())?
            .clone();
        let info = leaf_info(&leaf)?;
        if !info.uris.iter().any(|u| u == want_id) {
            return Err(format!(
                "the certificate's identities {:?} do not include {want_id}",
                info.uris
            ));
        }
        let roots = root_store(roots_pem)?;
        // The root itself is not sent; intermediates are.
        let send: Vec<CertificateDer<'static>> = certs
            .iter()
            .filter(|c| !is_self_signed(c))
            .cloned()
            .collect();
        let key = PrivateKeyDer::Pkcs8(key_pkcs8.to_vec().into());
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = Arc::new(MeshServerVerifier {
            roots: roots.clone(),
            provider: provider.clone(),
        });
        let base = ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| format!("client TLS settings: {e}"))?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_client_auth_cert(send.clone(), key.clone_key())
            .map_err(|e| format!("client certificate: {e}"))?;
        // Clones share the session cache: a resumed handshake between the same sidecars.
        let with_alpn = |alpn: &[&[u8]]| {
            let mut c = base.clone();
            c.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
            Arc::new(c)
        };
        let client_http1 = with_alpn(&[ALPN_PEER_EXCHANGE, ALPN_HTTP11, ALPN_TCP]);
        let client_h2 = with_alpn(&[ALPN_PEER_EXCHANGE, ALPN_H2, ALPN_TCP]);
        let client_tcp = with_alpn(&[ALPN_PEER_EXCHANGE, ALPN_TCP]);
        let mut control_plane = ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| format!("client TLS settings: {e}"))?
            .with_root_certificates(roots.clone())
            .with_client_auth_cert(send.clone(), key.clone_key())
            .map_err(|e| format!("client certificate: {e}"))?;
        control_plane.alpn_protocols = vec![b"h2".to_vec()];
        let client_verifier = WebPkiClientVerifier::builder_with_provider(roots, provider.clone())
            .build()
            .map_err(|e| format!("client certificate verifier: {e}"))?;
        let mut server = ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| format!("server TLS settings: {e}"))?
            .with_client_cert_verifier(client_verifier)
            .with_single_cert(send, key)
            .map_err(|e| format!("server certificate: {e}"))?;
        // The server's preference: what the connection carries, then the generic value.
        server.alpn_protocols = [
            ALPN_H2,
            ALPN_HTTP11,
            ALPN_HTTP10,
            ALPN_TCP,
            ALPN_PEER_EXCHANGE,
        ]
        .iter()
        .map(|a| a.to_vec())
        .collect();
        Ok(Material {
            spiffe_id: want_id.to_string(),
            serial: info.serial,
            not_before: info.not_before,
            not_after: info.not_after,
            chain_pem: chain.to_vec(),
            roots_pem: roots_pem.to_string(),
            client_http1,
            client_h2,
            client_tcp,
            server: Arc::new(server),
            control_plane: Arc::new(control_plane),
        })
    }
}

/// The trust roots from PEM text; at least one must parse.
pub fn root_store(pem: &str) -> Result<Arc<RootCertStore>, String> {
    let mut roots = RootCertStore::empty();
    for (i, c) in CertificateDer::pem_slice_iter(pem.as_bytes()).enumerate() {
        let c = c.map_err(|e| format!("root certificate {}: {e}", i + 1))?;
        roots
            .add(c)
            .map_err(|e| format!("root certificate {}: not a usable trust anchor: {e}", i + 1))?;
    }
    if roots.is_empty() {
        return Err("no root certificate found".into());
    }
    Ok(Arc::new(roots))
}

fn is_self_signed(c: &CertificateDer<'_>) -> bool {
    match x509_parser::parse_x509_certificate(c.as_ref()) {
        Ok((_, x)) => x.subject() == x.issuer() && x.is_ca(),
        Err(_) => false,
    }
}

/// What the proxy reads from a leaf certificate.
#[derive(Clone, Debug, PartialEq)]
pub struct LeafInfo {
    pub uris: Vec<String>,
    pub serial: String,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

/// The URI SANs, serial and validity of a certificate.
pub fn leaf_info(der: &[u8]) -> Result<LeafInfo, String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| format!("certificate could not be parsed: {e}"))?;
    let mut uris = Vec::new();
    if let Ok(Some(ext)) = cert.subject_alternative_name() {
        for n in &ext.value.general_names {
            if let x509_parser::extensions::GeneralName::URI(u) = n {
                uris.push(u.to_string());
            }
        }
    }
    let t = |x: x509_parser::time::ASN1Time| {
        let s = x.timestamp();
        if s >= 0 {
            SystemTime::UNIX_EPOCH + Duration::from_secs(s as u64)
        } else {
            SystemTime::UNIX_EPOCH
        }
    };
    Ok(LeafInfo {
        uris,
        serial: cert.raw_serial_as_string().replace(':', ""),
        not_before: t(cert.validity().not_before),
        not_after: t(cert.validity().not_after),
    })
}

/// The SPIFFE id of a peer's leaf certificate (its first `spiffe://` URI SAN).
pub fn spiffe_of(der: &[u8]) -> Option<String> {
    leaf_info(der)
        .ok()?
        .uris
        .into_iter()
        .find(|u| u.starts_with("spiffe://"))
}

/// Server verification between sidecars: the chain must lead to a mesh root; the name check
/// is the SPIFFE id, which the connector checks against the destination after the handshake
/// (one client configuration serves every destination, so one session cache does).
#[derive(Debug)]
struct MeshServerVerifier {
    roots: Arc<RootCertStore>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for MeshServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let cert = ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &cert,
            &self.roots,
            intermediates,
            now,
            self.provider.signature_verification_algorithms.all,
        )?;
        if spiffe_of(end_entity.as_ref()).is_none() {
            return Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            ));
        }
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

/// Does the SPIFFE id `id` belong to `trust_domain`, and (when given) to `namespace`?
/// Returns the reason it does not.
pub fn check_peer_id(id: &str, trust_domain: &str, namespace: Option<&str>) -> Result<(), String> {
    let Some(rest) = id.strip_prefix("spiffe://") else {
        return Err(format!("{id:?} is not a SPIFFE id"));
    };
    let (td, path) = rest.split_once('/').unwrap_or((rest, ""));
    if !td.eq_ignore_ascii_case(trust_domain) {
        return Err(format!(
            "{id} is from trust domain {td:?}, not {trust_domain:?}"
        ));
    }
    if let Some(ns) = namespace {
        let mut parts = path.split('/');
        match (parts.next(), parts.next()) {
            (Some("ns"), Some(n)) if n == ns => {}
            _ => return Err(format!("{id} is not an identity of namespace {ns:?}")),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_id_table() {
        let cases: &[(&str, &str, Option<&str>, bool)] = &[
            (
                "spiffe://cluster.local/ns/shop/sa/web",
                "cluster.local",
                Some("shop"),
                true,
            ),
            (
                "spiffe://cluster.local/ns/shop/sa/web",
                "cluster.local",
                None,
                true,
            ),
            (
                "spiffe://cluster.local/ns/shop/sa/web",
                "cluster.local",
                Some("other"),
                false,
            ),
            (
                "spiffe://evil.example/ns/shop/sa/web",
                "cluster.local",
                Some("shop"),
                false,
            ),
            (
                "spiffe://cluster.local/ns/shopx/sa/web",
                "cluster.local",
                Some("shop"),
                false,
            ),
            (
                "spiffe://cluster.local",
                "cluster.local",
                Some("shop"),
                false,
            ),
            (
                "https://cluster.local/ns/shop/sa/web",
                "cluster.local",
                None,
                false,
            ),
        ];
        for (id, td, ns, ok) in cases {
            assert_eq!(check_peer_id(id, td, *ns).is_ok(), *ok, "{id} {td} {ns:?}");
        }
    }

    #[test]
    fn mesh_alpn_values() {
        for a in [
            "istio",
            "istio-h2",
            "istio-http/1.1",
            "istio-http/1.0",
            "istio-peer-exchange",
        ] {
            assert!(is_mesh_alpn(a.as_bytes()), "{a}");
        }
        for a in ["h2", "http/1.1", "istio-x", ""] {
            assert!(!is_mesh_alpn(a.as_bytes()), "{a}");
        }
    }
}
