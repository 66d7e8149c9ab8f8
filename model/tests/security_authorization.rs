//! Istio's documented AuthorizationPolicy examples as tables, and Istio's own authz builder
//! inputs (`$REMORA_SHARED/anchors/istio/authz/{http,tcp}/*-in.yaml`).

use remora_model::kinds::LoadContext;
use remora_model::rules::snapshot_from_yaml;
use remora_model::security::authorization::*;
use remora_model::security::RuleRef;
use serde_json::Value;

fn policies(yaml: &str) -> Vec<AuthorizationPolicy> {
    let ctx = LoadContext {
        namespace: "foo".into(),
        pod_labels: [("app".to_string(), "httpbin".to_string())].into(),
        ..Default::default()
    };
    match snapshot_from_yaml(&[("p.yaml", yaml)], &ctx, 1) {
        Ok(s) => s.authorization_policies,
        Err(e) => panic!("{}", e[0]),
    }
}

fn http<'a>(method: &'a str, path: &'a str) -> Request<'a> {
    Request {
        source_principal: Some("cluster.local/ns/default/sa/sleep"),
        source_ip: Some("10.0.0.5".parse().unwrap()),
        destination_ip: Some("10.0.1.1".parse().unwrap()),
        destination_port: 8000,
        http: Some(HttpRequest {
            host: "httpbin.foo:8000",
            method,
            path,
            headers: vec![],
            auth: None,
        }),
        ..Default::default()
    }
}

fn tcp(port: u16) -> Request<'static> {
    Request {
        http: None,
        destination_port: port,
        ..http("GET", "/")
    }
}

fn jwt(claims: Value) -> Option<JwtAuth> {
    Some(JwtAuth {
        principal: format!(
            "{}/{}",
            claims["iss"].as_str().unwrap_or(""),
            claims["sub"].as_str().unwrap_or("")
        ),
        audiences: claims["aud"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default(),
        presenter: claims["azp"].as_str().map(String::from),
        claims,
    })
}

const HEAD: &str = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p, namespace: foo}\n";

fn allowed(spec: &str, req: &Request) -> bool {
    evaluate(&policies(&format!("{HEAD}{spec}")), req).is_allow()
}

