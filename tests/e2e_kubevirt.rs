//! End-to-end test of the KubeVirt backend: the real operator binary runs `examples/` with the
//! KubeVirt connection and hosting unit of `examples/kubevirt/`, against a real control plane
//! holding the real CRDs of KubeVirt v1.9.0, CDI v1.66.0, the CSI external-snapshotter v8.6.0
//! and Multus v4.3.0 (`../shared/kubevirt-crds`). Every object the operator writes is accepted
//! by those schemas with strict field validation. No KubeVirt or CDI controller runs: the
//! test's stand-in (`support/kubevirt_standin.rs`) plays them.
//!
//! The in-repo test server serves no PersistentVolumeClaims or StorageClasses, so there the
//! test says so and passes without running.

#[path = "support/kubevirt_standin.rs"]
mod kubevirt_standin;
mod support;

use std::path::PathBuf;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, PersistentVolumeClaim, Secret};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams};
use kube::core::ApiResource;
use mcs_kubevirt::objects;
use mcs_operator::api::{
    ANNOTATION_CANCEL, ConnectionState, HostingUnit, HypervisorConnection, ImageVersionSpec,
    PowerState, ProvScheme, ProvVm, TaskState, UpdateStatus,
};
use serde_json::{Value, json};
use support::cluster::{Mode, mode};
use support::operator::{Harness, MACHINES, PREPARED, SCHEME, ready, task_state};

/// A hosting unit path of a master.
fn master_path(vm: &str, snapshot: &str) -> String {
    format!(r"XDHyp:\HostingUnits\lab\{vm}.vm\{snapshot}.snapshot")
}

/// The real CRDs of KubeVirt, CDI, the snapshotter and Multus, copied into a folder of their
/// own (the shared folder also holds `examples/`, which `kubectl wait -f` would read).
fn kubevirt_crds() -> PathBuf {
    let source = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/kubevirt-crds");
    let dir = std::env::temp_dir().join(format!("mcs-kubevirt-crds-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("crd dir");
    for entry in std::fs::read_dir(&source).expect("../shared/kubevirt-crds") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "yaml") {
            std::fs::copy(&path, dir.join(path.file_name().expect("name"))).expect("copy");
        }
    }
    dir
}

/// `examples/` with the connection and hosting unit of `examples/kubevirt/`, the KubeVirt
/// namespace set to the test's.
fn kubevirt_examples(h: &Harness) -> Vec<Value> {
    let mut objects = Vec::new();
    for file in ["00-hypervisor-connection.yaml", "01-hosting-unit.yaml"] {
        let text = std::fs::read_to_string(
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("examples/kubevirt")
                .join(file),
        )
        .expect("example");
        let mut object: Value = serde_yaml::from_str(&text).expect("yaml");
        if object["kind"] == "HypervisorConnection" {
            object["spec"]["kubeVirt"]["namespace"] = json!(h.cluster.namespace);
        }
        objects.push(object);
    }
    objects.extend(
        h.examples()
            .into_iter()
            .filter(|o| o["kind"] != "HypervisorConnection" && o["kind"] != "HostingUnit"),
    );
    objects
}

/// Server-side applies `object` with strict field validation, as a user's `kubectl apply
/// --server-side` does.
async fn apply(h: &Harness, ar: &ApiResource, object: Value) {
    let name = object["metadata"]["name"]
        .as_str()
        .expect("name")
        .to_string();
    let api: Api<DynamicObject> =
        Api::namespaced_with(h.cluster.client.clone(), &h.cluster.namespace, ar);
    api.patch(
        &name,
        &PatchParams::apply("e2e").force().validation_strict(),
        &Patch::Apply(&object),
    )
    .await
    .unwrap_or_else(|e| panic!("{} {name}: {e}", ar.kind));
}

