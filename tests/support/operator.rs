//! The operator under test: one test's world of an API server namespace, storage roots with a
//! master image, and the real `mcs-operator run` binary as a separate process, exactly as an
//! operator runs next to a cluster. Shared by the end-to-end suites.

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
use serde_json::Value;

use super::cluster::Cluster;
use super::run;

/// How long a whole flow may take to settle.
pub const TIMEOUT: Duration = Duration::from_secs(60);
pub const PREPARED: &str = "win11-2026-11-prepared";
pub const SCHEME: &str = "win11-desktops";
pub const MACHINES: [&str; 3] = ["vdi-001", "vdi-002", "vdi-003"];

/// One test's world: an API server (or a real cluster's namespace), the storage roots and the
/// operator process.
pub struct Harness {
    pub name: String,
    pub cluster: Cluster,
    pub images: PathBuf,
    pub fast: PathBuf,
    pub dir: tempfile::TempDir,
    pub operator: Option<Child>,
    pub starts: u32,
    /// A directory put first on the operator's `PATH` (a throttled `qemu-img`).
    pub bin: Option<PathBuf>,
    /// Extra arguments of `mcs-operator run` (after the harness's own).
    pub operator_args: Vec<String>,
    /// Extra environment of the operator process (it wins over the harness's own, e.g.
    /// `RUST_LOG`).
    pub operator_env: Vec<(String, String)>,
    /// The kubeconfig the operator uses instead of the cluster's (another identity).
    pub operator_kubeconfig: Option<PathBuf>,
    /// How long [`Harness::wait`] waits (default [`TIMEOUT`]).
    pub timeout: Duration,
}

impl Harness {
    /// Connects to the tests' API server (see `support::cluster`), creates the test's
    /// namespace and the storage roots, and writes a master image of `size` holding `data_mib`
    /// MiB of data with the snapshot `base`. The operator is not started yet.
    pub async fn new(name: &str, size: &str, data_mib: u32) -> Harness {
        Self::with_cluster(Cluster::start(name).await, name, size, data_mib).await
    }

    /// [`Harness::new`] on a given cluster.
    pub async fn with_cluster(cluster: Cluster, name: &str, size: &str, data_mib: u32) -> Harness {
        let dir = tempfile::tempdir().expect("tempdir");
        let images = dir.path().join("images");
        let fast = dir.path().join("fast");
        std::fs::create_dir_all(&images).expect("images");
        std::fs::create_dir_all(fast.join("lab")).expect("fast/lab");
        make_master(&images.join(mcs_operator::dev::MASTER_FILE), size, data_mib);
        Harness {
            name: name.into(),
            cluster,
            images,
            fast,
            dir,
            operator: None,
            starts: 0,
            bin: None,
            operator_args: Vec::new(),
            operator_env: Vec::new(),
            operator_kubeconfig: None,
            timeout: TIMEOUT,
        }
    }

    /// The test API server, or `None` (with a note) on a real API server.
    pub fn test_server(&self) -> Option<&TestApiServer> {
        self.cluster.faults_server(&self.name)
    }

