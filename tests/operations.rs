//! Running the operator as a platform team does: probes, metrics, the CRD startup check, leader
//! election with two processes, and a graceful stop in the middle of a task. Everything goes
//! through the real `mcs-operator run` binary (see `support::operator`), on the test API server
//! and on a real one (`support::cluster`).

mod support;

use std::collections::BTreeMap;
use std::io::{Read as _, Write as _};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, Patch, PatchParams};
use mcs_operator::api::{ImageVersionSpec, TaskState};
use serde_json::json;
use support::cluster::Cluster;
use support::operator::{Harness, PREPARED, TIMEOUT, task_state};

/// `GET path` on `address` (HTTP/1.1, connection closed after the answer): status and body.
fn http_get(address: &str, path: &str) -> (u16, String) {
    let mut stream = std::net::TcpStream::connect(address)
        .unwrap_or_else(|e| panic!("connect to {address}: {e}"));
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n"
    )
    .expect("request");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).expect("answer");
    let code = answer
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("an HTTP status line: {answer}"));
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
        .unwrap_or_default();
    (code, body)
}

/// Waits until log `n` of the harness names the address of `what` (`metrics` or `probes`).
fn served_address(h: &Harness, n: u32, what: &str) -> String {
    let pattern = regex::Regex::new(&format!(r"serving {what}\S*\s+address=(\S+)")).expect("re");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let log = std::fs::read_to_string(h.operator_log(n)).unwrap_or_default();
        if let Some(found) = pattern.captures(&log) {
            return found[1].to_string();
        }
        assert!(
            Instant::now() < deadline,
            "operator {n} never logged its {what} address:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits until `GET path` answers `code` with a body containing `needle`; returns the body.
async fn wait_http(address: &str, path: &str, code: u16, needle: &str) -> String {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let (got, body) = http_get(address, path);
        if got == code && body.contains(needle) {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "GET {path} never answered {code} with {needle:?}; last: {got} {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The value of the sample `name{labels}` (labels as written, in any order) in a scrape.
fn sample(scrape: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    scrape.lines().find_map(|line| {
        let (series, value) = line.rsplit_once(' ')?;
        let (metric, rest) = series.split_once('{').unwrap_or((series, "}"));
        if metric != name {
            return None;
        }
        let all = labels
            .iter()
            .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")));
        all.then(|| value.parse().ok()).flatten()
    })
}

/// `/healthz`, `/readyz` (with its checks) and `/metrics` while the examples flow runs: the
/// metrics count the reconciles, the finished tasks, the backend work and the machines.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_and_metrics_follow_the_examples_flow() {
    let mut h = Harness::new("metrics", "64M", 8).await;
    h.start_operator();
    let probes = served_address(&h, 1, "probes");
    let metrics = served_address(&h, 1, "metrics");
    assert_eq!(http_get(&probes, "/healthz"), (200, "ok\n".into()));
    let ready = wait_http(&probes, "/readyz", 200, "readyz check passed").await;
    assert!(ready.contains("[+]crds ok"), "{ready}");
    assert!(ready.contains("[+]role leader"), "{ready}");
    assert!(ready.contains("[+]caches synced"), "{ready}");

    h.apply(&h.examples()).await;
    h.wait_examples_done().await;

    let (code, scrape) = http_get(&metrics, "/metrics");
    assert_eq!(code, 200);
    let has = |name: &str, labels: &[(&str, &str)], at_least: f64| {
        let value = sample(&scrape, name, labels);
        assert!(
            value.is_some_and(|v| v >= at_least),
            "{name}{labels:?} >= {at_least}, got {value:?} in:\n{scrape}"
        );
    };
    for controller in ["provscheme", "provvm", "imageversionspec", "hostingunit"] {
        has("mcs_reconciles_total", &[("controller", controller)], 1.0);
        has(
            "mcs_reconcile_duration_seconds_count",
            &[("controller", controller)],
            1.0,
        );
    }
    has(
        "mcs_tasks_total",
        &[("kind", "ImageVersionSpec"), ("state", "Finished")],
        1.0,
    );
    has(
        "mcs_task_duration_seconds_count",
        &[("kind", "ProvScheme"), ("state", "Finished")],
        1.0,
    );
    has(
        "mcs_backend_operation_duration_seconds_count",
        &[("backend", "Local"), ("result", "ok")],
        1.0,
    );
    assert_eq!(
        sample(&scrape, "mcs_machines", &[("update_status", "UpToDate")]),
        Some(3.0),
        "{scrape}"
    );
    assert_eq!(sample(&scrape, "mcs_leader", &[]), Some(1.0), "{scrape}");
    assert!(
        scrape.ends_with("# EOF\n"),
        "OpenMetrics text ends with # EOF"
    );
}

/// The CRDs installed are not this binary's (another schema hash): the operator says so in
/// one line and waits with `/readyz` failing; once the right CRD is back it starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crds_of_another_version_keep_the_operator_waiting() {
    let mut cluster = Cluster::start_private("crdcheck").await;
    if cluster.control_plane().is_none() && cluster.test_server().is_none() {
        eprintln!(
            "crds_of_another_version_keep_the_operator_waiting: skipped on a shared cluster (it edits a CRD)"
        );
        return;
    }
    let crds: Api<CustomResourceDefinition> = Api::all(cluster.client.clone());
    let name = "provvms.mcs.imaging.dev";
    let hash = mcs_operator::api::ANNOTATION_SCHEMA_HASH;
    let set_hash = |value: serde_json::Value| {
        let crds = crds.clone();
        async move {
            crds.patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"annotations": {
                    hash: value,
                    mcs_operator::api::ANNOTATION_OPERATOR_VERSION: "0.0.1"
                }}})),
            )
            .await
            .expect("CRD patched");
        }
    };
    let right = crds
        .get(name)
        .await
        .expect("CRD")
        .metadata
        .annotations
        .expect("annotations")[hash]
        .clone();
    set_hash(json!("0ld")).await;

    let mut h = Harness::with_cluster(cluster, "crdcheck", "16M", 0).await;
    h.start_operator();
    let probes = served_address(&h, 1, "probes");
    let waiting = wait_http(&probes, "/readyz", 503, "has another schema").await;
    assert!(
        waiting.contains("[-]crds the CRDs of mcs-operator")
            && waiting.contains(
                "provvms.mcs.imaging.dev has another schema (installed from mcs-operator 0.0.1"
            ),
        "{waiting}"
    );
    assert_eq!(http_get(&probes, "/healthz").0, 200, "alive while waiting");
    tokio::time::sleep(Duration::from_secs(6)).await;
    let log = std::fs::read_to_string(h.operator_log(1)).expect("log");
    let said = log.matches("has another schema").count();
    assert_eq!(said, 1, "one clear line, not a flood:\n{log}");
    assert!(
        !log.contains("watch"),
        "no watch errors while waiting:\n{log}"
    );

    set_hash(json!(right)).await;
    wait_http(&probes, "/readyz", 200, "[+]caches synced").await;
    let log = std::fs::read_to_string(h.operator_log(1)).expect("log");
    assert!(log.contains("the CRDs are ready"), "{log}");
}

