//! The Istio kinds as the model holds them: what `rules::decode` builds from the YAML documents,
//! what `route` evaluates and what `/config_dump` carries. Host names here are already fully
//! qualified (short names resolved in the resource's namespace), regexes compiled, durations
//! parsed. The DestinationRule, whose `trafficPolicy` is policy configuration, is in
//! `policy::traffic` (this module sits below `policy`).

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use std::net::SocketAddr;

pub use crate::duration::{parse_duration, parse_duration_days};

/// Where a resource came from, for messages and `/config_dump`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    pub kind: String,
    pub api_version: String,
    pub name: String,
    pub namespace: String,
    /// File name inside the rules directory.
    pub file: String,
    /// 1-based document index inside the file.
    pub document: usize,
}

impl Meta {
    /// `namespace/name`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// Istio's `StringMatch` (`exact`, `prefix`, `regex`); an empty match `{}` tests presence.
#[derive(Clone, Debug)]
pub enum StringMatch {
    Exact(String),
    Prefix(String),
    /// The source as written and the compiled full-match form `^(?:src)$`.
    Regex(String, regex::Regex),
    /// `{}`: the value is present (any value).
    Present,
}

impl PartialEq for StringMatch {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (StringMatch::Exact(a), StringMatch::Exact(b)) => a == b,
            (StringMatch::Prefix(a), StringMatch::Prefix(b)) => a == b,
            (StringMatch::Regex(a, _), StringMatch::Regex(b, _)) => a == b,
            (StringMatch::Present, StringMatch::Present) => true,
            _ => false,
        }
    }
}

impl Serialize for StringMatch {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(None)?;
        match self {
            StringMatch::Exact(v) => m.serialize_entry("exact", v)?,
            StringMatch::Prefix(v) => m.serialize_entry("prefix", v)?,
            StringMatch::Regex(v, _) => m.serialize_entry("regex", v)?,
            StringMatch::Present => {}
        }
        m.end()
    }
}

/// Compile an Istio `regex` as Envoy applies it: the whole value must match (`^(?:src)$`), with
/// a bounded program size; the error names the pattern and the compiler's reason.
pub fn compile_regex(src: &str) -> Result<regex::Regex, String> {
    regex::RegexBuilder::new(&format!("^(?:{src})$"))
        .size_limit(1 << 20)
        .build()
        .map_err(|e| {
            let msg = e.to_string();
            let last = msg
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("")
                .trim()
                .to_string();
            format!("invalid regex {src:?}: {last}")
        })
}

impl<'de> Deserialize<'de> for StringMatch {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let m = BTreeMap::<String, String>::deserialize(d)?;
        let mut it = m.into_iter();
        let out = match it.next() {
            None => StringMatch::Present,
            Some((k, v)) => match k.as_str() {
                "exact" => StringMatch::Exact(v),
                "prefix" => StringMatch::Prefix(v),
                "regex" => {
                    let re = compile_regex(&v).map_err(serde::de::Error::custom)?;
                    StringMatch::Regex(v, re)
                }
                other => {
                    return Err(serde::de::Error::custom(format!(
                        "{other:?} is not exact, prefix or regex"
                    )))
                }
            },
        };
        if let Some((k, _)) = it.next() {
            return Err(serde::de::Error::custom(format!(
                "one of exact, prefix or regex expected, also got {k:?}"
            )));
        }
        Ok(out)
    }
}

impl StringMatch {
    /// Does `value` match? `ignore_case` applies to exact and prefix (Istio's `ignoreUriCase`).
    pub fn matches(&self, value: &str, ignore_case: bool) -> bool {
        match self {
            StringMatch::Exact(e) => {
                if ignore_case {
                    e.eq_ignore_ascii_case(value)
                } else {
                    e == value
                }
            }
            StringMatch::Prefix(p) => {
                if ignore_case {
                    value.len() >= p.len()
                        && value.is_char_boundary(p.len())
                        && value[..p.len()].eq_ignore_ascii_case(p)
                } else {
                    value.starts_with(p.as_str())
                }
            }
            StringMatch::Regex(_, re) => re.is_match(value),
            StringMatch::Present => true,
        }
    }
}

/// One `HTTPMatchRequest`: all its conditions must hold.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct HttpMatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri: Option<StringMatch>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheme: Option<StringMatch>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<StringMatch>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authority: Option<StringMatch>,
    /// Lower-cased header names.
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        with = "crate::serde_util::pairs"
    )]
    pub headers: Vec<(String, StringMatch)>,
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        with = "crate::serde_util::pairs"
    )]
    pub without_headers: Vec<(String, StringMatch)>,
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        with = "crate::serde_util::pairs"
    )]
    pub query_params: Vec<(String, StringMatch)>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub source_labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gateways: Vec<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ignore_uri_case: bool,
}

