//! Config + annotations → the injected containers, volumes and annotations (pure).

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};

use crate::annotations::{Interception, PodOptions};
use crate::ca::publish::{CONFIGMAP as CA_ROOT_CONFIGMAP, KEY as CA_ROOT_KEY};
use crate::config::{Config, Resources};
use crate::probes::PROBERS_ENV;

pub use remora_init::pod::PROXY_CONTAINER as PROXY_NAME;
pub const INIT_NAME: &str = "remora-init";
/// CNI mode's init container: checks, unprivileged, that the node's plugin programmed the capture.
pub const VALIDATION_NAME: &str = "remora-validation";
pub const RULES_VOLUME: &str = "remora-rules";
pub const PODINFO_VOLUME: &str = "remora-podinfo";
pub const RULES_DIR: &str = "/etc/remora/rules";
pub const PODINFO_DIR: &str = "/etc/remora/pod";
pub use remora_init::pod::{INBOUND_PORT, OUTBOUND_PORT};
pub const HEALTH_PORT: u16 = 15021;
pub const PROM_PORT: u16 = 15090;
pub const PROM_PATH: &str = "/stats/prometheus";
/// The projected service-account token the proxy shows the mesh CA.
pub const CA_TOKEN_VOLUME: &str = "remora-ca-token";
pub const CA_TOKEN_DIR: &str = "/var/run/secrets/tokens";
/// The token's file name in [`CA_TOKEN_DIR`].
pub const CA_TOKEN_FILE: &str = "remora-ca-token";
/// The token's lifetime asked of the kubelet (which refreshes it at 80 % of it), as Istio's.
pub const CA_TOKEN_EXPIRATION_SECONDS: i64 = 43_200;
/// The mesh root published in every meshed namespace (ConfigMap `remora-ca-root-cert`).
pub const CA_ROOT_VOLUME: &str = "remora-ca-root";
pub const CA_ROOT_DIR: &str = "/var/run/secrets/remora/ca";
/// Istio's pod label saying the pod's sidecar takes Istio mutual TLS.
pub const TLS_MODE_LABEL: &str = "security.istio.io/tlsMode";
pub const TLS_MODE_ISTIO: &str = "istio";
/// Every volume name the injector may add.
pub const VOLUME_NAMES: [&str; 4] = [
    RULES_VOLUME,
    PODINFO_VOLUME,
    CA_TOKEN_VOLUME,
    CA_ROOT_VOLUME,
];

/// The `remora-init` arguments in istio-iptables form (the shared mapping of the capture
/// annotations, [`remora_init::pod::CaptureOptions::init_args`]).
pub fn init_args(cfg: &Config, o: &PodOptions) -> Vec<String> {
    o.capture.init_args(cfg.proxy_uid)
}

/// The configured resources, or (as in Istio) only the annotated ones when any is annotated.
fn resources(
    base: &Resources,
    req: &BTreeMap<String, String>,
    lim: &BTreeMap<String, String>,
) -> Value {
    let (requests, limits) = if req.is_empty() && lim.is_empty() {
        (base.requests.clone(), base.limits.clone())
    } else {
        (req.clone(), lim.clone())
    };
    let mut out = Map::new();
    if !requests.is_empty() {
        out.insert("requests".into(), json!(requests));
    }
    if !limits.is_empty() {
        out.insert("limits".into(), json!(limits));
    }
    Value::Object(out)
}

/// The `remora-init` container, or `None` when interception is off.
pub fn init_container(cfg: &Config, o: &PodOptions) -> Option<Value> {
    if o.capture.interception == Interception::None {
        return None;
    }
    Some(json!({
        "name": INIT_NAME,
        "image": cfg.init.image,
        "imagePullPolicy": cfg.init.image_pull_policy,
        "command": ["remora-init"],
        "args": init_args(cfg, o),
        "resources": resources(&cfg.init.resources, &BTreeMap::new(), &BTreeMap::new()),
        "securityContext": {
            "allowPrivilegeEscalation": false,
            "capabilities": {"add": ["NET_ADMIN", "NET_RAW"], "drop": ["ALL"]},
            "privileged": false,
            // iptables takes its lock under /run; Istio's init is not read-only either.
            "readOnlyRootFilesystem": false,
            "runAsGroup": 0,
            "runAsNonRoot": false,
            "runAsUser": 0
        }
    }))
}

