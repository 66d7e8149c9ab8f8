//! Authorization on the sidecar's inbound side and at the gateway: the AuthorizationPolicies
//! that apply to this workload (the gateway's pod, for `remora-proxy gateway`), decided by the
//! model's `security::evaluate` (Istio's order: DENY, then ALLOW) on what the proxy knows of
//! the request — the client's SPIFFE id from mTLS, its address, the destination port (the
//! gateway's own listening port), the host, method, path and headers, and the verified JWT of
//! RequestAuthentication (`http::jwt`). A denial is Istio's answer: 403 `RBAC: access denied` (gRPC:
//! PERMISSION_DENIED), and the access log's `error` names the policy and rule that decided.
//! Dry-run policies (`istio.io/dry-run`) are evaluated too and only logged.

use std::net::SocketAddr;

use http::HeaderName;

use pingora::proxy::Session;
use pingora::Result;
use remora_model::security::authorization::{
    evaluate_dry_run, reads, remote_ip_at_gateway, remote_ip_from_xff, HttpRequest, JwtAuth,
};
use remora_model::security::{evaluate, Request, Verdict};
use tracing::info;

use super::{local_reply, ReqCtx};
use crate::rules::Snapshot;
use crate::telemetry::Metrics;

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// Where the request is decided, which says how `remote.ip` is read from `X-Forwarded-For`
/// (Envoy's `use_remote_address`: false on Istio's sidecar inbound listener, true at its
/// gateways), with Istio's `numTrustedProxies` (`--num-trusted-proxies`).
#[derive(Clone, Copy, Debug)]
pub(super) enum At {
    /// The sidecar's inbound side: the last entry, or the one `num_trusted_proxies` before it.
    Inbound { num_trusted_proxies: u32 },
    /// The gateway: the client's own address, or the `num_trusted_proxies`-th entry from the
    /// right when proxies in front of it are trusted.
    Gateway { num_trusted_proxies: u32 },
}

/// Decide the request; `Ok(true)` when it was denied (and answered). `auth`: the verified
/// JWT's facts from RequestAuthentication (`http::jwt`), if the request carried one.
pub(super) async fn check(
    session: &mut Session,
    ctx: &mut ReqCtx,
    snap: &Snapshot,
    dst: SocketAddr,
    auth: Option<JwtAuth>,
    metrics: &Metrics,
    at: At,
) -> Result<bool> {
    let policies = &snap.authorization_policies;
    if policies.is_empty() {
        return Ok(false);
    }
    if !decide(session, ctx, snap, dst, auth, at) {
        return Ok(false);
    }
    // Denied (and logged): the request borrowed the session, which now answers.
    metrics.authz_denied.with_label_values(&["http"]).inc();
    local_reply::send(session, ctx, 403, &[], "RBAC: access denied").await
}

/// Evaluate and log; `true` when denied (`ctx.error` then holds Envoy's details).
fn decide(
    session: &Session,
    ctx: &mut ReqCtx,
    snap: &Snapshot,
    dst: SocketAddr,
    auth: Option<JwtAuth>,
    at: At,
) -> bool {
    let policies = &snap.authorization_policies;
    let req = request(session, ctx, snap, dst, auth, at);
    if let Some(shadow) = evaluate_dry_run(policies, &req) {
        info!(
            path = %ctx.path,
            principal = ?req.source_principal,
            "dry-run authorization: {}",
            describe(&shadow)
        );
    }
    let verdict = evaluate(policies, &req);
    match &verdict {
        Verdict::Allow { audit, .. } if !audit.is_empty() => {
            info!(path = %ctx.path, principal = ?req.source_principal, "authorization AUDIT: {}", describe(&verdict));
            false
        }
        Verdict::Allow { .. } => false,
        Verdict::Deny { .. } => {
            let why = describe(&verdict);
            info!(
                method = %ctx.method,
                path = %ctx.path,
                principal = req.source_principal.unwrap_or("none (plain text)"),
                request_principal = req
                    .http
                    .as_ref()
                    .and_then(|h| h.auth.as_ref())
                    .map_or("none (no JWT)", |a| a.principal.as_str()),
                source = ?req.source_ip,
                remote = ?req.remote_ip,
                "request denied: {why}"
            );
            drop(req);
            ctx.error = Some(istio_details(&verdict));
            true
        }
    }
}

