//! Process tests: Istio rules applied by the running proxy (ServiceEntry STATIC endpoints,
//! DestinationRule subsets, VirtualService routes with header ops, rewrites and redirects) and
//! hot reload through the kubelet's `..data` symlink swap under steady, bounded load.

mod common;

use common::*;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// ServiceEntry + DestinationRule for `reviews` with endpoints v1 (port a) and v2 (port b).
fn service(a: u16, b: u16) -> String {
    format!(
        r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: reviews
  namespace: testns
spec:
  hosts: [reviews.testns.svc.cluster.local]
  location: MESH_INTERNAL
  ports:
  - {{number: 9080, name: http, protocol: HTTP}}
  resolution: STATIC
  endpoints:
  - {{address: 127.0.0.1, ports: {{http: {a}}}, labels: {{version: v1}}}}
  - {{address: 127.0.0.1, ports: {{http: {b}}}, labels: {{version: v2}}}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: reviews
  namespace: testns
spec:
  host: reviews
  subsets:
  - {{name: v1, labels: {{version: v1}}}}
  - {{name: v2, labels: {{version: v2}}}}
"#
    )
}

fn route_to(subset: &str) -> String {
    format!(
        r#"apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: reviews
  namespace: testns
spec:
  hosts: [reviews]
  http:
  - name: to-{subset}
    route:
    - destination: {{host: reviews, subset: {subset}}}
"#
    )
}

const ORIG_DST: &str = "127.0.0.1:9080";

#[test]
fn virtual_service_routes_header_ops_rewrite_and_redirect() {
    let rt = rt();
    let v1 = rt.block_on(spawn_http_echo("127.0.0.1:0".parse().unwrap(), "v1"));
    let v2 = rt.block_on(spawn_http_echo("127.0.0.1:0".parse().unwrap(), "v2"));
    let vs = r#"apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: reviews
  namespace: testns
spec:
  hosts: [reviews]
  http:
  - name: old-path
    match: [{uri: {prefix: /old}}]
    redirect: {uri: /new, redirectCode: 302}
  - name: jason
    match: [{headers: {end-user: {exact: jason}}}]
    rewrite: {uri: /api, authority: reviews-v2.internal}
    headers:
      request: {set: {x-route: jason}, remove: [x-drop]}
      response: {add: {x-served-by: remora}}
    route:
    - destination: {host: reviews, subset: v2}
  - name: default
    route:
    - destination: {host: reviews, subset: v1}
"#;
    let svc = service(v1.port(), v2.port());
    let rules = RulesDir::new(&[("service.yaml", &svc), ("vs.yaml", vs)]);
    let mut o = ProxyOpts::new(rules.path());
    o.fixed_outbound = Some(ORIG_DST.parse().unwrap());
    let mut p = ProxyProc::start(o);
    p.wait_ready();
    let out = p.ports.outbound_addr();

    // Default route → v1.
    let r = http_get(out, "/reviews/1", &[("Host", "reviews:9080")]).unwrap();
    assert_eq!(r.status, 200, "{}", r.body_text());
    assert_eq!(r.json()["server"], "v1");

    // Header match → v2 with rewrite and header operations.
    let r = http_get(
        out,
        "/reviews/2?x=1",
        &[
            ("Host", "reviews:9080"),
            ("end-user", "jason"),
            ("x-drop", "secret"),
        ],
    )
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.body_text());
    assert_eq!(r.header("x-served-by"), Some("remora"));
    let v = r.json();
    assert_eq!(v["server"], "v2");
    assert!(v["path"].as_str().unwrap().starts_with("/api"), "{v}");
    assert_eq!(v["headers"]["host"], "reviews-v2.internal");
    assert_eq!(v["headers"]["x-route"], "jason");
    assert!(v["headers"].get("x-drop").is_none(), "{v}");
    let line = p.wait_log(|l| l["path"] == "/reviews/2?x=1");
    assert_eq!(line["route_name"], "jason");
    assert_eq!(
        line["virtual_service"]
            .as_str()
            .map(|s| s.contains("reviews")),
        Some(true)
    );
    assert_eq!(line["upstream"], v2.to_string());
    assert_eq!(
        line["destination_service"],
        "reviews.testns.svc.cluster.local"
    );

    // Redirect answered by the proxy itself.
    let r = http_get(out, "/old/page", &[("Host", "reviews:9080")]).unwrap();
    assert_eq!(r.status, 302);
    let loc = r.header("location").unwrap();
    assert!(loc.ends_with("/new"), "{loc}");

    // A host without a VirtualService goes to the original destination (passthrough).
    let direct = rt.block_on(spawn_http_echo("127.0.0.1:0".parse().unwrap(), "direct"));
    drop(p);
    let mut o = ProxyOpts::new(rules.path());
    o.fixed_outbound = Some(direct);
    let mut p = ProxyProc::start(o);
    p.wait_ready();
    let r = http_get(
        p.ports.outbound_addr(),
        "/x",
        &[("Host", "unknown.example:80")],
    )
    .unwrap();
    assert_eq!(r.json()["server"], "direct");

    let m = p.metrics_when(
        "istio_requests_total",
        &["destination_service=\"PassthroughCluster\""],
        1.0,
    );
    assert_eq!(
        metric_value(
            &m,
            "istio_requests_total",
            &["destination_service=\"PassthroughCluster\""]
        ),
        1.0,
        "{m}"
    );
}

