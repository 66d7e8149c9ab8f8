//! `remora-proxy gateway`: the proxy as Istio's ingress gateway. No capture: it listens on the
//! ports of the `Gateway` servers that select its pod (`--pod-labels-file`), each Gateway port
//! mapped to a listening port (`--gateway-port-map`), terminates TLS for HTTPS and TLS servers
//! (`SIMPLE`, `MUTUAL`, `OPTIONAL_MUTUAL`; certificates from `--gateway-credentials-dir`,
//! [`certs`], filled by mounted Secrets or through the API, [`secrets`]), and routes HTTP by the
//! VirtualServices bound to those Gateways, through the sidecar's request steps
//! ([`crate::http::MeshHttp`] with a [`GatewayRouter`]), as an outbound request (`reporter`
//! `source`).
//!
//! The decisions are the model's (`remora_model::gateway`): which servers, on which port,
//! which VirtualService and route. The plan follows the rules and the certificate files: it is
//! made again from each new snapshot, and when a file a TLS server reads has changed (at the
//! first connection or request after the change). Listening ports are bound at start-up.

pub mod certs;
pub mod secrets;

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwapOption;
use remora_model::gateway::{self as model, BoundServer, Listener, ListenerKind, Plan, PortMap};
use remora_model::route::{Decision, RequestInfo};
use tracing::{info, warn};

use crate::rules::Snapshot;
use crate::state::Shared;

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
    /// Where `credentialName` Secrets come from: `files` (mounted into
    /// `--gateway-credentials-dir` by the Deployment) or `api` (the Secrets of the gateway's
    /// namespace read through the Kubernetes API and written there, [`secrets`]).
    #[arg(long, env = "REMORA_GATEWAY_CREDENTIALS_SOURCE", default_value = "files", value_parser = ["files", "api"])]
    pub gateway_credentials_source: String,
}

/// The plan made from one snapshot, with the TLS settings of its servers.
pub struct Planned {
    snapshot: Arc<Snapshot>,
    pub plan: Plan,
    /// The TLS listeners, by listening port.
    pub tls: BTreeMap<u16, TlsListener>,
    /// The certificate files the TLS settings came from (or would come from), as they were:
    /// when one changes, the plan is made again.
    stamps: Vec<(PathBuf, Option<Stamp>)>,
    /// When the files were last looked at.
    checked: Mutex<Instant>,
}

/// What identifies a file's content cheaply: its inode and modification time (a kubelet
/// Secret update swaps the `..data` symlink: new files, new inodes).
type Stamp = (u64, Option<SystemTime>);

fn stamp(p: &Path) -> Option<Stamp> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(p)
        .ok()
        .map(|m| (m.ino(), m.modified().ok()))
}

/// How often the certificate files are looked at (on a connection or request, not by a timer).
const CERT_CHECK_EVERY: Duration = Duration::from_secs(1);

impl Planned {
    /// The configuration this plan has for the same server (same Gateway, same entry of
    /// `spec.servers`, same TLS settings) on listening port `port`.
    fn config_of(&self, port: u16, server: &BoundServer) -> Option<Arc<rustls::ServerConfig>> {
        let t = self.tls.get(&port)?;
        let i = t.listener.servers.iter().position(|b| b == server)?;
        t.configs.get(i).cloned().flatten()
    }

    /// The certificate this plan shows for the same server on listening port `port`.
    fn cert_of(
        &self,
        port: u16,
        server: &BoundServer,
    ) -> Option<remora_model::dump::ServedCertificateDump> {
        let t = self.tls.get(&port)?;
        let i = t.listener.servers.iter().position(|b| b == server)?;
        t.certs.get(i).cloned().flatten()
    }

    /// Are the certificate files still those the plan read? Looked at once a second at most.
    fn files_unchanged(&self) -> bool {
        let Ok(mut checked) = self.checked.try_lock() else {
            return true;
        };
        if checked.elapsed() < CERT_CHECK_EVERY {
            return true;
        }
        *checked = Instant::now();
        self.stamps.iter().all(|(p, s)| stamp(p) == *s)
    }
}

/// A TLS listener: one rustls configuration per server that terminates with certificates of
/// its own (`None`: that server is down, or it needs none: passed through, or `ISTIO_MUTUAL`
/// with the workload certificate), and which servers are down.
pub struct TlsListener {
    pub listener: Listener,
    pub configs: Vec<Option<Arc<rustls::ServerConfig>>>,
    pub down: Vec<bool>,
    /// The certificate each server shows, as loaded (for `/config_dump`).
    pub certs: Vec<Option<remora_model::dump::ServedCertificateDump>>,
}