/// The StorageClasses, the master VirtualMachine with its disk and snapshot, and the Multus
/// network the examples name.
async fn master_world(h: &Harness) {
    let classes: Api<StorageClass> = Api::all(h.cluster.client.clone());
    for name in ["fast-ssd", "standard"] {
        let class = json!({"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
            "metadata": {"name": name}, "provisioner": "standin.mcs.imaging.dev"});
        classes
            .patch(
                name,
                &PatchParams::apply("e2e").force().validation_strict(),
                &Patch::Apply(&class),
            )
            .await
            .expect("storage class");
    }
    let pvc = ApiResource::erase::<PersistentVolumeClaim>(&());
    apply(
        h,
        &pvc,
        json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": {"name": "win11-disk"},
        "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "standard",
                 "resources": {"requests": {"storage": "64Mi"}}}}),
    )
    .await;
    apply(h, &objects::virtual_machines(), json!({"apiVersion": "kubevirt.io/v1",
        "kind": "VirtualMachine", "metadata": {"name": "win11"},
        "spec": {"runStrategy": "Halted", "template": {"spec": {
            "domain": {"devices": {"disks": [{"name": "system", "disk": {"bus": "virtio"}}]},
                       "memory": {"guest": "4Gi"}},
            "volumes": [{"name": "system", "persistentVolumeClaim": {"claimName": "win11-disk"}}]}}}}))
    .await;
    apply(
        h,
        &objects::volume_snapshots(),
        json!({"apiVersion": "snapshot.storage.k8s.io/v1",
        "kind": "VolumeSnapshot", "metadata": {"name": "base"},
        "spec": {"source": {"persistentVolumeClaimName": "win11-disk"}}}),
    )
    .await;
    apply(h, &objects::network_attachments(), json!({"apiVersion": "k8s.cni.cncf.io/v1",
        "kind": "NetworkAttachmentDefinition", "metadata": {"name": "tenant-net"},
        "spec": {"config": "{\"cniVersion\": \"0.3.1\", \"name\": \"tenant-net\", \"type\": \"bridge\"}"}}))
    .await;
}

/// Installs the KubeVirt CRDs and those of the operator binary under test (`mcs-operator
/// crd`, so that the operator's startup check agrees with them even while `crds/` lags behind
/// the source) into the test process's control plane, once.
fn install_crds(h: &Harness) {
    static ONCE: std::sync::Mutex<bool> = std::sync::Mutex::new(false);
    let mut done = ONCE.lock().unwrap_or_else(|p| p.into_inner());
    if *done {
        return;
    }
    let dir = h.dir.path().join("own-crds");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_mcs-operator"))
        .args(["crd", "--out-dir"])
        .arg(&dir)
        .output()
        .expect("mcs-operator crd");
    assert!(out.status.success(), "{out:?}");
    let kubectl = support::cluster::kubectl_path().expect("kubectl");
    mcs_testapi::control_plane::install_crds(
        &kubectl,
        &h.cluster.kubeconfig,
        &[kubevirt_crds(), dir],
    )
    .expect("CRDs installed");
    *done = true;
}

async fn names(h: &Harness, ar: &ApiResource) -> Vec<String> {
    let api: Api<DynamicObject> =
        Api::namespaced_with(h.cluster.client.clone(), &h.cluster.namespace, ar);
    let mut names: Vec<String> = api
        .list(&ListParams::default())
        .await
        .expect("list")
        .items
        .into_iter()
        .filter_map(|o| o.metadata.name)
        .collect();
    names.sort();
    names
}

/// The stand-in playing KubeVirt and CDI in the test's namespace.
fn start_standin(h: &Harness) -> kubevirt_standin::StandIn {
    kubevirt_standin::StandIn::start(
        h.cluster.client.clone(),
        &h.cluster.namespace,
        Duration::from_millis(150),
        10.0,
    )
}

