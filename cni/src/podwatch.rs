//! The node agent's read of the pods on its own node through the Kubernetes API (a watch with
//! `fieldSelector=spec.nodeName=<node>`), kept as pod files in a [`PodDir`] for the plugin.
//!
//! Logs: an info line per (re-)list with counts; with `debug` a line per file written or
//! removed; a failure (the API, a file) once, until it recovers.

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::Api;
use serde_json::Value;

use crate::poddir::{PodDir, Put};
use crate::podfile::{pod_file, PodFile};

/// What the watch needs.
pub struct WatchConfig {
    pub node: String,
    pub exclude_namespaces: Vec<String>,
    pub debug: bool,
}

/// A failure logged once until it recovers.
#[derive(Default)]
struct Trouble {
    what: &'static str,
    failing: bool,
}

impl Trouble {
    fn new(what: &'static str) -> Trouble {
        Trouble {
            what,
            failing: false,
        }
    }

    fn fail(&mut self, msg: &str) {
        if !self.failing {
            eprintln!(
                "remora-cni-node: error: {}: {msg} (logged once until it recovers)",
                self.what
            );
        }
        self.failing = true;
    }

    fn ok(&mut self) {
        if self.failing {
            println!("remora-cni-node: {}: recovered", self.what);
        }
        self.failing = false;
    }
}

fn file_of(pod: &Pod) -> Result<PodFile, String> {
    let v: Value =
        serde_json::to_value(pod).map_err(|e| format!("cannot read a pod object: {e}"))?;
    pod_file(&v)
}

struct Sync {
    cfg: WatchConfig,
    dir: PodDir,
    api: Trouble,
    disk: Trouble,
    listing: Option<Vec<PodFile>>,
}

impl Sync {
    fn debug(&self, msg: String) {
        if self.cfg.debug {
            println!("remora-cni-node: debug: {msg}");
        }
    }

    fn excluded(&self, ns: &str) -> bool {
        self.cfg.exclude_namespaces.iter().any(|n| n == ns)
    }

    fn apply(&mut self, pod: &Pod) {
        let f = match file_of(pod) {
            Ok(f) => f,
            Err(e) => {
                eprintln!("remora-cni-node: error: not written: {e}");
                return;
            }
        };
        if self.excluded(&f.namespace) {
            return;
        }
        match self.dir.put(&f) {
            Ok(Put::Written) => {
                self.disk.ok();
                self.debug(format!(
                    "wrote {} ({})",
                    f.rel_path(),
                    if f.marked { "marked" } else { "not marked" }
                ));
            }
            Ok(Put::Unchanged) => self.disk.ok(),
            Err(e) => self.disk.fail(&e),
        }
    }

    fn delete(&mut self, pod: &Pod) {
        let (Some(ns), Some(name)) = (&pod.metadata.namespace, &pod.metadata.name) else {
            return;
        };
        let Ok(f) = file_of(pod) else {
            // A name that was never written (not a valid file name) has no file to remove.
            return;
        };
        match self.dir.remove(&f.namespace, &f.name) {
            Ok(true) => {
                self.disk.ok();
                self.debug(format!("removed {ns}/{name}.json (pod deleted)"));
            }
            Ok(false) => self.disk.ok(),
            Err(e) => self.disk.fail(&e),
        }
    }

    fn listed(&mut self) {
        let files = self.listing.take().unwrap_or_default();
        let mut failed = Vec::new();
        match self.dir.resync(&files, &mut |e| failed.push(e)) {
            Ok(r) => {
                for e in failed.iter().take(3) {
                    eprintln!("remora-cni-node: error: {e}");
                }
                if failed.len() > 3 {
                    eprintln!(
                        "remora-cni-node: error: {} more pods not written",
                        failed.len() - 3
                    );
                }
                if failed.is_empty() {
                    self.disk.ok();
                }
                println!(
                    "remora-cni-node: listed the pods on node {}: {} files ({} marked), {} written, {} unchanged, {} removed, {} not written",
                    self.cfg.node,
                    self.dir.len(),
                    files.iter().filter(|f| f.marked).count(),
                    r.written,
                    r.unchanged,
                    r.removed,
                    r.failed
                );
            }
            Err(e) => self.disk.fail(&e),
        }
    }

    fn on(&mut self, ev: Event<Pod>) {
        match ev {
            Event::Init => self.listing = Some(Vec::new()),
            Event::InitApply(pod) => match file_of(&pod) {
                Ok(f) if self.excluded(&f.namespace) => {}
                Ok(f) => self.listing.get_or_insert_with(Vec::new).push(f),
                Err(e) => eprintln!("remora-cni-node: error: not written: {e}"),
            },
            Event::InitDone => self.listed(),
            Event::Apply(pod) => self.apply(&pod),
            Event::Delete(pod) => self.delete(&pod),
        }
    }
}

/// The field selector for the pods of `node`.
pub fn node_selector(node: &str) -> String {
    format!("spec.nodeName={node}")
}

/// Watch the pods of `cfg.node` and keep `dir` in step, until the process ends. Re-lists and
/// backs off as `kube`'s watcher does (an expired watch, a dropped connection).
pub async fn run(client: kube::Client, cfg: WatchConfig, dir: PodDir) {
    let api: Api<Pod> = Api::all(client);
    let wc = watcher::Config::default().fields(&node_selector(&cfg.node));
    println!(
        "remora-cni-node: watching the pods on node {} (pod files in {})",
        cfg.node,
        dir.dir().display()
    );
    let mut sync = Sync {
        cfg,
        dir,
        api: Trouble::new("watching the pods through the API"),
        disk: Trouble::new("writing the pod files"),
        listing: None,
    };
    let mut stream = watcher::watcher(api, wc).default_backoff().boxed();
    while let Some(ev) = stream.next().await {
        match ev {
            // `Init` comes before the list is asked for: no proof the API answers.
            Ok(Event::Init) => sync.on(Event::Init),
            Ok(ev) => {
                sync.api.ok();
                sync.on(ev);
            }
            Err(e) => match describe(&e) {
                Failure::Expired => println!(
                    "remora-cni-node: the watch of the pods expired (410): listing them again"
                ),
                Failure::Other(msg) => sync.api.fail(&msg),
            },
        }
    }
}

enum Failure {
    /// The watch's resourceVersion is too old: routine, the watcher re-lists.
    Expired,
    Other(String),
}

fn status_line(s: &kube::core::Status) -> String {
    format!("{} {}: {}", s.code, s.reason, s.message)
}

/// One short line for a watch failure (the API's own status, not its debug form).
fn describe(e: &watcher::Error) -> Failure {
    use watcher::Error as W;
    match e {
        W::WatchError(s) if s.code == 410 => Failure::Expired,
        W::WatchError(s) => Failure::Other(format!("the watch failed: {}", status_line(s))),
        W::InitialListFailed(kube::Error::Api(s)) => {
            Failure::Other(format!("the list failed: {}", status_line(s)))
        }
        W::WatchStartFailed(kube::Error::Api(s)) | W::WatchFailed(kube::Error::Api(s)) => {
            Failure::Other(format!("the watch failed: {}", status_line(s)))
        }
        other => Failure::Other(other.to_string()),
    }
}
