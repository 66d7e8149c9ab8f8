//! Metrics merging (Istio's `enablePrometheusMerge`): the admin port's `/stats/prometheus`
//! serves the proxy's metrics followed by the app's own, scraped from the app on loopback at the
//! port and path its `prometheus.io/*` annotations had. The injector moves those annotations
//! into `ISTIO_PROMETHEUS_ANNOTATIONS` and points the pod's at `:15020/stats/prometheus`, so one
//! scrape returns both. The proxy-only port (15090) never includes the app's.
//!
//! An app that does not answer (or answers badly, slowly, or too much) costs only its own part:
//! the proxy's metrics are served as always, `remora_app_metrics_scrape_failures_total{reason}`
//! counts it, and a warning is logged at most once a minute.

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use prometheus::{IntCounterVec, Opts, Registry};
use serde::Deserialize;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The environment variable the injector sets (Istio's name).
pub const ENV: &str = "ISTIO_PROMETHEUS_ANNOTATIONS";
/// The whole scrape of the app, connect to last byte.
pub const TIMEOUT: Duration = Duration::from_secs(5);
/// The most of the app's metrics text served (bigger answers are dropped and counted).
pub const MAX_BYTES: usize = 16 << 20;
/// Why a scrape of the app failed: the `reason` label's whole set.
pub const REASONS: [&str; 5] = ["connect", "timeout", "status", "too_large", "invalid"];
const WARN_EVERY: Duration = Duration::from_secs(60);

/// Where the app's metrics are: its `prometheus.io/port` and `prometheus.io/path`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppScrape {
    pub port: u16,
    pub path: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Annotations {
    scrape: Option<String>,
    port: Option<String>,
    path: Option<String>,
}

impl AppScrape {
    /// Reads `ISTIO_PROMETHEUS_ANNOTATIONS` (a JSON object of strings `scrape`, `port`, `path`).
    /// `Ok(None)`: the app is not scraped (`scrape` other than `true`). The port defaults to 80
    /// and the path to `/metrics`, as Prometheus' own defaults for those annotations.
    pub fn parse(text: &str) -> Result<Option<AppScrape>, String> {
        let a: Annotations = serde_json::from_str(text)
            .map_err(|e| format!("{ENV}: invalid value {text:?}: {e}"))?;
        if !a
            .scrape
            .as_deref()
            .is_some_and(|s| s.eq_ignore_ascii_case("true"))
        {
            return Ok(None);
        }
        let port = match a.port.as_deref() {
            None | Some("") => 80,
            Some(p) => match p.parse::<u16>() {
                Ok(n) if n > 0 => n,
                _ => {
                    return Err(format!(
                        "{ENV}: invalid port {p:?}: not a port number (1-65535)"
                    ))
                }
            },
        };
        let path = match a.path.as_deref() {
            None | Some("") => "/metrics".to_string(),
            Some(p) if p.starts_with('/') && !p.chars().any(|c| c.is_whitespace()) => p.to_string(),
            Some(p) => {
                return Err(format!(
                    "{ENV}: invalid path {p:?}: must start with / and have no spaces"
                ))
            }
        };
        Ok(Some(AppScrape { port, path }))
    }
}

/// The scraper of the app's metrics, with its failure counter.
pub struct AppMetrics {
    scrape: AppScrape,
    failures: IntCounterVec,
    last_warning: Mutex<Option<Instant>>,
}

impl AppMetrics {
    /// Registers `remora_app_metrics_scrape_failures_total` in `registry`.
    pub fn new(scrape: AppScrape, registry: &Registry) -> prometheus::Result<AppMetrics> {
        let failures = IntCounterVec::new(
            Opts::new(
                "remora_app_metrics_scrape_failures_total",
                "Scrapes of the app's own metrics (merged into /stats/prometheus on the admin \
                 port) that failed, by reason",
            ),
            &["reason"],
        )?;
        registry.register(Box::new(failures.clone()))?;
        for r in REASONS {
            failures.with_label_values(&[r]);
        }
        Ok(AppMetrics {
            scrape,
            failures,
            last_warning: Mutex::new(None),
        })
    }

    /// Where the app is scraped.
    pub fn scrape(&self) -> &AppScrape {
        &self.scrape
    }

    /// The app's metrics text (OpenMetrics' `# EOF` left out), or `None` after counting and
    /// (at most once a minute) logging why not.
    pub async fn fetch(&self) -> Option<String> {
        match tokio::time::timeout(TIMEOUT, fetch_text(&self.scrape)).await {
            Ok(Ok(text)) => Some(text),
            Ok(Err((reason, why))) => {
                self.failed(reason, &why);
                None
            }
            Err(_) => {
                self.failed("timeout", &format!("no whole answer within {TIMEOUT:?}"));
                None
            }
        }
    }

    fn failed(&self, reason: &'static str, why: &str) {
        self.failures.with_label_values(&[reason]).inc();
        let now = Instant::now();
        let Ok(mut last) = self.last_warning.lock() else {
            return;
        };
        if last.is_none_or(|t| now.duration_since(t) >= WARN_EVERY) {
            *last = Some(now);
            tracing::warn!(
                port = self.scrape.port,
                path = %self.scrape.path,
                reason,
                "the app's metrics were left out of /stats/prometheus: {why} (serving the proxy's \
                 alone; next such warning in a minute at the earliest)"
            );
        }
    }
}

async fn fetch_text(s: &AppScrape) -> Result<String, (&'static str, String)> {
    let stream = tokio::net::TcpStream::connect(("127.0.0.1", s.port))
        .await
        .map_err(|e| ("connect", format!("connect to 127.0.0.1:{}: {e}", s.port)))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| ("connect", format!("HTTP handshake: {e}")))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let req = http::Request::builder()
        .method("GET")
        .uri(&s.path)
        .header("host", format!("127.0.0.1:{}", s.port))
        .header("accept", "text/plain;version=0.0.4;q=1,*/*;q=0.1")
        .header("user-agent", "remora-proxy (metrics merging)")
        .body(Empty::<Bytes>::new())
        .map_err(|e| ("invalid", format!("request for {:?}: {e}", s.path)))?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| ("connect", format!("request: {e}")))?;
    if !resp.status().is_success() {
        return Err(("status", format!("the app answered {}", resp.status())));
    }
    let body = Limited::new(resp.into_body(), MAX_BYTES)
        .collect()
        .await
        .map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                ("too_large", format!("more than {MAX_BYTES} bytes"))
            } else {
                ("connect", format!("reading the answer: {e}"))
            }
        })?
        .to_bytes();
    let text = String::from_utf8(body.to_vec())
        .map_err(|_| ("invalid", "the answer is not UTF-8 text".to_string()))?;
    Ok(without_eof(text))
}

