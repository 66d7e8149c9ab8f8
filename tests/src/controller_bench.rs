//! The rules controller at scale (`remora-lab bench-controller`, run by `scripts/bench
//! controller`): the real `remora-webhook serve --rules-controller on` (its own process, so its
//! CPU and memory are its own) against the lab's API stand-in on 127.0.0.1 holding `N`
//! meshed namespaces × `M` Istio objects each (half DestinationRules, half VirtualServices, all
//! `exportTo: ["."]`), plus 5 DestinationRules of namespace `shared` exported to every
//! namespace and a mesh-wide PeerAuthentication. Measured: the time until every namespace's
//! ConfigMap is written after start, the time from one object change to its ConfigMap write
//! (one namespace's object; then a mesh-wide one, until all `N` ConfigMaps are rewritten), the
//! controller's CPU seconds and its memory (VmRSS, VmHWM). Every wait is bounded.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::labapi::LabApi;

/// What to build.
#[derive(Clone, Debug, clap::Args)]
pub struct Args {
    /// Meshed namespaces.
    #[arg(long, default_value_t = 1000)]
    pub namespaces: usize,
    /// Istio objects per namespace.
    #[arg(long, default_value_t = 10)]
    pub objects: usize,
    /// Single-namespace changes timed (the median is reported).
    #[arg(long, default_value_t = 7)]
    pub changes: usize,
}

const NET: &str = "networking.istio.io/v1";
const BOUND: Duration = Duration::from_secs(300);

fn ns_name(i: usize) -> String {
    format!("team-{i:04}")
}

fn dr(ns: &str, name: &str, host: &str, marker: &str, export: Value) -> Value {
    json!({"apiVersion": NET, "kind": "DestinationRule",
           "metadata": {"name": name, "namespace": ns, "labels": {"bench": marker}},
           "spec": {"host": host, "exportTo": export,
                    "subsets": [{"name": "v1", "labels": {"version": "v1"}},
                                {"name": marker, "labels": {"version": marker}}]}})
}

fn vs(ns: &str, name: &str, host: &str) -> Value {
    json!({"apiVersion": NET, "kind": "VirtualService",
           "metadata": {"name": name, "namespace": ns},
           "spec": {"hosts": [host], "exportTo": ["."],
                    "http": [{"match": [{"uri": {"prefix": "/v2"}}],
                              "route": [{"destination": {"host": host, "subset": "v1"}}],
                              "timeout": "3s", "retries": {"attempts": 2}},
                             {"route": [{"destination": {"host": host}}]}]}})
}

