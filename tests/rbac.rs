//! Least privilege, proven on a real API server: the RBAC that the chart and `deploy/` install
//! for the operator allows every request the operator and the `scheme` CLI make, and grants
//! nothing they do not use.
//!
//! Each test starts a control plane of its own from `KUBEBUILDER_ASSETS` with an audit log of
//! every request, installs the operator as a user does (`helm install` of `charts/mcs-operator`,
//! or `kubectl apply -k deploy/`) into `mcs-system` (the objects are only stored: there is no
//! kubelet, nothing runs in the cluster), creates a token for the installed ServiceAccount
//! (`kubectl create token`) and runs the real `mcs-operator run` binary locally with a
//! kubeconfig holding only that token, configured as the installed Deployment configures it
//! (its environment: leader election on the Lease in `mcs-system`, ...). It drives a flow
//! through every controller path that talks to the API server: the examples to Ready, a
//! credentials Secret, configuration changes (new scheme versions, pruned by `maxVersions`),
//! `scheme history/diff/revert` with the same token, scale up (by a namespace user bound to the
//! built-in `edit` role, which the chart's aggregated roles extend) and down, a version whose
//! ControllerRevision name is already taken, the deletion of the scheme, the prepared spec,
//! the master spec, the version and the definition, and SIGTERM (the Lease is released). The
//! API server runs with `OwnerReferencesPermissionEnforcement` on, as some distributions do.
//!
//! Then, from the audit log: no request of the ServiceAccount was refused (403), each one is
//! allowed by the installed ClusterRole or Role, and each granted (API group, resource, verb)
//! was used, except the grants listed in [`NOT_EXERCISED`] with the reason for each.
//!
//! helm is `HELM`, else `target/k8s-tools/helm` (`scripts/k8s-tools` installs it). Without a
//! control plane (`KUBEBUILDER_ASSETS`) or helm the tests say so and pass, except under `CI`,
//! where missing helm fails them.

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::ControllerRevision;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Secret;
use kube::Resource;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use mcs_operator::api::{
    HypervisorConnection, ImageDefinition, ImageVersion, ImageVersionSpec, ProvScheme, ProvVm,
    TaskState, UpdateStatus,
};
use mcs_testapi::control_plane::{AuditEvent, ControlPlaneConfig};
use serde_json::{Value, json};
use support::cluster::{Cluster, Mode, mode};
use support::operator::{Harness, PREPARED, SCHEME, TIMEOUT, ready, task_state};
use support::tools::{Helm, output, repo};

/// The namespace both installations use.
const NAMESPACE: &str = "mcs-system";
/// The Helm release name (its objects are then named `mcs-operator`, as in `deploy/`).
const RELEASE: &str = "mcs-operator";
/// Objects of `examples/` besides those `support::operator` names.
const MASTER: &str = "win11-2026-11-master";
const VERSION: &str = "win11-2026-11";
const DEFINITION: &str = "win11";

/// Grants that no flow of this test can exercise, each with the reason it is granted anyway:
/// (API group, resource, verb, reason). A grant listed here that the flow does use fails the
/// test, so the list cannot go stale.
const NOT_EXERCISED: &[(&str, &str, &str, &str)] = &[
    ("kubevirt.io", "virtualmachines", "get", KUBEVIRT),
    ("kubevirt.io", "virtualmachines", "list", KUBEVIRT),
    ("kubevirt.io", "virtualmachines", "watch", KUBEVIRT),
    ("kubevirt.io", "virtualmachines", "create", KUBEVIRT),
    ("kubevirt.io", "virtualmachines", "patch", KUBEVIRT),
    ("kubevirt.io", "virtualmachines", "delete", KUBEVIRT),
    ("cdi.kubevirt.io", "datavolumes", "get", KUBEVIRT),
    ("cdi.kubevirt.io", "datavolumes", "list", KUBEVIRT),
    ("cdi.kubevirt.io", "datavolumes", "create", KUBEVIRT),
    ("cdi.kubevirt.io", "datavolumes", "patch", KUBEVIRT),
    ("cdi.kubevirt.io", "datavolumes", "delete", KUBEVIRT),
    (
        "snapshot.kubevirt.io",
        "virtualmachinesnapshots",
        "get",
        KUBEVIRT,
    ),
    (
        "snapshot.kubevirt.io",
        "virtualmachinesnapshots",
        "list",
        KUBEVIRT,
    ),
    (
        "snapshot.kubevirt.io",
        "virtualmachinesnapshotcontents",
        "get",
        KUBEVIRT,
    ),
    (
        "snapshot.kubevirt.io",
        "virtualmachinesnapshotcontents",
        "list",
        KUBEVIRT,
    ),
    (
        "snapshot.storage.k8s.io",
        "volumesnapshots",
        "get",
        KUBEVIRT,
    ),
    (
        "snapshot.storage.k8s.io",
        "volumesnapshots",
        "list",
        KUBEVIRT,
    ),
    (
        "instancetype.kubevirt.io",
        "virtualmachineclusterinstancetypes",
        "list",
        KUBEVIRT,
    ),
    (
        "k8s.cni.cncf.io",
        "network-attachment-definitions",
        "list",
        KUBEVIRT,
    ),
    ("storage.k8s.io", "storageclasses", "get", KUBEVIRT),
    ("", "persistentvolumeclaims", "get", KUBEVIRT),
    ("", "persistentvolumeclaims", "patch", KUBEVIRT),
    ("", "persistentvolumeclaims", "delete", KUBEVIRT),
    ("", "secrets", "create", KUBEVIRT),
    ("", "secrets", "patch", KUBEVIRT),
    ("", "secrets", "delete", KUBEVIRT),
];

