//! TLS with hot certificate reload: the server config resolves the current certificate from an
//! `ArcSwap`, which a watcher replaces when the files change (a Secret volume update). New
//! connections get the new certificate; a broken new pair is logged and the old one kept.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context};
use arc_swap::ArcSwap;
use notify::Watcher;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Installs the ring crypto provider (the workspace's rustls is ring-only). Idempotent.
pub fn install_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Reads and checks a certificate chain and its key.
pub fn load_pair(cert: &Path, key: &Path) -> anyhow::Result<CertifiedKey> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("reading TLS certificate {}", cert.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("parsing TLS certificate {}", cert.display()))?;
    if certs.is_empty() {
        return Err(anyhow!(
            "TLS certificate {}: no PEM CERTIFICATE block found",
            cert.display()
        ));
    }
    check_validity(&certs[0], cert, time::OffsetDateTime::now_utc())?;
    let key_der = PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("reading TLS key {}", key.display()))?;
    CertifiedKey::from_der(certs, key_der, &rustls::crypto::ring::default_provider()).map_err(|e| {
        anyhow!(
            "TLS key {} does not fit certificate {}: {e}",
            key.display(),
            cert.display()
        )
    })
}

/// Refuse a serving certificate outside its validity period: the API server would reject every
/// handshake with it, so a reload keeps the previous one and a start fails with this line.
fn check_validity(
    leaf: &CertificateDer<'_>,
    file: &Path,
    now: time::OffsetDateTime,
) -> anyhow::Result<()> {
    let (_, c) = x509_parser::parse_x509_certificate(leaf.as_ref()).map_err(|e| {
        anyhow!(
            "TLS certificate {}: not an X.509 certificate ({e})",
            file.display()
        )
    })?;
    let v = c.validity();
    let (from, until) = (v.not_before.to_datetime(), v.not_after.to_datetime());
    if now < from {
        return Err(anyhow!(
            "TLS certificate {}: not valid before {} (clock skew or a certificate issued for later)",
            file.display(),
            crate::certs::issue::fmt_time(from)
        ));
    }
    if now > until {
        return Err(anyhow!(
            "TLS certificate {}: expired at {}",
            file.display(),
            crate::certs::issue::fmt_time(until)
        ));
    }
    Ok(())
}

/// The certificate currently served: from files (hot-reloaded on change), or set by the
/// certificate manager (`--manage-certs`, see `crate::certs`).
#[derive(Debug)]
pub struct CertResolver {
    current: ArcSwap<CertifiedKey>,
    /// The PEM files behind `current`; `None` when the certificate manager sets it.
    files: Option<(PathBuf, PathBuf)>,
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

impl CertResolver {
    pub fn load(cert: &Path, key: &Path) -> anyhow::Result<Arc<Self>> {
        let pair = load_pair(cert, key)?;
        Ok(Arc::new(CertResolver {
            current: ArcSwap::from_pointee(pair),
            files: Some((cert.to_path_buf(), key.to_path_buf())),
        }))
    }

    /// A resolver serving `pair` until [`CertResolver::set`] replaces it (no files).
    pub fn from_pair(pair: CertifiedKey) -> Arc<Self> {
        Arc::new(CertResolver {
            current: ArcSwap::from_pointee(pair),
            files: None,
        })
    }

    /// Serves `pair` to new connections; returns whether the certificate changed.
    pub fn set(&self, pair: CertifiedKey) -> bool {
        if pair.cert == self.current.load().cert {
            return false;
        }
        self.current.store(Arc::new(pair));
        crate::metrics::cert_reloads("ok");
        true
    }

    /// The certificate chain (DER) currently served.
    pub fn current_chain(&self) -> Vec<CertificateDer<'static>> {
        self.current.load().cert.clone()
    }

    /// Re-reads the files; returns whether the served certificate changed. Always `false` for
    /// a resolver without files.
    pub fn reload(&self) -> bool {
        let Some((cert, key)) = &self.files else {
            return false;
        };
        match load_pair(cert, key) {
            Ok(pair) => {
                if pair.cert != self.current.load().cert {
                    self.current.store(Arc::new(pair));
                    crate::metrics::cert_reloads("ok");
                    tracing::info!(cert = %cert.display(), "TLS certificate changed; new connections use it");
                    return true;
                }
                false
            }
            Err(e) => {
                crate::metrics::cert_reloads("error");
                tracing::warn!(error = %format!("{e:#}"), "TLS certificate reload failed; keeping the current one");
                false
            }
        }
    }

