//! The I/O shell: pick the iptables backend, read our current rules, feed restore text to
//! `iptables-restore --noflush` (one per family), roll back on failure, read the result.
//!
//! Everything runs in the caller's network namespace. Programs are found on `PATH`.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use crate::flags::{CaptureConfig, IptablesMode, Ipv6Mode, OwnerGroups};
use crate::plan::{self, Family, Snapshot};

/// An iptables implementation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Nft,
    Legacy,
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Backend::Nft => "nft",
            Backend::Legacy => "legacy",
        }
    }

    fn prefix(family: Family) -> &'static str {
        match family {
            Family::V4 => "iptables",
            Family::V6 => "ip6tables",
        }
    }

    /// e.g. `ip6tables-nft-save`
    pub fn save_cmd(self, family: Family) -> String {
        format!("{}-{}-save", Self::prefix(family), self.name())
    }

    /// e.g. `iptables-legacy-restore`
    pub fn restore_cmd(self, family: Family) -> String {
        format!("{}-{}-restore", Self::prefix(family), self.name())
    }

    /// e.g. `iptables-nft` (one rule per call; used by the benchmark for comparison)
    pub fn single_cmd(self, family: Family) -> String {
        format!("{}-{}", Self::prefix(family), self.name())
    }
}

/// An error of the I/O shell, one line each.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("could not run {cmd}: {source}")]
    Spawn { cmd: String, source: std::io::Error },
    #[error("{cmd} failed ({status}): {stderr}")]
    Failed {
        cmd: String,
        status: String,
        stderr: String,
    },
}

fn one_line(s: &str) -> String {
    let joined: Vec<&str> = s.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    if joined.is_empty() {
        "(no error output)".to_string()
    } else {
        joined.join(" | ")
    }
}

fn command_line(cmd: &str, args: &[&str]) -> String {
    if args.is_empty() {
        cmd.to_string()
    } else {
        format!("{cmd} {}", args.join(" "))
    }
}

/// A started program, not yet waited for.
struct Running {
    full: String,
    child: Result<std::process::Child, std::io::Error>,
}

fn start(cmd: &str, args: &[&str], stdin: Option<&str>) -> Running {
    let full = command_line(cmd, args);
    let child = Command::new(cmd)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let child = child.map(|mut c| {
        if let (Some(input), Some(mut pipe)) = (stdin, c.stdin.take()) {
            // A failing write (the program exited early) shows up in its exit status.
            let _ = pipe.write_all(input.as_bytes());
        }
        c
    });
    Running { full, child }
}

fn finish(r: Running) -> Result<String, ApplyError> {
    let Running { full, child } = r;
    let child = child.map_err(|source| ApplyError::Spawn {
        cmd: full.clone(),
        source,
    })?;
    let out = child
        .wait_with_output()
        .map_err(|source| ApplyError::Spawn {
            cmd: full.clone(),
            source,
        })?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(ApplyError::Failed {
            cmd: full,
            status: out.status.to_string(),
            stderr: one_line(&String::from_utf8_lossy(&out.stderr)),
        })
    }
}

/// Run `cmd args` with `stdin`, return stdout.
pub fn run(cmd: &str, args: &[&str], stdin: Option<&str>) -> Result<String, ApplyError> {
    finish(start(cmd, args, stdin))
}

/// Run read-only programs (no stdin) concurrently; results in the same order.
pub fn run_concurrently(cmds: &[(String, Vec<&str>)]) -> Vec<Result<String, ApplyError>> {
    let started: Vec<Running> = cmds
        .iter()
        .map(|(cmd, args)| start(cmd, args, None))
        .collect();
    started.into_iter().map(finish).collect()
}

/// Count of rules (`-A` lines) in an `iptables-save` dump.
fn rule_count(save: &str) -> usize {
    save.lines().filter(|l| l.starts_with("-A ")).count()
}

