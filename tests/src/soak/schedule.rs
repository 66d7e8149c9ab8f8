//! The fault schedule: what the soak does when (rule reloads and fault cycles), and the fault
//! windows as they happened.

use super::{SoakConfig, B1, B2, B3};
use serde::Serialize;
use std::time::Duration;

/// What a window is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultKind {
    /// A rule reload (valid or invalid): must cause no failure.
    Reload,
    /// A backend whose app hangs: absorbed by perTryTimeout + retries + outlier detection.
    Hang,
    /// A backend answering 503: absorbed by retries on 5xx + outlier detection.
    Burst503,
    /// A backend pod killed (app and sidecar, SIGKILL) and restarted. The killed pod is the only
    /// endpoint of subset v2, so requests routed there fail once retries are exhausted.
    Kill,
    /// A backend's proxy gets SIGTERM, drains and is restarted: must cause no failure.
    Drain,
    /// The webhook's certificate is rotated: must cause no failure, admissions continue.
    Rotate,
    /// The control plane (webhook and mesh CA) is stopped and started again while the proxies
    /// renew short-lived workload certificates: must cause no failure.
    CaRestart,
}

/// One fault as it happened.
#[derive(Debug, Clone, Serialize)]
pub struct Window {
    pub kind: FaultKind,
    /// Pod (or rule set, or "webhook").
    pub target: String,
    /// Seconds since the load started.
    pub start_s: f64,
    pub end_s: f64,
    pub note: String,
    /// Whether the step did what it should (reload applied/rejected, drain exited 0, ...).
    pub ok: bool,
    /// For a drain: when SIGTERM was sent.
    pub signal_s: Option<f64>,
}

/// What the scheduler does at a time (seconds since the load started).
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    Reload(usize),
    Hang(&'static str, Duration),
    Burst(&'static str, Duration),
    Kill(&'static str),
    Restart(&'static str),
    Drain(&'static str),
    Rotate,
    CaRestart,
}

/// The schedule: reloads every `reload_every` from 2 s on, and fault cycles from the end of the
/// warm-up while a whole cycle (and 10 s of steady tail) fits.
pub fn schedule(cfg: &SoakConfig) -> Vec<(Duration, Step)> {
    let mut out = Vec::new();
    let end = cfg.duration;
    let mut t = Duration::from_secs(2);
    let mut k = 0;
    while t + Duration::from_secs(2) < end {
        out.push((t, Step::Reload(k % 3)));
        k += 1;
        t += cfg.reload_every;
    }
    let mut c = cfg.warmup;
    while c + Duration::from_secs(38) + Duration::from_secs(10) <= end {
        let at = |s: u64| c + Duration::from_secs(s);
        out.push((at(0), Step::Hang(B1, Duration::from_secs(4))));
        out.push((at(7), Step::Burst(B2, Duration::from_secs(4))));
        out.push((at(14), Step::Kill(B3)));
        out.push((at(18), Step::Restart(B3)));
        out.push((at(23), Step::Drain(B1)));
        out.push((at(29), Step::CaRestart));
        out.push((at(33), Step::Rotate));
        c += cfg.cycle;
    }
    // Faults before reloads at the same instant; stable otherwise.
    out.sort_by(|a, b| {
        a.0.cmp(&b.0)
            .then_with(|| matches!(a.1, Step::Reload(_)).cmp(&matches!(b.1, Step::Reload(_))))
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::soak::tests::cfg;

    #[test]
    fn schedule_fits_cycles_and_reloads() {
        let s = schedule(&cfg(60));
        let kills = s.iter().filter(|(_, x)| matches!(x, Step::Kill(_))).count();
        assert_eq!(kills, 1);
        assert!(
            s.iter().any(|(_, x)| *x == Step::Reload(2)),
            "an invalid set is loaded"
        );
        assert!(s.windows(2).all(|w| w[0].0 <= w[1].0), "sorted by time");
        assert!(s.iter().all(|(t, _)| *t < Duration::from_secs(60)));
        let long = schedule(&cfg(600));
        assert_eq!(long.iter().filter(|(_, x)| *x == Step::Rotate).count(), 14);
        assert_eq!(
            long.iter().filter(|(_, x)| *x == Step::CaRestart).count(),
            14
        );
        let first = |step: Step| s.iter().find(|(_, x)| *x == step).map(|(t, _)| *t);
        let ca = first(Step::CaRestart).unwrap();
        assert!(
            first(Step::Restart(crate::soak::B3)).unwrap() < ca
                && ca < first(Step::Rotate).unwrap(),
            "the CA restarts after the killed pod is back and before the webhook rotation"
        );
    }
}
