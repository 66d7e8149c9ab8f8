//! Hot reload: a kubelet-style `..data` symlink swap in a temp dir is picked up by the watcher;
//! an invalid set keeps the old snapshot and is counted once; an unchanged rescan does nothing.
//! Each test counts in a metrics handle of its own, so they run in parallel.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::SeedableRng;
use remora_model::route::{route, Decision, RequestInfo};
use remora_proxy::rules::{load_dir, spawn_watcher, LoadContext, SharedSnapshot, Snapshot};
use remora_proxy::telemetry::Metrics;

/// A metrics handle of the test's own.
fn metrics() -> Arc<Metrics> {
    Arc::new(Metrics::new(100).unwrap())
}

fn reviews(subset: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: reviews}}
spec:
  hosts: [reviews]
  http:
  - route:
    - destination: {{host: reviews, subset: {subset}}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: reviews}}
spec:
  host: reviews
  subsets: [{{name: v1}}, {{name: v2}}, {{name: v3}}]
"
    )
}

const INVALID: &str = "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  http:
  - route:
    - destination: {host: reviews, subset: v2}
      weight: lots
";

/// A ConfigMap volume the way the kubelet writes it, with atomic `..data` swaps.
struct Volume {
    dir: tempfile::TempDir,
    n: u32,
    current: Option<String>,
}

