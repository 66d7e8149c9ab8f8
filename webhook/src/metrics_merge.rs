//! Prometheus metrics merging, as Istio's injector does it: the pod's `prometheus.io/*` scrape
//! annotations are pointed at the proxy's merged endpoint (`:15020/stats/prometheus`), and the
//! app's own scrape settings travel to the proxy in `ISTIO_PROMETHEUS_ANNOTATIONS`, so one scrape
//! returns the proxy's metrics and the app's together. Pure: annotations in, a plan out.

use serde_json::{json, Map, Value};
use std::collections::BTreeMap;

use crate::annotations::{MERGE_METRICS, PROM_PATH, PROM_PORT, PROM_SCRAPE};

/// The proxy's environment variable with the app's own scrape settings (Istio's name), a JSON
/// object with the string fields `scrape`, `port` and `path` the app's annotations had.
pub const APP_SCRAPE_ENV: &str = "ISTIO_PROMETHEUS_ANNOTATIONS";
/// The port of the merged endpoint (the proxy's admin port).
pub const MERGED_PORT: u16 = 15020;
/// The path of the merged endpoint.
pub const MERGED_PATH: &str = "/stats/prometheus";
/// The port of the proxy's own metrics (no app metrics), used when merging is off.
pub const PROXY_ONLY_PORT: u16 = 15090;

/// What the injector writes for the pod's metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The scrape annotations to set (none: leave the pod's as they are).
    pub annotations: BTreeMap<&'static str, String>,
    /// The proxy's `ISTIO_PROMETHEUS_ANNOTATIONS` value, when the app has metrics of its own.
    pub app_scrape: Option<String>,
    /// Why, in one line (the webhook's log and `check-inject`).
    pub reason: String,
}

/// The plan for a pod with `annotations`, when merging is `enabled` in the injector config;
/// `previous_env` is `ISTIO_PROMETHEUS_ANNOTATIONS` of a sidecar an earlier injection put in the
/// pod (re-injection keeps the app's settings it recorded instead of reading back our own).
pub fn plan(
    annotations: &BTreeMap<String, String>,
    enabled: bool,
    previous_env: Option<&str>,
) -> Plan {
    let get = |k: &str| annotations.get(k).map(String::as_str);
    let opted_out = get(MERGE_METRICS).is_some_and(|v| v.eq_ignore_ascii_case("false"));
    if get(PROM_SCRAPE).is_some_and(|v| v.eq_ignore_ascii_case("false")) {
        return Plan {
            annotations: BTreeMap::new(),
            app_scrape: None,
            reason: format!("{PROM_SCRAPE}: \"false\" on the pod: not scraped, nothing merged"),
        };
    }
    if !enabled || opted_out {
        let why = if opted_out {
            format!("{MERGE_METRICS}: \"false\" on the pod")
        } else {
            "enablePrometheusMerge: false in the injector config".to_string()
        };
        if get(PROM_SCRAPE).is_some() {
            return Plan {
                annotations: BTreeMap::new(),
                app_scrape: None,
                reason: format!("{why}: the app's scrape annotations are kept as they are"),
            };
        }
        return Plan {
            annotations: scrape_at(PROXY_ONLY_PORT),
            app_scrape: None,
            reason: format!(
                "{why}: scraped at :{PROXY_ONLY_PORT}{MERGED_PATH} (proxy metrics only)"
            ),
        };
    }
    let ours = get(PROM_PORT) == Some(&MERGED_PORT.to_string())
        && get(PROM_PATH) == Some(MERGED_PATH)
        && get(PROM_SCRAPE).is_some();
    let app_scrape = if ours {
        previous_env.map(str::to_string)
    } else if get(PROM_SCRAPE).is_some() {
        let mut app = Map::new();
        for (field, key) in [
            ("scrape", PROM_SCRAPE),
            ("port", PROM_PORT),
            ("path", PROM_PATH),
        ] {
            if let Some(v) = get(key) {
                app.insert(field.to_string(), json!(v));
            }
        }
        Some(Value::Object(app).to_string())
    } else {
        None
    };
    let reason = match &app_scrape {
        Some(app) => format!(
            "metrics merged: scraped at :{MERGED_PORT}{MERGED_PATH}, which adds the app's {app}"
        ),
        None => format!(
            "metrics merged: scraped at :{MERGED_PORT}{MERGED_PATH} (the app declares no metrics)"
        ),
    };
    Plan {
        annotations: scrape_at(MERGED_PORT),
        app_scrape,
        reason,
    }
}

