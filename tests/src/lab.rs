//! The lab: a "node" (a bridge in its own network namespace, no route out), pods as network
//! namespaces on it, Services with virtual IPs and a kube-proxy stand-in, the control plane (the
//! real webhook with its mesh CA, on the node, backed by the lab's Kubernetes API stand-in), and
//! the mini kubelet. Built from Kubernetes YAML (Namespace, Service, Pod, Deployment, ConfigMap
//! and Istio rules). Everything is torn down when the [`Lab`] is dropped.

use crate::admission::{default_bin_dir, ControlPlane, Webhook};
use crate::client::{self, HttpReply, Sample};
use crate::cluster::{self, Endpoint, LabelSelector, Service, ServicePort};
use crate::kubelet::{self, PodCtx, Running};
use crate::labapi::LabApi;
use crate::netns::Netns;
use anyhow::{anyhow, bail, Context, Result};
use remora_model::compile::View;
use remora_webhook::rules_controller::plan::view as rules_view;
use serde_json::Value;
use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

static LAB_COUNTER: AtomicU32 = AtomicU32::new(0);

/// The ConfigMap every meshed pod mounts for its rules.
pub const RULES_CONFIGMAP: &str = "remora-mesh-rules";
/// The mesh root every meshed namespace gets: the control plane's CA publishes it.
pub const CA_ROOT_CONFIGMAP: &str = remora_webhook::ca::publish::CONFIGMAP;
/// The node's address on the bridge: the control plane (webhook and mesh CA) listens there.
pub const NODE_IP: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 1);
/// The CA's Service (`--ca-service`, `--ca-secret-namespace`; the install's): its names resolve
/// to [`NODE_IP`] in every pod.
pub const CA_SERVICE: (&str, &str) = ("remora-ca", "remora-system");
const GENERATED_RULES_FILE: &str = "lab-services.yaml";
/// The namespace `manifests/gateway.yaml` installs the ingress gateway in.
pub const GATEWAY_NAMESPACE: &str = "istio-system";
/// The ingress gateway's Service (and Deployment) in `manifests/gateway.yaml`.
pub const GATEWAY_SERVICE: &str = "istio-ingressgateway";

/// How a lab is built.
#[derive(Debug, Clone)]
pub struct LabOptions {
    /// Directory with `remora-webhook`, `remora-init`, `remora-proxy` and `lab-app`.
    pub bin_dir: PathBuf,
    /// `--config` for the webhook, if any.
    pub webhook_config: Option<PathBuf>,
    /// Print what the lab does, step by step.
    pub verbose: bool,
    /// Bound for every wait (probes, init containers, reloads).
    pub timeout: Duration,
    /// Keep the log directory after teardown.
    pub keep_logs: bool,
    /// Set to stop a long operation early (the CLI sets it on Ctrl-C).
    pub cancel: Arc<AtomicBool>,
    /// The webhook's `--inject-ca-address`: `auto` (the default, as the install) sends the
    /// proxies to the lab's own CA (`remora-ca.remora-system.svc:15012`); `Some("HOST:PORT")`
    /// sends them elsewhere (they wait, unready, until that CA answers); `None` is `off`: no
    /// identity is injected (the CA still runs).
    pub inject_ca_address: Option<String>,
    /// Run the control plane's rules controller: Istio objects given to [`Lab::apply`] and
    /// [`Lab::set_rules`] (and the lab's Services, as ServiceEntries) go to the lab's API as
    /// objects, and the controller writes each namespace's `remora-mesh-rules` ConfigMap, as
    /// with `kubectl apply` in a cluster. Off: the lab writes those ConfigMaps itself.
    pub rules_controller: bool,
    /// The mesh CA's `--ca-max-cert-ttl` (`None`: its default, 24 h): short-lived workload
    /// certificates that the proxies renew while the lab runs.
    pub ca_max_cert_ttl: Option<String>,
    /// CNI mode: the injector runs with `cni.enabled` (pods get `remora-validation` instead of
    /// `remora-init`) and the kubelet calls the `remora-cni` plugin when it creates a pod's
    /// network. Default: on when `REMORA_LAB_CNI` is set (so any scenario runs in CNI mode).
    pub cni: bool,
}

impl Default for LabOptions {
    fn default() -> Self {
        LabOptions {
            bin_dir: default_bin_dir(),
            webhook_config: None,
            verbose: std::env::var_os("REMORA_LAB_VERBOSE").is_some(),
            timeout: Duration::from_secs(30),
            keep_logs: std::env::var_os("REMORA_LAB_KEEP").is_some(),
            cancel: Arc::new(AtomicBool::new(false)),
            inject_ca_address: Some("auto".to_string()),
            rules_controller: false,
            ca_max_cert_ttl: None,
            cni: std::env::var_os("REMORA_LAB_CNI").is_some(),
        }
    }
}

/// A pod the lab runs.
pub struct Pod {
    pub name: String,
    pub namespace: String,
    pub ip: Ipv4Addr,
    pub labels: BTreeMap<String, String>,
    /// The object as admitted (patched by the webhook when it was called).
    pub object: Value,
    /// Whether the webhook was asked (namespace and object selectors matched).
    pub reviewed: bool,
    /// Whether a `remora-proxy` container runs in the pod.
    pub meshed: bool,
    pub containers: Vec<Running>,
    pub dir: PathBuf,
    pub netns: Netns,
}

impl Pod {
    /// Stops the containers, apps first, native sidecars last.
    fn stop(&mut self) {
        while let Some(mut c) = self.containers.pop() {
            c.proc.stop(Duration::from_secs(3));
        }
    }

    pub fn container(&self, name: &str) -> Option<&Running> {
        self.containers.iter().find(|c| c.name == name)
    }

    /// Names of init containers and containers as the pod spec has them.
    pub fn spec_containers(&self) -> (Vec<String>, Vec<String>) {
        let names = |p: &str| -> Vec<String> {
            self.object
                .pointer(p)
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|c| c.get("name").and_then(Value::as_str).map(str::to_string))
                .collect()
        };
        (names("/spec/initContainers"), names("/spec/containers"))
    }
}

struct Namespace {
    labels: BTreeMap<String, String>,
    configmaps: BTreeMap<String, PathBuf>,
    /// Secrets the lab made ([`Lab::create_secret`]): name → directory in `..data` layout.
    secrets: BTreeMap<String, PathBuf>,
    user_rules: BTreeMap<String, String>,
    written_rules: Option<Vec<(String, String)>>,
    /// Without the rules controller, in a namespace that runs a gateway: the gateway's view
    /// the lab last wrote into its ConfigMap.
    written_view: Option<Vec<(String, String)>>,
    /// With the rules controller: the objects the lab applied in this namespace
    /// (apiVersion, plural, name).
    applied: std::collections::BTreeSet<(String, String, String)>,
}

/// The running lab. Dropping it stops every process and deletes every namespace it made.
pub struct Lab {
    pods: Vec<Pod>,
    webhook: Option<Webhook>,
    /// The Kubernetes API the control plane uses (listening in the node's namespace).
    api: LabApi,
    /// Deleted when the lab is dropped, after the pods (fields drop after `Drop::drop`).
    node: Netns,
    namespaces: BTreeMap<String, Namespace>,
    services: Vec<Service>,
    pub rt: tokio::runtime::Runtime,
    pub opts: LabOptions,
    pub id: String,
    dir: Option<tempfile::TempDir>,
    next_pod: u32,
    selectors: Vec<WebhookEntry>,
    /// The key the kubelet stand-in signs projected tokens with (the API checks them).
    token_key: Vec<u8>,
}

