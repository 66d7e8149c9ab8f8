//! `remora`, the user CLI against a cluster: `check-inject`, `proxy-status`, `proxy-config`,
//! `analyze`, `describe`; and offline, on files: `inject -f` and `check-inject -f` (the
//! webhook's own code, `remora_webhook::cli`).
//!
//! Like kubectl it reads the kubeconfig (`--kubeconfig`, `--context`, `KUBECONFIG`,
//! `~/.kube/config`, in-cluster) or talks to `--server URL`. The API calls are all in [`kube`];
//! the modules `check`, `status`, `proxyconfig`, `describe` (its pure part), `selector` and
//! `table` are pure functions over the typed objects the API returns (k8s-openapi's, see
//! [`objects`]), unit-tested without a cluster; the rules linter behind `analyze` is
//! `remora_webhook::rules_lint`, shared with the validating webhook. Exit codes: 0 done, 1
//! `analyze` found errors, 2 the command could not run (bad arguments, API unreachable, object
//! not found).

pub mod authz;
pub mod check;
pub mod describe;
pub mod dump;
pub mod gateway_view;
pub mod gateways;
pub mod kube;
pub mod objects;
pub mod proxyconfig;
pub mod rules;
pub mod secret;
pub mod selector;
pub mod status;
pub mod table;
pub mod target;
pub mod text;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use clap::{Parser, Subcommand, ValueEnum};
use futures::StreamExt;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, Service};
use serde_json::Value;

use self::check::{PodCheck, ServiceRef};
use self::kube::{paths, Cluster, ConnectOptions};
use self::objects::Workload;
use self::selector::Selector;
use remora_webhook::config::Config;
use remora_webhook::rules_lint;
use remora_webhook::workload::{pod_from_template, template_pointer};

pub use remora_webhook::rules_lint::RULES_LABEL;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Tables and lines (`table` is the same).
    #[value(alias = "table")]
    Text,
    Json,
    Yaml,
}

