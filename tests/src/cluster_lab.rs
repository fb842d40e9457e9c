//! A two-node cluster in network namespaces, each node running the real `lb-agent` on one shared
//! manifest directory (the lab's "API server"), for the Kubernetes e2e Service scenarios:
//!
//! ```text
//!  client 192.0.2.100 ──┐                      (lan: one bridge)
//!                       ├── node-a eth0 192.0.2.10   pods a1 10.244.1.5, a2 10.244.1.6
//!                       └── node-b eth0 192.0.2.20   pods b1 10.244.2.5, b2 10.244.2.6
//! ```
//! Dual-stack, as clusters are: the lan also carries 2001:db8::/64 (client ::100, nodes ::10 and
//! ::20) and pods have IPv6 addresses too (a1 fd00:244:1::5, ..., b2 fd00:244:2::6), reached
//! through the host side's fe80::1. Pods sit behind host-side veths `h1`, `h2` with /32 (/128)
//! routes; the nodes route each other's pod CIDRs. Every pod runs lb-echo on TCP and UDP 8080
//! (answering with its name; IPv6 too) and on TCP 8081 (answering `NAME/8081`).
//!
//! The agents run as a user runs them: default flags, only the interfaces named (`eth0`
//! external, `h*` pods; [`IFACES`]), so `--xdp-mode` is the default and chooses per interface.
//! The lan is a bridge in its own namespace whose ports run no XDP program (nor does a real
//! switch or router, or the host side of a kind node): what a node's XDP program transmits on
//! its `eth0` (XDP_TX, e.g. to a backend on the other node, SNATed, or a reject) reaches the lan
//! only if the mode chosen for `eth0` really delivers it. Keep it that way: a lab whose peers run
//! XDP programs hides that (native XDP on a veth delivers transmitted frames only to a peer
//! running XDP).
//!
//! The building blocks ([`node_on_lan`], [`add_pod`], [`start_agent`], [`until_ready`]) also
//! make other topologies of such nodes (e.g. lab_default_flags' node with two external links).
use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, Result};

use crate::{
    agent_lab::{lbctl_json, write_manifest},
    lab::{ChildGuard, Lab, Netns},
    topology::{agent_bin, pod_via},
};

pub const CLIENT_IP: &str = "192.0.2.100";
pub const CLIENT_IP6: &str = "2001:db8::100";
/// The namespace of the scenarios' objects.
pub const NS: &str = "e2e";

pub struct Pod {
    pub name: &'static str,
    pub ip: &'static str,
    pub ns: Netns,
}

pub struct Node {
    pub name: &'static str,
    pub ip: &'static str,
    /// The node's IPv6 address on the lan ("" in topologies without IPv6).
    pub ip6: &'static str,
    pub ns: Netns,
    pub pods: Vec<Pod>,
    pin: PathBuf,
}

impl Node {
    pub fn pod(&self, name: &str) -> &Pod {
        self.pods
            .iter()
            .find(|p| p.name == name)
            .unwrap_or_else(|| panic!("no pod {name} on {}", self.name))
    }

    /// `lbctl -o json ARGS` on this node's pins, parsed.
    pub fn lbctl_json(&self, args: &[&str]) -> Result<serde_json::Value> {
        lbctl_json(&self.ns, &self.pin, args)
    }
}

