//! `cargo xtask test`: the full check CI runs (`.ci/run`).

use anyhow::Result;

use crate::cmd::{self, cargo};
use crate::setup;

#[derive(clap::Args)]
pub struct Args {
    /// Extra arguments appended to `cargo test --workspace --exclude lb-ebpf`,
    /// e.g. `-- model::` (a test filter) or `-- -- --nocapture`.
    #[arg(last = true)]
    cargo_test_args: Vec<String>,
}

pub fn run(args: &Args) -> Result<()> {
    setup::run()?;
    cmd::run(&mut cargo("fmt --all -- --check"))?;
    // lb-ebpf only builds for the BPF target, so it is linted on its own below.
    cmd::run(&mut cargo(
        "clippy --workspace --exclude lb-ebpf --all-targets -- -D warnings",
    ))?;
    // The aya-template way: check the eBPF crate for its real target, building core from source.
    cmd::run(&mut cargo(
        "+nightly clippy -p lb-ebpf --target bpfel-unknown-none -Z build-std=core \
         -- -D warnings -C panic=abort",
    ))?;
    // The lab tests drive the real lb-agent and lbctl binaries.
    cmd::run(&mut cargo("build -p lb-userspace --bins"))?;
    cmd::run(cargo("test --workspace --exclude lb-ebpf").args(&args.cargo_test_args))
}
