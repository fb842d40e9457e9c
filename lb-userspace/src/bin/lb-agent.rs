//! lb-agent: the node agent. `run` keeps the kernel maps equal to the cluster (or the manifest
//! files); `cleanup` removes every program, link and map lb left under a pin path.
use std::io::IsTerminal;

use anyhow::Result;
use clap::Parser;
use lb::agent::{
    self,
    cli::{Cli, Command},
};

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
