//! Reading a rules directory (ConfigMap volume layout) and decoding its documents: the
//! envelope (`apiVersion`, `kind`, `metadata`, a `v1 List`) here, each kind's `spec` by
//! `decode` (networking) or `crate::security` (security), all with the one typed decoder.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;
use serde_json::Value;

use super::decode::{self, DocCtx};
use super::{DestinationRule, LoadContext, LoadError};
use crate::kinds::*;
use crate::policy::cors::Cors;
use crate::security::{self, AuthorizationPolicy, PeerAuthentication, RequestAuthentication};

/// The raw inputs of a rule set: the visible files (name, bytes) and their content hash.
#[derive(Clone, Debug)]
pub struct Inputs {
    pub dir: PathBuf,
    pub files: Vec<(String, Vec<u8>)>,
    /// Visible entries that were not read, with the reason (directories, other extensions).
    pub skipped: Vec<(String, String)>,
    /// SHA-256 over the file names and contents, in name order.
    pub hash: String,
}

fn is_rules_file(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    lower.ends_with(".yaml") || lower.ends_with(".yml") || lower.ends_with(".json")
}

/// Read the visible `*.yaml`, `*.yml` and `*.json` files of `dir`, following symlinks (the
/// kubelet layout `DIR/name -> ..data/name`). Hidden entries (`..data`, `..2026_...`) are not
/// read, so each key is read once.
pub fn read_inputs(dir: &Path) -> Result<Inputs, LoadError> {
    let whole = |reason: String| LoadError {
        file: dir.display().to_string(),
        document: 0,
        field: String::new(),
        reason,
    };
    let rd = std::fs::read_dir(dir)
        .map_err(|e| whole(format!("cannot read the rules directory: {e}")))?;
    let mut names = Vec::new();
    for entry in rd {
        let entry = entry.map_err(|e| whole(format!("cannot list the rules directory: {e}")))?;
        let Some(name) = entry.file_name().to_str().map(str::to_string) else {
            continue;
        };
        if name.starts_with('.') {
            continue;
        }
        names.push(name);
    }
    names.sort();
    let mut files = Vec::new();
    let mut skipped = Vec::new();
    for name in names {
        let path = dir.join(&name);
        let meta = match std::fs::metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                // A dangling symlink: the kubelet is removing a key during a swap.
                skipped.push((name, "dangling symlink".to_string()));
                continue;
            }
            Err(e) => {
                return Err(LoadError {
                    file: name,
                    document: 0,
                    field: String::new(),
                    reason: format!("cannot read: {e}"),
                })
            }
        };
        if meta.is_dir() {
            skipped.push((name, "directory".to_string()));
            continue;
        }
        if !is_rules_file(&name) {
            skipped.push((name, "not a .yaml, .yml or .json file".to_string()));
            continue;
        }
        let bytes = std::fs::read(&path).map_err(|e| LoadError {
            file: name.clone(),
            document: 0,
            field: String::new(),
            reason: format!("cannot read: {e}"),
        })?;
        files.push((name, bytes));
    }
    let hash = super::digest::content_hash(files.iter().map(|(n, b)| (n.as_str(), b.as_slice())));
    Ok(Inputs {
        dir: dir.to_path_buf(),
        files,
        skipped,
        hash,
    })
}

/// Everything decoded from a rule set, before visibility (exportTo, gateways, Sidecar scope)
/// is applied.
#[derive(Clone, Debug, Default)]
pub struct Decoded {
    pub virtual_services: Vec<VirtualService>,
    pub destination_rules: Vec<DestinationRule>,
    pub service_entries: Vec<ServiceEntry>,
    /// `WorkloadEntry` objects: endpoints of the ServiceEntries of their namespace that select
    /// them (`build_snapshot` fills them in).
    pub workload_entries: Vec<crate::kinds::WorkloadEntryObject>,
    pub sidecars: Vec<Sidecar>,
    /// The `security.istio.io` kinds, all of them (their scope is applied by `build_snapshot`).
    pub peer_authentications: Vec<PeerAuthentication>,
    pub authorization_policies: Vec<AuthorizationPolicy>,
    pub request_authentications: Vec<RequestAuthentication>,
    /// `telemetry.istio.io` Telemetry rules, all of them (scoped like the security kinds).
    pub telemetries: Vec<crate::telemetry::Telemetry>,
    /// `Gateway` objects (for gateway proxies; sidecars list them as not applied).
    pub gateways: Vec<crate::rules::gateway::Gateway>,
    /// Gateways that failed their checks: not applied by gateway proxies, and no error for
    /// sidecars (which do not apply Gateways at all).
    pub gateway_errors: Vec<LoadError>,
    pub ignored: Vec<Ignored>,
    pub errors: Vec<LoadError>,
    /// Fields the API does not define (accepted, ignored): warnings, not errors.
    pub unknown_fields: Vec<LoadError>,
    /// Every VirtualService route's `corsPolicy`, by (`namespace/name`, `spec.http[i]`).
    pub cors: BTreeMap<(String, String), Arc<Cors>>,
    /// Number of documents read (not counting empty ones).
    pub documents: usize,
}

