//! The rules: an Istio-shaped config model (VirtualService, DestinationRule, ServiceEntry,
//! Sidecar), its loader from a ConfigMap-style directory. The proxy adds the hot-reload watcher.
//! `model` is every kind in one place (`crate::kinds` and the DestinationRule of
//! `crate::policy::traffic`).
//!
//! `load_dir` is the only entry that reads files (and resolves `resolution: DNS` names);
//! everything it produces is a plain value (`Snapshot`) that `crate::route::route` evaluates
//! without I/O.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

pub mod decode;
pub mod digest;
pub mod endpoints;
pub mod gateway;
pub mod load;

pub use crate::host;
pub use crate::kinds::*;
pub use crate::policy::traffic::{DestinationRule, Subset};
pub use crate::policy::PolicyKinds;
pub use crate::security::{AuthorizationPolicy, PeerAuthentication, RequestAuthentication};
pub use endpoints::{EndpointSource, ServiceEntryEndpoints};

/// The kinds as the model holds them.
pub mod model {
    pub use crate::kinds::*;
    pub use crate::policy::traffic::{DestinationRule, Subset};
}

/// The application protocol of a destination port, when the rules say it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Http,
    Http2,
    Grpc,
    Tcp,
    Tls,
}

/// One loaded, validated rule set, with visibility already applied: only the resources this
/// proxy uses are in the lists; the rest are in `ignored` with the reason.
#[derive(Clone)]
pub struct Snapshot {
    pub generation: u64,
    /// SHA-256 (hex) of the input files' names and contents.
    pub hash: String,
    /// e.g. `files:/etc/remora/rules`.
    pub source: String,
    pub ctx: LoadContext,
    pub virtual_services: Vec<VirtualService>,
    pub destination_rules: Vec<DestinationRule>,
    pub service_entries: Vec<ServiceEntry>,
    /// The Sidecar that applies to this pod, if any.
    pub sidecar: Option<Sidecar>,
    /// The `security.istio.io` policies that apply to this pod (mesh-wide, namespace-wide or
    /// selecting its labels), in file order. Decoded and validated; the proxy enforces them.
    pub peer_authentications: Vec<PeerAuthentication>,
    pub authorization_policies: Vec<AuthorizationPolicy>,
    pub request_authentications: Vec<RequestAuthentication>,
    /// The Telemetry rules that apply to this pod (scoped as the security kinds), and what
    /// they say for it (the proxy applies `telemetry`).
    pub telemetries: Vec<crate::telemetry::Telemetry>,
    pub telemetry: crate::telemetry::Effective,
    /// Every valid `Gateway` in the set (a gateway proxy picks those selecting it; sidecars
    /// list them in `ignored`), and the invalid ones with the reason.
    pub gateways: Vec<gateway::Gateway>,
    pub gateway_errors: Vec<LoadError>,
    /// VirtualServices bound to a gateway (by `gateways` or a match's `gateways`), exported to
    /// this namespace, for a gateway proxy. Those also bound to `mesh` are in
    /// `virtual_services` too.
    pub gateway_virtual_services: Vec<VirtualService>,
    pub ignored: Vec<Ignored>,
    /// The files read (names inside the directory).
    pub files: Vec<String>,
    /// Visible entries not read, with the reason (directories, other extensions, dangling
    /// symlinks).
    pub skipped_files: Vec<(String, String)>,
    pub endpoints: Arc<dyn EndpointSource>,
    /// Host indexes over the lists above (rebuild with `reindex` after changing the lists).
    pub index: Indexes,
    /// Fields Istio's API does not define (likely typos), accepted and ignored; one entry
    /// each with the file, document, field path and a suggestion.
    pub unknown_fields: Vec<LoadError>,
    /// The `resolution: DNS` names resolved while loading and their answers (the watcher
    /// re-resolves them at each rescan and applies a new generation when they change).
    pub dns: BTreeMap<String, Vec<std::net::IpAddr>>,
    /// Every route's `corsPolicy` and every `RateLimit`, decoded once with the rest of the set
    /// (`build_snapshot` keeps the routes' CORS policies, `load_inputs` adds the rate limits).
    pub policy: PolicyKinds,
}

/// Host indexes of a snapshot's VirtualServices (those with `http` routes), ServiceEntries and
/// DestinationRules.
#[derive(Clone, Debug, Default)]
pub struct Indexes {
    pub http_virtual_services: host::HostIndex,
    pub service_entries: host::HostIndex,
    pub destination_rules: host::HostIndex,
}

impl fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Snapshot")
            .field("generation", &self.generation)
            .field("hash", &self.hash)
            .field("source", &self.source)
            .field("counts", &self.counts())
            .finish()
    }
}

/// Rule counts of a snapshot, for logs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Counts {
    pub virtual_services: usize,
    pub http_routes: usize,
    pub destination_rules: usize,
    pub service_entries: usize,
    pub sidecars: usize,
    /// The security kinds are written only when present, so a dump without them reads as
    /// before.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub peer_authentications: usize,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub authorization_policies: usize,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub request_authentications: usize,
    pub ignored: usize,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

impl fmt::Display for Counts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} VirtualServices ({} http routes), {} DestinationRules, {} ServiceEntries, {} Sidecar, {} PeerAuthentications, {} AuthorizationPolicies, {} RequestAuthentications, {} ignored",
            self.virtual_services,
            self.http_routes,
            self.destination_rules,
            self.service_entries,
            self.sidecars,
            self.peer_authentications,
            self.authorization_policies,
            self.request_authentications,
            self.ignored
        )
    }
}

