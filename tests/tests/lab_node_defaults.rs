//! lb-agent with no interface flags at all, as the DaemonSet runs it: the node has a default
//! route on `eth0` (to a gateway namespace) and its InternalIP on `eth1` (facing the client),
//! pods on `veth*` links. The agent must take `eth1` as external because the Node object says
//! the InternalIP is there (the default route alone would pick `eth0`), serve the NodePort on
//! that address, and find the pod links by the default globs.
use std::time::Duration;

use lb_tests::{
    agent_lab::{
        addr, local_endpoints, until_answer, web_manifest, AgentLab, CLUSTER_IP, NODE, NODE_IP,
    },
    lab::{poll_until, require_privileged},
};

const POD1: &str = "10.244.1.5";
const POD2: &str = "10.244.1.7";

fn node_manifest(internal_ip: &str) -> String {
    format!(
        "apiVersion: v1
kind: Node
metadata: {{name: {NODE}}}
status:
  addresses:
  - {{type: Hostname, address: {NODE}}}
  - {{type: InternalIP, address: {internal_ip}}}
"
    )
}

#[test]
fn agent_finds_external_interface_from_node_internal_ip() {
    if !require_privileged("lab_node_defaults") {
        return;
    }
    let pods = [("pod1", POD1, "veth-p1"), ("pod2", POD2, "veth-p2")];
    let s = AgentLab::new("lab-node-defaults", env!("CARGO_BIN_EXE_lb-echo"), &pods).expect("lab");
    // The default route leaves through eth0, away from the InternalIP.
    let gw = s.lab.netns("gw").expect("gw netns");
    s.lab.veth(&gw, "eth0", &s.node, "eth0").expect("veth");
    s.node.add_addr("eth0", "10.0.0.2/24").expect("addr");
    gw.add_addr("eth0", "10.0.0.1/24").expect("addr");
    s.node
        .add_route("default", "10.0.0.1")
        .expect("default route");

    s.write("node.yaml", &node_manifest(NODE_IP));
    s.write("web.yaml", &web_manifest("", &local_endpoints(&[POD1])));
    let agent = s.start_agent_with("agent", &[]).expect("lb-agent");

    // Pods' links found by `veth*`: pod → ClusterIP.
    let within = Duration::from_secs(10);
    until_answer(
        &s.pods[1],
        addr(CLUSTER_IP, 80),
        false,
        Some("pod1"),
        within,
    );
    // eth1 is external: the client's NodePort traffic is balanced there.
    until_answer(&s.client, addr(NODE_IP, 30080), false, Some("pod1"), within);
    let logged = poll_until(within, || {
        let log = agent.stderr();
        let line = log
            .lines()
            .find(|l| l.contains("external interfaces") && l.contains("eth1"))?;
        Some(line.to_string())
    });
    let line = logged.unwrap_or_else(|| panic!("no choice logged:\n{}", agent.stderr()));
    assert!(
        line.contains(&format!("holds the Node's InternalIP {NODE_IP}")),
        "{line}"
    );
    assert!(
        agent
            .stderr()
            .contains("veth*, cali*, lxc* and Linux bridge ports (default)"),
        "pod interface default not logged:\n{}",
        agent.stderr()
    );

    // The NodePort is on the InternalIP only, not on eth0's address.
    let services = s.lbctl_json(&["services"]).expect("lbctl");
    let mut nodeports: Vec<String> = services
        .as_array()
        .expect("array")
        .iter()
        .filter(|e| e["frontend"]["kind"] == "NodePort")
        .map(|e| e["frontend"]["ip"].as_str().expect("ip").to_string())
        .collect();
    nodeports.sort();
    nodeports.dedup();
    assert_eq!(nodeports, [NODE_IP]);
}

#[test]
fn agent_falls_back_to_default_route_without_node_object() {
    if !require_privileged("lab_node_defaults") {
        return;
    }
    let pods = [("pod1", POD1, "veth-p1")];
    let s = AgentLab::new("lab-node-route", env!("CARGO_BIN_EXE_lb-echo"), &pods).expect("lab");
    // No Node object; the default route leaves through eth1, towards the client.
    s.node
        .add_route("default", "192.0.2.100")
        .expect("default route");
    s.write("web.yaml", &web_manifest("", &local_endpoints(&[POD1])));
    // An IPv6 CIDR alone (a dual-stack kube-proxy configuration carried over) is accepted and
    // leaves IPv4 NodePorts at their default, as kube-proxy's IPv4 proxier does.
    let flags = ["--nodeport-addresses", "::/0"];
    let agent = s.start_agent_with("agent", &flags).expect("lb-agent");
    let within = Duration::from_secs(10);
    until_answer(&s.client, addr(NODE_IP, 30080), false, Some("pod1"), within);
    let log = agent.stderr();
    assert!(log.contains("carries the IPv4 default route"), "{log}");
}
