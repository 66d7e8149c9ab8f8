//! The lab itself, without the mesh: pods, Services, the kube-proxy stand-in and the hosts files.

use remora_e2e::{Lab, LabOptions};
use std::collections::BTreeMap;

const BOOKINFO: &str = include_str!("../fixtures/bookinfo.yaml");

#[test]
fn unmeshed_bookinfo_spreads_over_backends_through_kube_proxy() {
    let mut lab = Lab::start(LabOptions::default()).expect("lab starts");
    lab.create_namespace("plain", &[]).unwrap();
    lab.apply(BOOKINFO, "plain")
        .unwrap_or_else(|e| panic!("{e:#}\n{}", lab.logs(20)));
    let client = lab.pod("client").unwrap();
    assert!(
        !client.reviewed && !client.meshed,
        "an unlabelled namespace is not sent to the webhook"
    );
    let mut versions: BTreeMap<String, u32> = BTreeMap::new();
    for _ in 0..30 {
        let r = lab
            .http(client, "productpage", 9080, "/productpage", &[])
            .unwrap();
        assert_eq!(r.status, 200);
        let v = r.json().unwrap();
        assert_eq!(v["details"]["service"], "details");
        let rv = v["reviews"]["version"]
            .as_str()
            .unwrap_or("none")
            .to_string();
        if rv != "v1" {
            assert_eq!(v["reviews"]["ratings"]["service"], "ratings", "{v}");
        }
        *versions.entry(rv).or_default() += 1;
    }
    assert_eq!(
        versions.keys().collect::<Vec<_>>(),
        ["v1", "v2", "v3"],
        "kube-proxy spreads over all backends: {versions:?}"
    );
    let rules = lab.nat_rules(client).unwrap();
    assert!(rules.contains("-A OUTPUT -j KUBE-SERVICES"), "{rules}");
    assert!(rules.contains("--mode random --probability"), "{rules}");
}
