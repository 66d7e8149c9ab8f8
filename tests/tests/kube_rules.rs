//! Contract tests of the rules ConfigMap read through the API (`--rules-configmap`) against
//! recorded responses (`tests/fixtures/kube-api/discovery/rules-configmap-*.json`): the list and
//! watch with a `fieldSelector` on `metadata.name`, BOOKMARKs, an ERROR 410 Expired re-list,
//! live MODIFIED/DELETED events, invalid content (kept last good, counted), 403 Forbidden and an
//! absent ConfigMap (the mounted files stay the source), and the arbitration with the files.
//!
//! The proxy only reads: it never writes to the API, so there is no 409 Conflict to handle.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use remora_e2e::apiserver::{event, RecordedApi};
use remora_proxy::discovery::kube::{watch_rules_configmap, Timing};
use remora_proxy::discovery::rules_api::{shared_store, source_kind, RulesSources};
use remora_proxy::rules::watch::{reload_once_hooked, Outcome, State};
use remora_proxy::rules::{load_dir, LoadContext, SharedSnapshot};
use remora_proxy::telemetry::Metrics;
use serde_json::{json, Value};

const CM_PATH: &str = "/api/v1/namespaces/shop/configmaps";

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/kube-api/discovery")
        .join(name)
}

fn fast() -> Timing {
    Timing {
        debounce: Duration::from_millis(5),
        backoff: Duration::from_millis(50),
        max_backoff: Duration::from_millis(200),
        forbidden_retry: Duration::from_secs(60),
    }
}

fn ctx() -> LoadContext {
    LoadContext {
        namespace: "shop".into(),
        ..LoadContext::default()
    }
}

/// The ConfigMap's documents, read back from the fixture so files and API agree byte for byte.
fn fixture_docs() -> (String, String) {
    let doc: Value = serde_json::from_str(
        &std::fs::read_to_string(fixture("rules-configmap-relist.json")).unwrap(),
    )
    .unwrap();
    let data = &doc["exchanges"][0]["body"]["items"][0]["data"];
    (
        data["reviews.yaml"].as_str().unwrap().to_string(),
        data["subsets.yaml"].as_str().unwrap().to_string(),
    )
}

fn reviews(subset: &str) -> String {
    fixture_docs()
        .0
        .replace("subset: v2", &format!("subset: {subset}"))
}

/// A rules directory as the kubelet mounts the ConfigMap (README included, not a rules file).
fn mount(dir: &Path, subset: &str) {
    std::fs::write(dir.join("reviews.yaml"), reviews(subset)).unwrap();
    std::fs::write(dir.join("subsets.yaml"), fixture_docs().1).unwrap();
    std::fs::write(dir.join("README"), "not a rules file").unwrap();
}

fn subset_in_effect(store: &SharedSnapshot) -> Option<String> {
    let s = store.load();
    s.virtual_services
        .first()?
        .http
        .first()?
        .route
        .first()?
        .destination
        .subset
        .clone()
}

/// How long a wait for something that normally takes milliseconds may take on a slow, loaded CI
/// machine (waits poll and end as soon as the condition holds).
const PATIENCE: Duration = Duration::from_secs(60);

