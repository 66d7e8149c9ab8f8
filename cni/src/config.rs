//! The plugin's network configuration (the conflist entry, with `prevResult`), read from stdin
//! and validated: every problem names the field, the value and the reason.

use std::path::PathBuf;

use remora_init::flags::IptablesMode;
use serde_json::Value;

use crate::spec::{self, code, CniError};

/// Where the plugin learns a pod's annotations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PodInfoSource {
    /// `{"source": "file", "dir": D, "waitMs": W}`: the pod object as JSON at
    /// `D/<namespace>/<name>.json`, waited for up to W ms (default 2000, at most 30000) (tests,
    /// the lab, and nodes where something else writes the files).
    File {
        dir: PathBuf,
        wait: std::time::Duration,
    },
}

/// The validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct PluginConfig {
    pub cni_version: String,
    pub name: String,
    /// The previous plugin's result, passed through unchanged (`None` only for DEL).
    pub prev_result: Option<Value>,
    pub pod_info: PodInfoSource,
    /// Pods in these namespaces are passed through untouched.
    pub exclude_namespaces: Vec<String>,
    pub iptables_mode: IptablesMode,
    /// One file per container the plugin programmed (what DEL and CHECK look at).
    pub state_dir: PathBuf,
    /// Where each invocation's report is appended (none when absent).
    pub log_file: Option<PathBuf>,
}

pub const DEFAULT_STATE_DIR: &str = "/var/lib/remora-cni";
/// How long a pod file is waited for by default, and at most (milliseconds).
pub const DEFAULT_POD_WAIT_MS: u64 = 2000;
pub const MAX_POD_WAIT_MS: u64 = 30_000;
pub const DEFAULT_EXCLUDED: [&str; 1] = ["kube-system"];

/// Fields the runtime or the conflist may add that the plugin does not use.
const TOLERATED: [&str; 6] = [
    "type",
    "capabilities",
    "runtimeConfig",
    "args",
    "dns",
    "ipam",
];

fn invalid(msg: String) -> CniError {
    CniError::new(code::INVALID_CONFIG, msg)
}

fn path_field(v: &Value, field: &str) -> Result<PathBuf, CniError> {
    match v.as_str() {
        Some(s) if s.starts_with('/') && !s.split('/').any(|c| c == "..") => Ok(PathBuf::from(s)),
        _ => Err(invalid(format!(
            "invalid {field} {v}: must be an absolute path without '..'"
        ))),
    }
}

/// The cniVersion of a configuration, if it can be read at all (for error results).
pub fn version_of(stdin: &[u8]) -> Option<String> {
    let v: Value = serde_json::from_slice(stdin).ok()?;
    let s = v.get("cniVersion")?.as_str()?;
    spec::is_supported(s).then(|| s.to_string())
}

