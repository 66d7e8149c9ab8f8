//! `serve --manage-certs`: the webhook issues and rotates its own serving certificate, without
//! cert-manager.
//!
//! The Secret (`--cert-secret`, default `remora-webhook-certs`) is the source of truth shared by
//! all replicas. Each reconcile: `GET` it → [`issue::plan`] decides (serve it / issue a new
//! serving certificate from the same CA / issue a new CA) → a write uses optimistic concurrency
//! (`POST` for a missing Secret, `PUT` with the read `resourceVersion` otherwise); a 409 means
//! another replica won, so the Secret is read again and the winner's certificates are served.
//! Then every webhook of the MutatingWebhookConfiguration (`--webhook-config`) and of the
//! ValidatingWebhookConfiguration (`--validating-webhook-config`, rules validation), and of each
//! of the revision's tag configurations (`remora-webhook manifest --tag`: labelled
//! `remora.dev/tag` and the revision's `remora.dev/revision`), gets `ca.crt` as its `caBundle`
//! (one JSON patch per configuration, only where it differs), and the
//! resolver serves the certificate to new TLS connections without a restart. A missing
//! ValidatingWebhookConfiguration is logged once and is not an error (rules validation is
//! optional; the proxies keep their last good rules anyway). This repeats every
//! `--cert-check-interval`.
//!
//! Modules: [`issue`] is pure (generation, validation, decisions at a given time), [`store`]
//! holds the kube calls only.

pub mod issue;
pub mod store;

use std::sync::atomic::Ordering;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use base64::Engine;
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
};
use k8s_openapi::ByteString;
use prometheus::{register_int_counter_vec, register_int_gauge_vec, IntCounterVec, IntGaugeVec};
use serde_json::json;
/// The time type of [`reconcile`] and [`issue`] (re-exported for callers and tests).
pub use time::OffsetDateTime;
use tokio::task::JoinHandle;

use crate::tls::CertResolver;
use issue::{fmt_time, Material, Plan, Policy};
use store::{Store, Write};

/// Settings of the certificate manager.
#[derive(Clone, Debug)]
pub struct Options {
    pub policy: Policy,
    /// Secret name (in `policy.namespace`).
    pub secret: String,
    /// MutatingWebhookConfiguration whose webhooks get the CA bundle.
    pub webhook_config: String,
    /// Time between reconciles.
    pub check_interval: Duration,
    /// Time before retrying after a failed reconcile (capped by `check_interval`).
    pub retry_interval: Duration,
}

impl Options {
    pub fn validate(&self) -> Result<(), String> {
        self.policy.validate()?;
        if self.secret.is_empty() {
            return Err("--cert-secret: must not be empty".into());
        }
        if self.webhook_config.is_empty() {
            return Err("--webhook-config: must not be empty".into());
        }
        if self.check_interval.is_zero() {
            return Err("--cert-check-interval 0s: must be positive".into());
        }
        if self.check_interval >= self.policy.rotate_before {
            return Err(format!(
                "--cert-check-interval {}: must be shorter than --cert-rotate-before {} (else a certificate may expire between checks)",
                issue::fmt_duration(self.check_interval),
                issue::fmt_duration(self.policy.rotate_before)
            ));
        }
        Ok(())
    }
}

/// How the Secret was settled in one reconcile.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Settled {
    /// The stored certificates were valid and are served unchanged.
    Kept,
    /// This replica created the Secret.
    Created,
    /// This replica replaced the Secret's certificates (reason).
    Replaced(String),
    /// Another replica wrote first (409); its certificates are served.
    LostRace,
}

/// The outcome of one reconcile.
#[derive(Debug)]
pub struct Reconciled {
    pub material: Material,
    pub settled: Settled,
    /// How many webhooks got a new `caBundle`, or why the bundle could not be written.
    pub bundle: Result<usize, String>,
    /// The same for the ValidatingWebhookConfiguration: `Ok(None)` when it does not exist or
    /// is not managed (empty `--validating-webhook-config`), which is not an error.
    pub validating_bundle: Result<Option<usize>, String>,
    /// The same for the revision's tag configurations: how many webhooks changed in all;
    /// `Ok(0)` when tags are not managed or there are none.
    pub tag_bundle: Result<usize, String>,
}

impl Reconciled {
    /// Whether a caBundle could not be written (the manager retries sooner).
    pub fn bundle_failed(&self) -> bool {
        self.bundle.is_err() || self.validating_bundle.is_err() || self.tag_bundle.is_err()
    }
}

