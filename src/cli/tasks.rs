//! The tasks of a namespace as one list (the `Get-ProvTask` view), and what it means for an
//! awaited task to be done. Pure: built from objects already read, so every rule here is
//! unit-tested without a server. [`super::follow`] feeds it from watches.

use std::collections::BTreeSet;
use std::fmt;
use std::sync::Arc;

use jiff::Timestamp;
use kube::ResourceExt;
use serde::Serialize;

use crate::api::{
    ANNOTATION_CANCEL, ANNOTATION_RETRY, ImageVersionSpec, ProvScheme, ProvVm, TaskState,
    TaskStatus,
};

/// The kinds whose status carries a task.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum TaskKind {
    /// `New-ProvImageVersionSpec` (preparation).
    ImageVersionSpec,
    /// `New-ProvScheme` (creation).
    ProvScheme,
    /// `New-ProvVM` and machine updates.
    ProvVm,
}

impl TaskKind {
    /// The lowercase singular name used in `KIND/NAME` (as kubectl prints it).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ImageVersionSpec => "imageversionspec",
            Self::ProvScheme => "provscheme",
            Self::ProvVm => "provvm",
        }
    }

    /// Parses a kind as kubectl accepts it: singular, plural, short name or with its group,
    /// case-insensitively (`ps`, `provschemes`, `ProvScheme.mcs.imaging.dev`).
    pub fn parse(text: &str) -> Result<Self, TargetError> {
        let lower = text.to_ascii_lowercase();
        let bare = lower.strip_suffix(".mcs.imaging.dev").unwrap_or(&lower);
        match bare {
            "imageversionspec" | "imageversionspecs" | "imgspec" => Ok(Self::ImageVersionSpec),
            "provscheme" | "provschemes" | "ps" => Ok(Self::ProvScheme),
            "provvm" | "provvms" | "pvm" => Ok(Self::ProvVm),
            _ => Err(TargetError::UnknownKind(text.to_owned())),
        }
    }
}

impl fmt::Display for TaskKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a `KIND/NAME` argument was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    /// The argument has no `/`.
    #[error(
        "'{0}' is not KIND/NAME; write e.g. imageversionspec/win11-prepared, provscheme/desktops or provvm/vdi-001"
    )]
    NotKindSlashName(String),
    /// The kind carries no task.
    #[error(
        "'{0}' is not a kind with tasks; use imageversionspec (imgspec), provscheme (ps) or provvm (pvm)"
    )]
    UnknownKind(String),
}

/// One object whose task is followed: `kind/name` in a namespace.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Target {
    /// The kind.
    pub kind: TaskKind,
    /// The object's name.
    pub name: String,
}

impl Target {
    /// Parses `KIND/NAME`.
    pub fn parse(text: &str) -> Result<Self, TargetError> {
        let (kind, name) = text
            .split_once('/')
            .filter(|(k, n)| !k.is_empty() && !n.is_empty() && !n.contains('/'))
            .ok_or_else(|| TargetError::NotKindSlashName(text.to_owned()))?;
        Ok(Self {
            kind: TaskKind::parse(kind)?,
            name: name.to_owned(),
        })
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.kind, self.name)
    }
}

/// The objects the task view is built from (what the watches hold).
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// Image version specs.
    pub specs: Vec<Arc<ImageVersionSpec>>,
    /// Provisioning schemes.
    pub schemes: Vec<Arc<ProvScheme>>,
    /// Machines.
    pub machines: Vec<Arc<ProvVm>>,
}

/// One task as `tasks` lists it: the object that owns it and its status record.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskRow {
    /// The kind of the owning object.
    pub kind: TaskKind,
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// For a machine: the scheme it belongs to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prov_scheme: Option<String>,
    /// The task record (`status.task`).
    #[serde(flatten)]
    pub task: TaskStatus,
}

impl TaskRow {
    /// `kind/name`.
    pub fn target(&self) -> Target {
        Target {
            kind: self.kind,
            name: self.name.clone(),
        }
    }

    /// Whether the task ended in a failure state (not `Canceled`).
    pub fn failed(&self) -> bool {
        self.task.task_state.is_failure()
    }

