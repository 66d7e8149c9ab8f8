//! The listening side of `remora-proxy gateway`: one Pingora service per gateway port, TLS
//! termination on HTTPS ports and terminated TLS ports (the SNI picks the server and its
//! settings in the current plan, [`crate::gateway`]; a terminated TLS port then proxies the
//! decrypted bytes as TCP), then the sidecar's HTTP serving ([`CaptureApp`]'s HTTP/1 and h2c) with
//! [`MeshHttp`] routing through the [`GatewayRouter`].

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use pingora::apps::ServerApp;
use pingora::protocols::l4::stream::Stream as L4Stream;
use pingora::protocols::Stream;
use pingora::server::configuration::ServerConf;
use pingora::server::{Server, ShutdownWatch};
use pingora::services::listening::Service;
use remora_model::gateway::{self as model, ListenerKind, TlsAction};
use tracing::{debug, info};

use crate::detect::{self, Detected, SniffEnd};
use crate::gateway::{GatewayFlags, GatewayRouter, ServerCerts, TlsListener};
use crate::guard::stream_idle::StreamIdleApp;
use crate::guard::{self, Guard};
use crate::http::MeshHttp;
use crate::listen::CaptureApp;
use crate::state::{Direction, Shared};
use crate::upstream::HostResolver;

/// The `ServerApp` of one gateway port.
pub struct GatewayApp {
    port: u16,
    router: Arc<GatewayRouter>,
    /// The sidecar's HTTP serving (head limits, keep-alive, h2c) for the gateway's streams.
    http: Arc<CaptureApp>,
}

/// How long a client has for its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

impl GatewayApp {
    /// Terminate TLS on `stream`: the ClientHello's SNI picks the server of `tls` and its
    /// configuration; a client certificate is checked against the server's `subjectAltNames`
    /// when it lists any. Returns the decrypted stream and the SNI.
    async fn terminate(
        &self,
        stream: Stream,
        tls: &TlsListener,
        peer: Option<SocketAddr>,
    ) -> Result<(Stream, Option<String>), String> {
        let digest = stream.get_socket_digest();
        let fd = stream
            .as_any()
            .downcast_ref::<L4Stream>()
            .map(|s| s.as_raw_fd())
            .unwrap_or(-1);
        let handshake = async {
            let start =
                tokio_rustls::LazyConfigAcceptor::new(rustls::server::Acceptor::default(), stream)
                    .await
                    .map_err(|e| format!("ClientHello: {e}"))?;
            let sni = start.client_hello().server_name().map(str::to_string);
            let Some((server, own)) = tls.config_for(sni.as_deref()) else {
                return Err(format!("no server for SNI {sni:?} on this port"));
            };
            let (cfg, workload) = match (ServerCerts::of(server), own) {
                (ServerCerts::Own, Some(cfg)) => (cfg, false),
                (ServerCerts::Workload, _) => {
                    let m = self
                        .router
                        .shared
                        .identity
                        .as_ref()
                        .and_then(|i| i.current())
                        .ok_or_else(|| {
                            format!(
                                "{}: ISTIO_MUTUAL, and this gateway has no workload certificate",
                                server.describe()
                            )
                        })?;
                    (m.server.clone(), true)
                }
                _ => {
                    return Err(format!(
                        "{}: its TLS settings are not loaded (SNI {sni:?})",
                        server.describe()
                    ))
                }
            };
            let stream = start
                .into_stream(cfg)
                .await
                .map_err(|e| format!("handshake (SNI {sni:?}): {e}"))?;
            if workload {
                // A mesh client: its SPIFFE id from the mesh roots (checked by the handshake)
                // in this trust domain, recorded for the connection's requests.
                let entry = self.mesh_peer(&stream, peer)?;
                return Ok((stream, sni, Some(entry)));
            }
            let wanted = server
                .server
                .tls
                .as_ref()
                .map(|t| t.subject_alt_names.as_slice())
                .unwrap_or_default();
            if !wanted.is_empty() {
                if let Some(leaf) = stream
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|c| c.first())
                {
                    if !crate::upstream::mtls::cert_has_san(leaf.as_ref(), wanted)? {
                        return Err(format!(
                            "{}: the client certificate has none of the subjectAltNames {wanted:?}",
                            server.describe()
                        ));
                    }
                }
            }
            Ok((stream, sni, None))
        };
        let (tls, sni, entry) = match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await {
            Ok(Ok(t)) => t,
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err(format!("handshake timed out after {HANDSHAKE_TIMEOUT:?}")),
        };
        let digest = crate::mtls::socket::digest_of(fd, digest.as_deref());
        let stream: Stream = Box::new(crate::mtls::socket::into_stream(tls, entry, Some(digest)));
        Ok((stream, sni))
    }

    /// The client of an `ISTIO_MUTUAL` server: the SPIFFE id of its certificate (which the
    /// handshake checked against the mesh roots), of this trust domain, recorded in the peers
    /// of the gateway's mTLS connections for as long as the connection is open.
    fn mesh_peer(
        &self,
        stream: &tokio_rustls::server::TlsStream<Stream>,
        peer: Option<SocketAddr>,
    ) -> Result<crate::mtls::inbound::PeerEntry, String> {
        use crate::identity::material::{check_peer_id, spiffe_of};
        let shared = &self.router.shared;
        let conn = stream.get_ref().1;
        let leaf = conn
            .peer_certificates()
            .and_then(|c| c.first())
            .ok_or("ISTIO_MUTUAL: the client sent no certificate")?;
        let principal = spiffe_of(leaf.as_ref())
            .ok_or("ISTIO_MUTUAL: the client certificate carries no SPIFFE id")?;
        let trust_domain = shared
            .identity
            .as_ref()
            .map(|i| i.config.trust_domain.as_str())
            .unwrap_or_default();
        check_peer_id(&principal, trust_domain, None)?;
        let peer = peer.ok_or("ISTIO_MUTUAL: the client's address is unknown")?;
        debug!(port = self.port, %peer, %principal, "ISTIO_MUTUAL client");
        Ok(shared.peers.record(peer, &principal, conn))
    }
}