impl HttpMatch {
    /// True when the block has no condition at all (matches every request).
    pub fn is_catch_all(&self) -> bool {
        self.uri.is_none()
            && self.scheme.is_none()
            && self.method.is_none()
            && self.authority.is_none()
            && self.headers.is_empty()
            && self.without_headers.is_empty()
            && self.query_params.is_empty()
            && self.port.is_none()
            && self.source_labels.is_empty()
            && self.source_namespace.is_none()
            && self.gateways.is_empty()
    }
}

/// A route destination (`destination`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Destination {
    /// Fully qualified host.
    pub host: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subset: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
}

/// Request and response header operations.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Headers {
    pub request: HeaderOps,
    pub response: HeaderOps,
}

impl Headers {
    pub fn is_empty(&self) -> bool {
        self == &Headers::default()
    }
}

/// `HTTPRouteDestination`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WeightedDestination {
    pub destination: Destination,
    /// As written; `None` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<u32>,
    #[serde(default, skip_serializing_if = "Headers::is_empty")]
    pub headers: Headers,
}

/// `HTTPRewrite`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Rewrite {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authority: Option<String>,
    /// `uriRegexRewrite`: the pattern and the replacement (Istio's `\1` already turned into `${1}`).
    #[serde(skip)]
    pub uri_regex: Option<(regex::Regex, String)>,
}

impl PartialEq for Rewrite {
    fn eq(&self, other: &Self) -> bool {
        self.uri == other.uri
            && self.authority == other.authority
            && self.uri_regex.as_ref().map(|(r, s)| (r.as_str(), s))
                == other.uri_regex.as_ref().map(|(r, s)| (r.as_str(), s))
    }
}

/// `HTTPRedirect`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Redirect {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authority: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// `derivePort: FROM_REQUEST_PORT`.
    pub derive_port_from_request: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheme: Option<String>,
    /// `redirectCode` (default 301).
    pub code: u16,
}

/// `HTTPDirectResponse`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirectResponse {
    pub status: u16,
    pub body: String,
}

/// One `HTTPRoute`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HttpRoute {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Field path of this route, e.g. `spec.http[1]`.
    #[serde(skip)]
    pub path: String,
    /// `match`: ORed; empty = every request.
    #[serde(rename = "match", default, skip_serializing_if = "Vec::is_empty")]
    pub matches: Vec<HttpMatch>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub route: Vec<WeightedDestination>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redirect: Option<Redirect>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direct_response: Option<DirectResponse>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rewrite: Option<Rewrite>,
    #[serde(default, skip_serializing_if = "Headers::is_empty")]
    pub headers: Headers,
    pub policy: Policy,
}

/// A VirtualService.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VirtualService {
    pub meta: Meta,
    /// Fully qualified (short names resolved in the VirtualService's namespace); may be wildcards.
    pub hosts: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gateways: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub export_to: Vec<String>,
    pub http: Vec<HttpRoute>,
    /// `tcp` routes (for opaque TCP to this host; see `route::route_tcp`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tcp: Vec<L4Route>,
    /// `tls` routes (by SNI; see `route::route_tcp`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tls: Vec<L4Route>,
    /// Whether this VirtualService applies to sidecars (`gateways` absent or contains `mesh`,
    /// or some match names `mesh`).
    pub applies_to_mesh: bool,
}

/// One `L4MatchAttributes` / `TLSMatchAttributes` block: all its conditions must hold.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct L4Match {
    /// `sniHosts` (TLS routes only; required there): lower-cased, may be wildcards.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sni_hosts: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        with = "crate::serde_util::nets"
    )]
    pub destination_subnets: Vec<ipnet::IpNet>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub source_labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gateways: Vec<String>,
}

/// A `tcp` or `tls` route.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct L4Route {
    /// Field path, e.g. `spec.tcp[0]`.
    #[serde(skip)]
    pub path: String,
    #[serde(rename = "match", default, skip_serializing_if = "Vec::is_empty")]
    pub matches: Vec<L4Match>,
    pub route: Vec<WeightedDestination>,
}

/// ServiceEntry `resolution`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Resolution {
    None,
    Static,
    Dns,
    DnsRoundRobin,
}

/// A ServiceEntry port.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServicePort {
    pub number: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_port: Option<u16>,
}

