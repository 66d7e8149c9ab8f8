//! The cap on open downstream connections of one capture listener (inbound and outbound each
//! have their own): a connection over the cap is closed at once, before anything is read. The
//! connections open now are the gauge `remora_downstream_connections{listener}`.

use prometheus::IntGaugeVec;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// The cap on open downstream connections of one capture listener.
#[derive(Debug)]
pub struct ConnectionGate {
    open: AtomicUsize,
    max: usize,
    /// `remora_downstream_connections` of the proxy's metrics handle.
    connections: IntGaugeVec,
}

/// A held slot of the [`ConnectionGate`]; released (and the gauge lowered) on drop.
#[derive(Debug)]
pub struct ConnectionSlot {
    gate: Arc<ConnectionGate>,
    listener: &'static str,
}

impl ConnectionGate {
    /// A gate for `max` connections, counting the open ones in `connections` (by listener).
    pub fn new(max: usize, connections: IntGaugeVec) -> Arc<ConnectionGate> {
        Arc::new(ConnectionGate {
            open: AtomicUsize::new(0),
            max,
            connections,
        })
    }

    /// Take a slot, or `None` when `max` connections are open.
    pub fn try_acquire(self: &Arc<Self>, listener: &'static str) -> Option<ConnectionSlot> {
        let taken = self
            .open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max).then_some(n + 1)
            })
            .is_ok();
        if !taken {
            return None;
        }
        self.connections.with_label_values(&[listener]).inc();
        Some(ConnectionSlot {
            gate: self.clone(),
            listener,
        })
    }

    /// Open connections now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.gate.open.fetch_sub(1, Ordering::AcqRel);
        self.gate
            .connections
            .with_label_values(&[self.listener])
            .dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gate_caps_and_releases() {
        let m = crate::telemetry::Metrics::new(10).unwrap();
        let g = ConnectionGate::new(2, m.downstream_connections.clone());
        let open = |l: &str| m.downstream_connections.with_label_values(&[l]).get();
        let a = g.try_acquire("outbound").unwrap();
        let b = g.try_acquire("inbound").unwrap();
        assert!(g.try_acquire("outbound").is_none());
        assert_eq!(g.open(), 2);
        assert_eq!((open("outbound"), open("inbound")), (1, 1));
        drop(a);
        assert_eq!(g.open(), 1);
        assert_eq!(open("outbound"), 0);
        let c = g.try_acquire("outbound");
        assert!(c.is_some());
        drop((b, c));
        assert_eq!(g.open(), 0);
    }
}
