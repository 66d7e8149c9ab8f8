//! An outbound mesh mTLS connection handed to Pingora through a Unix socket pair, so that
//! Pingora pools it (HTTP/1.1 keep-alive and HTTP/2 alike) the way it pools plain-text ones.
//!
//! Why a socket pair: Pingora 0.9 hands out a pooled connection (or an HTTP/2 connection) again
//! only after `Peer::matches_fd` accepted the stream's id, which is its file descriptor: it
//! asks getpeername(2) for it and compares the answer with the peer's address. The TLS stream
//! is remora's own (Istio's handshake, below), and a stream that is not Pingora's TCP or Unix
//! socket can only be given to Pingora as a "virtual socket", whose id is always -1: such
//! connections were never reused, and every request paid a new connection and a (resumed) TLS
//! handshake on both sidecars. Pingora's own TLS connector cannot make Istio's handshake: it
//! offers at most one custom ALPN value (Istio's client offers several, and a custom value
//! switches Pingora to its custom-protocol connector), has no hook to check the server's SPIFFE
//! id, and builds a new rustls configuration (so no session cache) per connection with a client
//! certificate. Changing Pingora's virtual socket would mean carrying a patched copy of
//! pingora-core.
//!
//! So Pingora gets one end of a socket pair, a real descriptor, and a task copies between the
//! other end and the TLS stream. getpeername on a socket pair answers a Unix address, which
//! equals no IP address; but Pingora accepts any live socket for a peer whose address is
//! `0.0.0.0` without comparing (it does not take 0.0.0.0 for a real destination). Mesh peers are
//! therefore built with the address `0.0.0.0:<port>` ([`peer_addr`]) and carry the endpoint in
//! their `MeshConnect`, whose pool group also names the endpoint, the expected identity, the
//! protocol and the client certificate; plain-text peers use the endpoint's own address and
//! never share a group with them. Pingora's other check of a pooled connection is unchanged: a
//! connection that reads end-of-file or unexpected bytes is not handed out. The 0.0.0.0 case is
//! Pingora's behaviour, not its documented interface: should an upgrade change it, connections
//! would silently stop being reused (never be shared wrongly), which the tests below and
//! `tests/tests/kube_ca.rs` (connections per request at the server sidecar) report.
//!
//! Hot path (hand-written, why): every byte between sidecars crosses the pair once more. The
//! copy is tokio's `copy_bidirectional` (8 KiB buffers each way, the write side flushed whenever
//! the read side has nothing more for now), one task per connection; it costs two more system
//! calls per chunk each way, two more descriptors and 16 KiB per open connection — against a
//! TCP connection and a TLS handshake on both sidecars per request without pooling.
//!
//! Closing: when Pingora closes its end (not reusable, idle timeout, evicted), the copy sends
//! the server `close_notify` and closes the TCP write side, then ends when the server closes
//! its side in turn (sidecars do on `close_notify`), or at once if the server sends anything
//! more (nobody reads it). When the server closes, Pingora's end reads end-of-file, which drops
//! an idle connection from Pingora's pool. A TLS error ends the copy and closes both.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use pingora::protocols::l4::stream::Stream as L4Stream;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::UnixStream;

/// The address of a mesh peer for `port`: `0.0.0.0`, which Pingora's reuse check accepts for a
/// socket pair (the port only shows in Pingora's messages).
pub fn peer_addr(port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port)
}

/// Give `tls` to Pingora: the returned stream is one end of a socket pair, and a task copies
/// between the other end and `tls` until either side is done.
pub fn into_stream<S>(tls: S) -> std::io::Result<L4Stream>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (pingora_end, relay_end) = UnixStream::pair()?;
    tokio::spawn(copy(tls, relay_end));
    Ok(L4Stream::from(pingora_end))
}

