//! A recorded Kubernetes API server: the seam remora's kube-facing code is tested against.
//!
//! No API server can run here, so the contract tests point a real `kube::Client` (or a real
//! remora process with `--kube-url`/`--server`) at this replayer. It serves, over plain HTTP on
//! 127.0.0.1, responses recorded from a real cluster or written exactly to the Kubernetes API
//! reference: objects and `List`s, `Status` failures (404 NotFound, 409 AlreadyExists/Conflict,
//! 403 Forbidden, 410 Expired) and watch streams (`{"type": …, "object": …}` lines, BOOKMARKs,
//! ERROR events), which may be held open and fed later with [`RecordedApi::emit`].
//!
//! Matching: a request matches a route when the method and path are equal and every query pair
//! the route names is present in the request (others are ignored); among matches the route naming
//! the most query pairs wins, so `?watch=true` routes never answer the initial list. A route may
//! also name a JSON body it matches ([`RecordedApi::on_body`], `"match_body"` in files): the
//! request body must contain it (objects: these keys with matching values, recursively; other
//! values: equal), and a matching body route wins over routes without one (so one POST path can
//! answer different TokenReviews by token). Replies for one route are served in order and the
//! last one repeats. Every request is recorded
//! ([`RecordedApi::requests`]), unmatched ones are answered 404 and marked `matched: false`.
//! For benchmarks it counts the requests ([`RecordedApi::request_count`]) and the body bytes it
//! sends, by path ([`RecordedApi::bytes_sent_by_path`]: JSON answers, and each watch event line
//! as it goes out).
//!
//! A watch route whose last reply closes the stream makes a client re-watch at once, again and
//! again: end watch sequences with a held reply (`hold: true`).
//!
//! Port-forwards: a route to `/api/v1/namespaces/NS/pods/NAME/portforward?ports=PORT` whose reply
//! is [`Reply::PortForward`] answers as the API server and kubelet do for `kubectl port-forward`
//! over WebSocket: the upgrade (`101`, subprotocol `v4.channel.k8s.io`, the only one offered by
//! kube's client that the kubelet's port-forward speaks), then binary frames whose first byte is
//! the channel: 0 carries the port's data both ways, 1 the kubelet's error; the first frame on each
//! channel is the port number, 2 bytes little-endian. What the pod's port is: a real address
//! ([`PodPort::Connect`], optionally dialled from inside a network namespace, as the kubelet dials
//! `localhost:PORT` inside the pod), recorded HTTP answers ([`PodPort::Http`]), or a port the
//! kubelet cannot reach ([`PodPort::Refused`]: its message on the error channel, sent once the
//! client's first bytes are in or after a second, then the close). When the pod's side closes,
//! the WebSocket is closed (v4 has no per-stream close). A request without the upgrade is
//! answered 400, as by the API server; one port per request.
//!
//! Answers computed from the request: [`RecordedApi::fallback`] installs a function asked for
//! every request no route matches (the mesh lab's API stand-in, `labapi`, keeps objects and
//! checks tokens this way); what it returns is answered like a route's reply, `None` is the 404.
//!
//! Answers that wait: [`Reply::after`] wraps a reply so it is sent only once its [`Release`] is
//! released ([`Release::release`]); until then the request stays unanswered, as from a slow API
//! server, and a release that never comes is a list that never arrives. The request is recorded
//! when it arrives. As the last reply of a route it repeats like any other (released by then,
//! it answers at once). Code only: recorded files have no field for it.
//!
//! Recorded files (`tests/fixtures/kube-api/**.json`):
//! ```json
//! {"source": "provenance note",
//!  "exchanges": [
//!    {"method": "GET", "path": "/api/v1/namespaces/x/secrets/y", "status": 200, "body": {…}},
//!    {"method": "GET", "path": "/api/v1/services?watch=true", "events": [{…}], "hold": true},
//!    {"method": "POST", "path": "/apis/authentication.k8s.io/v1/tokenreviews",
//!     "match_body": {"spec": {"token": "…"}}, "status": 201, "body": {…}},
//!    {"method": "GET", "path": "/api/v1/namespaces/x/pods/p/portforward?ports=15020",
//!     "port_forward": {"http": {"/config_dump": {"status": 200, "body": {…}}}}},
//!    {"method": "GET", "path": "/api/v1/namespaces/x/pods/q/portforward?ports=15020",
//!     "port_forward": {"refused": "error forwarding port 15020 to pod …"}}]}
//! ```

use std::collections::{BTreeMap, VecDeque};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response};
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// One recorded answer.
#[derive(Clone, Debug)]
pub enum Reply {
    /// A JSON body with a status code (objects, lists, `Status` failures).
    Json { status: u16, body: Value },
    /// A 200 watch stream: these events, then the stream closes or (`hold`) stays open for
    /// [`RecordedApi::emit`].
    Watch { events: Vec<Value>, hold: bool },
    /// `reply`, sent once `release` is released (see the module docs).
    After { release: Release, reply: Box<Reply> },
    /// A `pods/portforward` upgrade to this pod port (see the module docs).
    PortForward(PodPort),
}

/// What a pod's port is, for a port-forward to it.
#[derive(Clone, Debug)]
pub enum PodPort {
    /// The forwarded bytes go to and from `addr`, dialled from inside the network namespace at
    /// `netns` when given (a lab pod's `localhost:PORT`, as the kubelet dials it).
    Connect {
        addr: SocketAddr,
        netns: Option<PathBuf>,
    },
    /// An HTTP/1.1 server answering `GET PATH` (query ignored) with the recorded status and JSON
    /// body; 404 for other paths.
    Http(BTreeMap<String, (u16, Value)>),
    /// The kubelet cannot connect to the port: this message on the error channel, then the close.
    Refused(String),
}

