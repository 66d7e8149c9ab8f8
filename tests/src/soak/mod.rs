//! The fault-injecting soak: a steady fixed-rate load through the sidecars of a meshed lab while
//! a scheduler reloads the rules (valid sets with a weight change and an invalid set), makes a
//! backend hang and then answer 503 bursts, kills and restarts a backend pod, sends one backend's
//! proxy SIGTERM (graceful drain) and restarts it, and rotates the webhook's certificate. Every
//! failed request is mapped to the fault window it fell in and to the policy that explains it;
//! RSS and open file descriptors of every proxy are sampled; all logs are searched for panics.
//! `remora-lab soak` and `tests/tests/soak.rs` run it; see docs/reliability.md.
//!
//! This module holds the configuration and [`run`], which drives the schedule; each job has its
//! own module: `fixture` (what is deployed), `schedule` (what happens when), `load` (the
//! requests), `faults` and `certs` (the faults injected), `sample` (RSS and fds), `logs` (access
//! log, panics), `attribute` (what explains a failure), `report` (checks, summary, files).

mod attribute;
mod certs;
mod faults;
mod fixture;
mod load;
mod logs;
mod report;
mod sample;
mod schedule;

pub use attribute::{attribute, drained_in_flight, Failure};
pub use fixture::rule_sets;
pub use load::{Outcome, Request};
pub use logs::{access_log, panics_in, Logged};
pub use report::{render, Report};
pub use sample::{growth, proc_usage, series, Growth, Sample};
pub use schedule::{schedule, FaultKind, Step, Window};

use crate::lab::{Lab, LabOptions};
use anyhow::{anyhow, bail, Result};
use certs::Rotator;
use faults::{control, drain_proxy, kill_pod, metric_sum, reload_invalid};
use fixture::lab_yaml;
use load::spawn_load;
use report::{evaluate, write_outputs};
use sample::{proxy_pids, spawn_sampler, Watched};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
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
/// How long the control plane stays down in a CA restart.
const CA_DOWN: Duration = Duration::from_secs(2);
/// The workload certificates' lifetime in the soak (`--ca-max-cert-ttl`, unless the lab
/// options set one): proxies renew at half the validity ahead, so every proxy renews within
/// about a minute, and again and again in a long soak, across the CA restarts.
const CERT_TTL: Duration = Duration::from_secs(60);

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

/// Runs the soak in a fresh lab and writes `report.json`, `samples.csv` and `report.md` into
/// `cfg.out_dir`. The report says whether it passed; `Err` only when the soak could not run.
pub fn run(mut opts: LabOptions, cfg: SoakConfig) -> Result<Report> {
    cfg.validate()?;
    if opts.ca_max_cert_ttl.is_none() {
        opts.ca_max_cert_ttl = Some(format!("{}s", CERT_TTL.as_secs()));
    }
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
            Step::CaRestart => (
                FaultKind::CaRestart,
                "control plane".into(),
                lab.restart_control_plane(CA_DOWN).map(|d| {
                    format!("webhook and mesh CA stopped, down {CA_DOWN:?}, serving again after {:.1} s", d.as_secs_f64())
                }),
            ),
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
    let certificates = crate::client::sum(
        &lab.metrics(lab.pod("client")?)?,
        "remora_workload_cert_requests_total",
        &[("result", "issued")],
    );

    // Let the access log reach the file, then read it.
    std::thread::sleep(Duration::from_millis(300));
    let client_log = lab
        .pod("client")?
        .container("remora-proxy")
        .map(|c| c.proc.log.clone())
        .ok_or_else(|| anyhow!("the client pod has no remora-proxy"))?;
    let logged = access_log(&String::from_utf8_lossy(&std::fs::read(&client_log)?));
    let panics = panics_in(lab.dir());

    let mut report = evaluate(
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
    // The client's proxy lives through the whole soak: its certificate (issued before the
    // load) must have been renewed at least once, whatever the CA restarts did.
    report.client_certificates = certificates;
    if cfg.duration >= CERT_TTL && certificates < 2.0 {
        report.problems.push(format!(
            "the client's proxy got {certificates} workload certificate(s): no renewal of its {}-second certificate in {} s",
            CERT_TTL.as_secs(),
            cfg.duration.as_secs()
        ));
        report.passed = false;
    }
    write_outputs(&cfg.out_dir, &report, &samples)?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The standard configuration of `secs`, writing nowhere.
    pub(super) fn cfg(secs: u64) -> SoakConfig {
        SoakConfig {
            out_dir: PathBuf::from("/nonexistent"),
            ..SoakConfig::standard(secs)
        }
    }

    #[test]
    fn config_is_validated() {
        assert!(cfg(30).validate().is_err());
        let mut bad = cfg(60);
        bad.rate = 0;
        assert!(bad.validate().unwrap_err().to_string().contains("rate 0"));
    }
}