fn wait_until(what: &str, f: impl Fn() -> bool) -> Result<Duration> {
    let start = Instant::now();
    while !f() {
        if start.elapsed() > BOUND {
            bail!("bench-controller: timed out after {BOUND:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(start.elapsed())
}

fn cm_text(api: &LabApi, ns: &str, key: &str) -> Option<String> {
    api.object("configmaps", ns, "remora-mesh-rules")
        .and_then(|cm| cm["data"][key].as_str().map(str::to_string))
}

/// Run the benchmark; prints a Markdown table.
pub fn run(bin_dir: &Path, args: Args) -> Result<()> {
    let bin = bin_dir.join("remora-webhook");
    if !bin.exists() {
        bail!("{} is missing: build it first", bin.display());
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let dir = tempfile::tempdir()?;
    let api = {
        let _in = rt.enter();
        LabApi::start_local(&dir.path().join("ns"))?
    };
    let none = BTreeMap::new();
    let meshed: BTreeMap<String, String> =
        [("istio-injection".to_string(), "enabled".to_string())].into();
    for ns in ["default", "remora-system", "istio-system", "shared"] {
        api.set_namespace(ns, &none);
    }
    let started = Instant::now();
    for i in 0..args.namespaces {
        let ns = ns_name(i);
        api.set_namespace(&ns, &meshed);
        for j in 0..args.objects {
            let host = format!("svc-{j}");
            if j % 2 == 0 {
                api.apply(
                    NET,
                    "destinationrules",
                    dr(&ns, &host, &host, "v0", json!(["."])),
                );
            } else {
                api.apply(NET, "virtualservices", vs(&ns, &host, &host));
            }
        }
    }
    for j in 0..5 {
        let host = format!("shared-{j}.shared.svc.cluster.local");
        api.apply(
            NET,
            "destinationrules",
            dr("shared", &format!("shared-{j}"), &host, "v0", json!(["*"])),
        );
    }
    api.apply(
        "security.istio.io/v1",
        "peerauthentications",
        json!({"apiVersion": "security.istio.io/v1", "kind": "PeerAuthentication",
               "metadata": {"name": "default", "namespace": "remora-system"},
               "spec": {"mtls": {"mode": "PERMISSIVE"}}}),
    );
    eprintln!(
        "bench-controller: {} namespaces × {} objects in the API ({} ms)",
        args.namespaces,
        args.objects,
        started.elapsed().as_millis()
    );

    let issued = crate::admission::issue_serving_cert("bench CA")?;
    let (crt, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    std::fs::write(&crt, &issued.cert_pem)?;
    std::fs::write(&key, &issued.key_pem)?;
    let listen = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let log = std::fs::File::create(dir.path().join("webhook.log"))?;
    let mut child = std::process::Command::new(&bin)
        .args(["serve", "--ca-addr", "off", "--rules-controller", "on"])
        .args(["--rules-identity", "bench", "--kube-url", &api.url()])
        .args([
            "--config",
            &dir.path().join("absent.yaml").display().to_string(),
        ])
        .arg("--listen")
        .arg(listen.to_string())
        .arg("--tls-cert")
        .arg(&crt)
        .arg("--tls-key")
        .arg(&key)
        .env_remove("KUBECONFIG")
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .spawn()
        .context("starting remora-webhook")?;
    let pid = child.id();
    let result = (|| -> Result<()> {
        let t0 = Instant::now();
        let n = args.namespaces;
        let sync = wait_until("every namespace's ConfigMap", || {
            api.objects("configmaps").len() >= n
        })?;
        let (cpu_sync, rss_sync, hwm_sync) = crate::bench::process_usage(pid)?;
        let bytes: usize = api
            .objects("configmaps")
            .iter()
            .map(|cm| cm["data"].to_string().len())
            .sum();
        // Single-namespace changes.
        let mut one = Vec::new();
        for k in 0..args.changes {
            let ns = ns_name((k * 37 + 11) % n);
            let marker = format!("c{k}");
            api.apply(
                NET,
                "destinationrules",
                dr(&ns, "svc-0", "svc-0", &marker, json!(["."])),
            );
            let key = format!("{ns}.destinationrule.svc-0.yaml");
            let took = wait_until("a one-namespace change", || {
                cm_text(&api, &ns, &key).is_some_and(|t| t.contains(&format!("name: {marker}")))
            })?;
            one.push(took);
        }
        one.sort();
        // A change every namespace sees.
        let t = Instant::now();
        api.apply(
            NET,
            "destinationrules",
            dr(
                "shared",
                "shared-0",
                "shared-0.shared.svc.cluster.local",
                "wide",
                json!(["*"]),
            ),
        );
        let first = wait_until("the first namespace of a mesh-wide change", || {
            cm_text(&api, &ns_name(0), "shared.destinationrule.shared-0.yaml")
                .is_some_and(|t| t.contains("name: wide"))
        })?;
        wait_until("every namespace of a mesh-wide change", || {
            (0..n).all(|i| {
                cm_text(&api, &ns_name(i), "shared.destinationrule.shared-0.yaml")
                    .is_some_and(|t| t.contains("name: wide"))
            })
        })?;
        let all = t.elapsed();
        let (cpu_end, rss_end, hwm_end) = crate::bench::process_usage(pid)?;
        // Idle: nothing changes for 10 s (resyncs only).
        std::thread::sleep(Duration::from_secs(10));
        let (cpu_idle, _, _) = crate::bench::process_usage(pid)?;
        let ms = |d: Duration| format!("{:.0}", d.as_secs_f64() * 1000.0);
        println!(
            "| namespaces × objects | first full write | one-namespace change → write (median of {}, max) | mesh-wide change → first / all {n} written | controller CPU-s: start-up / changes / 10 s idle | RSS after start-up / at end (HWM) |",
            one.len()
        );
        println!("|---|---|---|---|---|---|");
        println!(
            "| {n} × {} ({} ConfigMaps, {:.1} MiB of data) | {} ms | {} ms, {} ms | {} ms / {} ms | {:.2} / {:.2} / {:.2} | {:.1} MiB / {:.1} MiB ({:.1} MiB) |",
            args.objects,
            api.objects("configmaps").len(),
            bytes as f64 / 1048576.0,
            ms(sync),
            ms(one[one.len() / 2]),
            ms(*one.last().unwrap_or(&Duration::ZERO)),
            ms(first),
            ms(all),
            cpu_sync,
            cpu_end - cpu_sync,
            cpu_idle - cpu_end,
            rss_sync as f64 / 1024.0,
            rss_end as f64 / 1024.0,
            hwm_end.max(hwm_sync) as f64 / 1024.0,
        );
        eprintln!("bench-controller: done in {} s", t0.elapsed().as_secs());
        Ok(())
    })();
    let _ = child.kill();
    let _ = child.wait();
    if result.is_err() {
        let log = std::fs::read_to_string(dir.path().join("webhook.log")).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(20).collect();
        eprintln!("--- remora-webhook log (last lines):");
        for l in tail.iter().rev() {
            eprintln!("{l}");
        }
    }
    result
}
