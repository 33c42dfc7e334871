//! A real Kubernetes control plane for tests, started from envtest-style assets.
//!
//! [`ControlPlane::start`] runs `etcd`, `kube-apiserver` and (when present)
//! `kube-controller-manager` from a folder such as `KUBEBUILDER_ASSETS`, on free loopback ports,
//! with certificates made on the fly: real admission (OpenAPI schema and CEL), RBAC,
//! server-side apply, watches, owner-reference garbage collection and namespace deletion.
//!
//! CRDs given in [`ControlPlaneConfig::crds`] are installed with the assets' real `kubectl`
//! *before* the controller manager starts, so its garbage collector knows their kinds from its
//! first discovery (otherwise it notices new kinds only on its 30 s rescan).
//!
//! With [`ControlPlaneConfig::audit_log`] the API server writes an audit log (every request at
//! level `Metadata`, in JSON), which [`ControlPlane::audit_events`] reads back: who did what to
//! which resource, and the answer's status code.
//!
//! The processes share one process group. A small watchdog kills that group when the test
//! process exits, because a control plane kept in a `static` is never dropped.

use std::fs;
use std::net::TcpListener;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail};
use rcgen::{DnType, ExtendedKeyUsagePurpose, KeyPair};

use crate::tls::{new_ca, new_leaf};

/// The binaries a control plane needs in its assets folder.
pub const REQUIRED_ASSETS: [&str; 3] = ["etcd", "kube-apiserver", "kubectl"];

/// How to start a [`ControlPlane`].
#[derive(Debug, Clone)]
pub struct ControlPlaneConfig {
    /// The folder with `etcd`, `kube-apiserver`, `kubectl` and optionally
    /// `kube-controller-manager` (envtest's `KUBEBUILDER_ASSETS`).
    pub assets: PathBuf,
    /// CRD manifests (files or folders) installed with `kubectl apply` before the controller
    /// manager starts.
    pub crds: Vec<PathBuf>,
    /// Whether to start `kube-controller-manager` when the assets have it.
    pub controller_manager: bool,
    /// How long each component may take to become ready.
    pub timeout: Duration,
    /// Whether the API server writes an audit log of every request (see
    /// [`ControlPlane::audit_events`]).
    pub audit_log: bool,
    /// Admission plugins to enable on top of the API server's defaults (such as
    /// `OwnerReferencesPermissionEnforcement`).
    pub admission_plugins: Vec<String>,
}

impl ControlPlaneConfig {
    /// A configuration for `assets`, with the controller manager and no CRDs.
    pub fn new(assets: impl Into<PathBuf>) -> Self {
        Self {
            assets: assets.into(),
            crds: Vec::new(),
            controller_manager: true,
            timeout: Duration::from_secs(60),
            audit_log: false,
            admission_plugins: Vec::new(),
        }
    }

    /// The assets folder named by `KUBEBUILDER_ASSETS`, when it holds the required binaries.
    pub fn from_env() -> Option<Self> {
        let assets = PathBuf::from(std::env::var_os("KUBEBUILDER_ASSETS")?);
        REQUIRED_ASSETS
            .iter()
            .all(|name| assets.join(name).is_file())
            .then(|| Self::new(assets))
    }
}

/// A running control plane; stopped (processes killed, folder removed) when dropped.
pub struct ControlPlane {
    dir: tempfile::TempDir,
    url: String,
    kubeconfig: PathBuf,
    kubectl: PathBuf,
    children: Vec<Component>,
    /// The process group of every component (the first one's pid).
    group: i32,
    timeout: Duration,
    watchdog: Option<Child>,
    controller_manager: bool,
    audit_log: Option<PathBuf>,
}

impl std::fmt::Debug for ControlPlane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlPlane")
            .field("url", &self.url)
            .field("dir", &self.dir.path())
            .finish()
    }
}

