//! The injector configuration: images, resources, ports, uid, native mode, policy, and the
//! workload identity settings given to the proxy.
//!
//! Read from a YAML file (mounted from a ConfigMap) and reloaded when it changes. Every field has a
//! built-in default, so a missing file or an empty one means "the defaults". The `identity`
//! fields the file leaves unset come from `serve`'s CA flags ([`IdentityDefaults`]), or, for the
//! offline commands, from the built-in defaults.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use arc_swap::ArcSwap;
use serde::{Deserialize, Serialize};

use crate::selectors::{check_revision, DEFAULT_REVISION};
use crate::values::{
    check_audience, check_host_port, check_trust_domain, parse_quantity, HOST_PORT_EXAMPLE,
    LOG_LEVELS,
};
use remora_model::kinds::{check_root_namespace, DEFAULT_ROOT_NAMESPACE};

/// The CA address injected by default: the mesh CA's Service in the install.
pub const DEFAULT_CA_ADDRESS: &str = "remora-ca.remora-system.svc:15012";
/// The audience of the injected token by default (the CA's `--ca-token-audience`).
pub const DEFAULT_CA_AUDIENCE: &str = "remora-ca";
/// The trust domain injected by default (the CA's `--trust-domain`).
pub const DEFAULT_TRUST_DOMAIN: &str = "cluster.local";
/// The `identity.caAddress` (and `REMORA_CA_ADDRESS`) value meaning "no identity".
pub const OFF: &str = "off";

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

/// The `identity` section of the config file: what the proxy is told about its workload identity.
/// Every field is optional; an unset one takes `serve`'s flag (or the built-in default).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct IdentityConfig {
    /// `HOST:PORT` of the mesh CA the proxy calls, or `off`: inject no identity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_address: Option<String>,
    /// Audience of the projected service-account token (the CA checks it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audience: Option<String>,
    /// SPIFFE trust domain of the proxy's identity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trust_domain: Option<String>,
    /// `HOST:PORT` of the control plane's discovery service the proxy subscribes to instead of
    /// watching the API (`REMORA_DISCOVERY_ADDRESS`), or `off`. Unset: the serving process's
    /// CA address when it serves discovery (`serve --discovery on`), else off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub discovery_address: Option<String>,
}

/// The identity settings one injection renders (identity injection is on).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub ca_address: String,
    pub audience: String,
    pub trust_domain: String,
    /// The discovery service's `HOST:PORT`; `None`: off (the proxy watches the API).
    pub discovery_address: Option<String>,
}

/// What `serve`'s CA flags say about the injected identity: the values for the `identity`
/// fields the config file leaves unset, and whether the mesh CA runs in this process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityDefaults {
    /// `HOST:PORT`, or `off`.
    pub ca_address: String,
    pub audience: String,
    pub trust_domain: String,
    /// The mesh CA runs in this process and `ca_address` names it: a config file that sends
    /// proxies to it with another audience or trust domain than it checks is refused.
    pub local_ca: bool,
    /// `HOST:PORT` of the discovery service proxies subscribe to, or `off`.
    pub discovery_address: String,
}

impl Default for IdentityDefaults {
    fn default() -> Self {
        IdentityDefaults {
            ca_address: DEFAULT_CA_ADDRESS.to_string(),
            audience: DEFAULT_CA_AUDIENCE.to_string(),
            trust_domain: DEFAULT_TRUST_DOMAIN.to_string(),
            local_ca: false,
            discovery_address: OFF.to_string(),
        }
    }
}

