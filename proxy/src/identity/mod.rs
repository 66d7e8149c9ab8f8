//! The workload's identity: a SPIFFE certificate from the mesh CA, held in memory and renewed.
//!
//! - `ca_client`: one request (new key, CSR, Istio's `CreateCertificate` call).
//! - `material`: the certificate made usable (TLS configurations, SPIFFE id, validity) and the
//!   checks of peers' identities.
//! - here: the settings, the current certificate (swapped atomically at rotation), the
//!   schedule (renew at a fraction of the lifetime, with jitter; back off while the CA fails),
//!   and what readiness and `/config_dump` say about it.
//!
//! A failing CA at renewal leaves the current certificate serving until it expires, with a
//! warning per attempt and `remora_workload_cert_expiry_seconds` falling.

pub mod ca_client;
pub mod material;
pub mod server_ids;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwapOption;
use tracing::{info, warn};

pub use material::{Carried, Material};

/// Settings of the identity client (`--ca-address` and friends).
#[derive(Clone, Debug)]
pub struct IdentityConfig {
    pub ca: ca_client::Endpoint,
    pub root_file: PathBuf,
    pub token_file: PathBuf,
    pub trust_domain: String,
    pub namespace: String,
    pub service_account: String,
    /// Lifetime asked of the CA.
    pub cert_ttl: Duration,
    /// Renew once this fraction of the lifetime has passed (0.5 = half-life).
    pub rotate_at: f64,
}

impl IdentityConfig {
    /// `spiffe://<trust domain>/ns/<namespace>/sa/<service account>`.
    pub fn spiffe_id(&self) -> String {
        format!(
            "spiffe://{}/ns/{}/sa/{}",
            self.trust_domain, self.namespace, self.service_account
        )
    }
}

/// The last attempt's outcome, for readiness, logs and the dump.
#[derive(Clone, Debug, Default)]
pub struct Status {
    pub attempts: u64,
    pub last_error: Option<String>,
    pub next_renewal: Option<SystemTime>,
}

/// The workload's identity: settings, the current certificate, the last attempt's outcome.
pub struct Identity {
    pub config: IdentityConfig,
    current: ArcSwapOption<Material>,
    status: Mutex<Status>,
    /// The SPIFFE ids outbound mTLS servers presented, by endpoint (for the metrics'
    /// `destination_principal` of requests on pooled connections).
    pub servers: server_ids::ServerIds,
}

impl Identity {
    pub fn new(config: IdentityConfig) -> Identity {
        Identity {
            config,
            current: ArcSwapOption::empty(),
            status: Mutex::new(Status::default()),
            servers: Default::default(),
        }
    }

    /// The current certificate, if one was issued and has not expired.
    pub fn current(&self) -> Option<Arc<Material>> {
        let m = self.current.load_full()?;
        (m.remaining(SystemTime::now()) > 0.0).then_some(m)
    }

    /// The current certificate even when expired (for the dump).
    pub fn last(&self) -> Option<Arc<Material>> {
        self.current.load_full()
    }

