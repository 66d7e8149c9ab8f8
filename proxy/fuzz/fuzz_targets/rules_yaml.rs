//! Any bytes as a rules file (`rules.yaml` in the rules ConfigMap) through the loader, the
//! validator (`remora-proxy validate`) and, when it loads, routing. Properties: no panic; a
//! rejected rule set has at least one error, each naming a file and a reason on one line; the
//! loader and the validator agree on whether the file has errors; a loaded snapshot routes.
//! Names are never resolved (no DNS from the fuzzer): `resolution: DNS` hosts get no addresses.
#![no_main]

use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;
use rand::SeedableRng;
use remora_model::route::{self, RequestInfo};
use remora_model::rules::{self, load::Inputs, LoadContext};

fn ctx() -> LoadContext {
    LoadContext {
        namespace: "default".into(),
        cluster_domain: "cluster.local".into(),
        pod_labels: BTreeMap::from([("app".to_string(), "reviews".to_string())]),
        ..LoadContext::default()
    }
}

fuzz_target!(|data: &[u8]| {
    let ctx = ctx();
    let inputs = Inputs {
        dir: "fuzz".into(),
        files: vec![("rules.yaml".to_string(), data.to_vec())],
        skipped: Vec::new(),
        hash: String::new(),
    };
    let no_dns = |_: &str| Vec::new();
    let loaded = rules::load_inputs(&inputs, &ctx, 1, &no_dns);
    if let Ok(text) = std::str::from_utf8(data) {
        let report = remora_model::lint::run_files(&[("rules.yaml", text)], &ctx);
        let _ = report.summary_line();
        // The validator is the stricter of the two (it also reports, e.g., IST0109).
        assert!(
            loaded.is_ok() || !report.errors.is_empty(),
            "the loader rejects what the validator passes: {:?}",
            loaded.as_ref().err()
        );
    }
    match loaded {
        Err(errs) => {
            assert!(!errs.is_empty(), "rejected without an error");
            for e in &errs {
                let line = e.to_string();
                assert!(!line.trim().is_empty(), "empty error");
                assert!(!line.contains('\n'), "error is not one line: {line:?}");
            }
        }
        Ok(snap) => {
            let _ = remora_model::dump::summary(&snap);
            let _ = snap.counts();
            let mut rng = rand::rngs::StdRng::seed_from_u64(1);
            let headers = http::HeaderMap::new();
            let mut hosts: Vec<String> = snap
                .virtual_services
                .iter()
                .flat_map(|vs| vs.hosts.iter().cloned())
                .take(8)
                .collect();
            hosts.push("reviews".into());
            for host in &hosts {
                for path in ["/", "/a/../b?x=1", "*"] {
                    let req = RequestInfo {
                        authority: host,
                        method: "GET",
                        path,
                        headers: &headers,
                        dst: "10.0.0.1:9080".parse().unwrap(),
                    };
                    let _ = route::route(&snap, &req, &mut rng);
                }
            }
        }
    }
});
