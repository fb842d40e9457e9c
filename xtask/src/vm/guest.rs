//! One VM run: a guest script that runs every test executable and prints a result line for
//! each, virtme-ng booting the kernel on the host's filesystem (read-only, so the executables
//! built on the host run as they are), and the console read back with a time limit.
//!
//! vng exits 255 whatever the script returns, and the script's output arrives only on the
//! console (`--verbose`) mixed with the boot log, so results travel as `LBVM ...` lines.

use std::fmt::Write as _;
use std::fs::{self, File};
use std::io::{BufRead, BufReader, Read, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::cmd::command;

use super::kernel::Kernel;

/// A test executable built on the host, and the directory `cargo test` would run it in (its
/// package's), where tests find their test data.
pub struct TestBinary {
    pub label: String,
    pub exe: PathBuf,
    pub dir: PathBuf,
}

const MARKER: &str = "LBVM ";

const PROLOGUE: &str = r#"#!/bin/sh
# Written by `cargo xtask vm-test`; runs as root inside the VM.
# Kernel messages on the console would break up the result lines the host parses.
dmesg -n 1
# A hung kernel (a CPU stuck in the kernel: soft lockup) panics after 120 s (60, the maximum
# threshold, doubled: emulation stalls a CPU for seconds, not minutes) instead of using up the
# whole --timeout-minutes, and the panic replays the kernel log with every CPU's backtrace on the
# console, which the line above keeps quiet otherwise.
sysctl -qw kernel.watchdog_thresh=60 kernel.softlockup_panic=1 \
  kernel.softlockup_all_cpu_backtrace=1 kernel.panic_print=32
echo "LBVM kernel $(uname -r)"
mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf
# Debian builds these as modules: the lab's veths, and clsact + cls_bpf for kernels without tcx.
modprobe -a veth sch_ingress cls_bpf
# A skipped privileged test is a failure here, as in CI.
export LB_REQUIRE_PRIVILEGED=1
# Emulation makes everything some 10 times slower: the lab stretches its waits to match.
export LB_TEST_TIME_SCALE=10
# The parser fuzzing checks the same programs on the host; here a few hundred frames show that
# 6.1 runs them alike, within the VM's budget.
export LB_FUZZ_CASES=300
# How close each executable brought the guest to running out of memory: the least MemAvailable,
# sampled every 2 s (read it beside a failure).
lbmem() { awk '/MemAvailable/ {print $2}' /proc/meminfo; }
lbmem > /tmp/lbvm-low
( while sleep 2; do
    m=$(lbmem); low=$(cat /tmp/lbvm-low)
    [ "$m" -lt "${low:-$m}" ] && echo "$m" > /tmp/lbvm-low
  done ) &
lbrun() {
  label=$1 dir=$2
  shift 2
  start=$(date +%s)
  lbmem > /tmp/lbvm-low
  (cd "$dir" && exec "$@")
  echo "LBVM result $label $? $(($(date +%s) - start))"
  echo "LBVM memory $label: at least $(cat /tmp/lbvm-low) kB available"
}
"#;

/// The guest script: every executable in turn, each with `args` (test filters, libtest
/// options).
pub fn script(binaries: &[TestBinary], args: &[String]) -> String {
    let mut script = PROLOGUE.to_owned();
    for b in binaries {
        let mut line = format!("lbrun {}", quote(&b.label));
        for word in [b.dir.to_string_lossy(), b.exe.to_string_lossy()] {
            write!(line, " {}", quote(&word)).unwrap();
        }
        for arg in args {
            write!(line, " {}", quote(arg)).unwrap();
        }
        script.push_str(&line);
        script.push('\n');
    }
    script.push_str("echo \"LBVM done\"\n");
    script
}

/// Single-quoted for sh.
fn quote(word: &str) -> String {
    format!("'{}'", word.replace('\'', r"'\''"))
}

/// What the console said.
#[derive(Default)]
pub struct Console {
    /// `uname -r` in the guest, once the script started.
    pub release: Option<String>,
    /// (label, exit code, seconds) per executable that finished.
    pub results: Vec<(String, i32, u64)>,
    /// The script got to its end.
    pub done: bool,
    /// The guest kernel panicked (a soft lockup makes it: see PROLOGUE).
    pub panicked: bool,
    pub timed_out: bool,
    pub elapsed: Duration,
}

impl Console {
    /// Takes in one console line; whether it belongs to the script's output (shown to the
    /// user; the boot log only goes to the log file).
    fn read(&mut self, line: &str) -> bool {
        let started = self.release.is_some() && !self.done;
        self.panicked |= line.contains("Kernel panic - not syncing");
        let Some((_, event)) = line.split_once(MARKER) else {
            return started;
        };
        let words: Vec<&str> = event.split_whitespace().collect();
        match words[..] {
            ["kernel", release] => self.release = Some(release.to_owned()),
            ["result", label, rc, secs] => {
                if let (Ok(rc), Ok(secs)) = (rc.parse(), secs.parse()) {
                    self.results.push((label.to_owned(), rc, secs));
                }
            }
            ["done"] => self.done = true,
            _ => {}
        }
        true
    }
}

/// Boots `kernel` with `vng`, runs `script` in it and reads the console (copied to `log`)
/// until the VM powers off or `limit` passes; then the VM is killed.
pub fn boot(
    mut vng: Command,
    kvm: bool,
    kernel: &Kernel,
    script: &Path,
    log: &Path,
    limit: Duration,
) -> Result<Console> {
    // TCG unless asked: KVM guests hang on some hosts (nested virtualisation) and TCG works
    // everywhere. 8G: room to spare (lab_mtu, two cluster labs side by side, leaves the least:
    // 6.6 of 7.9G available, measured by the script's sampling); with 2G the guest killed a
    // reconcile test that opens two dataplanes at the default capacities. TCG takes the
    // guest's memory from the host as it is touched.
    if !kvm {
        vng.arg("--disable-kvm");
    }
    vng.args(["--verbose", "--memory", "8G", "--run"])
        .arg(&kernel.vmlinuz)
        .arg("--")
        .arg(script)
        .stdin(Stdio::null())
        // The console goes to stderr (--verbose), the script's output to stdout when the guest
        // has virtio-serial ports for it. Pipes both: qemu opens them again by /proc/self/fd
        // and truncates, which would wipe a log file the user redirected xtask's output to.
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut log = File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let start = Instant::now();
    let mut child = vng.spawn().context("could not start vng")?;
    let lines = console_lines(&mut child);
    let mut console = Console::default();
    loop {
        let left = (start + limit).saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) => {
                // Best effort: a full disk must not end the loop that stops the VM.
                let _ = writeln!(log, "{line}");
                if console.read(&line) {
                    println!("{line}");
                }
            }
            // The VM is gone (powered off or crashed).
            Err(RecvTimeoutError::Disconnected) => break,
            Err(RecvTimeoutError::Timeout) => {
                console.timed_out = true;
                eprintln!("xtask: the VM is still running after {limit:?}: stopping it");
                stop(&mut child);
                break;
            }
        }
    }
    child.wait()?;
    console.elapsed = start.elapsed();
    Ok(console)
}

