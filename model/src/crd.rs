//! The CustomResourceDefinitions of the kinds the rules controller compiles
//! (`manifests/istio-crds.yaml`, printed by `remora-webhook crds`). Each kind's `spec` schema is
//! generated from the typed structs its `spec` is decoded with (`schemars` derives on the same
//! structs `typed::decode` reads, so a field's name and type are written once), then made
//! structural as Kubernetes requires (inlined, no `$ref`, no `default`s, formats and
//! descriptions left out).
//!
//! A struct that does not model every field Istio defines for it says so with
//! `#[schemars(extend("x-kubernetes-preserve-unknown-fields" = true))]`: the API server then
//! keeps the fields remora does not read, so a valid Istio object is never refused (remora's
//! decoder and validating webhook warn about them instead); a value remora keeps unread
//! (`serde_json::Value`) accepts anything the same way. Elsewhere an unknown field is refused
//! by `kubectl apply`'s field validation, with its path.

use schemars::generate::SchemaSettings;
use schemars::JsonSchema;
use serde_json::{json, Map, Value};

use crate::policy::ratelimit::RateLimitSpec;
use crate::rules::decode::{
    DestinationRuleSpec, ServiceEntrySpec, SidecarSpec, VirtualServiceSpec, WorkloadEntrySpec,
};
use crate::rules::gateway::GatewaySpec;
use crate::security::authorization::AuthorizationPolicySpec;
use crate::security::peer_authentication::PeerAuthenticationSpec;
use crate::security::request_authentication::RequestAuthenticationSpec;
use crate::telemetry::TelemetrySpec;

/// The key that keeps fields a schema does not define.
pub const PRESERVE: &str = "x-kubernetes-preserve-unknown-fields";

const NETWORKING: &[&str] = &["v1", "v1beta1", "v1alpha3"];
const SECURITY: &[&str] = &["v1", "v1beta1"];

/// One kind's CustomResourceDefinition: its names, versions (the first is the storage
/// version) and the schema of its `spec`.
pub struct Crd {
    pub group: &'static str,
    pub kind: &'static str,
    pub plural: &'static str,
    pub short_names: &'static [&'static str],
    pub categories: &'static [&'static str],
    pub versions: &'static [&'static str],
    /// The structural schema of `spec`.
    pub spec: fn() -> Value,
}

