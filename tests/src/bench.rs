//! The data-plane benchmark in the lab (`remora-lab bench`, run by `scripts/bench lab`): the same
//! fixed-rate and saturation loads (oha) from a client pod to a server pod, direct, through nginx
//! and HAProxy (one reverse-proxy hop in the server pod, plain and terminating TLS), through one
//! remora inbound hop, through the remora ingress gateway (`manifests/gateway.yaml`, plain and
//! terminating TLS) to the plain server, and through the remora sidecar pair. Prints a Markdown
//! table.

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
}

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

/// CPU seconds (user+system) and RSS bytes of every process in a process group.
pub fn group_usage(pgid: u32) -> (f64, u64) {
    let tick = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64;
    let mut cpu = 0.0;
    let mut rss = 0u64;
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return (0.0, 0);
    };
    for e in dir.flatten() {
        let name = e.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // Fields after the parenthesised command: state(3) ppid(4) pgrp(5) ... utime(14) stime(15).
        let Some(rest) = stat.rfind(')').map(|i| &stat[i + 2..]) else {
            continue;
        };
        let f: Vec<&str> = rest.split_whitespace().collect();
        if f.len() < 13 || f[2].parse::<u32>().ok() != Some(pgid) {
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

struct Path4 {
    name: &'static str,
    client: &'static str,
    url: &'static str,
    /// (pod, container) of the proxies measured.
    proxies: Vec<(&'static str, &'static str)>,
}

struct Row {
    name: &'static str,
    fixed: Load,
    sat: Load,
    cpu_per_k: Option<f64>,
    rss_idle: Option<u64>,
    rss_load: Option<u64>,
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
            name: "direct (no proxy)",
            client: "client-plain",
            url: "http://direct:8080/",
            proxies: vec![],
        },
        Path4 {
            name: "nginx, one hop",
            client: "client-plain",
            url: "http://nginx:8081/",
            proxies: vec![("server-plain", "nginx")],
        },
        Path4 {
            name: "HAProxy, one hop",
            client: "client-plain",
            url: "http://haproxy:8082/",
            proxies: vec![("server-plain", "haproxy")],
        },
        Path4 {
            name: "remora inbound, one hop",
            client: "client-plain",
            url: "http://server.mesh:8080/",
            proxies: vec![("server-mesh", "remora-proxy")],
        },
        Path4 {
            name: "nginx, TLS termination",
            client: "client-plain",
            url: "https://nginx-tls:8443/",
            proxies: vec![("server-plain", "nginx")],
        },
        Path4 {
            name: "HAProxy, TLS termination",
            client: "client-plain",
            url: "https://haproxy-tls:8444/",
            proxies: vec![("server-plain", "haproxy")],
        },
        Path4 {
            name: "remora gateway, HTTP",
            client: "client-plain",
            url: "http://istio-ingressgateway.istio-system/",
            proxies: vec![("istio-system/istio-ingressgateway", "istio-proxy")],
        },
        Path4 {
            name: "remora gateway, TLS termination",
            client: "client-plain",
            url: "https://istio-ingressgateway.istio-system/",
            proxies: vec![("istio-system/istio-ingressgateway", "istio-proxy")],
        },
        Path4 {
            name: "remora sidecar pair",
            client: "client-mesh",
            url: "http://server:8080/",
            proxies: vec![
                ("client-mesh", "remora-proxy"),
                ("server-mesh", "remora-proxy"),
            ],
        },
    ];
    let mut rows: Vec<Row> = Vec::new();
    for p in &paths {
        if cancel.load(Ordering::Relaxed) {
            bail!("interrupted");
        }
        eprintln!("bench: {} ...", p.name);
        let groups = proxy_groups(&lab, &p.proxies)?;
        // Warm-up (connections, pools), not measured.
        oha(
            &lab,
            &args,
            p.client,
            p.url,
            Some(args.rate),
            args.connections,
            2,
        )?;
        let (_, rss_idle) = usage(&groups);
        let (cpu0, _) = usage(&groups);
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
        let fixed = oha(
            &lab,
            &args,
            p.client,
            p.url,
            Some(args.rate),
            args.connections,
            args.duration,
        );
        let (cpu1, _) = usage(&groups);
        let sat = oha(
            &lab,
            &args,
            p.client,
            p.url,
            None,
            args.saturation_connections,
            args.duration,
        );
        stop.store(true, Ordering::Relaxed);
        let _ = sampler.join();
        let (fixed, sat) = (fixed?, sat?);
        let n = groups.len();
        rows.push(Row {
            name: p.name,
            cpu_per_k: (n > 0 && fixed.requests > 0.0)
                .then(|| (cpu1 - cpu0) / fixed.requests * 1000.0 / n as f64),
            rss_idle: (n > 0).then(|| rss_idle / n as u64),
            rss_load: (n > 0).then(|| peak.load(Ordering::Relaxed) / n as u64),
            fixed,
            sat,
        });
    }
    let report = render(&args, &rows);
    println!("{report}");
    if let Some(out) = &args.out {
        std::fs::write(out, &report).with_context(|| format!("writing {}", out.display()))?;
    }
    Ok(())
}

fn render(args: &BenchArgs, rows: &[Row]) -> String {
    let direct = rows
        .first()
        .map(|r| (r.fixed.p99_ms, r.sat.rps))
        .unwrap_or((0.0, 1.0));
    let mib = |b: Option<u64>| {
        b.map(|b| format!("{:.1}", b as f64 / 1048576.0))
            .unwrap_or_else(|| "–".into())
    };
    let body: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.name.to_string(),
                format!("{:.3}", r.fixed.p50_ms),
                format!("{:.3}", r.fixed.p90_ms),
                format!("{:.3}", r.fixed.p99_ms),
                if r.rss_idle.is_some() {
                    format!("{:+.3}", r.fixed.p99_ms - direct.0)
                } else {
                    "–".into()
                },
                format!("{:.0}", r.sat.rps),
                format!("{:.2}", r.sat.rps / direct.1.max(1.0)),
                r.cpu_per_k
                    .map(|c| format!("{c:.4}"))
                    .unwrap_or_else(|| "–".into()),
                mib(r.rss_idle),
                mib(r.rss_load),
                // `+ 0.0` turns an empty sum (-0.0) into 0.
                format!("{:.0}", r.fixed.errors + r.sat.errors + 0.0),
            ]
        })
        .collect();
    let mut out = format!(
        "Fixed load: {} req/s, {} connections, {} s, latency corrected for coordinated omission (oha \
         `--latency-correction`); saturation: {} connections, {} s; responses {} B; {} worker threads per \
         proxy. Client pod → server pod on the lab bridge. CPU and RSS are per proxy process (group).\n\n",
        args.rate, args.connections, args.duration, args.saturation_connections, args.duration, args.body_bytes, args.workers
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
            "CPU-s / 1k req",
            "RSS idle MiB",
            "RSS load MiB",
            "errors",
        ],
        &body,
    ));
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
    fn own_process_group_is_measured() {
        let me = std::process::id();
        let pgid = nix::unistd::getpgid(None).unwrap().as_raw() as u32;
        let (cpu, rss) = group_usage(pgid);
        assert!(rss > 0 && cpu >= 0.0, "pid {me} pgid {pgid}");
        assert_eq!(group_usage(u32::MAX), (0.0, 0));
    }
}
