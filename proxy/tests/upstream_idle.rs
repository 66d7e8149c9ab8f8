//! Process test of the upstream connection idle timeout (`proxy/src/http/peer.rs`): a
//! DestinationRule's `connectionPool.http.idleTimeout` closes a pooled upstream connection that
//! long after its last request; without one the proxy keeps it for its 30 s default. The real
//! binary on loopback, a raw backend that notes when the proxy closes its connection.

mod common;

use common::*;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// A backend answering keep-alive requests, one connection at a time; sends the time from its
/// last answer to the proxy closing the connection.
fn backend() -> (SocketAddr, mpsc::Receiver<Duration>) {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for conn in l.incoming().take(4) {
            let Ok(mut c) = conn else { return };
            let _ = c.set_read_timeout(Some(Duration::from_secs(60)));
            let mut buf = [0u8; 4096];
            let mut last = Instant::now();
            loop {
                match c.read(&mut buf) {
                    Ok(0) | Err(_) => {
                        let _ = tx.send(last.elapsed());
                        break;
                    }
                    Ok(n) if buf[..n].windows(4).any(|w| w == b"\r\n\r\n") => {
                        let _ = c.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
                        last = Instant::now();
                    }
                    Ok(_) => {}
                }
            }
        }
    });
    (addr, rx)
}

/// One keep-alive request through the proxy; the client connection stays open (returned).
fn request(proxy: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect_timeout(&proxy, Duration::from_secs(5)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    s.write_all(b"GET / HTTP/1.1\r\nHost: reviews\r\n\r\n")
        .expect("write");
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !got.ends_with(b"ok") {
        let n = s.read(&mut buf).expect("read");
        assert!(n > 0, "closed: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    assert!(
        got.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&got)
    );
    s
}

const VS: &str = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: reviews, namespace: testns}\nspec:\n  hosts: [reviews]\n  http:\n  - route: [{destination: {host: reviews}}]\n";

const DR_IDLE: &str = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: reviews, namespace: testns}\nspec:\n  host: reviews\n  trafficPolicy:\n    connectionPool:\n      http: {idleTimeout: 1s}\n";

#[test]
fn a_destination_rule_idle_timeout_closes_pooled_upstream_connections() {
    let (backend, closed) = backend();
    let rules = RulesDir::new(&[("vs.yaml", VS), ("dr.yaml", DR_IDLE)]);
    let mut o = ProxyOpts::new(rules.path());
    o.fixed_outbound = Some(backend);
    let mut p = ProxyProc::start(o);
    p.wait_ready();
    let _client = request(p.ports.outbound_addr());
    // Closed by the proxy about 1 s after the answer (bounded wait).
    let after = closed
        .recv_timeout(Duration::from_secs(15))
        .unwrap_or_else(|e| {
            panic!(
                "the proxy did not close the idle upstream connection ({e}):\n{}",
                p.stderr_text()
            )
        });
    assert!(after >= Duration::from_millis(900), "{after:?}");
    assert!(after < Duration::from_secs(10), "{after:?}");
}

#[test]
fn without_a_rule_pooled_upstream_connections_stay_open_longer() {
    let (backend, closed) = backend();
    let rules = RulesDir::new(&[("vs.yaml", VS)]);
    let mut o = ProxyOpts::new(rules.path());
    o.fixed_outbound = Some(backend);
    let mut p = ProxyProc::start(o);
    p.wait_ready();
    let _client = request(p.ports.outbound_addr());
    // The 30 s default: still open 3 s later.
    assert!(
        closed.recv_timeout(Duration::from_secs(3)).is_err(),
        "closed early"
    );
}