#[test]
fn documented_examples() {
    let sleep = http("GET", "/info");
    let mut plain = http("GET", "/info");
    plain.source_principal = None;
    let mut from_test = http("GET", "/info");
    from_test.source_principal = Some("spiffe://cluster.local/ns/test/sa/x");
    let mut header = http("GET", "/");
    header.http.as_mut().unwrap().headers = vec![("Version", "v1")];
    let tcp8000 = tcp(8000);
    let mut jwt_req = http("GET", "/");
    jwt_req.http.as_mut().unwrap().auth = jwt(serde_json::json!({
        "iss": "https://accounts.google.com", "sub": "alice", "aud": ["a1", "a2"],
        "groups": ["dev", "ops"], "nested": {"key": {"k2": "v"}}
    }));
    let cases: Vec<(&str, &str, &Request, bool)> = vec![
        ("no policy at all", "", &sleep, true),
        ("allow-nothing (spec: {})", "spec: {}\n", &sleep, false),
        ("allow-all (rules: [{}])", "spec: {rules: [{}]}\n", &sleep, true),
        ("deny-all (DENY rules: [{}])", "spec: {action: DENY, rules: [{}]}\n", &sleep, false),
        ("DENY without rules matches nothing", "spec: {action: DENY}\n", &sleep, true),
        ("allow by principal", "spec:\n  rules: [{from: [{source: {principals: [cluster.local/ns/default/sa/sleep]}}]}]\n", &sleep, true),
        ("allow by principal, other", "spec:\n  rules: [{from: [{source: {principals: [cluster.local/ns/default/sa/other]}}]}]\n", &sleep, false),
        ("principals *: any mTLS peer", "spec:\n  rules: [{from: [{source: {principals: [\"*\"]}}]}]\n", &sleep, true),
        ("principals * needs mTLS", "spec:\n  rules: [{from: [{source: {principals: [\"*\"]}}]}]\n", &plain, false),
        ("notPrincipals * matches plain text", "spec:\n  rules: [{from: [{source: {notPrincipals: [\"*\"]}}]}]\n", &plain, true),
        ("allow by namespace", "spec:\n  rules: [{from: [{source: {namespaces: [test]}}]}]\n", &from_test, true),
        ("allow by namespace, other", "spec:\n  rules: [{from: [{source: {namespaces: [test]}}]}]\n", &sleep, false),
        ("namespace needs mTLS", "spec:\n  rules: [{from: [{source: {namespaces: [\"*\"]}}]}]\n", &plain, false),
        ("notNamespaces", "spec:\n  rules: [{from: [{source: {notNamespaces: [test]}}]}]\n", &sleep, true),
        ("path prefix", "spec:\n  rules: [{to: [{operation: {paths: [\"/info*\"]}}]}]\n", &sleep, true),
        ("path suffix", "spec:\n  rules: [{to: [{operation: {paths: [\"*/info\"]}}]}]\n", &sleep, true),
        ("path exact, other", "spec:\n  rules: [{to: [{operation: {paths: [/data]}}]}]\n", &sleep, false),
        ("notPaths", "spec:\n  rules: [{to: [{operation: {notPaths: [\"/info*\"]}}]}]\n", &sleep, false),
        ("method", "spec:\n  rules: [{to: [{operation: {methods: [GET]}}]}]\n", &sleep, true),
        ("method, other", "spec:\n  rules: [{to: [{operation: {methods: [POST]}}]}]\n", &sleep, false),
        ("host, case-insensitive, port ignored", "spec:\n  rules: [{to: [{operation: {hosts: [HTTPBIN.foo]}}]}]\n", &sleep, true),
        ("host with port", "spec:\n  rules: [{to: [{operation: {hosts: [\"httpbin.foo:8000\"]}}]}]\n", &sleep, true),
        ("port", "spec:\n  rules: [{to: [{operation: {ports: [\"8000\"]}}]}]\n", &sleep, true),
        ("notPorts", "spec:\n  rules: [{to: [{operation: {notPorts: [\"8000\"]}}]}]\n", &sleep, false),
        ("header condition", "spec:\n  rules: [{when: [{key: \"request.headers[version]\", values: [v1, v2]}]}]\n", &header, true),
        ("header condition, absent", "spec:\n  rules: [{when: [{key: \"request.headers[version]\", values: [v1]}]}]\n", &sleep, false),
        ("header notValues, absent header", "spec:\n  rules: [{when: [{key: \"request.headers[version]\", notValues: [v1]}]}]\n", &sleep, true),
        ("header notValues", "spec:\n  rules: [{when: [{key: \"request.headers[version]\", notValues: [\"v*\"]}]}]\n", &header, false),
        ("JWT iss claim", "spec:\n  rules: [{when: [{key: \"request.auth.claims[iss]\", values: [\"https://accounts.google.com\"]}]}]\n", &jwt_req, true),
        ("JWT list claim", "spec:\n  rules: [{when: [{key: \"request.auth.claims[groups]\", values: [ops]}]}]\n", &jwt_req, true),
        ("JWT nested claim", "spec:\n  rules: [{when: [{key: \"request.auth.claims[nested][key][k2]\", values: [v]}]}]\n", &jwt_req, true),
        ("JWT nested claim, other", "spec:\n  rules: [{when: [{key: \"request.auth.claims[nested][key]\", values: [v]}]}]\n", &jwt_req, false),
        ("JWT claim without token", "spec:\n  rules: [{when: [{key: \"request.auth.claims[iss]\", values: [\"*\"]}]}]\n", &sleep, false),
        ("requestPrincipals *", "spec:\n  rules: [{from: [{source: {requestPrincipals: [\"*\"]}}]}]\n", &jwt_req, true),
        ("requestPrincipals * without token", "spec:\n  rules: [{from: [{source: {requestPrincipals: [\"*\"]}}]}]\n", &sleep, false),
        ("request.auth.audiences", "spec:\n  rules: [{when: [{key: request.auth.audiences, values: [a2]}]}]\n", &jwt_req, true),
        ("ipBlocks", "spec:\n  rules: [{from: [{source: {ipBlocks: [10.0.0.0/24]}}]}]\n", &sleep, true),
        ("ipBlocks, other", "spec:\n  rules: [{from: [{source: {ipBlocks: [192.168.0.1]}}]}]\n", &sleep, false),
        ("notIpBlocks", "spec:\n  rules: [{from: [{source: {notIpBlocks: [10.0.0.5]}}]}]\n", &sleep, false),
        ("source.ip condition", "spec:\n  rules: [{when: [{key: source.ip, values: [10.0.0.0/8]}]}]\n", &sleep, true),
        ("destination.port condition", "spec:\n  rules: [{when: [{key: destination.port, values: [\"8000\"]}]}]\n", &sleep, true),
        ("serviceAccounts", "spec:\n  rules: [{from: [{source: {serviceAccounts: [default/sleep]}}]}]\n", &sleep, true),
        ("serviceAccounts in the policy's namespace", "spec:\n  rules: [{from: [{source: {serviceAccounts: [sleep]}}]}]\n", &sleep, false),
        ("DENY wins over ALLOW", "spec: {action: DENY, rules: [{to: [{operation: {methods: [GET]}}]}]}\n---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: a, namespace: foo}\nspec: {rules: [{}]}\n", &sleep, false),
        ("AUDIT alone does not deny", "spec: {action: AUDIT, rules: [{}]}\n", &sleep, true),
        ("ALLOW: from AND to AND when", "spec:\n  rules: [{from: [{source: {namespaces: [default]}}], to: [{operation: {methods: [GET]}}], when: [{key: \"request.headers[x]\", values: [y]}]}]\n", &sleep, false),
        ("ALLOW: any of from[]", "spec:\n  rules: [{from: [{source: {namespaces: [nope]}}, {source: {namespaces: [default]}}]}]\n", &sleep, true),
        // Opaque TCP: an ALLOW rule with HTTP-only fields is ignored, a DENY rule loses them.
        ("TCP: ALLOW with methods grants nothing", "spec:\n  rules: [{to: [{operation: {methods: [GET]}}]}]\n", &tcp8000, false),
        ("TCP: ALLOW with ports", "spec:\n  rules: [{to: [{operation: {ports: [\"8000\"]}}]}]\n", &tcp8000, true),
        ("TCP: ALLOW principal and methods", "spec:\n  rules: [{from: [{source: {principals: [\"*\"]}}], to: [{operation: {methods: [GET]}}]}]\n", &tcp8000, false),
        ("TCP: DENY with methods denies all", "spec: {action: DENY, rules: [{to: [{operation: {methods: [POST]}}]}]}\n", &tcp8000, false),
        ("TCP: DENY with methods and another port", "spec: {action: DENY, rules: [{to: [{operation: {ports: [\"9000\"], methods: [GET]}}]}]}\n", &tcp8000, true),
        ("TCP: DENY with request.headers denies all", "spec: {action: DENY, rules: [{when: [{key: \"request.headers[x]\", values: [y]}]}]}\n", &tcp8000, false),
        ("TCP: DENY keeps the TCP parts", "spec: {action: DENY, rules: [{from: [{source: {namespaces: [other], requestPrincipals: [\"*\"]}}]}]}\n", &tcp8000, true),
    ];
    for (name, spec, req, want) in cases {
        let got = if spec.is_empty() {
            evaluate(&[], req).is_allow()
        } else {
            allowed(spec, req)
        };
        assert_eq!(got, want, "{name}");
    }
}

