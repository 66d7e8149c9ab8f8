//! Contract tests of `remora-webhook serve --manage-certs` against recorded Kubernetes API
//! responses (`tests/fixtures/kube-api/certs/`): the Secret is created, kept, raced for,
//! rotated and repaired with the requests the API expects; the CA bundle the webhook PATCHes
//! into the MutatingWebhookConfiguration, the ValidatingWebhookConfiguration (rules
//! validation; a missing one is logged once and not fatal) and the revision's tag
//! configurations verifies the certificate the server really serves.
//!
//! Status bodies, the webhook configuration and the garbage Secret are recorded files; Secrets
//! holding certificates are built here (their keys are generated per run) in the same shape.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use remora_e2e::apiserver::{RecordedApi, Reply, Seen};
use remora_webhook::certs::issue::{self, Material, Plan, Policy};
use remora_webhook::certs::store::Store;
use remora_webhook::certs::{self, OffsetDateTime, Options, Settled};
use remora_webhook::client::{client_config, Client};
use remora_webhook::config::{Config, ConfigHandle};
use remora_webhook::server::{self, ServeOptions};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use serde_json::{json, Value};

const NS: &str = "remora-system";
const SECRET: &str = "remora-webhook-certs";
const MWC: &str = "remora-sidecar-injector";
const SECRET_PATH: &str = "/api/v1/namespaces/remora-system/secrets/remora-webhook-certs";
const SECRETS_PATH: &str = "/api/v1/namespaces/remora-system/secrets";
const MWC_PATH: &str =
    "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/remora-sidecar-injector";
const VWC: &str = "remora-rules-validator";
const VWC_PATH: &str =
    "/apis/admissionregistration.k8s.io/v1/validatingwebhookconfigurations/remora-rules-validator";
const SERVER_NAME: &str = "remora-webhook.remora-system.svc";
const DAY: Duration = Duration::from_secs(86_400);
/// How long a wait for something that happens within a second or two normally may take on a
/// slow, loaded CI machine (waits poll and end as soon as the condition holds).
const PATIENCE: Duration = Duration::from_secs(60);

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/kube-api/certs")
        .join(name)
}

fn policy() -> Policy {
    Policy {
        service: "remora-webhook".into(),
        namespace: NS.into(),
        cert_validity: 90 * DAY,
        ca_validity: 3650 * DAY,
        rotate_before: 30 * DAY,
    }
}

fn options(check_interval: Duration) -> Options {
    Options {
        policy: policy(),
        secret: SECRET.into(),
        webhook_config: MWC.into(),
        check_interval,
        retry_interval: Duration::from_millis(200),
    }
}

/// 2026-11-22T00:00:00Z
fn t0() -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(1_795_305_600).unwrap()
}

fn issued_at(at: OffsetDateTime) -> Material {
    match issue::plan(None, &policy(), at).unwrap() {
        Plan::Write { material, .. } => material,
        Plan::Keep { .. } => unreachable!("no Secret means a write"),
    }
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn unb64(v: &Value) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(v.as_str().expect("base64 string"))
        .expect("valid base64")
}

/// A Secret as the API server returns it (core/v1), holding `m` at `rv`.
fn secret_body(m: &Material, rv: &str) -> Value {
    let data: serde_json::Map<String, Value> = m
        .to_data()
        .into_iter()
        .map(|(k, v)| (k, Value::String(b64(&v))))
        .collect();
    json!({
        "kind": "Secret",
        "apiVersion": "v1",
        "metadata": {
            "name": SECRET,
            "namespace": NS,
            "uid": "7c9e6679-7425-40de-944b-e07fc1f90ae7",
            "resourceVersion": rv,
            "creationTimestamp": "2026-11-01T08:00:00Z",
            "labels": {"app.kubernetes.io/managed-by": "remora-webhook"}
        },
        "type": "kubernetes.io/tls",
        "data": data
    })
}

/// The recorded MutatingWebhookConfiguration with `bundle` already in its webhooks (the four
/// entries of the shipped default revision).
fn mwc_with_bundle(bundle: &[u8]) -> Value {
    let text = std::fs::read_to_string(fixture("webhook-config.json")).unwrap();
    let doc: Value = serde_json::from_str(&text).unwrap();
    let mut body = doc["exchanges"][0]["body"].clone();
    for w in body["webhooks"].as_array_mut().unwrap() {
        w["clientConfig"]["caBundle"] = json!(b64(bundle));
    }
    body
}

/// The recorded ValidatingWebhookConfiguration with `bundle` already in its webhooks.
fn vwc_with_bundle(bundle: &[u8]) -> Value {
    let text = std::fs::read_to_string(fixture("validating-config.json")).unwrap();
    let doc: Value = serde_json::from_str(&text).unwrap();
    let mut body = doc["exchanges"][0]["body"].clone();
    for w in body["webhooks"].as_array_mut().unwrap() {
        w["clientConfig"]["caBundle"] = json!(b64(bundle));
    }
    body
}

fn vwc_absent(api: &RecordedApi) {
    api.on(
        "GET",
        VWC_PATH,
        Reply::status(
            404,
            "NotFound",
            "validatingwebhookconfigurations.admissionregistration.k8s.io \"remora-rules-validator\" not found",
        ),
    );
}

fn store(api: &RecordedApi) -> Store {
    Store::new(api.client().unwrap(), NS, SECRET, MWC, VWC)
}

const MWCS_PATH: &str = "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations";
/// The list of the default revision's tag configurations (the selector's `,` and `=` escaped
/// as kube's client sends them).
const TAG_LIST: &str = "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations?labelSelector=remora.dev%2Ftag%2Cremora.dev%2Frevision%3Ddefault";

fn tag_path(tag: &str) -> String {
    format!(
        "{MWCS_PATH}/{}",
        remora_webhook::selectors::tag_config_name(tag)
    )
}

/// Tag `tag`'s configuration of the default revision as the API server returns
/// `remora-webhook manifest --tag TAG --revision default` after `kubectl apply` (server-set
/// metadata added), with `bundle` in its webhooks when given.
fn tag_config(tag: &str, rv: &str, bundle: Option<&[u8]>) -> Value {
    let mut c = remora_webhook::selectors::tag_configuration(tag, "default");
    c["metadata"]["uid"] = json!(format!("6b1a7c52-0d0e-4d7e-9c43-{rv:0>12}"));
    c["metadata"]["resourceVersion"] = json!(rv);
    c["metadata"]["generation"] = json!(1);
    c["metadata"]["creationTimestamp"] = json!("2026-11-22T00:00:00Z");
    for w in c["webhooks"].as_array_mut().unwrap() {
        if let Some(b) = bundle {
            w["clientConfig"]["caBundle"] = json!(b64(b));
        }
    }
    c
}

