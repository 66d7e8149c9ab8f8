//! The capture flags: the one definition of the `remora-init` command line.
//!
//! The flags follow `istio-iptables` (same short and long names, same environment variables), so
//! the arguments the injector renders for Istio carry over unchanged:
//!
//! ```
//! use clap::Parser;
//! let flags = remora_init::flags::Flags::try_parse_from([
//!     "remora-init", "-p", "15001", "-z", "15006", "-u", "1337", "-m", "REDIRECT",
//!     "-i", "*", "-x", "", "-b", "*", "-d", "15090,15021,15020",
//! ]).unwrap();
//! let config = flags.validate().unwrap();
//! assert_eq!(config.proxy_port, 15001);
//! ```
//!
//! [`Flags`] holds the raw strings exactly as given (so a caller can echo them); [`Flags::validate`]
//! turns them into a [`CaptureConfig`] or names the flag, the value and the reason it is wrong.

use std::fmt;
use std::net::IpAddr;

use clap::{Parser, ValueEnum};
use ipnet::IpNet;

/// Which iptables implementation to program.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum IptablesMode {
    /// nft or legacy, whichever already holds rules in this network namespace (nft when neither).
    Auto,
    /// `iptables-nft-restore` / `ip6tables-nft-restore`.
    Nft,
    /// `iptables-legacy-restore` / `ip6tables-legacy-restore`.
    Legacy,
}

/// Whether to program IPv6 (ip6tables) as well as IPv4.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Ipv6Mode {
    /// On when the pod has a global-scope IPv6 address.
    Auto,
    On,
    Off,
}

