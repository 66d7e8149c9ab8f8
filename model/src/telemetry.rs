//! Istio's `telemetry.istio.io` `Telemetry` kind: typed (the crate's one decoder, field paths in
//! errors), validated, and its pure decision — what applies to one workload, for each side of
//! its traffic. Scoped as the security kinds are: in the root namespace without selector for
//! the mesh, without selector for its namespace, with `selector.matchLabels` for the workloads it
//! selects; the more specific level wins field by field (a workload's
//! `randomSamplingPercentage` over its namespace's over the mesh's).
//!
//! Each `tracing[]` and `accessLogging[]` entry applies to the sides its `match.mode` names
//! (Istio's `WorkloadMode`: `CLIENT_AND_SERVER` when absent, `CLIENT` — the workload's outbound
//! requests, and every request of a gateway —, `SERVER` — its inbound requests); within one
//! rule, a later entry for a side replaces an earlier one's fields. The proxy applies, per side,
//! the tracing `providers` (the one named provider among the mesh's), `randomSamplingPercentage`,
//! `disableSpanReporting` and `customTags`, and the access log's `providers` and `disabled`;
//! `accessLogging[].filter` and `metrics` are accepted and not applied.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::kinds::Meta;
use crate::security::decode::{check_selector, refuse_target_refs, SpecError};
use crate::security::{scope_of, Scope, WorkloadSelector};

/// `spec` of a Telemetry.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TelemetrySpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<WorkloadSelector>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tracing: Vec<Tracing>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub access_logging: Vec<AccessLogging>,
    /// Accepted, not applied (the proxy's metrics are Istio's standard set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<Value>,
    #[serde(default, skip_serializing)]
    pub target_ref: Option<Value>,
    #[serde(default, skip_serializing)]
    pub target_refs: Option<Value>,
}

/// A provider reference (`name` of a MeshConfig extension provider).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProviderRef {
    pub name: String,
}

/// `spec.tracing[]`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
/// Istio's fields remora does not read (`disableContextPropagation`, ...) are kept.
#[schemars(extend("x-kubernetes-preserve-unknown-fields" = true))]
pub struct Tracing {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub providers: Vec<ProviderRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub random_sampling_percentage: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disable_span_reporting: Option<bool>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub custom_tags: BTreeMap<String, CustomTag>,
    /// `match.mode`: the sides this entry applies to (both when absent).
    #[serde(default, rename = "match", skip_serializing_if = "Option::is_none")]
    pub match_: Option<ModeSelector>,
}

/// Istio's `WorkloadMode`: which side of a workload's traffic an entry is for.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum WorkloadMode {
    #[default]
    ClientAndServer,
    /// The workload's outbound requests (and all of a gateway's).
    Client,
    /// The workload's inbound requests.
    Server,
}

impl WorkloadMode {
    fn covers(self, side: Side) -> bool {
        matches!(
            (self, side),
            (WorkloadMode::ClientAndServer, _)
                | (WorkloadMode::Client, Side::Client)
                | (WorkloadMode::Server, Side::Server)
        )
    }
}

/// `match` of a `tracing[]` or `accessLogging[]` entry.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "camelCase")]
pub struct ModeSelector {
    #[serde(default)]
    pub mode: WorkloadMode,
}

/// The side of a workload's traffic a request is on: `Client` for a sidecar's outbound
/// requests and every request of a gateway, `Server` for a sidecar's inbound requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Client,
    Server,
}

fn mode_of(m: &Option<ModeSelector>) -> WorkloadMode {
    m.map(|m| m.mode).unwrap_or_default()
}

/// `customTags.<name>`: exactly one of a literal, a request header, an environment variable.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
/// Istio's `formatter` is not read (kept).
#[schemars(extend("x-kubernetes-preserve-unknown-fields" = true))]
pub struct CustomTag {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub literal: Option<Literal>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<NamedSource>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment: Option<NamedSource>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Literal {
    pub value: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NamedSource {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_value: Option<String>,
}

/// `spec.accessLogging[]`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AccessLogging {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub providers: Vec<ProviderRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disabled: Option<bool>,
    /// `filter` (a CEL expression): accepted, not applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<Value>,
    /// `match.mode`: the sides this entry applies to (both when absent).
    #[serde(default, rename = "match", skip_serializing_if = "Option::is_none")]
    pub match_: Option<ModeSelector>,
}

/// One Telemetry as loaded.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Telemetry {
    pub meta: Meta,
    pub scope: Scope,
    pub spec: TelemetrySpec,
}

impl Telemetry {
    /// `root_namespace`: the mesh's root namespace (a Telemetry there without a selector is
    /// mesh-wide).
    pub fn new(
        meta: Meta,
        spec: TelemetrySpec,
        root_namespace: &str,
    ) -> Result<Telemetry, SpecError> {
        validate(&spec)?;
        Ok(Telemetry {
            scope: scope_of(&meta.namespace, spec.selector.as_ref(), root_namespace),
            meta,
            spec,
        })
    }
}