/// One running component and how it was started (to restart it the same way).
struct Component {
    name: String,
    program: PathBuf,
    args: Vec<String>,
    child: Child,
}

/// Certificates and keys written into the control plane's `pki` folder.
struct Pki {
    ca: PathBuf,
    serving_cert: PathBuf,
    serving_key: PathBuf,
    sa_key: PathBuf,
    sa_pub: PathBuf,
    admin_cert_pem: String,
    admin_key_pem: String,
    ca_pem: String,
}

impl ControlPlane {
    /// Starts etcd, kube-apiserver, installs the CRDs, then starts kube-controller-manager;
    /// returns once the API server is ready (and the controller manager has created the
    /// `default` ServiceAccount). Ports are picked free; a start that loses a port race is
    /// retried twice.
    pub fn start(config: &ControlPlaneConfig) -> anyhow::Result<ControlPlane> {
        for name in REQUIRED_ASSETS {
            let path = config.assets.join(name);
            if !path.is_file() {
                bail!("{} is missing (the control plane's assets)", path.display());
            }
        }
        let mut last = None;
        for _ in 0..3 {
            match Self::start_once(config) {
                Ok(plane) => return Ok(plane),
                Err(error) => last = Some(error),
            }
        }
        Err(last.unwrap_or_else(|| anyhow!("no start attempted")))
    }

    fn start_once(config: &ControlPlaneConfig) -> anyhow::Result<ControlPlane> {
        let dir = tempfile::Builder::new()
            .prefix("mcs-control-plane-")
            .tempdir()
            .context("control plane folder")?;
        let logs = dir.path().join("logs");
        fs::create_dir_all(&logs)?;
        let pki = write_pki(&dir.path().join("pki"))?;
        let [etcd_port, peer_port, api_port, kcm_port] = free_ports()?;
        let url = format!("https://127.0.0.1:{api_port}");
        let kubeconfig = dir.path().join("kubeconfig");
        fs::write(&kubeconfig, kubeconfig_yaml(&url, &pki))?;
        let mut plane = ControlPlane {
            url,
            kubeconfig,
            kubectl: config.assets.join("kubectl"),
            children: Vec::new(),
            group: 0,
            timeout: config.timeout,
            watchdog: None,
            controller_manager: false,
            audit_log: None,
            dir,
        };
        let etcd_url = format!("http://127.0.0.1:{etcd_port}");
        let peer_url = format!("http://127.0.0.1:{peer_port}");
        plane.launch(
            &config.assets,
            "etcd",
            &[
                "--name=mcs-test".into(),
                format!("--data-dir={}", plane.dir.path().join("etcd").display()),
                format!("--listen-client-urls={etcd_url}"),
                format!("--advertise-client-urls={etcd_url}"),
                format!("--listen-peer-urls={peer_url}"),
                format!("--initial-advertise-peer-urls={peer_url}"),
                format!("--initial-cluster=mcs-test={peer_url}"),
                "--unsafe-no-fsync".into(),
                "--log-level=warn".into(),
            ],
        )?;
        plane.start_watchdog()?;
        let mut apiserver_args: Vec<String> = vec![
            "--advertise-address=127.0.0.1".into(),
            "--bind-address=127.0.0.1".into(),
            format!("--secure-port={api_port}"),
            format!("--etcd-servers={etcd_url}"),
            format!("--client-ca-file={}", pki.ca.display()),
            format!("--tls-cert-file={}", pki.serving_cert.display()),
            format!("--tls-private-key-file={}", pki.serving_key.display()),
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local".into(),
            format!("--service-account-key-file={}", pki.sa_pub.display()),
            format!(
                "--service-account-signing-key-file={}",
                pki.sa_key.display()
            ),
            "--authorization-mode=RBAC".into(),
            "--service-cluster-ip-range=10.96.0.0/16".into(),
            "--endpoint-reconciler-type=none".into(),
            "--allow-privileged=true".into(),
            "--profiling=false".into(),
            "--v=1".into(),
        ];
        if !config.admission_plugins.is_empty() {
            apiserver_args.push(format!(
                "--enable-admission-plugins={}",
                config.admission_plugins.join(",")
            ));
        }
        if config.audit_log {
            let policy = plane.dir.path().join("audit-policy.yaml");
            fs::write(&policy, AUDIT_POLICY)?;
            let log = plane.dir.path().join("logs").join("audit.log");
            apiserver_args.extend([
                format!("--audit-policy-file={}", policy.display()),
                format!("--audit-log-path={}", log.display()),
                "--audit-log-format=json".into(),
                "--audit-log-mode=blocking".into(),
            ]);
            plane.audit_log = Some(log);
        }
        plane.launch(&config.assets, "kube-apiserver", &apiserver_args)?;
        plane.wait_for("kube-apiserver /readyz", config.timeout, |p| {
            p.kubectl_ok(&["get", "--raw=/readyz"])
        })?;
        if !config.crds.is_empty() {
            plane.install_crds(&config.crds)?;
        }
        let kcm = config.assets.join("kube-controller-manager");
        if config.controller_manager && kcm.is_file() {
            plane.launch(
                &config.assets,
                "kube-controller-manager",
                &[
                    format!("--kubeconfig={}", plane.kubeconfig.display()),
                    format!("--authentication-kubeconfig={}", plane.kubeconfig.display()),
                    format!("--authorization-kubeconfig={}", plane.kubeconfig.display()),
                    "--bind-address=127.0.0.1".into(),
                    format!("--secure-port={kcm_port}"),
                    format!("--tls-cert-file={}", pki.serving_cert.display()),
                    format!("--tls-private-key-file={}", pki.serving_key.display()),
                    format!(
                        "--service-account-private-key-file={}",
                        pki.sa_key.display()
                    ),
                    format!("--root-ca-file={}", pki.ca.display()),
                    "--service-cluster-ip-range=10.96.0.0/16".into(),
                    "--leader-elect=false".into(),
                    "--kube-api-qps=200".into(),
                    "--kube-api-burst=400".into(),
                    "--controllers=*".into(),
                    "--profiling=false".into(),
                    "--v=1".into(),
                ],
            )?;
            plane.controller_manager = true;
            plane.wait_for(
                "kube-controller-manager (the default ServiceAccount)",
                config.timeout,
                |p| p.kubectl_ok(&["get", "serviceaccount", "default", "-n", "default"]),
            )?;
        }
        Ok(plane)
    }

