//! Discovery at scale (`remora-lab bench-discovery`, run by `scripts/bench discovery`): the
//! recorded API (`apiserver.rs`) serving a generated cluster (`discovery_cluster.rs`, by default
//! 100 namespaces, 2,000 Services with their EndpointSlices, 10,000 pods), and
//!
//! - served mode: the real `remora-webhook serve --discovery on` (its own process) watching it,
//!   and N simulated subscribers (tonic clients of `remora.discovery.v1.Discovery/Subscribe`,
//!   the model's messages, each its own TLS connection and a distinct workload authenticated by
//!   its projected token, as a proxy without a certificate does; each asks for its own
//!   namespace, `ns-000` (where the changed Service lives) and `remora-system`, and
//!   acknowledges every version). Measured: the API server's requests, watches and bytes, the
//!   control plane's CPU and memory, the bytes each subscriber receives, and the time from an
//!   EndpointSlice change at the API to every subscriber holding it;
//! - real proxies: a few `remora-proxy` processes whose Sidecar scopes them to
//!   `--scoped-services` Services of their namespace, each with its workload identity from the
//!   control plane's CA (`--ca-address`, as an installed sidecar: the same TLS and gRPC client
//!   runs in every mode) and with discovery from the control plane (`--discovery-address`, no
//!   API), from the API directly (`--kube-api`, today's watch-per-sidecar mode), or neither:
//!   their memory (VmRSS, RssAnon, PSS; discovery's share is a mode's median minus the
//!   identity-only median), and the API requests and watches the direct ones make (per proxy,
//!   then extrapolated linearly to N). The API serves the same Sidecars
//!   (`networking.istio.io/v1`), so the control plane scopes each subscription by them; a
//!   fourth set subscribes with a Sidecar admitting no Service (the subscription's own cost);
//! - optionally a reconnect storm (`--connecting 0`: every subscriber at once) and churn
//!   (`--churn-secs`: slice and pod changes at a steady rate, not waited for).
//!
//! Every wait is bounded; child processes get SIGKILL when this process dies (and are stopped
//! when it ends); everything listens on 127.0.0.1. Prints Markdown tables and the targets,
//! each `met` or `NOT MET`.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use base64::Engine;
use prost::Message;
use remora_model::discovery_api::{DiscoveryResponse, SubscribeRequest, SUBSCRIBE};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use serde_json::{json, Value};
use tokio::sync::{mpsc, Semaphore};

use crate::apiserver::{event, RecordedApi, Reply, Seen};
use crate::discovery_cluster::{self as gen, Cluster, Shape};
use crate::netns::Proc;
use crate::table;

/// What to run.
#[derive(Clone, Debug, clap::Args)]
pub struct Args {
    #[arg(long, default_value_t = 100)]
    pub namespaces: usize,
    #[arg(long, default_value_t = 2000)]
    pub services: usize,
    #[arg(long, default_value_t = 10_000)]
    pub pods: usize,
    /// Simulated subscribers, one served run each (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "100,1000")]
    pub subscribers: Vec<usize>,
    /// EndpointSlice changes timed per served run.
    #[arg(long, default_value_t = 20)]
    pub changes: usize,
    /// Real proxies per mode (served, direct, none) for memory and the direct mode's requests.
    #[arg(long, default_value_t = 3)]
    pub proxies: usize,
    /// Services each real proxy's Sidecar scopes it to (of its own namespace).
    #[arg(long, default_value_t = 10)]
    pub scoped_services: usize,
    /// Seconds the direct-mode proxies are watched after they synced (API requests per minute).
    #[arg(long, default_value_t = 20)]
    pub window: u64,
    /// Subscribers connecting at once (the rest wait their turn); 0: all at once, a reconnect
    /// storm (every subscriber at a freshly started control plane, as after a restart).
    #[arg(long, default_value_t = 100)]
    pub connecting: usize,
    /// Seconds of churn after the timed changes (0: none): EndpointSlice and Pod changes of
    /// `ns-000`, which every subscriber sees, at `--churn-rate` per second.
    #[arg(long, default_value_t = 0)]
    pub churn_secs: u64,
    /// Changes per second during the churn (slices and pods alternately).
    #[arg(long, default_value_t = 20)]
    pub churn_rate: u32,
    /// The control plane's `--ca-max-connections` (its default, 1024, when not given).
    #[arg(long)]
    pub ca_max_connections: Option<u64>,
    /// Only the real proxies (no simulated subscribers).
    #[arg(long)]
    pub proxies_only: bool,
    /// Copy each real proxy's `/proc/PID/smaps` here when its memory is read (MODE-N.smaps).
    #[arg(long)]
    pub smaps_dir: Option<PathBuf>,
}

/// The bound of every wait.
const BOUND: Duration = Duration::from_secs(120);
const SECRETS: &str = "/api/v1/namespaces/remora-system/secrets";
const ROOT_SECRET: &str = "/api/v1/namespaces/remora-system/secrets/remora-ca";
const TOKEN_REVIEWS: &str = "/apis/authentication.k8s.io/v1/tokenreviews";
const CA_NAME: &str = "remora-ca.remora-system.svc";
/// A change's number `c` is carried as the changed slice's `grpc` port `CHANGE_BASE + c`.
const CHANGE_BASE: u32 = 20_000;

// ---- pure: the API server's traffic, percentiles, targets ----

/// What a request to the API server is for.
pub fn category(path: &str) -> &'static str {
    if path.ends_with("/services")
        || path.ends_with("/endpointslices")
        || path.ends_with("/pods")
        || path.ends_with("/sidecars")
    {
        "discovery"
    } else if path.ends_with("/configmaps") {
        "configmaps"
    } else if path == TOKEN_REVIEWS {
        "tokenreviews"
    } else {
        "other"
    }
}

fn is_watch(path_and_query: &str) -> bool {
    path_and_query
        .split_once('?')
        .is_some_and(|(_, q)| q.split('&').any(|p| p == "watch=true" || p == "watch=1"))
}

/// The API server's traffic by category at one moment: (requests, watch requests, bytes).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Traffic(pub BTreeMap<&'static str, (u64, u64, u64)>);

impl Traffic {
    pub fn of(seen: &[Seen], bytes: &BTreeMap<String, u64>) -> Traffic {
        let mut t: BTreeMap<&'static str, (u64, u64, u64)> = BTreeMap::new();
        for s in seen {
            let e = t.entry(category(s.path())).or_default();
            e.0 += 1;
            if is_watch(&s.path_and_query) {
                e.1 += 1;
            }
        }
        for (path, n) in bytes {
            t.entry(category(path)).or_default().2 += n;
        }
        Traffic(t)
    }

    fn read(api: &RecordedApi) -> Traffic {
        Traffic::of(&api.requests(), &api.bytes_sent_by_path())
    }

    /// What happened between `before` and `self`.
    pub fn since(&self, before: &Traffic) -> Traffic {
        Traffic(
            self.0
                .iter()
                .map(|(k, (r, w, b))| {
                    let (r0, w0, b0) = before.0.get(k).copied().unwrap_or_default();
                    (*k, (r - r0, w - w0, b - b0))
                })
                .collect(),
        )
    }

    pub fn get(&self, cat: &str) -> (u64, u64, u64) {
        self.0.get(cat).copied().unwrap_or_default()
    }
}

/// The `q` quantile of sorted values (nearest rank, `q` in 0..=1); `None` when empty.
pub fn quantile<T: Copy>(sorted: &[T], q: f64) -> Option<T> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

fn median(mut v: Vec<u64>) -> u64 {
    v.sort_unstable();
    quantile(&v, 0.5).unwrap_or(0)
}

pub fn verdict(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "NOT MET"
    }
}

fn mib(kib: u64) -> String {
    format!("{:.1}", kib as f64 / 1024.0)
}

fn kb(bytes: u64) -> String {
    format!("{:.1}", bytes as f64 / 1000.0)
}

fn ms(d: Duration) -> String {
    format!("{:.0}", d.as_secs_f64() * 1000.0)
}

// ---- processes and the API ----

