//! `remora-proxy run` (the sidecar), `remora-proxy gateway` (the ingress gateway) and
//! `remora-proxy validate DIR` (offline rule linter).

#![forbid(unsafe_code)]

use anyhow::{anyhow, Context};
use clap::Parser;
use pingora::server::configuration::ServerConf;
use pingora::server::{ExecutionPhase, RunArgs, Server};
use pingora::services::listening::Service;
use remora_proxy::admin::{self, AdminKind, AdminState};
use remora_proxy::app_probe::AppProbers;
use remora_proxy::cli::{self, Cli, Command, RunArgs as Args, ValidateArgs};
use remora_proxy::discovery::ready::{self, ReadyGate};
use remora_proxy::discovery::rules_api::RulesSources;
use remora_proxy::gateway::GatewayFlags;
use remora_proxy::guard::stream_idle::StreamIdleApp;
use remora_proxy::http::MeshHttp;
use remora_proxy::listen::{self, CaptureApp};
use remora_proxy::rules::{self, LoadContext, Snapshot};
use remora_proxy::state::{Direction, Settings, Shared};
use remora_proxy::telemetry::{AccessLog, Metrics, Workload};
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tracing::{error, info, warn};

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Validate(v) => validate(v),
        Command::Run(r) => exit(run(*r, None)),
        Command::Gateway(g) => {
            let g = *g;
            exit(run(g.run, Some(g.gateway)))
        }
    }
}

