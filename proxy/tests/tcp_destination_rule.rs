//! Opaque TCP under a DestinationRule, as Istio applies it to TCP services: a connection to a
//! ServiceEntry's virtual address without any `tcp` route takes the host's default route, and
//! the host's `trafficPolicy` decides: `loadBalancer` (ROUND_ROBIN, consistent hashing by
//! source IP), `connectionPool.tcp.maxConnections` (refused at once, flag `UO`),
//! `outlierDetection` (a refused connect ejects the endpoint) and `tls` (SIMPLE: the proxy
//! originates TLS; a server it cannot verify gets no plain text). Real servers on 127.0.0.1, the
//! real proxy binary, real TCP and TLS clients.

mod common;

use common::*;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// The virtual address the client connects to (nothing listens there).
const VIP: &str = "127.0.0.60:7000";

/// A server that greets each connection with `NAME\n`, then echoes.
async fn spawn_named(name: &'static str) -> SocketAddr {
    use tokio::io::AsyncWriteExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let local = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                if sock
                    .write_all(format!("{name}\n").as_bytes())
                    .await
                    .is_err()
                {
                    return;
                }
                let (mut r, mut w) = sock.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    local
}

/// A ServiceEntry `db` at [`VIP`] with these endpoints, and a DestinationRule with `policy`
/// (YAML flow mapping of `trafficPolicy`).
fn rules(eps: &[SocketAddr], policy: &str) -> String {
    let mut endpoints = String::new();
    for e in eps {
        endpoints.push_str(&format!(
            "  - {{address: {}, ports: {{tcp-db: {}}}}}\n",
            e.ip(),
            e.port()
        ));
    }
    format!(
        r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: db, namespace: testns}}
spec:
  hosts: [db.testns.svc.cluster.local]
  addresses: [127.0.0.60/32]
  location: MESH_INTERNAL
  ports:
  - {{number: 7000, name: tcp-db, protocol: TCP}}
  resolution: STATIC
  endpoints:
{endpoints}---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: db, namespace: testns}}
spec:
  host: db.testns.svc.cluster.local
  trafficPolicy: {policy}
"#
    )
}

fn proxy(rules_yaml: &str) -> (RulesDir, ProxyProc) {
    let dir = RulesDir::new(&[("db.yaml", rules_yaml)]);
    let mut o = ProxyOpts::new(dir.path());
    o.fixed_outbound = Some(VIP.parse().unwrap());
    let mut p = ProxyProc::start(o);
    p.wait_ready();
    (dir, p)
}

