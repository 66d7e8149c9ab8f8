//! `remora-init`: programs the sidecar's iptables capture in the pod's network namespace.
//!
//! Prints the flags, the decisions (IPv6, backend), the full restore text, then the rules of ours
//! the kernel holds afterwards. Exit status 0 on success, 1 on any error (one line per error on
//! stderr), 2 on a command-line syntax error.

use remora_init::flags::Flags;
use remora_init::{program, validate};
use std::io::Write;
use std::process::ExitCode;

/// One line to stdout. Write errors (a closed pipe) are ignored: logging must never abort the
/// program between two steps of an apply.
fn line(text: impl AsRef<str>) {
    let _ = writeln!(std::io::stdout().lock(), "{}", text.as_ref());
}

fn fail(msg: impl AsRef<str>) {
    let _ = writeln!(
        std::io::stderr().lock(),
        "remora-init: error: {}",
        msg.as_ref()
    );
}

fn main() -> ExitCode {
    // `remora-init validate ...`: the unprivileged check of CNI mode, not a capture flag.
    if std::env::args_os().nth(1).is_some_and(|a| a == "validate") {
        return validate_main();
    }
    let (flags, flag_lines) = match Flags::parse_with_sources() {
        Ok(f) => f,
        Err(e) => {
            // clap prints help/version to stdout (exit 0) and syntax errors to stderr (exit 2).
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    match program::run(&flags, &flag_lines, &mut |l| line(l)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(errors) => {
            for e in errors {
                fail(e);
            }
            ExitCode::FAILURE
        }
    }
}

fn validate_main() -> ExitCode {
    use clap::Parser;
    let flags = match validate::ValidateFlags::try_parse_from(std::env::args_os().skip(1)) {
        Ok(f) => f,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    match validate::run(&flags) {
        Ok(line_text) => {
            line(format!("remora-init: {line_text}"));
            ExitCode::SUCCESS
        }
        Err(e) => {
            fail(e);
            ExitCode::FAILURE
        }
    }
}
