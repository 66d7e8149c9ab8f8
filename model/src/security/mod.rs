//! Istio's `security.istio.io` kinds — PeerAuthentication, AuthorizationPolicy and
//! RequestAuthentication (`v1` and `v1beta1`) — decoded with serde, validated as Istio's API
//! server and istiod validate them, scoped to one pod as istiod scopes them, and evaluated as
//! pure functions (`mtls_mode`, `authorization::evaluate`).
//!
//! The proxy enforces these decisions: the mTLS mode on its inbound listener, the
//! authorization verdict on each inbound request and connection. RequestAuthentication's JWT
//! checks are the proxy's own (`remora-proxy`'s `jwt` module); they give
//! `authorization::JwtAuth`.
//!
//! Layering: this module sits between `kinds` and `rules` (the rules' `Snapshot` holds the
//! policies that apply to its pod); it imports nothing from `rules`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::kinds::LoadContext;

pub mod authorization;
pub mod decode;
pub mod peer_authentication;
pub mod request_authentication;

pub use authorization::{evaluate, AuthorizationPolicy, Request, Verdict};
pub use peer_authentication::{mtls_mode, MtlsDecision, MtlsMode, PeerAuthentication};
pub use request_authentication::RequestAuthentication;

/// `spec.selector` of the three kinds.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadSelector {
    #[serde(default)]
    pub match_labels: BTreeMap<String, String>,
}

/// Which workloads a security policy applies to (Istio's three levels).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// In the root namespace without selector: every workload of the mesh.
    Mesh,
    /// Without selector: every workload of its namespace.
    Namespace,
    /// With `selector.matchLabels`: the workloads with those labels.
    Workload,
}

/// The level of a policy from its namespace and selector (`root`: the mesh's root namespace).
pub fn scope_of(namespace: &str, selector: Option<&WorkloadSelector>, root: &str) -> Scope {
    match selector {
        Some(s) if !s.match_labels.is_empty() => Scope::Workload,
        _ if namespace == root => Scope::Mesh,
        _ => Scope::Namespace,
    }
}

/// Does a policy of `namespace` with `selector` apply to the pod of `ctx`? As istiod selects
/// them: a policy in the pod's namespace, or in the root namespace (for every namespace), whose
/// `matchLabels` (if any) are a subset of the pod's labels. `Err` says why not.
pub fn applies(
    namespace: &str,
    selector: Option<&WorkloadSelector>,
    ctx: &LoadContext,
) -> Result<Scope, String> {
    let root = ctx.root_namespace.as_str();
    if namespace != ctx.namespace && namespace != root {
        return Err(format!(
            "in namespace {namespace}, not this pod's namespace ({}) nor the root namespace ({root})",
            ctx.namespace
        ));
    }
    let scope = scope_of(namespace, selector, root);
    if let Some(s) = selector {
        if let Some((k, v)) = s
            .match_labels
            .iter()
            .find(|(k, v)| ctx.pod_labels.get(*k) != Some(*v))
        {
            return Err(format!(
                "selector does not select this pod (label {k}={v} {})",
                match ctx.pod_labels.get(k) {
                    Some(have) => format!("is {have:?} here"),
                    None => "is not set here".to_string(),
                }
            ));
        }
    }
    Ok(scope)
}

/// Why a policy that [`applies`] to a pod applies, in words (`root`: the mesh's root
/// namespace): `mesh-wide (root namespace remora-system, no selector)`, `namespace-wide (namespace shop, no selector)`, `selector
/// app=reviews matches the pod's labels` (with ` (from the root namespace, for every
/// namespace)` for a root-namespace policy with a selector).
pub fn why_applies(namespace: &str, selector: Option<&WorkloadSelector>, root: &str) -> String {
    match scope_of(namespace, selector, root) {
        Scope::Mesh => format!("mesh-wide (root namespace {root}, no selector)"),
        Scope::Namespace => format!("namespace-wide (namespace {namespace}, no selector)"),
        Scope::Workload => {
            let labels = selector
                .map(|s| {
                    s.match_labels
                        .iter()
                        .map(|(k, v)| format!("{k}={v}"))
                        .collect::<Vec<_>>()
                        .join(",")
                })
                .unwrap_or_default();
            let from_root = if namespace == root {
                " (from the root namespace, for every namespace)"
            } else {
                ""
            };
            format!("selector {labels} matches the pod's labels{from_root}")
        }
    }
}

