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

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub addr: SocketAddr,
    pub labels: BTreeMap<String, String>,
    pub weight: u32,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HeaderOps {
    pub set: Vec<(String, String)>,
    pub add: Vec<(String, String)>,
    pub remove: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Policy {
    pub timeout: Option<Duration>,
}

pub fn route(_snap: &Snapshot, _req: &RequestInfo<'_>, _rng: &mut impl rand::Rng) -> Decision {
    Decision::Passthrough
}
