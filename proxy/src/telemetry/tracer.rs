//! The tracer: what the request path asks (is tracing on, at what percentage, the proxy's own
//! span tags) and the exporter it hands finished spans to.
//!
//! Spans go through a bounded queue to one exporter thread (its own single-threaded tokio
//! runtime, apart from Pingora's worker runtimes), which sends them in batches — at most
//! [`BATCH_MAX`] spans, at least every [`BATCH_INTERVAL`] while spans come — to the collector:
//! Zipkin v2 JSON (`POST /api/v2/spans`), OTLP/HTTP protobuf (`POST /v1/traces`) or OTLP/gRPC
//! (`opentelemetry.proto.collector.trace.v1.TraceService/Export`, one HTTP/2 connection kept and
//! made again when lost, through tonic). The request
//! path never waits: a full queue drops the span and counts it in
//! `remora_tracing_spans_dropped_total`. A batch the collector does not take is counted in
//! `remora_tracing_export_failures_total` and logged at most once per [`LOG_EVERY`].

use super::span::{otlp_protobuf, otlp_request, zipkin_json, Reporter, Span};
use super::Metrics;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Most spans in one export.
pub const BATCH_MAX: usize = 512;
/// How long a span may wait for its batch.
pub const BATCH_INTERVAL: Duration = Duration::from_millis(500);
/// Export failures are logged at most this often.
pub const LOG_EVERY: Duration = Duration::from_secs(60);
/// The default queue (spans waiting for the exporter).
pub const DEFAULT_QUEUE_SPANS: usize = 4096;
/// One export's connect-and-answer time limit.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);

/// The collector's wire format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// Zipkin v2 JSON over HTTP (Istio's `zipkin` provider).
    Zipkin,
    /// OTLP over HTTP, protobuf (Istio's `opentelemetry` provider with `http`).
    Otlp,
    /// OTLP over gRPC (Istio's `opentelemetry` provider without `http`, its default).
    OtlpGrpc,
}

/// OTLP/gRPC's export method.
pub const OTLP_GRPC_EXPORT: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

impl Protocol {
    pub fn parse(v: &str) -> Result<Protocol, String> {
        match v {
            "zipkin" => Ok(Protocol::Zipkin),
            "opentelemetry" | "otlp" => Ok(Protocol::Otlp),
            "opentelemetry-grpc" => Ok(Protocol::OtlpGrpc),
            _ => Err(format!(
                "{v:?} is not a tracing provider (zipkin, opentelemetry, opentelemetry-grpc)"
            )),
        }
    }
    /// The collector's path for this protocol (gRPC's is its method, always).
    pub fn default_path(self) -> &'static str {
        match self {
            Protocol::Zipkin => "/api/v2/spans",
            Protocol::Otlp => "/v1/traces",
            Protocol::OtlpGrpc => OTLP_GRPC_EXPORT,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Zipkin => "zipkin",
            Protocol::Otlp => "opentelemetry",
            Protocol::OtlpGrpc => "opentelemetry-grpc",
        }
    }
}

/// Where and how spans go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExportConfig {
    pub protocol: Protocol,
    /// The collector's `host:port` (a name is resolved at each export).
    pub address: String,
    pub path: String,
    pub queue_spans: usize,
}

/// The proxy's own tags on every span (Istio's).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OwnTags {
    pub canonical_service: String,
    pub canonical_revision: String,
    pub namespace: String,
    pub mesh_id: String,
    pub node_id: String,
}

/// Tracing's state: sampling, own tags and the exporter's queue.
pub struct Tracer {
    /// The sampling percentage (0–100) as `f64` bits; the rules may change it on reload.
    sampling: AtomicU64,
    /// The percentage start-up configured (what a reload without a Telemetry rule goes back to).
    pub default_sampling: f64,
    pub own: OwnTags,
    pub config: ExportConfig,
    tx: SyncSender<Span>,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Tracer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tracer")
            .field("sampling", &self.sampling())
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Tracer {
    /// Start the exporter thread (an error when the thread cannot be made).
    pub fn start(
        config: ExportConfig,
        sampling: f64,
        own: OwnTags,
        reporter: Reporter,
        metrics: Arc<Metrics>,
    ) -> std::io::Result<Arc<Tracer>> {
        let (tx, rx) = sync_channel::<Span>(config.queue_spans.max(1));
        let fams = metrics.clone();
        fams.tracing();
        let cfg = config.clone();
        std::thread::Builder::new()
            .name("remora-trace-export".into())
            .spawn(move || export_loop(rx, cfg, reporter, fams))?;
        Ok(Arc::new(Tracer {
            sampling: AtomicU64::new(sampling.to_bits()),
            default_sampling: sampling,
            own,
            config,
            tx,
            metrics,
        }))
    }

    /// The sampling percentage now.
    pub fn sampling(&self) -> f64 {
        f64::from_bits(self.sampling.load(Ordering::Relaxed))
    }

    /// Set the sampling percentage (clamped to 0–100).
    pub fn set_sampling(&self, percent: f64) {
        let p = if percent.is_finite() {
            percent.clamp(0.0, 100.0)
        } else {
            self.default_sampling
        };
        self.sampling.store(p.to_bits(), Ordering::Relaxed);
    }

    /// Hand a finished span to the exporter; never blocks (a full queue drops and counts it).
    pub fn report(&self, span: Span) {
        match self.tx.try_send(span) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.metrics.tracing().dropped.inc()
            }
        }
    }
}

