//! The injector configuration: images, resources, ports, uid, native mode, policy.
//!
//! Read from a YAML file (mounted from a ConfigMap) and reloaded when it changes. Every field has a
//! built-in default, so a missing file or an empty one means "the defaults".

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use arc_swap::ArcSwap;
use serde::{Deserialize, Serialize};

use crate::values::{parse_quantity, LOG_LEVELS};

/// Whether pods without an explicit `sidecar.istio.io/inject` are injected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Policy {
    /// Inject unless the pod opts out (Istio's default).
    Enabled,
    /// Inject only pods that opt in with `sidecar.istio.io/inject: "true"`.
    Disabled,
}

/// Compute resources of an injected container (Kubernetes quantities as strings).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    #[serde(default)]
    pub requests: BTreeMap<String, String>,
    #[serde(default)]
    pub limits: BTreeMap<String, String>,
}

/// Image and resources of one injected container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ContainerConfig {
    pub image: String,
    #[serde(default = "default_pull_policy")]
    pub image_pull_policy: String,
    #[serde(default)]
    pub resources: Resources,
}

fn default_pull_policy() -> String {
    "IfNotPresent".to_string()
}

/// The whole injector configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct Config {
    /// `enabled` (inject unless opted out) or `disabled` (inject only when opted in).
    pub policy: Policy,
    /// Put the proxy first in `initContainers` with `restartPolicy: Always`.
    pub native_sidecar: bool,
    /// Rewrite app HTTP/TCP/gRPC probes to go through the proxy's status port.
    pub rewrite_app_probes: bool,
    /// The mesh's own namespace (never injected).
    pub mesh_namespace: String,
    /// Further namespaces that are never injected.
    pub ignored_namespaces: Vec<String>,
    /// Name of the per-namespace rules ConfigMap mounted into the proxy.
    pub rules_config_map: String,
    /// uid/gid of the proxy (exempt from capture).
    pub proxy_uid: u32,
    /// Default proxy log level (`REMORA_LOG_LEVEL`).
    pub log_level: String,
    pub proxy: ContainerConfig,
    pub init: ContainerConfig,
    /// Value of the `revision` field in `sidecar.istio.io/status`.
    pub revision: String,
}

