//! The control plane's discovery messages (`remora_model::discovery_api`) → the store's
//! updates (pure): a full snapshot becomes, for each watched part and kind, a list
//! (`Init`, `InitApply`…, `InitDone`) as a watch's list would; a delta becomes `Apply` and
//! `Delete`. Values the store cannot hold (port 0 or above 65535, an address that is not an IP)
//! are left out, as the direct mode leaves them out.

use std::net::IpAddr;
use std::sync::Arc;

use remora_model::discovery_api as api;

use super::store::{Key, Kind, Object, Part, Slice, SliceEndpoint, Svc, SvcPort, Update};

pub const KINDS: [Kind; 3] = [Kind::Services, Kind::EndpointSlices, Kind::Pods];

fn name(s: &str) -> Option<Box<str>> {
    (!s.is_empty()).then(|| Box::from(s))
}

fn port(p: u32) -> Option<u16> {
    u16::try_from(p).ok().filter(|p| *p > 0)
}

pub fn service(s: &api::Service) -> Svc {
    Svc {
        ports: s
            .ports
            .iter()
            .filter_map(|p| {
                Some(SvcPort {
                    port: port(p.port)?,
                    name: name(&p.name),
                    app_protocol: name(&p.app_protocol),
                })
            })
            .collect(),
        external_name: s.external_name,
        cluster_ips: s
            .cluster_ips
            .iter()
            .filter_map(|ip| ip.parse::<IpAddr>().ok())
            .collect(),
    }
}

pub fn slice(s: &api::EndpointSlice) -> Slice {
    Slice {
        service: Box::from(s.service.as_str()),
        ports: s
            .ports
            .iter()
            .filter_map(|p| Some((name(&p.name), port(p.port)?)))
            .collect(),
        endpoints: s
            .endpoints
            .iter()
            .filter_map(|e| {
                Some(SliceEndpoint {
                    ip: e.address.parse().ok()?,
                    ready: e.ready,
                    pod: (!e.pod.is_empty()).then(|| Arc::from(e.pod.as_str())),
                })
            })
            .collect(),
    }
}

fn objects(r: &api::DiscoveryResponse) -> Vec<(Kind, Key, Object)> {
    let mut out = Vec::with_capacity(r.services.len() + r.endpoint_slices.len() + r.pods.len());
    for s in &r.services {
        out.push((
            Kind::Services,
            Key::new(&s.namespace, &s.name),
            Object::Service(service(s)),
        ));
    }
    for s in &r.endpoint_slices {
        out.push((
            Kind::EndpointSlices,
            Key::new(&s.namespace, &s.name),
            Object::Slice(slice(s)),
        ));
    }
    for p in &r.pods {
        out.push((
            Kind::Pods,
            Key::new(&p.namespace, &p.name),
            Object::Pod(
                p.labels.clone(),
                Box::from(p.workload.as_str()),
                name(&p.service_account),
            ),
        ));
    }
    out
}

fn kind_of(k: api::Kind) -> Option<Kind> {
    match k {
        api::Kind::Service => Some(Kind::Services),
        api::Kind::EndpointSlice => Some(Kind::EndpointSlices),
        api::Kind::Pod => Some(Kind::Pods),
        api::Kind::Unspecified => None,
    }
}

/// The store updates of one response, for a subscription over `parts`.
pub fn updates(r: &api::DiscoveryResponse, parts: &[Part]) -> Vec<(Kind, Part, Update)> {
    let mut out = Vec::new();
    let objs = objects(r);
    if r.full {
        for part in parts {
            for kind in KINDS {
                out.push((kind, part.clone(), Update::Init));
                for (k, key, obj) in &objs {
                    if *k == kind && part.covers(&key.namespace) {
                        out.push((
                            kind,
                            part.clone(),
                            Update::InitApply(key.clone(), obj.clone()),
                        ));
                    }
                }
                out.push((kind, part.clone(), Update::InitDone));
            }
        }
        return out;
    }
    let part_of = |ns: &str| parts.iter().find(|p| p.covers(ns)).cloned();
    for (kind, key, obj) in objs {
        if let Some(part) = part_of(&key.namespace) {
            out.push((kind, part, Update::Apply(key, obj)));
        }
    }
    for rm in &r.removed {
        let (Some(kind), Some(part)) = (kind_of(rm.kind()), part_of(&rm.namespace)) else {
            continue;
        };
        out.push((
            kind,
            part,
            Update::Delete(Key::new(&rm.namespace, &rm.name)),
        ));
    }
    out
}

