//! Process tests of the data plane on loopback: HTTP/1.1 (outbound and inbound), h2c, opaque TCP,
//! a server-first protocol, loop refusal, and the admin/health/metrics endpoints.
//!
//! These run the real binary with the explicit testing hooks `--fixed-outbound-target` /
//! `--fixed-inbound-target` (no iptables); `dataplane_netns.rs` covers the real REDIRECT path.

mod common;

use common::*;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn http1_outbound_passthrough_with_request_id_and_access_log() {
    let rt = rt();
    let backend = rt.block_on(spawn_http_echo("127.0.0.1:0".parse().unwrap(), "app-a"));
    let rules = RulesDir::new(&[]);
    let mut o = ProxyOpts::new(rules.path());
    o.fixed_outbound = Some(backend);
    let mut p = ProxyProc::start(o);
    p.wait_ready();

    // No x-request-id: the proxy generates one and the app sees it; trace headers pass.
    let r = http_get(
        p.ports.outbound_addr(),
        "/hello?x=1",
        &[
            ("Host", "reviews:9080"),
            (
                "traceparent",
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            ),
            ("b3", "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1"),
        ],
    )
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.body_text());
    let seen = r.json();
    assert_eq!(seen["server"], "app-a");
    assert_eq!(seen["path"], "/hello?x=1");
    assert_eq!(seen["headers"]["host"], "reviews:9080");
    let rid = seen["headers"]["x-request-id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(rid.len(), 36, "{rid}");
    assert_eq!(
        seen["headers"]["traceparent"],
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    );
    assert_eq!(
        seen["headers"]["b3"],
        "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1"
    );

    // A given x-request-id is kept.
    let r = http_get(
        p.ports.outbound_addr(),
        "/status/503",
        &[("x-request-id", "given-id-1")],
    )
    .unwrap();
    assert_eq!(r.status, 503);
    assert_eq!(r.json()["headers"]["x-request-id"], "given-id-1");

    let line = p.wait_log(|v| v["request_id"] == rid.as_str());
    assert_eq!(line["kind"], "http");
    assert_eq!(line["direction"], "outbound");
    assert_eq!(line["method"], "GET");
    assert_eq!(line["path"], "/hello?x=1");
    assert_eq!(line["authority"], "reviews:9080");
    assert_eq!(line["status"], 200);
    assert_eq!(line["upstream"], backend.to_string());
    assert_eq!(line["response_flags"], "-");
    assert!(line["duration_ms"].as_f64().unwrap() >= 0.0);
    assert!(line["bytes_sent"].as_u64().unwrap() > 0);
    let line = p.wait_log(|v| v["request_id"] == "given-id-1");
    assert_eq!(line["status"], 503);

    let m = p.metrics();
    assert_eq!(
        metric_value(
            &m,
            "istio_requests_total",
            &[
                "reporter=\"source\"",
                "response_code=\"200\"",
                "source_workload=\"testwl\"",
                "source_workload_namespace=\"testns\"",
                // `reviews` names a Service of the proxy's namespace: its default route, so
                // the metric names the Service (as Istio's) rather than the raw authority.
                "destination_service=\"reviews.testns.svc.cluster.local\"",
                "request_protocol=\"http\"",
            ]
        ),
        1.0,
        "{m}"
    );
    assert_eq!(
        metric_value(&m, "istio_requests_total", &["response_code=\"503\""]),
        1.0
    );
    assert_eq!(
        metric_value(
            &m,
            "istio_request_duration_milliseconds_count",
            &["reporter=\"source\""]
        ),
        2.0
    );
    assert!(m.contains("istio_request_bytes_bucket{"), "{m}");
    assert!(m.contains("istio_response_bytes_sum{"), "{m}");
}

