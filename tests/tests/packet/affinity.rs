//! ClientIP session affinity.
use super::*;
use lb::dataplane::reconcile::Write;

/// ClusterIP :80 with ClientIP affinity (60 s) over `backends`.
fn program_sticky(node: &mut Node, backends: &[(u32, &str, u16, u8)]) {
    node.program(&pod_service(&CIP_80, PROTO_TCP, SVC_F_AFFINITY, backends));
    let mut value = node.dp.maps.services.get(&1, 0).expect("service");
    value.affinity_timeout = 60;
    node.dp.maps.services.insert(1, value, 0).expect("timeout");
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
        ServiceMaps::<Ipv4Addr>::set_backend(&mut node.dp.maps, gone.0, &reused).expect("reuse id");
        assert_eq!(
            dest(node, 40100).to_string(),
            stays.1,
            "not the reused id's pod"
        );
    });
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
        node.dp
            .maps
            .write(&Write::<Ipv4Addr>::RemoveBackend(gone.0))
            .expect("remove backend");
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
        let entry = node
            .dp
            .maps
            .v4
            .affinity
            .get(&key, 0)
            .expect("affinity entry");
        assert_eq!(entry.backend_id, stays.0, "the entry was replaced");
    });
}
