//! `corsPolicy` (Istio's fields, Envoy's CORS filter behaviour):
//! - a preflight (`OPTIONS` with `Origin` and `Access-Control-Request-Method`) from an allowed
//!   origin is answered by the proxy: 200 with `access-control-allow-origin` (the origin),
//!   `-allow-methods`, `-allow-headers`, `-max-age`, `-allow-credentials`;
//! - a preflight from an origin that is not allowed is forwarded (`unmatchedPreflights:
//!   FORWARD`, the default) or answered 200 without CORS headers (`IGNORE`);
//! - any other request from an allowed origin is forwarded and its response gets
//!   `access-control-allow-origin`, `-allow-credentials` and `-expose-headers`.

use serde_json::Value;

/// An origin condition (`allowOrigins[]` StringMatch; the deprecated `allowOrigin[]` strings
/// are exact matches, `*` any).
#[derive(Clone, Debug)]
pub enum OriginMatch {
    Exact(String),
    Prefix(String),
    Regex(regex::Regex),
    Any,
}

impl OriginMatch {
    fn matches(&self, o: &str) -> bool {
        match self {
            OriginMatch::Exact(e) => e == o,
            OriginMatch::Prefix(p) => o.starts_with(p.as_str()),
            OriginMatch::Regex(r) => r.is_match(o),
            OriginMatch::Any => true,
        }
    }
}

/// The parsed policy.
#[derive(Clone, Debug, Default)]
pub struct Cors {
    pub origins: Vec<OriginMatch>,
    pub allow_methods: Vec<String>,
    pub allow_headers: Vec<String>,
    pub expose_headers: Vec<String>,
    /// Seconds.
    pub max_age: Option<u64>,
    pub allow_credentials: bool,
    /// `unmatchedPreflights: IGNORE`.
    pub ignore_unmatched_preflights: bool,
}

fn strings(o: &serde_json::Map<String, Value>, f: &str, k: &str) -> Result<Vec<String>, String> {
    match o.get(k) {
        None => Ok(vec![]),
        Some(Value::Array(a)) => a
            .iter()
            .enumerate()
            .map(|(i, x)| {
                x.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| format!("{f}.{k}[{i}]: {x} is not a string"))
            })
            .collect(),
        Some(x) => Err(format!("{f}.{k}: expected a list of strings, got {x}")),
    }
}

/// Parse a `corsPolicy` object.
pub fn parse(v: &Value, field: &str) -> Result<Cors, String> {
    let o = v
        .as_object()
        .ok_or_else(|| format!("{field}: expected a mapping, got {v}"))?;
    let mut c = Cors::default();
    for s in strings(o, field, "allowOrigin")? {
        c.origins.push(if s == "*" {
            OriginMatch::Any
        } else {
            OriginMatch::Exact(s)
        });
    }
    if let Some(list) = o.get("allowOrigins") {
        let arr = list
            .as_array()
            .ok_or_else(|| format!("{field}.allowOrigins: expected a list, got {list}"))?;
        for (i, m) in arr.iter().enumerate() {
            let f = format!("{field}.allowOrigins[{i}]");
            let mo = m
                .as_object()
                .ok_or_else(|| format!("{f}: expected a mapping, got {m}"))?;
            let get = |k: &str| mo.get(k).and_then(Value::as_str);
            let om = if let Some(e) = get("exact") {
                if e == "*" {
                    OriginMatch::Any
                } else {
                    OriginMatch::Exact(e.to_string())
                }
            } else if let Some(p) = get("prefix") {
                OriginMatch::Prefix(p.to_string())
            } else if let Some(r) = get("regex") {
                OriginMatch::Regex(
                    regex::Regex::new(&format!("^(?:{r})$"))
                        .map_err(|e| format!("{f}.regex: {r:?} is not a valid regex: {e}"))?,
                )
            } else {
                return Err(format!("{f}: expected exact, prefix or regex"));
            };
            c.origins.push(om);
        }
    }
    c.allow_methods = strings(o, field, "allowMethods")?;
    c.allow_headers = strings(o, field, "allowHeaders")?;
    c.expose_headers = strings(o, field, "exposeHeaders")?;
    if let Some(m) = o.get("maxAge") {
        let s = m
            .as_str()
            .ok_or_else(|| format!("{field}.maxAge: {m} is not a duration string"))?;
        let d = crate::kinds::parse_duration(s).map_err(|e| format!("{field}.maxAge: {e}"))?;
        c.max_age = Some(d.as_secs());
    }
    if let Some(b) = o.get("allowCredentials") {
        c.allow_credentials = b
            .as_bool()
            .ok_or_else(|| format!("{field}.allowCredentials: {b} is not true or false"))?;
    }
    match o.get("unmatchedPreflights").and_then(Value::as_str) {
        None | Some("FORWARD") | Some("UNSPECIFIED") => {}
        Some("IGNORE") => c.ignore_unmatched_preflights = true,
        Some(other) => {
            return Err(format!(
                "{field}.unmatchedPreflights: {other:?} is not FORWARD or IGNORE"
            ))
        }
    }
    Ok(c)
}

