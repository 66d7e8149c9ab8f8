//! The wire messages of remora's discovery service (`remora.discovery.v1.Discovery/Subscribe`),
//! which the control plane serves on the CA's TLS port and the sidecar subscribes to instead of
//! watching the Kubernetes API itself. Written out with prost's derive (no protoc, no I/O).
//!
//! The exchange is a bidirectional stream, acknowledged as xDS is: the proxy's first
//! [`SubscribeRequest`] names who it is and which namespaces it needs; the control plane answers
//! with a full snapshot ([`DiscoveryResponse::full`]), then deltas, each carrying a version; the
//! proxy sends a request carrying the version it applied after each (`ack_version`).
//!
//! The objects are what routing and telemetry need of Services, EndpointSlices and Pods'
//! metadata, as the proxy's direct mode keeps them: no pod specs, no environment.

use std::collections::BTreeMap;

/// The gRPC service name.
pub const SERVICE: &str = "remora.discovery.v1.Discovery";
/// The one method's path.
pub const SUBSCRIBE: &str = "/remora.discovery.v1.Discovery/Subscribe";

/// The proxy's request: the first names the subscriber and what it needs; later ones
/// acknowledge a version (only `ack_version` is read of them: a subscription's namespaces do
/// not change, a proxy needing others subscribes again).
#[derive(Clone, PartialEq, prost::Message)]
pub struct SubscribeRequest {
    /// The proxy's namespace (must be its token's).
    #[prost(string, tag = "1")]
    pub namespace: String,
    /// The proxy's service account (must be its token's).
    #[prost(string, tag = "2")]
    pub service_account: String,
    /// The proxy's pod (for logs; checked against the token's pod when the token names one).
    #[prost(string, tag = "3")]
    pub pod_name: String,
    /// The namespaces whose objects the proxy needs; empty: every namespace.
    #[prost(string, repeated, tag = "4")]
    pub namespaces: Vec<String>,
    /// The version of the last response applied (0 before the first).
    #[prost(uint64, tag = "5")]
    pub ack_version: u64,
}

/// One message of the stream: a full snapshot (replacing everything the proxy holds of the
/// subscription's namespaces) or a delta.
#[derive(Clone, PartialEq, prost::Message)]
pub struct DiscoveryResponse {
    /// Increases with every change the control plane saw (not every one reaches each proxy).
    #[prost(uint64, tag = "1")]
    pub version: u64,
    /// A full snapshot: objects of the subscription not listed here are gone.
    #[prost(bool, tag = "2")]
    pub full: bool,
    /// Added or changed.
    #[prost(message, repeated, tag = "3")]
    pub services: Vec<Service>,
    #[prost(message, repeated, tag = "4")]
    pub endpoint_slices: Vec<EndpointSlice>,
    #[prost(message, repeated, tag = "5")]
    pub pods: Vec<Pod>,
    /// Deleted (deltas only).
    #[prost(message, repeated, tag = "6")]
    pub removed: Vec<Removed>,
}

/// What routing needs of a Service.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct Service {
    #[prost(string, tag = "1")]
    pub namespace: String,
    #[prost(string, tag = "2")]
    pub name: String,
    /// TCP ports only.
    #[prost(message, repeated, tag = "3")]
    pub ports: Vec<ServicePort>,
    /// `type: ExternalName` (left to DNS).
    #[prost(bool, tag = "4")]
    pub external_name: bool,
    /// `spec.clusterIPs`; none for a headless Service.
    #[prost(string, repeated, tag = "5")]
    pub cluster_ips: Vec<String>,
}

#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct ServicePort {
    #[prost(uint32, tag = "1")]
    pub port: u32,
    /// Empty for the unnamed single port.
    #[prost(string, tag = "2")]
    pub name: String,
    /// `appProtocol`, empty when unset.
    #[prost(string, tag = "3")]
    pub app_protocol: String,
}

/// What routing needs of an EndpointSlice.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct EndpointSlice {
    #[prost(string, tag = "1")]
    pub namespace: String,
    #[prost(string, tag = "2")]
    pub name: String,
    /// Label `kubernetes.io/service-name`.
    #[prost(string, tag = "3")]
    pub service: String,
    /// TCP ports only.
    #[prost(message, repeated, tag = "4")]
    pub ports: Vec<SlicePort>,
    #[prost(message, repeated, tag = "5")]
    pub endpoints: Vec<Endpoint>,
}

