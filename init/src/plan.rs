//! Pure rule planning: [`CaptureConfig`] → the rules of one address family → `iptables-restore`
//! text that moves the `nat` table from its current state to the planned one in one transaction.
//!
//! Every rule is written exactly as `iptables-save` prints it (option order, `-m tcp`, comment
//! quoting), so the plan can be compared line by line with what the kernel holds afterwards.
//!
//! Idempotence and atomicity: the restore text (fed to `iptables-restore --noflush`)
//! 1. declares our chains with `:CHAIN - [0:0]`, which creates them or flushes them;
//! 2. deletes (`-D`) every rule of ours currently in the built-in chains, spelled exactly as
//!    `iptables-save` printed it (the caller passes the current [`Snapshot`]);
//! 3. appends the planned rules to our chains and inserts/appends our rules in the built-in chains;
//! 4. removes (`-X`) chains of ours that the target does not have (cleanup).
//!
//! The kernel applies a table's block atomically at `COMMIT`, so a failure anywhere leaves the
//! table as it was; a second run starts from the first run's result and yields the same rules.

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use crate::flags::{CaptureConfig, InboundCapture, OutboundCapture, OwnerGroups};

/// The inbound chain (jumped to from PREROUTING).
pub const INBOUND: &str = "REMORA_INBOUND";
/// Redirects to the inbound capture port.
pub const IN_REDIRECT: &str = "REMORA_IN_REDIRECT";
/// The outbound chain (jumped to from OUTPUT).
pub const OUTPUT: &str = "REMORA_OUTPUT";
/// Redirects to the outbound capture port.
pub const REDIRECT: &str = "REMORA_REDIRECT";
/// Our chains, in the order they are declared.
pub const CHAINS: [&str; 4] = [INBOUND, REDIRECT, IN_REDIRECT, OUTPUT];
/// Every chain whose name starts with this is ours.
pub const CHAIN_PREFIX: &str = "REMORA_";
/// Every rule we write carries a comment starting with this.
pub const COMMENT_PREFIX: &str = "remora: ";
/// Built-in chains of the `nat` table (plus FORWARD, never used by nat but harmless).
/// Rules of ours are only ever looked for here; rules in other programs' chains are never ours.
pub const BUILTIN_CHAINS: [&str; 5] = ["PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"];
/// The only table we program.
pub const TABLE: &str = "nat";

/// Address family: `iptables` or `ip6tables`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub fn name(self) -> &'static str {
        match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        }
    }

    fn contains(self, net: &IpNet) -> bool {
        matches!(
            (self, net),
            (Family::V4, IpNet::V4(_)) | (Family::V6, IpNet::V6(_))
        )
    }

    /// Source address the proxy uses to forward inbound connections (127.0.0.6 / ::6).
    pub fn inbound_passthrough_source(self) -> IpNet {
        match self {
            Family::V4 => IpNet::V4(Ipv4Net::from(Ipv4Addr::new(127, 0, 0, 6))),
            Family::V6 => IpNet::V6(Ipv6Net::from(Ipv6Addr::new(0, 0, 0, 0, 0, 0, 0, 6))),
        }
    }

    /// The host loopback address the outbound chain never captures (127.0.0.1/32 / ::1/128).
    pub fn loopback(self) -> IpNet {
        match self {
            Family::V4 => IpNet::V4(Ipv4Net::from(Ipv4Addr::LOCALHOST)),
            Family::V6 => IpNet::V6(Ipv6Net::from(Ipv6Addr::LOCALHOST)),
        }
    }
}

/// Where a rule of ours goes in a built-in chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Position {
    /// `-A`: after everything else.
    Append,
    /// `-I CHAIN N` (1-based), emitted in ascending N after ours were deleted.
    Insert(usize),
}

/// A rule of ours in a built-in chain (PREROUTING, OUTPUT).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuiltinRule {
    pub chain: String,
    pub position: Position,
    /// Everything after `-A CHAIN ` in `iptables-save` form.
    pub spec: String,
}

