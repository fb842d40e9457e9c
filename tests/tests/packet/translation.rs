//! DNAT and reverse NAT, the node as an endpoint, established flows.
use super::*;
use lb::dataplane::reconcile::Write;

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
                    counters: &[("ct_new", 1)],
                    output: Some(pod_syn.nat("10.244.1.5:40000", "10.244.1.7:8080").build()),
                },
                Case {
                    name: "pod -> ClusterIP UDP is DNATed",
                    hook: Hook::Tc,
                    input: udp.build(),
                    verdict: TC_ACT_OK,
                    counters: &[("ct_new", 1)],
                    output: Some(udp.nat("10.244.1.5:40002", "10.244.1.8:5353").build()),
                },
                Case {
                    name: "UDP without checksum keeps checksum 0",
                    hook: Hook::Tc,
                    input: udp_no_csum.build(),
                    verdict: TC_ACT_OK,
                    counters: &[("ct_new", 1)],
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
                    counters: &[("ct_new", 1)],
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
                    counters: &[],
                    output: None,
                },
                Case {
                    name: "... and leaves reverse-NATed to the NodePort",
                    hook: Hook::TcEgress,
                    input: reply.build(),
                    verdict: TC_ACT_OK,
                    counters: &[("rnat_hit", 1)],
                    output: Some(reply.nat("192.0.2.10:30080", "198.51.100.7:40001").build()),
                },
                Case {
                    name: "reply to a pod enters untouched",
                    hook: Hook::Tc,
                    input: pod_reply.build(),
                    verdict: TCX_NEXT,
                    counters: &[],
                    output: None,
                },
                Case {
                    name:
                        "... and leaves through the pod's interface reverse-NATed to the ClusterIP",
                    hook: Hook::TcEgress,
                    input: pod_reply.build(),
                    verdict: TC_ACT_OK,
                    counters: &[("rnat_hit", 1)],
                    output: Some(pod_reply.nat("10.96.0.10:80", "10.244.1.5:40000").build()),
                },
                Case {
                    name: "NodePort on a non-node address is untouched",
                    hook: Hook::Xdp,
                    input: client_syn
                        .nat("198.51.100.7:40001", "192.0.2.99:30080")
                        .build(),
                    verdict: XDP_PASS,
                    counters: &[],
                    output: None,
                },
                Case {
                    name: "IPv4 options are kept and skipped to find the ports",
                    hook: Hook::Xdp,
                    input: with_options.build(),
                    verdict: XDP_PASS,
                    counters: &[("ct_new", 1)],
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
                    counters: &[],
                    output: None,
                },
                Case {
                    name: "IHL below 5 passes untouched",
                    hook: Hook::Xdp,
                    input: bad_ihl,
                    verdict: XDP_PASS,
                    counters: &[],
                    output: None,
                },
                Case {
                    name: "Ethernet frame cut after its header passes",
                    hook: Hook::Xdp,
                    input: client_syn.build()[..14].to_vec(),
                    verdict: XDP_PASS,
                    counters: &[],
                    output: None,
                },
                Case {
                    name: "non-IP (ARP ethertype) passes untouched",
                    hook: Hook::Xdp,
                    input: arp.clone(),
                    verdict: XDP_PASS,
                    counters: &[],
                    output: None,
                },
                Case {
                    name: "ICMP echo (not TCP/UDP) passes untouched",
                    hook: Hook::Xdp,
                    input: echo.clone(),
                    verdict: XDP_PASS,
                    counters: &[],
                    output: None,
                },
                Case {
                    name: "TC: pod traffic to no Service goes on to the next tcx program",
                    hook: Hook::Tc,
                    input: pod_syn.nat("10.244.1.5:40000", "10.244.2.9:80").build(),
                    verdict: TCX_NEXT,
                    counters: &[],
                    output: None,
                },
                Case {
                    name: "TC: ICMP echo goes on to the next tcx program",
                    hook: Hook::Tc,
                    input: echo,
                    verdict: TCX_NEXT,
                    counters: &[],
                    output: None,
                },
                Case {
                    name: "TC: non-IP goes on to the next tcx program",
                    hook: Hook::Tc,
                    input: arp,
                    verdict: TCX_NEXT,
                    counters: &[],
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
                    counters: &[("ct_new", 1)],
                    output: Some(syn.nat("10.244.1.5:41000", "192.0.2.10:6443").build()),
                },
                Case {
                    name: "the node's reply gets the ClusterIP back on egress",
                    hook: Hook::TcEgress,
                    input: synack.build(),
                    verdict: TC_ACT_OK,
                    counters: &[("rnat_hit", 1)],
                    output: Some(synack.nat("10.96.0.1:443", "10.244.1.5:41000").build()),
                },
                Case {
                    name: "the node's traffic of no flow leaves untouched",
                    hook: Hook::TcEgress,
                    input: other.build(),
                    verdict: TCX_NEXT,
                    counters: &[],
                    output: None,
                },
                Case {
                    name: "an already translated reply is not translated again",
                    hook: Hook::TcEgress,
                    input: synack.nat("10.96.0.1:443", "10.244.1.5:41000").build(),
                    verdict: TCX_NEXT,
                    counters: &[],
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
                    counters: &[("ct_hit", 1)],
                    output: Some(ack.nat("10.244.1.5:41000", "10.244.1.7:8080").build()),
                },
                Case {
                    name: "a new connection goes to the ready backend",
                    hook: Hook::Tc,
                    input: syn.nat("10.244.1.5:41001", "10.96.0.10:80").build(),
                    verdict: TC_ACT_OK,
                    counters: &[("ct_new", 1)],
                    output: Some(syn.nat("10.244.1.5:41001", "10.244.1.9:8080").build()),
                },
            ],
        );
        // Once the backend is deleted (not terminating), its flows move to a live one.
        node.dp
            .maps
            .write(&Write::<Ipv4Addr>::RemoveBackend(1))
            .expect("remove backend");
        check(
            node,
            &[Case {
                name: "flow of a deleted backend moves to a live one",
                hook: Hook::Tc,
                input: ack.build(),
                verdict: TC_ACT_OK,
                counters: &[("ct_backend_gone", 1), ("ct_new", 1)],
                output: Some(ack.nat("10.244.1.5:41000", "10.244.1.9:8080").build()),
            }],
        );
    });
}
