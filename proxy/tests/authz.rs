//! Process tests: AuthorizationPolicy enforced by the sidecar on inbound requests, with
//! Istio's semantics (DENY first, then ALLOW; an ALLOW policy that applies and matches nothing
//! denies; `spec: {}` allows nothing) and Istio's answer (403 `RBAC: access denied`, gRPC
//! PERMISSION_DENIED; on opaque TCP a closed connection whose log line carries Envoy's RBAC
//! termination details). Each case is a real proxy in front of a real HTTP server, driven by
//! plain-text clients (no peer principal: policies on principals deny them).

mod common;

use common::*;
use std::net::SocketAddr;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// A proxy whose inbound listener fronts `backend`, with `policies` (YAML) as its rules.
fn start(backend: SocketAddr, policies: &str) -> (ProxyProc, RulesDir) {
    let rules = RulesDir::new(&[("authz.yaml", policies)]);
    let mut o = ProxyOpts::new(rules.path());
    o.fixed_inbound = Some(backend);
    o.extra_args.push("--inbound-source-fallback".into());
    let mut p = ProxyProc::start(o);
    p.wait_ready();
    (p, rules)
}

fn policy(name: &str, spec: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: {name}, namespace: testns}}\n{spec}\n---\n"
    )
}

fn status(p: &ProxyProc, method: &str, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let r = http_request(p.ports.inbound_addr(), method, path, headers, b"").unwrap();
    (r.status, r.body_text())
}

#[test]
fn deny_then_allow_as_istio_orders_them() {
    let rt = rt();
    let backend = rt.block_on(spawn_http_echo("127.0.0.1:0".parse().unwrap(), "app"));
    let rules = policy(
        "deny-admin",
        "spec:\n  action: DENY\n  rules:\n  - to:\n    - operation: {paths: [\"/admin*\"]}",
    ) + &policy(
        "allow-api-reads",
        "spec:\n  action: ALLOW\n  rules:\n  - to:\n    - operation: {methods: [GET, HEAD], paths: [\"/api/*\", \"/admin/*\"]}\n  - when:\n    - key: request.headers[x-team]\n      values: [ops]",
    );
    let (p, _dir) = start(backend, &rules);
    type Case<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)], u16);
    let cases: &[Case] = &[
        ("GET", "/api/items", &[], 200),
        ("HEAD", "/api/items", &[], 200),
        // ALLOW policies apply and none matches.
        ("POST", "/api/items", &[], 403),
        ("GET", "/other", &[], 403),
        // The header condition of the second ALLOW rule.
        ("POST", "/other", &[("x-team", "ops")], 200),
        // DENY wins over a matching ALLOW rule.
        ("GET", "/admin/users", &[], 403),
        ("GET", "/admin/users", &[("x-team", "ops")], 403),
        // Path normalization: no sneaking past the DENY with dot segments or a double slash.
        ("GET", "/api/../admin/users", &[], 403),
        ("GET", "//admin/users", &[], 403),
    ];
    for (method, path, headers, want) in cases {
        let (got, body) = status(&p, method, path, headers);
        assert_eq!(got, *want, "{method} {path} {headers:?}: {body}");
        if *want == 403 {
            assert_eq!(body, "RBAC: access denied", "{method} {path}");
        }
    }
    let log = p.wait_stderr("request denied: denied by DENY policy testns/deny-admin rule 0");
    assert!(log.contains("/admin/users"), "{log}");
    p.wait_stderr(
        "request denied: denied: ALLOW policies testns/allow-api-reads apply and none matched",
    );
    let m = p.metrics();
    assert_eq!(
        metric_value(&m, "remora_authz_denied_total", &["kind=\"http\""]),
        6.0,
        "{m}"
    );
    assert_eq!(
        metric_value(
            &m,
            "istio_requests_total",
            &["response_code=\"403\"", "reporter=\"destination\""]
        ),
        6.0,
        "{m}"
    );
}

#[test]
fn empty_allow_policy_denies_everything_and_principals_need_mtls() {
    let rt = rt();
    let backend = rt.block_on(spawn_http_echo("127.0.0.1:0".parse().unwrap(), "app"));
    let (p, _dir) = start(backend, &policy("allow-nothing", "spec: {}"));
    assert_eq!(status(&p, "GET", "/", &[]).0, 403);
    drop(p);
    // A principal rule never matches a plain-text client; an ipBlocks rule does.
    let rules = policy(
        "allow-sleep",
        "spec:\n  rules:\n  - from:\n    - source: {principals: [cluster.local/ns/other/sa/sleep]}\n  - from:\n    - source: {ipBlocks: [127.0.0.0/8]}\n    to:\n    - operation: {paths: [/health]}",
    );
    let (p, _dir2) = start(backend, &rules);
    assert_eq!(status(&p, "GET", "/data", &[]).0, 403);
    assert_eq!(status(&p, "GET", "/health", &[]).0, 200);
    // gRPC: PERMISSION_DENIED (7).
    let r = http_request(
        p.ports.inbound_addr(),
        "POST",
        "/pkg.Svc/Call",
        &[("content-type", "application/grpc"), ("te", "trailers")],
        b"",
    )
    .unwrap();
    assert_eq!(
        r.header("grpc-status"),
        Some("7"),
        "{} {:?}",
        r.status,
        r.body_text()
    );
}

