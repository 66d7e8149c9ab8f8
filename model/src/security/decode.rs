//! Typed decoding of the security kinds' `spec` with the crate's one decoder
//! (`crate::typed`): it names the field of a type error
//! (`spec.rules[0].from[0].source.ipBlocks[1]`) and lists the fields the API does not define
//! (warnings, like the networking kinds' unknown fields). The value types of these kinds
//! (`IpBlock`, `PortString`) and Istio's checks serde cannot express are here; they name field,
//! value and reason the same way.

use std::fmt;
use std::net::IpAddr;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

/// A field and why it is wrong; `field` is a path from the document (`spec.mtls.mode`).
pub use crate::typed::FieldError as SpecError;
use crate::typed::Unknown;

/// Decode `spec` (at path `spec`) as `T` with the crate's one typed decoder
/// (`crate::typed::decode`): the value, or the first type error with its field path; the
/// unknown fields met on the way are added to `unknown`.
pub fn spec<T: DeserializeOwned>(spec: &Value, unknown: &mut Vec<Unknown>) -> Result<T, SpecError> {
    crate::typed::decode(spec, "spec", unknown)
}

/// One entry of `ipBlocks`, `notIpBlocks`, `remoteIpBlocks`, `notRemoteIpBlocks` or an IP
/// condition value: an address or a CIDR range, kept as written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IpBlock {
    pub text: String,
    pub net: ipnet::IpNet,
}

impl IpBlock {
    pub fn parse(s: &str) -> Result<IpBlock, String> {
        let net = if s.contains('/') {
            s.parse::<ipnet::IpNet>().map_err(|e| e.to_string())
        } else {
            s.parse::<IpAddr>()
                .map(ipnet::IpNet::from)
                .map_err(|e| e.to_string())
        };
        match net {
            Ok(net) => Ok(IpBlock {
                text: s.to_string(),
                net,
            }),
            Err(e) => Err(format!(
                "invalid IP address or CIDR range {s:?} ({e}); expected e.g. 10.1.2.3 or 10.0.0.0/16"
            )),
        }
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        self.net.contains(&ip)
    }
}

impl Serialize for IpBlock {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for IpBlock {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<IpBlock, D::Error> {
        let s = String::deserialize(d)?;
        IpBlock::parse(&s).map_err(serde::de::Error::custom)
    }
}

crate::string_schema!(IpBlock, "IpBlock", crate::typed::string_schema());

/// A port written as a string (`ports: ["8080"]`), as Istio's AuthorizationPolicy has them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortString(pub u16);

crate::string_schema!(PortString, "PortString", crate::typed::string_schema());

/// Parse a port number 1..=65535 from its text.
pub fn parse_port(s: &str) -> Result<u16, String> {
    match s.trim().parse::<u32>() {
        Ok(n) if (1..=65535).contains(&n) && s.trim() == s => Ok(n as u16),
        Ok(n) => Err(format!(
            "invalid port {s:?}: {n} is out of range (1 to 65535)"
        )),
        Err(_) => Err(format!(
            "invalid port {s:?}: expected a number from 1 to 65535"
        )),
    }
}

impl Serialize for PortString {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0.to_string())
    }
}

impl<'de> Deserialize<'de> for PortString {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<PortString, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = PortString;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a port number as a string, e.g. \"8080\"")
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<PortString, E> {
                parse_port(s).map(PortString).map_err(E::custom)
            }
            fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<PortString, E> {
                Err(E::custom(format!(
                    "expected a string, found the number {n} (quote it: \"{n}\")"
                )))
            }
            fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<PortString, E> {
                Err(E::custom(format!(
                    "expected a string, found the number {n} (quote it: \"{n}\")"
                )))
            }
        }
        d.deserialize_any(V)
    }
}

