//! Abuse limits on the downstream side of the capture listeners, and the start-up privilege check.
//!
//! * A per-proxy cap on open downstream connections (all capture listeners together): a
//!   connection over the cap is closed at once, before anything is read.
//! * HTTP/1 request heads are read here, before Pingora sees them, under limits on the request
//!   line, the total head size and the header count, and under a deadline for the whole head
//!   (slowloris). Violations are answered 414 / 431 / 408 with `connection: close`; a client
//!   that sent nothing is closed without an answer. The head is then put back into the stream
//!   and Pingora parses it as usual.
//! * Keep-alive connections idle longer than the idle timeout are closed, and so are opaque TCP
//!   connections on which neither side sent a byte for that long ([`copy_with_idle`]).
//! * HTTP/2 (h2c): the concurrent-stream cap, the header-list size and the idle timeout are h2
//!   settings handed to Pingora.
//!
//! Every rejection is counted in `remora_downstream_rejected_total{listener,reason}`, logged at
//! debug, and warned about at most once per [`WARN_EVERY`].
//!
//! Opaque TCP is subject to the connection cap and the idle timeout only.

use crate::telemetry::Metrics;
use bytes::BufMut;
use clap::Args;
use pingora::protocols::l4::stream::Stream as L4Stream;
use pingora::protocols::Stream;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tracing::{debug, info, warn};

/// Pingora's own hard ceilings (pingora-core 0.9 `protocols/http/v1/common.rs`): our limits must
/// stay below them so that our answer, not Pingora's generic 400, is what a client sees.
pub const PINGORA_MAX_HEADERS: u64 = 256;
pub const PINGORA_MAX_HEADER_KB: u64 = 1023;

/// Flags of `remora-proxy run` for the abuse limits and the privilege check (flattened into the
/// run arguments; each one also reads its environment variable).
#[derive(Debug, Args, Clone)]
pub struct LimitArgs {
    /// Largest HTTP/1 request head (request line + headers), KiB; larger → 431. HTTP/2: the
    /// header-list size setting. Envoy's `max_request_headers_kb` default.
    #[arg(long, env = "REMORA_MAX_REQUEST_HEADERS_KB", default_value_t = 60,
          value_parser = clap::value_parser!(u64).range(1..=PINGORA_MAX_HEADER_KB))]
    pub max_request_headers_kb: u64,
    /// Most header fields in one HTTP/1 request; more → 431. Envoy's
    /// `max_request_headers_count` default.
    #[arg(long, env = "REMORA_MAX_REQUEST_HEADERS", default_value_t = 100,
          value_parser = clap::value_parser!(u64).range(1..=PINGORA_MAX_HEADERS))]
    pub max_request_headers: u64,
    /// Longest HTTP/1 request line, KiB; longer → 414. Must not exceed
    /// --max-request-headers-kb.
    #[arg(long, env = "REMORA_MAX_REQUEST_LINE_KB", default_value_t = 16,
          value_parser = clap::value_parser!(u64).range(1..=PINGORA_MAX_HEADER_KB))]
    pub max_request_line_kb: u64,
    /// Time a client has to send a whole HTTP/1 request head, seconds (slowloris); over it →
    /// 408 and close (or a plain close when nothing was sent).
    #[arg(long, env = "REMORA_REQUEST_HEADERS_TIMEOUT_SECONDS", default_value_t = 10,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub request_headers_timeout_seconds: u64,
    /// Close HTTP keep-alive and h2c connections with no request, and opaque TCP connections
    /// with no byte either way, for this long, seconds (Istio's 1 h for both).
    #[arg(long, env = "REMORA_IDLE_TIMEOUT_SECONDS", default_value_t = 3600,
          value_parser = clap::value_parser!(u64).range(1..=86400))]
    pub idle_timeout_seconds: u64,
    /// Most open downstream connections per proxy (all capture listeners, HTTP and TCP); a
    /// connection over the cap is closed at once.
    #[arg(long, env = "REMORA_MAX_DOWNSTREAM_CONNECTIONS", default_value_t = 10000,
          value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub max_downstream_connections: u64,
    /// Most concurrent streams on one HTTP/2 downstream connection (h2 SETTINGS).
    #[arg(long, env = "REMORA_H2_MAX_CONCURRENT_STREAMS", default_value_t = 100,
          value_parser = clap::value_parser!(u32).range(1..=10000))]
    pub h2_max_concurrent_streams: u32,
    /// Permit running as uid 0 inside Kubernetes (lab/debugging only). Outside Kubernetes uid 0
    /// is allowed with a warning.
    #[arg(long, env = "REMORA_ALLOW_ROOT")]
    pub allow_root: bool,
}

