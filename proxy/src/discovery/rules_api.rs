//! The rules ConfigMap through the API, next to the mounted files.
//!
//! A mounted ConfigMap reaches the pod only after the kubelet's sync (often a minute). When the
//! proxy may read the ConfigMap through the API, it watches it (a `fieldSelector` on
//! `metadata.name`, so RBAC can be limited to that one name) and applies each change through the
//! same decode/validate/build path as the files; an invalid content keeps the last good rules
//! and counts `remora_config_reload_errors_total` (in the proxy's metrics handle, as the file
//! watcher does).
//!
//! Arbitration ("the newer content wins"): the kubelet copies the mount from the API, so while
//! the API watch is live the API's content is at least as new as the files. Then a file set
//! whose content differs from the API's is the mount lagging behind and is not applied; once the
//! kubelet catches up the hashes are equal and nothing changes. When the API is not live (no
//! RBAC, ConfigMap absent, API unreachable for a minute) the files are applied as before.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::rules::watch::{self, Hooks, Outcome};
use crate::rules::{self, load, LoadContext, SharedSnapshot, Snapshot};
use crate::telemetry::Metrics;

use super::kube::Discovery;
use super::Scope;

/// What the API side knows.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct ApiState {
    /// `off`, `starting`, `watching`, `not found`, `forbidden`, `unreachable`, `deleted`.
    pub status: String,
    /// The API's content is authoritative (see the module doc).
    pub live: bool,
    /// Content hash and resourceVersion of the ConfigMap as the API last showed it.
    pub hash: Option<String>,
    pub resource_version: Option<String>,
    /// Changes received through the API (applied, unchanged or rejected).
    pub updates: u64,
    /// Hash of the last rejected API content (not logged or counted again).
    #[serde(skip)]
    pub last_rejected: Option<String>,
    /// File hash last reported as lagging (logged once per content).
    #[serde(skip)]
    pub lag_logged: Option<String>,
    /// The last error, if any.
    pub error: Option<String>,
}

/// The arbiter between the two rule sources, and the hooks that add discovery to every
/// snapshot. Both sources write the store under `lock`.
pub struct RulesSources {
    lock: Mutex<()>,
    pub store: SharedSnapshot,
    pub ctx: LoadContext,
    /// `namespace/name` of the ConfigMap.
    pub configmap: String,
    pub discovery: Option<Arc<Discovery>>,
    /// Where applied and rejected rule sets are counted (`Metrics::rules`).
    pub metrics: Arc<Metrics>,
    api: Mutex<ApiState>,
    /// The ConfigMap's first answer through the API, for readiness: `NOT_WATCHED`, `AWAITED`
    /// or `ANSWERED`.
    first_answer: AtomicU8,
}

const NOT_WATCHED: u8 = 0;
const AWAITED: u8 = 1;
const ANSWERED: u8 = 2;

