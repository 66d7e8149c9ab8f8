//! Process tests of tracing: client → sidecar A (outbound) → sidecar B (inbound) → app, both
//! sidecars exporting to a real collector in the test (Zipkin v2 JSON, OTLP/HTTP protobuf or
//! OTLP/gRPC).
//! One request makes one trace: A's client span is the parent of B's server span and the app
//! sees B's span as its parent; incoming "not sampled" decisions are honoured, and so are the
//! request id's roll and mark; the sampling percentage holds over 1,000 requests; a stuck
//! collector costs dropped spans, not requests.

mod common;

use common::collector::{Collector, GotSpan};
use common::*;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn tracing_args(provider: &str, collector: SocketAddr, sampling: &str) -> Vec<String> {
    vec![
        format!("--tracing-provider={provider}"),
        format!("--tracing-address={collector}"),
        format!("--tracing-sampling={sampling}"),
        "--mesh-id=test-mesh".into(),
    ]
}

/// Sidecar B (inbound → `app`) and sidecar A (outbound → B's inbound listener), both ready.
fn pair(
    rules: &RulesDir,
    app: SocketAddr,
    provider: &str,
    collector: SocketAddr,
    sampling: &str,
) -> (ProxyProc, ProxyProc) {
    let mut ob = ProxyOpts::new(rules.path());
    ob.fixed_inbound = Some(app);
    ob.extra_args = tracing_args(provider, collector, sampling);
    let mut b = ProxyProc::start(ob);
    b.wait_ready();
    let mut oa = ProxyOpts::new(rules.path());
    oa.fixed_outbound = Some(b.ports.inbound_addr());
    oa.extra_args = tracing_args(provider, collector, sampling);
    let mut a = ProxyProc::start(oa);
    a.wait_ready();
    (a, b)
}

fn get(a: &ProxyProc, headers: &[(&str, &str)]) -> HttpResp {
    let mut h = vec![("host", "reviews:9080")];
    h.extend_from_slice(headers);
    let r = http_get(a.ports.outbound_addr(), "/reviews/1", &h).expect("request through A");
    assert_eq!(r.status, 200, "{}", r.body_text());
    r
}

fn one_trace(provider: &str) {
    let rt = rt();
    let app = rt.block_on(spawn_http_echo("127.0.0.1:0".parse().unwrap(), "app"));
    let col = rt.block_on(Collector::start(false));
    let rules = RulesDir::new(&[]);
    let (a, b) = pair(&rules, app, provider, col.addr, "100");
    let r = get(&a, &[("user-agent", "trace-test")]);
    let seen = r.json()["headers"].clone();
    let spans = col.wait_for("a client and a server span", |s| s.len() >= 2);
    assert_eq!(spans.len(), 2, "{spans:#?}");
    let client = spans
        .iter()
        .find(|s| s.kind == "CLIENT")
        .expect("client span");
    let server = spans
        .iter()
        .find(|s| s.kind == "SERVER")
        .expect("server span");
    // One trace; A's span is the root and B's parent.
    assert_eq!(client.trace_id, server.trace_id);
    assert_eq!(client.trace_id.len(), 32);
    assert_eq!(client.parent, None);
    assert_eq!(server.parent.as_deref(), Some(client.id.as_str()));
    assert_ne!(client.id, server.id);
    // The app sees B's span as the parent of whatever it does next, in both header families.
    let h = |k: &str| seen[k].as_str().unwrap_or_default().to_string();
    assert_eq!(h("x-b3-traceid"), client.trace_id);
    assert_eq!(h("x-b3-spanid"), server.id);
    assert_eq!(h("x-b3-parentspanid"), client.id);
    assert_eq!(h("x-b3-sampled"), "1");
    assert_eq!(
        h("traceparent"),
        format!("00-{}-{}-01", client.trace_id, server.id)
    );
    // Istio's names and tags.
    for s in [client, server] {
        assert_eq!(s.service, "testwl.testns", "{s:#?}");
        let t = |k: &str| s.tags.get(k).map(String::as_str).unwrap_or("<none>");
        assert_eq!(t("component"), "proxy");
        assert_eq!(t("istio.canonical_service"), "testwl");
        assert_eq!(t("istio.namespace"), "testns");
        assert_eq!(t("istio.mesh_id"), "test-mesh");
        assert!(t("node_id").starts_with("sidecar~127.0.0.1~"), "{s:#?}");
        assert_eq!(t("guid:x-request-id"), h("x-request-id"));
        assert_eq!(t("http.method"), "GET");
        assert_eq!(t("http.url"), "http://reviews:9080/reviews/1");
        assert_eq!(t("http.status_code"), "200");
        assert_eq!(t("response_flags"), "-");
        assert_eq!(t("user_agent"), "trace-test");
        assert_eq!(t("peer.address"), "127.0.0.1");
    }
    // No rules: A routes to the host's default route (the original destination's port, B's
    // inbound listener here); B names its inbound cluster by the app's port.
    let b_port = b.ports.inbound;
    assert_eq!(
        client.tags["upstream_cluster"],
        format!("outbound|{b_port}||reviews.testns.svc.cluster.local")
    );
    assert_eq!(
        client.name,
        format!("reviews.testns.svc.cluster.local:{b_port}/*")
    );
    assert_eq!(
        server.tags["upstream_cluster"],
        format!("inbound|{}||", app.port())
    );
    assert!(server.name.ends_with("/*"), "{}", server.name);
    // Each came over the provider's wire format.
    let format = match provider {
        "zipkin" => "zipkin",
        "opentelemetry" => "otlp",
        _ => "otlp-grpc",
    };
    assert!(spans.iter().all(|s| s.format == format), "{spans:#?}");
    assert_eq!(col.bad.lock().unwrap().len(), 0);
}