impl Default for Config {
    fn default() -> Self {
        let resources = Resources {
            requests: [("cpu", "100m"), ("memory", "64Mi")]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            limits: [("cpu", "2"), ("memory", "512Mi")]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        let init_resources = Resources {
            requests: [("cpu", "10m"), ("memory", "16Mi")]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            limits: [("cpu", "100m"), ("memory", "64Mi")]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        Config {
            policy: Policy::Enabled,
            native_sidecar: true,
            rewrite_app_probes: true,
            mesh_namespace: "remora-system".to_string(),
            ignored_namespaces: vec![
                "kube-system".to_string(),
                "kube-public".to_string(),
                "kube-node-lease".to_string(),
            ],
            rules_config_map: "remora-mesh-rules".to_string(),
            proxy_uid: 1337,
            log_level: "info".to_string(),
            proxy: ContainerConfig {
                image: "ghcr.io/remora-mesh/remora-proxy:0.1.0".to_string(),
                image_pull_policy: default_pull_policy(),
                resources,
            },
            init: ContainerConfig {
                image: "ghcr.io/remora-mesh/remora-init:0.1.0".to_string(),
                image_pull_policy: default_pull_policy(),
                resources: init_resources,
            },
            revision: "default".to_string(),
        }
    }
}

impl Config {
    /// Parses and validates a YAML config. An empty document means the defaults.
    pub fn from_yaml(text: &str) -> anyhow::Result<Config> {
        if text.trim().is_empty() {
            return Ok(Config::default());
        }
        let cfg: Config = serde_yaml_ng::from_str(text).context("invalid injector config")?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Reads a config file; a missing file means the defaults (`Ok(None)` tells the caller so).
    pub fn from_file(path: &Path) -> anyhow::Result<Option<Config>> {
        match std::fs::read_to_string(path) {
            Ok(text) => Config::from_yaml(&text)
                .with_context(|| format!("config file {}", path.display()))
                .map(Some),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading config file {}", path.display())),
        }
    }

    /// Checks the values serde cannot: names, quantities, levels.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.proxy.image.trim().is_empty() {
            bail!("config field proxy.image: empty value: an image reference is required");
        }
        if self.init.image.trim().is_empty() {
            bail!("config field init.image: empty value: an image reference is required");
        }
        for (field, pp) in [
            ("proxy.imagePullPolicy", &self.proxy.image_pull_policy),
            ("init.imagePullPolicy", &self.init.image_pull_policy),
        ] {
            if !["Always", "IfNotPresent", "Never"].contains(&pp.as_str()) {
                bail!("config field {field}: invalid value {pp:?}: must be Always, IfNotPresent or Never");
            }
        }
        if !LOG_LEVELS.contains(&self.log_level.as_str()) {
            bail!(
                "config field logLevel: invalid value {:?}: must be one of {}",
                self.log_level,
                LOG_LEVELS.join(", ")
            );
        }
        if self.proxy_uid == 0 {
            bail!("config field proxyUid: invalid value 0: the proxy must not run as root");
        }
        if self.rules_config_map.is_empty() || self.mesh_namespace.is_empty() {
            bail!("config fields rulesConfigMap and meshNamespace must not be empty");
        }
        for (name, res) in [
            ("proxy", &self.proxy.resources),
            ("init", &self.init.resources),
        ] {
            for (kind, map) in [("requests", &res.requests), ("limits", &res.limits)] {
                for (k, v) in map {
                    if let Err(why) = parse_quantity(v) {
                        bail!(
                            "config field {name}.resources.{kind}.{k}: invalid value {v:?}: {why}"
                        );
                    }
                }
            }
        }
        Ok(())
    }

    /// Whether pods in `namespace` are never injected, and why.
    pub fn namespace_ignored(&self, namespace: &str) -> Option<String> {
        if namespace == self.mesh_namespace {
            return Some(format!(
                "namespace {namespace} is the mesh's own namespace, never injected"
            ));
        }
        if self.ignored_namespaces.iter().any(|n| n == namespace) {
            return Some(format!(
                "namespace {namespace} is a system namespace, never injected"
            ));
        }
        None
    }
}

/// The live configuration, swapped atomically when the file changes.
#[derive(Clone)]
pub struct ConfigHandle {
    current: Arc<ArcSwap<Config>>,
    path: Option<PathBuf>,
}

impl ConfigHandle {
    /// A handle with fixed contents (tests, CLI).
    pub fn fixed(cfg: Config) -> Self {
        ConfigHandle {
            current: Arc::new(ArcSwap::from_pointee(cfg)),
            path: None,
        }
    }