/// The whole injector configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
    /// The injector's revision (its `--revision`, `REMORA_REVISION`): it injects only pods its
    /// revision's webhook entries select, and writes it into `sidecar.istio.io/status`. In a file
    /// it may be left out; if given it must equal the injector's (see [`Config::with_revision`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    /// The mesh's root namespace, given to the proxy (`REMORA_ROOT_NAMESPACE`): mesh-wide
    /// policies and defaults live there. `serve` fills it from its `--root-namespace` (which the
    /// rules controller uses too); in a file it may be left out, and if given it must equal
    /// that flag (see [`Config::with_root_namespace`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub root_namespace: Option<String>,
    /// Workload identity settings given to the proxy (token, root, CA address, trust domain).
    pub identity: IdentityConfig,
    /// Mesh-wide telemetry in Istio's MeshConfig shape: tracing and the access log.
    pub mesh: crate::mesh::MeshSettings,
    /// Istio's `enablePrometheusMerge`: point the pod's `prometheus.io/*` annotations at the
    /// proxy's `:15020/stats/prometheus`, which serves the proxy's metrics and the app's together.
    pub enable_prometheus_merge: bool,
    /// CNI mode (Istio's `istio_cni.enabled`): the node's CNI plugin programs the capture.
    #[serde(skip_serializing_if = "CniConfig::is_off")]
    pub cni: CniConfig,
}

/// CNI mode: instead of the privileged `remora-init` container, pods get the unprivileged
/// `remora-validation` container and the annotation `remora.dev/capture: cni`, and the node's
/// `remora-cni` plugin programs their capture (docs/install.md, "CNI mode").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct CniConfig {
    pub enabled: bool,
}

impl CniConfig {
    fn is_off(&self) -> bool {
        !self.enabled
    }
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
            revision: None,
            root_namespace: None,
            identity: IdentityConfig::default(),
            mesh: crate::mesh::MeshSettings::default(),
            enable_prometheus_merge: true,
            cni: CniConfig::default(),
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
        if let Some(r) = &self.revision {
            check_revision(r).map_err(|why| {
                anyhow::anyhow!("config field revision: invalid value {r:?}: {why}")
            })?;
        }
        if let Some(r) = &self.root_namespace {
            check_root_namespace(r).map_err(|why| {
                anyhow::anyhow!("config field rootNamespace: invalid value: {why}")
            })?;
        }
        let id = &self.identity;
        if let Some(a) = &id.ca_address {
            if a != OFF {
                check_host_port(a).map_err(|why| {
                    anyhow::anyhow!(
                        "config field identity.caAddress: invalid value {a:?}: {why}: expected {HOST_PORT_EXAMPLE} or off"
                    )
                })?;
            }
        }
        if let Some(a) = id.discovery_address.as_ref().filter(|a| *a != OFF) {
            check_host_port(a).map_err(|why| {
                anyhow::anyhow!(
                    "config field identity.discoveryAddress: invalid value {a:?}: {why}: expected {HOST_PORT_EXAMPLE} or off"
                )
            })?;
        }
        if let Some(a) = &id.audience {
            check_audience(a).map_err(|why| {
                anyhow::anyhow!("config field identity.audience: invalid value {a:?}: {why}")
            })?;
        }
        if let Some(t) = &id.trust_domain {
            check_trust_domain(t).map_err(|why| {
                anyhow::anyhow!("config field identity.trustDomain: invalid value {t:?}: {why}")
            })?;
        }
        self.mesh
            .validate()
            .map_err(|e| anyhow::anyhow!("config field {e}"))?;
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

    /// The injector's revision (`default` unless set).
    pub fn revision(&self) -> &str {
        self.revision.as_deref().unwrap_or(DEFAULT_REVISION)
    }

    /// Sets the injector's revision (`--revision`). A file that names another revision is an
    /// error naming the field: its values were meant for another revision's injector.
    pub fn with_revision(mut self, revision: &str) -> anyhow::Result<Config> {
        check_revision(revision)
            .map_err(|why| anyhow::anyhow!("--revision {revision:?}: {why}"))?;
        if let Some(r) = self.revision.as_ref().filter(|r| *r != revision) {
            bail!(
                "config field revision: invalid value {r:?}: this injector is revision {revision:?} (--revision, REMORA_REVISION); leave the field out or set it to {revision:?}"
            );
        }
        self.revision = Some(revision.to_string());
        Ok(self)
    }

