//! `remora-lab`: the mesh lab from the command line.
//!   remora-lab up      Bookinfo in a meshed namespace; prints how to reach it; Ctrl-C tears down.
//!   remora-lab demo    the narrated demo (scripts/demo): injection, capture rules, routing live,
//!                      mutual TLS on the wire, authorization, the ingress gateway.
//!   remora-lab bench   the data-plane benchmark (scripts/bench lab): Markdown table on stdout.
//!   remora-lab bench-controller  the rules controller at scale (scripts/bench controller).
//!   remora-lab bench-discovery   discovery served by the control plane at scale, against
//!                                watch-per-sidecar (scripts/bench discovery).
//!   remora-lab soak    the fault-injecting soak (scripts/soak): report in target/soak/.

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use remora_e2e::table;
use remora_e2e::{Lab, LabOptions};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use remora_e2e::bench;

const BOOKINFO: &str = include_str!("../../fixtures/bookinfo.yaml");

#[derive(Parser)]
#[command(name = "remora-lab", about = "remora's network-namespace mesh lab")]
struct Cli {
    /// Directory with remora-webhook, remora-init, remora-proxy and lab-app (default: this
    /// program's own directory).
    #[arg(long, global = true)]
    bin_dir: Option<PathBuf>,
    /// Print every lab step.
    #[arg(long, short, global = true)]
    verbose: bool,
    /// CNI mode: the injector's `cni.enabled`, and the lab's kubelet calls the remora-cni plugin
    /// (pods get the unprivileged remora-validation instead of remora-init).
    #[arg(long, global = true)]
    cni: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Start Bookinfo in the lab and keep it running until Ctrl-C.
    Up,
    /// The narrated demo.
    Demo {
        /// Requests per measured step.
        #[arg(long, default_value_t = 200)]
        requests: usize,
    },
    /// The data-plane benchmark.
    Bench(bench::BenchArgs),
    /// The rules controller at scale (the real control plane against the lab's API).
    BenchController(remora_e2e::controller_bench::Args),
    /// Discovery at scale: the real control plane serving simulated subscribers and real
    /// proxies from a generated cluster, against proxies watching the API themselves.
    BenchDiscovery(remora_e2e::discovery_bench::Args),
    /// The fault-injecting soak: fixed-rate load while rules reload, backends hang, fail, die
    /// and drain, and the webhook's certificate rotates. Exits 1 when it fails.
    Soak {
        /// Seconds of load.
        #[arg(long, default_value_t = 600)]
        seconds: u64,
        /// Requests per second.
        #[arg(long, default_value_t = 40)]
        rate: u32,
        /// Requests in flight at most.
        #[arg(long, default_value_t = 16)]
        concurrency: usize,
        /// Where report.json, samples.csv and report.md go (default: target/soak).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Remove namespaces (and their processes) left by labs that were killed.
    Cleanup,
}

static CANCEL: OnceLock<Arc<AtomicBool>> = OnceLock::new();

extern "C" fn on_signal(_: i32) {
    if let Some(c) = CANCEL.get() {
        c.store(true, Ordering::Relaxed);
    }
}

fn install_signals(flag: Arc<AtomicBool>) -> Result<()> {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
    let _ = CANCEL.set(flag);
    let act = SigAction::new(
        SigHandler::Handler(on_signal),
        SaFlags::empty(),
        SigSet::empty(),
    );
    for s in [Signal::SIGINT, Signal::SIGTERM] {
        // SAFETY: the handler only stores into an atomic.
        unsafe { sigaction(s, &act) }.context("installing the signal handler")?;
    }
    Ok(())
}

fn main() {
    let cli = Cli::parse();
    let cancel = Arc::new(AtomicBool::new(false));
    if let Err(e) = install_signals(cancel.clone()) {
        eprintln!("remora-lab: {e:#}");
        std::process::exit(1);
    }
    let mut opts = LabOptions {
        verbose: cli.verbose,
        cancel,
        ..LabOptions::default()
    };
    opts.cni |= cli.cni;
    if let Some(d) = cli.bin_dir {
        opts.bin_dir = d;
    }
    let result = match cli.cmd {
        Cmd::Up => up(opts),
        Cmd::Demo { requests } => demo(opts, requests),
        Cmd::Bench(args) => bench::run(opts, args),
        Cmd::BenchController(args) => remora_e2e::controller_bench::run(&opts.bin_dir, args),
        Cmd::BenchDiscovery(args) => {
            remora_e2e::discovery_bench::run(&opts.bin_dir, args, opts.cancel.clone())
        }
        Cmd::Soak {
            seconds,
            rate,
            concurrency,
            out,
        } => soak(opts, seconds, rate, concurrency, out),
        Cmd::Cleanup => cleanup(),
    };
    if let Err(e) = result {
        eprintln!("remora-lab: {e:#}");
        std::process::exit(1);
    }
}

fn soak(
    opts: LabOptions,
    seconds: u64,
    rate: u32,
    concurrency: usize,
    out: Option<PathBuf>,
) -> Result<()> {
    use remora_e2e::soak;
    let mut cfg = soak::SoakConfig::standard(seconds);
    cfg.rate = rate;
    cfg.concurrency = concurrency;
    if let Some(o) = out {
        cfg.out_dir = o;
    }
    let dir = cfg.out_dir.clone();
    let report = soak::run(opts, cfg)?;
    print!("{}", soak::render(&report));
    println!(
        "report: {}/report.json, samples: {}/samples.csv",
        dir.display(),
        dir.display()
    );
    if !report.passed {
        bail!("the soak failed: {}", report.problems.join("; "));
    }
    Ok(())
}

fn cleanup() -> Result<()> {
    let done = remora_e2e::lab::cleanup_stale()?;
    if done.is_empty() {
        println!("no stale lab namespaces");
    }
    for d in done {
        println!("{d}");
    }
    Ok(())
}

fn bookinfo(opts: LabOptions) -> Result<Lab> {
    let mut lab = Lab::start(opts)?;
    lab.create_namespace("bookinfo", &[("istio-injection", "enabled")])?;
    lab.set_rules("bookinfo", DESTINATION_RULES)?;
    if let Err(e) = lab.apply(BOOKINFO, "bookinfo") {
        bail!("{e:#}\n--- container logs:\n{}", lab.logs(20));
    }
    Ok(lab)
}

fn up(opts: LabOptions) -> Result<()> {
    use remora_e2e::ingress;
    let cancel = opts.cancel.clone();
    let mut lab = bookinfo(opts)?;
    // The ingress gateway with Istio's bookinfo-gateway.yaml, and a pod outside the mesh.
    // HTTPS too: a test certificate for bookinfo.example.com in the Secret the gateway mounts,
    // written to the lab's directory for curl's --cacert.
    let sample = ingress::bookinfo_sample("bookinfo-gateway.yaml");
    let mut ca_file = None;
    if let Some(sample) = &sample {
        let https = ingress::https_rules();
        let started = lab
            .set_rules(
                "bookinfo",
                &format!("{DESTINATION_RULES}---\n{sample}---\n{https}"),
            )
            .and_then(|()| ingress::secure_credential(&mut lab))
            .and_then(|crt| {
                let path = lab.dir().join("bookinfo-example-com.pem");
                std::fs::write(&path, crt)?;
                ca_file = Some(path);
                lab.start_gateway_with_credentials(&[ingress::SECURE_CREDENTIAL])
            })
            .and_then(|()| lab.apply(ingress::VISITOR, ingress::OUTSIDE_NAMESPACE));
        if let Err(e) = started {
            bail!("{e:#}\n--- container logs:\n{}", lab.logs(20));
        }
    }
    print_pods(&lab);
    println!("\nThe lab runs until Ctrl-C. Try, from another shell:");
    let client = lab.pod("client")?;
    println!(
        "  ip netns exec {} curl -s http://productpage:9080/productpage",
        client.netns.name()
    );
    match (&sample, lab.pod("outside/visitor")) {
        (Some(_), Ok(visitor)) => println!(
            "  ip netns exec {} curl -s http://{}/productpage   # outside the mesh, through the ingress gateway",
            visitor.netns.name(),
            ingress::gateway_host()
        ),
        _ => println!("  (no ingress gateway: Istio's bookinfo-gateway.yaml is not in shared/anchors/istio/networking)"),
    }
    let gateway = lab.service(
        remora_e2e::lab::GATEWAY_NAMESPACE,
        remora_e2e::lab::GATEWAY_SERVICE,
    );
    if let (Some(ca), Ok(visitor), Ok(gw)) = (&ca_file, lab.pod("outside/visitor"), gateway) {
        println!(
            "  ip netns exec {} curl -s --cacert {} --resolve {host}:443:{} https://{host}/productpage   # HTTPS, the gateway's test certificate",
            visitor.netns.name(),
            ca.display(),
            gw.vip,
            host = ingress::SECURE_HOST,
        );
    }
    println!(
        "  ip netns exec {} iptables-save -t nat",
        client.netns.name()
    );
    println!(
        "Rules: {}/ns/bookinfo/remora-mesh-rules (edit in place; proxies reload)",
        lab.dir().display()
    );
    while !cancel.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(100));
    }
    println!("\nCtrl-C: tearing down");
    Ok(())
}

