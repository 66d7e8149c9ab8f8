//! `remora-proxy gateway`: the proxy as Istio's ingress gateway. No capture: it listens on the
//! ports of the `Gateway` servers that select its pod (`--pod-labels-file`), each Gateway port
//! mapped to a listening port (`--gateway-port-map`), terminates TLS for HTTPS `SIMPLE`
//! servers (certificates from `--gateway-credentials-dir`), and routes HTTP by the
//! VirtualServices bound to those Gateways, through the sidecar's request steps
//! ([`crate::http::MeshHttp`] with a [`GatewayRouter`]), as an outbound request (`reporter`
//! `source`).
//!
//! The decisions are the model's (`remora_model::gateway`): which servers, on which port,
//! which VirtualService and route. The plan follows the rules: it is made again from each new
//! snapshot (at the first connection after a change). Listening ports are bound at start-up.

pub mod certs;

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use arc_swap::ArcSwapOption;
use async_trait::async_trait;
use pingora::apps::ServerApp;
use pingora::protocols::l4::stream::Stream as L4Stream;
use pingora::protocols::Stream;
use pingora::server::configuration::ServerConf;
use pingora::server::{Server, ShutdownWatch};
use pingora::services::listening::Service;
use remora_model::gateway::{self as model, ListenerKind, Plan, PortMap};
use remora_model::route::{Decision, RequestInfo};
use tracing::{debug, info, warn};

use crate::detect::{self, Detected, SniffEnd};
use crate::guard::stream_idle::StreamIdleApp;
use crate::guard::{self, Guard};
use crate::http::MeshHttp;
use crate::listen::CaptureApp;
use crate::rules::Snapshot;
use crate::state::{Direction, Shared};
use crate::upstream::HostResolver;

/// The gateway's own flags (the others are `run`'s).
#[derive(clap::Args, Clone, Debug)]
pub struct GatewayFlags {
    /// Gateway ports (the gateway Service's ports) and the ports the proxy listens on for
    /// them: `SERVICE_PORT=LISTEN_PORT`, comma-separated. A Gateway port not listed is
    /// listened on as its own number.
    #[arg(long, env = "REMORA_GATEWAY_PORT_MAP", default_value = "80=8080,443=8443", value_parser = PortMap::parse)]
    pub gateway_port_map: PortMap,
    /// The address of the servers without `bind`.
    #[arg(long, env = "REMORA_GATEWAY_ADDRESS", default_value = "0.0.0.0")]
    pub gateway_address: IpAddr,
    /// Mounted Secrets for `tls.credentialName`: `<dir>/<credentialName>/` holding `tls.crt`
    /// and `tls.key` (or Istio's `cert` and `key`).
    #[arg(
        long,
        env = "REMORA_GATEWAY_CREDENTIALS_DIR",
        default_value = "/etc/remora/gateway-credentials"
    )]
    pub gateway_credentials_dir: PathBuf,
}

/// The plan made from one snapshot, with the TLS settings of its listeners.
pub struct Planned {
    snapshot: Arc<Snapshot>,
    pub plan: Plan,
    tls: BTreeMap<u16, Arc<rustls::ServerConfig>>,
}

/// The gateway's routing state: its pod labels and flags, and the plan of the current rules.
pub struct GatewayRouter {
    shared: Arc<Shared>,
    labels: BTreeMap<String, String>,
    flags: GatewayFlags,
    /// The ports bound at start-up.
    bound: Mutex<BTreeSet<u16>>,
    current: ArcSwapOption<Planned>,
    /// One plan is made at a time (and logged once).
    building: Mutex<()>,
}

impl GatewayRouter {
    pub fn new(
        shared: Arc<Shared>,
        labels: BTreeMap<String, String>,
        flags: GatewayFlags,
    ) -> GatewayRouter {
        GatewayRouter {
            shared,
            labels,
            flags,
            bound: Mutex::new(BTreeSet::new()),
            current: ArcSwapOption::const_empty(),
            building: Mutex::new(()),
        }
    }

    /// The ports bound at start-up.
    pub fn ports(&self) -> Vec<u16> {
        self.bound
            .lock()
            .map(|b| b.iter().copied().collect())
            .unwrap_or_default()
    }

    /// The plan of the current rules (made again when the snapshot changed).
    pub fn current(&self) -> Arc<Planned> {
        let snap = self.shared.snapshot.load_full();
        if let Some(p) = self.current.load_full() {
            if Arc::ptr_eq(&p.snapshot, &snap) {
                return p;
            }
        }
        let _one = self.building.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(p) = self.current.load_full() {
            if Arc::ptr_eq(&p.snapshot, &snap) {
                return p;
            }
        }
        let p = Arc::new(self.build(snap));
        self.current.store(Some(p.clone()));
        p
    }

