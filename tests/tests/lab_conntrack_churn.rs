//! Conntrack under churn: a burst of short UDP flows (DNS at thousands of queries a second) must
//! not push idle TCP connections out of lb's conntrack. In one shared LRU table they would be
//! evicted, and each connection's next packet would meet another backend (a RST) or a reply
//! without its reverse entry; TCP and UDP flows have separate tables, so none of them notices.
//!
//! Both tables are made small (4,096 flows) so that the burst overflows the UDP one many times.
use std::{
    net::{SocketAddr, UdpSocket},
    time::Duration,
};

use lb_tests::{
    cluster_lab::{ready, service, slice, web_service, Cluster},
    lab::{scaled, EchoConn},
};

const A: &str = "node-a";
const B: &str = "node-b";
const TABLE: &str = "4096";
const IDLE_TCP: usize = 1_000;
/// Source ports of the client pod; each sends to two UDP Services: 2 × 52,000 flows.
const UDP_PORTS: std::ops::Range<u16> = 10_000..62_000;
const UDP_FLOWS: u64 = 100_000;
const ASK: Duration = Duration::from_secs(2);

#[test]
fn a_udp_flood_leaves_idle_tcp_connections_alone() {
    if !lb_tests::lab::require_privileged("lab_conntrack_churn") {
        return;
    }
    let endpoints = ready("10.244.1.6", A) + &ready("10.244.2.5", B) + &ready("10.244.2.6", B);
    let web = web_service("10.96.0.30", 30100, &endpoints);
    let dns2 = service(
        "dns2",
        "",
        "  clusterIP: 10.96.0.31\n  ports:\n  - {port: 53, targetPort: 8080, protocol: UDP}\n",
    ) + &slice(
        "dns2",
        "dns2-1",
        "[{port: 8080, protocol: UDP}]",
        &endpoints,
    );
    let flags = ["--conntrack-max", TABLE, "--conntrack-udp-max", TABLE];
    let c = Cluster::start_with_flags(
        "ct-churn",
        env!("CARGO_BIN_EXE_lb-echo"),
        &[("web.yaml", &web), ("dns2.yaml", &dns2)],
        &flags,
    )
    .expect("cluster lab");
    let client = &c.pod("a1").ns;
    let node = c.node(A);

    // 1,000 TCP connections through the ClusterIP, each answered once, then left idle.
    let vip: SocketAddr = "10.96.0.30:80".parse().unwrap();
    let mut held: Vec<(EchoConn, String)> = client
        .in_netns(|| {
            (0..IDLE_TCP)
                .map(|i| {
                    let mut conn = EchoConn::connect(vip, false, scaled(ASK))
                        .unwrap_or_else(|e| panic!("connection {i}: {e}"));
                    let first = conn
                        .ask(scaled(ASK))
                        .unwrap_or_else(|e| panic!("connection {i}, first request: {e}"));
                    (conn, first.name)
                })
                .collect()
        })
        .expect("netns");
    let spread: std::collections::BTreeSet<&str> = held.iter().map(|(_, n)| n.as_str()).collect();
    assert!(
        spread.len() > 1,
        "all connections on one backend: {spread:?}"
    );

    // The flood: every source port to both UDP Services, each datagram answered (a resolver's
    // traffic), four senders at once.
    let new_flows = || global(node, "ct_new");
    let before = new_flows();
    let answered = client
        .in_netns(|| {
            let ports: Vec<u16> = UDP_PORTS.collect();
            std::thread::scope(|s| {
                let senders: Vec<_> = ports
                    .chunks(ports.len() / 4 + 1)
                    .map(|chunk| s.spawn(move || udp_flows(chunk)))
                    .collect();
                senders
                    .into_iter()
                    .map(|h| h.join().expect("sender"))
                    .sum::<u64>()
            })
        })
        .expect("netns");
    let flooded = new_flows() - before;
    assert!(
        flooded >= UDP_FLOWS,
        "the flood made {flooded} new flows ({answered} answers), wanted {UDP_FLOWS}"
    );
    let udp_live = node
        .lbctl_json(&["conntrack"])
        .expect("lbctl conntrack")
        .as_array()
        .expect("rows")
        .iter()
        .filter(|r| r["protocol"] == "UDP")
        .count();
    assert!(
        udp_live <= 4096,
        "{udp_live} UDP flows in a table of {TABLE}"
    );

    println!("{flooded} new UDP flows, {answered} answers, {udp_live} UDP flows left in the table");

    // Every idle connection still answers, from the backend it started with.
    let mut broken = Vec::new();
    for (i, (conn, first)) in held.iter_mut().enumerate() {
        match conn.ask(scaled(ASK)) {
            Ok(r) if r.name == *first => {}
            Ok(r) => broken.push(format!("{i}: moved from {first} to {}", r.name)),
            Err(e) => broken.push(format!("{i} (was on {first}): {e}")),
        }
    }
    assert!(
        broken.is_empty(),
        "{} of {IDLE_TCP} idle connections broke after {flooded} UDP flows: {:?}",
        broken.len(),
        &broken[..broken.len().min(10)]
    );
}

/// One UDP flow from each port to each of the two Services; returns the answers received.
fn udp_flows(ports: &[u16]) -> u64 {
    let services: [SocketAddr; 2] = [
        "10.96.0.30:53".parse().unwrap(),
        "10.96.0.31:53".parse().unwrap(),
    ];
    let mut answers = 0;
    let mut buf = [0u8; 256];
    for &port in ports {
        let sock =
            UdpSocket::bind(("0.0.0.0", port)).unwrap_or_else(|e| panic!("bind {port}: {e}"));
        sock.set_read_timeout(Some(Duration::from_millis(500)))
            .expect("timeout");
        for svc in services {
            sock.send_to(b"lb-echo\n", svc).expect("send");
        }
        for _ in services {
            if sock.recv_from(&mut buf).is_ok() {
                answers += 1;
            }
        }
    }
    answers
}

/// A global datapath counter of `node` (`lbctl stats`).
fn global(node: &lb_tests::cluster_lab::Node, name: &str) -> u64 {
    node.lbctl_json(&["stats"]).expect("lbctl stats")["global"][name]
        .as_u64()
        .unwrap_or_else(|| panic!("no global counter {name}"))
}
