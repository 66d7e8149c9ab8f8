//! Connection pool limits per destination (`trafficPolicy.connectionPool`), Envoy's circuit
//! breakers as Istio configures them. Each HTTP request holds one upstream connection while it
//! is forwarded, so:
//! - `tcp.maxConnections` caps the requests being forwarded to the destination at once;
//! - `http.http1MaxPendingRequests` caps the requests waiting for one of those connections;
//!   beyond it a request fails at once with 503 and response flag `UO` (never an unbounded queue);
//! - `http.http2MaxRequests` caps all active requests (forwarded + waiting), also 503 `UO`;
//! - `http.maxRetries` caps retries outstanding at once across the destination (a retry over
//!   the cap is not made; the answer the client gets is the last attempt's).
//!
//! The other fields (`connectTimeout`, `tcpKeepalive`, `maxRequestsPerConnection`,
//! `idleTimeout`) are parsed here and applied to the upstream peer options.

pub use remora_model::policy::limits::*;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Why a request was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Overflow {
    /// `http1MaxPendingRequests` reached.
    Pending,
    /// `http2MaxRequests` reached.
    Requests,
    /// `tcp.maxConnections` reached by opaque TCP connections (they never wait).
    Connections,
}

impl Overflow {
    pub fn reason(self) -> &'static str {
        match self {
            Overflow::Pending => "connectionPool.http.http1MaxPendingRequests reached",
            Overflow::Requests => "connectionPool.http.http2MaxRequests reached",
            Overflow::Connections => "connectionPool.tcp.maxConnections reached",
        }
    }
}

/// Live counters of one destination.
#[derive(Debug)]
pub struct Pool {
    pub config: PoolConfig,
    connections: Arc<Semaphore>,
    pending: Arc<AtomicU64>,
    active: Arc<AtomicU64>,
    retries: Arc<AtomicU64>,
    overflows: AtomicU64,
}

/// Held while a request is forwarded: one connection slot and one active request.
#[derive(Debug)]
pub struct Admitted {
    _conn: Option<OwnedSemaphorePermit>,
    _active: Counted,
}