/// Why the KubeVirt backend's grants are not exercised here.
const KUBEVIRT: &str = "the KubeVirt backend's; this flow runs the Local examples, tests/e2e_kubevirt.rs runs the KubeVirt ones";

/// The two tests start a control plane each; one at a time is enough for two cores.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// `helm install` of the chart, then the whole flow as the chart's ServiceAccount.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chart_rbac_allows_the_flow_and_nothing_more() {
    let test = "chart_rbac_allows_the_flow_and_nothing_more";
    let Some(helm) = Helm::find(test) else {
        return;
    };
    if !has_own_control_plane(test) {
        return;
    }
    let _serial = ONE_AT_A_TIME.lock().await;
    let mut h = harness("rbac-chart").await;
    let kubeconfig = h.cluster.kubeconfig.clone();
    let chart = repo().join("charts/mcs-operator");
    let chart = chart.to_string_lossy();
    let rendered =
        parse_manifests(&helm.run(&["template", RELEASE, &chart, "--namespace", NAMESPACE]));
    let output = helm.run(&[
        "install",
        RELEASE,
        &chart,
        "--namespace",
        NAMESPACE,
        "--create-namespace",
        "--kubeconfig",
        &kubeconfig.to_string_lossy(),
    ]);
    eprintln!(
        "$ helm install {RELEASE} charts/mcs-operator --namespace {NAMESPACE} --create-namespace\n{output}"
    );
    prove(&mut h, &rendered, "helm install").await;
}

/// `kubectl apply -k deploy/`, then the whole flow as the ServiceAccount of `deploy/`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_rbac_allows_the_flow_and_nothing_more() {
    let test = "deploy_rbac_allows_the_flow_and_nothing_more";
    if !has_own_control_plane(test) {
        return;
    }
    let _serial = ONE_AT_A_TIME.lock().await;
    let mut h = harness("rbac-deploy").await;
    let deploy = repo().join("deploy");
    let deploy = deploy.to_string_lossy();
    let plane = h.cluster.control_plane().expect("own control plane");
    let rendered = parse_manifests(&output(plane.kubectl().args(["kustomize", &deploy])));
    let applied = output(plane.kubectl().args(["apply", "-k", &deploy]));
    eprintln!("$ kubectl apply -k deploy/\n{applied}");
    prove(&mut h, &rendered, "kubectl apply -k deploy/").await;
}

/// Whether this test gets a control plane of its own with an audit log; says why not.
fn has_own_control_plane(test: &str) -> bool {
    let own = matches!(mode(), Mode::Assets(_));
    if !own {
        eprintln!(
            "{test}: SKIPPED: needs a control plane of its own with an audit log (KUBEBUILDER_ASSETS, see scripts/kube-assets); this API server cannot show which requests were made"
        );
    }
    own
}

/// A harness on a control plane of its own with an audit log, owner-reference permission
/// enforcement and no CRDs (the installation brings them).
async fn harness(name: &str) -> Harness {
    let cluster = Cluster::start_private_with(name, |config: &mut ControlPlaneConfig| {
        config.audit_log = true;
        config.admission_plugins = vec!["OwnerReferencesPermissionEnforcement".into()];
        config.crds.clear();
    })
    .await;
    Harness::with_cluster(cluster, name, "64M", 16).await
}

