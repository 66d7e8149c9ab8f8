//! Who is calling: the bearer token of the request, checked by the API server with a
//! TokenReview (`POST /apis/authentication.k8s.io/v1/tokenreviews`, `spec.audiences` set to the
//! CA's audience). The parsing of the header and of the review's answer is pure
//! ([`bearer`], [`identity_of`]); [`Authenticator`] only makes the call.

use std::time::Duration;

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec, TokenReviewStatus};
use kube::api::PostParams;
use kube::{Api, Client};

use super::sign::{Identity, Reason, Refusal};

/// Longest token read (projected service-account tokens are about 1 KiB).
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;
/// The bound-token extra naming the pod.
pub const POD_NAME_EXTRA: &str = "authentication.kubernetes.io/pod-name";
/// Longest API server error copied into a refusal.
const MAX_ERROR: usize = 300;

/// The token of an `authorization` header value (`Bearer <token>`).
pub fn bearer<'a>(header: Option<&'a str>, audience: &str) -> Result<&'a str, Refusal> {
    let unauth = |m: String| Refusal::new(Reason::Unauthenticated, m);
    let Some(h) = header else {
        return Err(unauth(format!(
            "no authorization header: send `authorization: Bearer <service account token for audience {audience}>`"
        )));
    };
    let token = match h.split_once(' ') {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("bearer") => rest.trim(),
        _ => {
            return Err(unauth(
                "authorization header is not `Bearer <token>`".to_string(),
            ))
        }
    };
    if token.is_empty() {
        return Err(unauth(
            "authorization header has an empty bearer token".into(),
        ));
    }
    if token.len() > MAX_TOKEN_BYTES {
        return Err(unauth(format!(
            "bearer token of {} bytes, more than {MAX_TOKEN_BYTES}",
            token.len()
        )));
    }
    Ok(token)
}

fn clip(s: &str) -> &str {
    if s.len() <= MAX_ERROR {
        return s;
    }
    let mut end = MAX_ERROR;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// The identity a TokenReview's status grants, for a review sent with `audience`.
pub fn identity_of(
    status: Option<&TokenReviewStatus>,
    audience: &str,
) -> Result<Identity, Refusal> {
    let rejected = |m: String| Refusal::new(Reason::TokenRejected, m);
    let Some(st) = status else {
        return Err(Refusal::new(
            Reason::TokenReviewFailed,
            "TokenReview answered without a status",
        ));
    };
    if st.authenticated != Some(true) {
        let why = st.error.as_deref().unwrap_or("no reason given");
        return Err(rejected(format!(
            "token not authenticated by the API server: {}",
            clip(why)
        )));
    }
    let audiences = st.audiences.as_deref().unwrap_or_default();
    if !audiences.iter().any(|a| a == audience) {
        return Err(rejected(format!(
            "token is not for audience {audience:?} (the review granted {audiences:?})"
        )));
    }
    let user = st.user.as_ref();
    let name = user.and_then(|u| u.username.as_deref()).unwrap_or_default();
    let parts: Vec<&str> = name.split(':').collect();
    let (ns, sa) = match parts.as_slice() {
        ["system", "serviceaccount", ns, sa] if valid_name(ns) && valid_name(sa) => (*ns, *sa),
        _ => {
            return Err(Refusal::new(
                Reason::NotServiceAccount,
                format!(
                    "token of user {:?} is not a service account's (system:serviceaccount:<namespace>:<name>)",
                    clip(name)
                ),
            ))
        }
    };
    let pod = user
        .and_then(|u| u.extra.as_ref())
        .and_then(|e| e.get(POD_NAME_EXTRA))
        .and_then(|v| v.first())
        .filter(|p| valid_name(p))
        .cloned();
    Ok(Identity {
        namespace: ns.to_string(),
        service_account: sa.to_string(),
        pod,
    })
}

/// A Kubernetes object name (DNS subdomain): what may appear in a SPIFFE path segment.
fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && s.as_bytes()[0].is_ascii_alphanumeric()
}

/// Sends TokenReviews.
#[derive(Clone)]
pub struct Authenticator {
    api: Api<TokenReview>,
    pub audience: String,
    pub timeout: Duration,
}

impl Authenticator {
    pub fn new(client: Client, audience: &str, timeout: Duration) -> Authenticator {
        Authenticator {
            api: Api::all(client),
            audience: audience.to_string(),
            timeout,
        }
    }

