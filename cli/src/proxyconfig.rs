//! `remora proxy-config` (pure part): what one proxy has loaded, read from its `/config_dump`
//! (`proxy/src/admin.rs`), in the four views `istioctl proxy-config` users know:
//!
//! - **routes**: per VirtualService `http`/`tcp`/`tls` route, its match, destinations with weights
//!   and subsets, and the route policy (rewrite, redirect, fault, timeout, retries, mirrors); then
//!   what the proxy does for hosts without a VirtualService (ServiceEntry endpoints, passthrough,
//!   or the Sidecar's `REGISTRY_ONLY` 502).
//! - **clusters**: every host|port|subset the rules name, with the DestinationRule that applies
//!   and its traffic policy as the proxy interprets it (`remora_model::policy::traffic::resolve`,
//!   the proxy's own precedence of top-level, port-level and subset settings).
//! - **endpoints**: ServiceEntry endpoints (STATIC, and DNS names with the answers the proxy got),
//!   their labels and the subsets they belong to, ejection state from the outlier detector, and
//!   the endpoints Kubernetes discovery indexed (address, pod, labels, subsets), as far as the
//!   proxy's dump lists them (it caps endpoints per host and in all, and says what it left out;
//!   older proxies list host names only).
//! - **listeners**: the capture listeners (15001 outbound, 15006 inbound) and, per outbound port
//!   the rules declare, the protocol the proxy uses instead of sniffing.
//!
//! Nothing here is invented: a view shows what the dump holds and says when it holds no more.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;
use serde_json::Value;

use remora_model::dump::{
    ConfigDump, DestinationDump, EndpointDump, HostDump, IndexDump, PoolStats, PortDump,
};
use remora_model::policy::traffic;
use remora_model::rules::host::HostIndex;
use remora_model::rules::model::{
    Destination, DestinationRule, Headers, HttpMatch, HttpRoute, L4Match, Meta, Resolution,
    ServiceEntry, StringMatch, VirtualService, WeightedDestination,
};

use super::table;
use super::text::{self, Match};

/// Which view(s) to show.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum View {
    Routes,
    Clusters,
    Endpoints,
    Listeners,
    /// The workload certificate and the trusted roots (`istioctl proxy-config secret`).
    Secret,
    /// The AuthorizationPolicies, RequestAuthentications and PeerAuthentications the proxy
    /// enforces and, for a request given by flags, the decision (`istioctl x authz check`);
    /// not part of `all`.
    Authz,
    All,
}

impl View {
    fn shows(self, v: View) -> bool {
        (self == View::All && v != View::Authz) || self == v
    }
}

/// istioctl-style filters. `fqdn` is a substring of the host; `port` and `subset` are exact.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Filters {
    pub fqdn: Option<String>,
    pub port: Option<u16>,
    pub subset: Option<String>,
    /// Routes: the VirtualService name (`name` or `namespace/name`) or the route's name.
    pub name: Option<String>,
    /// Authz: the request to decide (`authz::check_request`).
    pub request: Option<super::authz::CheckRequest>,
}

impl Filters {
    /// Rejects filters the view cannot apply and empty values (one line naming the flag).
    pub fn check(&self, view: View) -> Result<(), String> {
        for (flag, v) in [
            ("--fqdn", &self.fqdn),
            ("--subset", &self.subset),
            ("--name", &self.name),
        ] {
            if v.as_deref().is_some_and(|s| s.trim().is_empty()) {
                return Err(format!("{flag}: invalid value \"\": must not be empty"));
            }
        }
        let name = |v: View| format!("{v:?}").to_ascii_lowercase();
        if self.subset.is_some() && !matches!(view, View::Clusters | View::Endpoints | View::All) {
            return Err(format!(
                "--subset: not a filter of the {} view (it applies to clusters and endpoints)",
                name(view)
            ));
        }
        if view == View::Authz {
            for (flag, set) in [
                ("--fqdn", self.fqdn.is_some()),
                ("--subset", self.subset.is_some()),
                ("--name", self.name.is_some()),
            ] {
                if set {
                    return Err(format!(
                        "{flag}: not a filter of the authz view (it takes --port and the request flags)"
                    ));
                }
            }
        }
        if self.name.is_some() && !matches!(view, View::Routes | View::All) {
            return Err(format!(
                "--name: not a filter of the {} view (it applies to routes; use --fqdn for hosts)",
                name(view)
            ));
        }
        Ok(())
    }

    fn host_ok(&self, host: &str) -> bool {
        self.fqdn.as_deref().is_none_or(|f| host.contains(f))
    }

    fn hosts_ok(&self, hosts: &[String]) -> bool {
        self.fqdn.is_none() || hosts.iter().any(|h| self.host_ok(h))
    }

    fn port_ok(&self, port: Option<u16>) -> bool {
        match (self.port, port) {
            (None, _) => true,
            // A row for any port (port unknown) applies to the asked port as well.
            (Some(_), None) => true,
            (Some(a), Some(b)) => a == b,
        }
    }

    fn subset_ok(&self, subset: Option<&str>) -> bool {
        self.subset.as_deref().is_none_or(|s| subset == Some(s))
    }
}

/// Where the dump came from, for headings and JSON.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ProxyInfo {
    /// `namespace/name` of the pod, or the admin address / file read.
    pub target: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    pub generation: u64,
    pub hash: String,
    pub source: String,
    /// The workload the proxy says it serves (`workload` in the dump).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workload: Option<String>,
}

/// One routing rule, or the implicit behaviour where there is none.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RouteRow {
    /// `namespace/name` of the VirtualService; `None` for the implicit rows.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub virtual_service: Option<String>,
    pub hosts: Vec<String>,
    /// `http`, `tcp`, `tls`, or `implicit`.
    pub kind: String,
    /// The route's `name`, else its field path (`spec.http[1]`); `-` for implicit rows.
    pub route: String,
    #[serde(rename = "match")]
    pub matches: String,
    pub destination: String,
    pub policy: String,
}

/// One host|port|subset the proxy may send to, with the policy it applies.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ClusterRow {
    pub host: String,
    /// `None`: any port (no rule names one).
    pub port: Option<u16>,
    pub subset: Option<String>,
    /// What names it: `ServiceEntry ns/name`, `DestinationRule ns/name`, `VirtualService ns/name`,
    /// `discovery`, `in use` (the proxy holds state for it).
    pub sources: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub destination_rule: Option<String>,
    pub load_balancer: String,
    pub connection_pool: String,
    pub outlier_detection: String,
    pub tls: String,
    /// The policy the proxy could not interpret (it then uses the defaults).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy_error: Option<String>,
    /// Live state, when the proxy has sent traffic there (`policies.destinations`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connection_pool_stats: Option<PoolStats>,
    /// What discovery holds for this host|port|subset: `port http -> 9080: 2 ready endpoints`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub discovery: Option<String>,
}

/// One endpoint (or, where the dump holds no address, the host and why).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct EndpointRow {
    pub host: String,
    pub port: Option<u16>,
    /// `ip:port`, `ip`, or `-` when the dump has no address.
    pub address: String,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// DestinationRule subsets whose labels the endpoint carries.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub subsets: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub weight: Option<u32>,
    /// `HEALTHY` / `EJECTED ...` from the outlier detector, `-` when it holds nothing.
    pub health: String,
    pub source: String,
    /// The Pod behind a discovered endpoint.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
}

/// A capture listener.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ListenerRow {
    pub name: String,
    pub address: String,
    pub bound: bool,
    pub handles: String,
    pub destination: String,
}

/// An outbound port whose protocol the rules declare (other ports are sniffed).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PortRow {
    pub port: u16,
    pub protocol: String,
    pub declared_by: Vec<String>,
}

/// The listeners view: capture listeners, declared ports and how the rest is detected.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Listeners {
    pub listeners: Vec<ListenerRow>,
    pub ports: Vec<PortRow>,
    pub sniff_timeout_ms: Option<u64>,
}

/// Everything the command prints (each view only when asked).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ProxyConfig {
    pub proxy: ProxyInfo,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub routes: Option<Vec<RouteRow>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub clusters: Option<Vec<ClusterRow>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoints: Option<Vec<EndpointRow>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listeners: Option<Listeners>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<super::secret::SecretView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub authz: Option<super::authz::AuthzView>,
    /// Resources the proxy read but does not apply, and other remarks (one line each).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

// ------------------------------------------------------------------------------ reading

fn key_of(m: &Meta) -> String {
    m.key()
}

/// Istio's name for a ServiceEntry `resolution` (as the dump writes it).
fn resolution_text(r: Resolution) -> &'static str {
    match r {
        Resolution::None => "NONE",
        Resolution::Static => "STATIC",
        Resolution::Dns => "DNS",
        Resolution::DnsRoundRobin => "DNS_ROUND_ROBIN",
    }
}

/// A duration as the dump writes it (`1.5s`).
fn secs(d: std::time::Duration) -> String {
    format!("{}s", d.as_secs_f64())
}

/// The identity of the proxy that served `dump`.
pub fn proxy_info(dump: &ConfigDump, target: &str) -> ProxyInfo {
    let w = &dump.workload;
    ProxyInfo {
        target: target.to_string(),
        version: Some(dump.version.clone()),
        generation: dump.generation,
        hash: dump.hash.clone(),
        source: dump.source.clone(),
        workload: (!w.name.is_empty()).then(|| format!("{}/{}", w.namespace, w.name)),
    }
}

/// The parts of the rules the views share.
struct Rules<'a> {
    dump: &'a ConfigDump,
    vss: &'a [VirtualService],
    ses: &'a [ServiceEntry],
    drs: &'a [DestinationRule],
    dr_index: HostIndex,
    discovery_hosts: &'a [String],
    /// The discovery index as the dump lists it (`None`: discovery off, or host names only).
    discovered: Option<&'a IndexDump>,
}

/// Ready endpoints a port holds that the dump does not list.
fn omitted(p: &PortDump) -> u64 {
    (p.endpoint_count as u64).saturating_sub(p.endpoints.len() as u64)
}

fn disc_host<'a>(d: &'a IndexDump, host: &str) -> Option<&'a HostDump> {
    d.hosts.iter().find(|h| h.host == host)
}

/// `the proxy's dump lists at most 100 endpoints per host and 5000 in all`.
fn caps(d: &IndexDump) -> String {
    format!(
        "the proxy's dump lists at most {} endpoints per host and {} in all",
        d.limits.endpoints_per_host, d.limits.endpoints_total
    )
}

fn ep_labels(e: &EndpointDump) -> BTreeMap<String, String> {
    e.labels.clone().unwrap_or_default()
}

impl<'a> Rules<'a> {
    fn new(dump: &'a ConfigDump) -> Rules<'a> {
        let drs = dump.rules.destination_rules.as_slice();
        let dr_index = HostIndex::build(drs.iter().enumerate().map(|(i, d)| (i, d.host.as_str())));
        Rules {
            dump,
            vss: &dump.rules.virtual_services,
            ses: &dump.rules.service_entries,
            drs,
            dr_index,
            discovery_hosts: &dump.discovery.hosts,
            discovered: dump.discovery.index.as_ref(),
        }
    }

    fn dr_for(&self, host: &str) -> Option<&'a DestinationRule> {
        self.dr_index
            .best(&[host.to_string()])
            .and_then(|i| self.drs.get(i))
    }
}

// ------------------------------------------------------------------------------ routes

/// Header and query matches, by name (the order the dump's JSON object had).
fn kv_matches(v: &[(String, StringMatch)], label: &str, neg: bool) -> Vec<String> {
    let mut v: Vec<&(String, StringMatch)> = v.iter().collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v.into_iter()
        .map(|(k, m)| {
            let op = if neg { "!=" } else { "=" };
            match Match::from(m) {
                Match::Present if neg => format!("{label} {k} absent"),
                Match::Present => format!("{label} {k} present"),
                val => format!("{label} {k}{op}{val}"),
            }
        })
        .collect()
}

