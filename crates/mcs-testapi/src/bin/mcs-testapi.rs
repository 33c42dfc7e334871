//! `mcs-testapi`: run the test API server until interrupted.

use clap::Parser;
use mcs_testapi::{TestApiConfig, TestApiServer};
use std::path::PathBuf;

/// A small Kubernetes API server for tests (never for production).
#[derive(Parser)]
#[command(version)]
struct Args {
    /// Directory of CRD YAML files to serve.
    #[arg(long)]
    crds: Option<PathBuf>,
    /// Where to write the kubeconfig.
    #[arg(long)]
    kubeconfig_out: PathBuf,
    /// Serve HTTPS with a generated self-signed CA.
    #[arg(long)]
    tls: bool,
    /// Port on 127.0.0.1 (default: ephemeral).
    #[arg(long, default_value_t = 0)]
    port: u16,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let server = TestApiServer::start(TestApiConfig {
        crd_dir: args.crds,
        tls: args.tls,
        port: args.port,
        ..Default::default()
    })
    .await?;
    std::fs::write(&args.kubeconfig_out, server.kubeconfig_yaml())?;
    println!("{}", server.url());
    tokio::signal::ctrl_c().await?;
    Ok(())
}