    pub fn status(&self) -> Status {
        self.status.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Install a certificate (tests and the renewal loop).
    pub fn install(&self, m: Material) {
        self.current.store(Some(Arc::new(m)));
    }

    /// `None` when ready; else what readiness waits for.
    pub fn waiting_for(&self) -> Option<String> {
        if self.current().is_some() {
            return None;
        }
        let st = self.status();
        let why = match (&st.last_error, self.last()) {
            (_, Some(m)) => format!("the certificate {} expired; renewing", m.serial),
            (Some(e), None) => format!("last attempt failed: {e}"),
            (None, None) => "first request under way".to_string(),
        };
        Some(format!(
            "waiting for the workload certificate ({}) from the CA at {}: {why}",
            self.config.spiffe_id(),
            self.config.ca.address
        ))
    }

    /// `/config_dump`'s `identity` section.
    pub fn dump(&self, inbound_mtls_connections: usize) -> remora_model::dump::IdentityDump {
        let now = SystemTime::now();
        let unix = |t: SystemTime| {
            t.duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0)
        };
        let st = self.status();
        let last = self.last();
        let state = match &last {
            None => "waiting",
            Some(m) if m.remaining(now) <= 0.0 => "expired",
            Some(_) => "valid",
        };
        remora_model::dump::IdentityDump {
            spiffe_id: self.config.spiffe_id(),
            ca_address: self.config.ca.address.clone(),
            trust_domain: self.config.trust_domain.clone(),
            state: state.to_string(),
            serial: last.as_ref().map(|m| m.serial.clone()),
            not_before: last.as_ref().map(|m| unix(m.not_before)),
            not_after: last.as_ref().map(|m| unix(m.not_after)),
            expires_in_seconds: last.as_ref().map(|m| m.remaining(now) as i64),
            next_renewal_in_seconds: st.next_renewal.map(|t| match t.duration_since(now) {
                Ok(d) => d.as_secs() as i64,
                Err(e) => -(e.duration().as_secs() as i64),
            }),
            requests: st.attempts,
            last_error: st.last_error,
            chain_pem: last
                .as_ref()
                .map(|m| m.chain_pem.clone())
                .unwrap_or_default(),
            roots_pem: last
                .as_ref()
                .map(|m| m.roots_pem.clone())
                .unwrap_or_default(),
            inbound_mtls_connections,
        }
    }

    /// One request to the CA; on success the new certificate is installed.
    pub async fn renew_once(&self) -> Result<Arc<Material>, String> {
        let c = &self.config;
        let roots = std::fs::read_to_string(&c.root_file)
            .map_err(|e| format!("root certificate file {}: {e}", c.root_file.display()))?;
        let token = std::fs::read_to_string(&c.token_file)
            .map_err(|e| format!("token file {}: {e}", c.token_file.display()))?;
        let id = c.spiffe_id();
        let req = ca_client::new_request(&id)?;
        let chain =
            ca_client::create_certificate(&c.ca, &roots, &token, &req.csr_pem, c.cert_ttl).await?;
        let m = Arc::new(Material::build(&chain, &req.key_pkcs8, &roots, &id)?);
        self.current.store(Some(m.clone()));
        Ok(m)
    }

    fn note(&self, f: impl FnOnce(&mut Status)) {
        if let Ok(mut s) = self.status.lock() {
            f(&mut s);
        }
    }

    /// Keep a valid certificate: request one now, then renew on schedule, retrying with
    /// backoff while the CA fails; count the requests and keep the remaining-lifetime gauge in
    /// `metrics`. Runs until the process ends.
    pub async fn run(self: Arc<Self>, metrics: Arc<crate::telemetry::Metrics>) {
        let mut failures: u32 = 0;
        loop {
            let attempt = self.renew_once().await;
            let now = SystemTime::now();
            let wait = match attempt {
                Ok(m) => {
                    failures = 0;
                    let next = renewal_time(
                        now,
                        m.not_before,
                        m.not_after,
                        self.config.rotate_at,
                        jitter(),
                    );
                    info!(
                        identity = %m.spiffe_id,
                        serial = %m.serial,
                        expires_in_s = m.remaining(now) as u64,
                        renew_in_s = next.duration_since(now).unwrap_or_default().as_secs(),
                        "workload certificate issued by the CA at {}",
                        self.config.ca.address
                    );
                    metrics.cert_requests.with_label_values(&["issued"]).inc();
                    self.note(|s| {
                        s.attempts += 1;
                        s.last_error = None;
                        s.next_renewal = Some(next);
                    });
                    next.duration_since(now).unwrap_or_default()
                }
                Err(e) => {
                    failures = failures.saturating_add(1);
                    let wait = backoff(failures);
                    let left = self.last().map(|m| m.remaining(now));
                    match left {
                        Some(l) if l > 0.0 => warn!(
                            "workload certificate renewal failed ({e}); the current certificate stays in use for {}s more; retrying in {:.1}s",
                            l as u64,
                            wait.as_secs_f64()
                        ),
                        _ => warn!(
                            "no workload certificate yet: {e}; retrying in {:.1}s (the proxy stays unready until one is issued)",
                            wait.as_secs_f64()
                        ),
                    }
                    metrics.cert_requests.with_label_values(&["failed"]).inc();
                    self.note(|s| {
                        s.attempts += 1;
                        s.last_error = Some(e);
                        s.next_renewal = Some(now + wait);
                    });
                    wait
                }
            };
            // The remaining-lifetime gauge follows the clock while waiting, and a change of the
            // root file (the kubelet updates the root ConfigMap's volume when the CA publishes
            // a new root) renews at once, so peers and the CA are verified with the new roots.
            let until = tokio::time::Instant::now() + wait;
            let roots_then = std::fs::read(&self.config.root_file).ok();
            loop {
                if let Some(m) = self.last() {
                    metrics
                        .cert_expiry_seconds
                        .set(m.remaining(SystemTime::now()));
                }
                let tick = tokio::time::Instant::now() + Duration::from_secs(5);
                if tick >= until {
                    tokio::time::sleep_until(until).await;
                    break;
                }
                tokio::time::sleep_until(tick).await;
                let roots_now = std::fs::read(&self.config.root_file).ok();
                if failures == 0 && roots_now.is_some() && roots_now != roots_then {
                    info!(
                        "the root certificate file {} changed: renewing the workload certificate now",
                        self.config.root_file.display()
                    );
                    break;
                }
            }
        }
    }
}

