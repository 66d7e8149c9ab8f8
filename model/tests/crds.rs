//! The CustomResourceDefinitions' schemas, generated from the typed structs
//! (`remora_model::crd`), held against:
//! - `manifests/istio-crds.yaml` (the file is the generated output; `REMORA_UPDATE_GOLDEN=1`
//!   writes it, as `remora-webhook crds > manifests/istio-crds.yaml` does);
//! - Istio's sample objects (Bookinfo's rules, the authorization builder's policies, the
//!   gateway samples): each is accepted, as the API server would with strict field validation
//!   (`kubectl apply`'s default): nulls pruned, unknown fields refused where the schema does not
//!   keep them;
//! - bad objects: refused, naming the field;
//! - Istio's own CRDs (test input only, `anchors/istio/crds`): every field remora's schema
//!   names is one Istio defines, with the same type; remora requires no field Istio does not;
//!   an enum lists every value Istio's does; and an object that does not keep unknown fields
//!   defines every field Istio's does. So a valid Istio object is never refused.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use remora_model::crd::{self, CRDS, PRESERVE};
use serde_json::{json, Map, Value};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[test]
fn the_manifest_is_the_generated_one() {
    let path = repo().join("manifests/istio-crds.yaml");
    let want = crd::manifest().expect("render");
    if std::env::var("REMORA_UPDATE_GOLDEN").is_ok_and(|v| v == "1") {
        std::fs::write(&path, &want).expect("write manifests/istio-crds.yaml");
    }
    let have = std::fs::read_to_string(&path).expect("manifests/istio-crds.yaml");
    assert!(
        have == want,
        "manifests/istio-crds.yaml is not the generated output: run `remora-webhook crds > manifests/istio-crds.yaml` (or this test with REMORA_UPDATE_GOLDEN=1)"
    );
}

/// The `spec` schema of `kind`.
fn spec_of(kind: &str) -> Value {
    let c = CRDS
        .iter()
        .find(|c| c.kind == kind)
        .unwrap_or_else(|| panic!("no CRD for {kind}"));
    (c.spec)()
}

/// An OpenAPI (structural) schema as JSON Schema with the API server's strict field validation:
/// an object that does not keep unknown fields refuses them.
fn strict(schema: &Value) -> Value {
    match schema {
        Value::Object(m) => {
            let mut out: Map<String, Value> = Map::new();
            for (k, v) in m {
                let v = match k.as_str() {
                    "properties" => Value::Object(
                        v.as_object()
                            .expect("properties")
                            .iter()
                            .map(|(n, s)| (n.clone(), strict(s)))
                            .collect(),
                    ),
                    "items" | "additionalProperties" => strict(v),
                    _ => v.clone(),
                };
                out.insert(k.clone(), v);
            }
            if m.get("type") == Some(&json!("object"))
                && m.get(PRESERVE) != Some(&json!(true))
                && !m.contains_key("additionalProperties")
            {
                out.insert("additionalProperties".into(), json!(false));
            }
            Value::Object(out)
        }
        other => other.clone(),
    }
}

/// `v` without nulls (the API server prunes a null the schema does not allow).
fn pruned(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k.clone(), pruned(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(pruned).collect()),
        other => other.clone(),
    }
}

/// The errors of validating `spec` against `kind`'s schema: `path: message` each.
fn errors(kind: &str, spec: &Value) -> Vec<String> {
    let schema = strict(&spec_of(kind));
    let v = jsonschema::validator_for(&schema).expect("the generated schema compiles");
    v.iter_errors(&pruned(spec))
        .map(|e| format!("spec{}: {e}", e.instance_path()))
        .collect()
}

/// Every document of the YAML files under `dir` (recursively).
fn documents(dir: &Path, out: &mut Vec<(String, Value)>) {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("read dir")
        .flatten()
        .map(|e| e.path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            documents(&p, out);
            continue;
        }
        if p.extension().and_then(|e| e.to_str()) != Some("yaml") {
            continue;
        }
        let text = std::fs::read_to_string(&p).expect("read");
        for (i, doc) in serde_yaml_ng::Deserializer::from_str(&text).enumerate() {
            let v: Value = serde::Deserialize::deserialize(doc).expect("YAML");
            if !v.is_null() {
                out.push((format!("{} doc {}", p.display(), i + 1), v));
            }
        }
    }
}