    /// The line that ends a followed task: `kind/name: Finished`, or the SDK's error id and
    /// message of a failed or canceled one.
    pub fn final_line(&self) -> String {
        match &self.task.terminating_error {
            Some(error) if self.task.task_state != TaskState::Finished => format!(
                "{}: {} ({}): {}",
                self.target(),
                self.task.task_state,
                self.task.task_type,
                error.message
            ),
            _ => format!(
                "{}: {} ({})",
                self.target(),
                self.task.task_state,
                self.task.task_type
            ),
        }
    }
}

/// A kind whose status carries a task: what the task view reads of it.
trait Tasked: ResourceExt {
    /// `status.observedGeneration`.
    fn observed_generation(&self) -> Option<i64>;
    /// `status.task`.
    fn task(&self) -> Option<&TaskStatus>;
}

macro_rules! tasked {
    ($($kind:ty),*) => {$(
        impl Tasked for $kind {
            fn observed_generation(&self) -> Option<i64> {
                self.status.as_ref().and_then(|s| s.observed_generation)
            }
            fn task(&self) -> Option<&TaskStatus> {
                self.status.as_ref().and_then(|s| s.task.as_ref())
            }
        }
    )*};
}
tasked!(ImageVersionSpec, ProvScheme, ProvVm);

/// Every task of `snapshot`, ordered by namespace, kind and name.
pub fn rows(snapshot: &Snapshot) -> Vec<TaskRow> {
    fn row<K: Tasked>(kind: TaskKind, object: &K, prov_scheme: Option<&str>) -> Option<TaskRow> {
        object.task().map(|task| TaskRow {
            kind,
            namespace: object.namespace().unwrap_or_default(),
            name: object.name_any(),
            prov_scheme: prov_scheme.map(str::to_owned),
            task: task.clone(),
        })
    }
    let mut out: Vec<TaskRow> = Vec::new();
    out.extend(
        (snapshot.specs.iter()).filter_map(|o| row(TaskKind::ImageVersionSpec, o.as_ref(), None)),
    );
    out.extend(
        (snapshot.schemes.iter()).filter_map(|o| row(TaskKind::ProvScheme, o.as_ref(), None)),
    );
    out.extend(
        snapshot
            .machines
            .iter()
            .filter_map(|o| row(TaskKind::ProvVm, o.as_ref(), Some(&o.spec.prov_scheme_ref))),
    );
    out.sort_by(|a, b| (&a.namespace, a.kind, &a.name).cmp(&(&b.namespace, b.kind, &b.name)));
    out
}

/// Which tasks `tasks` shows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Filter {
    /// Only tasks still processing.
    pub active: bool,
    /// Only tasks that ended in a failure state.
    pub failed: bool,
}

impl Filter {
    /// Whether `row` passes.
    pub fn keeps(&self, row: &TaskRow) -> bool {
        (!self.active || row.task.active) && (!self.failed || row.failed())
    }
}

/// A duration in the compact form kubectl uses for ages: `45s`, `3m12s`, `2h5m`, `3d4h`.
pub fn human(seconds: i64) -> String {
    let s = seconds.max(0);
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{}s", s / 60, s % 60),
        3600..86400 => format!("{}h{}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{}h", s / 86400, s % 86400 / 3600),
    }
}

/// Seconds the task has run: its recorded active time, plus the time since its last update
/// while it is still processing.
pub fn elapsed(task: &TaskStatus, now: Timestamp) -> i64 {
    let since_update = if task.active {
        (now - task.last_update_time).get_seconds().max(0)
    } else {
        0
    };
    task.active_elapsed_time + since_update
}

/// When the task is expected to end, relative to `now` (`in 40s`), or `-`.
pub fn expected(task: &TaskStatus, now: Timestamp) -> String {
    match task.task_expected_completion {
        Some(at) if task.active => format!("in {}", human((at - now).get_seconds())),
        _ => "-".into(),
    }
}

/// The first line of a message, cut to `max` characters (with `…`).
fn shorten(text: &str, max: usize) -> String {
    let line = text.lines().next().unwrap_or_default();
    if line.chars().count() <= max {
        line.to_owned()
    } else {
        let mut cut: String = line.chars().take(max.saturating_sub(1)).collect();
        cut.push('…');
        cut
    }
}

