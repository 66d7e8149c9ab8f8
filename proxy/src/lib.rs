//! remora-proxy: the sidecar. Capture listeners, config model and loader, routing, telemetry.

// No unsafe code, but for two calls into the C library that have no safe wrapper (malloc_trim
// and mallinfo2, in `heap`), allowed there alone.
#![deny(unsafe_code)]

// The rule model, routing decisions and the linter live in `remora-model`; `rules` adds the
// hot-reload watcher.
pub use remora_model::{lint, route};
pub mod rules;

// Data plane: listeners, protocol detection, upstream, admin, telemetry.
pub mod admin;
pub mod app_probe;
pub mod cli;
pub mod detect;
// Kubernetes endpoint discovery and the rules ConfigMap through the API.
pub mod discovery;
pub mod gateway;
pub mod gateway_listen;
// Abuse limits and the start-up privilege check.
pub mod guard;
pub mod heap;
// The HTTP side: Pingora's `ProxyHttp` and the steps of a request.
pub mod http;
pub mod identity;
// RequestAuthentication: JWT decisions and the JWKS cache.
pub mod jwt;
pub mod listen;
pub mod mtls;
// Traffic policies.
pub mod policy;
// What the listeners, the HTTP proxies and the admin server share.
pub mod state;
// Opaque TCP: decision, connection and byte copy.
pub mod tcp;
pub mod telemetry;
pub mod upstream;