/// The chosen backend, why, and the full dumps of the chosen backend taken while deciding (so
/// the caller need not read the tables again).
#[derive(Debug, Clone)]
pub struct Detection {
    pub backend: Backend,
    pub reason: String,
    /// `(family, <family>-<backend>-save output)` for the chosen backend, when read.
    pub dumps: Vec<(Family, String)>,
}

impl Detection {
    /// Our current rules of `family` from the dump taken during detection, if there is one.
    pub fn snapshot(&self, family: Family) -> Option<Snapshot> {
        self.dumps
            .iter()
            .find(|(f, _)| *f == family)
            .map(|(_, text)| plan::parse_save(text))
    }
}

/// Choose the backend. Returns it and a sentence saying why.
pub fn detect_backend(mode: IptablesMode) -> (Backend, String) {
    let d = detect(mode);
    (d.backend, d.reason)
}

/// Choose the backend: forced, or (auto) the one that already holds rules in this network
/// namespace, nft when neither or both do.
pub fn detect(mode: IptablesMode) -> Detection {
    let forced = |backend: Backend| Detection {
        backend,
        reason: format!(
            "{} (forced by --iptables-mode {})",
            backend.name(),
            backend.name()
        ),
        dumps: Vec::new(),
    };
    match mode {
        IptablesMode::Nft => return forced(Backend::Nft),
        IptablesMode::Legacy => return forced(Backend::Legacy),
        IptablesMode::Auto => {}
    }
    // The four dumps are read concurrently (read-only; saves take no lock).
    let order = [
        (Backend::Nft, Family::V4),
        (Backend::Nft, Family::V6),
        (Backend::Legacy, Family::V4),
        (Backend::Legacy, Family::V6),
    ];
    let cmds: Vec<(String, Vec<&str>)> = order
        .iter()
        .map(|(b, f)| (b.save_cmd(*f), Vec::new()))
        .collect();
    let mut results: Vec<Option<Result<String, ApplyError>>> =
        run_concurrently(&cmds).into_iter().map(Some).collect();
    type Counted = Result<(usize, Vec<(Family, String)>), String>;
    let mut count = |b: Backend| -> Counted {
        let mut n = 0;
        let mut dumps = Vec::new();
        for (i, (ob, fam)) in order.iter().enumerate() {
            if *ob != b {
                continue;
            }
            match results[i].take() {
                Some(Ok(text)) => {
                    n += rule_count(&text);
                    dumps.push((*fam, text));
                }
                // No ip6tables in this namespace is fine; no iptables at all is not.
                Some(Err(e)) if *fam == Family::V4 => return Err(e.to_string()),
                _ => {}
            }
        }
        Ok((n, dumps))
    };
    let nft = count(Backend::Nft);
    let legacy = count(Backend::Legacy);
    let pick = |backend: Backend, reason: String, dumps: Vec<(Family, String)>| Detection {
        backend,
        reason,
        dumps,
    };
    match (nft, legacy) {
        (Ok((n, _)), Ok((l, dumps))) if l > 0 && n == 0 => pick(
            Backend::Legacy,
            format!("legacy (auto: legacy holds {l} rules in this network namespace, nft none)"),
            dumps,
        ),
        (Ok((n, dumps)), Ok((l, _))) if n > 0 && l > 0 => pick(
            Backend::Nft,
            format!("nft (auto: both hold rules here, nft {n}, legacy {l}; preferring nft)"),
            dumps,
        ),
        (Ok((n, dumps)), Ok(_)) if n > 0 => pick(
            Backend::Nft,
            format!("nft (auto: nft holds {n} rules in this network namespace, legacy none)"),
            dumps,
        ),
        (Ok((_, dumps)), Ok(_)) => pick(
            Backend::Nft,
            "nft (auto: no rules in either backend in this network namespace; default nft)".into(),
            dumps,
        ),
        (Ok((_, dumps)), Err(e)) => pick(
            Backend::Nft,
            format!("nft (auto: legacy tools unusable: {e})"),
            dumps,
        ),
        (Err(e), Ok((_, dumps))) => pick(
            Backend::Legacy,
            format!("legacy (auto: nft tools unusable: {e})"),
            dumps,
        ),
        (Err(e), Err(_)) => pick(
            Backend::Nft,
            format!("nft (auto: neither backend's save tool works; trying nft anyway: {e})"),
            Vec::new(),
        ),
    }
}

