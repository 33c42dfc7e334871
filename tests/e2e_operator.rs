//! End-to-end tests through the real `mcs-operator` binary (`mcs-operator run`), started as a
//! separate process with `KUBECONFIG` pointing at an API server, exactly as an operator runs
//! next to a cluster. The `Local` backend does real disk work with `qemu-img` over storage
//! roots in a temporary directory (Debian: `apt-get install qemu-utils`).
//!
//! The API server is chosen by `support::cluster`: the in-repo test server by default, a real
//! control plane started from `KUBEBUILDER_ASSETS`, or an existing cluster named by
//! `MCS_E2E_KUBECONFIG`. Each test works in its own namespace `mcs-<test>-<random>`, deleted at
//! the end on a real server, and the operator still runs locally (spawned by the test with that
//! kubeconfig and `--namespace`), because the `Local` backend must see the test's temporary
//! storage directory. Tests that need the fault knobs of the test server are skipped on a real
//! one.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::NamespaceResourceScope;
use kube::Resource;
use kube::api::{Api, DynamicObject, PostParams};
use kube::core::ApiResource;
use mcs_operator::api::{ImageVersionSpec, ProvScheme, ProvVm, TaskState, UpdateStatus};
use mcs_testapi::TestApiServer;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use support::cluster::Cluster;
use support::run;

/// How long a whole flow may take to settle.
const TIMEOUT: Duration = Duration::from_secs(60);
const PREPARED: &str = "win11-2026-11-prepared";
const SCHEME: &str = "win11-desktops";
const MACHINES: [&str; 3] = ["vdi-001", "vdi-002", "vdi-003"];

/// One test's world: an API server (or a real cluster's namespace), the storage roots and the
/// operator process.
struct Harness {
    name: String,
    cluster: Cluster,
    images: PathBuf,
    fast: PathBuf,
    dir: tempfile::TempDir,
    operator: Option<Child>,
    starts: u32,
    /// A directory put first on the operator's `PATH` (a throttled `qemu-img`).
    bin: Option<PathBuf>,
}

impl Harness {
    /// Connects to the tests' API server (see `support::cluster`), creates the test's
    /// namespace and the storage roots, and writes a master image of `size` holding `data_mib`
    /// MiB of data with the snapshot `base`. The operator is not started yet.
    async fn new(name: &str, size: &str, data_mib: u32) -> Harness {
        Self::with_cluster(Cluster::start(name).await, name, size, data_mib).await
    }

    /// [`Harness::new`] on a given cluster.
    async fn with_cluster(cluster: Cluster, name: &str, size: &str, data_mib: u32) -> Harness {
        let dir = tempfile::tempdir().expect("tempdir");
        let images = dir.path().join("images");
        let fast = dir.path().join("fast");
        std::fs::create_dir_all(&images).expect("images");
        std::fs::create_dir_all(fast.join("lab")).expect("fast/lab");
        let master = images.join(mcs_operator::dev::MASTER_FILE);
        let m = master.to_string_lossy().to_string();
        run("qemu-img", &["create", "-q", "-f", "qcow2", &m, size]);
        let mut args = vec!["-f".to_owned(), "qcow2".to_owned()];
        for chunk in 0..data_mib.div_ceil(64) {
            let len = (data_mib - chunk * 64).min(64);
            args.push("-c".into());
            args.push(format!(
                "write -q -P 0x{:02x} {}M {len}M",
                0x10 + chunk % 0xe0,
                chunk * 64
            ));
        }
        if data_mib > 0 {
            args.push(m.clone());
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            run("qemu-io", &args);
        }
        run("qemu-img", &["snapshot", "-c", "base", &m]);
        Harness {
            name: name.into(),
            cluster,
            images,
            fast,
            dir,
            operator: None,
            starts: 0,
            bin: None,
        }
    }

    /// The test API server, or `None` (with a note) on a real API server.
    fn test_server(&self) -> Option<&TestApiServer> {
        self.cluster.faults_server(&self.name)
    }

