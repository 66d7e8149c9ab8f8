//! One JSON access-log line per HTTP request and per TCP connection, on stdout.
//!
//! Lines are serialized on the request's thread and handed to one writer thread through a
//! bounded queue; the writer batches whatever is queued into one buffered write. The request path
//! never blocks on stdout: when the queue is full (stdout stuck, e.g. a paused log collector) the
//! line is dropped and counted in `remora_access_log_dropped_total` of the proxy's metrics handle
//! (passed to each write).
//!
//! The request path does not wake the writer either, while there is traffic: the writer drains
//! the queue every [`POLL`] (a line is on stdout within that), and only after [`IDLE_ROUNDS`]
//! empty rounds does it block on the queue, so that an idle proxy does not wake up. Waking a
//! blocked thread from every request cost a `futex(2)` pair and the channel's waker lock per
//! request (docs/benchmarks.md). [`flush`] writes what is queued now (at shutdown).
//!
//! The writer thread and its queue are the process's (stdout is): one per process, started at the
//! first line.

use serde::Serialize;
use std::cell::RefCell;
use std::io::Write;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TryRecvError, TrySendError};
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::Duration;

use super::Metrics;

/// Lines that may wait for the writer before new ones are dropped (at [`POLL`], 800 k lines per
/// second).
const QUEUE_LINES: usize = 16_384;
/// How often a busy writer drains the queue.
const POLL: Duration = Duration::from_millis(20);
/// Empty rounds (of [`POLL`]) before the writer blocks on the queue until the next line.
const IDLE_ROUNDS: u32 = 5;

/// Whether access-log lines go to stdout, and in which encoding: `Text` is Istio's default
/// line (Envoy's format as Istio documents it), `Json` one object per line with Istio's field
/// names and remora's own; `Off` disables them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AccessLog {
    Text,
    Json,
    Off,
}

impl AccessLog {
    /// `--access-log` (`stdout`, `off`) and `--access-log-encoding` (`TEXT`, `JSON`).
    pub fn from_flags(file: &str, encoding: &str) -> AccessLog {
        match (file, encoding) {
            ("off", _) => AccessLog::Off,
            (_, "JSON") => AccessLog::Json,
            _ => AccessLog::Text,
        }
    }
}

/// `--access-log-providers`: the named access-log providers (`[{"name":…,"encoding":"TEXT"}]`,
/// the injector's `envoyFileAccessLog` entries), each checked; an error names the entry.
pub fn parse_providers(v: &str) -> Result<NamedLogs, String> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Entry {
        name: String,
        encoding: String,
    }
    let list: Vec<Entry> = serde_json::from_str(v)
        .map_err(|e| format!("not a JSON list of access-log providers: {e}"))?;
    if list.len() > 64 {
        return Err(format!("{} providers: at most 64", list.len()));
    }
    let mut out: Vec<(String, AccessLog)> = Vec::new();
    for (i, e) in list.into_iter().enumerate() {
        if e.name.is_empty() || out.iter().any(|(n, _)| *n == e.name) {
            return Err(format!(
                "[{i}].name {:?}: empty or the name of an earlier entry",
                e.name
            ));
        }
        let enc = match e.encoding.as_str() {
            "TEXT" => AccessLog::Text,
            "JSON" => AccessLog::Json,
            other => return Err(format!("[{i}].encoding {other:?}: must be TEXT or JSON")),
        };
        out.push((e.name, enc));
    }
    Ok(NamedLogs(out))
}

/// The named access-log providers of `--access-log-providers`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NamedLogs(pub Vec<(String, AccessLog)>);

/// Where a request's (or connection's) access-log lines go, as the Telemetry rules of its side
/// say: the proxy's own log (`Default`, the flags' setting), none, or the named providers'.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum LogTargets {
    #[default]
    Default,
    Off,
    Named(Vec<AccessLog>),
}

impl LogTargets {
    /// The encodings to write a line in (`default`: the flags' log).
    pub fn encodings<'a>(&'a self, default: &'a AccessLog) -> &'a [AccessLog] {
        match self {
            LogTargets::Default => std::slice::from_ref(default),
            LogTargets::Off => &[],
            LogTargets::Named(v) => v,
        }
    }

    /// No line is written.
    pub fn none(&self, default: AccessLog) -> bool {
        self.encodings(&default)
            .iter()
            .all(|a| *a == AccessLog::Off)
    }
}

/// The targets for a side whose Telemetry settings are `rules`, with the proxy's named
/// providers `named` (`envoy`, the mesh's own, first): `disabled` turns the log off, named
/// providers replace the default (a name the proxy does not know writes nothing), else the
/// default. Nothing is allocated unless a rule names providers.
pub fn log_targets(
    named: &[(String, AccessLog)],
    rules: &remora_model::telemetry::SideSettings,
) -> LogTargets {
    if rules.access_log_off() {
        return LogTargets::Off;
    }
    if rules.access_log_providers.is_empty() {
        return LogTargets::Default;
    }
    LogTargets::Named(
        rules
            .access_log_providers
            .iter()
            .filter_map(|p| named.iter().find(|(n, _)| n == p).map(|(_, a)| *a))
            .collect(),
    )
}

/// Istio's cluster name of a request's upstream, written into the line where it goes (no
/// string is made for it per request).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClusterName<'a> {
    /// `inbound|<port>||`
    Inbound(u16),
    /// `outbound|<port>|<subset>|<host>`
    Outbound {
        port: u16,
        subset: &'a str,
        host: &'a str,
    },
    /// A name as it is (`PassthroughCluster`, `BlackHoleCluster`, `unknown`).
    Named(&'a str),
}

impl<'a> From<&'a str> for ClusterName<'a> {
    fn from(s: &'a str) -> Self {
        ClusterName::Named(s)
    }
}

impl std::fmt::Display for ClusterName<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClusterName::Inbound(port) => write!(f, "inbound|{port}||"),
            ClusterName::Outbound { port, subset, host } => {
                write!(f, "outbound|{port}|{subset}|{host}")
            }
            ClusterName::Named(n) => f.write_str(n),
        }
    }
}

