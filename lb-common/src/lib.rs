//! Map keys and values shared by the kernel programs (lb-ebpf) and userspace (lb-userspace).
//!
//! Every type is `#[repr(C)]` with explicit padding fields that writers zero, so the bytes the
//! kernel hashes are fully defined. Addresses and ports are in network byte order, as they sit in
//! the packet; everything else is host order. IPv4 maps carry a `4` in their names: IPv6 will get
//! maps of its own rather than a reshaped key.
#![no_std]

/// Bumped whenever a map's layout or meaning changes; pinned maps of another version are refused.
pub const ABI_VERSION: u32 = 2;

pub const PROTO_ICMP: u8 = 1;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;

/// Where a packet entered the node; a frontend can lead to a different backend set per scope
/// (externalTrafficPolicy applies to the external scope, internalTrafficPolicy to the internal).
pub const SCOPE_EXTERNAL: u8 = 0;
/// The packet came from a pod on this node (TC ingress on a pod interface).
pub const SCOPE_INTERNAL: u8 = 1;

/// Map names, as pinned under the pin path.
pub mod csum;

pub mod map_names {
    pub const FRONTENDS4: &str = "LB4_FRONTENDS";
    pub const SERVICES: &str = "LB_SERVICES";
    pub const SLOTS: &str = "LB_SLOTS";
    pub const BACKENDS4: &str = "LB4_BACKENDS";
    /// TCP flows, client direction (the name predates the split from other protocols).
    pub const CT4: &str = "LB4_CT";
    /// TCP flows, reply direction and SNAT ports.
    pub const RNAT4: &str = "LB4_RNAT";
    /// Flows of every other protocol (UDP), client direction: a table of their own, so that
    /// many short UDP flows never evict TCP connections.
    pub const CT_ANY4: &str = "LB4_CT_ANY";
    /// The same, reply direction.
    pub const RNAT_ANY4: &str = "LB4_RNAT_ANY";
    pub const AFFINITY4: &str = "LB4_AFFINITY";
    pub const NODE_ADDRS4: &str = "LB4_NODE_ADDRS";
    pub const CONFIG: &str = "LB_CONFIG";
    pub const FRONTEND_STATS: &str = "LB_FRONTEND_STATS";
    pub const GLOBAL_STATS: &str = "LB_GLOBAL_STATS";
    /// [`super::ServiceName`] with port names of up to 63 bytes. It replaced `LB_SERVICE_NAMES`
    /// (port names of 15), which an agent finding it migrates here and removes: the kernel never
    /// reads either, so the rest of the maps (flows above all) are adopted as they are.
    pub const SERVICE_NAMES: &str = "LB_SVC_NAMES";
    /// The pre-0.x name map, see [`SERVICE_NAMES`].
    pub const SERVICE_NAMES_V1: &str = "LB_SERVICE_NAMES";
    /// What lb attached to each interface, and why (userspace only: lbctl interfaces).
    pub const IFACES: &str = "LB_IFACES";
    /// Transmitted frames the kernel dropped, per external interface (the `xmit` tracepoints).
    pub const XMIT_DROPS: &str = "LB_XMIT_DROPS";
    /// The interfaces XDP may redirect to (a DEVMAP_HASH of the external XDP interfaces).
    pub const XDP_TX_PORTS: &str = "LB_XDP_TX_PORTS";
    /// The socket hooks' settings ([`super::SockConfig`]).
    pub const SOCK_CONFIG: &str = "LB_SOCK_CONFIG";
    /// Per-frontend count of connect()/sendmsg() calls the socket hooks translated (per CPU,
    /// indexed like `LB_FRONTEND_STATS`).
    pub const SOCK_STATS: &str = "LB_SOCK_STATS";
    /// loadBalancerSourceRanges, per LoadBalancer frontend (an LPM trie of [`super::SourceRange4`]).
    pub const SOURCE_RANGES4: &str = "LB4_SRC_RANGES";
    /// The IPv6 maps beside the IPv4 ones. Backend sets, their slots and names, and the
    /// per-frontend counters are shared: each family owns a range of set ids
    /// ([`super::ids`]) and the frontends of both share the stats ids.
    pub const FRONTENDS6: &str = "LB6_FRONTENDS";
    pub const BACKENDS6: &str = "LB6_BACKENDS";
    pub const SOURCE_RANGES6: &str = "LB6_SRC_RANGES";
    pub const AFFINITY6: &str = "LB6_AFFINITY";
    /// Per-frontend count of new flows dropped for a source outside the ranges (per CPU, indexed
    /// like `LB_FRONTEND_STATS`).
    pub const SOURCE_RANGE_DROPS: &str = "LB_SRC_DROPS";
    /// The node's own IPv4 addresses: externalIPs and LoadBalancer IPs are translated at the
    /// socket only when the node holds them (the CVE-2020-8554 mitigation).
    pub const HOST_ADDRS4: &str = "LB4_HOST_ADDRS";
    /// The node's own IPv6 addresses, for the same.
    pub const HOST_ADDRS6: &str = "LB6_HOST_ADDRS";
    /// The IPv6 socket hooks' settings beside `LB_SOCK_CONFIG` ([`super::SockConfig6`]).
    pub const SOCK_CONFIG6: &str = "LB6_SOCK_CONFIG";
    /// SNAT ports being taken over from a flow that is over, held for the length of one
    /// program run (kernel only: the lock that lets one CPU at a time reclaim a port).
    pub const SNAT_CLAIMS4: &str = "LB4_SNAT_CLAIMS";
    /// Socket-local storage: the Services a socket was translated for ([`super::SockRevNat4`]).
    pub const SOCK_RNAT4: &str = "LB4_SOCK_RNAT";
    /// The same for native IPv6 Services ([`super::SockRevNat6`]).
    pub const SOCK_RNAT6: &str = "LB6_SOCK_RNAT";
    /// Benchmarks only, not pinned: see [`super::BENCH_FRAME_LEN`].
    pub const BENCH_FRAME: &str = "LB_BENCH_FRAME";
}