/// The downstream limits, validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DownstreamLimits {
    pub max_head_bytes: usize,
    pub max_headers: usize,
    pub max_request_line: usize,
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_connections: usize,
    pub h2_max_concurrent_streams: u32,
}

impl Default for DownstreamLimits {
    fn default() -> Self {
        DownstreamLimits {
            max_head_bytes: 60 * 1024,
            max_headers: 100,
            max_request_line: 16 * 1024,
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(3600),
            max_connections: 10_000,
            h2_max_concurrent_streams: 100,
        }
    }
}

impl DownstreamLimits {
    /// Build from the flags; errors name the flag, the value and the reason.
    pub fn from_args(a: &LimitArgs) -> Result<DownstreamLimits, String> {
        if a.max_request_line_kb > a.max_request_headers_kb {
            return Err(format!(
                "--max-request-line-kb/REMORA_MAX_REQUEST_LINE_KB: {} is larger than --max-request-headers-kb ({}); the request line is part of the head",
                a.max_request_line_kb, a.max_request_headers_kb
            ));
        }
        let kb = |v: u64, flag: &str| {
            usize::try_from(v.saturating_mul(1024))
                .map_err(|_| format!("{flag}: {v} KiB does not fit this platform"))
        };
        Ok(DownstreamLimits {
            max_head_bytes: kb(a.max_request_headers_kb, "--max-request-headers-kb")?,
            max_headers: usize::try_from(a.max_request_headers)
                .map_err(|_| format!("--max-request-headers: {}", a.max_request_headers))?,
            max_request_line: kb(a.max_request_line_kb, "--max-request-line-kb")?,
            header_timeout: Duration::from_secs(a.request_headers_timeout_seconds),
            idle_timeout: Duration::from_secs(a.idle_timeout_seconds),
            max_connections: usize::try_from(a.max_downstream_connections).map_err(|_| {
                format!(
                    "--max-downstream-connections: {}",
                    a.max_downstream_connections
                )
            })?,
            h2_max_concurrent_streams: a.h2_max_concurrent_streams,
        })
    }

    /// The h2 settings for downstream h2c connections (Pingora's bounded defaults, with ours).
    pub fn h2_options(&self) -> pingora::protocols::http::v2::server::H2Options {
        let mut o = pingora::protocols::http::v2::server::default_h2_options();
        o.max_concurrent_streams(self.h2_max_concurrent_streams);
        o.max_header_list_size(u32::try_from(self.max_head_bytes).unwrap_or(u32::MAX));
        o
    }
}

/// Why a downstream connection or request was turned away.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reject {
    /// Over the per-proxy connection cap: closed before reading.
    ConnectionLimit,
    /// Request line longer than the limit: 414.
    RequestLineTooLong,
    /// Request head larger than the limit: 431.
    HeadersTooLarge,
    /// More header fields than the limit: 431.
    TooManyHeaders,
    /// The head did not arrive in time: 408 (or a plain close when nothing arrived).
    HeaderTimeout,
    /// A keep-alive connection idle for longer than the idle timeout: closed.
    IdleTimeout,
}

impl Reject {
    /// The `reason` label.
    pub fn as_str(self) -> &'static str {
        match self {
            Reject::ConnectionLimit => "connection_limit",
            Reject::RequestLineTooLong => "request_line_too_long",
            Reject::HeadersTooLarge => "headers_too_large",
            Reject::TooManyHeaders => "too_many_headers",
            Reject::HeaderTimeout => "header_timeout",
            Reject::IdleTimeout => "idle_timeout",
        }
    }

    /// The HTTP status this is answered with, when it is answered at all.
    pub fn status(self) -> Option<(u16, &'static str)> {
        match self {
            Reject::RequestLineTooLong => Some((414, "URI Too Long")),
            Reject::HeadersTooLarge | Reject::TooManyHeaders => {
                Some((431, "Request Header Fields Too Large"))
            }
            Reject::HeaderTimeout => Some((408, "Request Timeout")),
            Reject::ConnectionLimit | Reject::IdleTimeout => None,
        }
    }
}