#[derive(Debug)]
struct Counted(Arc<AtomicU64>);

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Held while a retry is outstanding.
#[derive(Debug)]
pub struct RetryToken(#[allow(dead_code)] Counted);

/// A point-in-time view for `/config_dump` and tests.
pub use remora_model::dump::PoolStats;

/// Increment `c` unless it is at `max`.
fn try_inc(c: &Arc<AtomicU64>, max: u64) -> Option<Counted> {
    let mut cur = c.load(Ordering::Acquire);
    loop {
        if cur >= max {
            return None;
        }
        match c.compare_exchange_weak(cur, cur + 1, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => return Some(Counted(c.clone())),
            Err(x) => cur = x,
        }
    }
}

impl Pool {
    pub fn new(config: PoolConfig) -> Self {
        let permits = usize::try_from(config.max_connections.min(Semaphore::MAX_PERMITS as u64))
            .unwrap_or(Semaphore::MAX_PERMITS);
        Pool {
            connections: Arc::new(Semaphore::new(permits)),
            pending: Arc::new(AtomicU64::new(0)),
            active: Arc::new(AtomicU64::new(0)),
            retries: Arc::new(AtomicU64::new(0)),
            overflows: AtomicU64::new(0),
            config,
        }
    }

    fn limited(&self) -> bool {
        self.config.max_connections < UNLIMITED
    }

    /// Admit a request: immediately when a connection slot is free, after waiting when the
    /// pending queue has room, or refuse (503 `UO`).
    pub async fn admit(&self) -> Result<Admitted, Overflow> {
        let Some(active) = try_inc(&self.active, self.config.http2_max_requests) else {
            self.overflows.fetch_add(1, Ordering::Relaxed);
            return Err(Overflow::Requests);
        };
        if !self.limited() {
            return Ok(Admitted {
                _conn: None,
                _active: active,
            });
        }
        if let Ok(p) = self.connections.clone().try_acquire_owned() {
            return Ok(Admitted {
                _conn: Some(p),
                _active: active,
            });
        }
        let Some(waiting) = try_inc(&self.pending, self.config.http1_max_pending_requests) else {
            self.overflows.fetch_add(1, Ordering::Relaxed);
            return Err(Overflow::Pending);
        };
        let permit = self.connections.clone().acquire_owned().await;
        drop(waiting);
        match permit {
            Ok(p) => Ok(Admitted {
                _conn: Some(p),
                _active: active,
            }),
            // The semaphore is never closed; treat it as an overflow rather than panic.
            Err(_) => Err(Overflow::Pending),
        }
    }

    /// Admit an opaque TCP connection: it holds one of `tcp.maxConnections` while open (`None`
    /// when unlimited). At the limit it is refused at once, as Envoy's TCP proxy does (no queue).
    pub fn admit_connection(&self) -> Result<Option<OwnedSemaphorePermit>, Overflow> {
        if !self.limited() {
            return Ok(None);
        }
        match self.connections.clone().try_acquire_owned() {
            Ok(p) => Ok(Some(p)),
            Err(_) => {
                self.overflows.fetch_add(1, Ordering::Relaxed);
                Err(Overflow::Connections)
            }
        }
    }

    /// May one more retry start? The token ends it.
    pub fn retry(&self) -> Option<RetryToken> {
        try_inc(&self.retries, self.config.max_retries).map(RetryToken)
    }

    pub fn stats(&self) -> PoolStats {
        let in_use = if self.limited() {
            let max = self
                .config
                .max_connections
                .min(Semaphore::MAX_PERMITS as u64);
            max.saturating_sub(self.connections.available_permits() as u64)
        } else {
            self.active
                .load(Ordering::Acquire)
                .saturating_sub(self.pending.load(Ordering::Acquire))
        };
        PoolStats {
            active_requests: self.active.load(Ordering::Acquire),
            pending_requests: self.pending.load(Ordering::Acquire),
            connections_in_use: in_use,
            active_retries: self.retries.load(Ordering::Acquire),
            overflows_total: self.overflows.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use remora_model::serde_util::IstioShape;
    use serde_json::json;
    use std::time::Duration;

    /// A `connectionPool` at `field`, decoded as the rules loader decodes it.
    fn parse(v: &serde_json::Value, field: &str) -> Result<PoolConfig, String> {
        remora_model::typed::decode::<ConnectionPoolSpec>(v, field, &mut Vec::new())
            .map_err(|e| e.to_string())
            .and_then(|spec| PoolConfig::from_spec(&spec))
    }

    #[test]
    fn parse_fields_and_errors() {
        let c = parse(
            &json!({"tcp": {"maxConnections": 2, "connectTimeout": "250ms",
                            "tcpKeepalive": {"time": "7200s", "interval": "75s", "probes": 9}},
                    "http": {"http1MaxPendingRequests": 1, "http2MaxRequests": 10,
                             "maxRequestsPerConnection": 5, "maxRetries": 3, "idleTimeout": "1h"}}),
            "cp",
        )
        .unwrap();
        assert_eq!(c.max_connections, 2);
        assert_eq!(c.connect_timeout, Duration::from_millis(250));
        assert_eq!(
            c.tcp_keepalive,
            Some(TcpKeepalive {
                probes: Some(9),
                time: Some(Duration::from_secs(7200)),
                interval: Some(Duration::from_secs(75))
            })
        );
        assert_eq!(c.http1_max_pending_requests, 1);
        assert_eq!(c.http2_max_requests, 10);
        assert_eq!(c.max_requests_per_connection, 5);
        assert_eq!(c.max_retries, 3);
        assert_eq!(c.idle_timeout, Some(Duration::from_secs(3600)));
        assert_eq!(parse(&json!({}), "cp").unwrap(), PoolConfig::default());
        assert_eq!(
            parse(&json!({"http": {"http1MaxPendingRequests": 0}}), "cp")
                .unwrap()
                .http1_max_pending_requests,
            UNLIMITED
        );
        assert_eq!(
            parse(&json!({"tcp": {"maxConnections": "2"}}), "spec.trafficPolicy.connectionPool"),
            Err("spec.trafficPolicy.connectionPool.tcp.maxConnections: expected an integer, found the string \"2\" (remove the quotes)".into())
        );
        assert_eq!(
            parse(&json!({"tcp": {"connectTimeout": "1 second"}}), "cp"),
            Err("cp.tcp.connectTimeout: invalid duration \"1 second\": unknown unit \" second\" (ns, us, ms, s, m, h)".into())
        );
    }

    #[tokio::test]
    async fn connections_then_pending_then_overflow() {
        let pool = Arc::new(Pool::new(PoolConfig {
            max_connections: 2,
            http1_max_pending_requests: 1,
            ..PoolConfig::default()
        }));
        let a = pool.admit().await.unwrap();
        let _b = pool.admit().await.unwrap();
        assert_eq!(pool.stats().connections_in_use, 2);
        // the third waits for a connection
        let p2 = pool.clone();
        let waiter = tokio::spawn(async move { p2.admit().await.map(|_| ()) });
        while pool.stats().pending_requests == 0 {
            tokio::task::yield_now().await;
        }
        // the fourth finds the queue full
        assert_eq!(pool.admit().await.unwrap_err(), Overflow::Pending);
        assert_eq!(pool.stats().overflows_total, 1);
        drop(a);
        assert_eq!(waiter.await.unwrap(), Ok(()));
        let s = pool.stats();
        assert_eq!(s.pending_requests, 0);
        assert_eq!(s.active_requests, 1);
    }

    #[tokio::test]
    async fn max_requests_and_retries() {
        let pool = Pool::new(PoolConfig {
            http2_max_requests: 2,
            max_retries: 1,
            ..PoolConfig::default()
        });
        let _a = pool.admit().await.unwrap();
        let _b = pool.admit().await.unwrap();
        assert_eq!(pool.admit().await.unwrap_err(), Overflow::Requests);
        drop(_a);
        assert!(pool.admit().await.is_ok());
        let t = pool.retry().unwrap();
        assert!(pool.retry().is_none());
        drop(t);
        assert!(pool.retry().is_some());
    }
}
