//! Local rate limiting: a token bucket per route or destination, configured by our own
//! `RateLimit` kind (`apiVersion: remora.dev/v1alpha1`) in the rules directory:
//!
//! ```yaml
//! apiVersion: remora.dev/v1alpha1
//! kind: RateLimit
//! metadata: {name: reviews-limit, namespace: default}
//! spec:
//!   host: reviews            # destination host (short names resolve in the namespace)
//!   route: v2-route          # optional: only requests routed by this http route name
//!   requestsPerUnit: 100     # tokens added per unit (also `requests_per_unit`)
//!   unit: SECOND             # SECOND | MINUTE | HOUR
//!   burst: 100               # optional: bucket size (default requestsPerUnit)
//! ```
//!
//! A request finding the bucket empty is answered 429 with `x-ratelimit-limit`,
//! `x-ratelimit-remaining: 0` and `x-ratelimit-reset` (seconds until a token is back).

use std::time::Duration;

use serde_json::Value;

pub const API_VERSION: &str = "remora.dev/v1alpha1";
pub const KIND: &str = "RateLimit";

/// One `RateLimit` resource.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RateLimitRule {
    /// `namespace/name`.
    pub key: String,
    /// Fully qualified destination host.
    pub host: String,
    pub route: Option<String>,
    pub requests_per_unit: u64,
    #[serde(with = "crate::serde_util::secs")]
    pub unit: Duration,
    pub unit_name: String,
    pub burst: u64,
    /// `file` doc `n`.
    pub source: String,
}

impl RateLimitRule {
    /// Does this rule govern a request forwarded to `host` by `route`?
    pub fn applies(&self, host: &str, route: Option<&str>) -> bool {
        self.host == host && self.route.as_deref().is_none_or(|r| Some(r) == route)
    }
}

/// A `RateLimit`'s `spec` as written (`requests_per_unit` is accepted for `requestsPerUnit`,
/// and the unit in any case: kept for the API server, which knows neither).
#[derive(serde::Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-preserve-unknown-fields" = true))]
pub(crate) struct RateLimitSpec {
    host: Option<String>,
    route: Option<String>,
    #[serde(alias = "requests_per_unit")]
    #[schemars(range(min = 1))]
    requests_per_unit: Option<u64>,
    unit: Option<String>,
    #[schemars(range(min = 1))]
    burst: Option<u64>,
}

