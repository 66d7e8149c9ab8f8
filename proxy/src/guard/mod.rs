//! Abuse limits on the downstream side of the capture listeners, and the start-up privilege
//! drop.
//!
//! * [`gate`]: a cap on open downstream connections per capture listener.
//! * [`head`]: HTTP/1 request heads read under size, count and time limits (slowloris), and
//!   the idle timeout between kept-alive requests.
//! * [`limits`]: the flags that set the limits, validated.
//! * [`reject`]: why a connection or request is turned away; every rejection is counted and
//!   logged.
//! * [`privileges`]: refuse uid 0 in a pod, give up every capability.
//! * [`stream_idle`]: the per-request (h2: per-stream) idle timeout and the downstream write
//!   timeout.
//!
//! HTTP/2 (h2c): the concurrent-stream cap, the header-list size and the idle timeout are h2
//! settings handed to Pingora. Opaque TCP is subject to the connection cap and the idle timeout
//! only (`tcp::copy`).

pub mod gate;
pub mod head;
pub mod limits;
pub mod privileges;
pub mod reject;
pub mod stream_idle;

pub use gate::{ConnectionGate, ConnectionSlot};
pub use head::{read_head, Head, HeadRead, HeadScanner};
pub use limits::{DownstreamLimits, LimitArgs};
pub use privileges::drop_privileges;
pub use reject::{record, Reject};

use std::sync::Arc;
use tracing::info;

/// Limits plus the connection gates (one per capture listener), shared by the listeners of a
/// proxy.
#[derive(Debug)]
pub struct Guard {
    pub limits: DownstreamLimits,
    pub inbound_gate: Arc<ConnectionGate>,
    pub outbound_gate: Arc<ConnectionGate>,
}

impl Guard {
    /// The limits and a gate per capture listener, counting open connections in `metrics`.
    pub fn new(limits: DownstreamLimits, metrics: &crate::telemetry::Metrics) -> Guard {
        let connections = &metrics.downstream_connections;
        let inbound_gate = ConnectionGate::new(limits.max_inbound_connections, connections.clone());
        let outbound_gate =
            ConnectionGate::new(limits.max_outbound_connections, connections.clone());
        Guard {
            limits,
            inbound_gate,
            outbound_gate,
        }
    }

    /// The connection gate of a capture listener (`"inbound"` or `"outbound"`).
    pub fn gate(&self, listener: &str) -> &Arc<ConnectionGate> {
        if listener == "inbound" {
            &self.inbound_gate
        } else {
            &self.outbound_gate
        }
    }

    /// Log the limits in force.
    pub fn log(&self) {
        let l = &self.limits;
        info!(
            max_request_headers_bytes = l.max_head_bytes,
            max_request_headers = l.max_headers,
            max_request_line_bytes = l.max_request_line,
            request_headers_timeout_s = l.header_timeout.as_secs(),
            idle_timeout_s = l.idle_timeout.as_secs(),
            max_inbound_connections = l.max_inbound_connections,
            max_outbound_connections = l.max_outbound_connections,
            h2_max_concurrent_streams = l.h2_max_concurrent_streams,
            stream_idle_timeout_s = l.stream_idle_timeout.as_secs(),
            downstream_write_timeout_s = l.downstream_write_timeout.as_secs(),
            inbound_upstream_read_timeout_s = l.inbound_upstream_read_timeout.as_secs(),
            "downstream limits"
        );
    }
}