    /// Watches the directories of both files and polls every `poll` as a fallback. Does
    /// nothing for a resolver without files.
    pub fn spawn_watcher(self: &Arc<Self>, poll: Duration) {
        let Some((cert, key)) = &self.files else {
            return;
        };
        let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(16);
        let mut watchers = Vec::new();
        let mut dirs: Vec<PathBuf> = [cert, key]
            .iter()
            .map(|p| {
                p.parent()
                    .map(Path::to_path_buf)
                    .unwrap_or_else(|| PathBuf::from("."))
            })
            .collect();
        dirs.dedup();
        for d in dirs {
            watchers.push(watch_dir(&d, tx.clone()));
        }
        let me = self.clone();
        tokio::spawn(async move {
            let _keep = watchers;
            let mut tick = tokio::time::interval(poll);
            tick.tick().await;
            let mut events = true;
            loop {
                tokio::select! {
                    ev = rx.recv(), if events => {
                        if ev.is_none() {
                            // No watcher left (e.g. inotify unavailable): keep polling.
                            events = false;
                            continue;
                        }
                        // Let the writer (kubelet symlink swap, cert then key) finish.
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        while rx.try_recv().is_ok() {}
                    }
                    _ = tick.tick() => {}
                }
                me.reload();
            }
        });
    }

    /// A rustls server config (TLS 1.2 and 1.3, h2 and http/1.1) using this resolver.
    pub fn server_config(self: &Arc<Self>) -> anyhow::Result<rustls::ServerConfig> {
        let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_cert_resolver(self.clone());
        cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        // No session resumption: a resumed session would keep the identity of the certificate
        // it began with, so after a rotation every new connection does a full handshake with the
        // current certificate. (The API server keeps connections alive; the cost is small.)
        cfg.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        cfg.send_tls13_tickets = 0;
        Ok(cfg)
    }
}

/// Watches `dir` (non-recursively) and sends `()` on every change in it (reads are not
/// changes). `None` when watching fails (the caller's poll still catches changes).
pub fn watch_dir(
    dir: &Path,
    tx: tokio::sync::mpsc::Sender<()>,
) -> Option<notify::RecommendedWatcher> {
    let mut w = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        // Reading the files (each reload does) is an `Access` event, not a change: reacting to
        // it would reload again and again.
        if res.is_ok_and(|ev| !matches!(ev.kind, notify::EventKind::Access(_))) {
            let _ = tx.try_send(());
        }
    })
    .map_err(|e| tracing::warn!(error = %e, "file watcher unavailable; polling only"))
    .ok()?;
    if let Err(e) = w.watch(dir, notify::RecursiveMode::NonRecursive) {
        tracing::warn!(dir = %dir.display(), error = %e, "cannot watch directory; polling only");
        return None;
    }
    Some(w)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reading the certificate files (as every reload does) is not a change; writing one is.
    #[tokio::test]
    async fn reads_of_a_watched_directory_are_not_changes() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("tls.crt");
        std::fs::write(&f, "x").unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(16);
        let _w = watch_dir(dir.path(), tx).expect("inotify");
        for _ in 0..3 {
            std::fs::read(&f).unwrap();
            let _ = std::fs::read_dir(dir.path()).unwrap().count();
        }
        let woke = tokio::time::timeout(Duration::from_millis(300), rx.recv()).await;
        assert!(woke.is_err(), "a read woke the watcher");
        std::fs::write(&f, "y").unwrap();
        let woke = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await;
        assert!(
            matches!(woke, Ok(Some(()))),
            "a write did not wake the watcher"
        );
    }

    fn cert(from: (i32, u8, u8), until: (i32, u8, u8)) -> CertificateDer<'static> {
        let mut p =
            rcgen::CertificateParams::new(vec!["remora-webhook.remora-system.svc".into()]).unwrap();
        p.not_before = rcgen::date_time_ymd(from.0, from.1, from.2);
        p.not_after = rcgen::date_time_ymd(until.0, until.1, until.2);
        let key = rcgen::KeyPair::generate().unwrap();
        p.self_signed(&key).unwrap().der().clone()
    }

    #[test]
    fn certificates_outside_their_validity_are_refused() {
        let now = time::OffsetDateTime::now_utc();
        let file = Path::new("/etc/remora/certs/tls.crt");
        let y = now.year();
        check_validity(&cert((y - 1, 1, 1), (y + 1, 12, 31)), file, now).unwrap();
        let e = check_validity(&cert((y - 3, 1, 1), (y - 2, 1, 1)), file, now)
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            format!(
                "TLS certificate /etc/remora/certs/tls.crt: expired at {}-01-01T00:00:00Z",
                y - 2
            )
        );
        let e = check_validity(&cert((y + 2, 1, 1), (y + 3, 1, 1)), file, now)
            .unwrap_err()
            .to_string();
        assert!(e.contains("not valid before"), "{e}");
    }
}
