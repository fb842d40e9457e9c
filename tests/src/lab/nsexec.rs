//! Entering a network namespace between fork and exec.
//!
//! Does what `ip netns exec` does (setns, private mount namespace that doesn't propagate back,
//! a fresh sysfs on /sys so /sys/class/net shows the namespace's interfaces), and additionally
//! carries the bpffs mounted at /sys/fs/bpf over into the new /sys (through an `open_tree` clone),
//! so processes in the namespace can pin and read pinned objects, and the cgroup2 hierarchy to
//! /sys/fs/cgroup, so an agent can attach socket hooks to the lab's cgroup.

use std::ffi::{CStr, CString};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;
use std::ptr;

use super::BPF_FS_MAGIC;

const OPEN_TREE_CLONE: libc::c_uint = 1;
const AT_RECURSIVE: libc::c_uint = 0x8000;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 4;

/// Makes `cmd` enter the network namespace at `netns_path` before exec; with `cgroup2_root`
/// (where the machine mounts cgroup2) that hierarchy is at /sys/fs/cgroup in the new /sys.
pub(crate) fn enter_netns_on_exec(
    cmd: &mut Command,
    netns_path: &Path,
    cgroup2_root: Option<&Path>,
) {
    let path = CString::new(netns_path.as_os_str().as_bytes()).expect("netns path contains NUL");
    let cgroup2 = cgroup2_root
        .map(|p| CString::new(p.as_os_str().as_bytes()).expect("cgroup path contains NUL"));
    // SAFETY: the hook only makes raw syscalls (async-signal-safe) and allocates nothing.
    unsafe {
        cmd.pre_exec(move || enter_netns(&path, cgroup2.as_deref()));
    }
}

/// Makes `cmd` move itself into the cgroup whose `cgroup.procs` is at `procs` before exec (after
/// [`enter_netns_on_exec`]'s hook, so a path inside the namespace's /sys works).
pub(crate) fn join_cgroup_on_exec(cmd: &mut Command, procs: &Path) {
    let path = CString::new(procs.as_os_str().as_bytes()).expect("cgroup path contains NUL");
    // SAFETY: raw syscalls only, no allocation.
    unsafe {
        cmd.pre_exec(move || {
            let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            // "0" moves the writing process.
            let n = libc::write(fd, c"0".as_ptr().cast(), 1);
            let err = io::Error::last_os_error();
            libc::close(fd);
            if n != 1 {
                return Err(err);
            }
            Ok(())
        });
    }
}

/// Makes `cmd` get SIGKILL when the thread that forks it exits (PR_SET_PDEATHSIG).
pub(crate) fn die_with_parent_on_exec(cmd: &mut Command) {
    // SAFETY: getpid has no preconditions.
    let parent = unsafe { libc::getpid() };
    // SAFETY: prctl/getppid are async-signal-safe; no allocation.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                return Err(io::Error::last_os_error());
            }
            // The parent may have died before the prctl took effect.
            if libc::getppid() != parent {
                return Err(io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
}

fn cvt(r: libc::c_int) -> io::Result<()> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// A detached copy of the mount at `path` (-1 if it cannot be made).
unsafe fn clone_tree(path: &CStr) -> libc::c_int {
    libc::syscall(
        libc::SYS_open_tree,
        libc::AT_FDCWD,
        path.as_ptr(),
        OPEN_TREE_CLONE | AT_RECURSIVE | libc::O_CLOEXEC as libc::c_uint,
    ) as libc::c_int
}

/// Mounts the detached tree `tree` at `at` and closes it.
unsafe fn attach_tree(tree: libc::c_int, at: &CStr) -> io::Result<()> {
    let r = libc::syscall(
        libc::SYS_move_mount,
        tree,
        c"".as_ptr(),
        libc::AT_FDCWD,
        at.as_ptr(),
        MOVE_MOUNT_F_EMPTY_PATH,
    );
    let err = io::Error::last_os_error();
    libc::close(tree);
    if r != 0 {
        return Err(err);
    }
    Ok(())
}

/// Runs in the forked child before exec: raw syscalls only.
fn enter_netns(path: &CStr, cgroup2: Option<&CStr>) -> io::Result<()> {
    // SAFETY: all pointers are valid NUL-terminated strings or null where the API allows it.
    unsafe {
        let fd = libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let r = libc::setns(fd, libc::CLONE_NEWNET);
        let err = io::Error::last_os_error();
        libc::close(fd);
        if r != 0 {
            return Err(err);
        }
        cvt(libc::unshare(libc::CLONE_NEWNS))?;
        // Don't let any mount below propagate back to the parent.
        cvt(libc::mount(
            c"none".as_ptr(),
            c"/".as_ptr(),
            ptr::null(),
            libc::MS_SLAVE | libc::MS_REC,
            ptr::null(),
        ))?;
        let mut st: libc::statfs = std::mem::zeroed();
        let bpffs =
            libc::statfs(c"/sys/fs/bpf".as_ptr(), &mut st) == 0 && st.f_type as u32 == BPF_FS_MAGIC;
        let tree = if bpffs {
            clone_tree(c"/sys/fs/bpf")
        } else {
            -1
        };
        let cgroup_tree = cgroup2.map_or(-1, |p| clone_tree(p));
        // As ip netns exec: replace /sys by one describing this namespace.
        libc::umount2(c"/sys".as_ptr(), libc::MNT_DETACH);
        cvt(libc::mount(
            c"sysfs".as_ptr(),
            c"/sys".as_ptr(),
            c"sysfs".as_ptr(),
            0,
            ptr::null(),
        ))?;
        if tree >= 0 {
            attach_tree(tree, c"/sys/fs/bpf")?;
        }
        if cgroup_tree >= 0 {
            attach_tree(cgroup_tree, c"/sys/fs/cgroup")?;
        }
        Ok(())
    }
}