/// Gather batches and send them, until the tracer is gone.
fn export_loop(
    rx: Receiver<Span>,
    config: ExportConfig,
    reporter: Reporter,
    metrics: Arc<Metrics>,
) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "tracing: no exporter runtime; spans are dropped");
            return;
        }
    };
    let mut failures = FailureLog::default();
    // gRPC: one channel for the exporter's life (tonic connects when first used and again after
    // a lost connection; the name is resolved at each connect).
    let grpc = match config.protocol {
        Protocol::OtlpGrpc => {
            let _in_rt = rt.enter();
            match grpc_channel(&config.address) {
                Ok(c) => Some(c),
                Err(e) => {
                    tracing::error!(collector = %config.address, error = %e, "tracing: no gRPC channel; spans are dropped");
                    return;
                }
            }
        }
        _ => None,
    };
    let mut batch: Vec<Span> = Vec::with_capacity(BATCH_MAX);
    loop {
        match rx.recv() {
            Ok(s) => batch.push(s),
            Err(_) => return,
        }
        let deadline = Instant::now() + BATCH_INTERVAL;
        while batch.len() < BATCH_MAX {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(s) => batch.push(s),
                Err(RecvTimeoutError::Timeout) => break,
                Err(RecvTimeoutError::Disconnected) => break,
            }
        }
        let n = batch.len() as u64;
        let export = async {
            match (&config.protocol, &grpc) {
                (Protocol::OtlpGrpc, Some(channel)) => {
                    let msg = otlp_request(&reporter, &batch);
                    export_grpc(channel.clone(), msg).await
                }
                (Protocol::Zipkin, _) => post(&config, zipkin_json(&reporter, &batch)).await,
                _ => post(&config, otlp_protobuf(&reporter, &batch)).await,
            }
        };
        let sent = rt.block_on(async {
            tokio::time::timeout(EXPORT_TIMEOUT, export)
                .await
                .unwrap_or_else(|_| Err("timed out".to_string()))
        });
        batch.clear();
        match sent {
            Ok(()) => metrics.tracing().exported.inc_by(n),
            Err(e) => {
                metrics.tracing().export_failures.inc();
                failures.note(&config, &e, Instant::now());
            }
        }
    }
}

/// Export failures logged once per [`LOG_EVERY`], with how many there were since.
#[derive(Default)]
struct FailureLog {
    last: Option<Instant>,
    since: u64,
}

impl FailureLog {
    fn note(&mut self, config: &ExportConfig, error: &str, now: Instant) {
        self.since += 1;
        if self.last.is_some_and(|t| now.duration_since(t) < LOG_EVERY) {
            return;
        }
        tracing::warn!(
            collector = %config.address,
            provider = config.protocol.as_str(),
            error,
            failed_batches = self.since,
            "tracing: spans not exported (logged once per minute)"
        );
        self.last = Some(now);
        self.since = 0;
    }
}

/// The collector's gRPC channel (not connected yet; needs the runtime entered).
fn grpc_channel(address: &str) -> Result<tonic::transport::Channel, String> {
    let ep = tonic::transport::Endpoint::from_shared(format!("http://{address}"))
        .map_err(|e| format!("{address:?} is not a gRPC address: {e}"))?
        .connect_timeout(EXPORT_TIMEOUT)
        .timeout(EXPORT_TIMEOUT)
        .tcp_nodelay(true);
    Ok(ep.connect_lazy())
}