/// The app's text without OpenMetrics' closing `# EOF` line (it would end the merged document
/// for a parser that reads OpenMetrics).
fn without_eof(mut text: String) -> String {
    let trimmed = text.trim_end();
    if let Some(head) = trimmed.strip_suffix("# EOF") {
        if head.is_empty() || head.ends_with('\n') {
            text.truncate(head.len());
        }
    }
    text
}

/// The proxy's metrics followed by the app's, one document.
pub fn merged(proxy: String, app: Option<String>) -> String {
    let Some(app) = app.filter(|a| !a.trim().is_empty()) else {
        return proxy;
    };
    let mut out = proxy;
    if !out.is_empty() && !out.ends_with('\n') {
        out.push('\n');
    }
    out.push_str(&app);
    if !out.ends_with('\n') {
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn annotations_are_read_as_the_injector_writes_them() {
        let ok = |t: &str| AppScrape::parse(t).unwrap();
        assert_eq!(
            ok(r#"{"scrape":"true","port":"9000","path":"/m"}"#),
            Some(AppScrape {
                port: 9000,
                path: "/m".into()
            })
        );
        assert_eq!(
            ok(r#"{"scrape":"True","port":"8080"}"#),
            Some(AppScrape {
                port: 8080,
                path: "/metrics".into()
            })
        );
        assert_eq!(
            ok(r#"{"scrape":"true"}"#),
            Some(AppScrape {
                port: 80,
                path: "/metrics".into()
            })
        );
        assert_eq!(ok(r#"{"scrape":"false","port":"9000"}"#), None);
        assert_eq!(ok(r#"{}"#), None);
        for (bad, field) in [
            (r#"{"scrape":"true","port":"x"}"#, "invalid port \"x\""),
            (r#"{"scrape":"true","port":"0"}"#, "invalid port \"0\""),
            (r#"{"scrape":"true","port":"70000"}"#, "invalid port"),
            (r#"{"scrape":"true","path":"metrics"}"#, "invalid path"),
            (r#"{"scrape":"true","path":"/a b"}"#, "invalid path"),
            (r#"{"scrape":"true","other":"1"}"#, "unknown field"),
            ("not json", "invalid value"),
        ] {
            let e = AppScrape::parse(bad).unwrap_err();
            assert!(e.contains(field), "{bad}: {e}");
            assert!(e.starts_with(ENV), "{e}");
            assert!(!e.contains('\n'), "{e}");
        }
    }

    #[test]
    fn merging_keeps_both_documents_whole() {
        assert_eq!(merged("a 1\n".into(), None), "a 1\n");
        assert_eq!(merged("a 1\n".into(), Some("  \n".into())), "a 1\n");
        assert_eq!(merged("a 1\n".into(), Some("b 2".into())), "a 1\nb 2\n");
        assert_eq!(merged("a 1".into(), Some("b 2\n".into())), "a 1\nb 2\n");
        assert_eq!(without_eof("b 2\n# EOF\n".into()), "b 2\n");
        assert_eq!(without_eof("b 2\n# EOF".into()), "b 2\n");
        assert_eq!(without_eof("# EOF\n".into()), "");
        // Not a line of its own: kept.
        assert_eq!(without_eof("b 2 # EOF\n".into()), "b 2 # EOF\n");
    }
}
