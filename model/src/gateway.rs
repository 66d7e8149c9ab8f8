//! The gateway proxy's pure decisions on Istio's `Gateway` kind (`crate::rules::gateway`): which
//! Gateways select a gateway pod, on which port each server listens and whether it terminates
//! TLS (the plan), which server a host or SNI reaches, and which gateway-bound VirtualService
//! route applies to a request. No I/O: the proxy (`remora-proxy gateway`) binds the ports,
//! reads the certificates and serves what the plan says.

use std::collections::BTreeMap;

use crate::host::{match_score, split_authority};
use crate::route::{self, Decision, RequestInfo, Via};
pub use crate::route::{bound_to, gateway_ref};
pub use crate::rules::gateway::{
    decode, server_host, Gateway, HostNamespace, Server, ServerHost, ServerProtocol, ServerTls,
    TlsMode,
};
use crate::rules::{Snapshot, VirtualService};

// ------------------------------------------------------------------------------- selection

/// Does `gw` select a pod with these labels? Every selector label must be on the pod. An empty
/// selector selects no gateway pod here (Istio would apply it to every gateway; remora asks for
/// an explicit selector so that a Gateway never lands on a gateway by accident).
pub fn selects(gw: &Gateway, pod_labels: &BTreeMap<String, String>) -> bool {
    !gw.selector.is_empty()
        && gw
            .selector
            .iter()
            .all(|(k, v)| pod_labels.get(k) == Some(v))
}

// ------------------------------------------------------------------------------------- plan

/// Gateway Service ports and the ports the proxy listens on (`--gateway-port-map`). A port not
/// in the map is listened on as its own number (Istio does the same for a Gateway port that is
/// no Service port: Bookinfo's Gateway says 8080, the Service's target port).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortMap(pub BTreeMap<u16, u16>);

impl Default for PortMap {
    /// 80→8080 and 443→8443: no privileged port, no capability.
    fn default() -> Self {
        PortMap(BTreeMap::from([(80, 8080), (443, 8443)]))
    }
}

impl PortMap {
    /// Parse `80=8080,443=8443` (empty: no mapping).
    pub fn parse(text: &str) -> Result<PortMap, String> {
        let mut m = BTreeMap::new();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let Some((a, b)) = part.split_once('=') else {
                return Err(format!(
                    "{part:?} is not SERVICE_PORT=LISTEN_PORT (e.g. 80=8080)"
                ));
            };
            let port = |s: &str| {
                s.trim()
                    .parse::<u16>()
                    .ok()
                    .filter(|p| *p != 0)
                    .ok_or_else(|| format!("{part:?}: {s:?} is not a port number (1-65535)"))
            };
            let (a, b) = (port(a)?, port(b)?);
            if m.insert(a, b).is_some() {
                return Err(format!("{part:?}: port {a} is mapped twice"));
            }
        }
        Ok(PortMap(m))
    }

    /// The port the proxy listens on for Gateway port `number`.
    pub fn listen_port(&self, number: u16) -> u16 {
        self.0.get(&number).copied().unwrap_or(number)
    }
}

/// A server of a selected Gateway, with where it came from.
#[derive(Clone, Debug, PartialEq)]
pub struct BoundServer {
    /// `namespace/name` of its Gateway.
    pub gateway: String,
    pub gateway_namespace: String,
    pub server: Server,
}

impl BoundServer {
    /// `Gateway ns/name spec.servers[i]`, for messages.
    pub fn describe(&self) -> String {
        format!(
            "Gateway {} spec.servers[{}]",
            self.gateway, self.server.index
        )
    }
}

/// What a listening port does with its connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ListenerKind {
    /// Plain HTTP/1.1 and h2c (servers HTTP, HTTP2, GRPC).
    Http,
    /// TLS terminated with the certificate of the server the SNI names (HTTPS `SIMPLE`,
    /// `MUTUAL`, `OPTIONAL_MUTUAL`), then HTTP.
    Https,
    /// TLS passed through, routed by the ClientHello's SNI with `tls` routes (`TLS` or `HTTPS`
    /// servers with `tls.mode: PASSTHROUGH`).
    Passthrough,
    /// Opaque TCP routed with `tcp` routes (`TCP` servers).
    Tcp,
    /// TLS terminated with the certificate of the server the SNI names (`TLS` servers with
    /// `tls.mode` `SIMPLE`, `MUTUAL` or `OPTIONAL_MUTUAL`), then the decrypted bytes routed as
    /// opaque TCP with `tcp` routes, as Istio's gateway does.
    TlsTerminated,
    /// TLS servers of different modes on one port (Istio allows a `PASSTHROUGH` server for one
    /// host beside a `SIMPLE` one for another): the ClientHello's SNI picks the server
    /// ([`tls_action`]), whose kind ([`ListenerKind::Passthrough`], [`ListenerKind::Https`] or
    /// [`ListenerKind::TlsTerminated`]) says what happens to the connection.
    TlsBySni,
}

impl ListenerKind {
    /// The name `/config_dump` and the CLI use.
    pub fn as_str(self) -> &'static str {
        match self {
            ListenerKind::Http => "http",
            ListenerKind::Https => "https",
            ListenerKind::Passthrough => "passthrough",
            ListenerKind::Tcp => "tcp",
            ListenerKind::TlsTerminated => "tls",
            ListenerKind::TlsBySni => "tls-by-sni",
        }
    }

    /// Whether the gateway terminates TLS on this listener, for some servers at least
    /// (certificates from `credentialName`).
    pub fn terminates_tls(self) -> bool {
        matches!(
            self,
            ListenerKind::Https | ListenerKind::TlsTerminated | ListenerKind::TlsBySni
        )
    }

    /// Whether the ClientHello decides what happens to a connection of this kind: the kinds
    /// that can share a port as [`ListenerKind::TlsBySni`].
    fn by_sni(self) -> bool {
        matches!(
            self,
            ListenerKind::Https
                | ListenerKind::TlsTerminated
                | ListenerKind::Passthrough
                | ListenerKind::TlsBySni
        )
    }
}

/// One listening port of the gateway and the servers it serves.
#[derive(Clone, Debug, PartialEq)]
pub struct Listener {
    /// The port the proxy listens on.
    pub port: u16,
    /// The Gateway port (Service port) of its first server.
    pub gateway_port: u16,
    /// `bind` of its servers (`None`: all addresses).
    pub bind: Option<String>,
    pub kind: ListenerKind,
    pub servers: Vec<BoundServer>,
}

/// The gateway's listeners and the servers left out, each with one line saying why.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Plan {
    pub listeners: Vec<Listener>,
    pub not_served: Vec<String>,
    /// `namespace/name` of the selected Gateways.
    pub gateways: Vec<String>,
}

impl Plan {
    /// The listener on port `port`.
    pub fn listener(&self, port: u16) -> Option<&Listener> {
        self.listeners.iter().find(|l| l.port == port)
    }
}

/// The kind of listener a server needs, or why it is not served yet.
fn kind_of(s: &Server) -> Result<ListenerKind, String> {
    use TlsMode::{AutoPassthrough, IstioMutual, Mutual, OptionalMutual, Passthrough, Simple};
    match (s.protocol, s.tls.as_ref().and_then(|t| t.mode)) {
        (ServerProtocol::Http | ServerProtocol::Http2 | ServerProtocol::Grpc, _) => {
            Ok(ListenerKind::Http)
        }
        (ServerProtocol::Https, Some(Simple | Mutual | OptionalMutual | IstioMutual)) => {
            Ok(ListenerKind::Https)
        }
        (ServerProtocol::Https | ServerProtocol::Tls, Some(Passthrough))
        | (ServerProtocol::Tls, Some(AutoPassthrough)) => Ok(ListenerKind::Passthrough),
        (ServerProtocol::Tcp, _) => Ok(ListenerKind::Tcp),
        (ServerProtocol::Tls, Some(Simple | Mutual | OptionalMutual | IstioMutual)) => {
            Ok(ListenerKind::TlsTerminated)
        }
        (ServerProtocol::Https, Some(m)) => Err(format!(
            "HTTPS with tls.mode {} is not served (AUTO_PASSTHROUGH needs protocol TLS, as in Istio)",
            m.as_str()
        )),
        (p, m) => Err(format!(
            "protocol {}{} is not served yet (HTTP, HTTP2, GRPC, HTTPS, TCP, and TLS with a tls.mode are)",
            p.as_str(),
            m.map(|m| format!(" with tls.mode {}", m.as_str()))
                .unwrap_or_default()
        )),
    }
}

/// What a server does with its connections ([`ListenerKind::TlsBySni`] never: that is a port's);
/// `None` for a server not served.
pub fn server_kind(s: &Server) -> Option<ListenerKind> {
    kind_of(s).ok()
}

