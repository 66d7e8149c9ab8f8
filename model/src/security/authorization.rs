//! AuthorizationPolicy: the typed policy, Istio's validation and the pure evaluation of a
//! request against the policies that apply to a workload.

use std::borrow::Cow;
use std::cell::OnceCell;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::decode::{
    check_selector, no_empty, parse_port, refuse_target_refs, IpBlock, PortString, SpecError,
};
use super::{scope_of, string_match, RuleRef, Scope, WorkloadSelector};
use crate::kinds::Meta;

/// `spec.action`.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Action {
    #[default]
    Allow,
    Deny,
    Audit,
    /// Refused at load: external authorizers are not supported.
    Custom,
}

/// `spec.provider` (CUSTOM only).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Provider {
    #[serde(default)]
    pub name: String,
}

/// `rules[].from[].source`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct Source {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub principals: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub not_principals: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub request_principals: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub not_request_principals: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub not_namespaces: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ip_blocks: Vec<IpBlock>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub not_ip_blocks: Vec<IpBlock>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub remote_ip_blocks: Vec<IpBlock>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub not_remote_ip_blocks: Vec<IpBlock>,
    /// `ns/name`, or `name` (the policy's namespace).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub service_accounts: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub not_service_accounts: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub trust_domains: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub not_trust_domains: Vec<String>,
}

/// `rules[].from[]`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct From {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<Source>,
}

/// `rules[].to[].operation`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct Operation {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub not_hosts: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<PortString>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub not_ports: Vec<PortString>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub not_methods: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub not_paths: Vec<String>,
}

/// `rules[].to[]`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct To {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operation: Option<Operation>,
}

/// `rules[].when[]`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    #[serde(default)]
    pub key: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_values: Vec<String>,
}

/// `rules[]`. `from`/`to` are `None` when absent (an empty list is an error, as in Istio).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Rule {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<Vec<From>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<Vec<To>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub when: Vec<Condition>,
}

/// `spec` of an AuthorizationPolicy.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AuthorizationPolicySpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<WorkloadSelector>,
    #[serde(default)]
    pub action: Action,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<Provider>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<Rule>,
    /// Refused (gateway/waypoint attachment); kept only to name it in the error.
    #[serde(default, skip_serializing)]
    pub target_ref: Option<Value>,
    #[serde(default, skip_serializing)]
    pub target_refs: Option<Value>,
}

/// One AuthorizationPolicy as loaded.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthorizationPolicy {
    pub meta: Meta,
    pub scope: Scope,
    /// `metadata.annotations["istio.io/dry-run"] == "true"`: evaluated apart (shadow result),
    /// never enforced.
    #[serde(default)]
    pub dry_run: bool,
    pub spec: AuthorizationPolicySpec,
}

impl AuthorizationPolicy {
    pub fn new(
        meta: Meta,
        spec: AuthorizationPolicySpec,
        dry_run: bool,
        root_namespace: &str,
    ) -> Result<Self, SpecError> {
        validate(&spec)?;
        Ok(AuthorizationPolicy {
            scope: scope_of(&meta.namespace, spec.selector.as_ref(), root_namespace),
            meta,
            dry_run,
            spec,
        })
    }
}

/// The `when` keys Istio defines (besides `request.headers[..]` and `request.auth.claims[..]`).
const PLAIN_KEYS: &[&str] = &[
    "source.ip",
    "remote.ip",
    "source.namespace",
    "source.principal",
    "request.auth.principal",
    "request.auth.audiences",
    "request.auth.presenter",
    "destination.ip",
    "destination.port",
    "connection.sni",
];

/// A `when` key, parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Key {
    Header(String),
    Claims(Vec<String>),
    Plain(&'static str),
}