fn map_text(m: &BTreeMap<String, String>) -> String {
    m.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// One `HTTPMatchRequest` as `uri /api* AND header end-user=jason`.
fn http_match(m: &HttpMatch) -> String {
    let mut parts = Vec::new();
    if let Some(n) = &m.name {
        parts.push(format!("[{n}]"));
    }
    for (f, x) in [
        ("uri", &m.uri),
        ("scheme", &m.scheme),
        ("method", &m.method),
        ("authority", &m.authority),
    ] {
        if let Some(x) = x {
            parts.push(format!("{f} {}", Match::from(x)));
        }
    }
    parts.extend(kv_matches(&m.headers, "header", false));
    parts.extend(kv_matches(&m.without_headers, "header", true));
    parts.extend(kv_matches(&m.query_params, "query", false));
    if let Some(p) = m.port {
        parts.push(format!("port {p}"));
    }
    if !m.source_labels.is_empty() {
        parts.push(format!("sourceLabels {}", map_text(&m.source_labels)));
    }
    if let Some(n) = &m.source_namespace {
        parts.push(format!("sourceNamespace {n}"));
    }
    if !m.gateways.is_empty() {
        parts.push(format!("gateways {}", m.gateways.join(",")));
    }
    if m.ignore_uri_case {
        parts.push("(uri ignores case)".into());
    }
    if parts.is_empty() {
        "*".into()
    } else {
        parts.join(" AND ")
    }
}

fn l4_match(m: &L4Match) -> String {
    let mut parts = Vec::new();
    if !m.sni_hosts.is_empty() {
        parts.push(format!("sni {}", m.sni_hosts.join(",")));
    }
    if let Some(p) = m.port {
        parts.push(format!("port {p}"));
    }
    if !m.destination_subnets.is_empty() {
        let nets: Vec<String> = m
            .destination_subnets
            .iter()
            .map(|n| n.to_string())
            .collect();
        parts.push(format!("destinationSubnets {}", nets.join(",")));
    }
    if !m.source_labels.is_empty() {
        parts.push(format!("sourceLabels {}", map_text(&m.source_labels)));
    }
    if let Some(n) = &m.source_namespace {
        parts.push(format!("sourceNamespace {n}"));
    }
    if parts.is_empty() {
        "*".into()
    } else {
        parts.join(" AND ")
    }
}

fn matches_text<M>(ms: &[M], one: fn(&M) -> String) -> String {
    if ms.is_empty() {
        "*".into()
    } else {
        ms.iter().map(one).collect::<Vec<_>>().join(" OR ")
    }
}

/// `host|subset:port` as one destination cell part.
fn destination_text(d: &Destination) -> String {
    let mut t = d.host.clone();
    if let Some(p) = d.port {
        t.push_str(&format!(":{p}"));
    }
    if let Some(sub) = &d.subset {
        t.push_str(&format!("|{sub}"));
    }
    t
}

fn weighted(ds: &[WeightedDestination]) -> String {
    let weights_given = ds.iter().any(|d| d.weight.is_some());
    ds.iter()
        .map(|d| {
            let mut t = destination_text(&d.destination);
            match d.weight {
                Some(w) => t.push_str(&format!(" {w}%")),
                None if ds.len() == 1 && !weights_given => {}
                None => t.push_str(" 0%"),
            }
            t
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn pct(p: f64) -> String {
    if p >= 100.0 {
        String::new()
    } else {
        format!(" {p}%")
    }
}

/// Header operations, as the dump's JSON counts them (`set` and `add` by header name).
fn header_ops_count(h: &Headers) -> usize {
    let distinct = |ops: &[(String, String)]| {
        ops.iter()
            .map(|(k, _)| k.as_str())
            .collect::<BTreeSet<_>>()
            .len()
    };
    [&h.request, &h.response]
        .iter()
        .map(|o| distinct(&o.set) + distinct(&o.add) + o.remove.len())
        .sum()
}

/// The route policy in one cell: rewrite, fault, timeout, retries, mirrors, header operations.
fn policy_text(r: &HttpRoute) -> String {
    let mut parts = Vec::new();
    if let Some(rw) = &r.rewrite {
        let mut t = Vec::new();
        if let Some(u) = &rw.uri {
            t.push(format!("uri={u}"));
        }
        if let Some(a) = &rw.authority {
            t.push(format!("authority={a}"));
        }
        if t.is_empty() {
            // uriRegexRewrite is applied but not part of the dump.
            t.push("uriRegexRewrite".into());
        }
        parts.push(format!("rewrite {}", t.join(" ")));
    }
    let p = &r.policy;
    if let Some(f) = &p.fault {
        if let Some(d) = &f.delay {
            parts.push(format!(
                "fault delay {}{}",
                secs(d.fixed_delay),
                pct(d.percentage)
            ));
        }
        if let Some(a) = &f.abort {
            let what = match (a.http_status, &a.grpc_status) {
                (Some(c), _) => c.to_string(),
                (None, Some(g)) => format!("grpc {g}"),
                _ => "?".into(),
            };
            parts.push(format!("fault abort {what}{}", pct(a.percentage)));
        }
    }
    if let Some(t) = p.timeout {
        parts.push(format!("timeout {}", secs(t)));
    }
    if let Some(rt) = &p.retries {
        let mut t = if rt.attempts == 0 {
            "retries off".to_string()
        } else {
            format!("retries {}", rt.attempts)
        };
        if rt.attempts > 0 {
            if let Some(pt) = rt.per_try_timeout {
                t.push_str(&format!(" x {}", secs(pt)));
            }
            if !rt.retry_on.is_empty() {
                t.push_str(&format!(" on {}", rt.retry_on.join(",")));
            }
        }
        parts.push(t);
    }
    for m in &p.mirrors {
        let mut t = format!("mirror {}", m.host);
        if let Some(sub) = &m.subset {
            t.push_str(&format!("|{sub}"));
        }
        t.push_str(&pct(m.percentage));
        parts.push(t);
    }
    let n = header_ops_count(&r.headers)
        + r.route
            .iter()
            .map(|d| header_ops_count(&d.headers))
            .sum::<usize>();
    if n > 0 {
        parts.push(format!("{n} header ops"));
    }
    if parts.is_empty() {
        "-".into()
    } else {
        parts.join("; ")
    }
}

fn http_destination(r: &HttpRoute) -> String {
    if let Some(rd) = &r.redirect {
        let mut t = format!("redirect {}", rd.code);
        if let Some(x) = &rd.scheme {
            t.push_str(&format!(" scheme={x}"));
        }
        if let Some(x) = &rd.authority {
            t.push_str(&format!(" authority={x}"));
        }
        if let Some(x) = rd.port {
            t.push_str(&format!(" port={x}"));
        }
        if rd.derive_port_from_request {
            t.push_str(" port=(request's)");
        }
        if let Some(x) = &rd.uri {
            t.push_str(&format!(" uri={x}"));
        }
        return t;
    }
    if let Some(dr) = &r.direct_response {
        return format!("direct response {}", dr.status);
    }
    let w = weighted(&r.route);
    if w.is_empty() {
        "(no destination: 503)".into()
    } else {
        w
    }
}

/// The `RateLimit` rules (remora's kind, `policies.rate_limits`) for which `applies(host,
/// route)` holds, as `ratelimit 100/minute burst 10 (ns/name)`, `; `-separated.
fn rate_limits(dump: &ConfigDump, applies: impl Fn(&str, Option<&str>) -> bool) -> String {
    dump.policies
        .rate_limits
        .iter()
        .filter(|rl| applies(&rl.host, rl.route.as_deref()))
        .map(|rl| {
            format!(
                "ratelimit {}/{} burst {} ({})",
                rl.requests_per_unit, rl.unit_name, rl.burst, rl.key
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// The ports a route's destinations name.
fn dest_ports(route: &[WeightedDestination]) -> Vec<u16> {
    route.iter().filter_map(|d| d.destination.port).collect()
}

/// A match block without conditions (at most a name) takes every request.
fn unconditional(m: &HttpMatch) -> bool {
    // `ignoreUriCase` alone counts as a condition, as it did when this read the dump's JSON.
    m.is_catch_all() && !m.ignore_uri_case
}

fn route_rows(rules: &Rules<'_>, f: &Filters) -> Vec<RouteRow> {
    let mut rows = Vec::new();
    // A gateway routes by the VirtualServices bound to its Gateways, and by nothing else.
    let gateway = rules.dump.gateway.as_ref();
    let vss = gateway.map_or(rules.vss, |g| g.virtual_services.as_slice());
    for vs in vss {
        let key = key_of(&vs.meta);
        let name = vs.meta.name.as_str();
        let hosts = vs.hosts.clone();
        if !f.hosts_ok(&hosts) {
            continue;
        }
        let mesh = vs.applies_to_mesh;
        let mut vs_rows = Vec::new();
        let mut catch_all = false;
        for (i, r) in vs.http.iter().enumerate() {
            let route = r.name.clone().unwrap_or_else(|| format!("spec.http[{i}]"));
            let ms = &r.matches;
            let route_ports: Vec<u16> = ms.iter().filter_map(|m| m.port).collect();
            // No match, or a match block without conditions, takes every request.
            if ms.is_empty() || ms.iter().any(unconditional) {
                catch_all = true;
            }
            let dests: BTreeSet<&str> = r
                .route
                .iter()
                .map(|d| d.destination.host.as_str())
                .collect();
            let mut policy = policy_text(r);
            let limits = rate_limits(rules.dump, |host, rl_route| {
                dests.contains(host)
                    && rl_route.is_none_or(|n| {
                        r.name
                            .as_deref()
                            .is_some_and(|rn| n == rn || n.starts_with(&format!("{rn}.")))
                    })
            });
            if !limits.is_empty() {
                policy = if policy == "-" {
                    limits
                } else {
                    format!("{policy}; {limits}")
                };
            }
            if !mesh && gateway.is_none() {
                policy.push_str(" (gateways only: not applied by sidecars)");
            }
            vs_rows.push((
                route_ports,
                dest_ports(&r.route),
                RouteRow {
                    virtual_service: Some(key.clone()),
                    hosts: hosts.clone(),
                    kind: "http".into(),
                    route,
                    matches: matches_text(&r.matches, http_match),
                    destination: http_destination(r),
                    policy,
                },
            ));
        }
        if !vs_rows.is_empty() && !catch_all {
            vs_rows.push((
                Vec::new(),
                Vec::new(),
                RouteRow {
                    virtual_service: Some(key.clone()),
                    hosts: hosts.clone(),
                    kind: "http".into(),
                    route: "-".into(),
                    matches: "(no route matched)".into(),
                    destination: "404 (flag NR)".into(),
                    policy: "-".into(),
                },
            ));
        }
        for (kind, routes) in [("tcp", &vs.tcp), ("tls", &vs.tls)] {
            for (i, r) in routes.iter().enumerate() {
                let route_ports: Vec<u16> = r.matches.iter().filter_map(|m| m.port).collect();
                vs_rows.push((
                    route_ports,
                    dest_ports(&r.route),
                    RouteRow {
                        virtual_service: Some(key.clone()),
                        hosts: hosts.clone(),
                        kind: kind.into(),
                        route: format!("spec.{kind}[{i}]"),
                        matches: matches_text(&r.matches, l4_match),
                        destination: weighted(&r.route),
                        policy: "-".into(),
                    },
                ));
            }
        }
        for (ports, to_ports, row) in vs_rows {
            if let Some(n) = &f.name {
                let ok = n == name || *n == key || *n == row.route;
                if !ok {
                    continue;
                }
            }
            if let Some(p) = f.port {
                // A route is kept when it matches any port or names this one (match or destination).
                if !(ports.is_empty() || ports.contains(&p) || to_ports.contains(&p)) {
                    continue;
                }
            }
            rows.push(row);
        }
    }
    if f.name.is_some() || gateway.is_some() {
        return rows;
    }
    // Hosts without a VirtualService: ServiceEntries route to their endpoints.
    let with_vs: BTreeSet<&String> = rules
        .vss
        .iter()
        .filter(|v| !v.http.is_empty())
        .flat_map(|v| v.hosts.iter())
        .collect();
    for se in rules.ses {
        let hosts: Vec<String> = se
            .hosts
            .iter()
            .filter(|h| !with_vs.contains(h))
            .cloned()
            .collect();
        if hosts.is_empty() || !f.hosts_ok(&hosts) {
            continue;
        }
        let ports: Vec<u16> = se.ports.iter().map(|p| p.number).collect();
        if let Some(p) = f.port {
            if !ports.is_empty() && !ports.contains(&p) {
                continue;
            }
        }
        let resolution = resolution_text(se.resolution);
        let dest = if se.resolution == Resolution::None && se.endpoints.is_empty() {
            "original destination (resolution NONE)".to_string()
        } else {
            format!(
                "ServiceEntry {} endpoints ({resolution}); DestinationRule applies",
                key_of(&se.meta)
            )
        };
        let limits = rate_limits(rules.dump, |h, route| {
            route.is_none() && hosts.iter().any(|x| x == h)
        });
        rows.push(RouteRow {
            virtual_service: None,
            hosts,
            kind: "implicit".into(),
            route: if dest.contains("DestinationRule applies") {
                "(default)".into()
            } else {
                "-".into()
            },
            matches: if ports.is_empty() {
                "any port".into()
            } else {
                format!(
                    "port {}",
                    ports
                        .iter()
                        .map(u16::to_string)
                        .collect::<Vec<_>>()
                        .join(",")
                )
            },
            destination: dest,
            policy: if limits.is_empty() {
                "-".into()
            } else {
                limits
            },
        });
    }
    if f.fqdn.is_none() {
        let sidecar = rules.dump.rules.sidecar.as_ref();
        let domain = rules.dump.rules.cluster_domain.as_str();
        let implicit = |hosts: Vec<String>, matches: &str, destination: String| RouteRow {
            virtual_service: None,
            hosts,
            kind: "implicit".into(),
            route: if destination.contains("DestinationRule applies") {
                "(default)".into()
            } else {
                "-".into()
            },
            matches: matches.into(),
            destination,
            policy: "-".into(),
        };
        let scope = match sidecar {
            Some(sc) => format!(" (hosts under Sidecar {}'s egress)", key_of(&sc.meta)),
            None => String::new(),
        };
        rows.push(implicit(
            vec![format!("*.svc.{domain}")],
            "a Service without VirtualService",
            format!("the Service's endpoints (discovery), else the original destination; DestinationRule applies{scope}"),
        ));
        match sidecar {
            Some(sc) if sc.registry_only => {
                rows.push(implicit(
                    vec!["(IP addresses)".into()],
                    "any other request",
                    "original destination (passthrough)".into(),
                ));
                rows.push(implicit(
                    vec!["*".into()],
                    "any other host",
                    format!(
                        "502 (Sidecar {} outboundTrafficPolicy REGISTRY_ONLY)",
                        key_of(&sc.meta)
                    ),
                ));
            }
            _ => rows.push(implicit(
                vec!["*".into()],
                "any other host or IP",
                "original destination (passthrough, ALLOW_ANY)".into(),
            )),
        }
    }
    rows
}
// ------------------------------------------------------------------------------ clusters

fn limit(v: u64) -> Option<u64> {
    (v != remora_model::policy::limits::UNLIMITED).then_some(v)
}

fn policy_cells(tp: &traffic::TrafficPolicy, raw: &Value) -> (String, String, String, String) {
    let lb = match raw.get("loadBalancer") {
        Some(_) => text::lb(&tp.load_balancer),
        None => format!("{} (default)", text::lb(&tp.load_balancer)),
    };
    let c = &tp.connection_pool;
    let mut pool = Vec::new();
    if let Some(v) = limit(c.max_connections) {
        pool.push(format!("maxConnections {v}"));
    }
    if let Some(v) = limit(c.http1_max_pending_requests) {
        pool.push(format!("http1MaxPending {v}"));
    }
    if let Some(v) = limit(c.http2_max_requests) {
        pool.push(format!("http2MaxRequests {v}"));
    }
    if c.max_requests_per_connection != 0 {
        pool.push(format!(
            "maxRequestsPerConnection {}",
            c.max_requests_per_connection
        ));
    }
    if let Some(v) = limit(c.max_retries) {
        pool.push(format!("maxRetries {v}"));
    }
    if c.connect_timeout != std::time::Duration::from_secs(10) {
        pool.push(format!("connectTimeout {}", secs(c.connect_timeout)));
    }
    if let Some(d) = c.idle_timeout {
        pool.push(format!("idleTimeout {}", secs(d)));
    }
    if c.tcp_keepalive.is_some() {
        pool.push("tcpKeepalive".into());
    }
    let pool = if pool.is_empty() {
        "-".to_string()
    } else {
        pool.join(", ")
    };
    let outlier = match &tp.outlier_detection {
        None => "-".to_string(),
        Some(o) => {
            let mut t = Vec::new();
            if let Some(n) = o.consecutive_5xx {
                t.push(format!("5xx x{n}"));
            }
            if let Some(n) = o.consecutive_gateway {
                t.push(format!("gateway errors x{n}"));
            }
            t.push(format!("interval {}", secs(o.interval)));
            t.push(format!("eject {}", secs(o.base_ejection_time)));
            t.push(format!("max {}%", o.max_ejection_percent));
            t.join(", ")
        }
    };
    // The proxy's own summary of the setting it acts on (SIMPLE, MUTUAL with its files,
    // ISTIO_MUTUAL); `-` without a setting (then automatic mTLS to endpoints with a sidecar).
    let tls = if raw.get("tls").is_none() {
        "-".to_string()
    } else {
        tp.tls_settings.summary()
    };
    (lb, pool, outlier, tls)
}

fn cluster_rows(rules: &Rules<'_>, f: &Filters) -> Vec<ClusterRow> {
    type Key = (String, Option<u16>, Option<String>);
    let mut keys: BTreeMap<Key, BTreeSet<String>> = BTreeMap::new();
    let mut add = |h: &str, p: Option<u16>, sub: Option<&str>, src: String| {
        keys.entry((h.to_string(), p, sub.map(str::to_string)))
            .or_default()
            .insert(src);
    };
    // The ports known for each host.
    let mut ports: BTreeMap<String, BTreeSet<u16>> = BTreeMap::new();
    for se in rules.ses {
        let src = format!("ServiceEntry {}", key_of(&se.meta));
        for h in &se.hosts {
            for p in &se.ports {
                ports.entry(h.clone()).or_default().insert(p.number);
                add(h, Some(p.number), None, src.clone());
            }
        }
    }
    let mut dests: Vec<(String, Option<u16>, Option<String>, String)> = Vec::new();
    for vs in rules.vss {
        let src = format!("VirtualService {}", key_of(&vs.meta));
        let routes = vs
            .http
            .iter()
            .map(|r| &r.route)
            .chain(vs.tcp.iter().chain(&vs.tls).map(|r| &r.route));
        for route in routes {
            for d in route {
                let d = &d.destination;
                dests.push((d.host.clone(), d.port, d.subset.clone(), src.clone()));
            }
        }
        for m in vs.http.iter().flat_map(|r| &r.policy.mirrors) {
            dests.push((
                m.host.clone(),
                m.port,
                m.subset.clone(),
                format!("{src} (mirror)"),
            ));
        }
    }
    for (h, p, _, _) in &dests {
        if let Some(p) = p {
            ports.entry(h.clone()).or_default().insert(*p);
        }
    }
    for (h, p, sub, src) in &dests {
        let p = p.or_else(|| {
            // The port the client addresses; a single known port is the usual one.
            ports
                .get(h)
                .filter(|s| s.len() == 1)
                .and_then(|s| s.first().copied())
        });
        add(h, p, sub.as_deref(), src.clone());
    }
    // The Service ports discovery holds.
    for h in rules.discovered.iter().flat_map(|d| d.hosts.iter()) {
        for p in &h.ports {
            ports.entry(h.host.clone()).or_default().insert(p.port);
            add(&h.host, Some(p.port), None, "discovery".into());
        }
    }
    for dr in rules.drs {
        let src = format!("DestinationRule {}", dr.meta.key());
        let mut dr_ports: BTreeSet<u16> = ports.get(&dr.host).cloned().unwrap_or_default();
        let tps = std::iter::once(dr.traffic_policy.as_ref())
            .chain(dr.subsets.iter().map(|s| s.traffic_policy.as_ref()))
            .flatten();
        for tp in tps {
            dr_ports.extend(tp.ports());
        }
        let port_list: Vec<Option<u16>> = if dr_ports.is_empty() {
            vec![None]
        } else {
            dr_ports.into_iter().map(Some).collect()
        };
        for p in &port_list {
            add(&dr.host, *p, None, src.clone());
            for sub in &dr.subsets {
                add(&dr.host, *p, Some(&sub.name), src.clone());
            }
        }
    }
    for h in rules.discovery_hosts {
        if rules.discovered.is_some_and(|d| disc_host(d, h).is_some()) {
            continue;
        }
        match ports.get(h) {
            Some(ps) => {
                for p in ps {
                    add(h, Some(*p), None, "discovery".into());
                }
            }
            None => add(h, None, None, "discovery".into()),
        }
    }
    // Live state of destinations the proxy has sent to.
    let mut live: BTreeMap<Key, &DestinationDump> = BTreeMap::new();
    for d in &rules.dump.policies.destinations {
        let k: Key = (d.host.clone(), Some(d.port), d.subset.clone());
        add(&k.0, k.1, k.2.as_deref(), "in use".into());
        live.insert(k, d);
    }
    // A row for "any port" is folded into the rows of the same host|subset with known ports
    // (what names it names them too).
    let any_port: Vec<Key> = keys.keys().filter(|k| k.1.is_none()).cloned().collect();
    for k in any_port {
        let targets: Vec<Key> = keys
            .keys()
            .filter(|o| o.1.is_some() && o.0 == k.0 && o.2 == k.2)
            .cloned()
            .collect();
        if targets.is_empty() {
            continue;
        }
        if let Some(srcs) = keys.remove(&k) {
            for tk in targets {
                keys.entry(tk).or_default().extend(srcs.iter().cloned());
            }
        }
    }
    let mut rows = Vec::new();
    for ((host, port, subset), sources) in keys {
        if !f.host_ok(&host) || !f.port_ok(port) || !f.subset_ok(subset.as_deref()) {
            continue;
        }
        let dr = rules.dr_for(&host);
        let (raw, resolved) = match dr {
            Some(dr) => {
                let raw = traffic::effective_raw(dr, subset.as_deref(), port.unwrap_or(0));
                (
                    raw,
                    traffic::resolve(dr, subset.as_deref(), port.unwrap_or(0)),
                )
            }
            None => (
                Value::Object(Default::default()),
                Ok(traffic::TrafficPolicy::default()),
            ),
        };
        let (policy, policy_error) = match resolved {
            Ok(p) => (p, None),
            Err(e) => (traffic::TrafficPolicy::default(), Some(e)),
        };
        let (load_balancer, connection_pool, outlier_detection, tls) = policy_cells(&policy, &raw);
        let key = (host.clone(), port, subset.clone());
        let live = live.get(&key);
        let subset_missing = match (&subset, dr) {
            (Some(sub), Some(dr)) => !dr.subsets.iter().any(|x| &x.name == sub),
            (Some(_), None) => true,
            (None, _) => false,
        };
        let policy_error = policy_error.or_else(|| {
            subset_missing.then(|| {
                format!(
                    "subset {:?} is not defined by any DestinationRule: requests to it get 503",
                    subset.as_deref().unwrap_or("")
                )
            })
        });
        rows.push(ClusterRow {
            host,
            port,
            subset,
            sources: sources.into_iter().collect(),
            destination_rule: dr.map(|d| d.meta.key()),
            load_balancer,
            connection_pool,
            outlier_detection,
            tls,
            policy_error,
            connection_pool_stats: live.map(|d| d.connection_pool.clone()),
            discovery: discovery_text(rules, &key),
        });
    }
    rows
}

/// What discovery holds for a host|port|subset: the port's name and target ports, and how many
/// ready endpoints (in the subset: of those listed; `at least` when the dump left some out).
fn discovery_text(
    rules: &Rules<'_>,
    key: &(String, Option<u16>, Option<String>),
) -> Option<String> {
    let (host, port, subset) = key;
    let h = disc_host(rules.discovered?, host)?;
    let p = h.ports.iter().find(|p| Some(p.port) == *port)?;
    let targets: Vec<String> = p.target_ports.iter().map(u16::to_string).collect();
    let mut out = match &p.name {
        Some(n) => format!("port {n}"),
        None => format!("port {}", p.port),
    };
    if !targets.is_empty() {
        out.push_str(&format!(" -> {}", targets.join(",")));
    }
    let count = match subset {
        None => p.endpoint_count.to_string(),
        Some(sub) => {
            let Some(sel) = rules
                .dr_for(host)
                .and_then(|dr| dr.subsets.iter().find(|x| &x.name == sub))
            else {
                return Some(out);
            };
            let n = p
                .endpoints
                .iter()
                .filter(|e| {
                    let labels = ep_labels(e);
                    sel.labels.iter().all(|(k, v)| labels.get(k) == Some(v))
                })
                .count();
            if omitted(p) > 0 {
                format!("at least {n} of {}", p.endpoint_count)
            } else {
                format!("{n} of {}", p.endpoint_count)
            }
        }
    };
    let plural = if p.endpoint_count == 1 { "" } else { "s" };
    out.push_str(&format!(": {count} ready endpoint{plural}"));
    Some(out)
}

// ------------------------------------------------------------------------------ endpoints

fn subsets_of(rules: &Rules<'_>, host: &str, labels: &BTreeMap<String, String>) -> Vec<String> {
    rules
        .dr_for(host)
        .map(|dr| {
            dr.subsets
                .iter()
                .filter(|s| s.labels.iter().all(|(k, v)| labels.get(k) == Some(v)))
                .map(|s| s.name.clone())
                .collect()
        })
        .unwrap_or_default()
}

/// Outlier-detector state per `(host, address)`: `HEALTHY` or `EJECTED ...`.
/// What the outlier detector holds about one endpoint: its health, the service port and the
/// subsets of the destinations that track it.
struct Tracked {
    health: String,
    port: Option<u16>,
    subsets: BTreeSet<String>,
}

fn health_index(dump: &ConfigDump) -> BTreeMap<(String, String), Tracked> {
    let mut m: BTreeMap<(String, String), Tracked> = BTreeMap::new();
    for d in &dump.policies.destinations {
        let host = d.host.as_str();
        let port = Some(d.port);
        let subset = d.subset.as_deref();
        let endpoints = d.outlier_detection.iter().flat_map(|o| &o.endpoints);
        for e in endpoints {
            let addr = e.address.as_str();
            let total = e.ejections_total;
            let h = if e.ejected {
                let ms = e.ejected_for_ms;
                format!(
                    "EJECTED ({:.1}s left, {total} ejections)",
                    ms as f64 / 1000.0
                )
            } else if total > 0 {
                format!("HEALTHY ({total} ejections before)")
            } else {
                "HEALTHY".to_string()
            };
            let t = m
                .entry((host.to_string(), addr.to_string()))
                .or_insert_with(|| Tracked {
                    health: h.clone(),
                    port,
                    subsets: BTreeSet::new(),
                });
            // Ejected anywhere wins over healthy elsewhere.
            if h.starts_with("EJECTED") {
                t.health = h;
            }
            t.subsets.extend(subset.map(str::to_string));
        }
    }
    m
}

fn endpoint_rows(rules: &Rules<'_>, f: &Filters) -> Vec<EndpointRow> {
    let health = health_index(rules.dump);
    let dns: BTreeMap<&String, Vec<String>> = rules
        .dump
        .rules
        .dns
        .iter()
        .map(|(k, ips)| (k, ips.iter().map(|ip| ip.to_string()).collect()))
        .collect();
    let mut rows: Vec<EndpointRow> = Vec::new();
    let mut seen: BTreeSet<(String, String)> = BTreeSet::new();
    let health_of = |host: &str, addr: &str| {
        health
            .get(&(host.to_string(), addr.to_string()))
            .map(|t| t.health.clone())
            .unwrap_or_else(|| "-".to_string())
    };
    let fmt_addr = |ip: &str, port: u16| {
        if ip.contains(':') {
            format!("[{ip}]:{port}")
        } else {
            format!("{ip}:{port}")
        }
    };
    for se in rules.ses {
        let key = key_of(&se.meta);
        let resolution = resolution_text(se.resolution);
        let eps = &se.endpoints;
        for host in &se.hosts {
            for sp in &se.ports {
                let number = sp.number;
                let pname = sp.name.as_deref();
                let target = sp.target_port.unwrap_or(number);
                let mut push =
                    |address: String, labels: BTreeMap<String, String>, weight, source| {
                        let subsets = subsets_of(rules, host, &labels);
                        seen.insert((host.clone(), address.clone()));
                        rows.push(EndpointRow {
                            host: host.clone(),
                            port: Some(number),
                            health: health_of(host, &address),
                            address,
                            labels,
                            subsets,
                            weight,
                            source,
                            pod: None,
                        });
                    };
                if eps.is_empty() {
                    match resolution {
                        "DNS" | "DNS_ROUND_ROBIN" if !host.starts_with('*') => {
                            match dns.get(&host) {
                                Some(ips) if !ips.is_empty() => {
                                    for ip in ips {
                                        push(
                                            fmt_addr(ip, number),
                                            BTreeMap::new(),
                                            None,
                                            format!("ServiceEntry {key} ({resolution} {host})"),
                                        );
                                    }
                                }
                                _ => push(
                                    "-".into(),
                                    BTreeMap::new(),
                                    None,
                                    format!(
                                        "ServiceEntry {key} ({resolution}: {host} did not resolve at load)"
                                    ),
                                ),
                            }
                        }
                        _ => push(
                            "-".into(),
                            BTreeMap::new(),
                            None,
                            format!("ServiceEntry {key} ({resolution}: the original destination)"),
                        ),
                    }
                    continue;
                }
                for e in eps {
                    let addr = e.address.as_str();
                    let port = pname
                        .and_then(|n| e.ports.get(n).copied())
                        .unwrap_or(target);
                    let l = e.labels.clone();
                    let w = e.weight;
                    if addr.parse::<std::net::IpAddr>().is_ok() {
                        push(
                            fmt_addr(addr, port),
                            l,
                            w,
                            format!("ServiceEntry {key} ({resolution})"),
                        );
                    } else {
                        match dns.get(&addr.to_string()) {
                            Some(ips) if !ips.is_empty() => {
                                for ip in ips {
                                    push(
                                        fmt_addr(ip, port),
                                        l.clone(),
                                        w,
                                        format!("ServiceEntry {key} ({resolution} {addr})"),
                                    );
                                }
                            }
                            _ => push(
                                format!("{addr}:{port}"),
                                l,
                                w,
                                format!("ServiceEntry {key} ({resolution}, not resolved at load)"),
                            ),
                        }
                    }
                }
            }
        }
    }
    let seen_by_detector: BTreeSet<&String> = health.keys().map(|(h, _)| h).collect();
    let discovered: BTreeSet<&String> = rules.discovery_hosts.iter().collect();
    // The endpoints discovery indexed, as far as the dump lists them.
    for h in rules.discovered.iter().flat_map(|d| d.hosts.iter()) {
        let caps = rules.discovered.map(caps).unwrap_or_default();
        for p in &h.ports {
            for e in &p.endpoints {
                seen.insert((h.host.clone(), e.address.clone()));
                let labels = ep_labels(e);
                rows.push(EndpointRow {
                    host: h.host.clone(),
                    port: Some(p.port),
                    address: e.address.clone(),
                    subsets: subsets_of(rules, &h.host, &labels),
                    labels,
                    weight: None,
                    health: health_of(&h.host, &e.address),
                    source: "Kubernetes discovery".into(),
                    pod: e.pod.clone(),
                });
            }
            let left_out = omitted(p);
            if p.endpoint_count == 0 || left_out > 0 {
                rows.push(EndpointRow {
                    host: h.host.clone(),
                    port: Some(p.port),
                    address: "-".into(),
                    labels: BTreeMap::new(),
                    subsets: Vec::new(),
                    weight: None,
                    health: "-".into(),
                    source: if p.endpoint_count == 0 {
                        "Kubernetes discovery (no ready endpoints)".into()
                    } else {
                        format!(
                            "Kubernetes discovery ({left_out} more ready endpoints not listed: {caps})"
                        )
                    },
                    pod: None,
                });
            }
        }
    }
    for h in rules.discovery_hosts {
        let indexed = rules.discovered.is_some_and(|d| disc_host(d, h).is_some());
        // Addresses the outlier detector saw for this host (listed below), else the name alone.
        if !indexed && !seen_by_detector.contains(h) {
            rows.push(EndpointRow {
                host: h.clone(),
                port: None,
                address: "-".into(),
                labels: BTreeMap::new(),
                subsets: Vec::new(),
                weight: None,
                health: "-".into(),
                source: "Kubernetes discovery (addresses are not in /config_dump)".into(),
                pod: None,
            });
        }
    }
    // Hosts the rules route to (or set a policy for) that no endpoint source knows.
    let discovery_on = rules.dump.discovery.running().is_some();
    let mut named: BTreeSet<String> = rules
        .vss
        .iter()
        .flat_map(|vs| {
            vs.http
                .iter()
                .map(|r| &r.route)
                .chain(vs.tcp.iter().chain(&vs.tls).map(|r| &r.route))
                .flatten()
                .map(|d| d.destination.host.clone())
        })
        .collect();
    named.extend(rules.drs.iter().map(|d| d.host.clone()));
    let se_hosts: BTreeSet<String> = rules
        .ses
        .iter()
        .flat_map(|se| se.hosts.iter().cloned())
        .collect();
    for h in named {
        if se_hosts.contains(&h)
            || h.starts_with('*')
            || discovered.contains(&h)
            || seen_by_detector.contains(&h)
        {
            continue;
        }
        rows.push(EndpointRow {
            host: h,
            port: None,
            address: "-".into(),
            labels: BTreeMap::new(),
            subsets: Vec::new(),
            weight: None,
            health: "-".into(),
            source: if discovery_on {
                "unknown to discovery and the ServiceEntries: the original destination".into()
            } else {
                "no ServiceEntry, discovery off: the original destination (or the host by DNS when a route points elsewhere)".into()
            },
            pod: None,
        });
    }
    // Addresses only the outlier detector knows (discovered endpoints the proxy sent to).
    for ((host, addr), tracked) in &health {
        if seen.contains(&(host.clone(), addr.clone())) {
            continue;
        }
        let Tracked {
            health: h,
            port,
            subsets,
        } = tracked;
        rows.push(EndpointRow {
            host: host.clone(),
            port: *port,
            address: addr.clone(),
            labels: BTreeMap::new(),
            subsets: subsets.iter().cloned().collect(),
            weight: None,
            health: h.clone(),
            source: if discovered.contains(host) {
                "Kubernetes discovery (seen by the outlier detector)".into()
            } else {
                "seen by the outlier detector".into()
            },
            pod: None,
        });
    }
    rows.retain(|r| {
        f.host_ok(&r.host)
            && f.port_ok(r.port)
            && f.subset
                .as_deref()
                .is_none_or(|sub| r.subsets.iter().any(|x| x == sub))
    });
    // Per host:port the addresses, then the rows without one (what is left out, or why none).
    rows.sort_by(|a, b| {
        (&a.host, a.port, a.address == "-", &a.address).cmp(&(
            &b.host,
            b.port,
            b.address == "-",
            &b.address,
        ))
    });
    rows
}

// ------------------------------------------------------------------------------ listeners

fn protocol_text(p: remora_model::rules::Protocol) -> &'static str {
    use remora_model::rules::Protocol::*;
    match p {
        Http => "HTTP",
        Http2 => "HTTP2",
        Grpc => "GRPC",
        Tcp => "TCP",
        Tls => "TLS",
    }
}

/// A gateway's listening ports (`remora-proxy gateway`): per port its Gateway port, what it does
/// with connections, and each server with its hosts, TLS mode, credential and state.
fn gateway_listeners(
    g: &remora_model::dump::GatewayDump,
    bound: &[remora_model::dump::ListenerDump],
    f: &Filters,
    out: &mut Listeners,
) {
    for l in &g.listeners {
        if !f.port_ok(Some(l.port)) {
            continue;
        }
        let does = super::gateway_view::listener_does(&l.kind);
        let servers: Vec<String> = l
            .servers
            .iter()
            .map(super::gateway_view::server_text)
            .collect();
        let name = format!("gateway {}", l.port);
        let address = bound
            .iter()
            .find(|b| b.name == name)
            .and_then(|b| b.address.clone())
            .unwrap_or_else(|| format!("{}:{}", l.bind.as_deref().unwrap_or("0.0.0.0"), l.port));
        out.listeners.push(ListenerRow {
            name,
            address,
            bound: bound
                .iter()
                .any(|b| b.name == format!("gateway {}", l.port) && b.bound),
            handles: format!(
                "Gateway port {}: {does}; servers: {}",
                l.gateway_port,
                servers.join("; ")
            ),
            destination: format!(
                "routed by the VirtualServices bound to {}",
                g.gateways.join(", ")
            ),
        });
    }
}

fn listeners_view(rules: &Rules<'_>, f: &Filters) -> Listeners {
    let mut out = Listeners {
        sniff_timeout_ms: Some(rules.dump.sniff_timeout_ms),
        ..Default::default()
    };
    if let Some(g) = &rules.dump.gateway {
        gateway_listeners(g, &rules.dump.listeners, f, &mut out);
    }
    for l in &rules.dump.listeners {
        let Some(address) = l.address.as_deref() else {
            continue; // e.g. IPv6 listeners turned off
        };
        if rules.dump.gateway.is_some() {
            break; // a gateway has no capture listeners: its ports are listed above
        }
        let name = l.name.clone();
        let port = address
            .rsplit_once(':')
            .and_then(|(_, p)| p.parse::<u16>().ok());
        if !f.port_ok(port) {
            continue;
        }
        let inbound = name.starts_with("inbound");
        let handles = if inbound {
            "inbound: connections to the pod, redirected by iptables (remora-init -z)"
        } else {
            "outbound: the app's connections, redirected by iptables (remora-init -p)"
        };
        let destination = match (&l.fixed_target, inbound) {
            (Some(t), _) => format!("fixed target {t}"),
            (None, true) => format!(
                "the app at the original destination, from {}",
                l.source_address.as_deref().unwrap_or("127.0.0.6")
            ),
            (None, false) => {
                "the original destination, routed by the rules (see routes)".to_string()
            }
        };
        out.listeners.push(ListenerRow {
            name,
            address: address.to_string(),
            bound: l.bound,
            handles: handles.to_string(),
            destination,
        });
    }
    let mut ports: BTreeMap<u16, BTreeMap<&'static str, Vec<String>>> = BTreeMap::new();
    for se in rules.ses {
        for sp in &se.ports {
            if let Some(proto) = remora_model::rules::service_port_protocol(sp) {
                ports
                    .entry(sp.number)
                    .or_default()
                    .entry(protocol_text(proto))
                    .or_default()
                    .push(format!(
                        "ServiceEntry {} ({})",
                        key_of(&se.meta),
                        se.hosts.join(",")
                    ));
            }
        }
    }
    for p in [25u16, 53, 3306, 27017] {
        ports
            .entry(p)
            .or_default()
            .entry("TCP")
            .or_default()
            .push("Istio's server-first port (never sniffed)".into());
    }
    for (port, by) in ports {
        if f.port.is_some_and(|x| x != port) {
            continue;
        }
        for (proto, decl) in by {
            out.ports.push(PortRow {
                port,
                protocol: proto.to_string(),
                declared_by: decl,
            });
        }
    }
    out
}

// ------------------------------------------------------------------------------ entry

/// Builds the requested view(s) from a `/config_dump`. `target` names where it came from.
pub fn build(
    dump: &ConfigDump,
    target: &str,
    view: View,
    f: &Filters,
) -> Result<ProxyConfig, String> {
    f.check(view)?;
    let proxy = proxy_info(dump, target);
    let rules = Rules::new(dump);
    let mut notes = Vec::new();
    if proxy.generation == 0 {
        notes.push("the proxy has loaded no rule set yet (generation 0)".to_string());
    }
    for i in &dump.rules.ignored {
        notes.push(format!(
            "ignored {} {} ({} doc {}): {}",
            i.kind, i.name, i.file, i.document, i.reason
        ));
    }
    for u in &dump.rules.unknown_fields {
        notes.push(format!("unknown field, accepted and ignored: {u}"));
    }
    if let Some(g) = &dump.gateway {
        if g.gateways.is_empty() {
            notes.push(
                "gateway: no Gateway selects this gateway's pod labels; nothing is served"
                    .to_string(),
            );
        }
        for n in &g.not_served {
            notes.push(format!("gateway server not served: {n}"));
        }
        for l in &g.listeners {
            for s in l.servers.iter().filter(|s| s.state != "served") {
                notes.push(format!(
                    "gateway server {} on port {} is {}: its TLS settings are not loaded (see the gateway's log)",
                    s.server, l.gateway_port, s.state
                ));
            }
        }
    }
    for f in &dump.rules.skipped_files {
        notes.push(format!("file not read: {f}"));
    }
    if let Some(sc) = &dump.rules.sidecar {
        let egress: Vec<String> = sc
            .egress
            .iter()
            .map(|l| {
                let hosts: Vec<String> = l
                    .hosts
                    .iter()
                    .map(|h| format!("{}/{}", h.namespace, h.dns))
                    .collect();
                match l.port {
                    Some(p) => format!("port {p}: {}", hosts.join(",")),
                    None => hosts.join(","),
                }
            })
            .collect();
        let mode = if sc.registry_only {
            "REGISTRY_ONLY"
        } else {
            "ALLOW_ANY"
        };
        notes.push(format!(
            "Sidecar {} applies: egress {}; outboundTrafficPolicy {mode}",
            key_of(&sc.meta),
            if egress.is_empty() {
                "(all hosts)".to_string()
            } else {
                egress.join("; ")
            }
        ));
    }
    let discovery_on = dump.discovery.running().is_some();
    if view.shows(View::Endpoints) || view.shows(View::Clusters) {
        match rules.discovered {
            Some(d) if d.endpoints_omitted > 0 => {
                let hosts: Vec<&str> = d
                    .hosts
                    .iter()
                    .filter(|h| h.ports.iter().any(|p| omitted(p) > 0))
                    .filter(|h| f.host_ok(&h.host))
                    .map(|h| h.host.as_str())
                    .collect();
                if !hosts.is_empty() {
                    const SHOWN: usize = 5;
                    let more = hosts.len().saturating_sub(SHOWN);
                    notes.push(format!(
                        "Kubernetes discovery: {}; {} endpoints are not listed (hosts {}{})",
                        caps(d),
                        d.endpoints_omitted,
                        hosts[..hosts.len().min(SHOWN)].join(", "),
                        if more > 0 {
                            format!(" and {more} more hosts")
                        } else {
                            String::new()
                        }
                    ));
                }
            }
            Some(_) => {}
            None if discovery_on && view.shows(View::Endpoints) => notes.push(
                "Kubernetes discovery is on: this proxy's dump lists the hosts it knows, not their addresses and labels"
                    .to_string(),
            ),
            None => {}
        }
    }
    Ok(ProxyConfig {
        proxy,
        routes: view.shows(View::Routes).then(|| route_rows(&rules, f)),
        clusters: view.shows(View::Clusters).then(|| cluster_rows(&rules, f)),
        endpoints: view
            .shows(View::Endpoints)
            .then(|| endpoint_rows(&rules, f)),
        listeners: view
            .shows(View::Listeners)
            .then(|| listeners_view(&rules, f)),
        secret: match (view.shows(View::Secret), &dump.identity) {
            (true, Some(id)) => Some(super::secret::view(id, unix_now())),
            (true, None) if view == View::Secret => {
                return Err(
                    "this proxy has no workload identity (started with --ca-address off): no certificate to show"
                        .to_string(),
                )
            }
            _ => None,
        },
        authz: (view == View::Authz).then(|| super::authz::view(dump, f.request.as_ref())),
        notes,
    })
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn port_text(p: Option<u16>) -> String {
    p.map(|p| p.to_string()).unwrap_or_else(|| "*".into())
}

fn or_dash(s: &str) -> String {
    if s.is_empty() {
        "-".into()
    } else {
        s.to_string()
    }
}

pub fn render_routes(rows: &[RouteRow]) -> String {
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.virtual_service.clone().unwrap_or_else(|| "-".into()),
                r.hosts.join(","),
                r.route.clone(),
                r.matches.clone(),
                r.destination.clone(),
                r.policy.clone(),
            ]
        })
        .collect();
    table::render(
        &[
            "VIRTUAL SERVICE",
            "HOSTS",
            "ROUTE",
            "MATCH",
            "DESTINATION",
            "POLICY",
        ],
        &cells,
    )
}

pub fn render_clusters(rows: &[ClusterRow]) -> String {
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.host.clone(),
                port_text(r.port),
                r.subset.clone().unwrap_or_else(|| "-".into()),
                r.destination_rule.clone().unwrap_or_else(|| "-".into()),
                r.load_balancer.clone(),
                r.connection_pool.clone(),
                r.outlier_detection.clone(),
                r.tls.clone(),
            ]
        })
        .collect();
    let mut out = table::render(
        &[
            "HOST",
            "PORT",
            "SUBSET",
            "DESTINATION RULE",
            "LB",
            "CONNECTION POOL",
            "OUTLIER DETECTION",
            "TLS",
        ],
        &cells,
    );
    for r in rows {
        if let Some(e) = &r.policy_error {
            out.push_str(&format!(
                "{}|{}|{}: {e}\n",
                r.host,
                port_text(r.port),
                r.subset.as_deref().unwrap_or("-")
            ));
        }
    }
    out
}

pub fn render_endpoints(rows: &[EndpointRow]) -> String {
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                format!("{}:{}", r.host, port_text(r.port)),
                r.address.clone(),
                or_dash(
                    &r.labels
                        .iter()
                        .map(|(k, v)| format!("{k}={v}"))
                        .collect::<Vec<_>>()
                        .join(","),
                ),
                or_dash(&r.subsets.join(",")),
                r.health.clone(),
                match &r.pod {
                    Some(p) => format!("{} (pod {p})", r.source),
                    None => r.source.clone(),
                },
            ]
        })
        .collect();
    table::render(
        &[
            "HOST:PORT",
            "ADDRESS",
            "LABELS",
            "SUBSETS",
            "HEALTH",
            "SOURCE",
        ],
        &cells,
    )
}

