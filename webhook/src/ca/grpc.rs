//! Istio's certificate service, `istio.v1.auth.IstioCertificateService/CreateCertificate`, on
//! its own TLS listener. The two messages are the model's (`remora_model::ca_api`); the
//! service is tonic's codegen-free server API (`Grpc::unary` with the prost codec), served by
//! hyper's HTTP/2 on our own rustls accept loop, which bounds connections, handshakes, streams
//! and headers.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tonic::{Code, Status};

use super::authn::{bearer, Authenticator};
use super::sign::{self, Policy, Reason, Refusal};

pub use remora_model::ca_api::{
    IstioCertificateRequest, IstioCertificateResponse, CREATE_CERTIFICATE, SERVICE,
};

/// Bounds of the listener.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Open connections at once; more are closed at accept.
    pub max_connections: usize,
    /// Concurrent requests per connection (HTTP/2 streams).
    pub max_streams: u32,
    /// Requests being answered at once, over all connections (each may make a TokenReview).
    pub max_in_flight: usize,
    /// Longest TLS handshake.
    pub handshake_timeout: Duration,
    /// Longest wait for a request slot before answering RESOURCE_EXHAUSTED.
    pub queue_timeout: Duration,
    /// Largest request message.
    pub max_message: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 1024,
            max_streams: 16,
            max_in_flight: 64,
            handshake_timeout: Duration::from_secs(10),
            queue_timeout: Duration::from_secs(5),
            max_message: 64 * 1024,
        }
    }
}

/// The CA as the service sees it.
pub struct Ca {
    /// The signing CA in use (replaced when the root Secret changes).
    pub authority: super::Current,
    pub authn: Authenticator,
    pub policy: Policy,
    slots: Semaphore,
    limits: Limits,
}

impl Ca {
    pub fn new(
        authority: super::Current,
        authn: Authenticator,
        policy: Policy,
        limits: Limits,
    ) -> Ca {
        Ca {
            authority,
            authn,
            policy,
            slots: Semaphore::new(limits.max_in_flight),
            limits,
        }
    }

    /// One CreateCertificate: authenticate, check, sign; logs and counts the outcome.
    pub async fn create_certificate(
        &self,
        peer: Option<SocketAddr>,
        authorization: Option<&str>,
        req: IstioCertificateRequest,
    ) -> Result<IstioCertificateResponse, Status> {
        let Ok(_slot) = tokio::time::timeout(self.limits.queue_timeout, self.slots.acquire()).await
        else {
            tracing::warn!(peer = ?peer, "certificate request not answered: {} requests already in flight", self.limits.max_in_flight);
            return Err(Status::resource_exhausted(
                "CA busy: too many requests in flight; retry",
            ));
        };
        let peer_s = peer.map(|p| p.to_string()).unwrap_or_default();
        let token = match bearer(authorization, &self.authn.audience) {
            Ok(t) => t,
            Err(r) => return Err(refused(&r, &peer_s, None)),
        };
        let id = match self.authn.authenticate(token).await {
            Ok(id) => id,
            Err(r) => return Err(refused(&r, &peer_s, None)),
        };
        let uri = id.spiffe(&self.policy.trust_domain);
        let ttl = self.policy.ttl(req.validity_duration);
        let started = Instant::now();
        let authority = self.authority.get();
        let issued = sign::check_csr(&req.csr, &uri).and_then(|checked| {
            sign::issue(
                &authority,
                checked,
                &uri,
                ttl,
                time::OffsetDateTime::now_utc(),
            )
        });
        match issued {
            Ok(c) => {
                let took = started.elapsed();
                super::metrics::issued(took.as_secs_f64());
                tracing::info!(
                    namespace = %id.namespace,
                    service_account = %id.service_account,
                    pod = %id.pod.as_deref().unwrap_or(""),
                    identity = %uri,
                    serial = %c.serial,
                    not_after = %crate::certs::issue::fmt_time(c.not_after),
                    ttl_seconds = (c.not_after - c.not_before).whole_seconds(),
                    sign_micros = took.as_micros() as u64,
                    peer = %peer_s,
                    "certificate issued for {uri}"
                );
                Ok(IstioCertificateResponse {
                    cert_chain: c.chain,
                })
            }
            Err(r) => Err(refused(&r, &peer_s, Some(&id))),
        }
    }
}

/// The gRPC status of a refusal: its message names the reason.
pub fn status_of(r: &Refusal) -> Status {
    let code = match r.reason {
        Reason::Unauthenticated | Reason::TokenRejected => Code::Unauthenticated,
        Reason::TokenReviewFailed => Code::Unavailable,
        Reason::NotServiceAccount | Reason::IdentityMismatch => Code::PermissionDenied,
        Reason::BadCsr
        | Reason::DnsSan
        | Reason::OtherSan
        | Reason::CaRequested
        | Reason::KeyUnsupported => Code::InvalidArgument,
        Reason::Internal => Code::Internal,
    };
    Status::new(
        code,
        format!(
            "certificate refused: {} (reason: {})",
            r.message,
            r.reason.label()
        ),
    )
}

fn refused(r: &Refusal, peer: &str, id: Option<&sign::Identity>) -> Status {
    super::metrics::refused(r.reason);
    let (ns, sa, pod) = id.map_or(("", "", ""), |i| {
        (
            i.namespace.as_str(),
            i.service_account.as_str(),
            i.pod.as_deref().unwrap_or(""),
        )
    });
    tracing::warn!(
        reason = r.reason.label(),
        namespace = %ns,
        service_account = %sa,
        pod = %pod,
        peer = %peer,
        "certificate refused: {}", r.message
    );
    status_of(r)
}

