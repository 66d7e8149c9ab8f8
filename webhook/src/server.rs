//! The admission server: HTTPS only (rustls, TLS 1.2+), `POST /inject` (mutating: sidecar
//! injection), `POST /validate` (validating: rules ConfigMaps), `/healthz`, `/readyz`,
//! `/metrics`; certificate and config hot reload; graceful shutdown (in-flight reviews finish).

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use bytes::Bytes;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, watch, Notify, Semaphore};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

use crate::config::ConfigHandle;
use crate::review;
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
    /// Timeouts and caps against slow, idle and flooding clients.
    pub limits: Limits,
}

/// What one client may hold of the server. With `failurePolicy: Fail` a webhook that stops
/// answering stops pod creation in every injected namespace, so no client (anyone who can reach
/// the port) may tie up its connections, memory or review slots for long.
#[derive(Clone, Debug, PartialEq)]
pub struct Limits {
    /// The TLS handshake and the first request head must be complete this long after the
    /// connection is accepted (the API server sends its request right away).
    pub header_read_timeout: Duration,
    /// A connection with no request in flight for this long is closed (HTTP/2 with a GOAWAY, so
    /// the API server opens a new one without failing a review); a later HTTP/1.1 request head
    /// on a kept-alive connection must arrive within it too.
    pub idle_timeout: Duration,
    /// A request (reading its body and answering) not done in this time is answered 408. Keep it
    /// at least the webhook configuration's `timeoutSeconds`; the API server gives up after that.
    pub review_timeout: Duration,
    /// Open connections at most. Past it the connection idle the longest is closed to make room,
    /// those that never completed a request first; when every connection has a request in
    /// flight the new one is closed.
    pub max_connections: usize,
    /// Pod reviews (`POST /inject`) in progress at once, body reading included; past it the
    /// answer is `429` with `Retry-After: 1`, which the API server retries.
    pub max_concurrent_reviews: usize,
    /// Rules reviews (`POST /validate`) in progress at once, counted apart from pod reviews
    /// (their bodies may be larger, and a flood of ConfigMap writes must not delay pods).
    pub max_concurrent_rules_reviews: usize,
    /// HTTP/2 streams one connection may have open (the API server opens more connections when
    /// it needs more).
    pub h2_max_concurrent_streams: u32,
    /// Largest `POST /inject` body.
    pub max_body: usize,
    /// Largest `POST /validate` body.
    pub max_rules_body: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            header_read_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(60),
            review_timeout: Duration::from_secs(10),
            max_connections: 512,
            max_concurrent_reviews: 32,
            max_concurrent_rules_reviews: 4,
            h2_max_concurrent_streams: 8,
            max_body: review::MAX_BODY,
            max_rules_body: review::MAX_RULES_BODY,
        }
    }
}

