//! The control plane's copy of what proxies need (Services, EndpointSlices, Pods' metadata, as
//! the wire messages), the changes each watch event makes, and what one subscriber gets of
//! them. Pure: the watches (`watch.rs`) feed [`Event`]s in, the service (`serve.rs`) sends what
//! [`Cache::snapshot`] and [`Filter::delta`] return.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use remora_model::discovery_api::{DiscoveryResponse, EndpointSlice, Kind, Pod, Removed, Service};

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

/// What one subscriber sees: the namespaces it asked for (`None`: all), and of their Services
/// those exported to its own namespace (with their EndpointSlices).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Filter {
    /// The subscriber's own namespace.
    pub own: String,
    pub namespaces: Option<BTreeSet<String>>,
}

impl Filter {
    /// For a proxy of namespace `own`, from the request's list (empty: all).
    pub fn of(own: &str, namespaces: &[String]) -> Filter {
        Filter {
            own: own.to_string(),
            namespaces: (!namespaces.is_empty()).then(|| namespaces.iter().cloned().collect()),
        }
    }

    pub fn covers(&self, ns: &str) -> bool {
        self.namespaces.as_ref().is_none_or(|s| s.contains(ns))
    }

    /// Does the subscriber see `obj` as `cache` now holds things?
    fn sees(&self, cache: &Cache, obj: &Obj) -> bool {
        let (ns, _) = obj.key();
        if !self.covers(&ns) {
            return false;
        }
        match obj {
            Obj::Service(_, e) => e.visible_to(&self.own),
            Obj::Slice(s) => cache
                .export(&ns, &s.service)
                .is_none_or(|e| e.visible_to(&self.own)),
            Obj::Pod(_) => true,
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
            if !self.covers(ns) {
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

    /// `[shop, remora-system]` or `all namespaces`, for logs.
    pub fn describe(&self) -> String {
        match &self.namespaces {
            None => "all namespaces".into(),
            Some(s) => format!("[{}]", s.iter().cloned().collect::<Vec<_>>().join(", ")),
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
