//! The API server a test talks to: the in-repo test server, or a real Kubernetes API server.
//!
//! Which one is chosen by the environment, as envtest does:
//! - `MCS_E2E_KUBECONFIG=PATH`: a real cluster (the CRDs of `crds/` are applied once per test
//!   process with the real `kubectl`);
//! - else `KUBEBUILDER_ASSETS=DIR` (a folder with `etcd`, `kube-apiserver`, `kubectl` and
//!   optionally `kube-controller-manager`, such as `../shared/kube`'s `bin/`): one real control
//!   plane per test process, started on first use, with the committed CRDs installed by its
//!   `kubectl` before the controller manager starts;
//! - else: a test API server per test.
//!
//! `MCS_TEST_APISERVER=test` forces the test server whatever else is set. Every test gets its
//! own namespace, so tests sharing a real server never see each other's objects.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Namespace;
use kube::Client;
use kube::api::{Api, DeleteParams, PostParams};
use mcs_testapi::control_plane::{ControlPlane, ControlPlaneConfig, install_crds};
use mcs_testapi::{TestApiConfig, TestApiServer};
use serde_json::json;

/// The variable that points the suites at an existing cluster.
pub const CLUSTER_VAR: &str = "MCS_E2E_KUBECONFIG";

/// Where the tests' API server comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// The in-repo test API server, one per test.
    TestServer,
    /// An existing cluster's admin kubeconfig.
    Kubeconfig(PathBuf),
    /// A control plane started from envtest assets.
    Assets(PathBuf),
}

/// The mode chosen by the environment.
pub fn mode() -> Mode {
    if std::env::var("MCS_TEST_APISERVER").as_deref() == Ok("test") {
        return Mode::TestServer;
    }
    if let Some(path) = std::env::var_os(CLUSTER_VAR) {
        return Mode::Kubeconfig(PathBuf::from(path));
    }
    if let Some(config) = ControlPlaneConfig::from_env() {
        return Mode::Assets(config.assets);
    }
    Mode::TestServer
}

/// The repository's committed CRD folder.
pub fn crd_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("crds")
}

/// The real `kubectl` to use: `KUBECTL`, the assets' `kubectl`, or `kubectl` on `PATH`.
pub fn kubectl_path() -> Option<PathBuf> {
    let candidates = [
        std::env::var_os("KUBECTL").map(PathBuf::from),
        std::env::var_os("KUBEBUILDER_ASSETS").map(|d| PathBuf::from(d).join("kubectl")),
        Some(PathBuf::from("kubectl")),
    ];
    candidates.into_iter().flatten().find(|path| {
        Command::new(path)
            .args(["version", "--client"])
            .output()
            .is_ok_and(|o| o.status.success())
    })
}

/// A control plane from `assets` with the committed CRDs installed, its configuration then
/// adjusted by `configure`.
fn start_control_plane(
    assets: &Path,
    configure: impl FnOnce(&mut ControlPlaneConfig),
) -> Result<ControlPlane, String> {
    let started = Instant::now();
    let mut config = ControlPlaneConfig::new(assets);
    config.crds = vec![crd_dir()];
    configure(&mut config);
    let plane = ControlPlane::start(&config).map_err(|e| format!("{e:#}"))?;
    eprintln!(
        "real control plane from {} at {} ready in {:.1} s ({})",
        assets.display(),
        plane.url(),
        started.elapsed().as_secs_f64(),
        if config.crds.is_empty() {
            "no CRDs installed"
        } else {
            "CRDs installed with kubectl"
        }
    );
    Ok(plane)
}

/// The control plane of this test process ([`Mode::Assets`]), started on first use.
fn control_plane(assets: &Path) -> &'static ControlPlane {
    static PLANE: OnceLock<Result<ControlPlane, String>> = OnceLock::new();
    match PLANE.get_or_init(|| start_control_plane(assets, |_| {})) {
        Ok(plane) => plane,
        Err(error) => panic!("the real control plane did not start: {error}"),
    }
}

/// Applies the committed CRDs to an existing cluster once per test process.
fn install_crds_once(kubeconfig: &Path) {
    static INSTALLED: OnceLock<Result<(), String>> = OnceLock::new();
    let result = INSTALLED.get_or_init(|| {
        let kubectl = kubectl_path().ok_or("no kubectl found (set KUBECTL)")?;
        install_crds(&kubectl, kubeconfig, &[crd_dir()]).map_err(|e| format!("{e:#}"))
    });
    if let Err(error) = result {
        panic!("installing the CRDs on {}: {error}", kubeconfig.display());
    }
}

/// One test's API server and namespace.
pub struct Cluster {
    /// A client of the API server.
    pub client: Client,
    /// A kubeconfig file for programs the test starts (the operator, kubectl).
    pub kubeconfig: PathBuf,
    /// The test's own namespace (created by [`Cluster::start`]).
    pub namespace: String,
    server: Option<TestApiServer>,
    private: Option<ControlPlane>,
    _dir: tempfile::TempDir,
}

impl Cluster {
    /// Connects to the API server chosen by [`mode`] and creates the namespace
    /// `mcs-<test>-<random>`.
    pub async fn start(test: &str) -> Cluster {
        Self::start_inner(test, None).await
    }

    /// Like [`Cluster::start`], but with [`Mode::Assets`] the test gets a control plane of its
    /// own (not the one its process shares), so it may restart its components
    /// ([`Cluster::control_plane`]) without disturbing other tests.
    pub async fn start_private(test: &str) -> Cluster {
        Self::start_inner(test, Some(|_| {})).await
    }

