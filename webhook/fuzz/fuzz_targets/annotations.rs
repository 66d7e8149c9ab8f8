//! Arbitrary annotation maps (known Istio keys with arbitrary values, and arbitrary keys) through
//! the annotation parsers and the whole injection of a plain pod. Properties: no panic; every
//! denial is one line naming an annotation; an injected pod runs the configured images with the
//! fixed privileges (annotations never choose images, commands, capabilities or host paths).
#![no_main]

use std::collections::BTreeMap;
use std::sync::LazyLock;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use remora_webhook::annotations::{self, PodOptions};
use remora_webhook::config::Config;
use remora_webhook::inject::{inject_pod, Outcome};
use serde_json::{json, Value};

static CFG: LazyLock<Config> = LazyLock::new(Config::default);

/// Keys tried besides arbitrary ones: everything the parser reads, and a few Istio keys it does
/// not implement.
const EXTRA_KEYS: &[&str] = &[
    "sidecar.istio.io/proxyImageType",
    "sidecar.istio.io/enableCoreDump",
    "sidecar.istio.io/bootstrapOverride",
    "inject.istio.io/templates",
    "proxy.istio.io/config",
    "status.sidecar.istio.io/port",
];

#[derive(Arbitrary, Debug)]
enum Key {
    Known(u8),
    Other(String),
}

#[derive(Arbitrary, Debug)]
struct Input {
    pairs: Vec<(Key, String)>,
    native_sidecar_default: bool,
}

fn key_name(k: &Key) -> String {
    match k {
        Key::Known(i) => {
            let all: Vec<&str> = annotations::SUPPORTED
                .iter()
                .chain(EXTRA_KEYS)
                .copied()
                .collect();
            all[*i as usize % all.len()].to_string()
        }
        Key::Other(s) => s.clone(),
    }
}

fn one_line(msg: &str) {
    assert!(!msg.is_empty() && !msg.contains('\n'), "{msg:?}");
}

fn check_container(c: &Value, image: &str, want_caps: &[&str], uid: Option<u32>) {
    assert_eq!(c["image"].as_str(), Some(image), "{c}");
    let sc = &c["securityContext"];
    assert_eq!(sc["privileged"], json!(false), "{c}");
    assert_eq!(sc["allowPrivilegeEscalation"], json!(false), "{c}");
    assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]), "{c}");
    let added: Vec<&str> = sc["capabilities"]["add"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    assert!(added.iter().all(|a| want_caps.contains(a)), "{c}");
    if let Some(uid) = uid {
        assert_eq!(sc["runAsUser"], json!(uid), "{c}");
        assert_eq!(sc["runAsNonRoot"], json!(true), "{c}");
    }
}

fuzz_target!(|input: Input| {
    let map: BTreeMap<String, String> = input
        .pairs
        .iter()
        .map(|(k, v)| (key_name(k), v.clone()))
        .collect();
    let mut cfg = CFG.clone();
    cfg.native_sidecar = input.native_sidecar_default;

    // The parsers on their own.
    for msg in annotations::unsupported(&map) {
        one_line(&msg);
    }
    for v in map.values() {
        let _ = annotations::parse_inject_value(v);
        if let Ok(q) = annotations::parse_quantity(v) {
            assert!(q >= 0.0 || q.is_nan(), "negative quantity {q} from {v:?}");
        }
        let _ = annotations::parse_ports("k", v, true);
        let _ = annotations::parse_cidrs("k", v, true);
        for e in annotations::check_override_record(v) {
            one_line(&e);
        }
    }
    match PodOptions::parse(&map, &cfg) {
        Ok(o) => assert!(o.proxy_image.is_none(), "an image chosen by annotation"),
        Err(errs) => {
            assert!(!errs.is_empty());
            for e in &errs {
                one_line(e);
                assert!(e.starts_with("annotation "), "{e:?}");
            }
        }
    }

    // The whole injection of a plain pod carrying these annotations.
    let pod = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "fuzz", "namespace": "default", "annotations": map},
        "spec": {"containers": [{"name": "app", "image": "app:1",
            "ports": [{"containerPort": 8080}],
            "readinessProbe": {"httpGet": {"path": "/ready", "port": 8080}}}]}
    });
    match inject_pod(&pod, "default", &cfg) {
        Outcome::Injected { pod: out, notes, .. } => {
            for n in &notes {
                one_line(n);
            }
            let mut seen_proxy = false;
            for list in ["containers", "initContainers"] {
                for c in out["spec"][list].as_array().into_iter().flatten() {
                    match c["name"].as_str() {
                        Some("remora-proxy") => {
                            seen_proxy = true;
                            check_container(c, &cfg.proxy.image, &[], Some(cfg.proxy_uid));
                            assert_eq!(c["command"], json!(["remora-proxy"]));
                        }
                        Some("remora-init") => {
                            check_container(c, &cfg.init.image, &["NET_ADMIN", "NET_RAW"], None);
                            assert_eq!(c["command"], json!(["remora-init"]));
                        }
                        _ => {}
                    }
                }
            }
            assert!(seen_proxy, "injected without a proxy: {out}");
            for v in out["spec"]["volumes"].as_array().into_iter().flatten() {
                assert!(v.get("hostPath").is_none(), "a hostPath volume by annotation: {v}");
            }
        }
        Outcome::Skipped(r) => one_line(&r),
        Outcome::Denied(r) => one_line(&r),
    }
});
