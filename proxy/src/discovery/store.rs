//! The discovered registry: a compact copy of what routing needs from Services, EndpointSlices
//! and Pods (ports, endpoint IPs, readiness, pod labels), and the immutable host index built
//! from it that answers `EndpointSource` queries.
//!
//! Pure: the watchers (`kube.rs`) turn API objects into the plain values below and feed
//! `Update`s in; `Index::build` turns the store into the index. Nothing here does I/O.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use remora_model::dump::{EndpointDump, HostDump, IndexDump, IndexLimits, PortDump};

use crate::route::Endpoint;
use crate::rules::EndpointSource;
use remora_model::rules::endpoints::PodIdentity;

/// Pod labels, shared between pods with the same set (the pods of one ReplicaSet).
pub type Labels = Arc<BTreeMap<String, String>>;

/// `namespace/name` of an object.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key {
    pub namespace: Arc<str>,
    pub name: Box<str>,
}

impl Key {
    pub fn new(namespace: &str, name: &str) -> Key {
        Key {
            namespace: Arc::from(namespace),
            name: Box::from(name),
        }
    }
}

/// A Service port: the number clients use and its name (EndpointSlice ports carry the name).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SvcPort {
    pub port: u16,
    /// `None` for the unnamed single port.
    pub name: Option<Box<str>>,
    /// `appProtocol` (e.g. `http`, `grpc`, `kubernetes.io/h2c`).
    pub app_protocol: Option<Box<str>>,
}

/// What routing needs of a Service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Svc {
    pub ports: Vec<SvcPort>,
    /// `type: ExternalName`: not a set of endpoints (left to DNS, not indexed).
    pub external_name: bool,
    /// `spec.clusterIPs` (none for a headless Service): opaque TCP to one of them is traffic
    /// to this Service (its `tcp` routes and DestinationRule apply).
    pub cluster_ips: Vec<IpAddr>,
}

/// One endpoint of an EndpointSlice.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SliceEndpoint {
    /// The first address (the one kube-proxy uses).
    pub ip: IpAddr,
    /// Ready and not terminating (`conditions.ready` unset counts as ready, as the API says).
    pub ready: bool,
    /// The Pod behind it (`targetRef` of kind Pod), for subset labels (shared with the index).
    pub pod: Option<Arc<str>>,
}

/// What routing needs of an EndpointSlice.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Slice {
    /// Label `kubernetes.io/service-name`.
    pub service: Box<str>,
    /// (port name, port number); the name matches the Service port's name.
    pub ports: Vec<(Option<Box<str>>, u16)>,
    pub endpoints: Vec<SliceEndpoint>,
}

/// The three kinds watched.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Services,
    EndpointSlices,
    Pods,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Services => "services",
            Kind::EndpointSlices => "endpointslices",
            Kind::Pods => "pods",
        }
    }
}

/// Which objects a watch covers: one namespace or the whole cluster.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Part {
    All,
    Namespace(Arc<str>),
}

impl Part {
    pub fn covers(&self, ns: &str) -> bool {
        match self {
            Part::All => true,
            Part::Namespace(n) => &**n == ns,
        }
    }
}

impl std::fmt::Display for Part {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Part::All => f.write_str("all namespaces"),
            Part::Namespace(n) => write!(f, "namespace {n}"),
        }
    }
}

/// A plain object as the watchers deliver it.
#[derive(Clone, Debug, PartialEq)]
pub enum Object {
    Service(Svc),
    Slice(Slice),
    /// A pod's labels, workload name (`remora_model::workload::workload_of`) and service
    /// account (`None`: not known, as in direct API mode, which reads metadata only).
    Pod(BTreeMap<String, String>, Box<str>, Option<Box<str>>),
}

/// One change from a watcher of `kind` over `part`.
#[derive(Clone, Debug, PartialEq)]
pub enum Update {
    /// A (re-)list starts: buffer what follows until `InitDone`.
    Init,
    InitApply(Key, Object),
    /// The list is complete: replace everything of this kind in `part` with the buffer.
    InitDone,
    Apply(Key, Object),
    Delete(Key),
}

/// What the store keeps of a pod.
#[derive(Debug)]
struct PodEntry {
    labels: Labels,
    workload: Arc<str>,
    /// `None`: not known (direct API mode).
    service_account: Option<Arc<str>>,
}

/// The mutable store, owned by the discovery task.
#[derive(Debug, Default)]
pub struct Store {
    services: HashMap<Key, Svc>,
    slices: HashMap<Key, Slice>,
    /// Each pod's labels, workload name and service account.
    pods: HashMap<Key, PodEntry>,
    /// Buffers of lists in progress.
    pending: HashMap<(Kind, Part), Vec<(Key, Object)>>,
    /// Parts whose list completed at least once, per kind.
    synced: HashSet<(Kind, Part)>,
    /// Shared label sets (dropped when no pod uses them any more, at `gc`).
    label_sets: HashSet<Labels>,
}

impl Store {
    pub fn new() -> Store {
        Store::default()
    }