impl GatewayApp {
    /// A connection on a `TCP`, `PASSTHROUGH` or terminated `TLS` listener: on a passthrough one
    /// the ClientHello is read (and put back) for its SNI; a terminated one comes decrypted
    /// with its SNI, and one whose ClientHello was read already with it (`known`); the model
    /// decides; the sidecar's TCP proxying copies the bytes
    /// (TLS passed through untouched) and writes the metrics and the access log.
    async fn l4(
        &self,
        stream: Stream,
        passthrough: bool,
        known: Option<Option<String>>,
        peer: Option<SocketAddr>,
    ) {
        let local = crate::gateway::local_addr(stream.get_socket_digest().as_deref())
            .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], self.port)));
        let (stream, sni) = if let Some(sni) = known {
            (stream, sni)
        } else if passthrough {
            let wait = self.router.shared.settings.http_first_byte_timeout;
            match detect::sniff(stream, wait.max(HANDSHAKE_TIMEOUT), false).await {
                Ok(s) if s.sni.is_some() => (s.stream, s.sni),
                Ok(_) => {
                    debug!(
                        port = self.port,
                        ?peer,
                        "TLS passthrough: no ClientHello with a server name; closed"
                    );
                    return;
                }
                Err(e) => {
                    debug!(port = self.port, ?peer, "{e}");
                    return;
                }
            }
        } else {
            (stream, None)
        };
        let decision = self.router.route_l4(self.port, sni.as_deref());
        let idle = self.http.guard.limits.idle_timeout;
        crate::tcp::proxy(
            Direction::Outbound,
            &self.router.shared,
            &self.http.resolver,
            idle,
            stream,
            local,
            peer,
            sni,
            Some(crate::tcp::AtGateway(decision)),
        )
        .await;
    }
}

