//! A generated cluster for the discovery benchmark (`discovery_bench.rs`): `namespaces`
//! namespaces, `services` Services spread over them (each with one EndpointSlice, two TCP
//! ports), and `pods` pods spread over the Services (each an endpoint of its Service's slice,
//! with labels, a unique IP and a ReplicaSet owner), as JSON objects the way an API server
//! answers; and the routes that serve them on a [`RecordedApi`]: cluster-wide (the control
//! plane's watches) and per namespace (a sidecar's watches in direct mode, and its rules
//! ConfigMap), lists paged by 500 with `continue` tokens, each watch held open after a
//! BOOKMARK. The objects are pure values; `serve` only registers routes.

use anyhow::{bail, Result};
use serde_json::{json, Value};

use crate::apiserver::{RecordedApi, Reply};

/// Items per list page (the page size kube-runtime's watcher asks, `limit=500`).
pub const PAGE: usize = 500;

pub const SERVICES: &str = "/api/v1/services";
pub const SLICES: &str = "/apis/discovery.k8s.io/v1/endpointslices";
pub const PODS: &str = "/api/v1/pods";
pub const SIDECARS: &str = "/apis/networking.istio.io/v1/sidecars";

/// The cluster's size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shape {
    pub namespaces: usize,
    pub services: usize,
    pub pods: usize,
}

impl Shape {
    /// Every namespace holds a Service, every Service a pod; addresses stay unique.
    pub fn check(&self) -> Result<()> {
        if self.namespaces == 0 || self.namespaces > 1000 {
            bail!("--namespaces {}: must be 1 to 1000", self.namespaces);
        }
        if self.services < self.namespaces || self.services > 60_000 {
            bail!(
                "--services {}: must be at least --namespaces ({}) and at most 60000",
                self.services,
                self.namespaces
            );
        }
        if self.pods < self.services || self.pods > 1_000_000 {
            bail!(
                "--pods {}: must be at least --services ({}) and at most 1000000",
                self.pods,
                self.services
            );
        }
        Ok(())
    }

    /// Services of namespace `ns` (Service `i` lives in namespace `i % namespaces`).
    pub fn services_in(&self, ns: usize) -> usize {
        (self.services + self.namespaces - 1 - ns) / self.namespaces
    }

    /// Pods behind Service `i` (pod `k` belongs to Service `k % services`).
    pub fn pods_of(&self, svc: usize) -> usize {
        (self.pods + self.services - 1 - svc) / self.services
    }
}

pub fn ns_name(i: usize) -> String {
    format!("ns-{i:03}")
}

/// The name of the `j`-th Service of a namespace.
pub fn svc_name(j: usize) -> String {
    format!("svc-{j:03}")
}

/// A unique IPv4 address for pod `k` (10.1.0.0 upwards).
pub fn pod_ip(k: usize) -> String {
    let n = k + (1 << 16);
    format!("10.{}.{}.{}", n >> 16, (n >> 8) & 0xff, n & 0xff)
}

/// The generated objects, each list in a stable order.
pub struct Cluster {
    pub shape: Shape,
    pub services: Vec<Value>,
    pub slices: Vec<Value>,
    pub pods: Vec<Value>,
}

fn service(ns: &str, name: &str, i: usize) -> Value {
    let ip = format!("10.96.{}.{}", i / 250, i % 250 + 1);
    json!({"kind": "Service", "apiVersion": "v1",
        "metadata": {"name": name, "namespace": ns, "uid": format!("00000000-0000-4000-8000-{i:012}"),
                     "resourceVersion": format!("{}", 1000 + i), "creationTimestamp": "2026-11-20T10:00:00Z",
                     "labels": {"app": name, "app.kubernetes.io/part-of": "bench"}},
        "spec": {"type": "ClusterIP", "clusterIP": ip, "clusterIPs": [ip],
                 "ipFamilies": ["IPv4"], "ipFamilyPolicy": "SingleStack",
                 "selector": {"app": name}, "sessionAffinity": "None", "internalTrafficPolicy": "Cluster",
                 "ports": [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"},
                           {"name": "grpc", "port": 9090, "targetPort": 9090, "protocol": "TCP"}]},
        "status": {"loadBalancer": {}}})
}

