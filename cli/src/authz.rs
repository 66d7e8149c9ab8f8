//! The security policies of one pod, for `remora describe pod` (which ones select the pod, and
//! why) and `remora proxy-config authz` (the policies a proxy enforces, and the decision for a
//! request given on the command line, as `istioctl x authz check` shows it).
//!
//! The decision is the model's own `security::authorization::evaluate`, the function the proxy
//! calls on every inbound request, over the policies the proxy's `/config_dump` lists: the CLI
//! and the proxy cannot disagree on the same policies and request. `remote.ip` comes from an
//! `X-Forwarded-For` header given with `--header` as the proxy computes it (its
//! `num_trusted_proxies`, from the dump; a gateway's dump, read as at Istio's gateways).

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::Serialize;

use remora_model::dump::ConfigDump;
use remora_model::kinds::LoadContext;
use remora_model::security::authorization::{
    evaluate_dry_run, remote_ip_at_gateway, remote_ip_from_xff, Action, HttpRequest, JwtAuth,
};
use remora_model::security::request_authentication::JwtRule;
use remora_model::security::{
    applies, evaluate, mtls_mode, why_applies, AuthorizationPolicy, PeerAuthentication, Request,
    RequestAuthentication, Verdict,
};

use super::table;

/// The request flags of `proxy-config authz` (`--port` is the proxy-config filter's).
#[derive(clap::Args, Clone, Debug, Default, PartialEq, Eq)]
pub struct RequestArgs {
    /// authz: the request's method (GET when not given).
    #[arg(long, value_name = "METHOD")]
    pub method: Option<String>,
    /// authz: the request's path, query included (/ when not given).
    #[arg(long, value_name = "PATH")]
    pub path: Option<String>,
    /// authz: the request's Host (`hosts` rules).
    #[arg(long, value_name = "HOST")]
    pub host: Option<String>,
    /// authz: the client's mTLS identity, spiffe://TRUST_DOMAIN/ns/NAMESPACE/sa/ACCOUNT (its
    /// namespace is the source namespace); not given: a plain-text client.
    #[arg(long, value_name = "SPIFFE_ID")]
    pub principal: Option<String>,
    /// authz: the client's address (`ipBlocks`, `source.ip`).
    #[arg(long, value_name = "IP")]
    pub source_ip: Option<String>,
    /// authz: a request header NAME=VALUE (repeatable); `x-forwarded-for` gives `remote.ip`.
    #[arg(long = "header", value_name = "NAME=VALUE")]
    pub headers: Vec<String>,
    /// authz: the request principal ISSUER/SUBJECT of a JWT that RequestAuthentication
    /// verified (`requestPrincipals`, `request.auth.principal`).
    #[arg(long, value_name = "ISS/SUB")]
    pub request_principal: Option<String>,
}

/// A request to decide, validated.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct CheckRequest {
    pub method: String,
    pub path: String,
    pub host: String,
    pub port: u16,
    /// Without `spiffe://`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub principal: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source_ip: Option<IpAddr>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<(String, String)>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_principal: Option<String>,
}

