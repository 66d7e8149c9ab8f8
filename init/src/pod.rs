//! A pod's capture settings from its annotations (pure): Istio's `traffic.sidecar.istio.io/*`
//! and `sidecar.istio.io/interceptionMode` → the `remora-init` arguments in istio-iptables form.
//!
//! The one mapping of annotations to capture flags: the injector renders the init container's
//! `args` with [`CaptureOptions::init_args`], and the CNI plugin (`remora-cni`) computes the same
//! arguments for the same pod, so the two capture modes cannot drift.

use std::collections::BTreeMap;

pub const INTERCEPTION_MODE: &str = "sidecar.istio.io/interceptionMode";
pub const INCLUDE_OUTBOUND_IP_RANGES: &str = "traffic.sidecar.istio.io/includeOutboundIPRanges";
pub const EXCLUDE_OUTBOUND_IP_RANGES: &str = "traffic.sidecar.istio.io/excludeOutboundIPRanges";
pub const INCLUDE_INBOUND_PORTS: &str = "traffic.sidecar.istio.io/includeInboundPorts";
pub const EXCLUDE_INBOUND_PORTS: &str = "traffic.sidecar.istio.io/excludeInboundPorts";
pub const INCLUDE_OUTBOUND_PORTS: &str = "traffic.sidecar.istio.io/includeOutboundPorts";
pub const EXCLUDE_OUTBOUND_PORTS: &str = "traffic.sidecar.istio.io/excludeOutboundPorts";
pub const EXCLUDE_INTERFACES: &str = "traffic.sidecar.istio.io/excludeInterfaces";
/// Deprecated by Istio in favour of `istio.io/reroute-virtual-interfaces`, which wins.
pub const KUBEVIRT_INTERFACES: &str = "traffic.sidecar.istio.io/kubevirtInterfaces";
pub const REROUTE_VIRTUAL_INTERFACES: &str = "istio.io/reroute-virtual-interfaces";

/// The pod annotation the injector sets in CNI mode: the node's CNI plugin programs this pod's
/// capture (value [`CAPTURE_BY_CNI`]). Pods without it are passed through untouched.
pub const CAPTURE_MARK: &str = "remora.dev/capture";
pub const CAPTURE_BY_CNI: &str = "cni";

/// The proxy's container (the injector names it so): the capture exempts the uid it runs as.
pub const PROXY_CONTAINER: &str = "remora-proxy";
/// The proxy's uid when the pod does not say (`runAsUser` of [`PROXY_CONTAINER`]).
pub const DEFAULT_PROXY_UID: u32 = 1337;

/// The proxy's capture ports and the ports the init arguments always exclude inbound.
pub const OUTBOUND_PORT: u16 = 15001;
pub const INBOUND_PORT: u16 = 15006;
/// Prometheus, health and status ports of the proxy: never captured inbound.
pub const PROXY_PORTS: [u16; 3] = [15090, 15021, 15020];

/// How traffic is captured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interception {
    /// iptables REDIRECT (the default).
    Redirect,
    /// No capture: no init container, no CNI rules.
    None,
}

/// The capture settings a pod's annotations ask for, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaptureOptions {
    pub interception: Interception,
    pub include_outbound_ip_ranges: Option<Vec<String>>,
    pub exclude_outbound_ip_ranges: Vec<String>,
    pub include_inbound_ports: Option<Vec<String>>,
    pub exclude_inbound_ports: Vec<String>,
    pub include_outbound_ports: Vec<String>,
    pub exclude_outbound_ports: Vec<String>,
    pub exclude_interfaces: Vec<String>,
    pub virtual_interfaces: Vec<String>,
}

impl Default for CaptureOptions {
    fn default() -> Self {
        CaptureOptions {
            interception: Interception::Redirect,
            include_outbound_ip_ranges: None,
            exclude_outbound_ip_ranges: vec![],
            include_inbound_ports: None,
            exclude_inbound_ports: vec![],
            include_outbound_ports: vec![],
            exclude_outbound_ports: vec![],
            exclude_interfaces: vec![],
            virtual_interfaces: vec![],
        }
    }
}

