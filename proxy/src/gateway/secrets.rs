//! `--gateway-credentials-source api`: the gateway reads the Secrets of its own namespace
//! through the Kubernetes API (a list and watch of Secrets in that one namespace, so a Role there
//! is all it needs) and writes each one that holds TLS material into
//! `--gateway-credentials-dir/<name>/` in the kubelet's atomic layout (`..<version>/` files,
//! `..data` swapped in one rename, each key a link into `..data`). Everything downstream is the
//! mounted-files path: a new, changed or deleted Secret is seen by the same file check that makes
//! the gateway's plan again ([`super::GatewayRouter::current`]), so `credentialName` works like
//! Istio's — create the Secret, no change to the gateway's Deployment.
//!
//! Only the keys a gateway reads are written (`tls.crt`, `tls.key`, `ca.crt`, `ca.crl` and
//! Istio's `cert`, `key`, `cacert`); a Secret with none of them is not written. Names come from
//! the API, and are checked to be DNS subdomains before they name a directory. At most
//! [`MAX_SECRETS`] Secrets are written.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::{Api, Client};
use tracing::{info, warn};

/// The keys a gateway reads from a `credentialName` Secret (both layouts).
pub const KEYS: [&str; 7] = [
    "tls.crt", "tls.key", "ca.crt", "ca.crl", "cert", "key", "cacert",
];
/// The most Secrets written (more are left out with a warning).
pub const MAX_SECRETS: usize = 1000;

/// The files a Secret gives the gateway (its known keys), `None` when it has none.
pub fn files_of(secret: &Secret) -> Option<BTreeMap<&'static str, Vec<u8>>> {
    let data = secret.data.as_ref()?;
    let files: BTreeMap<&'static str, Vec<u8>> = KEYS
        .iter()
        .filter_map(|k| data.get(*k).map(|v| (*k, v.0.clone())))
        .collect();
    (!files.is_empty()).then_some(files)
}

/// Whether `name` is a DNS subdomain (what the API server allows for a Secret's name), so it
/// can name a directory: lower-case letters, digits, `-` and `.`, at most 253, no `..`.
pub fn safe_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && name
            .split('.')
            .all(|l| !l.is_empty() && !l.starts_with('-') && !l.ends_with('-'))
}

