//! Service load balancing: conntrack, backend choice, DNAT/SNAT, reverse NAT. Written once for XDP
//! and TC through `Packet`; the program entry points turn the returned `Action` into verdicts.
use aya_ebpf::{bindings::BPF_NOEXIST, helpers::generated as gen};
pub use lb_common::action::{action_for, reply_action, Action, Verdict};
use lb_common::{
    flow_state::{after_client, after_reply, reopens},
    stat, timeout, Addr6, Affinity, Affinity6, AffinityKey4, AffinityKey6, Backend4, Backend6, Ct4,
    Frontend4, Frontend4Key, RevNat4, Service, SlotKey, Tuple4, BE_F_LOCAL, BE_F_TERMINATING,
    CT_F_EXTERNAL, CT_F_HAIRPIN, CT_F_SNAT, FE_F_SOURCE_RANGES, PROTO_ICMP, PROTO_TCP, PROTO_UDP,
    SCOPE_EXTERNAL, SCOPE_INTERNAL, SVC_F_AFFINITY, SVC_F_EXT_LOCAL, VERDICT_DROP,
};

use crate::{
    fib, frag, icmp,
    maps::{
        count, count_frontend, ct_map, rnat_map, source_allowed, LB4_AFFINITY, LB4_BACKENDS,
        LB4_FRONTENDS, LB4_NODE_ADDRS, LB4_SNAT_CLAIMS, LB6_AFFINITY, LB6_BACKENDS, LB_CONFIG,
        LB_SERVICES, LB_SLOTS,
    },
    nat::rewrite,
    packet::Packet,
    parse::{parse, Flow},
    reject,
};

const NS: u64 = 1_000_000_000;
/// Last-seen times are written at most this often, so a busy flow does not bounce a cache line.
const TOUCH_NS: u64 = NS;
const SNAT_TRIES: u32 = 16;
/// How long a reverse entry is safe from being reclaimed after it was last seen or claimed:
/// longer than any program run between a claim and its conntrack entry's insert.
const CLAIM_GRACE_NS: u64 = NS;

/// Not inlined into the programs: the path MTU check's frames (`fib`, `reject::frag_needed`)
/// then stack beside this one's, not under it.
#[inline(never)]
pub fn handle<P: Packet>(p: &mut P, scope: u8) -> Action {
    let Some(f) = parse(p) else {
        return Action::UNTOUCHED;
    };
    match f.proto {
        PROTO_TCP | PROTO_UDP => {}
        PROTO_ICMP => return icmp::handle_error(p, &f),
        _ => return Action::UNTOUCHED,
    }
    if f.later_fragment {
        return frag::follow(p, &f, frag::Hook::Ingress);
    }
    let action = service(p, &f, scope);
    frag::remember(p, &f, frag::Hook::Ingress, action);
    action
}

/// A TCP or UDP packet (or a datagram's first fragment) arriving at the node.
#[inline(always)]
fn service<P: Packet>(p: &mut P, f: &Flow, scope: u8) -> Action {
    // SAFETY: coarse clock read, no arguments.
    let now = unsafe { gen::bpf_ktime_get_coarse_ns() };
    let key = f.tuple();
    if let Some(ct) = ct_map(f.proto).get_ptr_mut(&key) {
        // SAFETY: map values stay valid for the program run; concurrent writers only race on
        // last_seen/flags, which is harmless.
        if let Some(action) = established(p, f, unsafe { &mut *ct }, now) {
            return action;
        }
    }
    let fe_key = Frontend4Key {
        addr: f.daddr,
        port: f.dport,
        proto: f.proto,
        scope,
    };
    // SAFETY: read-only use of the map value within this run.
    if let Some(fe) = unsafe { LB4_FRONTENDS.get(&fe_key) } {
        return new_flow(p, f, &key, fe, scope, now);
    }
    if let Some(rn) = rnat_map(f.proto).get_ptr_mut(&key) {
        // SAFETY: as for conntrack.
        return ingress_reply(p, f, unsafe { &mut *rn }, now);
    }
    Action::UNTOUCHED
}

