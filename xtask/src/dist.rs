//! `cargo xtask dist --out DIR`: the release build of what the container image ships. The image
//! (deploy/image/Dockerfile) and CI (.ci/run) both run this one command, so the image is built
//! the way CI checks it builds.

use std::{fs, path::PathBuf};

use anyhow::{Context, Result};

use crate::cmd::{self, cargo, output};
use crate::setup;

/// The binaries of lb-userspace that go into the image.
const BINARIES: &[&str] = &["lb-agent", "lbctl"];

#[derive(clap::Args)]
pub struct Args {
    /// Directory the binaries are copied to (created if missing).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
}

pub fn run(args: &Args) -> Result<()> {
    setup::build_tools()?;
    // --locked: an image is built from exactly the dependencies the repository was tested with.
    cmd::run(&mut cargo(
        "build --release --locked -p lb-userspace --bins",
    ))?;
    let release = target_dir()?.join("release");
    fs::create_dir_all(&args.out).with_context(|| format!("creating {}", args.out.display()))?;
    for bin in BINARIES {
        let from = release.join(bin);
        let to = args.out.join(bin);
        fs::copy(&from, &to)
            .with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
        eprintln!("xtask: {}", to.display());
    }
    Ok(())
}

/// Cargo's target directory, wherever CARGO_TARGET_DIR or a config file put it.
fn target_dir() -> Result<PathBuf> {
    let metadata = output(&mut cargo("metadata --format-version 1 --no-deps"))
        .context("`cargo metadata` failed")?;
    let metadata: serde_json::Value =
        serde_json::from_str(&metadata).context("parsing `cargo metadata`")?;
    let dir = metadata["target_directory"]
        .as_str()
        .context("`cargo metadata` has no target_directory")?;
    Ok(PathBuf::from(dir))
}
