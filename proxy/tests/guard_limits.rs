//! Process tests of the downstream abuse limits (`proxy/src/guard.rs`) and the start-up privilege
//! check: the real binary on loopback, raw TCP clients. Each limit is set small by its flag, a
//! request just under it passes, one just over it gets the documented answer (or close), and
//! `remora_downstream_rejected_total{reason}` counts it.

mod common;

use common::*;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

/// Send `raw` and read until the proxy closes (bounded by the 10 s read timeout).
fn exchange(addr: SocketAddr, raw: &[u8]) -> Vec<u8> {
    let mut s = connect(addr);
    s.write_all(raw).unwrap();
    let mut out = Vec::new();
    // A reset after the answer is a close too; keep what was read.
    let _ = s.read_to_end(&mut out);
    out
}

fn status_of(raw: &[u8]) -> u16 {
    parse_response(raw)
        .unwrap_or_else(|e| panic!("{e}: {:?}", String::from_utf8_lossy(raw)))
        .status
}

fn rejected(p: &ProxyProc, reason: &str) -> f64 {
    metric_value(
        &p.metrics(),
        "remora_downstream_rejected_total",
        &[&format!("reason=\"{reason}\"")],
    )
}

/// A request whose request line is exactly `line_len` bytes (without CRLF), with `extra`
/// additional header lines, `Connection: close`.
fn request(line_len: usize, extra: &[String]) -> Vec<u8> {
    let fixed = "GET / HTTP/1.1".len();
    let line = format!("GET /{} HTTP/1.1", "a".repeat(line_len - fixed));
    assert_eq!(line.len(), line_len);
    let mut r = format!("{line}\r\nHost: app\r\nConnection: close\r\n");
    for h in extra {
        r.push_str(h);
        r.push_str("\r\n");
    }
    r.push_str("\r\n");
    r.into_bytes()
}

fn start(args: &[&str], backend: SocketAddr, rules: &RulesDir) -> ProxyProc {
    let mut o = ProxyOpts::new(rules.path());
    o.fixed_outbound = Some(backend);
    o.extra_args = args.iter().map(|s| s.to_string()).collect();
    let mut p = ProxyProc::start(o);
    p.wait_ready();
    p
}

#[test]
fn header_limits_answer_414_431_and_are_counted() {
    let rt = rt();
    let backend = rt.block_on(spawn_http_echo("127.0.0.1:0".parse().unwrap(), "app"));
    let rules = RulesDir::new(&[]);
    let p = start(
        &[
            "--max-request-line-kb=1",
            "--max-request-headers-kb=2",
            "--max-request-headers=6",
        ],
        backend,
        &rules,
    );
    let out = p.ports.outbound_addr();

    // Request line: 1024 bytes pass, 1025 get 414.
    let r = exchange(out, &request(1024, &[]));
    assert_eq!(status_of(&r), 200, "{}", String::from_utf8_lossy(&r));
    let r = exchange(out, &request(1025, &[]));
    assert_eq!(status_of(&r), 414, "{}", String::from_utf8_lossy(&r));
    let resp = parse_response(&r).unwrap();
    assert_eq!(resp.header("connection"), Some("close"));
    assert_eq!(rejected(&p, "request_line_too_long"), 1.0);

    // Header count: Host + Connection + 4 = 6 pass; 7 get 431.
    let hs = |n: usize| (0..n).map(|i| format!("x-h{i}: v")).collect::<Vec<_>>();
    let r = exchange(out, &request(20, &hs(4)));
    assert_eq!(status_of(&r), 200, "{}", String::from_utf8_lossy(&r));
    let r = exchange(out, &request(20, &hs(5)));
    assert_eq!(status_of(&r), 431, "{}", String::from_utf8_lossy(&r));
    assert_eq!(rejected(&p, "too_many_headers"), 1.0);

    // Head size: exactly 2048 bytes pass, 2049 get 431.
    let sized = |total: usize| {
        let base = request(20, &["x-pad: ".to_string()]).len();
        request(20, &[format!("x-pad: {}", "p".repeat(total - base))])
    };
    assert_eq!(sized(2048).len(), 2048);
    let r = exchange(out, &sized(2048));
    assert_eq!(status_of(&r), 200, "{}", String::from_utf8_lossy(&r));
    let r = exchange(out, &sized(2049));
    assert_eq!(status_of(&r), 431, "{}", String::from_utf8_lossy(&r));
    // A client that never ends its head is cut at the limit too.
    let mut endless = request(20, &[]);
    endless.truncate(endless.len() - 2);
    endless.extend_from_slice(b"x-endless: ");
    endless.extend(std::iter::repeat_n(b'e', 8192));
    let r = exchange(out, &endless);
    assert_eq!(status_of(&r), 431, "{}", String::from_utf8_lossy(&r));
    assert_eq!(rejected(&p, "headers_too_large"), 2.0);

    // The passing requests reached the app and were counted as requests, the rejected ones not.
    let m = p.metrics_when(
        "istio_requests_total",
        &["response_code=\"200\"", "reporter=\"source\""],
        3.0,
    );
    assert_eq!(
        metric_value(
            &m,
            "istio_requests_total",
            &["response_code=\"200\"", "reporter=\"source\""]
        ),
        3.0,
        "{m}"
    );
}

