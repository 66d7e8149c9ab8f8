//! `remora-webhook`: the admission server (`serve`), a revision's install manifest
//! (`manifest`), and offline injection (`inject`, `check-inject`), kept for one release as
//! aliases of `remora inject` and `remora check-inject -f` (the same library code,
//! `remora_webhook::cli`).

#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use remora_webhook::{ca, certs, cli, config, server};

#[derive(Parser)]
#[command(
    name = "remora-webhook",
    version,
    about = "remora's Istio-compatible sidecar injector"
)]
struct Args {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Serve the admission webhooks over HTTPS: sidecar injection (POST /inject) and rules
    /// ConfigMap validation (POST /validate).
    Serve {
        #[arg(long, default_value = "0.0.0.0:15017")]
        listen: SocketAddr,
        #[arg(long, default_value = "/etc/remora/certs/tls.crt")]
        tls_cert: PathBuf,
        #[arg(long, default_value = "/etc/remora/certs/tls.key")]
        tls_key: PathBuf,
        /// Injector config YAML (reloaded on change; built-in defaults when absent).
        #[arg(long, default_value = "/etc/remora/inject/config.yaml")]
        config: PathBuf,
        /// This injector's revision: it injects only pods its revision's webhook entries send
        /// (`/inject/rev/<revision>/<entry>`), and names it in `sidecar.istio.io/status`.
        #[arg(long, env = "REMORA_REVISION", default_value = "default")]
        revision: String,
        /// The mesh's root namespace: its Sidecar, PeerAuthentication, AuthorizationPolicy and
        /// RequestAuthentication without selector are mesh-wide, its DestinationRules the last
        /// fallback. The rules controller renders with it and the injector gives it to every
        /// proxy (`REMORA_ROOT_NAMESPACE`), so both agree. Istio's default is `istio-system`.
        #[arg(long, env = "REMORA_ROOT_NAMESPACE",
              default_value = remora_model::kinds::DEFAULT_ROOT_NAMESPACE,
              value_parser = remora_model::kinds::parse_root_namespace)]
        root_namespace: String,
        /// Longest wait for in-flight reviews on SIGTERM, in seconds.
        #[arg(long, default_value_t = 20)]
        drain_seconds: u64,
        #[command(flatten)]
        limits: LimitArgs,
        #[command(flatten)]
        certs: Box<CertArgs>,
        #[command(flatten)]
        ca: Box<CaArgs>,
        #[command(flatten)]
        rules: Box<RulesArgs>,
    },
    /// Print the injected YAML of Pods and workloads (no cluster needed).
    ///
    /// Kept for one release: use `remora inject -f FILE` (same flags and output).
    Inject {
        /// Input file, `-` for stdin.
        #[arg(short = 'f', long = "filename", default_value = "-")]
        file: String,
        /// Injector config YAML (built-in defaults when not given).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Namespace for objects that name none.
        #[arg(short = 'n', long, default_value = "default")]
        namespace: String,
        /// An installed revision (repeat for several; default: the config's, else default).
        #[arg(long = "revision")]
        revisions: Vec<String>,
        /// Labels of the namespace, `k=v,k2=v2`: pods no webhook entry selects are left alone.
        #[arg(long)]
        namespace_labels: Option<String>,
    },
    /// Say whether the webhook would inject each Pod or workload, and why.
    ///
    /// Kept for one release: use `remora check-inject -f FILE` (same flags and output).
    CheckInject {
        #[arg(short = 'f', long = "filename", default_value = "-")]
        file: String,
        /// Labels of the namespace, `k=v,k2=v2` (the webhook's namespaceSelector looks at them).
        #[arg(long)]
        namespace_labels: Option<String>,
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(short = 'n', long, default_value = "default")]
        namespace: String,
        /// An installed revision (repeat for several; default: the config's, else default).
        #[arg(long = "revision")]
        revisions: Vec<String>,
    },
    /// Print the install of a revision, rendered from the default revision's install.yaml:
    /// the revision's own objects (Deployment, Services, webhook configurations, injector
    /// config, RBAC for them) named `<name>-<revision>`, and the shared ones.
    Manifest {
        /// The default revision's install manifest (manifests/install.yaml), `-` for stdin.
        #[arg(short = 'f', long = "filename", required_unless_present = "tag")]
        file: Option<String>,
        /// The revision to render (with --tag: the revision the tag points to).
        #[arg(long)]
        revision: String,
        /// Only the revision's own objects (e.g. to delete a revision: `| kubectl delete -f -`).
        #[arg(long)]
        revision_only: bool,
        /// Render only revision tag TAG's MutatingWebhookConfiguration (`remora-revision-tag-TAG`,
        /// as `istioctl tag generate`): namespaces and pods labelled `istio.io/rev=TAG` are
        /// injected by --revision. Applying it again with another --revision moves the tag.
        #[arg(long, conflicts_with_all = ["file", "revision_only"])]
        tag: Option<String>,
    },
    /// Print the CustomResourceDefinitions of the kinds the rules controller reads
    /// (manifests/istio-crds.yaml), their schemas generated from remora's typed rule structs.
    /// For clusters without Istio's CRDs.
    Crds,
}

