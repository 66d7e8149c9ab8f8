//! Connections to upstreams: TCP connects (from the inbound source address), TLS origination
//! over opaque TCP, DNS for route destinations without endpoints, and the `subjectAltNames`
//! check of upstream certificates (`mtls`).

mod dns;
pub mod mtls;

pub use dns::HostResolver;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpSocket, TcpStream};
use tracing::warn;

/// TLS over an opaque TCP connection (DestinationRule `tls` SIMPLE / MUTUAL), bounded by
/// `timeout`.
pub async fn tls_connect(
    config: Arc<rustls::ClientConfig>,
    sni: &str,
    tcp: TcpStream,
    timeout: Duration,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, String> {
    let name = rustls::pki_types::ServerName::try_from(sni.to_string())
        .map_err(|e| format!("sni {sni:?} is not a valid server name: {e}"))?;
    match tokio::time::timeout(
        timeout,
        tokio_rustls::TlsConnector::from(config).connect(name, tcp),
    )
    .await
    {
        Ok(Ok(t)) => Ok(t),
        Ok(Err(e)) => Err(format!("handshake: {e}")),
        Err(_) => Err(format!("handshake timed out after {timeout:?}")),
    }
}

/// Open a TCP connection to `dst`, optionally from source address `bind`.
/// With `fallback`, a failed bind is retried from 127.0.0.1 (testing only).
pub async fn connect_tcp(
    dst: SocketAddr,
    bind: Option<IpAddr>,
    fallback: bool,
    timeout: Duration,
) -> std::io::Result<TcpStream> {
    let socket = if dst.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if let Some(ip) = bind.filter(|ip| ip.is_ipv4() == dst.is_ipv4()) {
        if let Err(e) = socket.bind(SocketAddr::new(ip, 0)) {
            if fallback {
                warn!("bind {ip} failed ({e}); falling back to 127.0.0.1 (testing fallback)");
                socket.bind(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0))?;
            } else {
                return Err(std::io::Error::new(
                    e.kind(),
                    format!("bind source {ip}: {e}"),
                ));
            }
        }
    }
    socket.set_nodelay(true)?;
    match tokio::time::timeout(timeout, socket.connect(dst)).await {
        Ok(r) => r,
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("connect to {dst} timed out after {timeout:?}"),
        )),
    }
}
