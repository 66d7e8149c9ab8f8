//! The data-plane benchmark in the lab (`remora-lab bench`, run by `scripts/bench lab`): the same
//! fixed-rate and saturation loads (oha) from a client pod to a server pod, direct, through nginx
//! and HAProxy (one reverse-proxy hop in the server pod, plain and terminating TLS), through one
//! remora inbound hop, through the remora ingress gateway (`manifests/gateway.yaml`, plain and
//! terminating TLS) to the plain server, and through the remora sidecar pair. Prints a Markdown
//! table.
//!
//! Every figure is the median of `--runs` runs (default 3) with its spread (lowest–highest);
//! the runs go round the paths in turn, so that a change in the machine's load spreads over all
//! paths alike. Per proxy path and run, during the fixed-rate load: CPU time (utime + stime of
//! the proxies' process groups, from /proc), context switches (voluntary + involuntary, summed
//! over every thread of those processes, from /proc/PID/task/*/status), each divided by the
//! requests answered and by the number of proxies on the path. System calls per request are
//! counted in a separate fixed-rate window of up to 5 s after the saturation load (`perf stat -e
//! raw_syscalls:sys_enter` attached to the proxies' processes; the tracepoint slows every system
//! call, so it must not overlap the other windows; "–" without perf).

use crate::lab::{Lab, LabOptions};
use crate::table;
use anyhow::{anyhow, bail, Context, Result};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    /// Seconds per load run.
    #[arg(long, default_value_t = 30)]
    pub duration: u64,
    /// Fixed request rate (req/s) of the latency run.
    #[arg(long, default_value_t = 1000)]
    pub rate: u32,
    /// Connections of the latency run.
    #[arg(long, default_value_t = 16)]
    pub connections: u32,
    /// Connections of the saturation run.
    #[arg(long, default_value_t = 64)]
    pub saturation_connections: u32,
    /// Response body size in bytes.
    #[arg(long, default_value_t = 1024)]
    pub body_bytes: usize,
    /// Worker threads of every proxy (remora, nginx, HAProxy) and of the server app.
    #[arg(long, default_value_t = 2)]
    pub workers: u32,
    /// The oha binary.
    #[arg(long, default_value = "oha")]
    pub oha: PathBuf,
    /// Also write the Markdown report here.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Runs per path; each figure is their median, shown with the spread.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=20))]
    pub runs: u32,
    /// Only these paths (comma-separated keys: direct, nginx, haproxy, inbound, nginx-tls,
    /// haproxy-tls, gateway, gateway-tls, pair); all by default. `direct` is always measured
    /// (the added p99 and the saturation ratio are relative to it).
    #[arg(long, value_delimiter = ',')]
    pub paths: Vec<String>,
    /// The perf binary used to count system calls (`perf stat -e raw_syscalls:sys_enter`).
    #[arg(long, default_value = "perf")]
    pub perf: PathBuf,
}

/// The paths' keys for `--paths`, in the report's order.
pub const PATH_KEYS: [&str; 9] = [
    "direct",
    "nginx",
    "haproxy",
    "inbound",
    "nginx-tls",
    "haproxy-tls",
    "gateway",
    "gateway-tls",
    "pair",
];

/// One load result.
#[derive(Debug, Clone, Default)]
pub struct Load {
    pub rps: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub requests: f64,
    pub errors: f64,
}

