//! `mcs-testapi`: a small, honest subset of the Kubernetes API server, for tests only.
//!
//! The server speaks HTTP or HTTPS on `127.0.0.1` and writes a kubeconfig, so a real
//! client (kube-rs, kubectl, the operator binary) talks to it exactly as to a cluster.
//! It serves CRDs (from a directory or created over the API) and the built-in kinds
//! Namespace, Secret, ConfigMap, Event (core and `events.k8s.io`), ControllerRevision,
//! Lease and CustomResourceDefinition, with discovery (including the aggregated form),
//! get/list/watch/create/update/patch/delete, status and scale subresources,
//! server-side apply, finalizers, owner-reference garbage collection, schema validation
//! of custom resources and fault injection.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use mcs_testapi::{TestApiConfig, TestApiServer};
//! let server = TestApiServer::start(TestApiConfig {
//!     crd_dir: Some("crds".into()),
//!     ..Default::default()
//! })
//! .await?;
//! let client = server.client().await?;
//! server.faults().fail_next("list", Some("configmaps"), 2, 500);
//! # drop(client);
//! # Ok(())
//! # }
//! ```
//!
//! Deliberate simplifications (known gaps against a real apiserver) are listed in the
//! crate's `README.md`.

pub mod control_plane;
pub mod error;
pub mod faults;
pub mod schema;
pub mod selector;
mod server;
pub mod ssa;
pub mod store;
mod table;
mod tls;
pub mod types;

pub use error::ApiError;
pub use faults::{FailRule, FaultRequest, Faults, RequestRecord};

use anyhow::Context as _;
use serde::Deserialize as _;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use store::{Store, WriteOpts};

/// How to start a [`TestApiServer`].
#[derive(Debug, Clone)]
pub struct TestApiConfig {
    /// A directory of CRD YAML/JSON files (multi-document YAML is fine) to install at start.
    pub crd_dir: Option<PathBuf>,
    /// Serve HTTPS with a generated CA (put in the kubeconfig) instead of HTTP.
    pub tls: bool,
    /// The port on 127.0.0.1 (0 = ephemeral).
    pub port: u16,
    /// Watch events kept per kind; older resourceVersions get 410 Gone.
    pub history_limit: usize,
    /// How often watches with `allowWatchBookmarks=true` get a BOOKMARK.
    pub bookmark_interval: Duration,
    /// How often the garbage collector runs when nothing wakes it.
    pub gc_interval: Duration,
}

impl Default for TestApiConfig {
    fn default() -> Self {
        Self {
            crd_dir: None,
            tls: false,
            port: 0,
            history_limit: 5000,
            bookmark_interval: Duration::from_secs(2),
            gc_interval: Duration::from_millis(250),
        }
    }
}

/// A running test API server; it shuts down when dropped.
pub struct TestApiServer {
    url: String,
    kubeconfig: String,
    kubeconfig_path: PathBuf,
    _dir: tempfile::TempDir,
    store: Arc<Store>,
    faults: Faults,
    shutdown: tokio::sync::watch::Sender<bool>,
}

