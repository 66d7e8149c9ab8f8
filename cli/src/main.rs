//! `remora`: the user CLI (check-inject, proxy-status, proxy-config, analyze, describe, and the
//! offline inject). See `remora_cli` and docs/install.md.
fn main() -> std::process::ExitCode {
    remora_cli::main()
}
