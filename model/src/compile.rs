//! The rules controller's pure half: which Istio objects of the cluster a namespace's
//! `remora-mesh-rules` ConfigMap holds, and its exact content.
//!
//! The controller (in the control plane) and `remora rules render` (offline) both call this, so
//! the two cannot disagree. Steps:
//!
//! 1. [`check`] each object once, alone, as the proxy's loader would decode it: an object the
//!    loader would reject is [`Invalid`] (it is left out of every ConfigMap, so one bad object
//!    never makes proxies reject the whole set and keep stale rules); a kind the sidecar does not
//!    apply is left out with its reason.
//! 2. [`render`] one namespace from the checked objects by Istio's visibility rules:
//!    - VirtualService, DestinationRule, ServiceEntry: where `exportTo` exports them (none given:
//!      every namespace, the mesh default), and, from other namespaces, only when one of the
//!      namespace's `Sidecar`s (or the root namespace's default Sidecar) has them in its egress
//!      hosts — a Sidecar without egress listeners admits everything;
//!    - PeerAuthentication, AuthorizationPolicy, RequestAuthentication: the namespace's own, and
//!      the root namespace's (mesh-wide) in every namespace;
//!    - Sidecar: the namespace's own, and the root namespace's selector-less default;
//!    - Gateway and remora's RateLimit: the namespace's own.
//!
//!    A namespace that runs a gateway ([`View::Gateway`]) sees as an Istio gateway does: the
//!    Gateways of every namespace (the gateway picks those whose `selector` matches its pod),
//!    what is exported to it, and no Sidecar scoping (Sidecars configure sidecars, not
//!    gateways). A namespace both meshed and running a gateway ([`View::Both`]) gets the
//!    sidecars' view plus every namespace's Gateways.
//!
//! Output is deterministic: one key per object, `NAMESPACE.kind.NAME.yaml`, sorted; each value
//! is a comment saying why the object is there, then the object with only what the proxy reads
//! (`apiVersion`, `kind`, `metadata` name, namespace and annotations, `spec`), keys sorted. So
//! unchanged inputs give byte-identical data and the controller writes nothing. A ConfigMap
//! whose data would exceed Kubernetes' 1 MiB is refused ([`TooLarge`]) naming its largest
//! objects. The rendered set is decoded again as a whole before it is returned, so the
//! controller never writes a set the proxy would reject.

use std::collections::BTreeMap;
use std::fmt;

use serde_json::{Map, Value};

use crate::kinds::{LoadContext, Sidecar, DEFAULT_ROOT_NAMESPACE};
use crate::rules::{exported_to, in_egress_scope, load};

/// The ConfigMap every namespace's proxies read.
pub const CONFIGMAP: &str = "remora-mesh-rules";
/// The label (and value) marking a ConfigMap as the controller's: one without it is the user's
/// and is never overwritten.
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "remora-rules-controller");
/// The namespace label (and value) saying a gateway runs there (`remora-proxy gateway`): the
/// rules controller writes that namespace's ConfigMap with a gateway's view ([`View`]).
pub const GATEWAY_LABEL: (&str, &str) = ("remora.dev/gateway", "enabled");
/// Kubernetes refuses a ConfigMap whose data (keys and values) exceeds 1 MiB.
pub const MAX_DATA_BYTES: usize = 1 << 20;
/// The longest ConfigMap key Kubernetes accepts.
const MAX_KEY: usize = 253;
/// Annotations never copied: the API server's own bookkeeping, as large as the object.
pub const DROPPED_ANNOTATIONS: &[&str] = &["kubectl.kubernetes.io/last-applied-configuration"];

/// An object's identity: kind, namespace, name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectRef {
    pub kind: String,
    pub namespace: String,
    pub name: String,
}

impl fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
    }
}

/// Where a checked object may be seen (see the module docs).
#[derive(Clone, Debug, PartialEq)]
enum Reach {
    Exported {
        export_to: Vec<String>,
        /// Its hosts, fully qualified, for the Sidecar egress scope.
        hosts: Vec<String>,
        /// A ServiceEntry's `workloadSelector.labels`.
        workload_selector: Option<BTreeMap<String, String>>,
    },
    /// A WorkloadEntry (its labels): seen where a ServiceEntry of its namespace that selects it
    /// is.
    WorkloadEntry(BTreeMap<String, String>),
    /// A Sidecar (decoded, for its egress hosts).
    Sidecar(Box<Sidecar>),
    /// Its namespace, and every namespace when in the root namespace.
    NamespaceOrRoot,
    /// Its namespace only.
    Namespace,
}

/// An object that passed [`check`]: its rendered document and where it may be seen.
#[derive(Clone, Debug, PartialEq)]
pub struct Checked {
    pub id: ObjectRef,
    /// The document written into the ConfigMap (without the comment line).
    pub document: String,
    /// What the loader warns about this object alone (accepted, applied as it says).
    pub warnings: Vec<String>,
    reach: Reach,
}

impl Checked {
    /// The decoded Sidecar, when this object is one (the control plane's discovery scopes its
    /// subscribers by it, with [`crate::rules::select_sidecar`] and
    /// [`crate::rules::in_egress_scope`], as this module scopes the ConfigMaps).
    pub fn sidecar(&self) -> Option<&Sidecar> {
        match &self.reach {
            Reach::Sidecar(sc) => Some(sc),
            _ => None,
        }
    }

    /// Can this object be seen only in its own namespace (so a change of it changes only that
    /// namespace's ConfigMap)? Sidecars scope what other namespaces see only in their own
    /// namespace or, in the root namespace, everywhere; a Gateway is seen by every namespace
    /// that runs a gateway too.
    pub fn only_in_own_namespace(&self, settings: &Settings) -> bool {
        let in_root = self.id.namespace == settings.root_namespace;
        match &self.reach {
            Reach::Namespace => self.id.kind != "Gateway",
            Reach::NamespaceOrRoot | Reach::Sidecar(_) => !in_root,
            Reach::Exported { export_to, .. } => {
                !export_to.is_empty() && export_to.iter().all(|e| e == "." || e == "~")
            }
            Reach::WorkloadEntry(_) => false,
        }
    }
}

/// Why an object is left out of every ConfigMap.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Invalid {
    /// `None` when the object has no usable kind, namespace or name.
    pub id: Option<ObjectRef>,
    pub reason: String,
    /// An unsupported kind (ignored, not an error in the user's object).
    pub unsupported: bool,
}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.id {
            Some(id) => write!(f, "{id}: {}", self.reason),
            None => write!(f, "{}", self.reason),
        }
    }
}