/// After an installation (`how`) whose manifests are `rendered`: runs the operator as the
/// installed ServiceAccount through the flow, stops it with SIGTERM and checks the audit log
/// against the installed roles.
async fn prove(h: &mut Harness, rendered: &[Value], how: &str) {
    let plane = h.cluster.control_plane().expect("own control plane");
    let established = output(plane.kubectl().args([
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        "customresourcedefinitions",
        "--all",
    ]));
    assert_eq!(
        established.lines().count(),
        8,
        "{how} installs 8 CRDs: {established}"
    );

    let account = one(rendered, "ServiceAccount");
    let account_name = account["metadata"]["name"].as_str().expect("a name");
    let user = format!("system:serviceaccount:{NAMESPACE}:{account_name}");
    let token = output(plane.kubectl().args([
        "create",
        "token",
        account_name,
        "--namespace",
        NAMESPACE,
        "--duration=1h",
    ]));
    let kubeconfig = h.dir.path().join("operator.kubeconfig");
    std::fs::write(
        &kubeconfig,
        token_kubeconfig(plane.kubeconfig_path(), token.trim()),
    )
    .expect("kubeconfig written");
    let users = namespace_users(h);

    // The operator as the installed Deployment runs it: its arguments and environment (the
    // downward-API variables filled in as the kubelet would).
    let container = &one(rendered, "Deployment")["spec"]["template"]["spec"]["containers"][0];
    let args: Vec<String> = container["args"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|a| a.as_str().map(str::to_owned))
        .collect();
    assert_eq!(args.first().map(String::as_str), Some("run"), "{args:?}");
    h.operator_args = args[1..].to_vec();
    h.operator_env = container["env"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| {
            let name = e["name"].as_str()?.to_owned();
            let value = match name.as_str() {
                "POD_NAMESPACE" => NAMESPACE.to_owned(),
                "POD_NAME" => "mcs-operator-rbac-test".to_owned(),
                _ => e["value"].as_str()?.to_owned(),
            };
            Some((name, value))
        })
        .collect();
    assert!(
        h.operator_env
            .iter()
            .any(|(name, value)| name == "MCS_LEADER_ELECT" && value == "true"),
        "the installed operator elects a leader: {:?}",
        h.operator_env
    );
    let env = |name: &str| {
        h.operator_env
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    };
    let lease = env("MCS_LEADER_ELECTION_LEASE").unwrap_or_else(|| "mcs-operator".into());
    let pod = env("POD_NAME").expect("the Deployment sets POD_NAME");
    h.operator_kubeconfig = Some(kubeconfig.clone());
    h.start_operator();

    let started = Instant::now();
    flow(h, &kubeconfig, &users).await;
    let leases: Api<Lease> = Api::namespaced(h.cluster.client.clone(), NAMESPACE);
    let holder = |lease: Lease| lease.spec.and_then(|s| s.holder_identity);
    assert_eq!(
        holder(leases.get(&lease).await.expect("the leader Lease")).as_deref(),
        Some(pod.as_str()),
        "the operator led through the Lease {NAMESPACE}/{lease}"
    );
    stop_with_sigterm(h).await;
    let released = holder(leases.get(&lease).await.expect("the leader Lease"));
    assert!(
        released.as_deref().is_none_or(str::is_empty),
        "SIGTERM released the Lease (holder: {released:?})"
    );
    eprintln!(
        "{how}: the flow took {:.1} s as {user}",
        started.elapsed().as_secs_f64()
    );

    let log = operator_log(h);
    let refused: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("Forbidden") || l.contains("forbidden") || l.contains(" 403"))
        .collect();
    assert!(
        refused.is_empty(),
        "the operator was refused something:\n{}",
        refused.join("\n")
    );

    let plane = h.cluster.control_plane().expect("own control plane");
    let events: Vec<AuditEvent> = plane
        .audit_events()
        .expect("audit log")
        .into_iter()
        .filter(|e| e.username == user)
        .collect();
    let roles = bound_rules(rendered, account_name);
    let report = Coverage::of(&events, &roles);
    eprintln!(
        "{how}: {} requests of {user}\n{}",
        events.len(),
        report.table()
    );
    report.check(how);
}

/// Sends SIGTERM to the operator and waits (at most 30 s) until it has exited cleanly.
async fn stop_with_sigterm(h: &mut Harness) {
    let mut child = h.operator.take().expect("the operator runs");
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success(), "SIGTERM sent");
    let deadline = Instant::now() + Duration::from_secs(30);
    let exit = loop {
        if let Some(exit) = child.try_wait().expect("wait") {
            break exit;
        }
        assert!(
            Instant::now() < deadline,
            "the operator did not stop within 30 s of SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        exit.success(),
        "the operator exits cleanly on SIGTERM: {exit}"
    );
}

/// Kubeconfigs of two users of the test's namespace: `editor` bound to the built-in `edit`
/// role, `viewer` to `view` (the chart's aggregated roles add the mcs kinds to both).
struct Users {
    editor: PathBuf,
    viewer: PathBuf,
}

/// Makes the ServiceAccounts `editor` and `viewer` in the test's namespace, binds them to
/// `edit` and `view` there, and writes a kubeconfig with a token for each.
fn namespace_users(h: &mut Harness) -> Users {
    let namespace = h.cluster.namespace.clone();
    let dir = h.dir.path().to_owned();
    let plane = h.cluster.control_plane().expect("own control plane");
    let mut paths = Vec::new();
    for (user, role) in [("editor", "edit"), ("viewer", "view")] {
        output(
            plane
                .kubectl()
                .args(["create", "serviceaccount", user, "-n", &namespace]),
        );
        output(plane.kubectl().args([
            "create",
            "rolebinding",
            user,
            &format!("--clusterrole={role}"),
            &format!("--serviceaccount={namespace}:{user}"),
            "-n",
            &namespace,
        ]));
        let token = output(plane.kubectl().args([
            "create",
            "token",
            user,
            "-n",
            &namespace,
            "--duration=1h",
        ]));
        let path = dir.join(format!("{user}.kubeconfig"));
        std::fs::write(
            &path,
            token_kubeconfig(plane.kubeconfig_path(), token.trim()),
        )
        .expect("kubeconfig written");
        paths.push(path);
    }
    let viewer = paths.pop().expect("viewer");
    let editor = paths.pop().expect("editor");
    Users { editor, viewer }
}

