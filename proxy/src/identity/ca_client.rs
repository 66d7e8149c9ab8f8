//! One certificate request to the CA: a fresh ECDSA P-256 key (kept in memory only), a CSR for
//! the workload's SPIFFE id, and Istio's `CreateCertificate` call over TLS (the CA verified with
//! the mesh root), authenticated with the pod's projected service-account token.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use remora_model::ca_api::{IstioCertificateRequest, IstioCertificateResponse, CREATE_CERTIFICATE};
use rustls::pki_types::ServerName;

/// A key and the CSR made with it.
pub struct Request {
    /// PKCS#8 DER of the private key.
    pub key_pkcs8: Vec<u8>,
    pub csr_pem: String,
}

/// A new P-256 key and a CSR carrying `spiffe_id` as its only SAN.
pub fn new_request(spiffe_id: &str) -> Result<Request, String> {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(|e| format!("generating a P-256 key: {e}"))?;
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new())
        .map_err(|e| format!("certificate request parameters: {e}"))?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    let uri = rcgen::Ia5String::try_from(spiffe_id)
        .map_err(|e| format!("SPIFFE id {spiffe_id:?} is not a valid URI SAN: {e}"))?;
    params.subject_alt_names = vec![rcgen::SanType::URI(uri)];
    let csr = params
        .serialize_request(&key)
        .map_err(|e| format!("signing the certificate request: {e}"))?;
    let csr_pem = csr
        .pem()
        .map_err(|e| format!("encoding the certificate request: {e}"))?;
    Ok(Request {
        key_pkcs8: key.serialize_der(),
        csr_pem,
    })
}

/// Where and how to reach the CA.
#[derive(Clone, Debug)]
pub struct Endpoint {
    /// `host:port` as configured.
    pub address: String,
    /// The name the CA's certificate must carry.
    pub server_name: String,
    pub timeout: Duration,
}

/// Ask the CA to sign `csr_pem` for `ttl`; returns the PEM chain (leaf first).
pub async fn create_certificate(
    ep: &Endpoint,
    roots_pem: &str,
    token: &str,
    csr_pem: &str,
    ttl: Duration,
) -> Result<Vec<String>, String> {
    let roots = super::material::root_store(roots_pem)?;
    let mut tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| format!("TLS settings: {e}"))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    tls.alpn_protocols = vec![b"h2".to_vec()];
    let name = ServerName::try_from(ep.server_name.clone())
        .map_err(|e| format!("CA name {:?}: {e}", ep.server_name))?;
    let addr = resolve(&ep.address).await?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(tls));
    let timeout = ep.timeout;
    let service = tower::service_fn(move |_: http::Uri| {
        let connector = connector.clone();
        let name = name.clone();
        async move {
            let tcp = tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr))
                .await
                .map_err(|_| {
                    std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out")
                })??;
            tcp.set_nodelay(true)?;
            let tls = connector.connect(name, tcp).await?;
            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tls))
        }
    });
    let channel = tokio::time::timeout(
        timeout,
        tonic::transport::Endpoint::from_static("http://remora-ca").connect_with_connector(service),
    )
    .await
    .map_err(|_| {
        format!(
            "connecting to the CA at {} timed out after {timeout:?}",
            ep.address
        )
    })?
    .map_err(|e| {
        format!(
            "connecting to the CA at {} ({addr}): {}",
            ep.address,
            chain(&e)
        )
    })?;
    let mut grpc = tonic::client::Grpc::new(channel);
    let mut req = tonic::Request::new(IstioCertificateRequest {
        csr: csr_pem.to_string(),
        validity_duration: ttl.as_secs() as i64,
        metadata: None,
    });
    let bearer = format!("Bearer {}", token.trim());
    let value = bearer
        .parse()
        .map_err(|_| "the service-account token is not a valid header value".to_string())?;
    req.metadata_mut().insert("authorization", value);
    req.set_timeout(timeout);
    grpc.ready()
        .await
        .map_err(|e| format!("CA at {} not ready: {e}", ep.address))?;
    let codec =
        tonic_prost::ProstCodec::<IstioCertificateRequest, IstioCertificateResponse>::default();
    let answer = tokio::time::timeout(
        timeout,
        grpc.unary(
            req,
            http::uri::PathAndQuery::from_static(CREATE_CERTIFICATE),
            codec,
        ),
    )
    .await
    .map_err(|_| format!("the CA at {} did not answer within {timeout:?}", ep.address))?;
    match answer {
        Ok(r) => Ok(r.into_inner().cert_chain),
        Err(s) => Err(format!("the CA refused: {:?}: {}", s.code(), s.message())),
    }
}

async fn resolve(address: &str) -> Result<SocketAddr, String> {
    if let Ok(a) = address.parse::<SocketAddr>() {
        return Ok(a);
    }
    let mut addrs = tokio::net::lookup_host(address)
        .await
        .map_err(|e| format!("CA address {address:?} does not resolve: {e}"))?;
    addrs
        .next()
        .ok_or_else(|| format!("CA address {address:?} resolves to nothing"))
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(x) = src {
        s.push_str(": ");
        s.push_str(&x.to_string());
        src = x.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use x509_parser::prelude::FromDer;

    #[test]
    fn csr_carries_the_spiffe_id_and_a_p256_key() {
        let r = new_request("spiffe://cluster.local/ns/shop/sa/web").unwrap();
        assert!(r.csr_pem.starts_with("-----BEGIN CERTIFICATE REQUEST-----"));
        let der = rustls::pki_types::pem::PemObject::from_pem_slice(r.csr_pem.as_bytes())
            .map(|d: rustls::pki_types::CertificateSigningRequestDer| d.as_ref().to_vec())
            .unwrap();
        let (_, csr) =
            x509_parser::certification_request::X509CertificationRequest::from_der(&der).unwrap();
        let text = format!("{:?}", csr.certification_request_info.subject_pki.algorithm);
        assert!(text.contains("1.2.840.10045.2.1"), "EC key: {text}");
        let exts = csr.requested_extensions().unwrap().collect::<Vec<_>>();
        let has = exts.iter().any(|e| match e {
            x509_parser::extensions::ParsedExtension::SubjectAlternativeName(s) => s
                .general_names
                .iter()
                .any(|g| matches!(g, x509_parser::extensions::GeneralName::URI(u) if *u == "spiffe://cluster.local/ns/shop/sa/web")),
            _ => false,
        });
        assert!(has, "{exts:?}");
        // Not IA5 (ASCII): refused before anything is sent.
        assert!(new_request("spiffe://cluster.local/ns/é/sa/x").is_err());
    }
}