    /// Makes the operator's `qemu-img convert` copy at most `rate` per second (`-r`), as a
    /// slow disk does, so a test can act while a copy is running.
    fn throttle_qemu_img(&mut self, rate: &str) {
        use std::os::unix::fs::PermissionsExt as _;
        let real = run("sh", &["-c", "command -v qemu-img"]).trim().to_owned();
        let bin = self.dir.path().join("bin");
        std::fs::create_dir_all(&bin).expect("bin");
        let wrapper = bin.join("qemu-img");
        std::fs::write(
            &wrapper,
            format!(
                "#!/bin/sh\nif [ \"$1\" = convert ]; then shift; exec {real} convert -r {rate} \"$@\"; fi\nexec {real} \"$@\"\n"
            ),
        )
        .expect("wrapper");
        std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755))
            .expect("wrapper mode");
        self.bin = Some(bin);
    }

    /// Starts `mcs-operator run` for the test's namespace, in its own process group.
    fn start_operator(&mut self) {
        use std::os::unix::process::CommandExt as _;
        self.starts += 1;
        let log = self
            .dir
            .path()
            .join(format!("operator-{}.log", self.starts));
        let file = std::fs::File::create(&log).expect("operator log");
        let mut command = Command::new(env!("CARGO_BIN_EXE_mcs-operator"));
        if let Some(bin) = &self.bin {
            let path = std::env::var_os("PATH").unwrap_or_default();
            let mut dirs = vec![bin.clone()];
            dirs.extend(std::env::split_paths(&path));
            command.env("PATH", std::env::join_paths(dirs).expect("PATH"));
        }
        let child = command
            .args([
                "run",
                "--log-format",
                "text",
                "--namespace",
                &self.cluster.namespace,
            ])
            .env("KUBECONFIG", &self.cluster.kubeconfig)
            .env("NO_COLOR", "1")
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("log file"))
            .stderr(file)
            .process_group(0)
            .spawn()
            .expect("mcs-operator starts");
        self.operator = Some(child);
    }

    /// Kills the operator and every process it started (its `qemu-img`) with SIGKILL, as
    /// when a node or container dies.
    fn kill_operator(&mut self) {
        if let Some(mut child) = self.operator.take() {
            let group = format!("-{}", child.id());
            let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// An `Api` in the test's namespace.
    fn api<K>(&self) -> Api<K>
    where
        K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>,
    {
        Api::namespaced(self.cluster.client.clone(), &self.cluster.namespace)
    }

    /// The objects of `examples/` with the storage roots moved into the test's directory.
    fn examples(&self) -> Vec<Value> {
        mcs_operator::dev::example_objects(&self.images, &self.fast).expect("examples parse")
    }

    /// Applies `objects` (server-side apply, as `kubectl apply --server-side`).
    async fn apply(&self, objects: &[Value]) {
        mcs_operator::dev::apply_objects(
            &self.cluster.client,
            &self.cluster.namespace,
            objects,
            "e2e",
        )
        .await
        .expect("examples applied");
    }

    /// Applies the examples up to the master spec and waits until the master is usable;
    /// returns the rest (the prepared spec and the scheme) for the test to create.
    async fn apply_up_to_the_master(&self) -> Vec<Value> {
        let (before, after): (Vec<Value>, Vec<Value>) = self
            .examples()
            .into_iter()
            .partition(|o| o["kind"] != "ProvScheme" && o["metadata"]["name"] != PREPARED);
        self.apply(&before).await;
        self.wait::<ImageVersionSpec>("win11-2026-11-master", "the master is usable", |s| {
            s.status.as_ref().is_some_and(|st| ready(&st.conditions))
        })
        .await;
        after
    }

    /// Creates `object` with a plain POST.
    async fn create(&self, object: &Value) -> Result<DynamicObject, kube::Error> {
        let kind = object["kind"].as_str().expect("kind");
        let resource: ApiResource = mcs_operator::dev::api_resources()
            .into_iter()
            .find(|r| r.kind == kind)
            .expect("an mcs kind");
        let api: Api<DynamicObject> = Api::namespaced_with(
            self.cluster.client.clone(),
            &self.cluster.namespace,
            &resource,
        );
        api.create(
            &PostParams::default(),
            &serde_json::from_value(object.clone()).expect("object"),
        )
        .await
    }

    /// Waits until `check` accepts object `name`; the message names `what` and the last state.
    async fn wait<K>(&self, name: &str, what: &str, check: impl Fn(&K) -> bool) -> K
    where
        K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
            + Clone
            + DeserializeOwned
            + std::fmt::Debug,
    {
        let api = self.api::<K>();
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let last = api.get_opt(name).await;
            if let Ok(Some(object)) = &last
                && check(object)
            {
                return object.clone();
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {name}: {what}; last: {last:#?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits for the whole examples flow: the prepared spec Finished at 100 %, the scheme at
    /// version 1 and Finished, three machines UpToDate with their overlay disks on disk.
    async fn wait_examples_done(&self) {
        let prepared = self
            .wait::<ImageVersionSpec>(PREPARED, "Finished", |s| {
                task_state(s.status.as_ref().and_then(|s| s.task.as_ref()))
                    == Some(TaskState::Finished)
            })
            .await;
        let task = prepared
            .status
            .as_ref()
            .and_then(|s| s.task.clone())
            .expect("task");
        assert_eq!(task.task_progress, 100);
        let instances = &prepared.status.as_ref().expect("status").instances;
        assert_eq!(instances.len(), 2, "one copy per storage: {instances:?}");
        let scheme = self
            .wait::<ProvScheme>(SCHEME, "version 1 Finished with 3 machines", |s| {
                s.status.as_ref().is_some_and(|st| {
                    st.provisioning_scheme_version == Some(1)
                        && st.up_to_date_machines == 3
                        && task_state(st.task.as_ref()) == Some(TaskState::Finished)
                })
            })
            .await;
        assert!(ready(&scheme.status.as_ref().expect("status").conditions));
        for machine in MACHINES {
            let vm = self
                .wait::<ProvVm>(machine, "UpToDate and Ready", |vm| {
                    vm.status.as_ref().is_some_and(|st| {
                        st.update_status == Some(UpdateStatus::UpToDate) && ready(&st.conditions)
                    })
                })
                .await;
            let status = vm.status.expect("status");
            assert_eq!(status.provisioning_scheme_version, Some(1));
            let os = status
                .disks
                .iter()
                .find(|d| d.name == "os")
                .expect("an os disk");
            let path = [self.images.clone(), self.fast.join("lab")]
                .iter()
                .map(|root| root.join(&os.path))
                .find(|p| p.exists())
                .unwrap_or_else(|| panic!("{machine}'s disk {} is on disk", os.path));
            let info: Value = serde_json::from_str(&run(
                "qemu-img",
                &["info", "--output=json", &path.to_string_lossy()],
            ))
            .expect("qemu-img info JSON");
            assert!(
                info["backing-filename"].as_str().is_some(),
                "{machine}'s disk is an overlay of the prepared image: {info}"
            );
        }
    }

    /// Every `*.partial-*` file or directory under the storage roots.
    fn partial_files(&self) -> Vec<PathBuf> {
        fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
            let Ok(entries) = std::fs::read_dir(dir) else {
                return;
            };
            for entry in entries.flatten() {
                let path = entry.path();
                if entry.file_name().to_string_lossy().contains(".partial-") {
                    out.push(path.clone());
                }
                if path.is_dir() {
                    walk(&path, out);
                }
            }
        }
        let mut out = Vec::new();
        walk(&self.images, &mut out);
        walk(&self.fast, &mut out);
        out
    }

    /// The last lines of the operator's logs (shown when a test fails).
    fn log_tail(&self) -> String {
        let mut out = String::new();
        for n in 1..=self.starts {
            let path = self.dir.path().join(format!("operator-{n}.log"));
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let tail = &lines[lines.len().saturating_sub(40)..];
            out.push_str(&format!(
                "--- {} (last 40 lines)\n{}\n",
                path.display(),
                tail.join("\n")
            ));
        }
        out
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.log_tail());
            if let Some(plane) = self.cluster.control_plane() {
                for component in ["kube-apiserver", "etcd"] {
                    eprintln!(
                        "--- {component} (last 60 lines)\n{}",
                        plane.log_tail(component, 60)
                    );
                }
            }
        }
        if self.cluster.is_real() {
            // A real API server: delete the namespace while the operator still runs (it
            // removes the finalizers), then stop the operator.
            let kubeconfig = self.cluster.kubeconfig.clone();
            let namespace = self.cluster.namespace.clone();
            let _ = std::thread::spawn(move || {
                let runtime = tokio::runtime::Runtime::new().expect("runtime");
                runtime.block_on(async {
                    let client = support::cluster::client(&kubeconfig).await;
                    support::cluster::delete_namespace(
                        &client,
                        &namespace,
                        Duration::from_secs(60),
                    )
                    .await;
                });
            })
            .join();
        }
        self.kill_operator();
    }
}

fn task_state(task: Option<&mcs_operator::api::TaskStatus>) -> Option<TaskState> {
    task.map(|t| t.task_state)
}

fn ready(conditions: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition]) -> bool {
    conditions
        .iter()
        .any(|c| c.type_ == "Ready" && c.status == "True")
}

