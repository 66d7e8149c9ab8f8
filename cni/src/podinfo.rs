//! What the plugin needs to know of a pod, and where it reads it.
//!
//! [`PodInfo::from_pod`] (pure) takes a Pod object as the API serves it; a [`PodSource`] finds
//! the pod named in `CNI_ARGS`. Built: [`FileSource`] (a directory of pod objects). Not built
//! yet: the node agent's narrow read of the pods on its node through the API.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::PathBuf;

use remora_init::pod::PROXY_CONTAINER;
use serde_json::Value;

use crate::spec::{code, CniError, PodRef};

/// The parts of a pod the decision reads.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PodInfo {
    pub annotations: BTreeMap<String, String>,
    pub host_network: bool,
    /// `securityContext.runAsUser` of the proxy container, when set.
    pub proxy_uid: Option<u32>,
}

impl PodInfo {
    /// Read a Pod object (JSON as the API serves it). Errors name the field.
    pub fn from_pod(pod: &Value) -> Result<PodInfo, String> {
        let mut annotations = BTreeMap::new();
        match pod.pointer("/metadata/annotations") {
            None | Some(Value::Null) => {}
            Some(Value::Object(m)) => {
                for (k, v) in m {
                    let Some(s) = v.as_str() else {
                        return Err(format!(
                            "metadata.annotations[{k:?}] is {v}: annotation values are strings"
                        ));
                    };
                    annotations.insert(k.clone(), s.to_string());
                }
            }
            Some(other) => return Err(format!("metadata.annotations is {other}: must be a map")),
        }
        let host_network = match pod.pointer("/spec/hostNetwork") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(other) => {
                return Err(format!(
                    "spec.hostNetwork is {other}: must be true or false"
                ))
            }
        };
        let mut proxy_uid = None;
        for list in ["initContainers", "containers"] {
            let Some(Value::Array(cs)) = pod.pointer(&format!("/spec/{list}")) else {
                continue;
            };
            for c in cs {
                if c.get("name").and_then(Value::as_str) != Some(PROXY_CONTAINER) {
                    continue;
                }
                match c.pointer("/securityContext/runAsUser") {
                    None | Some(Value::Null) => {}
                    Some(v) => match v.as_u64().and_then(|n| u32::try_from(n).ok()) {
                        Some(n) => proxy_uid = Some(n),
                        None => {
                            return Err(format!(
                                "spec.{list}[{PROXY_CONTAINER}].securityContext.runAsUser is {v}: must be a uid"
                            ))
                        }
                    },
                }
            }
        }
        Ok(PodInfo {
            annotations,
            host_network,
            proxy_uid,
        })
    }
}

/// Finds a pod's [`PodInfo`].
pub trait PodSource {
    fn pod(&self, pod: &PodRef) -> Result<PodInfo, CniError>;
}

/// The largest pod object read (a pod is far smaller; the API's own object limit is 1.5 MiB).
pub const MAX_POD_BYTES: u64 = 2 * 1024 * 1024;

/// Pods as JSON files: `<dir>/<namespace>/<name>.json`. A file not there yet is waited for, up
/// to `wait` (whatever writes the files may lag behind the pod's creation).
pub struct FileSource {
    pub dir: PathBuf,
    pub wait: std::time::Duration,
}