impl TestApiServer {
    /// Start a server on 127.0.0.1 (must be called inside a Tokio runtime).
    pub async fn start(cfg: TestApiConfig) -> anyhow::Result<Self> {
        let store = Arc::new(Store::new(cfg.history_limit));
        if let Some(dir) = &cfg.crd_dir {
            load_crd_dir(&store, dir)?;
        }
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", cfg.port))
            .await
            .context("binding 127.0.0.1")?;
        let addr = listener.local_addr()?;
        let (tls_acceptor, ca_pem, scheme) = if cfg.tls {
            let m = tls::generate().context("generating the TLS certificates")?;
            (
                Some(tokio_rustls::TlsAcceptor::from(m.server_config)),
                Some(m.ca_pem),
                "https",
            )
        } else {
            (None, None, "http")
        };
        let url = format!("{scheme}://{addr}");
        let token = uuid::Uuid::new_v4().simple().to_string();
        let (sd_tx, sd_rx) = tokio::sync::watch::channel(false);
        let faults = Faults::new(store.clone());
        let ctx = Arc::new(server::Ctx {
            store: store.clone(),
            faults: faults.clone(),
            token: token.clone(),
            bookmark_interval: cfg.bookmark_interval,
            shutdown: sd_rx.clone(),
        });
        tokio::spawn(server::serve(listener, tls_acceptor, ctx));
        let gc_store = store.clone();
        let mut gc_sd = sd_rx;
        let gc_interval = cfg.gc_interval;
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = gc_store.gc.notified() => {}
                    _ = tokio::time::sleep(gc_interval) => {}
                    _ = server::stopped(&mut gc_sd) => return,
                }
                gc_store.gc();
            }
        });
        let kubeconfig = tls::kubeconfig(&url, &token, ca_pem.as_deref());
        let dir = tempfile::tempdir()?;
        let kubeconfig_path = dir.path().join("kubeconfig");
        std::fs::write(&kubeconfig_path, &kubeconfig)?;
        Ok(Self {
            url,
            kubeconfig,
            kubeconfig_path,
            _dir: dir,
            store,
            faults,
            shutdown: sd_tx,
        })
    }

    /// The base URL, e.g. `http://127.0.0.1:41234`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The kubeconfig file written for this server (removed on drop).
    pub fn kubeconfig_path(&self) -> &Path {
        &self.kubeconfig_path
    }

    /// The kubeconfig text.
    pub fn kubeconfig_yaml(&self) -> &str {
        &self.kubeconfig
    }

    /// A kube client built from the kubeconfig, exactly as for a cluster.
    pub async fn client(&self) -> anyhow::Result<kube::Client> {
        let kc = kube::config::Kubeconfig::read_from(&self.kubeconfig_path)?;
        let config = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await?;
        Ok(kube::Client::try_from(config)?)
    }

    /// The fault knobs.
    pub fn faults(&self) -> &Faults {
        &self.faults
    }

    /// Install (create) a CRD given as JSON; 422 errors for invalid or non-structural CRDs.
    pub fn install_crd(&self, crd: &Value) -> Result<(), ApiError> {
        install_crd(&self.store, crd)
    }

    /// Install every CRD found in the YAML/JSON files of `dir`; returns how many.
    pub fn load_crd_dir(&self, dir: &Path) -> anyhow::Result<usize> {
        load_crd_dir(&self.store, dir)
    }

    /// Forget the watch history: watches resuming from older resourceVersions get 410 Gone.
    pub fn compact_history(&self) {
        self.store.compact();
    }

    /// The latest resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.store.current_rv()
    }

    /// Stop serving now (also done on drop).
    pub fn shutdown(&self) {
        let _ = self.shutdown.send(true);
    }
}

impl Drop for TestApiServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn install_crd(store: &Store, crd: &Value) -> Result<(), ApiError> {
    let rt = store
        .find_type("apiextensions.k8s.io", "v1", "customresourcedefinitions")
        .ok_or_else(|| ApiError::internal("CRD kind missing"))?;
    let wo = WriteOpts {
        manager: "mcs-testapi".into(),
        dry_run: false,
        strict: false,
    };
    store.create(&rt, None, crd.clone(), &wo).map(|_| ())
}

fn load_crd_dir(store: &Store, dir: &Path) -> anyhow::Result<usize> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            matches!(
                p.extension().and_then(|e| e.to_str()),
                Some("yaml" | "yml" | "json")
            )
        })
        .collect();
    files.sort();
    let mut n = 0;
    for f in files {
        let text =
            std::fs::read_to_string(&f).with_context(|| format!("reading {}", f.display()))?;
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let v = Value::deserialize(doc).with_context(|| format!("parsing {}", f.display()))?;
            if v["kind"] != "CustomResourceDefinition" {
                continue;
            }
            install_crd(store, &v).map_err(|e| anyhow::anyhow!("{}: {e}", f.display()))?;
            n += 1;
        }
    }
    Ok(n)
}
