//! One run of `remora-init`: validated flags → IPv6 and backend decisions → the restore text per
//! family (`plan`) → `apply` → the installed rules read back and compared with the plan.
//!
//! The program (`main.rs`) and the CNI plugin (`remora-cni`, in the pod's network namespace) both
//! call [`run`], so the two capture modes install the same rules by the same steps. Every line of
//! the report goes to the caller's `out`.

use std::time::Instant;

use crate::apply::{self, Backend};
use crate::flags::{Flags, Ipv6Mode};
use crate::plan::{self, Family, Snapshot};

/// The report's writer: raw lines, and `remora-init: `-prefixed messages.
struct Log<'a>(&'a mut dyn FnMut(String));

impl Log<'_> {
    fn line(&mut self, text: impl AsRef<str>) {
        (self.0)(text.as_ref().to_string());
    }

    fn say(&mut self, msg: impl AsRef<str>) {
        (self.0)(format!("remora-init: {}", msg.as_ref()));
    }
}

/// Program the capture (or, with `--cleanup`, remove it) in the current network namespace.
/// `flag_lines` are printed first (where each flag's value came from). On error, one line per
/// error.
pub fn run(
    flags: &Flags,
    flag_lines: &[String],
    out: &mut dyn FnMut(String),
) -> Result<(), Vec<String>> {
    let started = Instant::now();
    let mut log = Log(out);

    log.say("flags:");
    for l in flag_lines {
        log.line(format!("  {l}"));
    }
    let mut cfg = flags
        .validate_all()
        .map_err(|errs| errs.iter().map(|e| e.to_string()).collect::<Vec<_>>())?;
    for note in apply::resolve_group_names(&mut cfg)? {
        log.say(note);
    }
    if flags.cleanup {
        log.say("cleanup: removing every remora chain and rule (the capture flags are not used)");
    } else {
        for line in cfg.summary() {
            log.say(format!("capture: {line}"));
        }
    }
    if !flags.cleanup && !cfg.ignored_inbound_excludes.is_empty() {
        log.say(format!(
            "note: -d {:?} has no effect because -b is not '*' (only listed ports are captured)",
            cfg.ignored_inbound_excludes
        ));
    }

    // Decided before anything is changed: an error here leaves every table as it was.
    let (ipv6, why6) = match apply::decide_ipv6(flags.ipv6) {
        Ok(d) => d,
        // Cleanup does not depend on it: it looks at IPv6 unless --ipv6 off.
        Err(_) if flags.cleanup => (
            false,
            format!(
                "{} could not be read; cleanup looks at IPv6 anyway",
                apply::IF_INET6
            ),
        ),
        Err(e) => return Err(vec![e]),
    };
    log.say(format!("IPv6: {why6}"));
    let detection = apply::detect(flags.iptables_mode);
    let backend = detection.backend;
    log.say(format!("backend: {}", detection.reason));

    if !ipv6 && !flags.cleanup {
        if let Some(stale) = detection.snapshot(Family::V6).filter(|s| !s.is_empty()) {
            log.say(format!(
                "warning: IPv6 is off but ip6tables holds {} remora chains from an earlier run; they are left as they are (remove them with --cleanup)",
                stale.chains.len()
            ));
        }
    }

    let mut families = vec![Family::V4];
    if flags.cleanup {
        // Cleanup looks at IPv6 too unless told not to: a pod may have lost its address.
        if flags.ipv6 != Ipv6Mode::Off {
            families.push(Family::V6);
        }
    } else if ipv6 {
        families.push(Family::V6);
    }

    // Current state and the restore text per family.
    let mut steps: Vec<(Family, String, Snapshot)> = Vec::new();
    let mut targets: Vec<(Family, Snapshot)> = Vec::new();
    // Reuse the dumps taken while detecting the backend; otherwise read all families at once.
    let missing: Vec<Family> = families
        .iter()
        .copied()
        .filter(|f| detection.snapshot(*f).is_none())
        .collect();
    let mut read = apply::snapshots(backend, &missing).into_iter();
    let currents: Vec<(Family, Result<Snapshot, apply::ApplyError>)> = families
        .iter()
        .map(|f| match detection.snapshot(*f) {
            Some(s) => (*f, Ok(s)),
            // `missing` lists exactly these families, in this order.
            None => (
                *f,
                read.next().unwrap_or_else(|| {
                    Err(apply::ApplyError::Failed {
                        cmd: backend.save_cmd(*f),
                        status: "not run".into(),
                        stderr: "internal error: no result for this family".into(),
                    })
                }),
            ),
        })
        .collect();
    for (family, current) in currents {
        let current = match current {
            Ok(s) => s,
            Err(e) if flags.cleanup && family == Family::V6 && flags.ipv6 == Ipv6Mode::Auto => {
                log.say(format!("IPv6: skipped in cleanup ({e})"));
                continue;
            }
            Err(e) if flags.dry_run => {
                log.say(format!(
                    "{}: could not read the current rules ({e}); dry run continues as if the table held nothing of ours",
                    family.name()
                ));
                Snapshot::default()
            }
            Err(e) => {
                return Err(vec![format!(
                    "reading the current {} rules failed: {e}",
                    family.name()
                )])
            }
        };
        if current.is_empty() {
            log.say(format!("{}: no remora rules present", family.name()));
        } else {
            log.say(format!(
                "{}: found {} remora chains and {} remora rules in built-in chains; {}",
                family.name(),
                current.chains.len(),
                current.builtin.len(),
                if flags.cleanup {
                    "removing them"
                } else {
                    "replacing them in the same transaction"
                }
            ));
        }
        let (text, target) = if flags.cleanup {
            (plan::render_cleanup(&current), Snapshot::default())
        } else {
            let target = plan::plan(&cfg, family);
            (plan::render_transition(&current, &target), target)
        };
        log.line(format!(
            "--- {} restore text ({} -w 10 --noflush) ---",
            family.name(),
            backend.restore_cmd(family)
        ));
        log.line(text.trim_end());
        log.line("--- end ---");
        steps.push((family, text, current));
        targets.push((family, target));
    }

    if flags.dry_run {
        log.say("dry run: nothing was changed");
        return Ok(());
    }

    let mut say_step = |m: String| log.say(m);
    apply::apply_all(backend, &steps, &mut say_step)?;

    let mut warnings = 0;
    let families: Vec<Family> = targets.iter().map(|(f, _)| *f).collect();
    let afters = apply::snapshots(backend, &families);
    for ((family, target), after) in targets.iter().zip(afters) {
        let after = match after {
            Ok(s) => s,
            Err(e) => {
                return Err(vec![format!(
                    "rules were applied but reading them back failed: {e}"
                )])
            }
        };
        log.line(format!(
            "--- {} rules of remora now installed ({} -t nat, remora only) ---",
            family.name(),
            backend.save_cmd(*family)
        ));
        let lines = after.save_lines();
        for l in &lines {
            log.line(l);
        }
        log.line("--- end ---");
        if lines == target.save_lines() {
            log.say(format!(
                "{}: installed rules match the plan ({} rules)",
                family.name(),
                lines.iter().filter(|l| l.starts_with("-A ")).count()
            ));
        } else {
            warnings += 1;
            log.say(format!(
                "warning: {}: installed rules differ from the plan (printing differences)",
                family.name()
            ));
            let want = target.save_lines();
            for l in want.iter().filter(|l| !lines.contains(l)) {
                log.line(format!("  planned, not installed: {l}"));
            }
            for l in lines.iter().filter(|l| !want.contains(l)) {
                log.line(format!("  installed, not planned: {l}"));
            }
        }
    }
    let what = if flags.cleanup { "cleanup" } else { "capture" };
    let fams: Vec<&str> = targets.iter().map(|(f, _)| f.name()).collect();
    log.say(format!(
        "done: {what} applied for {} with the {} backend in {} ms{}",
        fams.join("+"),
        backend_name(backend),
        started.elapsed().as_millis(),
        if warnings > 0 { " (with warnings)" } else { "" }
    ));
    Ok(())
}

