//! The faults the soak injects into the lab (besides certificate rotation): an invalid rule set
//! that every proxy must reject, app hangs and 503 bursts, a pod killed, a proxy drained.

use super::{NS, PORT};
use crate::lab::Lab;
use anyhow::{anyhow, bail, Context, Result};
use std::time::{Duration, Instant};

/// The sum of the samples named `name` in `pod`'s proxy metrics now.
pub(super) fn metric_sum(lab: &Lab, pod: &str, name: &str) -> Result<f64> {
    Ok(crate::client::sum(&lab.metrics(lab.pod(pod)?)?, name, &[]))
}

/// The meshed pods whose proxy answers `/config_dump` now.
fn live_proxies(lab: &Lab) -> Vec<String> {
    lab.pods()
        .iter()
        .filter(|p| p.namespace == NS && p.meshed)
        .filter(|p| lab.config_generation(p).is_ok())
        .map(|p| p.name.clone())
        .collect()
}

/// Writes an invalid set and checks every live proxy rejects it: its reload-error counter rises
/// (bounded 12 s: file events, else the 5 s rescan), its generation stays, it stays ready.
pub(super) fn reload_invalid(lab: &mut Lab, yaml: &str) -> Result<String> {
    let pods = live_proxies(lab);
    let mut before = Vec::new();
    for p in &pods {
        let pod = lab.pod(p)?;
        before.push((
            p.clone(),
            lab.config_generation(pod)?,
            metric_sum(lab, p, "remora_config_reload_errors_total")?,
        ));
    }
    lab.set_rules_nowait(NS, yaml)?;
    let deadline = Instant::now() + Duration::from_secs(12);
    for (p, gen, errs) in before {
        loop {
            let now_errs = metric_sum(lab, &p, "remora_config_reload_errors_total").unwrap_or(errs);
            if now_errs > errs {
                break;
            }
            if Instant::now() >= deadline {
                bail!("{p}: the invalid rule set was not reported as rejected within 12 s (reload errors still {errs})");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let pod = lab.pod(&p)?;
        let g = lab.config_generation(pod)?;
        if g != gen {
            bail!("{p}: the generation changed from {gen} to {g} on an invalid rule set");
        }
        let ready = lab.http_direct(pod, 15021, "GET", "/healthz/ready")?;
        if ready.status != 200 {
            bail!(
                "{p}: not ready after rejecting an invalid rule set ({})",
                ready.status
            );
        }
    }
    Ok(format!(
        "rejected by {} proxies, last good set kept",
        pods.len()
    ))
}

pub(super) fn control(lab: &Lab, pod: &str, mode: &str, d: Duration) -> Result<()> {
    let p = lab.pod(pod)?;
    let path = format!("/control/fault?mode={mode}&seconds={}", d.as_secs_f64());
    let r = lab.http_direct(p, PORT, "POST", &path)?;
    if r.status != 200 {
        bail!(
            "{pod}: fault control answered {}: {}",
            r.status,
            String::from_utf8_lossy(&r.body)
        );
    }
    Ok(())
}

pub(super) fn kill_pod(lab: &mut Lab, pod: &str) -> Result<String> {
    use nix::sys::signal::{kill, Signal};
    let p = lab.pod_mut(pod)?;
    let mut names = Vec::new();
    for c in p.containers.iter_mut() {
        kill(
            nix::unistd::Pid::from_raw(c.proc.pid() as i32),
            Signal::SIGKILL,
        )
        .with_context(|| format!("SIGKILL {}/{}", pod, c.name))?;
        names.push(c.name.clone());
    }
    for c in p.containers.iter_mut() {
        c.proc.wait_exit(Duration::from_secs(5))?;
    }
    Ok(format!("SIGKILL to {}", names.join(", ")))
}

/// How long the app holds requests just before its proxy gets SIGTERM, so some are in flight
/// through the draining proxy (shorter than the per-try timeout: they must finish there).
const DRAIN_HOLD: Duration = Duration::from_millis(900);

/// SIGTERM to a pod's proxy while its app holds a few requests (in flight); waits for the exit
/// (drain) and restarts the proxy. Returns the note and when SIGTERM was sent.
pub(super) fn drain_proxy(lab: &mut Lab, pod: &str) -> Result<(String, Instant)> {
    use nix::sys::signal::{kill, Signal};
    control(lab, pod, "hang", DRAIN_HOLD)?;
    std::thread::sleep(DRAIN_HOLD * 5 / 9);
    let p = lab.pod_mut(pod)?;
    let c = p
        .containers
        .iter_mut()
        .find(|c| c.name == "remora-proxy")
        .ok_or_else(|| anyhow!("{pod} has no remora-proxy"))?;
    let t = Instant::now();
    kill(
        nix::unistd::Pid::from_raw(c.proc.pid() as i32),
        Signal::SIGTERM,
    )?;
    let st = c.proc.wait_exit(Duration::from_secs(30))?;
    let drained = t.elapsed();
    if !st.success() {
        bail!("{pod}: remora-proxy exited with {st} after SIGTERM (a graceful drain exits 0)");
    }
    lab.restart_containers(pod, &["remora-proxy"])?;
    Ok((
        format!(
            "app held requests for {} ms from {} ms before SIGTERM; drained and exited 0 after {} ms; restarted and ready after {} ms",
            DRAIN_HOLD.as_millis(),
            (DRAIN_HOLD * 5 / 9).as_millis(),
            drained.as_millis(),
            t.elapsed().as_millis()
        ),
        t,
    ))
}