/// What to do with a request under a CORS policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Answer locally with this status and headers (a preflight).
    Answer {
        status: u16,
        headers: Vec<(String, String)>,
    },
    /// Forward, then add these headers to the response.
    Forward {
        response_headers: Vec<(String, String)>,
    },
}

impl Cors {
    pub fn allows(&self, origin: &str) -> bool {
        self.origins.iter().any(|m| m.matches(origin))
    }

    /// Decide for one request from its method and headers.
    pub fn decide(&self, method: &str, headers: &http::HeaderMap) -> Action {
        let h = |n: &str| headers.get(n).and_then(|v| v.to_str().ok());
        let Some(origin) = h("origin") else {
            return Action::Forward {
                response_headers: vec![],
            };
        };
        let preflight =
            method.eq_ignore_ascii_case("OPTIONS") && h("access-control-request-method").is_some();
        let allowed = self.allows(origin);
        let mut out: Vec<(String, String)> = Vec::new();
        let mut push = |k: &str, v: String| out.push((k.to_string(), v));
        if preflight {
            if !allowed {
                return if self.ignore_unmatched_preflights {
                    Action::Answer {
                        status: 200,
                        headers: vec![],
                    }
                } else {
                    Action::Forward {
                        response_headers: vec![],
                    }
                };
            }
            push("access-control-allow-origin", origin.to_string());
            if !self.allow_methods.is_empty() {
                push("access-control-allow-methods", self.allow_methods.join(","));
            }
            if !self.allow_headers.is_empty() {
                push("access-control-allow-headers", self.allow_headers.join(","));
            }
            if let Some(m) = self.max_age {
                push("access-control-max-age", m.to_string());
            }
            if self.allow_credentials {
                push("access-control-allow-credentials", "true".into());
            }
            return Action::Answer {
                status: 200,
                headers: out,
            };
        }
        if allowed {
            push("access-control-allow-origin", origin.to_string());
            if self.allow_credentials {
                push("access-control-allow-credentials", "true".into());
            }
            if !self.expose_headers.is_empty() {
                push(
                    "access-control-expose-headers",
                    self.expose_headers.join(","),
                );
            }
        }
        Action::Forward {
            response_headers: out,
        }
    }
}

