//! `remora-webhook`: the admission server (`serve`) and offline injection (`inject`,
//! `check-inject`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use remora_webhook::{cli, config, server};

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
    /// Serve the mutating admission webhook over HTTPS (POST /inject).
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
        /// Longest wait for in-flight reviews on SIGTERM, in seconds.
        #[arg(long, default_value_t = 20)]
        drain_seconds: u64,
    },
    /// Print the injected YAML of Pods and workloads (no cluster needed).
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
    },
    /// Say whether the webhook would inject each Pod or workload, and why.
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
    },
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

fn load_config(path: Option<&PathBuf>) -> anyhow::Result<config::Config> {
    match path {
        None => Ok(config::Config::default()),
        Some(p) => config::Config::from_file(p)?
            .ok_or_else(|| anyhow::anyhow!("--config {}: no such file", p.display())),
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
            drain_seconds,
        } => {
            init_logging(true);
            remora_webhook::tls::install_provider();
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            rt.block_on(async move {
                let cfg = config::ConfigHandle::load(&config)?;
                let running = server::start(server::ServeOptions {
                    listen,
                    cert: tls_cert,
                    key: tls_key,
                    config: cfg,
                    reload_poll: Duration::from_secs(10),
                    drain: Duration::from_secs(drain_seconds),
                })
                .await?;
                shutdown_signal().await;
                running.shutdown().await;
                tracing::info!("stopped");
                Ok::<_, anyhow::Error>(ExitCode::SUCCESS)
            })
        }
        Cmd::Inject {
            file,
            config,
            namespace,
        } => {
            init_logging(false);
            let cfg = load_config(config.as_ref())?;
            let docs = cli::parse_docs(&cli::read_input(&file)?)
                .map_err(|e| anyhow::anyhow!("-f {file}: {e}"))?;
            let (docs, reports) = cli::inject_docs(docs, &namespace, &cfg);
            let mut denied = false;
            for r in &reports {
                match r.decision {
                    "denied" => {
                        denied = true;
                        eprintln!("error: {} denied: {}", r.what, r.reason);
                    }
                    "skipped" => eprintln!("{} skipped: {}", r.what, r.reason),
                    _ => {}
                }
            }
            if denied {
                return Ok(ExitCode::FAILURE);
            }
            print!("{}", cli::to_yaml(&docs)?);
            Ok(ExitCode::SUCCESS)
        }
        Cmd::CheckInject {
            file,
            namespace_labels,
            config,
            namespace,
        } => {
            init_logging(false);
            let cfg = load_config(config.as_ref())?;
            let labels = namespace_labels
                .as_deref()
                .map(cli::parse_labels)
                .transpose()?;
            let docs = cli::parse_docs(&cli::read_input(&file)?)
                .map_err(|e| anyhow::anyhow!("-f {file}: {e}"))?;
            print!(
                "{}",
                cli::check_inject(&docs, &namespace, labels.as_ref(), &cfg)
            );
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
