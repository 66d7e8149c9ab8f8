//! `remora-cni-node`: the node agent of CNI mode (a DaemonSet). Installs the `remora-cni`
//! plugin into the node's CNI bin directory, chains it last in the node's primary network
//! configuration and keeps it there (checked every `--poll-ms`), and on SIGTERM/SIGINT removes
//! both. `uninstall` removes them and exits.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use clap::{Parser, Subcommand};
use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
use remora_cni::conflist::PLUGIN_TYPE;
use remora_cni::node::{self, Pass};
use serde_json::json;

#[derive(Debug, Parser)]
#[command(name = "remora-cni-node", version, about = "remora's CNI node agent")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Clone, clap::Args)]
struct Dirs {
    /// The node's CNI bin directory (host path, mounted).
    #[arg(long, default_value = "/host/opt/cni/bin")]
    cni_bin_dir: PathBuf,
    /// The node's CNI configuration directory (host path, mounted).
    #[arg(long, default_value = "/host/etc/cni/net.d")]
    cni_conf_dir: PathBuf,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Install, keep the plugin chained, remove everything on SIGTERM.
    Run {
        #[command(flatten)]
        dirs: Dirs,
        /// The plugin binary to install.
        #[arg(long, default_value = "/usr/local/bin/remora-cni")]
        plugin_binary: PathBuf,
        /// podInfo.dir of the plugin: where it reads pod objects, as a path on the node.
        #[arg(long, default_value = "/var/run/remora-cni/pods")]
        pod_dir: PathBuf,
        /// Namespaces whose pods the plugin passes through (comma-separated).
        #[arg(long, default_value = "kube-system")]
        exclude_namespaces: String,
        /// The plugin's log file, as a path on the node (empty: none).
        #[arg(long, default_value = "")]
        plugin_log_file: String,
        /// How often the configuration is checked, in milliseconds (50-60000).
        #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(50..=60_000))]
        poll_ms: u64,
        /// Install once and exit (no watching, nothing removed).
        #[arg(long)]
        once: bool,
    },
    /// Remove the plugin's entry and binary, then exit.
    Uninstall {
        #[command(flatten)]
        dirs: Dirs,
    },
}

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: nix::libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

fn say(msg: impl AsRef<str>) {
    println!("remora-cni-node: {}", msg.as_ref());
}

fn fail(msg: impl AsRef<str>) -> ExitCode {
    eprintln!("remora-cni-node: error: {}", msg.as_ref());
    ExitCode::FAILURE
}

fn absolute(flag: &str, p: &std::path::Path) -> Result<(), String> {
    if p.is_absolute() {
        Ok(())
    } else {
        Err(format!(
            "invalid {flag} {:?}: must be an absolute path",
            p.display()
        ))
    }
}

fn uninstall(dirs: &Dirs) -> Result<(), String> {
    for name in node::remove_entries(&dirs.cni_conf_dir)? {
        say(format!("removed {PLUGIN_TYPE} from {name}"));
    }
    node::remove_binary(&dirs.cni_bin_dir)?;
    say(format!(
        "removed {}",
        dirs.cni_bin_dir.join(node::PLUGIN_FILE).display()
    ));
    Ok(())
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    match cli.command {
        Cmd::Uninstall { dirs } => match uninstall(&dirs) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(e),
        },
        Cmd::Run {
            dirs,
            plugin_binary,
            pod_dir,
            exclude_namespaces,
            plugin_log_file,
            poll_ms,
            once,
        } => {
            for (flag, p) in [
                ("--cni-bin-dir", &dirs.cni_bin_dir),
                ("--cni-conf-dir", &dirs.cni_conf_dir),
                ("--pod-dir", &pod_dir),
            ] {
                if let Err(e) = absolute(flag, p) {
                    return fail(e);
                }
            }
            let excluded: Vec<&str> = exclude_namespaces
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .collect();
            let mut entry = json!({
                "type": PLUGIN_TYPE,
                "podInfo": {"source": "file", "dir": pod_dir},
                "excludeNamespaces": excluded,
            });
            if !plugin_log_file.is_empty() {
                if let Err(e) =
                    absolute("--plugin-log-file", std::path::Path::new(&plugin_log_file))
                {
                    return fail(e);
                }
                entry["logFile"] = json!(plugin_log_file);
            }
            let handler = SigAction::new(
                SigHandler::Handler(on_signal),
                SaFlags::empty(),
                SigSet::empty(),
            );
            for sig in [Signal::SIGTERM, Signal::SIGINT] {
                // SAFETY: the handler only stores to an atomic.
                if let Err(e) = unsafe { sigaction(sig, &handler) } {
                    return fail(format!("cannot handle {sig}: {e}"));
                }
            }
            match node::install_binary(&plugin_binary, &dirs.cni_bin_dir) {
                Ok(true) => say(format!(
                    "installed {}",
                    dirs.cni_bin_dir.join(node::PLUGIN_FILE).display()
                )),
                Ok(false) => say(format!(
                    "{} is up to date",
                    dirs.cni_bin_dir.join(node::PLUGIN_FILE).display()
                )),
                Err(e) => return fail(e),
            }
            let mut last: Option<Result<Pass, String>> = None;
            loop {
                let pass = node::ensure(&dirs.cni_conf_dir, &entry);
                if last.as_ref() != Some(&pass) {
                    match &pass {
                        Ok(Pass::NoPrimary) => say(format!(
                            "waiting for the primary network configuration in {}",
                            dirs.cni_conf_dir.display()
                        )),
                        Ok(Pass::Inserted(n)) => say(format!("chained {PLUGIN_TYPE} last in {n}")),
                        Ok(Pass::Unchanged(n)) => say(format!("{n} chains {PLUGIN_TYPE}")),
                        Err(e) => eprintln!("remora-cni-node: error: {e}"),
                    }
                }
                // After an insertion the next pass sees it unchanged: log that only once.
                last = Some(match pass {
                    Ok(Pass::Inserted(n)) => Ok(Pass::Unchanged(n)),
                    other => other,
                });
                if once {
                    return match last {
                        Some(Err(e)) => fail(e),
                        _ => ExitCode::SUCCESS,
                    };
                }
                let mut slept = 0;
                while slept < poll_ms && !STOP.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(poll_ms.min(50)));
                    slept += 50;
                }
                if STOP.load(Ordering::SeqCst) {
                    say("stopping: removing the plugin from the node");
                    return match uninstall(&dirs) {
                        Ok(()) => ExitCode::SUCCESS,
                        Err(e) => fail(e),
                    };
                }
            }
        }
    }
}
