//! The seam to the Kubernetes API: kube-runtime watchers for Services, EndpointSlices
//! (discovery.k8s.io/v1) and Pods (metadata only) per watched namespace, feeding the store;
//! and the watcher of the rules ConfigMap. Everything here is I/O; the decisions are in
//! `store.rs`, `mod.rs` (scope) and `rules_api.rs`. The index's size and the watch restarts are
//! counted in the metrics handle discovery is started with (`Metrics::discovery`).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::Api;
use kube::runtime::watcher::{self, Event};
use kube::ResourceExt;
use tokio::sync::{mpsc, watch as tokio_watch};

use super::store::{
    DiscoveredEndpoints, DumpLimits, Index, Key, Kind, Object, Part, Slice, SliceEndpoint, Store,
    Svc, SvcPort, Update,
};
use super::Scope;
use crate::rules::endpoints::ChainedEndpoints;
use crate::rules::Snapshot;
use crate::telemetry::Metrics;

/// How the proxy reaches the API server (`--kube-api`).
pub enum ApiMode {
    Off(String),
    Client(kube::Client, String),
}

/// Build the client for `--kube-api auto|off|<url>` (auto: in-cluster when
/// `KUBERNETES_SERVICE_HOST` is set and a service-account token is mounted).
/// Must run inside a tokio runtime. `Err`: one line naming the flag, value and reason.
pub fn client_for(mode: &str, namespace: &str) -> Result<ApiMode, String> {
    let token = std::path::Path::new("/var/run/secrets/kubernetes.io/serviceaccount/token");
    let mut config = match mode {
        "off" => return Ok(ApiMode::Off("--kube-api=off".into())),
        "auto" => {
            if std::env::var_os("KUBERNETES_SERVICE_HOST").is_none() {
                return Ok(ApiMode::Off(
                    "--kube-api=auto: KUBERNETES_SERVICE_HOST is not set (not in a cluster)".into(),
                ));
            }
            if !token.exists() {
                return Ok(ApiMode::Off(format!(
                    "--kube-api=auto: no service-account token at {} (automountServiceAccountToken is off)",
                    token.display()
                )));
            }
            kube::Config::incluster()
                .map_err(|e| format!("--kube-api=auto: in-cluster configuration: {e}"))?
        }
        url => {
            let uri: http::Uri = url
                .parse()
                .map_err(|e| format!("--kube-api {url:?}: not auto, off or a URL: {e}"))?;
            if !matches!(uri.scheme_str(), Some("http") | Some("https")) || uri.host().is_none() {
                return Err(format!(
                    "--kube-api {url:?}: expected auto, off or an http(s)://host:port URL"
                ));
            }
            kube::Config::new(uri)
        }
    };
    config.default_namespace = namespace.to_string();
    let what = config.cluster_url.to_string();
    let client = kube::Client::try_from(config)
        .map_err(|e| format!("--kube-api {mode:?}: building the client: {e}"))?;
    Ok(ApiMode::Client(client, what))
}

/// Status for `/config_dump`.
pub type Status = remora_model::dump::WatchStatus;

/// How far the watches of the current scope are, for readiness (`ready.rs`).
#[derive(Debug, Default)]
struct SyncState {
    /// The parts of the scope last set (`None` before the first `set_scope`).
    parts: Option<Vec<Part>>,
    /// Watches whose list is complete and in the published index.
    listed: HashSet<(Kind, Part)>,
    /// Watches the API answered 403 (they do not hold readiness).
    forbidden: HashSet<(Kind, Part)>,
}

/// Where the watches of the current scope stand.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SyncReport {
    /// Watches not listed yet (and not forbidden), in scope order.
    pub pending: Vec<(Kind, Part)>,
    /// Watches the API refused with 403.
    pub forbidden: Vec<(Kind, Part)>,
    /// Watches listed.
    pub listed: usize,
}

/// Kubernetes discovery: the live index (an `EndpointSource`) and the task that keeps it.
pub struct Discovery {
    pub endpoints: Arc<DiscoveredEndpoints>,
    scope_tx: tokio_watch::Sender<Option<Scope>>,
    status: Mutex<Status>,
    sync: Mutex<SyncState>,
    /// Where the index's size and the watch restarts are counted.
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Discovery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Discovery").finish_non_exhaustive()
    }
}