/// `kubectl ARGS -n NAMESPACE` with `kubeconfig`: whether it succeeded, and what it printed.
fn kubectl_as(h: &Harness, kubeconfig: &Path, args: &[&str]) -> (bool, String) {
    let kubectl = support::cluster::kubectl_path().expect("kubectl");
    let out = Command::new(kubectl)
        .args(args)
        .args(["-n", &h.cluster.namespace])
        .env("KUBECONFIG", kubeconfig)
        .output()
        .expect("kubectl runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// The flow, as the operator's ServiceAccount (the operator process and the `scheme` CLI with
/// `kubeconfig`); the test itself writes the users' objects with the admin client, except the
/// scale-up, made by the namespace user `editor`.
async fn flow(h: &Harness, kubeconfig: &Path, users: &Users) {
    h.apply(&h.examples()).await;
    h.wait_examples_done().await;
    let schemes = h.api::<ProvScheme>();

    // The connection's credentials Secret is read (only to learn that it holds data).
    h.api::<Secret>()
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "metadata": {"name": "local-credentials"},
                "stringData": {"username": "mcs", "password": "not-a-real-one"},
            }))
            .expect("secret"),
        )
        .await
        .expect("secret created");
    let connections = h.api::<HypervisorConnection>();
    let patched = connections
        .patch(
            "local",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"credentialsSecretRef": {"name": "local-credentials"}}})),
        )
        .await
        .expect("connection patched");
    let generation = patched.meta().generation;
    h.wait::<HypervisorConnection>("local", "Ready with its credentials", |c| {
        c.status
            .as_ref()
            .is_some_and(|s| s.observed_generation == generation && ready(&s.conditions))
    })
    .await;

    // Two configuration changes: versions 2 and 3; at maxVersions 2 version 2 is pruned
    // (version 1 stays: the machines were built from it).
    patch_scheme(h, json!({"vmCpuCount": 4, "maxVersions": 2})).await;
    wait_version(h, 2).await;
    patch_scheme(h, json!({"vmMemoryMB": 8192})).await;
    wait_version(h, 3).await;
    let revisions = h.api::<ControllerRevision>();
    wait_until("version 2 is pruned", || async {
        revisions
            .get_opt(&format!("{SCHEME}-v2"))
            .await
            .expect("get")
            .is_none()
    })
    .await;

    // The scheme CLI with the operator's token.
    let history = scheme_cli(h, kubeconfig, &["history", SCHEME]);
    assert!(history.contains('3') && history.contains('1'), "{history}");
    let diff = scheme_cli(h, kubeconfig, &["diff", SCHEME, "1", "3"]);
    assert!(diff.contains("vmMemoryMB"), "{diff}");
    scheme_cli(h, kubeconfig, &["revert", SCHEME, "--to-version", "1"]);
    wait_version(h, 1).await;

    // The namespace's users through the built-in roles the chart extends: a viewer reads the
    // kinds and may not scale; an editor reads the versions and scales up (a machine is created
    // and built). Role aggregation is asynchronous: wait until the editor may scale.
    wait_until("the edit role includes provschemes/scale", || async {
        kubectl_as(
            h,
            &users.editor,
            &[
                "auth",
                "can-i",
                "patch",
                "provschemes.mcs.imaging.dev",
                "--subresource=scale",
            ],
        )
        .0
    })
    .await;
    let (read, text) = kubectl_as(h, &users.viewer, &["get", "provschemes,provvms"]);
    assert!(
        read && text.contains(SCHEME),
        "a viewer reads the kinds: {text}"
    );
    let (scaled, text) = kubectl_as(
        h,
        &users.viewer,
        &["scale", &format!("provscheme/{SCHEME}"), "--replicas=4"],
    );
    assert!(
        !scaled && text.contains("forbidden"),
        "a viewer may not scale: {text}"
    );
    let history = scheme_cli(h, &users.editor, &["history", SCHEME]);
    assert!(history.contains("initial version"), "{history}");
    let (scaled, text) = kubectl_as(
        h,
        &users.editor,
        &["scale", &format!("provscheme/{SCHEME}"), "--replicas=4"],
    );
    assert!(scaled, "an editor scales: {text}");

    // Owner references are permission-checked (OwnerReferencesPermissionEnforcement): the
    // operator's ControllerRevisions and ProvVMs name their scheme as owner without
    // blockOwnerDeletion, which would need `provschemes/finalizers update`; the editor, who
    // lacks it, is refused such a reference.
    let uid = schemes.get(SCHEME).await.expect("scheme").metadata.uid;
    let blocking = h.dir.path().join("blocking-owner.json");
    std::fs::write(
        &blocking,
        json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "blocks-the-scheme", "ownerReferences": [{
                "apiVersion": "mcs.imaging.dev/v1alpha1", "kind": "ProvScheme", "name": SCHEME,
                "uid": uid, "blockOwnerDeletion": true,
            }]},
        })
        .to_string(),
    )
    .expect("manifest written");
    let (created, text) = kubectl_as(
        h,
        &users.editor,
        &["create", "-f", &blocking.to_string_lossy()],
    );
    assert!(
        !created && text.contains("cannot set blockOwnerDeletion"),
        "the API server enforces owner-reference permissions: {text}"
    );
    h.wait::<ProvVm>("vdi-004", "built and UpToDate", |vm| {
        vm.status.as_ref().is_some_and(|s| {
            s.update_status == Some(UpdateStatus::UpToDate) && ready(&s.conditions)
        })
    })
    .await;
    patch_scheme(h, json!({"machineCount": 2})).await;
    let machines = h.api::<ProvVm>();
    for gone in ["vdi-004", "vdi-003"] {
        wait_until(&format!("{gone} is deleted"), || async {
            machines.get_opt(gone).await.expect("get").is_none()
        })
        .await;
    }
    h.wait::<ProvScheme>(SCHEME, "2 machines", |s| {
        s.status.as_ref().is_some_and(|st| st.machine_count == 2)
    })
    .await;

    // The name of the next version's ControllerRevision is taken by another object: the
    // operator reads it, finds another configuration and retries until it is gone. Then, at
    // maxVersions 2, version 3 is pruned (1 stays: the machines were built from it).
    revisions
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "metadata": {"name": format!("{SCHEME}-v4")},
                "revision": 4,
                "data": {"note": "not a scheme version"},
            }))
            .expect("revision"),
        )
        .await
        .expect("a revision in the way");
    patch_scheme(h, json!({"vmCpuCount": 3})).await;
    wait_until("the operator finds version 4's name taken", || async {
        operator_log(h).contains("already exists with another configuration")
    })
    .await;
    revisions
        .delete(&format!("{SCHEME}-v4"), &DeleteParams::default())
        .await
        .expect("the revision in the way deleted");
    wait_version(h, 4).await;
    wait_until("version 3 is pruned", || async {
        revisions
            .get_opt(&format!("{SCHEME}-v3"))
            .await
            .expect("get")
            .is_none()
    })
    .await;

    // Deleting the scheme removes its machines; then the prepared spec goes too.
    schemes
        .delete(SCHEME, &DeleteParams::default())
        .await
        .expect("scheme deleted");
    wait_until("the scheme and its machines are gone", || async {
        schemes.get_opt(SCHEME).await.expect("get").is_none()
            && machines
                .list(&Default::default())
                .await
                .expect("list")
                .items
                .is_empty()
    })
    .await;
    delete_and_wait(h.api::<ImageVersionSpec>(), PREPARED).await;
    delete_and_wait(h.api::<ImageVersionSpec>(), MASTER).await;
    delete_and_wait(h.api::<ImageVersion>(), VERSION).await;
    delete_and_wait(h.api::<ImageDefinition>(), DEFINITION).await;
}