/// The state of an HTTP/1 request head read so far.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Head {
    /// Not complete yet, within the limits.
    Partial,
    /// Complete: the head is the first `n` bytes.
    Complete(usize),
    /// Over a limit.
    Over(Reject),
}

/// Incremental scanner of an HTTP/1 request head: each byte is looked at once, whatever the
/// read sizes (a client dribbling one byte at a time costs linear work).
#[derive(Clone, Debug, Default)]
pub struct HeadScanner {
    /// Bytes scanned so far.
    pos: usize,
    /// Start of the current line.
    line_start: usize,
    /// Whether the request line has ended.
    request_line_done: bool,
    /// Header fields seen.
    headers: usize,
}

impl HeadScanner {
    /// Scan the new bytes of `buf` (which only ever grows) against `limits`.
    pub fn feed(&mut self, buf: &[u8], limits: &DownstreamLimits) -> Head {
        while self.pos < buf.len() {
            let b = buf[self.pos];
            self.pos += 1;
            if b != b'\n' {
                continue;
            }
            let mut line = &buf[self.line_start..self.pos - 1];
            if line.last() == Some(&b'\r') {
                line = &line[..line.len() - 1];
            }
            self.line_start = self.pos;
            if !self.request_line_done {
                // Empty lines before the request line are allowed (RFC 9112 2.2).
                if line.is_empty() {
                    continue;
                }
                if line.len() > limits.max_request_line {
                    return Head::Over(Reject::RequestLineTooLong);
                }
                self.request_line_done = true;
            } else if line.is_empty() {
                if self.pos > limits.max_head_bytes {
                    return Head::Over(Reject::HeadersTooLarge);
                }
                return Head::Complete(self.pos);
            } else {
                self.headers += 1;
                if self.headers > limits.max_headers {
                    return Head::Over(Reject::TooManyHeaders);
                }
            }
            if self.pos > limits.max_head_bytes {
                return Head::Over(Reject::HeadersTooLarge);
            }
        }
        // (+1: the line's CR may already be here without its LF.)
        if !self.request_line_done && buf.len() - self.line_start > limits.max_request_line + 1 {
            return Head::Over(Reject::RequestLineTooLong);
        }
        if buf.len() > limits.max_head_bytes {
            return Head::Over(Reject::HeadersTooLarge);
        }
        Head::Partial
    }
}

/// The per-proxy cap on open downstream connections.
#[derive(Debug)]
pub struct ConnectionGate {
    open: AtomicUsize,
    max: usize,
}

/// A held slot of the [`ConnectionGate`]; released (and the gauge lowered) on drop.
#[derive(Debug)]
pub struct ConnectionSlot {
    gate: Arc<ConnectionGate>,
    listener: &'static str,
}

impl ConnectionGate {
    pub fn new(max: usize) -> Arc<ConnectionGate> {
        Arc::new(ConnectionGate {
            open: AtomicUsize::new(0),
            max,
        })
    }

    /// Take a slot, or `None` when `max` connections are open.
    pub fn try_acquire(self: &Arc<Self>, listener: &'static str) -> Option<ConnectionSlot> {
        let taken = self
            .open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max).then_some(n + 1)
            })
            .is_ok();
        if !taken {
            return None;
        }
        Metrics::get()
            .downstream_connections
            .with_label_values(&[listener])
            .inc();
        Some(ConnectionSlot {
            gate: self.clone(),
            listener,
        })
    }

    /// Open connections now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.gate.open.fetch_sub(1, Ordering::AcqRel);
        Metrics::get()
            .downstream_connections
            .with_label_values(&[self.listener])
            .dec();
    }
}

/// Limits plus the connection gate, shared by all capture listeners of a proxy.
#[derive(Debug)]
pub struct Guard {
    pub limits: DownstreamLimits,
    pub gate: Arc<ConnectionGate>,
}

impl Guard {
    pub fn new(limits: DownstreamLimits) -> Guard {
        let gate = ConnectionGate::new(limits.max_connections);
        Guard { limits, gate }
    }