/// Parse a `when` key as Istio's validation does.
pub fn parse_key(key: &str) -> Result<Key, String> {
    if let Some(k) = PLAIN_KEYS.iter().find(|k| **k == key) {
        return Ok(Key::Plain(k));
    }
    if let Some(rest) = key.strip_prefix("request.headers") {
        return match rest.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
            Some(name) if !name.is_empty() && !name.contains(['[', ']']) => {
                Ok(Key::Header(name.to_ascii_lowercase()))
            }
            _ => Err(format!("{key:?}: expected request.headers[<header name>]")),
        };
    }
    if let Some(rest) = key.strip_prefix("request.auth.claims") {
        let mut names = Vec::new();
        let mut r = rest;
        while let Some(after) = r.strip_prefix('[') {
            let Some(end) = after.find(']') else { break };
            names.push(after[..end].to_string());
            r = &after[end + 1..];
        }
        if !r.is_empty() || names.is_empty() || names.iter().any(|n| n.is_empty()) {
            return Err(format!(
                "{key:?}: expected request.auth.claims[<claim>] or nested request.auth.claims[<a>][<b>]"
            ));
        }
        return Ok(Key::Claims(names));
    }
    if key.starts_with("experimental.envoy.filters.") {
        return Err(format!(
            "{key:?}: Envoy filter metadata conditions are not supported"
        ));
    }
    Err(format!("{key:?}: unknown attribute (Istio's keys: request.headers[..], source.ip, remote.ip, source.namespace, source.principal, request.auth.principal, request.auth.audiences, request.auth.presenter, request.auth.claims[..], destination.ip, destination.port, connection.sni)"))
}