/// `serve`: what one client may hold of the server (see `server::Limits`).
#[derive(clap::Args)]
struct LimitArgs {
    /// Seconds for the TLS handshake plus the first request head.
    #[arg(long, env = "REMORA_HEADER_READ_TIMEOUT_SECONDS", default_value_t = 5)]
    header_read_timeout_seconds: u64,
    /// Seconds a connection may stay without a request in flight before it is closed.
    #[arg(long, env = "REMORA_IDLE_TIMEOUT_SECONDS", default_value_t = 60)]
    idle_timeout_seconds: u64,
    /// Seconds for one whole request (body and answer); then 408.
    #[arg(long, env = "REMORA_REVIEW_TIMEOUT_SECONDS", default_value_t = 10)]
    review_timeout_seconds: u64,
    /// Open connections at most (past it the longest-idle connection is closed).
    #[arg(long, env = "REMORA_MAX_CONNECTIONS", default_value_t = 512)]
    max_connections: usize,
    /// Pod reviews in progress at once; past it 429 with Retry-After.
    #[arg(long, env = "REMORA_MAX_CONCURRENT_REVIEWS", default_value_t = 32)]
    max_concurrent_reviews: usize,
    /// Rules ConfigMap reviews (POST /validate) in progress at once; past it 429.
    #[arg(long, env = "REMORA_MAX_CONCURRENT_RULES_REVIEWS", default_value_t = 4)]
    max_concurrent_rules_reviews: usize,
    /// HTTP/2 streams per connection.
    #[arg(long, env = "REMORA_H2_MAX_CONCURRENT_STREAMS", default_value_t = 8)]
    h2_max_concurrent_streams: u32,
    /// Largest POST /inject body in bytes; larger is 413.
    #[arg(long, env = "REMORA_MAX_BODY_BYTES", default_value_t = remora_webhook::review::MAX_BODY)]
    max_body_bytes: usize,
    /// Largest POST /validate body in bytes; larger is 413.
    #[arg(long, env = "REMORA_MAX_RULES_BODY_BYTES", default_value_t = remora_webhook::review::MAX_RULES_BODY)]
    max_rules_body_bytes: usize,
}

impl LimitArgs {
    fn limits(&self) -> anyhow::Result<server::Limits> {
        let l = server::Limits {
            header_read_timeout: Duration::from_secs(self.header_read_timeout_seconds),
            idle_timeout: Duration::from_secs(self.idle_timeout_seconds),
            review_timeout: Duration::from_secs(self.review_timeout_seconds),
            max_connections: self.max_connections,
            max_concurrent_reviews: self.max_concurrent_reviews,
            max_concurrent_rules_reviews: self.max_concurrent_rules_reviews,
            h2_max_concurrent_streams: self.h2_max_concurrent_streams,
            max_body: self.max_body_bytes,
            max_rules_body: self.max_rules_body_bytes,
        };
        l.validate().map_err(anyhow::Error::msg)?;
        Ok(l)
    }
}

