//! `remora describe pod NAME[.NAMESPACE]` (also `deploy/NAME`, ...): one report of how the mesh
//! treats a pod, as `istioctl x describe pod` gives it. The pod and its workload, whether it is
//! injected, the Services that select it (ports and the protocol each gets), per Service host the
//! VirtualService routes that send traffic there (weights, and whether this pod's subset gets
//! any), the DestinationRule in force (its policy resolved by the proxy's own
//! `policy::traffic::resolve`) and the subsets the pod belongs to, the Sidecar that applies
//! (`rules::select_sidecar`) and the Istio annotations that change the pod's capture.
//!
//! The rules are read as the proxies of the pod's namespace read them: the rules ConfigMap the
//! pod mounts (default `remora-mesh-rules`), decoded and built into a snapshot by
//! `remora_model::rules` for a client proxy of that namespace. ConfigMaps labelled
//! `remora.dev/rules=true` are staging areas that no proxy loads: they are named, not applied.
//!
//! [`gather`] does the API calls (through [`super::kube`]); [`build`] and [`render_text`] are
//! pure functions over the typed objects, unit-tested without a cluster.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use anyhow::{anyhow, Context};
use k8s_openapi::api::core::v1 as corev1;
use k8s_openapi::api::core::v1::{ConfigMap, Container, Pod, Service};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::Serialize;
use serde_json::Value;

use remora_model::lint::policy as policy_check;
use remora_model::policy::lb::LbPolicy;
use remora_model::policy::limits::UNLIMITED;
use remora_model::policy::traffic;
use remora_model::rules::host::match_score;
use remora_model::rules::load::{decode_inputs, Inputs};
use remora_model::rules::{
    build_snapshot, select_sidecar, service_port_protocol, DestinationRule, LoadContext, Protocol,
    ServicePort, Snapshot, VirtualService, WeightedDestination,
};

use super::check;
use super::kube::{paths, Cluster, GetError};
use super::objects;
use super::status::{rules_config_map_name, rules_files};
use super::target::Target;
use super::text::{self, Match};
use remora_webhook::annotations as ann;
use remora_webhook::template::{INIT_NAME, PROXY_NAME};

/// The whole report (`-o json` prints this).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Description {
    pub pod: String,
    pub namespace: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    pub workload: Workload,
    pub labels: BTreeMap<String, String>,
    pub injection: Injection,
    pub rules: RulesSource,
    pub services: Vec<ServiceView>,
    pub sidecar: SidecarView,
    /// The AuthorizationPolicies, RequestAuthentications and PeerAuthentications of the rules,
    /// and whether each selects the pod.
    pub security: super::authz::SecurityView,
    /// For a gateway pod (`remora-proxy gateway`): its listeners, servers and bound routes as
    /// the rules plan them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gateway: Option<remora_model::dump::GatewayDump>,
    /// For a gateway pod: where its servers' states and certificates come from (the gateway's
    /// own `/config_dump`, else whether each `credentialName` Secret exists).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gateway_tls: Option<super::gateway_view::TlsSource>,
    pub annotations: Vec<AnnotationNote>,
    pub notes: Vec<String>,
}

/// The controller the pod belongs to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Workload {
    /// `Deployment`, `StatefulSet`, ...; empty for a bare pod.
    pub kind: String,
    pub name: String,
    pub reason: String,
}

/// Whether the pod carries remora's proxy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Injection {
    pub injected: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proxy_image: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proxy_version: Option<String>,
    pub reason: String,
    /// What the pod's `remora-init` arguments capture, in remora-init's own words.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub capture: Vec<String>,
}

/// Where the rules came from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RulesSource {
    /// `namespace/name` of the ConfigMap the proxies of the namespace load.
    pub config_map: String,
    pub found: bool,
    pub files: Vec<String>,
    /// Load errors: with any, proxies reject the whole set and keep their previous rules.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
    /// ConfigMaps labelled remora.dev/rules=true: staged, not loaded by proxies.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub staged: Vec<String>,
    pub note: String,
}