/// At most this many read-decide-write rounds per reconcile (each lost race costs one).
const ROUNDS: usize = 4;

/// One reconcile at `now`: settle the Secret, then the webhooks' `caBundle`.
pub async fn reconcile(
    store: &Store,
    opts: &Options,
    now: OffsetDateTime,
) -> anyhow::Result<Reconciled> {
    let id = format!("{}/{}", store.namespace, store.secret);
    let what = format!("cert secret {id}");
    let mut lost = false;
    let mut settled = None;
    for _ in 0..ROUNDS {
        let read = store
            .read_secret()
            .await
            .map_err(|e| anyhow::anyhow!("{what}: reading failed: {e}"))?;
        if let Some(cert) = read
            .as_ref()
            .and_then(|s| s.annotation("cert-manager.io/certificate-name"))
        {
            // Two writers would overwrite each other forever: refuse, loudly.
            return Err(anyhow::anyhow!(
                "{what} is issued by cert-manager (Certificate {cert}); not touching it: run without --manage-certs to serve the mounted Secret, or give --cert-secret another name"
            ));
        }
        let planned = issue::plan(read.as_ref().map(|s| &s.data), &opts.policy, now)
            .map_err(|e| anyhow::anyhow!("{what}: {e}"))?;
        match planned {
            Plan::Keep {
                material,
                serving,
                ca,
            } => {
                if lost {
                    tracing::info!(secret = %id, valid_until = %fmt_time(serving.not_after),
                        "lost the write race; serving the certificate the other replica stored");
                } else {
                    tracing::info!(secret = %id, valid_until = %fmt_time(serving.not_after),
                        ca_valid_until = %fmt_time(ca.not_after),
                        "{what} valid until {}, serving it", fmt_time(serving.not_after));
                }
                record_expiry(&material);
                settled = Some((
                    material,
                    if lost {
                        Settled::LostRace
                    } else {
                        Settled::Kept
                    },
                ));
                break;
            }
            Plan::Write { material, reason } => {
                let data = material.to_data();
                let (w, verb) = match &read {
                    None => (store.create_secret(data).await, "create"),
                    Some(prev) => (store.replace_secret(prev, data).await, "update"),
                };
                match w.map_err(|e| anyhow::anyhow!("{what}: {verb} failed: {e}"))? {
                    Write::Done => {
                        let until = issue::validity_of(&material.tls_crt)
                            .map(|v| fmt_time(v.not_after))
                            .unwrap_or_default();
                        tracing::info!(secret = %id, reason = %reason, valid_until = %until,
                            "{what}: {reason}; stored ({verb}), serving it");
                        record_expiry(&material);
                        let s = if read.is_none() {
                            Settled::Created
                        } else {
                            Settled::Replaced(reason)
                        };
                        settled = Some((material, s));
                        break;
                    }
                    Write::Lost => {
                        tracing::info!(secret = %id,
                            "lost the {verb} race (409) to another replica; reading the stored certificate again");
                        lost = true;
                    }
                }
            }
        }
    }
    let Some((material, settled)) = settled else {
        return Err(anyhow::anyhow!(
            "{what}: still losing write races after {ROUNDS} rounds; retrying later"
        ));
    };
    let bundle = ensure_ca_bundle(store, material.ca_crt.as_bytes()).await;
    match &bundle {
        Ok(0) => {
            tracing::debug!(config = %store.webhook_config, "caBundle already current on every webhook")
        }
        Ok(n) => tracing::info!(config = %store.webhook_config, webhooks = n,
            "caBundle updated on {n} webhook(s) of MutatingWebhookConfiguration {}", store.webhook_config),
        Err(e) => {
            tracing::warn!(config = %store.webhook_config, error = %e, "caBundle not written")
        }
    }
    let validating_bundle = ensure_validating_bundle(store, material.ca_crt.as_bytes()).await;
    let vname = &store.validating_config;
    match &validating_bundle {
        Ok(None) | Ok(Some(0)) => {}
        Ok(Some(n)) => tracing::info!(config = %vname, webhooks = n,
            "caBundle updated on {n} webhook(s) of ValidatingWebhookConfiguration {vname}"),
        Err(e) => tracing::warn!(config = %vname, error = %e, "caBundle not written"),
    }
    let tag_bundle = ensure_tag_bundles(store, material.ca_crt.as_bytes()).await;
    if let Err(e) = &tag_bundle {
        tracing::warn!(error = %e, "caBundle not written on every revision tag");
    }
    Ok(Reconciled {
        material,
        settled,
        bundle,
        validating_bundle,
        tag_bundle,
    })
}

