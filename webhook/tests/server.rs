//! The webhook over real HTTPS: the in-process server on 127.0.0.1:0 with an rcgen certificate,
//! fed Istio's injection corpus (`$REMORA_SHARED/anchors/istio/inject/`) and our Bookinfo-style
//! samples (`webhook/testdata/samples/`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use clap::Parser;
use remora_webhook::client::{client_config, Client};
use remora_webhook::config::{Config, ConfigHandle};
use remora_webhook::server::{self, Running, ServeOptions};
use remora_webhook::{cli, review, workload};
use serde_json::{json, Value};

static UID: AtomicU64 = AtomicU64::new(0);
/// Injected pods whose override record raises privileges (the corpus's proxy-override case).
static RAISING_RECORDS: AtomicU64 = AtomicU64::new(0);

fn uid() -> String {
    format!(
        "uid-{}-{}",
        std::process::id(),
        UID.fetch_add(1, Ordering::Relaxed)
    )
}

fn samples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/samples")
}

struct Certs {
    _dir: tempfile::TempDir,
    cert: PathBuf,
    key: PathBuf,
    cert_pem: String,
}

fn self_signed() -> (String, String) {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    (ck.cert.pem(), ck.key_pair.serialize_pem())
}

fn certs() -> Certs {
    let dir = tempfile::tempdir().unwrap();
    let (cert_pem, key_pem) = self_signed();
    let cert = dir.path().join("tls.crt");
    let key = dir.path().join("tls.key");
    std::fs::write(&cert, &cert_pem).unwrap();
    std::fs::write(&key, &key_pem).unwrap();
    Certs {
        _dir: dir,
        cert,
        key,
        cert_pem,
    }
}

async fn start(c: &Certs, config: ConfigHandle) -> Running {
    server::start(ServeOptions {
        listen: "127.0.0.1:0".parse().unwrap(),
        cert: c.cert.clone(),
        key: c.key.clone(),
        config,
        reload_poll: Duration::from_millis(500),
        drain: Duration::from_secs(5),
        limits: Default::default(),
    })
    .await
    .unwrap()
}

async fn connect(r: &Running, c: &Certs) -> Client {
    let cfg = client_config(&[c.cert_pem.as_bytes()]).unwrap();
    Client::connect(r.addr, "localhost", cfg).await.unwrap()
}

/// Sends one pod in a review; returns the response review.
async fn review_pod(client: &mut Client, pod: &Value, ns: &str) -> Value {
    review_pod_at(client, pod, ns, "/inject").await
}

/// The shipped default revision's entry for namespaces labelled `istio-injection=enabled`.
const NAMESPACE_ENTRY: &str = "/inject/rev/default/namespace";
/// Revision canary's entry for namespaces labelled `istio.io/rev=canary`: moved to remora.
const MOVED_ENTRY: &str = "/inject/rev/canary/rev.namespace";

/// [`review_pod`] at `path` (which names the webhook entry that sends the pod).
async fn review_pod_at(client: &mut Client, pod: &Value, ns: &str, path: &str) -> Value {
    let id = uid();
    let body = serde_json::to_vec(&review::review_for(pod, &id, ns)).unwrap();
    let (status, body) = client.post(path, Bytes::from(body)).await.unwrap();
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["response"]["uid"], id.as_str());
    assert_eq!(v["kind"], "AdmissionReview");
    v
}

/// The pods a document holds (workload templates become Pods as the API server creates them).
fn pods_of(doc: &Value) -> Vec<(Value, String)> {
    let Some(ptr) = doc
        .get("kind")
        .and_then(Value::as_str)
        .and_then(workload::template_pointer)
    else {
        return vec![];
    };
    let ns = doc
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .unwrap_or("default")
        .to_string();
    if ptr.is_empty() {
        return vec![(doc.clone(), ns)];
    }
    let t = doc.pointer(ptr).unwrap();
    vec![(workload::pod_from_template(doc, t, &ns), ns)]
}

fn template_of(doc: &Value) -> Value {
    let ptr = doc
        .get("kind")
        .and_then(Value::as_str)
        .and_then(workload::template_pointer)
        .unwrap();
    if ptr.is_empty() {
        doc.clone()
    } else {
        doc.pointer(ptr).unwrap().clone()
    }
}

fn container<'a>(pod: &'a Value, list: &str, name: &str) -> Option<&'a Value> {
    pod.pointer(&format!("/spec/{list}"))
        .and_then(Value::as_array)?
        .iter()
        .find(|c| c["name"] == name)
}

fn names(pod: &Value, list: &str) -> Vec<String> {
    pod.pointer(&format!("/spec/{list}"))
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .map(|c| c["name"].as_str().unwrap_or("").to_string())
                .collect()
        })
        .unwrap_or_default()
}

fn env_value(c: &Value, name: &str) -> Option<String> {
    c.get("env")?
        .as_array()?
        .iter()
        .find(|e| e["name"] == name)
        .and_then(|e| e["value"].as_str().map(str::to_string))
}

