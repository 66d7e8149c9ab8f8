//! Routing semantics of every Istio Bookinfo rule in `$REMORA_SHARED/anchors/istio/networking/`
//! (read in place; see that folder's SOURCE.md for provenance), table-driven. Skipped without
//! that corpus (see `remora_corpus`).

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use rand::SeedableRng;
use remora_model::route::{route, Decision, Forward, RequestInfo};
use remora_proxy::rules::{self, load, LoadContext, Protocol, Snapshot};

/// Istio's Bookinfo rules; every test here starts with `remora_corpus::require!("networking")`
/// (skipped, with a line saying so, where the corpus is absent).
fn networking() -> PathBuf {
    remora_corpus::istio_dir().join("networking")
}

/// Tests never query real DNS: names resolve to loopback addresses from this table only.
fn fake_resolver(name: &str) -> Vec<IpAddr> {
    match name {
        "www.googleapis.com" => vec!["127.0.0.77".parse().unwrap()],
        _ => Vec::new(),
    }
}

fn ctx() -> LoadContext {
    LoadContext::default()
}

/// Load the named Bookinfo files together, as one rules directory (a temp dir of symlinks).
fn load(files: &[&str]) -> Snapshot {
    let dir = tempfile::tempdir().unwrap();
    for f in files {
        std::os::unix::fs::symlink(networking().join(f), dir.path().join(f)).unwrap();
    }
    let inputs = load::read_inputs(dir.path()).unwrap();
    match rules::load_inputs(&inputs, &ctx(), 1, &fake_resolver) {
        Ok(s) => s,
        Err(e) => panic!("{files:?}: {e:?}"),
    }
}

struct Req {
    authority: &'static str,
    path: &'static str,
    headers: Vec<(&'static str, &'static str)>,
    port: u16,
}

fn req(authority: &'static str) -> Req {
    Req {
        authority,
        path: "/",
        headers: vec![],
        port: 9080,
    }
}

impl Req {
    fn header(mut self, k: &'static str, v: &'static str) -> Req {
        self.headers.push((k, v));
        self
    }
    fn port(mut self, p: u16) -> Req {
        self.port = p;
        self
    }
    fn path(mut self, p: &'static str) -> Req {
        self.path = p;
        self
    }
}

fn decide(s: &Snapshot, r: &Req, rng: &mut rand::rngs::StdRng) -> Decision {
    let mut h = http::HeaderMap::new();
    for (k, v) in &r.headers {
        h.append(*k, http::HeaderValue::from_static(v));
    }
    let info = RequestInfo {
        authority: r.authority,
        method: "GET",
        path: r.path,
        headers: &h,
        dst: SocketAddr::from(([10, 96, 0, 10], r.port)),
    };
    route(s, &info, rng)
}

fn forward(d: Decision) -> Forward {
    match d {
        Decision::Forward(f) => f,
        other => panic!("expected Forward, got {other:?}"),
    }
}

/// (host FQDN, subset) the request goes to.
fn target(s: &Snapshot, r: &Req) -> (String, Option<String>) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let f = forward(decide(s, r, &mut rng));
    (f.host, f.subset)
}

fn svc(name: &str) -> String {
    format!("{name}.default.svc.cluster.local")
}