/// Length of the headers `lb_xdp_sink` writes back into every frame it receives (Ethernet, IPv4
/// and TCP without options: all that lb rewrites in what the forwarding benchmark sends).
/// Live-frames test runs recycle their pages without re-initialising the data, so without this
/// the program under test would see its own rewritten frame again instead of the original.
pub const BENCH_FRAME_LEN: usize = 54;

/// Default capacities; userspace may override them at load time.
pub mod capacity {
    pub const FRONTENDS: u32 = 262_144;
    pub const SERVICES: u32 = 131_072;
    pub const SLOTS: u32 = 1_048_576;
    pub const BACKENDS: u32 = 524_288;
    /// TCP flows (`--conntrack-max` sets it; see the agent for its default).
    pub const CT: u32 = 262_144;
    /// Flows of other protocols (`--conntrack-udp-max`).
    pub const CT_ANY: u32 = 131_072;
    pub const AFFINITY: u32 = 65_536;
    pub const NODE_ADDRS: u32 = 64;
    pub const IFACES: u32 = 4_096;
    pub const HOST_ADDRS: u32 = 1_024;
    /// Reclaims in progress: at most one per CPU at a time.
    pub const SNAT_CLAIMS: u32 = 1_024;
    /// loadBalancerSourceRanges entries, over all LoadBalancer frontends.
    pub const SOURCE_RANGES: u32 = 65_536;
}

/// Key of `LB4_FRONTENDS`: what a packet is addressed to, and where it came from.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Frontend4Key {
    pub addr: u32,
    pub port: u16,
    pub proto: u8,
    pub scope: u8,
}

/// An IPv6 address as the packet holds it: four words in network byte order.
pub type Addr6 = [u32; 4];

/// Key of `LB6_FRONTENDS` (its value is a [`Frontend4`], which holds no address).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Frontend6Key {
    pub addr: Addr6,
    pub port: u16,
    pub proto: u8,
    pub scope: u8,
}

/// The id ranges of each family. Sets live in the shared `LB_SERVICES`, `LB_SLOTS` and
/// `LB_SVC_NAMES`, so an id tells the family its slots' backends belong to; backend ids follow
/// the same split so that an id read anywhere (conntrack, lbctl) names one family's backend.
pub mod ids {
    use core::ops::Range;
    /// Id 0 is never handed out (a zeroed entry names nothing).
    pub const IPV4: Range<u32> = 1..1 << 30;
    pub const IPV6: Range<u32> = 1 << 30..1 << 31;
}

/// Frontend kinds, for display and statistics only: the datapath treats them all alike.
pub const KIND_CLUSTER_IP: u8 = 0;
pub const KIND_NODE_PORT: u8 = 1;
pub const KIND_LOAD_BALANCER: u8 = 2;
pub const KIND_EXTERNAL_IP: u8 = 3;

/// Value of `LB4_FRONTENDS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Frontend4 {
    /// Key into `LB_SERVICES`.
    pub service_id: u32,
    /// Index into `LB_FRONTEND_STATS`.
    pub stats_id: u32,
    pub kind: u8,
    /// `FE_F_*` (a byte that was padding before: older agents wrote 0 there).
    pub flags: u8,
    pub _pad: [u8; 2],
}

/// New flows to this frontend must come from a source in `LB4_SRC_RANGES` under its `stats_id`
/// (a LoadBalancer IP with `loadBalancerSourceRanges`); others are dropped.
pub const FE_F_SOURCE_RANGES: u8 = 1 << 0;

/// The data of an `LB4_SRC_RANGES` key (an LPM trie): a frontend's `stats_id`, always matched
/// whole (the key's prefix length is 32 + the range's), then the source address (network order).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct SourceRange4 {
    pub stats_id: u32,
    pub addr: u32,
}

/// The data of an `LB6_SRC_RANGES` key: as [`SourceRange4`], prefix length 32 + the range's.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct SourceRange6 {
    pub stats_id: u32,
    pub addr: Addr6,
}

/// Only local endpoints for external traffic; the client source address is preserved.
pub const SVC_F_EXT_LOCAL: u8 = 1 << 0;
/// Only local endpoints for traffic from pods (internalTrafficPolicy=Local).
pub const SVC_F_INT_LOCAL: u8 = 1 << 1;
/// sessionAffinity: ClientIP, with `affinity_timeout` seconds.
pub const SVC_F_AFFINITY: u8 = 1 << 2;