/// Where the tests' leases live: not in the test's namespace, whose deletion at the end would
/// delete the lease and so stop the leader before it has removed its finalizers.
const LEASE_NAMESPACE: &str = "default";

/// `run` arguments electing with lease `lease` in [`LEASE_NAMESPACE`].
fn leader_args(lease: &str) -> Vec<String> {
    [
        "--leader-elect",
        "--leader-election-namespace",
        LEASE_NAMESPACE,
        "--leader-election-lease",
        lease,
    ]
    .map(String::from)
    .to_vec()
}

/// The holder of lease `lease` in [`LEASE_NAMESPACE`].
async fn lease_holder(h: &Harness, lease: &str) -> Option<String> {
    let leases: Api<Lease> = Api::namespaced(h.cluster.client.clone(), LEASE_NAMESPACE);
    leases
        .get_opt(lease)
        .await
        .ok()
        .flatten()
        .and_then(|l| l.spec)
        .and_then(|s| s.holder_identity)
        .filter(|holder| !holder.is_empty())
}

/// Waits until `check` accepts the holder of `lease`.
async fn wait_holder(
    h: &Harness,
    lease: &str,
    what: &str,
    check: impl Fn(Option<&str>) -> bool,
) -> Option<String> {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let holder = lease_holder(h, lease).await;
        if check(holder.as_deref()) {
            return holder;
        }
        assert!(
            Instant::now() < deadline,
            "lease {lease}: {what}; holder {holder:?}\n{}",
            h.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn kill_group(child: &mut Child, signal: &str) {
    let _ = Command::new("kill")
        .args([signal, "--", &format!("-{}", child.id())])
        .status();
}

/// Two operator processes with `--leader-elect`: one leads (and reconciles), the other stands
/// by and is ready; when the leader is killed with SIGKILL the standby takes over within the
/// lease duration and finishes the flow. Prints the takeover time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_takes_over_when_the_leader_is_killed() {
    let mut h = Harness::new("leader", "64M", 8).await;
    let lease = h.cluster.namespace.clone();
    let lease = lease.as_str();
    h.operator_args = leader_args(lease);
    let mut processes: BTreeMap<String, (Child, u32)> = BTreeMap::new();
    for name in ["operator-a", "operator-b"] {
        h.operator_env = vec![("POD_NAME".into(), name.into())];
        let child = h.spawn_operator();
        processes.insert(name.to_string(), (child, h.starts));
    }
    let leader = wait_holder(&h, lease, "someone leads", |holder| holder.is_some())
        .await
        .expect("a holder");
    let standby = if leader == "operator-a" {
        "operator-b"
    } else {
        "operator-a"
    };
    let standby_log = processes[standby].1;
    let leader_log = processes[leader.as_str()].1;
    let probes = served_address(&h, standby_log, "probes");
    let report = wait_http(&probes, "/readyz", 200, "[+]role standby").await;
    assert!(report.contains("readyz check passed"), "{report}");
    let metrics = served_address(&h, standby_log, "metrics");
    assert_eq!(
        sample(&http_get(&metrics, "/metrics").1, "mcs_leader", &[]),
        Some(0.0)
    );

    // The leader works: the images flow up to the master image is reconciled.
    let rest = h.apply_up_to_the_master().await;
    let log = std::fs::read_to_string(h.operator_log(leader_log)).expect("leader log");
    assert!(log.contains("leading"), "{log}");
    let log = std::fs::read_to_string(h.operator_log(standby_log)).expect("standby log");
    assert!(
        !log.contains("task job started") && !log.contains("leading"),
        "the standby does no work:\n{log}"
    );

    let killed = Instant::now();
    kill_group(
        &mut processes.get_mut(leader.as_str()).expect("leader").0,
        "-KILL",
    );
    let _ = processes.get_mut(leader.as_str()).expect("leader").0.wait();
    wait_holder(&h, lease, "the standby takes over", |holder| {
        holder == Some(standby)
    })
    .await;
    let takeover = killed.elapsed();
    println!(
        "leader election: {standby} took over {:.1} s after {leader} was killed with SIGKILL (lease duration 10 s)",
        takeover.as_secs_f64()
    );
    assert!(
        takeover < Duration::from_secs(15),
        "takeover took {takeover:?}"
    );
    let metrics = served_address(&h, standby_log, "metrics");
    let deadline = Instant::now() + TIMEOUT;
    while sample(&http_get(&metrics, "/metrics").1, "mcs_leader", &[]) != Some(1.0) {
        assert!(
            Instant::now() < deadline,
            "the new leader reports mcs_leader 1"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The new leader finishes the flow, and stays to clean up with the harness.
    h.apply(&rest).await;
    h.wait_examples_done().await;
    h.operator = processes.remove(standby).map(|(child, _)| child);
}

/// SIGTERM while a prepared image is being copied: the operator stops the task's `qemu-img`,
/// removes the partial files, releases the lease and exits 0; the next operator resumes the
/// task and finishes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_task_leaves_no_partial_file_and_releases_the_lease() {
    let mut h = Harness::new("sigterm", "256M", 96).await;
    h.throttle_qemu_img("8M");
    let lease = h.cluster.namespace.clone();
    let lease = lease.as_str();
    h.operator_args = leader_args(lease);
    h.operator_env = vec![("POD_NAME".into(), "operator-1".into())];
    h.start_operator();
    let rest = h.apply_up_to_the_master().await;
    h.apply(&rest).await;
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let copying = !h.partial_files().is_empty();
        if copying {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no copy started\n{}",
            h.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let mut operator = h.operator.take().expect("operator");
    let stopping = Instant::now();
    let _ = Command::new("kill")
        .args(["-TERM", &operator.id().to_string()])
        .status();
    let status = operator.wait().expect("operator exits");
    println!(
        "SIGTERM mid-copy: the operator exited in {:.2} s",
        stopping.elapsed().as_secs_f64()
    );
    assert!(status.success(), "exit status {status:?}\n{}", h.log_tail());
    assert!(
        h.partial_files().is_empty(),
        "partial files left: {:?}",
        h.partial_files()
    );
    assert_eq!(
        lease_holder(&h, lease).await,
        None,
        "the lease was released"
    );
    let log = std::fs::read_to_string(h.operator_log(1)).expect("log");
    assert!(log.contains("task jobs stopped"), "{log}");
    let spec: Api<ImageVersionSpec> = h.api();
    let task = spec
        .get(PREPARED)
        .await
        .expect("spec")
        .status
        .and_then(|s| s.task);
    assert!(
        task.as_ref().is_some_and(|t| t.task_state.is_running()),
        "the task stays running for the next leader: {task:?}"
    );

    h.bin = None;
    h.operator_env = vec![("POD_NAME".into(), "operator-2".into())];
    h.start_operator();
    h.wait::<ImageVersionSpec>(PREPARED, "the next leader finishes the task", |s| {
        task_state(s.status.as_ref().and_then(|s| s.task.as_ref())) == Some(TaskState::Finished)
    })
    .await;
    h.wait_examples_done().await;
}
