//! remora-model: the Istio rule model, with no runtime and no network.
//!
//! - `rules`: the kinds (VirtualService, DestinationRule, ServiceEntry, Sidecar, remora's
//!   RateLimit), their decoder and the `Snapshot` one rule set becomes, with Istio's visibility
//!   (exportTo, Sidecar scope) applied.
//! - `typed`: the one typed decoder every kind's `spec` goes through (field-path errors, unknown
//!   fields as warnings).
//! - `route`: pure routing decisions (snapshot + request → decision).
//! - `policy`: the traffic-policy configuration (load balancing, connection pool, outlier
//!   detection, retries, faults, CORS, mirrors, rate limits, TLS settings) and its pure
//!   decisions; the data plane keeps the live state (balancers, pools, limiters).
//! - `security`: Istio's `security.istio.io` kinds (PeerAuthentication, AuthorizationPolicy,
//!   RequestAuthentication), typed and validated, with their pure decisions (the effective mTLS
//!   mode of a port, the authorization verdict of a request), which the proxy enforces (the
//!   JWT checks of RequestAuthentication are the proxy's own).
//! - `ca_api`: the wire messages of Istio's certificate service (the CA and the sidecar's client).
//! - `crd`: the CustomResourceDefinitions of the kinds, their schemas generated from the typed
//!   structs `typed` decodes them with.
//! - `lint`: the one rule linter that `remora-proxy validate`, the validating webhook and
//!   `remora analyze` call.
//!
//! The only reads of the outside world are behind two seams the caller chooses:
//! `rules::load::read_inputs` (a rules directory, with `std::fs`) and
//! `rules::endpoints::Resolver` (DNS for `resolution: DNS`; `system_resolver` is the default).
#![forbid(unsafe_code)]

pub mod ca_api;
pub mod cipher_suites;
pub mod cluster_sni;
pub mod compile;
pub mod crd;
pub mod discovery_api;
pub mod dump;
pub mod duration;
pub mod gateway;
pub mod host;
pub mod kinds;
pub mod lint;
pub mod policy;
pub mod route;
pub mod rules;
pub mod security;
pub mod serde_util;
pub mod telemetry;
pub mod typed;
pub mod workload;
