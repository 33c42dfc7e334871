//! The Helm chart `charts/mcs-operator` and the kustomize install `deploy/`, checked with the
//! real tools:
//! - `helm lint --strict` and `helm template` with several value sets, asserting what matters in
//!   the parsed output (security settings, probes, environment, volumes, strategy, CRDs, RBAC);
//! - `values.schema.json` refusing bad values with a message naming the field;
//! - the chart with its defaults and `deploy/` agreeing (RBAC rules, Deployment, claim, Service,
//!   CRDs), and the operator binary reading every `MCS_*` variable they set;
//! - on a real control plane (`KUBEBUILDER_ASSETS`, see `scripts/kube-assets`): every rendered
//!   document accepted by `kubectl apply --dry-run=server`, then a real `helm install` (and
//!   `helm uninstall`, which keeps the CRDs and the claim) and `kubectl apply -k deploy/`, whose
//!   outputs are printed (`cargo test --test chart -- --nocapture` shows them). The control
//!   plane has a controller manager but no scheduler: the Deployment's Pod is created (so it
//!   passed the namespace's Pod Security admission) and stays Pending.
//!
//! helm is `HELM`, else `target/k8s-tools/helm` (`scripts/k8s-tools` installs it); kubectl for
//! kustomize is `MCS_KUBECTL_133`, else `target/k8s-tools/kubectl`, else `KUBECTL`, else the
//! control plane's or the one on `PATH`. A test whose tool or server is missing says it skipped
//! and passes, except under CI (`CI` set), where a missing helm or kubectl fails.

mod support;

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use mcs_testapi::control_plane::{ControlPlane, ControlPlaneConfig};
use serde::Deserialize as _;
use serde_json::Value;
use support::tools::{Helm, missing, repo, works};

/// The release name and namespace of every render: those for which the chart's object names
/// equal `deploy/`'s.
const RELEASE: &str = "mcs-operator";
const NAMESPACE: &str = "mcs-system";

/// The eight CRDs the chart and `deploy/` install.
const CRD_NAMES: [&str; 8] = [
    "hypervisorconnections.mcs.imaging.dev",
    "hostingunits.mcs.imaging.dev",
    "identitypools.mcs.imaging.dev",
    "imagedefinitions.mcs.imaging.dev",
    "imageversions.mcs.imaging.dev",
    "imageversionspecs.mcs.imaging.dev",
    "provschemes.mcs.imaging.dev",
    "provvms.mcs.imaging.dev",
];

/// One set of `helm template` arguments the tests render, lint and send to the API server.
struct ValueSet {
    name: &'static str,
    args: &'static [&'static str],
}

const VALUE_SETS: &[ValueSet] = &[
    ValueSet {
        name: "defaults",
        args: &[],
    },
    ValueSet {
        name: "existing-claim",
        args: &[
            "--set",
            "storage.type=existingClaim",
            "--set",
            "storage.existingClaim=mcs-images",
        ],
    },
    ValueSet {
        name: "host-path",
        args: &[
            "--set",
            "storage.type=hostPath",
            "--set",
            "storage.hostPath.path=/srv/mcs",
        ],
    },
    ValueSet {
        name: "pvc-storage-class",
        args: &[
            "--set",
            "storage.pvc.storageClassName=fast-ssd",
            "--set",
            "storage.pvc.size=200Gi",
            "--set",
            "storage.pvc.keep=false",
        ],
    },
    ValueSet {
        name: "no-crds",
        args: &["--set", "crds.install=false"],
    },
    ValueSet {
        name: "no-leader-election",
        args: &[
            "--set",
            "leaderElection.enabled=false",
            "--set",
            "replicas=1",
        ],
    },
    ValueSet {
        name: "two-replicas",
        args: &[
            "--set",
            "replicas=2",
            "--set",
            "storage.pvc.accessModes={ReadWriteMany}",
        ],
    },
    ValueSet {
        name: "service-monitor",
        args: &[
            "--set",
            "metrics.serviceMonitor.enabled=true",
            "--set",
            "metrics.serviceMonitor.interval=15s",
            "--set",
            "metrics.serviceMonitor.labels.release=prometheus",
        ],
    },
    ValueSet {
        name: "watch-namespace",
        args: &["--set", "watchNamespace=vdi"],
    },
    ValueSet {
        name: "host-network-extra-env",
        args: &[
            "--set",
            "hostNetwork=true",
            "--set-json",
            r#"extraEnv=[{"name":"KUBERNETES_SERVICE_HOST","value":"127.0.0.1"},{"name":"KUBERNETES_SERVICE_PORT","value":"6443"}]"#,
        ],
    },
];

fn chart_dir() -> PathBuf {
    repo().join("charts/mcs-operator")
}

impl Helm {
    /// `helm template` of the chart as release [`RELEASE`] in [`NAMESPACE`].
    fn template(&self, args: &[&str]) -> Output {
        self.command()
            .args(["template", RELEASE])
            .arg(chart_dir())
            .args(["--namespace", NAMESPACE])
            .args(args)
            .output()
            .expect("helm template runs")
    }

    /// The rendered documents of a value set; panics with helm's message when it fails.
    fn render(&self, set: &ValueSet) -> Rendered {
        let out = self.template(set.args);
        assert!(
            out.status.success(),
            "helm template with {} ({:?}) failed: {}",
            set.name,
            set.args,
            String::from_utf8_lossy(&out.stderr)
        );
        Rendered::parse(&String::from_utf8_lossy(&out.stdout))
    }
}

