//! Kubernetes endpoint discovery and the rules ConfigMap read through the API.
//!
//! - `scope`: what to watch, decided from the live rules (pure): the namespaces and hosts the
//!   Sidecar's egress scope needs (default: the pod's own namespace, `remora-system` and the
//!   namespaces of VirtualService destinations).
//! - `store`: a compact registry (ports, endpoint IPs, readiness, pod names and labels) and the
//!   immutable host index that answers `EndpointSource` queries on the request path and is
//!   listed, capped (`DumpLimits`), in `/config_dump`.
//! - `kube`: the seam to the API server: kube-runtime watchers for Services, EndpointSlices
//!   (discovery.k8s.io/v1) and Pods (metadata only), per namespace, feeding the store.
//! - `rules_api`: the rules ConfigMap watched through the API and arbitrated with the mounted
//!   files (whichever has the newer content wins).
//! - `remote`, `wire`: the same store fed by the control plane's discovery service instead
//!   (`--discovery-address`): the subscription (I/O) and its messages as store updates (pure).
//! - `ready`: readiness waits, bounded by `--discovery-ready-timeout`, for the first list of
//!   every watch and the ConfigMap's first answer.

pub mod kube;
pub mod ready;
pub mod remote;
pub mod rules_api;
pub mod store;
pub mod wire;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use crate::rules::{host, Snapshot};
use store::Part;

/// The namespace of the mesh's own components, always watched by default.
pub const SYSTEM_NAMESPACE: &str = "remora-system";

/// What discovery watches and which hosts it indexes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scope {
    /// Sorted; `[Part::All]` alone when some egress host allows every namespace.
    pub parts: Vec<Part>,
    /// Why each namespace (or `*`) is watched, in order.
    pub reasons: BTreeMap<String, Vec<String>>,
    /// The Sidecar's egress hosts `(namespace, dns)` when it has any: only services matching
    /// one are indexed. `None`: every service of the watched namespaces.
    pub hosts: Option<Vec<(String, String)>>,
}

impl Scope {
    /// The scope the rules of `snap` need, for a pod in `own_ns`.
    pub fn from_snapshot(snap: &Snapshot, own_ns: &str) -> Scope {
        let mut reasons: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let mut add = |ns: &str, why: String| {
            let v = reasons.entry(ns.to_string()).or_default();
            if !v.contains(&why) {
                v.push(why);
            }
        };
        let egress: Vec<(String, String)> = snap
            .sidecar
            .iter()
            .flat_map(|sc| sc.egress.iter())
            .flat_map(|l| l.hosts.iter())
            .map(|h| (h.namespace.clone(), h.dns.clone()))
            .collect();
        let hosts = if egress.is_empty() {
            add(own_ns, "own namespace".to_string());
            add(SYSTEM_NAMESPACE, SYSTEM_NAMESPACE.to_string());
            let suffix = format!(".svc.{}", snap.ctx.cluster_domain);
            for (ns, why) in destination_namespaces(snap, &suffix) {
                add(&ns, why.to_string());
            }
            None
        } else {
            let sc = snap
                .sidecar
                .as_ref()
                .map(|s| s.meta.key())
                .unwrap_or_default();
            for (ns, dns) in &egress {
                match ns.as_str() {
                    "~" => {}
                    n => add(n, format!("Sidecar {sc} egress {ns}/{dns}")),
                }
            }
            Some(egress)
        };
        let parts = if reasons.contains_key("*") {
            vec![Part::All]
        } else {
            reasons
                .keys()
                .map(|n| Part::Namespace(Arc::from(n.as_str())))
                .collect()
        };
        Scope {
            parts,
            reasons,
            hosts,
        }
    }

    /// Is the service `fqdn` of namespace `ns` in scope?
    pub fn allows(&self, ns: &str, fqdn: &str) -> bool {
        if !self.parts.iter().any(|p| p.covers(ns)) {
            return false;
        }
        match &self.hosts {
            None => true,
            Some(hosts) => hosts.iter().any(|(hns, dns)| {
                (hns == "*" || hns == ns) && host::match_score(dns, fqdn).is_some()
            }),
        }
    }

    /// `[shop, remora-system] (shop: own namespace; remora-system: remora-system)`.
    pub fn describe(&self) -> String {
        let names: Vec<String> = self.reasons.keys().cloned().collect();
        let why: Vec<String> = self
            .reasons
            .iter()
            .map(|(ns, r)| format!("{ns}: {}", r.join(", ")))
            .collect();
        let mut s = format!("[{}] ({})", names.join(", "), why.join("; "));
        if let Some(h) = &self.hosts {
            let hs: Vec<String> = h.iter().map(|(n, d)| format!("{n}/{d}")).collect();
            s.push_str(&format!(", hosts limited to {}", hs.join(", ")));
        }
        s
    }
}