/// A pod's `/etc/hosts`: itself, the Services, and the CA's Service names on the node (where
/// the lab's control plane runs).
fn pod_hosts(pod: &str, ns: &str, ip: Ipv4Addr, services: &[Service]) -> String {
    let mut text = cluster::hosts_file(pod, ns, ip, services);
    text.push_str(&cluster::node_service_hosts(
        NODE_IP,
        CA_SERVICE.0,
        CA_SERVICE.1,
    ));
    text
}

fn labels_of(v: &Value, ptr: &str) -> BTreeMap<String, String> {
    v.pointer(ptr)
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                .collect()
        })
        .unwrap_or_default()
}

/// One entry of the webhook configuration: its selectors and the path it calls.
#[derive(Debug, Clone)]
pub struct WebhookEntry {
    pub namespace: LabelSelector,
    pub object: LabelSelector,
    pub path: String,
}

/// The entries of the MutatingWebhookConfiguration in `manifests/webhook.yaml` (which decide
/// whether the apiserver calls the webhook at all, and at which path), or, without it, one entry
/// selecting namespaces labelled `istio-injection=enabled` at `/inject`.
pub fn webhook_selectors() -> Vec<WebhookEntry> {
    let builtin = || {
        let ns = LabelSelector::from_value(&serde_json::json!({"matchExpressions": [
            {"key": "istio-injection", "operator": "In", "values": ["enabled"]},
            {"key": "kubernetes.io/metadata.name", "operator": "NotIn",
             "values": ["kube-system", "kube-public", "kube-node-lease", "remora-system"]}]}))
        .unwrap_or_default();
        let obj = LabelSelector::from_value(&serde_json::json!({"matchExpressions": [
            {"key": "sidecar.istio.io/inject", "operator": "NotIn", "values": ["false"]}]}))
        .unwrap_or_default();
        vec![WebhookEntry {
            namespace: ns,
            object: obj,
            path: "/inject".into(),
        }]
    };
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests/webhook.yaml");
    let Ok(text) = std::fs::read_to_string(&path) else {
        return builtin();
    };
    for doc in serde_yaml_ng::Deserializer::from_str(&text) {
        let Ok(v) = <Value as serde::Deserialize>::deserialize(doc) else {
            continue;
        };
        if v.get("kind").and_then(Value::as_str) != Some("MutatingWebhookConfiguration") {
            continue;
        }
        let entries: Vec<WebhookEntry> = v["webhooks"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|hook| {
                let ns = hook.get("namespaceSelector").map(LabelSelector::from_value);
                let obj = hook.get("objectSelector").map(LabelSelector::from_value);
                let path = hook.pointer("/clientConfig/service/path")?.as_str()?;
                match (ns, obj) {
                    (Some(Ok(namespace)), Some(Ok(object))) => Some(WebhookEntry {
                        namespace,
                        object,
                        path: path.to_string(),
                    }),
                    _ => None,
                }
            })
            .collect();
        if !entries.is_empty() {
            return entries;
        }
    }
    builtin()
}

/// The injector configuration the cluster install ships (`data["config.yaml"]` of the ConfigMap
/// in `manifests/injector-config.yaml`), written into `dir` for `remora-webhook serve --config`.
/// `None` when the manifest is not there (the webhook then uses its built-in defaults).
pub fn injector_config(dir: &Path) -> Result<Option<PathBuf>> {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests/injector-config.yaml");
    let Ok(text) = std::fs::read_to_string(&manifest) else {
        return Ok(None);
    };
    let v: Value = serde_yaml_ng::from_str(&text)
        .with_context(|| format!("parsing {}", manifest.display()))?;
    let config = v
        .pointer("/data/config.yaml")
        .and_then(Value::as_str)
        .ok_or_else(|| anyhow!("{} has no data.\"config.yaml\"", manifest.display()))?;
    // The lab's tests read the access log as JSON (the shipped default is Istio's TEXT line).
    let mut config: serde_yaml_ng::Value = serde_yaml_ng::from_str(config)
        .with_context(|| format!("parsing data.\"config.yaml\" of {}", manifest.display()))?;
    if let serde_yaml_ng::Value::Mapping(m) = &mut config {
        let mesh = m
            .entry("mesh".into())
            .or_insert_with(|| serde_yaml_ng::Value::Mapping(Default::default()));
        if let serde_yaml_ng::Value::Mapping(mesh) = mesh {
            mesh.insert("accessLogEncoding".into(), "JSON".into());
        }
    }
    let path = dir.join("config.yaml");
    std::fs::write(&path, serde_yaml_ng::to_string(&config)?)?;
    Ok(Some(path))
}

