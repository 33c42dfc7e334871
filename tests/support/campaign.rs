//! The crash campaign's world (issue 13, campaign 1): the full life of a scheme driven through
//! the real operator binary, operator kills at seeded moments, and snapshots of everything that
//! must come out the same as in an uninterrupted run (objects and statuses without times and
//! task ids, ControllerRevisions, files in the storage roots).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::ControllerRevision;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams};
use kube::{Client, ResourceExt};
use mcs_operator::api::{
    IdentityPool, ImageVersion, ImageVersionSpec, LABEL_PROVSCHEME, PowerState, ProvScheme, ProvVm,
    TaskState, UpdateStatus,
};
use serde_json::{Value, json};

use super::operator::{Harness, PREPARED, SCHEME, ready, task_state};

/// The examples' image version, which the prepared spec belongs to.
const IMAGE_VERSION: &str = "win11-2026-11";

/// How big one life is.
#[derive(Clone, Copy, Debug)]
pub struct Sizes {
    /// Machines the scheme is created with.
    pub machines: i32,
    /// Machines started inside the update window after the configuration change.
    pub started: i32,
    /// The first scale (up).
    pub up: i32,
    /// The second scale (down).
    pub down: i32,
}

impl Sizes {
    /// The sizes: 20 machines, 5 started, 30, then 5.
    pub const FULL: Sizes = Sizes {
        machines: 20,
        started: 5,
        up: 30,
        down: 5,
    };
}

/// A tiny deterministic generator (splitmix64), so a seed always gives the same kill moments.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator for `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed ^ 0x9e37_79b9_7f4a_7c15)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `[0, 1)` (in steps of 1/10,000).
    pub fn fraction(&mut self) -> f64 {
        (self.next_u64() % 10_000) as f64 / 10_000.0
    }
}

/// When the operator is killed (SIGKILL, its whole process group) and started again: at
/// seeded moments inside seeded steps of the life, so that every step (not just the first,
/// when a loaded machine makes the life slower than the reference) gets its share.
pub struct Kills {
    /// `(step, offset from the step's start)`, in the order they fire.
    pub at: Vec<(usize, Duration)>,
    step: usize,
    step_start: Instant,
    /// Kills done so far.
    pub done: u32,
}

impl Kills {
    /// No kill: the reference run.
    pub fn none() -> Self {
        Self {
            at: Vec::new(),
            step: 0,
            step_start: Instant::now(),
            done: 0,
        }
    }

    /// `count` kills drawn from `seed`: each in a step picked at random, at a fraction of that
    /// step's length in the reference (`steps`) picked at random. The seed fixes the steps and
    /// fractions; the moments scale with the reference's timing.
    pub fn seeded(seed: u64, count: u32, steps: &[Duration]) -> Self {
        let mut rng = Rng::new(seed);
        let mut at: Vec<(usize, Duration)> = (0..count)
            .map(|_| {
                let step = (rng.next_u64() % steps.len().max(1) as u64) as usize;
                let length = steps.get(step).copied().unwrap_or(Duration::from_secs(1));
                (step, length.mul_f64(rng.fraction()))
            })
            .collect();
        at.sort();
        Self {
            at,
            step: 0,
            step_start: Instant::now(),
            done: 0,
        }
    }

    /// Step `step` of the life begins now.
    pub fn enter(&mut self, step: usize) {
        self.step = step;
        self.step_start = Instant::now();
    }

    /// Kills and restarts the operator if a kill moment has passed (a kill of a step that
    /// ended sooner than in the reference fires at once).
    pub fn tick(&mut self, h: &mut Harness) {
        let elapsed = self.step_start.elapsed();
        while self
            .at
            .get(self.done as usize)
            .is_some_and(|(step, at)| *step < self.step || (*step == self.step && *at <= elapsed))
        {
            h.kill_operator();
            h.start_operator();
            self.done += 1;
        }
    }
}

/// What a test reads the world through (cheap to clone into a check).
#[derive(Clone)]
pub struct World {
    /// A client of the API server.
    pub client: Client,
    /// The test's namespace.
    pub namespace: String,
    /// The storage roots.
    pub roots: Vec<PathBuf>,
}