/// The `remora-init` command line (istio-iptables compatible).
///
/// Every capture flag is a raw string (as istio-iptables takes it): comma-separated lists accept
/// empty items (`"15090,15021,"`), `*` is the wildcard where Istio allows it. Call
/// [`Flags::validate`] to get the checked [`CaptureConfig`].
#[derive(Debug, Clone, Parser, PartialEq, Eq)]
#[command(
    name = "remora-init",
    version,
    about = "Programs the iptables capture of a remora (Istio-compatible) sidecar, atomically and idempotently.",
    long_about = None,
    // Like istio-iptables (pflag), a repeated flag takes its last value.
    args_override_self = true
)]
pub struct Flags {
    /// Outbound capture port of the proxy: outbound TCP is redirected here.
    #[arg(
        short = 'p',
        long = "envoy-port",
        env = "ENVOY_PORT",
        default_value = "15001"
    )]
    pub proxy_port: String,

    /// Inbound capture port of the proxy: captured inbound TCP is redirected here.
    #[arg(
        short = 'z',
        long = "inbound-capture-port",
        env = "INBOUND_CAPTURE_PORT",
        default_value = "15006"
    )]
    pub inbound_capture_port: String,

    /// Inbound tunnel port (HBONE): never captured inbound, never hairpinned.
    #[arg(
        short = 'e',
        long = "inbound-tunnel-port",
        env = "INBOUND_TUNNEL_PORT",
        default_value = "15008"
    )]
    pub inbound_tunnel_port: String,

    /// UID(s) of the proxy, comma-separated: their traffic is never captured.
    #[arg(
        short = 'u',
        long = "proxy-uid",
        env = "PROXY_UID",
        default_value = "1337"
    )]
    pub proxy_uid: String,

    /// GID(s) of the proxy, comma-separated (default: the same as -u).
    #[arg(short = 'g', long = "proxy-gid", env = "PROXY_GID")]
    pub proxy_gid: Option<String>,

    /// Inbound interception mode: REDIRECT (TPROXY is not supported yet).
    #[arg(
        short = 'm',
        long = "istio-inbound-interception-mode",
        env = "ISTIO_INBOUND_INTERCEPTION_MODE",
        default_value = "REDIRECT"
    )]
    pub mode: String,

    /// Outbound CIDRs to capture, comma-separated; `*` = all; empty = none.
    #[arg(
        short = 'i',
        long = "istio-service-cidr",
        env = "ISTIO_SERVICE_CIDR",
        default_value = ""
    )]
    pub outbound_ip_ranges_include: String,

    /// Outbound CIDRs never captured, comma-separated.
    #[arg(
        short = 'x',
        long = "istio-service-exclude-cidr",
        env = "ISTIO_SERVICE_EXCLUDE_CIDR",
        default_value = ""
    )]
    pub outbound_ip_ranges_exclude: String,

    /// Inbound ports to capture, comma-separated; `*` = all; empty = no inbound capture.
    #[arg(
        short = 'b',
        long = "istio-inbound-ports",
        env = "ISTIO_INBOUND_PORTS",
        default_value = ""
    )]
    pub inbound_ports_include: String,

    /// Inbound ports never captured (only used when -b is `*`), comma-separated.
    #[arg(
        short = 'd',
        long = "istio-local-exclude-ports",
        env = "ISTIO_LOCAL_EXCLUDE_PORTS",
        default_value = ""
    )]
    pub inbound_ports_exclude: String,

    /// Outbound TCP ports always captured (whatever the destination), comma-separated.
    #[arg(
        short = 'q',
        long = "istio-outbound-ports",
        env = "ISTIO_OUTBOUND_PORTS",
        default_value = ""
    )]
    pub outbound_ports_include: String,

    /// Outbound ports (TCP and UDP) never captured, comma-separated.
    #[arg(
        short = 'o',
        long = "istio-local-outbound-ports-exclude",
        env = "ISTIO_LOCAL_OUTBOUND_PORTS_EXCLUDE",
        default_value = ""
    )]
    pub outbound_ports_exclude: String,

    /// Interfaces whose traffic is never captured (neither direction), comma-separated.
    #[arg(
        short = 'c',
        long = "istio-exclude-interfaces",
        env = "ISTIO_EXCLUDE_INTERFACES",
        default_value = ""
    )]
    pub exclude_interfaces: String,

    /// Virtual interfaces (e.g. KubeVirt VMs) whose inbound traffic is treated as outbound.
    #[arg(
        short = 'k',
        long = "kube-virt-interfaces",
        env = "KUBE_VIRT_INTERFACES",
        default_value = ""
    )]
    pub kube_virt_interfaces: String,

    /// Print the flags, the backend and the restore text; change nothing.
    #[arg(short = 'n', long = "dry-run", env = "DRY_RUN")]
    pub dry_run: bool,

    /// Remove everything remora-init added (our chains and our jumps) and nothing else.
    #[arg(long = "cleanup")]
    pub cleanup: bool,

    /// iptables backend.
    #[arg(long = "iptables-mode", env = "REMORA_IPTABLES_MODE", value_enum, default_value_t = IptablesMode::Auto)]
    pub iptables_mode: IptablesMode,

    /// Program IPv6 too: auto = when the pod has a global IPv6 address.
    #[arg(long = "ipv6", env = "REMORA_IPV6", value_enum, default_value_t = Ipv6Mode::Auto)]
    pub ipv6: Ipv6Mode,

    /// Accepted for compatibility with Istio-rendered arguments; ignored.
    #[arg(long = "log_output_level", hide = true)]
    pub log_output_level: Option<String>,
}

/// One invalid flag: which flag, which value, why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlagError {
    /// e.g. `-b/--istio-inbound-ports`
    pub flag: &'static str,
    /// the offending value (the whole flag value or the one bad list item)
    pub value: String,
    pub reason: String,
}

impl fmt::Display for FlagError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid value {:?} for {}: {}",
            self.value, self.flag, self.reason
        )
    }
}

impl std::error::Error for FlagError {}

/// Inbound capture choice (`-b`, `-d`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InboundCapture {
    /// `-b ""`: no inbound capture.
    Disabled,
    /// `-b '*'`: every inbound TCP port except these (`-d`).
    AllExcept(Vec<u16>),
    /// `-b P1,P2`: only these ports.
    Only(Vec<u16>),
}

