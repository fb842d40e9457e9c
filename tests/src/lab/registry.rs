//! Machine-wide registry of labs: prefix claims, and reaping what dead runs left behind.
//!
//! Each lab owns a file `REGISTRY_DIR/PREFIX` (created with O_EXCL, which is what makes a prefix
//! unique across processes) holding lines:
//! `owner PID STARTTIME`, `test NAME`, and one `netns NAME` / `pin PATH` / `dir PATH` /
//! `cgroup PATH` line per
//! object, written *before* the object is created. A live lab removes its file after cleaning
//! up. [`reap_stale`] removes the objects of files whose owner process is gone (pid reuse is
//! detected by the start time), after renaming the file to `PREFIX.reaping-PID` so that only
//! one process reaps it. Every path read back is checked to belong to the file's prefix.

use std::collections::hash_map::RandomState;
use std::fs::{self, File, OpenOptions};
use std::hash::BuildHasher;
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};

use super::{child, lock, BPFFS};

/// Where lab records live (tmpfs, so it starts empty after a reboot).
pub const REGISTRY_DIR: &str = "/run/lb-lab";

const NETNS_DIR: &str = "/run/netns";

pub(crate) struct Record {
    path: PathBuf,
    file: Mutex<Option<File>>,
}

impl Record {
    /// Appends a `kind value` line.
    pub(crate) fn note(&self, kind: &str, value: &str) -> io::Result<()> {
        let mut f = lock(&self.file);
        let f = f
            .as_mut()
            .ok_or_else(|| io::Error::other("record already removed"))?;
        f.write_all(format!("{kind} {}\n", one_line(value)).as_bytes())
    }

    pub(crate) fn remove(&self) {
        lock(&self.file).take();
        if let Err(e) = fs::remove_file(&self.path) {
            if e.kind() != io::ErrorKind::NotFound {
                eprintln!("lb lab: removing {}: {e}", self.path.display());
            }
        }
    }
}

fn one_line(s: &str) -> String {
    s.replace(['\n', '\r'], " ")
}

/// Claims a fresh prefix `lbXXXX` and its record file.
pub(crate) fn claim(test: &str) -> Result<(String, Record)> {
    let dir = Path::new(REGISTRY_DIR);
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("creating {REGISTRY_DIR} (labs need root)"))?;
    let me = std::process::id() as i32;
    let start = process_start_time(me).context("reading own start time")?;
    for attempt in 0..1000u32 {
        let prefix = make_prefix(attempt);
        let path = dir.join(&prefix);
        let mut file = match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
        {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e).with_context(|| format!("creating {}", path.display())),
        };
        if prefix_in_use(&prefix) {
            drop(file);
            let _ = fs::remove_file(&path);
            continue;
        }
        let header = format!("owner {me} {start}\ntest {}\n", one_line(test));
        if let Err(e) = file.write_all(header.as_bytes()) {
            let _ = fs::remove_file(&path);
            return Err(e).with_context(|| format!("writing {}", path.display()));
        }
        return Ok((
            prefix,
            Record {
                path,
                file: Mutex::new(Some(file)),
            },
        ));
    }
    bail!("could not claim a free lab prefix in {REGISTRY_DIR}")
}

/// Whether anything else already uses `prefix`: a reaper working on an old record with it, or
/// namespaces / pin dirs named with it that no record knows about.
fn prefix_in_use(prefix: &str) -> bool {
    let dash = format!("{prefix}-");
    let dot = format!("{prefix}.");
    let has = |dir: &str, start: &str| {
        fs::read_dir(dir)
            .map(|rd| {
                rd.flatten()
                    .any(|e| e.file_name().to_string_lossy().starts_with(start))
            })
            .unwrap_or(false)
    };
    has(REGISTRY_DIR, &dot) || has(NETNS_DIR, &dash) || has(BPFFS, &dash)
}

