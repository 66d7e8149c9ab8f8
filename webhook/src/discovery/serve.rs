//! The discovery service `remora.discovery.v1.Discovery/Subscribe` on the CA's listener: who
//! asks (the projected token, checked by a TokenReview as the CA does), the subscribers and
//! their bounded queues, and the stream each gets (a snapshot, then deltas). Each subscriber is
//! scoped by the Sidecar that applies to its pod (`cache::sidecar_for`); a Sidecar change, or a
//! change of the subscriber's pod's labels, re-scopes it live with a delta (`Cache::rescope`).

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use remora_model::discovery_api::{DiscoveryResponse, SubscribeRequest};
use tokio::sync::{mpsc, oneshot, watch};
use tonic::{Code, Status};

use super::cache::{sidecar_for, Cache, Event, Filter};
use super::reviews::{Denied, Review, Reviews};
use crate::ca::authn::{bearer, Authenticator};
use crate::ca::sign::Identity;
use remora_model::kinds::Sidecar;

/// Bounds of the service.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Subscribers at once; more are refused (RESOURCE_EXHAUSTED).
    pub max_subscribers: usize,
    /// Messages queued for one subscriber; one more and it is dropped as too slow.
    pub queue: usize,
    /// How long a subscription waits for the control plane's first lists.
    pub sync_wait: Duration,
    /// How long the first request may take to arrive.
    pub first_request: Duration,
    /// The subscribers' TokenReviews: in flight at once, kept how long.
    pub reviews: super::reviews::Limits,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_subscribers: 4096,
            queue: 64,
            sync_wait: Duration::from_secs(30),
            first_request: Duration::from_secs(10),
            reviews: super::reviews::Limits::default(),
        }
    }
}

/// The mesh settings subscribers are scoped with.
#[derive(Clone, Debug)]
pub struct Mesh {
    /// Its default Sidecar (without `workloadSelector`) applies where a namespace has none.
    pub root_namespace: String,
    /// The cluster's DNS domain (Services' hosts in egress hosts).
    pub cluster_domain: String,
}

impl Default for Mesh {
    fn default() -> Self {
        Mesh {
            root_namespace: remora_model::kinds::DEFAULT_ROOT_NAMESPACE.into(),
            cluster_domain: "cluster.local".into(),
        }
    }
}

/// A change of the Sidecars the control plane knows.
#[derive(Clone, Debug)]
pub enum SidecarEvent {
    /// Every Sidecar of the cluster (a list; also "none" when the kind is not installed).
    Replace(Vec<Sidecar>),
    Put(Sidecar),
    Delete(String, String),
}

struct Sub {
    filter: Filter,
    /// The subscriber's pod (its labels select its Sidecar), `(namespace, name)`.
    pod: (String, String),
    tx: mpsc::Sender<DiscoveryResponse>,
    /// Told why the stream ends when the control plane drops the subscriber.
    kill: Option<oneshot::Sender<Status>>,
    who: String,
    acked: u64,
}

#[derive(Default)]
struct State {
    cache: Cache,
    subs: HashMap<u64, Sub>,
    /// By `(namespace, name)`.
    sidecars: BTreeMap<(String, String), Sidecar>,
    /// The same, in that order, as the model's selection takes them.
    sidecar_list: Vec<Sidecar>,
    /// The Sidecars were listed (or are known not to exist) at least once.
    sidecars_listed: bool,
}

impl State {
    fn synced(&self) -> bool {
        self.cache.synced() && self.sidecars_listed
    }

    /// The filter `sub`'s pod gets now.
    fn scoped(&self, filter: &Filter, pod: &(String, String), mesh: &Mesh) -> Filter {
        let none = BTreeMap::new();
        let labels = self.cache.pod_labels(&pod.0, &pod.1).unwrap_or(&none);
        let sc = sidecar_for(
            &self.sidecar_list,
            &filter.own,
            labels,
            &mesh.root_namespace,
        );
        filter.clone().with_sidecar(sc, &mesh.cluster_domain)
    }
}

/// The cache and its subscribers.
pub struct Hub {
    state: Mutex<State>,
    synced: watch::Sender<bool>,
    /// The audience subscribers' tokens are for.
    audience: String,
    /// The mesh's trust domain: a client certificate's SPIFFE id must be in it.
    trust_domain: String,
    mesh: Mesh,
    reviews: Reviews,
    limits: Limits,
    next_id: AtomicU64,
}