impl Volume {
    fn new(files: &[(&str, &str)]) -> Volume {
        let mut v = Volume {
            dir: tempfile::tempdir().unwrap(),
            n: 0,
            current: None,
        };
        v.swap(files);
        v
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Write a new timestamped dir, point `..data_tmp` at it, rename over `..data`, create
    /// missing key symlinks, then remove the old dir — the kubelet's atomic writer sequence.
    fn swap(&mut self, files: &[(&str, &str)]) {
        self.n += 1;
        let stamp = format!("..2026_11_22_00_00_{:02}.{}", self.n, std::process::id());
        let root = self.dir.path();
        std::fs::create_dir(root.join(&stamp)).unwrap();
        for (name, text) in files {
            std::fs::write(root.join(&stamp).join(name), text).unwrap();
        }
        let tmp = root.join("..data_tmp");
        std::os::unix::fs::symlink(&stamp, &tmp).unwrap();
        std::fs::rename(&tmp, root.join("..data")).unwrap();
        for (name, _) in files {
            let link = root.join(name);
            if std::fs::symlink_metadata(&link).is_err() {
                std::os::unix::fs::symlink(format!("..data/{name}"), &link).unwrap();
            }
        }
        if let Some(old) = self.current.replace(stamp) {
            std::fs::remove_dir_all(root.join(old)).unwrap();
        }
    }
}

fn ctx() -> LoadContext {
    LoadContext::default()
}

fn subset_of(s: &Snapshot) -> String {
    match try_subset_of(s) {
        Ok(subset) => subset,
        Err(other) => panic!("expected Forward, got {other}"),
    }
}

/// The subset `reviews` is forwarded to, or the other decision (as text).
fn try_subset_of(s: &Snapshot) -> Result<String, String> {
    let h = http::HeaderMap::new();
    let info = RequestInfo {
        authority: "reviews:9080",
        method: "GET",
        path: "/",
        headers: &h,
        dst: ([10, 96, 0, 20], 9080).into(),
    };
    match route(s, &info, &mut rand::rngs::StdRng::seed_from_u64(1)) {
        Decision::Forward(f) => Ok(f.subset.unwrap_or_default()),
        other => Err(format!("{other:?}")),
    }
}

fn store_for(dir: &Path) -> SharedSnapshot {
    let s = load_dir(dir, &ctx(), 1).unwrap();
    Arc::new(arc_swap::ArcSwap::from_pointee(s))
}

/// Bound of the waits for a reload: generous for a loaded CI machine, and paid only by a failing
/// test (every wait returns as soon as its condition holds).
const WAIT: Duration = Duration::from_secs(30);

/// Wait (bounded) until `cond` holds; returns the time it took, or None.
async fn wait_for(limit: Duration, mut cond: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if cond() {
            return Some(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn symlink_swap_applies_a_new_generation() {
    let mut vol = Volume::new(&[("reviews.yaml", &reviews("v1"))]);
    let store = store_for(vol.path());
    assert_eq!(subset_of(&store.load()), "v1");
    let m = metrics();
    // Rescans every hour: only the directory watch can pick the change up quickly.
    let task = spawn_watcher(
        vol.path().to_path_buf(),
        ctx(),
        store.clone(),
        Duration::from_secs(3600),
        m.clone(),
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        store.load().generation,
        1,
        "an unchanged directory is not reloaded"
    );

    vol.swap(&[("reviews.yaml", &reviews("v2"))]);
    let took = wait_for(WAIT, || store.load().generation == 2).await;
    println!("symlink swap → generation 2 after {took:?}");
    assert!(took.is_some(), "the swap was not applied");
    let snap = store.load();
    assert_eq!(subset_of(&snap), "v2");
    // The watcher sets the metrics just after it stores the snapshot, on another thread: wait
    // (bounded) for them, then check they count this one reload exactly.
    let rules = m.rules();
    wait_for(WAIT, || {
        rules.generation.get() == 2 && rules.reloads.get() > 0
    })
    .await;
    assert_eq!(rules.generation.get(), 2);
    assert_eq!(rules.reloads.get(), 1);

    // A new key appearing in a later swap is read too.
    vol.swap(&[("reviews.yaml", &reviews("v3")), ("extra.yaml", "")]);
    let took = wait_for(WAIT, || store.load().generation == 3).await;
    println!("second swap → generation 3 after {took:?}");
    assert!(took.is_some());
    assert_eq!(subset_of(&store.load()), "v3");
    assert_eq!(store.load().files, vec!["extra.yaml", "reviews.yaml"]);
    task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_set_keeps_the_old_snapshot_and_is_counted_once() {
    let mut vol = Volume::new(&[("reviews.yaml", &reviews("v1"))]);
    let store = store_for(vol.path());
    let m = metrics();
    let errors = &m.rules().reload_errors;
    // Short rescans: the same invalid content is seen many times but counted once.
    let task = spawn_watcher(
        vol.path().to_path_buf(),
        ctx(),
        store.clone(),
        Duration::from_millis(50),
        m.clone(),
    );
    vol.swap(&[("reviews.yaml", INVALID)]);
    let took = wait_for(WAIT, || errors.get() == 1).await;
    assert!(took.is_some(), "the rejection was not counted");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(errors.get(), 1, "counted once per distinct rule set");
    let snap = store.load();
    assert_eq!((snap.generation, subset_of(&snap)), (1, "v1".to_string()));

    // A fixed set is applied as the next generation.
    vol.swap(&[("reviews.yaml", &reviews("v2"))]);
    assert!(wait_for(WAIT, || store.load().generation == 2)
        .await
        .is_some());
    assert_eq!(subset_of(&store.load()), "v2");

    // Going back to the invalid set after a good one counts again.
    vol.swap(&[("reviews.yaml", INVALID)]);
    assert!(wait_for(WAIT, || errors.get() == 2).await.is_some());
    assert_eq!(store.load().generation, 2);
    task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rescan_without_changes_does_nothing_and_rescan_alone_finds_changes() {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("r.yaml"), reviews("v1")).unwrap();
    let store = store_for(d.path());
    let m = metrics();
    let task = spawn_watcher(
        d.path().to_path_buf(),
        ctx(),
        store.clone(),
        Duration::from_millis(20),
        m.clone(),
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(store.load().generation, 1);
    assert_eq!(m.rules().reloads.get(), 0);
    // Rewriting the same bytes is not a change. The file is replaced whole (written beside the
    // directory, renamed over it): `fs::write` truncates first, and a scan that lands between
    // the truncation and the write sees an empty file, a real change.
    let scratch = tempfile::tempdir().unwrap();
    std::fs::write(scratch.path().join("r.yaml"), reviews("v1")).unwrap();
    std::fs::rename(scratch.path().join("r.yaml"), d.path().join("r.yaml")).unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(store.load().generation, 1);
    // In-place edits (no symlinks) are found as well. The truncating write may be scanned half
    // done (an empty set applied, or a partial one rejected) before it is whole: wait for the
    // edited content itself.
    std::fs::write(d.path().join("r.yaml"), reviews("v3")).unwrap();
    assert!(wait_for(WAIT, || try_subset_of(&store.load())
        .is_ok_and(|s| s == "v3"))
    .await
    .is_some());
    assert!(store.load().generation >= 2);
    task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_see_whole_snapshots_during_swaps() {
    let mut vol = Volume::new(&[("reviews.yaml", &reviews("v1"))]);
    let store = store_for(vol.path());
    let task = spawn_watcher(
        vol.path().to_path_buf(),
        ctx(),
        store.clone(),
        Duration::from_millis(50),
        metrics(),
    );
    let reader_store = store.clone();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop2 = stop.clone();
    let reader = std::thread::spawn(move || {
        let mut seen = std::collections::BTreeMap::<String, u64>::new();
        let mut n = 0u64;
        while !stop2.load(std::sync::atomic::Ordering::Relaxed) && n < 5_000_000 {
            let snap = reader_store.load();
            *seen.entry(subset_of(&snap)).or_default() += 1;
            n += 1;
        }
        seen
    });
    for (i, subset) in ["v2", "v3", "v1", "v2"].iter().enumerate() {
        vol.swap(&[("reviews.yaml", &reviews(subset))]);
        let want = i as u64 + 2;
        assert!(wait_for(WAIT, || store.load().generation == want)
            .await
            .is_some());
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let seen = reader.join().unwrap();
    println!("decisions seen during swaps: {seen:?}");
    // Every decision was a Forward to one of the subsets (subset_of panics otherwise).
    assert!(seen
        .keys()
        .all(|k| ["v1", "v2", "v3"].contains(&k.as_str())));
    task.abort();
}

#[tokio::test]
async fn metrics_are_in_the_handles_registry_once_the_watcher_runs() {
    let d = tempfile::tempdir().unwrap();
    let m = metrics();
    let names = |m: &Metrics| -> Vec<String> {
        m.registry()
            .gather()
            .iter()
            .map(|f| f.name().to_string())
            .collect()
    };
    assert!(
        !names(&m).iter().any(|n| n.starts_with("remora_config_")),
        "{:?}",
        names(&m)
    );
    let store = store_for(d.path());
    let task = spawn_watcher(
        d.path().to_path_buf(),
        ctx(),
        store,
        Duration::from_secs(3600),
        m.clone(),
    );
    assert!(wait_for(WAIT, || m.rules().generation.get() == 1)
        .await
        .is_some());
    task.abort();
    let names = names(&m);
    for n in [
        "remora_config_generation",
        "remora_config_reloads_total",
        "remora_config_reload_errors_total",
    ] {
        assert!(names.iter().any(|x| x == n), "{n} missing from {names:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_directory_is_counted_once_and_loaded_when_it_appears() {
    let parent = tempfile::tempdir().unwrap();
    let dir = parent.path().join("rules");
    let store: SharedSnapshot = Arc::new(arc_swap::ArcSwap::from_pointee(Snapshot::empty(&ctx())));
    let m = metrics();
    let errors = &m.rules().reload_errors;
    let task = spawn_watcher(
        dir.clone(),
        ctx(),
        store.clone(),
        Duration::from_millis(20),
        m.clone(),
    );
    assert!(wait_for(WAIT, || errors.get() == 1).await.is_some());
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(errors.get(), 1, "the same failure is counted once");
    assert_eq!(store.load().generation, 0);
    // The directory appears whole (made beside it, renamed into place): a scan between creating
    // it and writing its file would load an empty or half-written set first.
    let scratch = tempfile::tempdir().unwrap();
    std::fs::write(scratch.path().join("r.yaml"), reviews("v2")).unwrap();
    std::fs::rename(scratch.path(), &dir).unwrap();
    assert!(wait_for(WAIT, || store.load().generation == 1)
        .await
        .is_some());
    assert_eq!(subset_of(&store.load()), "v2");
    task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_answers_are_refreshed_on_rescan() {
    use remora_proxy::rules::watch::{reload_once_with, Outcome, State};
    use remora_proxy::rules::{load, load_inputs};
    use std::sync::atomic::{AtomicU8, Ordering};
    let d = tempfile::tempdir().unwrap();
    std::fs::write(
        d.path().join("db.yaml"),
        "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: db}
spec:
  hosts: [db.example.com]
  ports: [{number: 5432, name: tcp-pg}]
  resolution: DNS
",
    )
    .unwrap();
    // A fake DNS: answer 0 = 127.0.0.31, 1 = 127.0.0.32, 2 = no answer (a failed lookup).
    let answer = Arc::new(AtomicU8::new(0));
    let a = answer.clone();
    let fake = move |name: &str| -> Vec<std::net::IpAddr> {
        assert_eq!(name, "db.example.com", "tests never resolve other names");
        match a.load(Ordering::SeqCst) {
            0 => vec!["127.0.0.31".parse().unwrap()],
            1 => vec!["127.0.0.32".parse().unwrap()],
            _ => vec![],
        }
    };
    let inputs = load::read_inputs(d.path()).unwrap();
    let first = load_inputs(&inputs, &ctx(), 1, &fake).unwrap();
    let store: SharedSnapshot = Arc::new(arc_swap::ArcSwap::from_pointee(first));
    let eps = |s: &Snapshot| -> Vec<String> {
        s.endpoints
            .endpoints("db.example.com", 5432, None)
            .unwrap_or_default()
            .iter()
            .map(|e| e.addr.to_string())
            .collect()
    };
    assert_eq!(eps(&store.load()), vec!["127.0.0.31:5432"]);
    let mut state = State::default();
    let m = metrics();
    let run = |state: &mut State| reload_once_with(d.path(), &ctx(), &store, state, &m, &fake);
    assert_eq!(
        run(&mut state),
        Outcome::Unchanged,
        "same files, same answers"
    );
    answer.store(1, Ordering::SeqCst);
    assert_eq!(run(&mut state), Outcome::Applied(2));
    let snap = store.load();
    assert_eq!(eps(&snap), vec!["127.0.0.32:5432"]);
    assert_eq!(snap.hash, inputs.hash, "the files did not change");
    answer.store(2, Ordering::SeqCst);
    assert_eq!(
        run(&mut state),
        Outcome::Unchanged,
        "a failed lookup keeps the last answer"
    );
    assert_eq!(eps(&store.load()), vec!["127.0.0.32:5432"]);
}
