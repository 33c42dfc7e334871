//! The chart and `deploy/` for real: the operator's own image runs as a Pod on a real node and
//! reconciles the examples.
//!
//! Needs what `../shared/kube/start DIR --with-node` needs (root, containerd, runc, the CNI
//! plugins; `start` installs the missing Debian packages) and the real helm of
//! `scripts/k8s-tools`. The node has no registry, no Service network and no DNS, so the image is
//! built by `scripts/image` and imported, and the Pod uses `hostNetwork` with
//! `KUBERNETES_SERVICE_HOST=127.0.0.1` and the API server's port. The Local backend's storage is
//! a hostPath under the test's temporary directory, mounted at `/var/lib/mcs` as in a cluster.
//!
//! Where any of that is missing the test says plainly that it skipped. It never runs in the
//! test-API-server pass of `scripts/test` (`MCS_TEST_APISERVER=test`): only one node can run
//! on a machine, and the real-server pass runs it once.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Api, Patch, PatchParams};
use mcs_operator::api::{ImageVersionSpec, ProvScheme, ProvVm, TaskState, UpdateStatus};
use serde_json::{Value, json};
use support::operator::{make_master, wait_for};
use support::tools::{Helm, output, repo};

/// How long a step on the node may take (image import, Pod start, a flow).
const TIMEOUT: Duration = Duration::from_secs(240);
/// The namespace of the users' objects.
const USERS: &str = "vdi";
/// The Helm releases' namespace.
const HELM_NS: &str = "mcs-helm";
/// The image the test builds and imports.
const IMAGE_REF: &str = "localhost/mcs-operator:node-test";

/// A free TCP port on the machine (the node's Pods use the host network).
fn free_port() -> u16 {
    std::net::TcpListener::bind("0.0.0.0:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// The real node of `../shared/kube`, started fresh in `target/node-kube` and stopped on drop.
struct Node {
    dir: PathBuf,
    kubeconfig: PathBuf,
    kubectl: PathBuf,
    api_port: u16,
    client: kube::Client,
}

impl Node {
    /// Starts the node, or says why it cannot and returns `None`.
    async fn start() -> Option<Node> {
        let start = repo().join("../shared/kube/start");
        let skip = |why: &str| {
            eprintln!("node: SKIPPED: {why}");
            None
        };
        if std::env::var("MCS_TEST_APISERVER").as_deref() == Ok("test") {
            return skip("this pass uses the test API server; the real-server pass runs it");
        }
        if !start.is_file() {
            return skip("no ../shared/kube (a real control plane with a node)");
        }
        if !output(Command::new("id").arg("-u")).trim().eq("0") {
            return skip("`start --with-node` needs root");
        }
        let dir = repo().join("target/node-kube");
        let _ = Command::new(repo().join("../shared/kube/stop"))
            .arg(&dir)
            .output();
        let begun = Instant::now();
        output(
            Command::new(&start)
                .arg(&dir)
                .args(["--with-node", "--fresh"]),
        );
        eprintln!(
            "node: control plane and node ready in {:.1} s",
            begun.elapsed().as_secs_f64()
        );
        let env = std::fs::read_to_string(dir.join("env")).expect("DIR/env");
        let api_port = env
            .lines()
            .find_map(|l| l.strip_prefix("export KUBE_APISERVER_PORT="))
            .and_then(|p| p.trim().parse().ok())
            .expect("KUBE_APISERVER_PORT in DIR/env");
        let kubeconfig = dir.join("kubeconfig");
        let client = support::cluster::client(&kubeconfig).await;
        Some(Node {
            kubectl: dir.join("bin/kubectl"),
            dir,
            kubeconfig,
            api_port,
            client,
        })
    }

    fn kubectl(&self, args: &[&str]) -> String {
        output(
            Command::new(&self.kubectl)
                .arg("--kubeconfig")
                .arg(&self.kubeconfig)
                .args(args),
        )
    }

    /// Imports an image archive into the node's containerd.
    fn import(&self, archive: &Path) {
        output(
            Command::new(repo().join("../shared/kube/image"))
                .arg(&self.dir)
                .arg("import")
                .arg(archive),
        );
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let logs = self.dir.join("logs");
            for file in ["kubelet.log", "kube-scheduler.log"] {
                let text = std::fs::read_to_string(logs.join(file)).unwrap_or_default();
                let lines: Vec<&str> = text.lines().collect();
                eprintln!(
                    "--- {file} (last 30 lines)\n{}",
                    lines[lines.len().saturating_sub(30)..].join("\n")
                );
            }
        }
        let _ = Command::new(repo().join("../shared/kube/stop"))
            .arg(&self.dir)
            .output();
    }
}

/// The Local backend's storage on the machine: `images` with a master image holding `data_mib`
/// MiB and the snapshot `base`, and `fast/lab`, all owned by the operator's user.
fn make_storage(root: &Path, data_mib: u32) {
    let images = root.join("images");
    std::fs::create_dir_all(&images).expect("images");
    std::fs::create_dir_all(root.join("fast/lab")).expect("fast/lab");
    make_master(
        &images.join(mcs_operator::dev::MASTER_FILE),
        "256M",
        data_mib,
    );
    output(Command::new("chown").args(["-R", "65532:65532"]).arg(root));
}

/// Waits until `check` accepts object `name` of the users' namespace.
async fn wait_user<K>(node: &Node, name: &str, what: &str, check: impl Fn(&K) -> bool) -> K
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    let api: Api<K> = Api::namespaced(node.client.clone(), USERS);
    wait_for(&api, name, what, TIMEOUT, Duration::from_millis(250), check).await
}

