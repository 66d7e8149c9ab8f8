//! The rules controller (Pilot's job, the ConfigMap way): Istio objects applied with `kubectl`
//! (or Argo CD, Flux, …) are compiled into each meshed namespace's `remora-mesh-rules`
//! ConfigMap, which its sidecars already read (mounted, and through the API when allowed), and
//! into the ConfigMap of each namespace labelled `remora.dev/gateway=enabled` (where a
//! `remora-proxy gateway` runs) with what a gateway sees ([`plan::view`]).
//!
//! - One replica leads ([`lease`]); the others wait and take over when its Lease expires.
//! - The leader watches every kind proxies apply ([`KINDS`], each at the best version its CRD
//!   serves: `v1`, else `v1beta1`, else `v1alpha3`) in all namespaces, and the namespaces (their
//!   labels say which are meshed or run a gateway). Each object is checked once when it changes
//!   (`remora_model::compile::check`); an invalid one is left out with an Event on it and a log
//!   line, so it never makes proxies keep stale rules.
//! - Changes are batched: the first change starts a short window (`debounce`), then every
//!   such namespace is rendered (`remora_model::compile::select_view`, Istio's visibility rules)
//!   and its ConfigMap written only when its data differs ([`plan`]). A ConfigMap without the
//!   controller's label is the user's and is left alone (logged and an Event, once); one over
//!   1 MiB, or a set its proxies would reject, is not written (logged, Event on the namespace,
//!   metric).
//! - Nothing is written before every kind's first list is in, so a restart never writes a
//!   ConfigMap from half the objects. The ConfigMaps are re-listed every `resync` (an edit by
//!   hand is put back).
//! - A watch that the API server expires (410) is re-listed by kube's watcher.

pub mod lease;
pub mod plan;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, ObjectReference};
use kube::api::{ApiResource, DynamicObject, ListParams, ObjectMeta, PostParams};
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder, Reporter};
use kube::runtime::watcher;
use kube::{Api, Client};
use prometheus::{
    register_histogram, register_int_counter_vec, register_int_gauge, Histogram, IntCounterVec,
    IntGauge,
};
use serde_json::Value;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use remora_model::compile::{self, ObjectRef, RenderError, Settings, CONFIGMAP, MANAGED_BY};

use plan::{Action, Existing, World};

/// A kind the controller watches.
#[derive(Clone, Copy, Debug)]
pub struct Kind {
    pub group: &'static str,
    pub kind: &'static str,
    pub plural: &'static str,
    /// Versions tried, best first.
    pub versions: &'static [&'static str],
}

impl Kind {
    /// The best of this kind's versions among those its API group serves (`served`: the
    /// group's `APIGroup.versions[].version`); `None` when it serves none of them.
    pub fn best_version<'a>(
        &self,
        served: impl IntoIterator<Item = &'a str> + Clone,
    ) -> Option<&'static str> {
        self.versions
            .iter()
            .copied()
            .find(|v| served.clone().into_iter().any(|s| s == *v))
    }
}

const NETWORKING: &[&str] = &["v1", "v1beta1", "v1alpha3"];
const SECURITY: &[&str] = &["v1", "v1beta1"];

/// Every kind sidecars apply (Gateway too: gateway proxies read the same ConfigMap).
pub const KINDS: &[Kind] = &[
    Kind {
        group: "networking.istio.io",
        kind: "VirtualService",
        plural: "virtualservices",
        versions: NETWORKING,
    },
    Kind {
        group: "networking.istio.io",
        kind: "DestinationRule",
        plural: "destinationrules",
        versions: NETWORKING,
    },
    Kind {
        group: "networking.istio.io",
        kind: "ServiceEntry",
        plural: "serviceentries",
        versions: NETWORKING,
    },
    Kind {
        group: "networking.istio.io",
        kind: "WorkloadEntry",
        plural: "workloadentries",
        versions: NETWORKING,
    },
    Kind {
        group: "networking.istio.io",
        kind: "Sidecar",
        plural: "sidecars",
        versions: NETWORKING,
    },
    Kind {
        group: "networking.istio.io",
        kind: "Gateway",
        plural: "gateways",
        versions: NETWORKING,
    },
    Kind {
        group: "security.istio.io",
        kind: "PeerAuthentication",
        plural: "peerauthentications",
        versions: SECURITY,
    },
    Kind {
        group: "security.istio.io",
        kind: "AuthorizationPolicy",
        plural: "authorizationpolicies",
        versions: SECURITY,
    },
    Kind {
        group: "security.istio.io",
        kind: "RequestAuthentication",
        plural: "requestauthentications",
        versions: SECURITY,
    },
    Kind {
        group: "telemetry.istio.io",
        kind: "Telemetry",
        plural: "telemetries",
        versions: &["v1", "v1alpha1"],
    },
    Kind {
        group: "remora.dev",
        kind: "RateLimit",
        plural: "ratelimits",
        versions: &["v1alpha1"],
    },
];