/// Where the kernel lists the IPv6 addresses of this network namespace.
pub const IF_INET6: &str = "/proc/net/if_inet6";

/// What the IPv6 address list of this network namespace says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ipv6Addresses {
    /// A global-scope address (ULA included): `"<addr> on <interface>"`.
    Global(String),
    /// IPv6 is there, but no global-scope address.
    NoGlobal,
    /// The kernel has no IPv6 at all: the address list is absent while the rest of `/proc/net`
    /// is there (booted with `ipv6.disable=1`, or built without IPv6). No IPv6 traffic exists.
    NoIpv6InKernel,
}

/// Read the IPv6 address list at `path` (normally [`IF_INET6`]).
///
/// A missing file means "no IPv6 in this kernel" only when its folder is a readable `/proc/net`
/// (it lists `dev`); anything else that stops the read (no `/proc` mounted, a permission
/// refused, an I/O error) is an error: the caller cannot tell whether IPv6 traffic exists.
pub fn ipv6_addresses_at(path: &Path) -> Result<Ipv6Addresses, std::io::Error> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(match global_ipv6_in(&text) {
            Some(a) => Ipv6Addresses::Global(a),
            None => Ipv6Addresses::NoGlobal,
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let proc_net_there = path.parent().is_some_and(|dir| dir.join("dev").is_file());
            if proc_net_there {
                Ok(Ipv6Addresses::NoIpv6InKernel)
            } else {
                Err(e)
            }
        }
        Err(e) => Err(e),
    }
}

/// `addr ifindex prefixlen scope flags ifname`; scope 00 = global (includes ULA).
fn global_ipv6_in(if_inet6: &str) -> Option<String> {
    for line in if_inet6.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() >= 6 && f[3] == "00" && f[0].len() == 32 {
            let groups: Vec<String> = (0..8).map(|i| f[0][i * 4..i * 4 + 4].to_string()).collect();
            let text = groups.join(":");
            let addr = text
                .parse::<std::net::Ipv6Addr>()
                .map(|a| a.to_string())
                .unwrap_or(text);
            return Some(format!("{addr} on {}", f[5]));
        }
    }
    None
}

/// Decide whether to program IPv6, from this network namespace's addresses ([`IF_INET6`]).
/// Returns the decision and why, or one error line.
pub fn decide_ipv6(mode: Ipv6Mode) -> Result<(bool, String), String> {
    decide_ipv6_at(mode, Path::new(IF_INET6))
}

/// [`decide_ipv6`] reading the address list at `if_inet6`.
///
/// In auto mode an address list that cannot be read is an error (fail closed): turning IPv6
/// capture off on a guess would let the pod's IPv6 traffic bypass the proxy. `--ipv6 on|off`
/// decides without reading anything.
pub fn decide_ipv6_at(mode: Ipv6Mode, if_inet6: &Path) -> Result<(bool, String), String> {
    match mode {
        Ipv6Mode::On => Ok((true, "on (forced by --ipv6 on)".into())),
        Ipv6Mode::Off => Ok((false, "off (forced by --ipv6 off)".into())),
        Ipv6Mode::Auto => match ipv6_addresses_at(if_inet6) {
            Ok(Ipv6Addresses::Global(a)) => Ok((true, format!("on (auto: global IPv6 address {a})"))),
            Ok(Ipv6Addresses::NoGlobal) => Ok((
                false,
                "off (auto: no global IPv6 address in this pod)".into(),
            )),
            Ok(Ipv6Addresses::NoIpv6InKernel) => Ok((
                false,
                format!("off (auto: the kernel has no IPv6: {} does not exist)", if_inet6.display()),
            )),
            Err(e) => Err(format!(
                "IPv6 capture (--ipv6 auto): cannot read {}: {e}; without it remora-init cannot tell whether this pod has IPv6, and IPv6 traffic must not bypass the proxy, so nothing was changed. Set --ipv6 off (or REMORA_IPV6=off) to disable IPv6 capture explicitly, or --ipv6 on to capture IPv6 regardless",
                if_inet6.display()
            )),
        },
    }
}

