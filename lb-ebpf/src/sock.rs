//! Socket-level load balancing: cgroup v2 `sock_addr` hooks that give Services to the sockets of
//! the node itself (and, with `--socket-lb all`, of pods) at connect()/sendmsg() time, so their
//! packets leave already addressed to a backend and need no NAT on the way.
//!
//! - `connect4` (TCP, connected UDP) and `sendmsg4` (unconnected UDP) rewrite a frontend address
//!   to a backend chosen as the packet path chooses it (`lb::select`, affinity included), and
//!   remember the pair in the socket's own storage;
//! - `recvmsg4` (UDP) and `getpeername4` rewrite the backend back to the Service, so a resolver
//!   that checks where its answer came from accepts it and the socket reports what it connected to.
//! - `connect6`, `recvmsg6` and `getpeername6` do the same for IPv4-mapped addresses
//!   (`::ffff:a.b.c.d`) of IPv6 sockets: dual-stack sockets (Java's by default, any program
//!   listening or dialing on `::`) reach IPv4 Services through them, and the kernel hands such a
//!   connect() to IPv4 without running `connect4`. (A mapped address's unconnected sendmsg() is
//!   handed to IPv4 with an IPv4 address, so `sendmsg4` sees it.)
//! - the same four hooks for IPv6 serve native IPv6 Services from `LB6_FRONTENDS` as the IPv4
//!   ones: ClusterIPs, NodePorts on the node's IPv6 addresses, externalIPs and LoadBalancer IPs
//!   the node holds (`LB6_HOST_ADDRS`), session affinity. Not `[::1]:NODEPORT`: kube-proxy
//!   serves localhost NodePorts on IPv4 only (route_localnet has no IPv6 twin).
//!
//! The storage is socket-local (`BPF_MAP_TYPE_SK_STORAGE`), freed by the kernel with the socket:
//! nothing to delete on close, and nothing evicted from a live socket (an LRU keyed by cookie, as
//! in Cilium before #44767, loses live sockets' entries under pressure).
use aya_ebpf::{
    btf_maps::SkStorage, helpers::generated as gen, macros::btf_map, programs::SockAddrContext,
    EbpfContext,
};
use lb_common::{
    Addr6, Frontend4, Frontend4Key, Frontend6Key, Service, SockConfig, SockConfig6, SockRev4,
    SockRev6, SockRevNat4, SockRevNat6, AFFINITY_BY_ADDR, AFFINITY_BY_NETNS, FE_F_SOURCE_RANGES,
    KIND_EXTERNAL_IP, KIND_LOAD_BALANCER, KIND_NODE_PORT, PROTO_TCP, PROTO_UDP, SCOPE_INTERNAL,
    SOCK_LB_ALL, SOCK_LB_HOST, SOCK_REV_SLOTS, SVC_F_AFFINITY, VERDICT_DROP,
};

use crate::{
    lb::{self, V4, V6},
    maps::{
        source_allowed, source_allowed6, LB4_FRONTENDS, LB4_HOST_ADDRS, LB6_FRONTENDS,
        LB6_HOST_ADDRS, LB6_SOCK_CONFIG, LB_SERVICES, LB_SOCK_CONFIG, LB_SOCK_STATS,
    },
};

/// What the socket hooks translated, per socket.
#[btf_map]
static LB4_SOCK_RNAT: SkStorage<SockRevNat4> = SkStorage::new();

/// The same for native IPv6 Services.
#[btf_map]
static LB6_SOCK_RNAT: SkStorage<SockRevNat6> = SkStorage::new();

/// The hook's return values: 1 lets the call go on, 0 fails it (with the errno set before).
const ALLOW: i32 = 1;
const DENY: i32 = 0;

const ECONNREFUSED: i32 = 111;
const ETIMEDOUT: i32 = 110;

/// The first three words of an IPv4-mapped IPv6 address (`::ffff:0:0/96`), network order.
const V4_MAPPED: [u32; 3] = [0, 0, 0xffff_u32.to_be()];

/// connect() and sendmsg() of IPv4 sockets: a frontend address becomes a backend's.
#[inline(always)]
pub fn forward4(ctx: &SockAddrContext) -> i32 {
    // SAFETY: the kernel passes a valid context for the program's whole run.
    let sa = unsafe { &mut *ctx.sock_addr };
    let (addr, port) = (sa.user_ip4, sa.user_port as u16);
    match forward(ctx, sa.protocol as u8, addr, port) {
        Ok(Some((addr, port))) => {
            sa.user_ip4 = addr;
            sa.user_port = u32::from(port);
            ALLOW
        }
        Ok(None) => ALLOW,
        Err(()) => DENY,
    }
}

