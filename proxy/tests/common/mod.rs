//! Shared harness for the data-plane process tests: start `remora-proxy run` on free loopback
//! ports, real peer servers (HTTP/1.1 + h2c echo, TCP echo, server-first banner), a tiny HTTP/1.1
//! client, and clean-up guards. Every process and temp dir is removed on drop, even on failure.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream as StdStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A unique short name for this process and call (netns names, temp names).
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}{}x{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

// Ports for the proxies these tests start: outside the kernel's ephemeral range, so no client
// socket of a parallel test can take one between choosing it and the proxy binding it. One
// allocator for the whole workspace's tests (remora-e2e uses the same file as `ports`).
#[path = "../../../tests/src/collector.rs"]
pub mod collector;
#[path = "../../../tests/src/ports.rs"]
mod ports;
pub use ports::free_ports;

/// Bound of waits for a proxy process to start (ready, or its health server answering).
pub const WAIT_START_S: u64 = 60;
/// Bound of waits for something that normally takes milliseconds to a second or two (an
/// access-log line, a stderr line, a rules reload, a counter): generous, since every such wait
/// polls and returns as soon as the condition holds, so only a failing test pays it.
pub const WAIT_S: u64 = 30;

/// A loopback port on which connects are refused (RST) for as long as this value lives: a TCP
/// socket bound to it that never listens. Holding the port bound keeps any other test or
/// process from starting a server on it, which a port merely chosen free and released cannot
/// promise.
pub struct DeadPort {
    pub port: u16,
    _sock: std::os::fd::OwnedFd,
}

impl DeadPort {
    pub fn new() -> DeadPort {
        use nix::sys::socket::{bind, socket, AddressFamily, SockFlag, SockType, SockaddrIn};
        use std::os::fd::AsRawFd;
        for _ in 0..100 {
            let port = free_ports(1)[0];
            let sock = socket(
                AddressFamily::Inet,
                SockType::Stream,
                SockFlag::SOCK_CLOEXEC,
                None,
            )
            .expect("socket");
            if bind(sock.as_raw_fd(), &SockaddrIn::new(127, 0, 0, 1, port)).is_ok() {
                return DeadPort { port, _sock: sock };
            }
        }
        panic!("no port to hold bound for refused connects");
    }
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }
}

pub fn proxy_bin() -> &'static str {
    env!("CARGO_BIN_EXE_remora-proxy")
}

/// Ports of one proxy instance.
#[derive(Clone, Copy, Debug)]
pub struct Ports {
    pub outbound: u16,
    pub inbound: u16,
    pub admin: u16,
    pub health: u16,
    pub prometheus: u16,
}

impl Ports {
    pub fn free() -> Ports {
        let p = free_ports(5);
        Ports {
            outbound: p[0],
            inbound: p[1],
            admin: p[2],
            health: p[3],
            prometheus: p[4],
        }
    }
    pub fn outbound_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.outbound))
    }
    pub fn inbound_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.inbound))
    }
    pub fn admin_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.admin))
    }
    pub fn health_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.health))
    }
    pub fn prometheus_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.prometheus))
    }
}

/// A running `remora-proxy run`; killed on drop.
pub struct ProxyProc {
    pub child: Child,
    pub ports: Ports,
    pub stdout: Arc<Mutex<Vec<String>>>,
    pub stderr: Arc<Mutex<Vec<String>>>,
    pub rules_dir: PathBuf,
}

pub fn pump(r: impl Read + Send + 'static, into: Arc<Mutex<Vec<String>>>) {
    std::thread::spawn(move || {
        for line in BufReader::new(r).lines() {
            let Ok(line) = line else { return };
            into.lock().unwrap().push(line);
        }
    });
}

/// How to start a proxy.
pub struct ProxyOpts {
    pub ports: Ports,
    pub rules_dir: PathBuf,
    pub fixed_outbound: Option<SocketAddr>,
    pub fixed_inbound: Option<SocketAddr>,
    pub extra_args: Vec<String>,
    pub env: Vec<(String, String)>,
    /// Run inside this network namespace as uid/gid 1337 (`ip netns exec NS setpriv ...`).
    pub netns: Option<String>,
}