/// Our state of one family's `nat` table: our chains with their rules, our rules in built-in
/// chains. Used both for what the kernel holds now (parsed from `iptables-save`) and for the
/// planned target.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Snapshot {
    /// Chain name → rule specs (everything after `-A CHAIN `), in chain order.
    pub chains: Vec<(String, Vec<String>)>,
    pub builtin: Vec<BuiltinRule>,
}

impl Snapshot {
    /// True when nothing of ours is present.
    pub fn is_empty(&self) -> bool {
        self.chains.is_empty() && self.builtin.is_empty()
    }

    /// Our rules as `iptables-save` prints them: `:CHAIN - [0:0]` lines (sorted, as save sorts
    /// user chains), then built-in chain rules (by chain: PREROUTING, INPUT, OUTPUT, POSTROUTING,
    /// then by position), then our chains' rules (sorted by chain name).
    pub fn save_lines(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut names: Vec<&String> = self.chains.iter().map(|(n, _)| n).collect();
        names.sort();
        for n in &names {
            out.push(format!(":{n} - [0:0]"));
        }
        for chain in ["PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"] {
            let mut inserted: Vec<(usize, &BuiltinRule)> = Vec::new();
            let mut appended: Vec<&BuiltinRule> = Vec::new();
            for r in self.builtin.iter().filter(|r| r.chain == chain) {
                match r.position {
                    Position::Insert(i) => inserted.push((i, r)),
                    Position::Append => appended.push(r),
                }
            }
            inserted.sort_by_key(|(i, _)| *i);
            for r in inserted.iter().map(|(_, r)| *r).chain(appended) {
                out.push(format!("-A {} {}", r.chain, r.spec));
            }
        }
        for n in &names {
            if let Some((_, rules)) = self.chains.iter().find(|(c, _)| c == *n) {
                for spec in rules {
                    out.push(format!("-A {n} {spec}"));
                }
            }
        }
        out
    }
}

/// True for a built-in-chain rule that belongs to us: it carries our comment or jumps to one of
/// our chains.
pub fn is_our_rule(spec: &str) -> bool {
    spec.contains(&format!("--comment \"{COMMENT_PREFIX}"))
        || spec
            .split_whitespace()
            .collect::<Vec<_>>()
            .windows(2)
            .any(|w| w[0] == "-j" && w[1].starts_with(CHAIN_PREFIX))
}

/// Parse `iptables-save -t nat` output into our part of it. Lines of other tables are ignored.
pub fn parse_save(text: &str) -> Snapshot {
    let mut snap = Snapshot::default();
    let mut in_nat = false;
    let mut counts: Vec<(String, usize)> = Vec::new();
    for line in text.lines() {
        let line = line.trim_end();
        if let Some(table) = line.strip_prefix('*') {
            in_nat = table.trim() == TABLE;
            continue;
        }
        if !in_nat || line.starts_with('#') {
            continue;
        }
        if let Some(decl) = line.strip_prefix(':') {
            let name = decl.split_whitespace().next().unwrap_or("");
            if name.starts_with(CHAIN_PREFIX) {
                snap.chains.push((name.to_string(), Vec::new()));
            }
            continue;
        }
        let Some(rest) = line.strip_prefix("-A ") else {
            continue;
        };
        let (chain, spec) = rest.split_once(' ').unwrap_or((rest, ""));
        let index = match counts.iter_mut().find(|(c, _)| c == chain) {
            Some((_, n)) => {
                *n += 1;
                *n
            }
            None => {
                counts.push((chain.to_string(), 1));
                1
            }
        };
        if chain.starts_with(CHAIN_PREFIX) {
            match snap.chains.iter_mut().find(|(c, _)| c == chain) {
                Some((_, rules)) => rules.push(spec.to_string()),
                None => snap
                    .chains
                    .push((chain.to_string(), vec![spec.to_string()])),
            }
        } else if BUILTIN_CHAINS.contains(&chain) && is_our_rule(spec) {
            snap.builtin.push(BuiltinRule {
                chain: chain.to_string(),
                position: Position::Insert(index),
                spec: spec.to_string(),
            });
        }
    }
    snap
}

