//! The Kubernetes objects the backend writes, built as JSON without I/O: the API resources
//! (group, version, plural) it talks to, object names, labels, DataVolumes, VirtualMachines and
//! identity Secrets. Every field here is checked against the real KubeVirt v1.9.0 and CDI
//! v1.66.0 schemas with strict field validation by the end-to-end tests.

use std::collections::BTreeMap;

use kube::core::{ApiResource, GroupVersionKind};
use mcs_backend::{DeletionPolicy, Owner};
use serde_json::{Value, json};

/// `app.kubernetes.io/managed-by` on every object the backend writes.
pub const LABEL_MANAGED_BY: &str = "app.kubernetes.io/managed-by";
/// The value of [`LABEL_MANAGED_BY`].
pub const MANAGER: &str = "mcs-operator";
/// The prepared image (its id) a DataVolume holds a copy of.
pub const LABEL_IMAGE: &str = "mcs.imaging.dev/prepared-image";
/// The hosting unit storage (by name) an object's disk lives in.
pub const LABEL_STORAGE: &str = "mcs.imaging.dev/storage";
/// The provisioning scheme a machine belongs to.
pub const LABEL_SCHEME: &str = "mcs.imaging.dev/scheme";
/// The machine (VirtualMachine name) an object belongs to.
pub const LABEL_MACHINE: &str = "mcs.imaging.dev/machine";
/// On a prepared DataVolume: the VolumeSnapshot (`namespace/name`) it was cloned from.
pub const ANNOTATION_SOURCE: &str = "mcs.imaging.dev/source";
/// On a VirtualMachine: the prepared PVC its disk was cloned from.
pub const ANNOTATION_PREPARED: &str = "mcs.imaging.dev/prepared-pvc";
/// The field manager of the backend's server-side applies.
pub const FIELD_MANAGER: &str = "mcs-operator-kubevirt";
/// On every object written for an owner: `<kind>/<namespace>/<name>` of the owning mcs object
/// (a ProvVM, an ImageVersionSpec), also when owner references cannot name it (another
/// namespace, or `Retain`).
pub const ANNOTATION_OWNER: &str = "mcs.imaging.dev/owner";

fn resource(group: &str, version: &str, kind: &str, plural: &str) -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), plural)
}

/// CDI `DataVolume` (`cdi.kubevirt.io/v1beta1`).
pub fn data_volumes() -> ApiResource {
    resource("cdi.kubevirt.io", "v1beta1", "DataVolume", "datavolumes")
}

/// KubeVirt `VirtualMachine` (`kubevirt.io/v1`).
pub fn virtual_machines() -> ApiResource {
    resource("kubevirt.io", "v1", "VirtualMachine", "virtualmachines")
}

/// KubeVirt `VirtualMachineSnapshot` (`snapshot.kubevirt.io/v1beta1`).
pub fn vm_snapshots() -> ApiResource {
    resource(
        "snapshot.kubevirt.io",
        "v1beta1",
        "VirtualMachineSnapshot",
        "virtualmachinesnapshots",
    )
}

/// KubeVirt `VirtualMachineSnapshotContent` (`snapshot.kubevirt.io/v1beta1`).
pub fn vm_snapshot_contents() -> ApiResource {
    resource(
        "snapshot.kubevirt.io",
        "v1beta1",
        "VirtualMachineSnapshotContent",
        "virtualmachinesnapshotcontents",
    )
}

/// CSI `VolumeSnapshot` (`snapshot.storage.k8s.io/v1`).
pub fn volume_snapshots() -> ApiResource {
    resource(
        "snapshot.storage.k8s.io",
        "v1",
        "VolumeSnapshot",
        "volumesnapshots",
    )
}

/// KubeVirt `VirtualMachineClusterInstancetype` (`instancetype.kubevirt.io/v1beta1`).
pub fn cluster_instancetypes() -> ApiResource {
    resource(
        "instancetype.kubevirt.io",
        "v1beta1",
        "VirtualMachineClusterInstancetype",
        "virtualmachineclusterinstancetypes",
    )
}

/// Multus `NetworkAttachmentDefinition` (`k8s.cni.cncf.io/v1`).
pub fn network_attachments() -> ApiResource {
    resource(
        "k8s.cni.cncf.io",
        "v1",
        "NetworkAttachmentDefinition",
        "network-attachment-definitions",
    )
}

