//! A STAND-IN for the KubeVirt, CDI and CSI snapshot controllers, for tests only (it never ships
//! in the operator): no such controllers run next to the test control plane, which only stores
//! and validates their objects against the real CRDs. Every `step` it plays their part in one
//! namespace:
//! - CSI snapshotter: a VolumeSnapshot of an existing PVC becomes `readyToUse` with the PVC's
//!   size as `restoreSize`;
//! - KubeVirt: a VirtualMachine's missing `dataVolumeTemplates` DataVolumes are created (owned
//!   by the VM), and `status.printableStatus` is `Provisioning` until they have succeeded, then
//!   `Running` (`runStrategy: Always`) or `Stopped`;
//! - CDI: a DataVolume whose source exists goes `CloneScheduled` (its PVC is created, owned by
//!   it) -> `CloneInProgress` with `status.progress` rising by `percent_per_step` -> `Succeeded`;
//!   a clone told to fail ([`StandIn::fail_clone`]) ends `Failed` with a condition message, one
//!   over quota ([`StandIn::exceed_quota`]) stays `Pending` with CDI's `ErrExceededQuota`, one
//!   told to hold ([`StandIn::hold_clone`]) stays in progress;
//! - KubeVirt snapshots: a VirtualMachineSnapshot gets a VolumeSnapshot of the VM's first PVC
//!   and a VirtualMachineSnapshotContent naming it, and becomes `readyToUse` (phase `Succeeded`)
//!   once that VolumeSnapshot is ready; labelled `standin.mcs.imaging.dev/broken` it fails;
//! - CSI snapshotter, not ready: a VolumeSnapshot labelled `standin.mcs.imaging.dev/broken`
//!   gets `readyToUse: false` and an error message instead;
//! - pvc-protection: a deleted PVC's `kubernetes.io/pvc-protection` finalizer is removed.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use kube::api::{Api, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::core::ApiResource;
use kube::{Client, ResourceExt};
use mcs_kubevirt::objects;
use serde_json::{Value, json};

