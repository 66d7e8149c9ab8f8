//! The whole injection of one pod (pure): decide → validate annotations → remove a previous
//! injection → rewrite probes → add containers, volumes, annotations.

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};

use serde_json::{json, Map, Value};

use crate::annotations::{PodOptions, DEFAULT_CONTAINER, DEFAULT_LOGS_CONTAINER, STATUS};
use crate::config::Config;
use crate::decide::{decide, string_map, Decision};
use crate::metrics_merge;
use crate::probes::{self, PROBERS_ENV};
use crate::selectors::Selection;
use crate::template::{self, INIT_NAME, PROXY_NAME, VALIDATION_NAME};
use remora_model::workload::{
    canonical_revision, canonical_service, workload_of, Owner, CANONICAL_NAME_LABEL,
    CANONICAL_REVISION_LABEL,
};

pub use crate::annotations::OVERRIDES;
use remora_init::pod::{CAPTURE_BY_CNI, CAPTURE_MARK};
/// Container names whose fields override the rendered proxy.
const PROXY_OVERRIDE_NAMES: [&str; 2] = [PROXY_NAME, "istio-proxy"];
/// Container names whose fields override the rendered init container.
const INIT_OVERRIDE_NAMES: [&str; 2] = [INIT_NAME, "istio-init"];

/// What happened to a pod.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The injected pod, the reason, and notes worth logging (probes left alone, ...).
    Injected {
        pod: Value,
        reason: String,
        notes: Vec<String>,
    },
    Skipped(String),
    Denied(String),
}

impl Outcome {
    pub fn decision(&self) -> &'static str {
        match self {
            Outcome::Injected { .. } => "injected",
            Outcome::Skipped(_) => "skipped",
            Outcome::Denied(_) => "denied",
        }
    }
    pub fn reason(&self) -> &str {
        match self {
            Outcome::Injected { reason, .. } => reason,
            Outcome::Skipped(r) | Outcome::Denied(r) => r,
        }
    }
}

/// The pod's workload name as Istio's injector derives it for `ISTIO_META_WORKLOAD_NAME`: its
/// controller's (a Deployment's rather than its ReplicaSet's, a CronJob's rather than its
/// Job's), else its own name; `None` for a pod with neither (a `generateName` without owner).
fn workload_name(
    pod: &Value,
    labels: &std::collections::BTreeMap<String, String>,
) -> Option<String> {
    let meta = pod.get("metadata");
    let text = |key: &str| {
        meta.and_then(|m| m.get(key))
            .and_then(Value::as_str)
            .unwrap_or("")
    };
    let owner = meta
        .and_then(|m| m.get("ownerReferences"))
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .find(|o| o.get("controller").and_then(Value::as_bool) == Some(true))
        .map(|o| Owner {
            kind: o.get("kind").and_then(Value::as_str).unwrap_or(""),
            name: o.get("name").and_then(Value::as_str).unwrap_or(""),
        });
    let (_, name) = workload_of(
        text("name"),
        !text("generateName").is_empty(),
        owner,
        labels,
    );
    (!name.is_empty()).then_some(name)
}

/// What a previous injection recorded in `sidecar.istio.io/status`.
#[derive(Debug, Default)]
struct Previous {
    init: Vec<String>,
    containers: Vec<String>,
    volumes: Vec<String>,
}

fn names(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

fn previous(status: Option<&str>) -> Option<Previous> {
    let v: Value = serde_json::from_str(status?).ok()?;
    Some(Previous {
        init: names(v.get("initContainers")),
        containers: names(v.get("containers")),
        volumes: names(v.get("volumes")),
    })
}

/// The container `name` that a previous injection (`prev`, from the status annotation) put in the
/// pod and that is still there.
fn previous_container<'a>(pod: &'a Value, prev: &Previous, name: &str) -> Option<&'a Value> {
    [
        ("initContainers", &prev.init),
        ("containers", &prev.containers),
    ]
    .into_iter()
    .filter(|(_, names)| names.iter().any(|n| n == name))
    .find_map(|(list, _)| {
        pod.pointer(&format!("/spec/{list}"))
            .and_then(Value::as_array)?
            .iter()
            .find(|c| c.get("name").and_then(Value::as_str) == Some(name))
    })
}

/// Removes the named entries of `arr`, returning the removed ones.
fn take_named(arr: &mut Vec<Value>, names: &[String]) -> Vec<Value> {
    let mut removed = Vec::new();
    arr.retain(|c| {
        let hit = c
            .get("name")
            .and_then(Value::as_str)
            .is_some_and(|n| names.iter().any(|x| x == n));
        if hit {
            removed.push(c.clone());
        }
        !hit
    });
    removed
}

/// The value of the environment variable `name` in the first of `containers` that sets it.
fn env_of(containers: &[Value], name: &str) -> Option<String> {
    containers
        .iter()
        .filter_map(|c| c.get("env").and_then(Value::as_array))
        .flatten()
        .find(|e| e.get("name").and_then(Value::as_str) == Some(name))
        .and_then(|e| e.get("value").and_then(Value::as_str))
        .map(str::to_string)
}

fn probers_of(containers: &[Value]) -> Map<String, Value> {
    let mut out = Map::new();
    for c in containers {
        let Some(env) = c.get("env").and_then(Value::as_array) else {
            continue;
        };
        for e in env {
            if e.get("name").and_then(Value::as_str) == Some(PROBERS_ENV) {
                if let Some(Value::Object(m)) = e
                    .get("value")
                    .and_then(Value::as_str)
                    .and_then(|s| serde_json::from_str::<Value>(s).ok())
                {
                    out.extend(m);
                }
            }
        }
    }
    out
}