impl CaptureOptions {
    /// The capture settings of `ann`; every problem found is one sentence naming the
    /// annotation, the value and why (the settings are then partly defaulted: do not use them).
    pub fn parse(ann: &BTreeMap<String, String>) -> (CaptureOptions, Vec<String>) {
        let mut errs = Vec::new();
        let mut opts = CaptureOptions::default();
        let get = |k: &str| ann.get(k).map(String::as_str);
        if let Some(v) = get(INTERCEPTION_MODE) {
            match v.trim() {
                "REDIRECT" => opts.interception = Interception::Redirect,
                "NONE" => opts.interception = Interception::None,
                // Istio's TPROXY runs the proxy with NET_ADMIN (and the init with more rules):
                // capabilities chosen by annotation, which remora refuses.
                "TPROXY" => errs.push(format!(
                    "annotation {INTERCEPTION_MODE}: invalid value {v:?}: remora supports REDIRECT and NONE, not TPROXY (it would give the proxy NET_ADMIN; capabilities by annotation are refused)"
                )),
                _ => errs.push(format!(
                    "annotation {INTERCEPTION_MODE}: invalid value {v:?}: must be REDIRECT or NONE"
                )),
            }
        }
        if let Some(v) = get(INCLUDE_OUTBOUND_IP_RANGES) {
            match parse_cidrs(INCLUDE_OUTBOUND_IP_RANGES, v, true) {
                Ok(l) => opts.include_outbound_ip_ranges = Some(l),
                Err(e) => errs.push(e),
            }
        }
        if let Some(v) = get(EXCLUDE_OUTBOUND_IP_RANGES) {
            match parse_cidrs(EXCLUDE_OUTBOUND_IP_RANGES, v, false) {
                Ok(l) => opts.exclude_outbound_ip_ranges = l,
                Err(e) => errs.push(e),
            }
        }
        if let Some(v) = get(INCLUDE_INBOUND_PORTS) {
            match parse_ports(INCLUDE_INBOUND_PORTS, v, true) {
                Ok(l) => opts.include_inbound_ports = Some(l),
                Err(e) => errs.push(e),
            }
        }
        for (key, slot) in [
            (EXCLUDE_INBOUND_PORTS, &mut opts.exclude_inbound_ports),
            (INCLUDE_OUTBOUND_PORTS, &mut opts.include_outbound_ports),
            (EXCLUDE_OUTBOUND_PORTS, &mut opts.exclude_outbound_ports),
        ] {
            if let Some(v) = get(key) {
                match parse_ports(key, v, false) {
                    Ok(l) => *slot = l,
                    Err(e) => errs.push(e),
                }
            }
        }
        if let Some(v) = get(EXCLUDE_INTERFACES) {
            match parse_interfaces(EXCLUDE_INTERFACES, v) {
                Ok(l) => opts.exclude_interfaces = l,
                Err(e) => errs.push(e),
            }
        }
        for key in [KUBEVIRT_INTERFACES, REROUTE_VIRTUAL_INTERFACES] {
            if let Some(v) = get(key) {
                match parse_interfaces(key, v) {
                    Ok(l) => opts.virtual_interfaces = l,
                    Err(e) => errs.push(e),
                }
            }
        }
        (opts, errs)
    }

    /// The `remora-init` arguments in istio-iptables form for a proxy running as `proxy_uid`
    /// (program name not included).
    pub fn init_args(&self, proxy_uid: u32) -> Vec<String> {
        let join = |v: &[String]| v.join(",");
        let mut d: Vec<String> = PROXY_PORTS.iter().map(u16::to_string).collect();
        for p in &self.exclude_inbound_ports {
            if !d.contains(p) {
                d.push(p.clone());
            }
        }
        let mut args: Vec<String> = vec![
            "-p".into(),
            OUTBOUND_PORT.to_string(),
            "-z".into(),
            INBOUND_PORT.to_string(),
            "-u".into(),
            proxy_uid.to_string(),
            "-m".into(),
            "REDIRECT".into(),
            "-i".into(),
            self.include_outbound_ip_ranges
                .as_deref()
                .map(join)
                .unwrap_or_else(|| "*".into()),
            "-x".into(),
            join(&self.exclude_outbound_ip_ranges),
            "-b".into(),
            self.include_inbound_ports
                .as_deref()
                .map(join)
                .unwrap_or_else(|| "*".into()),
            "-d".into(),
            d.join(","),
        ];
        for (flag, list) in [
            ("-q", &self.include_outbound_ports),
            ("-o", &self.exclude_outbound_ports),
            ("-c", &self.exclude_interfaces),
            ("-k", &self.virtual_interfaces),
        ] {
            if !list.is_empty() {
                args.push(flag.into());
                args.push(join(list));
            }
        }
        args
    }
}

/// A comma-separated list of ports 1-65535; `*` only where `allow_star`; empty is allowed.
pub fn parse_ports(key: &str, v: &str, allow_star: bool) -> Result<Vec<String>, String> {
    let v = v.trim();
    if v.is_empty() {
        return Ok(vec![]);
    }
    if v == "*" {
        if allow_star {
            return Ok(vec!["*".to_string()]);
        }
        return Err(format!(
            "annotation {key}: invalid value \"*\": a wildcard is not allowed here; list the ports"
        ));
    }
    let mut out = Vec::new();
    for item in v.split(',') {
        let item = item.trim();
        if item.is_empty() {
            continue;
        }
        match item.parse::<u32>() {
            Ok(p) if (1..=65535).contains(&p) => out.push(p.to_string()),
            Ok(p) => {
                return Err(format!(
                    "annotation {key}: invalid value {v:?}: port {p} is out of range 1-65535"
                ))
            }
            Err(_) => {
                return Err(format!(
                    "annotation {key}: invalid value {v:?}: {item:?} is not a port number"
                ))
            }
        }
    }
    Ok(out)
}