/// Istio's checks serde cannot express, naming field, value and reason.
pub fn validate(spec: &TelemetrySpec) -> Result<(), SpecError> {
    refuse_target_refs(&spec.target_ref, &spec.target_refs)?;
    check_selector(spec.selector.as_ref())?;
    for (i, t) in spec.tracing.iter().enumerate() {
        check_providers(&format!("spec.tracing[{i}].providers"), &t.providers)?;
        if t.providers.len() > 1 {
            return Err(SpecError::new(
                format!("spec.tracing[{i}].providers"),
                format!(
                    "{} providers: at most one tracing provider per entry (as Istio)",
                    t.providers.len()
                ),
            ));
        }
        if let Some(p) = t.random_sampling_percentage {
            if !(0.0..=100.0).contains(&p) {
                return Err(SpecError::new(
                    format!("spec.tracing[{i}].randomSamplingPercentage"),
                    format!("{p} is outside 0 to 100"),
                ));
            }
        }
        for (name, tag) in &t.custom_tags {
            let field = format!("spec.tracing[{i}].customTags.{name}");
            if name.is_empty() || name.len() > 256 {
                return Err(SpecError::new(
                    format!("spec.tracing[{i}].customTags"),
                    format!("tag name {name:?} is empty or longer than 256"),
                ));
            }
            let kinds = [
                tag.literal.is_some(),
                tag.header.is_some(),
                tag.environment.is_some(),
            ];
            if kinds.iter().filter(|k| **k).count() != 1 {
                return Err(SpecError::new(
                    &field,
                    "exactly one of literal, header, environment is required",
                ));
            }
            for (kind, src) in [("header", &tag.header), ("environment", &tag.environment)] {
                if let Some(s) = src {
                    if s.name.is_empty() {
                        return Err(SpecError::new(
                            format!("{field}.{kind}.name"),
                            "empty value: a name is required",
                        ));
                    }
                }
            }
        }
    }
    for (i, a) in spec.access_logging.iter().enumerate() {
        check_providers(&format!("spec.accessLogging[{i}].providers"), &a.providers)?;
    }
    Ok(())
}

/// Provider names: not empty, a name at most once.
fn check_providers(field: &str, providers: &[ProviderRef]) -> Result<(), SpecError> {
    for (j, p) in providers.iter().enumerate() {
        if p.name.trim().is_empty() {
            return Err(SpecError::new(
                format!("{field}[{j}].name"),
                "empty value: a provider name is required",
            ));
        }
        if providers[..j].iter().any(|q| q.name == p.name) {
            return Err(SpecError::new(
                format!("{field}[{j}].name"),
                format!("{:?} is named twice", p.name),
            ));
        }
    }
    Ok(())
}

/// What the Telemetry rules that apply to one workload say for one side of its traffic.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct SideSettings {
    /// The tracing provider named by the rules (`None`: the mesh's default provider).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tracing_provider: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub random_sampling_percentage: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disable_span_reporting: Option<bool>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub custom_tags: BTreeMap<String, CustomTag>,
    /// The access-log providers named by the rules (empty: the mesh's access log).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub access_log_providers: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub access_log_disabled: Option<bool>,
}

impl SideSettings {
    /// The rules turn this side's access log off.
    pub fn access_log_off(&self) -> bool {
        self.access_log_disabled == Some(true)
    }
}

/// What the Telemetry rules that apply to one workload say, for each side, the more specific
/// level winning field by field.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Effective {
    /// A sidecar's outbound requests, and every request of a gateway.
    #[serde(skip_serializing_if = "is_default")]
    pub client: SideSettings,
    /// A sidecar's inbound requests.
    #[serde(skip_serializing_if = "is_default")]
    pub server: SideSettings,
    /// `namespace/name` of the rules that gave a value, most general first.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub from: Vec<String>,
}

fn is_default(s: &SideSettings) -> bool {
    *s == SideSettings::default()
}

impl Effective {
    /// No rule says anything.
    pub fn is_empty(&self) -> bool {
        *self == Effective::default()
    }

    pub fn side(&self, side: Side) -> &SideSettings {
        match side {
            Side::Client => &self.client,
            Side::Server => &self.server,
        }
    }
}