/// One test's world on the shared control plane: the KubeVirt CRDs, the master world, the
/// stand-in and the operator, with the KubeVirt examples applied; `None` on the test server.
async fn world(test: &str) -> Option<(Harness, kubevirt_standin::StandIn)> {
    if mode() == Mode::TestServer {
        eprintln!(
            "skipped: the in-repo test server serves no PVCs or StorageClasses; set KUBEBUILDER_ASSETS"
        );
        return None;
    }
    let mut h = Harness::new(test, "16M", 1).await;
    tokio::task::block_in_place(|| install_crds(&h));
    master_world(&h).await;
    let standin = start_standin(&h);
    h.start_operator();
    h.apply(&kubevirt_examples(&h)).await;
    let connection = h
        .wait::<HypervisorConnection>("local", "On", |c| {
            c.status
                .as_ref()
                .is_some_and(|s| s.state == Some(ConnectionState::On))
        })
        .await;
    assert!(
        connection.status.expect("status").alerts.is_empty(),
        "no alerts"
    );
    // The hosting unit's inventory lists its security group (examples/kubevirt: `vdi`).
    h.wait::<HostingUnit>("lab", "1 security group in the inventory", |u| {
        u.status
            .as_ref()
            .and_then(|s| s.inventory.as_ref())
            .is_some_and(|i| i.security_groups == 1)
    })
    .await;
    Some((h, standin))
}

/// Waits until spec `name`'s task has ended; returns the spec.
async fn ended(h: &Harness, name: &str) -> ImageVersionSpec {
    h.wait::<ImageVersionSpec>(name, "its task ended", |s| {
        task_state(s.status.as_ref().and_then(|s| s.task.as_ref()))
            .is_some_and(|t| t == TaskState::Finished || t.is_failure() || t == TaskState::Canceled)
    })
    .await
}

fn state_of(spec: &ImageVersionSpec) -> (TaskState, String) {
    let task = spec
        .status
        .as_ref()
        .and_then(|s| s.task.clone())
        .expect("task");
    let message = task
        .terminating_error
        .map(|e| e.message)
        .unwrap_or_default();
    (task.task_state, message)
}

async fn create(h: &Harness, object: Value) -> DynamicObject {
    h.create(&object)
        .await
        .unwrap_or_else(|e| panic!("{object}: {e}"))
}

async fn version(h: &Harness, name: &str) {
    create(
        h,
        json!({"apiVersion": "mcs.imaging.dev/v1alpha1", "kind": "ImageVersion",
        "metadata": {"name": name}, "spec": {"imageDefinitionRef": "win11"}}),
    )
    .await;
}

async fn master(h: &Harness, name: &str, version: &str, path: &str) {
    create(
        h,
        json!({"apiVersion": "mcs.imaging.dev/v1alpha1", "kind": "ImageVersionSpec",
        "metadata": {"name": name},
        "spec": {"imageVersionRef": version,
                 "master": {"hostingUnitRef": "lab", "masterImagePath": path}}}),
    )
    .await;
}

/// Creates a prepared spec; returns its uid (the prepared image id).
async fn prepared(h: &Harness, name: &str, version: &str, source: &str, policy: &str) -> String {
    create(
        h,
        json!({"apiVersion": "mcs.imaging.dev/v1alpha1", "kind": "ImageVersionSpec",
        "metadata": {"name": name},
        "spec": {"imageVersionRef": version, "deletionPolicy": policy,
                 "prepared": {"sourceSpecRef": source,
                              "networkMapping": {"0": r"XDHyp:\HostingUnits\lab\lan.network"},
                              "vmCpuCount": 2, "vmMemoryMB": 2048}}}),
    )
    .await
    .metadata
    .uid
    .expect("uid")
}

/// Sets ProvVM `name`'s `spec.powerState`.
async fn power(h: &Harness, name: &str, state: &str) {
    h.api::<ProvVm>()
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"powerState": state}})),
        )
        .await
        .expect("powerState");
}

/// Object `name` of `ar` as JSON.
async fn get(h: &Harness, ar: &ApiResource, name: &str) -> Value {
    let api: Api<DynamicObject> =
        Api::namespaced_with(h.cluster.client.clone(), &h.cluster.namespace, ar);
    serde_json::to_value(api.get(name).await.expect("get")).expect("json")
}

