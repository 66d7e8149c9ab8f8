//! The control plane's copy of what proxies need (Services, EndpointSlices, Pods' metadata, as
//! the wire messages), the changes each watch event makes, and what one subscriber gets of
//! them: the namespaces it asked for, the Services exported to it (`exportTo`) and, of those,
//! the ones its Sidecar's egress hosts admit. Pure: the watches (`watch.rs`) feed [`Event`]s in,
//! the service (`serve.rs`) sends what [`Cache::snapshot`], [`Filter::delta`] and
//! [`Cache::rescope`] return.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use remora_model::discovery_api::{DiscoveryResponse, EndpointSlice, Kind, Pod, Removed, Service};
use remora_model::kinds::{LoadContext, Sidecar};

/// Which namespaces may see a Service (its `networking.istio.io/exportTo` annotation).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Export {
    /// `*`, or no annotation (Istio's default).
    #[default]
    All,
    /// These namespaces (`.` is the Service's own; `~` or nothing: none).
    Only(BTreeSet<String>),
}

/// The annotation's key.
pub const EXPORT_TO: &str = "networking.istio.io/exportTo";

impl Export {
    /// The annotation's value for a Service of namespace `ns` (comma-separated `*`, `.`, `~` or
    /// namespace names; absent or empty: everyone).
    pub fn parse(ns: &str, value: Option<&str>) -> Export {
        let Some(v) = value.map(str::trim).filter(|v| !v.is_empty()) else {
            return Export::All;
        };
        let mut set = BTreeSet::new();
        for item in v.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            match item {
                "*" => return Export::All,
                "." => {
                    set.insert(ns.to_string());
                }
                "~" => {}
                other => {
                    set.insert(other.to_string());
                }
            }
        }
        Export::Only(set)
    }

    /// The annotation's value as [`Export::parse`] reads it, with the mesh's
    /// `defaultServiceExportTo` (`default`; empty: everyone) for a Service without one.
    pub fn parse_or(ns: &str, value: Option<&str>, default: &[String]) -> Export {
        match value.map(str::trim).filter(|v| !v.is_empty()) {
            Some(v) => Export::parse(ns, Some(v)),
            None if default.is_empty() => Export::All,
            None => Export::parse(ns, Some(&default.join(","))),
        }
    }

    pub fn visible_to(&self, ns: &str) -> bool {
        match self {
            Export::All => true,
            Export::Only(s) => s.contains(ns),
        }
    }
}

/// One object of any kind.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Obj {
    /// A Service and who may see it.
    Service(Service, Export),
    Slice(EndpointSlice),
    Pod(Pod),
}

impl Obj {
    pub fn kind(&self) -> Kind {
        match self {
            Obj::Service(..) => Kind::Service,
            Obj::Slice(_) => Kind::EndpointSlice,
            Obj::Pod(_) => Kind::Pod,
        }
    }

    pub fn key(&self) -> (String, String) {
        let (ns, name) = match self {
            Obj::Service(s, _) => (&s.namespace, &s.name),
            Obj::Slice(s) => (&s.namespace, &s.name),
            Obj::Pod(p) => (&p.namespace, &p.name),
        };
        (ns.clone(), name.clone())
    }
}

/// One event of a watch, as kube's watcher delivers them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A (re-)list of `kind` starts: buffer until `InitDone`.
    Init(Kind),
    InitApply(Obj),
    /// The list of `kind` is complete: what it did not name is gone.
    InitDone(Kind),
    Apply(Obj),
    Delete(Kind, String, String),
}

/// What one event changed: objects added or changed, objects removed, and the Services whose
/// visibility changed (`(namespace, name)`, the export before).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Change {
    pub put: Vec<Obj>,
    pub removed: Vec<Removed>,
    pub exports: Vec<(Key, Export)>,
}

type Key = (String, String);

/// Everything the control plane knows, by kind and `(namespace, name)`.
#[derive(Debug, Default)]
pub struct Cache {
    objects: HashMap<Kind, BTreeMap<Key, Obj>>,
    pending: HashMap<Kind, Vec<Obj>>,
    listed: HashSet<Kind>,
    version: u64,
}

pub const KINDS: [Kind; 3] = [Kind::Service, Kind::EndpointSlice, Kind::Pod];

impl Cache {
    pub fn new() -> Cache {
        Cache::default()
    }

    /// The version of the last change.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Every kind listed at least once.
    pub fn synced(&self) -> bool {
        KINDS.iter().all(|k| self.listed.contains(k))
    }