fn locked<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Timing of the discovery task.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    /// Changes are gathered this long before the index is rebuilt.
    pub debounce: Duration,
    /// First retry delay after a failed list/watch (doubles up to `max_backoff`).
    pub backoff: Duration,
    pub max_backoff: Duration,
    /// Retry delay after a 403 (RBAC may be granted later).
    pub forbidden_retry: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            debounce: Duration::from_millis(20),
            backoff: Duration::from_millis(250),
            max_backoff: Duration::from_secs(30),
            forbidden_retry: Duration::from_secs(60),
        }
    }
}

/// Where discovery reads from.
enum Source {
    /// Watches of the Kubernetes API, per kind and part.
    Api(kube::Client),
    /// One subscription to the control plane for every part.
    Remote(Arc<super::remote::RemoteConfig>),
}

impl Discovery {
    /// Start the discovery task on the current tokio runtime, counting in `metrics` (its
    /// discovery families are registered now). Nothing is watched until the first `set_scope`.
    pub fn start(
        client: kube::Client,
        domain: &str,
        timing: Timing,
        metrics: Arc<Metrics>,
    ) -> Arc<Discovery> {
        Discovery::start_with(Source::Api(client), domain, timing, metrics)
    }

    /// Discovery from the control plane's discovery service instead of the API: the same
    /// store, index, scope and readiness; one subscription for the scope's namespaces.
    pub fn start_remote(
        cfg: super::remote::RemoteConfig,
        domain: &str,
        timing: Timing,
        metrics: Arc<Metrics>,
    ) -> Arc<Discovery> {
        let address = cfg.address.clone();
        let d = Discovery::start_with(Source::Remote(Arc::new(cfg)), domain, timing, metrics);
        d.update_control_plane(|c| {
            c.address = address;
            c.state = "connecting".into();
        });
        d
    }

    /// Change the control-plane sync status (`/config_dump`'s `control_plane`).
    pub fn update_control_plane(&self, f: impl FnOnce(&mut remora_model::dump::ControlPlaneSync)) {
        let mut st = locked(&self.status);
        f(st.control_plane.get_or_insert_with(Default::default));
    }

    fn start_with(
        source: Source,
        domain: &str,
        timing: Timing,
        metrics: Arc<Metrics>,
    ) -> Arc<Discovery> {
        metrics.discovery();
        let (scope_tx, scope_rx) = tokio_watch::channel(None);
        let d = Arc::new(Discovery {
            endpoints: Arc::new(DiscoveredEndpoints::new(domain)),
            scope_tx,
            status: Mutex::new(Status::default()),
            sync: Mutex::new(SyncState::default()),
            metrics,
        });
        tokio::spawn(run(d.clone(), source, domain.to_string(), scope_rx, timing));
        d
    }

    /// Watch what `scope` needs (no-op when it is the same).
    pub fn set_scope(&self, scope: Scope) {
        locked(&self.sync).parts = Some(scope.parts.clone());
        self.scope_tx.send_if_modified(|cur| {
            if cur.as_ref() == Some(&scope) {
                false
            } else {
                *cur = Some(scope);
                true
            }
        });
    }

    /// The snapshot with discovery asked first, then its ServiceEntries (Istio: a Kubernetes
    /// Service takes precedence over a ServiceEntry of the same host).
    pub fn attach(&self, mut snap: Snapshot) -> Snapshot {
        snap.endpoints = Arc::new(ChainedEndpoints {
            sources: vec![self.endpoints.clone(), snap.endpoints.clone()],
        });
        snap
    }

    pub fn status(&self) -> Status {
        locked(&self.status).clone()
    }

    /// The `/config_dump` block: the status, the host names and the index itself (ports and
    /// endpoints per host, bounded by `DumpLimits::DEFAULT`).
    pub fn dump(&self) -> remora_model::dump::DiscoveryDump {
        let idx = self.endpoints.index.load();
        remora_model::dump::DiscoveryDump {
            status: remora_model::dump::DiscoveryStatus::Running(self.status()),
            hosts: idx.host_names().into_iter().map(str::to_string).collect(),
            index: Some(idx.dump(DumpLimits::DEFAULT)),
            readiness: None,
        }
    }