/// A `MutatingWebhookConfigurationList` of `items`, as the API server answers a LIST.
fn config_list(items: Vec<Value>) -> Value {
    json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfigurationList",
        "metadata": {"resourceVersion": "5120"},
        "items": items,
    })
}

/// The PATCH requests sent to `path`.
fn patches_to(api: &RecordedApi, path: &str) -> Vec<Value> {
    api.requests()
        .into_iter()
        .filter(|s| s.method == "PATCH" && s.path() == path)
        .filter_map(|s| s.body)
        .collect()
}

/// The requests seen, as `METHOD path` lines.
fn calls(api: &RecordedApi) -> Vec<String> {
    api.requests()
        .iter()
        .map(|s| format!("{} {}", s.method, s.path()))
        .collect()
}

fn only<'a>(seen: &'a [Seen], method: &str) -> Vec<&'a Seen> {
    seen.iter().filter(|s| s.method == method).collect()
}

/// The Material a POST or PUT body carries.
fn material_of(body: &Value) -> Material {
    let d = &body["data"];
    let get = |k: &str| String::from_utf8(unb64(&d[k])).unwrap();
    Material {
        tls_crt: get("tls.crt"),
        tls_key: get("tls.key"),
        ca_crt: get("ca.crt"),
        ca_key: get("ca.key"),
    }
}

/// The caBundle values a PATCH body (RFC 6902) writes.
fn patched_bundles(body: &Value) -> Vec<Vec<u8>> {
    body.as_array()
        .expect("a JSON patch is an array")
        .iter()
        .filter(|op| {
            op["op"] == "add"
                && op["path"]
                    .as_str()
                    .is_some_and(|p| p.ends_with("/clientConfig/caBundle"))
        })
        .map(|op| unb64(&op["value"]))
        .collect()
}

fn first_cert(pem: &str) -> CertificateDer<'static> {
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .next()
        .unwrap()
        .unwrap()
}

#[tokio::test]
async fn first_start_creates_the_secret_and_patches_the_ca_bundle() {
    remora_webhook::tls::install_provider();
    let api = RecordedApi::start().await.unwrap();
    api.load(&fixture("secret-absent.json")).unwrap();
    api.load(&fixture("webhook-config.json")).unwrap();
    api.load(&fixture("validating-config.json")).unwrap();
    let created = issued_at(t0());
    api.on(
        "POST",
        SECRETS_PATH,
        Reply::json(201, secret_body(&created, "1001")),
    );

    let r = certs::reconcile(&store(&api), &options(DAY), t0())
        .await
        .unwrap();
    assert_eq!(r.settled, Settled::Created);
    assert_eq!(r.bundle, Ok(4), "the four entries");
    // Both of its webhooks: rules ConfigMaps and Istio objects.
    assert_eq!(r.validating_bundle, Ok(Some(2)));
    assert_eq!(
        calls(&api),
        [
            format!("GET {SECRET_PATH}"),
            format!("POST {SECRETS_PATH}"),
            format!("GET {MWC_PATH}"),
            format!("PATCH {MWC_PATH}"),
            format!("GET {VWC_PATH}"),
            format!("PATCH {VWC_PATH}"),
        ]
    );
    let seen = api.requests();
    assert!(seen.iter().all(|s| s.matched));
    let post = only(&seen, "POST")[0].body.clone().unwrap();
    assert_eq!(post["kind"], "Secret");
    assert_eq!(post["type"], "kubernetes.io/tls");
    assert_eq!(post["metadata"]["name"], SECRET);
    assert_eq!(post["metadata"]["namespace"], NS);
    assert!(post["metadata"].get("resourceVersion").is_none());
    let stored = material_of(&post);
    assert_eq!(stored, r.material, "serves exactly what it stored");

    let patch = only(&seen, "PATCH")[0];
    assert_eq!(
        patch.content_type.as_deref(),
        Some("application/json-patch+json")
    );
    let body = patch.body.clone().unwrap();
    // Every entry of the configuration, each after a test of its name.
    let names: Vec<&str> = body
        .as_array()
        .unwrap()
        .iter()
        .filter(|op| op["op"] == "test")
        .map(|op| op["value"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "rev.namespace.sidecar-injector.remora.dev",
            "rev.object.sidecar-injector.remora.dev",
            "namespace.sidecar-injector.remora.dev",
            "object.sidecar-injector.remora.dev"
        ]
    );
    assert_eq!(
        body[0],
        json!({"op": "test", "path": "/webhooks/0/name", "value": "rev.namespace.sidecar-injector.remora.dev"})
    );
    assert_eq!(
        patched_bundles(&body),
        vec![stored.ca_crt.as_bytes().to_vec(); 4]
    );
    // The ValidatingWebhookConfiguration gets the same bundle, by the same kind of patch.
    let vpatch = seen
        .iter()
        .find(|s| s.method == "PATCH" && s.path() == VWC_PATH)
        .unwrap();
    assert_eq!(
        vpatch.content_type.as_deref(),
        Some("application/json-patch+json")
    );
    let vbody = vpatch.body.clone().unwrap();
    assert_eq!(
        vbody,
        json!([
            {"op": "test", "path": "/webhooks/0/name", "value": "rules-validator.remora.dev"},
            {"op": "add", "path": "/webhooks/0/clientConfig/caBundle", "value": b64(stored.ca_crt.as_bytes())},
            {"op": "test", "path": "/webhooks/1/name", "value": "istio-objects.remora.dev"},
            {"op": "add", "path": "/webhooks/1/clientConfig/caBundle", "value": b64(stored.ca_crt.as_bytes())},
        ])
    );
    // Applied to the recorded object, it yields a valid ValidatingWebhookConfiguration whose
    // bundle is current (a second reconcile would not patch).
    let mut recorded = vwc_with_bundle(b"");
    recorded["webhooks"][0]["clientConfig"]
        .as_object_mut()
        .unwrap()
        .remove("caBundle");
    let patch: json_patch::Patch = serde_json::from_value(vbody).unwrap();
    json_patch::patch(&mut recorded, &patch).unwrap();
    let after: k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration =
        serde_json::from_value(recorded).unwrap();
    assert!(
        certs::validating_ca_bundle_patch(&after, stored.ca_crt.as_bytes())
            .unwrap()
            .is_none()
    );

    // The patched bundle verifies the stored serving certificate for the Service's name.
    let ca = first_cert(&stored.ca_crt);
    let leaf = first_cert(&stored.tls_crt);
    issue::verify_chain(&leaf, &[], &ca, SERVER_NAME, t0()).unwrap();
}

