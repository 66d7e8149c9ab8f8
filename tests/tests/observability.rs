//! Observability in the mesh lab, read the way Kiali and Grafana read it: a real Prometheus
//! (Debian's package) scrapes every pod as the annotations the webhook wrote say (the sidecar's
//! merged `:15020/stats/prometheus`) and the control plane; the test then runs Kiali's graph
//! queries and every query of the shipped Grafana dashboards against it.

use remora_e2e::prometheus::{Prometheus, Series};
use remora_e2e::{Lab, LabOptions};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

const BOOKINFO: &str = include_str!("../fixtures/bookinfo.yaml");
const NS: &str = "bookinfo";
/// Kiali's grouping for a versioned-app/workload graph (its traffic appender's labels).
const GRAPH_LABELS: &str = "source_workload_namespace,source_workload,source_app,source_version,\
source_canonical_service,source_canonical_revision,source_principal,destination_service_namespace,\
destination_service_name,destination_workload_namespace,destination_workload,destination_app,\
destination_version,destination_canonical_service,destination_canonical_revision,\
destination_principal,request_protocol,response_code,response_flags";

fn must<T>(lab: &Lab, r: anyhow::Result<T>) -> T {
    r.unwrap_or_else(|e| panic!("{e:#}\n--- logs:\n{}", lab.logs(25)))
}

/// Bookinfo with details declaring metrics of its own (`/metrics` on its app port), which
/// metrics merging serves through the sidecar.
fn bookinfo_with_app_metrics() -> String {
    let template = "  template:\n    metadata:\n      labels: {app: details, version: v1}\n";
    assert!(BOOKINFO.contains(template), "fixture changed");
    BOOKINFO.replace(
        template,
        &format!("{template}      annotations: {{prometheus.io/scrape: \"true\", prometheus.io/port: \"9080\", prometheus.io/path: /metrics}}\n"),
    )
}

fn sa(name: &str) -> String {
    format!("spiffe://cluster.local/ns/{NS}/sa/{name}")
}

fn edges(series: &[Series]) -> BTreeSet<(String, String)> {
    series
        .iter()
        .map(|s| {
            (
                s.label("source_workload").to_string(),
                s.label("destination_workload").to_string(),
            )
        })
        .collect()
}

/// Within 4 standard deviations of `n * p`.
fn within_4_sigma(what: &str, count: f64, n: f64, p: f64) {
    let mean = n * p;
    let sd = (n * p * (1.0 - p)).sqrt();
    assert!(
        (count - mean).abs() <= 4.0 * sd,
        "{what}: {count} of {n}, expected {mean:.0} ± {:.0} (4σ)",
        4.0 * sd
    );
}