/// A reply arriving from a backend. One addressed to the node (SNAT) or to be bounced (hairpin)
/// is translated here. Any other goes on as the backend sent it and gets its frontend back as it
/// leaves the node (`egress`): netfilter in between (kube-proxy's `--ctstate INVALID -j DROP`,
/// Calico, firewalld) then sees the reply of the flow it saw leave, not an INVALID stranger, and
/// its conntrack entries close as the connections do.
#[inline(always)]
fn ingress_reply<P: Packet>(p: &mut P, f: &Flow, rn: &mut RevNat4, now: u64) -> Action {
    if rn.flags & (CT_F_SNAT | CT_F_HAIRPIN) != 0 {
        return reply(p, f, rn, now);
    }
    Action::UNTOUCHED
}

#[inline(always)]
fn idle_timeout(proto: u8, flags: u8) -> u64 {
    timeout::idle(proto, flags) * NS
}

#[inline(always)]
fn alive(ct: &Ct4, proto: u8, now: u64) -> bool {
    now.saturating_sub(ct.last_seen_ns) < idle_timeout(proto, ct.flags)
}

/// Whether the backend's side of the flow was seen within the idle timeout: a server that
/// talks alone (UDP streaming, long downloads) keeps its flow although the client is quiet.
/// Only looked at when the client side has expired.
#[inline(always)]
fn replies_alive(ct: &Ct4, f: &Flow, now: u64) -> bool {
    let (daddr, dport) = if ct.flags & CT_F_SNAT != 0 {
        (ct.snat_addr, ct.snat_port)
    } else {
        (f.saddr, f.sport)
    };
    let key = Tuple4 {
        saddr: ct.backend_addr,
        daddr,
        sport: ct.backend_port,
        dport,
        proto: f.proto,
        _pad: [0; 3],
    };
    // SAFETY: read-only use of the map value within this run.
    match unsafe { rnat_map(f.proto).get(&key) } {
        Some(rn) => now.saturating_sub(rn.last_seen_ns) < idle_timeout(f.proto, ct.flags),
        None => false,
    }
}

/// A packet of a known flow: rewritten like the first one, as long as the flow is alive and its
/// backend still exists (terminating backends keep their flows). Otherwise None: a new flow.
#[inline(always)]
fn established<P: Packet>(p: &mut P, f: &Flow, ct: &mut Ct4, now: u64) -> Option<Action> {
    if (f.proto == PROTO_TCP && reopens(ct.flags, f.tcp_flags))
        || (!alive(ct, f.proto, now) && !replies_alive(ct, f, now))
    {
        return None;
    }
    // SAFETY: read-only use of the map value within this run.
    let be = unsafe { LB4_BACKENDS.get(ct.backend_id) };
    match be {
        Some(be) if be.addr == ct.backend_addr && be.port == ct.backend_port => {}
        _ => {
            count(stat::CT_BACKEND_GONE);
            return None;
        }
    }
    let flags = if f.proto == PROTO_TCP {
        after_client(ct.flags, f.tcp_flags)
    } else {
        ct.flags
    };
    if flags != ct.flags || now - ct.last_seen_ns > TOUCH_NS {
        ct.flags = flags;
        ct.last_seen_ns = now;
    }
    count(stat::CT_HIT);
    count_frontend(ct.stats_id, p.len() as u64);
    let (saddr, sport) = if ct.flags & CT_F_SNAT != 0 {
        (ct.snat_addr, ct.snat_port)
    } else {
        (f.saddr, f.sport)
    };
    if rewrite(p, f, saddr, ct.backend_addr, sport, ct.backend_port).is_err() {
        count(stat::DROP_REWRITE);
        return Some(Action::DROP);
    }
    Some(action_for(ct.flags, ct.backend_addr))
}