/// How a server of a TLS listener gets its rustls configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServerCerts {
    /// Passed through: none.
    None,
    /// `credentialName` or the file paths.
    Own,
    /// `ISTIO_MUTUAL`: the gateway's workload certificate, mesh client certificates required.
    Workload,
}

impl ServerCerts {
    pub fn of(b: &BoundServer) -> ServerCerts {
        let mode = b.server.tls.as_ref().and_then(|t| t.mode);
        match model::server_kind(&b.server) {
            Some(ListenerKind::Https | ListenerKind::TlsTerminated)
                if mode == Some(model::TlsMode::IstioMutual) =>
            {
                ServerCerts::Workload
            }
            Some(ListenerKind::Https | ListenerKind::TlsTerminated) => ServerCerts::Own,
            _ => ServerCerts::None,
        }
    }
}

impl TlsListener {
    /// The server an SNI name reaches and its own configuration (`None`: no server has that
    /// name; `Some((server, None))`: it has no configuration of its own, see [`ServerCerts`]).
    pub fn config_for(
        &self,
        sni: Option<&str>,
    ) -> Option<(&BoundServer, Option<Arc<rustls::ServerConfig>>)> {
        let chosen = model::server_for(&self.listener, sni)?;
        let i = self
            .listener
            .servers
            .iter()
            .position(|b| std::ptr::eq(b, chosen))?;
        Some((chosen, self.configs.get(i).cloned().flatten()))
    }
}

/// The gateway's routing state: its pod labels and flags, and the plan of the current rules.
pub struct GatewayRouter {
    pub shared: Arc<Shared>,
    labels: BTreeMap<String, String>,
    pub flags: GatewayFlags,
    /// The ports bound at start-up.
    bound: Mutex<BTreeSet<u16>>,
    current: ArcSwapOption<Planned>,
    /// One plan is made at a time (and logged once).
    building: Mutex<()>,
    /// `remora_gateway_servers{state}`: the selected Gateways' servers of the current plan,
    /// `served`, `down` (TLS settings not loaded: a missing or bad Secret) or `not_served`
    /// (left out: a kind not served yet, a conflict).
    servers: Option<prometheus::IntGaugeVec>,
}

/// The `state` label's whole set of `remora_gateway_servers`.
pub const SERVER_STATES: [&str; 3] = ["served", "down", "not_served"];

/// How often [`GatewayRouter::refresh`] makes the plan again if the rules or certificate files
/// changed, so a Secret fixed or broken shows in the log and the metric without traffic.
pub const REFRESH_EVERY: Duration = Duration::from_secs(2);

impl GatewayRouter {
    pub fn new(
        shared: Arc<Shared>,
        labels: BTreeMap<String, String>,
        flags: GatewayFlags,
    ) -> GatewayRouter {
        let servers = prometheus::IntGaugeVec::new(
            prometheus::Opts::new(
                "remora_gateway_servers",
                "Servers of the Gateways selecting this gateway, by state: served, down (TLS \
                 settings not loaded: a missing or invalid credentialName Secret) or not_served \
                 (left out, see the log)",
            ),
            &["state"],
        )
        .and_then(|g| {
            shared.metrics.registry().register(Box::new(g.clone()))?;
            Ok(g)
        });
        let servers = match servers {
            Ok(g) => Some(g),
            Err(e) => {
                warn!("remora_gateway_servers not registered: {e}");
                None
            }
        };
        GatewayRouter {
            shared,
            labels,
            flags,
            bound: Mutex::new(BTreeSet::new()),
            current: ArcSwapOption::const_empty(),
            building: Mutex::new(()),
            servers,
        }
    }

    /// `/config_dump`'s `gateway` section: the current plan and which servers are down.
    pub fn dump(&self) -> remora_model::dump::GatewayDump {
        let planned = self.current();
        model::dump(
            &planned.plan,
            &planned.snapshot.gateway_virtual_services,
            |port, i| {
                planned
                    .tls
                    .get(&port)
                    .is_some_and(|t| t.down.get(i).copied().unwrap_or(false))
            },
            |port, i| {
                planned
                    .tls
                    .get(&port)
                    .and_then(|t| t.certs.get(i).cloned().flatten())
            },
        )
    }