#[test]
fn verdicts_name_the_policy_and_rule() {
    let ps = policies(&format!(
        "{HEAD}spec: {{action: DENY, rules: [{{to: [{{operation: {{paths: [/a]}}}}]}}, {{to: [{{operation: {{paths: [/b]}}}}]}}]}}\n---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: audit, namespace: foo}}\nspec: {{action: AUDIT, rules: [{{}}]}}\n---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: allow, namespace: foo}}\nspec: {{rules: [{{to: [{{operation: {{methods: [GET]}}}}]}}]}}\n"
    ));
    let audit = vec![RuleRef {
        policy: "foo/audit".into(),
        rule: 0,
    }];
    assert_eq!(
        evaluate(&ps, &http("GET", "/b")),
        Verdict::Deny {
            policy: "foo/p".into(),
            rule: Some(1),
            audit: audit.clone()
        }
    );
    assert_eq!(
        evaluate(&ps, &http("GET", "/c")),
        Verdict::Allow {
            by: Some(RuleRef {
                policy: "foo/allow".into(),
                rule: 0
            }),
            audit: audit.clone()
        }
    );
    assert_eq!(
        evaluate(&ps, &http("POST", "/c")),
        Verdict::Deny {
            policy: "foo/allow".into(),
            rule: None,
            audit
        }
    );
}

