//! remora-webhook: Istio-compatible sidecar injection.
//!
//! The pipeline is `decide` (inject or not, and why) → `template` (config + annotations →
//! containers) → `patch` (JSON patch on the raw pod) → `review` (AdmissionReview in/out).
//! Everything up to `review` is pure: plain values in, plain values out. `server` and `cli` are
//! the thin I/O shells around it and share the same code path (the `remora` CLI's offline
//! `inject`/`check-inject` call `cli` too). `validate_rules` answers the validating webhook for
//! rules ConfigMaps (`POST /validate`) with `rules_lint`, the linter `remora analyze` runs.
//! `selectors` is the one definition of the injector's webhook entries per revision (Istio's
//! layout), evaluated with `label_selector` as the API server evaluates them; `manifest` renders
//! another revision's install from the default revision's.

#![forbid(unsafe_code)]

pub mod annotations;
pub mod ca;
pub mod certs;
pub mod cli;
pub mod client;
pub mod config;
pub mod decide;
pub mod discovery;
pub mod inject;
pub mod label_selector;
pub mod manifest;
pub mod mesh;
pub mod metrics;
pub mod metrics_merge;
pub mod patch;
pub mod probes;
pub mod review;
pub mod rules_controller;
pub mod rules_lint;
pub mod selectors;
pub mod server;
pub mod template;
pub mod tls;
pub mod validate_rules;
pub mod values;
pub mod workload;