fn scrape_at(port: u16) -> BTreeMap<&'static str, String> {
    BTreeMap::from([
        (PROM_SCRAPE, "true".to_string()),
        (PROM_PORT, port.to_string()),
        (PROM_PATH, MERGED_PATH.to_string()),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ann(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// Annotations, merging enabled, the previous env; the port and the env expected.
    type Case<'a> = (
        &'a [(&'a str, &'a str)],
        bool,
        Option<&'a str>,
        Option<u16>,
        Option<&'a str>,
    );

    #[test]
    fn the_apps_scrape_settings_move_to_the_proxy() {
        let cases: &[Case] = &[
            // No metrics of the app's own: the merged endpoint, nothing to add.
            (&[], true, None, Some(15020), None),
            // The app's settings are recorded, the pod points at the merged endpoint.
            (
                &[
                    (PROM_SCRAPE, "true"),
                    (PROM_PORT, "9000"),
                    (PROM_PATH, "/m"),
                ],
                true,
                None,
                Some(15020),
                Some(r#"{"path":"/m","port":"9000","scrape":"true"}"#),
            ),
            // Only the port given: the proxy defaults the path.
            (
                &[(PROM_SCRAPE, "true"), (PROM_PORT, "8080")],
                true,
                None,
                Some(15020),
                Some(r#"{"port":"8080","scrape":"true"}"#),
            ),
            // Re-injection: our own annotations, the recorded settings kept.
            (
                &[
                    (PROM_SCRAPE, "true"),
                    (PROM_PORT, "15020"),
                    (PROM_PATH, "/stats/prometheus"),
                ],
                true,
                Some(r#"{"port":"9000","scrape":"true"}"#),
                Some(15020),
                Some(r#"{"port":"9000","scrape":"true"}"#),
            ),
            // Not scraped at all: left alone.
            (&[(PROM_SCRAPE, "false")], true, None, None, None),
            // Merging off: proxy-only port when the app has none, the app's kept when it has.
            (&[], false, None, Some(15090), None),
            (
                &[(PROM_SCRAPE, "true"), (PROM_PORT, "9000")],
                false,
                None,
                None,
                None,
            ),
            (
                &[
                    (MERGE_METRICS, "false"),
                    (PROM_SCRAPE, "true"),
                    (PROM_PORT, "9000"),
                ],
                true,
                None,
                None,
                None,
            ),
            (&[(MERGE_METRICS, "False")], true, None, Some(15090), None),
        ];
        for (pairs, enabled, prev, port, app) in cases {
            let p = plan(&ann(pairs), *enabled, *prev);
            assert_eq!(
                p.annotations
                    .get(PROM_PORT)
                    .map(|v| v.parse::<u16>().unwrap()),
                *port,
                "{pairs:?} enabled={enabled}: {}",
                p.reason
            );
            if port.is_some() {
                assert_eq!(p.annotations[PROM_PATH], MERGED_PATH);
                assert_eq!(p.annotations[PROM_SCRAPE], "true");
            }
            assert_eq!(p.app_scrape.as_deref(), *app, "{pairs:?}");
        }
    }

    #[test]
    fn the_reason_says_what_was_decided() {
        let p = plan(
            &ann(&[(PROM_SCRAPE, "true"), (PROM_PORT, "9000")]),
            true,
            None,
        );
        assert!(p.reason.contains(":15020/stats/prometheus"), "{}", p.reason);
        assert!(p.reason.contains("9000"), "{}", p.reason);
        let p = plan(&ann(&[(MERGE_METRICS, "false")]), true, None);
        assert!(p.reason.contains(MERGE_METRICS), "{}", p.reason);
    }
}