    /// Log the limits in force.
    pub fn log(&self) {
        let l = &self.limits;
        info!(
            max_request_headers_bytes = l.max_head_bytes,
            max_request_headers = l.max_headers,
            max_request_line_bytes = l.max_request_line,
            request_headers_timeout_s = l.header_timeout.as_secs(),
            idle_timeout_s = l.idle_timeout.as_secs(),
            max_downstream_connections = l.max_connections,
            h2_max_concurrent_streams = l.h2_max_concurrent_streams,
            "downstream limits"
        );
    }
}

/// Interval of the rate-limited warning about rejections.
pub const WARN_EVERY: Duration = Duration::from_secs(10);
static LAST_WARN_S: AtomicU64 = AtomicU64::new(0);
static SUPPRESSED: AtomicU64 = AtomicU64::new(0);

/// Count a rejection, log it at debug, and warn at most once per [`WARN_EVERY`].
pub fn record(listener: &'static str, why: Reject, detail: &str) {
    Metrics::get()
        .downstream_rejected
        .with_label_values(&[listener, why.as_str()])
        .inc();
    debug!(
        listener,
        reason = why.as_str(),
        "downstream rejected: {detail}"
    );
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let last = LAST_WARN_S.load(Ordering::Relaxed);
    if now >= last.saturating_add(WARN_EVERY.as_secs())
        && LAST_WARN_S
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    {
        let more = SUPPRESSED.swap(0, Ordering::Relaxed);
        warn!(
            listener,
            reason = why.as_str(),
            suppressed_since_last_warning = more,
            "downstream rejected: {detail} (see remora_downstream_rejected_total)"
        );
    } else {
        SUPPRESSED.fetch_add(1, Ordering::Relaxed);
    }
}

/// The bytes of a rejection answer (`connection: close`, a one-line plain-text body).
pub fn answer(why: Reject) -> Option<Vec<u8>> {
    let (code, text) = why.status()?;
    let body = format!("{text}: {}\n", why.as_str());
    Some(
        format!(
            "HTTP/1.1 {code} {text}\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        )
        .into_bytes(),
    )
}

/// Most bytes one read of a request head asks for.
const READ_CHUNK: usize = 8192;

/// Outcome of reading one request head.
pub enum HeadRead {
    /// The head is complete and within the limits; the stream replays it from its first byte.
    Ready(Stream),
    /// The client closed (or errored) before sending anything: nothing to answer.
    Closed,
    /// Turned away (already answered when there is an answer, and counted).
    Rejected(Reject),
}

/// Read one HTTP/1 request head from `stream` under `limits`. `keepalive` says whether this is
/// a later request on a kept-alive connection (the wait for its first byte is the idle timeout;
/// for the first request the head deadline covers it). Streams that are not plain TCP streams
/// are passed through unchecked.
pub async fn read_head(
    stream: Stream,
    limits: &DownstreamLimits,
    listener: &'static str,
    keepalive: bool,
) -> HeadRead {
    if !stream.as_any().is::<L4Stream>() {
        return HeadRead::Ready(stream);
    }
    let Ok(mut l4) = stream.into_any().downcast::<L4Stream>() else {
        return HeadRead::Closed;
    };
    // Reads go straight into the head buffer's spare capacity: no zeroed scratch buffer and no
    // second copy per request.
    let mut buf: Vec<u8> = Vec::with_capacity(READ_CHUNK);
    if keepalive {
        let mut room = (&mut buf).limit(READ_CHUNK);
        let first = tokio::time::timeout(limits.idle_timeout, l4.read_buf(&mut room)).await;
        match first {
            Err(_) => {
                record(
                    listener,
                    Reject::IdleTimeout,
                    &format!(
                        "keep-alive connection idle for {}s",
                        limits.idle_timeout.as_secs()
                    ),
                );
                return HeadRead::Rejected(Reject::IdleTimeout);
            }
            Ok(Ok(0)) | Ok(Err(_)) => return HeadRead::Closed,
            Ok(Ok(_)) => {}
        }
    }
    let deadline = tokio::time::Instant::now() + limits.header_timeout;
    let mut scan = HeadScanner::default();
    loop {
        match scan.feed(&buf, limits) {
            Head::Complete(_) => break,
            Head::Over(why) => {
                reject(&mut l4, listener, why, buf.len()).await;
                return HeadRead::Rejected(why);
            }
            Head::Partial => {}
        }
        // Never read past what could still be a legal head (+1 to see it go over).
        let room = (limits.max_head_bytes + 1).saturating_sub(buf.len());
        let want = room.clamp(1, READ_CHUNK);
        buf.reserve(want);
        let mut into = (&mut buf).limit(want);
        let read = tokio::time::timeout_at(deadline, l4.read_buf(&mut into)).await;
        match read {
            Err(_) => {
                if buf.is_empty() {
                    record(
                        listener,
                        Reject::HeaderTimeout,
                        &format!(
                            "no request within {}s; closed without an answer",
                            limits.header_timeout.as_secs()
                        ),
                    );
                } else {
                    reject(&mut l4, listener, Reject::HeaderTimeout, buf.len()).await;
                }
                return HeadRead::Rejected(Reject::HeaderTimeout);
            }
            Ok(Ok(0)) | Ok(Err(_)) => {
                if !buf.is_empty() {
                    debug!(
                        listener,
                        bytes = buf.len(),
                        "client closed in the middle of a request head"
                    );
                }
                return HeadRead::Closed;
            }
            Ok(Ok(_)) => {}
        }
    }
    l4.rewind(&buf);
    HeadRead::Ready(l4 as Stream)
}

async fn reject(l4: &mut L4Stream, listener: &'static str, why: Reject, read: usize) {
    record(
        listener,
        why,
        &format!("{} after {read} bytes of request head", why.as_str()),
    );
    if let Some(bytes) = answer(why) {
        // Best effort, bounded: the client may not be reading.
        let write = async {
            l4.write_all(&bytes).await?;
            l4.flush().await?;
            l4.shutdown().await
        };
        if let Err(e) = tokio::time::timeout(Duration::from_secs(1), write)
            .await
            .unwrap_or_else(|_| Err(std::io::Error::other("write timed out")))
        {
            debug!(listener, "writing the {} answer: {e}", why.as_str());
            return;
        }
        linger(l4).await;
    }
}

/// After answering, read and discard what the client is still sending for a short, bounded
/// while, so that closing does not reset the connection (a reset can destroy the answer in the
/// client's receive buffer before it reads it). Like nginx's `lingering_close`.
async fn linger(l4: &mut L4Stream) {
    const TOTAL: Duration = Duration::from_secs(2);
    const QUIET: Duration = Duration::from_millis(250);
    const MAX_BYTES: usize = 1 << 20;
    let end = tokio::time::Instant::now() + TOTAL;
    let mut sink = [0u8; 8192];
    let mut drained = 0usize;
    while drained < MAX_BYTES {
        let quiet = (tokio::time::Instant::now() + QUIET).min(end);
        match tokio::time::timeout_at(quiet, l4.read(&mut sink)).await {
            Ok(Ok(n)) if n > 0 => drained += n,
            _ => return,
        }
    }
}

/// Read side of one direction of an opaque TCP copy: counts bytes and records activity.
struct Metered<'a, S> {
    inner: &'a mut S,
    bytes: &'a AtomicU64,
    clock: &'a IdleClock,
}

