//! Developer tasks for the lb workspace, run as `cargo xtask <command>`.

mod bench;
mod cmd;
mod demo;
mod setup;
mod test;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "Developer tasks for lb")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what building and testing lb needs (idempotent).
    Setup,
    /// Run setup, then fmt, clippy (userspace and eBPF) and the test suite.
    Test(test::Args),
    /// Build lb and show it balancing a Service in a lab of network namespaces.
    Demo(demo::Args),
    /// Print per-packet cost of the XDP datapath next to a bare XDP program; `bench e2e`: the
    /// end-to-end comparison with kube-proxy's iptables and nftables rulesets.
    Bench(bench::Args),
}

/// Prints the error chain without anyhow's backtrace: the failing command's own output,
/// just above, is what matters.
fn main() -> ExitCode {
    let result = match Cli::parse().task {
        Task::Setup => setup::run(),
        Task::Test(args) => test::run(&args),
        Task::Demo(args) => demo::run(&args),
        Task::Bench(args) => bench::run(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("xtask: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