    /// The mesh's root namespace the proxy is given (the default unless set).
    pub fn root_namespace(&self) -> &str {
        self.root_namespace
            .as_deref()
            .unwrap_or(DEFAULT_ROOT_NAMESPACE)
    }

    /// Sets the root namespace (`serve --root-namespace`, the rules controller's too). A file
    /// that names another is an error naming the field: proxies and the controller would
    /// disagree about which policies are mesh-wide.
    pub fn with_root_namespace(mut self, root: &str) -> anyhow::Result<Config> {
        check_root_namespace(root).map_err(|why| anyhow::anyhow!("--root-namespace: {why}"))?;
        if let Some(r) = self.root_namespace.as_ref().filter(|r| *r != root) {
            bail!(
                "config field rootNamespace: invalid value {r:?}: the rules controller and this injector use --root-namespace {root:?} (REMORA_ROOT_NAMESPACE); leave the field out or set it to {root:?}"
            );
        }
        self.root_namespace = Some(root.to_string());
        Ok(self)
    }

    /// The identity to inject, or `None` when identity injection is off (`identity.caAddress:
    /// off`). Unset fields are the built-in defaults (a config loaded by `serve` has them filled
    /// from its flags already, see [`Config::with_identity_defaults`]).
    pub fn identity(&self) -> Option<Identity> {
        let id = &self.identity;
        let ca_address = id.ca_address.as_deref().unwrap_or(DEFAULT_CA_ADDRESS);
        if ca_address == OFF {
            return None;
        }
        Some(Identity {
            ca_address: ca_address.to_string(),
            audience: id
                .audience
                .clone()
                .unwrap_or_else(|| DEFAULT_CA_AUDIENCE.to_string()),
            trust_domain: id
                .trust_domain
                .clone()
                .unwrap_or_else(|| DEFAULT_TRUST_DOMAIN.to_string()),
            discovery_address: id.discovery_address.clone().filter(|a| a != OFF),
        })
    }

    /// Fills the `identity` fields the file left unset from `d` (`serve`'s flags). When the
    /// proxies are sent to the CA of this process, an audience or trust domain other than the
    /// one it checks is an error naming the field (its tokens or CSRs would all be refused).
    pub fn with_identity_defaults(mut self, d: &IdentityDefaults) -> anyhow::Result<Config> {
        let id = &mut self.identity;
        let to_local_ca = d.local_ca
            && d.ca_address != OFF
            && id.ca_address.as_deref().is_none_or(|a| a == d.ca_address);
        if to_local_ca {
            if let Some(a) = id.audience.as_ref().filter(|a| **a != d.audience) {
                bail!(
                    "config field identity.audience: invalid value {a:?}: the mesh CA of this process ({}) accepts tokens for --ca-token-audience {:?} only",
                    d.ca_address,
                    d.audience
                );
            }
            if let Some(t) = id.trust_domain.as_ref().filter(|t| **t != d.trust_domain) {
                bail!(
                    "config field identity.trustDomain: invalid value {t:?}: the mesh CA of this process ({}) signs identities in --trust-domain {:?} only",
                    d.ca_address,
                    d.trust_domain
                );
            }
        }
        id.ca_address.get_or_insert_with(|| d.ca_address.clone());
        // Discovery is served where the local CA is: proxies sent to another CA are not sent
        // to this process for discovery either, unless the file says so.
        id.discovery_address.get_or_insert_with(|| {
            if to_local_ca {
                d.discovery_address.clone()
            } else {
                OFF.to_string()
            }
        });
        id.audience.get_or_insert_with(|| d.audience.clone());
        id.trust_domain
            .get_or_insert_with(|| d.trust_domain.clone());
        Ok(self)
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
    /// What fills the file's unset `identity` fields, at load and at every reload.
    identity: IdentityDefaults,
    /// The injector's revision (`--revision`), checked against the file at every reload.
    revision: String,
    /// The root namespace (`--root-namespace`), checked against the file at every reload.
    root_namespace: String,
}

impl ConfigHandle {
    /// A handle with fixed contents (tests, CLI).
    pub fn fixed(cfg: Config) -> Self {
        let revision = cfg.revision().to_string();
        let root_namespace = cfg.root_namespace().to_string();
        ConfigHandle {
            current: Arc::new(ArcSwap::from_pointee(cfg)),
            path: None,
            identity: IdentityDefaults::default(),
            revision,
            root_namespace,
        }
    }

