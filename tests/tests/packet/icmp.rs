//! ICMP errors about NATed flows, and path MTU where lb forwards.
use super::*;

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
                counters: &[("icmp_error_nated", 1)],
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
                    counters: &[("icmp_error_nated", 1)],
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
                    counters: &[("icmp_error_nated", 1)],
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
            counters: &[],
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
                    counters: &[("ct_hit", 1), ("icmp_error_nated", 1)],
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
                    counters: &[("ct_hit", 1)],
                    output: Some(forwarded),
                },
                Case {
                    name: "a backend's DF reply too big for the client's path: fragmentation \
                           needed to the backend from the SNAT address, quoting its reply",
                    hook: Hook::Xdp,
                    input: download.build(),
                    verdict: XDP_TX,
                    counters: &[("icmp_error_nated", 1), ("rnat_hit", 1)],
                    output: Some(to_backend.clone()),
                },
                Case {
                    name: "... the same where TC serves the external interface",
                    hook: Hook::TcExt,
                    input: download.build(),
                    verdict: TC_ACT_REDIRECT,
                    counters: &[("icmp_error_nated", 1), ("rnat_hit", 1)],
                    output: Some(to_backend),
                },
            ],
        );
    });
}