/// How long after a tag configuration's change the bundle is written (changes within it are
/// one check).
pub const TAG_SETTLE: Duration = Duration::from_millis(500);

/// Waits for the next added or changed tag configuration (a watch event, or the end of the
/// watch's first list); never, without a watch.
async fn tag_changed(tags: &mut Option<store::TagEvents>) {
    use futures::StreamExt;
    let Some(stream) = tags.as_mut() else {
        return std::future::pending().await;
    };
    let mut last_error: Option<String> = None;
    while let Some(ev) = stream.next().await {
        match ev {
            Ok(kube::runtime::watcher::Event::Apply(_))
            | Ok(kube::runtime::watcher::Event::InitDone) => return,
            Ok(_) => {}
            Err(e) => {
                let msg = e.to_string();
                if last_error.as_ref() != Some(&msg) {
                    tracing::warn!(error = %msg,
                        "watching the revision's tag configurations failed; retrying with backoff (their caBundle is still written at every check)");
                    last_error = Some(msg);
                }
            }
        }
    }
    // The stream ended (it does not with a backoff): wait for the checks.
    *tags = None;
    std::future::pending().await
}

/// At most this many tag configurations are read per check (a revision has a few tags).
pub const MAX_TAG_CONFIGS: u32 = 100;

/// Writes `bundle` into the webhooks of every tag configuration of the store's revision
/// (labelled as `remora-webhook manifest --tag` renders them) where it differs; returns how
/// many webhooks changed. Every configuration is tried; the first error is returned.
async fn ensure_tag_bundles(store: &Store, bundle: &[u8]) -> Result<usize, String> {
    let Some(selector) = &store.tag_selector else {
        return Ok(0);
    };
    let (configs, more) = store
        .list_configs(selector, MAX_TAG_CONFIGS)
        .await
        .map_err(|e| format!("MutatingWebhookConfigurations {selector}: listing failed: {e}"))?;
    if more {
        tracing::warn!(selector = %selector,
            "more than {MAX_TAG_CONFIGS} revision tag configurations; the caBundle of the first {MAX_TAG_CONFIGS} is managed");
    }
    let mut changed = 0;
    let mut first_error = None;
    for cfg in &configs {
        let name = cfg.metadata.name.as_deref().unwrap_or_default();
        if name == store.webhook_config {
            continue; // patched above
        }
        let done = match ca_bundle_patch(cfg, bundle) {
            Ok(None) => Ok(0),
            Ok(Some((patch, n))) => store
                .patch_config(name, patch)
                .await
                .map(|()| n)
                .map_err(|e| format!("MutatingWebhookConfiguration {name}: patch failed: {e}")),
            Err(e) => Err(e),
        };
        match done {
            Ok(0) => {}
            Ok(n) => {
                tracing::info!(config = %name, webhooks = n,
                    "caBundle updated on {n} webhook(s) of revision tag configuration {name}");
                changed += n;
            }
            Err(e) => {
                tracing::warn!(config = %name, error = %e, "caBundle not written");
                first_error.get_or_insert(e);
            }
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(changed),
    }
}

/// Writes `bundle` into the ValidatingWebhookConfiguration's webhooks where it differs;
/// `Ok(None)` when it is not managed or does not exist (logged once until it appears).
async fn ensure_validating_bundle(store: &Store, bundle: &[u8]) -> Result<Option<usize>, String> {
    let name = &store.validating_config;
    if name.is_empty() {
        return Ok(None);
    }
    let read = store
        .read_validating_config()
        .await
        .map_err(|e| format!("ValidatingWebhookConfiguration {name}: reading failed: {e}"))?;
    let Some(cfg) = read else {
        if !store.validating_missing.swap(true, Ordering::Relaxed) {
            tracing::warn!(config = %name,
                "ValidatingWebhookConfiguration {name} not found: rules ConfigMaps are not validated at apply time until it exists (its caBundle is written at the next check; is --validating-webhook-config right?)");
        } else {
            tracing::debug!(config = %name, "ValidatingWebhookConfiguration still not found");
        }
        return Ok(None);
    };
    if store.validating_missing.swap(false, Ordering::Relaxed) {
        tracing::info!(config = %name, "ValidatingWebhookConfiguration {name} exists now");
    }
    let Some((patch, n)) = validating_ca_bundle_patch(&cfg, bundle)? else {
        return Ok(Some(0));
    };
    store
        .patch_validating_config(patch)
        .await
        .map_err(|e| format!("ValidatingWebhookConfiguration {name}: patch failed: {e}"))?;
    Ok(Some(n))
}

/// Writes `bundle` into every webhook whose `caBundle` differs; returns how many changed.
async fn ensure_ca_bundle(store: &Store, bundle: &[u8]) -> Result<usize, String> {
    let name = &store.webhook_config;
    let cfg = store
        .read_webhook_config()
        .await
        .map_err(|e| format!("MutatingWebhookConfiguration {name}: reading failed: {e}"))?
        .ok_or_else(|| {
            format!("MutatingWebhookConfiguration {name} not found (is --webhook-config right?)")
        })?;
    let Some((patch, n)) = ca_bundle_patch(&cfg, bundle)? else {
        return Ok(0);
    };
    store
        .patch_webhook_config(patch)
        .await
        .map_err(|e| format!("MutatingWebhookConfiguration {name}: patch failed: {e}"))?;
    Ok(n)
}

/// The JSON patch that sets `caBundle` to `bundle` on every webhook where it differs (each
/// write guarded by a `test` of the webhook's name, so a reordered list fails the patch
/// instead of writing to the wrong entry), and how many webhooks it changes. `None` when all
/// match; an error when the configuration has no webhooks.
pub fn ca_bundle_patch(
    cfg: &MutatingWebhookConfiguration,
    bundle: &[u8],
) -> Result<Option<(json_patch::Patch, usize)>, String> {
    let hooks: Vec<(&str, Option<&ByteString>)> = cfg
        .webhooks
        .as_deref()
        .unwrap_or_default()
        .iter()
        .map(|w| (w.name.as_str(), w.client_config.ca_bundle.as_ref()))
        .collect();
    bundle_patch(
        "MutatingWebhookConfiguration",
        cfg.metadata.name.as_deref().unwrap_or_default(),
        &hooks,
        bundle,
    )
}

/// [`ca_bundle_patch`] for a ValidatingWebhookConfiguration (same shape: `webhooks[i].name`,
/// `webhooks[i].clientConfig.caBundle`).
pub fn validating_ca_bundle_patch(
    cfg: &ValidatingWebhookConfiguration,
    bundle: &[u8],
) -> Result<Option<(json_patch::Patch, usize)>, String> {
    let hooks: Vec<(&str, Option<&ByteString>)> = cfg
        .webhooks
        .as_deref()
        .unwrap_or_default()
        .iter()
        .map(|w| (w.name.as_str(), w.client_config.ca_bundle.as_ref()))
        .collect();
    bundle_patch(
        "ValidatingWebhookConfiguration",
        cfg.metadata.name.as_deref().unwrap_or_default(),
        &hooks,
        bundle,
    )
}

/// The patch over `(name, caBundle)` of each webhook of a `kind` configuration named `name`.
fn bundle_patch(
    kind: &str,
    name: &str,
    webhooks: &[(&str, Option<&ByteString>)],
    bundle: &[u8],
) -> Result<Option<(json_patch::Patch, usize)>, String> {
    if webhooks.is_empty() {
        return Err(format!("{kind} {name} has no webhooks"));
    }
    let b64 = base64::engine::general_purpose::STANDARD.encode(bundle);
    let mut ops = Vec::new();
    let mut n = 0;
    for (i, (hook, ca)) in webhooks.iter().enumerate() {
        let current = ca.map(|b| b.0.as_slice());
        if current == Some(bundle) {
            continue;
        }
        n += 1;
        ops.push(json!({"op": "test", "path": format!("/webhooks/{i}/name"), "value": hook}));
        ops.push(json!({"op": "add", "path": format!("/webhooks/{i}/clientConfig/caBundle"), "value": b64}));
    }
    if n == 0 {
        return Ok(None);
    }
    let patch: json_patch::Patch = serde_json::from_value(serde_json::Value::Array(ops))
        .map_err(|e| format!("building the caBundle patch: {e}"))?;
    Ok(Some((patch, n)))
}

/// The running manager: the resolver to serve from, and its background loop.
pub struct Managed {
    pub resolver: Arc<CertResolver>,
    pub task: JoinHandle<()>,
}

/// Reconciles until the first success (retrying after `retry_interval`, doubling up to
/// `check_interval`), then keeps reconciling every `check_interval` in the background (after a
/// failure sooner, with the same backoff), swapping the served certificate when the Secret's
/// changes.
pub async fn start(store: Store, opts: Options) -> anyhow::Result<Managed> {
    crate::tls::install_provider();
    opts.validate().map_err(|e| anyhow::anyhow!(e))?;
    let mut wait = opts.retry_interval.min(opts.check_interval);
    let first = loop {
        match reconcile(&store, &opts, OffsetDateTime::now_utc()).await {
            Ok(r) => {
                record_result(&r);
                break r;
            }
            Err(e) => {
                count("error");
                tracing::warn!(error = %format!("{e:#}"), retry_in_s = wait.as_secs_f64(),
                    "no certificate to serve yet");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(opts.check_interval);
            }
        }
    };
    let key = first
        .material
        .certified_key()
        .map_err(|e| anyhow::anyhow!("cert secret {}/{}: {e}", store.namespace, store.secret))?;
    let resolver = CertResolver::from_pair(key);
    // After a failure: retry after `retry_interval`, doubling while failures continue, never
    // longer than `check_interval`.
    let first_retry = opts.retry_interval.min(opts.check_interval);
    let mut retry = first.bundle_failed().then_some(first_retry);
    let r = resolver.clone();
    let task = tokio::spawn(async move {
        let mut tags = store.watch_tag_configs();
        loop {
            tokio::select! {
                _ = tokio::time::sleep(retry.unwrap_or(opts.check_interval)) => {}
                () = tag_changed(&mut tags) => {
                    // A tag configuration was applied (or moved to this revision): its
                    // caBundle now, not at the next check. Changes close together are one.
                    tokio::time::sleep(TAG_SETTLE).await;
                }
            }
            let failed = |retry: Option<Duration>| {
                Some(retry.map_or(first_retry, |d| (d * 2).min(opts.check_interval)))
            };
            match reconcile(&store, &opts, OffsetDateTime::now_utc()).await {
                Ok(done) => {
                    record_result(&done);
                    retry = if done.bundle_failed() {
                        failed(retry)
                    } else {
                        None
                    };
                    match done.material.certified_key() {
                        Ok(k) => {
                            if r.set(k) {
                                tracing::info!(
                                    "serving certificate changed; new connections use it"
                                );
                            }
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "stored certificate unusable; keeping the current one")
                        }
                    }
                }
                Err(e) => {
                    count("error");
                    retry = failed(retry);
                    tracing::warn!(error = %format!("{e:#}"), "certificate check failed; keeping the current certificate");
                }
            }
        }
    });
    Ok(Managed { resolver, task })
}

