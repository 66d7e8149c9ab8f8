//! `Flags::try_parse_args_only` ignores the environment, `Flags::try_parse_from` does not.
//! The only test in this binary: it sets process environment variables, which would race with
//! parsing in parallel tests of another binary's process.

use clap::Parser;
use remora_init::flags::Flags;

#[test]
fn args_only_parsing_ignores_the_environment() {
    std::env::set_var("ENVOY_PORT", "16001");
    std::env::set_var("ISTIO_INBOUND_PORTS", "9080");
    std::env::set_var("DRY_RUN", "true");
    let args = ["remora-init", "-u", "1337", "-i", "*"];

    let with_env = Flags::try_parse_from(args).expect("parse");
    assert_eq!(with_env.proxy_port, "16001");
    assert_eq!(with_env.inbound_ports_include, "9080");
    assert!(with_env.dry_run);

    let args_only = Flags::try_parse_args_only(args).expect("parse");
    assert_eq!(args_only.proxy_port, "15001");
    assert_eq!(args_only.inbound_ports_include, "");
    assert!(!args_only.dry_run);
    assert_eq!(args_only.outbound_ip_ranges_include, "*");
    // Same syntax rules otherwise.
    assert!(Flags::try_parse_args_only(["remora-init", "--bogus"]).is_err());
}
