//! Process tests of the per-request downstream timeouts and the per-listener connection caps
//! (`proxy/src/guard/stream_idle.rs`, `guard/gate.rs`): the real binary on loopback, real
//! sockets, each limit shortened by its flag.

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
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(15))).unwrap();
    s
}

fn start_with(o: ProxyOpts, args: &[&str]) -> ProxyProc {
    let mut o = o;
    o.extra_args = args.iter().map(|s| s.to_string()).collect();
    let mut p = ProxyProc::start(o);
    p.wait_ready();
    p
}

fn rejected(p: &ProxyProc, reason: &str) -> f64 {
    metric_value(
        &p.metrics(),
        "remora_downstream_rejected_total",
        &[&format!("reason=\"{reason}\"")],
    )
}

fn wait_rejected(p: &ProxyProc, reason: &str, n: f64) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while rejected(p, reason) < n {
        assert!(Instant::now() < deadline, "{reason} not counted");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// An h2 stream that sends HEADERS (no END_STREAM) and then nothing is reset after the stream
/// idle timeout; the connection-level idle timeout (1 h) would never end it.
#[test]
fn silent_h2_stream_is_reset_after_the_stream_idle_timeout() {
    let rt = rt();
    let backend = rt.block_on(spawn_http_echo("127.0.0.1:0".parse().unwrap(), "h2app"));
    let rules = RulesDir::new(&[]);
    let mut o = ProxyOpts::new(rules.path());
    o.fixed_outbound = Some(backend);
    let p = start_with(o, &["--stream-idle-timeout-seconds=1"]);
    let out = p.ports.outbound_addr();
    let t = Instant::now();
    let got = rt.block_on(async move {
        use http_body_util::StreamBody;
        let tcp = tokio::net::TcpStream::connect(out).await.unwrap();
        let (mut send, conn) = hyper::client::conn::http2::handshake(
            hyper_util::rt::TokioExecutor::new(),
            hyper_util::rt::TokioIo::new(tcp),
        )
        .await
        .unwrap();
        tokio::spawn(conn);
        // A request body that never comes (the sender is kept, so the stream stays open).
        let (tx, rx) = tokio::sync::mpsc::channel::<
            Result<hyper::body::Frame<bytes::Bytes>, std::convert::Infallible>,
        >(1);
        let body = StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx));
        let req = http::Request::post("http://app:9080/upload")
            .body(body)
            .unwrap();
        let r = tokio::time::timeout(Duration::from_secs(20), send.send_request(req)).await;
        drop(tx);
        match r {
            Err(_) => Err("no reset within 20 s".to_string()),
            Ok(Ok(resp)) => Ok(format!("answered {}", resp.status())),
            Ok(Err(e)) => Ok(format!("reset: {e}")),
        }
    });
    let got = got.unwrap();
    assert!(got.starts_with("reset"), "{got}");
    assert!(
        t.elapsed() >= Duration::from_millis(900),
        "{:?}",
        t.elapsed()
    );
    wait_rejected(&p, "stream_idle_timeout", 1.0);
}

/// HTTP/1: a request whose head promises a body that never comes is closed after the stream
/// idle timeout.
#[test]
fn silent_http1_request_body_is_closed_after_the_stream_idle_timeout() {
    let rt = rt();
    let backend = rt.block_on(spawn_http_echo("127.0.0.1:0".parse().unwrap(), "app"));
    let rules = RulesDir::new(&[]);
    let mut o = ProxyOpts::new(rules.path());
    o.fixed_outbound = Some(backend);
    let p = start_with(o, &["--stream-idle-timeout-seconds=1"]);
    let mut s = connect(p.ports.outbound_addr());
    s.write_all(b"POST /up HTTP/1.1\r\nHost: app\r\nContent-Length: 100\r\n\r\nabc")
        .unwrap();
    let t = Instant::now();
    let mut rest = Vec::new();
    let r = s.read_to_end(&mut rest);
    assert!(
        t.elapsed() < Duration::from_secs(14),
        "not closed: {r:?} after {:?}",
        t.elapsed()
    );
    assert!(
        t.elapsed() >= Duration::from_millis(900),
        "{:?}",
        t.elapsed()
    );
}