/// Settings of the controller.
#[derive(Clone, Debug)]
pub struct Options {
    /// Namespace of the Lease (the control plane's).
    pub namespace: String,
    pub lease: String,
    /// This replica's name in the Lease (the pod name).
    pub identity: String,
    pub lease_duration: Duration,
    pub renew_every: Duration,
    /// Between election rounds while another replica leads.
    pub retry_every: Duration,
    /// Changes arriving within this window are applied together.
    pub debounce: Duration,
    /// Re-list the rules ConfigMaps this often.
    pub resync: Duration,
    /// Between checks for an API group whose CRDs are not installed.
    pub missing_group_retry: Duration,
    /// Write a `remora.dev/Compiled` condition into each object's status (opt-in, as Istio's
    /// `PILOT_ENABLE_STATUS`).
    pub status: bool,
    pub settings: Settings,
}

impl Options {
    pub fn new(namespace: &str, identity: &str) -> Options {
        Options {
            namespace: namespace.to_string(),
            lease: "remora-rules-controller".to_string(),
            identity: identity.to_string(),
            lease_duration: Duration::from_secs(15),
            renew_every: Duration::from_secs(5),
            retry_every: Duration::from_secs(2),
            debounce: Duration::from_millis(100),
            resync: Duration::from_secs(60),
            missing_group_retry: Duration::from_secs(30),
            status: false,
            settings: Settings::default(),
        }
    }

    /// One line naming the bad setting.
    pub fn validate(&self) -> Result<(), String> {
        if self.renew_every.is_zero() || self.renew_every * 2 > self.lease_duration {
            return Err(format!(
                "lease renewal every {:?} must be more than zero and at most half the lease duration {:?}",
                self.renew_every, self.lease_duration
            ));
        }
        if self.debounce > Duration::from_secs(1) {
            return Err(format!(
                "debounce {:?}: at most 1s (changes must reach proxies within a second)",
                self.debounce
            ));
        }
        Ok(())
    }
}

struct Metrics {
    leader: Option<IntGauge>,
    writes: Option<IntCounterVec>,
    refused: Option<IntCounterVec>,
    invalid: Option<IntGauge>,
    sync: Option<Histogram>,
}

static METRICS: LazyLock<Metrics> = LazyLock::new(|| Metrics {
    leader: register_int_gauge!(
        "remora_rules_controller_leader",
        "1 while this replica leads the rules controller (holds its Lease)."
    )
    .ok(),
    writes: register_int_counter_vec!(
        "remora_rules_controller_writes_total",
        "Rules ConfigMap writes, by result (created, updated, conflict, error).",
        &["result"]
    )
    .ok(),
    refused: register_int_counter_vec!(
        "remora_rules_controller_refused_total",
        "Namespace renders not written, by reason (too_large, rejected, user_owned).",
        &["reason"]
    )
    .ok(),
    invalid: register_int_gauge!(
        "remora_rules_controller_invalid_objects",
        "Istio objects left out of every ConfigMap because they are invalid."
    )
    .ok(),
    sync: register_histogram!(
        "remora_rules_controller_sync_seconds",
        "Time from the first change of a batch to its last ConfigMap write.",
        vec![0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]
    )
    .ok(),
});

/// The running controller; stopped on [`Running::shutdown`].
pub struct Running {
    task: JoinHandle<()>,
    stop: tokio::sync::watch::Sender<bool>,
}

impl Running {
    /// Stop, giving the Lease up when held.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(5), self.task).await;
    }
}

/// Start the controller (election, then the leader's work) in the background.
pub fn start(client: Client, opts: Options) -> Running {
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(run(client, opts, stopped));
    Running { task, stop }
}

async fn run(client: Client, opts: Options, mut stopped: tokio::sync::watch::Receiver<bool>) {
    let elector = lease::Elector::new(
        client.clone(),
        &opts.namespace,
        &opts.lease,
        &opts.identity,
        opts.lease_duration,
    );
    tracing::info!(lease = %format!("{}/{}", opts.namespace, opts.lease), identity = %opts.identity,
        "rules controller: starting; compiling Istio objects into remora-mesh-rules ConfigMaps while holding the lease");
    let mut last_follow = None;
    loop {
        match elector.round().await {
            Ok(lease::Round::Leading) => {
                tracing::info!(identity = %opts.identity, "rules controller: leading (lease acquired)");
                last_follow = None;
                if let Some(m) = &METRICS.leader {
                    m.set(1);
                }
                let stop = lead(&client, &opts, &elector, &mut stopped).await;
                if let Some(m) = &METRICS.leader {
                    m.set(0);
                }
                if stop {
                    elector.release().await;
                    tracing::info!("rules controller: stopped, lease released");
                    return;
                }
            }
            Ok(lease::Round::Following(holder)) => {
                if last_follow.as_ref() != Some(&holder) {
                    tracing::info!(leader = %holder, "rules controller: standing by, another replica holds the lease");
                    last_follow = Some(holder);
                }
            }
            Err(e) => tracing::warn!(error = %e, "rules controller: lease round failed; retrying"),
        }
        tokio::select! {
            _ = tokio::time::sleep(opts.retry_every) => {}
            _ = stopped.changed() => return,
        }
    }
}