impl Serialize for ClusterName<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl ClusterName<'_> {
    /// The pieces of the name in order (the port in decimal after the prefix).
    fn pieces(&self) -> (&str, Option<u16>, &str, &str) {
        match *self {
            ClusterName::Inbound(port) => ("inbound|", Some(port), "||", ""),
            ClusterName::Outbound { port, subset, host } => ("outbound|", Some(port), subset, host),
            ClusterName::Named(n) => (n, None, "", ""),
        }
    }

    /// Append the name (the pieces, with `write` escaping the configured ones).
    fn write_with(&self, out: &mut Vec<u8>, write: fn(&mut Vec<u8>, &str)) {
        let (prefix, port, a, b) = self.pieces();
        match port {
            None => write(out, prefix),
            Some(port) => {
                out.extend_from_slice(prefix.as_bytes());
                push_decimal_bytes(out, u64::from(port));
                match self {
                    ClusterName::Outbound { .. } => {
                        out.push(b'|');
                        write(out, a);
                        out.push(b'|');
                        write(out, b);
                    }
                    _ => out.extend_from_slice(a.as_bytes()),
                }
            }
        }
    }

    fn write_json(&self, out: &mut Vec<u8>) {
        let (name, _, a, b) = self.pieces();
        if [name, a, b].iter().all(|p| json_plain(p)) {
            out.push(b'"');
            self.write_with(out, |o, p| o.extend_from_slice(p.as_bytes()));
            out.push(b'"');
        } else {
            push_json_str(out, &self.to_string());
        }
    }

    fn write_text(&self, out: &mut Vec<u8>) {
        self.write_with(out, push_text_escaped);
    }
}

impl AccessLog {
    /// Queue a TCP connection's line for stdout; never blocks. A dropped line counts in
    /// `metrics`.
    pub fn write_tcp(&self, metrics: &Metrics, entry: &TcpLogEntry) {
        let mut line = line_buffer();
        match self {
            AccessLog::Off => return,
            AccessLog::Json => {
                if serde_json::to_writer(&mut line, entry).is_err() {
                    return;
                }
            }
            AccessLog::Text => entry.write_text(&mut line),
        }
        line.push(b'\n');
        queue(metrics, line);
    }
}

/// Hand a finished line to the writer thread (or write it in place without one).
fn queue(metrics: &Metrics, line: Vec<u8>) {
    let Some(tx) = writer() else {
        // No writer thread (could not spawn): write in place.
        let _ = std::io::stdout().lock().write_all(&line);
        return;
    };
    match tx.try_send(line) {
        Ok(()) => {}
        Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
            metrics.access_log_dropped().inc()
        }
    }
}

impl AccessLog {
    /// Queue an HTTP request's line; the same bytes as [`AccessLog::write`] would queue, written
    /// without serde's machinery (this runs once per request).
    pub fn write_http(&self, metrics: &Metrics, entry: &HttpLogEntry) {
        let mut line = line_buffer();
        match self {
            AccessLog::Off => return,
            AccessLog::Json => entry.write_json(&mut line),
            AccessLog::Text => entry.write_text(&mut line),
        }
        line.push(b'\n');
        queue(metrics, line);
    }
}

/// `s` needs no escaping in a JSON string.
fn json_plain(s: &str) -> bool {
    s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\')
}

/// A JSON string as serde_json writes it: the bytes as they are unless one needs escaping
/// (then serde_json itself writes it).
fn push_json_str(out: &mut Vec<u8>, s: &str) {
    if json_plain(s) {
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else if serde_json::to_writer(&mut *out, s).is_err() {
        out.extend_from_slice(b"null");
    }
}

fn push_json_opt_str(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        Some(s) => push_json_str(out, s),
        None => out.extend_from_slice(b"null"),
    }
}

fn push_json_opt_addr(out: &mut Vec<u8>, a: Option<std::net::SocketAddr>) {
    match a {
        Some(std::net::SocketAddr::V4(a)) => push_v4(out, a, true),
        Some(a) => push_json_str(out, &a.to_string()),
        None => out.extend_from_slice(b"null"),
    }
}

/// A TEXT address field (`-` when absent), an IPv4 one written without a string.
fn push_text_addr(out: &mut Vec<u8>, a: Option<std::net::SocketAddr>) {
    match a {
        Some(std::net::SocketAddr::V4(a)) => push_v4(out, a, false),
        Some(a) => push_text(out, Some(&a.to_string())),
        None => out.push(b'-'),
    }
}

/// `ip:port` of an IPv4 address as `Display` writes it, in quotes for JSON (`quoted`); at most
/// `"255.255.255.255:65535"`, built on the stack and appended at once.
fn push_v4(out: &mut Vec<u8>, a: std::net::SocketAddrV4, quoted: bool) {
    let mut b = [0u8; 24];
    let mut n = 0;
    let mut put = |x: u8| {
        b[n] = x;
        n += 1;
    };
    if quoted {
        put(b'"');
    }
    for (i, o) in a.ip().octets().iter().enumerate() {
        if i > 0 {
            put(b'.');
        }
        if *o >= 100 {
            put(b'0' + o / 100);
        }
        if *o >= 10 {
            put(b'0' + o / 10 % 10);
        }
        put(b'0' + o % 10);
    }
    put(b':');
    let port = a.port();
    let mut started = false;
    for d in [10_000u16, 1000, 100, 10, 1] {
        let digit = (port / d % 10) as u8;
        if started || digit != 0 || d == 1 {
            put(b'0' + digit);
            started = true;
        }
    }
    if quoted {
        put(b'"');
    }
    out.extend_from_slice(&b[..n]);
}

fn push_decimal_bytes(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

fn writer() -> Option<&'static SyncSender<Vec<u8>>> {
    static TX: OnceLock<Option<SyncSender<Vec<u8>>>> = OnceLock::new();
    TX.get_or_init(|| {
        let (tx, rx) = sync_channel::<Vec<u8>>(QUEUE_LINES);
        std::thread::Builder::new()
            .name("remora-accesslog".into())
            .spawn(move || write_loop(rx, std::io::stdout()))
            .ok()
            .map(|_| tx)
    })
    .as_ref()
}

/// Line buffers the writer is done with, for the next lines: a buffer allocated on a worker
/// thread and freed on the writer's took glibc's slow paths on both sides, once per request.
static SPARE: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());
/// Most buffers kept, and the largest one kept (a typical HTTP line is 500–600 bytes).
const SPARE_MAX: usize = 256;
const SPARE_LINE_MAX: usize = 4096;