/// A raw upstream answering every request with a `len`-byte body.
fn spawn_big_upstream(len: usize) -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                let mut head = Vec::new();
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = s.write_all(
                    format!("HTTP/1.1 200 OK\r\ncontent-length: {len}\r\n\r\n").as_bytes(),
                );
                let chunk = vec![b'x'; 64 * 1024];
                let mut left = len;
                while left > 0 {
                    let n = left.min(chunk.len());
                    if s.write_all(&chunk[..n]).is_err() {
                        return;
                    }
                    left -= n;
                }
            });
        }
    });
    addr
}

/// A client that asks for a large response and never reads it is disconnected after the
/// downstream write timeout (instead of holding the connection for as long as it likes).
#[test]
fn client_that_never_reads_is_disconnected_after_the_write_timeout() {
    const LEN: usize = 256 * 1024 * 1024;
    let backend = spawn_big_upstream(LEN);
    let rules = RulesDir::new(&[]);
    let mut o = ProxyOpts::new(rules.path());
    o.fixed_outbound = Some(backend);
    let p = start_with(o, &["--downstream-write-timeout-seconds=1"]);
    let mut s = connect(p.ports.outbound_addr());
    s.write_all(b"GET /big HTTP/1.1\r\nHost: app\r\n\r\n")
        .unwrap();
    // Do not read: the socket buffers fill, the proxy's writes stall.
    std::thread::sleep(Duration::from_secs(4));
    let mut total = 0usize;
    let mut buf = vec![0u8; 1 << 20];
    let t = Instant::now();
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => total += n,
        }
        assert!(t.elapsed() < Duration::from_secs(60), "still streaming");
    }
    assert!(
        total < LEN,
        "the whole response ({total} bytes) was delivered: the stalled client was never disconnected"
    );
    let _ = p;
}

/// Inbound and outbound have separate caps: remote peers filling the inbound cap leave the
/// pod's outbound connections accepted.
#[test]
fn full_inbound_cap_leaves_outbound_accepted() {
    const CAP: usize = 3;
    let rt = rt();
    let echo = rt.block_on(spawn_tcp_echo());
    let rules = RulesDir::new(&[]);
    let mut o = ProxyOpts::new(rules.path());
    o.fixed_outbound = Some(echo);
    o.fixed_inbound = Some(echo);
    let p = start_with(
        o,
        &[
            &format!("--max-inbound-connections={CAP}"),
            "--max-outbound-connections=100",
        ],
    );
    let echo_ok = |s: &mut TcpStream, msg: &[u8]| -> bool {
        if s.write_all(msg).is_err() {
            return false;
        }
        let mut got = vec![0u8; msg.len()];
        s.read_exact(&mut got).is_ok() && got == msg
    };
    let big = vec![b'z'; 2048];
    let mut held: Vec<TcpStream> = (0..CAP).map(|_| connect(p.ports.inbound_addr())).collect();
    for s in held.iter_mut() {
        assert!(
            echo_ok(s, &big),
            "an inbound connection under the cap was not served"
        );
    }
    let mut over = connect(p.ports.inbound_addr());
    assert!(
        !echo_ok(&mut over, b"over\n"),
        "inbound over the cap was served"
    );
    assert_eq!(rejected(&p, "connection_limit"), 1.0);
    // Outbound still accepts, several at once.
    let mut outs: Vec<TcpStream> = (0..CAP + 2)
        .map(|_| connect(p.ports.outbound_addr()))
        .collect();
    for s in outs.iter_mut() {
        assert!(
            echo_ok(s, &big),
            "outbound refused while the inbound cap is full"
        );
    }
    assert_eq!(rejected(&p, "connection_limit"), 1.0);
    drop(held);
}

/// Inbound: an app that accepts a request and never answers gets the request ended with 504 after
/// the default inbound upstream read timeout (no route timeout set).
#[test]
fn stuck_app_on_inbound_gets_504_after_the_upstream_read_timeout() {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let app = l.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in l.incoming().flatten() {
            held.push(s); // read nothing, answer nothing
        }
    });
    let rules = RulesDir::new(&[]);
    let mut o = ProxyOpts::new(rules.path());
    o.fixed_inbound = Some(app);
    let p = start_with(o, &["--inbound-upstream-read-timeout-seconds=1"]);
    let mut s = connect(p.ports.inbound_addr());
    let t = Instant::now();
    s.write_all(b"GET /stuck HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let r =
        parse_response(&raw).unwrap_or_else(|e| panic!("{e}: {:?}", String::from_utf8_lossy(&raw)));
    assert_eq!(r.status, 504, "{}", r.body_text());
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
}
