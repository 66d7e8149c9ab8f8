//! Security rules shared by the lab scenario (`tests/tests/scenarios.rs`) and the demo
//! (`remora-lab demo`): an AuthorizationPolicy that lets only reviews call ratings, and a
//! RequestAuthentication with Istio's sample JWKS that details needs on `/secure`.

use std::path::PathBuf;

/// Istio's JWT samples (`<shared>/anchors/istio/jwt/`: `$REMORA_SHARED`, else `shared/` next
/// to the checkout): the JWKS and the demo token signed by its key; `None` when absent.
pub fn jwt_samples() -> Option<(String, String)> {
    let shared = match std::env::var_os("REMORA_SHARED") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared"),
    };
    let dir = shared.join("anchors/istio/jwt");
    let jwks = std::fs::read_to_string(dir.join("jwks.json")).ok()?;
    let demo = std::fs::read_to_string(dir.join("demo.jwt")).ok()?;
    Some((jwks.trim().to_string(), demo.trim().to_string()))
}

/// The token with its signature's first character changed: the same header and claims, a
/// signature that does not verify.
pub fn forge(token: &str) -> String {
    match token.rsplit_once('.') {
        Some((head, sig)) => {
            let flipped = if sig.starts_with('A') { "B" } else { "A" };
            format!("{head}.{flipped}{}", sig.get(1..).unwrap_or(""))
        }
        None => format!("{token}x"),
    }
}

/// The rules (YAML): `ratings-viewer` (ratings allows the principal of reviews' service
/// account only), `details-jwt` (tokens of `testing@secure.istio.io` checked against `jwks`)
/// and `details-secure-needs-jwt` (a DENY on `/secure*` for requests without a valid token).
pub fn authz_rules(jwks: &str) -> String {
    let jwks = serde_json::to_string(jwks.trim()).unwrap_or_default();
    format!(
        r#"apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: ratings-viewer, namespace: bookinfo}}
spec:
  selector: {{matchLabels: {{app: ratings}}}}
  action: ALLOW
  rules:
  - from: [{{source: {{principals: ["cluster.local/ns/bookinfo/sa/bookinfo-reviews"]}}}}]
---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: details-jwt, namespace: bookinfo}}
spec:
  selector: {{matchLabels: {{app: details}}}}
  jwtRules:
  - issuer: testing@secure.istio.io
    jwks: {jwks}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: details-secure-needs-jwt, namespace: bookinfo}}
spec:
  selector: {{matchLabels: {{app: details}}}}
  action: DENY
  rules:
  - from: [{{source: {{notRequestPrincipals: ["*"]}}}}]
    to: [{{operation: {{paths: ["/secure*"]}}}}]
"#
    )
}