/// Holds back [`Reply::after`] answers until released; clones share the state.
#[derive(Clone, Debug)]
pub struct Release(Arc<tokio::sync::watch::Sender<bool>>);

impl Default for Release {
    fn default() -> Self {
        Release::new()
    }
}

impl Release {
    /// Not released yet.
    pub fn new() -> Release {
        Release(Arc::new(tokio::sync::watch::Sender::new(false)))
    }

    /// Answer every request waiting on this (and later ones at once).
    pub fn release(&self) {
        self.0.send_replace(true);
    }

    pub fn is_released(&self) -> bool {
        *self.0.borrow()
    }

    async fn wait(&self) {
        let mut rx = self.0.subscribe();
        // The sender lives as long as `self`: `wait_for` only fails if it is dropped.
        let _ = rx.wait_for(|released| *released).await;
    }
}

impl Reply {
    pub fn json(status: u16, body: Value) -> Reply {
        Reply::Json { status, body }
    }

    pub fn watch(events: Vec<Value>, hold: bool) -> Reply {
        Reply::Watch { events, hold }
    }

    /// `reply`, held back until `release` is released.
    pub fn after(release: &Release, reply: Reply) -> Reply {
        Reply::After {
            release: release.clone(),
            reply: Box::new(reply),
        }
    }

    /// A port-forward to `port` (see the module docs).
    pub fn port_forward(port: PodPort) -> Reply {
        Reply::PortForward(port)
    }

    /// A `Status` failure as the API server writes it, e.g. `(409, "AlreadyExists", "…")`.
    pub fn status(code: u16, reason: &str, message: &str) -> Reply {
        Reply::Json {
            status: code,
            body: status_body(code, reason, message),
        }
    }
}

/// A `metav1.Status` failure object.
pub fn status_body(code: u16, reason: &str, message: &str) -> Value {
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    })
}

/// A watch event line's object.
pub fn event(kind: &str, object: Value) -> Value {
    json!({"type": kind, "object": object})
}

/// The ERROR event an API server sends when a watch's resourceVersion is too old (410 Expired).
pub fn expired_event(rv: &str) -> Value {
    event(
        "ERROR",
        status_body(
            410,
            "Expired",
            &format!("too old resource version: {rv} (999999)"),
        ),
    )
}

/// A BOOKMARK event for `kind`/`api_version` at resourceVersion `rv`.
pub fn bookmark(api_version: &str, kind: &str, rv: &str) -> Value {
    event(
        "BOOKMARK",
        json!({"apiVersion": api_version, "kind": kind, "metadata": {"resourceVersion": rv}}),
    )
}

/// A request the server saw.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    pub path_and_query: String,
    pub content_type: Option<String>,
    /// The body parsed as JSON (a JSON string when it was not JSON), `None` when empty.
    pub body: Option<Value>,
    pub matched: bool,
}

impl Seen {
    pub fn path(&self) -> &str {
        self.path_and_query
            .split_once('?')
            .map_or(self.path_and_query.as_str(), |(p, _)| p)
    }

    /// The query's pairs, percent-decoded, sorted.
    pub fn query(&self) -> Vec<(String, String)> {
        split_query(&self.path_and_query).1
    }
}

struct Route {
    method: String,
    path: String,
    query: Vec<(String, String)>,
    /// The request body must contain this ([`contains`]); `None`: any body.
    body: Option<Value>,
    replies: VecDeque<Reply>,
}

/// Computes the answer to a request no route matched (see [`RecordedApi::fallback`]).
pub type Fallback = Arc<dyn Fn(&Seen) -> Option<Reply> + Send + Sync>;

#[derive(Default)]
struct State {
    routes: Vec<Route>,
    seen: Vec<Seen>,
    watchers: Vec<(String, mpsc::UnboundedSender<Value>)>,
    fallback: Option<Fallback>,
    /// Response body bytes sent (JSON answers and watch event lines) by request path (no
    /// query), for benchmarks.
    sent: BTreeMap<String, Arc<AtomicU64>>,
}

/// Emits events to a [`RecordedApi`]'s held watches ([`RecordedApi::emitter`]).
#[derive(Clone)]
pub struct Emitter(Arc<Mutex<State>>);

impl Emitter {
    /// Send `event` to every held watch on `path` (no query); returns how many got it.
    pub fn emit(&self, path: &str, event: Value) -> usize {
        let mut st = lock(&self.0);
        st.watchers.retain(|(_, tx)| !tx.is_closed());
        st.watchers
            .iter()
            .filter(|(p, _)| p == path)
            .filter(|(_, tx)| tx.send(event.clone()).is_ok())
            .count()
    }
}

/// A running recorded API; stops (and closes held watches) on drop.
pub struct RecordedApi {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    task: JoinHandle<()>,
}

impl RecordedApi {
    /// Listen on 127.0.0.1 on a free port.
    pub async fn start() -> Result<RecordedApi> {
        RecordedApi::run(TcpListener::bind("127.0.0.1:0").await?)
    }

    /// Serve on a socket bound elsewhere, e.g. inside a network namespace (`Netns::listen`).
    /// Call from within a Tokio runtime.
    pub fn start_on(listener: std::net::TcpListener) -> Result<RecordedApi> {
        listener.set_nonblocking(true)?;
        RecordedApi::run(TcpListener::from_std(listener)?)
    }