#[derive(Parser, Debug)]
#[command(
    name = "remora",
    version,
    about = "remora's user CLI: why a pod is or is not injected, whether proxies run the current rules, what one proxy has loaded, and a linter for the rules in the cluster; offline, the injected YAML of a file"
)]
pub struct Args {
    /// Path of the kubeconfig file (default: KUBECONFIG, then ~/.kube/config).
    #[arg(long, global = true)]
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig context to use.
    #[arg(long, global = true)]
    pub context: Option<String>,
    /// The API server URL. Alone (without --kubeconfig/--context) no credentials are sent.
    #[arg(long, global = true)]
    pub server: Option<String>,
    /// PEM file of the CA for the API server's certificate.
    #[arg(long, global = true)]
    pub certificate_authority: Option<PathBuf>,
    /// Do not verify the API server's certificate (insecure).
    #[arg(long, global = true)]
    pub insecure_skip_tls_verify: bool,
    /// Namespace (default: the kubeconfig context's namespace, else "default").
    #[arg(short = 'n', long, global = true)]
    pub namespace: Option<String>,
    /// Output format.
    #[arg(short = 'o', long, global = true, value_enum, default_value = "text")]
    pub output: Output,
    /// remora's own namespace (injector ConfigMap, webhook Service).
    #[arg(long, global = true, default_value = "remora-system")]
    pub mesh_namespace: String,
    /// The mesh's root namespace (mesh-wide Sidecar and security policies; the rules
    /// controller's and the proxies' `--root-namespace`), for `analyze`, `describe` and `rules
    /// render`/`import`. `proxy-config` shows the one the proxy reports.
    #[arg(long, global = true, env = "REMORA_ROOT_NAMESPACE",
          default_value = remora_model::kinds::DEFAULT_ROOT_NAMESPACE,
          value_parser = remora_model::kinds::parse_root_namespace)]
    pub root_namespace: String,
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Which webhooks apply to a pod or workload, and why it will or will not be injected.
    ///
    /// TARGET: `pod NAME`, `pod/NAME`, `NAME` (a pod), or `deploy/NAME`, `sts/NAME`, `ds/NAME`,
    /// `rs/NAME`, `job/NAME`, `cronjob/NAME` (long kind names work too), each with `.NAMESPACE`
    /// or `-n`; or `-l SELECTOR` for pods by label. With `-f FILE` no cluster is asked: the Pods and workloads of the file are
    /// checked against the injector config (`--config`) and namespace labels
    /// (`--namespace-labels`) given.
    CheckInject {
        target: Vec<String>,
        /// Pods matching this label selector.
        #[arg(short = 'l', long)]
        selector: Option<String>,
        /// Offline: check the Pods and workloads of this file (`-` for stdin) instead of the
        /// cluster's.
        #[arg(short = 'f', long = "filename", conflicts_with_all = ["target", "selector"])]
        file: Option<String>,
        /// With -f: labels of the namespace, `k=v,k2=v2` (the webhook's namespaceSelector looks
        /// at them).
        #[arg(long, requires = "file")]
        namespace_labels: Option<String>,
        /// With -f: injector config YAML (built-in defaults when not given).
        #[arg(long, requires = "file")]
        config: Option<PathBuf>,
        /// With -f: an installed revision (repeat for several; default: the config's, else
        /// default): their webhook entries' selectors decide which injector is called.
        #[arg(long = "revision", requires = "file")]
        revisions: Vec<String>,
        /// With -f: an installed revision tag, `TAG=REVISION` (repeat for several; as
        /// `remora-webhook manifest --tag TAG --revision REVISION` installs it): a namespace or
        /// pod labelled `istio.io/rev=TAG` is injected by REVISION. Against the cluster, the
        /// tags' configurations are read like any other.
        #[arg(long = "tag", requires = "file")]
        tags: Vec<String>,
        /// The default revision's injector ConfigMap in the mesh namespace (key config.yaml);
        /// revision R's is NAME-R.
        #[arg(long, default_value = "remora-injector")]
        injector_config: String,
        /// The default revision's webhook Service in the mesh namespace; revision R's is NAME-R.
        #[arg(long, default_value = "remora-webhook")]
        webhook_service: String,
    },
    /// Print the injected YAML of Pods and workloads (no cluster needed). `-n` is the namespace
    /// of objects that name none (default "default").
    Inject {
        /// Input file, `-` for stdin.
        #[arg(short = 'f', long = "filename", default_value = "-")]
        file: String,
        /// Injector config YAML (built-in defaults when not given).
        #[arg(long)]
        config: Option<PathBuf>,
        /// An installed revision (repeat for several; default: the config's, else default).
        #[arg(long = "revision")]
        revisions: Vec<String>,
        /// Labels of the namespace, `k=v,k2=v2`: the webhook entries' selectors pick the
        /// revision, and pods no entry selects are left unchanged (not given: the first revision
        /// is assumed to be called).
        #[arg(long)]
        namespace_labels: Option<String>,
    },
    /// Per meshed pod: the proxy's rule generation and hash against its rules ConfigMap.
    ProxyStatus {
        /// All namespaces.
        #[arg(short = 'A', long)]
        all_namespaces: bool,
        /// The proxy's admin port (/config_dump), reached through a port-forward
        /// (pods/portforward).
        #[arg(long, default_value_t = 15020)]
        admin_port: u16,
        /// Seconds to wait for each proxy.
        #[arg(long, default_value_t = 5)]
        timeout: u64,
    },
    /// What one pod's proxy has loaded: routes, clusters, endpoints, listeners, its workload
    /// certificate (`secret`) (from its /config_dump, through a port-forward to its admin port,
    /// or --admin, or --file).
    ///
    /// POD is `NAME` or `NAME.NAMESPACE`, or `KIND/NAME[.NAMESPACE]` (`deploy/reviews-v1`: the
    /// first running meshed pod of the workload).
    ProxyConfig {
        #[arg(value_enum)]
        view: proxyconfig::View,
        /// The pod (`NAME`, `NAME.NAMESPACE`, `pod/NAME`) or a workload (`deploy/NAME`, `sts/`,
        /// `ds/`, `rs/`, `job/`, `rc/`); not with --admin or --file.
        #[arg(required_unless_present_any = ["admin", "file"], conflicts_with_all = ["admin", "file"])]
        pod: Option<String>,
        /// Read the proxy's admin port directly (HOST:PORT, e.g. after
        /// `kubectl port-forward POD 15020`).
        #[arg(long, value_name = "HOST:PORT", conflicts_with = "file")]
        admin: Option<String>,
        /// Read a saved /config_dump (JSON) instead of asking a proxy.
        #[arg(long, value_name = "CONFIG_DUMP_JSON")]
        file: Option<PathBuf>,
        /// Only hosts containing this text (routes, clusters, endpoints).
        #[arg(long)]
        fqdn: Option<String>,
        /// Only this port (routes, clusters, endpoints, listeners).
        #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
        port: Option<u16>,
        /// Only this DestinationRule subset (clusters, endpoints).
        #[arg(long)]
        subset: Option<String>,
        /// Only this VirtualService (NAME or NAMESPACE/NAME) or route name (routes).
        #[arg(long)]
        name: Option<String>,
        /// The proxy's admin port, reached through a port-forward (pods/portforward).
        #[arg(long, default_value_t = 15020, value_parser = clap::value_parser!(u16).range(1..))]
        admin_port: u16,
        /// Seconds to wait for the proxy.
        #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=300))]
        timeout: u64,
        /// The request the authz view decides (with --port).
        #[command(flatten)]
        request: authz::RequestArgs,
    },
    /// The rules ConfigMaps the rules controller writes (`render`: offline, from files).
    Rules {
        #[command(subcommand)]
        cmd: RulesCmd,
    },
    /// Lint the rules ConfigMaps of the cluster against its Services.
    Analyze {
        /// All namespaces.
        #[arg(short = 'A', long)]
        all_namespaces: bool,
        /// The rules ConfigMap name (default: rulesConfigMap of the injector config, else
        /// remora-mesh-rules). ConfigMaps labelled remora.dev/rules=true are analyzed too.
        #[arg(long)]
        config_map: Option<String>,
        #[arg(long, default_value = "cluster.local")]
        cluster_domain: String,
    },
    /// How the mesh treats one pod: its Services and their protocols, the VirtualService routes
    /// and DestinationRule for each, the subsets it is in, its Sidecar and capture annotations.
    ///
    /// TARGET: `pod NAME[.NAMESPACE]`, `NAME[.NAMESPACE]`, `pod/NAME`, or a workload
    /// (`deploy/NAME`, `sts/`, `ds/`, `rs/`, `job/`, `rc/`: its first running meshed pod).
    Describe {
        /// `pod NAME[.NAMESPACE]`, `NAME[.NAMESPACE]`, `KIND/NAME[.NAMESPACE]`.
        target: Vec<String>,
        /// The rules ConfigMap name (default: the one the pod mounts, else rulesConfigMap of
        /// the injector config, else remora-mesh-rules).
        #[arg(long)]
        config_map: Option<String>,
        #[arg(long, default_value = "cluster.local")]
        cluster_domain: String,
        /// A gateway pod's admin port (its servers' certificates, from its /config_dump),
        /// reached through a port-forward (pods/portforward).
        #[arg(long, default_value_t = 15020, value_parser = clap::value_parser!(u16).range(1..))]
        admin_port: u16,
        /// Seconds to wait for a gateway pod's proxy.
        #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=300))]
        timeout: u64,
    },
}

#[derive(Subcommand, Debug)]
pub enum RulesCmd {
    /// Print the `remora-mesh-rules` ConfigMap the rules controller would write for namespace
    /// `-n` from the Istio objects in files (no cluster needed): the objects visible there by
    /// Istio's rules (exportTo, the root namespace, Sidecar egress hosts), each with a comment
    /// saying why; objects left out are listed on stderr with the reason. Objects naming no
    /// namespace are in `-n`'s.
    Render {
        /// Files or directories (their *.yaml, *.yml, *.json), `-` for stdin; repeatable.
        #[arg(short = 'f', long = "filename", required = true)]
        files: Vec<String>,
        #[arg(long, default_value = "cluster.local")]
        cluster_domain: String,
        /// Render what a gateway running in `-n` sees (the controller's view of a namespace
        /// labelled `remora.dev/gateway=enabled`): every namespace's Gateways, what is exported
        /// there, no Sidecar.
        #[arg(long)]
        gateway: bool,
    },
    /// Print, as a ConfigMap to keep by hand, what the Istio objects in the cluster give
    /// namespace `-n` (the same selection `render` and the rules controller make). The
    /// ConfigMap carries no controller label, so the rules controller leaves it alone once it is
    /// applied. Objects left out are listed on stderr.
    Import {
        /// The ConfigMap's name.
        #[arg(long, default_value = "remora-mesh-rules")]
        name: String,
        #[arg(long, default_value = "cluster.local")]
        cluster_domain: String,
        /// Import what a gateway running in `-n` sees (as `render --gateway`).
        #[arg(long)]
        gateway: bool,
    },
}

