//! lb-agent: the node agent. `run` keeps the kernel maps equal to the cluster (or the manifest
//! files); `cleanup` removes every program, link and map lb left under a pin path.
use std::{io::IsTerminal, path::PathBuf};

use anyhow::Result;
use clap::{Parser, Subcommand};
use lb::agent::{self, RunArgs};

#[derive(Parser)]
#[command(version, about = "lb node agent: eBPF/XDP service load balancer")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Program and keep programming the dataplane.
    Run(Box<RunArgs>),
    /// Detach lb's programs and remove its pinned links and maps.
    Cleanup {
        #[arg(long, default_value = lb::dataplane::DEFAULT_PIN_PATH)]
        pin_path: PathBuf,
    },
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    match Cli::parse().command {
        Command::Run(args) => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?
            .block_on(agent::run(*args)),
        Command::Cleanup { pin_path } => {
            lb::dataplane::cleanup(&pin_path)?;
            tracing::info!(pin_path = %pin_path.display(), "removed");
            Ok(())
        }
    }
}