/// Outbound destinations to capture (`-i`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutboundCapture {
    /// `-i ""`: none (only `-q` ports are captured).
    Disabled,
    /// `-i '*'`: every destination.
    All,
    /// `-i CIDR,...`: only these destinations.
    Cidrs(Vec<IpNet>),
}

/// Inbound interception mode. Only REDIRECT exists for now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InterceptionMode {
    Redirect,
}

/// The validated capture configuration: everything the rule plan depends on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaptureConfig {
    pub proxy_port: u16,
    pub inbound_capture_port: u16,
    pub inbound_tunnel_port: u16,
    pub proxy_uids: Vec<u32>,
    pub proxy_gids: Vec<u32>,
    pub mode: InterceptionMode,
    pub inbound: InboundCapture,
    /// `-d` ports given while `-b` is not `*`: they have no effect (kept to report it).
    pub ignored_inbound_excludes: Vec<u16>,
    pub outbound: OutboundCapture,
    /// `-x`, canonical network form (host bits cleared), in the order given.
    pub outbound_exclude: Vec<IpNet>,
    pub outbound_ports_include: Vec<u16>,
    pub outbound_ports_exclude: Vec<u16>,
    pub exclude_interfaces: Vec<String>,
    pub kube_virt_interfaces: Vec<String>,
}

impl CaptureConfig {
    /// The configuration of a default injected sidecar
    /// (`-p 15001 -z 15006 -u 1337 -m REDIRECT -i '*' -x "" -b '*' -d 15090,15021,15020`).
    pub fn istio_default() -> CaptureConfig {
        CaptureConfig {
            proxy_port: 15001,
            inbound_capture_port: 15006,
            inbound_tunnel_port: 15008,
            proxy_uids: vec![1337],
            proxy_gids: vec![1337],
            mode: InterceptionMode::Redirect,
            inbound: InboundCapture::AllExcept(vec![15090, 15021, 15020]),
            ignored_inbound_excludes: Vec::new(),
            outbound: OutboundCapture::All,
            outbound_exclude: Vec::new(),
            outbound_ports_include: Vec::new(),
            outbound_ports_exclude: Vec::new(),
            exclude_interfaces: Vec::new(),
            kube_virt_interfaces: Vec::new(),
        }
    }
}

const F_PROXY_PORT: &str = "-p/--envoy-port";
const F_INBOUND_PORT: &str = "-z/--inbound-capture-port";
const F_TUNNEL_PORT: &str = "-e/--inbound-tunnel-port";
const F_UID: &str = "-u/--proxy-uid";
const F_GID: &str = "-g/--proxy-gid";
const F_MODE: &str = "-m/--istio-inbound-interception-mode";
const F_INCLUDE_CIDR: &str = "-i/--istio-service-cidr";
const F_EXCLUDE_CIDR: &str = "-x/--istio-service-exclude-cidr";
const F_INBOUND_PORTS: &str = "-b/--istio-inbound-ports";
const F_INBOUND_EXCLUDE: &str = "-d/--istio-local-exclude-ports";
const F_OUTBOUND_PORTS: &str = "-q/--istio-outbound-ports";
const F_OUTBOUND_EXCLUDE: &str = "-o/--istio-local-outbound-ports-exclude";
const F_EXCLUDE_IF: &str = "-c/--istio-exclude-interfaces";
const F_VIRT_IF: &str = "-k/--kube-virt-interfaces";

