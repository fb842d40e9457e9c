//! loadBalancerSourceRanges: a LoadBalancer frontend flagged `FE_F_SOURCE_RANGES` takes new flows
//! only from sources in its ranges (`LB4_SRC_RANGES`, under its stats id); others are dropped and
//! counted for it (`LB_SRC_DROPS`). The Service's NodePort, on the same backend set, is not
//! filtered; a flow already established is not checked again (kube-proxy's rules match NEW).
use lb::dataplane::{reconcile::Write, ServiceMaps};
use lb_common::{FE_F_SOURCE_RANGES, KIND_LOAD_BALANCER};

use super::*;

const LB_IP: &str = "203.0.113.10";
const SET: u32 = 9;

#[test]
fn fixture_source_ranges_admit_only_their_clients_on_the_load_balancer_ip() {
    with_node("pkt-src-ranges", |node| {
        node.program(&Svc {
            id: SET,
            frontends: &[
                (LB_IP, 80, SCOPE_EXTERNAL, KIND_LOAD_BALANCER),
                (NODE, 30090, SCOPE_EXTERNAL, KIND_NODE_PORT),
            ],
            proto: PROTO_TCP,
            backends: &[(1, "10.244.1.7", 8080, BE_F_LOCAL)],
            flags: 0,
            verdict: VERDICT_REJECT,
        });
        // The harness gives a frontend its set's id as stats id: the ranges go under it.
        let maps = &mut node.dp.maps;
        for range in [("198.51.100.0", 24), ("192.0.2.200", 32)] {
            let range = (ip(range.0), range.1);
            maps.write(&Write::<Ipv4Addr>::SourceRange(SET, range))
                .expect("range");
        }
        let key = Frontend4Key {
            addr: ip(LB_IP),
            port: port(80),
            proto: PROTO_TCP,
            scope: SCOPE_EXTERNAL,
        };
        let fe = Frontend4 {
            service_id: SET,
            stats_id: SET,
            kind: KIND_LOAD_BALANCER,
            flags: FE_F_SOURCE_RANGES,
            _pad: [0; 2],
        };
        ServiceMaps::<Ipv4Addr>::set_frontend(&mut *maps, &key, &fe).expect("frontend");

        let inside = Pkt::new("198.51.100.7:44000", "203.0.113.10:80", SYN);
        let inside_host = Pkt::new("192.0.2.200:44001", "203.0.113.10:80", SYN);
        let outside = Pkt::new("192.0.2.77:44002", "203.0.113.10:80", SYN);
        let outside_nodeport = Pkt::new("192.0.2.77:44003", "192.0.2.10:30090", SYN);
        let backend = "10.244.1.7:8080";
        check(
            node,
            &[
                Case {
                    name: "a source inside a /24 range reaches the backend",
                    hook: Hook::Xdp,
                    input: inside.build(),
                    verdict: XDP_PASS,
                    counters: &[("ct_new", 1)],
                    output: Some(inside.nat("198.51.100.7:44000", backend).build()),
                },
                Case {
                    name: "a source that is a /32 range reaches the backend",
                    hook: Hook::Xdp,
                    input: inside_host.build(),
                    verdict: XDP_PASS,
                    counters: &[("ct_new", 1)],
                    output: Some(inside_host.nat("192.0.2.200:44001", backend).build()),
                },
                Case {
                    name: "a source outside every range is dropped, not rejected",
                    hook: Hook::Xdp,
                    input: outside.build(),
                    verdict: XDP_DROP,
                    counters: &[],
                    output: None,
                },
                Case {
                    name: "the same source reaches the Service's NodePort (not filtered)",
                    hook: Hook::Xdp,
                    input: outside_nodeport.build(),
                    verdict: XDP_PASS,
                    counters: &[("ct_new", 1)],
                    output: Some(outside_nodeport.nat("192.0.2.77:44003", backend).build()),
                },
            ],
        );
        let drops = node.dp.maps.source_range_drops(SET).expect("drops");
        assert_eq!(drops, 1, "the drop is counted for the frontend");

        // Ranges that change do not cut a flow already established: its next segment goes on.
        node.dp
            .maps
            .write(&Write::<Ipv4Addr>::RemoveSourceRange(
                SET,
                (ip("198.51.100.0"), 24),
            ))
            .expect("remove");
        let next = Pkt::new("198.51.100.7:44000", "203.0.113.10:80", ACK);
        check(
            node,
            &[
                Case {
                    name: "an established flow from a source no longer in range goes on",
                    hook: Hook::Xdp,
                    input: next.build(),
                    verdict: XDP_PASS,
                    counters: &[("ct_hit", 1)],
                    output: Some(next.nat("198.51.100.7:44000", backend).build()),
                },
                Case {
                    name: "a new flow from it is dropped",
                    hook: Hook::Xdp,
                    input: Pkt::new("198.51.100.7:44004", "203.0.113.10:80", SYN).build(),
                    verdict: XDP_DROP,
                    counters: &[],
                    output: None,
                },
            ],
        );
        assert_eq!(node.dp.maps.source_range_drops(SET).expect("drops"), 2);
        let ranges = ServiceMaps::<Ipv4Addr>::source_ranges(&node.dp.maps).expect("ranges");
        assert_eq!(ranges.get(&SET), Some(&vec![(ip("192.0.2.200"), 32)]));
    });
}
