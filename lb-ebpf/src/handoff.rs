//! XDP hands a packet to TC when it translated it for a destination outside the node but cannot
//! transmit it itself: when the next hop's MAC address is not known yet (no neighbour entry: XDP
//! cannot resolve one), and when the route leaves through a device XDP does not transmit on (not
//! in `LB_XDP_TX_PORTS`: a tunnel, a bridge). Passed to the stack as it is, such a packet (its
//! source now a node address after SNAT, or a frontend's) would be dropped as a martian, and
//! nothing would resolve the neighbour. Instead XDP records the packet in `LB4_HANDOFF` and passes
//! it; lb's TC ingress program on the same interface finds it there and sends it on with
//! `bpf_redirect_neigh`, which resolves the neighbour as the stack's output does. The packet is
//! already translated, its TTL already decremented: TC only transmits it.
//!
//! Why a map and not the XDP metadata area (Cilium's way): `bpf_xdp_adjust_meta` is refused by
//! some kernels ("program of this type cannot use helper", seen on a 6.18 build) and fails at
//! run time on drivers without metadata room (ENA); either way the packet would be lost. A map
//! works on every kernel and driver, for one hash lookup per IPv4 packet XDP passes to the stack
//! on an external interface (packets on their way to the stack's much longer path anyway).
use aya_ebpf::{
    bindings::xdp_action, helpers::generated as gen, macros::map, maps::LruHashMap,
    programs::XdpContext,
};

use crate::{
    packet::{read, Packet, Tc, Xdp},
    parse::{ETH_PROTO, ETH_P_IP, IP_ID, IP_PROTO, IP_SADDR},
};

/// How long a record stands for its packet: the time from XDP to TC on one interface is
/// microseconds; a record only ever matches the packet it was made for or, within this time, a
/// retransmission of it, which TC should send on as well.
const FRESH_NS: u64 = 1_000_000_000;

/// A packet as XDP handed it over (translated): its addresses, IP id and protocol. The IP id
/// tells a flow's packets apart where the stack numbers them; where it is 0 (some stacks' DF
/// packets), every packet between the two addresses is handed over alike, which is right.
#[repr(C)]
#[derive(Clone, Copy)]
struct Key {
    addrs: [u32; 2],
    id: u16,
    proto: u8,
    _pad: u8,
}

/// Kernel-private (the agent never reads it), so not pinned: a restart loses only packets in
/// flight between XDP and TC.
#[map]
static LB4_HANDOFF: LruHashMap<Key, u64> = LruHashMap::with_max_entries(4_096, 0);

#[inline(always)]
fn key<P: Packet>(p: &P) -> Option<Key> {
    if read::<u16, P>(p, ETH_PROTO)? != ETH_P_IP.to_be() {
        return None;
    }
    Some(Key {
        // Both addresses in one read (see frag.rs: read apart, the verifier refused LLVM's code).
        addrs: read(p, IP_SADDR)?,
        id: read(p, IP_ID)?,
        proto: read(p, IP_PROTO)?,
        _pad: 0,
    })
}

#[inline(always)]
fn now() -> u64 {
    // SAFETY: plain helper call.
    unsafe { gen::bpf_ktime_get_coarse_ns() }
}

/// XDP: record the packet for TC and pass it.
#[inline(always)]
pub fn to_tc(ctx: &XdpContext) -> u32 {
    if let Some(key) = key(&Xdp(ctx)) {
        let _ = LB4_HANDOFF.insert(&key, &now(), 0);
    }
    xdp_action::XDP_PASS
}

/// TC: whether XDP handed this packet over.
#[inline(always)]
pub fn from_xdp(p: &mut Tc) -> bool {
    p.ensure(IP_SADDR + 8);
    let Some(key) = key(p) else {
        return false;
    };
    // SAFETY: read-only copy of the map value.
    match unsafe { LB4_HANDOFF.get(&key) } {
        Some(&at) => now().wrapping_sub(at) < FRESH_NS,
        None => false,
    }
}
