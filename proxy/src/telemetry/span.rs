//! A finished span as the proxy reports it, and its two wire forms: a Zipkin v2 JSON list
//! (`POST /api/v2/spans`) and an OTLP `ExportTraceServiceRequest` (`POST /v1/traces`). Pure:
//! the exporter (`trace_export`) sends what these return.

use super::otlp;
use super::trace_context::{to_hex, TraceContext};
use prost::Message;

/// The span's side of the hop: Envoy's outbound listener makes a client span, the inbound one
/// and the gateway a server span.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Client,
    Server,
}

/// A finished span.
#[derive(Clone, Debug, PartialEq)]
pub struct Span {
    pub ctx: TraceContext,
    pub kind: Kind,
    /// Istio's operation name: `<service>:<port>/*`.
    pub name: String,
    pub start_unix_nanos: u64,
    pub duration_nanos: u64,
    /// Envoy's and Istio's tags, in order.
    pub tags: Vec<(&'static str, String)>,
    /// The Telemetry rules' `customTags`, after `tags`.
    pub custom_tags: Vec<(String, String)>,
    /// A 5xx answer (or none): Zipkin's `error` tag, OTLP's status `ERROR`.
    pub error: bool,
    /// The incoming `tracestate`, kept for OTLP.
    pub tracestate: Option<String>,
}

/// Who reports the spans: Zipkin's `localEndpoint`, OTLP's resource.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reporter {
    /// `<canonical service>.<namespace>`, as Istio names a proxy's spans' service.
    pub service_name: String,
    pub ip: Option<std::net::IpAddr>,
}

/// Zipkin v2 JSON: an array of spans (timestamps and durations in microseconds).
pub fn zipkin_json(reporter: &Reporter, spans: &[Span]) -> Vec<u8> {
    let list: Vec<serde_json::Value> = spans
        .iter()
        .map(|s| {
            let mut tags = serde_json::Map::new();
            for (k, v) in &s.tags {
                tags.insert((*k).to_string(), serde_json::Value::String(v.clone()));
            }
            for (k, v) in &s.custom_tags {
                tags.insert(k.clone(), serde_json::Value::String(v.clone()));
            }
            if s.error {
                tags.insert("error".into(), serde_json::Value::String("true".into()));
            }
            let mut local = serde_json::json!({ "serviceName": reporter.service_name });
            match reporter.ip {
                Some(std::net::IpAddr::V4(ip)) => local["ipv4"] = ip.to_string().into(),
                Some(std::net::IpAddr::V6(ip)) => local["ipv6"] = ip.to_string().into(),
                None => {}
            }
            let mut v = serde_json::json!({
                "traceId": to_hex(&s.ctx.trace_id),
                "id": to_hex(&s.ctx.span_id),
                "name": s.name,
                "kind": match s.kind { Kind::Client => "CLIENT", Kind::Server => "SERVER" },
                "timestamp": s.start_unix_nanos / 1000,
                "duration": (s.duration_nanos / 1000).max(1),
                "localEndpoint": local,
                "tags": tags,
            });
            if let Some(p) = s.ctx.parent {
                v["parentId"] = to_hex(&p).into();
            }
            v
        })
        .collect();
    serde_json::to_vec(&list).unwrap_or_else(|_| b"[]".to_vec())
}