/// Every request of the load: when it finished, which server answered, the status, when it
/// was sent.
type Seen = Arc<Mutex<Vec<(Instant, String, u16, Instant)>>>;

/// Steady sequential load from `workers` client threads until `stop`, bounded by `max_each`
/// requests per worker; records (answer time, server, status, send time) of every request.
fn load(
    addr: SocketAddr,
    workers: usize,
    max_each: usize,
    stop: Arc<AtomicBool>,
) -> (Vec<std::thread::JoinHandle<()>>, Seen) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let mut hs = Vec::new();
    for _ in 0..workers {
        let seen = seen.clone();
        let stop = stop.clone();
        hs.push(std::thread::spawn(move || {
            for _ in 0..max_each {
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                let sent = Instant::now();
                let (server, status) = match http_get(addr, "/load", &[("Host", "reviews:9080")]) {
                    Ok(r) if r.status == 200 => {
                        (r.json()["server"].as_str().unwrap_or("?").to_string(), 200)
                    }
                    Ok(r) => (format!("status {}: {}", r.status, r.body_text()), r.status),
                    Err(e) => (format!("error: {e}"), 0),
                };
                seen.lock()
                    .unwrap()
                    .push((Instant::now(), server, status, sent));
                std::thread::sleep(Duration::from_millis(2));
            }
        }));
    }
    (hs, seen)
}

