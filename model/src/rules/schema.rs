//! The field names Istio's networking API defines, to point out unknown (usually misspelled)
//! fields: they are accepted and ignored, as the API server with preserved unknown fields
//! would, but a typo such as `matches:` for `match:` silently changes routing, so `validate`
//! warns and the watcher logs them.

use serde_json::Value;

/// The shape of one object: its known keys and, for some keys, the shape below them.
#[derive(Clone, Copy)]
enum Shape {
    /// An object with these keys; children: (key, shape of the value).
    Object(&'static [&'static str], &'static [(&'static str, Shape)]),
    /// A list of objects of this shape.
    List(&'static Shape),
    /// A mapping from free names to objects of this shape.
    Map(&'static Shape),
    /// Anything (not checked below this point).
    Any,
}

use Shape::*;

const PORT: Shape = Object(&["number", "name", "protocol", "targetPort"], &[]);
const DESTINATION: Shape = Object(&["host", "subset", "port"], &[("port", PORT)]);
const HEADER_OPS: Shape = Object(&["set", "add", "remove"], &[]);
const HEADERS: Shape = Object(
    &["request", "response"],
    &[("request", HEADER_OPS), ("response", HEADER_OPS)],
);
const STRING_MATCH: Shape = Object(&["exact", "prefix", "regex"], &[]);
const PERCENT: Shape = Object(&["value"], &[]);
const HTTP_MATCH: Shape = Object(
    &[
        "name",
        "uri",
        "scheme",
        "method",
        "authority",
        "headers",
        "port",
        "sourceLabels",
        "gateways",
        "queryParams",
        "ignoreUriCase",
        "withoutHeaders",
        "sourceNamespace",
        "statPrefix",
    ],
    &[
        ("uri", STRING_MATCH),
        ("scheme", STRING_MATCH),
        ("method", STRING_MATCH),
        ("authority", STRING_MATCH),
        ("headers", Map(&STRING_MATCH)),
        ("withoutHeaders", Map(&STRING_MATCH)),
        ("queryParams", Map(&STRING_MATCH)),
    ],
);
const HTTP_ROUTE_DESTINATION: Shape = Object(
    &["destination", "weight", "headers"],
    &[("destination", DESTINATION), ("headers", HEADERS)],
);
const FAULT: Shape = Object(
    &["delay", "abort"],
    &[
        (
            "delay",
            Object(
                &["fixedDelay", "percentage", "percent", "exponentialDelay"],
                &[("percentage", PERCENT)],
            ),
        ),
        (
            "abort",
            Object(
                &["httpStatus", "grpcStatus", "http2Error", "percentage"],
                &[("percentage", PERCENT)],
            ),
        ),
    ],
);
const HTTP_ROUTE: Shape = Object(
    &[
        "name",
        "match",
        "route",
        "redirect",
        "directResponse",
        "delegate",
        "rewrite",
        "timeout",
        "retries",
        "fault",
        "mirror",
        "mirrors",
        "mirrorPercentage",
        "mirrorPercent",
        "corsPolicy",
        "headers",
    ],
    &[
        ("match", List(&HTTP_MATCH)),
        ("route", List(&HTTP_ROUTE_DESTINATION)),
        (
            "redirect",
            Object(
                &[
                    "uri",
                    "authority",
                    "port",
                    "derivePort",
                    "scheme",
                    "redirectCode",
                ],
                &[],
            ),
        ),
        ("directResponse", Object(&["status", "body"], &[])),
        (
            "rewrite",
            Object(
                &["uri", "authority", "uriRegexRewrite"],
                &[("uriRegexRewrite", Object(&["match", "rewrite"], &[]))],
            ),
        ),
        (
            "retries",
            Object(
                &[
                    "attempts",
                    "perTryTimeout",
                    "retryOn",
                    "retryRemoteLocalities",
                    "retryIgnorePreviousHosts",
                    "backoff",
                ],
                &[],
            ),
        ),
        ("fault", FAULT),
        ("mirror", DESTINATION),
        ("mirrorPercentage", PERCENT),
        (
            "mirrors",
            List(&Object(
                &["destination", "percentage"],
                &[("destination", DESTINATION), ("percentage", PERCENT)],
            )),
        ),
        ("headers", HEADERS),
        ("corsPolicy", Any),
    ],
);
const L4_MATCH: Shape = Object(
    &[
        "sniHosts",
        "destinationSubnets",
        "port",
        "sourceLabels",
        "gateways",
        "sourceNamespace",
    ],
    &[],
);
const L4_ROUTE: Shape = Object(
    &["match", "route"],
    &[
        ("match", List(&L4_MATCH)),
        (
            "route",
            List(&Object(
                &["destination", "weight"],
                &[("destination", DESTINATION)],
            )),
        ),
    ],
);
const VIRTUAL_SERVICE: Shape = Object(
    &["hosts", "gateways", "http", "tls", "tcp", "exportTo"],
    &[
        ("http", List(&HTTP_ROUTE)),
        ("tcp", List(&L4_ROUTE)),
        ("tls", List(&L4_ROUTE)),
    ],
);
const SUBSET: Shape = Object(
    &["name", "labels", "trafficPolicy"],
    &[("trafficPolicy", Any)],
);
const DESTINATION_RULE: Shape = Object(
    &[
        "host",
        "trafficPolicy",
        "subsets",
        "exportTo",
        "workloadSelector",
    ],
    &[
        ("subsets", List(&SUBSET)),
        ("trafficPolicy", Any),
        ("workloadSelector", Object(&["matchLabels"], &[])),
    ],
);
const SERVICE_ENTRY: Shape = Object(
    &[
        "hosts",
        "addresses",
        "ports",
        "location",
        "resolution",
        "endpoints",
        "workloadSelector",
        "exportTo",
        "subjectAltNames",
    ],
    &[
        ("ports", List(&PORT)),
        (
            "endpoints",
            List(&Object(
                &[
                    "address",
                    "ports",
                    "labels",
                    "network",
                    "locality",
                    "weight",
                    "serviceAccount",
                ],
                &[],
            )),
        ),
    ],
);
const SIDECAR: Shape = Object(
    &[
        "workloadSelector",
        "ingress",
        "egress",
        "inboundConnectionPool",
        "outboundTrafficPolicy",
    ],
    &[
        ("workloadSelector", Object(&["labels"], &[])),
        (
            "egress",
            List(&Object(
                &["port", "bind", "captureMode", "hosts"],
                &[("port", PORT)],
            )),
        ),
        (
            "outboundTrafficPolicy",
            Object(&["mode", "egressProxy"], &[]),
        ),
        ("ingress", Any),
    ],
);
const TOP: &[&str] = &["apiVersion", "kind", "metadata", "spec", "status"];

/// One unknown field: its path and the closest known name, if any is close.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unknown {
    pub field: String,
    pub suggestion: Option<&'static str>,
    /// The name is a field of the enclosing object (mis-indented YAML).
    pub misplaced: bool,
}