#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct SlicePort {
    /// Empty for the unnamed port.
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(uint32, tag = "2")]
    pub port: u32,
}

#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct Endpoint {
    /// The first address (an IP).
    #[prost(string, tag = "1")]
    pub address: String,
    /// Ready and not terminating.
    #[prost(bool, tag = "2")]
    pub ready: bool,
    /// The Pod behind it (`targetRef` of kind Pod), empty when none.
    #[prost(string, tag = "3")]
    pub pod: String,
}

/// A pod's metadata as the mesh needs it: its labels (subsets, `security.istio.io/tlsMode`,
/// the canonical service), its workload (the controller, as Istio names it) and its service
/// account (the identity its sidecar's certificate carries, which clients check).
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct Pod {
    #[prost(string, tag = "1")]
    pub namespace: String,
    #[prost(string, tag = "2")]
    pub name: String,
    #[prost(btree_map = "string, string", tag = "3")]
    pub labels: BTreeMap<String, String>,
    #[prost(string, tag = "4")]
    pub workload: String,
    /// `spec.serviceAccountName`; empty when the sender does not know it (a proxy reading an
    /// older control plane gets it empty, and an older proxy skips the field).
    #[prost(string, tag = "5")]
    pub service_account: String,
}

/// The kinds of object.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum Kind {
    Unspecified = 0,
    Service = 1,
    EndpointSlice = 2,
    Pod = 3,
}

/// An object deleted.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct Removed {
    #[prost(enumeration = "Kind", tag = "1")]
    pub kind: i32,
    #[prost(string, tag = "2")]
    pub namespace: String,
    #[prost(string, tag = "3")]
    pub name: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn a_delta_round_trips() {
        let r = DiscoveryResponse {
            version: 7,
            full: false,
            services: vec![Service {
                namespace: "shop".into(),
                name: "reviews".into(),
                ports: vec![ServicePort {
                    port: 9080,
                    name: "http".into(),
                    app_protocol: String::new(),
                }],
                external_name: false,
                cluster_ips: vec!["10.96.0.10".into()],
            }],
            endpoint_slices: vec![],
            pods: vec![Pod {
                namespace: "shop".into(),
                name: "reviews-1".into(),
                labels: [("app".to_string(), "reviews".to_string())].into(),
                workload: "reviews-v1".into(),
                service_account: "bookinfo-reviews".into(),
            }],
            removed: vec![Removed {
                kind: Kind::EndpointSlice as i32,
                namespace: "shop".into(),
                name: "reviews-x".into(),
            }],
        };
        let bytes = r.encode_to_vec();
        // field 1 (varint): tag 0x08.
        assert_eq!(bytes[0], 0x08);
        let back = DiscoveryResponse::decode(bytes.as_slice()).unwrap();
        assert_eq!(back, r);
        assert_eq!(back.removed[0].kind(), Kind::EndpointSlice);
    }

    /// The Pod as the first release encoded it (no service account): what an older proxy and
    /// a newer one exchange with each other.
    #[derive(Clone, PartialEq, prost::Message)]
    struct PodV1 {
        #[prost(string, tag = "1")]
        namespace: String,
        #[prost(string, tag = "2")]
        name: String,
        #[prost(btree_map = "string, string", tag = "3")]
        labels: BTreeMap<String, String>,
        #[prost(string, tag = "4")]
        workload: String,
    }

    #[test]
    fn the_service_account_is_compatible_both_ways() {
        let new = Pod {
            namespace: "shop".into(),
            name: "reviews-1".into(),
            labels: [("app".to_string(), "reviews".to_string())].into(),
            workload: "reviews-v1".into(),
            service_account: "bookinfo-reviews".into(),
        };
        // An older proxy decodes a newer control plane's pod, skipping the field.
        let old = PodV1::decode(new.encode_to_vec().as_slice()).unwrap();
        assert_eq!(
            (old.name.as_str(), old.workload.as_str()),
            ("reviews-1", "reviews-v1")
        );
        // A newer proxy decodes an older control plane's pod: no service account known.
        let back = Pod::decode(old.encode_to_vec().as_slice()).unwrap();
        assert_eq!(back.service_account, "");
        assert_eq!(back.labels, new.labels);
    }
}