/// kubectl for `kubectl kustomize`: `MCS_KUBECTL_133`, `target/k8s-tools/kubectl`, `KUBECTL`,
/// the control plane assets' or the one on `PATH`; `None` (after saying so) when missing.
fn kustomize_kubectl(test: &str) -> Option<PathBuf> {
    let candidates = [
        std::env::var_os("MCS_KUBECTL_133").map(PathBuf::from),
        Some(repo().join("target/k8s-tools/kubectl")),
        std::env::var_os("KUBECTL").map(PathBuf::from),
        std::env::var_os("KUBEBUILDER_ASSETS").map(|d| PathBuf::from(d).join("kubectl")),
        Some(PathBuf::from("kubectl")),
    ];
    let found = candidates
        .into_iter()
        .flatten()
        .find(|p| works(p, &["version", "--client"]));
    if found.is_none() {
        missing(
            test,
            "kubectl (MCS_KUBECTL_133 or target/k8s-tools/kubectl)",
        );
    }
    found
}

/// `kubectl kustomize DIR`, parsed.
fn kustomize(kubectl: &Path, dir: &str) -> Rendered {
    let out = Command::new(kubectl)
        .arg("kustomize")
        .arg(repo().join(dir))
        .output()
        .expect("kubectl kustomize runs");
    assert!(
        out.status.success(),
        "kubectl kustomize {dir}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Rendered::parse(&String::from_utf8_lossy(&out.stdout))
}

/// The documents of a multi-document YAML stream.
struct Rendered {
    text: String,
    docs: Vec<Value>,
}

impl Rendered {
    fn parse(text: &str) -> Rendered {
        let docs = serde_yaml::Deserializer::from_str(text)
            .map(|doc| Value::deserialize(doc).expect("rendered YAML parses"))
            .filter(|doc| !doc.is_null())
            .collect();
        Rendered {
            text: text.to_owned(),
            docs,
        }
    }

    fn of_kind(&self, kind: &str) -> Vec<&Value> {
        self.docs.iter().filter(|d| d["kind"] == kind).collect()
    }

    fn get(&self, kind: &str, name: &str) -> Option<&Value> {
        self.docs
            .iter()
            .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
    }

    fn one(&self, kind: &str, name: &str) -> &Value {
        self.get(kind, name).unwrap_or_else(|| {
            panic!(
                "no {kind} {name} among: {:?}",
                self.docs
                    .iter()
                    .map(|d| format!("{}/{}", d["kind"], d["metadata"]["name"]))
                    .collect::<Vec<_>>()
            )
        })
    }

    fn deployment(&self) -> &Value {
        let all = self.of_kind("Deployment");
        assert_eq!(all.len(), 1, "exactly one Deployment");
        all[0]
    }

    fn pod(&self) -> &Value {
        &self.deployment()["spec"]["template"]["spec"]
    }

    fn container(&self) -> &Value {
        let containers = self.pod()["containers"].as_array().expect("containers");
        assert_eq!(containers.len(), 1, "one container");
        assert_eq!(containers[0]["name"], "operator");
        &containers[0]
    }

    fn env(&self, name: &str) -> Option<&Value> {
        self.container()["env"]
            .as_array()
            .expect("env")
            .iter()
            .find(|e| e["name"] == name)
    }

    fn env_value(&self, name: &str) -> Option<&str> {
        self.env(name)
            .map(|e| e["value"].as_str().expect("a value"))
    }

    fn env_names(&self) -> Vec<String> {
        self.container()["env"]
            .as_array()
            .expect("env")
            .iter()
            .map(|e| e["name"].as_str().expect("env name").to_owned())
            .collect()
    }

    fn volume(&self, name: &str) -> &Value {
        self.pod()["volumes"]
            .as_array()
            .expect("volumes")
            .iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("no volume {name}"))
    }

    fn mount_path(&self, volume: &str) -> &str {
        self.container()["volumeMounts"]
            .as_array()
            .expect("volumeMounts")
            .iter()
            .find(|m| m["name"] == volume)
            .and_then(|m| m["mountPath"].as_str())
            .unwrap_or_else(|| panic!("volume {volume} is not mounted"))
    }
}

