//! The maps, pinned by name under the agent's pin path so they outlive the agent.
use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    macros::map,
    maps::{
        lpm_trie::Key as LpmKey, Array, DevMapHash, HashMap, LpmTrie, LruHashMap, PerCpuArray,
        PerCpuHashMap,
    },
};
use lb_common::{
    capacity, Addr6, Affinity, Affinity6, AffinityKey4, AffinityKey6, Backend4, Backend6, Config,
    Counters, Ct4, Frontend4, Frontend4Key, Frontend6Key, IfaceInfo, NodeAddr4, RevNat4, Service,
    ServiceName, SlotKey, SockConfig, SockConfig6, SourceRange4, SourceRange6, Tuple4, PROTO_TCP,
};

#[map]
pub static LB4_FRONTENDS: HashMap<Frontend4Key, Frontend4> =
    HashMap::pinned(capacity::FRONTENDS, 0);

#[map]
pub static LB_SERVICES: HashMap<u32, Service> = HashMap::pinned(capacity::SERVICES, 0);

#[map]
pub static LB_SLOTS: HashMap<SlotKey, u32> = HashMap::pinned(capacity::SLOTS, 0);

#[map]
pub static LB4_BACKENDS: HashMap<u32, Backend4> = HashMap::pinned(capacity::BACKENDS, 0);

/// Client-direction TCP flows. LRU: a full table evicts the least recently used flow.
#[map]
pub static LB4_CT: LruHashMap<Tuple4, Ct4> = LruHashMap::pinned(capacity::CT, 0);

/// Reply-direction TCP flows, keyed as replies arrive; also the SNAT port allocation table (a
/// port is taken by inserting its reply tuple with BPF_NOEXIST).
#[map]
pub static LB4_RNAT: LruHashMap<Tuple4, RevNat4> = LruHashMap::pinned(capacity::CT, 0);

/// The same two for every other protocol (UDP). Apart from TCP's so that a burst of short UDP
/// flows (DNS at thousands of queries a second) evicts only UDP flows: in one shared LRU it would
/// push out idle TCP connections, whose next packet would then meet another backend and a RST.
#[map]
pub static LB4_CT_ANY: LruHashMap<Tuple4, Ct4> = LruHashMap::pinned(capacity::CT_ANY, 0);

#[map]
pub static LB4_RNAT_ANY: LruHashMap<Tuple4, RevNat4> = LruHashMap::pinned(capacity::CT_ANY, 0);

/// The client-direction conntrack table of protocol `proto`.
#[inline(always)]
pub fn ct_map(proto: u8) -> &'static LruHashMap<Tuple4, Ct4> {
    if proto == PROTO_TCP {
        &LB4_CT
    } else {
        &LB4_CT_ANY
    }
}

/// The reply-direction table of protocol `proto`.
#[inline(always)]
pub fn rnat_map(proto: u8) -> &'static LruHashMap<Tuple4, RevNat4> {
    if proto == PROTO_TCP {
        &LB4_RNAT
    } else {
        &LB4_RNAT_ANY
    }
}

/// SNAT ports being reclaimed (`lb::reclaim`): a CPU that inserts a port's reply tuple here
/// with BPF_NOEXIST may take the port over, and removes the entry before its run ends.
#[map]
pub static LB4_SNAT_CLAIMS: HashMap<Tuple4, u8> = HashMap::pinned(capacity::SNAT_CLAIMS, 0);

#[map]
pub static LB4_AFFINITY: LruHashMap<AffinityKey4, Affinity> =
    LruHashMap::pinned(capacity::AFFINITY, 0);

#[map]
pub static LB4_NODE_ADDRS: HashMap<u32, NodeAddr4> = HashMap::pinned(capacity::NODE_ADDRS, 0);

#[map]
pub static LB_CONFIG: Array<Config> = Array::pinned(1, 0);

#[map]
pub static LB_FRONTEND_STATS: PerCpuArray<Counters> = PerCpuArray::pinned(capacity::FRONTENDS, 0);

#[map]
pub static LB_GLOBAL_STATS: PerCpuArray<u64> = PerCpuArray::pinned(lb_common::stat::COUNT, 0);

/// Names of the backend sets, for userspace only. Not preallocated: most services are small and
/// the names are large.
#[map]
pub static LB_SVC_NAMES: HashMap<u32, ServiceName> =
    HashMap::pinned(capacity::SERVICES, BPF_F_NO_PREALLOC);

/// What the agent attached to each interface, for userspace only (lbctl interfaces).
#[map]
pub static LB_IFACES: HashMap<u32, IfaceInfo> =
    HashMap::pinned(capacity::IFACES, BPF_F_NO_PREALLOC);

/// Frames lb transmitted (XDP_TX, XDP_REDIRECT) that the kernel dropped, per CPU and by the
/// ifindex of the external interface lb's program ran on. The agent creates an entry for each
/// external interface it attaches; the `xmit` tracepoint programs only add to existing entries,
/// which keeps the XDP of other programs and interfaces out of it.
#[map]
pub static LB_XMIT_DROPS: PerCpuHashMap<u32, u64> =
    PerCpuHashMap::pinned(capacity::IFACES, BPF_F_NO_PREALLOC);

