//! `cargo xtask vm-test`: the test suite, privileged tests included, inside a VM running a
//! Debian kernel (default 6.1, Debian 12's LTS and lb's minimum), one VM per `--kernel`.
//!
//! virtme-ng boots the kernel with the host's filesystem as the guest's root, so the
//! executables built here run there unchanged and nothing needs an image; qemu runs with TCG.

mod guest;
mod kernel;

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use std::{env, fs};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::cmd::{self, cargo, command, output};
use crate::setup;

use guest::{Console, TestBinary};
use kernel::Kernel;

#[derive(clap::Args)]
pub struct Args {
    /// Debian kernel series to boot (repeatable): 6.1 (Debian 12), 6.12 (its backport), or
    /// any other series the apt sources offer.
    #[arg(long = "kernel", value_name = "VERSION", default_value = "6.1")]
    kernels: Vec<String>,
    /// Run the guest under KVM instead of TCG emulation: several times faster where /dev/kvm
    /// works; off by default, since KVM guests hang on some hosts (nested virtualisation, as
    /// on the machine CI runs on).
    #[arg(long)]
    kvm: bool,
    /// Stop a VM that has not finished after this many minutes.
    #[arg(long, default_value_t = 60)]
    timeout_minutes: u64,
    /// Arguments for every test executable, e.g. `-- lab_` (a test filter).
    #[arg(last = true)]
    test_args: Vec<String>,
}

const APT_PACKAGES: &[&str] = &[
    "qemu-system-x86",
    // depmod for the unpacked kernel; modprobe in the guest.
    "kmod",
    // virtme-ng builds its initramfs from it.
    "busybox-static",
    // virtme-ng reads the kernel release from the image with it.
    "file",
    // A private virtme-ng when there is none on PATH.
    "python3-venv",
];

/// The release this was written against (`vng` exits 255 whatever the guest returns, and its
/// console output is what is parsed, so a pin keeps that stable).
const VIRTME_NG: &str = "virtme-ng==1.42";

pub fn run(args: &Args) -> Result<()> {
    setup::run()?;
    let cache = cache_dir()?;
    setup::apt_packages(APT_PACKAGES, setup::is_root()?)?;
    let vng = virtme_ng(&cache)?;
    let kernels = args
        .kernels
        .iter()
        .map(|series| kernel::fetch(series, &cache.join("kernels")))
        .collect::<Result<Vec<_>>>()?;
    let (binaries, out_dir) = build()?;
    let mut summaries = Vec::new();
    for (series, kernel) in args.kernels.iter().zip(&kernels) {
        let script = out_dir.join(format!("guest-{}.sh", kernel.release));
        fs::write(&script, guest::script(&binaries, &args.test_args))?;
        fs::set_permissions(&script, fs::Permissions::from_mode(0o755))?;
        let log = out_dir.join(format!("console-{}.log", kernel.release));
        eprintln!(
            "xtask: booting {} (console: {})",
            kernel.release,
            log.display()
        );
        let limit = Duration::from_secs(args.timeout_minutes * 60);
        let console = guest::boot(vng.command(), args.kvm, kernel, &script, &log, limit)?;
        summaries.push(report(series, kernel, &binaries, &console, &log));
    }
    let failed = summaries.iter().filter(|(_, passed)| !passed).count();
    for (line, _) in &summaries {
        println!("{line}");
    }
    if failed > 0 {
        bail!(
            "the suite failed on {failed} of {} kernels",
            summaries.len()
        );
    }
    Ok(())
}

/// `$XDG_CACHE_HOME/lb-vm` (else `~/.cache/lb-vm`): kernels and virtme-ng outlive checkouts.
fn cache_dir() -> Result<PathBuf> {
    let base = match env::var_os("XDG_CACHE_HOME") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(env::var_os("HOME").context("HOME is not set")?).join(".cache"),
    };
    let dir = base.join("lb-vm");
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

/// How to start `vng`.
struct Vng {
    program: PathBuf,
    /// PATH for a venv's vng, which starts `virtme-run` by name.
    path: Option<String>,
}

impl Vng {
    fn command(&self) -> Command {
        let mut vng = Command::new(&self.program);
        if let Some(path) = &self.path {
            vng.env("PATH", path);
        }
        vng
    }
}