/// What every value set must render: the security settings, probes, environment, volumes,
/// namespaces and names that hang together.
fn check_common(set: &str, r: &Rendered) {
    let pod = r.pod();
    let psc = &pod["securityContext"];
    assert_eq!(psc["runAsNonRoot"], true, "{set}: runAsNonRoot");
    assert_eq!(psc["runAsUser"], 65532, "{set}: runAsUser");
    assert_eq!(psc["runAsGroup"], 65532, "{set}: runAsGroup");
    assert_eq!(psc["fsGroup"], 65532, "{set}: fsGroup");
    assert_eq!(
        psc["seccompProfile"]["type"], "RuntimeDefault",
        "{set}: seccomp"
    );

    let c = r.container();
    let sc = &c["securityContext"];
    assert_eq!(sc["readOnlyRootFilesystem"], true, "{set}: read-only root");
    assert_eq!(
        sc["allowPrivilegeEscalation"], false,
        "{set}: no escalation"
    );
    assert_eq!(
        sc["capabilities"]["drop"],
        serde_json::json!(["ALL"]),
        "{set}"
    );
    assert_eq!(
        c["image"],
        format!(
            "ghcr.io/mcs-operator/mcs-operator:{}",
            env!("CARGO_PKG_VERSION")
        ),
        "{set}: the image tag is the chart's appVersion, the crate version"
    );
    assert_eq!(c["args"], serde_json::json!(["run"]), "{set}: args");
    assert!(
        c.get("command").is_none(),
        "{set}: the image's entrypoint runs"
    );

    let ports: BTreeMap<&str, &Value> = c["ports"]
        .as_array()
        .expect("ports")
        .iter()
        .map(|p| (p["name"].as_str().expect("port name"), &p["containerPort"]))
        .collect();
    assert_eq!(ports.get("metrics"), Some(&&Value::from(8080)), "{set}");
    assert_eq!(ports.get("probes"), Some(&&Value::from(8081)), "{set}");
    for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
        assert_eq!(c[probe]["httpGet"]["path"], path, "{set}: {probe}");
        assert_eq!(c[probe]["httpGet"]["port"], "probes", "{set}: {probe}");
    }
    assert_eq!(r.env_value("MCS_METRICS_ADDRESS"), Some("0.0.0.0:8080"));
    assert_eq!(r.env_value("MCS_PROBE_ADDRESS"), Some("0.0.0.0:8081"));
    assert_eq!(r.env_value("MCS_LOG_FORMAT"), Some("json"), "{set}");
    assert_eq!(r.env_value("MCS_LOG_LEVEL"), Some("info"), "{set}");
    assert_eq!(r.env_value("MCS_CONCURRENCY"), Some("4"), "{set}");
    assert_eq!(r.env_value("MCS_MAX_CONCURRENT_TASKS"), Some("4"), "{set}");
    for (var, field) in [
        ("POD_NAME", "metadata.name"),
        ("POD_NAMESPACE", "metadata.namespace"),
    ] {
        let env = r.env(var).unwrap_or_else(|| panic!("{set}: no {var}"));
        assert_eq!(env["valueFrom"]["fieldRef"]["fieldPath"], field, "{set}");
    }
    let names = r.env_names();
    let mut unique = names.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(
        unique.len(),
        names.len(),
        "{set}: an env name twice: {names:?}"
    );

    assert_eq!(r.mount_path("storage"), "/var/lib/mcs", "{set}");
    assert_eq!(r.mount_path("tmp"), "/tmp", "{set}");
    assert!(
        r.volume("tmp")["emptyDir"].is_object(),
        "{set}: /tmp emptyDir"
    );

    // Names that refer to each other.
    let sa = pod["serviceAccountName"]
        .as_str()
        .expect("serviceAccountName");
    r.one("ServiceAccount", sa);
    let binding = r.one("ClusterRoleBinding", RELEASE);
    assert_eq!(binding["roleRef"]["name"], RELEASE, "{set}");
    r.one("ClusterRole", RELEASE);
    assert_eq!(binding["subjects"][0]["name"], sa, "{set}");
    assert_eq!(binding["subjects"][0]["namespace"], NAMESPACE, "{set}");
    let selector = &r.deployment()["spec"]["selector"]["matchLabels"];
    let labels = &r.deployment()["spec"]["template"]["metadata"]["labels"];
    for (key, value) in selector.as_object().expect("matchLabels") {
        assert_eq!(
            &labels[key], value,
            "{set}: the Pod has the selector's labels"
        );
    }
    if let Some(lease) = r.env_value("MCS_LEADER_ELECTION_LEASE") {
        let role = r.one("Role", &format!("{RELEASE}-leader-election"));
        let named: Vec<&Value> = role["rules"]
            .as_array()
            .expect("rules")
            .iter()
            .flat_map(|rule| rule["resourceNames"].as_array().into_iter().flatten())
            .collect();
        assert!(
            named.iter().any(|n| *n == lease),
            "{set}: the Lease role names the lease {lease}: {named:?}"
        );
    }

    // Every namespaced object goes to the release namespace.
    for doc in &r.docs {
        let kind = doc["kind"].as_str().expect("kind");
        let cluster_scoped = [
            "CustomResourceDefinition",
            "ClusterRole",
            "ClusterRoleBinding",
            "Namespace",
        ]
        .contains(&kind);
        if !cluster_scoped {
            assert_eq!(doc["metadata"]["namespace"], NAMESPACE, "{set}: {kind}");
        }
    }
}

#[test]
fn lint_strict_with_every_value_set() {
    let Some(helm) = Helm::find("lint_strict_with_every_value_set") else {
        return;
    };
    for set in VALUE_SETS {
        let out = helm
            .command()
            .args(["lint", "--strict"])
            .arg(chart_dir())
            .args(set.args)
            .output()
            .expect("helm lint runs");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success() && text.contains("0 chart(s) failed"),
            "helm lint --strict with {}: {text}",
            set.name
        );
        assert!(
            !text.contains("[WARNING]") && !text.contains("[ERROR]"),
            "helm lint --strict with {}: {text}",
            set.name
        );
        eprintln!("helm lint --strict {:<24} ok", set.name);
    }
}

