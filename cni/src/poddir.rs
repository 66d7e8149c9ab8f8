//! The node agent's directory of pod files (I/O): the files the plugin's `file` pod source
//! reads, `<dir>/<namespace>/<name>.json`, each written through a temporary file and a rename
//! (the plugin never reads half a file), removed when the pod is gone, and at most `max_files`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::podfile::{check_label, check_subdomain, PodFile};

/// What [`PodDir::put`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Put {
    Written,
    Unchanged,
}

/// What [`PodDir::resync`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Resync {
    pub written: usize,
    pub unchanged: usize,
    pub removed: usize,
    /// Pods not written: over the cap or failed (each logged by the caller).
    pub failed: usize,
}

pub struct PodDir {
    dir: PathBuf,
    max_files: usize,
    /// `(namespace, name)` → the content on disk.
    known: BTreeMap<(String, String), Value>,
}

impl PodDir {
    pub fn new(dir: PathBuf, max_files: usize) -> PodDir {
        PodDir {
            dir,
            max_files,
            known: BTreeMap::new(),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn len(&self) -> usize {
        self.known.len()
    }

    pub fn is_empty(&self) -> bool {
        self.known.is_empty()
    }

    fn path(&self, namespace: &str, name: &str) -> PathBuf {
        self.dir.join(namespace).join(format!("{name}.json"))
    }

    /// Write `f` unless the same content is already there.
    pub fn put(&mut self, f: &PodFile) -> Result<Put, String> {
        let key = (f.namespace.clone(), f.name.clone());
        if self.known.get(&key) == Some(&f.content) && self.path(&f.namespace, &f.name).is_file() {
            return Ok(Put::Unchanged);
        }
        if !self.known.contains_key(&key) && self.known.len() >= self.max_files {
            return Err(format!(
                "pod {}/{}: not written: the directory {} already holds {} pod files (--max-pod-files)",
                f.namespace,
                f.name,
                self.dir.display(),
                self.max_files
            ));
        }
        let ns_dir = self.dir.join(&f.namespace);
        std::fs::create_dir_all(&ns_dir)
            .map_err(|e| format!("cannot create {}: {e}", ns_dir.display()))?;
        let tmp = ns_dir.join(format!(".{}.json.tmp", f.name));
        let mut text = serde_json::to_vec(&f.content).map_err(|e| format!("cannot encode: {e}"))?;
        text.push(b'\n');
        std::fs::write(&tmp, text).map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
        let dst = self.path(&f.namespace, &f.name);
        if let Err(e) = std::fs::rename(&tmp, &dst) {
            let _ = std::fs::remove_file(&tmp);
            return Err(format!("cannot write {}: {e}", dst.display()));
        }
        self.known.insert(key, f.content.clone());
        Ok(Put::Written)
    }

    /// Remove the file of `namespace/name`; whether there was one.
    pub fn remove(&mut self, namespace: &str, name: &str) -> Result<bool, String> {
        self.known
            .remove(&(namespace.to_string(), name.to_string()));
        let p = self.path(namespace, name);
        match std::fs::remove_file(&p) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(format!("cannot remove {}: {e}", p.display())),
        }
    }

    /// Pod files on disk (`(namespace, name)`), whoever wrote them; only well-formed names.
    fn on_disk(&self) -> Result<BTreeSet<(String, String)>, String> {
        let mut out = BTreeSet::new();
        let rd = match std::fs::read_dir(&self.dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(format!("cannot list {}: {e}", self.dir.display())),
        };
        for ns in rd.filter_map(|e| e.ok()) {
            let Ok(ns_name) = ns.file_name().into_string() else {
                continue;
            };
            if check_label("namespace", &ns_name).is_err()
                || !ns.file_type().is_ok_and(|t| t.is_dir())
            {
                continue;
            }
            let Ok(files) = std::fs::read_dir(ns.path()) else {
                continue;
            };
            for f in files.filter_map(|e| e.ok()) {
                let Ok(file) = f.file_name().into_string() else {
                    continue;
                };
                let Some(name) = file.strip_suffix(".json") else {
                    continue;
                };
                if check_subdomain("name", name).is_ok() {
                    out.insert((ns_name.clone(), name.to_string()));
                }
            }
        }
        Ok(out)
    }

    /// After a (re-)list: write every listed pod, remove every other pod file in the
    /// directory (pods deleted while the agent was not watching). `failed` gets each pod not
    /// written, with the reason.
    pub fn resync(
        &mut self,
        files: &[PodFile],
        failed: &mut dyn FnMut(String),
    ) -> Result<Resync, String> {
        let mut r = Resync::default();
        let wanted: BTreeSet<(String, String)> = files
            .iter()
            .map(|f| (f.namespace.clone(), f.name.clone()))
            .collect();
        // Forget pods no longer listed first, so the cap counts the current pods only.
        let gone: Vec<(String, String)> = self
            .on_disk()?
            .into_iter()
            .chain(self.known.keys().cloned())
            .filter(|k| !wanted.contains(k))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        for (ns, name) in gone {
            if self.remove(&ns, &name)? {
                r.removed += 1;
            }
        }
        for f in files {
            match self.put(f) {
                Ok(Put::Written) => r.written += 1,
                Ok(Put::Unchanged) => r.unchanged += 1,
                Err(e) => {
                    r.failed += 1;
                    failed(e);
                }
            }
        }
        Ok(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::podfile::pod_file;
    use serde_json::json;

    fn file(ns: &str, name: &str, v: &str) -> PodFile {
        pod_file(&json!({"metadata": {"name": name, "namespace": ns,
            "annotations": {"remora.dev/capture": "cni", "v": v}}}))
        .unwrap()
    }

    #[test]
    fn writes_rewrites_removes_and_resyncs() {
        let tmp = tempfile::tempdir().unwrap();
        let mut d = PodDir::new(tmp.path().join("pods"), 2);
        let read = |ns: &str, n: &str| -> Value {
            serde_json::from_str(
                &std::fs::read_to_string(
                    tmp.path().join("pods").join(ns).join(format!("{n}.json")),
                )
                .unwrap(),
            )
            .unwrap()
        };
        assert_eq!(d.put(&file("shop", "cart", "1")).unwrap(), Put::Written);
        assert_eq!(d.put(&file("shop", "cart", "1")).unwrap(), Put::Unchanged);
        assert_eq!(read("shop", "cart")["metadata"]["annotations"]["v"], "1");
        assert_eq!(d.put(&file("shop", "cart", "2")).unwrap(), Put::Written);
        assert_eq!(read("shop", "cart")["metadata"]["annotations"]["v"], "2");
        assert_eq!(d.put(&file("web", "front", "1")).unwrap(), Put::Written);
        // The cap: a third pod is refused, a known one still rewritten.
        let e = d.put(&file("web", "third", "1")).unwrap_err();
        assert!(e.contains("already holds 2 pod files"), "{e}");
        assert_eq!(d.put(&file("web", "front", "2")).unwrap(), Put::Written);
        // No temporary file left behind.
        assert!(!tmp.path().join("pods/shop/.cart.json.tmp").exists());
        assert!(d.remove("shop", "cart").unwrap());
        assert!(!d.remove("shop", "cart").unwrap());

        // A file left from before (the agent restarted) and a stray non-pod file.
        std::fs::create_dir_all(tmp.path().join("pods/old")).unwrap();
        std::fs::write(tmp.path().join("pods/old/gone.json"), "{}").unwrap();
        std::fs::write(tmp.path().join("pods/old/notes.txt"), "x").unwrap();
        let mut failures = Vec::new();
        let r = d
            .resync(
                &[file("web", "front", "2"), file("shop", "new", "1")],
                &mut |e| failures.push(e),
            )
            .unwrap();
        assert_eq!(
            r,
            Resync {
                written: 1,
                unchanged: 1,
                removed: 1,
                failed: 0
            }
        );
        assert!(failures.is_empty());
        assert!(!tmp.path().join("pods/old/gone.json").exists());
        assert!(tmp.path().join("pods/old/notes.txt").exists());
        assert_eq!(d.len(), 2);
        let r = d
            .resync(
                &[
                    file("a", "1", "x"),
                    file("a", "2", "x"),
                    file("a", "3", "x"),
                ],
                &mut |e| failures.push(e),
            )
            .unwrap();
        assert_eq!((r.written, r.removed, r.failed), (2, 2, 1));
        assert_eq!(failures.len(), 1);
        assert!(
            failures[0].contains("pod a/3: not written"),
            "{}",
            failures[0]
        );
    }
}
