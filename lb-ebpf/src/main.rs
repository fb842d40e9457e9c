//! lb's kernel programs. One load-balancing core (`lb`) behind four attach points:
//! - `lb_xdp_ext`: XDP on external interfaces, the north-south fast path;
//! - `lb_tc_ext`: TC ingress on external interfaces when XDP is off or unavailable, and on the
//!   pod overlay's tunnel devices (replies to flows SNATed to the tunnel's address);
//! - `lb_tc_pod`: TC ingress on host-side pod interfaces (traffic from pods);
//! - `lb_tc_egress`: TC egress on all of them, for replies that leave the node translated late;
//! - `lb_tc_handoff`: TC ingress on external interfaces beside XDP, transmitting what XDP
//!   translated but could not send itself (`handoff`);
//!
//! - `lb_sock_*`: cgroup socket hooks, the same Services for sockets at connect()/sendmsg() time
//!   (`sock`);
//! - `lb_xmit_*`: tracepoints counting what the kernel dropped of the frames XDP transmitted;
//!
//! plus bare programs that benchmarks measure lb against: `lb_xdp_floor` (XDP_PASS, the cost
//! floor), `lb_xdp_floor_tx` (XDP_TX, the forwarding floor) and `lb_xdp_sink` (XDP_DROP, what
//! receives forwarded frames at the other end of a veth, writing the original headers back).
#![no_std]
#![no_main]
// Map keys and values are passed by reference on purpose: the helpers read them from the stack.
#![allow(clippy::needless_borrows_for_generic_args)]

mod fib;
mod frag;
mod handoff;
mod icmp;
mod lb;
mod maps;
mod nat;
mod packet;
mod parse;
mod reject;
mod sock;
mod xmit;

use aya_ebpf::{
    bindings::{xdp_action, TC_ACT_OK, TC_ACT_SHOT},
    macros::{cgroup_sock_addr, classifier, tracepoint, xdp},
    programs::{SockAddrContext, TcContext, TracePointContext, XdpContext},
};
use lb_common::{SCOPE_EXTERNAL, SCOPE_INTERNAL};

use crate::{
    lb::Verdict,
    packet::{swap_macs, Packet, Tc, Xdp},
};

/// TC_ACT_UNSPEC: on tcx, go on to the next program (TCX_NEXT); on a clsact filter, to the next
/// filter, and past the last one as TC_ACT_OK would. TC_ACT_OK would end a tcx chain.
const TCX_NEXT: i32 = -1;

#[xdp]
pub fn lb_xdp_ext(ctx: XdpContext) -> u32 {
    let mut p = Xdp(&ctx);
    let action = lb::handle(&mut p, SCOPE_EXTERNAL);
    match action.verdict {
        Verdict::Untouched | Verdict::Pass => xdp_action::XDP_PASS,
        Verdict::Drop => xdp_action::XDP_DROP,
        Verdict::Forward if !nat::decrement_ttl(&mut p) => xdp_action::XDP_PASS,
        Verdict::Forward => match fib::xdp_next_hop(&mut p, action.daddr) {
            0 => handoff::to_tc(&ctx),
            fib::DROP => xdp_action::XDP_DROP,
            out if out == p.ifindex() => xdp_action::XDP_TX,
            out => match maps::LB_XDP_TX_PORTS.redirect(out, 0) {
                Ok(redirect) => redirect,
                // Not a device XDP transmits on (a tunnel, a bridge, a pod's veth): TC sends it.
                Err(_) => handoff::to_tc(&ctx),
            },
        },
        Verdict::Bounce if swap_macs(&mut p) => xdp_action::XDP_TX,
        Verdict::Bounce => xdp_action::XDP_DROP,
    }
}

#[classifier]
pub fn lb_tc_ext(ctx: TcContext) -> i32 {
    tc(&ctx, SCOPE_EXTERNAL)
}

/// Beside XDP on an external interface: sends on what XDP translated for outside the node but
/// could not transmit (`handoff`); everything else goes on untouched.
#[classifier]
pub fn lb_tc_handoff(ctx: TcContext) -> i32 {
    let mut p = Tc(&ctx);
    if !handoff::from_xdp(&mut p) {
        return TCX_NEXT;
    }
    let Some(daddr) = packet::read::<u32, Tc>(&p, parse::IP_DADDR) else {
        return TC_ACT_OK;
    };
    to_next_hop(&mut p, daddr)
}

