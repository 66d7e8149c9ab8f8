//! RFC 6902 JSON patch between the submitted pod and the injected one, built on raw JSON.
//!
//! Objects are diffed key by key (so unknown fields are never touched); arrays and scalars that
//! differ are replaced whole with `add`, which RFC 6902 defines as "replace" for an existing
//! member. Replacing a whole array keeps the patch short and immune to index shifts (prepending
//! the proxy to `initContainers` would otherwise rewrite every later element).

use json_patch::{AddOperation, Patch, PatchOperation, RemoveOperation};
use serde_json::Value;

/// Escapes one path segment (`~` → `~0`, `/` → `~1`).
pub fn escape(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

fn walk(before: &Value, after: &Value, path: &str, ops: &mut Vec<PatchOperation>) {
    match (before, after) {
        (Value::Object(b), Value::Object(a)) => {
            for (k, bv) in b {
                let p = format!("{path}/{}", escape(k));
                match a.get(k) {
                    Some(av) => walk(bv, av, &p, ops),
                    None => ops.push(PatchOperation::Remove(RemoveOperation {
                        path: parse_ptr(&p),
                    })),
                }
            }
            for (k, av) in a {
                if !b.contains_key(k) {
                    ops.push(PatchOperation::Add(AddOperation {
                        path: parse_ptr(&format!("{path}/{}", escape(k))),
                        value: av.clone(),
                    }));
                }
            }
        }
        (b, a) if b == a => {}
        (_, a) => ops.push(PatchOperation::Add(AddOperation {
            path: parse_ptr(path),
            value: a.clone(),
        })),
    }
}

fn parse_ptr(p: &str) -> json_patch::jsonptr::PointerBuf {
    // Every segment was escaped above, so this cannot fail; fall back to root defensively.
    json_patch::jsonptr::PointerBuf::parse(p).unwrap_or_default()
}

/// The patch that turns `before` into `after`.
pub fn diff(before: &Value, after: &Value) -> Patch {
    let mut ops = Vec::new();
    walk(before, after, "", &mut ops);
    Patch(ops)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn patch_applies_and_escapes_keys() {
        let before = json!({"metadata": {"name": "a", "annotations": {"x/y": "1", "gone": "z"}}, "spec": {"containers": [{"name": "c"}]}});
        let after = json!({"metadata": {"name": "a", "annotations": {"x/y": "2", "sidecar.istio.io/status": "{}"}}, "spec": {"containers": [{"name": "p"}, {"name": "c"}], "volumes": []}});
        let patch = diff(&before, &after);
        let text = serde_json::to_string(&patch).unwrap();
        assert!(text.contains("/metadata/annotations/x~1y"), "{text}");
        assert!(text.contains("sidecar.istio.io~1status"), "{text}");
        let mut doc = before.clone();
        json_patch::patch(&mut doc, &patch).unwrap();
        assert_eq!(doc, after);
    }

    #[test]
    fn identical_documents_give_empty_patch() {
        let v = json!({"a": [1, 2], "b": {"c": null}});
        assert!(diff(&v, &v).0.is_empty());
    }

    #[test]
    fn missing_parents_are_added_whole() {
        let before = json!({"metadata": {}});
        let after = json!({"metadata": {"annotations": {"k": "v"}}});
        let mut doc = before.clone();
        json_patch::patch(&mut doc, &diff(&before, &after)).unwrap();
        assert_eq!(doc, after);
    }
}
