//! A node whose neighbour entries are not resolved (a fresh node, or entries that expired while
//! the node forwarded nothing) still forwards NodePort traffic lb translated. XDP cannot resolve
//! a MAC address: it hands such a packet to lb's TC program beside it, which sends it with
//! `bpf_redirect_neigh` (lb-ebpf/src/handoff.rs). Handed to the stack instead, the SNATed
//! request (its source now node-a's address) and the un-SNATed reply (from the NodePort) are
//! dropped as martians, and nothing resolves the neighbour: the NodePort stays dead.
use std::time::Duration;

use lb_tests::{
    cluster_lab::{ready, web_service, Cluster},
    lab::{require_privileged, scaled},
};

#[test]
fn a_nodeport_answers_through_a_node_with_no_resolved_neighbours() {
    if !require_privileged("lab_neighbours") {
        return;
    }
    // The only endpoint is on node-b: node-a forwards both ways, SNATed.
    let web = web_service("10.96.0.40", 30094, &ready("10.244.2.5", "node-b"));
    let c = Cluster::start(
        "neigh",
        env!("CARGO_BIN_EXE_lb-echo"),
        &[("web.yaml", &web)],
    )
    .expect("cluster lab");
    let node_a = &c.node("node-a").ns;
    node_a
        .sh("ip neigh flush dev eth0")
        .expect("flush node-a's neighbours");
    let left = node_a.sh("ip -4 neigh show dev eth0").expect("neighbours");
    assert!(
        !left.contains("REACHABLE") && !left.contains("STALE"),
        "node-a still knows a neighbour: {left}"
    );
    let nodeport: std::net::SocketAddr = "192.0.2.10:30094".parse().unwrap();
    let reply = c
        .client
        .echo_conn(nodeport, false, Duration::from_secs(3))
        .and_then(|mut conn| conn.ask(scaled(Duration::from_secs(3))))
        .unwrap_or_else(|e| panic!("{nodeport} with node-a's neighbours unresolved: {e}"));
    assert_eq!(reply.name, "b1", "served by the backend on node-b");
    // The handoff resolved them, as the stack's output would have.
    let known = node_a.sh("ip -4 neigh show dev eth0").expect("neighbours");
    for neighbour in ["192.0.2.20", "192.0.2.100"] {
        assert!(
            known.contains(neighbour),
            "node-a has not resolved {neighbour}: {known}"
        );
    }
}
