//! The `mcs-operator` command line.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Machine Creation Services image management on Kubernetes.
#[derive(Parser, Debug)]
#[command(name = "mcs-operator", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Print every CustomResourceDefinition as YAML (what `crds/` holds).
    Crd {
        /// Write one file per CRD into this directory instead of printing.
        #[arg(long)]
        out_dir: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Crd { out_dir: None } => {
            mcs_operator::crd::render_all().map(|yaml| print!("{yaml}"))
        }
        Command::Crd { out_dir: Some(dir) } => mcs_operator::crd::write_dir(&dir),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("mcs-operator: {error}");
            ExitCode::FAILURE
        }
    }
}