/// The namespaces to ask for: empty (every namespace) when a part is the whole cluster.
pub fn namespaces(parts: &[Part]) -> Vec<String> {
    if parts.contains(&Part::All) {
        return Vec::new();
    }
    parts
        .iter()
        .filter_map(|p| match p {
            Part::Namespace(n) => Some(n.to_string()),
            Part::All => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discovery::store::{Index, Store};

    fn response(full: bool) -> api::DiscoveryResponse {
        api::DiscoveryResponse {
            version: 3,
            full,
            services: vec![api::Service {
                namespace: "shop".into(),
                name: "reviews".into(),
                ports: vec![
                    api::ServicePort {
                        port: 9080,
                        name: "http".into(),
                        app_protocol: String::new(),
                    },
                    api::ServicePort {
                        port: 70_000,
                        name: "bad".into(),
                        app_protocol: String::new(),
                    },
                ],
                external_name: false,
                cluster_ips: vec!["10.96.0.10".into(), "nonsense".into()],
            }],
            endpoint_slices: vec![api::EndpointSlice {
                namespace: "shop".into(),
                name: "reviews-1".into(),
                service: "reviews".into(),
                ports: vec![api::SlicePort {
                    name: "http".into(),
                    port: 8080,
                }],
                endpoints: vec![
                    api::Endpoint {
                        address: "10.0.0.1".into(),
                        ready: true,
                        pod: "reviews-v1-a".into(),
                    },
                    api::Endpoint {
                        address: "10.0.0.2".into(),
                        ready: false,
                        pod: String::new(),
                    },
                ],
            }],
            pods: vec![api::Pod {
                namespace: "shop".into(),
                name: "reviews-v1-a".into(),
                labels: [("version".to_string(), "v1".to_string())].into(),
                workload: "reviews-v1".into(),
                service_account: "bookinfo-reviews".into(),
            }],
            removed: vec![],
        }
    }

    #[test]
    fn a_snapshot_lists_every_kind_and_a_delta_applies_and_deletes() {
        let shop = Part::Namespace(Arc::from("shop"));
        let parts = vec![shop.clone(), Part::Namespace(Arc::from("remora-system"))];
        let mut store = Store::new();
        for (kind, part, u) in updates(&response(true), &parts) {
            store.apply(kind, &part, u);
        }
        for kind in KINDS {
            for p in &parts {
                assert!(store.synced_part(kind, p), "{kind:?} {p}");
            }
        }
        let idx = Index::build(&store, "cluster.local", &|_, _| true);
        let host = idx.host("reviews.shop.svc.cluster.local").unwrap();
        assert_eq!(host.ports.len(), 1, "port 70000 left out");
        let eps: Vec<String> = host.ports[0]
            .endpoints
            .iter()
            .map(|e| e.addr.to_string())
            .collect();
        assert_eq!(eps, ["10.0.0.1:8080"], "ready endpoints only");
        assert_eq!(
            idx.pod_of_ip("10.0.0.1".parse().unwrap())
                .map(|p| p.workload.to_string()),
            Some("reviews-v1".to_string())
        );
        assert_eq!(
            idx.pod_of_ip("10.0.0.1".parse().unwrap())
                .and_then(|p| p.service_account.clone())
                .as_deref(),
            Some("bookinfo-reviews")
        );
        assert_eq!(
            idx.host_of_cluster_ip("10.96.0.10".parse().unwrap()),
            Some("reviews.shop.svc.cluster.local")
        );

        // A delta: the slice changes, the service of another namespace (not watched) is
        // ignored, then the slice is removed.
        let mut d = response(false);
        d.services[0].namespace = "books".into();
        d.endpoint_slices[0].endpoints[1].ready = true;
        d.pods.clear();
        let u = updates(&d, &parts);
        assert_eq!(u.len(), 1, "{u:?}");
        for (kind, part, u) in u {
            store.apply(kind, &part, u);
        }
        let idx = Index::build(&store, "cluster.local", &|_, _| true);
        assert_eq!(
            idx.host("reviews.shop").map(|h| h.ports[0].endpoints.len()),
            Some(2)
        );
        let rm = api::DiscoveryResponse {
            version: 5,
            removed: vec![api::Removed {
                kind: api::Kind::EndpointSlice as i32,
                namespace: "shop".into(),
                name: "reviews-1".into(),
            }],
            ..Default::default()
        };
        for (kind, part, u) in updates(&rm, &parts) {
            store.apply(kind, &part, u);
        }
        let idx = Index::build(&store, "cluster.local", &|_, _| true);
        assert_eq!(
            idx.host("reviews.shop").map(|h| h.ports[0].endpoints.len()),
            Some(0)
        );
        assert_eq!(namespaces(&parts), ["shop", "remora-system"]);
        assert!(namespaces(&[Part::All, shop]).is_empty());
    }
}
