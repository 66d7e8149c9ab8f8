//! `remora-proxy validate`: good and bad rule sets with the exact report lines, Istio's
//! Bookinfo rules in place, and the binary's exit code.

use std::path::{Path, PathBuf};

use remora_model::lint::{run, run_files, ValidationReport};
use remora_proxy::rules::LoadContext;

fn data(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/validate")
        .join(p)
}

const BAD_REPORT: &str = r#"error: a-schema.yaml doc 1: spec.http[0].route[0].weight: expected an integer, found the string "100" (remove the quotes)
error: a-schema.yaml doc 2: spec.ports[0].protocol: unknown protocol "POSTGRES" (HTTP, HTTPS, GRPC, GRPC-WEB, HTTP2, MONGO, MYSQL, REDIS, TCP, TLS, UDP)
error: b-subsets.yaml doc 1: spec.http[0].route[0].destination.subset: subset "v9" is not defined by any DestinationRule for host ratings.default.svc.cluster.local
error: c-weights.yaml doc 1: spec.http[0].route: weights sum to 90, not 100
warning: d-shadowed.yaml doc 1: spec.http[1].match[0]: never used: identical to spec.http[0].match[0]
warning: d-shadowed.yaml doc 1: spec.http[2]: unreachable: every match is identical to an earlier one (spec.http[0].match[0])
warning: d-shadowed.yaml doc 1: spec.http[4]: unreachable: spec.http[3] matches every request before it
warning: e-hosts-and-gateways.yaml doc 1: spec.http[0].route[0].destination.host: host billing.example.org is not defined by any ServiceEntry and is not a cluster-local service name
warning: e-hosts-and-gateways.yaml doc 2: kind: Gateway default/public: Gateway configures gateway proxies, not sidecars; not applied
warning: f-typos.yaml doc 1: spec.http[0].matches: unknown field, ignored (did you mean "match"?)
warning: f-typos.yaml doc 1: spec.http[1].timout: unknown field, ignored (did you mean "timeout"?)
warning: f-typos.yaml doc 1: spec.http[1]: unreachable: spec.http[0] matches every request before it
"#;

#[test]
fn good_rule_set_is_clean() {
    let r = run(&data("good"), &LoadContext::default());
    assert_eq!(r, ValidationReport::default(), "{r}");
    assert!(r.is_ok());
}

#[test]
fn bad_rule_set_exact_report() {
    let r = run(&data("bad"), &LoadContext::default());
    assert_eq!(r.to_string(), BAD_REPORT);
    assert_eq!(r.summary_line(), "4 errors, 8 warnings");
    assert!(!r.is_ok());
}

#[test]
fn missing_directory_is_an_error() {
    let r = run(&data("does-not-exist"), &LoadContext::default());
    assert_eq!(r.errors.len(), 1);
    assert_eq!(
        r.to_string(),
        format!(
            "error: {}: cannot read the rules directory: No such file or directory (os error 2)\n",
            data("does-not-exist").display()
        )
    );
}

fn vs(name: &str, body: &str) -> String {
    format!("apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: {name}}}\nspec:\n{body}---\n")
}