#[test]
fn istio_samples_are_accepted() {
    let Some(root) = remora_corpus::istio("") else {
        return;
    };
    let mut docs = Vec::new();
    for sub in ["networking", "authz", "gateways"] {
        documents(&root.join(sub), &mut docs);
    }
    let mut checked = BTreeMap::<String, usize>::new();
    let mut failures = Vec::new();
    for (at, doc) in &docs {
        let kind = doc["kind"].as_str().unwrap_or("");
        let group = doc["apiVersion"]
            .as_str()
            .unwrap_or("")
            .split('/')
            .next()
            .unwrap_or("");
        if !CRDS.iter().any(|c| c.kind == kind && c.group == group) {
            continue; // the Gateway API's kinds, Services, ...
        }
        *checked.entry(kind.to_string()).or_default() += 1;
        let spec = doc.get("spec").cloned().unwrap_or(json!({}));
        for e in errors(kind, &spec) {
            failures.push(format!("{at} ({kind}): {e}"));
        }
    }
    assert!(failures.is_empty(), "refused:\n{}", failures.join("\n"));
    // The corpus has these kinds; all of them were checked.
    for kind in [
        "VirtualService",
        "DestinationRule",
        "ServiceEntry",
        "Gateway",
        "AuthorizationPolicy",
    ] {
        assert!(
            checked.get(kind).is_some_and(|n| *n > 0),
            "no {kind} checked: {checked:?}"
        );
    }
    assert!(checked.values().sum::<usize>() >= 50, "{checked:?}");
}

#[test]
fn bad_objects_are_refused_naming_the_field() {
    // (kind, spec, a field path the error names, words of the reason)
    let rows: Vec<(&str, Value, &str, &str)> = vec![
        (
            "VirtualService",
            json!({"hosts": "reviews"}),
            "spec/hosts",
            "not of type \"array\"",
        ),
        (
            "VirtualService",
            json!({"hosts": ["r"], "http": [{"route": [{"destination": {"host": "r"}, "weight": "50"}]}]}),
            "spec/http/0/route/0/weight",
            "not of type \"integer\"",
        ),
        (
            "VirtualService",
            json!({"hosts": ["r"], "http": [{"matches": [{"uri": {"prefix": "/"}}]}]}),
            "spec/http/0",
            "matches",
        ),
        (
            "VirtualService",
            json!({"hosts": ["r"], "http": [{"timeout": 10}]}),
            "spec/http/0/timeout",
            "not of type \"string\"",
        ),
        (
            "VirtualService",
            json!({"hosts": ["r"], "http": [{"fault": {"abort": {"httpStatus": 700}}}]}),
            "spec/http/0/fault/abort/httpStatus",
            "maximum of 599",
        ),
        (
            "DestinationRule",
            json!({"host": "r", "trafficPolicy": {"loadBalancer": {"simple": "ROUND_ROBBIN"}}}),
            "spec/trafficPolicy/loadBalancer/simple",
            "ROUND_ROBBIN",
        ),
        (
            "DestinationRule",
            json!({"host": "r", "subsets": [{"name": "v1", "labels": {"version": 1}}]}),
            "spec/subsets/0/labels/version",
            "not of type \"string\"",
        ),
        (
            "PeerAuthentication",
            json!({"mtls": {"mode": "STRICTT"}}),
            "spec/mtls/mode",
            "STRICTT",
        ),
        (
            "AuthorizationPolicy",
            json!({"action": "PERMIT"}),
            "spec/action",
            "PERMIT",
        ),
        (
            "Gateway",
            json!({"servers": [{"port": {"number": 70000, "protocol": "HTTP", "name": "h"}, "hosts": ["*"]}]}),
            "spec/servers/0/port/number",
            "maximum",
        ),
        (
            "RateLimit",
            json!({"host": "r", "requestsPerUnit": 0}),
            "spec/requestsPerUnit",
            "minimum of 1",
        ),
    ];
    for (kind, spec, field, words) in rows {
        let errs = errors(kind, &spec);
        assert!(
            errs.iter().any(|e| e.starts_with(&format!("{field}:")) || e.starts_with(&format!("{field}/"))),
            "{kind} {spec}: no error at {field}: {errs:?}"
        );
        assert!(
            errs.iter().any(|e| e.contains(words)),
            "{kind} {spec}: no error saying {words:?}: {errs:?}"
        );
    }
}

/// Istio's `spec` schema of `kind` (its storage version) from its CRDs.
fn istio_spec(crds: &[Value], group: &str, kind: &str) -> Option<Value> {
    let c = crds
        .iter()
        .find(|c| c["spec"]["group"] == group && c["spec"]["names"]["kind"] == kind)?;
    let v = c["spec"]["versions"]
        .as_array()?
        .iter()
        .find(|v| v["storage"] == true)?;
    Some(v["schema"]["openAPIV3Schema"]["properties"]["spec"].clone())
}

fn names(m: &Value) -> Vec<String> {
    m.as_object()
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default()
}