/// What a frontend answers when its backend set is empty.
pub const VERDICT_REJECT: u8 = 0;
pub const VERDICT_DROP: u8 = 1;

/// Value of `LB_SERVICES`: one backend set (a service port as seen from one scope).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Service {
    /// Slots `0..backend_count` of this service in `LB_SLOTS` are valid.
    pub backend_count: u32,
    /// Seconds; meaningful with `SVC_F_AFFINITY`.
    pub affinity_timeout: u32,
    pub flags: u8,
    pub verdict: u8,
    pub _pad: [u8; 2],
}

/// A backend set serves every endpoint usable in the cluster (`POLICY_CLUSTER`) or only this
/// node's (`POLICY_LOCAL`, for externalTrafficPolicy/internalTrafficPolicy Local).
pub const POLICY_CLUSTER: u8 = 0;
pub const POLICY_LOCAL: u8 = 1;

/// Value of `LB_SVC_NAMES` (key: service id): the Kubernetes service port a backend set
/// belongs to. The kernel never reads it; lbctl shows it and a restarted agent re-keys its ids
/// with it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServiceName {
    /// `namespace/name`, NUL-padded (each part is a DNS label of at most 63 bytes).
    pub name: [u8; 128],
    /// The Service port's name (a DNS label of at most 63 bytes, empty for a lone unnamed port),
    /// NUL-padded.
    pub port_name: [u8; 64],
    pub proto: u8,
    /// `POLICY_*`.
    pub policy: u8,
    pub _pad: [u8; 6],
}

impl Default for ServiceName {
    fn default() -> Self {
        ServiceName {
            name: [0; 128],
            port_name: [0; 64],
            proto: 0,
            policy: 0,
            _pad: [0; 6],
        }
    }
}

/// `IfaceInfo::role`: north-south (XDP, or TC ingress with `--xdp-mode off`).
pub const IFACE_EXTERNAL: u8 = 0;
/// Host side of a pod interface (TC).
pub const IFACE_POD: u8 = 1;
/// A tunnel of the pod overlay (TC ingress with the north-south program, and TC egress).
pub const IFACE_TUNNEL: u8 = 2;

/// `IfaceInfo::xdp_mode`.
pub const XDP_MODE_NONE: u8 = 0;
pub const XDP_MODE_NATIVE: u8 = 1;
pub const XDP_MODE_GENERIC: u8 = 2;

/// Value of `LB_IFACES` (key: ifindex): what the agent attached and why, for lbctl. The kernel
/// never reads it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct IfaceInfo {
    /// The interface name when attached, NUL-padded (IFNAMSIZ).
    pub name: [u8; 16],
    /// `IFACE_*`.
    pub role: u8,
    /// `XDP_MODE_*`.
    pub xdp_mode: u8,
    /// Why that mode: an index into the agent's reasons (lb-userspace `XdpReason`).
    pub reason: u8,
    pub _pad: [u8; 5],
}

impl IfaceInfo {
    /// The name, without its padding ("" if it is not UTF-8).
    pub fn name(&self) -> &str {
        padded_str(&self.name)
    }
}

/// The text of a NUL-padded byte array (a name or path field of a map value); "" if it is not
/// UTF-8.
pub fn padded_str(bytes: &[u8]) -> &str {
    let end = bytes.iter().position(|c| *c == 0).unwrap_or(bytes.len());
    core::str::from_utf8(&bytes[..end]).unwrap_or("")
}

/// `SockConfig::mode`: the socket hooks translate nothing (`--socket-lb off`) ...
pub const SOCK_LB_OFF: u8 = 0;
/// ... sockets of the agent's own network namespace only (the node: `--socket-lb host`) ...
pub const SOCK_LB_HOST: u8 = 1;
/// ... or every socket in the cgroup, pods' too (`--socket-lb all`).
pub const SOCK_LB_ALL: u8 = 2;

/// Value of `LB_SOCK_CONFIG[0]`: what the cgroup socket hooks do.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SockConfig {
    /// The agent's network namespace (SO_NETNS_COOKIE): its sockets are the node's.
    pub netns_cookie: u64,
    /// The cgroup (v2) the hooks are attached to, by id (its inode), for lbctl.
    pub cgroup_id: u64,
    /// The node's address: the client address session affinity is keyed by for the node's own
    /// sockets (what the packet path sees when the node's traffic reaches it), and where a
    /// NodePort asked for on a loopback address (`localhost:NODEPORT`) is looked up.
    pub node_addr: u32,
    /// `SOCK_LB_*`.
    pub mode: u8,
    pub _pad: [u8; 3],
    /// Where the hooks are attached (the cgroup's path as the agent saw it), NUL-padded; lbctl only.
    pub cgroup_path: [u8; 128],
}

/// Value of `LB6_SOCK_CONFIG[0]`: what the IPv6 socket hooks need beside [`SockConfig`] (whose
/// size is part of the pinned ABI).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SockConfig6 {
    /// The node's IPv6 address (zero: none): the client session affinity and
    /// loadBalancerSourceRanges see for the node's own IPv6 sockets.
    pub node_addr: Addr6,
}

