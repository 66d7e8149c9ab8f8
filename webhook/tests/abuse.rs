//! The `remora-webhook` binary under abuse, over real sockets on 127.0.0.1. With
//! `failurePolicy: Fail`, a webhook that one client can stall stops pod creation in every
//! injected namespace; these tests hold the server to its limits (`server::Limits`): idle and
//! slow-header connections, oversized bodies, too many reviews at once, slow bodies, HTTP/2
//! streams, and the memory it takes meanwhile.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use remora_webhook::client::{client_config, Client};
use remora_webhook::config::Config;
use remora_webhook::inject::{inject_pod, Outcome};
use remora_webhook::{cli, review, workload};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

const BIN: &str = env!("CARGO_BIN_EXE_remora-webhook");

// The workspace's test port allocator: ports outside the ephemeral range.
#[path = "../../tests/src/ports.rs"]
mod ports;

/// Kills the server when the test ends, failed or not.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Served {
    proc: Proc,
    addr: SocketAddr,
    cert: PathBuf,
    tls: Arc<rustls::ClientConfig>,
    _dir: tempfile::TempDir,
    stderr: std::sync::mpsc::Receiver<String>,
}

impl Served {
    fn pid(&self) -> u32 {
        self.proc.0.id()
    }
}

/// Starts `remora-webhook serve` with `extra` flags and waits (bounded) until it is ready.
async fn serve(extra: &[&str]) -> Served {
    let dir = tempfile::tempdir().unwrap();
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    std::fs::write(dir.path().join("tls.crt"), ck.cert.pem()).unwrap();
    std::fs::write(dir.path().join("tls.key"), ck.key_pair.serialize_pem()).unwrap();
    let addr = SocketAddr::from(([127, 0, 0, 1], ports::free_port()));
    let mut child = Command::new(BIN)
        .args([
            "serve",
            "--ca-addr",
            "off",
            "--listen",
            &addr.to_string(),
            "--drain-seconds",
            "1",
        ])
        // Without its CA the server injects no identity unless told where the CA is: tell it
        // what `Config::default()` injects, so its output and the library's are the same pods.
        .args([
            "--inject-ca-address",
            remora_webhook::config::DEFAULT_CA_ADDRESS,
        ])
        .args(extra)
        .arg("--tls-cert")
        .arg(dir.path().join("tls.crt"))
        .arg("--tls-key")
        .arg(dir.path().join("tls.key"))
        .arg("--config")
        .arg(dir.path().join("absent.yaml"))
        .env("REMORA_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let err = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let served = Served {
        proc: Proc(child),
        addr,
        cert: dir.path().join("tls.crt"),
        tls: client_config(&[ck.cert.pem().as_bytes()]).unwrap(),
        _dir: dir,
        stderr: rx,
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(mut c) = Client::connect(addr, "localhost", served.tls.clone()).await {
            if c.get("/readyz").await.map(|r| r.0).unwrap_or(0) == 200 {
                return served;
            }
        }
        let logs: Vec<String> = served.stderr.try_iter().collect();
        assert!(
            Instant::now() < deadline,
            "server did not become ready: {logs:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The server's resident memory in KiB (`VmRSS` of /proc/PID/status).
fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

/// Raises this process's open-file limit to at least `want` (up to the hard limit).
fn raise_nofile(want: u64) {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    if soft < want {
        let new = want.min(hard);
        setrlimit(Resource::RLIMIT_NOFILE, new, hard).unwrap();
        assert!(
            new >= want,
            "RLIMIT_NOFILE hard limit {hard} is below the {want} this test needs"
        );
    }
}

async fn tls_connect(
    addr: SocketAddr,
    cfg: &Arc<rustls::ClientConfig>,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    tokio_rustls::TlsConnector::from(cfg.clone())
        .connect(name, tcp)
        .await
}

/// Reads an HTTP/1.1 response head (status line and headers) from `s`, bounded by `limit`.
async fn read_head<S: tokio::io::AsyncRead + Unpin>(s: &mut S, limit: Duration) -> Option<String> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let deadline = Instant::now() + limit;
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let left = deadline.checked_duration_since(Instant::now())?;
        match tokio::time::timeout(left, s.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
            _ => return None,
        }
        if buf.len() > 64 * 1024 {
            return None;
        }
    }
    Some(String::from_utf8_lossy(&buf).into_owned())
}

fn status_of(head: &str) -> u16 {
    head.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// A Deployment's pod as the API server hands it over.
fn plain_pod() -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"generateName": "web-6d4b-", "labels": {"app": "web"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-6d4b", "uid": "x", "controller": true}]},
        "spec": {"containers": [{"name": "web", "image": "nginx", "ports": [{"containerPort": 8080}],
            "readinessProbe": {"httpGet": {"path": "/ready", "port": 8080}}}]}})
}

