//! Packet fixtures through BPF_PROG_TEST_RUN on the real kernel, in Katran's style: a table of
//! packet in → verdict and packet out, compared byte for byte with packets built by etherparse,
//! whose checksums are checked by etherparse too.
//!
//! The programs run in a namespace of their own holding the node's view of the network, so the
//! FIB lookups behind SNAT and XDP_TX see routes and neighbours the test controls:
//! node 192.0.2.10/24 on eth0; another node 192.0.2.20 (pods 10.244.2.0/24 behind it); a router
//! 192.0.2.1 towards clients in 198.51.100.0/24; local pods 10.244.1.0/24. Two paths are
//! narrower than the links (a locked route MTU of 1280, which forwarding honours as it does a
//! device's): to pods 10.244.5.0/24 behind 192.0.2.20, and to clients in 203.0.113.0/24 behind
//! the router. Pods 10.244.6.0/24 are behind 192.0.2.30, whose neighbour entry is missing.
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
            maps.set_backend(id, &be).expect("backend");
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
        maps.set_service(s.id, &svc, &ids, previous)
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
                _pad: [0; 3],
            };
            maps.set_frontend(&key, &fe).expect("frontend");
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

/// One fixture: a packet in, the verdict, and the packet out (None: unchanged).
struct Case {
    name: &'static str,
    hook: Hook,
    input: Vec<u8>,
    verdict: u32,
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
        let (verdict, out) = match c.hook {
            Hook::Xdp => node.xdp(&c.input),
            Hook::Tc => node.tc(&c.input),
            Hook::TcExt => node.tc_ext(&c.input),
            Hook::TcHandoff => node.tc_prog(PROG_TC_HANDOFF, &c.input),
            Hook::TcEgress => node.tc_egress(&c.input),
        };
        assert_eq!(verdict, c.verdict, "{}: verdict", c.name);
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

#[test]
fn fixtures_dnat_reverse_nat_and_untouched_traffic() {
    with_node("pkt-dnat", |node| {
        web(node, &[(1, "10.244.1.7", 8080, BE_F_LOCAL)]);
        node.program(&Svc {
            id: 2,
            frontends: &[(CLUSTER_IP, 53, SCOPE_INTERNAL, KIND_CLUSTER_IP)],
            proto: PROTO_UDP,
            backends: &[(3, "10.244.1.8", 5353, BE_F_LOCAL)],
            flags: 0,
            verdict: VERDICT_REJECT,
        });
        let pod_syn = Pkt::new("10.244.1.5:40000", "10.96.0.10:80", SYN);
        let client_syn = Pkt::new("198.51.100.7:40001", "192.0.2.10:30080", SYN);
        let udp = Pkt::new("10.244.1.5:40002", "10.96.0.10:53", UDP);
        let udp_no_csum = Pkt::new(
            "10.244.1.5:40003",
            "10.96.0.10:53",
            L4::Udp { checksum: false },
        );
        let mut with_options = Pkt::new("198.51.100.7:40004", "192.0.2.10:30080", SYN);
        with_options.ip_options = vec![1, 1, 1, 0]; // NOP NOP NOP EOL
        let reply = Pkt::new("10.244.1.7:8080", "198.51.100.7:40001", ACK).macs(POD_MAC, NODE_MAC);
        let pod_reply =
            Pkt::new("10.244.1.7:8080", "10.244.1.5:40000", ACK).macs(POD_MAC, NODE_MAC);
        let mut truncated = Pkt::new("198.51.100.7:40005", "192.0.2.10:30080", SYN).build();
        truncated.truncate(14 + 20 + 10);
        let mut bad_ihl = client_syn.build();
        bad_ihl[14] = 0x44; // IHL 4: shorter than the fixed header
        let arp = {
            let mut f = client_syn.build();
            f[12..14].copy_from_slice(&[0x08, 0x06]);
            f
        };
        let echo = {
            use etherparse::PacketBuilder;
            let mut f = Vec::new();
            PacketBuilder::ethernet2(packets_client_mac(), NODE_MAC)
                .ipv4([198, 51, 100, 7], [192, 0, 2, 10], 64)
                .icmpv4_echo_request(1, 1)
                .write(&mut f, b"ping")
                .unwrap();
            f
        };
        check(
            node,
            &[
                Case {
                    name: "pod -> ClusterIP TCP SYN is DNATed to the backend",
                    hook: Hook::Tc,
                    input: pod_syn.build(),
                    verdict: TC_ACT_OK,
                    output: Some(pod_syn.nat("10.244.1.5:40000", "10.244.1.7:8080").build()),
                },
                Case {
                    name: "pod -> ClusterIP UDP is DNATed",
                    hook: Hook::Tc,
                    input: udp.build(),
                    verdict: TC_ACT_OK,
                    output: Some(udp.nat("10.244.1.5:40002", "10.244.1.8:5353").build()),
                },
                Case {
                    name: "UDP without checksum keeps checksum 0",
                    hook: Hook::Tc,
                    input: udp_no_csum.build(),
                    verdict: TC_ACT_OK,
                    output: Some(
                        udp_no_csum
                            .nat("10.244.1.5:40003", "10.244.1.8:5353")
                            .build(),
                    ),
                },
                Case {
                    name: "NodePort on a node address to a local backend: DNAT, client IP kept",
                    hook: Hook::Xdp,
                    input: client_syn.build(),
                    verdict: XDP_PASS,
                    output: Some(
                        client_syn
                            .nat("198.51.100.7:40001", "10.244.1.7:8080")
                            .build(),
                    ),
                },
                Case {
                    // Netfilter between the two hooks sees the reply of the flow it forwarded.
                    name: "reply from the local backend enters untouched",
                    hook: Hook::Tc,
                    input: reply.build(),
                    verdict: TCX_NEXT,
                    output: None,
                },
                Case {
                    name: "... and leaves reverse-NATed to the NodePort",
                    hook: Hook::TcEgress,
                    input: reply.build(),
                    verdict: TC_ACT_OK,
                    output: Some(reply.nat("192.0.2.10:30080", "198.51.100.7:40001").build()),
                },
                Case {
                    name: "reply to a pod enters untouched",
                    hook: Hook::Tc,
                    input: pod_reply.build(),
                    verdict: TCX_NEXT,
                    output: None,
                },
                Case {
                    name:
                        "... and leaves through the pod's interface reverse-NATed to the ClusterIP",
                    hook: Hook::TcEgress,
                    input: pod_reply.build(),
                    verdict: TC_ACT_OK,
                    output: Some(pod_reply.nat("10.96.0.10:80", "10.244.1.5:40000").build()),
                },
                Case {
                    name: "NodePort on a non-node address is untouched",
                    hook: Hook::Xdp,
                    input: client_syn
                        .nat("198.51.100.7:40001", "192.0.2.99:30080")
                        .build(),
                    verdict: XDP_PASS,
                    output: None,
                },
                Case {
                    name: "IPv4 options are kept and skipped to find the ports",
                    hook: Hook::Xdp,
                    input: with_options.build(),
                    verdict: XDP_PASS,
                    output: Some(
                        with_options
                            .nat("198.51.100.7:40004", "10.244.1.7:8080")
                            .build(),
                    ),
                },
                Case {
                    name: "truncated TCP header passes untouched",
                    hook: Hook::Xdp,
                    input: truncated,
                    verdict: XDP_PASS,
                    output: None,
                },
                Case {
                    name: "IHL below 5 passes untouched",
                    hook: Hook::Xdp,
                    input: bad_ihl,
                    verdict: XDP_PASS,
                    output: None,
                },
                Case {
                    name: "Ethernet frame cut after its header passes",
                    hook: Hook::Xdp,
                    input: client_syn.build()[..14].to_vec(),
                    verdict: XDP_PASS,
                    output: None,
                },
                Case {
                    name: "non-IP (ARP ethertype) passes untouched",
                    hook: Hook::Xdp,
                    input: arp.clone(),
                    verdict: XDP_PASS,
                    output: None,
                },
                Case {
                    name: "ICMP echo (not TCP/UDP) passes untouched",
                    hook: Hook::Xdp,
                    input: echo.clone(),
                    verdict: XDP_PASS,
                    output: None,
                },
                Case {
                    name: "TC: pod traffic to no Service goes on to the next tcx program",
                    hook: Hook::Tc,
                    input: pod_syn.nat("10.244.1.5:40000", "10.244.2.9:80").build(),
                    verdict: TCX_NEXT,
                    output: None,
                },
                Case {
                    name: "TC: ICMP echo goes on to the next tcx program",
                    hook: Hook::Tc,
                    input: echo,
                    verdict: TCX_NEXT,
                    output: None,
                },
                Case {
                    name: "TC: non-IP goes on to the next tcx program",
                    hook: Hook::Tc,
                    input: arp,
                    verdict: TCX_NEXT,
                    output: None,
                },
            ],
        );
    });
}

fn packets_client_mac() -> [u8; 6] {
    lb_tests::packets::CLIENT_MAC
}

/// The node itself as the endpoint (the `kubernetes` Service on a control-plane node, a
/// hostNetwork pod): the pod's SYN is DNATed to the node's address and delivered locally; the
/// node's reply leaves through the pod's interface, where only TC egress sees it.
#[test]
fn fixture_the_node_as_endpoint_is_reverse_natted_on_egress() {
    with_node("pkt-egress", |node| {
        node.program(&Svc {
            id: 3,
            frontends: &[("10.96.0.1", 443, SCOPE_INTERNAL, KIND_CLUSTER_IP)],
            proto: PROTO_TCP,
            backends: &[(5, NODE, 6443, BE_F_LOCAL)],
            flags: 0,
            verdict: VERDICT_REJECT,
        });
        let syn = Pkt::new("10.244.1.5:41000", "10.96.0.1:443", SYN);
        let synack = L4::Tcp {
            syn: true,
            ack: Some(1001),
            fin: false,
            rst: false,
            seq: 7000,
        };
        let other = Pkt::new("192.0.2.10:6443", "10.244.1.5:41001", synack);
        let synack = Pkt::new("192.0.2.10:6443", "10.244.1.5:41000", synack);
        check(
            node,
            &[
                Case {
                    name: "pod to the kubernetes ClusterIP: DNAT to the node's address",
                    hook: Hook::Tc,
                    input: syn.build(),
                    verdict: TC_ACT_OK,
                    output: Some(syn.nat("10.244.1.5:41000", "192.0.2.10:6443").build()),
                },
                Case {
                    name: "the node's reply gets the ClusterIP back on egress",
                    hook: Hook::TcEgress,
                    input: synack.build(),
                    verdict: TC_ACT_OK,
                    output: Some(synack.nat("10.96.0.1:443", "10.244.1.5:41000").build()),
                },
                Case {
                    name: "the node's traffic of no flow leaves untouched",
                    hook: Hook::TcEgress,
                    input: other.build(),
                    verdict: TCX_NEXT,
                    output: None,
                },
                Case {
                    name: "an already translated reply is not translated again",
                    hook: Hook::TcEgress,
                    input: synack.nat("10.96.0.1:443", "10.244.1.5:41000").build(),
                    verdict: TCX_NEXT,
                    output: None,
                },
            ],
        );
    });
}

#[test]
fn fixture_established_flow_keeps_its_backend() {
    with_node("pkt-ct", |node| {
        web(node, &[(1, "10.244.1.7", 8080, BE_F_LOCAL)]);
        let syn = Pkt::new("10.244.1.5:41000", "10.96.0.10:80", SYN);
        let (v, out) = node.tc(&syn.build());
        assert_eq!(
            (v, hex(&out)),
            (
                TC_ACT_OK,
                hex(&syn.nat("10.244.1.5:41000", "10.244.1.7:8080").build())
            )
        );
        // The backend set changes: backend 1 is terminating, backend 2 takes new connections.
        web(
            node,
            &[
                (1, "10.244.1.7", 8080, BE_F_LOCAL | BE_F_TERMINATING),
                (2, "10.244.1.9", 8080, BE_F_LOCAL),
            ],
        );
        let ack = Pkt::new("10.244.1.5:41000", "10.96.0.10:80", ACK);
        check(
            node,
            &[
                Case {
                    name: "follow-up packet keeps the terminating backend",
                    hook: Hook::Tc,
                    input: ack.build(),
                    verdict: TC_ACT_OK,
                    output: Some(ack.nat("10.244.1.5:41000", "10.244.1.7:8080").build()),
                },
                Case {
                    name: "a new connection goes to the ready backend",
                    hook: Hook::Tc,
                    input: syn.nat("10.244.1.5:41001", "10.96.0.10:80").build(),
                    verdict: TC_ACT_OK,
                    output: Some(syn.nat("10.244.1.5:41001", "10.244.1.9:8080").build()),
                },
            ],
        );
        // Once the backend is deleted (not terminating), its flows move to a live one.
        node.dp.maps.remove_backend(1).expect("remove backend");
        check(
            node,
            &[Case {
                name: "flow of a deleted backend moves to a live one",
                hook: Hook::Tc,
                input: ack.build(),
                verdict: TC_ACT_OK,
                output: Some(ack.nat("10.244.1.5:41000", "10.244.1.9:8080").build()),
            }],
        );
    });
}

#[test]
fn fixture_snat_to_remote_backend_and_unsnat() {
    with_node("pkt-snat", |node| {
        web(node, &[(1, "10.244.2.9", 8080, 0)]);
        let syn = Pkt::new("198.51.100.7:42000", "192.0.2.10:30080", SYN);
        let (verdict, out) = node.xdp(&syn.build());
        assert_eq!(verdict, XDP_TX, "SNATed packet goes back out eth0");
        let ct = flow(node, &syn, "conntrack entry");
        let snat_port = u16::from_be(ct.snat_port);
        assert!(
            (61000..=65535).contains(&snat_port),
            "SNAT port {snat_port} in range"
        );
        let want = syn
            .nat(&format!("192.0.2.10:{snat_port}"), "10.244.2.9:8080")
            .hop()
            .macs(NODE_MAC, NODE2_MAC);
        let mut want = want.build();
        want[6..12].copy_from_slice(&node.eth0_mac);
        assert_eq!(hex(&out), hex(&want), "DNAT + SNAT, MACs from the FIB");
        assert_checksums(&out);

        let reply = Pkt::new("10.244.2.9:8080", &format!("192.0.2.10:{snat_port}"), ACK)
            .macs(NODE2_MAC, NODE_MAC);
        let (verdict, out) = node.xdp(&reply.build());
        assert_eq!(verdict, XDP_TX, "un-SNATed reply goes back out eth0");
        let mut want = reply
            .nat("192.0.2.10:30080", "198.51.100.7:42000")
            .hop()
            .macs(NODE_MAC, GW_MAC)
            .build();
        want[6..12].copy_from_slice(&node.eth0_mac);
        assert_eq!(
            hex(&out),
            hex(&want),
            "un-SNAT to the client via the router"
        );
        assert_checksums(&out);

        // A second client flow to the same backend gets another port.
        let syn2 = syn.nat("198.51.100.7:42001", "192.0.2.10:30080");
        assert_eq!(node.xdp(&syn2.build()).0, XDP_TX);
        let ct2 = flow(node, &syn2, "conntrack entry");
        assert_ne!(ct2.snat_port, ct.snat_port, "SNAT ports never collide");

        // No hop left: lb does not forward it itself; the stack's forwarding drops it (and may
        // answer time exceeded), as a router does.
        let dying = syn.nat("198.51.100.7:42005", "192.0.2.10:30080").ttl(1);
        assert_eq!(node.xdp(&dying.build()).0, XDP_PASS, "TTL 1: to the stack");

        // --snat-port-range 40000-40001: two more flows take those two ports, one each; a third
        // finds both held by live flows and is dropped, counted.
        node.dp.set_snat_ports((40000, 40001)).expect("SNAT range");
        let mut taken = Vec::new();
        for client_port in [42002, 42003] {
            let syn = syn.nat(&format!("198.51.100.7:{client_port}"), "192.0.2.10:30080");
            assert_eq!(node.xdp(&syn.build()).0, XDP_TX, "flow from {client_port}");
            let ct = flow(node, &syn, "flow");
            taken.push(u16::from_be(ct.snat_port));
        }
        taken.sort();
        assert_eq!(
            taken,
            [40000, 40001],
            "the configured range, each port once"
        );
        let exhausted = || node_counter(node, "drop_snat_exhausted");
        let before = exhausted();
        let syn5 = syn.nat("198.51.100.7:42004", "192.0.2.10:30080");
        assert_eq!(node.xdp(&syn5.build()).0, XDP_DROP, "no port left");
        assert_eq!(exhausted(), before + 1, "counted as SNAT exhaustion");
    });
}

/// A SNAT port changes hands only when the flow that held it is over: closed and past the
/// backend's TIME_WAIT, or orphaned (its conntrack entry gone) and not seen for a second; and
/// never while another CPU holds the port's claim.
#[test]
fn fixture_a_snat_port_changes_hands_only_when_its_flow_is_over() {
    use aya::maps::{HashMap, MapData};
    use lb_common::timeout::TCP_TIME_WAIT;
    with_node("pkt-snat-reuse", |node| {
        web(node, &[(1, "10.244.2.9", 8080, 0)]);
        node.dp.set_snat_ports((40000, 40000)).expect("SNAT range");
        let syn_from = |client: &str| Pkt::new(client, "192.0.2.10:30080", SYN);
        let port_key = tuple(&Pkt::new("10.244.2.9:8080", "192.0.2.10:40000", ACK));
        let holder = |node: &Node| {
            let rn = node.dp.maps.tcp_flows.rnat.get(&port_key, 0).expect("rnat");
            std::net::Ipv4Addr::from(rn.daddr.to_ne_bytes()).to_string()
        };
        let takes = |node: &Node, client: &str| node.xdp(&syn_from(client).build()).0 == XDP_TX;
        let age = |node: &mut Node, client: &str, idle: Duration| {
            let seen = monotonic_ns_after(idle) - idle.as_nanos() as u64;
            let flows = &mut node.dp.maps.tcp_flows;
            let key = tuple(&syn_from(client));
            if let Ok(mut ct) = flows.ct.get(&key, 0) {
                ct.last_seen_ns = seen;
                flows.ct.insert(key, ct, 0).expect("age ct");
            }
            let mut rn = flows.rnat.get(&port_key, 0).expect("rnat");
            rn.last_seen_ns = seen;
            flows.rnat.insert(port_key, rn, 0).expect("age rnat");
        };

        assert!(
            takes(node, "198.51.100.7:42000"),
            "the first flow takes the port"
        );
        assert!(!takes(node, "198.51.100.8:42000"), "held by a live flow");
        // The client resets: closed, but the backend keeps TIME_WAIT for its 4-tuple.
        let rst = Pkt::new(
            "198.51.100.7:42000",
            "192.0.2.10:30080",
            tcp(false, true, false, true),
        );
        assert_eq!(node.xdp(&rst.build()).0, XDP_TX, "the RST is forwarded");
        age(
            node,
            "198.51.100.7:42000",
            Duration::from_secs(TCP_TIME_WAIT / 2),
        );
        assert!(!takes(node, "198.51.100.8:42000"), "closed, in TIME_WAIT");
        age(
            node,
            "198.51.100.7:42000",
            Duration::from_secs(TCP_TIME_WAIT + 1),
        );
        assert!(takes(node, "198.51.100.8:42000"), "past TIME_WAIT: reused");
        assert_eq!(
            holder(node),
            "198.51.100.8",
            "replies to the port reach the new client"
        );

        // Orphaned (its conntrack entry evicted) but just seen: kept a second, as a claim whose
        // conntrack entry is not written yet is.
        let evict = |node: &mut Node, client: &str| {
            let key = tuple(&syn_from(client));
            node.dp.maps.tcp_flows.ct.remove(&key).expect("evict");
        };
        evict(node, "198.51.100.8:42000");
        assert!(!takes(node, "198.51.100.9:42000"), "orphaned, just seen");
        age(node, "198.51.100.8:42000", Duration::from_secs(2));
        assert!(
            takes(node, "198.51.100.9:42000"),
            "orphaned and quiet: reused"
        );
        assert_eq!(holder(node), "198.51.100.9");

        // Another CPU holds the port's claim: this one leaves the port to it.
        evict(node, "198.51.100.9:42000");
        age(node, "198.51.100.9:42000", Duration::from_secs(2));
        let pin = node.dp.layout().map(map_names::SNAT_CLAIMS4);
        let mut claims: HashMap<MapData, lb_common::Tuple4, u8> = HashMap::try_from(
            aya::maps::Map::HashMap(MapData::from_pin(pin).expect("claims")),
        )
        .expect("claims map");
        claims.insert(port_key, 0, 0).expect("claim");
        assert!(
            !takes(node, "198.51.100.10:42000"),
            "claimed by another CPU"
        );
        claims.remove(&port_key).expect("release");
        assert!(takes(node, "198.51.100.10:42000"), "claim released: reused");
        assert_eq!(holder(node), "198.51.100.10");
        assert!(claims.keys().next().is_none(), "no claim left behind");
    });
}

fn node_counter(node: &Node, name: &str) -> u64 {
    node.dp.maps.global_counters().expect("counters")[name]
}

#[test]
fn fixture_snat_out_of_another_interface_is_redirected() {
    with_node("pkt-snat-nic", |node| {
        web(node, &[(1, "10.244.3.9", 8080, 0)]);
        // eth1 is an external interface too: XDP runs there, so XDP may redirect to it.
        node.dp
            .attach_ext("eth1", XdpRequest::Generic)
            .expect("attach eth1");
        let syn = Pkt::new("198.51.100.7:42000", "192.0.2.10:30080", SYN);
        let (verdict, out) = node.xdp(&syn.build());
        assert_eq!(verdict, XDP_REDIRECT, "the route leaves through eth1");
        let ct = flow(node, &syn, "conntrack");
        let snat_port = u16::from_be(ct.snat_port);
        let mut want = syn
            .nat(&format!("192.0.3.10:{snat_port}"), "10.244.3.9:8080")
            .hop()
            .macs(NODE_MAC, NODE3_MAC)
            .build();
        want[6..12].copy_from_slice(&node.eth1_mac);
        assert_eq!(
            hex(&out),
            hex(&want),
            "SNAT to eth1's address, MACs of eth1's next hop"
        );
        assert_checksums(&out);
    });
}

/// A route through a device XDP does not run on (a VXLAN tunnel here; a bridge, an L3 device)
/// is not a redirect target: native XDP cannot transmit there (the kernel drops the frame
/// silently). The translated packet goes to TC marked, as for an unresolved neighbour.
#[test]
fn fixture_snat_into_a_tunnel_is_handed_to_tc() {
    with_node("pkt-snat-tunnel", |node| {
        let vx0_mac = node.vx0_mac;
        handed_to_tc(node, "10.244.7.9", |p| {
            p.macs(vx0_mac, [2, 0, 0, 0, 0, 0x70])
        });
    });
}

/// XDP cannot resolve a next hop's MAC address: a packet it translated for a node whose
/// neighbour entry is missing goes to TC marked (the metadata word before the frame), where
/// lb_tc_handoff sends it on with `bpf_redirect_neigh` (the lab shows the whole path:
/// lab_neighbours). Unmarked packets pass lb_tc_handoff untouched.
#[test]
fn fixture_an_unresolved_next_hop_is_handed_to_tc() {
    with_node("pkt-handoff", |node| {
        let syn = handed_to_tc(node, "10.244.6.9", |p| p);
        check(
            node,
            &[Case {
                name: "an unmarked packet passes the handoff program untouched",
                hook: Hook::TcHandoff,
                input: syn.build(),
                verdict: TCX_NEXT,
                output: None,
            }],
        );
    });
}

/// The metadata word lb_xdp_ext writes before a frame it hands to TC (handoff.rs: "LBHO" as a
/// native-endian word).
const HANDOFF_MARK: [u8; 4] = 0x4c42_484fu32.to_ne_bytes();

/// A NodePort SYN to the one backend `backend` (port 8080, on another node) leaves XDP for TC:
/// XDP_PASS, the mark before the frame, and the frame SNATed, DNATed and one hop further (its
/// MAC addresses as `l2` makes them). Returns the SYN.
fn handed_to_tc(node: &mut Node, backend: &str, l2: impl FnOnce(Pkt) -> Pkt) -> Pkt {
    web(node, &[(1, backend, 8080, 0)]);
    let syn = Pkt::new("198.51.100.7:42000", "192.0.2.10:30080", SYN);
    let (verdict, out) = node.xdp(&syn.build());
    assert_eq!(verdict, XDP_PASS, "to the stack, for TC");
    let snat = format!(
        "192.0.2.10:{}",
        u16::from_be(flow(node, &syn, "flow").snat_port)
    );
    let mut want = HANDOFF_MARK.to_vec();
    want.extend(l2(syn.nat(&snat, &format!("{backend}:8080")).hop()).build());
    assert_eq!(hex(&out), hex(&want), "marked, translated, one hop further");
    assert_checksums(&out[4..]);
    syn
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

/// ClusterIP :80 with ClientIP affinity (60 s) over `backends`.
fn program_sticky(node: &mut Node, backends: &[(u32, &str, u16, u8)]) {
    node.program(&pod_service(&CIP_80, PROTO_TCP, SVC_F_AFFINITY, backends));
    let mut value = node.dp.maps.services.get(&1, 0).expect("service");
    value.affinity_timeout = 60;
    node.dp.maps.services.insert(1, value, 0).expect("timeout");
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

#[test]
fn fixture_affinity_sticks_and_never_follows_a_reused_backend_id() {
    with_node("pkt-affinity", |node| {
        program_sticky(node, &TWO_PODS);
        let dest = |node: &Node, sport: u16| {
            dest_of(node, &format!("10.244.1.5:{sport}"), "10.96.0.10:80", SYN)
        };
        let first = dest(node, 40000);
        for sport in 40001..40010 {
            assert_eq!(dest(node, sport), first, "new flows of the client stick");
        }
        // The chosen pod goes and its id is reused for a pod of another service: the affinity
        // entry must not lead there.
        let (gone, stays) = chosen_and_other(first);
        program_sticky(node, &[stays]);
        let reused = Backend4 {
            addr: ip("10.244.9.9"),
            port: port(8080),
            flags: 0,
            _pad: 0,
        };
        node.dp.maps.set_backend(gone.0, &reused).expect("reuse id");
        assert_eq!(
            dest(node, 40100).to_string(),
            stays.1,
            "not the reused id's pod"
        );
    });
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

#[test]
fn fixture_affinity_spreads_clients_and_replaces_a_removed_backend() {
    with_node("pkt-affinity-spread", |node| {
        program_sticky(node, &TWO_PODS);
        let chosen: std::collections::BTreeSet<_> = (20..40)
            .map(|host| {
                dest_of(
                    node,
                    &format!("10.244.1.{host}:40000"),
                    "10.96.0.10:80",
                    SYN,
                )
            })
            .collect();
        assert_eq!(chosen.len(), 2, "20 clients spread over both backends");

        let first = dest_of(node, "10.244.1.99:40000", "10.96.0.10:80", SYN);
        let (gone, stays) = chosen_and_other(first);
        program_sticky(node, &[stays]);
        node.dp.maps.remove_backend(gone.0).expect("remove backend");
        let next = dest_of(node, "10.244.1.99:40001", "10.96.0.10:80", SYN);
        assert_eq!(
            next.to_string(),
            stays.1,
            "a removed backend is not followed"
        );
        let key = lb_common::AffinityKey4 {
            service_id: 1,
            client: ip("10.244.1.99"),
        };
        let entry = node.dp.maps.affinity.get(&key, 0).expect("affinity entry");
        assert_eq!(entry.backend_id, stays.0, "the entry was replaced");
    });
}

#[test]
fn fixture_a_flow_lives_while_either_side_talks() {
    with_node("pkt-ct-replies", |node| {
        node.program(&pod_service(&CIP_53, PROTO_UDP, 0, &TWO_PODS));
        let (client, vip) = ("10.244.1.5:5353", "10.96.0.10:53");
        let (chosen, other) = chosen_and_other(dest_of(node, client, vip, UDP));
        // New flows would now go to `other` only; `chosen` stays a backend (still listed).
        node.program(&pod_service(&CIP_53, PROTO_UDP, 0, &[other]));
        let ct_key = tuple(&Pkt::new(client, vip, UDP));
        let rn_key = tuple(&Pkt::new(&format!("{}:8080", chosen.1), client, UDP));
        let age = |node: &mut Node, ct_too: bool, rn_too: bool| {
            let quiet = Duration::from_secs(120);
            let old = monotonic_ns_after(quiet) - quiet.as_nanos() as u64;
            let maps = &mut node.dp.maps;
            if ct_too {
                let mut ct = maps.other_flows.ct.get(&ct_key, 0).expect("ct");
                ct.last_seen_ns = old;
                maps.other_flows.ct.insert(ct_key, ct, 0).expect("age ct");
            }
            if rn_too {
                let mut rn = maps.other_flows.rnat.get(&rn_key, 0).expect("rnat");
                rn.last_seen_ns = old;
                maps.other_flows
                    .rnat
                    .insert(rn_key, rn, 0)
                    .expect("age rnat");
            }
        };
        // The client was quiet for 2 minutes but the server kept talking: same backend.
        age(node, true, false);
        assert_eq!(dest_of(node, client, vip, UDP).to_string(), chosen.1);
        // Both sides quiet beyond the UDP timeout: a new flow, to the only backend left.
        age(node, true, true);
        assert_eq!(dest_of(node, client, vip, UDP).to_string(), other.1);
    });
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

/// The TCP state machine, row by row: (what, packet, its hook, the conntrack flags the client's
/// flow holds afterwards of ESTABLISHED/REPLIED/CLOSING).
#[test]
fn fixture_tcp_states() {
    use lb_common::{CT_F_CLOSING, CT_F_ESTABLISHED, CT_F_REPLIED};
    with_node("pkt-tcp-states", |node| {
        node.program(&pod_service(&CIP_80, PROTO_TCP, 0, &TWO_PODS[..1]));
        let (client, vip, backend) = ("10.244.1.5:42000", "10.96.0.10:80", "10.244.1.7:8080");
        let state = |node: &Node| {
            let ct = node
                .dp
                .maps
                .tcp_flows
                .ct
                .get(&tuple(&Pkt::new(client, vip, SYN)), 0);
            ct.expect("the client's flow").flags & (CT_F_ESTABLISHED | CT_F_REPLIED | CT_F_CLOSING)
        };
        let from_client = |l4| Pkt::new(client, vip, l4).build();
        let from_backend = |l4| {
            Pkt::new(backend, client, l4)
                .macs(POD_MAC, NODE_MAC)
                .build()
        };
        let rows: [(&str, Vec<u8>, u8); 6] = [
            ("SYN opens the flow, not established", from_client(SYN), 0),
            (
                "an ACK before any answer does not establish it",
                from_client(ACK),
                0,
            ),
            (
                "the backend's SYN-ACK is recorded",
                from_backend(tcp(true, true, false, false)),
                CT_F_REPLIED,
            ),
            (
                "the client's ACK completes the handshake",
                from_client(ACK),
                CT_F_REPLIED | CT_F_ESTABLISHED,
            ),
            (
                "the backend's RST closes the flow",
                from_backend(tcp(false, true, false, true)),
                CT_F_REPLIED | CT_F_ESTABLISHED | CT_F_CLOSING,
            ),
            (
                "a new SYN on the closed 4-tuple starts over",
                from_client(SYN),
                0,
            ),
        ];
        // Flags are only ever added to a live entry: the last row's zero is a new entry.
        for (what, packet, want) in rows {
            let (verdict, _) = match packet[6..12] == POD_MAC {
                true => node.tc_egress(&packet),
                false => node.tc(&packet),
            };
            assert_eq!(verdict, TC_ACT_OK, "{what}: verdict");
            let flags = state(node);
            assert_eq!(flags, want, "{what}: flags {flags:#x}");
            println!("ok: {what}");
        }
        // A flow whose first packet is a bare ACK (an ACK flood, a flow lb lost) is tracked,
        // but not as established: it expires in 60 s, not 24 h.
        let stray = Pkt::new("10.244.1.5:42001", vip, ACK);
        assert_eq!(node.tc(&stray.build()).0, TC_ACT_OK);
        let ct = flow(node, &stray, "stray flow");
        assert_eq!(ct.flags & CT_F_ESTABLISHED, 0, "{:#x}", ct.flags);
    });
}

/// UDP flows live in a table of their own (`LB4_CT_ANY`), so that a flood of them cannot evict
/// TCP connections; until the backend answers they have the short timeout.
#[test]
fn fixture_udp_flows_have_their_own_table() {
    use lb_common::CT_F_REPLIED;
    with_node("pkt-udp-table", |node| {
        node.program(&pod_service(&CIP_53, PROTO_UDP, 0, &TWO_PODS[..1]));
        node.program(&pod_service(&CIP_80, PROTO_TCP, 0, &TWO_PODS[..1]));
        let (client, dns, web) = ("10.244.1.5:5353", "10.96.0.10:53", "10.96.0.10:80");
        let query = Pkt::new(client, dns, UDP);
        let syn = Pkt::new("10.244.1.5:42000", web, SYN);
        assert_eq!(node.tc(&query.build()).0, TC_ACT_OK, "query translated");
        assert_eq!(node.tc(&syn.build()).0, TC_ACT_OK, "SYN translated");
        let maps = &node.dp.maps;
        let udp = maps
            .other_flows
            .ct
            .get(&tuple(&query), 0)
            .expect("UDP flow");
        assert!(
            maps.tcp_flows.ct.get(&tuple(&query), 0).is_err(),
            "UDP in the TCP table"
        );
        assert!(maps.tcp_flows.ct.get(&tuple(&syn), 0).is_ok(), "TCP flow");
        assert!(
            maps.other_flows.ct.get(&tuple(&syn), 0).is_err(),
            "TCP in the UDP table"
        );
        assert_eq!(
            udp.flags & CT_F_REPLIED,
            0,
            "no answer yet: {:#x}",
            udp.flags
        );
        assert_eq!(
            lb_common::timeout::idle(PROTO_UDP, udp.flags),
            lb_common::timeout::UDP_UNREPLIED
        );

        // The answer, reverse-NATed as it leaves toward the client, marks the flow replied.
        let answer = Pkt::new("10.244.1.7:8080", client, UDP).macs(POD_MAC, NODE_MAC);
        let (verdict, out) = node.tc_egress(&answer.build());
        assert_eq!(verdict, TC_ACT_OK, "answer translated");
        let want = Pkt::new(dns, client, UDP).macs(POD_MAC, NODE_MAC).build();
        assert_eq!(hex(&out), hex(&want), "answer from the Service");
        let udp = node
            .dp
            .maps
            .other_flows
            .ct
            .get(&tuple(&query), 0)
            .expect("UDP flow");
        assert_ne!(udp.flags & CT_F_REPLIED, 0, "answered: {:#x}", udp.flags);
    });
}

/// The TCP conntrack entry of the flow `p` starts (the test fails with `what` if there is none).
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

#[test]
fn fixtures_verdicts_reject_drop_fragments_hairpin() {
    with_node("pkt-verdict", |node| {
        // No endpoints at all: reject. Endpoints elsewhere only, eTP=Local: drop.
        node.program(&Svc {
            id: 5,
            frontends: &[
                (CLUSTER_IP, 81, SCOPE_INTERNAL, KIND_CLUSTER_IP),
                (NODE, 30081, SCOPE_EXTERNAL, KIND_NODE_PORT),
            ],
            proto: PROTO_TCP,
            backends: &[],
            flags: 0,
            verdict: VERDICT_REJECT,
        });
        node.program(&Svc {
            id: 6,
            frontends: &[(NODE, 30081, SCOPE_EXTERNAL, KIND_NODE_PORT)],
            proto: PROTO_UDP,
            backends: &[],
            flags: 0,
            verdict: VERDICT_REJECT,
        });
        node.program(&Svc {
            id: 7,
            frontends: &[(NODE, 30082, SCOPE_EXTERNAL, KIND_NODE_PORT)],
            proto: PROTO_TCP,
            backends: &[],
            flags: SVC_F_EXT_LOCAL,
            verdict: VERDICT_DROP,
        });
        web(node, &[(1, "10.244.1.7", 8080, BE_F_LOCAL)]);
        let tcp = Pkt::new("198.51.100.7:43000", "192.0.2.10:30081", SYN);
        let mut tcp_data = Pkt::new("198.51.100.7:43001", "192.0.2.10:30081", ACK);
        tcp_data.payload = b"GET / HTTP/1.0

"
        .to_vec();
        let udp = Pkt::new("198.51.100.7:43002", "192.0.2.10:30081", UDP);
        let mut udp_opts = udp.clone();
        udp_opts.ip_options = vec![1, 1, 1, 0];
        let pod_tcp = Pkt::new("10.244.1.5:43003", "10.96.0.10:81", SYN).macs(POD_MAC, NODE_MAC);
        let local_drop = Pkt::new("198.51.100.7:43004", "192.0.2.10:30082", SYN);
        let mut first_frag = Pkt::new("198.51.100.7:43005", "192.0.2.10:30081", UDP);
        first_frag.frag = (true, 0);
        let mut later_frag = first_frag.clone();
        later_frag.frag = (false, 3);
        let hairpin = Pkt::new("10.244.1.7:43006", "10.96.0.10:80", SYN).macs(POD_MAC, NODE_MAC);
        check(
            node,
            &[
                Case {
                    name: "no endpoints, TCP SYN: RST|ACK from the frontend",
                    hook: Hook::Xdp,
                    input: tcp.build(),
                    verdict: XDP_TX,
                    output: Some(reject_of(&tcp)),
                },
                Case {
                    name: "no endpoints, TCP with ACK and data: RST with seq = ack",
                    hook: Hook::Xdp,
                    input: tcp_data.build(),
                    verdict: XDP_TX,
                    output: Some(reject_of(&tcp_data)),
                },
                Case {
                    name: "no endpoints, UDP: ICMP port unreachable quoting the datagram",
                    hook: Hook::Xdp,
                    input: udp.build(),
                    verdict: XDP_TX,
                    output: Some(reject_of(&udp)),
                },
                Case {
                    name: "no endpoints, UDP with IP options: the quote includes them",
                    hook: Hook::Xdp,
                    input: udp_opts.build(),
                    verdict: XDP_TX,
                    output: Some(reject_of(&udp_opts)),
                },
                Case {
                    name: "no endpoints from a pod: RST redirected back into the pod",
                    hook: Hook::Tc,
                    input: pod_tcp.build(),
                    verdict: TC_ACT_REDIRECT,
                    output: Some(reject_of(&pod_tcp)),
                },
                Case {
                    name: "eTP=Local without local endpoints: drop",
                    hook: Hook::Xdp,
                    input: local_drop.build(),
                    verdict: XDP_DROP,
                    output: None,
                },
                Case {
                    name: "no endpoints, first fragment of a datagram: ICMP port unreachable",
                    hook: Hook::Xdp,
                    input: first_frag.build(),
                    verdict: XDP_TX,
                    output: Some(reject_of(&first_frag)),
                },
                Case {
                    name: "later fragment of that datagram: dropped with it",
                    hook: Hook::Xdp,
                    input: later_frag.build(),
                    verdict: XDP_DROP,
                    output: None,
                },
                Case {
                    name: "later fragment of a datagram lb never saw: untouched",
                    hook: Hook::Xdp,
                    input: later_frag
                        .nat("198.51.100.8:43005", "192.0.2.10:30081")
                        .build(),
                    verdict: XDP_PASS,
                    output: None,
                },
            ],
        );
        // Hairpin: the SNAT port is allocated at random, so it is read back from conntrack.
        let (verdict, out) = node.tc(&hairpin.build());
        assert_eq!(verdict, TC_ACT_REDIRECT, "hairpin goes back into the pod");
        let ct = flow(node, &hairpin, "hairpin conntrack");
        let port = u16::from_be(ct.snat_port);
        let want = hairpin.nat(&format!("169.254.42.1:{port}"), "10.244.1.7:8080");
        assert_eq!(
            hex(&out),
            hex(&want.macs(NODE_MAC, POD_MAC).build()),
            "hairpin SNAT"
        );
        assert_checksums(&out);
        let stats = node.dp.maps.global_counters().expect("stats");
        assert_eq!(stats["reject_no_backend"], 6);
        assert_eq!(stats["drop_no_local_backend"], 1);
        assert_eq!(stats["drop_fragment"], 1);
    });
}

#[test]
fn fixture_icmp_error_from_backend_is_reverse_natted() {
    with_node("pkt-icmp", |node| {
        node.program(&Svc {
            id: 2,
            frontends: &[(NODE, 30053, SCOPE_EXTERNAL, KIND_NODE_PORT)],
            proto: PROTO_UDP,
            backends: &[(3, "10.244.1.8", 5353, BE_F_LOCAL)],
            flags: 0,
            verdict: VERDICT_REJECT,
        });
        let query = Pkt::new("198.51.100.7:44000", "192.0.2.10:30053", UDP);
        assert_eq!(node.xdp(&query.build()).0, XDP_PASS);
        // The backend's port is closed: it answers about the DNATed datagram it received.
        let seen_by_backend = query.nat("198.51.100.7:44000", "10.244.1.8:5353");
        let unreachable = Icmpv4Type::DestinationUnreachable(DestUnreachableHeader::Port);
        let error = icmp_error(
            Ipv4Addr::new(10, 244, 1, 8),
            &seen_by_backend,
            unreachable.clone(),
            (POD_MAC, NODE_MAC),
            64,
        );
        let want = icmp_error(
            Ipv4Addr::new(192, 0, 2, 10),
            &query,
            unreachable,
            (POD_MAC, NODE_MAC),
            // Forwarded to the client by lb itself: one hop less.
            63,
        );
        check(
            node,
            &[Case {
                name: "ICMP port unreachable from the backend reaches the client as from the \
                       NodePort (redirected: its source is a node address)",
                hook: Hook::Tc,
                input: error,
                verdict: TC_ACT_REDIRECT,
                output: Some(want),
            }],
        );
    });
}

/// Path MTU discovery through a Service: a router on the client's side cannot forward a reply
/// (its link is narrower) and tells the reply's source, the frontend, that it needs fragmenting.
/// lb sends the error on to the backend, quoting the reply as the backend sent it, so the
/// backend's TCP lowers its segment size instead of retransmitting into the black hole.
#[test]
fn fixture_icmp_error_from_the_client_side_reaches_the_backend() {
    with_node("pkt-icmp-client", |node| {
        web(
            node,
            &[
                (1, "10.244.1.7", 8080, BE_F_LOCAL),
                (2, "10.244.2.9", 8080, 0),
            ],
        );
        let frag_needed =
            Icmpv4Type::DestinationUnreachable(DestUnreachableHeader::FragmentationNeeded {
                next_hop_mtu: 1280,
            });
        let router = Ipv4Addr::new(192, 0, 2, 1);
        // Two client flows to the NodePort, one per backend (the choice is random: retry until
        // each backend has one).
        let mut flows: Vec<(Pkt, lb_common::Ct4)> = Vec::new();
        for sport in 45000..45100 {
            let syn = Pkt::new(&format!("198.51.100.7:{sport}"), "192.0.2.10:30080", SYN);
            node.xdp(&syn.build());
            let ct = flow(node, &syn, "conntrack entry");
            if flows.iter().all(|(_, c)| c.backend_id != ct.backend_id) {
                flows.push((syn, ct));
            }
            if flows.len() == 2 {
                break;
            }
        }
        assert_eq!(flows.len(), 2, "both backends chosen within 100 flows");
        let mut cases = Vec::new();
        for (syn, ct) in &flows {
            // The reply as the client sees it, and the error the router sends about it.
            let reply = Pkt::new("192.0.2.10:30080", &syn.src.to_string(), ACK);
            let error = icmp_error(router, &reply, frag_needed.clone(), (GW_MAC, NODE_MAC), 64);
            let backend = Ipv4Addr::from(ct.backend_addr.to_ne_bytes());
            let backend_port = u16::from_be(ct.backend_port);
            if ct.backend_id == 1 {
                // A local backend: it got the client's packets as the client sent them.
                let sent = reply.nat(&format!("{backend}:{backend_port}"), &syn.src.to_string());
                cases.push(Case {
                    name: "fragmentation needed about a reply of a local backend: to the backend, \
                           quoting its packet",
                    hook: Hook::Xdp,
                    input: error,
                    verdict: XDP_PASS,
                    output: Some(icmp_error(
                        router,
                        &sent,
                        frag_needed.clone(),
                        (GW_MAC, NODE_MAC),
                        64,
                    )),
                });
            } else {
                // A remote backend: it got them SNATed, and is reached through the other node.
                let snat = format!("192.0.2.10:{}", u16::from_be(ct.snat_port));
                let sent = reply.nat(&format!("{backend}:{backend_port}"), &snat);
                let mut want = icmp_error(
                    router,
                    &sent,
                    frag_needed.clone(),
                    (NODE_MAC, NODE2_MAC),
                    63,
                );
                want[6..12].copy_from_slice(&node.eth0_mac);
                cases.push(Case {
                    name: "fragmentation needed about a reply of a remote backend: to the \
                           backend, quoting its packet to the SNAT port, forwarded by lb",
                    hook: Hook::Xdp,
                    input: error,
                    verdict: XDP_TX,
                    output: Some(want),
                });
            }
        }
        // An error about a packet lb never translated stays the stack's.
        let unknown = Pkt::new("192.0.2.10:30080", "198.51.100.7:45999", ACK);
        cases.push(Case {
            name: "fragmentation needed about no flow of lb's: untouched",
            hook: Hook::Xdp,
            input: icmp_error(
                router,
                &unknown,
                frag_needed.clone(),
                (GW_MAC, NODE_MAC),
                64,
            ),
            verdict: XDP_PASS,
            output: None,
        });
        check(node, &cases);
    });
}

/// A TCP segment of `from` -> `to` that fills 1400 bytes of IP: too big for the 1280-byte paths.
fn big(from: &str, to: &str) -> Pkt {
    let mut p = Pkt::new(from, to, ACK);
    p.payload = vec![5; 1400 - 40];
    p
}

/// Path MTU discovery through lb where lb forwards itself: a packet with DF set that does not fit
/// the route it leaves by becomes "fragmentation needed" back to its sender, as a router's
/// would, quoting the packet as the sender sent it (only one hop further); without DF it goes on.
/// (A local backend's reply is forwarded by the stack, which checks the path itself before lb's
/// egress hook translates it.)
#[test]
fn fixture_too_big_for_the_path_is_answered_with_fragmentation_needed() {
    with_node("pkt-mtu", |node| {
        web(node, &[(1, "10.244.5.9", 8080, 0)]);
        node.program(&Svc {
            id: 2,
            frontends: &[(NODE, 30081, SCOPE_EXTERNAL, KIND_NODE_PORT)],
            proto: PROTO_TCP,
            backends: &[(2, "10.244.2.9", 8080, 0)],
            flags: 0,
            verdict: VERDICT_REJECT,
        });
        let frag_needed =
            Icmpv4Type::DestinationUnreachable(DestUnreachableHeader::FragmentationNeeded {
                next_hop_mtu: 1280,
            });
        let node_ip = Ipv4Addr::new(192, 0, 2, 10);
        // Open a flow through the NodePort; its SNAT address and port.
        let opened = |client: &str, frontend: &str| {
            let syn = Pkt::new(client, frontend, SYN);
            assert_eq!(
                node.xdp(&syn.build()).0,
                XDP_TX,
                "{client} -> {frontend}: SYN"
            );
            format!(
                "192.0.2.10:{}",
                u16::from_be(flow(node, &syn, "flow").snat_port)
            )
        };
        // A client's upload to a backend behind the narrow path.
        let snat = opened("198.51.100.7:42000", "192.0.2.10:30080");
        let upload = big("198.51.100.7:42000", "192.0.2.10:30080");
        let mut unchecked = upload.clone();
        unchecked.df = false;
        let mut forwarded = unchecked
            .nat(&snat, "10.244.5.9:8080")
            .hop()
            .macs(NODE_MAC, NODE2_MAC)
            .build();
        forwarded[6..12].copy_from_slice(&node.eth0_mac);
        // A remote backend's download, un-SNATed here, to a client behind the narrow path.
        let snat = opened("203.0.113.7:43000", "192.0.2.10:30081");
        let download = big("10.244.2.9:8080", &snat).macs(NODE2_MAC, NODE_MAC);
        let to_backend = icmp_error(
            node_ip,
            &download.hop(),
            frag_needed.clone(),
            (NODE_MAC, NODE2_MAC),
            64,
        );
        check(
            node,
            &[
                Case {
                    name: "a client's DF segment too big for the backend's path: fragmentation \
                           needed from the NodePort, quoting the segment the client sent",
                    hook: Hook::Xdp,
                    input: upload.build(),
                    verdict: XDP_TX,
                    output: Some(icmp_error(
                        node_ip,
                        &upload.hop(),
                        frag_needed,
                        (NODE_MAC, upload.src_mac),
                        64,
                    )),
                },
                Case {
                    name: "the same segment without DF: forwarded (lb does not fragment)",
                    hook: Hook::Xdp,
                    input: unchecked.build(),
                    verdict: XDP_TX,
                    output: Some(forwarded),
                },
                Case {
                    name: "a backend's DF reply too big for the client's path: fragmentation \
                           needed to the backend from the SNAT address, quoting its reply",
                    hook: Hook::Xdp,
                    input: download.build(),
                    verdict: XDP_TX,
                    output: Some(to_backend.clone()),
                },
                Case {
                    name: "... the same where TC serves the external interface",
                    hook: Hook::TcExt,
                    input: download.build(),
                    verdict: TC_ACT_REDIRECT,
                    output: Some(to_backend),
                },
            ],
        );
    });
}

/// A fragmented datagram of `from` -> `to`: a first fragment of 1472 bytes (UDP header
/// included) and a later one of 500, at offset 1472.
fn fragments(from: &str, to: &str) -> (Pkt, Pkt) {
    let mut first = Pkt::new(from, to, UDP);
    first.payload = vec![7; 1472 - 8];
    first.frag = (true, 0);
    let mut later = first.clone();
    later.payload = vec![9; 500];
    later.frag = (false, 1472 / 8);
    (first, later)
}

/// A later fragment as lb should send it: `out`'s Ethernet and IP headers over `input`'s bytes
/// after them, untouched (they are payload, not a UDP header, whatever `build` put there).
fn later_fragment_as(input: &Pkt, out: &Pkt) -> Vec<u8> {
    let mut bytes = input.build();
    bytes[..14 + 20].copy_from_slice(&out.build()[..14 + 20]);
    bytes
}

/// UDP above the MTU (large DNS answers, Kerberos) travels in fragments; only the first carries
/// the ports that find the flow. Every fragment must get the first one's translation, or the
/// receiver reassembles a datagram with the wrong addresses, which its socket does not take.
#[test]
fn fixture_fragmented_datagrams_are_translated_whole() {
    with_node("pkt-frag", |node| {
        node.program(&Svc {
            id: 2,
            frontends: &[(NODE, 30053, SCOPE_EXTERNAL, KIND_NODE_PORT)],
            proto: PROTO_UDP,
            backends: &[(3, "10.244.2.9", 5353, 0)],
            flags: 0,
            verdict: VERDICT_REJECT,
        });
        node.program(&Svc {
            id: 4,
            frontends: &[
                (CLUSTER_IP, 54, SCOPE_INTERNAL, KIND_CLUSTER_IP),
                (NODE, 30054, SCOPE_EXTERNAL, KIND_NODE_PORT),
            ],
            proto: PROTO_UDP,
            backends: &[(5, "10.244.1.8", 5353, BE_F_LOCAL)],
            flags: 0,
            verdict: VERDICT_REJECT,
        });
        // A pod's query to a local backend, and the backend's fragmented answer, reverse-NATed
        // as it leaves towards the pod.
        let query = Pkt::new("10.244.1.5:40010", "10.96.0.10:54", UDP);
        assert_eq!(node.tc(&query.build()).0, TC_ACT_OK, "query DNATed");
        let (first, later) = fragments("10.244.1.8:5353", "10.244.1.5:40010");
        let (first, later) = (first.macs(POD_MAC, NODE_MAC), later.macs(POD_MAC, NODE_MAC));
        let as_frontend = |p: &Pkt| p.nat("10.96.0.10:54", "10.244.1.5:40010");
        // An outside client's query to the same backend through the NodePort: the answer
        // crosses the backend's pod interface (ingress) untranslated and gets the NodePort as it
        // leaves. Its later fragments must stay untranslated at that ingress too, even once
        // egress translated the first: with the node's address as their source, the stack
        // would drop them as martians.
        let outside = Pkt::new("198.51.100.7:40030", "192.0.2.10:30054", UDP);
        assert_eq!(node.xdp(&outside.build()).0, XDP_PASS, "query DNATed");
        let (answer, answer_later) = fragments("10.244.1.8:5353", "198.51.100.7:40030");
        let (answer, answer_later) = (
            answer.macs(POD_MAC, NODE_MAC),
            answer_later.macs(POD_MAC, NODE_MAC),
        );
        let as_nodeport = |p: &Pkt| p.nat("192.0.2.10:30054", "198.51.100.7:40030");
        check(
            node,
            &[
                Case {
                    name: "first fragment of a reply on egress: translated as a whole reply is",
                    hook: Hook::TcEgress,
                    input: first.build(),
                    verdict: TC_ACT_OK,
                    output: Some(as_frontend(&first).build()),
                },
                Case {
                    name: "later fragment of that reply: the first one's addresses",
                    hook: Hook::TcEgress,
                    input: later.build(),
                    verdict: TC_ACT_OK,
                    output: Some(later_fragment_as(&later, &as_frontend(&later))),
                },
                Case {
                    name: "later fragment of a datagram lb did not translate: untouched",
                    hook: Hook::TcEgress,
                    input: later.nat("10.244.1.9:5353", "10.244.1.5:40010").build(),
                    verdict: TCX_NEXT,
                    output: None,
                },
                Case {
                    name: "first fragment of a NodePort answer at the pod's ingress: untouched",
                    hook: Hook::Tc,
                    input: answer.build(),
                    verdict: TCX_NEXT,
                    output: None,
                },
                Case {
                    name: "first fragment of that answer on egress: the NodePort's",
                    hook: Hook::TcEgress,
                    input: answer.build(),
                    verdict: TC_ACT_OK,
                    output: Some(as_nodeport(&answer).build()),
                },
                Case {
                    name: "later fragment of that answer at the pod's ingress: still untouched",
                    hook: Hook::Tc,
                    input: answer_later.build(),
                    verdict: TCX_NEXT,
                    output: None,
                },
                Case {
                    name: "later fragment of that answer on egress: the NodePort's",
                    hook: Hook::TcEgress,
                    input: answer_later.build(),
                    verdict: TC_ACT_OK,
                    output: Some(later_fragment_as(
                        &answer_later,
                        &as_nodeport(&answer_later),
                    )),
                },
            ],
        );

        // An outside client's fragmented query to the NodePort, SNATed to the remote backend
        // and forwarded by lb, and the backend's fragmented answer, un-SNATed to the client.
        let (first, later) = fragments("198.51.100.7:40020", "192.0.2.10:30053");
        let (verdict, out) = node.xdp(&first.build());
        assert_eq!(
            verdict, XDP_TX,
            "first fragment of the query SNATed and forwarded"
        );
        let ct = flow(node, &first, "conntrack entry of the fragmented query");
        let snat = format!("192.0.2.10:{}", u16::from_be(ct.snat_port));
        let to_backend = |p: &Pkt| {
            p.nat(&snat, "10.244.2.9:5353")
                .hop()
                .macs(node.eth0_mac, NODE2_MAC)
        };
        assert_eq!(
            hex(&out),
            hex(&to_backend(&first).build()),
            "first fragment"
        );
        assert_checksums(&out);
        let (answer, answer_later) = fragments("10.244.2.9:5353", &snat);
        let (answer, answer_later) = (
            answer.macs(NODE2_MAC, NODE_MAC),
            answer_later.macs(NODE2_MAC, NODE_MAC),
        );
        let to_client = |p: &Pkt| {
            p.nat("192.0.2.10:30053", "198.51.100.7:40020")
                .hop()
                .macs(node.eth0_mac, GW_MAC)
        };
        check(
            node,
            &[
                Case {
                    name: "later fragment of the query: to the backend as the first went",
                    hook: Hook::Xdp,
                    input: later.build(),
                    verdict: XDP_TX,
                    output: Some(later_fragment_as(&later, &to_backend(&later))),
                },
                Case {
                    name: "first fragment of the answer: un-SNATed and forwarded to the client",
                    hook: Hook::Xdp,
                    input: answer.build(),
                    verdict: XDP_TX,
                    output: Some(to_client(&answer).build()),
                },
                Case {
                    name: "later fragment of the answer: to the client as the first went",
                    hook: Hook::Xdp,
                    input: answer_later.build(),
                    verdict: XDP_TX,
                    output: Some(later_fragment_as(&answer_later, &to_client(&answer_later))),
                },
            ],
        );
    });
}

#[test]
fn udp_client_tuple_is_keyed_in_network_order() {
    // Pure check of the helper the fixtures rely on, so a byte-order slip shows up here first.
    let p = Pkt::new("10.0.0.1:1", "10.0.0.2:2", UDP);
    let t = tuple(&p);
    assert_eq!(t.sport.to_ne_bytes(), [0, 1]);
    assert_eq!(sa("10.0.0.2:2"), p.dst);
}
