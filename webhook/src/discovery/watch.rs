//! The control plane's one set of watches: Services, EndpointSlices and Pods (metadata only)
//! in all namespaces, converted (`convert.rs`) and handed to the hub. I/O only.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::Api;
use kube::core::PartialObjectMeta;
use kube::runtime::watcher::{self, Event as WEvent};
use kube::{Client, ResourceExt};
use remora_model::discovery_api::Kind;

use super::cache::{Event, Obj};
use super::convert;
use super::serve::Hub;

/// Start the three watches; they run until the returned tasks are aborted.
pub fn start(client: Client, hub: Arc<Hub>) -> Vec<tokio::task::JoinHandle<()>> {
    let cfg = watcher::Config::default;
    vec![
        tokio::spawn(drive(
            hub.clone(),
            Kind::Service,
            watcher::watcher(Api::<Service>::all(client.clone()), cfg()),
            |s: &Service| Some(Obj::Service(convert::service(s), convert::export(s))),
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
            watcher::watcher(Api::<PartialObjectMeta<Pod>>::all(client), cfg()),
            |p: &PartialObjectMeta<Pod>| Some(Obj::Pod(convert::pod(p))),
        )),
    ]
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
