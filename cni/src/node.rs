//! The node agent's I/O (`remora-cni-node`): install the plugin binary into the CNI bin
//! directory, keep the plugin's entry in the node's primary network configuration (re-inserted
//! when the primary plugin rewrites the file), and remove both on shutdown.

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use serde_json::Value;

use crate::conflist;

/// The largest network configuration file read.
pub const MAX_CONF_BYTES: u64 = 1024 * 1024;
/// The plugin's file name in the CNI bin directory.
pub const PLUGIN_FILE: &str = "remora-cni";

/// Copy `src` to `<bin_dir>/remora-cni` (mode 0755) through a temporary file and a rename, so
/// the runtime never runs a half-written binary. Returns whether the content changed.
pub fn install_binary(src: &Path, bin_dir: &Path) -> Result<bool, String> {
    let dst = bin_dir.join(PLUGIN_FILE);
    let new =
        std::fs::read(src).map_err(|e| format!("cannot read the plugin {}: {e}", src.display()))?;
    if std::fs::read(&dst).is_ok_and(|old| old == new) {
        return Ok(false);
    }
    let tmp = bin_dir.join(format!(".{PLUGIN_FILE}.tmp"));
    std::fs::write(&tmp, &new).map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))
        .map_err(|e| format!("cannot make {} executable: {e}", tmp.display()))?;
    std::fs::rename(&tmp, &dst)
        .map_err(|e| format!("cannot move the plugin into {}: {e}", dst.display()))?;
    Ok(true)
}

/// Remove `<bin_dir>/remora-cni` (absent is fine).
pub fn remove_binary(bin_dir: &Path) -> Result<(), String> {
    let dst = bin_dir.join(PLUGIN_FILE);
    match std::fs::remove_file(&dst) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(format!("cannot remove {}: {e}", dst.display())),
    }
}

fn names(dir: &Path) -> Result<Vec<String>, String> {
    let rd = std::fs::read_dir(dir).map_err(|e| format!("cannot list {}: {e}", dir.display()))?;
    Ok(rd
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .filter_map(|e| e.file_name().into_string().ok())
        .collect())
}

fn read_json(path: &Path) -> Result<Value, String> {
    let f =
        std::fs::File::open(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut text = Vec::new();
    f.take(MAX_CONF_BYTES + 1)
        .read_to_end(&mut text)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if text.len() as u64 > MAX_CONF_BYTES {
        return Err(format!(
            "{} is larger than {MAX_CONF_BYTES} bytes",
            path.display()
        ));
    }
    serde_json::from_slice(&text).map_err(|e| format!("{} is not JSON: {e}", path.display()))
}

/// Write `content` to `dir/name` through a hidden temporary file and a rename.
fn write_json(dir: &Path, name: &str, content: &Value) -> Result<(), String> {
    let tmp = dir.join(".remora-cni-conf.tmp");
    let mut text = serde_json::to_vec_pretty(content).map_err(|e| format!("cannot encode: {e}"))?;
    text.push(b'\n');
    std::fs::write(&tmp, text).map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
    let dst = dir.join(name);
    std::fs::rename(&tmp, &dst).map_err(|e| format!("cannot write {}: {e}", dst.display()))
}

/// What one pass over the configuration directory did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pass {
    /// No network configuration yet (the primary plugin has not written one).
    NoPrimary,
    /// Our entry was already there.
    Unchanged(String),
    /// Inserted or updated in this file.
    Inserted(String),
}

/// Make sure the primary network configuration in `conf_dir` chains `plugin` last.
pub fn ensure(conf_dir: &Path, plugin: &Value) -> Result<Pass, String> {
    let Some(name) = conflist::primary(&names(conf_dir)?) else {
        return Ok(Pass::NoPrimary);
    };
    let current = read_json(&conf_dir.join(&name))?;
    let edit = conflist::insert(&name, &current, plugin)?;
    if !edit.changed {
        return Ok(Pass::Unchanged(name));
    }
    write_json(conf_dir, &edit.name, &edit.content)?;
    if let Some(old) = edit.replaces.filter(|o| *o != edit.name) {
        std::fs::remove_file(conf_dir.join(&old))
            .map_err(|e| format!("cannot remove {old} (now {}): {e}", edit.name))?;
    }
    Ok(Pass::Inserted(edit.name))
}

/// Remove our entry from every network configuration in `conf_dir` that holds it; the files
/// changed.
pub fn remove_entries(conf_dir: &Path) -> Result<Vec<String>, String> {
    let mut changed = Vec::new();
    for name in names(conf_dir)? {
        if name.starts_with('.')
            || !(name.ends_with(".conflist") || name.ends_with(".conf") || name.ends_with(".json"))
        {
            continue;
        }
        let Ok(current) = read_json(&conf_dir.join(&name)) else {
            continue;
        };
        if let Some(out) = conflist::remove(&current) {
            write_json(conf_dir, &name, &out)?;
            changed.push(name);
        }
    }
    Ok(changed)
}