#[test]
fn single_file_findings() {
    let cases: Vec<(String, &str)> = vec![
        // Two VirtualServices for one host: sidecars do not merge them; the second is never used.
        (
            vs("a", "  hosts: [reviews]\n  http: [{route: [{destination: {host: reviews}}]}]\n")
                + &vs("b", "  hosts: [reviews.default.svc.cluster.local]\n  http: [{route: [{destination: {host: reviews}}]}]\n"),
            "error: t.yaml doc 2: spec.hosts[0]: host reviews.default.svc.cluster.local is also defined by VirtualService default/a (t.yaml doc 1); sidecars use only that one (IST0109)\n",
        ),
        // A VirtualService for a gateway only.
        (
            vs("gw", "  hosts: [shop.example.com]\n  gateways: [public-gw]\n  http: [{route: [{destination: {host: shop}}]}]\n"),
            "warning: t.yaml doc 1: spec.gateways: VirtualService default/gw is bound to gateways only (not \"mesh\"); sidecars do not apply it\n",
        ),
        // tcp routes are checked like http routes.
        (
            vs("db", "  hosts: [db]\n  tcp: [{route: [{destination: {host: db, subset: v1}}]}]\n"),
            "error: t.yaml doc 1: spec.tcp[0].route[0].destination.subset: subset \"v1\" is not defined by any DestinationRule for host db.default.svc.cluster.local\n",
        ),
        (
            vs("sni", "  hosts: [\"*.example.com\"]\n  tls: [{match: [{sniHosts: [a.example.com]}], route: [{destination: {host: a}, weight: 10}, {destination: {host: b}, weight: 10}]}]\n"),
            "error: t.yaml doc 1: spec.tls[0].route: weights sum to 20, not 100\n",
        ),
        // Weights over 100 are as wrong as under.
        (
            vs("w", "  hosts: [w]\n  http: [{route: [{destination: {host: w}, weight: 60}, {destination: {host: w}, weight: 60}]}]\n"),
            "error: t.yaml doc 1: spec.http[0].route: weights sum to 120, not 100\n",
        ),
        // A single destination needs no weight.
        (vs("one", "  hosts: [one]\n  http: [{route: [{destination: {host: one}}]}]\n"), ""),
        // A match block with no condition matches everything too.
        (
            vs("m", "  hosts: [m]\n  http:\n  - match: [{uri: {prefix: /a}}, {}]\n    route: [{destination: {host: m}}]\n  - match: [{uri: {prefix: /b}}]\n    route: [{destination: {host: m}}]\n"),
            "warning: t.yaml doc 1: spec.http[1]: unreachable: spec.http[0] matches every request before it\n",
        ),
        // Different conditions are not shadowing.
        (
            vs("n", "  hosts: [n]\n  http:\n  - match: [{uri: {prefix: /a}, ignoreUriCase: true}]\n    route: [{destination: {host: n}}]\n  - match: [{uri: {prefix: /a}, method: {exact: POST}}]\n    route: [{destination: {host: n}}]\n"),
            "",
        ),
        // A subset defined by a second DestinationRule of the host (merged) is defined.
        (
            "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: a}\nspec: {host: ratings, subsets: [{name: v1}]}\n---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: b}\nspec: {host: ratings, subsets: [{name: v2}]}\n---\n".to_string()
                + &vs("ratings", "  hosts: [ratings]\n  http: [{route: [{destination: {host: ratings, subset: v2}}]}]\n"),
            "",
        ),
        // Two DestinationRules for one host are merged; what the second loses is reported.
        (
            "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: r1}\nspec: {host: reviews, trafficPolicy: {loadBalancer: {simple: RANDOM}}, subsets: [{name: v1}]}\n---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: r2}\nspec: {host: reviews.default.svc.cluster.local, trafficPolicy: {loadBalancer: {simple: ROUND_ROBIN}}, subsets: [{name: v2}, {name: v1}]}\n".to_string(),
            "warning: t.yaml doc 2: spec.trafficPolicy: ignored: DestinationRule default/r1 (t.yaml doc 1) for the same host reviews.default.svc.cluster.local already sets trafficPolicy (the rules are merged)\n\
             warning: t.yaml doc 2: spec.subsets[1].name: ignored: subset \"v1\" of host reviews.default.svc.cluster.local is already defined by DestinationRule default/r1 (t.yaml doc 1)\n",
        ),
        // Resources a proxy of this namespace would not apply.
        (
            vs("private", "  hosts: [p]\n  exportTo: [\".\"]\n  http: [{route: [{destination: {host: p}}]}]\n").replace("{name: private}", "{name: private, namespace: prod}")
                + "apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {name: narrow}\nspec:\n  egress: [{hosts: [\"./*\"]}]\n---\n"
                + &vs("far", "  hosts: [far.example.com]\n  http: [{route: [{destination: {host: far.example.com}}]}]\n").replace("{name: far}", "{name: far, namespace: other}"),
            "warning: t.yaml doc 1: metadata: VirtualService prod/private is not applied by proxies in namespace default: not exported to this namespace (exportTo)\n\
             warning: t.yaml doc 3: metadata: VirtualService other/far is not applied by proxies in namespace default: outside the Sidecar's egress hosts\n\
             warning: t.yaml doc 3: spec.http[0].route[0].destination.host: host far.example.com is not defined by any ServiceEntry and is not a cluster-local service name\n",
        ),
        // A port the ServiceEntry does not have; a subset selecting none of its endpoints.
        (
            "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: pay}\nspec:\n  hosts: [pay.example.com]\n  ports: [{number: 80, name: http}, {number: 443, name: https}]\n  resolution: STATIC\n  endpoints: [{address: 127.0.0.9, labels: {track: stable}}]\n---\n".to_string()
                + "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: pay}\nspec:\n  host: pay.example.com\n  subsets: [{name: stable, labels: {track: stable}}, {name: canary, labels: {track: canary}}]\n---\n"
                + &vs("pay", "  hosts: [pay.example.com]\n  http: [{route: [{destination: {host: pay.example.com, subset: stable, port: {number: 8443}}}]}]\n"),
            "warning: t.yaml doc 2: spec.subsets[1].labels: subset \"canary\" selects none of the endpoints of ServiceEntry default/pay\n\
             warning: t.yaml doc 3: spec.http[0].route[0].destination.port.number: port 8443 is not a port of ServiceEntry default/pay (80, 443)\n",
        ),
        // Two namespace-wide Sidecars; a selector on the root namespace's Sidecar.
        (
            "apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {name: one}\nspec: {egress: [{hosts: [\"./*\"]}]}\n---\n".to_string()
                + "apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {name: two}\nspec: {egress: [{hosts: [\"*/*\"]}]}\n---\n"
                + "apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {name: root, namespace: remora-system}\nspec: {workloadSelector: {labels: {app: x}}, egress: [{hosts: [\"*/*\"]}]}\n",
            "warning: t.yaml doc 2: spec.workloadSelector: namespace default already has a Sidecar without workloadSelector (default/one in t.yaml doc 1); only that one is used\n\
             warning: t.yaml doc 3: spec.workloadSelector: a Sidecar in the root namespace remora-system with a workloadSelector applies only to pods of that namespace, not mesh-wide\n",
        ),
        // A wildcard ServiceEntry defines the hosts under it.
        (
            "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: wild}\nspec: {hosts: [\"*.example.com\"], ports: [{number: 443, name: tls}]}\n---\n".to_string()
                + &vs("x", "  hosts: [api.example.com]\n  http: [{route: [{destination: {host: api.example.com}}]}]\n"),
            "",
        ),
    ];
    for (text, want) in cases {
        let r = run_files(&[("t.yaml", &text)], &LoadContext::default());
        assert_eq!(r.to_string(), want, "{text}");
    }
}

