//! Istio's pod labels and annotations: parsing and validation.
//!
//! A bad value denies the pod with a message naming the annotation, the value and why, so the
//! user sees it in `kubectl apply` output instead of a pod that silently misbehaves.

use std::collections::BTreeMap;

use crate::config::Config;
pub use crate::values::{parse_quantity, INJECT, LOG_LEVELS};
// The capture annotations are read by the injector and the CNI plugin alike: one definition.
pub use remora_init::pod::{
    parse_cidrs, parse_interfaces, parse_ports, CaptureOptions, Interception,
    EXCLUDE_INBOUND_PORTS, EXCLUDE_INTERFACES, EXCLUDE_OUTBOUND_IP_RANGES, EXCLUDE_OUTBOUND_PORTS,
    INCLUDE_INBOUND_PORTS, INCLUDE_OUTBOUND_IP_RANGES, INCLUDE_OUTBOUND_PORTS, INTERCEPTION_MODE,
    KUBEVIRT_INTERFACES, REROUTE_VIRTUAL_INTERFACES,
};

pub const STATUS: &str = "sidecar.istio.io/status";
pub const NATIVE_SIDECAR: &str = "sidecar.istio.io/nativeSidecar";
pub const REWRITE_PROBES: &str = "sidecar.istio.io/rewriteAppHTTPProbers";
pub const LOG_LEVEL: &str = "sidecar.istio.io/logLevel";
pub const PROXY_CPU: &str = "sidecar.istio.io/proxyCPU";
pub const PROXY_MEMORY: &str = "sidecar.istio.io/proxyMemory";
pub const PROXY_CPU_LIMIT: &str = "sidecar.istio.io/proxyCPULimit";
pub const PROXY_MEMORY_LIMIT: &str = "sidecar.istio.io/proxyMemoryLimit";
pub const PROXY_IMAGE: &str = "sidecar.istio.io/proxyImage";
pub const READINESS_INITIAL_DELAY: &str = "readiness.status.sidecar.istio.io/initialDelaySeconds";
pub const READINESS_PERIOD: &str = "readiness.status.sidecar.istio.io/periodSeconds";
pub const READINESS_FAILURE_THRESHOLD: &str = "readiness.status.sidecar.istio.io/failureThreshold";
pub const USER_VOLUME: &str = "sidecar.istio.io/userVolume";
pub const USER_VOLUME_MOUNT: &str = "sidecar.istio.io/userVolumeMount";
pub const OVERRIDES: &str = "proxy.istio.io/overrides";
pub const DEFAULT_CONTAINER: &str = "kubectl.kubernetes.io/default-container";
pub const DEFAULT_LOGS_CONTAINER: &str = "kubectl.kubernetes.io/default-logs-container";
pub const PROM_SCRAPE: &str = "prometheus.io/scrape";
pub const PROM_PORT: &str = "prometheus.io/port";
pub const PROM_PATH: &str = "prometheus.io/path";
/// `"false"`: the pod's metrics are not merged into the proxy's (Istio's annotation).
pub const MERGE_METRICS: &str = "prometheus.istio.io/merge-metrics";

/// Every Istio annotation remora reads or writes.
pub const SUPPORTED: &[&str] = &[
    INJECT,
    STATUS,
    NATIVE_SIDECAR,
    REWRITE_PROBES,
    LOG_LEVEL,
    PROXY_CPU,
    PROXY_MEMORY,
    PROXY_CPU_LIMIT,
    PROXY_MEMORY_LIMIT,
    PROXY_IMAGE,
    INTERCEPTION_MODE,
    INCLUDE_OUTBOUND_IP_RANGES,
    EXCLUDE_OUTBOUND_IP_RANGES,
    INCLUDE_INBOUND_PORTS,
    EXCLUDE_INBOUND_PORTS,
    INCLUDE_OUTBOUND_PORTS,
    EXCLUDE_OUTBOUND_PORTS,
    EXCLUDE_INTERFACES,
    KUBEVIRT_INTERFACES,
    REROUTE_VIRTUAL_INTERFACES,
    READINESS_INITIAL_DELAY,
    READINESS_PERIOD,
    READINESS_FAILURE_THRESHOLD,
    USER_VOLUME,
    USER_VOLUME_MOUNT,
    OVERRIDES,
    MERGE_METRICS,
];

