//! Discovery from the control plane (`--discovery-address`): one subscription to
//! `remora.discovery.v1.Discovery/Subscribe` over TLS (the mesh root verifies the server),
//! authenticated with the workload certificate when the proxy holds one (presented as the TLS
//! client certificate), else with the pod's projected token as the CA call is. Its responses feed the same
//! store as the API watches (`wire.rs` turns them into store updates); each is acknowledged
//! with its version. On a lost or refused stream the store is kept (the proxy serves the last
//! state) and the subscription is made again with backoff and jitter. I/O only.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use remora_model::discovery_api::{DiscoveryResponse, SubscribeRequest, SUBSCRIBE};
use remora_model::dump::ControlPlaneSync;
use rustls::pki_types::ServerName;
use tokio::sync::mpsc;

use super::kube::{Discovery, Msg, Timing};
use super::store::Part;
use super::wire;

/// Where and as whom to subscribe.
#[derive(Clone, Debug)]
pub struct RemoteConfig {
    /// `HOST:PORT`.
    pub address: String,
    /// The name the server's certificate must carry.
    pub server_name: String,
    /// The mesh root (PEM).
    pub root_file: PathBuf,
    /// The projected service-account token (re-read at each subscription).
    pub token_file: PathBuf,
    pub namespace: String,
    pub service_account: String,
    pub pod_name: String,
    /// Connect timeout.
    pub timeout: Duration,
    /// The workload certificate, presented when there is one (then no token is sent).
    pub certificate: Option<ClientCert>,
}

/// The workload identity whose current certificate the subscription presents.
#[derive(Clone)]
pub struct ClientCert(pub Arc<crate::identity::Identity>);

impl std::fmt::Debug for ClientCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ClientCert({})", self.0.config.spiffe_id())
    }
}

/// Largest response accepted (a full snapshot of a large cluster).
const MAX_RESPONSE: usize = 256 * 1024 * 1024;

fn set(d: &Discovery, f: impl FnOnce(&mut ControlPlaneSync)) {
    d.update_control_plane(f);
}

/// Subscribe for `parts` until the task is aborted (a new scope aborts it and starts another).
pub async fn run(
    d: Arc<Discovery>,
    cfg: Arc<RemoteConfig>,
    parts: Vec<Part>,
    id: u64,
    tx: mpsc::Sender<Msg>,
    timing: Timing,
) {
    let mut delay = timing.backoff;
    loop {
        set(&d, |c| {
            c.connects += 1;
            if c.version_acked == 0 {
                c.state = "connecting".into();
            }
        });
        let got_snapshot = match session(&d, &cfg, &parts, id, &tx).await {
            Ok(()) => return,
            Err((e, got)) => {
                tracing::warn!(address = %cfg.address,
                    "discovery from the control plane: {e}; serving the last state, subscribing again in about {} ms",
                    delay.as_millis());
                set(&d, |c| {
                    c.state = if c.version_acked > 0 {
                        "stale".into()
                    } else {
                        "connecting".into()
                    };
                    c.last_error = Some(e);
                });
                got
            }
        };
        if got_snapshot {
            delay = timing.backoff;
        }
        // Jitter: 50 % to 150 % of the delay, so that proxies do not come back in step.
        let f: f64 = 0.5 + rand::random::<f64>();
        tokio::time::sleep(delay.mul_f64(f)).await;
        delay = (delay * 2).min(timing.max_backoff);
    }
}

