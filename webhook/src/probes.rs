//! App probe rewriting: httpGet/tcpSocket/grpc probes become httpGet to the proxy's status port
//! at `/app-health/<container>/{livez,readyz,startupz}`; the originals (named ports resolved)
//! travel to the proxy in `ISTIO_KUBE_APP_PROBERS`, in Istio's JSON format.

use serde_json::{json, Map, Value};

/// The proxy's status port that serves `/app-health/...`.
pub const STATUS_PORT: u16 = 15020;
/// Env var carrying the original probes.
pub const PROBERS_ENV: &str = "ISTIO_KUBE_APP_PROBERS";

const KINDS: [(&str, &str); 3] = [
    ("livenessProbe", "livez"),
    ("readinessProbe", "readyz"),
    ("startupProbe", "startupz"),
];

/// The result of rewriting: the probers map (path → original probe) and notes for the log.
#[derive(Debug, Default)]
pub struct Rewritten {
    pub probers: Map<String, Value>,
    pub notes: Vec<String>,
}

fn resolve_port(container: &Value, port: &Value) -> Option<i64> {
    match port {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => {
            if let Ok(n) = s.parse::<i64>() {
                return Some(n);
            }
            container
                .get("ports")
                .and_then(Value::as_array)?
                .iter()
                .find(|p| p.get("name").and_then(Value::as_str) == Some(s.as_str()))
                .and_then(|p| p.get("containerPort"))
                .and_then(Value::as_i64)
        }
        _ => None,
    }
}

/// Whether a probe is already our rewrite for `path`.
fn is_rewritten(probe: &Value, path: &str) -> bool {
    probe.pointer("/httpGet/path").and_then(Value::as_str) == Some(path)
        && probe.pointer("/httpGet/port").and_then(Value::as_i64) == Some(STATUS_PORT as i64)
}

/// Rewrites the probes of `containers` in place. `previous` is the probers map of an earlier
/// injection (re-injection keeps already-rewritten probes and carries their originals over).
pub fn rewrite(containers: &mut [Value], previous: &Map<String, Value>) -> Rewritten {
    let mut out = Rewritten::default();
    for c in containers.iter_mut() {
        let Some(name) = c.get("name").and_then(Value::as_str).map(str::to_string) else {
            continue;
        };
        for (field, suffix) in KINDS {
            let Some(probe) = c.get(field) else { continue };
            if !probe.is_object() {
                continue;
            }
            let path = format!("/app-health/{name}/{suffix}");
            if is_rewritten(probe, &path) {
                if let Some(orig) = previous.get(&path) {
                    out.probers.insert(path, orig.clone());
                }
                continue;
            }
            let handler = ["httpGet", "tcpSocket", "grpc"].into_iter().find_map(|k| {
                probe
                    .get(k)
                    .filter(|v| v.is_object())
                    .map(|v| (k, v.clone()))
            });
            let Some((kind, mut handler)) = handler else {
                continue; // exec probes run inside the app container; nothing to do
            };
            let port = handler.get("port").cloned().unwrap_or(Value::Null);
            let Some(port) = resolve_port(c, &port) else {
                out.notes.push(format!(
                    "{field} of container {name} left as is: port {port} is not a number or a declared port name"
                ));
                continue;
            };
            handler["port"] = json!(port);
            let mut orig = Map::new();
            orig.insert(kind.to_string(), handler);
            if let Some(t) = probe.get("timeoutSeconds") {
                orig.insert("timeoutSeconds".to_string(), t.clone());
            }
            let mut new_probe = probe.clone();
            if let Some(obj) = new_probe.as_object_mut() {
                obj.remove("tcpSocket");
                obj.remove("grpc");
                obj.insert(
                    "httpGet".to_string(),
                    json!({"path": path, "port": STATUS_PORT, "scheme": "HTTP"}),
                );
            }
            c[field] = new_probe;
            out.probers.insert(path, Value::Object(orig));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rewrites_http_tcp_grpc_and_resolves_named_ports() {
        let mut cs = vec![json!({
            "name": "web",
            "ports": [{"name": "http", "containerPort": 8080}],
            "livenessProbe": {"httpGet": {"path": "/live", "port": "http", "scheme": "HTTPS"}, "timeoutSeconds": 2, "periodSeconds": 7},
            "readinessProbe": {"tcpSocket": {"port": 8081}},
            "startupProbe": {"grpc": {"port": 9090}}
        })];
        let r = rewrite(&mut cs, &Map::new());
        assert_eq!(
            cs[0]["livenessProbe"],
            json!({"httpGet": {"path": "/app-health/web/livez", "port": 15020, "scheme": "HTTP"}, "timeoutSeconds": 2, "periodSeconds": 7})
        );
        assert_eq!(
            cs[0]["readinessProbe"]["httpGet"]["path"],
            "/app-health/web/readyz"
        );
        assert!(cs[0]["readinessProbe"].get("tcpSocket").is_none());
        assert!(cs[0]["startupProbe"].get("grpc").is_none());
        assert_eq!(
            Value::Object(r.probers),
            json!({
                "/app-health/web/livez": {"httpGet": {"path": "/live", "port": 8080, "scheme": "HTTPS"}, "timeoutSeconds": 2},
                "/app-health/web/readyz": {"tcpSocket": {"port": 8081}},
                "/app-health/web/startupz": {"grpc": {"port": 9090}}
            })
        );
    }

    #[test]
    fn exec_and_unresolvable_probes_are_left_alone() {
        let mut cs = vec![json!({
            "name": "a",
            "livenessProbe": {"exec": {"command": ["true"]}},
            "readinessProbe": {"httpGet": {"port": "nope"}}
        })];
        let before = cs.clone();
        let r = rewrite(&mut cs, &Map::new());
        assert_eq!(cs, before);
        assert!(r.probers.is_empty());
        assert_eq!(r.notes.len(), 1);
        assert!(r.notes[0].contains("nope"));
    }

    #[test]
    fn rewriting_twice_is_idempotent() {
        let mut cs = vec![json!({"name": "a", "readinessProbe": {"httpGet": {"port": 80}}})];
        let first = rewrite(&mut cs, &Map::new());
        let once = cs.clone();
        let second = rewrite(&mut cs, &first.probers);
        assert_eq!(cs, once);
        assert_eq!(first.probers, second.probers);
    }
}