/// `serve --manage-certs`: issue and rotate the serving certificate in a Secret (no
/// cert-manager). Without it, `--tls-cert`/`--tls-key` are served (and hot-reloaded).
#[derive(clap::Args)]
struct CertArgs {
    /// Issue a CA and serving certificate, keep them in --cert-secret, write the CA into the
    /// caBundle of --webhook-config's and --validating-webhook-config's webhooks, rotate before
    /// expiry. --tls-cert/--tls-key are then not read.
    #[arg(long, env = "REMORA_MANAGE_CERTS")]
    manage_certs: bool,
    /// Secret holding tls.crt, tls.key, ca.crt, ca.key.
    #[arg(
        long,
        env = "REMORA_CERT_SECRET",
        default_value = "remora-webhook-certs"
    )]
    cert_secret: String,
    /// Service name the API server calls (certificate SAN `<service>.<namespace>.svc`).
    #[arg(long, env = "REMORA_SERVICE", default_value = "remora-webhook")]
    service: String,
    /// Namespace of the Secret and the Service.
    #[arg(long, env = "POD_NAMESPACE", default_value = "remora-system")]
    namespace: String,
    /// MutatingWebhookConfiguration whose webhooks get the CA bundle.
    #[arg(
        long,
        env = "REMORA_WEBHOOK_CONFIG",
        default_value = "remora-sidecar-injector"
    )]
    webhook_config: String,
    /// ValidatingWebhookConfiguration (rules validation, POST /validate) whose webhooks get the
    /// CA bundle too; a missing one is logged once and not an error; empty: not managed.
    #[arg(
        long,
        env = "REMORA_VALIDATING_WEBHOOK_CONFIG",
        default_value = "remora-rules-validator"
    )]
    validating_webhook_config: String,
    /// Serving certificate lifetime (`90d`, `12h`, `30m`, `45s`).
    #[arg(long, env = "REMORA_CERT_VALIDITY", default_value = "90d")]
    cert_validity: String,
    /// Replace the serving certificate when less than this is left.
    #[arg(long, env = "REMORA_CERT_ROTATE_BEFORE", default_value = "30d")]
    cert_rotate_before: String,
    /// CA lifetime (replaced when less than --cert-validity + --cert-rotate-before is left).
    #[arg(long, env = "REMORA_CA_VALIDITY", default_value = "3650d")]
    ca_validity: String,
    /// Time between checks of the Secret and the caBundle.
    #[arg(long, env = "REMORA_CERT_CHECK_INTERVAL", default_value = "1h")]
    cert_check_interval: String,
    /// API server URL (tests); default: in-cluster config (service account) or kubeconfig.
    #[arg(long, env = "REMORA_KUBE_URL")]
    kube_url: Option<String>,
}

/// The rules controller: Istio objects applied in the cluster compiled into every meshed
/// namespace's `remora-mesh-rules` ConfigMap.
#[derive(clap::Args)]
struct RulesArgs {
    /// `on` runs the rules controller (leader-elected with a Lease in the pod's namespace).
    #[arg(long, env = "REMORA_RULES_CONTROLLER", default_value = "off", value_parser = ["on", "off"])]
    rules_controller: String,
    /// Name of the Lease that elects the one replica writing ConfigMaps.
    #[arg(
        long,
        env = "REMORA_RULES_LEASE",
        default_value = "remora-rules-controller"
    )]
    rules_lease: String,
    /// This replica's name in the Lease (default: the pod name, else the host name).
    #[arg(long, env = "POD_NAME")]
    rules_identity: Option<String>,
    /// Changes arriving within this window are applied together (at most 1s).
    #[arg(long, env = "REMORA_RULES_DEBOUNCE", default_value = "100ms")]
    rules_debounce: String,
    /// `on` writes a `remora.dev/Compiled` condition into each Istio object's status (True, or
    /// False with the reason it is left out), as Istio's PILOT_ENABLE_STATUS does.
    #[arg(long, env = "REMORA_RULES_STATUS", default_value = "off", value_parser = ["on", "off"])]
    rules_status: String,
    /// The cluster's DNS domain (short host names in rules are qualified with it).
    #[arg(long, env = "REMORA_CLUSTER_DOMAIN", default_value = "cluster.local")]
    cluster_domain: String,
}

impl RulesArgs {
    /// `None` when `--rules-controller off`.
    fn options(
        &self,
        namespace: &str,
        root_namespace: &str,
    ) -> anyhow::Result<Option<remora_webhook::rules_controller::Options>> {
        if self.rules_controller == "off" {
            return Ok(None);
        }
        let identity = match &self.rules_identity {
            Some(i) if !i.trim().is_empty() => i.trim().to_string(),
            _ => std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_string())
                .ok()
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| format!("remora-webhook-{}", std::process::id())),
        };
        let mut o = remora_webhook::rules_controller::Options::new(namespace, &identity);
        o.lease = self.rules_lease.clone();
        o.debounce = parse_short_duration(&self.rules_debounce)
            .map_err(|e| anyhow::anyhow!("--rules-debounce {:?}: {e}", self.rules_debounce))?;
        o.settings.cluster_domain = self.cluster_domain.clone();
        o.settings.root_namespace = root_namespace.to_string();
        o.status = self.rules_status == "on";
        o.validate()
            .map_err(|e| anyhow::anyhow!("--rules-debounce {:?}: {e}", self.rules_debounce))?;
        Ok(Some(o))
    }
}