    /// The API server's URL (`https://127.0.0.1:PORT`).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The admin kubeconfig (a client certificate in `system:masters`).
    pub fn kubeconfig_path(&self) -> &Path {
        &self.kubeconfig
    }

    /// The assets' `kubectl`.
    pub fn kubectl_path(&self) -> &Path {
        &self.kubectl
    }

    /// The process id of a running component (`etcd`, `kube-apiserver`,
    /// `kube-controller-manager`), to read its CPU time and memory from `/proc`.
    pub fn pid(&self, component: &str) -> Option<u32> {
        self.children
            .iter()
            .find(|c| c.name == component)
            .map(|c| c.child.id())
    }

    /// Whether `kube-controller-manager` runs (garbage collection, namespace deletion).
    pub fn has_controller_manager(&self) -> bool {
        self.controller_manager
    }

    /// The audit log file, when the plane was started with [`ControlPlaneConfig::audit_log`].
    pub fn audit_log_path(&self) -> Option<&Path> {
        self.audit_log.as_deref()
    }

    /// The requests the API server has audited so far, in order, one entry per request: the
    /// `ResponseComplete` record, or for a request still running (an open watch) its
    /// `ResponseStarted` one. Fails when the plane has no audit log.
    pub fn audit_events(&self) -> anyhow::Result<Vec<AuditEvent>> {
        let path = self
            .audit_log
            .as_deref()
            .context("the control plane was started without an audit log (audit_log: false)")?;
        let text = fs::read_to_string(path)
            .with_context(|| format!("reading the audit log {}", path.display()))?;
        parse_audit_log(&text)
    }