#[test]
fn kiali_and_grafana_queries_on_a_real_prometheus() {
    let mut lab = Lab::start(LabOptions {
        rules_controller: true,
        ..LabOptions::default()
    })
    .expect("lab starts");
    lab.create_namespace(NS, &[("istio-injection", "enabled")])
        .unwrap();
    let r = lab.apply(&bookinfo_with_app_metrics(), NS);
    must(&lab, r);
    let dr = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: reviews}\nspec:\n  host: reviews\n  subsets:\n  - {name: v1, labels: {version: v1}}\n  - {name: v2, labels: {version: v2}}\n  - {name: v3, labels: {version: v3}}\n";
    let vs = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: reviews}\nspec:\n  hosts: [reviews]\n  http:\n  - route:\n    - {destination: {host: reviews, subset: v1}, weight: 50}\n    - {destination: {host: reviews, subset: v2}, weight: 30}\n    - {destination: {host: reviews, subset: v3}, weight: 20}\n";
    let r = lab.apply(&format!("{dr}---\n{vs}"), NS);
    must(&lab, r);

    // The webhook pointed every meshed pod at the merged endpoint.
    for p in lab.pods() {
        let ann = &p.object["metadata"]["annotations"];
        assert_eq!(ann["prometheus.io/port"], "15020", "{}", p.name);
        assert_eq!(ann["prometheus.io/path"], "/stats/prometheus", "{}", p.name);
    }
    let prom = must(&lab, Prometheus::start(&lab));
    let pods = lab.pods().len();
    let r = prom.wait_for(&lab, "up", Duration::from_secs(30), |s| {
        let up = s.iter().filter(|x| x.value == 1.0).count();
        if up == pods + 1 {
            Ok(())
        } else {
            Err(format!("{up} of {} targets up", pods + 1))
        }
    });
    must(&lab, r);

    // Traffic: productpage calls details and reviews (50/30/20 over v1/v2/v3); v2 and v3 call
    // ratings.
    let n = 200usize;
    let client = lab.pod("client").unwrap();
    for _ in 0..n {
        let r = must(
            &lab,
            lab.http(client, "productpage", 9080, "/productpage", &[]),
        );
        assert_eq!(r.status, 200);
    }

    // Kiali's graph: every edge is a true one, named by workload, app and version, no
    // `unknown` node among meshed pods.
    let graph = format!(
        "sum(rate(istio_requests_total{{reporter=\"source\",source_workload_namespace=\"{NS}\"}}[1m])) by ({GRAPH_LABELS}) > 0"
    );
    let want: BTreeSet<(String, String)> = [
        ("client", "productpage-v1"),
        ("productpage-v1", "details-v1"),
        ("productpage-v1", "reviews-v1"),
        ("productpage-v1", "reviews-v2"),
        ("productpage-v1", "reviews-v3"),
        ("reviews-v2", "ratings-v1"),
        ("reviews-v3", "ratings-v1"),
    ]
    .iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect();
    let r = prom.wait_for(&lab, &graph, Duration::from_secs(30), |s| {
        if edges(s) == want {
            Ok(())
        } else {
            Err(format!("edges {:?}", edges(s)))
        }
    });
    let series = must(&lab, r);
    for s in &series {
        for (k, v) in &s.labels {
            assert!(
                !v.is_empty() && v != "unknown",
                "label {k} is {v:?} on a meshed edge: {s:?}"
            );
        }
        let dst = s.label("destination_workload");
        let (app, version) = dst.rsplit_once('-').unwrap();
        assert_eq!(s.label("destination_app"), app, "{s:?}");
        assert_eq!(s.label("destination_version"), version, "{s:?}");
        assert_eq!(s.label("destination_canonical_service"), app, "{s:?}");
        assert_eq!(s.label("destination_service_name"), app, "{s:?}");
        assert_eq!(s.label("request_protocol"), "http", "{s:?}");
        assert_eq!(s.label("response_code"), "200", "{s:?}");
    }
    let principal_of = |wl: &str| {
        series
            .iter()
            .find(|s| s.label("source_workload") == wl)
            .map(|s| s.label("source_principal").to_string())
    };
    assert_eq!(
        principal_of("productpage-v1"),
        Some(sa("bookinfo-productpage"))
    );
    assert_eq!(principal_of("reviews-v2"), Some(sa("bookinfo-reviews")));

    // Kiali's security badge: the server side says mutual TLS on every edge.
    let security = format!(
        "sum(rate(istio_requests_total{{reporter=\"destination\",destination_workload_namespace=\"{NS}\"}}[1m])) by (source_workload,destination_workload,connection_security_policy,source_principal,destination_principal) > 0"
    );
    // The server sides are scraped on their own schedule: wait until each edge has two samples.
    let r = prom.wait_for(&lab, &security, Duration::from_secs(30), |s| {
        if edges(s) == want {
            Ok(())
        } else {
            Err(format!("edges {:?}", edges(s)))
        }
    });
    let sec = must(&lab, r);
    for s in &sec {
        assert_eq!(s.label("connection_security_policy"), "mutual_tls", "{s:?}");
        assert!(
            s.label("destination_principal")
                .starts_with(&format!("spiffe://cluster.local/ns/{NS}/sa/")),
            "{s:?}"
        );
    }

    // Edge weights: every request counted once, split as the VirtualService says.
    let by_version = "sum(istio_requests_total{reporter=\"source\",source_workload=\"productpage-v1\",destination_service_name=\"reviews\"}) by (destination_workload)";
    let r = prom.wait_for(&lab, by_version, Duration::from_secs(30), |s| {
        let total: f64 = s.iter().map(|x| x.value).sum();
        if total == n as f64 {
            Ok(())
        } else {
            Err(format!("{total} of {n} counted"))
        }
    });
    let split: BTreeMap<String, f64> = must(&lab, r)
        .iter()
        .map(|s| (s.label("destination_workload").to_string(), s.value))
        .collect();
    for (wl, p) in [
        ("reviews-v1", 0.5),
        ("reviews-v2", 0.3),
        ("reviews-v3", 0.2),
    ] {
        within_4_sigma(wl, split.get(wl).copied().unwrap_or(0.0), n as f64, p);
    }

    // Metrics merging: details' own metrics come through its sidecar's scrape, labelled with
    // its pod; the other apps declare none.
    let app = must(&lab, prom.query(&lab, "lab_app_requests_total"));
    assert_eq!(app.len(), 1, "{app:?}");
    assert!(app[0].label("pod").starts_with("details-v1"), "{app:?}");
    assert!(app[0].value >= 1.0, "{app:?}");
    let failures = must(
        &lab,
        prom.query(&lab, "sum(remora_app_metrics_scrape_failures_total)"),
    );
    assert_eq!(failures.first().map(|s| s.value), Some(0.0), "{failures:?}");

    // Every query of the shipped dashboards is valid PromQL on these series, and the panels
    // that this traffic must fill have data.
    let vars = [
        ("$__rate_interval", "1m"),
        ("$namespace", NS),
        ("$service", "reviews.bookinfo.svc.cluster.local"),
        ("$workload", "reviews-v2"),
    ];
    let must_fill = [
        "Global request volume",
        "Global success rate (non-5xx)",
        "Requests by service",
        "Requests by workload",
        "P99 latency by service",
        "Mutual TLS share of requests",
        "Requests by source workload",
        "Request duration",
        "Requests by destination workload",
        "Requests by security policy and principal",
        "Inbound requests by source workload",
        "Outbound requests by destination service",
        "Injection reviews by decision",
        "Certificates issued and refused",
        "Rules ConfigMap writes",
        "Shortest sidecar certificate validity left",
    ];
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests/addons/grafana");
    let mut checked = 0;
    let mut filled = BTreeSet::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let d: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        for p in d["panels"].as_array().unwrap() {
            let title = p["title"].as_str().unwrap();
            for t in p["targets"].as_array().unwrap() {
                let mut q = t["expr"].as_str().unwrap().to_string();
                for (k, v) in vars {
                    q = q.replace(k, v);
                }
                let got = prom
                    .query(&lab, &q)
                    .unwrap_or_else(|e| panic!("{}: {title}: {e:#}", path.display()));
                checked += 1;
                if got.iter().any(|s| s.value.is_finite()) {
                    filled.insert(title.to_string());
                }
            }
        }
    }
    assert!(checked >= 20, "only {checked} dashboard queries found");
    let empty: Vec<_> = must_fill.iter().filter(|t| !filled.contains(**t)).collect();
    assert!(empty.is_empty(), "panels without data: {empty:?}");
    eprintln!(
        "{checked} dashboard queries valid; {} panels with data",
        filled.len()
    );
}
