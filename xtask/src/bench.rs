//! `cargo xtask bench`: the datapath benchmark (tests/src/bin/lb-bench.rs), in release mode.

use anyhow::Result;

use crate::cmd::{self, cargo};
use crate::setup;

pub fn run() -> Result<()> {
    setup::run()?;
    cmd::run(&mut cargo(
        "run --release --quiet -p lb-tests --bin lb-bench",
    ))
}