    /// Object counts per kind: (services, slices, pods).
    pub fn counts(&self) -> (usize, usize, usize) {
        let n = |k| self.objects.get(&k).map_or(0, BTreeMap::len);
        (n(Kind::Service), n(Kind::EndpointSlice), n(Kind::Pod))
    }

    /// Apply one event; the change it made (the version moves on) or `None` (nothing changed: a
    /// re-list naming the same objects, an update equal to what is held).
    pub fn apply(&mut self, ev: Event) -> Option<Change> {
        let mut ch = Change::default();
        match ev {
            Event::Init(kind) => {
                self.pending.insert(kind, Vec::new());
            }
            Event::InitApply(obj) => match self.pending.get_mut(&obj.kind()) {
                Some(buf) => buf.push(obj),
                None => self.put(obj, &mut ch),
            },
            Event::InitDone(kind) => {
                let buf = self.pending.remove(&kind).unwrap_or_default();
                let named: BTreeSet<Key> = buf.iter().map(Obj::key).collect();
                let gone: Vec<Key> = self
                    .objects
                    .get(&kind)
                    .map(|m| m.keys().filter(|k| !named.contains(*k)).cloned().collect())
                    .unwrap_or_default();
                for (ns, name) in gone {
                    self.delete(kind, ns, name, &mut ch);
                }
                for obj in buf {
                    self.put(obj, &mut ch);
                }
                self.listed.insert(kind);
            }
            Event::Apply(obj) => self.put(obj, &mut ch),
            Event::Delete(kind, ns, name) => self.delete(kind, ns, name, &mut ch),
        }
        if ch.put.is_empty() && ch.removed.is_empty() {
            return None;
        }
        self.version += 1;
        Some(ch)
    }

    fn put(&mut self, obj: Obj, ch: &mut Change) {
        let m = self.objects.entry(obj.kind()).or_default();
        let key = obj.key();
        let old = m.get(&key);
        if old == Some(&obj) {
            return;
        }
        if let Obj::Service(_, new) = &obj {
            let before = match old {
                Some(Obj::Service(_, e)) => e.clone(),
                _ => Export::All,
            };
            if before != *new {
                ch.exports.push((key.clone(), before));
            }
        }
        m.insert(key, obj.clone());
        ch.put.push(obj);
    }

    /// The labels of pod `ns/name`, when it is known.
    pub fn pod_labels(&self, ns: &str, name: &str) -> Option<&BTreeMap<String, String>> {
        match self
            .objects
            .get(&Kind::Pod)?
            .get(&(ns.to_string(), name.to_string()))?
        {
            Obj::Pod(p) => Some(&p.labels),
            _ => None,
        }
    }

    /// What a subscriber seeing `old` must be sent to see `new` instead (a Sidecar of its
    /// changed): the objects `new` sees and `old` did not, and the removal of those `old` saw
    /// and `new` does not, as a delta at the current version; `None` when nothing differs.
    pub fn rescope(&self, old: &Filter, new: &Filter) -> Option<DiscoveryResponse> {
        let mut r = DiscoveryResponse {
            version: self.version,
            full: false,
            ..DiscoveryResponse::default()
        };
        let mut any = false;
        for m in self.objects.values() {
            for obj in m.values() {
                match (old.sees(self, obj), new.sees(self, obj)) {
                    (false, true) => push(&mut r, obj.clone()),
                    (true, false) => {
                        let (namespace, name) = obj.key();
                        r.removed.push(Removed {
                            kind: obj.kind() as i32,
                            namespace,
                            name,
                        });
                    }
                    _ => continue,
                }
                any = true;
            }
        }
        any.then_some(r)
    }

    /// Who may see Service `ns/name` (everyone when it is not known).
    fn export(&self, ns: &str, name: &str) -> Option<&Export> {
        match self
            .objects
            .get(&Kind::Service)?
            .get(&(ns.to_string(), name.to_string()))?
        {
            Obj::Service(_, e) => Some(e),
            _ => None,
        }
    }