    /// Which watches of the current scope have completed their first list (and are in the
    /// index the request path reads), which the API forbade, and which are still pending.
    /// `None` before the first scope is set.
    pub fn sync_report(&self) -> Option<SyncReport> {
        let s = locked(&self.sync);
        let parts = s.parts.as_ref()?;
        let mut r = SyncReport::default();
        for p in parts {
            for kind in [Kind::Services, Kind::EndpointSlices, Kind::Pods] {
                let key = (kind, p.clone());
                if s.listed.contains(&key) {
                    r.listed += 1;
                } else if s.forbidden.contains(&key) {
                    r.forbidden.push(key);
                } else {
                    r.pending.push(key);
                }
            }
        }
        Some(r)
    }

    fn set_forbidden(&self, kind: Kind, part: &Part, forbidden: bool) {
        let mut s = locked(&self.sync);
        if forbidden {
            s.forbidden.insert((kind, part.clone()));
        } else {
            s.forbidden.remove(&(kind, part.clone()));
        }
    }

    fn set_watch(&self, kind: Kind, part: &Part, state: String) {
        locked(&self.status)
            .watches
            .insert(format!("{} in {part}", kind.as_str()), state);
    }
}

/// A watch's id and task (`None` in remote mode: the one subscription's task is kept apart).
type Watch = (u64, Option<tokio::task::JoinHandle<()>>);

/// One store update from the watch or subscription with id `.0`.
pub type Msg = (u64, Kind, Part, Update);

