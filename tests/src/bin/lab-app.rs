//! The lab's workloads, one binary: Bookinfo-like HTTP services (productpage, details, reviews,
//! ratings), a generic HTTP server, a gRPC echo (h2c) and a Redis-like line-protocol server.
//! Every HTTP answer is JSON naming the service, version and pod that produced it.

use anyhow::{anyhow, Context, Result};
use bytes::Bytes;
use clap::{Parser, Subcommand};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::body::{Body, Frame, SizeHint};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

#[derive(Parser)]
#[command(name = "lab-app", about = "remora lab workloads")]
struct Cli {
    /// Port to listen on (all addresses).
    #[arg(long, default_value_t = 9080, global = true)]
    port: u16,
    /// Worker threads.
    #[arg(long, default_value_t = 1, global = true)]
    threads: usize,
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand, Clone)]
enum Mode {
    /// Calls details and reviews; forwards `end-user` and trace headers.
    Productpage {
        #[arg(long, default_value = "v1")]
        version: String,
        /// Client timeout for each upstream call, in milliseconds.
        #[arg(long, default_value_t = 3000)]
        timeout_ms: u64,
    },
    /// Details service.
    Details {
        #[arg(long, default_value = "v1")]
        version: String,
    },
    /// Reviews; v2 and v3 call ratings.
    Reviews {
        #[arg(long, default_value = "v1")]
        version: String,
        #[arg(long, default_value_t = 10000)]
        timeout_ms: u64,
    },
    /// Ratings service.
    Ratings {
        #[arg(long, default_value = "v1")]
        version: String,
    },
    /// A generic HTTP server.
    Http {
        #[arg(long)]
        service: String,
        #[arg(long, default_value = "v1")]
        version: String,
        /// Answer with a body of this many bytes instead of JSON.
        #[arg(long)]
        body_bytes: Option<usize>,
        /// Answer 503 to every Nth request (1 = all).
        #[arg(long)]
        fail_every: Option<u64>,
        /// Accept fault controls (`POST /control/fault?mode=hang|503|none&seconds=N`): for the
        /// next N seconds every request but the control itself hangs until the window ends, or
        /// is answered 503.
        #[arg(long)]
        control: bool,
    },
    /// gRPC echo over h2c: any method, answers the request message prefixed with the pod name.
    GrpcEcho,
    /// Redis-like line protocol: PING, SET k v, GET k, WHO.
    Kv,
    /// Answers each connection with `ORIG <SO_ORIGINAL_DST>` and closes (a capture probe).
    OrigDst,
}

struct App {
    mode: Mode,
    pod: String,
    count: AtomicU64,
    kv: Mutex<HashMap<String, String>>,
    /// The fault window set through `/control/fault` (`--control`).
    fault: Mutex<Option<(Fault, tokio::time::Instant)>>,
}

/// A fault the `http` mode injects into its own answers while a control window is open.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    Hang,
    Unavailable,
}

/// Longest fault window a control request may open.
const MAX_FAULT_SECONDS: f64 = 600.0;

/// Parses `mode=…&seconds=…` of a control request: `Ok(None)` clears the fault.
fn parse_fault(query: &str) -> std::result::Result<Option<(Fault, Duration)>, String> {
    let mut mode = None;
    let mut seconds = None;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match k {
            "mode" => mode = Some(v.to_string()),
            "seconds" => {
                let s: f64 = v
                    .parse()
                    .map_err(|_| format!("seconds={v:?}: not a number"))?;
                if !(s > 0.0 && s <= MAX_FAULT_SECONDS) {
                    return Err(format!(
                        "seconds={v}: must be more than 0 and at most {MAX_FAULT_SECONDS}"
                    ));
                }
                seconds = Some(Duration::from_secs_f64(s));
            }
            other => return Err(format!("unknown parameter {other:?} (mode, seconds)")),
        }
    }
    let fault = match mode.as_deref() {
        Some("none") => return Ok(None),
        Some("hang") => Fault::Hang,
        Some("503") => Fault::Unavailable,
        Some(m) => return Err(format!("mode={m:?}: expected hang, 503 or none")),
        None => return Err("mode is required (hang, 503 or none)".to_string()),
    };
    let seconds = seconds.ok_or_else(|| format!("mode={fault:?} needs seconds"))?;
    Ok(Some((fault, seconds)))
}

const FORWARD: &[&str] = &[
    "end-user",
    "x-request-id",
    "traceparent",
    "tracestate",
    "b3",
    "x-b3-traceid",
    "x-b3-spanid",
    "x-b3-parentspanid",
    "x-b3-sampled",
    "x-b3-flags",
];

