//! remora-init's command line: arbitrary argv and environment through the clap `Flags` (with the
//! environment fallbacks, as the program parses them), validation, group-name resolution, the
//! plan for both families and the restore text, against an arbitrary current `iptables-save`.
//!
//! Input: text lines. `ENV NAME=VALUE` sets one of the flags' environment variables, `SAVE ...`
//! adds a line to the current `iptables-save` text, any other line is one argument.
//! Properties: no panic; errors are one line each; the restore text consists only of restore
//! commands (no value can smuggle a line in); the planned chains read back from save format.
#![no_main]

use libfuzzer_sys::fuzz_target;
use remora_init::apply::resolve_group_names_with;
use remora_init::flags::Flags;
use remora_init::plan::{self, Family};

/// Every environment variable the flags fall back to (cleared before each input).
const ENV: &[&str] = &[
    "ENVOY_PORT",
    "INBOUND_CAPTURE_PORT",
    "INBOUND_TUNNEL_PORT",
    "PROXY_UID",
    "PROXY_GID",
    "ISTIO_INBOUND_INTERCEPTION_MODE",
    "ISTIO_SERVICE_CIDR",
    "ISTIO_SERVICE_EXCLUDE_CIDR",
    "ISTIO_INBOUND_PORTS",
    "ISTIO_LOCAL_EXCLUDE_PORTS",
    "ISTIO_OUTBOUND_PORTS",
    "ISTIO_LOCAL_OUTBOUND_PORTS_EXCLUDE",
    "ISTIO_EXCLUDE_INTERFACES",
    "KUBE_VIRT_INTERFACES",
    "ISTIO_OUTBOUND_OWNER_GROUPS",
    "ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE",
    "DRY_RUN",
    "REMORA_IPTABLES_MODE",
    "REMORA_IPV6",
];

fn one_line(what: &str, s: &str) {
    assert!(!s.trim().is_empty(), "{what}: empty message");
    assert!(!s.trim_end().contains('\n'), "{what}: not one line: {s:?}");
}

/// `strict`: the text comes only from the flags (no current table), so no control characters
/// at all; text built from a current table carries what `iptables-save` printed (which comes
/// from the kernel and is not checked here).
fn check_restore_text(text: &str, strict: bool) {
    for line in text.lines() {
        let ok = line == "*nat"
            || line == "COMMIT"
            || line.starts_with(':')
            || line.starts_with("-A ")
            || line.starts_with("-I ")
            || line.starts_with("-D ")
            || line.starts_with("-X ");
        assert!(ok, "not a restore command: {line:?}\n{text}");
        assert!(
            !strict || !line.chars().any(|c| c.is_control()),
            "control character in restore text: {line:?}"
        );
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut args = vec!["remora-init".to_string()];
    let mut save = String::new();
    for k in ENV {
        std::env::remove_var(k);
    }
    // A final newline ends the last line; it is not an empty argument after it.
    let text = text.strip_suffix('\n').unwrap_or(text);
    for line in text.split('\n') {
        if let Some(kv) = line.strip_prefix("ENV ") {
            if let Some((k, v)) = kv.split_once('=') {
                // Only the flags' own variables, and only values the OS can hold.
                if ENV.contains(&k) && !v.contains('\0') {
                    std::env::set_var(k, v);
                }
            }
        } else if let Some(l) = line.strip_prefix("SAVE ") {
            save.push_str(l);
            save.push('\n');
        } else {
            args.push(line.to_string());
        }
    }
    let parsed = Flags::parse_with_sources_from(args.iter().map(|a| a.as_str()));
    // The webhook's path: arguments only, environment ignored.
    let _ = Flags::try_parse_args_only(args.iter().map(|a| a.as_str()));
    let (flags, lines) = match parsed {
        Ok(f) => f,
        Err(e) => {
            let _ = e.to_string();
            return;
        }
    };
    for l in &lines {
        one_line("flag source line", l);
    }
    let mut cfg = match flags.validate_all() {
        Ok(c) => c,
        Err(errs) => {
            assert!(!errs.is_empty());
            for e in errs {
                one_line("flag error", &e.to_string());
            }
            return;
        }
    };
    let lookup = |name: &str| -> Result<Option<u32>, String> {
        Ok(match name {
            "root" => Some(0),
            "istio-proxy" => Some(1337),
            _ => None,
        })
    };
    match resolve_group_names_with(&mut cfg, lookup) {
        Ok(notes) => notes.iter().for_each(|n| one_line("group note", n)),
        Err(errs) => {
            errs.iter().for_each(|e| one_line("group error", e));
            return;
        }
    }
    for l in cfg.summary() {
        one_line("summary", &l);
    }
    let current = plan::parse_save(&save);
    for family in [Family::V4, Family::V6] {
        let target = plan::plan(&cfg, family);
        assert_eq!(target, plan::plan(&cfg, family), "the plan is not deterministic");
        check_restore_text(
            &plan::render_apply(&cfg, family, &plan::Snapshot::default()),
            true,
        );
        check_restore_text(&plan::render_transition(&target, &target), true);
        check_restore_text(&plan::render_apply(&cfg, family, &current), false);
        check_restore_text(&plan::render_cleanup(&current), false);
        // Our chains, written as iptables-save prints them, read back as the same chains.
        let saved = format!("*nat\n{}\nCOMMIT\n", target.save_lines().join("\n"));
        let back = plan::parse_save(&saved);
        let mut want = target.chains.clone();
        want.sort();
        let mut got = back.chains.clone();
        got.sort();
        assert_eq!(got, want, "planned chains do not read back from save format");
        assert_eq!(back.builtin.len(), target.builtin.len());
    }
});
