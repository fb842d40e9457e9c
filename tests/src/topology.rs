//! Building blocks of the lab topologies the scenario tests share: a node with routed pods
//! (host-side veths and /32 routes, as Calico does), an outside client, and the lb-agent binary.
use lb::dataplane::ServiceMaps;
use std::net::Ipv4Addr;
use std::path::PathBuf;

use anyhow::{bail, Context as _, Result};

use crate::lab::{Lab, Netns};

/// The node-side address pods use as their gateway.
pub const POD_GATEWAY: &str = "10.244.1.1";

/// A pod namespace with `ip`/32 on its eth0, reached from `node` through `host_if`.
pub fn pod(lab: &Lab, node: &Netns, name: &str, ip: &str, host_if: &str) -> Result<Netns> {
    pod_via(lab, node, name, ip, POD_GATEWAY, host_if)
}

/// [`pod`] with the node-side gateway address `gw` (each node its own, in multi-node labs).
pub fn pod_via(
    lab: &Lab,
    node: &Netns,
    name: &str,
    ip: &str,
    gw: &str,
    host_if: &str,
) -> Result<Netns> {
    let ns = lab.netns(name)?;
    lab.veth(&ns, "eth0", node, host_if)?;
    ns.sh(&format!(
        "ip addr add {ip}/32 dev eth0 && ip route add {gw} dev eth0 && \
         ip route add default via {gw}"
    ))
    .context("pod addressing")?;
    node.sh(&format!(
        "ip addr add {gw}/32 dev {host_if} && ip route add {ip}/32 dev {host_if}"
    ))
    .context("node route to pod")?;
    Ok(ns)
}

/// An outside client at `client_cidr` on a link to `node`'s `node_if` at `node_cidr`, with TX
/// checksum offload off on the client (XDP sees complete checksums).
pub fn client(
    lab: &Lab,
    node: &Netns,
    node_if: &str,
    node_cidr: &str,
    client_cidr: &str,
) -> Result<Netns> {
    let ns = lab.netns("client")?;
    lab.veth(&ns, "eth0", node, node_if)?;
    ns.add_addr("eth0", client_cidr)?;
    node.add_addr(node_if, node_cidr)?;
    ns.tx_offload_off("eth0")?;
    Ok(ns)
}

pub const AGENT_BIN_ENV: &str = "LB_AGENT_BIN";

/// A forwarding node for BPF_PROG_TEST_RUN fixtures and benchmarks, whose FIB answers from
/// entries it controls: `eth0` 192.0.2.10/24 (a veth; its peer `peer0` stays in the node), the
/// router 192.0.2.1 (for clients in 198.51.100.0/24) and another node 192.0.2.20 (pods in
/// 10.244.2.0/24) with fixed MAC addresses 02:00:00:00:00:99 and 02:00:00:00:00:20.
pub fn fib_node(ns: &Netns) -> Result<()> {
    for cmd in [
        "sysctl -qw net.ipv4.ip_forward=1",
        "ip link add eth0 type veth peer name peer0",
        "ip link set eth0 up",
        "ip link set peer0 up",
        "ip addr add 192.0.2.10/24 dev eth0",
        "ip neigh replace 192.0.2.1 lladdr 02:00:00:00:00:99 nud permanent dev eth0",
        "ip neigh replace 192.0.2.20 lladdr 02:00:00:00:00:20 nud permanent dev eth0",
        "ip route add 198.51.100.0/24 via 192.0.2.1",
        "ip route add 10.244.2.0/24 via 192.0.2.20",
    ] {
        ns.sh(cmd)?;
    }
    Ok(())
}

/// The lb-agent binary: `$LB_AGENT_BIN`, or the one built beside this test executable
/// (`cargo build -p lb-userspace --bins`, which `cargo xtask test` does first).
pub fn agent_bin() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os(AGENT_BIN_ENV) {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe()?;
    for dir in exe.ancestors().skip(1).take(2) {
        let cand = dir.join("lb-agent");
        if cand.is_file() {
            return Ok(cand);
        }
    }
    bail!("lb-agent not built: run `cargo build -p lb-userspace --bins` or set {AGENT_BIN_ENV}")
}

pub const LBCTL_BIN_ENV: &str = "LB_LBCTL_BIN";

/// The lbctl binary: `$LB_LBCTL_BIN`, or the one built beside this test executable
/// (`cargo build -p lb-userspace --bins`, which `cargo xtask test` does first).
pub fn lbctl_bin() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os(LBCTL_BIN_ENV) {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe()?;
    exe.ancestors()
        .skip(1)
        .take(2)
        .map(|dir| dir.join("lbctl"))
        .find(|cand| cand.is_file())
        .with_context(|| {
            format!(
                "lbctl not built: run `cargo build -p lb-userspace --bins` or set {LBCTL_BIN_ENV}"
            )
        })
}

/// A ClusterIP frontend for traffic from pods (`vip:port`), leading to backend set `id` with
/// `backends` (ids already written), rejecting when empty: maps written directly, no agent.
pub fn program_clusterip(
    dp: &mut lb::dataplane::Dataplane,
    id: u32,
    vip: &str,
    proto: u8,
    port: u16,
    backends: &[u32],
) -> Result<()> {
    use lb_common::{Frontend4, Frontend4Key, Service, KIND_CLUSTER_IP, SCOPE_INTERNAL};
    let svc = Service {
        verdict: lb_common::VERDICT_REJECT,
        ..Default::default()
    };
    ServiceMaps::<Ipv4Addr>::set_service(&mut dp.maps, id, &svc, backends, 0)?;
    let vip: Ipv4Addr = vip.parse()?;
    let key = Frontend4Key {
        addr: u32::from_ne_bytes(vip.octets()),
        port: port.to_be(),
        proto,
        scope: SCOPE_INTERNAL,
    };
    let fe = Frontend4 {
        service_id: id,
        stats_id: id,
        kind: KIND_CLUSTER_IP,
        flags: 0,
        _pad: [0; 2],
    };
    ServiceMaps::<Ipv4Addr>::set_frontend(&mut dp.maps, &key, &fe)
}
