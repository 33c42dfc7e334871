//! Command-line tools that talk to the cluster (also usable as the kubectl plugin `kubectl mcs`:
//! link the binary as `kubectl-mcs` somewhere on `PATH`).
//!
//! `tasks`, `wait` and `task cancel|retry` exit with 0 when the awaited tasks finished, 1 when
//! one failed or was canceled, and 2 when following timed out or could not start.

pub mod follow;
pub mod scheme;
pub mod task_control;
pub mod tasks;

use std::time::Duration;

use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::{Client, Resource};
use serde::de::DeserializeOwned;

use follow::{Awaiting, FollowEnd, FollowOptions, Scope};
use task_control::Request;
use tasks::{Awaited, Filter, Snapshot, Target, TaskKind};

use crate::api::{ImageVersionSpec, ProvScheme, ProvVm};

/// Exit status: the awaited tasks finished.
pub const EXIT_FINISHED: u8 = 0;
/// Exit status: an awaited task failed or was canceled.
pub const EXIT_FAILED: u8 = 1;
/// Exit status: following timed out, or could not start.
pub const EXIT_ERROR: u8 = 2;

/// The output formats of `tasks`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Output {
    /// An aligned table.
    #[default]
    Table,
    /// A `TaskList` document as JSON.
    Json,
    /// A `TaskList` document as YAML.
    Yaml,
}

/// `tasks`: every task of the namespace (the `Get-ProvTask` view).
#[derive(clap::Args, Debug, Clone)]
pub struct TasksArgs {
    /// The namespace (default: the kubeconfig context's).
    #[arg(short, long)]
    pub namespace: Option<String>,
    /// Every namespace.
    #[arg(short = 'A', long, conflicts_with = "namespace")]
    pub all_namespaces: bool,
    /// Only tasks still processing.
    #[arg(long)]
    pub active: bool,
    /// Only tasks that ended in a failure state.
    #[arg(long)]
    pub failed: bool,
    /// Output format.
    #[arg(short, long, value_enum, default_value = "table")]
    pub output: Output,
    /// Follow every running task with a progress bar until none is left.
    #[arg(short, long, conflicts_with_all = ["output", "failed"])]
    pub watch: bool,
    /// With `--watch`: give up after this long (`90s`, `10m`, `1h`).
    #[arg(long, value_parser = parse_timeout, requires = "watch")]
    pub timeout: Option<Duration>,
}

/// `wait KIND/NAME`: follow one object's task to its end.
#[derive(clap::Args, Debug, Clone)]
pub struct WaitArgs {
    /// The object: `imageversionspec/NAME`, `provscheme/NAME` (its task and its machines'
    /// builds) or `provvm/NAME`; short names `imgspec`, `ps`, `pvm` work too.
    #[arg(value_parser = parse_target)]
    pub target: Target,
    /// The namespace (default: the kubeconfig context's).
    #[arg(short, long)]
    pub namespace: Option<String>,
    /// Give up after this long (`90s`, `10m`, `1h`).
    #[arg(long, value_parser = parse_timeout)]
    pub timeout: Option<Duration>,
}

/// `task cancel|retry KIND/NAME`.
#[derive(clap::Subcommand, Debug, Clone)]
pub enum TaskCommand {
    /// Stop a running task (`Stop-ProvTask`), then follow it to its end.
    Cancel(WaitArgs),
    /// Start a failed or canceled task again, then follow it to its end.
    Retry(WaitArgs),
}

/// Parses `KIND/NAME`.
pub fn parse_target(text: &str) -> Result<Target, String> {
    Target::parse(text).map_err(|e| e.to_string())
}

/// Parses a timeout: a number of seconds, or a number with `s`, `m` or `h`.
pub fn parse_timeout(text: &str) -> Result<Duration, String> {
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(at) => text.split_at(at),
        None => (text, "s"),
    };
    let value: u64 = number
        .parse()
        .map_err(|_| format!("'{text}' is not a duration such as 90s, 10m or 1h"))?;
    let seconds = match unit {
        "s" => value,
        "m" => value * 60,
        "h" => value * 3600,
        _ => return Err(format!("'{text}' is not a duration such as 90s, 10m or 1h")),
    };
    Ok(Duration::from_secs(seconds))
}