fn locked(m: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A subscription being served: its queue and the reason it may be ended with.
pub struct Subscription {
    pub id: u64,
    pub who: String,
    rx: mpsc::Receiver<DiscoveryResponse>,
    /// `None` once it fired (the stream has ended).
    kill: Option<oneshot::Receiver<Status>>,
    hub: Arc<Hub>,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.hub.unsubscribe(self.id);
    }
}

impl Hub {
    pub fn new(authn: Authenticator, trust_domain: &str, mesh: Mesh, limits: Limits) -> Arc<Hub> {
        let audience = authn.audience.clone();
        Hub::with_reviewer(Arc::new(authn), &audience, trust_domain, mesh, limits)
    }

    /// A hub whose subscribers' tokens `reviewer` checks (for `audience`).
    pub fn with_reviewer(
        reviewer: Arc<dyn Review>,
        audience: &str,
        trust_domain: &str,
        mesh: Mesh,
        limits: Limits,
    ) -> Arc<Hub> {
        Arc::new(Hub {
            state: Mutex::new(State::default()),
            synced: watch::channel(false).0,
            audience: audience.to_string(),
            trust_domain: trust_domain.to_string(),
            mesh,
            reviews: Reviews::new(reviewer, limits.reviews.clone()),
            limits,
            next_id: AtomicU64::new(1),
        })
    }

    /// One watch event: into the cache, and what changed to every subscriber that sees it. A
    /// subscriber whose queue is full is dropped and told.
    pub fn apply(&self, ev: Event) {
        let mut st = locked(&self.state);
        let Some(change) = st.cache.apply(ev) else {
            self.mark_synced(&st);
            return;
        };
        let version = st.cache.version();
        let mut dropped = Vec::new();
        for (id, sub) in st.subs.iter() {
            let Some(delta) = sub.filter.delta(&st.cache, &change, version) else {
                continue;
            };
            if let Some(d) = send(sub, delta) {
                dropped.push((*id, d));
            }
        }
        self.drop_subs(&mut st, dropped, version);
        // A subscriber whose own pod changed (its labels select its Sidecar) is scoped again.
        let pods: std::collections::HashSet<(String, String)> = change
            .put
            .iter()
            .filter(|o| o.kind() == remora_model::discovery_api::Kind::Pod)
            .map(super::cache::Obj::key)
            .collect();
        if !pods.is_empty() {
            self.rescope(&mut st, |sub| pods.contains(&sub.pod));
        }
        super::metrics::subscribers(st.subs.len());
        self.mark_synced(&st);
    }

    /// A change of the Sidecars: every subscriber whose Sidecar it changes is scoped again
    /// (a delta adding what it now sees and removing what it no longer does).
    pub fn apply_sidecars(&self, ev: SidecarEvent) {
        let mut st = locked(&self.state);
        match ev {
            SidecarEvent::Replace(all) => {
                st.sidecars = all
                    .into_iter()
                    .map(|sc| ((sc.meta.namespace.clone(), sc.meta.name.clone()), sc))
                    .collect();
                st.sidecars_listed = true;
            }
            SidecarEvent::Put(sc) => {
                st.sidecars
                    .insert((sc.meta.namespace.clone(), sc.meta.name.clone()), sc);
            }
            SidecarEvent::Delete(ns, name) => {
                st.sidecars.remove(&(ns, name));
            }
        }
        st.sidecar_list = st.sidecars.values().cloned().collect();
        self.rescope(&mut st, |_| true);
        super::metrics::subscribers(st.subs.len());
        self.mark_synced(&st);
    }

    fn mark_synced(&self, st: &State) {
        if st.synced() {
            self.synced
                .send_if_modified(|s| !std::mem::replace(s, true));
        }
    }

    /// Scope the subscribers `which` selects again; send each whose view changes its delta.
    fn rescope(&self, st: &mut State, which: impl Fn(&Sub) -> bool) {
        let mut dropped = Vec::new();
        let mut changed = Vec::new();
        for (id, sub) in st.subs.iter() {
            if !which(sub) {
                continue;
            }
            let new = st.scoped(&sub.filter, &sub.pod, &self.mesh);
            if new.sidecar == sub.filter.sidecar {
                continue;
            }
            tracing::info!(subscriber = %sub.who, from = %sub.filter.describe(), to = %new.describe(),
                "discovery: subscriber scoped again (its Sidecar changed)");
            if let Some(delta) = st.cache.rescope(&sub.filter, &new) {
                if let Some(d) = send(sub, delta) {
                    dropped.push((*id, d));
                }
            }
            changed.push((*id, new));
        }
        for (id, f) in changed {
            if let Some(sub) = st.subs.get_mut(&id) {
                sub.filter = f;
            }
        }
        let version = st.cache.version();
        self.drop_subs(st, dropped, version);
    }