/// A Service that selects the pod.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ServiceView {
    pub name: String,
    pub host: String,
    pub reason: String,
    pub ports: Vec<PortView>,
    pub virtual_services: Vec<VirtualServiceView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub destination_rule: Option<DestinationRuleView>,
    /// Why no DestinationRule, or which others were shadowed.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PortView {
    pub port: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `TCP`, `UDP`, `SCTP` (the Service port's `protocol`).
    pub transport: String,
    pub target_port: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub app_protocol: Option<String>,
    /// What the port declares to Istio (port name prefix / appProtocol), if anything.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub declared: Option<String>,
    /// What remora's proxy does: `HTTP`, `TCP`, ... or `sniffed`.
    pub protocol: String,
    pub reason: String,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct VirtualServiceView {
    /// `namespace/name`.
    pub name: String,
    pub hosts: Vec<String>,
    /// Whether sidecars of the namespace use it for this host.
    pub applies: bool,
    pub reason: String,
    pub routes: Vec<RouteView>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RouteView {
    /// `http`, `tcp` or `tls`.
    pub kind: String,
    /// Field path, e.g. `spec.http[0]`.
    pub path: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The route's match conditions in words; `every request` without any.
    pub matches: String,
    pub destinations: Vec<DestinationView>,
    /// The share (percent) of this route's traffic that can reach this pod.
    pub this_pod_percent: u32,
    pub this_pod: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DestinationView {
    pub host: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subset: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// As written.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub weight: Option<u32>,
    /// The share of the route's traffic (a single destination without weight takes 100).
    pub percent: u32,
    /// The destination is this Service.
    pub this_service: bool,
    /// This pod is among the destination's endpoints.
    pub this_pod: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DestinationRuleView {
    pub name: String,
    pub host: String,
    pub reason: String,
    pub traffic_policy: Vec<PolicyView>,
    pub subsets: Vec<SubsetView>,
    /// The subsets this pod belongs to.
    pub pod_subsets: Vec<String>,
}

/// The effective policy for one Service port (and the pod's subset).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PolicyView {
    pub port: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subset: Option<String>,
    pub load_balancer: String,
    pub connection_pool: String,
    pub outlier_detection: String,
    pub tls: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SubsetView {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub this_pod: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SidecarView {
    /// `namespace/name`; `None` without a Sidecar.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub reason: String,
    /// `[port N: ]namespace/dnsName` per egress host.
    pub egress_hosts: Vec<String>,
    pub outbound_traffic_policy: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AnnotationNote {
    pub key: String,
    pub value: String,
    pub meaning: String,
}

// ------------------------------------------------------------------ small helpers

fn join_labels(m: &BTreeMap<String, String>) -> String {
    if m.is_empty() {
        return "(none)".to_string();
    }
    m.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn subset_of(sel: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    sel.iter().all(|(k, v)| labels.get(k) == Some(v))
}

fn protocol_name(p: Protocol) -> &'static str {
    match p {
        Protocol::Http => "HTTP",
        Protocol::Http2 => "HTTP2",
        Protocol::Grpc => "GRPC",
        Protocol::Tcp => "TCP",
        Protocol::Tls => "TLS",
    }
}

// ------------------------------------------------------------------ the pod

fn workload_of(pod: &Pod) -> Workload {
    let owner = pod
        .metadata
        .owner_references
        .as_ref()
        .and_then(|o| o.iter().find(|r| r.controller == Some(true)).or(o.first()));
    let Some(owner) = owner else {
        return Workload {
            kind: String::new(),
            name: String::new(),
            reason: "no ownerReferences: a bare pod".to_string(),
        };
    };
    let or_unknown = |v: &str| if v.is_empty() { "?" } else { v }.to_string();
    let (kind, name) = (or_unknown(&owner.kind), or_unknown(&owner.name));
    let (kind, name) = (kind.as_str(), name.as_str());
    if kind == "ReplicaSet" {
        let labels = pod.metadata.labels.as_ref();
        if let Some(hash) = labels.and_then(|l| l.get("pod-template-hash")) {
            if let Some(deploy) = name.strip_suffix(&format!("-{hash}")) {
                return Workload {
                    kind: "Deployment".to_string(),
                    name: deploy.to_string(),
                    reason: format!(
                        "owner ReplicaSet {name}, whose name is the Deployment's plus the pod-template-hash {hash}"
                    ),
                };
            }
        }
    }
    Workload {
        kind: kind.to_string(),
        name: name.to_string(),
        reason: format!("owner {kind} {name} (ownerReferences)"),
    }
}

fn proxy_container(pod: &Pod) -> Option<(&Container, bool)> {
    objects::containers(pod).find(|(c, _)| c.name == PROXY_NAME)
}

/// The tag of an image reference (`repo/name:tag`, not a registry port), without a digest.
fn image_version(image: &str) -> Option<String> {
    let no_digest = image.split('@').next().unwrap_or(image);
    let last = no_digest.rsplit('/').next().unwrap_or(no_digest);
    last.split_once(':').map(|(_, t)| t.to_string())
}

/// The capture the pod's `remora-init` container sets up, parsed and validated by remora-init's
/// own flags (`CaptureConfig::summary`); for a pod injected in CNI mode (no `remora-init`, the
/// annotation `remora.dev/capture: cni`), the capture the node's plugin installs, from the same
/// mapping of the pod's annotations the plugin uses (`remora_init::pod`).
fn capture_of(pod: &Pod) -> Vec<String> {
    use remora_init::pod::{CaptureOptions, CAPTURE_BY_CNI, CAPTURE_MARK, DEFAULT_PROXY_UID};
    let (args, mut out) = match objects::containers(pod)
        .find(|(c, init)| *init && c.name == INIT_NAME)
    {
        Some((init, _)) => (init.args.clone().unwrap_or_default(), Vec::new()),
        None => {
            let ann = pod.metadata.annotations.clone().unwrap_or_default();
            if ann.get(CAPTURE_MARK).map(String::as_str) != Some(CAPTURE_BY_CNI) {
                return Vec::new();
            }
            let (opts, errors) = CaptureOptions::parse(&ann);
            if !errors.is_empty() {
                return vec![format!(
                    "CNI mode: the node's plugin refuses this pod: {}",
                    errors.join("; ")
                )];
            }
            let uid = proxy_container(pod)
                .and_then(|(c, _)| c.security_context.as_ref()?.run_as_user)
                .and_then(|u| u32::try_from(u).ok())
                .unwrap_or(DEFAULT_PROXY_UID);
            (
                opts.init_args(uid),
                vec![format!(
                    "by the node's CNI plugin remora-cni ({CAPTURE_MARK}: {CAPTURE_BY_CNI}), checked by the remora-validation container"
                )],
            )
        }
    };
    let parsed = remora_init::flags::Flags::try_parse_args_only(
        std::iter::once(INIT_NAME.to_string()).chain(args),
    )
    .map_err(|e| e.to_string())
    .and_then(|f| f.validate().map_err(|e| e.to_string()));
    match parsed {
        Ok(c) => out.extend(c.summary()),
        Err(e) => out.push(format!(
            "the {INIT_NAME} arguments do not parse: {}",
            e.lines().next().unwrap_or("")
        )),
    }
    out
}

fn injection_of(pod: &Pod, name: &str, ns: &str) -> Injection {
    match proxy_container(pod) {
        Some((c, init)) if check::has_proxy(pod) => {
            let image = c.image.clone();
            let version = image.as_deref().and_then(image_version);
            let how = if init {
                "as a native sidecar (an init container with restartPolicy Always)"
            } else {
                "as a regular container"
            };
            Injection {
                injected: true,
                proxy_image: image,
                proxy_version: version,
                capture: capture_of(pod),
                reason: format!("the pod has the {PROXY_NAME} container, {how}: its inbound and outbound TCP goes through the proxy"),
            }
        }
        _ => Injection {
            injected: false,
            proxy_image: None,
            proxy_version: None,
            capture: Vec::new(),
            reason: format!(
                "the pod has no {PROXY_NAME} container: its own traffic is not captured (clients' proxies still apply the rules below when they call it); `remora check-inject pod {name} -n {ns}` says why it was not injected"
            ),
        },
    }
}

fn list_meaning(v: &str, all: &str, none: &str, some: &str) -> String {
    match v.trim() {
        "*" => all.to_string(),
        "" => none.to_string(),
        x => some.replace("{}", x),
    }
}

fn annotation_meaning(key: &str, v: &str) -> Option<String> {
    let m = match key {
        ann::INJECT => match ann::parse_inject_value(v) {
            Some(true) => "asks for injection (the webhook's namespace and object selectors still decide)".to_string(),
            Some(false) => "opts the pod out of injection".to_string(),
            None => format!("invalid value {v:?}: neither true nor false, ignored by the injector"),
        },
        ann::STATUS => "written by the injector: the pod was injected (what it added is recorded here)".to_string(),
        ann::INTERCEPTION_MODE => format!("traffic is captured with iptables mode {v} (REDIRECT or TPROXY)"),
        ann::INCLUDE_OUTBOUND_IP_RANGES => list_meaning(
            v,
            "outbound traffic to every IP range goes through the proxy",
            "no outbound IP range is captured: outbound traffic bypasses the proxy (except includeOutboundPorts)",
            "only outbound traffic to {} goes through the proxy",
        ),
        ann::EXCLUDE_OUTBOUND_IP_RANGES => format!("outbound traffic to {v} bypasses the proxy"),
        ann::INCLUDE_INBOUND_PORTS => list_meaning(
            v,
            "inbound traffic to every port goes through the proxy",
            "no inbound port is captured: inbound traffic reaches the application directly",
            "only inbound traffic to ports {} goes through the proxy",
        ),
        ann::EXCLUDE_INBOUND_PORTS => format!("inbound traffic to ports {v} bypasses the proxy"),
        ann::INCLUDE_OUTBOUND_PORTS => format!("outbound traffic to ports {v} goes through the proxy whatever its destination IP"),
        ann::EXCLUDE_OUTBOUND_PORTS => format!("outbound traffic to ports {v} bypasses the proxy"),
        ann::EXCLUDE_INTERFACES => format!("traffic on interfaces {v} is not captured"),
        ann::KUBEVIRT_INTERFACES => format!("traffic from interfaces {v} is captured as outbound (KubeVirt)"),
        ann::NATIVE_SIDECAR => match ann::parse_inject_value(v) {
            Some(true) => "the proxy runs as a native sidecar (an init container with restartPolicy Always)".to_string(),
            Some(false) => "the proxy runs as a regular container, not a native sidecar".to_string(),
            None => format!("invalid value {v:?}: neither true nor false"),
        },
        ann::REWRITE_PROBES => match ann::parse_inject_value(v) {
            Some(false) => "the kubelet's HTTP probes are not rewritten: they reach the application through the proxy's capture".to_string(),
            _ => "the kubelet's HTTP probes are rewritten to the proxy's port 15020, which calls the application".to_string(),
        },
        ann::LOG_LEVEL => format!("the proxy logs at level {v}"),
        ann::PROXY_CPU | ann::PROXY_MEMORY | ann::PROXY_CPU_LIMIT | ann::PROXY_MEMORY_LIMIT => {
            format!("the proxy container's resources: {v}")
        }
        ann::PROXY_IMAGE => ann::PROXY_IMAGE_REFUSED.to_string(),
        ann::USER_VOLUME | ann::USER_VOLUME_MOUNT => "extra volumes for the proxy container".to_string(),
        ann::OVERRIDES => "written by the injector: the pod's own changes to the injected containers".to_string(),
        k if k.starts_with("traffic.sidecar.istio.io/") || k.starts_with("sidecar.istio.io/") => {
            let one: BTreeMap<String, String> = [(k.to_string(), v.to_string())].into();
            match ann::unsupported(&one).into_iter().next() {
                Some(u) => u.replacen(&format!("annotation {k} "), "", 1),
                None => "read by the injector when the pod was created".to_string(),
            }
        }
        _ => return None,
    };
    Some(m)
}

fn annotations_of(pod: &Pod) -> Vec<AnnotationNote> {
    objects::annotations(&pod.metadata)
        .into_iter()
        .filter_map(|(k, v)| {
            annotation_meaning(&k, &v).map(|meaning| AnnotationNote {
                key: k,
                value: v,
                meaning,
            })
        })
        .collect()
}

// ------------------------------------------------------------------ the rules

/// The rules as the proxies of namespace `ns` load them.
pub struct Rules {
    pub source: RulesSource,
    /// A client proxy's snapshot of the namespace (no workload-specific Sidecar).
    pub snapshot: Snapshot,
    /// Every decoded Sidecar (selection is per pod).
    pub sidecars: Vec<remora_model::rules::Sidecar>,
    /// Every decoded VirtualService (before visibility), to say why one is not applied.
    pub all_virtual_services: Vec<VirtualService>,
    /// Every decoded security policy (selection is per pod).
    pub peer_authentications: Vec<remora_model::security::PeerAuthentication>,
    pub authorization_policies: Vec<remora_model::security::AuthorizationPolicy>,
    pub request_authentications: Vec<remora_model::security::RequestAuthentication>,
    pub ctx: LoadContext,
}

fn plural(n: usize, w: &str) -> String {
    match (n, w.strip_suffix('y')) {
        (1, _) => format!("1 {w}"),
        (_, Some(stem)) => format!("{n} {stem}ies"),
        _ => format!("{n} {w}s"),
    }
}

fn no_dns(_: &str) -> Vec<IpAddr> {
    Vec::new()
}

/// Decodes the ConfigMap named `primary` among `cms` (the shared finder's result) with the
/// proxy's loader, in a mesh whose root namespace is `root_namespace`.
pub fn load_rules(
    cms: &[ConfigMap],
    ns: &str,
    primary: &str,
    cluster_domain: &str,
    root_namespace: &str,
) -> Rules {
    let key = format!("{ns}/{primary}");
    let cm = cms.iter().find(|c| {
        objects::name(&c.metadata) == Some(primary)
            && objects::namespace(&c.metadata).is_none_or(|n| n == ns)
    });
    let staged: Vec<String> = cms
        .iter()
        .filter(|c| objects::name(&c.metadata) != Some(primary))
        .map(|c| {
            format!(
                "{}/{}",
                objects::namespace(&c.metadata).unwrap_or(ns),
                objects::name(&c.metadata).unwrap_or("?")
            )
        })
        .collect();
    let ctx = LoadContext {
        namespace: ns.to_string(),
        cluster_domain: cluster_domain.to_string(),
        pod_labels: BTreeMap::new(),
        root_namespace: root_namespace.to_string(),
    };
    let mut errors = Vec::new();
    let files = match rules_files(cm) {
        Ok(f) => f,
        Err(e) => {
            errors.push(e);
            Vec::new()
        }
    };
    let inputs = Inputs {
        dir: key.clone().into(),
        files: files.clone(),
        skipped: Vec::new(),
        hash: String::new(),
    };
    let decoded = decode_inputs(&inputs, &ctx);
    errors.extend(decoded.errors.iter().map(|e| e.to_string()));
    errors.extend(
        policy_check::check(&files, &ctx)
            .iter()
            .map(|e| e.to_string()),
    );
    let sidecars = decoded.sidecars.clone();
    let all_virtual_services = decoded.virtual_services.clone();
    let peer_authentications = decoded.peer_authentications.clone();
    let authorization_policies = decoded.authorization_policies.clone();
    let request_authentications = decoded.request_authentications.clone();
    let (n_dr, n_se) = (
        decoded.destination_rules.len(),
        decoded.service_entries.len(),
    );
    let names: Vec<String> = files.iter().map(|(n, _)| n.clone()).collect();
    let snapshot = build_snapshot(
        decoded,
        &ctx,
        0,
        String::new(),
        format!("configmap:{key}"),
        names.clone(),
        &no_dns,
    );
    let note = match (cm.is_some(), errors.is_empty()) {
        (false, _) => format!("no rules ConfigMap {key}: no VirtualService, DestinationRule or Sidecar applies; traffic to each Service goes to all its endpoints (kubectl -n {ns} apply the rules as ConfigMap {primary})"),
        (true, true) => format!(
            "ConfigMap {key}: {}, {}, {}, {}, {}",
            plural(names.len(), "file"),
            plural(all_virtual_services.len(), "VirtualService"),
            plural(n_dr, "DestinationRule"),
            plural(n_se, "ServiceEntry"),
            plural(sidecars.len(), "Sidecar")
        ),
        (true, false) => format!(
            "ConfigMap {key} has {}: proxies reject the whole set and keep the rules they had (`remora analyze -n {ns}` lists them); described below as written",
            plural(errors.len(), "error")
        ),
    };
    Rules {
        source: RulesSource {
            config_map: key,
            found: cm.is_some(),
            files: names,
            errors,
            staged,
            note,
        },
        snapshot,
        sidecars,
        all_virtual_services,
        peer_authentications,
        authorization_policies,
        request_authentications,
        ctx,
    }
}

// ------------------------------------------------------------------ Services

fn port_view(
    p: &corev1::ServicePort,
    host: &str,
    cluster_ip: Option<IpAddr>,
    snap: &Snapshot,
) -> Option<PortView> {
    let port = u16::try_from(p.port).ok()?;
    let name = p.name.clone().filter(|n| !n.is_empty());
    let transport = p.protocol.clone().unwrap_or_else(|| "TCP".to_string());
    let target_port = match &p.target_port {
        Some(IntOrString::Int(n)) => n.to_string(),
        Some(IntOrString::String(s)) => s.clone(),
        None => port.to_string(),
    };
    let app_protocol = p.app_protocol.clone();
    // Istio: appProtocol, else the port name's prefix (the rules crate's ServiceEntry logic).
    let sp = ServicePort {
        number: port,
        protocol: app_protocol
            .as_deref()
            .and_then(remora_model::rules::app_protocol_name)
            .map(str::to_string),
        name: name.clone(),
        target_port: None,
    };
    let declared_by = match (&app_protocol, &name) {
        (Some(a), _) => format!("appProtocol {a:?}"),
        (None, Some(n)) => format!("port name {n:?}"),
        (None, None) => "an unnamed port".to_string(),
    };
    let declared = service_port_protocol(&sp).map(|p| protocol_name(p).to_string());
    let istio = match &declared {
        Some(d) => format!("Istio would treat it as {d} ({declared_by})"),
        None => format!("Istio would sniff it ({declared_by} declares no protocol)"),
    };
    if transport != "TCP" {
        return Some(PortView {
            port,
            name,
            transport: transport.clone(),
            target_port,
            app_protocol,
            declared,
            protocol: "not proxied".to_string(),
            reason: format!("{transport}: remora captures and proxies TCP only"),
        });
    }
    let dst = SocketAddr::new(
        cluster_ip.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
        port,
    );
    // As the proxy decides for a connection to the ClusterIP: a ServiceEntry port of the host
    // first, then the Service port itself (appProtocol, else the name; the proxy knows it from
    // its Kubernetes discovery), then Istio's never-sniffed ports; else it sniffs.
    let by_se = snap
        .best_service_entry(&[host.to_string()])
        .filter(|se| se.ports.iter().any(|sp| sp.number == port))
        .map(|se| se.meta.key());
    let (protocol, reason) = match (by_se, &declared, snap.port_protocol(dst, Some(host))) {
        (Some(se), _, Some(p)) => (
            protocol_name(p).to_string(),
            format!("remora: {}: ServiceEntry {se} declares it; {istio}", protocol_name(p)),
        ),
        (_, Some(d), _) => (
            d.clone(),
            format!("remora: {d}: declared by the Service's {declared_by} (for connections to the ClusterIP, known from the proxy's Kubernetes discovery), as in Istio"),
        ),
        (_, None, Some(p)) => {
            let why = if matches!(port, 25 | 53 | 3306 | 27017) {
                format!("port {port} is one Istio never sniffs (server-first protocol)")
            } else {
                "a ServiceEntry of the rules declares the port".to_string()
            };
            (protocol_name(p).to_string(), format!("remora: {}: {why}; {istio}", protocol_name(p)))
        }
        (_, None, None) => (
            "sniffed".to_string(),
            format!("remora sniffs each connection's first bytes (HTTP/1.1, h2c, else opaque TCP): {istio}"),
        ),
    };
    Some(PortView {
        port,
        name,
        transport,
        target_port,
        app_protocol,
        declared,
        protocol,
        reason,
    })
}

fn http_matches(ms: &[remora_model::rules::HttpMatch]) -> String {
    if ms.is_empty() || ms.iter().any(|m| m.is_catch_all()) {
        return "every request".to_string();
    }
    ms.iter()
        .map(|m| {
            let mut parts = Vec::new();
            if let Some(u) = &m.uri {
                parts.push(format!("uri {:#}", Match::from(u)));
            }
            if let Some(x) = &m.method {
                parts.push(format!("method {:#}", Match::from(x)));
            }
            if let Some(x) = &m.authority {
                parts.push(format!("authority {:#}", Match::from(x)));
            }
            if let Some(x) = &m.scheme {
                parts.push(format!("scheme {:#}", Match::from(x)));
            }
            for (k, x) in &m.headers {
                parts.push(format!("header {k} {:#}", Match::from(x)));
            }
            for (k, x) in &m.without_headers {
                parts.push(format!("without header {k} {:#}", Match::from(x)));
            }
            for (k, x) in &m.query_params {
                parts.push(format!("query {k} {:#}", Match::from(x)));
            }
            if let Some(p) = m.port {
                parts.push(format!("port {p}"));
            }
            if !m.source_labels.is_empty() {
                parts.push(format!("source labels {}", join_labels(&m.source_labels)));
            }
            if let Some(n) = &m.source_namespace {
                parts.push(format!("source namespace {n}"));
            }
            if !m.gateways.is_empty() {
                parts.push(format!("gateways {}", m.gateways.join(",")));
            }
            parts.join(" and ")
        })
        .collect::<Vec<_>>()
        .join(" or ")
}

fn l4_matches(ms: &[remora_model::rules::L4Match]) -> String {
    if ms.is_empty() {
        return "every connection".to_string();
    }
    ms.iter()
        .map(|m| {
            let mut parts = Vec::new();
            if !m.sni_hosts.is_empty() {
                parts.push(format!("SNI {}", m.sni_hosts.join(",")));
            }
            if let Some(p) = m.port {
                parts.push(format!("port {p}"));
            }
            if !m.destination_subnets.is_empty() {
                let nets: Vec<String> = m
                    .destination_subnets
                    .iter()
                    .map(|n| n.to_string())
                    .collect();
                parts.push(format!("destination {}", nets.join(",")));
            }
            if !m.source_labels.is_empty() {
                parts.push(format!("source labels {}", join_labels(&m.source_labels)));
            }
            if let Some(n) = &m.source_namespace {
                parts.push(format!("source namespace {n}"));
            }
            if parts.is_empty() {
                "every connection".to_string()
            } else {
                parts.join(" and ")
            }
        })
        .collect::<Vec<_>>()
        .join(" or ")
}

fn route_view(
    kind: &str,
    path: &str,
    name: Option<&String>,
    matches: String,
    dests: &[WeightedDestination],
    host: &str,
    pod_subsets: &[String],
) -> Option<RouteView> {
    if !dests.iter().any(|d| d.destination.host == host) {
        return None;
    }
    let total: u64 = dests
        .iter()
        .map(|d| u64::from(d.weight.unwrap_or(if dests.len() == 1 { 100 } else { 0 })))
        .sum();
    let mut views = Vec::new();
    let mut pct_pod = 0u32;
    let mut via: Vec<String> = Vec::new();
    for d in dests {
        let w = d.weight.unwrap_or(if dests.len() == 1 { 100 } else { 0 });
        let percent = (u64::from(w) * 100)
            .checked_div(total)
            .map_or(0, |p| u32::try_from(p).unwrap_or(100));
        let this_service = d.destination.host == host;
        let this_pod = this_service
            && d.destination
                .subset
                .as_ref()
                .is_none_or(|s| pod_subsets.contains(s));
        if this_pod {
            pct_pod += percent;
            via.push(match &d.destination.subset {
                Some(s) => format!("subset {s}"),
                None => "all of the Service's endpoints".to_string(),
            });
        }
        views.push(DestinationView {
            host: d.destination.host.clone(),
            subset: d.destination.subset.clone(),
            port: d.destination.port,
            weight: d.weight,
            percent,
            this_service,
            this_pod,
        });
    }
    let this_pod = if pct_pod > 0 {
        format!(
            "this pod receives {pct_pod}% of this route's traffic (via {})",
            via.join(", ")
        )
    } else {
        let others: Vec<String> = views
            .iter()
            .filter(|d| d.this_service)
            .filter_map(|d| d.subset.clone())
            .collect();
        if pod_subsets.is_empty() {
            format!(
                "this pod receives none of it: the route sends to subset {} and the pod is in no subset",
                others.join(", ")
            )
        } else {
            format!(
                "this pod receives none of it: the route sends to subset {}, the pod is in subset {}",
                others.join(", "),
                pod_subsets.join(", ")
            )
        }
    };
    Some(RouteView {
        kind: kind.to_string(),
        path: path.to_string(),
        name: name.cloned(),
        matches,
        destinations: views,
        this_pod_percent: pct_pod,
        this_pod,
    })
}

fn virtual_services_for(
    rules: &Rules,
    host: &str,
    pod_subsets: &[String],
) -> Vec<VirtualServiceView> {
    let snap = &rules.snapshot;
    let best_http = snap
        .best_http_virtual_service(&[host.to_string()])
        .map(|v| v.meta.key());
    let mut out = Vec::new();
    for vs in &rules.all_virtual_services {
        if !vs.hosts.iter().any(|h| match_score(h, host).is_some()) {
            continue;
        }
        let key = vs.meta.key();
        let visible = snap.virtual_services.iter().any(|v| v.meta == vs.meta);
        let (applies, reason) = if !visible {
            let why = snap
                .ignored
                .iter()
                .find(|i| i.kind == vs.meta.kind && i.name == key && i.file == vs.meta.file)
                .map(|i| i.reason.clone())
                .unwrap_or_else(|| "not applied".to_string());
            (
                false,
                format!(
                    "not applied by sidecars of namespace {}: {why}",
                    rules.ctx.namespace
                ),
            )
        } else if vs.http.is_empty() {
            (true, "applies (tcp/tls routes only)".to_string())
        } else if best_http.as_deref() == Some(key.as_str()) {
            (true, format!("applies to HTTP traffic for {host}"))
        } else {
            (
                false,
                format!(
                    "its http routes are shadowed: VirtualService {} is the one sidecars use for {host} (one per host: the most specific host, then the first)",
                    best_http.as_deref().unwrap_or("?")
                ),
            )
        };
        let mut routes = Vec::new();
        for (i, r) in vs.http.iter().enumerate() {
            let path = if r.path.is_empty() {
                format!("spec.http[{i}]")
            } else {
                r.path.clone()
            };
            routes.extend(route_view(
                "http",
                &path,
                r.name.as_ref(),
                http_matches(&r.matches),
                &r.route,
                host,
                pod_subsets,
            ));
        }
        for (kind, list) in [("tcp", &vs.tcp), ("tls", &vs.tls)] {
            for (i, r) in list.iter().enumerate() {
                let path = if r.path.is_empty() {
                    format!("spec.{kind}[{i}]")
                } else {
                    r.path.clone()
                };
                routes.extend(route_view(
                    kind,
                    &path,
                    None,
                    l4_matches(&r.matches),
                    &r.route,
                    host,
                    pod_subsets,
                ));
            }
        }
        out.push(VirtualServiceView {
            name: key,
            hosts: vs.hosts.clone(),
            applies,
            reason,
            routes,
        });
    }
    out
}

fn lb_text(raw: &Value, p: &LbPolicy) -> String {
    if raw.get("loadBalancer").is_some() {
        text::lb(p)
    } else {
        format!("{} (not set: Istio's default)", text::lb(p))
    }
}

fn pool_text(raw: &Value, p: &remora_model::policy::limits::PoolConfig) -> String {
    if raw.get("connectionPool").is_none() {
        return "no limits (not set)".to_string();
    }
    let mut parts = Vec::new();
    let lim = |n: u64| n != UNLIMITED;
    if lim(p.max_connections) {
        parts.push(format!("tcp.maxConnections {}", p.max_connections));
    }
    if raw.pointer("/connectionPool/tcp/connectTimeout").is_some() {
        parts.push(format!(
            "tcp.connectTimeout {}s",
            p.connect_timeout.as_secs_f64()
        ));
    }
    if lim(p.http1_max_pending_requests) {
        parts.push(format!(
            "http.http1MaxPendingRequests {}",
            p.http1_max_pending_requests
        ));
    }
    if lim(p.http2_max_requests) {
        parts.push(format!("http.http2MaxRequests {}", p.http2_max_requests));
    }
    if p.max_requests_per_connection > 0 {
        parts.push(format!(
            "http.maxRequestsPerConnection {}",
            p.max_requests_per_connection
        ));
    }
    if lim(p.max_retries) {
        parts.push(format!("http.maxRetries {}", p.max_retries));
    }
    if let Some(t) = p.idle_timeout {
        parts.push(format!("http.idleTimeout {}s", t.as_secs_f64()));
    }
    if parts.is_empty() {
        "set, without limits".to_string()
    } else {
        parts.join(", ")
    }
}

fn outlier_text(o: Option<&remora_model::policy::outlier::OutlierConfig>) -> String {
    let Some(o) = o else {
        return "off (not set)".to_string();
    };
    let mut parts = Vec::new();
    if let Some(n) = o.consecutive_5xx {
        parts.push(format!("eject after {n} consecutive 5xx"));
    }
    if let Some(n) = o.consecutive_gateway {
        parts.push(format!("after {n} consecutive gateway errors"));
    }
    parts.push(format!("every {}s", o.interval.as_secs_f64()));
    parts.push(format!(
        "for {}s and more",
        o.base_ejection_time.as_secs_f64()
    ));
    parts.push(format!(
        "at most {}% of the endpoints",
        o.max_ejection_percent
    ));
    parts.join(", ")
}

fn tls_text(raw: &Value, t: &traffic::TlsSettings) -> String {
    match t.mode {
        traffic::TlsKind::IstioMutual => "ISTIO_MUTUAL: mutual TLS between sidecars with the workload certificates (plain text only from a sidecar without a workload identity)".to_string(),
        traffic::TlsKind::Disable if raw.get("tls").is_none() => "not set: automatic mutual TLS to endpoints with a sidecar (security.istio.io/tlsMode=istio), plain text to others".to_string(),
        _ => t.summary(),
    }
}

fn destination_rule_for(
    snap: &Snapshot,
    host: &str,
    ports: &[PortView],
    pod_labels: &BTreeMap<String, String>,
) -> (Option<DestinationRuleView>, Vec<String>) {
    let mut notes = Vec::new();
    let Some(dr) = snap.destination_rule(host) else {
        notes.push(format!(
            "no DestinationRule for {host}: Istio's defaults (LEAST_REQUEST, no limits, no outlier detection, plain text)"
        ));
        return (None, notes);
    };
    for other in snap
        .destination_rules
        .iter()
        .filter(|d| d.meta != dr.meta && match_score(&d.host, host).is_some())
    {
        notes.push(format!(
            "DestinationRule {} (host {}) also matches but is not used: {} is more specific or comes first",
            other.meta.key(),
            other.host,
            dr.meta.key()
        ));
    }
    for i in snap.ignored.iter().filter(|i| i.kind == "DestinationRule") {
        if i.reason.contains(&dr.host) || i.reason.contains(&dr.meta.key()) {
            notes.push(format!("DestinationRule {}: {}", i.name, i.reason));
        }
    }
    (Some(dr_view(dr, host, ports, pod_labels)), notes)
}

fn dr_view(
    dr: &DestinationRule,
    host: &str,
    ports: &[PortView],
    pod_labels: &BTreeMap<String, String>,
) -> DestinationRuleView {
    let subsets: Vec<SubsetView> = dr
        .subsets
        .iter()
        .map(|s| SubsetView {
            name: s.name.clone(),
            labels: s.labels.clone(),
            this_pod: subset_of(&s.labels, pod_labels),
        })
        .collect();
    let pod_subsets: Vec<String> = subsets
        .iter()
        .filter(|s| s.this_pod)
        .map(|s| s.name.clone())
        .collect();
    let subset = pod_subsets.first().cloned();
    let mut policies: Vec<PolicyView> = Vec::new();
    let tcp_ports: Vec<u16> = ports
        .iter()
        .filter(|p| p.transport == "TCP")
        .map(|p| p.port)
        .collect();
    for port in tcp_ports {
        let raw = traffic::effective_raw(dr, subset.as_deref(), port);
        let view = match traffic::resolve(dr, subset.as_deref(), port) {
            Ok(t) => PolicyView {
                port,
                subset: subset.clone(),
                load_balancer: lb_text(&raw, &t.load_balancer),
                connection_pool: pool_text(&raw, &t.connection_pool),
                outlier_detection: outlier_text(t.outlier_detection.as_ref()),
                tls: tls_text(&raw, &t.tls_settings),
                error: None,
            },
            Err(e) => PolicyView {
                port,
                subset: subset.clone(),
                load_balancer: String::new(),
                connection_pool: String::new(),
                outlier_detection: String::new(),
                tls: String::new(),
                error: Some(e),
            },
        };
        policies.push(view);
    }
    let reason = if dr.host == host {
        format!("host {} names this Service", dr.host)
    } else {
        format!(
            "host {} covers {host} (the most specific DestinationRule)",
            dr.host
        )
    };
    DestinationRuleView {
        name: dr.meta.key(),
        host: dr.host.clone(),
        reason,
        traffic_policy: policies,
        subsets,
        pod_subsets,
    }
}

fn services_of(
    pod_labels: &BTreeMap<String, String>,
    services: &[Service],
    rules: &Rules,
) -> Vec<ServiceView> {
    let mut out = Vec::new();
    for svc in services {
        let spec = svc.spec.as_ref();
        let sel = spec.and_then(|s| s.selector.clone()).unwrap_or_default();
        if sel.is_empty() || !subset_of(&sel, pod_labels) {
            continue;
        }
        if spec.and_then(|s| s.type_.as_deref()) == Some("ExternalName") {
            continue;
        }
        let name = objects::name(&svc.metadata).unwrap_or("?").to_string();
        let ns = objects::namespace(&svc.metadata)
            .unwrap_or(&rules.ctx.namespace)
            .to_string();
        let host = format!("{name}.{ns}.svc.{}", rules.ctx.cluster_domain);
        let cluster_ip = spec
            .and_then(|s| s.cluster_ip.as_deref())
            .and_then(|ip| ip.parse::<IpAddr>().ok());
        let ports: Vec<PortView> = spec
            .and_then(|s| s.ports.as_ref())
            .map(|ps| {
                ps.iter()
                    .filter_map(|p| port_view(p, &host, cluster_ip, &rules.snapshot))
                    .collect()
            })
            .unwrap_or_default();
        let (dr, mut notes) = destination_rule_for(&rules.snapshot, &host, &ports, pod_labels);
        let pod_subsets = dr
            .as_ref()
            .map(|d| d.pod_subsets.clone())
            .unwrap_or_default();
        if let Some(d) = &dr {
            if d.pod_subsets.is_empty() && !d.subsets.is_empty() {
                notes.push(format!(
                    "the pod belongs to no subset of DestinationRule {}: routes to a subset never reach it",
                    d.name
                ));
            }
        }
        let virtual_services = virtual_services_for(rules, &host, &pod_subsets);
        if virtual_services.is_empty() {
            notes.push(format!(
                "no VirtualService for {host}: requests go to all its endpoints, this pod included"
            ));
        }
        out.push(ServiceView {
            name,
            host,
            reason: format!(
                "its selector {} matches the pod's labels",
                join_labels(&sel)
            ),
            ports,
            virtual_services,
            destination_rule: dr,
            notes,
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

fn sidecar_of(rules: &Rules, pod_labels: &BTreeMap<String, String>) -> SidecarView {
    let ctx = LoadContext {
        pod_labels: pod_labels.clone(),
        ..rules.ctx.clone()
    };
    let Some(sc) = select_sidecar(&rules.sidecars, &ctx) else {
        return SidecarView {
            name: None,
            reason: format!(
                "no Sidecar in namespace {} selects the pod and none is the namespace's default",
                ctx.namespace
            ),
            egress_hosts: vec!["*/* (every host: Istio's default)".to_string()],
            outbound_traffic_policy:
                "ALLOW_ANY (default): requests to hosts the mesh does not know pass through"
                    .to_string(),
        };
    };
    let reason = match &sc.workload_selector {
        Some(sel) if !sel.is_empty() => format!(
            "its workloadSelector {} matches the pod's labels",
            join_labels(sel)
        ),
        _ if sc.meta.namespace == ctx.namespace => format!(
            "no workloadSelector: the default of namespace {}",
            ctx.namespace
        ),
        _ => "no workloadSelector in the root namespace: the mesh-wide default".to_string(),
    };
    let mut egress = Vec::new();
    for l in &sc.egress {
        for h in &l.hosts {
            let e = format!("{}/{}", h.namespace, h.dns);
            egress.push(match l.port {
                Some(p) => format!("port {p}: {e}"),
                None => e,
            });
        }
    }
    if egress.is_empty() {
        egress.push("*/* (no egress: every host)".to_string());
    }
    let otp = if sc.registry_only {
        "REGISTRY_ONLY: requests to a host name outside the cluster without a ServiceEntry are answered 502".to_string()
    } else {
        "ALLOW_ANY (default): requests to hosts the mesh does not know pass through".to_string()
    };
    SidecarView {
        name: Some(sc.meta.key()),
        reason,
        egress_hosts: egress,
        outbound_traffic_policy: otp,
    }
}

/// The report, from the pod, the Services of its namespace and the rules (pure).
pub fn build(pod: &Pod, services: &[Service], rules: &Rules) -> Description {
    let name = objects::name(&pod.metadata).unwrap_or("?").to_string();
    let ns = objects::namespace(&pod.metadata)
        .unwrap_or(&rules.ctx.namespace)
        .to_string();
    let labels = objects::labels(&pod.metadata);
    let injection = injection_of(pod, &name, &ns);
    let services_v = services_of(&labels, services, rules);
    let mut notes = Vec::new();
    if services_v.is_empty() {
        notes.push(format!(
            "no Service in namespace {ns} selects this pod: no VirtualService or DestinationRule routes traffic to it; it is reached only by its IP"
        ));
    }
    let annotations = annotations_of(pod);
    let gateway = super::gateway_view::of(pod, &labels, &rules.snapshot);
    let mut security = super::authz::selection(
        &ns,
        &labels,
        &rules.ctx.root_namespace,
        &rules.peer_authentications,
        &rules.authorization_policies,
        &rules.request_authentications,
    );
    if gateway.is_some() {
        super::authz::at_gateway(&mut security);
    }
    if !annotations.is_empty() {
        notes.push("annotations take effect when the pod is created (injection); changing them on a running pod changes nothing until it is re-created".to_string());
    }
    Description {
        pod: name,
        namespace: ns,
        phase: objects::phase(pod).map(str::to_string),
        workload: workload_of(pod),
        labels: labels.clone(),
        injection,
        rules: rules.source.clone(),
        services: services_v,
        sidecar: sidecar_of(rules, &labels),
        security,
        gateway,
        gateway_tls: None,
        annotations,
        notes,
    }
}

// ------------------------------------------------------------------ text

/// The human-readable report.
pub fn render_text(d: &Description) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "Pod: {} (namespace {})", d.pod, d.namespace);
    if let Some(p) = &d.phase {
        let _ = writeln!(o, "  phase: {p}");
    }
    if d.workload.kind.is_empty() {
        let _ = writeln!(o, "  workload: none ({})", d.workload.reason);
    } else {
        let _ = writeln!(
            o,
            "  workload: {} {} ({})",
            d.workload.kind, d.workload.name, d.workload.reason
        );
    }
    let _ = writeln!(o, "  labels: {}", join_labels(&d.labels));
    if d.injection.injected {
        let image = d.injection.proxy_image.as_deref().unwrap_or("?");
        let version = d
            .injection
            .proxy_version
            .as_deref()
            .map(|v| format!(", version {v}"))
            .unwrap_or_default();
        let _ = writeln!(
            o,
            "  injected: yes, proxy image {image}{version}: {}",
            d.injection.reason
        );
        for c in &d.injection.capture {
            let _ = writeln!(o, "    capture: {c}");
        }
    } else {
        let _ = writeln!(o, "  injected: NO: {}", d.injection.reason);
    }
    let _ = writeln!(o, "  rules: {}", d.rules.note);
    for e in &d.rules.errors {
        let _ = writeln!(o, "    error: {e}");
    }
    if !d.rules.staged.is_empty() {
        let _ = writeln!(
            o,
            "    staged (labelled remora.dev/rules=true, not loaded by proxies): {}",
            d.rules.staged.join(", ")
        );
    }
    for svc in &d.services {
        let _ = writeln!(o, "Service {} ({}): {}", svc.name, svc.host, svc.reason);
        for p in &svc.ports {
            let name = p
                .name
                .as_deref()
                .map(|n| format!(" {n:?}"))
                .unwrap_or_default();
            let _ = writeln!(
                o,
                "  port {}/{}{name} -> targetPort {}: {}",
                p.port, p.transport, p.target_port, p.reason
            );
        }
        for vs in &svc.virtual_services {
            let _ = writeln!(o, "  VirtualService {}: {}", vs.name, vs.reason);
            for r in &vs.routes {
                let name = r
                    .name
                    .as_deref()
                    .map(|n| format!(" {n:?}"))
                    .unwrap_or_default();
                let _ = writeln!(o, "    {} route {}{name} ({}):", r.kind, r.path, r.matches);
                for dst in &r.destinations {
                    let subset = dst
                        .subset
                        .as_deref()
                        .map(|x| format!(" subset {x}"))
                        .unwrap_or_default();
                    let port = dst.port.map(|x| format!(" port {x}")).unwrap_or_default();
                    let weight = match dst.weight {
                        Some(w) => format!("weight {w}"),
                        None => "no weight".to_string(),
                    };
                    let mark = if dst.this_pod { "  <- this pod" } else { "" };
                    let _ = writeln!(
                        o,
                        "      -> {}{subset}{port}: {weight} ({}%){mark}",
                        dst.host, dst.percent
                    );
                }
                let _ = writeln!(o, "      {}", r.this_pod);
            }
        }
        if let Some(dr) = &svc.destination_rule {
            let _ = writeln!(o, "  DestinationRule {}: {}", dr.name, dr.reason);
            for p in &dr.traffic_policy {
                let at = match &p.subset {
                    Some(sub) => format!("port {}, subset {sub}", p.port),
                    None => format!("port {}", p.port),
                };
                match &p.error {
                    Some(e) => {
                        let _ = writeln!(o, "    traffic policy ({at}): invalid: {e}");
                    }
                    None => {
                        let _ = writeln!(o, "    traffic policy ({at}):");
                        let _ = writeln!(o, "      load balancer: {}", p.load_balancer);
                        let _ = writeln!(o, "      connection pool: {}", p.connection_pool);
                        let _ = writeln!(o, "      outlier detection: {}", p.outlier_detection);
                        let _ = writeln!(o, "      TLS: {}", p.tls);
                    }
                }
            }
            if dr.subsets.is_empty() {
                let _ = writeln!(o, "    subsets: none");
            }
            for sub in &dr.subsets {
                let mark = if sub.this_pod {
                    "  <- this pod (its labels include the subset's)"
                } else {
                    ""
                };
                let _ = writeln!(
                    o,
                    "    subset {} ({}){mark}",
                    sub.name,
                    join_labels(&sub.labels)
                );
            }
        }
        for n in &svc.notes {
            let _ = writeln!(o, "  note: {n}");
        }
    }
    match &d.sidecar.name {
        Some(n) => {
            let _ = writeln!(o, "Sidecar {n}: {}", d.sidecar.reason);
        }
        None => {
            let _ = writeln!(o, "Sidecar: none: {}", d.sidecar.reason);
        }
    }
    let _ = writeln!(o, "  egress hosts: {}", d.sidecar.egress_hosts.join(", "));
    let _ = writeln!(
        o,
        "  outboundTrafficPolicy: {}",
        d.sidecar.outbound_traffic_policy
    );
    o.push_str(&super::authz::render_selection(&d.security));
    if let Some(g) = &d.gateway {
        super::gateway_view::render(g, d.gateway_tls.as_ref(), &mut o);
    }
    if !d.annotations.is_empty() {
        let _ = writeln!(o, "Annotations:");
        for a in &d.annotations {
            if a.value.len() > 60 {
                let _ = writeln!(o, "  {}: {}", a.key, a.meaning);
            } else {
                let _ = writeln!(o, "  {}={:?}: {}", a.key, a.value, a.meaning);
            }
        }
    }
    for n in &d.notes {
        let _ = writeln!(o, "note: {n}");
    }
    o
}

// ------------------------------------------------------------------ the cluster

/// For a workload: its first pod as ranked by [`crate::target::rank_pods`] (running meshed, else
/// running, else any), said on stderr.
async fn workload_pod(cluster: &Cluster, ns: &str, kind: &str, name: &str) -> anyhow::Result<Pod> {
    let (pods, sel) = super::workload_pods(cluster, ns, kind, name).await?;
    let total = pods.len();
    let first = pods
        .into_iter()
        .next()
        .ok_or_else(|| anyhow!("{kind} {ns}/{name} has no pods (selector {sel})"))?;
    eprintln!(
        "remora: {kind} {ns}/{name}: describing pod {} (of {total})",
        objects::name(&first.metadata).unwrap_or("?")
    );
    Ok(first)
}

/// The first request's error; a failed connection says which API server could not be reached.
fn unreachable_or(e: GetError, url: &str) -> anyhow::Error {
    match e {
        GetError::Other { message, .. } if message.contains("Connect") => anyhow!(
            "cannot connect to the API server at {url} ({message}): is it running, and is --server or the kubeconfig right?"
        ),
        e => anyhow!(e),
    }
}

/// At most this many `credentialName` Secrets are looked up (one GET each) for a gateway pod.
const MAX_SECRET_LOOKUPS: usize = 32;

/// Where `describe` reaches a gateway pod's proxy: its admin port (through a port-forward) and
/// how long it waits for it.
#[derive(Clone, Copy, Debug)]
pub struct AdminAccess {
    pub port: u16,
    pub timeout: std::time::Duration,
}

/// A gateway pod's servers as it serves them: states and certificates from its own
/// `/config_dump` (through a port-forward to its admin port); when that cannot be read, whether
/// each `credentialName` Secret is in its namespace (looked up by name, the data never shown;
/// `None` when that fails too).
async fn gateway_tls(
    cluster: &Cluster,
    pod: &Pod,
    g: &mut remora_model::dump::GatewayDump,
    admin: AdminAccess,
) -> super::gateway_view::TlsSource {
    use super::gateway_view::{credential_names, take_live, TlsSource};
    let name = objects::name(&pod.metadata).unwrap_or("?");
    let ns = objects::namespace(&pod.metadata).unwrap_or("default");
    let phase = objects::phase(pod).unwrap_or("Unknown");
    let why_not = if phase != "Running" {
        format!("pod is {phase}, not Running")
    } else {
        let port = admin.port;
        let read = cluster
            .pod_config_dump(ns, name, port, admin.timeout)
            .await
            .map_err(|e| format!("cannot read its /config_dump through a port-forward to its admin port {port}: {e}"))
            .and_then(|v| {
                super::dump::read(&v, &format!("{ns}/{name}"), &format!("gateway {ns}/{name}"))
                    .map_err(|e| e.to_string())
            });
        match read {
            Ok(d) => match d.gateway {
                Some(live) => {
                    let missing = take_live(g, &live);
                    let mut note = format!(
                        "as the gateway serves them (its /config_dump, rules generation {})",
                        d.generation
                    );
                    if !missing.is_empty() {
                        let _ = write!(
                            note,
                            "; not served by it (its rules differ): {}",
                            missing.join(", ")
                        );
                    }
                    return TlsSource {
                        live: true,
                        note,
                        secrets: BTreeMap::new(),
                    };
                }
                None => "its proxy runs as a sidecar, not remora-proxy gateway".to_string(),
            },
            Err(e) => e,
        }
    };
    let mut secrets = BTreeMap::new();
    for c in credential_names(g).into_iter().take(MAX_SECRET_LOOKUPS) {
        // Forbidden or failing: not known, said per server; the report goes on.
        let found = cluster
            .get_opt(&paths::secret(ns, &c))
            .await
            .ok()
            .map(|s| s.is_some());
        secrets.insert(c, found);
    }
    TlsSource {
        live: false,
        note: format!("planned from the rules; states and certificates not known ({why_not})"),
        secrets,
    }
}

/// Reads the pod, the Services of its namespace and its rules, and builds the report; for a
/// gateway pod, its servers' states and certificates through `admin` ([`gateway_tls`]).
#[allow(clippy::too_many_arguments)]
pub async fn gather(
    cluster: &Cluster,
    target: &Target,
    default_ns: &str,
    mesh_ns: &str,
    config_map: Option<&str>,
    cluster_domain: &str,
    root_namespace: &str,
    admin: AdminAccess,
) -> anyhow::Result<Description> {
    let ns = target
        .namespace
        .clone()
        .unwrap_or_else(|| default_ns.to_string());
    let pod = match target.kind {
        "Pod" => cluster
            .get_opt_as::<Pod>(&paths::pod(&ns, &target.name))
            .await
            .map_err(|e| unreachable_or(e, &cluster.url))
            .with_context(|| format!("reading pod {ns}/{}", target.name))?
            .ok_or_else(|| anyhow!("pod {:?} not found in namespace {ns}", target.name))?,
        kind => workload_pod(cluster, &ns, kind, &target.name).await?,
    };
    // The ConfigMap the pod's proxy mounts; else the flag, else the injector config's.
    let mounted = check::has_proxy(&pod).then(|| rules_config_map_name(&pod, ""));
    let wanted = config_map
        .map(str::to_string)
        .or(mounted.filter(|m| !m.is_empty()));
    let (primary, cms) =
        super::rules_config_maps(cluster, Some(&ns), mesh_ns, wanted.as_deref()).await?;
    let services = cluster
        .list_as::<Service>(&paths::services(Some(&ns)))
        .await
        .context("listing Services")?;
    let rules = load_rules(&cms, &ns, &primary, cluster_domain, root_namespace);
    let mut d = build(&pod, &services, &rules);
    if let Some(g) = d.gateway.as_mut() {
        d.gateway_tls = Some(gateway_tls(cluster, &pod, g, admin).await);
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const RULES: &str = r#"apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  http:
  - match:
    - headers: {end-user: {exact: jason}}
    route:
    - destination: {host: reviews, subset: v2}
  - route:
    - destination: {host: reviews, subset: v1}
      weight: 75
    - destination: {host: reviews, subset: v3}
      weight: 25
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews}
spec:
  host: reviews
  trafficPolicy:
    loadBalancer: {simple: ROUND_ROBIN}
    connectionPool: {tcp: {maxConnections: 10}, http: {http1MaxPendingRequests: 5}}
    outlierDetection: {consecutive5xxErrors: 3, interval: 5s, baseEjectionTime: 1m}
  subsets:
  - name: v1
    labels: {version: v1}
    trafficPolicy:
      tls: {mode: ISTIO_MUTUAL}
  - name: v2
    labels: {version: v2}
  - name: v3
    labels: {version: v3}
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: default}
spec:
  egress:
  - hosts: ["./*", "istio-system/*"]
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: reviews}
spec:
  workloadSelector: {labels: {app: reviews}}
  egress:
  - hosts: ["./ratings.shop.svc.cluster.local"]
  outboundTrafficPolicy: {mode: REGISTRY_ONLY}
"#;

    fn typed<T: serde::de::DeserializeOwned>(v: Value) -> T {
        serde_json::from_value(v).unwrap()
    }

    fn cm(data: Value) -> ConfigMap {
        typed(json!({"apiVersion": "v1", "kind": "ConfigMap",
               "metadata": {"name": "remora-mesh-rules", "namespace": "shop"}, "data": data}))
    }

    fn pod(labels: Value, meshed: bool, annotations: Value) -> Pod {
        let mut containers = vec![json!({"name": "app", "image": "app:1"})];
        if meshed {
            containers.push(json!({"name": "remora-proxy", "image": "registry.local:5000/remora/remora-proxy:0.2.1"}));
        }
        typed(json!({"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": "reviews-v1-abc-x", "namespace": "shop", "labels": labels,
                            "annotations": annotations,
                            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "reviews-v1-abc", "uid": "u", "controller": true}]},
               "spec": {"containers": containers}, "status": {"phase": "Running"}}))
    }

    fn svc(name: &str, selector: Value, ports: Value) -> Service {
        typed(
            json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": "shop"},
               "spec": {"selector": selector, "clusterIP": "10.96.0.10", "ports": ports}}),
        )
    }

    #[test]
    fn a_cni_mode_pod_shows_the_plugins_capture() {
        let p = pod(
            json!({"app": "reviews"}),
            true,
            json!({"remora.dev/capture": "cni", "traffic.sidecar.istio.io/includeInboundPorts": "9080"}),
        );
        let c = capture_of(&p);
        assert!(
            c[0].starts_with("by the node's CNI plugin remora-cni"),
            "{c:?}"
        );
        assert!(
            c.iter().any(|l| l
                == "inbound: TCP ports 9080 are redirected to 15006; other ports are not captured"),
            "{c:?}"
        );
        // Without the mark and without remora-init: no capture to describe.
        let p = pod(json!({"app": "reviews"}), true, json!({}));
        assert!(capture_of(&p).is_empty());
        let p = pod(
            json!({"app": "reviews"}),
            true,
            json!({"remora.dev/capture": "cni", "traffic.sidecar.istio.io/includeInboundPorts": "x"}),
        );
        assert!(capture_of(&p)[0].starts_with("CNI mode: the node's plugin refuses this pod: annotation traffic.sidecar.istio.io/includeInboundPorts"));
    }

    #[test]
    fn routes_subsets_policy_and_sidecar() {
        let rules = load_rules(
            &[cm(json!({"r.yaml": RULES}))],
            "shop",
            "remora-mesh-rules",
            "cluster.local",
            "remora-system",
        );
        assert!(rules.source.errors.is_empty(), "{:?}", rules.source.errors);
        let p = pod(
            json!({"app": "reviews", "version": "v1", "pod-template-hash": "abc"}),
            true,
            json!({"traffic.sidecar.istio.io/excludeInboundPorts": "9090"}),
        );
        let services = [
            svc(
                "reviews",
                json!({"app": "reviews"}),
                json!([{"name": "http", "port": 9080, "targetPort": 9080, "protocol": "TCP"}, {"name": "db", "port": 3306, "protocol": "TCP"}]),
            ),
            svc("other", json!({"app": "other"}), json!([{"port": 80}])),
        ];
        let d = build(&p, &services, &rules);
        assert_eq!(d.workload.kind, "Deployment");
        assert_eq!(d.workload.name, "reviews-v1");
        assert_eq!(d.injection.proxy_version.as_deref(), Some("0.2.1"));
        assert_eq!(d.services.len(), 1);
        let s = &d.services[0];
        assert_eq!(s.ports[0].declared.as_deref(), Some("HTTP"));
        assert_eq!(s.ports[0].protocol, "HTTP");
        assert_eq!(s.ports[1].protocol, "TCP");
        let vs = &s.virtual_services[0];
        assert!(vs.applies, "{vs:?}");
        assert_eq!(vs.routes.len(), 2);
        assert_eq!(vs.routes[0].this_pod_percent, 0);
        assert!(
            vs.routes[0]
                .matches
                .contains("header end-user exact \"jason\""),
            "{}",
            vs.routes[0].matches
        );
        assert_eq!(vs.routes[1].this_pod_percent, 75);
        let dr = s.destination_rule.as_ref().unwrap();
        assert_eq!(dr.pod_subsets, ["v1"]);
        let pol = &dr.traffic_policy[0];
        assert_eq!(pol.load_balancer, "ROUND_ROBIN");
        assert!(
            pol.connection_pool.contains("tcp.maxConnections 10"),
            "{}",
            pol.connection_pool
        );
        assert!(
            pol.connection_pool.contains("http1MaxPendingRequests 5"),
            "{}",
            pol.connection_pool
        );
        assert!(
            pol.outlier_detection.contains("3 consecutive 5xx"),
            "{}",
            pol.outlier_detection
        );
        assert!(
            pol.tls
                .contains("ISTIO_MUTUAL: mutual TLS between sidecars"),
            "{}",
            pol.tls
        );
        // The workload's Sidecar beats the namespace default.
        assert_eq!(d.sidecar.name.as_deref(), Some("shop/reviews"));
        assert!(d
            .sidecar
            .outbound_traffic_policy
            .starts_with("REGISTRY_ONLY"));
        assert_eq!(d.annotations.len(), 1);
        assert_eq!(
            d.annotations[0].meaning,
            "inbound traffic to ports 9090 bypasses the proxy"
        );
        let text = render_text(&d);
        assert!(
            text.contains(
                "-> reviews.shop.svc.cluster.local subset v1: weight 75 (75%)  <- this pod"
            ),
            "{text}"
        );
    }

    #[test]
    fn subset_without_the_pod_and_no_rules() {
        let rules = load_rules(
            &[cm(json!({"r.yaml": RULES}))],
            "shop",
            "remora-mesh-rules",
            "cluster.local",
            "remora-system",
        );
        let p = pod(json!({"app": "reviews", "version": "v2"}), false, json!({}));
        let services = [svc(
            "reviews",
            json!({"app": "reviews"}),
            json!([{"name": "http", "port": 9080}]),
        )];
        let d = build(&p, &services, &rules);
        assert!(!d.injection.injected);
        assert!(d
            .injection
            .reason
            .contains("remora check-inject pod reviews-v1-abc-x -n shop"));
        let vs = &d.services[0].virtual_services[0];
        assert_eq!(vs.routes[0].this_pod_percent, 100);
        assert!(
            vs.routes[1].this_pod.contains("receives none of it"),
            "{}",
            vs.routes[1].this_pod
        );
        assert_eq!(d.sidecar.name.as_deref(), Some("shop/reviews"));

        let none = load_rules(
            &[],
            "shop",
            "remora-mesh-rules",
            "cluster.local",
            "remora-system",
        );
        assert!(!none.source.found);
        let d = build(&p, &services, &none);
        assert!(
            d.rules
                .note
                .starts_with("no rules ConfigMap shop/remora-mesh-rules"),
            "{}",
            d.rules.note
        );
        assert!(d.sidecar.name.is_none());
        assert!(d.services[0].destination_rule.is_none());
    }

    #[test]
    fn invalid_rules_are_reported() {
        let bad = RULES.replace("weight: 25", "weight: 35");
        let rules = load_rules(
            &[cm(json!({"r.yaml": bad}))],
            "shop",
            "remora-mesh-rules",
            "cluster.local",
            "remora-system",
        );
        // Weights not summing to 100 are a linter error, not a load error: the set loads.
        assert!(rules.source.errors.is_empty(), "{:?}", rules.source.errors);
        let broken = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: x}\nspec: {hosts: [x], http: [{route: [{destination: {host: x}, weight: \"100\"}]}]}\n";
        let rules = load_rules(
            &[cm(json!({"r.yaml": broken}))],
            "shop",
            "remora-mesh-rules",
            "cluster.local",
            "remora-system",
        );
        assert_eq!(rules.source.errors.len(), 1, "{:?}", rules.source.errors);
        assert!(
            rules.source.note.contains("proxies reject the whole set"),
            "{}",
            rules.source.note
        );
    }

    #[test]
    fn images() {
        assert_eq!(
            image_version("a.io:5000/x/y:1.2.3").as_deref(),
            Some("1.2.3")
        );
        assert_eq!(image_version("a.io:5000/x/y").as_deref(), None);
        assert_eq!(image_version("y:2@sha256:abc").as_deref(), Some("2"));
    }
}
