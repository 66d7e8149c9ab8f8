//! The capture listeners (outbound 127.0.0.1:15001, inbound 0.0.0.0:15006).
//!
//! Connections arrive through iptables REDIRECT. For each one: recover the original destination
//! (`SO_ORIGINAL_DST` / `IP6T_SO_ORIGINAL_DST`), refuse loops to the proxy itself, decide the
//! protocol (rules first, then sniffing), and hand HTTP to Pingora's HTTP proxy or copy opaque
//! TCP bytes to the destination.

use crate::detect::{self, Detected, SniffEnd};
use crate::guard::stream_idle::StreamIdleApp;
use crate::guard::{self, Guard, HeadRead, Reject};
use crate::http::MeshHttp;
use crate::rules::Protocol;
use crate::state::{Direction, Settings, Shared};
use crate::tcp;
use crate::upstream;
use async_trait::async_trait;
use pingora::apps::ServerApp;
use pingora::protocols::Stream;
use pingora::proxy::HttpProxy;
use pingora::server::ShutdownWatch;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;

use tracing::{debug, info, warn};

/// Is `dst` the proxy's own capture listener (which would make a loop)?
/// `local` is the address the connection was accepted on.
pub fn is_self_destination(
    dst: SocketAddr,
    local: Option<SocketAddr>,
    listeners: &[SocketAddr],
) -> bool {
    if Some(dst) == local {
        return true;
    }
    listeners.iter().any(|l| {
        l.port() == dst.port()
            && (l.ip() == dst.ip()
                || dst.ip().is_loopback()
                || dst.ip().is_unspecified()
                || (l.ip().is_unspecified() && local.is_some_and(|a| a.ip() == dst.ip())))
    })
}

/// The `ServerApp` behind each capture listener.
pub struct CaptureApp {
    pub dir: Direction,
    pub shared: Arc<Shared>,
    /// HTTP/1.1 proxy (h2c off: we already know it is HTTP/1), each request under the stream
    /// idle and downstream write timeouts.
    pub h1: Arc<StreamIdleApp<HttpProxy<MeshHttp>>>,
    /// h2c proxy (prior knowledge: the preface was seen), each stream under the same timeouts.
    pub h2: Arc<StreamIdleApp<HttpProxy<MeshHttp>>>,
    /// DNS for TCP routes to hosts without endpoints.
    pub resolver: Arc<upstream::HostResolver>,
    /// Abuse limits and the connection caps (one `Guard` shared by every listener).
    pub guard: Arc<Guard>,
}

impl CaptureApp {
    fn refuse(&self, reason: &'static str, detail: String) {
        warn!(
            listener = self.dir.as_str(),
            reason, "refused connection: {detail}"
        );
        self.shared
            .metrics
            .refused_connections
            .with_label_values(&[self.dir.as_str(), reason])
            .inc();
    }
}

#[async_trait]
impl ServerApp for CaptureApp {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        // This listener's connection cap comes first: nothing is read from a connection over it.
        let listener = self.dir.as_str();
        let Some(_slot) = self.guard.gate(listener).try_acquire(listener) else {
            guard::record(
                &self.shared.metrics,
                listener,
                guard::Reject::ConnectionLimit,
                &format!(
                    "{} {listener} connections open (--max-{listener}-connections); closed",
                    self.guard.limits.max_connections(listener)
                ),
            );
            return None;
        };
        let digest = stream.get_socket_digest();
        let local = digest
            .as_ref()
            .and_then(|d| d.local_addr())
            .and_then(|a| a.as_inet())
            .copied();
        let peer = digest
            .as_ref()
            .and_then(|d| d.peer_addr())
            .and_then(|a| a.as_inet())
            .copied();
        let Some(dst) = self.shared.original_dst(self.dir, digest.as_deref()) else {
            self.refuse(
                "no_original_dst",
                format!("from {peer:?}: no original destination (not redirected by iptables?)"),
            );
            return None;
        };
        if is_self_destination(dst, local, &self.shared.all_listener_addrs()) {
            self.refuse(
                "loop",
                format!("from {peer:?}: original destination {dst} is the proxy's own listener"),
            );
            return None;
        }
        let Classified {
            stream,
            detected,
            how,
            sni,
            alpn,
        } = self.classify(stream, dst, peer).await?;
        // Inbound: a sidecar's mTLS is terminated here, and PeerAuthentication applies.
        let (stream, detected, how, sni) = if self.dir == Direction::Inbound {
            match self
                .inbound_security(stream, detected, how, sni, &alpn, dst, peer)
                .await
            {
                Some(x) => x,
                None => return None,
            }
        } else {
            (stream, detected, how, sni)
        };
        debug!(listener = self.dir.as_str(), %dst, ?peer, ?detected, how, ?sni, "connection classified");
        match detected {
            // h2c: Pingora serves the whole connection (h2 settings carry the limits).
            Detected::H2c => self.h2.process_new(stream, shutdown).await.and(None),
            Detected::Http1 => {
                self.serve_http1(stream, shutdown).await;
                None
            }
            Detected::Tcp => {
                let idle = self.guard.limits.idle_timeout;
                tcp::proxy(
                    self.dir,
                    &self.shared,
                    &self.resolver,
                    idle,
                    stream,
                    dst,
                    peer,
                    sni,
                    None,
                )
                .await;
                None
            }
        }
    }
}