/// What the watchers report (the discovery service's Sidecar watch reads them too).
pub(crate) enum Change {
    /// A kind's (or the namespaces', `kind` "Namespace") full list: replaces what was known.
    Replace(&'static str, Vec<Value>),
    Upsert(&'static str, Value),
    Delete(&'static str, Value),
}

/// Lead until the Lease is lost (false) or the process stops (true).
async fn lead(
    client: &Client,
    opts: &Options,
    elector: &lease::Elector,
    stopped: &mut tokio::sync::watch::Receiver<bool>,
) -> bool {
    let (tx, mut rx) = mpsc::channel::<Change>(1024);
    let mut watchers = tokio::task::JoinSet::new();
    for k in KINDS {
        watchers.spawn(watch_kind(
            client.clone(),
            *k,
            tx.clone(),
            opts.missing_group_retry,
        ));
    }
    watchers.spawn(watch_namespaces(client.clone(), tx.clone()));
    drop(tx);
    let mut ctl = Controller::new(client.clone(), opts);
    let mut synced: BTreeSet<&'static str> = BTreeSet::new();
    let all = KINDS.len() + 1;
    let mut renew = tokio::time::interval(opts.renew_every);
    renew.tick().await;
    let mut resync = tokio::time::interval(opts.resync);
    // When the current batch began (its first change), and when failed writes are retried.
    let mut batch_start: Option<Instant> = None;
    let mut retry_at: Option<Instant> = None;
    let stopping = loop {
        let deadline = batch_start
            .map(|s| s + opts.debounce)
            .into_iter()
            .chain(retry_at)
            .min()
            .map(tokio::time::Instant::from_std);
        tokio::select! {
            ch = rx.recv() => {
                let Some(ch) = ch else { break false };
                if let Change::Replace(k, _) = &ch {
                    synced.insert(k);
                }
                ctl.apply(ch);
                batch_start.get_or_insert_with(Instant::now);
            }
            _ = async { if let Some(d) = deadline { tokio::time::sleep_until(d).await } }, if deadline.is_some() && synced.len() == all => {
                let started = batch_start.take();
                retry_at = None;
                if ctl.reconcile().await {
                    // A write failed or raced: try those namespaces again in a second.
                    retry_at = Some(Instant::now() + Duration::from_secs(1));
                }
                if let (Some(s), Some(h)) = (started, &METRICS.sync) {
                    h.observe(s.elapsed().as_secs_f64());
                }
            }
            _ = resync.tick() => {
                if ctl.relist_configmaps().await {
                    batch_start.get_or_insert_with(Instant::now);
                }
            }
            _ = renew.tick() => {
                match elector.round().await {
                    Ok(lease::Round::Leading) => {
                        ctl.lease_valid_until = Instant::now() + opts.lease_duration / 2;
                    }
                    Ok(lease::Round::Following(h)) => {
                        tracing::warn!(leader = %h, "rules controller: lost the lease; stopping writes");
                        break false;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "rules controller: cannot renew the lease; stopping writes until it is held again");
                        break false;
                    }
                }
            }
            _ = stopped.changed() => break true,
        }
    };
    watchers.abort_all();
    stopping
}

/// The API resource of `k` at `version`.
fn resource(k: &Kind, version: &str) -> ApiResource {
    ApiResource {
        group: k.group.to_string(),
        version: version.to_string(),
        api_version: format!("{}/{version}", k.group),
        kind: k.kind.to_string(),
        plural: k.plural.to_string(),
    }
}

/// The best version of `k` the API serves, `None` when its group is not installed.
async fn served_version(client: &Client, k: &Kind) -> Result<Option<&'static str>, kube::Error> {
    let req = http::Request::get(format!("/apis/{}", k.group))
        .body(Vec::new())
        .map_err(kube::Error::HttpError)?;
    match client
        .request::<k8s_openapi::apimachinery::pkg::apis::meta::v1::APIGroup>(req)
        .await
    {
        Ok(g) => Ok(k.best_version(g.versions.iter().map(|gv| gv.version.as_str()))),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(None),
        Err(e) => Err(e),
    }
}

/// Watch one kind in all namespaces; report lists and changes to `tx`.
pub(crate) async fn watch_kind(client: Client, k: Kind, tx: mpsc::Sender<Change>, retry: Duration) {
    let version = loop {
        match served_version(&client, &k).await {
            // The group is served; its CRD for this kind may still be missing (a CRD file from
            // before the kind was watched): then it is none, as a missing group is.
            Ok(Some(v)) => {
                let api: Api<DynamicObject> = Api::all_with(client.clone(), &resource(&k, v));
                match api.list(&ListParams::default().limit(1)).await {
                    Err(kube::Error::Api(s)) if s.code == 404 => tracing::warn!(
                        kind = k.kind, group = k.group,
                        "rules controller: {} {v} is served but not {}: its CRD is not installed; treated as none, checked again every {:?}",
                        k.group, k.plural, retry
                    ),
                    _ => break v,
                }
            }
            Ok(None) => {
                tracing::warn!(kind = k.kind, group = k.group,
                    "rules controller: the API serves no {} ({} {:?}): its CRD is not installed; treated as none, checked again every {:?}",
                    k.kind, k.group, k.versions, retry);
            }
            Err(e) => {
                tracing::warn!(kind = k.kind, error = %e, "rules controller: cannot read API group {}; retrying", k.group)
            }
        }
        // None known meanwhile: the other kinds are not held back.
        if tx.send(Change::Replace(k.kind, Vec::new())).await.is_err() {
            return;
        }
        tokio::time::sleep(retry).await;
    };
    let ar = resource(&k, version);
    let api: Api<DynamicObject> = Api::all_with(client, &ar);
    let typed = |mut o: DynamicObject| -> Value {
        // Not read, and often the larger part of an object: its managed fields and kubectl's
        // copy of it (the check leaves them out anyway).
        o.metadata.managed_fields = None;
        if let Some(a) = o.metadata.annotations.as_mut() {
            for k in compile::DROPPED_ANNOTATIONS {
                a.remove(*k);
            }
        }
        let mut v = serde_json::to_value(&o).unwrap_or(Value::Null);
        if let Some(m) = v.as_object_mut() {
            m.insert("apiVersion".into(), Value::String(ar.api_version.clone()));
            m.insert("kind".into(), Value::String(ar.kind.clone()));
        }
        v
    };
    forward(watcher(api, watcher::Config::default()), k.kind, tx, typed).await;
}

async fn watch_namespaces(client: Client, tx: mpsc::Sender<Change>) {
    let api: Api<Namespace> = Api::all(client);
    // Only what the controller reads of a namespace: its name and labels.
    let value = |n: Namespace| serde_json::json!({"metadata": {"name": n.metadata.name, "labels": n.metadata.labels}});
    forward(
        watcher(api, watcher::Config::default()),
        "Namespace",
        tx,
        value,
    )
    .await;
}

/// Turn a kube watcher stream into [`Change`]s (its errors are logged once per message; kube's
/// watcher re-lists after an expired watch).
async fn forward<K, S>(
    stream: S,
    kind: &'static str,
    tx: mpsc::Sender<Change>,
    to_value: impl Fn(K) -> Value,
) where
    S: futures::Stream<Item = Result<watcher::Event<K>, watcher::Error>>,
{
    use kube::runtime::WatchStreamExt;
    let stream = stream.default_backoff();
    futures::pin_mut!(stream);
    let mut init: Vec<Value> = Vec::new();
    let mut last_error = None;
    while let Some(ev) = stream.next().await {
        let change = match ev {
            Ok(watcher::Event::Init) => {
                init.clear();
                continue;
            }
            Ok(watcher::Event::InitApply(o)) => {
                init.push(to_value(o));
                continue;
            }
            Ok(watcher::Event::InitDone) => {
                last_error = None;
                Change::Replace(kind, std::mem::take(&mut init))
            }
            Ok(watcher::Event::Apply(o)) => Change::Upsert(kind, to_value(o)),
            Ok(watcher::Event::Delete(o)) => Change::Delete(kind, to_value(o)),
            Err(e) => {
                let msg = e.to_string();
                if last_error.as_ref() != Some(&msg) {
                    tracing::warn!(kind, error = %msg, "rules controller: watch failed; retrying with backoff");
                    last_error = Some(msg);
                }
                continue;
            }
        };
        if tx.send(change).await.is_err() {
            return;
        }
    }
}

fn labels_of(v: &Value) -> BTreeMap<String, String> {
    v.pointer("/metadata/labels")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| v.as_str().map(|s| (k.clone(), s.to_string())))
                .collect()
        })
        .unwrap_or_default()
}

