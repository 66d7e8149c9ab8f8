//! PeerAuthentication: which mTLS mode a workload's inbound port accepts.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::decode::{check_selector, parse_port, refuse_target_refs, SpecError};
use super::{scope_of, Scope, WorkloadSelector};
use crate::kinds::Meta;

/// `mtls.mode`.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum MtlsMode {
    /// Inherit from the parent level (the default when `mode` is not set).
    #[default]
    Unset,
    /// Plain text only.
    Disable,
    /// mTLS and plain text.
    Permissive,
    /// mTLS only.
    Strict,
}

impl std::fmt::Display for MtlsMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            MtlsMode::Unset => "UNSET",
            MtlsMode::Disable => "DISABLE",
            MtlsMode::Permissive => "PERMISSIVE",
            MtlsMode::Strict => "STRICT",
        })
    }
}

impl MtlsMode {
    /// Does this mode accept plain-text connections?
    pub fn allows_plain_text(self) -> bool {
        !matches!(self, MtlsMode::Strict)
    }
}

/// `spec.mtls` and the values of `spec.portLevelMtls`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Mtls {
    #[serde(default)]
    pub mode: MtlsMode,
}

/// `spec` of a PeerAuthentication.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PeerAuthenticationSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<WorkloadSelector>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtls: Option<Mtls>,
    /// Port (the workload's port, as a string key) → mode. Istio honours it only with a
    /// selector.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port_level_mtls: Option<BTreeMap<String, Mtls>>,
    /// Refused (gateway/waypoint attachment); kept only to name it in the error (not in
    /// Istio's schema either).
    #[serde(default, skip_serializing)]
    #[schemars(skip)]
    pub target_ref: Option<Value>,
    #[serde(default, skip_serializing)]
    #[schemars(skip)]
    pub target_refs: Option<Value>,
}

/// One PeerAuthentication as loaded.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerAuthentication {
    pub meta: Meta,
    pub scope: Scope,
    pub spec: PeerAuthenticationSpec,
}

impl PeerAuthentication {
    /// `root_namespace`: the mesh's root namespace (it decides the policy's [`Scope`]).
    pub fn new(
        meta: Meta,
        spec: PeerAuthenticationSpec,
        root_namespace: &str,
    ) -> Result<Self, SpecError> {
        validate(&spec)?;
        Ok(PeerAuthentication {
            scope: scope_of(&meta.namespace, spec.selector.as_ref(), root_namespace),
            meta,
            spec,
        })
    }

    fn mode(&self) -> MtlsMode {
        self.spec.mtls.as_ref().map(|m| m.mode).unwrap_or_default()
    }
}

/// Istio's checks beyond the schema types.
pub fn validate(spec: &PeerAuthenticationSpec) -> Result<(), SpecError> {
    refuse_target_refs(&spec.target_ref, &spec.target_refs)?;
    check_selector(spec.selector.as_ref())?;
    if let Some(ports) = &spec.port_level_mtls {
        if ports.is_empty() {
            return Err(SpecError::new(
                "spec.portLevelMtls",
                "must have at least one port when set",
            ));
        }
        for port in ports.keys() {
            parse_port(port)
                .map_err(|e| SpecError::new(format!("spec.portLevelMtls.{port}"), e))?;
        }
        if spec
            .selector
            .as_ref()
            .is_none_or(|s| s.match_labels.is_empty())
        {
            return Err(SpecError::new(
                "spec.portLevelMtls",
                "portLevelMtls requires selector (a workload-level policy)",
            ));
        }
    }
    Ok(())
}

/// The effective mode of one port and the policies that decided it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MtlsDecision {
    pub mode: MtlsMode,
    /// `namespace/name` of the policy whose setting won; `None`: Istio's default (PERMISSIVE).
    pub policy: Option<String>,
    /// The level of that policy.
    pub scope: Option<Scope>,
    /// The setting came from `portLevelMtls`.
    pub port_level: bool,
}