#[test]
fn reload_by_data_symlink_swap_under_load_and_invalid_set_keeps_old_routing() {
    let rt = rt();
    let v1 = rt.block_on(spawn_http_echo("127.0.0.1:0".parse().unwrap(), "v1"));
    let v2 = rt.block_on(spawn_http_echo("127.0.0.1:0".parse().unwrap(), "v2"));
    let svc = service(v1.port(), v2.port());
    let mut rules = RulesDir::new(&[("service.yaml", &svc), ("vs.yaml", &route_to("v1"))]);
    let mut o = ProxyOpts::new(rules.path());
    o.fixed_outbound = Some(ORIG_DST.parse().unwrap());
    let mut p = ProxyProc::start(o);
    p.wait_ready();
    let gen0 = http_get(p.ports.admin_addr(), "/config_dump", &[])
        .unwrap()
        .json()["generation"]
        .as_u64()
        .unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let (workers, seen) = load(p.ports.outbound_addr(), 3, 5000, stop.clone());
    // Let the load run on v1 first.
    let t0 = Instant::now();
    while seen.lock().unwrap().len() < 50 && t0.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(10));
    }

    // 1. Swap to a valid set routing to v2.
    let swapped_at = Instant::now();
    rules.swap(&[("service.yaml", &svc), ("vs.yaml", &route_to("v2"))]);
    let deadline = Instant::now() + Duration::from_secs(WAIT_S);
    let first_v2 = loop {
        let first = seen
            .lock()
            .unwrap()
            .iter()
            .find(|(t, s, _, _)| *t > swapped_at && s == "v2")
            .map(|(t, _, _, _)| *t);
        if let Some(t) = first {
            break t;
        }
        assert!(
            Instant::now() < deadline,
            "v2 never seen; stderr:\n{}",
            p.stderr_text()
        );
        std::thread::sleep(Duration::from_millis(5));
    };
    let switch = first_v2 - swapped_at;
    eprintln!(
        "reload: new routing first seen {} ms after the ..data swap",
        switch.as_millis()
    );

    // Let the load continue on v2 for a while.
    let mark = Instant::now();
    while seen
        .lock()
        .unwrap()
        .iter()
        .filter(|(t, _, _, _)| *t > mark)
        .count()
        < 50
        && mark.elapsed() < Duration::from_secs(10)
    {
        std::thread::sleep(Duration::from_millis(10));
    }
    let dump = http_get(p.ports.admin_addr(), "/config_dump", &[])
        .unwrap()
        .json();
    let gen1 = dump["generation"].as_u64().unwrap();
    assert_eq!(gen1, gen0 + 1, "{dump}");

    // 2. Swap to an invalid set: rejected as a whole, v2 routing stays, the error is counted.
    let errors_before = metric_value(&p.metrics(), "remora_config_reload_errors_total", &[]);
    let bad_vs = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: reviews, namespace: testns}\nspec:\n  hosts: [reviews]\n  http:\n  - route:\n    - destination: {host: reviews, subset: v1}\n      weight: \"80\"\n";
    let bad_at = Instant::now();
    rules.swap(&[("service.yaml", &svc), ("vs.yaml", bad_vs)]);
    let deadline = Instant::now() + Duration::from_secs(WAIT_S);
    loop {
        let now = metric_value(&p.metrics(), "remora_config_reload_errors_total", &[]);
        if now >= errors_before + 1.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "reload error not counted; stderr:\n{}",
            p.stderr_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let err_line = p.wait_stderr("vs.yaml");
    assert!(err_line.contains("weight"), "{err_line}");
    // Keep load on the old (v2) routing a little longer after the rejection.
    let mark = Instant::now();
    while seen
        .lock()
        .unwrap()
        .iter()
        .filter(|(t, _, _, _)| *t > mark)
        .count()
        < 50
        && mark.elapsed() < Duration::from_secs(10)
    {
        std::thread::sleep(Duration::from_millis(10));
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().unwrap();
    }
    let dump = http_get(p.ports.admin_addr(), "/config_dump", &[])
        .unwrap()
        .json();
    assert_eq!(
        dump["generation"].as_u64().unwrap(),
        gen1,
        "invalid set must not apply"
    );

    let seen = seen.lock().unwrap();
    // No request failed at any point.
    let failed: Vec<_> = seen.iter().filter(|(_, _, st, _)| *st != 200).collect();
    assert!(
        failed.is_empty(),
        "failed requests during reload: {failed:?}"
    );
    // Before the swap only v1; after the invalid set only v2.
    assert!(seen
        .iter()
        .filter(|(t, _, _, _)| *t < swapped_at)
        .all(|(_, s, _, _)| s == "v1"));
    let after_bad: Vec<_> = seen
        .iter()
        .filter(|(_, _, _, sent)| *sent > bad_at)
        .collect();
    assert!(!after_bad.is_empty());
    assert!(
        after_bad.iter().all(|(_, s, _, _)| s == "v2"),
        "old (v2) routing must stay"
    );
    // Once a request saw v2, requests sent after its answer never see v1 again (atomic switch).
    // Ordered by send time, not by a time margin: requests already in flight then may still
    // complete on v1 however long a loaded machine makes them take.
    let late_v1: Vec<_> = seen
        .iter()
        .filter(|(_, s, _, sent)| *sent > first_v2 && s == "v1")
        .collect();
    assert!(late_v1.is_empty(), "v1 after the switch: {late_v1:?}");
    eprintln!(
        "reload: {} requests, 0 failed; switch latency {} ms",
        seen.len(),
        switch.as_millis()
    );
    let m = p.metrics();
    assert!(
        metric_value(&m, "remora_config_reloads_total", &[]) >= 1.0,
        "{m}"
    );
    assert_eq!(
        metric_value(&m, "remora_config_generation", &[]),
        gen1 as f64
    );
}