/// Namespaces of cluster-local hosts (`<svc>.<ns>.svc.<domain>`) the VirtualServices route or
/// mirror to, and those DestinationRules name (a DestinationRule alone gives its host a default
/// route whose load balancing needs the Service's endpoints), each with why.
fn destination_namespaces(snap: &Snapshot, suffix: &str) -> BTreeSet<(String, &'static str)> {
    let mut out = BTreeSet::new();
    let mut note_as = |h: &str, why: &'static str| {
        if let Some(rest) = h.strip_suffix(suffix) {
            if let Some((name, ns)) = rest.rsplit_once('.') {
                if !name.is_empty() && !ns.is_empty() && !name.starts_with('*') {
                    out.insert((ns.to_string(), why));
                }
            }
        }
    };
    for dr in &snap.destination_rules {
        note_as(&dr.host, "DestinationRule host");
    }
    let mut note = |h: &str| note_as(h, "VirtualService destination");
    for vs in &snap.virtual_services {
        for r in &vs.http {
            for d in &r.route {
                note(&d.destination.host);
            }
            for m in &r.policy.mirrors {
                note(&m.host);
            }
        }
        for r in vs.tcp.iter().chain(vs.tls.iter()) {
            for d in &r.route {
                note(&d.destination.host);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::{snapshot_from_yaml, LoadContext};

    fn ctx() -> LoadContext {
        LoadContext {
            namespace: "shop".into(),
            ..LoadContext::default()
        }
    }

    #[test]
    fn default_scope_is_own_system_and_destinations() {
        let snap = snapshot_from_yaml(
            &[(
                "vs.yaml",
                "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: r}\nspec:\n  hosts: [reviews]\n  http:\n  - route:\n    - destination: {host: reviews.books.svc.cluster.local}\n    mirror: {host: audit.logs.svc.cluster.local}\n",
            )],
            &ctx(),
            1,
        )
        .unwrap();
        let s = Scope::from_snapshot(&snap, "shop");
        let names: Vec<&String> = s.reasons.keys().collect();
        assert_eq!(names, ["books", "logs", "remora-system", "shop"]);
        assert_eq!(s.parts.len(), 4);
        assert_eq!(s.hosts, None);
        assert!(s.allows("books", "anything.books.svc.cluster.local"));
        assert!(!s.allows("other", "x.other.svc.cluster.local"));
        let d = s.describe();
        assert!(d.starts_with("[books, logs, remora-system, shop] ("), "{d}");
        assert!(d.contains("shop: own namespace"), "{d}");
        assert!(d.contains("books: VirtualService destination"), "{d}");
    }

    #[test]
    fn destination_rule_hosts_are_watched_too() {
        let snap = snapshot_from_yaml(
            &[(
                "dr.yaml",
                "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: r}\nspec:\n  host: ratings.books.svc.cluster.local\n  trafficPolicy: {loadBalancer: {simple: LEAST_REQUEST}}\n---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: w}\nspec:\n  host: \"*.wild.svc.cluster.local\"\n",
            )],
            &ctx(),
            1,
        )
        .unwrap();
        let s = Scope::from_snapshot(&snap, "shop");
        let names: Vec<&String> = s.reasons.keys().collect();
        assert_eq!(names, ["books", "remora-system", "shop"]);
        assert!(
            s.describe().contains("books: DestinationRule host"),
            "{}",
            s.describe()
        );
    }

    #[test]
    fn sidecar_egress_limits_namespaces_and_hosts() {
        let snap = snapshot_from_yaml(
            &[(
                "sc.yaml",
                "apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {name: default, namespace: shop}\nspec:\n  egress:\n  - hosts: [\"./*\", \"books/reviews.books.svc.cluster.local\", \"~/*\"]\n",
            )],
            &ctx(),
            1,
        )
        .unwrap();
        let s = Scope::from_snapshot(&snap, "shop");
        assert_eq!(
            s.parts,
            vec![
                Part::Namespace(Arc::from("books")),
                Part::Namespace(Arc::from("shop"))
            ]
        );
        assert!(s.allows("shop", "cart.shop.svc.cluster.local"));
        assert!(s.allows("books", "reviews.books.svc.cluster.local"));
        assert!(!s.allows("books", "ratings.books.svc.cluster.local"));
        assert!(s
            .describe()
            .contains("Sidecar shop/default egress books/reviews.books.svc.cluster.local"));

        let all = snapshot_from_yaml(
            &[(
                "sc.yaml",
                "apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {name: default, namespace: shop}\nspec:\n  egress:\n  - hosts: [\"*/*.svc.cluster.local\"]\n",
            )],
            &ctx(),
            1,
        )
        .unwrap();
        let s = Scope::from_snapshot(&all, "shop");
        assert_eq!(s.parts, vec![Part::All]);
        assert!(s.allows("any", "x.any.svc.cluster.local"));
    }
}