/// Parse and validate the configuration on stdin. `need_prev` for ADD and CHECK (a chained
/// plugin always gets the previous plugin's result).
pub fn parse(stdin: &[u8], need_prev: bool) -> Result<PluginConfig, CniError> {
    let v: Value = serde_json::from_slice(stdin).map_err(|e| {
        CniError::new(
            code::DECODE_FAILURE,
            format!("the network configuration on stdin is not JSON: {e}"),
        )
    })?;
    let Some(obj) = v.as_object() else {
        return Err(CniError::new(
            code::DECODE_FAILURE,
            "the network configuration on stdin must be a JSON object",
        ));
    };
    let cni_version = match obj.get("cniVersion") {
        Some(Value::String(s)) if spec::is_supported(s) => s.clone(),
        Some(other) => {
            return Err(CniError::new(
                code::INCOMPATIBLE_VERSION,
                format!(
                    "unsupported cniVersion {other}: remora-cni speaks {}",
                    spec::SUPPORTED_VERSIONS.join(", ")
                ),
            ))
        }
        None => return Err(invalid("cniVersion is missing".into())),
    };
    let name = match obj.get("name") {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        Some(other) => {
            return Err(invalid(format!(
                "invalid name {other}: must be a non-empty string"
            )))
        }
        None => return Err(invalid("name is missing (the network's name)".into())),
    };
    let prev_result = match obj.get("prevResult") {
        Some(Value::Object(_)) => obj.get("prevResult").cloned(),
        Some(Value::Null) | None if need_prev => {
            return Err(invalid(
                "prevResult is missing: remora-cni is a chained plugin; list it after the primary network plugin in the conflist".into(),
            ))
        }
        Some(Value::Null) | None => None,
        Some(other) => {
            return Err(invalid(format!(
                "invalid prevResult {other}: must be the previous plugin's result object"
            )))
        }
    };
    let pod_info = match obj.get("podInfo") {
        None => {
            return Err(invalid(
                "podInfo is missing: say where the plugin reads pods, e.g. {\"source\": \"file\", \"dir\": \"/var/run/remora-cni/pods\"}".into(),
            ))
        }
        Some(p) => match p.get("source").and_then(Value::as_str) {
            Some("file") => {
                let dir = p
                    .get("dir")
                    .ok_or_else(|| invalid("podInfo.dir is missing (source \"file\")".into()))?;
                let wait_ms = match p.get("waitMs") {
                    None => DEFAULT_POD_WAIT_MS,
                    Some(w) => match w.as_u64().filter(|n| *n <= MAX_POD_WAIT_MS) {
                        Some(n) => n,
                        None => {
                            return Err(invalid(format!(
                                "invalid podInfo.waitMs {w}: must be a whole number of milliseconds from 0 to {MAX_POD_WAIT_MS}"
                            )))
                        }
                    },
                };
                if let Some(k) = p.as_object().and_then(|o| {
                    o.keys()
                        .find(|k| !["source", "dir", "waitMs"].contains(&k.as_str()))
                }) {
                    return Err(CniError::new(
                        code::UNSUPPORTED_FIELD,
                        format!("unknown field podInfo.{k} (known: source, dir, waitMs)"),
                    ));
                }
                PodInfoSource::File {
                    dir: path_field(dir, "podInfo.dir")?,
                    wait: std::time::Duration::from_millis(wait_ms),
                }
            }
            Some("kube") => {
                return Err(CniError::new(
                    code::UNSUPPORTED_FIELD,
                    "podInfo.source \"kube\" is not built yet: use {\"source\": \"file\", \"dir\": ...}",
                ))
            }
            _ => {
                return Err(invalid(format!(
                    "invalid podInfo.source {}: must be \"file\"",
                    p.get("source").unwrap_or(&Value::Null)
                )))
            }
        },
    };
    let exclude_namespaces = match obj.get("excludeNamespaces") {
        None => DEFAULT_EXCLUDED.iter().map(|s| s.to_string()).collect(),
        Some(Value::Array(items)) => {
            let mut out = Vec::new();
            for item in items {
                match item.as_str() {
                    Some(s) if !s.is_empty() && s.len() <= 63 => out.push(s.to_string()),
                    _ => {
                        return Err(invalid(format!(
                            "invalid excludeNamespaces item {item}: must be a namespace name"
                        )))
                    }
                }
            }
            out
        }
        Some(other) => {
            return Err(invalid(format!(
                "invalid excludeNamespaces {other}: must be a list of namespace names"
            )))
        }
    };
    let iptables_mode = match obj.get("iptablesMode").map(|v| (v, v.as_str())) {
        None => IptablesMode::Auto,
        Some((_, Some("auto"))) => IptablesMode::Auto,
        Some((_, Some("nft"))) => IptablesMode::Nft,
        Some((_, Some("legacy"))) => IptablesMode::Legacy,
        Some((v, _)) => {
            return Err(invalid(format!(
                "invalid iptablesMode {v}: must be \"auto\", \"nft\" or \"legacy\""
            )))
        }
    };
    let state_dir = match obj.get("stateDir") {
        None => PathBuf::from(DEFAULT_STATE_DIR),
        Some(v) => path_field(v, "stateDir")?,
    };
    let log_file = obj
        .get("logFile")
        .map(|v| path_field(v, "logFile"))
        .transpose()?;
    const OURS: [&str; 9] = [
        "cniVersion",
        "name",
        "prevResult",
        "podInfo",
        "excludeNamespaces",
        "iptablesMode",
        "stateDir",
        "logFile",
        "type",
    ];
    if let Some(unknown) = obj
        .keys()
        .find(|k| !OURS.contains(&k.as_str()) && !TOLERATED.contains(&k.as_str()))
    {
        return Err(CniError::new(
            code::UNSUPPORTED_FIELD,
            format!(
                "unknown field {unknown:?} in the remora-cni configuration (known: {})",
                OURS.join(", ")
            ),
        ));
    }
    Ok(PluginConfig {
        cni_version,
        name,
        prev_result,
        pod_info,
        exclude_namespaces,
        iptables_mode,
        state_dir,
        log_file,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn base() -> Value {
        json!({
            "cniVersion": "1.0.0",
            "name": "k8s-pod-network",
            "type": "remora-cni",
            "podInfo": {"source": "file", "dir": "/run/pods"},
            "prevResult": {"cniVersion": "1.0.0", "interfaces": [{"name": "eth0"}], "ips": []}
        })
    }

    fn parse_v(v: &Value, need_prev: bool) -> Result<PluginConfig, CniError> {
        parse(v.to_string().as_bytes(), need_prev)
    }

    #[test]
    fn defaults() {
        let c = parse_v(&base(), true).unwrap();
        assert_eq!(c.cni_version, "1.0.0");
        assert_eq!(c.exclude_namespaces, vec!["kube-system"]);
        assert_eq!(c.iptables_mode, IptablesMode::Auto);
        assert_eq!(c.state_dir, PathBuf::from(DEFAULT_STATE_DIR));
        assert_eq!(
            c.pod_info,
            PodInfoSource::File {
                dir: "/run/pods".into(),
                wait: std::time::Duration::from_millis(2000)
            }
        );
    }

    #[test]
    fn errors_name_field_value_and_reason() {
        let set = |k: &str, v: Value| {
            let mut b = base();
            b[k] = v;
            b
        };
        let mut no_prev = base();
        no_prev.as_object_mut().unwrap().remove("prevResult");
        let cases: Vec<(Value, u32, &str)> = vec![
            (
                set("cniVersion", json!("0.2.0")),
                1,
                "unsupported cniVersion \"0.2.0\"",
            ),
            (set("name", json!("")), 7, "invalid name"),
            (
                no_prev.clone(),
                7,
                "prevResult is missing: remora-cni is a chained plugin",
            ),
            (
                set("podInfo", json!({"source": "kube"})),
                2,
                "not built yet",
            ),
            (
                set("podInfo", json!({"source": "x"})),
                7,
                "invalid podInfo.source \"x\"",
            ),
            (
                set("podInfo", json!({"source": "file", "dir": "rel"})),
                7,
                "invalid podInfo.dir \"rel\"",
            ),
            (
                set("excludeNamespaces", json!("a")),
                7,
                "invalid excludeNamespaces",
            ),
            (
                set("iptablesMode", json!("xt")),
                7,
                "invalid iptablesMode \"xt\"",
            ),
            (set("stateDir", json!("/a/../b")), 7, "invalid stateDir"),
            (
                set(
                    "podInfo",
                    json!({"source": "file", "dir": "/p", "waitMs": 40000}),
                ),
                7,
                "invalid podInfo.waitMs 40000",
            ),
            (
                set("podInfo", json!({"source": "file", "dir": "/p", "wait": 1})),
                2,
                "unknown field podInfo.wait ",
            ),
            (set("podinfo", json!({})), 2, "unknown field \"podinfo\""),
        ];
        for (v, code, want) in cases {
            let e = parse_v(&v, true).unwrap_err();
            assert_eq!(e.code, code, "{v}: {}", e.msg);
            assert!(e.msg.contains(want), "{}", e.msg);
        }
        // DEL may come without prevResult.
        assert!(parse_v(&no_prev, false).is_ok());
        let e = parse(b"{not json", true).unwrap_err();
        assert_eq!(e.code, code::DECODE_FAILURE);
        assert!(e
            .msg
            .starts_with("the network configuration on stdin is not JSON"));
    }
}
