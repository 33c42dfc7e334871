//! Provisions 500 machines for one scheme on the Local backend (real qcow2 overlays and
//! identity disks, 16 MiB image) against the tests' API server (the test server, or a real
//! one: see `tests/support/cluster.rs`) and prints the time it took and
//! the operator's API requests per machine. Prints figures; asserts nothing about time.
//!
//! ```sh
//! cargo bench --bench provision                      # 500 machines
//! MCS_BENCH_MACHINES=100 cargo bench --bench provision
//! ```

#[path = "../tests/schemes_env/mod.rs"]
mod schemes_env;
#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use mcs_operator::api::ProvScheme;
use mcs_operator::controller::OperatorConfig;
use schemes_env::Env;
use serde_json::json;

fn main() -> anyhow::Result<()> {
    // `cargo bench` passes `--bench`; `cargo test --all-targets` does not: then only say so.
    if !std::env::args().any(|a| a == "--bench") {
        println!("provision: skipped (a benchmark; run it with `cargo bench --bench provision`)");
        return Ok(());
    }
    support::init_logging();
    let machines: i32 = std::env::var("MCS_BENCH_MACHINES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(500);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(bench(machines))
}

async fn bench(machines: i32) -> anyhow::Result<()> {
    let config = OperatorConfig::default();
    println!(
        "provision: {machines} machines, one scheme, Local backend; operator settings: concurrency {}, max concurrent tasks {}, progress interval {:?}",
        config.concurrency, config.max_concurrent_tasks, config.progress_interval
    );
    let env = Env::start_with("bench", config).await;
    env.prepared("prepared-a", "win11", "Success").await;
    env.scheme("bench", json!({"initialBatchSizeHint": 100}))
        .await;
    wait(&env, Duration::from_secs(60), |s| {
        s.status
            .as_ref()
            .and_then(|st| st.provisioning_scheme_version)
            == Some(1)
    })
    .await?;
    let before = env
        .cluster
        .test_server()
        .map_or(0, |s| s.faults().requests().len());
    let started = Instant::now();
    env.patch_spec("bench", json!({"machineCount": machines}))
        .await;
    let mut last_report = Instant::now();
    loop {
        let scheme = env.api::<ProvScheme>().get("bench").await?;
        let ready = scheme.status.as_ref().map_or(0, |s| s.ready_machines);
        if ready >= machines {
            break;
        }
        if last_report.elapsed() > Duration::from_secs(10) {
            println!("  {:>6.1}s: {ready} ready", started.elapsed().as_secs_f64());
            last_report = Instant::now();
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(1800),
            "not provisioned within 30 minutes ({ready} ready)"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let elapsed = started.elapsed();
    println!(
        "provision: {machines} machines ready in {:.1}s ({:.1} machines/s)",
        elapsed.as_secs_f64(),
        f64::from(machines) / elapsed.as_secs_f64()
    );
    let Some(server) = env.cluster.test_server() else {
        println!("provision: API requests are counted only on the test API server");
        return Ok(());
    };
    let requests = server.faults().requests();
    let ours = &requests[before.min(requests.len())..];
    // The benchmark's own polling (GET provschemes/bench every 200 ms) is not the operator's.
    let polling = ours
        .iter()
        .filter(|r| r.verb == "get" && r.resource == "provschemes")
        .count();
    let mut by_kind: BTreeMap<(String, String), usize> = BTreeMap::new();
    for r in ours {
        *by_kind
            .entry((r.verb.clone(), r.resource.clone()))
            .or_default() += 1;
    }
    let operator = ours.len() - polling;
    let n = f64::from(machines);
    println!(
        "provision: {operator} operator API requests = {:.2} per machine (watch streams count once; {polling} benchmark polls excluded)",
        operator as f64 / n
    );
    for ((verb, resource), count) in by_kind {
        let count = if verb == "get" && resource == "provschemes" {
            count - polling
        } else {
            count
        };
        if count > 0 {
            println!(
                "  {verb:<8} {resource:<22} {count:>6}  ({:.2}/machine)",
                count as f64 / n
            );
        }
    }
    Ok(())
}

async fn wait(
    env: &Env,
    timeout: Duration,
    check: impl Fn(&ProvScheme) -> bool,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if check(&env.api::<ProvScheme>().get("bench").await?) {
            return Ok(());
        }
        anyhow::ensure!(Instant::now() < deadline, "scheme not ready in time");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