/// A ServiceEntry endpoint (`WorkloadEntry` shape).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkloadEntry {
    /// IP literal (STATIC) or host name / IP (DNS).
    pub address: String,
    /// Port name → port number.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub ports: BTreeMap<String, u16>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<u32>,
}

/// A `WorkloadEntry` object (networking.istio.io): a workload outside Kubernetes, an endpoint of
/// the ServiceEntries of its namespace whose `workloadSelector` its labels match. `network`,
/// `locality` and `serviceAccount` are accepted and not applied.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkloadEntryObject {
    pub meta: Meta,
    pub entry: WorkloadEntry,
}

/// A ServiceEntry.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ServiceEntry {
    pub meta: Meta,
    /// Fully qualified; may be wildcards.
    pub hosts: Vec<String>,
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        with = "crate::serde_util::nets"
    )]
    pub addresses: Vec<ipnet::IpNet>,
    pub ports: Vec<ServicePort>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    pub resolution: Resolution,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<WorkloadEntry>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub export_to: Vec<String>,
    /// `workloadSelector.labels`: the WorkloadEntries of the ServiceEntry's namespace with these
    /// labels are its endpoints (filled in by the loader, [`crate::rules::load`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload_selector: Option<BTreeMap<String, String>>,
}

/// One `egress[].hosts` entry: `namespace/dnsName`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EgressHost {
    /// A namespace, `*` any, `~` none, or `.`: the namespace of the workload the Sidecar applies
    /// to (Istio's meaning, also for the root namespace's default Sidecar); [`Sidecar::for_namespace`]
    /// replaces it.
    pub namespace: String,
    /// `*`, `*.suffix` or a FQDN.
    pub dns: String,
}

impl Sidecar {
    /// This Sidecar as it applies to a workload of namespace `ns`: `.` in its egress hosts means
    /// `ns` (for a Sidecar of the workload's own namespace that is the Sidecar's namespace; for
    /// the root namespace's default, each workload's own).
    pub fn for_namespace(&self, ns: &str) -> Sidecar {
        let mut sc = self.clone();
        for h in sc.egress.iter_mut().flat_map(|l| l.hosts.iter_mut()) {
            if h.namespace == "." {
                h.namespace = ns.to_string();
            }
        }
        sc
    }
}

/// A Sidecar `egress` listener.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EgressListener {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    pub hosts: Vec<EgressHost>,
}

/// A Sidecar.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sidecar {
    pub meta: Meta,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload_selector: Option<BTreeMap<String, String>>,
    pub egress: Vec<EgressListener>,
    /// `outboundTrafficPolicy.mode`: `ALLOW_ANY` (default) or `REGISTRY_ONLY`.
    pub registry_only: bool,
}

/// A document that was read but not applied (Gateway, unknown kind, other gateways' VS).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ignored {
    pub file: String,
    pub document: usize,
    pub kind: String,
    pub name: String,
    pub reason: String,
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Endpoint {
    pub addr: SocketAddr,
    pub labels: BTreeMap<String, String>,
    pub weight: u32,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HeaderOps {
    #[serde(with = "crate::serde_util::pairs")]
    pub set: Vec<(String, String)>,
    #[serde(with = "crate::serde_util::pairs")]
    pub add: Vec<(String, String)>,
    pub remove: Vec<String>,
}

/// The per-route policies as parsed from the VirtualService (applied by the policies work).
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Policy {
    /// `timeout` (Istio: none by default).
    #[serde(with = "crate::serde_util::opt_secs")]
    pub timeout: Option<Duration>,
    pub retries: Option<RetryPolicy>,
    pub fault: Option<FaultPolicy>,
    /// `mirror` + `mirrorPercentage`, and `mirrors[]`.
    pub mirrors: Vec<Mirror>,
}

/// `retries`.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RetryPolicy {
    pub attempts: u32,
    #[serde(with = "crate::serde_util::opt_secs")]
    pub per_try_timeout: Option<Duration>,
    /// `retryOn`, split on commas (e.g. `5xx`, `connect-failure`, `503`).
    pub retry_on: Vec<String>,
    pub retry_remote_localities: Option<bool>,
}

/// `fault`.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct FaultPolicy {
    pub delay: Option<FaultDelay>,
    pub abort: Option<FaultAbort>,
}

#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct FaultDelay {
    #[serde(with = "crate::serde_util::secs")]
    pub fixed_delay: Duration,
    /// 0.0 ..= 100.0 (Istio: 100 when unset).
    pub percentage: f64,
}