/// A cleared buffer for one line.
fn line_buffer() -> Vec<u8> {
    SPARE
        .lock()
        .ok()
        .and_then(|mut s| s.pop())
        .unwrap_or_else(|| Vec::with_capacity(1024))
}

/// Give a written line's buffer back for reuse (or free it).
fn recycle(mut line: Vec<u8>) {
    if line.capacity() > SPARE_LINE_MAX {
        return;
    }
    line.clear();
    if let Ok(mut s) = SPARE.lock() {
        if s.len() < SPARE_MAX {
            s.push(line);
        }
    }
}

/// Flush requests answered by the writer (an empty line in the queue asks for one).
static FLUSHED: (Mutex<u64>, Condvar) = (Mutex::new(0), Condvar::new());

/// Write every line queued so far to stdout, waiting at most `limit` for the writer; the proxy
/// calls it when it stops, so that the last requests' lines are not lost.
pub fn flush(limit: Duration) {
    let Some(tx) = writer() else { return };
    let (count, done) = &FLUSHED;
    let Ok(mut n) = count.lock() else { return };
    let want = *n + 1;
    if tx.try_send(Vec::new()).is_err() {
        return;
    }
    let deadline = std::time::Instant::now() + limit;
    while *n < want {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return;
        }
        n = match done.wait_timeout(n, left) {
            Ok((g, _)) => g,
            Err(_) => return,
        };
    }
}

/// Write queued lines in batches: every [`POLL`] while lines come, blocking on the queue after
/// [`IDLE_ROUNDS`] empty rounds. An empty line is a flush request ([`flush`]). Ends when every
/// sender is gone.
fn write_loop<W: Write>(rx: Receiver<Vec<u8>>, out: W) {
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, out);
    let mut idle = 0u32;
    loop {
        let first = if idle >= IDLE_ROUNDS {
            match rx.recv() {
                Ok(line) => line,
                Err(_) => break,
            }
        } else {
            match rx.try_recv() {
                Ok(line) => line,
                Err(TryRecvError::Empty) => {
                    idle += 1;
                    std::thread::sleep(POLL);
                    continue;
                }
                Err(TryRecvError::Disconnected) => break,
            }
        };
        idle = 0;
        let mut flushes = 0u64;
        let mut take = |line: Vec<u8>| {
            if line.is_empty() {
                flushes += 1;
            } else {
                let _ = out.write_all(&line);
                recycle(line);
            }
        };
        take(first);
        while let Ok(line) = rx.try_recv() {
            take(line);
        }
        let _ = out.flush();
        if flushes > 0 {
            let (count, done) = &FLUSHED;
            if let Ok(mut n) = count.lock() {
                *n += flushes;
            }
            done.notify_all();
        }
        std::thread::sleep(POLL);
    }
    let _ = out.flush();
}

/// `ip:port` (`[ip6]:port`) as `SocketAddr`'s `Display` writes it, without the formatter's
/// padding machinery (three of these per access-log line).
pub fn addr_string(addr: std::net::SocketAddr) -> String {
    match addr {
        std::net::SocketAddr::V4(a) => {
            let mut out = String::with_capacity(21);
            for (i, o) in a.ip().octets().iter().enumerate() {
                if i > 0 {
                    out.push('.');
                }
                push_decimal(&mut out, u32::from(*o));
            }
            out.push(':');
            push_decimal(&mut out, u32::from(a.port()));
            out
        }
        std::net::SocketAddr::V6(_) => addr.to_string(),
    }
}

fn push_decimal(out: &mut String, mut n: u32) {
    let mut digits = [0u8; 10];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for d in &digits[i..] {
        out.push(char::from(*d));
    }
}

/// RFC 3339 UTC timestamp with milliseconds, without a date crate. The date and time of day
/// are formatted once per second per thread.
pub fn now_rfc3339() -> String {
    thread_local! {
        static SECOND: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = now.as_secs();
    let ms = now.subsec_millis();
    SECOND.with(|cell| {
        let mut cached = cell.borrow_mut();
        if cached.0 != secs {
            *cached = (secs, format_second(secs));
        }
        let mut out = String::with_capacity(24);
        out.push_str(&cached.1);
        out.push('.');
        for d in [ms / 100, ms / 10 % 10, ms % 10] {
            out.push(char::from(b'0' + d as u8));
        }
        out.push('Z');
        out
    })
}

/// `YYYY-MM-DDTHH:MM:SS` of a Unix second (civil-from-days, Howard Hinnant's algorithm).
fn format_second(secs: u64) -> String {
    let secs = secs as i64;
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (h, m, s) = (rem / 3600, (rem % 3600) / 60, rem % 60);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let mo = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if mo <= 2 { y + 1 } else { y };
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{m:02}:{s:02}")
}

/// An HTTP request's access-log entry: Istio's fields (`start_time`, `method`, `path`,
/// `protocol`, `response_code`, ... as Istio's JSON encoding names them) and remora's own
/// (`kind`, `direction`, `status`, `duration_ms`, `upstream`, ...).
#[derive(Debug, Serialize)]
pub struct HttpLogEntry<'a> {
    pub start_time: String,
    pub kind: &'static str,
    pub direction: &'static str,
    pub method: String,
    pub path: String,
    pub authority: String,
    /// Istio's `%PROTOCOL%`: `HTTP/1.1` or `HTTP/2`.
    pub protocol: &'static str,
    /// As the metrics label it: `http`, `http2` or `grpc`.
    pub request_protocol: &'static str,
    pub status: u16,
    pub response_code: u16,
    /// Envoy's `%RESPONSE_CODE_DETAILS%` for what remora knows (`via_upstream`, ...).
    pub response_code_details: &'static str,
    pub duration_ms: f64,
    /// Milliseconds, whole (Istio's `duration`).
    pub duration: u64,
    pub upstream: Option<std::net::SocketAddr>,
    pub upstream_host: Option<std::net::SocketAddr>,
    /// Istio's cluster name: `outbound|port|subset|host`, `inbound|port||`,
    /// `PassthroughCluster`, `BlackHoleCluster`.
    pub upstream_cluster: Option<ClusterName<'a>>,
    pub original_dst: Option<std::net::SocketAddr>,
    pub downstream: Option<std::net::SocketAddr>,
    pub downstream_local_address: Option<std::net::SocketAddr>,
    pub downstream_remote_address: Option<std::net::SocketAddr>,
    pub x_forwarded_for: Option<&'a str>,
    pub user_agent: Option<&'a str>,
    pub route_name: Option<String>,
    pub virtual_service: Option<String>,
    pub destination_service: &'a str,
    pub response_flags: &'a str,
    pub bytes_received: u64,
    pub bytes_sent: u64,
    pub request_id: String,
    pub traceparent: Option<String>,
    pub error: Option<String>,
    /// `mutual_tls` when the connection to the peer sidecar was mTLS, else `none`.
    pub connection_security_policy: &'static str,
    /// The client's SPIFFE id (inbound mTLS).
    pub peer_principal: Option<&'a str>,
    /// The TLS version of the inbound mTLS connection.
    pub tls_version: Option<&'static str>,
    /// Envoy's `%UPSTREAM_LOCAL_ADDRESS%`: this side of the upstream connection (plain TCP or
    /// TLS origination).
    pub upstream_local_address: Option<std::net::SocketAddr>,
    /// Envoy's `%REQUESTED_SERVER_NAME%`: the server name (SNI) the client asked for on an
    /// inbound mTLS connection.
    pub requested_server_name: Option<&'a str>,
    /// Envoy's `%UPSTREAM_TRANSPORT_FAILURE_REASON%`: why the last upstream connection attempt
    /// failed.
    pub upstream_transport_failure_reason: Option<&'a str>,
    /// Envoy's `x-envoy-upstream-service-time` (`%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)%`):
    /// whole milliseconds from the request sent upstream (its end, with a body) to the
    /// upstream's response headers; `None` when no upstream answered.
    pub upstream_service_time: Option<u64>,
}

