//! Hot reload: watch the rules directory (the kubelet swaps a `..data` symlink) and rescan it
//! periodically; apply a changed, valid rule set atomically; keep the last good one otherwise.
//! Reloads are counted in the metrics handle the caller passes (`Metrics::rules`).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::{load, LoadContext, LoadError, SharedSnapshot};
use crate::telemetry::Metrics;

/// What one reload attempt did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The inputs hash is that of the snapshot in effect (or of the last rejected set).
    Unchanged,
    /// A new snapshot was stored with this generation.
    Applied(u64),
    /// The rule set was rejected; the old snapshot stays.
    Rejected(Vec<LoadError>),
}

/// Watcher state between attempts.
#[derive(Debug, Default)]
pub struct State {
    /// Hash of the last rejected input set: it is not counted or logged again until it changes.
    pub last_rejected: Option<String>,
}

/// What other parts of the proxy plug into the file watcher: another source of rules (the rules
/// ConfigMap read through the API) and Kubernetes discovery. The defaults do nothing.
pub trait Hooks: Send + Sync {
    /// Held for the whole reload: serialises every writer of the snapshot store.
    fn lock(&self) -> Option<std::sync::MutexGuard<'_, ()>> {
        None
    }
    /// `Err(reason)`: do not apply a file set with this content hash (another source holds
    /// newer content); the reason is logged by the implementation.
    fn admit_files(&self, _hash: &str) -> Result<(), String> {
        Ok(())
    }
    /// Adjust a snapshot before it is stored (for example add the discovered endpoints).
    fn prepare(&self, snap: super::Snapshot) -> super::Snapshot {
        snap
    }
    /// Called after a snapshot was stored.
    fn applied(&self, _snap: &super::Snapshot) {}
}

/// No hooks: the files are the only source.
#[derive(Debug, Default)]
pub struct NoHooks;
impl Hooks for NoHooks {}

/// One reload attempt (blocking: reads files, resolves DNS names), counted in `metrics`.
pub fn reload_once(
    dir: &Path,
    ctx: &LoadContext,
    store: &SharedSnapshot,
    state: &mut State,
    metrics: &Metrics,
) -> Outcome {
    reload_once_with(
        dir,
        ctx,
        store,
        state,
        metrics,
        &super::endpoints::system_resolver,
    )
}

/// `reload_once` with a given resolver for `resolution: DNS` names. When the files are
/// unchanged, the snapshot's DNS names are resolved again; changed answers are applied as a new
/// generation (an empty answer keeps the previous one, as Envoy keeps hosts on DNS failure).
pub fn reload_once_with(
    dir: &Path,
    ctx: &LoadContext,
    store: &SharedSnapshot,
    state: &mut State,
    metrics: &Metrics,
    resolve: &super::endpoints::Resolver<'_>,
) -> Outcome {
    reload_once_hooked(dir, ctx, store, state, metrics, resolve, &NoHooks)
}

/// `reload_once_with` with `hooks` consulted (see `Hooks`).
pub fn reload_once_hooked(
    dir: &Path,
    ctx: &LoadContext,
    store: &SharedSnapshot,
    state: &mut State,
    metrics: &Metrics,
    resolve: &super::endpoints::Resolver<'_>,
    hooks: &dyn Hooks,
) -> Outcome {
    let _serial = hooks.lock();
    let m = metrics.rules();
    let inputs = match load::read_inputs(dir) {
        Ok(i) => i,
        // Key repeated read failures (a missing directory) by their message, so each distinct
        // failure is logged and counted once.
        Err(e) => return reject(dir, format!("unreadable:{e}"), vec![e], state, metrics),
    };
    let current = store.load();
    // Answers to use for DNS names: fresh ones, or the previous ones when the fresh lookup
    // returned nothing.
    let mut changed_names = Vec::new();
    let mut fresh = std::collections::BTreeMap::new();
    if inputs.hash == current.hash {
        state.last_rejected = None;
        for (name, old) in &current.dns {
            let now = resolve(name);
            if !now.is_empty() && &now != old {
                changed_names.push(name.clone());
            }
            fresh.insert(name.clone(), if now.is_empty() { old.clone() } else { now });
        }
        if changed_names.is_empty() {
            return Outcome::Unchanged;
        }
    } else if state.last_rejected.as_deref() == Some(inputs.hash.as_str())
        || hooks.admit_files(&inputs.hash).is_err()
    {
        // Rejected before, or another source holds newer content.
        return Outcome::Unchanged;
    } else if !settled(dir, &inputs.hash) {
        // A file is being written in place (truncated, then filled): loading now could apply a
        // half-written or empty rule set. The next event or rescan reads it again.
        tracing::debug!(dir = %dir.display(), "rules files still changing; reading them again later");
        return Outcome::Unchanged;
    }
    let generation = current.generation + 1;
    let reuse = |name: &str| -> Vec<std::net::IpAddr> {
        match fresh.get(name) {
            Some(ips) => ips.clone(),
            None => resolve(name),
        }
    };
    if !changed_names.is_empty() {
        tracing::info!(generation, names = ?changed_names, "DNS answers of ServiceEntry hosts changed");
    }
    match super::load_inputs(&inputs, ctx, generation, &reuse) {
        Ok(snap) => {
            let snap = Arc::new(hooks.prepare(snap));
            log_applied(&snap, metrics);
            store.store(snap.clone());
            m.generation.set(generation as i64);
            m.reloads.inc();
            state.last_rejected = None;
            hooks.applied(&snap);
            Outcome::Applied(generation)
        }
        Err(errs) => reject(dir, inputs.hash, errs, state, metrics),
    }
}