impl Snapshot {
    pub fn empty(ctx: &LoadContext) -> Snapshot {
        Snapshot {
            generation: 0,
            // No input hashes to "", so the first real rule set (even an empty directory) is
            // always applied over it.
            hash: String::new(),
            source: "empty".to_string(),
            ctx: ctx.clone(),
            virtual_services: Vec::new(),
            destination_rules: Vec::new(),
            service_entries: Vec::new(),
            sidecar: None,
            peer_authentications: Vec::new(),
            authorization_policies: Vec::new(),
            request_authentications: Vec::new(),
            telemetries: Vec::new(),
            telemetry: Default::default(),
            gateways: Vec::new(),
            gateway_errors: Vec::new(),
            gateway_virtual_services: Vec::new(),
            ignored: Vec::new(),
            files: Vec::new(),
            skipped_files: Vec::new(),
            endpoints: Arc::new(ServiceEntryEndpoints::default()),
            index: Indexes::default(),
            unknown_fields: Vec::new(),
            dns: BTreeMap::new(),
            policy: PolicyKinds::default(),
        }
    }

    /// Add an endpoint source asked after the ServiceEntries (for example Kubernetes
    /// discovery): hosts no ServiceEntry knows are looked up there.
    pub fn with_endpoint_source(mut self, source: Arc<dyn EndpointSource>) -> Snapshot {
        self.endpoints = Arc::new(endpoints::ChainedEndpoints {
            sources: vec![self.endpoints.clone(), source],
        });
        self
    }

    /// Rebuild the host indexes from the resource lists.
    pub fn reindex(&mut self) {
        self.index = Indexes {
            http_virtual_services: host::HostIndex::build(
                self.virtual_services
                    .iter()
                    .enumerate()
                    .filter(|(_, v)| !v.http.is_empty())
                    .flat_map(|(i, v)| v.hosts.iter().map(move |h| (i, h.as_str()))),
            ),
            service_entries: host::HostIndex::build(
                self.service_entries
                    .iter()
                    .enumerate()
                    .flat_map(|(i, s)| s.hosts.iter().map(move |h| (i, h.as_str()))),
            ),
            destination_rules: host::HostIndex::build(
                self.destination_rules
                    .iter()
                    .enumerate()
                    .map(|(i, d)| (i, d.host.as_str())),
            ),
        };
    }

    pub fn counts(&self) -> Counts {
        Counts {
            virtual_services: self.virtual_services.len(),
            http_routes: self.virtual_services.iter().map(|v| v.http.len()).sum(),
            destination_rules: self.destination_rules.len(),
            service_entries: self.service_entries.len(),
            sidecars: self.sidecar.is_some() as usize,
            peer_authentications: self.peer_authentications.len(),
            authorization_policies: self.authorization_policies.len(),
            request_authentications: self.request_authentications.len(),
            ignored: self.ignored.len(),
        }
    }

    /// The effective mTLS mode of inbound `port` for this pod, and the PeerAuthentication
    /// that decided it (`crate::security::mtls_mode`).
    pub fn mtls_mode(&self, port: u16) -> crate::security::MtlsDecision {
        crate::security::mtls_mode(&self.peer_authentications, port, &self.ctx.root_namespace)
    }

    /// The protocol of destination `dst` (and `host`, when known) according to the
    /// ServiceEntries, or Istio's defaults for well-known server-first ports; `None` when the
    /// rules do not say (the data plane sniffs).
    pub fn port_protocol(&self, dst: SocketAddr, host: Option<&str>) -> Option<Protocol> {
        let port = dst.port();
        // 1. The host, when the caller knows it.
        if let Some(h) = host {
            let (name, _) = host::split_authority(h);
            let cands = host::candidates(&name, &self.ctx.namespace, &self.ctx.cluster_domain);
            if let Some(se) = self.best_service_entry(&cands) {
                if let Some(p) = se.ports.iter().find(|p| p.number == port) {
                    if let Some(proto) = service_port_protocol(p) {
                        return Some(proto);
                    }
                }
            }
        }
        // 2. A ServiceEntry whose addresses or endpoints contain the destination IP.
        for se in &self.service_entries {
            let by_addr = se.addresses.iter().any(|n| n.contains(&dst.ip()));
            let by_ep = se.endpoints.iter().any(|e| {
                e.address.parse::<std::net::IpAddr>().ok() == Some(dst.ip())
                    && (e.ports.is_empty() || e.ports.values().any(|p| *p == port))
            });
            if by_addr || by_ep {
                let p = se.ports.iter().find(|p| p.number == port).or_else(|| {
                    // An endpoint port (target) maps back to its service port by name.
                    se.endpoints
                        .iter()
                        .filter(|e| e.address.parse::<std::net::IpAddr>().ok() == Some(dst.ip()))
                        .flat_map(|e| e.ports.iter())
                        .find(|(_, p)| **p == port)
                        .and_then(|(n, _)| se.ports.iter().find(|sp| sp.name.as_deref() == Some(n)))
                });
                if let Some(proto) = p.and_then(service_port_protocol) {
                    return Some(proto);
                }
            }
        }
        // 2b. A Kubernetes Service whose ClusterIP is the destination: its port's
        //     `appProtocol`, else its name prefix (`http-web`, `grpc`, `tcp-db`), as Istio reads
        //     them.
        if let Some(proto) = self
            .endpoints
            .service_port(dst.ip(), port)
            .as_ref()
            .and_then(service_port_protocol)
        {
            return Some(proto);
        }
        // 3. ServiceEntries without addresses declare the port for every address (as Istio's
        //    0.0.0.0:port listener does), when they agree.
        let mut found: Option<Protocol> = None;
        for se in self
            .service_entries
            .iter()
            .filter(|s| s.addresses.is_empty())
        {
            if let Some(p) = se.ports.iter().find(|p| p.number == port) {
                match (found, service_port_protocol(p)) {
                    (_, None) => {}
                    (None, Some(x)) => found = Some(x),
                    (Some(a), Some(b)) if a == b => {}
                    (Some(_), Some(_)) => return None, // conflicting declarations: sniff
                }
            }
        }
        if found.is_some() {
            return found;
        }
        // 4. Istio's ports known to be incompatible with sniffing (treated as TCP).
        match port {
            25 | 53 | 3306 | 27017 => Some(Protocol::Tcp),
            _ => None,
        }
    }

