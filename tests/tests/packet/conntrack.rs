//! Conntrack: flow lifetimes, the TCP state machine, the UDP table.
use super::*;

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
        let rows: [(&str, Vec<u8>, u8); 9] = [
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
            (
                "the backend answers the new connection",
                from_backend(tcp(true, true, false, false)),
                CT_F_REPLIED,
            ),
            (
                "the client's ACK completes its handshake",
                from_client(ACK),
                CT_F_REPLIED | CT_F_ESTABLISHED,
            ),
            (
                "the backend's FIN closes the flow",
                from_backend(tcp(false, true, true, false)),
                CT_F_REPLIED | CT_F_ESTABLISHED | CT_F_CLOSING,
            ),
        ];
        // Flags are only ever added to a live entry: the zero after the RST is a new entry.
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
        // Closed by the backend, the flow lets go in CLOSING's 10 s, not ESTABLISHED's 24 h.
        let closed = lb_common::timeout::idle(PROTO_TCP, state(node));
        assert_eq!(closed, lb_common::timeout::TCP_CLOSING);
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
