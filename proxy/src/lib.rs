//! remora-proxy: the sidecar. Capture listeners, config model and loader, routing, telemetry.

// The rule model, routing decisions and the linter live in `remora-model`; `rules` adds the
// hot-reload watcher.
pub use remora_model::{lint, route};
pub mod rules;

// Data plane: listeners, protocol detection, upstream, admin, telemetry.
pub mod admin;
pub mod app_probe;
pub mod cli;
pub mod detect;
// Kubernetes endpoint discovery and the rules ConfigMap through the API (issue 7).
pub mod discovery;
// Abuse limits and the start-up privilege check (issue 8).
pub mod guard;
pub mod listen;
// Traffic policies (issue 5).
pub mod policy;
pub mod telemetry;
pub mod upstream;
