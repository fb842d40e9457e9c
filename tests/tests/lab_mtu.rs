//! Replies too large for the client's path through a Service: path MTU discovery must reach the
//! backend. A router between the lab's lan and a client has a 1280-byte link towards the client;
//! the backend's 1500-byte segments (DF set, as Linux sends TCP) stop at that router, which
//! answers "fragmentation needed" to their source: the NodePort's address, not the backend. lb
//! must send that error on to the backend, or the download hangs (a PMTU black hole).
//!
//! ```text
//!  far 198.51.100.7 ──(1280)── router (the cluster lab's client, 192.0.2.100) ── lan ── nodes
//! ```
use std::time::Duration;

use lb_tests::{
    cluster_lab::{ready, web_service, Cluster, CLIENT_IP},
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
    let nodeport = "192.0.2.10:30091".parse().unwrap();
    const MB: usize = 1 << 20;
    // Each download is a new connection; keep going until the local backend (a1) and the one on
    // the other node (b1, SNATed) have each served one.
    let mut served = Vec::new();
    let deadline = std::time::Instant::now() + scaled(Duration::from_secs(60));
    while !(served.contains(&"a1".to_string()) && served.contains(&"b1".to_string())) {
        assert!(
            std::time::Instant::now() < deadline,
            "only {served:?} served a download\n{}",
            c.agent_logs()
        );
        let reply = far
            .echo_conn(nodeport, false, Duration::from_secs(2))
            .and_then(|mut conn| conn.ask_for(MB, scaled(Duration::from_secs(10))))
            .unwrap_or_else(|e| {
                panic!(
                    "1 MB from {nodeport} over the 1280-byte link (served so far: {served:?}): \
                     {e}"
                )
            });
        assert_eq!(reply.bytes, MB, "{}: whole reply", reply.name);
        served.push(reply.name);
    }
    // The errors that made it work went through lb, counted.
    let stats = c.node(A).lbctl_json(&["stats"]).expect("lbctl stats");
    let nated = stats["global"]["icmp_error_nated"].as_u64().unwrap_or(0);
    assert!(nated > 0, "node-a translated no ICMP error: {stats}");
}