    /// The EndpointSlices of Service `ns/name`.
    fn slices_of<'a>(&'a self, ns: &'a str, name: &'a str) -> impl Iterator<Item = &'a Obj> + 'a {
        self.objects
            .get(&Kind::EndpointSlice)
            .into_iter()
            .flat_map(move |m| {
                m.range((ns.to_string(), String::new())..)
                    .take_while(move |((n, _), _)| n == ns)
                    .map(|(_, o)| o)
            })
            .filter(move |o| matches!(o, Obj::Slice(s) if s.service == name))
    }

    fn delete(&mut self, kind: Kind, ns: String, name: String, ch: &mut Change) {
        let key = (ns, name);
        if let Some(m) = self.objects.get_mut(&kind) {
            if m.remove(&key).is_some() {
                ch.removed.push(Removed {
                    kind: kind as i32,
                    namespace: key.0,
                    name: key.1,
                });
            }
        }
    }

    /// The full snapshot `filter` may see, at the current version.
    pub fn snapshot(&self, filter: &Filter) -> DiscoveryResponse {
        let mut r = DiscoveryResponse {
            version: self.version,
            full: true,
            ..DiscoveryResponse::default()
        };
        for m in self.objects.values() {
            for obj in m.values() {
                if filter.sees(self, obj) {
                    push(&mut r, obj.clone());
                }
            }
        }
        r
    }
}

fn push(r: &mut DiscoveryResponse, obj: Obj) {
    match obj {
        Obj::Service(s, _) => r.services.push(s),
        Obj::Slice(s) => r.endpoint_slices.push(s),
        Obj::Pod(p) => r.pods.push(p),
    }
}

/// The Sidecar that scopes a proxy of namespace `ns` whose pod has `labels`: one of its
/// namespace whose `workloadSelector` matches, else its namespace's without selector, else the
/// root namespace's default (`remora_model::rules::select_sidecar`, the choice the proxy makes
/// of its own rules).
pub fn sidecar_for(
    sidecars: &[Sidecar],
    ns: &str,
    labels: &BTreeMap<String, String>,
    root_namespace: &str,
) -> Option<Sidecar> {
    let ctx = LoadContext {
        namespace: ns.to_string(),
        pod_labels: labels.clone(),
        root_namespace: root_namespace.to_string(),
        ..LoadContext::default()
    };
    remora_model::rules::select_sidecar(sidecars, &ctx)
}

/// What one subscriber sees: the namespaces it asked for (`None`: all), and of their Services
/// those exported to its own namespace and admitted by its Sidecar's egress hosts (with their
/// EndpointSlices); Pods of the namespaces an egress host names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Filter {
    /// The subscriber's own namespace.
    pub own: String,
    pub namespaces: Option<BTreeSet<String>>,
    /// The Sidecar that applies to the subscriber (`None`: none, everything exported is seen).
    pub sidecar: Option<Sidecar>,
    /// The cluster's DNS domain (a Service's host is `<name>.<namespace>.svc.<domain>`).
    pub domain: String,
}

impl Filter {
    /// For a proxy of namespace `own`, from the request's list (empty: all); no Sidecar.
    pub fn of(own: &str, namespaces: &[String]) -> Filter {
        Filter {
            own: own.to_string(),
            namespaces: (!namespaces.is_empty()).then(|| namespaces.iter().cloned().collect()),
            sidecar: None,
            domain: "cluster.local".into(),
        }
    }

    /// The same, scoped by `sidecar` as it applies to the subscriber's namespace (`.` in its
    /// egress hosts is `own`; Services named `<name>.<ns>.svc.<domain>`).
    pub fn with_sidecar(self, sidecar: Option<Sidecar>, domain: &str) -> Filter {
        Filter {
            sidecar: sidecar.map(|s| s.for_namespace(&self.own)),
            domain: domain.to_string(),
            ..self
        }
    }

    pub fn covers(&self, ns: &str) -> bool {
        self.namespaces.as_ref().is_none_or(|s| s.contains(ns))
    }

    /// Does the Sidecar admit Service `ns/name` (`remora_model::rules::in_egress_scope`, the
    /// decision the rules controller and the proxy's routing make of egress hosts)?
    fn admits(&self, ns: &str, name: &str) -> bool {
        self.sidecar.as_ref().is_none_or(|sc| {
            let host = format!("{name}.{ns}.svc.{}", self.domain);
            remora_model::rules::in_egress_scope(sc, ns, std::slice::from_ref(&host))
        })
    }

    /// Does some egress host of the Sidecar name namespace `ns` (its pods are sent)?
    fn admits_namespace(&self, ns: &str) -> bool {
        self.sidecar.as_ref().is_none_or(|sc| {
            sc.egress.is_empty()
                || sc
                    .egress
                    .iter()
                    .flat_map(|l| l.hosts.iter())
                    .any(|h| h.namespace == "*" || h.namespace == ns)
        })
    }

