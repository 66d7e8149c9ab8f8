//! Shared helpers of the root-only tests: network namespaces (with Drop guards), running the
//! real `remora-init` binary inside one, reading its iptables state.
//!
//! Every namespace is named `rmi-<pid>-<counter>-<tag>`; interfaces live only inside the
//! namespaces (a veth pair created directly between the pod and peer namespaces), so nothing
//! touches the host's network and parallel tests never collide.

#![allow(dead_code)]

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

pub mod lab;
pub mod ns;

pub use ns::Netns;

impl Netns {
    /// Run the real `remora-init` here with these arguments; panic unless it succeeds.
    pub fn init(&self, args: &[&str]) -> String {
        self.must(BIN, args)
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