/// The lines vng prints, read on threads (so that the caller can give up waiting); the
/// channel closes once both streams have.
fn console_lines(child: &mut Child) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    let stdout = child
        .stdout
        .take()
        .map(|s| Box::new(s) as Box<dyn Read + Send>);
    let stderr = child
        .stderr
        .take()
        .map(|s| Box::new(s) as Box<dyn Read + Send>);
    for stream in [stdout, stderr].into_iter().flatten() {
        let tx = tx.clone();
        thread::spawn(move || {
            for line in BufReader::new(stream).split(b'\n') {
                let Ok(line) = line else { break };
                let line = String::from_utf8_lossy(&line).trim_end().to_owned();
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
    }
    rx
}

/// Stops the VM: SIGTERM to qemu (the leaf of vng's process tree: vng, a shell, virtme-run,
/// qemu), after which virtme-run and vng clean up and exit as when the guest powers off;
/// SIGKILL to whatever of the tree is left after 10 s. By pid: the tree stays in xtask's
/// process group on purpose, so that Ctrl-C stops qemu too.
fn stop(child: &mut Child) {
    let tree = process_tree(child.id());
    let leaves: Vec<u32> = tree
        .iter()
        .copied()
        .filter(|&pid| children(pid).is_empty())
        .collect();
    signal("-TERM", &leaves);
    let until = Instant::now() + Duration::from_secs(10);
    while Instant::now() < until {
        if matches!(child.try_wait(), Ok(Some(_))) {
            return;
        }
        thread::sleep(Duration::from_millis(200));
    }
    signal("-KILL", &process_tree(child.id()));
}

fn signal(signal: &str, pids: &[u32]) {
    let _ = command("kill", signal)
        .args(pids.iter().map(u32::to_string))
        .stderr(Stdio::null())
        .status();
}

/// `root` and its descendants, parents before children.
fn process_tree(root: u32) -> Vec<u32> {
    let mut tree = vec![root];
    let mut i = 0;
    while i < tree.len() {
        tree.extend(children(tree[i]));
        i += 1;
    }
    tree
}

/// Processes whose parent is `pid`, from /proc/*/stat.
fn children(pid: u32) -> Vec<u32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| {
            let child: u32 = e.ok()?.file_name().to_str()?.parse().ok()?;
            let stat = fs::read_to_string(format!("/proc/{child}/stat")).ok()?;
            (parent(&stat)? == pid).then_some(child)
        })
        .collect()
}

/// The parent pid in a /proc/PID/stat line, "PID (COMM) STATE PPID ...", where COMM may hold
/// spaces and parentheses.
fn parent(stat: &str) -> Option<u32> {
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn result_lines_are_found_among_console_noise() {
        let mut c = Console::default();
        assert!(!c.read("[    9.4] virtme-ng-init: basic initialization done"));
        assert!(c.read("LBVM kernel 6.1.0-56-amd64"));
        assert!(c.read("test foo ... ok"));
        assert!(c.read("\u{1b}[0mLBVM result lb-tests/packet 101 87"));
        assert!(c.read("LBVM result lb-tests/lbctl x 1"));
        assert!(c.read("LBVM done"));
        assert!(!c.read("[   89.9] reboot: Power down"));
        assert_eq!(c.release.as_deref(), Some("6.1.0-56-amd64"));
        assert_eq!(c.results, [("lb-tests/packet".to_owned(), 101, 87)]);
        assert!(c.done);
    }

    #[test]
    fn the_script_quotes_what_it_runs() {
        let b = TestBinary {
            label: "lb-tests/packet".into(),
            exe: "/t/deps/packet-1".into(),
            dir: "/w/it's".into(),
        };
        let s = script(&[b], &["fixture".into()]);
        assert!(s.contains(r"lbrun 'lb-tests/packet' '/w/it'\''s' '/t/deps/packet-1' 'fixture'"));
        assert!(s.ends_with("echo \"LBVM done\"\n"));
    }

    #[test]
    fn parent_pid_is_read_past_the_command_name() {
        assert_eq!(parent("42 (qemu (x) y) S 7 42 42 0"), Some(7));
        assert_eq!(parent("42 (vng) R"), None);
    }
}