fn name_of(v: &Value) -> Option<String> {
    v.pointer("/metadata/name")
        .and_then(Value::as_str)
        .map(str::to_string)
}

fn key_of(kind: &str, v: &Value) -> Option<ObjectRef> {
    Some(ObjectRef {
        kind: kind.to_string(),
        namespace: v.pointer("/metadata/namespace")?.as_str()?.to_string(),
        name: name_of(v)?,
    })
}

/// The leader's state and its writes.
struct Controller {
    client: Client,
    settings: Settings,
    world: World,
    /// The ConfigMaps were listed at least once.
    listed: bool,
    /// Namespaces whose ConfigMap may have to change (`None`: all of them).
    dirty: Option<BTreeSet<String>>,
    /// Objects' identity (for Events and status writes).
    refs: BTreeMap<ObjectRef, Ref>,
    /// Write status conditions.
    status: bool,
    /// Until when the Lease surely is ours (renewed at the last election round, minus a margin):
    /// past it, nothing is written (another replica may lead by then).
    lease_valid_until: Instant,
    /// What was already reported (Events and log lines), so each is said once: key → reason.
    reported: BTreeMap<String, String>,
    recorder: Recorder,
}

impl Controller {
    fn new(client: Client, opts: &Options) -> Controller {
        let reporter = Reporter {
            controller: "remora-rules-controller".into(),
            instance: Some(opts.identity.clone()),
        };
        Controller {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            settings: opts.settings.clone(),
            world: World::default(),
            listed: false,
            dirty: None,
            refs: BTreeMap::new(),
            status: opts.status,
            lease_valid_until: Instant::now() + opts.lease_duration / 2,
            reported: BTreeMap::new(),
        }
    }