/// The flow of `examples/` (storage roots moved to a temporary directory) reaches Finished and
/// Ready end to end. Needs the operator's local storage (the operator runs locally).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn examples_flow_reaches_ready() {
    let mut h = Harness::new("examples", "64M", 16).await;
    h.start_operator();
    h.apply(&h.examples()).await;
    h.wait_examples_done().await;
    assert!(h.partial_files().is_empty(), "{:?}", h.partial_files());
}

/// A ProvScheme with `vmCpuCount` and `serviceOffering` is rejected at admission with the
/// rule's message. Needs no operator and no local storage.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_violation_is_rejected_with_the_rule_message() {
    let h = Harness::new("schema", "1M", 0).await;
    let mut scheme = h
        .examples()
        .into_iter()
        .find(|o| o["kind"] == "ProvScheme")
        .expect("the example scheme");
    scheme["spec"]["serviceOffering"] = json!(r"XDHyp:\HostingUnits\lab\small.serviceoffering");
    let error = h.create(&scheme).await.expect_err("rejected");
    let kube::Error::Api(status) = error else {
        panic!("not an API error: {error}")
    };
    assert_eq!(status.code, 422, "{status:?}");
    assert!(
        status.message.contains(
            "spec.vmCpuCount and spec.vmMemoryMB cannot be used with spec.serviceOffering"
        ),
        "{}",
        status.message
    );
    assert!(
        h.api::<ProvScheme>()
            .get_opt(SCHEME)
            .await
            .expect("get")
            .is_none(),
        "nothing was stored"
    );
}

