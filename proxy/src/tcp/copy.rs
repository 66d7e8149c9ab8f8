//! The byte copy of an opaque TCP connection: both ways at once, counting bytes, and closed
//! when neither side sent a byte for the idle timeout.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Read side of one direction of an opaque TCP copy: counts bytes and records activity.
struct Metered<'a, S> {
    inner: &'a mut S,
    bytes: &'a AtomicU64,
    clock: &'a IdleClock,
}

/// The last time either side of a connection delivered bytes.
struct IdleClock {
    start: tokio::time::Instant,
    last_ms: AtomicU64,
}

impl IdleClock {
    fn touch(&self) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Relaxed);
    }
    fn last(&self) -> tokio::time::Instant {
        self.start + Duration::from_millis(self.last_ms.load(Ordering::Relaxed))
    }
}

impl<S: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Metered<'_, S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = std::pin::Pin::new(&mut *self.inner).poll_read(cx, buf);
        let n = buf.filled().len().saturating_sub(before);
        if n > 0 {
            self.bytes.fetch_add(n as u64, Ordering::Relaxed);
            self.clock.touch();
        }
        r
    }
}

impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Metered<'_, S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut *self.inner).poll_write(cx, buf)
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut *self.inner).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut *self.inner).poll_shutdown(cx)
    }
}

/// How an opaque TCP copy ended.
#[derive(Debug)]
pub enum CopyEnd {
    /// Both sides finished.
    Done,
    /// Neither side sent a byte for the idle timeout: closed by the proxy.
    Idle,
    /// An I/O error on either side.
    Error(std::io::Error),
}

/// `copy_bidirectional` between the downstream and the upstream, closed when neither side has
/// sent anything for `idle` (Istio's TCP idle timeout). Returns how it ended and the bytes
/// received from the downstream and sent to it, also when it ended early.
pub async fn copy_with_idle<A, B>(down: &mut A, up: &mut B, idle: Duration) -> (CopyEnd, u64, u64)
where
    A: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    B: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let clock = IdleClock {
        start: tokio::time::Instant::now(),
        last_ms: AtomicU64::new(0),
    };
    let (rx, tx) = (AtomicU64::new(0), AtomicU64::new(0));
    let end = {
        let mut d = Metered {
            inner: down,
            bytes: &rx,
            clock: &clock,
        };
        let mut u = Metered {
            inner: up,
            bytes: &tx,
            clock: &clock,
        };
        let copy = tokio::io::copy_bidirectional(&mut d, &mut u);
        tokio::pin!(copy);
        loop {
            let deadline = clock.last() + idle;
            tokio::select! {
                r = &mut copy => break match r {
                    Ok(_) => CopyEnd::Done,
                    Err(e) => CopyEnd::Error(e),
                },
                _ = tokio::time::sleep_until(deadline) => {
                    if clock.last() + idle <= tokio::time::Instant::now() {
                        break CopyEnd::Idle;
                    }
                }
            }
        }
    };
    (end, rx.load(Ordering::Relaxed), tx.load(Ordering::Relaxed))
}