fn array_at(spec: &mut Map<String, Value>, key: &str) -> Vec<Value> {
    match spec.remove(key) {
        Some(Value::Array(a)) => a,
        _ => Vec::new(),
    }
}

/// Recent init argument lists and the init parser's verdict: most pods render identical
/// arguments, and building the clap parser costs more than the rest of a review.
type ArgsVerdicts = HashMap<Vec<String>, Result<(), String>>;
static INIT_ARGS_CHECKED: LazyLock<Mutex<ArgsVerdicts>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

/// Parses and validates rendered `remora-init` arguments with remora-init's own flags.
fn check_init_args(args: Vec<String>) -> Result<(), String> {
    if let Ok(cache) = INIT_ARGS_CHECKED.lock() {
        if let Some(r) = cache.get(&args) {
            return r.clone();
        }
    }
    let verdict = remora_init::flags::Flags::try_parse_args_only(
        std::iter::once("remora-init".to_string()).chain(args.iter().cloned()),
    )
    .map_err(|e| e.to_string())
    .and_then(|f| {
        f.validate_all().map(|_| ()).map_err(|es| {
            es.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ")
        })
    });
    if let Ok(mut cache) = INIT_ARGS_CHECKED.lock() {
        if cache.len() >= 1024 {
            cache.clear();
        }
        cache.insert(args, verdict.clone());
    }
    verdict
}

/// Injects `pod` (raw JSON with `metadata` and `spec`) created in `namespace`, as a webhook
/// configuration from before revisions sends it (path `/inject`: the default revision's
/// `namespace.` entry, see [`Selection::legacy`]).
pub fn inject_pod(pod: &Value, namespace: &str, cfg: &Config) -> Outcome {
    inject_pod_as(pod, namespace, cfg, &Selection::legacy())
}

