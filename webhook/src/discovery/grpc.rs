//! `remora.discovery.v1.Discovery/Subscribe` as a tonic streaming method (codegen-free, the
//! prost codec), called by the CA's listener (`ca::grpc::CaService`) for that path.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use remora_model::discovery_api::{DiscoveryResponse, SubscribeRequest};
use tonic::{Status, Streaming};

use super::serve::Hub;

/// Largest request (a subscription names at most a few hundred namespaces).
pub const MAX_REQUEST: usize = 64 * 1024;

pub type ResponseStream = Pin<Box<dyn Stream<Item = Result<DiscoveryResponse, Status>> + Send>>;
type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// The method for one connection's peer.
pub struct Subscribe {
    pub hub: Arc<Hub>,
    pub peer: Option<SocketAddr>,
}

/// The method as the CA's listener serves it ([`crate::ca::grpc::Extra`]).
pub struct Service(pub Arc<Hub>);

impl crate::ca::grpc::Extra for Service {
    fn path(&self) -> &'static str {
        remora_model::discovery_api::SUBSCRIBE
    }

    fn call(
        &self,
        peer: Option<SocketAddr>,
        req: http::Request<tonic::body::Body>,
    ) -> crate::ca::grpc::BoxFuture<http::Response<tonic::body::Body>, std::convert::Infallible>
    {
        let svc = Subscribe {
            hub: self.0.clone(),
            peer,
        };
        Box::pin(async move {
            let mut grpc = tonic::server::Grpc::new(tonic_prost::ProstCodec::default())
                .apply_max_message_size_config(Some(MAX_REQUEST), None);
            Ok(grpc.streaming(svc, req).await)
        })
    }
}

impl tonic::server::StreamingService<SubscribeRequest> for Subscribe {
    type Response = DiscoveryResponse;
    type ResponseStream = ResponseStream;
    type Future = BoxFuture<Result<tonic::Response<ResponseStream>, Status>>;

    fn call(&mut self, request: tonic::Request<Streaming<SubscribeRequest>>) -> Self::Future {
        let (hub, peer) = (self.hub.clone(), self.peer);
        Box::pin(async move {
            let auth = request
                .metadata()
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            let certificate = request
                .extensions()
                .get::<crate::ca::client_auth::PeerIdentity>()
                .map(|p| p.0.clone());
            let mut inbound = request.into_inner();
            let first =
                match tokio::time::timeout(hub.limits().first_request, inbound.message()).await {
                    Ok(Ok(Some(r))) => r,
                    Ok(Ok(None)) => {
                        return Err(Status::invalid_argument(
                            "discovery: the stream ended before its first SubscribeRequest",
                        ))
                    }
                    Ok(Err(s)) => return Err(s),
                    Err(_) => {
                        return Err(Status::deadline_exceeded(format!(
                            "discovery: no SubscribeRequest within {}s",
                            hub.limits().first_request.as_secs()
                        )))
                    }
                };
            let sub = hub
                .subscribe(peer, certificate.as_deref(), auth.as_deref(), &first)
                .await?;
            // The proxy's acknowledgements: recorded until its side of the stream ends.
            let (id, who) = (sub.id, sub.who.clone());
            let acks = tokio::spawn({
                let hub = hub.clone();
                async move {
                    while let Ok(Some(r)) = inbound.message().await {
                        tracing::debug!(subscriber = %who, version = r.ack_version, "discovery: acknowledged");
                        hub.ack(id, r.ack_version);
                    }
                }
            });
            let stream =
                futures::stream::unfold((sub, AbortOnDrop(acks)), |(mut sub, a)| async move {
                    let item = sub.next().await?;
                    Some((item, (sub, a)))
                });
            Ok(tonic::Response::new(Box::pin(stream) as ResponseStream))
        })
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