/// A DNS-1123 label (at most 63 characters) made of `parts` joined with `-`: lower-cased, other
/// characters replaced by `-`; a name that would be longer is cut and ends in a hash of the
/// whole, so distinct inputs stay distinct.
pub fn dns_label(parts: &[&str]) -> String {
    let joined = parts.join("-");
    let mut name: String = joined
        .chars()
        .map(|c| {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_lowercase() || c.is_ascii_digit() {
                c
            } else {
                '-'
            }
        })
        .collect();
    if name.len() > 63 {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in joined.bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        name.truncate(54);
        name = format!("{}-{:08x}", name.trim_end_matches('-'), h as u32);
    }
    let trimmed = name.trim_matches('-');
    if trimmed.is_empty() {
        "x".into()
    } else {
        trimmed.to_string()
    }
}

/// The DataVolume (and PVC) holding `storage`'s copy of prepared image `image_id`.
pub fn prepared_name(image_id: &str, storage: &str) -> String {
    dns_label(&["mcs-img", image_id, storage])
}

/// The VirtualMachine of machine `machine` of scheme `scheme`.
pub fn machine_name(scheme: &str, machine: &str) -> String {
    dns_label(&[scheme, machine])
}

/// The system disk DataVolume (and PVC) of VirtualMachine `vm`.
pub fn disk_name(vm: &str) -> String {
    dns_label(&[vm, "disk"])
}

/// The identity Secret (cloud-init user data) of VirtualMachine `vm`.
pub fn identity_name(vm: &str) -> String {
    dns_label(&[vm, "identity"])
}

/// Where a disk is cloned from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DiskSource {
    /// A CSI VolumeSnapshot.
    Snapshot {
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
    },
    /// A PersistentVolumeClaim.
    Pvc {
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
    },
}

impl DiskSource {
    /// The `spec.source` of a DataVolume cloning from here.
    pub fn to_json(&self) -> Value {
        match self {
            Self::Snapshot { namespace, name } => {
                json!({"snapshot": {"namespace": namespace, "name": name}})
            }
            Self::Pvc { namespace, name } => json!({"pvc": {"namespace": namespace, "name": name}}),
        }
    }

    /// `namespace/name` of the source.
    pub fn id(&self) -> String {
        match self {
            Self::Snapshot { namespace, name } | Self::Pvc { namespace, name } => {
                format!("{namespace}/{name}")
            }
        }
    }
}

/// The labels of an object the backend writes, `extra` added.
pub fn labels(extra: &[(&str, &str)]) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::from([(LABEL_MANAGED_BY.to_string(), MANAGER.to_string())]);
    for (k, v) in extra {
        labels.insert((*k).to_string(), dns_label(&[v]));
    }
    labels
}

/// The `spec` of a DataVolume cloning `source` into a PVC of `storage_class` of `size_bytes`.
pub fn data_volume_spec(source: &DiskSource, storage_class: &str, size_bytes: u64) -> Value {
    json!({
        "source": source.to_json(),
        "storage": {
            "storageClassName": storage_class,
            "resources": {"requests": {"storage": size_bytes.to_string()}},
        },
    })
}

/// One storage's copy of a prepared image, as a DataVolume.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PreparedDisk<'a> {
    /// The namespace.
    pub namespace: &'a str,
    /// The DataVolume's (and PVC's) name.
    pub name: &'a str,
    /// The prepared image's id.
    pub image_id: &'a str,
    /// The hosting unit storage.
    pub storage: &'a str,
    /// What it clones (the snapshot, or the first copy's PVC).
    pub source: &'a DiskSource,
    /// The snapshot (`namespace/name`) the image comes from, recorded to detect conflicts.
    pub origin: &'a str,
    /// The StorageClass.
    pub storage_class: &'a str,
    /// The size.
    pub size_bytes: u64,
}

/// The DataVolume of one storage's copy of a prepared image.
pub fn prepared_data_volume(d: &PreparedDisk<'_>) -> Value {
    json!({
        "apiVersion": "cdi.kubevirt.io/v1beta1",
        "kind": "DataVolume",
        "metadata": {
            "name": d.name,
            "namespace": d.namespace,
            "labels": labels(&[(LABEL_IMAGE, d.image_id), (LABEL_STORAGE, d.storage)]),
            "annotations": {ANNOTATION_SOURCE: d.origin},
        },
        "spec": data_volume_spec(d.source, d.storage_class, d.size_bytes),
    })
}

/// One NIC of a machine: its network name, the NetworkAttachmentDefinition behind it (`None`:
/// the pod network) and its MAC address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Interface {
    /// The network's name in the hosting unit.
    pub network: String,
    /// The NetworkAttachmentDefinition (`name` or `namespace/name`), or `None` for the pod network.
    pub attachment: Option<String>,
    /// The MAC address.
    pub mac: String,
}

