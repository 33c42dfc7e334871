//! The `mcs-operator` command line.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Machine Creation Services image management on Kubernetes.
#[derive(Parser, Debug)]
#[command(name = "mcs-operator", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Print every CustomResourceDefinition as YAML (what `crds/` holds).
    Crd {
        /// Write one file per CRD into this directory instead of printing.
        #[arg(long)]
        out_dir: Option<PathBuf>,
    },
    /// Run the controllers against the cluster of the current kubeconfig (or in-cluster config).
    Run {
        /// Watch only this namespace (default: all namespaces).
        #[arg(long, env = "MCS_NAMESPACE")]
        namespace: Option<String>,
        /// Reconciles of one kind that run at once.
        #[arg(long, env = "MCS_CONCURRENCY", default_value_t = 4)]
        concurrency: u16,
        /// At most one progress write per object per this many milliseconds (state changes
        /// always go out at the next follow).
        #[arg(long, env = "MCS_PROGRESS_INTERVAL_MS", default_value_t = 1000)]
        progress_interval_ms: u64,
        /// Log format: `json` (the default in a container) or `text`.
        #[arg(long, env = "MCS_LOG_FORMAT", default_value = "json")]
        log_format: LogFormat,
    },
    /// Try everything on this machine without a cluster: an in-process API server, the
    /// operator, a sample master image and the flow of `examples/`.
    Dev {
        /// Working directory: storage roots (`images`, `fast`), kubeconfig, operator log.
        #[arg(long, default_value = ".mcs-dev")]
        dir: PathBuf,
        /// A qcow2 master image to use (copied in) instead of a generated sample.
        #[arg(long)]
        master: Option<PathBuf>,
        /// Serve HTTPS with a generated CA (the default; kubectl sends its token only over
        /// HTTPS); `--tls false` serves plain HTTP.
        #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
        tls: bool,
    },
    /// Provisioning scheme versions: history, revert, diff (also `kubectl mcs scheme ...` when
    /// the binary is linked as `kubectl-mcs`).
    Scheme {
        /// The namespace (default: the kubeconfig context's).
        #[arg(short, long, global = true)]
        namespace: Option<String>,
        #[command(subcommand)]
        command: mcs_operator::cli::scheme::SchemeCommand,
    },
}

/// How logs are written.
#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum LogFormat {
    /// One JSON object per line.
    Json,
    /// Human-readable lines.
    Text,
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

async fn run_operator(
    namespace: Option<String>,
    concurrency: u16,
    progress_interval_ms: u64,
) -> anyhow::Result<()> {
    let client = kube::Client::try_default().await?;
    let config = mcs_operator::controller::OperatorConfig {
        namespace,
        concurrency,
        progress_interval: std::time::Duration::from_millis(progress_interval_ms.max(50)),
        ..Default::default()
    };
    tracing::info!(namespace = ?config.namespace, "mcs-operator starting");
    tokio::select! {
        () = mcs_operator::controller::run(client, config) => Ok(()),
        signal = tokio::signal::ctrl_c() => {
            signal?;
            tracing::info!("interrupted, stopping");
            Ok(())
        }
    }
}

async fn scheme_command(
    namespace: Option<String>,
    command: &mcs_operator::cli::scheme::SchemeCommand,
) -> anyhow::Result<String> {
    let client = kube::Client::try_default().await?;
    let namespace = namespace.unwrap_or_else(|| client.default_namespace().to_owned());
    Ok(mcs_operator::cli::scheme::run(client, &namespace, command).await?)
}

fn run_scheme(
    namespace: Option<String>,
    command: &mcs_operator::cli::scheme::SchemeCommand,
) -> ExitCode {
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("mcs-operator: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(scheme_command(namespace, command)) {
        Ok(out) => {
            print!("{out}");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("mcs-operator: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Scheme { namespace, command } => return run_scheme(namespace, &command),
        Command::Crd { out_dir: None } => mcs_operator::crd::render_all()
            .map(|yaml| print!("{yaml}"))
            .map_err(anyhow::Error::from),
        Command::Crd { out_dir: Some(dir) } => {
            mcs_operator::crd::write_dir(&dir).map_err(anyhow::Error::from)
        }
        Command::Dev { dir, master, tls } => tokio::runtime::Runtime::new()
            .map_err(anyhow::Error::from)
            .and_then(|runtime| {
                runtime.block_on(mcs_operator::dev::run(mcs_operator::dev::DevOptions {
                    dir,
                    master,
                    tls,
                }))
            }),
        Command::Run {
            namespace,
            concurrency,
            progress_interval_ms,
            log_format,
        } => {
            init_logging(log_format);
            let runtime = match tokio::runtime::Runtime::new() {
                Ok(runtime) => runtime,
                Err(error) => {
                    eprintln!("mcs-operator: cannot start the async runtime: {error}");
                    return ExitCode::FAILURE;
                }
            };
            return match runtime.block_on(run_operator(
                namespace,
                concurrency,
                progress_interval_ms,
            )) {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => {
                    tracing::error!(%error, "mcs-operator stopped");
                    ExitCode::FAILURE
                }
            };
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("mcs-operator: {error:#}");
            ExitCode::FAILURE
        }
    }
}
