//! The per-request idle timeout (Envoy's `stream_idle_timeout`): an HTTP/1 request or an HTTP/2
//! stream on which nothing moves either way for the timeout is ended: the h2 stream is reset
//! (its handles dropped), the HTTP/1 connection closed. Pingora 0.9 has no read timeout on
//! downstream h2 streams (`read_body_bytes` waits forever), so this is a timer around the
//! request's processing; the proxy's filters mark activity (request head and body chunks,
//! response head and body chunks) through a task-local set around it. The downstream write
//! timeout and the HTTP/1 body read timeout are Pingora's own session settings, set here too.

use crate::guard::{record, Reject};
use crate::telemetry::Metrics;
use async_trait::async_trait;
use pingora::apps::{HttpServerApp, HttpServerOptions, ReusedHttpStream};
use pingora::protocols::http::v2::server::H2Options;
use pingora::protocols::http::ServerSession;
use pingora::server::ShutdownWatch;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// Activity on a request: a counter its filters bump (no clock read on the request path; a
/// clock read per head and body chunk cost more than the rest of the timeout).
#[derive(Debug, Default)]
pub struct Activity {
    moves: AtomicU64,
}

impl Activity {
    fn touch(&self) {
        self.moves.fetch_add(1, Ordering::Relaxed);
    }

    fn moves(&self) -> u64 {
        self.moves.load(Ordering::Relaxed)
    }
}

tokio::task_local! {
    static ACTIVITY: Arc<Activity>;
}

/// Mark activity on the current request (a no-op outside [`run`]).
pub fn touch() {
    let _ = ACTIVITY.try_with(|a| a.touch());
}

/// Checks per timeout: the request is ended after `idle` without activity, at most a quarter
/// of it later (activity is noticed at the next check, not timed).
const CHECKS: u32 = 4;

/// Run `fut` (one request), ending it with `Err(())` once nothing moved for `idle` (checked
/// every quarter of it, so between `idle` and 1¼ × `idle` after the last activity).
pub async fn run<F: Future>(idle: Duration, fut: F) -> Result<F::Output, ()> {
    let act = Arc::new(Activity::default());
    let watch = act.clone();
    let fut = ACTIVITY.scope(act, fut);
    tokio::pin!(fut);
    let step = idle / CHECKS;
    let (mut seen, mut quiet) = (watch.moves(), 0u32);
    let mut next = Instant::now() + step;
    loop {
        tokio::select! {
            // The request first, and no random branch order (which costs an RNG call per poll).
            biased;
            out = &mut fut => return Ok(out),
            _ = tokio::time::sleep_until(next) => {
                let now = watch.moves();
                if now == seen {
                    quiet += 1;
                    if quiet >= CHECKS {
                        return Err(());
                    }
                } else {
                    (seen, quiet) = (now, 0);
                }
                next += step;
            }
        }
    }
}

/// Set the per-request downstream timeouts Pingora has on `session`: the write timeout (both
/// versions) and, for HTTP/1, the body read timeout (the stream idle timeout).
pub fn set_session_timeouts(session: &mut ServerSession, stream_idle: Duration, write: Duration) {
    session.set_read_timeout(Some(stream_idle));
    session.set_write_timeout(Some(write));
}

/// An [`HttpServerApp`] whose every request (h2: every stream) runs under the stream idle
/// timeout and the downstream write timeout.
pub struct StreamIdleApp<A> {
    pub inner: Arc<A>,
    pub listener: &'static str,
    /// Where a request reset for idleness is counted.
    pub metrics: Arc<Metrics>,
    pub stream_idle: Duration,
    pub write_timeout: Duration,
}

impl<A: HttpServerApp + Send + Sync + 'static> StreamIdleApp<A> {
    /// Process one request of `session` under the limits; `None` (close) when it timed out.
    pub async fn process(
        &self,
        mut session: ServerSession,
        shutdown: &ShutdownWatch,
    ) -> Option<ReusedHttpStream> {
        set_session_timeouts(&mut session, self.stream_idle, self.write_timeout);
        match run(
            self.stream_idle,
            HttpServerApp::process_new_http(&self.inner, session, shutdown),
        )
        .await
        {
            Ok(r) => r,
            Err(()) => {
                record(
                    &self.metrics,
                    self.listener,
                    Reject::StreamIdleTimeout,
                    &format!(
                        "nothing moved on a request for {} s (--stream-idle-timeout-seconds); reset",
                        self.stream_idle.as_secs()
                    ),
                );
                None
            }
        }
    }
}

#[async_trait]
impl<A: HttpServerApp + Send + Sync + 'static> HttpServerApp for StreamIdleApp<A> {
    async fn process_new_http(
        self: &Arc<Self>,
        session: ServerSession,
        shutdown: &ShutdownWatch,
    ) -> Option<ReusedHttpStream> {
        self.process(session, shutdown).await
    }

    fn h2_options(&self) -> Option<H2Options> {
        self.inner.h2_options()
    }

    fn server_options(&self) -> Option<&HttpServerOptions> {
        self.inner.server_options()
    }

    async fn http_cleanup(&self) {
        self.inner.http_cleanup().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn idle_ends_a_request_and_activity_keeps_it_alive() {
        let idle = Duration::from_millis(300);
        // Nothing moves: ended after the idle timeout.
        let t = std::time::Instant::now();
        let r = run(idle, std::future::pending::<()>()).await;
        assert!(r.is_err());
        assert!(t.elapsed() >= idle);
        // Activity every 100 ms for 1.2 s: never idle for 300 ms, completes.
        let r = run(idle, async {
            for _ in 0..12 {
                tokio::time::sleep(Duration::from_millis(100)).await;
                touch();
            }
            7
        })
        .await;
        assert_eq!(r, Ok(7));
    }
}