/// connect() and sendmsg() of IPv6 sockets: an IPv4-mapped frontend address becomes the
/// backend's, mapped; a native IPv6 one the IPv6 backend's.
#[inline(always)]
pub fn forward6(ctx: &SockAddrContext) -> i32 {
    // SAFETY: the kernel passes a valid context for the program's whole run.
    let sa = unsafe { &mut *ctx.sock_addr };
    let Some(addr) = mapped(sa) else {
        return match forward_native6(ctx, sa.protocol as u8, ip6(sa), sa.user_port as u16) {
            Ok(Some((addr, port))) => {
                set_ip6(sa, addr);
                sa.user_port = u32::from(port);
                ALLOW
            }
            Ok(None) => ALLOW,
            Err(()) => DENY,
        };
    };
    match forward(ctx, sa.protocol as u8, addr, sa.user_port as u16) {
        Ok(Some((addr, port))) => {
            sa.user_ip6[3] = addr;
            sa.user_port = u32::from(port);
            ALLOW
        }
        Ok(None) => ALLOW,
        Err(()) => DENY,
    }
}

/// `user_ip6`, read one word at a time: the verifier allows only 4-byte loads of it.
#[inline(always)]
fn ip6(sa: &aya_ebpf::bindings::bpf_sock_addr) -> Addr6 {
    [
        sa.user_ip6[0],
        sa.user_ip6[1],
        sa.user_ip6[2],
        sa.user_ip6[3],
    ]
}

/// `user_ip6` set to `addr`, one word at a time (4-byte stores only).
#[inline(always)]
fn set_ip6(sa: &mut aya_ebpf::bindings::bpf_sock_addr, addr: Addr6) {
    sa.user_ip6[0] = addr[0];
    sa.user_ip6[1] = addr[1];
    sa.user_ip6[2] = addr[2];
    sa.user_ip6[3] = addr[3];
}

/// The IPv4 address an IPv4-mapped `user_ip6` holds. Read one word at a time: the verifier
/// allows only 4-byte loads of `user_ip6`.
#[inline(always)]
fn mapped(sa: &aya_ebpf::bindings::bpf_sock_addr) -> Option<u32> {
    let prefix = [sa.user_ip6[0], sa.user_ip6[1], sa.user_ip6[2]];
    (prefix == V4_MAPPED).then(|| sa.user_ip6[3])
}

/// The backend a connect() or sendmsg() to `addr:port` goes to instead (`Ok(None)`: leave it
/// alone; `Err`: fail the call, the errno set).
#[inline(always)]
fn forward(
    ctx: &SockAddrContext,
    proto: u8,
    addr: u32,
    port: u16,
) -> Result<Option<(u32, u16)>, ()> {
    if proto != PROTO_TCP && proto != PROTO_UDP {
        return Ok(None);
    }
    let Some(cfg) = LB_SOCK_CONFIG.get(0) else {
        return Ok(None);
    };
    let host = is_host(ctx, cfg);
    if !host && cfg.mode != SOCK_LB_ALL {
        return Ok(None);
    }
    let key = Frontend4Key {
        addr,
        port,
        proto,
        scope: SCOPE_INTERNAL,
    };
    let Some(fe) = frontend(&key, cfg.node_addr) else {
        return Ok(None);
    };
    // CVE-2020-8554: an externalIP or LoadBalancer IP is the Service's only where the node holds
    // it; elsewhere it is somebody else's address, and traffic to it goes there untouched.
    let external = fe.kind == KIND_EXTERNAL_IP || fe.kind == KIND_LOAD_BALANCER;
    // SAFETY: existence check only.
    if external && unsafe { LB4_HOST_ADDRS.get(&key.addr) }.is_none() {
        return Ok(None);
    }
    // loadBalancerSourceRanges: the node's own connections are allowed when a range holds the
    // node's address, as kube-proxy allows them (dropped otherwise: the call times out). A
    // pod's are left to the packet path, which filters them by the pod's own address (as
    // kube-proxy does since 1.25); the hook cannot know it before the route is chosen.
    if fe.flags & FE_F_SOURCE_RANGES != 0 {
        if !host {
            return Ok(None);
        }
        if !source_allowed(fe.stats_id, cfg.node_addr) {
            // SAFETY: plain helper call.
            unsafe { gen::bpf_set_retval(-ETIMEDOUT) };
            return Err(());
        }
    }
    let Some(svc) = service(fe)? else {
        return Ok(None);
    };
    // Affinity is keyed by client address. A pod socket's address is unknown before it is bound
    // (the hook runs before the route is chosen), so its connections to such a Service are left
    // to the packet path, which sees the pod's address: the two paths never disagree.
    if svc.flags & SVC_F_AFFINITY != 0 && !host {
        return Ok(None);
    }
    // SAFETY: coarse clock read, no arguments.
    let now = unsafe { gen::bpf_ktime_get_coarse_ns() };
    let pick = pick(ctx, proto);
    let Some((_, be)) = lb::select::<V4>(fe.service_id, cfg.node_addr, svc, now, pick) else {
        return Ok(None);
    };
    let entry = SockRev4 {
        backend_addr: be.addr,
        service_addr: key.addr,
        backend_port: be.port,
        service_port: key.port,
    };
    remember(ctx, &LB4_SOCK_RNAT, entry);
    count(fe);
    Ok(Some((be.addr, be.port)))
}