pub fn render_listeners(l: &Listeners) -> String {
    let cells: Vec<Vec<String>> = l
        .listeners
        .iter()
        .map(|r| {
            vec![
                r.name.clone(),
                r.address.clone(),
                if r.bound { "yes" } else { "no" }.to_string(),
                r.handles.clone(),
                r.destination.clone(),
            ]
        })
        .collect();
    let mut out = table::render(
        &["NAME", "ADDRESS", "BOUND", "HANDLES", "DESTINATION"],
        &cells,
    );
    out.push('\n');
    let cells: Vec<Vec<String>> = l
        .ports
        .iter()
        .map(|p| {
            vec![
                p.port.to_string(),
                p.protocol.clone(),
                p.declared_by.join("; "),
            ]
        })
        .collect();
    out.push_str(&table::render(
        &["OUTBOUND PORT", "PROTOCOL", "DECLARED BY"],
        &cells,
    ));
    out.push_str(&format!(
        "other ports: protocol sniffed from the client's first bytes (at most {} ms, then opaque TCP)\n",
        l.sniff_timeout_ms
            .map(|m| m.to_string())
            .unwrap_or_else(|| "?".into())
    ));
    out
}

/// The text output: one table per view (headed by the view's name for `all`), then the notes.
pub fn render_text(c: &ProxyConfig, view: View) -> String {
    let mut out = String::new();
    let heading = view == View::All;
    if heading {
        out.push_str(&format!(
            "proxy {}: version {}, rules generation {} (hash {}) from {}\n",
            c.proxy.target,
            c.proxy.version.as_deref().unwrap_or("-"),
            c.proxy.generation,
            table::short_hash(&c.proxy.hash),
            or_dash(&c.proxy.source)
        ));
    }
    let mut section = |title: &str, body: String| {
        if heading {
            out.push_str(&format!("\n{title}\n"));
        }
        out.push_str(&body);
    };
    if let Some(l) = &c.listeners {
        section("LISTENERS", render_listeners(l));
    }
    if let Some(r) = &c.routes {
        section("ROUTES", render_routes(r));
    }
    if let Some(r) = &c.clusters {
        section("CLUSTERS", render_clusters(r));
    }
    if let Some(r) = &c.endpoints {
        section("ENDPOINTS", render_endpoints(r));
    }
    if let Some(v) = &c.secret {
        section("SECRETS", super::secret::render(v));
    }
    if let Some(v) = &c.authz {
        section("AUTHORIZATION", super::authz::render(v));
    }
    for n in &c.notes {
        out.push_str(&format!("note: {n}\n"));
    }
    out
}