/// The rows as an aligned table; `namespaces` adds a NAMESPACE column (for `-A`).
pub fn table(rows: &[TaskRow], namespaces: bool, now: Timestamp) -> String {
    let mut lines: Vec<Vec<String>> = Vec::new();
    let mut header: Vec<String> = Vec::new();
    if namespaces {
        header.push("NAMESPACE".into());
    }
    header.extend(
        [
            "TASK",
            "TYPE",
            "STATE",
            "OPERATION",
            "PROGRESS",
            "STARTED",
            "ELAPSED",
            "EXPECTED",
            "ERROR",
        ]
        .map(String::from),
    );
    lines.push(header);
    for row in rows {
        let task = &row.task;
        let mut line: Vec<String> = Vec::new();
        if namespaces {
            line.push(row.namespace.clone());
        }
        line.extend([
            row.target().to_string(),
            task.task_type.to_string(),
            task.task_state.to_string(),
            task.current_operation
                .as_deref()
                .map_or_else(|| "-".into(), |o| shorten(o, 48)),
            format!("{}%", task.task_progress),
            format!("{} ago", human((now - task.date_started).get_seconds())),
            human(elapsed(task, now)),
            expected(task, now),
            task.terminating_error
                .as_ref()
                .filter(|_| task.task_state != TaskState::Finished)
                .map_or_else(|| "-".into(), |e| shorten(&e.message, 80)),
        ]);
        lines.push(line);
    }
    let columns = lines[0].len();
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            lines
                .iter()
                .map(|l| l[c].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for line in &lines {
        let cells: Vec<String> = line
            .iter()
            .enumerate()
            .map(|(c, cell)| {
                if c + 1 == columns {
                    cell.clone()
                } else {
                    format!("{cell:<width$}", width = widths[c])
                }
            })
            .collect();
        out.push_str(cells.join("   ").trim_end());
        out.push('\n');
    }
    out
}

/// The rows as a `TaskList` document, for `-o json|yaml`.
pub fn list_document(rows: &[TaskRow]) -> serde_json::Value {
    serde_json::json!({ "kind": "TaskList", "items": rows })
}

/// Where a followed piece of work stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Still running (or not yet picked up by the operator).
    Pending,
    /// Done; the line says what finished.
    Finished(String),
    /// A task failed or was canceled; the line names it, its state and the SDK's message.
    Failed(String),
}

/// What `wait` and `task cancel|retry` follow: one object, ignoring task records that a
/// retry is replacing (`superseded`: task ids that were current when the retry was asked).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Awaited {
    /// Task ids that no longer count.
    pub superseded: BTreeSet<String>,
}

/// Whether an object's status may be stale: its spec changed since the status was written,
/// or a cancel/retry request has not been taken up yet.
fn stale<K: Tasked>(object: &K) -> bool {
    let annotations = object.annotations();
    object.meta().generation > object.observed_generation()
        || annotations.contains_key(ANNOTATION_RETRY)
        || annotations.contains_key(ANNOTATION_CANCEL)
}

/// Whether the operator has taken up the object's current spec: it has a task, and its status
/// is not stale.
fn picked_up<K: Tasked>(object: &K) -> bool {
    !stale(object) && object.task().is_some()
}

/// The outcome of one object's own task.
fn task_outcome<K: Tasked>(
    target: &Target,
    object: &K,
    awaited: &Awaited,
    namespace: &str,
) -> Outcome {
    let Some(task) = object.task() else {
        return Outcome::Pending;
    };
    if stale(object) || !task.is_terminal() || awaited.superseded.contains(&task.task_id) {
        return Outcome::Pending;
    }
    let row = TaskRow {
        kind: target.kind,
        namespace: namespace.to_owned(),
        name: target.name.clone(),
        prov_scheme: None,
        task: task.clone(),
    };
    if task.task_state == TaskState::Finished {
        Outcome::Finished(row.final_line())
    } else {
        Outcome::Failed(row.final_line())
    }
}