/// Everything a machine's VirtualMachine is built from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MachineSpec {
    /// The namespace.
    pub namespace: String,
    /// The VirtualMachine's name.
    pub name: String,
    /// The host name inside the guest.
    pub hostname: String,
    /// The scheme.
    pub scheme: String,
    /// The hosting unit storage (by name) of the disk.
    pub storage: String,
    /// The StorageClass of the disk.
    pub storage_class: String,
    /// The prepared PVC the disk is cloned from.
    pub prepared_pvc: String,
    /// The disk's size.
    pub size_bytes: u64,
    /// Virtual CPUs.
    pub cpu: u32,
    /// Memory in MiB.
    pub memory_mb: u64,
    /// NICs, in order.
    pub interfaces: Vec<Interface>,
    /// A write-back cache disk of this many MiB (an `emptyDisk`), if any.
    pub cache_disk_mb: Option<u64>,
    /// `runStrategy: Always` when true, else `Halted`.
    pub running: bool,
}

/// `Always` when the machine should run, `Halted` when not.
pub fn run_strategy(running: bool) -> &'static str {
    if running { "Always" } else { "Halted" }
}

/// The machine's VirtualMachine: a `dataVolumeTemplate` cloning the prepared PVC, CPU and
/// memory, one interface per NIC, the identity as a cloud-init volume from its Secret.
pub fn virtual_machine(m: &MachineSpec) -> Value {
    let disk = disk_name(&m.name);
    let machine_labels = labels(&[
        (LABEL_SCHEME, &m.scheme),
        (LABEL_MACHINE, &m.name),
        (LABEL_STORAGE, &m.storage),
    ]);
    let mut disks = vec![
        json!({"name": "system", "disk": {"bus": "virtio"}}),
        json!({"name": "identity", "disk": {"bus": "virtio"}}),
    ];
    let mut volumes = vec![
        json!({"name": "system", "dataVolume": {"name": disk}}),
        json!({"name": "identity", "cloudInitNoCloud": {"secretRef": {"name": identity_name(&m.name)}}}),
    ];
    if let Some(mb) = m.cache_disk_mb.filter(|mb| *mb > 0) {
        disks.push(json!({"name": "cache", "disk": {"bus": "virtio"}}));
        volumes.push(json!({"name": "cache", "emptyDisk": {"capacity": format!("{mb}Mi")}}));
    }
    let mut interfaces = Vec::new();
    let mut networks = Vec::new();
    for (i, nic) in m.interfaces.iter().enumerate() {
        let name = format!("nic{i}");
        match &nic.attachment {
            None => {
                interfaces.push(json!({"name": name, "masquerade": {}, "macAddress": nic.mac}));
                networks.push(json!({"name": name, "pod": {}}));
            }
            Some(nad) => {
                interfaces.push(json!({"name": name, "bridge": {}, "macAddress": nic.mac}));
                networks.push(json!({"name": name, "multus": {"networkName": nad}}));
            }
        }
    }
    json!({
        "apiVersion": "kubevirt.io/v1",
        "kind": "VirtualMachine",
        "metadata": {
            "name": m.name,
            "namespace": m.namespace,
            "labels": machine_labels,
            "annotations": {ANNOTATION_PREPARED: m.prepared_pvc},
        },
        "spec": {
            "runStrategy": run_strategy(m.running),
            "dataVolumeTemplates": [{
                "metadata": {"name": disk, "labels": machine_labels},
                "spec": data_volume_spec(
                    &DiskSource::Pvc { namespace: m.namespace.clone(), name: m.prepared_pvc.clone() },
                    &m.storage_class,
                    m.size_bytes,
                ),
            }],
            "template": {
                "metadata": {"labels": machine_labels},
                "spec": {
                    "hostname": dns_label(&[&m.hostname]),
                    "domain": {
                        "cpu": {"cores": m.cpu},
                        "memory": {"guest": format!("{}Mi", m.memory_mb)},
                        "devices": {"disks": disks, "interfaces": interfaces},
                    },
                    "networks": networks,
                    "volumes": volumes,
                },
            },
        },
    })
}

/// The cloud-init user data naming the machine (host name, FQDN).
pub fn cloud_init(hostname: &str, domain: &str) -> String {
    let fqdn = if domain.is_empty() {
        hostname.to_string()
    } else {
        format!("{hostname}.{domain}")
    };
    format!(
        "#cloud-config\nhostname: {}\nfqdn: {}\nprefer_fqdn_over_hostname: false\n",
        json!(hostname),
        json!(fqdn)
    )
}

