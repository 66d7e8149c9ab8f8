//! RequestAuthentication: which JWTs a workload accepts. Decoded and validated here; the
//! tokens themselves are verified by the data plane (`remora-proxy`'s `jwt` module).

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::decode::{check_selector, no_empty, refuse_target_refs, SpecError};
use super::{scope_of, Scope, WorkloadSelector};
use crate::kinds::Meta;

/// `jwtRules[].fromHeaders[]`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct JwtHeader {
    #[serde(default)]
    pub name: String,
    /// Stripped before decoding the token (e.g. `"Bearer "`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub prefix: String,
}

/// `jwtRules[].outputClaimToHeaders[]`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClaimToHeader {
    #[serde(default)]
    pub header: String,
    #[serde(default)]
    pub claim: String,
}

/// `jwtRules[].presence`.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Presence {
    #[default]
    Optional,
    Required,
}

/// `jwtRules[]`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct JwtRule {
    pub issuer: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub audiences: Vec<String>,
    /// An inline JSON Web Key Set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jwks: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jwks_uri: Option<String>,
    /// The older spelling of `jwksUri`.
    #[serde(rename = "jwks_uri", skip_serializing_if = "Option::is_none")]
    pub jwks_uri_snake: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub from_headers: Vec<JwtHeader>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub from_params: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub from_cookies: Vec<String>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub output_payload_to_header: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub output_claim_to_headers: Vec<ClaimToHeader>,
    pub forward_original_token: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub presence: Option<Presence>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub space_delimited_claims: Vec<String>,
    /// JWKS fetch timeout (a duration such as `5s`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
}

impl JwtRule {
    /// `jwksUri` in either spelling.
    pub fn jwks_url(&self) -> Option<&str> {
        self.jwks_uri.as_deref().or(self.jwks_uri_snake.as_deref())
    }
}

/// `spec` of a RequestAuthentication.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RequestAuthenticationSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<WorkloadSelector>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub jwt_rules: Vec<JwtRule>,
    #[serde(default, skip_serializing)]
    pub target_ref: Option<Value>,
    #[serde(default, skip_serializing)]
    pub target_refs: Option<Value>,
}

/// One RequestAuthentication as loaded.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestAuthentication {
    pub meta: Meta,
    pub scope: Scope,
    pub spec: RequestAuthenticationSpec,
}

impl RequestAuthentication {
    /// `root_namespace`: the mesh's root namespace (it decides the policy's [`Scope`]).
    pub fn new(
        meta: Meta,
        spec: RequestAuthenticationSpec,
        root_namespace: &str,
    ) -> Result<Self, SpecError> {
        validate(&spec)?;
        Ok(RequestAuthentication {
            scope: scope_of(&meta.namespace, spec.selector.as_ref(), root_namespace),
            meta,
            spec,
        })
    }
}

fn header_name_ok(h: &str) -> bool {
    !h.is_empty()
        && h.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// Istio's validation of a RequestAuthentication spec.
pub fn validate(spec: &RequestAuthenticationSpec) -> Result<(), SpecError> {
    refuse_target_refs(&spec.target_ref, &spec.target_refs)?;
    check_selector(spec.selector.as_ref())?;
    if spec.jwt_rules.len() > 4096 {
        return Err(SpecError::new("spec.jwtRules", "at most 4096 rules"));
    }
    for (i, r) in spec.jwt_rules.iter().enumerate() {
        let p = format!("spec.jwtRules[{i}]");
        if r.issuer.is_empty() {
            return Err(SpecError::new(format!("{p}.issuer"), "issuer must be set"));
        }
        if spec.jwt_rules[..i].iter().any(|o| o.issuer == r.issuer) {
            return Err(SpecError::new(
                format!("{p}.issuer"),
                format!("{:?}: issuer is already used by an earlier rule", r.issuer),
            ));
        }
        no_empty(&format!("{p}.audiences"), &r.audiences)?;
        no_empty(&format!("{p}.fromParams"), &r.from_params)?;
        no_empty(&format!("{p}.fromCookies"), &r.from_cookies)?;
        no_empty(
            &format!("{p}.spaceDelimitedClaims"),
            &r.space_delimited_claims,
        )?;
        let set = [
            r.jwks.is_some(),
            r.jwks_uri.is_some(),
            r.jwks_uri_snake.is_some(),
        ]
        .iter()
        .filter(|b| **b)
        .count();
        if set > 1 {
            return Err(SpecError::new(
                p.clone(),
                "only one of jwks or jwksUri can be set",
            ));
        }
        for (name, uri) in [("jwksUri", &r.jwks_uri), ("jwks_uri", &r.jwks_uri_snake)] {
            if let Some(u) = uri {
                let ok = (u.starts_with("http://") && u.len() > 7)
                    || (u.starts_with("https://") && u.len() > 8);
                if !ok || u.len() > 2048 {
                    return Err(SpecError::new(
                        format!("{p}.{name}"),
                        format!("{u:?}: url must have scheme http:// or https:// (at most 2048 characters)"),
                    ));
                }
            }
        }
        if let Some(j) = &r.jwks {
            if let Err(e) = serde_json::from_str::<Value>(j) {
                return Err(SpecError::new(
                    format!("{p}.jwks"),
                    format!("not a JSON Web Key Set: {e}"),
                ));
            }
        }
        for (k, h) in r.from_headers.iter().enumerate() {
            if h.name.is_empty() {
                return Err(SpecError::new(
                    format!("{p}.fromHeaders[{k}].name"),
                    "required field is missing or empty",
                ));
            }
        }
        for (k, c) in r.output_claim_to_headers.iter().enumerate() {
            let f = format!("{p}.outputClaimToHeaders[{k}]");
            if !header_name_ok(&c.header) {
                return Err(SpecError::new(
                    format!("{f}.header"),
                    format!(
                        "{:?}: a header name of letters, digits, '-' and '_' is required",
                        c.header
                    ),
                ));
            }
            if c.claim.is_empty() {
                return Err(SpecError::new(
                    format!("{f}.claim"),
                    "required field is missing or empty",
                ));
            }
        }
        if !r.output_payload_to_header.is_empty() && !header_name_ok(&r.output_payload_to_header) {
            return Err(SpecError::new(
                format!("{p}.outputPayloadToHeader"),
                format!("{:?}: not a valid header name", r.output_payload_to_header),
            ));
        }
        if let Some(t) = &r.timeout {
            match crate::duration::parse_duration(t) {
                Ok(d) if d >= std::time::Duration::from_millis(1) => {}
                Ok(_) => {
                    return Err(SpecError::new(
                        format!("{p}.timeout"),
                        format!("{t:?}: must be a valid duration greater than 1ms"),
                    ))
                }
                Err(e) => {
                    return Err(SpecError::new(
                        format!("{p}.timeout"),
                        format!("{t:?}: {e}"),
                    ))
                }
            }
        }
    }
    Ok(())
}