    /// Makes the operator's `qemu-img convert` copy at most `rate` per second (`-r`), as a
    /// slow disk does, so a test can act while a copy is running.
    pub fn throttle_qemu_img(&mut self, rate: &str) {
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

    /// The log file of the operator's `n`th start (from 1).
    pub fn operator_log(&self, n: u32) -> PathBuf {
        self.dir.path().join(format!("operator-{n}.log"))
    }

    /// Starts `mcs-operator run` for the test's namespace as [`Harness::spawn_operator`] does
    /// and keeps it as the harness's operator.
    pub fn start_operator(&mut self) {
        let child = self.spawn_operator();
        self.operator = Some(child);
    }

    /// Spawns `mcs-operator run` for the test's namespace, in its own process group, with its
    /// metrics and probe servers on free loopback ports (they are logged), logging to
    /// [`Harness::operator_log`] of the next start number. The caller owns the process.
    pub fn spawn_operator(&mut self) -> Child {
        use std::os::unix::process::CommandExt as _;
        self.starts += 1;
        let log = self.operator_log(self.starts);
        let file = std::fs::File::create(&log).expect("operator log");
        let mut command = Command::new(operator_binary());
        if let Some(bin) = &self.bin {
            let path = std::env::var_os("PATH").unwrap_or_default();
            let mut dirs = vec![bin.clone()];
            dirs.extend(std::env::split_paths(&path));
            command.env("PATH", std::env::join_paths(dirs).expect("PATH"));
        }
        command
            .args([
                "run",
                "--log-format",
                "text",
                "--namespace",
                &self.cluster.namespace,
                "--metrics-address",
                "127.0.0.1:0",
                "--probe-address",
                "127.0.0.1:0",
            ])
            .args(&self.operator_args)
            .env(
                "KUBECONFIG",
                self.operator_kubeconfig
                    .as_ref()
                    .unwrap_or(&self.cluster.kubeconfig),
            )
            .env("NO_COLOR", "1")
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .envs(self.operator_env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("log file"))
            .stderr(file)
            .process_group(0)
            .spawn()
            .expect("mcs-operator starts")
    }

    /// Kills the operator and every process it started (its `qemu-img`) with SIGKILL, as
    /// when a node or container dies.
    pub fn kill_operator(&mut self) {
        if let Some(mut child) = self.operator.take() {
            let group = format!("-{}", child.id());
            let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// An `Api` in the test's namespace.
    pub fn api<K>(&self) -> Api<K>
    where
        K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>,
    {
        Api::namespaced(self.cluster.client.clone(), &self.cluster.namespace)
    }

    /// The objects of `examples/` with the storage roots moved into the test's directory.
    pub fn examples(&self) -> Vec<Value> {
        mcs_operator::dev::example_objects(&self.images, &self.fast).expect("examples parse")
    }

    /// Applies `objects` (server-side apply, as `kubectl apply --server-side`).
    pub async fn apply(&self, objects: &[Value]) {
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
    pub async fn apply_up_to_the_master(&self) -> Vec<Value> {
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
    pub async fn create(&self, object: &Value) -> Result<DynamicObject, kube::Error> {
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
    pub async fn wait<K>(&self, name: &str, what: &str, check: impl Fn(&K) -> bool) -> K
    where
        K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
            + Clone
            + DeserializeOwned
            + std::fmt::Debug,
    {
        wait_for(
            &self.api::<K>(),
            name,
            what,
            self.timeout,
            Duration::from_millis(100),
            check,
        )
        .await
    }

    /// Waits for the whole examples flow: the prepared spec Finished at 100 %, the scheme at
    /// version 1 and Finished, three machines UpToDate with their overlay disks on disk.
    pub async fn wait_examples_done(&self) {
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
    pub fn partial_files(&self) -> Vec<PathBuf> {
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
    pub fn log_tail(&self) -> String {
        let mut out = String::new();
        for n in 1..=self.starts {
            let path = self.operator_log(n);
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
                    let client = super::cluster::client(&kubeconfig).await;
                    super::cluster::delete_namespace(&client, &namespace, Duration::from_secs(60))
                        .await;
                });
            })
            .join();
        }
        self.kill_operator();
    }
}

pub fn task_state(task: Option<&mcs_operator::api::TaskStatus>) -> Option<TaskState> {
    task.map(|t| t.task_state)
}

pub fn ready(conditions: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition]) -> bool {
    conditions
        .iter()
        .any(|c| c.type_ == "Ready" && c.status == "True")
}

/// Writes a qcow2 master image of `size` at `master` holding `data_mib` MiB of data (a pattern
/// per 64 MiB), with the snapshot `base` the examples use.
pub fn make_master(master: &Path, size: &str, data_mib: u32) {
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
}

/// Polls object `name` every `poll` until `check` accepts it, at most `timeout`; the panic
/// message names `what` and the last state seen.
pub async fn wait_for<K>(
    api: &Api<K>,
    name: &str,
    what: &str,
    timeout: Duration,
    poll: Duration,
    check: impl Fn(&K) -> bool,
) -> K
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    let deadline = Instant::now() + timeout;
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
        tokio::time::sleep(poll).await;
    }
}

/// The operator binary the suites start: `MCS_OPERATOR_BIN` when set (a long campaign can run
/// a copy while the tree is rebuilt), else the one cargo built for this test.
pub fn operator_binary() -> std::path::PathBuf {
    std::env::var_os("MCS_OPERATOR_BIN")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_mcs-operator").into())
}