/// Apply one rule's entries for `side` over `s`; whether the rule said anything for it.
fn apply(s: &mut SideSettings, spec: &TelemetrySpec, side: Side) -> bool {
    let mut used = false;
    for t in spec
        .tracing
        .iter()
        .filter(|t| mode_of(&t.match_).covers(side))
    {
        if let Some(p) = t.providers.first() {
            s.tracing_provider = Some(p.name.clone());
            used = true;
        }
        if let Some(p) = t.random_sampling_percentage {
            s.random_sampling_percentage = Some(p);
            used = true;
        }
        if let Some(d) = t.disable_span_reporting {
            s.disable_span_reporting = Some(d);
            used = true;
        }
        for (k, v) in &t.custom_tags {
            s.custom_tags.insert(k.clone(), v.clone());
            used = true;
        }
    }
    for a in spec
        .access_logging
        .iter()
        .filter(|a| mode_of(&a.match_).covers(side))
    {
        if !a.providers.is_empty() {
            s.access_log_providers = a.providers.iter().map(|p| p.name.clone()).collect();
            used = true;
        }
        if let Some(d) = a.disabled {
            s.access_log_disabled = Some(d);
            used = true;
        }
    }
    used
}

/// The effective settings of `applying` (the Telemetry rules that apply to this workload:
/// mesh-wide, its namespace's, selecting it). Mesh, then namespace, then workload level, each in
/// name order; a later value replaces an earlier one, custom tags merge by name.
pub fn effective(applying: &[Telemetry]) -> Effective {
    let mut rules: Vec<&Telemetry> = applying.iter().collect();
    rules.sort_by(|a, b| {
        (a.scope, &a.meta.namespace, &a.meta.name).cmp(&(b.scope, &b.meta.namespace, &b.meta.name))
    });
    let mut e = Effective::default();
    for r in rules {
        let client = apply(&mut e.client, &r.spec, Side::Client);
        let server = apply(&mut e.server, &r.spec, Side::Server);
        if client || server {
            e.from.push(format!("{}/{}", r.meta.namespace, r.meta.name));
        }
    }
    e
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kinds::DEFAULT_ROOT_NAMESPACE as ROOT_NAMESPACE;

    fn t(namespace: &str, name: &str, spec: serde_json::Value) -> Result<Telemetry, SpecError> {
        let mut unknown = Vec::new();
        let spec: TelemetrySpec = crate::security::decode::spec(&spec, &mut unknown)?;
        let meta = Meta {
            kind: "Telemetry".into(),
            api_version: "telemetry.istio.io/v1".into(),
            name: name.into(),
            namespace: namespace.into(),
            file: "t.yaml".into(),
            document: 1,
        };
        Telemetry::new(meta, spec, ROOT_NAMESPACE)
    }

    #[test]
    fn decode_and_checks_name_the_field() {
        let ok = t(
            "shop",
            "sampling",
            serde_json::json!({
                "selector": {"matchLabels": {"app": "reviews"}},
                "tracing": [{"providers": [{"name": "zipkin"}], "randomSamplingPercentage": 10,
                             "customTags": {"team": {"literal": {"value": "a"}},
                                            "ua": {"header": {"name": "user-agent", "defaultValue": "-"}},
                                            "pod": {"environment": {"name": "POD_NAME"}}}}],
                "accessLogging": [{"disabled": true}]
            }),
        )
        .unwrap();
        assert_eq!(ok.scope, Scope::Workload);
        assert_eq!(ok.spec.tracing[0].random_sampling_percentage, Some(10.0));
        for (spec, field) in [
            (
                serde_json::json!({"tracing": [{"randomSamplingPercentage": 101}]}),
                "spec.tracing[0].randomSamplingPercentage",
            ),
            (
                serde_json::json!({"tracing": [{"randomSamplingPercentage": "ten"}]}),
                "spec.tracing[0].randomSamplingPercentage",
            ),
            (
                serde_json::json!({"tracing": [{"customTags": {"x": {}}}]}),
                "spec.tracing[0].customTags.x",
            ),
            (
                serde_json::json!({"tracing": [{"customTags": {"x": {"literal": {"value": "a"}, "header": {"name": "b"}}}}]}),
                "spec.tracing[0].customTags.x",
            ),
            (
                serde_json::json!({"tracing": [{"customTags": {"x": {"header": {"name": ""}}}}]}),
                "spec.tracing[0].customTags.x.header.name",
            ),
            (
                serde_json::json!({"accessLogging": [{"disabled": "yes"}]}),
                "spec.accessLogging[0].disabled",
            ),
            (
                serde_json::json!({"targetRef": {"kind": "Gateway"}}),
                "spec.targetRef",
            ),
            (
                serde_json::json!({"tracing": [{"match": {"mode": "BOTH"}}]}),
                "spec.tracing[0].match.mode",
            ),
            (
                serde_json::json!({"accessLogging": [{"match": {"mode": "client"}}]}),
                "spec.accessLogging[0].match.mode",
            ),
            (
                serde_json::json!({"tracing": [{"providers": [{"name": "a"}, {"name": "b"}]}]}),
                "spec.tracing[0].providers",
            ),
            (
                serde_json::json!({"tracing": [{"providers": [{"name": ""}]}]}),
                "spec.tracing[0].providers[0].name",
            ),
            (
                serde_json::json!({"accessLogging": [{"providers": [{"name": "a"}, {"name": "a"}]}]}),
                "spec.accessLogging[0].providers[1].name",
            ),
        ] {
            let e = t("shop", "bad", spec.clone()).unwrap_err();
            assert_eq!(e.field, field, "{spec}: {e}");
        }
    }

    #[test]
    fn the_more_specific_level_wins_field_by_field() {
        let mesh = t(
            ROOT_NAMESPACE,
            "mesh-default",
            serde_json::json!({"tracing": [{"randomSamplingPercentage": 1,
                "customTags": {"team": {"literal": {"value": "mesh"}}}}]}),
        )
        .unwrap();
        let ns = t(
            "shop",
            "ns",
            serde_json::json!({"tracing": [{"randomSamplingPercentage": 50}],
                               "accessLogging": [{"disabled": true}]}),
        )
        .unwrap();
        let wl = t(
            "shop",
            "reviews",
            serde_json::json!({"selector": {"matchLabels": {"app": "reviews"}},
                "tracing": [{"customTags": {"team": {"literal": {"value": "reviews"}}}}],
                "accessLogging": [{"disabled": false}]}),
        )
        .unwrap();
        assert_eq!(effective(&[]), Effective::default());
        let e = effective(&[wl.clone(), ns.clone(), mesh.clone()]);
        // No `match`: both sides alike.
        assert_eq!(e.client, e.server);
        let c = &e.client;
        assert_eq!(c.random_sampling_percentage, Some(50.0));
        assert_eq!(c.access_log_disabled, Some(false));
        assert_eq!(
            c.custom_tags["team"].literal.as_ref().unwrap().value,
            "reviews"
        );
        assert_eq!(
            e.from,
            [
                format!("{ROOT_NAMESPACE}/mesh-default"),
                "shop/ns".to_string(),
                "shop/reviews".to_string()
            ]
        );
        let e = effective(&[mesh]);
        assert_eq!(e.side(Side::Server).random_sampling_percentage, Some(1.0));
        assert_eq!(e.side(Side::Client).access_log_disabled, None);
    }

    /// `match.mode` picks the side; providers are chosen by name, the more specific level's
    /// list replacing the general one's; `disabled` of one side leaves the other on.
    #[test]
    fn modes_choose_the_side_and_providers_replace_by_level() {
        let mesh = t(
            ROOT_NAMESPACE,
            "mesh-default",
            serde_json::json!({
                "tracing": [{"providers": [{"name": "zipkin"}]}],
                "accessLogging": [{"providers": [{"name": "envoy"}]}]
            }),
        )
        .unwrap();
        let wl = t(
            "shop",
            "reviews",
            serde_json::json!({"selector": {"matchLabels": {"app": "reviews"}},
                "tracing": [
                    {"match": {"mode": "SERVER"}, "providers": [{"name": "otel"}],
                     "randomSamplingPercentage": 100},
                    {"match": {"mode": "CLIENT"}, "disableSpanReporting": true}
                ],
                "accessLogging": [
                    {"match": {"mode": "SERVER"}, "disabled": true},
                    {"match": {"mode": "CLIENT_AND_SERVER"}, "providers": [{"name": "json-log"}, {"name": "envoy"}]}
                ]}),
        )
        .unwrap();
        let e = effective(&[wl, mesh.clone()]);
        let (c, s) = (e.side(Side::Client), e.side(Side::Server));
        assert_eq!(c.tracing_provider.as_deref(), Some("zipkin"));
        assert_eq!(s.tracing_provider.as_deref(), Some("otel"));
        assert_eq!(s.random_sampling_percentage, Some(100.0));
        assert_eq!(c.random_sampling_percentage, None);
        assert_eq!(c.disable_span_reporting, Some(true));
        assert_eq!(s.disable_span_reporting, None);
        assert!(s.access_log_off() && !c.access_log_off());
        assert_eq!(c.access_log_providers, ["json-log", "envoy"]);
        assert_eq!(s.access_log_providers, ["json-log", "envoy"]);
        let m = effective(&[mesh]);
        assert_eq!(m.client, m.server);
        assert_eq!(m.client.access_log_providers, ["envoy"]);
        // A rule for one side only names itself in `from` all the same.
        let one = t(
            "shop",
            "server-only",
            serde_json::json!({"accessLogging": [{"match": {"mode": "SERVER"}, "disabled": true}]}),
        )
        .unwrap();
        let e = effective(&[one]);
        assert_eq!(e.client, SideSettings::default());
        assert!(e.server.access_log_off());
        assert_eq!(e.from, ["shop/server-only"]);
    }
}