/// Deletes object `name` and waits until it is gone (the operator has removed its finalizer).
async fn delete_and_wait<K>(api: Api<K>, name: &str)
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    api.delete(name, &DeleteParams::default())
        .await
        .unwrap_or_else(|e| panic!("deleting {name}: {e}"));
    wait_until(&format!("{name} is gone"), || async {
        api.get_opt(name).await.expect("get").is_none()
    })
    .await;
}

/// Everything the operator has logged so far.
fn operator_log(h: &Harness) -> String {
    (1..=h.starts)
        .map(|n| std::fs::read_to_string(h.operator_log(n)).unwrap_or_default())
        .collect()
}

/// Merge-patches the example scheme's spec (as its user, with the admin client).
async fn patch_scheme(h: &Harness, spec: Value) {
    h.api::<ProvScheme>()
        .patch(
            SCHEME,
            &PatchParams::default(),
            &Patch::Merge(json!({ "spec": spec })),
        )
        .await
        .expect("scheme patched");
}

/// Waits until the scheme's current version is `version`, its task Finished and its spec
/// observed.
async fn wait_version(h: &Harness, version: i64) {
    h.wait::<ProvScheme>(SCHEME, &format!("version {version} Finished"), |s| {
        s.status.as_ref().is_some_and(|st| {
            st.observed_generation == s.metadata.generation
                && st.provisioning_scheme_version == Some(version)
                && task_state(st.task.as_ref()) == Some(TaskState::Finished)
        })
    })
    .await;
}