/// Reads oha's `--output-format json` (or `-j`) summary.
pub fn parse_oha(json: &str) -> Result<Load> {
    let v: serde_json::Value = serde_json::from_str(json).context("oha output is not JSON")?;
    let f = |p: &str| v.pointer(p).and_then(|x| x.as_f64());
    let pct = |k: &str| {
        f(&format!("/latencyPercentiles/{k}"))
            .or_else(|| {
                f(&format!(
                    "/latencyPercentiles/{}",
                    k.trim_start_matches('p')
                ))
            })
            .map(|s| s * 1000.0)
            .ok_or_else(|| anyhow!("oha output lacks latencyPercentiles.{k}"))
    };
    let ok: f64 = v
        .pointer("/statusCodeDistribution")
        .and_then(|m| m.as_object())
        .map(|m| {
            m.iter()
                .filter(|(k, _)| k.starts_with('2'))
                .filter_map(|(_, c)| c.as_f64())
                .sum()
        })
        .unwrap_or(0.0);
    // Requests still in flight when `-z` ends are cancelled by oha ("aborted due to deadline"):
    // an artefact of stopping the run, not a failure of the path.
    let errors: f64 = v
        .pointer("/errorDistribution")
        .and_then(|m| m.as_object())
        .map(|m| {
            m.iter()
                .filter(|(k, _)| !k.contains("deadline"))
                .filter_map(|(_, c)| c.as_f64())
                .sum()
        })
        .unwrap_or(0.0);
    let non2xx: f64 = v
        .pointer("/statusCodeDistribution")
        .and_then(|m| m.as_object())
        .map(|m| {
            m.iter()
                .filter(|(k, _)| !k.starts_with('2'))
                .filter_map(|(_, c)| c.as_f64())
                .sum()
        })
        .unwrap_or(0.0);
    Ok(Load {
        rps: f("/summary/requestsPerSec")
            .ok_or_else(|| anyhow!("oha output lacks summary.requestsPerSec"))?,
        p50_ms: pct("p50")?,
        p90_ms: pct("p90")?,
        p99_ms: pct("p99")?,
        requests: ok,
        errors: errors + non2xx,
    })
}

/// CPU seconds (user + system) and VmRSS / VmHWM (KiB) of `pid`.
pub fn process_usage(pid: u32) -> Result<(f64, u64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after = stat
        .rsplit_once(')')
        .map(|(_, a)| a)
        .context("/proc/PID/stat")?;
    let f: Vec<&str> = after.split_whitespace().collect();
    // After the command: state is field 3; utime 14 and stime 15 (1-based in proc(5)).
    let ticks: u64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    Ok((ticks as f64 / hz, kib("VmRSS:"), kib("VmHWM:")))
}

/// `VmRSS` of a process in kB (`None` when it is gone).
pub fn rss_kb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// Pids of every process in a process group.
pub fn group_pids(pgid: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut pids = Vec::new();
    for e in dir.flatten() {
        let name = e.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // Fields after the parenthesised command: state(3) ppid(4) pgrp(5) ...
        let Some(rest) = stat.rfind(')').and_then(|i| stat.get(i + 2..)) else {
            continue;
        };
        if rest
            .split_whitespace()
            .nth(2)
            .and_then(|v| v.parse::<u32>().ok())
            == Some(pgid)
        {
            pids.push(pid);
        }
    }
    pids
}

/// CPU seconds (user+system) and RSS bytes of every process in a process group.
pub fn group_usage(pgid: u32) -> (f64, u64) {
    let tick = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64;
    let mut cpu = 0.0;
    let mut rss = 0u64;
    for pid in group_pids(pgid) {
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some(rest) = stat.rfind(')').and_then(|i| stat.get(i + 2..)) else {
            continue;
        };
        // utime(14) and stime(15) in proc(5), counted from the state field (3).
        let f: Vec<&str> = rest.split_whitespace().collect();
        if f.len() < 13 {
            continue;
        }
        let ut: f64 = f[11].parse().unwrap_or(0.0);
        let st: f64 = f[12].parse().unwrap_or(0.0);
        cpu += (ut + st) / tick;
        if let Some(kb) = rss_kb(pid) {
            rss += kb * 1024;
        }
    }
    (cpu, rss)
}

/// Context switches (voluntary + involuntary) of every thread of every process in the groups.
pub fn context_switches(groups: &[u32]) -> u64 {
    let mut n = 0;
    for pid in groups.iter().flat_map(|g| group_pids(*g)) {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            continue;
        };
        for t in tasks.flatten() {
            let Ok(status) = std::fs::read_to_string(t.path().join("status")) else {
                continue;
            };
            n += status
                .lines()
                .filter(|l| {
                    l.starts_with("voluntary_ctxt_switches:")
                        || l.starts_with("nonvoluntary_ctxt_switches:")
                })
                .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                .sum::<u64>();
        }
    }
    n
}

/// `perf stat` counting the system calls of the groups' processes (all their threads) until
/// [`SyscallCount::stop`]; `None` when perf cannot be started.
struct SyscallCount {
    child: std::process::Child,
    out: PathBuf,
}