/// `250ms`, `1s`: milliseconds or seconds.
fn parse_short_duration(v: &str) -> Result<Duration, String> {
    let (n, unit) = match v.strip_suffix("ms") {
        Some(n) => (n, 1),
        None => match v.strip_suffix('s') {
            Some(n) => (n, 1000),
            None => return Err("expected a duration like 100ms or 1s".into()),
        },
    };
    n.parse::<u64>()
        .map(|n| Duration::from_millis(n * unit))
        .map_err(|_| "expected a duration like 100ms or 1s".into())
}

/// The mesh CA: Istio's certificate service (`istio.v1.auth.IstioCertificateService`) for
/// workload certificates, on its own TLS port.
#[derive(clap::Args)]
struct CaArgs {
    /// Address of the mesh CA's gRPC (TLS) listener; `off` disables the CA.
    #[arg(long, env = "REMORA_CA_ADDR", default_value = "0.0.0.0:15012")]
    ca_addr: String,
    /// SPIFFE trust domain of the identities issued (`spiffe://<trust domain>/ns/<ns>/sa/<sa>`).
    #[arg(long, env = "REMORA_TRUST_DOMAIN", default_value = "cluster.local")]
    trust_domain: String,
    /// Audience the callers' service-account tokens must be issued for (checked by TokenReview).
    #[arg(long, env = "REMORA_CA_TOKEN_AUDIENCE", default_value = "remora-ca")]
    ca_token_audience: String,
    /// Longest workload certificate lifetime; longer requests are cut to it (`24h`, `90m`, `7d`).
    #[arg(long, env = "REMORA_CA_MAX_CERT_TTL", default_value = "24h")]
    ca_max_cert_ttl: String,
    /// Namespace of the root Secret, the plug-in Secret `cacerts` and the CA's Service.
    #[arg(
        long,
        env = "REMORA_CA_SECRET_NAMESPACE",
        default_value = "remora-system"
    )]
    ca_secret_namespace: String,
    /// Secret holding the generated root (created on first start).
    #[arg(long, env = "REMORA_CA_SECRET_NAME", default_value = "remora-ca")]
    ca_secret_name: String,
    /// The CA's Service: its serving certificate names `<service>.<namespace>.svc`.
    #[arg(long, env = "REMORA_CA_SERVICE", default_value = "remora-ca")]
    ca_service: String,
    /// Time between passes publishing the root to meshed namespaces (the root Secret is re-read
    /// before each: a rotation is taken then).
    #[arg(long, env = "REMORA_CA_PUBLISH_INTERVAL", default_value = "60s")]
    ca_publish_interval: String,
    /// A generated root is renewed (the same key and subject, a new validity; the old and the
    /// new one trusted together until the old one expires) when less than this fraction of its
    /// lifetime is left, checked at every publication pass. Istio's self-signed CA uses 0.2.
    #[arg(long, env = "REMORA_CA_ROOT_RENEW_WHEN_LEFT", default_value_t = ca::root::RENEW_WHEN_LEFT)]
    ca_root_renew_when_left: f64,
    /// Connections the CA's listener holds open at once: each proxy holds one for its discovery
    /// subscription (and opens one for each certificate), so this bounds the sidecars one
    /// replica serves. More are closed at accept (the proxy retries, with backoff, any replica).
    #[arg(long, env = "REMORA_CA_MAX_CONNECTIONS", default_value_t = 1024, value_parser = clap::value_parser!(u64).range(16..=65_536))]
    ca_max_connections: u64,
    /// The CA address injected proxies call (their `REMORA_CA_ADDRESS`; with it they get the
    /// token and root volumes): `auto` = this process's CA,
    /// `<--ca-service>.<--ca-secret-namespace>.svc:<port of --ca-addr>`, and no identity when
    /// `--ca-addr off`; `off` = inject no identity; `HOST:PORT` = that CA, also with
    /// `--ca-addr off`. The injector config's `identity.caAddress` wins over it.
    #[arg(long, env = "REMORA_INJECT_CA_ADDRESS", default_value = "auto")]
    inject_ca_address: String,
    /// `on` serves discovery (`remora.discovery.v1.Discovery`) on the CA's listener: one set of
    /// watches of Services, EndpointSlices, Pods (their metadata and service account kept) and
    /// Sidecars, streamed to sidecars started with `--discovery-address`, each scoped by
    /// exportTo and its Sidecar (then they need no API rights for discovery). Needs the CA; the
    /// install turns it on.
    #[arg(long, env = "REMORA_DISCOVERY_SERVE", default_value = "off", value_parser = ["on", "off"])]
    discovery: String,
    /// Most sidecars subscribed at once (more are refused and retry).
    #[arg(long, env = "REMORA_DISCOVERY_MAX_SUBSCRIBERS", default_value_t = 4096, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    discovery_max_subscribers: u64,
    /// Messages queued for one sidecar; a sidecar that falls further behind is dropped and told
    /// (it subscribes again for a fresh snapshot).
    #[arg(long, env = "REMORA_DISCOVERY_QUEUE", default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    discovery_queue: u64,
}

