//! Discovery served by the control plane (`serve --discovery on`): one set of watches of
//! Services, EndpointSlices and Pods' metadata for the whole cluster, streamed to sidecars over
//! `remora.discovery.v1.Discovery/Subscribe` on the CA's TLS port, so that sidecars need no
//! Kubernetes API rights for discovery.
//!
//! - `convert`: Kubernetes objects → the model's wire messages (`remora_model::discovery_api`),
//!   pure.
//! - `cache`: what the control plane holds, the change each watch event makes, what one
//!   subscriber sees of it (per-namespace filter), pure.
//! - `watch`: the three watches (I/O).
//! - `reviews`: the subscribers' TokenReviews, bounded in flight, one per token at once, kept
//!   a short time (reconnect storms cost the API server one review per token).
//! - `serve`: the hub: authentication of a subscriber (its projected token, a TokenReview as
//!   the CA does through `reviews`, the claimed namespace and service account must be the
//!   token's), the cap on
//!   subscribers, bounded per-subscriber queues (a subscriber too slow is dropped and told).
//! - `grpc`: the streaming method, served by the CA's listener (`ca::grpc`).

pub mod cache;
pub mod convert;
pub mod grpc;
pub mod reviews;
pub mod serve;
pub mod watch;

/// A namespace name (DNS-1123 label).
pub fn is_namespace(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

pub(crate) mod metrics {
    use std::sync::LazyLock;

    use prometheus::{register_int_counter_vec, register_int_gauge, IntCounterVec, IntGauge};

    static SUBSCRIBERS: LazyLock<Option<IntGauge>> = LazyLock::new(|| {
        register_int_gauge!(
            "remora_discovery_subscribers",
            "Sidecars subscribed to the control plane's discovery service."
        )
        .ok()
    });

    static REFUSED: LazyLock<Option<IntCounterVec>> = LazyLock::new(|| {
        register_int_counter_vec!(
            "remora_discovery_subscriptions_refused_total",
            "Discovery subscriptions refused, by reason.",
            &["reason"]
        )
        .ok()
    });

    pub fn subscribers(n: usize) {
        if let Some(g) = SUBSCRIBERS.as_ref() {
            g.set(n as i64);
        }
    }

    /// `reason` is one of a fixed set of labels (never from the request).
    pub fn refused(reason: &'static str) {
        if let Some(c) = REFUSED.as_ref() {
            c.with_label_values(&[reason]).inc();
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn namespace_names() {
        for ok in ["shop", "remora-system", "a1"] {
            assert!(super::is_namespace(ok), "{ok}");
        }
        for bad in ["", "Shop", "-a", "a-", "a.b", &"x".repeat(64)] {
            assert!(!super::is_namespace(bad), "{bad}");
        }
    }
}