impl SyscallCount {
    fn start(perf: &Path, groups: &[u32], out: PathBuf) -> Option<SyscallCount> {
        let pids: Vec<String> = groups
            .iter()
            .flat_map(|g| group_pids(*g))
            .map(|p| p.to_string())
            .collect();
        if pids.is_empty() {
            return None;
        }
        let _ = std::fs::remove_file(&out);
        let child = std::process::Command::new(perf)
            .args(["stat", "-x", ",", "-e", "raw_syscalls:sys_enter", "-o"])
            .arg(&out)
            .args(["-p", &pids.join(",")])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .ok()?;
        // perf attaches before it counts; give it a moment so the window is covered.
        std::thread::sleep(Duration::from_millis(300));
        Some(SyscallCount { child, out })
    }

    /// Stops perf (SIGINT, as a user would) and returns the count.
    fn stop(mut self) -> Option<f64> {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT);
        let _ = self.child.wait();
        parse_perf_count(
            &std::fs::read_to_string(&self.out).ok()?,
            "raw_syscalls:sys_enter",
        )
    }
}

/// The count of `event` in `perf stat -x ,` output (`value,unit,event,...`).
pub fn parse_perf_count(out: &str, event: &str) -> Option<f64> {
    out.lines().find_map(|l| {
        let f: Vec<&str> = l.split(',').collect();
        (f.len() >= 3 && f[2] == event).then(|| f[0].trim().parse::<f64>().ok())?
    })
}

struct Path4 {
    key: &'static str,
    name: &'static str,
    client: &'static str,
    url: &'static str,
    /// (pod, container) of the proxies measured.
    proxies: Vec<(&'static str, &'static str)>,
}

/// One run of one path.
#[derive(Debug, Clone, Default)]
pub struct Sample {
    pub fixed: Load,
    pub sat: Load,
    /// Per proxy: CPU µs, context switches and system calls per request of the fixed load.
    pub cpu_us: Option<f64>,
    pub switches: Option<f64>,
    pub syscalls: Option<f64>,
    /// Per proxy, bytes.
    pub rss_idle: Option<u64>,
    pub rss_load: Option<u64>,
}

/// The host of the TLS rows' certificate (self-signed; the load generator does not verify it,
/// as the peers' rows do not either).
const TLS_HOST: &str = "bench.example.com";

/// Writes nginx's and HAProxy's configurations and the TLS rows' certificate (`tls.crt`,
/// `tls.key`, and HAProxy's `tls.pem`); returns the configurations and (certificate, key).
fn write_configs(dir: &Path, args: &BenchArgs) -> Result<(PathBuf, PathBuf, (String, String))> {
    std::fs::create_dir_all(dir)?;
    let cert = rcgen::generate_simple_self_signed(vec![TLS_HOST.to_string()])?;
    let (crt, key) = (cert.cert.pem(), cert.key_pair.serialize_pem());
    std::fs::write(dir.join("tls.crt"), &crt)?;
    std::fs::write(dir.join("tls.key"), &key)?;
    std::fs::write(dir.join("tls.pem"), format!("{crt}{key}"))?;
    std::fs::create_dir_all(dir.join("nginx-tmp"))?;
    let t = dir.join("nginx-tmp");
    let nginx = dir.join("nginx.conf");
    std::fs::write(
        &nginx,
        format!(
            "worker_processes {w};\nuser root;\npid {d}/nginx.pid;\nerror_log stderr warn;\ndaemon off;\nevents {{ worker_connections 4096; }}\nhttp {{\n  access_log off;\n  client_body_temp_path {t}/body; proxy_temp_path {t}/proxy; fastcgi_temp_path {t}/fcgi; uwsgi_temp_path {t}/uwsgi; scgi_temp_path {t}/scgi;\n  upstream app {{ server 127.0.0.1:8080; keepalive 128; }}\n  server {{\n    listen 8081 reuseport;\n    location / {{ proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection \"\"; }}\n  }}\n  server {{\n    listen 8443 ssl reuseport;\n    ssl_certificate {d}/tls.crt; ssl_certificate_key {d}/tls.key;\n    location / {{ proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection \"\"; }}\n  }}\n}}\n",
            w = args.workers,
            d = dir.display(),
            t = t.display()
        ),
    )?;
    let haproxy = dir.join("haproxy.cfg");
    std::fs::write(
        &haproxy,
        format!(
            "global\n  nbthread {w}\n  maxconn 4000\ndefaults\n  mode http\n  timeout connect 5s\n  timeout client 60s\n  timeout server 60s\n  http-reuse always\nfrontend f\n  bind :8082\n  default_backend b\nfrontend ftls\n  bind :8444 ssl crt {d}/tls.pem\n  default_backend b\nbackend b\n  server app 127.0.0.1:8080\n",
            w = args.workers,
            d = dir.display()
        ),
    )?;
    Ok((nginx, haproxy, (crt, key)))
}

