//! Root-only tests of the real binary against real iptables tables in fresh network namespaces:
//! idempotency, cleanup, foreign rules surviving, dry-run output equal to what apply installs,
//! atomicity (kernel-side failure, IPv6 failure after IPv4 was applied), backend detection,
//! validation before any change, environment variables.

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;

use common::{ours_in_save, section, Netns, DEFAULT_ARGS};

const V4: &str = "iptables-nft-save";
const V6: &str = "ip6tables-nft-save";

fn args_with(extra: &[&'static str]) -> Vec<&'static str> {
    let mut v = DEFAULT_ARGS.to_vec();
    v.extend_from_slice(extra);
    v
}

/// Foreign rules in the nat table (both families) and the filter table that must survive.
fn add_foreign_rules(ns: &Netns, backend: &str) {
    for fam in ["iptables", "ip6tables"] {
        let tool = format!("{fam}-{backend}");
        for rule in [
            vec!["-t", "nat", "-N", "FOREIGN_CHAIN"],
            vec![
                "-t",
                "nat",
                "-A",
                "FOREIGN_CHAIN",
                "-p",
                "udp",
                "-j",
                "RETURN",
            ],
            vec![
                "-t",
                "nat",
                "-A",
                "PREROUTING",
                "-p",
                "udp",
                "-j",
                "FOREIGN_CHAIN",
            ],
            vec![
                "-t",
                "nat",
                "-A",
                "OUTPUT",
                "-p",
                "udp",
                "--dport",
                "5353",
                "-m",
                "comment",
                "--comment",
                "foreign dns",
                "-j",
                "RETURN",
            ],
            vec![
                "-t", "filter", "-A", "INPUT", "-p", "tcp", "--dport", "22", "-j", "ACCEPT",
            ],
        ] {
            // -w: the xtables lock is shared with parallel tests in other namespaces.
            let mut with_wait = vec!["-w"];
            with_wait.extend_from_slice(&rule);
            ns.must(&tool, &with_wait);
        }
    }
}

fn whole_state(ns: &Netns, backend: &str) -> Vec<String> {
    let mut all = Vec::new();
    for fam in ["iptables", "ip6tables"] {
        let tool = format!("{fam}-{backend}-save");
        all.push(format!("## {tool}"));
        // Whole dump of all tables, counters and generated-by comments stripped.
        let dump = ns.must(&tool, &[]);
        all.extend(dump.lines().filter(|l| !l.starts_with('#')).map(|l| {
            if l.starts_with(':') {
                l.rsplit_once(' ')
                    .map(|(a, _)| a.to_string())
                    .unwrap_or_default()
            } else {
                l.to_string()
            }
        }));
    }
    all
}

fn idempotent_apply_and_cleanup(backend: &'static str) {
    let ns = Netns::new(&format!("idem-{backend}"));
    add_foreign_rules(&ns, backend);
    let pristine = whole_state(&ns, backend);

    let mode = ["--iptables-mode", backend, "--ipv6", "on"];
    let first_args = args_with(&["-k", "vnet0", "-c", "eth9", "-o", "53", "-q", "443"]);
    let mut a1 = first_args.clone();
    a1.extend_from_slice(&mode);
    ns.init(&a1);
    let after_first = whole_state(&ns, backend);
    assert_ne!(after_first, pristine, "apply changed nothing");
    for foreign in pristine.iter().filter(|l| l.starts_with("-A ")) {
        assert!(
            after_first.contains(foreign),
            "foreign rule lost by apply: {foreign}"
        );
    }

    // Second identical run: exactly the same tables, no duplicates.
    let out2 = ns.init(&a1);
    assert!(
        out2.contains("replacing them in the same transaction"),
        "{out2}"
    );
    assert_eq!(
        whole_state(&ns, backend),
        after_first,
        "second run changed the tables"
    );

    // A different configuration, then the first again: back to exactly the same tables.
    let mut other = vec!["-b", "9080", "-i", "10.0.0.0/8", "-u", "1400"];
    other.extend_from_slice(&mode);
    ns.init(&other);
    let after_other = whole_state(&ns, backend);
    assert_ne!(after_other, after_first);
    assert!(
        !after_other.iter().any(|l| l.contains("vnet0")),
        "stale -k rules left"
    );
    ns.init(&a1);
    assert_eq!(
        whole_state(&ns, backend),
        after_first,
        "re-apply did not converge"
    );

    // Cleanup removes ours and nothing else; twice is fine.
    let mut c = vec!["--cleanup"];
    c.extend_from_slice(&mode);
    let out = ns.init(&c);
    assert!(
        out.contains("cleanup: removing every remora chain and rule"),
        "{out}"
    );
    assert!(!out.contains("capture: inbound"), "{out}");
    assert_eq!(
        whole_state(&ns, backend),
        pristine,
        "cleanup did not restore the tables"
    );
    ns.init(&c);
    assert_eq!(
        whole_state(&ns, backend),
        pristine,
        "second cleanup changed something"
    );
}

#[test]
fn nft_apply_is_idempotent_and_cleanup_leaves_foreign_rules() {
    idempotent_apply_and_cleanup("nft");
}

#[test]
fn legacy_apply_is_idempotent_and_cleanup_leaves_foreign_rules() {
    idempotent_apply_and_cleanup("legacy");
}

/// Replay restore text onto our (empty) state: chain -> rules, in kernel order.
fn simulate(text: &[String]) -> BTreeMap<String, Vec<String>> {
    let mut chains: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in text {
        if let Some(decl) = line.strip_prefix(':') {
            chains
                .entry(decl.split(' ').next().unwrap_or("").to_string())
                .or_default();
        } else if let Some(rest) = line.strip_prefix("-A ") {
            let (chain, spec) = rest.split_once(' ').expect("-A CHAIN SPEC");
            chains
                .entry(chain.to_string())
                .or_default()
                .push(spec.to_string());
        } else if let Some(rest) = line.strip_prefix("-I ") {
            let mut p = rest.splitn(3, ' ');
            let chain = p.next().expect("chain").to_string();
            let pos: usize = p.next().expect("pos").parse().expect("numeric position");
            let spec = p.next().expect("spec").to_string();
            chains.entry(chain).or_default().insert(pos - 1, spec);
        } else {
            assert!(
                line == "*nat" || line == "COMMIT",
                "unexpected line in dry-run text for an empty table: {line}"
            );
        }
    }
    chains
}

/// In iptables-save order: built-in chains first, then user chains sorted by name.
fn as_save_lines(chains: &BTreeMap<String, Vec<String>>) -> Vec<String> {
    let builtin = ["PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"];
    let mut out: Vec<String> = chains
        .keys()
        .filter(|c| !builtin.contains(&c.as_str()))
        .map(|c| format!(":{c} - [0:0]"))
        .collect();
    for c in builtin {
        for r in chains.get(c).into_iter().flatten() {
            out.push(format!("-A {c} {r}"));
        }
    }
    for (c, rules) in chains
        .iter()
        .filter(|(c, _)| !builtin.contains(&c.as_str()))
    {
        for r in rules {
            out.push(format!("-A {c} {r}"));
        }
    }
    out
}

#[test]
fn dry_run_prints_exactly_what_apply_installs() {
    let ns = Netns::new("dryrun");
    let args = args_with(&[
        "-k",
        "vnet0,vnet1",
        "-c",
        "eth9",
        "-o",
        "53",
        "-q",
        "443",
        "-i",
        "10.0.0.0/8,fd00::/8",
        "-x",
        "10.1.0.0/16,fd00:1::/32",
        "-u",
        "1337,1338",
        "-g",
        "1400",
        "--ipv6",
        "on",
        "--iptables-mode",
        "nft",
    ]);
    let mut dry = args.clone();
    dry.push("--dry-run");
    let out = ns.init(&dry);
    assert!(out.contains("dry run: nothing was changed"), "{out}");
    for tool in [V4, V6] {
        assert!(
            ours_in_save(&ns.save(tool)).is_empty(),
            "dry run changed {tool}:\n{}",
            ns.save(tool)
        );
    }
    let text4 = section(&out, "IPv4 restore text").expect("IPv4 text printed");
    let text6 = section(&out, "IPv6 restore text").expect("IPv6 text printed");

    let applied = ns.init(&args);
    for (text, tool, fam) in [(text4, V4, "IPv4"), (text6, V6, "IPv6")] {
        let expected = as_save_lines(&simulate(&text));
        let installed = ours_in_save(&ns.save(tool));
        assert_eq!(
            installed, expected,
            "{fam}: installed (left) vs dry run (right)"
        );
        // The binary's own report of what is installed says the same.
        let reported = section(&applied, &format!("{fam} rules of remora now installed"))
            .expect("installed rules printed");
        assert_eq!(
            reported, expected,
            "{fam}: reported (left) vs dry run (right)"
        );
        assert!(
            expected.len() > 20,
            "{fam}: suspiciously few rules: {expected:?}"
        );
    }
    assert!(
        applied.contains("IPv4: installed rules match the plan"),
        "{applied}"
    );
    assert!(
        applied.contains("IPv6: installed rules match the plan"),
        "{applied}"
    );
}

#[test]
fn ipv6_failure_after_ipv4_rolls_back_ipv4() {
    let ns = Netns::new("rollback");
    // A fake ip6tables-nft-restore that always fails, first on PATH.
    let dir = tempfile::tempdir().expect("tempdir");
    let fake = dir.path().join("ip6tables-nft-restore");
    std::fs::write(
        &fake,
        "#!/bin/sh\ncat >/dev/null\necho 'ip6tables-restore: line 3 failed (simulated)' >&2\nexit 1\n",
    )
    .expect("write fake");
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let path = format!(
        "{}:{}",
        dir.path().display(),
        std::env::var("PATH").unwrap_or_default()
    );

    // 1. Nothing of ours before: IPv4 must end up without any of ours.
    add_foreign_rules(&ns, "nft");
    let pristine = whole_state(&ns, "nft");
    let mut args = args_with(&["--ipv6", "on", "--iptables-mode", "nft"]);
    let out = ns.exec_env(common::BIN, &args, &[("PATH", &path)]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "must fail:\n{stdout}");
    assert!(stdout.contains("IPv4: applied"), "{stdout}");
    assert!(stdout.contains("IPv4: rolled back"), "{stdout}");
    assert!(
        stderr.contains("applying IPv6 rules failed") && stderr.contains("simulated"),
        "{stderr}"
    );
    assert!(
        stderr
            .lines()
            .all(|l| l.starts_with("remora-init: error: ")),
        "{stderr}"
    );
    assert_eq!(
        whole_state(&ns, "nft"),
        pristine,
        "IPv4 not rolled back to nothing"
    );

    // 2. A previous configuration installed: IPv4 must return to exactly it.
    args.extend_from_slice(&["-k", "vnet0"]);
    ns.init(&args_with(&[
        "--ipv6",
        "on",
        "--iptables-mode",
        "nft",
        "-c",
        "eth9",
    ]));
    let before = whole_state(&ns, "nft");
    let out = ns.exec_env(common::BIN, &args, &[("PATH", &path)]);
    assert!(!out.status.success());
    assert_eq!(
        whole_state(&ns, "nft"),
        before,
        "IPv4 not rolled back to the previous rules"
    );
}

#[test]
fn kernel_rejection_leaves_the_table_unchanged() {
    let ns = Netns::new("atomic");
    ns.init(&args_with(&["--ipv6", "off", "--iptables-mode", "nft"]));
    // Someone else jumps to a chain with our prefix that the plan does not have: the plan's
    // `-X REMORA_STALE` is refused by the kernel, so the whole transaction must be dropped.
    ns.must("iptables-nft", &["-t", "nat", "-N", "REMORA_STALE"]);
    ns.must("iptables-nft", &["-t", "nat", "-N", "OTHER"]);
    ns.must(
        "iptables-nft",
        &["-t", "nat", "-A", "OTHER", "-j", "REMORA_STALE"],
    );
    let before = whole_state(&ns, "nft");
    let out = ns.exec(
        common::BIN,
        &[
            "-b",
            "9080",
            "-i",
            "*",
            "--ipv6",
            "off",
            "--iptables-mode",
            "nft",
        ],
    );
    assert!(
        !out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("applying IPv4 rules failed"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        whole_state(&ns, "nft"),
        before,
        "a failed apply changed the table"
    );
    // Cleanup is refused the same way and is atomic too.
    let out = ns.exec(
        common::BIN,
        &["--cleanup", "--ipv6", "off", "--iptables-mode", "nft"],
    );
    assert!(!out.status.success());
    assert_eq!(
        whole_state(&ns, "nft"),
        before,
        "a failed cleanup changed the table"
    );
}

#[test]
fn invalid_flags_fail_before_anything_is_applied() {
    let ns = Netns::new("invalid");
    let out = ns.exec(
        common::BIN,
        &[
            "-b",
            "80,http",
            "-c",
            "a/b",
            "-i",
            "10.0.0.0/40",
            "-m",
            "TPROXY",
            "--ipv6",
            "off",
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 4, "one line per bad flag:\n{stderr}");
    for (line, flag, value) in [
        (
            lines[0],
            "-m/--istio-inbound-interception-mode",
            "\"TPROXY\"",
        ),
        (lines[1], "-b/--istio-inbound-ports", "\"http\""),
        (lines[2], "-i/--istio-service-cidr", "\"10.0.0.0/40\""),
        (lines[3], "-c/--istio-exclude-interfaces", "\"a/b\""),
    ] {
        assert!(line.starts_with("remora-init: error: "), "{line}");
        assert!(line.contains(flag) && line.contains(value), "{line}");
    }
    assert!(ours_in_save(&ns.save(V4)).is_empty());
    // A syntax error (unknown flag) is clap's exit code 2.
    let out = ns.exec(common::BIN, &["--no-such-flag"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn auto_backend_follows_the_rules_already_present() {
    // Legacy holds rules -> legacy is chosen and programmed; nft stays untouched.
    let ns = Netns::new("legacy");
    ns.must(
        "iptables-legacy",
        &["-w", "-t", "filter", "-A", "INPUT", "-j", "ACCEPT"],
    );
    let out = ns.init(&args_with(&["--ipv6", "off"]));
    assert!(out.contains("backend: legacy (auto: legacy holds"), "{out}");
    let installed = ours_in_save(&ns.save("iptables-legacy-save"));
    assert!(!installed.is_empty());
    assert!(
        ours_in_save(&ns.save(V4)).is_empty(),
        "nft was programmed too"
    );
    // A re-run in auto mode reads the current rules from the dumps taken while detecting (all
    // tables, not just nat) and still converges to the same rules.
    let out = ns.init(&args_with(&["--ipv6", "off"]));
    assert!(
        out.contains("replacing them in the same transaction"),
        "{out}"
    );
    assert_eq!(ours_in_save(&ns.save("iptables-legacy-save")), installed);

    // Nothing anywhere -> nft.
    let ns2 = Netns::new("fresh");
    let out = ns2.init(&args_with(&["--ipv6", "off"]));
    assert!(
        out.contains("backend: nft (auto: no rules in either backend"),
        "{out}"
    );
    let installed = whole_state(&ns2, "nft");
    assert!(!ours_in_save(&ns2.save(V4)).is_empty());
    let out = ns2.init(&args_with(&["--ipv6", "off"]));
    assert!(out.contains("backend: nft (auto: nft holds"), "{out}");
    assert!(
        out.contains("replacing them in the same transaction"),
        "{out}"
    );
    assert_eq!(
        whole_state(&ns2, "nft"),
        installed,
        "auto re-run changed the tables"
    );
}

#[test]
fn stale_ipv6_rules_are_reported_when_ipv6_is_off() {
    let ns = Netns::new("v6stale");
    ns.init(&args_with(&["--ipv6", "on"]));
    let out = ns.init(&args_with(&["--ipv6", "off"]));
    assert!(
        out.contains("warning: IPv6 is off but ip6tables holds 4 remora chains"),
        "{out}"
    );
    assert!(
        !ours_in_save(&ns.save(V6)).is_empty(),
        "IPv6 rules must be left alone"
    );
    ns.init(&["--cleanup", "--ipv6", "auto"]);
    assert!(
        ours_in_save(&ns.save(V6)).is_empty(),
        "cleanup must cover IPv6"
    );
    assert!(ours_in_save(&ns.save(V4)).is_empty());
}

#[test]
fn ipv6_auto_follows_the_pods_addresses() {
    let ns = Netns::new("v6auto");
    let out = ns.init(&args_with(&["--dry-run"]));
    assert!(
        out.contains("IPv6: off (auto: no global IPv6 address"),
        "{out}"
    );
    assert!(section(&out, "IPv6 restore text").is_none());
    ns.ip(&["link", "add", "v0", "type", "veth", "peer", "name", "v1"]);
    ns.ip(&["link", "set", "v0", "up"]);
    ns.ip(&["addr", "add", "fd00:213::2/64", "dev", "v0", "nodad"]);
    let out = ns.init(&args_with(&["--dry-run"]));
    assert!(
        out.contains("IPv6: on (auto: global IPv6 address fd00:213::2 on v0)"),
        "{out}"
    );
    assert!(section(&out, "IPv6 restore text").is_some());
}

/// Run remora-init in `ns` with an empty /proc (its own mount namespace), so that
/// /proc/net/if_inet6 cannot be read.
fn init_without_proc(ns: &Netns, args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let mut sh_args = vec![
        "-m",
        "--propagation",
        "private",
        "sh",
        "-c",
        "mount -t tmpfs none /proc && exec \"$0\" \"$@\"",
        common::BIN,
    ];
    sh_args.extend_from_slice(args);
    ns.exec_env("unshare", &sh_args, env)
}

#[test]
fn an_unreadable_ipv6_address_list_fails_closed() {
    let ns = Netns::new("v6noproc");
    ns.ip(&["link", "add", "v0", "type", "veth", "peer", "name", "v1"]);
    ns.ip(&["link", "set", "v0", "up"]);
    ns.ip(&["addr", "add", "fd00:213::2/64", "dev", "v0", "nodad"]);
    let before = whole_state(&ns, "nft");
    let out = init_without_proc(&ns, &args_with(&["--iptables-mode", "nft"]), &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let errors: Vec<&str> = stderr.lines().collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    assert!(
        errors[0].starts_with("remora-init: error: IPv6 capture (--ipv6 auto): cannot read /proc/net/if_inet6: No such file or directory"),
        "{stderr}"
    );
    assert!(errors[0].contains("--ipv6 off"), "{stderr}");
    assert_eq!(whole_state(&ns, "nft"), before, "nothing may change");
    // The same with --dry-run: a dry run shows what a real run would do.
    let out = init_without_proc(
        &ns,
        &args_with(&["--iptables-mode", "nft", "--dry-run"]),
        &[],
    );
    assert_eq!(out.status.code(), Some(1));
    // Disabling IPv6 capture explicitly (flag or environment) needs no address list.
    for (args, env) in [
        (
            args_with(&["--iptables-mode", "nft", "--ipv6", "off"]),
            vec![],
        ),
        (
            args_with(&["--iptables-mode", "nft"]),
            vec![("REMORA_IPV6", "off")],
        ),
    ] {
        let out = init_without_proc(&ns, &args, &env);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            stdout.contains("IPv6: off (forced by --ipv6 off)"),
            "{stdout}"
        );
    }
    assert!(!ours_in_save(&ns.save(V4)).is_empty());
    assert!(ours_in_save(&ns.save(V6)).is_empty());
    // Cleanup does not depend on the address list.
    let out = init_without_proc(&ns, &["--cleanup", "--iptables-mode", "nft"], &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(ours_in_save(&ns.save(V4)).is_empty());
}

#[test]
fn flags_can_come_from_istio_environment_variables() {
    let ns = Netns::new("env");
    let out = ns.exec_env(
        common::BIN,
        &["--dry-run", "--ipv6", "off"],
        &[
            ("ENVOY_PORT", "16001"),
            ("INBOUND_CAPTURE_PORT", "16006"),
            ("INBOUND_TUNNEL_PORT", "16008"),
            ("PROXY_UID", "1500"),
            ("PROXY_GID", "1600"),
            ("ISTIO_INBOUND_INTERCEPTION_MODE", "REDIRECT"),
            ("ISTIO_INBOUND_PORTS", "9080"),
            ("ISTIO_LOCAL_EXCLUDE_PORTS", "9999"),
            ("ISTIO_SERVICE_CIDR", "10.0.0.0/8"),
            ("ISTIO_SERVICE_EXCLUDE_CIDR", "10.1.0.0/16"),
            ("ISTIO_OUTBOUND_PORTS", "443"),
            ("ISTIO_LOCAL_OUTBOUND_PORTS_EXCLUDE", "53"),
            ("ISTIO_EXCLUDE_INTERFACES", "eth9"),
            ("KUBE_VIRT_INTERFACES", "vnet0"),
            ("ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE", "root"),
        ],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = section(&stdout, "IPv4 restore text")
        .expect("text")
        .join("\n");
    for needle in [
        "--to-ports 16001",
        "--to-ports 16006",
        "--dport 16008 -m comment --comment \"remora: inbound tunnel port 16008",
        "--uid-owner 1500",
        "--gid-owner 1600",
        "--dport 9080 -m comment --comment \"remora: capture inbound port 9080",
        "-d 10.0.0.0/8 -m comment",
        "-d 10.1.0.0/16 -m comment",
        "--dport 443 -m comment",
        "-p udp -m udp --dport 53",
        "-i eth9 -m comment",
        "-i vnet0 -m comment",
        "-m owner --gid-owner 0 -m comment --comment \"remora: group 0 is not captured",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
    }
    assert!(
        stdout.contains("-d/--istio-local-exclude-ports = \"9999\""),
        "{stdout}"
    );
    assert!(stdout.contains("note: -d [9999] has no effect"), "{stdout}");
    // A command-line flag wins over its environment variable.
    let out = ns.exec_env(
        common::BIN,
        &["--dry-run", "--ipv6", "off", "-p", "17001"],
        &[("ENVOY_PORT", "16001")],
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("--to-ports 17001"));
}

#[test]
fn a_closed_stdout_does_not_abort_the_apply() {
    // `remora-init ... | head -1`: the log pipe closes early; the rules must still be applied
    // completely (both families) and the exit status must say so.
    let ns = Netns::new("epipe");
    let (read_end, write_end) = nix::unistd::pipe().expect("pipe");
    drop(read_end);
    let status = std::process::Command::new("ip")
        .args(["netns", "exec", &ns.name, common::BIN])
        .args(args_with(&["--ipv6", "on", "--iptables-mode", "nft"]))
        .stdout(std::process::Stdio::from(write_end))
        .status()
        .expect("run");
    assert!(status.success(), "{status}");
    for tool in [V4, V6] {
        let ours = ours_in_save(&ns.save(tool));
        assert!(
            ours.iter().any(|l| l.starts_with("-A OUTPUT")) && ours.len() > 20,
            "{tool}: {ours:?}"
        );
    }
}

#[test]
fn dry_run_works_without_iptables_tools() {
    // E.g. previewing the rules on a workstation: no iptables on PATH. Still run inside a fresh
    // namespace, so that even a regression could never touch the host's tables.
    let ns = Netns::new("notools");
    let empty = tempfile::tempdir().expect("tempdir");
    let ip = std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .map(|d| std::path::Path::new(d).join("ip"))
        .find(|p| p.is_file())
        .expect("ip on PATH");
    let run = |extra: &[&'static str]| {
        std::process::Command::new(&ip)
            .args(["netns", "exec", &ns.name, common::BIN])
            .args(args_with(extra))
            .env("PATH", empty.path())
            .output()
            .expect("run")
    };
    let out = run(&["--dry-run", "--ipv6", "on"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("IPv4: could not read the current rules (could not run iptables-nft-save"),
        "{stdout}"
    );
    let text = section(&stdout, "IPv6 restore text").expect("IPv6 text");
    assert!(text.iter().any(|l| l.contains("-s ::6/128")), "{text:?}");
    // Without --dry-run the same situation is an error, before anything else happens.
    let out = run(&["--ipv6", "off"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains(
        "remora-init: error: reading the current IPv4 rules failed: could not run iptables-nft-save"
    ));
}
