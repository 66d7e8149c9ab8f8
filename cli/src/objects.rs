//! The Kubernetes objects the CLI reads, as k8s-openapi's typed structs, and the few accessors
//! the commands share (a pod's phase and containers, a workload's pod selector).

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{Container, Pod, ReplicationController};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, Time};
use serde_json::Value;

/// `metadata.name`, if set.
pub fn name(meta: &ObjectMeta) -> Option<&str> {
    meta.name.as_deref()
}

/// `metadata.namespace`, if set.
pub fn namespace(meta: &ObjectMeta) -> Option<&str> {
    meta.namespace.as_deref()
}

/// `metadata.labels` (empty when absent).
pub fn labels(meta: &ObjectMeta) -> BTreeMap<String, String> {
    meta.labels.clone().unwrap_or_default()
}

/// `metadata.annotations` (empty when absent).
pub fn annotations(meta: &ObjectMeta) -> BTreeMap<String, String> {
    meta.annotations.clone().unwrap_or_default()
}

/// A timestamp as the API server writes it (`2024-05-01T10:00:00Z`).
pub fn timestamp(t: &Time) -> String {
    t.0.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// `status.phase`, if reported.
pub fn phase(pod: &Pod) -> Option<&str> {
    pod.status.as_ref().and_then(|s| s.phase.as_deref())
}

/// The pod's containers, then its init containers (native sidecars among them).
pub fn containers(pod: &Pod) -> impl Iterator<Item = (&Container, bool)> {
    let spec = pod.spec.as_ref();
    let regular = spec.map(|s| s.containers.as_slice()).unwrap_or_default();
    let init = spec
        .and_then(|s| s.init_containers.as_deref())
        .unwrap_or_default();
    regular
        .iter()
        .map(|c| (c, false))
        .chain(init.iter().map(|c| (c, true)))
}

/// A workload the CLI reads by kind (`paths::workload`).
#[derive(Clone, Debug)]
pub enum Workload {
    Deployment(Box<Deployment>),
    StatefulSet(Box<StatefulSet>),
    DaemonSet(Box<DaemonSet>),
    ReplicaSet(Box<ReplicaSet>),
    Job(Box<Job>),
    CronJob(Box<CronJob>),
    ReplicationController(Box<ReplicationController>),
}

impl Workload {
    /// Reads `v` (an object of `kind`, as [`crate::target::kind_of`] names kinds) as its type.
    pub fn from_value(kind: &str, v: Value) -> Result<Workload, String> {
        fn read<K: serde::de::DeserializeOwned>(v: Value, kind: &str) -> Result<K, String> {
            serde_json::from_value(v).map_err(|e| format!("not a valid {kind}: {e}"))
        }
        Ok(match kind {
            "Deployment" => Workload::Deployment(Box::new(read(v, kind)?)),
            "StatefulSet" => Workload::StatefulSet(Box::new(read(v, kind)?)),
            "DaemonSet" => Workload::DaemonSet(Box::new(read(v, kind)?)),
            "ReplicaSet" => Workload::ReplicaSet(Box::new(read(v, kind)?)),
            "Job" => Workload::Job(Box::new(read(v, kind)?)),
            "CronJob" => Workload::CronJob(Box::new(read(v, kind)?)),
            "ReplicationController" => Workload::ReplicationController(Box::new(read(v, kind)?)),
            other => return Err(format!("kind {other} is not supported")),
        })
    }

    /// The selector of the workload's pods: `spec.selector` (a ReplicationController's label
    /// map as `matchLabels`); `None` for a CronJob, whose pods belong to its Jobs.
    pub fn selector(&self) -> Option<LabelSelector> {
        match self {
            Workload::Deployment(w) => Some(w.spec.selector.clone()),
            Workload::StatefulSet(w) => Some(w.spec.selector.clone()),
            Workload::DaemonSet(w) => Some(w.spec.selector.clone()),
            Workload::ReplicaSet(w) => Some(w.spec.selector.clone()),
            Workload::Job(w) => w.spec.as_ref().and_then(|s| s.selector.clone()),
            Workload::CronJob(_) => None,
            Workload::ReplicationController(w) => w
                .spec
                .as_ref()
                .and_then(|s| s.selector.clone())
                .map(|m| LabelSelector {
                    match_labels: Some(m),
                    match_expressions: None,
                }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn workload_selectors() {
        let d = Workload::from_value(
            "Deployment",
            json!({"spec": {"selector": {"matchLabels": {"app": "web"}}, "template": {}}}),
        )
        .unwrap();
        assert_eq!(
            d.selector().and_then(|s| s.match_labels),
            Some([("app".to_string(), "web".to_string())].into())
        );
        let rc = Workload::from_value(
            "ReplicationController",
            json!({"spec": {"selector": {"app": "old"}}}),
        )
        .unwrap();
        assert_eq!(
            rc.selector().and_then(|s| s.match_labels),
            Some([("app".to_string(), "old".to_string())].into())
        );
        let cj = Workload::from_value("CronJob", json!({"spec": {"schedule": "@daily"}})).unwrap();
        assert!(cj.selector().is_none());
        let e = Workload::from_value("Deployment", json!({"spec": {"replicas": "x"}})).unwrap_err();
        assert!(e.starts_with("not a valid Deployment"), "{e}");
        assert!(Workload::from_value("Service", json!({})).is_err());
    }

    #[test]
    fn pod_accessors() {
        let p: Pod = serde_json::from_value(json!({
            "metadata": {"name": "web-1", "labels": {"app": "web"}},
            "spec": {"containers": [{"name": "app"}], "initContainers": [{"name": "init"}]},
            "status": {"phase": "Running"}
        }))
        .unwrap();
        assert_eq!(name(&p.metadata), Some("web-1"));
        assert_eq!(namespace(&p.metadata), None);
        assert_eq!(
            labels(&p.metadata).get("app").map(String::as_str),
            Some("web")
        );
        assert!(annotations(&p.metadata).is_empty());
        assert_eq!(phase(&p), Some("Running"));
        let names: Vec<(&str, bool)> = containers(&p).map(|(c, i)| (c.name.as_str(), i)).collect();
        assert_eq!(names, [("app", false), ("init", true)]);
        assert_eq!(containers(&Pod::default()).count(), 0);
    }
}