/// Polls `check` until it holds, at most [`TIMEOUT`].
async fn wait_until<F, Fut>(what: &str, check: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + TIMEOUT;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting: {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `mcs-operator scheme ARGS -n NAMESPACE` with `kubeconfig`; what it printed.
fn scheme_cli(h: &Harness, kubeconfig: &Path, args: &[&str]) -> String {
    let text = output(
        Command::new(env!("CARGO_BIN_EXE_mcs-operator"))
            .arg("scheme")
            .args(args)
            .args(["-n", &h.cluster.namespace])
            .env("KUBECONFIG", kubeconfig),
    );
    eprintln!("$ mcs-operator scheme {}\n{text}", args.join(" "));
    text
}

/// The documents of a multi-document YAML stream (empty ones left out).
fn parse_manifests(text: &str) -> Vec<Value> {
    use serde::Deserialize as _;
    serde_yaml::Deserializer::from_str(text)
        .map(|doc| Value::deserialize(doc).expect("manifest YAML"))
        .filter(|v| !v.is_null())
        .collect()
}

/// The only object of `kind` in `objects`.
fn one<'a>(objects: &'a [Value], kind: &str) -> &'a Value {
    let found: Vec<&Value> = objects.iter().filter(|o| o["kind"] == kind).collect();
    assert_eq!(found.len(), 1, "one {kind} is installed: {found:#?}");
    found[0]
}

/// A kubeconfig for the API server of `admin` (its server and CA) that authenticates with
/// `token` only.
fn token_kubeconfig(admin: &Path, token: &str) -> String {
    let admin = kube::config::Kubeconfig::read_from(admin).expect("admin kubeconfig");
    let cluster = admin
        .clusters
        .first()
        .and_then(|c| c.cluster.as_ref())
        .expect("a cluster");
    let server = cluster.server.as_deref().expect("a server");
    let ca = cluster
        .certificate_authority_data
        .as_deref()
        .expect("the cluster's CA");
    format!(
        "apiVersion: v1
kind: Config
clusters:
- name: rbac
  cluster:
    server: {server}
    certificate-authority-data: {ca}
users:
- name: operator
  user:
    token: {token}
contexts:
- name: rbac
  context:
    cluster: rbac
    user: operator
current-context: rbac
"
    )
}

/// One RBAC rule of a role bound to the operator's ServiceAccount.
#[derive(Debug, Clone)]
struct Rule {
    /// `ClusterRole/NAME` or `Role/NAMESPACE/NAME`.
    role: String,
    /// `None` for a ClusterRole bound cluster-wide; the Role's namespace otherwise.
    namespace: Option<String>,
    groups: Vec<String>,
    /// Resources, `resource/subresource` for a subresource.
    resources: Vec<String>,
    verbs: Vec<String>,
    /// `resourceNames` (empty: any name).
    names: Vec<String>,
}

impl Rule {
    /// Whether this rule allows `request` (as the RBAC authorizer decides it).
    fn allows(&self, request: &AuditEvent) -> bool {
        let Some(resource) = full_resource(request) else {
            return false;
        };
        let group = request.api_group.as_deref().unwrap_or_default();
        let any = |list: &[String], item: &str| list.iter().any(|x| x == "*" || x == item);
        // The authorizer sees no name for a create or a collection request.
        let name = match request.verb.as_str() {
            "create" | "deletecollection" => None,
            _ => request.name.as_deref(),
        };
        self.namespace
            .as_deref()
            .is_none_or(|ns| request.namespace.as_deref() == Some(ns))
            && any(&self.groups, group)
            && any(&self.resources, &resource)
            && any(&self.verbs, &request.verb)
            && (self.names.is_empty() || name.is_some_and(|n| self.names.iter().any(|x| x == n)))
    }

    /// Every (group, resource, verb) this rule grants.
    fn grants(&self) -> Vec<Permission> {
        let mut out = Vec::new();
        for group in &self.groups {
            for resource in &self.resources {
                for verb in &self.verbs {
                    out.push(Permission {
                        group: group.clone(),
                        resource: resource.clone(),
                        verb: verb.clone(),
                    });
                }
            }
        }
        out
    }
}

/// `resource` or `resource/subresource` of a request; `None` for a non-resource URL.
fn full_resource(request: &AuditEvent) -> Option<String> {
    let resource = request.resource.as_deref()?;
    Some(match request.subresource.as_deref() {
        Some(sub) => format!("{resource}/{sub}"),
        None => resource.to_owned(),
    })
}

/// One (API group, resource, verb).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Permission {
    group: String,
    resource: String,
    verb: String,
}

