//! Socket-level load balancing (lb-ebpf's `sock`): which cgroup the socket hooks attach to,
//! whose sockets they translate, and the facts the programs need (this network namespace's
//! cookie, the address session affinity is keyed by).
use std::{
    net::Ipv4Addr,
    os::{fd::AsRawFd, unix::fs::MetadataExt},
    path::{Path, PathBuf},
};

use anyhow::{bail, Context as _, Result};
use lb_common::{SockConfig, SOCK_LB_ALL, SOCK_LB_HOST, SOCK_LB_OFF};

/// The hooks, as (program, hook name in pins and messages). The IPv6 ones serve IPv6 Services
/// and IPv4-mapped addresses of dual-stack sockets (lb-ebpf's `sock`).
pub const HOOKS: [(&str, &str); 8] = [
    ("lb_sock_connect4", "connect4"),
    ("lb_sock_sendmsg4", "sendmsg4"),
    ("lb_sock_recvmsg4", "recvmsg4"),
    ("lb_sock_getpeername4", "getpeername4"),
    ("lb_sock_connect6", "connect6"),
    ("lb_sock_sendmsg6", "sendmsg6"),
    ("lb_sock_recvmsg6", "recvmsg6"),
    ("lb_sock_getpeername6", "getpeername6"),
];

/// Whose sockets the hooks translate (`--socket-lb`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SocketLbMode {
    Off,
    /// The agent's own network namespace: the node's processes, hostNetwork pods.
    Host,
    /// Every socket in the cgroup, pods' too.
    All,
}

impl SocketLbMode {
    pub fn code(self) -> u8 {
        match self {
            SocketLbMode::Off => SOCK_LB_OFF,
            SocketLbMode::Host => SOCK_LB_HOST,
            SocketLbMode::All => SOCK_LB_ALL,
        }
    }

    pub fn from_code(code: u8) -> Option<Self> {
        [SocketLbMode::Off, SocketLbMode::Host, SocketLbMode::All]
            .into_iter()
            .find(|m| m.code() == code)
    }

    pub fn name(self) -> &'static str {
        match self {
            SocketLbMode::Off => "off",
            SocketLbMode::Host => "host",
            SocketLbMode::All => "all",
        }
    }
}

/// The root of the cgroup v2 hierarchy: `/sys/fs/cgroup` on a unified host,
/// `/sys/fs/cgroup/unified` on a hybrid one.
pub fn cgroup2_root() -> Result<PathBuf> {
    let mounts =
        std::fs::read_to_string("/proc/self/mounts").context("reading /proc/self/mounts")?;
    cgroup2_root_in(&mounts).context("no cgroup2 filesystem is mounted (pass --cgroup-path)")
}

fn cgroup2_root_in(mounts: &str) -> Option<PathBuf> {
    mounts.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        let (_, dir, fs) = (fields.next()?, fields.next()?, fields.next()?);
        (fs == "cgroup2").then(|| PathBuf::from(unescape_mount_path(dir)))
    })
}

/// /proc/mounts writes space, tab, newline and backslash in octal (`\040`).
fn unescape_mount_path(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('\\') {
        out.push_str(&rest[..i]);
        let code = rest
            .get(i + 1..i + 4)
            .and_then(|o| u8::from_str_radix(o, 8).ok());
        match code {
            Some(c) => {
                out.push(c as char);
                rest = &rest[i + 4..];
            }
            None => {
                out.push('\\');
                rest = &rest[i + 1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// The cookie of this process's network namespace (SO_NETNS_COOKIE, Linux 5.14+): what the
/// hooks compare a socket's namespace with in `host` mode.
pub fn own_netns_cookie() -> Result<u64> {
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").context("opening a socket")?;
    let mut cookie = 0u64;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `cookie`, which we own.
    let rc = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_NETNS_COOKIE,
            (&mut cookie as *mut u64).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).context("SO_NETNS_COOKIE (Linux 5.14+)");
    }
    Ok(cookie)
}

/// The cgroup v2 directory `path` names: itself, or on a hybrid host, where `path` is the
/// cgroup v1 tmpfs (the host's /sys/fs/cgroup mounted into the DaemonSet's pod, say), its
/// `unified` directory.
pub fn resolve_cgroup(path: &Path) -> Result<PathBuf> {
    if is_cgroup2(path)? {
        return Ok(path.to_path_buf());
    }
    let unified = path.join("unified");
    if unified.is_dir() && is_cgroup2(&unified)? {
        return Ok(unified);
    }
    bail!(
        "{} is not a cgroup v2 directory (a hybrid host has the v2 root at \
         /sys/fs/cgroup/unified)",
        path.display()
    )
}

/// The settings the programs read, for `mode` on the cgroup v2 directory `path`.
pub fn config(mode: SocketLbMode, path: &Path, node_addr: Ipv4Addr) -> Result<SockConfig> {
    let meta = std::fs::metadata(path).with_context(|| format!("{}", path.display()))?;
    let mut cfg = SockConfig {
        netns_cookie: own_netns_cookie()?,
        cgroup_id: meta.ino(),
        node_addr: u32::from_ne_bytes(node_addr.octets()),
        mode: mode.code(),
        ..Default::default()
    };
    super::reconcile::copy_padded(&mut cfg.cgroup_path, path.as_os_str().as_encoded_bytes());
    Ok(cfg)
}

/// The path a config names ("" when never set).
pub fn config_path(cfg: &SockConfig) -> String {
    lb_common::padded_str(&cfg.cgroup_path).to_string()
}

fn is_cgroup2(path: &Path) -> Result<bool> {
    const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())?;
    // SAFETY: zeroed out-parameter and a valid C string.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error()).with_context(|| format!("{}", path.display()));
    }
    Ok(st.f_type as i64 == CGROUP2_SUPER_MAGIC)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cgroup2_root_is_found_on_unified_and_hybrid_hosts() {
        let unified = "sysfs /sys sysfs rw 0 0\ncgroup2 /sys/fs/cgroup cgroup2 rw 0 0\n";
        let hybrid = "tmpfs /sys/fs/cgroup tmpfs rw 0 0\n\
                      cgroup /sys/fs/cgroup/cpu cgroup rw,cpu 0 0\n\
                      cgroup2 /sys/fs/cgroup/unified cgroup2 rw 0 0\n";
        let spaced = "cgroup2 /run/my\\040cgroup cgroup2 rw 0 0\n";
        let table = [
            (unified, Some("/sys/fs/cgroup")),
            (hybrid, Some("/sys/fs/cgroup/unified")),
            (spaced, Some("/run/my cgroup")),
            ("cgroup /sys/fs/cgroup/cpu cgroup rw 0 0\n", None),
        ];
        for (mounts, want) in table {
            assert_eq!(cgroup2_root_in(mounts), want.map(PathBuf::from), "{mounts}");
        }
    }

    #[test]
    fn modes_round_trip_through_their_codes() {
        for m in [SocketLbMode::Off, SocketLbMode::Host, SocketLbMode::All] {
            assert_eq!(SocketLbMode::from_code(m.code()), Some(m));
        }
        assert_eq!(SocketLbMode::from_code(9), None);
    }
}