    /// Plan the listeners of `snap`, read the TLS servers' certificates, and log what is served
    /// and what is not (one line each).
    fn build(&self, snap: Arc<Snapshot>) -> Planned {
        for e in &snap.gateway_errors {
            warn!(
                file = %e.file,
                document = e.document,
                "Gateway not applied: {}: {}",
                e.field,
                e.reason
            );
        }
        let plan = model::plan(&snap.gateways, &self.labels, &self.flags.gateway_port_map);
        if plan.gateways.is_empty() {
            warn!(
                labels = ?self.labels,
                gateways = snap.gateways.len(),
                "no Gateway selects this gateway's pod labels: nothing is served"
            );
        } else {
            info!(gateways = ?plan.gateways, generation = snap.generation, "Gateways selected");
        }
        for why in &plan.not_served {
            warn!("not served: {why}");
        }
        let bound = self.bound.lock().map(|b| b.clone()).unwrap_or_default();
        let mut tls = BTreeMap::new();
        for l in &plan.listeners {
            let hosts: Vec<String> = l
                .servers
                .iter()
                .flat_map(|b| b.server.hosts.iter().map(|h| h.host.clone()))
                .collect();
            if !bound.is_empty() && !bound.contains(&l.port) {
                warn!(
                    port = l.port,
                    gateway_port = l.gateway_port,
                    "a Gateway server needs port {} which was not bound at start-up (ports are bound when the gateway starts): restart the gateway to serve it",
                    l.port
                );
                continue;
            }
            info!(
                port = l.port,
                gateway_port = l.gateway_port,
                kind = ?l.kind,
                ?hosts,
                "gateway listener"
            );
            if l.kind != ListenerKind::HttpsSimple {
                continue;
            }
            for b in &l.servers {
                let Some(t) = &b.server.tls else { continue };
                let unapplied: Vec<&str> = [
                    ("minProtocolVersion", t.min_protocol_version.is_some()),
                    ("maxProtocolVersion", t.max_protocol_version.is_some()),
                    ("cipherSuites", !t.cipher_suites.is_empty()),
                    ("subjectAltNames", !t.subject_alt_names.is_empty()),
                ]
                .iter()
                .filter(|(_, set)| *set)
                .map(|(k, _)| *k)
                .collect();
                if !unapplied.is_empty() {
                    warn!(
                        "{}: tls.{} not applied yet (TLS 1.2 and 1.3 with rustls' default cipher suites)",
                        b.describe(),
                        unapplied.join(", tls.")
                    );
                }
            }
            let keys = l
                .servers
                .iter()
                .map(|b| {
                    let tls = b.server.tls.clone().unwrap_or_default();
                    certs::files_for(&self.flags.gateway_credentials_dir, &tls)
                        .and_then(|(c, k)| certs::load(&c, &k))
                        .map_err(|e| {
                            warn!(
                                "{} (port {}): certificate not loaded, this server is down: {e}",
                                b.describe(),
                                b.server.port
                            )
                        })
                        .ok()
                })
                .collect();
            match certs::server_config(certs::SniResolver {
                listener: l.clone(),
                keys,
            }) {
                Ok(cfg) => {
                    tls.insert(l.port, cfg);
                }
                Err(e) => warn!(port = l.port, "TLS listener down: {e}"),
            }
        }
        Planned {
            snapshot: snap,
            plan,
            tls,
        }
    }

    /// Route a request that arrived on the gateway's port `info.dst.port()`: the model's
    /// decision for that listener, with the Gateway port as the request's destination port.
    pub fn route(&self, snap: &Snapshot, info: &RequestInfo<'_>) -> Decision {
        let planned = self.current();
        let Some(l) = planned.plan.listener(info.dst.port()) else {
            return Decision::Deny {
                status: 404,
                reason: format!("no Gateway server on port {}", info.dst.port()),
            };
        };
        let req = RequestInfo {
            authority: info.authority,
            method: info.method,
            path: info.path,
            headers: info.headers,
            dst: SocketAddr::new(info.dst.ip(), l.gateway_port),
        };
        let tls = l.kind == ListenerKind::HttpsSimple;
        model::route(snap, l, &req, tls, &mut rand::thread_rng())
    }
}

/// The address a gateway connection came to (the gateway's listening address and port).
pub fn local_addr(digest: Option<&pingora::protocols::SocketDigest>) -> Option<SocketAddr> {
    digest
        .and_then(|d| d.local_addr())
        .and_then(|a| a.as_inet())
        .copied()
}

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
    async fn terminate(
        &self,
        stream: Stream,
        cfg: Arc<rustls::ServerConfig>,
    ) -> Result<Stream, String> {
        let digest = stream.get_socket_digest();
        let fd = stream
            .as_any()
            .downcast_ref::<L4Stream>()
            .map(|s| s.as_raw_fd())
            .unwrap_or(-1);
        let acceptor = tokio_rustls::TlsAcceptor::from(cfg);
        let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
            Ok(Ok(t)) => t,
            Ok(Err(e)) => return Err(format!("handshake: {e}")),
            Err(_) => return Err(format!("handshake timed out after {HANDSHAKE_TIMEOUT:?}")),
        };
        let digest = crate::mtls::socket::digest_of(fd, digest.as_deref());
        Ok(Box::new(crate::mtls::socket::into_stream(
            tls,
            None,
            Some(digest),
        )))
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
            ListenerKind::Http => stream,
            ListenerKind::HttpsSimple => {
                // No configuration: every server of the port is down (logged with the plan).
                let cfg = planned.tls.get(&self.port)?;
                match self.terminate(stream, cfg.clone()).await {
                    Ok(s) => s,
                    Err(e) => {
                        debug!(port = self.port, ?peer, "TLS: {e}");
                        return None;
                    }
                }
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
    if let Ok(mut b) = router.bound.lock() {
        *b = ports.keys().copied().collect();
    }
    info!(
        ports = ?ports.keys().collect::<Vec<_>>(),
        port_map = ?flags.gateway_port_map.0,
        credentials = %flags.gateway_credentials_dir.display(),
        "gateway ports bound"
    );
    Ok(router)
}
