//! The plugin's I/O shell: one invocation of ADD, DEL, CHECK or VERSION.
//!
//! ADD looks the pod up, decides (`decide`), and for a captured pod enters its network namespace
//! and runs `remora_init::program::run` — the code of the `remora-init` program — then records
//! the arguments in `stateDir/<container id>`. DEL removes remora's chains and rules only where
//! that record says ADD installed them; CHECK verifies the recorded capture is installed.
//!
//! Entering the network namespace uses `setns` on the calling thread, and `remora-init`'s code
//! reads `/proc/net` (the process's namespace): call [`run`] from a single-threaded process (the
//! `remora-cni` binary is one).

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use nix::sched::{setns, CloneFlags};
use remora_init::flags::{Flags, IptablesMode};
use remora_init::program;
use serde_json::{json, Value};

use crate::config::{self, PluginConfig, PodInfoSource};
use crate::decide::{self, Decision};
use crate::podinfo::{FileSource, PodSource};
use crate::spec::{self, code, CniError, Command, Invocation};

/// Lines of one invocation's report (written to `logFile` when configured).
pub type Report = Vec<String>;

/// Run one invocation. `Ok(Some(result))` is printed on stdout; `Ok(None)` prints nothing.
pub fn run(inv: &Invocation, stdin: &[u8], report: &mut Report) -> Result<Option<Value>, CniError> {
    match inv.command {
        Command::Version => Ok(Some(spec::version_result())),
        Command::Add => {
            let cfg = config::parse(stdin, true)?;
            add(inv, &cfg, report)
        }
        Command::Del => {
            let cfg = config::parse(stdin, false)?;
            del(inv, &cfg, report).map(|()| None)
        }
        Command::Check => {
            let cfg = config::parse(stdin, true)?;
            if !spec::has_check(&cfg.cni_version) {
                return Err(CniError::new(
                    code::INCOMPATIBLE_VERSION,
                    format!(
                        "CHECK is not defined for cniVersion {} (it exists from 0.4.0 on)",
                        cfg.cni_version
                    ),
                ));
            }
            check(inv, &cfg, report).map(|()| None)
        }
    }
}

fn source(cfg: &PluginConfig) -> Box<dyn PodSource> {
    match &cfg.pod_info {
        PodInfoSource::File { dir, wait } => Box::new(FileSource {
            dir: dir.clone(),
            wait: *wait,
        }),
    }
}

/// The previous result, passed through (with the configuration's version when it has none).
fn pass_through(cfg: &PluginConfig) -> Option<Value> {
    let mut prev = cfg.prev_result.clone().unwrap_or_else(|| json!({}));
    if let Some(obj) = prev.as_object_mut() {
        obj.entry("cniVersion")
            .or_insert_with(|| Value::String(cfg.cni_version.clone()));
    }
    Some(prev)
}

fn mode_name(m: IptablesMode) -> &'static str {
    match m {
        IptablesMode::Auto => "auto",
        IptablesMode::Nft => "nft",
        IptablesMode::Legacy => "legacy",
    }
}

/// `remora-init`'s flags for `args`, from the arguments alone (never this process's environment).
fn flags(args: &[String], mode: IptablesMode) -> Result<Flags, CniError> {
    let mut argv = vec!["remora-init".to_string()];
    argv.extend(args.iter().cloned());
    argv.push("--iptables-mode".into());
    argv.push(mode_name(mode).into());
    Flags::try_parse_args_only(argv).map_err(|e| {
        CniError::new(
            code::CAPTURE_FAILED,
            format!("the capture arguments {args:?} were refused: {e}"),
        )
    })
}

/// Enter the network namespace at `path` (this thread).
fn enter_netns(path: &str) -> Result<(), CniError> {
    let file = File::open(path).map_err(|e| {
        CniError::new(
            code::UNKNOWN_CONTAINER,
            format!("cannot open the network namespace CNI_NETNS={path}: {e}"),
        )
    })?;
    setns(file, CloneFlags::CLONE_NEWNET).map_err(|e| {
        CniError::new(
            code::UNKNOWN_CONTAINER,
            format!("cannot enter the network namespace CNI_NETNS={path}: {e}"),
        )
    })
}

fn state_path(cfg: &PluginConfig, inv: &Invocation) -> PathBuf {
    // The container id was checked: letters, digits, '_', '.', '-', no leading '.'.
    cfg.state_dir.join(&inv.container_id)
}

/// What ADD installed, as recorded.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Record {
    pub pod: String,
    pub args: Vec<String>,
}

fn write_record(path: &Path, record: &Record) -> Result<(), CniError> {
    let io = |what: &str, e: std::io::Error| {
        CniError::new(code::IO_FAILURE, format!("{what} {}: {e}", path.display()))
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| io("cannot create the state directory of", e))?;
    }
    // Container ids never start with '.', so no record is named like this.
    let tmp = path.with_file_name(format!(
        ".tmp-{}",
        path.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    ));
    let text = serde_json::to_vec(record)
        .map_err(|e| CniError::new(code::IO_FAILURE, format!("cannot encode the record: {e}")))?;
    std::fs::write(&tmp, text).map_err(|e| io("cannot write", e))?;
    std::fs::rename(&tmp, path).map_err(|e| io("cannot rename the record to", e))
}