impl Flags {
    /// Parse `args` (program name first) from the command line alone, ignoring the environment
    /// variables the flags normally fall back to. For callers that check arguments rendered for
    /// another process (the webhook), whose own environment must not leak into the result.
    pub fn try_parse_args_only<I, T>(args: I) -> Result<Flags, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        use clap::{CommandFactory, FromArgMatches};
        let matches = Flags::command()
            .mut_args(|a| a.env(None::<&'static str>))
            .try_get_matches_from(args)?;
        Flags::from_arg_matches(&matches)
    }

    /// Check every flag; the first error found, naming flag, value and reason.
    pub fn validate(&self) -> Result<CaptureConfig, FlagError> {
        self.validate_all().map_err(|mut errors| errors.remove(0))
    }

    /// Check every flag; all errors found (never an empty Vec on `Err`).
    pub fn validate_all(&self) -> Result<CaptureConfig, Vec<FlagError>> {
        let mut errs = Vec::new();
        let proxy_port = port(F_PROXY_PORT, &self.proxy_port, &mut errs);
        let inbound_capture_port = port(F_INBOUND_PORT, &self.inbound_capture_port, &mut errs);
        let inbound_tunnel_port = port(F_TUNNEL_PORT, &self.inbound_tunnel_port, &mut errs);
        let proxy_uids = ids(F_UID, &self.proxy_uid, &mut errs);
        let proxy_gids = match &self.proxy_gid {
            Some(g) if !g.trim().is_empty() => ids(F_GID, g, &mut errs),
            _ => proxy_uids.clone(),
        };
        let mode = match self.mode.trim() {
            m if m.is_empty() || m.eq_ignore_ascii_case("REDIRECT") => InterceptionMode::Redirect,
            m if m.eq_ignore_ascii_case("TPROXY") => {
                errs.push(FlagError {
                    flag: F_MODE,
                    value: self.mode.clone(),
                    reason: "TPROXY interception is not supported yet; use REDIRECT".into(),
                });
                InterceptionMode::Redirect
            }
            _ => {
                errs.push(FlagError {
                    flag: F_MODE,
                    value: self.mode.clone(),
                    reason: "must be REDIRECT".into(),
                });
                InterceptionMode::Redirect
            }
        };
        let excludes = port_list(F_INBOUND_EXCLUDE, &self.inbound_ports_exclude, &mut errs);
        let (inbound, ignored_inbound_excludes) = if self.inbound_ports_include.trim() == "*" {
            (InboundCapture::AllExcept(excludes), Vec::new())
        } else {
            let ports = port_list(F_INBOUND_PORTS, &self.inbound_ports_include, &mut errs);
            if ports.is_empty() {
                (InboundCapture::Disabled, excludes)
            } else {
                (InboundCapture::Only(ports), excludes)
            }
        };
        let outbound = if self.outbound_ip_ranges_include.trim() == "*" {
            OutboundCapture::All
        } else {
            let nets = cidr_list(F_INCLUDE_CIDR, &self.outbound_ip_ranges_include, &mut errs);
            if nets.is_empty() {
                OutboundCapture::Disabled
            } else {
                OutboundCapture::Cidrs(nets)
            }
        };
        let outbound_exclude =
            cidr_list(F_EXCLUDE_CIDR, &self.outbound_ip_ranges_exclude, &mut errs);
        let outbound_ports_include =
            port_list(F_OUTBOUND_PORTS, &self.outbound_ports_include, &mut errs);
        let outbound_ports_exclude =
            port_list(F_OUTBOUND_EXCLUDE, &self.outbound_ports_exclude, &mut errs);
        let exclude_interfaces = iface_list(F_EXCLUDE_IF, &self.exclude_interfaces, &mut errs);
        let kube_virt_interfaces = iface_list(F_VIRT_IF, &self.kube_virt_interfaces, &mut errs);

        if !errs.is_empty() {
            return Err(errs);
        }
        Ok(CaptureConfig {
            proxy_port,
            inbound_capture_port,
            inbound_tunnel_port,
            proxy_uids,
            proxy_gids,
            mode,
            inbound,
            ignored_inbound_excludes,
            outbound,
            outbound_exclude,
            outbound_ports_include,
            outbound_ports_exclude,
            exclude_interfaces,
            kube_virt_interfaces,
        })
    }

    /// The flags as `name=value` pairs, in a fixed order, for the start-up log.
    pub fn describe(&self) -> Vec<(&'static str, String)> {
        vec![
            (F_PROXY_PORT, self.proxy_port.clone()),
            (F_INBOUND_PORT, self.inbound_capture_port.clone()),
            (F_TUNNEL_PORT, self.inbound_tunnel_port.clone()),
            (F_UID, self.proxy_uid.clone()),
            (
                F_GID,
                self.proxy_gid
                    .clone()
                    .unwrap_or_else(|| format!("(unset: same as -u, {})", self.proxy_uid)),
            ),
            (F_MODE, self.mode.clone()),
            (F_INCLUDE_CIDR, self.outbound_ip_ranges_include.clone()),
            (F_EXCLUDE_CIDR, self.outbound_ip_ranges_exclude.clone()),
            (F_INBOUND_PORTS, self.inbound_ports_include.clone()),
            (F_INBOUND_EXCLUDE, self.inbound_ports_exclude.clone()),
            (F_OUTBOUND_PORTS, self.outbound_ports_include.clone()),
            (F_OUTBOUND_EXCLUDE, self.outbound_ports_exclude.clone()),
            (F_EXCLUDE_IF, self.exclude_interfaces.clone()),
            (F_VIRT_IF, self.kube_virt_interfaces.clone()),
            ("-n/--dry-run", self.dry_run.to_string()),
            ("--cleanup", self.cleanup.to_string()),
            (
                "--iptables-mode",
                format!("{:?}", self.iptables_mode).to_lowercase(),
            ),
            ("--ipv6", format!("{:?}", self.ipv6).to_lowercase()),
        ]
    }
}

/// Items of a comma-separated list, trimmed, empty items dropped (Istio tolerates `"a,b,"`).
fn items(value: &str) -> impl Iterator<Item = &str> {
    value.split(',').map(str::trim).filter(|s| !s.is_empty())
}

fn parse_port(item: &str) -> Result<u16, String> {
    match item.parse::<u32>() {
        Ok(0) => Err("port 0 is not a valid port (expected 1-65535)".into()),
        Ok(p) if p <= 65535 => Ok(p as u16),
        Ok(_) => Err("port out of range (expected 1-65535)".into()),
        Err(_) => Err("not a port number (expected 1-65535)".into()),
    }
}

fn port(flag: &'static str, value: &str, errs: &mut Vec<FlagError>) -> u16 {
    match parse_port(value.trim()) {
        Ok(p) => p,
        Err(reason) => {
            errs.push(FlagError {
                flag,
                value: value.to_string(),
                reason,
            });
            0
        }
    }
}

/// Ports in the order given, duplicates dropped.
fn port_list(flag: &'static str, value: &str, errs: &mut Vec<FlagError>) -> Vec<u16> {
    let mut out = Vec::new();
    for item in items(value) {
        match parse_port(item) {
            Ok(p) if !out.contains(&p) => out.push(p),
            Ok(_) => {}
            Err(reason) => {
                let reason = if item == "*" {
                    "the wildcard `*` must be the whole value, not a list item".to_string()
                } else {
                    reason
                };
                errs.push(FlagError {
                    flag,
                    value: item.to_string(),
                    reason,
                })
            }
        }
    }
    out
}

fn ids(flag: &'static str, value: &str, errs: &mut Vec<FlagError>) -> Vec<u32> {
    let mut out = Vec::new();
    for item in items(value) {
        match item.parse::<u32>() {
            Ok(id) if id != u32::MAX => {
                if !out.contains(&id) {
                    out.push(id)
                }
            }
            _ => errs.push(FlagError {
                flag,
                value: item.to_string(),
                reason: "not a numeric id (expected 0-4294967294; names are not resolved)".into(),
            }),
        }
    }
    if out.is_empty() && !errs.iter().any(|e| e.flag == flag) {
        errs.push(FlagError {
            flag,
            value: value.to_string(),
            reason: "at least one numeric id is required".into(),
        });
    }
    out
}

/// CIDRs (or bare addresses) in canonical network form, duplicates dropped.
fn cidr_list(flag: &'static str, value: &str, errs: &mut Vec<FlagError>) -> Vec<IpNet> {
    let mut out = Vec::new();
    for item in items(value) {
        let parsed = item
            .parse::<IpNet>()
            .or_else(|_| item.parse::<IpAddr>().map(IpNet::from));
        match parsed {
            Ok(net) => {
                let net = net.trunc();
                if !out.contains(&net) {
                    out.push(net)
                }
            }
            Err(_) => errs.push(FlagError {
                flag,
                value: item.to_string(),
                reason: if item == "*" {
                    "the wildcard `*` must be the whole value, not a list item".into()
                } else {
                    "not an IPv4/IPv6 CIDR (e.g. 10.0.0.0/8, fd00::/8) or address".into()
                },
            }),
        }
    }
    out
}

/// Linux interface names: 1-15 bytes, no `/`, `:`, quotes, whitespace; an iptables `+` suffix
/// wildcard is allowed.
pub fn check_interface_name(name: &str) -> Result<(), String> {
    if name.len() > 15 {
        return Err("interface names are at most 15 characters".into());
    }
    if name == "." || name == ".." {
        return Err("not a valid interface name".into());
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '@' | '+')))
    {
        return Err(format!(
            "character {bad:?} is not allowed in an interface name"
        ));
    }
    if name.trim_end_matches('+').contains('+') {
        return Err("`+` is only allowed at the end (iptables wildcard)".into());
    }
    Ok(())
}