    /// Apply one update of `kind` over `part`. Objects outside `part` or of another kind are
    /// ignored (a watcher only delivers its own).
    pub fn apply(&mut self, kind: Kind, part: &Part, update: Update) {
        match update {
            Update::Init => {
                self.pending.insert((kind, part.clone()), Vec::new());
            }
            Update::InitApply(key, obj) => {
                if let Some(buf) = self.pending.get_mut(&(kind, part.clone())) {
                    buf.push((key, obj));
                } else {
                    // No Init seen (cannot happen with kube's watcher): apply directly.
                    self.put(kind, key, obj);
                }
            }
            Update::InitDone => {
                let buf = self
                    .pending
                    .remove(&(kind, part.clone()))
                    .unwrap_or_default();
                self.clear(kind, part);
                for (key, obj) in buf {
                    if part.covers(&key.namespace) {
                        self.put(kind, key, obj);
                    }
                }
                self.synced.insert((kind, part.clone()));
                self.gc();
            }
            Update::Apply(key, obj) => {
                if part.covers(&key.namespace) {
                    self.put(kind, key, obj);
                }
            }
            Update::Delete(key) => {
                match kind {
                    Kind::Services => {
                        self.services.remove(&key);
                    }
                    Kind::EndpointSlices => {
                        self.slices.remove(&key);
                    }
                    Kind::Pods => {
                        self.pods.remove(&key);
                    }
                };
            }
        }
    }

    fn put(&mut self, kind: Kind, key: Key, obj: Object) {
        match (kind, obj) {
            (Kind::Services, Object::Service(s)) => {
                self.services.insert(key, s);
            }
            (Kind::EndpointSlices, Object::Slice(s)) => {
                self.slices.insert(key, s);
            }
            (Kind::Pods, Object::Pod(labels, workload, account)) => {
                let shared = self.intern(labels);
                self.pods.insert(
                    key,
                    PodEntry {
                        labels: shared,
                        workload: Arc::from(workload),
                        service_account: account.map(Arc::from),
                    },
                );
            }
            _ => {}
        }
    }

    fn intern(&mut self, labels: BTreeMap<String, String>) -> Labels {
        if let Some(l) = self.label_sets.get(&labels) {
            return l.clone();
        }
        let l = Arc::new(labels);
        self.label_sets.insert(l.clone());
        l
    }

    /// Drop label sets no pod uses any more.
    pub fn gc(&mut self) {
        self.label_sets.retain(|l| Arc::strong_count(l) > 1);
    }

    /// Remove everything of `kind` in `part` (and its sync mark).
    pub fn clear(&mut self, kind: Kind, part: &Part) {
        match kind {
            Kind::Services => self.services.retain(|k, _| !part.covers(&k.namespace)),
            Kind::EndpointSlices => self.slices.retain(|k, _| !part.covers(&k.namespace)),
            Kind::Pods => self.pods.retain(|k, _| !part.covers(&k.namespace)),
        }
        self.synced.remove(&(kind, part.clone()));
    }

    /// Forget a part no longer watched (every kind), keeping what another part still covers.
    pub fn drop_part(&mut self, part: &Part, still: &[Part]) {
        let keep = |ns: &str| still.iter().any(|p| p.covers(ns));
        self.services
            .retain(|k, _| !part.covers(&k.namespace) || keep(&k.namespace));
        self.slices
            .retain(|k, _| !part.covers(&k.namespace) || keep(&k.namespace));
        self.pods
            .retain(|k, _| !part.covers(&k.namespace) || keep(&k.namespace));
        for kind in [Kind::Services, Kind::EndpointSlices, Kind::Pods] {
            self.pending.remove(&(kind, part.clone()));
            self.synced.remove(&(kind, part.clone()));
        }
        self.gc();
    }

    /// Has `kind` been listed completely for the namespace (by its own watch or a cluster one)?
    pub fn synced(&self, kind: Kind, ns: &str) -> bool {
        self.synced.contains(&(kind, Part::All))
            || self
                .synced
                .contains(&(kind, Part::Namespace(Arc::from(ns))))
    }

    /// Has the watch of `kind` over exactly `part` completed a list (the readiness check asks
    /// per watch; a namespace part also counts as listed under a cluster-wide list)?
    pub fn synced_part(&self, kind: Kind, part: &Part) -> bool {
        match part {
            Part::All => self.synced.contains(&(kind, Part::All)),
            Part::Namespace(ns) => self.synced(kind, ns),
        }
    }

    pub fn counts(&self) -> (usize, usize, usize) {
        (self.services.len(), self.slices.len(), self.pods.len())
    }

    pub fn label_sets(&self) -> usize {
        self.label_sets.len()
    }
}

/// One endpoint in the index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ep {
    pub addr: SocketAddr,
    pub labels: Option<Labels>,
    /// The Pod behind it (same allocation as the store's).
    pub pod: Option<Arc<str>>,
}

/// One service port of a host and its ready endpoints.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortEntry {
    /// The port clients use.
    pub port: u16,
    /// The Service port's name (`None` for the unnamed single port).
    pub name: Option<Box<str>>,
    /// The Service port's `appProtocol`.
    pub app_protocol: Option<Box<str>>,
    /// Sorted by address; the port of each address is the target port.
    pub endpoints: Vec<Ep>,
}

/// A service host: its endpoints per service port.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HostEntry {
    /// Sorted by port.
    pub ports: Vec<PortEntry>,
}

/// Bounds of the index in `/config_dump`: endpoints listed per host and in all.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DumpLimits {
    pub per_host: usize,
    pub total: usize,
}

impl DumpLimits {
    /// What `/config_dump` uses: a 1,000-service mesh stays a few hundred KiB.
    pub const DEFAULT: DumpLimits = DumpLimits {
        per_host: 100,
        total: 5_000,
    };
}

/// The immutable index queried on the request path: `<svc>.<ns>.svc.<domain>` → endpoints.
#[derive(Clone, Debug, Default)]
pub struct Index {
    hosts: HashMap<Box<str>, HostEntry>,
    /// Endpoint address → its pod (every EndpointSlice endpoint whose pod is known, ready or
    /// not: a pod sends traffic before it is ready).
    by_ip: HashMap<IpAddr, Arc<PodIdentity>>,
    /// ClusterIP → the FQDN of its Service (indexed Services only).
    by_cluster_ip: HashMap<IpAddr, Box<str>>,
    domain: Box<str>,
    pub services: usize,
    pub endpoints: usize,
}

