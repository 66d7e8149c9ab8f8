//! Resource sampling: RSS and open fds of every proxy and the webhook over time, and how much
//! each process grew after its warm-up.

use crate::lab::Lab;
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Allowed growth of RSS and open fds after warm-up.
const MAX_GROWTH: f64 = 0.10;

/// One RSS/fd sample of one process.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    pub t_s: f64,
    pub process: String,
    pub pid: u32,
    pub rss_kb: u64,
    /// All open fds.
    pub fds: u64,
    /// Open fds that are not an established TCP connection nor a connected Unix stream socket:
    /// listeners,
    /// files, pipes, epoll, and any socket whose connection ended but was never closed — what a
    /// leak grows. The total also follows the number of live connections, which moves with the
    /// load (and, with mTLS, with each certificate renewal, whose new connections pool apart).
    pub fds_other: u64,
}

/// `VmRSS` in kB, the number of open fds, and how many of those are TCP sockets in an
/// established connection or connected Unix stream sockets (read from the socket tables of the
/// process's own network namespace).
pub fn proc_usage(pid: u32) -> Option<(u64, u64, u64)> {
    let rss = crate::bench::rss_kb(pid)?;
    let established = connected_inodes(pid);
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

/// Socket inodes of established TCP connections and connected Unix stream sockets in `pid`'s
/// network namespace.
fn connected_inodes(pid: u32) -> std::collections::HashSet<String> {
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
    let unix = std::fs::read_to_string(format!("/proc/{pid}/net/unix")).unwrap_or_default();
    for line in unix.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        // Num RefCount Protocol Flags Type St Inode [Path]: type 0001 is a stream socket,
        // state 03 connected.
        if f.len() > 6 && f[4] == "0001" && f[5] == "03" {
            established.insert(f[6].to_string());
        }
    }
    established
}

pub(super) type Watched = Arc<Mutex<Vec<(String, u32)>>>;

pub(super) fn spawn_sampler(
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

pub(super) fn proxy_pids(lab: &Lab) -> Vec<(String, u32)> {
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

/// The samples of each process incarnation (name and pid), in time order.
fn incarnations(samples: &[Sample]) -> BTreeMap<(String, u32), Vec<&Sample>> {
    let mut by: BTreeMap<(String, u32), Vec<&Sample>> = BTreeMap::new();
    for s in samples {
        by.entry((s.process.clone(), s.pid)).or_default().push(s);
    }
    by
}

/// Per process incarnation: skips the first `warmup` of its life, needs at least 8 samples over
/// 20 s, compares the peak of the first quarter with the peak of the last quarter.
pub fn growth(samples: &[Sample], warmup: f64) -> Vec<Growth> {
    let by = incarnations(samples);
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

/// Up to `points` evenly spaced samples of each process incarnation that was sampled from the
/// first seconds to the last (restarted processes are left out; they are in the CSV).
pub fn series(samples: &[Sample], duration: f64, points: usize) -> BTreeMap<String, Vec<[f64; 4]>> {
    let by = incarnations(samples);
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

#[cfg(test)]
mod tests {
    use super::*;

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
        // Both ends of a connected Unix stream pair count as connections, not as other fds.
        use std::os::fd::AsRawFd;
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        let inodes = connected_inodes(std::process::id());
        for fd in [a.as_raw_fd(), b.as_raw_fd()] {
            let link = std::fs::read_link(format!("/proc/self/fd/{fd}")).unwrap();
            let inode = link
                .to_string_lossy()
                .trim_start_matches("socket:[")
                .trim_end_matches(']')
                .to_string();
            assert!(inodes.contains(&inode), "{link:?} not among {inodes:?}");
        }
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
}