impl CaArgs {
    /// `None` when `--ca-addr off`.
    fn options(&self) -> anyhow::Result<Option<ca::Options>> {
        if self.ca_addr == "off" {
            if self.discovery == "on" {
                return Err(anyhow::anyhow!(
                    "--discovery on: discovery is served on the CA's listener, which --ca-addr off disables"
                ));
            }
            return Ok(None);
        }
        let addr: SocketAddr = self.ca_addr.parse().map_err(|_| {
            anyhow::anyhow!(
                "--ca-addr {:?}: not an address (IP:PORT, e.g. 0.0.0.0:15012) or `off`",
                self.ca_addr
            )
        })?;
        let dur = |flag: &str, v: &str| {
            certs::issue::parse_duration(v).map_err(|e| anyhow::anyhow!("--{flag} {v:?}: {e}"))
        };
        let opts = ca::Options {
            addr,
            trust_domain: self.trust_domain.clone(),
            audience: self.ca_token_audience.clone(),
            max_ttl: dur("ca-max-cert-ttl", &self.ca_max_cert_ttl)?,
            namespace: self.ca_secret_namespace.clone(),
            secret: self.ca_secret_name.clone(),
            service: self.ca_service.clone(),
            publish_interval: dur("ca-publish-interval", &self.ca_publish_interval)?,
            root_renew_when_left: self.ca_root_renew_when_left,
            max_connections: self.ca_max_connections as usize,
        };
        if opts.publish_interval < Duration::from_secs(1) {
            return Err(anyhow::anyhow!(
                "--ca-publish-interval {:?}: must be at least 1s",
                self.ca_publish_interval
            ));
        }
        opts.validate().map_err(|e| anyhow::anyhow!(e))?;
        Ok(Some(opts))
    }
}

impl CaArgs {
    /// The discovery service's bounds, `None` for `--discovery off` (checked with the CA's
    /// flags by [`CaArgs::options`]).
    fn discovery_limits(&self) -> Option<remora_webhook::discovery::serve::Limits> {
        (self.discovery == "on").then(|| remora_webhook::discovery::serve::Limits {
            max_subscribers: self.discovery_max_subscribers as usize,
            queue: self.discovery_queue as usize,
            ..Default::default()
        })
    }

    /// What the injector gives proxies for their identity, unless its config file says
    /// otherwise (checked after [`CaArgs::options`], which checks the CA's own flags).
    fn identity_defaults(&self) -> anyhow::Result<config::IdentityDefaults> {
        let local_ca = self.ca_addr != config::OFF;
        let ca_address = match self.inject_ca_address.as_str() {
            "auto" if !local_ca => config::OFF.to_string(),
            "auto" => {
                let port = self
                    .ca_addr
                    .parse::<SocketAddr>()
                    .map_err(|_| {
                        anyhow::anyhow!(
                            "--ca-addr {:?}: not an address (IP:PORT, e.g. 0.0.0.0:15012) or `off`",
                            self.ca_addr
                        )
                    })?
                    .port();
                format!(
                    "{}.{}.svc:{port}",
                    self.ca_service, self.ca_secret_namespace
                )
            }
            "off" => config::OFF.to_string(),
            a => {
                remora_webhook::values::check_host_port(a).map_err(|why| {
                    anyhow::anyhow!(
                        "--inject-ca-address {a:?}: {why}: expected auto, off or {}",
                        remora_webhook::values::HOST_PORT_EXAMPLE
                    )
                })?;
                a.to_string()
            }
        };
        if ca_address != config::OFF {
            let (td, aud) = (&self.trust_domain, &self.ca_token_audience);
            remora_webhook::values::check_trust_domain(td)
                .map_err(|why| anyhow::anyhow!("--trust-domain {td:?}: {why}"))?;
            remora_webhook::values::check_audience(aud)
                .map_err(|why| anyhow::anyhow!("--ca-token-audience {aud:?}: {why}"))?;
        }
        // Proxies subscribe to discovery where they get their certificate when this process
        // serves both.
        let discovery_address =
            if self.discovery == "on" && local_ca && self.inject_ca_address == "auto" {
                ca_address.clone()
            } else {
                config::OFF.to_string()
            };
        Ok(config::IdentityDefaults {
            discovery_address,
            local_ca: local_ca && self.inject_ca_address == "auto",
            ca_address,
            audience: self.ca_token_audience.clone(),
            trust_domain: self.trust_domain.clone(),
        })
    }
}

