//! Scales one ProvScheme on a real Kubernetes control plane with the real operator process and
//! prints what each step cost: the time, the API requests per machine by verb and resource (from
//! the API server's own `/metrics`), the CPU seconds of the API server, etcd, the controller
//! manager and the operator, and the operator's memory. Prints figures; asserts nothing about
//! time.
//!
//! ```sh
//! cargo bench --bench scale                              # 1000 machines
//! MCS_BENCH_MACHINES=50 cargo bench --profile dev --bench scale
//! MCS_BENCH_WATCHED=10000 cargo bench --bench scale     # also the RSS at 10,000 objects
//! ```
//!
//! The control plane is `etcd`, `kube-apiserver` and `kube-controller-manager` from
//! `KUBEBUILDER_ASSETS` (default: what `scripts/kube-assets` prints, i.e. `../shared/kube`),
//! started for this run; with `MCS_BENCH_KUBECONFIG=PATH` an existing cluster is used instead
//! (then etcd's and the controller manager's CPU are not known). The operator is the
//! `mcs-operator` binary cargo built for this benchmark (the release build under `cargo bench`),
//! or `MCS_OPERATOR_BIN`, run as `mcs-operator run --namespace NS` in its own process. Disks are
//! real qcow2 overlays made by `qemu-img` on the Local backend in a temporary folder (a 64 MiB
//! master image with 16 MiB of data).
//!
//! Phases, each timed from the spec change to what the benchmark's own watch of the ProvVms
//! shows: scale 0 → N (every machine's `Ready` condition True), a configuration change that
//! makes a new scheme version (every machine `status.updateStatus: PendingUpdate`), and a scale
//! down to N/10 (the other machines deleted). Requests per phase are the deltas of
//! `apiserver_request_total` of clients outside the control plane (the series whose
//! `system_client` label is empty: the controller manager's and the API server's own requests
//! are shown apart) minus the benchmark's own requests, which it counts as it makes them (the
//! spec patch, and its watch: one `LIST` when it starts, one `WATCH` per watch request when it
//! ends, which is when the server counts it; the server does not count `/metrics`). What is
//! left is the operator's; the rate of the same count while nothing happens is printed too.
//!
//! Settings (environment): `MCS_BENCH_MACHINES` (1000), `MCS_BENCH_BATCH` (the scheme's
//! `initialBatchSizeHint`, 100), `MCS_BENCH_TIMEOUT` (seconds each phase may take, 300),
//! `MCS_BENCH_WATCHED` (0: off; else after the phases the benchmark adds ControllerRevisions
//! the operator watches — copies of the scheme's own version, labelled for a scheme that does
//! not exist, so nothing reconciles them — until this many objects are watched, restarts the
//! operator and reads its settled RSS).

#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures::{StreamExt as _, TryStreamExt as _};
use k8s_openapi::api::apps::v1::ControllerRevision;
use kube::api::{
    Api, DynamicObject, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams,
};
use kube::{Client, ResourceExt as _};
use mcs_operator::api::{
    ImageVersionSpec, LABEL_PROVSCHEME, ProvScheme, ProvVm, TaskState, UpdateStatus, condition_type,
};
use serde_json::json;
use support::cluster::{Cluster, Mode};
use support::operator::{Harness, PREPARED, ready};
use tokio::sync::watch;

/// The benchmark's scheme.
const SCHEME: &str = "bench";
/// The scheme label of the extra watched ControllerRevisions (no such scheme exists).
const WATCHED_SCHEME: &str = "bench-watched";

fn main() -> anyhow::Result<()> {
    // `cargo bench` passes `--bench`; `cargo test --all-targets` does not: then only say so.
    if !std::env::args().any(|a| a == "--bench") {
        println!("scale: skipped (a benchmark; run it with `cargo bench --bench scale`)");
        return Ok(());
    }
    let settings = Settings::from_env()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run(settings))
}

/// What the environment asks for.
struct Settings {
    machines: usize,
    batch: i32,
    timeout: Duration,
    watched: usize,
    mode: Mode,
}

