//! Prometheus metrics, registered in the default registry (`prometheus::gather()`).

use std::sync::LazyLock;

use prometheus::{
    register_histogram_vec, register_int_counter_vec, Encoder, HistogramVec, IntCounterVec,
    TextEncoder,
};

static REVIEWS: LazyLock<Option<IntCounterVec>> = LazyLock::new(|| {
    register_int_counter_vec!(
        "remora_webhook_reviews_total",
        "Admission reviews answered, by decision (injected, skipped, denied, error).",
        &["decision"]
    )
    .ok()
});

static DURATION: LazyLock<Option<HistogramVec>> = LazyLock::new(|| {
    register_histogram_vec!(
        "remora_webhook_review_duration_seconds",
        "Time to answer one admission review (parse, decide, render, patch, serialize).",
        &["decision"],
        vec![0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5]
    )
    .ok()
});

static RULES_REVIEWS: LazyLock<Option<IntCounterVec>> = LazyLock::new(|| {
    register_int_counter_vec!(
        "remora_webhook_rules_reviews_total",
        "Rules ConfigMap validations answered (POST /validate), by decision (allowed, denied, skipped, error).",
        &["decision"]
    )
    .ok()
});

static RULES_DURATION: LazyLock<Option<HistogramVec>> = LazyLock::new(|| {
    register_histogram_vec!(
        "remora_webhook_rules_review_duration_seconds",
        "Time to answer one rules ConfigMap validation (parse, lint, serialize).",
        &["decision"],
        vec![0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0, 2.5]
    )
    .ok()
});

static RELOADS: LazyLock<Option<IntCounterVec>> = LazyLock::new(|| {
    register_int_counter_vec!(
        "remora_webhook_reloads_total",
        "Reloads of the injector config and the TLS certificate, by what and result.",
        &["what", "result"]
    )
    .ok()
});

static REFUSED: LazyLock<Option<IntCounterVec>> = LazyLock::new(|| {
    register_int_counter_vec!(
        "remora_webhook_refused_total",
        "Requests and connections refused or closed by the server's limits, by reason (busy: 429 past --max-concurrent-reviews; body: over the body limit; timeout: review not done within --review-timeout-seconds; header_timeout: no complete request head in time; idle: idle connection closed; evicted: closed to make room past --max-connections; connections: refused, --max-connections all busy).",
        &["reason"]
    )
    .ok()
});

/// Records one request or connection refused by a server limit.
pub fn refused(reason: &str) {
    if let Some(c) = REFUSED.as_ref() {
        c.with_label_values(&[reason]).inc();
    }
}

/// Records one answered review.
pub fn review(decision: &str, seconds: f64) {
    if let Some(c) = REVIEWS.as_ref() {
        c.with_label_values(&[decision]).inc();
    }
    if let Some(h) = DURATION.as_ref() {
        h.with_label_values(&[decision]).observe(seconds);
    }
}

/// Records one answered rules validation.
pub fn rules_review(decision: &str, seconds: f64) {
    if let Some(c) = RULES_REVIEWS.as_ref() {
        c.with_label_values(&[decision]).inc();
    }
    if let Some(h) = RULES_DURATION.as_ref() {
        h.with_label_values(&[decision]).observe(seconds);
    }
}

pub fn config_reloads(result: &str) {
    if let Some(c) = RELOADS.as_ref() {
        c.with_label_values(&["config", result]).inc();
    }
}

pub fn cert_reloads(result: &str) {
    if let Some(c) = RELOADS.as_ref() {
        c.with_label_values(&["certificate", result]).inc();
    }
}

/// Forces registration so `/metrics` lists every family from the start.
pub fn init() {
    LazyLock::force(&REVIEWS);
    LazyLock::force(&DURATION);
    LazyLock::force(&RELOADS);
    LazyLock::force(&RULES_REVIEWS);
    LazyLock::force(&RULES_DURATION);
    LazyLock::force(&REFUSED);
}

/// The Prometheus text exposition of everything in the default registry.
pub fn render() -> String {
    let mut buf = Vec::new();
    let enc = TextEncoder::new();
    if enc.encode(&prometheus::gather(), &mut buf).is_err() {
        return String::new();
    }
    String::from_utf8(buf).unwrap_or_default()
}
