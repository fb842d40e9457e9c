//! lb as a user runs it: agents with the default flags (only the interfaces named), on nodes
//! whose external links end at a switch, router or host that runs no XDP program. Native XDP on
//! a veth delivers what lb transmits (XDP_TX, XDP_REDIRECT) only to a peer running XDP, so a
//! default that picks native there blackholes NodePort, externalIP and LoadBalancer traffic to a
//! backend on another node (SNATed and transmitted by XDP) while the local backend still answers
//! (issue 13). Two nodes of that kind:
//!
//! - kind-like ([`lb_tests::cluster_lab`] as is): one external veth; the outside client and the
//!   other node are both reached through it (XDP_TX back out of `eth0`).
//! - two external links: clients arrive on `eth1`, the other node is on a lan behind `eth0`, so
//!   what goes to the remote backend, and its replies, leave by the other interface
//!   (XDP_REDIRECT).
//!
//! Each asserts what a user notices: from the outside client, on TCP and UDP, the node port, the
//! externalIP and the LoadBalancer IP are answered by both the local and the remote pod (the
//! remote one seeing the node's address on the interface towards it: SNAT), and the agent
//! reports the XDP mode it chose for each external interface, with the reason (`lbctl
//! interfaces`, the `lb_interface_xdp_mode` metric).
use anyhow::{Context as _, Result};
use lb_tests::{
    agent_lab::{addr, write_manifest},
    cluster_lab::{
        add_pod, node_on_lan, ready, resolve_neighbours, service, slice, spread, start_agent,
        until_frontend, until_ready, Cluster, Node, IFACES,
    },
    http::http_get,
    lab::{require_privileged, ChildGuard, Lab, Netns},
    topology,
};

const A: &str = "node-a";
const B: &str = "node-b";
const A_IP: &str = "192.0.2.10";
const B_IP: &str = "192.0.2.20";
const A1: &str = "10.244.1.5";
const B1: &str = "10.244.2.5";
const CLUSTER_IP: &str = "10.96.0.40";
const EXTERNAL_IP: &str = "203.0.113.40";
const LB_IP: &str = "203.0.113.41";
const NODE_PORT: u16 = 30140;
const PORT: u16 = 80;
/// node-a's agent (each node has its own namespace, so each its own 127.0.0.1).
const METRICS: &str = "127.0.0.1:9464";

/// `e2e/web`: LoadBalancer (so also NodePort) with externalTrafficPolicy Cluster, an externalIP
/// and an ingress IP; TCP and UDP port 80 (node port 30140) to 8080 of a1 on node-a and b1 on
/// node-b.
fn web() -> String {
    let spec = format!(
        "  type: LoadBalancer
  clusterIP: {CLUSTER_IP}
  externalTrafficPolicy: Cluster
  externalIPs: [{EXTERNAL_IP}]
  ports:
  - {{name: tcp, port: {PORT}, targetPort: 8080, protocol: TCP, nodePort: {NODE_PORT}}}
  - {{name: udp, port: {PORT}, targetPort: 8080, protocol: UDP, nodePort: {NODE_PORT}}}
"
    );
    let status = format!("status:\n  loadBalancer:\n    ingress: [{{ip: {LB_IP}}}]\n");
    let ports = "[{name: tcp, port: 8080, protocol: TCP}, {name: udp, port: 8080, protocol: UDP}]";
    service("web", "", &spec)
        + &status
        + &slice("web", "web-1", ports, &(ready(A1, A) + &ready(B1, B)))
}

/// From `client`, over new connections (TCP) and new sockets (UDP), to node-a's node port at
/// `node_port_ip`, the externalIP and the LoadBalancer IP: every request answered, by a1 and b1
/// both (nobody else), b1 seeing `snat_ip` (node-a's address towards node-b) as the source.
fn local_and_remote_answer(client: &Netns, node_a: &Node, node_port_ip: &str, snat_ip: &str) {
    for (ip, port) in [
        (node_port_ip, NODE_PORT),
        (EXTERNAL_IP, PORT),
        (LB_IP, PORT),
    ] {
        for udp in [false, true] {
            // The frontend is in node-a's maps with both backends: what follows is traffic.
            until_frontend(node_a, ip, port, udp, Some(&[A1, B1]));
            let replies = spread(client, addr(ip, port), udp, &["a1", "b1"]);
            for r in replies.iter().filter(|r| r.name == "b1") {
                assert_eq!(
                    r.peer.ip().to_string(),
                    snat_ip,
                    "{ip}:{port} (udp={udp}): the remote backend sees node-a's address (SNAT)"
                );
            }
            println!(
                "{ip}:{port} udp={udp}: {} requests, a1 and b1 answered",
                replies.len()
            );
        }
    }
}