/// Istio's validation of an AuthorizationPolicy spec (after decoding, which checked types,
/// enums, CIDRs and ports).
pub fn validate(spec: &AuthorizationPolicySpec) -> Result<(), SpecError> {
    refuse_target_refs(&spec.target_ref, &spec.target_refs)?;
    check_selector(spec.selector.as_ref())?;
    match (spec.action, &spec.provider) {
        (Action::Custom, _) => {
            return Err(SpecError::new(
                "spec.action",
                "CUSTOM: external authorizers are not supported",
            ))
        }
        (_, Some(_)) => {
            return Err(SpecError::new(
                "spec.provider",
                "provider is only allowed with action CUSTOM",
            ))
        }
        _ => {}
    }
    for (i, rule) in spec.rules.iter().enumerate() {
        let r = format!("spec.rules[{i}]");
        if let Some(from) = &rule.from {
            if from.is_empty() {
                return Err(SpecError::new(
                    format!("{r}.from"),
                    "must not be empty (remove it to match every source)",
                ));
            }
            for (j, f) in from.iter().enumerate() {
                let p = format!("{r}.from[{j}].source");
                let Some(s) = &f.source else {
                    return Err(SpecError::new(p, "required field is missing"));
                };
                if *s == Source::default() {
                    return Err(SpecError::new(p, "must not be empty"));
                }
                for (name, list) in [
                    ("principals", &s.principals),
                    ("notPrincipals", &s.not_principals),
                    ("requestPrincipals", &s.request_principals),
                    ("notRequestPrincipals", &s.not_request_principals),
                    ("namespaces", &s.namespaces),
                    ("notNamespaces", &s.not_namespaces),
                    ("serviceAccounts", &s.service_accounts),
                    ("notServiceAccounts", &s.not_service_accounts),
                    ("trustDomains", &s.trust_domains),
                    ("notTrustDomains", &s.not_trust_domains),
                ] {
                    no_empty(&format!("{p}.{name}"), list)?;
                }
                let sa = !s.service_accounts.is_empty() || !s.not_service_accounts.is_empty();
                let pn = !s.principals.is_empty()
                    || !s.not_principals.is_empty()
                    || !s.namespaces.is_empty()
                    || !s.not_namespaces.is_empty();
                if sa && pn {
                    return Err(SpecError::new(
                        format!("{p}.serviceAccounts"),
                        "cannot set serviceAccounts with namespaces or principals",
                    ));
                }
                for (name, list) in [
                    ("serviceAccounts", &s.service_accounts),
                    ("notServiceAccounts", &s.not_service_accounts),
                ] {
                    if list.len() > 16 {
                        return Err(SpecError::new(
                            format!("{p}.{name}"),
                            "at most 16 service accounts",
                        ));
                    }
                    if let Some((k, v)) = list
                        .iter()
                        .enumerate()
                        .find(|(_, v)| v.len() > 320 || v.split('/').count() > 2)
                    {
                        return Err(SpecError::new(
                            format!("{p}.{name}[{k}]"),
                            format!("{v:?}: expected <namespace>/<name> or <name>"),
                        ));
                    }
                }
            }
        }
        if let Some(to) = &rule.to {
            if to.is_empty() {
                return Err(SpecError::new(
                    format!("{r}.to"),
                    "must not be empty (remove it to match every operation)",
                ));
            }
            for (j, t) in to.iter().enumerate() {
                let p = format!("{r}.to[{j}].operation");
                let Some(o) = &t.operation else {
                    return Err(SpecError::new(p, "required field is missing"));
                };
                if *o == Operation::default() {
                    return Err(SpecError::new(p, "must not be empty"));
                }
                for (name, list) in [
                    ("hosts", &o.hosts),
                    ("notHosts", &o.not_hosts),
                    ("methods", &o.methods),
                    ("notMethods", &o.not_methods),
                    ("paths", &o.paths),
                    ("notPaths", &o.not_paths),
                ] {
                    no_empty(&format!("{p}.{name}"), list)?;
                }
            }
        }
        for (j, c) in rule.when.iter().enumerate() {
            let p = format!("{r}.when[{j}]");
            if c.key.is_empty() {
                return Err(SpecError::new(format!("{p}.key"), "must not be empty"));
            }
            let key = parse_key(&c.key).map_err(|e| SpecError::new(format!("{p}.key"), e))?;
            if c.values.is_empty() && c.not_values.is_empty() {
                return Err(SpecError::new(
                    p,
                    format!(
                        "at least one of values or notValues must be set for key {}",
                        c.key
                    ),
                ));
            }
            for (name, list) in [("values", &c.values), ("notValues", &c.not_values)] {
                no_empty(&format!("{p}.{name}"), list)?;
                for (k, v) in list.iter().enumerate() {
                    let bad = match key {
                        Key::Plain("source.ip" | "remote.ip" | "destination.ip") => {
                            IpBlock::parse(v).err()
                        }
                        Key::Plain("destination.port") => parse_port(v).err(),
                        _ => None,
                    };
                    if let Some(reason) = bad {
                        return Err(SpecError::new(format!("{p}.{name}[{k}]"), reason));
                    }
                }
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Evaluation

/// A verified JWT's facts (`request.auth.*`), as the proxy's RequestAuthentication step
/// provides them.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct JwtAuth {
    /// `iss/sub`.
    pub principal: String,
    pub audiences: Vec<String>,
    /// `azp`.
    pub presenter: Option<String>,
    /// The token's payload.
    pub claims: Value,
}

/// What the HTTP layer knows of a request, borrowed from it (nothing is copied per request).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HttpRequest<'a> {
    /// The `Host`/`:authority`, port included if sent.
    pub host: &'a str,
    pub method: &'a str,
    /// The path as received (query included); matched after normalization.
    pub path: &'a str,
    /// Header names in any case; only filled when a rule reads headers (`reads`).
    pub headers: Vec<(&'a str, &'a str)>,
    pub auth: Option<JwtAuth>,
}

/// What the sidecar knows of an inbound connection or request.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Request<'a> {
    /// The peer's identity from its mTLS certificate (`cluster.local/ns/foo/sa/bar`, with or
    /// without `spiffe://`); `None` for plain text.
    pub source_principal: Option<&'a str>,
    /// The peer's address (`source.ip`, `ipBlocks`).
    pub source_ip: Option<IpAddr>,
    /// The original client (`remote.ip`, `remoteIpBlocks`: X-Forwarded-For / PROXY protocol);
    /// `None`: the peer's address.
    pub remote_ip: Option<IpAddr>,
    pub destination_ip: Option<IpAddr>,
    pub destination_port: u16,
    pub sni: Option<String>,
    /// `None`: opaque TCP.
    pub http: Option<HttpRequest<'a>>,
}

impl Request<'_> {
    /// The principal without `spiffe://`.
    pub fn principal(&self) -> Option<&str> {
        self.source_principal
            .map(|p| p.strip_prefix("spiffe://").unwrap_or(p))
    }

    /// The source namespace, from the principal `<trust domain>/ns/<namespace>/sa/<account>`
    /// as Istio derives it; `None` for plain text.
    pub fn source_namespace(&self) -> Option<&str> {
        let p = self.principal()?;
        let (_, rest) = p.split_once("/ns/")?;
        let (ns, _) = rest.split_once("/sa/")?;
        Some(ns)
    }

    fn remote(&self) -> Option<IpAddr> {
        self.remote_ip.or(self.source_ip)
    }
}

/// The result of evaluating a request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "decision")]
pub enum Verdict {
    /// Allowed: `by` is the ALLOW rule that matched, `None` when no ALLOW policy applies.
    Allow {
        by: Option<RuleRef>,
        /// AUDIT rules that matched (the request is marked for audit; no effect on the
        /// decision).
        audit: Vec<RuleRef>,
    },
    /// Denied by a DENY rule (`rule: Some`), or because ALLOW policies apply and none matched
    /// (`policy` lists them, `rule: None`).
    Deny {
        policy: String,
        rule: Option<usize>,
        audit: Vec<RuleRef>,
    },
}

