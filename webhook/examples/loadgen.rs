//! Load generator for `scripts/bench webhook`: starts `remora-webhook serve` on 127.0.0.1 with a
//! fresh self-signed certificate, then measures, over TLS keep-alive connections,
//! 1. saturation: reviews/s with N connections sending back to back for D seconds;
//! 2. fixed rate: p50/p99 latency at R reviews/s (open loop: a request delayed by a slow earlier
//!    answer on its connection is timed from its scheduled send time, so a stall is not hidden).
//!
//! Every loop is bounded in time and count. Prints a Markdown table.
//!
//! ```sh
//! cargo run --release -p remora-webhook --example loadgen -- --server-bin target/release/remora-webhook
//! ```

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use clap::Parser;
use remora_webhook::client::{client_config, Client};
use serde_json::{json, Value};

#[derive(Parser)]
struct Args {
    /// The `remora-webhook` binary to start.
    #[arg(long, default_value = "target/release/remora-webhook")]
    server_bin: PathBuf,
    /// Connections for the saturation run.
    #[arg(long, default_value_t = 8)]
    connections: usize,
    /// Seconds of the saturation run.
    #[arg(long, default_value_t = 5)]
    saturation_seconds: u64,
    /// Target rate of the fixed-rate run (reviews/s).
    #[arg(long, default_value_t = 1000)]
    rate: u64,
    /// Seconds of the fixed-rate run.
    #[arg(long, default_value_t = 10)]
    rate_seconds: u64,
    /// Connections for the fixed-rate run.
    #[arg(long, default_value_t = 8)]
    rate_connections: usize,
}

/// A typical Deployment pod as the API server sends it (defaults filled in, owner, token volume).
fn typical_pod() -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "generateName": "productpage-v1-7d9f8c6b5-",
            "namespace": "bookinfo",
            "labels": {"app": "productpage", "version": "v1", "pod-template-hash": "7d9f8c6b5"},
            "annotations": {"kubectl.kubernetes.io/restartedAt": "2026-11-21T10:00:00Z"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "productpage-v1-7d9f8c6b5",
                                 "uid": "5b0c8f0e-8a43-4d8e-9a1c-2b7a3d1f6e11", "controller": true, "blockOwnerDeletion": true}]
        },
        "spec": {
            "serviceAccountName": "bookinfo-productpage", "serviceAccount": "bookinfo-productpage",
            "containers": [{
                "name": "productpage", "image": "docker.io/istio/examples-bookinfo-productpage-v1:1.20.2",
                "imagePullPolicy": "IfNotPresent",
                "ports": [{"containerPort": 9080, "name": "http", "protocol": "TCP"}],
                "readinessProbe": {"httpGet": {"path": "/health", "port": "http", "scheme": "HTTP"}, "periodSeconds": 5,
                                   "timeoutSeconds": 1, "successThreshold": 1, "failureThreshold": 3},
                "livenessProbe": {"tcpSocket": {"port": 9080}, "periodSeconds": 10, "timeoutSeconds": 1,
                                  "successThreshold": 1, "failureThreshold": 3},
                "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}},
                "env": [{"name": "LOG_LEVEL", "value": "info"}],
                "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"},
                                 {"name": "kube-api-access-x7k2p", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount", "readOnly": true}],
                "terminationMessagePath": "/dev/termination-log", "terminationMessagePolicy": "File",
                "securityContext": {"runAsUser": 1000}
            }],
            "volumes": [
                {"name": "tmp", "emptyDir": {}},
                {"name": "kube-api-access-x7k2p", "projected": {"defaultMode": 420, "sources": [
                    {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                    {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                    {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}}
                ]}}
            ],
            "restartPolicy": "Always", "terminationGracePeriodSeconds": 30, "dnsPolicy": "ClusterFirst",
            "schedulerName": "default-scheduler", "enableServiceLinks": true, "preemptionPolicy": "PreemptLowerPriority",
            "priority": 0,
            "tolerations": [
                {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300},
                {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}
            ]
        }
    })
}