fn shared() -> PathBuf {
    match std::env::var("REMORA_SHARED") {
        Ok(s) if !s.is_empty() => PathBuf::from(s),
        _ => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared"),
    }
}

/// Istio's `proxy-override.yaml` pod after our injection: the output a reinvoked webhook gets
/// back (its override record raises the proxy's privileges, from the pod's own container).
fn proxy_override_injected() -> Value {
    let path = shared().join("anchors/istio/inject/proxy-override.yaml");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let doc = cli::parse_docs(&text).unwrap().remove(0);
    let t = doc.pointer("/spec/template").unwrap();
    let pod = workload::pod_from_template(&doc, t, "default");
    match inject_pod(&pod, "default", &Config::default()) {
        Outcome::Injected { pod, .. } => pod,
        other => panic!("proxy-override.yaml not injected: {other:?}"),
    }
}

static UID: AtomicU64 = AtomicU64::new(0);

/// One review on `c`; checks the answer and returns the time it took.
async fn timed_review(c: &mut Client, pod: &Value, want_patch: bool) -> Result<Duration, String> {
    let uid = format!("abuse-{}", UID.fetch_add(1, Ordering::Relaxed));
    let body = serde_json::to_vec(&review::review_for(pod, &uid, "shop")).unwrap();
    let t = Instant::now();
    let (status, answer) = tokio::time::timeout(
        Duration::from_secs(10),
        c.post("/inject", Bytes::from(body)),
    )
    .await
    .map_err(|_| "no answer within 10 s".to_string())?
    .map_err(|e| format!("{e:#}"))?;
    let took = t.elapsed();
    if status != 200 {
        return Err(format!(
            "status {status}: {}",
            String::from_utf8_lossy(&answer)
        ));
    }
    let v: Value = serde_json::from_slice(&answer).map_err(|e| e.to_string())?;
    if v["response"]["uid"] != uid.as_str() || v["response"]["allowed"] != true {
        return Err(format!("not allowed: {v}"));
    }
    if v["response"].get("patch").is_some() != want_patch {
        return Err(format!("patch expected: {want_patch}: {v}"));
    }
    Ok(took)
}

/// Pause before an attacker whose connection was closed connects again.
const RECONNECT: Duration = Duration::from_secs(3);

#[derive(Default, Debug)]
struct Tally {
    idle_connects: AtomicU64,
    idle_closed_by_server: AtomicU64,
    slow_connects: AtomicU64,
    slow_closed_by_server: AtomicU64,
    oversized_sent: AtomicU64,
    oversized_413: AtomicU64,
    /// Closed before the answer could be read (the server closes with the body unread, so the
    /// kernel may reset the connection before the 413 reaches the client).
    oversized_cut: AtomicU64,
    /// Answered with another status: a failure.
    oversized_other: AtomicU64,
}

/// Plain TCP connections that never send a byte, reconnecting (after a pause) when closed.
async fn idle_attacker(addr: SocketAddr, end: Instant, t: Arc<Tally>) {
    while Instant::now() < end {
        if let Ok(mut s) = TcpStream::connect(addr).await {
            t.idle_connects.fetch_add(1, Ordering::Relaxed);
            let mut b = [0u8; 64];
            if let Ok(Ok(_)) = tokio::time::timeout_at(end.into(), s.read(&mut b)).await {
                t.idle_closed_by_server.fetch_add(1, Ordering::Relaxed);
            }
        }
        tokio::time::sleep(RECONNECT).await;
    }
}