impl PodSource for FileSource {
    fn pod(&self, pod: &PodRef) -> Result<PodInfo, CniError> {
        // Both names were checked to be Kubernetes names (no '/', no "..").
        let path = self
            .dir
            .join(&pod.namespace)
            .join(format!("{}.json", pod.name));
        let deadline = std::time::Instant::now() + self.wait;
        // Bounded: polls every 50 ms until the deadline.
        let opened = loop {
            match std::fs::File::open(&path) {
                Err(e)
                    if e.kind() == std::io::ErrorKind::NotFound
                        && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                other => break other,
            }
        };
        let file = opened.map_err(|e| {
            let c = if e.kind() == std::io::ErrorKind::NotFound {
                code::TRY_AGAIN_LATER
            } else {
                code::IO_FAILURE
            };
            CniError::new(
                c,
                format!(
                    "pod {pod}: cannot read {} (waited {} ms): {e}",
                    path.display(),
                    self.wait.as_millis()
                ),
            )
        })?;
        let mut text = Vec::new();
        file.take(MAX_POD_BYTES + 1)
            .read_to_end(&mut text)
            .map_err(|e| {
                CniError::new(
                    code::IO_FAILURE,
                    format!("pod {pod}: reading {} failed: {e}", path.display()),
                )
            })?;
        if text.len() as u64 > MAX_POD_BYTES {
            return Err(CniError::new(
                code::INVALID_CONFIG,
                format!(
                    "pod {pod}: {} is larger than {MAX_POD_BYTES} bytes",
                    path.display()
                ),
            ));
        }
        let v: Value = serde_json::from_slice(&text).map_err(|e| {
            CniError::new(
                code::DECODE_FAILURE,
                format!("pod {pod}: {} is not JSON: {e}", path.display()),
            )
        })?;
        PodInfo::from_pod(&v).map_err(|e| {
            CniError::new(
                code::DECODE_FAILURE,
                format!("pod {pod}: {}: {e}", path.display()),
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reads_annotations_host_network_and_the_proxy_uid() {
        let p = PodInfo::from_pod(&json!({
            "metadata": {"annotations": {"remora.dev/capture": "cni"}},
            "spec": {
                "hostNetwork": false,
                "initContainers": [{"name": "remora-proxy", "securityContext": {"runAsUser": 2000}}],
                "containers": [{"name": "app", "securityContext": {"runAsUser": 5}}]
            }
        }))
        .unwrap();
        assert_eq!(p.annotations["remora.dev/capture"], "cni");
        assert!(!p.host_network);
        assert_eq!(p.proxy_uid, Some(2000));
        assert_eq!(PodInfo::from_pod(&json!({})).unwrap(), PodInfo::default());
    }

    #[test]
    fn bad_fields_are_named() {
        for (pod, want) in [
            (
                json!({"metadata": {"annotations": {"a": 1}}}),
                "metadata.annotations[\"a\"] is 1",
            ),
            (
                json!({"spec": {"hostNetwork": "yes"}}),
                "spec.hostNetwork is \"yes\"",
            ),
            (
                json!({"spec": {"containers": [{"name": "remora-proxy", "securityContext": {"runAsUser": -1}}]}}),
                "runAsUser is -1",
            ),
        ] {
            let e = PodInfo::from_pod(&pod).unwrap_err();
            assert!(e.contains(want), "{e}");
        }
    }

    #[test]
    fn file_source() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("shop")).unwrap();
        std::fs::write(
            dir.path().join("shop/cart.json"),
            r#"{"spec": {"hostNetwork": true}}"#,
        )
        .unwrap();
        std::fs::write(dir.path().join("shop/bad.json"), "{").unwrap();
        let src = FileSource {
            dir: dir.path().to_path_buf(),
            wait: std::time::Duration::ZERO,
        };
        let r = |name: &str| PodRef {
            namespace: "shop".into(),
            name: name.into(),
        };
        assert!(src.pod(&r("cart")).unwrap().host_network);
        assert_eq!(src.pod(&r("gone")).unwrap_err().code, code::TRY_AGAIN_LATER);
        // A file written while the plugin waits is read.
        let waiting = FileSource {
            dir: dir.path().to_path_buf(),
            wait: std::time::Duration::from_secs(5),
        };
        let late = dir.path().join("shop/late.json");
        let writer = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(200));
            std::fs::write(late, r#"{"spec": {"hostNetwork": true}}"#).unwrap();
        });
        let started = std::time::Instant::now();
        assert!(waiting.pod(&r("late")).unwrap().host_network);
        assert!(started.elapsed() >= std::time::Duration::from_millis(200));
        writer.join().unwrap();
        let e = src.pod(&r("bad")).unwrap_err();
        assert_eq!(e.code, code::DECODE_FAILURE);
        assert!(
            e.msg.contains("pod shop/bad") && e.msg.contains("is not JSON"),
            "{}",
            e.msg
        );
    }
}
