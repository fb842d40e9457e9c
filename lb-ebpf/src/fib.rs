//! Route lookups in the kernel FIB: which interface a rewritten packet leaves through, and the
//! MAC addresses XDP needs to transmit it itself.
//!
//! The lookups of packets lb forwards itself also check the path MTU (`tot_len`), as the stack's
//! forwarding does: one with DF set that does not fit becomes an ICMP "fragmentation needed"
//! back to its sender (`reject::frag_needed`), so path MTU discovery works through lb as through
//! any router. Without DF the packet goes on unchecked (lb does not fragment).
use aya_ebpf::bindings::{
    bpf_fib_lookup, bpf_fib_lookup__bindgen_ty_1, bpf_fib_lookup__bindgen_ty_2,
    bpf_fib_lookup__bindgen_ty_3, bpf_fib_lookup__bindgen_ty_4, bpf_fib_lookup__bindgen_ty_5,
    BPF_FIB_LKUP_RET_FRAG_NEEDED, BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS,
};
use aya_ebpf::{bindings::TC_ACT_SHOT, helpers::generated as gen};

use crate::{
    packet::{read, swap_macs, write_at, Packet},
    parse::IP_OFF,
    reject,
};

const AF_INET: u8 = 2;
const IP_DF: u16 = 0x4000;

/// `xdp_next_hop`'s answer for a packet it turned into an ICMP error it could not finish.
pub const DROP: u32 = u32::MAX;

#[inline(always)]
fn params(ifindex: u32, daddr: u32, tot_len: u16) -> bpf_fib_lookup {
    // Every field spelled out: a zeroed() struct becomes a byte-wise memset loop, which the
    // verifier rejects when it overlaps spilled registers.
    bpf_fib_lookup {
        family: AF_INET,
        l4_protocol: 0,
        sport: 0,
        dport: 0,
        __bindgen_anon_1: bpf_fib_lookup__bindgen_ty_1 { tot_len },
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
    let mut params = params(p.ifindex(), daddr, 0);
    p.fib_lookup(&mut params);
    // For NO_NEIGH and the like the kernel still reports the egress interface; on lookup
    // failure it leaves ours in place.
    params.ifindex
}

/// The IP length to check against the path MTU: the packet's, when DF is set; 0 (no check)
/// otherwise.
#[inline(always)]
fn checked_len<P: Packet>(p: &P) -> u16 {
    // Version/TOS, total length, id, flags/fragment offset.
    match read::<[u16; 4], P>(p, IP_OFF) {
        Some(h) if u16::from_be(h[3]) & IP_DF != 0 => u16::from_be(h[1]),
        _ => 0,
    }
}

/// The route lookup of a packet lb forwards to `daddr`, with the path MTU check. Too big with
/// DF set: the packet becomes the ICMP error back to its sender, and the lookup's return code
/// says so (FRAG_NEEDED; the caller bounces it, or drops it on `Err`). Too big but an aggregate
/// (GRO merged it before generic XDP or TC saw it, and the stack segments it on transmit):
/// looked up again without the check.
#[inline(always)]
fn lookup<P: Packet>(p: &mut P, params: &mut bpf_fib_lookup, daddr: u32) -> Result<i64, ()> {
    let rc = p.fib_lookup(params);
    if rc != i64::from(BPF_FIB_LKUP_RET_FRAG_NEEDED) {
        return Ok(rc);
    }
    if p.aggregate() {
        *params = self::params(p.ifindex(), daddr, 0);
        return Ok(p.fib_lookup(params));
    }
    // SAFETY: the kernel wrote the path MTU over tot_len.
    let mtu = unsafe { params.__bindgen_anon_1.mtu_result };
    reject::frag_needed(p, mtu).map(|()| rc)
}

/// For an XDP packet rewritten to `daddr`: when the kernel knows the route and the next hop's
/// MAC address, write the MAC addresses and return the egress ifindex (the caller transmits:
/// XDP_TX on the ingress interface, XDP_REDIRECT to another). 0 when it doesn't: the stack must
/// forward it. Too big for the path: the ingress ifindex, the packet now the ICMP error to its
/// sender with the MAC addresses swapped ([`DROP`] if that failed). (A plain integer, not an
/// Option: LLVM leaves a None's payload undefined and the verifier rejects reading it.) Direct
/// writes: XDP only. Not inlined, as `redirect_neigh`.
#[inline(never)]
pub fn xdp_next_hop<P: Packet>(p: &mut P, daddr: u32) -> u32 {
    let mut params = params(p.ifindex(), daddr, checked_len(p));
    match lookup(p, &mut params, daddr) {
        Ok(rc) if rc == i64::from(BPF_FIB_LKUP_RET_SUCCESS) => {}
        Ok(rc) if rc == i64::from(BPF_FIB_LKUP_RET_FRAG_NEEDED) => {
            return if swap_macs(p) { p.ifindex() } else { DROP };
        }
        Ok(_) => return 0,
        Err(()) => return DROP,
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
/// interface). None when there is no route (the stack then decides). Too big for the path: the
/// ICMP error to its sender, bounced.
/// Not inlined: its lookup parameters (64 bytes) then live in a frame of their own beside the
/// load-balancing core's rather than in the program's frame, under which that core's frame is
/// stacked (Linux 6.1 rounds every frame to 32 bytes and allows 512 for the whole chain).
#[inline(never)]
pub fn redirect_neigh<P: Packet>(p: &mut P, daddr: u32) -> Option<i64> {
    let mut params = params(p.ifindex(), daddr, checked_len(p));
    let rc = match lookup(p, &mut params, daddr) {
        Ok(rc) => rc,
        Err(()) => return Some(i64::from(TC_ACT_SHOT)),
    };
    if rc == i64::from(BPF_FIB_LKUP_RET_FRAG_NEEDED) {
        return Some(bounce(p));
    }
    if rc != i64::from(BPF_FIB_LKUP_RET_SUCCESS) && rc != i64::from(BPF_FIB_LKUP_RET_NO_NEIGH) {
        return None;
    }
    // SAFETY: without parameters the helper looks the next hop up itself.
    Some(unsafe { gen::bpf_redirect_neigh(params.ifindex, core::ptr::null_mut(), 0, 0) })
}

/// TC: send the packet back out of the interface it came in on, MAC addresses swapped (for a
/// pod's host-side veth: back into the pod).
#[inline(always)]
pub fn bounce<P: Packet>(p: &mut P) -> i64 {
    if !swap_macs(p) {
        return i64::from(TC_ACT_SHOT);
    }
    // SAFETY: plain helper call.
    unsafe { gen::bpf_redirect(p.ifindex(), 0) }
}
