//! Who is on each side of a request, as the metrics' `source_*` and `destination_*` labels name
//! it: this workload's own identity, and the peer's from what the proxy knows of it — the mTLS
//! principal, the discovery index (pod by address), the peer's own word in the metadata exchange
//! (only over mTLS), the endpoint's labels in the rules. Every value comes from configuration or
//! identity, never from a request.
//!
//! Pure: the request path gathers the facts, [`peer_of`] decides.

use remora_model::rules::endpoints::PodIdentity;
use remora_model::workload;
use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};

use super::UNKNOWN;

/// Istio's cluster id when none is configured (`ISTIO_META_CLUSTER_ID`).
pub const DEFAULT_CLUSTER: &str = "Kubernetes";

/// One side's identity labels. Compared field by field; hashed by a hash computed once at
/// construction (the metrics hash a label set per request).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    pub workload: Arc<str>,
    pub namespace: Arc<str>,
    pub principal: Arc<str>,
    pub app: Arc<str>,
    pub version: Arc<str>,
    pub canonical_service: Arc<str>,
    pub canonical_revision: Arc<str>,
    pub cluster: Arc<str>,
    hash: u64,
}

impl std::hash::Hash for Peer {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        state.write_u64(self.hash);
    }
}

/// The fields of a [`Peer`], before its hash.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PeerFields<'a> {
    pub workload: &'a str,
    pub namespace: &'a str,
    pub principal: &'a str,
    pub app: &'a str,
    pub version: &'a str,
    pub canonical_service: &'a str,
    pub canonical_revision: &'a str,
    pub cluster: &'a str,
}

impl Peer {
    pub fn new(f: &PeerFields<'_>) -> Peer {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        let all = [
            f.workload,
            f.namespace,
            f.principal,
            f.app,
            f.version,
            f.canonical_service,
            f.canonical_revision,
            f.cluster,
        ];
        all.hash(&mut h);
        let a = |s: &str| Arc::<str>::from(s);
        Peer {
            workload: a(f.workload),
            namespace: a(f.namespace),
            principal: a(f.principal),
            app: a(f.app),
            version: a(f.version),
            canonical_service: a(f.canonical_service),
            canonical_revision: a(f.canonical_revision),
            cluster: a(f.cluster),
            hash: h.finish(),
        }
    }

    /// A peer nothing is known of (outside the mesh): `unknown` everywhere, revision `latest`
    /// (as Istio reports it).
    pub fn unknown() -> Arc<Peer> {
        static UNKNOWN_PEER: OnceLock<Arc<Peer>> = OnceLock::new();
        UNKNOWN_PEER
            .get_or_init(|| {
                Arc::new(Peer::new(&PeerFields {
                    workload: UNKNOWN,
                    namespace: UNKNOWN,
                    principal: UNKNOWN,
                    app: UNKNOWN,
                    version: UNKNOWN,
                    canonical_service: UNKNOWN,
                    canonical_revision: workload::DEFAULT_REVISION,
                    cluster: UNKNOWN,
                }))
            })
            .clone()
    }

    /// The same peer with another principal.
    pub fn with_principal(&self, principal: &str) -> Peer {
        Peer::new(&PeerFields {
            principal,
            ..self.fields()
        })
    }

    pub fn fields(&self) -> PeerFields<'_> {
        PeerFields {
            workload: &self.workload,
            namespace: &self.namespace,
            principal: &self.principal,
            app: &self.app,
            version: &self.version,
            canonical_service: &self.canonical_service,
            canonical_revision: &self.canonical_revision,
            cluster: &self.cluster,
        }
    }
}

/// This workload's identity labels: from its workload name, namespace and pod labels, its
/// SPIFFE id (reported only on a mutual-TLS hop) and its cluster id.
pub fn own(
    workload_name: &str,
    namespace: &str,
    labels: &BTreeMap<String, String>,
    principal: &str,
    cluster: &str,
) -> Peer {
    Peer::new(&PeerFields {
        workload: workload_name,
        namespace,
        principal,
        app: workload::app(labels).unwrap_or(UNKNOWN),
        version: workload::version(labels).unwrap_or(UNKNOWN),
        canonical_service: workload::canonical_service(labels, workload_name),
        canonical_revision: workload::canonical_revision(labels),
        cluster,
    })
}

