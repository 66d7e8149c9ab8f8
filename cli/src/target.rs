//! What a command's positional argument names, one grammar for `check-inject`, `proxy-config`
//! and `describe`: `NAME` (a pod), `KIND/NAME` or `KIND NAME` (`pod/web-1`, `deploy/reviews-v1`,
//! `pod web-1`), each optionally `NAME.NAMESPACE`, else the namespace of `-n`. And which pod of a
//! workload stands for it.

use k8s_openapi::api::core::v1::Pod;

use crate::{check, objects};

/// A pod, or a workload whose pods to pick from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// `Pod`, `Deployment`, `StatefulSet`, ... (see [`kind_of`]).
    pub kind: &'static str,
    pub name: String,
    /// From `NAME.NAMESPACE`, or `-n`.
    pub namespace: Option<String>,
}

/// Maps `deploy`, `deployments`, `sts`, ... to the kind.
pub fn kind_of(word: &str) -> Option<&'static str> {
    Some(match word.to_ascii_lowercase().as_str() {
        "po" | "pod" | "pods" => "Pod",
        "deploy" | "deployment" | "deployments" => "Deployment",
        "sts" | "statefulset" | "statefulsets" => "StatefulSet",
        "ds" | "daemonset" | "daemonsets" => "DaemonSet",
        "rs" | "replicaset" | "replicasets" => "ReplicaSet",
        "job" | "jobs" => "Job",
        "cj" | "cronjob" | "cronjobs" => "CronJob",
        "rc" | "replicationcontroller" | "replicationcontrollers" => "ReplicationController",
        _ => return None,
    })
}

/// Which kinds a command takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kinds {
    /// Pods and every workload with a pod template (`check-inject`).
    Templates,
    /// Pods and workloads that have pods of their own: not CronJobs (`proxy-config`,
    /// `describe`).
    Pods,
}

/// Parses the positional words; `arg` names the argument in messages (`target`, `pod`).
pub fn parse(
    words: &[String],
    flag_ns: Option<&str>,
    arg: &str,
    kinds: Kinds,
) -> Result<Target, String> {
    let kind_list = match kinds {
        Kinds::Templates => "pod, deploy, sts, ds, rs, job, cronjob, rc",
        Kinds::Pods => "pod, deploy, sts, ds, rs, job, rc",
    };
    let bad_kind =
        |v: &str| format!("{arg}: invalid value {v:?}: KIND/NAME with KIND one of {kind_list}");
    let (whole, kind, rest) = match words {
        [one] => match one.split_once('/') {
            Some((k, rest)) => (one.clone(), kind_of(k).ok_or_else(|| bad_kind(one))?, rest),
            None => (one.clone(), "Pod", one.as_str()),
        },
        [k, n] if !n.contains('/') => {
            let whole = words.join(" ");
            (whole.clone(), kind_of(k).ok_or_else(|| bad_kind(&whole))?, n.as_str())
        }
        [] => {
            return Err(format!(
                "{arg}: missing: name a pod (NAME[.NAMESPACE], pod/NAME) or a workload (deploy/NAME, ...)"
            ))
        }
        _ => {
            return Err(format!(
                "{arg}: invalid value {:?}: expected NAME[.NAMESPACE], pod NAME or KIND/NAME[.NAMESPACE]",
                words.join(" ")
            ))
        }
    };
    if kind == "CronJob" && kinds == Kinds::Pods {
        return Err(format!(
            "{arg}: invalid value {whole:?}: a CronJob has no pods of its own; name its Job or a pod"
        ));
    }
    if rest.is_empty() && whole.contains('/') {
        return Err(format!(
            "{arg}: invalid value {whole:?}: no NAME after the KIND/"
        ));
    }
    let (name, namespace) = split_namespace(rest, flag_ns, arg)?;
    Ok(Target {
        kind,
        name,
        namespace,
    })
}

/// Splits `NAME[.NAMESPACE]`: the namespace is after the last dot (namespaces have none). With
/// `-n`, an argument whose suffix is not that namespace is a name with dots.
pub fn split_namespace(
    v: &str,
    flag_ns: Option<&str>,
    arg: &str,
) -> Result<(String, Option<String>), String> {
    if v.is_empty() {
        return Err(format!(
            "{arg}: invalid value \"\": name a pod (NAME or NAME.NAMESPACE)"
        ));
    }
    match v.rsplit_once('.') {
        Some((name, ns)) if !name.is_empty() && !ns.is_empty() => match flag_ns {
            Some(n) if n != ns => Ok((v.to_string(), Some(n.to_string()))),
            _ => Ok((name.to_string(), Some(ns.to_string()))),
        },
        Some(_) => Err(format!(
            "{arg}: invalid value {v:?}: expected NAME or NAME.NAMESPACE"
        )),
        None => Ok((v.to_string(), flag_ns.map(str::to_string))),
    }
}

/// Whether the pod runs and has the proxy.
pub fn running_meshed(p: &Pod) -> bool {
    running(p) && check::runs_proxy(p)
}