/// The stand-in's task; stopped when dropped.
pub struct StandIn {
    fail: Arc<Mutex<HashSet<String>>>,
    quota: Arc<Mutex<HashSet<String>>>,
    hold: Arc<Mutex<HashSet<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for StandIn {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct World {
    client: Client,
    namespace: String,
    percent_per_step: f64,
    fail: Arc<Mutex<HashSet<String>>>,
    quota: Arc<Mutex<HashSet<String>>>,
    hold: Arc<Mutex<HashSet<String>>>,
}

/// The label that makes the stand-in report a VolumeSnapshot as failed.
pub const BROKEN: &str = "standin.mcs.imaging.dev/broken";

impl StandIn {
    /// Starts playing the controllers in `namespace`, one round every `step`.
    pub fn start(client: Client, namespace: &str, step: Duration, percent_per_step: f64) -> Self {
        let fail = Arc::new(Mutex::new(HashSet::new()));
        let hold = Arc::new(Mutex::new(HashSet::new()));
        let quota = Arc::new(Mutex::new(HashSet::new()));
        let world = World {
            client,
            namespace: namespace.to_string(),
            percent_per_step,
            fail: fail.clone(),
            quota: quota.clone(),
            hold: hold.clone(),
        };
        let task = tokio::spawn(async move {
            loop {
                if let Err(e) = world.round().await {
                    eprintln!("kubevirt stand-in: {e}");
                }
                tokio::time::sleep(step).await;
            }
        });
        StandIn {
            fail,
            quota,
            hold,
            task,
        }
    }

    /// Makes the clone into DataVolume `name` fail (the next time it is in progress).
    pub fn fail_clone(&self, name: &str) {
        self.fail.lock().expect("lock").insert(name.to_string());
    }

    /// Makes the clone into DataVolume `name` exceed the namespace's storage quota.
    pub fn exceed_quota(&self, name: &str) {
        self.quota.lock().expect("lock").insert(name.to_string());
    }

    /// Keeps the clone into DataVolume `name` in progress until [`StandIn::release_clone`].
    pub fn hold_clone(&self, name: &str) {
        self.hold.lock().expect("lock").insert(name.to_string());
    }

    /// Lets a held clone go on.
    pub fn release_clone(&self, name: &str) {
        self.hold.lock().expect("lock").remove(name);
    }
}

fn value(o: DynamicObject) -> Value {
    serde_json::to_value(o).expect("json")
}

impl World {
    fn api(&self, ar: &ApiResource) -> Api<DynamicObject> {
        Api::namespaced_with(self.client.clone(), &self.namespace, ar)
    }

    async fn list(&self, ar: &ApiResource) -> Result<Vec<Value>, kube::Error> {
        Ok(self
            .api(ar)
            .list(&ListParams::default())
            .await?
            .items
            .into_iter()
            .map(value)
            .collect())
    }

    /// Merges `status` into object `name`'s status (an object deleted meanwhile is skipped).
    async fn status(&self, ar: &ApiResource, name: &str, status: Value) -> Result<(), kube::Error> {
        match self
            .api(ar)
            .patch_status(
                name,
                &PatchParams::default(),
                &Patch::Merge(json!({ "status": status })),
            )
            .await
        {
            Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
            other => other.map(|_| ()),
        }
    }

    async fn round(&self) -> Result<(), kube::Error> {
        let pvcs: Api<PersistentVolumeClaim> =
            Api::namespaced(self.client.clone(), &self.namespace);
        let claims = pvcs.list(&ListParams::default()).await?.items;
        for pvc in &claims {
            if pvc.metadata.deletion_timestamp.is_some() && !pvc.finalizers().is_empty() {
                pvcs.patch(
                    &pvc.name_any(),
                    &PatchParams::default(),
                    &Patch::Merge(json!({"metadata": {"finalizers": null}})),
                )
                .await?;
            }
        }
        let claim_size = |name: &str| {
            claims
                .iter()
                .find(|c| c.name_any() == name && c.metadata.deletion_timestamp.is_none())
                .and_then(|c| c.spec.as_ref()?.resources.as_ref()?.requests.as_ref())
                .and_then(|r| r.get("storage").map(|q| q.0.clone()))
        };
        for vs in self.list(&objects::volume_snapshots()).await? {
            let claim = vs["spec"]["source"]["persistentVolumeClaimName"]
                .as_str()
                .unwrap_or_default();
            let name = vs["metadata"]["name"].as_str().unwrap_or_default();
            let broken = vs["metadata"]["labels"][BROKEN].is_string();
            if broken && vs["status"]["error"].is_null() {
                self.status(
                    &objects::volume_snapshots(),
                    name,
                    json!({"readyToUse": false,
                           "error": {"message": "stand-in: the CSI driver failed to cut the snapshot",
                                     "time": "2026-11-26T00:00:00Z"}}),
                )
                .await?;
            } else if !broken
                && vs["status"]["readyToUse"] != json!(true)
                && let Some(size) = claim_size(claim)
            {
                self.status(
                    &objects::volume_snapshots(),
                    name,
                    json!({"readyToUse": true, "restoreSize": size,
                           "creationTime": "2026-11-26T00:00:00Z"}),
                )
                .await?;
            }
        }
        let dvs = self.list(&objects::data_volumes()).await?;
        let snapshots = self.list(&objects::volume_snapshots()).await?;
        for vms in self.list(&objects::vm_snapshots()).await? {
            self.play_vm_snapshot(&vms, &snapshots, &claim_size).await?;
        }
        for vm in self.list(&objects::virtual_machines()).await? {
            self.play_vm(&vm, &dvs).await?;
        }
        for dv in &dvs {
            self.play_dv(dv, &snapshots, &claim_size).await?;
        }
        Ok(())
    }

    async fn create(&self, ar: &ApiResource, object: Value) -> Result<(), kube::Error> {
        match self
            .api(ar)
            .create(
                &PostParams::default(),
                &serde_json::from_value(object).expect("object"),
            )
            .await
        {
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
            other => other.map(|_| ()),
        }
    }

    async fn play_vm_snapshot(
        &self,
        vms: &Value,
        snapshots: &[Value],
        claim_size: &impl Fn(&str) -> Option<String>,
    ) -> Result<(), kube::Error> {
        let name = vms["metadata"]["name"].as_str().unwrap_or_default();
        if vms["status"]["readyToUse"] == json!(true) || vms["status"]["phase"] == "Failed" {
            return Ok(());
        }
        if vms["metadata"]["labels"][BROKEN].is_string() {
            return self
                .status(
                    &objects::vm_snapshots(),
                    name,
                    json!({"readyToUse": false,
                    "phase": "Failed",
                    "error": {"message": "stand-in: freezing the guest failed",
                              "time": "2026-11-26T00:00:00Z"}}),
                )
                .await;
        }
        let vm_name = vms["spec"]["source"]["name"].as_str().unwrap_or_default();
        let Some(vm) = self
            .api(&objects::virtual_machines())
            .get_opt(vm_name)
            .await?
            .map(value)
        else {
            return Ok(());
        };
        let volume = vm["spec"]["template"]["spec"]["volumes"]
            .as_array()
            .and_then(|v| {
                v.iter()
                    .find(|v| v["persistentVolumeClaim"]["claimName"].is_string())
            })
            .cloned()
            .unwrap_or_default();
        let claim = volume["persistentVolumeClaim"]["claimName"]
            .as_str()
            .unwrap_or_default();
        let Some(size) = claim_size(claim) else {
            return Ok(());
        };
        let vs_name = format!("{name}-{claim}");
        let content = format!("{name}-content");
        self.create(
            &objects::volume_snapshots(),
            json!({
            "apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshot",
            "metadata": {"name": vs_name, "ownerReferences": [owner(vms)]},
            "spec": {"source": {"persistentVolumeClaimName": claim}}}),
        )
        .await?;
        self.create(
            &objects::vm_snapshot_contents(),
            json!({
            "apiVersion": "snapshot.kubevirt.io/v1beta1",
            "kind": "VirtualMachineSnapshotContent",
            "metadata": {"name": content, "ownerReferences": [owner(vms)]},
            "spec": {
                "source": {"virtualMachine": {"metadata": {"name": vm_name}, "spec": vm["spec"]}},
                "virtualMachineSnapshotName": name,
                "volumeBackups": [{
                    "volumeName": volume["name"],
                    "persistentVolumeClaim": {"metadata": {"name": claim},
                        "spec": {"accessModes": ["ReadWriteOnce"],
                                 "resources": {"requests": {"storage": size}}}},
                    "volumeSnapshotName": vs_name,
                }],
            }}),
        )
        .await?;
        let ready = snapshots
            .iter()
            .any(|v| v["metadata"]["name"] == vs_name && v["status"]["readyToUse"] == json!(true));
        if ready {
            self.status(
                &objects::vm_snapshot_contents(),
                &content,
                json!({"readyToUse": true,
                "volumeSnapshotStatus": [{"volumeSnapshotName": vs_name, "readyToUse": true}]}),
            )
            .await?;
            self.status(
                &objects::vm_snapshots(),
                name,
                json!({"readyToUse": true,
                "phase": "Succeeded", "virtualMachineSnapshotContentName": content,
                "sourceUID": vm["metadata"]["uid"]}),
            )
            .await?;
        }
        Ok(())
    }

    async fn play_vm(&self, vm: &Value, dvs: &[Value]) -> Result<(), kube::Error> {
        let name = vm["metadata"]["name"].as_str().unwrap_or_default();
        let templates = vm["spec"]["dataVolumeTemplates"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let mut ready = true;
        for t in &templates {
            let dv_name = t["metadata"]["name"].as_str().unwrap_or_default();
            match dvs.iter().find(|d| d["metadata"]["name"] == dv_name) {
                // A disk on its way out (clean-on-boot) does not make the VM ready.
                Some(dv) => {
                    ready &= dv["status"]["phase"] == "Succeeded"
                        && dv["metadata"]["deletionTimestamp"].is_null();
                }
                None => {
                    ready = false;
                    let dv = json!({
                        "apiVersion": "cdi.kubevirt.io/v1beta1",
                        "kind": "DataVolume",
                        "metadata": {
                            "name": dv_name,
                            "labels": t["metadata"]["labels"],
                            "ownerReferences": [owner(vm)],
                        },
                        "spec": t["spec"],
                    });
                    self.api(&objects::data_volumes())
                        .create(
                            &PostParams::default(),
                            &serde_json::from_value(dv).expect("dv"),
                        )
                        .await?;
                }
            }
        }
        let printable = match (ready, vm["spec"]["runStrategy"].as_str()) {
            (false, _) => "Provisioning",
            (true, Some("Always")) => "Running",
            (true, _) => "Stopped",
        };
        if vm["status"]["printableStatus"] != printable {
            self.status(
                &objects::virtual_machines(),
                name,
                json!({"printableStatus": printable, "ready": printable == "Running",
                       "created": ready}),
            )
            .await?;
        }
        Ok(())
    }

    async fn play_dv(
        &self,
        dv: &Value,
        snapshots: &[Value],
        claim_size: &impl Fn(&str) -> Option<String>,
    ) -> Result<(), kube::Error> {
        let name = dv["metadata"]["name"].as_str().unwrap_or_default();
        if dv["metadata"]["deletionTimestamp"].is_string() {
            return Ok(());
        }
        let phase = dv["status"]["phase"].as_str().unwrap_or_default();
        let source = &dv["spec"]["source"];
        let source_ready = if let Some(s) = source["snapshot"]["name"].as_str() {
            snapshots
                .iter()
                .any(|v| v["metadata"]["name"] == s && v["status"]["readyToUse"] == json!(true))
        } else if let Some(p) = source["pvc"]["name"].as_str() {
            claim_size(p).is_some()
        } else {
            false
        };
        let dvs = objects::data_volumes();
        match phase {
            "" if !source_ready => {
                self.status(&dvs, name, json!({"phase": "Pending", "progress": "N/A",
                    "conditions": [condition("Bound", "False", "NotFound", "the clone source is not found or not ready")]}))
                    .await?;
            }
            "Pending" if !source_ready => {}
            "" | "Pending" if self.quota.lock().expect("lock").contains(name) => {
                self.status(&dvs, name, json!({"phase": "Pending",
                    "conditions": [condition("Bound", "False", "ErrExceededQuota",
                        "persistentvolumeclaims \"x\" is forbidden: exceeded quota: storage, requested: requests.storage=64Mi")]}))
                    .await?;
            }
            "" | "Pending" => {
                let storage = &dv["spec"]["storage"];
                let pvc = json!({
                    "apiVersion": "v1",
                    "kind": "PersistentVolumeClaim",
                    "metadata": {"name": name, "labels": dv["metadata"]["labels"],
                                 "ownerReferences": [owner(dv)]},
                    "spec": {
                        "accessModes": ["ReadWriteOnce"],
                        "storageClassName": storage["storageClassName"],
                        "resources": storage["resources"],
                    },
                });
                let pvcs: Api<PersistentVolumeClaim> =
                    Api::namespaced(self.client.clone(), &self.namespace);
                if claim_size(name).is_none() {
                    pvcs.create(
                        &PostParams::default(),
                        &serde_json::from_value(pvc).expect("pvc"),
                    )
                    .await?;
                }
                self.status(
                    &dvs,
                    name,
                    json!({"phase": "CloneScheduled", "claimName": name,
                    "progress": "N/A",
                    "conditions": [condition("Bound", "True", "Bound", "PVC Bound")]}),
                )
                .await?;
            }
            "CloneScheduled" | "CloneInProgress" => {
                if self.fail.lock().expect("lock").contains(name) {
                    self.status(&dvs, name, json!({"phase": "Failed",
                        "conditions": [condition("Running", "False", "Error", "stand-in: the clone failed: source volume is unreadable")]}))
                        .await?;
                    return Ok(());
                }
                let done = dv["status"]["progress"]
                    .as_str()
                    .and_then(mcs_kubevirt::status::parse_progress)
                    .unwrap_or(0.0);
                let held = self.hold.lock().expect("lock").contains(name);
                let next = if held {
                    done.max(10.0)
                } else {
                    done + self.percent_per_step
                };
                let status = if next >= 100.0 {
                    json!({"phase": "Succeeded", "progress": "100.0%",
                        "conditions": [condition("Ready", "True", "", "")]})
                } else {
                    json!({"phase": "CloneInProgress", "progress": format!("{next:.2}%"),
                        "conditions": [condition("Running", "True", "", "Clone in progress")]})
                };
                self.status(&dvs, name, status).await?;
            }
            _ => {}
        }
        Ok(())
    }
}

fn owner(object: &Value) -> Value {
    json!({
        "apiVersion": object["apiVersion"],
        "kind": object["kind"],
        "name": object["metadata"]["name"],
        "uid": object["metadata"]["uid"],
        "controller": true,
        "blockOwnerDeletion": true,
    })
}

fn condition(type_: &str, status: &str, reason: &str, message: &str) -> Value {
    json!({"type": type_, "status": status, "reason": reason, "message": message,
           "lastTransitionTime": "2026-11-26T00:00:00Z", "lastHeartbeatTime": "2026-11-26T00:00:00Z"})
}