/// One subscription: `Ok` only when the run loop is gone; `Err((why, got a snapshot))`.
async fn session(
    d: &Arc<Discovery>,
    cfg: &RemoteConfig,
    parts: &[Part],
    id: u64,
    tx: &mpsc::Sender<Msg>,
) -> Result<(), (String, bool)> {
    let early = |e: String| (e, false);
    let roots_pem = std::fs::read_to_string(&cfg.root_file)
        .map_err(|e| early(format!("mesh root {}: {e}", cfg.root_file.display())))?;
    // The certificate when the proxy holds one, else the projected token.
    let material = cfg.certificate.as_ref().and_then(|c| c.0.current());
    let token = match &material {
        Some(_) => None,
        None => Some(
            std::fs::read_to_string(&cfg.token_file)
                .map_err(|e| early(format!("token {}: {e}", cfg.token_file.display())))?,
        ),
    };
    let channel = connect(cfg, &roots_pem, material.as_deref())
        .await
        .map_err(early)?;
    let mut grpc = tonic::client::Grpc::new(channel).max_decoding_message_size(MAX_RESPONSE);
    let first = SubscribeRequest {
        namespace: cfg.namespace.clone(),
        service_account: cfg.service_account.clone(),
        pod_name: cfg.pod_name.clone(),
        namespaces: wire::namespaces(parts),
        ack_version: 0,
    };
    let (ack_tx, ack_rx) = mpsc::channel::<SubscribeRequest>(16);
    ack_tx
        .try_send(first.clone())
        .map_err(|_| early("queueing the first request".into()))?;
    let outbound =
        futures::stream::unfold(
            ack_rx,
            |mut rx| async move { rx.recv().await.map(|m| (m, rx)) },
        );
    let mut req = tonic::Request::new(outbound);
    if let Some(token) = token {
        let bearer = format!("Bearer {}", token.trim());
        let value = bearer
            .parse()
            .map_err(|_| early("the token is not a valid header value".into()))?;
        req.metadata_mut().insert("authorization", value);
    }
    grpc.ready()
        .await
        .map_err(|e| early(format!("{} not ready: {e}", cfg.address)))?;
    let codec = tonic_prost::ProstCodec::<SubscribeRequest, DiscoveryResponse>::default();
    let mut stream = grpc
        .streaming(req, http::uri::PathAndQuery::from_static(SUBSCRIBE), codec)
        .await
        .map_err(|s| early(describe(&s)))?
        .into_inner();
    let mut got = false;
    loop {
        let msg = match stream.message().await {
            Ok(Some(m)) => m,
            Ok(None) => return Err(("the control plane ended the stream".into(), got)),
            Err(s) => return Err((describe(&s), got)),
        };
        let version = msg.version;
        let full = msg.full;
        for (kind, part, u) in wire::updates(&msg, parts) {
            if tx.send((id, kind, part, u)).await.is_err() {
                return Ok(());
            }
        }
        if full && !got {
            tracing::info!(address = %cfg.address, version, services = msg.services.len(),
                endpoint_slices = msg.endpoint_slices.len(), pods = msg.pods.len(),
                "discovery from the control plane: snapshot applied");
        }
        got |= full;
        set(d, |c| {
            c.state = "synced".into();
            c.version_acked = version;
            if full {
                c.snapshots += 1;
            } else {
                c.deltas += 1;
            }
        });
        // Acknowledge; a full queue only delays the next acknowledgement.
        let _ = ack_tx.try_send(SubscribeRequest {
            ack_version: version,
            namespaces: Vec::new(),
            ..first.clone()
        });
    }
}

fn describe(s: &tonic::Status) -> String {
    format!("{:?}: {}", s.code(), s.message())
}

async fn connect(
    cfg: &RemoteConfig,
    roots_pem: &str,
    material: Option<&crate::identity::material::Material>,
) -> Result<tonic::transport::Channel, String> {
    let tls = match material {
        Some(m) => m.control_plane.clone(),
        None => {
            let roots = crate::identity::material::root_store(roots_pem)?;
            let mut tls = rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS settings: {e}"))?
            .with_root_certificates(roots)
            .with_no_client_auth();
            tls.alpn_protocols = vec![b"h2".to_vec()];
            Arc::new(tls)
        }
    };
    let name = ServerName::try_from(cfg.server_name.clone())
        .map_err(|e| format!("server name {:?}: {e}", cfg.server_name))?;
    let address = cfg.address.clone();
    let connector = tokio_rustls::TlsConnector::from(tls);
    let timeout = cfg.timeout;
    let service = tower::service_fn(move |_: http::Uri| {
        let (connector, name, address) = (connector.clone(), name.clone(), address.clone());
        async move {
            let tcp = tokio::time::timeout(timeout, tokio::net::TcpStream::connect(&address))
                .await
                .map_err(|_| {
                    std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out")
                })??;
            tcp.set_nodelay(true)?;
            let tls = connector.connect(name, tcp).await?;
            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tls))
        }
    });
    tokio::time::timeout(
        timeout,
        tonic::transport::Endpoint::from_static("http://remora-discovery")
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(10))
            .connect_with_connector(service),
    )
    .await
    .map_err(|_| format!("connecting to {} timed out after {timeout:?}", cfg.address))?
    .map_err(|e| format!("connecting to {}: {}", cfg.address, chain(&e)))
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(x) = src {
        s.push_str(": ");
        s.push_str(&x.to_string());
        src = x.source();
    }
    s
}