/// What the proxy knows of the request, as the model's input. `remote.ip` comes from
/// `X-Forwarded-For` as Envoy reads it on Istio's sidecar inbound listener
/// (`remote_ip_from_xff`) or at its gateway (`remote_ip_at_gateway`).
fn request<'a>(
    session: &'a Session,
    ctx: &'a ReqCtx,
    snap: &Snapshot,
    dst: SocketAddr,
    auth: Option<JwtAuth>,
    at: At,
) -> Request<'a> {
    let head = &session.req_header().headers;
    // Only what a rule will read is derived and copied.
    let reads = reads(&snap.authorization_policies);
    let xff = || {
        head.get_all(X_FORWARDED_FOR)
            .iter()
            .filter_map(|v| v.to_str().ok())
    };
    let remote_ip = match at {
        _ if !reads.remote_ip => None,
        At::Inbound {
            num_trusted_proxies,
        } => remote_ip_from_xff(xff(), num_trusted_proxies),
        At::Gateway {
            num_trusted_proxies,
        } => remote_ip_at_gateway(xff(), num_trusted_proxies),
    };
    let headers = if reads.headers {
        head.iter()
            .filter_map(|(k, v)| Some((k.as_str(), v.to_str().ok()?)))
            .collect()
    } else {
        Vec::new()
    };
    Request {
        source_principal: ctx.peer_identity.as_ref().map(|p| p.principal.as_str()),
        source_ip: session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip()),
        remote_ip,
        destination_ip: Some(dst.ip()),
        destination_port: dst.port(),
        sni: None,
        http: Some(HttpRequest {
            host: &ctx.authority,
            method: &ctx.method,
            path: &ctx.path,
            headers,
            auth,
        }),
    }
}

/// `denied by DENY policy shop/deny-admin rule 0`, `allowed by ALLOW policy …`, or
/// `denied: ALLOW policies shop/a apply and none matched` (the model's wording, which
/// `remora proxy-config authz` prints too).
pub fn describe(v: &Verdict) -> String {
    v.describe()
}

/// Envoy's response-code details for an RBAC denial, as Istio users grep for them.
fn istio_details(v: &Verdict) -> String {
    match v {
        Verdict::Deny {
            policy,
            rule: Some(i),
            ..
        } => {
            let (ns, name) = policy.split_once('/').unwrap_or(("", policy));
            format!("rbac_access_denied_matched_policy[ns[{ns}]-policy[{name}]-rule[{i}]]")
        }
        _ => "rbac_access_denied_matched_policy[none]".to_string(),
    }
}

/// Why a TCP connection was denied: remora's words, and Envoy's connection termination details
/// (its RBAC network filter's `rbac_access_denied_matched_policy[...]`).
pub struct TcpDenied {
    pub reason: String,
    pub details: String,
}

/// Decide an opaque TCP connection (no HTTP attributes) on the sidecar's inbound side or at
/// the gateway (`dst`: the gateway's own listening address; `sni`: the ClientHello's server
/// name when the gateway read one, Istio's `connection.sni`); why, when denied.
pub fn check_tcp(
    snap: &Snapshot,
    principal: Option<&str>,
    source: Option<SocketAddr>,
    dst: SocketAddr,
    sni: Option<&str>,
) -> Option<TcpDenied> {
    let policies = &snap.authorization_policies;
    if policies.is_empty() {
        return None;
    }
    let req = Request {
        source_principal: principal,
        source_ip: source.map(|a| a.ip()),
        remote_ip: None,
        destination_ip: Some(dst.ip()),
        destination_port: dst.port(),
        sni: sni.map(str::to_string),
        http: None,
    };
    if let Some(shadow) = evaluate_dry_run(policies, &req) {
        info!(%dst, principal = ?principal, "dry-run authorization (tcp): {}", describe(&shadow));
    }
    let v = evaluate(policies, &req);
    (!v.is_allow()).then(|| TcpDenied {
        reason: describe(&v),
        details: istio_details(&v),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use remora_model::security::RuleRef;

    #[test]
    fn wording_and_details() {
        let deny = Verdict::Deny {
            policy: "shop/deny-admin".into(),
            rule: Some(1),
            audit: vec![],
        };
        assert_eq!(
            describe(&deny),
            "denied by DENY policy shop/deny-admin rule 1"
        );
        assert_eq!(
            istio_details(&deny),
            "rbac_access_denied_matched_policy[ns[shop]-policy[deny-admin]-rule[1]]"
        );
        let none = Verdict::Deny {
            policy: "shop/allow-get".into(),
            rule: None,
            audit: vec![],
        };
        assert_eq!(
            describe(&none),
            "denied: ALLOW policies shop/allow-get apply and none matched"
        );
        let allow = Verdict::Allow {
            by: Some(RuleRef {
                policy: "shop/allow-get".into(),
                rule: 0,
            }),
            audit: vec![],
        };
        assert_eq!(
            describe(&allow),
            "allowed by ALLOW policy shop/allow-get rule 0"
        );
    }
}
