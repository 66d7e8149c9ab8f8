//! Running the `remora` user CLI binary in contract tests: the binary (`target/<profile>/remora`,
//! built by `cargo build -p remora-cli` or `scripts/test`) run with `--server`
//! against a [`RecordedApi`], and what it printed.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};

use crate::apiserver::RecordedApi;

/// The workspace root (the parent of `tests/`).
pub fn workspace() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().map(PathBuf::from).unwrap_or(manifest)
}

/// The `remora` binary next to the test binaries (`REMORA_BIN_DIR` overrides).
pub fn remora_bin() -> Result<PathBuf> {
    let p = crate::admission::default_bin_dir().join("remora");
    if !p.exists() {
        bail!(
            "{} is missing: build it first with `cargo build -p remora-cli` (scripts/test does)",
            p.display()
        );
    }
    Ok(p)
}

/// One finished run.
#[derive(Clone, Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// Exit code and both streams, for assertion messages.
    pub fn all(&self) -> String {
        format!(
            "exit {}\n--- stdout\n{}--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }

    /// The first stdout line that starts with `prefix` (after trimming).
    pub fn line(&self, prefix: &str) -> Option<&str> {
        self.stdout
            .lines()
            .map(str::trim)
            .find(|l| l.starts_with(prefix))
    }
}

/// Runs `remora --server URL ARGS` against `api`.
pub async fn remora(api: &RecordedApi, args: &[&str]) -> Result<Run> {
    let url = api.url();
    let mut full = vec!["--server", url.as_str()];
    full.extend_from_slice(args);
    remora_args(&full).await
}

/// Runs `remora ARGS` (no `--server` added, `KUBECONFIG` removed), within 60 s.
pub async fn remora_args(args: &[&str]) -> Result<Run> {
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new(remora_bin()?)
            .args(args)
            .env_remove("KUBECONFIG")
            .kill_on_drop(true)
            .output(),
    )
    .await
    .map_err(|_| anyhow!("remora {args:?} did not finish within 60 s"))?
    .with_context(|| format!("running remora {args:?}"))?;
    Ok(Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

/// `METHOD path?query` of every request the recorded API could not answer.
pub fn unmatched(api: &RecordedApi) -> Vec<String> {
    api.requests()
        .into_iter()
        .filter(|s| !s.matched)
        .map(|s| format!("{} {}", s.method, s.path_and_query))
        .collect()
}