fn token_ok(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

impl RequestArgs {
    /// Were request flags given?
    pub fn given(&self) -> bool {
        *self != RequestArgs::default()
    }

    /// The request, validated (one line naming the flag, value and reason); `port` is
    /// `--port` (0 when not given: rules on ports then match nothing).
    pub fn request(&self, port: Option<u16>) -> Result<CheckRequest, String> {
        let bad = |flag: &str, v: &str, why: &str| format!("{flag}: invalid value {v:?}: {why}");
        let method = self.method.clone().unwrap_or_else(|| "GET".into());
        if !token_ok(&method) {
            return Err(bad(
                "--method",
                &method,
                "not an HTTP method (a token such as GET)",
            ));
        }
        let path = self.path.clone().unwrap_or_else(|| "/".into());
        if !path.starts_with('/') || path.chars().any(char::is_whitespace) {
            return Err(bad(
                "--path",
                &path,
                "must start with / and contain no spaces",
            ));
        }
        let host = self.host.clone().unwrap_or_default();
        if self.host.is_some() && (host.is_empty() || host.chars().any(char::is_whitespace)) {
            return Err(bad("--host", &host, "must be a non-empty host name"));
        }
        let principal = match &self.principal {
            None => None,
            Some(p) => {
                let bare = p.strip_prefix("spiffe://").unwrap_or(p);
                let ok = bare
                    .split_once("/ns/")
                    .and_then(|(td, rest)| Some((td, rest.split_once("/sa/")?)))
                    .is_some_and(|(td, (ns, sa))| {
                        !td.is_empty() && !ns.is_empty() && !sa.is_empty() && !bare.contains(' ')
                    });
                if !ok {
                    return Err(bad(
                        "--principal",
                        p,
                        "expected spiffe://TRUST_DOMAIN/ns/NAMESPACE/sa/ACCOUNT",
                    ));
                }
                Some(bare.to_string())
            }
        };
        let source_ip = match &self.source_ip {
            None => None,
            Some(s) => Some(
                s.parse::<IpAddr>()
                    .map_err(|_| bad("--source-ip", s, "not an IP address"))?,
            ),
        };
        let mut headers = Vec::new();
        for h in &self.headers {
            let Some((name, value)) = h.split_once('=') else {
                return Err(bad("--header", h, "expected NAME=VALUE"));
            };
            if !token_ok(name) {
                return Err(bad("--header", h, "the name is not a header name"));
            }
            headers.push((name.to_ascii_lowercase(), value.to_string()));
        }
        let request_principal = match &self.request_principal {
            Some(r) if !r.contains('/') || r.starts_with('/') => {
                return Err(bad(
                    "--request-principal",
                    r,
                    "expected ISSUER/SUBJECT (the JWT's iss and sub)",
                ))
            }
            r => r.clone(),
        };
        Ok(CheckRequest {
            method,
            path,
            host,
            port: port.unwrap_or(0),
            principal,
            source_ip,
            headers,
            request_principal,
        })
    }
}

impl CheckRequest {
    /// The model's input, `remote.ip` computed from `x-forwarded-for` as the proxy does (a
    /// sidecar's inbound side, or a `gateway`).
    pub fn to_model(&self, num_trusted_proxies: u32, gateway: bool) -> Request<'_> {
        let xff = self
            .headers
            .iter()
            .filter(|(n, _)| n == "x-forwarded-for")
            .map(|(_, v)| v.as_str());
        Request {
            source_principal: self.principal.as_deref(),
            source_ip: self.source_ip,
            remote_ip: if gateway {
                remote_ip_at_gateway(xff, num_trusted_proxies)
            } else {
                remote_ip_from_xff(xff, num_trusted_proxies)
            },
            destination_ip: None,
            destination_port: self.port,
            sni: None,
            http: Some(HttpRequest {
                host: &self.host,
                method: &self.method,
                path: &self.path,
                headers: self
                    .headers
                    .iter()
                    .map(|(n, v)| (n.as_str(), v.as_str()))
                    .collect(),
                auth: self.request_principal.as_ref().map(|p| JwtAuth {
                    principal: p.clone(),
                    audiences: Vec::new(),
                    presenter: None,
                    claims: serde_json::Value::Null,
                }),
            }),
        }
    }

    /// One line: `GET / port 9080 from spiffe://… (namespace shop), address 10.0.0.5, no JWT`.
    pub fn text(&self, remote: Option<IpAddr>) -> String {
        let mut s = format!("{} {}", self.method, self.path);
        if !self.host.is_empty() {
            s.push_str(&format!(" host {}", self.host));
        }
        if self.port == 0 {
            s.push_str(" (no --port: rules on ports match nothing)");
        } else {
            s.push_str(&format!(" port {}", self.port));
        }
        match &self.principal {
            Some(p) => {
                let ns = p
                    .split_once("/ns/")
                    .and_then(|(_, r)| r.split_once("/sa/"))
                    .map_or("?", |(ns, _)| ns);
                s.push_str(&format!(" from spiffe://{p} (namespace {ns})"));
            }
            None => s.push_str(" from a plain-text client (no principal)"),
        }
        if let Some(ip) = self.source_ip {
            s.push_str(&format!(", address {ip}"));
        }
        if let Some(ip) = remote {
            s.push_str(&format!(", remote.ip {ip} (X-Forwarded-For)"));
        }
        match &self.request_principal {
            Some(p) => s.push_str(&format!(", JWT of {p} (taken as verified)")),
            None => s.push_str(", no JWT"),
        }
        s
    }
}

// ------------------------------------------------------------------ the view

/// One AuthorizationPolicy in effect.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PolicyRow {
    pub name: String,
    /// `ALLOW`, `DENY`, `AUDIT`.
    pub action: String,
    pub rules: usize,
    pub dry_run: bool,
    /// Why it applies to the pod.
    pub applies: String,
}

/// One RequestAuthentication in effect (one row per `jwtRules` entry).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct JwtRow {
    pub name: String,
    pub issuer: String,
    /// Where the keys come from.
    pub keys: String,
    pub applies: String,
}

/// The effective mTLS mode of one port.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct MtlsRow {
    /// `None`: the workload's ports without a port-level setting.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    pub mode: String,
    /// Which PeerAuthentication set it (`None`: Istio's default, PERMISSIVE).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    pub peer_authentications: Vec<String>,
    /// Why no mode applies: a gateway's TLS is its Gateway servers' ([`GATEWAY_MTLS`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub not_applied: Option<String>,
}

/// Why PeerAuthentication sets nothing at a gateway (`remora-proxy gateway` terminates TLS
/// by its Gateway servers' `tls` and never applies a PeerAuthentication mode).
pub const GATEWAY_MTLS: &str = "PeerAuthentication does not apply to a gateway: its TLS comes from its Gateway servers (each server's tls.mode: SIMPLE, MUTUAL, ISTIO_MUTUAL, PASSTHROUGH; remora proxy-config listeners shows them)";