#[tokio::test]
async fn a_valid_secret_and_current_bundle_mean_no_writes() {
    remora_webhook::tls::install_provider();
    let api = RecordedApi::start().await.unwrap();
    let m = issued_at(t0());
    api.on(
        "GET",
        SECRET_PATH,
        Reply::json(200, secret_body(&m, "2001")),
    );
    api.on(
        "GET",
        MWC_PATH,
        Reply::json(200, mwc_with_bundle(m.ca_crt.as_bytes())),
    );
    api.on(
        "GET",
        VWC_PATH,
        Reply::json(200, vwc_with_bundle(m.ca_crt.as_bytes())),
    );

    let r = certs::reconcile(&store(&api), &options(DAY), t0() + 10 * DAY)
        .await
        .unwrap();
    assert_eq!(r.settled, Settled::Kept);
    assert_eq!(r.bundle, Ok(0));
    assert_eq!(r.validating_bundle, Ok(Some(0)));
    assert_eq!(r.material, m);
    assert_eq!(
        calls(&api),
        [
            format!("GET {SECRET_PATH}"),
            format!("GET {MWC_PATH}"),
            format!("GET {VWC_PATH}")
        ]
    );
}

#[tokio::test]
async fn a_lost_create_race_serves_the_winners_certificate() {
    remora_webhook::tls::install_provider();
    let api = RecordedApi::start().await.unwrap();
    api.load(&fixture("secret-absent.json")).unwrap();
    let winner = issued_at(t0());
    // After the 404, the next GET sees what the other replica created.
    api.on(
        "GET",
        SECRET_PATH,
        Reply::json(200, secret_body(&winner, "3001")),
    );
    api.load(&fixture("create-already-exists.json")).unwrap();
    api.load(&fixture("webhook-config.json")).unwrap();
    api.load(&fixture("validating-config.json")).unwrap();

    let r = certs::reconcile(&store(&api), &options(DAY), t0())
        .await
        .unwrap();
    assert_eq!(r.settled, Settled::LostRace);
    assert_eq!(r.material, winner);
    assert_eq!(
        calls(&api),
        [
            format!("GET {SECRET_PATH}"),
            format!("POST {SECRETS_PATH}"),
            format!("GET {SECRET_PATH}"),
            format!("GET {MWC_PATH}"),
            format!("PATCH {MWC_PATH}"),
            format!("GET {VWC_PATH}"),
            format!("PATCH {VWC_PATH}"),
        ]
    );
    assert_eq!(
        patched_bundles(&patches_to(&api, VWC_PATH)[0]),
        vec![winner.ca_crt.as_bytes().to_vec(); 2],
        "the validating bundle is the winner's CA too"
    );
    let seen = api.requests();
    let lost = material_of(only(&seen, "POST")[0].body.as_ref().unwrap());
    assert_ne!(lost, winner, "our own attempt differed");
    let patch = only(&seen, "PATCH")[0].body.clone().unwrap();
    assert_eq!(
        patched_bundles(&patch),
        vec![winner.ca_crt.as_bytes().to_vec(); 4],
        "the bundle is the winner's CA, not ours"
    );
}

#[tokio::test]
async fn a_lost_update_race_rereads_and_serves_the_winners_certificate() {
    remora_webhook::tls::install_provider();
    let api = RecordedApi::start().await.unwrap();
    // Stored 70 days ago: 20 days left < 30 days rotate-before.
    let stale = issued_at(t0() - 70 * DAY);
    let winner = issued_at(t0());
    api.on(
        "GET",
        SECRET_PATH,
        Reply::json(200, secret_body(&stale, "4001")),
    );
    api.on(
        "GET",
        SECRET_PATH,
        Reply::json(200, secret_body(&winner, "4002")),
    );
    api.load(&fixture("update-conflict.json")).unwrap();
    api.on(
        "GET",
        MWC_PATH,
        Reply::json(200, mwc_with_bundle(winner.ca_crt.as_bytes())),
    );
    vwc_absent(&api);

    let r = certs::reconcile(&store(&api), &options(DAY), t0())
        .await
        .unwrap();
    assert_eq!(r.settled, Settled::LostRace);
    assert_eq!(r.material, winner);
    assert_eq!(r.bundle, Ok(0));
    assert_eq!(r.validating_bundle, Ok(None), "absent: not an error");
    assert!(!r.bundle_failed());
    assert_eq!(
        calls(&api),
        [
            format!("GET {SECRET_PATH}"),
            format!("PUT {SECRET_PATH}"),
            format!("GET {SECRET_PATH}"),
            format!("GET {MWC_PATH}"),
            format!("GET {VWC_PATH}"),
        ]
    );
    let seen = api.requests();
    let put = only(&seen, "PUT")[0].body.clone().unwrap();
    assert_eq!(
        put["metadata"]["resourceVersion"], "4001",
        "the update names the version it read (optimistic concurrency)"
    );
}

#[tokio::test]
async fn a_serving_cert_near_expiry_is_rotated_under_the_same_ca() {
    remora_webhook::tls::install_provider();
    let api = RecordedApi::start().await.unwrap();
    let stale = issued_at(t0() - 70 * DAY);
    api.on(
        "GET",
        SECRET_PATH,
        Reply::json(200, secret_body(&stale, "5001")),
    );
    api.on(
        "PUT",
        SECRET_PATH,
        Reply::json(200, secret_body(&stale, "5002")),
    );
    api.on(
        "GET",
        MWC_PATH,
        Reply::json(200, mwc_with_bundle(stale.ca_crt.as_bytes())),
    );
    api.on(
        "GET",
        VWC_PATH,
        Reply::json(200, vwc_with_bundle(stale.ca_crt.as_bytes())),
    );

    let r = certs::reconcile(&store(&api), &options(DAY), t0())
        .await
        .unwrap();
    let Settled::Replaced(reason) = &r.settled else {
        panic!("expected a replacement, got {:?}", r.settled);
    };
    assert!(reason.contains("within --cert-rotate-before"), "{reason}");
    // Same CA, so the caBundles are already right: no PATCH.
    assert_eq!(r.bundle, Ok(0));
    assert_eq!(r.validating_bundle, Ok(Some(0)));
    assert_eq!(
        calls(&api),
        [
            format!("GET {SECRET_PATH}"),
            format!("PUT {SECRET_PATH}"),
            format!("GET {MWC_PATH}"),
            format!("GET {VWC_PATH}"),
        ]
    );
    let seen = api.requests();
    let put = only(&seen, "PUT")[0].body.clone().unwrap();
    assert_eq!(put["metadata"]["resourceVersion"], "5001");
    assert_eq!(put["type"], "kubernetes.io/tls");
    let written = material_of(&put);
    assert_eq!(written, r.material);
    assert_eq!(written.ca_crt, stale.ca_crt);
    assert_eq!(written.ca_key, stale.ca_key);
    assert_ne!(written.tls_crt, stale.tls_crt);
    let v = issue::validity_of(&written.tls_crt).unwrap();
    assert_eq!(v.not_after, t0() + 90 * DAY);
    issue::verify_chain(
        &first_cert(&written.tls_crt),
        &[],
        &first_cert(&stale.ca_crt),
        SERVER_NAME,
        t0(),
    )
    .unwrap();
}