    /// Mark every namespace for the next reconcile.
    fn dirty_all(&mut self) {
        self.dirty = None;
    }

    /// Mark one namespace for the next reconcile.
    fn dirty_ns(&mut self, ns: &str) {
        if let Some(d) = &mut self.dirty {
            d.insert(ns.to_string());
        }
    }

    /// Mark what a change of the object `key` (before and after) can affect.
    fn dirty_object(
        &mut self,
        key: &ObjectRef,
        after: Option<&Result<Arc<compile::Checked>, compile::Invalid>>,
    ) {
        let local = |r: Option<&Result<Arc<compile::Checked>, compile::Invalid>>| match r {
            None | Some(Err(_)) => true,
            Some(Ok(c)) => c.only_in_own_namespace(&self.settings),
        };
        let before = self.world.objects.get(key);
        let unchanged = match (before, after) {
            (Some(Ok(a)), Some(Ok(b))) => a.document == b.document,
            (Some(Err(a)), Some(Err(b))) => a == b,
            _ => false,
        };
        if unchanged {
            // A status or metadata write: no ConfigMap changes.
            return;
        }
        if local(before) && local(after) {
            self.dirty_ns(&key.namespace);
        } else {
            self.dirty_all();
        }
    }

    fn apply(&mut self, ch: Change) {
        let domain = self.settings.cluster_domain.clone();
        match ch {
            Change::Replace("Namespace", list) => {
                self.dirty_all();
                self.world.namespaces = list
                    .iter()
                    .filter_map(|n| Some((name_of(n)?, labels_of(n))))
                    .collect();
            }
            Change::Upsert("Namespace", n) => {
                if let Some(name) = name_of(&n) {
                    self.dirty_ns(&name);
                    self.world.namespaces.insert(name, labels_of(&n));
                }
            }
            Change::Delete("Namespace", n) => {
                if let Some(name) = name_of(&n) {
                    self.dirty_ns(&name);
                    self.world.namespaces.remove(&name);
                    self.world.configmaps.remove(&name);
                }
            }
            Change::Replace(kind, list) => {
                self.dirty_all();
                self.world.objects.retain(|k, _| k.kind != kind);
                self.refs.retain(|k, _| k.kind != kind);
                for v in list {
                    self.upsert(kind, &v, &domain);
                }
            }
            Change::Upsert(kind, v) => self.upsert(kind, &v, &domain),
            Change::Delete(kind, v) => {
                if let Some(k) = key_of(kind, &v) {
                    self.dirty_object(&k, None);
                    self.world.objects.remove(&k);
                    self.refs.remove(&k);
                }
            }
        }
    }

    fn upsert(&mut self, kind: &str, v: &Value, domain: &str) {
        let Some(key) = key_of(kind, v) else { return };
        let meta = |p: &str| v.pointer(p).and_then(Value::as_str).map(str::to_string);
        self.refs.insert(
            key.clone(),
            Ref {
                api_version: meta("/apiVersion").unwrap_or_default(),
                uid: meta("/metadata/uid"),
                resource_version: meta("/metadata/resourceVersion"),
                generation: v.pointer("/metadata/generation").and_then(Value::as_i64),
                conditions: v
                    .pointer("/status/conditions")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default(),
            },
        );
        let checked = compile::check(v, domain).map(Arc::new);
        self.dirty_object(&key, Some(&checked));
        self.world.objects.insert(key, checked);
    }

