//! Mesh scenarios (issue 6) in the lab: Bookinfo-like services in a namespace labelled
//! `istio-injection=enabled`, injected by the real webhook, captured by the real remora-init,
//! routed by the real remora-proxy with rules adapted from Istio's Bookinfo samples.

use remora_e2e::{Lab, LabOptions};
use std::collections::BTreeMap;
use std::path::PathBuf;

const BOOKINFO: &str = include_str!("../fixtures/bookinfo.yaml");

fn shared() -> PathBuf {
    std::env::var_os("REMORA_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared")))
}

fn anchor(name: &str) -> String {
    let p = shared().join("anchors/istio/networking").join(name);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("reading {}: {e}", p.display()))
}

fn bookinfo_lab() -> Lab {
    let mut lab = Lab::start(LabOptions::default()).expect("lab starts");
    lab.create_namespace("bookinfo", &[("istio-injection", "enabled")]).unwrap();
    lab.set_rules("bookinfo", &anchor("destination-rule-all.yaml")).unwrap();
    if let Err(e) = lab.apply(BOOKINFO, "bookinfo") {
        panic!("{e:#}\n{}", lab.logs(30));
    }
    lab
}

/// Reviews versions seen over `n` productpage requests from the client pod.
fn review_versions(lab: &Lab, n: usize, headers: &[(&str, &str)]) -> BTreeMap<String, u32> {
    let client = lab.pod("client").unwrap();
    let mut seen = BTreeMap::new();
    for _ in 0..n {
        let r = lab
            .http(client, "productpage", 9080, "/productpage", headers)
            .unwrap_or_else(|e| panic!("{e:#}\n{}", lab.logs(30)));
        assert_eq!(r.status, 200, "{:?}", r.body);
        let v = r.json().unwrap();
        let version = v["reviews"]["version"].as_str().map(str::to_string).unwrap_or_else(|| format!("error {}", v["reviews"]));
        *seen.entry(version).or_default() += 1;
    }
    seen
}

#[test]
fn bookinfo_routing_rules_and_metrics() {
    let mut lab = bookinfo_lab();
    for p in lab.pods() {
        assert!(p.reviewed && p.meshed, "pod {} injected", p.name);
    }
    lab.set_rules("bookinfo", &format!("{}---\n{}", anchor("destination-rule-all.yaml"), anchor("virtual-service-all-v1.yaml"))).unwrap();
    let seen = review_versions(&lab, 30, &[]);
    assert_eq!(seen, BTreeMap::from([("v1".to_string(), 30)]), "{}", lab.logs(10));
}
