//! The control plane's one set of watches: Services, EndpointSlices and Pods in all namespaces,
//! converted (`convert.rs`: of a Pod its metadata and service account only) and handed to the
//! hub. I/O only.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::Api;
use kube::runtime::watcher::{self, Event as WEvent};
use kube::{Client, ResourceExt};
use remora_model::discovery_api::Kind;

use super::cache::{Event, Obj};
use super::convert;
use super::serve::{Hub, SidecarEvent};
use crate::rules_controller::Change;

/// How often a missing Sidecar CRD is looked for again.
const SIDECAR_CRD_RETRY: Duration = Duration::from_secs(60);

/// Start the three watches and the Sidecars' (decoded with `cluster_domain`); a Service without
/// an `exportTo` annotation is exported to `default_export` (the mesh's
/// `defaultServiceExportTo`; empty: everyone). They run until the returned tasks are aborted.
pub fn start(
    client: Client,
    hub: Arc<Hub>,
    cluster_domain: &str,
    default_export: Vec<String>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let cfg = watcher::Config::default;
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let sidecar = crate::rules_controller::KINDS
        .iter()
        .find(|k| k.kind == "Sidecar")
        .cloned();
    vec![
        match sidecar {
            Some(k) => tokio::spawn(crate::rules_controller::watch_kind(
                client.clone(),
                k,
                tx,
                SIDECAR_CRD_RETRY,
            )),
            None => tokio::spawn(async {}),
        },
        tokio::spawn(sidecars(hub.clone(), rx, cluster_domain.to_string())),
        tokio::spawn(drive(
            hub.clone(),
            Kind::Service,
            watcher::watcher(Api::<Service>::all(client.clone()), cfg()),
            move |s: &Service| {
                Some(Obj::Service(
                    convert::service(s),
                    convert::export(s, &default_export),
                ))
            },
        )),
        tokio::spawn(drive(
            hub.clone(),
            Kind::EndpointSlice,
            watcher::watcher(Api::<EndpointSlice>::all(client.clone()), cfg()),
            |s: &EndpointSlice| convert::slice(s).map(Obj::Slice),
        )),
        tokio::spawn(drive(
            hub,
            Kind::Pod,
            // Whole pods: `spec.serviceAccountName` is not in the metadata. Only what
            // `convert::pod` keeps is held.
            watcher::watcher(Api::<Pod>::all(client), cfg()),
            |p: &Pod| Some(Obj::Pod(convert::pod(p))),
        )),
    ]
}

/// A Sidecar object → the model's Sidecar, decoded by the rules controller's checker (the
/// proxy's own decoder); an invalid one is left out, as the rules controller leaves it out of
/// every ConfigMap.
fn sidecar_of(v: &serde_json::Value, domain: &str) -> Option<remora_model::kinds::Sidecar> {
    match remora_model::compile::check(v, domain) {
        Ok(c) => c.sidecar().cloned(),
        Err(e) => {
            tracing::warn!("discovery service: {e}; left out of the subscribers' scoping");
            None
        }
    }
}

fn key_of(v: &serde_json::Value) -> (String, String) {
    let s = |p: &str| {
        v.pointer(p)
            .and_then(serde_json::Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    (s("/metadata/namespace"), s("/metadata/name"))
}

/// The Sidecar watch's reports → the hub.
async fn sidecars(hub: Arc<Hub>, mut rx: tokio::sync::mpsc::Receiver<Change>, domain: String) {
    while let Some(ch) = rx.recv().await {
        let ev = match ch {
            Change::Replace(_, all) => {
                let list: Vec<_> = all.iter().filter_map(|v| sidecar_of(v, &domain)).collect();
                tracing::info!(
                    "discovery service: {} Sidecars scope the subscribers",
                    list.len()
                );
                SidecarEvent::Replace(list)
            }
            Change::Upsert(_, v) => match sidecar_of(&v, &domain) {
                Some(sc) => SidecarEvent::Put(sc),
                // Now invalid: as if deleted.
                None => {
                    let (ns, name) = key_of(&v);
                    SidecarEvent::Delete(ns, name)
                }
            },
            Change::Delete(_, v) => {
                let (ns, name) = key_of(&v);
                SidecarEvent::Delete(ns, name)
            }
        };
        hub.apply_sidecars(ev);
    }
}

fn what(kind: Kind) -> &'static str {
    match kind {
        Kind::Service => "services",
        Kind::EndpointSlice => "endpointslices",
        Kind::Pod => "pods",
        Kind::Unspecified => "objects",
    }
}

async fn drive<K, S>(hub: Arc<Hub>, kind: Kind, stream: S, convert: impl Fn(&K) -> Option<Obj>)
where
    K: kube::Resource,
    S: futures::Stream<Item = Result<WEvent<K>, watcher::Error>>,
{
    let mut stream = std::pin::pin!(stream);
    let mut delay = Duration::from_millis(250);
    let mut count = 0usize;
    let gone = |o: &K| {
        Event::Delete(
            kind,
            o.meta().namespace.clone().unwrap_or_default(),
            o.name_any(),
        )
    };
    while let Some(item) = stream.next().await {
        let ev = match item {
            Ok(WEvent::Init) => {
                count = 0;
                Event::Init(kind)
            }
            Ok(WEvent::InitApply(o)) => match convert(&o) {
                Some(obj) => {
                    count += 1;
                    Event::InitApply(obj)
                }
                None => continue,
            },
            Ok(WEvent::InitDone) => {
                tracing::info!(
                    "discovery service: listed {count} {} in all namespaces; watching for changes",
                    what(kind)
                );
                delay = Duration::from_millis(250);
                Event::InitDone(kind)
            }
            Ok(WEvent::Apply(o)) => match convert(&o) {
                Some(obj) => Event::Apply(obj),
                None => gone(&o),
            },
            Ok(WEvent::Delete(o)) => gone(&o),
            Err(e) => {
                tracing::warn!(
                    "discovery service: {} in all namespaces: {e}; retrying in {} ms",
                    what(kind),
                    delay.as_millis()
                );
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(30));
                continue;
            }
        };
        hub.apply(ev);
    }
}