impl Default for SockConfig {
    fn default() -> Self {
        SockConfig {
            netns_cookie: 0,
            cgroup_id: 0,
            node_addr: 0,
            mode: SOCK_LB_OFF,
            _pad: [0; 3],
            cgroup_path: [0; 128],
        }
    }
}

/// One Service a socket was translated for: replies from `backend` are shown as from `service`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SockRev4 {
    pub backend_addr: u32,
    pub service_addr: u32,
    pub backend_port: u16,
    pub service_port: u16,
}

/// How many Services one socket remembers (an unconnected UDP socket may send to several).
pub const SOCK_REV_SLOTS: usize = 4;

/// Value of the socket-local `LB4_SOCK_RNAT`: freed by the kernel with the socket, so it cannot
/// leak, and never evicted while the socket lives (an LRU keyed by cookie can drop the entry of a
/// live socket under pressure, and getpeername()/recvmsg() then show the backend).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SockRevNat4 {
    pub entries: [SockRev4; SOCK_REV_SLOTS],
    /// The slot the next new Service takes (round robin once all are used).
    pub next: u32,
    pub _pad: u32,
}

/// [`SockRev4`] for IPv6 sockets' native IPv6 Services.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SockRev6 {
    pub backend_addr: Addr6,
    pub service_addr: Addr6,
    pub backend_port: u16,
    pub service_port: u16,
}

/// Value of the socket-local `LB6_SOCK_RNAT`, as [`SockRevNat4`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SockRevNat6 {
    pub entries: [SockRev6; SOCK_REV_SLOTS],
    pub next: u32,
    pub _pad: u32,
}

/// Key of `LB_SLOTS`: the n-th backend of a service.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct SlotKey {
    pub service_id: u32,
    pub slot: u32,
}

pub const BE_F_LOCAL: u8 = 1 << 0;
pub const BE_F_TERMINATING: u8 = 1 << 1;

/// Value of `LB4_BACKENDS` (key: backend id, u32).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Backend4 {
    pub addr: u32,
    pub port: u16,
    pub flags: u8,
    pub _pad: u8,
}

/// Value of `LB6_BACKENDS` (key: backend id, u32, in [`ids::IPV6`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Backend6 {
    pub addr: Addr6,
    pub port: u16,
    pub flags: u8,
    pub _pad: u8,
}

/// A 5-tuple as it appears in a packet: key of `LB4_CT` (the client's original direction) and of
/// `LB4_RNAT` (the reply direction as it arrives from the backend).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub struct Tuple4 {
    pub saddr: u32,
    pub daddr: u32,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub _pad: [u8; 3],
}

/// Conntrack flags.
pub const CT_F_SNAT: u8 = 1 << 0;
/// The client and the backend are the same pod: packets go back out the interface they came in.
pub const CT_F_HAIRPIN: u8 = 1 << 1;
/// TCP: the client sent FIN or RST.
pub const CT_F_CLOSING: u8 = 1 << 3;
/// The client is outside the node: replies leave through an external interface.
pub const CT_F_EXTERNAL: u8 = 1 << 4;
/// TCP: the client acknowledged after the backend answered (the handshake went through). A
/// first packet without SYN (an ACK flood, or a flow lb lost) does not make a flow established.
pub const CT_F_ESTABLISHED: u8 = 1 << 5;
/// TCP: the backend has answered (a reply was reverse-NATed).
pub const CT_F_REPLIED: u8 = 1 << 6;

/// What the datapath does with a packet, decided from a flow's flags alone; each hook turns it
/// into its own return code (XDP_TX, TC redirect, ...).
pub mod action {
    use super::{CT_F_EXTERNAL, CT_F_HAIRPIN, CT_F_SNAT};

    #[derive(Clone, Copy)]
    #[repr(u32)]
    pub enum Verdict {
        /// Not lb's: left exactly as it came. TC hands it to the next program of the tcx chain
        /// (TCX_NEXT), so programs attached after lb still see the traffic lb does not touch.
        Untouched,
        /// Rewritten for a destination the stack delivers (a local pod).
        Pass,
        Drop,
        /// Rewritten for a destination outside the node ([`Action::daddr`]), with a node address as
        /// its source: XDP transmits it itself when it can, TC redirects it to the next hop (the
        /// stack would drop it as a martian).
        Forward,
        /// Send back out the interface it came in on, MAC addresses swapped (rejects, hairpin).
        Bounce,
    }

    /// A [`Verdict`] and, for `Forward`, the new destination address (0 otherwise).
    ///
    /// Not an enum with data: LLVM fills the payload a variant does not use from whatever register
    /// is at hand, and verifiers before Linux 6.14 reject storing a register that was never written
    /// on that path (seen on 6.1 and 6.12: "R2 !read_ok" after a stats-counter lookup, which 6.14+
    /// knows cannot fail for a constant key into an array). Here every field is always set.
    #[derive(Clone, Copy)]
    #[repr(C)]
    pub struct Action {
        pub verdict: Verdict,
        pub daddr: u32,
    }