fn str_at<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str).filter(|s| !s.is_empty())
}

/// The object as the ConfigMap carries it: `apiVersion`, `kind`, `metadata` (name, namespace,
/// annotations but the dropped ones), `spec`.
fn trimmed(v: &Value, id: &ObjectRef, api_version: &str) -> Value {
    let mut md = Map::new();
    md.insert("name".into(), Value::String(id.name.clone()));
    md.insert("namespace".into(), Value::String(id.namespace.clone()));
    if let Some(Value::Object(ann)) = v.pointer("/metadata/annotations") {
        let kept: Map<String, Value> = ann
            .iter()
            .filter(|(k, _)| !DROPPED_ANNOTATIONS.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if !kept.is_empty() {
            md.insert("annotations".into(), Value::Object(kept));
        }
    }
    let mut out = Map::new();
    out.insert("apiVersion".into(), Value::String(api_version.to_string()));
    out.insert("kind".into(), Value::String(id.kind.clone()));
    out.insert("metadata".into(), Value::Object(md));
    if let Some(spec) = v.get("spec") {
        out.insert("spec".into(), spec.clone());
    }
    Value::Object(out)
}

fn ctx_for(namespace: &str, cluster_domain: &str, root_namespace: &str) -> LoadContext {
    LoadContext {
        namespace: namespace.to_string(),
        cluster_domain: cluster_domain.to_string(),
        pod_labels: BTreeMap::new(),
        root_namespace: root_namespace.to_string(),
    }
}

fn inputs_of(files: Vec<(String, Vec<u8>)>) -> load::Inputs {
    load::Inputs {
        dir: "controller".into(),
        files,
        skipped: Vec::new(),
        hash: String::new(),
    }
}

/// Check one cluster object (as the API returns it) alone, as the proxy's loader decodes it.
/// (Whether an object is valid does not depend on the root namespace; where it is seen does,
/// and [`render`] takes that from its [`Settings`].)
pub fn check(v: &Value, cluster_domain: &str) -> Result<Checked, Invalid> {
    let invalid = |id: Option<ObjectRef>, reason: String| Invalid {
        id,
        reason,
        unsupported: false,
    };
    let (Some(api_version), Some(kind)) = (str_at(v, "apiVersion"), str_at(v, "kind")) else {
        return Err(invalid(None, "apiVersion or kind is missing".into()));
    };
    let md = v.get("metadata").unwrap_or(&Value::Null);
    let (Some(namespace), Some(name)) = (str_at(md, "namespace"), str_at(md, "name")) else {
        return Err(invalid(
            None,
            format!("{kind}: metadata.namespace or metadata.name is missing"),
        ));
    };
    let id = ObjectRef {
        kind: kind.to_string(),
        namespace: namespace.to_string(),
        name: name.to_string(),
    };
    let group = api_version.split_once('/').map_or("", |(g, _)| g);
    let known = matches!(
        (group, kind),
        ("networking.istio.io", "VirtualService")
            | ("networking.istio.io", "DestinationRule")
            | ("networking.istio.io", "ServiceEntry")
            | ("networking.istio.io", "WorkloadEntry")
            | ("networking.istio.io", "Sidecar")
            | ("networking.istio.io", "Gateway")
            | ("security.istio.io", "PeerAuthentication")
            | ("security.istio.io", "AuthorizationPolicy")
            | ("security.istio.io", "RequestAuthentication")
            | ("telemetry.istio.io", "Telemetry")
            | ("remora.dev", "RateLimit")
    );
    if !known {
        return Err(Invalid {
            id: Some(id),
            reason: format!("{api_version} {kind} is not applied by sidecars; left out"),
            unsupported: true,
        });
    }
    let object = trimmed(v, &id, api_version);
    let document = match serde_yaml_ng::to_string(&object) {
        Ok(d) => d,
        Err(e) => return Err(invalid(Some(id), format!("cannot be written as YAML: {e}"))),
    };
    let ctx = ctx_for(namespace, cluster_domain, DEFAULT_ROOT_NAMESPACE);
    let file = key_for(&id);
    let inputs = inputs_of(vec![(file.clone(), document.clone().into_bytes())]);
    let decoded = load::decode_inputs(&inputs, &ctx);
    if let Some(e) = decoded.errors.first() {
        let field = if e.field.is_empty() {
            String::new()
        } else {
            format!("{}: ", e.field)
        };
        return Err(invalid(Some(id), format!("{field}{}", e.reason)));
    }
    if let Err(errors) = crate::policy::decode::rate_limits(&inputs.files, &ctx) {
        let reason = errors
            .first()
            .map(|e| format!("{}: {}", e.field, e.reason))
            .unwrap_or_default();
        return Err(invalid(Some(id), reason));
    }
    let warnings = decoded
        .unknown_fields
        .iter()
        .map(|w| format!("{}: {}", w.field, w.reason))
        .collect();
    let reach = match kind {
        "VirtualService" => {
            let vs = decoded.virtual_services.into_iter().next();
            let (export_to, hosts) = vs.map(|v| (v.export_to, v.hosts)).unwrap_or_default();
            Reach::Exported {
                export_to,
                hosts,
                workload_selector: None,
            }
        }
        "DestinationRule" => match decoded.destination_rules.into_iter().next() {
            // Istio: a workloadSelector selects pods of the rule's own namespace only, whatever
            // its exportTo.
            Some(d) if d.workload_selector.as_ref().is_some_and(|s| !s.is_empty()) => {
                Reach::Namespace
            }
            dr => {
                let (export_to, hosts) =
                    dr.map(|d| (d.export_to, vec![d.host])).unwrap_or_default();
                Reach::Exported {
                    export_to,
                    hosts,
                    workload_selector: None,
                }
            }
        },
        "ServiceEntry" => {
            let se = decoded.service_entries.into_iter().next();
            let (export_to, hosts, workload_selector) = se
                .map(|s| (s.export_to, s.hosts, s.workload_selector))
                .unwrap_or_default();
            Reach::Exported {
                export_to,
                hosts,
                workload_selector,
            }
        }
        "WorkloadEntry" => {
            let we = decoded.workload_entries.into_iter().next();
            Reach::WorkloadEntry(we.map(|w| w.entry.labels).unwrap_or_default())
        }
        "Sidecar" => match decoded.sidecars.into_iter().next() {
            Some(sc) => Reach::Sidecar(Box::new(sc)),
            None => return Err(invalid(Some(id), "not decoded as a Sidecar".into())),
        },
        "PeerAuthentication" | "AuthorizationPolicy" | "RequestAuthentication" | "Telemetry" => {
            Reach::NamespaceOrRoot
        }
        _ => Reach::Namespace,
    };
    Ok(Checked {
        id,
        document,
        warnings,
        reach,
    })
}

/// The ConfigMap key of an object: `NAMESPACE.kind.NAME.yaml` (a hash replaces the name when
/// that would pass Kubernetes' 253 characters).
pub fn key_for(id: &ObjectRef) -> String {
    let key = format!(
        "{}.{}.{}.yaml",
        id.namespace,
        id.kind.to_ascii_lowercase(),
        id.name
    );
    if key.len() <= MAX_KEY {
        return key;
    }
    let digest = ring::digest::digest(&ring::digest::SHA256, id.name.as_bytes());
    let hex: String = digest.as_ref()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!(
        "{}.{}.{hex}.yaml",
        id.namespace,
        id.kind.to_ascii_lowercase()
    )
}

/// Settings of a render.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Mesh-wide objects live here (Istio's root namespace).
    pub root_namespace: String,
    pub cluster_domain: String,
    pub max_bytes: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            root_namespace: DEFAULT_ROOT_NAMESPACE.to_string(),
            cluster_domain: "cluster.local".to_string(),
            max_bytes: MAX_DATA_BYTES,
        }
    }
}

