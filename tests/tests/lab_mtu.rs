//! Replies too large for the client's path through a Service: path MTU discovery must reach the
//! backend. A router between the lab's lan and a client has a 1280-byte link towards the client;
//! the backend's 1500-byte segments (DF set, as Linux sends TCP) stop at that router, which
//! answers "fragmentation needed" to their source: the NodePort's address, not the backend. lb
//! must send that error on to the backend, or the download hangs (a PMTU black hole).
//! Where lb forwards itself (a NodePort's backend on another node), it is the router: a request
//! too big for the route to that node must come back to the client as "fragmentation needed"
//! from lb, as the stack's forwarding would answer, or the upload hangs.
//! And UDP datagrams above the MTU (large DNS answers, Kerberos) travel in fragments, of which
//! only the first carries ports: every fragment must be translated as the first one was.
//!
//! ```text
//!  far 198.51.100.7 ──(1280)── router (the cluster lab's client, 192.0.2.100) ── lan ── nodes
//! ```
use std::time::Duration;

use lb_tests::{
    cluster_lab::{ready, service, slice, spread_by, web_service, Cluster, CLIENT_IP},
    lab::{require_privileged, scaled, Netns},
};

const A: &str = "node-a";
const B: &str = "node-b";
const FAR: &str = "198.51.100.7";

/// Puts a client at [`FAR`] behind the cluster lab's client namespace, which routes for it over
/// a link of 1280 bytes towards it (the far end's own MTU stays 1500, so it asks for 1460-byte
/// segments).
fn far_client(c: &Cluster) -> Netns {
    let far = c.lab.netns("far").expect("far namespace");
    c.lab
        .veth(&c.client, "eth1", &far, "eth0")
        .expect("router link");
    c.client
        .add_addr("eth1", "198.51.100.1/24")
        .expect("router address");
    c.client
        .sh("ip link set eth1 mtu 1280")
        .expect("narrow link");
    c.client
        .sysctl("net.ipv4.ip_forward", "1")
        .expect("router forwards");
    far.add_addr("eth0", &format!("{FAR}/24"))
        .expect("far address");
    far.sh("ip route add default via 198.51.100.1")
        .expect("far route");
    far.tx_offload_off("eth0").expect("offload off");
    c.client.tx_offload_off("eth1").expect("offload off");
    for node in &c.nodes {
        node.ns
            .add_route("198.51.100.0/24", CLIENT_IP)
            .expect("route to the far client");
    }
    far
}

#[test]
fn a_client_behind_a_narrow_link_downloads_a_megabyte_through_a_nodeport() {
    if !require_privileged("lab_mtu") {
        return;
    }
    let web = web_service(
        "10.96.0.30",
        30091,
        &(ready("10.244.1.5", A) + &ready("10.244.2.5", B)),
    );
    let c = Cluster::start("mtu", env!("CARGO_BIN_EXE_lb-echo"), &[("web.yaml", &web)])
        .expect("cluster lab");
    let far = far_client(&c);
    let nodeport: std::net::SocketAddr = "192.0.2.10:30091".parse().unwrap();
    const MB: usize = 1 << 20;
    // Each download is a new connection; keep going until the local backend (a1) and the one on
    // the other node (b1, SNATed) have each served one.
    let served = spread_by(
        &format!("1 MB from {nodeport} over the 1280-byte link"),
        &["a1", "b1"],
        scaled(Duration::from_secs(60)),
        || {
            far.echo_conn(nodeport, false, Duration::from_secs(2))
                .and_then(|mut conn| conn.ask_for(MB, scaled(Duration::from_secs(10))))
        },
    );
    for reply in served {
        assert_eq!(reply.bytes, MB, "{}: whole reply", reply.name);
    }
    // The errors that made it work went through lb, counted.
    let stats = c.node(A).lbctl_json(&["stats"]).expect("lbctl stats");
    let nated = stats["global"]["icmp_error_nated"].as_u64().unwrap_or(0);
    assert!(nated > 0, "node-a translated no ICMP error: {stats}");
}