fn lab_yaml(args: &BenchArgs, nginx: &Path, haproxy: &Path) -> String {
    let app = format!(
        "[\"lab-app\", \"http\", \"--service\", \"server\", \"--body-bytes\", \"{}\", \"--threads\", \"{}\", \"--port\", \"8080\"]",
        args.body_bytes, args.workers
    );
    format!(
        r#"apiVersion: v1
kind: Namespace
metadata: {{name: mesh, labels: {{istio-injection: enabled}}}}
---
apiVersion: v1
kind: Service
metadata: {{name: direct}}
spec: {{selector: {{app: server-plain}}, ports: [{{name: http, port: 8080, targetPort: 8080}}]}}
---
apiVersion: v1
kind: Service
metadata: {{name: nginx}}
spec: {{selector: {{app: server-plain}}, ports: [{{name: http, port: 8081, targetPort: 8081}}]}}
---
apiVersion: v1
kind: Service
metadata: {{name: haproxy}}
spec: {{selector: {{app: server-plain}}, ports: [{{name: http, port: 8082, targetPort: 8082}}]}}
---
apiVersion: v1
kind: Service
metadata: {{name: nginx-tls}}
spec: {{selector: {{app: server-plain}}, ports: [{{name: https, port: 8443, targetPort: 8443}}]}}
---
apiVersion: v1
kind: Service
metadata: {{name: haproxy-tls}}
spec: {{selector: {{app: server-plain}}, ports: [{{name: https, port: 8444, targetPort: 8444}}]}}
---
apiVersion: v1
kind: Service
metadata: {{name: server, namespace: mesh}}
spec: {{selector: {{app: server-mesh}}, ports: [{{name: http, port: 8080, targetPort: 8080}}]}}
---
apiVersion: v1
kind: Pod
metadata: {{name: server-plain, labels: {{app: server-plain}}}}
spec:
  containers:
  - {{name: app, command: {app}, readinessProbe: {{tcpSocket: {{port: 8080}}}}}}
  - {{name: nginx, command: ["nginx", "-c", "{nginx}"], readinessProbe: {{tcpSocket: {{port: 8081}}}}}}
  - {{name: haproxy, command: ["haproxy", "-db", "-f", "{haproxy}"], readinessProbe: {{tcpSocket: {{port: 8082}}}}}}
---
apiVersion: v1
kind: Pod
metadata: {{name: client-plain, labels: {{app: client-plain}}}}
spec:
  containers:
  - {{name: idle, command: ["lab-app", "http", "--service", "client", "--port", "9999"]}}
---
apiVersion: v1
kind: Pod
metadata: {{name: server-mesh, namespace: mesh, labels: {{app: server-mesh}}}}
spec:
  containers:
  - {{name: app, command: {app}, readinessProbe: {{tcpSocket: {{port: 8080}}}}}}
---
apiVersion: v1
kind: Pod
metadata: {{name: client-mesh, namespace: mesh, labels: {{app: client-mesh}}}}
spec:
  containers:
  - {{name: idle, command: ["lab-app", "http", "--service", "client", "--port", "9999"]}}
"#,
        nginx = nginx.display(),
        haproxy = haproxy.display()
    )
}

fn oha(
    lab: &Lab,
    args: &BenchArgs,
    client: &str,
    url: &str,
    rate: Option<u32>,
    conns: u32,
    secs: u64,
) -> Result<Load> {
    let pod = lab.pod(client)?;
    let mut argv: Vec<String> = vec![
        "netns".into(),
        "exec".into(),
        pod.netns.name().into(),
        args.oha.display().to_string(),
        "--no-tui".into(),
        "--output-format".into(),
        "json".into(),
        "-z".into(),
        format!("{secs}s"),
        "-c".into(),
        conns.to_string(),
    ];
    if let Some(q) = rate {
        argv.extend(["-q".into(), q.to_string(), "--latency-correction".into()]);
    }
    if url.starts_with("https://") {
        // The rows' self-signed certificate: no row verifies it.
        argv.push("--insecure".into());
    }
    argv.push(url.into());
    let refs: Vec<&str> = argv.iter().map(String::as_str).collect();
    let out = crate::netns::run("ip", &refs)?;
    parse_oha(&out)
}