#[test]
fn http1_inbound_reaches_app_from_127_0_0_6_with_keepalive() {
    let rt = rt();
    let app = rt.block_on(spawn_http_echo("127.0.0.1:0".parse().unwrap(), "app-in"));
    let rules = RulesDir::new(&[]);
    let mut o = ProxyOpts::new(rules.path());
    o.fixed_inbound = Some(app);
    let mut p = ProxyProc::start(o);
    p.wait_ready();

    // Two requests on one keep-alive connection.
    let mut s = TcpStream::connect(p.ports.inbound_addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    for i in 0..2 {
        write!(
            s,
            "POST /in/{i} HTTP/1.1\r\nHost: productpage\r\nContent-Length: 5\r\n\r\nhello"
        )
        .unwrap();
        let mut reader = BufReader::new(&s);
        let mut status = String::new();
        reader.read_line(&mut status).unwrap();
        assert!(status.starts_with("HTTP/1.1 200"), "{status}");
        let mut len = 0usize;
        loop {
            let mut l = String::new();
            reader.read_line(&mut l).unwrap();
            if l == "\r\n" {
                break;
            }
            if let Some(v) = l.to_ascii_lowercase().strip_prefix("content-length:") {
                len = v.trim().parse().unwrap();
            }
        }
        let mut body = vec![0u8; len];
        reader.read_exact(&mut body).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["path"], format!("/in/{i}"));
        assert_eq!(v["body_len"], 5);
        let peer: SocketAddr = v["peer"].as_str().unwrap().parse().unwrap();
        assert_eq!(
            peer.ip().to_string(),
            "127.0.0.6",
            "app must see the inbound source"
        );
    }
    drop(s);
    let line = p.wait_log(|v| v["path"] == "/in/1");
    assert_eq!(line["direction"], "inbound");
    assert_eq!(line["bytes_received"], 5);
    let m = p.metrics();
    assert_eq!(
        metric_value(
            &m,
            "istio_requests_total",
            &[
                "reporter=\"destination\"",
                "destination_workload=\"testwl\"",
                "destination_workload_namespace=\"testns\""
            ]
        ),
        2.0,
        "{m}"
    );
}

#[test]
fn h2c_prior_knowledge_is_proxied_as_h2() {
    let rt = rt();
    let backend = rt.block_on(spawn_http_echo("127.0.0.1:0".parse().unwrap(), "h2app"));
    let rules = RulesDir::new(&[]);
    let mut o = ProxyOpts::new(rules.path());
    o.fixed_outbound = Some(backend);
    let mut p = ProxyProc::start(o);
    p.wait_ready();
    let addr = p.ports.outbound_addr();
    let v: serde_json::Value = rt.block_on(async move {
        use http_body_util::{BodyExt, Full};
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (mut send, conn) = hyper::client::conn::http2::handshake(
            hyper_util::rt::TokioExecutor::new(),
            hyper_util::rt::TokioIo::new(tcp),
        )
        .await
        .unwrap();
        tokio::spawn(conn);
        let req = http::Request::post("http://ratings.testns:9080/h2?q=1")
            .body(Full::new(bytes::Bytes::from_static(b"abc")))
            .unwrap();
        let resp = send.send_request(req).await.unwrap();
        assert_eq!(resp.status(), 200);
        let b = resp.into_body().collect().await.unwrap().to_bytes();
        serde_json::from_slice(&b).unwrap()
    });
    assert_eq!(v["server"], "h2app");
    assert_eq!(
        v["version"], "HTTP/2.0",
        "upstream must be h2 when downstream is h2"
    );
    assert_eq!(v["path"], "/h2?q=1");
    assert_eq!(v["body_len"], 3);
    let line = p.wait_log(|l| l["path"] == "/h2?q=1");
    assert_eq!(line["request_protocol"], "http2");
    assert_eq!(line["authority"], "ratings.testns:9080");
}

#[test]
fn opaque_tcp_client_first_is_passed_through_with_tcp_metrics() {
    let rt = rt();
    let echo = rt.block_on(spawn_tcp_echo());
    let rules = RulesDir::new(&[]);
    let mut o = ProxyOpts::new(rules.path());
    o.fixed_outbound = Some(echo);
    let mut p = ProxyProc::start(o);
    p.wait_ready();
    let mut s = TcpStream::connect(p.ports.outbound_addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    // Binary, non-HTTP first bytes (a TLS-like record header), then more data.
    let payload: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
    s.write_all(&[0x16, 0x03, 0x01]).unwrap();
    s.write_all(&payload).unwrap();
    let mut back = vec![0u8; 3 + payload.len()];
    s.read_exact(&mut back).unwrap();
    assert_eq!(&back[..3], &[0x16, 0x03, 0x01]);
    assert_eq!(&back[3..], &payload[..]);
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());
    let line = p.wait_log(|v| v["kind"] == "tcp");
    assert_eq!(line["bytes_received"], 10_003);
    assert_eq!(line["bytes_sent"], 10_003);
    assert_eq!(line["upstream"], echo.to_string());
    let m = p.metrics();
    let l = ["reporter=\"source\"", "request_protocol=\"tcp\""];
    assert_eq!(
        metric_value(&m, "istio_tcp_connections_opened_total", &l),
        1.0,
        "{m}"
    );
    assert_eq!(
        metric_value(&m, "istio_tcp_connections_closed_total", &l),
        1.0
    );
    assert_eq!(
        metric_value(&m, "istio_tcp_received_bytes_total", &l),
        10_003.0
    );
    assert_eq!(metric_value(&m, "istio_tcp_sent_bytes_total", &l), 10_003.0);
}

