//! Traffic-policy configuration, decoded from the rules, and the pure decisions on it: the
//! DestinationRule and what its `trafficPolicy` means for one destination (`traffic`),
//! load-balancer choice and hashing (`lb`), connection-pool limits (`limits`), outlier detection
//! settings (`outlier`), retries (`retry`), faults (`fault`), CORS (`cors`), mirrors (`mirror`)
//! and remora's `RateLimit` kind (`ratelimit`). A `trafficPolicy` is decoded with its rule and
//! a `corsPolicy` with its VirtualService: `lb`, `limits`, `outlier`, `traffic` and `cors` hold
//! Istio's shape of each setting next to the configuration it becomes. The proxy's `policy`
//! module holds the live state.

pub mod cors;
pub mod decode;
pub mod fault;
pub mod lb;
pub mod limits;
pub mod mirror;
pub mod outlier;
pub mod ratelimit;
pub mod retry;
pub mod traffic;

pub use decode::PolicyKinds;
