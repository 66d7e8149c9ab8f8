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

use remora_model::policy::traffic;
use remora_model::rules::host::HostIndex;
use remora_model::rules::model::{DestinationRule, Meta, ServicePort, Subset};

use super::table;
use super::text::{self, Match};

/// Which view(s) to show.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum View {
    Routes,
    Clusters,
    Endpoints,
    Listeners,
    All,
}

impl View {
    fn shows(self, v: View) -> bool {
        self == View::All || self == v
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
    pub connection_pool_stats: Option<Value>,
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
    /// Resources the proxy read but does not apply, and other remarks (one line each).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

// ------------------------------------------------------------------------------ reading

fn s<'a>(v: &'a Value, p: &str) -> Option<&'a str> {
    v.pointer(p).and_then(Value::as_str)
}

fn arr<'a>(v: &'a Value, p: &str) -> &'a [Value] {
    v.pointer(p)
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[])
}

fn strings(v: &Value, p: &str) -> Vec<String> {
    arr(v, p)
        .iter()
        .filter_map(|x| x.as_str().map(str::to_string))
        .collect()
}

fn labels(v: Option<&Value>) -> BTreeMap<String, String> {
    v.and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_string())))
                .collect()
        })
        .unwrap_or_default()
}

fn key_of(v: &Value) -> String {
    format!(
        "{}/{}",
        s(v, "/meta/namespace").unwrap_or("?"),
        s(v, "/meta/name").unwrap_or("?")
    )
}

fn port_u16(v: Option<&Value>) -> Option<u16> {
    v.and_then(Value::as_u64)
        .and_then(|n| u16::try_from(n).ok())
}

/// Checks that `dump` is a remora proxy's `/config_dump` and reads its identity.
pub fn proxy_info(dump: &Value, target: &str) -> Result<ProxyInfo, String> {
    let (Some(generation), Some(hash)) = (
        dump.get("generation").and_then(Value::as_u64),
        dump.get("hash").and_then(Value::as_str),
    ) else {
        return Err(format!(
            "{target}: the answer is not a remora proxy's /config_dump (no generation and hash)"
        ));
    };
    if !dump.get("rules").is_some_and(Value::is_object) {
        return Err(format!(
            "{target}: the /config_dump has no \"rules\" object (a proxy older than this CLI?)"
        ));
    }
    let workload = match (s(dump, "/workload/namespace"), s(dump, "/workload/name")) {
        (Some(ns), Some(n)) if !n.is_empty() => Some(format!("{ns}/{n}")),
        _ => None,
    };
    Ok(ProxyInfo {
        target: target.to_string(),
        version: s(dump, "/version").map(str::to_string),
        generation,
        hash: hash.to_string(),
        source: s(dump, "/source").unwrap_or("").to_string(),
        workload,
    })
}

/// A DestinationRule of the dump as the proxy's model, so the proxy's own policy resolution
/// applies to it.
fn destination_rule(v: &Value) -> DestinationRule {
    let m = |p: &str| s(v, p).unwrap_or("").to_string();
    DestinationRule {
        meta: Meta {
            kind: "DestinationRule".into(),
            api_version: m("/meta/api_version"),
            name: m("/meta/name"),
            namespace: m("/meta/namespace"),
            file: m("/meta/file"),
            document: v
                .pointer("/meta/document")
                .and_then(Value::as_u64)
                .unwrap_or(0) as usize,
        },
        host: m("/host"),
        subsets: arr(v, "/subsets")
            .iter()
            .map(|x| Subset {
                name: s(x, "/name").unwrap_or("").to_string(),
                labels: labels(x.get("labels")),
                traffic_policy: x.get("traffic_policy").filter(|t| !t.is_null()).cloned(),
            })
            .collect(),
        export_to: strings(v, "/export_to"),
        traffic_policy: v.get("traffic_policy").filter(|t| !t.is_null()).cloned(),
        workload_selector: v
            .get("workload_selector")
            .filter(|w| w.is_object())
            .map(|w| labels(Some(w))),
    }
}

/// The parts of the rules the views share.
struct Rules<'a> {
    dump: &'a Value,
    vss: &'a [Value],
    ses: &'a [Value],
    drs: Vec<DestinationRule>,
    dr_index: HostIndex,
    discovery_hosts: Vec<String>,
    /// The discovery index as the dump lists it (`None`: an older proxy, host names only).
    discovered: Option<Discovered>,
}

/// `/discovery/index` of the dump.
struct Discovered {
    hosts: Vec<DiscHost>,
    per_host: u64,
    total: u64,
    omitted: u64,
}

struct DiscHost {
    host: String,
    ports: Vec<DiscPort>,
}

struct DiscPort {
    port: u16,
    name: Option<String>,
    targets: Vec<u16>,
    /// Ready endpoints the proxy holds (listed or not).
    count: u64,
    endpoints: Vec<DiscEp>,
}

struct DiscEp {
    address: String,
    pod: Option<String>,
    labels: BTreeMap<String, String>,
}

impl DiscPort {
    fn omitted(&self) -> u64 {
        self.count.saturating_sub(self.endpoints.len() as u64)
    }
}