/// One object in a rendered ConfigMap.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Included {
    pub id: ObjectRef,
    pub key: String,
    pub why: String,
    /// Bytes of its key and value.
    pub bytes: usize,
}

/// A namespace's rendered ConfigMap.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rendered {
    pub namespace: String,
    /// Key → value, sorted.
    pub data: BTreeMap<String, String>,
    pub included: Vec<Included>,
    /// Objects another namespace's view could hold that this one does not, and why (only those
    /// left out by `exportTo` or a Sidecar's egress hosts; other namespaces' private kinds are
    /// not listed).
    pub excluded: Vec<(ObjectRef, String)>,
    /// Total bytes of keys and values.
    pub bytes: usize,
}

/// A ConfigMap that would pass the size limit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TooLarge {
    pub namespace: String,
    pub bytes: usize,
    pub limit: usize,
    /// The largest objects, largest first (at most five).
    pub largest: Vec<(ObjectRef, usize)>,
}

impl fmt::Display for TooLarge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let largest: Vec<String> = self
            .largest
            .iter()
            .map(|(id, b)| format!("{id} ({b} bytes)"))
            .collect();
        write!(
            f,
            "the rules for namespace {} are {} bytes, more than the {} bytes a ConfigMap holds; not written (largest: {})",
            self.namespace,
            self.bytes,
            self.limit,
            largest.join(", ")
        )
    }
}

/// Why a render produced no ConfigMap.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RenderError {
    TooLarge(TooLarge),
    /// The objects, each valid alone, are rejected together (the proxy would keep stale rules).
    Rejected {
        namespace: String,
        reason: String,
    },
}

impl fmt::Display for RenderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RenderError::TooLarge(t) => t.fmt(f),
            RenderError::Rejected { namespace, reason } => write!(
                f,
                "the rules for namespace {namespace} would be rejected by its proxies: {reason}; not written"
            ),
        }
    }
}

/// The Sidecars that scope what `namespace` sees: every Sidecar one of its pods may get
/// (the proxy picks one by its pod's labels, `rules::select_sidecar`). Those of the namespace,
/// and, unless one of them has no `workloadSelector` (the namespace's default), what a pod none
/// of them selects gets: the root namespace's default Sidecar, or none. Empty: some pod may
/// have no Sidecar, so nothing is scoped out.
fn scoping_sidecars(objects: &[&Checked], namespace: &str, root: &str) -> Vec<Sidecar> {
    let sidecars = |f: &dyn Fn(&Sidecar) -> bool| -> Vec<&Sidecar> {
        objects
            .iter()
            .filter_map(|o| match &o.reach {
                Reach::Sidecar(sc) if f(sc) => Some(sc.as_ref()),
                _ => None,
            })
            .collect()
    };
    let no_selector = |sc: &Sidecar| sc.workload_selector.as_ref().is_none_or(|s| s.is_empty());
    let mut scope = sidecars(&|sc| sc.meta.namespace == namespace);
    if !scope.iter().any(|sc| no_selector(sc)) {
        let fallback = sidecars(&|sc| sc.meta.namespace == root && no_selector(sc));
        if fallback.is_empty() {
            return Vec::new();
        }
        scope.extend(fallback);
    }
    // As they apply to this namespace's pods (`.` is their namespace).
    scope
        .into_iter()
        .map(|sc| sc.for_namespace(namespace))
        .collect()
}

/// Whose rules a namespace's ConfigMap carries (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum View {
    /// Its sidecars' (a meshed namespace).
    Sidecars,
    /// A gateway's (a namespace that runs one and is not meshed).
    Gateway,
    /// Both (a meshed namespace that runs a gateway too).
    Both,
}