    /// Loads `path` (defaults when it does not exist); fails on an invalid file.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        Self::load_with(path, IdentityDefaults::default())
    }

    /// [`ConfigHandle::load`], with the file's unset `identity` fields taken from `identity`
    /// (`serve`'s CA flags), now and at every reload.
    pub fn load_with(path: &Path, identity: IdentityDefaults) -> anyhow::Result<Self> {
        Self::load_for(path, identity, DEFAULT_REVISION, DEFAULT_ROOT_NAMESPACE)
    }

    /// [`ConfigHandle::load_with`] for the injector of `revision` (`--revision`) in a mesh whose
    /// root namespace is `root_namespace` (`--root-namespace`): a file naming another revision
    /// or root namespace is refused, at start and at every reload.
    pub fn load_for(
        path: &Path,
        identity: IdentityDefaults,
        revision: &str,
        root_namespace: &str,
    ) -> anyhow::Result<Self> {
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
        let cfg = cfg
            .with_identity_defaults(&identity)
            .and_then(|c| c.with_revision(revision))
            .and_then(|c| c.with_root_namespace(root_namespace))
            .with_context(|| format!("config file {}", path.display()))?;
        Ok(ConfigHandle {
            current: Arc::new(ArcSwap::from_pointee(cfg)),
            path: Some(path.to_path_buf()),
            identity,
            revision: revision.to_string(),
            root_namespace: root_namespace.to_string(),
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
        let read = Config::from_file(path).and_then(|new| {
            new.unwrap_or_default()
                .with_identity_defaults(&self.identity)
                .and_then(|c| c.with_revision(&self.revision))
                .and_then(|c| c.with_root_namespace(&self.root_namespace))
                .with_context(|| format!("config file {}", path.display()))
        });
        match read {
            Ok(new) => {
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
    fn identity_defaults_and_off() {
        let id = Config::default().identity().unwrap();
        assert_eq!(id.ca_address, "remora-ca.remora-system.svc:15012");
        assert_eq!(id.audience, "remora-ca");
        assert_eq!(id.trust_domain, "cluster.local");
        let cfg = Config::from_yaml(
            "identity:\n  caAddress: ca.example.com:443\n  audience: mesh\n  trustDomain: example.org\n",
        )
        .unwrap();
        assert_eq!(
            cfg.identity(),
            Some(Identity {
                ca_address: "ca.example.com:443".into(),
                audience: "mesh".into(),
                trust_domain: "example.org".into(),
                discovery_address: None,
            })
        );
        let off = Config::from_yaml("identity: {caAddress: \"off\"}\n").unwrap();
        assert_eq!(off.identity(), None);
    }

    #[test]
    fn bad_identity_values_are_rejected_naming_field() {
        for (yaml, want) in [
            (
                "identity: {caAddress: remora-ca}",
                r#"config field identity.caAddress: invalid value "remora-ca": no port: expected HOST:PORT (e.g. remora-ca.remora-system.svc:15012) or off"#,
            ),
            (
                "identity: {caAddress: \"auto\"}",
                r#"identity.caAddress: invalid value "auto": no port"#,
            ),
            (
                "identity: {audience: \"a b\"}",
                r#"config field identity.audience: invalid value "a b": must be 1-256 characters without spaces"#,
            ),
            (
                "identity: {trustDomain: Example.org}",
                r#"config field identity.trustDomain: invalid value "Example.org": a SPIFFE trust domain"#,
            ),
            ("identity: {caAdress: x:1}", "unknown field `caAdress`"),
            (
                "identity: {discoveryAddress: remora-ca}",
                r#"config field identity.discoveryAddress: invalid value "remora-ca": no port"#,
            ),
        ] {
            let err = format!("{:#}", Config::from_yaml(yaml).unwrap_err());
            assert!(err.contains(want), "{yaml}: {err}");
        }
    }

    #[test]
    fn flags_fill_what_the_file_leaves_unset() {
        let flags = IdentityDefaults {
            ca_address: "remora-ca.mesh.svc:15012".into(),
            audience: "aud".into(),
            trust_domain: "td.example".into(),
            local_ca: true,
            discovery_address: "remora-ca.mesh.svc:15012".into(),
        };
        let filled = Config::default().with_identity_defaults(&flags).unwrap();
        assert_eq!(
            filled.identity(),
            Some(Identity {
                ca_address: "remora-ca.mesh.svc:15012".into(),
                audience: "aud".into(),
                trust_domain: "td.example".into(),
                discovery_address: Some("remora-ca.mesh.svc:15012".into()),
            })
        );
        // The CA in this process checks one audience and signs one trust domain.
        let other_td = Config::from_yaml("identity: {trustDomain: other.example}")
            .unwrap()
            .with_identity_defaults(&flags)
            .unwrap_err();
        assert!(
            format!("{other_td:#}").contains(
                r#"config field identity.trustDomain: invalid value "other.example": the mesh CA of this process (remora-ca.mesh.svc:15012) signs identities in --trust-domain "td.example" only"#
            ),
            "{other_td:#}"
        );
        let other_aud = Config::from_yaml("identity: {audience: x}")
            .unwrap()
            .with_identity_defaults(&flags)
            .unwrap_err();
        assert!(
            format!("{other_aud:#}").contains("identity.audience"),
            "{other_aud:#}"
        );
        // ... unless the file sends proxies to another CA.
        let elsewhere = Config::from_yaml(
            "identity: {caAddress: \"ca.example.com:443\", trustDomain: other.example}",
        )
        .unwrap()
        .with_identity_defaults(&flags)
        .unwrap();
        assert_eq!(elsewhere.identity().unwrap().trust_domain, "other.example");
        assert_eq!(elsewhere.identity().unwrap().audience, "aud");
        assert_eq!(elsewhere.identity().unwrap().discovery_address, None);
        // Flags that say "no identity" (--ca-addr off): the file may still name a CA.
        let off = IdentityDefaults {
            ca_address: OFF.into(),
            local_ca: false,
            ..flags.clone()
        };
        assert_eq!(
            Config::default()
                .with_identity_defaults(&off)
                .unwrap()
                .identity(),
            None
        );
        let named = Config::from_yaml("identity: {caAddress: \"10.0.0.7:15012\"}")
            .unwrap()
            .with_identity_defaults(&off)
            .unwrap();
        assert_eq!(named.identity().unwrap().ca_address, "10.0.0.7:15012");
    }

    #[test]
    fn reload_fills_identity_from_the_flags() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.yaml");
        std::fs::write(&path, "policy: enabled\n").unwrap();
        let flags = IdentityDefaults {
            ca_address: OFF.into(),
            local_ca: false,
            ..IdentityDefaults::default()
        };
        let h = ConfigHandle::load_with(&path, flags).unwrap();
        assert_eq!(h.get().identity(), None);
        std::fs::write(&path, "identity: {caAddress: \"ca.example.com:443\"}\n").unwrap();
        assert!(h.reload());
        assert_eq!(h.get().identity().unwrap().ca_address, "ca.example.com:443");
        std::fs::write(&path, "policy: disabled\n").unwrap();
        assert!(h.reload());
        assert_eq!(h.get().identity(), None, "unset again: the flags' off");
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

    #[test]
    fn the_revision_is_the_injectors_and_a_file_may_only_agree() {
        assert_eq!(Config::default().revision(), "default");
        let c = Config::default().with_revision("canary").unwrap();
        assert_eq!(c.revision(), "canary");
        let c = Config::from_yaml("revision: canary\n").unwrap();
        assert_eq!(
            c.clone().with_revision("canary").unwrap().revision(),
            "canary"
        );
        let e = c.with_revision("default").unwrap_err().to_string();
        assert_eq!(
            e,
            "config field revision: invalid value \"canary\": this injector is revision \"default\" (--revision, REMORA_REVISION); leave the field out or set it to \"default\""
        );
        let e = Config::from_yaml("revision: Canary\n").unwrap_err();
        assert!(
            format!("{e:#}").contains("config field revision: invalid value \"Canary\""),
            "{e:#}"
        );
        let e = Config::default()
            .with_revision("a_b")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("--revision \"a_b\": must be lowercase"),
            "{e}"
        );

        // serve: at start and at every reload.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.yaml");
        std::fs::write(&path, "revision: b\n").unwrap();
        let e = ConfigHandle::load_for(&path, IdentityDefaults::default(), "a", "remora-system")
            .err()
            .unwrap();
        assert!(
            format!("{e:#}").contains("this injector is revision \"a\""),
            "{e:#}"
        );
        std::fs::write(&path, "policy: enabled\n").unwrap();
        let h = ConfigHandle::load_for(&path, IdentityDefaults::default(), "a", "remora-system")
            .unwrap();
        assert_eq!(h.get().revision(), "a");
        std::fs::write(&path, "revision: b\npolicy: disabled\n").unwrap();
        assert!(!h.reload());
        assert_eq!(h.get().policy, Policy::Enabled);
        std::fs::write(&path, "revision: a\npolicy: disabled\n").unwrap();
        assert!(h.reload());
        assert_eq!(
            (h.get().revision(), h.get().policy),
            ("a", Policy::Disabled)
        );
    }

    #[test]
    fn root_namespace_from_the_flag_and_the_file() {
        // Unset: the default, the same constant the controller and the proxy start from.
        assert_eq!(Config::default().root_namespace(), DEFAULT_ROOT_NAMESPACE);
        let c = Config::default()
            .with_root_namespace("istio-system")
            .unwrap();
        assert_eq!(c.root_namespace(), "istio-system");
        // A file may repeat the flag's value, not contradict it.
        let c = Config::from_yaml("rootNamespace: istio-system\n").unwrap();
        assert_eq!(
            c.clone()
                .with_root_namespace("istio-system")
                .unwrap()
                .root_namespace(),
            "istio-system"
        );
        let e = c
            .with_root_namespace("remora-system")
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "config field rootNamespace: invalid value \"istio-system\": the rules controller and this injector use --root-namespace \"remora-system\" (REMORA_ROOT_NAMESPACE); leave the field out or set it to \"remora-system\""
        );
        // Not a namespace name: one line naming the field and the value.
        let e = Config::from_yaml("rootNamespace: Istio_System\n").unwrap_err();
        assert_eq!(
            format!("{e:#}"),
            "config field rootNamespace: invalid value: \"Istio_System\" is not a namespace name (a DNS label: lowercase letters, digits and '-', at most 63 characters, not starting or ending with '-')"
        );
        let e = Config::default()
            .with_root_namespace("")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("--root-namespace: \"\" is not a namespace name"),
            "{e}"
        );
        // serve: at start and at every reload.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.yaml");
        std::fs::write(&path, "rootNamespace: istio-system\n").unwrap();
        assert!(
            ConfigHandle::load_for(&path, IdentityDefaults::default(), "default", "mesh").is_err()
        );
        std::fs::write(&path, "policy: enabled\n").unwrap();
        let h =
            ConfigHandle::load_for(&path, IdentityDefaults::default(), "default", "mesh").unwrap();
        assert_eq!(h.get().root_namespace(), "mesh");
        std::fs::write(&path, "rootNamespace: istio-system\npolicy: disabled\n").unwrap();
        assert!(!h.reload());
        assert_eq!(h.get().root_namespace(), "mesh");
    }
}
