//! The report: the checks and figures of one soak from its requests, windows, samples and logs,
//! rendered as text and written as report.json, samples.csv and report.md.

use super::attribute::{attribute, drained_in_flight, Failure};
use super::load::{LoadResult, Outcome};
use super::logs::Logged;
use super::sample::{growth, series, Growth, Sample};
use super::schedule::{FaultKind, Window};
use super::{SoakConfig, ATTEMPTS, B1, B2, B3, CLIENT_TIMEOUT, PER_TRY_TIMEOUT, ROUTE_TIMEOUT};
use crate::table;
use anyhow::{Context, Result};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::Path;

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
    /// Workload certificates the client's proxy got from the mesh CA during its life (the first
    /// and every renewal of the short-lived certificates, across CA restarts).
    #[serde(default)]
    pub client_certificates: f64,
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

#[allow(clippy::too_many_arguments)]
pub(super) fn evaluate(
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
        FaultKind::CaRestart,
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
        client_certificates: 0.0,
        passed: problems.is_empty(),
        panics,
        problems,
    }
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
        "workload certificates issued to the client proxy (first + renewals)".into(),
        format!("{}", r.client_certificates),
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

pub(super) fn write_outputs(dir: &Path, r: &Report, samples: &[Sample]) -> Result<()> {
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