async fn copy<S>(mut tls: S, mut pair: UnixStream)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    if let Err(e) = tokio::io::copy_bidirectional(&mut pair, &mut tls).await {
        tracing::debug!("mesh mTLS connection ended: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::ca_client::Endpoint;
    use crate::identity::{Carried, Identity, IdentityConfig, Material};
    use crate::mtls::outbound::{Expect, MeshConnect};
    use pingora::connectors::TransportConnector;
    use pingora::upstreams::peer::{HttpPeer, Peer};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::Duration;
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

    const SERVER_ID: &str = "spiffe://cluster.local/ns/default/sa/httpbin";
    const CLIENT_ID: &str = "spiffe://cluster.local/ns/other/sa/sleep";

    /// A mesh root and the certificates it signs for workloads.
    struct Pki {
        root: rcgen::Certificate,
        key: rcgen::KeyPair,
    }

    impl Pki {
        fn new() -> Pki {
            let key = rcgen::KeyPair::generate().unwrap();
            let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
            p.distinguished_name = rcgen::DistinguishedName::new();
            p.distinguished_name
                .push(rcgen::DnType::CommonName, "relay test mesh root");
            p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
            p.key_usages = vec![
                rcgen::KeyUsagePurpose::KeyCertSign,
                rcgen::KeyUsagePurpose::CrlSign,
            ];
            let root = p.self_signed(&key).unwrap();
            Pki { root, key }
        }

        /// A new workload certificate (a new serial each time) for `id`.
        fn material(&self, id: &str) -> Material {
            let key = rcgen::KeyPair::generate().unwrap();
            let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
            p.distinguished_name = rcgen::DistinguishedName::new();
            p.subject_alt_names = vec![rcgen::SanType::URI(id.try_into().unwrap())];
            p.extended_key_usages = vec![
                rcgen::ExtendedKeyUsagePurpose::ServerAuth,
                rcgen::ExtendedKeyUsagePurpose::ClientAuth,
            ];
            let leaf = p.signed_by(&key, &self.root, &self.key).unwrap();
            let root = self.root.pem();
            Material::build(&[leaf.pem(), root.clone()], &key.serialize_der(), &root, id).unwrap()
        }
    }

    fn identity(m: Material) -> Arc<Identity> {
        let id = Identity::new(IdentityConfig {
            ca: Endpoint {
                address: "127.0.0.1:1".to_string(),
                server_name: "unused".to_string(),
                timeout: Duration::from_secs(1),
            },
            root_file: "/nonexistent".into(),
            token_file: "/nonexistent".into(),
            trust_domain: "cluster.local".to_string(),
            namespace: "other".to_string(),
            service_account: "sleep".to_string(),
            cert_ttl: Duration::from_secs(3600),
            rotate_at: 0.5,
        });
        id.install(m);
        Arc::new(id)
    }

    /// What the server saw of a connection: the client certificate's serial, SNI, ALPN.
    #[derive(Clone, Debug, PartialEq)]
    struct Accepted {
        serial: String,
        sni: Option<String>,
        alpn: Option<String>,
    }

    /// A server terminating mesh mTLS with `m` (client certificate required) that sends every
    /// line back; it records each connection it accepted, and counts those the client closed.
    async fn echo_server(
        m: &Material,
    ) -> (SocketAddr, Arc<Mutex<Vec<Accepted>>>, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let closed = Arc::new(AtomicUsize::new(0));
        let acceptor = tokio_rustls::TlsAcceptor::from(m.server.clone());
        let record = seen.clone();
        let ended = closed.clone();
        tokio::spawn(async move {
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                let Ok(tls) = acceptor.accept(tcp).await else {
                    continue;
                };
                let conn = tls.get_ref().1;
                let leaf = conn.peer_certificates().unwrap()[0].clone();
                record.lock().unwrap().push(Accepted {
                    serial: crate::identity::material::leaf_info(&leaf).unwrap().serial,
                    sni: conn.server_name().map(str::to_string),
                    alpn: conn
                        .alpn_protocol()
                        .map(|a| String::from_utf8_lossy(a).into_owned()),
                });
                let ended = ended.clone();
                tokio::spawn(async move {
                    let (r, mut w) = tokio::io::split(tls);
                    let mut lines = BufReader::new(r).lines();
                    loop {
                        match lines.next_line().await {
                            Ok(Some(l)) => {
                                if w.write_all(format!("{l}\n").as_bytes()).await.is_err() {
                                    return;
                                }
                            }
                            // The client's close_notify (a clean end of the TLS stream).
                            Ok(None) => {
                                ended.fetch_add(1, Ordering::SeqCst);
                                return;
                            }
                            Err(_) => return,
                        }
                    }
                });
            }
        });
        (addr, seen, closed)
    }

    fn peer(identity: &Arc<Identity>, addr: SocketAddr) -> HttpPeer {
        let m = MeshConnect {
            identity: identity.clone(),
            material: identity.current(),
            what: Carried::Http1,
            expect: Expect::new(
                "httpbin.default.svc.cluster.local",
                8000,
                None,
                "cluster.local",
            ),
            addr,
            timeout: Duration::from_secs(5),
            metrics: Arc::new(crate::telemetry::Metrics::new(100).unwrap()),
        };
        let mut p = HttpPeer::new(peer_addr(addr.port()), false, String::new());
        p.group_key = m.group_key();
        p.options.custom_l4 = Some(Arc::new(m));
        p
    }

    /// One line there and back on `s`.
    async fn ping(s: &mut pingora::protocols::Stream, line: &str) {
        s.write_all(format!("{line}\n").as_bytes()).await.unwrap();
        s.flush().await.unwrap();
        let mut back = vec![0; line.len() + 1];
        tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut back))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(back, format!("{line}\n").as_bytes());
    }

    /// Pingora's own connection pool hands a mesh mTLS connection out again: ten uses, one
    /// connection (one handshake) at the server; after the certificate rotates, the next use
    /// opens a connection presenting the new certificate. When the pool's idle timeout drops
    /// them, the server sees each end cleanly.
    #[tokio::test]
    async fn pingora_reuses_mesh_connections_and_rotation_opens_new_ones() {
        let pki = Pki::new();
        let (addr, seen, closed) = echo_server(&pki.material(SERVER_ID)).await;
        let client = identity(pki.material(CLIENT_ID));
        let first_serial = client.current().unwrap().serial.clone();
        let connector = TransportConnector::new(None);
        let p = peer(&client, addr);
        // Idle connections closed after half a second (the uses below follow each other at once).
        let idle = Some(Duration::from_millis(500));
        let mut reuses = 0;
        for i in 0..10 {
            let (mut s, reused) = connector.get_stream(&p).await.unwrap();
            reuses += usize::from(reused);
            assert!(
                p.matches_fd(s.id()),
                "use {i}: the stream has a descriptor Pingora accepts"
            );
            ping(&mut s, &format!("use {i}")).await;
            connector.release_stream(s, p.reuse_hash(), idle);
        }
        assert_eq!(reuses, 9);
        let want = Accepted {
            serial: first_serial.clone(),
            sni: Some("outbound_.8000_._.httpbin.default.svc.cluster.local".to_string()),
            alpn: Some("istio-http/1.1".to_string()),
        };
        assert_eq!(*seen.lock().unwrap(), vec![want.clone()]);

        // A plain-text peer of the same endpoint is another pool group.
        let plain = HttpPeer::new(addr, false, String::new());
        assert_ne!(plain.reuse_hash(), p.reuse_hash());

        // Rotation: requests now build peers with the new certificate, in a new group.
        client.install(pki.material(CLIENT_ID));
        let second_serial = client.current().unwrap().serial.clone();
        assert_ne!(second_serial, first_serial);
        let p2 = peer(&client, addr);
        assert_ne!(p2.reuse_hash(), p.reuse_hash());
        for i in 0..3 {
            let (mut s, reused) = connector.get_stream(&p2).await.unwrap();
            assert_eq!(reused, i > 0, "use {i} after rotation");
            ping(&mut s, &format!("rotated {i}")).await;
            connector.release_stream(s, p2.reuse_hash(), idle);
        }
        let seen = seen.lock().unwrap().clone();
        assert_eq!(seen.len(), 2, "{seen:?}");
        assert_eq!(seen[1].serial, second_serial);

        // Idle for longer than the pool keeps them: Pingora drops both, and the server sees each
        // end with close_notify.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while closed.load(Ordering::SeqCst) < 2 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{} closed",
                closed.load(Ordering::SeqCst)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// When the server closes an idle pooled connection, Pingora does not hand it out again:
    /// the next use opens a new one.
    #[tokio::test]
    async fn a_connection_the_server_closed_is_not_reused() {
        let pki = Pki::new();
        let server = pki.material(SERVER_ID);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(server.server.clone());
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    continue;
                };
                count.fetch_add(1, Ordering::SeqCst);
                // One line back, then close (close_notify and FIN).
                tokio::spawn(async move {
                    let mut buf = [0u8; 64];
                    if let Ok(n) = tls.read(&mut buf).await {
                        let _ = tls.write_all(&buf[..n]).await;
                    }
                    let _ = tls.shutdown().await;
                });
            }
        });
        let client = identity(pki.material(CLIENT_ID));
        let connector = TransportConnector::new(None);
        let p = peer(&client, addr);
        let (mut s, _) = connector.get_stream(&p).await.unwrap();
        ping(&mut s, "once").await;
        connector.release_stream(s, p.reuse_hash(), Some(Duration::from_secs(30)));
        tokio::time::sleep(Duration::from_millis(200)).await;
        let (mut s, reused) = connector.get_stream(&p).await.unwrap();
        assert!(!reused, "a closed connection was handed out again");
        ping(&mut s, "twice").await;
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }
}