fn pod_name(svc: &str, e: usize) -> String {
    format!("{svc}-v{}-7d9c5b8f6-{e:05}", e % 2 + 1)
}

/// The name of Service `svc`'s EndpointSlice.
pub fn slice_name(svc: &str) -> String {
    format!("{svc}-abcde")
}

/// The EndpointSlice of Service `name` (global index `i`) with endpoints `pods` (global pod
/// indexes), its `grpc` port `grpc_port`, at `rv`.
pub fn slice(ns: &str, name: &str, i: usize, pods: &[usize], grpc_port: u16, rv: &str) -> Value {
    let eps: Vec<Value> = pods
        .iter()
        .enumerate()
        .map(|(e, k)| {
            json!({"addresses": [pod_ip(*k)],
                "conditions": {"ready": true, "serving": true, "terminating": false},
                "nodeName": format!("node-{}", k % 50), "zone": "zone-a",
                "targetRef": {"kind": "Pod", "namespace": ns, "name": pod_name(name, e),
                              "uid": format!("00000000-0000-4000-9000-{k:012}")}})
        })
        .collect();
    json!({"kind": "EndpointSlice", "apiVersion": "discovery.k8s.io/v1",
        "metadata": {"name": slice_name(name), "namespace": ns, "generateName": format!("{name}-"),
                     "uid": format!("00000000-0000-4000-b000-{i:012}"), "resourceVersion": rv,
                     "labels": {"kubernetes.io/service-name": name,
                                "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"},
                     "ownerReferences": [{"apiVersion": "v1", "kind": "Service", "name": name,
                         "uid": format!("00000000-0000-4000-8000-{i:012}"), "controller": true, "blockOwnerDeletion": true}]},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}, {"name": "grpc", "port": grpc_port, "protocol": "TCP"}],
        "endpoints": eps})
}

/// A pod as the API answers it, with what the mesh reads (metadata, the service account in its
/// spec; the control plane watches whole pods for that account, a direct-mode proxy reads the
/// metadata only).
fn pod(ns: &str, svc: &str, e: usize, k: usize) -> Value {
    let name = pod_name(svc, e);
    let rs = format!("{svc}-v{}-7d9c5b8f6", e % 2 + 1);
    json!({"kind": "Pod", "apiVersion": "v1",
        "spec": {"serviceAccountName": svc, "containers": [{"name": "app", "image": "app:1"}]},
        "metadata": {"name": name, "namespace": ns, "uid": format!("00000000-0000-4000-9000-{k:012}"),
                     "resourceVersion": format!("{}", 200_000 + k),
                     "creationTimestamp": "2026-11-20T10:00:00Z", "generateName": format!("{rs}-"),
                     "labels": {"app": svc, "version": format!("v{}", e % 2 + 1),
                                "pod-template-hash": "7d9c5b8f6",
                                "security.istio.io/tlsMode": "istio",
                                "service.istio.io/canonical-name": svc},
                     "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                         "name": rs, "uid": "00000000-0000-4000-a000-000000000000",
                         "controller": true, "blockOwnerDeletion": true}]}})
}

/// The global pod indexes behind Service `i`.
pub fn pods_of(shape: &Shape, i: usize) -> Vec<usize> {
    (0..shape.pods_of(i))
        .map(|e| i + e * shape.services)
        .collect()
}

/// Service `i`'s namespace and name.
pub fn service_key(shape: &Shape, i: usize) -> (String, String) {
    (
        ns_name(i % shape.namespaces),
        svc_name(i / shape.namespaces),
    )
}

impl Cluster {
    pub fn generate(shape: Shape) -> Cluster {
        let mut c = Cluster {
            shape,
            services: Vec::with_capacity(shape.services),
            slices: Vec::with_capacity(shape.services),
            pods: Vec::with_capacity(shape.pods),
        };
        for i in 0..shape.services {
            let (ns, name) = service_key(&shape, i);
            c.services.push(service(&ns, &name, i));
            let pods = pods_of(&shape, i);
            c.slices.push(slice(
                &ns,
                &name,
                i,
                &pods,
                9090,
                &format!("{}", 100_000 + i),
            ));
            for (e, k) in pods.iter().enumerate() {
                c.pods.push(pod(&ns, &name, e, *k));
            }
        }
        c
    }