/// A response body: one data frame, then optional trailers (gRPC needs them).
struct Reply {
    data: Option<Bytes>,
    trailers: Option<http::HeaderMap>,
}

impl Reply {
    fn new(data: Bytes) -> Reply {
        Reply {
            data: Some(data),
            trailers: None,
        }
    }
}

impl Body for Reply {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if let Some(d) = self.data.take() {
            if !d.is_empty() {
                return Poll::Ready(Some(Ok(Frame::data(d))));
            }
        }
        Poll::Ready(self.trailers.take().map(|t| Ok(Frame::trailers(t))))
    }

    fn is_end_stream(&self) -> bool {
        self.data.as_ref().is_none_or(|d| d.is_empty()) && self.trailers.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        match (&self.data, &self.trailers) {
            (d, None) => SizeHint::with_exact(d.as_ref().map_or(0, |d| d.len() as u64)),
            _ => SizeHint::default(),
        }
    }
}

fn json_reply(status: u16, v: serde_json::Value) -> http::Response<Reply> {
    let mut r = http::Response::new(Reply::new(Bytes::from(v.to_string())));
    *r.status_mut() =
        http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut().insert(
        "content-type",
        http::HeaderValue::from_static("application/json"),
    );
    r
}

/// GET `url` (http://host:port/path), resolving the host through /etc/hosts.
async fn call(url: &str, headers: &http::HeaderMap, timeout: Duration) -> serde_json::Value {
    let fut = async {
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| anyhow!("not an http URL"))?;
        let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        let addr = tokio::net::lookup_host(authority)
            .await
            .with_context(|| format!("resolving {authority}"))?
            .next()
            .ok_or_else(|| anyhow!("{authority} has no address"))?;
        let tcp = tokio::net::TcpStream::connect(addr).await?;
        let (mut send, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp)).await?;
        tokio::spawn(conn);
        let mut req = http::Request::builder()
            .uri(if path.is_empty() { "/" } else { path })
            .header("host", authority);
        for h in FORWARD {
            if let Some(v) = headers.get(*h) {
                req = req.header(*h, v);
            }
        }
        let resp = send
            .send_request(req.body(Full::new(Bytes::new()))?)
            .await?;
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await?.to_bytes();
        let parsed: serde_json::Value = serde_json::from_slice(&body)
            .unwrap_or_else(|_| serde_json::json!({"text": String::from_utf8_lossy(&body)}));
        Ok::<_, anyhow::Error>(if status == 200 {
            parsed
        } else {
            serde_json::json!({"status": status, "error": parsed})
        })
    };
    match tokio::time::timeout(timeout, fut).await {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => serde_json::json!({"status": 0, "error": format!("{e:#}")}),
        Err(_) => serde_json::json!({"status": 0, "error": format!("timed out after {timeout:?}")}),
    }
}