    /// Re-list the rules ConfigMaps; true when what is known changed.
    async fn relist_configmaps(&mut self) -> bool {
        let api: Api<ConfigMap> = Api::all(self.client.clone());
        let lp = ListParams::default().fields(&format!("metadata.name={CONFIGMAP}"));
        match api.list(&lp).await {
            Ok(list) => {
                let fresh: BTreeMap<String, Existing> = list
                    .items
                    .iter()
                    .filter_map(|cm| Some((cm.metadata.namespace.clone()?, existing(cm))))
                    .collect();
                let changed: Vec<String> = fresh
                    .keys()
                    .chain(self.world.configmaps.keys())
                    .filter(|ns| fresh.get(*ns) != self.world.configmaps.get(*ns))
                    .cloned()
                    .collect();
                for ns in &changed {
                    self.dirty_ns(ns);
                }
                let changed = !changed.is_empty();
                self.world.configmaps = fresh;
                self.listed = true;
                changed
            }
            Err(e) => {
                tracing::warn!(error = %e, "rules controller: cannot list the {CONFIGMAP} ConfigMaps; retrying at the next resync");
                false
            }
        }
    }

    /// Say `what` once for `key` (a log line, and an Event on `about` when given).
    async fn report(
        &mut self,
        key: String,
        what: String,
        about: Option<ObjectReference>,
        reason: &str,
    ) {
        if self.reported.get(&key) == Some(&what) {
            return;
        }
        tracing::warn!(object = %key, "rules controller: {what}");
        if let Some(r) = about {
            let ev = KubeEvent {
                type_: EventType::Warning,
                reason: reason.into(),
                note: Some(what.chars().take(1000).collect()),
                action: "Compile".into(),
                secondary: None,
            };
            if let Err(e) = self.recorder.publish(&ev, &r).await {
                tracing::debug!(error = %e, "rules controller: cannot record an Event");
            }
        }
        self.reported.insert(key, what);
    }

    fn object_ref(&self, id: &ObjectRef) -> ObjectReference {
        let r = self.refs.get(id).cloned().unwrap_or_default();
        let (api_version, uid, rv) = (r.api_version, r.uid, r.resource_version);
        ObjectReference {
            api_version: Some(api_version),
            kind: Some(id.kind.clone()),
            name: Some(id.name.clone()),
            namespace: Some(id.namespace.clone()),
            uid,
            resource_version: rv,
            ..ObjectReference::default()
        }
    }

    /// Render the meshed namespaces that may have changed and write what did; true when some
    /// namespaces are left to retry.
    async fn reconcile(&mut self) -> bool {
        if !self.listed {
            self.relist_configmaps().await;
            if !self.listed {
                // Without knowing what exists, a write could overwrite a user's ConfigMap.
                return true;
            }
        }
        // Invalid objects: said once per reason.
        let invalid: Vec<(ObjectRef, String)> = plan::invalid(&self.world)
            .into_iter()
            .filter_map(|e| Some((e.id.clone()?, e.reason.clone())))
            .collect();
        if let Some(g) = &METRICS.invalid {
            g.set(i64::try_from(invalid.len()).unwrap_or(i64::MAX));
        }
        let current: BTreeSet<String> = invalid.iter().map(|(id, _)| id.to_string()).collect();
        for (id, reason) in invalid {
            let r = self.object_ref(&id);
            self.report(
                id.to_string(),
                format!("{id} is left out of every {CONFIGMAP} ConfigMap: {reason}"),
                Some(r),
                "InvalidRule",
            )
            .await;
        }
        // Forget fixed objects, so a later error is said again.
        self.reported
            .retain(|k, _| k.starts_with("namespace ") || current.contains(k));
        let dirty = self.dirty.replace(BTreeSet::new());
        // One namespace at a time: planned, then written, so the first write does not wait
        // for every namespace's render.
        let idx = plan::index(&self.world, &self.settings);
        for ns in plan::namespaces(&self.world, dirty.as_ref()) {
            let step = plan::step(&self.world, &idx, &self.settings, &ns);
            let ns = step.namespace.clone();
            match step.action {
                Action::Keep => {}
                Action::UserOwned => {
                    if let Some(c) = &METRICS.refused {
                        c.with_label_values(&["user_owned"]).inc();
                    }
                    let about = ObjectReference {
                        api_version: Some("v1".into()),
                        kind: Some("ConfigMap".into()),
                        name: Some(CONFIGMAP.into()),
                        namespace: Some(ns.clone()),
                        ..ObjectReference::default()
                    };
                    self.report(
                        format!("namespace {ns}"),
                        format!("ConfigMap {ns}/{CONFIGMAP} has no {}={} label: it is the user's and is not overwritten; Istio objects applied in the cluster do not reach {ns} until it is deleted or labelled", MANAGED_BY.0, MANAGED_BY.1),
                        Some(about),
                        "UserOwnedConfigMap",
                    )
                    .await;
                }
                Action::Refused(e) => {
                    let reason = match &e {
                        RenderError::TooLarge(_) => "too_large",
                        RenderError::Rejected { .. } => "rejected",
                    };
                    if let Some(c) = &METRICS.refused {
                        c.with_label_values(&[reason]).inc();
                    }
                    let about = ObjectReference {
                        api_version: Some("v1".into()),
                        kind: Some("Namespace".into()),
                        name: Some(ns.clone()),
                        ..ObjectReference::default()
                    };
                    self.report(
                        format!("namespace {ns}"),
                        e.to_string(),
                        Some(about),
                        "RulesNotWritten",
                    )
                    .await;
                }
                Action::Create(data) => self.write(&ns, data, None, step.objects).await,
                Action::Update {
                    data,
                    resource_version,
                } => {
                    self.write(&ns, data, Some(resource_version), step.objects)
                        .await
                }
            }
        }
        let statuses_left = self.status && self.write_statuses().await;
        statuses_left || self.dirty.as_ref().is_some_and(|d| !d.is_empty())
    }