async fn run(
    d: Arc<Discovery>,
    source: Source,
    domain: String,
    mut scope_rx: tokio_watch::Receiver<Option<Scope>>,
    timing: Timing,
) {
    let (tx, mut rx) = mpsc::channel::<Msg>(4096);
    let mut store = Store::new();
    let mut scope: Option<Scope> = None;
    // (kind, part) → (watch id, task); in remote mode every key holds the one subscription's
    // id, and its task (below).
    let mut watches: HashMap<(Kind, Part), Watch> = HashMap::new();
    let mut subscription: Option<(Vec<Part>, tokio::task::JoinHandle<()>)> = None;
    let mut next_id = 0u64;
    let mut dirty = false;
    let mut deadline: Option<tokio::time::Instant> = None;
    let mut builds = 0u64;
    let mut last_trim = tokio::time::Instant::now();
    let mut trim_pending = false;
    loop {
        tokio::select! {
            changed = scope_rx.changed() => {
                if changed.is_err() {
                    // The Discovery was dropped.
                    break;
                }
                let new = scope_rx.borrow_and_update().clone();
                let Some(new) = new else { continue };
                let parts = new.parts.clone();
                tracing::info!("discovery: watching services/endpointslices/pods in namespaces {}", new.describe());
                let gone: Vec<(Kind, Part)> = watches.keys().filter(|(_, p)| !parts.contains(p)).cloned().collect();
                for key in gone {
                    if let Some((_, Some(task))) = watches.remove(&key) {
                        task.abort();
                    }
                    locked(&d.status).watches.remove(&format!("{} in {}", key.0.as_str(), key.1));
                    d.set_forbidden(key.0, &key.1, false);
                    store.drop_part(&key.1, &parts);
                }
                match &source {
                    Source::Api(client) => {
                        for p in &parts {
                            for kind in [Kind::Services, Kind::EndpointSlices, Kind::Pods] {
                                if watches.contains_key(&(kind, p.clone())) {
                                    continue;
                                }
                                next_id += 1;
                                let task = tokio::spawn(watch_kind(
                                    d.clone(), client.clone(), kind, p.clone(), next_id, tx.clone(), timing,
                                ));
                                watches.insert((kind, p.clone()), (next_id, Some(task)));
                            }
                        }
                    }
                    Source::Remote(cfg) => {
                        if subscription.as_ref().is_none_or(|(cur, _)| *cur != parts) {
                            if let Some((_, task)) = subscription.take() {
                                task.abort();
                            }
                            next_id += 1;
                            let task = tokio::spawn(super::remote::run(
                                d.clone(), cfg.clone(), parts.clone(), next_id, tx.clone(), timing,
                            ));
                            subscription = Some((parts.clone(), task));
                            // Updates of the old subscription still queued are dropped by id;
                            // what it delivered stays until the new snapshot replaces it.
                            watches.clear();
                            for p in &parts {
                                for kind in [Kind::Services, Kind::EndpointSlices, Kind::Pods] {
                                    watches.insert((kind, p.clone()), (next_id, None));
                                }
                            }
                        }
                    }
                }
                {
                    let mut st = locked(&d.status);
                    st.scope = new.describe();
                    st.namespaces = new.reasons.keys().cloned().collect();
                }
                scope = Some(new);
                dirty = true;
                deadline.get_or_insert_with(|| tokio::time::Instant::now() + timing.debounce);
            }
            msg = rx.recv() => {
                let Some(first) = msg else { break };
                let mut next = Some(first);
                let mut n = 0;
                while let Some((id, kind, part, update)) = next.take() {
                    if watches.get(&(kind, part.clone())).is_some_and(|(cur, _)| *cur == id) {
                        store.apply(kind, &part, update);
                        dirty = true;
                    }
                    n += 1;
                    if n < 1024 {
                        next = rx.try_recv().ok();
                    }
                }
                if dirty {
                    deadline.get_or_insert_with(|| tokio::time::Instant::now() + timing.debounce);
                }
            }
            _ = async {
                match deadline {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => std::future::pending::<()>().await,
                }
            } => {
                deadline = None;
                if !dirty {
                    continue;
                }
                dirty = false;
                let Some(sc) = &scope else { continue };
                let allows = |ns: &str, fqdn: &str| sc.allows(ns, fqdn);
                let index = Index::build(&store, &domain, &allows);
                builds += 1;
                let (svcs, slices, pods) = store.counts();
                let m = d.metrics.discovery();
                m.services.set(index.services as i64);
                m.endpoints.set(index.endpoints as i64);
                {
                    let mut st = locked(&d.status);
                    st.services = index.services;
                    st.endpoints = index.endpoints;
                    st.pods = pods;
                    st.slices = slices;
                    st.label_sets = store.label_sets();
                    st.index_builds = builds;
                }
                tracing::debug!(services = index.services, endpoints = index.endpoints, listed_services = svcs, slices, pods, "discovery index rebuilt");
                d.endpoints.index.store(Arc::new(index));
                // Published after the index: a watch counts as listed for readiness once the
                // request path can see what it listed.
                let listed: HashSet<(Kind, Part)> = sc
                    .parts
                    .iter()
                    .flat_map(|p| [Kind::Services, Kind::EndpointSlices, Kind::Pods].map(|k| (k, p.clone())))
                    .filter(|(k, p)| store.synced_part(*k, p))
                    .collect();
                locked(&d.sync).listed = listed;
                trim_pending = true;
            }
            // Lists decode megabytes of JSON that are garbage once converted: hand the freed
            // pages back (at most once a second, after the last rebuild too) so RSS reflects
            // the compact store.
            _ = tokio::time::sleep_until(last_trim + Duration::from_secs(1)), if trim_pending => {
                crate::heap::release_free_memory();
                last_trim = tokio::time::Instant::now();
                trim_pending = false;
            }
        }
    }
    for (_, (_, task)) in watches {
        if let Some(task) = task {
            task.abort();
        }
    }
    if let Some((_, task)) = subscription {
        task.abort();
    }
}

fn api_for<K>(client: &kube::Client, part: &Part) -> Api<K>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    <K as kube::Resource>::DynamicType: Default,
{
    match part {
        Part::All => Api::all(client.clone()),
        Part::Namespace(ns) => Api::namespaced(client.clone(), ns),
    }
}