#[async_trait]
impl ServerApp for GatewayApp {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let listener = Direction::Outbound.as_str();
        let guard = &self.http.guard;
        let Some(_slot) = guard.gate(listener).try_acquire(listener) else {
            guard::record(
                &self.router.shared.metrics,
                listener,
                guard::Reject::ConnectionLimit,
                &format!(
                    "{} gateway connections open (--max-outbound-connections); closed",
                    guard.limits.max_connections(listener)
                ),
            );
            return None;
        };
        let peer = stream
            .get_socket_digest()
            .and_then(|d| d.peer_addr().and_then(|a| a.as_inet()).copied());
        let planned = self.router.current();
        let Some(l) = planned.plan.listener(self.port) else {
            debug!(
                port = self.port,
                ?peer,
                "no Gateway server on this port: closed"
            );
            return None;
        };
        let stream = match l.kind {
            ListenerKind::Passthrough | ListenerKind::Tcp => {
                let passthrough = l.kind == ListenerKind::Passthrough;
                self.l4(stream, passthrough, None, peer).await;
                return None;
            }
            ListenerKind::Http => stream,
            ListenerKind::Https | ListenerKind::TlsTerminated | ListenerKind::TlsBySni => {
                let (stream, http) = if l.kind == ListenerKind::TlsBySni {
                    // The ClientHello first (read and put back): its SNI's server passes the
                    // connection through or terminates it.
                    let wait = self.router.shared.settings.http_first_byte_timeout;
                    let sniffed =
                        match detect::sniff(stream, wait.max(HANDSHAKE_TIMEOUT), false).await {
                            Ok(s) => s,
                            Err(e) => {
                                debug!(port = self.port, ?peer, "{e}");
                                return None;
                            }
                        };
                    match model::tls_action(l, sniffed.sni.as_deref()) {
                        TlsAction::PassThrough(_) if sniffed.sni.is_none() => {
                            debug!(
                                port = self.port,
                                ?peer,
                                "TLS passthrough: no ClientHello with a server name; closed"
                            );
                            return None;
                        }
                        TlsAction::PassThrough(_) => {
                            self.l4(sniffed.stream, false, Some(sniffed.sni), peer)
                                .await;
                            return None;
                        }
                        TlsAction::Terminate { http, .. } => (sniffed.stream, http),
                        TlsAction::Close(why) => {
                            debug!(port = self.port, ?peer, "TLS: {why}; closed");
                            return None;
                        }
                    }
                } else {
                    (stream, l.kind == ListenerKind::Https)
                };
                let tls = planned.tls.get(&self.port)?;
                let (stream, sni) = match self.terminate(stream, tls, peer).await {
                    Ok(s) => s,
                    Err(e) => {
                        debug!(port = self.port, ?peer, "TLS: {e}");
                        return None;
                    }
                };
                if !http {
                    self.l4(stream, false, Some(sni), peer).await;
                    return None;
                }
                stream
            }
        };
        let wait = self.router.shared.settings.http_first_byte_timeout;
        let sniffed = match detect::sniff(stream, wait, true).await {
            Ok(s) => s,
            Err(e) => {
                debug!(port = self.port, ?peer, "{e}");
                return None;
            }
        };
        match (sniffed.detected, sniffed.end) {
            (Detected::H2c, _) => self
                .http
                .h2
                .process_new(sniffed.stream, shutdown)
                .await
                .and(None),
            (Detected::Http1, _) | (Detected::Tcp, SniffEnd::Timeout) => {
                self.http.serve_http1(sniffed.stream, shutdown).await;
                None
            }
            (Detected::Tcp, _) => {
                debug!(port = self.port, ?peer, "not HTTP: closed");
                None
            }
        }
    }
}

/// Add the gateway's listening services to `server`: one per port the plan of the first rules
/// needs and per listening port of `--gateway-port-map`, each checked free first (an error
/// names the port).
pub fn add_services(
    server: &mut Server,
    conf: &Arc<ServerConf>,
    shared: Arc<Shared>,
    resolver: Arc<HostResolver>,
    guard: Arc<Guard>,
    flags: GatewayFlags,
    labels: BTreeMap<String, String>,
) -> anyhow::Result<Arc<GatewayRouter>> {
    let router = Arc::new(GatewayRouter::new(shared.clone(), labels, flags.clone()));
    let first = router.current();
    let mut ports: BTreeMap<u16, IpAddr> = flags
        .gateway_port_map
        .0
        .values()
        .map(|p| (*p, flags.gateway_address))
        .collect();
    for l in &first.plan.listeners {
        let ip = l
            .bind
            .as_deref()
            .and_then(|b| b.parse().ok())
            .unwrap_or(flags.gateway_address);
        ports.insert(l.port, ip);
    }
    let proxy = |h2c: bool| {
        let mut p = pingora::proxy::http_proxy(
            conf,
            MeshHttp {
                dir: Direction::Outbound,
                shared: shared.clone(),
                resolver: resolver.clone(),
                gateway: Some(router.clone()),
            },
        );
        let mut opts = pingora::apps::HttpServerOptions::default();
        if h2c {
            opts.h2c = true;
            opts.h2_idle_timeout = Some(guard.limits.idle_timeout);
            p.h2_options = Some(guard.limits.h2_options());
        }
        p.server_options = Some(opts);
        Arc::new(StreamIdleApp {
            inner: Arc::new(p),
            listener: Direction::Outbound.as_str(),
            metrics: shared.metrics.clone(),
            stream_idle: guard.limits.stream_idle_timeout,
            write_timeout: guard.limits.downstream_write_timeout,
        })
    };
    let http = Arc::new(CaptureApp {
        dir: Direction::Outbound,
        shared: shared.clone(),
        h1: proxy(false),
        h2: proxy(true),
        resolver: resolver.clone(),
        guard: guard.clone(),
    });
    for (port, ip) in &ports {
        let addr = SocketAddr::new(*ip, *port);
        std::net::TcpListener::bind(addr).with_context(|| format!("gateway listener {addr}"))?;
        let app = GatewayApp {
            port: *port,
            router: router.clone(),
            http: http.clone(),
        };
        let mut svc = Service::new(format!("gateway {port}"), app);
        svc.add_tcp(&addr.to_string());
        server.add_service(svc);
    }
    router.set_bound(ports.keys().copied().collect());
    info!(
        ports = ?ports.keys().collect::<Vec<_>>(),
        port_map = ?flags.gateway_port_map.0,
        credentials = %flags.gateway_credentials_dir.display(),
        "gateway ports bound"
    );
    Ok(router)
}