/// `namespace/name` and the rule index, naming what decided.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleRef {
    /// `namespace/name` of the policy.
    pub policy: String,
    /// Index in `spec.rules`.
    pub rule: usize,
}

/// Istio's string match for authorization values: `*` (any value, present), `prefix*`,
/// `*suffix`, else exact.
pub fn string_match(pattern: &str, value: &str) -> bool {
    if pattern == "*" {
        return true;
    }
    if let Some(suffix) = pattern.strip_prefix('*') {
        return value.ends_with(suffix);
    }
    if let Some(prefix) = pattern.strip_suffix('*') {
        return value.starts_with(prefix);
    }
    pattern == value
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn string_matching() {
        for (p, v, want) in [
            ("*", "", true),
            ("*", "x", true),
            ("abc", "abc", true),
            ("abc", "abcd", false),
            ("ab*", "abcd", true),
            ("ab*", "a", false),
            ("*cd", "abcd", true),
            ("*cd", "abc", false),
        ] {
            assert_eq!(string_match(p, v), want, "{p} {v}");
        }
    }

    #[test]
    fn scopes_and_selection() {
        let sel = |k: &str, v: &str| WorkloadSelector {
            match_labels: [(k.to_string(), v.to_string())].into(),
        };
        let httpbin = sel("app", "httpbin");
        // The same table with the default root namespace, Istio's, and a third: the scope
        // follows the configured root, and the others are plain namespaces.
        for root in [
            crate::kinds::DEFAULT_ROOT_NAMESPACE,
            "istio-system",
            "mesh-config",
        ] {
            let ctx = LoadContext {
                namespace: "foo".into(),
                pod_labels: [("app".to_string(), "httpbin".to_string())].into(),
                root_namespace: root.into(),
                ..Default::default()
            };
            assert_eq!(applies("foo", None, &ctx), Ok(Scope::Namespace));
            assert_eq!(applies(root, None, &ctx), Ok(Scope::Mesh), "{root}");
            assert_eq!(applies("foo", Some(&httpbin), &ctx), Ok(Scope::Workload));
            // A root-namespace policy with a selector selects pods of every namespace.
            assert_eq!(applies(root, Some(&httpbin), &ctx), Ok(Scope::Workload));
            assert_eq!(
                applies("foo", Some(&sel("app", "other")), &ctx),
                Err(
                    "selector does not select this pod (label app=other is \"httpbin\" here)"
                        .into()
                )
            );
            assert_eq!(
                applies("bar", None, &ctx),
                Err(format!(
                    "in namespace bar, not this pod's namespace (foo) nor the root namespace ({root})"
                ))
            );
            // The other candidates are ordinary namespaces under this root.
            for other in [
                crate::kinds::DEFAULT_ROOT_NAMESPACE,
                "istio-system",
                "mesh-config",
            ]
            .into_iter()
            .filter(|o| *o != root)
            {
                assert!(applies(other, None, &ctx).is_err(), "{other} under {root}");
                assert_eq!(scope_of(other, None, root), Scope::Namespace);
            }
            assert_eq!(
                why_applies("foo", Some(&httpbin), root),
                "selector app=httpbin matches the pod's labels"
            );
            assert_eq!(
                why_applies(root, Some(&httpbin), root),
                "selector app=httpbin matches the pod's labels (from the root namespace, for every namespace)"
            );
            assert_eq!(
                why_applies(root, None, root),
                format!("mesh-wide (root namespace {root}, no selector)")
            );
            assert_eq!(
                why_applies("foo", Some(&WorkloadSelector::default()), root),
                "namespace-wide (namespace foo, no selector)"
            );
            // An empty selector is namespace-wide.
            assert_eq!(
                applies("foo", Some(&WorkloadSelector::default()), &ctx),
                Ok(Scope::Namespace)
            );
        }
    }
}