/// The identity Secret of VirtualMachine `vm`: cloud-init `userdata` plus `identity.json`
/// (machine name, domain, index, scheme).
pub fn identity_secret(
    namespace: &str,
    vm: &str,
    scheme: &str,
    hostname: &str,
    domain: &str,
    index: u32,
) -> Value {
    let identity = json!({
        "machineName": hostname,
        "domain": domain,
        "machineIndex": index,
        "scheme": scheme,
    });
    json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": identity_name(vm),
            "namespace": namespace,
            "labels": labels(&[(LABEL_SCHEME, scheme), (LABEL_MACHINE, vm)]),
        },
        "type": "Opaque",
        "stringData": {
            "userdata": cloud_init(hostname, domain),
            "identity.json": identity.to_string(),
        },
    })
}

/// `object` (in namespace `namespace`) marked as `owner`'s: annotation [`ANNOTATION_OWNER`]
/// always, and `metadata.ownerReferences` naming the owner when it is in the same namespace
/// (owner references cannot cross namespaces) and its policy is `Delete`, so the cluster's
/// garbage collector removes the object with its owner. Without an owner, `object` unchanged.
pub fn with_owner(mut object: Value, namespace: &str, owner: Option<&Owner>) -> Value {
    let Some(o) = owner else {
        return object;
    };
    let metadata = &mut object["metadata"];
    metadata["annotations"][ANNOTATION_OWNER] =
        json!(format!("{}/{}/{}", o.kind, o.namespace, o.name));
    if o.namespace == namespace && o.policy == DeletionPolicy::Delete {
        metadata["ownerReferences"] = json!([{
            "apiVersion": o.api_version,
            "kind": o.kind,
            "name": o.name,
            "uid": o.uid,
            "controller": true,
        }]);
    }
    object
}