/// Istio-namespaced annotations on the pod that remora does not implement (each one a warning).
pub fn unsupported(ann: &BTreeMap<String, String>) -> Vec<String> {
    const PREFIXES: &[&str] = &[
        "sidecar.istio.io/",
        "traffic.sidecar.istio.io/",
        "proxy.istio.io/",
        "status.sidecar.istio.io/",
        "readiness.status.sidecar.istio.io/",
        "inject.istio.io/",
    ];
    ann.keys()
        .filter(|k| PREFIXES.iter().any(|p| k.starts_with(p)) && !SUPPORTED.contains(&k.as_str()))
        // Escaped: a key is not validated by the API server until after admission, and a
        // warning must stay one line.
        .map(|k| {
            format!(
                "annotation {} is not supported by remora and is ignored",
                k.escape_debug()
            )
        })
        .collect()
}

/// A JSON object of name → object (`sidecar.istio.io/userVolume`, `userVolumeMount`).
fn parse_named_objects(key: &str, v: &str) -> Result<Vec<(String, serde_json::Value)>, String> {
    let bad = |why: &str| format!("annotation {key}: invalid value {v:?}: {why}");
    let parsed: serde_json::Value =
        serde_json::from_str(v).map_err(|e| bad(&format!("not JSON ({e})")))?;
    let obj = parsed
        .as_object()
        .ok_or_else(|| bad("expected a JSON object of name to definition"))?;
    let mut out = Vec::new();
    for (name, def) in obj {
        if !def.is_object() {
            return Err(bad(&format!("the entry {name:?} is not an object")));
        }
        out.push((name.clone(), def.clone()));
    }
    Ok(out)
}

/// The denial for `sidecar.istio.io/proxyImage` (Istio honours it; remora does not).
pub const PROXY_IMAGE_REFUSED: &str = "annotation sidecar.istio.io/proxyImage: image choice by annotation is refused by remora; set images in the injector config";

/// The settings of a `securityContext` that raise privileges above what the injector renders:
/// added capabilities, privileged, privilege escalation, the root user (for the proxy; the init
/// container runs as root already), an unconfined seccomp or AppArmor profile, SELinux options,
/// an unmasked /proc.
fn raised_privileges(sc: &serde_json::Value, proxy: bool) -> Vec<&'static str> {
    let mut out = Vec::new();
    if !sc.is_object() {
        return out;
    }
    let adds = sc
        .pointer("/capabilities/add")
        .is_some_and(|a| a.as_array().is_none_or(|a| !a.is_empty()));
    if adds {
        out.push("capabilities.add");
    }
    if sc.get("privileged") == Some(&serde_json::Value::Bool(true)) {
        out.push("privileged");
    }
    if sc.get("allowPrivilegeEscalation") == Some(&serde_json::Value::Bool(true)) {
        out.push("allowPrivilegeEscalation");
    }
    if proxy {
        if sc.get("runAsUser").and_then(serde_json::Value::as_i64) == Some(0) {
            out.push("runAsUser 0");
        }
        if sc.get("runAsGroup").and_then(serde_json::Value::as_i64) == Some(0) {
            out.push("runAsGroup 0");
        }
        if sc.get("runAsNonRoot") == Some(&serde_json::Value::Bool(false)) {
            out.push("runAsNonRoot false");
        }
    }
    for (ptr, what) in [
        ("/seccompProfile/type", "seccompProfile Unconfined"),
        ("/appArmorProfile/type", "appArmorProfile Unconfined"),
    ] {
        if sc.pointer(ptr).and_then(serde_json::Value::as_str) == Some("Unconfined") {
            out.push(what);
        }
    }
    if sc.get("seLinuxOptions").is_some_and(|v| !v.is_null()) {
        out.push("seLinuxOptions");
    }
    if sc
        .get("procMount")
        .and_then(serde_json::Value::as_str)
        .is_some_and(|m| m != "Default")
    {
        out.push("procMount");
    }
    out
}

fn shown(val: &serde_json::Value) -> String {
    let mut s = val.to_string();
    if s.len() > 120 {
        let cut = (0..=117)
            .rev()
            .find(|i| s.is_char_boundary(*i))
            .unwrap_or(0);
        s.truncate(cut);
        s.push_str("...");
    }
    s
}

