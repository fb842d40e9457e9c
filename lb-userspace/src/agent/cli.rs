//! The `lb-agent` command line. It lives in the library, not the binary, so the deployment test
//! (tests/deploy.rs) can parse the DaemonSet's arguments with the agent's own definition and read
//! its defaults: the manifests and the binary cannot drift apart.
use std::path::PathBuf;

use clap::{Parser, Subcommand};

use super::RunArgs;

#[derive(Debug, Parser)]
#[command(
    name = "lb-agent",
    version,
    about = "lb node agent: eBPF/XDP service load balancer"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Program and keep programming the dataplane.
    Run(Box<RunArgs>),
    /// Detach lb's programs and remove its pinned links and maps.
    Cleanup {
        #[arg(long, default_value = crate::dataplane::DEFAULT_PIN_PATH)]
        pin_path: PathBuf,
    },
}
