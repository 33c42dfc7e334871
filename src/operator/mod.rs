//! `mcs-operator run`: the operator process around the controllers.
//!
//! In order: serve `/metrics` and the probes, wait until the CRDs of this binary are installed,
//! wait for the leader lease (with `--leader-elect`), run the controllers until SIGTERM, Ctrl-C
//! or a lost lease, then stop every task job (its processes are killed and its partial files
//! removed, so no half-written disk is left) and release the lease so a standby takes over at
//! once. A task interrupted this way is resumed by the next leader.

pub mod crd_check;
pub mod health;
pub mod leader;

use std::net::SocketAddr;
use std::time::Duration;

use health::{Health, Role};
use leader::{ElectionConfig, LeaderElection};

use crate::controller::{Context, OperatorConfig};

/// The settings of `mcs-operator run` (flags, or the environment variables named).
#[derive(clap::Args, Debug, Clone)]
pub struct RunOptions {
    /// Watch only this namespace (default: all namespaces).
    #[arg(long, env = "MCS_NAMESPACE")]
    pub namespace: Option<String>,
    /// Reconciles of one kind that run at once.
    #[arg(long, env = "MCS_CONCURRENCY", default_value_t = 4)]
    pub concurrency: u16,
    /// Task jobs (image preparations, machine builds) doing backend work at once.
    #[arg(long, env = "MCS_MAX_CONCURRENT_TASKS", default_value_t = 4)]
    pub max_concurrent_tasks: usize,
    /// At most one progress write per object per this many milliseconds (state changes
    /// always go out at the next follow).
    #[arg(long, env = "MCS_PROGRESS_INTERVAL_MS", default_value_t = 1000)]
    pub progress_interval_ms: u64,
    /// Log format: `json` (the default in a container) or `text`.
    #[arg(long, env = "MCS_LOG_FORMAT", value_enum, default_value = "json")]
    pub log_format: LogFormat,
    /// Log filter: a level (`info`, `debug`, ...) or `tracing` directives
    /// (`info,mcs_operator::controller=debug`).
    #[arg(long, env = "MCS_LOG_LEVEL", default_value = "info")]
    pub log_level: String,
    /// Where `/metrics` is served (`off` to disable; port 0 picks a free port).
    #[arg(long, env = "MCS_METRICS_ADDRESS", default_value = "0.0.0.0:8080")]
    pub metrics_address: String,
    /// Where `/healthz` and `/readyz` are served (`off` to disable).
    #[arg(long, env = "MCS_PROBE_ADDRESS", default_value = "0.0.0.0:8081")]
    pub probe_address: String,
    /// Run the controllers only while holding the leader Lease (for more than one replica).
    #[arg(long, env = "MCS_LEADER_ELECT", default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub leader_elect: bool,
    /// The Lease's namespace (default: `POD_NAMESPACE`, else the kubeconfig's namespace).
    #[arg(long, env = "MCS_LEADER_ELECTION_NAMESPACE")]
    pub leader_election_namespace: Option<String>,
    /// The Lease's name.
    #[arg(
        long,
        env = "MCS_LEADER_ELECTION_LEASE",
        default_value = "mcs-operator"
    )]
    pub leader_election_lease: String,
    /// How long the lease stays valid without renewal (renewed after two thirds of it); a
    /// standby takes over at most about this long after the leader dies.
    #[arg(long, env = "MCS_LEASE_DURATION_SECONDS", default_value_t = 10)]
    pub lease_duration_seconds: u64,
}

/// How logs are written.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    /// One JSON object per line.
    Json,
    /// Human-readable lines.
    Text,
}

