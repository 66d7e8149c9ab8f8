//! Kubernetes label selectors (`metav1.LabelSelector`), evaluated as the API server evaluates a
//! webhook's `namespaceSelector` and `objectSelector`: `matchLabels` and every
//! `matchExpressions` entry must hold; an absent or empty selector matches everything.

use std::collections::BTreeMap;
use std::fmt;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

/// One requirement of a selector.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Requirement {
    /// `matchLabels` entry, or `In` with one value.
    Equals(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    DoesNotExist(String),
}

impl fmt::Display for Requirement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Requirement::Equals(k, v) => write!(f, "{k}={v}"),
            Requirement::In(k, vs) => write!(f, "{k} In [{}]", vs.join(", ")),
            Requirement::NotIn(k, vs) => write!(f, "{k} NotIn [{}]", vs.join(", ")),
            Requirement::Exists(k) => write!(f, "{k} Exists"),
            Requirement::DoesNotExist(k) => write!(f, "{k} DoesNotExist"),
        }
    }
}

impl Requirement {
    pub fn key(&self) -> &str {
        match self {
            Requirement::Equals(k, _)
            | Requirement::In(k, _)
            | Requirement::NotIn(k, _)
            | Requirement::Exists(k)
            | Requirement::DoesNotExist(k) => k,
        }
    }

    /// Whether `labels` satisfy the requirement (`NotIn` holds when the label is absent, as in
    /// Kubernetes).
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        match self {
            Requirement::Equals(k, v) => labels.get(k) == Some(v),
            Requirement::In(k, vs) => labels.get(k).is_some_and(|v| vs.contains(v)),
            Requirement::NotIn(k, vs) => labels.get(k).is_none_or(|v| !vs.contains(v)),
            Requirement::Exists(k) => labels.contains_key(k),
            Requirement::DoesNotExist(k) => !labels.contains_key(k),
        }
    }

    /// The label as the object has it, for messages: `key=value` or `no key label`.
    pub fn observed(&self, labels: &BTreeMap<String, String>) -> String {
        match labels.get(self.key()) {
            Some(v) => format!("{}={v}", self.key()),
            None => format!("no {} label", self.key()),
        }
    }

    /// The `kubectl -l` form of the requirement.
    pub fn to_query(&self) -> String {
        match self {
            Requirement::Equals(k, v) => format!("{k}={v}"),
            Requirement::In(k, vs) => format!("{k} in ({})", vs.join(",")),
            Requirement::NotIn(k, vs) => format!("{k} notin ({})", vs.join(",")),
            Requirement::Exists(k) => k.clone(),
            Requirement::DoesNotExist(k) => format!("!{k}"),
        }
    }
}

/// A parsed selector: all requirements must hold. Empty = everything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Selector {
    pub requirements: Vec<Requirement>,
}

/// The outcome of evaluating a selector against labels, with the reason in words.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SelectorMatch {
    pub matched: bool,
    pub reason: String,
}

impl Selector {
    /// Reads a `metav1.LabelSelector`; `None` is the empty selector. `field` names the
    /// selector in errors (e.g. `webhooks[0].namespaceSelector`). The API server stores
    /// operators and values it does not check at every level: this says which is invalid.
    pub fn parse(v: Option<&LabelSelector>, field: &str) -> Result<Selector, String> {
        let Some(v) = v else {
            return Ok(Selector::default());
        };
        let mut reqs: Vec<Requirement> = v
            .match_labels
            .iter()
            .flatten()
            .map(|(k, val)| Requirement::Equals(k.clone(), val.clone()))
            .collect();
        for (i, e) in v.match_expressions.iter().flatten().enumerate() {
            let at = format!("{field}.matchExpressions[{i}]");
            if e.key.is_empty() {
                return Err(format!("{at}.key: missing or empty"));
            }
            let key = e.key.clone();
            let op = e.operator.as_str();
            let values = e.values.clone().unwrap_or_default();
            let req = match op {
                "In" | "NotIn" if values.is_empty() => {
                    return Err(format!(
                        "{at}.values: operator {op} needs at least one value"
                    ))
                }
                "Exists" | "DoesNotExist" if !values.is_empty() => {
                    return Err(format!(
                        "{at}.values: operator {op} takes no values, got {values:?}"
                    ))
                }
                "In" => Requirement::In(key, values),
                "NotIn" => Requirement::NotIn(key, values),
                "Exists" => Requirement::Exists(key),
                "DoesNotExist" => Requirement::DoesNotExist(key),
                other => {
                    return Err(format!(
                        "{at}.operator: invalid value {other:?}: must be In, NotIn, Exists or DoesNotExist"
                    ))
                }
            };
            reqs.push(req);
        }
        Ok(Selector { requirements: reqs })
    }

    pub fn is_empty(&self) -> bool {
        self.requirements.is_empty()
    }