#[test]
fn slowloris_gets_408_and_keepalive_idle_is_closed() {
    let rt = rt();
    let backend = rt.block_on(spawn_http_echo("127.0.0.1:0".parse().unwrap(), "app"));
    let rules = RulesDir::new(&[]);
    let p = start(
        &[
            "--request-headers-timeout-seconds=1",
            "--idle-timeout-seconds=1",
        ],
        backend,
        &rules,
    );
    let out = p.ports.outbound_addr();

    // Slowloris: a head dribbled one header line at a time, never finished. The client stops
    // after 40 lines (bounded); the proxy must have cut it before that with a 408.
    let mut s = connect(out);
    s.write_all(b"GET / HTTP/1.1\r\nHost: app\r\n").unwrap();
    let mut sent_lines = 0;
    for i in 0..40 {
        std::thread::sleep(Duration::from_millis(250));
        // Stop as soon as the proxy answered or closed.
        s.set_nonblocking(true).unwrap();
        let answered = !matches!(s.peek(&mut [0u8; 1]), Err(ref e) if e.kind() == std::io::ErrorKind::WouldBlock);
        s.set_nonblocking(false).unwrap();
        if answered {
            break;
        }
        if s.write_all(format!("x-slow-{i}: v\r\n").as_bytes())
            .is_err()
        {
            break;
        }
        sent_lines += 1;
    }
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got);
    assert_eq!(status_of(&got), 408, "{}", String::from_utf8_lossy(&got));
    assert!(sent_lines < 40, "the slow client was never cut off");
    assert_eq!(rejected(&p, "header_timeout"), 1.0);

    // Keep-alive: two requests on one connection are both served (the guard reads each head),
    // then the idle connection is closed by the proxy.
    let mut s = connect(out);
    for i in 0..2 {
        s.write_all(format!("GET /ka/{i} HTTP/1.1\r\nHost: app\r\n\r\n").as_bytes())
            .unwrap();
        let resp = read_one_response(&mut s);
        assert_eq!(resp.status, 200);
        assert_eq!(resp.json()["path"], format!("/ka/{i}"));
    }
    let started = Instant::now();
    let mut rest = Vec::new();
    let n = s.read_to_end(&mut rest).unwrap_or(0);
    assert_eq!(n, 0, "idle close sends nothing: {:?}", rest);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "not closed by the proxy"
    );
    assert_eq!(rejected(&p, "idle_timeout"), 1.0);
}

/// Read one response with a content-length body from a kept-alive connection.
fn read_one_response(s: &mut TcpStream) -> HttpResp {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        assert_eq!(s.read(&mut byte).unwrap(), 1, "closed mid-head");
        buf.push(byte[0]);
    }
    let head = parse_response(&buf).unwrap();
    let len: usize = head
        .header("content-length")
        .expect("content-length")
        .parse()
        .unwrap();
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).unwrap();
    buf.extend_from_slice(&body);
    parse_response(&buf).unwrap()
}

