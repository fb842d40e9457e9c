//! `cargo xtask setup`: installs what a fresh Debian 12 machine lacks to build and test lb.
//! Every step checks before it acts, so a second run changes nothing and returns at once.

use std::{env, fs, process::Command};

use anyhow::{bail, Context, Result};

use crate::cmd::{self, cargo, command, output};

/// bpf-linker links against Debian's LLVM 22.
const BUILD_APT_PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "zlib1g-dev",
];

/// The lab tests build network namespaces and veths with these; `cargo xtask bench e2e` and
/// its tests load kube-proxy's rulesets with iptables and nftables (Debian 12's `iptables` is
/// iptables-nft; the package also brings iptables-legacy).
const TEST_APT_PACKAGES: &[&str] = &[
    "iproute2",
    "ethtool",
    "iputils-ping",
    "procps",
    "iptables",
    "nftables",
];

/// The deployment test renders deploy/kubernetes with `kubectl kustomize`; Debian 12 ships
/// kubectl 1.20 in this package (its embedded kustomize is old, and the base is kept within it).
/// A newer kubectl already on PATH is used as it is.
const KUBECTL_PACKAGE: &str = "kubernetes-client";

/// Stable runs fmt and clippy on userspace; nightly builds and lints lb-ebpf, whose
/// `-Z build-std=core` needs rust-src.
const TOOLCHAINS: &[(&str, &[&str])] = &[
    ("stable", &["rustfmt", "clippy"]),
    ("nightly", &["rust-src", "clippy"]),
];

const LLVM_PREFIX: &str = "/usr/lib/llvm-22";
const BPFFS: &str = "/sys/fs/bpf";

#[derive(clap::Args)]
pub struct Args {
    /// Install only what building needs: no test tools, no bpffs mount (a container image build
    /// cannot mount one; deploy/image/Dockerfile uses this).
    #[arg(long)]
    build_only: bool,
}

/// `cargo xtask setup [--build-only]`.
pub fn run_with(args: &Args) -> Result<()> {
    if args.build_only {
        build_tools()
    } else {
        run()
    }
}

/// Everything building and testing lb needs.
pub fn run() -> Result<()> {
    build_tools()?;
    let root = is_root()?;
    let mut test_packages = TEST_APT_PACKAGES.to_vec();
    if output(&mut command("kubectl", "version --client")).is_some() {
        ok("kubectl");
    } else {
        test_packages.push(KUBECTL_PACKAGE);
    }
    apt_packages(&test_packages, root)?;
    bpffs(root)
}

/// What a release build needs: LLVM for bpf-linker, the toolchains, bpf-linker.
pub fn build_tools() -> Result<()> {
    apt_packages(BUILD_APT_PACKAGES, is_root()?)?;
    rust_toolchains()?;
    bpf_linker()
}

