//! The CNI protocol as a plugin sees it (CNI spec 1.1, back to 0.3.0): the `CNI_*` environment,
//! the versions, the error result, `CNI_ARGS`' Kubernetes pod name.

use serde_json::{json, Value};

/// The spec versions this plugin speaks, oldest first.
pub const SUPPORTED_VERSIONS: [&str; 5] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];
/// The newest: used in results when the configuration's version is not known.
pub const LATEST: &str = "1.1.0";

/// The spec's well-known error codes.
pub mod code {
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    pub const UNSUPPORTED_FIELD: u32 = 2;
    pub const UNKNOWN_CONTAINER: u32 = 3;
    pub const INVALID_ENV: u32 = 4;
    pub const IO_FAILURE: u32 = 5;
    pub const DECODE_FAILURE: u32 = 6;
    pub const INVALID_CONFIG: u32 = 7;
    pub const TRY_AGAIN_LATER: u32 = 11;
    /// Plugin-specific codes start at 100: the capture could not be programmed.
    pub const CAPTURE_FAILED: u32 = 100;
}

/// A failed invocation: the CNI error result (`code`, `msg`, `details`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniError {
    pub code: u32,
    /// One line saying what went wrong.
    pub msg: String,
    pub details: String,
}

impl CniError {
    pub fn new(code: u32, msg: impl Into<String>) -> CniError {
        CniError {
            code,
            msg: one_line(&msg.into()),
            details: String::new(),
        }
    }

    pub fn with_details(mut self, details: impl Into<String>) -> CniError {
        self.details = details.into();
        self
    }

    /// The error result the spec asks for, on stdout.
    pub fn to_json(&self, cni_version: &str) -> Value {
        json!({
            "cniVersion": cni_version,
            "code": self.code,
            "msg": self.msg,
            "details": self.details,
        })
    }
}

fn one_line(s: &str) -> String {
    s.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" | ")
}

/// `CNI_COMMAND`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Version,
}

/// What the runtime passed in the environment, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invocation {
    pub command: Command,
    /// `CNI_CONTAINERID` (empty only for VERSION).
    pub container_id: String,
    /// `CNI_NETNS`: the network namespace's path; may be empty for DEL.
    pub netns: String,
    pub ifname: String,
    /// The Kubernetes pod named in `CNI_ARGS`, when the runtime is a kubelet's.
    pub pod: Option<PodRef>,
}

/// A pod's namespace and name (from `CNI_ARGS`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodRef {
    pub namespace: String,
    pub name: String,
}

impl std::fmt::Display for PodRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Read the invocation from environment lookups (`get("CNI_COMMAND")` ...).
pub fn invocation(get: impl Fn(&str) -> Option<String>) -> Result<Invocation, CniError> {
    let var = |name: &str| get(name).unwrap_or_default();
    let command = match var("CNI_COMMAND").as_str() {
        "ADD" => Command::Add,
        "DEL" => Command::Del,
        "CHECK" => Command::Check,
        "VERSION" => Command::Version,
        "" => {
            return Err(CniError::new(
                code::INVALID_ENV,
                "CNI_COMMAND is not set: remora-cni is a CNI plugin, run by the container runtime (ADD, DEL, CHECK or VERSION)",
            ))
        }
        other => {
            return Err(CniError::new(
                code::INVALID_ENV,
                format!(
                    "invalid CNI_COMMAND {other:?}: remora-cni supports ADD, DEL, CHECK and VERSION"
                ),
            ))
        }
    };
    if command == Command::Version {
        return Ok(Invocation {
            command,
            container_id: String::new(),
            netns: String::new(),
            ifname: String::new(),
            pod: None,
        });
    }
    let container_id = var("CNI_CONTAINERID");
    check_container_id(&container_id)?;
    let netns = var("CNI_NETNS");
    if netns.is_empty() && command != Command::Del {
        return Err(CniError::new(
            code::INVALID_ENV,
            "CNI_NETNS is not set: the path of the container's network namespace is required for ADD and CHECK",
        ));
    }
    if !netns.is_empty() && !netns.starts_with('/') {
        return Err(CniError::new(
            code::INVALID_ENV,
            format!("invalid CNI_NETNS {netns:?}: must be an absolute path"),
        ));
    }
    let ifname = var("CNI_IFNAME");
    if ifname.is_empty() {
        return Err(CniError::new(
            code::INVALID_ENV,
            "CNI_IFNAME is not set: the spec requires the interface name",
        ));
    }
    if get("CNI_PATH").is_none_or(|p| p.is_empty()) {
        return Err(CniError::new(
            code::INVALID_ENV,
            "CNI_PATH is not set: the spec requires the plugin search path",
        ));
    }
    let pod = pod_ref(&var("CNI_ARGS"))?;
    Ok(Invocation {
        command,
        container_id,
        netns,
        ifname,
        pod,
    })
}

