//! The admission server: HTTPS only (rustls, TLS 1.2+), `POST /inject` (mutating: sidecar
//! injection), `POST /validate` (validating: rules ConfigMaps), `/healthz`, `/readyz`,
//! `/metrics`; certificate and config hot reload; graceful shutdown (in-flight reviews finish).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use bytes::Bytes;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

use crate::config::ConfigHandle;
use crate::review::{self, MAX_BODY};
use crate::tls::CertResolver;

/// How the server runs.
#[derive(Clone)]
pub struct ServeOptions {
    pub listen: SocketAddr,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub config: ConfigHandle,
    /// Fallback poll interval for cert and config changes (file events are the fast path).
    pub reload_poll: Duration,
    /// Longest wait for in-flight requests on shutdown.
    pub drain: Duration,
}

#[derive(Clone)]
struct AppState {
    config: ConfigHandle,
    ready: Arc<AtomicBool>,
}

/// A running server: its address, and a handle to stop it gracefully.
pub struct Running {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl Running {
    /// Stops accepting, lets in-flight reviews finish (up to the drain time), then returns.
    pub async fn shutdown(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        let _ = (&mut self.task).await;
    }

    /// Waits until the server stops by itself (it does not, unless its task fails).
    pub async fn wait(mut self) {
        let _ = (&mut self.task).await;
    }
}

/// The HTTP routes (without TLS), for the server and for in-process tests.
pub fn router(config: ConfigHandle, ready: Arc<AtomicBool>) -> Router {
    let state = AppState { config, ready };
    Router::new()
        .route("/inject", post(inject))
        .route("/inject/{*rest}", post(inject))
        .route("/validate", post(validate))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(state)
}

async fn readyz(State(s): State<AppState>) -> Response {
    if s.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n").into_response()
    }
}

async fn metrics() -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        crate::metrics::render(),
    )
        .into_response()
}

async fn inject(State(s): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    let start = Instant::now();
    if let Some(ct) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    {
        if !ct.to_ascii_lowercase().contains("json") {
            let msg = format!("content-type {ct:?} is not application/json");
            tracing::warn!(decision = "error", reason = %msg, "review refused");
            crate::metrics::review("error", start.elapsed().as_secs_f64());
            return (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!("remora-webhook: {msg}\n"),
            )
                .into_response();
        }
    }
    let cfg = s.config.get();
    let reply = review::handle(&body, &cfg);
    let took = start.elapsed();
    crate::metrics::review(reply.log.decision, took.as_secs_f64());
    let l = &reply.log;
    let ms = took.as_secs_f64() * 1000.0;
    if l.decision == "error" {
        tracing::warn!(uid = %l.uid, decision = l.decision, reason = %l.reason, duration_ms = ms, "review refused");
    } else {
        tracing::info!(uid = %l.uid, namespace = %l.namespace, pod = %l.pod, owner_kind = %l.owner_kind,
            decision = l.decision, reason = %l.reason, duration_ms = ms, "review");
    }
    let status = StatusCode::from_u16(reply.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (
        status,
        [(header::CONTENT_TYPE, reply.content_type)],
        reply.body,
    )
        .into_response()
}

/// `Some(reply)` when the request says its body is not JSON (an absent content type is accepted).
fn not_json(headers: &HeaderMap) -> Option<String> {
    let ct = headers.get(header::CONTENT_TYPE)?;
    let ct = ct.to_str().unwrap_or("(not text)");
    (!ct.to_ascii_lowercase().contains("json"))
        .then(|| format!("content-type {ct:?} is not application/json"))
}

/// The validating webhook for rules ConfigMaps (see `validate_rules`). The linter runs on the
/// blocking pool (a 1 MiB ConfigMap must not hold up a runtime worker); a panic there would be
/// a bug and is answered with a 500, not a dropped connection.
async fn validate(State(s): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    let start = Instant::now();
    if let Some(msg) = not_json(&headers) {
        tracing::warn!(decision = "error", reason = %msg, "rules review refused");
        crate::metrics::rules_review("error", start.elapsed().as_secs_f64());
        return (
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("remora-webhook: {msg}\n"),
        )
            .into_response();
    }
    let cfg = s.config.get();
    let answer =
        tokio::task::spawn_blocking(move || crate::validate_rules::handle(&body, &cfg)).await;
    let took = start.elapsed();
    let ms = took.as_secs_f64() * 1000.0;
    let a = match answer {
        Ok(a) => a,
        Err(e) => {
            tracing::error!(decision = "error", error = %e, duration_ms = ms, "rules review failed");
            crate::metrics::rules_review("error", took.as_secs_f64());
            return (
                StatusCode::INTERNAL_SERVER_ERROR,
                "remora-webhook: internal error while validating the rules\n",
            )
                .into_response();
        }
    };
    crate::metrics::rules_review(a.log.decision, took.as_secs_f64());
    let l = &a.log;
    match l.decision {
        "error" => {
            tracing::warn!(uid = %l.uid, decision = l.decision, reason = %l.reason, duration_ms = ms, "rules review refused")
        }
        "skipped" => {
            tracing::debug!(uid = %l.uid, configmap = %format!("{}/{}", l.namespace, l.name), operation = %l.operation,
                decision = l.decision, reason = %l.reason, duration_ms = ms, "rules review")
        }
        _ => {
            tracing::info!(uid = %l.uid, configmap = %format!("{}/{}", l.namespace, l.name), operation = %l.operation,
                decision = l.decision, errors = l.errors, warnings = l.warnings, reason = %l.reason, duration_ms = ms, "rules review")
        }
    }
    let status = StatusCode::from_u16(a.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, [(header::CONTENT_TYPE, a.content_type)], a.body).into_response()
}

const PLAINTEXT_ANSWER: &[u8] = b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\nConnection: close\r\nContent-Length: 54\r\n\r\nremora-webhook: this port speaks HTTPS only (TLS 1.2+)\n";

/// Serves one TCP connection: refuse plaintext with one line, else TLS, then HTTP/1.1 or h2.
async fn serve_conn(
    stream: TcpStream,
    peer: SocketAddr,
    acceptor: TlsAcceptor,
    app: Router,
    watcher: hyper_util::server::graceful::Watcher,
) {
    let _ = stream.set_nodelay(true);
    let mut first = [0u8; 1];
    match tokio::time::timeout(Duration::from_secs(10), stream.peek(&mut first)).await {
        Ok(Ok(1)) => {}
        _ => return,
    }
    if first[0] != 0x16 {
        // Not a TLS handshake record: most likely plain HTTP.
        tracing::debug!(%peer, "plaintext connection on the TLS port refused");
        let mut stream = stream;
        let _ = stream.write_all(PLAINTEXT_ANSWER).await;
        let _ = stream.shutdown().await;
        return;
    }
    let tls = match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "TLS handshake failed");
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, "TLS handshake timed out");
            return;
        }
    };
    let svc = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
        let app = app.clone();
        async move { app.oneshot(req.map(axum::body::Body::new)).await }
    });
    let builder = auto::Builder::new(TokioExecutor::new());
    let conn = builder.serve_connection(TokioIo::new(tls), svc);
    if let Err(e) = watcher.watch(conn).await {
        tracing::debug!(%peer, error = %e, "connection ended with an error");
    }
}

