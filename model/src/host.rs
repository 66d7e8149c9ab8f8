//! Host names: qualifying short names, splitting an authority, and Istio's host matching.

use std::net::IpAddr;

/// Qualify a host as written in a resource of namespace `ns`: `reviews` →
/// `reviews.<ns>.svc.<domain>`; names with a dot and wildcards stay as written (lower-cased,
/// without a trailing dot).
pub fn qualify(host: &str, ns: &str, domain: &str) -> String {
    let h = host.trim().trim_end_matches('.').to_ascii_lowercase();
    if h == "*" || h.starts_with("*.") || h.contains('.') || h.parse::<IpAddr>().is_ok() {
        return h;
    }
    format!("{h}.{ns}.svc.{domain}")
}

/// Split an authority (`host`, `host:port`, `[v6]:port`, `v6`) into a lower-cased host and port.
pub fn split_authority(authority: &str) -> (String, Option<u16>) {
    let (host, port) = split_authority_as_sent(authority);
    (host.to_ascii_lowercase(), port)
}

/// [`split_authority`] without lower-casing, borrowed (for comparisons that ignore case and
/// run per request).
pub fn split_authority_as_sent(authority: &str) -> (&str, Option<u16>) {
    let a = authority.trim();
    if let Some(rest) = a.strip_prefix('[') {
        if let Some(end) = rest.find(']') {
            let port = rest[end + 1..]
                .strip_prefix(':')
                .and_then(|p| p.parse::<u16>().ok());
            return (&rest[..end], port);
        }
    }
    // A bare IPv6 address has several colons and no port.
    if a.matches(':').count() > 1 {
        return (a, None);
    }
    match a.rsplit_once(':') {
        Some((h, p)) => match p.parse::<u16>() {
            Ok(port) => (h.trim_end_matches('.'), Some(port)),
            Err(_) => (a.trim_end_matches('.'), None),
        },
        None => (a.trim_end_matches('.'), None),
    }
}

/// The fully qualified names a request host may mean, as Kubernetes DNS search paths resolve
/// them from a pod in namespace `ns`: `reviews`, `reviews.<ns>`, `reviews.<ns>.svc` and the FQDN.
pub fn candidates(host: &str, ns: &str, domain: &str) -> Vec<String> {
    let h = host.trim_end_matches('.').to_ascii_lowercase();
    if h.is_empty() {
        return Vec::new();
    }
    if h.parse::<IpAddr>().is_ok() {
        return vec![h];
    }
    let dots = h.matches('.').count();
    if dots == 0 {
        return vec![format!("{h}.{ns}.svc.{domain}")];
    }
    let mut out = Vec::new();
    if h.ends_with(".svc") {
        out.push(format!("{h}.{domain}"));
    } else if dots == 1 {
        out.push(format!("{h}.svc.{domain}"));
    }
    out.push(h);
    out
}

/// How well a (possibly wildcard) `pattern` matches a concrete `host`: `None` for no match;
/// a higher score for a more specific match (exact beats any wildcard; a longer wildcard suffix
/// beats a shorter one; `*` is the least specific).
pub fn match_score(pattern: &str, host: &str) -> Option<usize> {
    if pattern == host {
        return Some(100_000 + pattern.len());
    }
    if pattern == "*" {
        return Some(0);
    }
    if let Some(suffix) = pattern.strip_prefix('*') {
        // suffix starts with '.'
        if host.len() > suffix.len() && host.ends_with(suffix) {
            return Some(suffix.len());
        }
    }
    None
}

/// Do two host patterns overlap (one may be a wildcard covering the other)?
pub fn overlaps(a: &str, b: &str) -> bool {
    if match_score(a, b).is_some() || match_score(b, a).is_some() {
        return true;
    }
    // Two wildcards: `*.a.com` and `*.b.a.com` overlap.
    match (a.strip_prefix('*'), b.strip_prefix('*')) {
        (Some(sa), Some(sb)) => sa.ends_with(sb) || sb.ends_with(sa),
        _ => false,
    }
}