impl World {
    /// The world of `h`.
    pub fn of(h: &Harness) -> Self {
        Self {
            client: h.cluster.client.clone(),
            namespace: h.cluster.namespace.clone(),
            roots: vec![h.images.clone(), h.fast.clone()],
        }
    }

    /// An `Api` in the namespace.
    pub fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
    {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    /// The scheme's machines.
    pub async fn machines(&self) -> Result<Vec<ProvVm>, String> {
        self.api::<ProvVm>()
            .list(&ListParams::default().labels(&format!("{LABEL_PROVSCHEME}={SCHEME}")))
            .await
            .map(|l| l.items)
            .map_err(|e| e.to_string())
    }

    /// The scheme, if it exists.
    pub async fn scheme(&self) -> Result<Option<ProvScheme>, String> {
        self.api::<ProvScheme>()
            .get_opt(SCHEME)
            .await
            .map_err(|e| e.to_string())
    }

    /// Merge-patches the scheme's spec.
    pub async fn patch_scheme(&self, spec: Value) {
        self.api::<ProvScheme>()
            .patch(
                SCHEME,
                &PatchParams::default(),
                &Patch::Merge(&json!({ "spec": spec })),
            )
            .await
            .expect("scheme patched");
    }

    /// Every file under the storage roots, relative to its root (prefixed with the root's
    /// index).
    pub fn files(&self) -> BTreeSet<String> {
        fn walk(root: &Path, dir: &Path, prefix: usize, out: &mut BTreeSet<String>) {
            let Ok(entries) = std::fs::read_dir(dir) else {
                return;
            };
            for entry in entries.flatten() {
                let path = entry.path();
                if path.is_dir() {
                    walk(root, &path, prefix, out);
                } else if let Ok(relative) = path.strip_prefix(root) {
                    out.insert(format!("{prefix}:{}", relative.display()));
                }
            }
        }
        let mut out = BTreeSet::new();
        for (index, root) in self.roots.iter().enumerate() {
            walk(root, root, index, &mut out);
        }
        out
    }

    /// Whether `relative` exists under one of the storage roots (or the `lab` folder of the
    /// fast one).
    pub fn exists(&self, relative: &str) -> bool {
        self.roots
            .iter()
            .flat_map(|r| [r.join(relative), r.join("lab").join(relative)])
            .any(|p| p.exists())
    }
}

/// Polls `check` every 200 ms (ticking `kills` in between) until it returns `Ok`, at most
/// `timeout`; panics with `what` and the last answer.
pub async fn until<F, Fut>(
    h: &mut Harness,
    kills: &mut Kills,
    what: &str,
    timeout: Duration,
    check: F,
) where
    F: Fn(World) -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        kills.tick(h);
        let last = check(World::of(h)).await;
        match last {
            Ok(()) => return,
            Err(last) => assert!(
                Instant::now() < deadline,
                "{}: timed out waiting for {what}; last: {last}",
                h.name
            ),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits `pause` while ticking `kills`.
pub async fn pause(h: &mut Harness, kills: &mut Kills, pause: Duration) {
    let end = Instant::now() + pause;
    while Instant::now() < end {
        kills.tick(h);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What must come out the same at one point of the life.
#[derive(Debug, PartialEq, Eq, Clone)]
pub struct Snapshot {
    /// Where in the life.
    pub milestone: &'static str,
    /// `Kind/name` -> the object without times, task ids and server bookkeeping.
    pub objects: BTreeMap<String, Value>,
    /// `name -> revision` of the ControllerRevisions.
    pub revisions: BTreeMap<String, i64>,
    /// Files in the storage roots.
    pub files: BTreeSet<String>,
}

impl Snapshot {
    /// Takes the snapshot of `world`.
    pub async fn take(milestone: &'static str, world: &World) -> Snapshot {
        let mut listed = Vec::new();
        for resource in mcs_operator::dev::api_resources() {
            let api: Api<DynamicObject> =
                Api::namespaced_with(world.client.clone(), &world.namespace, &resource);
            for object in api.list(&ListParams::default()).await.expect("list").items {
                let key = format!("{}/{}", resource.kind, object.name_any());
                listed.push((key, serde_json::to_value(&object).expect("json")));
            }
        }
        // Files and paths named after an object's uid name it by kind and name instead.
        let mut replacements: Vec<(String, String)> = world
            .roots
            .iter()
            .enumerate()
            .map(|(index, root)| {
                (
                    root.to_string_lossy().into_owned(),
                    format!("<root{index}>"),
                )
            })
            .collect();
        for (key, value) in &listed {
            if let Some(uid) = value["metadata"]["uid"].as_str() {
                replacements.push((uid.to_owned(), format!("<uid of {key}>")));
            }
        }
        let objects = listed
            .into_iter()
            .map(|(key, value)| (key, normalize(value, &replacements)))
            .collect();
        let revisions = world
            .api::<ControllerRevision>()
            .list(&ListParams::default())
            .await
            .expect("revisions")
            .items
            .into_iter()
            .map(|r| (r.name_any(), r.revision))
            .collect();
        Snapshot {
            milestone,
            objects,
            revisions,
            files: world
                .files()
                .into_iter()
                .map(|file| replace_all(file, &replacements))
                .collect(),
        }
    }

    /// What differs from `other` (empty when nothing does).
    pub fn diff(&self, other: &Snapshot) -> Vec<String> {
        let mut out = Vec::new();
        let keys: BTreeSet<&String> = self.objects.keys().chain(other.objects.keys()).collect();
        for key in keys {
            differences(
                key,
                self.objects.get(key).unwrap_or(&Value::Null),
                other.objects.get(key).unwrap_or(&Value::Null),
                &mut out,
            );
        }
        if self.revisions != other.revisions {
            out.push(format!(
                "ControllerRevisions: reference {:?}, this run {:?}",
                self.revisions, other.revisions
            ));
        }
        if self.files != other.files {
            out.push(format!(
                "files only in the reference: {:?}; only in this run: {:?}",
                self.files.difference(&other.files).collect::<Vec<_>>(),
                other.files.difference(&self.files).collect::<Vec<_>>()
            ));
        }
        out
    }
}

/// Drops what legitimately differs between two runs: server bookkeeping (uid,
/// resourceVersion, managedFields, generation, namespace), times and dates, task ids, free
/// space, and the deletion timestamp (kept as `deleting: true`); in strings, each `(from, to)`
/// of `replacements` is applied (storage roots, uids).
pub fn normalize(mut value: Value, replacements: &[(String, String)]) -> Value {
    fn strip(value: &mut Value, replacements: &[(String, String)]) {
        match value {
            Value::String(text) => *text = replace_all(std::mem::take(text), replacements),
            Value::Object(map) => {
                map.retain(|key, _| {
                    let k = key.to_ascii_lowercase();
                    !(k.contains("time")
                        || k.contains("date")
                        || k.contains("created")
                        || k.contains("free")
                        || k == "taskid"
                        || k == "uid"
                        || k == "resourceversion"
                        || k == "managedfields"
                        || k == "generation"
                        || k == "observedgeneration"
                        || k == "namespace")
                });
                for item in map.values_mut() {
                    strip(item, replacements);
                }
            }
            Value::Array(items) => items.iter_mut().for_each(|item| strip(item, replacements)),
            _ => {}
        }
    }
    let deleting = value["metadata"]["deletionTimestamp"].is_string();
    strip(&mut value, replacements);
    if let Some(metadata) = value.get_mut("metadata").and_then(Value::as_object_mut) {
        metadata.remove("annotations");
        if deleting {
            metadata.insert("deleting".into(), Value::Bool(true));
        }
    }
    value
}

/// `text` with every `(from, to)` of `replacements` applied, then any other UUID (a task id)
/// replaced by `<id>`.
fn replace_all(mut text: String, replacements: &[(String, String)]) -> String {
    static UUID: std::sync::LazyLock<regex::Regex> = std::sync::LazyLock::new(|| {
        regex::Regex::new("[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
            .expect("regex")
    });
    for (from, to) in replacements {
        if text.contains(from.as_str()) {
            text = text.replace(from.as_str(), to);
        }
    }
    UUID.replace_all(&text, "<id>").into_owned()
}

/// The JSON paths at which `a` and `b` differ, with both values.
fn differences(path: &str, a: &Value, b: &Value, out: &mut Vec<String>) {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let keys: BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            for key in keys {
                differences(
                    &format!("{path}.{key}"),
                    x.get(key).unwrap_or(&Value::Null),
                    y.get(key).unwrap_or(&Value::Null),
                    out,
                );
            }
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
            for (index, (p, q)) in x.iter().zip(y).enumerate() {
                differences(&format!("{path}[{index}]"), p, q, out);
            }
        }
        _ if a != b => out.push(format!("{path}: reference {a}, this run {b}")),
        _ => {}
    }
}

/// What one life recorded.
pub struct Life {
    /// One snapshot per milestone.
    pub snapshots: Vec<Snapshot>,
    /// Every machine name seen during the life.
    pub names: BTreeSet<String>,
    /// How long it took.
    pub took: Duration,
    /// How long each step took (from its start to its milestone).
    pub steps: Vec<Duration>,
}

fn machine_name(n: i32) -> String {
    format!("vdi-{n:03}")
}

/// Drives the whole life (see the module's doc) with `kills`, snapshotting at each milestone.
pub async fn life(h: &mut Harness, kills: &mut Kills, sizes: Sizes, timeout: Duration) -> Life {
    let started = Instant::now();
    kills.enter(0);
    let mut step_started = Instant::now();
    let mut steps = Vec::new();
    let mut snapshots = Vec::new();
    let mut names = BTreeSet::new();
    let objects: Vec<Value> = h
        .examples()
        .into_iter()
        .map(|mut o| {
            if o["kind"] == "ProvScheme" {
                o["spec"]["machineCount"] = json!(sizes.machines);
            }
            o
        })
        .collect();
    h.apply(&objects).await;

    // 1. The prepared image and the scheme with its machines.
    until(
        h,
        kills,
        "version 1 with every machine",
        timeout,
        |w| async move {
            let spec = w
                .api::<ImageVersionSpec>()
                .get(PREPARED)
                .await
                .map_err(|e| e.to_string())?;
            if task_state(spec.status.as_ref().and_then(|s| s.task.as_ref()))
                != Some(TaskState::Finished)
            {
                return Err("prepared spec not Finished".into());
            }
            scheme_settled(&w, 1, sizes.machines, sizes.machines, 0).await
        },
    )
    .await;
    snapshots.push(milestone(h, "created", &mut names).await);
    steps.push(step_started.elapsed());
    step_started = Instant::now();
    kills.enter(snapshots.len());

    // 2. A configuration change: version 2, every machine PendingUpdate.
    World::of(h).patch_scheme(json!({"vmCpuCount": 4})).await;
    until(
        h,
        kills,
        "version 2, all PendingUpdate",
        timeout,
        |w| async move { scheme_settled(&w, 2, sizes.machines, 0, sizes.machines).await },
    )
    .await;
    snapshots.push(milestone(h, "changed", &mut names).await);
    steps.push(step_started.elapsed());
    step_started = Instant::now();
    kills.enter(snapshots.len());

    // 3. The update window opens; the first machines start inside it and are rebuilt.
    let open_since = jiff::Timestamp::now()
        .checked_sub(jiff::SignedDuration::from_mins(1))
        .expect("time");
    let world = World::of(h);
    world
        .patch_scheme(
            json!({"updateWindow": {"startTime": open_since.to_string(), "durationMinutes": 120}}),
        )
        .await;
    for n in 1..=sizes.started {
        world
            .api::<ProvVm>()
            .patch(
                &machine_name(n),
                &PatchParams::default(),
                &Patch::Merge(&json!({"spec": {"powerState": "Running"}})),
            )
            .await
            .expect("machine started");
    }
    until(
        h,
        kills,
        "the started machines rebuilt",
        timeout,
        |w| async move {
            for n in 1..=sizes.started {
                let vm = w
                    .api::<ProvVm>()
                    .get(&machine_name(n))
                    .await
                    .map_err(|e| e.to_string())?;
                let status = vm.status.unwrap_or_default();
                if status.update_status != Some(UpdateStatus::UpToDate)
                    || status.provisioning_scheme_version != Some(2)
                    || status.power_state != Some(PowerState::On)
                {
                    return Err(format!(
                        "{} not rebuilt and on: {status:?}",
                        machine_name(n)
                    ));
                }
            }
            scheme_settled(
                &w,
                2,
                sizes.machines,
                sizes.started,
                sizes.machines - sizes.started,
            )
            .await
        },
    )
    .await;
    snapshots.push(milestone(h, "started", &mut names).await);
    steps.push(step_started.elapsed());
    step_started = Instant::now();
    kills.enter(snapshots.len());

    // 4. Scale up, then down.
    World::of(h)
        .patch_scheme(json!({"machineCount": sizes.up}))
        .await;
    let up_to_date = sizes.started + sizes.up - sizes.machines;
    until(h, kills, "scaled up", timeout, |w| async move {
        scheme_settled(&w, 2, sizes.up, up_to_date, sizes.machines - sizes.started).await
    })
    .await;
    snapshots.push(milestone(h, "scaled-up", &mut names).await);
    steps.push(step_started.elapsed());
    step_started = Instant::now();
    kills.enter(snapshots.len());
    World::of(h)
        .patch_scheme(json!({"machineCount": sizes.down}))
        .await;
    until(h, kills, "scaled down", timeout, |w| async move {
        let machines = w.machines().await?;
        if machines.len() != sizes.down as usize {
            return Err(format!("{} machines", machines.len()));
        }
        let scheme = w.scheme().await?.ok_or("no scheme")?;
        let status = scheme.status.unwrap_or_default();
        if status.machine_count != sizes.down || status.ready_machines != sizes.down {
            return Err(format!("scheme status {status:?}"));
        }
        pool_settled(&w, sizes.down).await
    })
    .await;
    snapshots.push(milestone(h, "scaled-down", &mut names).await);
    steps.push(step_started.elapsed());
    step_started = Instant::now();
    kills.enter(snapshots.len());

    // 5. Deleting the prepared spec while the scheme uses it waits.
    World::of(h)
        .api::<ImageVersionSpec>()
        .delete(PREPARED, &DeleteParams::default())
        .await
        .expect("delete sent");
    pause(h, kills, Duration::from_secs(3)).await;
    until(
        h,
        kills,
        "the prepared spec kept",
        timeout,
        |w| async move {
            let spec = w
                .api::<ImageVersionSpec>()
                .get_opt(PREPARED)
                .await
                .map_err(|e| e.to_string())?
                .ok_or("the prepared spec in use was deleted")?;
            if spec.metadata.deletion_timestamp.is_none() {
                return Err("no deletion timestamp yet".into());
            }
            for instance in spec.status.map(|s| s.instances).unwrap_or_default() {
                if !w.exists(&instance.path) {
                    return Err(format!("the copy {} in use is gone", instance.path));
                }
            }
            Ok(())
        },
    )
    .await;
    snapshots.push(milestone(h, "delete-blocked", &mut names).await);
    steps.push(step_started.elapsed());
    step_started = Instant::now();
    kills.enter(snapshots.len());

    // 6. Deleting the scheme removes its machines and versions, then the spec goes too.
    World::of(h)
        .api::<ProvScheme>()
        .delete(SCHEME, &DeleteParams::default())
        .await
        .expect("scheme deleted");
    until(h, kills, "scheme and spec gone", timeout, |w| async move {
        if w.scheme().await?.is_some() {
            return Err("the scheme is still there".into());
        }
        let machines = w.machines().await?;
        if !machines.is_empty() {
            return Err(format!("{} machines left", machines.len()));
        }
        let revisions = w
            .api::<ControllerRevision>()
            .list(&ListParams::default())
            .await
            .map_err(|e| e.to_string())?;
        if !revisions.items.is_empty() {
            return Err(format!("{} revisions left", revisions.items.len()));
        }
        match w.api::<ImageVersionSpec>().get_opt(PREPARED).await {
            Ok(None) => pool_settled(&w, 0).await,
            Ok(Some(_)) => Err("the prepared spec is still there".into()),
            Err(e) => Err(e.to_string()),
        }
    })
    .await;
    // Let the last writes land before the final look. Kills left over from a step that ended
    // sooner than in the reference fire here, so the image version's counts (which the
    // operator updates when the spec's removal reaches it, or at its start after a kill) are
    // awaited rather than assumed.
    pause(h, kills, Duration::from_secs(1)).await;
    until(
        h,
        kills,
        "the image version counts what is left",
        timeout,
        |w| async move {
            let version = w
                .api::<ImageVersion>()
                .get(IMAGE_VERSION)
                .await
                .map_err(|e| e.to_string())?;
            let status = version.status.unwrap_or_default();
            let counts = (status.specs_count, status.provisioning_scheme_count);
            if status.observed_generation == version.metadata.generation && counts == (1, 0) {
                Ok(())
            } else {
                Err(format!("specs and schemes counted: {counts:?}"))
            }
        },
    )
    .await;
    snapshots.push(milestone(h, "end", &mut names).await);
    steps.push(step_started.elapsed());
    Life {
        snapshots,
        names,
        took: started.elapsed(),
        steps,
    }
}

/// The scheme at `version`, with `count` machines all Ready, `up_to_date` of them UpToDate and
/// `pending` PendingUpdate, its task Finished.
async fn scheme_settled(
    w: &World,
    version: i64,
    count: i32,
    up_to_date: i32,
    pending: i32,
) -> Result<(), String> {
    let scheme = w.scheme().await?.ok_or("no scheme")?;
    let status = scheme.status.clone().unwrap_or_default();
    let settled = status.provisioning_scheme_version == Some(version)
        && status.machine_count == count
        && status.ready_machines == count
        && status.up_to_date_machines == up_to_date
        && status.pending_update_machines == pending
        && task_state(status.task.as_ref()) == Some(TaskState::Finished)
        && ready(&status.conditions);
    if !settled {
        return Err(format!(
            "scheme version {:?}, {} machines, {} ready, {} up to date, {} pending, task {:?}",
            status.provisioning_scheme_version,
            status.machine_count,
            status.ready_machines,
            status.up_to_date_machines,
            status.pending_update_machines,
            task_state(status.task.as_ref())
        ));
    }
    let machines = w.machines().await?;
    if machines.len() != count as usize {
        return Err(format!("{} ProvVMs", machines.len()));
    }
    pool_settled(w, count).await?;
    for machine in &machines {
        let status = machine.status.clone().unwrap_or_default();
        if !ready(&status.conditions) {
            return Err(format!("{} not Ready", machine.name_any()));
        }
        for disk in &status.disks {
            if !w.exists(&disk.path) {
                return Err(format!(
                    "{}'s disk {} is missing",
                    machine.name_any(),
                    disk.path
                ));
            }
        }
    }
    Ok(())
}

/// The identity pool reports `in_use` accounts.
async fn pool_settled(w: &World, in_use: i32) -> Result<(), String> {
    let pool = w
        .api::<IdentityPool>()
        .get("vdi-pool")
        .await
        .map_err(|e| e.to_string())?;
    let status = pool.status.unwrap_or_default();
    (status.accounts_in_use == Some(i64::from(in_use)))
        .then_some(())
        .ok_or_else(|| format!("pool: {:?} accounts in use", status.accounts_in_use))
}

/// A snapshot at `name`, after checking that no partial file is left and recording the
/// machine names.
async fn milestone(h: &mut Harness, name: &'static str, names: &mut BTreeSet<String>) -> Snapshot {
    let world = World::of(h);
    let partial = h.partial_files();
    assert!(
        partial.is_empty(),
        "{}: partial files at {name}: {partial:?}",
        h.name
    );
    for machine in world.machines().await.unwrap_or_default() {
        names.insert(machine.spec.machine_name.clone());
    }
    Snapshot::take(name, &world).await
}