/// Istio's fields an HTTP line never fills (`null` in JSON, `-` in TEXT):
/// `connection_termination_details`, which Envoy sets only when a network filter closes a
/// connection (the RBAC network filter's TCP authorization denial, which remora's TCP lines
/// carry); an HTTP request's denials are in `response_code_details`.
const NOT_KNOWN: [&str; 1] = ["connection_termination_details"];

impl HttpLogEntry<'_> {
    /// The entry as one JSON object, byte for byte as `serde_json::to_writer` writes it, then
    /// Istio's fields remora does not fill ([`NOT_KNOWN`], `null`).
    pub fn write_json(&self, out: &mut Vec<u8>) {
        self.write_json_known(out);
        out.pop();
        for k in NOT_KNOWN {
            out.extend_from_slice(b",\"");
            out.extend_from_slice(k.as_bytes());
            out.extend_from_slice(b"\":null");
        }
        out.push(b'}');
    }

    /// The struct's own fields, as serde writes them.
    fn write_json_known(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"start_time\":");
        push_json_str(out, &self.start_time);
        out.extend_from_slice(b",\"kind\":");
        push_json_str(out, self.kind);
        out.extend_from_slice(b",\"direction\":");
        push_json_str(out, self.direction);
        out.extend_from_slice(b",\"method\":");
        push_json_str(out, &self.method);
        out.extend_from_slice(b",\"path\":");
        push_json_str(out, &self.path);
        out.extend_from_slice(b",\"authority\":");
        push_json_str(out, &self.authority);
        out.extend_from_slice(b",\"protocol\":");
        push_json_str(out, self.protocol);
        out.extend_from_slice(b",\"request_protocol\":");
        push_json_str(out, self.request_protocol);
        out.extend_from_slice(b",\"status\":");
        push_decimal_bytes(out, u64::from(self.status));
        out.extend_from_slice(b",\"response_code\":");
        push_decimal_bytes(out, u64::from(self.response_code));
        out.extend_from_slice(b",\"response_code_details\":");
        push_json_str(out, self.response_code_details);
        out.extend_from_slice(b",\"duration_ms\":");
        if serde_json::to_writer(&mut *out, &self.duration_ms).is_err() {
            out.extend_from_slice(b"null");
        }
        out.extend_from_slice(b",\"duration\":");
        push_decimal_bytes(out, self.duration);
        out.extend_from_slice(b",\"upstream\":");
        push_json_opt_addr(out, self.upstream);
        out.extend_from_slice(b",\"upstream_host\":");
        push_json_opt_addr(out, self.upstream_host);
        out.extend_from_slice(b",\"upstream_cluster\":");
        match &self.upstream_cluster {
            Some(c) => c.write_json(out),
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b",\"original_dst\":");
        push_json_opt_addr(out, self.original_dst);
        out.extend_from_slice(b",\"downstream\":");
        push_json_opt_addr(out, self.downstream);
        out.extend_from_slice(b",\"downstream_local_address\":");
        push_json_opt_addr(out, self.downstream_local_address);
        out.extend_from_slice(b",\"downstream_remote_address\":");
        push_json_opt_addr(out, self.downstream_remote_address);
        out.extend_from_slice(b",\"x_forwarded_for\":");
        push_json_opt_str(out, self.x_forwarded_for);
        out.extend_from_slice(b",\"user_agent\":");
        push_json_opt_str(out, self.user_agent);
        out.extend_from_slice(b",\"route_name\":");
        push_json_opt_str(out, self.route_name.as_deref());
        out.extend_from_slice(b",\"virtual_service\":");
        push_json_opt_str(out, self.virtual_service.as_deref());
        out.extend_from_slice(b",\"destination_service\":");
        push_json_str(out, self.destination_service);
        out.extend_from_slice(b",\"response_flags\":");
        push_json_str(out, self.response_flags);
        out.extend_from_slice(b",\"bytes_received\":");
        push_decimal_bytes(out, self.bytes_received);
        out.extend_from_slice(b",\"bytes_sent\":");
        push_decimal_bytes(out, self.bytes_sent);
        out.extend_from_slice(b",\"request_id\":");
        push_json_str(out, &self.request_id);
        out.extend_from_slice(b",\"traceparent\":");
        push_json_opt_str(out, self.traceparent.as_deref());
        out.extend_from_slice(b",\"error\":");
        push_json_opt_str(out, self.error.as_deref());
        out.extend_from_slice(b",\"connection_security_policy\":");
        push_json_str(out, self.connection_security_policy);
        out.extend_from_slice(b",\"peer_principal\":");
        push_json_opt_str(out, self.peer_principal);
        out.extend_from_slice(b",\"tls_version\":");
        push_json_opt_str(out, self.tls_version);
        out.extend_from_slice(b",\"upstream_local_address\":");
        push_json_opt_addr(out, self.upstream_local_address);
        out.extend_from_slice(b",\"requested_server_name\":");
        push_json_opt_str(out, self.requested_server_name);
        out.extend_from_slice(b",\"upstream_transport_failure_reason\":");
        push_json_opt_str(out, self.upstream_transport_failure_reason);
        out.extend_from_slice(b",\"upstream_service_time\":");
        match self.upstream_service_time {
            Some(ms) => push_decimal_bytes(out, ms),
            None => out.extend_from_slice(b"null"),
        }
        out.push(b'}');
    }

    /// Istio's default TEXT line (Envoy's operators as Istio's `accessLogFormat` default lists
    /// them); an empty value is `-`:
    /// `[%START_TIME%] "%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%"
    /// %RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% %CONNECTION_TERMINATION_DETAILS%
    /// "%UPSTREAM_TRANSPORT_FAILURE_REASON%" %BYTES_RECEIVED% %BYTES_SENT% %DURATION%
    /// %RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% "%REQ(X-FORWARDED-FOR)%" "%REQ(USER-AGENT)%"
    /// "%REQ(X-REQUEST-ID)%" "%REQ(:AUTHORITY)%" "%UPSTREAM_HOST%" %UPSTREAM_CLUSTER_RAW%
    /// %UPSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_REMOTE_ADDRESS%
    /// %REQUESTED_SERVER_NAME% %ROUTE_NAME%`.
    pub fn write_text(&self, out: &mut Vec<u8>) {
        out.push(b'[');
        push_text(out, Some(&self.start_time));
        out.extend_from_slice(b"] \"");
        push_text(out, Some(&self.method));
        out.push(b' ');
        push_text(out, Some(&self.path));
        out.push(b' ');
        push_text(out, Some(self.protocol));
        out.extend_from_slice(b"\" ");
        push_decimal_bytes(out, u64::from(self.response_code));
        out.push(b' ');
        push_text(out, Some(self.response_flags));
        out.push(b' ');
        push_text(out, Some(self.response_code_details));
        out.extend_from_slice(b" - \"");
        push_text(out, self.upstream_transport_failure_reason);
        out.extend_from_slice(b"\" ");
        push_decimal_bytes(out, self.bytes_received);
        out.push(b' ');
        push_decimal_bytes(out, self.bytes_sent);
        out.push(b' ');
        push_decimal_bytes(out, self.duration);
        out.push(b' ');
        match self.upstream_service_time {
            Some(ms) => push_decimal_bytes(out, ms),
            None => out.push(b'-'),
        }
        out.extend_from_slice(b" \"");
        push_text(out, self.x_forwarded_for);
        out.extend_from_slice(b"\" \"");
        push_text(out, self.user_agent);
        out.extend_from_slice(b"\" \"");
        push_text(out, Some(&self.request_id));
        out.extend_from_slice(b"\" \"");
        push_text(out, Some(&self.authority));
        out.extend_from_slice(b"\" \"");
        push_text_addr(out, self.upstream_host);
        out.extend_from_slice(b"\" ");
        match &self.upstream_cluster {
            Some(c) => c.write_text(out),
            None => out.push(b'-'),
        }
        out.push(b' ');
        push_text_addr(out, self.upstream_local_address);
        out.push(b' ');
        push_text_addr(out, self.downstream_local_address);
        out.push(b' ');
        push_text_addr(out, self.downstream_remote_address);
        out.push(b' ');
        push_text(out, self.requested_server_name);
        out.push(b' ');
        push_text(out, self.route_name.as_deref());
    }
}