fn running(p: &Pod) -> bool {
    objects::phase(p) == Some("Running")
}

/// Orders a workload's pods best first, the first standing for the workload: running meshed
/// pods, then running ones, then the rest; by name within each.
pub fn rank_pods(pods: &mut [Pod]) {
    pods.sort_by_cached_key(|p| {
        (
            !running_meshed(p),
            !running(p),
            objects::name(&p.metadata).unwrap_or("").to_string(),
        )
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn w(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    fn t(kind: &'static str, name: &str, ns: Option<&str>) -> Target {
        Target {
            kind,
            name: name.into(),
            namespace: ns.map(str::to_string),
        }
    }

    #[test]
    fn one_grammar() {
        let check = |v: &[&str]| parse(&w(v), None, "target", Kinds::Templates);
        assert_eq!(check(&["web-1"]).unwrap(), t("Pod", "web-1", None));
        assert_eq!(check(&["pod", "web-1"]).unwrap(), t("Pod", "web-1", None));
        assert_eq!(
            check(&["deploy/web"]).unwrap(),
            t("Deployment", "web", None)
        );
        assert_eq!(
            check(&["StatefulSets/db"]).unwrap(),
            t("StatefulSet", "db", None)
        );
        assert_eq!(
            check(&["cj", "nightly"]).unwrap(),
            t("CronJob", "nightly", None)
        );
        for bad in [&["svc/web"][..], &["deploy/"], &["a", "b", "c"], &[]] {
            let e = check(bad).unwrap_err();
            assert!(e.starts_with("target:"), "{bad:?}: {e}");
        }

        let pod = |v: &str, ns: Option<&str>| parse(&w(&[v]), ns, "pod", Kinds::Pods);
        assert_eq!(
            pod("pod/web-1.shop", None).unwrap(),
            t("Pod", "web-1", Some("shop"))
        );
        assert_eq!(
            pod("deploy/reviews-v1", Some("bookinfo")).unwrap(),
            t("Deployment", "reviews-v1", Some("bookinfo"))
        );
        assert_eq!(pod("web-1", None).unwrap(), t("Pod", "web-1", None));
        for bad in ["svc/web", "pod/", "cronjob/nightly", "web."] {
            let e = pod(bad, None).unwrap_err();
            assert!(e.starts_with("pod: invalid value"), "{bad}: {e}");
        }
        assert_eq!(
            pod("svc/reviews", None).unwrap_err(),
            "pod: invalid value \"svc/reviews\": KIND/NAME with KIND one of pod, deploy, sts, ds, rs, job, rc"
        );

        let describe = |v: &[&str], ns: Option<&str>| parse(&w(v), ns, "target", Kinds::Pods);
        assert_eq!(
            describe(&["pod", "web-1.shop"], None).unwrap(),
            t("Pod", "web-1", Some("shop"))
        );
        assert_eq!(
            describe(&["deploy/web"], Some("x")).unwrap(),
            t("Deployment", "web", Some("x"))
        );
        for bad in [&[][..], &["svc/web"]] {
            let e = describe(bad, None).unwrap_err();
            assert!(e.starts_with("target:"), "{bad:?}: {e}");
        }
    }

    #[test]
    fn namespace_suffix() {
        let split = |v: &str, ns: Option<&str>| split_namespace(v, ns, "pod");
        assert_eq!(split("web-1", None).unwrap(), ("web-1".into(), None));
        assert_eq!(
            split("web-1.shop", None).unwrap(),
            ("web-1".into(), Some("shop".into()))
        );
        assert_eq!(
            split("web-1.shop", Some("shop")).unwrap(),
            ("web-1".into(), Some("shop".into()))
        );
        // With -n naming another namespace, the dots are part of the pod name.
        assert_eq!(
            split("a.b", Some("shop")).unwrap(),
            ("a.b".into(), Some("shop".into()))
        );
        assert!(split("web.", None).is_err());
        assert!(split("", None).is_err());
    }

    #[test]
    fn ranking() {
        let pod = |name: &str, phase: &str, meshed: bool| {
            let mut containers = vec![json!({"name": "app"})];
            let mut inits = vec![];
            if meshed {
                inits.push(json!({"name": "remora-proxy", "restartPolicy": "Always"}));
                containers.push(json!({"name": "remora-proxy"}));
            }
            serde_json::from_value::<Pod>(
                json!({"metadata": {"name": name}, "status": {"phase": phase},
                   "spec": {"containers": containers, "initContainers": inits}}),
            )
            .unwrap()
        };
        let mut pods = vec![
            pod("a", "Pending", true),
            pod("b", "Running", false),
            pod("d", "Running", true),
            pod("c", "Running", true),
        ];
        rank_pods(&mut pods);
        let names: Vec<&str> = pods
            .iter()
            .map(|p| p.metadata.name.as_deref().unwrap())
            .collect();
        assert_eq!(names, ["c", "d", "b", "a"]);
        assert!(running_meshed(&pods[0]) && !running_meshed(&pods[2]));
    }
}