/// Node name, addresses (IPv4, IPv6), pod CIDR gateway, IPv6 pod CIDR, pods (name, IPv4
/// address, IPv6 address).
type NodePlan = (
    &'static str,
    (&'static str, &'static str),
    &'static str,
    &'static str,
    [(&'static str, &'static str, &'static str); 2],
);

const PLAN: [NodePlan; 2] = [
    (
        "node-a",
        ("192.0.2.10", "2001:db8::10"),
        "10.244.1.1",
        "fd00:244:1::/64",
        [
            ("a1", "10.244.1.5", "fd00:244:1::5"),
            ("a2", "10.244.1.6", "fd00:244:1::6"),
        ],
    ),
    (
        "node-b",
        ("192.0.2.20", "2001:db8::20"),
        "10.244.2.1",
        "fd00:244:2::/64",
        [
            ("b1", "10.244.2.5", "fd00:244:2::5"),
            ("b2", "10.244.2.6", "fd00:244:2::6"),
        ],
    ),
];

pub struct Cluster {
    // Field order is drop order: processes before the lab that owns their namespaces.
    agents: Vec<ChildGuard>,
    /// The agents' flags beyond node name, manifests and pin path.
    flags: Vec<String>,
    _servers: Vec<ChildGuard>,
    pub client: Netns,
    pub nodes: Vec<Node>,
    pub manifests: PathBuf,
    pub lab: Lab,
}

impl Cluster {
    /// Builds the topology above and writes `objects` (file name, YAML) before starting both
    /// agents, so they start from the scenario's first state.
    pub fn start(test: &str, echo_bin: &str, objects: &[(&str, &str)]) -> Result<Cluster> {
        Self::start_with_flags(test, echo_bin, objects, &[])
    }

    /// [`Cluster::start`] with `flags` added to both agents' [`IFACES`] flags.
    pub fn start_with_flags(
        test: &str,
        echo_bin: &str,
        objects: &[(&str, &str)],
        flags: &[&str],
    ) -> Result<Cluster> {
        Self::start_on(test, echo_bin, objects, flags, PodNetwork::Routed)
    }

    /// [`Cluster::start_with_flags`] with the pod network `net` between the nodes.
    pub fn start_on(
        test: &str,
        echo_bin: &str,
        objects: &[(&str, &str)],
        flags: &[&str],
        net: PodNetwork,
    ) -> Result<Cluster> {
        let lab = Lab::new(test)?;
        lab.set_echo_bin(echo_bin);
        let lan = lab.netns("lan")?;
        let client = lab.netns("client")?;
        lab.veth(&client, "eth0", &lan, "c")?;
        client.add_addr("eth0", &format!("{CLIENT_IP}/24"))?;
        client.add_addr("eth0", &format!("{CLIENT_IP6}/64"))?;
        client.tx_offload_off("eth0")?;
        let mut ports = vec!["c".to_string()];
        let mut nodes = Vec::new();
        let mut servers = Vec::new();
        let mut prefixes6 = Vec::new();
        for (i, (name, (ip, ip6), gw, prefix6, pods)) in PLAN.into_iter().enumerate() {
            let port = format!("n{i}");
            let mut node = node_on_lan(&lab, &lan, &port, name, ip)?;
            node.ns.add_addr("eth0", &format!("{ip6}/64"))?;
            node.ns.sysctl("net.ipv6.conf.all.forwarding", "1")?;
            node.ip6 = ip6;
            for (j, (pod_name, pod_ip, pod_ip6)) in pods.into_iter().enumerate() {
                let host_if = format!("h{}", j + 1);
                servers.extend(add_pod(&lab, &mut node, pod_name, pod_ip, gw, &host_if)?);
                servers.extend(pod_ipv6(&node, pod_name, pod_ip6, &host_if)?);
            }
            ports.push(port);
            nodes.push(node);
            prefixes6.push(prefix6);
        }
        let ports: Vec<&str> = ports.iter().map(String::as_str).collect();
        lab.bridge(&lan, "br0", &ports)?;
        connect_pods(&lan, &nodes, net)?;
        connect_pods6(&nodes, &prefixes6)?;
        let manifests = lab.log_dir().join("manifests");
        std::fs::create_dir_all(&manifests).context("manifests dir")?;
        for (name, text) in objects {
            write_manifest(&manifests, name, text);
        }
        let flags: Vec<String> = IFACES.iter().chain(flags).map(|f| f.to_string()).collect();
        let agents = nodes
            .iter()
            .map(|n| start_agent(n, &manifests, &strs(&flags)))
            .collect::<Result<Vec<_>>>()?;
        for (node, agent) in nodes.iter().zip(&agents) {
            until_ready(node, agent)?;
        }
        Ok(Cluster {
            agents,
            flags,
            _servers: servers,
            client,
            nodes,
            manifests,
            lab,
        })
    }

    /// Both nodes drop what netfilter's conntrack calls INVALID in FORWARD, as kube-proxy's own
    /// `KUBE-FORWARD` rule, Calico and firewalld do.
    pub fn drop_invalid_in_forward(&self) {
        for node in &self.nodes {
            node.ns
                .run("iptables -I FORWARD -m conntrack --ctstate INVALID -j DROP")
                .expect("the firewall rule");
        }
    }

    pub fn node(&self, name: &str) -> &Node {
        self.nodes
            .iter()
            .find(|n| n.name == name)
            .unwrap_or_else(|| panic!("no node {name}"))
    }

    pub fn pod(&self, name: &str) -> &Pod {
        self.nodes
            .iter()
            .flat_map(|n| &n.pods)
            .find(|p| p.name == name)
            .unwrap_or_else(|| panic!("no pod {name}"))
    }

    /// Replace (or create) manifest `name`, as `kubectl apply` changes the API server.
    pub fn write(&self, name: &str, text: &str) {
        write_manifest(&self.manifests, name, text);
    }

    /// Delete manifest `name`, as `kubectl delete` would the objects in it.
    pub fn delete(&self, name: &str) {
        std::fs::remove_file(self.manifests.join(name)).expect("remove manifest");
    }

    /// SIGKILLs the agent of node `i` (its programs and maps stay, as on a crash).
    pub fn kill_agent(&mut self, i: usize) -> Result<()> {
        self.agents[i].signal(libc::SIGKILL)?;
        let status = self.agents[i].wait_timeout(APPLY)?;
        anyhow::ensure!(status.is_some(), "agent {i} still running after SIGKILL");
        Ok(())
    }

    /// Starts node `i`'s agent again with the same flags and waits until it is healthy.
    pub fn restart_agent(&mut self, i: usize) -> Result<()> {
        let agent = start_agent(&self.nodes[i], &self.manifests, &strs(&self.flags))?;
        until_ready(&self.nodes[i], &agent)?;
        self.agents[i] = agent;
        Ok(())
    }

    /// Both agents' logs, for failure messages.
    pub fn agent_logs(&self) -> String {
        self.agents
            .iter()
            .map(|a| format!("--- {} ---\n{}", a.label(), a.stderr()))
            .collect()
    }
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// A node namespace `name` whose `eth0` (at `ip`/24) is on bridge port `port` of `lan` (the
/// caller enslaves the ports with [`Lab::bridge`] once all are made), forwarding, TX checksum
/// offload off both ways; no pods yet ([`add_pod`]), its pin path reserved.
pub fn node_on_lan(
    lab: &Lab,
    lan: &Netns,
    port: &str,
    name: &'static str,
    ip: &'static str,
) -> Result<Node> {
    let ns = lab.netns(name)?;
    lab.veth(&ns, "eth0", lan, port)?;
    ns.add_addr("eth0", &format!("{ip}/24"))?;
    ns.sysctl("net.ipv4.ip_forward", "1")?;
    // XDP on a veth sees CHECKSUM_PARTIAL packets from senders with TX offload on (README,
    // "The datapath": checksums).
    ns.tx_offload_off("eth0")?;
    lan.tx_offload_off(port)?;
    Ok(Node {
        name,
        ip,
        ip6: "",
        ns,
        pods: Vec::new(),
        pin: lab.pin_path(name),
    })
}

/// Pod `name` at `ip` on `node` behind host-side veth `host_if` (match it with a `--pod-iface`
/// glob), `gw` the node's pod gateway address; TX checksum offload off in the pod. Starts its
/// echo servers (TCP and UDP 8080 answering `name`, TCP 8081 answering `name/8081`) and returns
/// them: keep them for as long as the pod should answer.
pub fn add_pod(
    lab: &Lab,
    node: &mut Node,
    name: &'static str,
    ip: &'static str,
    gw: &str,
    host_if: &str,
) -> Result<Vec<ChildGuard>> {
    let ns = pod_via(lab, &node.ns, name, ip, gw, host_if)?;
    ns.tx_offload_off("eth0")?;
    let servers = vec![
        ns.serve_echo(name, 8080, false)?,
        ns.serve_echo(name, 8080, true)?,
        ns.serve_echo(&format!("{name}/8081"), 8081, false)?,
    ];
    node.pods.push(Pod { name, ip, ns });
    Ok(servers)
}

/// Pod `name` of `node` (made by [`add_pod`] behind `host_if`) gets `ip6` too, its default route
/// via the host side's fe80::1, and IPv6 echo servers (TCP and UDP 8080, answering `name`).
fn pod_ipv6(node: &Node, name: &str, ip6: &str, host_if: &str) -> Result<Vec<ChildGuard>> {
    let pod = node.pod(name);
    node.ns
        .sh(&format!(
            "ip -6 addr add fe80::1/64 dev {host_if} nodad && \
             ip -6 route add {ip6}/128 dev {host_if}"
        ))
        .context("node route to the pod's IPv6 address")?;
    pod.ns
        .sh(&format!(
            "ip -6 addr add {ip6}/128 dev eth0 nodad && \
             ip -6 route add default via fe80::1 dev eth0"
        ))
        .context("pod IPv6 addressing")?;
    let bind = std::net::SocketAddr::new(ip6.parse()?, 8080);
    Ok(vec![
        pod.ns.serve_echo_on(name, bind, false)?,
        pod.ns.serve_echo_on(name, bind, true)?,
    ])
}

/// Each node routes the other's IPv6 pod CIDR via the other's IPv6 address on the lan.
fn connect_pods6(nodes: &[Node], prefixes: &[&str]) -> Result<()> {
    for node in nodes {
        for (other, prefix) in nodes.iter().zip(prefixes) {
            if other.name != node.name {
                node.ns
                    .sh(&format!("ip -6 route add {prefix} via {}", other.ip6))
                    .with_context(|| format!("{}: IPv6 route to {}", node.name, other.name))?;
            }
        }
    }
    Ok(())
}

/// How pods on one node reach pods on the other.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PodNetwork {
    /// Each node routes the other's pod CIDR through the other's address on the lan.
    Routed,
    /// Flannel's VXLAN backend: each node has a vxlan device `vx0` (VNI 1, UDP 8472) holding
    /// `10.244.N.0/32`, routes the other's pod CIDR via the other's `10.244.M.0` on it, with that
    /// address's MAC a permanent neighbour and the MAC's VTEP (the other node) in the FDB. The lan
    /// drops packets with a pod source, as a cloud network does with addresses it did not assign
    /// (the reason overlays exist): pod traffic between nodes must go through the tunnel.
    Vxlan,
}

/// Each node reaches the other's pod CIDR as `net` says, and has its neighbours resolved: XDP
/// forwards only to resolved next hops (README, datapath), as a cluster's busy nodes have them.
fn connect_pods(lan: &Netns, nodes: &[Node], net: PodNetwork) -> Result<()> {
    if net == PodNetwork::Vxlan {
        for node in nodes {
            let (addr, mac) = vtep(node)?;
            node.ns
                .sh(&format!(
                    "ip link add vx0 address {mac} type vxlan id 1 dstport 8472 local {} \
                     dev eth0 nolearning && ip addr add {addr}/32 dev vx0 && ip link set vx0 up",
                    node.ip
                ))
                .with_context(|| format!("{}: vxlan device", node.name))?;
        }
        // The cloud network's anti-spoofing: no pod source crosses the lan's bridge.
        lan.sh("nft add table bridge antispoof && \
             nft add chain bridge antispoof forward '{ type filter hook forward priority 0; }' \
             && nft add rule bridge antispoof forward ip saddr 10.244.0.0/16 counter drop")
            .context("lan: anti-spoofing")?;
    }
    for node in nodes {
        for other in nodes.iter().filter(|o| o.name != node.name) {
            let (addr, mac) = vtep(other)?;
            let route = match net {
                PodNetwork::Routed => format!("ip route add {addr}/24 via {}", other.ip),
                PodNetwork::Vxlan => format!(
                    "ip neigh replace {addr} lladdr {mac} nud permanent dev vx0 && \
                     bridge fdb append {mac} dst {} dev vx0 && \
                     ip route add {addr}/24 via {addr} dev vx0 onlink",
                    other.ip
                ),
            };
            node.ns
                .sh(&route)
                .with_context(|| format!("{}: route to {}'s pods", node.name, other.name))?;
        }
        let neighbours: Vec<&str> = nodes
            .iter()
            .map(|n| n.ip)
            .chain([CLIENT_IP])
            .filter(|ip| *ip != node.ip)
            .collect();
        resolve_neighbours(node, &neighbours)?;
    }
    Ok(())
}

/// A node's pod CIDR's first address (its VTEP address on the overlay: flannel's
/// `10.244.N.0`), and the MAC address its vxlan device gets.
fn vtep(node: &Node) -> Result<(Ipv4Addr, String)> {
    let octets = node.pods[0].ip.parse::<Ipv4Addr>()?.octets();
    Ok((
        Ipv4Addr::new(octets[0], octets[1], octets[2], 0),
        format!("02:00:0a:f4:{:02x}:00", octets[2]),
    ))
}

/// Pings each of `neighbours` once from `node`, so their addresses are resolved (XDP forwards
/// only to resolved next hops) and each is known to be reachable.
pub fn resolve_neighbours(node: &Node, neighbours: &[&str]) -> Result<()> {
    for neighbour in neighbours {
        node.ns
            .exec("ping", ["-c1", "-W2", neighbour])
            .with_context(|| format!("{} reaches {neighbour}", node.name))?;
    }
    Ok(())
}

/// The interface flags the lab's agents get (and nothing else beyond node name, manifests and
/// pin path): `eth0` external, `h*` pods.
pub const IFACES: [&str; 4] = ["--ext-iface", "eth0", "--pod-iface", "h*"];

/// `lb-agent run` on `node` as a user runs it: manifests mode on `manifests`, the node's name
/// and pin path, the interface flags `ifaces` (e.g. [`IFACES`]) and otherwise the defaults
/// (`--xdp-mode`, `--metrics-addr` 127.0.0.1:9464 in the node's namespace, ...).
pub fn start_agent(node: &Node, manifests: &Path, ifaces: &[&str]) -> Result<ChildGuard> {
    let mut args = vec![
        "run",
        "--node-name",
        node.name,
        "--manifests",
        manifests.to_str().context("manifest path")?,
        "--pin-path",
        node.pin.to_str().context("pin path")?,
    ];
    args.extend_from_slice(ifaces);
    node.ns
        .spawn(&format!("agent-{}", node.name), agent_bin()?, args)
}

/// Waits until `node`'s agent answers /healthz with 200 (its first sync is in the maps), so a
/// scenario's deadlines measure applying edits, not creating maps: with several labs at once,
/// creating the preallocated maps alone can take seconds.
pub fn until_ready(node: &Node, agent: &ChildGuard) -> Result<()> {
    crate::lab::poll_until(STARTUP, || {
        crate::http::http_get(&node.ns, "127.0.0.1:9464", "/healthz")
            .ok()
            .filter(|r| r.status == 200)
    })
    .map(drop)
    .with_context(|| {
        format!(
            "{}'s agent not healthy within {STARTUP:?}:\n{}",
            node.name,
            agent.stderr()
        )
    })
}

/// How long an agent may take from start to its first sync applied.
const STARTUP: Duration = Duration::from_secs(60);

/// The timeout of one request when an answer is expected.
pub const ASK: Duration = Duration::from_secs(2);
/// How long an agent may take to apply an edit (the contract says 1 s) plus slack for slow
/// machines; polls stretch it further by `$LB_TEST_TIME_SCALE` (VMs under emulation).
pub const APPLY: Duration = Duration::from_secs(10);

/// A ready endpoint at `ip` on `node`, as an `endpoints:` list item.
pub fn ready(ip: &str, node: &str) -> String {
    format!("- {{addresses: [\"{ip}\"], nodeName: {node}}}\n")
}

/// A terminating endpoint that still serves (a pod in its grace period).
pub fn terminating(ip: &str, node: &str) -> String {
    format!(
        "- {{addresses: [\"{ip}\"], nodeName: {node}, \
         conditions: {{ready: false, serving: true, terminating: true}}}}\n"
    )
}

/// Service `e2e/NAME` with `spec` (YAML lines of the spec, indented by two) and extra
/// `metadata` fields (a flow mapping's inner text, may be empty).
pub fn service(name: &str, metadata: &str, spec: &str) -> String {
    let sep = if metadata.is_empty() { "" } else { ", " };
    format!(
        "apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: {NS}{sep}{metadata}}}
spec:
{spec}"
    )
}

/// EndpointSlice `e2e/SLICE` of service NAME with `ports` (flow-sequence text) and `endpoints`
/// (list items from [`ready`] / [`terminating`]; empty for none).
/// The scenarios' usual Service `web`: NodePort `node_port` and ClusterIP `cluster_ip`, with
/// ports `http` (TCP 80) and `dns` (UDP 53), both to the pods' 8080, and its EndpointSlice of
/// `endpoints` (see [`ready`], [`terminating`]).
pub fn web_service(cluster_ip: &str, node_port: u16, endpoints: &str) -> String {
    service(
        "web",
        "",
        &format!(
            "  type: NodePort\n  clusterIP: {cluster_ip}\n  ports:\n  \
             - {{name: http, port: 80, targetPort: 8080, nodePort: {node_port}}}\n  \
             - {{name: dns, port: 53, targetPort: 8080, protocol: UDP}}\n"
        ),
    ) + &slice(
        "web",
        "web-1",
        "[{name: http, port: 8080}, {name: dns, port: 8080, protocol: UDP}]",
        endpoints,
    )
}

/// The `kubernetes` Service of a control-plane node: ClusterIP 10.96.0.1:443 to the API server
/// on `node` itself (`node_ip`:6443), as kubeadm, kind and k3s have it.
pub fn apiserver_service(node_ip: &str, node: &str) -> String {
    service(
        "apiserver",
        "",
        "  clusterIP: 10.96.0.1\n  ports:\n  - {name: https, port: 443, targetPort: 6443}\n",
    ) + &slice(
        "apiserver",
        "apiserver-1",
        "[{name: https, port: 6443}]",
        &ready(node_ip, node),
    )
}

pub fn slice(service: &str, slice: &str, ports: &str, endpoints: &str) -> String {
    slice_of("IPv4", service, slice, ports, endpoints)
}

/// [`slice`] of addressType IPv6.
pub fn slice6(service: &str, slice: &str, ports: &str, endpoints: &str) -> String {
    slice_of("IPv6", service, slice, ports, endpoints)
}

fn slice_of(family: &str, service: &str, slice: &str, ports: &str, endpoints: &str) -> String {
    let endpoints = if endpoints.is_empty() {
        "endpoints: []\n".to_string()
    } else {
        format!("endpoints:\n{endpoints}")
    };
    format!(
        "---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: {slice}
  namespace: {NS}
  labels: {{kubernetes.io/service-name: {service}}}
addressType: {family}
ports: {ports}
{endpoints}"
    )
}

/// Polls `lbctl services` on `node` until the frontend `ip:port/protocol` leads to exactly the
/// backends at `want` (addresses; empty: the frontend exists with no backends), or, with `want`
/// None, until no such frontend exists: what the node's maps hold, so traffic checks that follow
/// are not racing the agent.
pub fn until_frontend(node: &Node, ip: &str, port: u16, udp: bool, want: Option<&[&str]>) {
    let proto = if udp { "UDP" } else { "TCP" };
    let mut last = None;
    let got = crate::lab::poll_until(APPLY, || {
        // Fails until the agent has created its maps.
        let services = match node.lbctl_json(&["services"]) {
            Ok(s) => s,
            Err(e) => {
                last = Some(Err(format!("{e:#}")));
                return None;
            }
        };
        let mut found: Vec<Vec<String>> = services
            .as_array()?
            .iter()
            .filter(|e| {
                let f = &e["frontend"];
                f["ip"] == ip && f["port"] == port && f["protocol"] == proto
            })
            .map(|e| {
                let mut ips: Vec<String> = e["backends"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|b| Some(b["ip"].as_str()?.to_string()))
                    .collect();
                ips.sort();
                ips
            })
            .collect();
        found.dedup();
        let ok = match want {
            None => found.is_empty(),
            Some(want) => {
                let mut want: Vec<String> = want.iter().map(|s| s.to_string()).collect();
                want.sort();
                found == [want]
            }
        };
        last = Some(Ok(found));
        ok.then_some(())
    });
    assert!(
        got.is_some(),
        "{}: frontend {ip}:{port}/{proto}: wanted backends {want:?}, last {last:?}",
        node.name
    );
}

/// Sends requests from `from` to `to`, each a new flow, until every pod in `want` has answered;
/// an answer from anyone else, or a failed request, fails the test. Returns the replies.
pub fn spread(
    from: &Netns,
    to: std::net::SocketAddr,
    udp: bool,
    want: &[&str],
) -> Vec<crate::lab::Reply> {
    spread_by(
        &format!("{to} (udp={udp}) from {}", from.name()),
        want,
        crate::lab::scaled(APPLY),
        || from.request(to, udp, ASK),
    )
}

/// Calls `ask` (each call a new flow, described by `what`) until every pod in `want` has
/// answered, for at most `within`; an answer from anyone else, or a failed request, fails the
/// test. Returns the replies.
pub fn spread_by(
    what: &str,
    want: &[&str],
    within: Duration,
    mut ask: impl FnMut() -> Result<crate::lab::Reply, crate::lab::RequestError>,
) -> Vec<crate::lab::Reply> {
    let start = std::time::Instant::now();
    let mut replies: Vec<crate::lab::Reply> = Vec::new();
    while !want.iter().all(|w| replies.iter().any(|r| r.name == *w)) {
        let names: Vec<&String> = replies.iter().map(|r| &r.name).collect();
        assert!(
            start.elapsed() < within,
            "{what}: only {names:?} answered, wanted all of {want:?}",
        );
        let reply = ask().unwrap_or_else(|e| panic!("{what} (answered so far: {names:?}): {e}"));
        assert!(
            want.contains(&reply.name.as_str()),
            "{what}: answered by {}, wanted one of {want:?}",
            reply.name
        );
        replies.push(reply);
    }
    replies
}

/// Polls until a request from `from` to `to` fails with `want` (e.g. refused: the TCP RST or
/// ICMP port unreachable a user sees as "connection refused").
pub fn until_error(
    from: &Netns,
    to: std::net::SocketAddr,
    udp: bool,
    want: crate::lab::RequestError,
) {
    let mut last = None;
    let got = crate::lab::poll_until(APPLY, || {
        let r = from.request(to, udp, Duration::from_millis(500));
        let hit = matches!(&r, Err(e) if *e == want);
        last = Some(r);
        hit.then_some(())
    });
    assert!(
        got.is_some(),
        "{to} (udp={udp}) from {}: wanted {want}, last {last:?}",
        from.name()
    );
}