fn task_state_of(spec: &ImageVersionSpec) -> Option<TaskState> {
    spec.status
        .as_ref()
        .and_then(|s| s.task.as_ref())
        .map(|t| t.task_state)
}

/// Waits until the scheme has `machines` machines, all UpToDate and Ready.
async fn wait_machines(node: &Node, machines: i32) {
    wait_user::<ProvScheme>(
        node,
        "win11-desktops",
        &format!("{machines} machines UpToDate"),
        |s| {
            s.status.as_ref().is_some_and(|st| {
                st.up_to_date_machines == machines
                    && st.task.as_ref().map(|t| t.task_state) == Some(TaskState::Finished)
            })
        },
    )
    .await;
    let vms: Api<ProvVm> = Api::namespaced(node.client.clone(), USERS);
    let list = vms.list(&Default::default()).await.expect("machines");
    assert_eq!(list.items.len(), usize::try_from(machines).expect("count"));
    for vm in list.items {
        assert_eq!(
            vm.status.as_ref().and_then(|s| s.update_status),
            Some(UpdateStatus::UpToDate),
            "{vm:?}"
        );
    }
}

/// Sets the scheme's machine count (as `kubectl scale` does).
async fn scale(node: &Node, machines: i32) {
    let schemes: Api<ProvScheme> = Api::namespaced(node.client.clone(), USERS);
    schemes
        .patch(
            "win11-desktops",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"machineCount": machines}})),
        )
        .await
        .expect("scaled");
}