fn new_flow<P: Packet>(
    p: &mut P,
    f: &Flow,
    key: &Tuple4,
    fe: &Frontend4,
    scope: u8,
    now: u64,
) -> Action {
    // loadBalancerSourceRanges: new flows only, as kube-proxy's rules match ctstate NEW.
    if fe.flags & FE_F_SOURCE_RANGES != 0 && !source_allowed(fe.stats_id, f.saddr) {
        return Action::DROP;
    }
    count_frontend(fe.stats_id, p.len() as u64);
    // SAFETY: read-only use of the map value within this run.
    let Some(svc) = (unsafe { LB_SERVICES.get(fe.service_id) }) else {
        count(stat::DROP_MAP_FULL);
        return Action::DROP;
    };
    if svc.backend_count == 0 {
        return no_backend(p, f, svc.verdict);
    }
    // SAFETY: helper without arguments.
    let pick = unsafe { gen::bpf_get_prandom_u32() };
    let Some((backend_id, be)) = select::<V4>(fe.service_id, f.saddr, svc, now, pick) else {
        count(stat::DROP_MAP_FULL);
        return Action::DROP;
    };
    let mut ct = Ct4 {
        backend_id,
        service_id: fe.service_id,
        stats_id: fe.stats_id,
        backend_addr: be.addr,
        backend_port: be.port,
        flags: if scope == SCOPE_EXTERNAL {
            CT_F_EXTERNAL
        } else {
            0
        },
        created_ns: now,
        last_seen_ns: now,
        ..Default::default()
    };
    if f.proto == PROTO_TCP {
        ct.flags = after_client(ct.flags, f.tcp_flags);
    }
    let hairpin = scope == SCOPE_INTERNAL && be.addr == f.saddr;
    let snat = hairpin
        || (scope == SCOPE_EXTERNAL
            && svc.flags & SVC_F_EXT_LOCAL == 0
            && be.flags & BE_F_LOCAL == 0);
    if hairpin {
        ct.flags |= CT_F_HAIRPIN;
    }
    let mut rn = RevNat4 {
        saddr: f.daddr,
        daddr: f.saddr,
        sport: f.dport,
        dport: f.sport,
        flags: ct.flags,
        _pad: [0; 3],
        last_seen_ns: now,
    };
    let reply = Tuple4 {
        saddr: be.addr,
        daddr: f.saddr,
        sport: be.port,
        dport: f.sport,
        ..*key
    };
    if snat {
        ct.flags |= CT_F_SNAT;
        rn.flags = ct.flags;
        let Some(addr) = snat_addr(p, hairpin, be.addr) else {
            count(stat::DROP_NO_SNAT_ADDR);
            return Action::DROP;
        };
        let Some(port) = snat_port(&reply, addr, &rn, now) else {
            count(stat::DROP_SNAT_EXHAUSTED);
            return Action::DROP;
        };
        ct.snat_addr = addr;
        ct.snat_port = port;
    } else if rnat_map(f.proto).insert(&reply, &rn, 0).is_err() {
        count(stat::DROP_MAP_FULL);
        return Action::DROP;
    }
    if ct_map(f.proto).insert(key, &ct, 0).is_err() {
        count(stat::DROP_MAP_FULL);
        return Action::DROP;
    }
    count(stat::CT_NEW);
    let (saddr, sport) = if snat {
        (ct.snat_addr, ct.snat_port)
    } else {
        (f.saddr, f.sport)
    };
    if rewrite(p, f, saddr, be.addr, sport, be.port).is_err() {
        count(stat::DROP_REWRITE);
        return Action::DROP;
    }
    action_for(ct.flags, be.addr)
}

#[inline(always)]
fn no_backend<P: Packet>(p: &mut P, f: &Flow, verdict: u8) -> Action {
    if verdict == VERDICT_DROP {
        count(stat::DROP_NO_LOCAL_BACKEND);
        return Action::DROP;
    }
    count(stat::REJECT_NO_BACKEND);
    match reject::build(p, f) {
        Ok(()) => Action::BOUNCE,
        Err(()) => {
            count(stat::DROP_REWRITE);
            Action::DROP
        }
    }
}

