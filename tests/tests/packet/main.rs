//! Packet fixtures through BPF_PROG_TEST_RUN on the real kernel, in Katran's style: tables of
//! rows (`Case`: description, hook, packet in, verdict, the counters it moves, packet out or
//! unchanged), packets compared byte for byte with packets built by etherparse, whose checksums
//! are checked by etherparse too. One module per behaviour: translation, snat, affinity,
//! conntrack, verdicts, icmp, fragments; the node and the harness are here.
//!
//! The programs run in a namespace of their own holding the node's view of the network, so the
//! FIB lookups behind SNAT and XDP_TX see routes and neighbours the test controls:
//! node 192.0.2.10/24 on eth0; another node 192.0.2.20 (pods 10.244.2.0/24 behind it); a router
//! 192.0.2.1 towards clients in 198.51.100.0/24; local pods 10.244.1.0/24. Two paths are
//! narrower than the links (a locked route MTU of 1280, which forwarding honours as it does a
//! device's): to pods 10.244.5.0/24 behind 192.0.2.20, and to clients in 203.0.113.0/24 behind
//! the router. Pods 10.244.6.0/24 are behind 192.0.2.30, whose neighbour entry is missing.
use lb::dataplane::ServiceMaps;
use std::{net::Ipv4Addr, time::Duration};

use aya::programs::{TestRun, TestRunOptions, TestRunResult};
use etherparse::{icmpv4::DestUnreachableHeader, Icmpv4Type};
use lb::dataplane::{
    Dataplane, Options, XdpRequest, PROG_TC_EGRESS, PROG_TC_EXT, PROG_TC_HANDOFF, PROG_TC_POD,
    PROG_XDP_EXT,
};
use lb_common::{
    map_names, Backend4, Frontend4, Frontend4Key, Service, BE_F_LOCAL, BE_F_TERMINATING,
    KIND_CLUSTER_IP, KIND_NODE_PORT, PROTO_TCP, PROTO_UDP, SCOPE_EXTERNAL, SCOPE_INTERNAL,
    SVC_F_AFFINITY, SVC_F_EXT_LOCAL, VERDICT_DROP, VERDICT_REJECT,
};
use lb_tests::{
    clock::monotonic_ns_after,
    lab::{require_privileged, Lab},
    packets::{assert_checksums, icmp_error, reject_of, sa, Pkt, ACK, L4, NODE_MAC, SYN, UDP},
    topology::fib_node,
};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;
const TC_ACT_OK: u32 = 0;
/// TC_ACT_UNSPEC (-1): the next program of the tcx chain gets the packet.
const TCX_NEXT: u32 = u32::MAX;
const TC_ACT_REDIRECT: u32 = 7;

const GW_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x99];
const NODE2_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x20];
/// A node behind the second interface, eth1 (192.0.3.0/24, pods 10.244.3.0/24).
const NODE3_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x30];
const XDP_REDIRECT: u32 = 4;
const POD_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x05];

fn ip(s: &str) -> u32 {
    u32::from_ne_bytes(s.parse::<Ipv4Addr>().expect("ip").octets())
}

fn port(p: u16) -> u16 {
    p.to_be()
}

/// The dataplane of one test node plus the interface its packets arrive on.
struct Node {
    dp: Dataplane,
    eth0: u32,
    eth0_mac: [u8; 6],
    eth1_mac: [u8; 6],
    vx0_mac: [u8; 6],
}

/// A service: frontends, one backend set, backends by id.
struct Svc<'a> {
    id: u32,
    frontends: &'a [(&'a str, u16, u8, u8)],
    proto: u8,
    backends: &'a [(u32, &'a str, u16, u8)],
    flags: u8,
    verdict: u8,
}