/// The decision for the request given.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CheckResult {
    pub request: CheckRequest,
    /// `remote.ip` as the proxy would compute it from `X-Forwarded-For`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remote_ip: Option<IpAddr>,
    /// `ALLOW` or `DENY`.
    pub decision: String,
    /// The policy and rule that decided, in the proxy's words.
    pub reason: String,
    pub verdict: Verdict,
    /// The dry-run policies' result (logged by the proxy, not enforced).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dry_run: Option<Verdict>,
}

/// `proxy-config authz`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AuthzView {
    pub authorization_policies: Vec<PolicyRow>,
    pub request_authentications: Vec<JwtRow>,
    pub mtls: MtlsRow,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub check: Option<CheckResult>,
}

fn action_text(a: Action) -> &'static str {
    match a {
        Action::Allow => "ALLOW",
        Action::Deny => "DENY",
        Action::Audit => "AUDIT",
        Action::Custom => "CUSTOM",
    }
}

fn keys_text(r: &JwtRule) -> String {
    match (&r.jwks, r.jwks_url()) {
        (Some(_), _) => "inline jwks".to_string(),
        (None, Some(u)) => format!("jwksUri {u}"),
        (None, None) => "none (neither jwks nor jwksUri)".to_string(),
    }
}

fn policy_row(p: &AuthorizationPolicy, root: &str) -> PolicyRow {
    PolicyRow {
        name: p.meta.key(),
        action: action_text(p.spec.action).to_string(),
        rules: p.spec.rules.len(),
        dry_run: p.dry_run,
        applies: why_applies(&p.meta.namespace, p.spec.selector.as_ref(), root),
    }
}

fn jwt_rows(r: &RequestAuthentication, root: &str) -> Vec<JwtRow> {
    let applies = why_applies(&r.meta.namespace, r.spec.selector.as_ref(), root);
    if r.spec.jwt_rules.is_empty() {
        return vec![JwtRow {
            name: r.meta.key(),
            issuer: "-".into(),
            keys: "- (no jwtRules: every token is refused as of an unknown issuer)".into(),
            applies,
        }];
    }
    r.spec
        .jwt_rules
        .iter()
        .map(|j| JwtRow {
            name: r.meta.key(),
            issuer: j.issuer.clone(),
            keys: keys_text(j),
            applies: applies.clone(),
        })
        .collect()
}

/// The mTLS mode of `port` (every port: `None`) by `pas`; at a `gateway`, none applies.
fn mtls_row(pas: &[PeerAuthentication], port: Option<u16>, root: &str, gateway: bool) -> MtlsRow {
    let d = mtls_mode(pas, port.unwrap_or(0), root);
    let (mode, policy) = if gateway {
        ("NONE".to_string(), None)
    } else {
        (d.mode.to_string(), d.policy)
    };
    MtlsRow {
        port,
        mode,
        policy,
        peer_authentications: pas
            .iter()
            .map(|p| {
                let why = why_applies(&p.meta.namespace, p.spec.selector.as_ref(), root);
                if gateway {
                    format!("{}: {why}; not applied at a gateway", p.meta.key())
                } else {
                    format!("{}: {why}", p.meta.key())
                }
            })
            .collect(),
        not_applied: gateway.then(|| GATEWAY_MTLS.to_string()),
    }
}

/// The view of a proxy's dump; with `req`, its decision.
pub fn view(dump: &ConfigDump, req: Option<&CheckRequest>) -> AuthzView {
    let r = &dump.rules;
    let check = req.map(|q| {
        let model = q.to_model(dump.num_trusted_proxies, dump.gateway.is_some());
        let verdict = evaluate(&r.authorization_policies, &model);
        CheckResult {
            request: q.clone(),
            remote_ip: model.remote_ip,
            decision: if verdict.is_allow() { "ALLOW" } else { "DENY" }.to_string(),
            reason: verdict.describe(),
            dry_run: evaluate_dry_run(&r.authorization_policies, &model),
            verdict,
        }
    });
    // The root namespace the proxy itself scoped its policies with.
    let root = r.root_namespace.as_str();
    AuthzView {
        authorization_policies: r
            .authorization_policies
            .iter()
            .map(|p| policy_row(p, root))
            .collect(),
        request_authentications: r
            .request_authentications
            .iter()
            .flat_map(|a| jwt_rows(a, root))
            .collect(),
        mtls: mtls_row(
            &r.peer_authentications,
            req.map(|q| q.port).filter(|p| *p != 0),
            root,
            dump.gateway.is_some(),
        ),
        check,
    }
}