/// Installs those of `packages` that dpkg does not list as installed.
pub fn apt_packages(packages: &[&str], root: bool) -> Result<()> {
    let mut missing = Vec::new();
    for pkg in packages {
        if dpkg_installed(pkg) {
            ok(&format!("apt package {pkg}"));
        } else {
            missing.push(*pkg);
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    let list = missing.join(" ");
    if !root {
        bail!("apt packages missing: {list}; run as root or `sudo apt-get install -y {list}`");
    }
    installing(&format!("apt packages {list}"));
    cmd::run(&mut apt("update"))?;
    cmd::run(apt("install -y").args(&missing))
}

/// `${Status}` reads "install ok installed" (or "hold ok installed"); a removed package keeps
/// "deinstall ok config-files". Multiarch packages print one status per architecture, unseparated.
fn dpkg_installed(pkg: &str) -> bool {
    output(command("dpkg-query", "-W -f ${Status}").arg(pkg))
        .is_some_and(|status| status.contains("ok installed"))
}

pub fn apt(args: &str) -> Command {
    let mut cmd = command("apt-get", args);
    cmd.env("DEBIAN_FRONTEND", "noninteractive");
    cmd
}

fn rust_toolchains() -> Result<()> {
    for (toolchain, components) in TOOLCHAINS {
        let installed = match installed_components(toolchain) {
            Some(installed) => {
                ok(&format!("{toolchain} toolchain"));
                installed
            }
            None => {
                installing(&format!("{toolchain} toolchain"));
                let install = format!("toolchain install {toolchain} --profile minimal");
                cmd::run(&mut command("rustup", &install))?;
                installed_components(toolchain).with_context(|| {
                    format!("cannot list the {toolchain} toolchain's components")
                })?
            }
        };
        rust_components(toolchain, components, &installed)?;
    }
    Ok(())
}

/// `rustup component list --installed`, or `None` when the toolchain (or rustup) is missing.
fn installed_components(toolchain: &str) -> Option<String> {
    let list = format!("component list --toolchain {toolchain} --installed");
    output(&mut command("rustup", &list))
}

fn rust_components(toolchain: &str, wanted: &[&str], installed: &str) -> Result<()> {
    // Lines read "rust-src" or "clippy-x86_64-unknown-linux-gnu".
    let has = |c: &str| {
        installed
            .lines()
            .any(|l| l == c || l.starts_with(&format!("{c}-")))
    };
    for component in wanted {
        if has(component) {
            ok(&format!("{component} on {toolchain}"));
        } else {
            installing(&format!("{component} on {toolchain}"));
            let add = format!("component add --toolchain {toolchain} {component}");
            cmd::run(&mut command("rustup", &add))?;
        }
    }
    Ok(())
}

fn bpf_linker() -> Result<()> {
    if let Some(version) = output(&mut command("bpf-linker", "--version")) {
        ok(version.trim());
        return Ok(());
    }
    installing("bpf-linker 0.13.0 against LLVM 22 (builds for a few minutes)");
    // The lockfile pins the dependencies it was released with; if they no longer
    // resolve with this cargo, a fresh resolution is the documented fallback.
    install_bpf_linker(true).or_else(|err| {
        eprintln!("xtask: {err:#}; retrying without --locked");
        install_bpf_linker(false)
    })
}

fn install_bpf_linker(locked: bool) -> Result<()> {
    let path = format!("{LLVM_PREFIX}/bin:{}", env::var("PATH").unwrap_or_default());
    // The default feature wants LLVM 23, which Debian 12 does not have.
    let mut install =
        cargo("install bpf-linker --version 0.13.0 --no-default-features --features llvm-22");
    install.env("LLVM_PREFIX", LLVM_PREFIX).env("PATH", path);
    if locked {
        install.arg("--locked");
    }
    cmd::run(&mut install)
}

/// Pinning maps and links needs bpffs; privileged tests rely on it.
fn bpffs(root: bool) -> Result<()> {
    let mounts = fs::read_to_string("/proc/mounts").context("reading /proc/mounts")?;
    let mounted = mounts.lines().any(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        fields.get(1) == Some(&BPFFS) && fields.get(2) == Some(&"bpf")
    });
    if mounted {
        ok(&format!("bpffs on {BPFFS}"));
    } else if !root {
        eprintln!("xtask: skip: bpffs is not mounted on {BPFFS} and mounting it needs root");
    } else {
        installing(&format!("bpffs on {BPFFS} (mount)"));
        cmd::run(command("mount", "-t bpf bpf").arg(BPFFS))?;
    }
    Ok(())
}

/// Effective uid from /proc, to avoid a libc dependency for one call.
pub fn is_root() -> Result<bool> {
    let status = fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
    let uid_line = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .context("no Uid line in /proc/self/status")?;
    Ok(uid_line.split_whitespace().nth(1) == Some("0"))
}

pub fn ok(what: &str) {
    eprintln!("xtask: ok: {what} already present");
}

pub fn installing(what: &str) {
    eprintln!("xtask: installing {what}");
}