#[test]
fn connection_cap_holds_under_n_plus_5_and_recovers() {
    const CAP: usize = 4;
    let rt = rt();
    let backend = rt.block_on(spawn_tcp_echo());
    let rules = RulesDir::new(&[]);
    // Tiny HTTP limits: opaque TCP must not be subject to them.
    let p = start(
        &[
            &format!("--max-downstream-connections={CAP}"),
            "--max-request-headers-kb=1",
            "--max-request-line-kb=1",
        ],
        backend,
        &rules,
    );
    let out = p.ports.outbound_addr();
    let echo = |s: &mut TcpStream, msg: &[u8]| -> bool {
        if s.write_all(msg).is_err() {
            return false;
        }
        let mut got = vec![0u8; msg.len()];
        s.read_exact(&mut got).is_ok() && got == msg
    };
    // CAP connections held open, each proven established by an echo (2 KiB of non-HTTP bytes).
    let big = vec![b'z'; 2048];
    let mut held: Vec<TcpStream> = (0..CAP).map(|_| connect(out)).collect();
    for s in held.iter_mut() {
        assert!(echo(s, &big), "a connection under the cap was not served");
    }
    assert_eq!(
        metric_value(&p.metrics(), "remora_downstream_connections", &[]),
        CAP as f64
    );
    // 5 more: each closed without being served.
    for _ in 0..5 {
        let mut s = connect(out);
        assert!(
            !echo(&mut s, b"over\n"),
            "a connection over the cap was served"
        );
    }
    assert_eq!(rejected(&p, "connection_limit"), 5.0);
    // Release: the gauge drops back and a new connection is served again.
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(WAIT_S);
    while metric_value(&p.metrics(), "remora_downstream_connections", &[]) != 0.0 {
        assert!(Instant::now() < deadline, "connections not released");
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut s = connect(out);
    assert!(
        echo(&mut s, b"after\n"),
        "not served after the cap freed up"
    );
    assert_eq!(rejected(&p, "connection_limit"), 5.0);
}

#[test]
fn runs_without_capabilities_and_refuses_root_in_a_pod() {
    let rules = RulesDir::new(&[]);
    let backend: SocketAddr = "127.0.0.1:9".parse().unwrap();
    // Outside a pod (these tests run as root): starts, but holds no capabilities.
    let p = start(&[], backend, &rules);
    let status = std::fs::read_to_string(format!("/proc/{}/status", p.child.id())).unwrap();
    let field = |k: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{k}:")))
            .map(|v| v.trim().to_string())
            .unwrap_or_else(|| panic!("{k} not in status"))
    };
    assert_eq!(field("CapEff"), "0000000000000000");
    assert_eq!(field("CapPrm"), "0000000000000000");
    assert_eq!(field("CapAmb"), "0000000000000000");
    assert_eq!(field("NoNewPrivs"), "1");
    p.wait_stderr("no capabilities held");
    drop(p);

    if !nix::unistd::geteuid().is_root() {
        eprintln!("not root: the uid-0 refusal cannot be exercised");
        return;
    }
    // As uid 0 in what looks like an injected pod: refused, one clear line, exit 1.
    let mut o = ProxyOpts::new(rules.path());
    o.env = vec![
        ("KUBERNETES_SERVICE_HOST".into(), "10.96.0.1".into()),
        ("POD_NAME".into(), "reviews-1".into()),
    ];
    let mut p = ProxyProc::start(o);
    let deadline = Instant::now() + Duration::from_secs(WAIT_START_S);
    let st = loop {
        if let Some(st) = p.child.try_wait().unwrap() {
            break st;
        }
        assert!(
            Instant::now() < deadline,
            "proxy kept running as root in a pod"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(st.code(), Some(1));
    let line = p.wait_stderr("refusing to run as uid 0");
    assert!(line.contains("--allow-root"), "{line}");

    // ... unless explicitly allowed.
    let mut o = ProxyOpts::new(rules.path());
    o.env = vec![
        ("KUBERNETES_SERVICE_HOST".into(), "10.96.0.1".into()),
        ("POD_NAME".into(), "reviews-1".into()),
    ];
    o.extra_args = vec!["--allow-root".into()];
    let mut p = ProxyProc::start(o);
    p.wait_ready();
}

/// h2c: the limits are the server's SETTINGS (read from the wire), an oversized header list
/// never reaches the app, and an idle h2c connection is closed.
#[test]
fn h2c_settings_carry_the_limits_and_idle_connections_close() {
    let rt = rt();
    let backend = rt.block_on(spawn_http_echo("127.0.0.1:0".parse().unwrap(), "h2app"));
    let rules = RulesDir::new(&[]);
    let p = start(
        &[
            "--max-request-headers-kb=2",
            "--max-request-line-kb=1",
            "--h2-max-concurrent-streams=3",
            "--idle-timeout-seconds=1",
        ],
        backend,
        &rules,
    );
    let out = p.ports.outbound_addr();

    // Raw preface + empty SETTINGS; the server's first frame is its SETTINGS.
    let mut s = connect(out);
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").unwrap();
    s.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0]).unwrap();
    let mut head = [0u8; 9];
    s.read_exact(&mut head).unwrap();
    assert_eq!(head[3], 4, "first server frame is not SETTINGS: {head:?}");
    let len = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
    let mut payload = vec![0u8; len];
    s.read_exact(&mut payload).unwrap();
    let settings: std::collections::BTreeMap<u16, u32> = payload
        .chunks_exact(6)
        .map(|c| {
            (
                u16::from_be_bytes([c[0], c[1]]),
                u32::from_be_bytes([c[2], c[3], c[4], c[5]]),
            )
        })
        .collect();
    assert_eq!(
        settings.get(&3),
        Some(&3),
        "MAX_CONCURRENT_STREAMS: {settings:?}"
    );
    assert_eq!(
        settings.get(&6),
        Some(&2048),
        "MAX_HEADER_LIST_SIZE: {settings:?}"
    );
    // Idle (no stream opened): the proxy closes the connection (bounded by the read timeout).
    let mut rest = Vec::new();
    let closed = s.read_to_end(&mut rest).is_ok();
    assert!(closed, "idle h2c connection not closed");
    drop(s);

    // Through a real h2 client: a small header list passes, a 3 KiB one never reaches the app.
    let (small, big) = rt.block_on(async move {
        use http_body_util::{BodyExt, Empty};
        let tcp = tokio::net::TcpStream::connect(out).await.unwrap();
        let (mut send, conn) = hyper::client::conn::http2::handshake(
            hyper_util::rt::TokioExecutor::new(),
            hyper_util::rt::TokioIo::new(tcp),
        )
        .await
        .unwrap();
        tokio::spawn(conn);
        let req = |v: String| {
            http::Request::get("http://app:9080/h2")
                .header("x-pad", v)
                .body(Empty::<bytes::Bytes>::new())
                .unwrap()
        };
        let small = send.send_request(req("s".repeat(512))).await.unwrap();
        let small_status = small.status().as_u16();
        let _ = small.into_body().collect().await;
        let big = match send.send_request(req("b".repeat(3072))).await {
            Ok(r) => Ok(r.status().as_u16()),
            Err(e) => Err(e.to_string()),
        };
        (small_status, big)
    });
    assert_eq!(small, 200);
    match big {
        Ok(code) => assert_eq!(code, 431, "oversized h2 header list answered {code}"),
        Err(e) => eprintln!("oversized h2 header list refused: {e}"),
    }
    let m = p.metrics_when("istio_requests_total", &["response_code=\"200\""], 1.0);
    assert_eq!(
        metric_value(&m, "istio_requests_total", &["response_code=\"200\""]),
        1.0,
        "{m}"
    );
}

