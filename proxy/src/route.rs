//! Pure routing: a `Snapshot` and one request in, a `Decision` out. No I/O.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use crate::rules::Snapshot;

/// What the data plane knows about one HTTP request.
pub struct RequestInfo<'a> {
    pub authority: &'a str,
    pub method: &'a str,
    /// Path including `?query`.
    pub path: &'a str,
    pub headers: &'a http::HeaderMap,
    /// The original destination of the connection.
    pub dst: SocketAddr,
}

/// What to do with a request.
#[derive(Clone, Debug, PartialEq)]
pub enum Decision {
    /// Send to an upstream.
    Forward(Forward),
    /// Answer with a redirect.
    Redirect { status: u16, location: String },
    /// No VirtualService matched: the original destination as-is.
    Passthrough,
    /// The rules forbid this request (for example a Sidecar with `outboundTrafficPolicy:
    /// REGISTRY_ONLY` and an unknown host, or no route matched in a VirtualService):
    /// answer `status` (Envoy/Istio answer 502 for the BlackHole cluster, 404 for no route).
    Deny { status: u16, reason: String },
    /// A `directResponse` rule: answer `status` with `body` without any upstream.
    DirectResponse { status: u16, body: String },
}

#[derive(Clone, Debug, PartialEq)]
pub struct Forward {
    pub route_name: Option<String>,
    pub virtual_service: Option<String>,
    /// Destination host (FQDN), e.g. `reviews.default.svc.cluster.local`.
    pub host: String,
    pub subset: Option<String>,
    pub port: u16,
    /// Candidate endpoints; empty = use the original destination.
    pub endpoints: Vec<Endpoint>,
    pub authority_rewrite: Option<String>,
    /// The path (with query) after a `rewrite.uri`.
    pub uri_rewrite: Option<String>,
    pub request_headers: HeaderOps,
    pub response_headers: HeaderOps,
    pub policy: Policy,
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Endpoint {
    pub addr: SocketAddr,
    pub labels: BTreeMap<String, String>,
    pub weight: u32,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct HeaderOps {
    pub set: Vec<(String, String)>,
    pub add: Vec<(String, String)>,
    pub remove: Vec<String>,
}

/// The per-route policies as parsed from the VirtualService (applied by the policies work).
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct Policy {
    /// `timeout` (Istio: none by default).
    #[serde(with = "opt_duration")]
    pub timeout: Option<Duration>,
    pub retries: Option<RetryPolicy>,
    pub fault: Option<FaultPolicy>,
    /// `mirror` + `mirrorPercentage`, and `mirrors[]`.
    pub mirrors: Vec<Mirror>,
}

/// `retries`.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct RetryPolicy {
    pub attempts: u32,
    #[serde(with = "opt_duration")]
    pub per_try_timeout: Option<Duration>,
    /// `retryOn`, split on commas (e.g. `5xx`, `connect-failure`, `503`).
    pub retry_on: Vec<String>,
    pub retry_remote_localities: Option<bool>,
}

/// `fault`.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct FaultPolicy {
    pub delay: Option<FaultDelay>,
    pub abort: Option<FaultAbort>,
}

#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct FaultDelay {
    #[serde(with = "duration_secs")]
    pub fixed_delay: Duration,
    /// 0.0 ..= 100.0 (Istio: 100 when unset).
    pub percentage: f64,
}

#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct FaultAbort {
    pub http_status: Option<u16>,
    pub grpc_status: Option<String>,
    /// 0.0 ..= 100.0 (Istio: 100 when unset).
    pub percentage: f64,
}

/// One mirror target.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Mirror {
    /// FQDN.
    pub host: String,
    pub subset: Option<String>,
    pub port: Option<u16>,
    /// 0.0 ..= 100.0 (Istio: 100 when unset).
    pub percentage: f64,
}

mod duration_secs {
    pub fn serialize<S: serde::Serializer>(
        d: &std::time::Duration,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{}s", d.as_secs_f64()))
    }
}

mod opt_duration {
    pub fn serialize<S: serde::Serializer>(
        d: &Option<std::time::Duration>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_str(&format!("{}s", d.as_secs_f64())),
            None => s.serialize_none(),
        }
    }
}

pub fn route(_snap: &Snapshot, _req: &RequestInfo<'_>, _rng: &mut impl rand::Rng) -> Decision {
    Decision::Passthrough
}