#[test]
fn dry_run_policies_are_not_enforced() {
    let ps = policies(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p, namespace: foo, annotations: {istio.io/dry-run: \"true\"}}\nspec: {action: DENY, rules: [{}]}\n",
    );
    assert!(ps[0].dry_run);
    assert!(evaluate(&ps, &http("GET", "/")).is_allow());
    assert!(!evaluate_dry_run(&ps, &http("GET", "/")).unwrap().is_allow());
}

#[test]
fn paths_are_normalized_and_templated() {
    for (raw, want) in [
        ("/a/b?x=1", "/a/b"),
        ("/a/./b/../c", "/a/c"),
        ("/a/%62", "/a/b"),
        ("/a/%2F", "/a/%2F"),
        ("/a\\b", "/a/b"),
        ("/..", "/"),
        ("/a/..", "/"),
        ("/%", "/%"),
        ("/é%", "/é%"),
    ] {
        assert_eq!(normalize_path(raw), want, "{raw}");
    }
    for (pat, path, want) in [
        ("/path/template/{*}", "/path/template/x", true),
        ("/path/template/{*}", "/path/template/x/y", false),
        ("/path/template/{*}", "/path/template/", false),
        ("/{**}/path/template", "/a/b/path/template", true),
        ("/{**}/path/template", "/path/template", true),
        ("/a/{**}", "/a/b/c", true),
        ("/a/{*}/c", "/a/b/c", true),
    ] {
        assert_eq!(path_match(pat, path), want, "{pat} {path}");
    }
    // The DENY of "/admin*" is not bypassed with dot segments or encoding.
    let spec = "spec: {action: DENY, rules: [{to: [{operation: {paths: [\"/admin*\"]}}]}]}\n";
    assert!(!allowed(spec, &http("GET", "/public/../admin/x")));
    assert!(!allowed(spec, &http("GET", "/%61dmin")));
}

fn check(spec: &str) -> String {
    let ctx = LoadContext {
        namespace: "foo".into(),
        ..Default::default()
    };
    match snapshot_from_yaml(&[("p.yaml", &format!("{HEAD}{spec}"))], &ctx, 1) {
        Ok(_) => String::new(),
        Err(e) => e[0].to_string(),
    }
}

#[test]
fn decoder_errors_name_field_value_and_reason() {
    let cases = [
        (
            "spec:\n  rules: [{from: [{source: {ipBlocks: [1.2.3.4, 10.0.0.0/33]}}]}]\n",
            "p.yaml doc 1: spec.rules[0].from[0].source.ipBlocks[1]: invalid IP address or CIDR range \"10.0.0.0/33\" (invalid IP address syntax); expected e.g. 10.1.2.3 or 10.0.0.0/16",
        ),
        (
            "spec:\n  rules: [{from: [{source: {notRemoteIpBlocks: [bad]}}]}]\n",
            "p.yaml doc 1: spec.rules[0].from[0].source.notRemoteIpBlocks[0]: invalid IP address or CIDR range \"bad\" (invalid IP address syntax); expected e.g. 10.1.2.3 or 10.0.0.0/16",
        ),
        (
            "spec:\n  rules: [{to: [{operation: {ports: [\"99999\"]}}]}]\n",
            "p.yaml doc 1: spec.rules[0].to[0].operation.ports[0]: invalid port \"99999\": 99999 is out of range (1 to 65535)",
        ),
        (
            "spec: {action: CUSTOM, provider: {name: ext}, rules: [{}]}\n",
            "p.yaml doc 1: spec.action: CUSTOM: external authorizers are not supported",
        ),
        (
            "spec: {action: PERMIT}\n",
            "p.yaml doc 1: spec.action: unknown variant `PERMIT`, expected one of `ALLOW`, `DENY`, `AUDIT`, `CUSTOM`",
        ),
        (
            "spec: {targetRefs: [{kind: Gateway, name: gw}]}\n",
            "p.yaml doc 1: spec.targetRefs: gateway/waypoint attachment is not supported (remora has no Kubernetes Gateway API gateways or waypoints; it applies security policies to sidecars and gateway pods by selector, namespace or mesh)",
        ),
        (
            "spec: {provider: {name: x}}\n",
            "p.yaml doc 1: spec.provider: provider is only allowed with action CUSTOM",
        ),
        (
            "spec:\n  rules: [{from: [{source: {principals: [a, \"\"]}}]}]\n",
            "p.yaml doc 1: spec.rules[0].from[0].source.principals[1]: empty value not allowed",
        ),
        (
            "spec:\n  rules: [{from: [{source: {}}]}]\n",
            "p.yaml doc 1: spec.rules[0].from[0].source: must not be empty",
        ),
        (
            "spec:\n  rules: [{from: []}]\n",
            "p.yaml doc 1: spec.rules[0].from: must not be empty (remove it to match every source)",
        ),
        (
            "spec:\n  rules: [{to: [{}]}]\n",
            "p.yaml doc 1: spec.rules[0].to[0].operation: required field is missing",
        ),
        (
            "spec:\n  rules: [{from: [{source: {serviceAccounts: [a], principals: [b]}}]}]\n",
            "p.yaml doc 1: spec.rules[0].from[0].source.serviceAccounts: cannot set serviceAccounts with namespaces or principals",
        ),
        (
            "spec:\n  rules: [{when: [{key: request.method, values: [GET]}]}]\n",
            "p.yaml doc 1: spec.rules[0].when[0].key: \"request.method\": unknown attribute (Istio's keys: request.headers[..], source.ip, remote.ip, source.namespace, source.principal, request.auth.principal, request.auth.audiences, request.auth.presenter, request.auth.claims[..], destination.ip, destination.port, connection.sni)",
        ),
        (
            "spec:\n  rules: [{when: [{key: \"request.headers[x]\"}]}]\n",
            "p.yaml doc 1: spec.rules[0].when[0]: at least one of values or notValues must be set for key request.headers[x]",
        ),
        (
            "spec:\n  rules: [{when: [{key: destination.ip, values: [1.2.3.4/40]}]}]\n",
            "p.yaml doc 1: spec.rules[0].when[0].values[0]: invalid IP address or CIDR range \"1.2.3.4/40\" (invalid IP address syntax); expected e.g. 10.1.2.3 or 10.0.0.0/16",
        ),
        (
            "spec:\n  rules: [{when: [{key: \"request.auth.claims[]\", values: [x]}]}]\n",
            "p.yaml doc 1: spec.rules[0].when[0].key: \"request.auth.claims[]\": expected request.auth.claims[<claim>] or nested request.auth.claims[<a>][<b>]",
        ),
        (
            "spec:\n  rules: {from: []}\n",
            "p.yaml doc 1: spec.rules: expected a list, found a mapping",
        ),
        (
            "spec:\n  selector: {matchLabels: {\"app*\": x}}\n",
            "p.yaml doc 1: spec.selector.matchLabels.app*: wildcard not allowed in label key match",
        ),
    ];
    for (spec, want) in cases {
        assert_eq!(check(spec), want, "{spec}");
    }
    let e = check("apiVersion: x\n");
    assert_eq!(
        e, "",
        "a repeated apiVersion key is the YAML parser's business"
    );
}

#[test]
fn unknown_fields_are_warnings_with_suggestions() {
    let ctx = LoadContext {
        namespace: "foo".into(),
        ..Default::default()
    };
    let yaml = format!(
        "{HEAD}spec:\n  rules:\n  - from: [{{source: {{principal: [a]}}}}]\n    to: [{{operation: {{methods: [GET], pathz: [/]}}}}]\n  actions: DENY\n"
    );
    let s = snapshot_from_yaml(&[("p.yaml", &yaml)], &ctx, 1).unwrap_err();
    // `principal` unknown leaves an empty source, which Istio refuses.
    assert_eq!(
        s[0].to_string(),
        "p.yaml doc 1: spec.rules[0].from[0].source: must not be empty"
    );
    let yaml = format!(
        "{HEAD}spec:\n  rules:\n  - from: [{{source: {{principals: [a], notNamespace: [b]}}}}]\n    to: [{{operation: {{methods: [GET], pathz: [/]}}}}]\n  actions: DENY\n"
    );
    let s = snapshot_from_yaml(&[("p.yaml", &yaml)], &ctx, 1).unwrap();
    let got: Vec<String> = s.unknown_fields.iter().map(|e| e.to_string()).collect();
    assert_eq!(
        got,
        // Keys in name order (the JSON map is sorted).
        vec![
            "p.yaml doc 1: spec.actions: unknown field, ignored (did you mean \"action\"?)",
            "p.yaml doc 1: spec.rules[0].from[0].source.notNamespace: unknown field, ignored (did you mean \"notNamespaces\"?)",
            "p.yaml doc 1: spec.rules[0].to[0].operation.pathz: unknown field, ignored (did you mean \"paths\"?)",
        ]
    );
}

fn shared() -> std::path::PathBuf {
    match std::env::var_os("REMORA_SHARED") {
        Some(p) => std::path::PathBuf::from(p),
        None => std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared"),
    }
}

/// Every AuthorizationPolicy input of Istio's authz builder test decodes, or is refused with
/// the expected error (CUSTOM; Envoy filter metadata conditions).
#[test]
fn istio_authz_corpus() {
    let refused: &[(&str, &str)] = &[
        ("http/allow-full-rule-in.yaml", "spec.rules[1].when[13].key: \"experimental.envoy.filters.a.b[c]\": Envoy filter metadata conditions are not supported"),
        ("http/custom-bad-multiple-providers-in.yaml", "spec.action: CUSTOM: external authorizers are not supported"),
        ("http/custom-simple-http-in.yaml", "spec.action: CUSTOM: external authorizers are not supported"),
        ("tcp/audit-both-http-tcp-in.yaml", "spec.rules[0].when[12].key: \"experimental.envoy.filters.a.b[c]\": Envoy filter metadata conditions are not supported"),
        ("tcp/custom-both-http-tcp-in.yaml", "spec.action: CUSTOM: external authorizers are not supported"),
        ("tcp/custom-only-http-in.yaml", "spec.action: CUSTOM: external authorizers are not supported"),
        ("tcp/deny-both-http-tcp-in.yaml", "spec.rules[10].when[12].key: \"experimental.envoy.filters.a.b[c]\": Envoy filter metadata conditions are not supported"),
    ];
    let ctx = LoadContext {
        namespace: "foo".into(),
        pod_labels: [
            ("app".to_string(), "httpbin".to_string()),
            ("version".to_string(), "v1".to_string()),
        ]
        .into(),
        ..Default::default()
    };
    let mut seen = 0;
    for dir in ["http", "tcp"] {
        let d = shared().join("anchors/istio/authz").join(dir);
        let mut names: Vec<_> = std::fs::read_dir(&d)
            .unwrap_or_else(|e| panic!("{}: {e} (set REMORA_SHARED)", d.display()))
            .flatten()
            .map(|e| e.file_name().to_string_lossy().to_string())
            .filter(|n| n.ends_with("-in.yaml"))
            .collect();
        names.sort();
        for name in names {
            seen += 1;
            let rel = format!("{dir}/{name}");
            let text = std::fs::read_to_string(d.join(&name)).unwrap();
            let res = snapshot_from_yaml(&[(rel.as_str(), text.as_str())], &ctx, 1);
            match (res, refused.iter().find(|(n, _)| *n == rel)) {
                (Ok(s), None) => {
                    assert!(
                        !s.authorization_policies.is_empty(),
                        "{rel}: nothing applied"
                    );
                    assert!(s.unknown_fields.is_empty(), "{rel}: {:?}", s.unknown_fields);
                    // Evaluating never panics, for HTTP and TCP.
                    let _ = evaluate(&s.authorization_policies, &http("GET", "/exact"));
                    let _ = evaluate(&s.authorization_policies, &tcp(80));
                }
                (Err(e), Some((_, want))) => {
                    assert_eq!(e[0].field.clone() + ": " + &e[0].reason, *want, "{rel}")
                }
                (Ok(_), Some((_, want))) => panic!("{rel}: loaded, expected {want}"),
                (Err(e), None) => panic!("{rel}: {}", e[0]),
            }
        }
    }
    assert_eq!(seen, 27);
}

/// What the corpus policies decide, for a few of them.
#[test]
fn istio_authz_corpus_decisions() {
    let load = |rel: &str| {
        let text = std::fs::read_to_string(shared().join("anchors/istio/authz").join(rel)).unwrap();
        let ctx = LoadContext {
            namespace: "foo".into(),
            pod_labels: [
                ("app".to_string(), "httpbin".to_string()),
                ("version".to_string(), "v1".to_string()),
            ]
            .into(),
            ..Default::default()
        };
        snapshot_from_yaml(&[(rel, text.as_str())], &ctx, 1)
            .unwrap()
            .authorization_policies
    };
    let with = |principal: &'static str| Request {
        source_principal: Some(principal),
        ..http("GET", "/")
    };
    // deny-and-allow: principal "deny" denied, "allow" allowed, others denied.
    let ps = load("http/deny-and-allow-in.yaml");
    assert!(!evaluate(&ps, &with("deny")).is_allow());
    assert!(evaluate(&ps, &with("allow")).is_allow());
    assert!(!evaluate(&ps, &with("x")).is_allow());
    // allow-nil-rule: ALLOW without rules denies everything.
    assert!(!evaluate(&load("http/allow-nil-rule-in.yaml"), &http("GET", "/")).is_allow());
    // tcp/allow-only-http: every rule has HTTP-only fields, so TCP is denied.
    let ps = load("tcp/allow-only-http-in.yaml");
    let mut r = tcp(80);
    r.source_principal = Some("cluster.local/ns/ns-1/sa/x");
    assert!(!evaluate(&ps, &r).is_allow());
    // tcp/allow-both-http-tcp: rule[3] (namespace ns-1, port 80) allows TCP on 80 only.
    let ps = load("tcp/allow-both-http-tcp-in.yaml");
    assert!(evaluate(&ps, &r).is_allow());
    r.destination_port = 8080;
    assert!(!evaluate(&ps, &r).is_allow());
    // trust-domains: any source from cluster.local.
    let ps = load("http/trust-domains-in.yaml");
    assert!(evaluate(&ps, &with("cluster.local/ns/a/sa/b")).is_allow());
    // dry-run-mix: only httpbin-2 is enforced.
    let ps = load("http/dry-run-mix-in.yaml");
    assert!(evaluate(&ps, &http("GET", "/another")).is_allow());
    assert!(!evaluate(&ps, &http("GET", "/allow")).is_allow());
}

