//! The keys of `jwksUri`, and of rules with neither `jwks` nor `jwksUri` through the issuer's
//! OpenID discovery document (`<issuer>/.well-known/openid-configuration`, whose `jwks_uri` is
//! then fetched; both HTTPS, as OpenID Connect Discovery requires): fetched over HTTPS (or HTTP
//! for `jwksUri`, which Istio allows too), cached per URI (per issuer for discovery),
//! refreshed in the background (every 20 minutes by default, as istiod refreshes them), with a
//! bounded number of URIs, a bounded fetch time (the rule's `timeout`, 5 s by default) and a
//! bounded body. A failed refresh keeps the last good keys and logs why; until a first fetch
//! succeeds, tokens of that issuer fail (`Jwks remote fetch is failed`), with at most one fetch
//! a second per URI while the server keeps failing.
//!
//! When to fetch is a pure decision ([`plan`]); the fetch itself is a plain HTTP/1.1 GET over
//! tokio (and rustls with ring, the system roots plus `--jwks-ca-file`).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite};
use tracing::{info, warn};

use super::authn::KeySet;
use super::oidc::jwks_uri_of;

/// Istio's refresh interval of fetched keys (`PILOT_JWT_PUB_KEY_REFRESH_INTERVAL`).
pub const DEFAULT_REFRESH: Duration = Duration::from_secs(20 * 60);
/// After a failed first fetch, the next one waits this long (requests in between fail fast).
pub const RETRY_WITHOUT_KEYS: Duration = Duration::from_secs(1);
/// After a failed refresh (old keys kept), the next attempt waits this long at most.
pub const RETRY_WITH_KEYS: Duration = Duration::from_secs(30);
/// Most URIs cached; the least recently used is dropped beyond.
pub const MAX_URIS: usize = 64;
/// Largest JWKS document read.
pub const MAX_BODY_BYTES: usize = 512 * 1024;

/// `--jwks-refresh-interval` and `--jwks-ca-file`.
#[derive(Clone, Debug)]
pub struct JwksSettings {
    pub refresh: Duration,
    /// Extra trust anchors (PEM) for HTTPS `jwksUri` servers, besides the system's.
    pub extra_roots: Option<PathBuf>,
}

impl Default for JwksSettings {
    fn default() -> Self {
        JwksSettings {
            refresh: DEFAULT_REFRESH,
            extra_roots: None,
        }
    }
}

/// What a cache entry fetches.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Target {
    /// A `jwksUri`.
    Jwks(String),
    /// The URL of an issuer's OpenID discovery document; its `jwks_uri` has the keys.
    Discovery(String),
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Jwks(u) => f.write_str(u),
            Target::Discovery(u) => write!(f, "{u} (OpenID discovery)"),
        }
    }
}

/// What the cache holds for one URI.
#[derive(Clone, Debug, Default)]
pub struct EntryState {
    pub keys: Option<Arc<KeySet>>,
    /// When `keys` were fetched.
    pub fetched_at: Option<Instant>,
    /// No fetch before this (after a failure).
    pub not_before: Option<Instant>,
    /// Why the last fetch failed (cleared by a success).
    pub last_error: Option<String>,
    /// A background refresh is running.
    pub refreshing: bool,
    pub last_used: Option<Instant>,
}

/// What a request does with an entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Plan {
    /// Use the cached keys; `refresh`: start a background refresh too.
    UseKeys { refresh: bool },
    /// No keys and the last fetch failed a moment ago: fail now with its error.
    FailFast,
    /// No keys: fetch now (the request waits for it).
    FetchNow,
}

/// When to fetch (pure).
pub fn plan(st: &EntryState, now: Instant, refresh_every: Duration) -> Plan {
    let may_try = st.not_before.is_none_or(|t| now >= t);
    match (&st.keys, st.fetched_at) {
        (Some(_), Some(at)) => Plan::UseKeys {
            refresh: !st.refreshing && may_try && now.duration_since(at) >= refresh_every,
        },
        (Some(_), None) => Plan::UseKeys { refresh: false },
        (None, _) if !may_try => Plan::FailFast,
        (None, _) => Plan::FetchNow,
    }
}

/// Record a fetch's result (pure): new keys replace the old; a failure keeps them and delays
/// the next attempt.
pub fn record(
    st: &mut EntryState,
    result: Result<Arc<KeySet>, String>,
    now: Instant,
    refresh_every: Duration,
) {
    st.refreshing = false;
    match result {
        Ok(keys) => {
            st.keys = Some(keys);
            st.fetched_at = Some(now);
            st.not_before = None;
            st.last_error = None;
        }
        Err(e) => {
            let wait = if st.keys.is_some() {
                RETRY_WITH_KEYS.min(refresh_every)
            } else {
                RETRY_WITHOUT_KEYS
            };
            st.not_before = Some(now + wait);
            st.last_error = Some(e);
        }
    }
}

