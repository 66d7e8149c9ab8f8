//! Metric series come from configuration and identity, never from request data: thousands of
//! requests with distinct Host headers (inbound and outbound) and an upstream answering with
//! bogus `grpc-status` values leave the number of series and the proxy's memory flat, and a
//! hard cap per metric family holds when the rules themselves name ever new hosts. The real
//! proxy binary, real sockets.

mod common;

use common::*;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::time::Duration;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Sample lines of the `istio_*` families (every series of a histogram counts its buckets:
/// flat stays flat).
fn series(text: &str) -> usize {
    text.lines()
        .filter(|l| l.starts_with("istio_") && !l.starts_with('#'))
        .count()
}

fn rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// `n` requests to `addr`, each with Host `host(i)`, from 4 threads.
fn flood(addr: SocketAddr, from: usize, n: usize, host: fn(usize) -> String) {
    let threads: Vec<_> = (0..4)
        .map(|t| {
            std::thread::spawn(move || {
                for i in (from + t..from + n).step_by(4) {
                    let h = host(i);
                    let r = http_get(addr, "/x", &[("Host", &h)]).unwrap();
                    assert!(r.status < 600, "{}", r.status);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}

/// Distinct Host headers, inbound (to the app) and outbound (hosts the rules do not know:
/// passthrough), leave the series count flat and RSS flat.
///
/// The RSS bound: 10,000 more requests after a 2,000-request warm-up may grow the heap by what
/// the allocator keeps of per-connection buffers and the thread-local series caches (which hold
/// a few label sets once labels are bounded), well under 8 MiB. One series of the four HTTP
/// families costs about 2 KiB (three histograms of 10–19 buckets and the labels), so a series
/// per Host would add 10,000 × 2 KiB ≈ 20 MiB and fail the bound, besides the exact count.
#[test]
fn distinct_hosts_leave_series_and_memory_flat() {
    let rt = rt();
    let backend = rt.block_on(spawn_http_echo("127.0.0.1:0".parse().unwrap(), "app"));
    let rules = RulesDir::new(&[]);
    let mut o = ProxyOpts::new(rules.path());
    o.fixed_outbound = Some(backend);
    o.fixed_inbound = Some(backend);
    let mut p = ProxyProc::start(o);
    p.wait_ready();
    let pid = p.child.id();
    let (inb, out) = (p.ports.inbound_addr(), p.ports.outbound_addr());
    let in_host = |i: usize| format!("h{i}.attacker.example:80");
    let out_host = |i: usize| format!("x{i}.random.example.org");

    // Warm up: connection buffers, thread caches, every label set this traffic can produce.
    flood(inb, 0, 1000, in_host);
    flood(out, 0, 1000, out_host);
    std::thread::sleep(Duration::from_millis(300));
    let before = p.metrics();
    let (series_before, rss_before) = (series(&before), rss_kib(pid));
    assert!(series_before > 0, "{before}");

    flood(inb, 1000, 10_000, in_host);
    flood(out, 1000, 10_000, out_host);
    let after = p.metrics_when(
        "istio_requests_total",
        &["reporter=\"destination\""],
        11_000.0,
    );
    let (series_after, rss_after) = (series(&after), rss_kib(pid));
    eprintln!(
        "series {series_before} -> {series_after}; VmRSS {rss_before} KiB -> {rss_after} KiB"
    );
    assert_eq!(
        metric_value(
            &after,
            "istio_requests_total",
            &["reporter=\"destination\""]
        ),
        11_000.0
    );
    assert_eq!(
        metric_value(&after, "istio_requests_total", &["reporter=\"source\""]),
        11_000.0
    );
    assert_eq!(series_after, series_before, "{after}");
    assert!(!after.contains("attacker"), "a Host header became a label");
    assert!(
        !after.contains("random.example.org"),
        "a Host header became a label"
    );
    assert!(
        rss_after <= rss_before + 8 * 1024,
        "VmRSS grew from {rss_before} KiB to {rss_after} KiB"
    );
}

/// An upstream that answers every request with `grpc-status: STATUS`.
fn grpc_status_server(status: &'static str) -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { return };
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                let mut got = Vec::new();
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
                let resp = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/grpc\r\ngrpc-status: {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                );
                let _ = s.write_all(resp.as_bytes());
            });
        }
    });
    addr
}

/// `grpc_response_status` is a gRPC code (0–16) or empty, whatever the upstream sends.
#[test]
fn bogus_grpc_status_is_no_label_value() {
    let rules = RulesDir::new(&[]);
    for (status, want) in [("999", ""), ("abc", ""), ("14", "14")] {
        let up = grpc_status_server(status);
        let mut o = ProxyOpts::new(rules.path());
        o.fixed_inbound = Some(up);
        o.fixed_outbound = Some(up);
        let mut p = ProxyProc::start(o);
        p.wait_ready();
        for addr in [p.ports.inbound_addr(), p.ports.outbound_addr()] {
            let r = http_get(addr, "/pkg.Svc/Call", &[("Host", "127.0.0.1")]).unwrap();
            assert_eq!(r.status, 200);
        }
        let m = p.metrics_when("istio_requests_total", &["response_code=\"200\""], 2.0);
        let label = format!("grpc_response_status=\"{want}\"");
        assert_eq!(
            metric_value(&m, "istio_requests_total", &[&label]),
            2.0,
            "{status}: {m}"
        );
        assert!(
            !m.contains(&format!("grpc_response_status=\"{status}\"")) || status == want,
            "{m}"
        );
    }
}

/// Hosts the rules route (a cluster Service name is forwarded whether or not discovery knows
/// it) are configuration, but a client can still invent them: past the cap of series per
/// family, new label sets are dropped and counted.
#[test]
fn series_cap_per_family_drops_and_counts() {
    let rt = rt();
    let backend = rt.block_on(spawn_http_echo("127.0.0.1:0".parse().unwrap(), "app"));
    let rules = RulesDir::new(&[]);
    let mut o = ProxyOpts::new(rules.path());
    o.fixed_outbound = Some(backend);
    o.env.push(("REMORA_METRIC_SERIES_MAX".into(), "20".into()));
    let mut p = ProxyProc::start(o);
    p.wait_ready();
    let out = p.ports.outbound_addr();
    for i in 0..60 {
        let h = format!("svc{i}");
        let _ = http_get(out, "/", &[("Host", &h)]).unwrap();
    }
    let m = p.metrics_when(
        "remora_metric_series_dropped_total",
        &["metric=\"istio_requests_total\""],
        40.0,
    );
    let n = m
        .lines()
        .filter(|l| l.starts_with("istio_requests_total{"))
        .count();
    assert!(n <= 20, "{n} series: {m}");
    assert!(
        metric_value(
            &m,
            "remora_metric_series_dropped_total",
            &["metric=\"istio_requests_total\""]
        ) >= 40.0,
        "{m}"
    );
}
