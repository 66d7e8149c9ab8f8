//! Kubernetes objects → the discovery service's wire messages (pure): the same reading of
//! Services, EndpointSlices and Pods' metadata as the proxy's direct mode makes
//! (`remora-proxy`'s `discovery::kube`): TCP ports only, an endpoint's first address, ready
//! meaning ready and not terminating, the pod's workload as Istio names it. Of a Pod only its
//! metadata and `spec.serviceAccountName` are kept (no containers, no environment).

use k8s_openapi::api::core::v1::{Pod as KPod, Service as KService};
use k8s_openapi::api::discovery::v1::EndpointSlice as KSlice;
use kube::ResourceExt;
use remora_model::discovery_api::{Endpoint, EndpointSlice, Pod, Service, ServicePort, SlicePort};

fn tcp(protocol: Option<&str>) -> bool {
    protocol.is_none_or(|p| p == "TCP")
}

/// A Service as routing needs it.
pub fn service(s: &KService) -> Service {
    let spec = s.spec.as_ref();
    let cluster_ips = spec
        .map(|spec| {
            spec.cluster_ips
                .as_deref()
                .filter(|v| !v.is_empty())
                .map(<[String]>::to_vec)
                .or_else(|| spec.cluster_ip.clone().map(|ip| vec![ip]))
                .unwrap_or_default()
        })
        .unwrap_or_default()
        .into_iter()
        .filter(|ip| ip.parse::<std::net::IpAddr>().is_ok())
        .collect();
    Service {
        namespace: s.namespace().unwrap_or_default(),
        name: s.name_any(),
        external_name: spec.and_then(|s| s.type_.as_deref()) == Some("ExternalName"),
        cluster_ips,
        ports: spec
            .and_then(|s| s.ports.as_ref())
            .map(|ps| {
                ps.iter()
                    .filter(|p| tcp(p.protocol.as_deref()))
                    .filter_map(|p| {
                        Some(ServicePort {
                            port: u16::try_from(p.port).ok().filter(|p| *p > 0)?.into(),
                            name: p.name.clone().unwrap_or_default(),
                            app_protocol: p.app_protocol.clone().unwrap_or_default(),
                        })
                    })
                    .collect()
            })
            .unwrap_or_default(),
    }
}

/// Who may see a Service: its `networking.istio.io/exportTo` annotation.
pub fn export(s: &KService, default: &[String]) -> super::cache::Export {
    let ns = s.namespace().unwrap_or_default();
    super::cache::Export::parse_or(
        &ns,
        s.annotations()
            .get(super::cache::EXPORT_TO)
            .map(String::as_str),
        default,
    )
}

/// An EndpointSlice as routing needs it; `None` for one without a service or with FQDN
/// addresses.
pub fn slice(s: &KSlice) -> Option<EndpointSlice> {
    if !matches!(s.address_type.as_str(), "IPv4" | "IPv6") {
        return None;
    }
    let service = s.labels().get("kubernetes.io/service-name")?.clone();
    let ports = s
        .ports
        .iter()
        .flatten()
        .filter(|p| tcp(p.protocol.as_deref()))
        .filter_map(|p| {
            Some(SlicePort {
                name: p.name.clone().unwrap_or_default(),
                port: u16::try_from(p.port?).ok()?.into(),
            })
        })
        .collect();
    let endpoints = s
        .endpoints
        .iter()
        .flatten()
        .filter_map(|e| {
            let ip: std::net::IpAddr = e.addresses.first()?.parse().ok()?;
            let c = e.conditions.as_ref();
            let ready = c.and_then(|c| c.ready).unwrap_or(true)
                && !c.and_then(|c| c.terminating).unwrap_or(false);
            let pod = e
                .target_ref
                .as_ref()
                .filter(|r| r.kind.as_deref() == Some("Pod"))
                .and_then(|r| r.name.clone())
                .unwrap_or_default();
            Some(Endpoint {
                address: ip.to_string(),
                ready,
                pod,
            })
        })
        .collect();
    Some(EndpointSlice {
        namespace: s.namespace().unwrap_or_default(),
        name: s.name_any(),
        service,
        ports,
        endpoints,
    })
}