#[test]
fn bookinfo_rules_in_place() {
    let bookinfo = remora_corpus::require!("networking");
    let ctx = LoadContext::default();
    let read = |f: &str| std::fs::read_to_string(bookinfo.join(f)).unwrap();
    // (files, exact report)
    let cases: Vec<(Vec<&str>, String)> = vec![
        (vec!["virtual-service-all-v1.yaml", "destination-rule-all.yaml"], String::new()),
        // ISTIO_MUTUAL is mesh mTLS: nothing to warn about.
        (
            vec!["virtual-service-reviews-80-20.yaml", "destination-rule-all-mtls.yaml"],
            String::new(),
        ),
        (vec!["virtual-service-reviews-jason-v2-v3.yaml", "destination-rule-reviews.yaml"], String::new()),
        (vec!["egress-rule-google-apis.yaml"], String::new()),
        (
            vec!["virtual-service-reviews-v3.yaml"],
            "error: virtual-service-reviews-v3.yaml doc 1: spec.http[0].route[0].destination.subset: subset \"v3\" is not defined by any DestinationRule for host reviews.default.svc.cluster.local\n".to_string(),
        ),
        (
            vec!["fault-injection-details-v1.yaml"],
            "warning: fault-injection-details-v1.yaml doc 1: spec.http[1]: unreachable: spec.http[0] matches every request before it\n".to_string(),
        ),
        (
            vec!["bookinfo-gateway.yaml"],
            "warning: bookinfo-gateway.yaml doc 1: kind: Gateway default/bookinfo-gateway: Gateway configures gateway proxies, not sidecars; not applied\n\
             warning: bookinfo-gateway.yaml doc 2: spec.gateways: VirtualService default/bookinfo is bound to gateways only (not \"mesh\"); sidecars do not apply it\n".to_string(),
        ),
    ];
    for (files, want) in cases {
        let texts: Vec<(&str, String)> = files.iter().map(|f| (*f, read(f))).collect();
        let refs: Vec<(&str, &str)> = texts.iter().map(|(n, t)| (*n, t.as_str())).collect();
        let r = run_files(&refs, &ctx);
        assert_eq!(r.to_string(), want, "{files:?}");
    }
}

#[test]
fn binary_exit_codes() {
    let bin = env!("CARGO_BIN_EXE_remora-proxy");
    let out = std::process::Command::new(bin)
        .args(["validate"])
        .arg(data("bad"))
        .env_remove("POD_NAMESPACE")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.starts_with(BAD_REPORT), "{stdout}");
    let out = std::process::Command::new(bin)
        .args(["validate"])
        .arg(data("good"))
        .env_remove("POD_NAMESPACE")
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// `--root-namespace` (`REMORA_ROOT_NAMESPACE`) reaches the loader: a mesh-wide policy of
/// istio-system is one only when that is the root; a bad name is one line naming the flag.
#[test]
fn binary_root_namespace_flag() {
    let bin = env!("CARGO_BIN_EXE_remora-proxy");
    let d = tempfile::tempdir().unwrap();
    std::fs::write(
        d.path().join("pa.yaml"),
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: default, namespace: istio-system}\nspec: {mtls: {mode: STRICT}}\n",
    )
    .unwrap();
    let run = |args: &[&str]| {
        let out = std::process::Command::new(bin)
            .arg("validate")
            .arg(d.path())
            .args(args)
            .env_remove("POD_NAMESPACE")
            .env_remove("REMORA_ROOT_NAMESPACE")
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let (code, stdout, _) = run(&[]);
    assert_eq!(code, Some(0), "{stdout}");
    assert!(
        stdout.contains("PeerAuthentication istio-system/default is not applied by proxies in namespace default: does not apply to this pod: in namespace istio-system, not this pod's namespace (default) nor the root namespace (remora-system)"),
        "{stdout}"
    );
    let (code, stdout, _) = run(&["--root-namespace", "istio-system"]);
    assert_eq!(code, Some(0), "{stdout}");
    assert!(!stdout.contains("not applied"), "{stdout}");
    let (code, _, stderr) = run(&["--root-namespace", "Istio_System"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("invalid value 'Istio_System' for '--root-namespace <ROOT_NAMESPACE>': \"Istio_System\" is not a namespace name"),
        "{stderr}"
    );
}