impl Verdict {
    pub fn is_allow(&self) -> bool {
        matches!(self, Verdict::Allow { .. })
    }

    /// The decision in words, as the proxy logs it and the CLI prints it: `denied by DENY
    /// policy shop/deny-admin rule 0`, `allowed by ALLOW policy shop/a rule 1`, `denied: ALLOW
    /// policies shop/a apply and none matched`, `allowed (no ALLOW policy applies)`.
    pub fn describe(&self) -> String {
        let audit_text = |audit: &[RuleRef]| {
            audit
                .iter()
                .map(|r| format!("{} rule {}", r.policy, r.rule))
                .collect::<Vec<_>>()
                .join(", ")
        };
        match self {
            Verdict::Allow { by: Some(r), .. } => {
                format!("allowed by ALLOW policy {} rule {}", r.policy, r.rule)
            }
            Verdict::Allow { by: None, audit } if !audit.is_empty() => format!(
                "allowed (no ALLOW policy applies); AUDIT rules matched: {}",
                audit_text(audit)
            ),
            Verdict::Allow { by: None, .. } => "allowed (no ALLOW policy applies)".to_string(),
            Verdict::Deny {
                policy,
                rule: Some(i),
                ..
            } => format!("denied by DENY policy {policy} rule {i}"),
            Verdict::Deny {
                policy, rule: None, ..
            } => format!("denied: ALLOW policies {policy} apply and none matched"),
        }
    }

    /// The AUDIT rules that matched.
    pub fn audit(&self) -> &[RuleRef] {
        match self {
            Verdict::Allow { audit, .. } | Verdict::Deny { audit, .. } => audit,
        }
    }
}

/// `remote.ip` and `remoteIpBlocks` as Envoy computes them on Istio's sidecar inbound listener
/// (`use_remote_address: false`, `xff_num_trusted_hops` = `num_trusted_proxies`): the entries
/// of every `X-Forwarded-For` value, in order, counted from the right — the last one with the
/// default 0, the one before it with 1, and so on. `None` (the peer's address stands) when the
/// header is absent, has too few entries, or that entry is not an IP address.
pub fn remote_ip_from_xff<'a>(
    xff: impl IntoIterator<Item = &'a str>,
    num_trusted_proxies: u32,
) -> Option<IpAddr> {
    let entries: Vec<&str> = xff
        .into_iter()
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    let skip = usize::try_from(num_trusted_proxies).ok()?;
    let i = entries.len().checked_sub(skip.checked_add(1)?)?;
    entries[i].parse().ok()
}

/// `remote.ip` and `remoteIpBlocks` at a gateway, as Envoy computes them on Istio's gateway
/// listeners (`use_remote_address: true`, `xff_num_trusted_hops` = `num_trusted_proxies`): with
/// the default 0 the client's own address (`None`: the peer's address stands, whatever
/// `X-Forwarded-For` says, since the gateway is the mesh's edge); with N the N-th entry from
/// the right of `X-Forwarded-For` (the one the outermost trusted proxy appended), the peer's
/// address when there are fewer entries or that one is not an IP address.
pub fn remote_ip_at_gateway<'a>(
    xff: impl IntoIterator<Item = &'a str>,
    num_trusted_proxies: u32,
) -> Option<IpAddr> {
    let n = num_trusted_proxies.checked_sub(1)?;
    remote_ip_from_xff(xff, n)
}

/// Evaluate `req` against the enforced (not dry-run) policies that apply to the workload, in
/// Istio's order: CUSTOM (refused at load) → DENY → ALLOW. A matching DENY rule denies; with
/// no ALLOW policy the request is allowed; else it needs one matching ALLOW rule (an ALLOW
/// policy without rules matches nothing, `rules: [{}]` matches everything). AUDIT rules only
/// mark the request.
pub fn evaluate(policies: &[AuthorizationPolicy], req: &Request) -> Verdict {
    decide(policies.iter().filter(|p| !p.dry_run), req)
}

/// The shadow result of the dry-run policies alone (`istio.io/dry-run: "true"`), as Istio logs
/// it; `None` when there are none.
pub fn evaluate_dry_run(policies: &[AuthorizationPolicy], req: &Request) -> Option<Verdict> {
    policies
        .iter()
        .any(|p| p.dry_run)
        .then(|| decide(policies.iter().filter(|p| p.dry_run), req))
}