/// The last time either side of a connection delivered bytes.
struct IdleClock {
    start: tokio::time::Instant,
    last_ms: AtomicU64,
}

impl IdleClock {
    fn touch(&self) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Relaxed);
    }
    fn last(&self) -> tokio::time::Instant {
        self.start + Duration::from_millis(self.last_ms.load(Ordering::Relaxed))
    }
}

impl<S: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Metered<'_, S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = std::pin::Pin::new(&mut *self.inner).poll_read(cx, buf);
        let n = buf.filled().len().saturating_sub(before);
        if n > 0 {
            self.bytes.fetch_add(n as u64, Ordering::Relaxed);
            self.clock.touch();
        }
        r
    }
}

impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Metered<'_, S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut *self.inner).poll_write(cx, buf)
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut *self.inner).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut *self.inner).poll_shutdown(cx)
    }
}

/// How an opaque TCP copy ended.
#[derive(Debug)]
pub enum CopyEnd {
    /// Both sides finished.
    Done,
    /// Neither side sent a byte for the idle timeout: closed by the proxy.
    Idle,
    /// An I/O error on either side.
    Error(std::io::Error),
}

/// `copy_bidirectional` between the downstream and the upstream, closed when neither side has
/// sent anything for `idle` (Istio's TCP idle timeout). Returns how it ended and the bytes
/// received from the downstream and sent to it, also when it ended early.
pub async fn copy_with_idle<A, B>(down: &mut A, up: &mut B, idle: Duration) -> (CopyEnd, u64, u64)
where
    A: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    B: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let clock = IdleClock {
        start: tokio::time::Instant::now(),
        last_ms: AtomicU64::new(0),
    };
    let (rx, tx) = (AtomicU64::new(0), AtomicU64::new(0));
    let end = {
        let mut d = Metered {
            inner: down,
            bytes: &rx,
            clock: &clock,
        };
        let mut u = Metered {
            inner: up,
            bytes: &tx,
            clock: &clock,
        };
        let copy = tokio::io::copy_bidirectional(&mut d, &mut u);
        tokio::pin!(copy);
        loop {
            let deadline = clock.last() + idle;
            tokio::select! {
                r = &mut copy => break match r {
                    Ok(_) => CopyEnd::Done,
                    Err(e) => CopyEnd::Error(e),
                },
                _ = tokio::time::sleep_until(deadline) => {
                    if clock.last() + idle <= tokio::time::Instant::now() {
                        break CopyEnd::Idle;
                    }
                }
            }
        }
    };
    (end, rx.load(Ordering::Relaxed), tx.load(Ordering::Relaxed))
}

