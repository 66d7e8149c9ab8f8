//! The loader on real directories: kubelet ConfigMap layout, multi-document files, ignored
//! kinds, visibility, the content hash, `/config_dump` summary, and errors with exact messages.

use std::path::Path;

use remora_proxy::rules::{load_dir, load_dir_all, LoadContext, Snapshot};

fn ctx() -> LoadContext {
    LoadContext {
        pod_labels: [("app".to_string(), "reviews".to_string())].into(),
        ..LoadContext::default()
    }
}

fn write(dir: &Path, name: &str, text: &str) {
    std::fs::write(dir.join(name), text).unwrap();
}

const VS_REVIEWS: &str = "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: reviews
spec:
  hosts: [reviews]
  http:
  - route:
    - destination: {host: reviews, subset: v1}
";

const DR_REVIEWS: &str = "apiVersion: networking.istio.io/v1beta1
kind: DestinationRule
metadata:
  name: reviews
spec:
  host: reviews
  subsets:
  - name: v1
    labels: {version: v1}
";

/// The kubelet's atomic writer layout: `..<timestamp>/` holds the files, `..data` points to
/// it, and each visible key is a symlink `name -> ..data/name`.
fn kubelet_layout(dir: &Path, stamp: &str, files: &[(&str, &str)]) {
    let data = dir.join(stamp);
    std::fs::create_dir(&data).unwrap();
    for (n, t) in files {
        std::fs::write(data.join(n), t).unwrap();
    }
    std::os::unix::fs::symlink(stamp, dir.join("..data")).unwrap();
    for (n, _) in files {
        std::os::unix::fs::symlink(format!("..data/{n}"), dir.join(n)).unwrap();
    }
}

#[test]
fn kubelet_layout_reads_each_key_once() {
    let d = tempfile::tempdir().unwrap();
    kubelet_layout(
        d.path(),
        "..2026_11_22_00_00_00.000000001",
        &[
            ("reviews-vs.yaml", VS_REVIEWS),
            ("reviews-dr.yml", DR_REVIEWS),
        ],
    );
    write(d.path(), ".hidden.yaml", "this: is not read: at all");
    write(d.path(), "README", "not yaml: [");
    // A key the kubelet is removing: its symlink points into the new ..data, where it is gone.
    std::os::unix::fs::symlink("..data/removed.yaml", d.path().join("removed.yaml")).unwrap();
    let s = load_dir(d.path(), &ctx(), 3).unwrap();
    assert_eq!(s.files, vec!["reviews-dr.yml", "reviews-vs.yaml"]);
    assert_eq!(
        remora_model::dump::summary(&s)["skipped_files"],
        serde_json::json!([
            "README: not a .yaml, .yml or .json file",
            "removed.yaml: dangling symlink"
        ])
    );
    assert_eq!(s.generation, 3);
    assert_eq!(s.source, format!("files:{}", d.path().display()));
    assert_eq!(s.virtual_services.len(), 1);
    assert_eq!(s.destination_rules.len(), 1);
    assert_eq!(
        s.destination_rules[0].meta.api_version,
        "networking.istio.io/v1beta1"
    );
}