/// Every kind of `manifests/istio-crds.yaml`, in its order.
pub const CRDS: &[Crd] = &[
    Crd {
        group: "networking.istio.io",
        kind: "VirtualService",
        plural: "virtualservices",
        short_names: &["vs"],
        categories: &["istio-io", "networking-istio-io"],
        versions: NETWORKING,
        spec: spec_schema::<VirtualServiceSpec>,
    },
    Crd {
        group: "networking.istio.io",
        kind: "DestinationRule",
        plural: "destinationrules",
        short_names: &["dr"],
        categories: &["istio-io", "networking-istio-io"],
        versions: NETWORKING,
        spec: spec_schema::<DestinationRuleSpec>,
    },
    Crd {
        group: "networking.istio.io",
        kind: "ServiceEntry",
        plural: "serviceentries",
        short_names: &["se"],
        categories: &["istio-io", "networking-istio-io"],
        versions: NETWORKING,
        spec: spec_schema::<ServiceEntrySpec>,
    },
    Crd {
        group: "networking.istio.io",
        kind: "WorkloadEntry",
        plural: "workloadentries",
        short_names: &["we"],
        categories: &["istio-io", "networking-istio-io"],
        versions: NETWORKING,
        spec: spec_schema::<WorkloadEntrySpec>,
    },
    Crd {
        group: "networking.istio.io",
        kind: "Sidecar",
        plural: "sidecars",
        short_names: &[],
        categories: &["istio-io", "networking-istio-io"],
        versions: NETWORKING,
        spec: spec_schema::<SidecarSpec>,
    },
    Crd {
        group: "networking.istio.io",
        kind: "Gateway",
        plural: "gateways",
        short_names: &["gw"],
        categories: &["istio-io", "networking-istio-io"],
        versions: NETWORKING,
        spec: spec_schema::<GatewaySpec>,
    },
    Crd {
        group: "security.istio.io",
        kind: "PeerAuthentication",
        plural: "peerauthentications",
        short_names: &["pa"],
        categories: &["istio-io", "security-istio-io"],
        versions: SECURITY,
        spec: spec_schema::<PeerAuthenticationSpec>,
    },
    Crd {
        group: "security.istio.io",
        kind: "AuthorizationPolicy",
        plural: "authorizationpolicies",
        short_names: &["ap"],
        categories: &["istio-io", "security-istio-io"],
        versions: SECURITY,
        spec: spec_schema::<AuthorizationPolicySpec>,
    },
    Crd {
        group: "security.istio.io",
        kind: "RequestAuthentication",
        plural: "requestauthentications",
        short_names: &["ra"],
        categories: &["istio-io", "security-istio-io"],
        versions: SECURITY,
        spec: spec_schema::<RequestAuthenticationSpec>,
    },
    Crd {
        group: "telemetry.istio.io",
        kind: "Telemetry",
        plural: "telemetries",
        short_names: &["telemetry"],
        categories: &["istio-io", "telemetry-istio-io"],
        versions: &["v1", "v1alpha1"],
        spec: spec_schema::<TelemetrySpec>,
    },
    Crd {
        group: "remora.dev",
        kind: "RateLimit",
        plural: "ratelimits",
        short_names: &["rl"],
        categories: &["remora"],
        versions: &["v1alpha1"],
        spec: spec_schema::<RateLimitSpec>,
    },
];

/// The structural schema of `T`, the typed `spec` of a kind.
pub fn spec_schema<T: JsonSchema>() -> Value {
    let mut settings = SchemaSettings::draft2020_12();
    // Kubernetes takes no `$ref`.
    settings.inline_subschemas = true;
    let root = settings.into_generator().into_root_schema_for::<T>();
    structural(root.to_value())
}

/// A schemars schema as Kubernetes takes it: `true` (any value) becomes a node that keeps what
/// it is given; an `Option`'s null is dropped (the decoder reads null as absent, and the API
/// server prunes nulls a schema does not allow); keywords Kubernetes refuses or would act on
/// (`default`: written into stored objects) are left out, with the descriptions (Rust doc
/// comments, not user documentation).
fn structural(schema: Value) -> Value {
    match string_enum(without_null(schema)) {
        Value::Bool(true) => json!({ PRESERVE: true }),
        Value::Object(m) => {
            let mut out = Map::new();
            for (k, v) in m {
                match k.as_str() {
                    "$schema" | "$defs" | "title" | "description" | "default" | "format"
                    | "examples" | "readOnly" | "writeOnly" => {}
                    "properties" => {
                        let props = match v {
                            Value::Object(p) => {
                                p.into_iter().map(|(n, s)| (n, structural(s))).collect()
                            }
                            _ => Map::new(),
                        };
                        out.insert(k, Value::Object(props));
                    }
                    "items" | "additionalProperties" => {
                        out.insert(k, structural(v));
                    }
                    _ => {
                        out.insert(k, v);
                    }
                }
            }
            if out.is_empty() {
                // No constraint left (a `serde_json::Value`): any value, kept.
                return json!({ PRESERVE: true });
            }
            Value::Object(out)
        }
        other => other,
    }
}