/// What is known of a peer on one request or connection.
#[derive(Clone, Copy, Debug, Default)]
pub struct PeerFacts<'a> {
    /// Its SPIFFE id, when the hop is mutual TLS (checked against the mesh roots).
    pub principal: Option<&'a str>,
    /// The pod at its address, from discovery.
    pub pod: Option<&'a PodIdentity>,
    /// What it said of itself in the metadata exchange; only used with `principal` (a peer
    /// that did not prove a mesh identity is not believed).
    pub exchanged: Option<&'a Peer>,
    /// The labels of the endpoint the rules (a ServiceEntry, discovery) give it (outbound).
    pub endpoint_labels: Option<&'a BTreeMap<String, String>>,
    /// This proxy's cluster id (the peer of a known pod or principal is in the same cluster).
    pub cluster: &'a str,
}

/// The peer's labels from `f`: discovery's pod first (the control plane's view), then the peer's
/// own word (over mTLS only), then the principal (namespace) and the endpoint's labels;
/// `unknown` for what none of them says (revision `latest`).
pub fn peer_of(f: &PeerFacts<'_>) -> Peer {
    let exchanged = f.exchanged.filter(|_| f.principal.is_some());
    let ex = |get: fn(&Peer) -> &str| exchanged.map(get).filter(|v| *v != UNKNOWN);
    let ep = f.endpoint_labels.filter(|l| !l.is_empty());
    let from_principal = f.principal.and_then(workload::spiffe_ns_sa);
    let pod_labels = f.pod.map(|p| &*p.labels);
    let workload_name = f
        .pod
        .map(|p| &*p.workload)
        .or_else(|| ex(|p| &p.workload))
        .unwrap_or(UNKNOWN);
    let namespace = f
        .pod
        .map(|p| &*p.namespace)
        .or_else(|| ex(|p| &p.namespace))
        .or(from_principal.map(|(ns, _)| ns))
        .unwrap_or(UNKNOWN);
    let app = pod_labels
        .and_then(workload::app)
        .or_else(|| ex(|p| &p.app))
        .or_else(|| ep.and_then(workload::app))
        .unwrap_or(UNKNOWN);
    let version = pod_labels
        .and_then(workload::version)
        .or_else(|| ex(|p| &p.version))
        .or_else(|| ep.and_then(workload::version))
        .unwrap_or(UNKNOWN);
    let canonical_service = match (f.pod, pod_labels) {
        (Some(p), Some(l)) => workload::canonical_service(l, &p.workload),
        _ => ex(|p| &p.canonical_service)
            .or_else(|| {
                ep.map(|l| workload::canonical_service(l, ""))
                    .filter(|s| !s.is_empty())
            })
            .unwrap_or(UNKNOWN),
    };
    let canonical_revision = match pod_labels {
        Some(l) => workload::canonical_revision(l),
        None => ex(|p| &p.canonical_revision)
            .or_else(|| ep.map(workload::canonical_revision))
            .unwrap_or(workload::DEFAULT_REVISION),
    };
    let cluster = ex(|p| &p.cluster)
        .or_else(|| (f.pod.is_some() || f.principal.is_some()).then_some(f.cluster))
        .unwrap_or(UNKNOWN);
    Peer::new(&PeerFields {
        workload: workload_name,
        namespace,
        principal: f.principal.unwrap_or(UNKNOWN),
        app,
        version,
        canonical_service,
        canonical_revision,
        cluster,
    })
}

