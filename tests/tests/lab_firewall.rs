//! lb beside a stateful firewall: both lab nodes drop what netfilter's conntrack calls INVALID in
//! FORWARD, as kube-proxy's own `KUBE-FORWARD` rule, Calico and firewalld do. Netfilter must see
//! each translated flow whole (the reply of the flow it forwarded), or it drops the replies and
//! its table fills with half-open entries. The whole matrix runs beside it: ClusterIP and
//! NodePort, TCP and UDP, local and remote backends, eTP=Local, no endpoints (refused), pod to
//! NodePort, hairpin, and the node itself as the endpoint.
use lb_tests::{
    cluster_lab::{
        apiserver_service, ready, service, slice, spread, until_error, web_service, Cluster,
        CLIENT_IP,
    },
    lab::{require_privileged, RequestError},
};

const A: &str = "node-a";
const B: &str = "node-b";

/// The whole matrix's Services beside `web` (TCP/UDP ClusterIP, TCP NodePort 30090 to a1 and b1).
fn matrix() -> String {
    let both = ready("10.244.1.5", A) + &ready("10.244.2.5", B);
    let dns_ports = "[{name: dns, port: 8080, protocol: UDP}]";
    let http_ports = "[{name: http, port: 8080}]";
    let two = "[{name: http, port: 8080}, {name: dns, port: 8080, protocol: UDP}]";
    let spec = |ip: &str, extra: &str, ports: &str| {
        format!("  type: NodePort\n  clusterIP: {ip}\n{extra}  ports:\n{ports}")
    };
    let udp_nodeport =
        "  - {name: dns, port: 53, targetPort: 8080, protocol: UDP, nodePort: 30091}\n";
    let both_nodeports = "  - {name: http, port: 80, targetPort: 8080, nodePort: NP1}\n  \
                          - {name: dns, port: 53, targetPort: 8080, protocol: UDP, nodePort: NP2}\n";
    [
        // UDP NodePort, eTP=Cluster.
        service("udp", "", &spec("10.96.0.21", "", udp_nodeport))
            + &slice("udp", "udp-1", dns_ports, &both),
        // eTP=Local: node-a's NodePorts go to a1 only, which sees the client's own address.
        service(
            "local",
            "",
            &spec(
                "10.96.0.22",
                "  externalTrafficPolicy: Local\n",
                &both_nodeports
                    .replace("NP1", "30092")
                    .replace("NP2", "30093"),
            ),
        ) + &slice("local", "local-1", two, &both),
        // No endpoints: refused at once, TCP and UDP, NodePort and ClusterIP.
        service(
            "empty",
            "",
            &spec(
                "10.96.0.23",
                "",
                &both_nodeports
                    .replace("NP1", "30094")
                    .replace("NP2", "30095"),
            ),
        ) + &slice("empty", "empty-1", two, ""),
        // Hairpin: a1's only Service endpoint is a1.
        service(
            "itself",
            "",
            "  clusterIP: 10.96.0.24\n  ports:\n  - {name: http, port: 80, targetPort: 8080}\n",
        ) + &slice("itself", "itself-1", http_ports, &ready("10.244.1.5", A)),
        // The node itself as the endpoint (the `kubernetes` Service on a control-plane node).
        apiserver_service("192.0.2.10", A),
    ]
    .join("---\n")
}

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
        &[("web.yaml", &web), ("matrix.yaml", &matrix())],
    )
    .expect("cluster lab");
    c.drop_invalid_in_forward();
    let _api = c.node(A).ns.serve_echo("node-a", 6443, false);
    let at = |addr: &str| addr.parse().unwrap();
    let (a2, b2) = (&c.pod("a2").ns, &c.pod("b2").ns);
    for udp in [false, true] {
        // Pod → ClusterIP, to the pod beside it and to the one on the other node.
        let vip = if udp {
            "10.96.0.20:53"
        } else {
            "10.96.0.20:80"
        };
        spread(a2, at(vip), udp, &["a1", "b1"]);
        // Outside → NodePort (eTP=Cluster): the local backend (forwarded by the stack) and the
        // remote one (SNATed).
        let nodeport = if udp {
            "192.0.2.10:30091"
        } else {
            "192.0.2.10:30090"
        };
        spread(&c.client, at(nodeport), udp, &["a1", "b1"]);
        // Pod → NodePort, on its own node and on the other node's address.
        spread(a2, at(nodeport), udp, &["a1", "b1"]);
        spread(b2, at(nodeport), udp, &["a1", "b1"]);
        // eTP=Local: only the local pod, which sees the client's address.
        let local = if udp {
            "192.0.2.10:30093"
        } else {
            "192.0.2.10:30092"
        };
        for reply in spread(&c.client, at(local), udp, &["a1"]) {
            assert_eq!(reply.peer.ip().to_string(), CLIENT_IP, "eTP=Local: {reply}");
        }
        // No endpoints: refused, from outside and from a pod.
        let (empty_np, empty_vip) = match udp {
            true => ("192.0.2.10:30095", "10.96.0.23:53"),
            false => ("192.0.2.10:30094", "10.96.0.23:80"),
        };
        until_error(&c.client, at(empty_np), udp, RequestError::Refused);
        until_error(a2, at(empty_vip), udp, RequestError::Refused);
    }
    // Hairpin: a pod reaching itself through its own Service.
    spread(&c.pod("a1").ns, at("10.96.0.24:80"), false, &["a1"]);
    // The node as the endpoint, from a pod on that node and from one on the other.
    for pod in ["a1", "b1"] {
        spread(&c.pod(pod).ns, at("10.96.0.1:443"), false, &["node-a"]);
    }

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