fn print_pods(lab: &Lab) {
    let rows: Vec<Vec<String>> = lab
        .pods()
        .iter()
        .map(|p| {
            let (init, containers) = p.spec_containers();
            vec![
                p.name.clone(),
                p.ip.to_string(),
                p.labels.get("version").cloned().unwrap_or_default(),
                if p.meshed { "remora-proxy" } else { "none" }.to_string(),
                format!("{}", init.len() + containers.len()),
            ]
        })
        .collect();
    print!(
        "{}",
        table::text(&["POD", "IP", "VERSION", "SIDECAR", "CONTAINERS"], &rows)
    );
}

const DESTINATION_RULES: &str = r#"apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews}
spec:
  host: reviews
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
  - {name: v3, labels: {version: v3}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: ratings}
spec:
  host: ratings
  subsets:
  - {name: v1, labels: {version: v1}}
"#;

fn reviews_vs(http: &str) -> String {
    format!("{DESTINATION_RULES}---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: reviews}}\nspec:\n  hosts: [reviews]\n  http:\n{http}")
}

/// Request headers of one measured run.
type Headers = Vec<(&'static str, &'static str)>;

struct Step {
    title: &'static str,
    rule: &'static str,
    yaml: String,
    runs: Vec<(&'static str, Headers, Expect)>,
}

#[derive(Clone, Copy)]
enum Expect {
    Only(&'static str),
    Share(&'static str, f64),
}

fn count_versions(
    lab: &Lab,
    n: usize,
    headers: &[(&str, &str)],
    cancel: &AtomicBool,
) -> Result<BTreeMap<String, usize>> {
    let client = lab.pod("client")?;
    let mut seen = BTreeMap::new();
    for _ in 0..n {
        if cancel.load(Ordering::Relaxed) {
            bail!("interrupted");
        }
        let r = lab.http(client, "productpage", 9080, "/productpage", headers)?;
        let v = r.json()?;
        let version = v["reviews"]["version"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| format!("error {}", v["reviews"]["status"]));
        *seen.entry(version).or_default() += 1;
    }
    Ok(seen)
}

fn demo(mut opts: LabOptions, requests: usize) -> Result<()> {
    // Rules are applied as Istio objects, as with `kubectl apply`: the control plane's rules
    // controller compiles them into the namespace's remora-mesh-rules ConfigMap.
    opts.rules_controller = true;
    let cancel = opts.cancel.clone();
    let started = std::time::Instant::now();
    println!("== remora demo: a service mesh on one machine, no cluster\n");
    println!("The lab makes a \"node\" (a network namespace with a bridge and no route out) and one network");
    println!("namespace per pod. Pods come from Kubernetes YAML. Because the namespace `bookinfo` carries the");
    println!("label istio-injection=enabled, each pod is first sent to the real remora-webhook over HTTPS as an");
    let cni = opts.cni;
    if cni {
        println!("AdmissionReview; the lab applies the returned patch, then runs the pod like a kubelet. CNI mode:");
        println!("the kubelet calls the remora-cni plugin, which programs iptables in the pod's network; the pod's");
        println!("unprivileged remora-validation container checks the capture, remora-proxy starts as uid 1337 and");
        println!("must be ready (holding its certificate from");
    } else {
        println!("AdmissionReview; the lab applies the returned patch, then runs the pod like a kubelet: remora-init");
        println!("programs iptables, remora-proxy starts as uid 1337 and must be ready (holding its certificate from");
    }
    println!("the mesh CA that remora-webhook runs on the node) before the app starts. Istio rules are applied");
    println!("as objects, as `kubectl apply` does; the rules controller in remora-webhook compiles them into the");
    println!("namespace's remora-mesh-rules ConfigMap, which every sidecar there reloads.\n");
    let mut lab = bookinfo(opts)?;
    println!(
        "-- Bookinfo is running ({:.1} s):\n",
        started.elapsed().as_secs_f64()
    );
    print_pods(&lab);

    let pod = lab.pod("reviews-v2")?;
    println!(
        "\n-- What the webhook injected into {} (the YAML asked for one container):\n",
        pod.name
    );
    let mut rows = Vec::new();
    for (kind, list) in [
        ("init", "/spec/initContainers"),
        ("container", "/spec/containers"),
    ] {
        for c in pod
            .object
            .pointer(list)
            .and_then(|v| v.as_array())
            .into_iter()
            .flatten()
        {
            let name = c["name"].as_str().unwrap_or("?");
            let native = c["restartPolicy"] == "Always";
            let argv: Vec<String> = ["command", "args"]
                .iter()
                .flat_map(|k| c[*k].as_array().cloned().unwrap_or_default())
                .filter_map(|a| {
                    a.as_str().map(|s| {
                        if s.is_empty() {
                            "\"\"".to_string()
                        } else {
                            s.to_string()
                        }
                    })
                })
                .collect();
            let mut cmd = argv.join(" ");
            if cmd.len() > 90 {
                cmd.truncate(87);
                cmd.push_str("...");
            }
            let user = c
                .pointer("/securityContext/runAsUser")
                .map(|u| u.to_string())
                .unwrap_or_else(|| "-".into());
            let role = if native {
                "native sidecar (init, restartPolicy Always)"
            } else {
                kind
            };
            rows.push(vec![name.to_string(), role.to_string(), user, cmd]);
        }
    }
    print!(
        "{}",
        table::text(&["NAME", "KIND", "UID", "COMMAND"], &rows)
    );

    println!(
        "\n-- Its iptables rules (nat table, inside the pod), as {} installed them:\n",
        if cni {
            "the remora-cni plugin"
        } else {
            "remora-init"
        }
    );
    let nat = lab.nat_rules(pod)?;
    for l in nat.lines().filter(|l| l.starts_with("-A")) {
        println!("  {}", strip_comment(l));
    }
    println!("\nApp traffic (any uid but 1337) is redirected to the proxy on 15001, inbound to 15006; the");
    println!("proxy's own traffic returns. KUBE-SERVICES is the lab's kube-proxy: it comes after capture.\n");

    let n = requests;
    let steps = vec![
        Step {
            title: "Scenario 1a: all reviews traffic to v1",
            rule: "route: reviews v1",
            yaml: reviews_vs("  - route: [{destination: {host: reviews, subset: v1}}]\n"),
            runs: vec![("everyone", vec![], Expect::Only("v1"))],
        },
        Step {
            title: "Scenario 1b: user jason to v2, everyone else to v1",
            rule: "match header end-user=jason: reviews v2; else reviews v1",
            yaml: reviews_vs("  - match: [{headers: {end-user: {exact: jason}}}]\n    route: [{destination: {host: reviews, subset: v2}}]\n  - route: [{destination: {host: reviews, subset: v1}}]\n"),
            runs: vec![
                ("end-user: jason", vec![("end-user", "jason")], Expect::Only("v2")),
                ("end-user: mary", vec![("end-user", "mary")], Expect::Only("v1")),
            ],
        },
        Step {
            title: "Scenario 2a: canary 80/20",
            rule: "weights: v1 80, v2 20",
            yaml: reviews_vs("  - route:\n    - {destination: {host: reviews, subset: v1}, weight: 80}\n    - {destination: {host: reviews, subset: v2}, weight: 20}\n"),
            runs: vec![("everyone", vec![], Expect::Share("v1", 0.8))],
        },
        Step {
            title: "Scenario 2b: 50/50 between v1 and v3",
            rule: "weights: v1 50, v3 50",
            yaml: reviews_vs("  - route:\n    - {destination: {host: reviews, subset: v1}, weight: 50}\n    - {destination: {host: reviews, subset: v3}, weight: 50}\n"),
            runs: vec![("everyone", vec![], Expect::Share("v1", 0.5))],
        },
    ];
    let mut failures = Vec::new();
    for step in steps {
        println!(
            "-- {}\n   rule applied as objects: {}",
            step.title, step.rule
        );
        let applied = std::time::Instant::now();
        lab.set_rules("bookinfo", &step.yaml)?;
        println!(
            "   the rules controller wrote remora-mesh-rules; every bookinfo sidecar had reloaded {} ms after the apply",
            applied.elapsed().as_millis()
        );
        let mut rows = Vec::new();
        for (who, headers, expect) in &step.runs {
            let count = if matches!(expect, Expect::Only(_)) {
                n.min(40)
            } else {
                n
            };
            let seen = count_versions(&lab, count, headers, &cancel)?;
            let get = |v: &str| seen.get(v).copied().unwrap_or(0);
            let ok = match expect {
                Expect::Only(v) => get(v) == count,
                Expect::Share(v, p) => {
                    let sd = (count as f64 * p * (1.0 - p)).sqrt();
                    (get(v) as f64 - count as f64 * p).abs() <= 4.0 * sd
                        && seen.keys().all(|k| k.starts_with('v'))
                }
            };
            let others: usize = seen
                .iter()
                .filter(|(k, _)| !["v1", "v2", "v3"].contains(&k.as_str()))
                .map(|(_, c)| *c)
                .sum();
            rows.push(vec![
                who.to_string(),
                count.to_string(),
                get("v1").to_string(),
                get("v2").to_string(),
                get("v3").to_string(),
                others.to_string(),
                if ok {
                    "as expected".into()
                } else {
                    "UNEXPECTED".into()
                },
            ]);
            if !ok {
                failures.push(format!("{}: {who}: {seen:?}", step.title));
            }
        }
        print!(
            "{}",
            table::text(
                &["REQUESTS FROM", "N", "v1", "v2", "v3", "ERRORS", "RESULT"],
                &rows
            )
        );
        println!();
    }
    fault_step(&mut lab, &cancel, &mut failures)?;
    mtls_step(&mut lab, &cancel, &mut failures)?;
    authz_step(&mut lab, &mut failures)?;
    gateway_step(&mut lab, &cancel, &mut failures)?;
    println!(
        "-- Tearing down: stopping {} pods and deleting their namespaces",
        lab.pods().len()
    );
    drop(lab);
    println!(
        "   done; the demo took {:.0} s",
        started.elapsed().as_secs_f64()
    );
    if !failures.is_empty() {
        bail!(
            "{} step(s) did not behave as expected:\n  {}",
            failures.len(),
            failures.join("\n  ")
        );
    }
    println!("\nAll steps behaved as expected.");
    Ok(())
}

/// Scenario 3: a fixed delay for jason on ratings against a timeout on reviews, and a 50% abort.
fn fault_step(lab: &mut Lab, cancel: &AtomicBool, failures: &mut Vec<String>) -> Result<()> {
    println!("-- Scenario 3: fault injection with a timeout responding");
    println!("   rules: ratings delays jason's requests 2 s; reviews (v2) has a 0.5 s timeout;");
    println!("   then ratings aborts 50% of requests with HTTP 503");
    let delay = format!(
        "{}---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: ratings}}\nspec:\n  hosts: [ratings]\n  http:\n  - match: [{{headers: {{end-user: {{exact: jason}}}}}}]\n    fault: {{delay: {{percentage: {{value: 100}}, fixedDelay: 2s}}}}\n    route: [{{destination: {{host: ratings, subset: v1}}}}]\n  - route: [{{destination: {{host: ratings, subset: v1}}}}]\n",
        reviews_vs("  - route: [{destination: {host: reviews, subset: v2}}]\n    timeout: 0.5s\n")
    );
    lab.set_rules("bookinfo", &delay)?;
    let jason = count_versions(lab, 5, &[("end-user", "jason")], cancel)?;
    let mary = count_versions(lab, 5, &[("end-user", "mary")], cancel)?;
    let abort = format!(
        "{}---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: ratings}}\nspec:\n  hosts: [ratings]\n  http:\n  - fault: {{abort: {{percentage: {{value: 50}}, httpStatus: 503}}}}\n    route: [{{destination: {{host: ratings, subset: v1}}}}]\n",
        reviews_vs("  - route: [{destination: {host: reviews, subset: v2}}]\n")
    );
    lab.set_rules("bookinfo", &abort)?;
    let client = lab.pod("client")?;
    let n = 100;
    let mut aborted = 0;
    for _ in 0..n {
        if cancel.load(Ordering::Relaxed) {
            bail!("interrupted");
        }
        let v = lab
            .http(client, "productpage", 9080, "/productpage", &[])?
            .json()?;
        if v["reviews"]["ratings"]["status"] == 503 {
            aborted += 1;
        }
    }
    let delay_ok = jason.get("error 504") == Some(&5) && mary.get("v2") == Some(&5);
    let abort_ok = (aborted as f64 - 50.0).abs() <= 20.0;
    let rows = vec![
        vec![
            "jason (delayed 2 s, timeout 0.5 s)".into(),
            "5".into(),
            format!("{jason:?}"),
            "reviews answers 504".into(),
            ok(delay_ok),
        ],
        vec![
            "mary (no delay)".into(),
            "5".into(),
            format!("{mary:?}"),
            "reviews v2 answers".into(),
            ok(delay_ok),
        ],
        vec![
            "everyone, 50% abort".into(),
            n.to_string(),
            format!("{aborted} ratings calls aborted"),
            "about 50".into(),
            ok(abort_ok),
        ],
    ];
    print!(
        "{}",
        table::text(
            &["REQUESTS FROM", "N", "OBSERVED", "EXPECTED", "RESULT"],
            &rows
        )
    );
    println!();
    if !delay_ok || !abort_ok {
        failures.push(format!(
            "Scenario 3 (fault/timeout): jason {jason:?}, mary {mary:?}, aborted {aborted}/{n}"
        ));
    }
    Ok(())
}

/// A pod without a sidecar: its namespace is not labelled for injection.
const OLD_CLIENT: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: old-client, labels: {app: old-client}}
spec:
  containers:
  - {name: old-client, command: ["lab-app", "http", "--service", "old-client", "--port", "8080"]}
"#;

fn peer_authentication(mode: &str) -> String {
    format!("{DESTINATION_RULES}---\napiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {{name: default}}\nspec:\n  mtls: {{mode: {mode}}}\n")
}

/// `istio_requests_total` at a pod's sidecar as destination, by `connection_security_policy`
/// (`mutual_tls`, `none`), and its refusals for want of mTLS.
fn mtls_counts(lab: &Lab, pod: &str) -> Result<(f64, f64, f64)> {
    use remora_e2e::client::sum;
    let m = lab.metrics(lab.pod(pod)?)?;
    let req = |policy: &str| {
        sum(
            &m,
            "istio_requests_total",
            &[
                ("reporter", "destination"),
                ("connection_security_policy", policy),
            ],
        )
    };
    Ok((
        req("mutual_tls"),
        req("none"),
        sum(
            &m,
            "remora_refused_connections_total",
            &[("reason", "mtls_required")],
        ),
    ))
}

/// Scenario 4: every sidecar's identity from the control plane's CA; tcpdump on the node's
/// bridge shows the hops between sidecars as TLS and an unmeshed caller in plain text;
/// PeerAuthentication STRICT refuses the unmeshed caller, PERMISSIVE lets it in.
fn mtls_step(lab: &mut Lab, cancel: &AtomicBool, failures: &mut Vec<String>) -> Result<()> {
    use remora_e2e::capture::{hops, Capture};
    println!("-- Scenario 4: mutual TLS between sidecars");
    println!("   The control plane (remora-webhook, on the node) runs the mesh CA. Each sidecar showed it the");
    println!("   service-account token its pod was given, the CA had the token checked (a TokenReview) and");
    println!("   signed a certificate naming that service account, and nothing else:\n");
    let mut rows = Vec::new();
    let mut ids_ok = true;
    for p in lab.pods().iter().filter(|p| p.meshed) {
        let dump = lab.http_in_pod(p, 15020, "GET", "/config_dump")?.json()?;
        let id = &dump["identity"];
        let sa = p.object["spec"]["serviceAccountName"]
            .as_str()
            .unwrap_or("default");
        let want = format!("spiffe://cluster.local/ns/{}/sa/{sa}", p.namespace);
        let good = id["spiffe_id"] == want.as_str() && id["state"] == "valid";
        ids_ok &= good;
        let hours = id["expires_in_seconds"].as_i64().unwrap_or(0) as f64 / 3600.0;
        rows.push(vec![
            p.name.clone(),
            id["spiffe_id"].as_str().unwrap_or("none").to_string(),
            format!(
                "{} (expires in {hours:.1} h)",
                id["state"].as_str().unwrap_or("?")
            ),
            ok(good),
        ]);
    }
    print!(
        "{}",
        table::text(&["POD", "IDENTITY", "CERTIFICATE", "RESULT"], &rows)
    );
    if !ids_ok {
        failures.push("Scenario 4: a sidecar lacks its certificate".into());
    }

    lab.create_namespace("legacy", &[])?;
    if let Err(e) = lab.apply(OLD_CLIENT, "legacy") {
        bail!("{e:#}\n--- container logs:\n{}", lab.logs(20));
    }
    lab.set_rules("bookinfo", DESTINATION_RULES)?;
    let pp0 = mtls_counts(lab, "productpage")?;
    let n = 10;
    println!("\n   tcpdump on the node's bridge (every packet between pods crosses it) while the client asks");
    println!("   for /productpage {n} times, and a pod without a sidecar (namespace legacy, not labelled for");
    println!("   injection) asks once:\n");
    let capture = Capture::start(lab.node(), "br0", lab.dir(), "demo-mtls")?;
    let client = lab.pod("bookinfo/client")?;
    for _ in 0..n {
        if cancel.load(Ordering::Relaxed) {
            bail!("interrupted");
        }
        lab.http(client, "productpage", 9080, "/productpage", &[])?;
    }
    let old = lab.pod("legacy/old-client")?;
    let permissive = lab
        .http(old, "productpage.bookinfo", 9080, "/productpage", &[])
        .map(|r| r.status);
    let captured = capture.stop()?;
    let node = remora_e2e::lab::NODE_IP;
    let pod_of = |ip: std::net::Ipv4Addr| lab.pods().iter().find(|p| p.ip == ip);
    let mut rows = Vec::new();
    let mut plain_between_meshed = 0;
    for h in hops(&captured.flows()) {
        let (Some(from), Some(to)) = (h.from, h.to) else {
            continue;
        };
        if from == node || *to.ip() == node {
            continue; // the kubelet's probes, scrapes, the sidecars' calls to the CA
        }
        let (Some(src), Some(dst)) = (pod_of(from), pod_of(*to.ip())) else {
            continue;
        };
        let wire = if h.tls == h.connections {
            format!(
                "TLS (ALPN {}), {} encrypted records",
                h.alpn.clone().unwrap_or_default().join(","),
                h.application_data_records
            )
        } else if let Some(line) = h.http_requests.first() {
            format!("plain text: {line}")
        } else {
            "plain text".to_string()
        };
        let expected = if src.meshed && dst.meshed {
            plain_between_meshed += h.http_requests.len();
            h.tls == h.connections && h.istio_alpn == h.connections && h.http_requests.is_empty()
        } else {
            !src.meshed && h.tls == 0
        };
        if !expected {
            failures.push(format!("Scenario 4: {} -> {}: {wire}", src.name, dst.name));
        }
        rows.push(vec![
            format!("{}/{}", src.namespace, src.name),
            format!("{}:{}", dst.name, to.port()),
            h.connections.to_string(),
            wire,
            ok(expected),
        ]);
    }
    print!(
        "{}",
        table::text(
            &["FROM", "TO", "CONNECTIONS", "ON THE WIRE", "RESULT"],
            &rows
        )
    );
    println!("   Plain-text HTTP requests seen between pods with sidecars: {plain_between_meshed}");
    if rows.is_empty() {
        failures.push("Scenario 4: the capture saw no traffic between pods".into());
    }

    println!("\n   PeerAuthentication decides what the bookinfo sidecars accept (applied as an object):\n");
    let show = |r: &Result<u16>| match r {
        Ok(code) => format!("HTTP {code}"),
        Err(_) => "refused (connection closed)".to_string(),
    };
    let mut rows = vec![vec![
        "PERMISSIVE (no rule: Istio's default)".to_string(),
        "legacy/old-client (no sidecar)".to_string(),
        show(&permissive),
        "HTTP 200, in plain text".to_string(),
        ok(matches!(permissive, Ok(200))),
    ]];
    lab.set_rules("bookinfo", &peer_authentication("STRICT"))?;
    let old = lab.pod("legacy/old-client")?;
    let strict_old = lab
        .http(old, "productpage.bookinfo", 9080, "/productpage", &[])
        .map(|r| r.status);
    let client = lab.pod("bookinfo/client")?;
    let strict_client = lab
        .http(client, "productpage", 9080, "/productpage", &[])
        .map(|r| r.status);
    rows.push(vec![
        "STRICT".into(),
        "legacy/old-client (no sidecar)".into(),
        show(&strict_old),
        "refused".into(),
        ok(strict_old.is_err()),
    ]);
    rows.push(vec![
        "STRICT".into(),
        "bookinfo/client (sidecar)".into(),
        show(&strict_client),
        "HTTP 200, over mTLS".into(),
        ok(matches!(strict_client, Ok(200))),
    ]);
    lab.set_rules("bookinfo", &peer_authentication("PERMISSIVE"))?;
    let old = lab.pod("legacy/old-client")?;
    let permissive_again = lab
        .http(old, "productpage.bookinfo", 9080, "/productpage", &[])
        .map(|r| r.status);
    rows.push(vec![
        "PERMISSIVE".into(),
        "legacy/old-client (no sidecar)".into(),
        show(&permissive_again),
        "HTTP 200".into(),
        ok(matches!(permissive_again, Ok(200))),
    ]);
    print!(
        "{}",
        table::text(&["MODE", "FROM", "OBSERVED", "EXPECTED", "RESULT"], &rows)
    );
    if !(matches!(permissive, Ok(200))
        && strict_old.is_err()
        && matches!(strict_client, Ok(200))
        && matches!(permissive_again, Ok(200)))
    {
        failures.push(format!(
            "Scenario 4 (PeerAuthentication): PERMISSIVE {}, STRICT unmeshed {}, STRICT meshed {}, PERMISSIVE again {}",
            show(&permissive),
            show(&strict_old),
            show(&strict_client),
            show(&permissive_again)
        ));
    }

    // What productpage's sidecar saw (telemetry lands a moment after the answer).
    let want = ((n + 1) as f64, 2.0);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let (mtls, plain, refused) = loop {
        let now = mtls_counts(lab, "productpage")?;
        let d = (now.0 - pp0.0, now.1 - pp0.1, now.2 - pp0.2);
        if (d.0, d.1) == want || std::time::Instant::now() >= deadline {
            break d;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let pp = lab.pod("productpage")?;
    let principal = pp
        .container("remora-proxy")
        .and_then(|c| std::fs::read_to_string(&c.proc.log).ok())
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["direction"] == "inbound" && v["path"] == "/productpage")
        .filter_map(|v| v["peer_principal"].as_str().map(str::to_string))
        .next_back()
        .unwrap_or_else(|| "none".into());
    println!("\n   productpage's sidecar, as destination, counted {mtls} requests with");
    println!("   connection_security_policy=\"mutual_tls\" and {plain} without (istio_requests_total), refused {refused}");
    println!("   plain-text connection(s) under STRICT (remora_refused_connections_total, reason mtls_required),");
    println!("   and its access log names the caller: \"peer_principal\": \"{principal}\"\n");
    let client_id = "spiffe://cluster.local/ns/bookinfo/sa/client";
    if (mtls, plain) != want || refused < 1.0 || principal != client_id {
        failures.push(format!(
            "Scenario 4 (telemetry): mutual_tls {mtls}, none {plain} (want {want:?}), refused {refused}, principal {principal}"
        ));
    }
    Ok(())
}

/// Scenario 5: AuthorizationPolicy between identities, and a JWT required on a path.
fn authz_step(lab: &mut Lab, failures: &mut Vec<String>) -> Result<()> {
    use remora_e2e::security::{authz_rules, forge, jwt_samples};
    println!("\n-- Scenario 5: AuthorizationPolicy and RequestAuthentication (applied as objects)");
    let Some((jwks, token)) = jwt_samples() else {
        println!("   skipped: Istio's JWT samples (shared/anchors/istio/jwt, or $REMORA_SHARED) are not here");
        return Ok(());
    };
    println!("   rules: ratings ALLOWs only spiffe://cluster.local/ns/bookinfo/sa/bookinfo-reviews (the mTLS");
    println!("   identity of the reviews pods); details checks JWTs of testing@secure.istio.io against Istio's");
    println!("   sample JWKS, and DENYs /secure* to requests without a valid one\n");
    lab.set_rules("bookinfo", &authz_rules(&jwks))?;
    let forged = forge(&token);
    // (from, to, path, token, what the token is, status, body)
    type Case<'a> = (
        &'a str,
        &'a str,
        &'a str,
        Option<&'a str>,
        &'a str,
        u16,
        &'a str,
    );
    let cases: [Case; 5] = [
        ("reviews-v2", "ratings", "/ratings/0", None, "-", 200, ""),
        (
            "productpage",
            "ratings",
            "/ratings/0",
            None,
            "-",
            403,
            "RBAC: access denied",
        ),
        (
            "bookinfo/client",
            "details",
            "/secure/x",
            Some(&token),
            "Istio's demo token",
            200,
            "",
        ),
        (
            "bookinfo/client",
            "details",
            "/secure/x",
            Some(&forged),
            "forged signature",
            401,
            "Jwt verification fails",
        ),
        (
            "bookinfo/client",
            "details",
            "/secure/x",
            None,
            "none",
            403,
            "RBAC: access denied",
        ),
    ];
    let mut rows = Vec::new();
    for (from, to, path, tok, what, want, body) in cases {
        let pod = lab.pod(from)?;
        let auth = tok.map(|t| format!("Bearer {t}"));
        let headers: Vec<(&str, &str)> =
            auth.iter().map(|a| ("authorization", a.as_str())).collect();
        let got = lab.http(pod, to, 9080, path, &headers);
        let (observed, good) = match &got {
            Ok(r) => {
                let text = String::from_utf8_lossy(&r.body).trim().to_string();
                let good = r.status == want && (body.is_empty() || text == body);
                if body.is_empty() {
                    (format!("HTTP {}", r.status), good)
                } else {
                    (format!("HTTP {} {text}", r.status), good)
                }
            }
            Err(e) => (format!("error: {e:#}"), false),
        };
        let expected = if body.is_empty() {
            format!("HTTP {want}")
        } else {
            format!("HTTP {want} {body}")
        };
        if !good {
            failures.push(format!(
                "Scenario 5: {from} -> {to}{path} (token: {what}): {observed}, expected {expected}"
            ));
        }
        rows.push(vec![
            from.to_string(),
            format!("{to}{path}"),
            what.to_string(),
            observed,
            expected,
            ok(good),
        ]);
    }
    print!(
        "{}",
        table::text(
            &["FROM", "TO", "TOKEN", "OBSERVED", "EXPECTED", "RESULT"],
            &rows
        )
    );
    println!("   (`remora proxy-config authz POD --principal ... --path ...` prints the same decision from a proxy's /config_dump)\n");
    Ok(())
}

/// Scenario 6: the ingress gateway as `manifests/gateway.yaml` ships it, Istio's
/// `bookinfo-gateway.yaml` applied as objects, a client outside the mesh.
fn gateway_step(lab: &mut Lab, cancel: &AtomicBool, failures: &mut Vec<String>) -> Result<()> {
    use remora_e2e::ingress;
    println!("-- Scenario 6: the ingress gateway, with Istio's bookinfo-gateway.yaml");
    let Some(sample) = ingress::bookinfo_sample("bookinfo-gateway.yaml") else {
        println!("   skipped: Istio's Bookinfo samples (shared/anchors/istio/networking, or $REMORA_SHARED) are not here\n");
        return Ok(());
    };
    println!("   manifests/gateway.yaml applied unchanged: the istio-ingressgateway Deployment's pod runs its");
    println!("   container (the image's entrypoint remora-proxy, args [gateway], uid 1337, no capture, not");
    println!(
        "   injected) and its Service maps port 80 to 8080. Its namespace istio-system is labelled"
    );
    println!("   remora.dev/gateway=enabled, so the rules controller writes istio-system's remora-mesh-rules");
    println!("   with what a gateway sees: every namespace's Gateways and what is exported to istio-system.");
    println!(
        "   Applied in bookinfo as objects: Istio's bookinfo-gateway.yaml (a Gateway selecting"
    );
    println!("   istio: ingressgateway, a VirtualService bound to it), reviews → v3 (which calls ratings), and");
    println!("   a Gateway with an HTTPS server for bookinfo.example.com whose certificate (made for the demo)");
    println!(
        "   is in the Secret istio-system/bookinfo-credential, mounted into the gateway's pod.\n"
    );
    let started = std::time::Instant::now();
    lab.set_rules(
        "bookinfo",
        &format!(
            "{}---\n{}---\n{}",
            reviews_vs("  - route: [{destination: {host: reviews, subset: v3}}]\n"),
            sample.trim_end().to_string() + "\n",
            ingress::https_rules()
        ),
    )?;
    let crt = ingress::secure_credential(lab)?;
    lab.start_gateway_with_credentials(&[ingress::SECURE_CREDENTIAL])?;
    lab.apply(ingress::VISITOR, ingress::OUTSIDE_NAMESPACE)?;
    let gw = lab.pod("istio-system/istio-ingressgateway")?;
    let cmd = gw
        .container("istio-proxy")
        .map(|c| format!("{} (uid {})", c.argv.join(" "), c.uid))
        .unwrap_or_default();
    println!("   gateway pod {} {}: {cmd}", gw.name, gw.ip);
    // The controller writes istio-system's ConfigMap a moment after the objects exist and the
    // gateway reloads it: bounded wait for the first page.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        if cancel.load(Ordering::Relaxed) {
            bail!("interrupted");
        }
        match ingress::get(lab, "visitor", "/productpage") {
            Ok(r) if r.status == 200 => break,
            _ if std::time::Instant::now() >= deadline => {
                failures.push("Scenario 6: no product page through the gateway within 30 s".into());
                println!("   UNEXPECTED: no product page through the gateway within 30 s\n");
                return Ok(());
            }
            _ => std::thread::sleep(Duration::from_millis(200)),
        }
    }
    println!(
        "   first page through the gateway {} ms after the apply",
        started.elapsed().as_millis()
    );
    let keys: Vec<String> = lab
        .api()
        .object("configmaps", "istio-system", "remora-mesh-rules")
        .and_then(|cm| cm["data"].as_object().map(|d| d.keys().cloned().collect()))
        .unwrap_or_default();
    println!(
        "   istio-system/remora-mesh-rules as the controller wrote it: {}\n",
        keys.join(", ")
    );
    let host = ingress::gateway_host();
    // (path, status, chain expected)
    let cases: [(&str, u16, &str); 3] = [
        (
            "/productpage",
            200,
            "productpage v1 ← reviews v3 ← ratings v1",
        ),
        ("/static/style.css", 200, ""),
        ("/admin", 404, ""),
    ];
    let mut rows = Vec::new();
    for (path, want, chain) in cases {
        let n = if path == "/productpage" { 5 } else { 1 };
        let mut good = 0;
        let mut observed = String::new();
        for _ in 0..n {
            match ingress::get(lab, "visitor", path) {
                Ok(r) => {
                    let got_chain = if chain.is_empty() {
                        String::new()
                    } else {
                        r.json()
                            .map(|v| ingress::page_chain(&v))
                            .unwrap_or_default()
                    };
                    if r.status == want && got_chain == chain {
                        good += 1;
                    }
                    observed = if got_chain.is_empty() {
                        format!("HTTP {}", r.status)
                    } else {
                        format!("HTTP {} {got_chain}", r.status)
                    };
                }
                Err(e) => observed = format!("error: {e:#}"),
            }
        }
        let expected = if chain.is_empty() {
            format!("HTTP {want}")
        } else {
            format!("HTTP {want} {chain}")
        };
        let is_ok = good == n;
        if !is_ok {
            failures.push(format!(
                "Scenario 6: visitor -> http://{host}{path}: {observed}, expected {expected} ({good} of {n})"
            ));
        }
        rows.push(vec![
            format!("http://{host}{path}"),
            n.to_string(),
            observed,
            expected,
            ok(is_ok),
        ]);
    }
    // HTTPS: the gateway terminates TLS with the test certificate of the Secret.
    let url = format!("https://{}/productpage", ingress::SECURE_HOST);
    let (observed, good) =
        match ingress::get_tls(lab, "visitor", ingress::SECURE_HOST, &crt, "/productpage") {
            Ok((status, body)) => (
                format!("HTTP {status} over TLS"),
                status == 200 && body.contains("\"service\":\"productpage\""),
            ),
            Err(e) => (format!("error: {e:#}"), false),
        };
    if !good {
        failures.push(format!(
            "Scenario 6: visitor -> {url}: {observed}, expected HTTP 200 over TLS"
        ));
    }
    rows.push(vec![
        url,
        "1".into(),
        observed,
        "HTTP 200 over TLS".into(),
        ok(good),
    ]);
    print!(
        "{}",
        table::text(
            &[
                "FROM outside/visitor",
                "N",
                "OBSERVED",
                "EXPECTED",
                "RESULT"
            ],
            &rows
        )
    );
    println!("   (/static is bound by the VirtualService and answered by productpage; /admin matches no route:");
    println!("   the gateway's 404)\n");
    Ok(())
}

fn ok(b: bool) -> String {
    if b { "as expected" } else { "UNEXPECTED" }.to_string()
}

/// Drops the `-m comment --comment "..."` part of an iptables-save line.
fn strip_comment(line: &str) -> String {
    let Some(i) = line.find(" -m comment --comment ") else {
        return line.to_string();
    };
    let rest = &line[i + " -m comment --comment ".len()..];
    let after = if let Some(quoted) = rest.strip_prefix('"') {
        quoted.find('"').map(|j| &quoted[j + 1..]).unwrap_or("")
    } else {
        rest.find(' ').map(|j| &rest[j..]).unwrap_or("")
    };
    format!("{}{}", &line[..i], after)
}