/// OTLP/HTTP protobuf: one resource (`service.name`, the proxy's), one scope, the spans.
pub fn otlp_request(reporter: &Reporter, spans: &[Span]) -> otlp::ExportTraceServiceRequest {
    let mut attributes = vec![otlp::KeyValue::string(
        "service.name",
        &reporter.service_name,
    )];
    if let Some(ip) = reporter.ip {
        attributes.push(otlp::KeyValue::string("host.ip", &ip.to_string()));
    }
    let spans = spans
        .iter()
        .map(|s| otlp::Span {
            trace_id: s.ctx.trace_id.to_vec(),
            span_id: s.ctx.span_id.to_vec(),
            trace_state: s.tracestate.clone().unwrap_or_default(),
            parent_span_id: s.ctx.parent.map(|p| p.to_vec()).unwrap_or_default(),
            name: s.name.clone(),
            kind: match s.kind {
                Kind::Client => otlp::span_kind::CLIENT,
                Kind::Server => otlp::span_kind::SERVER,
            },
            start_time_unix_nano: s.start_unix_nanos,
            end_time_unix_nano: s.start_unix_nanos + s.duration_nanos,
            attributes: s
                .tags
                .iter()
                .map(|(k, v)| otlp::KeyValue::string(k, v))
                .chain(
                    s.custom_tags
                        .iter()
                        .map(|(k, v)| otlp::KeyValue::string(k, v)),
                )
                .collect(),
            status: Some(otlp::Status {
                message: String::new(),
                code: if s.error {
                    otlp::status_code::ERROR
                } else {
                    otlp::status_code::UNSET
                },
            }),
        })
        .collect();
    otlp::ExportTraceServiceRequest {
        resource_spans: vec![otlp::ResourceSpans {
            resource: Some(otlp::Resource {
                attributes,
                dropped_attributes_count: 0,
            }),
            scope_spans: vec![otlp::ScopeSpans {
                scope: Some(otlp::InstrumentationScope {
                    name: "remora-proxy".into(),
                    version: env!("CARGO_PKG_VERSION").into(),
                }),
                spans,
                schema_url: String::new(),
            }],
            schema_url: String::new(),
        }],
    }
}

/// [`otlp_request`] encoded.
pub fn otlp_protobuf(reporter: &Reporter, spans: &[Span]) -> Vec<u8> {
    otlp_request(reporter, spans).encode_to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(parent: Option<[u8; 8]>, error: bool) -> Span {
        Span {
            ctx: TraceContext {
                trace_id: [1; 16],
                span_id: [2; 8],
                parent,
                sampled: true,
                short: false,
            },
            kind: Kind::Client,
            name: "reviews.bookinfo.svc.cluster.local:9080/*".into(),
            start_unix_nanos: 1_700_000_000_123_456_789,
            duration_nanos: 4_500_000,
            tags: vec![("http.method", "GET".into()), ("component", "proxy".into())],
            custom_tags: vec![("team".into(), "reviews".into())],
            error,
            tracestate: Some("vendor=x".into()),
        }
    }

    fn reporter() -> Reporter {
        Reporter {
            service_name: "productpage.bookinfo".into(),
            ip: Some("10.0.0.5".parse().unwrap()),
        }
    }

    #[test]
    fn zipkin_v2_fields() {
        let out = zipkin_json(&reporter(), &[span(Some([3; 8]), true), span(None, false)]);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        let a = &v[0];
        assert_eq!(a["traceId"], "01".repeat(16));
        assert_eq!(a["id"], "02".repeat(8));
        assert_eq!(a["parentId"], "03".repeat(8));
        assert_eq!(a["kind"], "CLIENT");
        assert_eq!(a["name"], "reviews.bookinfo.svc.cluster.local:9080/*");
        assert_eq!(a["timestamp"], 1_700_000_000_123_456u64);
        assert_eq!(a["duration"], 4500);
        assert_eq!(a["localEndpoint"]["serviceName"], "productpage.bookinfo");
        assert_eq!(a["localEndpoint"]["ipv4"], "10.0.0.5");
        assert_eq!(a["tags"]["http.method"], "GET");
        assert_eq!(a["tags"]["error"], "true");
        assert_eq!(a["tags"]["team"], "reviews");
        assert!(v[1].get("parentId").is_none());
        assert!(v[1]["tags"].get("error").is_none());
    }

    #[test]
    fn otlp_round_trip() {
        let bytes = otlp_protobuf(&reporter(), &[span(Some([3; 8]), true)]);
        let req = otlp::ExportTraceServiceRequest::decode(bytes.as_slice()).unwrap();
        let rs = &req.resource_spans[0];
        let res = rs.resource.as_ref().unwrap();
        assert_eq!(res.attributes[0].key, "service.name");
        let s = &rs.scope_spans[0].spans[0];
        assert_eq!(s.trace_id, vec![1; 16]);
        assert_eq!(s.span_id, vec![2; 8]);
        assert_eq!(s.parent_span_id, vec![3; 8]);
        assert_eq!(s.kind, otlp::span_kind::CLIENT);
        assert_eq!(s.end_time_unix_nano - s.start_time_unix_nano, 4_500_000);
        assert_eq!(s.trace_state, "vendor=x");
        assert_eq!(s.status.as_ref().unwrap().code, otlp::status_code::ERROR);
        assert_eq!(
            s.attributes[1],
            otlp::KeyValue::string("component", "proxy")
        );
    }
}