fn discovered(dump: &Value) -> Option<Discovered> {
    let idx = dump.pointer("/discovery/index").filter(|v| v.is_object())?;
    let num = |p: &str| idx.pointer(p).and_then(Value::as_u64).unwrap_or(0);
    let hosts = arr(idx, "/hosts")
        .iter()
        .filter_map(|h| {
            Some(DiscHost {
                host: s(h, "/host")?.to_string(),
                ports: arr(h, "/ports")
                    .iter()
                    .filter_map(|p| {
                        let endpoints: Vec<DiscEp> = arr(p, "/endpoints")
                            .iter()
                            .filter_map(|e| {
                                Some(DiscEp {
                                    address: s(e, "/address")?.to_string(),
                                    pod: s(e, "/pod").map(str::to_string),
                                    labels: labels(e.get("labels")),
                                })
                            })
                            .collect();
                        Some(DiscPort {
                            port: port_u16(p.get("port"))?,
                            name: s(p, "/name").map(str::to_string),
                            targets: arr(p, "/target_ports")
                                .iter()
                                .filter_map(|t| port_u16(Some(t)))
                                .collect(),
                            count: p
                                .get("endpoint_count")
                                .and_then(Value::as_u64)
                                .unwrap_or(endpoints.len() as u64),
                            endpoints,
                        })
                    })
                    .collect(),
            })
        })
        .collect();
    Some(Discovered {
        hosts,
        per_host: num("/limits/endpoints_per_host"),
        total: num("/limits/endpoints_total"),
        omitted: num("/endpoints_omitted"),
    })
}

impl Discovered {
    fn host(&self, host: &str) -> Option<&DiscHost> {
        self.hosts.iter().find(|h| h.host == host)
    }

    /// `capped at 100 per host, 5000 in all`.
    fn caps(&self) -> String {
        format!(
            "the proxy's dump lists at most {} endpoints per host and {} in all",
            self.per_host, self.total
        )
    }
}

impl<'a> Rules<'a> {
    fn new(dump: &'a Value) -> Rules<'a> {
        let vss = arr(dump, "/rules/virtual_services");
        let ses = arr(dump, "/rules/service_entries");
        let drs: Vec<DestinationRule> = arr(dump, "/rules/destination_rules")
            .iter()
            .map(destination_rule)
            .collect();
        let dr_index = HostIndex::build(drs.iter().enumerate().map(|(i, d)| (i, d.host.as_str())));
        Rules {
            dump,
            vss,
            ses,
            drs,
            dr_index,
            discovery_hosts: strings(dump, "/discovery/hosts"),
            discovered: discovered(dump),
        }
    }

    fn dr_for(&self, host: &str) -> Option<&DestinationRule> {
        self.dr_index
            .best(&[host.to_string()])
            .and_then(|i| self.drs.get(i))
    }
}

// ------------------------------------------------------------------------------ routes

fn kv_matches(v: &Value, field: &str, label: &str, neg: bool) -> Vec<String> {
    v.get(field)
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, m)| {
                    let op = if neg { "!=" } else { "=" };
                    match Match::from_dump(m) {
                        Match::Present if neg => format!("{label} {k} absent"),
                        Match::Present => format!("{label} {k} present"),
                        val => format!("{label} {k}{op}{val}"),
                    }
                })
                .collect()
        })
        .unwrap_or_default()
}

