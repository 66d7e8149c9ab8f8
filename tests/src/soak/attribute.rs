//! Attribution: which configured policy, if any, explains each failed request, and which
//! requests a draining proxy still answered.

use super::load::{Outcome, Request};
use super::logs::Logged;
use super::schedule::{FaultKind, Window};
use super::PER_TRY_TIMEOUT;
use serde::Serialize;
use std::collections::BTreeMap;

/// One failed request and what explains it.
#[derive(Debug, Clone, Serialize)]
pub struct Failure {
    pub request: Request,
    pub logged: Option<Logged>,
    /// Fault windows the request overlapped (kind:target).
    pub windows: Vec<String>,
    pub cause: String,
    pub explained: bool,
}

/// Grace after a window during which its effects may still show (outlier ejection ending,
/// connections being re-made).
fn grace(kind: FaultKind) -> f64 {
    match kind {
        FaultKind::Hang => PER_TRY_TIMEOUT.as_secs_f64() + 1.0,
        FaultKind::Kill => 1.0,
        _ => 0.5,
    }
}

/// Maps a failed request to a cause. Explained are: requests routed to subset v2 while its only
/// pod was killed (retries exhausted on an all-down subset: flags `UF`/`URX`, upstream the killed
/// pod), and requests whose retries or route timeout ran out (`URX`/`UT`) during a hang or 503
/// window. Anything else — in a reload, drain or rotation window or in none — is unexplained.
pub fn attribute(
    r: &Request,
    logged: Option<&Logged>,
    windows: &[Window],
    pod_ips: &BTreeMap<String, String>,
) -> Failure {
    let end = r.start_s + r.duration_ms / 1000.0;
    let hits: Vec<&Window> = windows
        .iter()
        .filter(|w| w.start_s <= end && r.start_s <= w.end_s + grace(w.kind))
        .collect();
    let flags = logged.map(|l| l.flags.as_str()).unwrap_or("");
    let has = |f: &str| flags.split(',').any(|x| x == f);
    let upstream_ip = logged
        .map(|l| l.upstream.split(':').next().unwrap_or("").to_string())
        .unwrap_or_default();
    let mut cause = None;
    for w in &hits {
        let ip = pod_ips.get(&w.target).cloned().unwrap_or_default();
        match w.kind {
            FaultKind::Kill if (has("UF") || has("URX") || has("UC")) && upstream_ip == ip => {
                cause = Some(format!(
                    "retries exhausted: subset v2 all down ({} killed), flags {flags}",
                    w.target
                ));
                break;
            }
            FaultKind::Hang | FaultKind::Burst503 if has("URX") || has("UT") => {
                cause = Some(format!(
                    "retries/timeout exhausted during {:?} of {}, flags {flags}",
                    w.kind, w.target
                ));
                break;
            }
            _ => {}
        }
    }
    let names: Vec<String> = hits
        .iter()
        .map(|w| format!("{:?}:{}", w.kind, w.target))
        .collect();
    let explained = cause.is_some();
    let cause = cause.unwrap_or_else(|| {
        let what = match &r.outcome {
            Outcome::Status(s) => format!("HTTP {s} flags {flags:?}"),
            other => format!("{other:?}"),
        };
        match hits
            .iter()
            .find(|w| w.kind != FaultKind::Reload)
            .or(hits.first())
        {
            Some(w) => format!("UNEXPLAINED {what} during {:?} of {}", w.kind, w.target),
            None => format!("UNEXPLAINED {what} outside every fault window"),
        }
    });
    Failure {
        request: r.clone(),
        logged: logged.cloned(),
        windows: names,
        cause,
        explained,
    }
}

