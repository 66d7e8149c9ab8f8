//! CPU cost of answering one review in process (`review::handle`: parse, decide, render, patch,
//! serialize), without TLS or HTTP. Bounded: a fixed number of iterations. Prints one Markdown row.

use std::time::Instant;

fn main() {
    let pod = serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"generateName": "productpage-v1-7d9f8c6b5-", "namespace": "bookinfo",
                     "labels": {"app": "productpage", "version": "v1"},
                     "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "productpage-v1-7d9f8c6b5", "uid": "u", "controller": true}]},
        "spec": {"serviceAccountName": "bookinfo-productpage", "containers": [{
            "name": "productpage", "image": "docker.io/istio/examples-bookinfo-productpage-v1:1.20.2",
            "ports": [{"containerPort": 9080, "name": "http"}],
            "readinessProbe": {"httpGet": {"path": "/health", "port": "http"}},
            "livenessProbe": {"tcpSocket": {"port": 9080}}}]}
    });
    let body = serde_json::to_vec(&remora_webhook::review::review_for(&pod, "u", "bookinfo"))
        .unwrap_or_default();
    let cfg = remora_webhook::config::Config::default();
    for _ in 0..500 {
        remora_webhook::review::handle(&body, &cfg);
    }
    let n: u32 = 20_000;
    let t = Instant::now();
    for _ in 0..n {
        let r = remora_webhook::review::handle(&body, &cfg);
        if r.status != 200 {
            eprintln!("review_cost: unexpected status {}", r.status);
            std::process::exit(1);
        }
    }
    let per = t.elapsed() / n;
    println!(
        "| in-process `review::handle` (no TLS/HTTP), {n} reviews | 1 thread | {:.1} µs/review | {:.0} reviews/s per core |",
        per.as_secs_f64() * 1e6,
        1.0 / per.as_secs_f64()
    );
}