/// The ingress gateway as `manifests/gateway.yaml` ships it (its Secret mounted, as the lab's
/// gateway scenario does), serving a Gateway with an HTTP server and an HTTPS server (`SIMPLE`,
/// the rows' certificate) for every host, routed to the plain server; waits until both serve.
fn start_gateway(lab: &mut Lab, crt: &str, key: &str) -> Result<()> {
    const CREDENTIAL: &str = "bench-credential";
    lab.create_secret(
        crate::lab::GATEWAY_NAMESPACE,
        CREDENTIAL,
        &[("tls.crt", crt), ("tls.key", key)],
    )?;
    let rules = format!(
        "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {{name: bench-gateway}}\nspec:\n  selector: {{istio: ingressgateway}}\n  servers:\n  - port: {{number: 80, name: http, protocol: HTTP}}\n    hosts: ['*']\n  - port: {{number: 443, name: https, protocol: HTTPS}}\n    hosts: ['*']\n    tls: {{mode: SIMPLE, credentialName: {CREDENTIAL}}}\n---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: bench-gateway}}\nspec:\n  hosts: ['*']\n  gateways: [bench-gateway]\n  http:\n  - route: [{{destination: {{host: direct.plain.svc.cluster.local, port: {{number: 8080}}}}}}]\n"
    );
    lab.apply(&rules, "plain")?;
    lab.start_gateway_with_credentials(&[CREDENTIAL])?;
    let client = lab.pod("client-plain")?;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let r = lab.http(client, &crate::ingress::gateway_host(), 80, "/", &[]);
        if matches!(&r, Ok(r) if r.status == 200) {
            return Ok(());
        }
        if std::time::Instant::now() >= deadline {
            bail!("the gateway did not route to the server within 30 s: {r:?}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn proxy_groups(lab: &Lab, proxies: &[(&str, &str)]) -> Result<Vec<u32>> {
    proxies
        .iter()
        .map(|(pod, c)| {
            let p = lab.pod(pod)?;
            p.container(c)
                .map(|r| r.proc.pid())
                .ok_or_else(|| anyhow!("pod {pod} has no container {c}"))
        })
        .collect()
}

fn usage(groups: &[u32]) -> (f64, u64) {
    groups
        .iter()
        .map(|g| group_usage(*g))
        .fold((0.0, 0), |a, b| (a.0 + b.0, a.1 + b.1))
}

/// Runs the benchmark and returns the Markdown report.
pub fn run(opts: LabOptions, args: BenchArgs) -> Result<()> {
    let cancel = opts.cancel.clone();
    if crate::netns::run(&args.oha.display().to_string(), &["--version"]).is_err() {
        bail!(
            "{} not found: install it with `cargo install oha --locked`",
            args.oha.display()
        );
    }
    let mut lab = Lab::start(opts)?;
    lab.create_namespace("plain", &[])?;
    let dir = lab.dir().join("bench");
    let (nginx, haproxy, (crt, key)) = write_configs(&dir, &args)?;
    if let Err(e) = lab.apply(&lab_yaml(&args, &nginx, &haproxy), "plain") {
        bail!("{e:#}\n{}", lab.logs(20));
    }
    if let Err(e) = start_gateway(&mut lab, &crt, &key) {
        bail!("{e:#}\n{}", lab.logs(20));
    }
    let paths = vec![
        Path4 {
            key: "direct",
            name: "direct (no proxy)",
            client: "client-plain",
            url: "http://direct:8080/",
            proxies: vec![],
        },
        Path4 {
            key: "nginx",
            name: "nginx, one hop",
            client: "client-plain",
            url: "http://nginx:8081/",
            proxies: vec![("server-plain", "nginx")],
        },
        Path4 {
            key: "haproxy",
            name: "HAProxy, one hop",
            client: "client-plain",
            url: "http://haproxy:8082/",
            proxies: vec![("server-plain", "haproxy")],
        },
        Path4 {
            key: "inbound",
            name: "remora inbound, one hop",
            client: "client-plain",
            url: "http://server.mesh:8080/",
            proxies: vec![("server-mesh", "remora-proxy")],
        },
        Path4 {
            key: "nginx-tls",
            name: "nginx, TLS termination",
            client: "client-plain",
            url: "https://nginx-tls:8443/",
            proxies: vec![("server-plain", "nginx")],
        },
        Path4 {
            key: "haproxy-tls",
            name: "HAProxy, TLS termination",
            client: "client-plain",
            url: "https://haproxy-tls:8444/",
            proxies: vec![("server-plain", "haproxy")],
        },
        Path4 {
            key: "gateway",
            name: "remora gateway, HTTP",
            client: "client-plain",
            url: "http://istio-ingressgateway.istio-system/",
            proxies: vec![("istio-system/istio-ingressgateway", "istio-proxy")],
        },
        Path4 {
            key: "gateway-tls",
            name: "remora gateway, TLS termination",
            client: "client-plain",
            url: "https://istio-ingressgateway.istio-system/",
            proxies: vec![("istio-system/istio-ingressgateway", "istio-proxy")],
        },
        Path4 {
            key: "pair",
            name: "remora sidecar pair",
            client: "client-mesh",
            url: "http://server:8080/",
            proxies: vec![
                ("client-mesh", "remora-proxy"),
                ("server-mesh", "remora-proxy"),
            ],
        },
    ];
    let paths: Vec<Path4> = paths
        .into_iter()
        .filter(|p| {
            p.key == "direct" || args.paths.is_empty() || args.paths.iter().any(|k| k == p.key)
        })
        .collect();
    let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); paths.len()];
    let mut loads: Vec<(String, String)> = Vec::new();
    for run in 1..=args.runs {
        let before = loadavg();
        for (i, p) in paths.iter().enumerate() {
            if cancel.load(Ordering::Relaxed) {
                bail!("interrupted");
            }
            eprintln!("bench: run {run}/{}: {} ...", args.runs, p.name);
            let s =
                measure(&lab, &args, p, &dir).with_context(|| format!("run {run}, {}", p.name))?;
            samples[i].push(s);
        }
        loads.push((before, loadavg()));
    }
    let rows: Vec<(&str, &[Sample])> = paths
        .iter()
        .zip(&samples)
        .map(|(p, s)| (p.name, s.as_slice()))
        .collect();
    let report = render(&args, &rows, &loads);
    println!("{report}");
    if let Some(out) = &args.out {
        std::fs::write(out, &report).with_context(|| format!("writing {}", out.display()))?;
    }
    Ok(())
}