/// Why `o` is in `namespace`'s ConfigMap, or `Err(why not)` when it is left out for a reason
/// worth telling, `Err("")` when it simply belongs elsewhere.
fn reason(
    o: &Checked,
    namespace: &str,
    root: &str,
    sidecars: &[Sidecar],
    view: View,
) -> Result<String, String> {
    let own = o.id.namespace == namespace;
    match &o.reach {
        Reach::Namespace if own => Ok("in this namespace".into()),
        Reach::Namespace if o.id.kind == "Gateway" && view != View::Sidecars => Ok(format!(
            "from namespace {}: {namespace} runs a gateway, which sees every namespace's Gateways",
            o.id.namespace
        )),
        Reach::Namespace => Err(String::new()),
        Reach::NamespaceOrRoot if own => Ok("in this namespace".into()),
        Reach::NamespaceOrRoot if o.id.namespace == root => {
            Ok(format!("mesh-wide: in the root namespace {root}"))
        }
        Reach::NamespaceOrRoot => Err(String::new()),
        // Sidecars configure sidecars, not gateways.
        Reach::Sidecar(_) if view == View::Gateway => Err(String::new()),
        Reach::Sidecar(_) if own => Ok("in this namespace".into()),
        Reach::Sidecar(sc)
            if o.id.namespace == root
                && sc.workload_selector.as_ref().is_none_or(|s| s.is_empty()) =>
        {
            Ok(format!(
                "the mesh's default Sidecar: in the root namespace {root}, no workloadSelector"
            ))
        }
        Reach::Sidecar(_) => Err(String::new()),
        // Decided after the ServiceEntries ([`select_view`]).
        Reach::WorkloadEntry(_) => Err(String::new()),
        Reach::Exported {
            export_to, hosts, ..
        } => {
            if !exported_to(export_to, &o.id.namespace, namespace) {
                return Err(format!(
                    "not exported to {namespace} (exportTo: {})",
                    export_to.join(", ")
                ));
            }
            if !own
                && !sidecars.is_empty()
                && !sidecars
                    .iter()
                    .any(|sc| in_egress_scope(sc, &o.id.namespace, hosts))
            {
                return Err(format!(
                    "outside the egress hosts of every Sidecar that applies in {namespace}"
                ));
            }
            let export = if export_to.is_empty() {
                "no exportTo: exported to every namespace".to_string()
            } else {
                format!("exportTo: {}", export_to.join(", "))
            };
            Ok(if own {
                format!("in this namespace ({export})")
            } else {
                format!("from namespace {} ({export})", o.id.namespace)
            })
        }
    }
}

/// Render `namespace`'s ConfigMap (its sidecars' view) from checked objects (any order), and
/// [`verify`] it.
pub fn render(
    objects: &[Checked],
    namespace: &str,
    settings: &Settings,
) -> Result<Rendered, RenderError> {
    render_view(objects, namespace, settings, View::Sidecars)
}

/// [`render`] for a [`View`].
pub fn render_view(
    objects: &[Checked],
    namespace: &str,
    settings: &Settings,
    view: View,
) -> Result<Rendered, RenderError> {
    let refs: Vec<&Checked> = objects.iter().collect();
    let r = select_view(&refs, namespace, settings, view)?;
    verify(&r, settings)?;
    Ok(r)
}

/// [`render`] without [`verify`] (cheap: no decoding), for a caller that compares the result
/// with what is written and verifies only what it writes.
pub fn select(
    objects: &[&Checked],
    namespace: &str,
    settings: &Settings,
) -> Result<Rendered, RenderError> {
    select_view(objects, namespace, settings, View::Sidecars)
}

/// [`select`] for a [`View`].
pub fn select_view(
    objects: &[&Checked],
    namespace: &str,
    settings: &Settings,
    view: View,
) -> Result<Rendered, RenderError> {
    let root = settings.root_namespace.as_str();
    let sidecars = match view {
        View::Gateway => Vec::new(),
        View::Sidecars | View::Both => scoping_sidecars(objects, namespace, root),
    };
    let mut data = BTreeMap::new();
    let mut included = Vec::new();
    let mut excluded = Vec::new();
    let mut bytes = 0usize;
    for o in objects {
        match reason(o, namespace, root, &sidecars, view) {
            Ok(why) => {
                let key = key_for(&o.id);
                let value = format!("# {}: {why}\n{}", o.id, o.document);
                let size = key.len() + value.len();
                bytes += size;
                included.push(Included {
                    id: o.id.clone(),
                    key: key.clone(),
                    why,
                    bytes: size,
                });
                data.insert(key, value);
            }
            Err(why) if !why.is_empty() => excluded.push((o.id.clone(), why)),
            Err(_) => {}
        }
    }
    // WorkloadEntries go where a ServiceEntry of their namespace that selects them went.
    for o in objects {
        let Reach::WorkloadEntry(labels) = &o.reach else {
            continue;
        };
        let selector = objects.iter().find(|se| {
            se.id.namespace == o.id.namespace
                && included.iter().any(|i: &Included| i.id == se.id)
                && matches!(&se.reach, Reach::Exported { workload_selector: Some(sel), .. }
                    if sel.iter().all(|(k, v)| labels.get(k) == Some(v)))
        });
        match selector {
            Some(se) => {
                let why = format!(
                    "an endpoint of ServiceEntry {}/{} (its workloadSelector selects it)",
                    se.id.namespace, se.id.name
                );
                let key = key_for(&o.id);
                let value = format!("# {}: {why}\n{}", o.id, o.document);
                let size = key.len() + value.len();
                bytes += size;
                included.push(Included {
                    id: o.id.clone(),
                    key: key.clone(),
                    why,
                    bytes: size,
                });
                data.insert(key, value);
            }
            None if o.id.namespace == namespace => excluded.push((
                o.id.clone(),
                format!("no ServiceEntry seen in {namespace} selects it (workloadSelector)"),
            )),
            None => {}
        }
    }
    included.sort_by(|a, b| a.key.cmp(&b.key));
    excluded.sort();
    if bytes > settings.max_bytes {
        let mut largest: Vec<(ObjectRef, usize)> =
            included.iter().map(|i| (i.id.clone(), i.bytes)).collect();
        largest.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        largest.truncate(5);
        return Err(RenderError::TooLarge(TooLarge {
            namespace: namespace.to_string(),
            bytes,
            limit: settings.max_bytes,
            largest,
        }));
    }
    Ok(Rendered {
        namespace: namespace.to_string(),
        data,
        included,
        excluded,
        bytes,
    })
}

/// Decode a rendered set as a whole, as its proxies will (two objects, each valid alone, could
/// clash only together): a set they would reject is refused.
pub fn verify(r: &Rendered, settings: &Settings) -> Result<(), RenderError> {
    let namespace = r.namespace.as_str();
    let ctx = ctx_for(
        namespace,
        &settings.cluster_domain,
        &settings.root_namespace,
    );
    let inputs = inputs_of(
        r.data
            .iter()
            .map(|(k, v)| (k.clone(), v.clone().into_bytes()))
            .collect(),
    );
    let decoded = load::decode_inputs(&inputs, &ctx);
    let rate_limits = crate::policy::decode::rate_limits(&inputs.files, &ctx);
    let first = decoded
        .errors
        .first()
        .cloned()
        .or_else(|| rate_limits.err().and_then(|e| e.into_iter().next()));
    if let Some(e) = first {
        return Err(RenderError::Rejected {
            namespace: namespace.to_string(),
            reason: e.to_string(),
        });
    }
    Ok(())
}

