//! A minimal native XDP program that passes every frame, attached through a bpf link.
//!
//! Native XDP on a veth transmits (XDP_TX, XDP_REDIRECT) into the peer's NAPI ring, and the
//! kernel schedules the peer's NAPI for those frames only when the peer has an XDP program of its
//! own: with GRO alone the frames sit in the ring until the peer's next ordinary packet. So the
//! peer of a veth that runs an XDP program under test gets this one (a switch port, a router's
//! interface). A physical NIC needs nothing of the sort.

use std::os::fd::{FromRawFd, OwnedFd};

use anyhow::{bail, Result};

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_PROG_TYPE_XDP: u32 = 6;
const BPF_XDP: u32 = 37;
const XDP_FLAGS_DRV_MODE: u32 = 1 << 2;

/// `r0 = XDP_PASS (2); exit`.
const PROG: [u64; 2] = [
    // BPF_ALU64 | BPF_MOV | BPF_K, dst r0, imm 2
    0xb7 | (2 << 32),
    // BPF_JMP | BPF_EXIT
    0x95,
];

/// The leading fields of `union bpf_attr` for BPF_PROG_LOAD (the kernel zero-fills the rest).
#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

/// The leading fields of `union bpf_attr` for BPF_LINK_CREATE.
#[repr(C)]
#[derive(Default)]
struct LinkCreateAttr {
    prog_fd: u32,
    target_ifindex: u32,
    attach_type: u32,
    flags: u32,
}

fn bpf<T>(cmd: libc::c_long, attr: &mut T, what: &str) -> Result<OwnedFd> {
    // SAFETY: `attr` is a repr(C) prefix of union bpf_attr whose size we pass; the kernel reads
    // (and may write) only that many bytes.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut T as *mut libc::c_void,
            std::mem::size_of::<T>() as libc::c_uint,
        )
    };
    if fd < 0 {
        bail!("{what}: {}", std::io::Error::last_os_error());
    }
    // SAFETY: the syscall returned a new file descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Loads the pass-everything program and attaches it in native (driver) mode to the interface
/// with index `ifindex` in the calling thread's network namespace. The program stays attached
/// while the returned link is open (or until the interface goes away).
pub(crate) fn attach(ifindex: u32) -> Result<OwnedFd> {
    let license = c"GPL";
    let mut name = [0u8; 16];
    name[..8].copy_from_slice(b"lab_pass");
    let mut load = ProgLoadAttr {
        prog_type: BPF_PROG_TYPE_XDP,
        insn_cnt: PROG.len() as u32,
        insns: PROG.as_ptr() as u64,
        license: license.as_ptr() as u64,
        prog_name: name,
        expected_attach_type: BPF_XDP,
        ..Default::default()
    };
    let prog = bpf(BPF_PROG_LOAD, &mut load, "loading the XDP pass program")?;
    let mut link = LinkCreateAttr {
        prog_fd: std::os::fd::AsRawFd::as_raw_fd(&prog) as u32,
        target_ifindex: ifindex,
        attach_type: BPF_XDP,
        flags: XDP_FLAGS_DRV_MODE,
    };
    // The link holds the program; our program fd can go.
    bpf(BPF_LINK_CREATE, &mut link, "attaching the XDP pass program")
}