/// The `corsPolicy` of every VirtualService http route in one file.
pub fn of_file(
    file: &str,
    text: &str,
    default_ns: &str,
) -> Vec<((String, String), Result<Cors, String>)> {
    let mut out = Vec::new();
    // As the loader reads it: without a byte-order mark; the parser cannot resynchronise after a
    // syntax error (its document iterator would repeat the error forever), so stop there.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    for (i, doc) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        let Ok(v) = <serde_json::Value as serde::Deserialize>::deserialize(doc) else {
            break;
        };
        if v.get("kind").and_then(serde_json::Value::as_str) != Some("VirtualService") {
            continue;
        }
        let meta = v.get("metadata");
        let name = meta
            .and_then(|m| m.get("name"))
            .and_then(serde_json::Value::as_str)
            .unwrap_or("");
        let ns = meta
            .and_then(|m| m.get("namespace"))
            .and_then(serde_json::Value::as_str)
            .unwrap_or(default_ns);
        let routes = v
            .get("spec")
            .and_then(|s| s.get("http"))
            .and_then(serde_json::Value::as_array);
        for (j, r) in routes.into_iter().flatten().enumerate() {
            if let Some(c) = r.get("corsPolicy") {
                let field = format!("{file} doc {} spec.http[{j}].corsPolicy", i + 1);
                out.push((
                    (format!("{ns}/{name}"), format!("spec.http[{j}]")),
                    parse(c, &field),
                ));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn hm(pairs: &[(&str, &str)]) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        for (k, v) in pairs {
            h.insert(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    fn policy() -> Cors {
        parse(
            &json!({"allowOrigins": [{"exact": "https://a.example"}, {"regex": "https://.*\\.b\\.example"}],
                    "allowMethods": ["GET", "POST"], "allowHeaders": ["x-a", "x-b"],
                    "exposeHeaders": ["x-e"], "maxAge": "24h", "allowCredentials": true}),
            "cors",
        )
        .unwrap()
    }

    #[test]
    fn preflight_from_allowed_origin_is_answered() {
        let p = policy();
        let a = p.decide(
            "OPTIONS",
            &hm(&[
                ("origin", "https://x.b.example"),
                ("access-control-request-method", "POST"),
            ]),
        );
        assert_eq!(
            a,
            Action::Answer {
                status: 200,
                headers: vec![
                    (
                        "access-control-allow-origin".into(),
                        "https://x.b.example".into()
                    ),
                    ("access-control-allow-methods".into(), "GET,POST".into()),
                    ("access-control-allow-headers".into(), "x-a,x-b".into()),
                    ("access-control-max-age".into(), "86400".into()),
                    ("access-control-allow-credentials".into(), "true".into()),
                ]
            }
        );
    }

    #[test]
    fn unmatched_preflights_forward_or_ignore() {
        let h = hm(&[
            ("origin", "https://evil.example"),
            ("access-control-request-method", "GET"),
        ]);
        assert_eq!(
            policy().decide("OPTIONS", &h),
            Action::Forward {
                response_headers: vec![]
            }
        );
        let mut ig = policy();
        ig.ignore_unmatched_preflights = true;
        assert_eq!(
            ig.decide("OPTIONS", &h),
            Action::Answer {
                status: 200,
                headers: vec![]
            }
        );
    }

    #[test]
    fn actual_requests_get_response_headers_only_when_allowed() {
        let p = policy();
        assert_eq!(
            p.decide("GET", &hm(&[("origin", "https://a.example")])),
            Action::Forward {
                response_headers: vec![
                    (
                        "access-control-allow-origin".into(),
                        "https://a.example".into()
                    ),
                    ("access-control-allow-credentials".into(), "true".into()),
                    ("access-control-expose-headers".into(), "x-e".into()),
                ]
            }
        );
        for h in [hm(&[("origin", "https://c.example")]), hm(&[])] {
            assert_eq!(
                p.decide("GET", &h),
                Action::Forward {
                    response_headers: vec![]
                }
            );
        }
        // OPTIONS without Access-Control-Request-Method is not a preflight
        assert!(matches!(
            p.decide("OPTIONS", &hm(&[("origin", "https://a.example")])),
            Action::Forward { .. }
        ));
    }

    #[test]
    fn parse_errors_and_legacy_allow_origin() {
        let p = parse(&json!({"allowOrigin": ["*"]}), "c").unwrap();
        assert!(p.allows("https://anything"));
        assert_eq!(
            parse(
                &json!({"allowOrigins": [{"regex": "("}]}),
                "spec.http[0].corsPolicy"
            )
            .unwrap_err()
            .split(':')
            .next(),
            Some("spec.http[0].corsPolicy.allowOrigins[0].regex")
        );
        assert_eq!(
            parse(&json!({"allowCredentials": "yes"}), "c").unwrap_err(),
            "c.allowCredentials: \"yes\" is not true or false"
        );
        assert_eq!(
            parse(&json!({"unmatchedPreflights": "DROP"}), "c").unwrap_err(),
            "c.unmatchedPreflights: \"DROP\" is not FORWARD or IGNORE"
        );
    }
}