/// One rule, built from typed parts and printed in `iptables-save` order.
#[derive(Default)]
struct Rule {
    src: Option<(bool, IpNet)>,
    dst: Option<(bool, IpNet)>,
    in_if: Option<String>,
    out_if: Option<String>,
    proto: Option<&'static str>,
    dport: Option<(bool, u16)>,
    uid: Option<(bool, u32)>,
    /// `-m owner [!] --gid-owner G`, one match each (a number or a group name).
    gids: Vec<(bool, String)>,
    comment: String,
    target: String,
}

impl Rule {
    fn new(comment: impl Into<String>, target: impl Into<String>) -> Rule {
        Rule {
            comment: comment.into(),
            target: target.into(),
            ..Rule::default()
        }
    }
    fn src(mut self, neg: bool, net: IpNet) -> Rule {
        self.src = Some((neg, net));
        self
    }
    fn dst(mut self, neg: bool, net: IpNet) -> Rule {
        self.dst = Some((neg, net));
        self
    }
    fn in_if(mut self, i: &str) -> Rule {
        self.in_if = Some(i.to_string());
        self
    }
    fn out_if(mut self, i: &str) -> Rule {
        self.out_if = Some(i.to_string());
        self
    }
    fn proto(mut self, p: &'static str) -> Rule {
        self.proto = Some(p);
        self
    }
    fn dport(mut self, neg: bool, p: u16) -> Rule {
        self.dport = Some((neg, p));
        self
    }
    fn uid(mut self, neg: bool, id: u32) -> Rule {
        self.uid = Some((neg, id));
        self
    }
    fn gid(mut self, neg: bool, id: impl ToString) -> Rule {
        self.gids.push((neg, id.to_string()));
        self
    }

    /// `iptables-save` order: -s -d -i -o -p, matches in order, comment, target.
    fn spec(&self) -> String {
        let bang = |neg: bool| if neg { "! " } else { "" };
        let mut s = String::new();
        // A /0 network matches everything; iptables-save prints nothing for it.
        if let Some((neg, net)) = &self.src {
            if net.prefix_len() != 0 {
                let _ = write!(s, "{}-s {} ", bang(*neg), net);
            }
        }
        if let Some((neg, net)) = &self.dst {
            if net.prefix_len() != 0 {
                let _ = write!(s, "{}-d {} ", bang(*neg), net);
            }
        }
        if let Some(i) = &self.in_if {
            let _ = write!(s, "-i {i} ");
        }
        if let Some(o) = &self.out_if {
            let _ = write!(s, "-o {o} ");
        }
        if let Some(p) = self.proto {
            let _ = write!(s, "-p {p} ");
            if let Some((neg, port)) = self.dport {
                let _ = write!(s, "-m {p} {}--dport {port} ", bang(neg));
            }
        }
        if let Some((neg, id)) = self.uid {
            let _ = write!(s, "-m owner {}--uid-owner {id} ", bang(neg));
        }
        for (neg, id) in &self.gids {
            let _ = write!(s, "-m owner {}--gid-owner {id} ", bang(*neg));
        }
        let _ = write!(
            s,
            "-m comment --comment \"{COMMENT_PREFIX}{}\" -j {}",
            clip_comment(&self.comment),
            self.target
        );
        s
    }
}

/// The kernel keeps at most 255 bytes of a comment; longer ones end in `...`.
fn clip_comment(text: &str) -> String {
    const MAX: usize = 255 - COMMENT_PREFIX.len();
    if text.len() <= MAX {
        return text.to_string();
    }
    let mut end = MAX - 3;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &text[..end])
}

