//! `cargo xtask demo`: the README's first command. Builds lb, then runs the lab demo
//! (tests/src/bin/lb-demo.rs): one node, three pods, an outside client, lb-agent on
//! examples/manifests. The demo fails unless every pod answered on every path, so CI (.ci/run)
//! runs it as a test of the README's first command.

use anyhow::Result;

use crate::cmd::{self, cargo};
use crate::setup;

#[derive(clap::Args)]
pub struct Args {
    /// Leave the lab (namespaces, agent, pins) running afterwards, to explore it.
    #[arg(long)]
    keep: bool,
}

pub fn run(args: &Args) -> Result<()> {
    setup::run()?;
    // Everything the demo runs: the agent and lbctl, and the pods' echo servers.
    cmd::run(&mut cargo(
        "build --quiet -p lb-userspace --bins -p lb-tests --bin lb-echo --bin lb-demo",
    ))?;
    let mut demo = cargo("run --quiet -p lb-tests --bin lb-demo --");
    demo.arg(cmd::workspace_root().join("examples/manifests"));
    if args.keep {
        demo.arg("--keep");
    }
    cmd::run(&mut demo)
}
