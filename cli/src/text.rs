//! Text shared by the renderers of `proxy-config`, `proxy-status` and `describe`: a load balancer
//! policy, a string match and a time left, each written one way.

use std::fmt;

use serde_json::Value;

use remora_model::policy::lb::{HashKey, LbPolicy};
use remora_model::rules::StringMatch;

/// A load balancer policy in Istio's words: `ROUND_ROBIN`, `LEAST_REQUEST`, `RANDOM`,
/// `PASSTHROUGH`, `CONSISTENT_HASH header end-user` (or `cookie`, `source IP`, `query`).
pub fn lb(p: &LbPolicy) -> String {
    match p {
        LbPolicy::LeastRequest => "LEAST_REQUEST".to_string(),
        LbPolicy::RoundRobin => "ROUND_ROBIN".to_string(),
        LbPolicy::Random => "RANDOM".to_string(),
        LbPolicy::Passthrough => "PASSTHROUGH".to_string(),
        LbPolicy::ConsistentHash(k) => match k {
            HashKey::Header(h) => format!("CONSISTENT_HASH header {h}"),
            HashKey::Cookie(c) => format!("CONSISTENT_HASH cookie {c}"),
            HashKey::SourceIp => "CONSISTENT_HASH source IP".to_string(),
            HashKey::QueryParameter(q) => format!("CONSISTENT_HASH query {q}"),
        },
    }
}

/// A string match of a rule (`exact`, `prefix`, `regex`, or `{}`: present), from the loaded
/// rules or from a proxy's `/config_dump` (their serialized form).
///
/// `{}` writes it as a table cell: `v`, `v*`, `~v`, `(present)`; `{:#}` in words:
/// `exact "v"`, `prefix "v"`, `regex "v"`, `present`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Match<'a> {
    Exact(&'a str),
    Prefix(&'a str),
    Regex(&'a str),
    Present,
}

impl<'a> From<&'a StringMatch> for Match<'a> {
    fn from(m: &'a StringMatch) -> Self {
        match m {
            StringMatch::Exact(v) => Match::Exact(v),
            StringMatch::Prefix(v) => Match::Prefix(v),
            StringMatch::Regex(v, _) => Match::Regex(v),
            StringMatch::Present => Match::Present,
        }
    }
}

impl<'a> Match<'a> {
    /// The serialized form: `{"exact": v}`, `{"prefix": v}`, `{"regex": v}`, else present.
    pub fn from_dump(v: &'a Value) -> Self {
        let s = |k: &str| v.get(k).and_then(Value::as_str);
        if let Some(x) = s("exact") {
            Match::Exact(x)
        } else if let Some(x) = s("prefix") {
            Match::Prefix(x)
        } else if let Some(x) = s("regex") {
            Match::Regex(x)
        } else {
            Match::Present
        }
    }
}

impl fmt::Display for Match<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self, f.alternate()) {
            (Match::Exact(v), false) => f.write_str(v),
            (Match::Prefix(v), false) => write!(f, "{v}*"),
            (Match::Regex(v), false) => write!(f, "~{v}"),
            (Match::Present, false) => f.write_str("(present)"),
            (Match::Exact(v), true) => write!(f, "exact {v:?}"),
            (Match::Prefix(v), true) => write!(f, "prefix {v:?}"),
            (Match::Regex(v), true) => write!(f, "regex {v:?}"),
            (Match::Present, true) => f.write_str("present"),
        }
    }
}

/// A time left, short: `23h53m`, `25m00s`, `42s`.
pub fn short_duration(secs: i64) -> String {
    match secs {
        s if s >= 3600 => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
        s if s >= 60 => format!("{}m{:02}s", s / 60, s % 60),
        s => format!("{s}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn matches_both_ways() {
        let cell = |v: Value| Match::from_dump(&v).to_string();
        assert_eq!(cell(json!({"exact": "jason"})), "jason");
        assert_eq!(cell(json!({"prefix": "/api"})), "/api*");
        assert_eq!(cell(json!({"regex": "v[12]"})), "~v[12]");
        assert_eq!(cell(json!({})), "(present)");
        let words = |m: StringMatch| format!("{:#}", Match::from(&m));
        assert_eq!(words(StringMatch::Exact("jason".into())), "exact \"jason\"");
        assert_eq!(words(StringMatch::Prefix("/api".into())), "prefix \"/api\"");
        assert_eq!(words(StringMatch::Present), "present");
    }

    #[test]
    fn load_balancers() {
        assert_eq!(lb(&LbPolicy::LeastRequest), "LEAST_REQUEST");
        assert_eq!(
            lb(&LbPolicy::ConsistentHash(HashKey::Header(
                "end-user".into()
            ))),
            "CONSISTENT_HASH header end-user"
        );
        assert_eq!(
            lb(&LbPolicy::ConsistentHash(HashKey::SourceIp)),
            "CONSISTENT_HASH source IP"
        );
    }
}
