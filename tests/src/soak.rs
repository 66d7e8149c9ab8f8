//! The fault-injecting soak (issue 8): a steady fixed-rate load through the sidecars of a meshed
//! lab while a scheduler reloads the rules (valid sets with a weight change and an invalid set),
//! makes a backend hang and then answer 503 bursts, kills and restarts a backend pod, sends one
//! backend's proxy SIGTERM (graceful drain) and restarts it, and rotates the webhook's
//! certificate. Every failed request is mapped to the fault window it fell in and to the policy
//! that explains it; RSS and open file descriptors of every proxy are sampled; all logs are
//! searched for panics. `remora-lab soak` and `tests/tests/soak.rs` run it; see docs/reliability.md.

use crate::lab::{Lab, LabOptions};
use crate::table;
use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use serde::Serialize;
use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Namespace the soak runs in.
pub const NS: &str = "soak";
const PORT: u16 = 8080;
/// The route's retry policy and timeouts (also in the report).
const ATTEMPTS: u32 = 3;
const PER_TRY_TIMEOUT: Duration = Duration::from_secs(1);
const ROUTE_TIMEOUT: Duration = Duration::from_secs(5);
/// The load generator's own bound per request.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);
/// Allowed growth of RSS and open fds after warm-up.
const MAX_GROWTH: f64 = 0.10;

/// Backends: two in subset v1, one (alone) in subset v2.
const B1: &str = "backend-v1-a";
const B2: &str = "backend-v1-b";
const B3: &str = "backend-v2-a";

/// How a soak runs.
#[derive(Debug, Clone)]
pub struct SoakConfig {
    pub duration: Duration,
    /// Requests per second, fixed (open loop).
    pub rate: u32,
    /// Requests in flight at most (keep-alive connections of the load generator).
    pub concurrency: usize,
    /// Time before the first fault and before resource baselines are taken.
    pub warmup: Duration,
    /// One fault cycle (hang, 503 burst, kill/restart, drain/restart, cert rotation).
    pub cycle: Duration,
    /// Interval of rule reloads.
    pub reload_every: Duration,
    /// Interval of RSS/fd samples.
    pub sample_every: Duration,
    /// Where report.json, samples.csv and report.md go.
    pub out_dir: PathBuf,
}

impl SoakConfig {
    /// The standard soak of `seconds` (60 in `scripts/test`, 600 by default in `scripts/soak`).
    pub fn standard(seconds: u64) -> SoakConfig {
        SoakConfig {
            duration: Duration::from_secs(seconds),
            rate: 40,
            concurrency: 16,
            warmup: Duration::from_secs(8),
            cycle: Duration::from_secs(40),
            reload_every: Duration::from_secs(3),
            sample_every: Duration::from_secs(2),
            out_dir: default_out_dir(),
        }
    }

    fn validate(&self) -> Result<()> {
        if self.duration < Duration::from_secs(50) || self.duration > Duration::from_secs(86_400) {
            bail!(
                "soak duration {:?}: must be between 50 s (warm-up, one fault cycle, a steady tail) and 24 h",
                self.duration
            );
        }
        if !(1..=2000).contains(&self.rate) {
            bail!("soak rate {}: must be 1..=2000 requests/s", self.rate);
        }
        if !(1..=256).contains(&self.concurrency) {
            bail!("soak concurrency {}: must be 1..=256", self.concurrency);
        }
        if self.cycle < Duration::from_secs(40) {
            bail!("soak cycle {:?}: must be at least 40 s", self.cycle);
        }
        Ok(())
    }
}

/// `target/soak` of the workspace.
pub fn default_out_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/soak")
}

// ---------------------------------------------------------------------------------------------
// The lab

fn lab_yaml() -> String {
    let backend = |name: &str, version: &str| {
        format!(
            r#"---
apiVersion: v1
kind: Pod
metadata:
  name: {name}
  labels: {{app: backend, version: {version}}}
spec:
  containers:
  - name: backend
    command: ["lab-app", "http", "--service", "backend", "--version", "{version}", "--port", "{PORT}", "--control"]
    ports: [{{containerPort: {PORT}}}]
    readinessProbe: {{tcpSocket: {{port: {PORT}}}}}
"#
        )
    };
    format!(
        r#"apiVersion: v1
kind: Service
metadata: {{name: backend}}
spec:
  selector: {{app: backend}}
  ports: [{{name: http, port: {PORT}, targetPort: {PORT}}}]
---
apiVersion: v1
kind: Pod
metadata:
  name: client
  labels: {{app: client, version: v1}}
spec:
  containers:
  - name: client
    command: ["lab-app", "http", "--service", "client", "--port", "9080"]
    readinessProbe: {{tcpSocket: {{port: 9080}}}}
{}{}{}"#,
        backend(B1, "v1"),
        backend(B2, "v1"),
        backend(B3, "v2")
    )
}

/// The rule sets the soak alternates: two valid ones (weights 80/20 and 60/40) and one with an
/// invalid duration, which every proxy must reject while keeping the last good set.
pub fn rule_sets() -> [(&'static str, String); 3] {
    let set = |w1: u32, w2: u32, timeout: &str| {
        format!(
            r#"apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: backend}}
spec:
  host: backend
  trafficPolicy:
    outlierDetection: {{consecutive5xxErrors: 3, interval: 1s, baseEjectionTime: 3s, maxEjectionPercent: 50, minHealthPercent: 50}}
  subsets:
  - {{name: v1, labels: {{version: v1}}}}
  - {{name: v2, labels: {{version: v2}}}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: backend}}
spec:
  hosts: [backend]
  http:
  - name: weighted
    route:
    - {{destination: {{host: backend, subset: v1}}, weight: {w1}}}
    - {{destination: {{host: backend, subset: v2}}, weight: {w2}}}
    timeout: {timeout}
    retries: {{attempts: {ATTEMPTS}, perTryTimeout: {}ms, retryOn: "5xx,reset,connect-failure"}}
"#,
            PER_TRY_TIMEOUT.as_millis()
        )
    };
    let t = format!("{}s", ROUTE_TIMEOUT.as_secs());
    [
        ("valid 80/20", set(80, 20, &t)),
        ("valid 60/40", set(60, 40, &t)),
        ("invalid (timeout: banana)", set(70, 30, "banana")),
    ]
}

// ---------------------------------------------------------------------------------------------
// Fault windows and the schedule

/// What a window is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultKind {
    /// A rule reload (valid or invalid): must cause no failure.
    Reload,
    /// A backend whose app hangs: absorbed by perTryTimeout + retries + outlier detection.
    Hang,
    /// A backend answering 503: absorbed by retries on 5xx + outlier detection.
    Burst503,
    /// A backend pod killed (app and sidecar, SIGKILL) and restarted. The killed pod is the only
    /// endpoint of subset v2, so requests routed there fail once retries are exhausted.
    Kill,
    /// A backend's proxy gets SIGTERM, drains and is restarted: must cause no failure.
    Drain,
    /// The webhook's certificate is rotated: must cause no failure, admissions continue.
    Rotate,
}

/// One fault as it happened.
#[derive(Debug, Clone, Serialize)]
pub struct Window {
    pub kind: FaultKind,
    /// Pod (or rule set, or "webhook").
    pub target: String,
    /// Seconds since the load started.
    pub start_s: f64,
    pub end_s: f64,
    pub note: String,
    /// Whether the step did what it should (reload applied/rejected, drain exited 0, ...).
    pub ok: bool,
    /// For a drain: when SIGTERM was sent.
    pub signal_s: Option<f64>,
}