    impl Action {
        pub const UNTOUCHED: Self = Self::new(Verdict::Untouched, 0);
        pub const PASS: Self = Self::new(Verdict::Pass, 0);
        pub const DROP: Self = Self::new(Verdict::Drop, 0);
        pub const BOUNCE: Self = Self::new(Verdict::Bounce, 0);

        pub const fn forward(daddr: u32) -> Self {
            Self::new(Verdict::Forward, daddr)
        }

        const fn new(verdict: Verdict, daddr: u32) -> Self {
            Action { verdict, daddr }
        }
    }

    /// Where a client's packet goes once rewritten towards `backend`.
    #[inline(always)]
    pub fn action_for(flags: u8, backend: u32) -> Action {
        if flags & CT_F_HAIRPIN != 0 {
            Action::BOUNCE
        } else if flags & (CT_F_SNAT | CT_F_EXTERNAL) == CT_F_SNAT | CT_F_EXTERNAL {
            Action::forward(backend)
        } else {
            Action::PASS
        }
    }

    /// Where a reverse-NATed packet goes: to a client outside the node it is forwarded.
    #[inline(always)]
    pub fn reply_action(flags: u8, client: u32) -> Action {
        if flags & CT_F_HAIRPIN != 0 {
            Action::BOUNCE
        } else if flags & CT_F_EXTERNAL != 0 {
            Action::forward(client)
        } else {
            Action::PASS
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        const BACKEND: u32 = 0x0a01_f40a;
        const CLIENT: u32 = 0x0a00_0201;

        fn shown(a: Action) -> (u32, u32) {
            (a.verdict as u32, a.daddr)
        }

        /// (flow flags) -> where a client's packet and a backend's reply go: a flow SNATed for
        /// a client outside the node is forwarded both ways (the stack would drop it as a
        /// martian); hairpin bounces; anything else is the stack's to deliver.
        #[test]
        fn flow_flags_decide_where_packets_go() {
            let forward = |a| shown(Action::forward(a));
            let table = [
                (0, shown(Action::PASS), shown(Action::PASS)),
                (CT_F_SNAT, shown(Action::PASS), shown(Action::PASS)),
                (CT_F_EXTERNAL, shown(Action::PASS), forward(CLIENT)),
                (CT_F_SNAT | CT_F_EXTERNAL, forward(BACKEND), forward(CLIENT)),
                (CT_F_HAIRPIN, shown(Action::BOUNCE), shown(Action::BOUNCE)),
                (
                    CT_F_HAIRPIN | CT_F_SNAT | CT_F_EXTERNAL,
                    shown(Action::BOUNCE),
                    shown(Action::BOUNCE),
                ),
            ];
            for (flags, client, reply) in table {
                assert_eq!(
                    shown(action_for(flags, BACKEND)),
                    client,
                    "client, flags {flags:#x}"
                );
                assert_eq!(
                    shown(reply_action(flags, CLIENT)),
                    reply,
                    "reply, flags {flags:#x}"
                );
            }
        }
    }
}

/// How packets move a flow through its states (`CT_F_*`): pure functions the datapath's client
/// and reply paths share, tested on the host.
pub mod flow_state {
    use super::{CT_F_CLOSING, CT_F_ESTABLISHED, CT_F_REPLIED};

    /// TCP header flags.
    pub const TCP_FIN: u8 = 0x01;
    pub const TCP_SYN: u8 = 0x02;
    pub const TCP_RST: u8 = 0x04;
    pub const TCP_ACK: u8 = 0x10;

    /// A client packet's effect on its flow's state: FIN or RST close it; an ACK once the
    /// backend has answered completes the handshake.
    #[inline(always)]
    pub const fn after_client(flags: u8, tcp_flags: u8) -> u8 {
        if tcp_flags & (TCP_FIN | TCP_RST) != 0 {
            flags | CT_F_CLOSING
        } else if tcp_flags & TCP_SYN == 0 && tcp_flags & TCP_ACK != 0 && flags & CT_F_REPLIED != 0
        {
            flags | CT_F_ESTABLISHED
        } else {
            flags
        }
    }

    /// The flags a backend's reply adds to its flow, 0 when none is new (later replies then
    /// skip the conntrack lookup): that it answered (a TCP client's next ACK completes the
    /// handshake; a UDP flow gets the timeout of a flow with replies) and whether it closed (FIN,
    /// RST; UDP has no flags). `flags`: what the flow's reverse entry holds.
    #[inline(always)]
    pub const fn after_reply(flags: u8, tcp_flags: u8) -> u8 {
        let closes = tcp_flags & (TCP_FIN | TCP_RST) != 0;
        if flags & CT_F_REPLIED != 0 && (!closes || flags & CT_F_CLOSING != 0) {
            0
        } else if closes {
            CT_F_REPLIED | CT_F_CLOSING
        } else {
            CT_F_REPLIED
        }
    }

    /// A SYN without ACK on a closed TCP flow opens a new connection on the same 4-tuple (a
    /// client reusing its port): it starts over, with a fresh state and backend choice.
    #[inline(always)]
    pub const fn reopens(flags: u8, tcp_flags: u8) -> bool {
        flags & CT_F_CLOSING != 0 && tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN
    }

