//! Metrics merging with the real proxy binary: with `ISTIO_PROMETHEUS_ANNOTATIONS` (as the
//! injector sets it) the admin port's `/stats/prometheus` serves the proxy's metrics and the
//! app's own from a real HTTP server on loopback; the proxy-only port never adds the app's; an
//! app that stops answering, answers 500 or hangs costs only its own part (counted by reason);
//! a malformed value stops the start with one line.

mod common;

use common::*;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// An app serving `/m` as Prometheus text; `mode`: 0 answers, 1 answers 500, 2 never answers.
fn spawn_app(mode: Arc<AtomicU32>) -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for s in l.incoming().take(200) {
            let Ok(mut s) = s else { continue };
            let mode = mode.clone();
            std::thread::spawn(move || {
                let mut r = BufReader::new(s.try_clone().unwrap());
                let mut line = String::new();
                let _ = r.read_line(&mut line);
                loop {
                    let mut h = String::new();
                    if r.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
                        break;
                    }
                }
                let body = match mode.load(Ordering::SeqCst) {
                    0 if line.starts_with("GET /m ") => {
                        "# HELP app_orders_total Orders.\n# TYPE app_orders_total counter\napp_orders_total{kind=\"book\"} 42\n# EOF\n"
                            .to_string()
                    }
                    0 => {
                        let _ = s.write_all(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
                        return;
                    }
                    1 => {
                        let _ = s.write_all(b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
                        return;
                    }
                    _ => {
                        // Hang past the proxy's scrape timeout, bounded.
                        std::thread::sleep(Duration::from_secs(8));
                        return;
                    }
                };
                let _ = write!(
                    s,
                    "HTTP/1.1 200 OK\r\ncontent-type: application/openmetrics-text\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let mut rest = Vec::new();
                let _ = s.read_to_end(&mut rest);
            });
        }
    });
    port
}

fn admin_metrics(p: &ProxyProc) -> String {
    let r = http_get(p.ports.admin_addr(), "/stats/prometheus", &[]).expect("admin metrics");
    assert_eq!(r.status, 200, "{}", r.body_text());
    r.body_text()
}

#[test]
fn the_admin_port_serves_the_proxy_and_the_app_together() {
    let mode = Arc::new(AtomicU32::new(0));
    let app = spawn_app(mode.clone());
    let rules = RulesDir::new(&[]);
    let mut o = ProxyOpts::new(rules.path());
    o.env.push((
        "ISTIO_PROMETHEUS_ANNOTATIONS".into(),
        format!(r#"{{"scrape":"true","port":"{app}","path":"/m"}}"#),
    ));
    let mut p = ProxyProc::start(o);
    p.wait_ready();
    p.wait_stderr("metrics merging");

    let merged = admin_metrics(&p);
    assert!(
        merged.contains("app_orders_total{kind=\"book\"} 42"),
        "{merged}"
    );
    assert!(merged.contains("remora_config_generation"), "{merged}");
    assert!(
        !merged.contains("# EOF"),
        "OpenMetrics' end marker must not end the merged text"
    );
    // Every line parses as Prometheus text: a comment, a blank, or `name{labels} value`.
    for line in merged
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let value = line.rsplit(' ').next().unwrap();
        assert!(value.parse::<f64>().is_ok(), "not a sample line: {line:?}");
    }
    // The proxy-only port stays the proxy's.
    let own = p.metrics();
    assert!(!own.contains("app_orders_total"), "{own}");
    assert!(own.contains("remora_config_generation"));

    // The app answers 500, then hangs: the proxy's metrics are still served, each failure
    // counted by reason.
    mode.store(1, Ordering::SeqCst);
    let text = admin_metrics(&p);
    assert!(!text.contains("app_orders_total"), "{text}");
    assert_eq!(
        metric_value(
            &text,
            "remora_app_metrics_scrape_failures_total",
            &["reason=\"status\""]
        ),
        1.0,
        "{text}"
    );
    p.wait_stderr("the app's metrics were left out of /stats/prometheus");
    mode.store(2, Ordering::SeqCst);
    let t0 = std::time::Instant::now();
    let text = admin_metrics(&p);
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_secs(4),
        "answered before the scrape timeout: {took:?}"
    );
    assert!(
        took < Duration::from_secs(8),
        "waited for the hung app: {took:?}"
    );
    assert_eq!(
        metric_value(
            &text,
            "remora_app_metrics_scrape_failures_total",
            &["reason=\"timeout\""]
        ),
        1.0,
        "{text}"
    );
    mode.store(0, Ordering::SeqCst);
    assert!(admin_metrics(&p).contains("app_orders_total{kind=\"book\"} 42"));
}

#[test]
fn an_app_that_is_not_there_costs_only_its_part() {
    let gone = DeadPort::new();
    let rules = RulesDir::new(&[]);
    let mut o = ProxyOpts::new(rules.path());
    o.env.push((
        "ISTIO_PROMETHEUS_ANNOTATIONS".into(),
        format!(r#"{{"scrape":"true","port":"{}"}}"#, gone.port),
    ));
    let mut p = ProxyProc::start(o);
    p.wait_ready();
    let text = admin_metrics(&p);
    assert!(text.contains("remora_config_generation"), "{text}");
    assert_eq!(
        metric_value(
            &text,
            "remora_app_metrics_scrape_failures_total",
            &["reason=\"connect\""]
        ),
        1.0,
        "{text}"
    );
}

#[test]
fn a_malformed_setting_stops_the_start_with_one_line() {
    let rules = RulesDir::new(&[]);
    let mut o = ProxyOpts::new(rules.path());
    o.env.push((
        "ISTIO_PROMETHEUS_ANNOTATIONS".into(),
        r#"{"scrape":"true","port":"nine"}"#.into(),
    ));
    let mut p = ProxyProc::start(o);
    let st = p.child.wait().unwrap();
    assert!(!st.success());
    std::thread::sleep(Duration::from_millis(200));
    let err = p.stderr_text();
    let line = err
        .lines()
        .find(|l| l.contains("ISTIO_PROMETHEUS_ANNOTATIONS"))
        .unwrap_or_else(|| panic!("no line names the setting:\n{err}"));
    assert!(
        line.contains("invalid port \\\"nine\\\"") || line.contains("invalid port \"nine\""),
        "{line}"
    );
}
