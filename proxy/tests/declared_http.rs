//! Process tests: a port the rules declare HTTP speaks HTTP. Any token method (WebDAV's
//! `PROPFIND`, a custom method) is proxied as HTTP, under the HTTP limits and policies, and
//! logged as HTTP; bytes that are neither an HTTP/1 request nor the h2 preface get 400 and a
//! close and never reach the upstream. On a port the rules do not declare, unknown bytes stay
//! opaque TCP.

mod common;

use common::*;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn declared_http(port: u16) -> RulesDir {
    RulesDir::new(&[(
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
  - {{number: {port}, name: http, protocol: HTTP}}
  resolution: NONE
"#
        ),
    )])
}

fn start(backend: SocketAddr, rules: &RulesDir) -> ProxyProc {
    let mut o = ProxyOpts::new(rules.path());
    o.fixed_outbound = Some(backend);
    let mut p = ProxyProc::start(o);
    p.wait_ready();
    p
}

/// Send `raw` and read until the proxy closes (bounded).
fn exchange(addr: SocketAddr, raw: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(raw).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    out
}

#[test]
fn webdav_and_custom_methods_on_a_declared_http_port_are_http() {
    let rt = rt();
    let backend = rt.block_on(spawn_http_echo("127.0.0.1:0".parse().unwrap(), "app"));
    let rules = declared_http(backend.port());
    let p = start(backend, &rules);
    for method in ["PROPFIND", "X-CUSTOM_SYNC"] {
        let path = format!("/dav/{method}");
        let raw = exchange(
            p.ports.outbound_addr(),
            format!("{method} {path} HTTP/1.1\r\nHost: app.example\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        );
        let r = parse_response(&raw)
            .unwrap_or_else(|e| panic!("{e}: {:?}", String::from_utf8_lossy(&raw)));
        assert_eq!(r.status, 200, "{method}: {}", r.body_text());
        let seen = r.json();
        assert_eq!(seen["method"], method, "the upstream saw {seen}");
        assert_eq!(seen["path"], path.as_str());
        // Proxied as HTTP: the proxy adds its request id, and the access log has an HTTP line.
        assert!(seen["headers"]["x-request-id"].is_string(), "{seen}");
        let line = p.wait_log(|v| v["path"] == path.as_str());
        assert_eq!(line["kind"], "http", "{line}");
        assert_eq!(line["method"], method, "{line}");
    }
    let m = p.metrics();
    assert_eq!(
        metric_value(&m, "istio_tcp_connections_opened_total", &[]),
        0.0,
        "{m}"
    );
}

#[test]
fn garbage_on_a_declared_http_port_gets_400_and_is_never_forwarded() {
    let rt = rt();
    // A raw upstream that counts connections: nothing may reach it.
    let accepted = Arc::new(AtomicUsize::new(0));
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let backend = listener.local_addr().unwrap();
    {
        let accepted = accepted.clone();
        std::thread::spawn(move || {
            for s in listener.incoming() {
                if s.is_ok() {
                    accepted.fetch_add(1, Ordering::SeqCst);
                }
            }
        });
    }
    let _rt = rt;
    let rules = declared_http(backend.port());
    let p = start(backend, &rules);
    for garbage in [
        &b"\x00\x01\x02\x03 binary junk\r\n\r\n"[..],
        b"{\"not\": \"http\"}\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
    ] {
        let raw = exchange(p.ports.outbound_addr(), garbage);
        let text = String::from_utf8_lossy(&raw);
        assert!(text.starts_with("HTTP/1.1 400 "), "answered {text:?}");
        assert!(text.contains("connection: close"), "{text}");
    }
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(accepted.load(Ordering::SeqCst), 0, "garbage was forwarded");
    let m = p.metrics();
    assert_eq!(
        metric_value(
            &m,
            "remora_downstream_rejected_total",
            &["reason=\"not_http\""]
        ),
        3.0,
        "{m}"
    );
    assert_eq!(
        metric_value(&m, "istio_tcp_connections_opened_total", &[]),
        0.0,
        "{m}"
    );
}

#[test]
fn unknown_bytes_on_an_undeclared_port_stay_opaque_tcp() {
    let rt = rt();
    let echo = rt.block_on(spawn_tcp_echo());
    let rules = RulesDir::new(&[]);
    let p = start(echo, &rules);
    let mut s = TcpStream::connect(p.ports.outbound_addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let msg = b"PROPFIND is not in the sniffer's list\r\n";
    s.write_all(msg).unwrap();
    let mut got = vec![0u8; msg.len()];
    s.read_exact(&mut got).unwrap();
    assert_eq!(&got[..], &msg[..]);
}
