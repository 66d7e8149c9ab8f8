//! Readiness waits, bounded, for discovery's first sync.
//!
//! Istio's sidecar reports ready only once istiod sent its first configuration, so a pod gets no
//! traffic while its proxy knows no endpoints. Here: `/healthz/ready` also waits until every
//! watch of the discovery scope (Services, EndpointSlices, Pods per namespace) has completed its
//! first list and the index holds it, and until the rules ConfigMap watched through the API has
//! answered once. Bounded by `--discovery-ready-timeout`: then the proxy turns ready anyway (one
//! warn line), the mounted rule files and the original destinations serve meanwhile. A watch the
//! API answered 403 does not hold readiness, and with no API (or `--discovery off` and no
//! ConfigMap watch) nothing is waited for. Once open, the gate stays open: a later scope change
//! (a new VirtualService destination namespace) never turns a serving pod unready.
//!
//! `decide` and the formatting are pure; `ReadyGate` reads the live state and keeps the outcome.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::kube::Discovery;
use super::rules_api::RulesSources;
use super::store::{Kind, Part};

/// Why the gate opened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Why {
    /// Everything listed; `forbidden`: watches the API refused (403), not waited for.
    Synced { forbidden: Vec<String> },
    /// `--discovery-ready-timeout` passed with these still pending.
    Timeout { pending: Vec<String> },
    /// Nothing to wait for (the reason).
    NotWaiting(String),
}

/// The gate's outcome, kept once reached.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Opened {
    /// Since the proxy started.
    pub after: Duration,
    pub why: Why,
}

impl Opened {
    /// `synced after 1.2s`, `not synced after the 10s timeout (…)`, `not waited for (…)`.
    pub fn describe(&self, timeout: Duration) -> String {
        match &self.why {
            Why::Synced { forbidden } if forbidden.is_empty() => {
                format!("discovery synced after {}", secs(self.after))
            }
            Why::Synced { forbidden } => format!(
                "discovery synced after {} (forbidden, not waited for: {})",
                secs(self.after),
                forbidden.join("; ")
            ),
            Why::Timeout { pending } => format!(
                "discovery not synced after the {} timeout ({})",
                human(timeout),
                pending.join("; ")
            ),
            Why::NotWaiting(why) => format!("discovery not waited for ({why})"),
        }
    }

    fn state(&self) -> &'static str {
        match self.why {
            Why::Synced { .. } => "synced",
            Why::Timeout { .. } => "timeout",
            Why::NotWaiting(_) => "not waiting",
        }
    }
}

/// Where the gate stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GateState {
    Open(Opened),
    Waiting {
        pending: Vec<String>,
        elapsed: Duration,
        timeout: Duration,
    },
}

impl GateState {
    pub fn is_open(&self) -> bool {
        matches!(self, GateState::Open(_))
    }
}

/// What is still awaited, as readiness reports it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Awaited {
    /// Something is watched through the API at all (discovery on, or the ConfigMap watched).
    pub watched: bool,
    /// `services, endpointslices in shop`, `rules ConfigMap shop/remora-mesh-rules`.
    pub pending: Vec<String>,
    /// Watches the API answered 403.
    pub forbidden: Vec<String>,
}

/// The pure decision: `None` = keep waiting.
pub fn decide(awaited: &Awaited, elapsed: Duration, timeout: Duration) -> Option<Why> {
    if !awaited.watched {
        return Some(Why::NotWaiting(
            "nothing is watched through the Kubernetes API".into(),
        ));
    }
    if timeout.is_zero() {
        return Some(Why::NotWaiting("--discovery-ready-timeout=0".into()));
    }
    if awaited.pending.is_empty() {
        return Some(Why::Synced {
            forbidden: awaited.forbidden.clone(),
        });
    }
    if elapsed >= timeout {
        return Some(Why::Timeout {
            pending: awaited.pending.clone(),
        });
    }
    None
}