/// What rules compare against, derived from the request once for all of them and only when a
/// rule asks: the normalized path and the host without its port. (Computing them per rule made
/// ten rules cost as much as the rest of the request; see docs/benchmarks.md.)
struct Facts<'a> {
    req: &'a Request<'a>,
    path: OnceCell<Option<Cow<'a, str>>>,
}

impl<'a> Facts<'a> {
    fn new(req: &'a Request<'a>) -> Self {
        Facts {
            req,
            path: OnceCell::new(),
        }
    }

    fn path(&self) -> Option<&str> {
        self.path
            .get_or_init(|| self.req.http.as_ref().map(|h| normal_path(h.path)))
            .as_deref()
    }
}

/// `normalize_path`, borrowing when the path is already normal (the common case): it starts
/// with `/` and has nothing to decode (`%`), no backslash and no `.`/`..` segment.
fn normal_path(raw: &str) -> Cow<'_, str> {
    let p = raw.split(['?', '#']).next().unwrap_or("");
    if p.starts_with('/') && crate::route::is_normal(p) {
        Cow::Borrowed(p)
    } else {
        Cow::Owned(normalize_path(raw))
    }
}

fn decide<'a>(
    policies: impl Iterator<Item = &'a AuthorizationPolicy> + Clone,
    req: &Request,
) -> Verdict {
    let facts = Facts::new(req);
    let facts = &facts;
    let matching = |action: Action| {
        policies
            .clone()
            .filter(move |p| p.spec.action == action)
            .flat_map(move |p| {
                p.spec
                    .rules
                    .iter()
                    .enumerate()
                    .filter(move |(_, r)| rule_matches(r, p, facts))
                    .map(move |(i, _)| RuleRef {
                        policy: p.meta.key(),
                        rule: i,
                    })
            })
    };
    let audit: Vec<RuleRef> = matching(Action::Audit).collect();
    if let Some(d) = matching(Action::Deny).next() {
        return Verdict::Deny {
            policy: d.policy,
            rule: Some(d.rule),
            audit,
        };
    }
    let allow = policies.clone().filter(|p| p.spec.action == Action::Allow);
    if allow.clone().next().is_none() {
        return Verdict::Allow { by: None, audit };
    }
    match matching(Action::Allow).next() {
        Some(r) => Verdict::Allow { by: Some(r), audit },
        None => Verdict::Deny {
            policy: allow.map(|p| p.meta.key()).collect::<Vec<_>>().join(", "),
            rule: None,
            audit,
        },
    }
}

/// What of the request the rules of these policies read beyond the connection and the
/// request line, so the HTTP layer copies only that into the `Request`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Reads {
    /// A `when: request.headers[...]` condition.
    pub headers: bool,
    /// `remoteIpBlocks`/`notRemoteIpBlocks` or a `remote.ip` condition (from
    /// `X-Forwarded-For`).
    pub remote_ip: bool,
}

/// `Reads` of these policies (plain loops: this runs on every request that a policy selects).
pub fn reads(policies: &[AuthorizationPolicy]) -> Reads {
    let mut r = Reads::default();
    for p in policies {
        for rule in &p.spec.rules {
            for c in &rule.when {
                r.headers |= c.key.starts_with("request.headers");
                r.remote_ip |= c.key == "remote.ip";
            }
            for f in rule.from.iter().flatten() {
                if let Some(s) = &f.source {
                    r.remote_ip |=
                        !s.remote_ip_blocks.is_empty() || !s.not_remote_ip_blocks.is_empty();
                }
            }
        }
    }
    r
}

/// Does the rule use a field that exists only for HTTP (request principals, hosts, methods,
/// paths, `request.*` conditions)?
pub fn uses_http_only_fields(rule: &Rule) -> bool {
    let from = rule
        .from
        .iter()
        .flatten()
        .filter_map(|f| f.source.as_ref())
        .any(|s| !s.request_principals.is_empty() || !s.not_request_principals.is_empty());
    let to = rule
        .to
        .iter()
        .flatten()
        .filter_map(|t| t.operation.as_ref())
        .any(|o| {
            !o.hosts.is_empty()
                || !o.not_hosts.is_empty()
                || !o.methods.is_empty()
                || !o.not_methods.is_empty()
                || !o.paths.is_empty()
                || !o.not_paths.is_empty()
        });
    from || to || rule.when.iter().any(|c| c.key.starts_with("request."))
}