#[test]
fn single_destination_rules() {
    remora_corpus::require!("networking");
    // (files, request, expected host, expected subset)
    let cases: Vec<(&[&str], Req, &str, &str)> = vec![
        (
            &["virtual-service-all-v1.yaml", "destination-rule-all.yaml"],
            req("productpage"),
            "productpage",
            "v1",
        ),
        (
            &["virtual-service-all-v1.yaml", "destination-rule-all.yaml"],
            req("reviews:9080"),
            "reviews",
            "v1",
        ),
        (
            &["virtual-service-all-v1.yaml", "destination-rule-all.yaml"],
            req("ratings.default"),
            "ratings",
            "v1",
        ),
        (
            &["virtual-service-all-v1.yaml", "destination-rule-all.yaml"],
            req("details.default.svc.cluster.local:9080"),
            "details",
            "v1",
        ),
        (
            &[
                "virtual-service-all-v1.yaml",
                "destination-rule-all-mtls.yaml",
            ],
            req("reviews"),
            "reviews",
            "v1",
        ),
        (
            &[
                "virtual-service-details-v2.yaml",
                "destination-rule-all.yaml",
            ],
            req("details"),
            "details",
            "v2",
        ),
        (
            &[
                "virtual-service-reviews-v3.yaml",
                "destination-rule-reviews.yaml",
            ],
            req("reviews"),
            "reviews",
            "v3",
        ),
        (
            &[
                "virtual-service-reviews-v3.yaml",
                "destination-rule-reviews.yaml",
            ],
            req("reviews").header("end-user", "jason"),
            "reviews",
            "v3",
        ),
        (
            &[
                "virtual-service-ratings-db.yaml",
                "destination-rule-all.yaml",
            ],
            req("reviews"),
            "reviews",
            "v3",
        ),
        (
            &[
                "virtual-service-ratings-db.yaml",
                "destination-rule-all.yaml",
            ],
            req("ratings"),
            "ratings",
            "v2",
        ),
        (
            &[
                "virtual-service-ratings-mysql.yaml",
                "destination-rule-all.yaml",
            ],
            req("ratings"),
            "ratings",
            "v2-mysql",
        ),
        (
            &[
                "virtual-service-ratings-mysql.yaml",
                "destination-rule-all.yaml",
            ],
            req("reviews"),
            "reviews",
            "v3",
        ),
        (
            &[
                "virtual-service-ratings-mysql-vm.yaml",
                "destination-rule-all.yaml",
            ],
            req("ratings"),
            "ratings",
            "v2-mysql-vm",
        ),
        // jason → v2, everyone else → v3 (header values are case-sensitive).
        (
            &[
                "virtual-service-reviews-jason-v2-v3.yaml",
                "destination-rule-all.yaml",
            ],
            req("reviews").header("end-user", "jason"),
            "reviews",
            "v2",
        ),
        (
            &[
                "virtual-service-reviews-jason-v2-v3.yaml",
                "destination-rule-all.yaml",
            ],
            req("reviews"),
            "reviews",
            "v3",
        ),
        (
            &[
                "virtual-service-reviews-jason-v2-v3.yaml",
                "destination-rule-all.yaml",
            ],
            req("reviews").header("end-user", "Jason"),
            "reviews",
            "v3",
        ),
        (
            &[
                "virtual-service-reviews-jason-v2-v3.yaml",
                "destination-rule-all.yaml",
            ],
            req("reviews").header("end-user", "jason2"),
            "reviews",
            "v3",
        ),
        (
            &[
                "virtual-service-reviews-jason-v2-v3.yaml",
                "destination-rule-all.yaml",
            ],
            req("reviews").header("End-User", "jason"),
            "reviews",
            "v2",
        ),
        (
            &[
                "virtual-service-reviews-test-v2.yaml",
                "destination-rule-all.yaml",
            ],
            req("reviews").header("end-user", "jason"),
            "reviews",
            "v2",
        ),
        (
            &[
                "virtual-service-reviews-test-v2.yaml",
                "destination-rule-all.yaml",
            ],
            req("reviews").header("end-user", "mary"),
            "reviews",
            "v1",
        ),
        (
            &[
                "virtual-service-ratings-test-abort.yaml",
                "destination-rule-all.yaml",
            ],
            req("ratings").header("end-user", "jason"),
            "ratings",
            "v1",
        ),
        (
            &[
                "virtual-service-ratings-test-delay.yaml",
                "destination-rule-all.yaml",
            ],
            req("ratings"),
            "ratings",
            "v1",
        ),
        (
            &["fault-injection-details-v1.yaml"],
            req("details"),
            "details",
            "v1",
        ),
    ];
    for (files, r, host, subset) in cases {
        let s = load(files);
        assert_eq!(
            target(&s, &r),
            (svc(host), Some(subset.to_string())),
            "{files:?} {} {:?}",
            r.authority,
            r.headers
        );
    }
}

#[test]
fn subsets_carry_the_destination_rule_labels() {
    remora_corpus::require!("networking");
    let s = load(&["virtual-service-all-v1.yaml", "destination-rule-all.yaml"]);
    let dr = s.destination_rule(&svc("ratings")).unwrap();
    let labels: Vec<(&str, BTreeMap<String, String>)> = dr
        .subsets
        .iter()
        .map(|x| (x.name.as_str(), x.labels.clone()))
        .collect();
    let want: Vec<(&str, BTreeMap<String, String>)> = ["v1", "v2", "v2-mysql", "v2-mysql-vm"]
        .iter()
        .map(|v| (*v, [("version".to_string(), v.to_string())].into()))
        .collect();
    assert_eq!(labels, want);
    // No ServiceEntry for Kubernetes services yet: endpoints come from the original destination.
    let f = forward(decide(
        &s,
        &req("ratings"),
        &mut rand::rngs::StdRng::seed_from_u64(1),
    ));
    assert!(f.endpoints.is_empty());
    assert!(!f.resolve_by_dns);
}

