//! RequestAuthentication (JWT) on the inbound side: `authn` holds the pure decisions (token
//! locations, reading and checking a token, the outcome of a request), `oidc` where an issuer's
//! keys are named (OpenID discovery), `jwks` the keys themselves (fetch and cache). The request
//! step that uses them is `http::jwt`.

pub mod authn;
pub mod jwks;
pub mod oidc;

use std::sync::{Arc, Mutex};

use crate::rules::Snapshot;

/// What the proxy keeps for request authentication: the compiled rules of the current snapshot
/// and the JWKS cache.
#[derive(Default)]
pub struct JwtState {
    pub jwks: Arc<jwks::Jwks>,
    /// The rules compiled for one snapshot generation (inline JWKS parsed once per rule set).
    compiled: Mutex<Option<(u64, Arc<authn::Authn>)>>,
}

impl JwtState {
    pub fn new(settings: jwks::JwksSettings) -> JwtState {
        JwtState {
            jwks: Arc::new(jwks::Jwks::new(settings)),
            compiled: Mutex::new(None),
        }
    }

    /// The compiled rules of `snap` (compiled at the first request of each generation).
    pub fn rules(&self, snap: &Snapshot) -> Arc<authn::Authn> {
        let mut c = self.compiled.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((generation, a)) = c.as_ref() {
            if *generation == snap.generation {
                return a.clone();
            }
        }
        let a = Arc::new(authn::Authn::compile(&snap.request_authentications));
        for r in &a.rules {
            match &r.keys {
                authn::KeySource::Inline(Err(e)) => tracing::warn!(
                    "RequestAuthentication {}: issuer {:?}: jwks is not usable, every token of this issuer is rejected: {e}",
                    r.policy,
                    r.issuer
                ),
                authn::KeySource::Discovery(Err(e)) => tracing::warn!(
                    "RequestAuthentication {}: issuer {:?}: every token of this issuer is rejected: {e}",
                    r.policy,
                    r.issuer
                ),
                _ => {}
            }
        }
        *c = Some((snap.generation, a.clone()));
        a
    }
}