/// The text of `proxy-config authz`.
pub fn render(v: &AuthzView) -> String {
    let mut out = String::new();
    if v.authorization_policies.is_empty() {
        out.push_str("no AuthorizationPolicy applies to this proxy: every request is allowed\n");
    } else {
        let rows: Vec<Vec<String>> = v
            .authorization_policies
            .iter()
            .map(|p| {
                vec![
                    p.name.clone(),
                    if p.dry_run {
                        format!("{} (dry-run)", p.action)
                    } else {
                        p.action.clone()
                    },
                    p.rules.to_string(),
                    p.applies.clone(),
                ]
            })
            .collect();
        out.push_str(&table::render(
            &["AUTHORIZATIONPOLICY", "ACTION", "RULES", "APPLIES"],
            &rows,
        ));
    }
    if v.request_authentications.is_empty() {
        out.push_str("no RequestAuthentication applies: JWTs are not checked\n");
    } else {
        let rows: Vec<Vec<String>> = v
            .request_authentications
            .iter()
            .map(|r| {
                vec![
                    r.name.clone(),
                    r.issuer.clone(),
                    r.keys.clone(),
                    r.applies.clone(),
                ]
            })
            .collect();
        out.push_str(&table::render(
            &["REQUESTAUTHENTICATION", "ISSUER", "KEYS", "APPLIES"],
            &rows,
        ));
    }
    let port = v
        .mtls
        .port
        .map(|p| format!(" on port {p}"))
        .unwrap_or_default();
    match (&v.mtls.not_applied, &v.mtls.policy) {
        (Some(why), _) => out.push_str(&format!("mTLS{port}: {why}\n")),
        (None, Some(p)) => out.push_str(&format!(
            "mTLS{port}: {} (set by PeerAuthentication {p})\n",
            v.mtls.mode
        )),
        (None, None) => out.push_str(&format!(
            "mTLS{port}: {} (Istio's default: no PeerAuthentication sets a mode)\n",
            v.mtls.mode
        )),
    }
    for p in &v.mtls.peer_authentications {
        out.push_str(&format!("  PeerAuthentication {p}\n"));
    }
    if let Some(c) = &v.check {
        out.push_str(&format!("request: {}\n", c.request.text(c.remote_ip)));
        let answer = if c.verdict.is_allow() {
            ""
        } else {
            " (the proxy answers 403 RBAC: access denied)"
        };
        out.push_str(&format!("decision: {}: {}{answer}\n", c.decision, c.reason));
        // `allowed (no ALLOW policy applies)` already lists the AUDIT rules.
        if !matches!(c.verdict, Verdict::Allow { by: None, .. }) {
            for a in c.verdict.audit() {
                out.push_str(&format!(
                    "audit: AUDIT policy {} rule {} matched (logged)\n",
                    a.policy, a.rule
                ));
            }
        }
        if let Some(d) = &c.dry_run {
            out.push_str(&format!(
                "dry-run: the dry-run policies alone would {}: {} (logged only, not enforced)\n",
                if d.is_allow() { "ALLOW" } else { "DENY" },
                d.describe()
            ));
        }
    }
    out
}

// ------------------------------------------------------------------ describe pod

/// One security policy of the rules and whether it selects the pod.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SelectionRow {
    /// `AuthorizationPolicy`, `RequestAuthentication`, `PeerAuthentication`.
    pub kind: String,
    pub name: String,
    pub selected: bool,
    /// Why it applies, or why not.
    pub reason: String,
    /// `ALLOW`, `DENY (dry-run)`, the issuers, the mTLS mode.
    pub summary: String,
}

/// The security policies of `describe pod`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SecurityView {
    pub policies: Vec<SelectionRow>,
    /// The pod's mTLS mode (ports without a port-level setting).
    pub mtls: String,
}

/// Which of the decoded policies select a pod of `ns` with `labels`, and why (the model's
/// `security::applies`, the proxy's own selection).
pub fn selection(
    ns: &str,
    labels: &BTreeMap<String, String>,
    root_namespace: &str,
    pas: &[PeerAuthentication],
    aps: &[AuthorizationPolicy],
    ras: &[RequestAuthentication],
) -> SecurityView {
    let ctx = LoadContext {
        namespace: ns.to_string(),
        pod_labels: labels.clone(),
        root_namespace: root_namespace.to_string(),
        ..Default::default()
    };
    let mut rows = Vec::new();
    let mut row = |kind: &str,
                   meta: &remora_model::kinds::Meta,
                   sel: Option<&remora_model::security::WorkloadSelector>,
                   summary: String| {
        let (selected, reason) = match applies(&meta.namespace, sel, &ctx) {
            Ok(_) => (true, why_applies(&meta.namespace, sel, root_namespace)),
            Err(why) => (false, why),
        };
        rows.push(SelectionRow {
            kind: kind.to_string(),
            name: meta.key(),
            selected,
            reason,
            summary,
        });
    };
    for p in aps {
        let action = action_text(p.spec.action);
        let summary = if p.dry_run {
            format!("{action} (dry-run)")
        } else {
            action.to_string()
        };
        row(
            "AuthorizationPolicy",
            &p.meta,
            p.spec.selector.as_ref(),
            summary,
        );
    }
    for r in ras {
        let issuers: Vec<&str> = r.spec.jwt_rules.iter().map(|j| j.issuer.as_str()).collect();
        row(
            "RequestAuthentication",
            &r.meta,
            r.spec.selector.as_ref(),
            format!("issuers {}", issuers.join(", ")),
        );
    }
    for p in pas {
        let mode = p
            .spec
            .mtls
            .as_ref()
            .map_or("UNSET".to_string(), |m| m.mode.to_string());
        row(
            "PeerAuthentication",
            &p.meta,
            p.spec.selector.as_ref(),
            format!("mode {mode}"),
        );
    }
    let selected: Vec<PeerAuthentication> = pas
        .iter()
        .filter(|p| applies(&p.meta.namespace, p.spec.selector.as_ref(), &ctx).is_ok())
        .cloned()
        .collect();
    let d = mtls_mode(&selected, 0, root_namespace);
    let mtls = match d.policy {
        Some(p) => format!("{} (set by PeerAuthentication {p})", d.mode),
        None => format!(
            "{} (Istio's default: no PeerAuthentication sets a mode)",
            d.mode
        ),
    };
    SecurityView {
        policies: rows,
        mtls,
    }
}