/// The backend for a new flow: the client's affinity entry while it lasts and its backend can
/// take new connections, else slot `pick` modulo the backend count (a random number, or for the
/// socket hooks' UDP a hash of the socket). Shared by the packet path and the socket hooks, so
/// both choose alike and share affinity. `client` names the service and the client.
#[inline(always)]
pub fn select<F: Family>(
    service_id: u32,
    client: F::Client,
    svc: &Service,
    now: u64,
    pick: u32,
) -> Option<(u32, F::Backend)> {
    let key = F::affinity_key(service_id, client);
    let affinity = svc.flags & SVC_F_AFFINITY != 0;
    if affinity {
        if let Some(found) = F::sticky(&key, svc, now) {
            return Some(found);
        }
    }
    let slot = pick.checked_rem(svc.backend_count)?;
    // SAFETY: read-only use of map values within this run.
    let id = *unsafe { LB_SLOTS.get(SlotKey { service_id, slot }) }?;
    let be = F::backend(id)?;
    if affinity {
        // Failing to record affinity only loses stickiness, never the flow.
        F::remember(&key, id, &be, now);
    }
    Some((id, be))
}

/// An address family's backends and session affinity, as [`select`] uses them.
pub trait Family {
    type Backend: Copy;
    /// Who session affinity sees connecting: an address (IPv4); an address or a network
    /// namespace (IPv6, see `lb_common::AFFINITY_BY_NETNS`).
    type Client: Copy;
    type AffinityKey;
    fn affinity_key(service_id: u32, client: Self::Client) -> Self::AffinityKey;
    fn backend(id: u32) -> Option<Self::Backend>;
    /// The backend of the client's affinity entry, if used within the service's timeout and
    /// still the endpoint it was chosen as (an id reused for another is not followed), not
    /// terminating.
    fn sticky(key: &Self::AffinityKey, svc: &Service, now: u64) -> Option<(u32, Self::Backend)>;
    fn remember(key: &Self::AffinityKey, id: u32, be: &Self::Backend, now: u64);
}

pub struct V4;
pub struct V6;

/// [`Family`] for both: their maps' types differ, not their fields.
macro_rules! family {
    ($fam:ident, $backend:ident, $key:ident, $affinity:ident, $backends:ident, $affinities:ident) => {
        impl Family for $fam {
            type Backend = $backend;
            type Client = <$key as Client>::Of;
            type AffinityKey = $key;

            #[inline(always)]
            fn affinity_key(service_id: u32, client: Self::Client) -> $key {
                <$key as Client>::key(service_id, client)
            }

            #[inline(always)]
            fn backend(id: u32) -> Option<$backend> {
                // SAFETY: read-only copy of a map value.
                Some(*unsafe { $backends.get(id) }?)
            }

            #[inline(always)]
            fn sticky(key: &$key, svc: &Service, now: u64) -> Option<(u32, $backend)> {
                let entry = $affinities.get_ptr_mut(key)?;
                // SAFETY: map value valid for this run; racing writers only move last_used_ns.
                let entry = unsafe { &mut *entry };
                if now.saturating_sub(entry.last_used_ns) >= u64::from(svc.affinity_timeout) * NS {
                    return None;
                }
                let be = Self::backend(entry.backend_id)?;
                let same = be.addr == entry.backend_addr && be.port == entry.backend_port;
                if !same || be.flags & BE_F_TERMINATING != 0 {
                    return None;
                }
                entry.last_used_ns = now;
                Some((entry.backend_id, be))
            }

            #[inline(always)]
            fn remember(key: &$key, id: u32, be: &$backend, now: u64) {
                // Field by field: `..Default::default()` would build a whole second value on
                // the stack of the packet path (the 6.1 limit counts every byte).
                let entry = $affinity {
                    backend_id: id,
                    backend_addr: be.addr,
                    backend_port: be.port,
                    last_used_ns: now,
                    _pad: Default::default(),
                };
                let _ = $affinities.insert(key, &entry, 0);
            }
        }
    };
}