#[test]
fn multi_document_files_and_versions() {
    let d = tempfile::tempdir().unwrap();
    let text = format!(
        "# comment\n---\n{VS_REVIEWS}---\n{DR_REVIEWS}---\n---\napiVersion: networking.istio.io/v1alpha3
kind: ServiceEntry
metadata: {{name: ext, namespace: other}}
spec:
  hosts: [api.example.com]
  ports: [{{number: 443, name: https, protocol: HTTPS}}]
  resolution: NONE
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: deny}}
spec: {{}}
---
apiVersion: networking.istio.io/v1
kind: EnvoyFilter
metadata: {{name: ef}}
spec: {{}}
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: gw}}
spec: {{}}
"
    );
    write(d.path(), "all.yaml", &text);
    let s = load_dir(d.path(), &ctx(), 1).unwrap();
    let c = s.counts();
    assert_eq!(
        (
            c.virtual_services,
            c.destination_rules,
            c.service_entries,
            c.authorization_policies,
            c.ignored
        ),
        (1, 1, 1, 1, 2)
    );
    assert_eq!(s.service_entries[0].meta.namespace, "other");
    // A comment before the first `---` is not a document; the empty one between `---`s is.
    assert_eq!(s.service_entries[0].meta.document, 4);
    let ignored: Vec<String> = s
        .ignored
        .iter()
        .map(|i| {
            format!(
                "{} doc {} {} {}: {}",
                i.file, i.document, i.kind, i.name, i.reason
            )
        })
        .collect();
    assert_eq!(
        ignored,
        vec![
            "all.yaml doc 6 EnvoyFilter default/ef: kind EnvoyFilter is not supported; ignored",
            "all.yaml doc 7 Gateway default/gw: Gateway configures gateway proxies, not sidecars; not applied",
        ]
    );
}

/// (files, the first error's one-line message)
#[test]
fn load_errors_have_exact_messages() {
    let cases: Vec<(Vec<(&str, String)>, String)> = vec![
        (
            vec![("bad.yaml", "apiVersion: networking.istio.io/v1\nkind: [".to_string())],
            "bad.yaml doc 1: invalid YAML: did not find expected node content at line 3 column 1, while parsing a flow node".to_string(),
        ),
        (
            vec![("r.yaml", format!("{VS_REVIEWS}---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: x}}\nspec:\n  hosts: [x]\n  http:\n  - route:\n    - destination: {{subset: v1}}\n"))],
            "r.yaml doc 2: spec.http[0].route[0].destination.host: required field is missing or empty".to_string(),
        ),
        (
            vec![("r.yaml", "kind: VirtualService\nmetadata: {name: x}\n".to_string())],
            "r.yaml doc 1: apiVersion: required field is missing or empty".to_string(),
        ),
        (
            vec![("r.yaml", "apiVersion: networking.istio.io/v2\nkind: VirtualService\nmetadata: {name: x}\n".to_string())],
            "r.yaml doc 1: apiVersion: unsupported version \"networking.istio.io/v2\" (networking.istio.io/v1, v1beta1, v1alpha3)".to_string(),
        ),
        (
            vec![("r.yaml", "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {}\n".to_string())],
            "r.yaml doc 1: metadata.name: required field is missing or empty".to_string(),
        ),
        (
            vec![("r.yaml", "- a\n- b\n".to_string())],
            "r.yaml doc 1: expected a Kubernetes object (a mapping with apiVersion, kind, metadata, spec)".to_string(),
        ),
        (
            vec![("a.yaml", VS_REVIEWS.to_string()), ("b.yaml", VS_REVIEWS.to_string())],
            "b.yaml doc 1: metadata.name: duplicate VirtualService default/reviews (first defined in a.yaml doc 1)".to_string(),
        ),
        (
            vec![("r.yaml", VS_REVIEWS.replace("subset: v1", "subset: v1, port: {number: 0}"))],
            "r.yaml doc 1: spec.http[0].route[0].destination.port.number: 0 is out of range 1..=65535".to_string(),
        ),
        (
            vec![("r.yaml", DR_REVIEWS.replace("- name: v1", "- name: v1\n  - name: v1"))],
            "r.yaml doc 1: spec.subsets[1].name: duplicate subset name \"v1\"".to_string(),
        ),
        (
            vec![("r.yaml", VS_REVIEWS.replace("hosts: [reviews]", "hosts: [reviews]\n  exportTo: .").to_string())],
            "r.yaml doc 1: spec.exportTo: expected a list, found the string \".\"".to_string(),
        ),
    ];
    for (files, want) in cases {
        let d = tempfile::tempdir().unwrap();
        for (n, t) in &files {
            write(d.path(), n, t);
        }
        let e = load_dir(d.path(), &ctx(), 1).unwrap_err();
        assert_eq!(e.to_string(), want);
    }
}

