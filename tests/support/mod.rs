//! Helpers shared by the end-to-end test files (and the provisioning benchmark): logging, the
//! API server a test talks to (`cluster`), and running external programs such as qemu-img.

#![allow(dead_code)] // every test crate includes this module and uses only some helpers

pub mod badinput;
pub mod campaign;
pub mod cluster;
pub mod operator;
pub mod proxy;
pub mod secrets;
pub mod tools;

use std::process::Command;

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
