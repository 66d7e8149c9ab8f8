//! Inbound mutual TLS: terminate a client sidecar's TLS (Istio's ALPN values) with the
//! workload certificate, require a client certificate from the mesh roots and the trust
//! domain, and remember the peer's identity for the connection's life (`Peers`, keyed by the
//! client's address, which the HTTP side and the access log read).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::unix::io::AsRawFd;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pingora::protocols::l4::socket::SocketAddr as PSocketAddr;
use pingora::protocols::l4::stream::Stream as L4Stream;
use pingora::protocols::Stream;

use crate::identity::material::{check_peer_id, spiffe_of};
use crate::identity::Material;

/// What is known of a terminated mesh connection's client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerInfo {
    /// The client's SPIFFE id (`spiffe://…`).
    pub principal: String,
    /// `TLSv1_3` / `TLSv1_2`.
    pub tls_version: &'static str,
    /// The ALPN value agreed.
    pub alpn: Option<String>,
    /// The server name the client asked for (SNI; Envoy's `%REQUESTED_SERVER_NAME%`).
    pub sni: Option<String>,
    /// The client's labels in metrics, decided at the connection's first request
    /// (`telemetry::peer::peer_of`) and kept for its life.
    pub labels: std::sync::OnceLock<Arc<crate::telemetry::Peer>>,
}

/// The identities of the inbound mTLS connections open now, by client address.
#[derive(Default)]
pub struct Peers {
    map: Mutex<HashMap<SocketAddr, Arc<PeerInfo>>>,
}

impl Peers {
    pub fn get(&self, client: SocketAddr) -> Option<Arc<PeerInfo>> {
        self.map.lock().ok()?.get(&client).cloned()
    }

    pub fn len(&self) -> usize {
        self.map.lock().map(|m| m.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn insert(self: &Arc<Self>, client: SocketAddr, info: Arc<PeerInfo>) -> PeerEntry {
        if let Ok(mut m) = self.map.lock() {
            m.insert(client, info.clone());
        }
        PeerEntry {
            peers: self.clone(),
            client,
            info,
        }
    }
}

/// A connection's place in `Peers`, removed when the connection (which owns it) is dropped.
pub struct PeerEntry {
    peers: Arc<Peers>,
    client: SocketAddr,
    info: Arc<PeerInfo>,
}

impl Drop for PeerEntry {
    fn drop(&mut self) {
        if let Ok(mut m) = self.peers.map.lock() {
            // Only this connection's own entry: a newer connection from the same address (the
            // port reused) keeps its identity.
            if m.get(&self.client)
                .is_some_and(|i| Arc::ptr_eq(i, &self.info))
            {
                m.remove(&self.client);
            }
        }
    }
}

/// What a terminated connection tells of its client, `principal` checked by the caller.
fn peer_info(principal: String, conn: &rustls::ServerConnection) -> Arc<PeerInfo> {
    Arc::new(PeerInfo {
        principal,
        tls_version: match conn.protocol_version() {
            Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1_3",
            Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1_2",
            _ => "TLS",
        },
        alpn: conn
            .alpn_protocol()
            .map(|a| String::from_utf8_lossy(a).into_owned()),
        sni: conn.server_name().map(str::to_string),
        labels: Default::default(),
    })
}

impl Peers {
    /// Record the checked identity `principal` of a connection another listener terminated
    /// (the gateway's `ISTIO_MUTUAL` servers) for as long as the entry lives.
    pub fn record(
        self: &Arc<Self>,
        client: SocketAddr,
        principal: &str,
        conn: &rustls::ServerConnection,
    ) -> PeerEntry {
        self.insert(client, peer_info(principal.to_string(), conn))
    }
}

/// Terminate a mesh client's TLS on `stream` (the ClientHello still unread in it).
/// Returns the decrypted stream (same socket digest) and the client's identity.
pub async fn terminate(
    stream: Stream,
    material: &Material,
    trust_domain: &str,
    peers: &Arc<Peers>,
    timeout: Duration,
) -> Result<(L4Stream, Arc<PeerInfo>), String> {
    let digest = stream.get_socket_digest();
    let fd = stream
        .as_any()
        .downcast_ref::<L4Stream>()
        .map(|s| s.as_raw_fd())
        .unwrap_or(-1);
    let client = digest
        .as_ref()
        .and_then(|d| d.peer_addr())
        .and_then(PSocketAddr::as_inet)
        .copied();
    let acceptor = tokio_rustls::TlsAcceptor::from(material.server.clone());
    let tls = match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
        Ok(Ok(t)) => t,
        Ok(Err(e)) => return Err(format!("handshake: {e}")),
        Err(_) => return Err(format!("handshake timed out after {timeout:?}")),
    };
    let (_, conn) = tls.get_ref();
    let leaf = conn
        .peer_certificates()
        .and_then(|c| c.first())
        .ok_or_else(|| "the client sent no certificate".to_string())?;
    let principal = spiffe_of(leaf.as_ref())
        .ok_or_else(|| "the client certificate carries no SPIFFE id".to_string())?;
    check_peer_id(&principal, trust_domain, None)?;
    let info = peer_info(principal, conn);
    let entry = client.map(|c| peers.insert(c, info.clone()));
    let digest = super::socket::digest_of(fd, digest.as_deref());
    Ok((super::socket::into_stream(tls, entry, Some(digest)), info))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(principal: &str) -> Arc<PeerInfo> {
        Arc::new(PeerInfo {
            principal: principal.to_string(),
            tls_version: "TLSv1_3",
            alpn: None,
            sni: None,
            labels: Default::default(),
        })
    }

    #[test]
    fn a_closing_connection_leaves_a_newer_one_from_its_address_alone() {
        let peers = Arc::new(Peers::default());
        let client: SocketAddr = "10.0.0.1:40000".parse().unwrap();
        let old = peers.insert(client, info("spiffe://cluster.local/ns/a/sa/old"));
        // The port reused by a new connection before the old one's end was noticed.
        let new = peers.insert(client, info("spiffe://cluster.local/ns/b/sa/new"));
        drop(old);
        assert_eq!(
            peers.get(client).map(|p| p.principal.clone()).as_deref(),
            Some("spiffe://cluster.local/ns/b/sa/new")
        );
        drop(new);
        assert!(peers.is_empty());
    }
}