/// Capabilities the process holds (hex masks from `/proc/self/status`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Caps {
    pub effective: u64,
    pub permitted: u64,
    pub inheritable: u64,
    pub ambient: u64,
    pub bounding: u64,
}

/// Parse the `Cap*` lines of `/proc/<pid>/status` (pure).
pub fn parse_caps(status: &str) -> Result<Caps, String> {
    let mut c = Caps::default();
    let mut seen = 0;
    for line in status.lines() {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        let slot = match k {
            "CapInh" => &mut c.inheritable,
            "CapPrm" => &mut c.permitted,
            "CapEff" => &mut c.effective,
            "CapBnd" => &mut c.bounding,
            "CapAmb" => &mut c.ambient,
            _ => continue,
        };
        *slot = u64::from_str_radix(v.trim(), 16)
            .map_err(|e| format!("{k}: {:?} is not a hex mask: {e}", v.trim()))?;
        seen += 1;
    }
    if seen < 4 {
        return Err("no Cap* lines in the process status".to_string());
    }
    Ok(c)
}

/// The start-up privilege decision (pure): `Err` = refuse to start.
pub fn root_policy(euid: u32, in_kubernetes: bool, allow_root: bool) -> Result<(), String> {
    if euid != 0 {
        return Ok(());
    }
    if in_kubernetes && !allow_root {
        return Err(
            "refusing to run as uid 0 in a Kubernetes pod: the sidecar runs as uid 1337 (its traffic is exempt from capture by that uid); fix the pod's securityContext, or pass --allow-root/REMORA_ALLOW_ROOT=true for a lab"
                .to_string(),
        );
    }
    Ok(())
}

/// Check who we run as, then give up every capability (effective, permitted, inheritable,
/// ambient) and set no_new_privs. The proxy needs none: its ports are above 1024, the inbound
/// source 127.0.0.6 is a local address, and `SO_ORIGINAL_DST` is unprivileged.
pub fn drop_privileges(allow_root: bool) -> Result<(), String> {
    let euid = nix::unistd::geteuid().as_raw();
    // An injected sidecar: the kubelet sets KUBERNETES_SERVICE_HOST in every container, and the
    // injected proxy container gets POD_NAME from the downward API.
    let in_kubernetes = std::env::var_os("KUBERNETES_SERVICE_HOST").is_some()
        && std::env::var_os("POD_NAME").is_some();
    root_policy(euid, in_kubernetes, allow_root)?;
    if euid == 0 {
        warn!(
            in_kubernetes,
            "running as uid 0 (allowed: {}); capabilities are dropped, but a pod should run the proxy as uid 1337",
            if in_kubernetes {
                "--allow-root"
            } else {
                "not in Kubernetes"
            }
        );
    }
    let before = read_caps()?;
    // Ambient first (lowering permitted clears it anyway, but be explicit).
    // SAFETY: prctl with integer arguments only.
    let r = unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
        )
    };
    if r != 0 {
        debug!(
            "clearing ambient capabilities: {}",
            std::io::Error::last_os_error()
        );
    }
    let mut header = libc_cap::Header {
        version: libc_cap::VERSION_3,
        pid: 0,
    };
    let data = [libc_cap::Data::default(); 2];
    // SAFETY: capset with a valid v3 header and two zeroed data structs (lowering is always
    // permitted).
    let r = unsafe {
        libc::syscall(
            libc::SYS_capset,
            &mut header as *mut libc_cap::Header,
            data.as_ptr(),
        )
    };
    if r != 0 {
        return Err(format!(
            "dropping capabilities (capset): {}",
            std::io::Error::last_os_error()
        ));
    }
    nix::sys::prctl::set_no_new_privs().map_err(|e| format!("setting no_new_privs: {e}"))?;
    let after = read_caps()?;
    if after.effective != 0 || after.permitted != 0 || after.ambient != 0 {
        return Err(format!(
            "capabilities still held after dropping them: effective {:#x}, permitted {:#x}, ambient {:#x}",
            after.effective, after.permitted, after.ambient
        ));
    }
    info!(
        uid = euid,
        dropped_effective = format!("{:#x}", before.effective),
        dropped_permitted = format!("{:#x}", before.permitted),
        bounding = format!("{:#x}", after.bounding),
        "privileges: no capabilities held, no_new_privs set"
    );
    Ok(())
}

