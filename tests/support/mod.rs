//! Helpers shared by the end-to-end test files (and the provisioning benchmark): logging, the
//! in-process test API server, and running external programs such as qemu-img.

#![allow(dead_code)] // every test crate includes this module and uses only some helpers

pub mod cluster;

use std::path::Path;
use std::process::Command;

use mcs_testapi::{TestApiConfig, TestApiServer};

/// Sends `tracing` output to the test harness (level from `RUST_LOG`, default `warn`).
pub fn init_logging() {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .try_init();
}

/// Starts a test API server serving the committed `crds/`, and a client for it.
pub async fn start_server() -> (TestApiServer, kube::Client) {
    init_logging();
    let crds = Path::new(env!("CARGO_MANIFEST_DIR")).join("crds");
    let server = TestApiServer::start(TestApiConfig {
        crd_dir: Some(crds),
        ..Default::default()
    })
    .await
    .expect("test API server starts");
    let client = server.client().await.expect("client");
    (server, client)
}

/// Runs a program and returns what it printed; panics with its output when it fails.
pub fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program} runs (apt-get install qemu-utils): {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{program} {args:?}: {text}");
    text
}
