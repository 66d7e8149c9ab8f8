//! Mesh scenarios in the lab: Bookinfo-like services in a namespace labelled
//! `istio-injection=enabled`, injected by the real webhook, captured by the real remora-init,
//! routed by the real remora-proxy with rules adapted from Istio's Bookinfo samples
//! (`$REMORA_SHARED/anchors/istio/networking/`, read in place).

use remora_e2e::client::{sum, Sample};
use remora_e2e::ingress;
use remora_e2e::{Lab, LabOptions, Pod};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

const BOOKINFO: &str = include_str!("../fixtures/bookinfo.yaml");
const REQ: &str = "istio_requests_total";

/// A file of Istio's Bookinfo rules; the tests using it start with
/// `remora_corpus::require!("networking")` (skipped, with a line saying so, without the corpus).
fn anchor(name: &str) -> String {
    let p = remora_corpus::istio_dir().join("networking").join(name);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("reading {}: {e}", p.display()))
}

fn rules(parts: &[&str]) -> String {
    parts
        .iter()
        .map(|p| p.trim_end().to_string() + "\n")
        .collect::<Vec<_>>()
        .join("---\n")
}

fn must<T>(lab: &Lab, r: anyhow::Result<T>) -> T {
    r.unwrap_or_else(|e| panic!("{e:#}\n--- logs:\n{}", lab.logs(25)))
}

fn lab_with(ns_labels: &[(&str, &str)], yaml: &str, initial_rules: &str) -> Lab {
    let mut lab = Lab::start(LabOptions::default()).expect("lab starts");
    lab.create_namespace("bookinfo", ns_labels).unwrap();
    if !initial_rules.is_empty() {
        lab.set_rules("bookinfo", initial_rules).unwrap();
    }
    let r = lab.apply(yaml, "bookinfo");
    must(&lab, r);
    lab
}

/// Reviews versions seen over `n` productpage requests from the client pod ("error …" when
/// productpage got no answer from reviews).
fn review_versions(lab: &Lab, n: usize, headers: &[(&str, &str)]) -> BTreeMap<String, u32> {
    let client = lab.pod("client").unwrap();
    let mut seen = BTreeMap::new();
    for _ in 0..n {
        let r = must(
            lab,
            lab.http(client, "productpage", 9080, "/productpage", headers),
        );
        assert_eq!(r.status, 200, "{:?}", r.body);
        let v = r.json().unwrap();
        let version = v["reviews"]["version"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| format!("error {}", v["reviews"]["status"]));
        *seen.entry(version).or_default() += 1;
    }
    seen
}

/// Asserts `count` of `n` is within 4 standard deviations of `n * p` (a false alarm about once in
/// 16,000 runs; a wrong split of 80/20 vs 50/50 is dozens of deviations off).
fn within_4_sigma(what: &str, count: u32, n: u32, p: f64) {
    let mean = n as f64 * p;
    let sd = (n as f64 * p * (1.0 - p)).sqrt();
    assert!(
        (count as f64 - mean).abs() <= 4.0 * sd,
        "{what}: {count} of {n}, expected {mean:.0} ± {:.0} (4σ)",
        4.0 * sd
    );
}

/// The init container that sets up or checks the capture: `remora-init`, or in CNI mode
/// (`REMORA_LAB_CNI`) `remora-validation`.
fn capture_container() -> &'static str {
    if LabOptions::default().cni {
        "remora-validation"
    } else {
        "remora-init"
    }
}

fn metrics_of(lab: &Lab, pods: &[&Pod]) -> Vec<Vec<Sample>> {
    pods.iter().map(|p| must(lab, lab.metrics(p))).collect()
}

/// The metrics once two reads 300 ms apart count the same requests (bounded: 10 s), so
/// requests that finished just before are counted.
fn settled_metrics(lab: &Lab, pods: &[&Pod]) -> Vec<Vec<Sample>> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut last = metrics_of(lab, pods);
    loop {
        std::thread::sleep(Duration::from_millis(300));
        let now = metrics_of(lab, pods);
        let requests =
            |m: &[Vec<Sample>]| -> Vec<f64> { m.iter().map(|p| sum(p, REQ, &[])).collect() };
        if requests(&now) == requests(&last) || Instant::now() >= deadline {
            return now;
        }
        last = now;
    }
}