/// One `TraceService/Export` call; `Ok` on an OK status (spans the collector says it rejected,
/// `partial_success`, are not retried, as OpenTelemetry's exporters do).
async fn export_grpc(
    channel: tonic::transport::Channel,
    msg: super::otlp::ExportTraceServiceRequest,
) -> Result<(), String> {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.map_err(|e| format!("connect: {e}"))?;
    let codec = tonic_prost::ProstCodec::<
        super::otlp::ExportTraceServiceRequest,
        super::otlp::ExportTraceServiceResponse,
    >::default();
    grpc.unary(
        tonic::Request::new(msg),
        http::uri::PathAndQuery::from_static(OTLP_GRPC_EXPORT),
        codec,
    )
    .await
    .map(|_| ())
    .map_err(|s| format!("collector answered {:?}: {}", s.code(), s.message()))
}

/// One `POST` of `body` to the collector; `Ok` on a 2xx answer.
async fn post(config: &ExportConfig, body: Vec<u8>) -> Result<(), String> {
    use http_body_util::Full;
    let stream = tokio::net::TcpStream::connect(config.address.as_str())
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let _ = stream.set_nodelay(true);
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| format!("handshake: {e}"))?;
    tokio::spawn(conn);
    let content_type = match config.protocol {
        Protocol::Zipkin => "application/json",
        Protocol::Otlp | Protocol::OtlpGrpc => "application/x-protobuf",
    };
    let req = hyper::Request::post(config.path.as_str())
        .header(hyper::header::HOST, config.address.as_str())
        .header(hyper::header::CONTENT_TYPE, content_type)
        .body(Full::new(bytes::Bytes::from(body)))
        .map_err(|e| format!("request: {e}"))?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| format!("send: {e}"))?;
    if resp.status().is_success() {
        Ok(())
    } else {
        Err(format!("collector answered {}", resp.status()))
    }
}

