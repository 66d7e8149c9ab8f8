//! What the soak reads from the logs it leaves: the client sidecar's access log by request id,
//! and `panicked` lines anywhere.

use serde::Serialize;
use std::collections::BTreeMap;
use std::path::Path;

/// What the client's sidecar logged for one request.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Logged {
    pub status: u16,
    pub flags: String,
    pub upstream: String,
}

/// The outbound HTTP access-log lines of a proxy log, by request id.
pub fn access_log(text: &str) -> BTreeMap<String, Logged> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let line = line.trim();
        if !line.starts_with('{') || !line.contains("\"kind\":\"http\"") {
            continue;
        }
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if v["direction"] != "outbound" {
            continue;
        }
        let Some(id) = v["request_id"].as_str() else {
            continue;
        };
        out.insert(
            id.to_string(),
            Logged {
                status: v["status"].as_u64().unwrap_or(0) as u16,
                flags: v["response_flags"].as_str().unwrap_or("").to_string(),
                upstream: v["upstream"].as_str().unwrap_or("").to_string(),
            },
        );
    }
    out
}

/// `panicked` lines in every file under `dir` (recursively): `(file, line)`.
pub fn panics_in(dir: &Path) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            let Ok(ft) = e.file_type() else { continue };
            if ft.is_dir() {
                stack.push(p);
            } else if ft.is_file() && p.extension().is_some_and(|x| x == "log") {
                let text = std::fs::read(&p).unwrap_or_default();
                for line in String::from_utf8_lossy(&text).lines() {
                    if line.contains("panicked") {
                        out.push((p.display().to_string(), line.chars().take(300).collect()));
                    }
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn access_log_lines_are_indexed_by_request_id() {
        let text = r#"2026-11-22T00:00:00Z INFO something
{"kind":"http","direction":"outbound","status":503,"response_flags":"UF,URX","upstream":"10.244.0.13:8080","request_id":"abc"}
{"kind":"http","direction":"inbound","status":200,"response_flags":"-","upstream":"x","request_id":"def"}
{"kind":"tcp","direction":"outbound","request_id":"ghi"}"#;
        let m = access_log(text);
        assert_eq!(m.len(), 1);
        assert_eq!(m["abc"].flags, "UF,URX");
        assert_eq!(m["abc"].upstream, "10.244.0.13:8080");
    }

    #[test]
    fn panics_are_found_in_logs() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("pods/x")).unwrap();
        std::fs::write(
            d.path().join("pods/x/remora-proxy.log"),
            "ok\nthread 'main' panicked at src/x.rs:1\n",
        )
        .unwrap();
        std::fs::write(d.path().join("pods/x/notes.txt"), "panicked").unwrap();
        let p = panics_in(d.path());
        assert_eq!(p.len(), 1);
        assert!(p[0].1.contains("panicked at"));
    }
}
