//! Runs the benchmark's code on a tiny image and a few clones, so that it cannot rot.

#[path = "../benches/local.rs"]
mod bench;

#[tokio::test]
async fn bench_runs_on_a_tiny_image() {
    let dir = tempfile::tempdir().expect("tempdir");
    let figures = bench::bench(dir.path(), 8, 5).await.expect("bench runs");
    assert_eq!((figures.image_mib, figures.clones), (8, 5));
    assert!(figures.consolidation > std::time::Duration::ZERO);
    bench::report(&figures);
    let machines = std::fs::read_dir(dir.path().join("storage/machines/bench"))
        .expect("machines")
        .count();
    assert_eq!(machines, 5);
}