/// The planned rules of one family (the target state), following istio-iptables' rule order
/// with our chain names.
pub fn plan(cfg: &CaptureConfig, family: Family) -> Snapshot {
    let mut inbound: Vec<Rule> = Vec::new();
    let mut output: Vec<Rule> = Vec::new();
    let mut prerouting_appended: Vec<Rule> = Vec::new();
    let mut output_appended: Vec<Rule> = Vec::new();
    // Rules istio-iptables inserts with `-I PREROUTING 1`, in the order it issues them; the
    // final order in the chain is the reverse.
    let mut prerouting_top_issued: Vec<Rule> = Vec::new();

    let loopback = family.loopback();
    let tunnel = cfg.inbound_tunnel_port;

    // Interfaces never captured in either direction.
    for ifname in &cfg.exclude_interfaces {
        prerouting_appended.push(
            Rule::new(format!("interface {ifname} is not captured (-c)"), "RETURN").in_if(ifname),
        );
        output_appended.push(
            Rule::new(format!("interface {ifname} is not captured (-c)"), "RETURN").out_if(ifname),
        );
    }
    // Virtual interfaces: their inbound is not inbound-captured (it may be outbound-captured
    // below).
    for ifname in &cfg.kube_virt_interfaces {
        prerouting_top_issued.push(
            Rule::new(
                format!("virtual interface {ifname}: inbound is not captured (-k)"),
                "RETURN",
            )
            .in_if(ifname),
        );
    }

    inbound.push(
        Rule::new(
            format!("inbound tunnel port {tunnel} is not captured (-e)"),
            "RETURN",
        )
        .proto("tcp")
        .dport(false, tunnel),
    );
    let redirect = vec![Rule::new(
        format!(
            "outbound capture: redirect to proxy port {} (-p)",
            cfg.proxy_port
        ),
        format!("REDIRECT --to-ports {}", cfg.proxy_port),
    )
    .proto("tcp")];
    let in_redirect = vec![Rule::new(
        format!(
            "inbound capture: redirect to proxy port {} (-z)",
            cfg.inbound_capture_port
        ),
        format!("REDIRECT --to-ports {}", cfg.inbound_capture_port),
    )
    .proto("tcp")];

    match &cfg.inbound {
        InboundCapture::Disabled => {}
        InboundCapture::AllExcept(excluded) => {
            prerouting_appended.push(
                Rule::new(format!("inbound TCP goes through {INBOUND}"), INBOUND).proto("tcp"),
            );
            for p in excluded {
                inbound.push(
                    Rule::new(format!("inbound port {p} is not captured (-d)"), "RETURN")
                        .proto("tcp")
                        .dport(false, *p),
                );
            }
            inbound
                .push(Rule::new("capture all other inbound TCP (-b *)", IN_REDIRECT).proto("tcp"));
        }
        InboundCapture::Only(ports) => {
            prerouting_appended.push(
                Rule::new(format!("inbound TCP goes through {INBOUND}"), INBOUND).proto("tcp"),
            );
            for p in ports {
                inbound.push(
                    Rule::new(format!("capture inbound port {p} (-b)"), IN_REDIRECT)
                        .proto("tcp")
                        .dport(false, *p),
                );
            }
        }
    }

    output_appended.push(Rule::new(format!("outbound goes through {OUTPUT}"), OUTPUT));
    for p in &cfg.outbound_ports_exclude {
        for proto in ["tcp", "udp"] {
            output.push(
                Rule::new(
                    format!("outbound {proto} port {p} is not captured (-o)"),
                    "RETURN",
                )
                .proto(proto)
                .dport(false, *p),
            );
        }
    }
    output.push(
        Rule::new(
            format!(
                "proxy forwarding inbound from {} is not captured",
                family.inbound_passthrough_source().addr()
            ),
            "RETURN",
        )
        .src(false, family.inbound_passthrough_source())
        .out_if("lo"),
    );

    let include_nets: Vec<IpNet> = match &cfg.outbound {
        OutboundCapture::Cidrs(nets) => nets
            .iter()
            .copied()
            .filter(|n| family.contains(n))
            .collect(),
        _ => Vec::new(),
    };
    // When the user asks to capture a loopback range, app→itself over lo must not be returned.
    let include_loopback = include_nets.iter().any(|n| match n.network() {
        IpAddr::V4(a) => a.is_loopback() || n.contains(&IpAddr::V4(Ipv4Addr::LOCALHOST)),
        IpAddr::V6(a) => a.is_loopback() || n.contains(&IpAddr::V6(Ipv6Addr::LOCALHOST)),
    });

    let owners: Vec<(&str, u32)> = cfg
        .proxy_uids
        .iter()
        .map(|u| ("uid", *u))
        .chain(cfg.proxy_gids.iter().map(|g| ("gid", *g)))
        .collect();
    for (kind, id) in owners {
        let with = |r: Rule, neg: bool| {
            if kind == "uid" {
                r.uid(neg, id)
            } else {
                r.gid(neg, id)
            }
        };
        output.push(with(
            Rule::new(
                format!("proxy {kind} {id} calling its own pod IP: capture as inbound"),
                IN_REDIRECT,
            )
            .dst(true, loopback)
            .out_if("lo")
            .proto("tcp")
            .dport(true, tunnel),
            false,
        ));
        if !include_loopback {
            output.push(with(
                Rule::new(
                    format!("app ({kind} not {id}) to itself over lo is not captured"),
                    "RETURN",
                )
                .out_if("lo"),
                true,
            ));
        }
        output.push(with(
            Rule::new(format!("proxy {kind} {id} is not captured"), "RETURN"),
            false,
        ));
    }
    match &cfg.owner_groups {
        OwnerGroups::All => {}
        OwnerGroups::Only(groups) => {
            let mut r = Rule::new(
                format!(
                    "processes outside group {} are not captured (owner groups)",
                    groups.join(",")
                ),
                "RETURN",
            );
            for g in groups {
                r = r.gid(true, g);
            }
            output.push(r);
        }
        OwnerGroups::AllExcept(groups) => {
            for g in groups {
                output.push(
                    Rule::new(
                        format!("group {g} is not captured (owner groups exclude)"),
                        "RETURN",
                    )
                    .gid(false, g),
                );
            }
        }
    }
    output.push(
        Rule::new(
            format!("loopback destination {loopback} is not captured"),
            "RETURN",
        )
        .dst(false, loopback),
    );
    for net in cfg.outbound_exclude.iter().filter(|n| family.contains(n)) {
        output.push(
            Rule::new(format!("destination {net} is not captured (-x)"), "RETURN").dst(false, *net),
        );
    }
    for p in &cfg.outbound_ports_include {
        output.push(
            Rule::new(
                format!("outbound port {p} is always captured (-q)"),
                REDIRECT,
            )
            .proto("tcp")
            .dport(false, *p),
        );
    }
    match &cfg.outbound {
        OutboundCapture::Disabled => {}
        OutboundCapture::All => {
            output.push(Rule::new("capture all other outbound (-i *)", REDIRECT));
            for ifname in &cfg.kube_virt_interfaces {
                prerouting_top_issued.push(
                    Rule::new(
                        format!("virtual interface {ifname}: capture as outbound (-k, -i *)"),
                        REDIRECT,
                    )
                    .in_if(ifname),
                );
            }
        }
        OutboundCapture::Cidrs(_) => {
            for net in &include_nets {
                for ifname in &cfg.kube_virt_interfaces {
                    prerouting_top_issued.push(
                        Rule::new(
                            format!(
                                "virtual interface {ifname}: capture {net} as outbound (-k, -i)"
                            ),
                            REDIRECT,
                        )
                        .dst(false, *net)
                        .in_if(ifname),
                    );
                }
                output.push(
                    Rule::new(format!("capture outbound to {net} (-i)"), REDIRECT).dst(false, *net),
                );
            }
        }
    }

    let mut builtin = Vec::new();
    for (i, r) in prerouting_top_issued.iter().rev().enumerate() {
        builtin.push(BuiltinRule {
            chain: "PREROUTING".into(),
            position: Position::Insert(i + 1),
            spec: r.spec(),
        });
    }
    for r in &prerouting_appended {
        builtin.push(BuiltinRule {
            chain: "PREROUTING".into(),
            position: Position::Append,
            spec: r.spec(),
        });
    }
    for r in &output_appended {
        builtin.push(BuiltinRule {
            chain: "OUTPUT".into(),
            position: Position::Append,
            spec: r.spec(),
        });
    }
    let specs = |rules: &[Rule]| rules.iter().map(Rule::spec).collect::<Vec<_>>();
    Snapshot {
        chains: vec![
            (INBOUND.to_string(), specs(&inbound)),
            (REDIRECT.to_string(), specs(&redirect)),
            (IN_REDIRECT.to_string(), specs(&in_redirect)),
            (OUTPUT.to_string(), specs(&output)),
        ],
        builtin,
    }
}

