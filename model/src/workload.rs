//! A pod's workload identity as Istio derives it, shared by the injector (which gives the sidecar
//! its own) and the sidecar's discovery (which names its peers): the workload name from the pod's
//! controller, and the canonical service and revision from its labels.
//!
//! Pure: plain values in, plain values out.

use std::collections::BTreeMap;

/// Istio's label naming a pod's canonical service.
pub const CANONICAL_NAME_LABEL: &str = "service.istio.io/canonical-name";
/// Istio's label naming a pod's canonical revision.
pub const CANONICAL_REVISION_LABEL: &str = "service.istio.io/canonical-revision";
/// The canonical revision of a pod whose labels name none.
pub const DEFAULT_REVISION: &str = "latest";

/// The pod's controlling owner reference (`controller: true`): its kind and name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Owner<'a> {
    pub kind: &'a str,
    pub name: &'a str,
}

/// The workload kind and name of a pod, as Istio's injector derives them
/// (`GetDeployMetaFromPod`): for a pod with a generated name, its controller — a ReplicaSet
/// whose name ends in the pod's `pod-template-hash` is its Deployment (`reviews-v1-5f6d8`
/// → `reviews-v1`), a Job named `<name>-<8 to 10 digits>` is its CronJob's; StatefulSets,
/// DaemonSets, Jobs and others by their own name. Otherwise the pod's name.
pub fn workload_of(
    pod_name: &str,
    generated: bool,
    owner: Option<Owner<'_>>,
    labels: &BTreeMap<String, String>,
) -> (String, String) {
    let pod = || ("Pod".to_string(), pod_name.to_string());
    let Some(owner) = owner.filter(|o| generated && !o.name.is_empty()) else {
        return pod();
    };
    match owner.kind {
        "ReplicaSet" => {
            let hash = labels.get("pod-template-hash").map(String::as_str);
            match hash
                .filter(|h| !h.is_empty())
                .and_then(|h| owner.name.strip_suffix(h))
                .and_then(|n| n.strip_suffix('-'))
            {
                Some(d) if !d.is_empty() => ("Deployment".to_string(), d.to_string()),
                _ => (owner.kind.to_string(), owner.name.to_string()),
            }
        }
        "ReplicationController" => match labels.get("deploymentconfig") {
            Some(dc) if !dc.is_empty() => ("DeploymentConfig".to_string(), dc.clone()),
            _ => (owner.kind.to_string(), owner.name.to_string()),
        },
        "Job" => match cron_job_of(owner.name) {
            Some(c) => ("CronJob".to_string(), c.to_string()),
            None => (owner.kind.to_string(), owner.name.to_string()),
        },
        kind => (kind.to_string(), owner.name.to_string()),
    }
}

/// The CronJob of a Job named `<cronjob>-<8 to 10 digits>` (Istio's `(.+)-\d{8,10}$`).
fn cron_job_of(job: &str) -> Option<&str> {
    let (name, stamp) = job.rsplit_once('-')?;
    let digits = stamp.len();
    ((8..=10).contains(&digits) && stamp.bytes().all(|b| b.is_ascii_digit()) && !name.is_empty())
        .then_some(name)
}

/// The first of `keys` the labels have.
fn first<'a>(labels: &'a BTreeMap<String, String>, keys: &[&str]) -> Option<&'a str> {
    keys.iter().find_map(|k| labels.get(*k).map(String::as_str))
}

/// Istio's canonical service of a pod: `service.istio.io/canonical-name`, else
/// `app.kubernetes.io/name`, else `app`, else the workload name.
pub fn canonical_service<'a>(labels: &'a BTreeMap<String, String>, workload: &'a str) -> &'a str {
    first(
        labels,
        &[CANONICAL_NAME_LABEL, "app.kubernetes.io/name", "app"],
    )
    .unwrap_or(workload)
}

/// Istio's canonical revision of a pod: `service.istio.io/canonical-revision`, else
/// `app.kubernetes.io/version`, else `version`, else `latest`.
pub fn canonical_revision(labels: &BTreeMap<String, String>) -> &str {
    first(
        labels,
        &[
            CANONICAL_REVISION_LABEL,
            "app.kubernetes.io/version",
            "version",
        ],
    )
    .unwrap_or(DEFAULT_REVISION)
}

/// The `app` of the metrics' `*_app` label: `app`, else `app.kubernetes.io/name`.
pub fn app(labels: &BTreeMap<String, String>) -> Option<&str> {
    first(labels, &["app", "app.kubernetes.io/name"])
}

/// The `version` of the metrics' `*_version` label: `version`, else
/// `app.kubernetes.io/version`.
pub fn version(labels: &BTreeMap<String, String>) -> Option<&str> {
    first(labels, &["version", "app.kubernetes.io/version"])
}