    async fn write(
        &mut self,
        ns: &str,
        data: BTreeMap<String, String>,
        update: Option<Option<String>>,
        objects: usize,
    ) {
        if Instant::now() > self.lease_valid_until {
            // A long batch outlived the last renewal: renew first, then write.
            self.dirty_ns(ns);
            return;
        }
        let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), ns);
        let labels: BTreeMap<String, String> = [
            (MANAGED_BY.0, MANAGED_BY.1),
            ("app.kubernetes.io/part-of", "remora"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let cm = ConfigMap {
            metadata: ObjectMeta {
                name: Some(CONFIGMAP.to_string()),
                namespace: Some(ns.to_string()),
                labels: Some(labels),
                resource_version: update.clone().flatten(),
                ..ObjectMeta::default()
            },
            data: Some(data),
            ..ConfigMap::default()
        };
        let pp = PostParams::default();
        let (res, verb) = match update {
            None => (api.create(&pp, &cm).await, "created"),
            Some(_) => (api.replace(CONFIGMAP, &pp, &cm).await, "updated"),
        };
        let count = |r: &str| {
            if let Some(c) = &METRICS.writes {
                c.with_label_values(&[r]).inc();
            }
        };
        match res {
            Ok(written) => {
                count(verb);
                tracing::info!(namespace = %ns, objects, "rules controller: {verb} ConfigMap {ns}/{CONFIGMAP} ({objects} objects)");
                self.world
                    .configmaps
                    .insert(ns.to_string(), existing(&written));
                self.reported.remove(&format!("namespace {ns}"));
            }
            Err(kube::Error::Api(s)) if s.code == 409 => {
                // Someone wrote it meanwhile: read it back; the next batch decides again.
                count("conflict");
                tracing::info!(namespace = %ns, "rules controller: ConfigMap {ns}/{CONFIGMAP} changed meanwhile ({}); re-reading it", s.message);
                match api.get_opt(CONFIGMAP).await {
                    Ok(Some(cm)) => {
                        self.world.configmaps.insert(ns.to_string(), existing(&cm));
                    }
                    Ok(None) => {
                        self.world.configmaps.remove(ns);
                    }
                    Err(e) => {
                        tracing::warn!(namespace = %ns, error = %e, "rules controller: cannot read ConfigMap {ns}/{CONFIGMAP}")
                    }
                }
                self.dirty_ns(ns);
            }
            Err(e) => {
                count("error");
                tracing::warn!(namespace = %ns, error = %e, "rules controller: cannot write ConfigMap {ns}/{CONFIGMAP}; retrying at the next change or resync");
                // Forget it, so the next resync re-reads what is there; retried meanwhile.
                self.world.configmaps.remove(ns);
                self.dirty_ns(ns);
            }
        }
    }
}

/// What the controller keeps of an object besides its check.
#[derive(Clone, Debug, Default)]
struct Ref {
    api_version: String,
    uid: Option<String>,
    resource_version: Option<String>,
    generation: Option<i64>,
    /// Its `status.conditions` as last seen.
    conditions: Vec<Value>,
}

/// Most status writes in one reconcile (the rest follow a second later).
const MAX_STATUS_WRITES: usize = 50;