/// Connect through the proxy and read the greeting line; `None` when the proxy closed the
/// connection without one.
fn greet(p: &ProxyProc) -> (TcpStream, Option<String>) {
    let s = TcpStream::connect(p.ports.outbound_addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut line = String::new();
    let n = BufReader::new(s.try_clone().unwrap())
        .read_line(&mut line)
        .unwrap_or(0);
    let got = (n > 0).then(|| line.trim_end().to_string());
    (s, got)
}

#[test]
fn round_robin_and_source_ip_hashing_pick_the_endpoints() {
    let rt = rt();
    let eps = [
        rt.block_on(spawn_named("a")),
        rt.block_on(spawn_named("b")),
        rt.block_on(spawn_named("c")),
    ];
    let (_d, p) = proxy(&rules(&eps, "{loadBalancer: {simple: ROUND_ROBIN}}"));
    let mut seen = std::collections::BTreeMap::new();
    for _ in 0..9 {
        let (_s, g) = greet(&p);
        *seen.entry(g.expect("a greeting")).or_insert(0) += 1;
    }
    // Round robin over three endpoints: each one three times (random would rarely be even).
    assert_eq!(
        seen,
        [
            ("a".to_string(), 3),
            ("b".to_string(), 3),
            ("c".to_string(), 3)
        ]
        .into(),
        "{seen:?}"
    );
    let line = p.wait_log(|l| l["kind"] == "tcp");
    assert_eq!(line["original_dst"], VIP);
    drop(p);

    let (_d, p) = proxy(&rules(
        &eps,
        "{loadBalancer: {consistentHash: {useSourceIp: true}}}",
    ));
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..9 {
        let (_s, g) = greet(&p);
        seen.insert(g.expect("a greeting"));
    }
    assert_eq!(seen.len(), 1, "one client address, one endpoint: {seen:?}");
}

#[test]
fn max_connections_refuses_the_extra_connection_with_uo() {
    let rt = rt();
    let eps = [rt.block_on(spawn_named("a"))];
    let (_d, p) = proxy(&rules(&eps, "{connectionPool: {tcp: {maxConnections: 1}}}"));
    let (held, g) = greet(&p);
    assert_eq!(g.as_deref(), Some("a"));
    // The second connection at once: closed without a byte from the server.
    let (_s, g) = greet(&p);
    assert_eq!(
        g, None,
        "over maxConnections the connection must be refused"
    );
    let refused = p.wait_log(|l| l["kind"] == "tcp" && l["response_flags"] == "UO");
    assert!(
        refused["reason"]
            .as_str()
            .is_some_and(|r| r.contains("connectionPool.tcp.maxConnections reached")),
        "{refused}"
    );
    let m = p.metrics();
    assert_eq!(
        metric_value(
            &m,
            "remora_upstream_overflow_total",
            &[
                "destination_service=\"db.testns.svc.cluster.local\"",
                "limit=\"maxConnections\""
            ]
        ),
        1.0,
        "{m}"
    );
    // The slot is given back when the first connection ends.
    drop(held);
    p.wait_log(|l| l["kind"] == "tcp" && l["response_flags"] == "-");
    let mut ok = None;
    for _ in 0..200 {
        let (_s, g) = greet(&p);
        if g.is_some() {
            ok = g;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(ok.as_deref(), Some("a"), "the slot was not given back");
}

#[test]
fn a_refused_connect_ejects_the_endpoint() {
    let rt = rt();
    let live = rt.block_on(spawn_named("live"));
    // nothing listens there, and the port stays bound so no other test's server can take it
    let dead_port = DeadPort::new();
    let dead = dead_port.addr();
    let (_d, p) = proxy(&rules(
        &[live, dead],
        "{loadBalancer: {simple: ROUND_ROBIN}, outlierDetection: {consecutive5xxErrors: 1, interval: 1s, baseEjectionTime: 60s, maxEjectionPercent: 100}}",
    ));
    let mut failed = 0;
    for _ in 0..8 {
        let (_s, g) = greet(&p);
        match g.as_deref() {
            Some("live") => {}
            None => failed += 1,
            other => panic!("unexpected greeting {other:?}"),
        }
    }
    // Round robin reaches the dead endpoint within two connections; one refused connect ejects it.
    assert_eq!(failed, 1, "connections that failed");
    let uf = p.wait_log(|l| l["kind"] == "tcp" && l["response_flags"] == "UF");
    assert_eq!(uf["upstream"], dead.to_string(), "{uf}");
    let m = p.metrics();
    assert_eq!(
        metric_value(
            &m,
            "remora_outlier_ejections_total",
            &["destination_service=\"db.testns.svc.cluster.local\""]
        ),
        1.0,
        "{m}"
    );
}

/// A TLS echo server with a certificate for `db.example` signed by a fresh CA; returns its
/// address and the CA's PEM.
async fn spawn_tls_echo() -> (SocketAddr, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut cp = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    cp.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = cp.self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["db.example".to_string()])
        .unwrap()
        .signed_by(&key, &ca, &ca_key)
        .unwrap();
    let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![leaf.der().clone()],
        rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
    )
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let local = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((sock, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(sock).await else {
                    return;
                };
                let mut buf = [0u8; 1024];
                loop {
                    match tls.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            let mut out = b"tls:".to_vec();
                            out.extend_from_slice(&buf[..n]);
                            if tls.write_all(&out).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
    (local, ca.pem())
}

#[test]
fn tls_simple_is_originated_for_opaque_tcp_and_an_unverified_server_gets_nothing() {
    let rt = rt();
    let (server, ca_pem) = rt.block_on(spawn_tls_echo());
    let pki = tempfile::tempdir().unwrap();
    let ca = pki.path().join("ca.pem");
    std::fs::write(&ca, &ca_pem).unwrap();
    let policy = format!(
        "{{tls: {{mode: SIMPLE, sni: db.example, caCertificates: {}}}}}",
        ca.display()
    );
    let (_d, p) = proxy(&rules(&[server], &policy));
    let mut s = TcpStream::connect(p.ports.outbound_addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"ping").unwrap();
    let mut buf = [0u8; 8];
    s.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"tls:ping", "the server answers only over TLS");
    drop(s);
    drop(p);

    // A CA that did not sign the server's certificate: the handshake fails, the client's bytes
    // never leave in plain text, and the log says why.
    let other = rcgen::generate_simple_self_signed(vec!["other".to_string()]).unwrap();
    let wrong = pki.path().join("wrong-ca.pem");
    std::fs::write(&wrong, other.cert.pem()).unwrap();
    let policy = format!(
        "{{tls: {{mode: SIMPLE, sni: db.example, caCertificates: {}}}}}",
        wrong.display()
    );
    let (_d, p) = proxy(&rules(&[server], &policy));
    let mut s = TcpStream::connect(p.ports.outbound_addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = s.write_all(b"ping");
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got);
    assert!(got.is_empty(), "nothing may come back: {got:?}");
    let l = p.wait_log(|l| l["kind"] == "tcp" && l["response_flags"] == "UF");
    assert!(
        l["reason"]
            .as_str()
            .is_some_and(|r| r.starts_with("tls: handshake")),
        "{l}"
    );
}