/// Log a snapshot being put in effect: generation, hash, source, rule counts, then one line per
/// unknown field (warn) and per resource not applied (info). `main` calls it for the first
/// snapshot; the watcher for each later one. `metrics`: where the snapshot is noted
/// ([`note_applied`]).
pub fn log_applied(snap: &super::Snapshot, metrics: &Metrics) {
    let counts = snap.counts();
    let generation = snap.generation;
    tracing::info!(
        generation,
        hash = %snap.hash,
        source = %snap.source,
        virtual_services = counts.virtual_services,
        http_routes = counts.http_routes,
        destination_rules = counts.destination_rules,
        service_entries = counts.service_entries,
        sidecars = counts.sidecars,
        ignored = counts.ignored,
        "applied rules generation {generation}: {counts}"
    );
    for u in &snap.unknown_fields {
        tracing::warn!(file = %u.file, document = u.document, field = %u.field, "{u}");
    }
    let gateway = GATEWAY_MODE.load(std::sync::atomic::Ordering::Relaxed);
    for ig in &snap.ignored {
        // A gateway applies what sidecars leave out for it (it logs its own plan).
        if gateway && (ig.kind == "Gateway" || ig.reason.starts_with("bound to gateways only")) {
            continue;
        }
        tracing::info!(file = %ig.file, document = ig.document, kind = %ig.kind, name = %ig.name, "not applied: {}", ig.reason);
    }
    // Without a workload identity, the ISTIO_MUTUAL warnings at apply time (once per set).
    note_applied(snap, metrics);
}

/// How long changed files must stay the same before they are loaded. The kubelet swaps a
/// ConfigMap volume atomically (a `..data` symlink), so this only matters for files written in
/// place by other tools.
const SETTLE: Duration = Duration::from_millis(100);

/// Do the files still hash to `hash` after [`SETTLE`]? (Called on a blocking thread.)
fn settled(dir: &Path, hash: &str) -> bool {
    std::thread::sleep(SETTLE);
    load::read_inputs(dir).is_ok_and(|again| again.hash == hash)
}

fn reject(
    dir: &Path,
    hash: String,
    errs: Vec<LoadError>,
    state: &mut State,
    metrics: &Metrics,
) -> Outcome {
    if state.last_rejected.as_deref() == Some(hash.as_str()) {
        return Outcome::Unchanged;
    }
    metrics.rules().reload_errors.inc();
    for e in &errs {
        tracing::error!(
            dir = %dir.display(),
            file = %e.file,
            document = e.document,
            field = %e.field,
            reason = %e.reason,
            "rejected rules snapshot, keeping the previous one: {e}"
        );
    }
    state.last_rejected = Some(hash);
    Outcome::Rejected(errs)
}

/// Watch `dir` and rescan it every `rescan`; on a valid change store a new snapshot
/// (generation + 1); on error keep the old one, log file/document/field/reason and count
/// `remora_config_reload_errors_total` (in `metrics`, as every reload).
pub fn spawn_watcher(
    dir: PathBuf,
    ctx: LoadContext,
    store: SharedSnapshot,
    rescan: Duration,
    metrics: Arc<Metrics>,
) -> tokio::task::JoinHandle<()> {
    spawn_watcher_with(dir, ctx, store, rescan, metrics, Arc::new(NoHooks))
}

/// `spawn_watcher` with `hooks` consulted at each reload.
pub fn spawn_watcher_with(
    dir: PathBuf,
    ctx: LoadContext,
    store: SharedSnapshot,
    rescan: Duration,
    metrics: Arc<Metrics>,
    hooks: Arc<dyn Hooks>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        metrics
            .rules()
            .generation
            .set(store.load().generation as i64);
        let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(1);
        let mut warned = false;
        let mut watcher = start_notify(&dir, tx.clone(), &mut warned);
        let state = Arc::new(std::sync::Mutex::new(State::default()));
        let rescan = rescan.max(Duration::from_millis(10));
        let mut tick = tokio::time::interval(rescan);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                got = rx.recv() => {
                    if got.is_none() {
                        // Cannot happen while we hold `tx`; rescans continue regardless.
                        tokio::time::sleep(rescan).await;
                    }
                    // Let a burst of events (a kubelet swap is several) settle.
                    tokio::time::sleep(Duration::from_millis(25)).await;
                    while rx.try_recv().is_ok() {}
                }
            }
            if watcher.is_none() {
                watcher = start_notify(&dir, tx.clone(), &mut warned);
            }
            let (d, c, s, st) = (dir.clone(), ctx.clone(), store.clone(), state.clone());
            let (h, m) = (hooks.clone(), metrics.clone());
            let res = tokio::task::spawn_blocking(move || {
                let mut guard = match st.lock() {
                    Ok(g) => g,
                    Err(poisoned) => poisoned.into_inner(),
                };
                reload_once_hooked(
                    &d,
                    &c,
                    &s,
                    &mut guard,
                    &m,
                    &super::endpoints::system_resolver,
                    &*h,
                )
            })
            .await;
            if let Err(e) = res {
                tracing::error!(error = %e, "rules reload task failed");
            }
        }
    })
}