/// The machine's load average (1, 5, 15 minutes).
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

/// One run of one path: warm-up, the fixed-rate load (CPU, context switches and system calls
/// counted around it), then the saturation load; RSS idle before and peak during the loads.
fn measure(lab: &Lab, args: &BenchArgs, p: &Path4, dir: &Path) -> Result<Sample> {
    let groups = proxy_groups(lab, &p.proxies)?;
    // Warm-up (connections, pools), not measured.
    oha(
        lab,
        args,
        p.client,
        p.url,
        Some(args.rate),
        args.connections,
        2,
    )?;
    let (_, rss_idle) = usage(&groups);
    let peak = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (peak, stop, groups) = (peak.clone(), stop.clone(), groups.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let (_, rss) = usage(&groups);
                peak.fetch_max(rss, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(200));
            }
        })
    };
    let (cpu0, _) = usage(&groups);
    let cs0 = context_switches(&groups);
    let fixed = oha(
        lab,
        args,
        p.client,
        p.url,
        Some(args.rate),
        args.connections,
        args.duration,
    );
    let (cpu1, _) = usage(&groups);
    let cs1 = context_switches(&groups);
    let sat = oha(
        lab,
        args,
        p.client,
        p.url,
        None,
        args.saturation_connections,
        args.duration,
    );
    stop.store(true, Ordering::Relaxed);
    let _ = sampler.join();
    let (fixed, sat) = (fixed?, sat?);
    // System calls in a window of their own: the tracepoint perf counts with slows every system
    // call of the counted processes, so it must not overlap the latency and CPU windows.
    let syscalls = if groups.is_empty() {
        None
    } else {
        let secs = args.duration.clamp(1, 5);
        SyscallCount::start(&args.perf, &groups, dir.join("perf-stat.txt")).and_then(|c| {
            let load = oha(
                lab,
                args,
                p.client,
                p.url,
                Some(args.rate),
                args.connections,
                secs,
            );
            let n = c.stop();
            Some((n?, load.ok()?.requests))
        })
    };
    let n = groups.len() as f64;
    let per_req = |v: f64| (n > 0.0 && fixed.requests > 0.0).then(|| v / fixed.requests / n);
    Ok(Sample {
        cpu_us: per_req((cpu1 - cpu0) * 1e6),
        switches: per_req(cs1.saturating_sub(cs0) as f64),
        syscalls: syscalls
            .and_then(|(calls, reqs)| (reqs > 0.0).then(|| calls / reqs / groups.len() as f64)),
        rss_idle: (n > 0.0).then(|| rss_idle / groups.len() as u64),
        rss_load: (n > 0.0).then(|| peak.load(Ordering::Relaxed) / groups.len() as u64),
        fixed,
        sat,
    })
}