/// Checks the `proxy.istio.io/overrides` record (`{"proxy": [...], "init": [...]}`) that a
/// previous injection wrote. It is replayed over the rendered containers when the pod declares
/// no override containers itself, so as an annotation it must not choose an image or a command,
/// nor raise privileges in a `securityContext` (tightening them, e.g. another non-root uid, is
/// fine). Each problem is one error. `image: auto` (Istio's placeholder) is allowed. A record
/// that is not JSON, or has another shape, is ignored by the injection and passes here.
pub fn check_override_record(v: &str) -> Vec<String> {
    check_override_record_in(v, None, None)
}

/// Whether `base` already holds every setting of `over`, as the override merge would write it
/// (objects key by key, anything else whole; a setting absent from `base` counts as null).
fn covers(base: Option<&serde_json::Value>, over: &serde_json::Value) -> bool {
    match (base, over) {
        (Some(serde_json::Value::Object(b)), serde_json::Value::Object(o)) => {
            o.iter().all(|(k, v)| covers(b.get(k), v))
        }
        (None, serde_json::Value::Null) => true,
        (Some(b), o) => b == o,
        (None, _) => false,
    }
}

/// [`check_override_record`] for a pod a previous injection left behind: `proxy` and `init` are
/// the injected containers still in its spec (named in `sidecar.istio.io/status`). A setting of
/// the record that the container already carries in the spec is not refused: the record only
/// replays what the pod spec shows in the open (the first injection merged it from a container
/// the pod declared itself, which is allowed), and the same pod without the annotation would
/// keep it too, since those containers are what the spec declares. So re-injecting our own output
/// is accepted and changes nothing. A record that adds anything the containers do not already
/// have is checked as usual.
pub fn check_override_record_in(
    v: &str,
    proxy: Option<&serde_json::Value>,
    init: Option<&serde_json::Value>,
) -> Vec<String> {
    let Ok(rec) = serde_json::from_str::<serde_json::Value>(v) else {
        return Vec::new();
    };
    let mut errs = Vec::new();
    for (role, container, previous) in [
        ("proxy", "remora-proxy", proxy),
        ("init", "remora-init", init),
    ] {
        let Some(list) = rec.get(role).and_then(serde_json::Value::as_array) else {
            continue;
        };
        let shown_in_spec =
            |key: &str, val: &serde_json::Value| previous.is_some_and(|c| covers(c.get(key), val));
        for entry in list {
            let mut push = |e: String| {
                if !errs.contains(&e) {
                    errs.push(e);
                }
            };
            if let Some(img) = entry
                .get("image")
                .filter(|i| !i.is_null() && *i != "auto" && !shown_in_spec("image", i))
            {
                push(format!(
                    "annotation {OVERRIDES}: image {} for {container}: image choice by annotation is refused by remora; set images in the injector config",
                    shown(img)
                ));
            }
            if let Some(cmd) = entry
                .get("command")
                .filter(|c| !c.is_null() && !shown_in_spec("command", c))
            {
                push(format!(
                    "annotation {OVERRIDES}: command {} for {container}: a command by annotation is refused by remora; the injected containers run remora-proxy and remora-init",
                    shown(cmd)
                ));
            }
            if let Some(sc) = entry
                .get("securityContext")
                .filter(|sc| !shown_in_spec("securityContext", sc))
            {
                let raised = raised_privileges(sc, role == "proxy");
                if !raised.is_empty() {
                    push(format!(
                        "annotation {OVERRIDES}: securityContext {} for {container}: raising privileges ({}) by annotation is refused by remora",
                        shown(sc),
                        raised.join(", ")
                    ));
                }
            }
        }
    }
    errs
}

/// `sidecar.istio.io/inject` values (YAML booleans, as Istio reads them).
pub fn parse_inject_value(v: &str) -> Option<bool> {
    match v.trim().to_ascii_lowercase().as_str() {
        "y" | "yes" | "true" | "on" => Some(true),
        "n" | "no" | "false" | "off" => Some(false),
        _ => None,
    }
}

fn parse_bool(key: &str, v: &str) -> Result<bool, String> {
    match v.trim().to_ascii_lowercase().as_str() {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(format!(
            "annotation {key}: invalid value {v:?}: must be \"true\" or \"false\""
        )),
    }
}