    fn run(listener: TcpListener) -> Result<RecordedApi> {
        let addr = listener.local_addr()?;
        let state = Arc::new(Mutex::new(State::default()));
        let st = state.clone();
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    break;
                };
                let st = st.clone();
                conns.spawn(async move {
                    let svc = hyper::service::service_fn(move |req| serve(st.clone(), req));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(tcp), svc)
                        .with_upgrades()
                        .await;
                });
            }
        });
        Ok(RecordedApi { addr, state, task })
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A kube client for this server, default namespace `default`.
    pub fn client(&self) -> Result<kube::Client> {
        let uri: http::Uri = self.url().parse()?;
        let config = kube::Config::new(uri);
        Ok(kube::Client::try_from(config)?)
    }

    /// Queue `reply` for requests to `method` `path_and_query` (see the module docs).
    pub fn on(&self, method: &str, path_and_query: &str, reply: Reply) {
        self.route(method, path_and_query, None, reply);
    }

    /// Queue `reply` for requests to `method` `path_and_query` whose JSON body contains
    /// `body` (see the module docs).
    pub fn on_body(&self, method: &str, path_and_query: &str, body: Value, reply: Reply) {
        self.route(method, path_and_query, Some(body), reply);
    }

    fn route(&self, method: &str, path_and_query: &str, body: Option<Value>, reply: Reply) {
        let (path, query) = split_query(path_and_query);
        let mut st = lock(&self.state);
        if let Some(r) = st
            .routes
            .iter_mut()
            .find(|r| r.method == method && r.path == path && r.query == query && r.body == body)
        {
            r.replies.push_back(reply);
            return;
        }
        st.routes.push(Route {
            method: method.to_string(),
            path,
            query,
            body,
            replies: VecDeque::from([reply]),
        });
    }

    /// Answer requests that no route matches with `f` (its `None`: the 404). `f` runs outside
    /// the server's lock, once per request; the request is recorded as matched when it answers.
    pub fn fallback(&self, f: Fallback) {
        lock(&self.state).fallback = Some(f);
    }

    /// Queue every exchange of a recorded file (format in the module docs).
    pub fn load(&self, file: &Path) -> Result<()> {
        let text =
            std::fs::read_to_string(file).with_context(|| format!("read {}", file.display()))?;
        let doc: Value =
            serde_json::from_str(&text).with_context(|| format!("parse {}", file.display()))?;
        let Some(exchanges) = doc.get("exchanges").and_then(Value::as_array) else {
            bail!("{}: no \"exchanges\" array", file.display());
        };
        for (i, x) in exchanges.iter().enumerate() {
            let field = |name: &str| {
                x.get(name)
                    .and_then(Value::as_str)
                    .ok_or_else(|| anyhow!("{}: exchanges[{i}].{name} missing", file.display()))
            };
            let method = field("method")?;
            let path = field("path")?;
            let reply =
                if let Some(pf) = x.get("port_forward") {
                    Reply::PortForward(pod_port_of(pf).with_context(|| {
                        format!("{}: exchanges[{i}].port_forward", file.display())
                    })?)
                } else if let Some(events) = x.get("events") {
                    let events = events.as_array().cloned().ok_or_else(|| {
                        anyhow!("{}: exchanges[{i}].events is not a list", file.display())
                    })?;
                    Reply::watch(
                        events,
                        x.get("hold").and_then(Value::as_bool).unwrap_or(false),
                    )
                } else {
                    let status = x.get("status").and_then(Value::as_u64).unwrap_or(200);
                    let status = u16::try_from(status)
                        .with_context(|| format!("{}: exchanges[{i}].status", file.display()))?;
                    Reply::json(status, x.get("body").cloned().unwrap_or(Value::Null))
                };
            self.route(method, path, x.get("match_body").cloned(), reply);
        }
        Ok(())
    }

    /// Answer port-forwards to `port` of pod `ns`/`pod` with `target`.
    pub fn on_port_forward(&self, ns: &str, pod: &str, port: u16, target: PodPort) {
        self.on(
            "GET",
            &format!("/api/v1/namespaces/{ns}/pods/{pod}/portforward?ports={port}"),
            Reply::PortForward(target),
        );
    }

    /// Send `event` to every held watch on `path` (no query); returns how many got it.
    pub fn emit(&self, path: &str, event: Value) -> usize {
        self.emitter().emit(path, event)
    }

    /// A handle that emits to this server's held watches, for a fallback that changes objects.
    pub fn emitter(&self) -> Emitter {
        Emitter(self.state.clone())
    }

    /// How many watches on `path` are held open now.
    pub fn open_watches(&self, path: &str) -> usize {
        let mut st = lock(&self.state);
        st.watchers.retain(|(_, tx)| !tx.is_closed());
        st.watchers.iter().filter(|(p, _)| p == path).count()
    }

    /// Every request seen so far, in order.
    pub fn requests(&self) -> Vec<Seen> {
        lock(&self.state).seen.clone()
    }

    /// How many requests were seen so far (without copying them).
    pub fn request_count(&self) -> usize {
        lock(&self.state).seen.len()
    }

    /// Response body bytes sent so far: JSON answers and watch event lines (not headers, not
    /// port-forward frames).
    pub fn bytes_sent(&self) -> u64 {
        self.bytes_sent_by_path().values().sum()
    }

    /// [`RecordedApi::bytes_sent`] by request path (without the query).
    pub fn bytes_sent_by_path(&self) -> BTreeMap<String, u64> {
        lock(&self.state)
            .sent
            .iter()
            .map(|(p, n)| (p.clone(), n.load(Ordering::Relaxed)))
            .collect()
    }
}

impl Drop for RecordedApi {
    fn drop(&mut self) {
        self.task.abort();
        lock(&self.state).watchers.clear();
    }
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|e| e.into_inner())
}

fn split_query(path_and_query: &str) -> (String, Vec<(String, String)>) {
    let (path, query) = path_and_query
        .split_once('?')
        .unwrap_or((path_and_query, ""));
    let mut pairs: Vec<(String, String)> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (unescape(k), unescape(v))
        })
        .collect();
    pairs.sort();
    (path.to_string(), pairs)
}

