//! `remora`: the user CLI (check-inject against a cluster, proxy-status, proxy-config, analyze). See
//! `remora_webhook::usercli` and docs/install.md.
fn main() -> std::process::ExitCode {
    remora_webhook::usercli::main()
}
