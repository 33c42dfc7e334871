//! `mcs-operator dev`: the whole system on one machine, without a cluster.
//!
//! The command starts the Kubernetes API test server of `mcs-testapi` in-process (with the
//! CRDs compiled into this binary), runs every controller in-process against it with the
//! `Local` backend over a storage directory (`<dir>/images` and `<dir>/fast`), makes a small
//! sample master image with `qemu-img` (or copies the one given), applies the manifests of
//! `examples/` (embedded in the binary, storage roots rewritten to the dev directory), shows
//! the tasks live until everything is ready, writes a kubeconfig for `kubectl` and serves until
//! interrupted.
//!
//! `mcs-testapi` is test support, never used to run the operator against a real cluster: this
//! module is its only user outside the tests.

use std::fmt::Write as _;
use std::io::{IsTerminal as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use kube::api::{Api, DynamicObject, ListParams, Patch};
use kube::core::ApiResource;
use kube::{Client, Resource};
use mcs_testapi::{TestApiConfig, TestApiServer};
use serde::Deserialize as _;
use serde_json::Value;

use crate::api::{
    HostingUnit, HypervisorConnection, IdentityPool, ImageDefinition, ImageVersion,
    ImageVersionSpec, ProvScheme, ProvVm, TaskState,
};
use crate::controller::OperatorConfig;

/// The namespace the sample objects are created in (the kubeconfig's default).
pub const NAMESPACE: &str = "default";

/// The storage root path of `examples/` that becomes `<dir>/images`.
pub const EXAMPLE_IMAGES_ROOT: &str = "/var/lib/mcs/images";

/// The storage root path of `examples/` that becomes `<dir>/fast`.
pub const EXAMPLE_FAST_ROOT: &str = "/var/lib/mcs/fast";

/// The file name of the master image the examples use (`XDHyp:\HostingUnits\lab\win11.vm`),
/// in the `images` storage root.
pub const MASTER_FILE: &str = "win11.qcow2";

/// The internal snapshot of the master the examples use (`base.snapshot`).
pub const MASTER_SNAPSHOT: &str = "base";

/// The size of the generated sample master image.
const SAMPLE_MASTER_SIZE: &str = "64M";

/// The manifests of `examples/`, file name and text, in the order they are applied.
pub const EXAMPLES: [(&str, &str); 8] = [
    (
        "00-hypervisor-connection.yaml",
        include_str!("../examples/00-hypervisor-connection.yaml"),
    ),
    (
        "01-hosting-unit.yaml",
        include_str!("../examples/01-hosting-unit.yaml"),
    ),
    (
        "02-identity-pool.yaml",
        include_str!("../examples/02-identity-pool.yaml"),
    ),
    (
        "03-image-definition.yaml",
        include_str!("../examples/03-image-definition.yaml"),
    ),
    (
        "04-image-version.yaml",
        include_str!("../examples/04-image-version.yaml"),
    ),
    (
        "05-master-image-spec.yaml",
        include_str!("../examples/05-master-image-spec.yaml"),
    ),
    (
        "06-prepared-image-spec.yaml",
        include_str!("../examples/06-prepared-image-spec.yaml"),
    ),
    (
        "07-prov-scheme.yaml",
        include_str!("../examples/07-prov-scheme.yaml"),
    ),
];

/// Settings of `mcs-operator dev`.
#[derive(Clone, Debug)]
pub struct DevOptions {
    /// The working directory: storage roots, the kubeconfig and the operator log live here.
    pub dir: PathBuf,
    /// A master image (qcow2) to copy in instead of generating a sample one.
    pub master: Option<PathBuf>,
    /// Serve HTTPS (with a generated CA in the kubeconfig) instead of HTTP.
    pub tls: bool,
}

/// The objects of `examples/` with the storage roots moved to `images` and `fast`.
pub fn example_objects(images: &Path, fast: &Path) -> anyhow::Result<Vec<Value>> {
    let mut objects = Vec::new();
    for (file, text) in EXAMPLES {
        let text = text
            .replace(EXAMPLE_IMAGES_ROOT, &images.to_string_lossy())
            .replace(EXAMPLE_FAST_ROOT, &fast.to_string_lossy());
        for document in serde_yaml::Deserializer::from_str(&text) {
            let value = serde_json::to_value(
                serde_yaml::Value::deserialize(document)
                    .with_context(|| format!("parsing examples/{file}"))?,
            )
            .with_context(|| format!("converting examples/{file}"))?;
            if !value.is_null() {
                objects.push(value);
            }
        }
    }
    Ok(objects)
}

/// The `ApiResource` of every mcs-operator kind, in dependency order, with its kind name.
pub fn api_resources() -> Vec<ApiResource> {
    vec![
        ApiResource::erase::<HypervisorConnection>(&()),
        ApiResource::erase::<HostingUnit>(&()),
        ApiResource::erase::<IdentityPool>(&()),
        ApiResource::erase::<ImageDefinition>(&()),
        ApiResource::erase::<ImageVersion>(&()),
        ApiResource::erase::<ImageVersionSpec>(&()),
        ApiResource::erase::<ProvScheme>(&()),
        ApiResource::erase::<ProvVm>(&()),
    ]
}

/// Applies `objects` in `namespace` with server-side apply (field manager `manager`).
pub async fn apply_objects(
    client: &Client,
    namespace: &str,
    objects: &[Value],
    manager: &str,
) -> anyhow::Result<()> {
    let resources = api_resources();
    for object in objects {
        let kind = object["kind"].as_str().unwrap_or_default();
        let name = object["metadata"]["name"].as_str().unwrap_or_default();
        let resource = resources
            .iter()
            .find(|r| r.kind == kind)
            .with_context(|| format!("{kind} {name}: not an mcs-operator kind"))?;
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), namespace, resource);
        api.patch(
            name,
            &crate::controller::strict::apply(manager),
            &Patch::Apply(object),
        )
        .await
        .with_context(|| format!("applying {kind} {name}"))?;
    }
    Ok(())
}