/// Parse the `RateLimit` documents of one rules file; other kinds are skipped. An invalid
/// `RateLimit` is an error naming file, document, field, value and reason.
pub fn parse_file(
    file: &str,
    text: &str,
    default_ns: &str,
    domain: &str,
) -> Result<Vec<RateLimitRule>, String> {
    let mut out = Vec::new();
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    for (i, doc) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        let n = i + 1;
        let Ok(v) = <Value as serde::Deserialize>::deserialize(doc) else {
            // Syntax errors are reported by the rules loader; the parser cannot resynchronise
            // after one (the iterator would repeat it forever).
            break;
        };
        if v.get("kind").and_then(Value::as_str) != Some(KIND) {
            continue;
        }
        let at = |field: &str, msg: String| format!("{file} doc {n}: {field}: {msg}");
        let api = v.get("apiVersion").and_then(Value::as_str).unwrap_or("");
        if api != API_VERSION {
            return Err(at(
                "apiVersion",
                format!("{api:?} is not supported for RateLimit (expected {API_VERSION:?})"),
            ));
        }
        let meta = v.get("metadata");
        let name = meta
            .and_then(|m| m.get("name"))
            .and_then(Value::as_str)
            .ok_or_else(|| at("metadata.name", "required".into()))?;
        let ns = meta
            .and_then(|m| m.get("namespace"))
            .and_then(Value::as_str)
            .unwrap_or(default_ns);
        let spec = match v.get("spec") {
            Some(spec @ Value::Object(_)) => spec,
            _ => return Err(at("spec", "required mapping".into())),
        };
        let spec: RateLimitSpec = crate::typed::decode(spec, "spec", &mut Vec::new())
            .map_err(|e| format!("{file} doc {n}: {e}"))?;
        let host = spec
            .host
            .as_deref()
            .filter(|h| !h.trim().is_empty())
            .ok_or_else(|| at("spec.host", "required string".into()))?;
        let route = spec.route;
        let rpu = spec
            .requests_per_unit
            .ok_or_else(|| at("spec.requestsPerUnit", "required".into()))?;
        if rpu == 0 {
            return Err(at(
                "spec.requestsPerUnit",
                format!("{rpu} is not a positive integer"),
            ));
        }
        let unit_name = spec
            .unit
            .as_deref()
            .unwrap_or("SECOND")
            .to_ascii_uppercase();
        let unit = match unit_name.as_str() {
            "SECOND" => Duration::from_secs(1),
            "MINUTE" => Duration::from_secs(60),
            "HOUR" => Duration::from_secs(3600),
            other => {
                return Err(at(
                    "spec.unit",
                    format!("{other:?} is not SECOND, MINUTE or HOUR"),
                ))
            }
        };
        let burst = match spec.burst {
            None => rpu,
            Some(0) => return Err(at("spec.burst", "0 is not a positive integer".into())),
            Some(b) => b,
        };
        out.push(RateLimitRule {
            key: format!("{ns}/{name}"),
            host: crate::host::qualify(host, ns, domain),
            route,
            requests_per_unit: rpu,
            unit,
            unit_name,
            burst,
            source: format!("{file} doc {n}"),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_rate_limits_and_errors() {
        let y = r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: r}
spec: {hosts: [r]}
---
apiVersion: remora.dev/v1alpha1
kind: RateLimit
metadata: {name: rl, namespace: prod}
spec: {host: reviews, requestsPerUnit: 5, unit: MINUTE}
---
apiVersion: remora.dev/v1alpha1
kind: RateLimit
metadata: {name: rl2}
spec: {host: ratings.example.com, route: r1, requests_per_unit: 7, burst: 2}
"#;
        let got = parse_file("a.yaml", y, "default", "cluster.local").unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].key, "prod/rl");
        assert_eq!(got[0].host, "reviews.prod.svc.cluster.local");
        assert_eq!(got[0].unit, Duration::from_secs(60));
        assert_eq!(got[0].burst, 5);
        assert_eq!(got[0].source, "a.yaml doc 2");
        assert_eq!(got[1].key, "default/rl2");
        assert_eq!(got[1].route.as_deref(), Some("r1"));
        assert_eq!(got[1].burst, 2);
        assert!(got[1].applies("ratings.example.com", Some("r1")));
        assert!(!got[1].applies("ratings.example.com", Some("r2")));
        assert!(got[0].applies("reviews.prod.svc.cluster.local", None));

        let bad = [
            (
                "spec: {host: a, requestsPerUnit: 0}",
                "f.yaml doc 1: spec.requestsPerUnit: 0 is not a positive integer",
            ),
            (
                "spec: {host: a, requestsPerUnit: 1, unit: DAY}",
                "f.yaml doc 1: spec.unit: \"DAY\" is not SECOND, MINUTE or HOUR",
            ),
            (
                "spec: {requestsPerUnit: 1}",
                "f.yaml doc 1: spec.host: required string",
            ),
            (
                "spec: {host: a}",
                "f.yaml doc 1: spec.requestsPerUnit: required",
            ),
            (
                "spec: {host: a, requestsPerUnit: \"5\"}",
                "f.yaml doc 1: spec.requestsPerUnit: expected an integer, found the string \"5\" (remove the quotes)",
            ),
            (
                "spec: {host: a, requestsPerUnit: 1, burst: 0}",
                "f.yaml doc 1: spec.burst: 0 is not a positive integer",
            ),
            (
                "spec: {host: a, requestsPerUnit: 1, route: 5}",
                "f.yaml doc 1: spec.route: expected a string, found the number 5 (write it in quotes: \"5\")",
            ),
        ];
        for (spec, want) in bad {
            let y = format!(
                "apiVersion: remora.dev/v1alpha1\nkind: RateLimit\nmetadata: {{name: x}}\n{spec}\n"
            );
            assert_eq!(
                parse_file("f.yaml", &y, "default", "cluster.local"),
                Err(want.to_string()),
                "{spec}"
            );
        }
    }
}