/// A connection after protocol detection.
struct Classified {
    stream: Stream,
    detected: Detected,
    how: &'static str,
    sni: Option<String>,
    alpn: Vec<Vec<u8>>,
}

impl CaptureApp {
    /// Decide what `stream` (to `dst`) carries: the rules first, then its first bytes. `None`
    /// when it was refused (a port declared HTTP that got other bytes) or could not be read.
    async fn classify(
        &self,
        stream: Stream,
        dst: SocketAddr,
        peer: Option<SocketAddr>,
    ) -> Option<Classified> {
        let s = &self.shared.settings;
        let declared = self.shared.snapshot.load().port_protocol(dst, None);
        // Inbound with a workload identity, a port declared TCP is still looked at (bounded):
        // a sidecar's mTLS arrives there as TLS, to be terminated.
        let mesh_inbound = self.dir == Direction::Inbound && self.shared.identity.is_some();
        let (wait, is_http_port) = match declared {
            Some(Protocol::Tcp) if mesh_inbound => (Some(s.sniff_timeout), false),
            Some(Protocol::Tcp) => (None, false),
            // TLS: look for the SNI (bounded), never for HTTP.
            Some(Protocol::Tls) => (Some(s.sniff_timeout), false),
            Some(_) => (Some(s.http_first_byte_timeout), true),
            None => (Some(s.sniff_timeout), false),
        };
        let (stream, detected, how, sni, alpn) = match wait {
            None => (stream, Detected::Tcp, "rules", None, Vec::new()),
            Some(wait) => match detect::sniff(stream, wait, is_http_port).await {
                Ok(x) => {
                    let how = match (declared, x.end) {
                        (Some(_), _) => "rules+sniff",
                        (None, SniffEnd::Timeout) => "sniff-timeout",
                        (None, SniffEnd::Closed) => "sniff-closed",
                        (None, _) => "sniff",
                    };
                    let detected = match (declared, x.detected, x.end) {
                        (Some(Protocol::Tls | Protocol::Tcp), _, _) => Detected::Tcp,
                        (_, Detected::Tcp, SniffEnd::Timeout) if is_http_port => Detected::Http1,
                        (_, d, _) => d,
                    };
                    let mesh_tls = self.dir == Direction::Inbound
                        && x.alpn
                            .iter()
                            .any(|a| crate::identity::material::is_mesh_alpn(a));
                    if is_http_port && detected == Detected::Tcp && !mesh_tls {
                        // A port the rules declare HTTP speaks HTTP: never bypass the HTTP
                        // limits and policies as raw TCP.
                        if x.end == SniffEnd::Bytes {
                            guard::record(
                                &self.shared.metrics,
                                self.dir.as_str(),
                                Reject::NotHttp,
                                &format!("from {peer:?} to {dst}: port declared HTTP, the client sent non-HTTP bytes"),
                            );
                            let mut s = x.stream;
                            if let Some(a) = guard::reject::answer(Reject::NotHttp) {
                                let _ = tokio::time::timeout(Duration::from_secs(1), async {
                                    let _ = s.write_all(&a).await;
                                    let _ = s.shutdown().await;
                                })
                                .await;
                            }
                        }
                        return None;
                    }
                    (x.stream, detected, how, x.sni, x.alpn)
                }
                Err(e) => {
                    warn!(%dst, "dropping connection: {e}");
                    return None;
                }
            },
        };
        Some(Classified {
            stream,
            detected,
            how,
            sni,
            alpn,
        })
    }