/// The HTTP status of a failed list/watch, when the API server answered one.
pub fn error_code(e: &watcher::Error) -> Option<u16> {
    match e {
        watcher::Error::InitialListFailed(kube::Error::Api(s))
        | watcher::Error::WatchStartFailed(kube::Error::Api(s))
        | watcher::Error::WatchFailed(kube::Error::Api(s)) => Some(s.code),
        watcher::Error::WatchError(s) => Some(s.code),
        _ => None,
    }
}

async fn watch_kind(
    d: Arc<Discovery>,
    client: kube::Client,
    kind: Kind,
    part: Part,
    id: u64,
    tx: mpsc::Sender<Msg>,
    timing: Timing,
) {
    let cfg = watcher::Config::default();
    match kind {
        Kind::Services => {
            let s = watcher::watcher(api_for::<Service>(&client, &part), cfg);
            drive(d, kind, part, id, tx, timing, s, |s: &Service| {
                Some(Object::Service(service(s)))
            })
            .await
        }
        Kind::EndpointSlices => {
            let s = watcher::watcher(api_for::<EndpointSlice>(&client, &part), cfg);
            drive(d, kind, part, id, tx, timing, s, |s: &EndpointSlice| {
                slice(s).map(Object::Slice)
            })
            .await
        }
        Kind::Pods => {
            // Metadata only (labels): no pod specs cross the wire or the decoder.
            let s = watcher::watcher(
                api_for::<kube::core::PartialObjectMeta<Pod>>(&client, &part),
                cfg,
            );
            drive(
                d,
                kind,
                part,
                id,
                tx,
                timing,
                s,
                |p: &kube::core::PartialObjectMeta<Pod>| Some(pod_object(p)),
            )
            .await
        }
    }
}

/// A pod's labels and its workload name (its controller, as Istio names it).
fn pod_object(p: &kube::core::PartialObjectMeta<Pod>) -> Object {
    let m = &p.metadata;
    let labels = p.labels().clone();
    let owner = m
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true))
        .map(|o| remora_model::workload::Owner {
            kind: &o.kind,
            name: &o.name,
        });
    let generated = m.generate_name.as_deref().is_some_and(|g| !g.is_empty());
    let name = m.name.as_deref().unwrap_or("");
    let (_, workload) = remora_model::workload::workload_of(name, generated, owner, &labels);
    // Metadata only: the service account is not known in this mode.
    Object::Pod(labels, workload.into_boxed_str(), None)
}

fn key_of<K: kube::Resource>(o: &K) -> Key {
    Key::new(
        o.meta().namespace.as_deref().unwrap_or(""),
        o.meta().name.as_deref().unwrap_or(""),
    )
}

