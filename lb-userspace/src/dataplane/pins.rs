//! Where lb keeps its state on bpffs, so it outlives the agent:
//! `PIN/v<ABI>/<MAP>` for maps (a new map layout gets a new directory) and
//! `PIN/links/<ifindex>-<hook>` for the links that attach programs to interfaces (and
//! `PIN/links/<ifindex>-<hook>-nl`, a pinned program, recording a netlink TC filter).
use std::{
    fs, io,
    os::fd::AsRawFd,
    path::{Path, PathBuf},
};

use anyhow::{bail, Context as _, Result};
use aya::programs::links::{FdLink, PinnedLink};
use lb_common::ABI_VERSION;

pub const DEFAULT_PIN_PATH: &str = "/sys/fs/bpf/lb";
const BPF_FS_MAGIC: i64 = 0xcafe4a11;

#[derive(Clone, Debug)]
pub struct PinLayout {
    root: PathBuf,
}

impl PinLayout {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        PinLayout { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn maps_dir(&self) -> PathBuf {
        self.root.join(format!("v{ABI_VERSION}"))
    }

    pub fn map(&self, name: &str) -> PathBuf {
        self.maps_dir().join(name)
    }

    pub fn links_dir(&self) -> PathBuf {
        self.root.join("links")
    }

    pub fn link(&self, ifindex: u32, hook: &str) -> PathBuf {
        self.links_dir().join(format!("{ifindex}-{hook}"))
    }

    /// Create the directories, refusing a path that is not on bpffs (pins would fail later with
    /// a less helpful error).
    pub fn create(&self) -> Result<()> {
        // Check the deepest directory that exists: under `ip netns exec`, for one, /sys is a
        // fresh sysfs without /sys/fs/bpf, and creating the root would fail obscurely.
        let existing = self
            .root
            .ancestors()
            .find(|p| p.exists())
            .unwrap_or(&self.root);
        if !on_bpffs(existing)? {
            bail!(
                "{} is not on a BPF filesystem; mount one with `mount -t bpf bpf /sys/fs/bpf`",
                self.root.display()
            );
        }
        for dir in [self.maps_dir(), self.links_dir()] {
            fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        Ok(())
    }

    /// Take the pin path for this process (see [`PinLock`]); the root must exist.
    pub fn lock(&self) -> Result<PinLock> {
        PinLock::acquire(&self.root)
    }

    /// Map directories of other lb versions found under the root (their maps cannot be adopted).
    pub fn foreign_versions(&self) -> Vec<String> {
        let ours = format!("v{ABI_VERSION}");
        list(&self.root)
            .into_iter()
            .filter_map(|p| p.file_name()?.to_str().map(str::to_owned))
            .filter(|n| n.starts_with('v') && n[1..].parse::<u32>().is_ok() && *n != ours)
            .collect()
    }

    /// Detach every pinned link, delete the netlink TC filters recorded here and remove every
    /// pin and directory under the root. Run it in the network namespace the interfaces are in.
    pub fn remove_all(&self) -> Result<()> {
        // A filter that cannot be deleted keeps its record and everything else stays too, so
        // that the error can be fixed and cleanup run again.
        super::attach::detach_all_netlink(self)?;
        for link in list(&self.links_dir()) {
            // Unpinning the last reference to a link detaches its program.
            match PinnedLink::from_pin(&link) {
                Ok(pinned) => drop(FdLink::from(pinned)),
                Err(e) => tracing::warn!("opening link {}: {e}", link.display()),
            }
            remove_file(&link)?;
        }
        for dir in list(&self.root) {
            if dir.is_dir() {
                for pin in list(&dir) {
                    remove_file(&pin)?;
                }
                remove_dir(&dir)?;
            } else {
                remove_file(&dir)?;
            }
        }
        match fs::remove_dir(&self.root) {
            // A mount point (the DaemonSet mounts the host's lb directory there): emptied.
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => Ok(()),
            _ => remove_dir(&self.root),
        }
    }
}

fn on_bpffs(path: &Path) -> Result<bool> {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())?;
    // SAFETY: statfs into a zeroed struct with a valid C string.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return Err(io::Error::last_os_error()).context(format!("statfs {}", path.display()));
    }
    Ok(st.f_type as i64 == BPF_FS_MAGIC)
}

fn list(dir: &Path) -> Vec<PathBuf> {
    fs::read_dir(dir)
        .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default()
}

fn remove_file(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("removing {}", path.display()))
        }
        _ => Ok(()),
    }
}

fn remove_dir(path: &Path) -> Result<()> {
    match fs::remove_dir(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("removing {}", path.display()))
        }
        _ => Ok(()),
    }
}

/// An exclusive `flock` on the pin path's root directory, held while the process lives (the
/// kernel drops it with the process, however it ends). Two agents on one pin path (a hand-run
/// agent beside the DaemonSet's, a cleanup applied too early) would undo each other's writes
/// unnoticed; the second one stops at start instead, naming the first.
pub struct PinLock {
    _dir: fs::File,
}

impl PinLock {
    fn acquire(root: &Path) -> Result<Self> {
        let dir = fs::File::open(root).with_context(|| format!("opening {}", root.display()))?;
        // SAFETY: flock on a descriptor we own.
        if unsafe { libc::flock(dir.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            return Ok(PinLock { _dir: dir });
        }
        let err = io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EWOULDBLOCK) {
            return Err(err).with_context(|| format!("locking {}", root.display()));
        }
        let holder = holder(&dir).unwrap_or_else(|| "another process".into());
        bail!(
            "{} is in use by {holder}: one lb-agent per pin path (stop that one first, or give \
             this one another --pin-path)",
            root.display()
        )
    }
}

/// Who holds the flock on `dir`, from /proc/locks (`1: FLOCK ADVISORY WRITE PID MAJ:MIN:INODE
/// 0 EOF`): "pid N (command line)". None when it cannot be told (another PID namespace).
fn holder(dir: &fs::File) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let meta = dir.metadata().ok()?;
    let dev = meta.dev();
    let id = format!(
        "{:02x}:{:02x}:{}",
        libc::major(dev),
        libc::minor(dev),
        meta.ino()
    );
    let locks = fs::read_to_string("/proc/locks").ok()?;
    let pid = locks.lines().find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        match fields[..] {
            [_, "FLOCK", _, _, pid, lock_id, ..] if lock_id == id => pid.parse::<u32>().ok(),
            _ => None,
        }
    })?;
    // 0: a holder in a PID namespace this one does not see (the DaemonSet's, from the host's
    // view it is seen; from a container's, the host's agent is not).
    if pid == 0 {
        return None;
    }
    let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
    Some(format!("pid {pid} ({})", cmdline.trim()))
}