impl CertArgs {
    fn options(&self) -> anyhow::Result<certs::Options> {
        let dur = |flag: &str, v: &str| {
            certs::issue::parse_duration(v).map_err(|e| anyhow::anyhow!("--{flag} {v:?}: {e}"))
        };
        let opts = certs::Options {
            policy: certs::issue::Policy {
                service: self.service.clone(),
                namespace: self.namespace.clone(),
                cert_validity: dur("cert-validity", &self.cert_validity)?,
                ca_validity: dur("ca-validity", &self.ca_validity)?,
                rotate_before: dur("cert-rotate-before", &self.cert_rotate_before)?,
            },
            secret: self.cert_secret.clone(),
            webhook_config: self.webhook_config.clone(),
            check_interval: dur("cert-check-interval", &self.cert_check_interval)?,
            retry_interval: Duration::from_secs(2),
        };
        opts.validate().map_err(|e| anyhow::anyhow!(e))?;
        Ok(opts)
    }

    /// A kube client for `who` (named in errors: `--manage-certs`, the mesh CA).
    async fn client(&self, who: &str) -> anyhow::Result<kube::Client> {
        let cfg = match &self.kube_url {
            Some(u) => {
                let url: http::Uri = u
                    .parse()
                    .map_err(|e| anyhow::anyhow!("--kube-url {u:?}: not a URL ({e})"))?;
                let mut c = kube::Config::new(url);
                c.default_namespace = self.namespace.clone();
                c
            }
            None => kube::Config::infer().await.map_err(|e| {
                anyhow::anyhow!("{who}: no Kubernetes API config (in-cluster or kubeconfig): {e}")
            })?,
        };
        kube::Client::try_from(cfg).map_err(|e| anyhow::anyhow!("{who}: kube client: {e}"))
    }
}

fn init_logging(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("REMORA_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        b.json().flatten_event(true).with_current_span(false).init();
    } else {
        b.with_target(false).init();
    }
}

async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = term => tracing::info!("SIGTERM received"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
    }
}