#[test]
fn non_utf8_and_missing_directory() {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("x.yaml"), [0xff, 0xfe, 0x00]).unwrap();
    let e = load_dir(d.path(), &ctx(), 1).unwrap_err();
    assert_eq!(
        e.to_string(),
        "x.yaml: not UTF-8 text: invalid utf-8 sequence of 1 bytes from index 0"
    );
    let missing = d.path().join("nope");
    let e = load_dir(&missing, &ctx(), 1).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "{}: cannot read the rules directory: No such file or directory (os error 2)",
            missing.display()
        )
    );
}

#[test]
fn all_errors_are_reported() {
    let d = tempfile::tempdir().unwrap();
    write(
        d.path(),
        "a.yaml",
        &VS_REVIEWS.replace("hosts: [reviews]", "hosts: []"),
    );
    write(
        d.path(),
        "b.yaml",
        &DR_REVIEWS.replace("host: reviews", "host: \"\""),
    );
    let errs = load_dir_all(d.path(), &ctx(), 1).unwrap_err();
    let lines: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
    assert_eq!(
        lines,
        vec![
            "a.yaml doc 1: spec.hosts: at least one host is required",
            "b.yaml doc 1: spec.host: required field is missing or empty",
        ]
    );
}

#[test]
fn hash_follows_visible_content_only() {
    let d = tempfile::tempdir().unwrap();
    write(d.path(), "a.yaml", VS_REVIEWS);
    let h1 = load_dir(d.path(), &ctx(), 1).unwrap().hash;
    assert_eq!(
        h1,
        load_dir(d.path(), &ctx(), 2).unwrap().hash,
        "same inputs, same hash"
    );
    write(d.path(), ".swap.yaml", "junk");
    assert_eq!(
        h1,
        load_dir(d.path(), &ctx(), 3).unwrap().hash,
        "hidden files do not count"
    );
    write(d.path(), "a.yaml", &format!("{VS_REVIEWS}\n"));
    let h2 = load_dir(d.path(), &ctx(), 4).unwrap().hash;
    assert_ne!(h1, h2, "content change");
    std::fs::rename(d.path().join("a.yaml"), d.path().join("b.yaml")).unwrap();
    assert_ne!(h2, load_dir(d.path(), &ctx(), 5).unwrap().hash, "rename");
    // An empty directory is a valid (empty) rule set with the SHA-256 of nothing.
    let e = tempfile::tempdir().unwrap();
    assert_eq!(
        load_dir(e.path(), &ctx(), 1).unwrap().hash,
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    );
}

fn names(s: &Snapshot) -> Vec<String> {
    s.virtual_services.iter().map(|v| v.meta.key()).collect()
}

#[test]
fn export_to_and_sidecar_scope() {
    let d = tempfile::tempdir().unwrap();
    let vs = |name: &str, ns: &str, host: &str, export: &str| {
        format!(
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  hosts: [{host}]\n  exportTo: {export}\n  http: [{{route: [{{destination: {{host: {host}}}}}]}}]\n---\n"
        )
    };
    let mut text = String::new();
    text += &vs("mine", "default", "a", "[\".\"]");
    text += &vs("private", "prod", "b", "[\".\"]");
    text += &vs("public", "prod", "c", "[\"*\"]");
    text += &vs("to-default", "prod", "d", "[default]");
    text += &vs("hidden", "prod", "e", "[\"~\"]");
    write(d.path(), "vs.yaml", &text);
    let s = load_dir(d.path(), &ctx(), 1).unwrap();
    assert_eq!(
        names(&s),
        vec!["default/mine", "prod/public", "prod/to-default"]
    );

    // A namespace Sidecar limiting egress to its own namespace drops prod's rules; a Sidecar
    // selecting this pod takes precedence over it; the root namespace default comes last.
    let sidecar = |name: &str, ns: &str, selector: &str, hosts: &str| {
        format!("apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n{selector}  egress: [{{hosts: {hosts}}}]\n---\n")
    };
    write(
        d.path(),
        "sc.yaml",
        &sidecar("ns-default", "default", "", "[\"./*\"]"),
    );
    let s = load_dir(d.path(), &ctx(), 2).unwrap();
    assert_eq!(s.sidecar.as_ref().unwrap().meta.name, "ns-default");
    assert_eq!(names(&s), vec!["default/mine"]);

    write(
        d.path(),
        "sc.yaml",
        &(sidecar("ns-default", "default", "", "[\"./*\"]")
            + &sidecar(
                "for-reviews",
                "default",
                "  workloadSelector: {labels: {app: reviews}}\n",
                "[\"prod/c.prod.svc.cluster.local\"]",
            )
            + &sidecar(
                "for-ratings",
                "default",
                "  workloadSelector: {labels: {app: ratings}}\n",
                "[\"*/*\"]",
            )),
    );
    let s = load_dir(d.path(), &ctx(), 3).unwrap();
    assert_eq!(s.sidecar.as_ref().unwrap().meta.name, "for-reviews");
    assert_eq!(names(&s), vec!["prod/public"]);

    write(
        d.path(),
        "sc.yaml",
        &sidecar("default", "remora-system", "", "[\"prod/*\"]"),
    );
    let s = load_dir(d.path(), &ctx(), 4).unwrap();
    assert_eq!(
        s.sidecar.as_ref().unwrap().meta.key(),
        "remora-system/default"
    );
    assert_eq!(names(&s), vec!["prod/public", "prod/to-default"]);
}