#[test]
fn port_declared_tcp_by_a_service_entry_is_not_sniffed() {
    let rt = rt();
    let backend = rt.block_on(spawn_http_echo("127.0.0.1:0".parse().unwrap(), "db"));
    let se = format!(
        r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: db, namespace: testns}}
spec:
  hosts: [db.testns.svc.cluster.local]
  location: MESH_INTERNAL
  ports:
  - {{number: {}, name: tcp-db, protocol: TCP}}
  resolution: NONE
"#,
        backend.port()
    );
    let rules = RulesDir::new(&[("db.yaml", &se)]);
    let mut o = ProxyOpts::new(rules.path());
    o.fixed_outbound = Some(backend);
    let mut p = ProxyProc::start(o);
    p.wait_ready();
    // HTTP bytes on a port the rules call TCP: proxied as opaque bytes (no HTTP handling).
    let r = http_get(p.ports.outbound_addr(), "/as-tcp", &[]).unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["server"], "db");
    assert!(
        r.json()["headers"].get("x-request-id").is_none(),
        "an opaque TCP connection must not be modified"
    );
    let line = p.wait_log(|l| l["kind"] == "tcp");
    assert_eq!(line["upstream"], backend.to_string());
    assert!(p.access_log().iter().all(|l| l["kind"] != "http"));
}

#[test]
fn route_to_another_host_without_endpoints_does_not_reuse_the_original_destination() {
    let rt = rt();
    let original = rt.block_on(spawn_http_echo("127.0.0.1:0".parse().unwrap(), "original"));
    // Another address than the original destination's, so reusing the original destination's IP
    // with the route's port would miss it.
    let other = rt.block_on(spawn_http_echo("127.0.0.2:0".parse().unwrap(), "other"));
    // The destination host is an address literal here so no DNS lookup leaves the machine; a
    // name would be resolved (cached 5 s) the same way.
    let vs = format!(
        r#"apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: shift, namespace: testns}}
spec:
  hosts: [reviews]
  http:
  - name: shift
    route:
    - destination: {{host: 127.0.0.2, port: {{number: {}}}}}
"#,
        other.port()
    );
    let rules = RulesDir::new(&[("vs.yaml", &vs)]);
    let mut o = ProxyOpts::new(rules.path());
    o.fixed_outbound = Some(original);
    let mut p = ProxyProc::start(o);
    p.wait_ready();
    let r = http_get(p.ports.outbound_addr(), "/r", &[("Host", "reviews:9080")]).unwrap();
    assert_eq!(r.status, 200, "{}", r.body_text());
    assert_eq!(r.json()["server"], "other");
    let line = p.wait_log(|l| l["path"] == "/r");
    assert_eq!(line["route_name"], "shift");
    assert_eq!(line["upstream"], other.to_string());
}

#[test]
fn tcp_to_a_service_entry_address_goes_to_its_endpoints() {
    let rt = rt();
    let echo = rt.block_on(spawn_tcp_echo());
    // 127.0.0.50:7000 is the service's virtual address: nothing listens there.
    let se = format!(
        r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: cache, namespace: testns}}
spec:
  hosts: [cache.testns.svc.cluster.local]
  addresses: [127.0.0.50/32]
  location: MESH_INTERNAL
  ports:
  - {{number: 7000, name: tcp-cache, protocol: TCP}}
  resolution: STATIC
  endpoints:
  - {{address: 127.0.0.1, ports: {{tcp-cache: {}}}}}
"#,
        echo.port()
    );
    let rules = RulesDir::new(&[("cache.yaml", &se)]);
    let mut o = ProxyOpts::new(rules.path());
    o.fixed_outbound = Some("127.0.0.50:7000".parse().unwrap());
    let mut p = ProxyProc::start(o);
    p.wait_ready();
    let mut s = std::net::TcpStream::connect(p.ports.outbound_addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    use std::io::{Read, Write};
    s.write_all(b"*1\r\n$4\r\nPING\r\n").unwrap();
    let mut buf = [0u8; 14];
    s.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"*1\r\n$4\r\nPING\r\n");
    drop(s);
    let line = p.wait_log(|l| l["kind"] == "tcp");
    assert_eq!(line["original_dst"], "127.0.0.50:7000");
    assert_eq!(line["upstream"], echo.to_string());
    let m = p.metrics();
    assert_eq!(
        metric_value(
            &m,
            "istio_tcp_connections_opened_total",
            &["destination_service=\"cache.testns.svc.cluster.local\""]
        ),
        1.0,
        "{m}"
    );
}