    /// Remove the subscribers `dropped` names (`true`: too slow, told why).
    fn drop_subs(&self, st: &mut State, dropped: Vec<(u64, bool)>, version: u64) {
        for (id, slow) in dropped {
            if let Some(mut sub) = st.subs.remove(&id) {
                if slow {
                    tracing::warn!(subscriber = %sub.who, acked_version = sub.acked, version,
                        "discovery: dropping a subscriber too slow to read: {} messages unread", self.limits.queue);
                    if let Some(k) = sub.kill.take() {
                        let _ = k.send(Status::resource_exhausted(format!(
                            "discovery: subscriber too slow: {} messages unread; dropped at version {version}, subscribe again for a fresh snapshot",
                            self.limits.queue
                        )));
                    }
                }
            }
        }
    }

    fn unsubscribe(&self, id: u64) {
        let mut st = locked(&self.state);
        if let Some(sub) = st.subs.remove(&id) {
            tracing::info!(subscriber = %sub.who, acked_version = sub.acked, "discovery: subscriber gone");
        }
        super::metrics::subscribers(st.subs.len());
    }

    /// Record the version a subscriber applied.
    pub fn ack(&self, id: u64, version: u64) {
        if let Some(sub) = locked(&self.state).subs.get_mut(&id) {
            sub.acked = sub.acked.max(version);
        }
    }

    /// TokenReviews sent for subscribers so far.
    pub fn reviews_made(&self) -> u64 {
        self.reviews.made()
    }

    /// (subscribers, version, services, slices, pods)
    pub fn stats(&self) -> (usize, u64, (usize, usize, usize)) {
        let st = locked(&self.state);
        (st.subs.len(), st.cache.version(), st.cache.counts())
    }

