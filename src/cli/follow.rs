//! Following tasks live (`tasks -w`, `wait`, `task cancel|retry`): watches of image version
//! specs, schemes and machines feed reflector stores; after every change the pure view of
//! [`super::tasks`] says what to show and whether the awaited work is done. On a terminal each
//! active task gets a progress bar; on any other output each change is one plain line.

use std::collections::HashMap;
use std::io::IsTerminal as _;
use std::time::Duration;

use futures::stream::{BoxStream, StreamExt as _};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use jiff::Timestamp;
use kube::runtime::WatchStreamExt as _;
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;

use super::tasks::{self, Awaited, Outcome, Snapshot, Target, TaskRow};
use crate::api::{ImageVersionSpec, ProvScheme, ProvVm};

/// Where to look.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scope {
    /// One namespace.
    Namespace(String),
    /// Every namespace (`-A`).
    All,
}

impl Scope {
    /// An `Api` of `K` over the scope.
    pub fn api<K>(&self, client: &Client) -> Api<K>
    where
        K: Resource<Scope = kube::core::NamespaceResourceScope, DynamicType = ()>,
    {
        match self {
            Self::Namespace(ns) => Api::namespaced(client.clone(), ns),
            Self::All => Api::all(client.clone()),
        }
    }

    /// The namespace (empty for every namespace).
    pub fn namespace(&self) -> &str {
        match self {
            Self::Namespace(ns) => ns,
            Self::All => "",
        }
    }
}

/// What is awaited.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Awaiting {
    /// Every task of the scope, until none is running and every scheme has its machines.
    Everything,
    /// One object's task (for a scheme: also its machines' tasks).
    One {
        /// The object.
        target: Target,
        /// Task records that no longer count (replaced by a retry).
        awaited: Awaited,
    },
}

/// How to follow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FollowOptions {
    /// Give up after this long.
    pub timeout: Option<Duration>,
    /// Draw progress bars (else plain lines).
    pub bars: bool,
}

impl FollowOptions {
    /// Bars when standard output is a terminal.
    pub fn for_stdout(timeout: Option<Duration>) -> Self {
        Self {
            timeout,
            bars: std::io::stdout().is_terminal(),
        }
    }
}

/// How following ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FollowEnd {
    /// Everything awaited finished; the lines say what.
    Finished(Vec<String>),
    /// A task failed or was canceled; the lines name each with its error id and message.
    Failed(Vec<String>),
    /// The timeout passed first.
    TimedOut(Duration),
}

/// Why following could not go on.
#[derive(Debug, thiserror::Error)]
pub enum FollowError {
    /// A watch could not start (the CRDs are missing, or access is denied).
    #[error("cannot watch {kind}: {source}")]
    Watch {
        /// The kind.
        kind: &'static str,
        /// The watcher's error.
        source: watcher::Error,
    },
    /// The awaited object does not exist.
    #[error("{target} was not found in namespace '{namespace}'")]
    NotFound {
        /// The object.
        target: Target,
        /// Its namespace.
        namespace: String,
    },
}

/// One watch: its store and a stream that says `true` once the initial list is in the store.
fn watch<K>(api: Api<K>) -> (Store<K>, BoxStream<'static, Result<bool, watcher::Error>>)
where
    K: Resource<DynamicType = ()>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let (reader, writer) = reflector::store();
    let stream = watcher::watcher(api, watcher::Config::default())
        .default_backoff()
        .reflect(writer)
        .map(|event| event.map(|e| matches!(e, Event::InitDone)))
        .boxed();
    (reader, stream)
}