/// Watches grouped by part, in the order given: `services, endpointslices in shop`,
/// `pods in all namespaces`.
pub fn describe_watches(watches: &[(Kind, Part)]) -> Vec<String> {
    let mut groups: Vec<(&Part, Vec<&'static str>)> = Vec::new();
    for (kind, part) in watches {
        match groups.iter_mut().find(|(p, _)| *p == part) {
            Some((_, kinds)) => kinds.push(kind.as_str()),
            None => groups.push((part, vec![kind.as_str()])),
        }
    }
    groups
        .into_iter()
        .map(|(part, kinds)| {
            let place = match part {
                Part::All => "all namespaces".to_string(),
                Part::Namespace(ns) => ns.to_string(),
            };
            format!("{} in {place}", kinds.join(", "))
        })
        .collect()
}

/// `2.1s`
fn secs(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}

/// `10s`, `1.5s`, `250ms`
pub fn human(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else if d < Duration::from_secs(1) {
        format!("{}ms", d.as_millis())
    } else {
        format!("{:.1}s", d.as_secs_f64())
    }
}

fn locked<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The readiness gate over the live discovery and rules-through-the-API state.
pub struct ReadyGate {
    timeout: Duration,
    started: Instant,
    discovery: Option<Arc<Discovery>>,
    rules: Option<Arc<RulesSources>>,
    opened: Mutex<Option<Opened>>,
}

impl std::fmt::Debug for ReadyGate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadyGate")
            .field("timeout", &self.timeout)
            .field("opened", &*locked(&self.opened))
            .finish_non_exhaustive()
    }
}