/// Plan the listeners of a gateway pod with `pod_labels`: the Gateways that select it (in
/// order), their servers grouped by listening port. Servers on one port must agree on plain
/// HTTP, TCP or TLS and on `bind` — TLS servers of different modes (passed through, terminated
/// then HTTP, terminated then TCP) share a port as [`ListenerKind::TlsBySni`]; a server that
/// does not is left out with the reason, as is a server of a kind not served yet.
pub fn plan(gateways: &[Gateway], pod_labels: &BTreeMap<String, String>, ports: &PortMap) -> Plan {
    let mut out = Plan::default();
    for gw in gateways.iter().filter(|g| selects(g, pod_labels)) {
        out.gateways.push(gw.meta.key());
        for s in &gw.servers {
            let bound = BoundServer {
                gateway: gw.meta.key(),
                gateway_namespace: gw.meta.namespace.clone(),
                server: s.clone(),
            };
            let kind = match kind_of(s) {
                Ok(k) => k,
                Err(why) => {
                    out.not_served
                        .push(format!("{} (port {}): {why}", bound.describe(), s.port));
                    continue;
                }
            };
            let port = ports.listen_port(s.port);
            match out.listeners.iter_mut().find(|l| l.port == port) {
                None => out.listeners.push(Listener {
                    port,
                    gateway_port: s.port,
                    bind: s.bind.clone(),
                    kind,
                    servers: vec![bound],
                }),
                Some(l)
                    if l.bind == s.bind && l.kind != kind && l.kind.by_sni() && kind.by_sni() =>
                {
                    l.kind = ListenerKind::TlsBySni;
                    l.servers.push(bound);
                }
                Some(l) if l.kind != kind || l.bind != s.bind => {
                    let first = &l.servers[0];
                    out.not_served.push(format!(
                        "{} (port {}, listening on {port}): conflicts with {} there ({} against {}{}); left out",
                        bound.describe(),
                        s.port,
                        first.describe(),
                        s.protocol.as_str(),
                        first.server.protocol.as_str(),
                        if l.bind != s.bind { ", another bind address" } else { "" },
                    ));
                }
                Some(l) => l.servers.push(bound),
            }
        }
    }
    out.listeners.sort_by_key(|l| l.port);
    out
}

/// The servers of `gw` whose `tls.cipherSuites` cannot be offered (the gateway keeps them
/// down): `(field, reason)`, the field `spec.servers[i].tls.cipherSuites[j]`. Only servers that
/// terminate with certificates of their own (`SIMPLE`, `MUTUAL`, `OPTIONAL_MUTUAL`) apply the
/// list.
pub fn cipher_suite_problems(gw: &Gateway) -> Vec<(String, String)> {
    gw.servers
        .iter()
        .filter_map(|s| {
            let t = s.tls.as_ref()?;
            if !matches!(
                t.mode,
                Some(TlsMode::Simple | TlsMode::Mutual | TlsMode::OptionalMutual)
            ) {
                return None;
            }
            crate::cipher_suites::tls12_suites(&t.cipher_suites)
                .err()
                .map(|(j, why)| {
                    (
                        format!("spec.servers[{}].tls.cipherSuites[{j}]", s.index),
                        why,
                    )
                })
        })
        .collect()
}

/// Is `vs` bound to one of `gateways` (`namespace/name`), at the top or in an `http`, `tls` or
/// `tcp` match?
pub fn vs_bound_to(vs: &VirtualService, gateways: &[String]) -> bool {
    let ns = vs.meta.namespace.as_str();
    bound_to(ns, &vs.gateways, gateways)
        || vs
            .http
            .iter()
            .flat_map(|r| r.matches.iter())
            .any(|m| bound_to(ns, &m.gateways, gateways))
        || vs
            .tls
            .iter()
            .chain(vs.tcp.iter())
            .flat_map(|r| r.matches.iter())
            .any(|m| bound_to(ns, &m.gateways, gateways))
}

/// The `/config_dump` of a gateway's plan; `down(port, i)`: whether server `i` of the listener
/// on `port` is down (its TLS settings not loaded); `certificate(port, i)`: the certificate it
/// shows, as loaded; `virtual_services`: the gateway-bound ones of the rule set (those bound to
/// a selected Gateway are listed).
pub fn dump(
    plan: &Plan,
    virtual_services: &[VirtualService],
    down: impl Fn(u16, usize) -> bool,
    certificate: impl Fn(u16, usize) -> Option<crate::dump::ServedCertificateDump>,
) -> crate::dump::GatewayDump {
    use crate::dump::{GatewayDump, GatewayListenerDump, GatewayServerDump};
    use crate::rules::gateway::HostNamespace;
    GatewayDump {
        gateways: plan.gateways.clone(),
        not_served: plan.not_served.clone(),
        virtual_services: virtual_services
            .iter()
            .filter(|vs| vs_bound_to(vs, &plan.gateways))
            .cloned()
            .collect(),
        listeners: plan
            .listeners
            .iter()
            .map(|l| GatewayListenerDump {
                port: l.port,
                gateway_port: l.gateway_port,
                kind: l.kind.as_str().to_string(),
                bind: l.bind.clone(),
                servers: l
                    .servers
                    .iter()
                    .enumerate()
                    .map(|(i, b)| {
                        let tls = b.server.tls.as_ref();
                        GatewayServerDump {
                            server: b.describe(),
                            protocol: b.server.protocol.as_str().to_string(),
                            hosts: b
                                .server
                                .hosts
                                .iter()
                                .map(|h| match &h.namespace {
                                    HostNamespace::Any => h.host.clone(),
                                    HostNamespace::Gateway => format!("./{}", h.host),
                                    HostNamespace::Named(ns) => format!("{ns}/{}", h.host),
                                })
                                .collect(),
                            tls_mode: tls.and_then(|t| t.mode).map(|m| m.as_str().to_string()),
                            credential_name: tls.and_then(|t| t.credential_name.clone()),
                            state: if down(l.port, i) { "down" } else { "served" }.to_string(),
                            certificate: certificate(l.port, i),
                        }
                    })
                    .collect(),
            })
            .collect(),
    }
}

/// The server of `listener` for a request host or SNI name: the most specific host match; the
/// first server on a tie. Without a name (no SNI), the first server.
pub fn server_for<'a>(listener: &'a Listener, name: Option<&str>) -> Option<&'a BoundServer> {
    let Some(name) = name.map(|n| n.trim_end_matches('.').to_ascii_lowercase()) else {
        return listener.servers.first();
    };
    let mut best: Option<(usize, &BoundServer)> = None;
    for b in &listener.servers {
        if let Some(score) = b.server.hosts.iter().filter_map(|h| h.score(&name)).max() {
            if best.is_none_or(|(s, _)| score > s) {
                best = Some((score, b));
            }
        }
    }
    best.map(|(_, b)| b)
}

/// What the gateway does with a TLS connection whose ClientHello names a server.
#[derive(Clone, Debug, PartialEq)]
pub enum TlsAction<'a> {
    /// Pass the bytes through untouched (a `PASSTHROUGH` or `AUTO_PASSTHROUGH` server);
    /// [`route_l4`] says where.
    PassThrough(&'a BoundServer),
    /// Terminate TLS with the server's settings, then serve HTTP (`http`: an `HTTPS` server)
    /// or route the decrypted bytes with `tcp` routes (a `TLS` server).
    Terminate { server: &'a BoundServer, http: bool },
    /// No server has the name: the connection is closed.
    Close(String),
}

/// The server of a TLS listener (of any kind but plain HTTP and TCP) for the ClientHello's
/// `sni` and what it does: an `outbound_.PORT_.SUBSET_.HOST` name whose host an
/// `AUTO_PASSTHROUGH` server has goes to that server; otherwise the most specific host
/// ([`server_for`]; no SNI: the first server).
pub fn tls_action<'a>(listener: &'a Listener, sni: Option<&str>) -> TlsAction<'a> {
    if let Some((b, _)) = sni.and_then(|n| auto_passthrough(listener, n)) {
        return TlsAction::PassThrough(b);
    }
    let Some(b) = server_for(listener, sni) else {
        return TlsAction::Close(format!(
            "no Gateway server on port {} has host {:?}",
            listener.gateway_port,
            sni.unwrap_or("")
        ));
    };
    match kind_of(&b.server) {
        Ok(ListenerKind::Passthrough) => TlsAction::PassThrough(b),
        Ok(ListenerKind::Https) => TlsAction::Terminate {
            server: b,
            http: true,
        },
        Ok(ListenerKind::TlsTerminated) => TlsAction::Terminate {
            server: b,
            http: false,
        },
        _ => TlsAction::Close(format!("{} takes no TLS", b.describe())),
    }
}

fn is_auto(b: &BoundServer) -> bool {
    b.server
        .tls
        .as_ref()
        .is_some_and(|t| t.mode == Some(TlsMode::AutoPassthrough))
}

