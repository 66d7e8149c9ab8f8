//! Process tests of the default route (Istio's `outbound|port||host`): a real `remora-proxy run`
//! on loopback whose original destination is a controlled HTTP server, with a DestinationRule and
//! no VirtualService for the Service the client names. The DestinationRule's trafficPolicy
//! applies, Istio's default retries apply (never to a POST), the access log names the Service and
//! no route; a request by IP stays a plain passthrough.

mod common;

use common::*;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// What the server answers.
#[derive(Clone, Copy, Debug)]
enum Mode {
    /// Answer this status at once.
    Status(u16),
    /// Wait until the test releases a permit (bounded: 30 s), then 200.
    Hold,
}

/// A controlled HTTP/1.1 server on 127.0.0.1.
struct Backend {
    addr: SocketAddr,
    mode: Mutex<Mode>,
    hits: AtomicU64,
    concurrent: AtomicI64,
    max_concurrent: AtomicI64,
    methods: Mutex<Vec<String>>,
    release: tokio::sync::Semaphore,
}

impl Backend {
    fn hits(&self) -> u64 {
        self.hits.load(Ordering::SeqCst)
    }
}

async fn backend(mode: Mode) -> Arc<Backend> {
    use http_body_util::{BodyExt, Full};
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let b = Arc::new(Backend {
        addr: l.local_addr().unwrap(),
        mode: Mutex::new(mode),
        hits: AtomicU64::new(0),
        concurrent: AtomicI64::new(0),
        max_concurrent: AtomicI64::new(0),
        methods: Mutex::new(vec![]),
        release: tokio::sync::Semaphore::new(0),
    });
    let b2 = b.clone();
    tokio::spawn(async move {
        loop {
            let Ok((sock, _)) = l.accept().await else {
                return;
            };
            let b = b2.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let b = b.clone();
                    async move {
                        b.methods.lock().unwrap().push(req.method().to_string());
                        let _ = req.into_body().collect().await;
                        b.hits.fetch_add(1, Ordering::SeqCst);
                        let now = b.concurrent.fetch_add(1, Ordering::SeqCst) + 1;
                        b.max_concurrent.fetch_max(now, Ordering::SeqCst);
                        let mode = *b.mode.lock().unwrap();
                        let status = match mode {
                            Mode::Status(s) => s,
                            Mode::Hold => {
                                let _ = tokio::time::timeout(
                                    Duration::from_secs(30),
                                    b.release.acquire(),
                                )
                                .await
                                .map(|p| p.map(|p| p.forget()));
                                200
                            }
                        };
                        b.concurrent.fetch_sub(1, Ordering::SeqCst);
                        Ok::<_, std::io::Error>(
                            hyper::Response::builder()
                                .status(status)
                                .body(Full::new(bytes::Bytes::from_static(b"backend")))
                                .unwrap(),
                        )
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(sock), svc)
                    .await;
            });
        }
    });
    b
}

/// The Service the client names (the proxy runs in namespace `testns`).
const HOST: &str = "svc:9080";
const FQDN: &str = "svc.testns.svc.cluster.local";

/// A DestinationRule for `svc` with this `trafficPolicy` (flow YAML), and nothing else: no
/// VirtualService, no ServiceEntry.
fn dr(tp: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: svc, namespace: testns}}\nspec:\n  host: svc\n  trafficPolicy: {tp}\n  subsets: [{{name: v1, labels: {{version: v1}}}}]\n"
    )
}

/// A proxy whose original destination (the Service's ClusterIP in a cluster) is `target`.
fn start(files: &[(&str, &str)], target: SocketAddr) -> (ProxyProc, RulesDir) {
    let rules = RulesDir::new(files);
    let mut o = ProxyOpts::new(rules.path());
    o.fixed_outbound = Some(target);
    let mut p = ProxyProc::start(o);
    p.wait_ready();
    (p, rules)
}