/// Asserts node-a's report of its interfaces: each of `external` is there with role external,
/// XDP mode generic (they are veths whose peer runs no XDP program) and a reason; every pod
/// interface with role pod and no XDP program; sorted by ifindex. The same choice is exported
/// as `lb_interface_xdp_mode{interface=...,mode="generic"} 1`.
fn assert_generic_on_external(node: &Node, external: &[&str]) {
    let report = node
        .lbctl_json(&["interfaces"])
        .unwrap_or_else(|e| panic!("{}: lbctl -o json interfaces: {e:#}", node.name));
    let entries = report
        .as_array()
        .unwrap_or_else(|| panic!("{}: lbctl interfaces is not an array: {report}", node.name));
    println!("{}: lbctl interfaces: {report}", node.name);
    let ifindexes: Vec<u64> = entries
        .iter()
        .map(|e| e["ifindex"].as_u64().expect("ifindex"))
        .collect();
    assert!(
        ifindexes.windows(2).all(|w| w[0] < w[1]),
        "{}: entries not sorted by ifindex: {report}",
        node.name
    );
    for iface in external {
        let entry = entries
            .iter()
            .find(|e| e["name"] == *iface)
            .unwrap_or_else(|| panic!("{}: no {iface} in lbctl interfaces: {report}", node.name));
        assert_eq!(
            entry["ifindex"].as_u64(),
            Some(u64::from(node.ns.ifindex(iface).expect("ifindex"))),
            "{}: {iface}'s ifindex: {entry}",
            node.name
        );
        assert_eq!(entry["role"], "external", "{}: {entry}", node.name);
        assert_eq!(entry["xdp_mode"], "generic", "{}: {entry}", node.name);
        let reason = entry["reason"].as_str().unwrap_or_default();
        assert!(
            !reason.trim().is_empty(),
            "{}: no reason for {iface}'s mode: {entry}",
            node.name
        );
    }
    let pod_entries: Vec<_> = entries.iter().filter(|e| e["role"] == "pod").collect();
    assert!(
        !pod_entries.is_empty(),
        "{}: no pod interface reported: {report}",
        node.name
    );
    for entry in pod_entries {
        assert!(
            entry["name"].as_str().is_some_and(|n| n.starts_with('h')),
            "{}: a pod interface not matching h*: {entry}",
            node.name
        );
        assert!(
            entry["xdp_mode"].is_null(),
            "{}: a pod interface runs TC only: {entry}",
            node.name
        );
    }
    let metrics = http_get(&node.ns, METRICS, "/metrics")
        .unwrap_or_else(|e| panic!("{}: GET /metrics: {e}", node.name));
    for iface in external {
        let sample = format!("lb_interface_xdp_mode{{interface=\"{iface}\",mode=\"generic\"}} 1");
        assert!(
            metrics.body.lines().any(|l| l.trim_end() == sample),
            "{}: no `{sample}` in /metrics; lb_interface lines: {:?}",
            node.name,
            metrics
                .body
                .lines()
                .filter(|l| l.starts_with("lb_interface"))
                .collect::<Vec<_>>()
        );
    }
}

/// On a failing test (dropped while panicking), prints what the nodes report about their
/// interfaces: the assertion alone says only which request went unanswered. (The agents' logs
/// are printed by their guards.)
struct Diagnostics<'a>(&'a [Node]);

impl Drop for Diagnostics<'_> {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        for node in self.0 {
            let report = node
                .lbctl_json(&["interfaces"])
                .map_or_else(|e| format!("error: {e:#}"), |v| v.to_string());
            eprintln!("--- {}: lbctl interfaces: {report}", node.name);
            if let Ok(m) = http_get(&node.ns, METRICS, "/metrics") {
                for line in m.body.lines().filter(|l| l.starts_with("lb_interface")) {
                    eprintln!("--- {}: {line}", node.name);
                }
            }
        }
    }
}

/// The kind-like node: one external veth, the outside client and node-b both behind it (the
/// cluster_lab topology, its lan a bridge without XDP). The externalIP and the LoadBalancer IP
/// are routed to node-a by the client, as an outside router would.
#[test]
fn one_external_veth_serves_local_and_remote_backends_by_default() {
    if !require_privileged("lab_default_flags::one_external_veth") {
        return;
    }
    let c = Cluster::start(
        "default-flags-1nic",
        env!("CARGO_BIN_EXE_lb-echo"),
        &[("web.yaml", &web())],
    )
    .expect("cluster lab");
    let _diagnostics = Diagnostics(&c.nodes);
    for ip in [EXTERNAL_IP, LB_IP] {
        c.client
            .add_route(&format!("{ip}/32"), A_IP)
            .expect("client route to node-a");
    }
    let node_a = c.node(A);
    local_and_remote_answer(&c.client, node_a, A_IP, A_IP);
    assert_generic_on_external(node_a, &["eth0"]);
}