fn backend_name(b: Backend) -> &'static str {
    b.name()
}

/// Whether the current network namespace holds exactly the capture `flags` plan (our chains and
/// our rules in built-in chains, per family, as `iptables-save` prints them). `Ok` says what
/// was found; `Err` names each family that differs, one line each.
pub fn verify(flags: &Flags) -> Result<Vec<String>, Vec<String>> {
    let mut cfg = flags
        .validate_all()
        .map_err(|errs| errs.iter().map(|e| e.to_string()).collect::<Vec<_>>())?;
    apply::resolve_group_names(&mut cfg)?;
    let (ipv6, _) = apply::decide_ipv6(flags.ipv6).map_err(|e| vec![e])?;
    let detection = apply::detect(flags.iptables_mode);
    let mut families = vec![Family::V4];
    if ipv6 {
        families.push(Family::V6);
    }
    let mut found = Vec::new();
    let mut errors = Vec::new();
    for family in families {
        let current = match detection.snapshot(family) {
            Some(s) => s,
            None => match apply::snapshot(detection.backend, family) {
                Ok((s, _)) => s,
                Err(e) => {
                    errors.push(format!("reading the {} rules failed: {e}", family.name()));
                    continue;
                }
            },
        };
        let want = plan::plan(&cfg, family).save_lines();
        let have = current.save_lines();
        if want == have {
            found.push(format!(
                "{}: the planned {} rules are installed ({} backend)",
                family.name(),
                want.iter().filter(|l| l.starts_with("-A ")).count(),
                detection.backend.name()
            ));
        } else {
            let missing: Vec<&String> = want.iter().filter(|l| !have.contains(l)).collect();
            let extra = have.iter().filter(|l| !want.contains(l)).count();
            errors.push(format!(
                "{}: the installed remora rules differ from the plan: {} planned lines missing, {} not planned{}",
                family.name(),
                missing.len(),
                extra,
                missing
                    .first()
                    .map(|l| format!(" (first missing: {l})"))
                    .unwrap_or_default()
            ));
        }
    }
    if errors.is_empty() {
        Ok(found)
    } else {
        Err(errors)
    }
}
