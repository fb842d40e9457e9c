//! lb beside a stateful firewall: both lab nodes drop what netfilter's conntrack calls INVALID in
//! FORWARD, as kube-proxy's own `KUBE-FORWARD` rule, Calico and firewalld do. Netfilter must see
//! each translated flow whole (the reply of the flow it forwarded), or it drops the replies and
//! its table fills with half-open entries.
use lb_tests::{
    cluster_lab::{ready, spread, web_service, Cluster},
    lab::require_privileged,
};

const A: &str = "node-a";
const B: &str = "node-b";

#[test]
fn services_work_beside_a_firewall_that_drops_invalid_conntrack_state() {
    if !require_privileged("lab_firewall") {
        return;
    }
    let web = web_service(
        "10.96.0.20",
        30090,
        &(ready("10.244.1.5", A) + &ready("10.244.2.5", B)),
    );
    let c = Cluster::start(
        "firewall",
        env!("CARGO_BIN_EXE_lb-echo"),
        &[("web.yaml", &web)],
    )
    .expect("cluster lab");
    c.drop_invalid_in_forward();
    let vip = "10.96.0.20:80".parse().unwrap();
    let dns = "10.96.0.20:53".parse().unwrap();
    let nodeport = "192.0.2.10:30090".parse().unwrap();
    // Pod → ClusterIP, to the pod beside it and to the one on the other node, TCP and UDP.
    spread(&c.pod("a2").ns, vip, false, &["a1", "b1"]);
    spread(&c.pod("a2").ns, dns, true, &["a1", "b1"]);
    // Outside → NodePort: the local backend (forwarded by the stack) and the remote one.
    spread(&c.client, nodeport, false, &["a1", "b1"]);
    // 10,000 connections from a pod through the ClusterIP: netfilter follows every one to its
    // close, so none is left half-open (SYN_SENT, [UNREPLIED]) holding nf_conntrack for 120 s.
    let many = c
        .pod("a2")
        .ns
        .exec(
            env!("CARGO_BIN_EXE_lb-echo"),
            ["request", "--addr", "10.96.0.20:80", "--count", "10000"],
        )
        .expect("10,000 connections");
    let answered = String::from_utf8_lossy(&many.stdout)
        .lines()
        .filter(|l| !l.starts_with("ERROR"))
        .count();
    assert_eq!(answered, 10_000, "every connection answered");
    let table = c
        .node(A)
        .ns
        .run("cat /proc/net/nf_conntrack")
        .expect("nf_conntrack");
    let from_pod: Vec<&str> = table
        .lines()
        .filter(|l| l.contains(" tcp ") && l.contains("src=10.244.1.6 "))
        .collect();
    let half_open: Vec<&&str> = from_pod
        .iter()
        .filter(|l| l.contains("SYN_SENT") || l.contains("[UNREPLIED]"))
        .collect();
    println!(
        "nf_conntrack: {} entries of the pod's connections, {} half-open",
        from_pod.len(),
        half_open.len()
    );
    assert!(
        from_pod.len() >= 10_000,
        "netfilter tracked {} of the pod's connections",
        from_pod.len()
    );
    assert!(
        half_open.is_empty(),
        "{} of {} connections half-open in nf_conntrack, e.g. {:?}",
        half_open.len(),
        from_pod.len(),
        half_open.first()
    );

    // The firewall saw them, and dropped nothing of them: its rule counted no packet.
    for node in &c.nodes {
        let rules = node
            .ns
            .run("iptables -L FORWARD -v -n -x")
            .expect("iptables -L");
        let invalid = rules
            .lines()
            .find(|l| l.contains("INVALID"))
            .expect("the INVALID rule");
        let packets: u64 = invalid
            .split_whitespace()
            .next()
            .and_then(|n| n.parse().ok())
            .expect("packet count");
        assert_eq!(packets, 0, "{}: INVALID drops: {invalid}", node.name);
    }
}