/// `n` concurrent GETs for `svc` against a holding server: how many the server saw at once,
/// and each request's (status, path). The server releases the held ones once the `reach`
/// requests that reach it at once have arrived and the others, but for `pending` queued in the
/// proxy, are answered (refused).
fn concurrent_gets(
    p: &ProxyProc,
    b: &Backend,
    n: usize,
    reach: u64,
    pending: u64,
) -> Vec<(u16, String)> {
    let out = p.ports.outbound_addr();
    let tag = unique("c");
    std::thread::scope(|s| {
        let hs: Vec<_> = (0..n)
            .map(|i| {
                let path = format!("/{tag}/{i}");
                s.spawn(move || {
                    let r = http_get(out, &path, &[("Host", HOST)]).unwrap();
                    (r.status, path)
                })
            })
            .collect();
        // bounded below the clients' 10 s read timeout: the held ones must be released by then
        let deadline = Instant::now() + Duration::from_secs(9);
        let refused = || {
            p.access_log()
                .iter()
                .filter(|l| {
                    l["status"] == 503 && l["path"].as_str().is_some_and(|x| x.contains(&tag))
                })
                .count() as u64
        };
        while (b.hits() < reach || refused() < n as u64 - reach - pending)
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(10));
        }
        b.release.add_permits(n);
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

#[test]
fn destination_rule_alone_caps_a_service_without_virtual_service() {
    let rt = rt();
    // Without a DestinationRule: the default route adds no limit; all 4 reach the server.
    let free = rt.block_on(backend(Mode::Hold));
    let (p, _rules) = start(&[], free.addr);
    let results = concurrent_gets(&p, &free, 4, 4, 0);
    assert!(results.iter().all(|r| r.0 == 200), "{results:?}");
    assert_eq!(free.max_concurrent.load(Ordering::SeqCst), 4);
    drop(p);

    // With only a DestinationRule (maxConnections 1, 1 pending): 2 pass, 2 are refused with
    // 503 UO by the proxy, and the server never sees more than one at a time.
    let held = rt.block_on(backend(Mode::Hold));
    let (p, _rules) = start(
        &[(
            "dr.yaml",
            &dr("{connectionPool: {tcp: {maxConnections: 1}, http: {http1MaxPendingRequests: 1}}}"),
        )],
        held.addr,
    );
    let results = concurrent_gets(&p, &held, 4, 1, 1);
    let ok = results.iter().filter(|r| r.0 == 200).count();
    let refused: Vec<&(u16, String)> = results.iter().filter(|r| r.0 == 503).collect();
    assert_eq!((ok, refused.len()), (2, 2), "{results:?}");
    assert_eq!(held.max_concurrent.load(Ordering::SeqCst), 1);
    assert_eq!(held.hits(), 2);
    for (_, path) in refused {
        let l = p.wait_log(|l| l["path"] == path.as_str());
        assert_eq!(l["response_flags"], "UO", "{l}");
    }
    // The access log names the Service (the default route) and no route or VirtualService.
    let (_, path) = results.iter().find(|r| r.0 == 200).unwrap();
    let l = p.wait_log(|l| l["path"] == path.as_str());
    assert_eq!(l["destination_service"], FQDN, "{l}");
    assert!(
        l["route_name"].is_null() && l["virtual_service"].is_null(),
        "{l}"
    );
    assert_eq!(
        l["upstream"],
        held.addr.to_string(),
        "the original destination: {l}"
    );
    let metrics = p.metrics();
    assert!(
        metric_value(
            &metrics,
            "istio_requests_total",
            &[
                &format!("destination_service=\"{FQDN}\""),
                "response_code=\"503\""
            ]
        ) >= 2.0,
        "{metrics}"
    );
}

#[test]
fn default_route_retries_like_istio_and_never_a_post() {
    let rt = rt();
    let failing = rt.block_on(backend(Mode::Status(503)));
    let (p, _rules) = start(
        &[("dr.yaml", &dr("{loadBalancer: {simple: ROUND_ROBIN}}"))],
        failing.addr,
    );
    let out = p.ports.outbound_addr();
    // GET: Istio's default route retries a 503 twice.
    let r = http_get(out, "/get", &[("Host", HOST)]).unwrap();
    assert_eq!(r.status, 503);
    assert_eq!(failing.hits(), 3, "1 try + 2 default retries");
    assert_eq!(p.wait_log(|l| l["path"] == "/get")["response_flags"], "URX");
    // POST: not idempotent, never retried without an explicit rule.
    let r = http_request(out, "POST", "/post", &[("Host", HOST)], b"once").unwrap();
    assert_eq!(r.status, 503);
    assert_eq!(failing.hits(), 4, "POST: one try");
    // By IP: not a Service name, a plain passthrough (no policy, no retry).
    let target = failing.addr.to_string();
    let r = http_get(out, "/by-ip", &[("Host", &target)]).unwrap();
    assert_eq!(r.status, 503);
    assert_eq!(failing.hits(), 5, "passthrough: one try");
    let l = p.wait_log(|l| l["path"] == "/by-ip");
    assert_eq!(l["destination_service"], "PassthroughCluster", "{l}");
    assert_eq!(l["authority"], target.as_str(), "{l}");
    assert_eq!(
        failing.methods.lock().unwrap().as_slice(),
        ["GET", "GET", "GET", "POST", "GET"]
    );
}
