//! The load generator: a fixed-rate (open-loop) stream of requests from inside the client pod's
//! network namespace, each request's outcome as the client saw it.

use super::{SoakConfig, CLIENT_TIMEOUT, PORT};
use anyhow::{anyhow, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use serde::Serialize;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How one request ended, as the client saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "detail")]
pub enum Outcome {
    Ok,
    Status(u16),
    Connect(String),
    Timeout,
    Io(String),
}

/// One request of the load.
#[derive(Debug, Clone, Serialize)]
pub struct Request {
    pub id: String,
    /// Seconds since the load started.
    pub start_s: f64,
    pub duration_ms: f64,
    pub outcome: Outcome,
}

/// What the load generator sent: every request, and how many were planned.
pub(super) struct LoadResult {
    pub(super) requests: Vec<Request>,
    pub(super) planned: u64,
}

fn request_id(run: u64, n: u64) -> String {
    format!(
        "{:08x}-50a4-4000-8000-{:012x}",
        (run & 0xffff_ffff) as u32,
        n
    )
}

/// Runs the load on a thread that joined the client pod's network namespace (so every socket it
/// makes is the client pod's, captured by its sidecar): `rate` requests/s for `duration` to
/// `vip:8080` with `Host: backend:8080`, at most `concurrency` at once, each bounded by
/// [`CLIENT_TIMEOUT`]. Stops early when `stop` is set.
pub(super) fn spawn_load(
    netns_path: PathBuf,
    vip: Ipv4Addr,
    cfg: &SoakConfig,
    t0: Instant,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<Result<LoadResult>> {
    let rate = cfg.rate as f64;
    let planned = (cfg.duration.as_secs_f64() * rate) as u64;
    let concurrency = cfg.concurrency;
    let end = t0 + cfg.duration;
    std::thread::spawn(move || -> Result<LoadResult> {
        crate::netns::join_netns(&netns_path)?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let run = std::process::id() as u64;
        let next = Arc::new(AtomicU64::new(0));
        let out = Arc::new(Mutex::new(Vec::with_capacity(planned as usize)));
        rt.block_on(async {
            let mut tasks = Vec::new();
            for _ in 0..concurrency {
                let next = next.clone();
                let out = out.clone();
                let stop = stop.clone();
                tasks.push(tokio::spawn(async move {
                    let addr = SocketAddr::from((vip, PORT));
                    let mut conn: Option<hyper::client::conn::http1::SendRequest<Full<Bytes>>> =
                        None;
                    loop {
                        let n = next.fetch_add(1, Ordering::Relaxed);
                        if n >= planned || stop.load(Ordering::Relaxed) {
                            break;
                        }
                        let due = t0 + Duration::from_secs_f64(n as f64 / rate);
                        if due >= end {
                            break;
                        }
                        tokio::time::sleep_until(due.into()).await;
                        let id = request_id(run, n);
                        let start = Instant::now();
                        let outcome =
                            match tokio::time::timeout(CLIENT_TIMEOUT, one(&mut conn, addr, &id))
                                .await
                            {
                                Ok(o) => o,
                                Err(_) => {
                                    conn = None;
                                    Outcome::Timeout
                                }
                            };
                        if outcome != Outcome::Ok {
                            conn = None;
                        }
                        let r = Request {
                            id,
                            start_s: start.duration_since(t0).as_secs_f64(),
                            duration_ms: start.elapsed().as_secs_f64() * 1000.0,
                            outcome,
                        };
                        if let Ok(mut v) = out.lock() {
                            v.push(r);
                        }
                    }
                }));
            }
            for t in tasks {
                let _ = t.await;
            }
        });
        let mut requests = std::mem::take(&mut *out.lock().map_err(|_| anyhow!("poisoned"))?);
        requests.sort_by(|a, b| a.start_s.total_cmp(&b.start_s));
        Ok(LoadResult { requests, planned })
    })
}

/// One GET on the worker's keep-alive connection (made on first use or after a failure).
async fn one(
    conn: &mut Option<hyper::client::conn::http1::SendRequest<Full<Bytes>>>,
    addr: SocketAddr,
    id: &str,
) -> Outcome {
    if conn.as_ref().is_none_or(|c| c.is_closed()) {
        let tcp = match tokio::net::TcpStream::connect(addr).await {
            Ok(t) => t,
            Err(e) => return Outcome::Connect(e.to_string()),
        };
        let _ = tcp.set_nodelay(true);
        match hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp)).await {
            Ok((send, c)) => {
                tokio::spawn(c);
                *conn = Some(send);
            }
            Err(e) => return Outcome::Connect(e.to_string()),
        }
    }
    let Some(send) = conn.as_mut() else {
        return Outcome::Connect("no connection".into());
    };
    if send.ready().await.is_err() {
        return Outcome::Io("connection closed before the request".into());
    }
    let req = match http::Request::builder()
        .uri("/soak")
        .header("host", format!("backend:{PORT}"))
        .header("x-request-id", id)
        .body(Full::new(Bytes::new()))
    {
        Ok(r) => r,
        Err(e) => return Outcome::Io(e.to_string()),
    };
    match send.send_request(req).await {
        Ok(resp) => {
            let status = resp.status().as_u16();
            match resp.into_body().collect().await {
                Ok(_) if (200..300).contains(&status) => Outcome::Ok,
                Ok(_) => Outcome::Status(status),
                Err(e) => Outcome::Io(format!("reading the body: {e}")),
            }
        }
        Err(e) => Outcome::Io(e.to_string()),
    }
}