fn read_record(path: &Path) -> Result<Option<Record>, CniError> {
    match std::fs::read(path) {
        Ok(b) => serde_json::from_slice(&b).map(Some).map_err(|e| {
            CniError::new(
                code::DECODE_FAILURE,
                format!("the record {} is not readable: {e}", path.display()),
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(CniError::new(
            code::IO_FAILURE,
            format!("cannot read the record {}: {e}", path.display()),
        )),
    }
}

fn add(
    inv: &Invocation,
    cfg: &PluginConfig,
    report: &mut Report,
) -> Result<Option<Value>, CniError> {
    let decision = match decide::before_lookup(inv.pod.as_ref(), &cfg.exclude_namespaces) {
        Some(d) => d,
        None => {
            // before_lookup passes every call without a pod through.
            let Some(pod) = inv.pod.as_ref() else {
                return Ok(pass_through(cfg));
            };
            let info = source(cfg).pod(pod)?;
            decide::decide(&info)
                .map_err(|e| CniError::new(code::INVALID_CONFIG, format!("pod {pod}: {e}")))?
        }
    };
    let pod_name = inv
        .pod
        .as_ref()
        .map(|p| p.to_string())
        .unwrap_or_else(|| "(no pod)".into());
    let (args, why) = match decision {
        Decision::PassThrough(why) => {
            report.push(format!("ADD {pod_name}: passed through: {why}"));
            return Ok(pass_through(cfg));
        }
        Decision::Capture { args, why } => (args, why),
    };
    report.push(format!("ADD {pod_name}: capture: {why}"));
    let flags = flags(&args, cfg.iptables_mode)?;
    let lines: Vec<String> = flags
        .describe()
        .into_iter()
        .map(|(n, v)| format!("{n} = {v:?}"))
        .collect();
    enter_netns(&inv.netns)?;
    let mut out = |l: String| report.push(l);
    program::run(&flags, &lines, &mut out).map_err(|errors| {
        CniError::new(
            code::CAPTURE_FAILED,
            format!(
                "pod {pod_name}: programming the capture failed: {}",
                errors.join("; ")
            ),
        )
    })?;
    write_record(
        &state_path(cfg, inv),
        &Record {
            pod: pod_name,
            args,
        },
    )?;
    Ok(pass_through(cfg))
}

fn del(inv: &Invocation, cfg: &PluginConfig, report: &mut Report) -> Result<(), CniError> {
    let path = state_path(cfg, inv);
    let Some(record) = read_record(&path)? else {
        report.push(format!(
            "DEL {}: nothing to remove (remora-cni did not program this container)",
            inv.container_id
        ));
        return Ok(());
    };
    if inv.netns.is_empty() || !Path::new(&inv.netns).exists() {
        report.push(format!(
            "DEL {}: the network namespace is gone; forgetting the record",
            record.pod
        ));
    } else {
        let flags = flags(&["--cleanup".to_string()], cfg.iptables_mode)?;
        enter_netns(&inv.netns)?;
        let mut out = |l: String| report.push(l);
        program::run(&flags, &[], &mut out).map_err(|errors| {
            CniError::new(
                code::CAPTURE_FAILED,
                format!(
                    "pod {}: removing the capture failed: {}",
                    record.pod,
                    errors.join("; ")
                ),
            )
        })?;
        report.push(format!("DEL {}: capture removed", record.pod));
    }
    std::fs::remove_file(&path).map_err(|e| {
        CniError::new(
            code::IO_FAILURE,
            format!("cannot remove the record {}: {e}", path.display()),
        )
    })
}

fn check(inv: &Invocation, cfg: &PluginConfig, report: &mut Report) -> Result<(), CniError> {
    let Some(record) = read_record(&state_path(cfg, inv))? else {
        report.push(format!(
            "CHECK {}: nothing to check (remora-cni did not program this container)",
            inv.container_id
        ));
        return Ok(());
    };
    let flags = flags(&record.args, cfg.iptables_mode)?;
    enter_netns(&inv.netns)?;
    match program::verify(&flags) {
        Ok(found) => {
            for l in found {
                report.push(format!("CHECK {}: {l}", record.pod));
            }
            Ok(())
        }
        Err(errors) => Err(CniError::new(
            code::CAPTURE_FAILED,
            format!(
                "pod {}: the capture is not as programmed: {}",
                record.pod,
                errors.join("; ")
            ),
        )),
    }
}

/// Log files are rotated (one old file kept) past this size.
pub const MAX_LOG_BYTES: u64 = 4 * 1024 * 1024;

/// Append the report to `path` (rotating it past [`MAX_LOG_BYTES`]). Failures are ignored:
/// logging never fails an invocation.
pub fn write_log(path: &Path, header: &str, report: &[String]) {
    if std::fs::metadata(path).is_ok_and(|m| m.len() > MAX_LOG_BYTES) {
        let _ = std::fs::rename(path, path.with_extension("log.1"));
    }
    let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    else {
        return;
    };
    let mut text = format!("{header}\n");
    for l in report {
        text.push_str("  ");
        text.push_str(l);
        text.push('\n');
    }
    let _ = f.write_all(text.as_bytes());
}