/// The names of the Ready Pods of `selector` in `namespace`.
fn ready_pods(node: &Node, namespace: &str, selector: &str) -> Vec<String> {
    let pods: Value = serde_json::from_str(
        &node.kubectl(&["get", "pods", "-n", namespace, "-l", selector, "-o", "json"]),
    )
    .expect("pods JSON");
    pods["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
        .filter(|p| {
            p["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
        })
        .filter_map(|p| p["metadata"]["name"].as_str().map(String::from))
        .collect()
}

async fn wait_ready_pods(
    node: &Node,
    namespace: &str,
    selector: &str,
    count: usize,
) -> Vec<String> {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let pods = ready_pods(node, namespace, selector);
        if pods.len() == count {
            return pods;
        }
        assert!(
            Instant::now() < deadline,
            "{count} Ready Pods of {selector} in {namespace}; have {pods:?}\n{}",
            node.kubectl(&["get", "pods", "-A", "-o", "wide"])
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Checks that the Pod's log is JSON lines and prints the first few.
fn check_json_logs(node: &Node, namespace: &str, pod: &str) -> String {
    let log = node.kubectl(&["logs", "-n", namespace, pod]);
    let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(!lines.is_empty(), "{pod} logged nothing");
    for line in &lines {
        let parsed: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("{pod}: a log line that is not JSON ({e}): {line}"));
        assert!(
            parsed["level"].is_string() && parsed["timestamp"].is_string(),
            "{line}"
        );
    }
    println!("kubectl logs {pod} (first 6 of {} lines):", lines.len());
    for line in lines.iter().take(6) {
        println!("  {line}");
    }
    log
}

/// The holder of a Lease.
async fn holder(node: &Node, namespace: &str, lease: &str) -> Option<String> {
    let leases: Api<Lease> = Api::namespaced(node.client.clone(), namespace);
    leases
        .get_opt(lease)
        .await
        .ok()
        .flatten()
        .and_then(|l| l.spec?.holder_identity)
        .filter(|h| !h.is_empty())
}

/// Helm values for this node: the imported image, the host network with the API server's
/// address, the storage as a hostPath, free ports.
fn helm_values(node: &Node, storage: &Path, lease: &str, crds: bool) -> String {
    let (repository, tag) = IMAGE_REF.rsplit_once(':').expect("ref with tag");
    serde_json::to_string_pretty(&json!({
        "image": {"repository": repository, "tag": tag, "pullPolicy": "Never"},
        "hostNetwork": true,
        "extraEnv": [
            {"name": "KUBERNETES_SERVICE_HOST", "value": "127.0.0.1"},
            {"name": "KUBERNETES_SERVICE_PORT", "value": node.api_port.to_string()},
        ],
        "storage": {"type": "hostPath", "hostPath": {"path": storage, "type": "Directory"}},
        "metrics": {"port": free_port()},
        "probes": {"port": free_port()},
        "strategy": {"type": "Recreate"},
        "leaderElection": {"leaseName": lease},
        "crds": {"install": crds},
    }))
    .expect("values")
}

/// The examples, with the storage roots the Pod sees and copies slowed to 8 MiB/s (so that a
/// preparation is still running when the operator is rolled).
fn examples() -> Vec<Value> {
    let mut objects = mcs_operator::dev::example_objects(
        Path::new("/var/lib/mcs/images"),
        Path::new("/var/lib/mcs/fast"),
    )
    .expect("examples");
    for object in &mut objects {
        if object["kind"] == "HypervisorConnection" {
            object["spec"]["local"]["maxCopyRateMiBPerSecond"] = json!(8);
        }
    }
    objects
}

/// `helm install` on the node: the Deployment becomes Available through the kubelet's probes,
/// the Pod reconciles the examples, `helm upgrade` rolls it in the middle of a preparation that
/// then finishes, a second operator Pod takes the lease when the leader Pod is deleted, and
/// `helm uninstall` leaves the CRDs, the users' objects and the disks. Then the same operator
/// installed with `kubectl apply -k` (an overlay of `deploy/overlays/hostpath`) takes over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_image_runs_on_a_real_node_with_helm_and_kustomize() {
    let Some(node) = Node::start().await else {
        return;
    };
    let Some(helm) = Helm::find("node") else {
        return;
    };
    let kubeconfig = node.kubeconfig.to_str().expect("utf-8 path");
    let helm = |args: &[&str]| {
        let mut all = vec!["--kubeconfig", kubeconfig];
        all.extend_from_slice(args);
        helm.run(&all)
    };
    let work = tempfile::tempdir().expect("tempdir");
    let storage = work.path().join("storage");
    make_storage(&storage, 96);

    // The image, built without a registry and imported into the node.
    let archive = work.path().join("image.tar");
    let begun = Instant::now();
    output(
        Command::new(repo().join("scripts/image"))
            .arg("--out")
            .arg(&archive)
            .args(["--ref", IMAGE_REF]),
    );
    node.import(&archive);
    println!(
        "image {IMAGE_REF}: {} MiB, built and imported in {:.1} s",
        std::fs::metadata(&archive).expect("archive").len() >> 20,
        begun.elapsed().as_secs_f64()
    );

    // helm install; --wait returns once the Deployment is Available, which needs the readiness
    // probe (/readyz) to pass in the kubelet.
    let lease = "mcs-node-mcs-operator";
    let values = work.path().join("values-a.json");
    std::fs::write(&values, helm_values(&node, &storage, lease, true)).expect("values");
    let chart = repo().join("charts/mcs-operator");
    let chart = chart.to_str().expect("utf-8 path");
    let install = helm(&[
        "install",
        "mcs-node",
        chart,
        "-n",
        HELM_NS,
        "--create-namespace",
        "-f",
        values.to_str().expect("utf-8"),
        "--wait",
        "--timeout",
        "240s",
    ]);
    println!(
        "$ helm install mcs-node charts/mcs-operator -n {HELM_NS} --create-namespace -f values.json --wait\n{install}"
    );
    let deployment: Value = serde_json::from_str(&node.kubectl(&[
        "get",
        "deployment",
        "-n",
        HELM_NS,
        "mcs-node-mcs-operator",
        "-o",
        "json",
    ]))
    .expect("deployment");
    let available = deployment["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == "Available" && c["status"] == "True");
    assert!(available, "{deployment:#}");
    let probes = &deployment["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(probes["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(probes["livenessProbe"]["httpGet"]["path"], "/healthz");
    let selector = "app.kubernetes.io/instance=mcs-node";
    let first = wait_ready_pods(&node, HELM_NS, selector, 1).await;

    // The examples, reconciled by the Pod.
    node.kubectl(&["create", "namespace", USERS]);
    let objects = examples();
    mcs_operator::dev::apply_objects(&node.client, USERS, &objects, "node-test")
        .await
        .expect("examples applied");
    wait_user::<ImageVersionSpec>(&node, "win11-2026-11-prepared", "Finished", |s| {
        task_state_of(s) == Some(TaskState::Finished)
    })
    .await;
    wait_machines(&node, 3).await;
    let log = check_json_logs(&node, HELM_NS, &first[0]);
    assert!(log.contains("leading"), "the Pod leads:\n{log}");

    // helm upgrade with a changed value while a preparation copies: the Pod is replaced, the
    // next one resumes the task and finishes it.
    let next_version: Vec<Value> = objects
        .iter()
        .filter(|o| {
            [
                "win11-2026-11",
                "win11-2026-11-master",
                "win11-2026-11-prepared",
            ]
            .contains(&o["metadata"]["name"].as_str().unwrap_or_default())
        })
        .map(|o| {
            let text = serde_json::to_string(o).expect("JSON");
            serde_json::from_str(&text.replace("win11-2026-11", "win11-2026-12")).expect("JSON")
        })
        .collect();
    assert_eq!(
        next_version.len(),
        3,
        "a version, its master and prepared specs"
    );
    mcs_operator::dev::apply_objects(&node.client, USERS, &next_version, "node-test")
        .await
        .expect("the next image version");
    wait_user::<ImageVersionSpec>(&node, "win11-2026-12-prepared", "copying", |s| {
        s.status
            .as_ref()
            .and_then(|st| st.task.as_ref())
            .is_some_and(|t| t.task_state.is_running() && t.task_progress > 0)
    })
    .await;
    let upgrade = helm(&[
        "upgrade",
        "mcs-node",
        chart,
        "-n",
        HELM_NS,
        "--reuse-values",
        "--set",
        "log.level=debug",
        "--wait",
        "--timeout",
        "240s",
    ]);
    println!("$ helm upgrade mcs-node --reuse-values --set log.level=debug\n{upgrade}");
    let rolled = wait_ready_pods(&node, HELM_NS, selector, 1).await;
    assert_ne!(rolled, first, "the upgrade replaced the Pod");
    let spec = wait_user::<ImageVersionSpec>(
        &node,
        "win11-2026-12-prepared",
        "Finished after the roll",
        |s| task_state_of(s) == Some(TaskState::Finished),
    )
    .await;
    println!(
        "the preparation interrupted by helm upgrade finished: {:?}",
        spec.status
            .and_then(|s| s.task)
            .map(|t| (t.task_state, t.task_progress))
    );
    let log = check_json_logs(&node, HELM_NS, &rolled[0]);
    assert!(
        log.contains("win11-2026-12-prepared"),
        "the new Pod resumed the task:\n{log}"
    );

    // Two operator Pods contending for one lease. On this single node both use the host
    // network, so they are two releases with their own ports (one Deployment's replicas would
    // need the same ports on the same host); deleting the leader Pod hands the lease over.
    let values_b = work.path().join("values-b.json");
    std::fs::write(&values_b, helm_values(&node, &storage, lease, false)).expect("values");
    helm(&[
        "install",
        "mcs-node-b",
        chart,
        "-n",
        HELM_NS,
        "-f",
        values_b.to_str().expect("utf-8"),
        "--wait",
        "--timeout",
        "240s",
    ]);
    let both = wait_ready_pods(&node, HELM_NS, "app.kubernetes.io/name=mcs-operator", 2).await;
    let leader = holder(&node, HELM_NS, lease).await.expect("a leader");
    assert!(both.contains(&leader), "{leader} is one of {both:?}");
    let standby = both
        .iter()
        .find(|p| **p != leader)
        .expect("a standby")
        .clone();
    // Scaling the leader's Deployment to 0 deletes the leader Pod without a replacement that
    // could win the lease first, so the lease must go to the other release's Pod.
    let leader_deployment = if leader.starts_with("mcs-node-b-") {
        "mcs-node-b-mcs-operator"
    } else {
        "mcs-node-mcs-operator"
    };
    let deleted = Instant::now();
    node.kubectl(&[
        "scale",
        "deployment",
        "-n",
        HELM_NS,
        leader_deployment,
        "--replicas=0",
    ]);
    let deadline = Instant::now() + TIMEOUT;
    while holder(&node, HELM_NS, lease).await.as_deref() != Some(standby.as_str()) {
        assert!(Instant::now() < deadline, "{standby} never took the lease");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        "leader Pod {leader} deleted (its Deployment scaled to 0): {standby} holds the lease {:.1} s later",
        deleted.elapsed().as_secs_f64()
    );
    scale(&node, 4).await;
    wait_machines(&node, 4).await;

    // helm uninstall keeps the CRDs, the users' objects and their disks.
    for release in ["mcs-node-b", "mcs-node"] {
        let out = helm(&["uninstall", release, "-n", HELM_NS, "--wait"]);
        println!("$ helm uninstall {release}\n{out}");
    }
    let crds = node.kubectl(&["get", "crd", "-o", "name"]);
    assert_eq!(crds.matches("mcs.imaging.dev").count(), 8, "{crds}");
    let vms: Api<ProvVm> = Api::namespaced(node.client.clone(), USERS);
    let machines = vms.list(&Default::default()).await.expect("machines").items;
    assert_eq!(machines.len(), 4);
    for vm in &machines {
        let disk = vm
            .status
            .as_ref()
            .and_then(|s| s.disks.iter().find(|d| d.name == "os"))
            .expect("an os disk")
            .path
            .clone();
        let on_disk = ["images", "fast/lab"]
            .iter()
            .any(|root| storage.join(root).join(&disk).exists());
        assert!(on_disk, "{disk} is still on disk");
    }

    // The same operator with kubectl apply -k: an overlay of deploy/overlays/hostpath for this
    // node. It takes over the users' objects.
    // kustomize loads bases only by relative paths: the overlay lives in target/.
    let overlay = repo().join("target/node-test-overlay");
    std::fs::create_dir_all(&overlay).expect("overlay");
    let (metrics, probes) = (free_port(), free_port());
    std::fs::write(
        overlay.join("kustomization.yaml"),
        format!(
            r#"apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
  - {base}
images:
  - name: ghcr.io/mcs-operator/mcs-operator
    newName: {repository}
    newTag: {tag}
patches:
  - target:
      kind: Deployment
      name: mcs-operator
    patch: |-
      - op: replace
        path: /spec/template/spec/volumes/0/hostPath/path
        value: {storage}
      - op: add
        path: /spec/template/spec/hostNetwork
        value: true
      - op: replace
        path: /spec/template/spec/containers/0/imagePullPolicy
        value: Never
      - op: replace
        path: /spec/template/spec/containers/0/ports
        value:
          - name: metrics
            containerPort: {metrics}
          - name: probes
            containerPort: {probes}
      - op: add
        path: /spec/template/spec/containers/0/env/-
        value: {{name: KUBERNETES_SERVICE_HOST, value: "127.0.0.1"}}
      - op: add
        path: /spec/template/spec/containers/0/env/-
        value: {{name: KUBERNETES_SERVICE_PORT, value: "{api}"}}
      - op: add
        path: /spec/template/spec/containers/0/env/-
        value: {{name: MCS_METRICS_ADDRESS, value: "0.0.0.0:{metrics}"}}
      - op: add
        path: /spec/template/spec/containers/0/env/-
        value: {{name: MCS_PROBE_ADDRESS, value: "0.0.0.0:{probes}"}}
"#,
            base = "../../deploy/overlays/hostpath",
            repository = IMAGE_REF.rsplit_once(':').expect("tag").0,
            tag = IMAGE_REF.rsplit_once(':').expect("tag").1,
            storage = storage.display(),
            api = node.api_port,
        ),
    )
    .expect("overlay kustomization");
    let applied = node.kubectl(&["apply", "-k", overlay.to_str().expect("utf-8")]);
    println!("$ kubectl apply -k <overlay of deploy/overlays/hostpath>\n{applied}");
    node.kubectl(&[
        "rollout",
        "status",
        "deployment/mcs-operator",
        "-n",
        "mcs-system",
        "--timeout=240s",
    ]);
    let pods = wait_ready_pods(
        &node,
        "mcs-system",
        "app.kubernetes.io/name=mcs-operator",
        1,
    )
    .await;
    scale(&node, 5).await;
    wait_machines(&node, 5).await;
    let log = check_json_logs(&node, "mcs-system", &pods[0]);
    assert!(log.contains("leading"), "{log}");
}