/// What the scheduler does at a time (seconds since the load started).
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    Reload(usize),
    Hang(&'static str, Duration),
    Burst(&'static str, Duration),
    Kill(&'static str),
    Restart(&'static str),
    Drain(&'static str),
    Rotate,
}

/// The schedule: reloads every `reload_every` from 2 s on, and fault cycles from the end of the
/// warm-up while a whole cycle (and 10 s of steady tail) fits.
pub fn schedule(cfg: &SoakConfig) -> Vec<(Duration, Step)> {
    let mut out = Vec::new();
    let end = cfg.duration;
    let mut t = Duration::from_secs(2);
    let mut k = 0;
    while t + Duration::from_secs(2) < end {
        out.push((t, Step::Reload(k % 3)));
        k += 1;
        t += cfg.reload_every;
    }
    let mut c = cfg.warmup;
    while c + Duration::from_secs(38) + Duration::from_secs(10) <= end {
        let at = |s: u64| c + Duration::from_secs(s);
        out.push((at(0), Step::Hang(B1, Duration::from_secs(4))));
        out.push((at(7), Step::Burst(B2, Duration::from_secs(4))));
        out.push((at(14), Step::Kill(B3)));
        out.push((at(18), Step::Restart(B3)));
        out.push((at(23), Step::Drain(B1)));
        out.push((at(33), Step::Rotate));
        c += cfg.cycle;
    }
    // Faults before reloads at the same instant; stable otherwise.
    out.sort_by(|a, b| {
        a.0.cmp(&b.0)
            .then_with(|| matches!(a.1, Step::Reload(_)).cmp(&matches!(b.1, Step::Reload(_))))
    });
    out
}

// ---------------------------------------------------------------------------------------------
// Load

/// How one request ended, as the client saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "detail")]
pub enum Outcome {
    Ok,
    Status(u16),
    Connect(String),
    Timeout,
    Io(String),
}

/// One request of the load.
#[derive(Debug, Clone, Serialize)]
pub struct Request {
    pub id: String,
    /// Seconds since the load started.
    pub start_s: f64,
    pub duration_ms: f64,
    pub outcome: Outcome,
}

struct LoadResult {
    requests: Vec<Request>,
    planned: u64,
}

fn request_id(run: u64, n: u64) -> String {
    format!(
        "{:08x}-50a4-4000-8000-{:012x}",
        (run & 0xffff_ffff) as u32,
        n
    )
}

/// Runs the load on a thread that joined the client pod's network namespace (so every socket it
/// makes is the client pod's, captured by its sidecar): `rate` requests/s for `duration` to
/// `vip:8080` with `Host: backend:8080`, at most `concurrency` at once, each bounded by
/// [`CLIENT_TIMEOUT`]. Stops early when `stop` is set.
fn spawn_load(
    netns_path: PathBuf,
    vip: Ipv4Addr,
    cfg: &SoakConfig,
    t0: Instant,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<Result<LoadResult>> {
    let rate = cfg.rate as f64;
    let planned = (cfg.duration.as_secs_f64() * rate) as u64;
    let concurrency = cfg.concurrency;
    let end = t0 + cfg.duration;
    std::thread::spawn(move || -> Result<LoadResult> {
        let file = std::fs::File::open(&netns_path)
            .with_context(|| format!("opening {}", netns_path.display()))?;
        // SAFETY: setns on a valid namespace fd changes only this thread's network namespace.
        if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            bail!("setns: {}", std::io::Error::last_os_error());
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let run = std::process::id() as u64;
        let next = Arc::new(AtomicU64::new(0));
        let out = Arc::new(Mutex::new(Vec::with_capacity(planned as usize)));
        rt.block_on(async {
            let mut tasks = Vec::new();
            for _ in 0..concurrency {
                let next = next.clone();
                let out = out.clone();
                let stop = stop.clone();
                tasks.push(tokio::spawn(async move {
                    let addr = SocketAddr::from((vip, PORT));
                    let mut conn: Option<hyper::client::conn::http1::SendRequest<Full<Bytes>>> =
                        None;
                    loop {
                        let n = next.fetch_add(1, Ordering::Relaxed);
                        if n >= planned || stop.load(Ordering::Relaxed) {
                            break;
                        }
                        let due = t0 + Duration::from_secs_f64(n as f64 / rate);
                        if due >= end {
                            break;
                        }
                        tokio::time::sleep_until(due.into()).await;
                        let id = request_id(run, n);
                        let start = Instant::now();
                        let outcome =
                            match tokio::time::timeout(CLIENT_TIMEOUT, one(&mut conn, addr, &id))
                                .await
                            {
                                Ok(o) => o,
                                Err(_) => {
                                    conn = None;
                                    Outcome::Timeout
                                }
                            };
                        if outcome != Outcome::Ok {
                            conn = None;
                        }
                        let r = Request {
                            id,
                            start_s: start.duration_since(t0).as_secs_f64(),
                            duration_ms: start.elapsed().as_secs_f64() * 1000.0,
                            outcome,
                        };
                        if let Ok(mut v) = out.lock() {
                            v.push(r);
                        }
                    }
                }));
            }
            for t in tasks {
                let _ = t.await;
            }
        });
        let mut requests = std::mem::take(&mut *out.lock().map_err(|_| anyhow!("poisoned"))?);
        requests.sort_by(|a, b| a.start_s.total_cmp(&b.start_s));
        Ok(LoadResult { requests, planned })
    })
}

/// One GET on the worker's keep-alive connection (made on first use or after a failure).
async fn one(
    conn: &mut Option<hyper::client::conn::http1::SendRequest<Full<Bytes>>>,
    addr: SocketAddr,
    id: &str,
) -> Outcome {
    if conn.as_ref().is_none_or(|c| c.is_closed()) {
        let tcp = match tokio::net::TcpStream::connect(addr).await {
            Ok(t) => t,
            Err(e) => return Outcome::Connect(e.to_string()),
        };
        let _ = tcp.set_nodelay(true);
        match hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp)).await {
            Ok((send, c)) => {
                tokio::spawn(c);
                *conn = Some(send);
            }
            Err(e) => return Outcome::Connect(e.to_string()),
        }
    }
    let Some(send) = conn.as_mut() else {
        return Outcome::Connect("no connection".into());
    };
    if send.ready().await.is_err() {
        return Outcome::Io("connection closed before the request".into());
    }
    let req = match http::Request::builder()
        .uri("/soak")
        .header("host", format!("backend:{PORT}"))
        .header("x-request-id", id)
        .body(Full::new(Bytes::new()))
    {
        Ok(r) => r,
        Err(e) => return Outcome::Io(e.to_string()),
    };
    match send.send_request(req).await {
        Ok(resp) => {
            let status = resp.status().as_u16();
            match resp.into_body().collect().await {
                Ok(_) if (200..300).contains(&status) => Outcome::Ok,
                Ok(_) => Outcome::Status(status),
                Err(e) => Outcome::Io(format!("reading the body: {e}")),
            }
        }
        Err(e) => Outcome::Io(e.to_string()),
    }
}

// ---------------------------------------------------------------------------------------------
// Resource samples

/// One RSS/fd sample of one process.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    pub t_s: f64,
    pub process: String,
    pub pid: u32,
    pub rss_kb: u64,
    /// All open fds.
    pub fds: u64,
    /// Open fds that are not an established TCP connection (listeners, files, pipes, epoll, and
    /// any socket whose connection ended but was never closed): what a leak grows. The total
    /// also follows the number of live connections, which moves with the load.
    pub fds_other: u64,
}

/// `VmRSS` in kB, the number of open fds, and how many of those are TCP sockets in an
/// established connection (read from the socket tables of the process's own network namespace).
pub fn proc_usage(pid: u32) -> Option<(u64, u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())?;
    let mut established = std::collections::HashSet::new();
    for table in ["tcp", "tcp6"] {
        let text = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")).unwrap_or_default();
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            // sl local rem st ... uid timeout inode: state 01 is ESTABLISHED.
            if f.len() > 9 && f[3] == "01" {
                established.insert(f[9].to_string());
            }
        }
    }
    let mut fds = 0;
    let mut in_conns = 0;
    for e in std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.flatten() {
        fds += 1;
        if let Ok(target) = std::fs::read_link(e.path()) {
            let t = target.to_string_lossy();
            if let Some(inode) = t.strip_prefix("socket:[").and_then(|r| r.strip_suffix(']')) {
                if established.contains(inode) {
                    in_conns += 1;
                }
            }
        }
    }
    Some((rss, fds, in_conns))
}

type Watched = Arc<Mutex<Vec<(String, u32)>>>;

