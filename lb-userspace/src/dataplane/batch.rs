//! Reading a whole hash map in batches (`BPF_MAP_LOOKUP_BATCH`, Linux 5.6): a few hundred
//! syscalls for a table of 262k flows, where aya's iterator makes two per entry. aya has no
//! batch API, so this is the one syscall lb makes by hand.
use std::os::fd::{AsFd, AsRawFd};

use anyhow::{bail, Result};
use aya::{
    maps::{HashMap, IterableMap, MapData},
    Pod,
};

const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
/// Entries asked for per call. A hash bucket holding more than this fails with ENOSPC: buckets
/// hold a handful.
const BATCH: usize = 4096;

/// `bpf_attr.batch` of the kernel's uapi.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// Every entry of `map`, in the kernel's order. An entry added or removed while the walk runs may
/// or may not be in the result (as with any walk of a live map).
pub fn read_all<K: Pod + Default, V: Pod + Default>(
    map: &HashMap<MapData, K, V>,
) -> Result<Vec<(K, V)>> {
    let fd = IterableMap::map(map).fd().as_fd().as_raw_fd();
    let mut out = Vec::new();
    let mut keys = vec![K::default(); BATCH];
    let mut values = vec![V::default(); BATCH];
    // Where the last call stopped, as the kernel hands it back (a bucket index for hash maps);
    // none before the first call.
    let mut position: Option<u64> = None;
    let mut next = 0u64;
    loop {
        let mut attr = BatchAttr {
            in_batch: position.as_ref().map_or(0, |p| p as *const u64 as u64),
            out_batch: &mut next as *mut u64 as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: BATCH as u32,
            map_fd: fd as u32,
            ..Default::default()
        };
        // SAFETY: the attribute points at buffers of `count` keys and values and at two u64s,
        // all alive for the call; the kernel writes at most that much.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_LOOKUP_BATCH,
                &mut attr as *mut BatchAttr,
                std::mem::size_of::<BatchAttr>(),
            )
        };
        let err = (rc < 0).then(std::io::Error::last_os_error);
        let n = attr.count as usize;
        out.extend(keys[..n].iter().copied().zip(values[..n].iter().copied()));
        match err {
            None => position = Some(next),
            // ENOENT: the walk reached the end (with the last entries in this call).
            Some(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(out),
            Some(e) => bail!("BPF_MAP_LOOKUP_BATCH: {e}"),
        }
    }
}