/// Runs `mcs-operator dev` until Ctrl-C.
pub async fn run(options: DevOptions) -> anyhow::Result<()> {
    check_qemu()?;
    std::fs::create_dir_all(&options.dir)
        .with_context(|| format!("creating {}", options.dir.display()))?;
    let dir = std::fs::canonicalize(&options.dir)
        .with_context(|| format!("resolving {}", options.dir.display()))?;
    let images = dir.join("images");
    let fast = dir.join("fast");
    for path in [&images, &fast.join("lab")] {
        std::fs::create_dir_all(path).with_context(|| format!("creating {}", path.display()))?;
    }
    init_logging(&dir.join("operator.log"))?;
    clean_previous_run(&[&images, &fast])?;
    let master = images.join(MASTER_FILE);
    println!("{}", master_image(&master, options.master.as_deref())?);

    let server = TestApiServer::start(TestApiConfig {
        tls: options.tls,
        ..Default::default()
    })
    .await
    .context("starting the test API server")?;
    for crd in crate::api::all_crds() {
        let value = serde_json::to_value(&crd).context("encoding a CRD")?;
        server.install_crd(&value).map_err(|e| {
            anyhow::anyhow!(
                "installing CRD {}: {e}",
                crd.metadata.name.as_deref().unwrap_or("?")
            )
        })?;
    }
    let kubeconfig = dir.join("kubeconfig");
    std::fs::write(&kubeconfig, server.kubeconfig_yaml())
        .with_context(|| format!("writing {}", kubeconfig.display()))?;
    println!("API server    {} (CRDs installed)", server.url());
    let client = server
        .client()
        .await
        .context("connecting to the API server")?;

    let operator = tokio::spawn(crate::controller::run(
        client.clone(),
        OperatorConfig {
            progress_interval: Duration::from_millis(250),
            ..OperatorConfig::default()
        },
    ));
    println!(
        "operator      running in-process, log: {}",
        dir.join("operator.log").display()
    );

    let objects = example_objects(&images, &fast)?;
    apply_objects(&client, NAMESPACE, &objects, "mcs-operator-dev").await?;
    println!(
        "applied       {} objects of examples/ in namespace {NAMESPACE}\n",
        objects.len()
    );

    let outcome = tokio::select! {
        outcome = watch_until_settled(&client) => outcome?,
        signal = tokio::signal::ctrl_c() => {
            signal.context("waiting for Ctrl-C")?;
            operator.abort();
            println!("\ninterrupted");
            return Ok(());
        }
    };
    println!();
    match outcome {
        Settled::Ready(elapsed) => {
            println!("Everything is Ready after {:.1} s.", elapsed.as_secs_f64())
        }
        Settled::Failed(what) => {
            println!("A task failed: {what}\nThe server keeps running so you can look.")
        }
    }
    println!(
        "\n  export KUBECONFIG={}\n  kubectl get mcs\n\nServing until Ctrl-C.",
        kubeconfig.display()
    );
    tokio::select! {
        signal = tokio::signal::ctrl_c() => signal.context("waiting for Ctrl-C")?,
        result = operator => result.context("the operator stopped")?,
    }
    println!("stopping");
    Ok(())
}

