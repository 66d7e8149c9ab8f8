//! Golden tests of the rendered restore text, and a structural comparison with Istio's
//! istio-iptables goldens.
//!
//! * `init/tests/golden/*.golden`: our restore text for a table of configurations covering every
//!   flag. Regenerate with `REMORA_UPDATE_GOLDEN=1 cargo test -p remora-init --test golden`.
//! * Istio's goldens are read in place from `$REMORA_SHARED/anchors/istio/iptables/` (default
//!   `../shared` next to the workspace): for each case that maps onto our flags, the final chain
//!   contents Istio's restore input produces (after `-I ... 1` reordering) must equal ours rule by
//!   rule, after renaming `ISTIO_*` to `REMORA_*` and dropping comments and implicit `-m tcp`.
//!   Skipped, with a line saying so, where that corpus is absent (see `remora_corpus`).

use std::collections::BTreeMap;
use std::path::PathBuf;

use clap::Parser;
use remora_init::flags::{CaptureConfig, Flags};
use remora_init::plan::{self, Family, Snapshot};

fn config(args: &[&str]) -> CaptureConfig {
    let mut v = vec!["remora-init"];
    v.extend_from_slice(args);
    Flags::try_parse_from(&v)
        .unwrap_or_else(|e| panic!("{args:?}: {e}"))
        .validate()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"))
}

const DEFAULT: &[&str] = &[
    "-p",
    "15001",
    "-z",
    "15006",
    "-u",
    "1337",
    "-m",
    "REDIRECT",
    "-i",
    "*",
    "-x",
    "",
    "-b",
    "*",
    "-d",
    "15090,15021,15020",
];

/// (golden name, arguments). Together they use every flag.
fn our_cases() -> Vec<(&'static str, Vec<&'static str>)> {
    let with_default = |extra: &[&'static str]| {
        let mut v = DEFAULT.to_vec();
        v.extend_from_slice(extra);
        v
    };
    vec![
        ("istio-default", DEFAULT.to_vec()),
        ("no-flags", vec![]),
        (
            "inbound-listed-ports",
            vec!["-b", "8080,9090", "-d", "9000", "-i", "*"],
        ),
        ("inbound-disabled", vec!["-b", "", "-i", "*"]),
        (
            "outbound-cidrs",
            with_default(&[
                "-i",
                "10.96.0.0/12,fd00:10:96::/112",
                "-x",
                "10.96.0.1/32,fd00:10:96::1",
            ]),
        ),
        (
            "outbound-ports",
            vec!["-b", "*", "-i", "", "-q", "3306,5432", "-o", "53,8125"],
        ),
        (
            "outbound-exclude-ports-wildcard",
            with_default(&["-o", "15020,9901"]),
        ),
        ("exclude-interfaces", with_default(&["-c", "eth9,net+"])),
        (
            "virt-interfaces-cidrs",
            vec!["-b", "*", "-k", "vnet0,vnet1", "-i", "10.0.0.0/8,fd00::/8"],
        ),
        ("virt-interfaces-wildcard", with_default(&["-k", "vnet0"])),
        (
            "uid-gid-lists",
            with_default(&["-u", "1337,1338", "-g", "2000"]),
        ),
        (
            "custom-ports",
            vec![
                "-p", "16001", "-z", "16006", "-e", "16008", "-b", "*", "-i", "*", "-m", "REDIRECT",
            ],
        ),
        ("loopback-include", vec!["-i", "127.1.2.3/32", "-b", "*"]),
        (
            "zero-prefix",
            vec!["-i", "0.0.0.0/0", "-x", "::/0", "-b", "*"],
        ),
        (
            "owner-groups-include",
            with_default(&["--outbound-owner-groups", "3000,3001"]),
        ),
        (
            "owner-groups-exclude",
            with_default(&["--outbound-owner-groups-exclude", "3000,3001"]),
        ),
        (
            "everything",
            vec![
                "-p",
                "15001",
                "-z",
                "15006",
                "-e",
                "15008",
                "-u",
                "1337",
                "-g",
                "1337,1400",
                "-m",
                "REDIRECT",
                "-i",
                "10.0.0.0/8,fd00::/8",
                "-x",
                "10.0.0.10,fd00::10",
                "-b",
                "*",
                "-d",
                "15090,15021,15020,22",
                "-q",
                "443",
                "-o",
                "53",
                "-c",
                "eth9",
                "-k",
                "vnet0",
                "--ipv6",
                "on",
                "--iptables-mode",
                "nft",
            ],
        ),
    ]
}