/// `describe pod` of a gateway pod: no PeerAuthentication applies there ([`GATEWAY_MTLS`]),
/// however its selector matches.
pub fn at_gateway(v: &mut SecurityView) {
    v.mtls = format!("none: {GATEWAY_MTLS}");
    for r in v
        .policies
        .iter_mut()
        .filter(|r| r.kind == "PeerAuthentication" && r.selected)
    {
        r.selected = false;
        r.reason = format!("{}, but a gateway takes no PeerAuthentication", r.reason);
    }
}

/// The lines of `describe pod` (indented under `Security:`).
pub fn render_selection(v: &SecurityView) -> String {
    let mut out = String::from("Security:\n");
    out.push_str(&format!("  mTLS mode: {}\n", v.mtls));
    let (on, off): (Vec<_>, Vec<_>) = v.policies.iter().partition(|r| r.selected);
    if on.is_empty() {
        out.push_str("  no AuthorizationPolicy, RequestAuthentication or PeerAuthentication selects this pod\n");
    }
    for r in on {
        out.push_str(&format!(
            "  {} {} ({}): {}\n",
            r.kind, r.name, r.summary, r.reason
        ));
    }
    for r in off {
        out.push_str(&format!(
            "  not applied: {} {} ({}): {}\n",
            r.kind, r.name, r.summary, r.reason
        ));
    }
    out
}

