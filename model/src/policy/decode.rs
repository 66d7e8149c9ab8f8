//! The policy parts of a rule set the snapshot keeps apart from the kinds (`PolicyKinds`):
//! every route's `corsPolicy`, decoded with its VirtualService by the rules decoder, and
//! remora's `RateLimit` kind, decoded here from the files, once at load. (A DestinationRule's
//! `trafficPolicy` stays with its rule, `traffic::TrafficPolicySpec`.) An invalid one rejects
//! the whole set (the proxy keeps its last good one); the linter reports the same errors.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::ratelimit;
use crate::kinds::{LoadContext, LoadError};

/// The policy parts of a rule set kept apart from the kinds' own structs: each VirtualService
/// route's `corsPolicy` by (`namespace/name`, `spec.http[i]`), and remora's `RateLimit` kind.
#[derive(Clone, Debug, Default)]
pub struct PolicyKinds {
    pub cors: BTreeMap<(String, String), Arc<super::cors::Cors>>,
    pub rate_limits: Vec<super::ratelimit::RateLimitRule>,
}

/// Decode every `RateLimit` of a rule set once. The loader keeps the result in the snapshot;
/// the data plane never parses rule text again.
pub fn rate_limits(
    files: &[(String, Vec<u8>)],
    ctx: &LoadContext,
) -> Result<Vec<ratelimit::RateLimitRule>, Vec<LoadError>> {
    let mut errors = Vec::new();
    let mut out = Vec::new();
    for (file, bytes) in files {
        let Ok(text) = std::str::from_utf8(bytes) else {
            // Reported by the loader.
            continue;
        };
        match ratelimit::parse_file(file, text, &ctx.namespace, &ctx.cluster_domain) {
            Ok(mut rules) => out.append(&mut rules),
            Err(reason) => errors.push(LoadError {
                file: file.clone(),
                document: 0,
                field: String::new(),
                reason: without_file(file, &reason),
            }),
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

/// The `RateLimit` parser starts its messages with the file name, which `LoadError` prints
/// already.
fn without_file(file: &str, reason: &str) -> String {
    reason
        .strip_prefix(file)
        .map_or(reason, |r| r.trim_start_matches([' ', ':']))
        .to_string()
}