#[test]
fn zipkin_one_request_one_trace_client_span_parents_server_span() {
    one_trace("zipkin");
}

#[test]
fn otlp_one_request_one_trace_client_span_parents_server_span() {
    one_trace("opentelemetry");
}

#[test]
fn otlp_grpc_one_request_one_trace_client_span_parents_server_span() {
    one_trace("opentelemetry-grpc");
}

/// OTLP/gRPC to a collector that is not there: requests go on, each failed export is counted,
/// and the failures are logged once (per minute), as with the HTTP exporters.
#[test]
fn otlp_grpc_export_failures_are_counted_and_logged_once() {
    let rt = rt();
    let app = rt.block_on(spawn_http_echo("127.0.0.1:0".parse().unwrap(), "app"));
    // A free port nothing listens on: every connection is refused.
    let nobody: SocketAddr = format!("127.0.0.1:{}", common::free_ports(1)[0])
        .parse()
        .unwrap();
    let rules = RulesDir::new(&[]);
    let mut o = ProxyOpts::new(rules.path());
    o.fixed_outbound = Some(app);
    o.extra_args = tracing_args("opentelemetry-grpc", nobody, "100");
    let mut a = ProxyProc::start(o);
    a.wait_ready();
    // Batches go out at least every 500 ms while spans come: three rounds, three batches.
    for _ in 0..3 {
        get(&a, &[]);
        std::thread::sleep(Duration::from_millis(700));
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    let failures = loop {
        let m = a.metrics();
        let f = metric_value(&m, "remora_tracing_export_failures_total", &[]);
        if f >= 2.0 {
            break f;
        }
        assert!(
            Instant::now() < deadline,
            "export failures not counted:\n{m}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let m = a.metrics();
    assert_eq!(
        metric_value(&m, "remora_tracing_spans_exported_total", &[]),
        0.0,
        "{m}"
    );
    a.wait_stderr("tracing: spans not exported");
    let log = a.stderr_text();
    let warned = log
        .lines()
        .filter(|l| l.contains("tracing: spans not exported"))
        .count();
    assert_eq!(warned, 1, "{failures} failures, logged:\n{log}");
    assert!(log.contains("opentelemetry-grpc"), "{log}");
}

/// The request id's roll (its first 8 hex digits modulo 10,000 against the percentage × 100) is
/// each hop's: at 50 % in both sidecars, A samples exactly the requests whose generated id rolls
/// below 5,000 and marks their ids (Envoy's trace nibble `9`); the others get no trace header at
/// all, and B, rolling the same id, samples none of them (every server span has A's client span
/// as its parent).
#[test]
fn an_unsampled_request_carries_its_decision_in_its_request_id() {
    let rt = rt();
    let app = rt.block_on(spawn_http_echo("127.0.0.1:0".parse().unwrap(), "app"));
    let col = rt.block_on(Collector::start(false));
    let rules = RulesDir::new(&[]);
    let (a, b) = pair(&rules, app, "zipkin", col.addr, "50");
    let (mut sampled, mut unsampled) = (Vec::new(), 0);
    for _ in 0..40 {
        let r = get(&a, &[]);
        let seen = &r.json()["headers"];
        let id = seen["x-request-id"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        assert_eq!(id.len(), 36, "{seen}");
        let roll = u32::from_str_radix(&id[..8], 16).unwrap() % 10_000;
        if roll < 5000 {
            assert_eq!(&id[14..15], "9", "sampled, marked: {seen}");
            assert_eq!(seen["x-b3-sampled"], "1", "{seen}");
            sampled.push(id);
        } else {
            assert_eq!(&id[14..15], "4", "not sampled, not marked: {seen}");
            for k in [
                "x-b3-sampled",
                "x-b3-traceid",
                "x-b3-spanid",
                "traceparent",
                "b3",
            ] {
                assert!(seen.get(k).is_none(), "{k}: {seen}");
            }
            unsampled += 1;
        }
    }
    assert!(
        !sampled.is_empty() && unsampled > 0,
        "{sampled:?} {unsampled}"
    );
    let n = sampled.len();
    col.wait_for("a client and a server span per sampled request", |s| {
        s.len() >= 2 * n
    });
    std::thread::sleep(Duration::from_millis(700));
    let spans = col.spans();
    assert_eq!(spans.len(), 2 * n, "{spans:#?}");
    for id in &sampled {
        let of = |kind: &str| {
            spans
                .iter()
                .find(|s| s.kind == kind && s.tags["guid:x-request-id"] == *id)
                .unwrap_or_else(|| panic!("no {kind} span for {id}: {spans:#?}"))
        };
        let (client, server) = (of("CLIENT"), of("SERVER"));
        assert_eq!(server.parent.as_deref(), Some(client.id.as_str()));
    }
    for p in [&a, &b] {
        let m = p.metrics();
        assert_eq!(
            metric_value(&m, "remora_tracing_spans_exported_total", &[]),
            n as f64,
            "{m}"
        );
    }
}

/// An id that carries no roll (not starting with 8 hex digits) is rolled at random; when that
/// roll says no, the next hops are told so (`x-b3-sampled: 0`, once), the inbound sidecar keeps
/// the decision, and no span is made anywhere. A generated id's "no" needs no header.
#[test]
fn an_unsampled_request_with_an_opaque_id_tells_the_next_hops() {
    let rt = rt();
    let app = rt.block_on(spawn_http_echo("127.0.0.1:0".parse().unwrap(), "app"));
    let col = rt.block_on(Collector::start(false));
    let rules = RulesDir::new(&[]);
    let (a, b) = pair(&rules, app, "zipkin", col.addr, "0");
    for i in 0..5 {
        let rid = format!("rid-{i}");
        let r = get(&a, &[("x-request-id", &rid)]);
        let seen = &r.json()["headers"];
        assert_eq!(seen["x-request-id"], rid.as_str(), "{seen}");
        assert_eq!(seen["x-b3-sampled"], "0", "{seen}");
        for k in ["x-b3-traceid", "x-b3-spanid", "traceparent", "b3"] {
            assert!(seen.get(k).is_none(), "{k}: {seen}");
        }
        let r = get(&a, &[]);
        let seen = &r.json()["headers"];
        assert!(seen.get("x-b3-sampled").is_none(), "{seen}");
    }
    std::thread::sleep(Duration::from_millis(700));
    assert_eq!(col.spans().len(), 0);
    for p in [&a, &b] {
        let m = p.metrics();
        assert_eq!(
            metric_value(&m, "remora_tracing_spans_exported_total", &[]),
            0.0,
            "{m}"
        );
    }
}

/// Incoming ids at 50 % in both sidecars: an unmarked id that rolls 5,000 is sampled nowhere;
/// one that rolls 4,999 is sampled and marked; a marked one (`9`) is sampled although it rolls
/// 5,000; and an inbound sidecar alone honours a mark (`a`, forced) without any B3 or W3C header,
/// as the root of its trace.
#[test]
fn request_id_marks_and_rolls_are_honoured_at_each_hop() {
    let rt = rt();
    let app = rt.block_on(spawn_http_echo("127.0.0.1:0".parse().unwrap(), "app"));
    let col = rt.block_on(Collector::start(false));
    let rules = RulesDir::new(&[]);
    let (a, b) = pair(&rules, app, "zipkin", col.addr, "50");
    let no = "00001388-0000-4000-8000-000000000001";
    let yes = "00001387-0000-4000-8000-000000000002";
    let marked = "00001388-0000-9000-8000-000000000003";
    let forced = "00001388-0000-a000-8000-000000000004";
    let r = get(&a, &[("x-request-id", no)]);
    let seen = &r.json()["headers"];
    assert_eq!(seen["x-request-id"], no);
    assert!(seen.get("x-b3-sampled").is_none(), "{seen}");
    let r = get(&a, &[("x-request-id", yes)]);
    let seen = &r.json()["headers"];
    let yes_marked = "00001387-0000-9000-8000-000000000002";
    assert_eq!(seen["x-request-id"], yes_marked, "{seen}");
    assert_eq!(seen["x-b3-sampled"], "1", "{seen}");
    let r = get(&a, &[("x-request-id", marked)]);
    let seen = &r.json()["headers"];
    assert_eq!(seen["x-request-id"], marked);
    assert_eq!(seen["x-b3-sampled"], "1", "{seen}");
    // Straight to B's inbound listener, no trace headers.
    let direct = |rid: &str| {
        let h = [("host", "reviews:9080"), ("x-request-id", rid)];
        let r = http_get(b.ports.inbound_addr(), "/reviews/1", &h).expect("request to B");
        assert_eq!(r.status, 200, "{}", r.body_text());
        r
    };
    let seen = direct(no).json()["headers"].clone();
    assert!(seen.get("x-b3-sampled").is_none(), "{seen}");
    let seen = direct(forced).json()["headers"].clone();
    assert_eq!(seen["x-b3-sampled"], "1", "{seen}");
    assert_eq!(seen["x-request-id"], forced);
    col.wait_for("five spans", |s| s.len() >= 5);
    std::thread::sleep(Duration::from_millis(700));
    let spans = col.spans();
    let of = |rid: &str, kind: &str| {
        spans
            .iter()
            .filter(|s| s.tags["guid:x-request-id"] == rid && s.kind == kind)
            .count()
    };
    assert_eq!(spans.len(), 5, "{spans:#?}");
    assert_eq!((of(yes_marked, "CLIENT"), of(yes_marked, "SERVER")), (1, 1));
    assert_eq!((of(marked, "CLIENT"), of(marked, "SERVER")), (1, 1));
    let root = spans
        .iter()
        .find(|s| s.tags["guid:x-request-id"] == forced)
        .expect("B's span for the forced id");
    assert_eq!(
        (root.kind.as_str(), root.parent.as_deref()),
        ("SERVER", None)
    );
}

#[test]
fn incoming_not_sampled_decisions_are_honoured_and_forwarded_unchanged() {
    let rt = rt();
    let app = rt.block_on(spawn_http_echo("127.0.0.1:0".parse().unwrap(), "app"));
    let col = rt.block_on(Collector::start(false));
    let rules = RulesDir::new(&[]);
    let (a, b) = pair(&rules, app, "zipkin", col.addr, "100");
    let t1 = "11111111111111111111111111111111";
    let tp = format!("00-{}-00f067aa0ba902b7-00", "22".repeat(16));
    let b3_single = format!("{}-00f067aa0ba902b7-0", "33".repeat(16));
    let r = get(
        &a,
        &[
            ("x-b3-traceid", t1),
            ("x-b3-spanid", "00f067aa0ba902b7"),
            ("x-b3-sampled", "0"),
        ],
    );
    let seen = &r.json()["headers"];
    assert_eq!(seen["x-b3-traceid"], t1);
    assert_eq!(seen["x-b3-spanid"], "00f067aa0ba902b7");
    assert_eq!(seen["x-b3-sampled"], "0");
    assert!(seen.get("traceparent").is_none(), "{seen}");
    let r = get(&a, &[("traceparent", &tp)]);
    assert_eq!(r.json()["headers"]["traceparent"], tp.as_str());
    get(&a, &[("b3", &b3_single)]);
    get(&a, &[("b3", "0")]);
    // A sampled request after them: once its two spans are in, nothing else came.
    let r = get(&a, &[("x-b3-sampled", "1")]);
    let marker = r.json()["headers"]["x-b3-traceid"]
        .as_str()
        .unwrap()
        .to_string();
    col.wait_for("the sampled request's spans", |s| {
        s.iter().filter(|x| x.trace_id == marker).count() == 2
    });
    std::thread::sleep(Duration::from_millis(700));
    let spans: Vec<GotSpan> = col.spans();
    assert!(
        spans.iter().all(|s| s.trace_id == marker),
        "unsampled requests made spans: {spans:#?}"
    );
    assert_eq!(spans.len(), 2);
    let m = b.metrics();
    assert_eq!(
        metric_value(&m, "remora_tracing_spans_exported_total", &[]),
        1.0,
        "{m}"
    );
}

#[test]
fn ten_percent_sampling_over_1000_requests_is_within_three_sigma() {
    let rt = rt();
    let app = rt.block_on(spawn_http_echo("127.0.0.1:0".parse().unwrap(), "app"));
    let col = rt.block_on(Collector::start(false));
    let rules = RulesDir::new(&[]);
    let (a, _b) = pair(&rules, app, "zipkin", col.addr, "10");
    let n = 1000;
    let deadline = Instant::now() + Duration::from_secs(180);
    for i in 0..n {
        assert!(Instant::now() < deadline, "only {i} requests in 180 s");
        get(&a, &[]);
    }
    // Every sampled root at A has exactly one child at B (B honours A's decision either way).
    let exported =
        |p: &ProxyProc| metric_value(&p.metrics(), "remora_tracing_spans_exported_total", &[]);
    let wait = Instant::now() + Duration::from_secs(20);
    while Instant::now() < wait && (exported(&a) != exported(&_b) || exported(&a) == 0.0) {
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(700));
    let spans = col.spans();
    let clients: Vec<&GotSpan> = spans.iter().filter(|s| s.kind == "CLIENT").collect();
    let servers: Vec<&GotSpan> = spans.iter().filter(|s| s.kind == "SERVER").collect();
    let k = clients.len() as f64;
    let (mean, sigma) = (100.0, (1000.0f64 * 0.1 * 0.9).sqrt());
    eprintln!("sampled {k} of {n} (expected {mean} ± {:.1})", 3.0 * sigma);
    assert!(
        (k - mean).abs() <= 3.0 * sigma,
        "{k} sampled of 1000 at 10 %"
    );
    assert_eq!(servers.len(), clients.len());
    for s in &servers {
        assert!(
            clients
                .iter()
                .any(|c| Some(&c.id) == s.parent.as_ref() && c.trace_id == s.trace_id),
            "server span without its client parent: {s:#?}"
        );
    }
}

#[test]
fn a_stuck_collector_drops_and_counts_spans_without_slowing_requests() {
    let rt = rt();
    let app = rt.block_on(spawn_http_echo("127.0.0.1:0".parse().unwrap(), "app"));
    let col = rt.block_on(Collector::start(true));
    let rules = RulesDir::new(&[]);
    let mut o = ProxyOpts::new(rules.path());
    o.fixed_outbound = Some(app);
    o.extra_args = tracing_args("zipkin", col.addr, "100");
    o.extra_args.push("--tracing-queue-spans=4".into());
    let mut a = ProxyProc::start(o);
    a.wait_ready();
    // Requests until the exporter, stuck on a batch (5 s limit), has let the queue (4 spans)
    // fill and dropped some; bounded in count and time.
    let (max, started) = (2000, Instant::now());
    let mut slowest = Duration::ZERO;
    let dropped_now =
        |a: &ProxyProc| metric_value(&a.metrics(), "remora_tracing_spans_dropped_total", &[]);
    let mut sent = 0;
    while sent < max && started.elapsed() < Duration::from_secs(60) {
        let t = Instant::now();
        get(&a, &[]);
        slowest = slowest.max(t.elapsed());
        sent += 1;
        if sent % 50 == 0 && dropped_now(&a) >= 1.0 {
            break;
        }
    }
    assert!(
        slowest < Duration::from_secs(2),
        "a request took {slowest:?} with the collector stuck"
    );
    let m = a.metrics();
    let dropped = metric_value(&m, "remora_tracing_spans_dropped_total", &[]);
    assert!(
        dropped >= 1.0 && dropped <= sent as f64,
        "dropped {dropped} of {sent} in {:?}:\n{m}",
        started.elapsed()
    );
    assert_eq!(
        metric_value(&m, "remora_tracing_spans_exported_total", &[]),
        0.0,
        "{m}"
    );
    assert_eq!(col.spans().len(), 0);
}

/// A Telemetry rule in the workload's namespace sets the sampling percentage, adds custom tags
/// and turns the access log off, each applied at the next rules reload.
#[test]
fn telemetry_rules_change_sampling_tags_and_access_log_on_reload() {
    let rt = rt();
    let app = rt.block_on(spawn_http_echo("127.0.0.1:0".parse().unwrap(), "app"));
    let col = rt.block_on(Collector::start(false));
    let mut rules = RulesDir::new(&[]);
    let mut o = ProxyOpts::new(rules.path());
    o.fixed_outbound = Some(app);
    o.extra_args = tracing_args("zipkin", col.addr, "0");
    // The rule names its provider: the proxy knows it by that name (the injector lists the
    // mesh's providers so).
    o.extra_args.push(format!(
        r#"--tracing-providers=[{{"name":"zipkin","provider":"zipkin","address":"{}"}}]"#,
        col.addr
    ));
    o.env = vec![("TEAM_FROM_ENV".into(), "payments".into())];
    let mut a = ProxyProc::start(o);
    a.wait_ready();
    for _ in 0..20 {
        get(&a, &[]);
    }
    a.wait_log(|l| l["kind"] == "http");
    let telemetry = |spec: &str| {
        format!(
            "apiVersion: telemetry.istio.io/v1\nkind: Telemetry\nmetadata: {{name: t, namespace: testns}}\nspec:\n{spec}"
        )
    };
    rules.swap(&[(
        "telemetry.yaml",
        &telemetry(
            "  tracing:\n  - providers: [{name: zipkin}]\n    randomSamplingPercentage: 100\n    customTags:\n      team: {literal: {value: reviews}}\n      env: {environment: {name: TEAM_FROM_ENV}}\n      ua: {header: {name: user-agent, defaultValue: none}}\n",
        ),
    )]);
    a.wait_stderr("applied rules generation 2");
    get(&a, &[("user-agent", "ua-1")]);
    let spans = col.wait_for("a span after the reload", |s| !s.is_empty());
    assert_eq!(spans.len(), 1, "sampling 0 % before the rule: {spans:#?}");
    let s = &spans[0];
    assert_eq!(s.tags["team"], "reviews");
    assert_eq!(s.tags["env"], "payments");
    assert_eq!(s.tags["ua"], "ua-1");
    // accessLogging disabled: requests go on, their lines do not.
    rules.swap(&[(
        "telemetry.yaml",
        &telemetry("  accessLogging:\n  - disabled: true\n"),
    )]);
    a.wait_stderr("applied rules generation 3");
    let before = a.access_log().len();
    for _ in 0..5 {
        get(&a, &[("x-marker", "after-off")]);
    }
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        a.access_log().len(),
        before,
        "access log written while disabled"
    );
    // The rule no longer samples: back to the flag's 0 %.
    let n = col.spans().len();
    for _ in 0..20 {
        get(&a, &[]);
    }
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(col.spans().len(), n);
}

/// The product's access log is Istio's TEXT line when no encoding is asked for.
#[test]
fn the_default_access_log_is_istios_text_line() {
    let rt = rt();
    let app = rt.block_on(spawn_http_echo("127.0.0.1:0".parse().unwrap(), "app"));
    let rules = RulesDir::new(&[]);
    let mut o = ProxyOpts::new(rules.path());
    o.fixed_outbound = Some(app);
    o.extra_args = vec!["--access-log-encoding=TEXT".into()];
    let mut a = ProxyProc::start(o);
    a.wait_ready();
    get(
        &a,
        &[("user-agent", "text-test"), ("x-request-id", "rid-1")],
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let line = loop {
        let lines = a.stdout.lock().unwrap().clone();
        if let Some(l) = lines.into_iter().find(|l| l.contains("rid-1")) {
            break l;
        }
        assert!(Instant::now() < deadline, "no access-log line");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(line.starts_with('['), "{line}");
    assert!(
        line.contains("] \"GET /reviews/1 HTTP/1.1\" 200 - via_upstream - \"-\" 0 "),
        "{line}"
    );
    assert!(
        line.contains("\"-\" \"text-test\" \"rid-1\" \"reviews:9080\""),
        "{line}"
    );
    // Bytes received, bytes sent, duration and the upstream's service time (Envoy's
    // x-envoy-upstream-service-time), whole numbers, the last at most the duration.
    let counts = line
        .split(" via_upstream - \"-\" ")
        .nth(1)
        .and_then(|rest| rest.split(" \"-\" \"text-test\"").next())
        .unwrap_or_default();
    let n: Vec<u64> = counts
        .split(' ')
        .map(|v| v.parse().unwrap_or(u64::MAX))
        .collect();
    assert!(
        n.len() == 4 && n[0] == 0 && n[1] > 0 && n[3] <= n[2],
        "{counts:?} in {line}"
    );
    assert!(
        line.contains(&format!(
            "\"{app}\" outbound|{}||reviews.testns.svc.cluster.local",
            app.port()
        )),
        "{line}"
    );
    assert!(serde_json::from_str::<serde_json::Value>(&line).is_err());
}

/// Telemetry rules choose among the mesh's providers by name and by side, at reload:
/// `tracing[].providers` moves both sidecars' spans to another collector (and protocol),
/// `accessLogging` with `match: {mode: SERVER}` and `disabled: true` stops the inbound side's
/// lines and leaves the outbound side's, `accessLogging[].providers` writes the named
/// provider's encoding, and a provider the proxy does not have means no spans, said by
/// /config_dump.
#[test]
fn telemetry_rules_choose_providers_and_sides_on_reload() {
    let rt = rt();
    let app = rt.block_on(spawn_http_echo("127.0.0.1:0".parse().unwrap(), "app"));
    let alpha = rt.block_on(Collector::start(false));
    let beta = rt.block_on(Collector::start(false));
    let mut rules = RulesDir::new(&[]);
    let providers = format!(
        r#"--tracing-providers=[{{"name":"alpha","provider":"zipkin","address":"{}"}},{{"name":"beta","provider":"opentelemetry","address":"{}"}}]"#,
        alpha.addr, beta.addr
    );
    let extra = || {
        let mut v = tracing_args("zipkin", alpha.addr, "100");
        v.push(providers.clone());
        v.push(r#"--access-log-providers=[{"name":"text-log","encoding":"TEXT"}]"#.into());
        v
    };
    let mut ob = ProxyOpts::new(rules.path());
    ob.fixed_inbound = Some(app);
    ob.extra_args = extra();
    let mut b = ProxyProc::start(ob);
    b.wait_ready();
    let mut oa = ProxyOpts::new(rules.path());
    oa.fixed_outbound = Some(b.ports.inbound_addr());
    oa.extra_args = extra();
    let mut a = ProxyProc::start(oa);
    a.wait_ready();
    let logged = |p: &ProxyProc, rid: &str| {
        p.access_log()
            .iter()
            .filter(|l| l["request_id"] == rid)
            .count()
    };
    // No rule: the default provider (alpha) on both sides, both sides logged.
    get(&a, &[("x-request-id", "rid-1")]);
    alpha.wait_for("a client and a server span", |s| s.len() >= 2);
    a.wait_log(|l| l["request_id"] == "rid-1");
    b.wait_log(|l| l["request_id"] == "rid-1");
    let telemetry = |spec: &str| {
        format!(
            "apiVersion: telemetry.istio.io/v1\nkind: Telemetry\nmetadata: {{name: t, namespace: testns}}\nspec:\n{spec}"
        )
    };
    rules.swap(&[(
        "telemetry.yaml",
        &telemetry(
            "  tracing:\n  - providers: [{name: beta}]\n  accessLogging:\n  - match: {mode: SERVER}\n    disabled: true\n",
        ),
    )]);
    a.wait_stderr("applied rules generation 2");
    b.wait_stderr("applied rules generation 2");
    let at_alpha = alpha.spans().len();
    get(&a, &[("x-request-id", "rid-2")]);
    let spans = beta.wait_for("both spans at the OTLP collector", |s| s.len() >= 2);
    assert_eq!(spans.len(), 2, "{spans:#?}");
    assert_eq!(spans[0].trace_id, spans[1].trace_id);
    a.wait_log(|l| l["request_id"] == "rid-2");
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(alpha.spans().len(), at_alpha, "spans still sent to alpha");
    assert_eq!(logged(&b, "rid-2"), 0, "server side logged while disabled");
    assert_eq!(logged(&a, "rid-2"), 1, "client side not logged");
    let dump = |p: &ProxyProc| {
        let r = http_get(p.ports.admin_addr(), "/config_dump", &[]).unwrap();
        assert_eq!(r.status, 200);
        r.json()
    };
    let d = dump(&b);
    let t = &d["rules"]["telemetry"];
    assert_eq!(t["server"]["accessLogDisabled"], true, "{t}");
    assert_eq!(t["server"]["tracingProvider"], "beta", "{t}");
    assert_eq!(
        t["client"]["accessLogDisabled"],
        serde_json::Value::Null,
        "{t}"
    );
    let providers = &d["telemetry_providers"];
    assert_eq!(
        providers["tracing"][1],
        format!("beta: opentelemetry {} /v1/traces", beta.addr),
        "{providers}"
    );
    assert_eq!(providers["accessLog"][1], "text-log: TEXT", "{providers}");
    // A provider the proxy does not have: no spans, and the dump says so; the client side's
    // lines in the named provider's TEXT encoding.
    rules.swap(&[(
        "telemetry.yaml",
        &telemetry(
            "  tracing:\n  - providers: [{name: nope}]\n  accessLogging:\n  - match: {mode: CLIENT}\n    providers: [{name: text-log}]\n",
        ),
    )]);
    a.wait_stderr("applied rules generation 3");
    b.wait_stderr("applied rules generation 3");
    let (n_alpha, n_beta) = (alpha.spans().len(), beta.spans().len());
    get(&a, &[("x-request-id", "rid-3")]);
    b.wait_log(|l| l["request_id"] == "rid-3");
    let deadline = Instant::now() + Duration::from_secs(10);
    let line = loop {
        let lines = a.stdout.lock().unwrap().clone();
        if let Some(l) = lines.into_iter().find(|l| l.contains("rid-3")) {
            break l;
        }
        assert!(Instant::now() < deadline, "no TEXT line for rid-3");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(line.starts_with('['), "{line}");
    assert_eq!(logged(&a, "rid-3"), 0, "a JSON line besides the TEXT one");
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!((alpha.spans().len(), beta.spans().len()), (n_alpha, n_beta));
    assert_eq!(
        dump(&a)["telemetry_providers"]["unknown"][0],
        "tracing: nope"
    );
}