impl Limits {
    /// Checks the settings; the error names the flag, the value and why.
    pub fn validate(&self) -> Result<(), String> {
        for (flag, d) in [
            ("header-read-timeout-seconds", self.header_read_timeout),
            ("idle-timeout-seconds", self.idle_timeout),
            ("review-timeout-seconds", self.review_timeout),
        ] {
            if d.is_zero() {
                return Err(format!("--{flag} 0: must be at least 1 second"));
            }
        }
        for (flag, v) in [
            ("max-connections", self.max_connections),
            ("max-concurrent-reviews", self.max_concurrent_reviews),
            (
                "max-concurrent-rules-reviews",
                self.max_concurrent_rules_reviews,
            ),
            (
                "h2-max-concurrent-streams",
                self.h2_max_concurrent_streams as usize,
            ),
        ] {
            if v == 0 {
                return Err(format!("--{flag} 0: must be at least 1"));
            }
        }
        for (flag, v) in [
            ("max-body-bytes", self.max_body),
            ("max-rules-body-bytes", self.max_rules_body),
        ] {
            if v < 4096 {
                return Err(format!(
                    "--{flag} {v}: must be at least 4096 (the review of a small pod is about 3 KB)"
                ));
            }
        }
        Ok(())
    }
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

/// The HTTP routes (without TLS) with the default body limits, for in-process tests.
pub fn router(config: ConfigHandle, ready: Arc<AtomicBool>) -> Router {
    router_with(config, ready, &Limits::default())
}

/// The HTTP routes (without TLS) with the body limits of `limits`.
pub fn router_with(config: ConfigHandle, ready: Arc<AtomicBool>, limits: &Limits) -> Router {
    let state = AppState { config, ready };
    let inject_limit = DefaultBodyLimit::max(limits.max_body);
    Router::new()
        .route("/inject", post(inject).layer(inject_limit))
        .route("/inject/{*rest}", post(inject).layer(inject_limit))
        .route(
            "/validate",
            post(validate).layer(DefaultBodyLimit::max(limits.max_rules_body)),
        )
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
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

/// `POST /inject` and `/inject/rev/<revision>/<entry>`: the path names the webhook entry that
/// sent the pod (see `selectors`).
async fn inject(State(s): State<AppState>, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
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
    let reply = review::handle_at(&body, &cfg, uri.path());
    let took = start.elapsed();
    crate::metrics::review(reply.log.decision, took.as_secs_f64());
    let l = &reply.log;
    let ms = took.as_secs_f64() * 1000.0;
    if l.decision == "error" {
        tracing::warn!(uid = %l.uid, decision = l.decision, reason = %l.reason, duration_ms = ms, "review refused");
    } else {
        tracing::info!(uid = %l.uid, namespace = %l.namespace, pod = %l.pod, owner_kind = %l.owner_kind,
            revision = %l.revision, selection = %l.selection,
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

/// One open connection, as the connection table sees it.
struct Conn {
    /// Requests in progress (HTTP/2 may have several).
    in_flight: AtomicUsize,
    /// Requests started on it so far.
    requests: AtomicU64,
    /// When it last started or finished a request (or was accepted), in ms since `Shared::epoch`.
    last_active_ms: AtomicU64,
    /// Told to close to make room for a new connection.
    evict: Notify,
}

/// The open connections, for the connection cap and for draining on shutdown.
struct Conns {
    next_id: AtomicU64,
    open: Mutex<HashMap<u64, Arc<Conn>>>,
}

/// Everything the connections of one server share.
struct Shared {
    limits: Limits,
    epoch: Instant,
    conns: Conns,
    reviews: Arc<Semaphore>,
    rules_reviews: Arc<Semaphore>,
}

impl Shared {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn open_connections(&self) -> usize {
        self.conns.open.lock().map(|m| m.len()).unwrap_or(0)
    }

    /// Registers a new connection. At the cap, the connection idle the longest (one that never
    /// completed a request before any other) is told to close and leaves the table; `None` when
    /// every open connection has a request in flight.
    fn admit(self: &Arc<Self>) -> Option<ConnGuard> {
        let now = self.now_ms();
        let mut open = self.conns.open.lock().ok()?;
        if open.len() >= self.limits.max_connections {
            let victim = open
                .iter()
                .filter(|(_, c)| c.in_flight.load(Ordering::Relaxed) == 0)
                .min_by_key(|(id, c)| {
                    (
                        c.requests.load(Ordering::Relaxed) > 0,
                        c.last_active_ms.load(Ordering::Relaxed),
                        **id,
                    )
                })
                .map(|(id, _)| *id)?;
            if let Some(c) = open.remove(&victim) {
                c.evict.notify_one();
                crate::metrics::refused("evicted");
                let served = c.requests.load(Ordering::Relaxed);
                if served > 0 {
                    tracing::warn!(
                        requests_served = served,
                        max_connections = self.limits.max_connections,
                        "closed an idle connection that had served requests to make room (--max-connections)"
                    );
                }
            }
        }
        let id = self.conns.next_id.fetch_add(1, Ordering::Relaxed);
        let conn = Arc::new(Conn {
            in_flight: AtomicUsize::new(0),
            requests: AtomicU64::new(0),
            last_active_ms: AtomicU64::new(now),
            evict: Notify::new(),
        });
        open.insert(id, conn.clone());
        Some(ConnGuard {
            shared: self.clone(),
            id,
            conn,
        })
    }

    /// Answers one request: the review limits around the routes.
    async fn answer(&self, app: Router, req: hyper::Request<hyper::body::Incoming>) -> Response {
        let review_slots = match (req.method(), req.uri().path()) {
            (&http::Method::POST, "/validate") => Some((
                &self.rules_reviews,
                self.limits.max_rules_body,
                "max-concurrent-rules-reviews",
            )),
            (&http::Method::POST, p) if p == "/inject" || p.starts_with("/inject/") => Some((
                &self.reviews,
                self.limits.max_body,
                "max-concurrent-reviews",
            )),
            _ => None,
        };
        let mut _permit = None;
        if let Some((slots, max_body, flag)) = review_slots {
            // A declared length over the limit is refused before any of the body is read and
            // without taking a review slot.
            let declared = req
                .headers()
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok());
            if let Some(len) = declared.filter(|l| *l > max_body as u64) {
                crate::metrics::refused("body");
                return (
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!(
                        "remora-webhook: content-length {len}: over the body limit of {max_body} bytes\n"
                    ),
                )
                    .into_response();
            }
            match slots.clone().try_acquire_owned() {
                Ok(p) => _permit = Some(p),
                Err(_) => {
                    crate::metrics::refused("busy");
                    tracing::warn!(limit = flag, "review refused: too many reviews in progress");
                    return (
                        StatusCode::TOO_MANY_REQUESTS,
                        [(header::RETRY_AFTER, "1")],
                        format!("remora-webhook: too many reviews in progress (--{flag}); retry\n"),
                    )
                        .into_response();
                }
            }
        }
        let t = self.limits.review_timeout;
        match tokio::time::timeout(t, app.oneshot(req.map(axum::body::Body::new))).await {
            Ok(Ok(r)) => r,
            Ok(Err(never)) => match never {},
            Err(_) => {
                crate::metrics::refused("timeout");
                tracing::warn!(
                    review_timeout_seconds = t.as_secs(),
                    "request not complete in time (body too slow?)"
                );
                (
                    StatusCode::REQUEST_TIMEOUT,
                    format!(
                        "remora-webhook: request not complete within {} s (--review-timeout-seconds)\n",
                        t.as_secs()
                    ),
                )
                    .into_response()
            }
        }
    }
}

/// A connection's place in the table, given up when its task ends.
struct ConnGuard {
    shared: Arc<Shared>,
    id: u64,
    conn: Arc<Conn>,
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        if let Ok(mut open) = self.shared.conns.open.lock() {
            open.remove(&self.id);
        }
    }
}

/// A request in progress on a connection.
struct Active<'a> {
    shared: &'a Shared,
    conn: &'a Conn,
}

impl<'a> Active<'a> {
    fn begin(shared: &'a Shared, conn: &'a Conn) -> Self {
        conn.in_flight.fetch_add(1, Ordering::Relaxed);
        conn.requests.fetch_add(1, Ordering::Relaxed);
        conn.last_active_ms
            .store(shared.now_ms(), Ordering::Relaxed);
        Active { shared, conn }
    }
}

impl Drop for Active<'_> {
    fn drop(&mut self) {
        self.conn
            .last_active_ms
            .store(self.shared.now_ms(), Ordering::Relaxed);
        self.conn.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Returns when the connection has been quiet too long: no complete request head within the
/// header read timeout of being accepted, or no request in flight for the idle timeout.
async fn quiet(shared: &Shared, conn: &Conn) -> &'static str {
    let l = &shared.limits;
    loop {
        let now = shared.now_ms();
        let last = conn.last_active_ms.load(Ordering::Relaxed);
        let (deadline, why) = if conn.requests.load(Ordering::Relaxed) == 0 {
            (last + ms(l.header_read_timeout), "header_timeout")
        } else if conn.in_flight.load(Ordering::Relaxed) > 0 {
            // Busy: the review timeout bounds it; look again later.
            (now + ms(l.idle_timeout), "")
        } else {
            (last + ms(l.idle_timeout), "idle")
        };
        if now >= deadline && !why.is_empty() {
            return why;
        }
        tokio::time::sleep(Duration::from_millis(deadline.saturating_sub(now).max(1))).await;
    }
}

/// Returns once the server is stopping.
async fn stopped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

const PLAINTEXT_ANSWER: &[u8] = b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\nConnection: close\r\nContent-Length: 54\r\n\r\nremora-webhook: this port speaks HTTPS only (TLS 1.2+)\n";

/// Largest request head (HTTP/1.1 read buffer, HTTP/2 header list). The API server's review
/// requests carry a handful of short headers.
const MAX_HEAD: usize = 16 * 1024;

/// Serves one TCP connection: refuse plaintext with one line, else TLS, then HTTP/1.1 or h2,
/// under the connection's limits (see [`Limits`]).
async fn serve_conn(
    stream: TcpStream,
    peer: SocketAddr,
    acceptor: TlsAcceptor,
    app: Router,
    guard: ConnGuard,
    mut stopping: watch::Receiver<bool>,
) {
    let shared = guard.shared.clone();
    let conn = guard.conn.clone();
    let limits = &shared.limits;
    let _ = stream.set_nodelay(true);
    let handshake = async {
        let mut first = [0u8; 1];
        match stream.peek(&mut first).await {
            Ok(1) => {}
            _ => return None,
        }
        if first[0] != 0x16 {
            return Some(Err(stream));
        }
        acceptor
            .accept(stream)
            .await
            .map(Ok)
            .map_err(|e| {
                tracing::debug!(%peer, error = %e, "TLS handshake failed");
            })
            .ok()
    };
    let tls = tokio::select! {
        r = tokio::time::timeout(limits.header_read_timeout, handshake) => match r {
            Ok(Some(Ok(tls))) => tls,
            Ok(Some(Err(stream))) => {
                // Not a TLS handshake record: most likely plain HTTP.
                tracing::debug!(%peer, "plaintext connection on the TLS port refused");
                let mut stream = stream;
                let _ = stream.write_all(PLAINTEXT_ANSWER).await;
                let _ = stream.shutdown().await;
                return;
            }
            Ok(None) => return,
            Err(_) => {
                tracing::debug!(%peer, "TLS handshake timed out");
                crate::metrics::refused("header_timeout");
                return;
            }
        },
        _ = conn.evict.notified() => return,
        _ = stopped(&mut stopping) => return,
    };
    let svc = {
        let shared = shared.clone();
        let conn = conn.clone();
        hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
            let app = app.clone();
            let shared = shared.clone();
            let conn = conn.clone();
            async move {
                let _active = Active::begin(&shared, &conn);
                Ok::<_, Infallible>(shared.answer(app, req).await)
            }
        })
    };
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // hyper's HTTP/1.1 header timer runs while it waits for any request head, the next one on a
    // kept-alive connection included, so it is the idle timeout there; the first head is held
    // to the header read timeout by `quiet`.
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.idle_timeout)
        .max_buf_size(MAX_HEAD);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.h2_max_concurrent_streams)
        .max_header_list_size(MAX_HEAD as u32);
    let served = builder.serve_connection(TokioIo::new(tls), svc);
    tokio::pin!(served);
    let mut closing = false;
    loop {
        tokio::select! {
            r = served.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(%peer, error = %e, "connection ended with an error");
                }
                return;
            }
            _ = conn.evict.notified(), if !closing => {
                tracing::debug!(%peer, "connection closed to make room (--max-connections)");
                return;
            }
            why = quiet(&shared, &conn), if !closing => {
                crate::metrics::refused(why);
                if why == "header_timeout" {
                    tracing::debug!(%peer, "no complete request in time; closed");
                    return;
                }
                served.as_mut().graceful_shutdown();
                closing = true;
            }
            _ = stopped(&mut stopping), if !closing => {
                served.as_mut().graceful_shutdown();
                closing = true;
            }
        }
    }
}

