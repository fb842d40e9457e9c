//! `cargo xtask bench`: the datapath benchmark (tests/src/bin/lb-bench.rs), in release mode;
//! `cargo xtask bench e2e [ARGS]`: the end-to-end comparison with kube-proxy's iptables and
//! nftables rulesets (tests/src/bin/lb-bench-e2e.rs, docs/bench/README.md);
//! `cargo xtask bench control [SIZES]`: programming latency, agent memory and CPU
//! (tests/src/bin/lb-bench-control.rs, docs/bench/control-plane.md).

use anyhow::Result;

use crate::cmd::{self, cargo};
use crate::setup;

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    kind: Option<Kind>,
}

#[derive(clap::Subcommand)]
enum Kind {
    /// TCP connections/s and latency through a ClusterIP and a NodePort, lb vs kube-proxy's
    /// iptables and nftables rulesets, at 1, 1,000 and 10,000 services (as root; ~10 minutes).
    /// Arguments go to `lb-bench-e2e run` (see `--help` there), e.g. `--services 1,1000 --reps 1`.
    E2e {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Time to program N services x 10 endpoints from cold and one endpoint change to the maps
    /// (p50/p99 of 100), the agent's peak RSS and CPU, against kube-proxy's iptables-restore and
    /// nft -f (as root). Arguments go to lb-bench-control (see `--help` there): SIZES (default
    /// 1000,10000,50000), `--modes lb` (lb alone, in minutes), `--out DIR`, time limits.
    Control {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

pub fn run(args: &Args) -> Result<()> {
    setup::run()?;
    match &args.kind {
        None => cmd::run(&mut cargo(
            "run --release --quiet -p lb-tests --bin lb-bench",
        )),
        Some(Kind::E2e { args }) => {
            // The agent it runs is the release build beside lb-bench-e2e.
            cmd::run(&mut cargo("build --release --quiet -p lb-userspace --bins"))?;
            let mut bench = cargo("run --release --quiet -p lb-tests --bin lb-bench-e2e -- run");
            cmd::run(bench.args(args))
        }
        Some(Kind::Control { args }) => {
            cmd::run(&mut cargo("build --release --quiet -p lb-userspace --bins"))?;
            let mut bench = cargo("run --release --quiet -p lb-tests --bin lb-bench-control --");
            cmd::run(bench.args(args))
        }
    }
}