fn spawn_sampler(
    watched: Watched,
    every: Duration,
    t0: Instant,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<Vec<Sample>> {
    std::thread::spawn(move || {
        let mut out = Vec::new();
        let mut next = Instant::now();
        while !stop.load(Ordering::Relaxed) {
            if Instant::now() >= next {
                let list = watched.lock().map(|w| w.clone()).unwrap_or_default();
                for (name, pid) in list {
                    if let Some((rss_kb, fds, conns)) = proc_usage(pid) {
                        out.push(Sample {
                            t_s: t0.elapsed().as_secs_f64(),
                            process: name,
                            pid,
                            rss_kb,
                            fds,
                            fds_other: fds.saturating_sub(conns),
                        });
                    }
                }
                next += every;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        out
    })
}

/// Growth of one process incarnation after its warm-up.
#[derive(Debug, Clone, Serialize)]
pub struct Growth {
    pub process: String,
    pub pid: u32,
    /// First sample of the process, the baseline after warm-up (peak of the first quarter), the
    /// end (peak of the last quarter).
    pub rss_kb: [u64; 3],
    pub fds: [u64; 3],
    /// Fds not in an established connection: start, baseline, end.
    pub fds_other: [u64; 3],
    pub rss_growth: f64,
    /// Growth of `fds_other` (what is judged).
    pub fd_growth: f64,
    /// Growth of all fds (reported).
    pub fd_total_growth: f64,
    /// Samples and seconds after warm-up; `None` in `evaluated` when too short to judge.
    pub samples: usize,
    pub span_s: f64,
    pub evaluated: bool,
    pub ok: bool,
}

/// Per process incarnation: skips the first `warmup` of its life, needs at least 8 samples over
/// 20 s, compares the peak of the first quarter with the peak of the last quarter.
pub fn growth(samples: &[Sample], warmup: f64) -> Vec<Growth> {
    let mut by: BTreeMap<(String, u32), Vec<&Sample>> = BTreeMap::new();
    for s in samples {
        by.entry((s.process.clone(), s.pid)).or_default().push(s);
    }
    let mut out = Vec::new();
    for ((process, pid), all) in by {
        let Some(first) = all.first() else { continue };
        let born = first.t_s;
        let after: Vec<&&Sample> = all
            .iter()
            .filter(|s| s.t_s >= born.max(0.0) + warmup)
            .collect();
        let span = match (after.first(), after.last()) {
            (Some(a), Some(b)) => b.t_s - a.t_s,
            _ => 0.0,
        };
        let evaluated = after.len() >= 8 && span >= 20.0;
        let q = (after.len() / 4).max(1);
        let peak = |xs: &[&&Sample], f: fn(&Sample) -> u64| xs.iter().map(|s| f(s)).max();
        let ends = |f: fn(&Sample) -> u64| -> (u64, u64) {
            if after.is_empty() {
                return (f(first), f(first));
            }
            let head = &after[..q.min(after.len())];
            let tail = &after[after.len().saturating_sub(q)..];
            (peak(head, f).unwrap_or(0), peak(tail, f).unwrap_or(0))
        };
        let (rb, re) = ends(|s| s.rss_kb);
        let (fb, fe) = ends(|s| s.fds);
        let (ob, oe) = ends(|s| s.fds_other);
        let g = |b: u64, e: u64| {
            if b == 0 {
                0.0
            } else {
                e as f64 / b as f64 - 1.0
            }
        };
        let (rg, fg) = (g(rb, re), g(ob, oe));
        out.push(Growth {
            process,
            pid,
            rss_kb: [first.rss_kb, rb, re],
            fds: [first.fds, fb, fe],
            fds_other: [first.fds_other, ob, oe],
            rss_growth: rg,
            fd_growth: fg,
            fd_total_growth: g(fb, fe),
            samples: after.len(),
            span_s: span,
            evaluated,
            ok: !evaluated || (rg <= MAX_GROWTH && fg <= MAX_GROWTH),
        });
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Access log and failure attribution

/// What the client's sidecar logged for one request.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Logged {
    pub status: u16,
    pub flags: String,
    pub upstream: String,
}

/// The outbound HTTP access-log lines of a proxy log, by request id.
pub fn access_log(text: &str) -> BTreeMap<String, Logged> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let line = line.trim();
        if !line.starts_with('{') || !line.contains("\"kind\":\"http\"") {
            continue;
        }
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if v["direction"] != "outbound" {
            continue;
        }
        let Some(id) = v["request_id"].as_str() else {
            continue;
        };
        out.insert(
            id.to_string(),
            Logged {
                status: v["status"].as_u64().unwrap_or(0) as u16,
                flags: v["response_flags"].as_str().unwrap_or("").to_string(),
                upstream: v["upstream"].as_str().unwrap_or("").to_string(),
            },
        );
    }
    out
}

/// One failed request and what explains it.
#[derive(Debug, Clone, Serialize)]
pub struct Failure {
    pub request: Request,
    pub logged: Option<Logged>,
    /// Fault windows the request overlapped (kind:target).
    pub windows: Vec<String>,
    pub cause: String,
    pub explained: bool,
}

/// Grace after a window during which its effects may still show (outlier ejection ending,
/// connections being re-made).
fn grace(kind: FaultKind) -> f64 {
    match kind {
        FaultKind::Hang => PER_TRY_TIMEOUT.as_secs_f64() + 1.0,
        FaultKind::Kill => 1.0,
        _ => 0.5,
    }
}

/// Maps a failed request to a cause. Explained are: requests routed to subset v2 while its only
/// pod was killed (retries exhausted on an all-down subset: flags `UF`/`URX`, upstream the killed
/// pod), and requests whose retries or route timeout ran out (`URX`/`UT`) during a hang or 503
/// window. Anything else — in a reload, drain or rotation window or in none — is unexplained.
pub fn attribute(
    r: &Request,
    logged: Option<&Logged>,
    windows: &[Window],
    pod_ips: &BTreeMap<String, String>,
) -> Failure {
    let end = r.start_s + r.duration_ms / 1000.0;
    let hits: Vec<&Window> = windows
        .iter()
        .filter(|w| w.start_s <= end && r.start_s <= w.end_s + grace(w.kind))
        .collect();
    let flags = logged.map(|l| l.flags.as_str()).unwrap_or("");
    let has = |f: &str| flags.split(',').any(|x| x == f);
    let upstream_ip = logged
        .map(|l| l.upstream.split(':').next().unwrap_or("").to_string())
        .unwrap_or_default();
    let mut cause = None;
    for w in &hits {
        let ip = pod_ips.get(&w.target).cloned().unwrap_or_default();
        match w.kind {
            FaultKind::Kill if (has("UF") || has("URX") || has("UC")) && upstream_ip == ip => {
                cause = Some(format!(
                    "retries exhausted: subset v2 all down ({} killed), flags {flags}",
                    w.target
                ));
                break;
            }
            FaultKind::Hang | FaultKind::Burst503 if has("URX") || has("UT") => {
                cause = Some(format!(
                    "retries/timeout exhausted during {:?} of {}, flags {flags}",
                    w.kind, w.target
                ));
                break;
            }
            _ => {}
        }
    }
    let names: Vec<String> = hits
        .iter()
        .map(|w| format!("{:?}:{}", w.kind, w.target))
        .collect();
    let explained = cause.is_some();
    let cause = cause.unwrap_or_else(|| {
        let what = match &r.outcome {
            Outcome::Status(s) => format!("HTTP {s} flags {flags:?}"),
            other => format!("{other:?}"),
        };
        match hits
            .iter()
            .find(|w| w.kind != FaultKind::Reload)
            .or(hits.first())
        {
            Some(w) => format!("UNEXPLAINED {what} during {:?} of {}", w.kind, w.target),
            None => format!("UNEXPLAINED {what} outside every fault window"),
        }
    });
    Failure {
        request: r.clone(),
        logged: logged.cloned(),
        windows: names,
        cause,
        explained,
    }
}

/// `panicked` lines in every file under `dir` (recursively): `(file, line)`.
pub fn panics_in(dir: &Path) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            let Ok(ft) = e.file_type() else { continue };
            if ft.is_dir() {
                stack.push(p);
            } else if ft.is_file() && p.extension().is_some_and(|x| x == "log") {
                let text = std::fs::read(&p).unwrap_or_default();
                for line in String::from_utf8_lossy(&text).lines() {
                    if line.contains("panicked") {
                        out.push((p.display().to_string(), line.chars().take(300).collect()));
                    }
                }
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Webhook certificate rotation

struct Rotator {
    /// DER of the CA the webhook's certificate currently chains to.
    current_ca: Vec<u8>,
    n: u32,
}

fn tls_connector(ca_der: &[u8]) -> Result<tokio_rustls::TlsConnector> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(rustls_pki_types::CertificateDer::from(ca_der.to_vec()))?;
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(tokio_rustls::TlsConnector::from(Arc::new(tls)))
}

/// One HTTPS request to the webhook on a fresh connection trusting only `ca_der`.
async fn webhook_request(
    addr: SocketAddr,
    ca_der: &[u8],
    method: &str,
    path: &str,
    body: Bytes,
) -> Result<(u16, Bytes)> {
    let connector = tls_connector(ca_der)?;
    let tcp = tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(addr))
        .await
        .map_err(|_| anyhow!("connect to the webhook timed out"))??;
    let name = rustls_pki_types::ServerName::IpAddress(addr.ip().into());
    let tls = tokio::time::timeout(Duration::from_secs(5), connector.connect(name, tcp))
        .await
        .map_err(|_| anyhow!("TLS handshake with the webhook timed out"))??;
    let (mut send, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls)).await?;
    tokio::spawn(conn);
    let req = http::Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr.to_string())
        .header("content-type", "application/json")
        .body(Full::new(body))?;
    let resp = tokio::time::timeout(Duration::from_secs(10), send.send_request(req))
        .await
        .map_err(|_| anyhow!("the webhook did not answer {method} {path} within 10 s"))??;
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await?.to_bytes();
    Ok((status, body))
}