impl Index {
    pub fn empty(domain: &str) -> Index {
        Index {
            domain: Box::from(domain),
            ..Index::default()
        }
    }

    /// Build the index from the store: every Service (not ExternalName) of a namespace whose
    /// Services and EndpointSlices are both listed, and for which `in_scope(namespace, fqdn)`
    /// holds; per service port the ready endpoints of its EndpointSlices on the port of the
    /// same name (deduplicated), with their pods' labels.
    pub fn build(store: &Store, domain: &str, in_scope: &dyn Fn(&str, &str) -> bool) -> Index {
        // Slices per service.
        let mut by_service: HashMap<(&str, &str), Vec<&Slice>> = HashMap::new();
        for (k, s) in &store.slices {
            by_service
                .entry((&k.namespace, &s.service))
                .or_default()
                .push(s);
        }
        let mut hosts = HashMap::new();
        let mut by_cluster_ip = HashMap::new();
        let mut endpoints = 0;
        let mut ns_ok: HashMap<&str, bool> = HashMap::new();
        for (k, svc) in &store.services {
            if svc.external_name {
                continue;
            }
            let ok = *ns_ok.entry(&k.namespace).or_insert_with(|| {
                store.synced(Kind::Services, &k.namespace)
                    && store.synced(Kind::EndpointSlices, &k.namespace)
            });
            if !ok {
                continue;
            }
            let fqdn = format!("{}.{}.svc.{domain}", k.name, k.namespace);
            if !in_scope(&k.namespace, &fqdn) {
                continue;
            }
            let slices = by_service
                .get(&(&*k.namespace, &*k.name))
                .map(Vec::as_slice)
                .unwrap_or(&[]);
            let mut ports = Vec::with_capacity(svc.ports.len());
            for sp in &svc.ports {
                let mut eps: Vec<Ep> = Vec::new();
                for sl in slices {
                    let Some(&(_, target)) = sl.ports.iter().find(|(n, _)| *n == sp.name) else {
                        continue;
                    };
                    for e in sl.endpoints.iter().filter(|e| e.ready) {
                        let addr = SocketAddr::new(e.ip, target);
                        if eps.iter().any(|x| x.addr == addr) {
                            continue;
                        }
                        let labels = e.pod.as_ref().and_then(|p| {
                            store
                                .pods
                                .get(&Key {
                                    namespace: k.namespace.clone(),
                                    name: Box::from(&**p),
                                })
                                .map(|p| p.labels.clone())
                        });
                        eps.push(Ep {
                            addr,
                            labels,
                            pod: e.pod.clone(),
                        });
                    }
                }
                eps.sort_by_key(|e| e.addr);
                eps.shrink_to_fit();
                endpoints += eps.len();
                ports.push(PortEntry {
                    port: sp.port,
                    name: sp.name.clone(),
                    app_protocol: sp.app_protocol.clone(),
                    endpoints: eps,
                });
            }
            ports.sort_by_key(|p| p.port);
            let fqdn = fqdn.into_boxed_str();
            for ip in &svc.cluster_ips {
                by_cluster_ip.insert(*ip, fqdn.clone());
            }
            hosts.insert(fqdn, HostEntry { ports });
        }
        let services = hosts.len();
        by_cluster_ip.shrink_to_fit();
        Index {
            hosts,
            by_ip: pods_by_ip(store),
            by_cluster_ip,
            domain: Box::from(domain),
            services,
            endpoints,
        }
    }

    /// The entry of a host: the FQDN, or `<svc>.<ns>` / `<svc>.<ns>.svc` as a pod's resolver
    /// completes them.
    pub fn host(&self, host: &str) -> Option<&HostEntry> {
        let h = host.trim_end_matches('.');
        if let Some(e) = self.hosts.get(h) {
            return Some(e);
        }
        let full = if h.ends_with(".svc") {
            format!("{h}.{}", self.domain)
        } else if h.matches('.').count() == 1 {
            format!("{h}.svc.{}", self.domain)
        } else {
            return None;
        };
        self.hosts.get(full.as_str())
    }

    /// The pod at `ip` (an EndpointSlice endpoint whose pod discovery knows).
    pub fn pod_of_ip(&self, ip: IpAddr) -> Option<&Arc<PodIdentity>> {
        self.by_ip.get(&ip)
    }

    /// The Service FQDN whose ClusterIP is `ip`.
    pub fn host_of_cluster_ip(&self, ip: IpAddr) -> Option<&str> {
        self.by_cluster_ip.get(&ip).map(|h| &**h)
    }

    /// The hosts known, sorted (for `/config_dump`).
    pub fn host_names(&self) -> Vec<&str> {
        let mut v: Vec<&str> = self.hosts.keys().map(|k| &**k).collect();
        v.sort_unstable();
        v
    }