/// Is `host` a well-formed DNS name, optionally with a leading `*.` wildcard (or `*` alone)?
pub fn check_host(host: &str) -> Result<(), String> {
    if host == "*" {
        return Ok(());
    }
    let name = host.strip_prefix("*.").unwrap_or(host);
    if name.is_empty() {
        return Err(format!("invalid host {host:?}: empty name"));
    }
    if name.parse::<IpAddr>().is_ok() {
        return Ok(());
    }
    if name.len() > 253 {
        return Err(format!("invalid host {host:?}: longer than 253 characters"));
    }
    for label in name.trim_end_matches('.').split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err(format!(
                "invalid host {host:?}: labels must be 1 to 63 characters"
            ));
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            || label.starts_with('-')
            || label.ends_with('-')
        {
            return Err(format!(
                "invalid host {host:?}: label {label:?} must be letters, digits or '-' (not at either end)"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qualify_table() {
        let cases = [
            ("reviews", "default", "reviews.default.svc.cluster.local"),
            ("reviews", "prod", "reviews.prod.svc.cluster.local"),
            (
                "Reviews.Prod.svc.cluster.local.",
                "x",
                "reviews.prod.svc.cluster.local",
            ),
            ("*.example.com", "x", "*.example.com"),
            ("*", "x", "*"),
            ("www.googleapis.com", "x", "www.googleapis.com"),
            ("10.0.0.1", "x", "10.0.0.1"),
        ];
        for (h, ns, want) in cases {
            assert_eq!(qualify(h, ns, "cluster.local"), want, "{h}");
        }
    }

    #[test]
    fn split_authority_table() {
        let cases = [
            ("reviews", ("reviews", None)),
            ("reviews:9080", ("reviews", Some(9080))),
            ("Reviews.Default:80", ("reviews.default", Some(80))),
            ("[::1]:8080", ("::1", Some(8080))),
            ("[::1]", ("::1", None)),
            ("fe80::1", ("fe80::1", None)),
            ("10.1.2.3:443", ("10.1.2.3", Some(443))),
            ("host:notaport", ("host:notaport", None)),
        ];
        for (a, (h, p)) in cases {
            assert_eq!(split_authority(a), (h.to_string(), p), "{a}");
        }
    }

    #[test]
    fn candidates_table() {
        let d = "cluster.local";
        assert_eq!(
            candidates("reviews", "default", d),
            vec!["reviews.default.svc.cluster.local"]
        );
        assert_eq!(
            candidates("reviews.prod", "default", d),
            vec!["reviews.prod.svc.cluster.local", "reviews.prod"]
        );
        assert_eq!(
            candidates("reviews.prod.svc", "default", d),
            vec!["reviews.prod.svc.cluster.local", "reviews.prod.svc"]
        );
        assert_eq!(
            candidates("api.example.com", "default", d),
            vec!["api.example.com"]
        );
        assert_eq!(candidates("127.0.0.1", "default", d), vec!["127.0.0.1"]);
    }

    #[test]
    fn match_score_ordering() {
        let h = "a.b.example.com";
        let exact = match_score("a.b.example.com", h).unwrap();
        let long = match_score("*.b.example.com", h).unwrap();
        let short = match_score("*.example.com", h).unwrap();
        let any = match_score("*", h).unwrap();
        assert!(exact > long && long > short && short > any);
        assert_eq!(match_score("*.example.com", "example.com"), None);
        assert_eq!(match_score("*.example.com", "badexample.com"), None);
        assert_eq!(match_score("other.com", h), None);
    }

    #[test]
    fn overlaps_table() {
        assert!(overlaps("*", "x.com"));
        assert!(overlaps("*.a.com", "b.a.com"));
        assert!(overlaps("b.a.com", "*.a.com"));
        assert!(overlaps("*.a.com", "*.b.a.com"));
        assert!(!overlaps("*.a.com", "*.b.com"));
        assert!(!overlaps("x.com", "y.com"));
    }

    #[test]
    fn check_host_table() {
        assert!(check_host("reviews.default.svc.cluster.local").is_ok());
        assert!(check_host("*.example.com").is_ok());
        assert!(check_host("*").is_ok());
        assert_eq!(
            check_host("bad host.com"),
            Err("invalid host \"bad host.com\": label \"bad host\" must be letters, digits or '-' (not at either end)".to_string())
        );
        assert_eq!(
            check_host("a..b"),
            Err("invalid host \"a..b\": labels must be 1 to 63 characters".to_string())
        );
    }
}

/// An index of (possibly wildcard) host patterns to item positions, answering "the most
/// specific item for these names" without scanning every item: exact names beat wildcards
/// (the longer name wins), longer wildcard suffixes beat shorter ones, `*` comes last; on a tie
/// the item that came first wins.
#[derive(Clone, Debug, Default)]
pub struct HostIndex {
    exact: std::collections::HashMap<String, usize>,
    /// (suffix starting with '.', item), sorted by suffix length (longest first), then item.
    wild: Vec<(String, usize)>,
    any: Option<usize>,
}

impl HostIndex {
    /// Index `(item, pattern)` pairs; items are positions in the caller's list.
    pub fn build<'a>(pairs: impl IntoIterator<Item = (usize, &'a str)>) -> HostIndex {
        let mut ix = HostIndex::default();
        for (i, p) in pairs {
            if p == "*" {
                ix.any = Some(ix.any.map_or(i, |a| a.min(i)));
            } else if let Some(suffix) = p.strip_prefix('*') {
                ix.wild.push((suffix.to_string(), i));
            } else {
                let e = ix.exact.entry(p.to_string()).or_insert(i);
                *e = (*e).min(i);
            }
        }
        ix.wild
            .sort_by(|a, b| b.0.len().cmp(&a.0.len()).then(a.1.cmp(&b.1)));
        ix
    }

    /// The best item for any of `names` (concrete host names).
    pub fn best(&self, names: &[String]) -> Option<usize> {
        let mut best: Option<(usize, usize)> = None; // (name length, item)
        for n in names {
            if let Some(&i) = self.exact.get(n) {
                let better = match best {
                    None => true,
                    Some((len, item)) => n.len() > len || (n.len() == len && i < item),
                };
                if better {
                    best = Some((n.len(), i));
                }
            }
        }
        if let Some((_, i)) = best {
            return Some(i);
        }
        for (suffix, i) in &self.wild {
            if names
                .iter()
                .any(|n| n.len() > suffix.len() && n.ends_with(suffix.as_str()))
            {
                return Some(*i);
            }
        }
        self.any
    }
}

#[cfg(test)]
mod index_tests {
    use super::*;

    /// The index agrees with a full scan using `match_score` on a table of patterns and names.
    #[test]
    fn index_agrees_with_scan() {
        let items: Vec<Vec<&str>> = vec![
            vec!["*.example.com"],
            vec!["a.example.com", "b.example.com"],
            vec!["*.api.example.com"],
            vec!["a.example.com"],
            vec!["*"],
            vec!["reviews.prod.svc.cluster.local"],
            vec!["reviews.prod"],
            vec!["*.b.api.example.com", "*.other.org"],
            vec!["*.api.example.com"],
        ];
        let ix = HostIndex::build(
            items
                .iter()
                .enumerate()
                .flat_map(|(i, hs)| hs.iter().map(move |h| (i, *h))),
        );
        let scan = |names: &[String]| -> Option<usize> {
            let mut best: Option<(usize, usize)> = None;
            for (i, hs) in items.iter().enumerate() {
                for h in hs {
                    for n in names {
                        if let Some(s) = match_score(h, n) {
                            if best.is_none_or(|(b, _)| s > b) {
                                best = Some((s, i));
                            }
                        }
                    }
                }
            }
            best.map(|(_, i)| i)
        };
        let queries: Vec<Vec<&str>> = vec![
            vec!["a.example.com"],
            vec!["c.example.com"],
            vec!["x.api.example.com"],
            vec!["x.b.api.example.com"],
            vec!["z.other.org"],
            vec!["nothing.net"],
            vec!["reviews.prod.svc.cluster.local", "reviews.prod"],
            vec!["reviews.prod.svc", "reviews.prod"],
            vec!["example.com"],
        ];
        for q in queries {
            let names: Vec<String> = q.iter().map(|s| s.to_string()).collect();
            assert_eq!(ix.best(&names), scan(&names), "{q:?}");
        }
        assert_eq!(HostIndex::default().best(&["a".to_string()]), None);
    }
}