/// Where `target` stands in `snapshot`. A scheme is done when its creation task finished and
/// it has `spec.machineCount` machines whose tasks finished; a machine task that failed fails
/// it. `None` when the object does not exist.
pub fn outcome(
    target: &Target,
    snapshot: &Snapshot,
    awaited: &Awaited,
    namespace: &str,
) -> Option<Outcome> {
    fn find<'a, K: Tasked>(objects: &'a [Arc<K>], name: &str) -> Option<&'a K> {
        objects
            .iter()
            .map(AsRef::as_ref)
            .find(|o| o.name_any() == name)
    }
    let name = target.name.as_str();
    match target.kind {
        TaskKind::ImageVersionSpec => {
            let spec = find(&snapshot.specs, name)?;
            Some(task_outcome(target, spec, awaited, namespace))
        }
        TaskKind::ProvVm => {
            let machine = find(&snapshot.machines, name)?;
            Some(task_outcome(target, machine, awaited, namespace))
        }
        TaskKind::ProvScheme => {
            let scheme = find(&snapshot.schemes, name)?;
            let own = task_outcome(target, scheme, awaited, namespace);
            let Outcome::Finished(_) = own else {
                return Some(own);
            };
            Some(machines_outcome(scheme, snapshot, awaited, namespace))
        }
    }
}

/// The outcome of a scheme's machines once its creation task has finished.
fn machines_outcome(
    scheme: &ProvScheme,
    snapshot: &Snapshot,
    awaited: &Awaited,
    namespace: &str,
) -> Outcome {
    let name = scheme.name_any();
    let machines: Vec<&Arc<ProvVm>> = snapshot
        .machines
        .iter()
        .filter(|m| m.spec.prov_scheme_ref == name && m.metadata.deletion_timestamp.is_none())
        .collect();
    let mut pending = false;
    for machine in &machines {
        let target = Target {
            kind: TaskKind::ProvVm,
            name: machine.name_any(),
        };
        match task_outcome(&target, machine.as_ref(), awaited, namespace) {
            Outcome::Failed(line) => return Outcome::Failed(line),
            Outcome::Pending => pending = true,
            Outcome::Finished(_) => {}
        }
    }
    let wanted = usize::try_from(scheme.spec.machine_count).unwrap_or(0);
    if pending || machines.len() != wanted {
        return Outcome::Pending;
    }
    let version = scheme
        .status
        .as_ref()
        .and_then(|s| s.provisioning_scheme_version)
        .map_or_else(String::new, |v| format!(", version {v}"));
    Outcome::Finished(format!(
        "provscheme/{name}: Finished ({wanted} machines ready{version})"
    ))
}

/// Whether every task in `snapshot` has ended, every object that gets a task (a prepared
/// spec, a scheme, a machine) has one for its current spec, and every scheme has the machines
/// it wants (what `tasks -w` waits for).
pub fn all_settled(snapshot: &Snapshot) -> bool {
    rows(snapshot).iter().all(|r| !r.task.active)
        && (snapshot.specs.iter())
            .filter(|s| s.spec.prepared.is_some())
            .all(|s| picked_up(s.as_ref()))
        && (snapshot.machines.iter())
            .all(|m| m.metadata.deletion_timestamp.is_some() || picked_up(m.as_ref()))
        && snapshot.schemes.iter().all(|scheme| {
            if !picked_up(scheme.as_ref()) {
                return false;
            }
            let machines = snapshot
                .machines
                .iter()
                .filter(|m| {
                    m.spec.prov_scheme_ref == scheme.name_any()
                        && m.namespace() == scheme.namespace()
                        && m.metadata.deletion_timestamp.is_none()
                })
                .count();
            let failed = scheme
                .task()
                .is_some_and(|t| t.task_state != TaskState::Finished && t.is_terminal());
            failed || usize::try_from(scheme.spec.machine_count).ok() == Some(machines)
        })
}