impl Rotator {
    fn new(lab: &Lab) -> Result<Rotator> {
        use rustls_pki_types::pem::PemObject;
        let hook = lab
            .webhook()
            .ok_or_else(|| anyhow!("the lab has no webhook (no pod was injected)"))?;
        let ca = rustls_pki_types::CertificateDer::from_pem_slice(hook.ca_pem.as_bytes())
            .map_err(|e| anyhow!("the lab webhook's CA PEM: {e:?}"))?;
        Ok(Rotator {
            current_ca: ca.to_vec(),
            n: 0,
        })
    }

    /// Issues a new CA and serving certificate (a CA rotation: the apiserver's caBundle would be
    /// updated with it), writes the pair over the files the webhook serves (renames, cert then
    /// key), waits (bounded) until new handshakes present it, checks that a client trusting only
    /// the old CA is now refused, and sends an AdmissionReview for a new pod trusting the new CA:
    /// it must be allowed with a patch that adds the sidecar. Returns what it saw.
    fn rotate(&mut self, lab: &Lab) -> Result<String> {
        let hook = lab
            .webhook()
            .ok_or_else(|| anyhow!("the lab has no webhook"))?;
        let addr = hook.addr;
        let dir = lab.dir().join("webhook");
        self.n += 1;
        let issued = crate::admission::issue_serving_cert(&format!("remora soak CA {}", self.n))?;
        let tmp_cert = dir.join(".tls.crt.soak");
        let tmp_key = dir.join(".tls.key.soak");
        std::fs::write(&tmp_cert, &issued.cert_pem)?;
        std::fs::write(&tmp_key, &issued.key_pem)?;
        std::fs::rename(&tmp_cert, dir.join("tls.crt"))?;
        std::fs::rename(&tmp_key, dir.join("tls.key"))?;
        let new_ca = issued.ca_der;
        let started = Instant::now();
        let deadline = started + Duration::from_secs(25);
        loop {
            let r = lab.rt.block_on(webhook_request(
                addr,
                &new_ca,
                "GET",
                "/readyz",
                Bytes::new(),
            ));
            match r {
                Ok((200, _)) => break,
                _ if Instant::now() >= deadline => bail!(
                    "the webhook still serves the old certificate 25 s after the rotation (last: {:?}); its log:\n{}",
                    r.map(|x| x.0),
                    hook.proc.log_tail(15)
                ),
                _ => std::thread::sleep(Duration::from_millis(100)),
            }
        }
        let switched = started.elapsed();
        if let Ok((code, _)) = lab.rt.block_on(webhook_request(
            addr,
            &self.current_ca,
            "GET",
            "/readyz",
            Bytes::new(),
        )) {
            bail!("after the rotation a client trusting only the old CA still got HTTP {code}: the old certificate is still served");
        }
        self.current_ca = new_ca;
        // Admit a new pod (another v1 backend replica) through the rotated certificate.
        let pod = serde_json::json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": format!("backend-v1-r{}", self.n), "namespace": NS,
                         "labels": {"app": "backend", "version": "v1"}},
            "spec": {"containers": [{"name": "backend", "image": "lab/lab-app:latest",
                     "command": ["lab-app", "http", "--service", "backend", "--port", "8080"],
                     "readinessProbe": {"tcpSocket": {"port": 8080}}}]}
        });
        let uid = format!("00000000-0000-4000-a000-{:012x}", self.n);
        let gvk = serde_json::json!({"group": "", "version": "v1", "kind": "Pod"});
        let gvr = serde_json::json!({"group": "", "version": "v1", "resource": "pods"});
        let review = serde_json::json!({
            "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "request": {"uid": uid, "kind": gvk, "resource": gvr, "requestKind": gvk,
                "requestResource": gvr, "namespace": NS, "operation": "CREATE",
                "name": pod["metadata"]["name"],
                "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
                "object": pod, "oldObject": null, "dryRun": false,
                "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"}}
        });
        let (status, body) = lab.rt.block_on(webhook_request(
            addr,
            &self.current_ca,
            "POST",
            "/inject",
            Bytes::from(serde_json::to_vec(&review)?),
        ))?;
        if status != 200 {
            bail!(
                "admission after the rotation: HTTP {status}: {}",
                String::from_utf8_lossy(&body)
            );
        }
        let adm = crate::admission::parse_review_response(&uid, &pod, &body)?;
        if !adm.allowed {
            bail!("admission after the rotation was denied: {}", adm.message);
        }
        let spec = adm.object.to_string();
        if !spec.contains("remora-proxy") || !spec.contains("remora-init") {
            bail!("admission after the rotation returned no sidecar injection: {spec}");
        }
        Ok(format!(
            "rotation {}: new certificate served after {} ms, old CA refused, a new pod admitted with remora-proxy and remora-init",
            self.n,
            switched.as_millis()
        ))
    }
}

// ---------------------------------------------------------------------------------------------
// The run

/// Checks and figures of one soak.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub duration_s: f64,
    pub rate: u32,
    pub concurrency: usize,
    pub warmup_s: f64,
    pub policy: serde_json::Value,
    pub planned: u64,
    pub sent: u64,
    pub succeeded: u64,
    pub failed: u64,
    /// Failed requests by cause.
    pub failures_by_cause: BTreeMap<String, u64>,
    pub unexplained: u64,
    /// Up to 30 failures with their windows and access-log entries.
    pub failure_examples: Vec<Failure>,
    pub latency_ms: BTreeMap<String, f64>,
    /// Faults by kind: (count, count ok).
    pub faults: BTreeMap<String, (u32, u32)>,
    pub windows: Vec<Window>,
    /// Per drain: requests in flight through the draining proxy at SIGTERM that it still
    /// answered (200 from that pod).
    pub drain_in_flight: Vec<u64>,
    pub growth: Vec<Growth>,
    /// RSS and fds over time of the processes that lived through the whole soak (about a dozen
    /// points each; every sample is in samples.csv): `[t_s, rss_kb, fds, fds outside connections]`.
    pub series: BTreeMap<String, Vec<[f64; 4]>>,
    pub outlier_ejections: f64,
    pub panics: Vec<(String, String)>,
    /// What failed, one line each; empty when the soak passed.
    pub problems: Vec<String>,
    pub passed: bool,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn proxy_pids(lab: &Lab) -> Vec<(String, u32)> {
    let mut v: Vec<(String, u32)> = lab
        .pods()
        .iter()
        .filter_map(|p| {
            p.container("remora-proxy")
                .map(|c| (format!("{}/remora-proxy", p.name), c.proc.pid()))
        })
        .collect();
    if let Some(h) = lab.webhook() {
        v.push(("remora-webhook".into(), h.proc.pid()));
    }
    v
}

fn metric_sum(lab: &Lab, pod: &str, name: &str) -> Result<f64> {
    let p = lab.pod(pod)?;
    Ok(lab
        .metrics(p)?
        .iter()
        .filter(|s| s.name == name)
        .map(|s| s.value)
        .sum())
}

