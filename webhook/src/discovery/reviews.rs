//! Subscribers' tokens checked without a reconnect storm reaching the API server: TokenReviews
//! are bounded in flight (a caller past the bound waits a bounded time, then is told to retry),
//! and successful reviews are kept a short time keyed by the token's SHA-256, so that proxies
//! reconnecting all at once with the same token cost at most one review. Reviews of the same
//! token that overlap are one review (the later callers wait for the first one's answer).
//!
//! A kept review lives at most [`Limits::ttl`] (≤ 1 min) and never past the token's own `exp`
//! claim when it has one (read, not trusted: it only shortens the time kept). Refusals are not
//! kept. The table holds at most [`Limits::entries`] tokens.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use tokio::sync::{OnceCell, Semaphore};

use crate::ca::authn::Authenticator;
use crate::ca::sign::{Identity, Refusal};

/// Longest time a review is kept, whatever the settings.
pub const MAX_TTL: Duration = Duration::from_secs(60);

/// Bounds of the reviews.
#[derive(Clone, Debug)]
pub struct Limits {
    /// TokenReviews in flight at once.
    pub in_flight: usize,
    /// Longest wait for a review slot before the caller is told to retry.
    pub wait: Duration,
    /// Tokens kept at most.
    pub entries: usize,
    /// How long a successful review is kept (capped at [`MAX_TTL`]).
    pub ttl: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            in_flight: 16,
            wait: Duration::from_secs(5),
            entries: 4096,
            ttl: MAX_TTL,
        }
    }
}

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What makes one review (the API server's TokenReview; a fake in tests).
pub trait Review: Send + Sync {
    fn review<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<Identity, Refusal>>;
}

impl Review for Authenticator {
    fn review<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<Identity, Refusal>> {
        Box::pin(self.authenticate(token))
    }
}

/// Why a token gave no identity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Denied {
    /// The review slots stayed full for the whole wait: retry later.
    Busy(String),
    /// The review's refusal (or its failure).
    Refused(Refusal),
}

type Outcome = (Result<Identity, Denied>, Option<Instant>);

struct Entry {
    /// The review's outcome and until when it may be reused; empty while it runs.
    cell: Arc<OnceCell<Outcome>>,
}

impl Entry {
    /// Still usable at `now`: running, or a success kept until later.
    fn live(&self, now: Instant) -> bool {
        match self.cell.get() {
            None => true,
            Some((Ok(_), Some(until))) => now < *until,
            Some(_) => false,
        }
    }
}

/// The reviews of subscribers' tokens.
pub struct Reviews {
    reviewer: Arc<dyn Review>,
    slots: Semaphore,
    limits: Limits,
    table: Mutex<HashMap<[u8; 32], Entry>>,
    made: AtomicU64,
}

/// The `exp` claim (seconds since the epoch) of a JWT's payload, if it has one. The signature
/// is not checked: the API server does that; this only bounds how long a review is kept.
pub fn token_expiry(token: &str) -> Option<u64> {
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let v: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    v.get("exp")?.as_u64()
}

/// Until when a review made at `now` (`unix`: the same instant, seconds since the epoch) may be
/// reused: `ttl` later, never past the token's expiry; `None`: not at all.
pub fn keep_until(now: Instant, unix: u64, ttl: Duration, exp: Option<u64>) -> Option<Instant> {
    let ttl = ttl.min(MAX_TTL);
    let ttl = match exp {
        Some(e) if e <= unix => return None,
        Some(e) => ttl.min(Duration::from_secs(e - unix)),
        None => ttl,
    };
    (!ttl.is_zero()).then(|| now + ttl)
}

fn key(token: &str) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    let mut k = [0u8; 32];
    k.copy_from_slice(d.as_ref());
    k
}

impl Reviews {
    pub fn new(reviewer: Arc<dyn Review>, limits: Limits) -> Reviews {
        Reviews {
            reviewer,
            slots: Semaphore::new(limits.in_flight.max(1)),
            limits,
            table: Mutex::new(HashMap::new()),
            made: AtomicU64::new(0),
        }
    }