fn locked<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl RulesSources {
    pub fn new(
        store: SharedSnapshot,
        ctx: LoadContext,
        configmap: String,
        discovery: Option<Arc<Discovery>>,
        metrics: Arc<Metrics>,
    ) -> RulesSources {
        RulesSources {
            lock: Mutex::new(()),
            store,
            ctx,
            configmap,
            discovery,
            metrics,
            api: Mutex::new(ApiState {
                status: "off".into(),
                ..ApiState::default()
            }),
            first_answer: AtomicU8::new(NOT_WATCHED),
        }
    }

    /// The ConfigMap is about to be watched through the API: readiness waits for its first
    /// answer (call before the watch starts).
    pub fn await_api_answer(&self) {
        let _ = self.first_answer.compare_exchange(
            NOT_WATCHED,
            AWAITED,
            Ordering::AcqRel,
            Ordering::Acquire,
        );
    }

    /// The API answered the ConfigMap's list (its content applied, absent, or 403).
    pub fn api_answered(&self) {
        self.first_answer.store(ANSWERED, Ordering::Release);
    }

    /// Is the ConfigMap watched through the API (`await_api_answer` was called)?
    pub fn api_watched(&self) -> bool {
        self.first_answer.load(Ordering::Acquire) != NOT_WATCHED
    }

    /// Is readiness waiting for the ConfigMap's first answer through the API?
    pub fn api_answer_pending(&self) -> bool {
        self.first_answer.load(Ordering::Acquire) == AWAITED
    }

    /// The label of snapshots from the API.
    fn api_source(&self, rv: &str) -> String {
        format!("api:configmap/{} resourceVersion {rv}", self.configmap)
    }

    /// Record the API side's status (`live` = its content is authoritative).
    pub fn set_api_status(&self, status: &str, live: bool, error: Option<String>) {
        let mut a = locked(&self.api);
        if a.status != status {
            tracing::info!(configmap = %self.configmap, "rules through the API: {status}{}", if live { " (the API's content wins over the mounted files)" } else { " (the mounted files are used)" });
        }
        a.status = status.to_string();
        a.live = live;
        a.error = error;
    }

    pub fn api_state(&self) -> ApiState {
        locked(&self.api).clone()
    }

    /// Apply the ConfigMap's `data` (resourceVersion `rv`) as a rule set. Blocking (decodes,
    /// resolves DNS names): call it from a blocking thread.
    pub fn apply_configmap(
        &self,
        data: &BTreeMap<String, String>,
        binary_keys: &[String],
        rv: &str,
        resolve: &rules::endpoints::Resolver<'_>,
    ) -> Outcome {
        let _serial = locked(&self.lock);
        let inputs = configmap_inputs(&self.configmap, data, binary_keys);
        {
            let mut a = locked(&self.api);
            a.updates += 1;
            a.hash = Some(inputs.hash.clone());
            a.resource_version = Some(rv.to_string());
            a.live = true;
            a.status = "watching".into();
            a.error = None;
        }
        let current = self.store.load();
        if current.hash == inputs.hash {
            tracing::debug!(configmap = %self.configmap, resource_version = rv, "ConfigMap content through the API equals the rules in effect (generation {})", current.generation);
            return Outcome::Unchanged;
        }
        if locked(&self.api).last_rejected.as_deref() == Some(inputs.hash.as_str()) {
            return Outcome::Unchanged;
        }
        let generation = current.generation + 1;
        match rules::load_inputs(&inputs, &self.ctx, generation, resolve) {
            Ok(mut snap) => {
                snap.source = self.api_source(rv);
                let snap = Arc::new(self.prepare(snap));
                watch::log_applied(&snap, &self.metrics);
                self.store.store(snap.clone());
                let m = self.metrics.rules();
                m.generation.set(generation as i64);
                m.reloads.inc();
                locked(&self.api).last_rejected = None;
                self.applied(&snap);
                Outcome::Applied(generation)
            }
            Err(errs) => {
                self.metrics.rules().reload_errors.inc();
                for e in &errs {
                    tracing::error!(
                        configmap = %self.configmap,
                        resource_version = rv,
                        file = %e.file,
                        document = e.document,
                        field = %e.field,
                        reason = %e.reason,
                        "rejected rules from ConfigMap {} (resourceVersion {rv}), keeping generation {}: {e}",
                        self.configmap,
                        current.generation
                    );
                }
                locked(&self.api).last_rejected = Some(inputs.hash);
                Outcome::Rejected(errs)
            }
        }
    }

    /// The `/config_dump` block: which source and generation is live, and the API side.
    pub fn dump(&self) -> remora_model::dump::ConfigSourceDump {
        let snap = self.store.load();
        let a = self.api_state();
        remora_model::dump::ConfigSourceDump {
            source: source_kind(&snap.source).to_string(),
            generation: snap.generation,
            hash: snap.hash.clone(),
            configmap: Some(self.configmap.clone()),
            api: remora_model::dump::ApiState {
                status: a.status,
                live: a.live,
                hash: a.hash,
                resource_version: a.resource_version,
                updates: a.updates,
                error: a.error,
            },
        }
    }
}