/// Connections waiting to be accepted (the kernel caps it at `net.core.somaxconn`). A flood of
/// new connections must not overflow the queue: a dropped SYN costs the API server's next
/// connection a one-second retransmit.
const LISTEN_BACKLOG: u32 = 4096;

fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let sock = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    sock.set_reuseaddr(true)?;
    sock.bind(addr)?;
    sock.listen(LISTEN_BACKLOG)
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
    opts.limits.validate().map_err(anyhow::Error::msg)?;
    let tls = Arc::new(resolver.server_config()?);
    opts.config.spawn_watcher(opts.reload_poll);
    let listener =
        listen(opts.listen).with_context(|| format!("--listen {}: cannot bind", opts.listen))?;
    let addr = listener.local_addr()?;
    let ready = Arc::new(AtomicBool::new(true));
    let app = router_with(opts.config.clone(), ready.clone(), &opts.limits);
    let acceptor = TlsAcceptor::from(tls);
    let (tx, mut rx) = oneshot::channel::<()>();
    let drain = opts.drain;
    let shared = Arc::new(Shared {
        reviews: Arc::new(Semaphore::new(opts.limits.max_concurrent_reviews)),
        rules_reviews: Arc::new(Semaphore::new(opts.limits.max_concurrent_rules_reviews)),
        limits: opts.limits.clone(),
        epoch: Instant::now(),
        conns: Conns {
            next_id: AtomicU64::new(0),
            open: Mutex::new(HashMap::new()),
        },
    });
    let task = tokio::spawn(async move {
        let (stop_conns, stopping) = watch::channel(false);
        loop {
            tokio::select! {
                res = listener.accept() => match res {
                    Ok((stream, peer)) => match shared.admit() {
                        Some(guard) => {
                            tokio::spawn(serve_conn(stream, peer, acceptor.clone(), app.clone(), guard, stopping.clone()));
                        }
                        None => {
                            crate::metrics::refused("connections");
                            tracing::warn!(%peer, max_connections = shared.limits.max_connections,
                                "connection refused: every open connection has a request in flight");
                            drop(stream);
                        }
                    },
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
            open_connections = shared.open_connections(),
            "shutting down: finishing in-flight reviews"
        );
        let _ = stop_conns.send(true);
        let drained = tokio::time::timeout(drain, async {
            while shared.open_connections() > 0 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        if drained.is_err() {
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