#[test]
fn summary_for_config_dump() {
    let d = tempfile::tempdir().unwrap();
    write(
        d.path(),
        "r.yaml",
        &format!("{VS_REVIEWS}---\n{DR_REVIEWS}"),
    );
    let s = load_dir(d.path(), &ctx(), 9).unwrap();
    let j = remora_model::dump::summary(&s);
    assert_eq!(j["generation"], 9);
    assert_eq!(j["hash"], s.hash.as_str());
    assert_eq!(j["source"], format!("files:{}", d.path().display()));
    assert_eq!(j["counts"]["virtual_services"], 1);
    assert_eq!(j["counts"]["http_routes"], 1);
    assert_eq!(j["virtual_services"][0]["meta"]["name"], "reviews");
    assert_eq!(
        j["virtual_services"][0]["hosts"][0],
        "reviews.default.svc.cluster.local"
    );
    assert_eq!(
        j["virtual_services"][0]["http"][0]["route"][0]["destination"]["subset"],
        "v1"
    );
    assert_eq!(
        j["destination_rules"][0]["subsets"][0]["labels"]["version"],
        "v1"
    );
    assert_eq!(j["pod_labels"]["app"], "reviews");
    let empty = remora_model::dump::summary(&Snapshot::empty(&ctx()));
    assert_eq!(
        (empty["generation"].as_u64(), empty["source"].as_str()),
        (Some(0), Some("empty"))
    );
}