    /// The identity of `token`, as the API server sees it.
    pub async fn authenticate(&self, token: &str) -> Result<Identity, Refusal> {
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: token.to_string(),
                audiences: Some(vec![self.audience.clone()]),
            },
            ..TokenReview::default()
        };
        let failed = |m: String| Refusal::new(Reason::TokenReviewFailed, m);
        let answer = tokio::time::timeout(
            self.timeout,
            self.api.create(&PostParams::default(), &review),
        )
        .await
        .map_err(|_| {
            failed(format!(
                "TokenReview: no answer from the API server within {}s",
                self.timeout.as_secs()
            ))
        })?
        .map_err(|e| failed(format!("TokenReview failed: {}", clip(&e.to_string()))))?;
        identity_of(answer.status.as_ref(), &self.audience)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::authentication::v1::UserInfo;

    fn status(user: &str, auds: &[&str], pod: Option<&str>) -> TokenReviewStatus {
        TokenReviewStatus {
            authenticated: Some(true),
            audiences: Some(auds.iter().map(|s| s.to_string()).collect()),
            user: Some(UserInfo {
                username: Some(user.into()),
                extra: pod.map(|p| [(POD_NAME_EXTRA.to_string(), vec![p.to_string()])].into()),
                ..Default::default()
            }),
            error: None,
        }
    }

    #[test]
    fn bearer_headers() {
        assert_eq!(bearer(Some("Bearer abc"), "a").unwrap(), "abc");
        assert_eq!(bearer(Some("bearer  abc "), "a").unwrap(), "abc");
        for (h, want) in [
            (None, "no authorization header"),
            (Some("Basic abc"), "not `Bearer <token>`"),
            (Some("Bearer"), "not `Bearer <token>`"),
            (Some("Bearer  "), "empty bearer token"),
        ] {
            let r = bearer(h, "remora-ca").unwrap_err();
            assert_eq!(r.reason, Reason::Unauthenticated);
            assert!(r.message.contains(want), "{h:?}: {}", r.message);
        }
        let long = format!("Bearer {}", "x".repeat(MAX_TOKEN_BYTES + 1));
        assert!(bearer(Some(&long), "a")
            .unwrap_err()
            .message
            .contains("more than"));
    }

    #[test]
    fn review_answers() {
        let ok = identity_of(
            Some(&status(
                "system:serviceaccount:default:httpbin",
                &["remora-ca"],
                Some("httpbin-1"),
            )),
            "remora-ca",
        )
        .unwrap();
        assert_eq!(
            ok,
            Identity {
                namespace: "default".into(),
                service_account: "httpbin".into(),
                pod: Some("httpbin-1".into())
            }
        );
        assert_eq!(
            ok.spiffe("cluster.local"),
            "spiffe://cluster.local/ns/default/sa/httpbin"
        );

        let rows: Vec<(Option<TokenReviewStatus>, Reason, &str)> = vec![
            (None, Reason::TokenReviewFailed, "without a status"),
            (
                Some(TokenReviewStatus {
                    authenticated: Some(false),
                    error: Some("[invalid bearer token, token audiences [\"api\"] is invalid for the target audiences [\"remora-ca\"]]".into()),
                    ..Default::default()
                }),
                Reason::TokenRejected,
                "token not authenticated by the API server: [invalid bearer token, token audiences",
            ),
            (
                Some(TokenReviewStatus::default()),
                Reason::TokenRejected,
                "no reason given",
            ),
            (
                Some(status("system:serviceaccount:default:httpbin", &["other"], None)),
                Reason::TokenRejected,
                "not for audience \"remora-ca\"",
            ),
            (
                Some(status("system:serviceaccount:default:httpbin", &[], None)),
                Reason::TokenRejected,
                "not for audience",
            ),
            (
                Some(status("alice", &["remora-ca"], None)),
                Reason::NotServiceAccount,
                "user \"alice\" is not a service account's",
            ),
            (
                Some(status("system:serviceaccount:default:a:b", &["remora-ca"], None)),
                Reason::NotServiceAccount,
                "not a service account's",
            ),
            (
                Some(status("system:serviceaccount:Default/x:sa", &["remora-ca"], None)),
                Reason::NotServiceAccount,
                "not a service account's",
            ),
        ];
        for (st, reason, want) in rows {
            let r = identity_of(st.as_ref(), "remora-ca").unwrap_err();
            assert_eq!(r.reason, reason, "{st:?}");
            assert!(r.message.contains(want), "{st:?}: {}", r.message);
        }
    }
}
