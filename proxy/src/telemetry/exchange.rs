//! Istio's metadata exchange between sidecars on HTTP: each side tells the other who it is in
//! `x-envoy-peer-metadata` (a base64 `google.protobuf.Struct` with Istio's keys `NAME`,
//! `NAMESPACE`, `WORKLOAD_NAME`, `CLUSTER_ID`, `LABELS`) and `x-envoy-peer-metadata-id`. The
//! client sends its own on requests to a sidecar over mesh mTLS; the server answers with its
//! own on responses to a request that came over mesh mTLS. The proxy removes both headers
//! before a request or response reaches its app, and believes what they say only on a
//! mutual-TLS hop (`peer::peer_of`).
//!
//! Pure: encode and decode; the HTTP steps move the headers.

use base64::Engine;
use prost::Message;
use prost_types::value::Kind;
use prost_types::{Struct, Value};
use std::collections::BTreeMap;

use super::peer::{self, Peer, PeerFields};
use super::UNKNOWN;
use remora_model::workload::{CANONICAL_NAME_LABEL, CANONICAL_REVISION_LABEL};

/// The header with the peer's metadata.
pub const METADATA: &str = "x-envoy-peer-metadata";
/// The header with the peer's node id.
pub const METADATA_ID: &str = "x-envoy-peer-metadata-id";

/// A header value larger than this is ignored (Istio's are a few hundred bytes).
const MAX_ENCODED: usize = 4096;

fn text(v: &str) -> Value {
    Value {
        kind: Some(Kind::StringValue(v.to_string())),
    }
}

/// This workload's `x-envoy-peer-metadata` value: its pod name, namespace, workload name,
/// cluster id and the labels the metrics read (`app`, `version`, the canonical service and
/// revision).
pub fn encode(own: &Peer, pod_name: &str) -> String {
    let mut labels = BTreeMap::new();
    for (k, v) in [
        ("app", &own.app),
        ("version", &own.version),
        (CANONICAL_NAME_LABEL, &own.canonical_service),
        (CANONICAL_REVISION_LABEL, &own.canonical_revision),
    ] {
        if &**v != UNKNOWN {
            labels.insert(k.to_string(), text(v));
        }
    }
    let mut fields = BTreeMap::new();
    fields.insert("NAME".to_string(), text(pod_name));
    fields.insert("NAMESPACE".to_string(), text(&own.namespace));
    fields.insert("WORKLOAD_NAME".to_string(), text(&own.workload));
    fields.insert("CLUSTER_ID".to_string(), text(&own.cluster));
    fields.insert(
        "LABELS".to_string(),
        Value {
            kind: Some(Kind::StructValue(Struct { fields: labels })),
        },
    );
    base64::engine::general_purpose::STANDARD.encode(Struct { fields }.encode_to_vec())
}

/// This workload's `x-envoy-peer-metadata-id`: Istio's node id
/// `sidecar~<ip>~<pod>.<namespace>~<namespace>.svc.<domain>`.
pub fn encode_id(ip: &str, pod_name: &str, namespace: &str, domain: &str) -> String {
    format!("sidecar~{ip}~{pod_name}.{namespace}~{namespace}.svc.{domain}")
}

/// A value fit for a label: what Kubernetes allows in names and label values (at most 253
/// bytes of letters, digits, `-`, `_`, `.`), else `None`.
fn label_value(v: &str) -> Option<&str> {
    (!v.is_empty()
        && v.len() <= 253
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.')))
    .then_some(v)
}

/// The peer a `x-envoy-peer-metadata` value describes (principal `unknown`: the caller knows
/// it from the certificate), or `None` when it is not a well-formed Struct. A field that is
/// missing or not a plain name is `unknown`.
pub fn decode(value: &str) -> Option<Peer> {
    if value.len() > MAX_ENCODED {
        return None;
    }
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(value.trim())
        .ok()?;
    let s = Struct::decode(bytes.as_slice()).ok()?;
    let get = |f: &Struct, k: &str| -> Option<String> {
        match f.fields.get(k).and_then(|v| v.kind.as_ref()) {
            Some(Kind::StringValue(v)) => label_value(v).map(str::to_string),
            _ => None,
        }
    };
    let labels: BTreeMap<String, String> =
        match s.fields.get("LABELS").and_then(|v| v.kind.as_ref()) {
            Some(Kind::StructValue(l)) => [
                "app",
                "app.kubernetes.io/name",
                "version",
                "app.kubernetes.io/version",
                CANONICAL_NAME_LABEL,
                CANONICAL_REVISION_LABEL,
            ]
            .iter()
            .filter_map(|k| get(l, k).map(|v| (k.to_string(), v)))
            .collect(),
            _ => BTreeMap::new(),
        };
    let workload = get(&s, "WORKLOAD_NAME");
    let namespace = get(&s, "NAMESPACE");
    let cluster = get(&s, "CLUSTER_ID");
    let own = peer::own(
        workload.as_deref().unwrap_or(UNKNOWN),
        namespace.as_deref().unwrap_or(UNKNOWN),
        &labels,
        UNKNOWN,
        cluster.as_deref().unwrap_or(UNKNOWN),
    );
    if workload.is_none() && namespace.is_none() && labels.is_empty() {
        return None;
    }
    Some(Peer::new(&PeerFields {
        // Without labels, `own` names the canonical service after the workload; a peer that
        // named no workload has none.
        canonical_service: if workload.is_none() && labels.is_empty() {
            UNKNOWN
        } else {
            &own.canonical_service
        },
        ..own.fields()
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reviews() -> Peer {
        peer::own(
            "reviews-v2",
            "shop",
            &[("app", "reviews"), ("version", "v2")]
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            "spiffe://cluster.local/ns/shop/sa/reviews",
            "Kubernetes",
        )
    }

    #[test]
    fn round_trip_keeps_identity_but_not_the_principal() {
        let p = reviews();
        let got = decode(&encode(&p, "reviews-v2-5f6d-abcde")).unwrap();
        assert_eq!(got, p.with_principal(UNKNOWN));
        assert_eq!(
            encode_id("10.0.0.7", "reviews-v2-5f6d-abcde", "shop", "cluster.local"),
            "sidecar~10.0.0.7~reviews-v2-5f6d-abcde.shop~shop.svc.cluster.local"
        );
    }

    #[test]
    fn what_is_not_a_plain_name_is_unknown_and_garbage_is_nothing() {
        let mut fields = BTreeMap::new();
        fields.insert("WORKLOAD_NAME".to_string(), text("evil\"} 1\nx{"));
        fields.insert("NAMESPACE".to_string(), text("shop"));
        fields.insert("CLUSTER_ID".to_string(), text(&"k".repeat(300)));
        let v = base64::engine::general_purpose::STANDARD.encode(Struct { fields }.encode_to_vec());
        let got = decode(&v).unwrap();
        assert_eq!(
            (
                &*got.workload,
                &*got.namespace,
                &*got.cluster,
                &*got.canonical_service
            ),
            ("unknown", "shop", "unknown", "unknown")
        );
        for bad in ["", "!!!", "aGVsbG8=", &"A".repeat(MAX_ENCODED + 4)] {
            assert_eq!(decode(bad), None, "{bad:.20}");
        }
    }
}