fn map_text(v: Option<&Value>) -> String {
    labels(v)
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// One `HTTPMatchRequest` as `uri /api* AND header end-user=jason`.
fn http_match(m: &Value) -> String {
    let mut parts = Vec::new();
    if let Some(n) = s(m, "/name") {
        parts.push(format!("[{n}]"));
    }
    for f in ["uri", "scheme", "method", "authority"] {
        if let Some(x) = m.get(f) {
            parts.push(format!("{f} {}", Match::from_dump(x)));
        }
    }
    parts.extend(kv_matches(m, "headers", "header", false));
    parts.extend(kv_matches(m, "without_headers", "header", true));
    parts.extend(kv_matches(m, "query_params", "query", false));
    if let Some(p) = port_u16(m.get("port")) {
        parts.push(format!("port {p}"));
    }
    if m.get("source_labels").is_some() {
        parts.push(format!("sourceLabels {}", map_text(m.get("source_labels"))));
    }
    if let Some(n) = s(m, "/source_namespace") {
        parts.push(format!("sourceNamespace {n}"));
    }
    let gws = strings(m, "/gateways");
    if !gws.is_empty() {
        parts.push(format!("gateways {}", gws.join(",")));
    }
    if m.get("ignore_uri_case").and_then(Value::as_bool) == Some(true) {
        parts.push("(uri ignores case)".into());
    }
    if parts.is_empty() {
        "*".into()
    } else {
        parts.join(" AND ")
    }
}

fn l4_match(m: &Value) -> String {
    let mut parts = Vec::new();
    let sni = strings(m, "/sni_hosts");
    if !sni.is_empty() {
        parts.push(format!("sni {}", sni.join(",")));
    }
    if let Some(p) = port_u16(m.get("port")) {
        parts.push(format!("port {p}"));
    }
    let nets = strings(m, "/destination_subnets");
    if !nets.is_empty() {
        parts.push(format!("destinationSubnets {}", nets.join(",")));
    }
    if m.get("source_labels").is_some() {
        parts.push(format!("sourceLabels {}", map_text(m.get("source_labels"))));
    }
    if let Some(n) = s(m, "/source_namespace") {
        parts.push(format!("sourceNamespace {n}"));
    }
    if parts.is_empty() {
        "*".into()
    } else {
        parts.join(" AND ")
    }
}

fn matches_text(route: &Value, one: fn(&Value) -> String) -> String {
    let ms = arr(route, "/match");
    if ms.is_empty() {
        "*".into()
    } else {
        ms.iter().map(one).collect::<Vec<_>>().join(" OR ")
    }
}

/// `host|subset:port` as one destination cell part.
fn destination_text(d: &Value) -> String {
    let mut t = s(d, "/host").unwrap_or("?").to_string();
    if let Some(p) = port_u16(d.get("port")) {
        t.push_str(&format!(":{p}"));
    }
    if let Some(sub) = s(d, "/subset") {
        t.push_str(&format!("|{sub}"));
    }
    t
}

fn weighted(route: &Value) -> String {
    let ds = arr(route, "/route");
    let weights_given = ds.iter().any(|d| d.get("weight").is_some());
    ds.iter()
        .map(|d| {
            let mut t = destination_text(d.get("destination").unwrap_or(&Value::Null));
            match d.get("weight").and_then(Value::as_u64) {
                Some(w) => t.push_str(&format!(" {w}%")),
                None if ds.len() == 1 && !weights_given => {}
                None => t.push_str(" 0%"),
            }
            t
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn pct(v: Option<&Value>) -> String {
    match v.and_then(Value::as_f64) {
        Some(p) if p >= 100.0 => String::new(),
        Some(p) => format!(" {p}%"),
        None => String::new(),
    }
}

fn header_ops_count(h: Option<&Value>) -> usize {
    let Some(h) = h else { return 0 };
    ["request", "response"]
        .iter()
        .map(|side| {
            ["set", "add"]
                .iter()
                .map(|op| {
                    h.pointer(&format!("/{side}/{op}"))
                        .and_then(Value::as_object)
                        .map_or(0, |m| m.len())
                })
                .sum::<usize>()
                + h.pointer(&format!("/{side}/remove"))
                    .and_then(Value::as_array)
                    .map_or(0, Vec::len)
        })
        .sum()
}

/// The route policy in one cell: rewrite, fault, timeout, retries, mirrors, header operations.
fn policy_text(r: &Value) -> String {
    let mut parts = Vec::new();
    if let Some(rw) = r.get("rewrite").filter(|x| x.is_object()) {
        let mut t = Vec::new();
        if let Some(u) = s(rw, "/uri") {
            t.push(format!("uri={u}"));
        }
        if let Some(a) = s(rw, "/authority") {
            t.push(format!("authority={a}"));
        }
        if t.is_empty() {
            // uriRegexRewrite is applied but not part of the dump.
            t.push("uriRegexRewrite".into());
        }
        parts.push(format!("rewrite {}", t.join(" ")));
    }
    let p = r.get("policy").unwrap_or(&Value::Null);
    if let Some(f) = p.get("fault").filter(|x| x.is_object()) {
        if let Some(d) = f.get("delay").filter(|x| x.is_object()) {
            parts.push(format!(
                "fault delay {}{}",
                s(d, "/fixed_delay").unwrap_or("?"),
                pct(d.get("percentage"))
            ));
        }
        if let Some(a) = f.get("abort").filter(|x| x.is_object()) {
            let what = match (
                a.get("http_status").and_then(Value::as_u64),
                s(a, "/grpc_status"),
            ) {
                (Some(c), _) => c.to_string(),
                (None, Some(g)) => format!("grpc {g}"),
                _ => "?".into(),
            };
            parts.push(format!("fault abort {what}{}", pct(a.get("percentage"))));
        }
    }
    if let Some(t) = s(p, "/timeout") {
        parts.push(format!("timeout {t}"));
    }
    if let Some(rt) = p.get("retries").filter(|x| x.is_object()) {
        let attempts = rt.get("attempts").and_then(Value::as_u64).unwrap_or(0);
        let mut t = if attempts == 0 {
            "retries off".to_string()
        } else {
            format!("retries {attempts}")
        };
        if attempts > 0 {
            if let Some(pt) = s(rt, "/per_try_timeout") {
                t.push_str(&format!(" x {pt}"));
            }
            let on = strings(rt, "/retry_on");
            if !on.is_empty() {
                t.push_str(&format!(" on {}", on.join(",")));
            }
        }
        parts.push(t);
    }
    for m in arr(p, "/mirrors") {
        let mut t = format!("mirror {}", s(m, "/host").unwrap_or("?"));
        if let Some(sub) = s(m, "/subset") {
            t.push_str(&format!("|{sub}"));
        }
        t.push_str(&pct(m.get("percentage")));
        parts.push(t);
    }
    let n = header_ops_count(r.get("headers"))
        + arr(r, "/route")
            .iter()
            .map(|d| header_ops_count(d.get("headers")))
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

fn http_destination(r: &Value) -> String {
    if let Some(rd) = r.get("redirect").filter(|x| x.is_object()) {
        let mut t = format!(
            "redirect {}",
            rd.get("code").and_then(Value::as_u64).unwrap_or(301)
        );
        if let Some(x) = s(rd, "/scheme") {
            t.push_str(&format!(" scheme={x}"));
        }
        if let Some(x) = s(rd, "/authority") {
            t.push_str(&format!(" authority={x}"));
        }
        if let Some(x) = port_u16(rd.get("port")) {
            t.push_str(&format!(" port={x}"));
        }
        if rd.get("derive_port_from_request").and_then(Value::as_bool) == Some(true) {
            t.push_str(" port=(request's)");
        }
        if let Some(x) = s(rd, "/uri") {
            t.push_str(&format!(" uri={x}"));
        }
        return t;
    }
    if let Some(dr) = r.get("direct_response").filter(|x| x.is_object()) {
        return format!(
            "direct response {}",
            dr.get("status").and_then(Value::as_u64).unwrap_or(0)
        );
    }
    let w = weighted(r);
    if w.is_empty() {
        "(no destination: 503)".into()
    } else {
        w
    }
}

/// The `RateLimit` rules (remora's kind, `policies.rate_limits`) for which `applies(host,
/// route)` holds, as `ratelimit 100/minute burst 10 (ns/name)`, `; `-separated.
fn rate_limits(dump: &Value, applies: impl Fn(&str, Option<&str>) -> bool) -> String {
    arr(dump, "/policies/rate_limits")
        .iter()
        .filter(|rl| s(rl, "/host").is_some_and(|h| applies(h, s(rl, "/route"))))
        .map(|rl| {
            format!(
                "ratelimit {}/{} burst {} ({})",
                rl.get("requests_per_unit")
                    .and_then(Value::as_u64)
                    .unwrap_or(0),
                s(rl, "/unit_name").unwrap_or("?"),
                rl.get("burst").and_then(Value::as_u64).unwrap_or(0),
                s(rl, "/key").unwrap_or("?")
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// The ports a route's destinations name.
fn dest_ports(route: &Value) -> Vec<u16> {
    arr(route, "/route")
        .iter()
        .filter_map(|d| port_u16(d.pointer("/destination/port")))
        .collect()
}

fn route_rows(rules: &Rules<'_>, f: &Filters) -> Vec<RouteRow> {
    let mut rows = Vec::new();
    for vs in rules.vss {
        let key = key_of(vs);
        let name = s(vs, "/meta/name").unwrap_or("");
        let hosts = strings(vs, "/hosts");
        if !f.hosts_ok(&hosts) {
            continue;
        }
        let mesh = vs.get("applies_to_mesh").and_then(Value::as_bool) != Some(false);
        let mut vs_rows = Vec::new();
        let mut catch_all = false;
        for (i, r) in arr(vs, "/http").iter().enumerate() {
            let route = s(r, "/name")
                .map(str::to_string)
                .unwrap_or_else(|| format!("spec.http[{i}]"));
            let ms = arr(r, "/match");
            let route_ports: Vec<u16> = ms.iter().filter_map(|m| port_u16(m.get("port"))).collect();
            // No match, or a match block without conditions, takes every request.
            if ms.is_empty()
                || ms
                    .iter()
                    .any(|m| m.as_object().is_some_and(|o| o.keys().all(|k| k == "name")))
            {
                catch_all = true;
            }
            let dests: BTreeSet<&str> = arr(r, "/route")
                .iter()
                .filter_map(|d| s(d, "/destination/host"))
                .collect();
            let mut policy = policy_text(r);
            let limits = rate_limits(rules.dump, |host, rl_route| {
                dests.contains(host)
                    && rl_route.is_none_or(|n| {
                        s(r, "/name").is_some_and(|rn| n == rn || n.starts_with(&format!("{rn}.")))
                    })
            });
            if !limits.is_empty() {
                policy = if policy == "-" {
                    limits
                } else {
                    format!("{policy}; {limits}")
                };
            }
            if !mesh {
                policy.push_str(" (gateways only: not applied by sidecars)");
            }
            vs_rows.push((
                route_ports,
                dest_ports(r),
                RouteRow {
                    virtual_service: Some(key.clone()),
                    hosts: hosts.clone(),
                    kind: "http".into(),
                    route,
                    matches: matches_text(r, http_match),
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
        for kind in ["tcp", "tls"] {
            for (i, r) in arr(vs, &format!("/{kind}")).iter().enumerate() {
                let route_ports: Vec<u16> = arr(r, "/match")
                    .iter()
                    .filter_map(|m| port_u16(m.get("port")))
                    .collect();
                vs_rows.push((
                    route_ports,
                    dest_ports(r),
                    RouteRow {
                        virtual_service: Some(key.clone()),
                        hosts: hosts.clone(),
                        kind: kind.into(),
                        route: format!("spec.{kind}[{i}]"),
                        matches: matches_text(r, l4_match),
                        destination: weighted(r),
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
    if f.name.is_some() {
        return rows;
    }
    // Hosts without a VirtualService: ServiceEntries route to their endpoints.
    let with_vs: BTreeSet<String> = rules
        .vss
        .iter()
        .filter(|v| !arr(v, "/http").is_empty())
        .flat_map(|v| strings(v, "/hosts"))
        .collect();
    for se in rules.ses {
        let hosts: Vec<String> = strings(se, "/hosts")
            .into_iter()
            .filter(|h| !with_vs.contains(h))
            .collect();
        if hosts.is_empty() || !f.hosts_ok(&hosts) {
            continue;
        }
        let ports: Vec<u16> = arr(se, "/ports")
            .iter()
            .filter_map(|p| port_u16(p.get("number")))
            .collect();
        if let Some(p) = f.port {
            if !ports.is_empty() && !ports.contains(&p) {
                continue;
            }
        }
        let resolution = s(se, "/resolution").unwrap_or("NONE");
        let dest = if resolution == "NONE" && arr(se, "/endpoints").is_empty() {
            "original destination (resolution NONE)".to_string()
        } else {
            format!(
                "ServiceEntry {} endpoints ({resolution}); DestinationRule applies",
                key_of(se)
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
        let sidecar = rules
            .dump
            .pointer("/rules/sidecar")
            .filter(|x| x.is_object());
        let domain = s(rules.dump, "/rules/cluster_domain").unwrap_or("cluster.local");
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
            Some(sc) => format!(" (hosts under Sidecar {}'s egress)", key_of(sc)),
            None => String::new(),
        };
        rows.push(implicit(
            vec![format!("*.svc.{domain}")],
            "a Service without VirtualService",
            format!("the Service's endpoints (discovery), else the original destination; DestinationRule applies{scope}"),
        ));
        match sidecar {
            Some(sc) if sc.get("registry_only").and_then(Value::as_bool) == Some(true) => {
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
                        key_of(sc)
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

fn secs(d: std::time::Duration) -> String {
    format!("{}s", d.as_secs_f64())
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
    // ISTIO_MUTUAL as plain text).
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
        let src = format!("ServiceEntry {}", key_of(se));
        for h in strings(se, "/hosts") {
            for p in arr(se, "/ports") {
                if let Some(n) = port_u16(p.get("number")) {
                    ports.entry(h.clone()).or_default().insert(n);
                    add(&h, Some(n), None, src.clone());
                }
            }
        }
    }
    let mut dests: Vec<(String, Option<u16>, Option<String>, String)> = Vec::new();
    for vs in rules.vss {
        let src = format!("VirtualService {}", key_of(vs));
        for kind in ["/http", "/tcp", "/tls"] {
            for r in arr(vs, kind) {
                for d in arr(r, "/route") {
                    let d = d.get("destination").unwrap_or(&Value::Null);
                    if let Some(h) = s(d, "/host") {
                        dests.push((
                            h.to_string(),
                            port_u16(d.get("port")),
                            s(d, "/subset").map(str::to_string),
                            src.clone(),
                        ));
                    }
                }
                for m in arr(r, "/policy/mirrors") {
                    if let Some(h) = s(m, "/host") {
                        dests.push((
                            h.to_string(),
                            port_u16(m.get("port")),
                            s(m, "/subset").map(str::to_string),
                            format!("{src} (mirror)"),
                        ));
                    }
                }
            }
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
    for dr in &rules.drs {
        let src = format!("DestinationRule {}", dr.meta.key());
        let mut dr_ports: BTreeSet<u16> = ports.get(&dr.host).cloned().unwrap_or_default();
        let tps = std::iter::once(dr.traffic_policy.as_ref())
            .chain(dr.subsets.iter().map(|s| s.traffic_policy.as_ref()))
            .flatten();
        for tp in tps {
            for e in arr(tp, "/portLevelSettings") {
                if let Some(n) = port_u16(e.pointer("/port/number")) {
                    dr_ports.insert(n);
                }
            }
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
    for h in &rules.discovery_hosts {
        if rules
            .discovered
            .as_ref()
            .is_some_and(|d| d.host(h).is_some())
        {
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
    let mut live: BTreeMap<Key, Value> = BTreeMap::new();
    for d in arr(rules.dump, "/policies/destinations") {
        if let Some(h) = s(d, "/host") {
            let k: Key = (
                h.to_string(),
                port_u16(d.get("port")),
                s(d, "/subset").map(str::to_string),
            );
            add(&k.0, k.1, k.2.as_deref(), "in use".into());
            live.insert(k, d.clone());
        }
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
            connection_pool_stats: live.and_then(|d| d.get("connection_pool")).cloned(),
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
    let h = rules.discovered.as_ref()?.host(host)?;
    let p = h.ports.iter().find(|p| Some(p.port) == *port)?;
    let targets: Vec<String> = p.targets.iter().map(u16::to_string).collect();
    let mut out = match &p.name {
        Some(n) => format!("port {n}"),
        None => format!("port {}", p.port),
    };
    if !targets.is_empty() {
        out.push_str(&format!(" -> {}", targets.join(",")));
    }
    let count = match subset {
        None => p.count.to_string(),
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
                .filter(|e| sel.labels.iter().all(|(k, v)| e.labels.get(k) == Some(v)))
                .count();
            if p.omitted() > 0 {
                format!("at least {n} of {}", p.count)
            } else {
                format!("{n} of {}", p.count)
            }
        }
    };
    let plural = if p.count == 1 { "" } else { "s" };
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

fn health_index(dump: &Value) -> BTreeMap<(String, String), Tracked> {
    let mut m: BTreeMap<(String, String), Tracked> = BTreeMap::new();
    for d in arr(dump, "/policies/destinations") {
        let Some(host) = s(d, "/host") else { continue };
        let port = port_u16(d.get("port"));
        let subset = s(d, "/subset");
        for e in arr(d, "/outlier_detection/endpoints") {
            let Some(addr) = s(e, "/address") else {
                continue;
            };
            let total = e
                .get("ejections_total")
                .and_then(Value::as_u64)
                .unwrap_or(0);
            let h = if e.get("ejected").and_then(Value::as_bool) == Some(true) {
                let ms = e.get("ejected_for_ms").and_then(Value::as_u64).unwrap_or(0);
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
    let dns: BTreeMap<String, Vec<String>> = rules
        .dump
        .pointer("/rules/dns")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| {
                    (
                        k.clone(),
                        v.as_array()
                            .map(|a| {
                                a.iter()
                                    .filter_map(|x| x.as_str().map(str::to_string))
                                    .collect()
                            })
                            .unwrap_or_default(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
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
        let key = key_of(se);
        let resolution = s(se, "/resolution").unwrap_or("NONE");
        let eps = arr(se, "/endpoints");
        for host in strings(se, "/hosts") {
            for sp in arr(se, "/ports") {
                let Some(number) = port_u16(sp.get("number")) else {
                    continue;
                };
                let pname = s(sp, "/name");
                let target = port_u16(sp.get("target_port")).unwrap_or(number);
                let mut push =
                    |address: String, labels: BTreeMap<String, String>, weight, source| {
                        let subsets = subsets_of(rules, &host, &labels);
                        seen.insert((host.clone(), address.clone()));
                        rows.push(EndpointRow {
                            host: host.clone(),
                            port: Some(number),
                            health: health_of(&host, &address),
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
                    let addr = s(e, "/address").unwrap_or("?");
                    let port = pname
                        .and_then(|n| port_u16(e.pointer(&format!("/ports/{n}"))))
                        .unwrap_or(target);
                    let l = labels(e.get("labels"));
                    let w = e
                        .get("weight")
                        .and_then(Value::as_u64)
                        .and_then(|w| u32::try_from(w).ok());
                    if addr.parse::<std::net::IpAddr>().is_ok() {
                        push(
                            fmt_addr(addr, port),
                            l,
                            w,
                            format!("ServiceEntry {key} ({resolution})"),
                        );
                    } else {
                        match dns.get(addr) {
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
        let caps = rules
            .discovered
            .as_ref()
            .map(Discovered::caps)
            .unwrap_or_default();
        for p in &h.ports {
            for e in &p.endpoints {
                seen.insert((h.host.clone(), e.address.clone()));
                rows.push(EndpointRow {
                    host: h.host.clone(),
                    port: Some(p.port),
                    address: e.address.clone(),
                    subsets: subsets_of(rules, &h.host, &e.labels),
                    labels: e.labels.clone(),
                    weight: None,
                    health: health_of(&h.host, &e.address),
                    source: "Kubernetes discovery".into(),
                    pod: e.pod.clone(),
                });
            }
            let left_out = p.omitted();
            if p.count == 0 || left_out > 0 {
                rows.push(EndpointRow {
                    host: h.host.clone(),
                    port: Some(p.port),
                    address: "-".into(),
                    labels: BTreeMap::new(),
                    subsets: Vec::new(),
                    weight: None,
                    health: "-".into(),
                    source: if p.count == 0 {
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
    for h in &rules.discovery_hosts {
        let indexed = rules
            .discovered
            .as_ref()
            .is_some_and(|d| d.host(h).is_some());
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
    let discovery_on = rules
        .dump
        .pointer("/discovery/status")
        .is_some_and(|x| x.as_str() != Some("off"));
    let mut named: BTreeSet<String> = rules
        .vss
        .iter()
        .flat_map(|vs| {
            ["/http", "/tcp", "/tls"]
                .into_iter()
                .flat_map(move |k| arr(vs, k))
                .flat_map(|r| arr(r, "/route"))
                .filter_map(|d| s(d, "/destination/host").map(str::to_string))
        })
        .collect();
    named.extend(rules.drs.iter().map(|d| d.host.clone()));
    let se_hosts: BTreeSet<String> = rules
        .ses
        .iter()
        .flat_map(|se| strings(se, "/hosts"))
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

fn listeners_view(rules: &Rules<'_>, f: &Filters) -> Listeners {
    let mut out = Listeners {
        sniff_timeout_ms: rules.dump.get("sniff_timeout_ms").and_then(Value::as_u64),
        ..Default::default()
    };
    for l in arr(rules.dump, "/listeners") {
        let Some(address) = s(l, "/address") else {
            continue; // e.g. IPv6 listeners turned off
        };
        let name = s(l, "/name").unwrap_or("?").to_string();
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
        let destination = match (s(l, "/fixed_target"), inbound) {
            (Some(t), _) => format!("fixed target {t}"),
            (None, true) => format!(
                "the app at the original destination, from {}",
                s(l, "/source_address").unwrap_or("127.0.0.6")
            ),
            (None, false) => {
                "the original destination, routed by the rules (see routes)".to_string()
            }
        };
        out.listeners.push(ListenerRow {
            name,
            address: address.to_string(),
            bound: l.get("bound").and_then(Value::as_bool) == Some(true),
            handles: handles.to_string(),
            destination,
        });
    }
    let mut ports: BTreeMap<u16, BTreeMap<&'static str, Vec<String>>> = BTreeMap::new();
    for se in rules.ses {
        for p in arr(se, "/ports") {
            let Some(number) = port_u16(p.get("number")) else {
                continue;
            };
            let sp = ServicePort {
                number,
                protocol: s(p, "/protocol").map(str::to_string),
                name: s(p, "/name").map(str::to_string),
                target_port: None,
            };
            if let Some(proto) = remora_model::rules::service_port_protocol(&sp) {
                ports
                    .entry(number)
                    .or_default()
                    .entry(protocol_text(proto))
                    .or_default()
                    .push(format!(
                        "ServiceEntry {} ({})",
                        key_of(se),
                        strings(se, "/hosts").join(",")
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
pub fn build(dump: &Value, target: &str, view: View, f: &Filters) -> Result<ProxyConfig, String> {
    f.check(view)?;
    let proxy = proxy_info(dump, target)?;
    let rules = Rules::new(dump);
    let mut notes = Vec::new();
    if proxy.generation == 0 {
        notes.push("the proxy has loaded no rule set yet (generation 0)".to_string());
    }
    for i in arr(dump, "/rules/ignored") {
        notes.push(format!(
            "ignored {} {} ({} doc {}): {}",
            s(i, "/kind").unwrap_or("?"),
            s(i, "/name").unwrap_or("?"),
            s(i, "/file").unwrap_or("?"),
            i.get("document").and_then(Value::as_u64).unwrap_or(0),
            s(i, "/reason").unwrap_or("?")
        ));
    }
    for u in strings(dump, "/rules/unknown_fields") {
        notes.push(format!("unknown field, accepted and ignored: {u}"));
    }
    for f in strings(dump, "/rules/skipped_files") {
        notes.push(format!("file not read: {f}"));
    }
    if let Some(sc) = dump.pointer("/rules/sidecar").filter(|x| x.is_object()) {
        let egress: Vec<String> = arr(sc, "/egress")
            .iter()
            .map(|l| {
                let hosts: Vec<String> = arr(l, "/hosts")
                    .iter()
                    .map(|h| {
                        format!(
                            "{}/{}",
                            s(h, "/namespace").unwrap_or("?"),
                            s(h, "/dns").unwrap_or("?")
                        )
                    })
                    .collect();
                match port_u16(l.get("port")) {
                    Some(p) => format!("port {p}: {}", hosts.join(",")),
                    None => hosts.join(","),
                }
            })
            .collect();
        let mode = if sc.get("registry_only").and_then(Value::as_bool) == Some(true) {
            "REGISTRY_ONLY"
        } else {
            "ALLOW_ANY"
        };
        notes.push(format!(
            "Sidecar {} applies: egress {}; outboundTrafficPolicy {mode}",
            key_of(sc),
            if egress.is_empty() {
                "(all hosts)".to_string()
            } else {
                egress.join("; ")
            }
        ));
    }
    let discovery_on = dump
        .pointer("/discovery/status")
        .is_some_and(|x| x.as_str() != Some("off"));
    if view.shows(View::Endpoints) || view.shows(View::Clusters) {
        match &rules.discovered {
            Some(d) if d.omitted > 0 => {
                let hosts: Vec<&str> = d
                    .hosts
                    .iter()
                    .filter(|h| h.ports.iter().any(|p| p.omitted() > 0))
                    .filter(|h| f.host_ok(&h.host))
                    .map(|h| h.host.as_str())
                    .collect();
                if !hosts.is_empty() {
                    const SHOWN: usize = 5;
                    let more = hosts.len().saturating_sub(SHOWN);
                    notes.push(format!(
                        "Kubernetes discovery: {}; {} endpoints are not listed (hosts {}{})",
                        d.caps(),
                        d.omitted,
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
        notes,
    })
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
    use serde_json::json;

    /// A `/config_dump` the real proxy wrote (Bookinfo rules plus policies and a ServiceEntry),
    /// recorded as the pods/proxy answer of the CLI contract fixture.
    fn real_dump() -> Value {
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
                    .ends_with("/reviews-v1-5d8f9c7b4-k2x8p:15020/proxy/config_dump")
            })
            .unwrap()["body"]
            .clone()
    }

    fn all(dump: &Value, f: &Filters) -> ProxyConfig {
        build(dump, "bookinfo/reviews", View::All, f).unwrap()
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
        let dump = json!({
            "version": "0.1.0", "generation": 4, "hash": "abc", "source": "files:/r",
            "rules": {
                "cluster_domain": "cluster.local",
                "virtual_services": [{
                    "meta": {"name": "db", "namespace": "shop"},
                    "hosts": ["db.shop.svc.cluster.local"], "http": [],
                    "tcp": [{"match": [{"port": 5432}], "route": [{"destination": {"host": "db.shop.svc.cluster.local", "subset": "primary", "port": 5432}}]}],
                    "applies_to_mesh": true
                }],
                "destination_rules": [], "service_entries": [],
                "sidecar": {"meta": {"name": "default", "namespace": "shop"}, "egress": [], "registry_only": true},
                "ignored": [{"file": "gw.yaml", "document": 1, "kind": "Gateway", "name": "gw", "reason": "gateways are not served by sidecars"}],
                "dns": {}
            },
            "listeners": [], "sniff_timeout_ms": 200,
            "policies": {"destinations": [{"host": "web.shop.svc.cluster.local", "subset": null, "port": 80,
                "policy": {}, "connection_pool": {"active_requests": 1},
                "outlier_detection": {"config": {}, "endpoints": [
                    {"address": "10.0.0.7:8080", "ejected": true, "ejected_for_ms": 12500, "consecutive_5xx": 0, "consecutive_gateway_errors": 0, "ejection_multiplier": 1, "ejections_total": 1},
                    {"address": "10.0.0.8:8080", "ejected": false, "ejected_for_ms": 0, "consecutive_5xx": 1, "consecutive_gateway_errors": 0, "ejection_multiplier": 0, "ejections_total": 0}
                ]}}]},
            "discovery": {"status": {"state": "synced"}, "hosts": ["web.shop.svc.cluster.local", "api.shop.svc.cluster.local"]}
        });
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
    fn discovery_dump() -> Value {
        json!({
            "version": "0.1.0", "generation": 2, "hash": "abc", "source": "files:/r",
            "rules": {
                "cluster_domain": "cluster.local",
                "virtual_services": [], "service_entries": [], "dns": {},
                "destination_rules": [{
                    "meta": {"name": "reviews", "namespace": "shop"},
                    "host": "reviews.shop.svc.cluster.local",
                    "subsets": [{"name": "v1", "labels": {"version": "v1"}},
                                {"name": "v2", "labels": {"version": "v2"}}]
                }]
            },
            "listeners": [],
            "policies": {"destinations": [{"host": "reviews.shop.svc.cluster.local", "subset": "v2", "port": 9080,
                "policy": {}, "connection_pool": {"active_requests": 0},
                "outlier_detection": {"config": {}, "endpoints": [
                    {"address": "10.0.0.2:8080", "ejected": true, "ejected_for_ms": 3000, "ejections_total": 2}
                ]}}]},
            "discovery": {
                "status": {"scope": "[shop]"},
                "hosts": ["big.shop.svc.cluster.local", "empty.shop.svc.cluster.local", "reviews.shop.svc.cluster.local"],
                "index": {
                    "limits": {"endpoints_per_host": 2, "endpoints_total": 5000},
                    "endpoints_listed": 4, "endpoints_omitted": 3, "hosts_truncated": 1,
                    "hosts": [
                        {"host": "big.shop.svc.cluster.local", "endpoints_omitted": 3, "ports": [
                            {"port": 80, "target_ports": [8080], "endpoint_count": 5, "endpoints": [
                                {"address": "10.1.0.1:8080", "pod": "big-1"},
                                {"address": "10.1.0.2:8080", "pod": "big-2"}]}]},
                        {"host": "empty.shop.svc.cluster.local", "endpoints_omitted": 0, "ports": [
                            {"port": 80, "name": "http", "target_ports": [], "endpoint_count": 0, "endpoints": []}]},
                        {"host": "reviews.shop.svc.cluster.local", "endpoints_omitted": 0, "ports": [
                            {"port": 9080, "name": "http", "target_ports": [8080], "endpoint_count": 2, "endpoints": [
                                {"address": "10.0.0.1:8080", "pod": "reviews-v1-x", "labels": {"app": "reviews", "version": "v1"}},
                                {"address": "10.0.0.2:8080", "pod": "reviews-v2-y", "labels": {"app": "reviews", "version": "v2"}}]}]}
                    ]
                }
            }
        })
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
        let vs = |m: Value| {
            json!({"generation": 1, "hash": "h", "rules": {"virtual_services": [{
                "meta": {"name": "web", "namespace": "shop"}, "hosts": ["web.shop.svc.cluster.local"],
                "http": [{"match": m, "route": [{"destination": {"host": "web.shop.svc.cluster.local"}}]}],
                "applies_to_mesh": true}]}})
        };
        let no_match = |d: &Value| {
            build(d, "t", View::Routes, &Filters::default())
                .unwrap()
                .routes
                .unwrap()
                .iter()
                .any(|r| r.matches == "(no route matched)")
        };
        assert!(!no_match(&vs(json!([{}]))));
        assert!(!no_match(&vs(json!([{"name": "all"}]))));
        assert!(no_match(&vs(json!([{"uri": {"prefix": "/a"}}]))));
    }

    #[test]
    fn bad_input_and_flags() {
        let e = build(&json!({"x": 1}), "shop/web", View::All, &Filters::default()).unwrap_err();
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