/// Bodies with distinct uids (built ahead so the generator does no JSON work while measuring).
fn bodies(n: usize) -> Vec<Bytes> {
    let pod = typical_pod();
    (0..n)
        .map(|i| {
            let r = remora_webhook::review::review_for(&pod, &format!("bench-{i}"), "bookinfo");
            Bytes::from(serde_json::to_vec(&r).unwrap_or_default())
        })
        .collect()
}

struct Server {
    child: Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
    cert_pem: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

async fn start_server(bin: &PathBuf) -> anyhow::Result<Server> {
    if !bin.exists() {
        bail!(
            "--server-bin {}: no such file (build it first)",
            bin.display()
        );
    }
    let dir = tempfile::tempdir()?;
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()])?;
    let cert_pem = ck.cert.pem();
    std::fs::write(dir.path().join("tls.crt"), &cert_pem)?;
    std::fs::write(dir.path().join("tls.key"), ck.key_pair.serialize_pem())?;
    let port = free_port()?;
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
    let child = Command::new(bin)
        .args(["serve", "--ca-addr", "off", "--listen", &addr.to_string()])
        .arg("--tls-cert")
        .arg(dir.path().join("tls.crt"))
        .arg("--tls-key")
        .arg(dir.path().join("tls.key"))
        .arg("--config")
        .arg(dir.path().join("no-config.yaml"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let server = Server {
        child,
        addr,
        _dir: dir,
        cert_pem,
    };
    let cfg = client_config(&[server.cert_pem.as_bytes()])?;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Ok(mut c) = Client::connect(addr, "localhost", cfg.clone()).await {
            if let Ok((200, _)) = c.get("/readyz").await {
                return Ok(server);
            }
        }
        if Instant::now() > deadline {
            bail!("the webhook did not become ready on {addr} within 15 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.3}", d.as_secs_f64() * 1000.0)
}

#[derive(Default)]
struct Run {
    latencies: Vec<Duration>,
    errors: usize,
    elapsed: Duration,
}

async fn saturation(
    addr: SocketAddr,
    cfg: Arc<rustls::ClientConfig>,
    bodies: Arc<Vec<Bytes>>,
    conns: usize,
    secs: u64,
) -> anyhow::Result<Run> {
    let start = Instant::now();
    let end = start + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for c in 0..conns {
        let mut client = Client::connect(addr, "localhost", cfg.clone()).await?;
        let bodies = bodies.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut errors = 0usize;
            let mut i = c;
            // Bounded by time and by the number of prepared bodies cycled at most 1000 times.
            while Instant::now() < end && lat.len() < 10_000_000 {
                let t = Instant::now();
                match client
                    .post("/inject", bodies[i % bodies.len()].clone())
                    .await
                {
                    Ok((200, _)) => lat.push(t.elapsed()),
                    _ => errors += 1,
                }
                i += conns;
            }
            (lat, errors)
        }));
    }
    let mut run = Run::default();
    for t in tasks {
        let (lat, errors) = t.await?;
        run.latencies.extend(lat);
        run.errors += errors;
    }
    run.elapsed = start.elapsed();
    Ok(run)
}

async fn fixed_rate(
    addr: SocketAddr,
    cfg: Arc<rustls::ClientConfig>,
    bodies: Arc<Vec<Bytes>>,
    conns: usize,
    rate: u64,
    secs: u64,
) -> anyhow::Result<Run> {
    let total = (rate * secs) as usize;
    let interval = Duration::from_secs_f64(1.0 / rate as f64);
    let start = Instant::now() + Duration::from_millis(100);
    let mut tasks = Vec::new();
    for c in 0..conns {
        let mut client = Client::connect(addr, "localhost", cfg.clone()).await?;
        let bodies = bodies.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut errors = 0usize;
            // Connection c sends requests c, c+conns, c+2*conns, ... at their scheduled times.
            let mut i = c;
            let mut prev_done = start;
            while i < total {
                let scheduled = start + interval * i as u32;
                tokio::time::sleep_until(scheduled.into()).await;
                // Backlog (the previous answer came after this request's slot) counts from the
                // slot; otherwise from the actual send, so the timer's 1 ms granularity is not
                // charged to the server.
                let from = if prev_done > scheduled {
                    scheduled
                } else {
                    Instant::now()
                };
                match client
                    .post("/inject", bodies[i % bodies.len()].clone())
                    .await
                {
                    Ok((200, _)) => lat.push(from.elapsed()),
                    _ => errors += 1,
                }
                prev_done = Instant::now();
                i += conns;
            }
            (lat, errors)
        }));
    }
    let mut run = Run::default();
    for t in tasks {
        let (lat, errors) = t.await?;
        run.latencies.extend(lat);
        run.errors += errors;
    }
    run.elapsed = start.elapsed();
    Ok(run)
}