fn exit(r: anyhow::Result<()>) -> ExitCode {
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e:#}");
            eprintln!("remora-proxy: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn validate(v: ValidateArgs) -> ExitCode {
    let ctx = LoadContext {
        namespace: v.namespace,
        cluster_domain: v.cluster_domain,
        pod_labels: Default::default(),
        root_namespace: v.root_namespace,
    };
    let report = remora_model::lint::run(&v.dir, &ctx);
    print!("{report}");
    if report.errors.is_empty() {
        println!(
            "ok: {} is valid ({} warning(s))",
            v.dir.display(),
            report.warnings.len()
        );
        ExitCode::SUCCESS
    } else {
        println!(
            "{} error(s), {} warning(s) in {}",
            report.errors.len(),
            report.warnings.len(),
            v.dir.display()
        );
        ExitCode::FAILURE
    }
}

fn init_logging(level: &str) -> anyhow::Result<()> {
    let filter = cli::log_filter(level).map_err(|e| anyhow!(e))?;
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .try_init()
        .map_err(|e| anyhow!("logging set-up: {e}"))
}

fn load_labels(args: &Args) -> std::collections::BTreeMap<String, String> {
    match std::fs::read_to_string(&args.pod_labels_file) {
        Ok(text) => match cli::parse_pod_labels(&text) {
            Ok(l) => l,
            Err(e) => {
                warn!(
                    "pod labels file {}: {e}; continuing without pod labels (sourceLabels will not match)",
                    args.pod_labels_file.display()
                );
                Default::default()
            }
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            info!(
                "pod labels file {} not present; no pod labels",
                args.pod_labels_file.display()
            );
            Default::default()
        }
        Err(e) => {
            warn!("pod labels file {}: {e}", args.pod_labels_file.display());
            Default::default()
        }
    }
}

fn initial_snapshot(args: &Args, ctx: &LoadContext) -> Snapshot {
    let dir = &args.rules_dir;
    if !dir.exists() {
        warn!(
            "rules directory {} does not exist: running with no rules (every request goes to its original destination); it is watched and loaded when it appears",
            dir.display()
        );
        let mut s = Snapshot::empty(ctx);
        s.generation = 1;
        s.source = format!("none:{} (missing)", dir.display());
        return s;
    }
    match rules::load_dir(dir, ctx, 1) {
        Ok(s) => s,
        Err(e) => {
            error!(
                "rules in {} rejected: {e}; not ready until a valid rule set is in place",
                dir.display()
            );
            Snapshot::empty(ctx)
        }
    }
}

/// The IPv6 capture listener addresses per `--ipv6`, checked by binding them once.
fn ipv6_listeners(
    args: &Args,
) -> anyhow::Result<(Option<std::net::SocketAddr>, Option<std::net::SocketAddr>)> {
    use std::net::{Ipv6Addr, SocketAddr};
    if args.ipv6 == "off" {
        return Ok((None, None));
    }
    let has_v6 = std::net::TcpListener::bind((Ipv6Addr::LOCALHOST, 0)).is_ok();
    if !has_v6 {
        if args.ipv6 == "on" {
            return Err(anyhow!(
                "--ipv6=on: this host has no IPv6 loopback ([::1] cannot be bound)"
            ));
        }
        info!("no IPv6 on this host: IPv4 capture listeners only");
        return Ok((None, None));
    }
    let out = SocketAddr::from((Ipv6Addr::LOCALHOST, args.outbound_addr.port()));
    let inb = SocketAddr::from((Ipv6Addr::UNSPECIFIED, args.inbound_addr.port()));
    for (what, addr) in [("outbound (IPv6)", out), ("inbound (IPv6)", inb)] {
        let sock = socket2_free_bind(addr);
        sock.with_context(|| format!("{what} listener {addr} (use --ipv6=off to skip IPv6)"))?;
    }
    Ok((Some(out), Some(inb)))
}

/// Bind a v6-only TCP socket once (and drop it) to check the address is usable.
fn socket2_free_bind(addr: std::net::SocketAddr) -> std::io::Result<()> {
    let s = tokio::net::TcpSocket::new_v6()?;
    nix::sys::socket::setsockopt(&s, nix::sys::socket::sockopt::Ipv6V6Only, &true)
        .map_err(std::io::Error::from)?;
    s.bind(addr)
}

/// Say up front what readiness will wait for, and for how long at most.
fn log_ready_gate(gate: &ReadyGate) {
    let awaited = gate.awaited();
    if !awaited.watched {
        info!(
            "readiness does not wait for discovery: nothing is watched through the Kubernetes API"
        );
    } else if gate.timeout().is_zero() {
        info!("readiness does not wait for discovery (--discovery-ready-timeout=0)");
    } else {
        info!(
            "readiness waits up to {} (--discovery-ready-timeout) for discovery's first sync: {}",
            ready::human(gate.timeout()),
            if awaited.pending.is_empty() {
                "already in".to_string()
            } else {
                awaited.pending.join("; ")
            }
        );
    }
}

type KubeParts = (
    Arc<RulesSources>,
    Option<Arc<remora_proxy::discovery::kube::Discovery>>,
);

/// The Kubernetes side (`--kube-api`): endpoint discovery and the rules ConfigMap through the
/// API, on their own thread and runtime, counting in `metrics`. Always returns the rules sources
/// (the files' hooks); discovery from the control plane with `--discovery-address`, else only
/// when the API is used and `--discovery on`.
fn start_kube(
    args: &Args,
    ctx: &LoadContext,
    store: rules::SharedSnapshot,
    metrics: Arc<Metrics>,
    identity: Option<Arc<remora_proxy::identity::Identity>>,
) -> anyhow::Result<KubeParts> {
    use remora_proxy::discovery::kube::{self as dk, ApiMode, Discovery, Timing};
    let configmap = format!("{}/{}", args.namespace, args.rules_configmap);
    let (a, c) = (args.clone(), ctx.clone());
    // With a workload certificate, the subscription presents it (the token before one).
    let remote = args
        .remote_discovery()
        .map_err(|e| anyhow!(e))?
        .map(|mut r| {
            r.certificate = identity.map(remora_proxy::discovery::remote::ClientCert);
            r
        });
    start_runtime_thread("kube", move |tx| async move {
        let client = match dk::client_for(&a.kube_api, &a.namespace) {
            Ok(ApiMode::Client(client, url)) => {
                info!(
                    "Kubernetes API {url}: discovery {}, rules ConfigMap {}",
                    if remote.is_some() {
                        "from the control plane (--discovery-address)".to_string()
                    } else {
                        a.discovery.clone()
                    },
                    if a.rules_configmap == "off" {
                        "off (files only)".to_string()
                    } else {
                        format!("{configmap} watched through the API when RBAC allows")
                    }
                );
                Some(client)
            }
            Ok(ApiMode::Off(why)) => {
                if remote.is_some() {
                    info!("Kubernetes API off ({why}): endpoints from the control plane's discovery service and ServiceEntries, rules from the files only");
                } else {
                    info!("Kubernetes API off ({why}): endpoints from ServiceEntries only, rules from the files only");
                }
                None
            }
            Err(e) => {
                let _ = tx.send(Err(anyhow!(e)));
                return;
            }
        };
        let discovery = match (&remote, &client) {
            (Some(cfg), _) => {
                info!(address = %cfg.address, server_name = %cfg.server_name,
                    "discovery from the control plane at {} (no Kubernetes API rights needed for it)", cfg.address);
                Some(Discovery::start_remote(
                    cfg.clone(),
                    &c.cluster_domain,
                    Timing::default(),
                    metrics.clone(),
                ))
            }
            (None, Some(client)) if a.discovery == "on" => Some(Discovery::start(
                client.clone(),
                &c.cluster_domain,
                Timing::default(),
                metrics.clone(),
            )),
            _ => None,
        };
        let sources = Arc::new(RulesSources::new(
            store.clone(),
            c,
            configmap,
            discovery.clone(),
            metrics,
        ));
        if discovery.is_some() || client.is_some() {
            // The first snapshot gets the discovered endpoints and sets the scope.
            use rules::watch::Hooks;
            let _serial = sources.lock();
            let snap = Arc::new(sources.prepare((*store.load_full()).clone()));
            store.store(snap.clone());
            sources.applied(&snap);
        }
        if let Some(client) = client.filter(|_| a.rules_configmap != "off") {
            // Before the sources are handed out: readiness waits for its first answer.
            sources.await_api_answer();
            tokio::spawn(dk::watch_rules_configmap(
                client,
                a.namespace.clone(),
                a.rules_configmap.clone(),
                sources.clone(),
                Timing::default(),
            ));
        }
        let _ = tx.send(Ok((sources, discovery)));
        std::future::pending::<()>().await
    })
}

/// Start a thread `remora-<what>` with its own single-threaded tokio runtime running
/// `body(tx)`, and wait until the body reports its start-up result on `tx` (after which it keeps
/// running). An error building the runtime, or a body that ends without reporting, is an error
/// naming `what`.
fn start_runtime_thread<T, F, Fut>(what: &'static str, body: F) -> anyhow::Result<T>
where
    T: Send + 'static,
    F: FnOnce(std::sync::mpsc::Sender<anyhow::Result<T>>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()>,
{
    let (tx, rx) = std::sync::mpsc::channel::<anyhow::Result<T>>();
    std::thread::Builder::new()
        .name(format!("remora-{what}"))
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = tx.send(Err(anyhow!("{what} runtime: {e}")));
                    return;
                }
            };
            rt.block_on(body(tx));
        })
        .with_context(|| format!("starting the {what} thread"))?;
    rx.recv()
        .map_err(|_| anyhow!("{what} thread exited during start-up"))?
}

