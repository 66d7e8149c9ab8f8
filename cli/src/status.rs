//! `remora proxy-status` (pure part): per meshed pod, the proxy's rule generation and content
//! hash (from its `/config_dump`) against the hash of the rules ConfigMap it mounts, computed with
//! the proxy's own digest over the files the kubelet would write for that ConfigMap.

use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use serde::Serialize;

use super::dump::{ConfigDump, DumpError, Header};
use super::objects;
use super::table;
use remora_webhook::rules_lint::config_map_files;
use remora_webhook::template::RULES_VOLUME;

/// Whether a proxy runs the rules in its ConfigMap.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum SyncStatus {
    Synced,
    Stale,
    Unreachable,
    /// The proxy answered but the ConfigMap could not be read (for example RBAC).
    Unknown,
}

impl SyncStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            SyncStatus::Synced => "SYNCED",
            SyncStatus::Stale => "STALE",
            SyncStatus::Unreachable => "UNREACHABLE",
            SyncStatus::Unknown => "UNKNOWN",
        }
    }
}

/// One row of the table.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ProxyRow {
    pub name: String,
    pub namespace: String,
    /// The proxy's version (`/config_dump` `version`): skew after an upgrade shows here.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub generation: Option<u64>,
    /// Where the proxy read its rules (`/config_dump` `source`), when it says.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proxy_hash: Option<String>,
    /// `namespace/name` of the rules ConfigMap the pod mounts.
    pub config_map: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub config_map_hash: Option<String>,
    pub status: SyncStatus,
    pub reason: String,
    /// The workload certificate: time left, `WAITING` or `EXPIRED` (`None`: no identity).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cert: Option<String>,
    /// Why the certificate needs attention, if it does.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cert_warning: Option<String>,
    /// Discovery from the control plane: `SYNCED`, `STALE`, `CONNECTING` (`None`: the proxy
    /// watches the API itself, or says nothing).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub discovery: Option<String>,
    /// Why the discovery sync needs attention, if it does.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub discovery_warning: Option<String>,
}

/// The DISCOVERY column and, when not synced, why.
pub fn discovery_state(c: &remora_model::dump::ControlPlaneSync) -> (String, Option<String>) {
    let err = c
        .last_error
        .as_deref()
        .map(|e| format!(": {e}"))
        .unwrap_or_default();
    match c.state.as_str() {
        "synced" => ("SYNCED".into(), None),
        "stale" => (
            "STALE".into(),
            Some(format!(
                "discovery STALE: not connected to the control plane at {}; serving the last state it sent (version {}){err}",
                c.address, c.version_acked
            )),
        ),
        other => (
            other.to_ascii_uppercase(),
            Some(format!(
                "discovery {}: no snapshot from the control plane at {} yet{err}",
                other.to_ascii_uppercase(),
                c.address
            )),
        ),
    }
}

/// The rules ConfigMap a pod mounts (its `remora-rules` volume), else `default`.
pub fn rules_config_map_name(pod: &Pod, default: &str) -> String {
    pod.spec
        .as_ref()
        .and_then(|s| s.volumes.as_ref())
        .and_then(|vols| vols.iter().find(|v| v.name == RULES_VOLUME))
        .and_then(|v| v.config_map.as_ref())
        .map(|c| c.name.as_str())
        .filter(|n| !n.is_empty())
        .unwrap_or(default)
        .to_string()
}

/// The files of a rules ConfigMap as the proxy reads them (`rules_lint::config_map_files`,
/// shared with the validating webhook, which reads ConfigMaps as raw JSON).
pub fn rules_files(cm: Option<&ConfigMap>) -> Result<Vec<(String, Vec<u8>)>, String> {
    let raw = cm
        .map(serde_json::to_value)
        .transpose()
        .map_err(|e| format!("cannot serialize the ConfigMap: {e}"))?;
    config_map_files(raw.as_ref())
}

/// The hash a proxy computes after loading this ConfigMap (`rules::digest::content_hash`).
pub fn config_map_hash(cm: Option<&ConfigMap>) -> Result<String, String> {
    let files = rules_files(cm)?;
    Ok(remora_model::rules::digest::content_hash(
        files.iter().map(|(n, b)| (n.as_str(), b.as_slice())),
    ))
}

