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

    /// Only processes in one of these groups (numbers or names, comma-separated) are captured
    /// outbound; `*` = all. Istio sets it by environment only.
    #[arg(
        long = "outbound-owner-groups",
        env = "ISTIO_OUTBOUND_OWNER_GROUPS",
        default_value = "*"
    )]
    pub owner_groups_include: String,

    /// Processes in these groups (numbers or names) are never captured outbound.
    #[arg(
        long = "outbound-owner-groups-exclude",
        env = "ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE",
        default_value = ""
    )]
    pub owner_groups_exclude: String,

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

/// Which processes' outbound traffic is captured, by group (Istio's
/// `ISTIO_OUTBOUND_OWNER_GROUPS` / `ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OwnerGroups {
    /// Every group (`*`, the default).
    All,
    /// Only processes in one of these groups.
    Only(Vec<String>),
    /// Every group but these.
    AllExcept(Vec<String>),
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
    /// Groups are numbers or names; [`crate::apply::resolve_group_names`] turns names into
    /// numbers before planning so the plan matches what `iptables-save` prints.
    pub owner_groups: OwnerGroups,
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
            owner_groups: OwnerGroups::All,
        }
    }
}

fn join<T: fmt::Display>(items: &[T]) -> String {
    items
        .iter()
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

impl CaptureConfig {
    /// What will be captured, in plain words, one line per aspect (for the log).
    pub fn summary(&self) -> Vec<String> {
        let mut out = Vec::new();
        out.push(match &self.inbound {
            InboundCapture::Disabled => "inbound: nothing is captured (-b is empty)".to_string(),
            InboundCapture::AllExcept(ex) => {
                let mut ports: Vec<String> = ex.iter().map(u16::to_string).collect();
                ports.push(format!("{} (tunnel)", self.inbound_tunnel_port));
                format!(
                    "inbound: every TCP port except {} is redirected to {}",
                    ports.join(", "),
                    self.inbound_capture_port
                )
            }
            InboundCapture::Only(ports) => format!(
                "inbound: TCP ports {} are redirected to {}; other ports are not captured",
                join(ports),
                self.inbound_capture_port
            ),
        });
        let mut outbound = match &self.outbound {
            OutboundCapture::Disabled => {
                "outbound: no destination is captured (-i is empty)".to_string()
            }
            OutboundCapture::All => format!(
                "outbound: every destination is redirected to {}",
                self.proxy_port
            ),
            OutboundCapture::Cidrs(nets) => format!(
                "outbound: destinations in {} are redirected to {}",
                join(nets),
                self.proxy_port
            ),
        };
        outbound.push_str(", except loopback");
        if !self.outbound_exclude.is_empty() {
            outbound.push_str(&format!(" and {}", join(&self.outbound_exclude)));
        }
        out.push(outbound);
        if !self.outbound_ports_include.is_empty() {
            out.push(format!(
                "outbound: TCP ports {} are always redirected to {}",
                join(&self.outbound_ports_include),
                self.proxy_port
            ));
        }
        if !self.outbound_ports_exclude.is_empty() {
            out.push(format!(
                "outbound: ports {} (TCP and UDP) are never captured",
                join(&self.outbound_ports_exclude)
            ));
        }
        out.push(format!(
            "exempt: uid {} and gid {} (the proxy), and connections from 127.0.0.6 / ::6 (the proxy forwarding inbound); the proxy calling its own pod IP is captured as inbound",
            join(&self.proxy_uids),
            join(&self.proxy_gids)
        ));
        match &self.owner_groups {
            OwnerGroups::All => {}
            OwnerGroups::Only(g) => out.push(format!(
                "outbound: only processes in group {} are captured",
                g.join(", ")
            )),
            OwnerGroups::AllExcept(g) => out.push(format!(
                "outbound: processes in group {} are never captured",
                g.join(", ")
            )),
        }
        if !self.exclude_interfaces.is_empty() {
            out.push(format!(
                "interfaces never captured: {}",
                self.exclude_interfaces.join(", ")
            ));
        }
        if !self.kube_virt_interfaces.is_empty() {
            out.push(format!(
                "virtual interfaces (their inbound is treated as outbound): {}",
                self.kube_virt_interfaces.join(", ")
            ));
        }
        out
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
/// The include list becomes one rule with one owner match per group; iptables-restore parses at
/// most 255 words per rule.
pub const MAX_INCLUDED_GROUPS: usize = 40;
const F_GROUPS: &str = "ISTIO_OUTBOUND_OWNER_GROUPS (--outbound-owner-groups)";
const F_GROUPS_EXCLUDE: &str =
    "ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE (--outbound-owner-groups-exclude)";

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
        let include = self.owner_groups_include.trim();
        let excluded = group_list(F_GROUPS_EXCLUDE, &self.owner_groups_exclude, &mut errs);
        let owner_groups = if include == "*" || include.is_empty() {
            if excluded.is_empty() {
                OwnerGroups::All
            } else {
                OwnerGroups::AllExcept(excluded)
            }
        } else {
            let included = group_list(F_GROUPS, include, &mut errs);
            if included.len() > MAX_INCLUDED_GROUPS {
                errs.push(FlagError {
                    flag: F_GROUPS,
                    value: self.owner_groups_include.clone(),
                    reason: format!(
                        "{} groups given; at most {MAX_INCLUDED_GROUPS} fit in one iptables rule",
                        included.len()
                    ),
                });
            }
            if !excluded.is_empty() {
                errs.push(FlagError {
                    flag: F_GROUPS,
                    value: self.owner_groups_include.clone(),
                    reason: "set together with ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE; use only one of them".into(),
                });
            }
            OwnerGroups::Only(included)
        };

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
            owner_groups,
        })
    }

    /// The flags as `(name, value)` pairs, in a fixed order, for the start-up log.
    pub fn describe(&self) -> Vec<(&'static str, String)> {
        self.entries().into_iter().map(|(n, _, v)| (n, v)).collect()
    }

    /// Parse the process's own command line (and environment), keeping where each value came
    /// from: `(flags, lines)` where each line reads `-p/--envoy-port = "15001" (default)`,
    /// `(command line)` or `(env ENVOY_PORT)`.
    pub fn parse_with_sources() -> Result<(Flags, Vec<String>), clap::Error> {
        Self::parse_with_sources_from(std::env::args_os())
    }

    /// [`Flags::parse_with_sources`] for given arguments (program name first).
    pub fn parse_with_sources_from<I, T>(args: I) -> Result<(Flags, Vec<String>), clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        use clap::parser::ValueSource;
        use clap::{CommandFactory, FromArgMatches};
        let cmd = Flags::command();
        let matches = cmd.clone().try_get_matches_from(args)?;
        let flags = Flags::from_arg_matches(&matches)?;
        let lines = flags
            .entries()
            .into_iter()
            .map(|(name, id, value)| {
                let source = match matches.value_source(id) {
                    Some(ValueSource::CommandLine) => "command line".to_string(),
                    Some(ValueSource::EnvVariable) => {
                        let env = cmd
                            .get_arguments()
                            .find(|a| a.get_id() == id)
                            .and_then(|a| a.get_env())
                            .map(|e| e.to_string_lossy().into_owned())
                            .unwrap_or_default();
                        format!("env {env}")
                    }
                    Some(ValueSource::DefaultValue) => "default".to_string(),
                    _ => "unset".to_string(),
                };
                format!("{name} = {value:?} ({source})")
            })
            .collect();
        Ok((flags, lines))
    }

    /// (label, clap id, value) of every flag.
    fn entries(&self) -> Vec<(&'static str, &'static str, String)> {
        vec![
            (F_PROXY_PORT, "proxy_port", self.proxy_port.clone()),
            (
                F_INBOUND_PORT,
                "inbound_capture_port",
                self.inbound_capture_port.clone(),
            ),
            (
                F_TUNNEL_PORT,
                "inbound_tunnel_port",
                self.inbound_tunnel_port.clone(),
            ),
            (F_UID, "proxy_uid", self.proxy_uid.clone()),
            (
                F_GID,
                "proxy_gid",
                self.proxy_gid
                    .clone()
                    .unwrap_or_else(|| format!("same as -u: {}", self.proxy_uid)),
            ),
            (F_MODE, "mode", self.mode.clone()),
            (
                F_INCLUDE_CIDR,
                "outbound_ip_ranges_include",
                self.outbound_ip_ranges_include.clone(),
            ),
            (
                F_EXCLUDE_CIDR,
                "outbound_ip_ranges_exclude",
                self.outbound_ip_ranges_exclude.clone(),
            ),
            (
                F_INBOUND_PORTS,
                "inbound_ports_include",
                self.inbound_ports_include.clone(),
            ),
            (
                F_INBOUND_EXCLUDE,
                "inbound_ports_exclude",
                self.inbound_ports_exclude.clone(),
            ),
            (
                F_OUTBOUND_PORTS,
                "outbound_ports_include",
                self.outbound_ports_include.clone(),
            ),
            (
                F_OUTBOUND_EXCLUDE,
                "outbound_ports_exclude",
                self.outbound_ports_exclude.clone(),
            ),
            (
                F_EXCLUDE_IF,
                "exclude_interfaces",
                self.exclude_interfaces.clone(),
            ),
            (
                F_VIRT_IF,
                "kube_virt_interfaces",
                self.kube_virt_interfaces.clone(),
            ),
            (
                "--outbound-owner-groups",
                "owner_groups_include",
                self.owner_groups_include.clone(),
            ),
            (
                "--outbound-owner-groups-exclude",
                "owner_groups_exclude",
                self.owner_groups_exclude.clone(),
            ),
            ("-n/--dry-run", "dry_run", self.dry_run.to_string()),
            ("--cleanup", "cleanup", self.cleanup.to_string()),
            (
                "--iptables-mode",
                "iptables_mode",
                format!("{:?}", self.iptables_mode).to_lowercase(),
            ),
            ("--ipv6", "ipv6", format!("{:?}", self.ipv6).to_lowercase()),
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

/// Group numbers or names (`[A-Za-z0-9._-]`, at most 32 characters, not starting with `-`).
fn group_list(flag: &'static str, value: &str, errs: &mut Vec<FlagError>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for item in items(value) {
        let valid = item.len() <= 32
            && !item.starts_with('-')
            && item
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
        if !valid {
            errs.push(FlagError {
                flag,
                value: item.to_string(),
                reason: if item == "*" {
                    "the wildcard `*` must be the whole value, not a list item".into()
                } else {
                    "not a group number or name".into()
                },
            });
        } else if !out.iter().any(|o| o == item) {
            out.push(item.to_string());
        }
    }
    out
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
    fn summary_of_the_default_sidecar() {
        assert_eq!(
            CaptureConfig::istio_default().summary(),
            vec![
                "inbound: every TCP port except 15090, 15021, 15020, 15008 (tunnel) is redirected to 15006",
                "outbound: every destination is redirected to 15001, except loopback",
                "exempt: uid 1337 and gid 1337 (the proxy), and connections from 127.0.0.6 / ::6 (the proxy forwarding inbound); the proxy calling its own pod IP is captured as inbound",
            ]
        );
        let c = parse(&[
            "-b",
            "80",
            "-i",
            "10.0.0.0/8",
            "-x",
            "10.1.0.0/16",
            "-q",
            "443",
            "-o",
            "53",
            "-c",
            "eth9",
            "-k",
            "vnet0",
        ])
        .validate()
        .unwrap();
        let s = c.summary().join("\n");
        for want in [
            "inbound: TCP ports 80 are redirected to 15006",
            "destinations in 10.0.0.0/8 are redirected to 15001, except loopback and 10.1.0.0/16",
            "TCP ports 443 are always redirected",
            "ports 53 (TCP and UDP) are never captured",
            "interfaces never captured: eth9",
            "inbound is treated as outbound): vnet0",
        ] {
            assert!(s.contains(want), "{want:?} not in:\n{s}");
        }
    }

    #[test]
    fn owner_groups() {
        assert_eq!(
            parse(&[]).validate().unwrap().owner_groups,
            OwnerGroups::All
        );
        let c = parse(&["--outbound-owner-groups", "java,202"])
            .validate()
            .unwrap();
        assert_eq!(
            c.owner_groups,
            OwnerGroups::Only(vec!["java".into(), "202".into()])
        );
        let c = parse(&["--outbound-owner-groups-exclude", "888,ftp"])
            .validate()
            .unwrap();
        assert_eq!(
            c.owner_groups,
            OwnerGroups::AllExcept(vec!["888".into(), "ftp".into()])
        );
        let e = parse(&[
            "--outbound-owner-groups",
            "1",
            "--outbound-owner-groups-exclude",
            "2",
        ])
        .validate()
        .unwrap_err();
        assert!(e.reason.contains("only one of them"), "{e}");
        let many: Vec<String> = (0..41).map(|i| (3000 + i).to_string()).collect();
        let e = parse(&["--outbound-owner-groups", &many.join(",")])
            .validate()
            .unwrap_err();
        assert!(e.reason.contains("at most 40"), "{e}");
        let e = parse(&["--outbound-owner-groups-exclude", "a b"])
            .validate()
            .unwrap_err();
        assert_eq!(e.value, "a b");
        assert!(e.flag.starts_with("ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE"));
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
    fn sources_are_reported_for_every_flag() {
        let (flags, lines) =
            Flags::parse_with_sources_from(["remora-init", "-p", "16001", "--cleanup"]).unwrap();
        assert_eq!(flags.proxy_port, "16001");
        assert_eq!(lines.len(), flags.describe().len());
        assert!(lines.contains(&"-p/--envoy-port = \"16001\" (command line)".to_string()));
        assert!(lines.contains(&"--cleanup = \"true\" (command line)".to_string()));
        // Every clap id used by entries() exists (a typo would show as "unset" for set flags).
        use clap::CommandFactory;
        let ids: Vec<String> = Flags::command()
            .get_arguments()
            .map(|a| a.get_id().to_string())
            .collect();
        for (_, id, _) in flags.entries() {
            assert!(ids.iter().any(|i| i == id), "no clap argument {id}");
        }
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