/// Injects `pod` (raw JSON with `metadata` and `spec`) created in `namespace`, sent by the
/// webhook entry `sel` names.
pub fn inject_pod_as(pod: &Value, namespace: &str, cfg: &Config, sel: &Selection) -> Outcome {
    if pod
        .pointer("/spec/containers")
        .and_then(Value::as_array)
        .is_none_or(|a| a.is_empty())
    {
        return Outcome::Denied(
            "pod spec.containers is missing or empty: nothing to inject beside".into(),
        );
    }
    let reason = match decide(pod, namespace, cfg, sel) {
        Decision::Skip(r) => return Outcome::Skipped(r),
        Decision::Inject(r) => r,
    };
    let annotations = string_map(pod.pointer("/metadata/annotations"));
    // A previous injection (ours or Istio's) is replaced, never duplicated.
    let prev = match previous(annotations.get(STATUS).map(String::as_str)) {
        Some(p) => p,
        None if annotations.contains_key(STATUS) => Previous {
            init: vec![INIT_NAME.into(), VALIDATION_NAME.into(), PROXY_NAME.into()],
            containers: vec![PROXY_NAME.into()],
            volumes: template::VOLUME_NAMES.map(String::from).to_vec(),
        },
        None => Previous::default(),
    };
    let opts = match PodOptions::parse_reinjected(
        &annotations,
        cfg,
        previous_container(pod, &prev, PROXY_NAME),
        previous_container(pod, &prev, INIT_NAME),
    ) {
        Ok(o) => o,
        Err(errs) => return Outcome::Denied(errs.join("; ")),
    };
    // A seccomp profile the pod chooses for all its containers applies to ours too; without one
    // they get the container runtime's default profile.
    let pod_seccomp = pod
        .pointer("/spec/securityContext/seccompProfile")
        .is_some_and(|p| !p.is_null());

    let mut out = pod.clone();
    let Some(spec) = out.get_mut("spec").and_then(Value::as_object_mut) else {
        return Outcome::Denied("pod spec is not an object".into());
    };
    let mut containers = array_at(spec, "containers");
    let mut inits = array_at(spec, "initContainers");
    let mut vols = array_at(spec, "volumes");

    let mut removed = take_named(&mut inits, &prev.init);
    removed.extend(take_named(&mut containers, &prev.containers));
    take_named(&mut vols, &prev.volumes);
    // Istio's override mechanism: a container the pod declares under the proxy's or the init's
    // name (ours or Istio's) is merged over the rendered one. The overrides are recorded in an
    // annotation so a re-injection (which removed the merged containers) applies them again.
    let mut overrides = take_named(&mut containers, &PROXY_OVERRIDE_NAMES.map(String::from));
    overrides.extend(take_named(
        &mut inits,
        &PROXY_OVERRIDE_NAMES.map(String::from),
    ));
    let mut init_overrides = take_named(&mut inits, &INIT_OVERRIDE_NAMES.map(String::from));
    init_overrides.extend(take_named(
        &mut containers,
        &INIT_OVERRIDE_NAMES.map(String::from),
    ));
    if overrides.is_empty() && init_overrides.is_empty() {
        if let Some(rec) = annotations
            .get(OVERRIDES)
            .and_then(|s| serde_json::from_str::<Value>(s).ok())
        {
            overrides = rec
                .get("proxy")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            init_overrides = rec
                .get("init")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
        }
    }
    for v in &vols {
        if let Some(n) = v
            .get("name")
            .and_then(Value::as_str)
            .filter(|n| template::VOLUME_NAMES.contains(n))
        {
            return Outcome::Denied(format!(
                "volume name {n} is reserved for the injected sidecar; rename the pod's volume"
            ));
        }
    }
    if containers.is_empty() {
        return Outcome::Denied(
            "pod has no containers besides a previously injected sidecar".into(),
        );
    }

    for (name, _) in &opts.user_volumes {
        if vols
            .iter()
            .any(|v| v.get("name").and_then(Value::as_str) == Some(name.as_str()))
        {
            return Outcome::Denied(format!(
                "annotation {}: volume {name:?} already exists in the pod",
                crate::annotations::USER_VOLUME
            ));
        }
    }
    for (name, _) in &opts.user_volume_mounts {
        let known = opts.user_volumes.iter().any(|(n, _)| n == name)
            || vols
                .iter()
                .any(|v| v.get("name").and_then(Value::as_str) == Some(name.as_str()));
        if !known {
            return Outcome::Denied(format!(
                "annotation {}: volume {name:?} is neither a pod volume nor in {}",
                crate::annotations::USER_VOLUME_MOUNT,
                crate::annotations::USER_VOLUME
            ));
        }
    }
    let mut notes = crate::annotations::unsupported(&annotations);
    let probers = if opts.rewrite_probes {
        let previous = probers_of(&removed);
        let r = probes::rewrite(&mut containers, &previous);
        notes.extend(r.notes);
        let mut probers = r.probers;
        // The pod's own native sidecars (init containers with restartPolicy Always) have probes
        // that run for the pod's life too.
        let mut sidecars: Vec<Value> = Vec::new();
        let mut idx = Vec::new();
        for (i, c) in inits.iter().enumerate() {
            if c.get("restartPolicy").and_then(Value::as_str) == Some("Always") {
                sidecars.push(c.clone());
                idx.push(i);
            }
        }
        let r = probes::rewrite(&mut sidecars, &previous);
        notes.extend(r.notes);
        probers.extend(r.probers);
        for (i, c) in idx.into_iter().zip(sidecars) {
            inits[i] = c;
        }
        probers
    } else {
        Map::new()
    };
    let grace = spec
        .get("terminationGracePeriodSeconds")
        .and_then(Value::as_i64);
    let mut proxy = template::proxy_container(cfg, &opts, &probers, grace);
    let metrics = metrics_merge::plan(
        &annotations,
        cfg.enable_prometheus_merge,
        env_of(&removed, metrics_merge::APP_SCRAPE_ENV).as_deref(),
    );
    if let Some(app) = &metrics.app_scrape {
        template::set_env(&mut proxy, metrics_merge::APP_SCRAPE_ENV, app);
    }
    notes.push(metrics.reason.clone());
    let pod_labels = string_map(pod.pointer("/metadata/labels"));
    let workload = workload_name(pod, &pod_labels);
    if let Some(w) = &workload {
        template::set_env(&mut proxy, template::WORKLOAD_NAME_ENV, w);
    }
    if !pod_seccomp {
        template::default_seccomp(&mut proxy);
    }
    for o in &overrides {
        template::apply_override(&mut proxy, o);
    }
    let cni_mode = cfg.cni.enabled;
    let mut init = if cni_mode {
        // The uid the proxy finally runs as (an override may change it): the node's plugin
        // exempts that uid, so the check runs as it.
        let proxy_uid = proxy
            .pointer("/securityContext/runAsUser")
            .and_then(Value::as_u64)
            .and_then(|u| u32::try_from(u).ok())
            .unwrap_or(cfg.proxy_uid);
        template::validation_container(cfg, &opts, proxy_uid)
    } else {
        template::init_container(cfg, &opts)
    };
    let init_name = if cni_mode { VALIDATION_NAME } else { INIT_NAME };
    if let Some(i) = init.as_mut() {
        if !pod_seccomp {
            template::default_seccomp(i);
        }
        // The overrides are for the capture container; the validation container stays as
        // rendered (an override could give it capabilities).
        if !cni_mode {
            for o in &init_overrides {
                template::apply_override(i, o);
            }
        }
    }
    if cni_mode && !init_overrides.is_empty() {
        notes.push(format!(
            "CNI mode: the pod's {INIT_NAME} override container is not applied ({VALIDATION_NAME} runs as rendered)"
        ));
    }
    let args_overridden = !cni_mode && init_overrides.iter().any(|o| o.get("args").is_some());
    if args_overridden {
        notes.push(
            "remora-init arguments come from the pod's own init override container, unchecked"
                .into(),
        );
    }
    if init.is_some() && !args_overridden {
        // The init program's own parser is the one definition of its flags: check against it
        // (in CNI mode the node's plugin runs the same arguments).
        let args = template::init_args(cfg, &opts);
        if let Err(es) = check_init_args(args) {
            return Outcome::Denied(format!(
                "the traffic annotations give remora-init arguments it rejects: {es}"
            ));
        }
    }
    let init_present = init.is_some();
    let capture = match (&init, cni_mode) {
        (None, _) => "capture: none (sidecar.istio.io/interceptionMode is NONE)".to_string(),
        (Some(_), true) => format!(
            "capture: CNI mode (injector setting cni.enabled): the node's remora-cni programs it, {VALIDATION_NAME} checks it without privileges"
        ),
        (Some(_), false) => format!(
            "capture: init container {INIT_NAME} (NET_ADMIN, NET_RAW; injector setting cni.enabled is off)"
        ),
    };
    let reason = format!("{reason}; {capture}");

    let mut status_init: Vec<&str> = Vec::new();
    let mut status_containers: Vec<&str> = Vec::new();
    if cni_mode {
        // The validation runs first: before the proxy listens on the inbound capture port.
        let mut new_inits = Vec::new();
        if let Some(i) = init {
            new_inits.push(i);
            status_init.push(init_name);
        }
        if opts.native_sidecar {
            new_inits.push(proxy);
            status_init.push(PROXY_NAME);
        } else {
            containers.push(proxy);
            status_containers.push(PROXY_NAME);
        }
        new_inits.extend(inits);
        inits = new_inits;
    } else if opts.native_sidecar {
        let mut new_inits = vec![proxy];
        status_init.push(PROXY_NAME);
        if let Some(i) = init {
            new_inits.push(i);
            status_init.push(init_name);
        }
        new_inits.extend(inits);
        inits = new_inits;
    } else {
        if let Some(i) = init {
            inits.push(i);
            status_init.push(init_name);
        }
        containers.push(proxy);
        status_containers.push(PROXY_NAME);
    }
    let mut our_vols = template::volumes(cfg);
    for (name, def) in &opts.user_volumes {
        let mut v = def.clone();
        v["name"] = json!(name);
        our_vols.push(v);
    }
    let vol_names: Vec<&str> = our_vols
        .iter()
        .filter_map(|v| v.get("name").and_then(Value::as_str))
        .collect();
    let status = template::status(&status_init, &status_containers, &vol_names, cfg.revision());
    vols.extend(our_vols.iter().cloned());

    let app = containers
        .iter()
        .find_map(|c| c.get("name").and_then(Value::as_str))
        .map(str::to_string);
    spec.insert("containers".into(), Value::Array(containers));
    if !inits.is_empty() {
        spec.insert("initContainers".into(), Value::Array(inits));
    }
    spec.insert("volumes".into(), Value::Array(vols));

    let Some(meta) = out
        .as_object_mut()
        .map(|o| o.entry("metadata").or_insert_with(|| json!({})))
    else {
        return Outcome::Denied("pod is not a JSON object".into());
    };
    if !meta.is_object() {
        return Outcome::Denied("pod metadata is not an object".into());
    }
    // Istio's label telling clients the pod has a sidecar with a mesh identity; a value the pod
    // sets itself is kept (Istio's template does the same).
    if cfg.identity().is_some()
        && meta
            .get("labels")
            .and_then(|l| l.get(template::TLS_MODE_LABEL))
            .is_none()
    {
        if !meta.get("labels").is_some_and(Value::is_object) {
            meta["labels"] = json!({});
        }
        meta["labels"][template::TLS_MODE_LABEL] = json!(template::TLS_MODE_ISTIO);
    }
    // Istio's canonical service labels, from the app's own labels when the pod has none.
    let canonical = [
        (
            CANONICAL_NAME_LABEL,
            Some(canonical_service(
                &pod_labels,
                workload.as_deref().unwrap_or(""),
            )),
        ),
        (
            CANONICAL_REVISION_LABEL,
            Some(canonical_revision(&pod_labels)),
        ),
    ];
    for (key, value) in canonical {
        let Some(value) = value.filter(|v| !v.is_empty()) else {
            continue;
        };
        if pod_labels.contains_key(key) {
            continue;
        }
        if !meta.get("labels").is_some_and(Value::is_object) {
            meta["labels"] = json!({});
        }
        meta["labels"][key] = json!(value);
    }
    if !meta.get("annotations").is_some_and(Value::is_object) {
        meta["annotations"] = json!({});
    }
    let ann = &mut meta["annotations"];
    ann[STATUS] = json!(status);
    // The mark the node's CNI plugin looks for; only the injector sets it.
    if cni_mode && init_name == VALIDATION_NAME && init_present {
        ann[CAPTURE_MARK] = json!(CAPTURE_BY_CNI);
    } else if let Some(a) = ann.as_object_mut() {
        a.remove(CAPTURE_MARK);
    }
    if let Some(app) = app {
        for key in [DEFAULT_CONTAINER, DEFAULT_LOGS_CONTAINER] {
            if ann.get(key).is_none() {
                ann[key] = json!(app);
            }
        }
    }
    if overrides.is_empty() && init_overrides.is_empty() {
        if let Some(a) = ann.as_object_mut() {
            a.remove(OVERRIDES);
        }
    } else {
        ann[OVERRIDES] = json!(json!({"proxy": overrides, "init": init_overrides}).to_string());
    }
    for (key, value) in &metrics.annotations {
        ann[*key] = json!(value);
    }
    Outcome::Injected {
        pod: out,
        reason,
        notes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::annotations::{PROM_PATH, PROM_PORT};

    fn hello() -> Value {
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "hello", "labels": {"app": "hello"}},
            "spec": {
                "initContainers": [{"name": "setup", "image": "busybox"}],
                "containers": [{"name": "hello", "image": "hello:1", "ports": [{"name": "http", "containerPort": 80}],
                                "readinessProbe": {"httpGet": {"path": "/ready", "port": "http"}}}],
                "volumes": [{"name": "data", "emptyDir": {}}]
            }
        })
    }

    fn injected(p: &Value) -> Value {
        match inject_pod(p, "default", &Config::default()) {
            Outcome::Injected { pod, .. } => pod,
            other => panic!("not injected: {other:?}"),
        }
    }

    fn names(v: &Value) -> Vec<&str> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect()
    }

    /// The `restricted` Pod Security Standard (Kubernetes docs, "Pod Security Standards",
    /// policies of `baseline` and `restricted`, v1.30+), encoded as checks of the pod's fields:
    /// every violation, one line each.
    fn restricted_violations(pod: &Value) -> Vec<String> {
        const BASELINE_CAPS: [&str; 13] = [
            "AUDIT_WRITE",
            "CHOWN",
            "DAC_OVERRIDE",
            "FOWNER",
            "FSETID",
            "KILL",
            "MKNOD",
            "NET_BIND_SERVICE",
            "SETFCAP",
            "SETGID",
            "SETPCAP",
            "SETUID",
            "SYS_CHROOT",
        ];
        const VOLUME_TYPES: [&str; 8] = [
            "configMap",
            "csi",
            "downwardAPI",
            "emptyDir",
            "ephemeral",
            "persistentVolumeClaim",
            "projected",
            "secret",
        ];
        let mut v = Vec::new();
        let spec = &pod["spec"];
        let psc = &spec["securityContext"];
        // baseline: host namespaces
        for f in ["hostNetwork", "hostPID", "hostIPC"] {
            if spec[f] == json!(true) {
                v.push(format!("spec.{f} must not be true"));
            }
        }
        // restricted: volume types
        for vol in spec["volumes"].as_array().into_iter().flatten() {
            let kinds: Vec<&String> = vol
                .as_object()
                .into_iter()
                .flat_map(|o| o.keys())
                .filter(|k| *k != "name")
                .collect();
            for k in kinds {
                if !VOLUME_TYPES.contains(&k.as_str()) {
                    v.push(format!("volume {}: type {k} is not allowed", vol["name"]));
                }
            }
        }
        let pod_non_root = psc["runAsNonRoot"] == json!(true);
        let pod_seccomp = psc["seccompProfile"]["type"].as_str();
        if matches!(pod_seccomp, Some(t) if t != "RuntimeDefault" && t != "Localhost") {
            v.push(format!("pod seccompProfile {pod_seccomp:?} is not allowed"));
        }
        if psc["runAsUser"] == json!(0) {
            v.push("pod runAsUser must not be 0".into());
        }
        for list in ["initContainers", "containers", "ephemeralContainers"] {
            for c in spec[list].as_array().into_iter().flatten() {
                let name = c["name"].as_str().unwrap_or("?");
                let sc = &c["securityContext"];
                let mut bad = |why: String| v.push(format!("{list}[{name}]: {why}"));
                if sc["privileged"] == json!(true) {
                    bad("privileged must not be true".into());
                }
                for p in c["ports"].as_array().into_iter().flatten() {
                    if p["hostPort"].as_i64().is_some_and(|h| h != 0) {
                        bad("hostPort must not be set".into());
                    }
                }
                let adds: Vec<&str> = sc["capabilities"]["add"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .collect();
                for cap in &adds {
                    if !BASELINE_CAPS.contains(cap) || *cap != "NET_BIND_SERVICE" {
                        bad(format!("capability {cap} must not be added"));
                    }
                }
                let drops_all = sc["capabilities"]["drop"]
                    .as_array()
                    .is_some_and(|d| d.iter().any(|x| x == "ALL"));
                if !drops_all {
                    bad("capabilities must drop ALL".into());
                }
                if sc["allowPrivilegeEscalation"] != json!(false) {
                    bad("allowPrivilegeEscalation must be false".into());
                }
                let non_root = match &sc["runAsNonRoot"] {
                    Value::Bool(b) => *b,
                    _ => pod_non_root,
                };
                if !non_root {
                    bad("runAsNonRoot must be true (container or pod)".into());
                }
                if sc["runAsUser"] == json!(0) {
                    bad("runAsUser must not be 0".into());
                }
                match sc["seccompProfile"]["type"].as_str().or(pod_seccomp) {
                    Some("RuntimeDefault") | Some("Localhost") => {}
                    other => bad(format!(
                        "seccompProfile must be RuntimeDefault or Localhost (container or pod), is {other:?}"
                    )),
                }
                if let Some(pm) = sc["procMount"].as_str().filter(|p| *p != "Default") {
                    bad(format!("procMount {pm} is not allowed"));
                }
            }
        }
        v
    }

    /// An application pod that itself meets the `restricted` profile.
    fn restricted_app() -> Value {
        json!({
            "metadata": {"name": "web", "labels": {"app": "web"}},
            "spec": {
                "securityContext": {"runAsNonRoot": true, "seccompProfile": {"type": "RuntimeDefault"}},
                "containers": [{
                    "name": "web",
                    "image": "web:1",
                    "ports": [{"containerPort": 8080}],
                    "securityContext": {
                        "allowPrivilegeEscalation": false,
                        "capabilities": {"drop": ["ALL"]},
                        "runAsUser": 1000
                    }
                }]
            }
        })
    }

    fn cni_config() -> Config {
        Config {
            cni: crate::config::CniConfig { enabled: true },
            ..Config::default()
        }
    }

    #[test]
    fn cni_mode_pods_pass_the_restricted_profile_and_sidecar_mode_pods_do_not() {
        assert_eq!(
            restricted_violations(&restricted_app()),
            Vec::<String>::new()
        );
        for native in [true, false] {
            let cfg = Config {
                native_sidecar: native,
                ..cni_config()
            };
            let Outcome::Injected { pod, .. } = inject_pod(&restricted_app(), "default", &cfg)
            else {
                panic!("not injected");
            };
            assert_eq!(
                restricted_violations(&pod),
                Vec::<String>::new(),
                "native {native}"
            );
            // Without the pod's own seccomp profile, the injected containers still comply.
            let mut app = restricted_app();
            app["spec"]["securityContext"] = json!({"runAsNonRoot": true});
            app["spec"]["containers"][0]["securityContext"]["seccompProfile"] =
                json!({"type": "RuntimeDefault"});
            let Outcome::Injected { pod, .. } = inject_pod(&app, "default", &cfg) else {
                panic!("not injected");
            };
            assert_eq!(restricted_violations(&pod), Vec::<String>::new());
        }
        // The checker does fail: the privileged init container of sidecar mode breaks the profile.
        let Outcome::Injected { pod, .. } =
            inject_pod(&restricted_app(), "default", &Config::default())
        else {
            panic!("not injected");
        };
        let v = restricted_violations(&pod);
        for want in [
            "initContainers[remora-init]: capability NET_ADMIN must not be added",
            "initContainers[remora-init]: runAsNonRoot must be true (container or pod)",
            "initContainers[remora-init]: runAsUser must not be 0",
        ] {
            assert!(v.iter().any(|x| x == want), "{want} not in {v:?}");
        }
    }

    #[test]
    fn cni_mode_layout_mark_and_reason() {
        let cfg = cni_config();
        let Outcome::Injected { pod, reason, .. } = inject_pod(&hello(), "default", &cfg) else {
            panic!("not injected");
        };
        assert_eq!(
            names(&pod["spec"]["initContainers"]),
            ["remora-validation", "remora-proxy", "setup"]
        );
        let v = &pod["spec"]["initContainers"][0];
        assert_eq!(
            v["args"],
            json!([
                "validate",
                "--inbound-capture-port",
                "15006",
                "--proxy-uid",
                "1337"
            ])
        );
        assert_eq!(
            v["securityContext"]["capabilities"],
            json!({"drop": ["ALL"]})
        );
        let ann = &pod["metadata"]["annotations"];
        assert_eq!(ann[CAPTURE_MARK], CAPTURE_BY_CNI);
        let status: Value = serde_json::from_str(ann[STATUS].as_str().unwrap()).unwrap();
        assert_eq!(
            status["initContainers"],
            json!(["remora-validation", "remora-proxy"])
        );
        assert!(
            reason.ends_with("; capture: CNI mode (injector setting cni.enabled): the node's remora-cni programs it, remora-validation checks it without privileges"),
            "{reason}"
        );
        // Re-injection (as by `remora inject` twice) changes nothing.
        let Outcome::Injected { pod: again, .. } = inject_pod(&pod, "default", &cfg) else {
            panic!("not injected");
        };
        assert_eq!(again, pod);
        // Sidecar mode: the reason says so, and a mark the pod set itself is removed.
        let mut marked = hello();
        marked["metadata"]["annotations"] = json!({CAPTURE_MARK: CAPTURE_BY_CNI});
        let Outcome::Injected { pod, reason, .. } =
            inject_pod(&marked, "default", &Config::default())
        else {
            panic!("not injected");
        };
        assert!(pod["metadata"]["annotations"].get(CAPTURE_MARK).is_none());
        assert!(
            reason.ends_with("; capture: init container remora-init (NET_ADMIN, NET_RAW; injector setting cni.enabled is off)"),
            "{reason}"
        );
        // The proxy's uid changed by an override: the check runs as that uid (the one the
        // plugin exempts); the pod's own remora-init override is not applied, with a warning.
        let mut p = hello();
        p["spec"]["containers"].as_array_mut().unwrap().push(json!({
            "name": "istio-proxy", "image": "auto", "securityContext": {"runAsUser": 1234}
        }));
        p["spec"]["initContainers"]
            .as_array_mut()
            .unwrap()
            .push(json!({
                "name": "remora-init", "securityContext": {"capabilities": {"add": ["SYS_ADMIN"]}}
            }));
        let Outcome::Injected { pod, notes, .. } = inject_pod(&p, "default", &cfg) else {
            panic!("not injected");
        };
        let v = &pod["spec"]["initContainers"][0];
        assert_eq!(v["securityContext"]["runAsUser"], 1234);
        assert_eq!(v["args"][4], "1234");
        assert_eq!(
            v["securityContext"]["capabilities"],
            json!({"drop": ["ALL"]})
        );
        assert!(
            notes.iter().any(|n| n
                .starts_with("CNI mode: the pod's remora-init override container is not applied")),
            "{notes:?}"
        );
        // No capture at all: no validation container, no mark.
        let mut none = hello();
        none["metadata"]["annotations"] = json!({"sidecar.istio.io/interceptionMode": "NONE"});
        let Outcome::Injected { pod, reason, .. } = inject_pod(&none, "default", &cfg) else {
            panic!("not injected");
        };
        assert_eq!(
            names(&pod["spec"]["initContainers"]),
            ["remora-proxy", "setup"]
        );
        assert!(pod["metadata"]["annotations"].get(CAPTURE_MARK).is_none());
        assert!(reason.ends_with("; capture: none (sidecar.istio.io/interceptionMode is NONE)"));
    }

    #[test]
    fn native_layout() {
        let p = injected(&hello());
        assert_eq!(
            names(&p["spec"]["initContainers"]),
            ["remora-proxy", "remora-init", "setup"]
        );
        assert_eq!(names(&p["spec"]["containers"]), ["hello"]);
        assert_eq!(
            names(&p["spec"]["volumes"]),
            [
                "data",
                "remora-rules",
                "remora-podinfo",
                "remora-ca-token",
                "remora-ca-root"
            ]
        );
        assert_eq!(
            p["metadata"]["labels"],
            json!({"app": "hello", "security.istio.io/tlsMode": "istio",
                   "service.istio.io/canonical-name": "hello",
                   "service.istio.io/canonical-revision": "latest"})
        );
        let ann = &p["metadata"]["annotations"];
        assert_eq!(ann[DEFAULT_CONTAINER], "hello");
        assert_eq!(ann[PROM_PORT], "15020");
        assert_eq!(ann[PROM_PATH], "/stats/prometheus");
        let status: Value = serde_json::from_str(ann[STATUS].as_str().unwrap()).unwrap();
        assert_eq!(
            status["initContainers"],
            json!(["remora-proxy", "remora-init"])
        );
        assert_eq!(
            p["spec"]["containers"][0]["readinessProbe"]["httpGet"]["port"],
            15020
        );
        let env = &p["spec"]["initContainers"][0]["env"];
        let probers = env
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == PROBERS_ENV)
            .unwrap();
        let probers: Value = serde_json::from_str(probers["value"].as_str().unwrap()).unwrap();
        assert_eq!(
            probers,
            json!({"/app-health/hello/readyz": {"httpGet": {"path": "/ready", "port": 80}}})
        );
    }

    /// The proxy's `ISTIO_META_WORKLOAD_NAME` of a pod, if it has one.
    fn workload_env(p: &Value) -> Option<String> {
        ["containers", "initContainers"]
            .iter()
            .filter_map(|l| p["spec"][l].as_array())
            .flatten()
            .filter(|c| c["name"] == PROXY_NAME)
            .flat_map(|c| c["env"].as_array().cloned().unwrap_or_default())
            .find(|e| e["name"] == template::WORKLOAD_NAME_ENV)
            .and_then(|e| e["value"].as_str().map(str::to_string))
    }

    #[test]
    fn workload_name_and_canonical_labels_as_istio_sets_them() {
        let rs_owner = json!([{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                               "name": "reviews-v2-5f6d8c9b7", "controller": true}]);
        for (meta, want_wl, want_labels) in [
            // A Deployment's pod (generated name, a ReplicaSet whose name ends in the hash).
            (
                json!({"generateName": "reviews-v2-5f6d8c9b7-", "ownerReferences": rs_owner,
                       "labels": {"app": "reviews", "version": "v2", "pod-template-hash": "5f6d8c9b7"}}),
                Some("reviews-v2"),
                ("reviews", "v2"),
            ),
            // A CronJob's Job's pod; `app.kubernetes.io/*` labels.
            (
                json!({"generateName": "backup-28901234-", "ownerReferences":
                       [{"kind": "Job", "name": "backup-28901234", "controller": true}],
                       "labels": {"app.kubernetes.io/name": "backup", "app.kubernetes.io/version": "1.2"}}),
                Some("backup"),
                ("backup", "1.2"),
            ),
            // A StatefulSet's pod, no app label: the workload names the canonical service.
            (
                json!({"generateName": "db-", "name": "db-0", "ownerReferences":
                       [{"kind": "StatefulSet", "name": "db", "controller": true}]}),
                Some("db"),
                ("db", "latest"),
            ),
            // The pod's own canonical labels are kept.
            (
                json!({"name": "solo", "labels": {"service.istio.io/canonical-name": "mine",
                       "service.istio.io/canonical-revision": "r1", "app": "other"}}),
                Some("solo"),
                ("mine", "r1"),
            ),
        ] {
            let mut p = hello();
            p["metadata"] = meta.clone();
            let out = injected(&p);
            assert_eq!(workload_env(&out).as_deref(), want_wl, "{meta}");
            let l = &out["metadata"]["labels"];
            assert_eq!(
                (
                    l["service.istio.io/canonical-name"].as_str(),
                    l["service.istio.io/canonical-revision"].as_str()
                ),
                (Some(want_labels.0), Some(want_labels.1)),
                "{meta}"
            );
            // Re-injection changes nothing.
            assert_eq!(injected(&out), out, "{meta}");
        }
        // A bare pod with only a generated name: no workload to name (the proxy falls back to
        // its labels and pod name), and so no canonical name, but a revision.
        let mut p = hello();
        p["metadata"] = json!({"generateName": "job-"});
        let out = injected(&p);
        assert_eq!(workload_env(&out), None);
        assert_eq!(
            out["metadata"]["labels"],
            json!({"security.istio.io/tlsMode": "istio",
                   "service.istio.io/canonical-revision": "latest"})
        );
    }

    #[test]
    fn tls_mode_label_keeps_the_pods_own_value_and_is_absent_without_identity() {
        let mut p = hello();
        p["metadata"]["labels"]["security.istio.io/tlsMode"] = json!("disabled");
        let once = injected(&p);
        assert_eq!(
            once["metadata"]["labels"]["security.istio.io/tlsMode"],
            "disabled"
        );
        assert_eq!(injected(&once), once);
        // No labels at all: the label map is created.
        let mut bare = hello();
        bare["metadata"].as_object_mut().unwrap().remove("labels");
        assert_eq!(
            injected(&bare)["metadata"]["labels"],
            json!({"security.istio.io/tlsMode": "istio",
                   "service.istio.io/canonical-name": "hello",
                   "service.istio.io/canonical-revision": "latest"})
        );

        let mut cfg = Config::default();
        cfg.identity.ca_address = Some("off".into());
        let Outcome::Injected { pod: off, .. } = inject_pod(&bare, "default", &cfg) else {
            panic!("not injected");
        };
        assert_eq!(
            off["metadata"]["labels"].get("security.istio.io/tlsMode"),
            None,
            "{off}"
        );
        assert_eq!(
            names(&off["spec"]["volumes"]),
            ["data", "remora-rules", "remora-podinfo"]
        );
        // Turning identity off later: re-injection takes the token and root volumes away (the
        // status names them); a label already on the pod stays, like any pod label.
        let Outcome::Injected { pod: later, .. } = inject_pod(&injected(&bare), "default", &cfg)
        else {
            panic!("not injected");
        };
        assert_eq!(
            names(&later["spec"]["volumes"]),
            ["data", "remora-rules", "remora-podinfo"]
        );
        assert_eq!(
            later["metadata"]["labels"]["security.istio.io/tlsMode"],
            "istio"
        );
    }

    #[test]
    fn identity_volume_names_are_reserved() {
        for name in ["remora-ca-token", "remora-ca-root"] {
            let mut p = hello();
            p["spec"]["volumes"] = json!([{"name": name, "emptyDir": {}}]);
            let o = inject_pod(&p, "default", &Config::default());
            assert!(
                matches!(o, Outcome::Denied(ref m) if m.contains(name) && m.contains("reserved")),
                "{o:?}"
            );
        }
    }

    #[test]
    fn non_native_layout() {
        let mut p = hello();
        p["metadata"]["annotations"] = json!({"sidecar.istio.io/nativeSidecar": "false"});
        let p = injected(&p);
        assert_eq!(
            names(&p["spec"]["initContainers"]),
            ["setup", "remora-init"]
        );
        assert_eq!(names(&p["spec"]["containers"]), ["hello", "remora-proxy"]);
    }

    #[test]
    fn reinjection_changes_nothing() {
        let once = injected(&hello());
        let twice = injected(&once);
        assert_eq!(once, twice);
        // Switching mode on re-injection moves the proxy, never duplicates it.
        let mut flip = once.clone();
        flip["metadata"]["annotations"]["sidecar.istio.io/nativeSidecar"] = json!("false");
        let flipped = injected(&flip);
        assert_eq!(
            names(&flipped["spec"]["initContainers"]),
            ["setup", "remora-init"]
        );
        assert_eq!(
            names(&flipped["spec"]["containers"]),
            ["hello", "remora-proxy"]
        );
        let back = injected(&flipped);
        assert_eq!(back, flipped);
    }

    #[test]
    fn override_containers_merge_and_survive_reinjection() {
        let mut p = hello();
        p["spec"]["containers"].as_array_mut().unwrap().push(json!({
            "name": "istio-proxy", "image": "auto",
            "resources": {"requests": {"cpu": "123m"}},
            "env": [{"name": "EXTRA", "value": "1"}, {"name": "REMORA_LOG_LEVEL", "value": "debug"}],
            "securityContext": {"runAsUser": 1234}
        }));
        let once = injected(&p);
        assert_eq!(names(&once["spec"]["containers"]), ["hello"]);
        let proxy = &once["spec"]["initContainers"][0];
        assert_eq!(proxy["name"], "remora-proxy");
        assert_eq!(proxy["image"], Config::default().proxy.image);
        assert_eq!(proxy["resources"]["requests"]["cpu"], "123m");
        assert_eq!(proxy["securityContext"]["runAsUser"], 1234);
        assert_eq!(proxy["securityContext"]["runAsNonRoot"], true);
        let env = proxy["env"].as_array().unwrap();
        assert!(env.iter().any(|e| e["name"] == "EXTRA"));
        assert_eq!(
            env.iter()
                .filter(|e| e["name"] == "REMORA_LOG_LEVEL")
                .count(),
            1
        );
        assert!(env
            .iter()
            .any(|e| e["name"] == "REMORA_LOG_LEVEL" && e["value"] == "debug"));
        assert!(once["metadata"]["annotations"][OVERRIDES].is_string());
        assert_eq!(injected(&once), once);
    }

    #[test]
    fn bad_annotation_denies() {
        let mut p = hello();
        p["metadata"]["annotations"] = json!({"traffic.sidecar.istio.io/excludeInboundPorts": "*"});
        let o = inject_pod(&p, "default", &Config::default());
        assert!(
            matches!(o, Outcome::Denied(ref m) if m.contains("excludeInboundPorts")),
            "{o:?}"
        );
    }

    #[test]
    fn init_parser_is_the_last_word_on_capture_args() {
        // ".." passes the annotation's character check; remora-init's own parser rejects it.
        let mut p = hello();
        p["metadata"]["annotations"] = json!({"traffic.sidecar.istio.io/excludeInterfaces": ".."});
        let o = inject_pod(&p, "default", &Config::default());
        assert!(
            matches!(o, Outcome::Denied(ref m) if m.contains("remora-init arguments it rejects") && m.contains("-c")),
            "{o:?}"
        );
        p["metadata"]["annotations"] =
            json!({"traffic.sidecar.istio.io/excludeInterfaces": "veth+"});
        assert!(matches!(
            inject_pod(&p, "default", &Config::default()),
            Outcome::Injected { .. }
        ));
    }

    #[test]
    fn skip_returns_reason() {
        let mut p = hello();
        p["spec"]["hostNetwork"] = json!(true);
        assert!(matches!(
            inject_pod(&p, "default", &Config::default()),
            Outcome::Skipped(_)
        ));
    }

    #[test]
    fn the_apps_prometheus_annotations_move_to_the_proxy_and_survive_reinjection() {
        let mut p = hello();
        p["metadata"]["annotations"] =
            json!({"prometheus.io/scrape": "true", "prometheus.io/port": "9000"});
        let once = injected(&p);
        let proxy_env = |pod: &Value| {
            pod["spec"]["initContainers"]
                .as_array()
                .unwrap()
                .iter()
                .find(|c| c["name"] == PROXY_NAME)
                .and_then(|c| {
                    c["env"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .find(|e| e["name"] == metrics_merge::APP_SCRAPE_ENV)
                        .map(|e| e["value"].clone())
                })
        };
        assert_eq!(once["metadata"]["annotations"][PROM_PORT], "15020");
        assert_eq!(
            proxy_env(&once),
            Some(json!(r#"{"port":"9000","scrape":"true"}"#))
        );
        let twice = injected(&once);
        assert_eq!(twice["metadata"]["annotations"][PROM_PORT], "15020");
        assert_eq!(proxy_env(&twice), proxy_env(&once));
        // Opted out: the app's annotations are left as they were.
        p["metadata"]["annotations"]["prometheus.istio.io/merge-metrics"] = json!("false");
        let kept = injected(&p);
        assert_eq!(kept["metadata"]["annotations"][PROM_PORT], "9000");
        assert_eq!(proxy_env(&kept), None);
    }
}