/// Waits (bounded) until `check` holds on fresh metrics; telemetry is recorded when a request
/// completes, which can be a moment after the client saw the answer.
fn eventually_metrics(
    lab: &Lab,
    pods: &[&Pod],
    check: impl Fn(&[Vec<Sample>]) -> Result<(), String>,
) {
    // Generous: on a loaded machine a sidecar may record a moment late; the wait ends as soon
    // as the counts agree, and counts that never agree still fail.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let now = metrics_of(lab, pods);
        match check(&now) {
            Ok(()) => return,
            Err(e) if Instant::now() >= deadline => panic!("{e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

#[test]
fn bookinfo_routing_rules_and_metrics() {
    remora_corpus::require!("networking");
    let dr = anchor("destination-rule-all.yaml");
    let mut lab = lab_with(&[("istio-injection", "enabled")], BOOKINFO, &dr);

    // Injection as the webhook wired it: every pod reviewed and meshed, native sidecar; the
    // capture container is remora-init, or in CNI mode (REMORA_LAB_CNI) remora-validation.
    let capture = capture_container();
    for p in lab.pods() {
        assert!(p.reviewed && p.meshed, "pod {} injected", p.name);
        let (init, _) = p.spec_containers();
        assert!(
            init.contains(&capture.to_string()) && init.contains(&"remora-proxy".to_string()),
            "{init:?}"
        );
    }

    // Scenario 1: everything to v1, then jason to v2.
    lab.set_rules(
        "bookinfo",
        &rules(&[&dr, &anchor("virtual-service-all-v1.yaml")]),
    )
    .unwrap();
    assert_eq!(
        review_versions(&lab, 30, &[]),
        BTreeMap::from([("v1".into(), 30)])
    );
    lab.set_rules(
        "bookinfo",
        &rules(&[&dr, &anchor("virtual-service-reviews-test-v2.yaml")]),
    )
    .unwrap();
    assert_eq!(
        review_versions(&lab, 20, &[("end-user", "jason")]),
        BTreeMap::from([("v2".into(), 20)])
    );
    assert_eq!(
        review_versions(&lab, 20, &[("end-user", "mary")]),
        BTreeMap::from([("v1".into(), 20)])
    );

    // sourceLabels read from the pod's downward-API labels file (REMORA_POD_LABELS_FILE mapped
    // into the lab): productpage's own labels select v3; a rule for another source does not match.
    let by_source = |app: &str| {
        format!(
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: reviews}}\nspec:\n  hosts: [reviews]\n  http:\n  - match: [{{sourceLabels: {{app: {app}, version: v1}}}}]\n    route: [{{destination: {{host: reviews, subset: v3}}}}]\n  - route: [{{destination: {{host: reviews, subset: v1}}}}]\n"
        )
    };
    lab.set_rules("bookinfo", &rules(&[&dr, &by_source("productpage")]))
        .unwrap();
    assert_eq!(
        review_versions(&lab, 10, &[]),
        BTreeMap::from([("v3".into(), 10)])
    );
    lab.set_rules("bookinfo", &rules(&[&dr, &by_source("someone-else")]))
        .unwrap();
    assert_eq!(
        review_versions(&lab, 10, &[]),
        BTreeMap::from([("v1".into(), 10)])
    );

    // Scenario 2: weighted splits, measured.
    let n = 400;
    lab.set_rules(
        "bookinfo",
        &rules(&[&dr, &anchor("virtual-service-reviews-80-20.yaml")]),
    )
    .unwrap();
    let seen = review_versions(&lab, n, &[]);
    assert_eq!(seen.keys().collect::<Vec<_>>(), ["v1", "v2"], "{seen:?}");
    within_4_sigma("80/20 split, v1", seen["v1"], n as u32, 0.8);
    lab.set_rules(
        "bookinfo",
        &rules(&[&dr, &anchor("virtual-service-reviews-50-v3.yaml")]),
    )
    .unwrap();
    let seen = review_versions(&lab, n, &[]);
    assert_eq!(seen.keys().collect::<Vec<_>>(), ["v1", "v3"], "{seen:?}");
    within_4_sigma("50/50 split, v1", seen["v1"], n as u32, 0.5);

    // Scenario 7: istio_requests_total at each proxy agrees with the requests sent.
    let names = [
        "client",
        "productpage",
        "details",
        "reviews-v1",
        "reviews-v2",
        "reviews-v3",
        "ratings",
    ];
    let pods: Vec<&Pod> = names.iter().map(|n| lab.pod(n).unwrap()).collect();
    // A request's metrics are recorded when its proxy finishes it, a moment after the client
    // has its answer: the counts before are taken once the earlier requests are all in.
    let before = settled_metrics(&lab, &pods);
    let k = 40;
    let seen = review_versions(&lab, k, &[]);
    let with_ratings = seen
        .iter()
        .filter(|(v, _)| *v != "v1")
        .map(|(_, c)| *c)
        .sum::<u32>() as f64;
    let k = k as f64;
    let svc = |s: &str| format!("{s}.bookinfo.svc.cluster.local");
    eventually_metrics(&lab, &pods, |after| {
        let d = |i: usize, filter: &[(&str, &str)]| {
            sum(&after[i], REQ, filter) - sum(&before[i], REQ, filter)
        };
        let (pp, dt, rv, rt) = (
            svc("productpage"),
            svc("details"),
            svc("reviews"),
            svc("ratings"),
        );
        let checks = [
            (
                "client source→productpage",
                d(
                    0,
                    &[
                        ("reporter", "source"),
                        ("destination_service", &pp),
                        ("response_code", "200"),
                    ],
                ),
                k,
            ),
            (
                "productpage destination",
                d(1, &[("reporter", "destination")]),
                k,
            ),
            (
                "productpage source→details",
                d(1, &[("reporter", "source"), ("destination_service", &dt)]),
                k,
            ),
            (
                "productpage source→reviews",
                d(1, &[("reporter", "source"), ("destination_service", &rv)]),
                k,
            ),
            (
                "details destination",
                d(2, &[("reporter", "destination")]),
                k,
            ),
            (
                "reviews destination (3 pods)",
                d(3, &[("reporter", "destination")])
                    + d(4, &[("reporter", "destination")])
                    + d(5, &[("reporter", "destination")]),
                k,
            ),
            (
                "reviews source→ratings",
                d(4, &[("reporter", "source"), ("destination_service", &rt)])
                    + d(5, &[("reporter", "source"), ("destination_service", &rt)]),
                with_ratings,
            ),
            (
                "ratings destination",
                d(6, &[("reporter", "destination")]),
                with_ratings,
            ),
        ];
        let wrong: Vec<String> = checks
            .iter()
            .filter(|(_, got, want)| got != want)
            .map(|(what, got, want)| format!("{what}: counted {got}, sent {want}"))
            .collect();
        if wrong.is_empty() {
            Ok(())
        } else {
            Err(wrong.join("\n"))
        }
    });
}

/// Scenario 3: fault injection (delay for jason, abort 50%) with timeout and retries responding.
#[test]
fn fault_injection_with_timeout_and_retries() {
    remora_corpus::require!("networking");
    let flaky = r#"
apiVersion: v1
kind: Service
metadata: {name: flaky}
spec:
  selector: {app: flaky}
  ports: [{name: http, port: 8080, targetPort: 8080}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: flaky}
spec:
  replicas: 1
  template:
    metadata: {labels: {app: flaky, version: v1}}
    spec:
      containers:
      - name: flaky
        command: ["lab-app", "http", "--service", "flaky", "--fail-every", "2", "--port", "8080"]
        readinessProbe: {tcpSocket: {port: 8080}}
"#;
    let dr = anchor("destination-rule-all.yaml");
    let mut lab = lab_with(
        &[("istio-injection", "enabled")],
        &format!("{BOOKINFO}\n---\n{flaky}"),
        &dr,
    );
    let reviews_v2_timeout = r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  http:
  - route: [{destination: {host: reviews, subset: v2}}]
    timeout: 2s
"#;
    // Delay for jason (Istio's ratings-test-delay, 7 s shortened to 5 s) against a 2 s timeout.
    // The timeout must stay under productpage's own 3 s client timeout (so the 504 is the
    // proxy's) and leave the undelayed call through reviews v2 to ratings time to answer on a
    // loaded machine; the delay is well past the timeout.
    let delay = anchor("virtual-service-ratings-test-delay.yaml")
        .replace("fixedDelay: 7s", "fixedDelay: 5s");
    lab.set_rules("bookinfo", &rules(&[&dr, reviews_v2_timeout, &delay]))
        .unwrap();
    assert_eq!(
        review_versions(&lab, 5, &[("end-user", "jason")]),
        BTreeMap::from([("error 504".into(), 5)])
    );
    assert_eq!(
        review_versions(&lab, 5, &[]),
        BTreeMap::from([("v2".into(), 5)])
    );

    // Abort 50% of ratings calls (reviews v2 shows the error in its answer).
    let abort = r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: ratings}
spec:
  hosts: [ratings]
  http:
  - fault: {abort: {percentage: {value: 50.0}, httpStatus: 503}}
    route: [{destination: {host: ratings, subset: v1}}]
"#;
    lab.set_rules(
        "bookinfo",
        &rules(&[
            &dr,
            reviews_v2_timeout.replace("timeout: 2s", "").as_str(),
            abort,
        ]),
    )
    .unwrap();
    let client = lab.pod("client").unwrap();
    let n = 200;
    let mut aborted = 0;
    for _ in 0..n {
        let v = must(
            &lab,
            lab.http(client, "productpage", 9080, "/productpage", &[]),
        )
        .json()
        .unwrap();
        if v["reviews"]["ratings"]["status"] == 503 {
            aborted += 1;
        } else {
            assert_eq!(v["reviews"]["ratings"]["service"], "ratings", "{v}");
        }
    }
    within_4_sigma("abort 50%", aborted, n, 0.5);

    // Retries hide a backend that fails every second request; without retries half fail.
    let retry = |attempts: u32| {
        format!(
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: flaky}}\nspec:\n  hosts: [flaky]\n  http:\n  - route: [{{destination: {{host: flaky}}}}]\n    retries: {{attempts: {attempts}, retryOn: 5xx}}\n"
        )
    };
    let statuses = |lab: &Lab| -> BTreeMap<u16, u32> {
        let client = lab.pod("client").unwrap();
        let mut m = BTreeMap::new();
        for _ in 0..20 {
            *m.entry(must(lab, lab.http(client, "flaky", 8080, "/", &[])).status)
                .or_default() += 1;
        }
        m
    };
    lab.set_rules("bookinfo", &rules(&[&dr, &retry(2)]))
        .unwrap();
    assert_eq!(statuses(&lab), BTreeMap::from([(200, 20)]));
    lab.set_rules("bookinfo", &rules(&[&dr, &retry(0)]))
        .unwrap();
    assert_eq!(statuses(&lab), BTreeMap::from([(200, 10), (503, 10)]));
}