    /// Reviews sent so far.
    pub fn made(&self) -> u64 {
        self.made.load(Ordering::Relaxed)
    }

    /// Tokens held (running or kept).
    pub fn held(&self) -> usize {
        self.table.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// The identity of `token`: a kept review, the running review of the same token, or a new
    /// one (waiting at most [`Limits::wait`] for a slot).
    pub async fn identity(&self, token: &str) -> Result<Identity, Denied> {
        let k = key(token);
        let cell = 'found: {
            let mut t = self.table.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            match t.get(&k) {
                Some(e) if e.live(now) => Some(e.cell.clone()),
                _ => {
                    if t.len() >= self.limits.entries.max(1) && !t.contains_key(&k) {
                        t.retain(|_, e| e.live(now));
                        if t.len() >= self.limits.entries.max(1) {
                            // Full of live ones: the kept review that ends first goes.
                            let first = t
                                .iter()
                                .filter_map(|(k, e)| match e.cell.get() {
                                    Some((_, Some(u))) => Some((*u, *k)),
                                    _ => None,
                                })
                                .min();
                            match first {
                                Some((_, old)) => {
                                    t.remove(&old);
                                }
                                // Every entry is a running review: this one is not kept.
                                None => break 'found None,
                            }
                        }
                    }
                    let cell = Arc::new(OnceCell::new());
                    t.insert(k, Entry { cell: cell.clone() });
                    Some(cell)
                }
            }
        };
        match cell {
            Some(cell) => cell.get_or_init(|| self.review(token)).await.0.clone(),
            None => self.review(token).await.0,
        }
    }