/// The operator is killed (SIGKILL, with its `qemu-img`) while it consolidates a master with
/// 128 MiB of data (copies throttled to 64 MiB/s, so the consolidation takes about 2 s),
/// started again, and the task completes with no half-written file left anywhere.
/// Needs the operator's local storage (the operator runs locally).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_killed_mid_consolidation_recovers() {
    let mut h = Harness::new("kill", "512M", 128).await;
    h.throttle_qemu_img("64M");
    h.start_operator();
    let objects: Vec<Value> = h
        .examples()
        .into_iter()
        .filter(|o| o["kind"] != "ProvScheme")
        .collect();
    h.apply(&objects).await;
    let api = h.api::<ImageVersionSpec>();
    let deadline = Instant::now() + TIMEOUT;
    let started = Instant::now();
    let mut seen = Vec::new();
    loop {
        let state = api
            .get_opt(PREPARED)
            .await
            .ok()
            .flatten()
            .and_then(|s| s.status.and_then(|s| s.task).map(|t| t.task_state));
        if seen.last().map(|(s, _)| s) != Some(&state) {
            seen.push((state, started.elapsed()));
        }
        if state == Some(TaskState::ConsolidatingMasterImage) {
            break;
        }
        assert!(
            state.is_none_or(|s| matches!(s, TaskState::Processing | TaskState::LocatingResources)),
            "the consolidation was over before it could be interrupted: {seen:?}"
        );
        assert!(Instant::now() < deadline, "no consolidation started");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // On the test server, hold back the operator's next writes while it is being killed so
    // the recorded state cannot move on between the read above and the kill.
    if let Some(server) = h.cluster.test_server() {
        server.faults().set_delay(Duration::from_secs(2));
    }
    h.kill_operator();
    if let Some(server) = h.cluster.test_server() {
        server.faults().set_delay(Duration::ZERO);
    }
    let killed = api.get(PREPARED).await.expect("spec");
    let task = killed.status.and_then(|s| s.task).expect("a task");
    assert_eq!(
        task.task_state,
        TaskState::ConsolidatingMasterImage,
        "killed during the consolidation"
    );
    let partials = h.partial_files();
    eprintln!(
        "killed at {} {} %, partial files left: {partials:?}",
        task.task_state, task.task_progress
    );
    assert!(!partials.is_empty(), "killed in the middle of writing");

    h.start_operator();
    let finished = h
        .wait::<ImageVersionSpec>(PREPARED, "Finished after the restart", |s| {
            task_state(s.status.as_ref().and_then(|s| s.task.as_ref())) == Some(TaskState::Finished)
        })
        .await;
    let status = finished.status.expect("status");
    assert_eq!(status.instances.len(), 2, "{:?}", status.instances);
    assert!(
        h.partial_files().is_empty(),
        "stray partial files: {:?}",
        h.partial_files()
    );
}

