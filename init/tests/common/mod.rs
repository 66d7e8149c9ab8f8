//! Shared helpers of the root-only tests: network namespaces (with Drop guards), running the
//! real `remora-init` binary inside one, reading its iptables state.
//!
//! Every namespace is named `rmi-<pid>-<counter>-<tag>`; interfaces live only inside the
//! namespaces (a veth pair created directly between the pod and peer namespaces), so nothing
//! touches the host's network and parallel tests never collide.

#![allow(dead_code)]

use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};

static COUNTER: AtomicUsize = AtomicUsize::new(0);

pub const BIN: &str = env!("CARGO_BIN_EXE_remora-init");

/// The flags an injected default sidecar gets.
pub const DEFAULT_ARGS: &[&str] = &[
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

/// Run a command, panic with its output if it fails.
pub fn sh(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd} {args:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A network namespace deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(tag: &str) -> Netns {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let name = format!("rmi-{}-{}-{}", std::process::id(), n, tag);
        sh("ip", &["netns", "add", &name]);
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// `ip -n NAME ARGS...`
    pub fn ip(&self, args: &[&str]) -> String {
        let mut v = vec!["-n", self.name.as_str()];
        v.extend_from_slice(args);
        sh("ip", &v)
    }

    /// Run a program inside the namespace, returning its output (whatever the status).
    pub fn exec(&self, cmd: &str, args: &[&str]) -> Output {
        self.exec_env(cmd, args, &[])
    }

    pub fn exec_env(&self, cmd: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, cmd]).args(args);
        for (k, v) in env {
            c.env(k, v);
        }
        c.output()
            .unwrap_or_else(|e| panic!("ip netns exec {cmd}: {e}"))
    }

    /// Run a program inside the namespace; panic with its output unless it succeeds.
    pub fn must(&self, cmd: &str, args: &[&str]) -> String {
        let out = self.exec(cmd, args);
        assert!(
            out.status.success(),
            "in {}: {cmd} {args:?} failed ({}):\nstdout:\n{}\nstderr:\n{}",
            self.name,
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Run the real `remora-init` here with these arguments; panic unless it succeeds.
    pub fn init(&self, args: &[&str]) -> String {
        self.must(BIN, args)
    }

    /// `<family>tables-<backend>-save -t nat` inside the namespace.
    pub fn save(&self, tool: &str) -> String {
        self.must(tool, &["-t", "nat"])
    }

    /// The rule lines (`-A ...`) and chain declarations of the nat table, counters and comments
    /// of the dump stripped (for whole-table equality).
    pub fn nat_rules(&self, tool: &str) -> Vec<String> {
        self.save(tool)
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| {
                if l.starts_with(':') {
                    // ":CHAIN POLICY [packets:bytes]" -> ":CHAIN POLICY"
                    l.rsplit_once(' ')
                        .map(|(a, _)| a.to_string())
                        .unwrap_or_default()
                } else {
                    l.to_string()
                }
            })
            .collect()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// Everything between `--- <header...> ---` and `--- end ---` in remora-init's output, for the
/// first header starting with `prefix`.
pub fn section(output: &str, prefix: &str) -> Option<Vec<String>> {
    let mut lines = output.lines();
    for l in lines.by_ref() {
        if l.starts_with(&format!("--- {prefix}")) {
            let body: Vec<String> = lines
                .by_ref()
                .take_while(|l| *l != "--- end ---")
                .map(str::to_string)
                .collect();
            return Some(body);
        }
    }
    None
}

/// Our rules in a save dump: chain declarations of REMORA_* (counters dropped) and the `-A`
/// lines that are ours (in our chains, or commented `remora: ` / jumping to REMORA_*).
pub fn ours_in_save(save: &str) -> Vec<String> {
    save.lines()
        .filter_map(|l| {
            if let Some(decl) = l.strip_prefix(":REMORA_") {
                let name = decl.split(' ').next().unwrap_or("");
                Some(format!(":REMORA_{name} - [0:0]"))
            } else if l.starts_with("-A REMORA_")
                || (l.starts_with("-A ")
                    && (l.contains("--comment \"remora: ") || l.contains("-j REMORA_")))
            {
                Some(l.to_string())
            } else {
                None
            }
        })
        .collect()
}