/// The native IPv6 backend a connect() or sendmsg() to `addr:port` goes to instead, as
/// [`forward`] chooses for IPv4, but with session affinity per network namespace for pods
/// ([`AFFINITY_BY_NETNS`]; the node's sockets are its IPv6 address).
#[inline(always)]
fn forward_native6(
    ctx: &SockAddrContext,
    proto: u8,
    addr: Addr6,
    port: u16,
) -> Result<Option<(Addr6, u16)>, ()> {
    if proto != PROTO_TCP && proto != PROTO_UDP {
        return Ok(None);
    }
    let Some(cfg) = LB_SOCK_CONFIG.get(0) else {
        return Ok(None);
    };
    let host = is_host(ctx, cfg);
    if !host && cfg.mode != SOCK_LB_ALL {
        return Ok(None);
    }
    let key = Frontend6Key {
        addr,
        port,
        proto,
        scope: SCOPE_INTERNAL,
    };
    // SAFETY: read-only use of the map value within this run.
    let Some(fe) = (unsafe { LB6_FRONTENDS.get(&key) }) else {
        return Ok(None);
    };
    // CVE-2020-8554, as for IPv4.
    let external = fe.kind == KIND_EXTERNAL_IP || fe.kind == KIND_LOAD_BALANCER;
    // SAFETY: existence check only.
    if external && unsafe { LB6_HOST_ADDRS.get(&addr) }.is_none() {
        return Ok(None);
    }
    // Read only for Services: every IPv6 connect() in the cgroup runs this hook.
    let Some(cfg6) = LB6_SOCK_CONFIG.get(0) else {
        return Ok(None);
    };
    if fe.flags & FE_F_SOURCE_RANGES != 0 && !source_allowed6(fe.stats_id, cfg6.node_addr) {
        // SAFETY: plain helper call.
        unsafe { gen::bpf_set_retval(-ETIMEDOUT) };
        return Err(());
    }
    let Some(svc) = service(fe)? else {
        return Ok(None);
    };
    let client = client6(ctx, host, cfg6);
    // SAFETY: coarse clock read, no arguments.
    let now = unsafe { gen::bpf_ktime_get_coarse_ns() };
    let Some((_, be)) = lb::select::<V6>(fe.service_id, client, svc, now, pick(ctx, proto)) else {
        return Ok(None);
    };
    let entry = SockRev6 {
        backend_addr: be.addr,
        service_addr: addr,
        backend_port: be.port,
        service_port: port,
    };
    remember(ctx, &LB6_SOCK_RNAT, entry);
    count(fe);
    Ok(Some((be.addr, be.port)))
}