#[test]
fn server_first_protocol_works_after_the_bounded_sniff() {
    let rt = rt();
    let srv = rt.block_on(spawn_server_first("127.0.0.1:0".parse().unwrap()));
    let rules = RulesDir::new(&[]);
    let mut o = ProxyOpts::new(rules.path());
    o.fixed_outbound = Some(srv);
    o.extra_args.push("--sniff-timeout-ms=150".into());
    let mut p = ProxyProc::start(o);
    p.wait_ready();
    let s = TcpStream::connect(p.ports.outbound_addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut banner = String::new();
    // The client says nothing: the proxy must give up sniffing and connect upstream.
    r.read_line(&mut banner).unwrap();
    assert_eq!(banner, "220 remora-test banner ready\r\n");
    (&s).write_all(b"HELO me\r\n").unwrap();
    let mut l = String::new();
    r.read_line(&mut l).unwrap();
    assert_eq!(l, "echo: HELO me\r\n");
}

#[test]
fn connection_to_the_proxy_itself_is_refused_and_counted() {
    let rules = RulesDir::new(&[]);
    let o = ProxyOpts::new(rules.path());
    let ports = o.ports;
    // No fixed target: without iptables the original destination is the listener itself (or
    // unknown), so the proxy must refuse rather than connect to itself.
    let mut o = o;
    o.fixed_inbound = Some(SocketAddr::from(([127, 0, 0, 1], ports.inbound)));
    let mut p = ProxyProc::start(o);
    p.wait_ready();
    for addr in [p.ports.outbound_addr(), p.ports.inbound_addr()] {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let _ = s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
        let mut buf = Vec::new();
        let n = s.read_to_end(&mut buf).unwrap_or(0);
        assert_eq!(n, 0, "refused connection must be closed without an answer");
    }
    p.wait_stderr("refused connection");
    let m = p.metrics();
    let total = metric_value(&m, "remora_refused_connections_total", &[]);
    assert_eq!(total, 2.0, "{m}");
    assert!(
        metric_value(
            &m,
            "remora_refused_connections_total",
            &["listener=\"inbound\"", "reason=\"loop\""]
        ) == 1.0,
        "{m}"
    );
}

#[test]
fn upstream_down_answers_503_with_uf_flag() {
    // nothing listens there, and the port stays bound so no other test's server can take it
    let closed = DeadPort::new();
    let rules = RulesDir::new(&[]);
    let mut o = ProxyOpts::new(rules.path());
    o.fixed_outbound = Some(closed.addr());
    let mut p = ProxyProc::start(o);
    p.wait_ready();
    let r = http_get(p.ports.outbound_addr(), "/down", &[]).unwrap();
    assert_eq!(r.status, 503, "{}", r.body_text());
    let line = p.wait_log(|v| v["path"] == "/down");
    assert_eq!(line["response_flags"], "UF");
    let m = p.metrics();
    assert_eq!(
        metric_value(
            &m,
            "istio_requests_total",
            &["response_code=\"503\"", "response_flags=\"UF\""]
        ),
        1.0,
        "{m}"
    );
}

#[test]
fn admin_endpoints_content() {
    let rules = RulesDir::new(&[]);
    let mut o = ProxyOpts::new(rules.path());
    // gRPC, HTTP and TCP probes of the app; only the TCP one points at a live port.
    let live = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let live_port = live.local_addr().unwrap().port();
    // refused, and held bound so no other test's server can take it
    let dead = DeadPort::new();
    let dead_port = dead.port;
    o.env.push((
        "ISTIO_KUBE_APP_PROBERS".into(),
        format!(
            r#"{{"/app-health/web/readyz": {{"tcpSocket": {{"port": {live_port}}}}},
                "/app-health/web/livez": {{"httpGet": {{"path": "/healthz", "port": {dead_port}}}, "timeoutSeconds": 1}}}}"#
        ),
    ));
    o.fixed_outbound = Some(SocketAddr::from(([127, 0, 0, 1], dead_port)));
    let mut p = ProxyProc::start(o);
    p.wait_ready();
    // One (failing) request so the request metric families have a sample.
    assert_eq!(
        http_get(p.ports.outbound_addr(), "/x", &[]).unwrap().status,
        503
    );

    let r = http_get(p.ports.health_addr(), "/healthz/ready", &[]).unwrap();
    assert_eq!(r.status, 200);
    assert!(r.body_text().contains("generation 1"), "{}", r.body_text());

    let r = http_get(p.ports.admin_addr(), "/config_dump", &[]).unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/json"));
    let v = r.json();
    assert_eq!(v["generation"], 1);
    assert!(v["hash"].is_string());
    assert!(v["source"]
        .as_str()
        .unwrap()
        .contains(rules.path().to_str().unwrap()));
    assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(v["rules"]["generation"], 1);
    assert_eq!(v["listeners"][0]["name"], "outbound");
    assert_eq!(
        v["listeners"][0]["address"],
        p.ports.outbound_addr().to_string()
    );
    assert_eq!(v["listeners"][0]["bound"], true);
    assert_eq!(v["listeners"][1]["name"], "inbound");
    assert_eq!(v["listeners"][1]["source_address"], "127.0.0.6");
    assert_eq!(v["workload"]["name"], "testwl");

    let r = http_get(p.ports.prometheus_addr(), "/stats/prometheus", &[]).unwrap();
    assert_eq!(r.status, 200);
    let m = r.body_text();
    assert!(m.contains("# TYPE istio_requests_total counter"), "{m}");
    assert!(
        m.contains("# TYPE istio_request_duration_milliseconds histogram"),
        "{m}"
    );
    assert!(m.contains("remora_config_generation 1"), "{m}");
    assert!(m.contains("remora_config_reload_errors_total 0"), "{m}");
    // The same registry is on the admin port.
    let r = http_get(p.ports.admin_addr(), "/stats/prometheus", &[]).unwrap();
    assert!(r
        .body_text()
        .contains("# TYPE istio_requests_total counter"));

    let r = http_get(p.ports.admin_addr(), "/app-health/web/readyz", &[]).unwrap();
    assert_eq!(r.status, 200, "{}", r.body_text());
    let r = http_get(p.ports.admin_addr(), "/app-health/web/livez", &[]).unwrap();
    assert_eq!(r.status, 503, "{}", r.body_text());
    assert!(r.body_text().contains(&format!("127.0.0.1:{dead_port}")));
    let r = http_get(p.ports.admin_addr(), "/app-health/other/livez", &[]).unwrap();
    assert_eq!(r.status, 404);
    // Admin-only paths are not on the health port.
    assert_eq!(
        http_get(p.ports.health_addr(), "/config_dump", &[])
            .unwrap()
            .status,
        404
    );
    // The configuration goes to the pod itself only: not to the proxy's own inbound source
    // address (127.0.0.6), which carries other pods' connections should the port be captured.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut s = rt
        .block_on(async {
            let s = tokio::net::TcpSocket::new_v4()?;
            s.bind("127.0.0.6:0".parse().unwrap())?;
            s.connect(p.ports.admin_addr()).await?.into_std()
        })
        .unwrap();
    s.set_nonblocking(false).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET /config_dump HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
    assert!(answer.contains("only from localhost"), "{answer}");
    drop(live);
}

