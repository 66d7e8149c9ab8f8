//! The short soak: 60 seconds of fixed-rate load through the sidecars while the rules
//! reload (an invalid set among them), a backend hangs and answers 503 bursts, a backend pod is
//! killed and restarted, a backend's proxy drains on SIGTERM and restarts, the control plane
//! (webhook and mesh CA) restarts while the sidecars talk mTLS with one-minute workload
//! certificates they renew, and the webhook's certificate rotates. `scripts/soak` runs the long
//! version. Needs root; see docs/reliability.md.

use remora_e2e::soak::{self, FaultKind, Outcome, SoakConfig};
use remora_e2e::LabOptions;

#[test]
fn short_soak_with_faults() {
    let mut cfg = SoakConfig::standard(60);
    cfg.out_dir = soak::default_out_dir().join("short");
    let report = soak::run(LabOptions::default(), cfg).expect("the soak runs");
    let text = soak::render(&report);
    eprintln!("{text}");
    assert!(report.passed, "{text}\n{:#?}", report.failure_examples);

    // The load ran: nearly every planned request was sent, nearly all succeeded.
    assert!(report.sent * 10 >= report.planned * 9, "{text}");
    assert_eq!(report.succeeded + report.failed, report.sent);
    assert_eq!(report.unexplained, 0, "{text}");
    // Every kind of fault ran and did what it should (invalid sets rejected, drain exit 0,
    // rotation served and admitted).
    for kind in [
        "Reload",
        "Hang",
        "Burst503",
        "Kill",
        "Drain",
        "Rotate",
        "CaRestart",
    ] {
        let (n, ok) = report.faults.get(kind).copied().unwrap_or_default();
        assert!(n >= 1 && ok == n, "{kind}: {ok} of {n} as expected\n{text}");
    }
    assert!(
        report
            .windows
            .iter()
            .any(|w| w.kind == FaultKind::Reload && w.target.starts_with("invalid")),
        "an invalid rule set was loaded and rejected"
    );
    // The client's one-minute certificate was renewed, across the CA restart.
    assert!(report.client_certificates >= 2.0, "{text}");
    // Requests in flight through the draining proxy at SIGTERM were answered there.
    assert!(
        !report.drain_in_flight.is_empty() && report.drain_in_flight.iter().all(|n| *n >= 1),
        "{text}"
    );
    // The hang and the 503 burst reached the client's proxy and were handled by outlier
    // detection, not just absorbed by chance.
    assert!(report.outlier_ejections >= 1.0, "{text}");
    // Killing the only pod of subset v2 is visible (and explained): requests routed there fail
    // once retries are exhausted. Nothing else failed.
    let kill_failures: u64 = report
        .failures_by_cause
        .iter()
        .filter(|(k, _)| k.contains("subset v2 all down"))
        .map(|(_, v)| v)
        .sum();
    assert!(kill_failures >= 1, "{text}");
    assert_eq!(kill_failures, report.failed, "{text}");
    assert!(report
        .failure_examples
        .iter()
        .all(|f| f.request.outcome != Outcome::Ok));
    // The client's proxy lived through the whole soak and stayed flat.
    let client = report
        .growth
        .iter()
        .find(|g| g.process == "client/remora-proxy")
        .expect("client proxy sampled");
    assert!(client.evaluated && client.ok, "{client:?}");
    assert!(report.panics.is_empty(), "{:?}", report.panics);
}
