//! remora CNI mode: a chained CNI plugin (`remora-cni`) that programs a marked pod's capture in
//! its network namespace when the container runtime sets the pod's network up, so application
//! pods need no privileged init container.
//!
//! `spec` (the CNI protocol: environment, results, errors) and `config` (the plugin's network
//! configuration) validate the runtime's input; `podinfo` reads what the plugin needs of a pod
//! (through the `PodSource` seam); `decide` (pure) says pass through or capture with which
//! `remora-init` arguments — computed by `remora_init::pod`, the mapping the injector uses;
//! `plugin` is the I/O shell: enter the pod's network namespace and run `remora_init::program`,
//! the same code as the `remora-init` program. The node agent (`remora-cni-node`): `conflist`
//! (pure: the network configuration edited) and `node` (install, keep chained, remove).

pub mod config;
pub mod conflist;
pub mod decide;
pub mod node;
pub mod plugin;
pub mod podinfo;
pub mod spec;
