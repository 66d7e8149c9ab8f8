//! Cost of the peer labels on the request path (ignored by default; a measurement, not a check).
//! Run with
//! `cargo test --release -p remora-proxy --test telemetry_labels_bench -- --ignored --nocapture`.
//!
//! Per request: recording a request whose label set the worker thread has seen (the peer's
//! labels shared, as inbound over mTLS and for an unknown peer), deciding the peer's labels
//! anew and recording them (outbound to a known endpoint, and inbound from a pod discovery
//! knows, in plain text), and decoding a peer's metadata-exchange header (done once per value
//! and thread; this is the miss).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use remora_model::rules::endpoints::PodIdentity;
use remora_proxy::telemetry::peer::{own, peer_of, PeerFacts};
use remora_proxy::telemetry::{exchange, HttpLabelsRef, Metrics};

fn per_op(label: &str, n: u32, mut f: impl FnMut(u32)) {
    for i in 0..n / 10 {
        f(i);
    }
    let t = Instant::now();
    for i in 0..n {
        f(i);
    }
    let ns = t.elapsed().as_nanos() as f64 / f64::from(n);
    println!("{label}: {ns:.0} ns per request");
}

#[test]
#[ignore]
fn bench_peer_labels() {
    let m = Metrics::new(10_000).unwrap();
    let labels: BTreeMap<String, String> = [("app", "reviews"), ("version", "v2")]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let me = Arc::new(own(
        "productpage-v1",
        "bookinfo",
        &labels,
        "spiffe://cluster.local/ns/bookinfo/sa/bookinfo-productpage",
        "Kubernetes",
    ));
    let pod = PodIdentity {
        namespace: Arc::from("bookinfo"),
        workload: Arc::from("reviews-v2"),
        labels: Arc::new(labels.clone()),
        service_account: None,
    };
    let principal = "spiffe://cluster.local/ns/bookinfo/sa/bookinfo-reviews";
    let record = |src: &Arc<_>, dst: &Arc<_>| {
        m.record_http_ref(
            &HttpLabelsRef {
                reporter: "source",
                source: src,
                destination: dst,
                destination_service: "reviews.bookinfo.svc.cluster.local",
                request_protocol: "http",
                response_code: 200,
                grpc_response_status: "",
                response_flags: "-",
                connection_security_policy: "mutual_tls",
            },
            1.0,
            0,
            100,
        )
    };
    let n = 1_000_000;
    let shared = Arc::new(peer_of(&PeerFacts {
        principal: Some(principal),
        pod: Some(&pod),
        cluster: "Kubernetes",
        ..Default::default()
    }));
    per_op("record, peer labels shared", n, |_| record(&me, &shared));
    per_op("decide the peer's labels anew + record", n, |_| {
        let peer = Arc::new(peer_of(&PeerFacts {
            principal: Some(principal),
            pod: Some(&pod),
            endpoint_labels: Some(&labels),
            cluster: "Kubernetes",
            ..Default::default()
        }));
        record(&me, &peer)
    });
    let header = exchange::encode(&me, "productpage-v1-5f6d8c9b7-abcde");
    per_op(
        "decode a metadata-exchange header (uncached)",
        n / 10,
        |_| {
            assert!(exchange::decode(&header).is_some());
        },
    );
}