    #[cfg(test)]
    mod tests {
        use super::super::CT_F_SNAT;
        use super::*;

        const SYN: u8 = TCP_SYN;
        const SYN_ACK: u8 = TCP_SYN | TCP_ACK;
        const ACK: u8 = TCP_ACK;
        const FIN: u8 = TCP_FIN | TCP_ACK;
        const RST: u8 = TCP_RST;
        const NEW: u8 = 0;
        const REPLIED: u8 = CT_F_REPLIED;
        const EST: u8 = CT_F_REPLIED | CT_F_ESTABLISHED;
        const CLOSING: u8 = CT_F_REPLIED | CT_F_ESTABLISHED | CT_F_CLOSING;

        /// A handshake, data and both closes, as netfilter's TCP tracking moves through them
        /// (SYN_SENT, SYN_RECV, ESTABLISHED, FIN_WAIT/CLOSE): (state, client packet) -> state.
        #[test]
        fn client_packets_move_the_flow() {
            let table = [
                (NEW, SYN, NEW),
                // No answer yet: an ACK (a spoofed one, or one after a lost SYN-ACK) does not
                // establish.
                (NEW, ACK, NEW),
                (REPLIED, ACK, EST),
                (REPLIED, SYN, REPLIED),
                (EST, ACK, EST),
                (EST, FIN, CLOSING),
                (EST, RST, EST | CT_F_CLOSING),
                (NEW, RST, CT_F_CLOSING),
                // Flags lb keeps beside the state are left alone.
                (REPLIED | CT_F_SNAT, ACK, EST | CT_F_SNAT),
            ];
            for (flags, tcp, want) in table {
                assert_eq!(after_client(flags, tcp), want, "{flags:#x} + {tcp:#x}");
            }
        }

        /// (reverse entry's flags, reply packet) -> flags the reply adds.
        #[test]
        fn replies_add_what_is_new() {
            let table = [
                (NEW, SYN_ACK, REPLIED),
                (REPLIED, ACK, 0),
                (REPLIED, FIN, REPLIED | CT_F_CLOSING),
                (NEW, RST, REPLIED | CT_F_CLOSING),
                (REPLIED | CT_F_CLOSING, FIN, 0),
                (REPLIED | CT_F_CLOSING, ACK, 0),
                // UDP: no flags; the first reply marks the flow answered.
                (NEW, 0, REPLIED),
                (REPLIED, 0, 0),
            ];
            for (flags, tcp, want) in table {
                assert_eq!(after_reply(flags, tcp), want, "{flags:#x} + {tcp:#x}");
            }
        }

        #[test]
        fn a_bare_syn_reopens_a_closed_flow_only() {
            assert!(reopens(CLOSING, SYN));
            assert!(!reopens(CLOSING, SYN_ACK));
            assert!(!reopens(CLOSING, ACK));
            assert!(!reopens(EST, SYN));
        }
    }
}

/// Conntrack idle timeouts, in seconds (kube-proxy's conntrack settings, Cilium's closing one).
pub mod timeout {
    pub const TCP_SYN: u64 = 60;
    pub const TCP_ESTABLISHED: u64 = 86_400;
    pub const TCP_CLOSING: u64 = 10;
    /// A UDP flow the backend answered (netfilter: 30 s, 120 s once "stream"; lb keeps one).
    pub const UDP: u64 = 60;
    /// A UDP flow without any reply yet (netfilter's nf_conntrack_udp_timeout): scans, floods
    /// and lost queries free their entries in half the time.
    pub const UDP_UNREPLIED: u64 = 30;
    /// How long a closed SNATed TCP flow keeps its source port: the backend holds TIME_WAIT on
    /// that 4-tuple for up to 60 s (netfilter's TIME_WAIT is 120 s), and a new flow reusing the
    /// port inside it would be refused or misrouted.
    pub const TCP_TIME_WAIT: u64 = 120;

    /// The idle timeout of a flow with these `CT_F_*` flags, in seconds.
    #[inline(always)]
    pub const fn idle(proto: u8, flags: u8) -> u64 {
        if proto != super::PROTO_TCP {
            if flags & super::CT_F_REPLIED != 0 {
                UDP
            } else {
                UDP_UNREPLIED
            }
        } else if flags & super::CT_F_CLOSING != 0 {
            TCP_CLOSING
        } else if flags & super::CT_F_ESTABLISHED != 0 {
            TCP_ESTABLISHED
        } else {
            TCP_SYN
        }
    }

    /// How long after its last packet a flow with these flags holds what it holds (its entry
    /// and, with SNAT, its source port): the idle timeout, or TIME_WAIT for a closed SNATed flow.
    #[inline(always)]
    pub const fn hold(proto: u8, flags: u8) -> u64 {
        let closed_snat = super::CT_F_CLOSING | super::CT_F_SNAT;
        if proto == super::PROTO_TCP && flags & closed_snat == closed_snat {
            TCP_TIME_WAIT
        } else {
            idle(proto, flags)
        }
    }