/// Validate a collector address: `host:port` with a port from 1 to 65535.
pub fn parse_address(v: &str) -> Result<String, String> {
    let v = v.trim();
    let (host, port) = v
        .rsplit_once(':')
        .ok_or_else(|| format!("{v:?} is not host:port"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() || port.parse::<u16>().map_or(true, |p| p == 0) {
        return Err(format!("{v:?} is not host:port"));
    }
    Ok(v.to_string())
}

/// A collector path for `protocol`: gRPC's is its method (no other), the others' any
/// [`valid_path`].
pub fn check_path(protocol: Protocol, path: &str) -> Result<(), String> {
    match protocol {
        Protocol::OtlpGrpc if path != OTLP_GRPC_EXPORT => Err(format!(
            "OTLP over gRPC has no path to choose (its method is {OTLP_GRPC_EXPORT})"
        )),
        _ if !valid_path(path) => Err("not a path starting with /".to_string()),
        _ => Ok(()),
    }
}

/// A collector path: starts with `/`, no spaces or control bytes.
pub fn valid_path(p: &str) -> bool {
    p.starts_with('/')
        && !p
            .bytes()
            .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
}

/// One named tracing provider of `--tracing-providers` (the injector writes the mesh's
/// `extensionProviders` so).
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NamedProvider {
    pub name: String,
    /// `zipkin` or `opentelemetry`.
    pub provider: String,
    pub address: String,
    #[serde(default)]
    pub path: Option<String>,
}

impl NamedProvider {
    /// Its exporter's settings (after [`parse_providers`]).
    pub fn export_config(&self, queue_spans: usize) -> Result<ExportConfig, String> {
        let protocol = Protocol::parse(&self.provider)?;
        Ok(ExportConfig {
            protocol,
            address: self.address.clone(),
            path: self
                .path
                .clone()
                .unwrap_or_else(|| protocol.default_path().to_string()),
            queue_spans,
        })
    }
}

/// `--tracing-providers`: a JSON list of named providers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NamedProviders(pub Vec<NamedProvider>);

/// Parse and check `--tracing-providers` (`[{"name":…,"provider":…,"address":…,"path":…}]`);
/// an error names the entry, the field, the value and why.
pub fn parse_providers(v: &str) -> Result<NamedProviders, String> {
    let list: Vec<NamedProvider> =
        serde_json::from_str(v).map_err(|e| format!("not a JSON list of providers: {e}"))?;
    if list.len() > 64 {
        return Err(format!("{} providers: at most 64", list.len()));
    }
    for (i, p) in list.iter().enumerate() {
        if p.name.is_empty() || list[..i].iter().any(|q| q.name == p.name) {
            return Err(format!(
                "[{i}].name {:?}: empty or the name of an earlier entry",
                p.name
            ));
        }
        let protocol = Protocol::parse(&p.provider).map_err(|e| format!("[{i}].provider: {e}"))?;
        parse_address(&p.address).map_err(|e| format!("[{i}].address: {e}"))?;
        if let Some(path) = p.path.as_deref() {
            check_path(protocol, path).map_err(|e| format!("[{i}].path {path:?}: {e}"))?;
        }
    }
    Ok(NamedProviders(list))
}

/// Validate a sampling percentage: a number from 0 to 100.
pub fn parse_sampling(v: &str) -> Result<f64, String> {
    let p: f64 = v
        .trim()
        .parse()
        .map_err(|_| format!("{v:?} is not a number"))?;
    if !(0.0..=100.0).contains(&p) {
        return Err(format!("{v:?} is outside 0 to 100"));
    }
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_are_checked() {
        assert_eq!(Protocol::parse("zipkin"), Ok(Protocol::Zipkin));
        assert_eq!(Protocol::parse("opentelemetry"), Ok(Protocol::Otlp));
        assert_eq!(
            Protocol::parse("opentelemetry-grpc"),
            Ok(Protocol::OtlpGrpc)
        );
        assert_eq!(Protocol::OtlpGrpc.default_path(), OTLP_GRPC_EXPORT);
        assert!(check_path(Protocol::OtlpGrpc, "/v1/traces").is_err());
        assert!(check_path(Protocol::OtlpGrpc, OTLP_GRPC_EXPORT).is_ok());
        assert!(check_path(Protocol::Otlp, "v1/traces").is_err());
        assert!(Protocol::parse("jaeger").unwrap_err().contains("jaeger"));
        assert_eq!(
            parse_address("zipkin.istio-system:9411").unwrap(),
            "zipkin.istio-system:9411"
        );
        assert!(parse_address("zipkin").is_err());
        assert!(parse_address("zipkin:0").is_err());
        assert!(parse_address(":9411").is_err());
        assert_eq!(parse_sampling("1").unwrap(), 1.0);
        assert_eq!(parse_sampling("0.5").unwrap(), 0.5);
        assert!(parse_sampling("101").is_err());
        assert!(parse_sampling("-1").is_err());
        assert!(parse_sampling("NaN").is_err());
    }

    #[test]
    fn named_providers_are_checked_naming_the_entry() {
        let ok = parse_providers(
            r#"[{"name":"zipkin","provider":"zipkin","address":"zipkin.istio-system:9411"},
                {"name":"otel","provider":"opentelemetry","address":"otel:4318","path":"/v1/traces"}]"#,
        )
        .unwrap();
        assert_eq!(ok.0.len(), 2);
        let c = ok.0[1].export_config(8).unwrap();
        assert_eq!(
            (c.protocol, c.path.as_str()),
            (Protocol::Otlp, "/v1/traces")
        );
        assert_eq!(ok.0[0].export_config(8).unwrap().path, "/api/v2/spans");
        for (bad, want) in [
            ("{}", "not a JSON list"),
            (
                r#"[{"name":"","provider":"zipkin","address":"a:1"}]"#,
                "[0].name",
            ),
            (
                r#"[{"name":"a","provider":"zipkin","address":"a:1"},{"name":"a","provider":"zipkin","address":"b:1"}]"#,
                "[1].name",
            ),
            (
                r#"[{"name":"a","provider":"opentelemetry-grpc","address":"a:1","path":"/v1/traces"}]"#,
                "[0].path \"/v1/traces\": OTLP over gRPC has no path",
            ),
            (
                r#"[{"name":"a","provider":"jaeger","address":"a:1"}]"#,
                "[0].provider",
            ),
            (
                r#"[{"name":"a","provider":"zipkin","address":"a"}]"#,
                "[0].address",
            ),
            (
                r#"[{"name":"a","provider":"zipkin","address":"a:1","path":"x"}]"#,
                "[0].path",
            ),
            (
                r#"[{"name":"a","provider":"zipkin","address":"a:1","port":1}]"#,
                "unknown field",
            ),
        ] {
            let e = parse_providers(bad).unwrap_err();
            assert!(e.contains(want), "{bad}: {e}");
        }
    }

    #[test]
    fn failures_are_logged_once_per_interval() {
        let mut f = FailureLog::default();
        let cfg = ExportConfig {
            protocol: Protocol::Zipkin,
            address: "a:1".into(),
            path: "/".into(),
            queue_spans: 1,
        };
        let t0 = Instant::now();
        f.note(&cfg, "x", t0);
        assert_eq!((f.last, f.since), (Some(t0), 0));
        f.note(&cfg, "x", t0 + Duration::from_secs(1));
        f.note(&cfg, "x", t0 + Duration::from_secs(2));
        assert_eq!((f.last, f.since), (Some(t0), 2));
        let t1 = t0 + LOG_EVERY;
        f.note(&cfg, "x", t1);
        assert_eq!((f.last, f.since), (Some(t1), 0));
    }
}
