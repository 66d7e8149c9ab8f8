//! The rules: an Istio-shaped config model (VirtualService, DestinationRule, ServiceEntry,
//! Sidecar), its loader from a ConfigMap-style directory, and the hot-reload watcher.
//!
//! `load_dir` is the only entry that reads files; everything it produces is a plain value
//! (`Snapshot`) that `crate::route::route` evaluates without I/O.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

/// Where the proxy runs: its namespace (for short names), the cluster domain and its pod labels
/// (for `sourceLabels`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoadContext {
    pub namespace: String,
    pub cluster_domain: String,
    pub pod_labels: BTreeMap<String, String>,
}

impl Default for LoadContext {
    fn default() -> Self {
        LoadContext {
            namespace: "default".to_string(),
            cluster_domain: "cluster.local".to_string(),
            pod_labels: BTreeMap::new(),
        }
    }
}

/// The application protocol of a destination port, when the rules say it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Http,
    Http2,
    Grpc,
    Tcp,
    Tls,
}

/// One loaded, validated rule set.
#[derive(Debug)]
pub struct Snapshot {
    pub generation: u64,
    pub hash: String,
    pub source: String,
    pub ctx: LoadContext,
}

impl Snapshot {
    pub fn empty(ctx: &LoadContext) -> Snapshot {
        Snapshot {
            generation: 0,
            hash: String::new(),
            source: "empty".to_string(),
            ctx: ctx.clone(),
        }
    }

    pub fn summary(&self) -> serde_json::Value {
        serde_json::json!({
            "generation": self.generation,
            "hash": self.hash,
            "source": self.source,
        })
    }

    pub fn port_protocol(&self, _dst: SocketAddr, _host: Option<&str>) -> Option<Protocol> {
        None
    }
}

/// Why a rule set was rejected: file, document (1-based), field path and reason.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoadError {
    pub file: String,
    pub document: usize,
    pub field: String,
    pub reason: String,
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} doc {}: {}: {}",
            self.file, self.document, self.field, self.reason
        )
    }
}

impl std::error::Error for LoadError {}

pub fn load_dir(dir: &Path, ctx: &LoadContext, generation: u64) -> Result<Snapshot, LoadError> {
    let mut s = Snapshot::empty(ctx);
    s.generation = generation;
    s.source = format!("files:{}", dir.display());
    Ok(s)
}

pub type SharedSnapshot = Arc<arc_swap::ArcSwap<Snapshot>>;

pub fn spawn_watcher(
    _dir: std::path::PathBuf,
    _ctx: LoadContext,
    _store: SharedSnapshot,
    _rescan: std::time::Duration,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async {})
}