#[test]
fn bad_start_inputs_fail_with_one_clear_line() {
    // Invalid probes JSON: the process exits 1 with a one-line reason naming the env var.
    let rules = RulesDir::new(&[]);
    let out = std::process::Command::new(proxy_bin())
        .args(["run", "--rules-dir"])
        .arg(rules.path())
        .env("ISTIO_KUBE_APP_PROBERS", "{not json")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("ISTIO_KUBE_APP_PROBERS: invalid JSON"),
        "{err}"
    );

    // A port already taken: exit 1 naming the listener and address.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let out = std::process::Command::new(proxy_bin())
        .args(["run", &format!("--outbound-addr={addr}"), "--rules-dir"])
        .arg(rules.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("outbound listener {addr}")), "{err}");
}

#[test]
fn sigterm_drains_in_flight_requests_and_exits_zero() {
    let rt = rt();
    let backend = rt.block_on(spawn_http_echo("127.0.0.1:0".parse().unwrap(), "slow"));
    let rules = RulesDir::new(&[]);
    let mut o = ProxyOpts::new(rules.path());
    o.fixed_outbound = Some(backend);
    let mut p = ProxyProc::start(o);
    p.wait_ready();
    // A request that is still in flight when SIGTERM arrives (the app answers after 700 ms;
    // the drain is 1 s).
    let out = p.ports.outbound_addr();
    let sent = std::time::Instant::now();
    let in_flight = std::thread::spawn(move || http_get(out, "/delay/700", &[]));
    std::thread::sleep(Duration::from_millis(200));
    let pid = nix::unistd::Pid::from_raw(p.child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    // Readiness turns 503 during the drain, then the process exits 0.
    let mut saw_503 = false;
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        if let Ok(Some(st)) = p.child.try_wait() {
            assert!(st.success(), "exit status {st}");
            break;
        }
        if let Ok(r) = http_get(p.ports.health_addr(), "/healthz/ready", &[]) {
            if r.status == 503 {
                saw_503 = true;
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "did not exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(saw_503, "readiness should report 503 while draining");
    p.wait_stderr("draining");
    let r = in_flight.join().unwrap().expect("in-flight request");
    assert_eq!(r.status, 200, "{}", r.body_text());
    assert_eq!(r.json()["path"], "/delay/700");
    // It really was in flight: the backend held it past the SIGTERM.
    assert!(
        sent.elapsed() >= Duration::from_millis(700),
        "the backend did not hold the request"
    );
}

#[test]
fn quitquitquit_stops_the_proxy_gracefully() {
    let rules = RulesDir::new(&[]);
    let mut p = ProxyProc::start(ProxyOpts::new(rules.path()));
    p.wait_ready();
    let r = http_get(p.ports.admin_addr(), "/quitquitquit", &[]).unwrap();
    assert_eq!(r.status, 405, "GET must not stop the proxy");
    assert!(p.child.try_wait().unwrap().is_none());
    let r = http_request(p.ports.admin_addr(), "POST", "/quitquitquit", &[], b"").unwrap();
    assert_eq!(r.status, 200);
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let st = loop {
        if let Some(st) = p.child.try_wait().unwrap() {
            break st;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still running after /quitquitquit"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(st.success(), "{st}");
}

/// Envoy's answers for a broken upstream, which Istio users alert on: a reply that is not HTTP
/// is 502 `UPE`; a connection closed before any answer is 503 `UC`.
#[test]
fn broken_upstream_answers_are_502_upe_and_closed_ones_503_uc() {
    // An upstream that reads the request head, then answers garbage or just closes.
    fn spawn_broken(answer: &'static [u8]) -> SocketAddr {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        std::thread::spawn(move || {
            for s in l.incoming().flatten() {
                let mut s = s;
                let mut r = BufReader::new(s.try_clone().unwrap());
                let mut line = String::new();
                while r.read_line(&mut line).is_ok_and(|n| n > 0) && line != "\r\n" {
                    line.clear();
                }
                let _ = s.write_all(answer);
            }
        });
        addr
    }
    for (answer, status, flag) in [
        (&b"SMTP 220 not http at all\r\n\r\n"[..], 502, "UPE"),
        (&b""[..], 503, "UC"),
    ] {
        let rules = RulesDir::new(&[]);
        let mut o = ProxyOpts::new(rules.path());
        o.fixed_outbound = Some(spawn_broken(answer));
        let mut p = ProxyProc::start(o);
        p.wait_ready();
        let r = http_get(p.ports.outbound_addr(), "/broken", &[]).unwrap();
        assert_eq!(r.status, status, "{}", r.body_text());
        let l = p.wait_log(|l| l["path"] == "/broken");
        assert_eq!(l["response_flags"], flag, "{l}");
    }
}