impl ProxyOpts {
    pub fn new(rules_dir: &Path) -> ProxyOpts {
        ProxyOpts {
            ports: Ports::free(),
            rules_dir: rules_dir.to_path_buf(),
            fixed_outbound: None,
            fixed_inbound: None,
            extra_args: vec![],
            env: vec![],
            netns: None,
        }
    }
}

impl ProxyProc {
    pub fn start(o: ProxyOpts) -> ProxyProc {
        let p = o.ports;
        // In a namespace, bind the inbound listener on all addresses as in a pod.
        let (outbound_ip, inbound_ip) = if o.netns.is_some() {
            ("127.0.0.1", "0.0.0.0")
        } else {
            ("127.0.0.1", "127.0.0.1")
        };
        let mut args: Vec<String> = vec![
            "run".into(),
            format!("--outbound-addr={outbound_ip}:{}", p.outbound),
            format!("--inbound-addr={inbound_ip}:{}", p.inbound),
            format!("--admin-addr=127.0.0.1:{}", p.admin),
            format!("--health-addr=127.0.0.1:{}", p.health),
            format!("--prometheus-addr=127.0.0.1:{}", p.prometheus),
            format!("--rules-dir={}", o.rules_dir.display()),
            "--rules-rescan-seconds=1".into(),
            "--pod-labels-file=/nonexistent/remora-test-labels".into(),
            "--namespace=testns".into(),
            "--workload-name=testwl".into(),
            "--drain-seconds=1".into(),
        ];
        if o.netns.is_none() {
            args.push("--ipv6=off".into());
        }
        if let Some(t) = o.fixed_outbound {
            args.push(format!("--fixed-outbound-target={t}"));
        }
        if let Some(t) = o.fixed_inbound {
            args.push(format!("--fixed-inbound-target={t}"));
        }
        // The tests read the access log as JSON (the product default is Istio's TEXT line).
        if !o
            .extra_args
            .iter()
            .any(|a| a.starts_with("--access-log-encoding"))
        {
            args.push("--access-log-encoding=JSON".into());
        }
        args.extend(o.extra_args.iter().cloned());
        let mut cmd = match &o.netns {
            None => {
                let mut c = Command::new(proxy_bin());
                c.args(&args);
                c
            }
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args([
                    "netns",
                    "exec",
                    ns,
                    "setpriv",
                    "--reuid=1337",
                    "--regid=1337",
                ])
                .arg("--clear-groups")
                .arg(proxy_bin())
                .args(&args);
                c
            }
        };
        for (k, v) in &o.env {
            cmd.env(k, v);
        }
        // Keep the test environment from leaking into the proxy's flags.
        for k in [
            "REMORA_OUTBOUND_ADDR",
            "REMORA_INBOUND_ADDR",
            "ISTIO_KUBE_APP_PROBERS",
            "REMORA_LOG_LEVEL",
        ] {
            if !o.env.iter().any(|(e, _)| e == k) {
                cmd.env_remove(k);
            }
        }
        cmd.stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .stdin(Stdio::null());
        let mut child = cmd.spawn().expect("spawn remora-proxy");
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        pump(child.stdout.take().unwrap(), stdout.clone());
        pump(child.stderr.take().unwrap(), stderr.clone());
        ProxyProc {
            child,
            ports: p,
            stdout,
            stderr,
            rules_dir: o.rules_dir,
        }
    }

    /// Wait (bounded) until `/healthz/ready` answers 200 (in the root netns only). The bound is
    /// generous: a debug build starting on a loaded 2-core CI machine can take many seconds, and
    /// a ready proxy returns at once.
    pub fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(WAIT_START_S);
        loop {
            if let Ok(Some(st)) = self.child.try_wait() {
                panic!("proxy exited early ({st}); stderr:\n{}", self.stderr_text());
            }
            if let Ok(r) = http_get(self.ports.health_addr(), "/healthz/ready", &[]) {
                if r.status == 200 {
                    return;
                }
            }
            if Instant::now() > deadline {
                panic!(
                    "proxy not ready in {WAIT_START_S} s; stderr:\n{}",
                    self.stderr_text()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn stderr_text(&self) -> String {
        self.stderr.lock().unwrap().join("\n")
    }

    /// Access-log lines (JSON) seen so far.
    pub fn access_log(&self) -> Vec<serde_json::Value> {
        self.stdout
            .lock()
            .unwrap()
            .iter()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Wait (bounded) for an access-log line matching `pred`.
    pub fn wait_log(&self, pred: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(WAIT_S);
        loop {
            if let Some(v) = self.access_log().into_iter().find(|v| pred(v)) {
                return v;
            }
            if Instant::now() > deadline {
                panic!(
                    "no matching access-log line; stdout:\n{}\nstderr:\n{}",
                    self.stdout.lock().unwrap().join("\n"),
                    self.stderr_text()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Wait (bounded) for a stderr line containing `needle`.
    pub fn wait_stderr(&self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(WAIT_S);
        loop {
            if let Some(l) = self
                .stderr
                .lock()
                .unwrap()
                .iter()
                .find(|l| l.contains(needle))
            {
                return l.clone();
            }
            if Instant::now() > deadline {
                panic!(
                    "no stderr line with {needle:?}; stderr:\n{}",
                    self.stderr_text()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn metrics(&self) -> String {
        let r = http_get(self.ports.prometheus_addr(), "/stats/prometheus", &[]).expect("metrics");
        assert_eq!(r.status, 200);
        r.body_text()
    }

    /// The metrics text once the sample `name` with all `parts` has reached `at_least`, or after
    /// a bounded wait (then the caller's assertion fails with the text). A request's metrics are
    /// recorded when the proxy finishes it (with its access-log line), which can come just after
    /// the client has its answer; callers still assert the exact value on what is returned.
    pub fn metrics_when(&self, name: &str, parts: &[&str], at_least: f64) -> String {
        let deadline = Instant::now() + Duration::from_secs(WAIT_S);
        loop {
            let m = self.metrics();
            if metric_value(&m, name, parts) >= at_least || Instant::now() > deadline {
                return m;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for ProxyProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- proxy stderr ---\n{}", self.stderr_text());
        }
    }
}

/// The value of one metric sample whose line contains all `parts` (sum over matches).
pub fn metric_value(text: &str, name: &str, parts: &[&str]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .filter(|l| parts.iter().all(|p| l.contains(p)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A parsed HTTP/1.1 response.
#[derive(Debug)]
pub struct HttpResp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).to_string()
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", self.body_text()))
    }
}

/// One HTTP/1.1 GET with `Connection: close` (std, blocking, bounded by 10 s timeouts).
pub fn http_get(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> std::io::Result<HttpResp> {
    http_request(addr, "GET", path, headers, b"")
}

pub fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<HttpResp> {
    let mut s = StdStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.set_write_timeout(Some(Duration::from_secs(10)))?;
    let mut req = format!("{method} {path} HTTP/1.1\r\n");
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        req.push_str(&format!("Host: {addr}\r\n"));
    }
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str(&format!(
        "Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    ));
    s.write_all(req.as_bytes())?;
    s.write_all(body)?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    parse_response(&raw)
}

pub fn parse_response(raw: &[u8]) -> std::io::Result<HttpResp> {
    let bad = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, m.to_string());
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| bad("no header end"))?;
    let head = String::from_utf8_lossy(&raw[..end]).to_string();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().ok_or_else(|| bad("no status line"))?;
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("bad status line"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let mut body = raw[end + 4..].to_vec();
    let chunked = headers.iter().any(|(k, v)| {
        k.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked")
    });
    if chunked {
        let mut out = Vec::new();
        let mut rest = &body[..];
        while let Some(p) = rest.windows(2).position(|w| w == b"\r\n") {
            let size_str = String::from_utf8_lossy(&rest[..p]).to_string();
            let size = usize::from_str_radix(size_str.split(';').next().unwrap_or("").trim(), 16)
                .map_err(|_| bad("bad chunk size"))?;
            rest = &rest[p + 2..];
            if size == 0 || rest.len() < size {
                break;
            }
            out.extend_from_slice(&rest[..size]);
            rest = &rest[(size + 2).min(rest.len())..];
        }
        body = out;
    }
    Ok(HttpResp {
        status,
        headers,
        body,
    })
}

/// A temp rules directory laid out like a kubelet ConfigMap volume:
/// `..data -> ..v1/`, and each file a symlink `NAME -> ..data/NAME`.
pub struct RulesDir {
    pub tmp: tempfile::TempDir,
    version: usize,
}

impl RulesDir {
    pub fn new(files: &[(&str, &str)]) -> RulesDir {
        let tmp = tempfile::tempdir().expect("tempdir");
        let mut d = RulesDir { tmp, version: 0 };
        d.swap(files);
        d
    }
    pub fn path(&self) -> &Path {
        self.tmp.path()
    }
    /// Write a new version and atomically swap `..data` to it (kubelet's update).
    pub fn swap(&mut self, files: &[(&str, &str)]) {
        self.version += 1;
        let root = self.tmp.path();
        let vdir = root.join(format!("..2026_11_22_v{}", self.version));
        std::fs::create_dir(&vdir).unwrap();
        for (name, text) in files {
            std::fs::write(vdir.join(name), text).unwrap();
        }
        let tmp_link = root.join("..data_tmp");
        let _ = std::fs::remove_file(&tmp_link);
        std::os::unix::fs::symlink(vdir.file_name().unwrap(), &tmp_link).unwrap();
        std::fs::rename(&tmp_link, root.join("..data")).unwrap();
        for (name, _) in files {
            let link = root.join(name);
            if std::fs::symlink_metadata(&link).is_err() {
                std::os::unix::fs::symlink(format!("..data/{name}"), &link).unwrap();
            }
        }
    }
}

/// Echo server answers: JSON describing what the server saw.
pub fn echo_json(
    server: &str,
    method: &str,
    path: &str,
    version: &str,
    peer: SocketAddr,
    headers: &http::HeaderMap,
    body_len: usize,
) -> String {
    let mut h = BTreeMap::new();
    for (k, v) in headers {
        h.insert(k.as_str().to_string(), v.to_str().unwrap_or("").to_string());
    }
    serde_json::json!({
        "server": server, "method": method, "path": path, "version": version,
        "peer": peer.to_string(), "headers": h, "body_len": body_len,
    })
    .to_string()
}

/// A real HTTP/1.1 + h2c (auto-detected) echo server on `addr`, named `name`. Runs on the
/// current tokio runtime.
pub async fn spawn_http_echo(addr: SocketAddr, name: &'static str) -> SocketAddr {
    use http_body_util::{BodyExt, Full};
    use hyper::service::service_fn;
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .expect("bind echo");
    let local = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((sock, peer)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let svc = service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| async move {
                        let method = req.method().to_string();
                        let path = req
                            .uri()
                            .path_and_query()
                            .map(|p| p.as_str().to_string())
                            .unwrap_or_default();
                        let version = format!("{:?}", req.version());
                        let authority = req
                            .uri()
                            .authority()
                            .map(|a| a.to_string())
                            .or_else(|| {
                                req.headers()
                                    .get("host")
                                    .and_then(|h| h.to_str().ok())
                                    .map(str::to_string)
                            })
                            .unwrap_or_default();
                        let headers = req.headers().clone();
                        let body = req.into_body().collect().await.map(|b| b.to_bytes());
                        let len = body.map(|b| b.len()).unwrap_or(0);
                        // `/delay/MS`: answer after MS milliseconds (an in-flight request).
                        if let Some(ms) = path
                            .strip_prefix("/delay/")
                            .and_then(|s| s.parse::<u64>().ok())
                        {
                            tokio::time::sleep(Duration::from_millis(ms)).await;
                        }
                        let status = path
                            .strip_prefix("/status/")
                            .and_then(|s| s.parse::<u16>().ok())
                            .unwrap_or(200);
                        let mut v: serde_json::Value = serde_json::from_str(&echo_json(
                            name, &method, &path, &version, peer, &headers, len,
                        ))
                        .unwrap_or_default();
                        v["authority"] = serde_json::Value::String(authority);
                        let text = v.to_string();
                        let resp = hyper::Response::builder()
                            .status(status)
                            .header("content-type", "application/json")
                            .header("x-server", name)
                            .body(Full::new(bytes::Bytes::from(text)))
                            .unwrap();
                        Ok::<_, std::convert::Infallible>(resp)
                    },
                );
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection_with_upgrades(TokioIo::new(sock), svc)
                    .await;
            });
        }
    });
    local
}

/// TCP echo server (client speaks first).
pub async fn spawn_tcp_echo() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let local = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let (mut r, mut w) = sock.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    local
}

/// A server-first protocol (like SMTP/MySQL): sends a banner on accept, then answers each line
/// with `echo: LINE`.
pub async fn spawn_server_first(addr: SocketAddr) -> SocketAddr {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    let local = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((sock, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let (r, mut w) = sock.into_split();
                if w.write_all(b"220 remora-test banner ready\r\n")
                    .await
                    .is_err()
                {
                    return;
                }
                let mut lines = tokio::io::BufReader::new(r).lines();
                while let Ok(Some(l)) = lines.next_line().await {
                    if w.write_all(format!("echo: {l}\r\n").as_bytes())
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    local
}

/// A network namespace created for one test; deleted on drop.
pub struct NetNs {
    pub name: String,
}

pub fn sh(cmd: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .map_err(|e| format!("{cmd}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{cmd} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).to_string())
}

impl NetNs {
    pub fn create() -> NetNs {
        let name = unique("rmdp");
        sh("ip", &["netns", "add", &name]).expect("ip netns add");
        let ns = NetNs { name };
        ns.exec("ip", &["link", "set", "lo", "up"]).expect("lo up");
        ns
    }
    pub fn exec(&self, cmd: &str, args: &[&str]) -> Result<String, String> {
        let mut a = vec!["netns", "exec", self.name.as_str(), cmd];
        a.extend_from_slice(args);
        sh("ip", &a)
    }
    /// Run blocking `f` on a fresh thread that entered this namespace, and return its result.
    pub fn run_blocking<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/var/run/netns/{}", self.name);
        std::thread::spawn(move || {
            let fd = std::fs::File::open(&path).expect("open netns");
            nix::sched::setns(fd, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            f()
        })
        .join()
        .unwrap_or_else(|e| std::panic::resume_unwind(e))
    }

    /// A single-threaded tokio runtime on a thread inside this namespace: every task spawned on
    /// the returned handle (and every socket it opens) lives in the namespace. Stops on drop.
    pub fn runtime(&self) -> NsRuntime {
        let path = format!("/var/run/netns/{}", self.name);
        let (tx, rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let fd = std::fs::File::open(&path).expect("open netns");
            nix::sched::setns(fd, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            tx.send(rt.handle().clone()).unwrap();
            rt.block_on(async move {
                let _ = stop_rx.await;
            });
        });
        let handle = rx.recv().expect("netns runtime");
        NsRuntime {
            handle,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }
}

/// See [`NetNs::runtime`].
pub struct NsRuntime {
    pub handle: tokio::runtime::Handle,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl NsRuntime {
    /// Run `fut` to completion on the namespace's runtime (from a non-async context).
    pub fn block_on<T: Send + 'static>(
        &self,
        fut: impl std::future::Future<Output = T> + Send + 'static,
    ) -> T {
        let (tx, rx) = std::sync::mpsc::channel();
        self.handle.spawn(async move {
            let _ = tx.send(fut.await);
        });
        rx.recv_timeout(Duration::from_secs(60))
            .expect("netns task did not finish in 60 s")
    }
}

impl Drop for NsRuntime {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = sh("ip", &["netns", "del", &self.name]);
    }
}