    /// The most specific ServiceEntry for one of the candidate FQDNs.
    pub fn best_service_entry(&self, candidates: &[String]) -> Option<&ServiceEntry> {
        self.index
            .service_entries
            .best(candidates)
            .and_then(|i| self.service_entries.get(i))
    }

    /// The most specific DestinationRule for an FQDN.
    pub fn destination_rule(&self, fqdn: &str) -> Option<&DestinationRule> {
        self.index
            .destination_rules
            .best(&[fqdn.to_string()])
            .and_then(|i| self.destination_rules.get(i))
    }

    /// The most specific VirtualService with `http` routes for one of the candidate FQDNs.
    pub fn best_http_virtual_service(&self, candidates: &[String]) -> Option<&VirtualService> {
        self.index
            .http_virtual_services
            .best(candidates)
            .and_then(|i| self.virtual_services.get(i))
    }
}

/// The protocol a ServiceEntry port declares: `protocol`, else the port name's prefix
/// (`http`, `http-*`, `http2-*`, `grpc-*`, `tcp-*`, `tls-*`, `https-*`, `mongo-*`, ...).
pub fn service_port_protocol(p: &ServicePort) -> Option<Protocol> {
    if let Some(proto) = &p.protocol {
        return protocol_name(proto);
    }
    let name = p.name.as_deref()?;
    let prefix = name.split('-').next().unwrap_or(name);
    if prefix == "grpc" && name.starts_with("grpc-web") {
        return Some(Protocol::Grpc);
    }
    protocol_name(prefix)
}

/// A Kubernetes `appProtocol` as the protocol name Istio reads it as (`kubernetes.io/h2c` is
/// HTTP2, `kubernetes.io/ws` HTTP, `kubernetes.io/wss` TLS); `None` when Istio does not know it
/// (then the port name decides).
pub fn app_protocol_name(app: &str) -> Option<&'static str> {
    let p = match app.to_ascii_lowercase().as_str() {
        "kubernetes.io/h2c" => Protocol::Http2,
        "kubernetes.io/ws" => Protocol::Http,
        "kubernetes.io/wss" => Protocol::Tls,
        other => protocol_name(other)?,
    };
    Some(match p {
        Protocol::Http => "HTTP",
        Protocol::Http2 => "HTTP2",
        Protocol::Grpc => "GRPC",
        Protocol::Tcp => "TCP",
        Protocol::Tls => "TLS",
    })
}

fn protocol_name(s: &str) -> Option<Protocol> {
    match s.to_ascii_uppercase().as_str() {
        "HTTP" => Some(Protocol::Http),
        "HTTP2" => Some(Protocol::Http2),
        "GRPC" | "GRPC-WEB" => Some(Protocol::Grpc),
        "TCP" | "MONGO" | "MYSQL" | "REDIS" => Some(Protocol::Tcp),
        "TLS" | "HTTPS" => Some(Protocol::Tls),
        _ => None, // UDP and unknown: not ours to decide
    }
}

impl std::error::Error for LoadError {}

/// Does a resource's `exportTo` make it visible to a proxy in `proxy_ns`?
pub fn exported_to(export_to: &[String], resource_ns: &str, proxy_ns: &str) -> bool {
    if export_to.is_empty() {
        return true;
    }
    export_to.iter().any(|e| match e.as_str() {
        "*" => true,
        "." => resource_ns == proxy_ns,
        "~" => false,
        ns => ns == proxy_ns,
    })
}

/// The Sidecar that applies to a pod: one in the pod's namespace whose selector matches its
/// labels, else one in the namespace without selector, else the root namespace's default; as
/// it applies to the pod (`.` in its egress hosts is the pod's namespace).
pub fn select_sidecar(sidecars: &[Sidecar], ctx: &LoadContext) -> Option<Sidecar> {
    let in_ns = |s: &&Sidecar| s.meta.namespace == ctx.namespace;
    sidecars
        .iter()
        .filter(in_ns)
        .find(|s| {
            s.workload_selector.as_ref().is_some_and(|sel| {
                !sel.is_empty() && sel.iter().all(|(k, v)| ctx.pod_labels.get(k) == Some(v))
            })
        })
        .or_else(|| {
            sidecars
                .iter()
                .filter(in_ns)
                .find(|s| s.workload_selector.as_ref().is_none_or(|s| s.is_empty()))
        })
        .or_else(|| {
            sidecars.iter().find(|s| {
                s.meta.namespace == ctx.root_namespace
                    && s.workload_selector.as_ref().is_none_or(|s| s.is_empty())
            })
        })
        .map(|s| s.for_namespace(&ctx.namespace))
}