/// A pod's labels, its workload (its controller, as Istio names it) and its service account
/// (`spec.serviceAccountName`, which the API server sets to `default` when the pod names none).
pub fn pod(p: &KPod) -> Pod {
    let m = &p.metadata;
    let labels = p.labels().clone();
    let owner = m
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true))
        .map(|o| remora_model::workload::Owner {
            kind: &o.kind,
            name: &o.name,
        });
    let generated = m.generate_name.as_deref().is_some_and(|g| !g.is_empty());
    let name = m.name.as_deref().unwrap_or("");
    let (_, workload) = remora_model::workload::workload_of(name, generated, owner, &labels);
    Pod {
        namespace: m.namespace.clone().unwrap_or_default(),
        name: name.to_string(),
        labels: labels.into_iter().collect(),
        workload,
        service_account: p
            .spec
            .as_ref()
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn objects_as_proxies_get_them() {
        let s: KService = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "reviews", "namespace": "shop"},
            "spec": {"clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10", "fd00::10"],
                     "ports": [{"name": "http", "port": 9080, "appProtocol": "http"},
                               {"name": "dns", "port": 53, "protocol": "UDP"}]}
        }))
        .unwrap();
        let w = service(&s);
        assert_eq!((w.namespace.as_str(), w.name.as_str()), ("shop", "reviews"));
        assert_eq!(w.cluster_ips, ["10.96.0.10", "fd00::10"]);
        assert_eq!(w.ports.len(), 1);
        assert_eq!(
            (w.ports[0].port, w.ports[0].app_protocol.as_str()),
            (9080, "http")
        );
        let headless: KService = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "h", "namespace": "shop"},
            "spec": {"clusterIP": "None", "type": "ClusterIP"}
        }))
        .unwrap();
        assert!(service(&headless).cluster_ips.is_empty());
        assert_eq!(export(&headless, &[]), crate::discovery::cache::Export::All);
        // Without the annotation, the mesh's defaultServiceExportTo.
        assert!(!export(&headless, &[".".to_string()]).visible_to("books"));
        let mut private = headless.clone();
        private.metadata.annotations =
            Some([("networking.istio.io/exportTo".to_string(), ".".to_string())].into());
        assert!(!export(&private, &[]).visible_to("books"));
        assert!(export(&private, &[]).visible_to("shop"));
        // The annotation wins over the mesh's default.
        assert!(!export(&private, &["*".to_string()]).visible_to("books"));

        let es: KSlice = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "reviews-x", "namespace": "shop",
                          "labels": {"kubernetes.io/service-name": "reviews"}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            "endpoints": [
                {"addresses": ["10.0.0.1"], "conditions": {"ready": true},
                 "targetRef": {"kind": "Pod", "name": "reviews-1", "namespace": "shop"}},
                {"addresses": ["10.0.0.3"], "conditions": {"ready": false, "terminating": true}},
                {"addresses": ["not-an-ip"]}
            ]
        }))
        .unwrap();
        let w = slice(&es).unwrap();
        assert_eq!(w.service, "reviews");
        assert_eq!(w.ports[0].port, 8080);
        let eps: Vec<(&str, bool, &str)> = w
            .endpoints
            .iter()
            .map(|e| (e.address.as_str(), e.ready, e.pod.as_str()))
            .collect();
        assert_eq!(
            eps,
            [("10.0.0.1", true, "reviews-1"), ("10.0.0.3", false, "")]
        );
        let mut fq = es.clone();
        fq.address_type = "FQDN".into();
        assert!(slice(&fq).is_none());

        let p: KPod = serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "reviews-v1-5d8f-abcde", "namespace": "shop",
                         "generateName": "reviews-v1-5d8f-",
                         "labels": {"app": "reviews", "pod-template-hash": "5d8f"},
                         "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                             "name": "reviews-v1-5d8f", "uid": "u", "controller": true}]},
            "spec": {"serviceAccountName": "bookinfo-reviews",
                     "containers": [{"name": "app", "image": "reviews:v1",
                                     "env": [{"name": "SECRET", "value": "s3cr3t"}]}]}
        }))
        .unwrap();
        let w = pod(&p);
        assert_eq!(w.workload, "reviews-v1");
        assert_eq!(w.labels["app"], "reviews");
        assert_eq!(w.service_account, "bookinfo-reviews");
        // Nothing of the spec but the service account is sent.
        let bytes = prost::Message::encode_to_vec(&w);
        assert!(!String::from_utf8_lossy(&bytes).contains("s3cr3t"));
        let mut bare = p.clone();
        bare.spec = None;
        assert_eq!(pod(&bare).service_account, "", "not known: empty");
    }
}