/// Percent-decoding of a query component (`%2F`, `%3D`, `+`).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                let hex = |c: u8| (c as char).to_digit(16);
                match (hex(b[i + 1]), hex(b[i + 2])) {
                    (Some(h), Some(l)) => {
                        out.push((h * 16 + l) as u8);
                        i += 3;
                        continue;
                    }
                    _ => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

type Body = BoxBody<Bytes, Infallible>;

async fn serve(
    state: Arc<Mutex<State>>,
    mut req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let method = req.method().to_string();
    let path_and_query = req
        .uri()
        .path_and_query()
        .map_or_else(|| req.uri().path().to_string(), |p| p.as_str().to_string());
    let content_type = req
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let mut upgrade = websocket_upgrade(&mut req);
    let bytes = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let body = (!bytes.is_empty()).then(|| {
        serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
    });
    let (path, query) = split_query(&path_and_query);
    let sent = lock(&state).sent.entry(path.clone()).or_default().clone();

    let mut reply = pick(
        &state,
        method,
        path_and_query.clone(),
        content_type,
        body,
        &path,
        &query,
    );
    let response = loop {
        break match reply {
            Some(Reply::After {
                release,
                reply: inner,
            }) => {
                // Held back: wait (without the lock) for the release, then answer with `inner`.
                release.wait().await;
                reply = Some(*inner);
                continue;
            }
            None => counted_json(
                &sent,
                404,
                &status_body(
                    404,
                    "NotFound",
                    &format!("recorded API: no recorded reply for {path_and_query}"),
                ),
            ),
            Some(Reply::Json { status, body }) => counted_json(&sent, status, &body),
            Some(Reply::PortForward(port)) => port_forward(upgrade.take(), &path, &query, port),
            Some(Reply::Watch { events, hold }) => {
                let (tx, rx) = mpsc::unbounded_channel::<Value>();
                for e in events {
                    let _ = tx.send(e);
                }
                if hold {
                    lock(&state).watchers.push((path, tx));
                }
                let stream = futures::stream::unfold((rx, sent), |(mut rx, sent)| async move {
                    let v = rx.recv().await?;
                    let mut line = serde_json::to_vec(&v).unwrap_or_default();
                    line.push(b'\n');
                    sent.fetch_add(line.len() as u64, Ordering::Relaxed);
                    Some((
                        Ok::<_, Infallible>(Frame::data(Bytes::from(line))),
                        (rx, sent),
                    ))
                });
                Response::builder()
                    .status(200)
                    .header(http::header::CONTENT_TYPE, "application/json")
                    .body(BodyExt::boxed(StreamBody::new(stream)))
                    .unwrap_or_else(|_| Response::new(empty()))
            }
        };
    };
    Ok(response)
}

/// Choose the reply for a request (a route's, else the fallback's) and record the request.
fn pick(
    state: &Mutex<State>,
    method: String,
    path_and_query: String,
    content_type: Option<String>,
    body: Option<Value>,
    path: &str,
    query: &[(String, String)],
) -> Option<Reply> {
    let (reply, fallback) = {
        let mut st = lock(state);
        let best = st
            .routes
            .iter_mut()
            .filter(|r| {
                r.method == method
                    && r.path == path
                    && r.query.iter().all(|q| query.contains(q))
                    && r.body
                        .as_ref()
                        .is_none_or(|want| body.as_ref().is_some_and(|got| contains(got, want)))
            })
            .max_by_key(|r| (r.body.is_some(), r.query.len()));
        let reply = best.and_then(|r| {
            if r.replies.len() > 1 {
                r.replies.pop_front()
            } else {
                r.replies.front().cloned()
            }
        });
        (reply, st.fallback.clone())
    };
    let mut seen = Seen {
        method,
        path_and_query,
        content_type,
        body,
        matched: false,
    };
    let reply = match (reply, fallback) {
        (Some(r), _) => Some(r),
        (None, Some(f)) => f(&seen),
        (None, None) => None,
    };
    seen.matched = reply.is_some();
    lock(state).seen.push(seen);
    reply
}

/// Whether `got` contains `want`: objects by key, recursively; anything else by equality.
pub fn contains(got: &Value, want: &Value) -> bool {
    match (got, want) {
        (Value::Object(g), Value::Object(w)) => w
            .iter()
            .all(|(k, wv)| g.get(k).is_some_and(|gv| contains(gv, wv))),
        _ => got == want,
    }
}

/// A WebSocket upgrade request: its key, the subprotocols it offers, the pending upgrade.
struct Upgrade {
    key: String,
    protocols: Vec<String>,
    on: hyper::upgrade::OnUpgrade,
}

fn websocket_upgrade(req: &mut Request<Incoming>) -> Option<Upgrade> {
    let header = |name: http::header::HeaderName| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let wants = header(http::header::UPGRADE).is_some_and(|u| u.eq_ignore_ascii_case("websocket"))
        && header(http::header::CONNECTION).is_some_and(|c| {
            c.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
        });
    let key = header(http::header::SEC_WEBSOCKET_KEY).filter(|_| wants)?;
    let protocols = header(http::header::SEC_WEBSOCKET_PROTOCOL)
        .map(|p| p.split(',').map(|x| x.trim().to_string()).collect())
        .unwrap_or_default();
    Some(Upgrade {
        key,
        protocols,
        on: hyper::upgrade::on(req),
    })
}

/// The only port-forward subprotocol of kube's client that the kubelet speaks.
const PORT_FORWARD_PROTOCOL: &str = "v4.channel.k8s.io";

/// Answers a `pods/portforward` request: the upgrade, then the session on its own task.
fn port_forward(
    upgrade: Option<Upgrade>,
    path: &str,
    query: &[(String, String)],
    target: PodPort,
) -> Response<Body> {
    let bad = |message: &str| json_response(400, &status_body(400, "BadRequest", message));
    let Some(upgrade) = upgrade else {
        return bad("Upgrade request required");
    };
    let ports: Vec<&str> = query
        .iter()
        .filter(|(k, _)| k == "ports")
        .flat_map(|(_, v)| v.split(','))
        .collect();
    let port = match ports[..] {
        [one] => match one.trim().parse::<u16>() {
            Ok(p) if p > 0 => p,
            _ => return bad(&format!("invalid port {one:?}")),
        },
        _ => return bad("the recorded API forwards exactly one port per request"),
    };
    if !upgrade.protocols.iter().any(|p| p == PORT_FORWARD_PROTOCOL) {
        return bad(&format!(
            "requested protocol(s) are not supported: {:?}; supports {PORT_FORWARD_PROTOCOL}",
            upgrade.protocols
        ));
    }
    let pod = path
        .strip_suffix("/portforward")
        .and_then(|p| p.rsplit('/').next())
        .unwrap_or("")
        .to_string();
    let accept =
        tokio_tungstenite::tungstenite::handshake::derive_accept_key(upgrade.key.as_bytes());
    let on = upgrade.on;
    tokio::spawn(async move {
        if let Ok(upgraded) = on.await {
            let ws = WebSocketStream::from_raw_socket(
                hyper_util::rt::TokioIo::new(upgraded),
                Role::Server,
                None,
            )
            .await;
            port_forward_session(ws, &pod, port, target).await;
        }
    });
    Response::builder()
        .status(http::StatusCode::SWITCHING_PROTOCOLS)
        .header(http::header::UPGRADE, "websocket")
        .header(http::header::CONNECTION, "Upgrade")
        .header(http::header::SEC_WEBSOCKET_ACCEPT, accept)
        .header(http::header::SEC_WEBSOCKET_PROTOCOL, PORT_FORWARD_PROTOCOL)
        .body(empty())
        .unwrap_or_else(|_| Response::new(empty()))
}

/// The pod's side of a forwarded port.
trait PodIo: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> PodIo for T {}

/// One port-forward, in the v4 channel protocol (see the module docs).
async fn port_forward_session<S>(mut ws: WebSocketStream<S>, pod: &str, port: u16, target: PodPort)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let frame = |channel: u8, data: &[u8]| {
        let mut f = Vec::with_capacity(data.len() + 1);
        f.push(channel);
        f.extend_from_slice(data);
        Message::Binary(Bytes::from(f))
    };
    // The first frame of each channel (data 0, error 1) names the port.
    for ch in [0, 1] {
        if ws.send(frame(ch, &port.to_le_bytes())).await.is_err() {
            return;
        }
    }
    let io = match dial(pod, port, target).await {
        Ok(io) => io,
        Err(message) => {
            // As from a kubelet whose dial took a moment: the client's first bytes, if it sends
            // any within a second, come in before the error, and the error before the close. (A
            // client that writes after the close was sent may lose the error: kube's client
            // then ends the port-forward at its failed write.)
            let _ = tokio::time::timeout(std::time::Duration::from_secs(1), async {
                while let Some(Ok(m)) = ws.next().await {
                    match m {
                        Message::Binary(b) if b.len() > 1 && b[0] == 0 => break,
                        Message::Close(_) => break,
                        _ => {}
                    }
                }
            })
            .await;
            let _ = ws.send(frame(1, message.as_bytes())).await;
            let _ = ws.close(None).await;
            return;
        }
    };
    let (mut rd, mut wr) = tokio::io::split(io);
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        tokio::select! {
            m = ws.next() => match m {
                Some(Ok(Message::Binary(b))) if b.len() > 1 && b[0] == 0 => {
                    if wr.write_all(&b[1..]).await.is_err() {
                        break;
                    }
                }
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
                Some(Ok(_)) => {}
            },
            n = rd.read(&mut buf) => match n {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if ws.send(frame(0, &buf[..n])).await.is_err() {
                        break;
                    }
                }
            },
        }
    }
    let _ = ws.close(None).await;
    // Let the client's close frame arrive (bounded), so the connection ends cleanly.
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), async {
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
}