static RECONCILES: LazyLock<Option<IntCounterVec>> = LazyLock::new(|| {
    register_int_counter_vec!(
        "remora_webhook_cert_reconciles_total",
        "Certificate manager reconciles (--manage-certs), by result: kept, created, replaced, lost_race, error.",
        &["result"]
    )
    .ok()
});

static EXPIRY: LazyLock<Option<IntGaugeVec>> = LazyLock::new(|| {
    register_int_gauge_vec!(
        "remora_webhook_cert_not_after_timestamp_seconds",
        "Expiry (Unix time) of the certificate served and of its CA (--manage-certs).",
        &["cert"]
    )
    .ok()
});

fn count(result: &str) {
    if let Some(c) = RECONCILES.as_ref() {
        c.with_label_values(&[result]).inc();
    }
}

fn record_result(r: &Reconciled) {
    count(match r.settled {
        Settled::Kept => "kept",
        Settled::Created => "created",
        Settled::Replaced(_) => "replaced",
        Settled::LostRace => "lost_race",
    });
}

fn record_expiry(m: &Material) {
    let Some(g) = EXPIRY.as_ref() else { return };
    if let Ok(v) = issue::validity_of(&m.tls_crt) {
        g.with_label_values(&["serving"])
            .set(v.not_after.unix_timestamp());
    }
    if let Ok(v) = issue::validity_of(&m.ca_crt) {
        g.with_label_values(&["ca"])
            .set(v.not_after.unix_timestamp());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::admissionregistration::v1::{MutatingWebhook, WebhookClientConfig};
    use k8s_openapi::ByteString;

    fn cfg(bundles: &[Option<&[u8]>]) -> MutatingWebhookConfiguration {
        MutatingWebhookConfiguration {
            metadata: kube::api::ObjectMeta {
                name: Some("remora-sidecar-injector".into()),
                ..Default::default()
            },
            webhooks: Some(
                bundles
                    .iter()
                    .enumerate()
                    .map(|(i, b)| MutatingWebhook {
                        name: format!("w{i}.remora.dev"),
                        client_config: WebhookClientConfig {
                            ca_bundle: b.map(|b| ByteString(b.to_vec())),
                            ..Default::default()
                        },
                        ..Default::default()
                    })
                    .collect(),
            ),
        }
    }

    #[test]
    fn patch_touches_only_webhooks_whose_bundle_differs() {
        let c = cfg(&[Some(b"NEW"), None, Some(b"OLD")]);
        let (patch, n) = ca_bundle_patch(&c, b"NEW").unwrap().unwrap();
        assert_eq!(n, 2);
        let v = serde_json::to_value(&patch).unwrap();
        assert_eq!(
            v,
            json!([
                {"op": "test", "path": "/webhooks/1/name", "value": "w1.remora.dev"},
                {"op": "add", "path": "/webhooks/1/clientConfig/caBundle", "value": "TkVX"},
                {"op": "test", "path": "/webhooks/2/name", "value": "w2.remora.dev"},
                {"op": "add", "path": "/webhooks/2/clientConfig/caBundle", "value": "TkVX"},
            ])
        );
        // Applying it to the object gives every webhook the bundle.
        let mut obj = serde_json::to_value(&c).unwrap();
        json_patch::patch(&mut obj, &patch).unwrap();
        let after: MutatingWebhookConfiguration = serde_json::from_value(obj).unwrap();
        assert!(ca_bundle_patch(&after, b"NEW").unwrap().is_none());
    }

    #[test]
    fn validating_patch_has_the_same_shape() {
        use k8s_openapi::api::admissionregistration::v1::ValidatingWebhook;
        let c = ValidatingWebhookConfiguration {
            metadata: kube::api::ObjectMeta {
                name: Some("remora-rules-validator".into()),
                ..Default::default()
            },
            webhooks: Some(vec![ValidatingWebhook {
                name: "rules-validator.remora.dev".into(),
                client_config: WebhookClientConfig {
                    ca_bundle: Some(ByteString(b"OLD".to_vec())),
                    ..Default::default()
                },
                ..Default::default()
            }]),
        };
        let (patch, n) = validating_ca_bundle_patch(&c, b"NEW").unwrap().unwrap();
        assert_eq!(n, 1);
        assert_eq!(
            serde_json::to_value(&patch).unwrap(),
            json!([
                {"op": "test", "path": "/webhooks/0/name", "value": "rules-validator.remora.dev"},
                {"op": "add", "path": "/webhooks/0/clientConfig/caBundle", "value": "TkVX"},
            ])
        );
        assert!(validating_ca_bundle_patch(&c, b"OLD").unwrap().is_none());
        let empty = ValidatingWebhookConfiguration {
            webhooks: None,
            ..c
        };
        let e = validating_ca_bundle_patch(&empty, b"X").unwrap_err();
        assert_eq!(
            e,
            "ValidatingWebhookConfiguration remora-rules-validator has no webhooks"
        );
    }

    #[test]
    fn no_webhooks_is_an_error() {
        let c = cfg(&[]);
        let e = ca_bundle_patch(&c, b"X").unwrap_err();
        assert!(e.contains("remora-sidecar-injector has no webhooks"), "{e}");
    }

    #[test]
    fn options_reject_check_interval_beyond_rotate_before() {
        let d = Duration::from_secs(86_400);
        let o = Options {
            policy: Policy {
                service: "s".into(),
                namespace: "n".into(),
                cert_validity: 90 * d,
                ca_validity: 3650 * d,
                rotate_before: 30 * d,
            },
            secret: "x".into(),
            webhook_config: "y".into(),
            check_interval: 30 * d,
            retry_interval: Duration::from_secs(5),
        };
        assert!(o
            .validate()
            .unwrap_err()
            .starts_with("--cert-check-interval 30d"));
        let ok = Options {
            check_interval: Duration::from_secs(3600),
            ..o
        };
        ok.validate().unwrap();
    }
}