/// `vng`: the one on PATH, else one installed into a venv under the cache (Debian's system
/// Python refuses pip installs, PEP 668).
fn virtme_ng(cache: &Path) -> Result<Vng> {
    if output(&mut command("vng", "--version")).is_some() {
        setup::ok("vng on PATH");
        return Ok(Vng {
            program: "vng".into(),
            path: None,
        });
    }
    let venv = cache.join("virtme-ng");
    let bin = venv.join("bin");
    if bin.join("vng").is_file() {
        setup::ok(&format!("{VIRTME_NG} in {}", venv.display()));
    } else {
        setup::installing(&format!("{VIRTME_NG} into {}", venv.display()));
        cmd::run(command("python3", "-m venv").arg(&venv))?;
        cmd::run(Command::new(bin.join("pip")).args(["install", "--quiet", VIRTME_NG]))?;
    }
    let path = format!("{}:{}", bin.display(), env::var("PATH").unwrap_or_default());
    Ok(Vng {
        program: bin.join("vng"),
        path: Some(path),
    })
}

/// Builds what `cargo xtask test` runs: the binaries the lab tests drive and every test
/// executable of the workspace but xtask's. Returns them with `<target>/vm`, where the guest
/// script and console logs go.
fn build() -> Result<(Vec<TestBinary>, PathBuf)> {
    cmd::run(&mut cargo("build -p lb-userspace --bins"))?;
    let json = cmd::stdout(&mut cargo(
        "test --workspace --exclude lb-ebpf --no-run --message-format=json",
    ))?;
    let metadata: Value = serde_json::from_str(&cmd::stdout(&mut cargo(
        "metadata --format-version 1 --no-deps",
    ))?)?;
    let names: HashMap<&str, &str> = metadata["packages"]
        .as_array()
        .context("cargo metadata lists no packages")?
        .iter()
        .filter_map(|p| Some((p["id"].as_str()?, p["name"].as_str()?)))
        .collect();
    let mut binaries = json
        .lines()
        .filter_map(|line| test_binary(&serde_json::from_str(line).ok()?, &names))
        .filter(|b| !HOST_ONLY.contains(&b.label.as_str()))
        .collect::<Vec<_>>();
    binaries.sort_by(|a, b| a.label.cmp(&b.label));
    let target = metadata["target_directory"]
        .as_str()
        .context("cargo metadata names no target directory")?;
    let out_dir = Path::new(target).join("vm");
    fs::create_dir_all(&out_dir)?;
    Ok((binaries, out_dir))
}

/// Test executables the VM skips: they show nothing another kernel would. The e2e scenarios
/// replay Service semantics on the same programs and attach paths the `lab_*` suites already
/// check hook by hook (tcx and netlink TC, generic and native XDP, socket hooks), and under
/// emulation they alone took 24 of the VM's minutes. The firewall lab tests how netfilter
/// judges lb's flows, which 6.1 and 6.18 do alike, and needs iptables' nf_tables modules, which
/// the guest would have to load from the unpacked kernel; so does the overlay lab (its nodes run
/// that firewall, its lan an nf_tables bridge filter), whose programs and TC attachments are
/// the external interfaces' ones, checked on 6.1 by the other labs. The conntrack churn lab
/// (100,000 UDP round trips) tests which table an LRU evicts from, alike on every kernel; the
/// programs that choose the table are verified on 6.1 by every other suite that loads them. The
/// rest are userspace logic on stable interfaces: unit tests of the agent, lbctl, the model, the
/// sources and the deploy manifests (no kernel at all), and the reconciler's and conntrack
/// collector's suites, which write and walk maps through syscalls unchanged since before 6.1
/// (the programs reading those maps are verified by `packet` and the labs). Under emulation
/// they took 15 of the VM's minutes and pushed a CI run past the VM's 60-minute limit. The eBPF
/// stack check reads the object file only: it applies 6.1's rule on the host.
const HOST_ONLY: &[&str] = &[
    "lb-tests/ebpf_stack",
    "lb-tests/e2e_services",
    "lb-tests/lab_firewall",
    "lb-tests/lab_overlay",
    "lb-tests/lab_conntrack_churn",
    "lb-tests/reconcile",
    "lb-tests/conntrack",
    "lb-userspace/lb",
    "lb-userspace/lb-agent",
    "lb-userspace/lbctl",
    "lb-userspace/deploy",
    "lb-common/lb_common",
];

/// A test executable from one of cargo's JSON messages, labelled `package/target`.
fn test_binary(msg: &Value, names: &HashMap<&str, &str>) -> Option<TestBinary> {
    if msg["reason"] != "compiler-artifact" || msg["profile"]["test"] != true {
        return None;
    }
    let package = *names.get(msg["package_id"].as_str()?)?;
    if package == "xtask" {
        return None;
    }
    Some(TestBinary {
        label: format!("{package}/{}", msg["target"]["name"].as_str()?),
        exe: PathBuf::from(msg["executable"].as_str()?),
        dir: Path::new(msg["manifest_path"].as_str()?)
            .parent()?
            .to_owned(),
    })
}