#[test]
fn template_value_sets() {
    let Some(helm) = Helm::find("template_value_sets") else {
        return;
    };
    for set in VALUE_SETS {
        let r = helm.render(set);
        check_common(set.name, &r);
        for crd in r.of_kind("CustomResourceDefinition") {
            assert_eq!(
                crd["metadata"]["annotations"]["helm.sh/resource-policy"], "keep",
                "{}: helm uninstall keeps {}",
                set.name, crd["metadata"]["name"]
            );
        }
        let name = set.name;
        let deployment = r.deployment();
        let strategy = &deployment["spec"]["strategy"];
        let crds = r.of_kind("CustomResourceDefinition").len();
        let pvc = r.get("PersistentVolumeClaim", "mcs-operator-storage");
        match name {
            "defaults" => {
                assert_eq!(crds, 8);
                let mut crd_names: Vec<&str> = r
                    .of_kind("CustomResourceDefinition")
                    .iter()
                    .map(|c| c["metadata"]["name"].as_str().expect("name"))
                    .collect();
                crd_names.sort();
                let mut expected = CRD_NAMES.to_vec();
                expected.sort();
                assert_eq!(crd_names, expected);
                assert_eq!(deployment["spec"]["replicas"], 1);
                assert_eq!(
                    strategy["type"], "Recreate",
                    "one replica on a ReadWriteOnce claim is replaced with Recreate"
                );
                assert!(strategy.get("rollingUpdate").is_none());
                let pvc = pvc.expect("the chart makes the storage claim");
                assert_eq!(
                    pvc["spec"]["accessModes"],
                    serde_json::json!(["ReadWriteOnce"])
                );
                assert_eq!(pvc["spec"]["resources"]["requests"]["storage"], "50Gi");
                assert!(pvc["spec"].get("storageClassName").is_none());
                assert_eq!(
                    pvc["metadata"]["annotations"]["helm.sh/resource-policy"],
                    "keep"
                );
                assert_eq!(
                    r.volume("storage")["persistentVolumeClaim"]["claimName"],
                    "mcs-operator-storage"
                );
                assert_eq!(r.env_value("MCS_LEADER_ELECT"), Some("true"));
                assert_eq!(r.env_value("MCS_LEADER_ELECTION_LEASE"), Some(RELEASE));
                assert_eq!(r.env_value("MCS_LEASE_DURATION_SECONDS"), Some("10"));
                assert!(
                    r.env("MCS_NAMESPACE").is_none(),
                    "all namespaces by default"
                );
                let service = r.one("Service", "mcs-operator-metrics");
                assert_eq!(service["spec"]["ports"][0]["port"], 8080);
                assert_eq!(service["spec"]["ports"][0]["targetPort"], "metrics");
                assert!(r.of_kind("ServiceMonitor").is_empty());
                assert!(r.pod().get("hostNetwork").is_none());
                assert_eq!(r.of_kind("ClusterRole").len(), 3, "operator, edit, view");
                let edit = r.one("ClusterRole", "mcs-operator-edit");
                assert_eq!(
                    edit["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-edit"],
                    "true"
                );
                let view = r.one("ClusterRole", "mcs-operator-view");
                assert_eq!(
                    view["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-view"],
                    "true"
                );
                assert_eq!(
                    view["rules"][0]["verbs"],
                    serde_json::json!(["get", "list", "watch"])
                );
                r.one("RoleBinding", "mcs-operator-leader-election");
            }
            "existing-claim" => {
                assert!(pvc.is_none(), "no claim of the chart's own");
                assert_eq!(
                    r.volume("storage")["persistentVolumeClaim"]["claimName"],
                    "mcs-images"
                );
                assert_eq!(
                    strategy["type"], "Recreate",
                    "an existing claim may be ReadWriteOnce"
                );
            }
            "host-path" => {
                assert!(pvc.is_none());
                let host = &r.volume("storage")["hostPath"];
                assert_eq!(host["path"], "/srv/mcs");
                assert_eq!(host["type"], "Directory");
                assert_eq!(strategy["type"], "RollingUpdate");
            }
            "pvc-storage-class" => {
                let pvc = pvc.expect("claim");
                assert_eq!(pvc["spec"]["storageClassName"], "fast-ssd");
                assert_eq!(pvc["spec"]["resources"]["requests"]["storage"], "200Gi");
                assert!(
                    pvc["metadata"].get("annotations").is_none(),
                    "keep=false: no resource policy"
                );
            }
            "no-crds" => {
                assert_eq!(crds, 0);
                assert!(r.deployment().is_object());
            }
            "no-leader-election" => {
                assert_eq!(r.env_value("MCS_LEADER_ELECT"), Some("false"));
                assert!(r.env("MCS_LEADER_ELECTION_LEASE").is_none());
                assert!(
                    r.of_kind("Role").is_empty(),
                    "no Lease role without election"
                );
                assert!(r.of_kind("RoleBinding").is_empty());
                assert_eq!(deployment["spec"]["replicas"], 1);
            }
            "two-replicas" => {
                assert_eq!(deployment["spec"]["replicas"], 2);
                assert_eq!(r.env_value("MCS_LEADER_ELECT"), Some("true"));
                assert_eq!(strategy["type"], "RollingUpdate");
                assert_eq!(strategy["rollingUpdate"]["maxUnavailable"], 0);
                assert_eq!(strategy["rollingUpdate"]["maxSurge"], 1);
                assert_eq!(
                    pvc.expect("claim")["spec"]["accessModes"],
                    serde_json::json!(["ReadWriteMany"])
                );
            }
            "service-monitor" => {
                let monitors = r.of_kind("ServiceMonitor");
                assert_eq!(monitors.len(), 1);
                let monitor = monitors[0];
                assert_eq!(monitor["apiVersion"], "monitoring.coreos.com/v1");
                assert_eq!(monitor["metadata"]["labels"]["release"], "prometheus");
                let endpoint = &monitor["spec"]["endpoints"][0];
                assert_eq!(endpoint["port"], "metrics");
                assert_eq!(endpoint["path"], "/metrics");
                assert_eq!(endpoint["interval"], "15s");
                let service = r.one("Service", "mcs-operator-metrics");
                for (key, value) in monitor["spec"]["selector"]["matchLabels"]
                    .as_object()
                    .expect("matchLabels")
                {
                    assert_eq!(
                        &service["metadata"]["labels"][key], value,
                        "the ServiceMonitor selects the metrics Service"
                    );
                }
                assert_eq!(
                    monitor["spec"]["namespaceSelector"]["matchNames"],
                    serde_json::json!([NAMESPACE])
                );
            }
            "watch-namespace" => {
                assert_eq!(r.env_value("MCS_NAMESPACE"), Some("vdi"));
            }
            "host-network-extra-env" => {
                assert_eq!(r.pod()["hostNetwork"], true);
                assert_eq!(r.pod()["dnsPolicy"], "ClusterFirstWithHostNet");
                assert_eq!(r.env_value("KUBERNETES_SERVICE_HOST"), Some("127.0.0.1"));
                assert_eq!(r.env_value("KUBERNETES_SERVICE_PORT"), Some("6443"));
            }
            other => panic!("value set {other} has no assertions"),
        }
        eprintln!("helm template {name:<24} {} documents ok", r.docs.len());
    }
}