/// Largest rules file read (a ConfigMap holds at most 1 MiB in total).
pub const MAX_FILE_BYTES: usize = 4 << 20;
/// Deepest flow nesting (`[`/`{`) accepted before parsing: the YAML parser takes quadratic time
/// on very deep nesting, and the deserializer stops at 128 levels anyway.
pub const MAX_FLOW_DEPTH: usize = 128;

/// Cheap checks before the YAML parser sees a file: size and flow nesting depth (brackets inside
/// quoted strings and comments do not count).
fn precheck(text: &str) -> Result<(), String> {
    if text.len() > MAX_FILE_BYTES {
        return Err(format!(
            "file is {} bytes, more than the {MAX_FILE_BYTES} bytes accepted",
            text.len()
        ));
    }
    let (mut depth, mut max) = (0usize, 0usize);
    let mut quote: Option<char> = None;
    let mut comment = false;
    let mut prev = ' ';
    let mut escaped = false;
    for c in text.chars() {
        if comment {
            comment = c != '\n';
        } else if let Some(q) = quote {
            if escaped {
                escaped = false;
            } else if q == '"' && c == '\\' {
                escaped = true;
            } else if c == q {
                quote = None;
            }
        } else {
            match c {
                '"' | '\'' if prev.is_whitespace() || "[{,:".contains(prev) => quote = Some(c),
                '#' if prev.is_whitespace() => comment = true,
                '[' | '{' => {
                    depth += 1;
                    max = max.max(depth);
                }
                ']' | '}' => depth = depth.saturating_sub(1),
                _ => {}
            }
        }
        prev = c;
    }
    if max > MAX_FLOW_DEPTH {
        return Err(format!(
            "invalid YAML: flow collections nested deeper than {MAX_FLOW_DEPTH} levels"
        ));
    }
    Ok(())
}

/// Collapse whitespace runs (newlines included) so every error stays one log line.
fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

const VERSIONS: &[&str] = &["v1", "v1beta1", "v1alpha3"];
const SECURITY_VERSIONS: &[&str] = &["v1", "v1beta1"];
/// The `telemetry.istio.io` versions read.
const TELEMETRY_VERSIONS: &[&str] = &["v1", "v1alpha1"];

/// Decode every document of every file; collects all errors (one per document at most).
pub fn decode_inputs(inputs: &Inputs, ctx: &LoadContext) -> Decoded {
    let mut out = Decoded::default();
    for (file, bytes) in &inputs.files {
        let text = match std::str::from_utf8(bytes) {
            // Editors on Windows write a byte-order mark, which the YAML parser trips on.
            Ok(t) => t.strip_prefix('\u{feff}').unwrap_or(t),
            Err(e) => {
                out.errors.push(LoadError {
                    file: file.clone(),
                    document: 0,
                    field: String::new(),
                    reason: format!("not UTF-8 text: {e}"),
                });
                continue;
            }
        };
        if let Err(reason) = precheck(text) {
            out.errors.push(LoadError {
                file: file.clone(),
                document: 0,
                field: String::new(),
                reason,
            });
            continue;
        }
        for (i, doc) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
            let document = i + 1;
            let value = match Value::deserialize(doc) {
                Ok(v) => v,
                Err(e) => {
                    out.errors.push(LoadError {
                        file: file.clone(),
                        document,
                        field: String::new(),
                        reason: format!("invalid YAML: {}", one_line(&e.to_string())),
                    });
                    // The parser cannot resynchronise after a syntax error.
                    break;
                }
            };
            if value.is_null() {
                continue;
            }
            out.documents += 1;
            if let Err(fe) = decode_document(&value, file, document, ctx, &mut out) {
                out.errors.push(LoadError {
                    file: file.clone(),
                    document,
                    field: fe.field,
                    reason: fe.reason,
                });
            }
        }
    }
    out
}