/// The spec's container id: non-empty, alphanumerics and `_ . -`, starting with an alphanumeric.
/// (It also names the plugin's state file, so nothing else may pass.)
pub fn check_container_id(id: &str) -> Result<(), CniError> {
    let ok = id.len() <= 256
        && id.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if ok {
        Ok(())
    } else if id.is_empty() {
        Err(CniError::new(
            code::INVALID_ENV,
            "CNI_CONTAINERID is not set: the spec requires the container id",
        ))
    } else {
        Err(CniError::new(
            code::INVALID_ENV,
            format!(
                "invalid CNI_CONTAINERID {id:?}: must be at most 256 letters, digits, '_', '.' or '-', starting with a letter or digit"
            ),
        ))
    }
}

/// The pod in `CNI_ARGS` (`K8S_POD_NAMESPACE=..;K8S_POD_NAME=..`), `None` when neither is there.
pub fn pod_ref(cni_args: &str) -> Result<Option<PodRef>, CniError> {
    let mut namespace = None;
    let mut name = None;
    for pair in cni_args.split(';').filter(|p| !p.is_empty()) {
        let Some((k, v)) = pair.split_once('=') else {
            return Err(CniError::new(
                code::INVALID_ENV,
                format!(
                    "invalid CNI_ARGS item {pair:?}: expected KEY=VALUE pairs separated by ';'"
                ),
            ));
        };
        match k {
            "K8S_POD_NAMESPACE" => namespace = Some(v.to_string()),
            "K8S_POD_NAME" => name = Some(v.to_string()),
            _ => {}
        }
    }
    match (namespace, name) {
        (None, None) => Ok(None),
        (Some(namespace), Some(name)) => {
            for (key, v) in [("K8S_POD_NAMESPACE", &namespace), ("K8S_POD_NAME", &name)] {
                if !is_dns_name(v) {
                    return Err(CniError::new(
                        code::INVALID_ENV,
                        format!(
                            "invalid {key} {v:?} in CNI_ARGS: not a Kubernetes name (lower-case letters, digits, '-' and '.', at most 253)"
                        ),
                    ));
                }
            }
            Ok(Some(PodRef { namespace, name }))
        }
        _ => Err(CniError::new(
            code::INVALID_ENV,
            "CNI_ARGS names only one of K8S_POD_NAMESPACE and K8S_POD_NAME: both are needed",
        )),
    }
}

/// A Kubernetes object name (RFC 1123 subdomain): also safe as a file name.
fn is_dns_name(v: &str) -> bool {
    !v.is_empty()
        && v.len() <= 253
        && v.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        && v.starts_with(|c: char| c.is_ascii_alphanumeric())
        && v.ends_with(|c: char| c.is_ascii_alphanumeric())
}

/// The VERSION result.
pub fn version_result() -> Value {
    json!({"cniVersion": LATEST, "supportedVersions": SUPPORTED_VERSIONS})
}

/// Whether `v` is a version this plugin speaks.
pub fn is_supported(v: &str) -> bool {
    SUPPORTED_VERSIONS.contains(&v)
}