/// The tracers: the default one when `--tracing-provider` is not `off`, and one per
/// `--tracing-providers` entry (sharing the default's exporter when it is the same collector);
/// a wrong setting stops start-up.
#[allow(clippy::type_complexity)]
fn start_tracers(
    args: &Args,
    workload: &Workload,
    metrics: &Arc<Metrics>,
) -> anyhow::Result<(
    Option<Arc<remora_proxy::telemetry::tracer::Tracer>>,
    Vec<(String, Arc<remora_proxy::telemetry::tracer::Tracer>)>,
)> {
    use remora_proxy::telemetry::span::Reporter;
    use remora_proxy::telemetry::tracer::{OwnTags, Tracer};
    let default = args.tracing.config().map_err(|e| anyhow!(e))?;
    let named = args
        .tracing
        .tracing_providers
        .as_ref()
        .map(|n| n.0.as_slice())
        .unwrap_or_default();
    if default.is_none() && named.is_empty() {
        return Ok((None, Vec::new()));
    }
    let me = &workload.plain;
    let pod = args.pod_name.as_deref().unwrap_or(&workload.name);
    let ip = args
        .instance_ip
        .map_or_else(|| "127.0.0.1".to_string(), |ip| ip.to_string());
    let own = OwnTags {
        canonical_service: me.canonical_service.to_string(),
        canonical_revision: me.canonical_revision.to_string(),
        namespace: args.namespace.clone(),
        mesh_id: args
            .tracing
            .mesh_id
            .clone()
            .unwrap_or_else(|| args.identity.trust_domain.clone()),
        node_id: remora_proxy::telemetry::exchange::encode_id(
            &ip,
            pod,
            &args.namespace,
            &args.cluster_domain,
        ),
    };
    let reporter = Reporter {
        service_name: format!("{}.{}", me.canonical_service, args.namespace),
        ip: args.instance_ip,
    };
    let sampling = args.tracing.tracing_sampling;
    let start = |config: remora_proxy::telemetry::tracer::ExportConfig, name: &str| {
        info!(
            provider = config.protocol.as_str(),
            name,
            collector = %config.address,
            path = %config.path,
            sampling_percent = sampling,
            "tracing provider"
        );
        Tracer::start(
            config,
            sampling,
            own.clone(),
            reporter.clone(),
            metrics.clone(),
        )
        .context("starting the trace exporter thread")
    };
    let default = match default {
        Some(c) => Some(start(c, "default")?),
        None => None,
    };
    let queue = args.tracing.tracing_queue_spans as usize;
    let mut tracers = Vec::new();
    for p in named {
        let config = p
            .export_config(queue)
            .map_err(|e| anyhow!("--tracing-providers {:?}: {e}", p.name))?;
        let t = match &default {
            Some(d) if d.config == config => d.clone(),
            _ => start(config, &p.name)?,
        };
        tracers.push((p.name.clone(), t));
    }
    if default.is_some() {
        info!("tracing on");
    }
    Ok((default, tracers))
}