impl Node {
    fn program(&mut self, s: &Svc) {
        let maps = &mut self.dp.maps;
        for &(id, addr, p, flags) in s.backends {
            let be = Backend4 {
                addr: ip(addr),
                port: port(p),
                flags,
                _pad: 0,
            };
            ServiceMaps::<Ipv4Addr>::set_backend(&mut *maps, id, &be).expect("backend");
        }
        let ids: Vec<u32> = s
            .backends
            .iter()
            .filter(|b| b.3 & BE_F_TERMINATING == 0)
            .map(|b| b.0)
            .collect();
        let svc = Service {
            flags: s.flags,
            verdict: s.verdict,
            ..Default::default()
        };
        let previous = maps
            .services
            .get(&s.id, 0)
            .map(|v| v.backend_count)
            .unwrap_or(0);
        ServiceMaps::<Ipv4Addr>::set_service(&mut *maps, s.id, &svc, &ids, previous)
            .expect("service");
        for &(addr, p, scope, kind) in s.frontends {
            let key = Frontend4Key {
                addr: ip(addr),
                port: port(p),
                proto: s.proto,
                scope,
            };
            let fe = Frontend4 {
                service_id: s.id,
                stats_id: s.id,
                kind,
                flags: 0,
                _pad: [0; 2],
            };
            ServiceMaps::<Ipv4Addr>::set_frontend(&mut *maps, &key, &fe).expect("frontend");
        }
    }

    /// Run the XDP program on `input` as if it arrived on eth0.
    fn xdp(&self, input: &[u8]) -> (u32, Vec<u8>) {
        let mut ctx = [0u8; 24]; // struct xdp_md: data, data_end, data_meta, ingress_ifindex, ..
        ctx[4..8].copy_from_slice(&(input.len() as u32).to_ne_bytes());
        ctx[12..16].copy_from_slice(&self.eth0.to_ne_bytes());
        run(self.dp.xdp(PROG_XDP_EXT).expect("xdp program"), input, &ctx)
    }

    /// Run the pod-side TC program on `input` as if it came from a pod through eth0.
    fn tc(&self, input: &[u8]) -> (u32, Vec<u8>) {
        self.tc_prog(PROG_TC_POD, input)
    }

    /// Run the external-interface TC program on `input` as if it arrived on eth0.
    fn tc_ext(&self, input: &[u8]) -> (u32, Vec<u8>) {
        self.tc_prog(PROG_TC_EXT, input)
    }

    /// Run the TC egress program on `input` as if it left through eth0.
    fn tc_egress(&self, input: &[u8]) -> (u32, Vec<u8>) {
        self.tc_prog(PROG_TC_EGRESS, input)
    }

    fn tc_prog(&self, name: &str, input: &[u8]) -> (u32, Vec<u8>) {
        let mut ctx = [0u8; 192]; // struct __sk_buff
        ctx[40..44].copy_from_slice(&self.eth0.to_ne_bytes()); // ifindex
        run(self.dp.tc(name).expect("tc program"), input, &ctx)
    }
}

fn run<T>(prog: &T, input: &[u8], ctx: &[u8]) -> (u32, Vec<u8>)
where
    T: for<'a> TestRun<Opts<'a> = TestRunOptions<'a>, Result = TestRunResult>,
{
    // Room for packets that grow (an ICMP error is longer than the datagram it quotes).
    let mut out = vec![0u8; input.len() + 256];
    let mut ctx_out = vec![0u8; ctx.len()];
    let res = prog
        .test_run(TestRunOptions {
            data_in: Some(input),
            data_out: Some(&mut out),
            ctx_in: Some(ctx),
            ctx_out: Some(&mut ctx_out),
            ..Default::default()
        })
        .expect("BPF_PROG_TEST_RUN");
    out.truncate(res.data_size_out as usize);
    (res.return_value, out)
}

