//! `/config_dump` is one typed contract: the proxy serves `remora_model::dump::ConfigDump` and the
//! CLI reads the same type back. This test runs a real proxy with rules that use every part of
//! the model the dump carries (matches of each kind, header maps, retries, faults, mirrors,
//! rewrites, a DestinationRule with every traffic-policy section, a ServiceEntry with
//! addresses and endpoints, a Sidecar, a RateLimit), sends a request so the live policy state
//! has a destination, then parses the served JSON into the typed dump and checks that writing
//! it again gives exactly the JSON that was served (nothing dropped, nothing invented).

mod common;

use std::net::SocketAddr;

use common::*;
use remora_model::dump::{ConfigDump, DiscoveryStatus};

const RULES: &str = r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: svc}
spec:
  hosts: [svc]
  http:
  - name: api
    match:
    - uri: {regex: "/api/v[0-9]+/.*"}
      headers: {x-user: {exact: alice}, x-team: {prefix: core}}
      queryParams: {debug: {}}
      ignoreUriCase: true
    - method: {exact: POST}
      withoutHeaders: {x-skip: {exact: "1"}}
    rewrite: {uri: /v2/}
    headers:
      request: {set: {x-a: "1", x-b: "2"}, add: {x-c: "3"}, remove: [x-d]}
    timeout: 1.5s
    retries: {attempts: 2, perTryTimeout: 250ms, retryOn: "5xx,connect-failure"}
    fault: {delay: {fixedDelay: 100ms, percentage: {value: 0.0}}}
    mirror: {host: shadow}
    mirrorPercentage: {value: 0.0}
    route:
    - destination: {host: svc, subset: v1}
      weight: 100
  - route:
    - destination: {host: svc}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: svc}
spec:
  host: svc
  trafficPolicy:
    loadBalancer: {consistentHash: {httpHeaderName: x-user}}
    connectionPool:
      tcp: {maxConnections: 7, connectTimeout: 2s, tcpKeepalive: {time: 7200s, interval: 75s, probes: 3}}
      http: {http1MaxPendingRequests: 5, maxRetries: 4, idleTimeout: 1h}
    outlierDetection: {consecutive5xxErrors: 3, interval: 1s, baseEjectionTime: 5s, maxEjectionPercent: 50}
  subsets:
  - name: v1
    labels: {version: v1}
    trafficPolicy: {loadBalancer: {simple: ROUND_ROBIN}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ext}
spec:
  hosts: [ext.example.com]
  addresses: [192.0.2.0/24]
  ports: [{number: 443, name: tls-ext, protocol: TLS}]
  resolution: STATIC
  endpoints: [{address: 192.0.2.10, labels: {zone: a}, weight: 3}]
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: default}
spec:
  egress: [{hosts: ["./*", "istio-system/*"]}]
---
apiVersion: remora.dev/v1alpha1
kind: RateLimit
metadata: {name: rl}
spec: {host: svc, requestsPerUnit: 100, unit: MINUTE}
"#;

#[test]
fn config_dump_round_trips_through_the_typed_model() {
    let rules = RulesDir::new(&[("rules.yaml", RULES)]);
    let dead = DeadPort::new();
    let mut o = ProxyOpts::new(rules.path());
    o.fixed_outbound = Some(SocketAddr::from(([127, 0, 0, 1], dead.port)));
    let mut p = ProxyProc::start(o);
    p.wait_ready();
    // One request: the default route of `svc` to the original destination, so the live policy
    // state holds the destination with its DestinationRule's policy.
    let r = http_get(
        p.ports.outbound_addr(),
        "/x",
        &[("host", "svc.testns.svc.cluster.local")],
    )
    .unwrap();
    assert_eq!(r.status, 503, "{}", r.body_text());

    let r = http_get(p.ports.admin_addr(), "/config_dump", &[]).unwrap();
    assert_eq!(r.status, 200);
    let served: serde_json::Value = r.json();
    let dump: ConfigDump = serde_json::from_value(served.clone()).unwrap_or_else(|e| {
        panic!("the served dump does not parse as ConfigDump: {e}\n{served:#}")
    });
    let again = serde_json::to_value(&dump).unwrap();
    assert_eq!(again, served, "typed round trip changed the dump");

    // The typed view holds what the rules said.
    assert_eq!(dump.generation, 1);
    assert_eq!(dump.workload.namespace, "testns");
    let vs = &dump.rules.virtual_services[0];
    let m = &vs.http[0].matches[0];
    assert!(m.uri.as_ref().unwrap().matches("/api/v3/items", false));
    assert!(!m.uri.as_ref().unwrap().matches("/api/x/items", false));
    let names: Vec<&str> = m.headers.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["x-team", "x-user"]);
    assert_eq!(
        vs.http[0].headers.request.set,
        vec![("x-a".into(), "1".into()), ("x-b".into(), "2".into())]
    );
    assert_eq!(
        vs.http[0].policy.timeout,
        Some(std::time::Duration::from_millis(1500))
    );
    let dr = &dump.rules.destination_rules[0];
    assert_eq!(dr.subsets[0].name, "v1");
    assert_eq!(
        dump.rules.service_entries[0].addresses[0].to_string(),
        "192.0.2.0/24"
    );
    assert!(dump.rules.sidecar.is_some());
    assert_eq!(dump.policies.rate_limits[0].requests_per_unit, 100);
    let d = dump
        .policies
        .destinations
        .iter()
        .find(|d| d.host == "svc.testns.svc.cluster.local")
        .unwrap_or_else(|| panic!("no live destination for svc: {:#?}", dump.policies));
    assert_eq!(d.policy.connection_pool.max_connections, 7);
    assert_eq!(
        d.policy.connection_pool.connect_timeout,
        std::time::Duration::from_secs(2)
    );
    assert!(d.outlier_detection.is_some());
    assert!(matches!(dump.discovery.status, DiscoveryStatus::Off(_)));
    assert_eq!(dump.config_source.source, "files");
}