    /// Authenticate the first request (`certificate`: the SPIFFE id of the connection's
    /// verified client certificate, which wins over a token), wait for the first lists,
    /// register the subscriber and queue its snapshot. Refusals are logged once, naming who
    /// asked.
    pub async fn subscribe(
        self: &Arc<Self>,
        peer: Option<SocketAddr>,
        certificate: Option<&str>,
        authorization: Option<&str>,
        req: &SubscribeRequest,
    ) -> Result<Subscription, Status> {
        let peer_s = peer.map(|p| p.to_string()).unwrap_or_default();
        let claim = format!(
            "{}/{} (pod {:?})",
            req.namespace, req.service_account, req.pod_name
        );
        let refuse = |code: Code, reason: &'static str, msg: String, token_id: &str| {
            super::metrics::refused(reason);
            tracing::warn!(reason, claimed = %claim, identity = %token_id, peer = %peer_s,
                "discovery subscription refused: {msg}");
            Status::new(code, format!("discovery refused: {msg} (reason: {reason})"))
        };
        let (id, by) = match certificate {
            Some(spiffe) => match cert_identity(spiffe, &self.trust_domain) {
                Ok(id) => (id, "certificate"),
                Err(msg) => {
                    return Err(refuse(
                        Code::PermissionDenied,
                        "bad_certificate",
                        msg,
                        spiffe,
                    ))
                }
            },
            None => {
                let token = bearer(authorization, &self.audience)
                    .map_err(|r| refuse(Code::Unauthenticated, "unauthenticated", r.message, ""))?;
                let id = self.reviews.identity(token).await.map_err(|d| match d {
                    Denied::Refused(r) => {
                        let code = crate::ca::grpc::status_of(&r).code();
                        refuse(code, r.reason.label(), r.message, "")
                    }
                    Denied::Busy(msg) => refuse(Code::Unavailable, "reviews_busy", msg, ""),
                })?;
                (id, "token")
            }
        };
        let token_id = format!("{}/{}", id.namespace, id.service_account);
        let pod_ok = match (&id.pod, req.pod_name.as_str()) {
            (Some(p), claimed) if !claimed.is_empty() => p == claimed,
            _ => true,
        };
        if id.namespace != req.namespace || id.service_account != req.service_account || !pod_ok {
            return Err(refuse(
                Code::PermissionDenied,
                "identity_mismatch",
                format!(
                    "the request claims {claim} but its {by} is for {token_id}{}",
                    id.pod
                        .as_deref()
                        .map(|p| format!(" (pod {p:?})"))
                        .unwrap_or_default()
                ),
                &token_id,
            ));
        }
        for ns in &req.namespaces {
            if !super::is_namespace(ns) {
                return Err(refuse(
                    Code::InvalidArgument,
                    "bad_request",
                    format!("namespaces: {ns:?} is not a namespace name (DNS label)"),
                    &token_id,
                ));
            }
        }
        let mut synced = self.synced.subscribe();
        if tokio::time::timeout(self.limits.sync_wait, synced.wait_for(|s| *s))
            .await
            .is_err()
        {
            return Err(Status::unavailable(format!(
                "discovery: the control plane has not listed services, endpointslices and pods yet (waited {}s); retry",
                self.limits.sync_wait.as_secs()
            )));
        }
        let filter = Filter::of(&id.namespace, &req.namespaces);
        // The token's pod when it names one, else the pod the request names (its labels pick
        // the Sidecar, as istiod reads a proxy's labels from its pod).
        let pod = id.pod.as_deref().unwrap_or(&req.pod_name).to_string();
        let who = format!(
            "{}/{} pod {pod} ({}) at {peer_s}",
            id.namespace,
            id.service_account,
            filter.describe()
        );
        self.register(filter, &pod, who).map_err(|msg| {
            refuse(
                Code::ResourceExhausted,
                "too_many_subscribers",
                msg,
                &token_id,
            )
        })
    }

    /// Register a subscriber of pod `pod` (of `filter.own`) that sees `filter`, scoped by the
    /// Sidecar that applies to that pod, and queue its snapshot; `Err`: the cap is reached (the
    /// message says so).
    pub fn register(
        self: &Arc<Self>,
        filter: Filter,
        pod: &str,
        who: String,
    ) -> Result<Subscription, String> {
        let (tx, rx) = mpsc::channel(self.limits.queue.max(1));
        let (kill_tx, kill) = oneshot::channel();
        let sid = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut st = locked(&self.state);
        if st.subs.len() >= self.limits.max_subscribers {
            return Err(format!(
                "{} subscribers already (the cap); retry later or another replica",
                self.limits.max_subscribers
            ));
        }
        let pod = (filter.own.clone(), pod.to_string());
        let filter = st.scoped(&filter, &pod, &self.mesh);
        let snap = st.cache.snapshot(&filter);
        tracing::info!(subscriber = %who, version = snap.version, services = snap.services.len(),
            endpoint_slices = snap.endpoint_slices.len(), pods = snap.pods.len(),
            scope = %filter.describe(), "discovery: new subscriber; snapshot queued");
        // A fresh queue has room for the snapshot.
        let _ = tx.try_send(snap);
        st.subs.insert(
            sid,
            Sub {
                filter,
                pod,
                tx,
                kill: Some(kill_tx),
                who: who.clone(),
                acked: 0,
            },
        );
        super::metrics::subscribers(st.subs.len());
        drop(st);
        Ok(Subscription {
            id: sid,
            who,
            rx,
            kill: Some(kill),
            hub: self.clone(),
        })
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }
}

impl Subscription {
    /// The next message, or the status the stream ends with; `None`: the end.
    pub async fn next(&mut self) -> Option<Result<DiscoveryResponse, Status>> {
        let kill = self.kill.as_mut()?;
        tokio::select! {
            biased;
            k = kill => {
                self.kill = None;
                k.ok().map(Err)
            }
            m = self.rx.recv() => m.map(Ok),
        }
    }
}

/// Queue `delta` for `sub`; `Some(too slow)` when the subscriber must be dropped (its queue is
/// full, or it is gone).
fn send(sub: &Sub, delta: DiscoveryResponse) -> Option<bool> {
    match sub.tx.try_send(delta) {
        Ok(()) => None,
        Err(mpsc::error::TrySendError::Full(_)) => Some(true),
        Err(mpsc::error::TrySendError::Closed(_)) => Some(false),
    }
}