/// What makes `ours` (at `path`) refuse objects Istio's schema `theirs` accepts, or name fields
/// Istio does not define.
fn compare(path: &str, ours: &Value, theirs: &Value, out: &mut Vec<String>) {
    if ours.get(PRESERVE) == Some(&json!(true)) && ours.get("type").is_none() {
        return; // anything is kept
    }
    if theirs.get("x-kubernetes-int-or-string") == Some(&json!(true)) {
        out.push(format!("{path}: Istio takes an integer or a string"));
        return;
    }
    match (ours.get("type"), theirs.get("type")) {
        (Some(a), Some(b)) if a != b => {
            out.push(format!("{path}: type {a}, Istio's is {b}"));
            return;
        }
        (Some(_), None) if theirs.get(PRESERVE) == Some(&json!(true)) => {
            out.push(format!("{path}: Istio keeps any value here"));
            return;
        }
        _ => {}
    }
    if let (Some(Value::Array(a)), Some(Value::Array(b))) = (ours.get("enum"), theirs.get("enum")) {
        let missing: Vec<&Value> = b.iter().filter(|v| !a.contains(v)).collect();
        if !missing.is_empty() {
            out.push(format!("{path}: enum lacks Istio's {missing:?}"));
        }
    }
    if let Some(Value::Array(req)) = ours.get("required") {
        let theirs_req = theirs.get("required").cloned().unwrap_or(json!([]));
        for r in req {
            if !theirs_req.as_array().is_some_and(|t| t.contains(r)) {
                out.push(format!("{path}: requires {r}, Istio does not"));
            }
        }
    }
    let (op, tp) = (&ours["properties"], &theirs["properties"]);
    for n in names(op) {
        match tp.get(&n) {
            Some(t) => compare(&format!("{path}.{n}"), &op[&n], t, out),
            None if theirs.get(PRESERVE) == Some(&json!(true)) => {}
            None => out.push(format!("{path}.{n}: not a field of Istio's")),
        }
    }
    if ours.get(PRESERVE) != Some(&json!(true)) && ours["type"] == "object" {
        let missing: Vec<String> = names(tp)
            .into_iter()
            .filter(|n| op.get(n).is_none())
            .collect();
        if !missing.is_empty() && ours.get("additionalProperties").is_none() {
            out.push(format!(
                "{path}: Istio defines {missing:?}, which this struct neither models nor keeps"
            ));
        }
    }
    if let (Some(a), Some(b)) = (ours.get("items"), theirs.get("items")) {
        compare(&format!("{path}[]"), a, b, out);
    }
    if let (Some(a), Some(b)) = (
        ours.get("additionalProperties"),
        theirs.get("additionalProperties"),
    ) {
        compare(&format!("{path}.*"), a, b, out);
    }
}

#[test]
fn the_schemas_accept_what_istios_accept() {
    let Some(file) = remora_corpus::istio("crds/crd-all.gen.yaml") else {
        return;
    };
    let text = std::fs::read_to_string(file).expect("read");
    let crds: Vec<Value> = serde_yaml_ng::Deserializer::from_str(&text)
        .map(|d| serde::Deserialize::deserialize(d).expect("YAML"))
        .filter(|v: &Value| !v.is_null())
        .collect();
    let mut out = Vec::new();
    let mut compared = 0;
    for c in CRDS.iter().filter(|c| c.group.ends_with(".istio.io")) {
        let Some(theirs) = istio_spec(&crds, c.group, c.kind) else {
            out.push(format!("{}: not in Istio's CRDs", c.kind));
            continue;
        };
        compared += 1;
        compare(c.kind, &(c.spec)(), &theirs, &mut out);
    }
    // One struct reads both `tls` and `tcp` matches; Istio's TCP match has no `sniHosts`.
    out.retain(|e| e != "VirtualService.tcp[].match[].sniHosts: not a field of Istio's");
    assert_eq!(compared, 10);
    assert!(out.is_empty(), "{}", out.join("\n"));
}

/// What makes `s` (at `path`) not a structural schema as the API server checks it: a node
/// without a type (unless it keeps anything), `properties` beside `additionalProperties`, or a
/// keyword outside the few the generator emits (no `$ref`, `oneOf`, `const`, `uniqueItems`).
fn structural_errors(path: &str, s: &Value, out: &mut Vec<String>) {
    const KEYWORDS: &[&str] = &[
        "type",
        "properties",
        "items",
        "additionalProperties",
        "enum",
        "minimum",
        "maximum",
        "required",
        PRESERVE,
    ];
    let Some(m) = s.as_object() else {
        out.push(format!("{path}: not a schema object: {s}"));
        return;
    };
    for k in m.keys() {
        if !KEYWORDS.contains(&k.as_str()) {
            out.push(format!("{path}: keyword {k}"));
        }
    }
    if !m.contains_key("type") && m.get(PRESERVE) != Some(&json!(true)) {
        out.push(format!("{path}: no type"));
    }
    if m.contains_key("properties") && m.contains_key("additionalProperties") {
        out.push(format!("{path}: properties and additionalProperties"));
    }
    if let Some(Value::Object(p)) = m.get("properties") {
        for (n, s) in p {
            structural_errors(&format!("{path}.{n}"), s, out);
        }
    }
    for k in ["items", "additionalProperties"] {
        if let Some(s) = m.get(k) {
            structural_errors(&format!("{path}.{k}"), s, out);
        }
    }
}

#[test]
fn the_schemas_are_structural() {
    let mut out = Vec::new();
    for c in CRDS {
        let s = (c.spec)();
        assert_eq!(s["type"], "object", "{}", c.kind);
        structural_errors(c.kind, &s, &mut out);
    }
    assert!(out.is_empty(), "{}", out.join("\n"));
}