#[test]
fn dry_run_policies_only_log() {
    let rt = rt();
    let backend = rt.block_on(spawn_http_echo("127.0.0.1:0".parse().unwrap(), "app"));
    let rules = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: would-deny\n  namespace: testns\n  annotations: {istio.io/dry-run: \"true\"}\nspec:\n  action: DENY\n  rules:\n  - to:\n    - operation: {paths: [/x]}\n";
    let (p, _dir) = start(backend, rules);
    assert_eq!(status(&p, "GET", "/x", &[]).0, 200);
    p.wait_stderr("dry-run authorization: denied by DENY policy testns/would-deny rule 0");
}

/// `remoteIpBlocks` and `remote.ip` read `X-Forwarded-For` as Envoy does on Istio's sidecar
/// inbound listener: the last entry by default, the one `--num-trusted-proxies` places before
/// it otherwise, the peer's address without such an entry; `ipBlocks` keeps the peer's address.
#[test]
fn remote_ip_from_x_forwarded_for() {
    let rt = rt();
    let backend = rt.block_on(spawn_http_echo("127.0.0.1:0".parse().unwrap(), "app"));
    let rules = policy(
        "allow-office",
        "spec:\n  rules:\n  - from:\n    - source: {remoteIpBlocks: [203.0.113.0/24]}\n  - to:\n    - operation: {paths: [/peer]}\n    when:\n    - key: remote.ip\n      values: [127.0.0.1]",
    );
    let (p, _dir) = start(backend, &rules);
    type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], u16);
    let cases: &[Case] = &[
        (
            "/",
            &[("x-forwarded-for", "198.51.100.1, 203.0.113.7")],
            200,
        ),
        (
            "/",
            &[("x-forwarded-for", "203.0.113.7, 198.51.100.1")],
            403,
        ),
        ("/", &[], 403),
        ("/", &[("x-forwarded-for", "not-an-ip")], 403),
        // Without XFF, remote.ip is the peer's address.
        ("/peer", &[], 200),
        ("/peer", &[("x-forwarded-for", "198.51.100.1")], 403),
    ];
    for (path, headers, want) in cases {
        let (got, body) = status(&p, "GET", path, headers);
        assert_eq!(got, *want, "{path} {headers:?}: {body}");
    }
    drop(p);
    let dir = RulesDir::new(&[("authz.yaml", &rules)]);
    let mut o = ProxyOpts::new(dir.path());
    o.fixed_inbound = Some(backend);
    o.extra_args.push("--inbound-source-fallback".into());
    o.extra_args.push("--num-trusted-proxies=1".into());
    let mut p = ProxyProc::start(o);
    p.wait_ready();
    let (got, _) = status(
        &p,
        "GET",
        "/",
        &[("x-forwarded-for", "203.0.113.7, 198.51.100.1")],
    );
    assert_eq!(got, 200, "numTrustedProxies 1: the entry before the last");
    let (got, _) = status(&p, "GET", "/", &[("x-forwarded-for", "203.0.113.7")]);
    assert_eq!(got, 403, "too few entries: the peer's address");
}

/// An opaque TCP connection an AuthorizationPolicy denies is closed, and its access-log line
/// says why in Envoy's connection termination details (its RBAC network filter's words).
#[test]
fn a_denied_tcp_connection_logs_envoys_termination_details() {
    use std::io::{Read, Write};
    let rt = rt();
    let backend = rt.block_on(spawn_tcp_echo());
    let (p, _rules) = start(
        backend,
        &policy("deny-all", "spec: {action: DENY, rules: [{}]}"),
    );
    let mut c = std::net::TcpStream::connect(p.ports.inbound_addr()).unwrap();
    c.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    c.write_all(b"\x00\x01not http\n").unwrap();
    // Closed without an echo.
    let mut got = Vec::new();
    let _ = c.read_to_end(&mut got);
    assert!(got.is_empty(), "echoed {got:?}");
    let line = p.wait_log(|v| v["kind"] == "tcp");
    assert_eq!(
        line["connection_termination_details"],
        "rbac_access_denied_matched_policy[ns[testns]-policy[deny-all]-rule[0]]",
        "{line}"
    );
}