/// A TEXT field: `-` when empty; control bytes and `"` escaped so that a line stays one line and
/// its quoted fields stay apart.
fn push_text(out: &mut Vec<u8>, v: Option<&str>) {
    let v = v.unwrap_or_default();
    if v.is_empty() {
        out.push(b'-');
        return;
    }
    push_text_escaped(out, v);
}

/// A TEXT value's bytes, escaped as [`push_text`] does (nothing for an empty one).
fn push_text_escaped(out: &mut Vec<u8>, v: &str) {
    for &b in v.as_bytes() {
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            0..=0x1f | 0x7f => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                out.extend_from_slice(b"\\x");
                out.push(HEX[usize::from(b >> 4)]);
                out.push(HEX[usize::from(b & 0x0f)]);
            }
            _ => out.push(b),
        }
    }
}

/// A TCP connection's access-log entry.
#[derive(Debug, Serialize)]
pub struct TcpLogEntry {
    pub start_time: String,
    pub kind: &'static str,
    pub direction: &'static str,
    pub protocol: &'static str,
    pub duration_ms: f64,
    pub upstream: Option<String>,
    pub original_dst: Option<String>,
    pub downstream: Option<String>,
    pub route_name: Option<String>,
    pub response_flags: String,
    pub bytes_received: u64,
    pub bytes_sent: u64,
    pub reason: Option<String>,
    /// `mutual_tls` when the connection to the peer sidecar was mTLS, else `none`.
    pub connection_security_policy: &'static str,
    /// The client's SPIFFE id (inbound mTLS).
    pub peer_principal: Option<String>,
    /// Envoy's `%CONNECTION_TERMINATION_DETAILS%`: why the proxy closed the connection itself,
    /// in Envoy's words where Envoy has them (an AuthorizationPolicy denial:
    /// `rbac_access_denied_matched_policy[...]`, as Envoy's RBAC network filter says it).
    pub connection_termination_details: Option<String>,
}