/// One rule against a request. On opaque TCP (Istio's builder, which the "TCP traffic" task
/// <https://istio.io/latest/docs/tasks/security/authorization/authz-tcp/> describes): a rule
/// of an ALLOW policy that uses HTTP-only fields is ignored — "this will make all rules in the
/// current permission ignored, effectively result in a smaller allow policy (i.e. less likely
/// to allow a request)" — while for DENY and AUDIT only the HTTP-only fields are dropped and
/// the rest of the rule still applies — "effectively resulting in a wider deny or audit policy
/// (i.e. more likely to deny or audit a request)". So `methods: [GET]` alone in a DENY rule
/// denies every TCP connection, and in an ALLOW rule allows none.
fn rule_matches(rule: &Rule, policy: &AuthorizationPolicy, facts: &Facts) -> bool {
    let req = facts.req;
    if req.http.is_none() && policy.spec.action == Action::Allow && uses_http_only_fields(rule) {
        return false;
    }
    let from_ok = rule.from.as_ref().is_none_or(|from| {
        from.iter()
            .filter_map(|f| f.source.as_ref())
            .any(|s| source_matches(s, &policy.meta.namespace, req))
    });
    let to_ok = rule.to.as_ref().is_none_or(|to| {
        to.iter()
            .filter_map(|t| t.operation.as_ref())
            .any(|o| operation_matches(o, facts))
    });
    from_ok && to_ok && rule.when.iter().all(|c| condition_matches(c, req))
}

/// `values` (any) and not `not_values` (any); an empty list does not constrain. `None` from a
/// field (an HTTP-only field on TCP, dropped) does not constrain either.
fn field<T>(values: &[T], not_values: &[T], test: impl Fn(&T) -> Option<bool>) -> bool {
    let any = |list: &[T]| -> Option<bool> {
        let mut dropped = false;
        for v in list {
            match test(v) {
                Some(true) => return Some(true),
                Some(false) => {}
                None => dropped = true,
            }
        }
        if dropped {
            None
        } else {
            Some(false)
        }
    };
    let pos = values.is_empty() || any(values).unwrap_or(true);
    let neg = not_values.is_empty() || any(not_values).map(|m| !m).unwrap_or(true);
    pos && neg
}

fn principal_pattern(p: &str) -> &str {
    p.strip_prefix("spiffe://").unwrap_or(p)
}

fn source_matches(s: &Source, policy_ns: &str, req: &Request) -> bool {
    let principal = req.principal();
    let ns = req.source_namespace();
    let in_principal =
        |pat: &String| Some(principal.is_some_and(|p| string_match(principal_pattern(pat), p)));
    let in_ns = |pat: &String| Some(ns.is_some_and(|n| string_match(pat, n)));
    let in_ip = |ip: Option<IpAddr>| move |b: &IpBlock| Some(ip.is_some_and(|ip| b.contains(ip)));
    let request_principal = |pat: &String| -> Option<bool> {
        let http = req.http.as_ref()?;
        Some(
            http.auth
                .as_ref()
                .is_some_and(|a| string_match(pat, &a.principal)),
        )
    };
    let service_account = |sa: &String| {
        let (sa_ns, name) = sa.split_once('/').unwrap_or((policy_ns, sa.as_str()));
        Some(principal.is_some_and(|p| {
            p.split_once('/')
                .is_some_and(|(_, rest)| rest == format!("ns/{sa_ns}/sa/{name}"))
        }))
    };
    let trust_domain = |td: &String| {
        Some(principal.is_some_and(|p| p.split_once('/').is_some_and(|(d, _)| string_match(td, d))))
    };
    field(&s.principals, &s.not_principals, in_principal)
        && field(
            &s.request_principals,
            &s.not_request_principals,
            request_principal,
        )
        && field(&s.namespaces, &s.not_namespaces, in_ns)
        && field(&s.ip_blocks, &s.not_ip_blocks, in_ip(req.source_ip))
        && field(
            &s.remote_ip_blocks,
            &s.not_remote_ip_blocks,
            in_ip(req.remote()),
        )
        && field(
            &s.service_accounts,
            &s.not_service_accounts,
            service_account,
        )
        && field(&s.trust_domains, &s.not_trust_domains, trust_domain)
}

fn operation_matches(o: &Operation, facts: &Facts) -> bool {
    let req = facts.req;
    let http = req.http.as_ref();
    let host = |pat: &String| -> Option<bool> {
        let h = &http?.host;
        Some(
            string_match_ignore_case(pat, h)
                || string_match_ignore_case(pat, crate::host::split_authority_as_sent(h).0),
        )
    };
    let method = |m: &String| Some(string_match(m, http?.method));
    let path = |p: &String| Some(path_match(p, facts.path()?));
    let port = |p: &PortString| Some(p.0 == req.destination_port);
    field(&o.hosts, &o.not_hosts, host)
        && field(&o.methods, &o.not_methods, method)
        && field(&o.paths, &o.not_paths, path)
        && field(&o.ports, &o.not_ports, port)
}

