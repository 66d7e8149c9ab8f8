//! Mutual TLS between sidecars, Istio's way.
//!
//! - `decide` (here, pure): does a connection to an upstream go as mesh mTLS?
//! - `expect`: who its server must be (the destination's service accounts), pure.
//! - `outbound`: originate it (Pingora's custom connect for HTTP, a direct call for TCP).
//! - `pooled`: an outbound mTLS connection handed to Pingora so that Pingora pools it.
//! - `inbound`: terminate it on the capture listener, and remember the client's identity.
//! - `socket`: a terminated inbound TLS stream handed to Pingora as a plain stream.

pub mod expect;
pub mod inbound;
pub mod outbound;
pub mod pooled;
pub mod socket;

use remora_model::policy::traffic::TlsKind;

/// The label Istio's injector puts on pods with a sidecar; clients originate mTLS to them.
pub const TLS_MODE_LABEL: &str = "security.istio.io/tlsMode";

/// How a connection to an upstream goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Upstream {
    /// Plain text (or the app's own bytes as they are).
    Plain,
    /// Mesh mTLS with the workload certificate.
    Mesh,
    /// The DestinationRule's own TLS origination (`SIMPLE`, `MUTUAL`).
    Origination,
}

/// Why a decision was made (for logs).
pub fn decide(
    tls_set: bool,
    mode: TlsKind,
    endpoint_meshed: bool,
    have_identity: bool,
) -> (Upstream, &'static str) {
    match (tls_set, mode) {
        (true, TlsKind::Simple | TlsKind::Mutual) => {
            (Upstream::Origination, "DestinationRule tls originates TLS")
        }
        (true, TlsKind::IstioMutual) if have_identity => {
            (Upstream::Mesh, "DestinationRule tls ISTIO_MUTUAL")
        }
        (true, TlsKind::IstioMutual) => (
            Upstream::Plain,
            "ISTIO_MUTUAL but the proxy has no workload identity (--ca-address off)",
        ),
        (true, TlsKind::Disable) => (Upstream::Plain, "DestinationRule tls DISABLE"),
        (false, _) if endpoint_meshed && have_identity => (
            Upstream::Mesh,
            "automatic mTLS: the endpoint has a sidecar (security.istio.io/tlsMode=istio)",
        ),
        (false, _) if endpoint_meshed => (Upstream::Plain, "the proxy has no workload identity"),
        (false, _) => (Upstream::Plain, "the endpoint has no sidecar"),
    }
}

/// Does an endpoint with these labels have a sidecar (Istio's `tlsMode: istio` label)?
pub fn endpoint_meshed(labels: &std::collections::BTreeMap<String, String>) -> bool {
    labels.get(TLS_MODE_LABEL).is_some_and(|v| v == "istio")
}

#[cfg(test)]
mod tests {
    use super::*;
    use TlsKind::*;
    use Upstream::*;

    #[test]
    fn decision_table() {
        let cases: &[(bool, TlsKind, bool, bool, Upstream)] = &[
            // No tls setting: automatic mTLS to sidecar endpoints when we have an identity.
            (false, Disable, true, true, Mesh),
            (false, Disable, false, true, Plain),
            (false, Disable, true, false, Plain),
            // Explicit settings win over the endpoint.
            (true, Disable, true, true, Plain),
            (true, IstioMutual, false, true, Mesh),
            (true, IstioMutual, true, false, Plain),
            (true, Simple, true, true, Origination),
            (true, Mutual, false, false, Origination),
        ];
        for (set, mode, meshed, id, want) in cases {
            assert_eq!(
                decide(*set, *mode, *meshed, *id).0,
                *want,
                "{set} {mode:?} {meshed} {id}"
            );
        }
    }

    #[test]
    fn meshed_label() {
        let mut l = std::collections::BTreeMap::new();
        assert!(!endpoint_meshed(&l));
        l.insert(TLS_MODE_LABEL.to_string(), "disabled".to_string());
        assert!(!endpoint_meshed(&l));
        l.insert(TLS_MODE_LABEL.to_string(), "istio".to_string());
        assert!(endpoint_meshed(&l));
    }
}