pub(crate) fn make_prefix(attempt: u32) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    // RandomState is seeded randomly per process, so equal inputs in two processes still differ.
    let h = RandomState::new().hash_one((
        std::process::id(),
        nanos,
        COUNTER.fetch_add(1, Ordering::Relaxed),
        attempt,
        std::thread::current().id(),
    ));
    format!("lb{:04x}", h as u16)
}

pub(crate) fn is_prefix(s: &str) -> bool {
    s.len() == 6
        && s.starts_with("lb")
        && s[2..]
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// A parsed record file.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct Parsed {
    pub(crate) owner: Option<(i32, u64)>,
    pub(crate) test: String,
    pub(crate) netns: Vec<String>,
    pub(crate) pins: Vec<PathBuf>,
    pub(crate) dirs: Vec<PathBuf>,
    pub(crate) cgroups: Vec<PathBuf>,
}

/// Parses a record, keeping only entries that belong to `prefix` (anything else is ignored, so
/// a corrupted or forged file cannot make us delete foreign objects).
pub(crate) fn parse(prefix: &str, text: &str) -> Parsed {
    let mut p = Parsed::default();
    let dash = format!("{prefix}-");
    let log_dir = std::env::temp_dir().join(format!("lb-lab-{prefix}"));
    for line in text.lines() {
        let Some((kind, value)) = line.split_once(' ') else {
            continue;
        };
        match kind {
            "owner" => {
                let mut it = value.split(' ');
                if let (Some(Ok(pid)), Some(Ok(start))) =
                    (it.next().map(str::parse), it.next().map(str::parse))
                {
                    p.owner = Some((pid, start));
                }
            }
            "test" => p.test = value.to_string(),
            "netns"
                if value.starts_with(&dash)
                    && value.len() > dash.len()
                    && value
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') =>
            {
                p.netns.push(value.to_string())
            }
            "pin" => {
                let path = Path::new(value);
                let ok = path.parent() == Some(Path::new(BPFFS))
                    && path
                        .file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with(&dash))
                    && !value.contains("..");
                if ok {
                    p.pins.push(path.to_path_buf());
                }
            }
            "dir" if Path::new(value) == log_dir => p.dirs.push(log_dir.clone()),
            "cgroup" if super::cgroup::belongs_to(prefix, Path::new(value)) => {
                p.cgroups.push(PathBuf::from(value))
            }
            _ => {}
        }
    }
    p
}

/// Start time (clock ticks since boot, field 22 of /proc/PID/stat) of a live process.
pub(crate) fn process_start_time(pid: i32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_start_time(&stat)
}

pub(crate) fn parse_start_time(stat: &str) -> Option<u64> {
    // comm (field 2) may contain spaces and parentheses: fields resume after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

fn owner_alive(pid: i32, start: u64) -> bool {
    process_start_time(pid) == Some(start)
}

fn pid_alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks for existence.
    pid > 0
        && (unsafe { libc::kill(pid, 0) } == 0
            || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM))
}

/// Removes what labs of dead processes left behind. Never fails; reports to stderr.
pub(crate) fn reap_stale() {
    let Ok(rd) = fs::read_dir(REGISTRY_DIR) else {
        return;
    };
    let me = std::process::id() as i32;
    for entry in rd.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let (prefix, reaper) = match name.split_once(".reaping-") {
            Some((p, r)) => match r.parse::<i32>() {
                Ok(r) => (p.to_string(), Some(r)),
                Err(_) => continue,
            },
            None => (name.clone(), None),
        };
        if !is_prefix(&prefix) {
            continue;
        }
        if reaper.is_some_and(pid_alive) {
            continue;
        }
        let Ok(text) = fs::read_to_string(entry.path()) else {
            continue;
        };
        let parsed = parse(&prefix, &text);
        match parsed.owner {
            Some((pid, start)) => {
                if reaper.is_none() && owner_alive(pid, start) {
                    continue;
                }
            }
            None => {
                // Being written right now by claim(), or a claim that died half-way.
                let old = entry
                    .metadata()
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| t.elapsed().ok())
                    .is_some_and(|age| age > Duration::from_secs(60));
                if !old {
                    continue;
                }
            }
        }
        let mine = Path::new(REGISTRY_DIR).join(format!("{prefix}.reaping-{me}"));
        if fs::rename(entry.path(), &mine).is_err() {
            continue; // someone else got it
        }
        let failures = destroy(&parsed.netns, &parsed.cgroups, &parsed.pins, &parsed.dirs);
        eprintln!(
            "lb lab: reaped stale lab {prefix} (test {:?}, owner {:?} gone): namespaces {:?}, pins {:?}",
            parsed.test, parsed.owner, parsed.netns, parsed.pins
        );
        if failures.is_empty() {
            let _ = fs::remove_file(&mine);
        } else {
            eprintln!(
                "lb lab: reaping {prefix} incomplete: {}",
                failures.join("; ")
            );
        }
    }
}

