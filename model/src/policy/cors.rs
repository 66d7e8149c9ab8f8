//! `corsPolicy` (Istio's fields, Envoy's CORS filter behaviour):
//! - a preflight (`OPTIONS` with `Origin` and `Access-Control-Request-Method`) from an allowed
//!   origin is answered by the proxy: 200 with `access-control-allow-origin` (the origin),
//!   `-allow-methods`, `-allow-headers`, `-max-age`, `-allow-credentials`;
//! - a preflight from an origin that is not allowed is forwarded (`unmatchedPreflights:
//!   FORWARD`, the default) or answered 200 without CORS headers (`IGNORE`);
//! - any other request from an allowed origin is forwarded and its response gets
//!   `access-control-allow-origin`, `-allow-credentials` and `-expose-headers`.
//!
//! `CorsSpec` is Istio's shape, decoded with the VirtualService (`rules::decode`); `Cors` is
//! what it means.

use serde::Deserialize;

use crate::typed::{Dur, FieldError};

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

/// `corsPolicy` as Istio writes it (decoded with its VirtualService); `Cors` is what it means.
#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CorsSpec {
    /// The deprecated exact origins (`*`: any).
    #[serde(default)]
    pub allow_origin: Vec<String>,
    #[serde(default)]
    pub allow_origins: Vec<OriginSpec>,
    #[serde(default)]
    pub allow_methods: Vec<String>,
    #[serde(default)]
    pub allow_headers: Vec<String>,
    #[serde(default)]
    pub expose_headers: Vec<String>,
    pub max_age: Option<Dur>,
    pub allow_credentials: Option<bool>,
    pub unmatched_preflights: Option<String>,
}

/// One `allowOrigins` entry (a `StringMatch`).
#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
pub struct OriginSpec {
    pub exact: Option<String>,
    pub prefix: Option<String>,
    pub regex: Option<String>,
}

impl Cors {
    /// Interpret a `corsPolicy` found at `path` (e.g. `spec.http[0].corsPolicy`).
    pub fn from_spec(spec: CorsSpec, path: &str) -> Result<Cors, FieldError> {
        let mut c = Cors::default();
        for s in spec.allow_origin {
            c.origins.push(if s == "*" {
                OriginMatch::Any
            } else {
                OriginMatch::Exact(s)
            });
        }
        for (i, m) in spec.allow_origins.into_iter().enumerate() {
            let f = format!("{path}.allowOrigins[{i}]");
            let om = if let Some(e) = m.exact {
                if e == "*" {
                    OriginMatch::Any
                } else {
                    OriginMatch::Exact(e)
                }
            } else if let Some(p) = m.prefix {
                OriginMatch::Prefix(p)
            } else if let Some(r) = m.regex {
                OriginMatch::Regex(
                    crate::kinds::compile_regex(&r)
                        .map_err(|e| FieldError::new(format!("{f}.regex"), e))?,
                )
            } else {
                return Err(FieldError::new(
                    f,
                    "one of exact, prefix or regex is required",
                ));
            };
            c.origins.push(om);
        }
        c.allow_methods = spec.allow_methods;
        c.allow_headers = spec.allow_headers;
        c.expose_headers = spec.expose_headers;
        c.max_age = spec.max_age.map(|d| d.0.as_secs());
        c.allow_credentials = spec.allow_credentials.unwrap_or(false);
        match spec.unmatched_preflights.as_deref() {
            None | Some("FORWARD") | Some("UNSPECIFIED") => {}
            Some("IGNORE") => c.ignore_unmatched_preflights = true,
            Some(other) => {
                return Err(FieldError::new(
                    format!("{path}.unmatchedPreflights"),
                    format!("{other:?} is not FORWARD or IGNORE"),
                ))
            }
        }
        Ok(c)
    }
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

    /// A `corsPolicy` at `field`, decoded as the rules loader decodes it.
    fn parse(v: &serde_json::Value, field: &str) -> Result<Cors, String> {
        crate::typed::decode::<CorsSpec>(v, field, &mut Vec::new())
            .and_then(|spec| Cors::from_spec(spec, field))
            .map_err(|e| e.to_string())
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
            "c.allowCredentials: expected true or false, found the string \"yes\""
        );
        assert_eq!(
            parse(&json!({"allowOrigins": [{}]}), "c").unwrap_err(),
            "c.allowOrigins[0]: one of exact, prefix or regex is required"
        );
        assert_eq!(
            parse(&json!({"allowOrigins": [{"regex": "("}]}), "c").unwrap_err(),
            "c.allowOrigins[0].regex: invalid regex \"(\": error: unclosed group"
        );
        assert_eq!(
            parse(&json!({"unmatchedPreflights": "DROP"}), "c").unwrap_err(),
            "c.unmatchedPreflights: \"DROP\" is not FORWARD or IGNORE"
        );
    }
}