    /// The index as `/config_dump` shows it, serialized straight from the index (label sets
    /// stay shared; only the JSON is new): per host (sorted) its ports with their names, target
    /// ports and endpoint counts, and per port the endpoints (address, pod, labels), at most
    /// `limits.per_host` per host and `limits.total` in all, with what was left out.
    pub fn dump(&self, limits: DumpLimits) -> IndexDump {
        let mut listed_total = 0usize;
        let mut omitted_total = 0usize;
        let mut hosts_truncated = 0usize;
        let mut out = Vec::with_capacity(self.hosts.len());
        for name in self.host_names() {
            let Some(entry) = self.hosts.get(name) else {
                continue;
            };
            let mut listed_host = 0usize;
            let mut omitted_host = 0usize;
            let mut ports = Vec::with_capacity(entry.ports.len());
            for p in &entry.ports {
                let room = limits
                    .per_host
                    .saturating_sub(listed_host)
                    .min(limits.total.saturating_sub(listed_total));
                let shown = p.endpoints.len().min(room);
                listed_host += shown;
                listed_total += shown;
                omitted_host += p.endpoints.len() - shown;
                let mut target_ports: Vec<u16> =
                    p.endpoints.iter().map(|e| e.addr.port()).collect();
                target_ports.sort_unstable();
                target_ports.dedup();
                let endpoints = p.endpoints[..shown]
                    .iter()
                    .map(|e| EndpointDump {
                        address: e.addr.to_string(),
                        pod: e.pod.as_ref().map(|p| p.to_string()),
                        labels: e.labels.as_ref().map(|l| (**l).clone()),
                    })
                    .collect();
                ports.push(PortDump {
                    port: p.port,
                    name: p.name.as_ref().map(|n| n.to_string()),
                    target_ports,
                    endpoint_count: p.endpoints.len(),
                    endpoints,
                });
            }
            if omitted_host > 0 {
                hosts_truncated += 1;
            }
            omitted_total += omitted_host;
            out.push(HostDump {
                host: name.to_string(),
                ports,
                endpoints_omitted: omitted_host,
            });
        }
        IndexDump {
            limits: IndexLimits {
                endpoints_per_host: limits.per_host,
                endpoints_total: limits.total,
            },
            indexed: "ready and not terminating endpoints only, on TCP service ports".into(),
            endpoints_listed: listed_total,
            endpoints_omitted: omitted_total,
            hosts_truncated,
            hosts: out,
        }
    }
}

/// Every EndpointSlice endpoint's pod, by address (the first slice naming an address wins; a
/// pod has one address).
fn pods_by_ip(store: &Store) -> HashMap<IpAddr, Arc<PodIdentity>> {
    let mut out = HashMap::new();
    for (k, sl) in &store.slices {
        for e in &sl.endpoints {
            let Some(pod) = &e.pod else { continue };
            if out.contains_key(&e.ip) {
                continue;
            }
            let key = Key {
                namespace: k.namespace.clone(),
                name: Box::from(&**pod),
            };
            if let Some(p) = store.pods.get(&key) {
                out.insert(
                    e.ip,
                    Arc::new(PodIdentity {
                        namespace: k.namespace.clone(),
                        workload: p.workload.clone(),
                        labels: p.labels.clone(),
                        service_account: p.service_account.clone(),
                    }),
                );
            }
        }
    }
    out.shrink_to_fit();
    out
}

/// The live index behind an `ArcSwap`: the `EndpointSource` for Kubernetes services.
#[derive(Debug)]
pub struct DiscoveredEndpoints {
    pub index: arc_swap::ArcSwap<Index>,
}

impl DiscoveredEndpoints {
    pub fn new(domain: &str) -> DiscoveredEndpoints {
        DiscoveredEndpoints {
            index: arc_swap::ArcSwap::from_pointee(Index::empty(domain)),
        }
    }
}

impl EndpointSource for DiscoveredEndpoints {
    fn endpoints(
        &self,
        host: &str,
        port: u16,
        subset: Option<&BTreeMap<String, String>>,
    ) -> Option<Vec<Endpoint>> {
        let index = self.index.load();
        let entry = index.host(host)?;
        // A port the Service does not have: known host, no endpoint (Envoy has no cluster).
        let Some(pe) = entry.ports.iter().find(|p| p.port == port) else {
            return Some(Vec::new());
        };
        let out = pe
            .endpoints
            .iter()
            .filter(|e| match subset {
                None => true,
                Some(sel) => e
                    .labels
                    .as_ref()
                    .is_some_and(|l| sel.iter().all(|(k, v)| l.get(k) == Some(v))),
            })
            .map(|e| Endpoint {
                addr: e.addr,
                labels: e.labels.as_ref().map(|l| (**l).clone()).unwrap_or_default(),
                weight: 1,
            })
            .collect();
        Some(out)
    }

    fn has_port(&self, host: &str, port: u16) -> Option<bool> {
        let index = self.index.load();
        let entry = index.host(host)?;
        Some(entry.ports.iter().any(|p| p.port == port))
    }

    fn host_of_ip(&self, ip: IpAddr) -> Option<String> {
        self.index.load().host_of_cluster_ip(ip).map(str::to_string)
    }

    fn pod_of_ip(&self, ip: IpAddr) -> Option<Arc<PodIdentity>> {
        self.index.load().pod_of_ip(ip).cloned()
    }