/// RssAnon of `pid` (KiB): its private memory, without the pages of its binary and libraries
/// (RssFile), which every process of the same binary on a node shares through the page cache.
fn anon(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    Ok(status
        .lines()
        .find_map(|l| l.strip_prefix("RssAnon:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0))
}

fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "?".into())
}

/// A child that gets SIGKILL if this process dies (spawned from the main thread, which lives
/// as long as the process), in its own process group, logging to `log`.
fn spawn(name: &str, mut cmd: Command, log: PathBuf) -> Result<Proc> {
    use std::os::unix::process::CommandExt;
    let set: HashSet<std::ffi::OsString> = cmd.get_envs().map(|(k, _)| k.to_os_string()).collect();
    for (k, _) in std::env::vars() {
        let inherited =
            k.starts_with("REMORA_") || k == "POD_NAMESPACE" || k == "KUBERNETES_SERVICE_HOST";
        if inherited && !set.contains(std::ffi::OsStr::new(&k)) {
            cmd.env_remove(k);
        }
    }
    // SAFETY: prctl is async-signal-safe and touches only the child's own settings.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Proc::spawn(name, cmd, log)
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn secret_body(data: &[(&str, String)], rv: &str) -> Value {
    let data: serde_json::Map<String, Value> = data
        .iter()
        .map(|(k, v)| (k.to_string(), Value::String(b64(v.as_bytes()))))
        .collect();
    json!({"kind": "Secret", "apiVersion": "v1",
        "metadata": {"name": "remora-ca", "namespace": "remora-system", "resourceVersion": rv,
                     "uid": "6f1e2d3c-4b5a-4969-8877-665544332211"},
        "type": "Opaque", "data": data})
}

/// The token of simulated workload `ns`/`sa`: `sim.NS.SA` (names have no dots).
pub fn token(ns: &str, sa: &str) -> String {
    format!("sim.{ns}.{sa}")
}

/// The TokenReview answer for a token of [`token`]'s form (`None` for any other).
pub fn token_review(token: &str, audience: &str) -> Option<Value> {
    let mut parts = token.strip_prefix("sim.")?.split('.');
    let (ns, sa) = (parts.next()?, parts.next()?);
    if parts.next().is_some() || ns.is_empty() || sa.is_empty() {
        return None;
    }
    Some(
        json!({"kind": "TokenReview", "apiVersion": "authentication.k8s.io/v1",
        "metadata": {"creationTimestamp": null},
        "spec": {"token": token, "audiences": [audience]},
        "status": {"authenticated": true, "audiences": [audience],
            "user": {"username": format!("system:serviceaccount:{ns}:{sa}"),
                     "uid": "4f1c9a57-2d0e-4b8a-a0b1-6c9d3e2f1a10",
                     "groups": ["system:serviceaccounts", format!("system:serviceaccounts:{ns}"),
                                "system:authenticated"]}}}),
    )
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/kube-api/ca")
        .join(name)
}

/// The recorded API with the cluster, `sidecars` (Sidecar objects), the CA's Secrets and
/// namespaces, and TokenReviews of simulated tokens.
fn api_for(
    rt: &tokio::runtime::Runtime,
    cluster: &Cluster,
    sidecars: Vec<Value>,
) -> Result<RecordedApi> {
    let api = rt.block_on(RecordedApi::start())?;
    cluster.serve(&api);
    gen::serve_sidecars(&api, sidecars);
    api.load(&fixture("secrets-absent.json"))?;
    api.load(&fixture("root-publication.json"))?;
    api.on("POST", SECRETS, Reply::json(201, secret_body(&[], "90100")));
    api.fallback(Arc::new(|seen: &Seen| {
        if seen.method != "POST" || seen.path() != TOKEN_REVIEWS {
            return None;
        }
        let token = seen.body.as_ref()?["spec"]["token"].as_str()?;
        token_review(token, "remora-ca").map(|b| Reply::json(201, b))
    }));
    Ok(api)
}

fn wait_until(
    what: &str,
    cancel: &AtomicBool,
    mut f: impl FnMut() -> Result<bool>,
) -> Result<Duration> {
    let start = Instant::now();
    loop {
        if f()? {
            return Ok(start.elapsed());
        }
        if cancel.load(Ordering::Relaxed) {
            bail!("cancelled while waiting for {what}");
        }
        if start.elapsed() > BOUND {
            bail!("timed out after {BOUND:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The control plane: its process, the CA's address and root (PEM, also in `dir/root.pem`).
struct ControlPlane {
    proc: Proc,
    ca: SocketAddr,
    root: String,
}

fn start_control_plane(
    bin_dir: &Path,
    api: &RecordedApi,
    dir: &Path,
    max_connections: Option<u64>,
    cancel: &AtomicBool,
) -> Result<(ControlPlane, Duration)> {
    let bin = bin_dir.join("remora-webhook");
    if !bin.exists() {
        bail!("{} is missing: build it first", bin.display());
    }
    let cert = crate::admission::issue_serving_cert("discovery bench webhook")?;
    std::fs::write(dir.join("tls.crt"), &cert.cert_pem)?;
    std::fs::write(dir.join("tls.key"), &cert.key_pem)?;
    let p = crate::ports::free_ports(2);
    let ca = SocketAddr::from(([127, 0, 0, 1], p[1]));
    let mut cmd = Command::new(&bin);
    cmd.arg("serve")
        .args(["--listen", &format!("127.0.0.1:{}", p[0])])
        .args(["--ca-addr", &ca.to_string()])
        .arg("--tls-cert")
        .arg(dir.join("tls.crt"))
        .arg("--tls-key")
        .arg(dir.join("tls.key"))
        .arg("--config")
        .arg(dir.join("absent.yaml"))
        .args(["--kube-url", &api.url(), "--discovery", "on"])
        .env("REMORA_LOG", "warn");
    if let Some(m) = max_connections {
        cmd.arg(format!("--ca-max-connections={m}"));
    }
    let started = Instant::now();
    let mut proc = spawn("control plane", cmd, dir.join("control-plane.log"))?;
    let posted = |api: &RecordedApi| {
        api.requests()
            .into_iter()
            .find(|r| r.method == "POST" && r.path() == SECRETS)
            .and_then(|r| r.body)
    };
    wait_until("the control plane's root", cancel, || {
        if proc.exited().is_some() {
            bail!("the control plane exited:\n{}", proc.log_tail(20));
        }
        Ok(posted(api).is_some())
    })?;
    let body = posted(api).ok_or_else(|| anyhow!("no root posted"))?;
    let field = |k: &str| -> Result<String> {
        let v = body["data"][k]
            .as_str()
            .ok_or_else(|| anyhow!("the posted root Secret has no {k}"))?;
        let bytes = base64::engine::general_purpose::STANDARD.decode(v)?;
        Ok(String::from_utf8(bytes)?)
    };
    let root = field("root-cert.pem")?;
    let data = [
        ("ca-cert.pem", field("ca-cert.pem")?),
        ("ca-key.pem", field("ca-key.pem")?),
        ("root-cert.pem", root.clone()),
    ];
    api.on(
        "GET",
        ROOT_SECRET,
        Reply::json(200, secret_body(&data, "90101")),
    );
    std::fs::write(dir.join("root.pem"), &root)?;
    // Synced: its watches are open (each after its list), the Sidecars' too.
    wait_until("the control plane's four watches", cancel, || {
        if proc.exited().is_some() {
            bail!("the control plane exited:\n{}", proc.log_tail(20));
        }
        Ok([gen::SERVICES, gen::SLICES, gen::PODS, gen::SIDECARS]
            .iter()
            .all(|p| api.open_watches(p) >= 1))
    })?;
    Ok((ControlPlane { proc, ca, root }, started.elapsed()))
}

// ---- simulated subscribers ----

enum Got {
    Message {
        sub: usize,
        full: bool,
        bytes: usize,
        change: Option<u32>,
        at: Instant,
    },
    Failed {
        sub: usize,
        why: String,
    },
}

fn tls_config(root: &str) -> Result<Arc<rustls::ClientConfig>> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(root.as_bytes()) {
        roots.add(c?)?;
    }
    let mut tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    tls.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(tls))
}

async fn channel(
    ca: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
) -> Result<tonic::transport::Channel, String> {
    let connector = tokio_rustls::TlsConnector::from(tls);
    let service = tower::service_fn(move |_: http::Uri| {
        let connector = connector.clone();
        async move {
            let tcp = tokio::net::TcpStream::connect(ca).await?;
            tcp.set_nodelay(true)?;
            let name = rustls_pki_types::ServerName::try_from(CA_NAME)
                .map_err(|e| std::io::Error::other(e.to_string()))?;
            let tls = connector.connect(name, tcp).await?;
            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tls))
        }
    });
    tokio::time::timeout(
        Duration::from_secs(20),
        tonic::transport::Endpoint::from_static("http://remora-discovery")
            .connect_with_connector(service),
    )
    .await
    .map_err(|_| "connect timed out".to_string())?
    .map_err(|e| format!("connect: {e}"))
}

/// The number of the change a response carries (the changed slice's `grpc` port).
fn change_of(m: &DiscoveryResponse, slice: &(String, String)) -> Option<u32> {
    m.endpoint_slices
        .iter()
        .find(|s| s.namespace == slice.0 && s.name == slice.1)
        .and_then(|s| s.ports.iter().find(|p| p.name == "grpc"))
        .and_then(|p| p.port.checked_sub(CHANGE_BASE))
        .filter(|c| *c > 0)
}

/// One subscriber: subscribes (retrying a few times), then reports every message until the
/// stream ends or the task is aborted.
async fn subscriber(
    sub: usize,
    first: SubscribeRequest,
    ca: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
    gate: Arc<Semaphore>,
    changed: Arc<(String, String)>,
    tx: mpsc::UnboundedSender<Got>,
) {
    let fail = |why: String| {
        let _ = tx.send(Got::Failed { sub, why });
    };
    let Ok(permit) = gate.acquire_owned().await else {
        return fail("the gate closed".into());
    };
    let mut permit = Some(permit);
    let tok = token(&first.namespace, &first.service_account);
    let mut attempt = 0;
    let mut stream = loop {
        attempt += 1;
        let r = async {
            let ch = channel(ca, tls.clone()).await?;
            let mut grpc = tonic::client::Grpc::new(ch).max_decoding_message_size(64 << 20);
            let (ack_tx, ack_rx) = mpsc::channel::<SubscribeRequest>(16);
            let _ = ack_tx.try_send(first.clone());
            let outbound = futures::stream::unfold(ack_rx, |mut rx| async move {
                rx.recv().await.map(|m| (m, rx))
            });
            let mut req = tonic::Request::new(outbound);
            let bearer: tonic::metadata::MetadataValue<tonic::metadata::Ascii> =
                format!("Bearer {tok}")
                    .parse()
                    .map_err(|_| "token header".to_string())?;
            req.metadata_mut().insert("authorization", bearer);
            grpc.ready().await.map_err(|e| format!("not ready: {e}"))?;
            let codec = tonic_prost::ProstCodec::<SubscribeRequest, DiscoveryResponse>::default();
            let s = grpc
                .streaming(req, http::uri::PathAndQuery::from_static(SUBSCRIBE), codec)
                .await
                .map_err(|s| format!("{:?}: {}", s.code(), s.message()))?
                .into_inner();
            Ok::<_, String>((s, ack_tx))
        }
        .await;
        match r {
            Ok(s) => break s,
            Err(e) if attempt >= 5 => return fail(format!("{attempt} attempts: {e}")),
            Err(_) => tokio::time::sleep(Duration::from_millis(200 * attempt)).await,
        }
    };
    loop {
        let m = match stream.0.message().await {
            Ok(Some(m)) => m,
            Ok(None) => return fail("the control plane ended the stream".into()),
            Err(s) => return fail(format!("{:?}: {}", s.code(), s.message())),
        };
        let at = Instant::now();
        permit.take();
        let got = Got::Message {
            sub,
            full: m.full,
            bytes: m.encoded_len(),
            change: change_of(&m, &changed),
            at,
        };
        if tx.send(got).is_err() {
            return;
        }
        let _ = stream.1.try_send(SubscribeRequest {
            ack_version: m.version,
            namespaces: Vec::new(),
            ..first.clone()
        });
    }
}

/// What the subscribers reported so far.
struct Tallies {
    snapshot_bytes: Vec<u64>,
    delta_bytes: Vec<u64>,
    failed: HashSet<usize>,
    /// The first few failures, for the log.
    failures: Vec<String>,
}

impl Tallies {
    /// Count one report; the change it carries: (subscriber, change, when).
    fn apply(&mut self, g: Got) -> Option<(usize, u32, Instant)> {
        match g {
            Got::Message {
                sub,
                full,
                bytes,
                change,
                at,
            } => {
                let b = if full {
                    &mut self.snapshot_bytes
                } else {
                    &mut self.delta_bytes
                };
                if let Some(x) = b.get_mut(sub) {
                    *x += bytes as u64;
                }
                change.map(|c| (sub, c, at))
            }
            Got::Failed { sub, why } => {
                if self.failures.len() < 3 {
                    self.failures.push(format!("subscriber {sub}: {why}"));
                }
                self.failed.insert(sub);
                None
            }
        }
    }
}

/// One served run's results.
struct Served {
    subscribers: usize,
    sync: Duration,
    startup: Traffic,
    after_startup: Traffic,
    after_secs: f64,
    open_watches: usize,
    watch_timeout: Option<u64>,
    subscribe_all: Duration,
    failed: usize,
    snapshot_bytes: Vec<u64>,
    delta_bytes: Vec<u64>,
    to_all: Vec<Duration>,
    each: Vec<Duration>,
    missing: usize,
    cpu_sync: f64,
    cpu_subscribe: f64,
    cpu_changes: f64,
    changes_secs: f64,
    rss_sync: u64,
    rss_subscribed: u64,
    hwm: u64,
    load: String,
    connecting: usize,
    churn: Option<Churn>,
}

/// The `timeoutSeconds` kube-runtime asked its watches for (how often a real API server would
/// end each one, so that it is made again).
fn watch_timeout(seen: &[Seen]) -> Option<u64> {
    seen.iter()
        .filter(|s| category(s.path()) == "discovery" && is_watch(&s.path_and_query))
        .find_map(|s| {
            s.query()
                .into_iter()
                .find(|(k, _)| k == "timeoutSeconds")
                .and_then(|(_, v)| v.parse().ok())
        })
}

fn served_run(
    rt: &tokio::runtime::Runtime,
    bin_dir: &Path,
    cluster: &Cluster,
    n: usize,
    args: &Args,
    cancel: &Arc<AtomicBool>,
) -> Result<Served> {
    eprintln!("served: {n} subscribers...");
    let dir = tempfile::tempdir()?;
    let api = api_for(rt, cluster, Vec::new())?;
    let before = Traffic::read(&api);
    let (mut cp, sync) =
        start_control_plane(bin_dir, &api, dir.path(), args.ca_max_connections, cancel)?;
    let pid = cp.proc.pid();
    std::thread::sleep(Duration::from_millis(500));
    let startup = Traffic::read(&api).since(&before);
    let at_startup = Traffic::read(&api);
    let startup_done = Instant::now();
    let (cpu0, rss_sync, _) = crate::bench::process_usage(pid)?;

    let tls = tls_config(&cp.root)?;
    let connecting = if args.connecting == 0 {
        n
    } else {
        args.connecting
    };
    let gate = Arc::new(Semaphore::new(connecting));
    let changed = {
        let (ns, svc) = gen::service_key(&cluster.shape, 0);
        Arc::new((ns, gen::slice_name(&svc)))
    };
    let (tx, mut rx) = mpsc::unbounded_channel::<Got>();
    let shared_ns = changed.0.clone();
    let tasks: Vec<tokio::task::JoinHandle<()>> = (0..n)
        .map(|i| {
            let ns = gen::ns_name(i % cluster.shape.namespaces);
            let mut namespaces = vec![ns.clone(), "remora-system".to_string()];
            if ns != shared_ns {
                namespaces.push(shared_ns.clone());
            }
            let first = SubscribeRequest {
                namespace: ns,
                service_account: format!("sa-{i:05}"),
                pod_name: String::new(),
                namespaces,
                ack_version: 0,
            };
            rt.spawn(subscriber(
                i,
                first,
                cp.ca,
                tls.clone(),
                gate.clone(),
                changed.clone(),
                tx.clone(),
            ))
        })
        .collect();
    drop(tx);
    let mut t = Tallies {
        snapshot_bytes: vec![0; n],
        delta_bytes: vec![0; n],
        failed: HashSet::new(),
        failures: Vec::new(),
    };
    let mut got_change: Vec<u32> = vec![0; n];
    let t0 = Instant::now();
    let mut snapshots = 0usize;
    let subscribe_all = rt.block_on(async {
        while snapshots + t.failed.len() < n {
            if cancel.load(Ordering::Relaxed) {
                bail!("cancelled");
            }
            let g = tokio::time::timeout(BOUND, rx.recv())
                .await
                .map_err(|_| anyhow!("{snapshots} of {n} snapshots after {BOUND:?}"))?
                .ok_or_else(|| anyhow!("every subscriber ended"))?;
            if matches!(g, Got::Message { full: true, .. }) {
                snapshots += 1;
            }
            t.apply(g);
        }
        Ok::<_, anyhow::Error>(t0.elapsed())
    })?;
    if !t.failed.is_empty() {
        eprintln!(
            "served: {} of {n} subscribers failed, e.g. {:?}",
            t.failed.len(),
            t.failures
        );
    }
    std::thread::sleep(Duration::from_secs(1));
    let (cpu1, rss_subscribed, _) = crate::bench::process_usage(pid)?;

    // The changes: each emitted at the API, then waited for at every live subscriber.
    let mut to_all = Vec::new();
    let mut each = Vec::new();
    let mut missing = 0usize;
    let changes_start = Instant::now();
    for c in 1..=args.changes as u32 {
        let port = u16::try_from(CHANGE_BASE + c).context("--changes too large")?;
        let body = cluster.changed_slice(port, &format!("{}", 6000 + c));
        let sent = Instant::now();
        if api.emit(gen::SLICES, event("MODIFIED", body)) != 1 {
            bail!("the control plane's EndpointSlice watch is gone");
        }
        let live = n - t.failed.len();
        let mut holders = 0usize;
        let deadline = sent + Duration::from_secs(30);
        let mut last = sent;
        rt.block_on(async {
            while holders < n - t.failed.len() {
                let left = deadline.saturating_duration_since(Instant::now());
                let Ok(Some(g)) = tokio::time::timeout(left, rx.recv()).await else {
                    break;
                };
                if let Some((sub, got, at)) = t.apply(g) {
                    if got == c && got_change[sub] < c {
                        got_change[sub] = c;
                        holders += 1;
                        each.push(at - sent);
                        last = last.max(at);
                    }
                }
            }
        });
        if holders < live {
            missing += live - holders;
            eprintln!("served: change {c} reached {holders} of {live} subscribers in 30 s");
        } else {
            to_all.push(last - sent);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let changes_secs = changes_start.elapsed().as_secs_f64();
    let (cpu2, _, _) = crate::bench::process_usage(pid)?;
    // The deltas of the timed changes (the churn's come after).
    let delta_bytes_changes = t.delta_bytes.clone();
    let churn = if args.churn_secs > 0 {
        let first = args.changes as u32 + 1;
        let c = churn(
            rt,
            &api,
            cluster,
            args,
            first,
            &mut t,
            &mut rx,
            &mut got_change,
            n,
            pid,
        )?;
        Some(c)
    } else {
        None
    };
    let (_, _, hwm) = crate::bench::process_usage(pid)?;
    let after_startup = Traffic::read(&api).since(&at_startup);
    let after_secs = startup_done.elapsed().as_secs_f64();
    let open_watches = [gen::SERVICES, gen::SLICES, gen::PODS, gen::SIDECARS]
        .iter()
        .map(|p| api.open_watches(p))
        .sum();
    let timeout = watch_timeout(&api.requests());
    for task in tasks {
        task.abort();
    }
    cp.proc.stop(Duration::from_secs(5));
    if cp.proc.log_tail(2000).contains("too slow") {
        eprintln!("served: the control plane dropped subscribers as too slow");
    }
    to_all.sort();
    each.sort();
    let live: Vec<usize> = (0..n).filter(|i| !t.failed.contains(i)).collect();
    Ok(Served {
        subscribers: n,
        sync,
        startup,
        after_startup,
        after_secs,
        open_watches,
        watch_timeout: timeout,
        subscribe_all,
        failed: t.failed.len(),
        snapshot_bytes: live.iter().map(|i| t.snapshot_bytes[*i]).collect(),
        delta_bytes: live.iter().map(|i| delta_bytes_changes[*i]).collect(),
        to_all,
        each,
        missing,
        cpu_sync: cpu0,
        cpu_subscribe: cpu1 - cpu0,
        cpu_changes: cpu2 - cpu1,
        changes_secs,
        rss_sync,
        rss_subscribed,
        hwm,
        load: load(),
        connecting,
        churn,
    })
}

/// What the churn measured.
struct Churn {
    secs: f64,
    slice_changes: usize,
    pod_changes: usize,
    cpu: f64,
    /// Each slice change → each subscriber holding it (or a later one).
    each: Vec<Duration>,
    /// Subscribers that did not hold the last slice change 10 s after the churn.
    behind: usize,
    rss: u64,
}

/// Emit changes of `ns-000` for `--churn-secs` at `--churn-rate` per second, slices and pods
/// alternately, without waiting for the subscribers; time each slice change to each subscriber
/// (a subscriber may skip one when a later one reached it first: it counts once, for the
/// later). Ends 10 s after the last change at most.
#[allow(clippy::too_many_arguments)]
fn churn(
    rt: &tokio::runtime::Runtime,
    api: &RecordedApi,
    cluster: &Cluster,
    args: &Args,
    first: u32,
    t: &mut Tallies,
    rx: &mut mpsc::UnboundedReceiver<Got>,
    got_change: &mut [u32],
    n: usize,
    pid: u32,
) -> Result<Churn> {
    let total = (args.churn_secs * u64::from(args.churn_rate)) as u32;
    eprintln!("served: churn, {total} changes in {} s...", args.churn_secs);
    let (cpu0, _, _) = crate::bench::process_usage(pid)?;
    let mut pod = cluster
        .pods
        .iter()
        .find(|p| p["metadata"]["namespace"] == "ns-000")
        .cloned()
        .ok_or_else(|| anyhow!("no pod in ns-000"))?;
    let mut sent: BTreeMap<u32, Instant> = BTreeMap::new();
    let mut each = Vec::new();
    let (mut slices, mut pods) = (0usize, 0usize);
    let mut last_slice = 0u32;
    let start = Instant::now();
    rt.block_on(async {
        let mut tick = tokio::time::interval(Duration::from_secs_f64(
            1.0 / f64::from(args.churn_rate.max(1)),
        ));
        let mut c = first;
        let end = first + total;
        let mut deadline: Option<tokio::time::Instant> = None;
        loop {
            let done_sending = c >= end;
            if done_sending {
                let d = *deadline
                    .get_or_insert_with(|| tokio::time::Instant::now() + Duration::from_secs(10));
                let live = (0..n).filter(|i| !t.failed.contains(i));
                if live.clone().all(|i| got_change[i] >= last_slice) || tokio::time::Instant::now() >= d {
                    break;
                }
            }
            tokio::select! {
                _ = tick.tick(), if !done_sending => {
                    let rv = format!("{}", 6000 + c);
                    if c.is_multiple_of(2) {
                        let Ok(port) = u16::try_from(CHANGE_BASE + c) else { break };
                        if api.emit(gen::SLICES, event("MODIFIED", cluster.changed_slice(port, &rv))) != 1 {
                            break;
                        }
                        sent.insert(c, Instant::now());
                        last_slice = c;
                        slices += 1;
                    } else {
                        pod["metadata"]["labels"]["churn"] = json!(c.to_string());
                        pod["metadata"]["resourceVersion"] = json!(rv);
                        if api.emit(gen::PODS, event("MODIFIED", pod.clone())) != 1 {
                            break;
                        }
                        pods += 1;
                    }
                    c += 1;
                }
                g = rx.recv() => {
                    let Some(g) = g else { break };
                    if let Some((sub, got, at)) = t.apply(g) {
                        if got > got_change[sub] {
                            got_change[sub] = got;
                            if let Some(s) = sent.get(&got) {
                                each.push(at - *s);
                            }
                        }
                    }
                }
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
        }
    });
    let secs = start.elapsed().as_secs_f64();
    let (cpu1, rss, _) = crate::bench::process_usage(pid)?;
    let behind = (0..n)
        .filter(|i| !t.failed.contains(i) && got_change[*i] < last_slice)
        .count();
    each.sort();
    Ok(Churn {
        secs,
        slice_changes: slices,
        pod_changes: pods,
        cpu: cpu1 - cpu0,
        each,
        behind,
        rss,
    })
}

// ---- real proxies ----

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Served,
    /// Served, with a Sidecar that admits no Service (the subscription's own cost).
    ServedEmpty,
    Direct,
    Off,
}

/// A proxy's memory (KiB): VmRSS; RssAnon (its private memory, without the pages of its
/// binary and libraries); PSS from `smaps_rollup` (every page it maps, a shared one divided by
/// the number of processes mapping it: with the proxies of one mode running side by side, what
/// each costs a node running several).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Memory {
    pub rss: u64,
    pub anon: u64,
    pub pss: u64,
}

impl Memory {
    fn of(pid: u32) -> Result<Memory> {
        let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))?;
        Ok(Memory {
            rss: crate::bench::process_usage(pid)?.1,
            anon: anon(pid)?,
            pss: pss(&rollup).ok_or_else(|| anyhow!("/proc/{pid}/smaps_rollup has no Pss"))?,
        })
    }

    /// The median of each field on its own.
    fn median(v: &[Memory]) -> Memory {
        Memory {
            rss: median(v.iter().map(|m| m.rss).collect()),
            anon: median(v.iter().map(|m| m.anon).collect()),
            pss: median(v.iter().map(|m| m.pss).collect()),
        }
    }

    /// What `self` costs over `base`, field by field (0 when less).
    fn over(&self, base: &Memory) -> Memory {
        Memory {
            rss: self.rss.saturating_sub(base.rss),
            anon: self.anon.saturating_sub(base.anon),
            pss: self.pss.saturating_sub(base.pss),
        }
    }
}

/// The `Pss:` of a `/proc/PID/smaps_rollup` (KiB; not `Pss_Anon:` and the other parts).
pub fn pss(rollup: &str) -> Option<u64> {
    rollup.lines().find_map(|l| {
        l.strip_prefix("Pss:")?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    })
}

struct RealProxy {
    proc: Proc,
    prometheus: SocketAddr,
    health: SocketAddr,
}

/// The egress hosts of a bench proxy's Sidecar: the first `services` Services of `ns`; with 0,
/// a host no Service has (nothing admitted).
fn sidecar_hosts(ns: &str, services: usize) -> Vec<String> {
    if services == 0 {
        return vec![format!("{ns}/none.{ns}.svc.cluster.local")];
    }
    (0..services)
        .map(|j| format!("{ns}/{}.{ns}.svc.cluster.local", gen::svc_name(j)))
        .collect()
}

/// The Sidecar of a bench proxy, as its rules file.
fn sidecar_yaml(ns: &str, services: usize) -> String {
    let hosts: Vec<String> = sidecar_hosts(ns, services)
        .iter()
        .map(|h| format!("    - \"{h}\"\n"))
        .collect();
    format!(
        "apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {{name: default, namespace: {ns}}}\nspec:\n  egress:\n  - hosts:\n{}",
        hosts.concat()
    )
}

/// The same Sidecar as the API serves it (the control plane scopes the subscription by it).
fn sidecar_object(ns: &str, services: usize) -> Value {
    json!({"apiVersion": "networking.istio.io/v1", "kind": "Sidecar",
        "metadata": {"name": "default", "namespace": ns, "resourceVersion": "5000",
                     "uid": format!("uid-sidecar-{ns}")},
        "spec": {"egress": [{"hosts": sidecar_hosts(ns, services)}]}})
}

/// The namespace of real proxy `i` of `mode`: not `ns-000` (the served runs' shared one) when
/// there are others; the empty-scope proxies after the others (their own Sidecars).
fn proxy_ns(mode: Mode, i: usize, count: usize, ns_count: usize) -> String {
    if ns_count <= 1 {
        return gen::ns_name(0);
    }
    let k = if mode == Mode::ServedEmpty {
        count + i
    } else {
        i
    };
    gen::ns_name(1 + k % (ns_count - 1))
}

/// The counts the proxy logs when the control plane's first snapshot is applied: (Services,
/// EndpointSlices, Pods), read from `services=N endpoint_slices=N pods=N`.
pub fn snapshot_counts(log: &str) -> Option<(u64, u64, u64)> {
    let line = log.lines().find(|l| l.contains("snapshot applied"))?;
    let field = |k: &str| {
        line.split(|c: char| c.is_whitespace() || c == ',')
            .find_map(|w| w.strip_prefix(k)?.strip_prefix('=')?.parse().ok())
    };
    Some((
        field("services")?,
        field("endpoint_slices")?,
        field("pods")?,
    ))
}

#[allow(clippy::too_many_arguments)]
fn start_proxy(
    bin_dir: &Path,
    dir: &Path,
    i: usize,
    mode: Mode,
    ns: &str,
    scoped: usize,
    api: &RecordedApi,
    cp: &ControlPlane,
) -> Result<RealProxy> {
    let bin = bin_dir.join("remora-proxy");
    if !bin.exists() {
        bail!("{} is missing: build it first", bin.display());
    }
    let d = dir.join(format!("proxy-{mode:?}-{i}"));
    std::fs::create_dir_all(d.join("rules"))?;
    std::fs::write(d.join("rules/sidecar.yaml"), sidecar_yaml(ns, scoped))?;
    let sa = format!("proxy-{i}");
    std::fs::write(d.join("token"), token(ns, &sa))?;
    let p = crate::ports::free_ports(5);
    let a = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));
    let mut cmd = Command::new(&bin);
    cmd.arg("run")
        .arg(format!("--outbound-addr={}", a(p[0])))
        .arg(format!("--inbound-addr={}", a(p[1])))
        .arg(format!("--admin-addr={}", a(p[2])))
        .arg(format!("--health-addr={}", a(p[3])))
        .arg(format!("--prometheus-addr={}", a(p[4])))
        .arg(format!("--rules-dir={}", d.join("rules").display()))
        .args([
            "--ipv6=off",
            "--access-log=off",
            "--inbound-source-fallback",
        ])
        .args(["--threads=2", "--allow-root"])
        .arg("--pod-labels-file=/nonexistent/remora-bench-labels")
        .arg(format!("--namespace={ns}"))
        .arg(format!("--workload-name={sa}"))
        .env("SERVICE_ACCOUNT", &sa)
        .env("POD_NAME", format!("{sa}-7d9c5b8f6-x2k4q"))
        // Every mode has its workload identity from the control plane's CA, as an installed
        // sidecar has (its projected token reviewed by the recorded API): the TLS, HTTP/2 and
        // gRPC client of the certificate call is then in every mode, not only with discovery.
        .arg(format!("--ca-address={}", cp.ca))
        .arg(format!("--ca-server-name={CA_NAME}"))
        .arg(format!("--ca-root-file={}", dir.join("root.pem").display()))
        .arg(format!("--ca-token-file={}", d.join("token").display()));
    match mode {
        Mode::Served | Mode::ServedEmpty => {
            cmd.arg("--kube-api=off")
                .arg(format!("--discovery-address={}", cp.ca))
                .arg(format!("--discovery-server-name={CA_NAME}"));
        }
        Mode::Direct => {
            cmd.arg(format!("--kube-api={}", api.url()));
        }
        Mode::Off => {
            cmd.arg("--kube-api=off");
        }
    }
    let proc = spawn(&format!("proxy {mode:?} {i}"), cmd, d.join("proxy.log"))?;
    Ok(RealProxy {
        proc,
        prometheus: a(p[4]),
        health: a(p[3]),
    })
}