fn parse_seconds(key: &str, v: &str, min: i64) -> Result<i64, String> {
    match v.trim().parse::<i64>() {
        Ok(n) if n >= min && n <= 3600 => Ok(n),
        _ => Err(format!(
            "annotation {key}: invalid value {v:?}: must be a whole number from {min} to 3600"
        )),
    }
}

/// Everything the annotations ask of the injection, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct PodOptions {
    pub native_sidecar: bool,
    pub rewrite_probes: bool,
    pub log_level: String,
    /// Always `None`: image choice by annotation (`sidecar.istio.io/proxyImage`) is refused; the
    /// proxy image comes from the injector config.
    pub proxy_image: Option<String>,
    /// The capture settings (`remora-init`'s arguments), shared with the CNI plugin.
    pub capture: CaptureOptions,
    /// Resource overrides from the proxy annotations: (requests|limits, cpu|memory) → value.
    pub requests: BTreeMap<String, String>,
    pub limits: BTreeMap<String, String>,
    /// Extra volumes for the pod and mounts for the proxy (name → definition).
    pub user_volumes: Vec<(String, serde_json::Value)>,
    pub user_volume_mounts: Vec<(String, serde_json::Value)>,
    pub readiness_initial_delay: Option<i64>,
    pub readiness_period: Option<i64>,
    pub readiness_failure_threshold: Option<i64>,
}

impl PodOptions {
    /// Validates the pod's annotations against `cfg`; all problems are returned, each a sentence.
    pub fn parse(ann: &BTreeMap<String, String>, cfg: &Config) -> Result<PodOptions, Vec<String>> {
        Self::parse_reinjected(ann, cfg, None, None)
    }

