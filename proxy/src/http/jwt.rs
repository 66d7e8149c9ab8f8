//! Inbound request authentication: the RequestAuthentications that apply to this workload,
//! decided by `jwt::authn` on the request's tokens, right before AuthorizationPolicy (which
//! sees the verified token's principal, audiences, presenter and claims). A request without a
//! token passes; an invalid token is refused with Envoy's answer (401, or 403 for audiences,
//! with `www-authenticate` and the reason as the body; gRPC: UNAUTHENTICATED), one log line
//! naming the RequestAuthentication and the reason (never the token), and
//! `remora_jwt_rejected_total{reason}`. A verified token's header is removed unless
//! `forwardOriginalToken`, and the output headers are set; those output headers are always
//! removed from what the client sent.

use std::time::{SystemTime, UNIX_EPOCH};

use pingora::proxy::Session;
use pingora::Result;
use remora_model::security::authorization::JwtAuth;
use tracing::info;

use super::{local_reply, ReqCtx};
use crate::jwt::authn::{self, Authn, Failure, KeyError, KeySource, Outcome};
use crate::jwt::jwks::Target;
use crate::jwt::JwtState;
use crate::rules::Snapshot;
use crate::telemetry::Metrics;

/// What the step decided.
pub(super) enum Step {
    /// The request was refused (and answered).
    Answered,
    /// Go on, with the verified token's facts when there was one.
    Continue(Option<JwtAuth>),
}

/// Authenticate an inbound request.
pub(super) async fn check(
    session: &mut Session,
    ctx: &mut ReqCtx,
    snap: &Snapshot,
    state: &JwtState,
    metrics: &Metrics,
) -> Result<Step> {
    if snap.request_authentications.is_empty() {
        return Ok(Step::Continue(None));
    }
    let authn = state.rules(snap);
    let req = session.req_header_mut();
    for h in &authn.output_headers {
        req.remove_header(h.as_str());
    }
    if authn::is_cors_preflight(&ctx.method, &req.headers) {
        return Ok(Step::Continue(None));
    }
    let found = authn::extract(&authn, &req.headers, &ctx.path);
    if found.is_empty() {
        return Ok(Step::Continue(None));
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let checked = authn::precheck(&authn, found, now);
    let mut keys = Vec::new();
    for i in authn::rules_needing_keys(&checked) {
        keys.push((i, rule_keys(&authn, i, state).await));
    }
    let lookup = |i: usize| {
        keys.iter()
            .find(|(k, _)| *k == i)
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| {
                Err(KeyError {
                    failure: Failure::JwksFetchFailed,
                    detail: "no keys looked up".into(),
                })
            })
    };
    match authn::decide(&authn, checked, &lookup) {
        Outcome::NoToken => Ok(Step::Continue(None)),
        Outcome::Verified { auth, remove, set } => {
            let req = session.req_header_mut();
            for h in &remove {
                req.remove_header(h.as_str());
            }
            for (h, v) in set {
                req.insert_header(h, v)?;
            }
            Ok(Step::Continue(Some(auth)))
        }
        Outcome::Rejected {
            failure,
            rule,
            location,
            detail,
        } => {
            reject(
                session, ctx, metrics, &authn, failure, rule, location, detail,
            )
            .await?;
            Ok(Step::Answered)
        }
    }
}

/// The keys of rule `i`: inline, or from the JWKS cache.
async fn rule_keys(authn: &Authn, i: usize, state: &JwtState) -> authn::Keys {
    let rule = &authn.rules[i];
    match &rule.keys {
        KeySource::Inline(Ok(k)) => Ok(k.clone()),
        KeySource::Inline(Err(e)) => Err(KeyError {
            failure: Failure::JwksInvalid,
            detail: format!("its inline jwks is not usable: {e}"),
        }),
        KeySource::Discovery(Err(e)) => Err(KeyError {
            failure: Failure::JwksFetchFailed,
            detail: e.clone(),
        }),
        KeySource::Uri(uri) => fetched(state, Target::Jwks(uri.clone()), rule).await,
        KeySource::Discovery(Ok(url)) => fetched(state, Target::Discovery(url.clone()), rule).await,
    }
}

async fn fetched(state: &JwtState, target: Target, rule: &authn::Rule) -> authn::Keys {
    state
        .jwks
        .get(&target, rule.fetch_timeout)
        .await
        .map_err(|e| KeyError {
            failure: Failure::JwksFetchFailed,
            detail: format!("the JWKS could not be fetched from {target}: {e}"),
        })
}

/// Log, count (in `metrics`) and answer a refusal.
#[allow(clippy::too_many_arguments)]
async fn reject(
    session: &mut Session,
    ctx: &mut ReqCtx,
    metrics: &Metrics,
    authn: &Authn,
    failure: Failure,
    rule: Option<usize>,
    location: usize,
    detail: Option<String>,
) -> Result<bool> {
    let whose = match rule.map(|i| &authn.rules[i]) {
        Some(r) => format!("RequestAuthentication {} issuer {:?}", r.policy, r.issuer),
        None => format!("RequestAuthentication {}", authn.policies()),
    };
    let from = authn.locations[location].0.describe();
    let detail = detail.map(|d| format!(" ({d})")).unwrap_or_default();
    info!(
        method = %ctx.method,
        path = %ctx.path.split('?').next().unwrap_or(""),
        reason = failure.reason(),
        "request rejected: JWT from {from} refused by {whose}: {}{detail}",
        failure.message()
    );
    metrics
        .jwt_rejected
        .with_label_values(&[failure.reason()])
        .inc();
    ctx.error = Some(format!(
        "jwt_authn_access_denied{{{}}}",
        failure.message().replace(' ', "_")
    ));
    // Envoy's realm is the request's URI without query (a token may be there).
    let uri: String = format!(
        "http://{}{}",
        ctx.authority,
        ctx.path.split(['?', '#']).next().unwrap_or("")
    )
    .chars()
    .filter(|c| c.is_ascii_graphic() && *c != '"' && *c != '\\')
    .collect();
    let realm = format!("Bearer realm=\"{uri}\", error=\"invalid_token\"");
    local_reply::send(
        session,
        ctx,
        failure.status(),
        &[("www-authenticate", realm.as_str())],
        failure.message(),
    )
    .await
}