/// node-a's address facing the client, on `eth1`.
const A_CLIENT_SIDE_IP: &str = "198.51.100.1";
/// The outside client, on node-a's `eth1` link.
const CLIENT2_IP: &str = "198.51.100.2";
const CLIENT_NET: &str = "198.51.100.0/24";

/// A node with two external links:
///
/// ```text
///  client 198.51.100.2 ─── eth1 198.51.100.1 ┐
///                                            ├─ node-a   pod a1 10.244.1.5 (h1)
///          ┌──────────────── eth0 192.0.2.10 ┘
///  lan (a bridge)
///          └──────────────── eth0 192.0.2.20 ─── node-b   pod b1 10.244.2.5 (h1)
/// ```
/// The client's link is a veth straight to `eth1` (the client runs no XDP program); node-b is
/// reached through a bridge in its own namespace (so node-a's `eth0` peer runs no XDP program
/// either, though node-b's agent runs one on node-b's `eth0`). node-a routes node-b's pod CIDR
/// via node-b; node-b routes node-a's pod CIDR and, as a real node's default route would, the
/// client network via node-a. b1's replies to SNATed flows go to node-a's `eth0` address, on
/// node-b's lan. Every neighbour is resolved before the agents start. Both agents: default
/// flags with `--ext-iface eth0 --ext-iface eth1 --pod-iface h*` on node-a, [`IFACES`]
/// (`--ext-iface eth0 --pod-iface h*`) on node-b.
struct TwoLinks {
    // Field order is drop order: processes before the lab that owns their namespaces.
    _agents: Vec<ChildGuard>,
    _servers: Vec<ChildGuard>,
    client: Netns,
    /// node-a, node-b.
    nodes: Vec<Node>,
    _lab: Lab,
}

impl TwoLinks {
    fn start(test: &str, objects: &[(&str, &str)]) -> Result<TwoLinks> {
        let lab = Lab::new(test)?;
        lab.set_echo_bin(env!("CARGO_BIN_EXE_lb-echo"));
        let lan = lab.netns("lan")?;
        let mut node_a = node_on_lan(&lab, &lan, "n0", A, A_IP)?;
        let mut node_b = node_on_lan(&lab, &lan, "n1", B, B_IP)?;
        lab.bridge(&lan, "br0", &["n0", "n1"])?;
        let client = topology::client(
            &lab,
            &node_a.ns,
            "eth1",
            &format!("{A_CLIENT_SIDE_IP}/24"),
            &format!("{CLIENT2_IP}/24"),
        )?;
        node_a.ns.tx_offload_off("eth1")?;
        for ip in [EXTERNAL_IP, LB_IP] {
            client.add_route(&format!("{ip}/32"), A_CLIENT_SIDE_IP)?;
        }
        let mut servers = add_pod(&lab, &mut node_a, "a1", A1, "10.244.1.1", "h1")?;
        servers.extend(add_pod(&lab, &mut node_b, "b1", B1, "10.244.2.1", "h1")?);
        node_a.ns.add_route("10.244.2.0/24", B_IP)?;
        node_b.ns.add_route("10.244.1.0/24", A_IP)?;
        node_b.ns.add_route(CLIENT_NET, A_IP)?;
        resolve_neighbours(&node_a, &[B_IP, CLIENT2_IP])?;
        resolve_neighbours(&node_b, &[A_IP])?;
        let manifests = lab.log_dir().join("manifests");
        std::fs::create_dir_all(&manifests).context("manifests dir")?;
        for (name, text) in objects {
            write_manifest(&manifests, name, text);
        }
        let a_ifaces = [
            "--ext-iface",
            "eth0",
            "--ext-iface",
            "eth1",
            "--pod-iface",
            "h*",
        ];
        let agents = vec![
            start_agent(&node_a, &manifests, &a_ifaces)?,
            start_agent(&node_b, &manifests, &IFACES)?,
        ];
        let nodes = vec![node_a, node_b];
        for (node, agent) in nodes.iter().zip(&agents) {
            until_ready(node, agent)?;
        }
        Ok(TwoLinks {
            _agents: agents,
            _servers: servers,
            client,
            nodes,
            _lab: lab,
        })
    }
}

/// The node with two external links: what the client sends on `eth1` to the remote backend
/// leaves by `eth0`, SNATed to `eth0`'s address, and the replies come back the other way.
#[test]
fn two_external_links_serve_local_and_remote_backends_by_default() {
    if !require_privileged("lab_default_flags::two_external_links") {
        return;
    }
    let t = TwoLinks::start("default-flags-2nic", &[("web.yaml", &web())]).expect("lab");
    let _diagnostics = Diagnostics(&t.nodes);
    let node_a = &t.nodes[0];
    local_and_remote_answer(&t.client, node_a, A_CLIENT_SIDE_IP, A_IP);
    assert_generic_on_external(node_a, &["eth0", "eth1"]);
}