#[test]
fn schema_rejects_bad_values_naming_the_field() {
    let Some(helm) = Helm::find("schema_rejects_bad_values_naming_the_field") else {
        return;
    };
    let cases: &[(&[&str], &str)] = &[
        (&["--set", "replicas=-1"], "/replicas"),
        (&["--set", "replicas=two"], "/replicas"),
        (&["--set", "unknownKey=1"], "unknownKey"),
        (&["--set", "image.digest=sha256:0"], "digest"),
        (&["--set", "storage.type=nfs"], "/storage/type"),
        (
            &["--set", "storage.type=existingClaim"],
            "/storage/existingClaim",
        ),
        (
            &["--set", "storage.pvc.accessModes={ReadWriteSometimes}"],
            "/storage/pvc/accessModes",
        ),
        (&["--set", "storage.pvc.size=lots"], "/storage/pvc/size"),
        (&["--set", "log.format=xml"], "/log/format"),
        (&["--set", "concurrency=0"], "/concurrency"),
        (
            &["--set", "image.pullPolicy=Sometimes"],
            "/image/pullPolicy",
        ),
        (
            &["--set", "watchNamespace=Not_A_Namespace"],
            "/watchNamespace",
        ),
        (&["--set", "metrics.port=70000"], "/metrics/port"),
        (&["--set", "strategy.type=BlueGreen"], "/strategy/type"),
        (
            &[
                "--set",
                "replicas=2",
                "--set",
                "leaderElection.enabled=false",
            ],
            "/leaderElection/enabled",
        ),
        (
            &[
                "--set",
                "metrics.serviceMonitor.enabled=true",
                "--set",
                "metrics.service.enabled=false",
            ],
            "metrics.serviceMonitor.enabled needs metrics.service.enabled",
        ),
    ];
    for (args, field) in cases {
        let out = helm.template(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "helm template {args:?} should be refused, it rendered"
        );
        assert!(
            stderr.contains(field),
            "helm template {args:?} was refused without naming {field}: {stderr}"
        );
        let line = stderr
            .lines()
            .find(|l| l.contains(field))
            .unwrap_or_default();
        eprintln!("refused {args:?}: {}", line.trim());
    }
}

