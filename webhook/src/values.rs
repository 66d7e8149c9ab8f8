//! Value vocabularies shared by the injector's configuration and the pod annotations: proxy log
//! levels and Kubernetes resource quantities; and by the injector's identity settings and the
//! mesh CA's flags: trust domains, token audiences, `HOST:PORT`.

/// The pod label (and annotation) that opts a pod in or out of injection, read by the injector
/// and by the webhook entries' selectors.
pub const INJECT: &str = "sidecar.istio.io/inject";

/// Proxy log levels accepted by `sidecar.istio.io/logLevel` (Envoy's names).
pub const LOG_LEVELS: &[&str] = &[
    "trace", "debug", "info", "warning", "error", "critical", "off",
];

/// Parses a Kubernetes resource quantity ("100m", "1.5", "128Mi", "1e3") into its value.
pub fn parse_quantity(v: &str) -> Result<f64, String> {
    let s = v.trim();
    if s.is_empty() {
        return Err("empty quantity".to_string());
    }
    let num_end = s
        .char_indices()
        .find(|(_, c)| !(c.is_ascii_digit() || *c == '.' || *c == '+' || *c == '-'))
        .map(|(i, _)| i)
        .unwrap_or(s.len());
    let (num, suffix) = s.split_at(num_end);
    if num.is_empty() || num.starts_with('-') {
        return Err("not a non-negative quantity like 100m, 0.5, 128Mi or 1Gi".to_string());
    }
    let n: f64 = num
        .parse()
        .map_err(|_| "not a non-negative quantity like 100m, 0.5, 128Mi or 1Gi".to_string())?;
    let mult = match suffix {
        "" => 1.0,
        "n" => 1e-9,
        "u" => 1e-6,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024.0,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        e if (e.starts_with('e') || e.starts_with('E')) && e.len() > 1 => {
            let exp: i32 = e[1..]
                .parse()
                .map_err(|_| format!("unknown suffix {suffix:?}"))?;
            10f64.powi(exp)
        }
        _ => {
            return Err(format!(
                "unknown suffix {suffix:?} (use m, k, M, G, Ki, Mi, Gi, ...)"
            ))
        }
    };
    Ok(n * mult)
}

/// Checks a SPIFFE trust domain (`spiffe://<trust domain>/ns/...`); the error is the reason.
pub fn check_trust_domain(td: &str) -> Result<(), String> {
    if td.is_empty()
        || td.len() > 255
        || !td.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_')
        })
    {
        return Err(
            "a SPIFFE trust domain is 1-255 of lowercase letters, digits, '.', '-', '_'".into(),
        );
    }
    Ok(())
}

/// Checks a service-account token audience; the error is the reason.
pub fn check_audience(aud: &str) -> Result<(), String> {
    if aud.is_empty() || aud.len() > 256 || aud.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err("must be 1-256 characters without spaces".into());
    }
    Ok(())
}

/// An example for messages about [`check_host_port`].
pub const HOST_PORT_EXAMPLE: &str = "HOST:PORT (e.g. remora-ca.remora-system.svc:15012)";

/// Checks a `HOST:PORT` a client dials: a DNS name (letters, digits, '-', dot-separated labels of
/// at most 63), an IPv4 address or a bracketed IPv6 address, and a port 1-65535. The error is
/// the reason (callers add what was expected, see [`HOST_PORT_EXAMPLE`]).
pub fn check_host_port(v: &str) -> Result<(), String> {
    let Some((host, port)) = v.rsplit_once(':') else {
        return Err("no port".into());
    };
    match port.parse::<u16>() {
        Ok(p) if p > 0 && port.bytes().all(|b| b.is_ascii_digit()) => {}
        _ => return Err(format!("port {port:?} is not 1-65535")),
    }
    if let Some(inner) = host.strip_prefix('[') {
        let ok = inner
            .strip_suffix(']')
            .is_some_and(|a| a.parse::<std::net::Ipv6Addr>().is_ok());
        return if ok {
            Ok(())
        } else {
            Err(format!("host {host:?} is not a bracketed IPv6 address"))
        };
    }
    if host.parse::<std::net::Ipv4Addr>().is_ok() {
        return Ok(());
    }
    let name = host.strip_suffix('.').unwrap_or(host);
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if name.is_empty() || name.len() > 253 || !name.split('.').all(label_ok) {
        return Err(format!("host {host:?} is not a DNS name or an IP address"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port() {
        for ok in [
            "remora-ca.remora-system.svc:15012",
            "remora-ca:15012",
            "10.0.0.1:15012",
            "[fd00::1]:15012",
            "ca.example.com.:443",
        ] {
            assert_eq!(check_host_port(ok), Ok(()), "{ok}");
        }
        for (bad, why) in [
            ("remora-ca.remora-system.svc", "no port"),
            ("remora-ca:0", "port \"0\""),
            ("remora-ca:99999", "port \"99999\""),
            ("remora-ca:+1", "port \"+1\""),
            (":15012", "host \"\""),
            ("fd00::1:15012", "host \"fd00::1\""),
            ("[fd00::zz]:15012", "bracketed IPv6"),
            ("-ca.svc:15012", "host \"-ca.svc\""),
            ("ca..svc:15012", "host \"ca..svc\""),
            ("ca_1.svc:15012", "host \"ca_1.svc\""),
            ("https://ca:15012", "host \"https://ca\""),
        ] {
            let e = check_host_port(bad).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn trust_domain_and_audience() {
        assert!(check_trust_domain("cluster.local").is_ok());
        assert!(check_trust_domain("Cluster.local").is_err());
        assert!(check_trust_domain("").is_err());
        assert!(check_audience("remora-ca").is_ok());
        assert!(check_audience("remora ca").is_err());
        assert!(check_audience("").is_err());
    }
}