#[tokio::test]
async fn a_ca_near_expiry_is_rotated_and_the_bundle_keeps_the_old_ca() {
    remora_webhook::tls::install_provider();
    let api = RecordedApi::start().await.unwrap();
    // CA issued 3540 days ago: 110 days left < 90 d validity + 30 d rotate-before.
    let old = issued_at(t0() - 3540 * DAY);
    api.on(
        "GET",
        SECRET_PATH,
        Reply::json(200, secret_body(&old, "5501")),
    );
    api.on(
        "PUT",
        SECRET_PATH,
        Reply::json(200, secret_body(&old, "5502")),
    );
    api.load(&fixture("webhook-config.json")).unwrap();

    let r = certs::reconcile(&store(&api), &options(DAY), t0())
        .await
        .unwrap();
    let Settled::Replaced(reason) = &r.settled else {
        panic!("expected a replacement, got {:?}", r.settled);
    };
    assert!(reason.contains("CA expires at"), "{reason}");
    let seen = api.requests();
    let put = only(&seen, "PUT")[0].body.clone().unwrap();
    assert_eq!(put["metadata"]["resourceVersion"], "5501");
    let written = material_of(&put);
    assert_ne!(written.ca_key, old.ca_key);
    let bundle: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(written.ca_crt.as_bytes())
            .collect::<Result<_, _>>()
            .unwrap();
    assert_eq!(bundle.len(), 2, "new CA, then the old one");
    assert_eq!(bundle[1], first_cert(&old.ca_crt));
    // The patched bundle verifies both the new serving certificate and the old CA's ones
    // (still served by replicas that have not re-read the Secret).
    let patch = only(&seen, "PATCH")[0].body.clone().unwrap();
    assert_eq!(
        patched_bundles(&patch),
        vec![written.ca_crt.as_bytes().to_vec(); 4]
    );
    let new_leaf = first_cert(&written.tls_crt);
    issue::verify_chain(&new_leaf, &[], &bundle[0], SERVER_NAME, t0()).unwrap();
    let renewed_old = match issue::plan(Some(&old.to_data()), &policy(), t0() - 50 * DAY).unwrap() {
        Plan::Write { material, .. } => material,
        Plan::Keep { .. } => panic!("the old serving certificate was due"),
    };
    assert_eq!(renewed_old.ca_crt, old.ca_crt, "renewed under the old CA");
    issue::verify_chain(
        &first_cert(&renewed_old.tls_crt),
        &[],
        &bundle[1],
        SERVER_NAME,
        t0(),
    )
    .unwrap();
}

#[tokio::test]
async fn a_garbage_secret_is_replaced_keeping_its_metadata() {
    remora_webhook::tls::install_provider();
    let api = RecordedApi::start().await.unwrap();
    api.load(&fixture("secret-garbage.json")).unwrap();
    let fresh = issued_at(t0());
    api.on(
        "PUT",
        SECRET_PATH,
        Reply::json(200, secret_body(&fresh, "901")),
    );
    api.load(&fixture("webhook-config.json")).unwrap();

    let r = certs::reconcile(&store(&api), &options(DAY), t0())
        .await
        .unwrap();
    let Settled::Replaced(reason) = &r.settled else {
        panic!("expected a replacement, got {:?}", r.settled);
    };
    assert!(
        reason.contains("Secret unusable (key ca.crt missing)"),
        "{reason}"
    );
    assert_eq!(r.bundle, Ok(4));
    let seen = api.requests();
    let put = only(&seen, "PUT")[0].body.clone().unwrap();
    assert_eq!(put["metadata"]["resourceVersion"], "900");
    assert_eq!(put["metadata"]["labels"]["team"], "platform", "labels kept");
    let written = material_of(&put);
    assert_eq!(written, r.material);
    let patch = only(&seen, "PATCH")[0].body.clone().unwrap();
    assert_eq!(
        patched_bundles(&patch),
        vec![written.ca_crt.as_bytes().to_vec(); 4]
    );
}

#[tokio::test]
async fn a_secret_issued_by_cert_manager_is_never_overwritten() {
    remora_webhook::tls::install_provider();
    let api = RecordedApi::start().await.unwrap();
    api.load(&fixture("secret-cert-manager.json")).unwrap();
    api.load(&fixture("webhook-config.json")).unwrap();
    let e = certs::reconcile(&store(&api), &options(DAY), t0())
        .await
        .unwrap_err();
    let msg = format!("{e:#}");
    assert!(
        msg.contains("is issued by cert-manager (Certificate remora-webhook); not touching it"),
        "{msg}"
    );
    assert_eq!(
        calls(&api),
        [format!("GET {SECRET_PATH}")],
        "no write, no patch"
    );
}

#[tokio::test]
async fn a_missing_webhook_configuration_is_reported_not_fatal() {
    remora_webhook::tls::install_provider();
    let api = RecordedApi::start().await.unwrap();
    let m = issued_at(t0());
    api.on(
        "GET",
        SECRET_PATH,
        Reply::json(200, secret_body(&m, "6001")),
    );
    api.on(
        "GET",
        MWC_PATH,
        Reply::status(
            404,
            "NotFound",
            "mutatingwebhookconfigurations.admissionregistration.k8s.io \"remora-sidecar-injector\" not found",
        ),
    );
    let r = certs::reconcile(&store(&api), &options(DAY), t0())
        .await
        .unwrap();
    assert_eq!(r.settled, Settled::Kept);
    let e = r.bundle.unwrap_err();
    assert!(e.contains("remora-sidecar-injector not found"), "{e}");
}