/// Why the operator stopped with a failure.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// No kubeconfig or in-cluster configuration.
    #[error("cannot configure the Kubernetes client: {0}")]
    Client(#[source] kube::Error),
    /// An address flag is not `host:port`.
    #[error("{flag}: {value:?} is not an address (host:port) or `off`")]
    Address {
        /// The flag.
        flag: &'static str,
        /// What was given.
        value: String,
    },
    /// A server could not bind.
    #[error("cannot serve {what} on {address}: {source}")]
    Bind {
        /// The server.
        what: &'static str,
        /// The address.
        address: SocketAddr,
        /// The error.
        source: std::io::Error,
    },
    /// The leader election could not start.
    #[error("cannot start the leader election: {0}")]
    Election(#[from] kube_lease_manager::LeaseManagerError),
    /// The lease was lost; the process stops so that it restarts as a standby.
    #[error("lost the leader lease: {0}")]
    LeaseLost(String),
    /// The signal handler could not be installed.
    #[error("cannot listen for signals: {0}")]
    Signals(#[source] std::io::Error),
}

impl RunOptions {
    /// The controllers' settings.
    pub fn operator_config(&self) -> OperatorConfig {
        OperatorConfig {
            namespace: self.namespace.clone(),
            concurrency: self.concurrency,
            max_concurrent_tasks: self.max_concurrent_tasks,
            progress_interval: Duration::from_millis(self.progress_interval_ms.max(50)),
            ..Default::default()
        }
    }
}

/// Installs the `tracing` subscriber: `options.log_level` (overridden by `RUST_LOG` when set)
/// in `options.log_format`, to stderr.
///
/// Unless the filter names `kube_client`, kube's client logs only its errors and not the
/// per-request trace: an API server restart otherwise writes a warning per open watch ("eof in
/// poll") and an error per failed request, where the controllers already say once per 30 s
/// that their watches fail (`controller::log_run_error`) and each failed reconcile is logged
/// with its reason.
pub fn init_logging(options: &RunOptions) {
    let directives = std::env::var("RUST_LOG")
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| options.log_level.clone());
    let filter = tracing_subscriber::EnvFilter::try_new(quiet_kube_client(&directives))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(quiet_kube_client("info")));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match options.log_format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

/// `directives` with kube's client quieted (see [`init_logging`]) unless they name it.
fn quiet_kube_client(directives: &str) -> String {
    if directives.contains("kube_client") {
        directives.to_owned()
    } else {
        format!("{directives},kube_client::client=error,kube_client::client::builder=off")
    }
}

/// Binds `address` (unless `off`) and serves `router` on it in the background.
async fn serve(
    flag: &'static str,
    what: &'static str,
    address: &str,
    router: axum::Router,
) -> Result<(), RunError> {
    if address == "off" || address.is_empty() {
        return Ok(());
    }
    let parsed: SocketAddr = address.parse().map_err(|_| RunError::Address {
        flag,
        value: address.to_string(),
    })?;
    let listener = tokio::net::TcpListener::bind(parsed)
        .await
        .map_err(|source| RunError::Bind {
            what,
            address: parsed,
            source,
        })?;
    let bound = listener.local_addr().unwrap_or(parsed);
    tracing::info!(address = %bound, "serving {what}");
    tokio::spawn(async move {
        if let Err(error) = axum::serve(listener, router).await {
            tracing::error!(%error, "{what} server stopped");
        }
    });
    Ok(())
}

fn metrics_router() -> axum::Router {
    axum::Router::new().route(
        "/metrics",
        axum::routing::get(|| async {
            match crate::metrics::global().encode() {
                Ok(text) => (
                    axum::http::StatusCode::OK,
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    text,
                ),
                Err(_) => (
                    axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                    [(axum::http::header::CONTENT_TYPE, "text/plain")],
                    "cannot encode the metrics\n".to_string(),
                ),
            }
        }),
    )
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() -> Result<&'static str, RunError> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).map_err(RunError::Signals)?;
    let mut int = signal(SignalKind::interrupt()).map_err(RunError::Signals)?;
    Ok(tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    })
}

