//! The in-process proxy the HTTP fuzz targets talk to: remora-proxy's outbound capture listener
//! wired as `remora-proxy run` wires it (CaptureApp with the HTTP/1 and h2c Pingora proxies and
//! the downstream guard), on 127.0.0.1 with a fixed original destination (no iptables), in front
//! of an in-process HTTP/1 + h2c upstream. Started once per fuzzing process.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use pingora::server::configuration::ServerConf;
use pingora::server::{RunArgs, Server, ShutdownSignal, ShutdownSignalWatch};
use pingora::services::listening::Service;
use remora_proxy::guard::stream_idle::StreamIdleApp;
use remora_proxy::guard::{DownstreamLimits, Guard};
use remora_proxy::listen::CaptureApp;
use remora_proxy::state::{Direction, Settings, Shared};
use remora_proxy::rules::{self, LoadContext, Snapshot};
use remora_proxy::telemetry::{AccessLog, Metrics, Workload};
use remora_proxy::http::MeshHttp;
use remora_proxy::upstream::HostResolver;

/// The longest a fuzz exchange waits for the proxy's answer or close.
pub const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// The h2c client connection preface.
pub const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The running proxy.
pub struct Harness {
    /// The outbound capture listener.
    pub proxy: SocketAddr,
    /// The upstream every connection is sent to.
    pub upstream: SocketAddr,
}

/// Never asks Pingora to shut down (the fuzzing process ends it by exiting).
struct NoSignal;

#[async_trait]
impl ShutdownSignalWatch for NoSignal {
    async fn recv(&self) -> ShutdownSignal {
        std::future::pending::<ShutdownSignal>().await
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port on 127.0.0.1")
}

/// The upstream: HTTP/1.1 and h2c (prior knowledge), 200 "ok" after reading at most 1 MiB of
/// request body.
fn start_upstream() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind upstream");
    l.set_nonblocking(true).expect("nonblocking");
    let addr = l.local_addr().expect("upstream addr");
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("upstream runtime");
        rt.block_on(async move {
            let l = tokio::net::TcpListener::from_std(l).expect("tokio listener");
            loop {
                let Ok((s, _)) = l.accept().await else {
                    continue;
                };
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(
                        |req: hyper::Request<hyper::body::Incoming>| async move {
                            let _ = Limited::new(req.into_body(), 1 << 20).collect().await;
                            Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(
                                Bytes::from_static(b"ok"),
                            )))
                        },
                    );
                    let b = hyper_util::server::conn::auto::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    );
                    let _ = b
                        .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                        .await;
                });
            }
        });
    });
    addr
}