    async fn review(&self, token: &str) -> Outcome {
        let Ok(_slot) = tokio::time::timeout(self.limits.wait, self.slots.acquire()).await else {
            return (
                Err(Denied::Busy(format!(
                    "{} token reviews already in flight for {}s; retry in a few seconds",
                    self.limits.in_flight,
                    self.limits.wait.as_secs()
                ))),
                None,
            );
        };
        self.made.fetch_add(1, Ordering::Relaxed);
        match self.reviewer.review(token).await {
            Ok(id) => {
                let unix = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0);
                let until = keep_until(Instant::now(), unix, self.limits.ttl, token_expiry(token));
                (Ok(id), until)
            }
            Err(r) => (Err(Denied::Refused(r)), None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ca::sign::Reason;
    use std::sync::atomic::AtomicUsize;

    /// Answers after `delay`, counting calls and the most at once; `bad` is refused.
    struct Fake {
        delay: Duration,
        calls: AtomicUsize,
        now: AtomicUsize,
        most: AtomicUsize,
    }

    impl Fake {
        fn new(delay: Duration) -> Arc<Fake> {
            Arc::new(Fake {
                delay,
                calls: AtomicUsize::new(0),
                now: AtomicUsize::new(0),
                most: AtomicUsize::new(0),
            })
        }
    }

    impl Review for Fake {
        fn review<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<Identity, Refusal>> {
            Box::pin(async move {
                self.calls.fetch_add(1, Ordering::SeqCst);
                let n = self.now.fetch_add(1, Ordering::SeqCst) + 1;
                self.most.fetch_max(n, Ordering::SeqCst);
                tokio::time::sleep(self.delay).await;
                self.now.fetch_sub(1, Ordering::SeqCst);
                if token == "bad" {
                    return Err(Refusal::new(Reason::TokenRejected, "not authenticated"));
                }
                Ok(Identity {
                    namespace: "shop".into(),
                    service_account: token.into(),
                    pod: None,
                })
            })
        }
    }

    fn jwt(claims: &str) -> String {
        let e = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        format!("{}.{}.sig", e(r#"{"alg":"RS256"}"#), e(claims))
    }

    #[test]
    fn expiry_and_time_kept() {
        assert_eq!(
            token_expiry(&jwt(r#"{"exp":1700000000}"#)),
            Some(1_700_000_000)
        );
        for t in [
            "opaque",
            "a.b.c",
            &jwt(r#"{"sub":"x"}"#),
            &jwt(r#"{"exp":"soon"}"#),
        ] {
            assert_eq!(token_expiry(t), None, "{t}");
        }
        let now = Instant::now();
        let min = Duration::from_secs(60);
        // (ttl, unix now, exp) → kept for
        let rows: [(Duration, u64, Option<u64>, Option<Duration>); 6] = [
            (min, 1000, None, Some(min)),
            (Duration::from_secs(600), 1000, None, Some(min)),
            (min, 1000, Some(1010), Some(Duration::from_secs(10))),
            (min, 1000, Some(5000), Some(min)),
            (min, 1000, Some(1000), None),
            (Duration::ZERO, 1000, None, None),
        ];
        for (ttl, unix, exp, want) in rows {
            assert_eq!(
                keep_until(now, unix, ttl, exp),
                want.map(|d| now + d),
                "{ttl:?} {exp:?}"
            );
        }
    }

    #[tokio::test]
    async fn the_same_token_at_once_is_one_review_and_is_kept() {
        let fake = Fake::new(Duration::from_millis(100));
        let r = Arc::new(Reviews::new(fake.clone(), Limits::default()));
        let mut all = Vec::new();
        for _ in 0..200 {
            let r = r.clone();
            all.push(tokio::spawn(async move { r.identity("web").await }));
        }
        for h in all {
            assert_eq!(h.await.unwrap().unwrap().service_account, "web");
        }
        assert_eq!(fake.calls.load(Ordering::SeqCst), 1);
        // Later reconnects reuse it.
        r.identity("web").await.unwrap();
        assert_eq!(r.made(), 1);
        // A refusal is shared by those waiting on it but not kept.
        let (a, b) = tokio::join!(r.identity("bad"), r.identity("bad"));
        assert!(matches!(a, Err(Denied::Refused(ref x)) if x.reason == Reason::TokenRejected));
        assert_eq!(a, b);
        assert_eq!(r.made(), 2);
        assert!(r.identity("bad").await.is_err());
        assert_eq!(r.made(), 3);
    }

    #[tokio::test]
    async fn a_token_is_kept_no_longer_than_the_ttl() {
        let fake = Fake::new(Duration::ZERO);
        let r = Reviews::new(
            fake.clone(),
            Limits {
                ttl: Duration::from_millis(50),
                ..Limits::default()
            },
        );
        r.identity("web").await.unwrap();
        r.identity("web").await.unwrap();
        assert_eq!(r.made(), 1);
        tokio::time::sleep(Duration::from_millis(80)).await;
        r.identity("web").await.unwrap();
        assert_eq!(r.made(), 2);
        // An expired token's review is never kept.
        let old = jwt(r#"{"exp":1000}"#);
        r.identity(&old).await.unwrap();
        r.identity(&old).await.unwrap();
        assert_eq!(r.made(), 4);
    }

    #[tokio::test]
    async fn distinct_tokens_are_bounded_in_flight_and_the_excess_told_to_retry() {
        let fake = Fake::new(Duration::from_millis(300));
        let r = Arc::new(Reviews::new(
            fake.clone(),
            Limits {
                in_flight: 4,
                wait: Duration::from_millis(450),
                entries: 8,
                ..Limits::default()
            },
        ));
        let mut all = Vec::new();
        for i in 0..20 {
            let r = r.clone();
            all.push(tokio::spawn(
                async move { r.identity(&format!("sa{i}")).await },
            ));
        }
        let (mut ok, mut busy) = (0, 0);
        for h in all {
            match h.await.unwrap() {
                Ok(_) => ok += 1,
                Err(Denied::Busy(m)) => {
                    assert!(m.contains("4 token reviews already in flight"), "{m}");
                    busy += 1
                }
                Err(e) => panic!("{e:?}"),
            }
        }
        assert_eq!(fake.most.load(Ordering::SeqCst), 4, "at most 4 at once");
        // 4 at once for 300 ms, a 450 ms wait: two rounds answered, the rest told to retry.
        assert_eq!(ok, 8, "busy {busy}");
        assert_eq!(busy, 12);
        assert!(r.held() <= 8, "the table is bounded: {}", r.held());
    }
}