#[allow(clippy::too_many_arguments)]
async fn drive<K, S>(
    d: Arc<Discovery>,
    kind: Kind,
    part: Part,
    id: u64,
    tx: mpsc::Sender<Msg>,
    timing: Timing,
    stream: S,
    convert: impl Fn(&K) -> Option<Object>,
) where
    K: kube::Resource,
    S: futures::Stream<Item = Result<Event<K>, watcher::Error>>,
{
    let mut stream = std::pin::pin!(stream);
    let mut listed_once = false;
    let mut count = 0usize;
    let mut delay = timing.backoff;
    let mut forbidden_logged = false;
    let mut last_error: Option<String> = None;
    let what = kind.as_str();
    let send = |u: Update| {
        let tx = tx.clone();
        let part = part.clone();
        async move { tx.send((id, kind, part, u)).await.is_ok() }
    };
    while let Some(item) = stream.next().await {
        let ok = match item {
            Ok(Event::Init) => {
                if listed_once {
                    d.metrics
                        .discovery()
                        .restarts
                        .with_label_values(&[what])
                        .inc();
                    tracing::info!("discovery: re-listing {what} in {part}");
                }
                count = 0;
                d.set_watch(kind, &part, "listing".into());
                send(Update::Init).await
            }
            Ok(Event::InitApply(o)) => match convert(&o) {
                Some(obj) => {
                    count += 1;
                    send(Update::InitApply(key_of(&o), obj)).await
                }
                None => true,
            },
            Ok(Event::InitDone) => {
                tracing::info!("discovery: listed {count} {what} in {part}; watching for changes");
                listed_once = true;
                delay = timing.backoff;
                last_error = None;
                d.set_forbidden(kind, &part, false);
                d.set_watch(kind, &part, "watching".into());
                send(Update::InitDone).await
            }
            Ok(Event::Apply(o)) => match convert(&o) {
                Some(obj) => send(Update::Apply(key_of(&o), obj)).await,
                // No longer usable (e.g. an FQDN slice): forget it.
                None => send(Update::Delete(key_of(&o))).await,
            },
            Ok(Event::Delete(o)) => send(Update::Delete(key_of(&o))).await,
            Err(e) => {
                let code = error_code(&e);
                match code {
                    Some(403) => {
                        if !forbidden_logged {
                            tracing::warn!("discovery: forbidden to list/watch {what} in {part} (403: {e}); no {what} from the API there (grant the ClusterRole in manifests/proxy-rbac.yaml); retrying every {}s quietly", timing.forbidden_retry.as_secs());
                            forbidden_logged = true;
                        }
                        d.set_watch(kind, &part, "forbidden".into());
                        d.set_forbidden(kind, &part, true);
                        tokio::time::sleep(timing.forbidden_retry).await;
                    }
                    Some(410) => {
                        // The watcher re-lists by itself (Init follows).
                        tracing::info!(
                            "discovery: watch of {what} in {part} expired (410 Gone): re-listing"
                        );
                    }
                    _ => {
                        d.metrics
                            .discovery()
                            .restarts
                            .with_label_values(&[what])
                            .inc();
                        let msg = e.to_string();
                        if last_error.as_deref() != Some(msg.as_str()) {
                            tracing::warn!("discovery: {what} in {part}: {msg}; retrying in {} ms (backing off to {} s)", delay.as_millis(), timing.max_backoff.as_secs());
                            last_error = Some(msg.clone());
                        }
                        d.set_watch(kind, &part, format!("error: {msg}"));
                        tokio::time::sleep(delay).await;
                        delay = (delay * 2).min(timing.max_backoff);
                    }
                }
                true
            }
        };
        if !ok {
            return;
        }
    }
}

/// `spec.clusterIPs` (or the older `spec.clusterIP`); none for a headless Service (`None`).
fn cluster_ips(spec: Option<&k8s_openapi::api::core::v1::ServiceSpec>) -> Vec<std::net::IpAddr> {
    let Some(spec) = spec else { return Vec::new() };
    let listed = spec
        .cluster_ips
        .as_deref()
        .filter(|v| !v.is_empty())
        .map(<[String]>::to_vec)
        .or_else(|| spec.cluster_ip.clone().map(|ip| vec![ip]))
        .unwrap_or_default();
    listed.iter().filter_map(|s| s.parse().ok()).collect()
}

/// A Service as routing needs it.
pub fn service(s: &Service) -> Svc {
    let spec = s.spec.as_ref();
    Svc {
        external_name: spec.and_then(|s| s.type_.as_deref()) == Some("ExternalName"),
        cluster_ips: cluster_ips(spec),
        ports: spec
            .and_then(|s| s.ports.as_ref())
            .map(|ps| {
                ps.iter()
                    .filter(|p| p.protocol.as_deref().is_none_or(|x| x == "TCP"))
                    .filter_map(|p| {
                        Some(SvcPort {
                            port: u16::try_from(p.port).ok()?,
                            name: p.name.as_deref().filter(|n| !n.is_empty()).map(Box::from),
                            app_protocol: p
                                .app_protocol
                                .as_deref()
                                .filter(|n| !n.is_empty())
                                .map(Box::from),
                        })
                    })
                    .collect()
            })
            .unwrap_or_default(),
    }
}

