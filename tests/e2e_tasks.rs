//! `mcs-operator tasks`, `wait` and `task cancel|retry` through the real binary, as a user runs
//! them (`kubectl mcs ...`), against the running operator: a preparation that is canceled,
//! retried and followed to its end, and a scheme scale-up followed machine by machine.
//! Runs on the test API server and on a real one (see `support::cluster`).

mod support;

use std::path::Path;
use std::process::{Command, Output};

use kube::api::{Patch, PatchParams};
use mcs_operator::api::{ImageVersionSpec, ProvScheme, TaskState};
use serde_json::{Value, json};
use support::operator::{Harness, PREPARED, SCHEME, task_state};

/// Runs `mcs-operator ARGS` with the harness's kubeconfig in its namespace; stdout is a pipe,
/// so followers print plain lines.
fn cli(h: &Harness, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mcs-operator"))
        .args(args)
        .args(["--namespace", &h.cluster.namespace])
        .env("KUBECONFIG", &h.cluster.kubeconfig)
        .output()
        .expect("mcs-operator runs")
}

/// Runs `kubectl mcs ARGS` with the binary linked as the plugin `kubectl-mcs`, as users run
/// it; without a kubectl (test server only, nothing on `PATH`) the binary itself.
fn kubectl_mcs(h: &Harness, args: &[&str]) -> Output {
    let Some(kubectl) = support::cluster::kubectl_path() else {
        eprintln!("no kubectl found: `kubectl mcs` is run as the binary itself");
        return cli(h, args);
    };
    let plugins = h.dir.path().join("plugins");
    if !plugins.exists() {
        std::fs::create_dir_all(&plugins).expect("plugins");
        std::os::unix::fs::symlink(
            env!("CARGO_BIN_EXE_mcs-operator"),
            plugins.join("kubectl-mcs"),
        )
        .expect("link");
    }
    let path = format!(
        "{}:{}",
        plugins.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    Command::new(kubectl)
        .arg("mcs")
        .args(args)
        .args(["--namespace", &h.cluster.namespace])
        .env("KUBECONFIG", &h.cluster.kubeconfig)
        .env("PATH", path)
        .output()
        .expect("kubectl runs")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn last_line(out: &Output) -> String {
    stdout(out).lines().last().unwrap_or_default().to_owned()
}

fn describe(out: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}--- stderr\n{}",
        out.status.code(),
        stdout(out),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Makes the harness's `qemu-img` wrapper copy at full speed from now on (the operator keeps
/// running the same file).
fn unthrottle(h: &Harness) {
    let bin = h.bin.as_ref().expect("throttled");
    let real = support::run("sh", &["-c", "command -v qemu-img"]);
    let real = real.trim();
    let wrapper = bin.join("qemu-img");
    assert!(Path::new(real) != wrapper, "the real qemu-img is found");
    std::fs::write(&wrapper, format!("#!/bin/sh\nexec {real} \"$@\"\n")).expect("wrapper");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_preparation_is_listed_canceled_retried_and_followed_to_its_end() {
    support::init_logging();
    let mut h = Harness::new("tasks-preparation", "512M", 96).await;
    h.throttle_qemu_img("8M");
    h.timeout = std::time::Duration::from_secs(120);
    h.start_operator();
    let rest = h.apply_up_to_the_master().await;
    let prepared: Vec<Value> = rest
        .into_iter()
        .filter(|o| o["kind"] == "ImageVersionSpec")
        .collect();
    h.apply(&prepared).await;
    h.wait::<ImageVersionSpec>(PREPARED, "consolidating", |s| {
        task_state(s.status.as_ref().and_then(|s| s.task.as_ref()))
            == Some(TaskState::ConsolidatingMasterImage)
    })
    .await;

    // Get-ProvTask: the table and the JSON list.
    let table = cli(&h, &["tasks"]);
    assert!(table.status.success(), "{}", describe(&table));
    let text = stdout(&table);
    let row = text
        .lines()
        .find(|l| l.starts_with(&format!("imageversionspec/{PREPARED} ")))
        .unwrap_or_else(|| panic!("a row for the preparation:\n{text}"));
    for column in [
        "NewImageVersionSpec",
        "ConsolidatingMasterImage",
        "%",
        "ago",
    ] {
        assert!(row.contains(column), "{column} in {row}");
    }
    assert!(text.starts_with("TASK "), "{text}");
    let json = cli(&h, &["tasks", "--active", "-o", "json"]);
    let list: Value = serde_json::from_slice(&json.stdout).expect("a JSON task list");
    let items = list["items"].as_array().expect("items");
    assert_eq!(items.len(), 1, "only the preparation is active: {list}");
    assert_eq!(items[0]["kind"], "ImageVersionSpec");
    assert_eq!(items[0]["name"], PREPARED);
    assert_eq!(items[0]["taskState"], "ConsolidatingMasterImage");
    assert_eq!(items[0]["active"], true);

    // Stop-ProvTask: exit 1, the SDK's state and message on the last line.
    let cancel = cli(
        &h,
        &[
            "task",
            "cancel",
            &format!("imgspec/{PREPARED}"),
            "--timeout",
            "90s",
        ],
    );
    assert_eq!(cancel.status.code(), Some(1), "{}", describe(&cancel));
    let out = stdout(&cancel);
    assert!(
        out.starts_with(&format!(
            "imageversionspec/{PREPARED}: cancel requested (mcs.imaging.dev/cancel)"
        )),
        "{}",
        describe(&cancel)
    );
    assert!(
        last_line(&cancel).starts_with(&format!(
            "imageversionspec/{PREPARED}: Canceled (NewImageVersionSpec): "
        )),
        "{}",
        describe(&cancel)
    );
    assert!(
        h.partial_files().is_empty(),
        "a canceled copy leaves no partial file"
    );
    let failed = cli(&h, &["tasks", "--failed", "-o", "json"]);
    let list: Value = serde_json::from_slice(&failed.stdout).expect("JSON");
    assert_eq!(list["items"], json!([]), "canceled is not failed");
    let again = cli(&h, &["task", "cancel", &format!("imgspec/{PREPARED}")]);
    assert_eq!(again.status.code(), Some(2), "{}", describe(&again));
    assert!(
        String::from_utf8_lossy(&again.stderr)
            .contains("has no running task to cancel (its NewImageVersionSpec task is Canceled)"),
        "{}",
        describe(&again)
    );

    // Retry at full speed: followed with plain lines to Finished, exit 0.
    unthrottle(&h);
    let retry = cli(
        &h,
        &[
            "task",
            "retry",
            &format!("imageversionspec/{PREPARED}"),
            "--timeout",
            "120s",
        ],
    );
    assert_eq!(retry.status.code(), Some(0), "{}", describe(&retry));
    assert_eq!(
        last_line(&retry),
        format!("imageversionspec/{PREPARED}: Finished (NewImageVersionSpec)"),
        "{}",
        describe(&retry)
    );
    let wait = cli(&h, &["wait", &format!("imgspec/{PREPARED}")]);
    assert_eq!(wait.status.code(), Some(0), "{}", describe(&wait));
    assert_eq!(
        stdout(&wait).lines().count(),
        1,
        "an ended task: just its line\n{}",
        describe(&wait)
    );
    let missing = cli(&h, &["wait", "provvm/nope"]);
    assert_eq!(missing.status.code(), Some(2), "{}", describe(&missing));
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains(&format!(
            "provvm/nope was not found in namespace '{}'",
            h.cluster.namespace
        )),
        "{}",
        describe(&missing)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scheme_scale_up_is_followed_machine_by_machine() {
    support::init_logging();
    let mut h = Harness::new("tasks-scheme", "64M", 8).await;
    h.timeout = std::time::Duration::from_secs(120);
    h.start_operator();
    h.apply(&h.examples()).await;

    let wait = cli(&h, &["wait", &format!("ps/{SCHEME}"), "--timeout", "120s"]);
    assert_eq!(wait.status.code(), Some(0), "{}", describe(&wait));
    assert_eq!(
        last_line(&wait),
        format!("provscheme/{SCHEME}: Finished (3 machines ready, version 1)"),
        "{}",
        describe(&wait)
    );

    // Scale up and follow: each machine's build is a line until the scheme is done.
    h.api::<ProvScheme>()
        .patch(
            SCHEME,
            &PatchParams::default(),
            &Patch::Merge(json!({ "spec": { "machineCount": 5 } })),
        )
        .await
        .expect("scale");
    let wait = cli(
        &h,
        &["wait", &format!("provscheme/{SCHEME}"), "--timeout", "120s"],
    );
    assert_eq!(wait.status.code(), Some(0), "{}", describe(&wait));
    assert_eq!(
        last_line(&wait),
        format!("provscheme/{SCHEME}: Finished (5 machines ready, version 1)"),
        "{}",
        describe(&wait)
    );
    let follow = cli(&h, &["tasks", "-w", "--timeout", "60s"]);
    assert_eq!(follow.status.code(), Some(0), "{}", describe(&follow));
    assert!(
        last_line(&follow).starts_with("no task is running: "),
        "{}",
        describe(&follow)
    );
    let table = stdout(&cli(&h, &["tasks"]));
    for machine in ["vdi-001", "vdi-002", "vdi-003", "vdi-004", "vdi-005"] {
        assert!(
            table.contains(&format!("provvm/{machine} ")),
            "{machine} in\n{table}"
        );
    }

    // A scheme whose security group is not in the hosting unit fails with the SDK's state.
    let mut bad: Value = h
        .examples()
        .into_iter()
        .find(|o| o["kind"] == "ProvScheme")
        .expect("the example scheme");
    bad["metadata"]["name"] = json!("guarded");
    bad["spec"]["machineCount"] = json!(1);
    bad["spec"]["securityGroups"] = json!(["XDHyp:\\HostingUnits\\lab\\open.securitygroup"]);
    h.apply(&[bad]).await;
    let wait = kubectl_mcs(&h, &["wait", "ps/guarded", "--timeout", "60s"]);
    assert_eq!(wait.status.code(), Some(1), "{}", describe(&wait));
    let line = last_line(&wait);
    assert!(
        line.starts_with("provscheme/guarded: SecurityGroupPathResolutionFailed (NewProvScheme): spec.securityGroups[0]: security group 'open' is not a security group of hosting unit 'lab' (it has: vdi)"),
        "{}",
        describe(&wait)
    );
    let failed = kubectl_mcs(&h, &["tasks", "--failed", "-o", "yaml"]);
    let text = stdout(&failed);
    assert!(
        text.contains("taskState: SecurityGroupPathResolutionFailed"),
        "{text}"
    );
    assert!(text.contains("name: guarded"), "{text}");
}