    /// The first Service's EndpointSlice (`ns-000/svc-000`) with its `grpc` port set to `port`:
    /// the change the benchmark makes.
    pub fn changed_slice(&self, port: u16, rv: &str) -> Value {
        let (ns, name) = service_key(&self.shape, 0);
        slice(&ns, &name, 0, &pods_of(&self.shape, 0), port, rv)
    }

    /// Register the cluster-wide and per-namespace lists and held watches, and each namespace's
    /// (absent) rules ConfigMap.
    pub fn serve(&self, api: &RecordedApi) {
        let of_ns = |items: &[Value], ns: &str| -> Vec<Value> {
            items
                .iter()
                .filter(|o| o["metadata"]["namespace"] == ns)
                .cloned()
                .collect()
        };
        let kinds: [(&str, &str, &str, &[Value]); 3] = [
            ("/api/v1", "services", "v1", &self.services),
            (
                "/apis/discovery.k8s.io/v1",
                "endpointslices",
                "discovery.k8s.io/v1",
                &self.slices,
            ),
            ("/api/v1", "pods", "v1", &self.pods),
        ];
        let list_kind = |res: &str| match res {
            "services" => ("ServiceList", "Service"),
            "endpointslices" => ("EndpointSliceList", "EndpointSlice"),
            _ => ("PodList", "Pod"),
        };
        let mut namespaces: Vec<String> = (0..self.shape.namespaces).map(ns_name).collect();
        namespaces.push("remora-system".into());
        for (prefix, res, api_version, items) in kinds {
            let (list, kind) = list_kind(res);
            paged(
                api,
                &format!("{prefix}/{res}"),
                list,
                kind,
                api_version,
                items.to_vec(),
            );
            for ns in &namespaces {
                paged(
                    api,
                    &format!("{prefix}/namespaces/{ns}/{res}"),
                    list,
                    kind,
                    api_version,
                    of_ns(items, ns),
                );
            }
        }
        for ns in &namespaces {
            let cms = format!(
                "/api/v1/namespaces/{ns}/configmaps?fieldSelector=metadata.name%3Dremora-mesh-rules"
            );
            api.on(
                "GET",
                &cms,
                Reply::json(
                    200,
                    json!({"kind": "ConfigMapList", "apiVersion": "v1",
                    "metadata": {"resourceVersion": "5000"}, "items": []}),
                ),
            );
            api.on(
                "GET",
                &format!("{cms}&watch=true"),
                Reply::watch(vec![], true),
            );
        }
    }
}

/// Serve Istio's `networking.istio.io` group (version `v1`) and `sidecars` (Sidecar objects)
/// in all namespaces, as the API server does with Istio's CRDs installed: the control plane
/// watches them to scope its subscribers.
pub fn serve_sidecars(api: &RecordedApi, sidecars: Vec<Value>) {
    api.on(
        "GET",
        "/apis/networking.istio.io",
        Reply::json(
            200,
            json!({"kind": "APIGroup", "apiVersion": "v1", "name": "networking.istio.io",
                   "versions": [{"groupVersion": "networking.istio.io/v1", "version": "v1"}],
                   "preferredVersion": {"groupVersion": "networking.istio.io/v1", "version": "v1"}}),
        ),
    );
    paged(
        api,
        SIDECARS,
        "SidecarList",
        "Sidecar",
        "networking.istio.io/v1",
        sidecars,
    );
}