#[test]
fn port_declared_http2_gets_an_h2c_upstream_for_an_http1_client() {
    let rt = rt();
    let backend = rt.block_on(spawn_http_echo("127.0.0.1:0".parse().unwrap(), "h2only"));
    let se = format!(
        r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: api, namespace: testns}}
spec:
  hosts: [api.testns.svc.cluster.local]
  location: MESH_INTERNAL
  ports:
  - {{number: {}, name: http2-api, protocol: HTTP2}}
  resolution: NONE
"#,
        backend.port()
    );
    let rules = RulesDir::new(&[("api.yaml", &se)]);
    let mut o = ProxyOpts::new(rules.path());
    o.fixed_outbound = Some(backend);
    let mut p = ProxyProc::start(o);
    p.wait_ready();
    let host = format!("api:{}", backend.port());
    let r = http_get(
        p.ports.outbound_addr(),
        "/v?x=1",
        &[("Host", host.as_str())],
    )
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.body_text());
    let v = r.json();
    assert_eq!(v["version"], "HTTP/2.0", "{v}");
    assert_eq!(v["path"], "/v?x=1");
    assert_eq!(v["authority"], host.as_str(), "{v}");
}

#[test]
fn invalid_rules_at_start_keep_the_proxy_unready_until_a_valid_set_arrives() {
    let bad_vs = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: r, namespace: testns}\nspec:\n  hosts: [reviews]\n  http: 42\n";
    let mut rules = RulesDir::new(&[("vs.yaml", bad_vs)]);
    let mut p = ProxyProc::start(ProxyOpts::new(rules.path()));
    p.wait_stderr("rejected");
    // The health server comes up (bounded wait) and says why the proxy is not ready.
    let deadline = Instant::now() + Duration::from_secs(WAIT_START_S);
    let r = loop {
        if let Ok(r) = http_get(p.ports.health_addr(), "/healthz/ready", &[]) {
            break r;
        }
        assert!(Instant::now() < deadline, "health server never answered");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(r.status, 503);
    assert!(
        r.body_text().contains("no rule set loaded"),
        "{}",
        r.body_text()
    );
    rules.swap(&[("vs.yaml", &route_to("v1"))]);
    p.wait_ready();
    let dump = http_get(p.ports.admin_addr(), "/config_dump", &[])
        .unwrap()
        .json();
    assert_eq!(dump["generation"], 1, "{dump}");
}

#[test]
fn tcp_route_of_a_virtual_service_sends_the_connection_to_another_service() {
    let rt = rt();
    let a = rt.block_on(spawn_http_echo("127.0.0.1:0".parse().unwrap(), "cache-a"));
    let b = rt.block_on(spawn_http_echo("127.0.0.1:0".parse().unwrap(), "cache-b"));
    // Port 7000 is declared TCP, so the HTTP bytes below are opaque to the proxy and the echo
    // server's name tells which service the connection reached.
    let rules_text = format!(
        r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: cache-a, namespace: testns}}
spec:
  hosts: [cache-a.testns.svc.cluster.local]
  addresses: [127.0.0.50/32]
  location: MESH_INTERNAL
  ports: [{{number: 7000, name: tcp-cache, protocol: TCP}}]
  resolution: STATIC
  endpoints: [{{address: 127.0.0.1, ports: {{tcp-cache: {a}}}}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: cache-b, namespace: testns}}
spec:
  hosts: [cache-b.testns.svc.cluster.local]
  addresses: [127.0.0.51/32]
  location: MESH_INTERNAL
  ports: [{{number: 7000, name: tcp-cache, protocol: TCP}}]
  resolution: STATIC
  endpoints: [{{address: 127.0.0.1, ports: {{tcp-cache: {b}}}}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: cache-shift, namespace: testns}}
spec:
  hosts: [cache-a.testns.svc.cluster.local]
  tcp:
  - match: [{{port: 7000}}]
    route:
    - destination: {{host: cache-b.testns.svc.cluster.local, port: {{number: 7000}}}}