/// Waits until the cluster's garbage collector watches VirtualMachines. The controller manager
/// adds a kind to its graph at its periodic discovery resync, up to about 30 s after the CRD
/// was installed; a foreground deletion before that finishes without the owner's VMs and
/// leaves them. The probe: a copy of VM `model` owned by a throwaway ConfigMap goes with it.
async fn collector_watches_virtual_machines(h: &Harness, model: &str) {
    use k8s_openapi::api::core::v1::ConfigMap;
    let maps: Api<ConfigMap> = h.api();
    let owner = maps
        .create(
            &kube::api::PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "gc-probe-owner"}}))
                .expect("configmap"),
        )
        .await
        .expect("probe owner");
    let vms: Api<DynamicObject> = Api::namespaced_with(
        h.cluster.client.clone(),
        &h.cluster.namespace,
        &objects::virtual_machines(),
    );
    let mut probe = get(h, &objects::virtual_machines(), model).await;
    probe["metadata"] = json!({
        "name": "gc-probe",
        "ownerReferences": [{
            "apiVersion": "v1", "kind": "ConfigMap", "name": "gc-probe-owner",
            "uid": owner.metadata.uid.expect("uid"),
        }],
    });
    probe.as_object_mut().expect("object").remove("status");
    vms.create(
        &kube::api::PostParams::default(),
        &serde_json::from_value(probe).expect("probe"),
    )
    .await
    .expect("probe vm");
    maps.delete("gc-probe-owner", &DeleteParams::default())
        .await
        .expect("delete probe owner");
    gone(
        h,
        &objects::virtual_machines(),
        &["gc-probe".to_string()],
        Duration::from_secs(120),
    )
    .await;
}