/// The effective mTLS mode of inbound `port` for the workload the `policies` were selected
/// for (the snapshot keeps only the ones that apply to its pod), composed as istiod does:
///
/// - at most one policy per level counts: mesh (root namespace, no selector), namespace (no
///   selector), workload (a selector, outside the root namespace; root-namespace policies with
///   a selector are not used for mTLS). Istio keeps the oldest when several exist; without
///   creation times the first in file order is used (the linter warns).
/// - mesh, then namespace, then workload override the mode unless their mode is `UNSET`;
///   nothing set: `PERMISSIVE`.
/// - the workload policy's `portLevelMtls` entry for `port` overrides last; its `UNSET`
///   keeps the inherited mode.
///
/// `root_namespace` is the mesh's root namespace (the policies' scopes were decided with it).
pub fn mtls_mode(policies: &[PeerAuthentication], port: u16, root_namespace: &str) -> MtlsDecision {
    let first = |scope: Scope| policies.iter().find(|p| p.scope == scope);
    let mesh = policies
        .iter()
        .find(|p| p.scope == Scope::Mesh && p.meta.namespace == root_namespace);
    let namespace = first(Scope::Namespace);
    let workload = policies
        .iter()
        .find(|p| p.scope == Scope::Workload && p.meta.namespace != root_namespace);
    let mut out = MtlsDecision {
        mode: MtlsMode::Permissive,
        policy: None,
        scope: None,
        port_level: false,
    };
    for p in [mesh, namespace, workload].into_iter().flatten() {
        if p.mode() != MtlsMode::Unset {
            out = MtlsDecision {
                mode: p.mode(),
                policy: Some(p.meta.key()),
                scope: Some(p.scope),
                port_level: false,
            };
        }
    }
    if let Some(w) = workload {
        let entry = w.spec.port_level_mtls.as_ref().and_then(|m| {
            m.iter()
                .find(|(k, _)| parse_port(k).ok() == Some(port))
                .map(|(_, v)| v.mode)
        });
        if let Some(mode) = entry.filter(|m| *m != MtlsMode::Unset) {
            out = MtlsDecision {
                mode,
                policy: Some(w.meta.key()),
                scope: Some(Scope::Workload),
                port_level: true,
            };
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kinds::DEFAULT_ROOT_NAMESPACE;

    fn pa_in(ns: &str, name: &str, yaml: &str, root: &str) -> PeerAuthentication {
        let v: Value = serde_yaml_ng::from_str(yaml).unwrap();
        let mut unknown = Vec::new();
        let spec = super::super::decode::spec::<PeerAuthenticationSpec>(&v, &mut unknown).unwrap();
        assert!(unknown.is_empty(), "{unknown:?}");
        let meta = Meta {
            kind: "PeerAuthentication".into(),
            api_version: "security.istio.io/v1".into(),
            name: name.into(),
            namespace: ns.into(),
            file: "t.yaml".into(),
            document: 1,
        };
        PeerAuthentication::new(meta, spec, root).unwrap()
    }

    #[test]
    fn precedence_table() {
        // The same table under the default root namespace and under Istio's.
        for root in [DEFAULT_ROOT_NAMESPACE, "istio-system"] {
            precedence_table_in(root);
        }
    }

    fn precedence_table_in(root: &str) {
        use MtlsMode::*;
        let pa = |ns: &str, name: &str, yaml: &str| pa_in(ns, name, yaml, root);
        let mesh_key = format!("{root}/mesh");
        let mesh_key = mesh_key.as_str();
        let mesh_strict = pa(root, "mesh", "mtls: {mode: STRICT}");
        let mesh_unset = pa(root, "mesh", "mtls: {}");
        let ns_permissive = pa("foo", "ns", "mtls: {mode: PERMISSIVE}");
        let ns_unset = pa("foo", "ns", "{}");
        let wl_disable = pa(
            "foo",
            "wl",
            "selector: {matchLabels: {app: a}}\nmtls: {mode: DISABLE}",
        );
        let wl_ports = pa(
            "foo",
            "wl",
            "selector: {matchLabels: {app: a}}\nmtls: {mode: UNSET}\nportLevelMtls:\n  \"8080\": {mode: DISABLE}\n  \"9090\": {mode: UNSET}\n  \"9443\": {mode: STRICT}",
        );
        let root_selector = pa(
            root,
            "root-wl",
            "selector: {matchLabels: {app: a}}\nmtls: {mode: DISABLE}",
        );
        /// (case, policies, port, mode, deciding policy, from portLevelMtls)
        type Case<'a> = (
            &'a str,
            Vec<&'a PeerAuthentication>,
            u16,
            MtlsMode,
            Option<&'a str>,
            bool,
        );
        let cases: Vec<Case> = vec![
            ("nothing: PERMISSIVE", vec![], 80, Permissive, None, false),
            (
                "mesh STRICT",
                vec![&mesh_strict],
                80,
                Strict,
                Some(mesh_key),
                false,
            ),
            (
                "mesh UNSET: default",
                vec![&mesh_unset],
                80,
                Permissive,
                None,
                false,
            ),
            (
                "namespace over mesh",
                vec![&mesh_strict, &ns_permissive],
                80,
                Permissive,
                Some("foo/ns"),
                false,
            ),
            (
                "namespace UNSET inherits mesh",
                vec![&mesh_strict, &ns_unset],
                80,
                Strict,
                Some(mesh_key),
                false,
            ),
            (
                "workload over namespace",
                vec![&mesh_strict, &ns_permissive, &wl_disable],
                80,
                Disable,
                Some("foo/wl"),
                false,
            ),
            (
                "workload UNSET inherits, port override",
                vec![&mesh_strict, &wl_ports],
                8080,
                Disable,
                Some("foo/wl"),
                true,
            ),
            (
                "port UNSET keeps inherited",
                vec![&mesh_strict, &wl_ports],
                9090,
                Strict,
                Some(mesh_key),
                false,
            ),
            (
                "port STRICT",
                vec![&ns_permissive, &wl_ports],
                9443,
                Strict,
                Some("foo/wl"),
                true,
            ),
            (
                "other port inherits",
                vec![&ns_permissive, &wl_ports],
                80,
                Permissive,
                Some("foo/ns"),
                false,
            ),
            (
                "root-namespace selector not used for mTLS",
                vec![&mesh_strict, &root_selector],
                80,
                Strict,
                Some(mesh_key),
                false,
            ),
        ];
        for (name, pols, port, mode, policy, port_level) in cases {
            let pols: Vec<PeerAuthentication> = pols.into_iter().cloned().collect();
            let d = mtls_mode(&pols, port, root);
            assert_eq!(
                (d.mode, d.policy.as_deref(), d.port_level),
                (mode, policy, port_level),
                "{name} (root {root})"
            );
        }
    }

    #[test]
    fn validation_errors() {
        let check = |yaml: &str| -> String {
            let v: Value = serde_yaml_ng::from_str(yaml).unwrap();
            match super::super::decode::spec::<PeerAuthenticationSpec>(&v, &mut Vec::new()) {
                Err(e) => e.to_string(),
                Ok(s) => validate(&s)
                    .map_err(|e| e.to_string())
                    .err()
                    .unwrap_or_default(),
            }
        };
        assert_eq!(
            check("mtls: {mode: STRICTT}"),
            "spec.mtls.mode: unknown variant `STRICTT`, expected one of `UNSET`, `DISABLE`, `PERMISSIVE`, `STRICT`"
        );
        assert_eq!(
            check("portLevelMtls: {\"8080\": {mode: DISABLE}}"),
            "spec.portLevelMtls: portLevelMtls requires selector (a workload-level policy)"
        );
        assert_eq!(
            check("selector: {matchLabels: {app: a}}\nportLevelMtls: {\"0\": {mode: DISABLE}}"),
            "spec.portLevelMtls.0: invalid port \"0\": 0 is out of range (1 to 65535)"
        );
        assert_eq!(
            check("targetRef: {kind: Gateway, name: g}"),
            "spec.targetRef: gateway/waypoint attachment is not supported (remora has no Kubernetes Gateway API gateways or waypoints; it applies security policies to sidecars and gateway pods by selector, namespace or mesh)"
        );
        assert_eq!(
            check("selector: {matchLabels: {app: \"a*\"}}"),
            "spec.selector.matchLabels.app: \"a*\": wildcard not allowed in label value match"
        );
        assert_eq!(check("mtls: {mode: STRICT}"), "");
    }
}