fn start() -> Harness {
    // libFuzzer's main, not Rust's, runs this process, so SIGPIPE is not ignored as it is in
    // remora-proxy: a write to a client that went away would kill the process.
    // SAFETY: setting a signal disposition to SIG_IGN at start-up, before any other thread.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
    }
    let upstream = start_upstream();
    let port = free_port();
    let proxy: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    let inbound: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let ctx = LoadContext::default();
    let settings = Settings {
        outbound_addr: proxy,
        inbound_addr: inbound,
        outbound_addr6: None,
        inbound_addr6: None,
        sniff_timeout: Duration::from_millis(200),
        http_first_byte_timeout: Duration::from_secs(1),
        inbound_bind: None,
        inbound_bind_fallback: true,
        fixed_outbound_target: Some(upstream),
        fixed_inbound_target: Some(upstream),
        connect_timeout: Duration::from_secs(1),
        inbound_upstream_read_timeout: Duration::from_secs(5),
        workload: Workload::derive(Some("fuzz"), &Default::default(), None, "default"),
        access_log: AccessLog::Off,
        num_trusted_proxies: 0,
        tracer: None,
        tracers: Vec::new(),
        access_log_providers: Vec::new(),
    };
    let mut snap = Snapshot::empty(&ctx);
    snap.generation = 1;
    let store: rules::SharedSnapshot = Arc::new(arc_swap::ArcSwap::from_pointee(snap));
    let metrics = Arc::new(
        Metrics::new(remora_proxy::telemetry::metrics::DEFAULT_SERIES_MAX)
            .expect("metric definitions"),
    );
    let shared = Arc::new(Shared {
        settings,
        snapshot: store,
        policies: Arc::new(remora_proxy::policy::Policies::new(metrics.clone())),
        identity: None,
        peers: Default::default(),
        jwt: Default::default(),
        metrics: metrics.clone(),
    });
    let limits = DownstreamLimits {
        header_timeout: Duration::from_secs(2),
        idle_timeout: Duration::from_secs(5),
        ..DownstreamLimits::default()
    };
    let guard = Arc::new(Guard::new(limits, &metrics));
    let conf = ServerConf {
        threads: 1,
        grace_period_seconds: Some(1),
        graceful_shutdown_timeout_seconds: Some(1),
        upstream_keepalive_idle_watch: false,
        ..Default::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let pconf = server.configuration.clone();
    let resolver = Arc::new(HostResolver::default());
    let dir = Direction::Outbound;
    let mesh = || MeshHttp {
        dir,
        shared: shared.clone(),
        resolver: resolver.clone(),
        gateway: None,
    };
    let mut h1 = pingora::proxy::http_proxy(&pconf, mesh());
    h1.server_options = Some(Default::default());
    let mut h2 = pingora::proxy::http_proxy(&pconf, mesh());
    let mut opts = pingora::apps::HttpServerOptions::default();
    opts.h2c = true;
    opts.h2_idle_timeout = Some(guard.limits.idle_timeout);
    h2.server_options = Some(opts);
    h2.h2_options = Some(guard.limits.h2_options());
    let timeouts = |inner| {
        Arc::new(StreamIdleApp {
            inner: Arc::new(inner),
            listener: dir.as_str(),
            metrics: metrics.clone(),
            stream_idle: guard.limits.stream_idle_timeout,
            write_timeout: guard.limits.downstream_write_timeout,
        })
    };
    let app = CaptureApp {
        dir,
        shared: shared.clone(),
        h1: timeouts(h1),
        h2: timeouts(h2),
        resolver: resolver.clone(),
        guard,
    };
    let mut svc = Service::new("outbound capture (fuzz)".to_string(), app);
    svc.add_tcp(&proxy.to_string());
    server.add_service(svc);
    std::thread::spawn(move || {
        server.run(RunArgs {
            shutdown_signal: Box::new(NoSignal),
        })
    });
    let h = Harness { proxy, upstream };
    // Wait (bounded) until the listener answers.
    for _ in 0..200 {
        if h.healthy().is_ok() {
            return h;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    panic!("the in-process proxy did not come up on {proxy}");
}

/// The proxy, started on first use.
pub fn harness() -> &'static Harness {
    static H: LazyLock<Harness> = LazyLock::new(start);
    &H
}

/// What one fuzz exchange saw.
#[derive(Debug)]
pub struct Seen {
    /// Everything the proxy sent before closing (or before the timeout).
    pub answer: Vec<u8>,
    /// The proxy neither closed nor finished within READ_TIMEOUT.
    pub timed_out: bool,
}

impl Harness {
    /// Writes `bytes` on a new connection, half-closes, and reads until the proxy closes.
    pub fn exchange(&self, bytes: &[u8]) -> std::io::Result<Seen> {
        self.exchange_with(bytes, true)
    }

    /// Like `exchange`; `half_close` false keeps the write side open (a complete request whose
    /// client is still there).
    pub fn exchange_with(&self, bytes: &[u8], half_close: bool) -> std::io::Result<Seen> {
        let mut s = TcpStream::connect(self.proxy)?;
        s.set_read_timeout(Some(READ_TIMEOUT))?;
        s.set_write_timeout(Some(READ_TIMEOUT))?;
        // The proxy may answer and close before reading everything: a write error is fine.
        let _ = s.write_all(bytes);
        if half_close {
            let _ = s.shutdown(Shutdown::Write);
        }
        let mut answer = Vec::new();
        let mut buf = [0u8; 16 * 1024];
        loop {
            match s.read(&mut buf) {
                Ok(0) => return Ok(Seen { answer, timed_out: false }),
                Ok(n) => {
                    if answer.len() < 1 << 20 {
                        answer.extend_from_slice(&buf[..n]);
                    }
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    return Ok(Seen { answer, timed_out: true })
                }
                // A reset after an error answer: what was read is the answer.
                Err(_) => return Ok(Seen { answer, timed_out: false }),
            }
        }
    }

    /// A well-formed request through the proxy gets the upstream's 200.
    pub fn healthy(&self) -> Result<(), String> {
        let seen = self
            .exchange_with(
                b"GET /health HTTP/1.1\r\nHost: upstream.fuzz\r\nConnection: close\r\n\r\n",
                false,
            )
            .map_err(|e| format!("connect: {e}"))?;
        let text = String::from_utf8_lossy(&seen.answer);
        if text.starts_with("HTTP/1.1 200") && text.ends_with("ok") {
            Ok(())
        } else {
            Err(format!("answer {text:?} (timed out: {})", seen.timed_out))
        }
    }
}

/// Checks an HTTP/1 answer to fuzz input: nothing, or a status line with a 1xx-5xx code.
pub fn check_http1_answer(input: &[u8], seen: &Seen) {
    if seen.answer.is_empty() {
        return;
    }
    // Bytes the proxy passed through as opaque TCP (not HTTP) come back from the upstream's
    // HTTP server as its own answer, which is HTTP too.
    let head = &seen.answer[..seen.answer.len().min(12)];
    assert!(
        head.starts_with(b"HTTP/1.") && head.len() >= 12 && (b'1'..=b'5').contains(&head[9]),
        "not an HTTP answer to {:?}: {:?}",
        String::from_utf8_lossy(&input[..input.len().min(200)]),
        String::from_utf8_lossy(&seen.answer[..seen.answer.len().min(200)])
    );
}

/// After each input: the proxy still answers a well-formed request. One retry after 200 ms: on
/// a loaded machine a single check has been seen to get a bare close that did not reproduce
/// with the same input in a fresh process; a proxy that is really broken fails both.
pub fn assert_still_serving(input: &[u8]) {
    if harness().healthy().is_ok() {
        return;
    }
    std::thread::sleep(Duration::from_millis(200));
    if let Err(e) = harness().healthy() {
        panic!(
            "the proxy stopped serving after {:?}: {e}",
            String::from_utf8_lossy(&input[..input.len().min(300)])
        );
    }
}