fn golden_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

fn check_golden(name: &str, actual: &str) {
    let path = golden_dir().join(format!("{name}.golden"));
    if std::env::var("REMORA_UPDATE_GOLDEN").is_ok_and(|v| v == "1") {
        std::fs::create_dir_all(golden_dir()).expect("mkdir golden");
        std::fs::write(&path, actual).expect("write golden");
        return;
    }
    let want = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (run with REMORA_UPDATE_GOLDEN=1 to create it)",
            path.display()
        )
    });
    if want != actual {
        let mut diff = String::new();
        for (i, (w, a)) in want.lines().zip(actual.lines()).enumerate() {
            if w != a {
                diff.push_str(&format!("line {}:\n  golden: {w}\n  actual: {a}\n", i + 1));
            }
        }
        panic!(
            "{} differs from the rendered text ({} vs {} lines):\n{diff}\
             (REMORA_UPDATE_GOLDEN=1 regenerates it)",
            path.display(),
            want.lines().count(),
            actual.lines().count()
        );
    }
}

#[test]
fn rendered_restore_text_matches_goldens() {
    for (name, args) in our_cases() {
        let cfg = config(&args);
        let mut out = format!("# remora-init {}\n", shell_words(&args));
        for fam in [Family::V4, Family::V6] {
            out.push_str(&format!(
                "# {} apply (from a table without remora rules)\n",
                fam.name()
            ));
            out.push_str(&plan::render_apply(&cfg, fam, &Snapshot::default()));
        }
        check_golden(name, &out);
    }
}

#[test]
fn reapply_and_cleanup_text_matches_goldens() {
    // A pod whose rules were installed with one configuration, re-run with another: the text
    // deletes exactly the old built-in rules, refills our chains, re-adds the new built-in rules.
    let old = plan::plan(&config(&with(&["-k", "vnet0", "-c", "eth9"])), Family::V4);
    let current = as_installed(&old);
    let new_cfg = config(DEFAULT);
    let mut out = String::from("# IPv4 re-apply of the default flags over `-k vnet0 -c eth9`\n");
    out.push_str(&plan::render_apply(&new_cfg, Family::V4, &current));
    out.push_str("# IPv4 cleanup of the same\n");
    out.push_str(&plan::render_cleanup(&current));
    out.push_str("# cleanup when nothing of ours is present (still valid restore text)\n");
    out.push_str(&plan::render_cleanup(&Snapshot::default()));
    check_golden("reapply-and-cleanup", &out);
}