    /// Does the subscriber see `obj` as `cache` now holds things?
    fn sees(&self, cache: &Cache, obj: &Obj) -> bool {
        let (ns, _) = obj.key();
        if !self.covers(&ns) {
            return false;
        }
        match obj {
            Obj::Service(s, e) => e.visible_to(&self.own) && self.admits(&ns, &s.name),
            Obj::Slice(s) => {
                cache
                    .export(&ns, &s.service)
                    .is_none_or(|e| e.visible_to(&self.own))
                    && self.admits(&ns, &s.service)
            }
            Obj::Pod(_) => self.admits_namespace(&ns),
        }
    }

    /// The part of `change` this subscriber sees, as a delta at `version` (`cache`: the state
    /// after the change); `None` when it sees nothing of it. A Service that became invisible to
    /// it is removed with its EndpointSlices; one that became visible is sent with them.
    pub fn delta(&self, cache: &Cache, change: &Change, version: u64) -> Option<DiscoveryResponse> {
        let mut r = DiscoveryResponse {
            version,
            full: false,
            ..DiscoveryResponse::default()
        };
        let mut any = false;
        for obj in &change.put {
            if self.sees(cache, obj) {
                push(&mut r, obj.clone());
                any = true;
            }
        }
        for rm in &change.removed {
            if self.covers(&rm.namespace) {
                r.removed.push(rm.clone());
                any = true;
            }
        }
        for ((ns, name), before) in &change.exports {
            if !self.covers(ns) || !self.admits(ns, name) {
                continue;
            }
            let now = cache
                .export(ns, name)
                .is_none_or(|e| e.visible_to(&self.own));
            let was = before.visible_to(&self.own);
            if was == now {
                continue;
            }
            any = true;
            for o in cache.slices_of(ns, name) {
                if now {
                    push(&mut r, o.clone());
                } else {
                    let (ns, n) = o.key();
                    r.removed.push(Removed {
                        kind: Kind::EndpointSlice as i32,
                        namespace: ns,
                        name: n,
                    });
                }
            }
            if !now {
                r.removed.push(Removed {
                    kind: Kind::Service as i32,
                    namespace: ns.clone(),
                    name: name.clone(),
                });
            }
        }
        any.then_some(r)
    }