/// node-a reaches node-b's pods over a path of 1280 bytes (a locked route MTU, as for a
/// tunnel or VPN link between nodes; node-b's own link takes no more), the client's link is
/// 1500: its segments to the NodePort's backend on node-b do not fit where node-a forwards them.
#[test]
fn a_client_uploads_a_megabyte_to_a_nodeport_whose_backend_is_behind_a_narrow_path() {
    if !require_privileged("lab_mtu") {
        return;
    }
    let web = web_service("10.96.0.32", 30092, &ready("10.244.2.5", B));
    let c = Cluster::start(
        "mtu-up",
        env!("CARGO_BIN_EXE_lb-echo"),
        &[("web.yaml", &web)],
    )
    .expect("cluster lab");
    c.node(A)
        .ns
        .sh("ip route replace 10.244.2.0/24 via 192.0.2.20 dev eth0 mtu lock 1280")
        .expect("narrow route");
    c.node(B)
        .ns
        .sh("ip link set eth0 mtu 1280")
        .expect("narrow link");
    let nodeport: std::net::SocketAddr = "192.0.2.10:30092".parse().unwrap();
    const MB: usize = 1 << 20;
    let reply = c
        .client
        .echo_conn(nodeport, false, Duration::from_secs(2))
        .and_then(|mut conn| conn.exchange(MB, 0, scaled(Duration::from_secs(20))))
        .unwrap_or_else(|e| panic!("1 MB upload to {nodeport}: {e}"));
    assert_eq!(
        reply.name, "b1",
        "served by the backend behind the narrow path"
    );
    // The client learnt the path's MTU from lb's answer.
    let route = c
        .client
        .sh("ip route get 192.0.2.10")
        .expect("client's route");
    assert!(
        route.contains("mtu 1280"),
        "the client's route to the NodePort carries no learnt MTU: {route}"
    );
}

#[test]
fn udp_datagrams_of_4_kb_go_both_ways_in_fragments_through_a_clusterip_and_a_nodeport() {
    if !require_privileged("lab_mtu") {
        return;
    }
    let dns = service(
        "dns",
        "",
        "  type: NodePort\n  clusterIP: 10.96.0.31\n  ports:\n  \
         - {name: dns, port: 53, targetPort: 8080, nodePort: 30053, protocol: UDP}\n",
    ) + &slice(
        "dns",
        "dns-1",
        "[{name: dns, port: 8080, protocol: UDP}]",
        &(ready("10.244.1.5", A) + &ready("10.244.2.5", B)),
    );
    let c = Cluster::start("frag", env!("CARGO_BIN_EXE_lb-echo"), &[("dns.yaml", &dns)])
        .expect("cluster lab");
    // A request line padded to 4 KB asking for a 4 KB answer: fragmented both ways, on a
    // 1500-byte path.
    const BIG: usize = 4096;
    let ask = |from: &Netns, to: &str| {
        let to: std::net::SocketAddr = to.parse().unwrap();
        spread_by(
            &format!("4 KB over UDP from {} to {to}", from.name()),
            &["a1", "b1"],
            scaled(Duration::from_secs(30)),
            || {
                from.echo_conn(to, true, Duration::from_secs(2))
                    .and_then(|mut conn| conn.exchange(BIG, BIG, scaled(Duration::from_secs(2))))
            },
        )
    };
    // From a pod through the ClusterIP (the backend beside it, and the one on the other node),
    // and from outside through the NodePort (the remote backend SNATed).
    for reply in ask(&c.pod("a2").ns, "10.96.0.31:53")
        .into_iter()
        .chain(ask(&c.client, "192.0.2.10:30053"))
    {
        assert_eq!(reply.bytes, BIG, "{}: whole reply", reply.name);
    }
}