/// The namespace and service account of a SPIFFE id `spiffe://<td>/ns/<ns>/sa/<sa>`.
pub fn spiffe_ns_sa(id: &str) -> Option<(&str, &str)> {
    let rest = id.strip_prefix("spiffe://")?;
    let (_, path) = rest.split_once('/')?;
    let mut parts = path.split('/');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some("ns"), Some(ns), Some("sa"), Some(sa)) if !ns.is_empty() && !sa.is_empty() => {
            parts.next().is_none().then_some((ns, sa))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn workload_names_follow_istios_controller_heuristics() {
        let hash = labels(&[("pod-template-hash", "5f6d8c9b7")]);
        let rs = |name| {
            Some(Owner {
                kind: "ReplicaSet",
                name,
            })
        };
        let owner = |kind, name| Some(Owner { kind, name });
        let none = BTreeMap::new();
        for (pod, generated, owner, labels, want) in [
            // A Deployment's pod: the ReplicaSet's name less the template hash.
            (
                "",
                true,
                rs("reviews-v1-5f6d8c9b7"),
                &hash,
                ("Deployment", "reviews-v1"),
            ),
            // A ReplicaSet whose name does not end in the hash stays a ReplicaSet.
            ("", true, rs("plain-rs"), &hash, ("ReplicaSet", "plain-rs")),
            (
                "",
                true,
                rs("reviews-v1-5f6d8c9b7"),
                &none,
                ("ReplicaSet", "reviews-v1-5f6d8c9b7"),
            ),
            (
                "",
                true,
                owner("StatefulSet", "db"),
                &none,
                ("StatefulSet", "db"),
            ),
            (
                "",
                true,
                owner("DaemonSet", "agent"),
                &none,
                ("DaemonSet", "agent"),
            ),
            ("", true, owner("Job", "migrate"), &none, ("Job", "migrate")),
            // A CronJob's Job: `<name>-<8 to 10 digits>`.
            (
                "",
                true,
                owner("Job", "backup-28901234"),
                &none,
                ("CronJob", "backup"),
            ),
            (
                "",
                true,
                owner("Job", "backup-1234567"),
                &none,
                ("Job", "backup-1234567"),
            ),
            (
                "",
                true,
                owner("Job", "backup-12345678901"),
                &none,
                ("Job", "backup-12345678901"),
            ),
            (
                "",
                true,
                owner("ReplicationController", "frontend-1"),
                &labels(&[("deploymentconfig", "frontend")]),
                ("DeploymentConfig", "frontend"),
            ),
            // A pod named by hand is its own workload, whatever owns it.
            (
                "standalone",
                false,
                owner("StatefulSet", "db"),
                &none,
                ("Pod", "standalone"),
            ),
            ("standalone", false, None, &none, ("Pod", "standalone")),
            ("web-abc12", true, None, &none, ("Pod", "web-abc12")),
        ] {
            let got = workload_of(pod, generated, owner, labels);
            assert_eq!(
                (got.0.as_str(), got.1.as_str()),
                want,
                "{pod} {owner:?} {labels:?}"
            );
        }
    }

    #[test]
    fn canonical_labels_follow_istios_order() {
        for (pairs, want) in [
            (vec![], ("wl", "latest")),
            (
                vec![("app", "reviews"), ("version", "v2")],
                ("reviews", "v2"),
            ),
            (
                vec![
                    ("app", "reviews"),
                    ("app.kubernetes.io/name", "reviews-k8s"),
                    ("version", "v2"),
                    ("app.kubernetes.io/version", "2.0"),
                ],
                ("reviews-k8s", "2.0"),
            ),
            (
                vec![
                    ("app", "reviews"),
                    (CANONICAL_NAME_LABEL, "rev"),
                    (CANONICAL_REVISION_LABEL, "r9"),
                    ("version", "v2"),
                ],
                ("rev", "r9"),
            ),
        ] {
            let l = labels(&pairs);
            assert_eq!(
                (canonical_service(&l, "wl"), canonical_revision(&l)),
                want,
                "{pairs:?}"
            );
        }
        let l = labels(&[
            ("app.kubernetes.io/name", "n"),
            ("app.kubernetes.io/version", "1"),
        ]);
        assert_eq!((app(&l), version(&l)), (Some("n"), Some("1")));
        let l = labels(&[
            ("app", "a"),
            ("app.kubernetes.io/name", "n"),
            ("version", "v"),
        ]);
        assert_eq!((app(&l), version(&l)), (Some("a"), Some("v")));
        assert_eq!(
            (app(&BTreeMap::new()), version(&BTreeMap::new())),
            (None, None)
        );
    }

    #[test]
    fn spiffe_ids_give_namespace_and_service_account() {
        assert_eq!(
            spiffe_ns_sa("spiffe://cluster.local/ns/shop/sa/reviews"),
            Some(("shop", "reviews"))
        );
        for bad in [
            "spiffe://cluster.local/ns/shop",
            "spiffe://cluster.local/ns//sa/x",
            "spiffe://cluster.local/ns/a/sa/b/c",
            "http://cluster.local/ns/a/sa/b",
            "cluster.local/ns/a/sa/b",
        ] {
            assert_eq!(spiffe_ns_sa(bad), None, "{bad}");
        }
    }
}