impl Lab {
    /// Creates the node. Pods come with [`Lab::apply`].
    pub fn start(opts: LabOptions) -> Result<Lab> {
        if !nix::unistd::Uid::effective().is_root() {
            bail!("the mesh lab needs root (it creates network namespaces and iptables rules)");
        }
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let id = format!(
            "rl{}x{}",
            std::process::id(),
            LAB_COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let dir = tempfile::Builder::new()
            .prefix(&format!("remora-lab-{id}-"))
            .tempdir()?;
        kubelet::set_mode(dir.path(), 0o755)?;
        let node = Netns::create(&format!("{id}-node"))?;
        let api = LabApi::start(&rt, &node, &dir.path().join("ns"))?;
        // The install's namespace: the CA keeps its root Secret there.
        api.set_namespace(CA_SERVICE.1, &BTreeMap::new());
        let token_key = api.token_key();
        let lab = Lab {
            pods: Vec::new(),
            webhook: None,
            api,
            node,
            namespaces: BTreeMap::new(),
            services: Vec::new(),
            rt,
            opts,
            id,
            dir: Some(dir),
            next_pod: 0,
            selectors: webhook_selectors(),
            token_key,
        };
        lab.node.ip(&["link", "add", "br0", "type", "bridge"])?;
        lab.node
            .ip(&["addr", "add", &format!("{NODE_IP}/24"), "dev", "br0"])?;
        lab.node.ip(&["link", "set", "br0", "up"])?;
        lab.say(format!(
            "node {}-node: bridge br0 10.244.0.1/24, no route out; logs in {}",
            lab.id,
            lab.dir().display()
        ));
        Ok(lab)
    }

    pub fn dir(&self) -> &Path {
        self.dir
            .as_ref()
            .map(|d| d.path())
            .unwrap_or(Path::new("/tmp"))
    }

    pub fn node(&self) -> &Netns {
        &self.node
    }

    /// The Kubernetes API the control plane uses (its objects, the requests it saw).
    pub fn api(&self) -> &LabApi {
        &self.api
    }

    fn say(&self, msg: String) {
        if self.opts.verbose {
            eprintln!("lab: {msg}");
        }
    }

    fn check_cancel(&self) -> Result<()> {
        if self.opts.cancel.load(Ordering::Relaxed) {
            bail!("interrupted");
        }
        Ok(())
    }

    /// Creates a namespace (Kubernetes adds `kubernetes.io/metadata.name`).
    pub fn create_namespace(&mut self, name: &str, labels: &[(&str, &str)]) -> Result<()> {
        let mut l: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        l.insert("kubernetes.io/metadata.name".into(), name.into());
        self.api.set_namespace(name, &l);
        if let Some(ns) = self.namespaces.get_mut(name) {
            ns.labels = l;
            return Ok(());
        }
        let cm_dir = self.dir().join("ns").join(name).join(RULES_CONFIGMAP);
        kubelet::write_atomic_dir(&cm_dir, &[])?;
        let mut configmaps = BTreeMap::new();
        configmaps.insert(RULES_CONFIGMAP.to_string(), cm_dir);
        self.namespaces.insert(
            name.to_string(),
            Namespace {
                labels: l,
                configmaps,
                secrets: BTreeMap::new(),
                user_rules: BTreeMap::new(),
                written_rules: None,
                written_view: None,
                applied: Default::default(),
            },
        );
        self.say(format!("namespace {name} {labels:?}"));
        Ok(())
    }

    /// The ConfigMaps pods of `ns` mount: the lab's own (the rules) and those written through
    /// the API (the CA's root).
    fn configmaps_of(&self, ns: &str) -> BTreeMap<String, PathBuf> {
        let mut all = self
            .namespaces
            .get(ns)
            .map(|n| n.configmaps.clone())
            .unwrap_or_default();
        for (name, dir) in self.api.configmap_dirs(ns) {
            all.entry(name).or_insert(dir);
        }
        all
    }

    /// The Secrets pods of `ns` mount ([`Lab::create_secret`]).
    fn secrets_of(&self, ns: &str) -> BTreeMap<String, PathBuf> {
        self.namespaces
            .get(ns)
            .map(|n| n.secrets.clone())
            .unwrap_or_default()
    }

    /// Makes Secret `name` in namespace `ns` with `files` (key → content), as its pods' Secret
    /// volumes mount it (kubelet's `..data` layout).
    pub fn create_secret(&mut self, ns: &str, name: &str, files: &[(&str, &str)]) -> Result<()> {
        self.ensure_namespace(ns)?;
        let dir = self.dir().join("ns").join(ns).join("secrets").join(name);
        let files: Vec<(String, String)> = files
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        kubelet::write_atomic_dir(&dir, &files)?;
        if let Some(space) = self.namespaces.get_mut(ns) {
            space.secrets.insert(name.to_string(), dir);
        }
        self.say(format!("secret {ns}/{name}"));
        Ok(())
    }

    /// [`Lab::configmaps_of`], once every ConfigMap volume of `pod` that is not optional
    /// exists: a kubelet keeps such a pod waiting (ContainerCreating) until the ConfigMap
    /// appears, e.g. until the CA has published its root to a newly labelled namespace.
    /// Bounded by the lab's timeout.
    fn wait_configmaps(&self, ns: &str, pod: &Value) -> Result<BTreeMap<String, PathBuf>> {
        let wanted: Vec<String> = pod
            .pointer("/spec/volumes")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter(|v| v.pointer("/configMap/optional").and_then(Value::as_bool) != Some(true))
            .filter_map(|v| v.pointer("/configMap/name").and_then(Value::as_str))
            .map(str::to_string)
            .collect();
        let started = Instant::now();
        loop {
            let all = self.configmaps_of(ns);
            let missing: Vec<&String> = wanted.iter().filter(|w| !all.contains_key(*w)).collect();
            if missing.is_empty() {
                if !wanted.is_empty() && started.elapsed() > Duration::from_millis(100) {
                    self.say(format!(
                        "namespace {ns}: waited {} ms for ConfigMap(s) {wanted:?}",
                        started.elapsed().as_millis()
                    ));
                }
                return Ok(all);
            }
            if started.elapsed() >= self.opts.timeout {
                let hook = self
                    .webhook
                    .as_ref()
                    .map(|h| h.proc.log_tail(15))
                    .unwrap_or_else(|| "(the control plane is not running)".into());
                bail!(
                    "ConfigMap(s) {missing:?} still missing in namespace {ns} after {:?} (the mesh CA publishes {CA_ROOT_CONFIGMAP} to the namespaces a webhook entry may inject: labelled istio-injection=enabled or istio.io/rev, or unlabelled); webhook log:\n{hook}",
                    self.opts.timeout
                );
            }
            self.check_cancel()?;
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn ensure_namespace(&mut self, name: &str) -> Result<()> {
        if !self.namespaces.contains_key(name) {
            self.create_namespace(name, &[])?;
        }
        Ok(())
    }

    /// Applies multi-document Kubernetes YAML: Namespaces and Services first, then Istio rules
    /// (into the namespace's `remora-mesh-rules` ConfigMap), then Pods and Deployments in order.
    /// `default_ns` is used where an object names none.
    pub fn apply(&mut self, yaml: &str, default_ns: &str) -> Result<()> {
        let mut docs = Vec::new();
        for doc in serde_yaml_ng::Deserializer::from_str(yaml) {
            let v: Value = serde::Deserialize::deserialize(doc).context("YAML document")?;
            if !v.is_null() {
                docs.push(v);
            }
        }
        let kind = |v: &Value| {
            v.get("kind")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string()
        };
        let ns_of = |v: &Value| {
            v.pointer("/metadata/namespace")
                .and_then(Value::as_str)
                .unwrap_or(default_ns)
                .to_string()
        };
        for v in docs.iter().filter(|v| kind(v) == "Namespace") {
            let name = v
                .pointer("/metadata/name")
                .and_then(Value::as_str)
                .ok_or_else(|| anyhow!("Namespace without metadata.name"))?;
            let labels = labels_of(v, "/metadata/labels");
            let pairs: Vec<(&str, &str)> = labels
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            self.create_namespace(name, &pairs)?;
        }
        for v in docs.iter().filter(|v| kind(v) == "Service") {
            self.add_service(v, &ns_of(v))?;
        }
        let mut rules: BTreeMap<String, String> = BTreeMap::new();
        for v in &docs {
            match kind(v).as_str() {
                "VirtualService"
                | "DestinationRule"
                | "ServiceEntry"
                | "Sidecar"
                | "Gateway"
                | "PeerAuthentication"
                | "AuthorizationPolicy"
                | "RequestAuthentication" => {
                    let text = serde_yaml_ng::to_string(v)?;
                    let e = rules.entry(ns_of(v)).or_default();
                    if !e.is_empty() {
                        e.push_str("---\n");
                    }
                    e.push_str(&text);
                }
                "ConfigMap"
                    if v.pointer("/metadata/name").and_then(Value::as_str)
                        == Some(RULES_CONFIGMAP) =>
                {
                    let e = rules.entry(ns_of(v)).or_default();
                    for (_, text) in labels_of(v, "/data") {
                        if !e.is_empty() {
                            e.push_str("---\n");
                        }
                        e.push_str(&text);
                    }
                }
                _ => {}
            }
        }
        for (ns, text) in rules {
            self.set_rules_quiet(&ns, &[("rules.yaml", &text)])?;
        }
        let mut created = false;
        for v in &docs {
            self.check_cancel()?;
            match kind(v).as_str() {
                "Pod" => {
                    self.create_pod(v.clone(), &ns_of(v))?;
                    created = true;
                }
                "Deployment" => {
                    let name = v
                        .pointer("/metadata/name")
                        .and_then(Value::as_str)
                        .ok_or_else(|| anyhow!("Deployment without metadata.name"))?;
                    let replicas = v
                        .pointer("/spec/replicas")
                        .and_then(Value::as_u64)
                        .unwrap_or(1);
                    let template = v
                        .pointer("/spec/template")
                        .ok_or_else(|| anyhow!("Deployment {name}: no spec.template"))?;
                    let hash = format!("{:x}", fnv(&template.to_string()) % 0xfffff);
                    for _ in 0..replicas {
                        let mut pod = serde_json::json!({
                            "apiVersion": "v1",
                            "kind": "Pod",
                            "metadata": template.get("metadata").cloned().unwrap_or(serde_json::json!({})),
                            "spec": template.get("spec").cloned().unwrap_or(serde_json::json!({})),
                        });
                        let meta = pod["metadata"]
                            .as_object_mut()
                            .ok_or_else(|| anyhow!("bad template metadata"))?;
                        meta.insert("generateName".into(), format!("{name}-{hash}-").into());
                        meta.insert("namespace".into(), ns_of(v).into());
                        meta.insert(
                            "ownerReferences".into(),
                            serde_json::json!([{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                                "name": format!("{name}-{hash}"), "uid": "00000000-0000-4000-8000-000000000001",
                                "controller": true, "blockOwnerDeletion": true}]),
                        );
                        let labels = meta.entry("labels").or_insert(serde_json::json!({}));
                        if let Some(l) = labels.as_object_mut() {
                            l.insert("pod-template-hash".into(), hash.clone().into());
                        }
                        self.create_pod(pod, &ns_of(v))?;
                        created = true;
                    }
                }
                _ => {}
            }
        }
        if created {
            self.sync_services()?;
        }
        Ok(())
    }

    fn add_service(&mut self, v: &Value, ns: &str) -> Result<()> {
        self.ensure_namespace(ns)?;
        let name = v
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .ok_or_else(|| anyhow!("Service without metadata.name"))?;
        let mut ports = Vec::new();
        for p in v
            .pointer("/spec/ports")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let port = p
                .get("port")
                .and_then(Value::as_u64)
                .and_then(|n| u16::try_from(n).ok())
                .ok_or_else(|| anyhow!("Service {ns}/{name}: a port without a valid `port`"))?;
            let target = match p.get("targetPort") {
                None => port,
                Some(t) => t
                    .as_u64()
                    .and_then(|n| u16::try_from(n).ok())
                    .ok_or_else(|| {
                        anyhow!("Service {ns}/{name}: targetPort {t} must be a number in the lab")
                    })?,
            };
            ports.push(ServicePort {
                name: p
                    .get("name")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string(),
                port,
                target_port: target,
                app_protocol: p
                    .get("appProtocol")
                    .and_then(Value::as_str)
                    .map(str::to_string),
            });
        }
        let n = self.services.len() as u32;
        if n > 60_000 {
            bail!("too many services");
        }
        let vip = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 96, 0, 10)) + n);
        self.services
            .retain(|s| !(s.name == name && s.namespace == ns));
        self.services.push(Service {
            name: name.to_string(),
            namespace: ns.to_string(),
            vip,
            ports,
            selector: labels_of(v, "/spec/selector"),
        });
        self.say(format!("service {ns}/{name} at {vip}"));
        Ok(())
    }

    pub fn services(&self) -> &[Service] {
        &self.services
    }

    pub fn service(&self, ns: &str, name: &str) -> Result<&Service> {
        self.services
            .iter()
            .find(|s| s.namespace == ns && s.name == name)
            .ok_or_else(|| anyhow!("no service {ns}/{name} in the lab"))
    }

    fn endpoints(&self) -> Vec<Endpoint> {
        self.pods
            .iter()
            .map(|p| Endpoint {
                pod: p.name.clone(),
                namespace: p.namespace.clone(),
                ip: p.ip,
                labels: p.labels.clone(),
            })
            .collect()
    }

    /// The ingress gateway as `manifests/gateway.yaml` ships it, but with credentialName
    /// Secrets mounted (`files`; the lab's pods cannot reach its API): its
    /// Deployment's pod (the container's command is the image's entrypoint, `remora-proxy`,
    /// with the manifest's `args` and env, as uid 1337; not injected, so no capture) and its
    /// Service, in [`GATEWAY_NAMESPACE`] labelled `remora.dev/gateway=enabled`: that label makes
    /// the rules controller (or, without it, the lab) write the namespace's `remora-mesh-rules`
    /// with what a gateway sees (every namespace's Gateways, what is exported to it).
    pub fn start_gateway(&mut self) -> Result<()> {
        self.start_gateway_with_credentials(&[])
    }

    /// [`Lab::start_gateway`] with Secrets (made with [`Lab::create_secret`] in
    /// [`GATEWAY_NAMESPACE`]) mounted for `credentialName`, as docs/gateways.md patches the
    /// Deployment: a volume per Secret at `/etc/remora/gateway-credentials/<name>`.
    pub fn start_gateway_with_credentials(&mut self, secrets: &[&str]) -> Result<()> {
        self.start_gateway_manifest("gateway.yaml", secrets)
    }

    /// The egress gateway as `manifests/egress-gateway.yaml` ships it (`istio-egressgateway`,
    /// label `istio: egressgateway`), changed as [`Lab::start_gateway`] changes the ingress
    /// gateway's, in [`GATEWAY_NAMESPACE`].
    pub fn start_egress_gateway(&mut self) -> Result<()> {
        self.start_gateway_manifest("egress-gateway.yaml", &[])
    }

    fn start_gateway_manifest(&mut self, manifest: &str, secrets: &[&str]) -> Result<()> {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../manifests")
            .join(manifest);
        let mut text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        // The lab's pods cannot reach its API: the gateway gets its credentialName Secrets
        // mounted (`REMORA_GATEWAY_CREDENTIALS_SOURCE=files`, each Secret a volume), as a user
        // who prefers mounted Secrets patches the Deployment (docs/gateways.md); reading them
        // through the API is tested against the recorded API (tests/tests/kube_gateway_secrets.rs).
        {
            let mut docs = Vec::new();
            for doc in serde_yaml_ng::Deserializer::from_str(&text) {
                let mut v: Value = serde::Deserialize::deserialize(doc)
                    .with_context(|| format!("parsing {}", path.display()))?;
                if v.get("kind").and_then(Value::as_str) == Some("Deployment") {
                    let spec = v.pointer_mut("/spec/template/spec").ok_or_else(|| {
                        anyhow!("{}: Deployment without a pod spec", path.display())
                    })?;
                    if let Some(env) = spec
                        .pointer_mut("/containers/0/env")
                        .and_then(Value::as_array_mut)
                    {
                        for e in env.iter_mut() {
                            if e["name"] == "REMORA_GATEWAY_CREDENTIALS_SOURCE" {
                                e["value"] = serde_json::json!("files");
                            }
                        }
                        // The lab's control plane serves no discovery (its API stand-in holds
                        // no Services or EndpointSlices): the gateway routes by the lab's
                        // ServiceEntries, as the lab's sidecars do.
                        env.retain(|e| e["name"] != "REMORA_DISCOVERY_ADDRESS");
                    }
                    if let Some(vols) = spec.get_mut("volumes").and_then(Value::as_array_mut) {
                        vols.retain(|v| v["name"] != "credentials");
                    }
                    if let Some(mounts) = spec
                        .pointer_mut("/containers/0/volumeMounts")
                        .and_then(Value::as_array_mut)
                    {
                        mounts.retain(|m| m["name"] != "credentials");
                    }
                    for name in secrets {
                        if let Some(vols) = spec.get_mut("volumes").and_then(Value::as_array_mut) {
                            vols.push(
                                serde_json::json!({"name": name, "secret": {"secretName": name}}),
                            );
                        }
                        if let Some(mounts) = spec
                            .pointer_mut("/containers/0/volumeMounts")
                            .and_then(Value::as_array_mut)
                        {
                            mounts.push(serde_json::json!({"name": name, "readOnly": true,
                                "mountPath": format!("/etc/remora/gateway-credentials/{name}")}));
                        }
                    }
                }
                docs.push(serde_yaml_ng::to_string(&v)?);
            }
            text = docs.join("---\n");
        }
        let label = remora_model::compile::GATEWAY_LABEL;
        let mut labels: Vec<(String, String)> = self
            .namespaces
            .get(GATEWAY_NAMESPACE)
            .map(|n| n.labels.clone().into_iter().collect())
            .unwrap_or_default();
        labels.retain(|(k, _)| k != label.0 && k != "kubernetes.io/metadata.name");
        labels.push((label.0.to_string(), label.1.to_string()));
        let pairs: Vec<(&str, &str)> = labels
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        self.create_namespace(GATEWAY_NAMESPACE, &pairs)?;
        self.apply(&text, GATEWAY_NAMESPACE)
    }

    /// Start the control plane (webhook, mesh CA, rules controller when asked) on the node,
    /// once.
    fn ensure_control_plane(&mut self) -> Result<()> {
        if self.webhook.is_some() {
            return Ok(());
        }
        let dir = self.dir().join("webhook");
        std::fs::create_dir_all(&dir)?;
        let mut config = match &self.opts.webhook_config {
            Some(c) => Some(c.clone()),
            None => injector_config(&dir)?,
        };
        if self.opts.cni {
            // The same configuration with CNI mode on.
            let mut text = match &config {
                Some(c) => std::fs::read_to_string(c)
                    .with_context(|| format!("reading {}", c.display()))?,
                None => String::new(),
            };
            if !text.is_empty() && !text.ends_with('\n') {
                text.push('\n');
            }
            text.push_str("cni:\n  enabled: true\n");
            let path = dir.join("config-cni.yaml");
            std::fs::write(&path, text)?;
            config = Some(path);
        }
        let plane = ControlPlane {
            netns: &self.node,
            kube_url: self.api.url(),
            ca_max_cert_ttl: self.opts.ca_max_cert_ttl.clone(),
        };
        let hook = self.rt.block_on(Webhook::start(
            &self.opts.bin_dir,
            &dir,
            config.as_deref(),
            self.opts.inject_ca_address.as_deref(),
            &plane,
            self.opts.rules_controller,
        ))?;
        self.say(format!(
            "control plane on the node: webhook https://{}, mesh CA {NODE_IP}:{}{} (API {})",
            hook.addr,
            crate::admission::CA_PORT,
            if self.opts.rules_controller {
                ", rules controller"
            } else {
                ""
            },
            self.api.url()
        ));
        self.webhook = Some(hook);
        Ok(())
    }

    fn create_pod(&mut self, mut obj: Value, ns: &str) -> Result<()> {
        self.ensure_namespace(ns)?;
        let ns_labels = self.namespaces[ns].labels.clone();
        let pod_labels = labels_of(&obj, "/metadata/labels");
        let entry = self
            .selectors
            .iter()
            .find(|e| e.namespace.matches(&ns_labels) && e.object.matches(&pod_labels))
            .map(|e| e.path.clone());
        let reviewed = entry.is_some();
        let shown_name = obj
            .pointer("/metadata/name")
            .or_else(|| obj.pointer("/metadata/generateName"))
            .and_then(Value::as_str)
            .unwrap_or("?")
            .to_string();
        if let Some(path) = entry {
            self.ensure_control_plane()?;
            let hook = self
                .webhook
                .as_ref()
                .ok_or_else(|| anyhow!("webhook not running"))?;
            let adm = self.rt.block_on(hook.admit_at(ns, &obj, &path))?;
            if !adm.allowed {
                bail!("the webhook denied pod {ns}/{shown_name}: {}", adm.message);
            }
            obj = adm.object;
        }
        // The apiserver names generateName pods after admission.
        if obj
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .is_none()
        {
            let base = obj
                .pointer("/metadata/generateName")
                .and_then(Value::as_str)
                .unwrap_or("pod-")
                .to_string();
            let suffix: String = (0..5)
                .map(|_| {
                    let c = b"bcdfghjklmnpqrstvwxz2456789";
                    c[rand::random::<usize>() % c.len()] as char
                })
                .collect();
            obj["metadata"]["name"] = format!("{base}{suffix}").into();
        }
        obj["metadata"]["namespace"] = ns.into();
        let n = self.next_pod;
        self.next_pod += 1;
        obj["metadata"]["uid"] = format!("00000000-0000-4000-9000-{:012x}", n).into();
        let name = obj["metadata"]["name"]
            .as_str()
            .unwrap_or("pod")
            .to_string();
        if n > 240 {
            bail!("the lab node holds at most 240 pods");
        }
        let ip = Ipv4Addr::new(10, 244, 0, 10 + n as u8);
        let netns = Netns::create(&format!("{}-p{n}", self.id))?;
        let veth = format!("vp{n}");
        self.node().ip(&[
            "link",
            "add",
            &veth,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            netns.name(),
        ])?;
        self.node()
            .ip(&["link", "set", &veth, "master", "br0", "up"])?;
        netns.ip(&["addr", "add", &format!("{ip}/24"), "dev", "eth0"])?;
        netns.ip(&["link", "set", "eth0", "up"])?;
        netns.ip(&[
            "route",
            "add",
            "10.96.0.0/16",
            "via",
            "10.244.0.1",
            "dev",
            "eth0",
        ])?;
        netns.write_hosts(&pod_hosts(&name, ns, ip, &self.services))?;
        // The kube-proxy stand-in, as a CNI/kube-proxy would have it before any container runs.
        let rules = cluster::kube_proxy_rules(&self.services, &self.endpoints());
        netns.exec_input(&["iptables-restore", "--noflush"], Some(&rules))?;
        netns.exec(&[
            "iptables",
            "-t",
            "nat",
            "-A",
            "OUTPUT",
            "-j",
            cluster::KUBE_CHAIN,
        ])?;
        netns.exec(&[
            "iptables",
            "-t",
            "filter",
            "-A",
            "OUTPUT",
            "-j",
            cluster::KUBE_CHAIN,
        ])?;
        let pod_dir = self.dir().join("pods").join(&name);
        let configmaps = self.wait_configmaps(ns, &obj)?;
        let secrets = self.secrets_of(ns);
        let uid = obj["metadata"]["uid"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        // The pod exists from here on: its tokens are good for TokenReviews.
        self.api.add_pod(ns, &name, &uid);
        let ctx = PodCtx {
            name: &name,
            namespace: ns,
            ip,
            netns: &netns,
            node: self.node(),
            dir: &pod_dir,
            bin_dir: &self.opts.bin_dir,
            configmaps: &configmaps,
            secrets: &secrets,
            timeout: self.opts.timeout,
            token_key: &self.token_key,
        };
        let after_init = || -> Result<()> {
            for args in cluster::jump_last_commands() {
                let mut all = vec!["iptables"];
                all.extend(args);
                netns.exec(&all)?;
            }
            Ok(())
        };
        let verbose = self.opts.verbose;
        let mut log = |m: String| {
            if verbose {
                eprintln!("lab: {m}");
            }
        };
        if self.opts.cni {
            // The runtime's CNI call, before any container; the kube-proxy stand-in's jump then
            // goes last again, as after an init container.
            let cni =
                kubelet::cni_add(&obj, &ctx, &self.dir().join("cni")).and_then(|()| after_init());
            if let Err(e) = cni {
                self.api.remove_pod(&uid);
                return Err(e.context(format!("starting pod {ns}/{name}")));
            }
            log(format!("{name}: remora-cni ADD done"));
        }
        let containers = match kubelet::start_pod(&obj, &ctx, &after_init, &mut log) {
            Ok(c) => c,
            Err(e) => {
                self.api.remove_pod(&uid);
                return Err(e.context(format!("starting pod {ns}/{name}")));
            }
        };
        let meshed = containers.iter().any(|c| c.name == "remora-proxy");
        self.say(format!(
            "pod {ns}/{name} {ip} ready ({}; {})",
            if reviewed {
                "reviewed by the webhook"
            } else {
                "not sent to the webhook"
            },
            if meshed {
                "with remora-proxy"
            } else {
                "no sidecar"
            }
        ));
        self.pods.push(Pod {
            name,
            namespace: ns.to_string(),
            ip,
            labels: labels_of(&obj, "/metadata/labels"),
            object: obj,
            reviewed,
            meshed,
            containers,
            dir: pod_dir,
            netns,
        });
        Ok(())
    }

    /// Re-renders what depends on Services and ready pods: every pod's kube-proxy chain and hosts
    /// file, and each namespace's generated ServiceEntries (waiting for meshed pods to reload).
    pub fn sync_services(&mut self) -> Result<()> {
        let eps = self.endpoints();
        let rules = cluster::kube_proxy_rules(&self.services, &eps);
        for p in &self.pods {
            p.netns
                .exec_input(&["iptables-restore", "--noflush"], Some(&rules))?;
            p.netns
                .write_hosts(&pod_hosts(&p.name, &p.namespace, p.ip, &self.services))?;
        }
        let names: Vec<String> = self.namespaces.keys().cloned().collect();
        for ns in names {
            self.write_rules(&ns, true)?;
        }
        Ok(())
    }

    fn write_rules(&mut self, ns: &str, wait: bool) -> Result<()> {
        let generated = cluster::service_entries(ns, &self.services, &self.endpoints());
        let space = self
            .namespaces
            .get(ns)
            .ok_or_else(|| anyhow!("no namespace {ns} in the lab"))?;
        let mut files: Vec<(String, String)> = space.user_rules.clone().into_iter().collect();
        if !generated.is_empty() {
            files.push((GENERATED_RULES_FILE.to_string(), generated));
        }
        if space.written_rules.as_ref() == Some(&files) {
            return Ok(());
        }
        let before = if wait {
            self.generations(ns)
        } else {
            Vec::new()
        };
        let gateway_only = rules_view(&space.labels) == Some(View::Gateway);
        if self.opts.rules_controller {
            self.apply_objects(ns, &files)?;
        } else if !gateway_only {
            kubelet::write_atomic_dir(&space.configmaps[RULES_CONFIGMAP], &files)?;
        }
        if let Some(space) = self.namespaces.get_mut(ns) {
            space.written_rules = Some(files);
        }
        if !self.opts.rules_controller {
            self.write_gateway_views()?;
        }
        if wait {
            self.wait_reloaded(ns, before)?;
        }
        Ok(())
    }

    /// Without the rules controller the lab stands in for it where a gateway runs: a namespace
    /// labelled `remora.dev/gateway=enabled` (and not meshed) gets in its ConfigMap the
    /// gateway's view of every namespace's rules (`remora_model::compile::render_view`), as the
    /// controller writes it; objects the controller would leave out (invalid) are left out.
    fn write_gateway_views(&mut self) -> Result<()> {
        let gateways: Vec<String> = self
            .namespaces
            .iter()
            .filter(|(_, n)| rules_view(&n.labels) == Some(View::Gateway))
            .map(|(name, _)| name.clone())
            .collect();
        if gateways.is_empty() {
            return Ok(());
        }
        let mut checked = Vec::new();
        for (ns, space) in &self.namespaces {
            for (file, text) in space.written_rules.iter().flatten() {
                for doc in serde_yaml_ng::Deserializer::from_str(text) {
                    let mut v: Value = serde::Deserialize::deserialize(doc)
                        .with_context(|| format!("namespace {ns}: rules file {file}"))?;
                    if let Some(md) = v.get_mut("metadata").and_then(Value::as_object_mut) {
                        md.entry("namespace").or_insert_with(|| ns.clone().into());
                    }
                    if let Ok(c) = remora_model::compile::check(&v, "cluster.local") {
                        checked.push(c);
                    }
                }
            }
        }
        for g in gateways {
            let view = remora_model::compile::render_view(
                &checked,
                &g,
                &remora_model::compile::Settings::default(),
                View::Gateway,
            )
            .map_err(|e| anyhow!("the gateway's rules for namespace {g}: {e}"))?;
            let files: Vec<(String, String)> = view.data.into_iter().collect();
            let Some(space) = self.namespaces.get_mut(&g) else {
                continue;
            };
            if space.written_view.as_ref() != Some(&files) {
                kubelet::write_atomic_dir(&space.configmaps[RULES_CONFIGMAP], &files)?;
                space.written_view = Some(files);
            }
        }
        Ok(())
    }

    /// With the rules controller: make the objects of `files` (YAML) the namespace's objects in
    /// the API (created or replaced; those applied before and no longer given deleted).
    fn apply_objects(&mut self, ns: &str, files: &[(String, String)]) -> Result<()> {
        self.ensure_control_plane()?;
        let mut now = std::collections::BTreeSet::new();
        for (file, text) in files {
            for doc in serde_yaml_ng::Deserializer::from_str(text) {
                let mut v: Value = serde::Deserialize::deserialize(doc)
                    .with_context(|| format!("rules file {file}"))?;
                if v.is_null() {
                    continue;
                }
                let kind = v.get("kind").and_then(Value::as_str).unwrap_or_default();
                let api_version = v
                    .get("apiVersion")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string();
                let plural = remora_webhook::rules_controller::KINDS
                    .iter()
                    .find(|k| k.kind == kind)
                    .map(|k| k.plural)
                    .ok_or_else(|| anyhow!("rules file {file}: kind {kind:?} is not one the rules controller watches"))?;
                let name = v
                    .pointer("/metadata/name")
                    .and_then(Value::as_str)
                    .ok_or_else(|| anyhow!("rules file {file}: {kind} without metadata.name"))?
                    .to_string();
                if let Some(md) = v.get_mut("metadata").and_then(Value::as_object_mut) {
                    md.insert("namespace".into(), ns.into());
                }
                self.api.apply(&api_version, plural, v);
                now.insert((api_version, plural.to_string(), name));
            }
        }
        let before = self
            .namespaces
            .get(ns)
            .map(|n| n.applied.clone())
            .unwrap_or_default();
        for (av, plural, name) in before.difference(&now) {
            self.api.delete(av, plural, ns, name);
        }
        self.say(format!(
            "namespace {ns}: {} rule objects applied through the API (the rules controller writes {RULES_CONFIGMAP})",
            now.len()
        ));
        if let Some(space) = self.namespaces.get_mut(ns) {
            space.applied = now;
        }
        Ok(())
    }

    fn set_rules_quiet(&mut self, ns: &str, files: &[(&str, &str)]) -> Result<()> {
        self.ensure_namespace(ns)?;
        if let Some(space) = self.namespaces.get_mut(ns) {
            space.user_rules = files
                .iter()
                .map(|(n, t)| (n.to_string(), t.to_string()))
                .collect();
        }
        self.write_rules(ns, true)
    }

    /// Replaces the user rules (Istio YAML) in a namespace's `remora-mesh-rules` ConfigMap with
    /// `yaml` and waits (bounded) until every meshed pod there reports a new config generation.
    pub fn set_rules(&mut self, ns: &str, yaml: &str) -> Result<()> {
        self.set_rules_quiet(ns, &[("rules.yaml", yaml)])
    }

    /// The config generation each meshed pod of `ns` reports (`/config_dump`), by pod.
    fn generations(&self, ns: &str) -> Vec<(usize, Option<u64>)> {
        self.pods
            .iter()
            .enumerate()
            .filter(|(_, p)| p.namespace == ns && p.meshed)
            .map(|(i, p)| (i, self.config_generation(p).ok()))
            .collect()
    }

    /// Reads `"generation"` (the first numeric field of that name anywhere) from the proxy's
    /// `/config_dump`, asked from inside the pod (the admin port gives it to loopback peers only).
    pub fn config_generation(&self, pod: &Pod) -> Result<u64> {
        let r = self.http_in_pod(pod, 15020, "GET", "/config_dump")?;
        if r.status != 200 {
            bail!("/config_dump answered {}", r.status);
        }
        let v = r.json()?;
        find_number(&v, "generation").ok_or_else(|| anyhow!("/config_dump has no generation field"))
    }

    /// Wait until every meshed pod of `ns` runs the rules just written: its generation rose
    /// past the one read before the write. A pod whose proxy did not answer before the write is
    /// down or starting (the soak kills pods): a proxy that starts reads the files as they are
    /// now, so there is nothing to wait for. Each pod gets its own bound, generous for a loaded
    /// machine; it returns as soon as the pod has reloaded.
    fn wait_reloaded(&self, ns: &str, before: Vec<(usize, Option<u64>)>) -> Result<()> {
        const BOUND: Duration = Duration::from_secs(30);
        for (i, old) in before {
            let Some(old) = old else { continue };
            let pod = &self.pods[i];
            let deadline = Instant::now() + BOUND;
            loop {
                match self.config_generation(pod) {
                    // Higher: reloaded; lower: the proxy restarted and read the files anew.
                    Ok(g) if g != old => break,
                    _ if Instant::now() >= deadline => bail!(
                        "pod {ns}/{} did not load the new rules within {} s (generation still {old}); proxy log:\n{}",
                        pod.name,
                        BOUND.as_secs(),
                        pod.container("remora-proxy").map(|c| c.proc.log_tail(20)).unwrap_or_default()
                    ),
                    _ => std::thread::sleep(Duration::from_millis(50)),
                }
            }
        }
        Ok(())
    }

    pub fn pods(&self) -> &[Pod] {
        &self.pods
    }

    /// The first pod whose name starts with `prefix` (namespace-qualified `ns/prefix` allowed).
    pub fn pod(&self, prefix: &str) -> Result<&Pod> {
        let (ns, p) = prefix
            .split_once('/')
            .map(|(a, b)| (Some(a), b))
            .unwrap_or((None, prefix));
        self.pods
            .iter()
            .find(|x| x.name.starts_with(p) && ns.is_none_or(|n| n == x.namespace))
            .ok_or_else(|| anyhow!("no pod named {prefix}* in the lab"))
    }

    /// Resolves a host (`name`, `name.ns`, FQDN, or an IP) as the pod's hosts file does.
    pub fn resolve(&self, from: &Pod, host: &str) -> Result<Ipv4Addr> {
        if let Ok(ip) = host.parse() {
            return Ok(ip);
        }
        for s in &self.services {
            let short = s.namespace == from.namespace && host == s.name;
            if short
                || host == s.fqdn()
                || host == format!("{}.{}", s.name, s.namespace)
                || host == format!("{}.{}.svc", s.name, s.namespace)
            {
                return Ok(s.vip);
            }
        }
        bail!("{host} does not resolve in pod {}", from.name)
    }

    /// An HTTP request from inside `from` (as uid 0, so a meshed pod's sidecar captures it) to
    /// `host:port` resolved through the lab's services.
    pub fn http(
        &self,
        from: &Pod,
        host: &str,
        port: u16,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Result<HttpReply> {
        let ip = self.resolve(from, host)?;
        let authority = if port == 80 {
            host.to_string()
        } else {
            format!("{host}:{port}")
        };
        self.rt.block_on(client::http(
            &from.netns,
            SocketAddr::from((ip, port)),
            &authority,
            "GET",
            path,
            headers,
            Duration::from_secs(15),
        ))
    }

    /// A request from the node (like a kubelet probe or a scrape) to a pod's own port.
    pub fn http_direct(&self, pod: &Pod, port: u16, method: &str, path: &str) -> Result<HttpReply> {
        self.rt.block_on(client::http(
            self.node(),
            SocketAddr::from((pod.ip, port)),
            &format!("{}:{port}", pod.ip),
            method,
            path,
            &[],
            Duration::from_secs(15),
        ))
    }

    /// A request to `127.0.0.1:port` from inside the pod's network namespace (as the pod itself,
    /// or a port-forward, reaches its own ports).
    pub fn http_in_pod(&self, pod: &Pod, port: u16, method: &str, path: &str) -> Result<HttpReply> {
        self.rt.block_on(client::http(
            &pod.netns,
            SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
            &format!("localhost:{port}"),
            method,
            path,
            &[],
            Duration::from_secs(15),
        ))
    }

    /// The proxy's Prometheus samples (`:15090/stats/prometheus`).
    pub fn metrics(&self, pod: &Pod) -> Result<Vec<Sample>> {
        let r = self.http_direct(pod, 15090, "GET", "/stats/prometheus")?;
        if r.status != 200 {
            bail!("{}: /stats/prometheus answered {}", pod.name, r.status);
        }
        Ok(client::parse_prometheus(&String::from_utf8_lossy(&r.body)))
    }

    /// `iptables-save -t nat` inside a pod.
    pub fn nat_rules(&self, pod: &Pod) -> Result<String> {
        pod.netns.exec(&["iptables-save", "-t", "nat"])
    }

    /// Logs of every container (last lines), for failure reports.
    pub fn logs(&self, lines: usize) -> String {
        let mut out = String::new();
        if let Some(h) = &self.webhook {
            out.push_str(&format!("--- webhook\n{}\n", h.proc.log_tail(lines)));
        }
        for p in &self.pods {
            for c in &p.containers {
                out.push_str(&format!(
                    "--- {}/{} {}\n{}\n",
                    p.namespace,
                    p.name,
                    c.name,
                    c.proc.log_tail(lines)
                ));
            }
        }
        out
    }

    /// The lab's webhook, once a pod was sent to it.
    pub fn webhook(&self) -> Option<&Webhook> {
        self.webhook.as_ref()
    }

    /// Restarts the control plane (webhook, mesh CA, rules controller) as a rollout would,
    /// down for `down`; returns how long it did not serve.
    pub fn restart_control_plane(&mut self, down: Duration) -> Result<Duration> {
        let hook = self
            .webhook
            .as_mut()
            .ok_or_else(|| anyhow!("the lab has no control plane yet (no pod was injected)"))?;
        self.rt.block_on(hook.restart(down))
    }

    /// Like [`Lab::pod`], mutable (to signal or wait for a container's process).
    pub fn pod_mut(&mut self, prefix: &str) -> Result<&mut Pod> {
        let name = self.pod(prefix)?.name.clone();
        self.pods
            .iter_mut()
            .find(|p| p.name == name)
            .ok_or_else(|| anyhow!("no pod named {prefix}* in the lab"))
    }

    /// Replaces the user rules like [`Lab::set_rules`] but does not wait for the proxies (for a
    /// rule set they are expected to reject, which never raises their generation).
    pub fn set_rules_nowait(&mut self, ns: &str, yaml: &str) -> Result<()> {
        self.ensure_namespace(ns)?;
        if let Some(space) = self.namespaces.get_mut(ns) {
            space.user_rules = [("rules.yaml".to_string(), yaml.to_string())].into();
        }
        self.write_rules(ns, false)
    }

    /// Starts the named containers of a pod again after they ended (killed, or stopped by a
    /// signal), as a kubelet restarts dead containers: same spec, same network namespace and
    /// capture rules, no init containers. Processes still running under those names are stopped
    /// first. Waits for their probes like [`Lab::apply`] does.
    pub fn restart_containers(&mut self, pod_prefix: &str, names: &[&str]) -> Result<()> {
        let idx = {
            let name = self.pod(pod_prefix)?.name.clone();
            self.pods
                .iter()
                .position(|p| p.name == name)
                .ok_or_else(|| anyhow!("no pod named {pod_prefix}*"))?
        };
        for c in self.pods[idx].containers.iter_mut() {
            if names.contains(&c.name.as_str()) {
                c.proc.stop(Duration::from_secs(3));
            }
        }
        let verbose = self.opts.verbose;
        let mut log = |m: String| {
            if verbose {
                eprintln!("lab: {m}");
            }
        };
        let started = {
            let pod = &self.pods[idx];
            let ns = pod.namespace.clone();
            let configmaps = self.configmaps_of(&ns);
            let secrets = self.secrets_of(&ns);
            let ctx = PodCtx {
                name: &pod.name,
                namespace: &ns,
                ip: pod.ip,
                netns: &pod.netns,
                node: self.node(),
                dir: &pod.dir,
                bin_dir: &self.opts.bin_dir,
                configmaps: &configmaps,
                secrets: &secrets,
                timeout: self.opts.timeout,
                token_key: &self.token_key,
            };
            kubelet::restart_containers(&pod.object, &ctx, names, &mut log)
                .with_context(|| format!("restarting {names:?} of pod {ns}/{}", pod.name))?
        };
        let pod = &mut self.pods[idx];
        for r in started {
            match pod.containers.iter_mut().find(|c| c.name == r.name) {
                Some(slot) => *slot = r,
                None => pod.containers.push(r),
            }
        }
        Ok(())
    }

    /// Stops and deletes everything (also done on drop).
    pub fn teardown(&mut self) {
        // Apps first, then sidecars (native sidecars stop after the app), all pods at once.
        let mut apps: Vec<&mut crate::netns::Proc> = Vec::new();
        let mut sidecars: Vec<&mut crate::netns::Proc> = Vec::new();
        for p in self.pods.iter_mut() {
            for c in p.containers.iter_mut() {
                if c.name == "remora-proxy" {
                    sidecars.push(&mut c.proc);
                } else {
                    apps.push(&mut c.proc);
                }
            }
        }
        crate::netns::stop_all(&mut apps, Duration::from_secs(2));
        crate::netns::stop_all(&mut sidecars, Duration::from_secs(2));
        for p in self.pods.iter_mut().rev() {
            p.stop();
        }
        self.pods.clear();
        self.webhook = None;
        if let Some(d) = self.dir.take() {
            if self.opts.keep_logs {
                eprintln!("lab: logs kept in {}", d.keep().display());
            }
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.teardown();
    }
}

fn fnv(s: &str) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in s.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}

/// The first number stored under `key` in a JSON tree (depth-first).
pub fn find_number(v: &Value, key: &str) -> Option<u64> {
    match v {
        Value::Object(m) => {
            if let Some(n) = m.get(key).and_then(Value::as_u64) {
                return Some(n);
            }
            m.values().find_map(|x| find_number(x, key))
        }
        Value::Array(a) => a.iter().find_map(|x| find_number(x, key)),
        _ => None,
    }
}

/// Namespaces left behind by labs whose process no longer exists (killed with SIGKILL, say):
/// `(netns name, lab pid)`.
pub fn stale_namespaces() -> Result<Vec<(String, u32)>> {
    let list = crate::netns::run("ip", &["netns", "list"])?;
    Ok(list
        .lines()
        .filter_map(|l| {
            let name = l.split_whitespace().next()?;
            let pid: u32 = name.strip_prefix("rl")?.split('x').next()?.parse().ok()?;
            let rest = name.split_once('-')?.1;
            (rest == "node" || rest.starts_with('p')).then_some(())?;
            (!Path::new(&format!("/proc/{pid}")).exists()).then(|| (name.to_string(), pid))
        })
        .collect())
}

/// Removes what [`stale_namespaces`] finds: the processes still running inside each namespace
/// (started by that dead lab) get SIGKILL, then the namespace and its `/etc/netns` entry go.
/// Returns what was removed, one line each.
pub fn cleanup_stale() -> Result<Vec<String>> {
    let mut done = Vec::new();
    for (name, pid) in stale_namespaces()? {
        let pids = crate::netns::run("ip", &["netns", "pids", &name]).unwrap_or_default();
        let mut killed = 0;
        for p in pids
            .split_whitespace()
            .filter_map(|p| p.parse::<i32>().ok())
        {
            if nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(p),
                nix::sys::signal::Signal::SIGKILL,
            )
            .is_ok()
            {
                killed += 1;
            }
        }
        crate::netns::run("ip", &["netns", "delete", &name])?;
        let _ = std::fs::remove_dir_all(Path::new("/etc/netns").join(&name));
        done.push(format!(
            "{name} (lab pid {pid} is gone): {killed} processes stopped, namespace deleted"
        ));
    }
    Ok(done)
}