impl Settings {
    fn from_env() -> anyhow::Result<Settings> {
        fn number(name: &str, default: usize) -> anyhow::Result<usize> {
            match std::env::var(name) {
                Ok(v) => v
                    .parse()
                    .with_context(|| format!("{name}={v} is not a number")),
                Err(_) => Ok(default),
            }
        }
        let mode = match std::env::var_os("MCS_BENCH_KUBECONFIG") {
            Some(path) => Mode::Kubeconfig(PathBuf::from(path)),
            None => Mode::Assets(kube_assets()?),
        };
        Ok(Settings {
            machines: number("MCS_BENCH_MACHINES", 1000)?.max(1),
            batch: i32::try_from(number("MCS_BENCH_BATCH", 100)?)?,
            timeout: Duration::from_secs(number("MCS_BENCH_TIMEOUT", 300)? as u64),
            watched: number("MCS_BENCH_WATCHED", 0)?,
            mode,
        })
    }
}

/// `KUBEBUILDER_ASSETS`, else what `scripts/kube-assets` prints.
fn kube_assets() -> anyhow::Result<PathBuf> {
    if let Some(config) = mcs_testapi::control_plane::ControlPlaneConfig::from_env() {
        return Ok(config.assets);
    }
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/kube-assets");
    let out = std::process::Command::new(&script)
        .output()
        .with_context(|| format!("running {}", script.display()))?;
    anyhow::ensure!(
        out.status.success(),
        "no control plane: set KUBEBUILDER_ASSETS or MCS_BENCH_KUBECONFIG ({} found none: {})",
        script.display(),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(PathBuf::from(String::from_utf8(out.stdout)?.trim()))
}

/// Request counts by verb and resource (`provvms/status`; a path such as `/apis` for
/// non-resource URLs).
#[derive(Clone, Debug, Default)]
struct Requests(BTreeMap<(String, String), f64>);

impl Requests {
    fn add(&mut self, verb: &str, resource: &str, n: f64) {
        *self.0.entry((verb.into(), resource.into())).or_default() += n;
    }

    /// `self - other`, key by key.
    fn minus(&self, other: &Requests) -> Requests {
        let mut out = self.clone();
        for (key, n) in &other.0 {
            *out.0.entry(key.clone()).or_default() -= n;
        }
        out.0.retain(|_, n| n.abs() > 0.5);
        out
    }

    fn total(&self) -> f64 {
        // `+ 0.0`: an empty sum is -0.0.
        self.0.values().sum::<f64>() + 0.0
    }
}

/// The benchmark's own requests, counted as it makes them.
#[derive(Clone, Default)]
struct Own(Arc<Mutex<Requests>>);

impl Own {
    fn count(&self, verb: &str, resource: &str) {
        self.0
            .lock()
            .expect("own requests")
            .add(verb, resource, 1.0);
    }

    fn snapshot(&self) -> Requests {
        self.0.lock().expect("own requests").clone()
    }
}

/// What the API server's `/metrics` says.
#[derive(Clone, Debug, Default)]
struct ServerMetrics {
    /// Requests of clients that are not part of the control plane (the operator and the
    /// benchmark).
    requests: Requests,
    /// Requests of the control plane's own clients (label `system_client`: the controller
    /// manager, the API server itself).
    system: f64,
    cpu_seconds: Option<f64>,
}

/// Reads `apiserver_request_total` (summed over codes and scopes, split by whether the
/// `system_client` label names a control-plane component) and `process_cpu_seconds_total` from
/// the Prometheus text of the API server's `/metrics`.
fn parse_metrics(text: &str) -> ServerMetrics {
    let mut out = ServerMetrics::default();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("process_cpu_seconds_total ") {
            out.cpu_seconds = rest.trim().parse().ok();
        }
        let Some(rest) = line.strip_prefix("apiserver_request_total{") else {
            continue;
        };
        let Some((labels, value)) = rest.rsplit_once("} ") else {
            continue;
        };
        let Ok(value) = value.trim().parse::<f64>() else {
            continue;
        };
        let labels: BTreeMap<&str, &str> = labels
            .split("\",")
            .filter_map(|pair| pair.split_once("=\""))
            .map(|(k, v)| (k, v.trim_end_matches('"')))
            .collect();
        if labels.get("system_client").is_some_and(|c| !c.is_empty()) {
            out.system += value;
            continue;
        }
        let resource = match (labels.get("resource"), labels.get("subresource")) {
            (Some(r), Some(s)) if !r.is_empty() && !s.is_empty() => format!("{r}/{s}"),
            (Some(r), _) if !r.is_empty() => (*r).to_owned(),
            (_, Some(path)) => format!("/{}", path.trim_start_matches('/')),
            _ => "/".to_owned(),
        };
        out.requests
            .add(labels.get("verb").copied().unwrap_or("?"), &resource, value);
    }
    out
}