/// Never panic on input: every Bookinfo file and our fixtures, with each line deleted and each
/// scalar value replaced by values of other types, either loads or fails with a message; the
/// validator and the router run on whatever loads.
#[test]
fn mutated_rule_sets_never_panic() {
    use rand::SeedableRng;
    use remora_proxy::rules::{load, load_inputs};
    let mut sources = Vec::new();
    // Without Istio's corpus (a SKIPPED line says so) our fixtures are still mutated.
    let istio = remora_corpus::istio("networking");
    for dir in istio.into_iter().chain([
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/validate/good"),
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/validate/bad"),
    ]) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "yaml") {
                sources.push(std::fs::read_to_string(p).unwrap());
            }
        }
    }
    // No DNS in tests: every name resolves to nothing.
    let no_dns = |_: &str| -> Vec<std::net::IpAddr> { Vec::new() };
    let replacements = [
        "[]",
        "{}",
        "-1",
        "\"x\"",
        "null",
        "1e99",
        "true",
        "99999999999",
        "\"(\"",
        "*",
    ];
    let (mut ok, mut err) = (0u32, 0u32);
    let h = http::HeaderMap::new();
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    for text in &sources {
        let lines: Vec<&str> = text.lines().collect();
        let mut variants = Vec::new();
        for i in 0..lines.len() {
            let mut v = lines.clone();
            v.remove(i);
            variants.push(v.join("\n"));
            if let Some((key, _)) = lines[i].split_once(": ") {
                for r in replacements {
                    let mut v: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
                    v[i] = format!("{key}: {r}");
                    variants.push(v.join("\n"));
                }
            }
        }
        for v in variants {
            let inputs = load::Inputs {
                dir: "memory".into(),
                files: vec![("f.yaml".to_string(), v.clone().into_bytes())],
                skipped: vec![],
                hash: "x".into(),
            };
            match load_inputs(&inputs, &ctx(), 1, &no_dns) {
                Ok(s) => {
                    ok += 1;
                    for authority in [
                        "reviews",
                        "details:9080",
                        "www.googleapis.com",
                        "productpage",
                        "",
                    ] {
                        let info = remora_model::route::RequestInfo {
                            authority,
                            method: "GET",
                            path: "/productpage?x=1",
                            headers: &h,
                            dst: ([10, 0, 0, 1], 80).into(),
                        };
                        let _ = remora_model::route::route(&s, &info, &mut rng);
                    }
                    let _ = remora_model::dump::summary(&s);
                }
                Err(errs) => {
                    err += 1;
                    assert!(!errs.is_empty());
                    for e in errs {
                        let line = e.to_string();
                        assert!(!line.contains('\n') && !e.reason.is_empty(), "{line:?}");
                    }
                }
            }
            let _ = remora_model::lint::run_files(&[("f.yaml", &v)], &ctx());
        }
    }
    println!("mutations: {ok} loaded, {err} rejected");
    assert!(ok > 100 && err > 100, "{ok} {err}");
}

#[test]
fn destination_rule_precedence_by_namespace() {
    let d = tempfile::tempdir().unwrap();
    let dr = |ns: &str, subset: &str| {
        format!("apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: r, namespace: {ns}}}\nspec:\n  host: reviews.prod.svc.cluster.local\n  subsets: [{{name: {subset}}}]\n---\n")
    };
    // File order puts the root namespace first; the proxy's namespace still wins.
    write(
        d.path(),
        "a.yaml",
        &(dr("remora-system", "root") + &dr("prod", "service") + &dr("default", "mine")),
    );
    let s = load_dir(d.path(), &ctx(), 1).unwrap();
    let pick = |s: &Snapshot| {
        s.destination_rule("reviews.prod.svc.cluster.local")
            .unwrap()
            .subsets[0]
            .name
            .clone()
    };
    assert_eq!(pick(&s), "mine");
    write(
        d.path(),
        "a.yaml",
        &(dr("remora-system", "root") + &dr("prod", "service")),
    );
    assert_eq!(pick(&load_dir(d.path(), &ctx(), 2).unwrap()), "service");
    write(d.path(), "a.yaml", &dr("remora-system", "root"));
    assert_eq!(pick(&load_dir(d.path(), &ctx(), 3).unwrap()), "root");
}

/// `resolution: DNS` with the system resolver, using only a name from /etc/hosts.
#[test]
fn dns_endpoints_from_etc_hosts() {
    let d = tempfile::tempdir().unwrap();
    write(
        d.path(),
        "se.yaml",
        "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: local}
spec:
  hosts: [local.example.internal]
  ports: [{number: 8080, name: http}]
  resolution: DNS
  endpoints: [{address: localhost, ports: {http: 18080}}]
",
    );
    let s = load_dir(d.path(), &ctx(), 1).unwrap();
    let eps = s
        .endpoints
        .endpoints("local.example.internal", 8080, None)
        .unwrap();
    assert!(!eps.is_empty());
    assert!(
        eps.iter()
            .all(|e| e.addr.ip().is_loopback() && e.addr.port() == 18080),
        "{eps:?}"
    );
    assert!(s.dns.contains_key("localhost"));
}