/// Every empty string of a list is an error (Istio: "empty value not allowed").
pub fn no_empty(field: &str, values: &[String]) -> Result<(), SpecError> {
    match values.iter().position(|v| v.is_empty()) {
        Some(i) => Err(SpecError::new(
            format!("{field}[{i}]"),
            "empty value not allowed",
        )),
        None => Ok(()),
    }
}

/// Istio's selector checks: keys not empty, no `*` in keys or values.
pub fn check_selector(sel: Option<&super::WorkloadSelector>) -> Result<(), SpecError> {
    let Some(sel) = sel else { return Ok(()) };
    for (k, v) in &sel.match_labels {
        let f = format!("spec.selector.matchLabels.{k}");
        if k.is_empty() {
            return Err(SpecError::new(
                "spec.selector.matchLabels",
                "key must not be empty",
            ));
        }
        if k.contains('*') {
            return Err(SpecError::new(f, "wildcard not allowed in label key match"));
        }
        if v.contains('*') {
            return Err(SpecError::new(
                f,
                format!("{v:?}: wildcard not allowed in label value match"),
            ));
        }
        if v.len() > 63 {
            return Err(SpecError::new(
                f,
                format!("{v:?}: label values are at most 63 characters"),
            ));
        }
    }
    Ok(())
}

/// `targetRef`/`targetRefs` attach a policy to a gateway or waypoint, which sidecars are not.
pub fn refuse_target_refs(
    target_ref: &Option<Value>,
    target_refs: &Option<Value>,
) -> Result<(), SpecError> {
    let reason = "gateway/waypoint attachment is not supported (remora has no Kubernetes Gateway API gateways or waypoints; it applies security policies to sidecars and gateway pods by selector, namespace or mesh)";
    if target_ref.is_some() {
        return Err(SpecError::new("spec.targetRef", reason));
    }
    if target_refs.is_some() {
        return Err(SpecError::new("spec.targetRefs", reason));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct T {
        #[serde(default)]
        ip_blocks: Vec<IpBlock>,
        #[serde(default)]
        ports: Vec<PortString>,
    }

    #[test]
    fn paths_of_errors_and_unknown_fields() {
        let spec = |v: &Value| {
            let mut unknown = Vec::new();
            super::spec::<T>(v, &mut unknown).map(|t| (t, unknown))
        };
        let v: Value = serde_json::json!({"ipBlocks": ["1.2.3.4", "1.2.3.0/33"]});
        let e = spec(&v).unwrap_err();
        assert_eq!(e.field, "spec.ipBlocks[1]");
        assert!(
            e.reason
                .starts_with("invalid IP address or CIDR range \"1.2.3.0/33\""),
            "{e}"
        );
        let v: Value = serde_json::json!({"ports": ["80", "70000"]});
        let e = spec(&v).unwrap_err();
        assert_eq!(
            e.to_string(),
            "spec.ports[1]: invalid port \"70000\": 70000 is out of range (1 to 65535)"
        );
        let v: Value = serde_json::json!({"ports": [80]});
        assert_eq!(
            spec(&v).unwrap_err().to_string(),
            "spec.ports[0]: expected a string, found the number 80 (quote it: \"80\")"
        );
        let v: Value = serde_json::json!({"ipBlock": ["1.2.3.4"], "ports": ["80"]});
        let (t, unknown) = spec(&v).unwrap();
        assert_eq!(t.ports, vec![PortString(80)]);
        assert!(t.ip_blocks.is_empty());
        assert_eq!(
            unknown,
            vec![Unknown {
                field: "spec.ipBlock".into(),
                suggestion: Some("ipBlocks"),
                misplaced: false,
            }]
        );
    }

    #[test]
    fn ports() {
        assert_eq!(parse_port("1"), Ok(1));
        assert_eq!(parse_port("65535"), Ok(65535));
        assert!(parse_port("0").is_err());
        assert!(parse_port("65536").is_err());
        assert!(parse_port("x").is_err());
        assert!(parse_port(" 80").is_err());
    }
}