    /// The folder holding the certificates, the etcd data and the components' logs.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A `kubectl` command with the admin kubeconfig.
    pub fn kubectl(&self) -> Command {
        let mut command = Command::new(&self.kubectl);
        command.env("KUBECONFIG", &self.kubeconfig);
        command
    }

    /// A client for the API server, built from the admin kubeconfig as kubectl builds one.
    pub async fn client(&self) -> anyhow::Result<kube::Client> {
        let kubeconfig = kube::config::Kubeconfig::read_from(&self.kubeconfig)?;
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await?;
        Ok(kube::Client::try_from(config)?)
    }

    /// Installs CRD manifests with `kubectl apply --server-side` and waits until each is
    /// Established.
    pub fn install_crds(&self, paths: &[PathBuf]) -> anyhow::Result<()> {
        install_crds(&self.kubectl, &self.kubeconfig, paths)
    }

    /// The last lines of a component's log (`etcd`, `kube-apiserver`, ...).
    pub fn log_tail(&self, component: &str, lines: usize) -> String {
        let text = fs::read_to_string(
            self.dir
                .path()
                .join("logs")
                .join(format!("{component}.log")),
        )
        .unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Stops every component. The control plane is a throwaway: its processes are killed
    /// (SIGKILL) rather than shut down gracefully, which takes kube-apiserver seconds.
    pub fn stop(&mut self) {
        for component in self.children.iter_mut().rev() {
            let _ = component.child.kill();
            let _ = component.child.wait();
        }
        self.children.clear();
        if let Some(mut watchdog) = self.watchdog.take() {
            let _ = watchdog.kill();
            let _ = watchdog.wait();
        }
    }

    /// Kills `component` (`etcd`, `kube-apiserver` or `kube-controller-manager`) with SIGKILL,
    /// as a crash does, keeps it down for `down_for`, starts it again with the same flags and
    /// data, and returns once the API server answers `/readyz` again (how long that took after
    /// the start).
    pub fn restart(&mut self, component: &str, down_for: Duration) -> anyhow::Result<Duration> {
        let index = self
            .children
            .iter()
            .position(|c| c.name == component)
            .with_context(|| format!("no component {component} runs"))?;
        let old = self.children.remove(index);
        let Component {
            name,
            program,
            args,
            mut child,
        } = old;
        let _ = child.kill();
        let _ = child.wait();
        std::thread::sleep(down_for);
        let started = Instant::now();
        let child = self.spawn(&name, &program, &args)?;
        self.children.insert(
            index,
            Component {
                name,
                program,
                args,
                child,
            },
        );
        self.wait_for(
            "kube-apiserver /readyz after a restart",
            self.timeout,
            |p| p.kubectl_ok(&["get", "--raw=/readyz"]),
        )?;
        Ok(started.elapsed())
    }

    fn launch(&mut self, assets: &Path, name: &str, args: &[String]) -> anyhow::Result<()> {
        let program = assets.join(name);
        let child = self.spawn(name, &program, args)?;
        if self.group == 0 {
            self.group = child.id() as i32;
        }
        self.children.push(Component {
            name: name.to_owned(),
            program,
            args: args.to_vec(),
            child,
        });
        Ok(())
    }

    /// Starts `program` in the control plane's process group, its output appended to
    /// `logs/<name>.log`.
    fn spawn(&self, name: &str, program: &Path, args: &[String]) -> anyhow::Result<Child> {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("logs").join(format!("{name}.log")))?;
        Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(self.group)
            .spawn()
            .with_context(|| format!("starting {name}"))
    }