impl Rendered {
    /// The ConfigMap object (labelled as the controller's).
    pub fn configmap(&self) -> Value {
        serde_json::json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {
                "name": CONFIGMAP,
                "namespace": self.namespace,
                "labels": {MANAGED_BY.0: MANAGED_BY.1, "app.kubernetes.io/part-of": "remora"},
            },
            "data": self.data,
        })
    }
}

/// Is this ConfigMap (its `metadata.labels`) the controller's?
pub fn is_managed(labels: Option<&BTreeMap<String, String>>) -> bool {
    labels.and_then(|l| l.get(MANAGED_BY.0)).map(String::as_str) == Some(MANAGED_BY.1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(kind: &str, ns: &str, name: &str, spec: Value) -> Value {
        let group = match kind {
            "PeerAuthentication" | "AuthorizationPolicy" | "RequestAuthentication" => {
                "security.istio.io/v1"
            }
            "Telemetry" => "telemetry.istio.io/v1",
            "RateLimit" => "remora.dev/v1alpha1",
            _ => "networking.istio.io/v1",
        };
        json!({"apiVersion": group, "kind": kind,
               "metadata": {"name": name, "namespace": ns, "resourceVersion": "7",
                            "uid": "u", "annotations": {
                                "kubectl.kubernetes.io/last-applied-configuration": "{...}",
                                "note": "kept"}},
               "spec": spec, "status": {"x": 1}})
    }

    fn checked(objs: &[Value]) -> Vec<Checked> {
        objs.iter()
            .map(|o| check(o, "cluster.local").expect("valid object"))
            .collect()
    }

    fn keys(r: &Rendered) -> Vec<&str> {
        r.data.keys().map(String::as_str).collect()
    }

    fn vs(ns: &str, name: &str, host: &str, export: Option<Value>) -> Value {
        let mut spec =
            json!({"hosts": [host], "http": [{"route": [{"destination": {"host": host}}]}]});
        if let Some(e) = export {
            spec["exportTo"] = e;
        }
        obj("VirtualService", ns, name, spec)
    }

    fn dr(ns: &str, name: &str, host: &str, export: Option<Value>) -> Value {
        let mut spec =
            json!({"host": host, "subsets": [{"name": "v1", "labels": {"version": "v1"}}]});
        if let Some(e) = export {
            spec["exportTo"] = e;
        }
        obj("DestinationRule", ns, name, spec)
    }

    /// The mesh's default Sidecar with `./*` scopes each namespace to itself: another
    /// namespace's and the root namespace's exported objects are left out of a namespace's
    /// ConfigMap, unless an egress host names their namespace.
    #[test]
    fn dot_in_the_mesh_default_sidecar_scopes_each_namespace_to_itself() {
        let objs = |hosts: Value| {
            checked(&[
                obj(
                    "Sidecar",
                    "remora-system",
                    "default",
                    json!({"egress": [{"hosts": hosts}]}),
                ),
                dr("remora-system", "mesh-wide", "*.svc.cluster.local", None),
                dr(
                    "bookinfo",
                    "reviews",
                    "reviews.bookinfo.svc.cluster.local",
                    None,
                ),
                dr("shop", "cart", "cart.shop.svc.cluster.local", None),
            ])
        };
        let s = Settings::default();
        let r = render(&objs(json!(["./*"])), "shop", &s).expect("renders");
        assert_eq!(
            keys(&r),
            [
                "remora-system.sidecar.default.yaml",
                "shop.destinationrule.cart.yaml"
            ]
        );
        let r = render(&objs(json!(["./*", "bookinfo/*"])), "shop", &s).expect("renders");
        assert!(
            keys(&r).contains(&"bookinfo.destinationrule.reviews.yaml"),
            "{:?}",
            keys(&r)
        );
        assert!(!keys(&r).contains(&"remora-system.destinationrule.mesh-wide.yaml"));
    }

    #[test]
    fn export_to_table() {
        let objs = checked(&[
            dr("bookinfo", "all", "reviews", None),
            dr("bookinfo", "star", "ratings", Some(json!(["*"]))),
            dr("bookinfo", "dot", "details", Some(json!(["."]))),
            dr("bookinfo", "none", "productpage", Some(json!(["~"]))),
            dr("bookinfo", "named", "mongo", Some(json!(["frontend"]))),
        ]);
        let s = Settings::default();
        let cases = [
            ("bookinfo", vec!["all", "dot", "star"]),
            ("frontend", vec!["all", "named", "star"]),
            ("other", vec!["all", "star"]),
        ];
        for (ns, want) in cases {
            let r = render(&objs, ns, &s).expect("renders");
            let got: Vec<&str> = r.included.iter().map(|i| i.id.name.as_str()).collect();
            assert_eq!(got, want, "namespace {ns}");
        }
        let r = render(&objs, "other", &s).expect("renders");
        assert!(r
            .excluded
            .iter()
            .any(|(id, why)| id.name == "none" && why.contains("not exported to other")));
    }

    #[test]
    fn telemetry_rules_are_the_namespace_own_and_the_root_namespace() {
        let t = |ns: &str, name: &str, pct: u32| {
            obj(
                "Telemetry",
                ns,
                name,
                json!({"tracing": [{"randomSamplingPercentage": pct}]}),
            )
        };
        let objs = checked(&[
            t("remora-system", "mesh-default", 1),
            t("istio-system", "not-the-root", 5),
            t("shop", "shop", 10),
            t("bank", "bank", 50),
        ]);
        let r = render(&objs, "shop", &Settings::default()).expect("renders");
        assert_eq!(
            keys(&r),
            [
                "remora-system.telemetry.mesh-default.yaml",
                "shop.telemetry.shop.yaml"
            ]
        );
        // A Telemetry the loader refuses is left out with the field named.
        let bad = check(&t("shop", "bad", 101), "cluster.local").unwrap_err();
        assert!(
            bad.reason
                .contains("spec.tracing[0].randomSamplingPercentage"),
            "{}",
            bad.reason
        );
    }

    #[test]
    fn security_kinds_are_the_namespace_own_and_the_root_namespace() {
        let pa = |ns: &str, name: &str| {
            obj(
                "PeerAuthentication",
                ns,
                name,
                json!({"mtls": {"mode": "STRICT"}}),
            )
        };
        let objs = checked(&[
            pa("remora-system", "mesh"),
            pa("istio-system", "mesh"),
            pa("shop", "shop"),
            pa("bank", "bank"),
        ]);
        // (root namespace, what shop gets): the root's objects are mesh-wide, any other
        // namespace's (Istio's root included, when it is not the setting) are not.
        let cases = [
            (
                None,
                vec![
                    "remora-system.peerauthentication.mesh.yaml",
                    "shop.peerauthentication.shop.yaml",
                ],
            ),
            (
                Some("istio-system"),
                vec![
                    "istio-system.peerauthentication.mesh.yaml",
                    "shop.peerauthentication.shop.yaml",
                ],
            ),
            (
                Some("bank"),
                vec![
                    "bank.peerauthentication.bank.yaml",
                    "shop.peerauthentication.shop.yaml",
                ],
            ),
        ];
        for (root, want) in cases {
            let s = Settings {
                root_namespace: root.unwrap_or(DEFAULT_ROOT_NAMESPACE).into(),
                ..Settings::default()
            };
            let r = render(&objs, "shop", &s).expect("renders");
            assert_eq!(keys(&r), want, "root {root:?}");
            let root = s.root_namespace.as_str();
            assert!(r.data[want[0]].starts_with(&format!(
                "# {}: mesh-wide: in the root namespace {root}\n",
                r.included[0].id
            )));
            // The root's PeerAuthentication reaches other namespaces; shop's does not.
            let by = |ns: &str| objs.iter().find(|o| o.id.namespace == ns).expect("object");
            assert!(!by(root).only_in_own_namespace(&s));
            assert!(by("shop").only_in_own_namespace(&s));
        }
    }

    #[test]
    fn sidecar_egress_hosts_scope_other_namespaces_objects() {
        let sidecar = |ns: &str, name: &str, hosts: Value| {
            obj("Sidecar", ns, name, json!({"egress": [{"hosts": hosts}]}))
        };
        let mut objs = checked(&[
            dr("bookinfo", "reviews", "reviews", None),
            dr("payments", "pay", "pay", None),
            vs("frontend", "own", "web", None),
            sidecar("frontend", "default", json!(["./*", "bookinfo/*"])),
        ]);
        let r = render(&objs, "frontend", &Settings::default()).expect("renders");
        let got: Vec<&str> = r.included.iter().map(|i| i.id.name.as_str()).collect();
        assert_eq!(got, ["reviews", "default", "own"]);
        assert!(r.excluded.iter().any(|(id, why)| id.name == "pay"
            && why == "outside the egress hosts of every Sidecar that applies in frontend"));
        // Without the namespace's own Sidecar the root default scopes it.
        objs.retain(|o| o.id.kind != "Sidecar");
        objs.extend(checked(&[sidecar(
            "remora-system",
            "default",
            json!(["payments/*"]),
        )]));
        let r = render(&objs, "frontend", &Settings::default()).expect("renders");
        let got: Vec<&str> = r.included.iter().map(|i| i.id.name.as_str()).collect();
        assert_eq!(got, ["own", "pay", "default"]);
        // A Sidecar with no egress listeners admits everything.
        objs.retain(|o| o.id.kind != "Sidecar");
        objs.extend(checked(&[obj("Sidecar", "frontend", "open", json!({}))]));
        let r = render(&objs, "frontend", &Settings::default()).expect("renders");
        assert_eq!(r.included.len(), 4);
        // A Sidecar with a workloadSelector scopes only the pods it selects: the others get
        // the root namespace's default (then what either admits is carried) or no Sidecar
        // (then everything is).
        let selecting = obj(
            "Sidecar",
            "frontend",
            "web-only",
            json!({"workloadSelector": {"labels": {"app": "web"}},
                   "egress": [{"hosts": ["./*"]}]}),
        );
        objs.retain(|o| o.id.kind != "Sidecar");
        objs.extend(checked(&[selecting]));
        let r = render(&objs, "frontend", &Settings::default()).expect("renders");
        assert_eq!(
            r.included.len(),
            4,
            "pods it does not select see everything"
        );
        objs.extend(checked(&[sidecar(
            "remora-system",
            "default",
            json!(["payments/*"]),
        )]));
        let r = render(&objs, "frontend", &Settings::default()).expect("renders");
        let got: Vec<&str> = r.included.iter().map(|i| i.id.name.as_str()).collect();
        assert_eq!(got, ["web-only", "own", "pay", "default"]);
        assert!(r.excluded.iter().any(|(id, _)| id.name == "reviews"));
    }

    /// A DestinationRule with a workloadSelector applies to pods of its own namespace only
    /// (Istio's rule, whatever its exportTo), so only that namespace's ConfigMap carries it.
    #[test]
    fn a_destination_rule_with_a_workload_selector_stays_in_its_namespace() {
        let objs = checked(&[obj(
            "DestinationRule",
            "bookinfo",
            "for-web",
            json!({"host": "reviews", "workloadSelector": {"matchLabels": {"app": "web"}},
                   "exportTo": ["*"]}),
        )]);
        let s = Settings::default();
        assert!(objs[0].only_in_own_namespace(&s));
        assert_eq!(
            render(&objs, "bookinfo", &s)
                .expect("renders")
                .included
                .len(),
            1
        );
        assert!(render(&objs, "frontend", &s)
            .expect("renders")
            .included
            .is_empty());
    }

    #[test]
    fn workload_entries_follow_the_service_entries_that_select_them() {
        let se = |name: &str, export: Value| {
            obj(
                "ServiceEntry",
                "shop",
                name,
                json!({"hosts": [format!("{name}.example.com")], "resolution": "STATIC",
                       "ports": [{"number": 80, "name": "http", "protocol": "HTTP"}],
                       "workloadSelector": {"labels": {"app": name}}, "exportTo": export}),
            )
        };
        let we = |name: &str, app: &str| {
            obj(
                "WorkloadEntry",
                "shop",
                name,
                json!({"address": "127.0.0.11", "labels": {"app": app}}),
            )
        };
        let objs = checked(&[
            se("public", json!(["*"])),
            se("private", json!(["."])),
            we("vm-1", "public"),
            we("vm-2", "private"),
            we("stray", "nobody"),
        ]);
        let s = Settings::default();
        let names =
            |r: &Rendered| -> Vec<String> { r.included.iter().map(|i| i.id.to_string()).collect() };
        let r = render(&objs, "frontend", &s).expect("renders");
        assert_eq!(
            names(&r),
            ["ServiceEntry shop/public", "WorkloadEntry shop/vm-1"]
        );
        assert!(r.data["shop.workloadentry.vm-1.yaml"].starts_with(
            "# WorkloadEntry shop/vm-1: an endpoint of ServiceEntry shop/public (its workloadSelector selects it)\n"
        ));
        let r = render(&objs, "shop", &s).expect("renders");
        assert_eq!(r.included.len(), 4, "{:?}", names(&r));
        assert!(r.excluded.iter().any(|(id, why)| id.name == "stray"
            && why == "no ServiceEntry seen in shop selects it (workloadSelector)"));
        // A WorkloadEntry's change may reach other namespaces.
        let vm = objs.iter().find(|o| o.id.name == "vm-1").expect("vm-1");
        assert!(!vm.only_in_own_namespace(&s));
        // A bad one is left out with its reason.
        let bad = obj(
            "WorkloadEntry",
            "shop",
            "bad",
            json!({"labels": {"app": "x"}}),
        );
        let bad = check(&bad, "cluster.local").expect_err("invalid");
        assert_eq!(
            bad.reason,
            "spec.address: required field is missing or empty"
        );
    }

    #[test]
    fn own_namespace_kinds_stay_home() {
        let objs = checked(&[
            obj(
                "RateLimit",
                "shop",
                "rl",
                json!({"host": "cart", "requestsPerUnit": 10, "unit": "SECOND"}),
            ),
            obj(
                "Gateway",
                "shop",
                "gw",
                json!({"selector": {"istio": "ingressgateway"},
                       "servers": [{"port": {"number": 80, "name": "http", "protocol": "HTTP"}, "hosts": ["*"]}]}),
            ),
            obj("Sidecar", "shop", "sc", json!({})),
        ]);
        assert_eq!(
            render(&objs, "shop", &Settings::default())
                .expect("renders")
                .included
                .len(),
            3
        );
        let other = render(&objs, "bank", &Settings::default()).expect("renders");
        assert!(other.data.is_empty() && other.excluded.is_empty());
    }

    #[test]
    fn a_gateway_namespace_sees_every_gateway_and_what_is_exported_to_it() {
        let gw = |ns: &str, name: &str| {
            obj(
                "Gateway",
                ns,
                name,
                json!({"selector": {"istio": "ingressgateway"},
                       "servers": [{"port": {"number": 80, "name": "http", "protocol": "HTTP"}, "hosts": ["*"]}]}),
            )
        };
        let bound = |ns: &str, name: &str, export: Option<Value>| {
            let mut spec = json!({"hosts": ["*"], "gateways": ["bookinfo-gateway"],
                "http": [{"route": [{"destination": {"host": "productpage", "port": {"number": 9080}}}]}]});
            if let Some(e) = export {
                spec["exportTo"] = e;
            }
            obj("VirtualService", ns, name, spec)
        };
        let objs = checked(&[
            gw("bookinfo", "bookinfo-gateway"),
            gw("shop", "shop-gateway"),
            bound("bookinfo", "bookinfo", None),
            bound("bookinfo", "private", Some(json!(["."]))),
            dr("bookinfo", "reviews", "reviews", None),
            // The root namespace's default Sidecar scopes sidecars to their own namespace.
            obj(
                "Sidecar",
                "remora-system",
                "default",
                json!({"egress": [{"hosts": ["./*"]}]}),
            ),
            obj(
                "RateLimit",
                "shop",
                "rl",
                json!({"host": "cart", "requestsPerUnit": 10, "unit": "SECOND"}),
            ),
        ]);
        let s = Settings::default();
        let names =
            |r: &Rendered| -> Vec<String> { r.included.iter().map(|i| i.id.to_string()).collect() };
        // The gateway's namespace: both Gateways, what is exported to it, no Sidecar (neither
        // the object nor its scoping), no other namespace's RateLimit.
        let r = render_view(&objs, "remora-system", &s, View::Gateway).expect("renders");
        assert_eq!(
            names(&r),
            [
                "DestinationRule bookinfo/reviews",
                "Gateway bookinfo/bookinfo-gateway",
                "VirtualService bookinfo/bookinfo",
                "Gateway shop/shop-gateway",
            ]
        );
        assert!(r.data["bookinfo.gateway.bookinfo-gateway.yaml"].starts_with(
            "# Gateway bookinfo/bookinfo-gateway: from namespace bookinfo: remora-system runs a gateway, which sees every namespace's Gateways\n"
        ));
        assert!(
            r.excluded
                .iter()
                .any(|(id, why)| id.name == "private"
                    && why.contains("not exported to remora-system"))
        );
        // A meshed namespace sees its own Gateways only, and its Sidecar scoping holds.
        let r = render(&objs, "frontend", &s).expect("renders");
        assert_eq!(names(&r), ["Sidecar remora-system/default"]);
        // Meshed and running a gateway: the sidecars' view and every Gateway.
        let r = render_view(&objs, "frontend", &s, View::Both).expect("renders");
        assert_eq!(
            names(&r),
            [
                "Gateway bookinfo/bookinfo-gateway",
                "Sidecar remora-system/default",
                "Gateway shop/shop-gateway",
            ]
        );
        // A Gateway's change reaches other namespaces' ConfigMaps; a RateLimit's does not.
        let by_name = |n: &str| objs.iter().find(|o| o.id.name == n).expect("object");
        assert!(!by_name("bookinfo-gateway").only_in_own_namespace(&s));
        assert!(by_name("rl").only_in_own_namespace(&s));
    }

    /// A gateway's ConfigMap carries the security policies that can apply to its pod: its own
    /// namespace's (a `selector` picks the gateway's pod labels) and the root namespace's
    /// (mesh-wide); another namespace's stay there.
    #[test]
    fn a_gateway_namespace_gets_its_own_and_the_root_security_policies() {
        let to_gateway = json!({"matchLabels": {"istio": "ingressgateway"}});
        let objs = checked(&[
            obj(
                "AuthorizationPolicy",
                "istio-system",
                "ingress-allow-list",
                json!({"selector": to_gateway, "action": "ALLOW",
                       "rules": [{"from": [{"source": {"remoteIpBlocks": ["203.0.113.0/24"]}}]}]}),
            ),
            obj(
                "RequestAuthentication",
                "istio-system",
                "ingress-jwt",
                json!({"selector": to_gateway,
                       "jwtRules": [{"issuer": "https://issuer.example", "jwksUri": "https://issuer.example/jwks"}]}),
            ),
            obj(
                "AuthorizationPolicy",
                "remora-system",
                "mesh-deny-debug",
                json!({"action": "DENY", "rules": [{"to": [{"operation": {"paths": ["/debug*"]}}]}]}),
            ),
            obj(
                "AuthorizationPolicy",
                "bookinfo",
                "productpage-viewer",
                json!({"action": "ALLOW", "rules": [{}]}),
            ),
        ]);
        let r = render_view(&objs, "istio-system", &Settings::default(), View::Gateway)
            .expect("renders");
        let names: Vec<String> = r.included.iter().map(|i| i.id.to_string()).collect();
        assert_eq!(
            names,
            [
                "AuthorizationPolicy istio-system/ingress-allow-list",
                "RequestAuthentication istio-system/ingress-jwt",
                "AuthorizationPolicy remora-system/mesh-deny-debug",
            ]
        );
        let why = |n: &str| {
            r.included
                .iter()
                .find(|i| i.id.name == n)
                .map(|i| i.why.clone())
        };
        assert_eq!(why("ingress-jwt").as_deref(), Some("in this namespace"));
        assert_eq!(
            why("mesh-deny-debug").as_deref(),
            Some("mesh-wide: in the root namespace remora-system")
        );
    }

    #[test]
    fn documents_keep_only_what_the_proxy_reads_and_are_deterministic() {
        let a = checked(&[vs("shop", "cart", "cart", None)]);
        let d = &a[0].document;
        assert!(d.contains("note: kept"), "{d}");
        for gone in ["last-applied", "resourceVersion", "uid", "status"] {
            assert!(!d.contains(gone), "{gone} in {d}");
        }
        // Key order in the input does not change the output.
        let mut reordered = vs("shop", "cart", "cart", None);
        let spec = reordered["spec"].take();
        reordered.as_object_mut().expect("map").remove("spec");
        reordered["spec"] = spec;
        assert_eq!(checked(&[reordered])[0].document, *d);
        // The whole ConfigMap is byte-identical from objects in any order.
        let objs = checked(&[vs("shop", "a", "a", None), dr("shop", "b", "b", None)]);
        let mut rev = objs.clone();
        rev.reverse();
        assert_eq!(
            render(&objs, "shop", &Settings::default()),
            render(&rev, "shop", &Settings::default())
        );
        // What it renders loads in the proxy's loader as the same objects.
        let r = render(&objs, "shop", &Settings::default()).expect("renders");
        let files: Vec<(&str, &str)> = r
            .data
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let snap = crate::rules::snapshot_from_yaml(
            &files,
            &ctx_for("shop", "cluster.local", DEFAULT_ROOT_NAMESPACE),
            1,
        )
        .expect("the proxy loads it");
        assert_eq!(snap.files.len(), 2);
    }

    #[test]
    fn invalid_and_unsupported_objects_are_left_out_with_the_reason() {
        let bad = obj(
            "VirtualService",
            "shop",
            "bad",
            json!({"hosts": ["a"], "http": [{"timeout": "soon"}]}),
        );
        let e = check(&bad, "cluster.local").expect_err("invalid");
        assert!(!e.unsupported);
        assert!(
            e.to_string()
                .starts_with("VirtualService shop/bad: spec.http[0].timeout"),
            "{e}"
        );
        let we = json!({"apiVersion": "networking.istio.io/v1alpha3", "kind": "WorkloadGroup",
                        "metadata": {"name": "w", "namespace": "shop"}, "spec": {}});
        let e = check(&we, "cluster.local").expect_err("unsupported");
        assert!(e.unsupported, "{e}");
        let nameless =
            json!({"apiVersion": "networking.istio.io/v1", "kind": "Sidecar", "metadata": {}});
        assert!(check(&nameless, "cluster.local").is_err());
    }

    #[test]
    fn a_configmap_over_the_limit_is_refused_naming_the_largest() {
        let objs = checked(&[
            vs("shop", "small", "small", None),
            obj(
                "VirtualService",
                "shop",
                "big",
                json!({"hosts": ["big"],
                "http": (0..200).map(|i| json!({"name": format!("r{i}"), "match": [{"uri": {"prefix": format!("/p{i}")}}],
                                                 "route": [{"destination": {"host": "big"}}]})).collect::<Vec<_>>()}),
            ),
        ]);
        let s = Settings {
            max_bytes: 4096,
            ..Settings::default()
        };
        match render(&objs, "shop", &s) {
            Err(RenderError::TooLarge(t)) => {
                assert_eq!(t.largest[0].0.name, "big");
                assert!(t.bytes > 4096);
                assert!(t.to_string().contains("VirtualService shop/big"), "{t}");
            }
            other => panic!("expected TooLarge, got {other:?}"),
        }
    }

    #[test]
    fn a_set_the_loader_would_reject_is_not_rendered() {
        // Each object passed `check` alone; the whole set is decoded again before it is
        // returned, so a set the proxy would reject is never written. (A document that did not
        // pass `check` stands in for a clash only visible together.)
        let mut objs = checked(&[vs("shop", "a", "a", None)]);
        objs.push(Checked {
            id: ObjectRef {
                kind: "VirtualService".into(),
                namespace: "shop".into(),
                name: "broken".into(),
            },
            document: "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: broken, namespace: shop}\nspec: {hosts: 5}\n".into(),
            warnings: Vec::new(),
            reach: Reach::Namespace,
        });
        match render(&objs, "shop", &Settings::default()) {
            Err(e @ RenderError::Rejected { .. }) => {
                assert!(
                    e.to_string().contains("shop.virtualservice.broken.yaml"),
                    "{e}"
                )
            }
            other => panic!("expected Rejected, got {other:?}"),
        }
        objs.pop();
        assert!(render(&objs, "shop", &Settings::default()).is_ok());
    }

    #[test]
    fn long_names_get_a_hashed_key() {
        let id = ObjectRef {
            kind: "VirtualService".into(),
            namespace: "n".repeat(63),
            name: "x".repeat(253),
        };
        let k = key_for(&id);
        assert!(k.len() <= 253 && k.ends_with(".yaml"), "{k}");
        assert_ne!(
            k,
            key_for(&ObjectRef {
                name: "y".repeat(253),
                ..id.clone()
            })
        );
    }
}