/// Starts the real server in process with `--manage-certs` semantics.
async fn serve_managed(
    api: &RecordedApi,
    check: Duration,
) -> (server::Running, Arc<remora_webhook::tls::CertResolver>) {
    let managed = certs::start(store(api), options(check)).await.unwrap();
    let resolver = managed.resolver.clone();
    let running = server::start_with_resolver(
        ServeOptions {
            listen: "127.0.0.1:0".parse().unwrap(),
            cert: PathBuf::from("/nonexistent/tls.crt"),
            key: PathBuf::from("/nonexistent/tls.key"),
            config: ConfigHandle::fixed(Config::default()),
            reload_poll: Duration::from_secs(10),
            drain: Duration::from_secs(2),
            limits: Default::default(),
        },
        managed.resolver,
    )
    .await
    .unwrap();
    (running, resolver)
}

#[tokio::test]
async fn the_patched_ca_bundle_verifies_the_served_certificate_over_tls() {
    remora_webhook::tls::install_provider();
    let api = RecordedApi::start().await.unwrap();
    api.load(&fixture("secret-absent.json")).unwrap();
    api.on(
        "POST",
        SECRETS_PATH,
        Reply::json(201, secret_body(&issued_at(t0()), "7001")),
    );
    api.load(&fixture("webhook-config.json")).unwrap();
    let (running, _) = serve_managed(&api, Duration::from_secs(3600)).await;

    let seen = api.requests();
    let patch = only(&seen, "PATCH")[0].body.clone().unwrap();
    let bundle = patched_bundles(&patch).remove(0);
    let stored = material_of(only(&seen, "POST")[0].body.as_ref().unwrap());

    // A client trusting only the patched bundle, verifying the Service's DNS name.
    let cfg = client_config(&[&bundle]).unwrap();
    let mut c = Client::connect(running.addr, SERVER_NAME, cfg.clone())
        .await
        .expect("handshake with the caBundle the webhook wrote");
    assert_eq!(c.peer_cert, first_cert(&stored.tls_crt).as_ref());
    let (status, body) = c.get("/healthz").await.unwrap();
    assert_eq!(status, 200, "{body:?}");
    // The full name and the short ones are in the certificate; another name is not.
    Client::connect(
        running.addr,
        "remora-webhook.remora-system.svc.cluster.local",
        cfg.clone(),
    )
    .await
    .unwrap();
    let wrong_name = Client::connect(running.addr, "other.remora-system.svc", cfg).await;
    assert!(wrong_name.is_err(), "a name outside the SANs must fail");

    // A client trusting a different CA refuses the handshake.
    let other = issued_at(OffsetDateTime::now_utc());
    let other_cfg = client_config(&[other.ca_crt.as_bytes()]).unwrap();
    let e = Client::connect(running.addr, SERVER_NAME, other_cfg)
        .await
        .err()
        .expect("a foreign CA must not verify the served certificate");
    let msg = format!("{e:#}");
    assert!(
        msg.contains("UnknownIssuer")
            || msg.contains("BadSignature")
            || msg.contains("invalid peer certificate"),
        "{msg}"
    );
    running.shutdown().await;
}

