//! Fragmented datagrams (UDP above the MTU: DNS with large EDNS buffers, Kerberos, RADIUS,
//! replies and requests alike): only the first fragment carries the ports that find a flow. lb
//! translates it as any packet, then remembers what it did in `LB4_FRAGS`, keyed by the datagram
//! as it arrived (addresses, IP id, protocol) and the hook, and does the same to each later
//! fragment: the same addresses, the same verdict. Later fragments carry no L4 header: only their addresses and IP
//! header checksum change (the L4 checksum, in the first fragment, covers the whole datagram and
//! was updated there). A later fragment that arrives before its first is left as it is, and the
//! receiver's reassembly then drops the datagram (as with Cilium's fragment map).
use aya_ebpf::{macros::map, maps::LruHashMap};
use lb_common::stat;

use crate::{
    lb::{Action, Verdict},
    maps::count,
    nat::set_addr,
    packet::{read, Packet},
    parse::{Flow, IP_DADDR, IP_ID, IP_SADDR},
};

/// Datagrams in flight whose first fragment lb translated. LRU: a datagram's fragments arrive
/// within milliseconds; a lost entry only loses that datagram, as a full reassembly queue would.
const CAPACITY: u32 = 8_192;

/// A fragmented datagram as it arrived: its fragments share addresses, IP id and protocol.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Key {
    saddr: u32,
    daddr: u32,
    /// The IP identification field, network byte order.
    id: u16,
    proto: u8,
    hook: Hook,
}

/// Where a datagram was translated. A reply lb translates on egress crossed the node's ingress
/// untranslated before (from a local pod): its later fragments must be left alone there too, or
/// they would enter the stack with the node's address as their source, a martian.
#[repr(u8)]
#[derive(Clone, Copy)]
pub enum Hook {
    Ingress,
    Egress,
}

/// What lb did to a datagram's first fragment.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Done {
    saddr: u32,
    daddr: u32,
    action: Action,
}

/// Kernel-private (the agent never reads it), so not pinned: a restart loses only the
/// datagrams in flight.
#[map]
static LB4_FRAGS: LruHashMap<Key, Done> = LruHashMap::with_max_entries(CAPACITY, 0);

#[inline(always)]
fn key<P: Packet>(p: &P, f: &Flow, hook: Hook) -> Option<Key> {
    Some(Key {
        saddr: f.saddr,
        daddr: f.daddr,
        id: read(p, IP_ID)?,
        proto: f.proto,
        hook,
    })
}

/// After lb gave `action` to the first fragment of `f`'s datagram at `hook`: remember it for the
/// rest.
/// Nothing for an unfragmented packet or one lb left alone. A first fragment answered in place
/// (a reject: addresses swapped) has its later fragments dropped.
#[inline(always)]
pub fn remember<P: Packet>(p: &P, f: &Flow, hook: Hook, action: Action) {
    if !f.fragment || matches!(action.verdict, Verdict::Untouched) {
        return;
    }
    // Both addresses in one read: read apart, LLVM reused a packet pointer register for the
    // comparison below, which the verifier rejects ("pointer arithmetic with <<= prohibited").
    let (Some(key), Some([saddr, daddr])) = (key(p, f, hook), read::<[u32; 2], P>(p, IP_SADDR))
    else {
        return;
    };
    let action = if saddr == f.daddr && daddr == f.saddr {
        Action::DROP
    } else {
        action
    };
    let done = Done {
        saddr,
        daddr,
        action,
    };
    let _ = LB4_FRAGS.insert(&key, &done, 0);
}

/// A later fragment at `hook`: what its first fragment got there, if lb translated that one.
#[inline(always)]
pub fn follow<P: Packet>(p: &mut P, f: &Flow, hook: Hook) -> Action {
    let Some(key) = key(p, f, hook) else {
        return Action::UNTOUCHED;
    };
    // SAFETY: read-only copy of the map value.
    let Some(done) = (unsafe { LB4_FRAGS.get(&key) }).copied() else {
        return Action::UNTOUCHED;
    };
    if matches!(done.action.verdict, Verdict::Drop) {
        count(stat::DROP_FRAGMENT);
        return Action::DROP;
    }
    if set_addr(p, IP_SADDR, f.saddr, done.saddr, None).is_err()
        || set_addr(p, IP_DADDR, f.daddr, done.daddr, None).is_err()
    {
        count(stat::DROP_REWRITE);
        return Action::DROP;
    }
    done.action
}