/// Waits until VirtualMachine `name` shows `printable` as its `status.printableStatus`.
async fn wait_vm(h: &Harness, name: &str, printable: &str) -> Value {
    let deadline = std::time::Instant::now() + h.timeout;
    loop {
        let vm = get(h, &objects::virtual_machines(), name).await;
        if vm["status"]["printableStatus"] == printable {
            return vm;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{name} not {printable}: {vm:#}\n{}",
            h.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn pvcs() -> ApiResource {
    ApiResource::erase::<PersistentVolumeClaim>(&())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubevirt_examples_prepare_images_and_machines() {
    let Some((mut h, standin)) = world("kubevirt-flow").await else {
        return;
    };
    let prepared = ended(&h, PREPARED).await;
    let (state, message) = state_of(&prepared);
    assert_eq!(state, TaskState::Finished, "{message}\n{}", h.log_tail());
    let status = prepared.status.clone().expect("status");
    assert_eq!(status.task.expect("task").task_progress, 100);
    assert_eq!(status.instances.len(), 2, "{:?}", status.instances);
    let uid = prepared.metadata.uid.clone().expect("uid");
    let claims = names(&h, &pvcs()).await;
    for storage in ["primary", "secondary"] {
        let pvc = objects::prepared_name(&uid, storage);
        assert!(claims.contains(&pvc), "{pvc} in {claims:?}");
    }

    let scheme = h
        .wait::<ProvScheme>(SCHEME, "version 1 Finished with 3 machines", |s| {
            s.status.as_ref().is_some_and(|st| {
                st.up_to_date_machines == 3
                    && task_state(st.task.as_ref()) == Some(TaskState::Finished)
            })
        })
        .await;
    assert!(ready(&scheme.status.expect("status").conditions));
    let vms = names(&h, &objects::virtual_machines()).await;
    let claims = names(&h, &pvcs()).await;
    for machine in MACHINES {
        let vm = h
            .wait::<ProvVm>(machine, "UpToDate", |vm| {
                vm.status
                    .as_ref()
                    .is_some_and(|st| st.update_status == Some(UpdateStatus::UpToDate))
            })
            .await;
        let name = objects::machine_name(SCHEME, &vm.spec.machine_name);
        assert!(vms.contains(&name), "{name} in {vms:?}");
        assert!(claims.contains(&objects::disk_name(&name)), "{claims:?}");
    }
    println!(
        "KubeVirt objects after the examples: {} VirtualMachines, {} PVCs",
        vms.len(),
        claims.len()
    );

    // A scheme change, then a start inside the update window: the machine's VirtualMachine is
    // rebuilt from scheme version 2 and runs.
    let schemes: Api<ProvScheme> = h.api();
    schemes
        .patch(
            SCHEME,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"vmMemoryMB": 3072,
                "updateWindow": {"startTime": "2026-01-01T00:00:00Z", "durationMinutes": -1}}})),
        )
        .await
        .expect("scheme change");
    h.wait::<ProvScheme>(SCHEME, "version 2", |s| {
        s.status
            .as_ref()
            .is_some_and(|st| st.provisioning_scheme_version == Some(2))
    })
    .await;
    let first = h
        .wait::<ProvVm>(MACHINES[0], "named", |_| true)
        .await
        .spec
        .machine_name;
    let vm_name = objects::machine_name(SCHEME, &first);
    power(&h, MACHINES[0], "Running").await;
    h.wait::<ProvVm>(MACHINES[0], "rebuilt from version 2 and On", |vm| {
        vm.status.as_ref().is_some_and(|st| {
            st.provisioning_scheme_version == Some(2)
                && st.update_status == Some(UpdateStatus::UpToDate)
                && st.power_state == Some(PowerState::On)
        })
    })
    .await;
    let vm = wait_vm(&h, &vm_name, "Running").await;
    vm_status(&h, MACHINES[0], "Running").await;
    assert_eq!(vm["spec"]["runStrategy"], "Always");
    assert_eq!(
        vm["spec"]["template"]["spec"]["domain"]["memory"]["guest"],
        "3072Mi"
    );

    // Stop, then start again: clean-on-boot clones the disk afresh.
    power(&h, MACHINES[0], "Stopped").await;
    let vm = wait_vm(&h, &vm_name, "Stopped").await;
    vm_status(&h, MACHINES[0], "Stopped").await;
    assert_eq!(vm["spec"]["runStrategy"], "Halted");
    let disk_uid = |dv: Value| dv["metadata"]["uid"].clone();
    let disk = objects::disk_name(&vm_name);
    let before = disk_uid(get(&h, &objects::data_volumes(), &disk).await);
    power(&h, MACHINES[0], "Running").await;
    wait_vm(&h, &vm_name, "Running").await;
    // The VM can show Running from a look at the old disk taken just before it was deleted, so
    // the new disk is awaited rather than read once.
    let deadline = std::time::Instant::now() + h.timeout;
    let dvs: Api<DynamicObject> = Api::namespaced_with(
        h.cluster.client.clone(),
        &h.cluster.namespace,
        &objects::data_volumes(),
    );
    loop {
        let now = dvs.get_opt(&disk).await.expect("get the disk");
        let after = now.map(|dv| disk_uid(serde_json::to_value(dv).expect("json")));
        if after.as_ref().is_some_and(|uid| *uid != before) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "clean-on-boot did not recreate {disk} (uid before {before}, now {after:?})"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Deleting the prepared spec while the scheme's machines use it is refused.
    let specs: Api<ImageVersionSpec> = h.api();
    specs
        .delete(PREPARED, &DeleteParams::default())
        .await
        .expect("delete");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let kept = specs.get(PREPARED).await.expect("still there");
    assert!(kept.metadata.deletion_timestamp.is_some());
    let claims = names(&h, &pvcs()).await;
    assert!(
        claims.contains(&objects::prepared_name(&uid, "primary")),
        "in use: kept {claims:?}"
    );
    ownership_and_namespace_deletion(&mut h, standin, &uid).await;
}

/// The uid of ProvVM `MACHINES[i]` and its VirtualMachine's name.
async fn machine(h: &Harness, i: usize) -> (String, String) {
    let vm = h.wait::<ProvVm>(MACHINES[i], "exists", |_| true).await;
    let name = objects::machine_name(SCHEME, &vm.spec.machine_name);
    (vm.metadata.uid.expect("uid"), name)
}

/// Waits until ProvVM `name` shows `printable` as its `status.vmStatus`.
async fn vm_status(h: &Harness, name: &str, printable: &str) {
    h.wait::<ProvVm>(name, &format!("vmStatus {printable}"), |vm| {
        vm.status.as_ref().and_then(|s| s.vm_status.as_deref()) == Some(printable)
    })
    .await;
}

/// The uids of object `name`'s owners (empty when it has none).
async fn owners(h: &Harness, ar: &ApiResource, name: &str) -> Vec<String> {
    get(h, ar, name).await["metadata"]["ownerReferences"]
        .as_array()
        .map(|refs| {
            refs.iter()
                .filter_map(|r| r["uid"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// Waits (at most `bound`) until none of `names` exists as `ar`; returns how long it took.
async fn gone(h: &Harness, ar: &ApiResource, wanted: &[String], bound: Duration) -> Duration {
    let start = std::time::Instant::now();
    loop {
        let left: Vec<String> = names(h, ar)
            .await
            .into_iter()
            .filter(|n| wanted.contains(n))
            .collect();
        if left.is_empty() {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < bound,
            "{} left after {bound:?}: {left:?}",
            ar.kind
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The end of the examples flow (operator and stand-in running, every machine built): the
/// objects are owned by the mcs objects of the same namespace; the VirtualMachine watch
/// refreshes a ProvVM's `vmStatus`; with the operator stopped, the real garbage collector
/// removes a ProvVM's VirtualMachine, identity Secret, DataVolume and PVC (foreground deletion
/// of the ProvVM, whose own finalizer then waits for the operator); deleting the namespace
/// leaves nothing of the backend and no finalizer holds it.
async fn ownership_and_namespace_deletion(
    h: &mut Harness,
    standin: kubevirt_standin::StandIn,
    prepared_uid: &str,
) {
    let machines: Api<ProvVm> = h.api();
    let spec_uid = h
        .wait::<ImageVersionSpec>(PREPARED, "exists", |_| true)
        .await
        .metadata
        .uid
        .expect("uid");
    let prepared_dv = objects::prepared_name(prepared_uid, "primary");
    assert_eq!(
        owners(h, &objects::data_volumes(), &prepared_dv).await,
        vec![spec_uid],
        "a prepared DataVolume is owned by its ImageVersionSpec"
    );
    let (uid, vm) = machine(h, 1).await;
    let secret = objects::identity_name(&vm);
    let disk = objects::disk_name(&vm);
    for (ar, name) in [
        (objects::virtual_machines(), &vm),
        (ApiResource::erase::<Secret>(&()), &secret),
    ] {
        assert_eq!(owners(h, &ar, name).await, vec![uid.clone()], "{name}");
    }

    // The watch: KubeVirt (here the test, the stand-in stopped) changes a VM's printable
    // status, nothing else changes, and the ProvVM shows it.
    drop(standin);
    let (_, third) = machine(h, 2).await;
    let api: Api<DynamicObject> = Api::namespaced_with(
        h.cluster.client.clone(),
        &h.cluster.namespace,
        &objects::virtual_machines(),
    );
    api.patch_status(
        &third,
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"printableStatus": "ErrorDataVolumeNotFound"}})),
    )
    .await
    .expect("status");
    vm_status(h, MACHINES[2], "ErrorDataVolumeNotFound").await;

    // The operator stopped: a foreground deletion of the ProvVM lets the garbage collector
    // remove its VirtualMachine and Secret, and through them its DataVolume and PVC.
    collector_watches_virtual_machines(h, &third).await;
    h.kill_operator();
    let start = std::time::Instant::now();
    machines
        .delete(MACHINES[1], &DeleteParams::foreground())
        .await
        .expect("delete");
    let bound = Duration::from_secs(60);
    for (ar, name) in [
        (objects::virtual_machines(), &vm),
        (ApiResource::erase::<Secret>(&()), &secret),
        (objects::data_volumes(), &disk),
        (pvcs(), &disk),
    ] {
        gone(h, &ar, std::slice::from_ref(name), bound).await;
    }
    println!(
        "operator stopped: the garbage collector removed {vm}, its Secret, DataVolume and PVC in {:.1} s",
        start.elapsed().as_secs_f64()
    );
    let waiting = machines.get(MACHINES[1]).await.expect("ProvVM still there");
    assert!(
        waiting.metadata.deletion_timestamp.is_some(),
        "the ProvVM waits for its finalizer"
    );

    // The namespace deleted (operator and stand-in back): nothing is left, no finalizer hangs.
    let standin = start_standin(h);
    h.start_operator();
    let namespaces: Api<Namespace> = Api::all(h.cluster.client.clone());
    let start = std::time::Instant::now();
    namespaces
        .delete(&h.cluster.namespace, &DeleteParams::default())
        .await
        .expect("delete namespace");
    let bound = Duration::from_secs(120);
    while namespaces
        .get_opt(&h.cluster.namespace)
        .await
        .expect("get")
        .is_some()
    {
        if start.elapsed() > bound {
            let mut left = Vec::new();
            for ar in [
                objects::virtual_machines(),
                objects::data_volumes(),
                pvcs(),
                ApiResource::erase::<Secret>(&()),
                ApiResource::erase::<ProvVm>(&()),
                ApiResource::erase::<ImageVersionSpec>(&()),
                ApiResource::erase::<ProvScheme>(&()),
            ] {
                left.push(format!("{}: {:?}", ar.kind, names(h, &ar).await));
            }
            panic!(
                "namespace still there after {bound:?}: {left:?}\n{}",
                h.log_tail()
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    println!(
        "namespace deletion: gone with everything in it in {:.1} s",
        start.elapsed().as_secs_f64()
    );
    for ar in [objects::virtual_machines(), objects::data_volumes(), pvcs()] {
        assert!(names(h, &ar).await.is_empty(), "{} left", ar.kind);
    }
    drop(standin);
    h.kill_operator();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubevirt_failures_cancel_and_retain() {
    let Some((mut h, standin)) = world("kubevirt-failures").await else {
        return;
    };
    // A VolumeSnapshot the CSI driver failed to cut, and one of a PVC that is no disk of the VM.
    apply(
        &h,
        &objects::volume_snapshots(),
        json!({"apiVersion": "snapshot.storage.k8s.io/v1",
        "kind": "VolumeSnapshot",
        "metadata": {"name": "broken", "labels": {kubevirt_standin::BROKEN: "yes"}},
        "spec": {"source": {"persistentVolumeClaimName": "win11-disk"}}}),
    )
    .await;
    apply(
        &h,
        &pvcs(),
        json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": {"name": "scratch"},
        "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "standard",
                 "resources": {"requests": {"storage": "1Mi"}}}}),
    )
    .await;
    apply(
        &h,
        &objects::volume_snapshots(),
        json!({"apiVersion": "snapshot.storage.k8s.io/v1",
        "kind": "VolumeSnapshot", "metadata": {"name": "other"},
        "spec": {"source": {"persistentVolumeClaimName": "scratch"}}}),
    )
    .await;
    // VirtualMachineSnapshots: one the stand-in completes, one whose guest freeze failed.
    for (name, labels) in [
        ("golden", json!({})),
        ("frozen", json!({kubevirt_standin::BROKEN: "yes"})),
    ] {
        apply(
            &h,
            &objects::vm_snapshots(),
            json!({"apiVersion": "snapshot.kubevirt.io/v1beta1",
            "kind": "VirtualMachineSnapshot", "metadata": {"name": name, "labels": labels},
            "spec": {"source": {"apiGroup": "kubevirt.io", "kind": "VirtualMachine",
                                "name": "win11"}}}),
        )
        .await;
    }
    let deadline = std::time::Instant::now() + h.timeout;
    while get(&h, &objects::vm_snapshots(), "golden").await["status"]["readyToUse"] != json!(true) {
        assert!(std::time::Instant::now() < deadline, "golden never ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for (v, path) in [
        ("vmsnap", master_path("win11", "golden")),
        ("vmfrozen", master_path("win11", "frozen")),
        ("nosnap", master_path("win11", "nosuch")),
        ("notready", master_path("win11", "broken")),
        ("notasnap", master_path("win11", "other")),
        ("clonefail", master_path("win11", "base")),
        ("quota", master_path("win11", "base")),
        ("cancel", master_path("win11", "base")),
        ("retain", master_path("win11", "base")),
    ] {
        version(&h, v).await;
        master(&h, &format!("m-{v}"), v, &path).await;
    }
    let fail_uid = prepared(&h, "p-clonefail", "clonefail", "m-clonefail", "Delete").await;
    standin.fail_clone(&objects::prepared_name(&fail_uid, "primary"));
    let quota_uid = prepared(&h, "p-quota", "quota", "m-quota", "Delete").await;
    standin.exceed_quota(&objects::prepared_name(&quota_uid, "primary"));
    let cancel_uid = prepared(&h, "p-cancel", "cancel", "m-cancel", "Delete").await;
    let held = objects::prepared_name(&cancel_uid, "primary");
    standin.hold_clone(&held);
    let retain_uid = prepared(&h, "p-retain", "retain", "m-retain", "Retain").await;
    for v in ["vmsnap", "vmfrozen", "nosnap", "notready", "notasnap"] {
        prepared(&h, &format!("p-{v}"), v, &format!("m-{v}"), "Delete").await;
    }

    for (name, expected) in [
        ("p-vmsnap", TaskState::Finished),
        ("p-vmfrozen", TaskState::InvalidSnapshotState),
        ("p-nosnap", TaskState::SnapshotNotFound),
        ("p-notready", TaskState::InvalidSnapshotState),
        ("p-notasnap", TaskState::MasterImageNotASnapshot),
        ("p-clonefail", TaskState::DiskConsolidationFailed),
        ("p-quota", TaskState::InsufficientResources),
    ] {
        let (state, message) = state_of(&ended(&h, name).await);
        assert_eq!(state, expected, "{name}: {message}\n{}", h.log_tail());
        println!("{name}: {state:?}: {message}");
    }
    let claims = names(&h, &pvcs()).await;
    assert!(
        !claims.contains(&objects::prepared_name(&fail_uid, "primary")),
        "a failed clone leaves no PVC: {claims:?}"
    );

    // Cancel while the clone is held in progress: the DataVolume and its PVC are removed.
    h.wait::<ImageVersionSpec>("p-cancel", "cloning", |s| {
        task_state(s.status.as_ref().and_then(|s| s.task.as_ref()))
            == Some(TaskState::ConsolidatingMasterImage)
    })
    .await;
    let specs: Api<ImageVersionSpec> = h.api();
    specs
        .patch(
            "p-cancel",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {ANNOTATION_CANCEL: "true"}}})),
        )
        .await
        .expect("cancel");
    let (state, _) = state_of(&ended(&h, "p-cancel").await);
    assert_eq!(state, TaskState::Canceled);
    standin.release_clone(&held);
    let dvs = names(&h, &objects::data_volumes()).await;
    assert!(!dvs.contains(&held), "canceled clone removed: {dvs:?}");

    // Retain: deleting the finished spec keeps its PVCs; nothing of it is owned by the spec, so
    // the garbage collector cannot take them either.
    let (state, message) = state_of(&ended(&h, "p-retain").await);
    assert_eq!(state, TaskState::Finished, "{message}");
    let retained_dv = objects::prepared_name(&retain_uid, "primary");
    assert!(
        owners(&h, &objects::data_volumes(), &retained_dv)
            .await
            .is_empty(),
        "Retain: {retained_dv} not owned"
    );
    assert!(
        objects::owner_of(&get(&h, &objects::data_volumes(), &retained_dv).await).is_some(),
        "{retained_dv} names its owner"
    );
    specs
        .delete("p-retain", &DeleteParams::default())
        .await
        .expect("delete");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while specs.get_opt("p-retain").await.expect("get").is_some() {
        assert!(
            std::time::Instant::now() < deadline,
            "p-retain not deleted\n{}",
            h.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let claims = names(&h, &pvcs()).await;
    for storage in ["primary", "secondary"] {
        let pvc = objects::prepared_name(&retain_uid, storage);
        assert!(claims.contains(&pvc), "Retain keeps {pvc}: {claims:?}");
    }
    drop(standin);
    h.kill_operator();
}