/// The rules of the ClusterRoles and Roles that `objects` bind to ServiceAccount `account` of
/// [`NAMESPACE`].
fn bound_rules(objects: &[Value], account: &str) -> Vec<Rule> {
    let strings = |v: &Value| -> Vec<String> {
        v.as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s.as_str().map(str::to_owned))
            .collect()
    };
    let mut rules = Vec::new();
    for binding in objects
        .iter()
        .filter(|o| o["kind"] == "ClusterRoleBinding" || o["kind"] == "RoleBinding")
    {
        let bound = binding["subjects"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|s| {
                s["kind"] == "ServiceAccount" && s["name"] == account && s["namespace"] == NAMESPACE
            });
        if !bound {
            continue;
        }
        let role_kind = binding["roleRef"]["kind"].as_str().expect("roleRef.kind");
        let role_name = binding["roleRef"]["name"].as_str().expect("roleRef.name");
        // A RoleBinding grants in its own namespace, even when it refers to a ClusterRole.
        let namespace = (binding["kind"] == "RoleBinding").then(|| {
            binding["metadata"]["namespace"]
                .as_str()
                .unwrap_or(NAMESPACE)
                .to_owned()
        });
        let role = objects
            .iter()
            .find(|o| {
                o["kind"] == role_kind
                    && o["metadata"]["name"] == role_name
                    && (role_kind == "ClusterRole"
                        || o["metadata"]["namespace"].as_str().unwrap_or(NAMESPACE)
                            == namespace.as_deref().unwrap_or(NAMESPACE))
            })
            .unwrap_or_else(|| panic!("{role_kind} {role_name} is installed"));
        let label = match &namespace {
            Some(ns) if role_kind == "Role" => format!("Role/{ns}/{role_name}"),
            _ => format!("{role_kind}/{role_name}"),
        };
        for rule in role["rules"].as_array().into_iter().flatten() {
            assert!(
                rule.get("nonResourceURLs").is_none(),
                "{label} grants non-resource URLs: {rule}"
            );
            rules.push(Rule {
                role: label.clone(),
                namespace: namespace.clone(),
                groups: strings(&rule["apiGroups"]),
                resources: strings(&rule["resources"]),
                verbs: strings(&rule["verbs"]),
                names: strings(&rule["resourceNames"]),
            });
        }
    }
    assert!(
        !rules.is_empty(),
        "no role is bound to ServiceAccount {NAMESPACE}/{account}"
    );
    rules
}

/// What the ServiceAccount did, against what its roles grant.
struct Coverage {
    /// Per permission used: the number of requests, the roles that allowed them (empty: none
    /// of the operator's roles did) and one example `namespace/name`.
    used: BTreeMap<Permission, (usize, Vec<String>, String)>,
    /// Per granted permission: the role granting it.
    granted: BTreeMap<Permission, String>,
    /// Requests answered 401 or 403.
    refused: Vec<AuditEvent>,
    /// Requests for non-resource URLs (discovery), which every authenticated user may make.
    non_resource: BTreeMap<String, usize>,
}

impl Coverage {
    fn of(events: &[AuditEvent], rules: &[Rule]) -> Coverage {
        let mut used: BTreeMap<Permission, (usize, Vec<String>, String)> = BTreeMap::new();
        let mut non_resource = BTreeMap::new();
        let mut refused = Vec::new();
        for event in events {
            if matches!(event.code, Some(401 | 403)) {
                refused.push(event.clone());
            }
            let Some(resource) = full_resource(event) else {
                let path = event.request_uri.split('?').next().unwrap_or_default();
                *non_resource
                    .entry(format!("{} {path}", event.verb))
                    .or_insert(0) += 1;
                continue;
            };
            let permission = Permission {
                group: event.api_group.clone().unwrap_or_default(),
                resource,
                verb: event.verb.clone(),
            };
            let entry = used.entry(permission).or_insert_with(|| {
                let example = format!(
                    "{}/{}",
                    event.namespace.as_deref().unwrap_or("-"),
                    event.name.as_deref().unwrap_or("*")
                );
                (0, Vec::new(), example)
            });
            entry.0 += 1;
            for rule in rules.iter().filter(|r| r.allows(event)) {
                if !entry.1.contains(&rule.role) {
                    entry.1.push(rule.role.clone());
                }
            }
        }
        let mut granted = BTreeMap::new();
        for rule in rules {
            for permission in rule.grants() {
                granted
                    .entry(permission)
                    .or_insert_with(|| rule.role.clone());
            }
        }
        Coverage {
            used,
            granted,
            refused,
            non_resource,
        }
    }

    /// Whether some request used `permission` (a `*` in a grant matches anything).
    fn is_used(&self, permission: &Permission) -> bool {
        let matches = |grant: &str, used: &str| grant == "*" || grant == used;
        self.used.keys().any(|u| {
            matches(&permission.group, &u.group)
                && matches(&permission.resource, &u.resource)
                && matches(&permission.verb, &u.verb)
        })
    }

    /// The permission table: every permission used (with its requests and the role that
    /// allowed it), then every grant not used.
    fn table(&self) -> String {
        let mut out = format!(
            "{:<22} {:<32} {:<8} {:>8}  {:<44} {}\n",
            "API GROUP", "RESOURCE", "VERB", "REQUESTS", "ALLOWED BY", "E.G. NAMESPACE/NAME"
        );
        for (p, (count, roles, example)) in &self.used {
            let group = if p.group.is_empty() { "\"\"" } else { &p.group };
            let roles = if roles.is_empty() {
                "(none of the operator's roles)".to_owned()
            } else {
                roles.join(", ")
            };
            out.push_str(&format!(
                "{group:<22} {:<32} {:<8} {count:>8}  {roles:<44} {example}\n",
                p.resource, p.verb
            ));
        }
        for (path, count) in &self.non_resource {
            out.push_str(&format!(
                "{:<22} {path:<41} {count:>8}  (any authenticated user)\n",
                "(non-resource URL)"
            ));
        }
        let unused: Vec<String> = self
            .granted
            .iter()
            .filter(|(p, _)| !self.is_used(p))
            .map(|(p, role)| {
                let reason = exception(p).unwrap_or("NOT USED by any request");
                format!(
                    "  {} {} {} ({role}): {reason}",
                    if p.group.is_empty() { "\"\"" } else { &p.group },
                    p.resource,
                    p.verb
                )
            })
            .collect();
        if unused.is_empty() {
            out.push_str("every granted (group, resource, verb) was used\n");
        } else {
            out.push_str(&format!("granted but not used:\n{}\n", unused.join("\n")));
        }
        out
    }