/// CPU and memory of one process from `/proc`.
#[derive(Clone, Copy, Debug, Default)]
struct ProcSample {
    /// User + system CPU seconds of the process itself.
    cpu: f64,
    /// CPU seconds of its waited-for children (the operator's `qemu-img`).
    children_cpu: f64,
    rss_kib: u64,
    hwm_kib: u64,
}

/// The 1-minute load average (the machine may be shared; figures are worth less under load).
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "n/a".into())
}

fn clock_ticks() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

fn proc_sample(pid: u32, ticks: f64) -> Option<ProcSample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) start at field 3 (state).
    let fields: Vec<f64> = stat
        .rsplit_once(')')?
        .1
        .split_whitespace()
        .map(|f| f.parse().unwrap_or(0.0))
        .collect();
    let field = |n: usize| fields.get(n - 3).copied().unwrap_or(0.0);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    };
    Some(ProcSample {
        cpu: (field(14) + field(15)) / ticks,
        children_cpu: (field(16) + field(17)) / ticks,
        rss_kib: kib("VmRSS:"),
        hwm_kib: kib("VmHWM:"),
    })
}

/// What the benchmark's watch shows of one machine.
#[derive(Clone, Copy, Debug)]
struct Machine {
    ready: bool,
    update: Option<UpdateStatus>,
}

/// Every machine of the namespace, kept by [`follow`].
#[derive(Clone, Debug, Default)]
struct Fleet {
    machines: BTreeMap<String, Machine>,
    /// Set once the first list arrived.
    synced: bool,
}

impl Fleet {
    fn ready(&self) -> usize {
        self.machines.values().filter(|m| m.ready).count()
    }

    fn pending_update(&self) -> usize {
        self.machines
            .values()
            .filter(|m| m.update == Some(UpdateStatus::PendingUpdate))
            .count()
    }

    fn upsert(&mut self, vm: &ProvVm) {
        let status = vm.status.as_ref();
        let machine = Machine {
            ready: status.is_some_and(|s| {
                s.conditions
                    .iter()
                    .any(|c| c.type_ == condition_type::READY && c.status == "True")
            }),
            update: status.and_then(|s| s.update_status),
        };
        self.machines.insert(vm.name_any(), machine);
    }
}