    #[cfg(test)]
    mod tests {
        use super::super::{
            CT_F_CLOSING, CT_F_ESTABLISHED, CT_F_REPLIED, CT_F_SNAT, PROTO_TCP, PROTO_UDP,
        };
        use super::*;

        /// (protocol, flags) -> (idle, hold), the lifecycle the datapath and the collector
        /// share: a TCP flow's state decides its timeout, a closed SNATed one keeps its port
        /// for TIME_WAIT, a UDP flow is short until answered.
        #[test]
        fn flow_timeouts_follow_the_flow_state() {
            let est = CT_F_ESTABLISHED;
            let table = [
                (PROTO_TCP, 0, TCP_SYN, TCP_SYN),
                (PROTO_TCP, est, TCP_ESTABLISHED, TCP_ESTABLISHED),
                (PROTO_TCP, est | CT_F_SNAT, TCP_ESTABLISHED, TCP_ESTABLISHED),
                (PROTO_TCP, est | CT_F_CLOSING, TCP_CLOSING, TCP_CLOSING),
                (
                    PROTO_TCP,
                    CT_F_CLOSING | CT_F_SNAT,
                    TCP_CLOSING,
                    TCP_TIME_WAIT,
                ),
                (PROTO_UDP, 0, UDP_UNREPLIED, UDP_UNREPLIED),
                (PROTO_UDP, CT_F_REPLIED, UDP, UDP),
                // UDP has no closing: a SNATed UDP flow holds its port while idle only.
                (PROTO_UDP, CT_F_REPLIED | CT_F_CLOSING | CT_F_SNAT, UDP, UDP),
            ];
            for (proto, flags, want_idle, want_hold) in table {
                let got = (idle(proto, flags), hold(proto, flags));
                assert_eq!(
                    got,
                    (want_idle, want_hold),
                    "proto {proto} flags {flags:#x}"
                );
            }
        }
    }
}

/// Value of `LB4_CT`: how to rewrite the client's packets of an established flow.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Ct4 {
    pub backend_id: u32,
    pub service_id: u32,
    pub stats_id: u32,
    /// The backend as it was chosen: a backend id reused for another endpoint is not followed.
    pub backend_addr: u32,
    /// Source address after SNAT (with `CT_F_SNAT`).
    pub snat_addr: u32,
    pub backend_port: u16,
    pub snat_port: u16,
    pub flags: u8,
    pub _pad: [u8; 7],
    pub created_ns: u64,
    pub last_seen_ns: u64,
}

/// Value of `LB4_RNAT`: the addresses a reply is rewritten to (the frontend as source, the
/// original client as destination), which also name the flow's `LB4_CT` entry.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct RevNat4 {
    pub saddr: u32,
    pub daddr: u32,
    pub sport: u16,
    pub dport: u16,
    /// `CT_F_*` of the flow.
    pub flags: u8,
    pub _pad: [u8; 3],
    pub last_seen_ns: u64,
}

impl RevNat4 {
    /// The client-direction key (`LB4_CT`) of the flow this reply entry belongs to.
    #[inline(always)]
    pub const fn client(&self, proto: u8) -> Tuple4 {
        Tuple4 {
            saddr: self.daddr,
            daddr: self.saddr,
            sport: self.dport,
            dport: self.sport,
            proto,
            _pad: [0; 3],
        }
    }
}

/// Key of `LB4_AFFINITY`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AffinityKey4 {
    pub service_id: u32,
    pub client: u32,
}

/// Value of `LB4_AFFINITY`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Affinity {
    pub backend_id: u32,
    /// The backend as it was chosen: an id reused for another endpoint is not followed.
    pub backend_addr: u32,
    pub last_used_ns: u64,
    pub backend_port: u16,
    pub _pad: [u8; 6],
}

/// Key of `LB6_AFFINITY`: a client is one /128, or one network namespace (`by`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AffinityKey6 {
    pub service_id: u32,
    pub client: Addr6,
    /// `AFFINITY_BY_*`: what `client` holds.
    pub by: u32,
}

/// [`AffinityKey6::by`]: `client` is the client's address (the node's own sockets).
pub const AFFINITY_BY_ADDR: u32 = 0;
/// [`AffinityKey6::by`]: `client` holds a network namespace's cookie in its first two words: a
/// pod's socket, whose address the socket hooks cannot know before the route is chosen (Cilium's
/// socket LB keys affinity by netns cookie alike). A pod is one client either way.
pub const AFFINITY_BY_NETNS: u32 = 1;

/// Value of `LB6_AFFINITY`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Affinity6 {
    pub backend_id: u32,
    /// The backend as it was chosen: an id reused for another endpoint is not followed.
    pub backend_addr: Addr6,
    pub backend_port: u16,
    pub _pad: [u8; 2],
    pub last_used_ns: u64,
}

/// Value of `LB_CONFIG[0]`: node-wide settings.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    /// `ABI_VERSION` of the agent that wrote it.
    pub abi_version: u32,
    /// Source address for hairpin flows (a pod reaching itself through its Service).
    pub hairpin_addr: u32,
    /// SNAT source ports are taken from `snat_port_min..=snat_port_max` (host order).
    pub snat_port_min: u16,
    pub snat_port_max: u16,
    pub _pad: u32,
}