/// Count subsets over `n` seeded draws and check each share is within 4 standard deviations
/// of the configured weight.
fn check_split(files: &[&str], want: &[(&str, f64)]) {
    let s = load(files);
    let mut rng = rand::rngs::StdRng::seed_from_u64(2026);
    let n = 10_000u32;
    let mut counts: BTreeMap<String, u32> = BTreeMap::new();
    for _ in 0..n {
        let f = forward(decide(&s, &req("reviews"), &mut rng));
        *counts.entry(f.subset.unwrap_or_default()).or_default() += 1;
    }
    let total: u32 = counts.values().sum();
    assert_eq!(total, n);
    for (subset, p) in want {
        let got = counts.get(*subset).copied().unwrap_or(0) as f64;
        let mean = n as f64 * p;
        let sigma = (n as f64 * p * (1.0 - p)).sqrt();
        println!(
            "{files:?}: {subset} {got} (expected {mean} ± {:.1})",
            4.0 * sigma
        );
        assert!(
            (got - mean).abs() <= 4.0 * sigma,
            "{files:?} {subset}: {got} draws, expected {mean} ± {}",
            4.0 * sigma
        );
    }
    assert_eq!(counts.len(), want.len(), "{counts:?}");
}

#[test]
fn weighted_splits_over_10000_draws() {
    remora_corpus::require!("networking");
    check_split(
        &[
            "virtual-service-reviews-80-20.yaml",
            "destination-rule-all.yaml",
        ],
        &[("v1", 0.8), ("v2", 0.2)],
    );
    check_split(
        &[
            "virtual-service-reviews-90-10.yaml",
            "destination-rule-all.yaml",
        ],
        &[("v1", 0.9), ("v2", 0.1)],
    );
    check_split(
        &[
            "virtual-service-reviews-50-v3.yaml",
            "destination-rule-all.yaml",
        ],
        &[("v1", 0.5), ("v3", 0.5)],
    );
    check_split(
        &[
            "virtual-service-reviews-v2-v3.yaml",
            "destination-rule-all.yaml",
        ],
        &[("v2", 0.5), ("v3", 0.5)],
    );
}