/// Builds one row from what was fetched: the pod, its `/config_dump` (or why it could not be
/// fetched) and its ConfigMap's hash (or why it could not be computed).
pub fn row(
    pod: &Pod,
    dump: Result<&ConfigDump, &DumpError>,
    config_map: &str,
    cm_hash: Result<&str, &str>,
) -> ProxyRow {
    let mut r = ProxyRow {
        name: objects::name(&pod.metadata).unwrap_or("?").to_string(),
        namespace: objects::namespace(&pod.metadata).unwrap_or("?").to_string(),
        version: None,
        generation: None,
        source: None,
        proxy_hash: None,
        config_map: config_map.to_string(),
        config_map_hash: cm_hash.ok().map(str::to_string),
        status: SyncStatus::Unreachable,
        reason: String::new(),
        cert: None,
        cert_warning: None,
        discovery: None,
        discovery_warning: None,
    };
    let phase = objects::phase(pod).unwrap_or("Unknown");
    if phase != "Running" {
        r.reason = format!("pod phase is {phase}, not Running");
        return r;
    }
    // `proxy-status` needs only the header: a proxy of another version, whose dump this CLI
    // cannot read as a whole, is still compared (the reason says what it could not read).
    let (dump, unreadable) = match dump {
        Ok(d) => (Header::of(d), None),
        Err(e @ DumpError::Unreadable { header, .. }) => {
            (header.as_ref().clone(), Some(e.to_string()))
        }
        Err(DumpError::Fetch(e)) => {
            r.reason = format!("cannot read the proxy's /config_dump: {e}");
            return r;
        }
        Err(DumpError::NotRemora { .. }) => {
            r.reason = "/config_dump has no generation and hash: not a remora proxy?".into();
            return r;
        }
    };
    r.version = dump.version.clone();
    r.cert = dump.identity.as_ref().map(|c| c.column());
    r.cert_warning = dump.identity.as_ref().and_then(|c| c.warning());
    if let Some(c) = &dump.control_plane {
        let (col, warning) = discovery_state(c);
        r.discovery = Some(col);
        r.discovery_warning = warning;
    }
    // `config_source.source` (api, files, none) when the proxy reports it, else the kind part
    // of the snapshot's `source` label (`files:/etc/remora/rules` -> files).
    r.source = dump
        .config_source
        .as_deref()
        .filter(|s| !s.is_empty())
        .or_else(|| {
            dump.source
                .as_deref()
                .map(|s| s.split(':').next().unwrap_or(s))
        })
        .filter(|s| !s.is_empty())
        .map(str::to_string);
    let (generation, hash) = (dump.generation, dump.hash.clone());
    r.generation = Some(generation);
    r.proxy_hash = Some(hash.clone());
    let cm_hash = match cm_hash {
        Ok(h) => h,
        Err(e) => {
            r.status = SyncStatus::Unknown;
            r.reason = format!("cannot compute the hash of ConfigMap {config_map}: {e}");
            return r;
        }
    };
    if generation == 0 {
        r.status = SyncStatus::Stale;
        r.reason = "the proxy has loaded no rule set yet (generation 0)".into();
    } else if hash != cm_hash {
        r.status = SyncStatus::Stale;
        let lag = if r.source.as_deref() == Some("api") {
            "the proxy watches the ConfigMap through the API, so a change arrives within seconds"
        } else {
            "the kubelet updates ConfigMap volumes within about a minute"
        };
        r.reason = format!(
            "the proxy runs generation {generation} (hash {}), ConfigMap {config_map} has {}: {lag}; if it stays STALE the new rules were probably rejected (kubectl logs {} -c remora-proxy -n {}; remora analyze -n {})",
            table::short_hash(&hash),
            table::short_hash(cm_hash),
            r.name,
            r.namespace,
            r.namespace
        );
    } else {
        r.status = SyncStatus::Synced;
        r.reason = format!("generation {generation} matches ConfigMap {config_map}");
    }
    if let Some(u) = unreadable {
        r.reason = format!("{}; {u}", r.reason);
    }
    r
}