    /// `[shop, remora-system]` or `all namespaces`, and the Sidecar when one applies, for
    /// logs.
    pub fn describe(&self) -> String {
        let ns = match &self.namespaces {
            None => "all namespaces".into(),
            Some(s) => format!("[{}]", s.iter().cloned().collect::<Vec<_>>().join(", ")),
        };
        match &self.sidecar {
            Some(sc) => format!("{ns}, Sidecar {}", sc.meta.key()),
            None => ns,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(ns: &str, name: &str, port: u32) -> Obj {
        svc_to(ns, name, port, None)
    }

    fn svc_to(ns: &str, name: &str, port: u32, export: Option<&str>) -> Obj {
        Obj::Service(
            Service {
                namespace: ns.into(),
                name: name.into(),
                ports: vec![remora_model::discovery_api::ServicePort {
                    port,
                    name: "http".into(),
                    app_protocol: String::new(),
                }],
                external_name: false,
                cluster_ips: vec![],
            },
            Export::parse(ns, export),
        )
    }

    fn slice(ns: &str, name: &str, service: &str) -> Obj {
        Obj::Slice(EndpointSlice {
            namespace: ns.into(),
            name: name.into(),
            service: service.into(),
            ..Default::default()
        })
    }

    fn all_names(r: &DiscoveryResponse) -> Vec<String> {
        let mut v: Vec<String> = r
            .services
            .iter()
            .map(|s| format!("svc {}/{}", s.namespace, s.name))
            .chain(
                r.endpoint_slices
                    .iter()
                    .map(|s| format!("slice {}/{}", s.namespace, s.name)),
            )
            .chain(
                r.removed
                    .iter()
                    .map(|x| format!("-{:?} {}/{}", x.kind(), x.namespace, x.name)),
            )
            .collect();
        v.sort();
        v
    }

    /// A Sidecar decoded by the model's one decoder (`.` is its own namespace, `~` none).
    fn sidecar(ns: &str, name: &str, selector: Option<&[(&str, &str)]>, hosts: &[&str]) -> Sidecar {
        let mut spec = serde_json::json!({"egress": [{"hosts": hosts}]});
        if hosts.is_empty() {
            spec = serde_json::json!({});
        }
        if let Some(sel) = selector {
            let labels: serde_json::Map<String, serde_json::Value> = sel
                .iter()
                .map(|(k, v)| (k.to_string(), serde_json::Value::String(v.to_string())))
                .collect();
            spec["workloadSelector"] = serde_json::json!({ "labels": labels });
        }
        let v = serde_json::json!({"apiVersion": "networking.istio.io/v1", "kind": "Sidecar",
            "metadata": {"name": name, "namespace": ns}, "spec": spec});
        remora_model::compile::check(&v, "cluster.local")
            .expect("a valid Sidecar")
            .sidecar()
            .expect("decoded as a Sidecar")
            .clone()
    }

    fn pod(ns: &str, name: &str, labels: &[(&str, &str)]) -> Obj {
        Obj::Pod(Pod {
            namespace: ns.into(),
            name: name.into(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Default::default()
        })
    }

    /// A cluster of three namespaces, one Service (and slice) each plus a private one in books.
    fn cluster() -> Cache {
        let mut c = Cache::new();
        for (ns, name) in [
            ("shop", "cart"),
            ("books", "reviews"),
            ("books", "ratings"),
            ("logs", "audit"),
        ] {
            c.apply(Event::Apply(svc(ns, name, 80)));
            c.apply(Event::Apply(slice(ns, &format!("{name}-1"), name)));
        }
        c.apply(Event::Apply(svc_to("books", "private", 80, Some("."))));
        c.apply(Event::Apply(slice("books", "private-1", "private")));
        c.apply(Event::Apply(pod("shop", "web-1", &[("app", "web")])));
        c.apply(Event::Apply(pod(
            "books",
            "reviews-1",
            &[("app", "reviews")],
        )));
        c
    }

    fn services(r: &DiscoveryResponse) -> Vec<String> {
        let mut v: Vec<String> = r
            .services
            .iter()
            .map(|s| format!("{}/{}", s.namespace, s.name))
            .collect();
        v.sort();
        v
    }

    #[test]
    fn sidecar_egress_hosts_scope_a_subscriber_table() {
        let c = cluster();
        let shop = Filter::of("shop", &[]);
        // (what, Sidecar egress hosts, Services seen by a proxy of shop)
        let cases: &[(&str, &[&str], &[&str])] = &[
            (
                "no egress listener: everything exported",
                &[],
                &["books/ratings", "books/reviews", "logs/audit", "shop/cart"],
            ),
            ("./*: its own namespace", &["./*"], &["shop/cart"]),
            (
                "ns/*: that namespace (exportTo still applies)",
                &["books/*"],
                &["books/ratings", "books/reviews"],
            ),
            (
                "*/host: that host in any namespace",
                &["*/reviews.books.svc.cluster.local"],
                &["books/reviews"],
            ),
            (
                "ns/host",
                &["./*", "books/ratings.books.svc.cluster.local"],
                &["books/ratings", "shop/cart"],
            ),
            (
                "ns/*.suffix",
                &["*/*.logs.svc.cluster.local"],
                &["logs/audit"],
            ),
            (
                "a host in another namespace than named: not admitted",
                &["logs/reviews.books.svc.cluster.local"],
                &[],
            ),
            ("~/*: nothing", &["~/*"], &[]),
            (
                "*/*: everything exported",
                &["*/*"],
                &["books/ratings", "books/reviews", "logs/audit", "shop/cart"],
            ),
        ];
        for (what, hosts, want) in cases {
            let sc = sidecar("shop", "default", None, hosts);
            let f = shop.clone().with_sidecar(Some(sc), "cluster.local");
            let snap = c.snapshot(&f);
            assert_eq!(services(&snap), *want, "{what}");
            // EndpointSlices follow their Services.
            let mut slices: Vec<String> = snap
                .endpoint_slices
                .iter()
                .map(|s| format!("{}/{}", s.namespace, s.service))
                .collect();
            slices.sort();
            assert_eq!(slices, *want, "{what}: slices");
        }
        // Pods: of the namespaces an egress host names.
        let f = shop.clone().with_sidecar(
            Some(sidecar("shop", "default", None, &["./*"])),
            "cluster.local",
        );
        let snap = c.snapshot(&f);
        let pods: Vec<&str> = snap.pods.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(pods, ["web-1"]);
    }

    /// A Sidecar with an egress listener on a port: the control plane sends a Service admitted
    /// by any listener (all its ports, with its slices); the proxy's routing applies each
    /// listener to its own port (`in_egress_scope_on_port`), as Istio's listeners do.
    #[test]
    fn a_port_s_egress_listener_admits_its_hosts_and_routing_keeps_them_to_that_port() {
        let c = cluster();
        let v = serde_json::json!({"apiVersion": "networking.istio.io/v1", "kind": "Sidecar",
            "metadata": {"name": "default", "namespace": "shop"},
            "spec": {"egress": [
                {"port": {"number": 9080, "protocol": "HTTP", "name": "http"},
                 "hosts": ["books/reviews.books.svc.cluster.local"]},
                {"hosts": ["./*"]}]}});
        let sc = remora_model::compile::check(&v, "cluster.local")
            .expect("a valid Sidecar")
            .sidecar()
            .expect("decoded as a Sidecar")
            .clone();
        assert_eq!(sc.egress[0].port, Some(9080));
        let f = Filter::of("shop", &[]).with_sidecar(Some(sc.clone()), "cluster.local");
        let snap = c.snapshot(&f);
        assert_eq!(services(&snap), ["books/reviews", "shop/cart"]);
        let slices: Vec<&str> = snap
            .endpoint_slices
            .iter()
            .map(|s| s.name.as_str())
            .collect();
        assert_eq!(slices, ["reviews-1", "cart-1"]);
        // Not admitted by either listener: not sent.
        assert!(!services(&snap).contains(&"books/ratings".to_string()));
        // Routing: reviews on 9080 only, cart on the other ports only (the port's listener
        // replaces the catch-all there).
        // (`.` is the proxy's own namespace, as the proxy applies its Sidecar.)
        let own = sc.for_namespace("shop");
        let on = |ns: &str, host: &str, port: u16| {
            remora_model::rules::in_egress_scope_on_port(&own, ns, &[host.to_string()], port)
        };
        assert!(on("books", "reviews.books.svc.cluster.local", 9080));
        assert!(!on("books", "reviews.books.svc.cluster.local", 80));
        assert!(on("shop", "cart.shop.svc.cluster.local", 80));
        assert!(!on("shop", "cart.shop.svc.cluster.local", 9080));
    }

    /// The mesh's `defaultServiceExportTo` for Services without the annotation.
    #[test]
    fn the_mesh_default_export_applies_to_services_without_an_annotation() {
        let d = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<String>>();
        let only = |v: &[&str]| Export::Only(v.iter().map(|s| s.to_string()).collect());
        // (annotation, mesh default, export of a Service of books)
        let cases: Vec<(Option<&str>, Vec<String>, Export)> = vec![
            (None, d(&[]), Export::All),
            (None, d(&["."]), only(&["books"])),
            (None, d(&[".", "shop"]), only(&["books", "shop"])),
            (None, d(&["~"]), only(&[])),
            (None, d(&["*"]), Export::All),
            (Some(""), d(&["."]), only(&["books"])),
            // The annotation wins over the default.
            (Some("*"), d(&["."]), Export::All),
            (Some("shop"), d(&["*"]), only(&["shop"])),
        ];
        for (ann, default, want) in cases {
            assert_eq!(
                Export::parse_or("books", ann, &default),
                want,
                "{ann:?} {default:?}"
            );
        }
        // In the cache: a subscriber of shop sees books' Service only when exported to it.
        let mut c = Cache::new();
        let svc = |e: Export| {
            Obj::Service(
                Service {
                    namespace: "books".into(),
                    name: "reviews".into(),
                    ..Default::default()
                },
                e,
            )
        };
        c.apply(Event::Apply(svc(Export::parse_or(
            "books",
            None,
            &d(&["."]),
        ))));
        assert!(c.snapshot(&Filter::of("shop", &[])).services.is_empty());
        assert_eq!(c.snapshot(&Filter::of("books", &[])).services.len(), 1);
    }

    #[test]
    fn the_sidecar_of_a_subscriber_is_the_proxy_s_own_choice() {
        let root = "remora-system";
        let labels = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let sidecars = vec![
            sidecar(root, "default", None, &["./*"]),
            sidecar("shop", "web", Some(&[("app", "web")]), &["books/*"]),
            sidecar("shop", "default", None, &["logs/*"]),
            sidecar("other", "scoped", Some(&[("app", "x")]), &["books/*"]),
        ];
        let name = |sc: Option<Sidecar>| sc.map(|s| s.meta.key());
        // (namespace, pod labels, Sidecar chosen)
        type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], Option<&'a str>);
        let cases: &[Case] = &[
            ("shop", &[("app", "web")], Some("shop/web")),
            ("shop", &[("app", "cart")], Some("shop/default")),
            ("shop", &[], Some("shop/default")),
            ("books", &[("app", "web")], Some("remora-system/default")),
            // A namespace whose only Sidecar selects other pods: the root default.
            ("other", &[("app", "y")], Some("remora-system/default")),
            ("other", &[("app", "x")], Some("other/scoped")),
        ];
        for (ns, l, want) in cases {
            assert_eq!(
                name(sidecar_for(&sidecars, ns, &labels(l), root)).as_deref(),
                *want,
                "{ns} {l:?}"
            );
        }
        assert_eq!(
            sidecar_for(&sidecars[1..2], "books", &labels(&[]), root),
            None
        );
    }

    #[test]
    fn a_sidecar_change_rescopes_with_a_delta() {
        let c = cluster();
        let narrow = Filter::of("shop", &[]).with_sidecar(
            Some(sidecar("shop", "default", None, &["./*"])),
            "cluster.local",
        );
        let wide = Filter::of("shop", &[]).with_sidecar(
            Some(sidecar("shop", "default", None, &["./*", "books/*"])),
            "cluster.local",
        );
        let d = c.rescope(&narrow, &wide).unwrap();
        assert!(!d.full);
        assert_eq!(d.version, c.version(), "the current version");
        assert_eq!(
            all_names(&d),
            [
                "slice books/ratings-1",
                "slice books/reviews-1",
                "svc books/ratings",
                "svc books/reviews"
            ],
            "books/private stays exported to books only"
        );
        assert_eq!(d.pods.len(), 1, "books' pod");
        let back = c.rescope(&wide, &narrow).unwrap();
        assert_eq!(
            all_names(&back),
            [
                "-EndpointSlice books/ratings-1",
                "-EndpointSlice books/reviews-1",
                "-Pod books/reviews-1",
                "-Service books/ratings",
                "-Service books/reviews"
            ]
        );
        assert_eq!(c.rescope(&wide, &wide), None, "nothing differs");
        // Deltas of changes respect the Sidecar too.
        let mut c = c;
        let ch = c.apply(Event::Apply(svc("books", "reviews", 81))).unwrap();
        assert_eq!(narrow.delta(&c, &ch, c.version()), None);
        assert!(wide.delta(&c, &ch, c.version()).is_some());
        assert_eq!(wide.describe(), "all namespaces, Sidecar shop/default");
    }

    #[test]
    fn export_to_annotations() {
        let set = |v: &[&str]| Export::Only(v.iter().map(|s| s.to_string()).collect());
        assert_eq!(Export::parse("shop", None), Export::All);
        assert_eq!(Export::parse("shop", Some(" ")), Export::All);
        assert_eq!(Export::parse("shop", Some("*")), Export::All);
        assert_eq!(Export::parse("shop", Some(".")), set(&["shop"]));
        assert_eq!(Export::parse("shop", Some("~")), set(&[]));
        assert_eq!(
            Export::parse("shop", Some(". , books")),
            set(&["books", "shop"])
        );
        assert_eq!(Export::parse("shop", Some("books,*")), Export::All);
        assert!(set(&["shop"]).visible_to("shop"));
        assert!(!set(&["shop"]).visible_to("books"));
    }

    #[test]
    fn a_service_exported_elsewhere_is_not_seen_and_visibility_changes_move_its_slices() {
        let mut c = Cache::new();
        for k in KINDS {
            c.apply(Event::Init(k));
            c.apply(Event::InitDone(k));
        }
        c.apply(Event::Apply(svc_to("books", "private", 80, Some("."))));
        c.apply(Event::Apply(slice("books", "private-1", "private")));
        c.apply(Event::Apply(svc("books", "public", 80)));
        c.apply(Event::Apply(slice("books", "public-1", "public")));
        let shop = Filter::of("shop", &[]);
        let books = Filter::of("books", &[]);
        assert_eq!(
            all_names(&c.snapshot(&shop)),
            ["slice books/public-1", "svc books/public"]
        );
        assert_eq!(c.snapshot(&books).services.len(), 2);
        // A slice change of the private Service: not shop's.
        let ch = c
            .apply(Event::Apply(Obj::Slice(EndpointSlice {
                endpoints: vec![Default::default()],
                ..match slice("books", "private-1", "private") {
                    Obj::Slice(s) => s,
                    _ => unreachable!(),
                }
            })))
            .unwrap();
        assert_eq!(shop.delta(&c, &ch, c.version()), None);
        assert!(books.delta(&c, &ch, c.version()).is_some());
        // Exported to shop now: shop gets the Service and its slice.
        let ch = c
            .apply(Event::Apply(svc_to("books", "private", 80, Some(".,shop"))))
            .unwrap();
        assert_eq!(
            all_names(&shop.delta(&c, &ch, c.version()).unwrap()),
            ["slice books/private-1", "svc books/private"]
        );
        // No longer: both removed for shop; books keeps seeing it (an update only).
        let ch = c
            .apply(Event::Apply(svc_to("books", "private", 80, Some("~"))))
            .unwrap();
        assert_eq!(
            all_names(&shop.delta(&c, &ch, c.version()).unwrap()),
            ["-EndpointSlice books/private-1", "-Service books/private"]
        );
        assert_eq!(
            all_names(&books.delta(&c, &ch, c.version()).unwrap()),
            ["-EndpointSlice books/private-1", "-Service books/private"],
            "~: not even its own namespace"
        );
    }

    fn names(r: &DiscoveryResponse) -> Vec<String> {
        let mut v: Vec<String> = r
            .services
            .iter()
            .map(|s| format!("{}/{}", s.namespace, s.name))
            .collect();
        v.extend(
            r.removed
                .iter()
                .map(|x| format!("-{}/{}", x.namespace, x.name)),
        );
        v
    }

    #[test]
    fn lists_changes_relists_and_filters() {
        let mut c = Cache::new();
        assert!(!c.synced());
        assert_eq!(c.apply(Event::Init(Kind::Service)), None);
        assert_eq!(c.apply(Event::InitApply(svc("shop", "a", 80))), None);
        assert_eq!(c.apply(Event::InitApply(svc("books", "b", 80))), None);
        let ch = c.apply(Event::InitDone(Kind::Service)).unwrap();
        assert_eq!(ch.put.len(), 2);
        assert_eq!(c.version(), 1);
        for k in [Kind::EndpointSlice, Kind::Pod] {
            c.apply(Event::Init(k));
            assert_eq!(c.apply(Event::InitDone(k)), None);
        }
        assert!(c.synced());
        assert_eq!(c.version(), 1, "empty lists change nothing");

        let shop = Filter::of("shop", &["shop".to_string()]);
        let all = Filter::of("shop", &[]);
        assert_eq!(names(&c.snapshot(&shop)), ["shop/a"]);
        assert_eq!(c.snapshot(&all).services.len(), 2);
        assert!(c.snapshot(&all).full);

        // The same object again: no change, no version.
        assert_eq!(c.apply(Event::Apply(svc("shop", "a", 80))), None);
        let ch = c.apply(Event::Apply(svc("shop", "a", 81))).unwrap();
        assert_eq!(c.version(), 2);
        assert_eq!(names(&shop.delta(&c, &ch, 2).unwrap()), ["shop/a"]);
        let ch = c.apply(Event::Apply(svc("books", "b", 81))).unwrap();
        assert_eq!(shop.delta(&c, &ch, 3), None, "books is not shop's");
        assert_eq!(names(&all.delta(&c, &ch, 3).unwrap()), ["books/b"]);

        // A re-list (after a 410) that no longer names books/b, and names shop/c: both reach
        // the subscribers as one change.
        c.apply(Event::Init(Kind::Service));
        c.apply(Event::InitApply(svc("shop", "a", 81)));
        c.apply(Event::InitApply(svc("shop", "c", 80)));
        let ch = c.apply(Event::InitDone(Kind::Service)).unwrap();
        assert_eq!(
            names(&all.delta(&c, &ch, 4).unwrap()),
            ["shop/c", "-books/b"]
        );
        assert_eq!(names(&shop.delta(&c, &ch, 4).unwrap()), ["shop/c"]);
        assert_eq!(c.counts(), (2, 0, 0));

        let ch = c
            .apply(Event::Delete(Kind::Service, "shop".into(), "c".into()))
            .unwrap();
        assert_eq!(ch.removed[0].kind(), Kind::Service);
        assert_eq!(
            c.apply(Event::Delete(Kind::Service, "shop".into(), "c".into())),
            None
        );
        assert_eq!(shop.describe(), "[shop]");
        assert_eq!(all.describe(), "all namespaces");
    }
}