/// Waits until the CRDs are ready, re-checking every 5 s; logs what is wrong when it first
/// sees it, when it changes, and once a minute while it lasts.
async fn wait_for_crds(client: &kube::Client, health: &Health) {
    let mut last: Option<(String, std::time::Instant)> = None;
    loop {
        let problem = match crd_check::check(client).await {
            Ok(problems) if problems.is_empty() => None,
            Ok(problems) => Some(crd_check::summary(&problems)),
            Err(error) => Some(format!("cannot read the CRDs: {error}")),
        };
        let Some(problem) = problem else {
            health.set_crds(Ok(()));
            if last.is_some() {
                tracing::info!("the CRDs are ready");
            }
            return;
        };
        let repeat = last
            .as_ref()
            .is_none_or(|(said, at)| *said != problem || at.elapsed() >= Duration::from_secs(60));
        if repeat {
            tracing::error!("{problem}");
            last = Some((problem.clone(), std::time::Instant::now()));
        }
        health.set_crds(Err(problem));
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
}

/// How the controllers stopped.
enum Stop {
    Signal(&'static str),
    LeaseLost(String),
}

/// Runs the operator process until a signal (`Ok`) or a lost lease (`Err`).
pub async fn run(options: RunOptions) -> Result<(), RunError> {
    let client = kube::Client::try_default()
        .await
        .map_err(RunError::Client)?;
    let health = Health::default();
    serve(
        "--metrics-address",
        "metrics",
        &options.metrics_address,
        metrics_router(),
    )
    .await?;
    serve(
        "--probe-address",
        "probes",
        &options.probe_address,
        health.router(),
    )
    .await?;
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        namespace = ?options.namespace,
        leader_elect = options.leader_elect,
        "mcs-operator starting"
    );

    tokio::select! {
        () = wait_for_crds(&client, &health) => {}
        signal = &mut shutdown => {
            tracing::info!(signal = signal?, "stopping before start");
            return Ok(());
        }
    }

    let context = Context::new(client.clone(), options.operator_config());
    health.set_caches(context.caches.clone());
    let mut election = None;
    if options.leader_elect {
        let config = ElectionConfig {
            namespace: options
                .leader_election_namespace
                .clone()
                .or_else(|| {
                    std::env::var("POD_NAMESPACE")
                        .ok()
                        .filter(|n| !n.is_empty())
                })
                .unwrap_or_else(|| client.default_namespace().to_string()),
            lease: options.leader_election_lease.clone(),
            identity: leader::identity(),
            duration: Duration::from_secs(options.lease_duration_seconds.max(2)),
        };
        tracing::info!(
            lease = %config.lease,
            namespace = %config.namespace,
            identity = %config.identity,
            "standby: waiting for the leader lease"
        );
        let mut started = LeaderElection::start(client.clone(), config).await?;
        health.set_role(Role::Standby);
        tokio::select! {
            acquired = started.acquired() => {
                if !acquired {
                    return Err(RunError::LeaseLost("the election stopped".into()));
                }
            }
            signal = &mut shutdown => {
                tracing::info!(signal = signal?, "stopping as a standby");
                started.release().await;
                return Ok(());
            }
        }
        tracing::info!("leading: acquired the leader lease");
        election = Some(started);
    }

    health.set_role(Role::Leader);
    crate::metrics::global().set_leader(true);
    let lease_lost = async {
        match election.as_mut() {
            Some(election) => election.lost().await,
            None => std::future::pending().await,
        }
    };
    let stop = tokio::select! {
        () = crate::controller::run_with(context.clone()) => Stop::Signal("controllers ended"),
        reason = lease_lost => Stop::LeaseLost(reason),
        signal = &mut shutdown => Stop::Signal(signal?),
    };
    health.set_role(Role::Stopping);
    crate::metrics::global().set_leader(false);
    match &stop {
        Stop::Signal(signal) => tracing::info!(signal, "stopping the controllers"),
        Stop::LeaseLost(reason) => {
            tracing::error!(reason, "lost the leader lease: stopping all work at once")
        }
    }
    let stopped = context.tasks.cancel_all().await;
    tracing::info!(
        stopped,
        "task jobs stopped (processes killed, partial files removed); the next leader resumes them"
    );
    if let Some(election) = election {
        election.release().await;
    }
    match stop {
        Stop::Signal(_) => Ok(()),
        Stop::LeaseLost(reason) => Err(RunError::LeaseLost(reason)),
    }
}
