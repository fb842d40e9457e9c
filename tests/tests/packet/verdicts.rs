//! Reject and drop verdicts, fragments of dropped datagrams, hairpin.
use super::*;

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
                    counters: &[("reject_no_backend", 1)],
                    output: Some(reject_of(&tcp)),
                },
                Case {
                    name: "no endpoints, TCP with ACK and data: RST with seq = ack",
                    hook: Hook::Xdp,
                    input: tcp_data.build(),
                    verdict: XDP_TX,
                    counters: &[("reject_no_backend", 1)],
                    output: Some(reject_of(&tcp_data)),
                },
                Case {
                    name: "no endpoints, UDP: ICMP port unreachable quoting the datagram",
                    hook: Hook::Xdp,
                    input: udp.build(),
                    verdict: XDP_TX,
                    counters: &[("reject_no_backend", 1)],
                    output: Some(reject_of(&udp)),
                },
                Case {
                    name: "no endpoints, UDP with IP options: the quote includes them",
                    hook: Hook::Xdp,
                    input: udp_opts.build(),
                    verdict: XDP_TX,
                    counters: &[("reject_no_backend", 1)],
                    output: Some(reject_of(&udp_opts)),
                },
                Case {
                    name: "no endpoints from a pod: RST redirected back into the pod",
                    hook: Hook::Tc,
                    input: pod_tcp.build(),
                    verdict: TC_ACT_REDIRECT,
                    counters: &[("reject_no_backend", 1)],
                    output: Some(reject_of(&pod_tcp)),
                },
                Case {
                    name: "eTP=Local without local endpoints: drop",
                    hook: Hook::Xdp,
                    input: local_drop.build(),
                    verdict: XDP_DROP,
                    counters: &[("drop_no_local_backend", 1)],
                    output: None,
                },
                Case {
                    name: "no endpoints, first fragment of a datagram: ICMP port unreachable",
                    hook: Hook::Xdp,
                    input: first_frag.build(),
                    verdict: XDP_TX,
                    counters: &[("reject_no_backend", 1)],
                    output: Some(reject_of(&first_frag)),
                },
                Case {
                    name: "later fragment of that datagram: dropped with it",
                    hook: Hook::Xdp,
                    input: later_frag.build(),
                    verdict: XDP_DROP,
                    counters: &[("drop_fragment", 1)],
                    output: None,
                },
                Case {
                    name: "later fragment of a datagram lb never saw: untouched",
                    hook: Hook::Xdp,
                    input: later_frag
                        .nat("198.51.100.8:43005", "192.0.2.10:30081")
                        .build(),
                    verdict: XDP_PASS,
                    counters: &[],
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