/// The meshed pods whose proxy answers `/config_dump` now.
fn live_proxies(lab: &Lab) -> Vec<String> {
    lab.pods()
        .iter()
        .filter(|p| p.namespace == NS && p.meshed)
        .filter(|p| lab.config_generation(p).is_ok())
        .map(|p| p.name.clone())
        .collect()
}

/// Writes an invalid set and checks every live proxy rejects it: its reload-error counter rises
/// (bounded 12 s: file events, else the 5 s rescan), its generation stays, it stays ready.
fn reload_invalid(lab: &mut Lab, yaml: &str) -> Result<String> {
    let pods = live_proxies(lab);
    let mut before = Vec::new();
    for p in &pods {
        let pod = lab.pod(p)?;
        before.push((
            p.clone(),
            lab.config_generation(pod)?,
            metric_sum(lab, p, "remora_config_reload_errors_total")?,
        ));
    }
    lab.set_rules_nowait(NS, yaml)?;
    let deadline = Instant::now() + Duration::from_secs(12);
    for (p, gen, errs) in before {
        loop {
            let now_errs = metric_sum(lab, &p, "remora_config_reload_errors_total").unwrap_or(errs);
            if now_errs > errs {
                break;
            }
            if Instant::now() >= deadline {
                bail!("{p}: the invalid rule set was not reported as rejected within 12 s (reload errors still {errs})");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let pod = lab.pod(&p)?;
        let g = lab.config_generation(pod)?;
        if g != gen {
            bail!("{p}: the generation changed from {gen} to {g} on an invalid rule set");
        }
        let ready = lab.http_direct(pod, 15021, "GET", "/healthz/ready")?;
        if ready.status != 200 {
            bail!(
                "{p}: not ready after rejecting an invalid rule set ({})",
                ready.status
            );
        }
    }
    Ok(format!(
        "rejected by {} proxies, last good set kept",
        pods.len()
    ))
}

fn control(lab: &Lab, pod: &str, mode: &str, d: Duration) -> Result<()> {
    let p = lab.pod(pod)?;
    let path = format!("/control/fault?mode={mode}&seconds={}", d.as_secs_f64());
    let r = lab.http_direct(p, PORT, "POST", &path)?;
    if r.status != 200 {
        bail!(
            "{pod}: fault control answered {}: {}",
            r.status,
            String::from_utf8_lossy(&r.body)
        );
    }
    Ok(())
}

fn kill_pod(lab: &mut Lab, pod: &str) -> Result<String> {
    use nix::sys::signal::{kill, Signal};
    let p = lab.pod_mut(pod)?;
    let mut names = Vec::new();
    for c in p.containers.iter_mut() {
        kill(
            nix::unistd::Pid::from_raw(c.proc.pid() as i32),
            Signal::SIGKILL,
        )
        .with_context(|| format!("SIGKILL {}/{}", pod, c.name))?;
        names.push(c.name.clone());
    }
    for c in p.containers.iter_mut() {
        c.proc.wait_exit(Duration::from_secs(5))?;
    }
    Ok(format!("SIGKILL to {}", names.join(", ")))
}

/// How long the app holds requests just before its proxy gets SIGTERM, so some are in flight
/// through the draining proxy (shorter than the per-try timeout: they must finish there).
const DRAIN_HOLD: Duration = Duration::from_millis(900);

/// SIGTERM to a pod's proxy while its app holds a few requests (in flight); waits for the exit
/// (drain) and restarts the proxy. Returns the note and when SIGTERM was sent.
fn drain_proxy(lab: &mut Lab, pod: &str) -> Result<(String, Instant)> {
    use nix::sys::signal::{kill, Signal};
    control(lab, pod, "hang", DRAIN_HOLD)?;
    std::thread::sleep(DRAIN_HOLD * 5 / 9);
    let p = lab.pod_mut(pod)?;
    let c = p
        .containers
        .iter_mut()
        .find(|c| c.name == "remora-proxy")
        .ok_or_else(|| anyhow!("{pod} has no remora-proxy"))?;
    let t = Instant::now();
    kill(
        nix::unistd::Pid::from_raw(c.proc.pid() as i32),
        Signal::SIGTERM,
    )?;
    let st = c.proc.wait_exit(Duration::from_secs(30))?;
    let drained = t.elapsed();
    if !st.success() {
        bail!("{pod}: remora-proxy exited with {st} after SIGTERM (a graceful drain exits 0)");
    }
    lab.restart_containers(pod, &["remora-proxy"])?;
    Ok((
        format!(
            "app held requests for {} ms from {} ms before SIGTERM; drained and exited 0 after {} ms; restarted and ready after {} ms",
            DRAIN_HOLD.as_millis(),
            (DRAIN_HOLD * 5 / 9).as_millis(),
            drained.as_millis(),
            t.elapsed().as_millis()
        ),
        t,
    ))
}

/// Requests that were in flight through `pod`'s proxy when it got SIGTERM and were answered 200
/// by that pod (the client's proxy logged it as the upstream, no retry elsewhere).
pub fn drained_in_flight(
    requests: &[Request],
    logged: &BTreeMap<String, Logged>,
    pod_ip: &str,
    signal_s: f64,
) -> u64 {
    requests
        .iter()
        .filter(|r| r.outcome == Outcome::Ok)
        .filter(|r| r.start_s < signal_s && r.start_s + r.duration_ms / 1000.0 > signal_s)
        .filter(|r| {
            logged
                .get(&r.id)
                .is_some_and(|l| l.status == 200 && l.upstream.split(':').next() == Some(pod_ip))
        })
        .count() as u64
}

/// Runs the soak in a fresh lab and writes `report.json`, `samples.csv` and `report.md` into
/// `cfg.out_dir`. The report says whether it passed; `Err` only when the soak could not run.
pub fn run(opts: LabOptions, cfg: SoakConfig) -> Result<Report> {
    cfg.validate()?;
    let cancel = opts.cancel.clone();
    let mut lab = Lab::start(opts)?;
    lab.create_namespace(NS, &[("istio-injection", "enabled")])?;
    let sets = rule_sets();
    lab.set_rules(NS, &sets[0].1)?;
    if let Err(e) = lab.apply(&lab_yaml(), NS) {
        bail!("{e:#}\n--- logs:\n{}", lab.logs(20));
    }
    let vip = lab.service(NS, "backend")?.vip;
    let pod_ips: BTreeMap<String, String> = lab
        .pods()
        .iter()
        .map(|p| (p.name.clone(), p.ip.to_string()))
        .collect();
    let mut rotator = Rotator::new(&lab)?;
    let ejections_before = metric_sum(&lab, "client", "remora_outlier_ejections_total")?;

    let steps = schedule(&cfg);
    let watched: Watched = Arc::new(Mutex::new(proxy_pids(&lab)));
    let stop = Arc::new(AtomicBool::new(false));
    let t0 = Instant::now() + Duration::from_millis(200);
    let client_ns = lab.pod("client")?.netns.path();
    let load = spawn_load(client_ns, vip, &cfg, t0, stop.clone());
    let sampler = spawn_sampler(watched.clone(), cfg.sample_every, t0, stop.clone());
    let since = |t: Instant| t.saturating_duration_since(t0).as_secs_f64();

    let mut windows: Vec<Window> = Vec::new();
    let mut open_kill: Option<usize> = None;
    let mut problems: Vec<String> = Vec::new();
    for (at, step) in steps {
        while Instant::now() < t0 + at {
            if cancel.load(Ordering::Relaxed) {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if cancel.load(Ordering::Relaxed) {
            problems.push("interrupted".into());
            break;
        }
        let start = Instant::now();
        let mut signal = None;
        let (kind, target, result): (FaultKind, String, Result<String>) = match step {
            Step::Reload(i) if i == 2 => (
                FaultKind::Reload,
                sets[i].0.to_string(),
                // The bad set is then fixed (the next valid set): a proxy that starts while
                // the only rule set on disk is invalid stays not ready by design, so a pod
                // restart must not find it there.
                reload_invalid(&mut lab, &sets[i].1).and_then(|m| {
                    lab.set_rules(NS, &sets[0].1)
                        .map(|_| format!("{m}; then fixed ({} applied)", sets[0].0))
                }),
            ),
            Step::Reload(i) => (
                FaultKind::Reload,
                sets[i].0.to_string(),
                lab.set_rules(NS, &sets[i].1)
                    .map(|_| "applied by every live proxy".to_string()),
            ),
            Step::Hang(pod, d) => (
                FaultKind::Hang,
                pod.to_string(),
                control(&lab, pod, "hang", d).map(|_| format!("app hangs for {d:?}")),
            ),
            Step::Burst(pod, d) => (
                FaultKind::Burst503,
                pod.to_string(),
                control(&lab, pod, "503", d).map(|_| format!("app answers 503 for {d:?}")),
            ),
            Step::Kill(pod) => (FaultKind::Kill, pod.to_string(), kill_pod(&mut lab, pod)),
            Step::Restart(pod) => {
                let r = lab
                    .restart_containers(pod, &["remora-proxy", "backend"])
                    .map(|_| "restarted (sidecar, app), ready".to_string());
                if let Ok(mut w) = watched.lock() {
                    *w = proxy_pids(&lab);
                }
                match open_kill.take() {
                    Some(i) => {
                        let w = &mut windows[i];
                        w.end_s = since(Instant::now());
                        match r {
                            Ok(m) => {
                                w.note =
                                    format!("{}; {m} after {:.1} s", w.note, w.end_s - w.start_s)
                            }
                            Err(e) => {
                                w.ok = false;
                                problems.push(format!("restart of {pod}: {e:#}"));
                            }
                        }
                    }
                    None => problems.push(format!("restart of {pod} without a kill")),
                }
                continue;
            }
            Step::Drain(pod) => {
                let r = drain_proxy(&mut lab, pod);
                if let Ok(mut w) = watched.lock() {
                    *w = proxy_pids(&lab);
                }
                let r = r.map(|(note, at)| {
                    signal = Some(since(at));
                    note
                });
                (FaultKind::Drain, pod.to_string(), r)
            }
            Step::Rotate => (FaultKind::Rotate, "webhook".into(), rotator.rotate(&lab)),
        };
        let ok = result.is_ok();
        let note = match result {
            Ok(m) => m,
            Err(e) => {
                let m = format!("{kind:?} {target}: {e:#}");
                problems.push(m.clone());
                m
            }
        };
        let (start_s, end_s) = match kind {
            FaultKind::Hang | FaultKind::Burst503 => {
                let d = match step {
                    Step::Hang(_, d) | Step::Burst(_, d) => d.as_secs_f64(),
                    _ => 0.0,
                };
                (since(start), since(start) + d)
            }
            _ => (since(start), since(Instant::now())),
        };
        windows.push(Window {
            kind,
            target,
            start_s,
            end_s,
            note,
            ok,
            signal_s: signal,
        });
        if kind == FaultKind::Kill {
            open_kill = Some(windows.len() - 1);
        }
    }
    while Instant::now() < t0 + cfg.duration && !cancel.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let load = load
        .join()
        .map_err(|_| anyhow!("the load thread panicked"))??;
    stop.store(true, Ordering::Relaxed);
    let samples = sampler
        .join()
        .map_err(|_| anyhow!("the sampler thread panicked"))?;
    let ejections =
        metric_sum(&lab, "client", "remora_outlier_ejections_total")? - ejections_before;

    // Let the access log reach the file, then read it.
    std::thread::sleep(Duration::from_millis(300));
    let client_log = lab
        .pod("client")?
        .container("remora-proxy")
        .map(|c| c.proc.log.clone())
        .ok_or_else(|| anyhow!("the client pod has no remora-proxy"))?;
    let logged = access_log(&String::from_utf8_lossy(&std::fs::read(&client_log)?));
    let panics = panics_in(lab.dir());

    let report = evaluate(
        &cfg,
        load,
        &windows,
        &pod_ips,
        &logged,
        samples.clone(),
        ejections,
        panics,
        problems,
    );
    write_outputs(&cfg.out_dir, &report, &samples)?;
    Ok(report)
}

#[allow(clippy::too_many_arguments)]
fn evaluate(
    cfg: &SoakConfig,
    load: LoadResult,
    windows: &[Window],
    pod_ips: &BTreeMap<String, String>,
    logged: &BTreeMap<String, Logged>,
    samples: Vec<Sample>,
    ejections: f64,
    panics: Vec<(String, String)>,
    mut problems: Vec<String>,
) -> Report {
    let sent = load.requests.len() as u64;
    let mut by_cause: BTreeMap<String, u64> = BTreeMap::new();
    let mut examples = Vec::new();
    let mut unexplained = 0;
    let mut failed = 0;
    let mut lat: Vec<f64> = Vec::new();
    for r in &load.requests {
        lat.push(r.duration_ms);
        if r.outcome == Outcome::Ok {
            continue;
        }
        failed += 1;
        let f = attribute(r, logged.get(&r.id), windows, pod_ips);
        // Group by cause without the per-request detail after "flags".
        let key = f
            .cause
            .split(", flags")
            .next()
            .unwrap_or(&f.cause)
            .to_string();
        *by_cause.entry(key).or_default() += 1;
        if !f.explained {
            unexplained += 1;
        }
        if examples.len() < 30 && (!f.explained || examples.len() < 10) {
            examples.push(f);
        }
    }
    lat.sort_by(f64::total_cmp);
    let latency: BTreeMap<String, f64> = [
        ("p50", percentile(&lat, 0.5)),
        ("p90", percentile(&lat, 0.9)),
        ("p99", percentile(&lat, 0.99)),
        ("max", lat.last().copied().unwrap_or(0.0)),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), (v * 10.0).round() / 10.0))
    .collect();
    let mut faults: BTreeMap<String, (u32, u32)> = BTreeMap::new();
    for w in windows {
        let e = faults.entry(format!("{:?}", w.kind)).or_default();
        e.0 += 1;
        e.1 += w.ok as u32;
    }
    let mut drain_in_flight = Vec::new();
    for w in windows.iter().filter(|w| w.kind == FaultKind::Drain) {
        if let (Some(at), Some(ip)) = (w.signal_s, pod_ips.get(&w.target)) {
            let n = drained_in_flight(&load.requests, logged, ip, at);
            if n == 0 {
                problems.push(format!(
                    "drain of {} at {at:.1} s: no request in flight through it finished there",
                    w.target
                ));
            }
            drain_in_flight.push(n);
        }
    }
    let growth = growth(&samples, cfg.warmup.as_secs_f64());
    let series = series(&samples, cfg.duration.as_secs_f64(), 12);
    if unexplained > 0 {
        problems.push(format!(
            "{unexplained} failed requests are not explained by a configured policy"
        ));
    }
    if (sent as f64) < load.planned as f64 * 0.8 {
        problems.push(format!(
            "only {sent} of {} planned requests were sent (the load generator fell behind)",
            load.planned
        ));
    }
    for g in &growth {
        if !g.ok {
            problems.push(format!(
                "{} (pid {}): grew after warm-up: RSS {} → {} kB ({:+.1} %), fds outside connections {} → {} ({:+.1} %)",
                g.process,
                g.pid,
                g.rss_kb[1],
                g.rss_kb[2],
                g.rss_growth * 100.0,
                g.fds_other[1],
                g.fds_other[2],
                g.fd_growth * 100.0
            ));
        }
    }
    if !growth
        .iter()
        .any(|g| g.evaluated && g.process == "client/remora-proxy")
    {
        problems.push("the client's proxy was not sampled long enough to judge RSS and fds".into());
    }
    for kind in [
        FaultKind::Reload,
        FaultKind::Hang,
        FaultKind::Burst503,
        FaultKind::Kill,
        FaultKind::Drain,
        FaultKind::Rotate,
    ] {
        if !windows.iter().any(|w| w.kind == kind) {
            problems.push(format!("no {kind:?} fault ran"));
        }
    }
    if !panics.is_empty() {
        problems.push(format!("{} `panicked` lines in the logs", panics.len()));
    }
    Report {
        duration_s: cfg.duration.as_secs_f64(),
        rate: cfg.rate,
        concurrency: cfg.concurrency,
        warmup_s: cfg.warmup.as_secs_f64(),
        policy: serde_json::json!({
            "retries": {"attempts": ATTEMPTS, "perTryTimeout_ms": PER_TRY_TIMEOUT.as_millis() as u64,
                        "retryOn": "5xx,reset,connect-failure"},
            "timeout_s": ROUTE_TIMEOUT.as_secs(),
            "outlierDetection": {"consecutive5xxErrors": 3, "interval": "1s", "baseEjectionTime": "3s",
                                 "maxEjectionPercent": 50, "minHealthPercent": 50},
            "subsets": {"v1": [B1, B2], "v2": [B3]},
            "client_timeout_s": CLIENT_TIMEOUT.as_secs(),
        }),
        planned: load.planned,
        sent,
        succeeded: sent - failed,
        failed,
        failures_by_cause: by_cause,
        unexplained,
        failure_examples: examples,
        latency_ms: latency,
        faults,
        windows: windows.to_vec(),
        drain_in_flight,
        growth,
        series,
        outlier_ejections: ejections,
        passed: problems.is_empty(),
        panics,
        problems,
    }
}

/// Up to `points` evenly spaced samples of each process incarnation that was sampled from the
/// first seconds to the last (restarted processes are left out; they are in the CSV).
pub fn series(samples: &[Sample], duration: f64, points: usize) -> BTreeMap<String, Vec<[f64; 4]>> {
    let mut by: BTreeMap<(String, u32), Vec<&Sample>> = BTreeMap::new();
    for s in samples {
        by.entry((s.process.clone(), s.pid)).or_default().push(s);
    }
    let mut out = BTreeMap::new();
    for ((name, _), all) in by {
        let (Some(a), Some(b)) = (all.first(), all.last()) else {
            continue;
        };
        if a.t_s > 5.0 || b.t_s < duration - 5.0 {
            continue;
        }
        let step = (b.t_s - a.t_s) / (points.max(2) - 1) as f64;
        let mut picked: Vec<[f64; 4]> = Vec::new();
        for k in 0..points.max(2) {
            let t = a.t_s + step * k as f64;
            if let Some(s) = all
                .iter()
                .min_by(|x, y| (x.t_s - t).abs().total_cmp(&(y.t_s - t).abs()))
            {
                let row = [
                    (s.t_s * 10.0).round() / 10.0,
                    s.rss_kb as f64,
                    s.fds as f64,
                    s.fds_other as f64,
                ];
                if picked.last() != Some(&row) {
                    picked.push(row);
                }
            }
        }
        out.insert(name, picked);
    }
    out
}

/// The human summary (also `report.md`).
pub fn render(r: &Report) -> String {
    let mut out = String::new();
    out.push_str(&format!(
        "soak: {:.0} s at {} req/s ({} connections), warm-up {:.0} s — {}\n\n",
        r.duration_s,
        r.rate,
        r.concurrency,
        r.warmup_s,
        if r.passed { "PASSED" } else { "FAILED" }
    ));
    let mut rows = vec![
        vec!["planned".to_string(), r.planned.to_string()],
        vec!["sent".to_string(), r.sent.to_string()],
        vec!["succeeded".to_string(), r.succeeded.to_string()],
        vec!["failed".to_string(), r.failed.to_string()],
        vec![
            "unexplained failures".to_string(),
            r.unexplained.to_string(),
        ],
    ];
    for (k, v) in &r.latency_ms {
        rows.push(vec![format!("latency {k} (ms)"), format!("{v}")]);
    }
    rows.push(vec![
        "outlier ejections (client proxy)".into(),
        format!("{}", r.outlier_ejections),
    ]);
    rows.push(vec![
        "in flight at SIGTERM, answered by the draining proxy".into(),
        format!("{:?}", r.drain_in_flight),
    ]);
    rows.push(vec!["panics in logs".into(), r.panics.len().to_string()]);
    out.push_str(&table::markdown(&["", "value"], &rows));
    out.push('\n');
    let rows: Vec<Vec<String>> = r
        .failures_by_cause
        .iter()
        .map(|(k, v)| vec![k.clone(), v.to_string()])
        .collect();
    if !rows.is_empty() {
        out.push_str(&table::markdown(&["failure cause", "requests"], &rows));
        out.push('\n');
    }
    let rows: Vec<Vec<String>> = r
        .faults
        .iter()
        .map(|(k, (n, ok))| vec![k.clone(), n.to_string(), ok.to_string()])
        .collect();
    out.push_str(&table::markdown(
        &["fault", "injected", "as expected"],
        &rows,
    ));
    out.push('\n');
    let rows: Vec<Vec<String>> = r
        .growth
        .iter()
        .map(|g| {
            vec![
                format!("{} ({})", g.process, g.pid),
                format!("{} / {} / {}", g.rss_kb[0], g.rss_kb[1], g.rss_kb[2]),
                format!("{} / {} / {}", g.fds[0], g.fds[1], g.fds[2]),
                format!(
                    "{} / {} / {}",
                    g.fds_other[0], g.fds_other[1], g.fds_other[2]
                ),
                if g.evaluated {
                    format!(
                        "{:+.1} % / {:+.1} % (all fds {:+.1} %)",
                        g.rss_growth * 100.0,
                        g.fd_growth * 100.0,
                        g.fd_total_growth * 100.0
                    )
                } else {
                    format!("not judged ({} samples, {:.0} s)", g.samples, g.span_s)
                },
            ]
        })
        .collect();
    out.push_str(&table::markdown(
        &[
            "process (pid)",
            "RSS kB start / after warm-up / end",
            "fds start / after warm-up / end",
            "fds outside connections",
            "growth RSS / fds outside connections",
        ],
        &rows,
    ));
    for (name, pts) in &r.series {
        out.push_str(&format!("\n{name} over time:\n\n"));
        let rows: Vec<Vec<String>> = pts
            .iter()
            .map(|p| {
                vec![
                    format!("{:.0}", p[0]),
                    format!("{:.0}", p[1]),
                    format!("{:.0}", p[2]),
                    format!("{:.0}", p[3]),
                ]
            })
            .collect();
        out.push_str(&table::markdown(
            &["t (s)", "RSS kB", "fds", "fds outside connections"],
            &rows,
        ));
    }
    for p in &r.problems {
        // The first line only (log tails are in report.json).
        let line: String = p.lines().next().unwrap_or("").chars().take(300).collect();
        out.push_str(&format!("\nPROBLEM: {line}"));
    }
    out.push('\n');
    out
}

fn write_outputs(dir: &Path, r: &Report, samples: &[Sample]) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::write(dir.join("report.json"), serde_json::to_vec_pretty(r)?)?;
    let mut csv = String::from("t_s,process,pid,rss_kb,fds,fds_outside_connections\n");
    for s in samples {
        csv.push_str(&format!(
            "{:.1},{},{},{},{},{}\n",
            s.t_s, s.process, s.pid, s.rss_kb, s.fds, s.fds_other
        ));
    }
    std::fs::write(dir.join("samples.csv"), csv)?;
    std::fs::write(dir.join("report.md"), render(r))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(secs: u64) -> SoakConfig {
        SoakConfig {
            out_dir: PathBuf::from("/nonexistent"),
            ..SoakConfig::standard(secs)
        }
    }

    #[test]
    fn schedule_fits_cycles_and_reloads() {
        let s = schedule(&cfg(60));
        let kills = s.iter().filter(|(_, x)| matches!(x, Step::Kill(_))).count();
        assert_eq!(kills, 1);
        assert!(
            s.iter().any(|(_, x)| *x == Step::Reload(2)),
            "an invalid set is loaded"
        );
        assert!(s.windows(2).all(|w| w[0].0 <= w[1].0), "sorted by time");
        assert!(s.iter().all(|(t, _)| *t < Duration::from_secs(60)));
        let long = schedule(&cfg(600));
        assert_eq!(long.iter().filter(|(_, x)| *x == Step::Rotate).count(), 14);
        assert!(cfg(30).validate().is_err());
        let mut bad = cfg(60);
        bad.rate = 0;
        assert!(bad.validate().unwrap_err().to_string().contains("rate 0"));
    }

    #[test]
    fn rule_sets_validate_as_expected() {
        let sets = rule_sets();
        for (i, (name, yaml)) in sets.iter().enumerate() {
            let ctx = remora_proxy::rules::LoadContext {
                namespace: NS.into(),
                ..Default::default()
            };
            let r = remora_proxy::rules::snapshot_from_yaml(&[("rules.yaml", yaml)], &ctx, 1);
            assert_eq!(r.is_ok(), i != 2, "{name}: {:?}", r.err());
        }
    }

    #[test]
    fn access_log_lines_are_indexed_by_request_id() {
        let text = r#"2026-11-22T00:00:00Z INFO something
{"kind":"http","direction":"outbound","status":503,"response_flags":"UF,URX","upstream":"10.244.0.13:8080","request_id":"abc"}
{"kind":"http","direction":"inbound","status":200,"response_flags":"-","upstream":"x","request_id":"def"}
{"kind":"tcp","direction":"outbound","request_id":"ghi"}"#;
        let m = access_log(text);
        assert_eq!(m.len(), 1);
        assert_eq!(m["abc"].flags, "UF,URX");
        assert_eq!(m["abc"].upstream, "10.244.0.13:8080");
    }

    fn w(kind: FaultKind, target: &str, a: f64, b: f64) -> Window {
        Window {
            kind,
            target: target.into(),
            start_s: a,
            end_s: b,
            note: String::new(),
            ok: true,
            signal_s: None,
        }
    }

    #[test]
    fn failures_are_explained_only_by_policy() {
        let ips: BTreeMap<String, String> = [(B3.to_string(), "10.244.0.13".to_string())].into();
        let windows = vec![
            w(FaultKind::Reload, "valid 80/20", 10.0, 10.2),
            w(FaultKind::Kill, B3, 20.0, 24.0),
            w(FaultKind::Drain, B1, 30.0, 36.0),
            w(FaultKind::Hang, B1, 40.0, 44.0),
        ];
        let req = |t: f64| Request {
            id: "x".into(),
            start_s: t,
            duration_ms: 5.0,
            outcome: Outcome::Status(503),
        };
        let log = |flags: &str, up: &str| Logged {
            status: 503,
            flags: flags.into(),
            upstream: up.into(),
        };
        let f = attribute(
            &req(21.0),
            Some(&log("UF,URX", "10.244.0.13:8080")),
            &windows,
            &ips,
        );
        assert!(f.explained, "{f:?}");
        assert!(f.cause.contains("subset v2 all down"), "{}", f.cause);
        // Same window, but the request went to another pod: not explained by the kill.
        let f = attribute(
            &req(21.0),
            Some(&log("UF", "10.244.0.11:8080")),
            &windows,
            &ips,
        );
        assert!(!f.explained);
        // Within the kill's grace (1 s) still explained; after it not.
        assert!(
            attribute(
                &req(24.8),
                Some(&log("URX", "10.244.0.13:8080")),
                &windows,
                &ips
            )
            .explained
        );
        assert!(
            !attribute(
                &req(25.5),
                Some(&log("URX", "10.244.0.13:8080")),
                &windows,
                &ips
            )
            .explained
        );
        // A drain or a reload never explains a failure.
        let f = attribute(
            &req(31.0),
            Some(&log("URX", "10.244.0.11:8080")),
            &windows,
            &ips,
        );
        assert!(!f.explained && f.cause.contains("Drain"), "{}", f.cause);
        let f = attribute(&req(10.1), None, &windows, &ips);
        assert!(!f.explained && f.cause.contains("Reload"), "{}", f.cause);
        // Retries exhausted during a hang window is the retry policy's answer.
        assert!(
            attribute(
                &req(41.0),
                Some(&log("UT,URX", "10.244.0.10:8080")),
                &windows,
                &ips
            )
            .explained
        );
        let f = attribute(&req(50.0), None, &windows, &ips);
        assert!(
            f.cause.contains("outside every fault window"),
            "{}",
            f.cause
        );
    }

    #[test]
    fn growth_compares_peaks_after_warmup() {
        let mk = |t: f64, rss: u64, fds: u64| Sample {
            t_s: t,
            process: "p".into(),
            pid: 1,
            rss_kb: rss,
            fds: fds + 40,
            fds_other: fds,
        };
        // Flat after a warm-up jump.
        let flat: Vec<Sample> = (0..30)
            .map(|i| {
                mk(
                    i as f64 * 2.0,
                    if i < 4 { 5000 } else { 10_000 + (i % 3) * 100 },
                    20,
                )
            })
            .collect();
        let g = growth(&flat, 8.0);
        assert!(g[0].evaluated && g[0].ok, "{g:?}");
        // Growing by 1 % per sample.
        let leak: Vec<Sample> = (0..30)
            .map(|i| mk(i as f64 * 2.0, 10_000 + i * 100, 20 + i))
            .collect();
        let g = growth(&leak, 8.0);
        assert!(g[0].evaluated && !g[0].ok, "{g:?}");
        // Too short to judge.
        let g = growth(&flat[..6], 8.0);
        assert!(!g[0].evaluated && g[0].ok);
    }

    #[test]
    fn drained_requests_are_those_spanning_the_signal_through_the_pod() {
        let req = |id: &str, start: f64, ms: f64, outcome: Outcome| Request {
            id: id.into(),
            start_s: start,
            duration_ms: ms,
            outcome,
        };
        let reqs = vec![
            req("a", 9.5, 800.0, Outcome::Ok), // spans 10.0, through the pod
            req("b", 9.5, 300.0, Outcome::Ok), // ended before the signal
            req("c", 9.8, 500.0, Outcome::Ok), // spans, but answered by another pod
            req("d", 9.9, 400.0, Outcome::Status(503)), // spans, failed
        ];
        let log = |up: &str, st: u16| Logged {
            status: st,
            flags: "-".into(),
            upstream: format!("{up}:8080"),
        };
        let logged: BTreeMap<String, Logged> = [
            ("a".to_string(), log("10.244.0.11", 200)),
            ("b".to_string(), log("10.244.0.11", 200)),
            ("c".to_string(), log("10.244.0.12", 200)),
            ("d".to_string(), log("10.244.0.11", 503)),
        ]
        .into();
        assert_eq!(drained_in_flight(&reqs, &logged, "10.244.0.11", 10.0), 1);
        assert_eq!(drained_in_flight(&reqs, &logged, "10.244.0.12", 10.0), 1);
        assert_eq!(drained_in_flight(&reqs, &logged, "10.244.0.11", 20.0), 0);
    }

    #[test]
    fn series_keeps_whole_run_processes_only() {
        let mk = |t: f64, pid: u32| Sample {
            t_s: t,
            process: format!("p{pid}"),
            pid,
            rss_kb: 1000 + t as u64,
            fds: 10,
            fds_other: 5,
        };
        let mut all: Vec<Sample> = (0..31).map(|i| mk(i as f64 * 2.0, 1)).collect();
        all.extend((15..31).map(|i| mk(i as f64 * 2.0, 2)));
        let s = series(&all, 60.0, 4);
        assert_eq!(s.keys().collect::<Vec<_>>(), vec!["p1"]);
        let ts: Vec<f64> = s["p1"].iter().map(|p| p[0]).collect();
        assert_eq!(ts, vec![0.0, 20.0, 40.0, 60.0]);
        assert_eq!(s["p1"][3][1], 1060.0);
    }

    #[test]
    fn own_process_usage_is_read() {
        let (rss, fds, conns) = proc_usage(std::process::id()).unwrap();
        assert!(conns <= fds);
        assert!(
            rss > 100,
            "a running test binary has more than 100 kB resident: {rss}"
        );
        assert!(fds >= 3, "stdin, stdout, stderr at least: {fds}");
        assert!(proc_usage(u32::MAX).is_none());
        // A connection to ourselves: at least its two established ends are counted, and they
        // are fds. (Other tests of this binary open and close sockets concurrently, so only
        // lower bounds hold, not before/after differences.)
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (a, _) = l.accept().unwrap();
        let (_, fds_after, conns_after) = proc_usage(std::process::id()).unwrap();
        assert!(
            conns_after >= 2,
            "established sockets counted: {conns_after}"
        );
        assert!(
            fds_after >= 6,
            "stdio, listener and two sockets: {fds_after}"
        );
        drop((c, a));
    }

    #[test]
    fn panics_are_found_in_logs() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("pods/x")).unwrap();
        std::fs::write(
            d.path().join("pods/x/remora-proxy.log"),
            "ok\nthread 'main' panicked at src/x.rs:1\n",
        )
        .unwrap();
        std::fs::write(d.path().join("pods/x/notes.txt"), "panicked").unwrap();
        let p = panics_in(d.path());
        assert_eq!(p.len(), 1);
        assert!(p[0].1.contains("panicked at"));
    }
}