/// The loader keeps the policies that apply to the pod (mesh, namespace, its labels) and
/// lists the others as ignored with the reason; counts and the typed dump include them.
#[test]
fn loader_scope_counts_and_dump() {
    // Istio's layout: the mesh-wide policy lives in istio-system, configured as the root.
    let ctx = LoadContext {
        namespace: "foo".into(),
        pod_labels: [("app".to_string(), "httpbin".to_string())].into(),
        root_namespace: "istio-system".into(),
        ..Default::default()
    };
    let yaml = "\
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: mesh, namespace: istio-system}
spec: {mtls: {mode: STRICT}}
---
apiVersion: security.istio.io/v1beta1
kind: PeerAuthentication
metadata: {name: wl, namespace: foo}
spec:
  selector: {matchLabels: {app: httpbin}}
  portLevelMtls: {\"8080\": {mode: DISABLE}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: other-app, namespace: foo}
spec: {selector: {matchLabels: {app: ratings}}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: other-ns, namespace: bar}
spec: {}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: ns-wide}
spec: {rules: [{}]}
---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: jwt, namespace: foo}
spec:
  jwtRules:
  - issuer: https://issuer.example
    jwksUri: https://issuer.example/jwks
    fromHeaders: [{name: x-jwt, prefix: 'Bearer '}]
    outputClaimToHeaders: [{header: x-sub, claim: sub}]