/// Replace group names in the owner-group filter by their numbers (from this container's group
/// database), as `iptables-save` prints numbers. Returns one note per resolved name, or one
/// error line per unknown name.
pub fn resolve_group_names(cfg: &mut CaptureConfig) -> Result<Vec<String>, Vec<String>> {
    resolve_group_names_with(cfg, |name| {
        nix::unistd::Group::from_name(name)
            .map(|g| g.map(|g| g.gid.as_raw()))
            .map_err(|e| e.to_string())
    })
}

/// [`resolve_group_names`] with a given lookup (name → gid).
pub fn resolve_group_names_with(
    cfg: &mut CaptureConfig,
    lookup: impl Fn(&str) -> Result<Option<u32>, String>,
) -> Result<Vec<String>, Vec<String>> {
    let (list, var) = match &mut cfg.owner_groups {
        OwnerGroups::All => return Ok(Vec::new()),
        OwnerGroups::Only(l) => (l, "ISTIO_OUTBOUND_OWNER_GROUPS"),
        OwnerGroups::AllExcept(l) => (l, "ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE"),
    };
    let mut notes = Vec::new();
    let mut errors = Vec::new();
    let mut resolved: Vec<String> = Vec::new();
    for g in list.iter() {
        let number = if g.parse::<u32>().is_ok() {
            g.clone()
        } else {
            match lookup(g) {
                Ok(Some(gid)) => {
                    notes.push(format!("group {g} is gid {gid}"));
                    gid.to_string()
                }
                Ok(None) => {
                    errors.push(format!(
                        "invalid value {g:?} for {var}: no such group in this container's group database"
                    ));
                    continue;
                }
                Err(e) => {
                    errors.push(format!(
                        "invalid value {g:?} for {var}: looking up the group failed: {e}"
                    ));
                    continue;
                }
            }
        };
        if !resolved.contains(&number) {
            resolved.push(number);
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    *list = resolved;
    Ok(notes)
}

/// Our current rules in one family's `nat` table, and the raw dump.
pub fn snapshot(backend: Backend, family: Family) -> Result<(Snapshot, String), ApplyError> {
    let text = run(&backend.save_cmd(family), &["-t", plan::TABLE], None)?;
    Ok((plan::parse_save(&text), text))
}

/// Our current rules in several families, read concurrently.
pub fn snapshots(backend: Backend, families: &[Family]) -> Vec<Result<Snapshot, ApplyError>> {
    let cmds: Vec<(String, Vec<&str>)> = families
        .iter()
        .map(|f| (backend.save_cmd(*f), vec!["-t", plan::TABLE]))
        .collect();
    run_concurrently(&cmds)
        .into_iter()
        .map(|r| r.map(|text| plan::parse_save(&text)))
        .collect()
}

/// Feed `text` to `<family>-<backend>-restore --noflush`.
pub fn restore(backend: Backend, family: Family, text: &str) -> Result<(), ApplyError> {
    // -w: wait (up to 10 s) for the xtables lock, which is shared by every network namespace
    // on the node (legacy takes it; nft accepts and ignores the option).
    run(
        &backend.restore_cmd(family),
        &["-w", "10", "--noflush"],
        Some(text),
    )
    .map(|_| ())
}

/// What happened to one family.
#[derive(Debug, Clone)]
pub struct FamilyResult {
    pub family: Family,
    /// The restore text that was applied (or would be).
    pub text: String,
}

/// Apply `texts` (one per family, in order) atomically across families: each family's restore
/// is atomic by itself; if a later family fails, the earlier ones are put back to the state in
/// `before` (their snapshot taken before applying). Returns the error of the failed family plus
/// any rollback errors.
pub fn apply_all(
    backend: Backend,
    steps: &[(Family, String, Snapshot)],
    log: &mut dyn FnMut(String),
) -> Result<(), Vec<String>> {
    for (i, (family, text, _)) in steps.iter().enumerate() {
        if let Err(e) = restore(backend, *family, text) {
            let mut errors = vec![format!("applying {} rules failed: {e}", family.name())];
            log(format!(
                "{}: nothing was changed (iptables-restore is atomic per table)",
                family.name()
            ));
            for (done_family, _, before) in steps[..i].iter().rev() {
                match rollback(backend, *done_family, before) {
                    Ok(()) => log(format!(
                        "{}: rolled back to its state before this run",
                        done_family.name()
                    )),
                    Err(e) => errors.push(format!(
                        "rolling back {} failed, its rules may be half-applied: {e}",
                        done_family.name()
                    )),
                }
            }
            return Err(errors);
        }
        log(format!("{}: applied", family.name()));
    }
    Ok(())
}

/// Put one family back to `before` (our rules as they were), whatever is there now.
pub fn rollback(backend: Backend, family: Family, before: &Snapshot) -> Result<(), ApplyError> {
    let (now, _) = snapshot(backend, family)?;
    let text = if before.is_empty() {
        plan::render_cleanup(&now)
    } else {
        plan::render_transition(&now, before)
    };
    restore(backend, family, &text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn if_inet6_global_scope_detection() {
        let text = "\
00000000000000000000000000000001 01 80 10 80       lo
fe800000000000000000000000000001 02 40 20 80     eth0
";
        assert_eq!(global_ipv6_in(text), None);
        let text2 = format!("{text}fd000213000000000000000000000002 02 40 00 80     eth0\n");
        assert_eq!(
            global_ipv6_in(&text2).as_deref(),
            Some("fd00:213::2 on eth0")
        );
    }

    #[test]
    fn group_names_become_numbers() {
        let lookup = |n: &str| match n {
            "java" => Ok(Some(1100)),
            "dup" => Ok(Some(202)),
            "broken" => Err("I/O error".to_string()),
            _ => Ok(None),
        };
        let mut cfg = CaptureConfig::istio_default();
        cfg.owner_groups = OwnerGroups::Only(vec!["java".into(), "202".into(), "dup".into()]);
        let notes = resolve_group_names_with(&mut cfg, lookup).unwrap();
        assert_eq!(
            notes,
            vec!["group java is gid 1100", "group dup is gid 202"]
        );
        assert_eq!(
            cfg.owner_groups,
            OwnerGroups::Only(vec!["1100".into(), "202".into()])
        );

        cfg.owner_groups = OwnerGroups::AllExcept(vec!["nosuch".into(), "broken".into()]);
        let errs = resolve_group_names_with(&mut cfg, lookup).unwrap_err();
        assert_eq!(errs.len(), 2);
        assert!(errs[0].contains("\"nosuch\" for ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE"));
        assert!(errs[1].contains("I/O error"));
        // The real lookup knows root.
        cfg.owner_groups = OwnerGroups::Only(vec!["root".into()]);
        resolve_group_names(&mut cfg).unwrap();
        assert_eq!(cfg.owner_groups, OwnerGroups::Only(vec!["0".into()]));
    }

    #[test]
    fn command_names() {
        assert_eq!(Backend::Nft.save_cmd(Family::V6), "ip6tables-nft-save");
        assert_eq!(
            Backend::Legacy.restore_cmd(Family::V4),
            "iptables-legacy-restore"
        );
        assert_eq!(Backend::Nft.single_cmd(Family::V4), "iptables-nft");
    }

    #[test]
    fn errors_are_one_line() {
        let e = run(
            "sh",
            &["-c", "echo 'line one' >&2; echo 'line two' >&2; exit 3"],
            None,
        )
        .unwrap_err()
        .to_string();
        assert!(!e.contains('\n'), "{e}");
        assert!(e.contains("line one | line two"), "{e}");
        let e = run("/nonexistent/remora-no-such-tool", &[], None)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("could not run /nonexistent/remora-no-such-tool"),
            "{e}"
        );
    }
}
