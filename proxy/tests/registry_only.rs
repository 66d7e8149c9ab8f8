//! A Sidecar's `outboundTrafficPolicy: REGISTRY_ONLY` in the data plane, reported as Istio's
//! BlackHoleCluster: HTTP to an address outside the registry answers 502 with flag `NR` and
//! `destination_service="BlackHoleCluster"`; opaque TCP and TLS with an unknown SNI are closed,
//! counted and logged; registered addresses and ServiceEntry SNIs pass. The real proxy binary,
//! real sockets (the original destination is the `--fixed-outbound-target` hook: an
//! unregistered 127.0.0.1 port).

mod common;

use common::*;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

const RULES: &str = r#"
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: default, namespace: testns}
spec:
  outboundTrafficPolicy: {mode: REGISTRY_ONLY}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: db, namespace: testns}
spec:
  hosts: [db.example.com]
  addresses: [192.0.2.0/24]
  ports: [{number: 5432, name: tcp-pg}]
  resolution: NONE
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: api, namespace: testns}
spec:
  hosts: [api.example.com]
  ports: [{number: 443, name: tls}]
  resolution: NONE
"#;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn client_hello(sni: &str) -> Vec<u8> {
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(rustls::RootCertStore::empty())
    .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from(sni.to_string()).unwrap();
    let mut conn = rustls::ClientConnection::new(std::sync::Arc::new(config), name).unwrap();
    let mut out = Vec::new();
    conn.write_tls(&mut out).unwrap();
    out
}

/// Send `bytes`, then read until the proxy closes or `want` bytes came back.
fn exchange(addr: SocketAddr, bytes: &[u8], want: usize) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(bytes).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while got.len() < want {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    got
}

/// A raw HTTP exchange (for HTTP/1.0 without Host).
fn raw_http(addr: SocketAddr, req: &str) -> HttpResp {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(req.as_bytes()).unwrap();
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    parse_response(&raw).unwrap()
}

#[test]
fn registry_only_black_holes_http_tcp_and_tls() {
    let rt = rt();
    let http_backend = rt.block_on(spawn_http_echo("127.0.0.1:0".parse().unwrap(), "app"));
    let tcp_backend = rt.block_on(spawn_tcp_echo());
    let rules = RulesDir::new(&[("rules.yaml", RULES)]);

    // HTTP: the original destination (127.0.0.1) is not registered.
    let mut o = ProxyOpts::new(rules.path());
    o.fixed_outbound = Some(http_backend);
    let mut p = ProxyProc::start(o);
    p.wait_ready();
    let out = p.ports.outbound_addr();
    let r = http_get(out, "/ip-host", &[("Host", "203.0.113.9")]).unwrap();
    assert_eq!(r.status, 502, "{}", r.body_text());
    assert!(
        r.body_text().starts_with("BlackHoleCluster"),
        "{}",
        r.body_text()
    );
    let r = raw_http(out, "GET /no-host HTTP/1.0\r\n\r\n");
    assert_eq!(r.status, 502, "{}", r.body_text());
    // A registered ServiceEntry address in the Host passes (to the original destination).
    let r = http_get(out, "/registered", &[("Host", "192.0.2.10:5432")]).unwrap();
    assert_eq!(r.status, 200, "{}", r.body_text());
    for path in ["/ip-host", "/no-host"] {
        let l = p.wait_log(|l| l["path"] == path);
        assert_eq!(l["status"], 502, "{l}");
        assert_eq!(l["response_flags"], "NR", "{l}");
        assert_eq!(l["destination_service"], "BlackHoleCluster", "{l}");
    }
    let m = p.metrics_when(
        "istio_requests_total",
        &["destination_service=\"BlackHoleCluster\""],
        2.0,
    );
    assert_eq!(
        metric_value(
            &m,
            "istio_requests_total",
            &[
                "reporter=\"source\"",
                "response_code=\"502\"",
                "response_flags=\"NR\"",
                "destination_service=\"BlackHoleCluster\"",
                "destination_service_name=\"BlackHoleCluster\"",
            ]
        ),
        2.0,
        "{m}"
    );
    assert_eq!(
        metric_value(&m, "istio_requests_total", &["response_code=\"200\""]),
        1.0,
        "{m}"
    );
    drop(p);

    // Opaque TCP and TLS: the original destination is an unregistered TCP echo.
    let mut o = ProxyOpts::new(rules.path());
    o.fixed_outbound = Some(tcp_backend);
    let mut p = ProxyProc::start(o);
    p.wait_ready();
    let out = p.ports.outbound_addr();
    let got = exchange(out, b"\x00\x01opaque-bytes\x00", 14);
    assert!(
        got.is_empty(),
        "opaque TCP to an unregistered address got {got:?}"
    );
    let hello = client_hello("evil.example.org");
    let got = exchange(out, &hello, hello.len());
    assert!(
        got.is_empty(),
        "TLS with an unknown SNI got {} bytes",
        got.len()
    );
    // A ServiceEntry host's SNI passes: the echo returns the ClientHello.
    let hello = client_hello("api.example.com");
    let got = exchange(out, &hello, hello.len());
    assert_eq!(got, hello, "TLS with a ServiceEntry SNI must pass");

    let m = p.metrics_when(
        "istio_tcp_connections_closed_total",
        &["destination_service=\"BlackHoleCluster\""],
        2.0,
    );
    for name in [
        "istio_tcp_connections_opened_total",
        "istio_tcp_connections_closed_total",
    ] {
        assert_eq!(
            metric_value(
                &m,
                name,
                &[
                    "reporter=\"source\"",
                    "response_flags=\"NR\"",
                    "destination_service=\"BlackHoleCluster\"",
                    "destination_service_name=\"BlackHoleCluster\"",
                ]
            ),
            2.0,
            "{name}: {m}"
        );
    }
    // Lines reach stdout in the writer's next batch (within about 20 ms): wait, bounded.
    let blocked = || -> Vec<_> {
        p.access_log()
            .into_iter()
            .filter(|l| {
                l["kind"] == "tcp"
                    && l["response_flags"] == "NR"
                    && l["reason"]
                        .as_str()
                        .is_some_and(|r| r.starts_with("BlackHoleCluster"))
            })
            .collect()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while blocked().len() < 2 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let blocked = blocked();
    assert_eq!(blocked.len(), 2, "{blocked:?}");
}
