//! Istio's `telemetry.istio.io` `Telemetry` kind: typed (the crate's one decoder, field paths in
//! errors), validated, and its pure decision — what applies to one workload. Scoped as the
//! security kinds are: in the root namespace without selector for the mesh, without selector for
//! its namespace, with `selector.matchLabels` for the workloads it selects; the more specific
//! level wins field by field (a workload's `randomSamplingPercentage` over its namespace's over
//! the mesh's). The proxy applies `tracing[0].randomSamplingPercentage`,
//! `disableSpanReporting`, `customTags` and `accessLogging[0].disabled`; `providers` are read
//! but the proxy's one provider is the one its flags name; `metrics` is accepted and not applied.

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
    /// `match` (client/server mode): accepted, applies to both.
    #[serde(default, rename = "match", skip_serializing_if = "Option::is_none")]
    pub match_: Option<Value>,
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
    #[serde(default, rename = "match", skip_serializing_if = "Option::is_none")]
    pub match_: Option<Value>,
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
    Ok(())
}

/// What the Telemetry rules that apply to one workload say, the more specific level winning
/// field by field.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Effective {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub random_sampling_percentage: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disable_span_reporting: Option<bool>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub custom_tags: BTreeMap<String, CustomTag>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub access_log_disabled: Option<bool>,
    /// `namespace/name` of the rules that gave a value, most general first.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub from: Vec<String>,
}

impl Effective {
    /// No rule says anything.
    pub fn is_empty(&self) -> bool {
        *self == Effective::default()
    }
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
        let mut used = false;
        if let Some(t) = r.spec.tracing.first() {
            if let Some(p) = t.random_sampling_percentage {
                e.random_sampling_percentage = Some(p);
                used = true;
            }
            if let Some(d) = t.disable_span_reporting {
                e.disable_span_reporting = Some(d);
                used = true;
            }
            for (k, v) in &t.custom_tags {
                e.custom_tags.insert(k.clone(), v.clone());
                used = true;
            }
        }
        if let Some(d) = r.spec.access_logging.first().and_then(|a| a.disabled) {
            e.access_log_disabled = Some(d);
            used = true;
        }
        if used {
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
        assert_eq!(e.random_sampling_percentage, Some(50.0));
        assert_eq!(e.access_log_disabled, Some(false));
        assert_eq!(
            e.custom_tags["team"].literal.as_ref().unwrap().value,
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
        assert_eq!(e.random_sampling_percentage, Some(1.0));
        assert_eq!(e.access_log_disabled, None);
    }
}