/// Validates `--admin HOST:PORT` and returns the URL of the admin server.
pub fn admin_url(a: &str) -> Result<String, String> {
    let bad = |why: &str| format!("--admin: invalid value {a:?}: {why}");
    if a.contains("://") || a.contains('/') {
        return Err(bad(
            "expected HOST:PORT (for example 127.0.0.1:15020), not a URL",
        ));
    }
    let auth: http::uri::Authority = a
        .parse()
        .map_err(|_| bad("expected HOST:PORT (for example 127.0.0.1:15020)"))?;
    match auth.port_u16() {
        Some(0) => Err(bad("port 0")),
        Some(_) if !auth.host().is_empty() && !a.contains('@') => Ok(format!("http://{a}")),
        _ => Err(bad(
            "expected HOST:PORT with a port (for example 127.0.0.1:15020)",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use remora_model::dump::{
        ApiState, ConfigSourceDump, DiscoveryDump, DiscoveryStatus, HostState, IndexLimits,
        OutlierDump, PoliciesDump, RulesDump, WatchStatus, WorkloadDump,
    };
    use remora_model::rules::{snapshot_from_yaml, Ignored, LoadContext};
    use serde_json::json;

    /// A `/config_dump` the real proxy wrote (Bookinfo rules plus policies and a ServiceEntry),
    /// recorded as the admin port's answer (through pods/portforward) in the CLI contract fixture.
    fn real_dump() -> ConfigDump {
        crate::dump::read(
            &real_dump_json(),
            "bookinfo/reviews",
            "proxy bookinfo/reviews",
        )
        .unwrap()
    }

    fn real_dump_json() -> Value {
        let fx: Value = serde_json::from_str(include_str!(
            "../../tests/fixtures/kube-api/cli/proxy-config.json"
        ))
        .unwrap();
        fx["exchanges"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| {
                e["path"]
                    .as_str()
                    .unwrap()
                    .ends_with("/reviews-v1-5d8f9c7b4-k2x8p/portforward?ports=15020")
            })
            .unwrap()["port_forward"]["http"]["/config_dump"]["body"]
            .clone()
    }

    fn all(dump: &ConfigDump, f: &Filters) -> ProxyConfig {
        build(dump, "bookinfo/reviews", View::All, f).unwrap()
    }

    /// A complete dump of a proxy in namespace `shop` that loaded `files` (name, YAML), built
    /// from the proxy's own types; the tests then set the live parts (policies, discovery).
    fn dump_of(generation: u64, files: &[(&str, &str)]) -> ConfigDump {
        let ctx = LoadContext {
            namespace: "shop".into(),
            ..Default::default()
        };
        let snap = snapshot_from_yaml(files, &ctx, generation).unwrap();
        let rules = RulesDump::of(&snap);
        ConfigDump {
            version: "0.1.0".into(),
            generation,
            hash: rules.hash.clone(),
            source: rules.source.clone(),
            rules_dir: "/etc/remora/rules".into(),
            rules,
            num_trusted_proxies: 0,
            listeners: Vec::new(),
            workload: WorkloadDump {
                name: "web".into(),
                namespace: "shop".into(),
            },
            sniff_timeout_ms: 5000,
            app_probes: Vec::new(),
            uptime_seconds: 60,
            policies: PoliciesDump::default(),
            config_source: ConfigSourceDump {
                source: "files".into(),
                generation,
                hash: snap.hash.clone(),
                configmap: None,
                api: ApiState {
                    status: "off".into(),
                    ..Default::default()
                },
            },
            discovery: DiscoveryDump::off(),
            identity: None,
            gateway: None,
            telemetry_providers: Default::default(),
        }
    }

    /// A destination the proxy has sent to, with the outlier detector's endpoints.
    fn destination(
        host: &str,
        subset: Option<&str>,
        port: u16,
        endpoints: Vec<HostState>,
    ) -> DestinationDump {
        DestinationDump {
            host: host.into(),
            subset: subset.map(str::to_string),
            port,
            policy: traffic::TrafficPolicy::default(),
            policy_error: None,
            connection_pool: PoolStats::default(),
            tls: "DISABLE".into(),
            tls_error: None,
            outlier_detection: Some(OutlierDump {
                config: Default::default(),
                endpoints,
            }),
        }
    }

    #[test]
    fn routes_of_the_real_dump() {
        let c = all(&real_dump(), &Filters::default());
        let routes = c.routes.unwrap();
        let reviews: Vec<&RouteRow> = routes
            .iter()
            .filter(|r| r.virtual_service.as_deref() == Some("bookinfo/reviews"))
            .collect();
        assert_eq!(reviews.len(), 2, "{reviews:#?}");
        assert_eq!(reviews[0].matches, "header end-user=jason");
        assert_eq!(
            reviews[0].destination,
            "reviews.bookinfo.svc.cluster.local|v2"
        );
        assert_eq!(reviews[0].hosts, ["reviews.bookinfo.svc.cluster.local"]);
        assert_eq!(reviews[1].matches, "*");
        assert_eq!(
            reviews[1].destination,
            "reviews.bookinfo.svc.cluster.local|v3"
        );
        assert_eq!(reviews[1].policy, "-");
        let ratings: Vec<&RouteRow> = routes
            .iter()
            .filter(|r| r.virtual_service.as_deref() == Some("bookinfo/ratings"))
            .collect();
        assert_eq!(ratings[0].policy, "fault delay 7s");
        // The last row of every VirtualService with a catch-all route is that route; ratings has one.
        assert!(!routes
            .iter()
            .any(|r| r.virtual_service.as_deref() == Some("bookinfo/ratings")
                && r.destination.starts_with("404")));
        let details: Vec<&RouteRow> = routes
            .iter()
            .filter(|r| r.virtual_service.as_deref() == Some("bookinfo/details"))
            .collect();
        assert_eq!(details[0].matches, "uri /v1/*");
        assert_eq!(
            details[0].policy,
            "rewrite uri=/; timeout 3s; retries 2 x 1s on 5xx,connect-failure; 1 header ops"
        );
        assert_eq!(
            details[0].destination,
            "details.bookinfo.svc.cluster.local|v1"
        );
        assert_eq!(details[1].destination, "redirect 301 uri=/v1/details");
        assert_eq!(details[2].matches, "(no route matched)");
        assert_eq!(details[2].destination, "404 (flag NR)");
        // Implicit behaviour: the ServiceEntry host and everything else.
        let implicit: Vec<&RouteRow> = routes.iter().filter(|r| r.kind == "implicit").collect();
        assert_eq!(implicit[0].hosts, ["payments.internal"]);
        assert_eq!(implicit[0].matches, "port 8080");
        assert!(implicit[0].destination.contains("STATIC"));
        assert_eq!(implicit[0].route, "(default)");
        assert_eq!(implicit[1].hosts, ["*.svc.cluster.local"]);
        assert_eq!(implicit[1].route, "(default)");
        assert!(implicit[1]
            .destination
            .starts_with("the Service's endpoints"));
        assert_eq!(
            implicit.last().unwrap().destination,
            "original destination (passthrough, ALLOW_ANY)"
        );
        assert_eq!(implicit.last().unwrap().route, "-");
        // --name keeps one VirtualService; --port keeps routes that match any port or that one.
        let f = Filters {
            name: Some("ratings".into()),
            ..Default::default()
        };
        let only = build(&real_dump(), "t", View::Routes, &f)
            .unwrap()
            .routes
            .unwrap();
        assert!(!only.is_empty());
        assert!(only
            .iter()
            .all(|r| r.virtual_service.as_deref() == Some("bookinfo/ratings")));
    }

    #[test]
    fn clusters_of_the_real_dump() {
        let c = all(&real_dump(), &Filters::default());
        let clusters = c.clusters.unwrap();
        let find = |h: &str, p: Option<u16>, sub: Option<&str>| {
            clusters
                .iter()
                .find(|r| r.host == h && r.port == p && r.subset.as_deref() == sub)
                .unwrap_or_else(|| panic!("no cluster {h}|{p:?}|{sub:?} in {clusters:#?}"))
        };
        let reviews = "reviews.bookinfo.svc.cluster.local";
        for sub in ["v1", "v2", "v3"] {
            let r = find(reviews, None, Some(sub));
            assert_eq!(r.destination_rule.as_deref(), Some("bookinfo/reviews"));
        }
        let v3 = find(reviews, None, Some("v3"));
        assert_eq!(v3.load_balancer, "ROUND_ROBIN");
        assert_eq!(
            v3.connection_pool,
            "maxConnections 100, http1MaxPending 10, maxRequestsPerConnection 1"
        );
        assert_eq!(
            v3.outlier_detection,
            "5xx x3, interval 5s, eject 30s, max 50%"
        );
        // The subset's own policy overrides the top-level load balancer.
        let v1 = find(reviews, None, Some("v1"));
        assert_eq!(v1.load_balancer, "CONSISTENT_HASH header end-user");
        assert_eq!(v1.sources, ["DestinationRule bookinfo/reviews"]);
        let v2 = find(reviews, None, Some("v2"));
        assert_eq!(
            v2.sources,
            [
                "DestinationRule bookinfo/reviews",
                "VirtualService bookinfo/reviews"
            ]
        );
        let pay = find("payments.internal", Some(8080), None);
        assert_eq!(pay.tls, "SIMPLE sni=payments.internal");
        assert_eq!(pay.load_balancer, "LEAST_REQUEST (default)");
        let ratings = find("ratings.bookinfo.svc.cluster.local", None, Some("v1"));
        assert_eq!(ratings.connection_pool, "-");
        assert_eq!(ratings.outlier_detection, "-");
        // Filters.
        let f = Filters {
            fqdn: Some("reviews".into()),
            subset: Some("v2".into()),
            ..Default::default()
        };
        let only = build(&real_dump(), "t", View::Clusters, &f)
            .unwrap()
            .clusters
            .unwrap();
        assert_eq!(only.len(), 1, "{only:#?}");
        assert_eq!(only[0].subset.as_deref(), Some("v2"));
    }

    #[test]
    fn a_gateways_routes_are_its_bound_virtual_services_only() {
        let mut d = real_dump();
        let mut vs = d
            .rules
            .virtual_services
            .iter()
            .find(|v| key_of(&v.meta) == "bookinfo/reviews")
            .cloned()
            .expect("the real dump has bookinfo/reviews");
        vs.gateways = vec!["istio-system/web".into()];
        vs.applies_to_mesh = false;
        d.gateway = Some(remora_model::dump::GatewayDump {
            gateways: vec!["istio-system/web".into()],
            virtual_services: vec![vs],
            ..Default::default()
        });
        let sidecar_rows = all(&real_dump(), &Filters::default()).routes.unwrap();
        assert!(sidecar_rows.iter().any(|r| r.kind == "implicit"));
        let rows = all(&d, &Filters::default()).routes.unwrap();
        assert!(!rows.is_empty());
        for r in &rows {
            assert_eq!(
                r.virtual_service.as_deref(),
                Some("bookinfo/reviews"),
                "{r:#?}"
            );
            assert!(!r.policy.contains("gateways only"), "{r:#?}");
        }
        assert_eq!(rows[0].destination, "reviews.bookinfo.svc.cluster.local|v2");
    }

    #[test]
    fn a_gateways_listeners_servers_and_down_servers() {
        use remora_model::dump::{
            GatewayDump, GatewayListenerDump, GatewayServerDump, ListenerDump,
        };
        let mut d = real_dump();
        d.listeners = vec![ListenerDump {
            name: "gateway 8443".into(),
            address: Some("0.0.0.0:8443".into()),
            bound: true,
            fixed_target: None,
            source_address: None,
        }];
        let server = |i: usize, host: &str, state: &str| GatewayServerDump {
            server: format!("Gateway istio-system/web spec.servers[{i}]"),
            protocol: "HTTPS".into(),
            hosts: vec![host.into()],
            tls_mode: Some("SIMPLE".into()),
            credential_name: Some(format!("{host}-cert")),
            state: state.into(),
            certificate: (state == "served").then(|| remora_model::dump::ServedCertificateDump {
                subject: format!("CN={host}"),
                dns_names: vec![host.into()],
                serial: "0a1b".into(),
                not_after: 1_796_601_600,
            }),
        };
        d.gateway = Some(GatewayDump {
            gateways: vec!["istio-system/web".into()],
            listeners: vec![GatewayListenerDump {
                port: 8443,
                gateway_port: 443,
                kind: "https".into(),
                bind: None,
                servers: vec![
                    server(0, "shop.example.com", "served"),
                    server(1, "old.example.com", "down"),
                ],
            }],
            not_served: vec![
                "Gateway istio-system/web spec.servers[2] (port 9000): protocol UDP …".into(),
            ],
            virtual_services: Vec::new(),
        });
        let c = all(&d, &Filters::default());
        let l = c.listeners.unwrap();
        assert_eq!(l.listeners.len(), 1, "{l:#?}");
        let row = &l.listeners[0];
        assert_eq!(
            (row.name.as_str(), row.address.as_str(), row.bound),
            ("gateway 8443", "0.0.0.0:8443", true)
        );
        assert!(
            row.handles.starts_with("Gateway port 443: TLS terminated"),
            "{}",
            row.handles
        );
        assert!(
            row.handles.contains("[shop.example.com] tls SIMPLE credentialName shop.example.com-cert certificate CN=shop.example.com [shop.example.com] serial 0a1b expires 2026-12-07T00:00:00Z;"),
            "{}",
            row.handles
        );
        assert!(
            row.handles.contains("old.example.com-cert (DOWN)"),
            "{}",
            row.handles
        );
        assert_eq!(
            row.destination,
            "routed by the VirtualServices bound to istio-system/web"
        );
        assert!(
            c.notes.iter().any(|n| n.starts_with(
                "gateway server not served: Gateway istio-system/web spec.servers[2]"
            )),
            "{:?}",
            c.notes
        );
        assert!(
            c.notes
                .iter()
                .any(|n| n.contains("spec.servers[1] on port 443 is down")),
            "{:?}",
            c.notes
        );
        // The port filter applies to gateway ports too.
        let f = Filters {
            port: Some(80),
            ..Default::default()
        };
        assert!(build(&d, "t", View::Listeners, &f)
            .unwrap()
            .listeners
            .unwrap()
            .listeners
            .is_empty());
    }

    #[test]
    fn endpoints_and_listeners_of_the_real_dump() {
        let c = all(&real_dump(), &Filters::default());
        let eps = c.endpoints.unwrap();
        let pay: Vec<&EndpointRow> = eps
            .iter()
            .filter(|e| e.host == "payments.internal")
            .collect();
        assert_eq!(pay.len(), 2, "{eps:#?}");
        assert_eq!(pay[0].address, "127.0.0.1:18080");
        assert_eq!(pay[0].labels.get("version").map(String::as_str), Some("v1"));
        assert_eq!(pay[0].subsets, ["v1"]);
        assert_eq!(pay[1].address, "127.0.0.2:18081");
        assert_eq!(pay[1].subsets, ["v2"]);
        assert_eq!(pay[1].weight, Some(20));
        assert!(pay[0]
            .source
            .starts_with("ServiceEntry bookinfo/payments (STATIC"));
        let f = Filters {
            subset: Some("v2".into()),
            ..Default::default()
        };
        let v2 = build(&real_dump(), "t", View::Endpoints, &f)
            .unwrap()
            .endpoints
            .unwrap();
        assert_eq!(v2.len(), 1);
        assert_eq!(v2[0].address, "127.0.0.2:18081");

        let l = c.listeners.unwrap();
        let names: Vec<&str> = l.listeners.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["outbound", "inbound"]);
        assert!(l.listeners.iter().all(|r| r.bound));
        assert!(l
            .ports
            .iter()
            .any(|p| p.port == 8080 && p.protocol == "HTTP"));
        assert!(l
            .ports
            .iter()
            .any(|p| p.port == 3306 && p.protocol == "TCP"));
        assert_eq!(l.sniff_timeout_ms, Some(200));
    }

    #[test]
    fn port_filters() {
        let f = Filters {
            port: Some(8080),
            ..Default::default()
        };
        let c = all(&real_dump(), &f);
        // Clusters: the ServiceEntry port, and rows for any port (the port is not known there).
        let clusters = c.clusters.unwrap();
        assert!(clusters
            .iter()
            .all(|r| r.port == Some(8080) || r.port.is_none()));
        assert!(clusters.iter().any(|r| r.host == "payments.internal"));
        // Listeners: only the declared port 8080, not the server-first ports.
        let l = c.listeners.unwrap();
        let ports: Vec<u16> = l.ports.iter().map(|p| p.port).collect();
        assert_eq!(ports, [8080]);
        assert!(l.listeners.is_empty());
        // Routes: the ServiceEntry's implicit route stays; with another port it goes.
        let routes = c.routes.unwrap();
        assert!(routes.iter().any(|r| r.hosts == ["payments.internal"]));
        let f = Filters {
            port: Some(9080),
            ..Default::default()
        };
        let routes = all(&real_dump(), &f).routes.unwrap();
        assert!(!routes.iter().any(|r| r.hosts == ["payments.internal"]));
        assert!(routes.iter().any(|r| r.virtual_service.is_some()));
    }

    #[test]
    fn text_tables() {
        let c = build(
            &real_dump(),
            "bookinfo/reviews-v1",
            View::Routes,
            &Filters::default(),
        )
        .unwrap();
        let t = render_text(&c, View::Routes);
        let cols = |line: &str| -> Vec<String> {
            line.split("   ")
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .map(str::to_string)
                .collect()
        };
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(
            cols(lines[0]),
            [
                "VIRTUAL SERVICE",
                "HOSTS",
                "ROUTE",
                "MATCH",
                "DESTINATION",
                "POLICY"
            ]
        );
        let jason = lines
            .iter()
            .find(|l| l.starts_with("bookinfo/reviews") && l.contains("jason"))
            .unwrap();
        assert_eq!(
            cols(jason),
            [
                "bookinfo/reviews",
                "reviews.bookinfo.svc.cluster.local",
                "spec.http[0]",
                "header end-user=jason",
                "reviews.bookinfo.svc.cluster.local|v2",
                "-"
            ]
        );
        let c = all(&real_dump(), &Filters::default());
        let t = render_text(&c, View::All);
        assert!(t.starts_with("proxy bookinfo/reviews: version "), "{t}");
        for h in [
            "\nLISTENERS\n",
            "\nROUTES\n",
            "\nCLUSTERS\n",
            "\nENDPOINTS\n",
        ] {
            assert!(t.contains(h), "{h} missing in\n{t}");
        }
    }

    #[test]
    fn synthetic_edge_cases() {
        // REGISTRY_ONLY, a tcp route, outlier state, discovery, an unknown subset, ignored docs.
        let mut dump = dump_of(
            4,
            &[(
                "rules.yaml",
                "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: db}
spec:
  hosts: [db]
  tcp:
  - match: [{port: 5432}]
    route: [{destination: {host: db, subset: primary, port: {number: 5432}}}]
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: default}
spec:
  outboundTrafficPolicy: {mode: REGISTRY_ONLY}
",
            )],
        );
        dump.rules.ignored.push(Ignored {
            file: "gw.yaml".into(),
            document: 1,
            kind: "Gateway".into(),
            name: "gw".into(),
            reason: "gateways are not served by sidecars".into(),
        });
        dump.sniff_timeout_ms = 200;
        let endpoint = |address: &str, ejected: bool, ms: u64, c5xx: u32, total: u64| HostState {
            address: address.into(),
            ejected,
            ejected_for_ms: ms,
            consecutive_5xx: c5xx,
            consecutive_gateway_errors: 0,
            ejection_multiplier: u32::from(ejected),
            ejections_total: total,
        };
        dump.policies.destinations.push(destination(
            "web.shop.svc.cluster.local",
            None,
            80,
            vec![
                endpoint("10.0.0.7:8080", true, 12500, 0, 1),
                endpoint("10.0.0.8:8080", false, 0, 1, 0),
            ],
        ));
        dump.policies.destinations[0]
            .connection_pool
            .active_requests = 1;
        dump.discovery = DiscoveryDump {
            status: DiscoveryStatus::Running(WatchStatus::default()),
            hosts: vec![
                "web.shop.svc.cluster.local".into(),
                "api.shop.svc.cluster.local".into(),
            ],
            index: None,
            readiness: None,
        };
        let c = all(&dump, &Filters::default());
        let routes = c.routes.unwrap();
        assert_eq!(routes[0].kind, "tcp");
        assert_eq!(routes[0].matches, "port 5432");
        assert_eq!(
            routes[0].destination,
            "db.shop.svc.cluster.local:5432|primary"
        );
        assert!(routes
            .iter()
            .any(|r| r.destination.starts_with("502 (Sidecar shop/default")));
        // --port: the tcp route names 5432 (match and destination); 543 is not 5432.
        for (port, kept) in [(5432, true), (543, false)] {
            let f = Filters {
                port: Some(port),
                ..Default::default()
            };
            let r = all(&dump, &f).routes.unwrap();
            assert_eq!(r.iter().any(|r| r.kind == "tcp"), kept, "{port}");
        }
        let clusters = c.clusters.unwrap();
        let db = clusters
            .iter()
            .find(|r| r.host == "db.shop.svc.cluster.local")
            .unwrap();
        assert!(db.policy_error.as_deref().unwrap().contains("\"primary\""));
        let web = clusters
            .iter()
            .find(|r| r.host == "web.shop.svc.cluster.local")
            .unwrap();
        assert_eq!(web.port, Some(80));
        assert!(web.connection_pool_stats.is_some());
        let eps = c.endpoints.unwrap();
        let ejected = eps.iter().find(|e| e.address == "10.0.0.7:8080").unwrap();
        assert_eq!(ejected.health, "EJECTED (12.5s left, 1 ejections)");
        // The service port of the destination that tracks it, not the endpoint's own port.
        assert_eq!(ejected.port, Some(80));
        assert_eq!(
            ejected.source,
            "Kubernetes discovery (seen by the outlier detector)"
        );
        let api = eps
            .iter()
            .find(|e| e.host == "api.shop.svc.cluster.local")
            .unwrap();
        assert_eq!(api.address, "-");
        assert!(c.notes.iter().any(|n| n.starts_with("ignored Gateway gw")));
        assert!(
            c.notes.iter().any(|n| n
                == "Sidecar shop/default applies: egress (all hosts); outboundTrafficPolicy REGISTRY_ONLY"),
            "{:?}",
            c.notes
        );
        assert!(c.notes.iter().any(|n| n.contains("discovery is on")));
    }

    /// A dump with the discovery index (as `proxy/src/discovery/store.rs` `Index::dump` writes
    /// it): pods, labels, subsets, ejection state, the caps and what they left out.
    fn discovery_dump() -> ConfigDump {
        let mut dump = dump_of(
            2,
            &[(
                "rules.yaml",
                "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews}
spec:
  host: reviews
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
",
            )],
        );
        dump.policies.destinations.push(destination(
            "reviews.shop.svc.cluster.local",
            Some("v2"),
            9080,
            vec![HostState {
                address: "10.0.0.2:8080".into(),
                ejected: true,
                ejected_for_ms: 3000,
                consecutive_5xx: 0,
                consecutive_gateway_errors: 0,
                ejection_multiplier: 1,
                ejections_total: 2,
            }],
        ));
        let ep = |address: &str, pod: &str, version: Option<&str>| EndpointDump {
            address: address.into(),
            pod: Some(pod.into()),
            labels: version.map(|v| {
                [("app", "reviews"), ("version", v)]
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect()
            }),
        };
        let port = |port: u16, name: Option<&str>, targets: Vec<u16>, count: usize, eps| PortDump {
            port,
            name: name.map(str::to_string),
            target_ports: targets,
            endpoint_count: count,
            endpoints: eps,
        };
        let host = |host: &str, omitted: usize, ports| HostDump {
            host: host.into(),
            ports,
            endpoints_omitted: omitted,
        };
        dump.discovery = DiscoveryDump {
            status: DiscoveryStatus::Running(WatchStatus {
                scope: "[shop]".into(),
                ..Default::default()
            }),
            hosts: vec![
                "big.shop.svc.cluster.local".into(),
                "empty.shop.svc.cluster.local".into(),
                "reviews.shop.svc.cluster.local".into(),
            ],
            index: Some(IndexDump {
                limits: IndexLimits {
                    endpoints_per_host: 2,
                    endpoints_total: 5000,
                },
                indexed: "3 hosts".into(),
                endpoints_listed: 4,
                endpoints_omitted: 3,
                hosts_truncated: 1,
                hosts: vec![
                    host(
                        "big.shop.svc.cluster.local",
                        3,
                        vec![port(
                            80,
                            None,
                            vec![8080],
                            5,
                            vec![
                                ep("10.1.0.1:8080", "big-1", None),
                                ep("10.1.0.2:8080", "big-2", None),
                            ],
                        )],
                    ),
                    host(
                        "empty.shop.svc.cluster.local",
                        0,
                        vec![port(80, Some("http"), vec![], 0, vec![])],
                    ),
                    host(
                        "reviews.shop.svc.cluster.local",
                        0,
                        vec![port(
                            9080,
                            Some("http"),
                            vec![8080],
                            2,
                            vec![
                                ep("10.0.0.1:8080", "reviews-v1-x", Some("v1")),
                                ep("10.0.0.2:8080", "reviews-v2-y", Some("v2")),
                            ],
                        )],
                    ),
                ],
            }),
            readiness: None,
        };
        dump
    }

    #[test]
    fn discovered_endpoints_with_pods_subsets_and_caps() {
        let dump = discovery_dump();
        let c = all(&dump, &Filters::default());
        let eps = c.endpoints.as_ref().unwrap();
        let reviews: Vec<&EndpointRow> = eps
            .iter()
            .filter(|e| e.host == "reviews.shop.svc.cluster.local")
            .collect();
        assert_eq!(reviews.len(), 2, "{reviews:#?}");
        assert_eq!(reviews[0].address, "10.0.0.1:8080");
        assert_eq!(reviews[0].port, Some(9080));
        assert_eq!(reviews[0].pod.as_deref(), Some("reviews-v1-x"));
        assert_eq!(reviews[0].subsets, ["v1"]);
        assert_eq!(reviews[0].health, "-");
        assert_eq!(reviews[0].source, "Kubernetes discovery");
        // The outlier detector's state joins the discovered endpoint (no second row).
        assert_eq!(reviews[1].subsets, ["v2"]);
        assert_eq!(reviews[1].health, "EJECTED (3.0s left, 2 ejections)");
        // A Service without ready endpoints, and one whose endpoints the dump capped.
        let empty = eps
            .iter()
            .find(|e| e.host == "empty.shop.svc.cluster.local")
            .unwrap();
        assert_eq!((empty.address.as_str(), empty.port), ("-", Some(80)));
        assert!(
            empty.source.contains("no ready endpoints"),
            "{}",
            empty.source
        );
        let big: Vec<&EndpointRow> = eps
            .iter()
            .filter(|e| e.host == "big.shop.svc.cluster.local")
            .collect();
        assert_eq!(big.len(), 3);
        let more = big.iter().find(|e| e.address == "-").unwrap();
        assert!(
            more.source
                .contains("3 more ready endpoints not listed: the proxy's dump lists at most 2 endpoints per host and 5000 in all"),
            "{}",
            more.source
        );
        assert!(
            c.notes.iter().any(
                |n| n.contains("3 endpoints are not listed (hosts big.shop.svc.cluster.local)")
            ),
            "{:?}",
            c.notes
        );
        assert!(!c.notes.iter().any(|n| n.contains("not their addresses")));
        // The table names the pod.
        let t = render_endpoints(eps);
        assert!(
            t.lines().any(|l| l.contains("10.0.0.1:8080")
                && l.contains("app=reviews,version=v1")
                && l.contains("Kubernetes discovery (pod reviews-v1-x)")),
            "{t}"
        );
        // Filters: --subset, --port, --fqdn.
        let f = Filters {
            subset: Some("v1".into()),
            ..Default::default()
        };
        let v1 = all(&dump, &f).endpoints.unwrap();
        assert_eq!(
            v1.iter().map(|e| e.address.as_str()).collect::<Vec<_>>(),
            ["10.0.0.1:8080"]
        );
        let f = Filters {
            port: Some(80),
            ..Default::default()
        };
        let p80 = all(&dump, &f).endpoints.unwrap();
        assert!(
            p80.iter().all(|e| e.port == Some(80)) && p80.len() == 4,
            "{p80:#?}"
        );
        let f = Filters {
            fqdn: Some("reviews".into()),
            ..Default::default()
        };
        let c = all(&dump, &f);
        assert_eq!(c.endpoints.unwrap().len(), 2);
        // The truncation note is about hosts the filter shows.
        assert!(
            !c.notes.iter().any(|n| n.contains("not listed")),
            "{:?}",
            c.notes
        );
    }

    #[test]
    fn clusters_get_the_discovered_ports() {
        let c = all(&discovery_dump(), &Filters::default());
        let cl = c.clusters.unwrap();
        let row = |h: &str, sub: Option<&str>| {
            cl.iter()
                .find(|r| r.host == h && r.subset.as_deref() == sub)
                .unwrap_or_else(|| panic!("{h} {sub:?} in {cl:#?}"))
        };
        let r = row("reviews.shop.svc.cluster.local", None);
        assert_eq!(r.port, Some(9080));
        assert_eq!(r.sources, ["DestinationRule shop/reviews", "discovery"]);
        assert_eq!(
            r.discovery.as_deref(),
            Some("port http -> 8080: 2 ready endpoints")
        );
        // The DestinationRule's subsets on the discovered port, with their share.
        let v1 = row("reviews.shop.svc.cluster.local", Some("v1"));
        assert_eq!(v1.port, Some(9080));
        assert_eq!(
            v1.discovery.as_deref(),
            Some("port http -> 8080: 1 of 2 ready endpoints")
        );
        assert_eq!(
            row("big.shop.svc.cluster.local", None).discovery.as_deref(),
            Some("port 80 -> 8080: 5 ready endpoints")
        );
        assert_eq!(
            row("empty.shop.svc.cluster.local", None)
                .discovery
                .as_deref(),
            Some("port http: 0 ready endpoints")
        );
        let f = Filters {
            port: Some(80),
            ..Default::default()
        };
        let c = all(&discovery_dump(), &f);
        assert!(c.clusters.unwrap().iter().all(|r| r.port == Some(80)));
    }

    #[test]
    fn empty_match_block_is_a_catch_all() {
        let vs = |m: &str| {
            let yaml = format!(
                "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: web}}
spec:
  hosts: [web]
  http:
  - match: {m}
    route: [{{destination: {{host: web}}}}]
"
            );
            dump_of(1, &[("vs.yaml", &yaml)])
        };
        let no_match = |d: &ConfigDump| {
            build(d, "t", View::Routes, &Filters::default())
                .unwrap()
                .routes
                .unwrap()
                .iter()
                .any(|r| r.matches == "(no route matched)")
        };
        assert!(!no_match(&vs("[{}]")));
        assert!(!no_match(&vs("[{name: all}]")));
        assert!(no_match(&vs("[{uri: {prefix: /a}}]")));
    }

    #[test]
    fn bad_input_and_flags() {
        let e = crate::dump::read(&json!({"x": 1}), "shop/web", "proxy shop/web")
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a remora proxy's /config_dump"), "{e}");
        let f = Filters {
            subset: Some("v1".into()),
            ..Default::default()
        };
        assert!(f.check(View::Routes).unwrap_err().starts_with("--subset:"));
        let f = Filters {
            name: Some("x".into()),
            ..Default::default()
        };
        assert!(f.check(View::Clusters).unwrap_err().starts_with("--name:"));
        let f = Filters {
            fqdn: Some("".into()),
            ..Default::default()
        };
        assert!(f.check(View::All).unwrap_err().starts_with("--fqdn:"));
    }

    #[test]
    fn admin_argument() {
        assert_eq!(
            admin_url("127.0.0.1:15020").unwrap(),
            "http://127.0.0.1:15020"
        );
        assert_eq!(admin_url("[::1]:15020").unwrap(), "http://[::1]:15020");
        for bad in [
            "127.0.0.1",
            "http://127.0.0.1:15020",
            "h:0",
            ":15020",
            "a b:1",
        ] {
            let e = admin_url(bad).unwrap_err();
            assert!(e.starts_with("--admin: invalid value"), "{bad}: {e}");
        }
    }
}
