//! Cost of the default route (ignored by default; a measurement, not a check). Run with
//! `cargo test --release -p remora-proxy --test default_route_bench -- --ignored --nocapture`.
//!
//! Per request, with 1000 Services that each have a DestinationRule: the route decision for a
//! Service without VirtualService (the default route), for a request by IP (Passthrough), and
//! for a Service a VirtualService routes; and the data plane's lookup of the destination's
//! DestinationRule policy that the default route now adds.

use std::time::{Duration, Instant};

use rand::SeedableRng;
use remora_model::route::{route, Decision, RequestInfo};
use remora_proxy::rules::{snapshot_from_yaml, LoadContext};

fn rule_set(services: usize) -> String {
    let mut y = String::new();
    for i in 0..services {
        y += &format!(
            "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: svc{i}}}
spec:
  host: svc{i}
  trafficPolicy:
    loadBalancer: {{consistentHash: {{httpHeaderName: x-user}}}}
    connectionPool: {{tcp: {{maxConnections: 100}}}}
    portLevelSettings:
    - port: {{number: 8080}}
      outlierDetection: {{consecutive5xxErrors: 5}}
---
"
        );
    }
    y += "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: routed}
spec:
  hosts: [routed]
  http:
  - route: [{destination: {host: routed}}]
";
    y
}

fn per_call(n: u32, mut f: impl FnMut() -> bool) -> Duration {
    let t = Instant::now();
    let mut ok = 0u32;
    for _ in 0..n {
        ok += f() as u32;
    }
    assert_eq!(ok, n);
    t.elapsed() / n
}

#[test]
#[ignore]
fn default_route_cost() {
    let services = 1000;
    let snap = snapshot_from_yaml(
        &[("bench.yaml", &rule_set(services))],
        &LoadContext::default(),
        1,
    )
    .unwrap();
    let h = http::HeaderMap::new();
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    let n = 200_000u32;
    let info = |authority: &'static str| RequestInfo {
        authority,
        method: "GET",
        path: "/api/v1/items/42",
        headers: &h,
        dst: ([10, 96, 0, 1], 9080).into(),
    };
    let default_route = info("svc999:9080");
    let by_ip = info("10.96.0.1:9080");
    let routed = info("routed:9080");
    let d = per_call(
        n,
        || matches!(route(&snap, &default_route, &mut rng), Decision::Forward(f) if f.virtual_service.is_none()),
    );
    let p = per_call(n, || {
        route(&snap, &by_ip, &mut rng) == Decision::Passthrough
    });
    let r = per_call(
        n,
        || matches!(route(&snap, &routed, &mut rng), Decision::Forward(f) if f.virtual_service.is_some()),
    );
    let metrics = remora_proxy::telemetry::Metrics::new(100).unwrap();
    let policies = remora_proxy::policy::Policies::new(std::sync::Arc::new(metrics));
    let l = per_call(n, || {
        policies
            .destination(&snap, "svc999.default.svc.cluster.local", None, 9080)
            .policy
            .connection_pool
            .max_connections
            == 100
    });
    println!(
        "{services} DestinationRules: route decision — default route {d:?}, passthrough by IP {p:?}, VirtualService route {r:?}; DestinationRule policy lookup {l:?}"
    );
}