/// Why a task command failed before it could follow anything.
#[derive(Debug, thiserror::Error)]
pub enum TaskCliError {
    /// The Kubernetes API refused or failed a request.
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// Following could not start.
    #[error(transparent)]
    Follow(#[from] follow::FollowError),
    /// The request does not apply.
    #[error(transparent)]
    Control(#[from] task_control::ControlError),
    /// The output could not be written.
    #[error("output: {0}")]
    Output(String),
}

async fn list<K>(api: Api<K>) -> Result<Vec<std::sync::Arc<K>>, kube::Error>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    Ok(api
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .map(std::sync::Arc::new)
        .collect())
}

/// Reads every object with a task once.
async fn snapshot(client: &Client, scope: &Scope) -> Result<Snapshot, kube::Error> {
    Ok(Snapshot {
        specs: list(scope.api::<ImageVersionSpec>(client)).await?,
        schemes: list(scope.api::<ProvScheme>(client)).await?,
        machines: list(scope.api::<ProvVm>(client)).await?,
    })
}

fn scope_of(client: &Client, namespace: Option<&String>, all: bool) -> Scope {
    if all {
        Scope::All
    } else {
        Scope::Namespace(
            namespace.map_or_else(|| client.default_namespace().to_owned(), Clone::clone),
        )
    }
}

/// Prints how following ended and returns the exit status.
fn report(end: FollowEnd) -> u8 {
    match end {
        FollowEnd::Finished(lines) => {
            lines.iter().for_each(|l| println!("{l}"));
            EXIT_FINISHED
        }
        FollowEnd::Failed(lines) => {
            lines.iter().for_each(|l| println!("{l}"));
            EXIT_FAILED
        }
        FollowEnd::TimedOut(after) => {
            eprintln!("timed out after {}s; the tasks go on", after.as_secs());
            EXIT_ERROR
        }
    }
}

/// `tasks`: prints the list, or follows it with `--watch`. Returns the exit status.
pub async fn run_tasks(client: Client, args: &TasksArgs) -> Result<u8, TaskCliError> {
    let scope = scope_of(&client, args.namespace.as_ref(), args.all_namespaces);
    if args.watch {
        let end = follow::follow(
            client,
            &scope,
            &Awaiting::Everything,
            FollowOptions::for_stdout(args.timeout),
        )
        .await?;
        return Ok(report(end));
    }
    let filter = Filter {
        active: args.active,
        failed: args.failed,
    };
    let rows: Vec<_> = tasks::rows(&snapshot(&client, &scope).await?)
        .into_iter()
        .filter(|r| filter.keeps(r))
        .collect();
    let text = match args.output {
        Output::Table if rows.is_empty() => match &scope {
            Scope::Namespace(ns) => format!("No tasks found in namespace {ns}.\n"),
            Scope::All => "No tasks found.\n".to_owned(),
        },
        Output::Table => tasks::table(&rows, scope == Scope::All, jiff::Timestamp::now()),
        Output::Json => serde_json::to_string_pretty(&tasks::list_document(&rows))
            .map(|s| s + "\n")
            .map_err(|e| TaskCliError::Output(e.to_string()))?,
        Output::Yaml => serde_yaml::to_string(&tasks::list_document(&rows))
            .map_err(|e| TaskCliError::Output(e.to_string()))?,
    };
    print!("{text}");
    Ok(EXIT_FINISHED)
}

/// `wait KIND/NAME`. Returns the exit status.
pub async fn run_wait(client: Client, args: &WaitArgs) -> Result<u8, TaskCliError> {
    follow_one(client, args, Awaited::default()).await
}

/// Follows `args.target` (ignoring the `awaited` task records) and reports how it ended.
async fn follow_one(client: Client, args: &WaitArgs, awaited: Awaited) -> Result<u8, TaskCliError> {
    let scope = scope_of(&client, args.namespace.as_ref(), false);
    let awaiting = Awaiting::One {
        target: args.target.clone(),
        awaited,
    };
    let end = follow::follow(
        client,
        &scope,
        &awaiting,
        FollowOptions::for_stdout(args.timeout),
    )
    .await?;
    Ok(report(end))
}

/// `task cancel|retry KIND/NAME`: annotates, says what it asked, then follows like `wait`.
pub async fn run_task(client: Client, command: &TaskCommand) -> Result<u8, TaskCliError> {
    let (request, args) = match command {
        TaskCommand::Cancel(args) => (Request::Cancel, args),
        TaskCommand::Retry(args) => (Request::Retry, args),
    };
    let scope = scope_of(&client, args.namespace.as_ref(), false);
    let namespace = scope.namespace().to_owned();
    let plan = task_control::plan(
        request,
        &args.target,
        &snapshot(&client, &scope).await?,
        &namespace,
    )?;
    let patch = serde_json::json!({
        "metadata": { "annotations": { request.annotation(): "true" } }
    });
    let params = PatchParams {
        field_manager: Some(scheme::FIELD_MANAGER.to_owned()),
        ..PatchParams::default()
    };
    for target in &plan.annotate {
        let patch = Patch::Merge(&patch);
        match target.kind {
            TaskKind::ImageVersionSpec => {
                Api::<ImageVersionSpec>::namespaced(client.clone(), &namespace)
                    .patch(&target.name, &params, &patch)
                    .await?;
            }
            TaskKind::ProvScheme => {
                Api::<ProvScheme>::namespaced(client.clone(), &namespace)
                    .patch(&target.name, &params, &patch)
                    .await?;
            }
            TaskKind::ProvVm => {
                Api::<ProvVm>::namespaced(client.clone(), &namespace)
                    .patch(&target.name, &params, &patch)
                    .await?;
            }
        }
        println!("{target}: {request} requested ({})", request.annotation());
    }
    follow_one(client, args, plan.awaited).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_take_seconds_minutes_and_hours() {
        assert_eq!(parse_timeout("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_timeout("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_timeout("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_timeout("1h"), Ok(Duration::from_secs(3600)));
        for bad in ["", "m", "5d", "1.5m", "-3s"] {
            assert!(parse_timeout(bad).is_err(), "{bad}");
        }
    }
}