/// Follows `awaiting` in `scope` until it ends, showing progress as it goes.
pub async fn follow(
    client: Client,
    scope: &Scope,
    awaiting: &Awaiting,
    options: FollowOptions,
) -> Result<FollowEnd, FollowError> {
    const KINDS: [&str; 3] = ["imageversionspecs", "provschemes", "provvms"];
    let (specs, s0) = watch::<ImageVersionSpec>(scope.api(&client));
    let (schemes, s1) = watch::<ProvScheme>(scope.api(&client));
    let (machines, s2) = watch::<ProvVm>(scope.api(&client));
    let mut events = futures::stream::select_all(
        [s0, s1, s2]
            .into_iter()
            .enumerate()
            .map(|(i, s)| s.map(move |e| (i, e)).boxed()),
    );
    let mut synced = [false; 3];
    let mut view = View::new(options.bars);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let deadline = options.timeout.map(|t| tokio::time::Instant::now() + t);
    let mut warned = [false; 3];
    loop {
        tokio::select! {
            event = events.next() => match event {
                Some((i, Ok(init_done))) => synced[i] |= init_done,
                Some((i, Err(source))) if !synced[i] => {
                    return Err(FollowError::Watch { kind: KINDS[i], source });
                }
                Some((i, Err(error))) => {
                    if !warned[i] {
                        view.note(&format!("watch of {} interrupted, resuming: {error}", KINDS[i]));
                        warned[i] = true;
                    }
                    continue;
                }
                None => continue,
            },
            _ = tick.tick() => {}
            () = sleep_until(deadline) => {
                view.abandon();
                return Ok(FollowEnd::TimedOut(options.timeout.unwrap_or_default()));
            }
        }
        if synced.contains(&false) {
            continue;
        }
        warned = [false; 3];
        let snapshot = Snapshot {
            specs: specs.state(),
            schemes: schemes.state(),
            machines: machines.state(),
        };
        let rows = tasks::rows(&snapshot);
        let now = Timestamp::now();
        match awaiting {
            Awaiting::Everything => {
                view.show(&rows, now, |_| true);
                if tasks::all_settled(&snapshot) {
                    return Ok(view.summary());
                }
            }
            Awaiting::One { target, awaited } => {
                let mine = tasks::rows_of(target, &rows);
                view.show(&mine, now, |row| {
                    !awaited.superseded.contains(&row.task.task_id)
                });
                match tasks::outcome(target, &snapshot, awaited, scope.namespace()) {
                    None => {
                        view.abandon();
                        return Err(FollowError::NotFound {
                            target: target.clone(),
                            namespace: scope.namespace().to_owned(),
                        });
                    }
                    Some(Outcome::Pending) => {}
                    Some(Outcome::Finished(line)) => {
                        view.abandon();
                        return Ok(FollowEnd::Finished(view.unprinted(line)));
                    }
                    Some(Outcome::Failed(line)) => {
                        view.abandon();
                        return Ok(FollowEnd::Failed(view.unprinted(line)));
                    }
                }
            }
        }
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// One task being shown.
struct Shown {
    task_id: String,
    bar: Option<ProgressBar>,
    /// What the last plain line said (state, operation, tenth of progress).
    last_line: String,
    ended: Option<TaskRow>,
}

/// The progress display: bars or plain lines, one per followed task.
struct View {
    multi: Option<MultiProgress>,
    shown: HashMap<(String, Target), Shown>,
    order: Vec<(String, Target)>,
    printed: std::collections::HashSet<String>,
}

impl View {
    fn new(bars: bool) -> Self {
        Self {
            multi: bars.then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stdout())),
            shown: HashMap::new(),
            order: Vec::new(),
            printed: std::collections::HashSet::new(),
        }
    }

    /// Prints a line above the bars (or plainly).
    fn note(&self, line: &str) {
        match &self.multi {
            Some(multi) => {
                let _ = multi.println(line);
            }
            None => println!("{line}"),
        }
    }

    /// Updates the display from `rows`; a task is followed once it is seen running (and
    /// `follows` it).
    fn show(&mut self, rows: &[TaskRow], now: Timestamp, follows: impl Fn(&TaskRow) -> bool) {
        for row in rows {
            let key = (row.namespace.clone(), row.target());
            let known = self
                .shown
                .get(&key)
                .is_some_and(|s| s.task_id == row.task.task_id);
            if !known {
                if !row.task.active || !follows(row) {
                    continue;
                }
                let bar = self.multi.as_ref().map(|multi| {
                    let bar = multi.add(ProgressBar::new(100));
                    bar.set_style(
                        ProgressStyle::with_template(
                            "{prefix:42!} [{bar:24}] {pos:>3}% {wide_msg}",
                        )
                        .unwrap_or_else(|_| ProgressStyle::default_bar())
                        .progress_chars("=> "),
                    );
                    bar.set_prefix(row.target().to_string());
                    bar
                });
                if !self.order.contains(&key) {
                    self.order.push(key.clone());
                }
                self.shown.insert(
                    key.clone(),
                    Shown {
                        task_id: row.task.task_id.clone(),
                        bar,
                        last_line: String::new(),
                        ended: None,
                    },
                );
            }
            let Some(shown) = self.shown.get_mut(&key) else {
                continue;
            };
            if shown.ended.is_some() {
                continue;
            }
            let task = &row.task;
            if task.active {
                let operation = task.current_operation.as_deref().unwrap_or("-");
                let eta = match tasks::expected(task, now).as_str() {
                    "-" => String::new(),
                    eta => format!(", done {eta}"),
                };
                match &shown.bar {
                    Some(bar) => {
                        bar.set_position(u64::try_from(task.task_progress).unwrap_or(0));
                        bar.set_message(format!(
                            "{} {}{eta} · {operation}",
                            task.task_type, task.task_state
                        ));
                    }
                    None => {
                        // A line per state or operation, and per tenth of progress within one.
                        let key = format!(
                            "{} {operation} {}",
                            task.task_state,
                            task.task_progress / 10
                        );
                        if key != shown.last_line {
                            println!(
                                "{} {} {} {}% {operation}",
                                row.target(),
                                task.task_type,
                                task.task_state,
                                task.task_progress
                            );
                            shown.last_line = key;
                        }
                    }
                }
            } else {
                let line = row.final_line();
                match &shown.bar {
                    Some(bar) if task.task_state == crate::api::TaskState::Finished => {
                        bar.set_position(100);
                        bar.finish_with_message(format!("{}", task.task_state));
                    }
                    Some(bar) => bar.abandon_with_message(line),
                    None => {
                        println!("{line}");
                        self.printed.insert(line);
                    }
                }
                shown.ended = Some(row.clone());
            }
        }
    }

    /// The outcome's `line`, unless it was already printed as a task's last plain line.
    fn unprinted(&self, line: String) -> Vec<String> {
        if self.printed.contains(&line) {
            Vec::new()
        } else {
            vec![line]
        }
    }

    /// Stops every bar where it is.
    fn abandon(&self) {
        for shown in self.shown.values() {
            if let Some(bar) = &shown.bar
                && !bar.is_finished()
            {
                bar.abandon();
            }
        }
    }

    /// The end of `tasks -w`: how the followed tasks ended.
    fn summary(&self) -> FollowEnd {
        self.abandon();
        let ended: Vec<&TaskRow> = self
            .order
            .iter()
            .filter_map(|key| self.shown.get(key)?.ended.as_ref())
            .collect();
        let failed: Vec<String> = ended
            .iter()
            .filter(|r| r.task.task_state != crate::api::TaskState::Finished)
            .map(|r| r.final_line())
            .collect();
        let total = format!(
            "no task is running: {} followed, {} finished, {} failed or canceled",
            ended.len(),
            ended.len() - failed.len(),
            failed.len()
        );
        if failed.is_empty() {
            FollowEnd::Finished(vec![total])
        } else {
            let mut lines = failed;
            lines.push(total);
            FollowEnd::Failed(lines)
        }
    }
}
