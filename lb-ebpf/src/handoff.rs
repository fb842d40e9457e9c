//! XDP hands a packet to TC when it translated it for a destination outside the node but cannot
//! transmit it itself: when the next hop's MAC address is not known yet (no neighbour entry: XDP
//! cannot resolve one), and when the route leaves through a device XDP does not transmit on (not
//! in `LB_XDP_TX_PORTS`: a tunnel, a bridge). Passed to the stack as it is, such a packet (its
//! source now a node address after SNAT, or a frontend's) would be dropped as a martian, and
//! nothing would resolve the neighbour. Instead XDP marks it in the packet's metadata (the bytes
//! before the frame, which the kernel keeps for TC on XDP_PASS, native and generic alike) and
//! lb's TC ingress program on the same interface sends it on with `bpf_redirect_neigh`, which
//! resolves the neighbour as the stack's output does. The packet is already translated, its TTL
//! already decremented: TC only transmits it. Cilium hands packets from XDP to TC the same way.
use aya_ebpf::{
    bindings::xdp_action,
    helpers::generated as gen,
    programs::{TcContext, XdpContext},
};

/// The metadata word that marks a packet XDP handed over ("LBHO").
const MARK: u32 = 0x4c42_484f;
const META_LEN: i32 = core::mem::size_of::<u32>() as i32;

/// XDP: mark the packet for TC and pass it. Without room for the metadata (a driver without
/// headroom for it) it is passed unmarked, as before there was a handoff.
#[inline(always)]
pub fn to_tc(ctx: &XdpContext) -> u32 {
    // SAFETY: plain helper call on our own context.
    if unsafe { gen::bpf_xdp_adjust_meta(ctx.ctx, -META_LEN) } == 0 {
        // SAFETY: the context pointer is the program's own; the metadata is bounds-checked
        // against the frame's start before it is written.
        unsafe {
            let meta = (*ctx.ctx).data_meta as usize;
            if meta + META_LEN as usize <= ctx.data() {
                *(meta as *mut u32) = MARK;
            }
        }
    }
    xdp_action::XDP_PASS
}

/// TC: whether XDP handed this packet over.
#[inline(always)]
pub fn from_xdp(ctx: &TcContext) -> bool {
    // SAFETY: the context pointer is the program's own skb; the metadata is bounds-checked
    // against the frame's start before it is read.
    unsafe {
        let meta = (*ctx.skb.skb).data_meta as usize;
        meta + META_LEN as usize <= ctx.data() && *(meta as *const u32) == MARK
    }
}
