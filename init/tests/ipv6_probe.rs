//! The IPv6 decision of `--ipv6 auto`: what each state of the address list
//! (`/proc/net/if_inet6`) leads to, and that an unreadable list is an error, not "IPv6 off".

use std::path::Path;

use remora_init::apply::{decide_ipv6, decide_ipv6_at};
use remora_init::flags::Ipv6Mode;

const LINK_LOCAL_ONLY: &str = "\
00000000000000000000000000000001 01 80 10 80       lo
fe800000000000000000000000000001 02 40 20 80     eth0
";
const WITH_GLOBAL: &str = "\
00000000000000000000000000000001 01 80 10 80       lo
fd000213000000000000000000000002 02 40 00 80     eth0
";

/// How a case's address list looks on disk.
enum Setup {
    File(&'static str),
    /// No if_inet6, but the folder is a /proc/net (it lists `dev`): a kernel without IPv6.
    MissingInProcNet,
    /// No if_inet6 and no /proc/net around it (e.g. /proc not mounted).
    MissingNoProcNet,
    /// if_inet6 exists but cannot be read as a file.
    Directory,
}

#[test]
fn auto_decides_from_the_address_list_and_fails_closed_when_it_cannot_be_read() {
    // (case, mode, setup, expected decision or None for an error, text the reason contains)
    let cases: &[(&str, Ipv6Mode, Setup, Option<bool>, &str)] = &[
        (
            "global address",
            Ipv6Mode::Auto,
            Setup::File(WITH_GLOBAL),
            Some(true),
            "on (auto: global IPv6 address fd00:213::2 on eth0)",
        ),
        (
            "link-local only",
            Ipv6Mode::Auto,
            Setup::File(LINK_LOCAL_ONLY),
            Some(false),
            "off (auto: no global IPv6 address in this pod)",
        ),
        (
            "empty list",
            Ipv6Mode::Auto,
            Setup::File(""),
            Some(false),
            "no global IPv6 address",
        ),
        (
            "kernel without IPv6",
            Ipv6Mode::Auto,
            Setup::MissingInProcNet,
            Some(false),
            "off (auto: the kernel has no IPv6",
        ),
        (
            "no /proc/net",
            Ipv6Mode::Auto,
            Setup::MissingNoProcNet,
            None,
            "No such file or directory",
        ),
        (
            "unreadable",
            Ipv6Mode::Auto,
            Setup::Directory,
            None,
            "Is a directory",
        ),
        // Explicit modes read nothing: an unreadable list does not matter.
        (
            "off, unreadable",
            Ipv6Mode::Off,
            Setup::Directory,
            Some(false),
            "off (forced by --ipv6 off)",
        ),
        (
            "on, unreadable",
            Ipv6Mode::On,
            Setup::MissingNoProcNet,
            Some(true),
            "on (forced by --ipv6 on)",
        ),
    ];
    for (name, mode, setup, want, text) in cases {
        let dir = tempfile::tempdir().unwrap();
        let net = dir.path().join("net");
        std::fs::create_dir(&net).unwrap();
        let path = net.join("if_inet6");
        match setup {
            Setup::File(content) => std::fs::write(&path, content).unwrap(),
            Setup::MissingInProcNet => std::fs::write(net.join("dev"), "").unwrap(),
            Setup::MissingNoProcNet => {}
            Setup::Directory => std::fs::create_dir(&path).unwrap(),
        }
        match (decide_ipv6_at(*mode, &path), want) {
            (Ok((on, why)), Some(w)) => {
                assert_eq!(on, *w, "{name}: {why}");
                assert!(why.contains(text), "{name}: {why}");
            }
            (Err(e), None) => {
                assert!(e.contains(text), "{name}: {e}");
                // One line naming the file, the reason and how to decide explicitly.
                assert!(!e.contains('\n'), "{name}: {e}");
                assert!(e.contains(&path.display().to_string()), "{name}: {e}");
                assert!(
                    e.contains("--ipv6 off") && e.contains("REMORA_IPV6=off"),
                    "{name}: {e}"
                );
                assert!(e.contains("nothing was changed"), "{name}: {e}");
            }
            (got, _) => panic!("{name}: expected {want:?}, got {got:?}"),
        }
    }
}

#[test]
fn this_machine_can_be_probed() {
    // /proc is mounted here: auto mode decides (either way) without an error.
    assert!(Path::new("/proc/net/dev").is_file());
    decide_ipv6(Ipv6Mode::Auto).expect("auto IPv6 decision on this machine");
}