    /// Like [`Cluster::start_private`], with the own control plane's configuration adjusted by
    /// `configure` first (an audit log, no CRDs, ...).
    pub async fn start_private_with(test: &str, configure: fn(&mut ControlPlaneConfig)) -> Cluster {
        Self::start_inner(test, Some(configure)).await
    }

    /// Like [`Cluster::start`] on the API server of `mode` rather than the one the environment
    /// chooses; with [`Mode::Assets`] the cluster gets a control plane of its own, as with
    /// [`Cluster::start_private`] (the benchmarks read its components' CPU time).
    pub async fn start_in(test: &str, mode: Mode) -> Cluster {
        Self::start_mode(test, mode, Some(|_| {})).await
    }

    async fn start_inner(test: &str, private: Option<fn(&mut ControlPlaneConfig)>) -> Cluster {
        Self::start_mode(test, mode(), private).await
    }

    async fn start_mode(
        test: &str,
        mode: Mode,
        private: Option<fn(&mut ControlPlaneConfig)>,
    ) -> Cluster {
        super::init_logging();
        let dir = tempfile::tempdir().expect("tempdir");
        let mut own = None;
        let (server, kubeconfig) = match (mode, private) {
            (Mode::TestServer, _) => {
                let server = TestApiServer::start(TestApiConfig {
                    crd_dir: Some(crd_dir()),
                    tls: true,
                    ..Default::default()
                })
                .await
                .expect("test API server starts");
                let kubeconfig = dir.path().join("kubeconfig");
                std::fs::write(&kubeconfig, server.kubeconfig_yaml()).expect("kubeconfig");
                (Some(server), kubeconfig)
            }
            (Mode::Kubeconfig(path), _) => {
                let p = path.clone();
                tokio::task::spawn_blocking(move || install_crds_once(&p))
                    .await
                    .expect("CRD install");
                (None, path)
            }
            (Mode::Assets(assets), Some(configure)) => {
                let plane =
                    tokio::task::spawn_blocking(move || start_control_plane(&assets, configure))
                        .await
                        .expect("control plane")
                        .unwrap_or_else(|e| {
                            panic!("the test's own control plane did not start: {e}")
                        });
                let kubeconfig = plane.kubeconfig_path().to_owned();
                own = Some(plane);
                (None, kubeconfig)
            }
            (Mode::Assets(assets), None) => {
                let plane = tokio::task::spawn_blocking(move || control_plane(&assets))
                    .await
                    .expect("control plane");
                (None, plane.kubeconfig_path().to_owned())
            }
        };
        let client = client(&kubeconfig).await;
        let suffix = &uuid::Uuid::new_v4().simple().to_string()[..8];
        let mut base: String = test
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '-'
                }
            })
            .collect();
        base.truncate(48);
        let namespace = format!("mcs-{}-{suffix}", base.trim_matches('-'));
        Api::<Namespace>::all(client.clone())
            .create(
                &PostParams::default(),
                &serde_json::from_value(json!({"metadata": {"name": namespace}}))
                    .expect("namespace"),
            )
            .await
            .expect("namespace created");
        Cluster {
            client,
            kubeconfig,
            namespace,
            server,
            private: own,
            _dir: dir,
        }
    }

    /// The test's own control plane (from [`Cluster::start_private`] with
    /// [`Mode::Assets`]), whose components the test may restart.
    pub fn control_plane(&mut self) -> Option<&mut ControlPlane> {
        self.private.as_mut()
    }

    /// The test API server, or `None` on a real server.
    pub fn test_server(&self) -> Option<&TestApiServer> {
        self.server.as_ref()
    }

    /// The test API server for a test that needs its fault knobs; `None` (with a note that the
    /// test is skipped) on a real server.
    pub fn faults_server(&self, test: &str) -> Option<&TestApiServer> {
        if self.server.is_none() {
            eprintln!(
                "{test}: needs the test API server's fault injection; skipped on a real API server"
            );
        }
        self.server.as_ref()
    }

    /// Whether this is a real Kubernetes API server.
    pub fn is_real(&self) -> bool {
        self.server.is_none()
    }

    /// Deletes the test's namespace and waits (at most `timeout`) until it is gone; on the
    /// test server there is nothing to clean up.
    pub async fn delete_namespace(&self, timeout: Duration) {
        if self.server.is_none() {
            delete_namespace(&self.client, &self.namespace, timeout).await;
        }
    }
}

/// Deletes `namespace` and waits (at most `timeout`) until it is gone, saying so when it is not.
pub async fn delete_namespace(client: &Client, namespace: &str, timeout: Duration) {
    let api = Api::<Namespace>::all(client.clone());
    if let Err(error) = api.delete(namespace, &DeleteParams::default()).await {
        eprintln!("deleting namespace {namespace}: {error}");
        return;
    }
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if matches!(api.get_opt(namespace).await, Ok(None)) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    eprintln!("namespace {namespace} is still terminating");
}

/// A client from a kubeconfig file, as kubectl builds one.
pub async fn client(kubeconfig: &Path) -> Client {
    let config = kube::config::Kubeconfig::read_from(kubeconfig).expect("kubeconfig readable");
    let config = kube::Config::from_custom_kubeconfig(config, &Default::default())
        .await
        .expect("kubeconfig usable");
    Client::try_from(config).expect("client")
}
