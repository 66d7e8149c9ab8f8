//! Pass a pod through, or capture it with which `remora-init` arguments (pure).
//!
//! The arguments come from `remora_init::pod::CaptureOptions::init_args`, the mapping the
//! injector renders the init container's arguments with: a pod gets the same rules in both
//! modes.

use remora_init::pod::{
    CaptureOptions, Interception, CAPTURE_BY_CNI, CAPTURE_MARK, DEFAULT_PROXY_UID,
};

use crate::podinfo::PodInfo;
use crate::spec::PodRef;

/// What to do for one pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Leave the pod's network as the previous plugins made it; why.
    PassThrough(String),
    /// Program the capture with these `remora-init` arguments (program name not included); why.
    Capture { args: Vec<String>, why: String },
}

/// The decision that needs no pod lookup: a runtime call without a Kubernetes pod, or a pod in
/// an excluded namespace, is passed through.
pub fn before_lookup(pod: Option<&PodRef>, exclude_namespaces: &[String]) -> Option<Decision> {
    match pod {
        None => Some(Decision::PassThrough(
            "CNI_ARGS names no Kubernetes pod (K8S_POD_NAMESPACE, K8S_POD_NAME)".into(),
        )),
        Some(p) if exclude_namespaces.contains(&p.namespace) => Some(Decision::PassThrough(
            format!("namespace {} is excluded (excludeNamespaces)", p.namespace),
        )),
        Some(_) => None,
    }
}

/// The decision for a pod; `Err` is one line naming what is wrong with the pod.
pub fn decide(pod: &PodInfo) -> Result<Decision, String> {
    if pod.host_network {
        return Ok(Decision::PassThrough(
            "host-network pod: its network is the node's, never captured".into(),
        ));
    }
    match pod.annotations.get(CAPTURE_MARK).map(String::as_str) {
        Some(CAPTURE_BY_CNI) => {}
        Some(other) => {
            return Ok(Decision::PassThrough(format!(
                "annotation {CAPTURE_MARK} is {other:?}, not {CAPTURE_BY_CNI:?}: not captured by the CNI plugin"
            )))
        }
        None => {
            return Ok(Decision::PassThrough(format!(
                "no annotation {CAPTURE_MARK}: {CAPTURE_BY_CNI:?} (not injected in CNI mode)"
            )))
        }
    }
    let (opts, errors) = CaptureOptions::parse(&pod.annotations);
    if !errors.is_empty() {
        return Err(errors.join("; "));
    }
    if opts.interception == Interception::None {
        return Ok(Decision::PassThrough(
            "sidecar.istio.io/interceptionMode is NONE".into(),
        ));
    }
    let (uid, whose) = match pod.proxy_uid {
        Some(0) => {
            return Err(format!(
                "the {} container runs as uid 0: exempting uid 0 from capture would leave every root process uncaptured",
                remora_init::pod::PROXY_CONTAINER
            ))
        }
        Some(uid) => (uid, "the proxy container's runAsUser"),
        None => (DEFAULT_PROXY_UID, "the default"),
    };
    Ok(Decision::Capture {
        args: opts.init_args(uid),
        why: format!("marked {CAPTURE_MARK}: {CAPTURE_BY_CNI}; proxy uid {uid} ({whose})"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn pod(ann: &[(&str, &str)]) -> PodInfo {
        PodInfo {
            annotations: ann
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>(),
            host_network: false,
            proxy_uid: None,
        }
    }

    const MARK: (&str, &str) = (CAPTURE_MARK, CAPTURE_BY_CNI);

    fn args_of(d: Decision) -> Vec<String> {
        match d {
            Decision::Capture { args, .. } => args,
            other => panic!("expected capture, got {other:?}"),
        }
    }

    #[test]
    fn table() {
        let pass = |p: &PodInfo, want: &str| match decide(p).unwrap() {
            Decision::PassThrough(why) => assert!(why.contains(want), "{why}"),
            other => panic!("expected pass-through ({want}), got {other:?}"),
        };
        pass(&pod(&[]), "no annotation remora.dev/capture");
        pass(&pod(&[(CAPTURE_MARK, "init")]), "is \"init\"");
        pass(
            &PodInfo {
                host_network: true,
                ..pod(&[MARK])
            },
            "host-network",
        );
        pass(
            &pod(&[MARK, ("sidecar.istio.io/interceptionMode", "NONE")]),
            "NONE",
        );
        // The injector's arguments for the same annotations.
        let a = args_of(decide(&pod(&[MARK])).unwrap());
        assert_eq!(
            a.join(" "),
            "-p 15001 -z 15006 -u 1337 -m REDIRECT -i * -x  -b * -d 15090,15021,15020"
        );
        let a = args_of(
            decide(&PodInfo {
                proxy_uid: Some(2000),
                ..pod(&[
                    MARK,
                    ("traffic.sidecar.istio.io/excludeOutboundPorts", "53"),
                ])
            })
            .unwrap(),
        );
        assert!(
            a.join(" ").contains("-u 2000") && a.join(" ").ends_with("-o 53"),
            "{a:?}"
        );
        let e = decide(&pod(&[
            MARK,
            ("traffic.sidecar.istio.io/includeInboundPorts", "x"),
        ]))
        .unwrap_err();
        assert!(
            e.starts_with("annotation traffic.sidecar.istio.io/includeInboundPorts: invalid value"),
            "{e}"
        );
        let e = decide(&PodInfo {
            proxy_uid: Some(0),
            ..pod(&[MARK])
        })
        .unwrap_err();
        assert!(e.contains("uid 0"), "{e}");
    }

    #[test]
    fn before_lookup_table() {
        let excluded = vec!["kube-system".to_string()];
        assert!(matches!(
            before_lookup(None, &excluded),
            Some(Decision::PassThrough(_))
        ));
        let r = |ns: &str| PodRef {
            namespace: ns.into(),
            name: "p".into(),
        };
        assert!(matches!(
            before_lookup(Some(&r("kube-system")), &excluded),
            Some(Decision::PassThrough(w)) if w.contains("excluded")
        ));
        assert_eq!(before_lookup(Some(&r("shop")), &excluded), None);
    }
}