/// Who session affinity sees connecting over IPv6: the node's address for its own sockets (what
/// the packet path will see of them), else the socket's network namespace (a pod's).
#[inline(always)]
fn client6(ctx: &SockAddrContext, host: bool, cfg6: &SockConfig6) -> (Addr6, u32) {
    if host && cfg6.node_addr != [0; 4] {
        return (cfg6.node_addr, AFFINITY_BY_ADDR);
    }
    // SAFETY: plain helper call on the program's context.
    let cookie = unsafe { gen::bpf_get_netns_cookie(ctx.as_ptr()) };
    let words = [cookie as u32, (cookie >> 32) as u32, 0, 0];
    (words, AFFINITY_BY_NETNS)
}

/// The backend set a frontend leads to; `Err` (the errno set) when it is empty: refused, or
/// timed out for a Local policy without local endpoints, as the packet path answers.
#[inline(always)]
fn service(fe: &Frontend4) -> Result<Option<&'static Service>, ()> {
    // SAFETY: read-only use of the map value within this run.
    let Some(svc) = (unsafe { LB_SERVICES.get(fe.service_id) }) else {
        return Ok(None);
    };
    if svc.backend_count == 0 {
        let errno = if svc.verdict == VERDICT_DROP {
            ETIMEDOUT
        } else {
            ECONNREFUSED
        };
        // SAFETY: plain helper call.
        unsafe { gen::bpf_set_retval(-errno) };
        return Err(());
    }
    Ok(Some(svc))
}

/// The slot a new connection takes: random for TCP; for UDP by socket (Cilium's choice), so an
/// unconnected socket's datagrams to one Service go to one backend, and a client's retries and
/// its replies stay together.
#[inline(always)]
fn pick(ctx: &SockAddrContext, proto: u8) -> u32 {
    if proto == PROTO_UDP {
        // SAFETY: plain helper call on the program's context.
        let cookie = unsafe { gen::bpf_get_socket_cookie(ctx.as_ptr()) };
        (cookie ^ (cookie >> 32)) as u32
    } else {
        // SAFETY: helper without arguments.
        unsafe { gen::bpf_get_prandom_u32() }
    }
}

/// One more translation for the frontend.
#[inline(always)]
fn count(fe: &Frontend4) {
    if let Some(c) = LB_SOCK_STATS.get_ptr_mut(fe.stats_id) {
        // SAFETY: per-CPU slot, no concurrent writer.
        unsafe { *c += 1 };
    }
}

/// The frontend `key` names. On a loopback address only a NodePort, found on the node's address:
/// `localhost:NODEPORT` works as with kube-proxy's iptables mode (and Cilium).
#[inline(always)]
fn frontend(key: &Frontend4Key, node_addr: u32) -> Option<&'static Frontend4> {
    // SAFETY: read-only use of map values within this run.
    if let Some(fe) = unsafe { LB4_FRONTENDS.get(key) } {
        return Some(fe);
    }
    // The first byte of a network-order address is its first octet.
    let loopback = key.addr.to_ne_bytes()[0] == 127;
    if !loopback || node_addr == 0 {
        return None;
    }
    let on_node = Frontend4Key {
        addr: node_addr,
        ..*key
    };
    // SAFETY: as above.
    unsafe { LB4_FRONTENDS.get(&on_node) }.filter(|fe| fe.kind == KIND_NODE_PORT)
}

/// recvmsg() and getpeername() of IPv4 sockets: a backend this socket was sent to shows as its
/// Service.
#[inline(always)]
pub fn reverse4(ctx: &SockAddrContext) -> i32 {
    // SAFETY: the kernel passes a valid context for the program's whole run.
    let sa = unsafe { &mut *ctx.sock_addr };
    if let Some((addr, port)) = reverse(ctx, sa.user_ip4, sa.user_port as u16) {
        sa.user_ip4 = addr;
        sa.user_port = u32::from(port);
    }
    ALLOW
}

/// The same for IPv6 sockets, whose IPv4 peers show as IPv4-mapped addresses.
#[inline(always)]
pub fn reverse6(ctx: &SockAddrContext) -> i32 {
    // SAFETY: the kernel passes a valid context for the program's whole run.
    let sa = unsafe { &mut *ctx.sock_addr };
    let port = sa.user_port as u16;
    match mapped(sa) {
        Some(addr) => {
            if let Some((addr, port)) = reverse(ctx, addr, port) {
                sa.user_ip6[3] = addr;
                sa.user_port = u32::from(port);
            }
        }
        None => {
            if let Some((addr, port)) = service_of(ctx, &LB6_SOCK_RNAT, (ip6(sa), port)) {
                set_ip6(sa, addr);
                sa.user_port = u32::from(port);
            }
        }
    }
    ALLOW
}