/// An EndpointSlice as routing needs it; `None` for slices without a service or with FQDN
/// addresses.
pub fn slice(s: &EndpointSlice) -> Option<Slice> {
    if !matches!(s.address_type.as_str(), "IPv4" | "IPv6") {
        return None;
    }
    let service = s.labels().get("kubernetes.io/service-name")?.clone();
    let ports = s
        .ports
        .as_ref()
        .map(|ps| {
            ps.iter()
                .filter(|p| p.protocol.as_deref().is_none_or(|x| x == "TCP"))
                .filter_map(|p| {
                    Some((
                        p.name.as_deref().filter(|n| !n.is_empty()).map(Box::from),
                        u16::try_from(p.port?).ok()?,
                    ))
                })
                .collect()
        })
        .unwrap_or_default();
    let endpoints = s
        .endpoints
        .iter()
        .flatten()
        .filter_map(|e| {
            let ip = e.addresses.first()?.parse().ok()?;
            let c = e.conditions.as_ref();
            let ready = c.and_then(|c| c.ready).unwrap_or(true)
                && !c.and_then(|c| c.terminating).unwrap_or(false);
            let pod = e
                .target_ref
                .as_ref()
                .filter(|r| r.kind.as_deref() == Some("Pod"))
                .and_then(|r| r.name.as_deref())
                .map(Arc::from);
            Some(SliceEndpoint { ip, ready, pod })
        })
        .collect();
    Some(Slice {
        service: service.into_boxed_str(),
        ports,
        endpoints,
    })
}