/// The access-log providers a Telemetry rule may name: Istio's built-in `envoy` (the mesh's
/// log in `--access-log-encoding`, even when `--access-log off`), then the named ones.
fn access_log_providers(args: &Args) -> Vec<(String, AccessLog)> {
    let mut v = vec![(
        "envoy".to_string(),
        AccessLog::from_flags("stdout", &args.access_log_encoding),
    )];
    if let Some(named) = &args.access_log_providers {
        for (name, enc) in &named.0 {
            match v.iter_mut().find(|(n, _)| n == name) {
                Some(e) => e.1 = *enc,
                None => v.push((name.clone(), *enc)),
            }
        }
    }
    v
}

/// The sidecar (`gateway: None`) or the gateway (its flags): the same proxy, with capture
/// listeners or with the Gateways' ports.
fn run(args: Args, gateway: Option<GatewayFlags>) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    init_logging(&args.log_level)?;
    // Least privilege before anything else: refuse uid 0 in a pod, drop every capability.
    remora_proxy::guard::drop_privileges(args.limits.allow_root).map_err(|e| anyhow!(e))?;
    let limits =
        remora_proxy::guard::DownstreamLimits::from_args(&args.limits).map_err(|e| anyhow!(e))?;
    let labels = load_labels(&args);
    let ctx = LoadContext {
        namespace: args.namespace.clone(),
        cluster_domain: args.cluster_domain.clone(),
        pod_labels: labels.clone(),
        root_namespace: args.root_namespace.clone(),
    };
    let default_probe_host = args
        .instance_ip
        .map(|ip| ip.to_string())
        .unwrap_or_else(|| "127.0.0.1".to_string());
    let probers = AppProbers::parse(
        std::env::var("ISTIO_KUBE_APP_PROBERS").ok().as_deref(),
        &default_probe_host,
    )
    .map_err(|e| anyhow!(e))?;

    // Fail fast, with the address in the message, if a capture port is taken.
    let capture = if gateway.is_some() {
        vec![]
    } else {
        vec![
            ("outbound", args.outbound_addr),
            ("inbound", args.inbound_addr),
        ]
    };
    for (what, addr) in capture {
        std::net::TcpListener::bind(addr).with_context(|| format!("{what} listener {addr}"))?;
    }
    let (outbound_addr6, inbound_addr6) = match gateway {
        Some(_) => (None, None),
        None => ipv6_listeners(&args)?,
    };

    let snapshot = initial_snapshot(&args, &ctx);
    let istio_workload_name = std::env::var("ISTIO_META_WORKLOAD_NAME").ok();
    let workload = Workload::derive(
        args.workload_name
            .as_deref()
            .or(istio_workload_name.as_deref()),
        &labels,
        args.pod_name.as_deref(),
        &args.namespace,
    );
    let settings = Settings {
        outbound_addr: args.outbound_addr,
        inbound_addr: args.inbound_addr,
        outbound_addr6,
        inbound_addr6,
        sniff_timeout: Duration::from_millis(args.sniff_timeout_ms),
        http_first_byte_timeout: Duration::from_secs(5),
        inbound_bind: Some(args.inbound_source),
        inbound_bind_fallback: args.inbound_source_fallback,
        fixed_outbound_target: args.fixed_outbound_target,
        fixed_inbound_target: args.fixed_inbound_target,
        connect_timeout: Duration::from_millis(args.connect_timeout_ms),
        inbound_upstream_read_timeout: limits.inbound_upstream_read_timeout,
        workload: workload.clone(),
        access_log: AccessLog::from_flags(&args.access_log, &args.access_log_encoding),
        num_trusted_proxies: args.num_trusted_proxies,
        tracer: None,
        tracers: Vec::new(),
        access_log_providers: access_log_providers(&args),
    };
    if settings.fixed_outbound_target.is_some() || settings.fixed_inbound_target.is_some() {
        warn!("TESTING MODE: fixed capture targets are set; original destinations are ignored");
    }
    info!(
        version = env!("CARGO_PKG_VERSION"),
        outbound = %args.outbound_addr,
        inbound = %args.inbound_addr,
        admin = %args.admin_addr,
        health = %args.health_addr,
        prometheus = %args.prometheus_addr,
        rules_dir = %args.rules_dir.display(),
        generation = snapshot.generation,
        hash = %snapshot.hash,
        source = %snapshot.source,
        workload = %workload.name,
        namespace = %workload.namespace,
        threads = args.threads,
        work_stealing = args.work_stealing,
        pool_idle_watch = args.pool_idle_watch,
        drain_seconds = args.drain_seconds,
        app_probes = probers.probes.len(),
        "remora-proxy starting"
    );
    // The one metrics handle: every family registered in its own registry before any traffic,
    // handed to everything that counts (through `Shared`, or explicitly).
    let metrics = Arc::new(
        Metrics::new(remora_proxy::telemetry::metrics::series_max_from_env())
            .context("metric definitions")?,
    );
    rules::watch::set_gateway_mode(gateway.is_some());
    rules::watch::set_mesh_identity(
        args.identity.ca_address.trim() != "off" && !args.identity.ca_address.trim().is_empty(),
    );
    if snapshot.generation > 0 {
        // The first set is logged like every reload: counts, unknown fields, resources not
        // applied, ISTIO_MUTUAL warnings (once, here, not on the request path).
        rules::watch::log_applied(&snapshot, &metrics);
    }
    if let Some(p) = &args.jwks_ca_file {
        let n = remora_proxy::jwt::jwks::check_extra_roots(p).map_err(|e| anyhow!(e))?;
        info!(file = %p.display(), certificates = n, "jwksUri servers: the system roots and those of --jwks-ca-file");
    }
    let jwks_settings = remora_proxy::jwt::jwks::JwksSettings {
        refresh: args.jwks_refresh_interval,
        extra_roots: args.jwks_ca_file.clone(),
    };
    let store: rules::SharedSnapshot = Arc::new(arc_swap::ArcSwap::from_pointee(snapshot));
    let identity = args
        .identity
        .config(&args.namespace)
        .map_err(|e| anyhow!(e))?
        .map(|c| Arc::new(remora_proxy::identity::Identity::new(c)));
    let (rules_sources, discovery) = start_kube(
        &args,
        &ctx,
        store.clone(),
        metrics.clone(),
        identity.clone(),
    )?;
    let ready_gate = Arc::new(ReadyGate::new(
        args.discovery_ready_timeout,
        started,
        discovery.clone(),
        Some(rules_sources.clone()),
    ));
    log_ready_gate(&ready_gate);
    match &identity {
        Some(id) => info!(
            identity = %id.config.spiffe_id(),
            ca = %id.config.ca.address,
            cert_ttl_s = id.config.cert_ttl.as_secs(),
            "workload identity on: mTLS to sidecar endpoints and ISTIO_MUTUAL destinations, mTLS from sidecars terminated; ready once the CA issued the certificate"
        ),
        None => info!(
            "workload identity off (--ca-address off): no mTLS between sidecars; ISTIO_MUTUAL destinations get plain text"
        ),
    }
    // The workload's labels in metrics: its pod labels, SPIFFE id and cluster.
    let own_principal = identity.as_ref().map(|id| id.config.spiffe_id());
    let settings = Settings {
        workload: settings
            .workload
            .clone()
            .with_identity(&labels, own_principal.as_deref(), &args.cluster_id)
            .with_exchange(
                args.pod_name.as_deref().unwrap_or(&settings.workload.name),
                &default_probe_host,
                &args.cluster_domain,
            ),
        ..settings
    };
    let (tracer, tracers) = start_tracers(&args, &settings.workload, &metrics)?;
    let settings = Settings {
        tracer,
        tracers,
        ..settings
    };
    let shared = Arc::new(Shared {
        settings,
        snapshot: store.clone(),
        policies: Arc::new(remora_proxy::policy::Policies::new(metrics.clone())),
        identity: identity.clone(),
        peers: Default::default(),
        jwt: Arc::new(remora_proxy::jwt::JwtState::new(jwks_settings)),
        metrics: metrics.clone(),
    });
    if gateway.is_none() {
        listen::log_listeners(&shared.settings);
    }
    let guard = Arc::new(remora_proxy::guard::Guard::new(limits, &metrics));
    guard.log();

    // Pingora server.
    let conf = ServerConf {
        threads: args.threads as usize,
        work_stealing: args.work_stealing,
        grace_period_seconds: Some(args.drain_seconds),
        graceful_shutdown_timeout_seconds: Some(2),
        upstream_keepalive_pool_size: 128,
        upstream_keepalive_idle_watch: args.pool_idle_watch,
        ..Default::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let pconf = server.configuration.clone();
    let resolver = Arc::new(remora_proxy::upstream::HostResolver::default());
    let capture_dirs = match gateway {
        Some(_) => vec![],
        None => vec![Direction::Outbound, Direction::Inbound],
    };
    for dir in capture_dirs {
        let mut h1 = pingora::proxy::http_proxy(
            &pconf,
            MeshHttp {
                dir,
                shared: shared.clone(),
                resolver: resolver.clone(),
                gateway: None,
            },
        );
        h1.server_options = Some(Default::default());
        let mut h2 = pingora::proxy::http_proxy(
            &pconf,
            MeshHttp {
                dir,
                shared: shared.clone(),
                resolver: resolver.clone(),
                gateway: None,
            },
        );
        let mut opts = pingora::apps::HttpServerOptions::default();
        opts.h2c = true;
        opts.h2_idle_timeout = Some(guard.limits.idle_timeout);
        h2.server_options = Some(opts);
        h2.h2_options = Some(guard.limits.h2_options());
        let timeouts = |inner| {
            Arc::new(StreamIdleApp {
                inner: Arc::new(inner),
                listener: dir.as_str(),
                metrics: metrics.clone(),
                stream_idle: guard.limits.stream_idle_timeout,
                write_timeout: guard.limits.downstream_write_timeout,
            })
        };
        let app = CaptureApp {
            dir,
            shared: shared.clone(),
            h1: timeouts(h1),
            h2: timeouts(h2),
            resolver: resolver.clone(),
            guard: guard.clone(),
        };
        let mut svc = Service::new(format!("{} capture", dir.as_str()), app);
        for addr in shared.listener_addrs(dir) {
            if addr.is_ipv6() {
                let mut o = pingora::listeners::TcpSocketOptions::default();
                o.ipv6_only = Some(true);
                svc.add_tcp_with_settings(&addr.to_string(), o);
            } else {
                svc.add_tcp(&addr.to_string());
            }
        }
        server.add_service(svc);
    }
    if let Some(flags) = gateway
        .as_ref()
        .filter(|f| f.gateway_credentials_source == "api")
    {
        start_gateway_secrets(&args, flags.gateway_credentials_dir.clone())?;
    }
    let gateway_router = match gateway {
        None => None,
        Some(flags) => Some(remora_proxy::gateway_listen::add_services(
            &mut server,
            &pconf,
            shared.clone(),
            resolver.clone(),
            guard.clone(),
            flags,
            labels.clone(),
        )?),
    };

    // Admin servers and the rules watcher on their own runtime and thread.
    let mut admin_state = AdminState::new(
        shared.clone(),
        probers,
        args.rules_dir.display().to_string(),
    )
    .with_kube(Some(rules_sources.clone()), discovery)
    .with_ready_gate(ready_gate);
    // Uptime and "ready after" count from the process's start, as the discovery timeout does.
    admin_state.started = started;
    admin_state.gateway = gateway_router.clone();
    admin_state.app_metrics = app_metrics(&shared)?;
    let admin_state = Arc::new(admin_state);
    let mut phases = server.watch_execution_phase();
    let admin_args = args.clone();
    let st = admin_state.clone();
    start_runtime_thread("admin", move |tx| async move {
        let mut listeners = Vec::new();
        for (what, addr, kind) in [
            ("admin", admin_args.admin_addr, AdminKind::Admin),
            ("health", admin_args.health_addr, AdminKind::Health),
            (
                "prometheus",
                admin_args.prometheus_addr,
                AdminKind::Prometheus,
            ),
        ] {
            match admin::bind(addr, what).await {
                Ok(l) => listeners.push((l, kind)),
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return;
                }
            }
        }
        for (l, kind) in listeners {
            tokio::spawn(admin::serve(l, st.clone(), kind));
        }
        if let Some(id) = identity {
            tokio::spawn(id.run(metrics.clone()));
        }
        if let Some(router) = gateway_router {
            tokio::spawn(router.refresh());
        }
        tokio::spawn(admin::watch_readiness(
            st.clone(),
            Duration::from_millis(100),
        ));
        // Freed memory back to the kernel after a burst of load (remora_proxy::heap).
        tokio::spawn(remora_proxy::heap::return_after_bursts());
        let _watcher = rules::watch::spawn_watcher_with(
            admin_args.rules_dir.clone(),
            ctx,
            store,
            Duration::from_secs(admin_args.rules_rescan_seconds),
            metrics,
            rules_sources,
        );
        let _ = tx.send(Ok(()));
        loop {
            match phases.recv().await {
                Ok(ExecutionPhase::GracefulTerminate) | Ok(ExecutionPhase::ShutdownStarted) => {
                    if !st.draining.swap(true, Ordering::Relaxed) {
                        info!(
                            "shutdown signal: draining for up to {}s (readiness now 503)",
                            admin_args.drain_seconds
                        );
                    }
                }
                Ok(_) => {}
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                    std::future::pending::<()>().await
                }
            }
        }
    })?;
    info!("admin servers up; starting capture listeners");
    server.run(RunArgs::default());
    remora_proxy::telemetry::accesslog::flush(Duration::from_secs(2));
    info!("remora-proxy stopped");
    Ok(())
}