impl Unknown {
    pub fn reason(&self) -> String {
        match (self.misplaced, self.suggestion) {
            (true, _) => {
                "unknown field here, ignored (it is a field one level up: check the indentation)"
                    .to_string()
            }
            (false, Some(s)) => format!("unknown field, ignored (did you mean \"{s}\"?)"),
            (false, None) => "unknown field, ignored".to_string(),
        }
    }
}

/// Unknown fields of a document of `kind` (only the kinds that are applied are checked).
pub fn unknown_fields(kind: &str, doc: &Value) -> Vec<Unknown> {
    let mut out = Vec::new();
    let Value::Object(top) = doc else {
        return out;
    };
    for k in top.keys() {
        if !TOP.contains(&k.as_str()) {
            out.push(unknown(k.clone(), k, TOP));
        }
    }
    let shape = match kind {
        "VirtualService" => VIRTUAL_SERVICE,
        "DestinationRule" => DESTINATION_RULE,
        "ServiceEntry" => SERVICE_ENTRY,
        "Sidecar" => SIDECAR,
        _ => return out,
    };
    if let Some(spec) = top.get("spec") {
        walk(spec, shape, "spec", &[], &mut out);
    }
    out
}

fn unknown(field: String, key: &str, known: &'static [&'static str]) -> Unknown {
    Unknown {
        field,
        misplaced: false,
        suggestion: suggestion(key, known),
    }
}

/// The known name closest to `key`, if it is close enough to be a likely typo.
pub fn suggestion(key: &str, known: &'static [&'static str]) -> Option<&'static str> {
    known
        .iter()
        .map(|k| {
            (
                edit_distance(&key.to_ascii_lowercase(), &k.to_ascii_lowercase()),
                *k,
            )
        })
        .filter(|(d, k)| *d <= 2.min(k.len() / 2) || k.eq_ignore_ascii_case(key))
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

