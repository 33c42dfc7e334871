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
        /// The form of the files: `manifests` (`crds/`), `kustomize` (`deploy/crds/`, with a
        /// kustomization) or `chart` (`charts/mcs-operator/templates/crds/`, Helm templates).
        #[arg(long, value_enum, default_value = "manifests", requires = "out_dir")]
        layout: mcs_operator::crd::Layout,
    },
    /// Run the controllers against the cluster of the current kubeconfig (or in-cluster config).
    Run(Box<mcs_operator::operator::RunOptions>),
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
    /// Every task of the namespace, its state, operation, progress and expected completion
    /// (`Get-ProvTask`); `-w` follows them with progress bars.
    Tasks(mcs_operator::cli::TasksArgs),
    /// Follow one object's task with a progress bar until it ends; exit 0 when it finished,
    /// 1 when it failed or was canceled, 2 on timeout.
    Wait(mcs_operator::cli::WaitArgs),
    /// Cancel (`Stop-ProvTask`) or retry a task, then follow it like `wait`.
    Task {
        #[command(subcommand)]
        command: mcs_operator::cli::TaskCommand,
    },
}

/// Runs a task command on a fresh runtime with the kubeconfig's client; returns its exit
/// status (2 when it could not run).
fn run_task_command<F, Fut>(command: F) -> ExitCode
where
    F: FnOnce(kube::Client) -> Fut,
    Fut: std::future::Future<Output = Result<u8, mcs_operator::cli::TaskCliError>>,
{
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("mcs-operator: cannot start the async runtime: {error}");
            return ExitCode::from(mcs_operator::cli::EXIT_ERROR);
        }
    };
    let result = runtime.block_on(async {
        let client = kube::Client::try_default()
            .await
            .map_err(mcs_operator::cli::TaskCliError::Kube)?;
        command(client).await
    });
    match result {
        Ok(code) => ExitCode::from(code),
        Err(error) => {
            eprintln!("mcs-operator: {error}");
            ExitCode::from(mcs_operator::cli::EXIT_ERROR)
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
        Command::Tasks(args) => {
            return run_task_command(|client| async move {
                mcs_operator::cli::run_tasks(client, &args).await
            });
        }
        Command::Wait(args) => {
            return run_task_command(|client| async move {
                mcs_operator::cli::run_wait(client, &args).await
            });
        }
        Command::Task { command } => {
            return run_task_command(|client| async move {
                mcs_operator::cli::run_task(client, &command).await
            });
        }
        Command::Crd {
            out_dir: Some(dir),
            layout,
        } => mcs_operator::crd::write_dir(&dir, layout).map_err(anyhow::Error::from),
        Command::Crd { .. } => mcs_operator::crd::render_all()
            .map(|yaml| print!("{yaml}"))
            .map_err(anyhow::Error::from),
        Command::Dev { dir, master, tls } => tokio::runtime::Runtime::new()
            .map_err(anyhow::Error::from)
            .and_then(|runtime| {
                runtime.block_on(mcs_operator::dev::run(mcs_operator::dev::DevOptions {
                    dir,
                    master,
                    tls,
                }))
            }),
        Command::Run(options) => {
            mcs_operator::operator::init_logging(&options);
            let runtime = match tokio::runtime::Runtime::new() {
                Ok(runtime) => runtime,
                Err(error) => {
                    eprintln!("mcs-operator: cannot start the async runtime: {error}");
                    return ExitCode::FAILURE;
                }
            };
            let result = runtime.block_on(mcs_operator::operator::run(*options));
            // Jobs were stopped before `run` returned; do not wait for stray tasks.
            runtime.shutdown_timeout(std::time::Duration::from_secs(2));
            return match result {
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