/// The `iptables-restore --noflush` text that turns `current` (ours, as the kernel holds it now)
/// into `target`, in one `nat` transaction. With `target` empty this is the cleanup text.
pub fn render_transition(current: &Snapshot, target: &Snapshot) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "*{TABLE}");
    // 1. Declare (create or flush) every chain involved: the target's, then stale ones.
    let mut declared: Vec<&str> = Vec::new();
    for (name, _) in target.chains.iter().chain(current.chains.iter()) {
        if !declared.contains(&name.as_str()) {
            declared.push(name);
            let _ = writeln!(out, ":{name} - [0:0]");
        }
    }
    // 2. Remove our current rules from built-in chains, bottom-up per chain so positions of the
    //    remaining ones do not matter (we delete by spec anyway).
    for r in current.builtin.iter().rev() {
        let _ = writeln!(out, "-D {} {}", r.chain, r.spec);
    }
    // 3. Fill our chains.
    for (name, rules) in &target.chains {
        for spec in rules {
            let _ = writeln!(out, "-A {name} {spec}");
        }
    }
    // 4. Our rules in built-in chains: insertions in ascending position, then appends.
    let mut inserts: Vec<(usize, &BuiltinRule)> = target
        .builtin
        .iter()
        .filter_map(|r| match r.position {
            Position::Insert(i) => Some((i, r)),
            Position::Append => None,
        })
        .collect();
    inserts.sort_by_key(|(i, _)| *i);
    for (i, r) in inserts {
        let _ = writeln!(out, "-I {} {} {}", r.chain, i, r.spec);
    }
    for r in target
        .builtin
        .iter()
        .filter(|r| r.position == Position::Append)
    {
        let _ = writeln!(out, "-A {} {}", r.chain, r.spec);
    }
    // 5. Delete our chains the target does not have (now flushed and unreferenced).
    for (name, _) in &current.chains {
        if !target.chains.iter().any(|(t, _)| t == name) {
            let _ = writeln!(out, "-X {name}");
        }
    }
    let _ = writeln!(out, "COMMIT");
    out
}

