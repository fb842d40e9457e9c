//! Counting what XDP transmitted and the kernel dropped: XDP_TX and XDP_REDIRECT only hand a
//! frame over, so a driver that cannot deliver it (a veth whose peer runs no XDP program, a
//! device without ndo_xdp_xmit, a full queue) drops it after lb's program has returned. The
//! kernel reports each such drop through a tracepoint of the `xdp` category; these programs add
//! them to `LB_XMIT_DROPS` under the interface lb's program ran on (ingress), for lbctl and the
//! metrics. Offsets are those of the tracepoints' format files (stable since Linux 4.18).
use aya_ebpf::programs::TracePointContext;

use crate::maps::LB_XMIT_DROPS;

/// `xdp:xdp_bulk_tx`: a driver flushed its XDP_TX queue (`int ifindex` at 8, `int drops` at 16).
pub fn bulk_tx(ctx: &TracePointContext) {
    add(read(ctx, 8), read(ctx, 16));
}

/// `xdp:xdp_devmap_xmit`: redirected frames flushed to their target (`int from_ifindex` at 8,
/// `int drops` at 20).
pub fn devmap_xmit(ctx: &TracePointContext) {
    add(read(ctx, 8), read(ctx, 20));
}

/// `xdp:xdp_redirect_err` and `xdp:xdp_exception`: one frame dropped (`int ifindex` at 16): a
/// redirect the kernel refused, an XDP_TX the driver (or generic XDP) could not queue.
pub fn one(ctx: &TracePointContext) {
    add(read(ctx, 16), 1);
}

#[inline(always)]
fn read(ctx: &TracePointContext, offset: usize) -> i32 {
    // SAFETY: the offset lies within the tracepoint's record (its format file).
    unsafe { ctx.read_at::<i32>(offset) }.unwrap_or(0)
}

#[inline(always)]
fn add(ifindex: i32, drops: i32) {
    if drops <= 0 {
        return;
    }
    if let Some(c) = LB_XMIT_DROPS.get_ptr_mut(ifindex as u32) {
        // SAFETY: this CPU's slot, no concurrent writer.
        unsafe { *c += drops as u64 };
    }
}
