//! A cgroup (v2) per lab, for the socket hooks: the lab's agents attach them there (every process
//! a lab starts gets `LB_CGROUP_PATH`), never to the machine's root cgroup, whose hooks would
//! rewrite every connection on the machine, the test runner's included. Probe processes are
//! moved in with [`super::Netns::command_in_cgroup`]. Removed with the lab, after its processes;
//! the hooks attached to it go with it.
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// Where the cgroup2 root is mounted inside a lab namespace's fresh /sys (see `nsexec`).
pub(crate) const INSIDE_ROOT: &str = "/sys/fs/cgroup";

/// The lab's cgroup, by the machine's path and by the path its namespaces' processes see.
#[derive(Clone, Debug)]
pub(crate) struct LabCgroup {
    /// The cgroup2 root on the machine (`/sys/fs/cgroup/unified` on a hybrid host).
    pub root: PathBuf,
    pub host: PathBuf,
    pub inside: PathBuf,
}

/// The path of `prefix`'s cgroup under the machine's cgroup2 root (None: no cgroup2 mounted).
pub(crate) fn path_for(prefix: &str) -> Option<LabCgroup> {
    let root = lb::dataplane::socket_lb::cgroup2_root().ok()?;
    let name = format!("{prefix}-lab");
    Some(LabCgroup {
        host: root.join(&name),
        inside: Path::new(INSIDE_ROOT).join(&name),
        root,
    })
}

pub(crate) fn create(cg: &LabCgroup) -> Result<()> {
    fs::create_dir(&cg.host).with_context(|| format!("creating cgroup {}", cg.host.display()))
}

/// Whether `path` may be a cgroup of `prefix` (registry records are checked before removal).
pub(crate) fn belongs_to(prefix: &str, path: &Path) -> bool {
    let root = lb::dataplane::socket_lb::cgroup2_root().ok();
    path.parent().is_some()
        && path.parent() == root.as_deref()
        && path.file_name() == Some(format!("{prefix}-lab").as_ref())
}

/// Kills the processes in the cgroup and removes it (a missing one is fine).
pub(crate) fn destroy(path: &Path) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let procs = match fs::read_to_string(path.join("cgroup.procs")) {
            Ok(p) => p,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        let pids: Vec<i32> = procs
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect();
        if pids.is_empty() {
            break;
        }
        for pid in pids {
            // SAFETY: plain signal send.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        if Instant::now() > deadline {
            bail!("processes left in cgroup {}", path.display());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // A killed process leaves the cgroup a moment after it is reaped: retry briefly.
    loop {
        match fs::remove_dir(path) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) if Instant::now() > deadline => {
                return Err(e).with_context(|| format!("removing cgroup {}", path.display()))
            }
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}