/// Metrics merging: the app's scrape settings the injector put in `ISTIO_PROMETHEUS_ANNOTATIONS`
/// (none: 15020 serves the proxy's metrics alone). A malformed value stops the start with one line.
fn app_metrics(
    shared: &remora_proxy::state::Shared,
) -> anyhow::Result<Option<remora_proxy::telemetry::app_metrics::AppMetrics>> {
    use remora_proxy::telemetry::app_metrics::{AppMetrics, AppScrape, ENV};
    let Ok(text) = std::env::var(ENV) else {
        return Ok(None);
    };
    let Some(scrape) = AppScrape::parse(&text).map_err(anyhow::Error::msg)? else {
        tracing::info!("{ENV} does not ask for the app to be scraped: /stats/prometheus serves the proxy's metrics alone");
        return Ok(None);
    };
    tracing::info!(
        port = scrape.port,
        path = %scrape.path,
        "metrics merging: :15020/stats/prometheus serves the proxy's metrics and the app's from 127.0.0.1:{}{}",
        scrape.port,
        scrape.path
    );
    let m = AppMetrics::new(scrape, shared.metrics.registry())
        .map_err(|e| anyhow::anyhow!("registering the app-metrics counter: {e}"))?;
    Ok(Some(m))
}

/// `--gateway-credentials-source api`: the Secrets of the gateway's namespace through the API,
/// written into the credentials directory, on their own thread and runtime. Without API access
/// (`--kube-api off`, no in-cluster configuration) it is an error naming why.
fn start_gateway_secrets(args: &Args, dir: std::path::PathBuf) -> anyhow::Result<()> {
    use remora_proxy::discovery::kube::{self as dk, ApiMode};
    let (kube_api, namespace) = (args.kube_api.clone(), args.namespace.clone());
    start_runtime_thread("gw-secrets", move |tx| async move {
        let client = match dk::client_for(&kube_api, &namespace) {
            Ok(ApiMode::Client(client, _)) => client,
            Ok(ApiMode::Off(why)) => {
                let _ = tx.send(Err(anyhow!(
                    "--gateway-credentials-source api: the Kubernetes API is off ({why}); use --gateway-credentials-source files or give the gateway API access"
                )));
                return;
            }
            Err(e) => {
                let _ = tx.send(Err(anyhow!(e)));
                return;
            }
        };
        let _ = tx.send(Ok(()));
        remora_proxy::gateway::secrets::watch(client, namespace, dir).await
    })
}