    /// Kills the control plane's process group and removes its folder once the test process
    /// (this process) is gone.
    fn start_watchdog(&mut self) -> anyhow::Result<()> {
        let group = self.group;
        let script = format!(
            "while kill -0 {parent} 2>/dev/null; do sleep 1; done; kill -KILL -{group} 2>/dev/null; sleep 1; rm -rf '{dir}'",
            parent = std::process::id(),
            dir = self.dir.path().display(),
        );
        let watchdog = Command::new("sh")
            .args(["-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .context("starting the control plane's watchdog")?;
        self.watchdog = Some(watchdog);
        Ok(())
    }

    fn wait_for(
        &mut self,
        what: &str,
        timeout: Duration,
        ready: impl Fn(&Self) -> bool,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if ready(self) {
                return Ok(());
            }
            for component in &mut self.children {
                if let Ok(Some(status)) = component.child.try_wait() {
                    let name = component.name.clone();
                    let tail = self.log_tail(&name, 20);
                    self.stop();
                    bail!("{name} exited ({status}) while waiting for {what}:\n{tail}");
                }
            }
            if Instant::now() > deadline {
                let tails: Vec<String> = self
                    .children
                    .iter()
                    .map(|c| format!("--- {}\n{}", c.name, self.log_tail(&c.name, 10)))
                    .collect();
                self.stop();
                bail!("timed out waiting for {what}:\n{}", tails.join("\n"));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn kubectl_ok(&self, args: &[&str]) -> bool {
        self.kubectl()
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The audit policy of a plane started with [`ControlPlaneConfig::audit_log`]: every request at
/// level `Metadata` (user, verb, object reference, response code; no bodies). `ResponseStarted`
/// is kept because a watch that is still open has no `ResponseComplete` record yet.
const AUDIT_POLICY: &str = "apiVersion: audit.k8s.io/v1
kind: Policy
omitStages:
- RequestReceived
rules:
- level: Metadata
";

/// One audited request, as [`ControlPlane::audit_events`] returns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEvent {
    /// The API server's id of the request.
    pub audit_id: String,
    /// The stage of the record: `ResponseComplete`, `ResponseStarted` (a running watch) or
    /// `Panic`.
    pub stage: String,
    /// The authenticated user (`system:serviceaccount:NS:NAME` for a ServiceAccount token).
    pub username: String,
    /// The Kubernetes verb (`get`, `list`, `watch`, `create`, `update`, `patch`, `delete`,
    /// `deletecollection`), or the HTTP one in lower case for a non-resource URL.
    pub verb: String,
    /// The request's path and query.
    pub request_uri: String,
    /// The API group of the object (`""` for the core group); `None` for a non-resource URL.
    pub api_group: Option<String>,
    /// The resource (plural), `None` for a non-resource URL such as `/apis` or `/version`.
    pub resource: Option<String>,
    /// The subresource (`status`, `scale`, `finalizers`, ...).
    pub subresource: Option<String>,
    /// The namespace of the object (or of the collection).
    pub namespace: Option<String>,
    /// The object's name, for a request about one object.
    pub name: Option<String>,
    /// The HTTP status code of the answer (for a running watch, the one it started with).
    pub code: Option<u16>,
    /// The client's User-Agent header.
    pub user_agent: Option<String>,
}

/// Parses a JSON-lines audit log (`--audit-log-format=json`) into one [`AuditEvent`] per
/// request (its latest stage), in the order requests first appear.
pub fn parse_audit_log(text: &str) -> anyhow::Result<Vec<AuditEvent>> {
    let mut events: Vec<AuditEvent> = Vec::new();
    let mut index = std::collections::HashMap::new();
    for (number, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let value: serde_json::Value = serde_json::from_str(line)
            .with_context(|| format!("audit log line {} is not JSON", number + 1))?;
        let text = |v: &serde_json::Value| v.as_str().map(str::to_owned);
        let object = &value["objectRef"];
        let event = AuditEvent {
            audit_id: text(&value["auditID"])
                .with_context(|| format!("audit log line {} has no auditID", number + 1))?,
            stage: text(&value["stage"]).unwrap_or_default(),
            username: text(&value["user"]["username"]).unwrap_or_default(),
            verb: text(&value["verb"]).unwrap_or_default(),
            request_uri: text(&value["requestURI"]).unwrap_or_default(),
            api_group: object
                .is_object()
                .then(|| text(&object["apiGroup"]).unwrap_or_default()),
            resource: text(&object["resource"]),
            subresource: text(&object["subresource"]),
            namespace: text(&object["namespace"]),
            name: text(&object["name"]),
            code: value["responseStatus"]["code"]
                .as_u64()
                .and_then(|c| u16::try_from(c).ok()),
            user_agent: text(&value["userAgent"]),
        };
        match index.get(&event.audit_id) {
            Some(&at) => events[at] = event,
            None => {
                index.insert(event.audit_id.clone(), events.len());
                events.push(event);
            }
        }
    }
    Ok(events)
}

/// Installs CRD manifests (files or folders) on the cluster of `kubeconfig` with `kubectl apply
/// --server-side` and waits until each is Established.
pub fn install_crds(kubectl: &Path, kubeconfig: &Path, paths: &[PathBuf]) -> anyhow::Result<()> {
    for path in paths {
        let path = path.to_string_lossy();
        for args in [
            &["apply", "--server-side", "--force-conflicts", "-f", &path][..],
            &[
                "wait",
                "--for=condition=Established",
                "--timeout=60s",
                "-f",
                &path,
            ][..],
        ] {
            let out = Command::new(kubectl)
                .args(args)
                .env("KUBECONFIG", kubeconfig)
                .output()
                .with_context(|| format!("running {}", kubectl.display()))?;
            if !out.status.success() {
                bail!(
                    "kubectl {}: {}{}",
                    args.join(" "),
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
    }
    Ok(())
}

/// Four distinct free loopback ports (etcd client and peer, API server, controller manager).
fn free_ports() -> anyhow::Result<[u16; 4]> {
    let listeners = (0..4)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<Vec<_>, _>>()?;
    let ports: Vec<u16> = listeners
        .iter()
        .map(|l| l.local_addr().map(|a| a.port()))
        .collect::<Result<_, _>>()?;
    Ok([ports[0], ports[1], ports[2], ports[3]])
}

/// Makes a CA, a serving certificate for loopback (and the in-cluster names), an admin client
/// certificate in `system:masters` and the ServiceAccount signing key pair.
fn write_pki(dir: &Path) -> anyhow::Result<Pki> {
    fs::create_dir_all(dir)?;
    let (ca_cert, issuer) = new_ca("mcs-test control plane CA")?;
    let (serving_cert, serving_key) = new_leaf(
        &issuer,
        &[
            "127.0.0.1",
            "localhost",
            "kubernetes",
            "kubernetes.default",
            "kubernetes.default.svc",
            "kubernetes.default.svc.cluster.local",
            "10.96.0.1",
        ],
        &[(DnType::CommonName, "kube-apiserver")],
        vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ],
    )?;
    let (admin_cert, admin_key) = new_leaf(
        &issuer,
        &[],
        &[
            (DnType::CommonName, "admin"),
            (DnType::OrganizationName, "system:masters"),
        ],
        vec![ExtendedKeyUsagePurpose::ClientAuth],
    )?;
    let sa = KeyPair::generate()?;
    let pki = Pki {
        ca: dir.join("ca.crt"),
        serving_cert: dir.join("apiserver.crt"),
        serving_key: dir.join("apiserver.key"),
        sa_key: dir.join("sa.key"),
        sa_pub: dir.join("sa.pub"),
        admin_cert_pem: admin_cert.pem(),
        admin_key_pem: admin_key.serialize_pem(),
        ca_pem: ca_cert.pem(),
    };
    fs::write(&pki.ca, &pki.ca_pem)?;
    fs::write(&pki.serving_cert, serving_cert.pem())?;
    fs::write(&pki.serving_key, serving_key.serialize_pem())?;
    fs::write(&pki.sa_key, sa.serialize_pem())?;
    fs::write(&pki.sa_pub, sa.public_key_pem())?;
    Ok(pki)
}

/// The admin kubeconfig for `url`.
fn kubeconfig_yaml(url: &str, pki: &Pki) -> String {
    use base64::Engine as _;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    format!(
        "apiVersion: v1
kind: Config
clusters:
- name: mcs-test
  cluster:
    server: {url}
    certificate-authority-data: {ca}
users:
- name: admin
  user:
    client-certificate-data: {cert}
    client-key-data: {key}
contexts:
- name: mcs-test
  context:
    cluster: mcs-test
    user: admin
current-context: mcs-test
",
        ca = b64(&pki.ca_pem),
        cert = b64(&pki.admin_cert_pem),
        key = b64(&pki.admin_key_pem),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn audit_log_keeps_the_latest_stage_of_each_request() {
        let log = r#"{"kind":"Event","apiVersion":"audit.k8s.io/v1","level":"Metadata","auditID":"a","stage":"ResponseStarted","requestURI":"/apis/mcs.imaging.dev/v1alpha1/namespaces/x/provvms?watch=true","verb":"watch","user":{"username":"system:serviceaccount:mcs-system:op"},"objectRef":{"resource":"provvms","namespace":"x","apiGroup":"mcs.imaging.dev","apiVersion":"v1alpha1"},"responseStatus":{"metadata":{},"code":200}}
{"kind":"Event","apiVersion":"audit.k8s.io/v1","level":"Metadata","auditID":"b","stage":"ResponseComplete","requestURI":"/api/v1/namespaces/x/secrets/s","verb":"get","user":{"username":"u"},"objectRef":{"resource":"secrets","namespace":"x","name":"s","apiVersion":"v1"},"responseStatus":{"metadata":{},"status":"Failure","reason":"Forbidden","code":403}}

{"kind":"Event","apiVersion":"audit.k8s.io/v1","level":"Metadata","auditID":"c","stage":"ResponseComplete","requestURI":"/apis","verb":"get","user":{"username":"u"},"responseStatus":{"metadata":{},"code":200}}
{"kind":"Event","apiVersion":"audit.k8s.io/v1","level":"Metadata","auditID":"a","stage":"ResponseComplete","requestURI":"/apis/mcs.imaging.dev/v1alpha1/namespaces/x/provvms?watch=true","verb":"watch","user":{"username":"system:serviceaccount:mcs-system:op"},"objectRef":{"resource":"provvms","namespace":"x","apiGroup":"mcs.imaging.dev","apiVersion":"v1alpha1"},"responseStatus":{"metadata":{},"code":200}}
"#;
        let events = parse_audit_log(log).expect("parses");
        let ids: Vec<(&str, &str)> = events
            .iter()
            .map(|e| (e.audit_id.as_str(), e.stage.as_str()))
            .collect();
        assert_eq!(
            ids,
            [
                ("a", "ResponseComplete"),
                ("b", "ResponseComplete"),
                ("c", "ResponseComplete")
            ]
        );
        assert_eq!(events[0].api_group.as_deref(), Some("mcs.imaging.dev"));
        assert_eq!(events[0].verb, "watch");
        assert_eq!(events[1].api_group.as_deref(), Some(""), "the core group");
        assert_eq!(events[1].code, Some(403));
        assert_eq!(events[1].name.as_deref(), Some("s"));
        assert_eq!(events[2].api_group, None, "a non-resource URL");
        assert_eq!(events[2].resource, None);
        assert!(parse_audit_log("not json").is_err());
    }
}