/// Build the node namespace and its dataplane, and run `f` inside the namespace.
fn with_node(test: &str, f: impl FnOnce(&mut Node) + Send + 'static) {
    if !require_privileged(test) {
        return;
    }
    let lab = Lab::new(test).expect("lab");
    let ns = lab.netns("node").expect("netns");
    fib_node(&ns).expect("node setup");
    for cmd in [
        "ip link add eth1 type veth peer name peer1",
        "ip link set eth1 up",
        "ip link set peer1 up",
        "ip addr add 192.0.3.10/24 dev eth1",
        "ip neigh replace 192.0.3.30 lladdr 02:00:00:00:00:30 nud permanent dev eth1",
        "ip route add 10.244.3.0/24 via 192.0.3.30",
        "ip route add 10.244.5.0/24 via 192.0.2.20 mtu lock 1280",
        "ip route add 203.0.113.0/24 via 192.0.2.1 mtu lock 1280",
        // A node whose MAC address the node has not resolved yet.
        "ip route add 10.244.6.0/24 via 192.0.2.30",
        // A node behind a VXLAN overlay, flannel's way: the remote VTEP's address as next hop on
        // the tunnel device, its MAC address a permanent neighbour.
        "ip link add vx0 type vxlan id 7 dstport 4789 local 192.0.2.10 dev eth0",
        "ip link set vx0 up",
        "ip neigh replace 10.244.7.0 lladdr 02:00:00:00:00:70 nud permanent dev vx0",
        "ip route add 10.244.7.0/24 via 10.244.7.0 dev vx0 onlink",
    ] {
        ns.sh(cmd).expect("namespace setup");
    }
    let pin = lab.pin_path("pkt");
    let eth0_mac = ns.mac("eth0").expect("eth0 mac");
    let eth1_mac = ns.mac("eth1").expect("eth1 mac");
    let vx0_mac = ns.mac("vx0").expect("vx0 mac");
    ns.enter(move || {
        let opts = Options {
            pin_path: pin.clone(),
            capacities: vec![
                (map_names::CT4, 1024),
                (map_names::RNAT4, 1024),
                (map_names::CT_ANY4, 1024),
                (map_names::RNAT_ANY4, 1024),
                (map_names::SLOTS, 1024),
            ],
        };
        let dp = Dataplane::open(&opts).expect("load dataplane");
        let eth0 = lb::dataplane::ifindex("eth0").expect("eth0");
        let eth1 = lb::dataplane::ifindex("eth1").expect("eth1");
        let mut node = Node {
            dp,
            eth0,
            eth0_mac,
            eth1_mac,
            vx0_mac,
        };
        for (ifindex, addr) in [(eth0, "192.0.2.10"), (eth1, "192.0.3.10")] {
            let addr = addr.parse().unwrap();
            node.dp
                .maps
                .set_node_addr(ifindex, addr)
                .expect("node addr");
        }
        f(&mut node);
    })
    .expect("test body");
}

/// One fixture: a packet in, the verdict, the counters it moves (`LB_GLOBAL_STATS` by name;
/// every counter not named must stay put), and the packet out (None: unchanged).
struct Case {
    name: &'static str,
    hook: Hook,
    input: Vec<u8>,
    verdict: u32,
    counters: &'static [(&'static str, u64)],
    output: Option<Vec<u8>>,
}

#[derive(Clone, Copy)]
enum Hook {
    Xdp,
    Tc,
    /// TC ingress of the external interface (where XDP is not used).
    TcExt,
    /// TC ingress of the external interface beside XDP.
    TcHandoff,
    /// TC egress (pod and external interfaces alike).
    TcEgress,
}

fn check(node: &Node, cases: &[Case]) {
    for c in cases {
        let before = node.dp.maps.global_counters().expect("counters");
        let (verdict, out) = match c.hook {
            Hook::Xdp => node.xdp(&c.input),
            Hook::Tc => node.tc(&c.input),
            Hook::TcExt => node.tc_ext(&c.input),
            Hook::TcHandoff => node.tc_prog(PROG_TC_HANDOFF, &c.input),
            Hook::TcEgress => node.tc_egress(&c.input),
        };
        assert_eq!(verdict, c.verdict, "{}: verdict", c.name);
        let after = node.dp.maps.global_counters().expect("counters");
        let moved: Vec<(&str, u64)> = after
            .iter()
            .map(|(name, n)| (*name, n - before[name]))
            .filter(|(_, d)| *d > 0)
            .collect();
        let mut want_moved = c.counters.to_vec();
        want_moved.sort();
        assert_eq!(moved, want_moved, "{}: counters moved", c.name);
        let want = c.output.as_ref().unwrap_or(&c.input);
        if verdict != XDP_DROP || !matches!(c.hook, Hook::Xdp) {
            assert_eq!(hex(&out), hex(want), "{}: packet out", c.name);
            if c.output.is_some() {
                assert_checksums(&out);
            }
        }
        println!("ok: {}", c.name);
    }
}

