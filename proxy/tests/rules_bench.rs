//! Route-decision throughput (ignored by default; a measurement, not a check). Run with
//! `cargo test --release -p remora-proxy --test rules_bench -- --ignored --nocapture`.

use std::time::Instant;

use rand::SeedableRng;
use remora_model::route::{route, Decision, RequestInfo};
use remora_proxy::rules::{snapshot_from_yaml, LoadContext};

fn rule_set(services: usize) -> String {
    let mut y = String::new();
    for i in 0..services {
        y += &format!(
            "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: svc{i}}}
spec:
  hosts: [svc{i}]
  http:
  - match: [{{headers: {{end-user: {{exact: jason}}}}}}]
    route: [{{destination: {{host: svc{i}, subset: v2}}}}]
  - match: [{{uri: {{regex: \"/api/v[0-9]+/items/[0-9]+\"}}}}]
    route: [{{destination: {{host: svc{i}, subset: v3}}}}]
  - route:
    - {{destination: {{host: svc{i}, subset: v1}}, weight: 80}}
    - {{destination: {{host: svc{i}, subset: v2}}, weight: 20}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: svc{i}}}
spec:
  host: svc{i}
  subsets: [{{name: v1, labels: {{version: v1}}}}, {{name: v2, labels: {{version: v2}}}}, {{name: v3, labels: {{version: v3}}}}]
---
"
        );
    }
    y
}

#[test]
#[ignore]
fn route_throughput() {
    for services in [10, 1000] {
        let text = rule_set(services);
        let t = Instant::now();
        let snap =
            snapshot_from_yaml(&[("bench.yaml", &text)], &LoadContext::default(), 1).unwrap();
        let load = t.elapsed();
        let mut h = http::HeaderMap::new();
        h.insert("user-agent", http::HeaderValue::from_static("bench/1.0"));
        let authority = format!("svc{}:9080", services - 1);
        let info = RequestInfo {
            authority: &authority,
            method: "GET",
            path: "/api/v1/items/42?x=1",
            headers: &h,
            dst: ([10, 96, 0, 1], 9080).into(),
        };
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let n = 200_000u32;
        let t = Instant::now();
        let mut v3 = 0u32;
        for _ in 0..n {
            if let Decision::Forward(f) = route(&snap, &info, &mut rng) {
                v3 += (f.subset.as_deref() == Some("v3")) as u32;
            }
        }
        let per = t.elapsed() / n;
        assert_eq!(v3, n);
        println!(
            "{services} VirtualServices ({} bytes of YAML): load {load:?}; route decision {per:?} each ({:.0}/s on one core)",
            text.len(),
            1.0 / per.as_secs_f64()
        );
    }
}