fn with(extra: &[&'static str]) -> Vec<&'static str> {
    let mut v = DEFAULT.to_vec();
    v.extend_from_slice(extra);
    v
}

/// The snapshot `parse_save` would return after `target` was installed in an empty table.
fn as_installed(target: &Snapshot) -> Snapshot {
    let mut text = String::from("*nat\n");
    for l in target.save_lines() {
        text.push_str(&l);
        text.push('\n');
    }
    text.push_str("COMMIT\n");
    plan::parse_save(&text)
}

fn shell_words(args: &[&str]) -> String {
    args.iter()
        .map(|a| {
            if a.is_empty() || a.contains('*') {
                format!("'{a}'")
            } else {
                a.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

// ---------------------------------------------------------------------------------------------
// Structural comparison with Istio's goldens.

/// Split a rule into tokens, keeping a double-quoted comment as one token.
fn tokens(spec: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    for c in spec.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                cur.push(c);
            }
            c if c.is_whitespace() && !quoted => {
                if !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
            }
            c => cur.push(c),
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// A rule as an order-independent set of option segments: comments and the implicit
/// `-m tcp`/`-m udp` dropped, `!` attached to its option, chain names renamed.
fn normalize(spec: &str) -> Vec<String> {
    let toks: Vec<String> = tokens(&spec.replace("ISTIO_", "REMORA_"));
    let mut kept: Vec<String> = Vec::new();
    let mut i = 0;
    while i < toks.len() {
        let t = toks[i].as_str();
        if t == "-m" && matches!(toks.get(i + 1).map(String::as_str), Some("comment")) {
            i += 2;
            if toks.get(i).map(String::as_str) == Some("--comment") {
                i += 2;
            }
            continue;
        }
        if t == "-m" && matches!(toks.get(i + 1).map(String::as_str), Some("tcp" | "udp")) {
            i += 2;
            continue;
        }
        kept.push(toks[i].clone());
        i += 1;
    }
    let mut segs: Vec<String> = Vec::new();
    let mut neg = false;
    for t in kept {
        if t == "!" {
            neg = true;
        } else if t.starts_with('-') {
            segs.push(if neg { format!("! {t}") } else { t });
            neg = false;
        } else if let Some(last) = segs.last_mut() {
            last.push(' ');
            last.push_str(&t);
        }
    }
    segs.sort();
    segs
}

type Chains = BTreeMap<String, Vec<Vec<String>>>;

/// Run one Istio restore block (`* nat` .. `COMMIT`) against empty chains.
fn simulate_istio(block: &[&str]) -> Chains {
    let mut chains: Chains = BTreeMap::new();
    for line in block {
        let line = line.replace("ISTIO_", "REMORA_");
        let mut parts = line.splitn(3, ' ');
        let (op, chain, rest) = (
            parts.next().unwrap_or(""),
            parts.next().unwrap_or("").to_string(),
            parts.next().unwrap_or(""),
        );
        match op {
            "-N" => {
                chains.entry(chain).or_default();
            }
            "-A" => chains.entry(chain).or_default().push(normalize(rest)),
            "-I" => {
                let (pos, spec) = rest.split_once(' ').expect("-I CHAIN N spec");
                let pos: usize = pos.parse().expect("-I position");
                chains
                    .entry(chain)
                    .or_default()
                    .insert(pos - 1, normalize(spec));
            }
            _ => panic!("unexpected line in Istio golden: {line}"),
        }
    }
    chains
}

/// Our planned final chains, in the same shape.
fn ours(cfg: &CaptureConfig, fam: Family) -> Chains {
    let mut chains: Chains = BTreeMap::new();
    for line in plan::plan(cfg, fam).save_lines() {
        if let Some(decl) = line.strip_prefix(':') {
            chains
                .entry(decl.split(' ').next().unwrap_or("").to_string())
                .or_default();
        } else if let Some(rest) = line.strip_prefix("-A ") {
            let (chain, spec) = rest.split_once(' ').expect("chain and spec");
            chains
                .entry(chain.to_string())
                .or_default()
                .push(normalize(spec));
        }
    }
    chains
}

/// Istio golden → the nat blocks (IPv4 first, then IPv6 when present).
fn istio_nat_blocks(text: &str) -> Vec<Vec<&str>> {
    let mut blocks = Vec::new();
    let mut cur: Option<Vec<&str>> = None;
    for line in text.lines() {
        match line.trim() {
            "* nat" => cur = Some(Vec::new()),
            "COMMIT" => {
                if let Some(b) = cur.take() {
                    blocks.push(b);
                }
            }
            "" => {}
            l if l.starts_with('*') => panic!("only nat blocks are expected in mapped goldens"),
            l => {
                if let Some(b) = cur.as_mut() {
                    b.push(l);
                }
            }
        }
    }
    blocks
}

#[test]
fn same_rules_as_istio_goldens_for_the_cases_that_map() {
    // (Istio golden, our flags, whether Istio's case enables IPv6). Istio's base config: -b and -i
    // empty, uid = gid = 1337 (see CASES.md). Cases with DNS capture, TPROXY, drop-invalid or the
    // env-only loopback-CIDR setting do not map onto our flags.
    let cases: &[(&str, &[&str], bool)] = &[
        ("empty", &[], false),
        ("ipv6-empty-inbound-ports", &["-b", ""], true),
        ("ipv6-inbound-ports", &["-b", "4000,5000"], true),
        (
            "ipv6-virt-interfaces",
            &["-b", "4000,5000", "-k", "eth0,eth1"],
            true,
        ),
        (
            "ipv6-ipnets",
            &[
                "-b",
                "4000,5000",
                "-d",
                "6000,7000,",
                "-k",
                "eth0,eth1",
                "-x",
                "2001:db8::/32",
                "-i",
                "2001:db8::/32",
            ],
            true,
        ),
        (
            "ipv6-uid-gid",
            &[
                "-b",
                "4000,5000",
                "-d",
                "6000,7000",
                "-k",
                "eth0,eth1",
                "-g",
                "1,2",
                "-u",
                "3,4",
                "-x",
                "2001:db8::/32",
                "-i",
                "2001:db8::/32",
            ],
            true,
        ),
        (
            "ipv6-outbound-ports",
            &["-b", "", "-q", "32000,31000"],
            true,
        ),
        (
            "kube-virt-interfaces",
            &["-k", "eth1,eth2", "-i", "*"],
            false,
        ),
        ("ipnets", &["-i", "10.0.0.0/8"], false),
        (
            "ipnets-with-kube-virt-interfaces",
            &["-k", "eth1,eth2", "-i", "10.0.0.0/8"],
            false,
        ),
        ("inbound-ports-include", &["-b", "32000,31000"], false),
        ("inbound-ports-wildcard", &["-b", "*"], false),
        ("outbound-ports-include", &["-q", "32000,31000"], false),
        ("basic-exclude-nic", &["-c", "not-istio-nic"], false),
        // Istio sets these by environment only; group names stay names in the plan until
        // remora-init resolves them.
        (
            "outbound-owner-groups",
            &["--outbound-owner-groups", "java,202"],
            false,
        ),
        (
            "outbound-owner-groups-exclude",
            &["--outbound-owner-groups-exclude", "888,ftp"],
            false,
        ),
    ];
    let dir = remora_corpus::require!("iptables");
    let mut compared_rules = 0;
    for (golden, args, ipv6) in cases {
        let path = dir.join(format!("{golden}.golden"));
        let text =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let blocks = istio_nat_blocks(&text);
        assert_eq!(
            blocks.len(),
            if *ipv6 { 2 } else { 1 },
            "{golden}: nat blocks"
        );
        let cfg = config(args);
        for (block, fam) in blocks.iter().zip([Family::V4, Family::V6]) {
            let want = simulate_istio(block);
            let got = ours(&cfg, fam);
            // Istio declares the same four chains; built-in chains appear when they get rules.
            for (chain, rules) in &want {
                let mine = got.get(chain).cloned().unwrap_or_default();
                assert_eq!(
                    &mine,
                    rules,
                    "{golden} {} chain {chain}: ours (left) vs Istio (right)",
                    fam.name()
                );
                compared_rules += rules.len();
            }
            for (chain, rules) in &got {
                assert!(
                    want.contains_key(chain) || rules.is_empty(),
                    "{golden} {}: we have rules in {chain}, Istio has none",
                    fam.name()
                );
            }
        }
    }
    assert!(compared_rules > 200, "compared only {compared_rules} rules");
}

#[test]
fn normalize_ignores_order_comments_and_implicit_matches() {
    assert_eq!(
        normalize("-o lo ! -d 127.0.0.1/32 -p tcp ! --dport 15008 -m owner --uid-owner 1337 -j ISTIO_IN_REDIRECT"),
        normalize("! -d 127.0.0.1/32 -o lo -p tcp -m tcp ! --dport 15008 -m owner --uid-owner 1337 -m comment --comment \"remora: x y\" -j REMORA_IN_REDIRECT"),
    );
    assert_ne!(
        normalize("-m owner --uid-owner 1337 -j RETURN"),
        normalize("-m owner ! --uid-owner 1337 -j RETURN")
    );
}