async fn wait_for(limit: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed() < limit, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn setup(subset_on_disk: &str) -> (tempfile::TempDir, SharedSnapshot, Arc<RulesSources>) {
    let dir = tempfile::tempdir().unwrap();
    mount(dir.path(), subset_on_disk);
    let first = load_dir(dir.path(), &ctx(), 1).unwrap();
    let store: SharedSnapshot = shared_store(first);
    let sources = Arc::new(RulesSources::new(
        store.clone(),
        ctx(),
        "shop/remora-mesh-rules".into(),
        None,
        Arc::new(Metrics::new(100).unwrap()),
    ));
    (dir, store, sources)
}

fn configmap(rv: &str, data: Value) -> Value {
    json!({"kind": "ConfigMap", "apiVersion": "v1",
           "metadata": {"name": "remora-mesh-rules", "namespace": "shop", "uid": "uid-rules",
                        "resourceVersion": rv},
           "data": data})
}

#[tokio::test]
async fn api_changes_apply_at_once_a_410_relists_and_the_lagging_mount_is_not_applied() {
    let api = RecordedApi::start().await.unwrap();
    api.load(&fixture("rules-configmap-relist.json")).unwrap();
    let (dir, store, sources) = setup("v1");
    let watcher = tokio::spawn(watch_rules_configmap(
        api.client().unwrap(),
        "shop".into(),
        "remora-mesh-rules".into(),
        sources.clone(),
        fast(),
    ));

    // List (v2, generation 2), watch → 410, re-list (v3, generation 3).
    wait_for(PATIENCE, "the re-listed content", || {
        subset_in_effect(&store).as_deref() == Some("v3")
    })
    .await;
    let s = store.load();
    assert_eq!(s.generation, 3);
    assert_eq!(
        s.source,
        "api:configmap/shop/remora-mesh-rules resourceVersion 715"
    );
    assert_eq!(s.files, vec!["reviews.yaml", "subsets.yaml"]);
    assert_eq!(
        s.skipped_files,
        vec![(
            "README".to_string(),
            "not a .yaml, .yml or .json file".to_string()
        )]
    );
    let st = sources.api_state();
    assert!(st.live);
    assert_eq!(st.status, "watching");
    assert_eq!(st.resource_version.as_deref(), Some("715"));

    // The re-list is applied before the watcher opens its next watch: wait for that request.
    wait_for(PATIENCE, "the watch after the re-list", || {
        api.requests()
            .iter()
            .filter(|r| r.path_and_query.contains("watch=true"))
            .count()
            >= 2
    })
    .await;
    let reqs = api.requests();
    assert!(reqs.iter().all(|r| r.matched), "{reqs:#?}");
    assert!(
        reqs.iter().all(|r| r
            .path_and_query
            .contains("fieldSelector=metadata.name%3Dremora-mesh-rules")),
        "every call is limited to the one ConfigMap (RBAC resourceNames): {reqs:#?}"
    );
    let watches: Vec<&str> = reqs
        .iter()
        .filter(|r| r.path_and_query.contains("watch=true"))
        .map(|r| r.path_and_query.as_str())
        .collect();
    assert!(watches[0].contains("resourceVersion=700"), "{watches:?}");
    assert!(watches[1].contains("resourceVersion=720"), "{watches:?}");

    // The mount still holds v1: the file watcher's reload does not go back to it.
    let mut state = State::default();
    let no_dns = |_: &str| Vec::new();
    assert_eq!(
        reload_once_hooked(
            dir.path(),
            &ctx(),
            &store,
            &mut state,
            &sources.metrics,
            &no_dns,
            &*sources,
        ),
        Outcome::Unchanged
    );
    assert_eq!(store.load().generation, 3);

    // Live events on the held watch. An invalid content: rejected, counted, last good kept.
    wait_for(PATIENCE, "the held watch", || api.open_watches(CM_PATH) > 0).await;
    // The test's own metrics handle: nothing else counts in it.
    let errors = &sources.metrics.rules().reload_errors;
    assert_eq!(errors.get(), 0);
    let (_, dr) = fixture_docs();
    api.emit(
        CM_PATH,
        event(
            "MODIFIED",
            configmap(
                "730",
                json!({"reviews.yaml": "kind: VirtualService\nspec: [", "subsets.yaml": dr}),
            ),
        ),
    );
    // The resourceVersion and the error count are two updates: wait for both (the count never
    // rising still fails, after the wait).
    wait_for(PATIENCE, "the rejection", || {
        sources.api_state().resource_version.as_deref() == Some("730") && errors.get() > 0
    })
    .await;
    assert_eq!(errors.get(), 1);
    assert_eq!(store.load().generation, 3);
    assert_eq!(subset_in_effect(&store).as_deref(), Some("v3"));

    // A valid change (the same content as the mount: v1): applied within milliseconds.
    let sent = Instant::now();
    api.emit(
        CM_PATH,
        event(
            "MODIFIED",
            configmap("731", json!({"reviews.yaml": reviews("v1"), "subsets.yaml": dr, "README": "not a rules file"})),
        ),
    );
    wait_for(PATIENCE, "the API change", || store.load().generation == 4).await;
    println!(
        "ConfigMap MODIFIED through the API applied after {:?}",
        sent.elapsed()
    );
    assert_eq!(subset_in_effect(&store).as_deref(), Some("v1"));
    assert_eq!(source_kind(&store.load().source), "api");
    // The mount has the same content now: same hash, nothing to do, the source stays api.
    assert_eq!(
        reload_once_hooked(
            dir.path(),
            &ctx(),
            &store,
            &mut state,
            &sources.metrics,
            &no_dns,
            &*sources,
        ),
        Outcome::Unchanged
    );
    assert_eq!(
        store.load().hash,
        load_dir(dir.path(), &ctx(), 9).unwrap().hash
    );

    // Deleted: the rules in effect stay; the files are the source again.
    api.emit(CM_PATH, event("DELETED", configmap("732", json!({}))));
    wait_for(PATIENCE, "the deletion", || !sources.api_state().live).await;
    assert!(sources.api_state().status.starts_with("deleted"));
    assert_eq!(store.load().generation, 4);
    mount(dir.path(), "v2");
    assert_eq!(
        reload_once_hooked(
            dir.path(),
            &ctx(),
            &store,
            &mut state,
            &sources.metrics,
            &no_dns,
            &*sources,
        ),
        Outcome::Applied(5)
    );
    assert_eq!(source_kind(&store.load().source), "files");
    watcher.abort();
}

#[tokio::test]
async fn forbidden_configmap_leaves_the_files_in_charge() {
    let api = RecordedApi::start().await.unwrap();
    api.load(&fixture("rules-configmap-forbidden.json"))
        .unwrap();
    let (dir, store, sources) = setup("v1");
    let watcher = tokio::spawn(watch_rules_configmap(
        api.client().unwrap(),
        "shop".into(),
        "remora-mesh-rules".into(),
        sources.clone(),
        fast(),
    ));
    wait_for(PATIENCE, "the 403", || {
        sources.api_state().status == "forbidden"
    })
    .await;
    let st = sources.api_state();
    assert!(!st.live);
    assert!(st.error.as_deref().unwrap_or("").contains("403"), "{st:?}");
    // The files keep working: a change on disk is applied.
    mount(dir.path(), "v2");
    let mut state = State::default();
    let no_dns = |_: &str| Vec::new();
    assert_eq!(
        reload_once_hooked(
            dir.path(),
            &ctx(),
            &store,
            &mut state,
            &sources.metrics,
            &no_dns,
            &*sources,
        ),
        Outcome::Applied(2)
    );
    assert_eq!(subset_in_effect(&store).as_deref(), Some("v2"));
    assert_eq!(sources.dump().source, "files");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(api.requests().len(), 1, "a 403 is not retried in a loop");
    watcher.abort();
}

#[tokio::test]
async fn absent_configmap_leaves_the_files_in_charge() {
    let api = RecordedApi::start().await.unwrap();
    api.load(&fixture("rules-configmap-absent.json")).unwrap();
    let (dir, store, sources) = setup("v1");
    let watcher = tokio::spawn(watch_rules_configmap(
        api.client().unwrap(),
        "shop".into(),
        "remora-mesh-rules".into(),
        sources.clone(),
        fast(),
    ));
    wait_for(PATIENCE, "the empty list", || {
        sources.api_state().status.starts_with("not found")
    })
    .await;
    mount(dir.path(), "v3");
    let mut state = State::default();
    let no_dns = |_: &str| Vec::new();
    assert_eq!(
        reload_once_hooked(
            dir.path(),
            &ctx(),
            &store,
            &mut state,
            &sources.metrics,
            &no_dns,
            &*sources,
        ),
        Outcome::Applied(2)
    );
    // Created later: the API's content takes over.
    wait_for(PATIENCE, "the held watch", || api.open_watches(CM_PATH) > 0).await;
    let (_, dr) = fixture_docs();
    api.emit(
        CM_PATH,
        event(
            "ADDED",
            configmap(
                "740",
                json!({"reviews.yaml": reviews("v2"), "subsets.yaml": dr}),
            ),
        ),
    );
    wait_for(PATIENCE, "the created ConfigMap", || {
        subset_in_effect(&store).as_deref() == Some("v2")
    })
    .await;
    assert_eq!(store.load().generation, 3);
    assert!(sources.api_state().live);
    watcher.abort();
}
