//! Process tests of the peer labels' trust: Istio's metadata-exchange headers
//! (`x-envoy-peer-metadata`, `-id`) never reach the app, in either direction, and are not
//! believed on a hop in plain text (the peer stays `unknown` in the metrics). The exchange over
//! mutual TLS between two sidecars is in `tests/tests/kube_ca.rs`.

mod common;

use common::*;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::{Arc, Mutex};

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// A forged `x-envoy-peer-metadata`: a well-formed one naming the workload `forged`.
fn forged() -> String {
    let who = remora_proxy::telemetry::peer::own(
        "forged",
        "elsewhere",
        &Default::default(),
        "unknown",
        "Kubernetes",
    );
    remora_proxy::telemetry::exchange::encode(&who, "forged-pod")
}

/// An upstream that answers every request with the exchange headers set, and keeps the request
/// heads it saw.
fn spawn_talkative_upstream(metadata: String) -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let heads = seen.clone();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            let mut buf = Vec::new();
            let mut b = [0u8; 4096];
            while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                match s.read(&mut b) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => buf.extend_from_slice(&b[..n]),
                }
            }
            heads
                .lock()
                .unwrap()
                .push(String::from_utf8_lossy(&buf).to_lowercase());
            let body = "ok";
            let _ = write!(
                s,
                "HTTP/1.1 200 OK\r\nx-envoy-peer-metadata: {metadata}\r\nx-envoy-peer-metadata-id: sidecar~1.2.3.4~x.y~y.svc.cluster.local\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    (addr, seen)
}

#[test]
fn exchange_headers_never_reach_the_app_and_plain_text_peers_stay_unknown() {
    let rt = rt();
    let app = rt.block_on(spawn_http_echo("127.0.0.1:0".parse().unwrap(), "app"));
    let (upstream, seen) = spawn_talkative_upstream(forged());
    let rules = RulesDir::new(&[]);
    let mut o = ProxyOpts::new(rules.path());
    o.fixed_inbound = Some(app);
    o.fixed_outbound = Some(upstream);
    let mut p = ProxyProc::start(o);
    p.wait_ready();
    let metadata = forged();
    let exchange = [
        ("x-envoy-peer-metadata", metadata.as_str()),
        (
            "x-envoy-peer-metadata-id",
            "sidecar~10.9.9.9~forged.elsewhere~elsewhere.svc.cluster.local",
        ),
    ];

    // Inbound in plain text with a peer's headers: the app does not see them, the client gets
    // none back, and the metrics do not believe them.
    let r = http_get(p.ports.inbound_addr(), "/in", &exchange).unwrap();
    assert_eq!(r.status, 200, "{}", r.body_text());
    let headers = &r.json()["headers"];
    for (h, _) in exchange {
        assert!(headers.get(h).is_none(), "{h} reached the app: {headers}");
        assert_eq!(r.header(h), None, "{h} in the response");
    }

    // Outbound to a server in plain text: the app's own headers are not sent on, and the
    // server's in the response do not reach the app.
    let r = http_get(
        p.ports.outbound_addr(),
        "/out",
        &[exchange[0], exchange[1], ("Host", "api.example.com")],
    )
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.body_text());
    for (h, _) in exchange {
        assert_eq!(r.header(h), None, "{h} reached the app in the response");
    }
    let heads = seen.lock().unwrap().clone();
    assert_eq!(heads.len(), 1, "{heads:?}");
    assert!(!heads[0].contains("x-envoy-peer-metadata"), "{}", heads[0]);

    let m = p.metrics_when(
        "istio_requests_total",
        &["reporter=\"source\"", "response_code=\"200\""],
        1.0,
    );
    assert!(!m.contains("forged"), "{m}");
    for (reporter, side) in [("destination", "source"), ("source", "destination")] {
        assert_eq!(
            metric_value(
                &m,
                "istio_requests_total",
                &[
                    &format!("reporter=\"{reporter}\""),
                    &format!("{side}_workload=\"unknown\""),
                    &format!("{side}_workload_namespace=\"unknown\""),
                    &format!("{side}_principal=\"unknown\""),
                    &format!("{side}_canonical_service=\"unknown\""),
                    &format!("{side}_cluster=\"unknown\""),
                ]
            ),
            1.0,
            "{reporter}: {m}"
        );
    }
    // This workload's own side, and the hop's policy as Istio reports it on each side.
    assert_eq!(
        metric_value(
            &m,
            "istio_requests_total",
            &[
                "reporter=\"destination\"",
                "destination_workload=\"testwl\"",
                "destination_workload_namespace=\"testns\"",
                "destination_canonical_service=\"testwl\"",
                "destination_canonical_revision=\"latest\"",
                "destination_cluster=\"Kubernetes\"",
                "destination_principal=\"unknown\"",
                "connection_security_policy=\"none\"",
            ]
        ),
        1.0,
        "{m}"
    );
    assert_eq!(
        metric_value(
            &m,
            "istio_requests_total",
            &[
                "reporter=\"source\"",
                "source_workload=\"testwl\"",
                "connection_security_policy=\"unknown\"",
            ]
        ),
        1.0,
        "{m}"
    );
}