/// The tonic service: routes CreateCertificate, answers UNIMPLEMENTED to anything else.
/// Another gRPC method served on the CA's listener (discovery): asked for its one path before
/// the CA's.
pub trait Extra: Send + Sync {
    /// The method's path, e.g. `/remora.discovery.v1.Discovery/Subscribe`.
    fn path(&self) -> &'static str;
    /// Answer one request from `peer`.
    fn call(
        &self,
        peer: Option<SocketAddr>,
        req: http::Request<tonic::body::Body>,
    ) -> BoxFuture<http::Response<tonic::body::Body>, Infallible>;
}

/// With an [`Extra`] service, its path is served too.
#[derive(Clone)]
pub struct CaService {
    ca: Arc<Ca>,
    extra: Option<Arc<dyn Extra>>,
    peer: Option<SocketAddr>,
    /// The SPIFFE id of the connection's verified client certificate.
    identity: Option<String>,
}

impl CaService {
    pub fn new(ca: Arc<Ca>) -> CaService {
        CaService {
            ca,
            extra: None,
            peer: None,
            identity: None,
        }
    }

    /// Serve `extra` on this listener too.
    pub fn with_extra(mut self, extra: Arc<dyn Extra>) -> CaService {
        self.extra = Some(extra);
        self
    }

    fn for_peer(&self, peer: SocketAddr, identity: Option<String>) -> CaService {
        CaService {
            ca: self.ca.clone(),
            extra: self.extra.clone(),
            peer: Some(peer),
            identity,
        }
    }
}

impl tonic::server::NamedService for CaService {
    const NAME: &'static str = SERVICE;
}

pub type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send + 'static>>;

struct Unary(CaService);

impl tonic::server::UnaryService<IstioCertificateRequest> for Unary {
    type Response = IstioCertificateResponse;
    type Future = BoxFuture<tonic::Response<IstioCertificateResponse>, Status>;

    fn call(&mut self, request: tonic::Request<IstioCertificateRequest>) -> Self::Future {
        let svc = self.0.clone();
        Box::pin(async move {
            let auth = request
                .metadata()
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            let msg = request.into_inner();
            svc.ca
                .create_certificate(svc.peer, auth.as_deref(), msg)
                .await
                .map(tonic::Response::new)
        })
    }
}

impl<B> tower::Service<http::Request<B>> for CaService
where
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Infallible>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        if let Some(id) = &self.identity {
            req.extensions_mut()
                .insert(super::client_auth::PeerIdentity(id.clone()));
        }
        if let Some(x) = self.extra.as_ref().filter(|x| req.uri().path() == x.path()) {
            return x.call(self.peer, req.map(tonic::body::Body::new));
        }
        if req.uri().path() != CREATE_CERTIFICATE {
            let path = req.uri().path().to_string();
            return Box::pin(async move {
                Ok(Status::unimplemented(format!(
                    "{path}: not served here (only {CREATE_CERTIFICATE})"
                ))
                .into_http())
            });
        }
        let svc = self.clone();
        let max = svc.ca.limits.max_message;
        Box::pin(async move {
            let mut grpc = tonic::server::Grpc::new(tonic_prost::ProstCodec::default())
                .apply_max_message_size_config(Some(max), Some(max.max(256 * 1024)));
            Ok(grpc.unary(Unary(svc), req).await)
        })
    }
}

/// A rustls server config for the CA listener: TLS 1.2/1.3, ALPN h2 only; with `clients`, a
/// client certificate is asked for (optional) and verified by it.
pub fn tls_config(
    resolver: Arc<crate::tls::CertResolver>,
    clients: Option<Arc<dyn rustls::server::danger::ClientCertVerifier>>,
) -> anyhow::Result<rustls::ServerConfig> {
    let builder = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?;
    let builder = match clients {
        Some(v) => builder.with_client_cert_verifier(v),
        None => builder.with_no_client_auth(),
    };
    let mut cfg = builder.with_cert_resolver(resolver);
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    Ok(cfg)
}

/// Accepts TLS connections on `listener` and serves `svc` over HTTP/2 until the task is
/// aborted. Connections beyond `limits.max_connections` are closed at once.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    svc: CaService,
    limits: Limits,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let conns = Arc::new(Semaphore::new(limits.max_connections));
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(error = %e, "CA listener: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        // gRPC answers are small frames written separately (headers, message, trailers): send
        // them at once instead of waiting on Nagle and the peer's delayed ACK.
        let _ = tcp.set_nodelay(true);
        let Ok(permit) = conns.clone().try_acquire_owned() else {
            tracing::warn!(peer = %peer, "CA listener: {} connections open; closing a new one", limits.max_connections);
            drop(tcp);
            continue;
        };
        let acceptor = acceptor.clone();
        let svc = svc.clone();
        let limits = limits.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let stream = match tokio::time::timeout(limits.handshake_timeout, acceptor.accept(tcp))
                .await
            {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::debug!(peer = %peer, error = %e, "CA listener: TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(peer = %peer, "CA listener: TLS handshake timed out");
                    return;
                }
            };
            // A verified client certificate's identity (the verifier checked the chain).
            let identity = stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .and_then(|leaf| super::client_auth::spiffe_of(leaf));
            let svc = svc.for_peer(peer, identity);
            let mut h2 =
                hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new());
            h2.timer(hyper_util::rt::TokioTimer::new())
                .max_concurrent_streams(limits.max_streams)
                .max_header_list_size(64 * 1024)
                .keep_alive_interval(Some(Duration::from_secs(30)))
                .keep_alive_timeout(Duration::from_secs(10));
            let io = hyper_util::rt::TokioIo::new(stream);
            if let Err(e) = h2
                .serve_connection(io, hyper_util::service::TowerToHyperService::new(svc))
                .await
            {
                tracing::debug!(peer = %peer, error = %e, "CA connection ended with an error");
            }
        });
    }
}