/// On a port the rules declare HTTP, a client that connects and sends nothing is closed without
/// an answer once the head deadline passes, and counted; the app never sees it.
#[test]
fn silent_client_on_a_declared_http_port_is_closed_without_an_answer() {
    let rt = rt();
    let backend = rt.block_on(spawn_http_echo("127.0.0.1:0".parse().unwrap(), "app"));
    let rules = RulesDir::new(&[(
        "app.yaml",
        &format!(
            r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: app
  namespace: testns
spec:
  hosts: [app.example]
  addresses: [127.0.0.1/32]
  location: MESH_INTERNAL
  ports:
  - {{number: {}, name: http, protocol: HTTP}}
  resolution: NONE
"#,
            backend.port()
        ),
    )]);
    let p = start(&["--request-headers-timeout-seconds=1"], backend, &rules);
    let mut s = connect(p.ports.outbound_addr());
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut got = Vec::new();
    let r = s.read_to_end(&mut got);
    assert!(r.is_ok(), "not closed: {r:?}");
    assert!(
        got.is_empty(),
        "answered: {:?}",
        String::from_utf8_lossy(&got)
    );
    assert_eq!(rejected(&p, "header_timeout"), 1.0);
    let m = p.metrics();
    assert_eq!(metric_value(&m, "istio_requests_total", &[]), 0.0, "{m}");
    assert_eq!(
        metric_value(&m, "istio_tcp_connections_opened_total", &[]),
        0.0,
        "{m}"
    );
}

/// Opaque TCP: bytes pass both ways, and a connection on which neither side sends anything for
/// the idle timeout is closed by the proxy and counted (byte counts still recorded).
#[test]
fn idle_opaque_tcp_is_closed_after_the_idle_timeout() {
    let rt = rt();
    let echo = rt.block_on(spawn_tcp_echo());
    let rules = RulesDir::new(&[]);
    let p = start(&["--idle-timeout-seconds=1"], echo, &rules);
    let mut s = connect(p.ports.outbound_addr());
    let payload = vec![0x42u8; 3000];
    s.write_all(&payload).unwrap();
    let mut got = vec![0u8; payload.len()];
    s.read_exact(&mut got).unwrap();
    assert_eq!(got, payload);
    let mut rest = Vec::new();
    assert!(s.read_to_end(&mut rest).is_ok(), "idle TCP not closed");
    assert!(rest.is_empty());
    let deadline = Instant::now() + Duration::from_secs(WAIT_S);
    while rejected(&p, "idle_timeout") < 1.0 {
        assert!(Instant::now() < deadline, "idle close not counted");
        std::thread::sleep(Duration::from_millis(20));
    }
    // the connection's TCP metrics are recorded as it ends, maybe just after the idle count
    let m = p.metrics_when("istio_tcp_connections_closed_total", &[], 1.0);
    assert_eq!(
        metric_value(&m, "istio_tcp_received_bytes_total", &[]),
        3000.0,
        "{m}"
    );
    assert_eq!(
        metric_value(&m, "istio_tcp_connections_closed_total", &[]),
        1.0,
        "{m}"
    );
}