/// A snapshot store holding `snap` (for callers without `arc_swap` at hand).
pub fn shared_store(snap: Snapshot) -> SharedSnapshot {
    Arc::new(arc_swap::ArcSwap::from_pointee(snap))
}

/// `api`, `files` or `none` for a snapshot's `source` label.
pub fn source_kind(source: &str) -> &'static str {
    if source.starts_with("api:") {
        "api"
    } else if source.starts_with("files:") {
        "files"
    } else {
        "none"
    }
}

impl Hooks for RulesSources {
    fn lock(&self) -> Option<MutexGuard<'_, ()>> {
        Some(locked(&self.lock))
    }

    fn admit_files(&self, hash: &str) -> Result<(), String> {
        let mut a = locked(&self.api);
        if !a.live || a.hash.as_deref() == Some(hash) {
            return Ok(());
        }
        let why = format!(
            "the mounted files differ from ConfigMap {} as the API serves it (resourceVersion {}): the mount lags behind the API, keeping the API's rules",
            self.configmap,
            a.resource_version.as_deref().unwrap_or("?")
        );
        if a.lag_logged.as_deref() != Some(hash) {
            tracing::info!(files_hash = hash, "{why}");
            a.lag_logged = Some(hash.to_string());
        }
        Err(why)
    }

    fn prepare(&self, mut snap: Snapshot) -> Snapshot {
        if snap.source.starts_with("files:") {
            let a = locked(&self.api);
            if a.live && a.hash.as_deref() == Some(snap.hash.as_str()) {
                // The same content as the API's (a DNS refresh after the mount caught up).
                snap.source = self.api_source(a.resource_version.as_deref().unwrap_or("?"));
            }
        }
        match &self.discovery {
            Some(d) => d.attach(snap),
            None => snap,
        }
    }

    fn applied(&self, snap: &Snapshot) {
        if let Some(d) = &self.discovery {
            d.set_scope(Scope::from_snapshot(snap, &self.ctx.namespace));
        }
    }
}

fn is_rules_key(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    !name.starts_with('.')
        && (lower.ends_with(".yaml") || lower.ends_with(".yml") || lower.ends_with(".json"))
}