impl TcpLogEntry {
    /// Istio's TEXT line for a TCP connection: the same operators, the HTTP ones `-` (Envoy's
    /// TCP proxy writes them so), response code `0`.
    pub fn write_text(&self, out: &mut Vec<u8>) {
        out.push(b'[');
        push_text(out, Some(&self.start_time));
        out.extend_from_slice(b"] \"- - -\" 0 ");
        push_text(out, Some(&self.response_flags));
        out.extend_from_slice(b" - ");
        push_text(out, self.connection_termination_details.as_deref());
        out.extend_from_slice(b" \"-\" ");
        push_decimal_bytes(out, self.bytes_received);
        out.push(b' ');
        push_decimal_bytes(out, self.bytes_sent);
        out.push(b' ');
        push_decimal_bytes(out, self.duration_ms as u64);
        out.extend_from_slice(b" - \"-\" \"-\" \"-\" \"-\" \"");
        push_text(out, self.upstream.as_deref());
        out.extend_from_slice(b"\" - - ");
        push_text(out, self.original_dst.as_deref());
        out.push(b' ');
        push_text(out, self.downstream.as_deref());
        out.extend_from_slice(b" - ");
        push_text(out, self.route_name.as_deref());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamp_is_rfc3339_utc() {
        let t = now_rfc3339();
        assert_eq!(t.len(), 24, "{t}");
        assert!(t.ends_with('Z') && t.as_bytes()[10] == b'T', "{t}");
        assert!(t.starts_with("20"), "{t}");
    }

    #[test]
    fn addresses_print_like_display() {
        for a in [
            "127.0.0.1:8080",
            "0.0.0.0:0",
            "255.255.255.255:65535",
            "10.1.20.3:9",
            "[::1]:15001",
            "[fe80::1%2]:80",
        ] {
            let addr: std::net::SocketAddr = a.parse().unwrap();
            assert_eq!(addr_string(addr), addr.to_string());
            let mut text = Vec::new();
            push_text_addr(&mut text, Some(addr));
            assert_eq!(String::from_utf8(text).unwrap(), addr.to_string());
        }
    }

    #[test]
    fn seconds_format_as_civil_dates() {
        assert_eq!(format_second(0), "1970-01-01T00:00:00");
        assert_eq!(format_second(951_782_400), "2000-02-29T00:00:00");
        assert_eq!(format_second(1_795_320_000), "2026-11-22T04:00:00");
        assert_eq!(format_second(4_107_542_399), "2100-02-28T23:59:59");
    }

    #[test]
    fn writer_batches_lines_in_order_and_stops_when_senders_go() {
        let (tx, rx) = sync_channel::<Vec<u8>>(4);
        let buf = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        struct Shared(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);
        impl Write for Shared {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let out = Shared(buf.clone());
        let t = std::thread::spawn(move || write_loop(rx, out));
        for i in 0..3 {
            tx.send(format!("{{\"n\":{i}}}\n").into_bytes()).unwrap();
        }
        drop(tx);
        t.join().unwrap();
        assert_eq!(
            String::from_utf8(buf.lock().unwrap().clone()).unwrap(),
            "{\"n\":0}\n{\"n\":1}\n{\"n\":2}\n"
        );
    }

    /// A flush request (an empty line) is answered after the lines queued before it are
    /// written, and is not written itself; a busy writer drains within a few polls without
    /// anyone waking it.
    #[test]
    fn flush_requests_are_answered_after_earlier_lines() {
        let (tx, rx) = sync_channel::<Vec<u8>>(64);
        let buf = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        struct Shared(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);
        impl Write for Shared {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let t = std::thread::spawn({
            let out = Shared(buf.clone());
            move || write_loop(rx, out)
        });
        let before = *FLUSHED.0.lock().unwrap();
        for i in 0..10 {
            tx.send(format!("{i}\n").into_bytes()).unwrap();
        }
        tx.send(Vec::new()).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while *FLUSHED.0.lock().unwrap() == before {
            assert!(std::time::Instant::now() < deadline, "no flush answer");
            std::thread::sleep(Duration::from_millis(5));
        }
        let written = String::from_utf8(buf.lock().unwrap().clone()).unwrap();
        assert_eq!(
            written,
            (0..10).map(|i| format!("{i}\n")).collect::<String>()
        );
        drop(tx);
        t.join().unwrap();
    }

    #[test]
    fn http_entries_write_exactly_what_serde_json_writes() {
        let plain = HttpLogEntry {
            start_time: now_rfc3339(),
            kind: "http",
            direction: "outbound",
            method: "GET".into(),
            path: "/a?b=c".into(),
            authority: "reviews:9080".into(),
            protocol: "HTTP/1.1",
            request_protocol: "http",
            status: 200,
            response_code: 200,
            response_code_details: "via_upstream",
            duration_ms: 241.500633,
            duration: 241,
            upstream: Some("10.1.2.3:9080".parse().unwrap()),
            upstream_host: Some("10.1.2.3:9080".parse().unwrap()),
            upstream_cluster: Some("outbound|9080|v1|reviews.default.svc.cluster.local".into()),
            original_dst: Some("127.0.0.1:0".parse().unwrap()),
            downstream: Some("[fe80::1%2]:80".parse().unwrap()),
            downstream_local_address: Some("127.0.0.1:0".parse().unwrap()),
            downstream_remote_address: Some("[fe80::1%2]:80".parse().unwrap()),
            x_forwarded_for: None,
            user_agent: Some("curl/8.5.0"),
            route_name: Some("main".into()),
            virtual_service: None,
            destination_service: "reviews.default.svc.cluster.local",
            response_flags: "-",
            bytes_received: 0,
            bytes_sent: u64::MAX,
            request_id: "b57375c1-2a65-432e-91b9-deb72812aa27".into(),
            traceparent: None,
            error: Some("upstream \"x\"\n\\ \u{1} é \u{7f}".into()),
            connection_security_policy: "none",
            peer_principal: None,
            tls_version: None,
            upstream_local_address: Some("10.1.2.9:41000".parse().unwrap()),
            requested_server_name: None,
            upstream_transport_failure_reason: None,
            upstream_service_time: Some(239),
        };
        let check = |e: &HttpLogEntry| {
            let mut mine = Vec::new();
            e.write_json_known(&mut mine);
            assert_eq!(
                String::from_utf8(mine).unwrap(),
                serde_json::to_string(e).unwrap()
            );
            let mut full = Vec::new();
            e.write_json(&mut full);
            let v: serde_json::Value = serde_json::from_slice(&full).unwrap();
            for k in NOT_KNOWN {
                assert_eq!(v[k], serde_json::Value::Null, "{k}");
            }
        };
        check(&plain);
        let odd = HttpLogEntry {
            method: "G\tET".into(),
            path: "/\u{2028}\u{0}".into(),
            status: 0,
            duration_ms: f64::NAN,
            upstream: None,
            upstream_host: None,
            upstream_cluster: None,
            original_dst: Some("[::1]:15001".parse().unwrap()),
            downstream: None,
            downstream_remote_address: None,
            x_forwarded_for: Some("1.2.3.4, \"5\""),
            route_name: None,
            virtual_service: Some("ns/\"v\"".into()),
            response_flags: "DI,UF",
            traceparent: Some("00-ab-cd-01".into()),
            error: None,
            connection_security_policy: "mutual_tls",
            peer_principal: Some("spiffe://cluster.local/ns/shop/sa/\"web\""),
            tls_version: Some("TLSv1_3"),
            upstream_local_address: None,
            requested_server_name: Some("outbound_.9080_._.reviews.shop.svc.cluster.local"),
            upstream_transport_failure_reason: Some("ConnectRefused: \"x\"\n"),
            upstream_service_time: None,
            ..plain
        };
        check(&odd);
        let mut e = HttpLogEntry {
            duration_ms: 0.1 + 0.2,
            ..odd
        };
        check(&e);
        for a in [
            "255.255.255.255:65535",
            "0.0.0.0:10000",
            "1.20.100.9:100",
            "10.0.0.1:1",
            "192.168.99.250:8080",
        ] {
            e.upstream = Some(a.parse().unwrap());
            check(&e);
        }
    }

    #[test]
    fn text_lines_follow_istios_default_format() {
        let e = HttpLogEntry {
            start_time: "2026-11-22T00:00:26.494Z".into(),
            kind: "http",
            direction: "outbound",
            method: "GET".into(),
            path: "/reviews/0".into(),
            authority: "reviews:9080".into(),
            protocol: "HTTP/1.1",
            request_protocol: "http",
            status: 200,
            response_code: 200,
            response_code_details: "via_upstream",
            duration_ms: 4.6,
            duration: 4,
            upstream: Some("10.0.0.7:9080".parse().unwrap()),
            upstream_host: Some("10.0.0.7:9080".parse().unwrap()),
            upstream_cluster: Some("outbound|9080||reviews.bookinfo.svc.cluster.local".into()),
            original_dst: Some("10.96.0.12:9080".parse().unwrap()),
            downstream: Some("10.0.0.5:49278".parse().unwrap()),
            downstream_local_address: Some("10.96.0.12:9080".parse().unwrap()),
            downstream_remote_address: Some("10.0.0.5:49278".parse().unwrap()),
            x_forwarded_for: None,
            user_agent: Some("curl/8.5.0"),
            route_name: Some("default".into()),
            virtual_service: None,
            destination_service: "reviews.bookinfo.svc.cluster.local",
            response_flags: "-",
            bytes_received: 0,
            bytes_sent: 295,
            request_id: "a5a724be-a6fc-41c4-86f8-5bc351e75213".into(),
            traceparent: None,
            error: None,
            connection_security_policy: "mutual_tls",
            peer_principal: None,
            tls_version: None,
            upstream_local_address: None,
            requested_server_name: None,
            upstream_transport_failure_reason: None,
            upstream_service_time: Some(3),
        };
        let mut out = Vec::new();
        e.write_text(&mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "[2026-11-22T00:00:26.494Z] \"GET /reviews/0 HTTP/1.1\" 200 - via_upstream - \"-\" 0 295 4 3 \"-\" \"curl/8.5.0\" \"a5a724be-a6fc-41c4-86f8-5bc351e75213\" \"reviews:9080\" \"10.0.0.7:9080\" outbound|9080||reviews.bookinfo.svc.cluster.local - 10.96.0.12:9080 10.0.0.5:49278 - default"
        );
        // A request cannot break the line or its quoting.
        let odd = HttpLogEntry {
            path: "/a\nb\"c".into(),
            user_agent: Some(""),
            ..e
        };
        let mut out = Vec::new();
        odd.write_text(&mut out);
        let line = String::from_utf8(out).unwrap();
        assert!(line.contains("\"GET /a\\x0ab\\\"c HTTP/1.1\""), "{line}");
        assert!(line.contains("\"-\" \"-\" \"a5a7"), "{line}");
        // The fields remora fills beyond the plain request: the upstream's local address, the
        // SNI of an inbound mTLS connection, why connecting failed.
        let filled = HttpLogEntry {
            upstream_local_address: Some("10.0.0.5:41000".parse().unwrap()),
            requested_server_name: Some("outbound_.9080_._.reviews.bookinfo.svc.cluster.local"),
            upstream_transport_failure_reason: Some("ConnectRefused: Connection refused"),
            response_code: 503,
            response_flags: "UF",
            response_code_details: "upstream_reset_before_response_started{connection_failure}",
            upstream_service_time: None,
            ..odd
        };
        let mut out = Vec::new();
        filled.write_text(&mut out);
        let line = String::from_utf8(out).unwrap();
        assert!(
            line.contains(" 503 UF upstream_reset_before_response_started{connection_failure} - \"ConnectRefused: Connection refused\" 0 295 4 - \""),
            "{line}"
        );
        assert!(
            line.ends_with(" outbound|9080||reviews.bookinfo.svc.cluster.local 10.0.0.5:41000 10.96.0.12:9080 10.0.0.5:49278 outbound_.9080_._.reviews.bookinfo.svc.cluster.local default"),
            "{line}"
        );
        let t = TcpLogEntry {
            start_time: "2026-11-22T00:00:26.494Z".into(),
            kind: "tcp",
            direction: "outbound",
            protocol: "tcp",
            duration_ms: 12.1,
            upstream: Some("127.0.0.1:25".into()),
            original_dst: Some("127.0.0.1:25".into()),
            downstream: Some("127.0.0.1:50644".into()),
            route_name: None,
            response_flags: "-".into(),
            bytes_received: 6,
            bytes_sent: 42,
            reason: None,
            connection_security_policy: "none",
            peer_principal: None,
            connection_termination_details: None,
        };
        let mut out = Vec::new();
        t.write_text(&mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "[2026-11-22T00:00:26.494Z] \"- - -\" 0 - - - \"-\" 6 42 12 - \"-\" \"-\" \"-\" \"-\" \"127.0.0.1:25\" - - 127.0.0.1:25 127.0.0.1:50644 - -"
        );
        // Closed by an AuthorizationPolicy: Envoy's RBAC network filter's words, in place.
        let denied = TcpLogEntry {
            connection_termination_details: Some(
                "rbac_access_denied_matched_policy[ns[shop]-policy[deny-db]-rule[0]]".into(),
            ),
            upstream: None,
            ..t
        };
        let mut out = Vec::new();
        denied.write_text(&mut out);
        assert!(
            String::from_utf8(out).unwrap().starts_with(
                "[2026-11-22T00:00:26.494Z] \"- - -\" 0 - - rbac_access_denied_matched_policy[ns[shop]-policy[deny-db]-rule[0]] \"-\" 6 42 12 "
            )
        );
    }

    /// Cluster names are written in place, as their `Display` says, in both encodings.
    #[test]
    fn cluster_names_write_like_their_display() {
        for c in [
            ClusterName::Inbound(9080),
            ClusterName::Outbound {
                port: 9080,
                subset: "v1",
                host: "reviews.default.svc.cluster.local",
            },
            ClusterName::Outbound {
                port: 80,
                subset: "",
                host: "a\"b\\c\n",
            },
            ClusterName::Named("PassthroughCluster"),
        ] {
            let mut json = Vec::new();
            c.write_json(&mut json);
            assert_eq!(
                String::from_utf8(json).unwrap(),
                serde_json::to_string(&c.to_string()).unwrap()
            );
            let mut text = Vec::new();
            c.write_text(&mut text);
            let mut want = Vec::new();
            push_text(&mut want, Some(&c.to_string()));
            assert_eq!(text, want, "{c}");
        }
        assert_eq!(ClusterName::Inbound(8080).to_string(), "inbound|8080||");
        assert_eq!(
            ClusterName::Outbound {
                port: 9080,
                subset: "",
                host: "r"
            }
            .to_string(),
            "outbound|9080||r"
        );
    }

    #[test]
    fn named_log_providers_are_checked() {
        let ok =
            parse_providers(r#"[{"name":"a","encoding":"JSON"},{"name":"b","encoding":"TEXT"}]"#)
                .unwrap();
        assert_eq!(
            ok.0,
            vec![
                ("a".to_string(), AccessLog::Json),
                ("b".to_string(), AccessLog::Text)
            ]
        );
        for (bad, want) in [
            ("[1]", "not a JSON list"),
            (r#"[{"name":"","encoding":"TEXT"}]"#, "[0].name"),
            (
                r#"[{"name":"a","encoding":"TEXT"},{"name":"a","encoding":"JSON"}]"#,
                "[1].name",
            ),
            (r#"[{"name":"a","encoding":"XML"}]"#, "[0].encoding"),
        ] {
            let e = parse_providers(bad).unwrap_err();
            assert!(e.contains(want), "{bad}: {e}");
        }
    }

    /// A side's access-log targets: off, the default, or the named providers it knows.
    #[test]
    fn telemetry_rules_choose_the_log_targets() {
        use remora_model::telemetry::SideSettings;
        let named = [
            ("envoy".to_string(), AccessLog::Text),
            ("json".to_string(), AccessLog::Json),
        ];
        let side = |providers: &[&str], disabled: Option<bool>| SideSettings {
            access_log_providers: providers.iter().map(|p| p.to_string()).collect(),
            access_log_disabled: disabled,
            ..Default::default()
        };
        assert_eq!(log_targets(&named, &side(&[], None)), LogTargets::Default);
        assert_eq!(
            log_targets(&named, &side(&[], Some(false))),
            LogTargets::Default
        );
        assert_eq!(
            log_targets(&named, &side(&["json"], Some(true))),
            LogTargets::Off
        );
        assert_eq!(
            log_targets(&named, &side(&["json", "nope", "envoy"], None)),
            LogTargets::Named(vec![AccessLog::Json, AccessLog::Text])
        );
        let off = AccessLog::Off;
        assert_eq!(LogTargets::Default.encodings(&off), &[AccessLog::Off]);
        assert!(LogTargets::Default.none(AccessLog::Off));
        assert!(!LogTargets::Default.none(AccessLog::Json));
        assert!(LogTargets::Off.none(AccessLog::Json));
        assert!(LogTargets::Named(vec![]).none(AccessLog::Json));
        assert!(!LogTargets::Named(vec![AccessLog::Text]).none(AccessLog::Off));
    }

    #[test]
    fn line_buffers_come_back_empty_and_big_ones_are_not_kept() {
        let mut b = line_buffer();
        b.extend_from_slice(b"{\"x\":1}\n");
        recycle(b);
        for _ in 0..SPARE_MAX + 1 {
            let b = line_buffer();
            assert!(b.is_empty());
            assert!(b.capacity() <= SPARE_LINE_MAX.max(1024));
        }
        recycle(Vec::with_capacity(SPARE_LINE_MAX + 1));
        assert!(SPARE
            .lock()
            .unwrap()
            .iter()
            .all(|b| b.is_empty() && b.capacity() <= SPARE_LINE_MAX));
    }

    #[test]
    fn entry_serializes_as_one_json_line() {
        let e = TcpLogEntry {
            start_time: now_rfc3339(),
            kind: "tcp",
            direction: "outbound",
            protocol: "tcp",
            duration_ms: 1.5,
            upstream: Some("127.0.0.1:9".into()),
            original_dst: None,
            downstream: None,
            route_name: None,
            response_flags: "-".into(),
            bytes_received: 3,
            bytes_sent: 4,
            reason: None,
            connection_security_policy: "mutual_tls",
            peer_principal: Some("spiffe://cluster.local/ns/a/sa/b".into()),
            connection_termination_details: None,
        };
        let s = serde_json::to_string(&e).unwrap();
        assert!(!s.contains('\n'));
        let v: serde_json::Value = serde_json::from_str(&s).unwrap();
        assert_eq!(v["bytes_sent"], 4);
        assert_eq!(v["upstream"], "127.0.0.1:9");
    }
}