/// Median and (lowest, highest) of some values; `None` when there are none.
pub fn spread(mut v: Vec<f64>) -> Option<(f64, f64, f64)> {
    v.retain(|x| x.is_finite());
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let m = v.len() / 2;
    let median = if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    };
    Some((median, v[0], v[v.len() - 1]))
}

fn render(args: &BenchArgs, rows: &[(&str, &[Sample])], loads: &[(String, String)]) -> String {
    // Per run, the direct path's p99 and saturation: the added p99 and the ratio of each run
    // are against the same run's direct path.
    let direct: Vec<(f64, f64)> = rows
        .first()
        .map(|(_, s)| {
            s.iter()
                .map(|s| (s.fixed.p99_ms, s.sat.rps.max(1.0)))
                .collect()
        })
        .unwrap_or_default();
    let fmt = |v: Vec<f64>, prec: usize, sign: bool, with_spread: bool| match spread(v) {
        None => "–".to_string(),
        Some((m, lo, hi)) => {
            let f = |x: f64| {
                if sign {
                    format!("{x:+.prec$}")
                } else {
                    format!("{x:.prec$}")
                }
            };
            if with_spread && lo != hi {
                format!("{} ({}…{})", f(m), f(lo), f(hi))
            } else {
                f(m)
            }
        }
    };
    let mib = |v: Vec<Option<u64>>| {
        let v: Vec<f64> = v
            .into_iter()
            .flatten()
            .map(|b| b as f64 / 1048576.0)
            .collect();
        fmt(v, 1, false, false)
    };
    let body: Vec<Vec<String>> = rows
        .iter()
        .enumerate()
        .map(|(i, (name, s))| {
            let col = |f: &dyn Fn(&Sample) -> Option<f64>| -> Vec<f64> {
                s.iter().filter_map(f).collect()
            };
            let proxied = s.iter().any(|s| s.rss_idle.is_some());
            let by_run = |f: &dyn Fn(&Sample, (f64, f64)) -> f64| -> Vec<f64> {
                s.iter().zip(&direct).map(|(s, d)| f(s, *d)).collect()
            };
            vec![
                name.to_string(),
                fmt(col(&|s| Some(s.fixed.p50_ms)), 3, false, false),
                fmt(col(&|s| Some(s.fixed.p90_ms)), 3, false, false),
                fmt(col(&|s| Some(s.fixed.p99_ms)), 3, false, true),
                if proxied && i > 0 {
                    fmt(by_run(&|s, d| s.fixed.p99_ms - d.0), 3, true, true)
                } else {
                    "–".into()
                },
                fmt(col(&|s| Some(s.sat.rps)), 0, false, true),
                fmt(by_run(&|s, d| s.sat.rps / d.1), 2, false, false),
                fmt(col(&|s| s.cpu_us), 1, false, true),
                fmt(col(&|s| s.syscalls), 2, false, true),
                fmt(col(&|s| s.switches), 2, false, true),
                format!(
                    "{} / {}",
                    mib(s.iter().map(|s| s.rss_idle).collect()),
                    mib(s.iter().map(|s| s.rss_load).collect())
                ),
                // `+ 0.0` turns an empty sum (-0.0) into 0.
                format!(
                    "{:.0}",
                    s.iter().map(|s| s.fixed.errors + s.sat.errors).sum::<f64>() + 0.0
                ),
            ]
        })
        .collect();
    let mut out = format!(
        "Fixed load: {} req/s, {} connections, {} s, latency corrected for coordinated omission (oha \
         `--latency-correction`); saturation: {} connections, {} s; responses {} B; {} worker threads per \
         proxy. Client pod → server pod on the lab bridge. Each figure is the median of {} runs, with the \
         lowest and highest in brackets where they differ; the added p99 and the ratio to direct are per \
         run against the same run's direct path. CPU µs, system calls and context switches are per \
         request and per proxy (the pair's are the mean of its two proxies), counted over the fixed load; \
         RSS is per proxy process (group), idle before the loads / highest during them; errors are the \
         sum over all runs.\n\n",
        args.rate, args.connections, args.duration, args.saturation_connections, args.duration, args.body_bytes, args.workers, args.runs
    );
    out.push_str(&table::markdown(
        &[
            "path",
            "p50 ms",
            "p90 ms",
            "p99 ms",
            "added p99 ms",
            "saturation req/s",
            "vs direct",
            "CPU µs / req",
            "syscalls / req",
            "ctx switches / req",
            "RSS idle / load MiB",
            "errors",
        ],
        &body,
    ));
    out.push_str("\nLoad average (1, 5, 15 min) at the start → end of each run: ");
    out.push_str(
        &loads
            .iter()
            .enumerate()
            .map(|(i, (a, b))| format!("run {}: {a} → {b}", i + 1))
            .collect::<Vec<_>>()
            .join("; "),
    );
    out.push_str(".\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oha_json_summary_parses() {
        let j = r#"{"summary": {"successRate": 1.0, "requestsPerSec": 999.5},
            "latencyPercentiles": {"p50": 0.0002, "p90": 0.0003, "p99": 0.0011},
            "statusCodeDistribution": {"200": 29990, "503": 3},
            "errorDistribution": {"timeout": 2, "aborted due to deadline": 16}}"#;
        let l = parse_oha(j).unwrap();
        assert_eq!(l.rps, 999.5);
        assert!((l.p99_ms - 1.1).abs() < 1e-9);
        assert_eq!(l.requests, 29990.0);
        assert_eq!(l.errors, 5.0);
        assert!(parse_oha("{}").is_err());
    }

    #[test]
    fn median_and_spread() {
        assert_eq!(spread(vec![3.0, 1.0, 2.0]), Some((2.0, 1.0, 3.0)));
        assert_eq!(spread(vec![4.0, 1.0, 2.0, 3.0]), Some((2.5, 1.0, 4.0)));
        assert_eq!(spread(vec![f64::NAN]), None);
        assert_eq!(spread(vec![]), None);
    }

    #[test]
    fn perf_stat_csv_count_parses() {
        let out = "# started on Tue Dec  8 01:20:00 2026\n\n123456,,raw_syscalls:sys_enter,2001234,100.00,,\n";
        assert_eq!(
            parse_perf_count(out, "raw_syscalls:sys_enter"),
            Some(123456.0)
        );
        assert_eq!(
            parse_perf_count(
                "<not counted>,,raw_syscalls:sys_enter,0,0.00,,",
                "raw_syscalls:sys_enter"
            ),
            None
        );
        assert_eq!(parse_perf_count(out, "context-switches"), None);
    }

    #[test]
    fn context_switches_of_own_threads_grow() {
        let pgid = nix::unistd::getpgid(None).unwrap().as_raw() as u32;
        let a = context_switches(&[pgid]);
        for _ in 0..5 {
            std::thread::sleep(Duration::from_millis(2));
        }
        assert!(context_switches(&[pgid]) >= a + 5, "{a}");
    }

    #[test]
    fn own_process_group_is_measured() {
        let me = std::process::id();
        let pgid = nix::unistd::getpgid(None).unwrap().as_raw() as u32;
        let (cpu, rss) = group_usage(pgid);
        assert!(rss > 0 && cpu >= 0.0, "pid {me} pgid {pgid}");
        assert_eq!(group_usage(u32::MAX), (0.0, 0));
    }
}