/// Prints a row per test executable; returns the kernel's summary line and whether it passed.
fn report(
    series: &str,
    kernel: &Kernel,
    binaries: &[TestBinary],
    console: &Console,
    log: &Path,
) -> (String, bool) {
    println!("\nvm-test: Linux {} ({}):", kernel.release, kernel.package);
    let failed = print_rows(binaries, console);
    let problem = vm_problem(kernel, console);
    if let Some(problem) = &problem {
        println!("  {problem}; the console's last lines ({}):", log.display());
        print_tail(log, 20);
        print_kernel_report(log, 100);
    }
    let passed = failed == 0 && problem.is_none();
    let secs = console.elapsed.as_secs();
    let line = format!(
        "vm-test: kernel {series} ({}): {}: {} of {} test executables passed, VM ran {}m{:02}s",
        kernel.release,
        if passed { "PASS" } else { "FAIL" },
        binaries.len() - failed,
        binaries.len(),
        secs / 60,
        secs % 60,
    );
    (line, passed)
}

/// A row per test executable, with its time in the VM; returns how many did not pass.
fn print_rows(binaries: &[TestBinary], console: &Console) -> usize {
    let mut failed = 0;
    for b in binaries {
        match console.results.iter().find(|(label, ..)| *label == b.label) {
            Some((_, 0, secs)) => println!("  ok      {:<32} {secs:>5} s", b.label),
            Some((_, rc, secs)) => {
                failed += 1;
                println!("  FAILED  {:<32} {secs:>5} s  exit {rc}", b.label);
            }
            None => {
                failed += 1;
                println!("  MISSING {:<32}          no result", b.label);
            }
        }
    }
    failed
}

/// The last `n` lines of the console log: where a crash or a guest script error shows.
fn print_tail(log: &Path, n: usize) {
    let text = fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    for line in &lines[lines.len().saturating_sub(n)..] {
        println!("  | {line}");
    }
}

/// Prints the kernel's report of a hang or crash in the console log, if there is one.
fn print_kernel_report(log: &Path, n: usize) {
    let text = fs::read_to_string(log).unwrap_or_default();
    let report = kernel_report(&text, n);
    if !report.is_empty() {
        println!("  the kernel's report:");
    }
    for line in report {
        println!("  | {line}");
    }
}

/// The kernel's last report of a bug (`watchdog: BUG: soft lockup`, `BUG: kernel NULL pointer
/// dereference`; else an oops; else the panic)
/// with its backtraces, at most `n` lines: the last, since the first is printed live on the
/// quiet console without them, and replayed whole by the panic that follows.
fn kernel_report(text: &str, n: usize) -> Vec<&str> {
    let lines: Vec<&str> = text.lines().collect();
    let last = |pattern: &str| lines.iter().rposition(|l| l.contains(pattern));
    let start = last(" BUG: ")
        .or_else(|| last(" Oops: "))
        .or_else(|| last("Kernel panic - "));
    match start {
        Some(start) => lines[start..].iter().take(n).copied().collect(),
        None => Vec::new(),
    }
}

/// What went wrong with the VM itself, if anything: results are only trusted from the kernel
/// that was asked for and from a script that ran to its end.
fn vm_problem(kernel: &Kernel, console: &Console) -> Option<String> {
    Some(match &console.release {
        _ if console.panicked => "the guest kernel panicked (a hang or a crash)".to_owned(),
        _ if console.timed_out => "the VM timed out (--timeout-minutes)".to_owned(),
        None => "the guest script never started".to_owned(),
        Some(r) if *r != kernel.release => format!("the guest ran {r}, not {}", kernel.release),
        Some(_) if !console.done => "the VM stopped before the script finished".to_owned(),
        Some(_) => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::kernel_report;

    #[test]
    fn the_replayed_report_with_its_trace_is_chosen() {
        let console = "\
[ 130.1] watchdog: BUG: soft lockup - CPU#0 stuck for 121s! [netns-node-a:2301]
[ 130.2] Kernel panic - not syncing: softlockup: hung tasks
[ 130.1] watchdog: BUG: soft lockup - CPU#0 stuck for 121s! [netns-node-a:2301]
[ 130.1] Call Trace:
[ 130.1]  <TASK>
[ 130.2] Kernel panic - not syncing: softlockup: hung tasks";
        let report = kernel_report(console, 3);
        assert_eq!(report.len(), 3);
        assert!(report[0].contains("BUG: soft lockup"));
        assert!(report[1].contains("Call Trace"));
        let crash = "[ 10.9] sysrq: Trigger a crash\n[ 10.9] Kernel panic - not syncing: sysrq\n[ 10.9] Call Trace:";
        assert_eq!(kernel_report(crash, 9).len(), 2, "from the panic");
        assert!(kernel_report("[ 1.0] all well", 9).is_empty());
    }
}
