//! `cargo xtask bench`: the datapath benchmark (tests/src/bin/lb-bench.rs), in release mode;
//! `cargo xtask bench e2e [ARGS]`: the end-to-end comparison with kube-proxy's iptables and
//! nftables rulesets (tests/src/bin/lb-bench-e2e.rs, docs/bench/README.md).

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
    }
}
