//! remora-init: programs the iptables capture of the remora sidecar.
//!
//! `flags` (the command-line contract, shared with the webhook) → `plan` (pure: config → restore
//! text) → `apply` (backend detection, `iptables-restore`, save of our chains); `program` runs
//! them in order (the program's and the CNI plugin's one path); `pod` maps a pod's annotations to
//! the flags; `validate` is the unprivileged check that the capture is in place.

pub mod apply;
pub mod flags;
pub mod plan;
pub mod pod;
pub mod program;
pub mod validate;