/// The process entry: parse, run, print errors as one line, map to exit codes.
pub fn main() -> ExitCode {
    let args = Args::parse();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("remora: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match rt.block_on(run(args)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("remora: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn print_json(v: &impl serde::Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

fn print_yaml(v: &impl serde::Serialize) -> anyhow::Result<()> {
    print!("{}", serde_yaml_ng::to_string(v)?);
    Ok(())
}

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    // inject and check-inject -f: offline, the webhook's own code on a file (no kubeconfig).
    let offline_ns = args.namespace.as_deref().unwrap_or("default");
    match &args.cmd {
        Cmd::Inject {
            file,
            config,
            revisions,
            namespace_labels,
        } => {
            if args.output == Output::Json {
                bail!("-o json: inject prints YAML");
            }
            return remora_webhook::cli::inject_command(
                file,
                config.as_deref(),
                offline_ns,
                revisions,
                namespace_labels.as_deref(),
            );
        }
        Cmd::CheckInject {
            file: Some(file),
            namespace_labels,
            config,
            revisions,
            tags,
            ..
        } => {
            if args.output != Output::Text {
                bail!("-o: check-inject -f prints text only");
            }
            return remora_webhook::cli::check_inject_command(
                file,
                namespace_labels.as_deref(),
                config.as_deref(),
                offline_ns,
                revisions,
                tags,
            );
        }
        Cmd::Rules {
            cmd:
                RulesCmd::Render {
                    files,
                    cluster_domain,
                    gateway,
                },
        } => {
            if args.output != Output::Yaml && args.output != Output::Text {
                bail!("-o: rules render prints YAML");
            }
            print!(
                "{}",
                rules::render_command(
                    files,
                    args.namespace.as_deref(),
                    &render_settings(cluster_domain, &args.root_namespace),
                    *gateway
                )?
            );
            return Ok(ExitCode::SUCCESS);
        }
        _ => {}
    }
    // proxy-config: flags are checked before anything is asked; with --admin or --file it
    // needs no cluster (and no kubeconfig).
    if let Cmd::ProxyConfig {
        view,
        pod,
        admin,
        file,
        fqdn,
        port,
        subset,
        name,
        timeout,
        request,
        ..
    } = &args.cmd
    {
        let filters = proxyconfig::Filters {
            fqdn: fqdn.clone(),
            port: *port,
            subset: subset.clone(),
            name: name.clone(),
            request: authz_request(request, *view, *port)?,
        };
        filters.check(*view).map_err(|e| anyhow!(e))?;
        if let Some(p) = pod {
            target::parse(
                std::slice::from_ref(p),
                args.namespace.as_deref(),
                "pod",
                target::Kinds::Pods,
            )
            .map_err(|e| anyhow!(e))?;
        } else {
            let (dump, target) = match (admin, file) {
                (Some(a), _) => {
                    let url = proxyconfig::admin_url(a).map_err(|e| anyhow!(e))?;
                    // A plain connect first: its error says "connection refused" where the HTTP
                    // client's says only "client error (Connect)".
                    match tokio::time::timeout(
                        Duration::from_secs(*timeout),
                        tokio::net::TcpStream::connect(a.as_str()),
                    )
                    .await
                    {
                        Err(_) => bail!("--admin {a}: cannot connect within {timeout}s"),
                        Ok(Err(e)) => bail!("--admin {a}: cannot connect: {e}"),
                        Ok(Ok(_)) => {}
                    }
                    let direct = self::kube::connect(&ConnectOptions {
                        server: Some(url),
                        ..Default::default()
                    })
                    .await?;
                    let dump = direct
                        .config_dump_at("/config_dump", Duration::from_secs(*timeout))
                        .await
                        .map_err(|e| anyhow!("--admin {a}: cannot read /config_dump: {e}"))?;
                    (dump::read(&dump, a, &format!("proxy at {a}"))?, a.clone())
                }
                (None, Some(f)) => {
                    let text = std::fs::read_to_string(f)
                        .map_err(|e| anyhow!("--file {}: cannot read: {e}", f.display()))?;
                    let dump: Value = serde_json::from_str(&text)
                        .map_err(|e| anyhow!("--file {}: not JSON: {e}", f.display()))?;
                    let target = f.display().to_string();
                    let who = format!("the proxy that wrote {target}");
                    (dump::read(&dump, &target, &who)?, target)
                }
                (None, None) => {
                    bail!("pod: missing: name a pod, or give --admin HOST:PORT or --file")
                }
            };
            return print_proxy_config(&dump, &target, *view, &filters, args.output);
        }
    }
    let cluster = self::kube::connect(&ConnectOptions {
        kubeconfig: args.kubeconfig.clone(),
        context: args.context.clone(),
        server: args.server.clone(),
        certificate_authority: args.certificate_authority.clone(),
        insecure_skip_tls_verify: args.insecure_skip_tls_verify,
    })
    .await?;
    let ns = args
        .namespace
        .clone()
        .unwrap_or_else(|| cluster.default_namespace.clone());
    match &args.cmd {
        Cmd::Inject { .. } => unreachable!("inject runs offline, above"),
        Cmd::Rules {
            cmd: RulesCmd::Render { .. },
        } => bail!("rules render runs offline and is answered before a cluster is asked"),
        Cmd::Rules {
            cmd:
                RulesCmd::Import {
                    name,
                    cluster_domain,
                    gateway,
                },
        } => {
            if args.output != Output::Yaml && args.output != Output::Text {
                bail!("-o: rules import prints YAML");
            }
            let objects = list_istio_objects(&cluster, None).await?;
            let settings = render_settings(cluster_domain, &args.root_namespace);
            let view = if *gateway {
                remora_model::compile::View::Gateway
            } else {
                remora_model::compile::View::Sidecars
            };
            let (text, notes) = rules::import(&objects, &ns, name, &settings, view)?;
            for n in notes {
                eprintln!("{n}");
            }
            print!("{text}");
            Ok(ExitCode::SUCCESS)
        }
        Cmd::CheckInject {
            target,
            selector,
            injector_config,
            webhook_service,
            ..
        } => {
            let parsed = match (selector.as_deref(), target.is_empty()) {
                (Some(_), false) => bail!("give either a target or -l SELECTOR, not both"),
                (Some(s), true) if s.trim().is_empty() => {
                    bail!("-l: invalid value \"\": empty selector")
                }
                (Some(_), true) => None,
                (None, true) => bail!("target: missing: name a pod or workload (pod NAME, deploy/NAME, ...) or give -l SELECTOR"),
                (None, false) => Some(
                    target::parse(
                        target,
                        args.namespace.as_deref(),
                        "target",
                        target::Kinds::Templates,
                    )
                    .map_err(|e| anyhow!(e))?,
                ),
            };
            // NAME.NAMESPACE names the namespace.
            let ns = parsed
                .as_ref()
                .and_then(|t| t.namespace.clone())
                .unwrap_or(ns);
            let checks = check_inject(
                &cluster,
                &ns,
                &args.mesh_namespace,
                parsed,
                selector.as_deref(),
                injector_config,
                webhook_service,
            )
            .await?;
            match args.output {
                Output::Json => print_json(&checks)?,
                Output::Yaml => print_yaml(&checks)?,
                Output::Text => {
                    for c in &checks {
                        print!("{}", check::render_text(c));
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::ProxyStatus {
            all_namespaces,
            admin_port,
            timeout,
        } => {
            let scope = (!all_namespaces).then_some(ns.as_str());
            let rows = proxy_status(
                &cluster,
                scope,
                &args.mesh_namespace,
                *admin_port,
                Duration::from_secs((*timeout).max(1)),
            )
            .await?;
            match args.output {
                Output::Json => print_json(&rows)?,
                Output::Yaml => print_yaml(&rows)?,
                Output::Text => print!("{}", status::render_text(&rows)),
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::ProxyConfig {
            view,
            pod,
            fqdn,
            port,
            subset,
            name,
            admin_port,
            timeout,
            request,
            ..
        } => {
            let filters = proxyconfig::Filters {
                fqdn: fqdn.clone(),
                port: *port,
                subset: subset.clone(),
                name: name.clone(),
                request: authz_request(request, *view, *port)?,
            };
            filters.check(*view).map_err(|e| anyhow!(e))?;
            let target = target::parse(
                std::slice::from_ref(&pod.clone().unwrap_or_default()),
                args.namespace.as_deref(),
                "pod",
                target::Kinds::Pods,
            )
            .map_err(|e| anyhow!(e))?;
            let pns = target.namespace.clone().unwrap_or_else(|| ns.clone());
            let pod = match target.kind {
                "Pod" => target.name.clone(),
                kind => meshed_workload_pod(&cluster, &pns, kind, &target.name).await?,
            };
            let dump = pod_config_dump(
                &cluster,
                &pns,
                &pod,
                *admin_port,
                Duration::from_secs(*timeout),
            )
            .await?;
            print_proxy_config(&dump, &format!("{pns}/{pod}"), *view, &filters, args.output)
        }
        Cmd::Analyze {
            all_namespaces,
            config_map,
            cluster_domain,
        } => {
            let scope = (!all_namespaces).then_some(ns.as_str());
            let a = analyze(
                &cluster,
                scope,
                &args.mesh_namespace,
                config_map.as_deref(),
                &render_settings(cluster_domain, &args.root_namespace),
            )
            .await?;
            match args.output {
                Output::Json => print_json(&a)?,
                Output::Yaml => print_yaml(&a)?,
                Output::Text => print!("{}", rules_lint::render_text(&a)),
            }
            Ok(if a.errors() > 0 {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            })
        }
        Cmd::Describe {
            target,
            config_map,
            cluster_domain,
            admin_port,
            timeout,
        } => {
            let target = target::parse(
                target,
                args.namespace.as_deref(),
                "target",
                target::Kinds::Pods,
            )
            .map_err(|e| anyhow!(e))?;
            let d = describe::gather(
                &cluster,
                &target,
                &ns,
                &args.mesh_namespace,
                config_map.as_deref(),
                cluster_domain,
                &args.root_namespace,
                describe::AdminAccess {
                    port: *admin_port,
                    timeout: Duration::from_secs(*timeout),
                },
            )
            .await?;
            match args.output {
                Output::Json => print_json(&d)?,
                Output::Yaml => print_yaml(&d)?,
                Output::Text => print!("{}", describe::render_text(&d)),
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn authz_request(
    r: &authz::RequestArgs,
    view: proxyconfig::View,
    port: Option<u16>,
) -> anyhow::Result<Option<authz::CheckRequest>> {
    let name = format!("{view:?}").to_ascii_lowercase();
    authz::check_request(r, view == proxyconfig::View::Authz, &name, port).map_err(|e| anyhow!(e))
}

fn print_proxy_config(
    dump: &dump::ConfigDump,
    target: &str,
    view: proxyconfig::View,
    filters: &proxyconfig::Filters,
    output: Output,
) -> anyhow::Result<ExitCode> {
    let c = proxyconfig::build(dump, target, view, filters).map_err(|e| anyhow!(e))?;
    match output {
        Output::Json => print_json(&c)?,
        Output::Yaml => print_yaml(&c)?,
        Output::Text => print!("{}", proxyconfig::render_text(&c, view)),
    }
    Ok(ExitCode::SUCCESS)
}

/// The pods a workload's selector matches, best first ([`target::rank_pods`]: the first stands
/// for the workload), and that selector (as a query) for messages.
pub(crate) async fn workload_pods(
    cluster: &Cluster,
    ns: &str,
    kind: &str,
    name: &str,
) -> anyhow::Result<(Vec<Pod>, String)> {
    let (_, w) = read_workload(cluster, ns, kind, name, &format!("{kind} {ns}/{name}")).await?;
    let sel = Selector::parse(w.selector().as_ref(), "spec.selector")
        .map_err(|e| anyhow!("{kind} {ns}/{name}: {e}"))?;
    if sel.is_empty() {
        bail!("{kind} {ns}/{name} has no pod selector: name one of its pods");
    }
    let mut pods = cluster
        .list_as::<Pod>(&paths::pods(Some(ns), Some(&sel.to_query())))
        .await
        .with_context(|| format!("listing the pods of {kind} {ns}/{name}"))?;
    target::rank_pods(&mut pods);
    Ok((pods, sel.to_query()))
}

/// A workload by kind, as the API server sent it (its pod template goes to the injector, which
/// sees objects with their unknown fields, see `check`) and typed; `who` names it in errors.
async fn read_workload(
    cluster: &Cluster,
    ns: &str,
    kind: &str,
    name: &str,
    who: &str,
) -> anyhow::Result<(Value, Workload)> {
    let path =
        paths::workload(kind, ns, name).ok_or_else(|| anyhow!("kind {kind} is not supported"))?;
    let raw = cluster
        .get_opt(&path)
        .await
        .with_context(|| format!("reading {who}"))?
        .ok_or_else(|| anyhow!("{kind} {name:?} not found in namespace {ns}"))?;
    let typed = Workload::from_value(kind, raw.clone())
        .map_err(|e| anyhow!("reading {who}: {path}: {e}"))?;
    Ok((raw, typed))
}

/// For `deploy/NAME` and the like in `proxy-config`: the first (by name) running meshed pod of
/// the workload, said on stderr.
async fn meshed_workload_pod(
    cluster: &Cluster,
    ns: &str,
    kind: &str,
    name: &str,
) -> anyhow::Result<String> {
    let (pods, sel) = workload_pods(cluster, ns, kind, name).await?;
    let meshed = pods
        .iter()
        .take_while(|p| target::running_meshed(p))
        .count();
    let Some(first) = pods
        .first()
        .filter(|p| target::running_meshed(p))
        .and_then(|p| objects::name(&p.metadata))
    else {
        bail!("{kind} {ns}/{name} has no running meshed pod ({} pods match its selector {sel}; remora check-inject {}/{name} -n {ns} says whether they would be injected)", pods.len(), kind.to_ascii_lowercase());
    };
    eprintln!(
        "remora: {kind} {ns}/{name}: showing pod {first} (the first of {meshed} running meshed pods)"
    );
    Ok(first.to_string())
}

/// A meshed, running pod's `/config_dump` through a port-forward to its admin port (the API
/// server's pods/portforward subresource); each way it can fail is one line saying what to do.
async fn pod_config_dump(
    cluster: &Cluster,
    ns: &str,
    name: &str,
    port: u16,
    timeout: Duration,
) -> anyhow::Result<dump::ConfigDump> {
    let pod = cluster
        .get_opt_as::<Pod>(&paths::pod(ns, name))
        .await
        .with_context(|| format!("reading pod {ns}/{name}"))?
        .ok_or_else(|| anyhow!("pod {name:?} not found in namespace {ns}"))?;
    if !check::runs_proxy(&pod) {
        bail!(
            "pod {ns}/{name} is not meshed: it has no remora-proxy container (inject it: label namespace {ns} istio-injection=enabled and re-create the pod; remora check-inject pod {name} -n {ns} says why it was not injected)"
        );
    }
    let phase = objects::phase(&pod).unwrap_or("Unknown");
    if phase != "Running" {
        bail!("pod {ns}/{name} is {phase}, not Running: its proxy is not running (kubectl -n {ns} describe pod {name})");
    }
    let dump = cluster
        .pod_config_dump(ns, name, port, timeout)
        .await
        .map_err(|e| {
            anyhow!("proxy of pod {ns}/{name} unreachable: cannot read its /config_dump through a port-forward to its admin port {port}: {e}")
        })?;
    Ok(dump::read(
        &dump,
        &format!("{ns}/{name}"),
        &format!("proxy {ns}/{name}"),
    )?)
}

/// The injector config the webhook runs with (its ConfigMap), and a note on where it came from.
async fn injector_config(cluster: &Cluster, mesh_ns: &str, name: &str) -> (Config, String) {
    match cluster
        .get_opt_as::<ConfigMap>(&paths::config_map(mesh_ns, name))
        .await
    {
        Ok(Some(cm)) => match cm.data.as_ref().and_then(|d| d.get("config.yaml")) {
            Some(text) => match Config::from_yaml(text) {
                Ok(c) => (c, format!("injector config from ConfigMap {mesh_ns}/{name}")),
                Err(e) => (
                    Config::default(),
                    format!("ConfigMap {mesh_ns}/{name} config.yaml is invalid ({e:#}); evaluated with the built-in defaults"),
                ),
            },
            None => (
                Config::default(),
                format!("ConfigMap {mesh_ns}/{name} has no config.yaml key; the webhook uses its built-in defaults"),
            ),
        },
        Ok(None) => (
            Config::default(),
            format!("no ConfigMap {mesh_ns}/{name}; the webhook uses its built-in defaults"),
        ),
        Err(e) => (
            Config::default(),
            format!("cannot read the injector config ({e}); evaluated with the built-in defaults"),
        ),
    }
}

/// The `kubectl` command that re-creates a pod's pods (for "restart it" hints).
fn restart_hint(pod: &Pod, ns: &str) -> String {
    let owner = pod
        .metadata
        .owner_references
        .as_ref()
        .and_then(|o| o.iter().find(|r| r.controller == Some(true)).or(o.first()));
    let name = objects::name(&pod.metadata).unwrap_or("?");
    match owner.map(|o| (o.kind.as_str(), o.name.as_str())) {
        Some(("ReplicaSet", rs)) => {
            let hash = pod
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get("pod-template-hash"));
            match hash.and_then(|h| rs.strip_suffix(&format!("-{h}"))) {
                Some(deploy) => {
                    format!("re-create it: kubectl -n {ns} rollout restart deployment/{deploy}")
                }
                None => format!("re-create it: kubectl -n {ns} delete pod {name}"),
            }
        }
        Some(("StatefulSet", o)) => {
            format!("re-create it: kubectl -n {ns} rollout restart statefulset/{o}")
        }
        Some(("DaemonSet", o)) => {
            format!("re-create it: kubectl -n {ns} rollout restart daemonset/{o}")
        }
        Some(_) => format!(
            "re-create it: kubectl -n {ns} delete pod {name} (its controller makes a new one)"
        ),
        None => format!("re-create it: delete pod {name} and create it again"),
    }
}

fn workload_hint(kind: &str, name: &str, ns: &str) -> String {
    match kind {
        "Deployment" | "StatefulSet" | "DaemonSet" => format!(
            "re-create it: kubectl -n {ns} rollout restart {}/{name}",
            kind.to_ascii_lowercase()
        ),
        _ => {
            format!("re-create it: kubectl -n {ns} delete pod POD (its controller makes a new one)")
        }
    }
}

/// `check-inject TARGET` (`target`) or `-l SELECTOR` (`None`): the pods' or pod template's
/// webhook verdicts.
async fn check_inject(
    cluster: &Cluster,
    ns: &str,
    mesh_ns: &str,
    parsed: Option<target::Target>,
    label_selector: Option<&str>,
    injector_cm: &str,
    webhook_service: &str,
) -> anyhow::Result<Vec<PodCheck>> {
    let remora = ServiceRef {
        namespace: mesh_ns.to_string(),
        name: webhook_service.to_string(),
    };
    let mwcs = cluster
        .list_as::<MutatingWebhookConfiguration>(paths::MUTATING_WEBHOOKS)
        .await
        .context("listing MutatingWebhookConfigurations")?;
    // Each revision's injector reads its own ConfigMap (`<name>-<revision>` but for default).
    let mut configs = BTreeMap::new();
    let mut notes = BTreeMap::new();
    for rev in check::remora_revisions(&mwcs, &remora) {
        let name = remora_webhook::selectors::revision_name(injector_cm, &rev);
        let (cfg, note) = injector_config(cluster, mesh_ns, &name).await;
        let (cfg, note) = match cfg.with_revision(&rev) {
            Ok(c) => (c, note),
            Err(e) => (
                Config::default().with_revision(&rev)?,
                format!("ConfigMap {mesh_ns}/{name}: {e:#}; the injector refuses it (evaluated with the built-in defaults)"),
            ),
        };
        configs.insert(rev.clone(), cfg);
        notes.insert(rev, note);
    }
    let ns_obj = cluster
        .get_opt_as::<Namespace>(&paths::namespace(ns))
        .await
        .context("reading the namespace")?
        .ok_or_else(|| anyhow!("namespace {ns:?} not found"))?;
    let ns_labels = check::namespace_labels(&ns_obj, ns);

    // `pod` is raw: the object the injector is asked about (see `check`).
    let finish = |object: String, pod: &Value, running: Vec<(Pod, String)>| -> PodCheck {
        let pod = check::as_created(pod);
        let mut webhooks = check::evaluate_webhooks(&pod, ns, &ns_labels, &mwcs, &configs, &remora);
        // Where the injector's config came from, for the entries that call it.
        for w in webhooks
            .iter_mut()
            .filter(|w| w.verdict != check::Verdict::NotCalled)
        {
            if let Some(note) = w.revision.as_ref().and_then(|r| notes.get(r)) {
                w.notes.push(note.clone());
            }
        }
        let (verdict, summary) = check::overall(&webhooks, &remora);
        let running = running
            .iter()
            .map(|(p, hint)| check::running_note(p, verdict, hint))
            .collect();
        PodCheck {
            object,
            namespace: ns.to_string(),
            verdict,
            summary,
            webhooks,
            running,
        }
    };

    let mut out = Vec::new();
    match parsed {
        None => {
            let sel = label_selector.unwrap_or("");
            let path = paths::pods(Some(ns), Some(sel));
            let raws = cluster.list(&path).await.context("listing pods")?;
            if raws.is_empty() {
                bail!("no pods in namespace {ns} match -l {sel:?}");
            }
            for (i, raw) in raws.iter().enumerate() {
                let p: Pod =
                    self::kube::typed(raw.clone(), &path, Some(i)).context("listing pods")?;
                let name = objects::name(&p.metadata).unwrap_or("?");
                let hint = restart_hint(&p, ns);
                out.push(finish(format!("Pod/{name}"), raw, vec![(p.clone(), hint)]));
            }
        }
        Some(target::Target {
            kind: "Pod", name, ..
        }) => {
            let path = paths::pod(ns, &name);
            let raw = cluster
                .get_opt(&path)
                .await
                .context("reading the pod")?
                .ok_or_else(|| anyhow!("pod {name:?} not found in namespace {ns}"))?;
            let p: Pod = self::kube::typed(raw.clone(), &path, None).context("reading the pod")?;
            let hint = restart_hint(&p, ns);
            out.push(finish(format!("Pod/{name}"), &raw, vec![(p, hint)]));
        }
        Some(target::Target { kind, name, .. }) => {
            let (raw, w) =
                read_workload(cluster, ns, kind, &name, &format!("{kind} {name}")).await?;
            // The pod template stays raw: the pod built from it goes to the injector.
            let ptr = template_pointer(kind).unwrap_or("/spec/template");
            let template = raw
                .pointer(ptr)
                .ok_or_else(|| anyhow!("{kind} {name} has no pod template at {ptr}"))?;
            let pod = pod_from_template(&raw, template, ns);
            // Its running pods, by the workload's selector (CronJobs have none).
            let mut running = Vec::new();
            if let Some(sel) = w.selector() {
                let sel = Selector::parse(Some(&sel), "spec.selector")
                    .map_err(|e| anyhow!("{kind} {name}: {e}"))?;
                if !sel.is_empty() {
                    let pods = cluster
                        .list_as::<Pod>(&paths::pods(Some(ns), Some(&sel.to_query())))
                        .await
                        .context("listing the workload's pods")?;
                    let hint = workload_hint(kind, &name, ns);
                    running = pods.into_iter().map(|p| (p, hint.clone())).collect();
                }
            }
            out.push(finish(format!("{kind}/{name}"), &pod, running));
        }
    }
    Ok(out)
}

async fn proxy_status(
    cluster: &Cluster,
    ns: Option<&str>,
    mesh_ns: &str,
    port: u16,
    timeout: Duration,
) -> anyhow::Result<Vec<status::ProxyRow>> {
    let pods = cluster
        .list_as::<Pod>(&paths::pods(ns, None))
        .await
        .context("listing pods")?;
    let meshed: Vec<Pod> = pods.into_iter().filter(check::has_proxy).collect();
    let (cfg, _) = injector_config(cluster, mesh_ns, "remora-injector").await;
    // The ConfigMap of each (namespace, name), read once.
    let mut hashes: BTreeMap<(String, String), Result<String, String>> = BTreeMap::new();
    for p in &meshed {
        let pns = objects::namespace(&p.metadata)
            .unwrap_or("default")
            .to_string();
        let name = status::rules_config_map_name(p, &cfg.rules_config_map);
        let key = (pns, name);
        if hashes.contains_key(&key) {
            continue;
        }
        let h = match cluster
            .get_opt_as::<ConfigMap>(&paths::config_map(&key.0, &key.1))
            .await
        {
            Ok(cm) => status::config_map_hash(cm.as_ref()),
            Err(e) => Err(e.to_string()),
        };
        hashes.insert(key, h);
    }
    let dumps: Vec<(usize, Result<dump::ConfigDump, dump::DumpError>)> =
        futures::stream::iter(meshed.iter().enumerate())
            .map(|(i, p)| async move {
                let pns = objects::namespace(&p.metadata).unwrap_or("default");
                let name = objects::name(&p.metadata).unwrap_or("");
                let running = objects::phase(p) == Some("Running");
                if !running {
                    return (
                        i,
                        Err(dump::DumpError::Fetch("pod not running".to_string())),
                    );
                }
                let read = match cluster.pod_config_dump(pns, name, port, timeout).await {
                    Ok(v) => {
                        dump::read(&v, &format!("{pns}/{name}"), &format!("proxy {pns}/{name}"))
                    }
                    Err(e) => Err(dump::DumpError::Fetch(e)),
                };
                (i, read)
            })
            .buffer_unordered(8)
            .collect()
            .await;
    let mut by_index: BTreeMap<usize, Result<dump::ConfigDump, dump::DumpError>> =
        dumps.into_iter().collect();
    let mut rows = Vec::new();
    for (i, p) in meshed.iter().enumerate() {
        let pns = objects::namespace(&p.metadata)
            .unwrap_or("default")
            .to_string();
        let name = status::rules_config_map_name(p, &cfg.rules_config_map);
        let cm_ref = format!("{pns}/{name}");
        let hash = hashes
            .get(&(pns, name))
            .cloned()
            .unwrap_or_else(|| Err("not read".to_string()));
        let dump = by_index
            .remove(&i)
            .unwrap_or_else(|| Err(dump::DumpError::Fetch("not fetched".to_string())));
        rows.push(status::row(
            p,
            dump.as_ref(),
            &cm_ref,
            hash.as_deref().map_err(String::as_str),
        ));
    }
    rows.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    Ok(rows)
}

/// The rules controller's render settings for a cluster domain and root namespace.
fn render_settings(cluster_domain: &str, root_namespace: &str) -> remora_model::compile::Settings {
    remora_model::compile::Settings {
        cluster_domain: cluster_domain.to_string(),
        root_namespace: root_namespace.to_string(),
        ..remora_model::compile::Settings::default()
    }
}

async fn analyze(
    cluster: &Cluster,
    ns: Option<&str>,
    mesh_ns: &str,
    config_map: Option<&str>,
    settings: &remora_model::compile::Settings,
) -> anyhow::Result<rules_lint::Analysis> {
    let (_, cms) = rules_config_maps(cluster, ns, mesh_ns, config_map).await?;
    // Rules name hosts in any namespace: all Services, else (RBAC) the namespace's own.
    let services = match cluster.list_as::<Service>(&paths::services(None)).await {
        Ok(s) => s,
        Err(e) if e.code() == Some(403) && ns.is_some() => {
            eprintln!("remora: cannot list Services in all namespaces ({e}); checking hosts against namespace {} only", ns.unwrap_or_default());
            cluster
                .list_as::<Service>(&paths::services(ns))
                .await
                .context("listing Services")?
        }
        Err(e) => return Err(anyhow!(e).context("listing Services")),
    };
    // The linter is shared with the validating webhook, which reads objects as raw JSON.
    let raw = |v: Result<Vec<Value>, serde_json::Error>, what: &str| {
        v.map_err(|e| anyhow!("cannot serialize the {what}: {e}"))
    };
    let cms = raw(
        cms.iter().map(serde_json::to_value).collect(),
        "rules ConfigMaps",
    )?;
    let services = raw(
        services.iter().map(serde_json::to_value).collect(),
        "Services",
    )?;
    let mut a = rules_lint::analyze(
        &cms,
        &services,
        &settings.cluster_domain,
        &settings.root_namespace,
    );
    a.messages
        .extend(controller_findings(cluster, ns, &cms, settings).await?);
    Ok(a)
}

/// The rules controller's findings for `analyze` (see `rules::findings`): the Istio objects of
/// every kind it watches (a kind whose CRD is not installed has none), the namespaces' labels,
/// the rules ConfigMaps.
async fn controller_findings(
    cluster: &Cluster,
    ns: Option<&str>,
    cms: &[Value],
    settings: &remora_model::compile::Settings,
) -> anyhow::Result<Vec<rules_lint::Message>> {
    let objects = list_istio_objects(cluster, ns).await?;
    let namespaces: Vec<(String, BTreeMap<String, String>)> =
        match cluster.list_as::<Namespace>("/api/v1/namespaces").await {
            Ok(list) => list
                .into_iter()
                .filter_map(|n| Some((n.metadata.name?, n.metadata.labels.unwrap_or_default())))
                .collect(),
            Err(e) if e.code() == Some(403) && ns.is_some() => {
                let name = ns.unwrap_or_default();
                match cluster
                    .get_opt_as::<Namespace>(&paths::namespace(name))
                    .await
                    .context("reading the namespace")?
                {
                    Some(n) => vec![(name.to_string(), n.metadata.labels.unwrap_or_default())],
                    None => Vec::new(),
                }
            }
            Err(e) => return Err(anyhow!(e).context("listing namespaces")),
        };
    let views: BTreeMap<String, rules::ConfigMapView> = cms
        .iter()
        .filter(|cm| {
            cm.pointer("/metadata/name").and_then(Value::as_str)
                == Some(remora_model::compile::CONFIGMAP)
        })
        .filter_map(|cm| {
            let ns = cm.pointer("/metadata/namespace")?.as_str()?.to_string();
            let labels: Option<BTreeMap<String, String>> = cm
                .pointer("/metadata/labels")
                .and_then(|l| serde_json::from_value(l.clone()).ok());
            let data: BTreeMap<String, String> = cm
                .get("data")
                .and_then(|d| serde_json::from_value(d.clone()).ok())
                .unwrap_or_default();
            Some((
                ns,
                rules::ConfigMapView {
                    managed: remora_model::compile::is_managed(labels.as_ref()),
                    data,
                },
            ))
        })
        .collect();
    let mut out = rules::findings(&objects, &namespaces, &views, ns, settings);
    out.extend(gateways::findings(cluster, ns, &objects, &settings.cluster_domain).await?);
    Ok(out)
}

/// Every object of the kinds the rules controller watches (each at the best version its API
/// group serves; a group whose CRDs are not installed has none), with `apiVersion` and `kind`
/// set; all namespaces, or `ns` when listing all is forbidden.
async fn list_istio_objects(cluster: &Cluster, ns: Option<&str>) -> anyhow::Result<Vec<Value>> {
    let mut objects = Vec::new();
    // The versions each group serves (a group whose CRDs are not installed: none).
    let mut served: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for k in remora_webhook::rules_controller::KINDS {
        if !served.contains_key(k.group) {
            let versions = match cluster.get_opt(&format!("/apis/{}", k.group)).await {
                Ok(Some(g)) => g["versions"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|v| v["version"].as_str().map(str::to_string))
                    .collect(),
                Ok(None) => Vec::new(),
                Err(e) => return Err(anyhow!(e).context(format!("reading API group {}", k.group))),
            };
            served.insert(k.group, versions);
        }
        let Some(v) = k.best_version(served[k.group].iter().map(String::as_str)) else {
            continue;
        };
        let api_version = format!("{}/{v}", k.group);
        let all = format!("/apis/{api_version}/{}", k.plural);
        let listed = match cluster.list(&all).await {
            Err(e) if e.code() == Some(403) && ns.is_some() => {
                let one = format!(
                    "/apis/{api_version}/namespaces/{}/{}",
                    ns.unwrap_or_default(),
                    k.plural
                );
                cluster.list(&one).await
            }
            // The group is served but not this kind (a CRD file from before it was added).
            Err(e) if e.code() == Some(404) => continue,
            other => other,
        };
        let items = listed.map_err(|e| anyhow!(e).context(format!("listing {}", k.plural)))?;
        objects.extend(items.into_iter().map(|mut o| {
            if let Some(m) = o.as_object_mut() {
                m.insert("apiVersion".into(), api_version.clone().into());
                m.insert("kind".into(), k.kind.into());
            }
            o
        }));
    }
    Ok(objects)
}

/// The rules ConfigMaps of namespace `ns` (of every namespace with `None`): the one named
/// `config_map` (default: the injector config's `rulesConfigMap`), then those labelled
/// remora.dev/rules=true. Returns the name looked for and the ConfigMaps found (`analyze`,
/// `describe`).
pub(crate) async fn rules_config_maps(
    cluster: &Cluster,
    ns: Option<&str>,
    mesh_ns: &str,
    config_map: Option<&str>,
) -> anyhow::Result<(String, Vec<ConfigMap>)> {
    let name = match config_map {
        Some(n) => n.to_string(),
        None => {
            injector_config(cluster, mesh_ns, "remora-injector")
                .await
                .0
                .rules_config_map
        }
    };
    let mut cms: Vec<ConfigMap> = Vec::new();
    match ns {
        Some(ns) => {
            if let Some(cm) = cluster
                .get_opt_as::<ConfigMap>(&paths::config_map(ns, &name))
                .await
                .context("reading the rules ConfigMap")?
            {
                cms.push(cm);
            }
        }
        None => {
            let path = format!(
                "{}?fieldSelector={}",
                paths::config_maps(None, None),
                self::kube::encode_query(&format!("metadata.name={name}"))
            );
            cms.extend(
                cluster
                    .list_as::<ConfigMap>(&path)
                    .await
                    .context("listing the rules ConfigMaps")?,
            );
        }
    }
    let labelled = cluster
        .list_as::<ConfigMap>(&paths::config_maps(
            ns,
            Some(&format!("{RULES_LABEL}=true")),
        ))
        .await
        .context("listing ConfigMaps labelled remora.dev/rules=true")?;
    for cm in labelled {
        let key = |c: &ConfigMap| (c.metadata.namespace.clone(), c.metadata.name.clone());
        if !cms.iter().any(|c| key(c) == key(&cm)) {
            cms.push(cm);
        }
    }
    Ok((name, cms))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn restart_hints() {
        let pod = |v: Value| serde_json::from_value::<Pod>(v).unwrap();
        let p = pod(
            json!({"metadata": {"name": "web-7d9-x", "labels": {"pod-template-hash": "7d9"},
                       "ownerReferences": [{"kind": "ReplicaSet", "name": "web-7d9", "controller": true}]}}),
        );
        assert_eq!(
            restart_hint(&p, "shop"),
            "re-create it: kubectl -n shop rollout restart deployment/web"
        );
        let p = pod(
            json!({"metadata": {"name": "db-0", "ownerReferences": [{"kind": "StatefulSet", "name": "db", "controller": true}]}}),
        );
        assert_eq!(
            restart_hint(&p, "shop"),
            "re-create it: kubectl -n shop rollout restart statefulset/db"
        );
        let p = pod(json!({"metadata": {"name": "solo"}}));
        assert!(restart_hint(&p, "shop").contains("delete pod solo"));
    }
}