";
    let s = snapshot_from_yaml(&[("sec.yaml", yaml)], &ctx, 1).unwrap();
    let c = s.counts();
    assert_eq!(
        (
            c.peer_authentications,
            c.authorization_policies,
            c.request_authentications,
            c.ignored
        ),
        (2, 1, 1, 2)
    );
    let ignored: Vec<String> = s
        .ignored
        .iter()
        .map(|i| format!("{} {}: {}", i.kind, i.name, i.reason))
        .collect();
    assert_eq!(
        ignored,
        vec![
            "AuthorizationPolicy foo/other-app: does not apply to this pod: selector does not select this pod (label app=ratings is \"httpbin\" here)",
            "AuthorizationPolicy bar/other-ns: does not apply to this pod: in namespace bar, not this pod's namespace (foo) nor the root namespace (istio-system)",
        ]
    );
    assert_eq!(s.authorization_policies[0].meta.key(), "foo/ns-wide");
    let d = s.mtls_mode(8080);
    assert_eq!(
        (d.mode.to_string(), d.policy.as_deref(), d.port_level),
        ("DISABLE".to_string(), Some("foo/wl"), true)
    );
    let d = s.mtls_mode(80);
    assert_eq!(
        (d.mode.to_string(), d.policy.as_deref()),
        ("STRICT".to_string(), Some("istio-system/mesh"))
    );
    // The typed dump round-trips.
    let dump = remora_model::dump::RulesDump::of(&s);
    let text = serde_json::to_string(&dump).unwrap();
    let back: remora_model::dump::RulesDump = serde_json::from_str(&text).unwrap();
    assert_eq!(back, dump);
    assert_eq!(
        serde_json::to_value(&back.request_authentications[0].spec).unwrap(),
        serde_json::json!({"jwtRules": [{
            "issuer": "https://issuer.example",
            "jwksUri": "https://issuer.example/jwks",
            "fromHeaders": [{"name": "x-jwt", "prefix": "Bearer "}],
            "outputClaimToHeaders": [{"header": "x-sub", "claim": "sub"}],
            "forwardOriginalToken": false
        }]})
    );
}

