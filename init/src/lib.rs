//! remora-init: programs the iptables capture of the remora sidecar.
//!
//! `flags` (the command-line contract, shared with the webhook) → `plan` (pure: config → restore
//! text) → `apply` (backend detection, `iptables-restore`, save of our chains).

pub mod apply;
pub mod flags;
pub mod plan;
pub mod pod;
pub mod program;