/// CNI mode's `remora-validation` container, or `None` when interception is off: `remora-init
/// validate` as the proxy's uid (`proxy_uid`, the one the node's plugin exempts) with no
/// capabilities (it passes the `restricted` Pod Security profile), failing the pod with one line
/// when the capture is not in place.
pub fn validation_container(cfg: &Config, o: &PodOptions, proxy_uid: u32) -> Option<Value> {
    if o.capture.interception == Interception::None {
        return None;
    }
    Some(json!({
        "name": VALIDATION_NAME,
        "image": cfg.init.image,
        "imagePullPolicy": cfg.init.image_pull_policy,
        "command": ["remora-init"],
        "args": [
            "validate",
            "--inbound-capture-port",
            INBOUND_PORT.to_string(),
            "--proxy-uid",
            proxy_uid.to_string()
        ],
        "resources": resources(&cfg.init.resources, &BTreeMap::new(), &BTreeMap::new()),
        "securityContext": {
            "allowPrivilegeEscalation": false,
            "capabilities": {"drop": ["ALL"]},
            "privileged": false,
            "readOnlyRootFilesystem": true,
            "runAsGroup": proxy_uid,
            "runAsNonRoot": true,
            "runAsUser": proxy_uid
        }
    }))
}

/// Istio's variable naming the pod's workload (its controller) to the sidecar, for metrics.
pub const WORKLOAD_NAME_ENV: &str = "ISTIO_META_WORKLOAD_NAME";

/// Sets `name=value` in a container's `env` (replacing a variable of that name).
pub fn set_env(c: &mut Value, name: &str, value: &str) {
    if !c.get("env").is_some_and(Value::is_array) {
        c["env"] = json!([]);
    }
    if let Some(env) = c["env"].as_array_mut() {
        env.retain(|e| e.get("name").and_then(Value::as_str) != Some(name));
        env.push(json!({"name": name, "value": value}));
    }
}