/// Checks that `qemu-img` and `qemu-io` can be run.
fn check_qemu() -> anyhow::Result<()> {
    for program in ["qemu-img", "qemu-io"] {
        match Command::new(program).arg("--version").output() {
            Ok(out) if out.status.success() => {}
            Ok(out) => bail!(
                "`{program} --version` failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
                "{program} is not installed; the Local backend needs it \
                 (Debian/Ubuntu: apt-get install qemu-utils; Fedora: dnf install qemu-img)"
            ),
            Err(e) => bail!("cannot run {program}: {e}"),
        }
    }
    Ok(())
}

/// Logs of the in-process operator go to `path` so the live table stays readable.
fn init_logging(path: &Path) -> anyhow::Result<()> {
    let file =
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // A second initialisation (only possible when called twice in one process) keeps the first.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .with_writer(std::sync::Mutex::new(file))
        .try_init();
    Ok(())
}

/// Removes the disks a previous `dev` run made (its objects lived only in that run's API
/// server); the master image stays.
fn clean_previous_run(roots: &[&Path]) -> anyhow::Result<()> {
    for root in roots {
        for sub in ["", "lab"] {
            for made in [
                mcs_backend::local::PREPARED_DIR,
                mcs_backend::local::MACHINES_DIR,
                mcs_backend::local::PROFILES_DIR,
            ] {
                let path = root.join(sub).join(made);
                if path.exists() {
                    std::fs::remove_dir_all(&path)
                        .with_context(|| format!("removing {}", path.display()))?;
                }
            }
        }
    }
    Ok(())
}

/// Puts the master image in place: a copy of `given`, the one of a previous run, or a new
/// sample image. Returns a line saying which.
fn master_image(master: &Path, given: Option<&Path>) -> anyhow::Result<String> {
    let partial = master.with_extension("qcow2.partial-dev");
    if partial.exists() {
        std::fs::remove_file(&partial)
            .with_context(|| format!("removing {}", partial.display()))?;
    }
    let p = partial.to_string_lossy().to_string();
    let line = if let Some(given) = given {
        std::fs::copy(given, &partial)
            .with_context(|| format!("copying {} to {}", given.display(), partial.display()))?;
        let snapshots = qemu("qemu-img", &["snapshot", "-l", &p])?;
        let has_base = snapshots
            .lines()
            .any(|l| l.split_whitespace().nth(1) == Some(MASTER_SNAPSHOT));
        if !has_base {
            qemu("qemu-img", &["snapshot", "-c", MASTER_SNAPSHOT, &p])?;
        }
        format!(
            "master image  {} (copied from {})",
            master.display(),
            given.display()
        )
    } else if master.exists() {
        return Ok(format!("master image  {} (reused)", master.display()));
    } else {
        qemu(
            "qemu-img",
            &["create", "-q", "-f", "qcow2", &p, SAMPLE_MASTER_SIZE],
        )?;
        qemu(
            "qemu-io",
            &["-f", "qcow2", "-c", "write -q -P 0xab 0 16M", &p],
        )?;
        qemu("qemu-img", &["snapshot", "-c", MASTER_SNAPSHOT, &p])?;
        format!(
            "master image  {} (new {SAMPLE_MASTER_SIZE} sample, snapshot `{MASTER_SNAPSHOT}`)",
            master.display()
        )
    };
    std::fs::rename(&partial, master)
        .with_context(|| format!("renaming {} to {}", partial.display(), master.display()))?;
    Ok(line)
}