/// How each family's affinity key is made from the service and the client.
pub trait Client {
    type Of: Copy;
    fn key(service_id: u32, client: Self::Of) -> Self;
}

impl Client for AffinityKey4 {
    type Of = u32;
    #[inline(always)]
    fn key(service_id: u32, client: u32) -> Self {
        AffinityKey4 { service_id, client }
    }
}

impl Client for AffinityKey6 {
    /// The address or namespace, and `AFFINITY_BY_*`.
    type Of = (Addr6, u32);
    #[inline(always)]
    fn key(service_id: u32, (client, by): (Addr6, u32)) -> Self {
        AffinityKey6 {
            service_id,
            client,
            by,
        }
    }
}

family!(
    V4,
    Backend4,
    AffinityKey4,
    Affinity,
    LB4_BACKENDS,
    LB4_AFFINITY
);
family!(
    V6,
    Backend6,
    AffinityKey6,
    Affinity6,
    LB6_BACKENDS,
    LB6_AFFINITY
);

/// The node address a flow to `backend` leaves from, or the hairpin address.
#[inline(always)]
fn snat_addr<P: Packet>(p: &mut P, hairpin: bool, backend: u32) -> Option<u32> {
    if hairpin {
        return LB_CONFIG.get(0).map(|c| c.hairpin_addr);
    }
    let ifindex = fib::egress_ifindex(p, backend);
    // SAFETY: read-only use of the map value within this run.
    unsafe {
        LB4_NODE_ADDRS
            .get(ifindex)
            .or_else(|| LB4_NODE_ADDRS.get(p.ifindex()))
    }
    .map(|a| a.addr)
}

/// Take a SNAT source port: the first free one from a random start, where free means no reply
/// tuple is registered for it or the flow that held it is over. Inserting with BPF_NOEXIST makes
/// a fresh claim atomic between CPUs; `reclaim` does the same for a port whose flow is over.
#[inline(always)]
fn snat_port(reply: &Tuple4, addr: u32, rn: &RevNat4, now: u64) -> Option<u16> {
    let cfg = LB_CONFIG.get(0)?;
    let min = u32::from(cfg.snat_port_min);
    let range = u32::from(cfg.snat_port_max).saturating_sub(min) + 1;
    // SAFETY: helper without arguments.
    let start = unsafe { gen::bpf_get_prandom_u32() };
    let mut key = Tuple4 {
        daddr: addr,
        ..*reply
    };
    for i in 0..SNAT_TRIES {
        key.dport = ((start.wrapping_add(i).checked_rem(range)? + min) as u16).to_be();
        if rnat_map(key.proto)
            .insert(&key, rn, u64::from(BPF_NOEXIST))
            .is_ok()
            || reclaim(&key, rn, now)
        {
            return Some(key.dport);
        }
    }
    None
}

/// Take over the reverse entry at `key` for the flow `rn` if the flow that holds it is over.
/// Several CPUs may find the same entry stale at once: only the one holding the port's claim
/// (`LB4_SNAT_CLAIMS`) decides, and it looks again first. The entry it writes has just been seen,
/// so it is not stale for `CLAIM_GRACE_NS` (even before its conntrack entry exists), and a CPU
/// that judged the old entry is turned away by the second look.
#[inline(always)]
fn reclaim(key: &Tuple4, rn: &RevNat4, now: u64) -> bool {
    if !stale(key, now)
        || LB4_SNAT_CLAIMS
            .insert(key, &0, u64::from(BPF_NOEXIST))
            .is_err()
    {
        return false;
    }
    let won = stale(key, now) && rnat_map(key.proto).insert(key, rn, 0).is_ok();
    let _ = LB4_SNAT_CLAIMS.remove(key);
    won
}

