//! An outbound mesh mTLS connection as a Pingora stream that Pingora pools (HTTP/1.1 keep-alive
//! and HTTP/2 alike) the way it pools plain-text ones.
//!
//! The TLS stream is remora's own (Istio's handshake, `outbound`): Pingora's TLS connector cannot
//! make it (it offers at most one custom ALPN value where Istio's client offers several, has no
//! hook to check the server's SPIFFE id, and builds a new rustls configuration, so no session
//! cache, per connection with a client certificate). So Pingora gets it as a "virtual socket".
//! Pingora hands a pooled (or HTTP/2) connection out again only if its id passes the pool's
//! peer check, and upstream Pingora 0.9 gives every virtual socket the id -1, which never passes:
//! such connections were never reused. remora's patched pingora-core
//! (`third_party/pingora-core/REMORA.md`) lets a virtual socket carry the descriptor of the TCP
//! connection under it (`VirtualSocketStream::with_raw_fd`): that is the stream's id, its socket
//! digest describes that TCP connection, and the pool checks a connection against the peer
//! address recorded when it was made (no getpeername(2)). Bytes go straight between Pingora and
//! the TLS stream; nothing else reads or writes the descriptor.
//!
//! Pool groups: mesh peers are built with the address `0.0.0.0:<port>` ([`peer_addr`]), which
//! the pool's address check accepts for any connection (Pingora's rule: 0.0.0.0 is no real
//! destination), and carry the endpoint in their `MeshConnect`, whose pool group (`group_key`)
//! names the endpoint, the expected identity, the protocol and the client certificate; plain
//! peers use the endpoint's own address and never share a group with them. Pingora's other
//! checks of a pooled connection are unchanged: one that reads end-of-file, an error or
//! unexpected bytes is not handed out (the tests below and `tests/tests/kube_ca.rs`, which counts
//! connections per request at the server sidecar, report it if reuse stops).
//!
//! Socket options: Pingora's no-delay and keep-alive settings (a DestinationRule's
//! `tcpKeepalive`) are applied to the TCP connection under the TLS.
//!
//! Closing: when Pingora shuts a connection down, the TLS stream sends the server `close_notify`
//! and closes the TCP write side; when Pingora drops one without that (idle timeout, evicted,
//! not reusable), `close_notify` is written without waiting if the socket takes it at once
//! (an idle connection's send buffer is empty), then the TCP connection closes. When the server
//! closes, Pingora's read of the idle connection sees it, which drops it from the pool.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::unix::io::AsRawFd;
use std::pin::Pin;
use std::task::{Context, Poll};

use pingora::protocols::l4::stream::Stream as L4Stream;
use pingora::protocols::l4::virt::{VirtualSockOpt, VirtualSocket, VirtualSocketStream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

/// The address of a mesh peer for `port`: `0.0.0.0`, which the pool's address check accepts for
/// any connection (the port only shows in Pingora's messages).
pub fn peer_addr(port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port)
}

/// Give `tls` to Pingora as a virtual socket over its TCP connection's descriptor.
pub fn into_stream(tls: TlsStream<TcpStream>) -> L4Stream {
    let fd = tls.get_ref().0.as_raw_fd();
    L4Stream::from(VirtualSocketStream::with_raw_fd(
        Box::new(MeshSocket { tls }),
        fd,
    ))
}

/// A client mTLS stream as Pingora's virtual socket.
struct MeshSocket {
    tls: TlsStream<TcpStream>,
}

impl std::fmt::Debug for MeshSocket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeshSocket")
            .field("tcp", self.tls.get_ref().0)
            .finish()
    }
}

impl AsyncRead for MeshSocket {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().tls).poll_read(cx, buf)
    }
}

impl AsyncWrite for MeshSocket {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().tls).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().tls).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().tls).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().tls).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.tls.is_write_vectored()
    }
}

impl VirtualSocket for MeshSocket {
    fn set_socket_option(&self, opt: VirtualSockOpt) -> std::io::Result<()> {
        let tcp = self.tls.get_ref().0;
        match opt {
            VirtualSockOpt::NoDelay => tcp.set_nodelay(true),
            VirtualSockOpt::KeepAlive(ka) => {
                pingora::protocols::l4::ext::set_tcp_keepalive(tcp, &ka)
                    .map_err(|e| std::io::Error::other(e.to_string()))
            }
            // Options a later Pingora may add: nothing to do for them here.
            _ => Ok(()),
        }
    }
}

/// Writes only what the socket takes without waiting.
struct NoWait<'a>(&'a TcpStream);

impl std::io::Write for NoWait<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.try_write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for MeshSocket {
    fn drop(&mut self) {
        // close_notify, unless sent already (a shutdown) or the connection failed; best effort,
        // never waiting: a drop cannot.
        let (tcp, conn) = self.tls.get_mut();
        conn.send_close_notify();
        while conn.wants_write() {
            match conn.write_tls(&mut NoWait(tcp)) {
                Ok(n) if n > 0 => {}
                _ => break,
            }
        }
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
                .push(rcgen::DnType::CommonName, "pooled test mesh root");
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
                p.matches_connection(s.id(), s.get_socket_digest().as_deref()),
                "use {i}: the stream passes the pool's peer check"
            );
            // The stream's id is the TCP connection to the server itself (no relay between).
            let to: nix::sys::socket::SockaddrStorage = nix::sys::socket::getpeername(s.id())
                .unwrap_or_else(|e| panic!("use {i}: id {} is no socket: {e}", s.id()));
            assert_eq!(
                to.as_sockaddr_in()
                    .map(|a| SocketAddr::from(std::net::SocketAddrV4::from(*a))),
                Some(addr),
                "use {i}"
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

    /// Pingora's socket options reach the TCP connection under the TLS: a DestinationRule's
    /// `tcpKeepalive` turns on keep-alive probes with its timings.
    #[tokio::test]
    #[allow(unsafe_code)] // borrowing the stream's descriptor for getsockopt(2)
    async fn keepalive_settings_reach_the_tcp_connection() {
        use nix::sys::socket::{getsockopt, sockopt};
        use std::os::fd::BorrowedFd;
        let pki = Pki::new();
        let (addr, _seen, _closed) = echo_server(&pki.material(SERVER_ID)).await;
        let client = identity(pki.material(CLIENT_ID));
        let connector = TransportConnector::new(None);
        let mut p = peer(&client, addr);
        p.options.tcp_keepalive = Some(pingora::protocols::TcpKeepalive {
            idle: Duration::from_secs(61),
            interval: Duration::from_secs(7),
            count: 4,
            user_timeout: Duration::ZERO,
        });
        let (mut s, _) = connector.get_stream(&p).await.unwrap();
        ping(&mut s, "probe").await;
        // SAFETY: the descriptor belongs to `s`, alive for the whole borrow.
        let fd = unsafe { BorrowedFd::borrow_raw(s.id()) };
        assert!(getsockopt(&fd, sockopt::KeepAlive).unwrap());
        assert_eq!(getsockopt(&fd, sockopt::TcpKeepIdle).unwrap(), 61);
        assert_eq!(getsockopt(&fd, sockopt::TcpKeepInterval).unwrap(), 7);
        assert_eq!(getsockopt(&fd, sockopt::TcpKeepCount).unwrap(), 4);
        assert!(getsockopt(&fd, sockopt::TcpNoDelay).unwrap());
    }
}
