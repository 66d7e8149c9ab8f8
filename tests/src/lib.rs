//! remora mesh lab: pods in network namespaces on a "node" bridge, Services with a kube-proxy
//! stand-in, the real webhook, init and proxy run by a tiny kubelet, and clients for the scenario
//! tests, the demo and the benchmarks. See docs/lab.md.

pub mod admission;
pub mod apiserver;
pub mod bench;
pub mod capture;
pub mod client;
pub mod clitest;
pub mod cluster;
pub mod collector;
pub mod controller_bench;
pub mod discovery_bench;
pub mod discovery_cluster;
pub mod ingress;
pub mod kubelet;
pub mod lab;
pub mod labapi;
pub mod netns;
pub mod ports;
pub mod prometheus;
pub mod security;
pub mod soak;
pub mod table;

pub use lab::{Lab, LabOptions, Pod};