    /// [`PodOptions::parse`] for a pod that a previous injection left with the containers
    /// `proxy` and `init` (see [`check_override_record_in`]).
    pub fn parse_reinjected(
        ann: &BTreeMap<String, String>,
        cfg: &Config,
        proxy: Option<&serde_json::Value>,
        init: Option<&serde_json::Value>,
    ) -> Result<PodOptions, Vec<String>> {
        let mut errs = Vec::new();
        let get = |k: &str| ann.get(k).map(String::as_str);
        let mut opts = PodOptions {
            native_sidecar: cfg.native_sidecar,
            rewrite_probes: cfg.rewrite_app_probes,
            log_level: cfg.log_level.clone(),
            proxy_image: None,
            capture: CaptureOptions::default(),
            requests: BTreeMap::new(),
            limits: BTreeMap::new(),
            user_volumes: vec![],
            user_volume_mounts: vec![],
            readiness_initial_delay: None,
            readiness_period: None,
            readiness_failure_threshold: None,
        };
        if let Some(v) = get(NATIVE_SIDECAR) {
            match parse_bool(NATIVE_SIDECAR, v) {
                Ok(b) => opts.native_sidecar = b,
                Err(e) => errs.push(e),
            }
        }
        if let Some(v) = get(REWRITE_PROBES) {
            match parse_bool(REWRITE_PROBES, v) {
                Ok(b) => opts.rewrite_probes = b,
                Err(e) => errs.push(e),
            }
        }
        if let Some(v) = get(LOG_LEVEL) {
            let l = v.trim().to_ascii_lowercase();
            let l = if l == "warn" {
                "warning".to_string()
            } else {
                l
            };
            if LOG_LEVELS.contains(&l.as_str()) {
                opts.log_level = l;
            } else {
                errs.push(format!(
                    "annotation {LOG_LEVEL}: invalid value {v:?}: must be one of {}",
                    LOG_LEVELS.join(", ")
                ));
            }
        }
        if get(PROXY_IMAGE).is_some() {
            errs.push(PROXY_IMAGE_REFUSED.to_string());
        }
        if let Some(v) = get(OVERRIDES) {
            errs.extend(check_override_record_in(v, proxy, init));
        }
        let (capture, capture_errors) = CaptureOptions::parse(ann);
        opts.capture = capture;
        errs.extend(capture_errors);
        for (key, kind, res) in [
            (PROXY_CPU, "requests", "cpu"),
            (PROXY_MEMORY, "requests", "memory"),
            (PROXY_CPU_LIMIT, "limits", "cpu"),
            (PROXY_MEMORY_LIMIT, "limits", "memory"),
        ] {
            if let Some(v) = get(key) {
                match parse_quantity(v) {
                    Ok(_) => {
                        let m = if kind == "requests" {
                            &mut opts.requests
                        } else {
                            &mut opts.limits
                        };
                        m.insert(res.to_string(), v.trim().to_string());
                    }
                    Err(why) => errs.push(format!("annotation {key}: invalid value {v:?}: {why}")),
                }
            }
        }
        // A request above its limit would be rejected by the API server later, less clearly.
        // (As in Istio, any of these annotations replaces the configured resources entirely.)
        for (res, rk, lk) in [
            ("cpu", PROXY_CPU, PROXY_CPU_LIMIT),
            ("memory", PROXY_MEMORY, PROXY_MEMORY_LIMIT),
        ] {
            if let (Some(r), Some(l)) = (opts.requests.get(res), opts.limits.get(res)) {
                if let (Ok(rv), Ok(lv)) = (parse_quantity(r), parse_quantity(l)) {
                    if rv > lv {
                        errs.push(format!(
                            "annotation {rk}: invalid value {r:?}: the proxy {res} request is above its limit {l:?} ({lk})"
                        ));
                    }
                }
            }
        }
        if let Some(v) = get(USER_VOLUME) {
            match parse_named_objects(USER_VOLUME, v) {
                Ok(l) => {
                    for (name, def) in &l {
                        if def.get("hostPath").is_some() {
                            errs.push(format!(
                                "annotation {USER_VOLUME}: volume {name:?} is a hostPath volume: host paths by annotation are refused by remora; declare the volume in the pod spec"
                            ));
                        }
                    }
                    opts.user_volumes = l;
                }
                Err(e) => errs.push(e),
            }
        }
        if let Some(v) = get(USER_VOLUME_MOUNT) {
            match parse_named_objects(USER_VOLUME_MOUNT, v) {
                Ok(l) => opts.user_volume_mounts = l,
                Err(e) => errs.push(e),
            }
        }
        for (key, min, slot) in [
            (
                READINESS_INITIAL_DELAY,
                0,
                &mut opts.readiness_initial_delay,
            ),
            (READINESS_PERIOD, 1, &mut opts.readiness_period),
            (
                READINESS_FAILURE_THRESHOLD,
                1,
                &mut opts.readiness_failure_threshold,
            ),
        ] {
            if let Some(v) = get(key) {
                match parse_seconds(key, v, min) {
                    Ok(n) => *slot = Some(n),
                    Err(e) => errs.push(e),
                }
            }
        }
        if errs.is_empty() {
            Ok(opts)
        } else {
            Err(errs)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ann(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn errors(pairs: &[(&str, &str)]) -> Vec<String> {
        PodOptions::parse(&ann(pairs), &Config::default()).unwrap_err()
    }

    #[test]
    fn defaults_without_annotations() {
        let o = PodOptions::parse(&ann(&[]), &Config::default()).unwrap();
        assert!(o.native_sidecar && o.rewrite_probes);
        assert_eq!(o.log_level, "info");
        assert_eq!(o.capture.interception, Interception::Redirect);
        assert!(o.capture.include_inbound_ports.is_none());
    }

    #[test]
    fn ports_parse_and_reject() {
        assert_eq!(
            parse_ports("k", " 1, 2,3 ", false).unwrap(),
            vec!["1", "2", "3"]
        );
        assert_eq!(parse_ports("k", "", false).unwrap(), Vec::<String>::new());
        assert_eq!(parse_ports("k", "*", true).unwrap(), vec!["*"]);
        assert!(parse_ports("k", "*", false)
            .unwrap_err()
            .contains("wildcard"));
        assert!(parse_ports("k", "0", false)
            .unwrap_err()
            .contains("out of range"));
        assert!(parse_ports("k", "65536", false)
            .unwrap_err()
            .contains("out of range"));
        assert!(parse_ports("k", "bad", false)
            .unwrap_err()
            .contains("not a port"));
    }

    #[test]
    fn bad_values_name_annotation_value_and_reason() {
        let e = errors(&[(EXCLUDE_INBOUND_PORTS, "*")]);
        assert_eq!(e.len(), 1);
        assert!(e[0].contains(EXCLUDE_INBOUND_PORTS) && e[0].contains("\"*\""));
        let e = errors(&[(INCLUDE_OUTBOUND_IP_RANGES, "bad")]);
        assert!(e[0].contains(INCLUDE_OUTBOUND_IP_RANGES) && e[0].contains("not a CIDR"));
        let e = errors(&[(EXCLUDE_OUTBOUND_IP_RANGES, "*")]);
        assert!(e[0].contains(EXCLUDE_OUTBOUND_IP_RANGES));
        let e = errors(&[(PROXY_CPU, "fast"), (LOG_LEVEL, "loud")]);
        assert_eq!(e.len(), 2, "{e:?}");
        let e = errors(&[(NATIVE_SIDECAR, "maybe")]);
        assert!(e[0].contains(NATIVE_SIDECAR) && e[0].contains("maybe"));
        let e = errors(&[(INTERCEPTION_MODE, "TPROXY")]);
        assert!(e[0].contains("TPROXY"));
        let e = errors(&[(EXCLUDE_INTERFACES, "eth0,this-name-is-way-too-long")]);
        assert!(e[0].contains("interface"));
    }

    #[test]
    fn proxy_image_annotation_is_refused() {
        for v in [
            "evil.example/proxy:1",
            "",
            "ghcr.io/remora-mesh/remora-proxy:0.1.0",
        ] {
            let e = errors(&[(PROXY_IMAGE, v)]);
            assert_eq!(e, vec![PROXY_IMAGE_REFUSED.to_string()], "{v:?}");
        }
        assert!(PROXY_IMAGE_REFUSED.contains("image choice by annotation is refused by remora"));
        // Refused alongside other problems, each reported.
        let e = errors(&[(PROXY_IMAGE, "x"), (LOG_LEVEL, "loud")]);
        assert_eq!(e.len(), 2, "{e:?}");
    }

    #[test]
    fn override_record_may_not_choose_image_command_or_privileges() {
        let e = errors(&[(
            OVERRIDES,
            r#"{"proxy":[{"name":"istio-proxy","image":"evil/proxy"}],"init":[]}"#,
        )]);
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(
            e[0].contains(OVERRIDES)
                && e[0].contains("evil/proxy")
                && e[0].contains("remora-proxy")
                && e[0].contains("image choice by annotation is refused by remora"),
            "{e:?}"
        );
        let e = errors(&[(
            OVERRIDES,
            r#"{"init":[{"name":"istio-init","command":["sh"],"securityContext":{"privileged":true,"capabilities":{"add":["SYS_ADMIN"]}}}]}"#,
        )]);
        assert_eq!(e.len(), 2, "{e:?}");
        assert!(
            e[0].contains("command") && e[0].contains("remora-init"),
            "{e:?}"
        );
        assert!(
            e[1].contains("securityContext") && e[1].contains("SYS_ADMIN"),
            "{e:?}"
        );
        // Istio's placeholder image, resources, env and probes stay allowed.
        let ok = r#"{"proxy":[{"name":"istio-proxy","image":"auto","resources":{"requests":{"cpu":"123m"}},"env":[{"name":"A","value":"b"}]}],"init":[{"name":"istio-init","args":["-p","15001"]}]}"#;
        assert!(PodOptions::parse(&ann(&[(OVERRIDES, ok)]), &Config::default()).is_ok());
        // A record the injection ignores (not JSON, other shape) is not an escalation.
        assert!(check_override_record("not json").is_empty());
        assert!(check_override_record(r#"{"initContainers":[{"image":"x"}]}"#).is_empty());
        // Long values are cut in the message.
        let long = format!(r#"{{"proxy":[{{"image":"{}"}}]}}"#, "é".repeat(200));
        let e = check_override_record(&long);
        assert!(e[0].contains("...") && e[0].len() < 400, "{e:?}");
    }

    #[test]
    fn tproxy_and_host_path_volumes_are_refused() {
        let e = errors(&[(INTERCEPTION_MODE, "TPROXY")]);
        assert!(
            e[0].contains("NET_ADMIN") && e[0].contains("refused"),
            "{e:?}"
        );
        let e = errors(&[(
            USER_VOLUME,
            r#"{"root":{"hostPath":{"path":"/"}},"ok":{"emptyDir":{}}}"#,
        )]);
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(
            e[0].contains(USER_VOLUME) && e[0].contains("\"root\"") && e[0].contains("hostPath"),
            "{e:?}"
        );
    }

    #[test]
    fn interface_names_starting_with_a_dash_are_denied_in_one_line() {
        // Fuzzing regression (annotations target): "-1" reached remora-init's parser, whose
        // rejection is multi-line clap usage text.
        for key in [
            EXCLUDE_INTERFACES,
            KUBEVIRT_INTERFACES,
            REROUTE_VIRTUAL_INTERFACES,
        ] {
            let e = errors(&[(key, "eth0,-1")]);
            assert_eq!(e.len(), 1, "{e:?}");
            assert!(
                e[0].contains(key) && e[0].contains("\"-1\" starts with '-'"),
                "{e:?}"
            );
            assert!(!e[0].contains('\n'));
        }
        let mut p = serde_json::json!({"metadata": {"annotations": {EXCLUDE_INTERFACES: "-1"}},
            "spec": {"containers": [{"name": "a", "image": "x"}]}});
        p["metadata"]["name"] = "p".into();
        match crate::inject::inject_pod(&p, "default", &Config::default()) {
            crate::inject::Outcome::Denied(m) => {
                assert!(m.starts_with("annotation ") && !m.contains('\n'), "{m:?}")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn request_above_limit_is_denied() {
        let e = errors(&[(PROXY_CPU, "3"), (PROXY_CPU_LIMIT, "2")]);
        assert!(e[0].contains("above its limit"), "{e:?}");
        assert!(PodOptions::parse(
            &ann(&[(PROXY_MEMORY, "1Gi"), (PROXY_MEMORY_LIMIT, "2Gi")]),
            &Config::default()
        )
        .is_ok());
    }

    #[test]
    fn user_volumes_and_unsupported() {
        let o = PodOptions::parse(
            &ann(&[
                (USER_VOLUME, r#"{"v1":{"emptyDir":{}}}"#),
                (USER_VOLUME_MOUNT, r#"{"v1":{"mountPath":"/v1"}}"#),
            ]),
            &Config::default(),
        )
        .unwrap();
        assert_eq!(o.user_volumes[0].0, "v1");
        assert_eq!(o.user_volume_mounts[0].1["mountPath"], "/v1");
        let e = errors(&[(USER_VOLUME, "[1]")]);
        assert!(e[0].contains(USER_VOLUME), "{e:?}");
        let w = unsupported(&ann(&[
            ("proxy.istio.io/config", "x"),
            (LOG_LEVEL, "info"),
            ("example.com/x", "y"),
        ]));
        assert_eq!(w.len(), 1);
        assert!(w[0].contains("proxy.istio.io/config"));
    }

    #[test]
    fn quantities() {
        assert_eq!(parse_quantity("100m").unwrap(), 0.1);
        assert_eq!(parse_quantity("2").unwrap(), 2.0);
        assert_eq!(parse_quantity("1Ki").unwrap(), 1024.0);
        assert_eq!(parse_quantity("1e3").unwrap(), 1000.0);
        assert!(parse_quantity("-1").is_err());
        assert!(parse_quantity("1X").is_err());
        assert!(parse_quantity("").is_err());
    }

    #[test]
    fn inject_values() {
        assert_eq!(parse_inject_value("true"), Some(true));
        assert_eq!(parse_inject_value("Yes"), Some(true));
        assert_eq!(parse_inject_value("false"), Some(false));
        assert_eq!(parse_inject_value("enabled"), None);
    }

    #[test]
    fn log_level_warn_alias_and_traffic_lists() {
        let o = PodOptions::parse(
            &ann(&[
                (LOG_LEVEL, "warn"),
                (INCLUDE_INBOUND_PORTS, ""),
                (INCLUDE_OUTBOUND_IP_RANGES, "10.0.0.0/8, 192.168.0.0/16"),
            ]),
            &Config::default(),
        )
        .unwrap();
        assert_eq!(o.log_level, "warning");
        assert_eq!(o.capture.include_inbound_ports, Some(vec![]));
        assert_eq!(
            o.capture.include_outbound_ip_ranges,
            Some(vec!["10.0.0.0/8".to_string(), "192.168.0.0/16".to_string()])
        );
    }
}