/// `connection_security_policy` as Istio reports it: `mutual_tls` for a mutual-TLS hop; else
/// `none` on the destination's side and `unknown` on the source's (Istio's client side does
/// not know the server's policy).
pub fn security_policy(inbound: bool, mutual_tls: bool) -> &'static str {
    match (mutual_tls, inbound) {
        (true, _) => "mutual_tls",
        (false, true) => "none",
        (false, false) => UNKNOWN,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn pod(ns: &str, wl: &str, pairs: &[(&str, &str)]) -> PodIdentity {
        PodIdentity {
            namespace: Arc::from(ns),
            workload: Arc::from(wl),
            labels: Arc::new(labels(pairs)),
            service_account: None,
        }
    }

    /// (workload, namespace, principal, app, version, canonical service, revision, cluster)
    type Row<'a> = [&'a str; 8];

    fn row(p: &Peer) -> [String; 8] {
        let f = p.fields();
        [
            f.workload,
            f.namespace,
            f.principal,
            f.app,
            f.version,
            f.canonical_service,
            f.canonical_revision,
            f.cluster,
        ]
        .map(str::to_string)
    }

    const SA: &str = "spiffe://cluster.local/ns/shop/sa/reviews";

    #[test]
    fn peer_labels_from_what_is_known() {
        let reviews = pod(
            "shop",
            "reviews-v2",
            &[("app", "reviews"), ("version", "v2")],
        );
        let bare = pod("shop", "batch", &[]);
        let claimed = own(
            "claimed",
            "elsewhere",
            &labels(&[("app", "c"), ("version", "c1")]),
            "spiffe://cluster.local/ns/elsewhere/sa/c",
            "other-cluster",
        );
        let se = labels(&[("app", "httpbin"), ("security.istio.io/tlsMode", "istio")]);
        let cases: Vec<(&str, PeerFacts, Row)> = vec![
            (
                "nothing known: outside the mesh",
                PeerFacts::default(),
                [
                    "unknown", "unknown", "unknown", "unknown", "unknown", "unknown", "latest",
                    "unknown",
                ],
            ),
            (
                "mTLS only: the principal gives the namespace",
                PeerFacts {
                    principal: Some(SA),
                    ..Default::default()
                },
                [
                    "unknown", "shop", SA, "unknown", "unknown", "unknown", "latest", "K",
                ],
            ),
            (
                "discovery and mTLS",
                PeerFacts {
                    principal: Some(SA),
                    pod: Some(&reviews),
                    ..Default::default()
                },
                [
                    "reviews-v2",
                    "shop",
                    SA,
                    "reviews",
                    "v2",
                    "reviews",
                    "v2",
                    "K",
                ],
            ),
            (
                "discovery without mTLS: no principal",
                PeerFacts {
                    pod: Some(&reviews),
                    ..Default::default()
                },
                [
                    "reviews-v2",
                    "shop",
                    "unknown",
                    "reviews",
                    "v2",
                    "reviews",
                    "v2",
                    "K",
                ],
            ),
            (
                "a pod without app labels: its workload is its canonical service",
                PeerFacts {
                    pod: Some(&bare),
                    ..Default::default()
                },
                [
                    "batch", "shop", "unknown", "unknown", "unknown", "batch", "latest", "K",
                ],
            ),
            (
                "the peer's own word over mTLS (not its principal: the certificate's)",
                PeerFacts {
                    principal: Some(SA),
                    exchanged: Some(&claimed),
                    ..Default::default()
                },
                [
                    "claimed",
                    "elsewhere",
                    SA,
                    "c",
                    "c1",
                    "c",
                    "c1",
                    "other-cluster",
                ],
            ),
            (
                "the peer's word without mTLS is not believed",
                PeerFacts {
                    exchanged: Some(&claimed),
                    ..Default::default()
                },
                [
                    "unknown", "unknown", "unknown", "unknown", "unknown", "unknown", "latest",
                    "unknown",
                ],
            ),
            (
                "discovery wins over the peer's word",
                PeerFacts {
                    principal: Some(SA),
                    pod: Some(&reviews),
                    exchanged: Some(&claimed),
                    ..Default::default()
                },
                [
                    "reviews-v2",
                    "shop",
                    SA,
                    "reviews",
                    "v2",
                    "reviews",
                    "v2",
                    "other-cluster",
                ],
            ),
            (
                "a ServiceEntry endpoint's labels",
                PeerFacts {
                    principal: Some(SA),
                    endpoint_labels: Some(&se),
                    ..Default::default()
                },
                [
                    "unknown", "shop", SA, "httpbin", "unknown", "httpbin", "latest", "K",
                ],
            ),
        ];
        for (what, mut facts, want) in cases {
            facts.cluster = "K";
            let got = row(&peer_of(&facts));
            assert_eq!(got, want.map(str::to_string), "{what}");
        }
    }

    #[test]
    fn own_labels_and_security_policy() {
        let p = own(
            "reviews-v2",
            "shop",
            &labels(&[("app", "reviews"), ("version", "v2")]),
            SA,
            DEFAULT_CLUSTER,
        );
        assert_eq!(
            row(&p),
            [
                "reviews-v2",
                "shop",
                SA,
                "reviews",
                "v2",
                "reviews",
                "v2",
                "Kubernetes"
            ]
            .map(str::to_string)
        );
        let plain = p.with_principal(UNKNOWN);
        assert_eq!(&*plain.principal, "unknown");
        assert_ne!(plain, p);
        assert_eq!(plain.with_principal(SA), p);
        assert_eq!(security_policy(true, true), "mutual_tls");
        assert_eq!(security_policy(false, true), "mutual_tls");
        assert_eq!(security_policy(true, false), "none");
        assert_eq!(security_policy(false, false), "unknown");
    }
}