fn field_env(name: &str, path: &str) -> Value {
    json!({"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}})
}

/// The `remora-proxy` container. `probers` is the rewritten-probe map (may be empty);
/// `grace` the pod's terminationGracePeriodSeconds when set.
pub fn proxy_container(
    cfg: &Config,
    o: &PodOptions,
    probers: &Map<String, Value>,
    grace: Option<i64>,
) -> Value {
    let mut env = vec![
        field_env("POD_NAME", "metadata.name"),
        field_env("POD_NAMESPACE", "metadata.namespace"),
        field_env("INSTANCE_IP", "status.podIP"),
        field_env("SERVICE_ACCOUNT", "spec.serviceAccountName"),
        json!({"name": "REMORA_LOG_LEVEL", "value": o.log_level}),
        json!({"name": "REMORA_ROOT_NAMESPACE", "value": cfg.root_namespace()}),
    ];
    let identity = cfg.identity();
    if let Some(id) = &identity {
        for (name, value) in [
            ("REMORA_CA_ADDRESS", id.ca_address.clone()),
            (
                "REMORA_CA_ROOT_FILE",
                format!("{CA_ROOT_DIR}/{CA_ROOT_KEY}"),
            ),
            (
                "REMORA_CA_TOKEN_FILE",
                format!("{CA_TOKEN_DIR}/{CA_TOKEN_FILE}"),
            ),
            ("REMORA_TRUST_DOMAIN", id.trust_domain.clone()),
        ] {
            env.push(json!({"name": name, "value": value}));
        }
        if let Some(a) = &id.discovery_address {
            env.push(json!({"name": "REMORA_DISCOVERY_ADDRESS", "value": a}));
        }
    }
    for (name, value) in cfg.mesh.proxy_env() {
        env.push(json!({"name": name, "value": value}));
    }
    if !probers.is_empty() {
        env.push(json!({"name": PROBERS_ENV, "value": Value::Object(probers.clone()).to_string()}));
    }
    // Drain must finish before the kubelet's SIGKILL: stay a second under a short grace period.
    if let Some(g) = grace {
        if g < 6 {
            env.push(json!({"name": "REMORA_DRAIN_SECONDS", "value": (g - 1).max(0).to_string()}));
        }
    }
    let mut readiness = json!({
        "httpGet": {"path": "/healthz/ready", "port": HEALTH_PORT, "scheme": "HTTP"},
        "periodSeconds": o.readiness_period.unwrap_or(15),
        "failureThreshold": o.readiness_failure_threshold.unwrap_or(4),
        "timeoutSeconds": 3
    });
    if let Some(d) = o.readiness_initial_delay {
        readiness["initialDelaySeconds"] = json!(d);
    }
    let mut c = json!({
        "name": PROXY_NAME,
        "image": o.proxy_image.as_deref().unwrap_or(&cfg.proxy.image),
        "imagePullPolicy": cfg.proxy.image_pull_policy,
        "command": ["remora-proxy"],
        "args": ["run"],
        "env": env,
        "ports": [{"containerPort": PROM_PORT, "name": "http-prom", "protocol": "TCP"}],
        "readinessProbe": readiness,
        "startupProbe": {
            "httpGet": {"path": "/healthz/ready", "port": HEALTH_PORT, "scheme": "HTTP"},
            "periodSeconds": 1,
            "failureThreshold": 600,
            "timeoutSeconds": 3
        },
        "resources": resources(&cfg.proxy.resources, &o.requests, &o.limits),
        "securityContext": {
            "allowPrivilegeEscalation": false,
            "capabilities": {"drop": ["ALL"]},
            "privileged": false,
            "readOnlyRootFilesystem": true,
            "runAsGroup": cfg.proxy_uid,
            "runAsNonRoot": true,
            "runAsUser": cfg.proxy_uid
        },
        "volumeMounts": [
            {"name": RULES_VOLUME, "mountPath": RULES_DIR, "readOnly": true},
            {"name": PODINFO_VOLUME, "mountPath": PODINFO_DIR, "readOnly": true}
        ]
    });
    if let Some(mounts) = c["volumeMounts"].as_array_mut() {
        if identity.is_some() {
            mounts.push(
                json!({"name": CA_TOKEN_VOLUME, "mountPath": CA_TOKEN_DIR, "readOnly": true}),
            );
            mounts
                .push(json!({"name": CA_ROOT_VOLUME, "mountPath": CA_ROOT_DIR, "readOnly": true}));
        }
        for (name, def) in &o.user_volume_mounts {
            let mut m = def.clone();
            m["name"] = json!(name);
            mounts.push(m);
        }
    }
    if o.native_sidecar {
        c["restartPolicy"] = json!("Always");
    }
    c
}

/// Gives an injected container `securityContext.seccompProfile: RuntimeDefault` unless it has a
/// profile already (callers skip this when the pod sets `spec.securityContext.seccompProfile`,
/// which then applies to every container; an override container's own profile is merged after).
pub fn default_seccomp(c: &mut Value) {
    if let Some(sc) = c.get_mut("securityContext").and_then(Value::as_object_mut) {
        sc.entry("seccompProfile")
            .or_insert_with(|| json!({"type": "RuntimeDefault"}));
    }
}

/// Merges a pod-declared override container over a rendered one: objects merge key by key,
/// lists of named items (env, ports, volumeMounts) merge by name, other lists and values replace;
/// `name` is kept and `image: auto` ignored.
pub fn apply_override(base: &mut Value, over: &Value) {
    let Some(o) = over.as_object() else { return };
    for (k, v) in o {
        if k == "name" || (k == "image" && v == "auto") {
            continue;
        }
        merge(&mut base[k.as_str()], v);
    }
}

fn merge(base: &mut Value, over: &Value) {
    match (base, over) {
        (Value::Object(b), Value::Object(o)) => {
            for (k, v) in o {
                merge(b.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
        (Value::Array(b), Value::Array(o))
            if o.iter()
                .all(|x| x.get("name").is_some_and(Value::is_string)) =>
        {
            for item in o {
                match b.iter_mut().find(|x| x.get("name") == item.get("name")) {
                    Some(existing) => *existing = item.clone(),
                    None => b.push(item.clone()),
                }
            }
        }
        (b, o) => *b = o.clone(),
    }
}

/// The volumes the proxy mounts. With identity: the projected token for the CA's audience and
/// the root ConfigMap, which is not optional (as Istio's `istio-ca-root-cert`): the kubelet
/// holds the pod until the mesh CA has published it in the namespace.
pub fn volumes(cfg: &Config) -> Vec<Value> {
    let mut v = vec![
        json!({"name": RULES_VOLUME, "configMap": {"name": cfg.rules_config_map, "optional": true}}),
        json!({"name": PODINFO_VOLUME, "downwardAPI": {"items": [
            {"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}}
        ]}}),
    ];
    if let Some(id) = cfg.identity() {
        v.push(json!({"name": CA_TOKEN_VOLUME, "projected": {"sources": [
            {"serviceAccountToken": {
                "audience": id.audience,
                "expirationSeconds": CA_TOKEN_EXPIRATION_SECONDS,
                "path": CA_TOKEN_FILE
            }}
        ]}}));
        v.push(json!({"name": CA_ROOT_VOLUME, "configMap": {"name": CA_ROOT_CONFIGMAP}}));
    }
    v
}

/// The `sidecar.istio.io/status` value: what was injected, so re-injection can replace it.
pub fn status(init: &[&str], containers: &[&str], volumes: &[&str], revision: &str) -> String {
    let list = |v: &[&str]| {
        if v.is_empty() {
            Value::Null
        } else {
            json!(v)
        }
    };
    json!({
        "initContainers": list(init),
        "containers": list(containers),
        "volumes": list(volumes),
        "imagePullSecrets": null,
        "revision": revision
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(pairs: &[(&str, &str)]) -> PodOptions {
        let ann = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        PodOptions::parse(&ann, &Config::default()).unwrap()
    }

    #[test]
    fn the_init_arguments_exclude_the_proxys_own_ports() {
        // remora_init::pod keeps its own copy of the ports for the CNI plugin: same values.
        assert_eq!(
            remora_init::pod::PROXY_PORTS,
            [PROM_PORT, HEALTH_PORT, crate::probes::STATUS_PORT]
        );
    }

    #[test]
    fn default_init_args_are_istios() {
        let args = init_args(&Config::default(), &opts(&[]));
        assert_eq!(
            args,
            [
                "-p",
                "15001",
                "-z",
                "15006",
                "-u",
                "1337",
                "-m",
                "REDIRECT",
                "-i",
                "*",
                "-x",
                "",
                "-b",
                "*",
                "-d",
                "15090,15021,15020"
            ]
        );
    }

    #[test]
    fn traffic_annotations_add_flags() {
        use crate::annotations::*;
        let args = init_args(
            &Config::default(),
            &opts(&[
                (INCLUDE_INBOUND_PORTS, "1,2,3"),
                (EXCLUDE_INBOUND_PORTS, "4,5,6"),
                (INCLUDE_OUTBOUND_PORTS, "80"),
                (EXCLUDE_OUTBOUND_PORTS, "7,8,9"),
                (INCLUDE_OUTBOUND_IP_RANGES, "10.0.0.0/8"),
                (EXCLUDE_OUTBOUND_IP_RANGES, "10.96.0.2/24"),
                (EXCLUDE_INTERFACES, "eth1"),
            ]),
        );
        let s = args.join(" ");
        assert_eq!(
            s,
            "-p 15001 -z 15006 -u 1337 -m REDIRECT -i 10.0.0.0/8 -x 10.96.0.2/24 -b 1,2,3 -d 15090,15021,15020,4,5,6 -q 80 -o 7,8,9 -c eth1"
        );
    }

    #[test]
    fn proxy_container_shape() {
        let c = proxy_container(&Config::default(), &opts(&[]), &Map::new(), Some(30));
        assert_eq!(c["command"], json!(["remora-proxy"]));
        assert_eq!(c["args"], json!(["run"]));
        assert_eq!(c["restartPolicy"], "Always");
        assert_eq!(c["securityContext"]["runAsUser"], 1337);
        assert_eq!(c["startupProbe"]["httpGet"]["port"], 15021);
        let env: Vec<&str> = c["env"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            env,
            [
                "POD_NAME",
                "POD_NAMESPACE",
                "INSTANCE_IP",
                "SERVICE_ACCOUNT",
                "REMORA_LOG_LEVEL",
                "REMORA_ROOT_NAMESPACE",
                "REMORA_CA_ADDRESS",
                "REMORA_CA_ROOT_FILE",
                "REMORA_CA_TOKEN_FILE",
                "REMORA_TRUST_DOMAIN",
                "REMORA_ACCESS_LOG",
                "REMORA_ACCESS_LOG_ENCODING"
            ]
        );
        let cpu = proxy_container(
            &Config::default(),
            &opts(&[("sidecar.istio.io/proxyCPU", "4")]),
            &Map::new(),
            None,
        );
        assert_eq!(cpu["resources"], json!({"requests": {"cpu": "4"}}));
        let short = proxy_container(
            &Config::default(),
            &opts(&[("sidecar.istio.io/nativeSidecar", "false")]),
            &Map::new(),
            Some(3),
        );
        assert!(short.get("restartPolicy").is_none());
        assert!(short["env"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["name"] == "REMORA_DRAIN_SECONDS" && e["value"] == "2"));
    }

    #[test]
    fn identity_parts_follow_the_config() {
        let env = |c: &Value| -> Vec<(String, String)> {
            c["env"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|e| {
                    e["name"].as_str().unwrap().starts_with("REMORA_CA")
                        || e["name"] == "REMORA_TRUST_DOMAIN"
                })
                .map(|e| {
                    (
                        e["name"].as_str().unwrap().into(),
                        e["value"].as_str().unwrap().into(),
                    )
                })
                .collect()
        };
        let mut cfg = Config::default();
        cfg.identity.ca_address = Some("ca.example.com:443".into());
        cfg.identity.audience = Some("mesh-ca".into());
        cfg.identity.trust_domain = Some("example.org".into());
        let c = proxy_container(&cfg, &opts(&[]), &Map::new(), None);
        assert_eq!(
            env(&c),
            [
                ("REMORA_CA_ADDRESS".into(), "ca.example.com:443".into()),
                (
                    "REMORA_CA_ROOT_FILE".into(),
                    "/var/run/secrets/remora/ca/root-cert.pem".into()
                ),
                (
                    "REMORA_CA_TOKEN_FILE".into(),
                    "/var/run/secrets/tokens/remora-ca-token".into()
                ),
                ("REMORA_TRUST_DOMAIN".into(), "example.org".into()),
            ]
        );
        assert_eq!(
            c["volumeMounts"],
            json!([
                {"name": "remora-rules", "mountPath": "/etc/remora/rules", "readOnly": true},
                {"name": "remora-podinfo", "mountPath": "/etc/remora/pod", "readOnly": true},
                {"name": "remora-ca-token", "mountPath": "/var/run/secrets/tokens", "readOnly": true},
                {"name": "remora-ca-root", "mountPath": "/var/run/secrets/remora/ca", "readOnly": true}
            ])
        );
        let v = volumes(&cfg);
        assert_eq!(
            v[2],
            json!({"name": "remora-ca-token", "projected": {"sources": [{"serviceAccountToken":
                {"audience": "mesh-ca", "expirationSeconds": 43200, "path": "remora-ca-token"}}]}})
        );
        assert_eq!(
            v[3],
            json!({"name": "remora-ca-root", "configMap": {"name": "remora-ca-root-cert"}})
        );

        // Discovery from the control plane: one more variable, nothing else changes.
        let env_of = |c: &Value, name: &str| {
            c["env"]
                .as_array()
                .unwrap()
                .iter()
                .find(|e| e["name"] == name)
                .map(|e| e["value"].clone())
        };
        assert_eq!(env_of(&c, "REMORA_DISCOVERY_ADDRESS"), None);
        cfg.identity.discovery_address = Some("ca.example.com:443".into());
        let d = proxy_container(&cfg, &opts(&[]), &Map::new(), None);
        assert_eq!(
            env_of(&d, "REMORA_DISCOVERY_ADDRESS"),
            Some(json!("ca.example.com:443"))
        );
        assert_eq!(env(&d), env(&c));
        cfg.identity.discovery_address = Some("off".into());
        let d = proxy_container(&cfg, &opts(&[]), &Map::new(), None);
        assert_eq!(env_of(&d, "REMORA_DISCOVERY_ADDRESS"), None);

        cfg.identity.ca_address = Some("off".into());
        cfg.identity.discovery_address = Some("ca.example.com:443".into());
        let c = proxy_container(&cfg, &opts(&[]), &Map::new(), None);
        assert!(env(&c).is_empty(), "{:?}", env(&c));
        assert_eq!(
            env_of(&c, "REMORA_DISCOVERY_ADDRESS"),
            None,
            "no identity, no token to subscribe with"
        );
        assert_eq!(c["volumeMounts"].as_array().unwrap().len(), 2);
        let vols = volumes(&cfg);
        let names: Vec<&str> = vols.iter().map(|v| v["name"].as_str().unwrap()).collect();
        assert_eq!(names, ["remora-rules", "remora-podinfo"]);
    }

    #[test]
    fn interception_none_has_no_init() {
        assert!(init_container(
            &Config::default(),
            &opts(&[("sidecar.istio.io/interceptionMode", "NONE")])
        )
        .is_none());
        let c = init_container(&Config::default(), &opts(&[])).unwrap();
        assert_eq!(
            c["securityContext"]["capabilities"]["add"],
            json!(["NET_ADMIN", "NET_RAW"])
        );
    }
}