    fn service_port(&self, ip: IpAddr, port: u16) -> Option<crate::rules::ServicePort> {
        let index = self.index.load();
        let host = index.host_of_cluster_ip(ip)?;
        let pe = index.host(host)?.ports.iter().find(|p| p.port == port)?;
        Some(crate::rules::ServicePort {
            number: port,
            protocol: pe
                .app_protocol
                .as_deref()
                .and_then(crate::rules::app_protocol_name)
                .map(str::to_string),
            name: pe.name.as_deref().map(str::to_string),
            target_port: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ns() -> Part {
        Part::Namespace(Arc::from("shop"))
    }

    fn svc(ports: &[(u16, Option<&str>)]) -> Object {
        Object::Service(Svc {
            ports: ports
                .iter()
                .map(|(p, n)| SvcPort {
                    port: *p,
                    name: n.map(Box::from),
                    app_protocol: None,
                })
                .collect(),
            external_name: false,
            cluster_ips: vec![],
        })
    }

    fn slice(service: &str, port: (Option<&str>, u16), eps: &[(&str, bool, &str)]) -> Object {
        Object::Slice(Slice {
            service: Box::from(service),
            ports: vec![(port.0.map(Box::from), port.1)],
            endpoints: eps
                .iter()
                .map(|(ip, ready, pod)| SliceEndpoint {
                    ip: ip.parse().unwrap(),
                    ready: *ready,
                    pod: (!pod.is_empty()).then(|| Arc::from(*pod)),
                })
                .collect(),
        })
    }

    /// A pod with `labels`, of the workload `<app>-<version>` (its Deployment).
    fn pod(labels: &[(&str, &str)]) -> Object {
        let labels: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let get = |k: &str| labels.get(k).cloned().unwrap_or_default();
        let workload = format!("{}-{}", get("app"), get("version"));
        Object::Pod(labels, workload.into_boxed_str(), None)
    }

    fn listed(store: &mut Store, kind: Kind, part: &Part, objs: Vec<(&str, &str, Object)>) {
        store.apply(kind, part, Update::Init);
        for (n, name, o) in objs {
            store.apply(kind, part, Update::InitApply(Key::new(n, name), o));
        }
        store.apply(kind, part, Update::InitDone);
    }

    fn all(_: &str, _: &str) -> bool {
        true
    }

    fn addrs(
        src: &DiscoveredEndpoints,
        host: &str,
        port: u16,
        subset: &[(&str, &str)],
    ) -> Option<Vec<String>> {
        let sel: BTreeMap<String, String> = subset
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        src.endpoints(host, port, (!subset.is_empty()).then_some(&sel))
            .map(|v| v.iter().map(|e| e.addr.to_string()).collect())
    }

    fn publish(store: &Store, scope: &dyn Fn(&str, &str) -> bool) -> DiscoveredEndpoints {
        let d = DiscoveredEndpoints::new("cluster.local");
        d.index
            .store(Arc::new(Index::build(store, "cluster.local", scope)));
        d
    }

    /// The common case: a Service, its slice (one ready, one not ready endpoint) and the pods.
    fn reviews_store() -> Store {
        let mut s = Store::new();
        let p = ns();
        listed(
            &mut s,
            Kind::Services,
            &p,
            vec![("shop", "reviews", svc(&[(9080, Some("http"))]))],
        );
        listed(
            &mut s,
            Kind::EndpointSlices,
            &p,
            vec![(
                "shop",
                "reviews-abc",
                slice(
                    "reviews",
                    (Some("http"), 8080),
                    &[
                        ("10.0.0.1", true, "reviews-v1-x"),
                        ("10.0.0.2", true, "reviews-v2-y"),
                        ("10.0.0.3", false, "reviews-v2-z"),
                    ],
                ),
            )],
        );
        listed(
            &mut s,
            Kind::Pods,
            &p,
            vec![
                (
                    "shop",
                    "reviews-v1-x",
                    pod(&[("app", "reviews"), ("version", "v1")]),
                ),
                (
                    "shop",
                    "reviews-v2-y",
                    pod(&[("app", "reviews"), ("version", "v2")]),
                ),
                (
                    "shop",
                    "reviews-v2-z",
                    pod(&[("app", "reviews"), ("version", "v2")]),
                ),
            ],
        );
        s
    }

    #[test]
    fn pods_by_address_name_their_workload_ready_or_not() {
        let s = reviews_store();
        let d = publish(&s, &all);
        let ip = |a: &str| a.parse::<IpAddr>().unwrap();
        let v1 = d.pod_of_ip(ip("10.0.0.1")).unwrap();
        assert_eq!((&*v1.namespace, &*v1.workload), ("shop", "reviews-v1"));
        assert_eq!(v1.labels.get("version").map(String::as_str), Some("v1"));
        // Not ready (still sending traffic, e.g. while starting): known too.
        let z = d.pod_of_ip(ip("10.0.0.3")).unwrap();
        assert_eq!(&*z.workload, "reviews-v2");
        assert_eq!(d.pod_of_ip(ip("10.0.0.9")), None);
    }

    #[test]
    fn ready_endpoints_on_the_named_target_port() {
        let s = reviews_store();
        let d = publish(&s, &all);
        assert_eq!(
            addrs(&d, "reviews.shop.svc.cluster.local", 9080, &[]),
            Some(vec!["10.0.0.1:8080".into(), "10.0.0.2:8080".into()])
        );
        // Short forms as a pod's resolver completes them.
        assert_eq!(
            addrs(&d, "reviews.shop", 9080, &[]).map(|v| v.len()),
            Some(2)
        );
        assert_eq!(
            addrs(&d, "reviews.shop.svc", 9080, &[]).map(|v| v.len()),
            Some(2)
        );
        // A port the Service does not have: known host, no endpoints.
        assert_eq!(
            addrs(&d, "reviews.shop.svc.cluster.local", 9999, &[]),
            Some(vec![])
        );
        // ... which `has_port` tells from a declared port without a ready endpoint.
        let h = "reviews.shop.svc.cluster.local";
        assert_eq!(d.has_port(h, 9999), Some(false));
        assert_eq!(d.has_port(h, 9080), Some(true));
        assert_eq!(d.has_port("ratings.shop.svc.cluster.local", 9080), None);
        // Unknown hosts are left to the next source.
        assert_eq!(addrs(&d, "ratings.shop.svc.cluster.local", 9080, &[]), None);
        assert_eq!(addrs(&d, "reviews", 9080, &[]), None);
        let idx = d.index.load();
        assert_eq!((idx.services, idx.endpoints), (1, 2));
        // Two pods share one label set.
        assert_eq!(s.label_sets(), 2);
    }

    #[test]
    fn cluster_ips_name_their_indexed_service() {
        let mut s = reviews_store();
        let mut with_ip = |name: &str, ips: &[&str]| {
            let Object::Service(mut v) = svc(&[(9080, Some("web")), (9090, Some("grpc-api"))])
            else {
                unreachable!()
            };
            v.ports[0].app_protocol = Some("kubernetes.io/h2c".into());
            v.cluster_ips = ips.iter().map(|i| i.parse().unwrap()).collect();
            s.apply(
                Kind::Services,
                &ns(),
                Update::Apply(Key::new("shop", name), Object::Service(v)),
            );
        };
        with_ip("reviews", &["10.96.0.10", "fd00::10"]);
        with_ip("hidden", &["10.96.0.11"]);
        let idx = Index::build(&s, "cluster.local", &|_, h| !h.starts_with("hidden."));
        let ip = |t: &str| idx.host_of_cluster_ip(t.parse().unwrap());
        assert_eq!(ip("10.96.0.10"), Some("reviews.shop.svc.cluster.local"));
        assert_eq!(ip("fd00::10"), Some("reviews.shop.svc.cluster.local"));
        assert_eq!(ip("10.96.0.11"), None, "out of scope: not indexed");
        assert_eq!(ip("10.96.0.12"), None);
        let live = DiscoveredEndpoints::new("cluster.local");
        live.index.store(Arc::new(idx));
        assert_eq!(
            live.host_of_ip("10.96.0.10".parse().unwrap()).as_deref(),
            Some("reviews.shop.svc.cluster.local")
        );
        // The port behind the ClusterIP, as the protocol decision reads it: appProtocol first
        // (mapped to Istio's name), else the port name.
        let port = |p: u16| live.service_port("10.96.0.10".parse().unwrap(), p);
        let web = port(9080).unwrap();
        assert_eq!(
            (web.name.as_deref(), web.protocol.as_deref()),
            (Some("web"), Some("HTTP2"))
        );
        let api = port(9090).unwrap();
        assert_eq!(
            (api.name.as_deref(), api.protocol.as_deref()),
            (Some("grpc-api"), None)
        );
        assert_eq!(
            crate::rules::service_port_protocol(&api),
            Some(crate::rules::Protocol::Grpc)
        );
        assert!(port(9999).is_none());
    }

    #[test]
    fn subsets_select_by_pod_labels() {
        let d = publish(&reviews_store(), &all);
        let h = "reviews.shop.svc.cluster.local";
        assert_eq!(
            addrs(&d, h, 9080, &[("version", "v1")]),
            Some(vec!["10.0.0.1:8080".into()])
        );
        // v2's second pod is not ready.
        assert_eq!(
            addrs(&d, h, 9080, &[("version", "v2")]),
            Some(vec!["10.0.0.2:8080".into()])
        );
        assert_eq!(addrs(&d, h, 9080, &[("version", "v3")]), Some(vec![]));
        let eps = d.endpoints(h, 9080, None).unwrap();
        assert_eq!(eps[0].labels.get("version").map(String::as_str), Some("v1"));
    }

    #[test]
    fn applies_updates_and_deletes() {
        let mut s = reviews_store();
        let p = ns();
        // The not-ready endpoint becomes ready; a new slice adds one more (and repeats one).
        s.apply(
            Kind::EndpointSlices,
            &p,
            Update::Apply(
                Key::new("shop", "reviews-abc"),
                slice(
                    "reviews",
                    (Some("http"), 8080),
                    &[
                        ("10.0.0.1", true, "reviews-v1-x"),
                        ("10.0.0.3", true, "reviews-v2-z"),
                    ],
                ),
            ),
        );
        s.apply(
            Kind::EndpointSlices,
            &p,
            Update::Apply(
                Key::new("shop", "reviews-def"),
                slice(
                    "reviews",
                    (Some("http"), 8080),
                    &[("10.0.0.4", true, ""), ("10.0.0.1", true, "reviews-v1-x")],
                ),
            ),
        );
        let mut d = publish(&s, &all);
        let h = "reviews.shop.svc.cluster.local";
        assert_eq!(
            addrs(&d, h, 9080, &[]),
            Some(vec![
                "10.0.0.1:8080".into(),
                "10.0.0.3:8080".into(),
                "10.0.0.4:8080".into()
            ])
        );
        // An endpoint without a pod has no labels: no subset selects it.
        assert_eq!(
            addrs(&d, h, 9080, &[("version", "v2")]),
            Some(vec!["10.0.0.3:8080".into()])
        );
        // Pod relabelled.
        s.apply(
            Kind::Pods,
            &p,
            Update::Apply(Key::new("shop", "reviews-v2-z"), pod(&[("version", "v3")])),
        );
        d = publish(&s, &all);
        assert_eq!(
            addrs(&d, h, 9080, &[("version", "v3")]),
            Some(vec!["10.0.0.3:8080".into()])
        );
        // Slice deleted, then the Service.
        s.apply(
            Kind::EndpointSlices,
            &p,
            Update::Delete(Key::new("shop", "reviews-abc")),
        );
        d = publish(&s, &all);
        assert_eq!(
            addrs(&d, h, 9080, &[]),
            Some(vec!["10.0.0.1:8080".into(), "10.0.0.4:8080".into()])
        );
        s.apply(
            Kind::Services,
            &p,
            Update::Delete(Key::new("shop", "reviews")),
        );
        d = publish(&s, &all);
        assert_eq!(addrs(&d, h, 9080, &[]), None);
        drop(d);
        // Deleted pods' label sets are released (once no published index holds them).
        s.apply(
            Kind::Pods,
            &p,
            Update::Delete(Key::new("shop", "reviews-v1-x")),
        );
        s.gc();
        assert_eq!(s.label_sets(), 2, "v2 (one pod) and v3 remain");
    }

    #[test]
    fn relist_replaces_atomically_at_init_done() {
        let mut s = reviews_store();
        let p = ns();
        s.apply(Kind::Services, &p, Update::Init);
        s.apply(
            Kind::Services,
            &p,
            Update::InitApply(Key::new("shop", "ratings"), svc(&[(9080, Some("http"))])),
        );
        // Until InitDone the old content stays in effect.
        let d = publish(&s, &all);
        assert!(addrs(&d, "reviews.shop.svc.cluster.local", 9080, &[]).is_some());
        assert!(addrs(&d, "ratings.shop.svc.cluster.local", 9080, &[]).is_none());
        s.apply(Kind::Services, &p, Update::InitDone);
        let d = publish(&s, &all);
        // reviews was not in the new list: gone. ratings has no slices: known, no endpoints.
        assert_eq!(addrs(&d, "reviews.shop.svc.cluster.local", 9080, &[]), None);
        assert_eq!(
            addrs(&d, "ratings.shop.svc.cluster.local", 9080, &[]),
            Some(vec![])
        );
    }

    #[test]
    fn not_indexed_until_services_and_slices_are_listed() {
        let mut s = Store::new();
        let p = ns();
        listed(
            &mut s,
            Kind::Services,
            &p,
            vec![("shop", "reviews", svc(&[(80, None)]))],
        );
        // Without the slices listed (a 403 on endpointslices, or still listing), the host is not
        // claimed: the proxy keeps the original destination instead of answering 503.
        let d = publish(&s, &all);
        assert_eq!(addrs(&d, "reviews.shop.svc.cluster.local", 80, &[]), None);
        listed(
            &mut s,
            Kind::EndpointSlices,
            &p,
            vec![(
                "shop",
                "reviews-1",
                slice("reviews", (None, 8080), &[("10.1.0.1", true, "")]),
            )],
        );
        let d = publish(&s, &all);
        assert_eq!(
            addrs(&d, "reviews.shop.svc.cluster.local", 80, &[]),
            Some(vec!["10.1.0.1:8080".into()])
        );
    }

    #[test]
    fn scope_and_external_name_and_dropped_parts() {
        let mut s = reviews_store();
        let p = ns();
        s.apply(
            Kind::Services,
            &p,
            Update::Apply(
                Key::new("shop", "legacy"),
                Object::Service(Svc {
                    ports: vec![],
                    external_name: true,
                    cluster_ips: vec![],
                }),
            ),
        );
        let only_ratings = |_: &str, h: &str| h.starts_with("ratings.");
        let d = publish(&s, &only_ratings);
        assert_eq!(addrs(&d, "reviews.shop.svc.cluster.local", 9080, &[]), None);
        drop(d);
        let d = publish(&s, &all);
        assert_eq!(addrs(&d, "legacy.shop.svc.cluster.local", 80, &[]), None);
        drop(d);
        // Objects outside the watch's part are ignored.
        s.apply(
            Kind::Services,
            &p,
            Update::Apply(Key::new("other", "x"), svc(&[(80, None)])),
        );
        assert_eq!(s.counts().0, 2);
        s.drop_part(&p, &[]);
        assert_eq!(s.counts(), (0, 0, 0));
        assert_eq!(s.label_sets(), 0);
        assert!(!s.synced(Kind::Services, "shop"));
    }

    #[test]
    fn dump_shows_ports_pods_and_labels_within_the_caps() {
        let s = reviews_store();
        let d = publish(&s, &all);
        let idx = d.index.load();
        let v = serde_json::to_value(idx.dump(DumpLimits::DEFAULT)).unwrap();
        assert_eq!(v["limits"]["endpoints_per_host"], 100);
        assert_eq!(v["limits"]["endpoints_total"], 5000);
        assert_eq!(
            (
                v["endpoints_listed"].as_u64(),
                v["endpoints_omitted"].as_u64()
            ),
            (Some(2), Some(0))
        );
        let h = &v["hosts"][0];
        assert_eq!(h["host"], "reviews.shop.svc.cluster.local");
        let p = &h["ports"][0];
        assert_eq!(
            (p["port"].as_u64(), p["name"].as_str()),
            (Some(9080), Some("http"))
        );
        assert_eq!(p["target_ports"], serde_json::json!([8080]));
        assert_eq!(p["endpoint_count"], 2);
        assert_eq!(
            p["endpoints"][0],
            serde_json::json!({"address": "10.0.0.1:8080", "pod": "reviews-v1-x",
                               "labels": {"app": "reviews", "version": "v1"}})
        );
        assert_eq!(p["endpoints"][1]["pod"], "reviews-v2-y");
        // The not-ready pod is not indexed, so not listed.
        assert_eq!(p["endpoints"].as_array().map(Vec::len), Some(2));
        // The index shares the store's label sets and pod names (nothing copied).
        let e = &idx.host("reviews.shop").unwrap().ports[0].endpoints[0];
        assert_eq!(
            e.labels.as_ref().map(Arc::strong_count),
            Some(4),
            "store set + index's endpoint + index's pod by address"
        );
        assert_eq!(
            e.pod.as_ref().map(Arc::strong_count),
            Some(2),
            "slice + index"
        );
    }

    #[test]
    fn dump_caps_per_host_and_in_all() {
        let mut s = Store::new();
        let p = ns();
        // Three services of 4 endpoints on two ports (4 + 4 addresses per host).
        let names = ["a", "b", "c"];
        listed(
            &mut s,
            Kind::Services,
            &p,
            names
                .iter()
                .map(|n| ("shop", *n, svc(&[(80, Some("http")), (90, Some("grpc"))])))
                .collect(),
        );
        let mut slices = Vec::new();
        for (i, n) in names.iter().enumerate() {
            let ips: Vec<String> = (1..=4).map(|k| format!("10.0.{i}.{k}")).collect();
            let eps: Vec<(&str, bool, &str)> =
                ips.iter().map(|ip| (ip.as_str(), true, "")).collect();
            for (port, name) in [(8080, "http"), (9090, "grpc")] {
                if let Object::Slice(mut sl) = slice(n, (Some(name), port), &eps) {
                    sl.service = Box::from(*n);
                    slices.push(("shop", format!("{n}-{name}"), Object::Slice(sl)));
                }
            }
        }
        listed(
            &mut s,
            Kind::EndpointSlices,
            &p,
            slices
                .iter()
                .map(|(a, b, o)| (*a, b.as_str(), o.clone()))
                .collect(),
        );
        let d = publish(&s, &all);
        let idx = d.index.load();
        assert_eq!(idx.endpoints, 24);
        // 5 per host, 12 in all: a gets 5 (4 on port 80, 1 on 90), b 5, c the 2 left.
        let v = serde_json::to_value(idx.dump(DumpLimits {
            per_host: 5,
            total: 12,
        }))
        .unwrap();
        let listed_per_host: Vec<(usize, usize, u64)> = v["hosts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| {
                let ps = h["ports"].as_array().unwrap();
                (
                    ps[0]["endpoints"].as_array().unwrap().len(),
                    ps[1]["endpoints"].as_array().unwrap().len(),
                    h["endpoints_omitted"].as_u64().unwrap(),
                )
            })
            .collect();
        assert_eq!(listed_per_host, vec![(4, 1, 3), (4, 1, 3), (2, 0, 6)]);
        assert_eq!(v["endpoints_listed"], 12);
        assert_eq!(v["endpoints_omitted"], 12);
        assert_eq!(v["hosts_truncated"], 3);
        // Counts stay whole where endpoints are left out.
        assert_eq!(v["hosts"][2]["ports"][1]["endpoint_count"], 4);
        assert_eq!(v["hosts"][2]["ports"][1]["name"], "grpc");
        // Unbounded enough: nothing left out.
        let v = serde_json::to_value(idx.dump(DumpLimits::DEFAULT)).unwrap();
        assert_eq!(
            (
                v["endpoints_listed"].as_u64(),
                v["hosts_truncated"].as_u64()
            ),
            (Some(24), Some(0))
        );
    }

    /// 1,000 Services of 10 endpoints each (a large mesh): the dump stops at the total cap and
    /// stays small; its size is printed for the docs (`--nocapture`).
    #[test]
    fn dump_of_a_large_mesh_is_bounded() {
        let mut s = Store::new();
        let p = ns();
        let n = 1000;
        let svc_names: Vec<String> = (0..n).map(|i| format!("svc-{i:04}")).collect();
        listed(
            &mut s,
            Kind::Services,
            &p,
            svc_names
                .iter()
                .map(|name| ("shop", name.as_str(), svc(&[(80, Some("http"))])))
                .collect(),
        );
        let mut slices = Vec::new();
        let mut pods = Vec::new();
        for i in 0..n {
            let ips: Vec<String> = (0..10)
                .map(|k| format!("10.{}.{}.{k}", i / 256, i % 256))
                .collect();
            let names: Vec<String> = (0..10)
                .map(|k| format!("svc-{i:04}-7d4b9c8f6-{k:05}"))
                .collect();
            let eps: Vec<(&str, bool, &str)> = ips
                .iter()
                .zip(&names)
                .map(|(ip, pn)| (ip.as_str(), true, pn.as_str()))
                .collect();
            if let Object::Slice(mut sl) = slice("x", (Some("http"), 8080), &eps) {
                sl.service = Box::from(format!("svc-{i:04}"));
                slices.push((format!("svc-{i:04}-abc"), Object::Slice(sl)));
            }
            for pn in names {
                pods.push((
                    pn,
                    pod(&[("app", &format!("svc-{i:04}")), ("version", "v1")]),
                ));
            }
        }
        listed(
            &mut s,
            Kind::EndpointSlices,
            &p,
            slices
                .iter()
                .map(|(k, o)| ("shop", k.as_str(), o.clone()))
                .collect(),
        );
        listed(
            &mut s,
            Kind::Pods,
            &p,
            pods.iter()
                .map(|(k, o)| ("shop", k.as_str(), o.clone()))
                .collect(),
        );
        let d = publish(&s, &all);
        let idx = d.index.load();
        assert_eq!((idx.services, idx.endpoints), (1000, 10_000));
        let v = serde_json::to_value(idx.dump(DumpLimits::DEFAULT)).unwrap();
        assert_eq!(v["endpoints_listed"], 5000);
        assert_eq!(v["endpoints_omitted"], 5000);
        assert_eq!(v["hosts_truncated"], 500);
        // Every host is still named, with its ports and counts.
        assert_eq!(v["hosts"].as_array().map(Vec::len), Some(1000));
        assert_eq!(v["hosts"][999]["ports"][0]["endpoint_count"], 10);
        let bytes = serde_json::to_string_pretty(&v)
            .map(|t| t.len())
            .unwrap_or(0);
        let compact = serde_json::to_string(&v).map(|t| t.len()).unwrap_or(0);
        println!("dump of 1000 services x 10 endpoints: {bytes} bytes pretty, {compact} compact");
    }
}