/// 169.254.42.1, link-local: never a pod's or node's address.
pub const DEFAULT_HAIRPIN_ADDR: [u8; 4] = [169, 254, 42, 1];
/// Above Linux's default ephemeral range (32768..=60999) so SNAT never takes a local socket's port.
pub const DEFAULT_SNAT_PORT_MIN: u16 = 61_000;
pub const DEFAULT_SNAT_PORT_MAX: u16 = 65_535;

impl Default for Config {
    fn default() -> Self {
        Config {
            abi_version: ABI_VERSION,
            hairpin_addr: u32::from_ne_bytes(DEFAULT_HAIRPIN_ADDR),
            snat_port_min: DEFAULT_SNAT_PORT_MIN,
            snat_port_max: DEFAULT_SNAT_PORT_MAX,
            _pad: 0,
        }
    }
}

/// Value of `LB4_NODE_ADDRS` (key: ifindex, u32): the node's address on an interface, used as the
/// SNAT source for traffic leaving through it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct NodeAddr4 {
    pub addr: u32,
}

/// Per-CPU packet and byte counters of one frontend (`LB_FRONTEND_STATS`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Counters {
    pub packets: u64,
    pub bytes: u64,
}

/// Indexes of `LB_GLOBAL_STATS` (per-CPU u64 counters).
pub mod stat {
    /// A new flow was answered with a TCP RST or an ICMP port unreachable (no endpoints).
    pub const REJECT_NO_BACKEND: u32 = 0;
    /// A new flow was dropped: endpoints exist, none usable here (Local policy).
    pub const DROP_NO_LOCAL_BACKEND: u32 = 1;
    /// A later fragment of a datagram whose first fragment lb dropped or rejected.
    pub const DROP_FRAGMENT: u32 = 2;
    /// No free SNAT port for a backend.
    pub const DROP_SNAT_EXHAUSTED: u32 = 3;
    /// No node address known for the egress interface of an SNATed flow.
    pub const DROP_NO_SNAT_ADDR: u32 = 4;
    /// A map write failed (map full, for instance).
    pub const DROP_MAP_FULL: u32 = 5;
    pub const CT_NEW: u32 = 6;
    pub const CT_HIT: u32 = 7;
    pub const RNAT_HIT: u32 = 8;
    /// An established flow whose backend was deleted was moved to another backend.
    pub const CT_BACKEND_GONE: u32 = 9;
    pub const ICMP_ERROR_NATED: u32 = 10;
    /// A rewrite or reject could not be done (helper failure): the packet was dropped.
    pub const DROP_REWRITE: u32 = 11;
    pub const COUNT: u32 = 12;

    pub const NAMES: [&str; COUNT as usize] = [
        "reject_no_backend",
        "drop_no_local_backend",
        "drop_fragment",
        "drop_snat_exhausted",
        "drop_no_snat_addr",
        "drop_map_full",
        "ct_new",
        "ct_hit",
        "rnat_hit",
        "ct_backend_gone",
        "icmp_error_nated",
        "drop_rewrite",
    ];
}

// The IPv6 layouts have no implicit padding (the kernel hashes every byte of a key).
const _: () = {
    use core::mem::size_of;
    assert!(size_of::<Frontend6Key>() == 20);
    assert!(size_of::<SourceRange6>() == 20);
    assert!(size_of::<Backend6>() == 20);
    assert!(size_of::<AffinityKey6>() == 24);
    assert!(size_of::<SockConfig6>() == 16);
    assert!(size_of::<Affinity6>() == 32);
    assert!(size_of::<SockRev6>() == 36);
    assert!(size_of::<SockRevNat6>() == 152);
};

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: all of these are repr(C), Copy, with every padding byte an explicit field.
    unsafe impl aya::Pod for Frontend4Key {}
    unsafe impl aya::Pod for Frontend4 {}
    unsafe impl aya::Pod for SourceRange4 {}
    unsafe impl aya::Pod for Service {}
    unsafe impl aya::Pod for SlotKey {}
    unsafe impl aya::Pod for Backend4 {}
    unsafe impl aya::Pod for Tuple4 {}
    unsafe impl aya::Pod for Ct4 {}
    unsafe impl aya::Pod for RevNat4 {}
    unsafe impl aya::Pod for AffinityKey4 {}
    unsafe impl aya::Pod for Affinity {}
    unsafe impl aya::Pod for Config {}
    unsafe impl aya::Pod for Frontend6Key {}
    unsafe impl aya::Pod for SourceRange6 {}
    unsafe impl aya::Pod for Backend6 {}
    unsafe impl aya::Pod for AffinityKey6 {}
    unsafe impl aya::Pod for Affinity6 {}
    unsafe impl aya::Pod for NodeAddr4 {}
    unsafe impl aya::Pod for Counters {}
    unsafe impl aya::Pod for ServiceName {}
    unsafe impl aya::Pod for IfaceInfo {}
    unsafe impl aya::Pod for SockConfig {}
    unsafe impl aya::Pod for SockConfig6 {}
}
