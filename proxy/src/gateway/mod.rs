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
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwapOption;
use remora_model::gateway::{self as model, ListenerKind, Plan, PortMap};
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
}

/// The plan made from one snapshot, with the TLS settings of its listeners.
pub struct Planned {
    snapshot: Arc<Snapshot>,
    pub plan: Plan,
    /// The TLS settings of each TLS listener (by listening port) whose configuration could be
    /// made.
    pub tls: BTreeMap<u16, Arc<rustls::ServerConfig>>,
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
