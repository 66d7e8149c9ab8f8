//! The policy parts of a rule set, decoded once at load: every DestinationRule `trafficPolicy`
//! is checked for each destination it can govern, every route's `corsPolicy` and every
//! `RateLimit` is decoded. An invalid one rejects the whole set (the proxy keeps its last good
//! one); the linter reports the same errors.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::Value;

use super::cors::of_file as cors_of_file;
use super::{ratelimit, traffic};
use crate::kinds::{DestinationRule, LoadContext, LoadError};

/// The policy parts of a rule set that are decoded apart from the kinds' own structs: each
/// VirtualService route's `corsPolicy` by (`namespace/name`, `spec.http[i]`), and remora's
/// `RateLimit` kind.
#[derive(Clone, Debug, Default)]
pub struct PolicyKinds {
    pub cors: BTreeMap<(String, String), Arc<super::cors::Cors>>,
    pub rate_limits: Vec<super::ratelimit::RateLimitRule>,
}

/// Decode the policy parts of a rule set once: every route's `corsPolicy` and every
/// `RateLimit`, after checking every DestinationRule `trafficPolicy`. The loader keeps the
/// result in the snapshot; the data plane never parses rule text again.
pub fn decode(
    files: &[(String, Vec<u8>)],
    drs: &[DestinationRule],
    ctx: &LoadContext,
) -> Result<PolicyKinds, Vec<LoadError>> {
    let mut errors = Vec::new();
    let mut kinds = PolicyKinds::default();
    for dr in drs {
        if let Err(reason) = check_destination_rule(dr) {
            errors.push(LoadError {
                file: dr.meta.file.clone(),
                document: dr.meta.document,
                field: String::new(),
                reason,
            });
        }
    }
    for (file, bytes) in files {
        let Ok(text) = std::str::from_utf8(bytes) else {
            // Reported by the loader.
            continue;
        };
        for ((vs, route), parsed) in cors_of_file(file, text, &ctx.namespace) {
            match parsed {
                Ok(c) => {
                    kinds.cors.insert((vs, route), Arc::new(c));
                }
                Err(reason) => errors.push(LoadError {
                    file: file.clone(),
                    document: 0,
                    field: String::new(),
                    reason: format!(
                        "VirtualService {vs} {route}: {}",
                        without_file(file, &reason)
                    ),
                }),
            }
        }
        match ratelimit::parse_file(file, text, &ctx.namespace, &ctx.cluster_domain) {
            Ok(mut rules) => kinds.rate_limits.append(&mut rules),
            Err(reason) => errors.push(LoadError {
                file: file.clone(),
                document: 0,
                field: String::new(),
                reason: without_file(file, &reason),
            }),
        }
    }
    if errors.is_empty() {
        Ok(kinds)
    } else {
        Err(errors)
    }
}

/// The policy parsers start their messages with the file name, which `LoadError` prints already.
fn without_file(file: &str, reason: &str) -> String {
    reason
        .strip_prefix(file)
        .map_or(reason, |r| r.trim_start_matches([' ', ':']))
        .to_string()
}

/// Every port a policy names in `portLevelSettings`.
fn ports_of(tp: Option<&Value>) -> Vec<u16> {
    tp.and_then(|t| t.get("portLevelSettings"))
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|e| {
            e.get("port")
                .and_then(|p| p.get("number"))
                .and_then(Value::as_u64)
                .and_then(|n| u16::try_from(n).ok())
        })
        .collect()
}

/// Interpret the policy of every destination the rule can govern: no subset and each subset,
/// on any port (0: no port-level entry) and on each port with its own settings.
fn check_destination_rule(dr: &DestinationRule) -> Result<(), String> {
    let mut ports = vec![0u16];
    ports.extend(ports_of(dr.traffic_policy.as_ref()));
    for s in &dr.subsets {
        ports.extend(ports_of(s.traffic_policy.as_ref()));
    }
    ports.sort_unstable();
    ports.dedup();
    let subsets = std::iter::once(None).chain(dr.subsets.iter().map(|s| Some(s.name.as_str())));
    for subset in subsets {
        for &port in &ports {
            let mut field = format!("DestinationRule {} trafficPolicy", dr.meta.key());
            if let Some(s) = subset {
                field = format!(
                    "DestinationRule {} subset {s:?} trafficPolicy",
                    dr.meta.key()
                );
            }
            if port != 0 {
                field.push_str(&format!(" (port {port})"));
            }
            traffic::parse(&traffic::effective_raw(dr, subset, port), &field)?;
        }
    }
    Ok(())
}