/// A comma-separated list of CIDRs; `*` only where `allow_star`; empty is allowed.
pub fn parse_cidrs(key: &str, v: &str, allow_star: bool) -> Result<Vec<String>, String> {
    let v = v.trim();
    if v.is_empty() {
        return Ok(vec![]);
    }
    if v == "*" {
        if allow_star {
            return Ok(vec!["*".to_string()]);
        }
        return Err(format!(
            "annotation {key}: invalid value \"*\": a wildcard is not allowed here; list the CIDRs"
        ));
    }
    let mut out = Vec::new();
    for item in v.split(',') {
        let item = item.trim();
        if item.is_empty() {
            continue;
        }
        if item.parse::<ipnet::IpNet>().is_err() {
            return Err(format!(
                "annotation {key}: invalid value {v:?}: {item:?} is not a CIDR (like 10.0.0.0/8)"
            ));
        }
        out.push(item.to_string());
    }
    Ok(out)
}

pub fn parse_interfaces(key: &str, v: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    for item in v.split(',') {
        let item = item.trim();
        if item.is_empty() {
            continue;
        }
        let ok = item.len() <= 15
            && item
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.@+".contains(c));
        if !ok {
            return Err(format!(
                "annotation {key}: invalid value {v:?}: {item:?} is not a network interface name"
            ));
        }
        // remora-init would read it as a flag (found by fuzzing: the denial then carried
        // clap's multi-line usage text instead of naming the annotation).
        if item.starts_with('-') {
            return Err(format!(
                "annotation {key}: invalid value {v:?}: {item:?} starts with '-' (it would be read as a flag)"
            ));
        }
        out.push(item.to_string());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flags::{CaptureConfig, Flags};

    fn ann(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn config(pairs: &[(&str, &str)], uid: u32) -> CaptureConfig {
        let (o, errs) = CaptureOptions::parse(&ann(pairs));
        assert!(errs.is_empty(), "{errs:?}");
        let mut argv = vec!["remora-init".to_string()];
        argv.extend(o.init_args(uid));
        Flags::try_parse_args_only(argv)
            .expect("parse")
            .validate()
            .expect("valid")
    }

    #[test]
    fn no_annotations_give_the_default_sidecar() {
        assert_eq!(config(&[], 1337), CaptureConfig::istio_default());
    }

    #[test]
    fn each_annotation_reaches_its_flag() {
        let c = config(
            &[
                (INCLUDE_OUTBOUND_IP_RANGES, "10.0.0.0/8"),
                (EXCLUDE_OUTBOUND_IP_RANGES, "10.1.0.0/16"),
                (INCLUDE_INBOUND_PORTS, "80,81"),
                (EXCLUDE_INBOUND_PORTS, "9000"),
                (INCLUDE_OUTBOUND_PORTS, "443"),
                (EXCLUDE_OUTBOUND_PORTS, "53"),
                (EXCLUDE_INTERFACES, "eth9"),
                (KUBEVIRT_INTERFACES, "vnet0"),
            ],
            2000,
        );
        use crate::flags::{InboundCapture, OutboundCapture};
        assert_eq!(
            c.outbound,
            OutboundCapture::Cidrs(vec!["10.0.0.0/8".parse().unwrap()])
        );
        assert_eq!(c.outbound_exclude, vec!["10.1.0.0/16".parse().unwrap()]);
        assert_eq!(c.inbound, InboundCapture::Only(vec![80, 81]));
        assert_eq!(c.ignored_inbound_excludes, vec![15090, 15021, 15020, 9000]);
        assert_eq!(c.outbound_ports_include, vec![443]);
        assert_eq!(c.outbound_ports_exclude, vec![53]);
        assert_eq!(c.exclude_interfaces, vec!["eth9"]);
        assert_eq!(c.kube_virt_interfaces, vec!["vnet0"]);
        assert_eq!(c.proxy_uids, vec![2000]);
        assert_eq!(c.proxy_gids, vec![2000]);
    }

    #[test]
    fn bad_values_are_named() {
        for (k, v, want) in [
            (INTERCEPTION_MODE, "TPROXY", "not TPROXY"),
            (INTERCEPTION_MODE, "X", "must be REDIRECT or NONE"),
            (INCLUDE_INBOUND_PORTS, "http", "not a port number"),
            (EXCLUDE_OUTBOUND_IP_RANGES, "*", "wildcard is not allowed"),
            (EXCLUDE_INTERFACES, "-b", "starts with '-'"),
        ] {
            let (_, errs) = CaptureOptions::parse(&ann(&[(k, v)]));
            assert_eq!(errs.len(), 1, "{k}={v}: {errs:?}");
            assert!(
                errs[0].starts_with(&format!("annotation {k}: invalid value"))
                    && errs[0].contains(want),
                "{}",
                errs[0]
            );
        }
        let (o, errs) = CaptureOptions::parse(&ann(&[(INTERCEPTION_MODE, "NONE")]));
        assert!(errs.is_empty());
        assert_eq!(o.interception, Interception::None);
    }
}
