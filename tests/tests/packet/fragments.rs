//! Fragmented datagrams, translated whole.
use super::*;

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
                    counters: &[("rnat_hit", 1)],
                    output: Some(as_frontend(&first).build()),
                },
                Case {
                    name: "later fragment of that reply: the first one's addresses",
                    hook: Hook::TcEgress,
                    input: later.build(),
                    verdict: TC_ACT_OK,
                    counters: &[],
                    output: Some(later_fragment_as(&later, &as_frontend(&later))),
                },
                Case {
                    name: "later fragment of a datagram lb did not translate: untouched",
                    hook: Hook::TcEgress,
                    input: later.nat("10.244.1.9:5353", "10.244.1.5:40010").build(),
                    verdict: TCX_NEXT,
                    counters: &[],
                    output: None,
                },
                Case {
                    name: "first fragment of a NodePort answer at the pod's ingress: untouched",
                    hook: Hook::Tc,
                    input: answer.build(),
                    verdict: TCX_NEXT,
                    counters: &[],
                    output: None,
                },
                Case {
                    name: "first fragment of that answer on egress: the NodePort's",
                    hook: Hook::TcEgress,
                    input: answer.build(),
                    verdict: TC_ACT_OK,
                    counters: &[("rnat_hit", 1)],
                    output: Some(as_nodeport(&answer).build()),
                },
                Case {
                    name: "later fragment of that answer at the pod's ingress: still untouched",
                    hook: Hook::Tc,
                    input: answer_later.build(),
                    verdict: TCX_NEXT,
                    counters: &[],
                    output: None,
                },
                Case {
                    name: "later fragment of that answer on egress: the NodePort's",
                    hook: Hook::TcEgress,
                    input: answer_later.build(),
                    verdict: TC_ACT_OK,
                    counters: &[],
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
                    counters: &[],
                    output: Some(later_fragment_as(&later, &to_backend(&later))),
                },
                Case {
                    name: "first fragment of the answer: un-SNATed and forwarded to the client",
                    hook: Hook::Xdp,
                    input: answer.build(),
                    verdict: XDP_TX,
                    counters: &[("rnat_hit", 1)],
                    output: Some(to_client(&answer).build()),
                },
                Case {
                    name: "later fragment of the answer: to the client as the first went",
                    hook: Hook::Xdp,
                    input: answer_later.build(),
                    verdict: XDP_TX,
                    counters: &[],
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