/// The `AUTO_PASSTHROUGH` server of `listener` for an SNI of Istio's cluster form whose host
/// (not the whole name) matches one of its hosts, the most specific, and the destination the
/// name carries.
pub fn auto_passthrough<'a>(
    listener: &'a Listener,
    sni: &str,
) -> Option<(&'a BoundServer, crate::cluster_sni::ClusterSni)> {
    let target = crate::cluster_sni::parse(sni).ok()?;
    let mut best: Option<(usize, &BoundServer)> = None;
    for b in listener.servers.iter().filter(|b| is_auto(b)) {
        if let Some(score) = b
            .server
            .hosts
            .iter()
            .filter_map(|h| h.score(&target.host))
            .max()
        {
            if best.is_none_or(|(s, _)| score > s) {
                best = Some((score, b));
            }
        }
    }
    best.map(|(_, b)| (b, target))
}

// ---------------------------------------------------------------------------------- routing

/// The VirtualService for a request host on `servers` (those of one listener): bound to one of
/// their Gateways (at the top or in a match) through a server host that matches the request
/// host and admits the VirtualService's namespace (`ns/host`, `./host`, `*/host`), with a host
/// of its own that matches the request host; the most specific match wins, the first loaded
/// on a tie.
pub fn virtual_service_for<'a>(
    snap: &'a Snapshot,
    servers: &[&BoundServer],
    host: &str,
) -> Option<&'a VirtualService> {
    let mut best: Option<(usize, &VirtualService)> = None;
    for vs in &snap.gateway_virtual_services {
        let ns = vs.meta.namespace.as_str();
        let bound = servers.iter().any(|b| {
            let gw = std::slice::from_ref(&b.gateway);
            let names_it = bound_to(ns, &vs.gateways, gw)
                || vs
                    .http
                    .iter()
                    .flat_map(|r| r.matches.iter())
                    .any(|m| bound_to(ns, &m.gateways, gw));
            names_it
                && b.server.hosts.iter().any(|sh| {
                    sh.admits_namespace(&b.gateway_namespace, ns) && sh.score(host).is_some()
                })
        });
        if !bound {
            continue;
        }
        if let Some(score) = vs.hosts.iter().filter_map(|h| match_score(h, host)).max() {
            if best.is_none_or(|(s, _)| score > s) {
                best = Some((score, vs));
            }
        }
    }
    best.map(|(_, vs)| vs)
}

/// Route a connection on a listener of `TCP` servers, of `TLS`/`HTTPS` servers with
/// `tls.mode: PASSTHROUGH`, or of `TLS` servers the gateway terminates (`sni`: the name in the
/// client's ClientHello), as Istio's gateway does: the servers whose hosts match the SNI (TCP:
/// every server of the port, Istio matches TCP by port only); among the VirtualServices bound
/// to their Gateways (at the top or in a `tls`/`tcp` match) through a server host that admits
/// the VirtualService's namespace (and matches the SNI), with `tls` routes (passthrough) or
/// `tcp` routes (TCP, terminated TLS) and, with an SNI, a host of its own that matches it, the
/// most specific (the first loaded on a tie; no SNI: the first loaded); its first route that
/// holds (`sniHosts`, `port` = the Gateway port, `sourceLabels` of the gateway pod, ...).
/// Nothing holds: `Deny` (the gateway closes the connection).
pub fn route_l4(
    snap: &Snapshot,
    listener: &Listener,
    sni: Option<&str>,
    rng: &mut impl rand::Rng,
) -> Decision {
    let dst = std::net::SocketAddr::new(
        std::net::Ipv4Addr::UNSPECIFIED.into(),
        listener.gateway_port,
    );
    let name = sni
        .filter(|s| !s.is_empty())
        .map(|s| s.trim_end_matches('.').to_ascii_lowercase());
    let deny = |reason: String| Decision::Deny {
        status: 404,
        reason,
    };
    // What the SNI's server does: passed through (by an AUTO_PASSTHROUGH server to the
    // service its name carries, without VirtualService), or terminated as TCP; on a port of
    // several TLS modes, only the servers of that kind route.
    let mut kind = listener.kind;
    if kind == ListenerKind::TlsBySni || (kind == ListenerKind::Passthrough && name.is_some()) {
        match tls_action(listener, name.as_deref()) {
            TlsAction::PassThrough(b) if is_auto(b) => {
                return match name.as_deref().and_then(|n| auto_passthrough(listener, n)) {
                    Some((_, t)) => {
                        route::forward_to_known(snap, &t.host, t.subset.as_deref(), t.port)
                    }
                    None => deny(format!(
                        "{} is AUTO_PASSTHROUGH: {}",
                        b.describe(),
                        crate::cluster_sni::parse(name.as_deref().unwrap_or(""))
                            .err()
                            .unwrap_or_else(|| "its hosts do not have the name's host".into())
                    )),
                };
            }
            TlsAction::PassThrough(_) if name.is_none() => {
                return deny(format!(
                    "a connection passed through on port {} needs a server name (SNI)",
                    listener.gateway_port
                ))
            }
            TlsAction::PassThrough(_) => kind = ListenerKind::Passthrough,
            TlsAction::Terminate { http: false, .. } => kind = ListenerKind::TlsTerminated,
            TlsAction::Terminate { server, http: true } => {
                return deny(format!("{} serves HTTP, not TCP", server.describe()))
            }
            TlsAction::Close(why) => return deny(why),
        }
    }
    let servers: Vec<&BoundServer> = listener
        .servers
        .iter()
        .filter(|b| {
            !is_auto(b)
                && (listener.kind != ListenerKind::TlsBySni || kind_of(&b.server) == Ok(kind))
                && name
                    .as_deref()
                    .is_none_or(|n| b.server.hosts.iter().any(|h| h.score(n).is_some()))
        })
        .collect();
    if servers.is_empty() {
        return deny(format!(
            "no Gateway server on port {} has host {:?}",
            listener.gateway_port,
            name.as_deref().unwrap_or("")
        ));
    }
    let mut best: Option<(usize, &VirtualService, &str)> = None;
    // Passed-through TLS routes by its SNI with `tls` routes; a connection without one (never
    // routed by the proxy, which closes it first) and terminated TLS take `tcp` routes.
    let tls_routes = kind == ListenerKind::Passthrough && name.is_some();
    for vs in &snap.gateway_virtual_services {
        let routes = if tls_routes { &vs.tls } else { &vs.tcp };
        if routes.is_empty() {
            continue;
        }
        let ns = vs.meta.namespace.as_str();
        let through = servers.iter().find(|b| {
            let gw = std::slice::from_ref(&b.gateway);
            let names_it = bound_to(ns, &vs.gateways, gw)
                || routes
                    .iter()
                    .flat_map(|r| r.matches.iter())
                    .any(|m| bound_to(ns, &m.gateways, gw));
            names_it
                && b.server.hosts.iter().any(|sh| {
                    sh.admits_namespace(&b.gateway_namespace, ns)
                        && name.as_deref().is_none_or(|n| sh.score(n).is_some())
                })
        });
        let Some(b) = through else { continue };
        let score = match name.as_deref() {
            Some(n) => vs.hosts.iter().filter_map(|h| match_score(h, n)).max(),
            None => Some(0),
        };
        if let Some(score) = score {
            if best.is_none_or(|(s, _, _)| score > s) {
                best = Some((score, vs, b.gateway.as_str()));
            }
        }
    }
    let what = if tls_routes { "tls" } else { "tcp" };
    let Some((_, vs, gateway)) = best else {
        return deny(format!(
            "no VirtualService with {what} routes is bound to a Gateway server on port {} for {:?}",
            listener.gateway_port,
            name.as_deref().unwrap_or("")
        ));
    };
    route::route_l4_bound(snap, vs, name.as_deref(), tls_routes, dst, gateway, rng).unwrap_or_else(
        || {
            deny(format!(
                "no {what} route of VirtualService {} holds on port {}",
                vs.meta.key(),
                listener.gateway_port
            ))
        },
    )
}

/// The headers a gateway sets on a request it forwards, as Envoy does at the edge
/// (`use_remote_address`): `x-forwarded-proto` is the client's scheme, and the client's
/// address is appended to `x-forwarded-for` (the list it sent, if any, kept before it).
pub fn forwarded(
    headers: &http::HeaderMap,
    scheme: &str,
    client: Option<std::net::IpAddr>,
) -> Vec<(String, String)> {
    let mut out = vec![("x-forwarded-proto".to_string(), scheme.to_string())];
    if let Some(ip) = client {
        let sent: Vec<&str> = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .collect();
        let xff = if sent.is_empty() {
            ip.to_string()
        } else {
            format!("{}, {ip}", sent.join(", "))
        };
        out.push(("x-forwarded-for".to_string(), xff));
    }
    out
}