/// Binds and starts serving the certificate files `opts.cert`/`opts.key` (hot-reloaded);
/// returns once the socket is listening.
pub async fn start(opts: ServeOptions) -> anyhow::Result<Running> {
    crate::tls::install_provider();
    let resolver = CertResolver::load(&opts.cert, &opts.key)?;
    resolver.spawn_watcher(opts.reload_poll);
    let what = format!("files {}", opts.cert.display());
    start_inner(opts, resolver, what).await
}

/// Binds and starts serving whatever certificate `resolver` holds (the certificate manager of
/// `--manage-certs` swaps it); `opts.cert` and `opts.key` are not read.
pub async fn start_with_resolver(
    opts: ServeOptions,
    resolver: Arc<CertResolver>,
) -> anyhow::Result<Running> {
    crate::tls::install_provider();
    start_inner(opts, resolver, "managed (Secret)".to_string()).await
}

async fn start_inner(
    opts: ServeOptions,
    resolver: Arc<CertResolver>,
    cert_source: String,
) -> anyhow::Result<Running> {
    crate::metrics::init();
    let tls = Arc::new(resolver.server_config()?);
    opts.config.spawn_watcher(opts.reload_poll);
    let listener = TcpListener::bind(opts.listen)
        .await
        .with_context(|| format!("--listen {}: cannot bind", opts.listen))?;
    let addr = listener.local_addr()?;
    let ready = Arc::new(AtomicBool::new(true));
    let app = router(opts.config.clone(), ready.clone());
    let acceptor = TlsAcceptor::from(tls);
    let (tx, mut rx) = oneshot::channel::<()>();
    let drain = opts.drain;
    let task = tokio::spawn(async move {
        let graceful = GracefulShutdown::new();
        loop {
            tokio::select! {
                res = listener.accept() => match res {
                    Ok((stream, peer)) => {
                        let w = graceful.watcher();
                        tokio::spawn(serve_conn(stream, peer, acceptor.clone(), app.clone(), w));
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                },
                _ = &mut rx => break,
            }
        }
        ready.store(false, Ordering::Relaxed);
        drop(listener);
        tracing::info!(
            open_connections = graceful.count(),
            "shutting down: finishing in-flight reviews"
        );
        if tokio::time::timeout(drain, graceful.shutdown())
            .await
            .is_err()
        {
            tracing::warn!(
                drain_seconds = drain.as_secs(),
                "drain time over; closing remaining connections"
            );
        }
    });
    tracing::info!(listen = %addr, cert = %cert_source, "remora-webhook serving HTTPS");
    Ok(Running {
        addr,
        stop: Some(tx),
        task,
    })
}