fn hex(b: &[u8]) -> String {
    b.iter()
        .map(|x| format!("{x:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

const CLUSTER_IP: &str = "10.96.0.10";
const NODE: &str = "192.0.2.10";

fn web(node: &mut Node, backends: &[(u32, &str, u16, u8)]) {
    node.program(&Svc {
        id: 1,
        frontends: &[
            (CLUSTER_IP, 80, SCOPE_INTERNAL, KIND_CLUSTER_IP),
            (CLUSTER_IP, 80, SCOPE_EXTERNAL, KIND_CLUSTER_IP),
            (NODE, 30080, SCOPE_EXTERNAL, KIND_NODE_PORT),
        ],
        proto: PROTO_TCP,
        backends,
        flags: 0,
        verdict: VERDICT_REJECT,
    });
}

fn node_counter(node: &Node, name: &str) -> u64 {
    node.dp.maps.global_counters().expect("counters")[name]
}

/// Two local pods for the fixtures that watch which one a flow goes to.
const TWO_PODS: [(u32, &str, u16, u8); 2] = [
    (1, "10.244.1.7", 8080, BE_F_LOCAL),
    (2, "10.244.1.8", 8080, BE_F_LOCAL),
];

/// A ClusterIP for traffic from pods (`CLUSTER_IP:port`), set 1, over `backends`.
const CIP_80: [(&str, u16, u8, u8); 1] = [(CLUSTER_IP, 80, SCOPE_INTERNAL, KIND_CLUSTER_IP)];
const CIP_53: [(&str, u16, u8, u8); 1] = [(CLUSTER_IP, 53, SCOPE_INTERNAL, KIND_CLUSTER_IP)];

fn pod_service<'a>(
    frontends: &'a [(&'a str, u16, u8, u8)],
    proto: u8,
    flags: u8,
    backends: &'a [(u32, &'a str, u16, u8)],
) -> Svc<'a> {
    Svc {
        id: 1,
        frontends,
        proto,
        backends,
        flags,
        verdict: VERDICT_REJECT,
    }
}

/// The pod of `TWO_PODS` a flow went to, and the other one.
type Pod = (u32, &'static str, u16, u8);

fn chosen_and_other(dest: std::net::Ipv4Addr) -> (Pod, Pod) {
    if dest.to_string() == TWO_PODS[0].1 {
        (TWO_PODS[0], TWO_PODS[1])
    } else {
        (TWO_PODS[1], TWO_PODS[0])
    }
}

/// Where the pod-side program sends a packet from `src` to `dst` (its destination after DNAT).
fn dest_of(node: &Node, src: &str, dst: &str, l4: L4) -> std::net::Ipv4Addr {
    let (_, out) = node.tc(&Pkt::new(src, dst, l4).build());
    let sliced = etherparse::SlicedPacket::from_ethernet(&out).expect("parse");
    let dest = match sliced.net {
        Some(etherparse::NetSlice::Ipv4(v4)) => v4.header().destination_addr(),
        other => panic!("not IPv4: {other:?}"),
    };
    dest
}

fn tcp(syn: bool, ack: bool, fin: bool, rst: bool) -> L4 {
    L4::Tcp {
        syn,
        ack: ack.then_some(5000),
        fin,
        rst,
        seq: 1000,
    }
}

/// The conntrack entry of `p`'s flow, from the table of its protocol.
fn flow(node: &Node, p: &Pkt, what: &str) -> lb_common::Ct4 {
    let table = match p.l4 {
        L4::Tcp { .. } => &node.dp.maps.tcp_flows,
        L4::Udp { .. } => &node.dp.maps.other_flows,
    };
    table.ct.get(&tuple(p), 0).expect(what)
}

fn tuple(p: &Pkt) -> lb_common::Tuple4 {
    let proto = match p.l4 {
        L4::Tcp { .. } => PROTO_TCP,
        L4::Udp { .. } => PROTO_UDP,
    };
    lb_common::Tuple4 {
        saddr: u32::from_ne_bytes(p.src.ip().octets()),
        daddr: u32::from_ne_bytes(p.dst.ip().octets()),
        sport: p.src.port().to_be(),
        dport: p.dst.port().to_be(),
        proto,
        _pad: [0; 3],
    }
}

mod affinity;
mod conntrack;
mod fragments;
mod fuzz;
mod icmp;
mod snat;
mod source_ranges;
mod translation;
mod verdicts;