/// The table, then one line per pod that is not SYNCED with the reason.
pub fn render_text(rows: &[ProxyRow]) -> String {
    if rows.is_empty() {
        return "no meshed pods (no pod has a remora-proxy container)\n".to_string();
    }
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.name.clone(),
                r.namespace.clone(),
                r.version.clone().unwrap_or("-".into()),
                r.generation.map(|g| g.to_string()).unwrap_or("-".into()),
                r.source.clone().unwrap_or("-".into()),
                table::short_hash(r.proxy_hash.as_deref().unwrap_or("")),
                table::short_hash(r.config_map_hash.as_deref().unwrap_or("")),
                r.status.as_str().to_string(),
                r.cert.clone().unwrap_or("-".into()),
                r.discovery.clone().unwrap_or("-".into()),
            ]
        })
        .collect();
    let mut out = table::render(
        &[
            "NAME",
            "NAMESPACE",
            "VERSION",
            "GENERATION",
            "SOURCE",
            "PROXY HASH",
            "CONFIGMAP HASH",
            "STATUS",
            "CERT",
            "DISCOVERY",
        ],
        &cells,
    );
    for r in rows.iter().filter(|r| r.status != SyncStatus::Synced) {
        out.push_str(&format!(
            "{}/{}: {}: {}\n",
            r.namespace,
            r.name,
            r.status.as_str(),
            r.reason
        ));
    }
    for r in rows {
        for w in r.cert_warning.iter().chain(r.discovery_warning.iter()) {
            out.push_str(&format!("{}/{}: {w}\n", r.namespace, r.name));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dump::read;
    use base64::Engine as _;
    use remora_model::dump::{
        ApiState, ConfigSourceDump, DiscoveryDump, PoliciesDump, RulesDump, WorkloadDump,
    };
    use remora_model::rules::{snapshot_from_yaml, LoadContext};
    use serde_json::json;

    /// A complete dump (the proxy's own types) at `generation` and `hash`, its rules read from
    /// `source` (`files:...` or `api:...`), `config_source.source` as given (empty: not said).
    fn dump_at(generation: u64, hash: &str, source: &str, config_source: &str) -> ConfigDump {
        let snap = snapshot_from_yaml(&[], &LoadContext::default(), generation).unwrap();
        ConfigDump {
            version: "0.1.0".into(),
            generation,
            hash: hash.into(),
            source: source.into(),
            rules_dir: "/etc/remora/rules".into(),
            rules: RulesDump::of(&snap),
            num_trusted_proxies: 0,
            listeners: Vec::new(),
            workload: WorkloadDump {
                name: "web-1".into(),
                namespace: "shop".into(),
            },
            sniff_timeout_ms: 5000,
            app_probes: Vec::new(),
            uptime_seconds: 60,
            policies: PoliciesDump::default(),
            config_source: ConfigSourceDump {
                source: config_source.into(),
                generation,
                hash: hash.into(),
                configmap: None,
                api: ApiState::default(),
            },
            discovery: DiscoveryDump::off(),
            identity: None,
            gateway: None,
            telemetry_providers: Default::default(),
        }
    }

    fn fetch(e: &str) -> DumpError {
        DumpError::Fetch(e.into())
    }

    fn cm() -> ConfigMap {
        serde_json::from_value(json!({"apiVersion": "v1", "kind": "ConfigMap",
               "metadata": {"name": "remora-mesh-rules", "namespace": "shop"},
               "data": {"vs.yaml": "kind: VirtualService\n", "README": "not read", ".hidden.yaml": "x"},
               "binaryData": {"dr.json": base64::engine::general_purpose::STANDARD.encode("{}")}}))
        .unwrap()
    }

    #[test]
    fn hash_equals_the_proxys_own_over_the_kubelet_files() {
        let dir = tempfile::tempdir().unwrap();
        // What the kubelet writes for cm(): every key, hidden or not.
        std::fs::write(dir.path().join("vs.yaml"), "kind: VirtualService\n").unwrap();
        std::fs::write(dir.path().join("README"), "not read").unwrap();
        std::fs::write(dir.path().join(".hidden.yaml"), "x").unwrap();
        std::fs::write(dir.path().join("dr.json"), "{}").unwrap();
        let inputs = remora_model::rules::load::read_inputs(dir.path()).unwrap();
        assert_eq!(config_map_hash(Some(&cm())).unwrap(), inputs.hash);
        let names: Vec<String> = rules_files(Some(&cm()))
            .unwrap()
            .into_iter()
            .map(|f| f.0)
            .collect();
        assert_eq!(names, ["dr.json", "vs.yaml"]);
        // An absent ConfigMap is the empty directory of the optional volume.
        let empty = tempfile::tempdir().unwrap();
        let inputs = remora_model::rules::load::read_inputs(empty.path()).unwrap();
        assert_eq!(config_map_hash(None).unwrap(), inputs.hash);
        // Invalid base64 in binaryData is refused by the typed ConfigMap already; the
        // shared reader names the key of a value it cannot read.
        assert!(
            serde_json::from_value::<ConfigMap>(json!({"binaryData": {"a.yaml": "***"}})).is_err()
        );
        assert!(
            config_map_files(Some(&json!({"binaryData": {"a.yaml": "***"}})))
                .unwrap_err()
                .contains("binaryData.a.yaml")
        );
    }

    fn pod(phase: &str) -> Pod {
        serde_json::from_value(json!({"metadata": {"name": "web-1", "namespace": "shop"},
               "spec": {"containers": [], "volumes": [{"name": "remora-rules", "configMap": {"name": "my-rules", "optional": true}}]},
               "status": {"phase": phase}}))
        .unwrap()
    }

    #[test]
    fn rows_synced_stale_unreachable_unknown() {
        assert_eq!(
            rules_config_map_name(&pod("Running"), "remora-mesh-rules"),
            "my-rules"
        );
        assert_eq!(
            rules_config_map_name(&Pod::default(), "remora-mesh-rules"),
            "remora-mesh-rules"
        );
        let h = config_map_hash(Some(&cm())).unwrap();
        let dump = dump_at(3, &h, "files:/etc/remora/rules", "");
        let r = row(&pod("Running"), Ok(&dump), "shop/my-rules", Ok(&h));
        assert_eq!(r.status, SyncStatus::Synced, "{}", r.reason);
        assert_eq!(r.generation, Some(3));
        assert_eq!(r.source.as_deref(), Some("files"));
        let api = dump_at(
            4,
            &h,
            "api:configmap/shop/my-rules resourceVersion 41",
            "api",
        );
        assert_eq!(
            row(&pod("Running"), Ok(&api), "c", Ok(&h))
                .source
                .as_deref(),
            Some("api")
        );
        let r = row(&pod("Running"), Ok(&dump), "shop/my-rules", Ok("other"));
        assert_eq!(r.status, SyncStatus::Stale);
        assert!(r.reason.contains("generation 3"), "{}", r.reason);
        assert!(r.reason.contains("the kubelet updates"), "{}", r.reason);
        let api_old = dump_at(4, "0ld", "", "api");
        let r = row(&pod("Running"), Ok(&api_old), "c", Ok(&h));
        assert_eq!(r.status, SyncStatus::Stale);
        assert!(r.reason.contains("through the API"), "{}", r.reason);
        let zero = dump_at(0, "", "", "");
        assert_eq!(
            row(&pod("Running"), Ok(&zero), "c", Ok(&h)).status,
            SyncStatus::Stale
        );
        let r = row(
            &pod("Running"),
            Err(&fetch("HTTP 503: connection refused")),
            "c",
            Ok(&h),
        );
        assert_eq!(r.status, SyncStatus::Unreachable);
        assert!(r.reason.contains("connection refused"));
        let r = row(&pod("Pending"), Ok(&dump), "c", Ok(&h));
        assert_eq!(r.status, SyncStatus::Unreachable);
        assert!(r.reason.contains("Pending"));
        assert_eq!(
            row(&pod("Running"), Ok(&dump), "c", Err("forbidden")).status,
            SyncStatus::Unknown
        );
        assert_eq!(
            row(
                &pod("Running"),
                Err(&read(&json!({"x": 1}), "shop/web-1", "proxy shop/web-1").unwrap_err()),
                "c",
                Ok(&h)
            )
            .status,
            SyncStatus::Unreachable
        );
        // A proxy of another version: compared by its header; the reason names the field this
        // CLI cannot read.
        let old = json!({"version": "0.0.9", "generation": 3, "hash": h, "source": "files:/r",
                         "rules_dir": "/r", "rules": {"generation": 3}});
        let r = row(
            &pod("Running"),
            Err(&read(&old, "shop/web-1", "proxy shop/web-1").unwrap_err()),
            "c",
            Ok(&h),
        );
        assert_eq!(r.status, SyncStatus::Synced, "{}", r.reason);
        assert_eq!(r.version.as_deref(), Some("0.0.9"));
        assert_eq!(r.source.as_deref(), Some("files"));
        assert!(
            r.reason.ends_with(
                "; proxy shop/web-1 serves a config dump this CLI cannot read: rules: missing field `hash`"
            ),
            "{}",
            r.reason
        );
    }

    #[test]
    fn table_rendering() {
        let h = "a".repeat(64);
        let dump = dump_at(12, &h, "", "");
        let mut expiring = dump_at(12, &h, "", "");
        expiring.identity = Some(remora_model::dump::IdentityDump {
            state: "valid".into(),
            expires_in_seconds: Some(1_500),
            ..Default::default()
        });
        let rows = vec![
            row(&pod("Running"), Ok(&dump), "shop/my-rules", Ok(&h)),
            row(
                &pod("Running"),
                Err(&fetch("refused")),
                "shop/my-rules",
                Ok(&h),
            ),
            row(&pod("Running"), Ok(&expiring), "shop/my-rules", Ok(&h)),
        ];
        let text = render_text(&rows);
        // A proxy fed by the control plane, which went away.
        let mut served = dump_at(12, &h, "", "");
        served.discovery.status =
            remora_model::dump::DiscoveryStatus::Running(remora_model::dump::WatchStatus {
                control_plane: Some(Box::new(remora_model::dump::ControlPlaneSync {
                    address: "remora-ca.remora-system.svc:15012".into(),
                    state: "stale".into(),
                    version_acked: 41,
                    last_error: Some("Unavailable: connection refused".into()),
                    ..Default::default()
                })),
                ..Default::default()
            });
        // Read back as the CLI reads a proxy's answer.
        let served = read(&serde_json::to_value(&served).unwrap(), "t", "w").unwrap();
        let text2 = render_text(&[row(&pod("Running"), Ok(&served), "shop/my-rules", Ok(&h))]);
        let l2: Vec<&str> = text2.lines().collect();
        assert!(l2[0].ends_with("CERT   DISCOVERY"), "{}", l2[0]);
        assert!(l2[1].ends_with("-      STALE"), "{}", l2[1]);
        assert_eq!(
            l2[2],
            "shop/web-1: discovery STALE: not connected to the control plane at remora-ca.remora-system.svc:15012; serving the last state it sent (version 41): Unavailable: connection refused"
        );
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "NAME    NAMESPACE   VERSION   GENERATION   SOURCE   PROXY HASH     CONFIGMAP HASH   STATUS        CERT     DISCOVERY"
        );
        assert_eq!(
            lines[1],
            "web-1   shop        0.1.0     12           -        aaaaaaaaaaaa   aaaaaaaaaaaa     SYNCED        -        -"
        );
        assert_eq!(
            lines[2],
            "web-1   shop        -         -            -        -              aaaaaaaaaaaa     UNREACHABLE   -        -"
        );
        assert_eq!(
            lines[3],
            "web-1   shop        0.1.0     12           -        aaaaaaaaaaaa   aaaaaaaaaaaa     SYNCED        25m00s   -"
        );
        assert!(
            lines[4].starts_with("shop/web-1: UNREACHABLE: cannot read"),
            "{}",
            lines[4]
        );
        assert_eq!(
            lines[5],
            "shop/web-1: workload certificate expires in 25m00s and was not renewed yet (remora proxy-config secret shows the last error)"
        );
        assert_eq!(
            render_text(&[]),
            "no meshed pods (no pod has a remora-proxy container)\n"
        );
        let c = |state: &str, left: Option<i64>| crate::dump::CertState {
            state: state.into(),
            expires_in_seconds: left,
        };
        assert_eq!(c("valid", Some(86_000)).column(), "23h53m");
        assert_eq!(c("valid", Some(86_000)).warning(), None);
        assert_eq!(c("expired", Some(-5)).column(), "EXPIRED");
        assert!(c("expired", Some(-5))
            .warning()
            .unwrap()
            .starts_with("workload certificate EXPIRED"));
        assert_eq!(c("waiting", None).column(), "WAITING");
        assert!(c("waiting", None)
            .warning()
            .unwrap()
            .starts_with("no workload certificate issued yet"));
    }
}