    /// Loads `path` (defaults when it does not exist); fails on an invalid file.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let cfg = match Config::from_file(path)? {
            Some(cfg) => {
                tracing::info!(path = %path.display(), "loaded injector config");
                cfg
            }
            None => {
                tracing::info!(path = %path.display(), "no injector config file; using built-in defaults");
                Config::default()
            }
        };
        Ok(ConfigHandle {
            current: Arc::new(ArcSwap::from_pointee(cfg)),
            path: Some(path.to_path_buf()),
        })
    }

    pub fn get(&self) -> Arc<Config> {
        self.current.load_full()
    }

    /// Re-reads the file; keeps the old config (and says so) when the new one is invalid.
    pub fn reload(&self) -> bool {
        let Some(path) = &self.path else {
            return false;
        };
        match Config::from_file(path) {
            Ok(new) => {
                let new = new.unwrap_or_default();
                if *self.current.load_full() != new {
                    self.current.store(Arc::new(new));
                    crate::metrics::config_reloads("ok");
                    tracing::info!(path = %path.display(), "injector config changed; reloaded");
                    return true;
                }
                false
            }
            Err(e) => {
                crate::metrics::config_reloads("error");
                tracing::error!(path = %path.display(), error = %format!("{e:#}"), "injector config invalid; keeping the previous one");
                false
            }
        }
    }

    /// Watches the config file's directory (a ConfigMap mount swaps `..data`) and reloads on
    /// change; also polls every `poll` in case events are missed. Runs until the runtime stops.
    pub fn spawn_watcher(&self, poll: Duration) {
        let Some(path) = self.path.clone() else {
            return;
        };
        let handle = self.clone();
        let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(16);
        let dir = path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        let watcher = crate::tls::watch_dir(&dir, tx);
        tokio::spawn(async move {
            let _keep = watcher;
            let mut tick = tokio::time::interval(poll);
            tick.tick().await;
            let mut events = true;
            loop {
                tokio::select! {
                    ev = rx.recv(), if events => {
                        if ev.is_none() {
                            // No watcher left (e.g. inotify unavailable): keep polling.
                            events = false;
                            continue;
                        }
                        // Let the writer (kubelet symlink swap, cert then key) finish.
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        while rx.try_recv().is_ok() {}
                    }
                    _ = tick.tick() => {}
                }
                handle.reload();
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_config_is_default() {
        assert_eq!(Config::from_yaml("").unwrap(), Config::default());
        assert_eq!(Config::from_yaml("{}").unwrap(), Config::default());
    }

    #[test]
    fn partial_config_overrides() {
        let cfg = Config::from_yaml(
            "policy: disabled\nnativeSidecar: false\nproxy:\n  image: example/proxy:1\n",
        )
        .unwrap();
        assert_eq!(cfg.policy, Policy::Disabled);
        assert!(!cfg.native_sidecar);
        assert_eq!(cfg.proxy.image, "example/proxy:1");
        assert_eq!(cfg.proxy.image_pull_policy, "IfNotPresent");
        assert_eq!(cfg.init, Config::default().init);
    }

    #[test]
    fn unknown_field_is_rejected() {
        let err = Config::from_yaml("nativeSidecars: true\n").unwrap_err();
        assert!(format!("{err:#}").contains("nativeSidecars"), "{err:#}");
    }

    #[test]
    fn bad_quantity_is_rejected_naming_field() {
        let err =
            Config::from_yaml("proxy:\n  image: x\n  resources:\n    limits:\n      cpu: lots\n")
                .unwrap_err();
        let msg = format!("{err:#}");
        assert!(
            msg.contains("proxy.resources.limits.cpu") && msg.contains("lots"),
            "{msg}"
        );
    }

    #[test]
    fn bad_log_level_is_rejected() {
        let err = Config::from_yaml("logLevel: loud\n").unwrap_err();
        assert!(format!("{err:#}").contains("logLevel"));
    }

    #[test]
    fn ignored_namespaces() {
        let cfg = Config::default();
        assert!(cfg.namespace_ignored("kube-system").is_some());
        assert!(cfg.namespace_ignored("remora-system").is_some());
        assert!(cfg.namespace_ignored("default").is_none());
    }

    #[test]
    fn reload_keeps_old_on_error_and_takes_new_on_success() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.yaml");
        std::fs::write(&path, "policy: disabled\n").unwrap();
        let h = ConfigHandle::load(&path).unwrap();
        assert_eq!(h.get().policy, Policy::Disabled);
        std::fs::write(&path, "policy: sometimes\n").unwrap();
        assert!(!h.reload());
        assert_eq!(h.get().policy, Policy::Disabled);
        std::fs::write(&path, "policy: enabled\n").unwrap();
        assert!(h.reload());
        assert_eq!(h.get().policy, Policy::Enabled);
    }
}
