//! A trace collector for the process and lab tests (`proxy/tests` include this file): Zipkin v2 JSON (`POST /api/v2/spans`),
//! OTLP/HTTP protobuf (`POST /v1/traces`) and OTLP/gRPC (HTTP/2 without TLS,
//! `opentelemetry.proto.collector.trace.v1.TraceService/Export`, gRPC's length-prefixed message
//! answered with `grpc-status` in trailers), decoded with the proxy's own OTLP structs, on one
//! loopback port, keeping every span it received in one normalized form. `hang` makes it
//! accept connections and never answer (a stuck collector).

use prost::Message;
use remora_proxy::telemetry::otlp;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A received span, from either wire format.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GotSpan {
    /// `zipkin` or `otlp`.
    pub format: &'static str,
    pub trace_id: String,
    pub id: String,
    pub parent: Option<String>,
    /// `CLIENT` or `SERVER`.
    pub kind: String,
    pub name: String,
    /// Zipkin's `localEndpoint.serviceName`, OTLP's `service.name`.
    pub service: String,
    pub tags: BTreeMap<String, String>,
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

pub struct Collector {
    pub addr: SocketAddr,
    pub spans: Arc<Mutex<Vec<GotSpan>>>,
    /// Bodies that did not decode.
    pub bad: Arc<Mutex<Vec<String>>>,
}

fn from_zipkin(body: &[u8]) -> Result<Vec<GotSpan>, String> {
    let v: Vec<serde_json::Value> = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    v.iter()
        .map(|s| {
            let str_of = |k: &str| s[k].as_str().map(str::to_string);
            Ok(GotSpan {
                format: "zipkin",
                trace_id: str_of("traceId").ok_or("traceId")?,
                id: str_of("id").ok_or("id")?,
                parent: str_of("parentId"),
                kind: str_of("kind").ok_or("kind")?,
                name: str_of("name").ok_or("name")?,
                service: s["localEndpoint"]["serviceName"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                tags: s["tags"]
                    .as_object()
                    .map(|m| {
                        m.iter()
                            .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                            .collect()
                    })
                    .unwrap_or_default(),
            })
        })
        .collect()
}

/// OTLP/gRPC's method path.
const GRPC_EXPORT: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

/// One gRPC message (uncompressed: flag 0, then its length, big-endian) → its spans.
fn from_otlp_grpc(body: &[u8]) -> Result<Vec<GotSpan>, String> {
    let (head, msg) = body
        .split_at_checked(5)
        .ok_or("gRPC body shorter than its prefix")?;
    let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
    if head[0] != 0 || len != msg.len() {
        return Err(format!(
            "gRPC prefix: compressed {}, length {len}, {} bytes follow",
            head[0],
            msg.len()
        ));
    }
    let mut spans = from_otlp(msg)?;
    for s in &mut spans {
        s.format = "otlp-grpc";
    }
    Ok(spans)
}

fn from_otlp(body: &[u8]) -> Result<Vec<GotSpan>, String> {
    let req = otlp::ExportTraceServiceRequest::decode(body).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    for rs in &req.resource_spans {
        let service = rs
            .resource
            .as_ref()
            .and_then(|r| r.attributes.iter().find(|a| a.key == "service.name"))
            .and_then(|a| a.value.as_ref()?.string_value.clone())
            .unwrap_or_default();
        for ss in &rs.scope_spans {
            for s in &ss.spans {
                out.push(GotSpan {
                    format: "otlp",
                    trace_id: hex(&s.trace_id),
                    id: hex(&s.span_id),
                    parent: (!s.parent_span_id.is_empty()).then(|| hex(&s.parent_span_id)),
                    kind: match s.kind {
                        otlp::span_kind::CLIENT => "CLIENT".into(),
                        otlp::span_kind::SERVER => "SERVER".into(),
                        k => format!("kind {k}"),
                    },
                    name: s.name.clone(),
                    service: service.clone(),
                    tags: s
                        .attributes
                        .iter()
                        .map(|a| {
                            (
                                a.key.clone(),
                                a.value
                                    .as_ref()
                                    .and_then(|v| v.string_value.clone())
                                    .unwrap_or_default(),
                            )
                        })
                        .collect(),
                });
            }
        }
    }
    Ok(out)
}

impl Collector {
    /// Start on loopback, on the current tokio runtime.
    pub async fn start(hang: bool) -> Collector {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind collector");
        Collector::start_on(listener, hang)
    }

    /// Start on `listener` (bound anywhere, e.g. in a lab namespace), on the current tokio
    /// runtime.
    pub fn start_on(listener: std::net::TcpListener, hang: bool) -> Collector {
        use http_body_util::{BodyExt, Full};
        use hyper::service::service_fn;
        use hyper_util::rt::TokioIo;
        listener
            .set_nonblocking(true)
            .expect("non-blocking collector");
        let listener = tokio::net::TcpListener::from_std(listener).expect("collector listener");
        let addr = listener.local_addr().unwrap();
        let spans = Arc::new(Mutex::new(Vec::new()));
        let bad = Arc::new(Mutex::new(Vec::new()));
        let (got, bad2) = (spans.clone(), bad.clone());
        tokio::spawn(async move {
            loop {
                let Ok((sock, _)) = listener.accept().await else {
                    return;
                };
                if hang {
                    // Hold the connection, never answer.
                    tokio::spawn(async move {
                        tokio::time::sleep(Duration::from_secs(60)).await;
                        drop(sock);
                    });
                    continue;
                }
                let (got, bad) = (got.clone(), bad2.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                        let (got, bad) = (got.clone(), bad.clone());
                        async move {
                            let path = req.uri().path().to_string();
                            let ctype = req
                                .headers()
                                .get("content-type")
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or_default()
                                .to_string();
                            let body = req
                                .into_body()
                                .collect()
                                .await
                                .map(|b| b.to_bytes())
                                .unwrap_or_default();
                            let grpc = ctype.starts_with("application/grpc");
                            let parsed = match (path.as_str(), ctype.as_str()) {
                                ("/api/v2/spans", "application/json") => from_zipkin(&body),
                                ("/v1/traces", "application/x-protobuf") => from_otlp(&body),
                                (GRPC_EXPORT, "application/grpc" | "application/grpc+proto") => {
                                    from_otlp_grpc(&body)
                                }
                                _ => Err(format!("unexpected {path} {ctype}")),
                            };
                            let ok = match parsed {
                                Ok(s) => {
                                    got.lock().unwrap().extend(s);
                                    true
                                }
                                Err(e) => {
                                    bad.lock().unwrap().push(e);
                                    false
                                }
                            };
                            let resp = if grpc {
                                // An empty ExportTraceServiceResponse; the status in trailers
                                // (3: INVALID_ARGUMENT for a body that did not decode).
                                let mut trailers = hyper::HeaderMap::new();
                                let status = if ok { "0" } else { "3" };
                                trailers.insert(
                                    "grpc-status",
                                    hyper::header::HeaderValue::from_static(status),
                                );
                                hyper::Response::builder()
                                    .status(200)
                                    .header("content-type", "application/grpc")
                                    .body(
                                        Full::new(bytes::Bytes::from_static(&[0, 0, 0, 0, 0]))
                                            .with_trailers(async move { Some(Ok(trailers)) })
                                            .boxed(),
                                    )
                                    .unwrap()
                            } else {
                                hyper::Response::builder()
                                    .status(if ok { 202 } else { 400 })
                                    .body(Full::new(bytes::Bytes::new()).boxed())
                                    .unwrap()
                            };
                            Ok::<_, std::convert::Infallible>(resp)
                        }
                    });
                    // HTTP/1.1 (Zipkin, OTLP/HTTP) or HTTP/2 without TLS (OTLP/gRPC).
                    let _ = hyper_util::server::conn::auto::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    )
                    .serve_connection(TokioIo::new(sock), svc)
                    .await;
                });
            }
        });
        Collector { addr, spans, bad }
    }

    pub fn spans(&self) -> Vec<GotSpan> {
        self.spans.lock().unwrap().clone()
    }

    /// Wait (bounded, 20 s) until `pred` holds for the spans received, and return them.
    pub fn wait_for(&self, what: &str, pred: impl Fn(&[GotSpan]) -> bool) -> Vec<GotSpan> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let s = self.spans();
            if pred(&s) {
                return s;
            }
            if Instant::now() > deadline {
                panic!(
                    "collector: {what} not seen; spans: {s:#?}; bad bodies: {:?}",
                    self.bad.lock().unwrap()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}
