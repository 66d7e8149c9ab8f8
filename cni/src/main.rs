//! `remora-cni`: the chained CNI plugin of remora's CNI mode (see the crate documentation).
//!
//! Called by the container runtime: `CNI_*` in the environment, the network configuration on
//! stdin; prints the result (ADD: the previous plugin's result, unchanged; VERSION) or the CNI
//! error result on stdout, and on error one line on stderr and exit status 1.

use std::io::{Read, Write};
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use remora_cni::plugin::{self, Report};
use remora_cni::spec::{self, code, CniError};
use remora_cni::{config, plugin::write_log};

/// The largest configuration read from stdin.
const MAX_STDIN: u64 = 4 * 1024 * 1024;

fn main() -> ExitCode {
    let inv = spec::invocation(|k| std::env::var(k).ok());
    let mut stdin = Vec::new();
    // Read even when the environment is wrong, so the error result carries the config's version.
    if std::env::var("CNI_COMMAND").as_deref() != Ok("VERSION") {
        if let Err(e) = std::io::stdin().take(MAX_STDIN + 1).read_to_end(&mut stdin) {
            return fail(
                &CniError::new(code::IO_FAILURE, format!("cannot read stdin: {e}")),
                &stdin,
            );
        }
        if stdin.len() as u64 > MAX_STDIN {
            return fail(
                &CniError::new(
                    code::INVALID_CONFIG,
                    format!("the configuration on stdin is larger than {MAX_STDIN} bytes"),
                ),
                &[],
            );
        }
    }
    let inv = match inv {
        Ok(i) => i,
        Err(e) => return fail(&e, &stdin),
    };
    let mut report = Report::new();
    let result = plugin::run(&inv, &stdin, &mut report);
    if let Some(path) = config::parse(&stdin, false).ok().and_then(|c| c.log_file) {
        let secs = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let mut lines = report.clone();
        if let Err(e) = &result {
            lines.push(format!("error: {}", e.msg));
        }
        write_log(
            &path,
            &format!(
                "remora-cni {:?} container={} at unix {secs}",
                inv.command, inv.container_id
            ),
            &lines,
        );
    }
    match result {
        Ok(Some(v)) => {
            let _ = writeln!(std::io::stdout().lock(), "{v}");
            ExitCode::SUCCESS
        }
        Ok(None) => ExitCode::SUCCESS,
        Err(e) => fail(&e, &stdin),
    }
}

fn fail(e: &CniError, stdin: &[u8]) -> ExitCode {
    let version = config::version_of(stdin).unwrap_or_else(|| spec::LATEST.to_string());
    let _ = writeln!(std::io::stdout().lock(), "{}", e.to_json(&version));
    let _ = writeln!(std::io::stderr().lock(), "remora-cni: error: {}", e.msg);
    ExitCode::FAILURE
}