/// One HTTP/1.1 GET on loopback: the body of a 200, else `None`.
fn http_get(addr: SocketAddr, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let (head, body) = out.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.1 200").then(|| body.to_string())
}

fn metric(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// Start `count` proxies of `mode`, wait until each is ready (its workload certificate issued;
/// with discovery, its first sync) and indexed `scoped` Services, let them settle, and read
/// their memory while all of them run (copying each one's `/proc/PID/smaps` into `smaps_dir`
/// when given).
#[allow(clippy::too_many_arguments)]
fn proxies(
    bin_dir: &Path,
    dir: &Path,
    mode: Mode,
    count: usize,
    scoped: usize,
    ns_count: usize,
    api: &RecordedApi,
    cp: &ControlPlane,
    smaps_dir: Option<&Path>,
    cancel: &AtomicBool,
) -> Result<(Vec<RealProxy>, Vec<Memory>, Duration)> {
    let mut ps = Vec::new();
    let scoped = if mode == Mode::ServedEmpty { 0 } else { scoped };
    for i in 0..count {
        let ns = proxy_ns(mode, i, count, ns_count);
        ps.push(start_proxy(bin_dir, dir, i, mode, &ns, scoped, api, cp)?);
    }
    let took = wait_until(&format!("{count} {mode:?} proxies synced"), cancel, || {
        let mut all = true;
        for p in ps.iter_mut() {
            if p.proc.exited().is_some() {
                bail!("{} exited:\n{}", p.proc.name, p.proc.log_tail(20));
            }
            // Ready: the certificate issued (and discovery's first sync, with discovery).
            let ready = http_get(p.health, "/healthz/ready").is_some();
            let text = http_get(p.prometheus, "/stats/prometheus");
            let ok = match (mode, text) {
                (_, None) => false,
                // Nothing to index.
                (Mode::Off | Mode::ServedEmpty, Some(_)) => ready,
                (_, Some(t)) => {
                    ready && metric(&t, "remora_discovery_services") == Some(scoped as u64)
                }
            };
            all &= ok;
        }
        Ok(all)
    })?;
    // The proxy returns freed pages to the kernel within a second of its last index build.
    std::thread::sleep(Duration::from_millis(2500));
    let mem = ps
        .iter()
        .map(|p| Memory::of(p.proc.pid()))
        .collect::<Result<Vec<Memory>>>()?;
    if let Some(out) = smaps_dir {
        std::fs::create_dir_all(out)?;
        for (i, p) in ps.iter().enumerate() {
            let smaps = std::fs::read_to_string(format!("/proc/{}/smaps", p.proc.pid()))?;
            std::fs::write(out.join(format!("{mode:?}-{i}.smaps")), smaps)?;
        }
    }
    Ok((ps, mem, took))
}

struct Proxies {
    count: usize,
    scoped: usize,
    /// Medians of each mode's proxies: identity without discovery, served, served with the
    /// Sidecar admitting no Service, direct (watch per sidecar).
    off: Memory,
    served: Memory,
    empty: Memory,
    direct: Memory,
    /// What each served proxy's first snapshot held: (Services, slices, Pods).
    received: Vec<Option<(u64, u64, u64)>>,
    received_empty: Vec<Option<(u64, u64, u64)>>,
    direct_startup: Traffic,
    direct_window: Traffic,
    window_secs: f64,
    direct_open_watches: usize,
    direct_timeout: Option<u64>,
    served_startup: Traffic,
    sync_off: Duration,
    sync_served: Duration,
    sync_direct: Duration,
    load: String,
}

fn proxies_run(
    rt: &tokio::runtime::Runtime,
    bin_dir: &Path,
    cluster: &Cluster,
    args: &Args,
    cancel: &Arc<AtomicBool>,
) -> Result<Proxies> {
    let dir = tempfile::tempdir()?;
    let (count, scoped, nss) = (args.proxies, args.scoped_services, cluster.shape.namespaces);
    if scoped == 0 || scoped > cluster.shape.services_in(nss.saturating_sub(1)) {
        bail!(
            "--scoped-services {scoped}: must be 1 to the Services of a namespace ({})",
            cluster.shape.services_in(nss.saturating_sub(1))
        );
    }
    let smaps = args.smaps_dir.as_deref();
    // The API serves each proxy's Sidecar as its rules directory holds it.
    let sidecars: Vec<Value> = (0..count)
        .flat_map(|i| {
            [
                sidecar_object(&proxy_ns(Mode::Served, i, count, nss), scoped),
                sidecar_object(&proxy_ns(Mode::ServedEmpty, i, count, nss), 0),
            ]
        })
        .collect();
    let api = api_for(rt, cluster, sidecars)?;
    // One control plane for every mode: its CA issues each proxy's certificate.
    let (mut cp, _) = start_control_plane(bin_dir, &api, dir.path(), None, cancel)?;
    let run_mode = |mode: Mode| {
        proxies(
            bin_dir,
            dir.path(),
            mode,
            count,
            scoped,
            nss,
            &api,
            &cp,
            smaps,
            cancel,
        )
    };
    let stop = |ps: &mut Vec<RealProxy>| {
        for p in ps.iter_mut() {
            p.proc.stop(Duration::from_secs(3));
        }
    };

    eprintln!("real proxies: {count} with a workload identity, without discovery...");
    let (mut off, mem_off, sync_off) = run_mode(Mode::Off)?;
    stop(&mut off);

    eprintln!("real proxies: {count} with discovery from the control plane...");
    let before = Traffic::read(&api);
    let (mut served, mem_served, sync_served) = run_mode(Mode::Served)?;
    let served_startup = Traffic::read(&api).since(&before);
    let received: Vec<Option<(u64, u64, u64)>> = served
        .iter()
        .map(|p| snapshot_counts(&p.proc.log_tail(400)))
        .collect();
    stop(&mut served);
    eprintln!("real proxies: {count} with discovery from the control plane, a Sidecar admitting no Service...");
    let (mut empty, mem_empty, _) = run_mode(Mode::ServedEmpty)?;
    let received_empty: Vec<Option<(u64, u64, u64)>> = empty
        .iter()
        .map(|p| snapshot_counts(&p.proc.log_tail(400)))
        .collect();
    stop(&mut empty);

    eprintln!("real proxies: {count} watching the API themselves...");
    // The control plane's own requests and watches stay out of the direct mode's: only the
    // requests made from here on count.
    let seen_before = api.request_count();
    let before = Traffic::read(&api);
    let (mut direct, mem_direct, sync_direct) = run_mode(Mode::Direct)?;
    let direct_startup = Traffic::read(&api).since(&before);
    let w0 = Traffic::read(&api);
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(args.window) {
        if cancel.load(Ordering::Relaxed) {
            bail!("cancelled");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let direct_window = Traffic::read(&api).since(&w0);
    let window_secs = t.elapsed().as_secs_f64();
    let seen: Vec<Seen> = api.requests().into_iter().skip(seen_before).collect();
    let mut watched: Vec<String> = seen
        .iter()
        .filter(|s| is_watch(&s.path_and_query))
        .map(|s| s.path().to_string())
        .collect();
    watched.sort();
    watched.dedup();
    let direct_open_watches = watched.iter().map(|p| api.open_watches(p)).sum();
    let direct_timeout = watch_timeout(&seen);
    let load = load();
    stop(&mut direct);
    cp.proc.stop(Duration::from_secs(5));
    Ok(Proxies {
        count,
        scoped,
        off: Memory::median(&mem_off),
        served: Memory::median(&mem_served),
        empty: Memory::median(&mem_empty),
        direct: Memory::median(&mem_direct),
        received,
        received_empty,
        direct_startup,
        direct_window,
        window_secs,
        direct_open_watches,
        direct_timeout,
        served_startup,
        sync_off,
        sync_served,
        sync_direct,
        load,
    })
}

// ---- the report ----

fn report(args: &Args, shape: &Shape, served: &[Served], px: &Proxies) -> String {
    let mut out = String::new();
    let d = |t: &Traffic| t.get("discovery");
    out.push_str(&format!(
        "discovery at scale: {} namespaces, {} Services (one EndpointSlice each), {} pods; {} cores\n\n",
        shape.namespaces,
        shape.services,
        shape.pods,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    ));
    // Served mode.
    let mut rows = Vec::new();
    for s in served {
        let (sr, sw, sb) = d(&s.startup);
        let (ar, _, ab) = d(&s.after_startup);
        let per_min = |x: u64| x as f64 * 60.0 / s.after_secs.max(1.0);
        let p = |v: &[Duration], q| quantile(v, q).map_or("-".into(), ms);
        let snap: Vec<u64> = {
            let mut v = s.snapshot_bytes.clone();
            v.sort_unstable();
            v
        };
        let deltas: Vec<u64> = {
            let mut v = s.delta_bytes.clone();
            v.sort_unstable();
            v
        };
        rows.push(vec![
            s.subscribers.to_string(),
            format!("{} ({} watches)", sr, sw),
            kb(sb),
            ms(s.sync),
            s.open_watches.to_string(),
            format!("{:.1} req, {} kB", per_min(ar), kb(per_min(ab) as u64)),
            s.after_startup.get("tokenreviews").0.to_string(),
            format!(
                "{} ms ({} at once; {} failed)",
                ms(s.subscribe_all),
                s.connecting,
                s.failed
            ),
            format!(
                "{} / {}",
                kb(quantile(&snap, 0.5).unwrap_or(0)),
                kb(quantile(&deltas, 0.5).unwrap_or(0))
            ),
            format!(
                "{} / {} / {}",
                p(&s.to_all, 0.5),
                p(&s.to_all, 0.99),
                p(&s.to_all, 1.0)
            ),
            format!("{} / {}", p(&s.each, 0.5), p(&s.each, 0.99)),
            format!(
                "{:.2} s / {:.2} s / {:.2} s ({:.0} %)",
                s.cpu_sync,
                s.cpu_subscribe,
                s.cpu_changes,
                100.0 * s.cpu_changes / s.changes_secs.max(0.001)
            ),
            format!(
                "{} / {} / {}",
                mib(s.rss_sync),
                mib(s.rss_subscribed),
                mib(s.hwm)
            ),
            s.load.clone(),
        ]);
    }
    if !served.is_empty() {
        out.push_str(&format!(
            "Served mode (remora-webhook serve --discovery on; each run a fresh control plane; {} EndpointSlice changes per run):\n\n",
            args.changes
        ));
        out.push_str(&table::markdown(
            &[
                "subscribers",
                "API requests at start (lists + watches, the Sidecars' too)",
                "API kB at start",
                "start → synced (ms)",
                "watches open at the API",
                "API after start, per minute",
                "TokenReviews",
                "all subscribed",
                "kB per subscriber: snapshot / deltas (median)",
                "change → every subscriber p50 / p99 / max (ms)",
                "change → one subscriber p50 / p99 (ms)",
                "control-plane CPU: start / subscribe / changes",
                "control-plane RSS MiB: synced / subscribed / peak",
                "load (1 min)",
            ],
            &rows,
        ));
    }
    let churned: Vec<&Served> = served.iter().filter(|s| s.churn.is_some()).collect();
    if !churned.is_empty() {
        let mut rows = Vec::new();
        for s in churned {
            let Some(c) = &s.churn else { continue };
            let p = |q| quantile(&c.each, q).map_or("-".into(), ms);
            rows.push(vec![
                s.subscribers.to_string(),
                format!(
                    "{} slices + {} pods in {:.1} s",
                    c.slice_changes, c.pod_changes, c.secs
                ),
                format!(
                    "{:.2} s ({:.0} %)",
                    c.cpu,
                    100.0 * c.cpu / c.secs.max(0.001)
                ),
                format!("{} / {} / {}", p(0.5), p(0.99), p(1.0)),
                c.each.len().to_string(),
                c.behind.to_string(),
                mib(c.rss),
                s.load.clone(),
            ]);
        }
        out.push_str(&format!(
            "\nChurn (after the timed changes; {} changes per second of ns-000, which every subscriber sees; not waited for):\n\n",
            args.churn_rate
        ));
        out.push_str(&table::markdown(
            &[
                "subscribers",
                "changes",
                "control-plane CPU",
                "slice change → a subscriber p50 / p99 / max (ms)",
                "deliveries timed",
                "subscribers behind the last change after 10 s",
                "control-plane RSS MiB after",
                "load (1 min)",
            ],
            &rows,
        ));
    }
    // Real proxies and the direct mode.
    let (dr, dw, db) = d(&px.direct_startup);
    let (wr, ww, wb) = d(&px.direct_window);
    let per = |x: u64| x as f64 / px.count.max(1) as f64;
    let cm = px.direct_startup.get("configmaps");
    let timeout = px
        .direct_timeout
        .or(served.first().and_then(|s| s.watch_timeout));
    let rewatch = |watches: f64| {
        timeout.map_or("-".to_string(), |t| {
            format!("{:.2}", watches * 60.0 / t as f64)
        })
    };
    let direct_watches_per_proxy = px.direct_open_watches as f64 / px.count.max(1) as f64;
    out.push_str(&format!(
        "\nReal proxies ({} per mode, each with its workload certificate from the control plane's CA; Sidecar egress: {} Services of its namespace; medians, read 2.5 s after every proxy of the mode was ready and synced, all of them running; discovery's share = the mode's median minus the median without discovery; load (1 min) {}):\n\n",
        px.count, px.scoped, px.load
    ));
    let tokenreviews = format!(
        "{:.1} (TokenReviews)",
        per(px.served_startup.get("tokenreviews").0)
    );
    let mem = |m: &Memory| {
        let o = m.over(&px.off);
        [
            mib(m.rss),
            mib(o.rss),
            mib(m.anon),
            mib(o.anon),
            mib(m.pss),
            mib(o.pss),
        ]
    };
    let row = |name: &str, m: &Memory, rest: [String; 4]| {
        let mut r = vec![name.to_string()];
        r.extend(mem(m));
        r.extend(rest);
        r
    };
    let mut off_row = vec!["identity, no discovery (--kube-api=off)".to_string()];
    off_row.extend([
        mib(px.off.rss),
        "-".into(),
        mib(px.off.anon),
        "-".into(),
        mib(px.off.pss),
        "-".into(),
    ]);
    off_row.extend([ms(px.sync_off), "0".into(), "0".into(), "0".into()]);
    out.push_str(&table::markdown(
        &[
            "discovery",
            "VmRSS MiB",
            "discovery's VmRSS MiB",
            "RssAnon MiB (private)",
            "discovery's RssAnon MiB",
            "PSS MiB",
            "discovery's PSS MiB",
            "ready (and synced) after (ms)",
            "API requests at start per proxy",
            "API kB at start per proxy",
            "API watches open per proxy",
        ],
        &[
            off_row,
            row(
                "identity + from the control plane (--discovery-address)",
                &px.served,
                [
                    ms(px.sync_served),
                    tokenreviews.clone(),
                    "0".into(),
                    "0".into(),
                ],
            ),
            row(
                "identity + from the control plane, Sidecar admitting no Service",
                &px.empty,
                ["-".into(), tokenreviews, "0".into(), "0".into()],
            ),
            row(
                "identity + from the API (--kube-api, watch per sidecar)",
                &px.direct,
                [
                    ms(px.sync_direct),
                    format!(
                        "{:.1} ({:.1} watches) + {:.1} ConfigMap",
                        per(dr),
                        per(dw),
                        per(cm.0)
                    ),
                    format!(
                        "{} + {} ConfigMap",
                        kb(per(db) as u64),
                        kb(per(cm.2) as u64)
                    ),
                    format!("{direct_watches_per_proxy:.1} (with the rules ConfigMap's)"),
                ],
            ),
        ],
    ));
    let counts = |v: &[Option<(u64, u64, u64)>]| {
        v.iter()
            .map(|c| c.map_or("?".into(), |(s, e, p)| format!("{s}/{e}/{p}")))
            .collect::<Vec<String>>()
            .join(", ")
    };
    out.push_str(&format!(
        "\nThe served proxies' first snapshot (Services/EndpointSlices/Pods, from their logs): {}; with the Sidecar admitting no Service: {}.\n",
        counts(&px.received),
        counts(&px.received_empty)
    ));
    out.push_str(&format!(
        "\nDirect mode over {:.0} s after sync: {} discovery requests ({} watches), {} kB for {} proxies (held watches: a real API server ends each after timeoutSeconds={}, so it is made again: {} watch requests per minute per proxy).\n",
        px.window_secs, wr, ww, kb(wb), px.count,
        timeout.map_or("?".into(), |t| t.to_string()),
        rewatch(direct_watches_per_proxy),
    ));
    // Watch-per-sidecar versus served, extrapolated.
    let mut rows = Vec::new();
    for s in served {
        let n = s.subscribers as f64;
        let (sr, sw, sb) = d(&s.startup);
        rows.push(vec![
            s.subscribers.to_string(),
            format!("{:.0}", direct_watches_per_proxy * n),
            format!("{}", s.open_watches),
            format!("{:.0} / {:.0}", per(dr + cm.0) * n, sr),
            format!("{:.1} / {:.2}", (per(db + cm.2) * n) / 1e6, sb as f64 / 1e6),
            format!(
                "{} / {}",
                rewatch(direct_watches_per_proxy * n),
                rewatch(sw as f64)
            ),
        ]);
    }
    if !rows.is_empty() {
        out.push_str(&format!(
            "\nWatch per sidecar (measured with {} proxies, extrapolated linearly) versus served (measured):\n\n",
            px.count
        ));
        out.push_str(&table::markdown(
            &[
                "proxies",
                "API watches, watch per sidecar",
                "API watches, served",
                "API requests at start: per sidecar / served",
                "API MB at start: per sidecar / served",
                "watch requests per minute: per sidecar / served",
            ],
            &rows,
        ));
    }
    // Targets.
    let watches: Vec<usize> = served.iter().map(|s| s.open_watches).collect();
    let independent = !watches.is_empty() && watches.iter().all(|w| *w == watches[0]);
    let share = px.served.over(&px.off);
    out.push_str("\nTargets:\n");
    if served.is_empty() {
        out.push_str("- API-server watch count independent of the number of proxies: not run (--proxies-only)\n");
    } else {
        out.push_str(&format!(
            "- API-server watch count independent of the number of proxies: {:?} at {:?} subscribers: {}\n",
            watches,
            served.iter().map(|s| s.subscribers).collect::<Vec<_>>(),
            verdict(independent)
        ));
    }
    let scoped_sent = px
        .received
        .iter()
        .all(|c| c.is_some_and(|(s, e, _)| s == px.scoped as u64 && e == px.scoped as u64));
    out.push_str(&format!(
        "- the control plane sends a proxy only its Sidecar's {} Services (and their slices): {}\n",
        px.scoped,
        verdict(scoped_sent)
    ));
    out.push_str(&format!(
        "- per-proxy discovery RSS <= 2 MiB with a Sidecar of {} Services (served minus identity-only, VmRSS medians): {} MiB: {}\n",
        px.scoped,
        mib(share.rss),
        verdict(share.rss <= 2048)
    ));
    out.push_str(&format!(
        "  (private, RssAnon: {} MiB; PSS with {} proxies of the mode running: {} MiB)\n",
        mib(share.anon),
        px.count,
        mib(share.pss)
    ));
    for s in served.iter().filter(|s| s.subscribers >= 1000) {
        let p99 = quantile(&s.to_all, 0.99);
        let ok =
            s.missing == 0 && s.failed == 0 && p99.is_some_and(|p| p <= Duration::from_secs(1));
        out.push_str(&format!(
            "- change propagation p99 <= 1 s at {} subscribers (to every subscriber): {} ms{}: {}\n",
            s.subscribers,
            p99.map_or("-".into(), ms),
            if s.missing > 0 || s.failed > 0 {
                format!(" ({} deliveries missing, {} subscribers failed)", s.missing, s.failed)
            } else {
                String::new()
            },
            verdict(ok)
        ));
    }
    if served.is_empty() {
        out.push_str(
            "- change propagation p99 <= 1 s at 1,000 subscribers: not run (--proxies-only)\n",
        );
    } else if !served.iter().any(|s| s.subscribers >= 1000) {
        out.push_str("- change propagation p99 <= 1 s at 1,000 subscribers: not run (no run with 1,000 or more)\n");
    }
    out
}

/// Run the benchmark; prints the report on stdout.
pub fn run(bin_dir: &Path, args: Args, cancel: Arc<AtomicBool>) -> Result<()> {
    let shape = Shape {
        namespaces: args.namespaces,
        services: args.services,
        pods: args.pods,
    };
    shape.check()?;
    let max_conns = args.ca_max_connections.unwrap_or(1024) as usize;
    if args.subscribers.is_empty()
        || args
            .subscribers
            .iter()
            .any(|n| *n == 0 || *n > 4000 || *n > max_conns)
    {
        bail!(
            "--subscribers {:?}: each must be 1 to 4000 and at most the control plane's --ca-max-connections ({max_conns}: one connection per subscriber)",
            args.subscribers
        );
    }
    if args.churn_secs > 300 || args.churn_rate == 0 || args.churn_rate > 1000 {
        bail!(
            "--churn-secs {} / --churn-rate {}: at most 300 seconds, 1 to 1000 changes per second",
            args.churn_secs,
            args.churn_rate
        );
    }
    if args.changes as u64 + args.churn_secs * u64::from(args.churn_rate) > 45_000 {
        bail!(
            "--changes plus the churn's changes: at most 45000 (each is carried as a port number)"
        );
    }
    if args.changes == 0 || args.changes > 1000 {
        bail!("--changes {}: must be 1 to 1000", args.changes);
    }
    if args.proxies == 0 || args.proxies > 50 {
        bail!("--proxies {}: must be 1 to 50", args.proxies);
    }
    if args.window > 600 {
        bail!("--window {}: at most 600 seconds", args.window);
    }
    remora_webhook::tls::install_provider();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let cluster = Cluster::generate(shape);
    let load_before = load();
    let mut served = Vec::new();
    for n in args.subscribers.iter().filter(|_| !args.proxies_only) {
        served.push(served_run(&rt, bin_dir, &cluster, *n, &args, &cancel)?);
    }
    let px = proxies_run(&rt, bin_dir, &cluster, &args, &cancel)?;
    print!("{}", report(&args, &shape, &served, &px));
    println!("load (1 min) before: {load_before}, after: {}", load());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_counted_by_what_they_are_for() {
        for (path, cat) in [
            ("/api/v1/services", "discovery"),
            ("/api/v1/namespaces/ns-001/pods", "discovery"),
            (
                "/apis/discovery.k8s.io/v1/namespaces/a/endpointslices",
                "discovery",
            ),
            ("/api/v1/namespaces/a/configmaps", "configmaps"),
            (TOKEN_REVIEWS, "tokenreviews"),
            ("/api/v1/namespaces/a/pods/p/portforward", "other"),
            (SECRETS, "other"),
        ] {
            assert_eq!(category(path), cat, "{path}");
        }
        assert!(is_watch("/api/v1/pods?allowWatchBookmarks=true&watch=true"));
        assert!(!is_watch("/api/v1/pods?limit=500"));
        assert!(!is_watch("/api/v1/pods"));
        let seen = |pq: &str| Seen {
            method: "GET".into(),
            path_and_query: pq.into(),
            content_type: None,
            body: None,
            matched: true,
        };
        let t = Traffic::of(
            &[
                seen("/api/v1/pods?limit=500"),
                seen("/api/v1/pods?watch=true"),
                seen(SECRETS),
            ],
            &[("/api/v1/pods".to_string(), 700), (SECRETS.to_string(), 5)].into(),
        );
        assert_eq!(t.get("discovery"), (2, 1, 700));
        assert_eq!(t.get("other"), (1, 0, 5));
        let later = Traffic::of(
            &[
                seen("/api/v1/pods?limit=500"),
                seen("/api/v1/pods?watch=true"),
                seen(SECRETS),
                seen("/api/v1/services"),
            ],
            &[("/api/v1/pods".to_string(), 900), (SECRETS.to_string(), 5)].into(),
        );
        assert_eq!(later.since(&t).get("discovery"), (1, 0, 200));
        assert_eq!(later.since(&t).get("tokenreviews"), (0, 0, 0));
    }

    #[test]
    fn quantiles_are_nearest_rank() {
        let v: Vec<u32> = (1..=100).collect();
        assert_eq!(quantile(&v, 0.5), Some(50));
        assert_eq!(quantile(&v, 0.99), Some(99));
        assert_eq!(quantile(&v, 1.0), Some(100));
        assert_eq!(quantile(&v, 0.0), Some(1));
        assert_eq!(quantile(&[7u32], 0.99), Some(7));
        assert_eq!(quantile::<u32>(&[], 0.5), None);
        // 20 changes: p99 is the slowest.
        let twenty: Vec<u32> = (1..=20).collect();
        assert_eq!(quantile(&twenty, 0.99), Some(20));
        assert_eq!(median(vec![5, 1, 3]), 3);
    }

    #[test]
    fn simulated_tokens_review_as_their_workload_and_others_not_at_all() {
        let t = token("ns-004", "sa-00042");
        let r = token_review(&t, "remora-ca").unwrap();
        assert_eq!(
            r["status"]["user"]["username"],
            "system:serviceaccount:ns-004:sa-00042"
        );
        assert_eq!(r["status"]["audiences"], json!(["remora-ca"]));
        assert_eq!(r["status"]["authenticated"], true);
        for bad in ["tok-httpbin", "sim.ns", "sim..sa", "sim.a.b.c", ""] {
            assert!(token_review(bad, "remora-ca").is_none(), "{bad}");
        }
    }

    #[test]
    fn a_change_is_read_from_the_changed_slice_only() {
        use remora_model::discovery_api::{EndpointSlice, SlicePort};
        let key = ("ns-000".to_string(), "svc-000-abcde".to_string());
        let sl = |ns: &str, name: &str, grpc: u32| EndpointSlice {
            namespace: ns.into(),
            name: name.into(),
            service: "svc-000".into(),
            ports: vec![
                SlicePort {
                    name: "http".into(),
                    port: 8080,
                },
                SlicePort {
                    name: "grpc".into(),
                    port: grpc,
                },
            ],
            endpoints: vec![],
        };
        let msg = |s: Vec<EndpointSlice>| DiscoveryResponse {
            endpoint_slices: s,
            ..Default::default()
        };
        assert_eq!(
            change_of(&msg(vec![sl("ns-000", "svc-000-abcde", 20_007)]), &key),
            Some(7)
        );
        // The snapshot's original port, another slice, another namespace: no change.
        assert_eq!(
            change_of(&msg(vec![sl("ns-000", "svc-000-abcde", 9090)]), &key),
            None
        );
        assert_eq!(
            change_of(&msg(vec![sl("ns-000", "svc-001-abcde", 20_007)]), &key),
            None
        );
        assert_eq!(
            change_of(&msg(vec![sl("ns-001", "svc-000-abcde", 20_007)]), &key),
            None
        );
        assert_eq!(change_of(&msg(vec![]), &key), None);
    }

    #[test]
    fn pss_is_read_from_smaps_rollup_and_shares_are_medians_apart() {
        let rollup = "55d0c0a1e000-7ffc9e5f7000 ---p 00000000 00:00 0                          [rollup]\nRss:               20480 kB\nPss:                6738 kB\nPss_Anon:           3900 kB\nPss_File:           2838 kB\nPss_Shmem:             0 kB\n";
        assert_eq!(pss(rollup), Some(6738));
        // Pss_Anon alone is not the PSS.
        assert_eq!(pss("Pss_Anon: 3900 kB\n"), None);
        assert_eq!(pss(""), None);
        let m = |rss, anon, pss| Memory { rss, anon, pss };
        // Each field's median on its own (not the row of the median RSS).
        let v = [m(100, 9, 50), m(300, 1, 40), m(200, 5, 60)];
        assert_eq!(Memory::median(&v), m(200, 5, 50));
        // A share is never negative.
        assert_eq!(m(200, 5, 50).over(&m(150, 7, 20)), m(50, 0, 30));
    }

    #[test]
    fn the_snapshot_counts_are_read_from_the_proxy_log() {
        let log = "2026-12-07T19:00:00Z  INFO remora_proxy::discovery::remote: discovery from the control plane: snapshot applied address=127.0.0.1:4000 version=7 services=10 endpoint_slices=10 pods=100\n";
        assert_eq!(snapshot_counts(log), Some((10, 10, 100)));
        assert_eq!(snapshot_counts("subscribed\n"), None);
        // A field missing: no counts rather than wrong ones.
        assert_eq!(snapshot_counts("snapshot applied services=10 pods=3"), None);
    }

    #[test]
    fn the_api_serves_the_sidecar_the_proxy_reads() {
        let o = sidecar_object("ns-002", 2);
        assert_eq!(o["metadata"]["namespace"], "ns-002");
        assert_eq!(
            o["spec"]["egress"][0]["hosts"],
            json!([
                "ns-002/svc-000.ns-002.svc.cluster.local",
                "ns-002/svc-001.ns-002.svc.cluster.local"
            ])
        );
        // The control plane decodes it as its rules controller does, to the same hosts.
        let c = remora_model::compile::check(&o, "cluster.local").unwrap();
        let sc = c.sidecar().expect("a Sidecar");
        assert_eq!(sc.egress[0].hosts.len(), 2);
        // The empty scope names a host no Service has.
        assert_eq!(
            sidecar_hosts("ns-002", 0),
            ["ns-002/none.ns-002.svc.cluster.local"]
        );
        // Scoped and empty-scope proxies live in namespaces of their own, never ns-000.
        let all: HashSet<String> = (0..3)
            .flat_map(|i| [Mode::Served, Mode::ServedEmpty].map(|m| proxy_ns(m, i, 3, 100)))
            .collect();
        assert_eq!(all.len(), 6);
        assert!(!all.contains("ns-000"));
    }

    #[test]
    fn the_sidecar_scopes_to_the_first_services_of_its_namespace() {
        let y = sidecar_yaml("ns-003", 2);
        assert!(y.contains("namespace: ns-003"), "{y}");
        assert!(
            y.contains("\"ns-003/svc-000.ns-003.svc.cluster.local\""),
            "{y}"
        );
        assert!(
            y.contains("\"ns-003/svc-001.ns-003.svc.cluster.local\""),
            "{y}"
        );
        assert!(!y.contains("svc-002"), "{y}");
        // The model's loader reads it as a Sidecar with these egress hosts.
        let ctx = remora_model::kinds::LoadContext {
            namespace: "ns-003".into(),
            ..Default::default()
        };
        let snap =
            remora_model::rules::snapshot_from_yaml(&[("sidecar.yaml", &y)], &ctx, 1).unwrap();
        let sc = snap
            .sidecar
            .expect("the Sidecar applies to the namespace's proxies");
        let hosts: Vec<String> = sc
            .egress
            .iter()
            .flat_map(|l| l.hosts.iter())
            .map(|h| format!("{}/{}", h.namespace, h.dns))
            .collect();
        assert_eq!(
            hosts,
            [
                "ns-003/svc-000.ns-003.svc.cluster.local",
                "ns-003/svc-001.ns-003.svc.cluster.local"
            ]
        );
        assert_eq!(
            metric(
                "a 1\nremora_discovery_services 10\n",
                "remora_discovery_services"
            ),
            Some(10)
        );
        assert_eq!(
            metric(
                "remora_discovery_services_x 3\n",
                "remora_discovery_services"
            ),
            None
        );
    }
}