#[test]
fn same_seed_same_choices() {
    remora_corpus::require!("networking");
    let s = load(&[
        "virtual-service-reviews-80-20.yaml",
        "destination-rule-all.yaml",
    ]);
    let run = |seed| {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        (0..64)
            .map(|_| {
                forward(decide(&s, &req("reviews"), &mut rng))
                    .subset
                    .unwrap_or_default()
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(run(5), run(5));
    assert_ne!(run(5), run(6));
}

#[test]
fn faults_are_parsed_into_the_policy() {
    remora_corpus::require!("networking");
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    let s = load(&[
        "virtual-service-ratings-test-abort.yaml",
        "destination-rule-all.yaml",
    ]);
    let f = forward(decide(
        &s,
        &req("ratings").header("end-user", "jason"),
        &mut rng,
    ));
    let abort = f.policy.fault.and_then(|f| f.abort).unwrap();
    assert_eq!((abort.http_status, abort.percentage), (Some(500), 100.0));
    let f = forward(decide(&s, &req("ratings"), &mut rng));
    assert_eq!(f.policy.fault, None, "only jason gets the fault");

    let s = load(&[
        "virtual-service-ratings-test-delay.yaml",
        "destination-rule-all.yaml",
    ]);
    let f = forward(decide(
        &s,
        &req("ratings").header("end-user", "jason"),
        &mut rng,
    ));
    let delay = f.policy.fault.and_then(|f| f.delay).unwrap();
    assert_eq!(delay.fixed_delay, std::time::Duration::from_secs(7));
    assert_eq!(delay.percentage, 100.0);
    assert_eq!(
        forward(decide(&s, &req("ratings"), &mut rng)).policy.fault,
        None
    );

    // details: the first route has no match, so everyone gets the 555 abort.
    let s = load(&["fault-injection-details-v1.yaml"]);
    let f = forward(decide(&s, &req("details"), &mut rng));
    assert_eq!(
        f.policy
            .fault
            .and_then(|f| f.abort)
            .and_then(|a| a.http_status),
        Some(555)
    );
}

#[test]
fn gateway_rules_are_not_applied_to_sidecars() {
    remora_corpus::require!("networking");
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    for file in ["bookinfo-gateway.yaml", "certmanager-gateway.yaml"] {
        let s = load(&[file]);
        assert!(s.virtual_services.is_empty(), "{file}");
        let kinds: Vec<(&str, &str)> = s
            .ignored
            .iter()
            .map(|i| (i.kind.as_str(), i.reason.as_str()))
            .collect();
        assert_eq!(
            kinds,
            vec![
                (
                    "Gateway",
                    "Gateway configures gateway proxies, not sidecars; not applied"
                ),
                (
                    "VirtualService",
                    "bound to gateways only (not \"mesh\"); not applied to sidecars"
                ),
            ],
            "{file}"
        );
        // No VirtualService applies: the Service's default route (no route or VirtualService
        // name; before default routes existed this was a Passthrough).
        let f = forward(decide(
            &s,
            &req("productpage").path("/productpage"),
            &mut rng,
        ));
        assert_eq!(
            (
                f.host.as_str(),
                f.route_name.as_deref(),
                f.virtual_service.as_deref()
            ),
            ("productpage.default.svc.cluster.local", None, None),
            "{file}"
        );
    }
}

#[test]
fn egress_google_apis_port_rewrite_and_protocols() {
    remora_corpus::require!("networking");
    let s = load(&["egress-rule-google-apis.yaml"]);
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    // Port 80 is routed to port 443 of the same host, with the DNS-resolved endpoints.
    let f = forward(decide(&s, &req("www.googleapis.com").port(80), &mut rng));
    assert_eq!((f.host.as_str(), f.port), ("www.googleapis.com", 443));
    let addrs: Vec<String> = f.endpoints.iter().map(|e| e.addr.to_string()).collect();
    assert_eq!(addrs, vec!["127.0.0.77:443"]);
    // Port 443 has no matching route in the VirtualService: Envoy answers 404 (no route).
    assert_eq!(
        decide(&s, &req("www.googleapis.com").port(443), &mut rng),
        Decision::Deny {
            status: 404,
            reason: "no route of VirtualService default/rewrite-port-for-googleapis matched".into()
        }
    );
    let dr = s.destination_rule("www.googleapis.com").unwrap();
    let pls = &dr.traffic_policy.as_ref().unwrap().port_level_settings[0];
    assert_eq!(
        pls.tls.as_ref().map(|t| t.value.mode),
        Some(remora_model::policy::traffic::TlsKind::Simple)
    );
    let dst = |p| SocketAddr::from(([127, 0, 0, 77], p));
    assert_eq!(
        s.port_protocol(dst(80), Some("www.googleapis.com")),
        Some(Protocol::Http)
    );
    assert_eq!(
        s.port_protocol(dst(443), Some("www.googleapis.com")),
        Some(Protocol::Tls)
    );
    assert_eq!(s.port_protocol(dst(80), None), Some(Protocol::Http));
}

#[test]
fn every_bookinfo_file_loads_alone() {
    remora_corpus::require!("networking");
    let mut names: Vec<String> = std::fs::read_dir(networking())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml"))
        .collect();
    names.sort();
    assert_eq!(names.len(), 21, "{names:?}");
    for n in &names {
        let s = load(&[n.as_str()]);
        assert_eq!(s.files, vec![n.clone()]);
        assert_eq!(s.hash.len(), 64);
    }
}

#[test]
fn config_dump_keeps_istio_shapes() {
    remora_corpus::require!("networking");
    let s = load(&[
        "virtual-service-reviews-jason-v2-v3.yaml",
        "destination-rule-all.yaml",
    ]);
    let j = remora_model::dump::summary(&s);
    let route0 = &j["virtual_services"][0]["http"][0];
    assert_eq!(route0["match"][0]["headers"]["end-user"]["exact"], "jason");
    assert_eq!(route0["route"][0]["destination"]["subset"], "v2");
    assert_eq!(
        j["virtual_services"][0]["meta"]["file"],
        "virtual-service-reviews-jason-v2-v3.yaml"
    );
    assert_eq!(
        j["destination_rules"][1]["subsets"][2]["labels"]["version"],
        "v3"
    );
    assert_eq!(j["counts"]["http_routes"], 2);
}