fn iface_list(flag: &'static str, value: &str, errs: &mut Vec<FlagError>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for item in items(value) {
        match check_interface_name(item) {
            Ok(()) => {
                if !out.iter().any(|o| o == item) {
                    out.push(item.to_string())
                }
            }
            Err(reason) => errs.push(FlagError {
                flag,
                value: item.to_string(),
                reason,
            }),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Flags {
        let mut v = vec!["remora-init"];
        v.extend_from_slice(args);
        Flags::try_parse_from(v).expect("parse")
    }

    #[test]
    fn istio_default_args_parse_to_the_default_config() {
        let f = parse(&[
            "-p",
            "15001",
            "-z",
            "15006",
            "-u",
            "1337",
            "-m",
            "REDIRECT",
            "-i",
            "*",
            "-x",
            "",
            "-b",
            "*",
            "-d",
            "15090,15021,15020",
        ]);
        assert_eq!(f.validate().unwrap(), CaptureConfig::istio_default());
        // Istio also appends a log-level flag; it is accepted and ignored.
        let f2 = parse(&[
            "-p",
            "15001",
            "-z",
            "15006",
            "-u",
            "1337",
            "-m",
            "REDIRECT",
            "-i",
            "*",
            "-x",
            "",
            "-b",
            "*",
            "-d",
            "15090,15021,15020",
            "--log_output_level=default:info",
        ]);
        assert_eq!(f2.validate().unwrap(), CaptureConfig::istio_default());
    }

    #[test]
    fn gid_defaults_to_uid_list() {
        let c = parse(&["-u", "3,4"]).validate().unwrap();
        assert_eq!(c.proxy_uids, vec![3, 4]);
        assert_eq!(c.proxy_gids, vec![3, 4]);
        let c = parse(&["-u", "3", "-g", "1,2"]).validate().unwrap();
        assert_eq!(c.proxy_gids, vec![1, 2]);
    }

    #[test]
    fn lists_tolerate_empty_items_and_drop_duplicates() {
        let c = parse(&["-b", "4000,5000,,4000,", "-d", "6000,7000,"])
            .validate()
            .unwrap();
        assert_eq!(c.inbound, InboundCapture::Only(vec![4000, 5000]));
        assert_eq!(c.ignored_inbound_excludes, vec![6000, 7000]);
    }

    #[test]
    fn cidrs_are_canonicalised_and_split_nothing() {
        let c = parse(&[
            "-i",
            "10.1.2.3/8, 2001:db8::1/32,192.168.0.1",
            "-x",
            "1.1.0.0/16",
        ])
        .validate()
        .unwrap();
        assert_eq!(
            c.outbound,
            OutboundCapture::Cidrs(vec![
                "10.0.0.0/8".parse().unwrap(),
                "2001:db8::/32".parse().unwrap(),
                "192.168.0.1/32".parse().unwrap()
            ])
        );
        assert_eq!(
            c.outbound_exclude,
            vec!["1.1.0.0/16".parse::<IpNet>().unwrap()]
        );
    }

    #[test]
    fn bad_values_are_named() {
        let cases: &[(&[&str], &str, &str)] = &[
            (&["-p", "0"], "-p/--envoy-port", "0"),
            (&["-z", "70000"], "-z/--inbound-capture-port", "70000"),
            (&["-u", "proxy"], "-u/--proxy-uid", "proxy"),
            (&["-u", ""], "-u/--proxy-uid", ""),
            (&["-g", "1,x"], "-g/--proxy-gid", "x"),
            (
                &["-m", "TPROXY"],
                "-m/--istio-inbound-interception-mode",
                "TPROXY",
            ),
            (
                &["-m", "MAGIC"],
                "-m/--istio-inbound-interception-mode",
                "MAGIC",
            ),
            (&["-b", "80,http"], "-b/--istio-inbound-ports", "http"),
            (&["-b", "80,*"], "-b/--istio-inbound-ports", "*"),
            (&["-d", "5-6"], "-d/--istio-local-exclude-ports", "5-6"),
            (&["-q", "65536"], "-q/--istio-outbound-ports", "65536"),
            (
                &["-o", "1.5"],
                "-o/--istio-local-outbound-ports-exclude",
                "1.5",
            ),
            (
                &["-i", "10.0.0.0/33"],
                "-i/--istio-service-cidr",
                "10.0.0.0/33",
            ),
            (
                &["-x", "example.com"],
                "-x/--istio-service-exclude-cidr",
                "example.com",
            ),
            (&["-c", "eth0/1"], "-c/--istio-exclude-interfaces", "eth0/1"),
            (
                &["-k", "averyveryverylongname"],
                "-k/--kube-virt-interfaces",
                "averyveryverylongname",
            ),
            (&["-k", "a\"b"], "-k/--kube-virt-interfaces", "a\"b"),
        ];
        for (args, flag, value) in cases {
            let err = parse(args)
                .validate()
                .expect_err(&format!("{args:?} must fail"));
            assert_eq!(err.flag, *flag, "{args:?}");
            assert_eq!(err.value, *value, "{args:?}");
            let line = err.to_string();
            assert!(line.contains(flag) && !line.contains('\n'), "{line}");
        }
    }

    #[test]
    fn all_errors_are_reported() {
        let errs = parse(&["-p", "x", "-b", "y", "-c", "a b"])
            .validate_all()
            .unwrap_err();
        let flags: Vec<_> = errs.iter().map(|e| e.flag).collect();
        assert_eq!(
            flags,
            vec![
                "-p/--envoy-port",
                "-b/--istio-inbound-ports",
                "-c/--istio-exclude-interfaces"
            ]
        );
    }

    #[test]
    fn unknown_flags_and_bad_enums_fail_to_parse() {
        assert!(Flags::try_parse_from(["remora-init", "--bogus"]).is_err());
        assert!(Flags::try_parse_from(["remora-init", "--ipv6", "maybe"]).is_err());
        assert!(Flags::try_parse_from(["remora-init", "--iptables-mode", "xt"]).is_err());
        let f = parse(&[
            "--ipv6",
            "off",
            "--iptables-mode",
            "legacy",
            "-n",
            "--cleanup",
        ]);
        assert_eq!(f.ipv6, Ipv6Mode::Off);
        assert_eq!(f.iptables_mode, IptablesMode::Legacy);
        assert!(f.dry_run && f.cleanup);
    }

    #[test]
    fn repeated_flag_takes_the_last_value() {
        let c = parse(&["-i", "*", "-i", "10.0.0.0/8", "-b", "80", "-b", "*"])
            .validate()
            .unwrap();
        assert_eq!(
            c.outbound,
            OutboundCapture::Cidrs(vec!["10.0.0.0/8".parse().unwrap()])
        );
        assert_eq!(c.inbound, InboundCapture::AllExcept(vec![]));
    }
}
