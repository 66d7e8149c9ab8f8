//! The cap on open downstream connections of one capture listener (inbound and outbound each
//! have their own): a connection over the cap is closed at once, before anything is read.

use crate::telemetry::Metrics;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// The cap on open downstream connections of one capture listener.
#[derive(Debug)]
pub struct ConnectionGate {
    open: AtomicUsize,
    max: usize,
}

/// A held slot of the [`ConnectionGate`]; released (and the gauge lowered) on drop.
#[derive(Debug)]
pub struct ConnectionSlot {
    gate: Arc<ConnectionGate>,
    listener: &'static str,
}

impl ConnectionGate {
    pub fn new(max: usize) -> Arc<ConnectionGate> {
        Arc::new(ConnectionGate {
            open: AtomicUsize::new(0),
            max,
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
        Metrics::get()
            .downstream_connections
            .with_label_values(&[listener])
            .inc();
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
        Metrics::get()
            .downstream_connections
            .with_label_values(&[self.listener])
            .dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gate_caps_and_releases() {
        let g = ConnectionGate::new(2);
        let a = g.try_acquire("outbound").unwrap();
        let b = g.try_acquire("inbound").unwrap();
        assert!(g.try_acquire("outbound").is_none());
        assert_eq!(g.open(), 2);
        drop(a);
        assert_eq!(g.open(), 1);
        let c = g.try_acquire("outbound");
        assert!(c.is_some());
        drop((b, c));
        assert_eq!(g.open(), 0);
    }
}