/// The cleanup text: removes everything of ours in `current` and nothing else.
///
/// Our four chains are always declared and removed (declaring creates a missing chain, so `-X`
/// never fails for a chain that is absent), which makes cleanup idempotent.
pub fn render_cleanup(current: &Snapshot) -> String {
    let mut cur = current.clone();
    for name in CHAINS {
        if !cur.chains.iter().any(|(c, _)| c == name) {
            cur.chains.push((name.to_string(), Vec::new()));
        }
    }
    render_transition(&cur, &Snapshot::default())
}

/// The apply text for one family given what the kernel holds now.
pub fn render_apply(cfg: &CaptureConfig, family: Family, current: &Snapshot) -> String {
    render_transition(current, &plan(cfg, family))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_save_finds_ours_and_positions() {
        let save = "\
# Generated by iptables-save
*nat
:PREROUTING ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:REMORA_INBOUND - [0:0]
:KUBE-X - [0:0]
-A PREROUTING -j KUBE-X
-A PREROUTING -p tcp -m comment --comment \"remora: inbound\" -j REMORA_INBOUND
-A OUTPUT -j REMORA_OUTPUT
-A OUTPUT -m comment --comment \"someone else\" -j RETURN
-A REMORA_INBOUND -p tcp -m comment --comment \"remora: x\" -j RETURN
-A KUBE-X -j RETURN
-A KUBE-X -j REMORA_INBOUND
COMMIT
*filter
:REMORA_OTHER - [0:0]
-A INPUT -j REMORA_OTHER
COMMIT
";
        let s = parse_save(save);
        assert_eq!(
            s.chains,
            vec![(
                "REMORA_INBOUND".to_string(),
                vec!["-p tcp -m comment --comment \"remora: x\" -j RETURN".to_string()]
            )]
        );
        assert_eq!(
            s.builtin,
            vec![
                BuiltinRule {
                    chain: "PREROUTING".into(),
                    position: Position::Insert(2),
                    spec: "-p tcp -m comment --comment \"remora: inbound\" -j REMORA_INBOUND"
                        .into()
                },
                BuiltinRule {
                    chain: "OUTPUT".into(),
                    position: Position::Insert(1),
                    spec: "-j REMORA_OUTPUT".into()
                },
            ]
        );
    }

    #[test]
    fn transition_deletes_current_builtin_rules_and_drops_stale_chains() {
        let current = Snapshot {
            chains: vec![
                ("REMORA_INBOUND".into(), vec!["-j RETURN".into()]),
                ("REMORA_OLD".into(), vec![]),
            ],
            builtin: vec![BuiltinRule {
                chain: "OUTPUT".into(),
                position: Position::Insert(3),
                spec: "-j REMORA_OUTPUT".into(),
            }],
        };
        let target = Snapshot {
            chains: vec![("REMORA_INBOUND".into(), vec!["-p tcp -j RETURN".into()])],
            builtin: vec![
                BuiltinRule {
                    chain: "PREROUTING".into(),
                    position: Position::Append,
                    spec: "-j REMORA_INBOUND".into(),
                },
                BuiltinRule {
                    chain: "PREROUTING".into(),
                    position: Position::Insert(1),
                    spec: "-i eth1 -j RETURN".into(),
                },
            ],
        };
        assert_eq!(
            render_transition(&current, &target),
            "*nat\n:REMORA_INBOUND - [0:0]\n:REMORA_OLD - [0:0]\n-D OUTPUT -j REMORA_OUTPUT\n\
             -A REMORA_INBOUND -p tcp -j RETURN\n-I PREROUTING 1 -i eth1 -j RETURN\n\
             -A PREROUTING -j REMORA_INBOUND\n-X REMORA_OLD\nCOMMIT\n"
        );
    }

    #[test]
    fn rollback_puts_builtin_rules_back_at_their_positions() {
        // Before: our jump was 3rd in OUTPUT (after two foreign rules); now a newer plan is
        // installed. Going back re-inserts it at 3 after removing the current one.
        let before = Snapshot {
            chains: vec![("REMORA_OUTPUT".into(), vec!["-j RETURN".into()])],
            builtin: vec![BuiltinRule {
                chain: "OUTPUT".into(),
                position: Position::Insert(3),
                spec: "-m comment --comment \"remora: old\" -j REMORA_OUTPUT".into(),
            }],
        };
        let now = Snapshot {
            chains: vec![
                ("REMORA_OUTPUT".into(), vec!["-p tcp -j RETURN".into()]),
                ("REMORA_INBOUND".into(), vec![]),
            ],
            builtin: vec![BuiltinRule {
                chain: "OUTPUT".into(),
                position: Position::Insert(3),
                spec: "-m comment --comment \"remora: new\" -j REMORA_OUTPUT".into(),
            }],
        };
        assert_eq!(
            render_transition(&now, &before),
            "*nat\n:REMORA_OUTPUT - [0:0]\n:REMORA_INBOUND - [0:0]\n\
             -D OUTPUT -m comment --comment \"remora: new\" -j REMORA_OUTPUT\n\
             -A REMORA_OUTPUT -j RETURN\n\
             -I OUTPUT 3 -m comment --comment \"remora: old\" -j REMORA_OUTPUT\n\
             -X REMORA_INBOUND\nCOMMIT\n"
        );
    }

    #[test]
    fn planned_text_reparses_to_the_plan() {
        // What the plan says it will install, printed as iptables-save would, parses back to
        // the same chains (the save-form round trip the dry-run comparison relies on).
        let cfg = CaptureConfig::istio_default();
        for fam in [Family::V4, Family::V6] {
            let p = plan(&cfg, fam);
            let mut save = String::from("*nat\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n");
            for l in p.save_lines() {
                save.push_str(&l);
                save.push('\n');
            }
            save.push_str("COMMIT\n");
            let back = parse_save(&save);
            let mut want = p.chains.clone();
            want.sort();
            let mut got = back.chains.clone();
            got.sort();
            assert_eq!(got, want);
            assert_eq!(back.builtin.len(), p.builtin.len());
            assert!(back.builtin.iter().all(|r| is_our_rule(&r.spec)));
        }
    }

    #[test]
    fn every_rule_is_commented_and_save_ordered() {
        let mut cfg = CaptureConfig::istio_default();
        cfg.kube_virt_interfaces = vec!["eth1".into()];
        cfg.exclude_interfaces = vec!["eth9".into()];
        cfg.outbound_ports_exclude = vec![53];
        for fam in [Family::V4, Family::V6] {
            for line in plan(&cfg, fam).save_lines() {
                if line.starts_with(':') {
                    continue;
                }
                assert!(line.contains("-m comment --comment \"remora: "), "{line}");
                let c = line.find("-m comment").unwrap_or(0);
                let j = line.find(" -j ").unwrap_or(0);
                assert!(c < j, "comment must precede the target: {line}");
            }
        }
    }

    #[test]
    fn long_comments_are_clipped_to_the_kernel_limit() {
        let mut cfg = CaptureConfig::istio_default();
        let groups: Vec<String> = (0..40).map(|i| format!("group{i:03}")).collect();
        cfg.owner_groups = crate::flags::OwnerGroups::Only(groups);
        let lines = plan(&cfg, Family::V4).save_lines();
        let rule = lines
            .iter()
            .find(|l| l.contains("processes outside group"))
            .expect("owner-group rule");
        let comment = rule
            .split("--comment \"")
            .nth(1)
            .and_then(|r| r.split('"').next())
            .expect("comment");
        assert!(comment.len() <= 255, "{} bytes", comment.len());
        assert!(comment.ends_with("..."));
        assert!(
            rule.contains("--gid-owner group039"),
            "all groups still matched"
        );
        assert_eq!(clip_comment("short"), "short");
    }

    #[test]
    fn families_split_cidrs() {
        let mut cfg = CaptureConfig::istio_default();
        cfg.outbound = OutboundCapture::Cidrs(vec![
            "10.0.0.0/8".parse().unwrap(),
            "fd00::/8".parse().unwrap(),
        ]);
        cfg.outbound_exclude = vec![
            "10.1.0.0/16".parse().unwrap(),
            "fd00:1::/32".parse().unwrap(),
        ];
        let v4 = plan(&cfg, Family::V4).save_lines().join("\n");
        let v6 = plan(&cfg, Family::V6).save_lines().join("\n");
        assert!(v4.contains("-d 10.0.0.0/8") && v4.contains("-d 10.1.0.0/16"));
        assert!(!v4.contains("fd00"));
        assert!(v6.contains("-d fd00::/8") && v6.contains("-d fd00:1::/32"));
        assert!(!v6.contains("10.0.0.0"));
        assert!(v6.contains("-s ::6/128") && v6.contains("! -d ::1/128"));
    }
}
