//! `remora-init`: programs the sidecar's iptables capture in the pod's network namespace.
//!
//! Prints the flags, the decisions (IPv6, backend), the full restore text, then the rules of ours
//! the kernel holds afterwards. Exit status 0 on success, 1 on any error (one line per error on
//! stderr), 2 on a command-line syntax error.

use std::io::Write;
use std::process::ExitCode;
use std::time::Instant;

use remora_init::apply::{self, Backend};
use remora_init::flags::{Flags, Ipv6Mode};
use remora_init::plan::{self, Family, Snapshot};

/// One line to stdout. Write errors (a closed pipe) are ignored: logging must never abort the
/// program between two steps of an apply.
fn line(text: impl AsRef<str>) {
    let _ = writeln!(std::io::stdout().lock(), "{}", text.as_ref());
}

fn say(msg: impl AsRef<str>) {
    line(format!("remora-init: {}", msg.as_ref()));
}

fn fail(msg: impl AsRef<str>) {
    let _ = writeln!(
        std::io::stderr().lock(),
        "remora-init: error: {}",
        msg.as_ref()
    );
}

fn main() -> ExitCode {
    let (flags, flag_lines) = match Flags::parse_with_sources() {
        Ok(f) => f,
        Err(e) => {
            // clap prints help/version to stdout (exit 0) and syntax errors to stderr (exit 2).
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    match run(&flags, &flag_lines) {
        Ok(()) => ExitCode::SUCCESS,
        Err(errors) => {
            for e in errors {
                fail(e);
            }
            ExitCode::FAILURE
        }
    }
}

fn run(flags: &Flags, flag_lines: &[String]) -> Result<(), Vec<String>> {
    let started = Instant::now();
    say("flags:");
    for l in flag_lines {
        line(format!("  {l}"));
    }
    let mut cfg = flags
        .validate_all()
        .map_err(|errs| errs.iter().map(|e| e.to_string()).collect::<Vec<_>>())?;
    for note in apply::resolve_group_names(&mut cfg)? {
        say(note);
    }
    if flags.cleanup {
        say("cleanup: removing every remora chain and rule (the capture flags are not used)");
    } else {
        for line in cfg.summary() {
            say(format!("capture: {line}"));
        }
    }
    if !flags.cleanup && !cfg.ignored_inbound_excludes.is_empty() {
        say(format!(
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
    say(format!("IPv6: {why6}"));
    let detection = apply::detect(flags.iptables_mode);
    let backend = detection.backend;
    say(format!("backend: {}", detection.reason));

    if !ipv6 && !flags.cleanup {
        if let Some(stale) = detection.snapshot(Family::V6).filter(|s| !s.is_empty()) {
            say(format!(
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
                say(format!("IPv6: skipped in cleanup ({e})"));
                continue;
            }
            Err(e) if flags.dry_run => {
                say(format!(
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
            say(format!("{}: no remora rules present", family.name()));
        } else {
            say(format!(
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
        line(format!(
            "--- {} restore text ({} -w 10 --noflush) ---",
            family.name(),
            backend.restore_cmd(family)
        ));
        line(text.trim_end());
        line("--- end ---");
        steps.push((family, text, current));
        targets.push((family, target));
    }

    if flags.dry_run {
        say("dry run: nothing was changed");
        return Ok(());
    }

    let mut log = |m: String| say(m);
    apply::apply_all(backend, &steps, &mut log)?;

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
        line(format!(
            "--- {} rules of remora now installed ({} -t nat, remora only) ---",
            family.name(),
            backend.save_cmd(*family)
        ));
        let lines = after.save_lines();
        for l in &lines {
            line(l);
        }
        line("--- end ---");
        if lines == target.save_lines() {
            say(format!(
                "{}: installed rules match the plan ({} rules)",
                family.name(),
                lines.iter().filter(|l| l.starts_with("-A ")).count()
            ));
        } else {
            warnings += 1;
            say(format!(
                "warning: {}: installed rules differ from the plan (printing differences)",
                family.name()
            ));
            let want = target.save_lines();
            for l in want.iter().filter(|l| !lines.contains(l)) {
                line(format!("  planned, not installed: {l}"));
            }
            for l in lines.iter().filter(|l| !want.contains(l)) {
                line(format!("  installed, not planned: {l}"));
            }
        }
    }
    let what = if flags.cleanup { "cleanup" } else { "capture" };
    let fams: Vec<&str> = targets.iter().map(|(f, _)| f.name()).collect();
    say(format!(
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