/// The endpoints of a ServiceEntry with `workloadSelector` `sel`, as istiod selects them: the
/// WorkloadEntries of its namespace whose labels include `sel`, in name order. One whose address
/// does not suit the ServiceEntry's resolution (a host name for STATIC) is left out, noted in
/// `ignored`.
pub fn select_workload_entries(
    se: &ServiceEntry,
    sel: &BTreeMap<String, String>,
    workload_entries: &[WorkloadEntryObject],
    ignored: &mut Vec<Ignored>,
) -> Vec<WorkloadEntry> {
    let mut chosen: Vec<&WorkloadEntryObject> = workload_entries
        .iter()
        .filter(|w| {
            w.meta.namespace == se.meta.namespace
                && sel.iter().all(|(k, v)| w.entry.labels.get(k) == Some(v))
        })
        .collect();
    chosen.sort_by(|a, b| a.meta.name.cmp(&b.meta.name));
    chosen
        .into_iter()
        .filter(|w| {
            match decode::check_endpoint_address(
                &w.entry.address,
                se.resolution,
                "spec.address",
                "spec",
            ) {
                Ok(()) => true,
                Err(e) => {
                    ignored.push(Ignored {
                        file: w.meta.file.clone(),
                        document: w.meta.document,
                        kind: w.meta.kind.clone(),
                        name: w.meta.key(),
                        reason: format!(
                            "selected by ServiceEntry {} but not used as its endpoint: {}: {}",
                            se.meta.key(),
                            e.field,
                            e.reason
                        ),
                    });
                    false
                }
            }
        })
        .map(|w| w.entry.clone())
        .collect()
}

/// Is a resource (namespace, hosts) in the Sidecar's egress scope?
pub fn in_egress_scope(sc: &Sidecar, ns: &str, hosts: &[String]) -> bool {
    if sc.egress.is_empty() {
        return true;
    }
    sc.egress.iter().flat_map(|l| l.hosts.iter()).any(|eh| {
        let ns_ok = match eh.namespace.as_str() {
            "*" => true,
            "~" => false,
            n => n == ns,
        };
        ns_ok && hosts.iter().any(|h| host::overlaps(&eh.dns, h))
    })
}

/// Is a resource (namespace, hosts) visible to traffic on `port` under the Sidecar's egress
/// listeners? A listener with `port` applies to that port; the listener without a port to the
/// other ports (Istio's catch-all egress listener).
pub fn in_egress_scope_on_port(sc: &Sidecar, ns: &str, hosts: &[String], port: u16) -> bool {
    if sc.egress.is_empty() {
        return true;
    }
    let on_port: Vec<&EgressListener> = sc.egress.iter().filter(|l| l.port == Some(port)).collect();
    let listeners: Vec<&EgressListener> = if on_port.is_empty() {
        sc.egress.iter().filter(|l| l.port.is_none()).collect()
    } else {
        on_port
    };
    listeners.iter().flat_map(|l| l.hosts.iter()).any(|eh| {
        let ns_ok = match eh.namespace.as_str() {
            "*" => true,
            "~" => false,
            n => n == ns,
        };
        ns_ok && hosts.iter().any(|h| host::overlaps(&eh.dns, h))
    })
}