/// The request of `proxy-config authz`, when one is given (request flags or `--port`); the
/// request flags on another view are an error naming the flag.
pub fn check_request(
    args: &RequestArgs,
    view_is_authz: bool,
    view_name: &str,
    port: Option<u16>,
) -> Result<Option<CheckRequest>, String> {
    if !view_is_authz {
        let flags = [
            ("--method", args.method.is_some()),
            ("--path", args.path.is_some()),
            ("--host", args.host.is_some()),
            ("--principal", args.principal.is_some()),
            ("--source-ip", args.source_ip.is_some()),
            ("--header", !args.headers.is_empty()),
            ("--request-principal", args.request_principal.is_some()),
        ];
        if let Some((flag, _)) = flags.iter().find(|(_, set)| *set) {
            return Err(format!(
                "{flag}: not a filter of the {view_name} view (it describes a request for the authz view)"
            ));
        }
        return Ok(None);
    }
    if !args.given() && port.is_none() {
        return Ok(None);
    }
    args.request(port).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;
    use remora_model::dump::{
        ApiState, ConfigSourceDump, DiscoveryDump, PoliciesDump, RulesDump, WorkloadDump,
    };
    use remora_model::rules::snapshot_from_yaml;

    /// Ratings' rules in Bookinfo: reviews may call it, a DENY on /admin, a dry-run DENY, a
    /// JWT on /secure; a mesh-wide STRICT PeerAuthentication and one for another app.
    const RULES: &str = r#"apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: ratings-viewer, namespace: bookinfo}
spec:
  selector: {matchLabels: {app: ratings}}
  action: ALLOW
  rules:
  - from: [{source: {principals: ["cluster.local/ns/bookinfo/sa/bookinfo-reviews"]}}]
    to: [{operation: {methods: [GET]}}]
  - from: [{source: {requestPrincipals: ["testing@secure.istio.io/*"]}}]
    to: [{operation: {paths: ["/secure*"]}}]
  - from: [{source: {remoteIpBlocks: [203.0.113.0/24]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-admin, namespace: bookinfo}
spec:
  action: DENY
  rules: [{to: [{operation: {paths: ["/admin*"]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: try-deny-post, namespace: istio-system, annotations: {istio.io/dry-run: "true"}}
spec:
  action: DENY
  rules: [{to: [{operation: {methods: [POST]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: productpage-only, namespace: bookinfo}
spec:
  selector: {matchLabels: {app: productpage}}
  rules: [{}]
---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: jwt, namespace: bookinfo}
spec:
  selector: {matchLabels: {app: ratings}}
  jwtRules:
  - issuer: testing@secure.istio.io
    jwksUri: https://idp.example/jwks.json
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: istio-system}
spec: {mtls: {mode: STRICT}}
"#;

    fn dump(num_trusted_proxies: u32) -> ConfigDump {
        // Istio's layout: istio-system is the root namespace.
        let ctx = LoadContext {
            namespace: "bookinfo".into(),
            pod_labels: [("app".to_string(), "ratings".to_string())].into(),
            root_namespace: "istio-system".into(),
            ..Default::default()
        };
        let snap = snapshot_from_yaml(&[("p.yaml", RULES)], &ctx, 1).unwrap();
        let rules = RulesDump::of(&snap);
        ConfigDump {
            version: "0.1.0".into(),
            generation: 1,
            hash: rules.hash.clone(),
            source: rules.source.clone(),
            rules_dir: "/etc/remora/rules".into(),
            rules,
            num_trusted_proxies,
            listeners: Vec::new(),
            workload: WorkloadDump {
                name: "ratings".into(),
                namespace: "bookinfo".into(),
            },
            sniff_timeout_ms: 5000,
            app_probes: Vec::new(),
            uptime_seconds: 60,
            policies: PoliciesDump::default(),
            config_source: ConfigSourceDump {
                source: "files".into(),
                generation: 1,
                hash: String::new(),
                configmap: None,
                api: ApiState::default(),
            },
            discovery: DiscoveryDump::off(),
            identity: None,
            gateway: None,
            telemetry_providers: Default::default(),
        }
    }

    fn args(pairs: &[(&str, &str)]) -> RequestArgs {
        let mut a = RequestArgs::default();
        for (k, v) in pairs {
            let text = v.to_string();
            let v = Some(text.clone());
            match *k {
                "method" => a.method = v,
                "path" => a.path = v,
                "host" => a.host = v,
                "principal" => a.principal = v,
                "source-ip" => a.source_ip = v,
                "header" => a.headers.push(text),
                "request-principal" => a.request_principal = v,
                _ => panic!("{k}"),
            }
        }
        a
    }

    const REVIEWS: &str = "spiffe://cluster.local/ns/bookinfo/sa/bookinfo-reviews";
    const PRODUCTPAGE: &str = "spiffe://cluster.local/ns/bookinfo/sa/bookinfo-productpage";

    #[test]
    fn decisions_name_the_policy_and_rule() {
        // (request flags, decision line)
        let cases: &[(&[(&str, &str)], &str)] = &[
            (
                &[("principal", REVIEWS), ("path", "/ratings/0")],
                "decision: ALLOW: allowed by ALLOW policy bookinfo/ratings-viewer rule 0",
            ),
            (
                &[("principal", PRODUCTPAGE), ("path", "/ratings/0")],
                "decision: DENY: denied: ALLOW policies bookinfo/ratings-viewer apply and none matched (the proxy answers 403 RBAC: access denied)",
            ),
            (
                &[("principal", REVIEWS), ("path", "/admin/x")],
                "decision: DENY: denied by DENY policy bookinfo/deny-admin rule 0 (the proxy answers 403 RBAC: access denied)",
            ),
            // Path normalization as the proxy does it.
            (
                &[("principal", REVIEWS), ("path", "/ratings/../admin")],
                "decision: DENY: denied by DENY policy bookinfo/deny-admin rule 0 (the proxy answers 403 RBAC: access denied)",
            ),
            (
                &[("request-principal", "testing@secure.istio.io/testing@secure.istio.io"), ("path", "/secure/x"), ("method", "POST")],
                "decision: ALLOW: allowed by ALLOW policy bookinfo/ratings-viewer rule 1",
            ),
            (
                &[("path", "/secure/x")],
                "decision: DENY: denied: ALLOW policies bookinfo/ratings-viewer apply and none matched (the proxy answers 403 RBAC: access denied)",
            ),
            // remote.ip: the last X-Forwarded-For entry (numTrustedProxies 0).
            (
                &[("header", "X-Forwarded-For=198.51.100.1, 203.0.113.7")],
                "decision: ALLOW: allowed by ALLOW policy bookinfo/ratings-viewer rule 2",
            ),
        ];
        let d = dump(0);
        for (flags, want) in cases {
            let req = args(flags).request(Some(9080)).unwrap();
            let text = render(&view(&d, Some(&req)));
            assert!(
                text.lines().any(|l| l == *want),
                "{flags:?}: want {want:?} in\n{text}"
            );
        }
        // With numTrustedProxies 1, the entry before the last.
        let req = args(&[("header", "x-forwarded-for=203.0.113.7, 198.51.100.1")])
            .request(Some(9080))
            .unwrap();
        let v = view(&dump(1), Some(&req));
        let c = v.check.unwrap();
        assert_eq!(c.remote_ip, Some("203.0.113.7".parse().unwrap()));
        assert_eq!(c.decision, "ALLOW");
        // A gateway's dump: X-Forwarded-For is the client's claim unless proxies are trusted
        // (Envoy's use_remote_address at Istio's gateways); with 1, the last entry.
        let req = args(&[("header", "x-forwarded-for=198.51.100.1, 203.0.113.7")])
            .request(Some(9080))
            .unwrap();
        let at_gateway = |n| {
            let mut d = dump(n);
            d.gateway = Some(Default::default());
            view(&d, Some(&req)).check.unwrap()
        };
        let c = at_gateway(0);
        assert_eq!((c.remote_ip, c.decision.as_str()), (None, "DENY"));
        let c = at_gateway(1);
        assert_eq!(c.remote_ip, Some("203.0.113.7".parse().unwrap()));
        assert_eq!(c.decision, "ALLOW");
    }

    #[test]
    fn the_view_lists_policies_mtls_and_the_dry_run() {
        let req = args(&[("principal", REVIEWS), ("method", "POST")])
            .request(Some(9080))
            .unwrap();
        let text = render(&view(&dump(0), Some(&req)));
        let want = "\
AUTHORIZATIONPOLICY          ACTION           RULES   APPLIES
bookinfo/ratings-viewer      ALLOW            3       selector app=ratings matches the pod's labels
bookinfo/deny-admin          DENY             1       namespace-wide (namespace bookinfo, no selector)
istio-system/try-deny-post   DENY (dry-run)   1       mesh-wide (root namespace istio-system, no selector)
REQUESTAUTHENTICATION   ISSUER                    KEYS                                    APPLIES
bookinfo/jwt            testing@secure.istio.io   jwksUri https://idp.example/jwks.json   selector app=ratings matches the pod's labels
mTLS on port 9080: STRICT (set by PeerAuthentication istio-system/default)
  PeerAuthentication istio-system/default: mesh-wide (root namespace istio-system, no selector)
request: POST / port 9080 from spiffe://cluster.local/ns/bookinfo/sa/bookinfo-reviews (namespace bookinfo), no JWT
decision: DENY: denied: ALLOW policies bookinfo/ratings-viewer apply and none matched (the proxy answers 403 RBAC: access denied)
dry-run: the dry-run policies alone would DENY: denied by DENY policy istio-system/try-deny-post rule 0 (logged only, not enforced)
";
        assert_eq!(text, want);
        // Without a request: the policies only.
        let text = render(&view(&dump(0), None));
        assert!(!text.contains("decision:"), "{text}");
        assert!(text.contains("mTLS: STRICT"), "{text}");
    }

    #[test]
    fn flags_are_checked_with_one_line_each() {
        let cases: &[(&[(&str, &str)], &str)] = &[
            (&[("method", "G T")], "--method: invalid value \"G T\": not an HTTP method (a token such as GET)"),
            (&[("path", "ratings")], "--path: invalid value \"ratings\": must start with / and contain no spaces"),
            (&[("principal", "bookinfo-reviews")], "--principal: invalid value \"bookinfo-reviews\": expected spiffe://TRUST_DOMAIN/ns/NAMESPACE/sa/ACCOUNT"),
            (&[("source-ip", "10.0.0")], "--source-ip: invalid value \"10.0.0\": not an IP address"),
            (&[("header", "x-team")], "--header: invalid value \"x-team\": expected NAME=VALUE"),
            (&[("header", "x team=ops")], "--header: invalid value \"x team=ops\": the name is not a header name"),
            (&[("request-principal", "alice")], "--request-principal: invalid value \"alice\": expected ISSUER/SUBJECT (the JWT's iss and sub)"),
        ];
        for (flags, want) in cases {
            assert_eq!(args(flags).request(None).unwrap_err(), *want);
        }
        assert_eq!(
            check_request(&args(&[("path", "/x")]), false, "routes", None).unwrap_err(),
            "--path: not a filter of the routes view (it describes a request for the authz view)"
        );
        assert_eq!(
            check_request(&RequestArgs::default(), true, "authz", None),
            Ok(None)
        );
        // --port alone asks for a decision.
        let r = check_request(&RequestArgs::default(), true, "authz", Some(9080))
            .unwrap()
            .unwrap();
        assert_eq!(
            (r.method.as_str(), r.path.as_str(), r.port),
            ("GET", "/", 9080)
        );
        // A principal without spiffe:// is the same identity.
        let r = args(&[("principal", "cluster.local/ns/a/sa/b")])
            .request(None)
            .unwrap();
        assert_eq!(r.principal.as_deref(), Some("cluster.local/ns/a/sa/b"));
    }

    /// [`RULES`] decoded as the proxies of namespace `ns` decode them (root istio-system).
    fn decoded_in(ns: &str) -> remora_model::rules::load::Decoded {
        let ctx = LoadContext {
            namespace: ns.into(),
            root_namespace: "istio-system".into(),
            ..Default::default()
        };
        remora_model::rules::load::decode_inputs(
            &remora_model::rules::load::Inputs {
                dir: "t".into(),
                files: vec![("p.yaml".into(), RULES.into())],
                skipped: Vec::new(),
                hash: String::new(),
            },
            &ctx,
        )
    }

    #[test]
    fn describe_says_which_policies_select_the_pod_and_why() {
        let decoded = decoded_in("bookinfo");
        assert!(decoded.errors.is_empty(), "{:?}", decoded.errors);
        let labels = [("app".to_string(), "ratings".to_string())].into();
        let v = selection(
            "bookinfo",
            &labels,
            "istio-system",
            &decoded.peer_authentications,
            &decoded.authorization_policies,
            &decoded.request_authentications,
        );
        let want = "\
Security:
  mTLS mode: STRICT (set by PeerAuthentication istio-system/default)
  AuthorizationPolicy bookinfo/ratings-viewer (ALLOW): selector app=ratings matches the pod's labels
  AuthorizationPolicy bookinfo/deny-admin (DENY): namespace-wide (namespace bookinfo, no selector)
  AuthorizationPolicy istio-system/try-deny-post (DENY (dry-run)): mesh-wide (root namespace istio-system, no selector)
  RequestAuthentication bookinfo/jwt (issuers testing@secure.istio.io): selector app=ratings matches the pod's labels
  PeerAuthentication istio-system/default (mode STRICT): mesh-wide (root namespace istio-system, no selector)
  not applied: AuthorizationPolicy bookinfo/productpage-only (ALLOW): selector does not select this pod (label app=productpage is \"ratings\" here)
";
        assert_eq!(render_selection(&v), want);
        // Under another root namespace istio-system's policies select nothing here, and the
        // mTLS mode falls back to Istio's default.
        let other = render_selection(&selection(
            "bookinfo",
            &labels,
            "remora-system",
            &decoded.peer_authentications,
            &decoded.authorization_policies,
            &decoded.request_authentications,
        ));
        assert!(other.starts_with("Security:\n  mTLS mode: PERMISSIVE (Istio's default: no PeerAuthentication sets a mode)\n"), "{other}");
        assert!(other.contains("  not applied: PeerAuthentication istio-system/default (mode STRICT): in namespace istio-system, not this pod's namespace (bookinfo) nor the root namespace (remora-system)\n"), "{other}");
        let none = selection("bookinfo", &labels, "istio-system", &[], &[], &[]);
        assert_eq!(
            render_selection(&none),
            "Security:\n  mTLS mode: PERMISSIVE (Istio's default: no PeerAuthentication sets a mode)\n  no AuthorizationPolicy, RequestAuthentication or PeerAuthentication selects this pod\n"
        );
    }

    #[test]
    fn no_peer_authentication_mode_at_a_gateway() {
        // The same STRICT mesh-wide PeerAuthentication: a sidecar enforces it, a gateway not.
        let mut d = dump(0);
        d.gateway = Some(Default::default());
        let req = args(&[]).request(Some(8443)).unwrap();
        let v = view(&d, Some(&req));
        assert_eq!(
            (v.mtls.mode.as_str(), v.mtls.policy.as_deref()),
            ("NONE", None)
        );
        assert_eq!(v.mtls.not_applied.as_deref(), Some(GATEWAY_MTLS));
        let text = render(&v);
        assert!(
            text.contains("\nmTLS on port 8443: PeerAuthentication does not apply to a gateway: its TLS comes from its Gateway servers (each server's tls.mode: SIMPLE, MUTUAL, ISTIO_MUTUAL, PASSTHROUGH; remora proxy-config listeners shows them)\n  PeerAuthentication istio-system/default: mesh-wide (root namespace istio-system, no selector); not applied at a gateway\n"),
            "{text}"
        );
        assert!(!text.contains("STRICT"), "{text}");
        let json = serde_json::to_value(&v).unwrap();
        assert_eq!(json["mtls"]["not_applied"], GATEWAY_MTLS);
        // A sidecar's dump keeps its mode and says nothing of gateways.
        let v = view(&dump(0), Some(&req));
        assert_eq!((v.mtls.mode.as_str(), v.mtls.not_applied), ("STRICT", None));

        // describe pod of a gateway pod: the PeerAuthentication its labels match is not applied.
        let decoded = decoded_in("istio-system");
        let labels = [("istio".to_string(), "ingressgateway".to_string())].into();
        let mut s = selection(
            "istio-system",
            &labels,
            "istio-system",
            &decoded.peer_authentications,
            &[],
            &[],
        );
        assert!(s.mtls.starts_with("STRICT"), "{s:?}");
        at_gateway(&mut s);
        assert_eq!(
            render_selection(&s),
            format!("Security:\n  mTLS mode: none: {GATEWAY_MTLS}\n  no AuthorizationPolicy, RequestAuthentication or PeerAuthentication selects this pod\n  not applied: PeerAuthentication istio-system/default (mode STRICT): mesh-wide (root namespace istio-system, no selector), but a gateway takes no PeerAuthentication\n")
        );
    }
}
