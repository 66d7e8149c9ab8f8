//! `remora`: the user CLI (check-inject against a cluster, proxy-status, analyze).
fn main() {
    eprintln!("remora: no subcommands yet");
    std::process::exit(2);
}