/// `apiVersion` and `kind`, read first to tell a `v1 List` from an object.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct TypeMeta {
    api_version: Option<Value>,
    kind: Option<Value>,
}

/// A `v1 List` (`kubectl get ... -o yaml` wraps several objects in one).
#[derive(Deserialize)]
struct List {
    #[serde(default)]
    items: Vec<Value>,
}

/// A Kubernetes object: its `spec` is decoded by its kind; `metadata` is read for `name`,
/// `namespace` and the dry-run annotation (its other fields are the API server's).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
#[allow(dead_code)]
struct Object {
    api_version: Option<Value>,
    kind: Option<Value>,
    metadata: Option<Value>,
    spec: Option<Value>,
    status: Option<Value>,
}

/// Decode one document into `out`; the fields it has that the API does not define go to
/// `out.unknown_fields` (warnings), those met before an error included.
fn decode_document(
    value: &Value,
    file: &str,
    document: usize,
    ctx: &LoadContext,
    out: &mut Decoded,
) -> decode::R<()> {
    let mut unknown = Vec::new();
    let res = decode_object(value, file, document, ctx, out, &mut unknown);
    for u in unknown {
        out.unknown_fields.push(LoadError {
            file: file.to_string(),
            document,
            reason: u.reason(),
            field: u.field,
        });
    }
    res
}