/// TLS connections that send a request head one header line a second, never finishing it.
async fn slow_header_attacker(
    addr: SocketAddr,
    cfg: Arc<rustls::ClientConfig>,
    end: Instant,
    t: Arc<Tally>,
) {
    while Instant::now() < end {
        if let Ok(Ok(mut s)) = tokio::time::timeout_at(end.into(), tls_connect(addr, &cfg)).await {
            t.slow_connects.fetch_add(1, Ordering::Relaxed);
            let mut ok = s
                .write_all(b"POST /inject HTTP/1.1\r\nHost: x\r\n")
                .await
                .is_ok();
            while ok && Instant::now() < end {
                tokio::time::sleep(Duration::from_secs(1)).await;
                ok = s.write_all(b"X-Slow: 1\r\n").await.is_ok() && s.flush().await.is_ok();
                // A closed connection shows on the next write or read.
                let mut b = [0u8; 64];
                if let Ok(r) = tokio::time::timeout(Duration::from_millis(1), s.read(&mut b)).await
                {
                    ok = matches!(r, Ok(n) if n > 0);
                }
            }
            if !ok {
                t.slow_closed_by_server.fetch_add(1, Ordering::Relaxed);
            }
        }
        tokio::time::sleep(RECONNECT).await;
    }
}