    /// Evaluates against `labels`; the reason names the first requirement that fails, or all
    /// that hold.
    pub fn evaluate(&self, labels: &BTreeMap<String, String>) -> SelectorMatch {
        if self.is_empty() {
            return SelectorMatch {
                matched: true,
                reason: "empty selector (matches everything)".into(),
            };
        }
        for r in &self.requirements {
            if !r.matches(labels) {
                return SelectorMatch {
                    matched: false,
                    reason: format!("{} does not satisfy {r}", r.observed(labels)),
                };
            }
        }
        let held: Vec<String> = self.requirements.iter().map(|r| r.to_string()).collect();
        SelectorMatch {
            matched: true,
            reason: format!("matches {}", held.join(", ")),
        }
    }

    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.requirements.iter().all(|r| r.matches(labels))
    }

    /// The `labelSelector` query form (`a=b,c in (d),!e`).
    pub fn to_query(&self) -> String {
        self.requirements
            .iter()
            .map(Requirement::to_query)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The selector as a webhook configuration writes it: `Equals` requirements under
    /// `matchLabels`, the others under `matchExpressions`, in order (the inverse of
    /// [`Selector::parse`]).
    pub fn to_json(&self) -> serde_json::Value {
        let mut labels = serde_json::Map::new();
        let mut exprs = Vec::new();
        for r in &self.requirements {
            let (key, op, values) = match r {
                Requirement::Equals(k, v) => {
                    labels.insert(k.clone(), serde_json::Value::from(v.as_str()));
                    continue;
                }
                Requirement::In(k, vs) => (k, "In", Some(vs)),
                Requirement::NotIn(k, vs) => (k, "NotIn", Some(vs)),
                Requirement::Exists(k) => (k, "Exists", None),
                Requirement::DoesNotExist(k) => (k, "DoesNotExist", None),
            };
            let mut e = serde_json::json!({"key": key, "operator": op});
            if let Some(vs) = values {
                e["values"] = serde_json::json!(vs);
            }
            exprs.push(e);
        }
        let mut out = serde_json::Map::new();
        if !labels.is_empty() {
            out.insert("matchLabels".into(), serde_json::Value::Object(labels));
        }
        if !exprs.is_empty() {
            out.insert("matchExpressions".into(), serde_json::Value::Array(exprs));
        }
        serde_json::Value::Object(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn typed(v: Value) -> LabelSelector {
        serde_json::from_value(v).unwrap()
    }

    fn sel(v: Value) -> Selector {
        Selector::parse(Some(&typed(v)), "s").unwrap()
    }

    #[test]
    fn operators_as_kubernetes_evaluates_them() {
        let s = sel(
            json!({"matchExpressions": [{"key": "a", "operator": "In", "values": ["x", "y"]}]}),
        );
        assert!(s.matches(&labels(&[("a", "y")])));
        assert!(!s.matches(&labels(&[("a", "z")])));
        assert!(!s.matches(&labels(&[])), "In needs the label");

        let s =
            sel(json!({"matchExpressions": [{"key": "a", "operator": "NotIn", "values": ["x"]}]}));
        assert!(
            s.matches(&labels(&[])),
            "NotIn holds when the label is absent"
        );
        assert!(s.matches(&labels(&[("a", "y")])));
        assert!(!s.matches(&labels(&[("a", "x")])));

        let s = sel(json!({"matchExpressions": [{"key": "a", "operator": "Exists"}]}));
        assert!(s.matches(&labels(&[("a", "")])));
        assert!(!s.matches(&labels(&[("b", "x")])));

        let s = sel(json!({"matchExpressions": [{"key": "a", "operator": "DoesNotExist"}]}));
        assert!(!s.matches(&labels(&[("a", "")])));
        assert!(s.matches(&labels(&[("b", "x")])));
    }

    #[test]
    fn match_labels_and_expressions_are_anded() {
        let s = sel(json!({
            "matchLabels": {"team": "shop"},
            "matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["db"]}]
        }));
        assert!(s.matches(&labels(&[("team", "shop"), ("tier", "web")])));
        assert!(!s.matches(&labels(&[("team", "shop"), ("tier", "db")])));
        assert!(!s.matches(&labels(&[("tier", "web")])));
        let m = s.evaluate(&labels(&[("team", "shop"), ("tier", "db")]));
        assert_eq!(m.reason, "tier=db does not satisfy tier NotIn [db]");
        let m = s.evaluate(&labels(&[("tier", "web")]));
        assert_eq!(m.reason, "no team label does not satisfy team=shop");
        assert_eq!(s.to_query(), "team=shop,tier notin (db)");
    }

    #[test]
    fn absent_null_and_empty_selectors_match_everything() {
        for s in [
            Selector::parse(None, "s").unwrap(),
            sel(json!({})),
            sel(json!({"matchLabels": {}, "matchExpressions": []})),
        ] {
            let m = s.evaluate(&labels(&[]));
            assert!(m.matched);
            assert!(m.reason.contains("empty"), "{}", m.reason);
        }
    }

    #[test]
    fn invalid_selectors_are_rejected_naming_the_field() {
        let cases = [
            (
                json!({"matchExpressions": [{"key": "a", "operator": "In", "values": []}]}),
                "s.matchExpressions[0].values",
            ),
            (
                json!({"matchExpressions": [{"key": "a", "operator": "Exists", "values": ["x"]}]}),
                "takes no values",
            ),
            (
                json!({"matchExpressions": [{"key": "a", "operator": "Equals", "values": ["x"]}]}),
                "s.matchExpressions[0].operator",
            ),
            (
                json!({"matchExpressions": [{"operator": "Exists"}]}),
                "s.matchExpressions[0].key",
            ),
        ];
        for (v, want) in cases {
            let err = Selector::parse(Some(&typed(v.clone())), "s").unwrap_err();
            assert!(err.contains(want), "{v}: {err}");
        }
    }

    #[test]
    fn to_json_is_what_parse_reads() {
        let v = json!({
            "matchLabels": {"team": "shop"},
            "matchExpressions": [
                {"key": "a", "operator": "In", "values": ["x", "y"]},
                {"key": "b", "operator": "NotIn", "values": ["z"]},
                {"key": "c", "operator": "Exists"},
                {"key": "d", "operator": "DoesNotExist"}
            ]
        });
        let s = sel(v.clone());
        assert_eq!(s.to_json(), v);
        assert_eq!(sel(s.to_json()), s);
        assert_eq!(Selector::default().to_json(), json!({}));
    }
}