fn condition_matches(c: &Condition, req: &Request) -> bool {
    // Header conditions, the common kind, are matched without parsing the key into an owned
    // name.
    let header = c
        .key
        .strip_prefix("request.headers[")
        .and_then(|r| r.strip_suffix(']'));
    let key = match header {
        Some(_) => None,
        None => match parse_key(&c.key) {
            Ok(k) => Some(k),
            Err(_) => return false, // refused at load
        },
    };
    let http = req.http.as_ref();
    let auth = http.and_then(|h| h.auth.as_ref());
    let ip_in = |ip: Option<IpAddr>, v: &str| {
        ip.is_some_and(|ip| IpBlock::parse(v).is_ok_and(|b| b.contains(ip)))
    };
    let test = |v: &String| -> Option<bool> {
        if let Some(name) = header {
            let h = http?;
            return Some(
                h.headers
                    .iter()
                    .filter(|(n, _)| n.eq_ignore_ascii_case(name))
                    .any(|(_, hv)| string_match(v, hv)),
            );
        }
        Some(match key.as_ref()? {
            Key::Header(name) => {
                let h = http?;
                h.headers
                    .iter()
                    .filter(|(n, _)| n.eq_ignore_ascii_case(name))
                    .any(|(_, hv)| string_match(v, hv))
            }
            Key::Claims(path) => {
                http?;
                auth.is_some_and(|a| claim_matches(&a.claims, path, v))
            }
            Key::Plain("request.auth.principal") => {
                http?;
                auth.is_some_and(|a| string_match(v, &a.principal))
            }
            Key::Plain("request.auth.audiences") => {
                http?;
                auth.is_some_and(|a| a.audiences.iter().any(|x| string_match(v, x)))
            }
            Key::Plain("request.auth.presenter") => {
                http?;
                auth.and_then(|a| a.presenter.as_deref())
                    .is_some_and(|p| string_match(v, p))
            }
            Key::Plain("source.ip") => ip_in(req.source_ip, v),
            Key::Plain("remote.ip") => ip_in(req.remote(), v),
            Key::Plain("destination.ip") => ip_in(req.destination_ip, v),
            Key::Plain("destination.port") => parse_port(v).ok() == Some(req.destination_port),
            Key::Plain("source.namespace") => {
                req.source_namespace().is_some_and(|n| string_match(v, n))
            }
            Key::Plain("source.principal") => req
                .principal()
                .is_some_and(|p| string_match(principal_pattern(v), p)),
            Key::Plain("connection.sni") => req.sni.as_deref().is_some_and(|s| string_match(v, s)),
            Key::Plain(_) => false,
        })
    };
    field(&c.values, &c.not_values, test)
}

/// Istio's string match with ASCII case ignored (hosts), without allocating.
fn string_match_ignore_case(pattern: &str, value: &str) -> bool {
    let (p, v) = (pattern.as_bytes(), value.as_bytes());
    if p == b"*" {
        return true;
    }
    if let Some(suffix) = p.strip_prefix(b"*") {
        return v.len() >= suffix.len() && v[v.len() - suffix.len()..].eq_ignore_ascii_case(suffix);
    }
    if let Some(prefix) = p.strip_suffix(b"*") {
        return v.len() >= prefix.len() && v[..prefix.len()].eq_ignore_ascii_case(prefix);
    }
    p.eq_ignore_ascii_case(v)
}

/// A claim by its path (`[a][b]` is claim `b` inside the object claim `a`): a string matches
/// by Istio's string match; a list matches when one of its strings does; booleans and numbers
/// by their text.
fn claim_matches(claims: &Value, path: &[String], pattern: &str) -> bool {
    let mut v = claims;
    for name in path {
        match v.get(name) {
            Some(x) => v = x,
            None => return false,
        }
    }
    let one = |x: &Value| match x {
        Value::String(s) => string_match(pattern, s),
        Value::Bool(b) => string_match(pattern, &b.to_string()),
        Value::Number(n) => string_match(pattern, &n.to_string()),
        _ => false,
    };
    match v {
        Value::Array(items) => items.iter().any(one),
        x => one(x),
    }
}