/// A random factor in [-1, 1] for the renewal jitter.
fn jitter() -> f64 {
    rand::random::<f64>() * 2.0 - 1.0
}

/// When to renew a certificate received at `received`, valid from `not_before` to
/// `not_after`: at `rotate_at` of the validity still ahead when it arrived (CAs backdate
/// `not_before` for clock skew, which must not pull the renewal into the past), moved by up to
/// 5 % of that span by `jitter` (in [-1, 1]), never later than 90 % of it.
pub fn renewal_time(
    received: SystemTime,
    not_before: SystemTime,
    not_after: SystemTime,
    rotate_at: f64,
    jitter: f64,
) -> SystemTime {
    let start = received.max(not_before);
    let life = not_after
        .duration_since(start)
        .unwrap_or_default()
        .as_secs_f64();
    let at = (rotate_at + 0.05 * jitter.clamp(-1.0, 1.0)).clamp(0.0, 0.9);
    start + Duration::from_secs_f64(life * at)
}

/// Wait after the `n`th failure in a row: 1 s doubling, at most 30 s.
pub fn backoff(n: u32) -> Duration {
    let secs = 1u64 << n.saturating_sub(1).min(5);
    Duration::from_secs(secs.min(30))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_schedule_table() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let day = Duration::from_secs(86_400);
        let cases: &[(f64, f64, u64)] = &[
            (0.5, 0.0, 43_200),
            (0.5, 1.0, 47_520),
            (0.5, -1.0, 38_880),
            (0.9, 1.0, 77_760),
            (0.0, -1.0, 0),
        ];
        for (at, j, want) in cases {
            let got = renewal_time(t0, t0, t0 + day, *at, *j)
                .duration_since(t0)
                .unwrap()
                .as_secs();
            assert_eq!(got, *want, "rotate_at {at} jitter {j}");
        }
        // A two-minute certificate renews after about a minute.
        let got = renewal_time(t0, t0, t0 + Duration::from_secs(120), 0.5, 0.0);
        assert_eq!(got.duration_since(t0).unwrap().as_secs(), 60);
        // Backdated by a minute: half of the minute still ahead, never in the past.
        let got = renewal_time(
            t0,
            t0 - Duration::from_secs(60),
            t0 + Duration::from_secs(60),
            0.5,
            0.0,
        );
        assert_eq!(got.duration_since(t0).unwrap().as_secs(), 30);
        let got = renewal_time(
            t0,
            t0 - Duration::from_secs(60),
            t0 + Duration::from_secs(60),
            0.1,
            -1.0,
        );
        assert_eq!(got.duration_since(t0).unwrap().as_secs(), 3);
    }

    #[test]
    fn backoff_doubles_to_a_cap() {
        let got: Vec<u64> = (1..=8).map(|n| backoff(n).as_secs()).collect();
        assert_eq!(got, vec![1, 2, 4, 8, 16, 30, 30, 30]);
    }
}
