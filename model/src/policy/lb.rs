//! Load balancing per destination (`trafficPolicy.loadBalancer`): ROUND_ROBIN, RANDOM,
//! LEAST_REQUEST (power of two choices on in-flight requests), PASSTHROUGH, and
//! `consistentHash` on a header, a cookie, the source IP or a query parameter (rendezvous
//! hashing: sticky per key, and only the keys of a removed endpoint move).

use std::borrow::Borrow;
use std::hash::{Hash, Hasher};
use std::net::{IpAddr, SocketAddr};

use serde_json::Value;

use crate::kinds::Endpoint;

/// What a `consistentHash` hashes on.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum HashKey {
    Header(String),
    Cookie(String),
    SourceIp,
    QueryParameter(String),
}

/// `loadBalancer`.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum LbPolicy {
    /// Istio's default when `loadBalancer` is unset or `UNSPECIFIED`.
    #[default]
    LeastRequest,
    RoundRobin,
    Random,
    /// Forward to the original destination the client addressed.
    Passthrough,
    ConsistentHash(HashKey),
}

/// Parse a `loadBalancer` object.
pub fn parse(v: &Value, field: &str) -> Result<LbPolicy, String> {
    let o = v
        .as_object()
        .ok_or_else(|| format!("{field}: expected a mapping, got {v}"))?;
    if let Some(s) = o.get("simple") {
        let s = s
            .as_str()
            .ok_or_else(|| format!("{field}.simple: expected a string, got {s}"))?;
        return match s {
            "ROUND_ROBIN" => Ok(LbPolicy::RoundRobin),
            "RANDOM" => Ok(LbPolicy::Random),
            "LEAST_REQUEST" | "LEAST_CONN" => Ok(LbPolicy::LeastRequest),
            "PASSTHROUGH" => Ok(LbPolicy::Passthrough),
            "UNSPECIFIED" => Ok(LbPolicy::default()),
            other => Err(format!(
                "{field}.simple: {other:?} is not ROUND_ROBIN, RANDOM, LEAST_REQUEST or PASSTHROUGH"
            )),
        };
    }
    if let Some(ch) = o.get("consistentHash") {
        let f = format!("{field}.consistentHash");
        let c = ch
            .as_object()
            .ok_or_else(|| format!("{f}: expected a mapping, got {ch}"))?;
        let s = |k: &str| -> Result<Option<String>, String> {
            match c.get(k) {
                None => Ok(None),
                Some(Value::String(x)) if !x.is_empty() => Ok(Some(x.clone())),
                Some(other) => Err(format!("{f}.{k}: expected a non-empty string, got {other}")),
            }
        };
        if let Some(h) = s("httpHeaderName")? {
            return Ok(LbPolicy::ConsistentHash(HashKey::Header(
                h.to_ascii_lowercase(),
            )));
        }
        if let Some(q) = s("httpQueryParameterName")? {
            return Ok(LbPolicy::ConsistentHash(HashKey::QueryParameter(q)));
        }
        if let Some(cookie) = c.get("httpCookie") {
            let name = cookie
                .get("name")
                .and_then(Value::as_str)
                .filter(|n| !n.is_empty())
                .ok_or_else(|| format!("{f}.httpCookie.name: required"))?;
            return Ok(LbPolicy::ConsistentHash(HashKey::Cookie(name.to_string())));
        }
        if c.get("useSourceIp").and_then(Value::as_bool) == Some(true) {
            return Ok(LbPolicy::ConsistentHash(HashKey::SourceIp));
        }
        return Err(format!(
            "{f}: expected one of httpHeaderName, httpCookie, useSourceIp, httpQueryParameterName"
        ));
    }
    Ok(LbPolicy::default())
}

/// The request facts a hash policy may read.
pub struct HashInput<'a> {
    pub headers: &'a http::HeaderMap,
    /// Path with `?query`.
    pub path: &'a str,
    pub source_ip: Option<IpAddr>,
}

/// The hash key value of a request; `None` when the request lacks it (then the pick is random).
pub fn key_of(k: &HashKey, input: &HashInput<'_>) -> Option<String> {
    match k {
        HashKey::Header(h) => input
            .headers
            .get(h.as_str())
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
        HashKey::Cookie(name) => input
            .headers
            .get_all(http::header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|kv| kv.trim().split_once('='))
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.to_string()),
        HashKey::SourceIp => input.source_ip.map(|ip| ip.to_string()),
        HashKey::QueryParameter(q) => input
            .path
            .split_once('?')
            .and_then(|(_, qs)| {
                qs.split('&')
                    .map(|kv| kv.split_once('=').unwrap_or((kv, "")))
                    .find(|(k, _)| k == q)
            })
            .map(|(_, v)| v.to_string()),
    }
}