    /// Fails unless nothing was refused, every request was allowed by the operator's roles,
    /// and every grant was used or is a listed exception.
    fn check(&self, how: &str) {
        let refused: Vec<String> = self
            .refused
            .iter()
            .map(|e| format!("{} {} -> {:?}", e.verb, e.request_uri, e.code))
            .collect();
        assert!(
            refused.is_empty(),
            "{how}: the API server refused the operator's requests:\n{}",
            refused.join("\n")
        );
        let outside: Vec<String> = self
            .used
            .iter()
            .filter(|(_, (_, roles, _))| roles.is_empty())
            .map(|(p, (_, _, example))| format!("{p:?} ({example})"))
            .collect();
        assert!(
            outside.is_empty(),
            "{how}: requests allowed by none of the operator's roles (another binding or a missing rule):\n{}",
            outside.join("\n")
        );
        let unknown: Vec<&String> = self
            .non_resource
            .keys()
            .filter(|k| !(k.starts_with("get /api") || k.starts_with("get /version")))
            .collect();
        assert!(
            unknown.is_empty(),
            "{how}: non-resource requests beyond discovery: {unknown:?}"
        );
        let unused: Vec<String> = self
            .granted
            .keys()
            .filter(|p| !self.is_used(p) && exception(p).is_none())
            .map(|p| format!("{p:?}"))
            .collect();
        assert!(
            unused.is_empty(),
            "{how}: granted but never used (remove them from the role, or list them in NOT_EXERCISED with the reason):\n{}",
            unused.join("\n")
        );
        for (group, resource, verb, _) in NOT_EXERCISED {
            let p = Permission {
                group: (*group).into(),
                resource: (*resource).into(),
                verb: (*verb).into(),
            };
            assert!(
                self.granted.contains_key(&p),
                "{how}: NOT_EXERCISED lists {p:?}, which the roles do not grant"
            );
            assert!(
                !self.is_used(&p),
                "{how}: NOT_EXERCISED lists {p:?}, but the flow used it: remove it from the list"
            );
        }
    }
}

/// The reason a grant is in [`NOT_EXERCISED`].
fn exception(p: &Permission) -> Option<&'static str> {
    NOT_EXERCISED
        .iter()
        .find(|(g, r, v, _)| *g == p.group && *r == p.resource && *v == p.verb)
        .map(|(_, _, _, reason)| *reason)
}

/// The rule matcher decides as the RBAC authorizer does for the cases the roles use.
#[test]
fn rules_match_as_rbac_does() {
    let event =
        |verb: &str, resource: &str, sub: Option<&str>, ns: &str, name: Option<&str>| AuditEvent {
            audit_id: "x".into(),
            stage: "ResponseComplete".into(),
            username: "u".into(),
            verb: verb.into(),
            request_uri: "/".into(),
            api_group: Some("coordination.k8s.io".into()),
            resource: Some(resource.into()),
            subresource: sub.map(Into::into),
            namespace: Some(ns.into()),
            name: name.map(Into::into),
            code: Some(200),
            user_agent: None,
        };
    let rule = Rule {
        role: "Role/mcs-system/r".into(),
        namespace: Some("mcs-system".into()),
        groups: vec!["coordination.k8s.io".into()],
        resources: vec!["leases".into()],
        verbs: vec!["get".into(), "create".into()],
        names: vec!["mcs-operator".into()],
    };
    assert!(rule.allows(&event(
        "get",
        "leases",
        None,
        "mcs-system",
        Some("mcs-operator")
    )));
    assert!(!rule.allows(&event("get", "leases", None, "mcs-system", Some("other"))));
    assert!(!rule.allows(&event(
        "get",
        "leases",
        None,
        "elsewhere",
        Some("mcs-operator")
    )));
    assert!(!rule.allows(&event(
        "update",
        "leases",
        None,
        "mcs-system",
        Some("mcs-operator")
    )));
    assert!(
        !rule.allows(&event(
            "get",
            "leases",
            Some("status"),
            "mcs-system",
            Some("mcs-operator")
        )),
        "a subresource needs its own rule"
    );
    assert!(
        !rule.allows(&event(
            "create",
            "leases",
            None,
            "mcs-system",
            Some("mcs-operator")
        )),
        "a create is never allowed by a rule with resourceNames"
    );
    let cluster = Rule {
        namespace: None,
        names: Vec::new(),
        ..rule
    };
    assert!(cluster.allows(&event("create", "leases", None, "anywhere", Some("x"))));
    assert_eq!(cluster.grants().len(), 2);
}
