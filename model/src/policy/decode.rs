//! The policy parts of a rule set decoded apart from the kinds, once at load: every route's
//! `corsPolicy` and every `RateLimit`. (A DestinationRule's `trafficPolicy` is decoded with its
//! rule, `traffic::TrafficPolicySpec`.) An invalid one rejects the whole set (the proxy keeps
//! its last good one); the linter reports the same errors.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::cors::of_file as cors_of_file;
use super::ratelimit;
use crate::kinds::{LoadContext, LoadError};

/// The policy parts of a rule set that are decoded apart from the kinds' own structs: each
/// VirtualService route's `corsPolicy` by (`namespace/name`, `spec.http[i]`), and remora's
/// `RateLimit` kind.
#[derive(Clone, Debug, Default)]
pub struct PolicyKinds {
    pub cors: BTreeMap<(String, String), Arc<super::cors::Cors>>,
    pub rate_limits: Vec<super::ratelimit::RateLimitRule>,
}

/// Decode the policy parts of a rule set once: every route's `corsPolicy` and every
/// `RateLimit`. The loader keeps the result in the snapshot; the data plane never parses rule
/// text again.
pub fn decode(
    files: &[(String, Vec<u8>)],
    ctx: &LoadContext,
) -> Result<PolicyKinds, Vec<LoadError>> {
    let mut errors = Vec::new();
    let mut kinds = PolicyKinds::default();
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