/// Scenario 4: a pod annotated `sidecar.istio.io/inject: "false"`, a pod labelled so, and a
/// namespace without the injection label get no sidecar; traffic between them and meshed pods
/// still works, directly.
#[test]
fn opt_out_pod_and_unlabelled_namespace_go_direct() {
    let yaml = r#"
apiVersion: v1
kind: Namespace
metadata: {name: legacy}
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  selector: {app: web}
  ports: [{name: http, port: 8080, targetPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: optout}
spec:
  selector: {app: optout}
  ports: [{name: http, port: 8080, targetPort: 8080}]
---
apiVersion: v1
kind: Pod
metadata: {name: web, labels: {app: web}}
spec:
  containers:
  - {name: web, command: ["lab-app", "http", "--service", "web", "--port", "8080"], readinessProbe: {tcpSocket: {port: 8080}}}
---
apiVersion: v1
kind: Pod
metadata: {name: optout, labels: {app: optout}, annotations: {sidecar.istio.io/inject: "false"}}
spec:
  containers:
  - {name: optout, command: ["lab-app", "http", "--service", "optout", "--port", "8080"], readinessProbe: {tcpSocket: {port: 8080}}}
---
apiVersion: v1
kind: Pod
metadata: {name: labelled-off, labels: {app: labelled-off, sidecar.istio.io/inject: "false"}}
spec:
  containers:
  - {name: app, command: ["lab-app", "http", "--service", "labelled-off", "--port", "8080"]}
---
apiVersion: v1
kind: Pod
metadata: {name: client, labels: {app: client}}
spec:
  containers:
  - {name: client, command: ["lab-app", "http", "--service", "client", "--port", "8080"]}
---
apiVersion: v1
kind: Pod
metadata: {name: old-client, namespace: legacy, labels: {app: old-client}}
spec:
  containers:
  - {name: old, command: ["lab-app", "http", "--service", "old-client", "--port", "8080"]}
"#;
    let lab = lab_with(&[("istio-injection", "enabled")], yaml, "");
    let get = |n: &str| lab.pod(n).unwrap();
    let (web, optout, off, client, old) = (
        get("web"),
        get("optout"),
        get("labelled-off"),
        get("bookinfo/client"),
        get("legacy/old-client"),
    );
    assert!(web.reviewed && web.meshed && client.meshed);
    assert!(
        optout.reviewed && !optout.meshed,
        "annotated pod: the webhook is asked and skips it"
    );
    assert_eq!(
        optout.spec_containers(),
        (vec![], vec!["optout".to_string()])
    );
    assert!(optout
        .object
        .pointer("/metadata/annotations/sidecar.istio.io~1status")
        .is_none());
    assert!(
        !off.reviewed && !off.meshed,
        "labelled pod: the objectSelector keeps it from the webhook"
    );
    assert!(
        !old.reviewed && !old.meshed,
        "unlabelled namespace: the namespaceSelector keeps it from the webhook"
    );
    for p in [optout, off, old] {
        assert!(
            !must(&lab, lab.nat_rules(p)).contains("REMORA"),
            "{} has no capture rules",
            p.name
        );
    }
    let web_before = must(&lab, lab.metrics(web));
    let client_before = must(&lab, lab.metrics(client));
    for (from, host) in [
        (optout, "web"),
        (off, "web"),
        (old, "web.bookinfo"),
        (client, "optout"),
    ] {
        let r = must(&lab, lab.http(from, host, 8080, "/", &[]));
        assert_eq!(r.status, 200, "{} → {host}", from.name);
        let expect = if host == "optout" { "optout" } else { "web" };
        assert_eq!(r.json().unwrap()["service"], expect);
    }
    eventually_metrics(&lab, &[web, client], |now| {
        let dw = sum(&now[0], REQ, &[("reporter", "destination")])
            - sum(&web_before, REQ, &[("reporter", "destination")]);
        let dc = sum(&now[1], REQ, &[("reporter", "source")])
            - sum(&client_before, REQ, &[("reporter", "source")]);
        // Unmeshed clients reach web's inbound sidecar directly; the meshed client's outbound
        // sidecar handles its call to the unmeshed pod.
        if dw == 3.0 && dc == 1.0 {
            Ok(())
        } else {
            Err(format!(
                "web inbound counted {dw} (want 3), client outbound {dc} (want 1)"
            ))
        }
    });
}

/// Scenario 5: `traffic.sidecar.istio.io/excludeOutboundPorts` honoured end to end.
#[test]
fn exclude_outbound_ports_bypass_the_sidecar() {
    let yaml = r#"
apiVersion: v1
kind: Service
metadata: {name: a}
spec:
  selector: {app: a}
  ports: [{name: http, port: 8080, targetPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: b}
spec:
  selector: {app: b}
  ports: [{name: http-b, port: 9091, targetPort: 9091}]
---
apiVersion: v1
kind: Pod
metadata: {name: a, labels: {app: a}}
spec:
  containers:
  - {name: a, command: ["lab-app", "http", "--service", "a", "--port", "8080"], readinessProbe: {tcpSocket: {port: 8080}}}
---
apiVersion: v1
kind: Pod
metadata: {name: b, labels: {app: b}}
spec:
  containers:
  - {name: b, command: ["lab-app", "http", "--service", "b", "--port", "9091"], readinessProbe: {tcpSocket: {port: 9091}}}
---
apiVersion: v1
kind: Pod
metadata:
  name: client
  labels: {app: client}
  annotations: {traffic.sidecar.istio.io/excludeOutboundPorts: "9091"}
spec:
  containers:
  - {name: client, command: ["lab-app", "http", "--service", "client", "--port", "8080"]}
"#;
    let lab = lab_with(&[("istio-injection", "enabled")], yaml, "");
    let (client, b) = (lab.pod("client").unwrap(), lab.pod("b").unwrap());
    // In CNI mode (REMORA_LAB_CNI) there is no remora-init: the plugin's rules below show it.
    if let Some(init) = client.object["spec"]["initContainers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "remora-init")
    {
        let args: Vec<&str> = init["args"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|a| a.as_str())
            .collect();
        assert!(
            args.windows(2).any(|w| w == ["-o", "9091"]),
            "webhook renders -o 9091: {args:?}"
        );
    } else {
        assert_eq!(capture_container(), "remora-validation");
    }
    let nat = must(&lab, lab.nat_rules(client));
    assert!(
        nat.lines().any(|l| l.starts_with("-A REMORA_OUTPUT")
            && l.contains("--dport 9091")
            && l.ends_with("-j RETURN")),
        "{nat}"
    );

    let src = |s: &[Sample]| sum(s, REQ, &[("reporter", "source")]);
    let dst = |s: &[Sample]| sum(s, REQ, &[("reporter", "destination")]);
    let (c0, b0) = (must(&lab, lab.metrics(client)), must(&lab, lab.metrics(b)));
    assert_eq!(
        must(&lab, lab.http(client, "a", 8080, "/", &[]))
            .json()
            .unwrap()["service"],
        "a"
    );
    eventually_metrics(&lab, &[client], |now| {
        if src(&now[0]) - src(&c0) == 1.0 {
            Ok(())
        } else {
            Err("port 8080 goes through the client's sidecar".into())
        }
    });
    let c1 = must(&lab, lab.metrics(client));
    assert_eq!(
        must(&lab, lab.http(client, "b", 9091, "/", &[]))
            .json()
            .unwrap()["service"],
        "b"
    );
    eventually_metrics(&lab, &[b], |now| {
        if dst(&now[0]) - dst(&b0) == 1.0 {
            Ok(())
        } else {
            Err("b's inbound sidecar still sees the excluded-port call".into())
        }
    });
    let c2 = must(&lab, lab.metrics(client));
    assert_eq!(
        src(&c2),
        src(&c1),
        "port 9091 bypasses the client's sidecar"
    );
}

/// Scenario 6: gRPC (h2c) and a plain TCP request/response protocol through the mesh.
#[test]
fn grpc_and_plain_tcp_through_the_mesh() {
    let yaml = r#"
apiVersion: v1
kind: Service
metadata: {name: echo}
spec:
  selector: {app: echo}
  ports: [{name: grpc, port: 50051, targetPort: 50051}]
---
apiVersion: v1
kind: Service
metadata: {name: kv}
spec:
  selector: {app: kv}
  ports: [{name: tcp-kv, port: 6379, targetPort: 6379}]
---
apiVersion: v1
kind: Pod
metadata: {name: echo, labels: {app: echo}}
spec:
  containers:
  - {name: echo, command: ["lab-app", "grpc-echo", "--port", "50051"], readinessProbe: {tcpSocket: {port: 50051}}}
---
apiVersion: v1
kind: Pod
metadata: {name: kv, labels: {app: kv}}
spec:
  containers:
  - {name: kv, command: ["lab-app", "kv", "--port", "6379"], readinessProbe: {tcpSocket: {port: 6379}}}
---
apiVersion: v1
kind: Pod
metadata: {name: client, labels: {app: client}}
spec:
  containers:
  - {name: client, command: ["lab-app", "http", "--service", "client", "--port", "8080"]}
"#;
    let lab = lab_with(&[("istio-injection", "enabled")], yaml, "");
    let (client, echo, kv) = (
        lab.pod("client").unwrap(),
        lab.pod("echo").unwrap(),
        lab.pod("kv").unwrap(),
    );
    assert!(client.meshed && echo.meshed && kv.meshed);
    let c0 = must(&lab, lab.metrics(client));
    let vip = lab.service("bookinfo", "echo").unwrap().vip;
    let reply = must(
        &lab,
        lab.rt.block_on(remora_e2e::client::grpc_unary(
            &client.netns,
            (vip, 50051).into(),
            "echo:50051",
            "/remora.lab.Echo/Echo",
            "hello mesh",
            Duration::from_secs(30),
        )),
    );
    assert_eq!(reply.http_status, 200);
    assert_eq!(reply.grpc_status.as_deref(), Some("0"), "{reply:?}");
    assert_eq!(
        reply.messages,
        vec![format!("hello mesh from {}", echo.name)]
    );

    let vip = lab.service("bookinfo", "kv").unwrap().vip;
    let answers = must(
        &lab,
        lab.rt.block_on(remora_e2e::client::line_session(
            &client.netns,
            (vip, 6379).into(),
            &["PING", "SET greeting hello", "GET greeting", "WHO"],
            Duration::from_secs(30),
        )),
    );
    assert_eq!(
        answers,
        vec![
            "+PONG".to_string(),
            "+OK".into(),
            "$hello".into(),
            format!("+{}", kv.name)
        ]
    );
    eventually_metrics(&lab, &[client], |now| {
        let grpc = sum(
            &now[0],
            REQ,
            &[("reporter", "source"), ("request_protocol", "grpc")],
        ) - sum(
            &c0,
            REQ,
            &[("reporter", "source"), ("request_protocol", "grpc")],
        );
        let tcp = sum(
            &now[0],
            "istio_tcp_connections_opened_total",
            &[("reporter", "source")],
        ) - sum(
            &c0,
            "istio_tcp_connections_opened_total",
            &[("reporter", "source")],
        );
        if grpc == 1.0 && tcp == 1.0 {
            Ok(())
        } else {
            Err(format!("client sidecar counted {grpc} gRPC requests and {tcp} TCP connections (want 1 and 1)"))
        }
    });
}

/// The admin port as the injected pod runs it (the proxy's defaults): on the pod IP, where the
/// kubelet's rewritten probes come (the pod became ready through them), it answers the app
/// probe, readiness and metrics but refuses `/config_dump`; from the pod's own loopback it
/// serves it, and `remora proxy-config` / `proxy-status` read it through the recorded API's
/// port-forward, which dials `localhost:15020` inside the pod as the kubelet does.
#[test]
fn admin_config_dump_only_from_inside_the_pod_and_through_a_port_forward() {
    use remora_e2e::apiserver::{PodPort, RecordedApi, Reply};
    use serde_json::json;

    let yaml = r#"
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  selector: {app: web}
  ports: [{name: http, port: 8080, targetPort: 8080}]
---
apiVersion: v1
kind: Pod
metadata: {name: web, labels: {app: web}}
spec:
  containers:
  - {name: web, command: ["lab-app", "http", "--service", "web", "--port", "8080"], readinessProbe: {tcpSocket: {port: 8080}}}
"#;
    let lab = lab_with(&[("istio-injection", "enabled")], yaml, "");
    let web = lab.pod("web").unwrap();
    assert!(web.meshed, "the webhook injected the pod");
    let probe = web.object["spec"]["containers"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["name"] == "web"))
        .map(|c| c["readinessProbe"]["httpGet"].clone())
        .expect("the web container");
    assert_eq!(probe["port"], 15020, "rewritten to the admin port: {probe}");

    // From the node: not loopback.
    let r = must(&lab, lab.http_direct(web, 15020, "GET", "/config_dump"));
    let body = String::from_utf8_lossy(&r.body).into_owned();
    assert_eq!(r.status, 403, "{body}");
    assert!(body.starts_with("only from localhost"), "{body}");
    assert!(!body.contains("generation"), "{body}");
    let path = probe["path"].as_str().expect("probe path");
    let r = must(&lab, lab.http_direct(web, 15020, "GET", path));
    assert_eq!(r.status, 200, "{path}: {:?}", r.body);
    for (port, path) in [(15021, "/healthz/ready"), (15090, "/stats/prometheus")] {
        let r = must(&lab, lab.http_direct(web, port, "GET", path));
        assert_eq!(r.status, 200, "{port}{path}");
    }
    // From inside the pod.
    let r = must(&lab, lab.http_in_pod(web, 15020, "GET", "/config_dump"));
    assert_eq!(r.status, 200, "{:?}", r.body);
    let generation = must(&lab, lab.config_generation(web));
    assert!(generation >= 1, "{generation}");

    // The CLI, through the recorded API: the pod as admitted, and its admin port forwarded into
    // the pod's network namespace.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let api = rt.block_on(RecordedApi::start()).expect("recorded API");
    let mut pod = web.object.clone();
    pod["metadata"]["name"] = json!("web");
    pod["metadata"]["namespace"] = json!("bookinfo");
    pod["status"] = json!({"phase": "Running", "podIP": web.ip.to_string()});
    api.on(
        "GET",
        "/api/v1/namespaces/bookinfo/pods/web",
        Reply::json(200, pod.clone()),
    );
    api.on(
        "GET",
        "/api/v1/namespaces/bookinfo/pods",
        Reply::json(
            200,
            json!({"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": [pod]}),
        ),
    );
    api.on_port_forward(
        "bookinfo",
        "web",
        15020,
        PodPort::Connect {
            addr: std::net::SocketAddr::from(([127, 0, 0, 1], 15020)),
            netns: Some(web.netns.path()),
        },
    );
    let cli = |args: &[&str]| {
        rt.block_on(remora_e2e::clitest::remora(&api, args))
            .expect("remora runs")
    };
    let r = cli(&["proxy-config", "listeners", "web.bookinfo", "-o", "json"]);
    assert_eq!(r.code, 0, "{}", r.all());
    let v: serde_json::Value = serde_json::from_str(&r.stdout).expect("JSON");
    assert_eq!(v["proxy"]["target"], "bookinfo/web", "{v}");
    assert_eq!(v["proxy"]["generation"], generation, "{v}");
    let listeners = v["listeners"]["listeners"].as_array().expect("listeners");
    assert!(
        !listeners.is_empty() && listeners.iter().all(|l| l["bound"] == true),
        "{v}"
    );
    // proxy-status reads it the same way (the rules ConfigMap is not recorded: no hash to
    // compare, but the proxy's generation and hash are there).
    let r = cli(&["proxy-status", "-n", "bookinfo", "-o", "json"]);
    assert_eq!(r.code, 0, "{}", r.all());
    let rows: serde_json::Value = serde_json::from_str(&r.stdout).expect("JSON");
    assert_eq!(rows[0]["name"], "web", "{rows}");
    assert_eq!(rows[0]["generation"], generation, "{rows}");
    assert!(rows[0]["proxy_hash"].is_string(), "{rows}");
    let forwards = api
        .requests()
        .iter()
        .filter(|s| s.path() == "/api/v1/namespaces/bookinfo/pods/web/portforward" && s.matched)
        .count();
    assert_eq!(forwards, 2, "{:?}", api.requests());
}

/// The access-log lines of a pod's sidecar (JSON objects, one per line of its log).
fn access_log(pod: &Pod) -> Vec<serde_json::Value> {
    let proxy = pod.container("remora-proxy").expect("a sidecar");
    std::fs::read_to_string(&proxy.proc.log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v.get("direction").is_some() && v.get("status").is_some())
        .collect()
}

/// Waits (bounded) until `pod`'s access log holds `want` inbound lines whose peer principal is
/// `principal`; returns how many it saw.
fn eventually_principals(pod: &Pod, principal: &str, want: usize) -> usize {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let n = access_log(pod)
            .iter()
            .filter(|v| v["direction"] == "inbound" && v["peer_principal"] == principal)
            .count();
        if n == want || Instant::now() >= deadline {
            return n;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

const PEER_AUTHENTICATION: &str = "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: default, namespace: bookinfo}\nspec:\n  mtls: {mode: MODE}\n";

/// Scenario 8: mutual TLS between sidecars, proven on the wire. The lab's control plane (the
/// webhook's mesh CA) gives every sidecar its identity; tcpdump on the node's bridge during
/// Bookinfo requests sees every hop between meshed pods (client → productpage → details,
/// reviews → ratings) as TLS records whose ClientHello offers Istio's ALPN values, and no
/// plain-text HTTP between them, while an unmeshed client's request shows up in plain text.
/// With a STRICT PeerAuthentication the unmeshed clients (a namespace without injection, a pod
/// that opted out) are refused and meshed traffic goes on; PERMISSIVE lets them in again. The
/// destination sidecars count `connection_security_policy="mutual_tls"` and log the source's
/// SPIFFE principal.
#[test]
fn mutual_tls_between_sidecars_on_the_wire() {
    let unmeshed = r#"
apiVersion: v1
kind: Namespace
metadata: {name: legacy}
---
apiVersion: v1
kind: Pod
metadata: {name: old-client, namespace: legacy, labels: {app: old-client}}
spec:
  containers:
  - {name: old, command: ["lab-app", "http", "--service", "old-client", "--port", "8080"]}
---
apiVersion: v1
kind: Pod
metadata: {name: optout, labels: {app: optout}, annotations: {sidecar.istio.io/inject: "false"}}
spec:
  containers:
  - {name: optout, command: ["lab-app", "http", "--service", "optout", "--port", "8080"]}
"#;
    let mut lab = lab_with(
        &[("istio-injection", "enabled")],
        &format!("{BOOKINFO}\n---\n{unmeshed}"),
        "",
    );
    let ip_of = |n: &str| lab.pod(n).unwrap().ip;
    let (client_ip, pp_ip, details_ip, ratings_ip, old_ip) = (
        ip_of("bookinfo/client"),
        ip_of("productpage"),
        ip_of("details"),
        ip_of("ratings"),
        ip_of("legacy/old-client"),
    );
    let meshed: Vec<std::net::Ipv4Addr> = lab
        .pods()
        .iter()
        .filter(|p| p.meshed)
        .map(|p| p.ip)
        .collect();
    assert_eq!(meshed.len(), 7, "Bookinfo and its client are meshed");
    assert!(!lab.pod("optout").unwrap().meshed && !lab.pod("legacy/old-client").unwrap().meshed);
    let reviews_ip = |v: &str| ip_of(&format!("reviews-{v}"));
    let pp = lab.pod("productpage").unwrap();
    let pp0 = must(&lab, lab.metrics(pp));
    let details0 = must(&lab, lab.metrics(lab.pod("details").unwrap()));

    // On the wire: meshed requests, then one from the unmeshed namespace (PERMISSIVE, the
    // default: plain text is let in, and the capture must show it).
    let capture = must(
        &lab,
        remora_e2e::capture::Capture::start(lab.node(), "br0", lab.dir(), "mtls"),
    );
    let n = 12;
    let seen = review_versions(&lab, n, &[]);
    let old = lab.pod("legacy/old-client").unwrap();
    let r = must(
        &lab,
        lab.http(old, "productpage.bookinfo", 9080, "/productpage", &[]),
    );
    assert_eq!(r.status, 200, "PERMISSIVE lets the unmeshed client in");
    let captured = must(&lab, capture.stop());
    assert!(
        captured.dropped.unwrap_or(0) == 0,
        "tcpdump dropped packets: {}",
        captured.log
    );
    let flows = captured.flows();
    let between_meshed: Vec<_> = flows
        .iter()
        .filter(|f| meshed.contains(f.from.ip()) && meshed.contains(f.to.ip()))
        .collect();
    let show = |fs: &[&remora_e2e::capture::Flow]| {
        fs.iter()
            .map(|f| format!("{} -> {} {} bytes: {:?}", f.from, f.to, f.bytes, f.carries))
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert!(
        !between_meshed.is_empty(),
        "no traffic between meshed pods captured"
    );
    for f in &between_meshed {
        assert!(
            f.http_requests.is_empty(),
            "plain-text HTTP between meshed pods: {f:?}"
        );
        assert!(
            f.bytes == 0 || f.is_tls(),
            "not TLS between meshed pods: {f:?}\n{}",
            show(&between_meshed)
        );
        if f.client {
            let alpn = f
                .alpn_offered()
                .unwrap_or_else(|| panic!("no ClientHello: {f:?}"));
            assert!(
                remora_e2e::capture::offers_istio_alpn(alpn),
                "ClientHello without Istio's ALPN: {alpn:?}"
            );
        }
    }
    let app_data: usize = between_meshed
        .iter()
        .map(|f| f.application_data_records())
        .sum();
    assert!(
        app_data >= 2 * n,
        "{app_data} application-data records\n{}",
        show(&between_meshed)
    );
    // Every hop is there, as mTLS with Istio's ALPN.
    let mut hops = vec![
        ("client → productpage", client_ip, pp_ip),
        ("productpage → details", pp_ip, details_ip),
    ];
    let mut reviews_hops = Vec::new();
    for v in ["v1", "v2", "v3"] {
        if seen.contains_key(v) {
            reviews_hops.push(("productpage → reviews", pp_ip, reviews_ip(v)));
            if v != "v1" {
                reviews_hops.push(("reviews → ratings", reviews_ip(v), ratings_ip));
            }
        }
    }
    assert!(!reviews_hops.is_empty(), "{seen:?}");
    hops.extend(reviews_hops);
    for (what, from, to) in hops {
        assert!(
            between_meshed.iter().any(|f| *f.from.ip() == from
                && *f.to.ip() == to
                && f.alpn_offered()
                    .is_some_and(remora_e2e::capture::offers_istio_alpn)),
            "{what} ({from} → {to}): no mTLS connection seen\n{}",
            show(&between_meshed)
        );
    }
    // The control: the unmeshed client's request is on the wire in plain text.
    assert!(
        flows.iter().any(|f| *f.from.ip() == old_ip
            && *f.to.ip() == pp_ip
            && f.http_requests
                .iter()
                .any(|l| l == "GET /productpage HTTP/1.1")),
        "the unmeshed request was not seen in plain text: {:?}",
        flows
            .iter()
            .filter(|f| *f.from.ip() == old_ip)
            .collect::<Vec<_>>()
    );

    // STRICT: unmeshed clients are refused, meshed ones go on.
    lab.set_rules("bookinfo", &PEER_AUTHENTICATION.replace("MODE", "STRICT"))
        .unwrap();
    let pp = lab.pod("productpage").unwrap();
    let refused0 = sum(
        &must(&lab, lab.metrics(pp)),
        "remora_refused_connections_total",
        &[("reason", "mtls_required")],
    );
    for from in ["legacy/old-client", "optout"] {
        let p = lab.pod(from).unwrap();
        let r = lab.http(p, "productpage.bookinfo", 9080, "/productpage", &[]);
        assert!(r.is_err(), "{from} under STRICT: {:?}", r.map(|x| x.status));
    }
    let client = lab.pod("bookinfo/client").unwrap();
    let r = must(
        &lab,
        lab.http(client, "productpage", 9080, "/productpage", &[]),
    );
    assert_eq!(r.status, 200, "meshed traffic under STRICT");
    let refused = sum(
        &must(&lab, lab.metrics(pp)),
        "remora_refused_connections_total",
        &[("reason", "mtls_required")],
    ) - refused0;
    assert!(
        refused >= 2.0,
        "{refused} refusals counted for 2 plain-text clients"
    );

    // PERMISSIVE lets them in again.
    lab.set_rules(
        "bookinfo",
        &PEER_AUTHENTICATION.replace("MODE", "PERMISSIVE"),
    )
    .unwrap();
    for from in ["legacy/old-client", "optout"] {
        let p = lab.pod(from).unwrap();
        let r = must(
            &lab,
            lab.http(p, "productpage.bookinfo", 9080, "/productpage", &[]),
        );
        assert_eq!(r.status, 200, "{from} under PERMISSIVE");
    }

    // The destinations counted mTLS and logged who called: productpage served n + 1 meshed and
    // 3 plain requests; details was called once per productpage request, always over mTLS.
    let (pp, details) = (lab.pod("productpage").unwrap(), lab.pod("details").unwrap());
    let all = (n + 4) as f64;
    let mtls = [
        ("reporter", "destination"),
        ("connection_security_policy", "mutual_tls"),
    ];
    let plain = [
        ("reporter", "destination"),
        ("connection_security_policy", "none"),
    ];
    eventually_metrics(&lab, &[pp, details], |now| {
        let d = |i: usize, before: &[Sample], f: &[(&str, &str)]| {
            sum(&now[i], REQ, f) - sum(before, REQ, f)
        };
        let got = (
            d(0, &pp0, &mtls),
            d(0, &pp0, &plain),
            d(1, &details0, &mtls),
            d(1, &details0, &plain),
        );
        let want = ((n + 1) as f64, 3.0, all, 0.0);
        if got == want {
            Ok(())
        } else {
            Err(format!("(productpage mutual_tls, none; details mutual_tls, none): counted {got:?}, sent {want:?}"))
        }
    });
    let client_id = "spiffe://cluster.local/ns/bookinfo/sa/client";
    let pp_id = "spiffe://cluster.local/ns/bookinfo/sa/bookinfo-productpage";
    assert_eq!(eventually_principals(pp, client_id, n + 1), n + 1);
    assert_eq!(eventually_principals(details, pp_id, n + 4), n + 4);
    // (The sidecar's own app-health probes of productpage's /health are inbound lines too.)
    let plain_lines: Vec<_> = access_log(pp)
        .into_iter()
        .filter(|v| {
            v["direction"] == "inbound"
                && v["path"] == "/productpage"
                && v["peer_principal"].is_null()
        })
        .collect();
    assert_eq!(
        plain_lines.len(),
        3,
        "the plain-text requests have no principal: {plain_lines:#?}"
    );

    // Kiali's graph from the metrics: each hop names its workloads (Deployments, not their
    // ReplicaSets), apps, versions and principals on both reporters, with no `unknown` among
    // meshed pods: productpage-v1 → the reviews versions it reached (its outbound), reviews-v2
    // and -v3 → ratings-v1 (ratings' inbound), and every mTLS caller named.
    let ratings = lab.pod("ratings").unwrap();
    let reviews_id = "spiffe://cluster.local/ns/bookinfo/sa/bookinfo-reviews";
    eventually_metrics(&lab, &[pp, details, ratings], |now| {
        let mut missing = Vec::new();
        for v in seen.keys().map(String::as_str) {
            let reviews = format!("reviews-{v}");
            let edge = [
                ("reporter", "source"),
                ("source_workload", "productpage-v1"),
                ("source_workload_namespace", "bookinfo"),
                ("source_app", "productpage"),
                ("source_version", "v1"),
                ("source_principal", pp_id),
                ("destination_workload", reviews.as_str()),
                ("destination_workload_namespace", "bookinfo"),
                ("destination_app", "reviews"),
                ("destination_version", v),
                ("destination_canonical_service", "reviews"),
                ("destination_canonical_revision", v),
                ("destination_principal", reviews_id),
                ("connection_security_policy", "mutual_tls"),
            ];
            if sum(&now[0], REQ, &edge) < 1.0 {
                missing.push(format!("productpage-v1 → reviews-{v}"));
            }
            if v == "v1" {
                continue;
            }
            let edge = [
                ("reporter", "destination"),
                ("source_workload", reviews.as_str()),
                ("source_app", "reviews"),
                ("source_version", v),
                ("source_principal", reviews_id),
                ("destination_workload", "ratings-v1"),
                ("destination_app", "ratings"),
                ("destination_canonical_revision", "v1"),
                ("connection_security_policy", "mutual_tls"),
            ];
            if sum(&now[2], REQ, &edge) < 1.0 {
                missing.push(format!("reviews-{v} → ratings-v1"));
            }
        }
        // (Plain-text callers outside the mesh — the unmeshed pods, the node's probes — are
        // `unknown`, as in Istio.)
        for (i, who) in ["productpage", "details", "ratings"].iter().enumerate() {
            let unknown = sum(
                &now[i],
                REQ,
                &[
                    ("reporter", "destination"),
                    ("source_workload", "unknown"),
                    ("connection_security_policy", "mutual_tls"),
                ],
            );
            if unknown > 0.0 {
                missing.push(format!("{unknown} mTLS requests to {who} from `unknown`"));
            }
        }
        if missing.is_empty() {
            Ok(())
        } else {
            let series: Vec<_> = now
                .iter()
                .flatten()
                .filter(|s| s.name == REQ)
                .map(|s| format!("{:?} {}", s.labels, s.value))
                .collect();
            Err(format!("edges missing: {missing:?}\n{}", series.join("\n")))
        }
    });
}

/// Reviews versions seen over `n` requests from `from` straight to the reviews Service.
fn versions_from(lab: &Lab, from: &str, host: &str, n: usize) -> BTreeMap<String, u32> {
    let client = lab.pod(from).unwrap();
    let mut seen = BTreeMap::new();
    for _ in 0..n {
        let r = must(lab, lab.http(client, host, 9080, "/reviews/1", &[]));
        assert_eq!(r.status, 200, "{:?}", r.body);
        let v = r.json().unwrap();
        let version = v["version"].as_str().unwrap_or("?").to_string();
        *seen.entry(version).or_default() += 1;
    }
    seen
}

/// Istio objects applied as objects (not hand-written ConfigMaps), compiled by the control
/// plane's rules controller: a client in `frontend` reaches `reviews` in `bookinfo` by a
/// DestinationRule defined in `bookinfo` and a VirtualService defined in `frontend`; a change
/// of the VirtualService reaches the client's proxy.
#[test]
fn rules_applied_as_objects_reach_other_namespaces() {
    let mut lab = Lab::start(LabOptions {
        rules_controller: true,
        ..LabOptions::default()
    })
    .expect("lab starts");
    let meshed = [("istio-injection", "enabled")];
    lab.create_namespace("bookinfo", &meshed).unwrap();
    lab.create_namespace("frontend", &meshed).unwrap();
    let r = lab.apply(BOOKINFO, "bookinfo");
    must(&lab, r);
    let client = "apiVersion: v1\nkind: Pod\nmetadata: {name: web, labels: {app: web, version: v1}}\nspec:\n  serviceAccountName: web\n  containers:\n  - name: web\n    image: lab/lab-app:latest\n    command: [lab-app]\n    args: [http, --service, web, --port, \"9080\"]\n    readinessProbe: {tcpSocket: {port: 9080}}\n";
    let r = lab.apply(client, "frontend");
    must(&lab, r);
    const HOST: &str = "reviews.bookinfo.svc.cluster.local";
    let dr = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: reviews}\nspec:\n  host: reviews\n  subsets:\n  - {name: v1, labels: {version: v1}}\n  - {name: v2, labels: {version: v2}}\n  - {name: v3, labels: {version: v3}}\n";
    let vs = |subset: &str| {
        format!("apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: reviews}}\nspec:\n  hosts: [{HOST}]\n  exportTo: [\".\"]\n  http:\n  - route: [{{destination: {{host: {HOST}, subset: {subset}}}}}]\n")
    };
    let r = lab.apply(dr, "bookinfo");
    must(&lab, r);
    let r = lab.apply(&vs("v2"), "frontend");
    must(&lab, r);
    assert_eq!(
        versions_from(&lab, "web", HOST, 20),
        BTreeMap::from([("v2".into(), 20)])
    );
    // What the controller wrote: frontend sees bookinfo's DestinationRule and its own
    // VirtualService; bookinfo does not see frontend's VirtualService (exportTo ".").
    let keys = |ns: &str| -> Vec<String> {
        lab.api()
            .object("configmaps", ns, "remora-mesh-rules")
            .and_then(|cm| cm["data"].as_object().map(|d| d.keys().cloned().collect()))
            .unwrap_or_default()
    };
    let front = keys("frontend");
    assert!(
        front.contains(&"bookinfo.destinationrule.reviews.yaml".to_string())
            && front.contains(&"frontend.virtualservice.reviews.yaml".to_string()),
        "{front:?}"
    );
    assert!(
        !keys("bookinfo").contains(&"frontend.virtualservice.reviews.yaml".to_string()),
        "{:?}",
        keys("bookinfo")
    );
    // A change applied as an object reaches the client's proxy (timed, not asserted: the
    // controller batches for 100 ms, the lab's kubelet syncs the volume at once).
    let started = Instant::now();
    let r = lab.apply(&vs("v3"), "frontend");
    must(&lab, r);
    eprintln!(
        "VirtualService change to the proxy's reload: {} ms",
        started.elapsed().as_millis()
    );
    assert_eq!(
        versions_from(&lab, "web", HOST, 20),
        BTreeMap::from([("v3".into(), 20)])
    );
}

/// AuthorizationPolicy and RequestAuthentication between lab pods with mTLS identities from
/// the lab CA: reviews may call ratings, productpage gets Istio's 403; a token signed by Istio's
/// test key opens details' `/secure`, a forged one gets 401 and none 403.
#[test]
fn authorization_and_jwt_between_pods() {
    remora_corpus::require!("jwt");
    let (jwks, demo) = remora_e2e::security::jwt_samples().expect("the JWT samples");
    let mut lab = lab_with(&[("istio-injection", "enabled")], BOOKINFO, "");
    let r = lab.set_rules("bookinfo", &remora_e2e::security::authz_rules(&jwks));
    must(&lab, r);
    let get = |from: &str, host: &str, path: &str, headers: &[(&str, &str)]| {
        let p = lab.pod(from).unwrap();
        let r = must(&lab, lab.http(p, host, 9080, path, headers));
        (r.status, String::from_utf8_lossy(&r.body).into_owned())
    };
    assert_eq!(get("reviews-v2", "ratings", "/ratings/0", &[]).0, 200);
    assert_eq!(
        get("productpage", "ratings", "/ratings/0", &[]),
        (403, "RBAC: access denied".to_string())
    );
    // The product page still works: productpage calls reviews, which calls ratings.
    assert_eq!(
        get("bookinfo/client", "productpage", "/productpage", &[]).0,
        200
    );

    let bearer = format!("Bearer {demo}");
    let forged = format!("Bearer {}", remora_e2e::security::forge(&demo));
    assert_eq!(
        get(
            "bookinfo/client",
            "details",
            "/secure/x",
            &[("authorization", &bearer)]
        )
        .0,
        200
    );
    assert_eq!(
        get(
            "bookinfo/client",
            "details",
            "/secure/x",
            &[("authorization", &forged)]
        ),
        (401, "Jwt verification fails".to_string())
    );
    assert_eq!(get("bookinfo/client", "details", "/secure/x", &[]).0, 403);
    assert_eq!(get("bookinfo/client", "details", "/details/0", &[]).0, 200);
}

/// Istio's ingress pattern in the lab: `manifests/gateway.yaml` applied with its Secrets mounted
/// (the lab's pods cannot reach its API; otherwise unchanged: its pod runs
/// the Deployment's container — `remora-proxy gateway`, uid 1337, not injected, no capture),
/// Istio's own `bookinfo-gateway.yaml` and reviews → v3 applied in `bookinfo`; `istio-system`
/// (labelled `remora.dev/gateway=enabled`) gets in its ConfigMap bookinfo's Gateway, the
/// VirtualService bound to it and the Services' entries — written by the rules controller from
/// objects, as `kubectl apply` does. A client outside the mesh gets the product page through the
/// gateway, built by productpage from reviews v3 and ratings; an unmatched path is the
/// gateway's 404. An AuthorizationPolicy in `istio-system` selecting the gateway's pod denies a
/// path there (403). The gateway holds a workload identity from the lab's mesh CA, so under
/// PeerAuthentication STRICT it still reaches productpage, over mutual TLS.
#[test]
fn bookinfo_through_the_ingress_gateway() {
    gateway_scenario(true);
}

/// The same without the rules controller: the lab writes the gateway namespace's ConfigMap with
/// the gateway's view (`remora_model::compile::render_view`), as `remora-lab up` runs it.
#[test]
fn bookinfo_through_the_ingress_gateway_without_the_controller() {
    gateway_scenario(false);
}

fn gateway_scenario(rules_controller: bool) {
    remora_corpus::require!("networking");
    let mut lab = Lab::start(LabOptions {
        rules_controller,
        ..LabOptions::default()
    })
    .expect("lab starts");
    lab.create_namespace("bookinfo", &[("istio-injection", "enabled")])
        .unwrap();
    let r = lab.apply(BOOKINFO, "bookinfo");
    must(&lab, r);
    // HTTPS too: a Gateway server for bookinfo.example.com with a test certificate in the
    // Secret bookinfo-credential (istio-system), mounted as docs/gateways.md says.
    const SECURE: &str = ingress::SECURE_HOST;
    let https = ingress::https_rules();
    let bound = rules(&[
        &anchor("destination-rule-all.yaml"),
        &anchor("virtual-service-reviews-v3.yaml"),
        &anchor("bookinfo-gateway.yaml"),
        &https,
    ]);
    let r = lab.apply(&bound, "bookinfo");
    must(&lab, r);
    let r = ingress::secure_credential(&mut lab);
    let crt = must(&lab, r);
    let r = lab.start_gateway_with_credentials(&[ingress::SECURE_CREDENTIAL]);
    must(&lab, r);
    let r = lab.apply(ingress::VISITOR, ingress::OUTSIDE_NAMESPACE);
    must(&lab, r);
    let gw = lab.pod("istio-system/istio-ingressgateway").unwrap();
    assert!(!gw.reviewed && !gw.meshed, "the gateway is not injected");
    let (_, containers) = gw.spec_containers();
    assert_eq!(containers, ["istio-proxy"]);
    assert!(
        !must(&lab, lab.nat_rules(gw)).contains("REMORA"),
        "no capture in the gateway's pod"
    );
    assert!(!lab.pod("outside/visitor").unwrap().meshed);

    // The controller writes istio-system's ConfigMap a moment after the objects exist and the
    // gateway reloads it: bounded wait for the first page.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = must(&lab, ingress::get(&lab, "visitor", "/productpage"));
        if r.status == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no product page through the gateway within 30 s (last {} {:?})\n--- logs:\n{}",
            r.status,
            String::from_utf8_lossy(&r.body),
            lab.logs(25)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let keys: Vec<String> = if rules_controller {
        let cm = lab
            .api()
            .object("configmaps", "istio-system", "remora-mesh-rules")
            .expect("the controller wrote istio-system's rules");
        cm["data"]
            .as_object()
            .map(|d| d.keys().cloned().collect())
            .unwrap_or_default()
    } else {
        let dir = lab.dir().join("ns/istio-system/remora-mesh-rules");
        std::fs::read_dir(&dir)
            .expect("the lab wrote istio-system's rules")
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| !n.starts_with(".."))
            .collect()
    };
    for k in [
        "bookinfo.gateway.bookinfo-gateway.yaml",
        "bookinfo.virtualservice.bookinfo.yaml",
    ] {
        assert!(keys.contains(&k.to_string()), "{k} not in {keys:?}");
    }
    for _ in 0..10 {
        let r = must(&lab, ingress::get(&lab, "visitor", "/productpage"));
        assert_eq!(r.status, 200, "{:?}", String::from_utf8_lossy(&r.body));
        let v = r.json().unwrap();
        assert_eq!(
            ingress::page_chain(&v),
            "productpage v1 ← reviews v3 ← ratings v1",
            "{v}"
        );
        assert_eq!(v["details"]["service"], "details", "{v}");
    }
    let r = must(&lab, ingress::get(&lab, "visitor", "/admin"));
    assert_eq!(r.status, 404, "{:?}", String::from_utf8_lossy(&r.body));

    // HTTPS: the gateway terminates TLS with the Secret's certificate (the client trusts only
    // it) and routes by the VirtualService bound to the HTTPS server.
    let deadline = Instant::now() + Duration::from_secs(30);
    let (status, body) = loop {
        match ingress::get_tls(&lab, "visitor", SECURE, &crt, "/productpage") {
            Ok(r) if r.0 == 200 => break r,
            other if Instant::now() >= deadline => panic!(
                "no product page over HTTPS within 30 s: {other:?}\n--- logs:\n{}",
                lab.logs(25)
            ),
            _ => std::thread::sleep(Duration::from_millis(200)),
        }
    };
    assert_eq!(status, 200);
    assert!(body.contains("\"service\":\"productpage\""), "{body}");
    // A name no HTTPS server has: no handshake.
    assert!(ingress::get_tls(&lab, "visitor", "other.example.com", &crt, "/productpage").is_err());

    // A weighted route applied at the gateway (a second VirtualService bound to Istio's
    // Gateway, another host): reviews v1 80 %, v2 20 % by bookinfo's DestinationRule subsets.
    const EDGE: &str = "reviews.example.com";
    let split = format!("apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: reviews-edge}}\nspec:\n  hosts: [{EDGE}]\n  gateways: [bookinfo-gateway]\n  http:\n  - route:\n    - {{destination: {{host: reviews, subset: v1}}, weight: 80}}\n    - {{destination: {{host: reviews, subset: v2}}, weight: 20}}\n");
    let r = lab.apply(&rules(&[&bound, &split]), "bookinfo");
    must(&lab, r);
    let version = |r: &remora_e2e::client::HttpReply| -> Option<String> {
        let v = r.json().ok()?;
        (v["service"] == "reviews").then(|| v["version"].as_str().unwrap_or("?").to_string())
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = must(&lab, ingress::get_host(&lab, "visitor", EDGE, "/reviews/0"));
        if r.status == 200 && version(&r).is_some() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the gateway did not route {EDGE} within 30 s (last {} {:?})",
            r.status,
            String::from_utf8_lossy(&r.body)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let n = 200;
    let mut seen: BTreeMap<String, u32> = BTreeMap::new();
    for _ in 0..n {
        let r = must(&lab, ingress::get_host(&lab, "visitor", EDGE, "/reviews/0"));
        assert_eq!(r.status, 200, "{:?}", String::from_utf8_lossy(&r.body));
        *seen.entry(version(&r).unwrap_or_default()).or_default() += 1;
    }
    let v1 = seen.get("v1").copied().unwrap_or(0);
    let v2 = seen.get("v2").copied().unwrap_or(0);
    assert_eq!(v1 + v2, n, "only v1 and v2: {seen:?}");
    within_4_sigma("reviews v1 through the gateway", v1, n, 0.8);
    // The product page is still served (the first VirtualService, host "*").
    let r = must(&lab, ingress::get(&lab, "visitor", "/productpage"));
    assert_eq!(r.status, 200);
    // The gateway counted the pages as the source of the requests.
    let gw = lab.pod("istio-system/istio-ingressgateway").unwrap();
    eventually_metrics(&lab, &[gw], |m| {
        let n = sum(
            &m[0],
            REQ,
            &[("reporter", "source"), ("response_code", "200")],
        );
        if n >= 11.0 {
            Ok(())
        } else {
            Err(format!("gateway counted {n} pages, want at least 11"))
        }
    });

    // AuthorizationPolicy at the gateway, as Istio applies it: a policy in the gateway's
    // namespace selecting `istio: ingressgateway` denies the reviews paths before routing
    // (403 `RBAC: access denied`); the product page still passes.
    let deny = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: ingress-deny-reviews}\nspec:\n  selector: {matchLabels: {istio: ingressgateway}}\n  action: DENY\n  rules: [{to: [{operation: {paths: ['/reviews/*']}}]}]\n";
    let r = lab.apply(deny, remora_e2e::lab::GATEWAY_NAMESPACE);
    must(&lab, r);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = must(&lab, ingress::get_host(&lab, "visitor", EDGE, "/reviews/0"));
        if r.status == 403 {
            assert_eq!(String::from_utf8_lossy(&r.body), "RBAC: access denied");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the gateway did not apply its AuthorizationPolicy within 30 s (last {} {:?})\n--- logs:\n{}",
            r.status,
            String::from_utf8_lossy(&r.body),
            lab.logs(25)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let r = must(&lab, ingress::get(&lab, "visitor", "/productpage"));
    assert_eq!(r.status, 200, "{:?}", String::from_utf8_lossy(&r.body));

    // The gateway has a workload identity (the manifest's CA settings, as the injector gives
    // sidecars): under PeerAuthentication STRICT in bookinfo it still reaches productpage, over
    // mutual TLS, and productpage names the gateway's principal as the source.
    let strict = PEER_AUTHENTICATION.replace("MODE", "STRICT");
    let r = lab.apply(&rules(&[&bound, &split, &strict]), "bookinfo");
    must(&lab, r);
    let outside = lab.pod("outside/visitor").unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while lab
        .http(outside, "productpage.bookinfo", 9080, "/productpage", &[])
        .is_ok()
    {
        assert!(
            Instant::now() < deadline,
            "STRICT not in effect at productpage within 30 s"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    for _ in 0..5 {
        let r = must(&lab, ingress::get(&lab, "visitor", "/productpage"));
        assert_eq!(
            r.status,
            200,
            "through the gateway under STRICT: {:?}",
            String::from_utf8_lossy(&r.body)
        );
    }
    let pp = lab.pod("bookinfo/productpage").unwrap();
    eventually_metrics(&lab, &[pp], |m| {
        let n = sum(
            &m[0],
            REQ,
            &[
                ("reporter", "destination"),
                (
                    "source_principal",
                    "spiffe://cluster.local/ns/istio-system/sa/istio-ingressgateway",
                ),
                ("source_workload", "istio-ingressgateway"),
                ("connection_security_policy", "mutual_tls"),
            ],
        );
        if n >= 5.0 {
            Ok(())
        } else {
            Err(format!(
                "productpage counted {n} mutual-TLS requests from the gateway, want at least 5"
            ))
        }
    });
}

/// One Bookinfo request (client → productpage → reviews v2 → ratings) with tracing on in the
/// injector's mesh settings (Zipkin provider, 100 %) is one trace at a Zipkin collector on the
/// node: each sidecar's span is the child of the one before it, the apps only copying the
/// headers as Bookinfo's do.
#[test]
fn bookinfo_request_is_one_trace_with_parent_child_spans() {
    remora_corpus::require!("networking");
    use remora_e2e::collector::{Collector, GotSpan};
    let dir = tempfile::tempdir().unwrap();
    let base = remora_e2e::lab::injector_config(dir.path())
        .unwrap()
        .expect("the install's injector config");
    let mut cfg: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(&std::fs::read_to_string(&base).unwrap()).unwrap();
    let node = remora_e2e::lab::NODE_IP;
    let mesh: serde_yaml_ng::Value = serde_yaml_ng::from_str(&format!(
        "{{accessLogEncoding: JSON, enableTracing: true, defaultConfig: {{tracing: {{sampling: 100}}}}, defaultProviders: {{tracing: [zipkin]}}, extensionProviders: [{{name: zipkin, zipkin: {{service: \"{node}\", port: 9411}}}}]}}"
    ))
    .unwrap();
    cfg.as_mapping_mut()
        .expect("config is a mapping")
        .insert("mesh".into(), mesh);
    let path = dir.path().join("tracing.yaml");
    std::fs::write(&path, serde_yaml_ng::to_string(&cfg).unwrap()).unwrap();
    let mut lab = Lab::start(LabOptions {
        webhook_config: Some(path),
        ..LabOptions::default()
    })
    .expect("lab starts");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let listener = must(
        &lab,
        lab.node().listen(std::net::SocketAddr::from((node, 9411))),
    );
    let col = {
        let _in = rt.enter();
        Collector::start_on(listener, false)
    };
    lab.create_namespace("bookinfo", &[("istio-injection", "enabled")])
        .unwrap();
    let dr = anchor("destination-rule-all.yaml");
    lab.set_rules(
        "bookinfo",
        &rules(&[&dr, &anchor("virtual-service-reviews-test-v2.yaml")]),
    )
    .unwrap();
    let r = lab.apply(BOOKINFO, "bookinfo");
    must(&lab, r);
    let client = lab.pod("client").unwrap();
    let r = must(
        &lab,
        lab.http(
            client,
            "productpage",
            9080,
            "/productpage",
            &[("end-user", "jason")],
        ),
    );
    assert_eq!(r.status, 200, "{:?}", r.body);
    let body = r.json().unwrap();
    assert_eq!(body["reviews"]["version"], "v2", "{body}");
    let is = |s: &GotSpan, service: &str, kind: &str| {
        s.service == format!("{service}.bookinfo") && s.kind == kind
    };
    // The client's request is the root (the kubelet's probes make traces of their own).
    let is_root =
        |s: &GotSpan| is(s, "client", "CLIENT") && s.tags["http.url"].ends_with("/productpage");
    let complete = |all: &[GotSpan]| {
        all.iter().filter(|r| is_root(r)).any(|r| {
            let t = all.iter().filter(|s| s.trace_id == r.trace_id);
            // Each proxy sends its own batches: wait for all eight spans.
            t.clone().any(|x| is(x, "ratings", "SERVER")) && t.count() >= 8
        })
    };
    let spans = col.wait_for("the request's trace down to ratings", complete);
    let first_root = spans.iter().find(|s| is_root(s)).unwrap();
    let trace: Vec<&GotSpan> = spans
        .iter()
        .filter(|s| s.trace_id == first_root.trace_id)
        .collect();
    let ratings = *trace.iter().find(|s| is(s, "ratings", "SERVER")).unwrap();
    let by_id = |id: &Option<String>| -> &GotSpan {
        let id = id
            .as_deref()
            .unwrap_or_else(|| panic!("no parent: {trace:#?}"));
        trace
            .iter()
            .find(|s| s.id == id)
            .unwrap_or_else(|| panic!("parent {id} not in the trace: {trace:#?}"))
    };
    // ratings ← reviews (client) ← reviews (server) ← productpage (client) ← productpage
    // (server) ← client (client, the root).
    let reviews_out = by_id(&ratings.parent);
    assert!(is(reviews_out, "reviews", "CLIENT"), "{reviews_out:#?}");
    assert_eq!(
        reviews_out.name,
        "ratings.bookinfo.svc.cluster.local:9080/*"
    );
    let reviews_in = by_id(&reviews_out.parent);
    assert!(is(reviews_in, "reviews", "SERVER"), "{reviews_in:#?}");
    let product_out = by_id(&reviews_in.parent);
    assert!(is(product_out, "productpage", "CLIENT"), "{product_out:#?}");
    assert_eq!(
        product_out.name,
        "reviews.bookinfo.svc.cluster.local:9080/*"
    );
    assert!(
        product_out.tags["upstream_cluster"].starts_with("outbound|9080|v2|reviews."),
        "{product_out:#?}"
    );
    let product_in = by_id(&product_out.parent);
    assert!(is(product_in, "productpage", "SERVER"), "{product_in:#?}");
    let root = by_id(&product_in.parent);
    assert!(is(root, "client", "CLIENT"), "{root:#?}");
    assert_eq!(root.parent, None);
    // details is productpage's other child; 8 spans in all, each a proxy's.
    let details_in = trace
        .iter()
        .find(|s| is(s, "details", "SERVER"))
        .expect("details span");
    assert!(is(by_id(&details_in.parent), "productpage", "CLIENT"));
    assert_eq!(trace.len(), 8, "{trace:#?}");
    assert!(trace.iter().all(|s| s.tags["component"] == "proxy"
        && s.tags["istio.namespace"] == "bookinfo"
        && s.tags["guid:x-request-id"] == root.tags["guid:x-request-id"]));
    drop(lab);
}

/// Istio's egress gateway pattern in the mesh lab: `manifests/egress-gateway.yaml` applied (as
/// the lab applies the ingress gateway's manifest), an "external host" that is a plain pod of an
/// unmeshed namespace (a network namespace on the lab bridge, reached by its address through a
/// ServiceEntry), and Istio's Gateway and VirtualService bound to the egress gateway and to
/// `mesh`: a meshed pod's request for the external host leaves through the egress gateway — the
/// external host answers, the sidecar counts its request to the egress gateway's service, the
/// egress gateway counts its own to the external host — and the app's own destination (the
/// external host's port 80, where nothing listens) is never used.
#[test]
fn egress_through_the_egress_gateway() {
    let mut lab = Lab::start(LabOptions {
        rules_controller: true,
        ..LabOptions::default()
    })
    .expect("lab starts");
    lab.create_namespace("external", &[]).unwrap();
    lab.create_namespace("shop", &[("istio-injection", "enabled")])
        .unwrap();
    let site = "apiVersion: v1\nkind: Pod\nmetadata: {name: site, labels: {app: site}}\nspec:\n  containers:\n  - name: site\n    image: lab/lab-app:latest\n    command: [lab-app]\n    args: [http, --service, external-site, --port, \"9080\"]\n    readinessProbe: {tcpSocket: {port: 9080}}\n";
    let r = lab.apply(site, "external");
    must(&lab, r);
    let sleep = "apiVersion: v1\nkind: Pod\nmetadata: {name: sleep, labels: {app: sleep}}\nspec:\n  containers:\n  - name: sleep\n    image: lab/lab-app:latest\n    command: [lab-app]\n    args: [http, --service, sleep, --port, \"9080\"]\n    readinessProbe: {tcpSocket: {port: 9080}}\n";
    let r = lab.apply(sleep, "shop");
    must(&lab, r);
    let site_ip = lab.pod("external/site").unwrap().ip;
    let pattern = format!(
        "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: external-site}}
spec:
  hosts: [external.example.com]
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  location: MESH_EXTERNAL
  resolution: STATIC
  endpoints: [{{address: {site_ip}, ports: {{http: 9080}}}}]
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: istio-egressgateway}}
spec:
  selector: {{istio: egressgateway}}
  servers:
  - port: {{number: 80, name: http, protocol: HTTP}}
    hosts: [external.example.com]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: direct-through-egress-gateway}}
spec:
  hosts: [external.example.com]
  gateways: [istio-egressgateway, mesh]
  http:
  - match: [{{gateways: [mesh], port: 80}}]
    route:
    - destination: {{host: istio-egressgateway.istio-system.svc.cluster.local, port: {{number: 80}}}}
  - match: [{{gateways: [istio-egressgateway], port: 80}}]
    route:
    - destination: {{host: external.example.com, port: {{number: 80}}}}
"
    );
    let r = lab.apply(&pattern, "shop");
    must(&lab, r);
    let r = lab.start_egress_gateway();
    must(&lab, r);
    let egress = lab.pod("istio-system/istio-egressgateway").unwrap();
    assert!(!egress.meshed, "the egress gateway is not injected");
    // The app addresses the external host itself (its port 80: nothing listens there).
    let get = |lab: &Lab| {
        let p = lab.pod("shop/sleep")?;
        lab.rt.block_on(remora_e2e::client::http(
            &p.netns,
            std::net::SocketAddr::from((site_ip, 80)),
            "external.example.com",
            "GET",
            "/news",
            &[],
            Duration::from_secs(15),
        ))
    };
    // The controller writes the ConfigMaps a moment after the objects exist: bounded wait.
    let deadline = Instant::now() + Duration::from_secs(30);
    let reply = loop {
        let r = get(&lab);
        if let Ok(r) = &r {
            if r.status == 200 {
                break r.json().unwrap();
            }
        }
        assert!(
            Instant::now() < deadline,
            "no answer from the external host through the egress gateway within 30 s (last {:?})\n--- logs:\n{}",
            r.map(|r| (r.status, String::from_utf8_lossy(&r.body).to_string())),
            lab.logs(25)
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(reply["service"], "external-site", "{reply}");
    // Each hop counted its request: the sidecar to the egress gateway's service, the egress
    // gateway to the external host.
    let sidecar = must(&lab, lab.metrics(lab.pod("shop/sleep").unwrap()));
    let to_gateway = sum(
        &sidecar,
        "istio_requests_total",
        &[
            ("reporter", "source"),
            (
                "destination_service",
                "istio-egressgateway.istio-system.svc.cluster.local",
            ),
            ("response_code", "200"),
        ],
    );
    assert!(to_gateway >= 1.0, "{sidecar:?}");
    let gw = must(&lab, lab.metrics(egress));
    let to_site = sum(
        &gw,
        "istio_requests_total",
        &[
            ("reporter", "source"),
            ("destination_service", "external.example.com"),
            ("response_code", "200"),
        ],
    );
    assert!(to_site >= 1.0, "{gw:?}");
}