/// Every watch of the operator is dropped and 20 lists, 20 watches and 20 patches fail with
/// 500; objects created afterwards still reach Ready. Needs the test API server's faults (skipped on
/// a real cluster) and the operator's local storage.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_drops_and_server_errors_are_survived() {
    let mut h = Harness::new("faults", "64M", 16).await;
    if h.test_server().is_none() {
        return;
    }
    h.start_operator();
    let after = h.apply_up_to_the_master().await;

    let faults = h.cluster.test_server().expect("test server").faults();
    faults.drop_watches();
    for verb in ["list", "watch", "patch"] {
        faults.fail_next(verb, None, 20, 500);
    }
    for object in &after {
        h.create(object).await.expect("created");
    }
    h.wait_examples_done().await;
    let faulted = faults.requests().iter().filter(|r| r.faulted).count();
    eprintln!(
        "requests answered with 500: {faulted}, faults left unused: {}",
        faults.pending()
    );
    assert!(faulted >= 20, "the faults hit the operator ({faulted})");
}

/// On a control plane of its own, kube-apiserver is killed (SIGKILL) and kept down for 3 s
/// while the operator watches everything; objects created once it is back must still reach
/// Ready, with nothing duplicated (three machines, one scheme version). Needs a real control
/// plane started from `KUBEBUILDER_ASSETS` (on the test server, the fault-injection test above
/// covers dropped watches and 500s).
///
/// Ignored until the bug it found is fixed: after the restart, the operator's watches of
/// ImageVersionSpec resumed from their old resourceVersion are accepted by the new API server
/// but deliver nothing, so a prepared spec created then is never reconciled (run it with
/// `KUBEBUILDER_ASSETS=... cargo test --test e2e_operator -- --ignored`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "finds a bug: watches resumed after a kube-apiserver restart deliver nothing (see the closing note of issue 9)"]
async fn api_server_restart_is_survived() {
    let mut cluster = Cluster::start_private("restarts").await;
    if cluster.control_plane().is_none() {
        eprintln!(
            "restarts: needs a control plane of its own (KUBEBUILDER_ASSETS); skipped on this server"
        );
        return;
    }
    let mut h = Harness::with_cluster(cluster, "restarts", "64M", 16).await;
    h.start_operator();
    let after = h.apply_up_to_the_master().await;

    let plane = h.cluster.control_plane().expect("own control plane");
    let back =
        tokio::task::block_in_place(|| plane.restart("kube-apiserver", Duration::from_secs(3)))
            .expect("kube-apiserver restarts");
    eprintln!(
        "kube-apiserver down 3 s, ready {:.1} s after its start",
        back.as_secs_f64()
    );
    for object in &after {
        h.create(object).await.expect("created");
    }
    h.wait_examples_done().await;

    let machines = h
        .api::<ProvVm>()
        .list(&Default::default())
        .await
        .expect("machines");
    assert_eq!(machines.items.len(), 3, "no machine duplicated");
    let revisions = h
        .api::<k8s_openapi::api::apps::v1::ControllerRevision>()
        .list(&Default::default())
        .await
        .expect("revisions");
    assert_eq!(
        revisions.items.len(),
        1,
        "one scheme version, not duplicated"
    );
    assert!(h.partial_files().is_empty(), "{:?}", h.partial_files());
}
