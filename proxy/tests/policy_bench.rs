//! Measurement, not a test: the cost of the traffic policies on the request path. Run with
//! `cargo test -p remora-proxy --release --test policy_bench -- --ignored --nocapture`.
//! Sequential keep-alive requests through a real proxy to a loopback server, with no policy
//! rules and with a full set (retries, timeout, LEAST_REQUEST, outlier detection, pool limits,
//! a rate limit far above the load).

mod common;

use common::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

const HOST: &str = "svc:9080";

fn service(port: u16) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: svc, namespace: testns}}\nspec:\n  hosts: [svc.testns.svc.cluster.local]\n  ports: [{{number: 9080, name: http, protocol: HTTP}}]\n  resolution: STATIC\n  endpoints:\n  - {{address: 127.0.0.1, ports: {{http: {port}}}}}\n"
    )
}

const POLICIES: &str = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: svc, namespace: testns}\nspec:\n  hosts: [svc]\n  http:\n  - name: main\n    timeout: 5s\n    retries: {attempts: 2, perTryTimeout: 2s, retryOn: 5xx}\n    route: [{destination: {host: svc}}]\n---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: svc, namespace: testns}\nspec:\n  host: svc\n  trafficPolicy:\n    loadBalancer: {simple: LEAST_REQUEST}\n    connectionPool: {tcp: {maxConnections: 100}, http: {http1MaxPendingRequests: 100}}\n    outlierDetection: {consecutive5xxErrors: 5, interval: 10s, baseEjectionTime: 30s}\n---\napiVersion: remora.dev/v1alpha1\nkind: RateLimit\nmetadata: {name: svc, namespace: testns}\nspec: {host: svc, requestsPerUnit: 1000000, unit: SECOND}\n";

/// `n` GETs on one keep-alive connection; per-request latencies in microseconds, sorted.
fn run(addr: std::net::SocketAddr, n: usize) -> Vec<u128> {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.set_nodelay(true).unwrap();
    let req = format!("GET /b HTTP/1.1\r\nHost: {HOST}\r\n\r\n");
    let mut lat = Vec::with_capacity(n);
    let mut buf = vec![0u8; 64 * 1024];
    for _ in 0..n {
        let t0 = Instant::now();
        s.write_all(req.as_bytes()).unwrap();
        let mut got = Vec::new();
        loop {
            let k = s.read(&mut buf).unwrap();
            assert!(k > 0, "connection closed");
            got.extend_from_slice(&buf[..k]);
            if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&got[..end]).to_ascii_lowercase();
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0);
                if got.len() >= end + 4 + len {
                    assert!(head.starts_with("http/1.1 200"), "{head}");
                    break;
                }
            }
        }
        lat.push(t0.elapsed().as_micros());
    }
    lat.sort_unstable();
    lat
}

#[test]
#[ignore = "measurement; run by hand"]
fn policy_overhead() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let backend = rt.block_on(spawn_http_echo("127.0.0.1:0".parse().unwrap(), "b"));
    let n = 5000;
    for (label, extra) in [("no policy rules", ""), ("all policies", POLICIES)] {
        let svc = service(backend.port());
        let mut files = vec![("svc.yaml", svc.as_str())];
        if !extra.is_empty() {
            files.push(("policies.yaml", extra));
        }
        let rules = RulesDir::new(&files);
        let mut o = ProxyOpts::new(rules.path());
        o.fixed_outbound = Some("127.0.0.1:9080".parse().unwrap());
        let mut p = ProxyProc::start(o);
        p.wait_ready();
        let _warm = run(p.ports.outbound_addr(), 500);
        let lat = run(p.ports.outbound_addr(), n);
        let mean = lat.iter().sum::<u128>() as f64 / n as f64;
        println!(
            "{label}: {n} sequential keep-alive requests: mean {mean:.0} µs, p50 {} µs, p99 {} µs",
            lat[n / 2],
            lat[n * 99 / 100]
        );
    }
}
