//! Passive outlier detection per destination (`trafficPolicy.outlierDetection`), Envoy's model
//! as Istio configures it:
//! - an endpoint is ejected after `consecutive5xxErrors` 5xx answers in a row (connect failures,
//!   resets and timeouts count as 5xx), or `consecutiveGatewayErrors` 502/503/504 in a row;
//! - it stays out for `baseEjectionTime` × the number of times it has been ejected (capped at
//!   300 s), then returns by itself;
//! - each `interval` during which a returned endpoint is not ejected again lowers that
//!   multiplier by one;
//! - at most `maxEjectionPercent` of the endpoints are out at once (at least one may be);
//! - when fewer than `minHealthPercent` of the endpoints are healthy, ejections are ignored and
//!   every endpoint takes traffic.

use std::time::Duration;

use serde_json::Value;

/// The configuration.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct OutlierConfig {
    /// `None` = disabled (0).
    pub consecutive_5xx: Option<u32>,
    pub consecutive_gateway: Option<u32>,
    #[serde(with = "crate::serde_util::secs")]
    pub interval: Duration,
    #[serde(with = "crate::serde_util::secs")]
    pub base_ejection_time: Duration,
    pub max_ejection_percent: u32,
    pub min_health_percent: u32,
}

/// Envoy's cap on one ejection.
pub const MAX_EJECTION_TIME: Duration = Duration::from_secs(300);

impl Default for OutlierConfig {
    fn default() -> Self {
        OutlierConfig {
            consecutive_5xx: Some(5),
            consecutive_gateway: None,
            interval: Duration::from_secs(10),
            base_ejection_time: Duration::from_secs(30),
            max_ejection_percent: 10,
            min_health_percent: 0,
        }
    }
}

/// Parse an `outlierDetection` object; errors name the field.
pub fn parse(v: &Value, field: &str) -> Result<OutlierConfig, String> {
    let o = v
        .as_object()
        .ok_or_else(|| format!("{field}: expected a mapping, got {v}"))?;
    let mut c = OutlierConfig::default();
    let count = |k: &str| -> Result<Option<u32>, String> {
        match o.get(k) {
            None => Ok(None),
            Some(x) => x
                .as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .map(Some)
                .ok_or_else(|| format!("{field}.{k}: {x} is not a non-negative integer")),
        }
    };
    let dur = |k: &str| -> Result<Option<Duration>, String> {
        match o.get(k) {
            None => Ok(None),
            Some(Value::String(s)) => crate::kinds::parse_duration(s)
                .map(Some)
                .map_err(|e| format!("{field}.{k}: {e}")),
            Some(x) => Err(format!("{field}.{k}: {x} is not a duration string")),
        }
    };
    let pct = |k: &str| -> Result<Option<u32>, String> {
        match count(k)? {
            Some(p) if p > 100 => Err(format!("{field}.{k}: {p} is above 100")),
            p => Ok(p),
        }
    };
    // `consecutiveErrors` is the deprecated name of consecutiveGatewayErrors (Istio < 1.6).
    if let Some(n) = count("consecutive5xxErrors")? {
        c.consecutive_5xx = (n > 0).then_some(n);
    }
    if let Some(n) = count("consecutiveGatewayErrors")?.or(count("consecutiveErrors")?) {
        c.consecutive_gateway = (n > 0).then_some(n);
    }
    if let Some(d) = dur("interval")? {
        if d.is_zero() {
            return Err(format!("{field}.interval: must be above 0"));
        }
        c.interval = d;
    }
    if let Some(d) = dur("baseEjectionTime")? {
        c.base_ejection_time = d;
    }
    if let Some(p) = pct("maxEjectionPercent")? {
        c.max_ejection_percent = p;
    }
    if let Some(p) = pct("minHealthPercent")? {
        c.min_health_percent = p;
    }
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parse_fields_defaults_and_errors() {
        let c = parse(
            &json!({"consecutive5xxErrors": 3, "interval": "5s", "baseEjectionTime": "1m",
                    "maxEjectionPercent": 50, "minHealthPercent": 20, "consecutiveGatewayErrors": 2}),
            "od",
        )
        .unwrap();
        assert_eq!(c.consecutive_5xx, Some(3));
        assert_eq!(c.consecutive_gateway, Some(2));
        assert_eq!(c.interval, Duration::from_secs(5));
        assert_eq!(c.base_ejection_time, Duration::from_secs(60));
        assert_eq!((c.max_ejection_percent, c.min_health_percent), (50, 20));
        assert_eq!(parse(&json!({}), "od").unwrap(), OutlierConfig::default());
        assert_eq!(
            parse(&json!({"consecutive5xxErrors": 0}), "od")
                .unwrap()
                .consecutive_5xx,
            None
        );
        assert_eq!(
            parse(&json!({"maxEjectionPercent": 101}), "x.outlierDetection"),
            Err("x.outlierDetection.maxEjectionPercent: 101 is above 100".into())
        );
        assert_eq!(
            parse(&json!({"interval": "5"}), "od"),
            Err("od.interval: invalid duration \"5\": missing unit (ns, us, ms, s, m, h)".into())
        );
        assert_eq!(
            parse(&json!({"consecutive5xxErrors": -1}), "od"),
            Err("od.consecutive5xxErrors: -1 is not a non-negative integer".into())
        );
    }
}