/// The `/app-health/...` entries of an ISTIO_KUBE_APP_PROBERS value.
fn app_health(probers: Option<String>) -> BTreeMap<String, Value> {
    probers
        .and_then(|s| serde_json::from_str::<BTreeMap<String, Value>>(&s).ok())
        .unwrap_or_default()
        .into_iter()
        .filter(|(k, _)| k.starts_with("/app-health/"))
        .collect()
}

/// The value following `flag` in an args list.
fn arg<'a>(args: &'a [String], flag: &str) -> Option<&'a str> {
    args.iter()
        .position(|a| a == flag)
        .and_then(|i| args.get(i + 1))
        .map(String::as_str)
}

fn args_of(c: &Value) -> Vec<String> {
    c["args"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|x| x.as_str().unwrap_or("").to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// Every rendered init args list must parse and validate with remora-init's own flags.
fn check_init_args(pod: &Value, ctx: &str) {
    if let Some(init) = container(pod, "initContainers", "remora-init") {
        let args = args_of(init);
        // Arguments the pod itself overrides (Istio's override container) are its own business.
        let overridden: Option<Value> = pod
            .pointer("/metadata/annotations/proxy.istio.io~1overrides")
            .and_then(Value::as_str)
            .and_then(|s| serde_json::from_str::<Value>(s).ok())
            .and_then(|o| {
                o["init"]
                    .as_array()
                    .and_then(|a| a.iter().find_map(|c| c.get("args").cloned()))
            });
        if let Some(o) = overridden {
            assert_eq!(init["args"], o, "{ctx}: init override args not applied");
            return;
        }
        let flags = remora_init::flags::Flags::try_parse_from(
            std::iter::once("remora-init".to_string()).chain(args.clone()),
        )
        .unwrap_or_else(|e| panic!("{ctx}: remora-init rejects {args:?}: {e}"));
        flags
            .validate()
            .unwrap_or_else(|e| panic!("{ctx}: remora-init flags invalid {args:?}: {e}"));
        assert_eq!(init["command"], json!(["remora-init"]), "{ctx}");
    }
}

/// Applies a review's patch to `pod`, checking the patch form.
fn apply(pod: &Value, resp: &Value, ctx: &str) -> Value {
    let mut out = pod.clone();
    match review::response_patch(resp).unwrap_or_else(|e| panic!("{ctx}: {e}")) {
        Some(p) => {
            assert_eq!(resp["response"]["patchType"], "JSONPatch", "{ctx}");
            json_patch::patch(&mut out, &p)
                .unwrap_or_else(|e| panic!("{ctx}: patch does not apply: {e}"));
        }
        None => assert!(resp["response"].get("patchType").is_none(), "{ctx}"),
    }
    out
}

/// Re-injecting an injected pod must change nothing.
async fn assert_reinjection_is_noop(
    client: &mut Client,
    injected: &Value,
    ns: &str,
    path: &str,
    ctx: &str,
) {
    let again = review_pod_at(client, injected, ns, path).await;
    assert_eq!(
        again["response"]["allowed"], true,
        "{ctx}: re-injection: {again}"
    );
    let twice = apply(injected, &again, ctx);
    assert_eq!(&twice, injected, "{ctx}: re-injection changed the pod");
}

/// Does the pod's `proxy.istio.io/overrides` record choose an image or a command, or raise the
/// proxy's or init's privileges? (The rule written out independently of the webhook.)
fn record_raises(pod: &Value) -> bool {
    let Some(rec) = pod
        .pointer("/metadata/annotations/proxy.istio.io~1overrides")
        .and_then(Value::as_str)
        .and_then(|s| serde_json::from_str::<Value>(s).ok())
    else {
        return false;
    };
    ["proxy", "init"].iter().any(|role| {
        rec[*role].as_array().into_iter().flatten().any(|c| {
            let sc = &c["securityContext"];
            (c.get("image").is_some_and(|i| i != "auto"))
                || c.get("command").is_some()
                || sc["privileged"] == true
                || sc["allowPrivilegeEscalation"] == true
                || sc
                    .pointer("/capabilities/add")
                    .and_then(Value::as_array)
                    .is_some_and(|a| !a.is_empty())
                || (*role == "proxy" && sc["runAsUser"] == 0)
        })
    })
}

/// Compares our injected pod with Istio's golden pod template: decisions and structure.
fn compare_with_istio(input: &Value, ours: &Value, golden: &Value, ctx: &str) {
    let is_ours = |n: &str| n.starts_with("remora-");
    let is_istio = |n: &str| n.starts_with("istio-");
    // Native placement and init presence.
    let g_native = container(golden, "initContainers", "istio-proxy").is_some();
    let o_native = container(ours, "initContainers", "remora-proxy").is_some();
    assert_eq!(
        o_native, g_native,
        "{ctx}: native sidecar placement differs from Istio"
    );
    if o_native {
        assert_eq!(
            container(ours, "initContainers", "remora-proxy").unwrap()["restartPolicy"],
            "Always",
            "{ctx}"
        );
        assert_eq!(
            names(ours, "initContainers")[0],
            "remora-proxy",
            "{ctx}: proxy not first"
        );
    } else {
        assert!(
            container(ours, "containers", "remora-proxy").is_some(),
            "{ctx}"
        );
    }
    assert_eq!(
        container(ours, "initContainers", "remora-init").is_some(),
        container(golden, "initContainers", "istio-init").is_some(),
        "{ctx}: init container presence differs from Istio"
    );
    // The app's containers and init containers are kept, in order.
    let apps = |p: &Value, list: &str, skip: &dyn Fn(&str) -> bool| -> Vec<String> {
        names(p, list).into_iter().filter(|n| !skip(n)).collect()
    };
    assert_eq!(
        apps(ours, "containers", &is_ours),
        apps(golden, "containers", &is_istio),
        "{ctx}"
    );
    assert_eq!(
        apps(ours, "initContainers", &is_ours),
        apps(golden, "initContainers", &is_istio),
        "{ctx}"
    );
    // Probes: rewritten (or not) to the same /app-health paths.
    let app_names = apps(golden, "containers", &is_istio)
        .into_iter()
        .map(|n| ("containers", n));
    let init_names = apps(golden, "initContainers", &is_istio)
        .into_iter()
        .map(|n| ("initContainers", n));
    for (list, name) in app_names.chain(init_names) {
        let g = container(golden, list, &name).unwrap();
        let o = container(ours, list, &name).unwrap();
        for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
            let gp = g.pointer(&format!("/{probe}/httpGet/path"));
            let op = o.pointer(&format!("/{probe}/httpGet/path"));
            assert_eq!(
                op, gp,
                "{ctx}: container {name} {probe} path differs from Istio"
            );
            if gp
                .and_then(Value::as_str)
                .is_some_and(|p| p.starts_with("/app-health/"))
            {
                assert_eq!(
                    o.pointer(&format!("/{probe}/httpGet/port")),
                    Some(&json!(15020)),
                    "{ctx}"
                );
            }
        }
    }
    // The original probes travel in the same JSON.
    let g_proxy = container(golden, "initContainers", "istio-proxy")
        .or_else(|| container(golden, "containers", "istio-proxy"));
    let o_proxy = container(ours, "initContainers", "remora-proxy")
        .or_else(|| container(ours, "containers", "remora-proxy"))
        .expect("proxy");
    if let Some(g_proxy) = g_proxy {
        assert_eq!(
            app_health(env_value(o_proxy, "ISTIO_KUBE_APP_PROBERS")),
            app_health(env_value(g_proxy, "ISTIO_KUBE_APP_PROBERS")),
            "{ctx}: ISTIO_KUBE_APP_PROBERS differs from Istio"
        );
        // Resources asked for by annotation.
        let ann = input
            .pointer("/metadata/annotations")
            .cloned()
            .unwrap_or(json!({}));
        let any_annotated = [
            "sidecar.istio.io/proxyCPU",
            "sidecar.istio.io/proxyMemory",
            "sidecar.istio.io/proxyCPULimit",
            "sidecar.istio.io/proxyMemoryLimit",
        ]
        .iter()
        .any(|a| ann.get(*a).is_some());
        for (a, ptr) in [
            ("sidecar.istio.io/proxyCPU", "/resources/requests/cpu"),
            ("sidecar.istio.io/proxyMemory", "/resources/requests/memory"),
            ("sidecar.istio.io/proxyCPULimit", "/resources/limits/cpu"),
            (
                "sidecar.istio.io/proxyMemoryLimit",
                "/resources/limits/memory",
            ),
        ] {
            if any_annotated {
                // Quantities compare by value (Istio canonicalizes 1000m to 1).
                let q = |v: Option<&Value>| {
                    v.and_then(Value::as_str)
                        .map(|s| remora_webhook::annotations::parse_quantity(s).unwrap())
                };
                assert_eq!(
                    q(o_proxy.pointer(ptr)),
                    q(g_proxy.pointer(ptr)),
                    "{ctx}: {a}"
                );
            }
        }
    }
    // The CA token: Istio's istio-token shape (lifetime, mount path), our name and audience.
    if let Some(g_proxy) = g_proxy {
        let vol = |p: &Value, name: &str| -> Value {
            p.pointer("/spec/volumes")
                .and_then(Value::as_array)
                .and_then(|v| v.iter().find(|x| x["name"] == name))
                .cloned()
                .unwrap_or_else(|| panic!("{ctx}: no volume {name}"))
        };
        let mount = |c: &Value, name: &str| -> Value {
            c["volumeMounts"]
                .as_array()
                .and_then(|v| v.iter().find(|x| x["name"] == name))
                .map(|m| m["mountPath"].clone())
                .unwrap_or_else(|| panic!("{ctx}: no mount {name}"))
        };
        let (g_tok, o_tok) = (vol(golden, "istio-token"), vol(ours, "remora-ca-token"));
        let sat = "/projected/sources/0/serviceAccountToken";
        assert_eq!(
            o_tok.pointer(&format!("{sat}/expirationSeconds")),
            g_tok.pointer(&format!("{sat}/expirationSeconds")),
            "{ctx}: token lifetime differs from Istio's"
        );
        assert_eq!(
            o_tok.pointer(&format!("{sat}/audience")),
            Some(&json!("remora-ca")),
            "{ctx}"
        );
        assert_eq!(
            mount(o_proxy, "remora-ca-token"),
            mount(g_proxy, "istio-token"),
            "{ctx}: token mount path differs from Istio's"
        );
    }
    // User volumes and their proxy mounts (sidecar.istio.io/userVolume, userVolumeMount).
    if let Some(g_proxy) = g_proxy {
        let ann = input
            .pointer("/metadata/annotations")
            .cloned()
            .unwrap_or(json!({}));
        let keys = |a: &str| -> Vec<String> {
            ann.get(a)
                .and_then(Value::as_str)
                .and_then(|s| serde_json::from_str::<BTreeMap<String, Value>>(s).ok())
                .map(|m| m.into_keys().collect())
                .unwrap_or_default()
        };
        let pick = |list: Option<&Value>, name: &str| -> Option<Value> {
            list?
                .as_array()?
                .iter()
                .find(|x| x["name"] == name)
                .cloned()
        };
        for name in keys("sidecar.istio.io/userVolumeMount") {
            assert_eq!(
                pick(o_proxy.get("volumeMounts"), &name),
                pick(g_proxy.get("volumeMounts"), &name),
                "{ctx}: proxy mount {name}"
            );
        }
        for name in keys("sidecar.istio.io/userVolume") {
            assert_eq!(
                pick(ours.pointer("/spec/volumes"), &name),
                pick(golden.pointer("/spec/volumes"), &name),
                "{ctx}: volume {name}"
            );
        }
    }
    // Capture arguments: same includes and excludes (infrastructure ports aside).
    if let (Some(gi), Some(oi)) = (
        container(golden, "initContainers", "istio-init"),
        container(ours, "initContainers", "remora-init"),
    ) {
        let (ga, oa) = (args_of(gi), args_of(oi));
        for flag in [
            "-i", "-x", "-b", "-q", "-o", "-c", "-k", "-m", "-p", "-z", "-u",
        ] {
            assert_eq!(
                arg(&oa, flag),
                arg(&ga, flag),
                "{ctx}: init flag {flag}: ours {oa:?} Istio {ga:?}"
            );
        }
        let infra: BTreeSet<&str> = ["15090", "15021", "15020", "123"].into();
        let dset = |a: &[String]| -> BTreeSet<String> {
            arg(a, "-d")
                .unwrap_or("")
                .split(',')
                .filter(|p| !p.is_empty() && !infra.contains(p))
                .map(str::to_string)
                .collect()
        };
        assert_eq!(dset(&oa), dset(&ga), "{ctx}: -d differs");
    }
}

#[derive(Debug, PartialEq, Clone, Copy)]
enum Expect {
    Injected,
    Skipped,
    Denied,
}

async fn check_doc(
    client: &mut Client,
    path: &str,
    doc: &Value,
    expect: Expect,
    golden: Option<&Value>,
    ctx: &str,
) -> usize {
    let mut n = 0;
    for (pod, ns) in pods_of(doc) {
        n += 1;
        let resp = review_pod_at(client, &pod, &ns, path).await;
        let allowed = resp["response"]["allowed"].as_bool().unwrap();
        match expect {
            Expect::Denied => {
                assert!(!allowed, "{ctx}: expected a denial, got {resp}");
                let msg = resp["response"]["status"]["message"].as_str().unwrap_or("");
                // The message names every traffic/sidecar annotation the pod sets (the bad one).
                let ann = pod
                    .pointer("/metadata/annotations")
                    .cloned()
                    .unwrap_or(json!({}));
                let keys: Vec<&String> = ann
                    .as_object()
                    .unwrap()
                    .keys()
                    .filter(|k| k.contains("sidecar.istio.io/"))
                    .collect();
                assert!(!keys.is_empty(), "{ctx}");
                assert!(
                    keys.iter().any(|k| msg.contains(k.as_str())),
                    "{ctx}: {msg}"
                );
                assert!(resp["response"].get("patch").is_none(), "{ctx}");
            }
            Expect::Skipped => {
                assert!(allowed, "{ctx}");
                assert!(
                    resp["response"].get("patch").is_none(),
                    "{ctx}: skipped pod got a patch"
                );
            }
            Expect::Injected => {
                assert!(allowed, "{ctx}: {resp}");
                let injected = apply(&pod, &resp, ctx);
                assert!(
                    injected
                        .pointer("/metadata/annotations/sidecar.istio.io~1status")
                        .is_some(),
                    "{ctx}: no status annotation"
                );
                let proxy = container(&injected, "initContainers", "remora-proxy")
                    .or_else(|| container(&injected, "containers", "remora-proxy"))
                    .unwrap_or_else(|| panic!("{ctx}: no remora-proxy"));
                assert_eq!(proxy["command"], json!(["remora-proxy"]), "{ctx}");
                assert_eq!(proxy["args"], json!(["run"]), "{ctx}");
                check_init_args(&injected, ctx);
                if let Some(g) = golden {
                    compare_with_istio(&pod, &injected, &template_of(g), ctx);
                    // Istio's label for a pod whose sidecar has a mesh identity (on in the
                    // default config).
                    assert_eq!(
                        injected.pointer(TLS_MODE),
                        istio_tls_mode(g),
                        "{ctx}: label security.istio.io/tlsMode differs from Istio"
                    );
                }
                // Any output of ours comes back unchanged (reinvocationPolicy: IfNeeded), also
                // when its override record raises privileges: the containers in the spec
                // already carry them.
                assert_reinjection_is_noop(client, &injected, &ns, path, ctx).await;
                if record_raises(&injected) {
                    RAISING_RECORDS.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
    n
}

const TLS_MODE: &str = "/metadata/labels/security.istio.io~1tlsMode";

/// The `security.istio.io/tlsMode` label of Istio's golden: on the pod template, or, for a
/// CronJob, where Istio's offline injection writes the pod's labels (the jobTemplate's metadata).
fn istio_tls_mode(golden: &Value) -> Option<&Value> {
    let t = golden
        .get("kind")
        .and_then(Value::as_str)
        .and_then(workload::template_pointer)?;
    golden
        .pointer(&format!("{t}{TLS_MODE}"))
        .or_else(|| golden.pointer(&format!("/spec/jobTemplate{TLS_MODE}")))
}

fn docs_in(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    cli::parse_docs(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn has_istio_sidecar(t: &Value) -> bool {
    ["containers", "initContainers"].iter().any(|l| {
        names(t, l)
            .iter()
            .any(|n| n == "istio-proxy" || n == "istio-init")
    })
}

/// Istio's expectation for one input document, read from its golden.
fn istio_expectation(input: &Value, golden: Option<&Value>) -> Expect {
    let Some(g) = golden else {
        return Expect::Denied;
    };
    let t = template_of(g);
    let status = t
        .pointer("/metadata/annotations/sidecar.istio.io~1status")
        .is_some();
    if status || (has_istio_sidecar(&t) && !has_istio_sidecar(&template_of(input))) {
        Expect::Injected
    } else {
        Expect::Skipped
    }
}

/// Istio's corpus through revision canary's injector in a namespace moved to remora
/// (`istio.io/rev=canary`), so that its already injected input is re-injected as Istio does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn istio_corpus_over_https() {
    let dir = remora_corpus::require!("inject");
    let c = certs();
    let canary = Config::default().with_revision("canary").unwrap();
    let server = start(&c, ConfigHandle::fixed(canary)).await;
    let mut client = connect(&server, &c).await;
    let mut inputs: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    inputs.sort();
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for input in &inputs {
        let name = input.file_name().unwrap().to_string_lossy().to_string();
        let golden_path = dir.join(format!("{name}.injected"));
        let goldens = golden_path.exists().then(|| docs_in(&golden_path));
        let docs = docs_in(input);
        for (i, doc) in docs.iter().enumerate() {
            let golden = goldens.as_ref().and_then(|g| g.get(i));
            let expect = istio_expectation(doc, golden);
            let ctx = format!("{name} doc {i} ({expect:?})");
            let n = check_doc(&mut client, MOVED_ENTRY, doc, expect, golden, &ctx).await;
            *counts
                .entry(match expect {
                    Expect::Injected => "injected",
                    Expect::Skipped => "skipped",
                    Expect::Denied => "denied",
                })
                .or_default() += n;
        }
    }
    eprintln!(
        "Istio corpus: {} files, pods by decision: {counts:?}",
        inputs.len()
    );
    assert_eq!(inputs.len(), 37, "the corpus has 37 inputs");
    assert_eq!(counts.get("denied"), Some(&3));
    assert!(counts.get("skipped").copied().unwrap_or(0) >= 3);
    assert!(counts.get("injected").copied().unwrap_or(0) >= 31);
    assert!(
        RAISING_RECORDS.load(Ordering::Relaxed) >= 1,
        "no corpus pod with a privilege-raising override record was re-injected"
    );
    server.shutdown().await;
}

/// A pod Istio injected (the corpus's `merge-probers.yaml`) sent by the default revision's
/// entries, whose labels Istio's own injector selects too: left alone, no patch. Sent for a
/// namespace moved to remora: re-injected, Istio's sidecar replaced by ours.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_istio_injected_is_left_alone_unless_moved() {
    let dir = remora_corpus::require!("inject");
    let doc = docs_in(&dir.join("merge-probers.yaml")).remove(0);
    let (pod, ns) = pods_of(&doc).remove(0);
    assert!(
        has_istio_sidecar(&pod),
        "the input carries Istio's injection"
    );
    let c = certs();
    let server = start(&c, ConfigHandle::fixed(Config::default())).await;
    let mut client = connect(&server, &c).await;
    for path in [
        "/inject",
        NAMESPACE_ENTRY,
        "/inject/rev/default/rev.namespace",
        "/inject/rev/default/object",
    ] {
        let mut p = pod.clone();
        if path.ends_with("/object") {
            p["metadata"]["labels"]["sidecar.istio.io/inject"] = json!("true");
        }
        let resp = review_pod_at(&mut client, &p, &ns, path).await;
        assert_eq!(resp["response"]["allowed"], true, "{path}: {resp}");
        assert!(resp["response"].get("patch").is_none(), "{path}: {resp}");
    }
    server.shutdown().await;

    let canary = Config::default().with_revision("canary").unwrap();
    let server = start(&c, ConfigHandle::fixed(canary)).await;
    let mut client = connect(&server, &c).await;
    let resp = review_pod_at(&mut client, &pod, &ns, MOVED_ENTRY).await;
    let out = apply(&pod, &resp, "moved");
    assert!(!has_istio_sidecar(&out), "Istio's sidecar replaced");
    assert!(
        container(&out, "containers", "remora-proxy").is_some()
            || container(&out, "initContainers", "remora-proxy").is_some()
    );
    // Revision default's entry at revision canary's injector: not its revision, left alone.
    let resp = review_pod_at(&mut client, &pod, &ns, NAMESPACE_ENTRY).await;
    assert!(resp["response"].get("patch").is_none(), "{resp}");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bookinfo_samples_over_https() {
    let c = certs();
    let server = start(&c, ConfigHandle::fixed(Config::default())).await;
    let mut client = connect(&server, &c).await;
    let mut files: Vec<PathBuf> = std::fs::read_dir(samples_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    let mut seen = 0;
    for f in &files {
        for (i, doc) in docs_in(f).iter().enumerate() {
            let Some(exp) = doc.pointer("/metadata/annotations/test.remora.dev~1expect") else {
                assert!(
                    pods_of(doc).is_empty(),
                    "{}: doc {i} has pods but no expectation",
                    f.display()
                );
                continue;
            };
            let expect = match exp.as_str().unwrap() {
                "injected" => Expect::Injected,
                "skipped" => Expect::Skipped,
                "denied" => Expect::Denied,
                other => panic!("unknown expectation {other}"),
            };
            let ctx = format!("{} doc {i} ({expect:?})", f.display());
            seen += check_doc(&mut client, NAMESPACE_ENTRY, doc, expect, None, &ctx).await;
        }
    }
    assert!(seen >= 14, "only {seen} sample pods");
    server.shutdown().await;
}

#[tokio::test]
async fn sample_details_are_rendered() {
    // Field-level checks on one sample: env, volumes, probes, resources, native placement.
    let docs = docs_in(&samples_dir().join("bookinfo.yaml"));
    let (out, reports) = cli::inject_docs(docs, "default", &Config::default());
    assert!(
        reports.iter().all(|r| r.decision == "injected"),
        "{reports:?}"
    );
    let find = |name: &str| {
        out.iter()
            .find(|d| d["metadata"]["name"] == name)
            .unwrap()
            .clone()
    };
    let pp = template_of(&find("productpage-v1"));
    let proxy = container(&pp, "initContainers", "remora-proxy").unwrap();
    let probers: Value =
        serde_json::from_str(&env_value(proxy, "ISTIO_KUBE_APP_PROBERS").unwrap()).unwrap();
    assert_eq!(
        probers,
        json!({
            "/app-health/productpage/readyz": {"httpGet": {"path": "/health", "port": 9080}, "timeoutSeconds": 2},
            "/app-health/productpage/livez": {"tcpSocket": {"port": 9080}}
        })
    );
    let vols = pp["spec"]["volumes"].as_array().unwrap();
    assert!(vols.iter().any(|v| v["name"] == "remora-rules"
        && v["configMap"] == json!({"name": "remora-mesh-rules", "optional": true})));
    assert!(vols
        .iter()
        .any(|v| v["downwardAPI"]["items"][0]["fieldRef"]["fieldPath"] == "metadata.labels"));
    let details = template_of(&find("details-v1"));
    let proxy = container(&details, "initContainers", "remora-proxy").unwrap();
    assert_eq!(
        env_value(proxy, "REMORA_LOG_LEVEL").as_deref(),
        Some("debug")
    );
    assert_eq!(
        proxy["resources"]["requests"],
        json!({"cpu": "50m", "memory": "32Mi"})
    );
    let ratings = template_of(&find("ratings-v1"));
    assert!(container(&ratings, "containers", "remora-proxy").is_some());
    assert_eq!(
        ratings["spec"]["containers"][0]["readinessProbe"]["httpGet"]["port"],
        9080
    );
    let reviews = template_of(&find("reviews-v2"));
    let init = container(&reviews, "initContainers", "remora-init").unwrap();
    let a = args_of(init);
    assert_eq!(arg(&a, "-b"), Some("9080"));
    assert_eq!(arg(&a, "-o"), Some("3306"));
    assert_eq!(arg(&a, "-x"), Some("169.254.169.254/32"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_clear_errors_and_server_keeps_serving() {
    let c = certs();
    let server = start(&c, ConfigHandle::fixed(Config::default())).await;
    let mut client = connect(&server, &c).await;
    let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": {"containers": [{"name": "a", "image": "x"}]}});
    let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        (
            "malformed JSON",
            b"{\"apiVersion\":".to_vec(),
            400,
            "not JSON",
        ),
        (
            "wrong apiVersion",
            serde_json::to_vec(&{
                let mut r = review::review_for(&pod, "u", "default");
                r["apiVersion"] = json!("admission.k8s.io/v1beta1");
                r
            })
            .unwrap(),
            400,
            "apiVersion",
        ),
        (
            "wrong kind",
            serde_json::to_vec(&{
                let mut r = review::review_for(&pod, "u", "default");
                r["kind"] = json!("Pod");
                r
            })
            .unwrap(),
            400,
            "AdmissionReview",
        ),
        (
            "missing uid",
            serde_json::to_vec(&{
                let mut r = review::review_for(&pod, "u", "default");
                r["request"].as_object_mut().unwrap().remove("uid");
                r
            })
            .unwrap(),
            400,
            "uid",
        ),
        (
            "non-Pod",
            serde_json::to_vec(&{
                let mut r = review::review_for(&pod, "u", "default");
                r["request"]["kind"] =
                    json!({"group": "apps", "version": "v1", "kind": "Deployment"});
                r
            })
            .unwrap(),
            200,
            "Pods only",
        ),
        ("over 1 MiB", vec![b' '; 1024 * 1024 + 10], 413, ""),
    ];
    for (what, body, status, needle) in cases {
        let answer = client.post("/inject", Bytes::from(body)).await;
        if status == 413 && answer.is_err() {
            // The server refuses a declared-oversized body before reading it and closes the
            // connection; a client still writing may see the close instead of the 413. Either
            // way nothing was reviewed; the server must keep serving (checked below).
            client = connect(&server, &c).await;
            continue;
        }
        let (got, answer) = answer.unwrap_or_else(|e| panic!("{what}: {e}"));
        let text = String::from_utf8_lossy(&answer);
        assert_eq!(got, status, "{what}: {text}");
        assert!(text.contains(needle), "{what}: {text}");
        if status == 413 {
            // The server may close the connection after refusing a body: reconnect.
            client = connect(&server, &c).await;
        }
    }
    // Plain HTTP on the TLS port: one clear line, then closed.
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(server.addr).await.unwrap();
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf))
            .await
            .unwrap()
            .unwrap();
        let text = String::from_utf8_lossy(&buf);
        assert!(
            text.starts_with("HTTP/1.1 400") && text.contains("HTTPS only"),
            "{text}"
        );
    }
    // Still serving, on the old connection and new ones.
    let resp = review_pod(&mut client, &pod, "default").await;
    assert_eq!(resp["response"]["allowed"], true);
    let mut fresh = connect(&server, &c).await;
    assert_eq!(fresh.get("/healthz").await.unwrap().0, 200);
    assert_eq!(fresh.get("/readyz").await.unwrap().0, 200);
    let (status, metrics) = fresh.get("/metrics").await.unwrap();
    assert_eq!(status, 200);
    let metrics = String::from_utf8_lossy(&metrics);
    assert!(
        metrics.contains("remora_webhook_reviews_total{decision=\"injected\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("remora_webhook_review_duration_seconds_bucket"),
        "{metrics}"
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn annotations_choosing_images_or_privileges_are_denied() {
    // Issue 8: annotations never choose the sidecar's image, command or privileges.
    let c = certs();
    let server = start(&c, ConfigHandle::fixed(Config::default())).await;
    let mut client = connect(&server, &c).await;
    let pod_with = |ann: Value| {
        json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "p", "annotations": ann},
            "spec": {"containers": [{"name": "a", "image": "x"}]}})
    };
    let cases = [
        (
            json!({"sidecar.istio.io/proxyImage": "evil.example/proxy:1"}),
            "annotation sidecar.istio.io/proxyImage: image choice by annotation is refused by remora; set images in the injector config",
        ),
        (
            json!({"proxy.istio.io/overrides": r#"{"init":[{"name":"istio-init","image":"evil.example/init:1"}]}"#}),
            "image choice by annotation is refused by remora",
        ),
        (
            json!({"proxy.istio.io/overrides": r#"{"proxy":[{"securityContext":{"capabilities":{"add":["NET_ADMIN"]}}}]}"#}),
            "raising privileges (capabilities.add) by annotation is refused by remora",
        ),
        (
            json!({"sidecar.istio.io/interceptionMode": "TPROXY"}),
            "capabilities by annotation are refused",
        ),
        (
            json!({"sidecar.istio.io/userVolume": r#"{"host":{"hostPath":{"path":"/"}}}"#}),
            "host paths by annotation are refused by remora",
        ),
    ];
    for (ann, needle) in cases {
        let resp = review_pod(&mut client, &pod_with(ann.clone()), "default").await;
        assert_eq!(resp["response"]["allowed"], false, "{ann}: {resp}");
        let msg = resp["response"]["status"]["message"].as_str().unwrap_or("");
        assert!(msg.contains(needle), "{ann}: {msg}");
        assert!(resp["response"].get("patch").is_none(), "{ann}");
    }
    // The same pod without the annotation is injected with the configured image.
    let resp = review_pod(&mut client, &pod_with(json!({})), "default").await;
    assert_eq!(resp["response"]["allowed"], true);
    let injected = apply(&pod_with(json!({})), &resp, "plain");
    let proxy = container(&injected, "initContainers", "remora-proxy").unwrap();
    assert_eq!(proxy["image"], Config::default().proxy.image.as_str());
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cert_rotation_new_connections_see_new_cert() {
    let c = certs();
    let server = start(&c, ConfigHandle::fixed(Config::default())).await;
    let (new_cert, new_key) = self_signed();
    let trust = client_config(&[c.cert_pem.as_bytes(), new_cert.as_bytes()]).unwrap();
    let first = Client::connect(server.addr, "localhost", trust.clone())
        .await
        .unwrap();
    let old_der = first.peer_cert.clone();
    // Replace the files the way a writer would (write aside, rename over).
    let tmp_key = c.key.with_extension("new");
    std::fs::write(&tmp_key, &new_key).unwrap();
    std::fs::rename(&tmp_key, &c.key).unwrap();
    let tmp_cert = c.cert.with_extension("new");
    std::fs::write(&tmp_cert, &new_cert).unwrap();
    std::fs::rename(&tmp_cert, &c.cert).unwrap();
    let new_der = rustls_pki_types::pem::PemObject::from_pem_slice(new_cert.as_bytes())
        .map(|d: rustls_pki_types::CertificateDer| d.to_vec())
        .unwrap();
    assert_ne!(old_der, new_der);
    // Wait (bounded) for the reload, then every new connection presents the new cert.
    let mut seen = Vec::new();
    // Bounded (about 60 s, for a loaded machine); ends as soon as the change shows.
    for _ in 0..600 {
        let cl = Client::connect(server.addr, "localhost", trust.clone())
            .await
            .unwrap();
        seen = cl.peer_cert.clone();
        if seen == new_der {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        seen, new_der,
        "new connections still get the old certificate"
    );
    // A client trusting only the new cert now connects; one trusting only the old cannot.
    let only_new = client_config(&[new_cert.as_bytes()]).unwrap();
    let mut cl = Client::connect(server.addr, "localhost", only_new)
        .await
        .unwrap();
    assert_eq!(cl.get("/healthz").await.unwrap().0, 200);
    let only_old = client_config(&[c.cert_pem.as_bytes()]).unwrap();
    assert!(Client::connect(server.addr, "localhost", only_old)
        .await
        .is_err());
    // A broken pair is refused and the current cert kept.
    std::fs::write(&c.cert, "not a certificate").unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let cl = Client::connect(server.addr, "localhost", trust)
        .await
        .unwrap();
    assert_eq!(cl.peer_cert, new_der);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_reload_changes_decisions() {
    let c = certs();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.yaml");
    std::fs::write(&path, "policy: enabled\n").unwrap();
    let server = start(&c, ConfigHandle::load(&path).unwrap()).await;
    let mut client = connect(&server, &c).await;
    let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": {"containers": [{"name": "a", "image": "x"}]}});
    let resp = review_pod(&mut client, &pod, "default").await;
    assert!(resp["response"].get("patch").is_some());
    std::fs::write(&path, "policy: disabled\n").unwrap();
    let mut skipped = false;
    // Bounded (about 60 s, for a loaded machine); ends as soon as the change shows.
    for _ in 0..600 {
        let resp = review_pod(&mut client, &pod, "default").await;
        if resp["response"].get("patch").is_none() {
            skipped = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(skipped, "config change did not take effect");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_refuses_new_connections() {
    let c = certs();
    let server = start(&c, ConfigHandle::fixed(Config::default())).await;
    let addr = server.addr;
    let mut client = connect(&server, &c).await;
    assert_eq!(client.get("/healthz").await.unwrap().0, 200);
    server.shutdown().await;
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "still accepting after shutdown"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_over_tls_is_served() {
    // The API server may speak HTTP/2 (ALPN h2) to webhooks.
    let c = certs();
    let server = start(&c, ConfigHandle::fixed(Config::default())).await;
    let roots = {
        let mut r = rustls::RootCertStore::empty();
        for cert in rustls_pki_types::pem::PemObject::pem_slice_iter(c.cert_pem.as_bytes()) {
            r.add(cert.unwrap()).unwrap();
        }
        r
    };
    let mut cfg = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(cfg))
        .connect(name, tcp)
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tls),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "h2"}, "spec": {"containers": [{"name": "a", "image": "x"}]}});
    let body = serde_json::to_vec(&review::review_for(&pod, "uid-h2", "default")).unwrap();
    let req = hyper::Request::post(format!("https://localhost:{}/inject", server.addr.port()))
        .header("content-type", "application/json")
        .body(axum::body::Body::from(body))
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let bytes = axum::body::to_bytes(axum::body::Body::new(resp.into_body()), 1 << 20)
        .await
        .unwrap();
    let v: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(v["response"]["uid"], "uid-h2");
    assert!(v["response"]["patch"].is_string());
    server.shutdown().await;
}