/// The rows `wait` shows for `target`: its own task and, for a scheme, its machines' tasks.
pub fn rows_of(target: &Target, rows: &[TaskRow]) -> Vec<TaskRow> {
    rows.iter()
        .filter(|r| {
            r.target() == *target
                || (target.kind == TaskKind::ProvScheme
                    && r.prov_scheme.as_deref() == Some(target.name.as_str()))
        })
        .cloned()
        .collect()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::api::TaskType;
    use serde_json::{Value, json};

    fn now() -> Timestamp {
        "2026-11-26T12:00:00Z".parse().expect("time")
    }

    /// A task record: `state` with `progress`, started 90 s before [`now`].
    pub(crate) fn task(id: &str, task_type: TaskType, state: TaskState, progress: i32) -> Value {
        let mut task = TaskStatus::start(
            task_type,
            id.into(),
            "2026-11-26T11:58:30Z".parse().expect("time"),
        );
        task.task_state = state;
        task.task_progress = progress;
        task.active = !state.is_terminal();
        task.active_elapsed_time = 60;
        task.last_update_time = "2026-11-26T11:59:30Z".parse().expect("time");
        if state.is_terminal() && state != TaskState::Finished {
            task.terminating_error = Some(crate::api::TerminatingError {
                reason: state.to_string(),
                message: format!("{state} happened\nsecond line"),
            });
        }
        serde_json::to_value(task).expect("task")
    }

    pub(crate) fn spec(name: &str, task: Option<Value>) -> Arc<ImageVersionSpec> {
        Arc::new(
            serde_json::from_value(json!({
                "apiVersion": "mcs.imaging.dev/v1alpha1", "kind": "ImageVersionSpec",
                "metadata": { "name": name, "namespace": "lab", "generation": 1 },
                "spec": { "imageVersionRef": "win11" },
                "status": { "observedGeneration": 1, "task": task },
            }))
            .expect("spec"),
        )
    }

    pub(crate) fn scheme(name: &str, count: i32, task: Option<Value>) -> Arc<ProvScheme> {
        Arc::new(
            serde_json::from_value(json!({
                "apiVersion": "mcs.imaging.dev/v1alpha1", "kind": "ProvScheme",
                "metadata": { "name": name, "namespace": "lab", "generation": 1 },
                "spec": {
                    "imageVersionSpecRef": "prepared", "hostingUnitRef": "lab",
                    "identityPoolRef": "pool", "cleanOnBoot": true,
                    "networkMapping": { "0": "XDHyp:\\HostingUnits\\lab\\lan.network" },
                    "machineCount": count,
                },
                "status": { "observedGeneration": 1, "provisioningSchemeVersion": 1, "task": task },
            }))
            .expect("scheme"),
        )
    }

    pub(crate) fn machine(name: &str, scheme: &str, task: Option<Value>) -> Arc<ProvVm> {
        Arc::new(
            serde_json::from_value(json!({
                "apiVersion": "mcs.imaging.dev/v1alpha1", "kind": "ProvVM",
                "metadata": { "name": name, "namespace": "lab", "generation": 1 },
                "spec": { "provSchemeRef": scheme, "machineName": name.to_uppercase(), "machineIndex": 1 },
                "status": { "observedGeneration": 1, "task": task },
            }))
            .expect("machine"),
        )
    }

    /// A machine of `scheme` with a task `id` in `state`.
    pub(crate) fn vm(name: &str, scheme: &str, id: &str, state: TaskState) -> Arc<ProvVm> {
        let progress = if state == TaskState::Finished {
            100
        } else {
            50
        };
        machine(name, scheme, Some(task(id, VM, state, progress)))
    }

    /// `KIND/NAME`, parsed.
    pub(crate) fn target(text: &str) -> Target {
        Target::parse(text).expect("target")
    }

    pub(crate) const PREP: TaskType = TaskType::NewImageVersionSpec;
    pub(crate) const VM: TaskType = TaskType::NewProvVm;
    pub(crate) const SCHEME: TaskType = TaskType::NewProvScheme;

    #[test]
    fn targets_parse_as_kubectl_names_them() {
        assert_eq!(target("ps/desktops").kind, TaskKind::ProvScheme);
        assert_eq!(target("ProvVMs/vdi-001").kind, TaskKind::ProvVm);
        assert_eq!(
            target("imgspec.mcs.imaging.dev/x").kind,
            TaskKind::ImageVersionSpec
        );
        assert_eq!(
            target("imageversionspec/x").to_string(),
            "imageversionspec/x"
        );
        assert_eq!(
            Target::parse("pod/x"),
            Err(TargetError::UnknownKind("pod".into()))
        );
        for bad in ["provvm", "provvm/", "/x", "provvm/a/b"] {
            assert_eq!(
                Target::parse(bad),
                Err(TargetError::NotKindSlashName(bad.into()))
            );
        }
    }

    #[test]
    fn rows_list_every_task_in_order_and_filters_keep_what_they_say() {
        let snapshot = Snapshot {
            specs: vec![
                spec(
                    "b",
                    Some(task("t1", PREP, TaskState::ConsolidatingMasterImage, 40)),
                ),
                spec("a", None),
            ],
            schemes: vec![scheme(
                "desktops",
                1,
                Some(task("t2", SCHEME, TaskState::Finished, 100)),
            )],
            machines: vec![vm(
                "vdi-001",
                "desktops",
                "t3",
                TaskState::DiskConsolidationFailed,
            )],
        };
        let all = rows(&snapshot);
        let names: Vec<String> = all.iter().map(|r| r.target().to_string()).collect();
        assert_eq!(
            names,
            [
                "imageversionspec/b",
                "provscheme/desktops",
                "provvm/vdi-001"
            ]
        );
        assert_eq!(all[2].prov_scheme.as_deref(), Some("desktops"));
        let active = Filter {
            active: true,
            failed: false,
        };
        let failed = Filter {
            active: false,
            failed: true,
        };
        assert_eq!(all.iter().filter(|r| active.keeps(r)).count(), 1);
        assert_eq!(
            all.iter()
                .filter(|r| failed.keeps(r))
                .map(|r| r.name.as_str())
                .collect::<Vec<_>>(),
            ["vdi-001"]
        );
        let json = serde_json::to_value(list_document(&all)).expect("json");
        assert_eq!(json["kind"], "TaskList");
        assert_eq!(json["items"][0]["kind"], "ImageVersionSpec");
        assert_eq!(json["items"][0]["taskState"], "ConsolidatingMasterImage");
        assert_eq!(json["items"][2]["provScheme"], "desktops");
        assert_eq!(
            json["items"][2]["terminatingError"]["reason"],
            "DiskConsolidationFailed"
        );
    }

    #[test]
    fn the_table_shows_progress_times_and_the_first_line_of_errors() {
        let snapshot = Snapshot {
            specs: vec![spec(
                "prep",
                Some(task("t1", PREP, TaskState::ConsolidatingMasterImage, 40)),
            )],
            machines: vec![vm("vdi-001", "s", "t3", TaskState::DiskConsolidationFailed)],
            ..Snapshot::default()
        };
        let text = table(&rows(&snapshot), false, now());
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("TASK "), "{text}");
        assert!(lines[0].contains("EXPECTED"), "{text}");
        assert!(lines[1].contains("imageversionspec/prep"), "{text}");
        assert!(lines[1].contains("ConsolidatingMasterImage"), "{text}");
        assert!(lines[1].contains("40%"), "{text}");
        assert!(lines[1].contains("1m30s ago"), "started: {text}");
        assert!(
            lines[1].contains("1m30s"),
            "elapsed: active time plus time since the update: {text}"
        );
        assert!(
            lines[2].ends_with("DiskConsolidationFailed happened"),
            "{text}"
        );
        assert!(!text.contains("second line"));
        let wide = table(&rows(&snapshot), true, now());
        assert!(wide.starts_with("NAMESPACE"), "{wide}");
        assert!(
            wide.lines().nth(1).is_some_and(|l| l.starts_with("lab ")),
            "{wide}"
        );
    }

    #[test]
    fn durations_read_like_kubectl_ages() {
        assert_eq!(human(-5), "0s");
        assert_eq!(human(45), "45s");
        assert_eq!(human(192), "3m12s");
        assert_eq!(human(7500), "2h5m");
        assert_eq!(human(273_600), "3d4h");
    }

    #[test]
    fn a_single_task_is_pending_until_it_ends_and_its_status_is_current() {
        let t = target("imgspec/prep");
        let one = |task: Option<Value>| Snapshot {
            specs: vec![spec("prep", task)],
            ..Snapshot::default()
        };
        let none = Awaited::default();
        assert_eq!(
            outcome(&t, &one(None), &none, "lab"),
            Some(Outcome::Pending)
        );
        let running = one(Some(task(
            "t1",
            PREP,
            TaskState::ReplicatingMasterImage,
            70,
        )));
        assert_eq!(outcome(&t, &running, &none, "lab"), Some(Outcome::Pending));
        let done = one(Some(task("t1", PREP, TaskState::Finished, 100)));
        assert_eq!(
            outcome(&t, &done, &none, "lab"),
            Some(Outcome::Finished(
                "imageversionspec/prep: Finished (NewImageVersionSpec)".into()
            ))
        );
        let failed = one(Some(task("t1", PREP, TaskState::InsufficientResources, 20)));
        let Some(Outcome::Failed(line)) = outcome(&t, &failed, &none, "lab") else {
            panic!("failed")
        };
        assert!(line.starts_with("imageversionspec/prep: InsufficientResources (NewImageVersionSpec): InsufficientResources happened"), "{line}");
        let retried = Awaited {
            superseded: ["t1".to_owned()].into(),
        };
        assert_eq!(
            outcome(&t, &failed, &retried, "lab"),
            Some(Outcome::Pending)
        );
        let mut stale = failed.clone();
        let mut object = (*stale.specs[0]).clone();
        object.metadata.generation = Some(2);
        stale.specs[0] = Arc::new(object.clone());
        assert_eq!(
            outcome(&t, &stale, &none, "lab"),
            Some(Outcome::Pending),
            "spec changed"
        );
        object.metadata.generation = Some(1);
        object
            .metadata
            .annotations
            .get_or_insert_default()
            .insert(ANNOTATION_CANCEL.into(), "true".into());
        stale.specs[0] = Arc::new(object);
        assert_eq!(
            outcome(&t, &stale, &none, "lab"),
            Some(Outcome::Pending),
            "cancel not taken up"
        );
        assert_eq!(outcome(&target("imgspec/other"), &done, &none, "lab"), None);
    }

    #[test]
    fn a_scheme_is_done_when_it_has_all_its_machines_built() {
        let t = target("ps/desktops");
        let finished = || Some(task("s", SCHEME, TaskState::Finished, 100));
        let none = Awaited::default();
        let mut snapshot = Snapshot {
            schemes: vec![scheme("desktops", 2, finished())],
            machines: vec![
                vm("vdi-001", "desktops", "m1", TaskState::Finished),
                vm("other-001", "other", "m9", TaskState::Finished),
            ],
            ..Snapshot::default()
        };
        assert_eq!(
            outcome(&t, &snapshot, &none, "lab"),
            Some(Outcome::Pending),
            "one machine missing"
        );
        let unstarted = Snapshot {
            schemes: vec![scheme("desktops", 0, None)],
            ..Snapshot::default()
        };
        assert!(
            !all_settled(&unstarted),
            "a scheme the operator has not picked up yet"
        );
        snapshot
            .machines
            .push(vm("vdi-002", "desktops", "m2", TaskState::CreatingMachines));
        assert_eq!(
            outcome(&t, &snapshot, &none, "lab"),
            Some(Outcome::Pending),
            "one still building"
        );
        assert!(!all_settled(&snapshot));
        snapshot.machines[2] = vm("vdi-002", "desktops", "m2", TaskState::Finished);
        assert_eq!(
            outcome(&t, &snapshot, &none, "lab"),
            Some(Outcome::Finished(
                "provscheme/desktops: Finished (2 machines ready, version 1)".into()
            ))
        );
        assert!(all_settled(&snapshot));
        snapshot.machines[2] = vm("vdi-002", "desktops", "m2", TaskState::Canceled);
        let Some(Outcome::Failed(line)) = outcome(&t, &snapshot, &none, "lab") else {
            panic!("a canceled machine build fails the wait")
        };
        assert!(
            line.starts_with("provvm/vdi-002: Canceled (NewProvVm)"),
            "{line}"
        );
        let mine = rows_of(&t, &rows(&snapshot));
        assert_eq!(
            mine.len(),
            3,
            "the scheme and its two machines, not the other scheme's"
        );
        snapshot.schemes[0] = scheme(
            "desktops",
            2,
            Some(task(
                "s",
                SCHEME,
                TaskState::SecurityGroupPathResolutionFailed,
                10,
            )),
        );
        let Some(Outcome::Failed(line)) = outcome(&t, &snapshot, &none, "lab") else {
            panic!("failed scheme")
        };
        assert!(
            line.contains("SecurityGroupPathResolutionFailed (NewProvScheme)"),
            "{line}"
        );
    }
}
