//! Benchmark of the `Local` backend (not a timed test): prints figures, asserts nothing about
//! speed.
//!
//! 1. Consolidation throughput of a master whose snapshot holds `MCS_BENCH_IMAGE_MIB` (default
//!    1024) MiB of random data, against `cp` + fsync of the same bytes on the same disk.
//! 2. Creation rate of `MCS_BENCH_CLONES` (default 500) linked clones of the prepared image.
//!
//! `MCS_BENCH_DIR` picks the directory (default: the system temp directory).
//! Run with `cargo bench -p mcs-backend`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use mcs_backend::{
    Backend, LocalBackend, LocalConfig, MachineRequest, MasterRef, Nic, Operation, Output,
    PrepareRequest, StorageRootConfig, run, wait,
};

/// What one benchmark run measured.
#[derive(Debug)]
pub struct Figures {
    /// Image size in MiB.
    pub image_mib: u64,
    /// Consolidation time.
    pub consolidation: Duration,
    /// `cp` time of the same bytes (into the page cache).
    pub copy_cached: Duration,
    /// `cp` + fsync time of the same bytes.
    pub copy: Duration,
    /// Number of linked clones made.
    pub clones: usize,
    /// Time to make them.
    pub clone_time: Duration,
}

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn sh(program: &str, args: &[&str]) -> Result<(), String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("{program}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{program} {args:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn s(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

fn mib_per_s(mib: u64, d: Duration) -> f64 {
    mib as f64 / d.as_secs_f64().max(1e-9)
}

/// Runs the benchmark in `dir` (which must exist) and returns the figures.
pub async fn bench(dir: &Path, image_mib: u64, clones: usize) -> Result<Figures, String> {
    let storage = dir.join("storage");
    std::fs::create_dir_all(&storage).map_err(|e| e.to_string())?;
    let raw = dir.join("data.raw");
    let master = storage.join("bench.qcow2");
    sh(
        "dd",
        &[
            "if=/dev/urandom",
            &format!("of={}", s(&raw)),
            "bs=1M",
            &format!("count={image_mib}"),
            "status=none",
        ],
    )?;
    sh(
        "qemu-img",
        &["convert", "-f", "raw", "-O", "qcow2", &s(&raw), &s(&master)],
    )?;
    sh("qemu-img", &["snapshot", "-c", "base", &s(&master)])?;

    // Start both timed sections with no dirty pages of the set-up pending.
    sh("sync", &[])?;
    let copy_target = dir.join("data.copy");
    let t = Instant::now();
    sh("cp", &[&s(&raw), &s(&copy_target)])?;
    let copy_cached = t.elapsed();
    sh("sync", &[&s(&copy_target)])?;
    let copy = t.elapsed();
    let _ = std::fs::remove_file(&copy_target);
    let _ = std::fs::remove_file(&raw);

    let backend = LocalBackend::new(LocalConfig {
        storages: vec![StorageRootConfig {
            name: "local".into(),
            path: storage.clone(),
        }],
        networks: vec!["net0".into()],
        ..LocalConfig::default()
    })
    .map_err(|e| e.to_string())?;
    sh("sync", &[])?;
    let t = Instant::now();
    let prepared = run(
        &backend,
        Operation::Prepare(PrepareRequest {
            image_id: "bench".into(),
            master: MasterRef {
                hosting_unit: "hu".into(),
                storages: vec!["local".into()],
                path: r"XDHyp:\HostingUnits\hu\bench.vm\base.snapshot".into(),
            },
            target_storages: vec!["local".into()],
            owner: None,
        }),
    )
    .await
    .map_err(|e| e.to_string())?;
    let consolidation = t.elapsed();
    let Output::Prepared(prepared) = prepared else {
        return Err("prepare returned no image".into());
    };
    let image: PathBuf = prepared
        .copies
        .first()
        .map(|c| c.path.clone())
        .ok_or("no copy")?;

    let t = Instant::now();
    let mut ids = Vec::with_capacity(clones);
    for i in 0..clones {
        let op = Operation::CreateMachine(MachineRequest {
            storage: "local".into(),
            scheme: "bench".into(),
            machine_name: format!("VDI-{i:04}"),
            index: i as u32,
            domain: "bench.local".into(),
            cpu: 2,
            memory_mb: 2048,
            nics: vec![Nic {
                network: "net0".into(),
                mac: None,
            }],
            write_back_cache: None,
            clean_on_boot: true,
            prepared_image: image.clone(),
            owner: None,
        });
        ids.push(backend.start(op).await.map_err(|e| e.to_string())?);
    }
    for id in ids {
        let st = wait(&backend, id, Duration::from_millis(10))
            .await
            .map_err(|e| e.to_string())?;
        if let Some(Err(e)) = st.result {
            return Err(e.to_string());
        }
    }
    let clone_time = t.elapsed();
    Ok(Figures {
        image_mib,
        consolidation,
        copy_cached,
        copy,
        clones,
        clone_time,
    })
}

/// Prints the figures.
pub fn report(f: &Figures) {
    let cons = mib_per_s(f.image_mib, f.consolidation);
    let cp = mib_per_s(f.image_mib, f.copy);
    println!(
        "consolidation: {} MiB in {:.2} s = {:.1} MiB/s (qemu-img convert -t none + fsync)",
        f.image_mib,
        f.consolidation.as_secs_f64(),
        cons
    );
    println!(
        "plain cp:      {} MiB in {:.2} s = {:.1} MiB/s (cp + sync of the same bytes, same disk)",
        f.image_mib,
        f.copy.as_secs_f64(),
        cp
    );
    println!(
        "plain cp:      {} MiB in {:.2} s = {:.1} MiB/s (cp alone, into the page cache)",
        f.image_mib,
        f.copy_cached.as_secs_f64(),
        mib_per_s(f.image_mib, f.copy_cached)
    );
    println!(
        "ratio consolidation/cp throughput: {:.2} (against cp + sync; {:.2} against cp alone)",
        cons / cp.max(1e-9),
        cons / mib_per_s(f.image_mib, f.copy_cached).max(1e-9)
    );
    println!(
        "machine creation: {} linked clones in {:.2} s = {:.1} machines/s (overlay + identity disk + definition)",
        f.clones,
        f.clone_time.as_secs_f64(),
        f.clones as f64 / f.clone_time.as_secs_f64().max(1e-9)
    );
}

#[cfg_attr(test, allow(dead_code))]
fn main() -> Result<(), String> {
    if std::env::args().any(|a| a == "--list") {
        return Ok(());
    }
    let image_mib = env_or("MCS_BENCH_IMAGE_MIB", 1024);
    let clones = env_or("MCS_BENCH_CLONES", 500) as usize;
    let parent = std::env::var_os("MCS_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let dir = tempfile::Builder::new()
        .prefix("mcs-bench-")
        .tempdir_in(parent)
        .map_err(|e| e.to_string())?;
    println!(
        "mcs-backend Local benchmark: image {image_mib} MiB, {clones} clones, in {}",
        dir.path().display()
    );
    let rt = tokio::runtime::Runtime::new().map_err(|e| e.to_string())?;
    let figures = rt.block_on(bench(dir.path(), image_mib, clones))?;
    report(&figures);
    Ok(())
}