async fn main_async(args: Args) -> anyhow::Result<()> {
    remora_webhook::tls::install_provider();
    let server = start_server(&args.server_bin).await?;
    let cfg = client_config(&[server.cert_pem.as_bytes()])?;
    let bodies = Arc::new(bodies(1000));

    // Sanity: the answer is an injection with a patch.
    let mut c = Client::connect(server.addr, "localhost", cfg.clone()).await?;
    let (status, body) = c.post("/inject", bodies[0].clone()).await?;
    let v: Value = serde_json::from_slice(&body).context("answer is not JSON")?;
    if status != 200 || v.pointer("/response/patch").is_none() {
        bail!("unexpected answer ({status}): {v}");
    }
    let req_bytes = bodies[0].len();
    let resp_bytes = body.len();

    // Warm-up (bounded): 1 s at saturation.
    saturation(
        server.addr,
        cfg.clone(),
        bodies.clone(),
        args.connections,
        1,
    )
    .await?;

    let mut sat = saturation(
        server.addr,
        cfg.clone(),
        bodies.clone(),
        args.connections,
        args.saturation_seconds,
    )
    .await?;
    sat.latencies.sort();
    let sat_rate = sat.latencies.len() as f64 / sat.elapsed.as_secs_f64();

    let mut fixed = fixed_rate(
        server.addr,
        cfg.clone(),
        bodies.clone(),
        args.rate_connections,
        args.rate,
        args.rate_seconds,
    )
    .await?;
    fixed.latencies.sort();
    let achieved = fixed.latencies.len() as f64 / fixed.elapsed.as_secs_f64();
    let p99 = percentile(&fixed.latencies, 0.99);

    println!("### remora-webhook admission reviews (TLS 1.3 keep-alive, typical Deployment pod: request {req_bytes} B, response {resp_bytes} B)");
    println!();
    println!(
        "| run | connections | reviews | errors | reviews/s | p50 ms | p99 ms | max ms | target |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    println!(
        "| saturation {}s | {} | {} | {} | {:.0} | {} | {} | {} | ≥ 5000 reviews/s: {} |",
        args.saturation_seconds,
        args.connections,
        sat.latencies.len(),
        sat.errors,
        sat_rate,
        ms(percentile(&sat.latencies, 0.5)),
        ms(percentile(&sat.latencies, 0.99)),
        ms(sat.latencies.last().copied().unwrap_or_default()),
        if sat_rate >= 5000.0 { "met" } else { "MISSED" }
    );
    println!(
        "| fixed {}/s for {}s | {} | {} | {} | {:.0} | {} | {} | {} | p99 ≤ 2 ms: {} |",
        args.rate,
        args.rate_seconds,
        args.rate_connections,
        fixed.latencies.len(),
        fixed.errors,
        achieved,
        ms(percentile(&fixed.latencies, 0.5)),
        ms(p99),
        ms(fixed.latencies.last().copied().unwrap_or_default()),
        if p99 <= Duration::from_millis(2) {
            "met"
        } else {
            "MISSED"
        }
    );
    println!();
    println!("Fixed-rate latency counts from the scheduled send time when a connection was backlogged (open loop), else from the actual send (tokio timers have 1 ms granularity). Server: `{}`, {} CPUs on this machine (shared with the load generator).",
        args.server_bin.display(),
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1));
    if sat.errors + fixed.errors > 0 {
        bail!("{} requests failed", sat.errors + fixed.errors);
    }
    Ok(())
}

fn main() {
    let args = Args::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("loadgen: {e}");
            std::process::exit(2);
        }
    };
    if let Err(e) = rt.block_on(main_async(args)) {
        eprintln!("loadgen: {e:#}");
        std::process::exit(1);
    }
}