/// The output of `kubectl get virtualservices,destinationrules -o yaml` (a v1 List, with
/// server-side fields) loads as its items.
#[test]
fn kubectl_list_output_loads() {
    let d = tempfile::tempdir().unwrap();
    write(
        d.path(),
        "dump.yaml",
        "apiVersion: v1
kind: List
metadata:
  resourceVersion: \"\"
items:
- apiVersion: networking.istio.io/v1
  kind: VirtualService
  metadata:
    name: reviews
    namespace: default
    resourceVersion: \"4242\"
    uid: 0b0e7c9e-0000-4000-8000-000000000001
  spec:
    hosts: [reviews]
    http:
    - route:
      - destination: {host: reviews, subset: v1}
  status: {}
- apiVersion: networking.istio.io/v1
  kind: DestinationRule
  metadata: {name: reviews, namespace: default}
  spec:
    host: reviews
    subsets: [{name: v1, labels: {version: v1}}]
",
    );
    let s = load_dir(d.path(), &ctx(), 1).unwrap();
    assert_eq!(
        (s.virtual_services.len(), s.destination_rules.len()),
        (1, 1)
    );
    assert!(s.unknown_fields.is_empty(), "{:?}", s.unknown_fields);
    write(
        d.path(),
        "dump.yaml",
        "apiVersion: v1\nkind: List\nitems:\n- apiVersion: networking.istio.io/v1\n  kind: VirtualService\n  metadata: {name: x}\n  spec: {hosts: []}\n",
    );
    assert_eq!(
        load_dir(d.path(), &ctx(), 2).unwrap_err().to_string(),
        "dump.yaml doc 1: items[0].spec.hosts: at least one host is required"
    );
}

/// Files written on Windows: a UTF-8 byte-order mark and CRLF line ends.
#[test]
fn byte_order_mark_and_crlf() {
    let d = tempfile::tempdir().unwrap();
    let text = format!("\u{feff}{}", VS_REVIEWS.replace('\n', "\r\n"));
    write(d.path(), "win.yaml", &text);
    let s = load_dir(d.path(), &ctx(), 1).unwrap();
    assert_eq!(s.virtual_services[0].meta.name, "reviews");
    assert!(s.unknown_fields.is_empty(), "{:?}", s.unknown_fields);
}

/// DestinationRules of one host in one namespace are merged, as Istio does: subsets are
/// added (the first definition of a name wins), the first rule's trafficPolicy stays.
#[test]
fn destination_rules_of_one_host_are_merged() {
    let d = tempfile::tempdir().unwrap();
    write(
        d.path(),
        "a.yaml",
        "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews-base}
spec:
  host: reviews
  trafficPolicy: {loadBalancer: {simple: RANDOM}}
  subsets: [{name: v1, labels: {version: v1}}, {name: v2, labels: {version: v2}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews-canary}
spec:
  host: reviews.default.svc.cluster.local
  trafficPolicy: {loadBalancer: {simple: ROUND_ROBIN}}
  subsets: [{name: v2, labels: {version: other}}, {name: v3, labels: {version: v3}}]
",
    );
    let s = load_dir(d.path(), &ctx(), 1).unwrap();
    assert_eq!(s.destination_rules.len(), 1);
    let dr = &s.destination_rules[0];
    let subsets: Vec<(String, String)> = dr
        .subsets
        .iter()
        .map(|x| (x.name.clone(), x.labels["version"].clone()))
        .collect();
    assert_eq!(
        subsets,
        vec![
            ("v1".to_string(), "v1".to_string()),
            ("v2".to_string(), "v2".to_string()),
            ("v3".to_string(), "v3".to_string())
        ]
    );
    let lb = dr.traffic_policy.as_ref().unwrap().load_balancer.as_ref();
    assert_eq!(
        lb.map(|s| &s.value),
        Some(&remora_model::policy::lb::LbPolicy::Random)
    );
    assert_eq!(
        s.ignored.iter().map(|i| i.reason.as_str()).collect::<Vec<_>>(),
        vec!["merged into DestinationRule default/reviews-base (same host reviews.default.svc.cluster.local): subsets added: v3"]
    );
}
