//! Network namespaces for the root-only tests (deleted on drop), and running programs in them.
//! Each is named `rmi-<pid>-<counter>-<tag>`, so parallel tests never collide.

#![allow(dead_code)]

use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};

static COUNTER: AtomicUsize = AtomicUsize::new(0);

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