/// Connects to the pod's port, or says why the kubelet could not.
async fn dial(pod: &str, port: u16, target: PodPort) -> Result<Box<dyn PodIo>, String> {
    let refused = |e: &dyn std::fmt::Display| {
        format!("error forwarding port {port} to pod {pod}, uid : failed to connect to localhost:{port} inside the pod's network namespace: {e}")
    };
    match target {
        PodPort::Refused(message) => Err(message),
        PodPort::Connect { addr, netns } => {
            // A thread of its own: one that joined a namespace must not serve other tasks.
            let (tx, rx) = tokio::sync::oneshot::channel();
            std::thread::spawn(move || {
                let r = (|| {
                    if let Some(path) = &netns {
                        crate::netns::join_netns(path).map_err(|e| format!("{e:#}"))?;
                    }
                    let s = std::net::TcpStream::connect_timeout(
                        &addr,
                        std::time::Duration::from_secs(5),
                    )
                    .map_err(|e| format!("dial tcp {addr}: {e}"))?;
                    s.set_nonblocking(true).map_err(|e| e.to_string())?;
                    Ok::<_, String>(s)
                })();
                let _ = tx.send(r);
            });
            let s = rx
                .await
                .map_err(|_| refused(&"the dialling thread ended"))?
                .map_err(|e| refused(&e))?;
            let s = tokio::net::TcpStream::from_std(s).map_err(|e| refused(&e))?;
            Ok(Box::new(s))
        }
        PodPort::Http(answers) => {
            let (ours, theirs) = tokio::io::duplex(64 * 1024);
            let answers = Arc::new(answers);
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let answers = answers.clone();
                    async move {
                        let reply = match answers.get(req.uri().path()) {
                            Some((status, body)) => json_response(*status, body),
                            None => Response::builder()
                                .status(404)
                                .body(BodyExt::boxed(Full::new(Bytes::from_static(
                                    b"not found\n",
                                ))))
                                .unwrap_or_else(|_| Response::new(empty())),
                        };
                        Ok::<_, Infallible>(reply)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(theirs), svc)
                    .await;
            });
            Ok(Box::new(ours))
        }
    }
}