    /// Make the plan again every [`REFRESH_EVERY`] when the rules or a certificate file
    /// changed (the same check a connection makes), for ever.
    pub async fn refresh(self: Arc<Self>) {
        loop {
            tokio::time::sleep(REFRESH_EVERY).await;
            let me = self.clone();
            // Reading certificate files blocks: off the runtime's thread.
            let _ = tokio::task::spawn_blocking(move || me.current()).await;
        }
    }

    /// Record the ports bound at start-up.
    pub fn set_bound(&self, ports: BTreeSet<u16>) {
        if let Ok(mut b) = self.bound.lock() {
            *b = ports;
        }
    }

    /// The ports bound at start-up.
    pub fn ports(&self) -> Vec<u16> {
        self.bound
            .lock()
            .map(|b| b.iter().copied().collect())
            .unwrap_or_default()
    }

    /// The plan of the current rules (made again when the snapshot or a certificate file
    /// changed).
    pub fn current(&self) -> Arc<Planned> {
        let snap = self.shared.snapshot.load_full();
        if let Some(p) = self.current.load_full() {
            if Arc::ptr_eq(&p.snapshot, &snap) && p.files_unchanged() {
                return p;
            }
        }
        let _one = self.building.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(p) = self.current.load_full() {
            if Arc::ptr_eq(&p.snapshot, &snap) {
                // Made by another caller meanwhile, or only the files changed.
                if p.checked
                    .lock()
                    .is_ok_and(|c| c.elapsed() < CERT_CHECK_EVERY)
                    && p.stamps.iter().all(|(f, s)| stamp(f) == *s)
                {
                    return p;
                }
                info!("gateway certificate files changed: reading them again");
            }
        }
        let previous = self.current.load_full();
        let p = Arc::new(self.build(snap, previous.as_deref()));
        self.current.store(Some(p.clone()));
        p
    }

    /// Plan the listeners of `snap`, read the TLS servers' certificates, and log what is served
    /// and what is not (one line each).
    fn build(&self, snap: Arc<Snapshot>, previous: Option<&Planned>) -> Planned {
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
        let mut stamps = Vec::new();
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
            if !l.kind.terminates_tls() {
                continue;
            }
            let dir = &self.flags.gateway_credentials_dir;
            let mut configs = Vec::new();
            let mut down = Vec::new();
            let mut served = Vec::new();
            for b in &l.servers {
                match ServerCerts::of(b) {
                    ServerCerts::None => {
                        configs.push(None);
                        down.push(false);
                        served.push(None);
                        continue;
                    }
                    ServerCerts::Workload => {
                        let no_identity = self.shared.identity.is_none();
                        if no_identity {
                            warn!(
                                "{} (port {}): ISTIO_MUTUAL needs the gateway's workload certificate, and this gateway has no workload identity (--ca-address off): this server is down",
                                b.describe(),
                                b.server.port
                            );
                        }
                        configs.push(None);
                        down.push(no_identity);
                        served.push(None);
                        continue;
                    }
                    ServerCerts::Own => {}
                }
                let t = b.server.tls.clone().unwrap_or_default();
                stamps.extend(certs::watched(dir, &t).into_iter().map(|p| {
                    let s = stamp(&p);
                    (p, s)
                }));
                let loaded = certs::files_for(dir, &t).and_then(|f| {
                    Ok((certs::server_config(&t, &f)?, certs::served_certificate(&f)))
                });
                let cfg = match loaded {
                    Ok((cfg, cert)) => {
                        served.push(cert);
                        Some(cfg)
                    }
                    Err(e) => {
                        // A Secret caught mid-update keeps the settings read before, if any;
                        // a Secret deleted (its directory gone) takes its server down.
                        let before = previous
                            .filter(|_| !certs::secret_gone(dir, &t))
                            .and_then(|p| p.config_of(l.port, b));
                        served.push(
                            previous
                                .filter(|_| before.is_some())
                                .and_then(|p| p.cert_of(l.port, b)),
                        );
                        warn!(
                            "{} (port {}): TLS settings not loaded, {}: {e}",
                            b.describe(),
                            b.server.port,
                            if before.is_some() {
                                "keeping those read before"
                            } else {
                                "this server is down"
                            }
                        );
                        before
                    }
                };
                down.push(cfg.is_none());
                configs.push(cfg);
            }
            tls.insert(
                l.port,
                TlsListener {
                    listener: l.clone(),
                    configs,
                    down,
                    certs: served,
                },
            );
        }
        if let Some(g) = &self.servers {
            let all: usize = plan.listeners.iter().map(|l| l.servers.len()).sum();
            let down = tls
                .values()
                .map(|t: &TlsListener| t.down.iter().filter(|d| **d).count())
                .sum::<usize>();
            for (state, n) in [
                ("served", all - down),
                ("down", down),
                ("not_served", plan.not_served.len()),
            ] {
                g.with_label_values(&[state]).set(n as i64);
            }
        }
        Planned {
            snapshot: snap,
            plan,
            tls,
            stamps,
            checked: Mutex::new(Instant::now()),
        }
    }

    /// Route a request from `client` that arrived on the gateway's port `info.dst.port()`: the
    /// model's decision for that listener.
    pub fn route(
        &self,
        snap: &Snapshot,
        info: &RequestInfo<'_>,
        client: Option<IpAddr>,
    ) -> Decision {
        let planned = self.current();
        let Some(l) = planned.plan.listener(info.dst.port()) else {
            return Decision::Deny {
                status: 404,
                reason: format!("no Gateway server on port {}", info.dst.port()),
            };
        };
        // A port of several TLS modes serves HTTP only after terminating TLS.
        let tls = matches!(l.kind, ListenerKind::Https | ListenerKind::TlsBySni);
        model::route(snap, l, info, tls, client, &mut rand::thread_rng())
    }
}