/// Kills processes inside `namespaces`, deletes them, removes `cgroups` (killing what is in
/// them), then removes `pins` and `dirs` (recursively). Missing objects are fine. Returns
/// descriptions of what failed.
pub(crate) fn destroy(
    namespaces: &[String],
    cgroups: &[PathBuf],
    pins: &[PathBuf],
    dirs: &[PathBuf],
) -> Vec<String> {
    let mut failures = Vec::new();
    for ns in namespaces {
        kill_netns_processes(ns);
    }
    for ns in namespaces {
        if let Err(e) = delete_netns(ns) {
            eprintln!("lb lab: {e:#}");
            failures.push(format!("{e:#}"));
        }
    }
    for cg in cgroups {
        if let Err(e) = super::cgroup::destroy(cg) {
            eprintln!("lb lab: {e:#}");
            failures.push(format!("{e:#}"));
        }
    }
    for path in pins.iter().chain(dirs) {
        match fs::remove_dir_all(path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                eprintln!("lb lab: removing {}: {e}", path.display());
                failures.push(format!("removing {}: {e}", path.display()));
            }
        }
    }
    failures
}

/// SIGKILLs every process (other than this one) whose network namespace is `ns`, like
/// `ip netns pids NS | xargs kill -9`. A process left inside would keep the namespace alive
/// after its name is deleted.
pub(crate) fn kill_netns_processes(ns: &str) -> usize {
    let Ok(target) = fs::metadata(Path::new(NETNS_DIR).join(ns)) else {
        return 0;
    };
    let me = std::process::id();
    let Ok(rd) = fs::read_dir("/proc") else {
        return 0;
    };
    let mut killed = 0;
    for entry in rd.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(m) = fs::metadata(entry.path().join("ns/net")) else {
            continue;
        };
        if m.dev() == target.dev() && m.ino() == target.ino() {
            // SAFETY: plain signal send.
            if unsafe { libc::kill(pid as i32, libc::SIGKILL) } == 0 {
                killed += 1;
            }
        }
    }
    killed
}

/// `ip netns del NS`, treating "not there" as success and retrying other failures briefly.
fn delete_netns(ns: &str) -> Result<()> {
    let path = Path::new(NETNS_DIR).join(ns);
    let mut last = String::new();
    for attempt in 0..3 {
        if attempt > 0 {
            std::thread::sleep(Duration::from_millis(100 * attempt));
        }
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "del", ns]);
        match child::output_with_timeout(cmd, Duration::from_secs(30)) {
            Ok((out, false)) => {
                let stderr = String::from_utf8_lossy(&out.stderr);
                if out.status.success() || stderr.contains("No such file or directory") {
                    if !path.exists() {
                        return Ok(());
                    }
                    last = format!("{} still exists after ip netns del", path.display());
                } else {
                    last = format!("{}: {}", out.status, stderr.trim());
                }
            }
            Ok((_, true)) => last = "timed out".into(),
            Err(e) => last = e.to_string(),
        }
    }
    bail!("ip netns del {ns}: {last}")
}
