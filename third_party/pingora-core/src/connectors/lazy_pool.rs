// Copyright 2026 remora contributors
//
// Licensed under the Apache License, Version 2.0 (the "License");
// you may not use this file except in compliance with the License.
// You may obtain a copy of the License at
//
//     http://www.apache.org/licenses/LICENSE-2.0
//
// Unless required by applicable law or agreed to in writing, software
// distributed under the License is distributed on an "AS IS" BASIS,
// WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
// See the License for the specific language governing permissions and
// limitations under the License.

//! A keep-alive pool of idle upstream connections without a watcher task per connection
//! (`ConnectorOptions::keepalive_idle_watch == false`).
//!
//! The default pool (`pingora_pool::ConnectionPool`) spawns a task for every connection it is
//! given back, which waits for the connection to be picked up, closed by the server or timed
//! out; taking the connection out again means waking that task and waiting for it to release
//! the connection's lock. With keep-alive traffic that is a spawn, a task wake-up and a lock
//! hand-over per request, often across threads.
//!
//! Here an idle connection just sits in a map. Whether it is still usable is checked when it is
//! taken (its idle deadline, then the caller's non-blocking read check, as for the default
//! pool), and one sweeper task per pool, running only while the pool holds connections, closes
//! the ones that time out or that the server closed, every [`SWEEP`]. The pool holds at most
//! `capacity` connections: giving one back to a full pool closes the oldest of the same
//! server (or of another, when that server has none).

use super::test_reusable_stream;
use crate::protocols::Stream;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How often the sweeper closes timed-out and server-closed idle connections.
pub(crate) const SWEEP: Duration = Duration::from_secs(5);

struct Idle {
    stream: Stream,
    since: Instant,
    deadline: Option<Instant>,
    /// The thread that gave it back: with single-threaded runtimes (`work_stealing: false`) a
    /// connection's readiness comes from the runtime it was registered with, so reusing it on
    /// the same thread avoids a cross-thread wake-up per read.
    thread: std::thread::ThreadId,
}

#[derive(Default)]
struct Inner {
    by_key: HashMap<u64, VecDeque<Idle>>,
    total: usize,
    sweeping: bool,
}

pub(crate) struct LazyPool {
    inner: Mutex<Inner>,
    capacity: usize,
    unexpected_data: Arc<AtomicU64>,
    on_idle_close: Option<super::PoolCallback>,
}

