//! The node's CNI network configuration, edited (pure): insert remora-cni as the last plugin of
//! the primary network's chain, remove it again; JSON in, JSON out, idempotent.
//!
//! The container runtime uses the first file of the configuration directory in lexical order
//! (`*.conflist`, `*.conf`, `*.json`); a single-plugin `.conf` becomes a `.conflist` holding the
//! primary plugin, then ours.

use serde_json::{json, Map, Value};

/// The plugin's `type`: how its entry is found again.
pub const PLUGIN_TYPE: &str = "remora-cni";

/// The primary network configuration among a directory's file names: the first in lexical order
/// with a CNI configuration extension.
pub fn primary(names: &[String]) -> Option<String> {
    let mut candidates: Vec<&String> = names
        .iter()
        .filter(|n| {
            !n.starts_with('.')
                && (n.ends_with(".conflist") || n.ends_with(".conf") || n.ends_with(".json"))
        })
        .collect();
    candidates.sort();
    candidates.first().map(|s| s.to_string())
}

/// The result of an edit: the file to write (possibly renamed) and its content.
#[derive(Debug, Clone, PartialEq)]
pub struct Edit {
    /// The file name to write.
    pub name: String,
    /// The file it replaces when renamed (`x.conf` → `x.conflist`), to be removed.
    pub replaces: Option<String>,
    pub content: Value,
    /// False when the file already says exactly this.
    pub changed: bool,
}

fn is_ours(p: &Value) -> bool {
    p.get("type").and_then(Value::as_str) == Some(PLUGIN_TYPE)
}

/// Insert (or update) `plugin` as the last plugin of the network configuration `name` holds.
/// `plugin` is our entry (with `"type": "remora-cni"`), without `cniVersion` and `name`.
pub fn insert(name: &str, existing: &Value, plugin: &Value) -> Result<Edit, String> {
    let Some(obj) = existing.as_object() else {
        return Err(format!("{name}: not a JSON object"));
    };
    if let Some(plugins) = obj.get("plugins") {
        let Some(list) = plugins.as_array() else {
            return Err(format!("{name}: \"plugins\" is not a list"));
        };
        if list.iter().all(is_ours) {
            return Err(format!(
                "{name}: no primary plugin to chain after (the list holds only {PLUGIN_TYPE})"
            ));
        }
        let mut kept: Vec<Value> = list.iter().filter(|p| !is_ours(p)).cloned().collect();
        kept.push(plugin.clone());
        let mut out = obj.clone();
        out.insert("plugins".into(), Value::Array(kept));
        let content = Value::Object(out);
        return Ok(Edit {
            name: name.to_string(),
            replaces: None,
            changed: &content != existing,
            content,
        });
    }
    // A single-plugin .conf / .json: becomes a conflist.
    let Some(primary_type) = obj.get("type").and_then(Value::as_str) else {
        return Err(format!(
            "{name}: neither a plugin list (\"plugins\") nor a single plugin (\"type\")"
        ));
    };
    if primary_type == PLUGIN_TYPE {
        return Err(format!(
            "{name}: the network configuration is {PLUGIN_TYPE} alone; it must chain after the primary plugin"
        ));
    }
    let mut first: Map<String, Value> = obj.clone();
    let version = first.remove("cniVersion").unwrap_or_else(|| json!("0.3.1"));
    let net_name = first
        .remove("name")
        .unwrap_or_else(|| json!("k8s-pod-network"));
    let content = json!({
        "cniVersion": version,
        "name": net_name,
        "plugins": [Value::Object(first), plugin],
    });
    let stem = name
        .strip_suffix(".conf")
        .or_else(|| name.strip_suffix(".json"))
        .unwrap_or(name);
    Ok(Edit {
        name: format!("{stem}.conflist"),
        replaces: Some(name.to_string()),
        content,
        changed: true,
    })
}