/// Runs a qemu tool; its output, or an error with what it printed.
fn qemu(program: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("running {program}"))?;
    if !out.status.success() {
        bail!(
            "{program} {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// How the sample flow ended.
enum Settled {
    /// Every object is Ready, after this long.
    Ready(Duration),
    /// A task failed: which object and why.
    Failed(String),
}

/// One line of the live table.
#[derive(PartialEq)]
struct Row {
    what: String,
    state: String,
    progress: String,
    ready: String,
}

/// The state of every object, and whether the flow is done.
struct Snapshot {
    rows: Vec<Row>,
    all_ready: bool,
    failure: Option<String>,
}

/// Shows the objects until every one is Ready (or a task failed).
async fn watch_until_settled(client: &Client) -> anyhow::Result<Settled> {
    let started = Instant::now();
    let terminal = std::io::stdout().is_terminal();
    let mut shown: Option<Vec<Row>> = None;
    let mut lines_shown = 0;
    loop {
        let snapshot = snapshot(client).await?;
        if shown.as_ref() != Some(&snapshot.rows) {
            let table = render(&snapshot.rows);
            let mut out = std::io::stdout().lock();
            if terminal && lines_shown > 0 {
                write!(out, "\x1b[{lines_shown}A\x1b[J")?;
            } else if lines_shown > 0 {
                writeln!(out)?;
            }
            write!(out, "{table}")?;
            out.flush()?;
            lines_shown = table.lines().count();
            shown = Some(snapshot.rows);
        }
        if let Some(failure) = snapshot.failure {
            return Ok(Settled::Failed(failure));
        }
        if snapshot.all_ready {
            return Ok(Settled::Ready(started.elapsed()));
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Reads every object of every kind in [`NAMESPACE`].
async fn snapshot(client: &Client) -> anyhow::Result<Snapshot> {
    let mut rows = Vec::new();
    let mut all_ready = true;
    let mut failure = None;
    for resource in api_resources() {
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), NAMESPACE, &resource);
        let list = api
            .list(&ListParams::default())
            .await
            .with_context(|| format!("listing {}", resource.plural))?;
        for object in list.items {
            let name = object.metadata.name.clone().unwrap_or_default();
            let status = object.data.get("status").cloned().unwrap_or(Value::Null);
            let task = &status["task"];
            let task_state = task["taskState"]
                .as_str()
                .and_then(|s| serde_json::from_value::<TaskState>(Value::from(s)).ok());
            let state = match (task_state, status["updateStatus"].as_str()) {
                (Some(TaskState::Finished), Some(update)) => Some(update.to_owned()),
                (task_state, update) => task_state
                    .map(|s| s.to_string())
                    .or_else(|| update.map(str::to_owned)),
            };
            let state = state
                .or_else(|| status["imageVersionSpecStatus"].as_str().map(str::to_owned))
                .or_else(|| status["imageVersionStatus"].as_str().map(str::to_owned))
                .unwrap_or_else(|| "-".into());
            let progress = task["taskProgress"]
                .as_i64()
                .map(|p| format!("{p} %"))
                .unwrap_or_else(|| "-".into());
            let ready_condition = status["conditions"]
                .as_array()
                .and_then(|c| c.iter().find(|c| c["type"] == "Ready"));
            let ready = ready_condition
                .and_then(|c| c["status"].as_str())
                .unwrap_or("-")
                .to_owned();
            if ready != "True" {
                all_ready = false;
            }
            if resource.kind == ProvScheme::kind(&()) {
                let wanted = object.data["spec"]["machineCount"].as_i64().unwrap_or(0);
                if status["readyMachines"].as_i64().unwrap_or(0) < wanted {
                    all_ready = false;
                }
            }
            if let Some(s) = task_state
                && s.is_failure()
            {
                let message = task["terminatingError"]["message"]
                    .as_str()
                    .or_else(|| ready_condition.and_then(|c| c["message"].as_str()))
                    .unwrap_or("");
                failure = Some(format!("{} {name}: {s} {message}", resource.kind));
            }
            rows.push(Row {
                what: format!("{}/{name}", resource.kind),
                state,
                progress,
                ready,
            });
        }
    }
    if rows.is_empty() {
        all_ready = false;
    }
    Ok(Snapshot {
        rows,
        all_ready,
        failure,
    })
}

/// The table of `rows`, one line each after a header.
fn render(rows: &[Row]) -> String {
    let width = rows.iter().map(|r| r.what.len()).max().unwrap_or(0).max(4);
    let state_width = rows.iter().map(|r| r.state.len()).max().unwrap_or(0).max(5);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:width$}  {:state_width$}  {:>8}  READY",
        "KIND/NAME", "STATE", "PROGRESS"
    );
    for row in rows {
        let _ = writeln!(
            out,
            "{:width$}  {:state_width$}  {:>8}  {}",
            row.what, row.state, row.progress, row.ready
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn examples_parse_and_move_the_storage_roots() {
        let objects =
            example_objects(Path::new("/tmp/dev/images"), Path::new("/tmp/dev/fast")).expect("ok");
        assert_eq!(objects.len(), 8);
        let roots = &objects[0]["spec"]["local"]["storageRoots"];
        assert_eq!(roots[0]["path"], "/tmp/dev/images");
        assert_eq!(roots[1]["path"], "/tmp/dev/fast");
        let resources = api_resources();
        let kinds: Vec<&str> = resources.iter().map(|r| r.kind.as_str()).collect();
        for object in &objects {
            assert!(kinds.contains(&object["kind"].as_str().expect("kind")));
        }
    }

    #[test]
    fn the_table_lines_up() {
        let rows = vec![Row {
            what: "ProvScheme/win11-desktops".into(),
            state: "Finished".into(),
            progress: "100 %".into(),
            ready: "True".into(),
        }];
        let table = render(&rows);
        assert_eq!(table.lines().count(), 2);
        assert!(table.contains("ProvScheme/win11-desktops  Finished     100 %  True"));
    }
}