/// TC: send a packet for outside the node to the next hop itself (`fib::redirect_neigh`), or to
/// the stack when there is no route.
#[inline(always)]
fn to_next_hop(p: &mut Tc, daddr: u32) -> i32 {
    match fib::redirect_neigh(p, daddr) {
        Some(verdict) => verdict as i32,
        None => TC_ACT_OK,
    }
}

#[classifier]
pub fn lb_tc_pod(ctx: TcContext) -> i32 {
    tc(&ctx, SCOPE_INTERNAL)
}

#[cgroup_sock_addr(connect4)]
pub fn lb_sock_connect4(ctx: SockAddrContext) -> i32 {
    sock::forward4(&ctx)
}

#[cgroup_sock_addr(sendmsg4)]
pub fn lb_sock_sendmsg4(ctx: SockAddrContext) -> i32 {
    sock::forward4(&ctx)
}

#[cgroup_sock_addr(recvmsg4)]
pub fn lb_sock_recvmsg4(ctx: SockAddrContext) -> i32 {
    sock::reverse4(&ctx)
}

#[cgroup_sock_addr(getpeername4)]
pub fn lb_sock_getpeername4(ctx: SockAddrContext) -> i32 {
    sock::reverse4(&ctx)
}

#[cgroup_sock_addr(connect6)]
pub fn lb_sock_connect6(ctx: SockAddrContext) -> i32 {
    sock::forward6(&ctx)
}

#[cgroup_sock_addr(sendmsg6)]
pub fn lb_sock_sendmsg6(ctx: SockAddrContext) -> i32 {
    sock::forward6(&ctx)
}

#[cgroup_sock_addr(recvmsg6)]
pub fn lb_sock_recvmsg6(ctx: SockAddrContext) -> i32 {
    sock::reverse6(&ctx)
}

#[cgroup_sock_addr(getpeername6)]
pub fn lb_sock_getpeername6(ctx: SockAddrContext) -> i32 {
    sock::reverse6(&ctx)
}

/// TC egress on pod and external interfaces: replies the node itself sent as a Service endpoint.
#[classifier]
pub fn lb_tc_egress(ctx: TcContext) -> i32 {
    let mut p = Tc(&ctx);
    match lb::egress(&mut p).verdict {
        Verdict::Untouched => TCX_NEXT,
        Verdict::Drop => TC_ACT_SHOT,
        _ => TC_ACT_OK,
    }
}

#[tracepoint]
pub fn lb_xmit_bulk_tx(ctx: TracePointContext) -> u32 {
    xmit::bulk_tx(&ctx);
    0
}

#[tracepoint]
pub fn lb_xmit_devmap(ctx: TracePointContext) -> u32 {
    xmit::devmap_xmit(&ctx);
    0
}

#[tracepoint]
pub fn lb_xmit_error(ctx: TracePointContext) -> u32 {
    xmit::one(&ctx);
    0
}

#[xdp]
pub fn lb_xdp_floor(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

#[xdp]
pub fn lb_xdp_floor_tx(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_TX
}

#[xdp]
pub fn lb_xdp_sink(ctx: XdpContext) -> u32 {
    if let Some(frame) = maps::LB_BENCH_FRAME.get(0) {
        // A shorter frame is left alone (the helper refuses): it was not the bench's.
        let _ = Xdp(&ctx).store_bytes(0, frame);
    }
    xdp_action::XDP_DROP
}

/// TC leaves delivery to local pods to the stack. Bounces are redirected to the ingress device's
/// egress (for a pod's host-side veth: back into the pod); packets for outside the node, whose
/// source is now a node address, go to the next hop directly (see `fib::redirect_neigh`).
#[inline(always)]
fn tc(ctx: &TcContext, scope: u8) -> i32 {
    let mut p = Tc(ctx);
    let action = lb::handle(&mut p, scope);
    match action.verdict {
        Verdict::Untouched => TCX_NEXT,
        Verdict::Pass => TC_ACT_OK,
        Verdict::Forward if !nat::decrement_ttl(&mut p) => TC_ACT_OK,
        Verdict::Forward => to_next_hop(&mut p, action.daddr),
        Verdict::Drop => TC_ACT_SHOT,
        Verdict::Bounce => fib::bounce(&mut p) as i32,
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