/// `value` with every number as a float: kustomize writes `256.0` as `256`.
fn numbers_as_floats(value: &Value) -> Value {
    match value {
        Value::Number(n) => Value::from(n.as_f64().expect("a finite number")),
        Value::Array(items) => Value::Array(items.iter().map(numbers_as_floats).collect()),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| (k.clone(), numbers_as_floats(v)))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// `rules` of a Role or ClusterRole, for comparing.
fn rules(doc: &Value) -> &Value {
    &doc["rules"]
}

#[test]
fn chart_defaults_and_deploy_agree() {
    let test = "chart_defaults_and_deploy_agree";
    let Some(helm) = Helm::find(test) else {
        return;
    };
    let Some(kubectl) = kustomize_kubectl(test) else {
        return;
    };
    let chart = helm.render(&VALUE_SETS[0]);
    let deploy = kustomize(&kubectl, "deploy");
    check_common("deploy/", &deploy);

    for kind in ["ClusterRole", "Role"] {
        let names = |r: &Rendered| -> Vec<String> {
            let mut names: Vec<String> = r
                .of_kind(kind)
                .iter()
                .map(|d| d["metadata"]["name"].as_str().expect("name").to_owned())
                .collect();
            names.sort();
            names
        };
        assert_eq!(names(&chart), names(&deploy), "the same {kind}s");
        for name in names(&chart) {
            assert_eq!(
                rules(chart.one(kind, &name)),
                rules(deploy.one(kind, &name)),
                "the rules of {kind} {name} differ between the chart and deploy/"
            );
        }
    }
    for kind in ["ClusterRoleBinding", "RoleBinding"] {
        for binding in chart.of_kind(kind) {
            let name = binding["metadata"]["name"].as_str().expect("name");
            let other = deploy.one(kind, name);
            assert_eq!(binding["roleRef"], other["roleRef"], "{kind} {name}");
            assert_eq!(binding["subjects"], other["subjects"], "{kind} {name}");
        }
    }
    for label in [
        "rbac.authorization.k8s.io/aggregate-to-edit",
        "rbac.authorization.k8s.io/aggregate-to-admin",
        "rbac.authorization.k8s.io/aggregate-to-view",
    ] {
        for role in chart.of_kind("ClusterRole") {
            let name = role["metadata"]["name"].as_str().expect("name");
            assert_eq!(
                role["metadata"]["labels"][label],
                deploy.one("ClusterRole", name)["metadata"]["labels"][label],
                "{name}: {label}"
            );
        }
    }

    let (cd, dd) = (chart.deployment(), deploy.deployment());
    for field in ["replicas", "strategy", "selector", "revisionHistoryLimit"] {
        assert_eq!(
            cd["spec"][field], dd["spec"][field],
            "Deployment spec.{field}"
        );
    }
    assert_eq!(
        cd["spec"]["template"]["spec"], dd["spec"]["template"]["spec"],
        "the Pod spec of deploy/ must equal the chart's with its defaults"
    );
    for (kind, name) in [
        ("Service", "mcs-operator-metrics"),
        ("PersistentVolumeClaim", "mcs-operator-storage"),
    ] {
        assert_eq!(
            chart.one(kind, name)["spec"],
            deploy.one(kind, name)["spec"],
            "{kind} {name}"
        );
    }
    for name in CRD_NAMES {
        assert!(
            numbers_as_floats(&chart.one("CustomResourceDefinition", name)["spec"])
                == numbers_as_floats(&deploy.one("CustomResourceDefinition", name)["spec"]),
            "the CRD {name} of the chart differs from deploy/'s"
        );
    }
    let namespace = deploy.one("Namespace", NAMESPACE);
    assert_eq!(
        namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"],
        "restricted"
    );

    // The hostPath overlay: no claim, the node folder, a namespace that allows hostPath.
    let overlay = kustomize(&kubectl, "deploy/overlays/hostpath");
    check_common("deploy/overlays/hostpath", &overlay);
    assert!(overlay.of_kind("PersistentVolumeClaim").is_empty());
    assert_eq!(
        overlay.volume("storage")["hostPath"],
        serde_json::json!({"path": "/var/lib/mcs", "type": "Directory"})
    );
    assert_eq!(
        overlay.one("Namespace", NAMESPACE)["metadata"]["labels"]["pod-security.kubernetes.io/enforce"],
        "privileged"
    );
    let chart_host_path = helm.render(&ValueSet {
        name: "host-path-default-folder",
        args: &["--set", "storage.type=hostPath"],
    });
    assert_eq!(
        chart_host_path.volume("storage"),
        overlay.volume("storage"),
        "the chart's hostPath volume equals the overlay's"
    );
}

#[test]
fn operator_reads_every_variable_the_chart_sets() {
    let test = "operator_reads_every_variable_the_chart_sets";
    let Some(helm) = Helm::find(test) else {
        return;
    };
    let out = Command::new(env!("CARGO_BIN_EXE_mcs-operator"))
        .args(["run", "--help"])
        .output()
        .expect("mcs-operator runs");
    assert!(out.status.success(), "mcs-operator run --help");
    let help = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut seen = std::collections::BTreeSet::new();
    let mut renders: Vec<Rendered> = VALUE_SETS.iter().map(|set| helm.render(set)).collect();
    if let Some(kubectl) = kustomize_kubectl(test) {
        renders.push(kustomize(&kubectl, "deploy"));
    }
    for r in &renders {
        for name in r.env_names().into_iter().filter(|n| n.starts_with("MCS_")) {
            assert!(
                help.contains(&format!("[env: {name}=")),
                "the chart sets {name}, which `mcs-operator run` does not read:\n{help}"
            );
            seen.insert(name);
        }
    }
    assert!(
        help.contains("POD_NAMESPACE"),
        "the Lease namespace defaults to POD_NAMESPACE"
    );
    eprintln!("mcs-operator run reads every variable the chart sets: {seen:?}");
}

/// A control plane of this test's own from `KUBEBUILDER_ASSETS`, without CRDs (the chart and
/// `deploy/` install them); `None` (after saying so) when there are no assets.
fn control_plane(test: &str) -> Option<ControlPlane> {
    let Some(config) = ControlPlaneConfig::from_env() else {
        eprintln!(
            "{test}: SKIPPED: no real API server (set KUBEBUILDER_ASSETS, e.g. $(scripts/kube-assets))"
        );
        return None;
    };
    let started = Instant::now();
    let plane = ControlPlane::start(&config)
        .unwrap_or_else(|e| panic!("{test}: the control plane did not start: {e:#}"));
    eprintln!(
        "{test}: real control plane at {} ready in {:.1} s",
        plane.url(),
        started.elapsed().as_secs_f64()
    );
    Some(plane)
}

/// Runs the plane's kubectl with `stdin` as input; returns (success, stdout, stderr).
fn kubectl_run(plane: &ControlPlane, args: &[&str], stdin: &str) -> (bool, String, String) {
    let mut child = plane
        .kubectl()
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kubectl runs");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .expect("kubectl stdin");
    let out = child.wait_with_output().expect("kubectl finishes");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Like [`kubectl_run`], panicking with kubectl's output when it fails; returns stdout and
/// stderr together.
fn kubectl_ok(plane: &ControlPlane, args: &[&str], stdin: &str) -> String {
    let (ok, out, err) = kubectl_run(plane, args, stdin);
    assert!(ok, "kubectl {args:?} failed:\n{out}{err}");
    format!("{out}{err}")
}

/// The namespace the chart goes to, enforcing and warning about the "restricted" Pod Security
/// Standard.
const RESTRICTED_NAMESPACE: &str = "apiVersion: v1
kind: Namespace
metadata:
  name: mcs-system
  labels:
    pod-security.kubernetes.io/enforce: restricted
    pod-security.kubernetes.io/warn: restricted
";

/// The least a ServiceMonitor needs to be accepted: its CRD, with any content.
const SERVICE_MONITOR_CRD: &str = "apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: servicemonitors.monitoring.coreos.com
spec:
  group: monitoring.coreos.com
  names:
    kind: ServiceMonitor
    listKind: ServiceMonitorList
    plural: servicemonitors
    singular: servicemonitor
  scope: Namespaced
  versions:
    - name: v1
      served: true
      storage: true
      schema:
        openAPIV3Schema:
          type: object
          x-kubernetes-preserve-unknown-fields: true
";

/// Waits (at most 60 s) until the ReplicaSet controller has created a Pod of the operator that
/// `accept` likes; such a Pod passed the namespace's Pod Security admission and the
/// ServiceAccount admission. Panics with the namespace's events when none comes.
fn wait_for_pod(plane: &ControlPlane, what: &str, accept: impl Fn(&Value) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let pods = kubectl_ok(
            plane,
            &[
                "get",
                "pods",
                "-n",
                NAMESPACE,
                "-l",
                "app.kubernetes.io/name=mcs-operator",
                "-o",
                "json",
            ],
            "",
        );
        let pods: Value = serde_json::from_str(&pods).expect("pod list JSON");
        if let Some(pod) = pods["items"]
            .as_array()
            .expect("items")
            .iter()
            .find(|p| p["metadata"]["deletionTimestamp"].is_null() && accept(p))
        {
            return pod["metadata"]["name"].as_str().expect("name").to_owned();
        }
        if Instant::now() > deadline {
            let (_, events, _) = kubectl_run(plane, &["get", "events", "-n", NAMESPACE], "");
            panic!("no Pod ({what}) was created in 60 s; events:\n{events}");
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Whether a Pod mounts its storage from a hostPath.
fn pod_uses_host_path(pod: &Value) -> bool {
    pod["spec"]["volumes"].as_array().is_some_and(|v| {
        v.iter()
            .any(|v| v["name"] == "storage" && v["hostPath"].is_object())
    })
}

#[test]
fn chart_accepted_by_a_real_api_server_and_installed() {
    let test = "chart_accepted_by_a_real_api_server_and_installed";
    let Some(helm) = Helm::find(test) else {
        return;
    };
    let Some(plane) = control_plane(test) else {
        return;
    };
    kubectl_ok(&plane, &["apply", "-f", "-"], RESTRICTED_NAMESPACE);
    kubectl_ok(&plane, &["apply", "-f", "-"], SERVICE_MONITOR_CRD);
    kubectl_ok(
        &plane,
        &[
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "crd/servicemonitors.monitoring.coreos.com",
        ],
        "",
    );

    // Every value set, and deploy/ with its overlay, through the API server's admission.
    let mut renders: Vec<(String, Rendered)> = VALUE_SETS
        .iter()
        .map(|set| (format!("chart {}", set.name), helm.render(set)))
        .collect();
    if let Some(kubectl) = kustomize_kubectl(test) {
        renders.push(("deploy/".into(), kustomize(&kubectl, "deploy")));
        renders.push((
            "deploy/overlays/hostpath".into(),
            kustomize(&kubectl, "deploy/overlays/hostpath"),
        ));
    }
    for (name, rendered) in &renders {
        let (ok, out, err) = kubectl_run(
            &plane,
            &["apply", "--dry-run=server", "-f", "-"],
            &rendered.text,
        );
        assert!(ok, "{name}: the API server refused it:\n{out}{err}");
        let accepted = out
            .lines()
            .filter(|l| l.ends_with("(server dry run)"))
            .count();
        assert_eq!(
            accepted,
            rendered.docs.len(),
            "{name}: every document accepted:\n{out}{err}"
        );
        // The namespace warns about the "restricted" standard: only host access may trip it.
        let host_access = rendered.pod()["hostNetwork"] == true
            || rendered.volume("storage")["hostPath"].is_object();
        let warned = err.contains("would violate PodSecurity");
        assert_eq!(
            warned, host_access,
            "{name}: a Pod Security warning exactly when the Pod uses the host:\n{err}"
        );
        eprintln!(
            "kubectl apply --dry-run=server {name:<32} {accepted} objects accepted{}",
            if warned {
                " (warned: host access is not \"restricted\")"
            } else {
                ""
            }
        );
    }

    // A real install with the defaults.
    let out = helm
        .command()
        .args(["install", RELEASE])
        .arg(chart_dir())
        .args(["--namespace", NAMESPACE, "--kubeconfig"])
        .arg(plane.kubeconfig_path())
        .output()
        .expect("helm install runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "helm install failed:\n{text}");
    assert!(text.contains("STATUS: deployed"), "helm install:\n{text}");
    eprintln!("$ helm install {RELEASE} charts/mcs-operator --namespace {NAMESPACE}\n{text}");

    let crds = kubectl_ok(&plane, &["get", "crd", "-o", "name"], "");
    for name in CRD_NAMES {
        assert!(crds.contains(name), "CRD {name} installed: {crds}");
    }
    let mut wait = vec!["wait", "--for=condition=Established", "--timeout=60s"];
    let crd_refs: Vec<String> = CRD_NAMES.iter().map(|n| format!("crd/{n}")).collect();
    wait.extend(crd_refs.iter().map(String::as_str));
    kubectl_ok(&plane, &wait, "");
    let pod = wait_for_pod(&plane, "from the chart", |_| true);
    eprintln!(
        "the ReplicaSet created Pod {pod} (admitted as \"restricted\"; Pending: no scheduler)"
    );
    let listing = kubectl_ok(
        &plane,
        &[
            "get",
            "deployment,replicaset,pod,pvc,service,serviceaccount,role,rolebinding",
            "-n",
            NAMESPACE,
        ],
        "",
    );
    eprintln!("$ kubectl get deployment,replicaset,pod,pvc,service,... -n {NAMESPACE}\n{listing}");

    // Uninstall keeps the CRDs and the storage claim.
    let out = helm
        .command()
        .args([
            "uninstall",
            RELEASE,
            "--namespace",
            NAMESPACE,
            "--kubeconfig",
        ])
        .arg(plane.kubeconfig_path())
        .output()
        .expect("helm uninstall runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "helm uninstall failed:\n{text}");
    eprintln!("$ helm uninstall {RELEASE} --namespace {NAMESPACE}\n{text}");
    let crds = kubectl_ok(&plane, &["get", "crd", "-o", "name"], "");
    for name in CRD_NAMES {
        assert!(
            crds.contains(name),
            "CRD {name} kept by helm uninstall: {crds}"
        );
    }
    kubectl_ok(
        &plane,
        &["get", "pvc", "mcs-operator-storage", "-n", NAMESPACE],
        "",
    );
    let (deployment_left, _, _) =
        kubectl_run(&plane, &["get", "deployment", RELEASE, "-n", NAMESPACE], "");
    assert!(!deployment_left, "helm uninstall removes the Deployment");
}

#[test]
fn deploy_applied_to_a_real_api_server() {
    let test = "deploy_applied_to_a_real_api_server";
    let Some(plane) = control_plane(test) else {
        return;
    };
    let deploy = repo().join("deploy");
    let deploy = deploy.to_str().expect("UTF-8 path");
    let out = kubectl_ok(&plane, &["apply", "-k", deploy], "");
    eprintln!("$ kubectl apply -k deploy/\n{out}");
    let created = out.lines().filter(|l| l.ends_with(" created")).count();
    let kinds = out.lines().count();
    assert_eq!(
        created, kinds,
        "everything created on a fresh server:\n{out}"
    );
    assert!(
        !out.contains("would violate PodSecurity"),
        "deploy/ meets the restricted standard:\n{out}"
    );
    for name in CRD_NAMES {
        assert!(out.contains(&format!(
            "customresourcedefinition.apiextensions.k8s.io/{name} created"
        )));
    }
    let pod = wait_for_pod(&plane, "from deploy/", |_| true);
    eprintln!(
        "the ReplicaSet created Pod {pod} in mcs-system, which enforces \"restricted\" (Pending: no scheduler)"
    );

    // The overlay: its hostPath Pod is admitted only because it relaxes the namespace.
    let overlay = repo().join("deploy/overlays/hostpath");
    let out = kubectl_ok(
        &plane,
        &["apply", "-k", overlay.to_str().expect("UTF-8 path")],
        "",
    );
    eprintln!("$ kubectl apply -k deploy/overlays/hostpath/\n{out}");
    let pod = wait_for_pod(&plane, "with hostPath storage", pod_uses_host_path);
    eprintln!("the hostPath overlay's Pod {pod} was admitted by the relaxed namespace");
}

#[test]
fn chart_readme_describes_every_value() {
    let values: Value = serde_yaml::from_str(
        &std::fs::read_to_string(chart_dir().join("values.yaml")).expect("values.yaml"),
    )
    .expect("values.yaml parses");
    let readme = std::fs::read_to_string(chart_dir().join("README.md")).expect("chart README");
    // The first cell of each row of the values table.
    let keys: Vec<&str> = readme
        .lines()
        .filter(|l| l.starts_with("| `"))
        .map(|l| l.split('|').nth(1).expect("a first cell"))
        .collect();
    let schema: Value = serde_json::from_str(
        &std::fs::read_to_string(chart_dir().join("values.schema.json")).expect("schema"),
    )
    .expect("values.schema.json parses");
    for key in values.as_object().expect("values are a map").keys() {
        assert!(
            keys.iter().any(
                |cell| cell.contains(&format!("`{key}`")) || cell.contains(&format!("`{key}."))
            ),
            "charts/mcs-operator/README.md has no row for the value {key}"
        );
        assert!(
            schema["properties"].get(key).is_some(),
            "values.schema.json does not describe {key}"
        );
    }
}