fn read_caps() -> Result<Caps, String> {
    let s = std::fs::read_to_string("/proc/self/status")
        .map_err(|e| format!("reading /proc/self/status: {e}"))?;
    parse_caps(&s)
}

/// The capset(2) ABI (not in the libc crate).
mod libc_cap {
    pub const VERSION_3: u32 = 0x2008_0522;
    #[repr(C)]
    pub struct Header {
        pub version: u32,
        pub pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    pub struct Data {
        pub effective: u32,
        pub permitted: u32,
        pub inheritable: u32,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small() -> DownstreamLimits {
        DownstreamLimits {
            max_head_bytes: 200,
            max_headers: 3,
            max_request_line: 40,
            ..Default::default()
        }
    }

    fn scan_all(input: &[u8], l: &DownstreamLimits) -> Head {
        HeadScanner::default().feed(input, l)
    }

    /// Byte-at-a-time feeding gives the same verdict as one feed.
    fn scan_dribble(input: &[u8], l: &DownstreamLimits) -> Head {
        let mut s = HeadScanner::default();
        for i in 1..=input.len() {
            match s.feed(&input[..i], l) {
                Head::Partial => continue,
                other => return other,
            }
        }
        Head::Partial
    }

    #[test]
    fn head_scanner_table() {
        let l = small();
        let line_at = |n: usize| {
            let pad = n - "GET / HTTP/1.1".len();
            format!("GET /{} HTTP/1.1", "a".repeat(pad))
        };
        let ok = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n".to_vec();
        let cases: Vec<(String, Vec<u8>, Head)> = vec![
            ("complete".into(), ok.clone(), Head::Complete(ok.len())),
            (
                "bare LF".into(),
                b"GET / HTTP/1.1\nHost: a\n\n".to_vec(),
                Head::Complete(24),
            ),
            (
                "leading CRLF".into(),
                b"\r\nGET / HTTP/1.1\r\n\r\n".to_vec(),
                Head::Complete(20),
            ),
            (
                "partial".into(),
                b"GET / HTTP/1.1\r\nHost:".to_vec(),
                Head::Partial,
            ),
            (
                "line at limit".into(),
                format!("{}\r\n\r\n", line_at(40)).into_bytes(),
                Head::Complete(44),
            ),
            (
                "line over limit".into(),
                format!("{}\r\n\r\n", line_at(41)).into_bytes(),
                Head::Over(Reject::RequestLineTooLong),
            ),
            (
                "line over limit (+ room for its CR), unterminated".into(),
                line_at(42).into_bytes(),
                Head::Over(Reject::RequestLineTooLong),
            ),
            (
                "3 headers".into(),
                b"GET / HTTP/1.1\r\na: 1\r\nb: 2\r\nc: 3\r\n\r\n".to_vec(),
                Head::Complete(36),
            ),
            (
                "4 headers".into(),
                b"GET / HTTP/1.1\r\na: 1\r\nb: 2\r\nc: 3\r\nd: 4\r\n\r\n".to_vec(),
                Head::Over(Reject::TooManyHeaders),
            ),
            (
                "head at 200".into(),
                {
                    let mut h = b"GET / HTTP/1.1\r\nx: ".to_vec();
                    h.extend(std::iter::repeat_n(b'v', 200 - h.len() - 4));
                    h.extend_from_slice(b"\r\n\r\n");
                    h
                },
                Head::Complete(200),
            ),
            (
                "head at 201".into(),
                {
                    let mut h = b"GET / HTTP/1.1\r\nx: ".to_vec();
                    h.extend(std::iter::repeat_n(b'v', 201 - h.len() - 4));
                    h.extend_from_slice(b"\r\n\r\n");
                    h
                },
                Head::Over(Reject::HeadersTooLarge),
            ),
            (
                "endless header value".into(),
                {
                    let mut h = b"GET / HTTP/1.1\r\nx: ".to_vec();
                    h.extend(std::iter::repeat_n(b'v', 300));
                    h
                },
                Head::Over(Reject::HeadersTooLarge),
            ),
        ];
        for (name, input, want) in cases {
            assert_eq!(scan_all(&input, &l), want, "{name} (one feed)");
            assert_eq!(scan_dribble(&input, &l), want, "{name} (byte by byte)");
        }
    }

    #[test]
    fn answers_carry_status_and_close() {
        let a = String::from_utf8(answer(Reject::TooManyHeaders).unwrap()).unwrap();
        assert!(
            a.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"),
            "{a}"
        );
        assert!(a.contains("\r\nconnection: close\r\n"), "{a}");
        let body = a.split("\r\n\r\n").nth(1).unwrap();
        assert!(a.contains(&format!("content-length: {}\r\n", body.len())));
        assert!(
            String::from_utf8(answer(Reject::RequestLineTooLong).unwrap())
                .unwrap()
                .starts_with("HTTP/1.1 414 ")
        );
        assert!(String::from_utf8(answer(Reject::HeaderTimeout).unwrap())
            .unwrap()
            .starts_with("HTTP/1.1 408 "));
        assert!(answer(Reject::ConnectionLimit).is_none());
        assert!(answer(Reject::IdleTimeout).is_none());
    }

    #[test]
    fn gate_caps_and_releases() {
        let g = ConnectionGate::new(2);
        let a = g.try_acquire("outbound").unwrap();
        let b = g.try_acquire("inbound").unwrap();
        assert!(g.try_acquire("outbound").is_none());
        assert_eq!(g.open(), 2);
        drop(a);
        assert_eq!(g.open(), 1);
        let c = g.try_acquire("outbound");
        assert!(c.is_some());
        drop((b, c));
        assert_eq!(g.open(), 0);
    }

    #[test]
    fn limits_from_flags_validate() {
        use clap::Parser;
        #[derive(Parser)]
        struct T {
            #[command(flatten)]
            l: LimitArgs,
        }
        let t = T::try_parse_from(["t"]).unwrap();
        assert_eq!(
            DownstreamLimits::from_args(&t.l).unwrap(),
            DownstreamLimits::default()
        );
        let t = T::try_parse_from(["t", "--max-request-line-kb=61"]).unwrap();
        let e = DownstreamLimits::from_args(&t.l).unwrap_err();
        assert!(
            e.contains("--max-request-line-kb") && e.contains("61"),
            "{e}"
        );
        let e = T::try_parse_from(["t", "--max-request-headers=300"])
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("--max-request-headers"), "{e}");
        assert!(T::try_parse_from(["t", "--max-downstream-connections=0"]).is_err());
    }

    #[test]
    fn caps_parse_and_root_policy() {
        let s = "Name:\tx\nCapInh:\t0000000000000000\nCapPrm:\t000001ffffffffff\nCapEff:\t000001ffffffffff\nCapBnd:\t000001ffffffffff\nCapAmb:\t0000000000000000\n";
        let c = parse_caps(s).unwrap();
        assert_eq!(c.effective, 0x1ff_ffff_ffff);
        assert_eq!(c.ambient, 0);
        assert!(parse_caps("Name: x\n").is_err());
        assert!(parse_caps("CapInh: zz\nCapPrm: 0\nCapEff: 0\nCapBnd: 0\n")
            .unwrap_err()
            .contains("CapInh"));
        assert!(root_policy(1337, true, false).is_ok());
        assert!(root_policy(0, true, false)
            .unwrap_err()
            .contains("--allow-root"));
        assert!(root_policy(0, true, true).is_ok());
        assert!(root_policy(0, false, false).is_ok());
    }
}
