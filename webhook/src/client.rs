//! A small HTTPS/1.1 keep-alive client for the webhook: used by the tests, the load generator and
//! `scripts/demo` (it trusts only the CA certificates it is given).

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{anyhow, Context};
use axum::body::Body;
use bytes::Bytes;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// One kept-alive TLS connection.
pub struct Client {
    sender: SendRequest<Body>,
    /// The DER of the certificate the server presented.
    pub peer_cert: Vec<u8>,
}

/// A TLS client config trusting the PEM certificates in `roots_pem`.
pub fn client_config(roots_pem: &[&[u8]]) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    crate::tls::install_provider();
    let mut roots = rustls::RootCertStore::empty();
    for pem in roots_pem {
        for c in CertificateDer::pem_slice_iter(pem) {
            roots
                .add(c.context("parsing a CA certificate")?)
                .context("adding a CA certificate")?;
        }
    }
    let mut cfg = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

impl Client {
    /// Connects to `addr`, verifying the certificate for `server_name`.
    pub async fn connect(
        addr: SocketAddr,
        server_name: &str,
        cfg: Arc<rustls::ClientConfig>,
    ) -> anyhow::Result<Client> {
        let tcp = TcpStream::connect(addr)
            .await
            .with_context(|| format!("connecting to {addr}"))?;
        tcp.set_nodelay(true)?;
        let name = ServerName::try_from(server_name.to_string())
            .map_err(|e| anyhow!("server name {server_name:?}: {e}"))?;
        let tls = TlsConnector::from(cfg)
            .connect(name, tcp)
            .await
            .context("TLS handshake")?;
        let peer_cert = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| c.to_vec())
            .unwrap_or_default();
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .context("HTTP/1.1 handshake")?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(Client { sender, peer_cert })
    }

    /// Sends one request and reads the whole answer.
    pub async fn request(
        &mut self,
        method: &str,
        path: &str,
        body: Bytes,
    ) -> anyhow::Result<(u16, Bytes)> {
        self.sender.ready().await.context("connection closed")?;
        let req = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header("host", "remora-webhook")
            .header("content-type", "application/json")
            .body(Body::from(body))?;
        let resp = self.sender.send_request(req).await.context("sending")?;
        let status = resp.status().as_u16();
        let body = axum::body::to_bytes(Body::new(resp.into_body()), 64 * 1024 * 1024)
            .await
            .context("reading the answer")?;
        Ok((status, body))
    }

    pub async fn post(&mut self, path: &str, body: Bytes) -> anyhow::Result<(u16, Bytes)> {
        self.request("POST", path, body).await
    }

    pub async fn get(&mut self, path: &str) -> anyhow::Result<(u16, Bytes)> {
        self.request("GET", path, Bytes::new()).await
    }
}