fn decode_object(
    value: &Value,
    file: &str,
    document: usize,
    ctx: &LoadContext,
    out: &mut Decoded,
    unknown: &mut Vec<decode::Unknown>,
) -> decode::R<()> {
    let err = |field: &str, reason: String| decode::FieldError {
        field: field.to_string(),
        reason,
    };
    if !value.is_object() {
        return Err(err(
            "",
            "expected a Kubernetes object (a mapping with apiVersion, kind, metadata, spec)"
                .to_string(),
        ));
    }
    let type_meta: TypeMeta = crate::typed::decode(value, "", &mut Vec::new())?;
    let s = |v: Option<Value>, key: &str| -> decode::R<String> {
        match v {
            Some(Value::String(s)) if !s.is_empty() => Ok(s),
            Some(Value::String(_)) | None | Some(Value::Null) => {
                Err(err(key, "required field is missing or empty".to_string()))
            }
            Some(_) => Err(err(key, "expected a string".to_string())),
        }
    };
    let api_version = s(type_meta.api_version, "apiVersion")?;
    let kind = s(type_meta.kind, "kind")?;
    if kind == "List" && api_version == "v1" {
        let list: List = crate::typed::decode(value, "", &mut Vec::new())?;
        for (i, item) in list.items.iter().enumerate() {
            let first_note = out.unknown_fields.len();
            let prefix = |f: &str| {
                if f.is_empty() {
                    format!("items[{i}]")
                } else {
                    format!("items[{i}].{f}")
                }
            };
            let res = decode_document(item, file, document, ctx, out);
            for n in &mut out.unknown_fields[first_note..] {
                n.field = prefix(&n.field);
            }
            res.map_err(|e| err(&prefix(&e.field), e.reason))?;
        }
        return Ok(());
    }
    let object: Object = crate::typed::decode(value, "", unknown)?;
    let md = match &object.metadata {
        Some(Value::Object(m)) => m,
        _ => {
            return Err(err(
                "metadata",
                "required field is missing or not a mapping".to_string(),
            ))
        }
    };
    let name = match md.get("name") {
        Some(Value::String(n)) if !n.is_empty() => n.clone(),
        _ => {
            return Err(err(
                "metadata.name",
                "required field is missing or empty".to_string(),
            ))
        }
    };
    let namespace = match md.get("namespace") {
        None | Some(Value::Null) => ctx.namespace.clone(),
        Some(Value::String(n)) if !n.is_empty() => n.clone(),
        Some(_) => {
            return Err(err(
                "metadata.namespace",
                "expected a non-empty string".to_string(),
            ))
        }
    };
    let ignore = |out: &mut Decoded, reason: String| {
        out.ignored.push(Ignored {
            file: file.to_string(),
            document,
            kind: kind.clone(),
            name: format!("{namespace}/{name}"),
            reason,
        });
    };
    let (group, version) = api_version
        .split_once('/')
        .unwrap_or(("", api_version.as_str()));
    let is_telemetry = group == "telemetry.istio.io";
    let is_security = group == "security.istio.io" || is_telemetry;
    if group != "networking.istio.io" && !is_security {
        // Another API's object: its fields are not ours to check.
        unknown.clear();
        ignore(
            out,
            format!(
                "{kind} ({api_version}) is not a networking.istio.io, security.istio.io or telemetry.istio.io resource; ignored"
            ),
        );
        return Ok(());
    }
    if is_telemetry && !TELEMETRY_VERSIONS.contains(&version) {
        return Err(err(
            "apiVersion",
            format!("unsupported version {api_version:?} (telemetry.istio.io/v1, v1alpha1)"),
        ));
    }
    if is_security && !is_telemetry && !SECURITY_VERSIONS.contains(&version) {
        return Err(err(
            "apiVersion",
            format!("unsupported version {api_version:?} (security.istio.io/v1, v1beta1)"),
        ));
    }
    if !is_security && !VERSIONS.contains(&version) {
        return Err(err(
            "apiVersion",
            format!(
                "unsupported version {api_version:?} (networking.istio.io/v1, v1beta1, v1alpha3)"
            ),
        ));
    }
    let meta = Meta {
        kind: kind.clone(),
        api_version: api_version.clone(),
        name: name.clone(),
        namespace: namespace.clone(),
        file: file.to_string(),
        document,
    };
    let empty = Value::Object(Default::default());
    let spec = object.spec.as_ref().unwrap_or(&empty);
    let cx = DocCtx {
        namespace: &namespace,
        domain: &ctx.cluster_domain,
    };
    let dup = |existing: Option<&Meta>| -> decode::R<()> {
        match existing {
            Some(m) => Err(err(
                "metadata.name",
                format!(
                    "duplicate {kind} {namespace}/{name} (first defined in {} doc {})",
                    m.file, m.document
                ),
            )),
            None => Ok(()),
        }
    };
    let same = |m: &Meta| m.name == name && m.namespace == namespace;
    if is_security {
        let dry_run = md
            .get("annotations")
            .and_then(|a| a.get("istio.io/dry-run"))
            .and_then(Value::as_str)
            .is_some_and(|v| v.eq_ignore_ascii_case("true"));
        return decode_security(meta, spec, dry_run, &ctx.root_namespace, out, unknown);
    }
    match kind.as_str() {
        "VirtualService" => {
            dup(out
                .virtual_services
                .iter()
                .map(|v| &v.meta)
                .find(|m| same(m)))?;
            let (vs, cors) = decode::virtual_service(meta, spec, &cx, unknown)?;
            for (route, c) in cors {
                out.cors.insert((vs.meta.key(), route), Arc::new(c));
            }
            out.virtual_services.push(vs);
        }
        "DestinationRule" => {
            dup(out
                .destination_rules
                .iter()
                .map(|v| &v.meta)
                .find(|m| same(m)))?;
            out.destination_rules
                .push(decode::destination_rule(meta, spec, &cx, unknown)?);
        }
        "ServiceEntry" => {
            dup(out
                .service_entries
                .iter()
                .map(|v| &v.meta)
                .find(|m| same(m)))?;
            out.service_entries
                .push(decode::service_entry(meta, spec, &cx, unknown)?);
        }
        "WorkloadEntry" => {
            dup(out
                .workload_entries
                .iter()
                .map(|v| &v.meta)
                .find(|m| same(m)))?;
            out.workload_entries
                .push(decode::workload_entry(meta, spec, unknown)?);
        }
        "Sidecar" => {
            dup(out.sidecars.iter().map(|v| &v.meta).find(|m| same(m)))?;
            out.sidecars.push(decode::sidecar(meta, spec, unknown)?);
        }
        "Gateway" => {
            dup(out.gateways.iter().map(|g| &g.meta).find(|m| same(m)))?;
            let mut notes = Vec::new();
            match crate::rules::gateway::decode(meta, spec, &mut notes) {
                Ok(g) => {
                    unknown.append(&mut notes);
                    out.gateways.push(g);
                }
                Err(e) => out.gateway_errors.push(LoadError {
                    file: file.to_string(),
                    document,
                    field: e.field,
                    reason: e.reason,
                }),
            }
            ignore(
                out,
                "Gateway configures gateway proxies, not sidecars; not applied".to_string(),
            )
        }
        other => ignore(out, format!("kind {other} is not supported; ignored")),
    }
    Ok(())
}