/// Build the snapshot from decoded resources: apply `gateways`, `exportTo` and the Sidecar's
/// egress scope; build the endpoint source (resolving DNS names with `resolve`).
pub fn build_snapshot(
    decoded: load::Decoded,
    ctx: &LoadContext,
    generation: u64,
    hash: String,
    source: String,
    files: Vec<String>,
    resolve: &endpoints::Resolver<'_>,
) -> Snapshot {
    let mut ignored = decoded.ignored;
    let unknown_fields = decoded.unknown_fields;
    let cors = decoded.cors;
    let sidecar = select_sidecar(&decoded.sidecars, ctx);
    for sc in &decoded.sidecars {
        if sidecar.as_ref().is_none_or(|s| s.meta != sc.meta) {
            ignored.push(Ignored {
                file: sc.meta.file.clone(),
                document: sc.meta.document,
                kind: sc.meta.kind.clone(),
                name: sc.meta.key(),
                reason: "Sidecar does not select this pod (or another Sidecar takes precedence)"
                    .into(),
            });
        }
    }
    let note = |ignored: &mut Vec<Ignored>, m: &Meta, reason: &str| {
        ignored.push(Ignored {
            file: m.file.clone(),
            document: m.document,
            kind: m.kind.clone(),
            name: m.key(),
            reason: reason.to_string(),
        })
    };
    let mut virtual_services = Vec::new();
    let mut gateway_virtual_services = Vec::new();
    for vs in decoded.virtual_services {
        let to_gateway = |g: &[String]| g.iter().any(|g| g != "mesh");
        if (to_gateway(&vs.gateways)
            || vs
                .http
                .iter()
                .flat_map(|r| r.matches.iter())
                .any(|m| to_gateway(&m.gateways))
            || vs
                .tls
                .iter()
                .chain(vs.tcp.iter())
                .flat_map(|r| r.matches.iter())
                .any(|m| to_gateway(&m.gateways)))
            && exported_to(&vs.export_to, &vs.meta.namespace, &ctx.namespace)
        {
            gateway_virtual_services.push(vs.clone());
        }
        if !vs.applies_to_mesh {
            note(
                &mut ignored,
                &vs.meta,
                "bound to gateways only (not \"mesh\"); not applied to sidecars",
            );
        } else if !exported_to(&vs.export_to, &vs.meta.namespace, &ctx.namespace) {
            note(
                &mut ignored,
                &vs.meta,
                "not exported to this namespace (exportTo)",
            );
        } else if sidecar
            .as_ref()
            .is_some_and(|sc| !in_egress_scope(sc, &vs.meta.namespace, &vs.hosts))
        {
            note(&mut ignored, &vs.meta, "outside the Sidecar's egress hosts");
        } else {
            virtual_services.push(vs);
        }
    }
    let mut service_entries = Vec::new();
    let workload_entries = decoded.workload_entries;
    for mut se in decoded.service_entries {
        if let Some(sel) = &se.workload_selector {
            se.endpoints = select_workload_entries(&se, sel, &workload_entries, &mut ignored);
        }
        if !exported_to(&se.export_to, &se.meta.namespace, &ctx.namespace) {
            note(
                &mut ignored,
                &se.meta,
                "not exported to this namespace (exportTo)",
            );
        } else if sidecar
            .as_ref()
            .is_some_and(|sc| !in_egress_scope(sc, &se.meta.namespace, &se.hosts))
        {
            note(&mut ignored, &se.meta, "outside the Sidecar's egress hosts");
        } else {
            service_entries.push(se);
        }
    }
    let mut destination_rules = Vec::new();
    for dr in decoded.destination_rules {
        // Istio: a workloadSelector selects pods of the rule's own namespace only.
        let selects = dr.workload_selector.as_ref().is_none_or(|sel| {
            sel.is_empty()
                || (dr.meta.namespace == ctx.namespace
                    && sel.iter().all(|(k, v)| ctx.pod_labels.get(k) == Some(v)))
        });
        if !exported_to(&dr.export_to, &dr.meta.namespace, &ctx.namespace) {
            note(
                &mut ignored,
                &dr.meta,
                "not exported to this namespace (exportTo)",
            );
        } else if !selects {
            note(
                &mut ignored,
                &dr.meta,
                "workloadSelector does not select this pod",
            );
        } else if let Some(first) = destination_rules
            .iter_mut()
            .find(|d: &&mut DestinationRule| {
                d.host == dr.host
                    && d.meta.namespace == dr.meta.namespace
                    && d.workload_selector == dr.workload_selector
            })
        {
            // Istio merges DestinationRules of one host in a namespace: subsets are added (the
            // first definition of a name wins); the first rule's trafficPolicy stays.
            let mut added = Vec::new();
            for sub in dr.subsets {
                if !first.subsets.iter().any(|s| s.name == sub.name) {
                    added.push(sub.name.clone());
                    first.subsets.push(sub);
                }
            }
            if first.traffic_policy.is_none() {
                first.traffic_policy = dr.traffic_policy.clone();
            }
            let reason = format!(
                "merged into DestinationRule {} (same host {}): subsets added: {}",
                first.meta.key(),
                first.host,
                if added.is_empty() {
                    "none".to_string()
                } else {
                    added.join(", ")
                }
            );
            note(&mut ignored, &dr.meta, &reason);
        } else {
            destination_rules.push(dr);
        }
    }
    // Istio's DestinationRule precedence for one host: the proxy's namespace, then the
    // service's (other namespaces), then the root namespace; file order within each.
    let rank = |dr: &DestinationRule| -> u8 {
        if dr.meta.namespace == ctx.namespace {
            0
        } else if dr.meta.namespace != ctx.root_namespace {
            1
        } else {
            2
        }
    };
    destination_rules.sort_by_key(|dr| rank(dr));
    // Security policies: Istio's scope for this pod (mesh-wide, its namespace, its labels).
    let scoped = |ignored: &mut Vec<Ignored>,
                  m: &Meta,
                  ok: Result<crate::security::Scope, String>| match ok {
        Ok(_) => true,
        Err(why) => {
            note(ignored, m, &format!("does not apply to this pod: {why}"));
            false
        }
    };
    let peer_authentications: Vec<PeerAuthentication> = decoded
        .peer_authentications
        .into_iter()
        .filter(|p| {
            let ok = crate::security::applies(&p.meta.namespace, p.spec.selector.as_ref(), ctx);
            scoped(&mut ignored, &p.meta, ok)
        })
        .collect();
    let authorization_policies: Vec<AuthorizationPolicy> = decoded
        .authorization_policies
        .into_iter()
        .filter(|p| {
            let ok = crate::security::applies(&p.meta.namespace, p.spec.selector.as_ref(), ctx);
            scoped(&mut ignored, &p.meta, ok)
        })
        .collect();
    let request_authentications: Vec<RequestAuthentication> = decoded
        .request_authentications
        .into_iter()
        .filter(|p| {
            let ok = crate::security::applies(&p.meta.namespace, p.spec.selector.as_ref(), ctx);
            scoped(&mut ignored, &p.meta, ok)
        })
        .collect();
    let telemetries: Vec<crate::telemetry::Telemetry> = decoded
        .telemetries
        .into_iter()
        .filter(|p| {
            let ok = crate::security::applies(&p.meta.namespace, p.spec.selector.as_ref(), ctx);
            scoped(&mut ignored, &p.meta, ok)
        })
        .collect();
    let telemetry = crate::telemetry::effective(&telemetries);
    let answers = std::sync::Mutex::new(BTreeMap::new());
    let recording = |name: &str| -> Vec<std::net::IpAddr> {
        let ips = resolve(name);
        if let Ok(mut a) = answers.lock() {
            a.insert(name.to_string(), ips.clone());
        }
        ips
    };
    let endpoints = Arc::new(ServiceEntryEndpoints::new(&service_entries, &recording));
    let dns = answers.into_inner().unwrap_or_else(|p| p.into_inner());
    let mut snap = Snapshot {
        generation,
        hash,
        source,
        ctx: ctx.clone(),
        virtual_services,
        destination_rules,
        service_entries,
        sidecar,
        peer_authentications,
        authorization_policies,
        request_authentications,
        telemetries,
        telemetry,
        gateways: decoded.gateways,
        gateway_errors: decoded.gateway_errors,
        gateway_virtual_services,
        ignored,
        files,
        skipped_files: Vec::new(),
        endpoints,
        index: Indexes::default(),
        unknown_fields,
        dns,
        policy: PolicyKinds {
            cors,
            rate_limits: Vec::new(),
        },
    };
    snap.reindex();
    snap
}