/// The interfaces XDP redirects to, by ifindex (value: the same ifindex): the external
/// interfaces lb runs XDP on, kept by the agent. A route that leaves through any other device (a
/// tunnel, a bridge, an L3 device without Ethernet header) is handed to TC instead: native XDP
/// cannot transmit on devices without `ndo_xdp_xmit` and the kernel would drop the frame
/// silently, and an L3 device would take the FIB's MAC addresses as its payload.
#[map]
pub static LB_XDP_TX_PORTS: DevMapHash = DevMapHash::pinned(capacity::IFACES, 0);

/// The socket hooks' settings (`sock`), written by the agent.
#[map]
pub static LB_SOCK_CONFIG: Array<SockConfig> = Array::pinned(1, 0);

/// connect()/sendmsg() calls the socket hooks translated, per CPU and frontend (by stats id).
#[map]
pub static LB_SOCK_STATS: PerCpuArray<u64> = PerCpuArray::pinned(capacity::FRONTENDS, 0);

/// loadBalancerSourceRanges of the frontends flagged `FE_F_SOURCE_RANGES`, by stats id.
#[map]
pub static LB4_SRC_RANGES: LpmTrie<SourceRange4, u8> = LpmTrie::pinned(capacity::SOURCE_RANGES, 0);

/// New flows dropped per frontend for a source outside its ranges.
#[map]
pub static LB_SRC_DROPS: PerCpuArray<u64> = PerCpuArray::pinned(capacity::FRONTENDS, 0);

/// The IPv6 frontends, backends, source ranges and session affinity, beside the IPv4 ones
/// (sets, slots, names and counters are shared: see `lb_common::ids`). Written by the agent
/// ahead of the IPv6 datapath. Not preallocated: a node without IPv6 Services pays nothing.
#[map]
pub static LB6_FRONTENDS: HashMap<Frontend6Key, Frontend4> =
    HashMap::pinned(capacity::FRONTENDS, BPF_F_NO_PREALLOC);

#[map]
pub static LB6_BACKENDS: HashMap<u32, Backend6> =
    HashMap::pinned(capacity::BACKENDS, BPF_F_NO_PREALLOC);

#[map]
pub static LB6_SRC_RANGES: LpmTrie<SourceRange6, u8> = LpmTrie::pinned(capacity::SOURCE_RANGES, 0);

#[map]
pub static LB6_AFFINITY: LruHashMap<AffinityKey6, Affinity6> =
    LruHashMap::pinned(capacity::AFFINITY, 0);

/// Whether a new flow from `saddr` may reach the frontend with ranges `stats_id`; one that may
/// not is counted. Out of line: its key stays out of the callers' frames (Linux 6.1's stack
/// limit counts the deepest call chain, and the TC one is at it).
#[inline(never)]
pub fn source_allowed(stats_id: u32, saddr: u32) -> bool {
    // The stats id is matched whole, then as many bits of the address as the range has.
    let key = LpmKey::new(
        64,
        SourceRange4 {
            stats_id,
            addr: saddr,
        },
    );
    if LB4_SRC_RANGES.get(&key).is_some() {
        return true;
    }
    count_source_drop(stats_id);
    false
}

/// The same for an IPv6 source (the socket hooks only, which have stack to spare).
#[inline(always)]
pub fn source_allowed6(stats_id: u32, saddr: Addr6) -> bool {
    let key = LpmKey::new(
        32 + 128,
        SourceRange6 {
            stats_id,
            addr: saddr,
        },
    );
    if LB6_SRC_RANGES.get(&key).is_some() {
        return true;
    }
    count_source_drop(stats_id);
    false
}

#[inline(always)]
fn count_source_drop(stats_id: u32) {
    if let Some(c) = LB_SRC_DROPS.get_ptr_mut(stats_id) {
        // SAFETY: per-CPU slot, no concurrent writer.
        unsafe { *c += 1 };
    }
}

/// The node's own IPv4 addresses (value unused), kept by the agent.
#[map]
pub static LB4_HOST_ADDRS: HashMap<u32, u8> = HashMap::pinned(capacity::HOST_ADDRS, 0);

/// The node's own IPv6 addresses (value unused), kept by the agent.
#[map]
pub static LB6_HOST_ADDRS: HashMap<Addr6, u8> = HashMap::pinned(capacity::HOST_ADDRS, 0);

/// The IPv6 socket hooks' settings beside `LB_SOCK_CONFIG`.
#[map]
pub static LB6_SOCK_CONFIG: Array<SockConfig6> = Array::pinned(1, 0);

#[inline(always)]
pub fn count(stat: u32) {
    if let Some(c) = LB_GLOBAL_STATS.get_ptr_mut(stat) {
        // SAFETY: per-CPU slot, no concurrent writer.
        unsafe { *c += 1 };
    }
}

#[inline(always)]
pub fn count_frontend(stats_id: u32, bytes: u64) {
    if let Some(c) = LB_FRONTEND_STATS.get_ptr_mut(stats_id) {
        // SAFETY: per-CPU slot, no concurrent writer.
        unsafe {
            (*c).packets += 1;
            (*c).bytes += bytes;
        }
    }
}

/// Benchmarks only: the frame `lb_xdp_sink` restores (see `BENCH_FRAME_LEN`). Not pinned: the
/// agent never writes it.
#[map]
pub static LB_BENCH_FRAME: Array<[u8; lb_common::BENCH_FRAME_LEN]> = Array::with_max_entries(1, 0);