impl Controller {
    /// Write our condition into the objects whose status does not carry it as it should;
    /// true when some are left for later.
    async fn write_statuses(&mut self) -> bool {
        if Instant::now() > self.lease_valid_until {
            return true;
        }
        let mut todo = Vec::new();
        for (key, result) in &self.world.objects {
            let Some(r) = self.refs.get(key) else {
                continue;
            };
            let mut ours = plan::condition(result, r.generation);
            if let Some(list) = plan::conditions_to_write(&r.conditions, &ours) {
                let now = k8s_openapi::jiff::Timestamp::now()
                    .round(k8s_openapi::jiff::Unit::Second)
                    .unwrap_or_else(|_| k8s_openapi::jiff::Timestamp::now());
                ours["lastTransitionTime"] = Value::String(now.to_string());
                let list: Vec<Value> = list
                    .into_iter()
                    .map(|c| {
                        if plan::same_condition(&c, &ours) {
                            ours.clone()
                        } else {
                            c
                        }
                    })
                    .collect();
                todo.push((key.clone(), r.clone(), list));
            }
        }
        let more = todo.len() > MAX_STATUS_WRITES;
        for (key, r, list) in todo.into_iter().take(MAX_STATUS_WRITES) {
            let Some(k) = KINDS.iter().find(|k| k.kind == key.kind) else {
                continue;
            };
            let version = r.api_version.rsplit('/').next().unwrap_or("v1").to_string();
            let ar = resource(k, &version);
            let api: Api<DynamicObject> =
                Api::namespaced_with(self.client.clone(), &key.namespace, &ar);
            let patch = serde_json::json!({
                "metadata": {"resourceVersion": r.resource_version},
                "status": {"conditions": list},
            });
            match api
                .patch_status(
                    &key.name,
                    &kube::api::PatchParams::default(),
                    &kube::api::Patch::Merge(&patch),
                )
                .await
            {
                Ok(o) => {
                    if let Some(r) = self.refs.get_mut(&key) {
                        r.resource_version = o.metadata.resource_version.clone();
                        r.conditions = list;
                    }
                }
                // Changed meanwhile: its watch event brings the new version; tried again then.
                Err(kube::Error::Api(s)) if s.code == 409 || s.code == 404 => {}
                Err(e) => {
                    tracing::warn!(object = %key, error = %e, "rules controller: cannot write the status of {key}");
                    return true;
                }
            }
        }
        more
    }
}

fn existing(cm: &ConfigMap) -> Existing {
    Existing {
        managed: compile::is_managed(cm.metadata.labels.as_ref()),
        digest: plan::digest(cm.data.as_ref().unwrap_or(&BTreeMap::new())),
        resource_version: cm.metadata.resource_version.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn best_version_prefers_the_kinds_order_among_the_served() {
        let vs = KINDS[0];
        assert_eq!(vs.best_version(["v1beta1", "v1"]), Some("v1"));
        assert_eq!(vs.best_version(["v1alpha3", "v1beta1"]), Some("v1beta1"));
        assert_eq!(vs.best_version(["v2"]), None);
    }

    /// `manifests/istio-crds.yaml` defines exactly the kinds the controller watches, each with
    /// the versions it tries, one storage version, and the same plural.
    #[test]
    fn the_shipped_crds_are_the_watched_kinds() {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests/istio-crds.yaml");
        let text = std::fs::read_to_string(&path).expect("manifests/istio-crds.yaml");
        let mut found = Vec::new();
        for doc in serde_yaml_ng::Deserializer::from_str(&text) {
            let v: Value = serde::Deserialize::deserialize(doc).expect("YAML");
            if v.is_null() {
                continue;
            }
            assert_eq!(v["kind"], "CustomResourceDefinition");
            let spec = &v["spec"];
            let versions: Vec<&str> = spec["versions"]
                .as_array()
                .expect("versions")
                .iter()
                .filter_map(|v| v["name"].as_str())
                .collect();
            let storage = spec["versions"]
                .as_array()
                .expect("versions")
                .iter()
                .filter(|v| v["storage"] == true)
                .count();
            assert_eq!(storage, 1, "{}", v["metadata"]["name"]);
            assert_eq!(
                v["metadata"]["name"].as_str(),
                Some(
                    format!(
                        "{}.{}",
                        spec["names"]["plural"].as_str().unwrap_or(""),
                        spec["group"].as_str().unwrap_or("")
                    )
                    .as_str()
                )
            );
            found.push((
                spec["group"].as_str().unwrap_or("").to_string(),
                spec["names"]["kind"].as_str().unwrap_or("").to_string(),
                spec["names"]["plural"].as_str().unwrap_or("").to_string(),
                versions.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
            ));
        }
        let want: Vec<(String, String, String, Vec<String>)> = KINDS
            .iter()
            .map(|k| {
                (
                    k.group.to_string(),
                    k.kind.to_string(),
                    k.plural.to_string(),
                    k.versions.iter().map(|s| s.to_string()).collect(),
                )
            })
            .collect();
        assert_eq!(found, want);
    }
}