/// Serve `items` as a paged list at `path` (pages of `PAGE`, with `continue` tokens as an API
/// server answers), then a held watch starting with a BOOKMARK.
pub fn paged(
    api: &RecordedApi,
    path: &str,
    list: &str,
    kind: &str,
    api_version: &str,
    items: Vec<Value>,
) {
    let pages: Vec<Vec<Value>> = if items.is_empty() {
        vec![vec![]]
    } else {
        items.chunks(PAGE).map(|c| c.to_vec()).collect()
    };
    let n = pages.len();
    let total = items.len();
    for (i, page) in pages.into_iter().enumerate() {
        let mut meta = json!({"resourceVersion": "5000"});
        if i + 1 < n {
            meta["continue"] = json!(format!("page{}", i + 1));
            meta["remainingItemCount"] = json!(total - (i + 1) * PAGE);
        }
        let body =
            json!({"kind": list, "apiVersion": api_version, "metadata": meta, "items": page});
        let route = if i == 0 {
            path.to_string()
        } else {
            format!("{path}?continue=page{i}")
        };
        api.on("GET", &route, Reply::json(200, body));
    }
    let bookmark = json!({"type": "BOOKMARK", "object": {"kind": kind,
        "apiVersion": api_version, "metadata": {"resourceVersion": "5001"}}});
    api.on(
        "GET",
        &format!("{path}?watch=true"),
        Reply::watch(vec![bookmark], true),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shape_spreads_services_and_pods_evenly() {
        let s = Shape {
            namespaces: 100,
            services: 2000,
            pods: 10_000,
        };
        s.check().unwrap();
        assert_eq!((0..100).map(|n| s.services_in(n)).sum::<usize>(), 2000);
        assert_eq!(s.services_in(0), 20);
        assert_eq!((0..2000).map(|i| s.pods_of(i)).sum::<usize>(), 10_000);
        assert_eq!(pods_of(&s, 3), [3, 2003, 4003, 6003, 8003]);
        // Uneven: the first ones take the rest.
        let u = Shape {
            namespaces: 3,
            services: 7,
            pods: 8,
        };
        assert_eq!(
            (0..3).map(|n| u.services_in(n)).collect::<Vec<_>>(),
            [3, 2, 2]
        );
        assert_eq!(
            (0..7).map(|i| u.pods_of(i)).collect::<Vec<_>>(),
            [2, 1, 1, 1, 1, 1, 1]
        );
        assert_eq!(service_key(&s, 2001), ("ns-001".into(), "svc-020".into()));
    }

    #[test]
    fn generated_objects_are_unique_and_consistent() {
        let c = Cluster::generate(Shape {
            namespaces: 4,
            services: 10,
            pods: 25,
        });
        assert_eq!(
            (c.services.len(), c.slices.len(), c.pods.len()),
            (10, 10, 25)
        );
        let mut ips: Vec<String> = c
            .slices
            .iter()
            .flat_map(|s| s["endpoints"].as_array().unwrap().clone())
            .map(|e| e["addresses"][0].as_str().unwrap().to_string())
            .collect();
        assert_eq!(ips.len(), 25);
        ips.sort();
        ips.dedup();
        assert_eq!(ips.len(), 25, "one address per pod");
        let mut names: Vec<(String, String)> = c
            .pods
            .iter()
            .map(|p| {
                let m = &p["metadata"];
                (m["namespace"].to_string(), m["name"].to_string())
            })
            .collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), 25, "one name per pod");
        // Every endpoint names a pod of the list, in the slice's namespace.
        for s in &c.slices {
            for e in s["endpoints"].as_array().unwrap() {
                let r = &e["targetRef"];
                assert!(c.pods.iter().any(|p| p["metadata"]["name"] == r["name"]
                    && p["metadata"]["namespace"] == r["namespace"]));
            }
        }
        assert_eq!(pod_ip(0), "10.1.0.0");
        assert_eq!(pod_ip(70_000), "10.2.17.112");
        let changed = c.changed_slice(20_007, "6007");
        assert_eq!(changed["metadata"]["name"], "svc-000-abcde");
        assert_eq!(changed["metadata"]["namespace"], "ns-000");
        assert_eq!(changed["ports"][1]["port"], 20_007);
    }

    #[test]
    fn shapes_out_of_range_are_refused_naming_the_flag() {
        let bad = |n, s, p| {
            Shape {
                namespaces: n,
                services: s,
                pods: p,
            }
            .check()
            .unwrap_err()
            .to_string()
        };
        assert!(bad(0, 10, 10).starts_with("--namespaces 0:"));
        assert!(bad(10, 5, 10).starts_with("--services 5:"));
        assert!(bad(1, 10, 5).starts_with("--pods 5:"));
    }
}