/// The namespace and service account of a verified client certificate's SPIFFE id, which must
/// be `spiffe://<trust domain>/ns/<namespace>/sa/<service account>`.
pub fn cert_identity(spiffe: &str, trust_domain: &str) -> Result<Identity, String> {
    let in_domain = spiffe
        .strip_prefix("spiffe://")
        .and_then(|r| r.split_once('/'))
        .is_some_and(|(td, _)| td == trust_domain);
    match remora_model::workload::spiffe_ns_sa(spiffe) {
        Some((ns, sa)) if in_domain && super::is_namespace(ns) && !sa.contains(':') => {
            Ok(Identity {
                namespace: ns.to_string(),
                service_account: sa.to_string(),
                pod: None,
            })
        }
        _ => Err(format!(
            "client certificate identity {spiffe:?} is not spiffe://{trust_domain}/ns/<namespace>/sa/<service account>"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discovery::cache::Obj;
    use remora_model::discovery_api::{Kind, Service};

    fn hub(limits: Limits) -> Arc<Hub> {
        // Never called: these tests register subscribers directly.
        let client =
            kube::Client::try_from(kube::Config::new("http://127.0.0.1:9".parse().unwrap()))
                .unwrap();
        Hub::new(
            Authenticator::new(client, "remora-ca", Duration::from_secs(1)),
            "cluster.local",
            Mesh::default(),
            limits,
        )
    }

    fn svc(ns: &str, name: &str, port: u32) -> Event {
        Event::Apply(Obj::Service(
            Service {
                namespace: ns.into(),
                name: name.into(),
                ports: vec![remora_model::discovery_api::ServicePort {
                    port,
                    ..Default::default()
                }],
                ..Default::default()
            },
            Default::default(),
        ))
    }

    fn pod(ns: &str, name: &str, app: &str) -> Event {
        Event::Apply(Obj::Pod(remora_model::discovery_api::Pod {
            namespace: ns.into(),
            name: name.into(),
            labels: [("app".to_string(), app.to_string())].into(),
            ..Default::default()
        }))
    }

    fn sidecar(ns: &str, name: &str, app: Option<&str>, hosts: &[&str]) -> Sidecar {
        let mut spec = serde_json::json!({"egress": [{"hosts": hosts}]});
        if let Some(a) = app {
            spec["workloadSelector"] = serde_json::json!({"labels": {"app": a}});
        }
        let v = serde_json::json!({"apiVersion": "networking.istio.io/v1", "kind": "Sidecar",
            "metadata": {"name": name, "namespace": ns}, "spec": spec});
        remora_model::compile::check(&v, "cluster.local")
            .unwrap()
            .sidecar()
            .unwrap()
            .clone()
    }

    fn services(r: &DiscoveryResponse) -> Vec<String> {
        let mut v: Vec<String> = r
            .services
            .iter()
            .map(|s| format!("{}/{}", s.namespace, s.name))
            .chain(
                r.removed
                    .iter()
                    .filter(|x| x.kind() == Kind::Service)
                    .map(|x| format!("-{}/{}", x.namespace, x.name)),
            )
            .collect();
        v.sort();
        v
    }

    /// The subscriber's Sidecar follows its pod's labels and the Sidecars: a label change that
    /// makes another Sidecar select it, and a Sidecar deleted, each re-scope it with a delta; a
    /// subscription waits for the Sidecars' first list.
    #[tokio::test]
    async fn a_subscriber_is_scoped_again_when_its_pod_or_its_sidecar_changes() {
        let h = hub(Limits::default());
        for k in [Kind::Service, Kind::EndpointSlice, Kind::Pod] {
            h.apply(Event::Init(k));
            h.apply(Event::InitDone(k));
        }
        assert!(
            !locked(&h.state).synced(),
            "the Sidecars are not listed yet"
        );
        h.apply_sidecars(SidecarEvent::Replace(vec![
            sidecar("shop", "default", None, &["./*"]),
            sidecar("shop", "web", Some("web"), &["./*", "books/*"]),
        ]));
        assert!(locked(&h.state).synced());
        h.apply(svc("shop", "cart", 80));
        h.apply(svc("books", "reviews", 80));
        h.apply(pod("shop", "web-1", "other"));
        let mut sub = h
            .register(Filter::of("shop", &[]), "web-1", "web-1".into())
            .unwrap();
        let snap = sub.next().await.unwrap().unwrap();
        assert_eq!(services(&snap), ["shop/cart"], "the namespace's default");
        // Its pod is relabelled app=web: the workload's Sidecar selects it.
        h.apply(pod("shop", "web-1", "web"));
        // First the pod itself (a delta, as to every subscriber of shop), then the new scope.
        let d = sub.next().await.unwrap().unwrap();
        assert_eq!((d.pods.len(), d.services.len()), (1, 0));
        let d = sub.next().await.unwrap().unwrap();
        assert!(!d.full);
        assert_eq!(services(&d), ["books/reviews"]);
        // That Sidecar is deleted: back to the default.
        h.apply_sidecars(SidecarEvent::Delete("shop".into(), "web".into()));
        let d = sub.next().await.unwrap().unwrap();
        assert_eq!(services(&d), ["-books/reviews"]);
        // Another pod's change concerns it not.
        h.apply(pod("shop", "web-2", "web"));
        h.apply(svc("shop", "cart", 81));
        let d = sub.next().await.unwrap().unwrap();
        assert_eq!((d.pods[0].name.as_str(), d.services.len()), ("web-2", 0));
        let d = sub.next().await.unwrap().unwrap();
        assert_eq!(services(&d), ["shop/cart"]);
        assert_eq!(d.services[0].ports[0].port, 81);
    }

    #[test]
    fn certificate_identities() {
        let id = cert_identity("spiffe://cluster.local/ns/shop/sa/web", "cluster.local").unwrap();
        assert_eq!(
            (id.namespace.as_str(), id.service_account.as_str()),
            ("shop", "web")
        );
        for bad in [
            "spiffe://other.td/ns/shop/sa/web",
            "spiffe://cluster.local/ns/shop/sa/web/x",
            "spiffe://cluster.local/ns/Shop/sa/web",
            "spiffe://cluster.local/sa/web/ns/shop",
            "https://cluster.local/ns/shop/sa/web",
        ] {
            let e = cert_identity(bad, "cluster.local").unwrap_err();
            assert!(
                e.contains("is not spiffe://cluster.local/ns/<namespace>/sa/<service account>"),
                "{bad}: {e}"
            );
        }
    }

    #[tokio::test]
    async fn snapshot_then_deltas_a_slow_subscriber_is_dropped_and_told_and_the_cap_holds() {
        let h = hub(Limits {
            max_subscribers: 2,
            queue: 3,
            ..Limits::default()
        });
        for k in [Kind::Service, Kind::EndpointSlice, Kind::Pod] {
            h.apply(Event::Init(k));
            h.apply(Event::InitDone(k));
        }
        h.apply_sidecars(SidecarEvent::Replace(vec![]));
        h.apply(svc("shop", "a", 80));
        let mut fast = h
            .register(Filter::of("shop", &["shop".into()]), "", "fast".into())
            .unwrap();
        let mut slow = h
            .register(Filter::of("shop", &[]), "", "slow".into())
            .unwrap();
        let third = h
            .register(Filter::of("shop", &[]), "", "third".into())
            .err()
            .unwrap();
        assert!(third.contains("2 subscribers already"), "{third}");

        let snap = fast.next().await.unwrap().unwrap();
        assert!(snap.full);
        assert_eq!(snap.services.len(), 1);
        // books is not fast's: nothing queued for it; slow gets it (2 of 3 queued).
        h.apply(svc("books", "b", 80));
        h.apply(svc("shop", "a", 81));
        let d = fast.next().await.unwrap().unwrap();
        assert!(!d.full);
        assert_eq!(d.services[0].ports[0].port, 81);
        assert_eq!(d.version, h.stats().1);
        // Slow reads nothing: the fourth message does not fit, it is dropped and told.
        h.apply(svc("shop", "a", 82));
        assert_eq!(h.stats().0, 1, "slow is gone");
        let end = slow.next().await.unwrap().unwrap_err();
        assert_eq!(end.code(), Code::ResourceExhausted);
        assert!(
            end.message()
                .contains("subscriber too slow: 3 messages unread"),
            "{end:?}"
        );
        assert!(slow.next().await.is_none());
        // Fast keeps its stream; with room again, another subscriber may come.
        assert_eq!(
            fast.next().await.unwrap().unwrap().services[0].ports[0].port,
            82
        );
        let _again = h
            .register(Filter::of("shop", &[]), "", "again".into())
            .unwrap();
        drop(fast);
        assert_eq!(h.stats().0, 1, "a dropped subscription unregisters");
    }
}