/// Load and validate a rules directory. Errors: the first problem found (all of them are in
/// `load_dir_all`).
pub fn load_dir(dir: &Path, ctx: &LoadContext, generation: u64) -> Result<Snapshot, LoadError> {
    load_dir_all(dir, ctx, generation).map_err(|mut errs| errs.remove(0))
}

/// Like `load_dir`, returning every error (never an empty list).
pub fn load_dir_all(
    dir: &Path,
    ctx: &LoadContext,
    generation: u64,
) -> Result<Snapshot, Vec<LoadError>> {
    let inputs = load::read_inputs(dir).map_err(|e| vec![e])?;
    load_inputs(&inputs, ctx, generation, &endpoints::system_resolver)
}

/// Decode and build from already-read inputs.
pub fn load_inputs(
    inputs: &load::Inputs,
    ctx: &LoadContext,
    generation: u64,
    resolve: &endpoints::Resolver<'_>,
) -> Result<Snapshot, Vec<LoadError>> {
    let decoded = load::decode_inputs(inputs, ctx);
    if !decoded.errors.is_empty() {
        return Err(decoded.errors);
    }
    // An invalid RateLimit rejects the set like any other error.
    let rate_limits = crate::policy::decode::rate_limits(&inputs.files, ctx)?;
    let files = inputs.files.iter().map(|(n, _)| n.clone()).collect();
    let mut snap = build_snapshot(
        decoded,
        ctx,
        generation,
        inputs.hash.clone(),
        format!("files:{}", inputs.dir.display()),
        files,
        resolve,
    );
    snap.skipped_files = inputs.skipped.clone();
    snap.policy.rate_limits = rate_limits;
    Ok(snap)
}