/// The owner (`kind`, `namespace`, `name`) an object's [`ANNOTATION_OWNER`] names.
pub fn owner_of(object: &Value) -> Option<(String, String, String)> {
    let value = object["metadata"]["annotations"][ANNOTATION_OWNER].as_str()?;
    let mut parts = value.splitn(3, '/');
    let kind = parts.next()?.to_string();
    let namespace = parts.next()?.to_string();
    let name = parts.next()?.to_string();
    Some((kind, namespace, name))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn machine() -> MachineSpec {
        MachineSpec {
            namespace: "vms".into(),
            name: "lab-vdi-001".into(),
            hostname: "VDI-001".into(),
            scheme: "lab".into(),
            storage: "fast".into(),
            storage_class: "ssd".into(),
            prepared_pvc: "mcs-img-u1-fast".into(),
            size_bytes: 1 << 30,
            cpu: 2,
            memory_mb: 4096,
            interfaces: vec![
                Interface {
                    network: "pod".into(),
                    attachment: None,
                    mac: "52:54:00:00:00:01".into(),
                },
                Interface {
                    network: "lan".into(),
                    attachment: Some("tenant-net".into()),
                    mac: "52:54:00:00:00:02".into(),
                },
            ],
            cache_disk_mb: Some(512),
            running: false,
        }
    }

    #[test]
    fn names_are_dns_labels_and_stay_distinct() {
        assert_eq!(machine_name("Lab", "VDI-001"), "lab-vdi-001");
        assert_eq!(dns_label(&["a_b", "C.d"]), "a-b-c-d");
        assert_eq!(dns_label(&["--"]), "x");
        let long_a = prepared_name("0b0e6a3e-6d1c-4b51-9c7e-2f4f7c9d2d11", &"s".repeat(40));
        let long_b = prepared_name("0b0e6a3e-6d1c-4b51-9c7e-2f4f7c9d2d11", &"t".repeat(40));
        for n in [&long_a, &long_b] {
            assert!(n.len() <= 63, "{n}");
            assert!(
                n.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            );
            assert!(!n.ends_with('-') && !n.starts_with('-'));
        }
        assert_ne!(long_a, long_b);
    }

    #[test]
    fn a_prepared_data_volume_clones_the_snapshot_into_its_storage_class() {
        let source = DiskSource::Snapshot {
            namespace: "vms".into(),
            name: "win11-base".into(),
        };
        let dv = prepared_data_volume(&PreparedDisk {
            namespace: "vms",
            name: "mcs-img-u1-fast",
            image_id: "u1",
            storage: "fast",
            source: &source,
            origin: &source.id(),
            storage_class: "ssd",
            size_bytes: 42,
        });
        assert_eq!(dv["spec"]["source"]["snapshot"]["name"], "win11-base");
        assert_eq!(dv["spec"]["storage"]["storageClassName"], "ssd");
        assert_eq!(
            dv["spec"]["storage"]["resources"]["requests"]["storage"],
            "42"
        );
        assert_eq!(dv["metadata"]["labels"][LABEL_IMAGE], "u1");
        assert_eq!(dv["metadata"]["labels"][LABEL_MANAGED_BY], MANAGER);
        assert_eq!(
            dv["metadata"]["annotations"][ANNOTATION_SOURCE],
            "vms/win11-base"
        );
    }

    #[test]
    fn a_machine_clones_its_prepared_pvc_and_maps_nics_and_power() {
        let m = machine();
        let vm = virtual_machine(&m);
        assert_eq!(vm["spec"]["runStrategy"], "Halted");
        let template = &vm["spec"]["dataVolumeTemplates"][0];
        assert_eq!(template["metadata"]["name"], "lab-vdi-001-disk");
        assert_eq!(template["spec"]["source"]["pvc"]["name"], "mcs-img-u1-fast");
        let spec = &vm["spec"]["template"]["spec"];
        assert_eq!(spec["hostname"], "vdi-001");
        assert_eq!(spec["domain"]["cpu"]["cores"], 2);
        assert_eq!(spec["domain"]["memory"]["guest"], "4096Mi");
        assert_eq!(spec["networks"][0]["pod"], json!({}));
        assert_eq!(spec["networks"][1]["multus"]["networkName"], "tenant-net");
        assert_eq!(
            spec["domain"]["devices"]["interfaces"][1]["macAddress"],
            "52:54:00:00:00:02"
        );
        assert_eq!(
            spec["volumes"][1]["cloudInitNoCloud"]["secretRef"]["name"],
            "lab-vdi-001-identity"
        );
        assert_eq!(spec["volumes"][2]["emptyDisk"]["capacity"], "512Mi");
        let running = virtual_machine(&MachineSpec {
            running: true,
            cache_disk_mb: None,
            ..m
        });
        assert_eq!(running["spec"]["runStrategy"], "Always");
        assert_eq!(
            running["spec"]["template"]["spec"]["volumes"]
                .as_array()
                .map(Vec::len),
            Some(2)
        );
    }

    #[test]
    fn the_identity_secret_names_the_machine() {
        let s = identity_secret("vms", "lab-vdi-001", "lab", "VDI-001", "corp.example", 1);
        let user = s["stringData"]["userdata"].as_str().expect("userdata");
        assert!(user.starts_with("#cloud-config\n"));
        assert!(user.contains("hostname: \"VDI-001\""));
        assert!(user.contains("fqdn: \"VDI-001.corp.example\""));
        let identity: Value =
            serde_json::from_str(s["stringData"]["identity.json"].as_str().expect("json"))
                .expect("valid json");
        assert_eq!(identity["machineIndex"], 1);
        assert_eq!(cloud_init("a", "").lines().nth(2), Some("fqdn: \"a\""));
    }

    fn owner(namespace: &str, policy: DeletionPolicy) -> Owner {
        Owner {
            api_version: "mcs.imaging.dev/v1alpha1".into(),
            kind: "ProvVM".into(),
            namespace: namespace.into(),
            name: "vdi-001".into(),
            uid: "u-1".into(),
            policy,
        }
    }

    #[test]
    fn owner_references_only_within_the_namespace_and_without_retain() {
        let vm = virtual_machine(&machine());
        assert_eq!(with_owner(vm.clone(), "vms", None), vm);
        let owned = with_owner(
            vm.clone(),
            "vms",
            Some(&owner("vms", DeletionPolicy::Delete)),
        );
        let refs = &owned["metadata"]["ownerReferences"];
        assert_eq!(refs[0]["kind"], "ProvVM");
        assert_eq!(refs[0]["uid"], "u-1");
        assert_eq!(refs[0]["controller"], true);
        assert_eq!(
            owner_of(&owned),
            Some(("ProvVM".into(), "vms".into(), "vdi-001".into()))
        );
        assert_eq!(
            owned["metadata"]["annotations"][ANNOTATION_PREPARED],
            vm["metadata"]["annotations"][ANNOTATION_PREPARED],
            "other annotations kept"
        );
        for (ns, policy) in [
            ("other", DeletionPolicy::Delete),
            ("vms", DeletionPolicy::Retain),
        ] {
            let marked = with_owner(vm.clone(), "vms", Some(&owner(ns, policy)));
            assert!(
                marked["metadata"]["ownerReferences"].is_null(),
                "{ns} {policy:?}"
            );
            assert_eq!(owner_of(&marked).map(|o| o.1), Some(ns.to_string()));
        }
        assert_eq!(owner_of(&vm), None);
    }
}