/// The ConfigMap's data as the inputs of a rules directory would be: the same keys become the
/// same files, so the content hash equals the mounted directory's.
pub fn configmap_inputs(
    configmap: &str,
    data: &BTreeMap<String, String>,
    binary_keys: &[String],
) -> load::Inputs {
    let mut files = Vec::new();
    let mut skipped = Vec::new();
    for (k, v) in data {
        if is_rules_key(k) {
            files.push((k.clone(), v.as_bytes().to_vec()));
        } else if !k.starts_with('.') {
            skipped.push((k.clone(), "not a .yaml, .yml or .json file".to_string()));
        }
    }
    for k in binary_keys {
        skipped.push((k.clone(), "binaryData is not read".to_string()));
    }
    skipped.sort();
    let hash = rules::digest::content_hash(files.iter().map(|(n, b)| (n.as_str(), b.as_slice())));
    load::Inputs {
        dir: PathBuf::from(format!("configmap/{configmap}")),
        files,
        skipped,
        hash,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::watch::{reload_once_hooked, State};

    const VS: &str = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: r}\nspec:\n  hosts: [reviews]\n  http:\n  - route:\n    - destination: {host: reviews, subset: X}\n";

    fn vs(subset: &str) -> String {
        VS.replace('X', subset)
    }

    fn no_dns(_: &str) -> Vec<std::net::IpAddr> {
        Vec::new()
    }

    #[test]
    fn configmap_hash_equals_the_mounted_directory() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("a.yaml"), vs("v1")).unwrap();
        std::fs::write(d.path().join("notes.txt"), "x").unwrap();
        let files = load::read_inputs(d.path()).unwrap();
        let data: BTreeMap<String, String> = [
            ("a.yaml".to_string(), vs("v1")),
            ("notes.txt".to_string(), "x".to_string()),
        ]
        .into();
        let cm = configmap_inputs("shop/remora-mesh-rules", &data, &["blob.bin".into()]);
        assert_eq!(cm.hash, files.hash);
        assert_eq!(cm.files.len(), 1);
        assert_eq!(
            cm.skipped,
            vec![
                ("blob.bin".to_string(), "binaryData is not read".to_string()),
                (
                    "notes.txt".to_string(),
                    "not a .yaml, .yml or .json file".to_string()
                )
            ]
        );
    }

    #[test]
    fn api_content_wins_while_live_and_files_lag() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("r.yaml"), vs("v1")).unwrap();
        let ctx = LoadContext::default();
        let first = rules::load_dir(d.path(), &ctx, 1).unwrap();
        let store: SharedSnapshot = Arc::new(arc_swap::ArcSwap::from_pointee(first));
        let src = RulesSources::new(
            store.clone(),
            ctx.clone(),
            "default/remora-mesh-rules".into(),
            None,
            Arc::new(Metrics::new(100).unwrap()),
        );
        let m = src.metrics.clone();
        let mut state = State::default();

        // The API shows a newer content: applied at once, source api.
        let data: BTreeMap<String, String> = [("r.yaml".to_string(), vs("v2"))].into();
        assert_eq!(
            src.apply_configmap(&data, &[], "41", &no_dns),
            Outcome::Applied(2)
        );
        let s = store.load();
        assert_eq!(
            s.source,
            "api:configmap/default/remora-mesh-rules resourceVersion 41"
        );
        assert_eq!(source_kind(&s.source), "api");
        // The same content again: nothing.
        assert_eq!(
            src.apply_configmap(&data, &[], "41", &no_dns),
            Outcome::Unchanged
        );
        // The files still hold v1: lagging, not applied.
        assert_eq!(
            reload_once_hooked(d.path(), &ctx, &store, &mut state, &m, &no_dns, &src),
            Outcome::Unchanged
        );
        assert_eq!(store.load().generation, 2);
        // The kubelet catches up: same hash, nothing changes, the source stays api.
        std::fs::write(d.path().join("r.yaml"), vs("v2")).unwrap();
        assert_eq!(
            reload_once_hooked(d.path(), &ctx, &store, &mut state, &m, &no_dns, &src),
            Outcome::Unchanged
        );
        assert_eq!(source_kind(&store.load().source), "api");
        // Invalid content through the API: rejected, last good kept, counted once.
        let bad: BTreeMap<String, String> = [("r.yaml".to_string(), "kind: [".to_string())].into();
        assert!(matches!(
            src.apply_configmap(&bad, &[], "42", &no_dns),
            Outcome::Rejected(_)
        ));
        assert_eq!(
            src.apply_configmap(&bad, &[], "42", &no_dns),
            Outcome::Unchanged
        );
        assert_eq!(m.rules().reload_errors.get(), 1);
        assert_eq!(m.rules().generation.get(), 2);
        assert_eq!(store.load().generation, 2);
        // The API becomes unavailable (403): the files are applied again.
        src.set_api_status("forbidden", false, Some("403".into()));
        std::fs::write(d.path().join("r.yaml"), vs("v3")).unwrap();
        assert_eq!(
            reload_once_hooked(d.path(), &ctx, &store, &mut state, &m, &no_dns, &src),
            Outcome::Applied(3)
        );
        assert_eq!(source_kind(&store.load().source), "files");
        let dump = src.dump();
        assert_eq!(dump.source, "files");
        assert_eq!(dump.generation, 3);
        assert_eq!(dump.api.status, "forbidden");
    }
}