impl ReadyGate {
    /// A gate waiting at most `timeout` (zero: not at all) from `started` (the proxy's start).
    pub fn new(
        timeout: Duration,
        started: Instant,
        discovery: Option<Arc<Discovery>>,
        rules: Option<Arc<RulesSources>>,
    ) -> ReadyGate {
        ReadyGate {
            timeout,
            started,
            discovery,
            rules,
            opened: Mutex::new(None),
        }
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// What is still awaited now.
    pub fn awaited(&self) -> Awaited {
        let mut a = Awaited::default();
        if let Some(d) = &self.discovery {
            a.watched = true;
            match d.sync_report() {
                Some(r) => {
                    a.pending = describe_watches(&r.pending);
                    a.forbidden = describe_watches(&r.forbidden);
                }
                None => a.pending.push("discovery (no scope set yet)".into()),
            }
        }
        if let Some(r) = &self.rules {
            if r.api_watched() {
                a.watched = true;
            }
            if r.api_answer_pending() {
                a.pending.push(format!("rules ConfigMap {}", r.configmap));
            }
        }
        a
    }

    /// Evaluate the gate; the first time it opens, the outcome is kept and a timeout is logged
    /// (one warn line naming what is not synced).
    pub fn check(&self) -> GateState {
        if let Some(o) = locked(&self.opened).clone() {
            return GateState::Open(o);
        }
        let elapsed = self.started.elapsed();
        let awaited = self.awaited();
        let Some(why) = decide(&awaited, elapsed, self.timeout) else {
            return GateState::Waiting {
                pending: awaited.pending,
                elapsed,
                timeout: self.timeout,
            };
        };
        let mut g = locked(&self.opened);
        let opened = g.get_or_insert_with(|| {
            let o = Opened {
                after: elapsed,
                why,
            };
            match &o.why {
                Why::Timeout { pending } => tracing::warn!(
                    "readiness: discovery not synced after {} (--discovery-ready-timeout): {} not listed yet; turning ready anyway, the mounted rule files and the original destinations serve meanwhile",
                    human(self.timeout),
                    pending.join("; ")
                ),
                _ => tracing::debug!("readiness gate open: {}", o.describe(self.timeout)),
            }
            o
        });
        GateState::Open(opened.clone())
    }

    /// Did the gate open because `--discovery-ready-timeout` passed?
    pub fn timed_out(&self) -> bool {
        locked(&self.opened)
            .as_ref()
            .is_some_and(|o| matches!(o.why, Why::Timeout { .. }))
    }

    /// The reason readiness waits, or the outcome: `discovery not synced: endpointslices in
    /// shop (2.1s of 10s)`.
    pub fn describe(&self, state: &GateState) -> String {
        match state {
            GateState::Open(o) => o.describe(self.timeout),
            GateState::Waiting {
                pending,
                elapsed,
                timeout,
            } => format!(
                "discovery not synced: {} ({} of {})",
                pending.join("; "),
                secs(*elapsed),
                human(*timeout)
            ),
        }
    }

    /// The `/config_dump` block (`discovery.readiness`).
    pub fn dump(&self) -> remora_model::dump::ReadinessDump {
        let state = self.check();
        let detail = self.describe(&state);
        let timeout_seconds = self.timeout.as_secs_f64();
        match state {
            GateState::Open(o) => remora_model::dump::ReadinessDump {
                state: o.state().to_string(),
                after_seconds: Some(o.after.as_secs_f64()),
                elapsed_seconds: None,
                timeout_seconds,
                waiting_for: match &o.why {
                    Why::Timeout { pending } => pending.clone(),
                    _ => Vec::new(),
                },
                detail,
            },
            GateState::Waiting {
                pending, elapsed, ..
            } => remora_model::dump::ReadinessDump {
                state: "waiting".to_string(),
                after_seconds: None,
                elapsed_seconds: Some(elapsed.as_secs_f64()),
                timeout_seconds,
                waiting_for: pending,
                detail,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ns(n: &str) -> Part {
        Part::Namespace(Arc::from(n))
    }

    fn awaiting(pending: &[&str]) -> Awaited {
        Awaited {
            watched: true,
            pending: pending.iter().map(|s| s.to_string()).collect(),
            forbidden: Vec::new(),
        }
    }

    #[test]
    fn watches_grouped_by_namespace_in_order() {
        let w = [
            (Kind::Services, ns("shop")),
            (Kind::Pods, ns("remora-system")),
            (Kind::EndpointSlices, ns("shop")),
            (Kind::Pods, Part::All),
        ];
        assert_eq!(
            describe_watches(&w),
            vec![
                "services, endpointslices in shop",
                "pods in remora-system",
                "pods in all namespaces"
            ]
        );
        assert!(describe_watches(&[]).is_empty());
    }

    #[test]
    fn waits_until_synced_or_the_timeout() {
        let t = Duration::from_secs(10);
        let s = Duration::from_secs(1);
        assert_eq!(decide(&awaiting(&["pods in shop"]), s, t), None);
        assert_eq!(
            decide(&awaiting(&["pods in shop"]), t, t),
            Some(Why::Timeout {
                pending: vec!["pods in shop".into()]
            })
        );
        assert_eq!(
            decide(&awaiting(&[]), s, t),
            Some(Why::Synced { forbidden: vec![] })
        );
        let mut f = awaiting(&[]);
        f.forbidden = vec!["endpointslices in shop".into()];
        assert_eq!(
            decide(&f, s, t),
            Some(Why::Synced {
                forbidden: vec!["endpointslices in shop".into()]
            })
        );
        // Nothing watched, or no waiting asked for: open at once.
        assert!(matches!(
            decide(&Awaited::default(), Duration::ZERO, t),
            Some(Why::NotWaiting(_))
        ));
        assert_eq!(
            decide(&awaiting(&["pods in shop"]), Duration::ZERO, Duration::ZERO),
            Some(Why::NotWaiting("--discovery-ready-timeout=0".into()))
        );
    }

    #[test]
    fn descriptions() {
        let t = Duration::from_secs(10);
        let gate = ReadyGate::new(t, Instant::now(), None, None);
        let w = GateState::Waiting {
            pending: vec![
                "endpointslices in shop".into(),
                "rules ConfigMap shop/r".into(),
            ],
            elapsed: Duration::from_millis(2140),
            timeout: t,
        };
        assert_eq!(
            gate.describe(&w),
            "discovery not synced: endpointslices in shop; rules ConfigMap shop/r (2.1s of 10s)"
        );
        let o = Opened {
            after: t,
            why: Why::Timeout {
                pending: vec!["pods in shop".into()],
            },
        };
        assert_eq!(
            o.describe(t),
            "discovery not synced after the 10s timeout (pods in shop)"
        );
        assert_eq!(human(Duration::from_millis(250)), "250ms");
        assert_eq!(human(Duration::from_millis(1500)), "1.5s");
        // No discovery and no ConfigMap watch: open at once, and it stays open.
        assert!(gate.check().is_open());
        assert_eq!(gate.dump().state, "not waiting");
    }
}
