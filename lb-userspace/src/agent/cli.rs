//! The `lb-agent` command line. It lives in the library, not the binary, so the deployment test
//! (tests/deploy.rs) can parse the DaemonSet's arguments with the agent's own definition and read
//! its defaults: the manifests and the binary cannot drift apart.
use std::path::PathBuf;

use clap::{Parser, Subcommand};

use super::RunArgs;

/// The capabilities `lb-agent run` needs, without which it fails (as uid 0, all others dropped):
/// BPF to create maps and load programs, NET_ADMIN to load and attach networking programs,
/// PERFMON for the verifier to accept the programs' packet pointer arithmetic. The DaemonSet
/// grants exactly these (tests/deploy.rs) and a lab test runs the agent with only these.
pub const RUN_CAPABILITIES: &[&str] = &["BPF", "NET_ADMIN", "PERFMON"];

/// What `lb-agent cleanup` needs: detaching links, deleting netlink TC filters.
pub const CLEANUP_CAPABILITIES: &[&str] = &["BPF", "NET_ADMIN"];

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