/// The Service address this socket's IPv4 backend `addr:port` stands for, if it was sent there.
#[inline(always)]
fn reverse(ctx: &SockAddrContext, addr: u32, port: u16) -> Option<(u32, u16)> {
    service_of(ctx, &LB4_SOCK_RNAT, (addr, port))
}

/// One family's record of a socket's translations (`SockRevNat4`, `SockRevNat6`).
trait RevNat {
    type Addr: Copy + PartialEq + Default;
    type Entry: RevEntry<Addr = Self::Addr>;
    fn parts(&mut self) -> (&mut [Self::Entry; SOCK_REV_SLOTS], &mut u32);
}

/// One translation: (backend, Service) addresses and ports.
trait RevEntry: Copy {
    type Addr: Copy + PartialEq + Default;
    fn backend(&self) -> (Self::Addr, u16);
    fn service(&self) -> (Self::Addr, u16);
}

impl RevNat for SockRevNat4 {
    type Addr = u32;
    type Entry = SockRev4;
    fn parts(&mut self) -> (&mut [SockRev4; SOCK_REV_SLOTS], &mut u32) {
        (&mut self.entries, &mut self.next)
    }
}

impl RevNat for SockRevNat6 {
    type Addr = Addr6;
    type Entry = SockRev6;
    fn parts(&mut self) -> (&mut [SockRev6; SOCK_REV_SLOTS], &mut u32) {
        (&mut self.entries, &mut self.next)
    }
}

impl RevEntry for SockRev4 {
    type Addr = u32;
    fn backend(&self) -> (u32, u16) {
        (self.backend_addr, self.backend_port)
    }
    fn service(&self) -> (u32, u16) {
        (self.service_addr, self.service_port)
    }
}

impl RevEntry for SockRev6 {
    type Addr = Addr6;
    fn backend(&self) -> (Addr6, u16) {
        (self.backend_addr, self.backend_port)
    }
    fn service(&self) -> (Addr6, u16) {
        (self.service_addr, self.service_port)
    }
}

/// The Service a backend `addr:port` of this socket stands for, from its storage `map`.
#[inline(always)]
fn service_of<R: RevNat>(
    ctx: &SockAddrContext,
    map: &SkStorage<R>,
    backend: (R::Addr, u16),
) -> Option<(R::Addr, u16)> {
    // SAFETY: lookup without creating; the pointer is valid for this run.
    let rev = unsafe { map.get_ptr_mut(ctx) };
    if rev.is_null() {
        return None;
    }
    // SAFETY: non-null storage of this socket.
    let (entries, _) = unsafe { &mut *rev }.parts();
    entries
        .iter()
        .find(|e| e.backend() == backend && e.service().0 != R::Addr::default())
        .map(|e| e.service())
}

/// Whether the socket belongs to the agent's own network namespace (the node).
#[inline(always)]
fn is_host(ctx: &SockAddrContext, cfg: &SockConfig) -> bool {
    if cfg.mode != SOCK_LB_HOST && cfg.mode != SOCK_LB_ALL {
        return false;
    }
    // SAFETY: plain helper call on the program's context.
    unsafe { gen::bpf_get_netns_cookie(ctx.as_ptr()) == cfg.netns_cookie }
}

/// Records `entry` in the socket's storage `map`: in the slot of the same backend if there is
/// one (a reconnect, or the same Service again), else in the next slot round robin.
#[inline(always)]
fn remember<R: RevNat>(ctx: &SockAddrContext, map: &SkStorage<R>, entry: R::Entry) {
    // SAFETY: the helper creates the storage zeroed if the socket has none.
    let rev = unsafe { map.get_or_insert_ptr_mut(ctx, None) };
    if rev.is_null() {
        return;
    }
    // SAFETY: non-null storage of this socket; a socket's calls are serialized by its lock.
    let (entries, next) = unsafe { &mut *rev }.parts();
    let mut slot = *next as usize % SOCK_REV_SLOTS;
    let mut fresh = true;
    for (i, e) in entries.iter().enumerate() {
        if e.backend() == entry.backend() {
            slot = i;
            fresh = false;
            break;
        }
    }
    if let Some(e) = entries.get_mut(slot) {
        *e = entry;
    }
    if fresh {
        *next = next.wrapping_add(1);
    }
}