impl GatewayRouter {
    /// Route a connection on the gateway's listening port `port` (a `TCP`, `PASSTHROUGH` or
    /// terminated `TLS` listener; `sni`: the ClientHello's name): the model's decision.
    pub fn route_l4(&self, port: u16, sni: Option<&str>) -> Decision {
        let planned = self.current();
        let Some(l) = planned.plan.listener(port) else {
            return Decision::Deny {
                status: 404,
                reason: format!("no Gateway server on port {port}"),
            };
        };
        let snap = self.shared.snapshot.load();
        match model::route_l4(&snap, l, sni, &mut rand::thread_rng()) {
            // Never the connection's own destination: that is the gateway itself.
            Decision::Passthrough => Decision::Deny {
                status: 404,
                reason: format!("no destination for a connection on port {}", l.gateway_port),
            },
            d => d,
        }
    }
}

/// The client's address of a gateway connection.
pub fn peer_ip(digest: Option<&pingora::protocols::SocketDigest>) -> Option<IpAddr> {
    digest
        .and_then(|d| d.peer_addr())
        .and_then(|a| a.as_inet())
        .map(|a| a.ip())
}

/// The address a gateway connection came to (the gateway's listening address and port).
pub fn local_addr(digest: Option<&pingora::protocols::SocketDigest>) -> Option<SocketAddr> {
    digest
        .and_then(|d| d.local_addr())
        .and_then(|a| a.as_inet())
        .copied()
}

#[cfg(test)]
mod tests {
    use crate::cli::{Cli, Command};
    use clap::Parser;

    fn parse(args: &[&str]) -> Result<super::GatewayFlags, String> {
        let mut v = vec!["remora-proxy", "gateway"];
        v.extend_from_slice(args);
        match Cli::try_parse_from(v).map_err(|e| e.to_string())?.command {
            Command::Gateway(g) => Ok(g.gateway),
            _ => Err("not the gateway".into()),
        }
    }

    #[test]
    fn flags_and_their_errors() {
        let d = parse(&[]).unwrap();
        assert_eq!(
            d.gateway_port_map,
            remora_model::gateway::PortMap::default()
        );
        assert_eq!(d.gateway_address.to_string(), "0.0.0.0");
        let m = parse(&["--gateway-port-map", "8080=18080,443=18443"]).unwrap();
        assert_eq!(m.gateway_port_map.listen_port(8080), 18080);
        assert_eq!(m.gateway_port_map.listen_port(80), 80);
        let e = parse(&["--gateway-port-map", "80"]).unwrap_err();
        assert!(e.contains("--gateway-port-map"), "{e}");
        assert!(e.contains("\"80\" is not SERVICE_PORT=LISTEN_PORT"), "{e}");
        let e = parse(&["--gateway-address", "everywhere"]).unwrap_err();
        assert!(e.contains("--gateway-address"), "{e}");
    }
}
