//! The control plane's copy of what proxies need (Services, EndpointSlices, Pods' metadata, as
//! the wire messages), the changes each watch event makes, and what one subscriber gets of
//! them. Pure: the watches (`watch.rs`) feed [`Event`]s in, the service (`serve.rs`) sends what
//! [`Cache::snapshot`] and [`Filter::delta`] return.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use remora_model::discovery_api::{DiscoveryResponse, EndpointSlice, Kind, Pod, Removed, Service};

/// One object of any kind.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Obj {
    Service(Service),
    Slice(EndpointSlice),
    Pod(Pod),
}

impl Obj {
    pub fn kind(&self) -> Kind {
        match self {
            Obj::Service(_) => Kind::Service,
            Obj::Slice(_) => Kind::EndpointSlice,
            Obj::Pod(_) => Kind::Pod,
        }
    }

    pub fn key(&self) -> (String, String) {
        let (ns, name) = match self {
            Obj::Service(s) => (&s.namespace, &s.name),
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

/// What one event changed: objects added or changed, objects removed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Change {
    pub put: Vec<Obj>,
    pub removed: Vec<Removed>,
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
        if m.get(&key) == Some(&obj) {
            return;
        }
        m.insert(key, obj.clone());
        ch.put.push(obj);
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
                if filter.covers(&obj.key().0) {
                    push(&mut r, obj.clone());
                }
            }
        }
        r
    }
}

fn push(r: &mut DiscoveryResponse, obj: Obj) {
    match obj {
        Obj::Service(s) => r.services.push(s),
        Obj::Slice(s) => r.endpoint_slices.push(s),
        Obj::Pod(p) => r.pods.push(p),
    }
}

/// What one subscriber sees: the namespaces it asked for (`None`: all).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Filter {
    pub namespaces: Option<BTreeSet<String>>,
}

impl Filter {
    /// From the request's list (empty: all).
    pub fn of(namespaces: &[String]) -> Filter {
        Filter {
            namespaces: (!namespaces.is_empty()).then(|| namespaces.iter().cloned().collect()),
        }
    }

    pub fn covers(&self, ns: &str) -> bool {
        self.namespaces.as_ref().is_none_or(|s| s.contains(ns))
    }

    /// The part of `change` this subscriber sees, as a delta at `version`; `None` when it sees
    /// nothing of it.
    pub fn delta(&self, change: &Change, version: u64) -> Option<DiscoveryResponse> {
        let mut r = DiscoveryResponse {
            version,
            full: false,
            ..DiscoveryResponse::default()
        };
        let mut any = false;
        for obj in &change.put {
            if self.covers(&obj.key().0) {
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
        Obj::Service(Service {
            namespace: ns.into(),
            name: name.into(),
            ports: vec![remora_model::discovery_api::ServicePort {
                port,
                name: "http".into(),
                app_protocol: String::new(),
            }],
            external_name: false,
            cluster_ips: vec![],
        })
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

        let shop = Filter::of(&["shop".to_string()]);
        let all = Filter::of(&[]);
        assert_eq!(names(&c.snapshot(&shop)), ["shop/a"]);
        assert_eq!(c.snapshot(&all).services.len(), 2);
        assert!(c.snapshot(&all).full);

        // The same object again: no change, no version.
        assert_eq!(c.apply(Event::Apply(svc("shop", "a", 80))), None);
        let ch = c.apply(Event::Apply(svc("shop", "a", 81))).unwrap();
        assert_eq!(c.version(), 2);
        assert_eq!(names(&shop.delta(&ch, 2).unwrap()), ["shop/a"]);
        let ch = c.apply(Event::Apply(svc("books", "b", 81))).unwrap();
        assert_eq!(shop.delta(&ch, 3), None, "books is not shop's");
        assert_eq!(names(&all.delta(&ch, 3).unwrap()), ["books/b"]);

        // A re-list (after a 410) that no longer names books/b, and names shop/c: both reach
        // the subscribers as one change.
        c.apply(Event::Init(Kind::Service));
        c.apply(Event::InitApply(svc("shop", "a", 81)));
        c.apply(Event::InitApply(svc("shop", "c", 80)));
        let ch = c.apply(Event::InitDone(Kind::Service)).unwrap();
        assert_eq!(names(&all.delta(&ch, 4).unwrap()), ["shop/c", "-books/b"]);
        assert_eq!(names(&shop.delta(&ch, 4).unwrap()), ["shop/c"]);
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
