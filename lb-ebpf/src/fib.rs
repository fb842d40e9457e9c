//! Route lookups in the kernel FIB: which interface a rewritten packet leaves through, and the
//! MAC addresses XDP needs to transmit it itself.
use aya_ebpf::bindings::{
    bpf_fib_lookup, bpf_fib_lookup__bindgen_ty_1, bpf_fib_lookup__bindgen_ty_2,
    bpf_fib_lookup__bindgen_ty_3, bpf_fib_lookup__bindgen_ty_4, bpf_fib_lookup__bindgen_ty_5,
    BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS,
};
use aya_ebpf::helpers::generated as gen;

use crate::packet::{write_at, Packet};

const AF_INET: u8 = 2;

#[inline(always)]
fn params(ifindex: u32, daddr: u32) -> bpf_fib_lookup {
    // Every field spelled out: a zeroed() struct becomes a byte-wise memset loop, which the
    // verifier rejects when it overlaps spilled registers.
    bpf_fib_lookup {
        family: AF_INET,
        l4_protocol: 0,
        sport: 0,
        dport: 0,
        __bindgen_anon_1: bpf_fib_lookup__bindgen_ty_1 { tot_len: 0 },
        ifindex,
        __bindgen_anon_2: bpf_fib_lookup__bindgen_ty_2 { flowinfo: 0 },
        __bindgen_anon_3: bpf_fib_lookup__bindgen_ty_3 { ipv6_src: [0; 4] },
        __bindgen_anon_4: bpf_fib_lookup__bindgen_ty_4 {
            ipv6_dst: [daddr, 0, 0, 0],
        },
        __bindgen_anon_5: bpf_fib_lookup__bindgen_ty_5 { tbid: 0 },
        smac: [0; 6],
        dmac: [0; 6],
    }
}

/// The interface the route to `daddr` leaves through (the ingress one if there is no route).
#[inline(always)]
pub fn egress_ifindex<P: Packet>(p: &mut P, daddr: u32) -> u32 {
    let mut params = params(p.ifindex(), daddr);
    p.fib_lookup(&mut params);
    // For NO_NEIGH and the like the kernel still reports the egress interface; on lookup
    // failure it leaves ours in place.
    params.ifindex
}

/// For an XDP packet rewritten to `daddr`: when the kernel knows the route and the next hop's
/// MAC address, write the MAC addresses and return the egress ifindex (the caller transmits:
/// XDP_TX on the ingress interface, XDP_REDIRECT to another). 0 when it doesn't: the stack must
/// forward it. (A plain integer, not an Option: LLVM leaves a None's payload undefined and the
/// verifier rejects reading it.) Direct writes: XDP only.
#[inline(always)]
pub fn xdp_next_hop<P: Packet>(p: &mut P, daddr: u32) -> u32 {
    let mut params = params(p.ifindex(), daddr);
    if p.fib_lookup(&mut params) != i64::from(BPF_FIB_LKUP_RET_SUCCESS) {
        return 0;
    }
    if write_at(p, 0, params.dmac).is_err() || write_at(p, 6, params.smac).is_err() {
        return 0;
    }
    params.ifindex
}

/// For a TC packet rewritten to `daddr` that must leave the node (reverse NAT of a reply to an
/// outside client, SNAT towards a backend on another node): send it to the next hop ourselves,
/// the neighbour resolved by the kernel (`bpf_redirect_neigh`). Its source is now a node address,
/// which the stack's forwarding path would drop as a martian (a local source arriving on an
/// interface). None when there is no route (the stack then decides).
/// Not inlined: its lookup parameters (64 bytes) then live in a frame of their own beside the
/// load-balancing core's rather than in the program's frame, under which that core's frame is
/// stacked (Linux 6.1 rounds every frame to 32 bytes and allows 512 for the whole chain).
#[inline(never)]
pub fn redirect_neigh<P: Packet>(p: &mut P, daddr: u32) -> Option<i64> {
    let mut params = params(p.ifindex(), daddr);
    let rc = p.fib_lookup(&mut params);
    if rc != i64::from(BPF_FIB_LKUP_RET_SUCCESS) && rc != i64::from(BPF_FIB_LKUP_RET_NO_NEIGH) {
        return None;
    }
    // SAFETY: without parameters the helper looks the next hop up itself.
    Some(unsafe { gen::bpf_redirect_neigh(params.ifindex, core::ptr::null_mut(), 0, 0) })
}
