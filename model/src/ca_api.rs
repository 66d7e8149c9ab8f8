//! The wire messages of Istio's certificate service
//! (`istio.v1.auth.IstioCertificateService/CreateCertificate`), which the control plane's CA
//! serves and the sidecar calls. Written out with prost's derive (no protoc); field numbers are
//! Istio's, so either side can talk to Istio's istiod as well.

/// The gRPC service name.
pub const SERVICE: &str = "istio.v1.auth.IstioCertificateService";
/// The one method's path.
pub const CREATE_CERTIFICATE: &str = "/istio.v1.auth.IstioCertificateService/CreateCertificate";

/// `istio.v1.auth.IstioCertificateRequest`
#[derive(Clone, PartialEq, prost::Message)]
pub struct IstioCertificateRequest {
    /// PEM-encoded certificate request.
    #[prost(string, tag = "1")]
    pub csr: String,
    /// Requested lifetime in seconds (≤ 0: the CA's default).
    #[prost(int64, tag = "3")]
    pub validity_duration: i64,
    /// Optional metadata (Istio sends e.g. the cluster ID); not read yet.
    #[prost(message, optional, tag = "4")]
    pub metadata: Option<prost_types::Struct>,
}

/// `istio.v1.auth.IstioCertificateResponse`
#[derive(Clone, PartialEq, prost::Message)]
pub struct IstioCertificateResponse {
    /// Leaf first, then intermediates, the root last; PEM each.
    #[prost(string, repeated, tag = "1")]
    pub cert_chain: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn request_round_trips_with_istios_field_numbers() {
        let r = IstioCertificateRequest {
            csr: "PEM".into(),
            validity_duration: 3600,
            metadata: None,
        };
        let bytes = r.encode_to_vec();
        // field 1 (string): tag 0x0a; field 3 (varint): tag 0x18.
        assert_eq!(bytes[0], 0x0a);
        assert!(bytes.windows(1).any(|w| w[0] == 0x18));
        assert_eq!(
            IstioCertificateRequest::decode(bytes.as_slice()).unwrap(),
            r
        );
    }
}