/// Watch the rules ConfigMap `name` in `namespace` (a `fieldSelector` on `metadata.name`) and
/// apply its content through `sources`. Runs until the runtime stops.
pub async fn watch_rules_configmap(
    client: kube::Client,
    namespace: String,
    name: String,
    sources: Arc<super::rules_api::RulesSources>,
    timing: Timing,
) {
    let api: Api<ConfigMap> = Api::namespaced(client, &namespace);
    let cfg = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let mut stream = std::pin::pin!(watcher::watcher(api, cfg));
    sources.set_api_status("starting", false, None);
    let mut delay = timing.backoff;
    let mut failing_since: Option<tokio::time::Instant> = None;
    let mut listed: Option<ConfigMap> = None;
    let mut forbidden_logged = false;
    let apply = |cm: ConfigMap| {
        let sources = sources.clone();
        async move {
            let rv = cm.resource_version().unwrap_or_default();
            let data = cm.data.unwrap_or_default();
            let binary: Vec<String> = cm.binary_data.unwrap_or_default().into_keys().collect();
            let res = tokio::task::spawn_blocking(move || {
                sources.apply_configmap(
                    &data,
                    &binary,
                    &rv,
                    &crate::rules::endpoints::system_resolver,
                )
            })
            .await;
            if let Err(e) = res {
                tracing::error!("applying the rules ConfigMap failed: {e}");
            }
        }
    };
    while let Some(item) = stream.next().await {
        match item {
            Ok(Event::Init) => listed = None,
            Ok(Event::InitApply(cm)) => {
                if cm.name_any() == name {
                    listed = Some(cm);
                }
            }
            Ok(Event::InitDone) => {
                failing_since = None;
                delay = timing.backoff;
                match listed.take() {
                    Some(cm) => {
                        tracing::info!("watching ConfigMap {namespace}/{name} through the API (resourceVersion {})", cm.resource_version().unwrap_or_default());
                        apply(cm).await;
                    }
                    None => sources.set_api_status(
                        &format!("not found: no ConfigMap {namespace}/{name}"),
                        false,
                        None,
                    ),
                }
                // After the content is applied: readiness never sees the answer before the
                // rules it brought.
                sources.api_answered();
            }
            Ok(Event::Apply(cm)) => {
                failing_since = None;
                if cm.name_any() == name {
                    apply(cm).await;
                }
            }
            Ok(Event::Delete(cm)) => {
                if cm.name_any() == name {
                    sources.set_api_status(
                        &format!("deleted: ConfigMap {namespace}/{name} was deleted; keeping the rules in effect"),
                        false,
                        None,
                    );
                }
            }
            Err(e) => match error_code(&e) {
                Some(403) => {
                    if !forbidden_logged {
                        tracing::warn!("rules through the API: forbidden to watch ConfigMap {namespace}/{name} (403: {e}); using the mounted files only (grant manifests/proxy-rbac.yaml for updates within a second); retrying every {}s quietly", timing.forbidden_retry.as_secs());
                        forbidden_logged = true;
                    }
                    sources.set_api_status("forbidden", false, Some(e.to_string()));
                    sources.api_answered();
                    tokio::time::sleep(timing.forbidden_retry).await;
                }
                Some(410) => {
                    tracing::info!("rules through the API: watch of ConfigMap {namespace}/{name} expired (410 Gone): re-listing");
                }
                _ => {
                    let since = *failing_since.get_or_insert_with(tokio::time::Instant::now);
                    let live = since.elapsed() < Duration::from_secs(60);
                    tracing::warn!("rules through the API: ConfigMap {namespace}/{name}: {e}; retrying in {} ms", delay.as_millis());
                    let status = if live {
                        "watching (retrying)"
                    } else {
                        "unreachable for 60 s"
                    };
                    let a = sources.api_state();
                    sources.set_api_status(status, live && a.live, Some(e.to_string()));
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(timing.max_backoff);
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_and_slice_conversion() {
        let svc: Service = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "reviews", "namespace": "shop"},
            "spec": {"ports": [
                {"name": "http", "port": 9080, "targetPort": 8080, "protocol": "TCP"},
                {"name": "dns", "port": 53, "protocol": "UDP"}
            ]}
        }))
        .unwrap();
        let s = service(&svc);
        assert_eq!(
            s.ports,
            vec![SvcPort {
                port: 9080,
                name: Some("http".into()),
                app_protocol: None,
            }]
        );
        assert!(!s.external_name);
        assert!(s.cluster_ips.is_empty());
        let ips = |spec: serde_json::Value| {
            let svc: Service = serde_json::from_value(serde_json::json!({
                "metadata": {"name": "x", "namespace": "shop"}, "spec": spec
            }))
            .unwrap();
            service(&svc).cluster_ips
        };
        let v4: std::net::IpAddr = "10.96.0.10".parse().unwrap();
        let v6: std::net::IpAddr = "fd00::10".parse().unwrap();
        assert_eq!(
            ips(
                serde_json::json!({"clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10", "fd00::10"]})
            ),
            vec![v4, v6]
        );
        assert_eq!(
            ips(serde_json::json!({"clusterIP": "10.96.0.10"})),
            vec![v4]
        );
        // Headless: no virtual address.
        assert!(ips(serde_json::json!({"clusterIP": "None", "clusterIPs": ["None"]})).is_empty());
        let es: EndpointSlice = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "reviews-x", "namespace": "shop",
                          "labels": {"kubernetes.io/service-name": "reviews"}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            "endpoints": [
                {"addresses": ["10.0.0.1"], "conditions": {"ready": true},
                 "targetRef": {"kind": "Pod", "name": "reviews-1", "namespace": "shop"}},
                {"addresses": ["10.0.0.2"]},
                {"addresses": ["10.0.0.3"], "conditions": {"ready": false, "serving": true, "terminating": true}},
                {"addresses": ["not-an-ip"]}
            ]
        }))
        .unwrap();
        let sl = slice(&es).unwrap();
        assert_eq!(&*sl.service, "reviews");
        assert_eq!(sl.ports, vec![(Some("http".into()), 8080)]);
        let got: Vec<(String, bool, Option<&str>)> = sl
            .endpoints
            .iter()
            .map(|e| (e.ip.to_string(), e.ready, e.pod.as_deref()))
            .collect();
        assert_eq!(
            got,
            vec![
                ("10.0.0.1".into(), true, Some("reviews-1")),
                ("10.0.0.2".into(), true, None),
                ("10.0.0.3".into(), false, None)
            ]
        );
        let mut fq = es.clone();
        fq.address_type = "FQDN".into();
        assert!(slice(&fq).is_none());
    }

    #[test]
    fn kube_api_flag() {
        assert!(matches!(client_for("off", "x"), Ok(ApiMode::Off(_))));
        let e = client_for("ftp://x", "x").err().unwrap();
        assert!(e.starts_with("--kube-api \"ftp://x\""), "{e}");
        let e = client_for("not a url", "x").err().unwrap();
        assert!(e.contains("not auto, off or a URL"), "{e}");
    }
}