/// A recorded file's `port_forward` (see the module docs).
fn pod_port_of(v: &Value) -> Result<PodPort> {
    if let Some(m) = v.get("refused") {
        let m = m.as_str().ok_or_else(|| anyhow!("refused: not a string"))?;
        return Ok(PodPort::Refused(m.to_string()));
    }
    let Some(http) = v.get("http").and_then(Value::as_object) else {
        bail!("neither \"http\" (an object of paths) nor \"refused\" (the kubelet's error)");
    };
    let mut answers = BTreeMap::new();
    for (path, a) in http {
        let status = a.get("status").and_then(Value::as_u64).unwrap_or(200);
        let status = u16::try_from(status).with_context(|| format!("http.{path}.status"))?;
        answers.insert(
            path.clone(),
            (status, a.get("body").cloned().unwrap_or(Value::Null)),
        );
    }
    Ok(PodPort::Http(answers))
}

fn empty() -> Body {
    BodyExt::boxed(Full::new(Bytes::new()))
}

/// [`json_response`], its body's size added to `sent`.
fn counted_json(sent: &AtomicU64, status: u16, body: &Value) -> Response<Body> {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    sent.fetch_add(bytes.len() as u64, Ordering::Relaxed);
    json_bytes(status, bytes)
}

fn json_response(status: u16, body: &Value) -> Response<Body> {
    json_bytes(status, serde_json::to_vec(body).unwrap_or_default())
}