/// Build a snapshot from in-memory files (name, YAML text), as if they were a rules directory
/// `source`. For tests and tools; DNS names resolve with the system resolver.
pub fn snapshot_from_yaml(
    files: &[(&str, &str)],
    ctx: &LoadContext,
    generation: u64,
) -> Result<Snapshot, Vec<LoadError>> {
    let mut sorted: Vec<(String, Vec<u8>)> = files
        .iter()
        .map(|(n, t)| (n.to_string(), t.as_bytes().to_vec()))
        .collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    let hash = digest::content_hash(sorted.iter().map(|(n, b)| (n.as_str(), b.as_slice())));
    let inputs = load::Inputs {
        dir: std::path::PathBuf::from("memory"),
        files: sorted,
        skipped: Vec::new(),
        hash,
    };
    load_inputs(&inputs, ctx, generation, &endpoints::system_resolver)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `./*` in the root namespace's default Sidecar means each workload's own namespace (as
    /// Istio reads it), not the root namespace; in a namespace's own Sidecar, that namespace.
    #[test]
    fn dot_in_the_mesh_default_sidecar_is_the_workloads_namespace() {
        let files = "apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {name: default, namespace: remora-system}\nspec:\n  egress: [{hosts: [\"./*\", \"remora-system/*\"]}]\n  outboundTrafficPolicy: {mode: REGISTRY_ONLY}\n";
        let ctx = |ns: &str| LoadContext {
            namespace: ns.into(),
            root_namespace: "remora-system".into(),
            ..LoadContext::default()
        };
        for ns in ["shop", "bookinfo"] {
            let s = snapshot_from_yaml(&[("r.yaml", files)], &ctx(ns), 1).expect("loads");
            let sc = s.sidecar.as_ref().expect("the mesh default applies");
            let host = |n: &str| vec![format!("svc.{n}.svc.cluster.local")];
            assert!(
                in_egress_scope(sc, ns, &host(ns)),
                "{ns}: its own namespace"
            );
            assert!(in_egress_scope(sc, "remora-system", &host("remora-system")));
            let other = if ns == "shop" { "bookinfo" } else { "shop" };
            assert!(
                !in_egress_scope(sc, other, &host(other)),
                "{ns}: not {other}"
            );
        }
    }

    fn port(number: u16, protocol: Option<&str>, name: Option<&str>) -> ServicePort {
        ServicePort {
            number,
            protocol: protocol.map(str::to_string),
            name: name.map(str::to_string),
            target_port: None,
        }
    }

    #[test]
    fn app_protocols_as_istio_reads_them() {
        assert_eq!(app_protocol_name("kubernetes.io/h2c"), Some("HTTP2"));
        assert_eq!(app_protocol_name("kubernetes.io/ws"), Some("HTTP"));
        assert_eq!(app_protocol_name("kubernetes.io/wss"), Some("TLS"));
        assert_eq!(app_protocol_name("grpc"), Some("GRPC"));
        assert_eq!(app_protocol_name("HTTP"), Some("HTTP"));
        assert_eq!(app_protocol_name("mysql"), Some("TCP"));
        assert_eq!(app_protocol_name("example.com/custom"), None);
    }

    #[test]
    fn service_port_protocols() {
        let cases = [
            (port(80, Some("HTTP"), None), Some(Protocol::Http)),
            (port(80, Some("http2"), None), Some(Protocol::Http2)),
            (port(80, Some("GRPC"), Some("tcp-x")), Some(Protocol::Grpc)),
            (port(80, Some("HTTPS"), None), Some(Protocol::Tls)),
            (port(80, Some("MONGO"), None), Some(Protocol::Tcp)),
            (port(80, Some("UDP"), None), None),
            (port(80, None, Some("http")), Some(Protocol::Http)),
            (port(80, None, Some("http-web")), Some(Protocol::Http)),
            (port(80, None, Some("http2-api")), Some(Protocol::Http2)),
            (port(80, None, Some("grpc-web")), Some(Protocol::Grpc)),
            (port(80, None, Some("grpc-x")), Some(Protocol::Grpc)),
            (port(80, None, Some("tcp-db")), Some(Protocol::Tcp)),
            (port(80, None, Some("tls-x")), Some(Protocol::Tls)),
            (port(80, None, Some("https")), Some(Protocol::Tls)),
            (port(80, None, Some("redis-cache")), Some(Protocol::Tcp)),
            (port(80, None, Some("mysql")), Some(Protocol::Tcp)),
            (port(80, None, Some("web")), None),
            (port(80, None, Some("httpx")), None),
            (port(80, None, None), None),
        ];
        for (p, want) in cases {
            assert_eq!(service_port_protocol(&p), want, "{p:?}");
        }
    }

    #[test]
    fn export_to_table() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert!(exported_to(&[], "a", "b"));
        assert!(exported_to(&s(&["*"]), "a", "b"));
        assert!(exported_to(&s(&["."]), "a", "a"));
        assert!(!exported_to(&s(&["."]), "a", "b"));
        assert!(exported_to(&s(&["b"]), "a", "b"));
        assert!(!exported_to(&s(&["c"]), "a", "b"));
        assert!(!exported_to(&s(&["~"]), "a", "a"));
    }

    /// The root namespace decides the default Sidecar and the last DestinationRule fallback;
    /// under another root the same namespace is an ordinary one.
    #[test]
    fn root_namespace_scoping() {
        let doc = |kind: &str, ns: &str, spec: &str| {
            format!(
                "apiVersion: networking.istio.io/v1\nkind: {kind}\nmetadata: {{name: n, namespace: {ns}}}\nspec: {spec}\n"
            )
        };
        let dr = |ns: &str, host: &str| doc("DestinationRule", ns, &format!("{{host: {host}}}"));
        let files = [
            doc("Sidecar", "istio-system", "{}"),
            doc("Sidecar", "remora-system", "{}"),
            dr("remora-system", "b.example.com"),
            dr("istio-system", "a.example.com"),
            dr("frontend", "c.example.com"),
        ]
        .join("---\n");
        // (root, the Sidecar used, DestinationRule namespaces in precedence order)
        let cases = [
            (
                DEFAULT_ROOT_NAMESPACE,
                Some("remora-system"),
                ["frontend", "istio-system", "remora-system"],
            ),
            (
                "istio-system",
                Some("istio-system"),
                ["frontend", "remora-system", "istio-system"],
            ),
            (
                "mesh-config",
                None,
                ["frontend", "remora-system", "istio-system"],
            ),
        ];
        for (root, sidecar, order) in cases {
            let ctx = LoadContext {
                namespace: "frontend".into(),
                root_namespace: root.into(),
                ..LoadContext::default()
            };
            let s = snapshot_from_yaml(&[("r.yaml", &files)], &ctx, 1).expect("loads");
            assert_eq!(
                s.sidecar.as_ref().map(|sc| sc.meta.namespace.as_str()),
                sidecar,
                "root {root}"
            );
            let got: Vec<&str> = s
                .destination_rules
                .iter()
                .map(|d| d.meta.namespace.as_str())
                .collect();
            assert_eq!(got, order, "root {root}");
        }
    }

    /// A DestinationRule's `workloadSelector` picks the pods of its own namespace by their
    /// labels; pods of other namespaces never get it, whatever its exportTo (Istio's rule).
    #[test]
    fn destination_rule_workload_selector_is_labels_within_its_namespace() {
        let files = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: for-web, namespace: bookinfo}\nspec: {host: reviews, exportTo: ['*'], workloadSelector: {matchLabels: {app: web}}}\n";
        let web: BTreeMap<String, String> = [("app".to_string(), "web".to_string())].into();
        // (pod namespace, pod labels, applied)
        let cases = [
            ("bookinfo", web.clone(), true),
            ("bookinfo", BTreeMap::new(), false),
            ("frontend", web, false),
        ];
        for (ns, labels, applied) in cases {
            let ctx = LoadContext {
                namespace: ns.into(),
                pod_labels: labels.clone(),
                ..LoadContext::default()
            };
            let s = snapshot_from_yaml(&[("r.yaml", files)], &ctx, 1).expect("loads");
            assert_eq!(s.destination_rules.len() == 1, applied, "{ns} {labels:?}");
            if !applied {
                assert!(
                    s.ignored
                        .iter()
                        .any(|i| i.reason == "workloadSelector does not select this pod"),
                    "{ns} {labels:?}: {:?}",
                    s.ignored
                );
            }
        }
    }

    /// A ServiceEntry with `workloadSelector` gets the WorkloadEntries of its namespace whose
    /// labels include the selector, in name order; an address that does not suit its resolution
    /// is left out with a note; the linter names selectors and entries that find nothing.
    #[test]
    fn workload_entries_are_service_entry_endpoints() {
        let we = |ns: &str, name: &str, addr: &str, labels: &str| {
            format!(
                "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {{name: {name}, namespace: {ns}}}\nspec: {{address: {addr}, labels: {labels}, ports: {{http: 8080}}, network: vm-net, locality: r/z}}\n"
            )
        };
        let se = |name: &str, res: &str, app: &str| {
            format!(
                "apiVersion: networking.istio.io/v1beta1\nkind: ServiceEntry\nmetadata: {{name: {name}, namespace: shop}}\nspec: {{hosts: [{name}.example.com], ports: [{{number: 80, name: http, protocol: HTTP}}], resolution: {res}, workloadSelector: {{labels: {{app: {app}}}}}}}\n"
            )
        };
        let files = [
            se("vms", "STATIC", "vm"),
            se("named", "DNS", "named"),
            se("none", "STATIC", "nothing"),
            we("shop", "vm-b", "127.0.0.12", "{app: vm, version: v2}"),
            we("shop", "vm-a", "127.0.0.11", "{app: vm, version: v1}"),
            we("shop", "vm-host", "vm.example.com", "{app: vm}"),
            we("other", "vm-elsewhere", "127.0.0.13", "{app: vm}"),
            we("shop", "db", "db.internal.example.com", "{app: named}"),
            we("shop", "stray", "127.0.0.14", "{app: stray}"),
        ]
        .join("---\n");
        let ctx = LoadContext {
            namespace: "shop".into(),
            ..LoadContext::default()
        };
        let s = snapshot_from_yaml(&[("r.yaml", &files)], &ctx, 1).expect("loads");
        let eps = |name: &str| -> Vec<(String, Option<u16>)> {
            s.service_entries
                .iter()
                .find(|se| se.meta.name == name)
                .expect("service entry")
                .endpoints
                .iter()
                .map(|e| (e.address.clone(), e.ports.get("http").copied()))
                .collect()
        };
        assert_eq!(
            eps("vms"),
            [
                ("127.0.0.11".to_string(), Some(8080)),
                ("127.0.0.12".to_string(), Some(8080))
            ]
        );
        assert_eq!(
            eps("named"),
            [("db.internal.example.com".to_string(), Some(8080))]
        );
        assert_eq!(eps("none"), []);
        assert!(
            s.ignored.iter().any(|i| i.name == "shop/vm-host"
                && i.reason.contains("selected by ServiceEntry shop/vms but not used as its endpoint: spec.address: \"vm.example.com\" is not an IP address")),
            "{:?}",
            s.ignored
        );
        // The endpoints answer for the host, by the port's name.
        let v2: BTreeMap<String, String> = [("version".to_string(), "v2".to_string())].into();
        let got: Vec<String> = s
            .endpoints
            .endpoints("vms.example.com", 80, Some(&v2))
            .expect("known host")
            .iter()
            .map(|e| e.addr.to_string())
            .collect();
        assert_eq!(got, ["127.0.0.12:8080"]);
        // The linter: a selector that finds nothing, an entry nothing selects.
        let r = crate::lint::run_files(&[("r.yaml", &files)], &ctx);
        let text = r.to_string();
        assert!(text.contains("ServiceEntry shop/none selects no WorkloadEntry of namespace shop: it has no endpoints"), "{text}");
        assert!(text.contains("WorkloadEntry shop/stray is selected by no ServiceEntry's workloadSelector in namespace shop: not used"), "{text}");
        assert!(
            text.contains("WorkloadEntry other/vm-elsewhere is selected by no ServiceEntry"),
            "{text}"
        );
        assert!(r.errors.is_empty(), "{text}");
        // Bad WorkloadEntries are errors naming the field.
        for (spec, want) in [
            (
                "{labels: {app: vm}}",
                "spec.address: required field is missing",
            ),
            (
                "{address: 'unix:///sock'}",
                "Unix domain socket endpoints are not supported",
            ),
            (
                "{address: 127.0.0.1, ports: {http: 70000}}",
                "spec.ports.http",
            ),
            ("{address: 127.0.0.1, weight: -1}", "spec.weight"),
            ("{address: 'bad host!'}", "spec.address"),
        ] {
            let doc = format!("apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {{name: w, namespace: shop}}\nspec: {spec}\n");
            let e = snapshot_from_yaml(&[("w.yaml", &doc)], &ctx, 1).expect_err(spec);
            assert!(e[0].to_string().contains(want), "{spec}: {}", e[0]);
        }
    }

    #[test]
    fn load_error_display() {
        let e = LoadError {
            file: "r.yaml".into(),
            document: 2,
            field: "spec.hosts".into(),
            reason: "at least one host is required".into(),
        };
        assert_eq!(
            e.to_string(),
            "r.yaml doc 2: spec.hosts: at least one host is required"
        );
        let e = LoadError {
            file: "r.yaml".into(),
            document: 0,
            field: String::new(),
            reason: "cannot read: denied".into(),
        };
        assert_eq!(e.to_string(), "r.yaml: cannot read: denied");
    }
}