#[test]
fn request_authentication_errors() {
    let ctx = LoadContext::default();
    let check = |rules: &str| -> String {
        let yaml = format!(
            "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {{name: r}}\nspec:\n  jwtRules:\n{rules}"
        );
        match snapshot_from_yaml(&[("r.yaml", &yaml)], &ctx, 1) {
            Ok(_) => String::new(),
            Err(e) => e[0].to_string(),
        }
    };
    assert_eq!(check("  - issuer: a\n    jwksUri: https://a/jwks\n    fromParams: [token]\n    fromCookies: [session]\n    forwardOriginalToken: true\n    outputPayloadToHeader: x-payload\n    timeout: 5s\n    presence: REQUIRED\n"), "");
    assert_eq!(
        check("  - jwksUri: https://a/jwks\n"),
        "r.yaml doc 1: spec.jwtRules[0].issuer: issuer must be set"
    );
    assert_eq!(
        check("  - issuer: a\n    jwksUri: ftp://a/jwks\n"),
        "r.yaml doc 1: spec.jwtRules[0].jwksUri: \"ftp://a/jwks\": url must have scheme http:// or https:// (at most 2048 characters)"
    );
    assert_eq!(
        check("  - issuer: a\n    jwksUri: https://a/jwks\n    jwks: '{}'\n"),
        "r.yaml doc 1: spec.jwtRules[0]: only one of jwks or jwksUri can be set"
    );
    assert_eq!(
        check("  - issuer: a\n    fromHeaders: [{prefix: x}]\n"),
        "r.yaml doc 1: spec.jwtRules[0].fromHeaders[0].name: required field is missing or empty"
    );
    assert_eq!(
        check("  - issuer: a\n    outputClaimToHeaders: [{header: 'x y', claim: sub}]\n"),
        "r.yaml doc 1: spec.jwtRules[0].outputClaimToHeaders[0].header: \"x y\": a header name of letters, digits, '-' and '_' is required"
    );
    assert_eq!(
        check("  - issuer: a\n    audiences: ['']\n"),
        "r.yaml doc 1: spec.jwtRules[0].audiences[0]: empty value not allowed"
    );
    assert_eq!(
        check("  - issuer: a\n    presence: MAYBE\n"),
        "r.yaml doc 1: spec.jwtRules[0].presence: unknown variant `MAYBE`, expected `OPTIONAL` or `REQUIRED`"
    );
    assert_eq!(
        check("  - issuer: a\n    forwardOriginalToken: yes please\n"),
        "r.yaml doc 1: spec.jwtRules[0].forwardOriginalToken: expected true or false, found the string \"yes please\""
    );
    assert_eq!(
        check("  - issuer: a\n    timeout: 0s\n"),
        "r.yaml doc 1: spec.jwtRules[0].timeout: \"0s\": must be a valid duration greater than 1ms"
    );
}

#[test]
fn security_versions() {
    let ctx = LoadContext::default();
    let e = snapshot_from_yaml(
        &[(
            "r.yaml",
            "apiVersion: security.istio.io/v1alpha1\nkind: PeerAuthentication\nmetadata: {name: r}\n",
        )],
        &ctx,
        1,
    )
    .unwrap_err();
    assert_eq!(
        e[0].to_string(),
        "r.yaml doc 1: apiVersion: unsupported version \"security.istio.io/v1alpha1\" (security.istio.io/v1, v1beta1)"
    );
    let e = snapshot_from_yaml(
        &[(
            "r.yaml",
            "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: r}\n---\napiVersion: security.istio.io/v1beta1\nkind: PeerAuthentication\nmetadata: {name: r}\n",
        )],
        &ctx,
        1,
    )
    .unwrap_err();
    assert_eq!(
        e[0].to_string(),
        "r.yaml doc 2: metadata.name: duplicate PeerAuthentication default/r (first defined in r.yaml doc 1)"
    );
}

#[test]
fn port_level_mtls_with_unquoted_port() {
    let ctx = LoadContext {
        namespace: "foo".into(),
        pod_labels: [("app".to_string(), "a".to_string())].into(),
        ..Default::default()
    };
    let yaml = "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: p}\nspec:\n  selector: {matchLabels: {app: a}}\n  portLevelMtls:\n    8080: {mode: STRICT}\n";
    let s = snapshot_from_yaml(&[("p.yaml", yaml)], &ctx, 1).unwrap_or_else(|e| panic!("{}", e[0]));
    assert_eq!(s.mtls_mode(8080).mode.to_string(), "STRICT");
}

