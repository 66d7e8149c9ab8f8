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
//!
//! `OutlierDetectionSpec` is Istio's shape, decoded with the rule; `OutlierConfig` is what it
//! means.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::serde_util::IstioShape;
use crate::typed::{Dur, Int};

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

/// `outlierDetection` as Istio writes it; `OutlierConfig` is what it means.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OutlierDetectionSpec {
    #[serde(
        rename = "consecutive5xxErrors",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub consecutive_5xx_errors: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consecutive_gateway_errors: Option<u32>,
    /// The deprecated name of `consecutiveGatewayErrors` (Istio < 1.6).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consecutive_errors: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<Dur>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_ejection_time: Option<Dur>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_ejection_percent: Option<Int<0, 100>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_health_percent: Option<Int<0, 100>>,
    /// Local-origin failures are counted with the others: accepted, not applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split_external_local_origin_errors: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consecutive_local_origin_failures: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outlier_detection_http_error_codes: Option<Value>,
}

impl IstioShape for OutlierConfig {
    type Spec = OutlierDetectionSpec;

    fn from_spec(spec: &OutlierDetectionSpec) -> Result<OutlierConfig, String> {
        let mut c = OutlierConfig::default();
        if let Some(n) = spec.consecutive_5xx_errors {
            c.consecutive_5xx = (n > 0).then_some(n);
        }
        if let Some(n) = spec.consecutive_gateway_errors.or(spec.consecutive_errors) {
            c.consecutive_gateway = (n > 0).then_some(n);
        }
        if let Some(d) = spec.interval {
            if d.0.is_zero() {
                return Err("interval must be above 0".to_string());
            }
            c.interval = d.0;
        }
        if let Some(d) = spec.base_ejection_time {
            c.base_ejection_time = d.0;
        }
        if let Some(p) = spec.max_ejection_percent {
            c.max_ejection_percent = p.as_u32();
        }
        if let Some(p) = spec.min_health_percent {
            c.min_health_percent = p.as_u32();
        }
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: Value) -> Result<OutlierConfig, String> {
        let tp = json!({ "outlierDetection": v });
        crate::typed::decode::<crate::policy::traffic::TrafficPolicySpec>(&tp, "x", &mut Vec::new())
            .map(|t| t.outlier_detection.map(|s| s.value).unwrap_or_default())
            .map_err(|e| e.to_string())
    }

    #[test]
    fn parse_fields_defaults_and_errors() {
        let c = parse(
            json!({"consecutive5xxErrors": 3, "interval": "5s", "baseEjectionTime": "1m",
                    "maxEjectionPercent": 50, "minHealthPercent": 20, "consecutiveGatewayErrors": 2}),
        )
        .unwrap();
        assert_eq!(c.consecutive_5xx, Some(3));
        assert_eq!(c.consecutive_gateway, Some(2));
        assert_eq!(c.interval, Duration::from_secs(5));
        assert_eq!(c.base_ejection_time, Duration::from_secs(60));
        assert_eq!((c.max_ejection_percent, c.min_health_percent), (50, 20));
        assert_eq!(parse(json!({})).unwrap(), OutlierConfig::default());
        let off = parse(json!({"consecutive5xxErrors": 0})).unwrap();
        assert_eq!(off.consecutive_5xx, None);
        assert_eq!(
            parse(json!({"consecutiveErrors": 4}))
                .unwrap()
                .consecutive_gateway,
            Some(4)
        );
        assert_eq!(
            parse(json!({"maxEjectionPercent": 101})),
            Err("x.outlierDetection.maxEjectionPercent: 101 is out of range 0..=100".into())
        );
        assert_eq!(
            parse(json!({"interval": "5"})),
            Err("x.outlierDetection.interval: invalid duration \"5\": missing unit (ns, us, ms, s, m, h)".into())
        );
        assert_eq!(
            parse(json!({"interval": "0s"})),
            Err("x.outlierDetection: interval must be above 0".into())
        );
        assert_eq!(
            parse(json!({"consecutive5xxErrors": -1})),
            Err("x.outlierDetection.consecutive5xxErrors: -1 is not a non-negative integer".into())
        );
    }
}