#[tokio::test]
async fn a_rotation_by_another_replica_is_served_without_restart() {
    remora_webhook::tls::install_provider();
    let now = OffsetDateTime::now_utc();
    let api = RecordedApi::start().await.unwrap();
    // Start with a Secret due for rotation: the server rotates it itself (same CA)...
    let stale = issued_at(now - 70 * DAY);
    api.on(
        "GET",
        SECRET_PATH,
        Reply::json(200, secret_body(&stale, "8001")),
    );
    api.on(
        "PUT",
        SECRET_PATH,
        Reply::json(200, secret_body(&stale, "8002")),
    );
    api.on(
        "GET",
        MWC_PATH,
        Reply::json(200, mwc_with_bundle(stale.ca_crt.as_bytes())),
    );
    let (running, resolver) = serve_managed(&api, Duration::from_millis(300)).await;

    // The certificate served is one the server PUT (rotated under the stale Secret's CA, which
    // the caBundle already holds), never the stale one. (The recorded GET keeps answering the
    // stale Secret, so later checks may rotate it again: compare with every PUT.)
    let cfg = client_config(&[stale.ca_crt.as_bytes()]).unwrap();
    let c = Client::connect(running.addr, SERVER_NAME, cfg.clone())
        .await
        .expect("the rotated certificate verifies against the unchanged caBundle");
    assert_ne!(c.peer_cert, first_cert(&stale.tls_crt).as_ref());
    let seen = api.requests();
    let put_leaves: Vec<CertificateDer<'static>> = only(&seen, "PUT")
        .iter()
        .map(|p| {
            let m = material_of(p.body.as_ref().unwrap());
            assert_eq!(m.ca_crt, stale.ca_crt, "rotation keeps the CA");
            first_cert(&m.tls_crt)
        })
        .collect();
    assert!(!put_leaves.is_empty(), "start-up rotated the stale Secret");
    assert!(
        put_leaves
            .iter()
            .any(|l| l.as_ref() == c.peer_cert.as_slice()),
        "serves a certificate it stored"
    );

    // ...then another replica rotates the CA: the next checks read the new Secret (the old CA
    // stays in its bundle), and new connections get the new certificate.
    let fresh = issued_at(now);
    let next = Material {
        ca_crt: format!("{}{}", fresh.ca_crt, stale.ca_crt),
        ..fresh
    };
    api.on(
        "GET",
        SECRET_PATH,
        Reply::json(200, secret_body(&next, "8003")),
    );
    api.on(
        "GET",
        MWC_PATH,
        Reply::json(200, mwc_with_bundle(stale.ca_crt.as_bytes())),
    );
    api.on(
        "PATCH",
        MWC_PATH,
        Reply::json(200, mwc_with_bundle(next.ca_crt.as_bytes())),
    );
    let want = first_cert(&next.tls_crt);
    let mut served = false;
    let deadline = Instant::now() + PATIENCE;
    while Instant::now() < deadline {
        if resolver.current_chain().first() == Some(&want) {
            served = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        served,
        "the stored rotation was not picked up within {PATIENCE:?}"
    );
    // The new bundle (new CA + old CA) verifies the new certificate over TLS.
    let seen = api.requests();
    let bundle = only(&seen, "PATCH")
        .last()
        .and_then(|p| patched_bundles(p.body.as_ref().unwrap()).pop())
        .expect("the new bundle was patched in");
    assert_eq!(bundle, next.ca_crt.as_bytes());
    let c = Client::connect(
        running.addr,
        SERVER_NAME,
        client_config(&[&bundle]).unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(c.peer_cert, want.as_ref());
    // The valid stored rotation is adopted, not rewritten: later checks write nothing.
    // (Until `next` was queued, the recorded GET kept answering the stale Secret, so the
    // server may have rotated it more than once; that is the recording, not a race.)
    let puts_before = only(&api.requests(), "PUT").len();
    let gets_before = api
        .requests()
        .iter()
        .filter(|s| s.method == "GET" && s.path() == SECRET_PATH)
        .count();
    let mut rechecked = false;
    let deadline = Instant::now() + PATIENCE;
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let gets = api
            .requests()
            .iter()
            .filter(|s| s.method == "GET" && s.path() == SECRET_PATH)
            .count();
        if gets >= gets_before + 2 {
            rechecked = true;
            break;
        }
    }
    assert!(rechecked, "the manager stopped checking");
    assert_eq!(only(&api.requests(), "PUT").len(), puts_before);
    assert_eq!(resolver.current_chain().first(), Some(&want));
    running.shutdown().await;
}

/// The real binary: `remora-webhook serve --manage-certs --kube-url …` creates the Secret,
/// patches the caBundle, logs its decisions, and serves a certificate that bundle verifies.
#[tokio::test]
async fn the_binary_with_manage_certs_serves_what_it_patched() {
    remora_webhook::tls::install_provider();
    let bin = remora_e2e::admission::default_bin_dir().join("remora-webhook");
    assert!(
        bin.exists(),
        "{} is missing: build it first (cargo build -p remora-webhook)",
        bin.display()
    );
    let api = RecordedApi::start().await.unwrap();
    api.load(&fixture("webhook-config.json")).unwrap();
    api.load(&fixture("validating-config.json")).unwrap();
    // The default revision's (the binary's) tag configurations: `prod` at start, `canary`
    // applied later (listed from then on, and announced on the held watch).
    let prod = tag_config("prod", "3001", None);
    let canary = tag_config("canary", "3002", None);
    let tags = Arc::new(std::sync::Mutex::new(vec![prod.clone()]));
    let listed = tags.clone();
    // The Secret: absent (the recorded 404) until the webhook creates it, then what it stored
    // (later checks keep it).
    let absent: Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("secret-absent.json")).unwrap())
            .unwrap();
    let absent = absent["exchanges"][0]["body"].clone();
    let stored_secret = Arc::new(std::sync::Mutex::new(None::<Value>));
    api.fallback(Arc::new(move |seen: &Seen| {
        match (seen.method.as_str(), seen.path()) {
            ("GET", MWCS_PATH) if !seen.query().iter().any(|(k, _)| k == "watch") => Some(
                Reply::json(200, config_list(listed.lock().unwrap().clone())),
            ),
            ("POST", SECRETS_PATH) => {
                let body = secret_body(&material_of(seen.body.as_ref()?), "9001");
                *stored_secret.lock().unwrap() = Some(body.clone());
                Some(Reply::json(201, body))
            }
            ("GET", SECRET_PATH) => Some(match stored_secret.lock().unwrap().clone() {
                Some(b) => Reply::json(200, b),
                None => Reply::json(404, absent.clone()),
            }),
            _ => None,
        }
    }));
    api.on(
        "GET",
        &format!("{TAG_LIST}&watch=true"),
        Reply::watch(Vec::new(), true),
    );
    api.on("PATCH", &tag_path("prod"), Reply::json(200, prod));
    api.on(
        "PATCH",
        &tag_path("canary"),
        Reply::json(200, canary.clone()),
    );
    // Outside the ephemeral range: a released port 0 could be taken by a parallel test's client
    // socket before the webhook binds it.
    let port = remora_e2e::ports::free_port();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("webhook.log");
    let mut cmd = std::process::Command::new(&bin);
    cmd.args([
        "serve",
        "--ca-addr",
        "off",
        "--manage-certs",
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--config",
        &dir.path().join("absent.yaml").display().to_string(),
        "--kube-url",
        &api.url(),
        "--cert-check-interval",
        "1h",
    ])
    .env_remove("POD_NAMESPACE")
    .env("REMORA_LOG", "info");
    let mut proc = remora_e2e::netns::Proc::spawn("remora-webhook", cmd, log.clone()).unwrap();

    // Bounded wait for the caBundle PATCHes, then for the port.
    let mut bundle = None;
    let deadline = Instant::now() + PATIENCE;
    while Instant::now() < deadline {
        if let (Some(p), Some(v), Some(t)) = (
            patches_to(&api, MWC_PATH).first(),
            patches_to(&api, VWC_PATH).first(),
            patches_to(&api, &tag_path("prod")).first(),
        ) {
            bundle = patched_bundles(p).pop();
            assert_eq!(
                patched_bundles(v).pop(),
                bundle,
                "both configurations get the same bundle"
            );
            assert_eq!(patched_bundles(t).pop(), bundle, "and the revision's tag");
            break;
        }
        assert!(
            proc.exited().is_none(),
            "exited early:\n{}",
            proc.log_tail(20)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let bundle = bundle.unwrap_or_else(|| panic!("no caBundle PATCH:\n{}", proc.log_tail(20)));
    // A tag applied while it runs gets the bundle from the watch, not the next check (1h).
    let deadline = Instant::now() + PATIENCE;
    while api.open_watches(MWCS_PATH) == 0 {
        assert!(
            Instant::now() < deadline,
            "no tag watch:\n{}",
            proc.log_tail(20)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tags.lock().unwrap().push(canary.clone());
    let applied = Instant::now();
    api.emit(MWCS_PATH, remora_e2e::apiserver::event("ADDED", canary));
    let mut canary_bundle = None;
    while Instant::now() < applied + PATIENCE {
        if let Some(p) = patches_to(&api, &tag_path("canary")).first() {
            canary_bundle = patched_bundles(p).pop();
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let took = applied.elapsed();
    assert_eq!(
        canary_bundle.as_ref(),
        Some(&bundle),
        "the applied tag gets the bundle:\n{}",
        proc.log_tail(20)
    );
    assert!(took < Duration::from_secs(10), "took {took:?}");
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let cfg = client_config(&[&bundle]).unwrap();
    let mut client = None;
    let deadline = Instant::now() + PATIENCE;
    while Instant::now() < deadline {
        match Client::connect(addr, SERVER_NAME, cfg.clone()).await {
            Ok(c) => {
                client = Some(c);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    let mut c = client.unwrap_or_else(|| panic!("no TLS handshake:\n{}", proc.log_tail(20)));
    let stored = material_of(only(&api.requests(), "POST")[0].body.as_ref().unwrap());
    assert_eq!(c.peer_cert, first_cert(&stored.tls_crt).as_ref());
    assert_eq!(c.get("/readyz").await.unwrap().0, 200);
    let other = issued_at(OffsetDateTime::now_utc());
    let other_cfg = client_config(&[other.ca_crt.as_bytes()]).unwrap();
    assert!(Client::connect(addr, SERVER_NAME, other_cfg).await.is_err());

    proc.stop(Duration::from_secs(10));
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains(
            "no Secret yet: issued a new CA and serving certificate; stored (create), serving it"
        ),
        "{text}"
    );
    assert!(
        text.contains("caBundle updated on 4 webhook(s) of MutatingWebhookConfiguration remora-sidecar-injector"),
        "{text}"
    );
    assert!(
        text.contains("caBundle updated on 2 webhook(s) of ValidatingWebhookConfiguration remora-rules-validator"),
        "{text}"
    );
    assert!(
        text.contains("of revision tag configuration remora-revision-tag-prod"),
        "{text}"
    );
}

/// The real binary without the ValidatingWebhookConfiguration (installed later, or rules
/// validation left out): it serves, patches the mutating one, says once that the validating one
/// is missing (not at every check), and patches the validating one once it appears.
#[tokio::test]
async fn a_missing_validating_configuration_is_logged_once_and_patched_when_it_appears() {
    remora_webhook::tls::install_provider();
    let bin = remora_e2e::admission::default_bin_dir().join("remora-webhook");
    assert!(
        bin.exists(),
        "{} is missing: build it first (cargo build -p remora-webhook)",
        bin.display()
    );
    let api = RecordedApi::start().await.unwrap();
    let m = issued_at(OffsetDateTime::now_utc());
    api.on(
        "GET",
        SECRET_PATH,
        Reply::json(200, secret_body(&m, "9601")),
    );
    api.on(
        "GET",
        MWC_PATH,
        Reply::json(200, mwc_with_bundle(m.ca_crt.as_bytes())),
    );
    vwc_absent(&api);
    // Outside the ephemeral range: a released port 0 could be taken by a parallel test's client
    // socket before the webhook binds it.
    let port = remora_e2e::ports::free_port();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("webhook.log");
    let mut cmd = std::process::Command::new(&bin);
    cmd.args([
        "serve",
        "--ca-addr",
        "off",
        "--manage-certs",
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--config",
        &dir.path().join("absent.yaml").display().to_string(),
        "--kube-url",
        &api.url(),
        "--cert-check-interval",
        "1s",
    ])
    .env_remove("POD_NAMESPACE")
    .env_remove("REMORA_VALIDATING_WEBHOOK_CONFIG")
    .env("REMORA_LOG", "info");
    let mut proc = remora_e2e::netns::Proc::spawn("remora-webhook", cmd, log.clone()).unwrap();
    let vwc_gets = |api: &RecordedApi| {
        calls(api)
            .iter()
            .filter(|c| *c == &format!("GET {VWC_PATH}"))
            .count()
    };
    // Three checks (start-up and two more) see it missing.
    let deadline = Instant::now() + PATIENCE;
    while Instant::now() < deadline {
        if vwc_gets(&api) >= 3 {
            break;
        }
        assert!(proc.exited().is_none(), "exited:\n{}", proc.log_tail(20));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(vwc_gets(&api) >= 3, "{:?}", calls(&api));
    // Not fatal: the server is up and serves a certificate the CA verifies.
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let cfg = client_config(&[m.ca_crt.as_bytes()]).unwrap();
    // The listener may still be coming up on a loaded machine: retry the connection (bounded).
    let deadline = Instant::now() + PATIENCE;
    let mut c = loop {
        match Client::connect(addr, SERVER_NAME, cfg.clone()).await {
            Ok(c) => break c,
            Err(e) => {
                assert!(
                    Instant::now() < deadline,
                    "no TLS handshake: {e:#}\n{}",
                    proc.log_tail(20)
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    assert_eq!(c.get("/readyz").await.unwrap().0, 200);
    assert!(patches_to(&api, VWC_PATH).is_empty());

    // It appears: the next check patches it.
    api.load(&fixture("validating-config.json")).unwrap();
    let mut patched = None;
    let deadline = Instant::now() + PATIENCE;
    while Instant::now() < deadline {
        if let Some(p) = patches_to(&api, VWC_PATH).first() {
            patched = patched_bundles(p).pop();
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        patched.as_deref(),
        Some(m.ca_crt.as_bytes()),
        "{:?}",
        calls(&api)
    );
    proc.stop(Duration::from_secs(10));
    let text = std::fs::read_to_string(&log).unwrap();
    let missing = text
        .lines()
        .filter(|l| l.contains("ValidatingWebhookConfiguration remora-rules-validator not found"))
        .count();
    assert_eq!(missing, 1, "logged once, not at every check:\n{text}");
    assert!(
        text.contains("ValidatingWebhookConfiguration remora-rules-validator exists now"),
        "{text}"
    );
    assert!(
        text.contains("caBundle updated on 2 webhook(s) of ValidatingWebhookConfiguration remora-rules-validator"),
        "{text}"
    );
}

/// A webhook configuration that appears after the server started (install order) gets the
/// bundle on a retry, without waiting for the next hourly check.
#[tokio::test]
async fn a_webhook_configuration_created_later_gets_the_bundle_on_retry() {
    remora_webhook::tls::install_provider();
    let api = RecordedApi::start().await.unwrap();
    let m = issued_at(OffsetDateTime::now_utc());
    api.on(
        "GET",
        SECRET_PATH,
        Reply::json(200, secret_body(&m, "9501")),
    );
    api.on(
        "GET",
        MWC_PATH,
        Reply::status(
            404,
            "NotFound",
            "mutatingwebhookconfigurations.admissionregistration.k8s.io \"remora-sidecar-injector\" not found",
        ),
    );
    api.load(&fixture("webhook-config.json")).unwrap();
    let (running, _) = serve_managed(&api, Duration::from_secs(3600)).await;
    let mut patched = None;
    let deadline = Instant::now() + PATIENCE;
    while Instant::now() < deadline {
        if let Some(p) = only(&api.requests(), "PATCH").first() {
            patched = patched_bundles(p.body.as_ref().unwrap()).pop();
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        patched.as_deref(),
        Some(m.ca_crt.as_bytes()),
        "no caBundle PATCH after the configuration appeared: {:?}",
        calls(&api)
    );
    let gets = calls(&api)
        .iter()
        .filter(|c| *c == &format!("GET {MWC_PATH}"))
        .count();
    assert_eq!(gets, 2, "one 404, one retry");
    running.shutdown().await;
}

/// The recorded ValidatingWebhookConfiguration is what the API server returns for the one in
/// `manifests/webhook.yaml`: the same webhooks plus only server-set metadata and the
/// `objectSelector: {}` default.
#[test]
fn the_validating_fixture_is_the_manifest_as_served() {
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests/webhook.yaml"),
    )
    .unwrap();
    let manifest: Value = serde_yaml_ng::Deserializer::from_str(&text)
        .filter_map(|d| serde::Deserialize::deserialize(d).ok())
        .find(|d: &Value| d["kind"] == "ValidatingWebhookConfiguration")
        .expect("manifests/webhook.yaml has a ValidatingWebhookConfiguration");
    let served = vwc_with_bundle(b"");
    let mut webhooks = served["webhooks"].clone();
    for w in webhooks.as_array_mut().unwrap() {
        w["clientConfig"]
            .as_object_mut()
            .unwrap()
            .remove("caBundle");
        assert_eq!(w["objectSelector"], json!({}), "the API server's default");
        w.as_object_mut().unwrap().remove("objectSelector");
    }
    assert_eq!(webhooks, manifest["webhooks"]);
    assert_eq!(served["metadata"]["name"], manifest["metadata"]["name"]);
    assert_eq!(served["metadata"]["labels"], manifest["metadata"]["labels"]);
    assert_eq!(served["metadata"]["name"], VWC);
    for k in ["uid", "resourceVersion", "creationTimestamp", "generation"] {
        assert!(served["metadata"].get(k).is_some(), "server-set {k}");
    }
}

/// An empty `--validating-webhook-config` turns the validating caBundle off: no request for it.
#[tokio::test]
async fn an_empty_validating_name_is_not_managed() {
    remora_webhook::tls::install_provider();
    let api = RecordedApi::start().await.unwrap();
    let m = issued_at(t0());
    api.on(
        "GET",
        SECRET_PATH,
        Reply::json(200, secret_body(&m, "9701")),
    );
    api.on(
        "GET",
        MWC_PATH,
        Reply::json(200, mwc_with_bundle(m.ca_crt.as_bytes())),
    );
    api.load(&fixture("validating-config.json")).unwrap();
    let store = Store::new(api.client().unwrap(), NS, SECRET, MWC, "");
    let r = certs::reconcile(&store, &options(DAY), t0()).await.unwrap();
    assert_eq!(r.validating_bundle, Ok(None));
    assert_eq!(
        calls(&api),
        [format!("GET {SECRET_PATH}"), format!("GET {MWC_PATH}")]
    );
}

/// Revision tags (`remora-webhook manifest --tag`): every configuration labelled with a tag and
/// the webhook's revision gets the bundle, by the same guarded patch, only where it differs; a
/// tag whose bundle is current is not written; a failed patch is reported (the manager retries
/// sooner) without stopping the others.
#[tokio::test]
async fn revision_tag_configurations_get_the_bundle() {
    remora_webhook::tls::install_provider();
    let api = RecordedApi::start().await.unwrap();
    let m = issued_at(t0());
    api.on(
        "GET",
        SECRET_PATH,
        Reply::json(200, secret_body(&m, "2001")),
    );
    api.on(
        "GET",
        MWC_PATH,
        Reply::json(200, mwc_with_bundle(m.ca_crt.as_bytes())),
    );
    api.on(
        "GET",
        VWC_PATH,
        Reply::json(200, vwc_with_bundle(m.ca_crt.as_bytes())),
    );
    let prod = tag_config("prod", "3001", None);
    let canary = tag_config("canary", "3002", Some(m.ca_crt.as_bytes()));
    let old = tag_config("old", "3003", Some(b"an older CA"));
    api.on(
        "GET",
        TAG_LIST,
        Reply::json(200, config_list(vec![prod.clone(), canary, old])),
    );
    api.on("PATCH", &tag_path("prod"), Reply::json(200, prod.clone()));
    api.on(
        "PATCH",
        &tag_path("old"),
        Reply::status(
            403,
            "Forbidden",
            "mutatingwebhookconfigurations.admissionregistration.k8s.io \"remora-revision-tag-old\" is forbidden",
        ),
    );

    let r = certs::reconcile(&store(&api).with_tags_of("default"), &options(DAY), t0())
        .await
        .unwrap();
    assert_eq!(r.settled, Settled::Kept);
    assert_eq!(r.bundle, Ok(0));
    let err = r.tag_bundle.clone().unwrap_err();
    assert!(
        err.contains("MutatingWebhookConfiguration remora-revision-tag-old: patch failed"),
        "{err}"
    );
    assert!(r.bundle_failed(), "a failed tag patch is retried sooner");
    assert_eq!(
        calls(&api),
        [
            format!("GET {SECRET_PATH}"),
            format!("GET {MWC_PATH}"),
            format!("GET {VWC_PATH}"),
            format!("GET {MWCS_PATH}"),
            format!("PATCH {}", tag_path("prod")),
            format!("PATCH {}", tag_path("old")),
        ]
    );
    let seen = api.requests();
    assert!(seen.iter().all(|s| s.matched), "{:?}", calls(&api));
    let list = seen.iter().find(|s| s.path() == MWCS_PATH).unwrap();
    assert!(
        list.query().contains(&(
            "labelSelector".to_string(),
            "remora.dev/tag,remora.dev/revision=default".to_string()
        )),
        "{:?}",
        list.query()
    );
    let body = patches_to(&api, &tag_path("prod")).pop().unwrap();
    let n = prod["webhooks"].as_array().unwrap().len();
    assert!(n >= 2, "a tag has its namespace and object entries");
    assert_eq!(
        patched_bundles(&body),
        vec![m.ca_crt.as_bytes().to_vec(); n]
    );
    // Applied to the tag's configuration, the bundle is current: the next check writes nothing.
    let patch: json_patch::Patch = serde_json::from_value(body).unwrap();
    let mut after = prod;
    json_patch::patch(&mut after, &patch).unwrap();
    let after: k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration =
        serde_json::from_value(after).unwrap();
    assert!(certs::ca_bundle_patch(&after, m.ca_crt.as_bytes())
        .unwrap()
        .is_none());
}