fn json_bytes(status: u16, bytes: Vec<u8>) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(BodyExt::boxed(Full::new(Bytes::from(bytes))))
        .unwrap_or_else(|_| Response::new(empty()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;
    use k8s_openapi::api::core::v1::{ConfigMap, Secret};
    use kube::api::{Api, PostParams};
    use kube::runtime::watcher;

    fn secret(rv: &str) -> Value {
        json!({"apiVersion": "v1", "kind": "Secret",
               "metadata": {"name": "s", "namespace": "ns", "resourceVersion": rv},
               "data": {"k": "dg=="}})
    }

    #[tokio::test]
    async fn replies_in_order_last_repeats_and_records_bodies() {
        let api = RecordedApi::start().await.unwrap();
        let path = "/api/v1/namespaces/ns/secrets/s";
        api.on(
            "GET",
            path,
            Reply::status(404, "NotFound", "secrets \"s\" not found"),
        );
        api.on("GET", path, Reply::json(200, secret("7")));
        api.on(
            "POST",
            "/api/v1/namespaces/ns/secrets",
            Reply::status(409, "AlreadyExists", "secrets \"s\" already exists"),
        );
        let secrets: Api<Secret> = Api::namespaced(api.client().unwrap(), "ns");
        let first = secrets.get("s").await.unwrap_err();
        assert!(
            matches!(first, kube::Error::Api(ref s) if s.code == 404),
            "{first:?}"
        );
        let mut s: Secret = serde_json::from_value(secret("")).unwrap();
        s.metadata.resource_version = None;
        let err = secrets
            .create(&PostParams::default(), &s)
            .await
            .unwrap_err();
        assert!(
            matches!(err, kube::Error::Api(ref s) if s.reason == "AlreadyExists"),
            "{err:?}"
        );
        for _ in 0..2 {
            let got = secrets.get("s").await.unwrap();
            assert_eq!(got.metadata.resource_version.as_deref(), Some("7"));
        }
        let seen = api.requests();
        assert_eq!(seen.len(), 4);
        assert!(seen.iter().all(|s| s.matched));
        assert_eq!(seen[1].method, "POST");
        assert_eq!(seen[1].body.as_ref().unwrap()["metadata"]["name"], "s");
        // an unrecorded path is a 404 and shows as unmatched
        assert!(secrets.get("other").await.is_err());
        assert!(!api.requests().last().unwrap().matched);
    }

    #[tokio::test]
    async fn watcher_lists_then_follows_held_watch_and_emitted_events() {
        let api = RecordedApi::start().await.unwrap();
        let cm = |name: &str, rv: &str| {
            json!({"apiVersion": "v1", "kind": "ConfigMap",
                   "metadata": {"name": name, "namespace": "ns", "resourceVersion": rv}})
        };
        let path = "/api/v1/namespaces/ns/configmaps";
        api.on(
            "GET",
            path,
            Reply::json(
                200,
                json!({"apiVersion": "v1", "kind": "ConfigMapList",
                       "metadata": {"resourceVersion": "10"}, "items": [cm("a", "9")]}),
            ),
        );
        api.on(
            "GET",
            &format!("{path}?watch=true"),
            Reply::watch(vec![bookmark("v1", "ConfigMap", "11")], true),
        );
        let cms: Api<ConfigMap> = Api::namespaced(api.client().unwrap(), "ns");
        let mut stream = watcher(cms, watcher::Config::default()).boxed();
        let mut names = Vec::new();
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        while names.len() < 2 {
            let ev = tokio::time::timeout_at(deadline, stream.next())
                .await
                .expect("watch events in time")
                .unwrap()
                .unwrap();
            match ev {
                watcher::Event::InitApply(o) | watcher::Event::Apply(o) => {
                    names.push(o.metadata.name.unwrap());
                    if names.len() == 1 {
                        // wait for the held watch, then push an event into it
                        while api.open_watches(path) == 0 {
                            tokio::select! {
                                _ = tokio::time::sleep(std::time::Duration::from_millis(20)) => {}
                                e = stream.next() => {
                                    if let Some(Ok(watcher::Event::Apply(o))) = e {
                                        names.push(o.metadata.name.unwrap());
                                    }
                                }
                            }
                            assert!(tokio::time::Instant::now() < deadline);
                        }
                        assert_eq!(api.emit(path, event("ADDED", cm("b", "12"))), 1);
                    }
                }
                _ => {}
            }
        }
        assert_eq!(names, ["a", "b"]);
        let watch = api
            .requests()
            .into_iter()
            .find(|s| s.path_and_query.contains("watch=true"))
            .unwrap();
        assert!(
            watch.path_and_query.contains("resourceVersion=10"),
            "{}",
            watch.path_and_query
        );
    }

    /// The counters benchmarks read: requests seen, and the body bytes of JSON answers (404s
    /// included) and of each watch event line as it goes out.
    #[tokio::test]
    async fn counts_requests_and_the_body_bytes_it_sends() {
        let api = RecordedApi::start().await.unwrap();
        api.on(
            "GET",
            "/api/v1/namespaces/ns/secrets/s",
            Reply::json(200, secret("7")),
        );
        let cms = "/api/v1/namespaces/ns/configmaps";
        let mark = bookmark("v1", "ConfigMap", "11");
        api.on(
            "GET",
            &format!("{cms}?watch=true"),
            Reply::watch(vec![mark.clone()], true),
        );
        let secrets: Api<Secret> = Api::namespaced(api.client().unwrap(), "ns");
        secrets.get("s").await.unwrap();
        assert!(secrets.get("missing").await.is_err());
        let len = |v: &Value| serde_json::to_vec(v).unwrap().len() as u64;
        let missing = status_body(
            404,
            "NotFound",
            "recorded API: no recorded reply for /api/v1/namespaces/ns/secrets/missing",
        );
        let mut want = len(&secret("7")) + len(&missing);
        assert_eq!(api.bytes_sent(), want);

        // A watch: each line with its newline, counted as it is sent.
        let mut tcp = tokio::net::TcpStream::connect(api.addr).await.unwrap();
        tcp.write_all(format!("GET {cms}?watch=true HTTP/1.1\r\nhost: x\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let changed = event(
            "ADDED",
            json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "b", "namespace": "ns", "resourceVersion": "12"}}),
        );
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        for (i, needle) in ["BOOKMARK", "\"name\":\"b\""].into_iter().enumerate() {
            if i == 1 {
                assert_eq!(api.emit(cms, changed.clone()), 1);
            }
            while !String::from_utf8_lossy(&got).contains(needle) {
                let n =
                    tokio::time::timeout(std::time::Duration::from_secs(10), tcp.read(&mut buf))
                        .await
                        .expect("the watch line in time")
                        .unwrap();
                assert!(n > 0, "the watch closed");
                got.extend_from_slice(&buf[..n]);
            }
        }
        let watched = len(&mark) + 1 + len(&changed) + 1;
        want += watched;
        assert_eq!(api.bytes_sent(), want);
        assert_eq!(api.bytes_sent_by_path()[cms], watched);
        assert_eq!(api.request_count(), 3);
    }

    #[tokio::test]
    async fn a_held_back_reply_answers_once_released() {
        let api = RecordedApi::start().await.unwrap();
        let path = "/api/v1/namespaces/ns/secrets/s";
        let release = Release::new();
        api.on(
            "GET",
            path,
            Reply::after(&release, Reply::json(200, secret("8"))),
        );
        let secrets: Api<Secret> = Api::namespaced(api.client().unwrap(), "ns");
        let pending = tokio::spawn(async move { secrets.get("s").await });
        // Recorded on arrival, still unanswered.
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        while api.requests().is_empty() {
            assert!(tokio::time::Instant::now() < deadline, "request never seen");
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        assert!(!pending.is_finished(), "answered before the release");
        assert!(!release.is_released());
        release.release();
        let got = tokio::time::timeout(std::time::Duration::from_secs(10), pending)
            .await
            .expect("answered after the release")
            .unwrap()
            .unwrap();
        assert_eq!(got.metadata.resource_version.as_deref(), Some("8"));
        // As the last reply it repeats, at once now.
        let secrets: Api<Secret> = Api::namespaced(api.client().unwrap(), "ns");
        let again = tokio::time::timeout(std::time::Duration::from_secs(10), secrets.get("s"))
            .await
            .expect("answered at once")
            .unwrap();
        assert_eq!(again.metadata.resource_version.as_deref(), Some("8"));
        assert_eq!(api.requests().len(), 2);
    }

    #[tokio::test]
    async fn body_routes_answer_by_body_and_win_over_plain_ones() {
        let api = RecordedApi::start().await.unwrap();
        let path = "/apis/authentication.k8s.io/v1/tokenreviews";
        api.on("POST", path, Reply::json(201, json!({"who": "anyone"})));
        api.on_body(
            "POST",
            path,
            json!({"spec": {"token": "a"}}),
            Reply::json(201, json!({"who": "a"})),
        );
        let client = api.client().unwrap();
        let post = |token: &'static str| {
            let client = client.clone();
            async move {
                let req = http::Request::post(path)
                    .header("content-type", "application/json")
                    .body(
                        serde_json::to_vec(&json!({"spec": {"token": token, "audiences": ["x"]}}))
                            .unwrap(),
                    )
                    .unwrap();
                client.request::<Value>(req).await.unwrap()["who"].clone()
            }
        };
        assert_eq!(post("a").await, "a");
        assert_eq!(post("b").await, "anyone");
        assert!(contains(
            &json!({"a": {"b": 1, "c": 2}}),
            &json!({"a": {"b": 1}})
        ));
        assert!(!contains(&json!({"a": {"b": 1}}), &json!({"a": {"b": 2}})));
        assert!(!contains(&json!({"a": [1, 2]}), &json!({"a": [1]})));
    }

    /// kube's own port-forward client against the recorded API: the v4 channels to a real
    /// port, the kubelet's error, recorded HTTP answers, a missing pod and a plain GET.
    #[tokio::test]
    async fn port_forward_speaks_the_v4_channel_protocol_kube_expects() {
        use k8s_openapi::api::core::v1::Pod;
        let api = RecordedApi::start().await.unwrap();
        // The pod's port: reads a line, answers it upper-cased, closes.
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let mut got = Vec::new();
                let mut b = [0u8; 64];
                while !got.ends_with(b"\n") {
                    match s.read(&mut b).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => got.extend_from_slice(&b[..n]),
                    }
                }
                let _ = s.write_all(&got.to_ascii_uppercase()).await;
            }
        });
        api.on_port_forward("ns", "p", 15020, PodPort::Connect { addr, netns: None });
        api.on_port_forward("ns", "q", 15020, PodPort::Refused("dial: refused".into()));
        api.on_port_forward(
            "ns",
            "h",
            15020,
            PodPort::Http([("/config_dump".to_string(), (200, json!({"generation": 3})))].into()),
        );
        let pods: Api<Pod> = Api::namespaced(api.client().unwrap(), "ns");

        let mut pf = pods.portforward("p", &[15020]).await.unwrap();
        let mut s = pf.take_stream(15020).unwrap();
        s.write_all(b"hello\n").await.unwrap();
        let mut out = Vec::new();
        tokio::time::timeout(std::time::Duration::from_secs(10), s.read_to_end(&mut out))
            .await
            .expect("the pod side's close ends the stream")
            .unwrap();
        assert_eq!(out, b"HELLO\n");

        let mut pf = pods.portforward("q", &[15020]).await.unwrap();
        let err = pf.take_error(15020).unwrap().await;
        assert_eq!(err.as_deref(), Some("dial: refused"));

        let mut pf = pods.portforward("h", &[15020]).await.unwrap();
        let mut s = pf.take_stream(15020).unwrap();
        s.write_all(b"GET /config_dump HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut out = Vec::new();
        tokio::time::timeout(std::time::Duration::from_secs(10), s.read_to_end(&mut out))
            .await
            .expect("answered and closed")
            .unwrap();
        let out = String::from_utf8_lossy(&out);
        assert!(out.starts_with("HTTP/1.1 200 OK\r\n"), "{out}");
        assert!(out.ends_with(r#"{"generation":3}"#), "{out}");

        // No route: the API server's 404 Status, before any upgrade.
        let e = pods.portforward("gone", &[15020]).await.err().expect("404");
        assert!(
            matches!(e, kube::Error::Api(ref s) if s.code == 404),
            "{e:?}"
        );
        // Without the upgrade: 400, as the API server answers.
        let req = http::Request::get("/api/v1/namespaces/ns/pods/h/portforward?ports=15020")
            .body(Vec::new())
            .unwrap();
        let e = api.client().unwrap().request_text(req).await.unwrap_err();
        assert!(
            matches!(e, kube::Error::Api(ref s) if s.code == 400),
            "{e:?}"
        );
        let seen: Vec<String> = api
            .requests()
            .iter()
            .map(|s| s.path().to_string())
            .collect();
        assert!(seen.iter().all(|p| p.ends_with("/portforward")), "{seen:?}");
    }

    #[tokio::test]
    async fn the_fallback_answers_what_no_route_matches() {
        let api = RecordedApi::start().await.unwrap();
        let path = "/api/v1/namespaces/ns/secrets/s";
        api.on("GET", path, Reply::json(200, secret("1")));
        api.fallback(Arc::new(|seen: &Seen| {
            (seen.path() == "/api/v1/namespaces/ns/secrets/computed").then(|| {
                let rv = seen
                    .query()
                    .into_iter()
                    .find(|(k, _)| k == "rv")
                    .map(|(_, v)| v)
                    .unwrap_or_default();
                Reply::json(200, secret(&rv))
            })
        }));
        let client = api.client().unwrap();
        let get = |p: &'static str| {
            let client = client.clone();
            async move {
                let req = http::Request::get(p).body(Vec::new()).unwrap();
                client.request::<Value>(req).await
            }
        };
        // A route still wins; the fallback computes the rest; its None is the 404.
        let routed = get(path).await.unwrap();
        assert_eq!(routed["metadata"]["resourceVersion"], "1");
        let computed = get("/api/v1/namespaces/ns/secrets/computed?rv=a%2Fb")
            .await
            .unwrap();
        assert_eq!(computed["metadata"]["resourceVersion"], "a/b");
        assert!(get("/api/v1/namespaces/ns/secrets/other").await.is_err());
        let matched: Vec<bool> = api.requests().iter().map(|s| s.matched).collect();
        assert_eq!(matched, [true, true, false]);
    }

    #[test]
    fn query_matching_is_order_free_and_decoded() {
        let (p, q) = split_query("/a?b=2&a=x%2Fy&watch=true");
        assert_eq!(p, "/a");
        assert_eq!(
            q,
            vec![
                ("a".into(), "x/y".into()),
                ("b".into(), "2".into()),
                ("watch".into(), "true".into())
            ]
        );
    }
}