async fn handle(app: Arc<App>, req: http::Request<Incoming>) -> Result<http::Response<Reply>> {
    let n = app.count.fetch_add(1, Ordering::Relaxed) + 1;
    let path = req.uri().path().to_string();
    if path == "/health" {
        return Ok(json_reply(200, serde_json::json!({"status": "ok"})));
    }
    if path == "/metrics" {
        // The app's own metrics in Prometheus' text format (what metrics merging adds to the
        // proxy's): requests this app answered.
        let text = format!(
            "# HELP lab_app_requests_total Requests this app answered.\n# TYPE lab_app_requests_total counter\nlab_app_requests_total {}\n",
            n - 1
        );
        let mut r = http::Response::new(Reply::new(Bytes::from(text)));
        r.headers_mut().insert(
            "content-type",
            http::HeaderValue::from_static("text/plain; version=0.0.4"),
        );
        return Ok(r);
    }
    if let Mode::Http { control: true, .. } = &app.mode {
        if path == "/control/fault" {
            if req.method() != http::Method::POST {
                return Ok(json_reply(
                    405,
                    serde_json::json!({"error": "use POST /control/fault?mode=hang|503|none&seconds=N"}),
                ));
            }
            return Ok(match parse_fault(req.uri().query().unwrap_or("")) {
                Err(e) => json_reply(400, serde_json::json!({"error": e})),
                Ok(f) => {
                    let window = f.map(|(k, d)| (k, tokio::time::Instant::now() + d));
                    if let Ok(mut g) = app.fault.lock() {
                        *g = window;
                    }
                    println!("lab-app {}: fault window set: {f:?}", app.pod);
                    json_reply(
                        200,
                        serde_json::json!({"pod": app.pod, "fault": f.map(|(k, d)| (format!("{k:?}"), d.as_secs_f64()))}),
                    )
                }
            });
        }
        let active = app
            .fault
            .lock()
            .ok()
            .and_then(|g| *g)
            .filter(|(_, until)| tokio::time::Instant::now() < *until);
        match active {
            Some((Fault::Hang, until)) => tokio::time::sleep_until(until).await,
            Some((Fault::Unavailable, _)) => {
                return Ok(json_reply(
                    503,
                    serde_json::json!({"pod": app.pod, "fault": "503 burst"}),
                ))
            }
            None => {}
        }
    }
    let headers = req.headers().clone();
    let pod = app.pod.clone();
    let user = headers
        .get("end-user")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    Ok(match &app.mode {
        Mode::Productpage {
            version,
            timeout_ms,
        } => {
            let t = Duration::from_millis(*timeout_ms);
            let (details, reviews) = tokio::join!(
                call("http://details:9080/details/0", &headers, t),
                call("http://reviews:9080/reviews/0", &headers, t)
            );
            json_reply(
                200,
                serde_json::json!({"service": "productpage", "version": version, "pod": pod,
                "user": user, "details": details, "reviews": reviews}),
            )
        }
        Mode::Details { version } => json_reply(
            200,
            serde_json::json!({"service": "details", "version": version, "pod": pod,
            "book": {"id": 0, "author": "William Shakespeare", "type": "paperback"}}),
        ),
        Mode::Ratings { version } => json_reply(
            200,
            serde_json::json!({"service": "ratings", "version": version, "pod": pod,
            "ratings": {"Reviewer1": 5, "Reviewer2": 4}}),
        ),
        Mode::Reviews {
            version,
            timeout_ms,
        } => {
            let mut body =
                serde_json::json!({"service": "reviews", "version": version, "pod": pod});
            if version != "v1" {
                body["ratings"] = call(
                    "http://ratings:9080/ratings/0",
                    &headers,
                    Duration::from_millis(*timeout_ms),
                )
                .await;
            }
            json_reply(200, body)
        }
        Mode::Http {
            service,
            version,
            body_bytes,
            fail_every,
            ..
        } => {
            if fail_every.is_some_and(|k| k > 0 && n.is_multiple_of(k)) {
                json_reply(
                    503,
                    serde_json::json!({"service": service, "version": version, "pod": pod, "failed": n}),
                )
            } else if let Some(size) = body_bytes {
                let mut r = http::Response::new(Reply::new(Bytes::from(vec![b'x'; *size])));
                r.headers_mut()
                    .insert("content-type", http::HeaderValue::from_static("text/plain"));
                r
            } else {
                json_reply(
                    200,
                    serde_json::json!({"service": service, "version": version, "pod": pod, "count": n}),
                )
            }
        }
        Mode::GrpcEcho => grpc_echo(&pod, req).await?,
        Mode::Kv | Mode::OrigDst => json_reply(
            400,
            serde_json::json!({"error": "this mode does not speak HTTP"}),
        ),
    })
}

async fn grpc_echo(pod: &str, req: http::Request<Incoming>) -> Result<http::Response<Reply>> {
    let body = req.into_body().collect().await?.to_bytes();
    let mut out = Vec::new();
    let mut status = ("0", String::new());
    match remora_e2e::client::grpc_unframe(body) {
        Ok(frames) => {
            for f in frames {
                match remora_e2e::client::pb_string_decode(&f) {
                    Ok(m) => out.extend_from_slice(&remora_e2e::client::grpc_frame(
                        &remora_e2e::client::pb_string(&format!("{m} from {pod}")),
                    )),
                    Err(e) => status = ("3", format!("bad message: {e}")),
                }
            }
        }
        Err(e) => status = ("3", format!("bad framing: {e}")),
    }
    let mut trailers = http::HeaderMap::new();
    trailers.insert("grpc-status", http::HeaderValue::from_static(status.0));
    if !status.1.is_empty() {
        if let Ok(v) = http::HeaderValue::from_str(&status.1) {
            trailers.insert("grpc-message", v);
        }
    }
    let mut r = http::Response::new(Reply {
        data: Some(Bytes::from(out)),
        trailers: Some(trailers),
    });
    r.headers_mut().insert(
        "content-type",
        http::HeaderValue::from_static("application/grpc"),
    );
    Ok(r)
}