/// Keeps `fleet` up to date with one list and then watch requests (each at most 290 s),
/// counting them in `own`: a `LIST` when made, a `WATCH` when it ends.
async fn follow(api: Api<ProvVm>, fleet: watch::Sender<Fleet>, own: Own) {
    loop {
        own.count("LIST", "provvms");
        let list = match api.list(&ListParams::default()).await {
            Ok(list) => list,
            Err(error) => {
                eprintln!("scale: listing machines: {error}");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let mut version = list.metadata.resource_version.unwrap_or_default();
        fleet.send_modify(|f| {
            f.machines.clear();
            for vm in &list.items {
                f.upsert(vm);
            }
            f.synced = true;
        });
        loop {
            let params = WatchParams::default().timeout(290);
            let stream = match api.watch(&params, &version).await {
                Ok(stream) => stream,
                Err(error) => {
                    eprintln!("scale: watching machines: {error}");
                    break;
                }
            };
            let mut stream = std::pin::pin!(stream);
            let mut expired = false;
            while let Some(event) = stream.next().await {
                match event {
                    Ok(WatchEvent::Added(vm) | WatchEvent::Modified(vm)) => {
                        version = vm.resource_version().unwrap_or(version);
                        fleet.send_modify(|f| f.upsert(&vm));
                    }
                    Ok(WatchEvent::Deleted(vm)) => {
                        version = vm.resource_version().unwrap_or(version);
                        fleet.send_modify(|f| {
                            f.machines.remove(&vm.name_any());
                        });
                    }
                    Ok(WatchEvent::Bookmark(mark)) => version = mark.metadata.resource_version,
                    Ok(WatchEvent::Error(error)) => {
                        expired = error.code == 410;
                        if !expired {
                            eprintln!("scale: watch error: {error:?}");
                        }
                        break;
                    }
                    Err(error) => {
                        eprintln!("scale: watch stream: {error}");
                        break;
                    }
                }
            }
            own.count("WATCH", "provvms");
            if expired {
                break;
            }
        }
    }
}

/// Process ids whose CPU and memory the benchmark reads.
#[derive(Clone, Copy, Debug, Default)]
struct Pids {
    etcd: Option<u32>,
    kcm: Option<u32>,
}

/// Everything measured at one moment.
#[derive(Clone, Debug)]
struct Snapshot {
    server: ServerMetrics,
    own: Requests,
    operator: Option<ProcSample>,
    etcd: Option<ProcSample>,
    kcm: Option<ProcSample>,
}

/// The figures of one phase.
#[derive(Clone, Debug)]
struct Phase {
    name: String,
    /// The machines the phase is about (the per-machine denominator).
    machines: usize,
    elapsed: Duration,
    /// `None` when done; else how far it got when the time ran out.
    unfinished: Option<String>,
    requests: Requests,
    /// Requests of the control plane's own clients.
    system: f64,
    apiserver_cpu: Option<f64>,
    etcd_cpu: Option<f64>,
    kcm_cpu: Option<f64>,
    operator_cpu: Option<f64>,
    qemu_cpu: Option<f64>,
    rss_mib: Option<f64>,
    hwm_mib: Option<f64>,
}

/// The run: the operator's world, the benchmark's client and watch, and what it measured.
struct Bench {
    harness: Harness,
    own: Own,
    pids: Pids,
    ticks: f64,
    fleet: watch::Receiver<Fleet>,
    /// The task running [`follow`].
    follower: tokio::task::JoinHandle<()>,
    timeout: Duration,
}

impl Bench {
    fn client(&self) -> Client {
        self.harness.cluster.client.clone()
    }

    fn operator(&self) -> Option<ProcSample> {
        let pid = self.harness.operator.as_ref()?.id();
        proc_sample(pid, self.ticks)
    }

    async fn metrics(&self) -> anyhow::Result<ServerMetrics> {
        // kube-core's request builder makes `GET /metrics` (no `http` dependency needed). The
        // server does not count `/metrics` in `apiserver_request_total`.
        let request = kube::core::Request::new("").get("metrics", &Default::default())?;
        let text = self.client().request_text(request).await?;
        Ok(parse_metrics(&text))
    }

    async fn snapshot(&self) -> anyhow::Result<Snapshot> {
        let own = self.own.snapshot();
        let server = self.metrics().await?;
        Ok(Snapshot {
            server,
            own,
            operator: self.operator(),
            etcd: self.pids.etcd.and_then(|p| proc_sample(p, self.ticks)),
            kcm: self.pids.kcm.and_then(|p| proc_sample(p, self.ticks)),
        })
    }

    async fn patch_scheme(&self, patch: serde_json::Value) -> anyhow::Result<()> {
        self.own.count("PATCH", "provschemes");
        self.harness
            .api::<ProvScheme>()
            .patch(SCHEME, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        Ok(())
    }

    /// Applies `change` to the scheme's spec and waits until `done` holds for the fleet (at
    /// most the phase timeout), printing progress every 5 s.
    async fn phase(
        &mut self,
        name: &str,
        machines: usize,
        change: serde_json::Value,
        done: impl Fn(&Fleet) -> bool,
        progress: impl Fn(&Fleet) -> String,
    ) -> anyhow::Result<Phase> {
        println!("scale: {name} ... (load average {})", load_average());
        let before = self.snapshot().await?;
        let started = Instant::now();
        self.patch_scheme(change).await?;
        let deadline = tokio::time::Instant::now() + self.timeout;
        let mut last_print = Instant::now();
        let unfinished = loop {
            if done(&self.fleet.borrow_and_update()) {
                break None;
            }
            if last_print.elapsed() >= Duration::from_secs(5) {
                println!(
                    "  {:>6.1} s: {}",
                    started.elapsed().as_secs_f64(),
                    progress(&self.fleet.borrow())
                );
                last_print = Instant::now();
            }
            let wake = deadline.min(tokio::time::Instant::now() + Duration::from_secs(1));
            if let Ok(changed) = tokio::time::timeout_at(wake, self.fleet.changed()).await {
                changed.context("the benchmark's watch ended")?;
            } else if tokio::time::Instant::now() >= deadline {
                break Some(progress(&self.fleet.borrow()));
            }
        };
        let elapsed = started.elapsed();
        let after = self.snapshot().await?;
        let own = after.own.minus(&before.own);
        let requests = after.server.requests.minus(&before.server.requests);
        let delta = |a: Option<f64>, b: Option<f64>| Some(a? - b?);
        let cpu = |s: &Option<ProcSample>| s.map(|p| p.cpu);
        let phase = Phase {
            name: name.into(),
            machines,
            elapsed,
            unfinished,
            requests: requests.minus(&own),
            system: after.server.system - before.server.system,
            apiserver_cpu: delta(after.server.cpu_seconds, before.server.cpu_seconds),
            etcd_cpu: delta(cpu(&after.etcd), cpu(&before.etcd)),
            kcm_cpu: delta(cpu(&after.kcm), cpu(&before.kcm)),
            operator_cpu: delta(cpu(&after.operator), cpu(&before.operator)),
            qemu_cpu: delta(
                after.operator.map(|p| p.children_cpu),
                before.operator.map(|p| p.children_cpu),
            ),
            rss_mib: after.operator.map(|p| p.rss_kib as f64 / 1024.0),
            hwm_mib: after.operator.map(|p| p.hwm_kib as f64 / 1024.0),
        };
        match &phase.unfinished {
            None => println!(
                "scale: {name}: {:.1} s ({:.1} machines/s; load average {})",
                elapsed.as_secs_f64(),
                machines as f64 / elapsed.as_secs_f64(),
                load_average()
            ),
            Some(at) => {
                println!(
                    "scale: {name}: NOT DONE within {} s: {at}",
                    self.timeout.as_secs()
                );
                self.own.count("GET", "provschemes");
                if let Ok(scheme) = self.harness.api::<ProvScheme>().get(SCHEME).await {
                    for c in scheme.status.map(|s| s.conditions).unwrap_or_default() {
                        println!(
                            "  scheme {} {}: {} ({})",
                            c.type_, c.status, c.reason, c.message
                        );
                    }
                }
            }
        }
        Ok(phase)
    }

    /// The objects the operator watches in the namespace: every mcs kind and the
    /// ControllerRevisions labelled with a scheme.
    async fn watched_objects(&self) -> anyhow::Result<usize> {
        let client = self.client();
        let namespace = &self.harness.cluster.namespace;
        let mut count = 0;
        for resource in mcs_operator::dev::api_resources() {
            self.own.count("LIST", &resource.plural);
            let api: Api<DynamicObject> =
                Api::namespaced_with(client.clone(), namespace, &resource);
            count += api.list_metadata(&ListParams::default()).await?.items.len();
        }
        self.own.count("LIST", "controllerrevisions");
        count += self
            .harness
            .api::<ControllerRevision>()
            .list_metadata(&ListParams::default().labels(LABEL_PROVSCHEME))
            .await?
            .items
            .len();
        Ok(count)
    }

    /// The operator's RSS (KiB) once it has not changed by more than 256 KiB for 3 s (at most
    /// `max`).
    async fn settled_rss(&self, max: Duration) -> Option<u64> {
        let deadline = Instant::now() + max;
        let mut last = self.operator()?.rss_kib;
        let mut steady = Instant::now();
        while Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let now = self.operator()?.rss_kib;
            if now.abs_diff(last) > 256 {
                steady = Instant::now();
                last = now;
            } else if steady.elapsed() >= Duration::from_secs(3) {
                return Some(now);
            }
        }
        Some(last)
    }

    /// Adds ControllerRevisions (copies of the scheme's first version, labelled for a scheme
    /// that does not exist) until `target` objects are watched; returns how many it made.
    async fn add_watched(&self, target: usize) -> anyhow::Result<usize> {
        let have = self.watched_objects().await?;
        let missing = target.saturating_sub(have);
        let api = self.harness.api::<ControllerRevision>();
        self.own.count("LIST", "controllerrevisions");
        let template = api
            .list(&ListParams::default().labels(&format!("{LABEL_PROVSCHEME}={SCHEME}")))
            .await?
            .items
            .into_iter()
            .next()
            .context("the scheme has no stored version to copy")?;
        let started = Instant::now();
        let made = futures::stream::iter(0..missing)
            .map(|i| {
                let api = api.clone();
                let revision = ControllerRevision {
                    metadata: kube::api::ObjectMeta {
                        name: Some(format!("{WATCHED_SCHEME}-{i:05}")),
                        labels: Some(BTreeMap::from([(
                            LABEL_PROVSCHEME.to_owned(),
                            WATCHED_SCHEME.to_owned(),
                        )])),
                        ..Default::default()
                    },
                    data: template.data.clone(),
                    revision: 1,
                };
                self.own.count("POST", "controllerrevisions");
                async move { api.create(&PostParams::default(), &revision).await }
            })
            .buffer_unordered(16)
            .try_fold(0usize, |n, _| async move { Ok(n + 1) })
            .await?;
        println!(
            "scale: made {made} ControllerRevisions in {:.1} s",
            started.elapsed().as_secs_f64()
        );
        Ok(made)
    }
}

/// Waits (polling, before the measured phases) until `check` accepts object `name`.
async fn await_object<K>(
    harness: &Harness,
    name: &str,
    what: &str,
    timeout: Duration,
    check: impl Fn(&K) -> bool,
) -> anyhow::Result<()>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(object) = harness.api::<K>().get_opt(name).await?
            && check(&object)
        {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{name} is not {what} after {} s\n{}",
            timeout.as_secs(),
            harness.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Starts the control plane, the operator and the scheme (0 machines), up to the first phase.
async fn prepare(settings: &Settings) -> anyhow::Result<Bench> {
    let started = Instant::now();
    let mut cluster = Cluster::start_in("bench", settings.mode.clone()).await;
    let pids = cluster
        .control_plane()
        .map(|plane| Pids {
            etcd: plane.pid("etcd"),
            kcm: plane.pid("kube-controller-manager"),
        })
        .unwrap_or_default();
    let mut harness = Harness::with_cluster(cluster, "bench", "64M", 16).await;
    harness.start_operator();
    println!(
        "scale: operator {} (pid {}), namespace {}",
        support::operator::operator_binary().display(),
        harness.operator.as_ref().map_or(0, |c| c.id()),
        harness.cluster.namespace
    );
    // The examples, with an identity pool that can name more than 999 machines (`VDI-###`
    // cannot), applied up to the master spec.
    let mut examples = harness.examples();
    for object in &mut examples {
        if object["kind"] == "IdentityPool" {
            object["spec"]["namingScheme"] = json!("VDI-#####");
        }
    }
    let (before, rest): (Vec<_>, Vec<_>) = examples
        .into_iter()
        .partition(|o| o["kind"] != "ProvScheme" && o["metadata"]["name"] != PREPARED);
    harness.apply(&before).await;
    await_object::<ImageVersionSpec>(
        &harness,
        "win11-2026-11-master",
        "usable",
        Duration::from_secs(300),
        |s| s.status.as_ref().is_some_and(|st| ready(&st.conditions)),
    )
    .await?;
    let prepared = rest
        .iter()
        .find(|o| o["metadata"]["name"] == PREPARED)
        .context("the examples' prepared spec")?;
    harness.apply(std::slice::from_ref(prepared)).await;
    await_object::<ImageVersionSpec>(
        &harness,
        PREPARED,
        "Finished",
        Duration::from_secs(300),
        |s| {
            s.status
                .as_ref()
                .and_then(|s| s.task.as_ref())
                .is_some_and(|t| t.task_state == TaskState::Finished)
        },
    )
    .await?;
    let mut scheme = rest
        .into_iter()
        .find(|o| o["kind"] == "ProvScheme")
        .context("the examples' scheme")?;
    scheme["metadata"]["name"] = json!(SCHEME);
    scheme["spec"]["machineCount"] = json!(0);
    scheme["spec"]["initialBatchSizeHint"] = json!(settings.batch);
    harness
        .create(&scheme)
        .await
        .context("creating the scheme")?;
    await_object::<ProvScheme>(
        &harness,
        SCHEME,
        "at version 1",
        Duration::from_secs(120),
        |s| {
            s.status
                .as_ref()
                .and_then(|s| s.provisioning_scheme_version)
                == Some(1)
        },
    )
    .await?;
    let own = Own::default();
    let (sender, fleet) = watch::channel(Fleet::default());
    let follower = tokio::spawn(follow(harness.api::<ProvVm>(), sender, own.clone()));
    let mut bench = Bench {
        harness,
        own,
        pids,
        ticks: clock_ticks(),
        fleet,
        follower,
        timeout: settings.timeout,
    };
    tokio::time::timeout(Duration::from_secs(60), bench.fleet.wait_for(|f| f.synced))
        .await
        .context("the benchmark's watch of the machines did not start within 60 s")??;
    println!(
        "scale: ready to measure after {:.1} s (control plane, image, scheme at version 1)",
        started.elapsed().as_secs_f64()
    );
    Ok(bench)
}

/// Memory figures.
#[derive(Debug, Default)]
struct Memory {
    /// (watched objects, settled RSS KiB) with few objects, after the scale-up, with the extra
    /// watched objects on the same process and on a restarted operator.
    few: Option<(usize, u64)>,
    full: Option<(usize, u64)>,
    extra: Option<(usize, u64)>,
    restarted: Option<(usize, u64)>,
}

async fn run(settings: Settings) -> anyhow::Result<()> {
    let n = settings.machines;
    let down = n / 10;
    println!(
        "scale: {n} machines, one scheme (initialBatchSizeHint {}), Local backend, real control plane ({})",
        settings.batch,
        match &settings.mode {
            Mode::Kubeconfig(path) => format!("kubeconfig {}", path.display()),
            Mode::Assets(path) => format!("started from {}", path.display()),
            Mode::TestServer => "test server".into(),
        }
    );
    let mut bench = prepare(&settings).await?;
    let mut memory = Memory::default();
    let few = bench.watched_objects().await?;
    memory.few = bench
        .settled_rss(Duration::from_secs(20))
        .await
        .map(|r| (few, r));

    // The background: nothing changes for 5 s (operator idle, control plane leases).
    let idle = Duration::from_secs(5);
    let before = bench.snapshot().await?;
    tokio::time::sleep(idle).await;
    let after = bench.snapshot().await?;
    let background = after
        .server
        .requests
        .minus(&before.server.requests)
        .minus(&after.own.minus(&before.own));

    let mut phases = Vec::new();
    let up = bench
        .phase(
            &format!("scale 0 -> {n}"),
            n,
            json!({"spec": {"machineCount": n}}),
            move |f| f.machines.len() == n && f.ready() == n,
            |f| format!("{} machines, {} Ready", f.machines.len(), f.ready()),
        )
        .await?;
    let mut finished = up.unfinished.is_none();
    phases.push(up);
    if finished {
        let full = bench.watched_objects().await?;
        memory.full = bench
            .settled_rss(Duration::from_secs(30))
            .await
            .map(|r| (full, r));
        let change = bench
            .phase(
                "new version -> PendingUpdate",
                n,
                json!({"spec": {"vmMemoryMB": 8192}}),
                move |f| f.pending_update() == n,
                |f| {
                    format!(
                        "{} of {} machines PendingUpdate",
                        f.pending_update(),
                        f.machines.len()
                    )
                },
            )
            .await?;
        finished = change.unfinished.is_none();
        phases.push(change);
    }
    if finished {
        let scale_down = bench
            .phase(
                &format!("scale {n} -> {down}"),
                n - down,
                json!({"spec": {"machineCount": down}}),
                move |f| f.machines.len() == down,
                |f| format!("{} machines left", f.machines.len()),
            )
            .await?;
        finished = scale_down.unfinished.is_none();
        phases.push(scale_down);
    }
    if finished && settings.watched > 0 {
        bench.add_watched(settings.watched).await?;
        let watched = bench.watched_objects().await?;
        memory.extra = bench
            .settled_rss(Duration::from_secs(60))
            .await
            .map(|r| (watched, r));
        bench.harness.kill_operator();
        bench.harness.start_operator();
        // A fresh operator lists everything; give it time to reconcile what is there.
        tokio::time::sleep(Duration::from_secs(5)).await;
        memory.restarted = bench
            .settled_rss(Duration::from_secs(120))
            .await
            .map(|r| (watched, r));
    }

    bench.follower.abort();
    print_report(&settings, &phases, &background, idle, &memory);
    anyhow::ensure!(finished, "a phase did not finish in time (see above)");
    Ok(())
}

fn opt(v: Option<f64>, precision: usize) -> String {
    v.map_or_else(|| "n/a".into(), |v| format!("{v:.precision$}"))
}

fn print_report(
    settings: &Settings,
    phases: &[Phase],
    background: &Requests,
    idle: Duration,
    memory: &Memory,
) {
    println!();
    println!(
        "scale: results ({} machines; requests are the API server's apiserver_request_total deltas minus the benchmark's own)",
        settings.machines
    );
    println!(
        "{:<30} {:>8} {:>9} {:>8} {:>8} {:>8} {:>8} {:>7} {:>7} {:>8} {:>7} {:>8} {:>8}",
        "phase",
        "time s",
        "mach/s",
        "requests",
        "req/mach",
        "ctl-pl.",
        "api CPU",
        "etcd",
        "kcm",
        "operator",
        "qemu",
        "RSS MiB",
        "peak MiB"
    );
    for p in phases {
        let secs = p.elapsed.as_secs_f64();
        println!(
            "{:<30} {:>8} {:>9} {:>8.0} {:>8.2} {:>8.0} {:>8} {:>7} {:>7} {:>8} {:>7} {:>8} {:>8}",
            p.name,
            match p.unfinished {
                None => format!("{secs:.1}"),
                Some(_) => format!(">{secs:.0}"),
            },
            match p.unfinished {
                None => format!("{:.1}", p.machines as f64 / secs),
                Some(_) => "-".into(),
            },
            p.requests.total(),
            p.requests.total() / p.machines as f64,
            p.system,
            opt(p.apiserver_cpu, 1),
            opt(p.etcd_cpu, 1),
            opt(p.kcm_cpu, 1),
            opt(p.operator_cpu, 1),
            opt(p.qemu_cpu, 1),
            opt(p.rss_mib, 1),
            opt(p.hwm_mib, 1),
        );
    }
    println!(
        "(ctl-pl.: requests of the control plane's own clients, not counted in requests; CPU in seconds during the phase: API server, etcd, controller manager, operator, its qemu-img children; RSS and peak: the operator's VmRSS and VmHWM at the end of the phase)"
    );
    for p in phases {
        println!();
        println!("{}: requests by verb and resource", p.name);
        for ((verb, resource), count) in &p.requests.0 {
            println!(
                "  {verb:<7} {resource:<32} {count:>7.0}  {:>6.2}/machine",
                count / p.machines as f64
            );
        }
    }
    println!();
    println!(
        "idle background before the first phase ({} s, operator idle): {:.1} requests/s",
        idle.as_secs(),
        background.total() / idle.as_secs_f64()
    );
    for ((verb, resource), count) in &background.0 {
        println!("  {verb:<7} {resource:<32} {count:>7.0}");
    }
    println!();
    let mib = |kib: u64| kib as f64 / 1024.0;
    println!(
        "operator RSS (settled VmRSS) by watched objects (every mcs object of the namespace and the labelled ControllerRevisions); issue 11's target is 20 MiB + 4 KiB per object"
    );
    let Some((few_objects, few_kib)) = memory.few else {
        return;
    };
    println!(
        "  {:<48} {:>7} objects {:>7.1} MiB",
        "few objects (scheme at version 1, no machines)",
        few_objects,
        mib(few_kib)
    );
    for (what, point) in [
        ("after the scale-up (same process)", memory.full),
        ("extra objects added (same process)", memory.extra),
        ("extra objects, operator restarted", memory.restarted),
    ] {
        let Some((objects, kib)) = point else {
            continue;
        };
        let per = (kib as f64 - few_kib as f64) / objects.saturating_sub(few_objects).max(1) as f64;
        let base = few_kib as f64 - per * few_objects as f64;
        println!(
            "  {what:<48} {objects:>7} objects {:>7.1} MiB  => {:.1} MiB + {per:.1} KiB per object (target at this count: {:.1} MiB)",
            mib(kib),
            base / 1024.0,
            20.0 + 4.0 * objects as f64 / 1024.0
        );
    }
}