fn run(args: Args) -> anyhow::Result<ExitCode> {
    match args.cmd {
        Cmd::Serve {
            listen,
            tls_cert,
            tls_key,
            config,
            revision,
            root_namespace,
            drain_seconds,
            limits,
            certs: cert_args,
            ca: ca_args,
            rules,
        } => {
            remora_webhook::selectors::check_revision(&revision)
                .map_err(|why| anyhow::anyhow!("--revision {revision:?}: {why}"))?;
            let limits = limits.limits()?;
            let rules_opts = rules.options(&cert_args.namespace, &root_namespace)?;
            init_logging(true);
            remora_webhook::tls::install_provider();
            let cert_opts = cert_args
                .manage_certs
                .then(|| cert_args.options())
                .transpose()?;
            let ca_opts = ca_args.options()?;
            let discovery_limits = ca_args.discovery_limits();
            let identity = ca_args.identity_defaults()?;
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            rt.block_on(async move {
                let cfg =
                    config::ConfigHandle::load_for(&config, identity, &revision, &root_namespace)?;
                tracing::info!(root_namespace = %root_namespace,
                    "root namespace {root_namespace}: its selector-less Sidecar and security policies are mesh-wide (rules controller and injected proxies)");
                tracing::info!(revision = %revision,
                    "injector revision {revision}: injecting pods sent by the entries of MutatingWebhookConfiguration {} (path /inject/rev/{revision}/<entry>); pods sent for another revision are not injected",
                    remora_webhook::selectors::revision_name(remora_webhook::selectors::WEBHOOK_CONFIG, &revision));
                match cfg.get().identity() {
                    Some(id) => tracing::info!(ca_address = %id.ca_address, audience = %id.audience,
                        trust_domain = %id.trust_domain,
                        "injecting workload identity: proxies get a token for {} and the root, and call {}",
                        id.audience, id.ca_address),
                    None => tracing::info!(
                        "not injecting workload identity: the injected CA address is off (--ca-addr off with --inject-ca-address auto, --inject-ca-address off, or identity.caAddress: off in the config file)"
                    ),
                }
                // The discovery service's exportTo default (read once, at start-up).
                let default_export = cfg.get().mesh.default_service_export_to.clone();
                let opts = server::ServeOptions {
                    listen,
                    cert: tls_cert,
                    key: tls_key,
                    config: cfg,
                    reload_poll: Duration::from_secs(10),
                    drain: Duration::from_secs(drain_seconds),
                    limits,
                };
                let running = match cert_opts {
                    Some(co) => {
                        let client = cert_args.client("--manage-certs").await?;
                        let store = certs::store::Store::new(
                            client,
                            &co.policy.namespace,
                            &co.secret,
                            &co.webhook_config,
                            &cert_args.validating_webhook_config,
                        )
                        .with_tags_of(&revision);
                        tracing::info!(secret = %format!("{}/{}", co.policy.namespace, co.secret),
                            webhook_config = %co.webhook_config,
                            validating_webhook_config = %cert_args.validating_webhook_config, server_name = %co.policy.server_name(),
                            tag_configs = %remora_webhook::selectors::tag_configs_selector(&revision),
                            "managing the webhook certificate (--manage-certs)");
                        let managed = certs::start(store, co).await?;
                        server::start_with_resolver(opts, managed.resolver).await?
                    }
                    None => server::start(opts).await?,
                };
                let mut discovery_watches = Vec::new();
                let mesh_ca = match ca_opts {
                    Some(o) => {
                        let client = cert_args
                            .client("mesh CA (--ca-addr off disables it)")
                            .await?;
                        let extra = match &discovery_limits {
                            Some(limits) => {
                                use remora_webhook::discovery;
                                let authn = ca::authn::Authenticator::new(
                                    client.clone(),
                                    &o.audience,
                                    Duration::from_secs(10),
                                );
                                let mesh = discovery::serve::Mesh {
                                    root_namespace: root_namespace.clone(),
                                    cluster_domain: rules.cluster_domain.clone(),
                                };
                                let hub = discovery::serve::Hub::new(authn, &o.trust_domain, mesh, limits.clone());
                                let default_export = default_export.clone();
                                if !default_export.is_empty() {
                                    tracing::info!(default_service_export_to = ?default_export,
                                        "discovery: Services without an exportTo annotation are exported to {:?} (mesh.defaultServiceExportTo, read at start-up)", default_export);
                                }
                                discovery_watches = discovery::watch::start(client.clone(), hub.clone(), &rules.cluster_domain, default_export);
                                tracing::info!(addr = %o.addr, max_subscribers = limits.max_subscribers, queue = limits.queue,
                                    "discovery served on the CA's listener: watching services, endpointslices, pods and sidecars in all namespaces; each subscriber scoped by exportTo and its Sidecar's egress hosts");
                                Some(Arc::new(discovery::grpc::Service(hub))
                                    as Arc<dyn ca::grpc::Extra>)
                            }
                            None => None,
                        };
                        Some(ca::start_with(client, o, extra).await?)
                    }
                    None => {
                        tracing::info!("mesh CA disabled (--ca-addr off)");
                        None
                    }
                };
                let rules_ctl = match rules_opts {
                    Some(o) => {
                        let client = cert_args
                            .client("rules controller (--rules-controller off disables it)")
                            .await?;
                        Some(remora_webhook::rules_controller::start(client, o))
                    }
                    None => {
                        tracing::info!("rules controller off (--rules-controller on compiles Istio objects into the rules ConfigMaps)");
                        None
                    }
                };
                shutdown_signal().await;
                if let Some(r) = rules_ctl {
                    r.shutdown().await;
                }
                if let Some(c) = mesh_ca {
                    c.shutdown();
                }
                for w in discovery_watches {
                    w.abort();
                }
                running.shutdown().await;
                tracing::info!("stopped");
                Ok::<_, anyhow::Error>(ExitCode::SUCCESS)
            })
        }
        Cmd::Inject {
            file,
            config,
            namespace,
            revisions,
            namespace_labels,
        } => {
            init_logging(false);
            cli::inject_command(
                &file,
                config.as_deref(),
                &namespace,
                &revisions,
                namespace_labels.as_deref(),
            )
        }
        Cmd::CheckInject {
            file,
            namespace_labels,
            config,
            namespace,
            revisions,
        } => {
            init_logging(false);
            cli::check_inject_command(
                &file,
                namespace_labels.as_deref(),
                config.as_deref(),
                &namespace,
                &revisions,
                &[],
            )
        }
        Cmd::Manifest {
            file,
            revision,
            revision_only,
            tag,
        } => match (tag, file) {
            (Some(tag), _) => remora_webhook::manifest::tag_command(&tag, &revision),
            (None, Some(file)) => {
                remora_webhook::manifest::manifest_command(&file, &revision, revision_only)
            }
            (None, None) => anyhow::bail!("-f: missing: the install manifest to render from"),
        },
        Cmd::Crds => {
            let text = remora_model::crd::manifest().map_err(anyhow::Error::msg)?;
            print!("{text}");
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("remora-webhook: {e:#}");
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn install() -> Vec<serde_json::Value> {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests/install.yaml");
        let text = std::fs::read_to_string(&path).unwrap();
        remora_webhook::cli::parse_docs(&text).unwrap()
    }

    /// The default install serves discovery, and its injector sends the sidecars there: the
    /// webhook Deployment's own arguments, parsed by this program's parser, give the injected
    /// proxies `REMORA_DISCOVERY_ADDRESS` (the mesh CA's Service address); and no binding of the
    /// install grants the sidecars API rights (`manifests/proxy-rbac.yaml`'s ClusterRoles stay
    /// unbound, the fallback for direct API mode).
    #[test]
    fn the_default_install_serves_discovery_and_grants_sidecars_no_api_rights() {
        let docs = install();
        let dep = docs
            .iter()
            .find(|d| d["kind"] == "Deployment" && d["metadata"]["name"] == "remora-webhook")
            .expect("the webhook Deployment");
        let c = &dep["spec"]["template"]["spec"]["containers"][0];
        let argv: Vec<String> = std::iter::once("remora-webhook".to_string())
            .chain(
                c["args"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|a| a.as_str().unwrap().to_string()),
            )
            .collect();
        let Cmd::Serve { ca, .. } = Args::try_parse_from(&argv).unwrap().cmd else {
            panic!("not serve: {argv:?}");
        };
        assert!(ca.discovery_limits().is_some(), "--discovery=on: {argv:?}");
        // Memory for the subscribers its listener admits: the bench's control plane held
        // 54 MiB synced (10,000 pods) and about 0.09 MiB per subscriber, peaking at 171 MiB
        // with 1,000 under churn (docs/benchmarks.md); the limit leaves room for the
        // --ca-max-connections subscribers of a reconnect storm, the request for ~1,000.
        let mib = |q: &serde_json::Value| {
            remora_webhook::values::parse_quantity(q.as_str().unwrap_or("0")).unwrap()
                / (1024.0 * 1024.0)
        };
        let (request, limit) = (
            mib(&c["resources"]["requests"]["memory"]),
            mib(&c["resources"]["limits"]["memory"]),
        );
        let per_subscriber = 0.09;
        assert!(request >= 171.0, "memory request {request} MiB");
        assert!(
            limit >= 2.0 * (54.0 + per_subscriber * ca.ca_max_connections as f64),
            "memory limit {limit} MiB for {} connections",
            ca.ca_max_connections
        );
        let id = ca.identity_defaults().unwrap();
        assert_eq!(id.discovery_address, "remora-ca.remora-system.svc:15012");
        assert_eq!(id.ca_address, id.discovery_address);
        // The injector's config of the install leaves it so: the proxies get the address.
        let cfg_map = docs
            .iter()
            .find(|d| d["kind"] == "ConfigMap" && d["metadata"]["name"] == "remora-injector")
            .expect("the injector ConfigMap");
        let cfg = remora_webhook::config::Config::from_yaml(
            cfg_map["data"]["config.yaml"].as_str().unwrap_or(""),
        )
        .unwrap()
        .with_identity_defaults(&id)
        .unwrap();
        assert_eq!(
            cfg.identity().and_then(|i| i.discovery_address).as_deref(),
            Some("remora-ca.remora-system.svc:15012")
        );

        // Who may read Services, EndpointSlices and Pods: the webhook, not the sidecars.
        let bindings: Vec<&serde_json::Value> = docs
            .iter()
            .filter(|d| d["kind"] == "ClusterRoleBinding" || d["kind"] == "RoleBinding")
            .collect();
        for b in &bindings {
            let role = b["roleRef"]["name"].as_str().unwrap_or("");
            assert!(
                !role.starts_with("remora-proxy-"),
                "the default install binds {role} (sidecars' API rights): {b}"
            );
            for s in b["subjects"].as_array().into_iter().flatten() {
                assert_ne!(
                    s["kind"], "Group",
                    "a group of service accounts is bound: {b}"
                );
            }
        }
        let discovery = bindings
            .iter()
            .find(|b| b["roleRef"]["name"] == "remora-discovery")
            .expect("the webhook's discovery binding");
        assert_eq!(
            discovery["subjects"],
            serde_json::json!([{"kind": "ServiceAccount", "name": "remora-webhook",
                                "namespace": "remora-system"}])
        );
    }
}