/// Remove our entries from a network configuration; `None` when it holds none.
pub fn remove(existing: &Value) -> Option<Value> {
    let list = existing.get("plugins")?.as_array()?;
    if !list.iter().any(is_ours) {
        return None;
    }
    let mut out = existing.clone();
    out["plugins"] = Value::Array(list.iter().filter(|p| !is_ours(p)).cloned().collect());
    Some(out)
}

/// Whether the configuration holds our entry, equal to `plugin`, as its last plugin.
pub fn holds(existing: &Value, plugin: &Value) -> bool {
    existing
        .get("plugins")
        .and_then(Value::as_array)
        .and_then(|l| l.last())
        .is_some_and(|last| last == plugin)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ours() -> Value {
        json!({"type": "remora-cni", "podInfo": {"source": "file", "dir": "/run/remora-cni/pods"}})
    }

    fn calico() -> Value {
        json!({
            "name": "k8s-pod-network",
            "cniVersion": "0.3.1",
            "plugins": [
                {"type": "calico", "ipam": {"type": "calico-ipam"}},
                {"type": "portmap", "capabilities": {"portMappings": true}}
            ]
        })
    }

    #[test]
    fn primary_is_the_first_config_file() {
        let names: Vec<String> = [
            "99-x.conf",
            "10-calico.conflist",
            "README",
            ".10-a.conf",
            "05-b.json",
        ]
        .map(String::from)
        .to_vec();
        assert_eq!(primary(&names).as_deref(), Some("05-b.json"));
        assert_eq!(primary(&["README".to_string()]), None);
    }

    #[test]
    fn insert_appends_after_the_primary_chain_and_is_idempotent() {
        let e = insert("10-calico.conflist", &calico(), &ours()).unwrap();
        assert!(e.changed);
        assert_eq!(e.name, "10-calico.conflist");
        assert_eq!(e.replaces, None);
        let types: Vec<&str> = e.content["plugins"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["type"].as_str().unwrap())
            .collect();
        assert_eq!(types, ["calico", "portmap", "remora-cni"]);
        assert!(holds(&e.content, &ours()));
        // Again: nothing changes.
        let again = insert("10-calico.conflist", &e.content, &ours()).unwrap();
        assert!(!again.changed);
        assert_eq!(again.content, e.content);
        // A new setting replaces the old entry, still last.
        let mut newer = ours();
        newer["iptablesMode"] = json!("legacy");
        let upd = insert("10-calico.conflist", &e.content, &newer).unwrap();
        assert!(upd.changed);
        assert_eq!(upd.content["plugins"].as_array().unwrap().len(), 3);
        assert!(holds(&upd.content, &newer));
        // Removed: exactly the primary's file again.
        assert_eq!(remove(&upd.content), Some(calico()));
        assert_eq!(remove(&calico()), None);
    }

    #[test]
    fn a_single_plugin_conf_becomes_a_conflist() {
        let bridge = json!({"cniVersion": "1.0.0", "name": "bridge-net", "type": "bridge", "bridge": "cni0", "ipam": {"type": "host-local"}});
        let e = insert("10-bridge.conf", &bridge, &ours()).unwrap();
        assert_eq!(e.name, "10-bridge.conflist");
        assert_eq!(e.replaces.as_deref(), Some("10-bridge.conf"));
        assert_eq!(
            e.content,
            json!({
                "cniVersion": "1.0.0",
                "name": "bridge-net",
                "plugins": [
                    {"type": "bridge", "bridge": "cni0", "ipam": {"type": "host-local"}},
                    ours()
                ]
            })
        );
    }

    #[test]
    fn malformed_configurations_are_named() {
        for (v, want) in [
            (json!([1]), "not a JSON object"),
            (json!({"plugins": 3}), "\"plugins\" is not a list"),
            (json!({"plugins": [ours()]}), "no primary plugin"),
            (json!({"name": "x"}), "neither a plugin list"),
            (json!({"type": "remora-cni"}), "remora-cni alone"),
        ] {
            let e = insert("a.conf", &v, &ours()).unwrap_err();
            assert!(e.starts_with("a.conf: ") && e.contains(want), "{e}");
        }
    }
}