/// Write `files` as `dir/name/` in the kubelet's layout, unless it already holds exactly them.
/// Returns whether anything was written.
pub fn write(
    dir: &Path,
    name: &str,
    files: &BTreeMap<&'static str, Vec<u8>>,
) -> std::io::Result<bool> {
    let base = dir.join(name);
    let current: BTreeMap<&'static str, Vec<u8>> = KEYS
        .iter()
        .filter_map(|k| {
            std::fs::read(base.join("..data").join(k))
                .ok()
                .map(|v| (*k, v))
        })
        .collect();
    if &current == files {
        return Ok(false);
    }
    std::fs::create_dir_all(&base)?;
    let version = next_version(&base);
    let vdir = base.join(&version);
    std::fs::create_dir(&vdir)?;
    for (k, v) in files {
        write_private(&vdir.join(k), v)?;
    }
    let tmp = base.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(&version, &tmp)?;
    std::fs::rename(&tmp, base.join("..data"))?;
    for k in KEYS {
        let link = base.join(k);
        let wanted = files.contains_key(k);
        let present = std::fs::symlink_metadata(&link).is_ok();
        if wanted && !present {
            std::os::unix::fs::symlink(format!("..data/{k}"), &link)?;
        } else if !wanted && present {
            std::fs::remove_file(&link)?;
        }
    }
    // Older versions: nothing points at them any more.
    for e in std::fs::read_dir(&base)?.flatten() {
        let n = e.file_name().to_string_lossy().to_string();
        if n.starts_with("..v") && n != version {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
    Ok(true)
}

fn next_version(base: &Path) -> String {
    let last = std::fs::read_link(base.join("..data"))
        .ok()
        .and_then(|p| {
            p.to_string_lossy()
                .strip_prefix("..v")
                .and_then(|n| n.parse::<u64>().ok())
        })
        .unwrap_or(0);
    format!("..v{}", last + 1)
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(bytes)
}

/// Remove `dir/name/` (a deleted Secret).
pub fn remove(dir: &Path, name: &str) -> std::io::Result<()> {
    match std::fs::remove_dir_all(dir.join(name)) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// What the watch has written, by Secret name.
struct Written {
    dir: PathBuf,
    names: BTreeSet<String>,
    capped: bool,
}

impl Written {
    fn apply(&mut self, s: &Secret) {
        let Some(name) = s.metadata.name.as_deref() else {
            return;
        };
        if !safe_name(name) {
            warn!(
                secret = name.escape_debug().to_string(),
                "gateway credentials: Secret name is not a DNS subdomain; not written"
            );
            return;
        }
        let Some(files) = files_of(s) else {
            // No TLS material (any more): nothing of it stays on disk.
            if self.names.remove(name) {
                self.delete(name);
            }
            return;
        };
        if !self.names.contains(name) && self.names.len() >= MAX_SECRETS {
            if !self.capped {
                self.capped = true;
                warn!("gateway credentials: more than {MAX_SECRETS} Secrets with TLS material in this namespace; Secret {name} and later ones are not written");
            }
            return;
        }
        match write(&self.dir, name, &files) {
            Ok(true) => {
                let keys: Vec<&str> = files.keys().copied().collect();
                info!(
                    secret = name,
                    ?keys,
                    resource_version = s.metadata.resource_version.as_deref().unwrap_or(""),
                    "gateway credentials: Secret written for credentialName {name}"
                );
                self.names.insert(name.to_string());
            }
            Ok(false) => {
                self.names.insert(name.to_string());
            }
            Err(e) => warn!(
                secret = name,
                "gateway credentials: writing Secret {name}: {e}"
            ),
        }
    }

    fn delete(&mut self, name: &str) {
        self.names.remove(name);
        match remove(&self.dir, name) {
            Ok(()) => info!(
                secret = name,
                "gateway credentials: Secret {name} deleted; its servers go down"
            ),
            Err(e) => warn!(
                secret = name,
                "gateway credentials: removing Secret {name}: {e}"
            ),
        }
    }
}

/// Watch the Secrets of `namespace` and keep `dir` in step, for ever (the watcher re-lists
/// after errors with kube's default backoff; each error is logged once until it recovers).
pub async fn watch(client: Client, namespace: String, dir: PathBuf) {
    if let Err(e) = std::fs::create_dir_all(&dir) {
        warn!(dir = %dir.display(), "gateway credentials: cannot create the directory: {e}");
    }
    let api: Api<Secret> = Api::namespaced(client, &namespace);
    let mut written = Written {
        // Secrets written by an earlier run of this pod are taken as known; the first list
        // removes those that are gone.
        names: std::fs::read_dir(&dir)
            .map(|r| {
                r.flatten()
                    .map(|e| e.file_name().to_string_lossy().to_string())
                    .filter(|n| safe_name(n))
                    .collect()
            })
            .unwrap_or_default(),
        dir,
        capped: false,
    };
    info!(namespace = %namespace, "gateway credentials: watching the Secrets of namespace {namespace} through the API");
    let mut listed: Option<BTreeSet<String>> = None;
    let mut failing = false;
    let mut stream = watcher::watcher(api, watcher::Config::default())
        .default_backoff()
        .boxed();
    while let Some(ev) = stream.next().await {
        match ev {
            Ok(Event::Init) => listed = Some(BTreeSet::new()),
            Ok(Event::InitApply(s)) => {
                if let (Some(l), Some(n)) = (listed.as_mut(), s.metadata.name.clone()) {
                    l.insert(n);
                }
                written.apply(&s);
            }
            Ok(Event::InitDone) => {
                let seen = listed.take().unwrap_or_default();
                let gone: Vec<String> = written.names.difference(&seen).cloned().collect();
                for n in gone {
                    written.delete(&n);
                }
                if failing {
                    info!("gateway credentials: the Secrets watch works again");
                    failing = false;
                }
            }
            Ok(Event::Apply(s)) => written.apply(&s),
            Ok(Event::Delete(s)) => {
                if let Some(n) = s.metadata.name.as_deref() {
                    if written.names.contains(n) {
                        written.delete(n);
                    }
                }
            }
            Err(e) => {
                if !failing {
                    warn!("gateway credentials: watching Secrets in {namespace}: {e} (retrying; the Secrets written so far stay)");
                    failing = true;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::ByteString;

    fn secret(name: &str, data: &[(&str, &str)]) -> Secret {
        let mut s = Secret::default();
        s.metadata.name = Some(name.into());
        s.data = Some(
            data.iter()
                .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
                .collect(),
        );
        s
    }

    #[test]
    fn only_tls_material_is_taken() {
        let f = files_of(&secret(
            "web",
            &[("tls.crt", "C"), ("tls.key", "K"), ("password", "p")],
        ))
        .unwrap();
        assert_eq!(
            f.keys().copied().collect::<Vec<_>>(),
            ["tls.crt", "tls.key"]
        );
        assert!(files_of(&secret("db", &[("password", "p")])).is_none());
        assert!(files_of(&Secret::default()).is_none());
        let f = files_of(&secret(
            "istio",
            &[("cert", "C"), ("key", "K"), ("cacert", "A")],
        ))
        .unwrap();
        assert_eq!(f.len(), 3);
    }

    #[test]
    fn names_must_be_dns_subdomains() {
        for ok in ["web-cert", "a", "a.b-c.d", "x1"] {
            assert!(safe_name(ok), "{ok}");
        }
        for bad in [
            "",
            "..",
            ".",
            "a/b",
            "../x",
            "A",
            "a..b",
            "-a",
            "a-",
            "a_b",
            &"x".repeat(254),
        ] {
            assert!(!safe_name(bad), "{bad}");
        }
    }

    #[test]
    fn written_in_the_kubelet_layout_replaced_atomically_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let first = files_of(&secret(
            "web",
            &[("tls.crt", "C1"), ("tls.key", "K1"), ("ca.crt", "A")],
        ))
        .unwrap();
        assert!(write(dir.path(), "web", &first).unwrap());
        let read = |k: &str| std::fs::read_to_string(dir.path().join("web").join(k)).ok();
        assert_eq!(read("tls.crt").as_deref(), Some("C1"));
        assert_eq!(read("ca.crt").as_deref(), Some("A"));
        // The same content again: nothing written (the gateway's file check sees no change).
        let inode = |p: PathBuf| {
            use std::os::unix::fs::MetadataExt;
            std::fs::metadata(p).unwrap().ino()
        };
        let before = inode(dir.path().join("web/tls.crt"));
        assert!(!write(dir.path(), "web", &first).unwrap());
        assert_eq!(inode(dir.path().join("web/tls.crt")), before);
        // New content: a new version, the old one gone, a key no longer present unlinked.
        let second = files_of(&secret("web", &[("tls.crt", "C2"), ("tls.key", "K2")])).unwrap();
        assert!(write(dir.path(), "web", &second).unwrap());
        assert_eq!(read("tls.crt").as_deref(), Some("C2"));
        assert_eq!(read("ca.crt"), None);
        assert_ne!(inode(dir.path().join("web/tls.crt")), before);
        let versions: Vec<String> = std::fs::read_dir(dir.path().join("web"))
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().to_string())
            .filter(|n| n.starts_with("..v"))
            .collect();
        assert_eq!(versions, ["..v2"]);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("web/tls.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        remove(dir.path(), "web").unwrap();
        assert!(!dir.path().join("web").exists());
        remove(dir.path(), "web").unwrap();
    }
}