#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct FaultAbort {
    pub http_status: Option<u16>,
    pub grpc_status: Option<String>,
    /// 0.0 ..= 100.0 (Istio: 100 when unset).
    pub percentage: f64,
}

/// One mirror target.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Mirror {
    /// FQDN.
    pub host: String,
    pub subset: Option<String>,
    pub port: Option<u16>,
    /// 0.0 ..= 100.0 (Istio: 100 when unset).
    pub percentage: f64,
}

/// The root namespace when none is configured (remora's own namespace; Istio's default is
/// `istio-system`): a Sidecar, PeerAuthentication, AuthorizationPolicy or RequestAuthentication
/// without selector there is the mesh-wide default, and its DestinationRules are the last
/// fallback. The one definition of the default: the controller's, the proxy's and the CLI's
/// `--root-namespace` all start from it.
pub const DEFAULT_ROOT_NAMESPACE: &str = "remora-system";

/// Is `value` usable as a root namespace (a namespace name: a DNS-1123 label)? `Err` is the
/// reason, for a line naming the flag or field and the value.
pub fn check_root_namespace(value: &str) -> Result<(), String> {
    let label = !value.is_empty()
        && value.len() <= 63
        && value
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !value.starts_with('-')
        && !value.ends_with('-');
    if label {
        Ok(())
    } else {
        Err(format!(
            "{value:?} is not a namespace name (a DNS label: lowercase letters, digits and '-', \
             at most 63 characters, not starting or ending with '-')"
        ))
    }
}

/// [`check_root_namespace`] as a command-line value parser (`--root-namespace`).
pub fn parse_root_namespace(value: &str) -> Result<String, String> {
    check_root_namespace(value).map(|()| value.to_string())
}

/// Where the proxy runs: its namespace (for short names), the cluster domain, its pod labels
/// (for `sourceLabels`) and the mesh's root namespace (mesh-wide policies and defaults).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoadContext {
    pub namespace: String,
    pub cluster_domain: String,
    pub pod_labels: BTreeMap<String, String>,
    pub root_namespace: String,
}

impl Default for LoadContext {
    fn default() -> Self {
        LoadContext {
            namespace: "default".to_string(),
            cluster_domain: "cluster.local".to_string(),
            pod_labels: BTreeMap::new(),
            root_namespace: DEFAULT_ROOT_NAMESPACE.to_string(),
        }
    }
}

/// Why a rule set was rejected: file, document (1-based; 0 = the whole file), field path and
/// reason. Displays as one line: `FILE doc N: FIELD: reason`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoadError {
    pub file: String,
    pub document: usize,
    pub field: String,
    pub reason: String,
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if self.document > 0 {
            write!(f, " doc {}", self.document)?;
        }
        if !self.field.is_empty() {
            write!(f, ": {}", self.field)?;
        }
        write!(f, ": {}", self.reason)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn string_match_semantics() {
        let re = regex::Regex::new("^(?:/api/v[0-9]+)$").unwrap();
        let rx = StringMatch::Regex("/api/v[0-9]+".into(), re);
        let cases: Vec<(StringMatch, &str, bool, bool)> = vec![
            (StringMatch::Exact("/a".into()), "/a", false, true),
            (StringMatch::Exact("/a".into()), "/A", false, false),
            (StringMatch::Exact("/a".into()), "/A", true, true),
            (StringMatch::Prefix("/st".into()), "/static/x", false, true),
            (StringMatch::Prefix("/st".into()), "/STATIC", false, false),
            (StringMatch::Prefix("/st".into()), "/STATIC", true, true),
            (StringMatch::Prefix("/static".into()), "/st", true, false),
            (rx.clone(), "/api/v12", false, true),
            (rx.clone(), "/api/v12/x", false, false),
            (rx, "x/api/v1", false, false),
            (StringMatch::Present, "", false, true),
        ];
        for (m, v, ic, want) in cases {
            assert_eq!(m.matches(v, ic), want, "{m:?} {v} {ic}");
        }
    }

    #[test]
    fn root_namespace_names() {
        for ok in [DEFAULT_ROOT_NAMESPACE, "istio-system", "a", "mesh-1"] {
            assert_eq!(check_root_namespace(ok), Ok(()), "{ok}");
        }
        let long = "a".repeat(64);
        for bad in ["", "Istio-System", "-a", "a-", "a.b", "a_b", long.as_str()] {
            let err = check_root_namespace(bad).unwrap_err();
            assert!(
                err.starts_with(&format!("{bad:?} is not a namespace name")),
                "{err}"
            );
        }
    }
}