#[test]
fn remote_ip_from_x_forwarded_for() {
    let ip = |s: &str| Some(s.parse::<std::net::IpAddr>().unwrap());
    // (X-Forwarded-For values, numTrustedProxies, remote.ip; None: the peer's address).
    type Case<'a> = (&'a [&'a str], u32, Option<std::net::IpAddr>);
    let cases: &[Case] = &[
        (&[], 0, None),
        (&["203.0.113.7"], 0, ip("203.0.113.7")),
        // The rightmost entry with the default: the one the last hop appended.
        (&["198.51.100.1, 203.0.113.7"], 0, ip("203.0.113.7")),
        (&["198.51.100.1, 203.0.113.7"], 1, ip("198.51.100.1")),
        (&["198.51.100.1,203.0.113.7"], 2, None),
        // Several headers are one list, in order.
        (
            &["198.51.100.1", "203.0.113.7, 192.0.2.9"],
            2,
            ip("198.51.100.1"),
        ),
        (&["2001:db8::1"], 0, ip("2001:db8::1")),
        // Not an address (a port, a name, empty): the peer's address.
        (&["203.0.113.7:4000"], 0, None),
        (&["unknown"], 0, None),
        (&["198.51.100.1, "], 0, None),
    ];
    for (xff, n, want) in cases {
        assert_eq!(
            remote_ip_from_xff(xff.iter().copied(), *n),
            *want,
            "{xff:?} numTrustedProxies {n}"
        );
    }
    // remoteIpBlocks and remote.ip read it; ipBlocks and source.ip keep the peer's address.
    let spec = "spec: {rules: [{from: [{source: {remoteIpBlocks: [203.0.113.0/24]}}]}]}";
    let cond = "spec: {rules: [{when: [{key: remote.ip, values: [203.0.113.7]}]}]}";
    let peer = "spec: {rules: [{from: [{source: {ipBlocks: [203.0.113.0/24]}}]}]}";
    let mut req = http("GET", "/");
    assert!(!allowed(spec, &req), "no XFF: the peer 10.0.0.5");
    req.remote_ip = remote_ip_from_xff(["198.51.100.1, 203.0.113.7"], 0);
    assert!(allowed(spec, &req));
    assert!(allowed(cond, &req));
    assert!(!allowed(peer, &req));
    req.remote_ip = remote_ip_from_xff(["198.51.100.1, 203.0.113.7"], 1);
    assert!(!allowed(spec, &req));
}

/// At a gateway (Envoy's `use_remote_address: true`), `X-Forwarded-For` is not trusted unless
/// `numTrustedProxies` says proxies sit in front: then the N-th entry from the right.
#[test]
fn remote_ip_at_the_gateway() {
    let ip = |s: &str| Some(s.parse::<std::net::IpAddr>().unwrap());
    type Case<'a> = (&'a [&'a str], u32, Option<std::net::IpAddr>);
    let cases: &[Case] = &[
        (&[], 0, None),
        // The default: the client's own address, whatever it claims.
        (&["203.0.113.7"], 0, None),
        (&["198.51.100.1, 203.0.113.7"], 0, None),
        // One trusted proxy (a cloud load balancer): the entry it appended, the last.
        (&["198.51.100.1, 203.0.113.7"], 1, ip("203.0.113.7")),
        (&["198.51.100.1, 203.0.113.7"], 2, ip("198.51.100.1")),
        (
            &["198.51.100.1", "203.0.113.7, 192.0.2.9"],
            3,
            ip("198.51.100.1"),
        ),
        // Too few entries, or not an address: the peer's address.
        (&["203.0.113.7"], 2, None),
        (&[], 1, None),
        (&["unknown"], 1, None),
    ];
    for (xff, n, want) in cases {
        assert_eq!(
            remote_ip_at_gateway(xff.iter().copied(), *n),
            *want,
            "{xff:?} numTrustedProxies {n}"
        );
    }
}

#[test]
fn verdict_wording() {
    let r = |p: &str, i| RuleRef {
        policy: p.into(),
        rule: i,
    };
    let cases = [
        (
            Verdict::Deny {
                policy: "shop/deny-admin".into(),
                rule: Some(1),
                audit: vec![],
            },
            "denied by DENY policy shop/deny-admin rule 1",
        ),
        (
            Verdict::Deny {
                policy: "shop/a, shop/b".into(),
                rule: None,
                audit: vec![],
            },
            "denied: ALLOW policies shop/a, shop/b apply and none matched",
        ),
        (
            Verdict::Allow {
                by: Some(r("shop/allow-get", 0)),
                audit: vec![],
            },
            "allowed by ALLOW policy shop/allow-get rule 0",
        ),
        (
            Verdict::Allow {
                by: None,
                audit: vec![],
            },
            "allowed (no ALLOW policy applies)",
        ),
        (
            Verdict::Allow {
                by: None,
                audit: vec![r("shop/audit", 0), r("shop/audit", 2)],
            },
            "allowed (no ALLOW policy applies); AUDIT rules matched: shop/audit rule 0, shop/audit rule 2",
        ),
    ];
    for (v, want) in cases {
        assert_eq!(v.describe(), want);
    }
}

/// `reads` tells the HTTP layer which request parts to copy; a wrong `false` would make header
/// and remote-address rules silently never match.
#[test]
fn reads_names_what_rules_use() {
    let r = |spec: &str| reads(&policies(&format!("{HEAD}{spec}")));
    assert_eq!(r("spec: {}\n"), Reads::default());
    assert_eq!(
        r("spec:\n  rules:\n  - to: [{operation: {paths: [/a]}}]\n"),
        Reads::default()
    );
    assert_eq!(
        r("spec:\n  rules:\n  - when: [{key: \"request.headers[x-a]\", values: [b]}]\n"),
        Reads {
            headers: true,
            remote_ip: false
        }
    );
    assert_eq!(
        r("spec:\n  rules:\n  - from: [{source: {remoteIpBlocks: [10.0.0.0/8]}}]\n"),
        Reads {
            headers: false,
            remote_ip: true
        }
    );
    assert_eq!(
        r("spec:\n  rules:\n  - from: [{source: {notRemoteIpBlocks: [10.0.0.0/8]}}]\n  - when: [{key: remote.ip, values: [10.0.0.1]}]\n"),
        Reads { headers: false, remote_ip: true }
    );
}

/// Hosts match without regard to case, with or without the port the client sent.
#[test]
fn hosts_ignore_case_and_port() {
    let spec = "spec:\n  rules:\n  - to: [{operation: {hosts: [\"*.Foo\"]}}]\n";
    for (host, want) in [
        ("httpbin.foo:8000", true),
        ("HTTPBIN.FOO", true),
        ("httpbin.bar:8000", false),
        ("[::1]:8000", false),
    ] {
        let mut req = http("GET", "/");
        req.http.as_mut().unwrap().host = host;
        assert_eq!(allowed(spec, &req), want, "{host}");
    }
}