/// Weighted random choice of an endpoint (a weight of 0 counts as 1, like an unset weight);
/// `None` when there are no candidates. A single candidate is taken without drawing.
pub fn weighted_pick<E: Borrow<Endpoint>>(
    endpoints: &[E],
    rng: &mut (impl rand::Rng + ?Sized),
) -> Option<SocketAddr> {
    match endpoints {
        [] => None,
        [only] => Some(only.borrow().addr),
        _ => {
            let weight = |e: &E| u64::from(e.borrow().weight.max(1));
            let total: u64 = endpoints.iter().map(weight).sum();
            let mut x = rng.gen_range(0..total);
            for e in endpoints {
                let w = weight(e);
                if x < w {
                    return Some(e.borrow().addr);
                }
                x -= w;
            }
            endpoints.last().map(|e| e.borrow().addr)
        }
    }
}

fn hash64<T: Hash + ?Sized>(a: &T, b: &SocketAddr) -> u64 {
    // SipHash with fixed keys: stable across requests and processes.
    #[allow(deprecated)]
    let mut h = std::hash::SipHasher::new_with_keys(0x72656d6f7261, 0x6c62);
    a.hash(&mut h);
    b.hash(&mut h);
    h.finish()
}

/// Weighted rendezvous hashing: the endpoint with the highest `-w / ln(u)` score.
pub fn rendezvous(key: &str, eps: &[&Endpoint]) -> Option<SocketAddr> {
    eps.iter()
        .map(|e| {
            let u = ((hash64(key, &e.addr) >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
            let w = f64::from(e.weight.max(1));
            (-w / u.ln(), e.addr)
        })
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, a)| a)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use serde_json::json;

    fn ep(port: u16, weight: u32) -> Endpoint {
        Endpoint {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            labels: Default::default(),
            weight,
        }
    }

    #[test]
    fn weighted_pick_empty_and_single() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        assert_eq!(weighted_pick::<Endpoint>(&[], &mut rng), None);
        assert_eq!(weighted_pick(&[ep(1, 0)], &mut rng), Some(ep(1, 0).addr));
    }

    #[test]
    fn weights_shape_the_distribution() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let eps = [ep(1, 90), ep(2, 10), ep(3, 0)];
        let refs: Vec<&Endpoint> = eps.iter().collect();
        let mut counts = [0u32; 3];
        for _ in 0..10_000 {
            let a = weighted_pick(&eps, &mut rng).unwrap();
            assert_eq!(
                weighted_pick(
                    &refs,
                    &mut rand::rngs::StdRng::seed_from_u64(u64::from(a.port()))
                ),
                weighted_pick(
                    &eps,
                    &mut rand::rngs::StdRng::seed_from_u64(u64::from(a.port()))
                ),
                "owned and borrowed candidates pick alike"
            );
            counts[(a.port() - 1) as usize] += 1;
        }
        // expected 8911 / 990 / 99 of 10000 (weights 90, 10, 1)
        assert!((8600..9200).contains(&counts[0]), "{counts:?}");
        assert!((800..1200).contains(&counts[1]), "{counts:?}");
        assert!((40..200).contains(&counts[2]), "{counts:?}");
    }

    #[test]
    fn parse_table() {
        let ok = [
            (json!({"simple": "ROUND_ROBIN"}), LbPolicy::RoundRobin),
            (json!({"simple": "RANDOM"}), LbPolicy::Random),
            (json!({"simple": "LEAST_REQUEST"}), LbPolicy::LeastRequest),
            (json!({"simple": "PASSTHROUGH"}), LbPolicy::Passthrough),
            (
                json!({"consistentHash": {"httpHeaderName": "X-User"}}),
                LbPolicy::ConsistentHash(HashKey::Header("x-user".into())),
            ),
            (
                json!({"consistentHash": {"httpCookie": {"name": "s", "ttl": "0s"}}}),
                LbPolicy::ConsistentHash(HashKey::Cookie("s".into())),
            ),
            (
                json!({"consistentHash": {"useSourceIp": true}}),
                LbPolicy::ConsistentHash(HashKey::SourceIp),
            ),
            (
                json!({"consistentHash": {"httpQueryParameterName": "u"}}),
                LbPolicy::ConsistentHash(HashKey::QueryParameter("u".into())),
            ),
            (json!({}), LbPolicy::LeastRequest),
        ];
        for (v, want) in ok {
            assert_eq!(parse(&v, "lb"), Ok(want), "{v}");
        }
        assert_eq!(
            parse(&json!({"simple": "FASTEST"}), "spec.trafficPolicy.loadBalancer"),
            Err("spec.trafficPolicy.loadBalancer.simple: \"FASTEST\" is not ROUND_ROBIN, RANDOM, LEAST_REQUEST or PASSTHROUGH".into())
        );
        assert_eq!(
            parse(
                &json!({"consistentHash": {"httpCookie": {"ttl": "1s"}}}),
                "lb"
            ),
            Err("lb.consistentHash.httpCookie.name: required".into())
        );
    }
}