/// POSTs bodies far over the limit, as fast as the server takes them: declared (8 MiB
/// Content-Length) and undeclared (chunked, 2 MiB).
async fn oversized_attacker(
    addr: SocketAddr,
    cfg: Arc<rustls::ClientConfig>,
    end: Instant,
    t: Arc<Tally>,
    chunked: bool,
) {
    let chunk = vec![b' '; 64 * 1024];
    while Instant::now() < end {
        let Ok(Ok(s)) = tokio::time::timeout_at(end.into(), tls_connect(addr, &cfg)).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        t.oversized_sent.fetch_add(1, Ordering::Relaxed);
        let (mut r, mut w) = tokio::io::split(s);
        let chunk = chunk.clone();
        let writer = tokio::spawn(async move {
            let head = if chunked {
                "POST /inject HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n".to_string()
            } else {
                format!("POST /inject HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n", 8 << 20)
            };
            w.write_all(head.as_bytes()).await?;
            let n = if chunked { 32 } else { 128 };
            for _ in 0..n {
                if chunked {
                    w.write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
                        .await?;
                    w.write_all(&chunk).await?;
                    w.write_all(b"\r\n").await?;
                } else {
                    w.write_all(&chunk).await?;
                }
            }
            if chunked {
                w.write_all(b"0\r\n\r\n").await?;
            }
            w.flush().await
        });
        match read_head(&mut r, Duration::from_secs(15)).await {
            Some(h) if status_of(&h) == 413 => t.oversized_413.fetch_add(1, Ordering::Relaxed),
            Some(_) => t.oversized_other.fetch_add(1, Ordering::Relaxed),
            None => t.oversized_cut.fetch_add(1, Ordering::Relaxed),
        };
        writer.abort();
        // A flood, not a tight loop: up to 10 bodies a second per attacker, 80 in all, each a new
        // TLS connection (the cost of one attacker machine is not this test's to measure).
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

const ATTACKERS: usize = 1000; // of each kind: 2,000 connections held at once
const ATTACK: Duration = Duration::from_secs(20);

/// The attack of `reviews_keep_answering_under_idle_slow_and_oversized_floods`, run by it in a
/// child process at the lowest CPU priority (`nice -n 19`): the attacker's own cost (2,000
/// client connections, TLS handshakes, 64 KiB writes) would belong to another machine, not to the
/// two CPUs the server has here. Does nothing when run by hand without the test's environment.
#[test]
#[ignore = "started by reviews_keep_answering_under_idle_slow_and_oversized_floods"]
fn abuse_attacker() {
    let (Ok(addr), Ok(cert)) = (
        std::env::var("REMORA_ABUSE_ADDR"),
        std::env::var("REMORA_ABUSE_CERT"),
    ) else {
        return;
    };
    let addr: SocketAddr = addr.parse().unwrap();
    let tls = client_config(&[std::fs::read(cert).unwrap().as_slice()]).unwrap();
    raise_nofile(2 * ATTACKERS as u64 + 1024);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let tally = Arc::new(Tally::default());
    let end = Instant::now() + ATTACK;
    rt.block_on(async {
        let mut tasks = Vec::new();
        for _ in 0..ATTACKERS {
            tasks.push(tokio::spawn(idle_attacker(addr, end, tally.clone())));
            tasks.push(tokio::spawn(slow_header_attacker(
                addr,
                tls.clone(),
                end,
                tally.clone(),
            )));
        }
        for i in 0..8 {
            tasks.push(tokio::spawn(oversized_attacker(
                addr,
                tls.clone(),
                end,
                tally.clone(),
                i % 2 == 1,
            )));
        }
        // Ready once every attacker connected (bounded).
        let ramp = Instant::now() + Duration::from_secs(15);
        while tally.slow_connects.load(Ordering::Relaxed) < ATTACKERS as u64
            && Instant::now() < ramp
        {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        println!("ATTACK READY");
        let _ = tokio::time::timeout(
            ATTACK + Duration::from_secs(30),
            futures::future::join_all(tasks),
        )
        .await;
    });
    let t = &tally;
    let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
    println!(
        "ATTACK TALLY {}",
        json!({
            "idle_connects": n(&t.idle_connects), "idle_closed_by_server": n(&t.idle_closed_by_server),
            "slow_connects": n(&t.slow_connects), "slow_closed_by_server": n(&t.slow_closed_by_server),
            "oversized_sent": n(&t.oversized_sent), "oversized_413": n(&t.oversized_413),
            "oversized_cut": n(&t.oversized_cut), "oversized_other": n(&t.oversized_other),
        })
    );
    rt.shutdown_background();
}

/// 1,000 idle TCP connections and 1,000 slow-header TLS connections (each reconnecting when the
/// server closes it) and 8 clients flooding oversized bodies, against the default limits
/// (`--max-connections 512`), while reviews keep coming the way the API server sends them: on a
/// kept-alive connection and now and then on a new one. Every review is answered, fast, and the
/// server's memory stays under the 128 Mi limit of its Deployment.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reviews_keep_answering_under_idle_slow_and_oversized_floods() {
    const REVIEWS: usize = 200;
    let s = serve(&[]).await;
    let pid = s.pid();
    let rss_idle = rss_kib(pid).unwrap();
    let mut api = Client::connect(s.addr, "localhost", s.tls.clone())
        .await
        .unwrap();
    let plain = plain_pod();
    let reinject = proxy_override_injected();
    // Before the attack: the same reviews, for comparison in the report.
    let mut quiet = Vec::new();
    for i in 0..20 {
        let pod = if i % 2 == 0 { &plain } else { &reinject };
        quiet.push(timed_review(&mut api, pod, i % 2 == 0).await.unwrap());
    }
    quiet.sort();

    let mut attacker = Proc(
        Command::new("nice")
            .args(["-n", "19"])
            .arg(std::env::current_exe().unwrap())
            .args([
                "abuse_attacker",
                "--exact",
                "--ignored",
                "--nocapture",
                "--test-threads",
                "1",
            ])
            .env("REMORA_ABUSE_ADDR", s.addr.to_string())
            .env("REMORA_ABUSE_CERT", &s.cert)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let (tx, lines) = std::sync::mpsc::channel();
    let out = attacker.0.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let started = Instant::now();
    let end = started + ATTACK;
    let max_rss = Arc::new(AtomicU64::new(rss_idle));
    let max_fds = Arc::new(AtomicU64::new(0));
    let sampler = {
        let max_rss = max_rss.clone();
        let max_fds = max_fds.clone();
        tokio::spawn(async move {
            while Instant::now() < end + Duration::from_secs(2) {
                if let Some(r) = rss_kib(pid) {
                    max_rss.fetch_max(r, Ordering::Relaxed);
                }
                if let Ok(d) = std::fs::read_dir(format!("/proc/{pid}/fd")) {
                    max_fds.fetch_max(d.count() as u64, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    // Let the flood build up (every attacker connected once) before measuring.
    let ready = tokio::task::block_in_place(|| loop {
        match lines.recv_timeout(Duration::from_secs(30)) {
            Ok(l) if l.contains("ATTACK READY") => break true,
            Ok(_) => {}
            Err(_) => break false,
        }
    });
    assert!(ready, "the attacker process did not start");
    let mut took = Vec::with_capacity(REVIEWS);
    let mut failures = Vec::new();
    let mut fresh = 0;
    let mut slow = Vec::new();
    for i in 0..REVIEWS {
        // Every 10th review on a new connection (TLS handshake included in the time).
        let r = if i % 10 == 9 {
            fresh += 1;
            let t = Instant::now();
            match tokio::time::timeout(
                Duration::from_secs(10),
                Client::connect(s.addr, "localhost", s.tls.clone()),
            )
            .await
            {
                Ok(Ok(mut c)) => timed_review(&mut c, &plain, true)
                    .await
                    .map(|_| t.elapsed()),
                Ok(Err(e)) => Err(format!("connect: {e:#}")),
                Err(_) => Err("connect: no TLS handshake within 10 s".into()),
            }
        } else if i % 2 == 0 {
            timed_review(&mut api, &plain, true).await
        } else {
            timed_review(&mut api, &reinject, false).await
        };
        match r {
            Ok(d) => {
                if d > Duration::from_millis(20) {
                    slow.push(format!("review {i}: {d:?}"));
                }
                took.push(d)
            }
            Err(e) => failures.push(format!("review {i}: {e}")),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let during = Instant::now() < end;
    // Wait (bounded) for the attacker to report and stop, then look at the server once more.
    let report = tokio::task::block_in_place(|| loop {
        match lines.recv_timeout(Duration::from_secs(60)) {
            Ok(l) => {
                if let Some(j) = l.strip_prefix("ATTACK TALLY ") {
                    break serde_json::from_str::<Value>(j).ok();
                }
            }
            Err(_) => break None,
        }
    });
    let _ = sampler.await;
    let stop = report.ok_or(());
    let t = stop.clone().unwrap_or(Value::Null);
    let n = |k: &str| t[k].as_u64().unwrap_or(0);
    let _ = attacker.0.wait();
    let mut after = Client::connect(s.addr, "localhost", s.tls.clone())
        .await
        .unwrap();
    let (_, metrics) = after.get("/metrics").await.unwrap();
    let metrics = String::from_utf8_lossy(&metrics).into_owned();
    timed_review(&mut after, &plain, true).await.unwrap();

    took.sort();
    let (p50, p99, max) = (
        percentile(&took, 0.5),
        percentile(&took, 0.99),
        *took.last().unwrap_or(&Duration::ZERO),
    );
    let rss_max = max_rss.load(Ordering::Relaxed);
    let fds_max = max_fds.load(Ordering::Relaxed);
    eprintln!(
        "before the attack: 20 reviews: p50 {:?}, max {:?}",
        percentile(&quiet, 0.5),
        quiet.last().unwrap()
    );
    eprintln!(
        "under abuse: {} reviews ({fresh} on new connections): p50 {p50:?}, p99 {p99:?}, max {max:?}; \
         server RSS {rss_idle} KiB idle, {rss_max} KiB at most, open files at most {fds_max}; idle connections {} (closed by the server {}), \
         slow-header connections {} (closed {}), oversized bodies {} (413: {}, cut: {}, other: {}); \
         refused: evicted {}, header_timeout {}, body {}; reviews over 20 ms: {slow:?}",
        took.len(),
        n("idle_connects"),
        n("idle_closed_by_server"),
        n("slow_connects"),
        n("slow_closed_by_server"),
        n("oversized_sent"),
        n("oversized_413"),
        n("oversized_cut"),
        n("oversized_other"),
        metric(&metrics, "remora_webhook_refused_total{reason=\"evicted\"}"),
        metric(&metrics, "remora_webhook_refused_total{reason=\"header_timeout\"}"),
        metric(&metrics, "remora_webhook_refused_total{reason=\"body\"}"),
    );
    assert!(stop.is_ok(), "the attacker process did not report");
    let logs: Vec<String> = s.stderr.try_iter().collect();
    assert!(
        failures.is_empty(),
        "reviews failed under abuse:\n{}\nserver log:\n{}",
        failures.join("\n"),
        logs.join("\n")
    );
    assert!(
        during,
        "the reviews outlasted the attack window; nothing was measured under abuse"
    );
    // The bound: 100 ms per review (the API server's budget is seconds). A review takes a few
    // ms here (debug build); the margin is for the two CPUs the server shares with the attacker
    // process (niced, but still running) and whatever else runs on the machine. p99 of 200
    // reviews allows two scheduler hiccups.
    assert!(
        p99 < Duration::from_millis(100),
        "review p99 {p99:?} (p50 {p50:?}, max {max:?})"
    );
    assert!(
        rss_max < 128 * 1024,
        "server RSS reached {rss_max} KiB (limit 128 MiB)"
    );
    // The flood was real: attackers were connected past the cap and the server shed them.
    assert!(n("slow_connects") >= ATTACKERS as u64);
    assert!(n("idle_connects") >= ATTACKERS as u64);
    // The server shed them: it never held far more connections than --max-connections (512),
    // against the 2,000 the attack keeps open. Above the cap count the listener, the
    // certificate watcher and the runtime, and connections evicted or accepted whose tasks have
    // not run yet to close or register them (hundreds of reconnects a second).
    assert!(fds_max < 1024, "the server had {fds_max} files open");
    assert!(n("idle_closed_by_server") >= ATTACKERS as u64, "{t}");
    assert!(n("slow_closed_by_server") >= ATTACKERS as u64, "{t}");
    assert!(
        metric(&metrics, "remora_webhook_refused_total{reason=\"evicted\"}") > 0,
        "{metrics}"
    );
    assert!(n("oversized_413") > 0);
    assert_eq!(
        n("oversized_other"),
        0,
        "an oversized body was not answered 413"
    );
}

/// Small limits, one at a time: a slow body holds the only review slot (the next review gets 429
/// with Retry-After, the slow one 408 at the review timeout), a connection that sends nothing is
/// closed after the header read timeout, a declared body over the limit is 413 without reading
/// it, and HTTP/2 peers are told the stream limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_limits_are_enforced() {
    let s = serve(&[
        "--max-concurrent-reviews",
        "1",
        "--review-timeout-seconds",
        "2",
        "--header-read-timeout-seconds",
        "1",
        "--h2-max-concurrent-streams",
        "3",
        "--max-body-bytes",
        "65536",
    ])
    .await;
    let plain = plain_pod();
    let mut api = Client::connect(s.addr, "localhost", s.tls.clone())
        .await
        .unwrap();
    timed_review(&mut api, &plain, true).await.unwrap();

    // A slow body takes the only review slot.
    let mut slow = tls_connect(s.addr, &s.tls).await.unwrap();
    slow.write_all(b"POST /inject HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"apiVersion\"")
        .await
        .unwrap();
    slow.flush().await.unwrap();
    let body = serde_json::to_vec(&review::review_for(&plain, "busy", "shop")).unwrap();
    let mut busy = None;
    for _ in 0..100 {
        let mut c = tls_connect(s.addr, &s.tls).await.unwrap();
        let head = format!(
            "POST /inject HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        c.write_all(head.as_bytes()).await.unwrap();
        c.write_all(&body).await.unwrap();
        let h = read_head(&mut c, Duration::from_secs(10)).await.unwrap();
        if status_of(&h) == 429 {
            busy = Some(h);
            break;
        }
        // The slow request has not reached the handler yet: try again shortly.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let busy = busy.expect("no 429 while the only review slot was held");
    assert!(
        busy.to_ascii_lowercase().contains("retry-after: 1\r\n"),
        "{busy}"
    );
    // The slow one is cut at the review timeout (2 s), bounded here by 20 s.
    let h = read_head(&mut slow, Duration::from_secs(20))
        .await
        .expect("no answer to the slow body");
    assert_eq!(status_of(&h), 408, "{h}");
    timed_review(&mut api, &plain, true).await.unwrap();

    // Nothing sent: closed after the header read timeout (1 s), bounded here by 20 s.
    for tls in [false, true] {
        let t = Instant::now();
        let mut b = [0u8; 16];
        let n = if tls {
            let mut c = tls_connect(s.addr, &s.tls).await.unwrap();
            tokio::time::timeout(Duration::from_secs(20), c.read(&mut b)).await
        } else {
            let mut c = TcpStream::connect(s.addr).await.unwrap();
            tokio::time::timeout(Duration::from_secs(20), c.read(&mut b)).await
        };
        assert!(
            matches!(n, Ok(Ok(0)) | Ok(Err(_))),
            "tls {tls}: connection not closed: {n:?} after {:?}",
            t.elapsed()
        );
    }

    // Declared over the limit: 413 at once, though no body byte was sent.
    let mut c = tls_connect(s.addr, &s.tls).await.unwrap();
    c.write_all(b"POST /inject HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 65537\r\n\r\n")
        .await
        .unwrap();
    let h = read_head(&mut c, Duration::from_secs(10)).await.unwrap();
    assert_eq!(status_of(&h), 413, "{h}");
    // With the body sent, the client may meet the server's close (it refuses before reading)
    // instead of reading the 413; anything else (a review) is a failure.
    match api.post("/inject", Bytes::from(vec![b' '; 65537])).await {
        Ok((status, text)) => assert_eq!(status, 413, "{}", String::from_utf8_lossy(&text)),
        Err(e) => assert!(format!("{e:#}").contains("sending"), "{e:#}"),
    }
    let mut api = Client::connect(s.addr, "localhost", s.tls.clone())
        .await
        .unwrap();
    timed_review(&mut api, &plain, true).await.unwrap();

    // HTTP/2: the server's SETTINGS carry the stream limit.
    let mut cfg = (*s.tls).clone();
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    let tls = tls_connect(s.addr, &Arc::new(cfg)).await.unwrap();
    let (mut h2c, conn) = h2::client::handshake(tls).await.unwrap();
    let (report, asked) = tokio::sync::oneshot::channel::<()>();
    let driver = tokio::spawn(async move {
        let mut conn = conn;
        tokio::select! {
            _ = &mut conn => None,
            _ = asked => Some(conn.max_concurrent_send_streams()),
        }
    });
    let req = http::Request::get("https://localhost/healthz")
        .body(())
        .unwrap();
    h2c = h2c.ready().await.unwrap();
    let (resp, _) = h2c.send_request(req, true).unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(10), resp)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(resp.status(), 200);
    let _ = report.send(());
    let streams = tokio::time::timeout(Duration::from_secs(10), driver)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(streams, Some(3));
}

#[test]
fn bad_limit_flags_fail_with_one_line() {
    for (flag, value, needle) in [
        (
            "--max-connections",
            "0",
            "--max-connections 0: must be at least 1",
        ),
        (
            "--max-body-bytes",
            "100",
            "--max-body-bytes 100: must be at least 4096",
        ),
        (
            "--review-timeout-seconds",
            "0",
            "--review-timeout-seconds 0: must be at least 1 second",
        ),
    ] {
        let out = Command::new(BIN)
            .args([
                "serve",
                "--ca-addr",
                "off",
                "--listen",
                "127.0.0.1:1",
                flag,
                value,
            ])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{flag}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains(needle), "{err}");
    }
}