async fn kv_conn(app: Arc<App>, stream: tokio::net::TcpStream) -> Result<()> {
    let (r, mut w) = stream.into_split();
    let mut lines = BufReader::new(r).lines();
    while let Some(line) = lines.next_line().await? {
        let mut parts = line.split_whitespace();
        let answer = match parts.next().map(|c| c.to_ascii_uppercase()) {
            Some(c) if c == "PING" => "+PONG".to_string(),
            Some(c) if c == "WHO" => format!("+{}", app.pod),
            Some(c) if c == "SET" => match (parts.next(), parts.next()) {
                (Some(k), Some(v)) => {
                    if let Ok(mut m) = app.kv.lock() {
                        m.insert(k.to_string(), v.to_string());
                    }
                    "+OK".to_string()
                }
                _ => "-ERR SET needs a key and a value".to_string(),
            },
            Some(c) if c == "GET" => match parts.next() {
                Some(k) => match app.kv.lock().ok().and_then(|m| m.get(k).cloned()) {
                    Some(v) => format!("${v}"),
                    None => "$-1".to_string(),
                },
                None => "-ERR GET needs a key".to_string(),
            },
            Some(c) => format!("-ERR unknown command {c:?}"),
            None => continue,
        };
        w.write_all(format!("{answer}\r\n").as_bytes()).await?;
    }
    Ok(())
}

fn orig_dst(s: &tokio::net::TcpStream) -> Result<SocketAddr> {
    let sin = nix::sys::socket::getsockopt(s, nix::sys::socket::sockopt::OriginalDst)?;
    let ip = std::net::Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
    Ok(SocketAddr::from((ip, u16::from_be(sin.sin_port))))
}

async fn serve(app: Arc<App>, port: u16) -> Result<()> {
    let addr = SocketAddr::from(([0, 0, 0, 0], port));
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {addr}"))?;
    println!("lab-app {} listening on {addr}", app.pod);
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                eprintln!("accept: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        tokio::spawn(async move {
            if matches!(app.mode, Mode::OrigDst) {
                let answer = match orig_dst(&stream) {
                    Ok(a) => format!("ORIG {a}\n"),
                    Err(e) => format!("ERR {e}\n"),
                };
                let mut stream = stream;
                let _ = stream.write_all(answer.as_bytes()).await;
                let _ = stream.shutdown().await;
                return;
            }
            if matches!(app.mode, Mode::Kv) {
                if let Err(e) = kv_conn(app, stream).await {
                    eprintln!("kv connection: {e:#}");
                }
                return;
            }
            let svc = hyper::service::service_fn(move |req| handle(app.clone(), req));
            let builder =
                hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
            if let Err(e) = builder
                .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                .await
            {
                let msg = e.to_string();
                if !msg.contains("connection closed") {
                    eprintln!("connection: {msg}");
                }
            }
        });
    }
}

fn main() {
    let cli = Cli::parse();
    let pod = std::env::var("POD_NAME")
        .or_else(|_| std::env::var("HOSTNAME"))
        .unwrap_or_else(|_| "unknown".into());
    let app = Arc::new(App {
        mode: cli.mode.clone(),
        pod,
        count: AtomicU64::new(0),
        kv: Mutex::new(HashMap::new()),
        fault: Mutex::new(None),
    });
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cli.threads.max(1))
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("lab-app: cannot start the runtime: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = rt.block_on(serve(app, cli.port)) {
        eprintln!("lab-app: {e:#}");
        std::process::exit(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fault_controls_parse_and_validate() {
        assert_eq!(
            parse_fault("mode=hang&seconds=2.5"),
            Ok(Some((Fault::Hang, Duration::from_millis(2500))))
        );
        assert_eq!(
            parse_fault("seconds=1&mode=503"),
            Ok(Some((Fault::Unavailable, Duration::from_secs(1))))
        );
        assert_eq!(parse_fault("mode=none"), Ok(None));
        assert!(parse_fault("mode=hang")
            .unwrap_err()
            .contains("needs seconds"));
        assert!(parse_fault("mode=slow&seconds=1")
            .unwrap_err()
            .contains("slow"));
        assert!(parse_fault("mode=hang&seconds=0")
            .unwrap_err()
            .contains("more than 0"));
        assert!(parse_fault("mode=hang&seconds=601")
            .unwrap_err()
            .contains("at most"));
        assert!(parse_fault("mode=hang&seconds=x")
            .unwrap_err()
            .contains("not a number"));
        assert!(parse_fault("mode=hang&seconds=1&x=2")
            .unwrap_err()
            .contains("\"x\""));
        assert!(parse_fault("").unwrap_err().contains("mode is required"));
    }
}