    /// Inbound mTLS and PeerAuthentication: terminate a sidecar's TLS (Istio's ALPN values)
    /// and classify what it carries; refuse plain text where the mode is `STRICT`. `None` when
    /// the connection was refused.
    #[allow(clippy::too_many_arguments)]
    async fn inbound_security(
        &self,
        stream: Stream,
        detected: Detected,
        how: &'static str,
        sni: Option<String>,
        alpn: &[Vec<u8>],
        dst: SocketAddr,
        peer: Option<SocketAddr>,
    ) -> Option<(Stream, Detected, &'static str, Option<String>)> {
        let mesh_tls = alpn
            .iter()
            .any(|a| crate::identity::material::is_mesh_alpn(a));
        let mode = self.shared.snapshot.load().mtls_mode(dst.port());
        let identity = self.shared.identity.as_ref();
        if !mesh_tls {
            if mode.mode == remora_model::security::MtlsMode::Strict {
                self.refuse(
                    "mtls_required",
                    format!(
                        "from {peer:?} to {dst}: plain text refused, PeerAuthentication {} requires mutual TLS (STRICT){}",
                        mode.policy.as_deref().unwrap_or("?"),
                        if identity.is_none() { "; this proxy has no workload identity (--ca-address off)" } else { "" }
                    ),
                );
                return None;
            }
            return Some((stream, detected, how, sni));
        }
        let Some(identity) = identity else {
            // No identity: the bytes go to the app as they are (as before mTLS existed).
            return Some((stream, detected, how, sni));
        };
        let Some(material) = identity.current() else {
            self.refuse(
                "mtls_no_certificate",
                format!("from {peer:?} to {dst}: a sidecar's mTLS, but this proxy has no workload certificate yet"),
            );
            return None;
        };
        let timeout = self
            .shared
            .settings
            .connect_timeout
            .min(Duration::from_secs(10));
        let (tls, info) = match crate::mtls::inbound::terminate(
            stream,
            &material,
            &identity.config.trust_domain,
            &self.shared.peers,
            timeout,
        )
        .await
        {
            Ok(x) => x,
            Err(e) => {
                self.shared
                    .metrics
                    .mtls_failures
                    .with_label_values(&["inbound", "handshake"])
                    .inc();
                self.refuse("mtls_handshake", format!("from {peer:?} to {dst}: {e}"));
                return None;
            }
        };
        debug!(%dst, ?peer, principal = %info.principal, tls = info.tls_version, alpn = ?info.alpn, "mTLS from a sidecar terminated");
        let c = self.classify(Box::new(tls), dst, peer).await?;
        Some((c.stream, c.detected, "mtls+sniff", c.sni))
    }
}

impl CaptureApp {
    /// Serve an HTTP/1 connection request by request: each request head is read under the
    /// abuse limits (`guard::read_head`) before Pingora parses it; between requests the idle
    /// timeout applies. This is Pingora's own keep-alive loop (`ServerApp for HttpServerApp`)
    /// with the guard in front of every request.
    pub(crate) async fn serve_http1(&self, stream: Stream, shutdown: &ShutdownWatch) {
        let listener = self.dir.as_str();
        let limits = &self.guard.limits;
        let keepalive_secs = limits.idle_timeout.as_secs().max(1);
        let mut next: Option<(Stream, Option<pingora::apps::HttpPersistentSettings>)> =
            Some((stream, None));
        let mut keepalive = false;
        while let Some((stream, persisted)) = next.take() {
            let stream =
                match guard::read_head(stream, limits, &self.shared.metrics, listener, keepalive)
                    .await
                {
                    HeadRead::Ready(s) => s,
                    HeadRead::Closed | HeadRead::Rejected(_) => return,
                };
            let mut session = pingora::protocols::http::ServerSession::new_http1(stream);
            match persisted {
                Some(p) => p.apply_to_session(&mut session),
                None => {
                    session.set_keepalive(if *shutdown.borrow() {
                        None
                    } else {
                        Some(keepalive_secs)
                    });
                    session.set_keepalive_reuses_remaining(
                        self.h1
                            .inner
                            .server_options
                            .as_ref()
                            .and_then(|o| o.keepalive_request_limit),
                    );
                }
            }
            let reused = self.h1.process(session, shutdown).await;
            if *shutdown.borrow() {
                return;
            }
            next = reused.map(|r| {
                let (s, p) = r.consume();
                (s, p)
            });
            keepalive = true;
        }
    }
}

/// The default inbound source address (see docs/architecture.md).
pub const INBOUND_SOURCE: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 6));

/// Log what the listeners are and how connections will be treated.
pub fn log_listeners(s: &Settings) {
    info!(
        outbound = %s.outbound_addr,
        inbound = %s.inbound_addr,
        outbound6 = ?s.outbound_addr6,
        inbound6 = ?s.inbound_addr6,
        sniff_timeout_ms = s.sniff_timeout.as_millis() as u64,
        inbound_source = ?s.inbound_bind,
        fixed_outbound_target = ?s.fixed_outbound_target,
        fixed_inbound_target = ?s.fixed_inbound_target,
        "capture listeners configured"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loop_detection_table() {
        let out: SocketAddr = "127.0.0.1:15001".parse().unwrap();
        let inb: SocketAddr = "0.0.0.0:15006".parse().unwrap();
        let ls = [out, inb];
        let cases: &[(&str, Option<&str>, bool)] = &[
            ("127.0.0.1:15001", Some("127.0.0.1:15001"), true),
            ("127.0.0.1:15001", None, true),
            ("127.0.0.5:15006", None, true),
            ("10.1.2.3:15006", Some("10.1.2.3:15006"), true),
            ("10.1.2.3:15006", Some("127.0.0.1:15006"), false),
            ("0.0.0.0:15006", None, true),
            ("10.1.2.3:8080", Some("10.1.2.3:15006"), false),
            ("127.0.0.1:8080", Some("127.0.0.1:15001"), false),
            ("93.184.216.34:15001", Some("127.0.0.1:15001"), false),
            ("[::1]:15001", None, true),
        ];
        for (dst, local, want) in cases {
            let dst: SocketAddr = dst.parse().unwrap();
            let local = local.map(|l| l.parse().unwrap());
            assert_eq!(
                is_self_destination(dst, local, &ls),
                *want,
                "{dst} {local:?}"
            );
        }
    }
}