/// A reverse entry whose flow is over: not seen for `CLAIM_GRACE_NS`, and its conntrack entry
/// gone, expired, or holding another port.
#[inline(always)]
fn stale(key: &Tuple4, now: u64) -> bool {
    // SAFETY: read-only use of map values within this run.
    let Some(rn) = (unsafe { rnat_map(key.proto).get(key) }) else {
        return true;
    };
    let idle = now.saturating_sub(rn.last_seen_ns);
    if idle < CLAIM_GRACE_NS {
        return false;
    }
    let ct_key = rn.client(key.proto);
    match unsafe { ct_map(key.proto).get(&ct_key) } {
        Some(ct) => {
            let hold = timeout::hold(key.proto, ct.flags) * NS;
            ct.snat_port != key.dport
                || ct.snat_addr != key.daddr
                || (now.saturating_sub(ct.last_seen_ns) >= hold && idle >= hold)
        }
        None => true,
    }
}

/// A packet leaving the node (TC egress of pod and external interfaces): a backend's reply to a
/// client whose source lb preserved gets its frontend back, whether it entered the node from a
/// local pod or a remote one (`ingress_reply` left it alone) or was sent by the node itself (a
/// Service whose endpoint is the node's own address, as the `kubernetes` Service on a
/// control-plane node, or a hostNetwork pod). No reverse entry is keyed by a frontend address,
/// so nothing is translated twice. A fragmented reply is translated whole (`frag`).
pub fn egress<P: Packet>(p: &mut P) -> Action {
    let Some(f) = parse(p) else {
        return Action::UNTOUCHED;
    };
    if f.proto != PROTO_TCP && f.proto != PROTO_UDP {
        return Action::UNTOUCHED;
    }
    if f.later_fragment {
        return frag::follow(p, &f, frag::Hook::Egress);
    }
    let action = egress_reply(p, &f);
    frag::remember(p, &f, frag::Hook::Egress, action);
    action
}

#[inline(always)]
fn egress_reply<P: Packet>(p: &mut P, f: &Flow) -> Action {
    let Some(rn) = rnat_map(f.proto).get_ptr_mut(&f.tuple()) else {
        return Action::UNTOUCHED;
    };
    // SAFETY: map value valid for this run; racing writers only move last_seen_ns.
    let rn = unsafe { &mut *rn };
    // SNAT and hairpin replies are addressed to the node or bounced: ingress handles them.
    if rn.flags & (CT_F_SNAT | CT_F_HAIRPIN) != 0 {
        return Action::UNTOUCHED;
    }
    // SAFETY: coarse clock read, no arguments.
    let now = unsafe { gen::bpf_ktime_get_coarse_ns() };
    match reply(p, f, rn, now).verdict {
        Verdict::Drop => Action::DROP,
        // Already on its way out: whatever ingress would have done with it is the stack's now.
        _ => Action::PASS,
    }
}

/// A reply from a backend: source back to the frontend, destination back to the client.
#[inline(always)]
fn reply<P: Packet>(p: &mut P, f: &Flow, rn: &mut RevNat4, now: u64) -> Action {
    if now - rn.last_seen_ns > TOUCH_NS {
        rn.last_seen_ns = now;
    }
    backend_state(f, rn);
    count(stat::RNAT_HIT);
    if rewrite(p, f, rn.saddr, rn.daddr, rn.sport, rn.dport).is_err() {
        count(stat::DROP_REWRITE);
        return Action::DROP;
    }
    reply_action(rn.flags, rn.daddr)
}

/// What a backend's reply tells its flow: that it answered (a TCP client's next ACK completes the
/// handshake; a UDP flow gets the longer timeout of a flow with replies) and, for TCP, whether it
/// closed (FIN, RST; a UDP flow has no flags here). Written to the flow's conntrack entry, and
/// remembered in the reverse entry so that later replies skip the lookup until the backend closes.
#[inline(always)]
fn backend_state(f: &Flow, rn: &mut RevNat4) {
    let set = after_reply(rn.flags, f.tcp_flags);
    if set == 0 {
        return;
    }
    rn.flags |= set;
    let key = rn.client(f.proto);
    if let Some(ct) = ct_map(key.proto).get_ptr_mut(&key) {
        // SAFETY: map value valid for this run; racing writers only add flags.
        unsafe { (*ct).flags |= set };
    }
}