/// Walk `v` as `shape`; `parent` holds the known keys of the object enclosing this one (lists
/// are transparent), to tell a mis-indented field from a misspelled one.
fn walk(
    v: &Value,
    shape: Shape,
    path: &str,
    parent: &'static [&'static str],
    out: &mut Vec<Unknown>,
) {
    match (shape, v) {
        (Object(known, children), Value::Object(m)) => {
            for (k, child) in m {
                let p = format!("{path}.{k}");
                if !known.contains(&k.as_str()) {
                    let mut u = unknown(p, k, known);
                    u.misplaced = parent.contains(&k.as_str());
                    out.push(u);
                    continue;
                }
                if let Some((_, s)) = children.iter().find(|(name, _)| name == k) {
                    walk(child, *s, &p, known, out);
                }
            }
        }
        (List(s), Value::Array(items)) => {
            for (i, item) in items.iter().enumerate() {
                walk(item, *s, &format!("{path}[{i}]"), parent, out);
            }
        }
        (Map(s), Value::Object(m)) => {
            for (k, child) in m {
                walk(child, *s, &format!("{path}.{k}"), &[], out);
            }
        }
        // Type mismatches are the decoder's business; `Any` is not checked.
        _ => {}
    }
}

/// Levenshtein distance (small strings only).
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typos_are_found_with_suggestions() {
        let doc: Value = serde_yaml_ng::from_str(
            r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: x}
spec:
  hosts: [x]
  http:
  - matches: [{uri: {prefix: /}}]
    route: [{destination: {host: x, subst: v1}, wieght: 10}]
  - match: [{headers: {end-user: {exactly: jason}}, ignoreUriCase: true}]
    route: [{destination: {host: x}}]
    corsPolicy: {anything: goes}
    timout: 1s
  frobnicate: true
"#,
        )
        .unwrap();
        let got: Vec<(String, Option<&str>)> = unknown_fields("VirtualService", &doc)
            .into_iter()
            .map(|u| (u.field, u.suggestion))
            .collect();
        assert_eq!(
            got,
            // Keys come in name order (the JSON map is sorted).
            vec![
                ("spec.frobnicate".to_string(), None),
                ("spec.http[0].matches".to_string(), Some("match")),
                (
                    "spec.http[0].route[0].destination.subst".to_string(),
                    Some("subset")
                ),
                ("spec.http[0].route[0].wieght".to_string(), Some("weight")),
                (
                    "spec.http[1].match[0].headers.end-user.exactly".to_string(),
                    Some("exact")
                ),
                ("spec.http[1].timout".to_string(), Some("timeout")),
            ]
        );
        let misplaced: Value = serde_yaml_ng::from_str(
            "spec:\n  hosts: [x]\n  http:\n  - match:\n    - uri: {prefix: /a}\n      route: [{destination: {host: x}}]\n",
        )
        .unwrap();
        let u = unknown_fields("VirtualService", &misplaced);
        assert_eq!(u.len(), 1);
        assert_eq!(u[0].field, "spec.http[0].match[0].route");
        assert_eq!(
            u[0].reason(),
            "unknown field here, ignored (it is a field one level up: check the indentation)"
        );
        assert_eq!(
            unknown_fields("VirtualService", &doc)[1].reason(),
            "unknown field, ignored (did you mean \"match\"?)"
        );
    }

    #[test]
    fn bookinfo_shapes_are_known() {
        let Some(dir) = remora_corpus::istio("networking") else {
            return;
        };
        let rd = std::fs::read_dir(dir).unwrap();
        for e in rd.flatten() {
            let text = std::fs::read_to_string(e.path()).unwrap();
            for doc in serde_yaml_ng::Deserializer::from_str(&text) {
                let v = <Value as serde::Deserialize>::deserialize(doc).unwrap();
                let kind = v["kind"].as_str().unwrap_or("").to_string();
                assert_eq!(unknown_fields(&kind, &v), vec![], "{:?}", e.path());
            }
        }
    }

    #[test]
    fn distances() {
        assert_eq!(edit_distance("matches", "match"), 2);
        assert_eq!(edit_distance("wieght", "weight"), 2);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("same", "same"), 0);
    }
}
