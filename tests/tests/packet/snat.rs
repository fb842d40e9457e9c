//! SNAT towards remote backends: ports and their reuse, egress interfaces, tunnels, unresolved next hops.
use super::*;

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
/// silently). The translated packet goes to TC, as for an unresolved neighbour.
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
/// neighbour entry is missing goes to TC (recorded in LB4_HANDOFF), where lb_tc_handoff sends it
/// on with `bpf_redirect_neigh` (the lab shows the whole path: lab_neighbours). Packets XDP did
/// not hand over pass lb_tc_handoff untouched.
#[test]
fn fixture_an_unresolved_next_hop_is_handed_to_tc() {
    with_node("pkt-handoff", |node| {
        let (syn, handed) = handed_to_tc(node, "10.244.6.9", |p| p);
        check(
            node,
            &[
                Case {
                    name: "the handed packet is sent to its next hop",
                    hook: Hook::TcHandoff,
                    input: handed,
                    verdict: TC_ACT_REDIRECT,
                    counters: &[],
                    output: None,
                },
                Case {
                    name: "a packet XDP did not hand over passes the handoff program untouched",
                    hook: Hook::TcHandoff,
                    input: syn.build(),
                    verdict: TCX_NEXT,
                    counters: &[],
                    output: None,
                },
            ],
        );
    });
}

/// A NodePort SYN to the one backend `backend` (port 8080, on another node) leaves XDP for TC:
/// XDP_PASS, the frame SNATed, DNATed and one hop further (its MAC addresses as `l2` makes them).
/// Returns the SYN and the frame XDP passed.
fn handed_to_tc(node: &mut Node, backend: &str, l2: impl FnOnce(Pkt) -> Pkt) -> (Pkt, Vec<u8>) {
    web(node, &[(1, backend, 8080, 0)]);
    let syn = Pkt::new("198.51.100.7:42000", "192.0.2.10:30080", SYN);
    let (verdict, out) = node.xdp(&syn.build());
    assert_eq!(verdict, XDP_PASS, "to the stack, for TC");
    let snat = format!(
        "192.0.2.10:{}",
        u16::from_be(flow(node, &syn, "flow").snat_port)
    );
    let want = l2(syn.nat(&snat, &format!("{backend}:8080")).hop()).build();
    assert_eq!(hex(&out), hex(&want), "translated, one hop further");
    assert_checksums(&out);
    (syn, out)
}