/// Decode one `security.istio.io` document into `out` (typed, with serde; unknown fields into
/// `unknown`).
fn decode_security(
    meta: Meta,
    spec: &Value,
    dry_run: bool,
    root_namespace: &str,
    out: &mut Decoded,
    unknown: &mut Vec<decode::Unknown>,
) -> decode::R<()> {
    let dup = |existing: Option<&Meta>| -> decode::R<()> {
        match existing {
            Some(m) => Err(decode::FieldError {
                field: "metadata.name".to_string(),
                reason: format!(
                    "duplicate {} {} (first defined in {} doc {})",
                    meta.kind,
                    meta.key(),
                    m.file,
                    m.document
                ),
            }),
            None => Ok(()),
        }
    };
    let same = |m: &&Meta| m.name == meta.name && m.namespace == meta.namespace;
    match meta.kind.as_str() {
        "PeerAuthentication" => {
            dup(out.peer_authentications.iter().map(|p| &p.meta).find(same))?;
            let s = security::decode::spec(spec, unknown)?;
            let p = PeerAuthentication::new(meta.clone(), s, root_namespace)?;
            out.peer_authentications.push(p);
        }
        "AuthorizationPolicy" => {
            dup(out
                .authorization_policies
                .iter()
                .map(|p| &p.meta)
                .find(same))?;
            let s = security::decode::spec(spec, unknown)?;
            let p = AuthorizationPolicy::new(meta.clone(), s, dry_run, root_namespace)?;
            out.authorization_policies.push(p);
        }
        "RequestAuthentication" => {
            dup(out
                .request_authentications
                .iter()
                .map(|p| &p.meta)
                .find(same))?;
            let s = security::decode::spec(spec, unknown)?;
            let p = RequestAuthentication::new(meta.clone(), s, root_namespace)?;
            out.request_authentications.push(p);
        }
        "Telemetry" if meta.api_version.starts_with("telemetry.istio.io/") => {
            dup(out.telemetries.iter().map(|p| &p.meta).find(same))?;
            let s = security::decode::spec(spec, unknown)?;
            let t = crate::telemetry::Telemetry::new(meta.clone(), s, root_namespace)?;
            out.telemetries.push(t);
        }
        other => out.ignored.push(Ignored {
            file: meta.file.clone(),
            document: meta.document,
            kind: other.to_string(),
            name: meta.key(),
            reason: format!("kind {other} is not supported; ignored"),
        }),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn precheck_depth_and_size() {
        let deep = format!("spec: {}{}", "[".repeat(129), "]".repeat(129));
        assert_eq!(
            precheck(&deep),
            Err("invalid YAML: flow collections nested deeper than 128 levels".to_string())
        );
        let ok_deep = format!("spec: {}{}", "[".repeat(128), "]".repeat(128));
        assert_eq!(precheck(&ok_deep), Ok(()));
        // Brackets in quoted strings, escapes and comments do not count.
        let quoted = format!(
            "a: \"{}\"\nb: '{}'\nc: \"\\\"{}\"\n# {}\n",
            "[".repeat(300),
            "{".repeat(300),
            "[".repeat(300),
            "[".repeat(300)
        );
        assert_eq!(precheck(&quoted), Ok(()));
        assert_eq!(
            precheck("regex: \"[0-9]{3}\"\nflow: {a: [1, {b: 2}]}\n"),
            Ok(())
        );
        let big = "a".repeat(MAX_FILE_BYTES + 1);
        assert_eq!(
            precheck(&big),
            Err(format!(
                "file is {} bytes, more than the {MAX_FILE_BYTES} bytes accepted",
                MAX_FILE_BYTES + 1
            ))
        );
    }

    #[test]
    fn deep_nesting_is_a_file_error() {
        let text = format!(
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: x}}\nspec: {}{}\n",
            "[".repeat(100_000),
            "]".repeat(100_000)
        );
        let inputs = Inputs {
            dir: "memory".into(),
            files: vec![("deep.yaml".into(), text.into_bytes())],
            skipped: vec![],
            hash: String::new(),
        };
        let d = decode_inputs(&inputs, &LoadContext::default());
        let lines: Vec<String> = d.errors.iter().map(|e| e.to_string()).collect();
        assert_eq!(
            lines,
            vec!["deep.yaml: invalid YAML: flow collections nested deeper than 128 levels"]
        );
    }
}
