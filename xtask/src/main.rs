//! Developer tasks for the lb workspace, run as `cargo xtask <command>`.

mod bench;
mod cmd;
mod demo;
mod dist;
mod setup;
mod test;
mod vm;

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
    Setup(setup::Args),
    /// Run setup, then fmt, clippy (userspace and eBPF) and the test suite.
    Test(test::Args),
    /// Build lb and show it balancing a Service in a lab of network namespaces.
    Demo(demo::Args),
    /// Print per-packet cost of the XDP datapath next to a bare XDP program; `bench e2e`: the
    /// end-to-end comparison with kube-proxy's iptables and nftables rulesets.
    Bench(bench::Args),
    /// Release-build lb-agent and lbctl into --out DIR: what the container image ships (CI runs
    /// it too).
    Dist(dist::Args),
    /// Run the test suite (privileged tests included) in a VM booting a Debian kernel.
    VmTest(vm::Args),
}

/// Prints the error chain without anyhow's backtrace: the failing command's own output,
/// just above, is what matters.
fn main() -> ExitCode {
    let result = match Cli::parse().task {
        Task::Setup(args) => setup::run_with(&args),
        Task::Test(args) => test::run(&args),
        Task::Demo(args) => demo::run(&args),
        Task::Bench(args) => bench::run(&args),
        Task::Dist(args) => dist::run(&args),
        Task::VmTest(args) => vm::run(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("xtask: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