/// Requests that were in flight through `pod`'s proxy when it got SIGTERM and were answered 200
/// by that pod (the client's proxy logged it as the upstream, no retry elsewhere).
pub fn drained_in_flight(
    requests: &[Request],
    logged: &BTreeMap<String, Logged>,
    pod_ip: &str,
    signal_s: f64,
) -> u64 {
    requests
        .iter()
        .filter(|r| r.outcome == Outcome::Ok)
        .filter(|r| r.start_s < signal_s && r.start_s + r.duration_ms / 1000.0 > signal_s)
        .filter(|r| {
            logged
                .get(&r.id)
                .is_some_and(|l| l.status == 200 && l.upstream.split(':').next() == Some(pod_ip))
        })
        .count() as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::soak::{B1, B3};

    fn w(kind: FaultKind, target: &str, a: f64, b: f64) -> Window {
        Window {
            kind,
            target: target.into(),
            start_s: a,
            end_s: b,
            note: String::new(),
            ok: true,
            signal_s: None,
        }
    }

    #[test]
    fn failures_are_explained_only_by_policy() {
        let ips: BTreeMap<String, String> = [(B3.to_string(), "10.244.0.13".to_string())].into();
        let windows = vec![
            w(FaultKind::Reload, "valid 80/20", 10.0, 10.2),
            w(FaultKind::Kill, B3, 20.0, 24.0),
            w(FaultKind::Drain, B1, 30.0, 36.0),
            w(FaultKind::Hang, B1, 40.0, 44.0),
        ];
        let req = |t: f64| Request {
            id: "x".into(),
            start_s: t,
            duration_ms: 5.0,
            outcome: Outcome::Status(503),
        };
        let log = |flags: &str, up: &str| Logged {
            status: 503,
            flags: flags.into(),
            upstream: up.into(),
        };
        let f = attribute(
            &req(21.0),
            Some(&log("UF,URX", "10.244.0.13:8080")),
            &windows,
            &ips,
        );
        assert!(f.explained, "{f:?}");
        assert!(f.cause.contains("subset v2 all down"), "{}", f.cause);
        // Same window, but the request went to another pod: not explained by the kill.
        let f = attribute(
            &req(21.0),
            Some(&log("UF", "10.244.0.11:8080")),
            &windows,
            &ips,
        );
        assert!(!f.explained);
        // Within the kill's grace (1 s) still explained; after it not.
        assert!(
            attribute(
                &req(24.8),
                Some(&log("URX", "10.244.0.13:8080")),
                &windows,
                &ips
            )
            .explained
        );
        assert!(
            !attribute(
                &req(25.5),
                Some(&log("URX", "10.244.0.13:8080")),
                &windows,
                &ips
            )
            .explained
        );
        // A drain or a reload never explains a failure.
        let f = attribute(
            &req(31.0),
            Some(&log("URX", "10.244.0.11:8080")),
            &windows,
            &ips,
        );
        assert!(!f.explained && f.cause.contains("Drain"), "{}", f.cause);
        let f = attribute(&req(10.1), None, &windows, &ips);
        assert!(!f.explained && f.cause.contains("Reload"), "{}", f.cause);
        // Retries exhausted during a hang window is the retry policy's answer.
        assert!(
            attribute(
                &req(41.0),
                Some(&log("UT,URX", "10.244.0.10:8080")),
                &windows,
                &ips
            )
            .explained
        );
        let f = attribute(&req(50.0), None, &windows, &ips);
        assert!(
            f.cause.contains("outside every fault window"),
            "{}",
            f.cause
        );
    }

    #[test]
    fn drained_requests_are_those_spanning_the_signal_through_the_pod() {
        let req = |id: &str, start: f64, ms: f64, outcome: Outcome| Request {
            id: id.into(),
            start_s: start,
            duration_ms: ms,
            outcome,
        };
        let reqs = vec![
            req("a", 9.5, 800.0, Outcome::Ok), // spans 10.0, through the pod
            req("b", 9.5, 300.0, Outcome::Ok), // ended before the signal
            req("c", 9.8, 500.0, Outcome::Ok), // spans, but answered by another pod
            req("d", 9.9, 400.0, Outcome::Status(503)), // spans, failed
        ];
        let log = |up: &str, st: u16| Logged {
            status: st,
            flags: "-".into(),
            upstream: format!("{up}:8080"),
        };
        let logged: BTreeMap<String, Logged> = [
            ("a".to_string(), log("10.244.0.11", 200)),
            ("b".to_string(), log("10.244.0.11", 200)),
            ("c".to_string(), log("10.244.0.12", 200)),
            ("d".to_string(), log("10.244.0.11", 503)),
        ]
        .into();
        assert_eq!(drained_in_flight(&reqs, &logged, "10.244.0.11", 10.0), 1);
        assert_eq!(drained_in_flight(&reqs, &logged, "10.244.0.12", 10.0), 1);
        assert_eq!(drained_in_flight(&reqs, &logged, "10.244.0.11", 20.0), 0);
    }
}