/// `schema` without the null an `Option` adds: `type: [T, "null"]` becomes `type: T`, and
/// `anyOf: [S, {type: null}]` becomes `S`.
fn without_null(schema: Value) -> Value {
    let Value::Object(mut m) = schema else {
        return schema;
    };
    if let Some(Value::Array(types)) = m.get("type") {
        let kept: Vec<Value> = types.iter().filter(|t| *t != "null").cloned().collect();
        let one = match kept.as_slice() {
            [t] => t.clone(),
            _ => Value::Array(kept),
        };
        m.insert("type".to_string(), one);
    }
    if let Some(Value::Array(any)) = m.get("anyOf") {
        let kept: Vec<&Value> = any.iter().filter(|s| s["type"] != "null").collect();
        if let [only] = kept.as_slice() {
            let only = (*only).clone();
            m.remove("anyOf");
            if let Value::Object(o) = only {
                for (k, v) in o {
                    m.entry(k).or_insert(v);
                }
            }
        }
    }
    Value::Object(m)
}

/// A string enum whose variants are documented (`oneOf` of `const`s and `enum`s of strings,
/// which is not structural) as one `enum` of every name.
fn string_enum(schema: Value) -> Value {
    let Value::Object(mut m) = schema else {
        return schema;
    };
    let Some(Value::Array(alts)) = m.get("oneOf") else {
        return Value::Object(m);
    };
    let mut names = Vec::new();
    for alt in alts {
        if alt["type"] != "string" {
            return Value::Object(m);
        }
        match (&alt["const"], &alt["enum"]) {
            (Value::String(_), _) => names.push(alt["const"].clone()),
            (_, Value::Array(e)) => names.extend(e.iter().cloned()),
            _ => return Value::Object(m),
        }
    }
    m.remove("oneOf");
    m.insert("type".to_string(), json!("string"));
    m.insert("enum".to_string(), Value::Array(names));
    Value::Object(m)
}

/// One kind's CustomResourceDefinition document.
pub fn definition(crd: &Crd) -> Value {
    let spec = (crd.spec)();
    let versions: Vec<Value> = crd
        .versions
        .iter()
        .enumerate()
        .map(|(i, name)| {
            json!({
                "name": name,
                "served": true,
                "storage": i == 0,
                "subresources": {"status": {}},
                "schema": {"openAPIV3Schema": {
                    "type": "object",
                    "properties": {
                        "spec": spec,
                        "status": {"type": "object", PRESERVE: true},
                    },
                }},
            })
        })
        .collect();
    let mut names = json!({
        "kind": crd.kind,
        "listKind": format!("{}List", crd.kind),
        "plural": crd.plural,
        "singular": crd.kind.to_ascii_lowercase(),
    });
    if !crd.short_names.is_empty() {
        names["shortNames"] = json!(crd.short_names);
    }
    names["categories"] = json!(crd.categories);
    json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": format!("{}.{}", crd.plural, crd.group),
            "labels": {"app.kubernetes.io/part-of": "remora"},
        },
        "spec": {
            "group": crd.group,
            "scope": "Namespaced",
            "names": names,
            "versions": versions,
        },
    })
}

const HEADER: &str = "\
# Custom resource definitions for the Istio kinds remora's rules controller compiles, and for
# remora's own RateLimit. Generated by `remora-webhook crds` (remora-model's crd module): do not
# edit. Apply this file ONLY when Istio's CRDs are not installed:
#   kubectl get crd virtualservices.networking.istio.io   # found: skip the Istio kinds below
# Istio's own CRDs (from an Istio install) work with remora as they are. Here each kind's `spec`
# schema is generated from the typed structs remora decodes it with, so `kubectl apply` refuses
# a wrong type, range or value with the field's path. Objects that remora does not model in full
# keep the fields it does not read (x-kubernetes-preserve-unknown-fields), so a valid Istio
# object is never refused; remora's validating webhook warns about them. Storage version: the
# first listed.
";

/// `manifests/istio-crds.yaml`: every kind's definition, in YAML, after a header comment.
pub fn manifest() -> Result<String, String> {
    let mut out = String::from(HEADER);
    for crd in CRDS {
        out.push_str("---\n");
        let doc = serde_yaml_ng::to_string(&definition(crd))
            .map_err(|e| format!("rendering the {} definition: {e}", crd.kind))?;
        out.push_str(&doc);
    }
    Ok(out)
}