impl LazyPool {
    pub(crate) fn new(
        capacity: usize,
        unexpected_data: Arc<AtomicU64>,
        on_idle_close: Option<super::PoolCallback>,
    ) -> Self {
        LazyPool {
            inner: Mutex::new(Inner::default()),
            capacity: capacity.max(1),
            unexpected_data,
            on_idle_close,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the map inconsistent beyond a wrong
        // `total`, which only bounds the pool: keep going with the data.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The most recently returned connection for `key` whose idle deadline has not passed,
    /// preferring one given back on this thread; connections past their deadline are closed on
    /// the way.
    pub(crate) fn take(&self, key: u64) -> Option<Stream> {
        let now = Instant::now();
        let me = std::thread::current().id();
        let mut expired = Vec::new();
        let found = {
            let mut g = self.lock();
            let q = g.by_key.get_mut(&key)?;
            let mut found = None;
            if let Some(i) = q.iter().rposition(|i| i.thread == me) {
                if q[i].deadline.is_none_or(|d| d > now) {
                    found = q.remove(i);
                }
            }
            while found.is_none() {
                let Some(idle) = q.pop_back() else { break };
                if idle.deadline.is_none_or(|d| d > now) {
                    found = Some(idle);
                    break;
                }
                expired.push(idle);
            }
            let empty = q.is_empty();
            if empty {
                g.by_key.remove(&key);
            }
            g.total = g
                .total
                .saturating_sub(expired.len() + usize::from(found.is_some()));
            found
        };
        for idle in expired {
            self.closed(idle, now);
        }
        found.map(|i| i.stream)
    }

    /// Keeps `stream` for `key` until it is taken, times out (`idle_timeout`) or the server
    /// closes it.
    pub(crate) fn put(self: &Arc<Self>, key: u64, stream: Stream, idle_timeout: Option<Duration>) {
        let now = Instant::now();
        let mut evicted = None;
        let start_sweeper = {
            let mut g = self.lock();
            if g.total >= self.capacity {
                // The oldest of this server's, else of any server's.
                let k = if g.by_key.get(&key).is_some_and(|q| !q.is_empty()) {
                    Some(key)
                } else {
                    g.by_key.keys().next().copied()
                };
                if let Some(k) = k {
                    if let Some(q) = g.by_key.get_mut(&k) {
                        evicted = q.pop_front();
                        if q.is_empty() {
                            g.by_key.remove(&k);
                        }
                    }
                    if evicted.is_some() {
                        g.total -= 1;
                    }
                }
            }
            g.by_key.entry(key).or_default().push_back(Idle {
                stream,
                since: now,
                deadline: idle_timeout.map(|t| now + t),
                thread: std::thread::current().id(),
            });
            g.total += 1;
            !std::mem::replace(&mut g.sweeping, true)
        };
        if let Some(idle) = evicted {
            self.closed(idle, now);
        }
        if start_sweeper {
            let pool = self.clone();
            pingora_runtime::current_handle().spawn(async move { pool.sweep().await });
        }
    }

    /// Closes timed-out and server-closed connections every [`SWEEP`]; ends when the pool is
    /// empty (the next `put` starts a new one).
    async fn sweep(self: Arc<Self>) {
        loop {
            tokio::time::sleep(SWEEP).await;
            let now = Instant::now();
            let mut gone = Vec::new();
            let go_on = {
                let mut g = self.lock();
                for q in g.by_key.values_mut() {
                    let mut keep = VecDeque::with_capacity(q.len());
                    for mut idle in q.drain(..) {
                        let live = idle.deadline.is_none_or(|d| d > now)
                            && test_reusable_stream(&mut idle.stream, &self.unexpected_data);
                        if live {
                            keep.push_back(idle);
                        } else {
                            gone.push(idle);
                        }
                    }
                    *q = keep;
                }
                g.by_key.retain(|_, q| !q.is_empty());
                g.total = g.total.saturating_sub(gone.len());
                if g.total == 0 {
                    g.sweeping = false;
                }
                g.sweeping
            };
            for idle in gone {
                self.closed(idle, now);
            }
            if !go_on {
                return;
            }
        }
    }

    fn closed(&self, idle: Idle, now: Instant) {
        if let Some(cb) = &self.on_idle_close {
            cb(now.saturating_duration_since(idle.since));
        }
        drop(idle.stream);
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.lock().total
    }
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;
    use tokio::net::{TcpListener, TcpStream};

    async fn pair(l: &TcpListener) -> (Stream, TcpStream) {
        let addr = l.local_addr().unwrap();
        let (c, s) = tokio::join!(TcpStream::connect(addr), l.accept());
        let c: crate::protocols::l4::stream::Stream = c.unwrap().into();
        (Box::new(c), s.unwrap().0)
    }

    #[tokio::test]
    async fn lazy_pool_takes_newest_first_and_bounds_its_size() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let pool = Arc::new(LazyPool::new(2, Arc::new(AtomicU64::new(0)), None));
        let (a, _sa) = pair(&l).await;
        let (b, _sb) = pair(&l).await;
        let (c, _sc) = pair(&l).await;
        let (ib, ic) = (b.id(), c.id());
        pool.put(7, a, None);
        pool.put(7, b, None);
        pool.put(7, c, None); // full: the oldest (a) is closed
        assert_eq!(pool.len(), 2);
        assert_eq!(pool.take(7).map(|s| s.id()), Some(ic));
        assert_eq!(pool.take(7).map(|s| s.id()), Some(ib));
        assert!(pool.take(7).is_none());
        assert!(pool.take(8).is_none());
        assert_eq!(pool.len(), 0);
    }

    #[tokio::test]
    async fn lazy_pool_drops_expired_and_sweeps_closed() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let closed = Arc::new(AtomicU64::new(0));
        let cb: super::super::PoolCallback = {
            let closed = closed.clone();
            Arc::new(move |_| {
                closed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            })
        };
        let pool = Arc::new(LazyPool::new(8, Arc::new(AtomicU64::new(0)), Some(cb)));
        let (a, _sa) = pair(&l).await;
        pool.put(1, a, Some(Duration::from_millis(1)));
        tokio::time::sleep(Duration::from_millis(5)).await;
        assert!(pool.take(1).is_none(), "an expired connection is not handed out");
        assert_eq!(closed.load(std::sync::atomic::Ordering::Relaxed), 1);

        let (b, mut sb) = pair(&l).await;
        pool.put(2, b, None);
        sb.shutdown().await.unwrap();
        drop(sb);
        tokio::time::sleep(SWEEP + Duration::from_millis(500)).await;
        assert_eq!(pool.len(), 0, "the sweeper closed the connection the server closed");
        assert_eq!(closed.load(std::sync::atomic::Ordering::Relaxed), 2);
    }
}