/// The path a policy sees: without query or fragment, `%XX` of unreserved characters decoded,
/// backslashes as slashes, `.` and `..` segments resolved (Istio's default `BASE`
/// normalization, RFC 3986).
pub fn normalize_path(raw: &str) -> String {
    let p = raw.split(['?', '#']).next().unwrap_or("");
    let mut decoded = String::with_capacity(p.len());
    let bytes = p.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && bytes[i + 1].is_ascii_hexdigit()
            && bytes[i + 2].is_ascii_hexdigit()
        {
            let hex = &p[i + 1..i + 3];
            if let Ok(b) = u8::from_str_radix(hex, 16) {
                let c = b as char;
                if c.is_ascii_alphanumeric() || "-._~".contains(c) {
                    decoded.push(c);
                    i += 3;
                    continue;
                }
                decoded.push('%');
                decoded.push_str(&hex.to_ascii_uppercase());
                i += 3;
                continue;
            }
        }
        let c = p[i..].chars().next().unwrap_or('\0');
        decoded.push(if c == '\\' { '/' } else { c });
        i += c.len_utf8();
    }
    let mut out: Vec<&str> = Vec::new();
    let segs: Vec<&str> = decoded.split('/').collect();
    let last = segs.len().saturating_sub(1);
    for (i, s) in segs.iter().enumerate().skip(1) {
        match *s {
            "." => {
                if i == last {
                    out.push("");
                }
            }
            ".." => {
                out.pop();
                if i == last {
                    out.push("");
                }
            }
            s => out.push(s),
        }
    }
    format!("/{}", out.join("/"))
}

/// Istio's path match: `*`, `prefix*`, `*suffix`, exact, and path templates where `{*}`
/// matches one segment and `{**}` any number of segments (zero included).
pub fn path_match(pattern: &str, path: &str) -> bool {
    if !pattern.contains('{') || (!pattern.contains("{*}") && !pattern.contains("{**}")) {
        return string_match(pattern, path);
    }
    let pat: Vec<&str> = pattern.split('/').collect();
    let segs: Vec<&str> = path.split('/').collect();
    fn go(pat: &[&str], segs: &[&str]) -> bool {
        match pat.split_first() {
            None => segs.is_empty(),
            Some((&"{**}", rest)) => (0..=segs.len())
                .any(|k| segs[..k].iter().all(|s| !s.is_empty()) && go(rest, &segs[k..])),
            Some((&"{*}", rest)) => {
                segs.first().is_some_and(|s| !s.is_empty()) && go(rest, &segs[1..])
            }
            Some((p, rest)) => segs.first() == Some(p) && go(rest, &segs[1..]),
        }
    }
    go(&pat, &segs)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The borrowing fast path never disagrees with the full normalization.
    #[test]
    fn normal_path_agrees_with_normalize_path() {
        for raw in [
            "/",
            "",
            "/a",
            "/a/b",
            "/a/b/",
            "//a",
            "/a?x=1",
            "/a#f",
            "/a/./b",
            "/a/../b",
            "/.",
            "/..",
            "/a/.b",
            "/a%2Fb",
            "/a%62",
            "/a\\b",
            "a/b",
            "*",
            "/é/ü",
            "/a/b?x=/../y",
        ] {
            assert_eq!(normal_path(raw), normalize_path(raw), "{raw:?}");
        }
        assert!(matches!(normal_path("/a/b?q"), Cow::Borrowed("/a/b")));
    }

    #[test]
    fn bare_hosts() {
        for (authority, want) in [
            ("reviews", "reviews"),
            ("reviews:9080", "reviews"),
            ("Reviews.Shop:80", "Reviews.Shop"),
            ("[::1]:80", "::1"),
            ("[fe80::1]", "fe80::1"),
            ("fe80::1", "fe80::1"),
            ("host:notaport", "host:notaport"),
            (" a.b:1 ", "a.b"),
        ] {
            assert_eq!(
                crate::host::split_authority_as_sent(authority).0,
                want,
                "{authority:?}"
            );
        }
    }

    #[test]
    fn case_insensitive_string_match() {
        for (pattern, value, want) in [
            ("*", "", true),
            ("Reviews.shop", "reviews.SHOP", true),
            ("*.SHOP", "reviews.shop", true),
            ("*.shop", "shop", false),
            ("REV*", "reviews", true),
            ("rev*", "re", false),
            ("reviews", "reviews2", false),
            ("*é", "xÉ", false),
        ] {
            assert_eq!(
                string_match_ignore_case(pattern, value),
                want,
                "{pattern} {value}"
            );
        }
    }
}
