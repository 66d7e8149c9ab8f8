//! A recorded Kubernetes API serving a synthetic namespace of N Services × M endpoints (one
//! EndpointSlice per Service, pod metadata for subsets), for `scripts/bench discovery`: the proxy
//! lists (paged by its `limit`, with `continue` tokens as an API server answers) and watches them.
//!
//!   kube-api-fixture [--services N] [--endpoints M] [--namespace NS] [--addr 127.0.0.1:0]
//!
//! Prints `url http://127.0.0.1:PORT` on stdout once listening; runs until SIGTERM/SIGINT.

use anyhow::{bail, Context, Result};
use remora_e2e::apiserver::{RecordedApi, Reply};
use remora_e2e::discovery_cluster::paged;
use serde_json::json;

struct Opts {
    services: usize,
    endpoints: usize,
    namespace: String,
}

fn parse() -> Result<Opts> {
    let mut o = Opts {
        services: 1000,
        endpoints: 10,
        namespace: "bench".into(),
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = |name: &str| args.next().with_context(|| format!("{name} needs a value"));
        match a.as_str() {
            "--services" => o.services = val("--services")?.parse().context("--services")?,
            "--endpoints" => o.endpoints = val("--endpoints")?.parse().context("--endpoints")?,
            "--namespace" => o.namespace = val("--namespace")?,
            other => {
                bail!("unknown argument {other:?} (--services N, --endpoints M, --namespace NS)")
            }
        }
    }
    if o.endpoints > 250 * 250 || o.services > 60_000 {
        bail!("--services at most 60000 and --endpoints at most 62500 (addresses are 10.S.E.E)");
    }
    Ok(o)
}

fn namespace(api: &RecordedApi, ns: &str, services: usize, endpoints: usize) {
    let mut svcs = Vec::new();
    let mut slices = Vec::new();
    let mut pods = Vec::new();
    for s in 0..services {
        let name = format!("svc-{s:05}");
        svcs.push(json!({"kind": "Service", "apiVersion": "v1",
            "metadata": {"name": name, "namespace": ns, "uid": format!("00000000-0000-4000-8000-{s:012}"),
                         "resourceVersion": format!("{}", 1000 + s), "creationTimestamp": "2026-11-20T10:00:00Z",
                         "labels": {"app": name, "app.kubernetes.io/part-of": "bench"}},
            "spec": {"type": "ClusterIP", "clusterIP": format!("10.96.{}.{}", s / 250, s % 250 + 1),
                     "clusterIPs": [format!("10.96.{}.{}", s / 250, s % 250 + 1)],
                     "ipFamilies": ["IPv4"], "ipFamilyPolicy": "SingleStack",
                     "selector": {"app": name}, "sessionAffinity": "None", "internalTrafficPolicy": "Cluster",
                     "ports": [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"},
                               {"name": "grpc", "port": 9090, "targetPort": 9090, "protocol": "TCP"}]},
            "status": {"loadBalancer": {}}}));
        let mut eps = Vec::new();
        for e in 0..endpoints {
            let pod = format!("{name}-v{}-{e:04}", e % 2 + 1);
            eps.push(
                json!({"addresses": [format!("10.{}.{}.{}", 1 + s / 250, s % 250, e % 250 + 1)],
                "conditions": {"ready": true, "serving": true, "terminating": false},
                "nodeName": format!("node-{}", e % 7), "zone": "zone-a",
                "targetRef": {"kind": "Pod", "namespace": ns, "name": pod,
                              "uid": format!("00000000-0000-4000-9000-{:012}", s * 1000 + e)}}),
            );
            pods.push(json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
                "metadata": {"name": pod, "namespace": ns, "uid": format!("00000000-0000-4000-9000-{:012}", s * 1000 + e),
                             "resourceVersion": format!("{}", 200_000 + s * 100 + e),
                             "creationTimestamp": "2026-11-20T10:00:00Z", "generateName": format!("{name}-v{}-", e % 2 + 1),
                             "labels": {"app": name, "version": format!("v{}", e % 2 + 1),
                                        "pod-template-hash": format!("h{s:05}v{}", e % 2 + 1)},
                             "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                                 "name": format!("{name}-v{}", e % 2 + 1), "uid": "00000000-0000-4000-a000-000000000000",
                                 "controller": true, "blockOwnerDeletion": true}]}}));
        }
        slices.push(json!({"kind": "EndpointSlice", "apiVersion": "discovery.k8s.io/v1",
            "metadata": {"name": format!("{name}-abcde"), "namespace": ns, "generateName": format!("{name}-"),
                         "uid": format!("00000000-0000-4000-b000-{s:012}"), "resourceVersion": format!("{}", 100_000 + s),
                         "labels": {"kubernetes.io/service-name": name,
                                    "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"},
                         "ownerReferences": [{"apiVersion": "v1", "kind": "Service", "name": name,
                             "uid": format!("00000000-0000-4000-8000-{s:012}"), "controller": true, "blockOwnerDeletion": true}]},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}, {"name": "grpc", "port": 9090, "protocol": "TCP"}],
            "endpoints": eps}));
    }
    paged(
        api,
        &format!("/api/v1/namespaces/{ns}/services"),
        "ServiceList",
        "Service",
        "v1",
        svcs,
    );
    paged(
        api,
        &format!("/apis/discovery.k8s.io/v1/namespaces/{ns}/endpointslices"),
        "EndpointSliceList",
        "EndpointSlice",
        "discovery.k8s.io/v1",
        slices,
    );
    paged(
        api,
        &format!("/api/v1/namespaces/{ns}/pods"),
        "PartialObjectMetadataList",
        "PartialObjectMetadata",
        "meta.k8s.io/v1",
        pods,
    );
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let o = parse()?;
    let api = RecordedApi::start().await?;
    namespace(&api, &o.namespace, o.services, o.endpoints);
    namespace(&api, "remora-system", 0, 0);
    // No rules ConfigMap: the proxy keeps its files.
    let cms = format!(
        "/api/v1/namespaces/{}/configmaps?fieldSelector=metadata.name%3Dremora-mesh-rules",
        o.namespace
    );
    api.on(
        "GET",
        &cms,
        Reply::json(200, json!({"kind": "ConfigMapList", "apiVersion": "v1", "metadata": {"resourceVersion": "5000"}, "items": []})),
    );
    api.on(
        "GET",
        &format!("{cms}&watch=true"),
        Reply::watch(vec![], true),
    );
    println!("url {}", api.url());
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    let unmatched = api.requests().iter().filter(|r| !r.matched).count();
    eprintln!(
        "kube-api-fixture: {} requests, {unmatched} unmatched",
        api.requests().len()
    );
    Ok(())
}