struct Entry {
    state: Mutex<EntryState>,
    /// One first fetch at a time per URI; the requests that wait take its result.
    fetching: tokio::sync::Mutex<()>,
}

/// The JWKS cache of the process.
pub struct Jwks {
    settings: JwksSettings,
    entries: Mutex<HashMap<Target, Arc<Entry>>>,
    tls: OnceLock<Result<Arc<rustls::ClientConfig>, String>>,
}

impl Default for Jwks {
    fn default() -> Self {
        Jwks::new(JwksSettings::default())
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Jwks {
    pub fn new(settings: JwksSettings) -> Jwks {
        Jwks {
            settings,
            entries: Mutex::new(HashMap::new()),
            tls: OnceLock::new(),
        }
    }

    fn entry(&self, target: &Target) -> Arc<Entry> {
        let mut entries = lock(&self.entries);
        if let Some(e) = entries.get(target) {
            return e.clone();
        }
        if entries.len() >= MAX_URIS {
            let oldest = entries
                .iter()
                .min_by_key(|(_, e)| lock(&e.state).last_used)
                .map(|(k, _)| k.clone());
            if let Some(k) = oldest {
                entries.remove(&k);
            }
        }
        let e = Arc::new(Entry {
            state: Mutex::new(EntryState::default()),
            fetching: tokio::sync::Mutex::new(()),
        });
        entries.insert(target.clone(), e.clone());
        e
    }

    /// The keys of `target`: cached, or fetched now (bounded by `timeout`, both steps of a
    /// discovery together). `Err` says why there are none.
    pub async fn get(
        self: &Arc<Self>,
        target: &Target,
        timeout: Duration,
    ) -> Result<Arc<KeySet>, String> {
        let entry = self.entry(target);
        let now = Instant::now();
        {
            let mut st = lock(&entry.state);
            st.last_used = Some(now);
            match (plan(&st, now, self.settings.refresh), st.keys.clone()) {
                (Plan::UseKeys { refresh }, Some(keys)) => {
                    if refresh {
                        st.refreshing = true;
                        let (me, entry, target) = (self.clone(), entry.clone(), target.clone());
                        tokio::spawn(async move { me.refresh(&entry, &target, timeout).await });
                    }
                    return Ok(keys);
                }
                (Plan::FailFast, _) => return Err(last_error(&st)),
                _ => {}
            }
        }
        // The first fetch: one at a time; who waited takes the result of the one before.
        let Ok(_guard) = tokio::time::timeout(timeout, entry.fetching.lock()).await else {
            return Err(format!("waited {timeout:?} for another fetch of {target}"));
        };
        {
            let st = lock(&entry.state);
            match (
                plan(&st, Instant::now(), self.settings.refresh),
                st.keys.clone(),
            ) {
                (Plan::UseKeys { .. }, Some(keys)) => return Ok(keys),
                (Plan::FailFast, _) => return Err(last_error(&st)),
                _ => {}
            }
        }
        let result = self.fetch_logged(target, timeout, false).await;
        let mut st = lock(&entry.state);
        record(
            &mut st,
            result.clone(),
            Instant::now(),
            self.settings.refresh,
        );
        result
    }

    async fn refresh(&self, entry: &Entry, target: &Target, timeout: Duration) {
        let result = self.fetch_logged(target, timeout, true).await;
        let mut st = lock(&entry.state);
        record(&mut st, result, Instant::now(), self.settings.refresh);
    }

    /// Fetch and log the outcome (never the keys themselves).
    async fn fetch_logged(
        &self,
        target: &Target,
        timeout: Duration,
        have_keys: bool,
    ) -> Result<Arc<KeySet>, String> {
        let started = Instant::now();
        let uri = target.to_string();
        let fetch = async {
            match target {
                Target::Jwks(u) => KeySet::parse(&self.fetch_text(u).await?),
                Target::Discovery(u) => {
                    let doc = self.fetch_text(u).await?;
                    let jwks = jwks_uri_of(&doc)?;
                    let text = self
                        .fetch_text(&jwks)
                        .await
                        .map_err(|e| format!("its jwks_uri {jwks}: {e}"))?;
                    KeySet::parse(&text).map_err(|e| format!("its jwks_uri {jwks}: {e}"))
                }
            }
        };
        let r = match tokio::time::timeout(timeout, fetch).await {
            Ok(r) => r,
            Err(_) => Err(format!("no answer within {timeout:?}")),
        };
        match &r {
            Ok(keys) => info!(
                uri = %uri,
                keys = keys.len(),
                skipped_keys = keys.skipped,
                millis = started.elapsed().as_millis() as u64,
                "JWKS fetched from {uri}"
            ),
            Err(e) if have_keys => warn!(
                uri = %uri,
                "JWKS refresh from {uri} failed, keeping the keys fetched before: {e}"
            ),
            Err(e) => warn!(uri = %uri, "JWKS could not be fetched from {uri}: {e}"),
        }
        r.map(Arc::new)
    }

    fn tls(&self) -> Result<Arc<rustls::ClientConfig>, String> {
        self.tls
            .get_or_init(|| client_config(self.settings.extra_roots.as_deref()))
            .clone()
    }

    /// One bounded GET: status 200, at most `MAX_BODY_BYTES` of UTF-8.
    async fn fetch_text(&self, uri: &str) -> Result<String, String> {
        let u: http::Uri = uri.parse().map_err(|e| format!("not a URL: {e}"))?;
        let https = match u.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err("not an http:// or https:// URL".into()),
        };
        let host = u.host().ok_or("no host in the URL")?;
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let port = u.port_u16().unwrap_or(if https { 443 } else { 80 });
        let addrs: Vec<std::net::SocketAddr> = tokio::net::lookup_host((bare, port))
            .await
            .map_err(|e| format!("cannot resolve {bare}: {e}"))?
            .collect();
        let mut last = format!("{bare} resolves to no address");
        let mut tcp = None;
        for a in addrs {
            match tokio::net::TcpStream::connect(a).await {
                Ok(s) => {
                    tcp = Some(s);
                    break;
                }
                Err(e) => last = format!("connect to {a}: {e}"),
            }
        }
        let tcp = tcp.ok_or(last)?;
        let io: Box<dyn Io> = if https {
            let name = ServerName::try_from(bare.to_string())
                .map_err(|e| format!("{bare}: not a server name: {e}"))?;
            let tls = tokio_rustls::TlsConnector::from(self.tls()?)
                .connect(name, tcp)
                .await
                .map_err(|e| format!("TLS with {bare}: {e}"))?;
            Box::new(tls)
        } else {
            Box::new(tcp)
        };
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
            .await
            .map_err(|e| format!("HTTP: {e}"))?;
        let driver = tokio::spawn(conn);
        let authority = u
            .authority()
            .map(|a| a.as_str().rsplit('@').next().unwrap_or("").to_string())
            .unwrap_or_default();
        let req = hyper::Request::get(u.path_and_query().map_or("/", |p| p.as_str()))
            .header(http::header::HOST, authority)
            .header(http::header::ACCEPT, "application/json")
            .header(http::header::USER_AGENT, "remora-proxy")
            .body(Empty::<Bytes>::new())
            .map_err(|e| format!("request: {e}"))?;
        let result = async {
            let resp = sender
                .send_request(req)
                .await
                .map_err(|e| format!("HTTP: {e}"))?;
            if resp.status() != http::StatusCode::OK {
                return Err(format!("HTTP status {}", resp.status()));
            }
            let body = Limited::new(resp.into_body(), MAX_BODY_BYTES)
                .collect()
                .await
                .map_err(|e| format!("body (at most {MAX_BODY_BYTES} bytes): {e}"))?
                .to_bytes();
            String::from_utf8(body.to_vec()).map_err(|_| "body is not UTF-8".to_string())
        }
        .await;
        driver.abort();
        result
    }
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

fn last_error(st: &EntryState) -> String {
    st.last_error
        .clone()
        .unwrap_or_else(|| "not fetched yet".to_string())
}

/// rustls client settings for JWKS servers: the system roots and the extra ones, ring, TLS 1.2
/// and 1.3, ALPN `http/1.1`.
fn client_config(extra: Option<&std::path::Path>) -> Result<Arc<rustls::ClientConfig>, String> {
    let mut roots = rustls::RootCertStore::empty();
    if let Err(e) = pingora::tls::load_platform_certs_incl_env_into_store(&mut roots) {
        warn!("JWKS fetching: system CA certificates could not be loaded: {e}");
    }
    if let Some(p) = extra {
        let iter = CertificateDer::pem_file_iter(p)
            .map_err(|e| format!("--jwks-ca-file {}: cannot read: {e}", p.display()))?;
        for c in iter {
            let c = c.map_err(|e| format!("--jwks-ca-file {}: {e}", p.display()))?;
            roots
                .add(c)
                .map_err(|e| format!("--jwks-ca-file {}: {e}", p.display()))?;
        }
    }
    if roots.is_empty() {
        return Err(
            "no CA certificate to verify the JWKS server with (no system roots, no --jwks-ca-file)"
                .into(),
        );
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut c = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS settings: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    c.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(c))
}

/// Read the extra roots once at start-up, to fail early on a bad `--jwks-ca-file`.
pub fn check_extra_roots(path: &std::path::Path) -> Result<usize, String> {
    let mut n = 0;
    let iter = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("--jwks-ca-file {}: cannot read: {e}", path.display()))?;
    for c in iter {
        let c = c.map_err(|e| format!("--jwks-ca-file {}: {e}", path.display()))?;
        rustls::RootCertStore::empty()
            .add(c)
            .map_err(|e| format!("--jwks-ca-file {}: {e}", path.display()))?;
        n += 1;
    }
    if n == 0 {
        return Err(format!(
            "--jwks-ca-file {}: no PEM certificate found",
            path.display()
        ));
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> Arc<KeySet> {
        Arc::new(KeySet::parse(r#"{"keys":[{"kty":"oct","k":"c2VjcmV0","alg":"HS256"}]}"#).unwrap())
    }

    #[test]
    fn when_to_fetch() {
        let t0 = Instant::now();
        let every = Duration::from_secs(1200);
        let s = |f: &dyn Fn(&mut EntryState)| {
            let mut st = EntryState::default();
            f(&mut st);
            st
        };
        let fresh = s(&|st| {
            st.keys = Some(keys());
            st.fetched_at = Some(t0);
        });
        let cases: Vec<(&str, EntryState, Instant, Plan)> = vec![
            ("never fetched", EntryState::default(), t0, Plan::FetchNow),
            (
                "fresh keys",
                fresh.clone(),
                t0 + Duration::from_secs(10),
                Plan::UseKeys { refresh: false },
            ),
            (
                "stale keys",
                fresh.clone(),
                t0 + every,
                Plan::UseKeys { refresh: true },
            ),
            (
                "stale, a refresh is running",
                s(&|st| {
                    *st = fresh.clone();
                    st.refreshing = true;
                }),
                t0 + every,
                Plan::UseKeys { refresh: false },
            ),
            (
                "stale, the last refresh failed a moment ago",
                s(&|st| {
                    *st = fresh.clone();
                    st.not_before = Some(t0 + every + Duration::from_secs(30));
                }),
                t0 + every + Duration::from_secs(1),
                Plan::UseKeys { refresh: false },
            ),
            (
                "first fetch failed a moment ago",
                s(&|st| st.not_before = Some(t0 + RETRY_WITHOUT_KEYS)),
                t0,
                Plan::FailFast,
            ),
            (
                "first fetch failed a while ago",
                s(&|st| st.not_before = Some(t0 + RETRY_WITHOUT_KEYS)),
                t0 + RETRY_WITHOUT_KEYS,
                Plan::FetchNow,
            ),
        ];
        for (name, st, now, want) in cases {
            assert_eq!(plan(&st, now, every), want, "{name}");
        }
    }

    #[test]
    fn failures_keep_the_last_good_keys() {
        let t0 = Instant::now();
        let every = Duration::from_secs(1200);
        let mut st = EntryState::default();
        record(&mut st, Err("connection refused".into()), t0, every);
        assert!(st.keys.is_none());
        assert_eq!(st.not_before, Some(t0 + RETRY_WITHOUT_KEYS));
        assert_eq!(last_error(&st), "connection refused");
        record(&mut st, Ok(keys()), t0 + Duration::from_secs(2), every);
        assert!(st.keys.is_some() && st.last_error.is_none() && st.not_before.is_none());
        st.refreshing = true;
        record(&mut st, Err("HTTP status 500".into()), t0 + every, every);
        assert!(st.keys.is_some(), "a failed refresh keeps the keys");
        assert!(!st.refreshing);
        assert_eq!(st.fetched_at, Some(t0 + Duration::from_secs(2)));
        assert_eq!(st.not_before, Some(t0 + every + RETRY_WITH_KEYS));
        // A short refresh interval also shortens the wait after a failure.
        record(&mut st, Err("x".into()), t0, Duration::from_secs(1));
        assert_eq!(st.not_before, Some(t0 + Duration::from_secs(1)));
    }

    #[test]
    fn a_discovery_target_names_itself() {
        assert_eq!(
            Target::Discovery("https://i/.well-known/openid-configuration".into()).to_string(),
            "https://i/.well-known/openid-configuration (OpenID discovery)"
        );
    }

    #[test]
    fn the_cache_is_bounded() {
        let j = Jwks::default();
        for i in 0..MAX_URIS + 10 {
            let e = j.entry(&Target::Jwks(format!("https://idp.example/{i}")));
            lock(&e.state).last_used = Some(Instant::now());
        }
        assert_eq!(lock(&j.entries).len(), MAX_URIS);
    }
}
