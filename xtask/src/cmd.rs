//! Small helpers for running external commands.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

/// The workspace root, so tasks behave the same from any directory.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives inside the workspace")
        .to_path_buf()
}

/// `cargo` with whitespace-separated `args`, at the workspace root. Uses the rustup proxy on
/// PATH (not $CARGO, which points into one toolchain) so `+nightly` works.
pub fn cargo(args: &str) -> Command {
    let mut cmd = command("cargo", args);
    cmd.current_dir(workspace_root());
    cmd
}

/// `program` with whitespace-separated `args`, which keeps call sites readable.
pub fn command(program: &str, args: &str) -> Command {
    let mut cmd = Command::new(program);
    cmd.args(args.split_whitespace());
    cmd
}

/// Runs `cmd` with inherited stdout/stderr and no stdin (CI has none), failing on a non-zero exit.
pub fn run(cmd: &mut Command) -> Result<()> {
    let shown = display(cmd);
    eprintln!("xtask: $ {shown}");
    let status = cmd
        .stdin(Stdio::null())
        .status()
        .with_context(|| format!("could not start `{shown}`"))?;
    if !status.success() {
        bail!("`{shown}` failed ({status})");
    }
    Ok(())
}

/// Runs `cmd` like [`run`] but returns its stdout (stderr still shows).
pub fn stdout(cmd: &mut Command) -> Result<String> {
    let shown = display(cmd);
    eprintln!("xtask: $ {shown}");
    let out = cmd
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("could not start `{shown}`"))?;
    if !out.status.success() {
        bail!("`{shown}` failed ({})", out.status);
    }
    String::from_utf8(out.stdout).with_context(|| format!("`{shown}` printed non-UTF-8"))
}

/// Runs `cmd` quietly and returns its stdout if it exited 0; `None` if it failed or is missing.
pub fn output(cmd: &mut Command) -> Option<String> {
    let out = cmd
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn display(cmd: &Command) -> String {
    let args = cmd.get_args().map(|a| a.to_string_lossy());
    std::iter::once(cmd.get_program().to_string_lossy())
        .chain(args)
        .collect::<Vec<_>>()
        .join(" ")
}
