//! Istio's cluster names as a TLS server name: a sidecar that sends mTLS through a gateway with
//! an `AUTO_PASSTHROUGH` server (multi-network, east-west) puts the destination in the SNI as
//! `outbound_.PORT_.SUBSET_.HOST` (`outbound_.9080_.v1_.reviews.default.svc.cluster.local`; no
//! subset: `outbound_.9080_._.reviews.default.svc.cluster.local`). This module reads it back.

use crate::host::check_host;

/// The destination an `outbound_` server name carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterSni {
    pub port: u16,
    /// `None` for the empty subset (`_`).
    pub subset: Option<String>,
    /// The service's host name, lower case (`reviews.default.svc.cluster.local`).
    pub host: String,
}

/// Read `outbound_.PORT_.SUBSET_.HOST`. Err: why the name is not of that form.
pub fn parse(sni: &str) -> Result<ClusterSni, String> {
    let name = sni.trim_end_matches('.').to_ascii_lowercase();
    let bad = |why: &str| {
        Err(format!(
            "server name {sni:?} is not Istio's outbound_.PORT_.SUBSET_.HOST: {why}"
        ))
    };
    let Some(rest) = name.strip_prefix("outbound_.") else {
        return bad("no outbound_. prefix");
    };
    let Some((port, rest)) = rest.split_once("_.") else {
        return bad("no PORT_. part");
    };
    let Some(port) = port.parse::<u16>().ok().filter(|p| *p != 0) else {
        return bad(&format!("{port:?} is not a port number (1-65535)"));
    };
    // The subset is empty (`._.`: `rest` starts with `_.`) or a name followed by `_.`.
    if rest == "_" {
        return bad("no host");
    }
    let (subset, host) = match rest.strip_prefix("_.") {
        Some(host) => (None, host),
        None => match rest.split_once("_.") {
            Some((s, host)) => (Some(s), host),
            None => return bad("no SUBSET_. part (use _ for no subset)"),
        },
    };
    if let Some(s) = subset {
        if s.is_empty()
            || s.len() > 63
            || !s
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        {
            return bad(&format!("{s:?} is not a subset name"));
        }
    }
    if host.is_empty() || host.starts_with('*') {
        return bad("no host");
    }
    if let Err(e) = check_host(host) {
        return bad(&e);
    }
    Ok(ClusterSni {
        port,
        subset: subset.map(str::to_string),
        host: host.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn istio_forms() {
        let ok: &[(&str, u16, Option<&str>, &str)] = &[
            (
                "outbound_.9080_.v1_.reviews.default.svc.cluster.local",
                9080,
                Some("v1"),
                "reviews.default.svc.cluster.local",
            ),
            (
                "outbound_.9080_._.reviews.default.svc.cluster.local",
                9080,
                None,
                "reviews.default.svc.cluster.local",
            ),
            (
                "Outbound_.443_.canary-2_.API.example.com.",
                443,
                Some("canary-2"),
                "api.example.com",
            ),
            ("outbound_.80_._.httpbin", 80, None, "httpbin"),
        ];
        for (sni, port, subset, host) in ok {
            assert_eq!(
                parse(sni),
                Ok(ClusterSni {
                    port: *port,
                    subset: subset.map(str::to_string),
                    host: host.to_string()
                }),
                "{sni}"
            );
        }
        let bad: &[(&str, &str)] = &[
            ("reviews.default.svc.cluster.local", "no outbound_. prefix"),
            ("inbound_.9080_._.reviews", "no outbound_. prefix"),
            ("outbound|9080||reviews", "no outbound_. prefix"),
            ("outbound_.9080.reviews", "no PORT_. part"),
            ("outbound_.0_._.reviews", "\"0\" is not a port number"),
            ("outbound_.http_._.reviews", "\"http\" is not a port number"),
            (
                "outbound_.70000_._.reviews",
                "\"70000\" is not a port number",
            ),
            ("outbound_.9080_.reviews", "no SUBSET_. part"),
            ("outbound_.9080_._.", "no host"),
            ("outbound_.9080_._.*.example.com", "no host"),
            (
                "outbound_.9080_.v/1_.reviews",
                "\"v/1\" is not a subset name",
            ),
            ("outbound_.9080_._.a..b", "invalid host"),
        ];
        for (sni, why) in bad {
            let e = parse(sni).unwrap_err();
            assert!(e.contains(why), "{sni}: {e}");
            assert!(e.starts_with("server name"), "{e}");
        }
    }
}