"#,
        a = a.port(),
        b = b.port()
    );
    let rules = RulesDir::new(&[("cache.yaml", &rules_text)]);
    let mut o = ProxyOpts::new(rules.path());
    o.fixed_outbound = Some("127.0.0.50:7000".parse().unwrap());
    let mut p = ProxyProc::start(o);
    p.wait_ready();
    let r = http_get(p.ports.outbound_addr(), "/tcp", &[]).unwrap();
    assert_eq!(r.json()["server"], "cache-b", "{}", r.body_text());
    let line = p.wait_log(|l| l["kind"] == "tcp");
    assert_eq!(line["upstream"], b.to_string());
    assert_eq!(line["original_dst"], "127.0.0.50:7000");
    let m = p.metrics();
    assert_eq!(
        metric_value(
            &m,
            "istio_tcp_connections_closed_total",
            &["destination_service=\"cache-b.testns.svc.cluster.local\""]
        ),
        1.0,
        "{m}"
    );
}

/// Accepts any certificate (the test only checks where the TLS connection arrives).
#[derive(Debug)]
struct AnyCert(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCert {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &rustls::pki_types::CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &rustls::pki_types::CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A TLS server that answers every line with `NAME: LINE`.
async fn spawn_tls_named(name: &'static str) -> SocketAddr {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    let ck = rcgen::generate_simple_self_signed(vec!["secure.example.com".to_string()]).unwrap();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(ck.key_pair.serialize_der().into());
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![ck.cert.der().clone()], key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else { return };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(s).await else {
                    return;
                };
                let (r, mut w) = tokio::io::split(tls);
                let mut lines = tokio::io::BufReader::new(r).lines();
                while let Ok(Some(l)) = lines.next_line().await {
                    if w.write_all(format!("{name}: {l}\n").as_bytes())
                        .await
                        .is_err()
                    {
                        return;
                    }
                    let _ = w.flush().await;
                }
            });
        }
    });
    addr
}

#[test]
fn tls_is_routed_by_sni_to_the_virtual_service_destination() {
    let rt = rt();
    let a = rt.block_on(spawn_tls_named("tls-a"));
    let b = rt.block_on(spawn_tls_named("tls-b"));
    let text = format!(
        r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: secure, namespace: testns}}
spec:
  hosts: [secure.example.com]
  location: MESH_EXTERNAL
  ports: [{{number: 443, name: tls, protocol: TLS}}]
  resolution: STATIC
  endpoints: [{{address: 127.0.0.1, ports: {{tls: {a}}}}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: secure-b, namespace: testns}}
spec:
  hosts: [secure-b.testns.svc.cluster.local]
  location: MESH_INTERNAL
  ports: [{{number: 443, name: tls, protocol: TLS}}]
  resolution: STATIC
  endpoints: [{{address: 127.0.0.1, ports: {{tls: {b}}}}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: secure, namespace: testns}}
spec:
  hosts: [secure.example.com]
  tls:
  - match: [{{port: 443, sniHosts: [secure.example.com]}}]
    route:
    - destination: {{host: secure-b.testns.svc.cluster.local, port: {{number: 443}}}}
"#,
        a = a.port(),
        b = b.port()
    );
    let rules = RulesDir::new(&[("secure.yaml", &text)]);
    let mut o = ProxyOpts::new(rules.path());
    // The app dialed some address of secure.example.com on 443; nothing listens there.
    o.fixed_outbound = Some("127.0.0.60:443".parse().unwrap());
    let mut p = ProxyProc::start(o);
    p.wait_ready();
    let proxy = p.ports.outbound_addr();
    let answer = rt.block_on(async move {
        use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCert(provider)))
            .with_no_client_auth();
        let tcp = tokio::net::TcpStream::connect(proxy).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("secure.example.com").unwrap();
        let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .expect("TLS handshake through the proxy");
        tls.write_all(b"hello\n").await.unwrap();
        tls.flush().await.unwrap();
        let mut line = String::new();
        tokio::io::BufReader::new(tls)
            .read_line(&mut line)
            .await
            .unwrap();
        line
    });
    assert_eq!(answer, "tls-b: hello\n");
    let line = p.wait_log(|l| l["kind"] == "tcp");
    assert_eq!(line["upstream"], b.to_string());
}