/// Start watching `dir` for changes (not reads); the first failure is logged (later retries stay
/// quiet until one works).
fn start_notify(
    dir: &Path,
    tx: tokio::sync::mpsc::Sender<()>,
    warned: &mut bool,
) -> Option<notify::RecommendedWatcher> {
    use notify::Watcher;
    let warn = |e: &notify::Error, warned: &mut bool| {
        if !*warned {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot watch the rules directory; relying on periodic rescans (retrying the watch at each rescan)");
            *warned = true;
        }
    };
    let mut w = match notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        // Reading the files (each reload does) is an `Access` event: reacting to it would
        // reload again and again, dozens of times a second.
        if res.is_ok_and(|ev| !matches!(ev.kind, notify::EventKind::Access(_))) {
            let _ = tx.try_send(());
        }
    }) {
        Ok(w) => w,
        Err(e) => {
            warn(&e, warned);
            return None;
        }
    };
    match w.watch(dir, notify::RecursiveMode::NonRecursive) {
        Ok(()) => {
            if *warned {
                tracing::info!(dir = %dir.display(), "watching the rules directory");
                *warned = false;
            }
            Some(w)
        }
        Err(e) => {
            warn(&e, warned);
            None
        }
    }
}

/// Does the proxy have a workload identity (`--ca-address`)? Set once by `main` before the
/// first rule set is logged; then `ISTIO_MUTUAL` is real mTLS and not warned about.
static MESH_IDENTITY: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

static GATEWAY_MODE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Say whether the proxy runs as a gateway (start-up, before `log_applied`): then Gateways and
/// gateway-bound VirtualServices are not logged as not applied.
pub fn set_gateway_mode(on: bool) {
    GATEWAY_MODE.store(on, std::sync::atomic::Ordering::Relaxed);
}

/// Say whether the proxy has a workload identity (start-up, before `log_applied`).
pub fn set_mesh_identity(on: bool) {
    MESH_IDENTITY.store(on, std::sync::atomic::Ordering::Relaxed);
}

/// Without a workload identity: log, once per applied rule set (by content hash), one warn
/// line per `ISTIO_MUTUAL` use, and set `remora_tls_mesh_plaintext_destinations` of `metrics`
/// (which remembers the set last noted). Cheap when the set was already noted.
pub fn note_applied(snap: &crate::rules::Snapshot, metrics: &Metrics) {
    let plaintext = metrics.mesh_plaintext();
    let Ok(mut last) = plaintext.noted.lock() else {
        return;
    };
    if last
        .as_ref()
        .is_some_and(|(h, g)| *g == snap.generation && *h == snap.hash)
    {
        return;
    }
    *last = Some((snap.hash.clone(), snap.generation));
    if MESH_IDENTITY.load(std::sync::atomic::Ordering::Relaxed) {
        plaintext.gauge.set(0);
        return;
    }
    let mut n = 0;
    for w in remora_model::lint::policy::istio_mutual_without_identity(&snap.destination_rules) {
        n += 1;
        tracing::warn!(file = %w.file, document = w.document, generation = snap.generation, "{}", w.reason);
    }
    plaintext.gauge.set(n);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reading the directory (as every reload does) is not a change; writing a file is.
    #[tokio::test]
    async fn reads_of_the_directory_do_not_wake_the_watcher() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("rules.yaml");
        std::fs::write(&f, "a: 1\n").unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(16);
        let mut warned = false;
        let _w = start_notify(dir.path(), tx, &mut warned).expect("inotify");
        for _ in 0..3 {
            load::read_inputs(dir.path()).unwrap();
        }
        let woke = tokio::time::timeout(Duration::from_millis(300), rx.recv()).await;
        assert!(woke.is_err(), "a read woke the watcher");
        std::fs::write(&f, "a: 2\n").unwrap();
        let woke = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await;
        assert!(
            matches!(woke, Ok(Some(()))),
            "a write did not wake the watcher"
        );
    }

    #[test]
    fn files_written_in_place_are_loaded_only_once_they_stop_changing() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("rules.yaml");
        std::fs::write(&f, "").unwrap();
        let half = load::read_inputs(dir.path()).unwrap().hash;
        std::fs::write(&f, "apiVersion: networking.istio.io/v1\n").unwrap();
        let whole = load::read_inputs(dir.path()).unwrap().hash;
        assert_ne!(half, whole);
        // The content read first (empty, mid-write) is gone by the second read: not settled.
        assert!(!settled(dir.path(), &half));
        assert!(settled(dir.path(), &whole));
    }
}