/// Route one request that arrived on `listener` (`tls`: over TLS the gateway terminated):
/// the servers whose hosts match the request's Host; an HTTP server with `tls.httpsRedirect`
/// answers 301 to `https://` (plain text only); then the gateway-bound VirtualService for the
/// host and its first matching route, exactly as the sidecar routes (weights, redirects,
/// rewrites, header operations, policies). No server or VirtualService for the host: 404.
/// A `Forward` never asks for the original destination: with no endpoint list the destination
/// host is resolved by DNS; it sets `x-forwarded-proto` to the client's scheme. The request's destination port is the Gateway port (what a match's
/// `port` and a destination without a port see), whatever port the proxy listens on.
pub fn route(
    snap: &Snapshot,
    listener: &Listener,
    req: &RequestInfo<'_>,
    tls: bool,
    client: Option<std::net::IpAddr>,
    rng: &mut impl rand::Rng,
) -> Decision {
    let req = &RequestInfo {
        authority: req.authority,
        method: req.method,
        path: req.path,
        headers: req.headers,
        dst: std::net::SocketAddr::new(req.dst.ip(), listener.gateway_port),
    };
    let (host, _) = split_authority(req.authority);
    // On a port of several TLS modes, requests come only through its HTTPS servers.
    let servers: Vec<&BoundServer> = listener
        .servers
        .iter()
        .filter(|b| {
            (listener.kind != ListenerKind::TlsBySni
                || kind_of(&b.server) == Ok(ListenerKind::Https))
                && b.server.hosts.iter().any(|h| h.score(&host).is_some())
        })
        .collect();
    if servers.is_empty() {
        return Decision::Deny {
            status: 404,
            reason: format!(
                "no Gateway server on port {} has host {host:?}",
                listener.gateway_port
            ),
        };
    }
    if !tls {
        if let Some(best) = server_for(listener, Some(&host)) {
            if best.server.tls.as_ref().is_some_and(|t| t.https_redirect) {
                let bare = if host.contains(':') {
                    format!("[{host}]")
                } else {
                    host.clone()
                };
                return Decision::Redirect {
                    status: 301,
                    location: format!("https://{bare}{}", req.path),
                };
            }
        }
    }
    let Some(vs) = virtual_service_for(snap, &servers, &host) else {
        return Decision::Deny {
            status: 404,
            reason: format!(
                "no VirtualService bound to {} has host {host:?}",
                servers
                    .iter()
                    .map(|b| format!("Gateway {}", b.gateway))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
    };
    let gateways: Vec<String> = servers.iter().map(|b| b.gateway.clone()).collect();
    let scheme = if tls { "https" } else { "http" };
    match route::route_bound(snap, vs, req, Via::Gateways(&gateways, scheme), rng) {
        // As Envoy at Istio's gateways (the edge): `x-forwarded-proto` is the client's scheme,
        // whatever the client sent; the route's own header operations come after it.
        Decision::Forward(mut f) => {
            let mut set = forwarded(req.headers, scheme, client);
            set.append(&mut f.request_headers.set);
            f.request_headers.set = set;
            Decision::Forward(f)
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::{snapshot_from_yaml, LoadContext, Meta};
    use rand::SeedableRng;
    use serde_json::Value;
    use std::net::SocketAddr;

    fn labels(l: &[(&str, &str)]) -> BTreeMap<String, String> {
        l.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn ctx() -> LoadContext {
        LoadContext {
            namespace: "istio-system".into(),
            pod_labels: labels(&[("istio", "ingressgateway"), ("app", "istio-ingressgateway")]),
            ..LoadContext::default()
        }
    }

    fn snap(yaml: &str) -> Snapshot {
        match snapshot_from_yaml(&[("t.yaml", yaml)], &ctx(), 1) {
            Ok(s) => s,
            Err(e) => panic!("{e:?}"),
        }
    }

    fn gw_yaml(name: &str, ns: &str, servers: &str) -> String {
        format!(
            "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  selector: {{istio: ingressgateway}}\n  servers:\n{servers}\n"
        )
    }

    /// A Gateway spec's decode result: `Ok(())` or `field: reason`.
    fn check(spec: &str) -> Result<Gateway, String> {
        let v: Value = serde_yaml_ng::from_str(spec).unwrap();
        let meta = Meta {
            kind: "Gateway".into(),
            api_version: "networking.istio.io/v1".into(),
            name: "g".into(),
            namespace: "ns".into(),
            file: "f".into(),
            document: 1,
        };
        decode(meta, &v, &mut Vec::new()).map_err(|e| e.to_string())
    }

    #[test]
    fn decode_checks_name_the_field_and_value() {
        let http = "port: {number: 80, name: http, protocol: HTTP}\n  hosts: ['*']";
        let cases: &[(&str, Result<(), &str>)] = &[
            (&format!("selector: {{istio: ingressgateway}}\nservers:\n- {http}"), Ok(())),
            ("selector: {a: b}", Err("spec.servers: at least one server is required")),
            (
                "servers: [{hosts: ['*']}]",
                Err("spec.servers[0].port: required field is missing"),
            ),
            (
                "servers: [{port: {number: 80, name: x}, hosts: ['*']}]",
                Err("spec.servers[0].port.protocol: required field is missing"),
            ),
            (
                "servers: [{port: {number: 80, name: x, protocol: MONGO}, hosts: ['*']}]",
                Err("spec.servers[0].port.protocol: \"MONGO\" is not HTTP, HTTPS, HTTP2, GRPC, TLS or TCP"),
            ),
            (
                "servers: [{port: {number: 0, name: x, protocol: HTTP}, hosts: ['*']}]",
                Err("spec.servers[0].port.number"),
            ),
            (
                "servers: [{port: {number: 80, name: x, protocol: HTTP}}]",
                Err("spec.servers[0].hosts: at least one host is required"),
            ),
            (
                "servers: [{port: {number: 80, name: x, protocol: HTTP}, hosts: ['a/b/c']}]",
                Err("spec.servers[0].hosts[0]: \"a/b/c\""),
            ),
            (
                "servers: [{port: {number: 80, name: x, protocol: HTTP}, hosts: ['~/a.com']}]",
                Err("spec.servers[0].hosts[0]: \"~/a.com\": the namespace \"~\" is for Sidecars"),
            ),
            (
                "servers: [{port: {number: 443, name: x, protocol: HTTPS}, hosts: ['*']}]",
                Err("spec.servers[0].tls: a HTTPS server needs tls with a mode"),
            ),
            (
                "servers: [{port: {number: 443, name: x, protocol: HTTPS}, hosts: ['*'], tls: {mode: SIMPLE}}]",
                Err("spec.servers[0].tls.credentialName: SIMPLE needs credentialName, or serverCertificate and privateKey"),
            ),
            (
                "servers: [{port: {number: 443, name: x, protocol: HTTPS}, hosts: ['*'], tls: {mode: simple, credentialName: c}}]",
                Err("spec.servers[0].tls.mode: \"simple\" is not PASSTHROUGH, SIMPLE"),
            ),
            (
                "servers: [{port: {number: 443, name: x, protocol: HTTPS}, hosts: ['*'], tls: {mode: MUTUAL, serverCertificate: /c, privateKey: /k}}]",
                Err("spec.servers[0].tls.caCertificates: MUTUAL needs caCertificates"),
            ),
            (
                "servers: [{port: {number: 443, name: x, protocol: HTTPS}, hosts: ['*'], tls: {mode: SIMPLE, credentialName: c, minProtocolVersion: TLSV9}}]",
                Err("spec.servers[0].tls.minProtocolVersion: \"TLSV9\" is not TLS_AUTO"),
            ),
            (
                "servers: [{port: {number: 80, name: x, protocol: HTTP}, hosts: ['*'], tls: {mode: SIMPLE, credentialName: c}}]",
                Err("spec.servers[0].tls.mode: SIMPLE on a HTTP server"),
            ),
            (
                "servers: [{port: {number: 80, name: x, protocol: HTTP}, hosts: ['*'], tls: {httpsRedirect: true}}]",
                Ok(()),
            ),
            (
                "servers: [{port: {number: 80, name: x, protocol: http}, hosts: ['*'], bind: /var/run/x.sock}]",
                Err("spec.servers[0].bind: \"/var/run/x.sock\" is not an IP address"),
            ),
            (
                "servers: [{port: {number: 80, name: x, protocol: HTTP, targetPort: 8080}, hosts: ['*']}]",
                Err("spec.servers[0].port.targetPort: not supported"),
            ),
        ];
        for (spec, want) in cases {
            let got = check(spec);
            match (want, &got) {
                (Ok(()), Ok(_)) => {}
                (Err(w), Err(g)) => assert!(g.starts_with(w), "{spec}\n got {g}\nwant {w}"),
                _ => panic!("{spec}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn server_hosts_namespace_form() {
        let cases: &[(&str, HostNamespace, &str)] = &[
            ("*", HostNamespace::Any, "*"),
            ("*/bookinfo.com", HostNamespace::Any, "bookinfo.com"),
            ("./*.Example.com", HostNamespace::Gateway, "*.example.com"),
            (
                "shop/shop.example.com.",
                HostNamespace::Named("shop".into()),
                "shop.example.com",
            ),
        ];
        for (raw, ns, host) in cases {
            let h = server_host(raw, "h").unwrap();
            assert_eq!((&h.namespace, h.host.as_str()), (ns, *host), "{raw}");
        }
        let h = server_host("shop/*", "h").unwrap();
        assert!(h.admits_namespace("istio-system", "shop"));
        assert!(!h.admits_namespace("istio-system", "other"));
        let h = server_host("./*", "h").unwrap();
        assert!(h.admits_namespace("istio-system", "istio-system"));
        assert!(!h.admits_namespace("istio-system", "shop"));
        assert!(server_host("*/*", "h").unwrap().admits_namespace("a", "b"));
    }

    #[test]
    fn gateway_references() {
        let cases: &[(&str, &str, Option<&str>)] = &[
            (
                "bookinfo",
                "bookinfo-gateway",
                Some("bookinfo/bookinfo-gateway"),
            ),
            ("bookinfo", "istio-system/gw", Some("istio-system/gw")),
            (
                "bookinfo",
                "gw.istio-system.svc.cluster.local",
                Some("istio-system/gw"),
            ),
            ("bookinfo", "mesh", None),
        ];
        for (ns, r, want) in cases {
            assert_eq!(gateway_ref(ns, r).as_deref(), *want, "{ns} {r}");
        }
        let gws = ["bookinfo/bookinfo-gateway".to_string()];
        assert!(bound_to("bookinfo", &["bookinfo-gateway".into()], &gws));
        assert!(!bound_to("other", &["bookinfo-gateway".into()], &gws));
        assert!(!bound_to("bookinfo", &["mesh".into()], &gws));
        assert!(!bound_to("bookinfo", &[], &gws));
    }

    #[test]
    fn selector_and_port_map() {
        let g = check("selector: {istio: ingressgateway}\nservers: [{port: {number: 80, name: h, protocol: HTTP}, hosts: ['*']}]").unwrap();
        assert!(selects(
            &g,
            &labels(&[("istio", "ingressgateway"), ("x", "y")])
        ));
        assert!(!selects(&g, &labels(&[("istio", "egressgateway")])));
        assert!(!selects(&g, &labels(&[])));
        let empty = check("servers: [{port: {number: 80, name: h, protocol: HTTP}, hosts: ['*']}]")
            .unwrap();
        assert!(!selects(&empty, &labels(&[("istio", "ingressgateway")])));

        let m = PortMap::default();
        assert_eq!(
            (m.listen_port(80), m.listen_port(443), m.listen_port(8080)),
            (8080, 8443, 8080)
        );
        assert_eq!(PortMap::parse("80=8080, 443=8443").unwrap(), m);
        assert_eq!(PortMap::parse("").unwrap(), PortMap(BTreeMap::new()));
        for (bad, why) in [
            ("80", "\"80\" is not SERVICE_PORT=LISTEN_PORT"),
            ("80=0", "\"80=0\": \"0\" is not a port number"),
            ("80=x", "\"80=x\": \"x\" is not a port number"),
            ("80=1,80=2", "\"80=2\": port 80 is mapped twice"),
        ] {
            assert_eq!(
                PortMap::parse(bad).unwrap_err().split(" (").next(),
                why.split(" (").next(),
                "{bad}"
            );
        }
    }

    const HTTPS: &str = "  - port: {number: 443, name: https, protocol: HTTPS}\n    hosts: ['*.example.com']\n    tls: {mode: SIMPLE, credentialName: example-cert}";

    #[test]
    fn plan_groups_servers_by_listening_port() {
        let yaml = [
            gw_yaml("a", "istio-system", &format!("  - port: {{number: 80, name: http, protocol: HTTP}}\n    hosts: ['*']\n{HTTPS}\n  - port: {{number: 443, name: https-2, protocol: HTTPS}}\n    hosts: [other.com]\n    tls: {{mode: SIMPLE, credentialName: other-cert}}")),
            gw_yaml("b", "shop", "  - port: {number: 8080, name: http, protocol: HTTP}\n    hosts: [shop/shop.com]\n  - port: {number: 8443, name: plain, protocol: HTTP}\n    hosts: ['*']\n  - port: {number: 9443, name: tls, protocol: TLS}\n    hosts: ['*']\n    tls: {mode: PASSTHROUGH}\n  - port: {number: 443, name: m, protocol: HTTPS}\n    hosts: ['*']\n    tls: {mode: AUTO_PASSTHROUGH}\n  - port: {number: 443, name: mtls, protocol: HTTPS}\n    hosts: [mtls.shop.com]\n    tls: {mode: MUTUAL, credentialName: c}"),
            "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: egress, namespace: istio-system}\nspec:\n  selector: {istio: egressgateway}\n  servers: [{port: {number: 80, name: http, protocol: HTTP}, hosts: ['*']}]\n".to_string(),
        ]
        .join("---\n");
        let s = snap(&yaml);
        let p = plan(&s.gateways, &s.ctx.pod_labels, &PortMap::default());
        assert_eq!(p.gateways, ["istio-system/a", "shop/b"]);
        let ports: Vec<(u16, u16, ListenerKind, usize)> = p
            .listeners
            .iter()
            .map(|l| (l.port, l.gateway_port, l.kind, l.servers.len()))
            .collect();
        assert_eq!(
            ports,
            [
                // 80 (mapped) and 8080 (unmapped) land on one port.
                (8080, 80, ListenerKind::Http, 2),
                (8443, 443, ListenerKind::Https, 3),
                (9443, 9443, ListenerKind::Passthrough, 1),
            ]
        );
        let not: Vec<&str> = p.not_served.iter().map(String::as_str).collect();
        assert_eq!(
            not,
            [
                "Gateway shop/b spec.servers[1] (port 8443, listening on 8443): conflicts with Gateway istio-system/a spec.servers[1] there (HTTP against HTTPS); left out",
                "Gateway shop/b spec.servers[3] (port 443): HTTPS with tls.mode AUTO_PASSTHROUGH is not served (AUTO_PASSTHROUGH needs protocol TLS, as in Istio)",
            ]
        );
        let https = p.listener(8443).unwrap();
        let name = |n: Option<&str>| server_for(https, n).map(|b| b.server.index);
        assert_eq!(name(Some("www.example.com")), Some(1));
        assert_eq!(name(Some("OTHER.com.")), Some(2));
        assert_eq!(name(Some("nowhere.org")), None);
        assert_eq!(name(Some("mtls.shop.com")), Some(4));
        assert_eq!(name(None), Some(1));
    }

    fn request<'a>(authority: &'a str, path: &'a str, h: &'a http::HeaderMap) -> RequestInfo<'a> {
        RequestInfo {
            authority,
            method: "GET",
            path,
            headers: h,
            dst: SocketAddr::from(([10, 0, 0, 9], 8080)),
        }
    }

    /// What a request becomes: `forward host:port`, `redirect 301 URL` or `deny 404`.
    /// A connection's decision on an L4 listener, as one line.
    fn l4_outcome(s: &Snapshot, l: &Listener, sni: Option<&str>) -> String {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        match route_l4(s, l, sni, &mut rng) {
            Decision::Forward(f) => format!(
                "forward {}:{}{} by {}",
                f.host,
                f.port,
                if f.resolve_by_dns { " dns" } else { "" },
                f.virtual_service.unwrap_or_default()
            ),
            Decision::Deny { status, reason } => format!("deny {status}: {reason}"),
            other => format!("{other:?}"),
        }
    }

    fn outcome(s: &Snapshot, l: &Listener, authority: &str, path: &str, tls: bool) -> String {
        let h = http::HeaderMap::new();
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        match route(s, l, &request(authority, path, &h), tls, None, &mut rng) {
            Decision::Forward(f) => format!(
                "forward {}:{}{}{}",
                f.host,
                f.port,
                if f.resolve_by_dns { " dns" } else { "" },
                f.uri_rewrite.map(|u| format!(" {u}")).unwrap_or_default()
            ),
            Decision::Redirect { status, location } => format!("redirect {status} {location}"),
            Decision::Deny { status, .. } => format!("deny {status}"),
            Decision::DirectResponse { status, .. } => format!("direct {status}"),
            Decision::Passthrough => "passthrough".into(),
        }
    }

    /// Istio's Bookinfo gateway (samples/bookinfo/networking/bookinfo-gateway.yaml, in the
    /// shape of the corpus file), in namespace `default`.
    const BOOKINFO: &str = "apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: bookinfo-gateway, namespace: default}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 8080, name: http, protocol: HTTP}
    hosts: ['*']
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: bookinfo, namespace: default}
spec:
  hosts: ['*']
  gateways: [bookinfo-gateway]
  http:
  - match:
    - uri: {exact: /productpage}
    - uri: {prefix: /static}
    route:
    - destination: {host: productpage, port: {number: 9080}}
";

    /// Istio's SNI passthrough and TCP at the ingress gateway: a `TLS` `PASSTHROUGH` server for
    /// `*.example.com` and a `TCP` server, VirtualServices with `tls` and `tcp` routes.
    const L4: &str = "apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: edge, namespace: default}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 443, name: tls, protocol: TLS}
    hosts: ['*.example.com']
    tls: {mode: PASSTHROUGH}
  - port: {number: 31400, name: tcp, protocol: TCP}
    hosts: ['*']
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: api, namespace: default}
spec:
  hosts: [api.example.com]
  gateways: [edge]
  tls:
  - match: [{sniHosts: [api.example.com], port: 443}]
    route: [{destination: {host: api.internal, port: {number: 8443}}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: wild, namespace: default}
spec:
  hosts: ['*.example.com']
  gateways: [edge]
  tls:
  - match: [{sniHosts: ['*.example.com']}]
    route: [{destination: {host: other.internal, port: {number: 443}}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: db, namespace: default}
spec:
  hosts: ['*']
  gateways: [edge]
  tcp:
  - match: [{port: 31400}]
    route: [{destination: {host: db.internal, port: {number: 5432}}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: sidecars-only, namespace: default}
spec:
  hosts: [mesh.example.com]
  tls:
  - match: [{sniHosts: [mesh.example.com]}]
    route: [{destination: {host: mesh.internal, port: {number: 443}}}]
";

    #[test]
    fn passthrough_by_sni_and_tcp_route_at_the_gateway() {
        let s = snap(L4);
        let p = plan(&s.gateways, &s.ctx.pod_labels, &PortMap::default());
        assert!(p.not_served.is_empty(), "{:?}", p.not_served);
        let kinds: Vec<(u16, ListenerKind)> =
            p.listeners.iter().map(|l| (l.port, l.kind)).collect();
        assert_eq!(
            kinds,
            [
                (8443, ListenerKind::Passthrough),
                (31400, ListenerKind::Tcp)
            ]
        );
        let listener = |port: u16| p.listener(port).expect("planned").clone();
        let outcome = |l: &Listener, sni: Option<&str>| l4_outcome(&s, l, sni);
        // Gateway port 443 listens on 8443 (the default port map).
        let tls = listener(8443);
        let cases: &[(Option<&str>, &str)] = &[
            // The most specific VirtualService host wins.
            (
                Some("api.example.com"),
                "forward api.internal:8443 dns by default/api",
            ),
            (
                Some("API.example.com."),
                "forward api.internal:8443 dns by default/api",
            ),
            (
                Some("www.example.com"),
                "forward other.internal:443 dns by default/wild",
            ),
            // No server host for the name.
            (
                Some("api.example.org"),
                "deny 404: no Gateway server on port 443 has host \"api.example.org\"",
            ),
            // A server host matches, but only a VirtualService for sidecars routes it.
            (
                Some("mesh.example.com"),
                "forward other.internal:443 dns by default/wild",
            ),
            // Without SNI only tcp routes apply, and none is bound to port 443.
            (
                None,
                "deny 404: no tcp route of VirtualService default/db holds on port 443",
            ),
        ];
        for (sni, want) in cases {
            assert_eq!(outcome(&tls, *sni), *want, "SNI {sni:?}");
        }
        let tcp = listener(31400);
        assert_eq!(
            outcome(&tcp, None),
            "forward db.internal:5432 dns by default/db"
        );
    }

    /// Istio's TLS termination of non-HTTP traffic: a `TLS` server with `tls.mode: SIMPLE`
    /// (certificates from `credentialName`) and a VirtualService's `tcp` routes.
    const TLS_TERMINATED: &str = "apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: edge, namespace: default}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 9443, name: tls-db, protocol: TLS}
    hosts: [db.example.com]
    tls: {mode: SIMPLE, credentialName: db-cert}
  - port: {number: 9443, name: tls-mq, protocol: TLS}
    hosts: [mq.example.com]
    tls: {mode: MUTUAL, credentialName: mq-cert}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: db, namespace: default}
spec:
  hosts: [db.example.com]
  gateways: [edge]
  tcp:
  - match: [{port: 9443}]
    route: [{destination: {host: db.internal, port: {number: 5432}}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: mq, namespace: default}
spec:
  hosts: [mq.example.com]
  gateways: [edge]
  tcp:
  - route: [{destination: {host: mq.internal, port: {number: 5672}}}]
  tls:
  - match: [{sniHosts: [mq.example.com]}]
    route: [{destination: {host: not-for-terminated.internal, port: {number: 443}}}]
";

    #[test]
    fn terminated_tls_takes_tcp_routes_by_the_sni_server() {
        let s = snap(TLS_TERMINATED);
        let p = plan(&s.gateways, &s.ctx.pod_labels, &PortMap::default());
        assert!(p.not_served.is_empty(), "{:?}", p.not_served);
        let l = p.listener(9443).expect("planned").clone();
        assert_eq!(l.kind, ListenerKind::TlsTerminated);
        assert!(l.kind.terminates_tls() && ListenerKind::Https.terminates_tls());
        assert!(!ListenerKind::Passthrough.terminates_tls());
        assert_eq!(l.servers.len(), 2);
        let outcome = |sni: Option<&str>| l4_outcome(&s, &l, sni);
        let cases: &[(Option<&str>, &str)] = &[
            (
                Some("db.example.com"),
                "forward db.internal:5432 dns by default/db",
            ),
            // The tcp route, never the tls one, once the gateway decrypted the stream.
            (
                Some("MQ.example.com."),
                "forward mq.internal:5672 dns by default/mq",
            ),
            (
                Some("www.example.com"),
                "deny 404: no Gateway server on port 9443 has host \"www.example.com\"",
            ),
            // No SNI: every server of the port; the first VirtualService loaded with tcp routes.
            (None, "forward db.internal:5432 dns by default/db"),
        ];
        for (sni, want) in cases {
            assert_eq!(outcome(*sni), *want, "SNI {sni:?}");
        }
        // ISTIO_MUTUAL terminates too (with the gateway's workload certificate).
        let other = TLS_TERMINATED.replacen(
            "mode: SIMPLE, credentialName: db-cert",
            "mode: ISTIO_MUTUAL",
            1,
        );
        let s = snap(&other);
        let p = plan(&s.gateways, &s.ctx.pod_labels, &PortMap::default());
        assert!(p.not_served.is_empty(), "{:?}", p.not_served);
        assert_eq!(p.listeners[0].kind, ListenerKind::TlsTerminated);
    }

    /// Istio's gateway with servers of several TLS modes on one port: PASSTHROUGH for one host,
    /// SIMPLE (HTTPS) for another, a terminated TLS (TCP) server, ISTIO_MUTUAL, and
    /// AUTO_PASSTHROUGH for the mesh's services by their cluster name in the SNI.
    const MIXED: &str = "apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: edge, namespace: default}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 443, name: tls-pass, protocol: TLS}
    hosts: [pass.example.com]
    tls: {mode: PASSTHROUGH}
  - port: {number: 443, name: https-web, protocol: HTTPS}
    hosts: ['*.example.com']
    tls: {mode: SIMPLE, credentialName: web-cert}
  - port: {number: 443, name: tls-db, protocol: TLS}
    hosts: [db.example.com]
    tls: {mode: SIMPLE, credentialName: db-cert}
  - port: {number: 443, name: mesh, protocol: HTTPS}
    hosts: [mesh.example.org]
    tls: {mode: ISTIO_MUTUAL}
  - port: {number: 443, name: auto, protocol: TLS}
    hosts: ['*.local']
    tls: {mode: AUTO_PASSTHROUGH}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: pass, namespace: default}
spec:
  hosts: [pass.example.com]
  gateways: [edge]
  tls:
  - match: [{sniHosts: [pass.example.com]}]
    route: [{destination: {host: pass.internal, port: {number: 443}}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: web, namespace: default}
spec:
  hosts: ['*.example.com', mesh.example.org]
  gateways: [edge]
  http:
  - route: [{destination: {host: web.internal, port: {number: 80}}}]
  tcp:
  - route: [{destination: {host: db.internal, port: {number: 5432}}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: reviews, namespace: default}
spec:
  hosts: [reviews.default.svc.cluster.local]
  location: MESH_INTERNAL
  ports: [{number: 9080, name: http, protocol: HTTP}]
  resolution: STATIC
  endpoints:
  - {address: 10.1.0.1, labels: {version: v1}}
  - {address: 10.1.0.2, labels: {version: v2}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: default}
spec:
  host: reviews.default.svc.cluster.local
  subsets:
  - {name: v1, labels: {version: v1}}
";

    #[test]
    fn tls_modes_share_a_port_by_sni() {
        let s = snap(MIXED);
        let p = plan(&s.gateways, &s.ctx.pod_labels, &PortMap::default());
        assert!(p.not_served.is_empty(), "{:?}", p.not_served);
        assert_eq!(p.listeners.len(), 1);
        let l = &p.listeners[0];
        assert_eq!(
            (l.port, l.kind, l.servers.len()),
            (8443, ListenerKind::TlsBySni, 5)
        );
        assert!(l.kind.terminates_tls());
        let action = |sni: Option<&str>| match tls_action(l, sni) {
            TlsAction::PassThrough(b) => format!("pass {}", b.server.port_name),
            TlsAction::Terminate { server, http } => format!(
                "terminate {} {}",
                server.server.port_name,
                if http { "http" } else { "tcp" }
            ),
            TlsAction::Close(why) => format!("close: {why}"),
        };
        let l4 = |sni: Option<&str>| {
            let mut rng = rand::rngs::StdRng::seed_from_u64(7);
            match route_l4(&s, l, sni, &mut rng) {
                Decision::Forward(f) => format!(
                    "forward {}:{} subset {:?} by {:?} to {:?}",
                    f.host,
                    f.port,
                    f.subset,
                    f.virtual_service,
                    f.endpoints
                        .iter()
                        .map(|e| e.addr.to_string())
                        .collect::<Vec<_>>()
                ),
                Decision::Deny { status, reason } => format!("deny {status}: {reason}"),
                other => format!("{other:?}"),
            }
        };
        let v1 = "outbound_.9080_.v1_.reviews.default.svc.cluster.local";
        let all = "outbound_.9080_._.reviews.default.svc.cluster.local";
        let cases: &[(Option<&str>, &str, &str)] = &[
            // The most specific host: passed through by its tls route.
            (
                Some("pass.example.com"),
                "pass tls-pass",
                "forward pass.internal:443 subset None by Some(\"default/pass\") to []",
            ),
            // Terminated, then HTTP: not for route_l4.
            (
                Some("www.example.com"),
                "terminate https-web http",
                "deny 404: Gateway default/edge spec.servers[1] serves HTTP, not TCP",
            ),
            // Terminated, then TCP: the tcp route.
            (
                Some("db.example.com"),
                "terminate tls-db tcp",
                "forward db.internal:5432 subset None by Some(\"default/web\") to []",
            ),
            (
                Some("mesh.example.org"),
                "terminate mesh http",
                "deny 404: Gateway default/edge spec.servers[3] serves HTTP, not TCP",
            ),
            // AUTO_PASSTHROUGH: the service, subset and port of the name; no VirtualService.
            (
                Some(v1),
                "pass auto",
                "forward reviews.default.svc.cluster.local:9080 subset Some(\"v1\") by None to [\"10.1.0.1:9080\"]",
            ),
            (
                Some(all),
                "pass auto",
                "forward reviews.default.svc.cluster.local:9080 subset None by None to [\"10.1.0.1:9080\", \"10.1.0.2:9080\"]",
            ),
            // A service the registry does not know is never resolved by DNS.
            (
                Some("outbound_.9080_._.ratings.default.svc.cluster.local"),
                "pass auto",
                "deny 404: host ratings.default.svc.cluster.local port 9080 is not known to the registry",
            ),
            // A subset no DestinationRule defines.
            (
                Some("outbound_.9080_.v3_.reviews.default.svc.cluster.local"),
                "pass auto",
                "deny 503: subset \"v3\" of host reviews.default.svc.cluster.local is not defined by any DestinationRule",
            ),
            // A name of the AUTO_PASSTHROUGH server's hosts that is no cluster name.
            (
                Some("reviews.default.svc.cluster.local"),
                "pass auto",
                "deny 404: Gateway default/edge spec.servers[4] is AUTO_PASSTHROUGH: server name \"reviews.default.svc.cluster.local\" is not Istio's outbound_.PORT_.SUBSET_.HOST: no outbound_. prefix",
            ),
            (
                Some("nowhere.org"),
                "close: no Gateway server on port 443 has host \"nowhere.org\"",
                "deny 404: no Gateway server on port 443 has host \"nowhere.org\"",
            ),
            // No SNI: the first server (passthrough), which needs a name to route.
            (
                None,
                "pass tls-pass",
                "deny 404: a connection passed through on port 443 needs a server name (SNI)",
            ),
        ];
        for (sni, want_action, want_l4) in cases {
            assert_eq!(action(*sni), *want_action, "action for {sni:?}");
            assert_eq!(l4(*sni), *want_l4, "route_l4 for {sni:?}");
        }
        // HTTP requests come only through the HTTPS servers of the port.
        assert_eq!(
            outcome(&s, l, "www.example.com", "/", true),
            "forward web.internal:80 dns"
        );
        assert_eq!(
            outcome(&s, l, "mesh.example.org", "/", true),
            "forward web.internal:80 dns"
        );
        // Not through the AUTO_PASSTHROUGH server's hosts.
        assert_eq!(outcome(&s, l, "x.local", "/", true), "deny 404");
        // Plain HTTP and TLS on one port still conflict.
        let http = MIXED.replacen(
            "  - port: {number: 443, name: tls-pass, protocol: TLS}\n    hosts: [pass.example.com]\n    tls: {mode: PASSTHROUGH}",
            "  - port: {number: 443, name: plain, protocol: HTTP}\n    hosts: [pass.example.com]",
            1,
        );
        let s = snap(&http);
        let p = plan(&s.gateways, &s.ctx.pod_labels, &PortMap::default());
        assert_eq!(p.not_served.len(), 4, "{:?}", p.not_served);
        assert_eq!(p.listeners[0].kind, ListenerKind::Http);
    }

    #[test]
    fn bookinfo_routes_at_the_gateway() {
        let s = snap(BOOKINFO);
        // Sidecars do not apply the gateway-only VirtualService; the gateway does.
        assert!(s.virtual_services.is_empty());
        assert_eq!(s.gateway_virtual_services.len(), 1);
        let p = plan(&s.gateways, &s.ctx.pod_labels, &PortMap::default());
        let l = p.listener(8080).unwrap();
        let cases: &[(&str, &str, &str)] = &[
            (
                "bookinfo.example",
                "/productpage",
                "forward productpage.default.svc.cluster.local:9080 dns",
            ),
            (
                "1.2.3.4:8080",
                "/static/x.css",
                "forward productpage.default.svc.cluster.local:9080 dns",
            ),
            (
                "bookinfo.example",
                "/static/../productpage",
                "forward productpage.default.svc.cluster.local:9080 dns /productpage",
            ),
            ("bookinfo.example", "/other", "deny 404"),
            ("bookinfo.example", "/", "deny 404"),
        ];
        for (authority, path, want) in cases {
            assert_eq!(
                outcome(&s, l, authority, path, false),
                *want,
                "{authority}{path}"
            );
        }
        let h = http::HeaderMap::new();
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let req = request("bookinfo.example", "/productpage", &h);
        let client = Some(std::net::IpAddr::from([203, 0, 113, 7]));
        match route(&s, l, &req, false, client, &mut rng) {
            Decision::Forward(f) => assert_eq!(
                f.request_headers.set,
                [
                    ("x-forwarded-proto".to_string(), "http".to_string()),
                    ("x-forwarded-for".to_string(), "203.0.113.7".to_string())
                ]
            ),
            other => panic!("{other:?}"),
        }
        let mut sent = http::HeaderMap::new();
        sent.append("x-forwarded-for", "10.1.1.1".parse().unwrap());
        sent.append("x-forwarded-for", "10.2.2.2, 10.3.3.3".parse().unwrap());
        assert_eq!(
            forwarded(&sent, "https", client),
            [
                ("x-forwarded-proto".to_string(), "https".to_string()),
                (
                    "x-forwarded-for".to_string(),
                    "10.1.1.1, 10.2.2.2, 10.3.3.3, 203.0.113.7".to_string()
                )
            ]
        );
        // Another pod's labels select nothing.
        let none = plan(
            &s.gateways,
            &labels(&[("istio", "egressgateway")]),
            &PortMap::default(),
        );
        assert!(none.listeners.is_empty());
    }

    #[test]
    fn hosts_namespaces_wildcards_redirects_and_match_gateways() {
        let yaml = [
            gw_yaml("gw", "istio-system", &format!("  - port: {{number: 80, name: http, protocol: HTTP}}\n    hosts: [shop/shop.example.com, '*/www.example.com', './admin.example.com', '*/*.wild.org']\n  - port: {{number: 80, name: http-redirect, protocol: HTTP}}\n    hosts: [secure.example.com]\n    tls: {{httpsRedirect: true}}\n{HTTPS}")),
            "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: shop, namespace: shop}
spec:
  hosts: [shop.example.com, www.example.com]
  gateways: [istio-system/gw]
  http:
  - route: [{destination: {host: shop, port: {number: 80}}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: intruder, namespace: other}
spec:
  hosts: [shop.example.com, admin.example.com]
  gateways: [istio-system/gw]
  http:
  - route: [{destination: {host: evil, port: {number: 80}}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: admin, namespace: istio-system}
spec:
  hosts: [admin.example.com, '*.example.com']
  gateways: [gw, mesh]
  http:
  - match: [{uri: {prefix: /mesh-only}, gateways: [mesh]}]
    route: [{destination: {host: mesh-only, port: {number: 80}}}]
  - match: [{uri: {prefix: /tls-only}, scheme: {exact: https}}]
    route: [{destination: {host: tls-only, port: {number: 80}}}]
  - route: [{destination: {host: admin, port: {number: 8000}}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: wild, namespace: w}
spec:
  hosts: ['*.wild.org', exact.wild.org]
  http:
  - match: [{gateways: [istio-system/gw], uri: {prefix: /}}]
    route: [{destination: {host: wild, port: {number: 80}}}]
"
            .to_string(),
        ]
        .join("---\n");
        let s = snap(&yaml);
        let p = plan(&s.gateways, &s.ctx.pod_labels, &PortMap::default());
        let http = p.listener(8080).unwrap();
        let https = p.listener(8443).unwrap();
        let cases: &[(&Listener, &str, &str, bool, &str)] = &[
            // `shop/` admits only VirtualServices of namespace shop: the intruder is not bound.
            (
                http,
                "shop.example.com",
                "/",
                false,
                "forward shop.shop.svc.cluster.local:80 dns",
            ),
            (
                http,
                "www.example.com:80",
                "/a",
                false,
                "forward shop.shop.svc.cluster.local:80 dns",
            ),
            // `./`: only the Gateway's namespace.
            (
                http,
                "admin.example.com",
                "/",
                false,
                "forward admin.istio-system.svc.cluster.local:8000 dns",
            ),
            // A match bound to mesh only is skipped at the gateway; scheme matches http here.
            (
                http,
                "admin.example.com",
                "/mesh-only",
                false,
                "forward admin.istio-system.svc.cluster.local:8000 dns",
            ),
            (
                http,
                "admin.example.com",
                "/tls-only",
                false,
                "forward admin.istio-system.svc.cluster.local:8000 dns",
            ),
            // Wildcard server host, a VirtualService bound by its match's gateways; the exact
            // VirtualService host is more specific than the wildcard.
            (
                http,
                "a.wild.org",
                "/x",
                false,
                "forward wild.w.svc.cluster.local:80 dns",
            ),
            (
                http,
                "exact.wild.org",
                "/x",
                false,
                "forward wild.w.svc.cluster.local:80 dns",
            ),
            (http, "wild.org", "/x", false, "deny 404"),
            // No server has the host.
            (http, "unknown.com", "/", false, "deny 404"),
            // httpsRedirect on the server of the host.
            (
                http,
                "secure.example.com:80",
                "/a?b=1",
                false,
                "redirect 301 https://secure.example.com/a?b=1",
            ),
            // HTTPS: `*.example.com` server; the admin VirtualService's wildcard host.
            (
                https,
                "api.example.com",
                "/tls-only/x",
                true,
                "forward tls-only.istio-system.svc.cluster.local:80 dns",
            ),
            (
                https,
                "api.example.com",
                "/",
                true,
                "forward admin.istio-system.svc.cluster.local:8000 dns",
            ),
            (
                https,
                "shop.example.com",
                "/",
                true,
                "forward shop.shop.svc.cluster.local:80 dns",
            ),
        ];
        for (l, authority, path, tls, want) in cases {
            assert_eq!(
                outcome(&s, l, authority, path, *tls),
                *want,
                "{authority}{path}"
            );
        }
    }

    #[test]
    fn weights_and_exported_to() {
        let yaml = gw_yaml(
            "gw",
            "istio-system",
            "  - port: {number: 80, name: http, protocol: HTTP}\n    hosts: ['*']",
        ) + "---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: split, namespace: istio-system}
spec:
  hosts: [split.example.com]
  gateways: [gw]
  http:
  - route:
    - {destination: {host: a, port: {number: 80}}, weight: 80}
    - {destination: {host: b, port: {number: 80}}, weight: 20}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: private, namespace: shop}
spec:
  hosts: [private.example.com]
  gateways: [istio-system/gw]
  exportTo: ['.']
  http:
  - route: [{destination: {host: p, port: {number: 80}}}]
";
        let s = snap(&yaml);
        let p = plan(&s.gateways, &s.ctx.pod_labels, &PortMap::default());
        let l = p.listener(8080).unwrap();
        let h = http::HeaderMap::new();
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let mut a = 0;
        for _ in 0..1000 {
            if let Decision::Forward(f) = route(
                &s,
                l,
                &request("split.example.com", "/", &h),
                false,
                None,
                &mut rng,
            ) {
                a += usize::from(f.host.starts_with("a."));
            }
        }
        assert!((750..850).contains(&a), "{a} of 1000 to a");
        // exportTo '.' in namespace shop: not visible to the gateway in istio-system.
        assert_eq!(
            outcome(&s, l, "private.example.com", "/", false),
            "deny 404"
        );
    }

    /// Istio's egress gateway pattern (its "Egress Gateways" task, HTTP): sidecars send
    /// `edition.cnn.com` to the egress gateway, which sends it on to the external host.
    #[test]
    fn egress_gateway_pattern() {
        let yaml = "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: cnn, namespace: default}
spec:
  hosts: [edition.cnn.com]
  ports: [{number: 80, name: http-port, protocol: HTTP}]
  resolution: STATIC
  endpoints: [{address: 151.101.1.67}]
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: istio-egressgateway, namespace: default}
spec:
  selector: {istio: egressgateway}
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: [edition.cnn.com]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: direct-cnn-through-egress-gateway, namespace: default}
spec:
  hosts: [edition.cnn.com]
  gateways: [istio-egressgateway, mesh]
  http:
  - match: [{gateways: [mesh], port: 80}]
    route:
    - destination: {host: istio-egressgateway.istio-system.svc.cluster.local, port: {number: 80}}
  - match: [{gateways: [istio-egressgateway], port: 80}]
    route:
    - destination: {host: edition.cnn.com, port: {number: 80}}
";
        let egress = LoadContext {
            namespace: "istio-system".into(),
            pod_labels: labels(&[("istio", "egressgateway")]),
            ..LoadContext::default()
        };
        let s = snapshot_from_yaml(&[("t.yaml", yaml)], &egress, 1).unwrap();
        let p = plan(&s.gateways, &s.ctx.pod_labels, &PortMap::default());
        assert_eq!(p.gateways, ["default/istio-egressgateway"]);
        let l = p.listener(8080).unwrap();
        assert_eq!(
            outcome(&s, l, "edition.cnn.com", "/politics", false),
            "forward edition.cnn.com:80"
        );
        assert_eq!(outcome(&s, l, "other.com", "/", false), "deny 404");
        // A sidecar (namespace default) sends the same request to the egress gateway.
        let sidecar = LoadContext {
            namespace: "default".into(),
            ..LoadContext::default()
        };
        let s = snapshot_from_yaml(&[("t.yaml", yaml)], &sidecar, 1).unwrap();
        let h = http::HeaderMap::new();
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let req = RequestInfo {
            authority: "edition.cnn.com",
            method: "GET",
            path: "/politics",
            headers: &h,
            dst: SocketAddr::from(([151, 101, 1, 67], 80)),
        };
        match crate::route::route(&s, &req, &mut rng) {
            Decision::Forward(f) => assert_eq!(
                (f.host.as_str(), f.port),
                ("istio-egressgateway.istio-system.svc.cluster.local", 80)
            ),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn invalid_gateways_do_not_reject_the_set() {
        let yaml = gw_yaml(
            "bad",
            "istio-system",
            "  - port: {number: 80, name: http, protocol: UDP}\n    hosts: ['*']",
        ) + "---\n"
            + BOOKINFO;
        let s = snap(&yaml);
        assert_eq!(s.gateways.len(), 1);
        assert_eq!(s.gateway_errors.len(), 1);
        let e = &s.gateway_errors[0];
        assert_eq!(e.field, "spec.servers[0].port.protocol");
        assert!(e.reason.starts_with("\"UDP\" is not HTTP"), "{}", e.reason);
    }
}