/// CHECK exists from spec 0.4.0 on.
pub fn has_check(v: &str) -> bool {
    !matches!(v, "0.3.0" | "0.3.1")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| m.get(k).cloned()
    }

    const FULL: &[(&str, &str)] = &[
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "abc123"),
        ("CNI_NETNS", "/var/run/netns/x"),
        ("CNI_IFNAME", "eth0"),
        ("CNI_PATH", "/opt/cni/bin"),
        (
            "CNI_ARGS",
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=cart-1;K8S_POD_INFRA_CONTAINER_ID=abc123",
        ),
    ];

    fn with(over: &[(&'static str, &'static str)]) -> Vec<(&'static str, &'static str)> {
        let mut v: Vec<(&str, &str)> = FULL
            .iter()
            .filter(|(k, _)| !over.iter().any(|(o, _)| o == k))
            .copied()
            .collect();
        v.extend(over.iter().filter(|(_, val)| *val != "<unset>").copied());
        v
    }

    #[test]
    fn a_kubelet_add() {
        let i = invocation(env(FULL)).unwrap();
        assert_eq!(i.command, Command::Add);
        assert_eq!(i.container_id, "abc123");
        assert_eq!(
            i.pod,
            Some(PodRef {
                namespace: "shop".into(),
                name: "cart-1".into()
            })
        );
    }

    #[test]
    fn environment_errors_name_the_variable() {
        let cases: &[(&[(&str, &str)], &str)] = &[
            (&[("CNI_COMMAND", "<unset>")], "CNI_COMMAND is not set"),
            (&[("CNI_COMMAND", "GC")], "invalid CNI_COMMAND \"GC\""),
            (
                &[("CNI_CONTAINERID", "<unset>")],
                "CNI_CONTAINERID is not set",
            ),
            (&[("CNI_CONTAINERID", "../etc")], "invalid CNI_CONTAINERID"),
            (&[("CNI_NETNS", "<unset>")], "CNI_NETNS is not set"),
            (&[("CNI_NETNS", "netns/x")], "must be an absolute path"),
            (&[("CNI_IFNAME", "<unset>")], "CNI_IFNAME is not set"),
            (&[("CNI_PATH", "<unset>")], "CNI_PATH is not set"),
            (&[("CNI_ARGS", "K8S_POD_NAME=a")], "only one of"),
            (&[("CNI_ARGS", "garbage")], "invalid CNI_ARGS item"),
            (
                &[("CNI_ARGS", "K8S_POD_NAMESPACE=../x;K8S_POD_NAME=a")],
                "invalid K8S_POD_NAMESPACE",
            ),
        ];
        for (over, want) in cases {
            let e = invocation(env(&with(over))).unwrap_err();
            assert_eq!(e.code, code::INVALID_ENV, "{over:?}");
            assert!(e.msg.contains(want), "{over:?}: {}", e.msg);
            assert!(!e.msg.contains('\n'));
        }
    }

    #[test]
    fn del_tolerates_a_missing_netns_and_version_needs_nothing() {
        let i = invocation(env(&with(&[
            ("CNI_COMMAND", "DEL"),
            ("CNI_NETNS", "<unset>"),
        ])))
        .unwrap();
        assert_eq!(i.netns, "");
        let i = invocation(env(&[("CNI_COMMAND", "VERSION")])).unwrap();
        assert_eq!(i.command, Command::Version);
    }

    #[test]
    fn no_pod_in_args_is_not_an_error() {
        let i = invocation(env(&with(&[("CNI_ARGS", "IgnoreUnknown=1")]))).unwrap();
        assert_eq!(i.pod, None);
    }

    #[test]
    fn error_result_shape() {
        let e = CniError::new(7, "bad\nthing").with_details("more");
        assert_eq!(
            e.to_json("1.0.0"),
            json!({"cniVersion": "1.0.0", "code": 7, "msg": "bad | thing", "details": "more"})
        );
        assert!(has_check("1.0.0") && !has_check("0.3.1"));
        assert!(is_supported("0.4.0") && !is_supported("0.2.0"));
    }
}
