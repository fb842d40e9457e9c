//! The demo behind `cargo xtask demo`: a node with three pods and an outside client in network
//! namespaces, lb-agent in manifests mode on the given directory, and requests to the ClusterIP
//! (from a pod) and to the NodePort (from the client) showing which pod answered.
use std::{collections::BTreeMap, net::SocketAddr, path::PathBuf, time::Duration};

use anyhow::{bail, Context as _, Result};
use lb_tests::{
    lab::{poll_until, Lab, Netns},
    topology::{agent_bin, client, lbctl_bin, pod},
};

const NODE_NAME: &str = "demo-node";
const PODS: [(&str, &str, &str); 3] = [
    ("pod-a", "10.244.1.11", "veth-a"),
    ("pod-b", "10.244.1.12", "veth-b"),
    ("pod-c", "10.244.1.13", "veth-c"),
];
const CLUSTER_IP: &str = "10.96.0.10:80";
const NODE_PORT: &str = "192.0.2.1:30080";
/// New connections per path at least, and at most: enough that every pod answers (the chance
/// that one of three is never picked in 100 random choices is 3·(2/3)^100, about 10^-17).
const REQUESTS: usize = 12;
const MAX_REQUESTS: usize = 100;

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let manifests = PathBuf::from(
        args.next()
            .context("usage: lb-demo MANIFEST_DIR [--keep]")?,
    );
    let keep = args.any(|a| a == "--keep");
    if unsafe { libc::geteuid() } != 0 {
        bail!("the demo creates network namespaces and loads BPF programs: run it as root");
    }
    let lab = Lab::new("demo")?;
    let node = lab.netns("node")?;
    node.sysctl("net.ipv4.ip_forward", "1")?;
    let mut pods = Vec::new();
    let mut servers = Vec::new();
    for (name, ip, host_if) in PODS {
        let ns = pod(&lab, &node, name, ip, host_if)?;
        servers.push(ns.serve_echo(name, 8080, false)?);
        servers.push(ns.serve_echo(name, 8080, true)?);
        pods.push(ns);
    }
    let outside = client(&lab, &node, "eth0", "192.0.2.1/24", "192.0.2.100/24")?;
    println!(
        "lab: node {} (eth0 192.0.2.1), pods {}, client {} (192.0.2.100)",
        node.name(),
        PODS.map(|p| format!("{} {}", p.0, p.1)).join(", "),
        outside.name()
    );

    let pin = lab.pin_path("node");
    let agent_args = [
        "run",
        "--node-name",
        NODE_NAME,
        "--manifests",
        manifests.to_str().context("manifest path")?,
        "--ext-iface",
        "eth0",
        "--pod-iface",
        "veth-*",
        "--pin-path",
        pin.to_str().context("pin path")?,
    ];
    let agent = node.spawn("lb-agent", agent_bin()?, agent_args)?;
    println!("lb-agent {} (pid {})\n", agent_args.join(" "), agent.pid());

    let cluster_ip: SocketAddr = CLUSTER_IP.parse()?;
    let ready = poll_until(Duration::from_secs(10), || {
        pods[0]
            .request(cluster_ip, false, Duration::from_millis(300))
            .ok()
    });
    if ready.is_none() {
        bail!(
            "the ClusterIP never answered; lb-agent said:\n{}",
            agent.stderr()
        );
    }
    show(&pods[0], "pod-a → ClusterIP", cluster_ip, false)?;
    show(
        &pods[1],
        "pod-b → ClusterIP (UDP)",
        "10.96.0.10:53".parse()?,
        true,
    )?;
    show(&outside, "client → NodePort", NODE_PORT.parse()?, false)?;

    let pin_arg = pin.to_str().context("pin path")?;
    let table = node.exec(lbctl_bin()?, ["--pin-path", pin_arg, "services"])?;
    println!("\n$ lbctl --pin-path {pin_arg} services");
    print!("{}", String::from_utf8_lossy(&table.stdout));
    println!("\nlb-agent log:\n{}", agent.stderr().trim_end());
    if keep {
        lab.keep();
        std::mem::forget(agent);
        std::mem::forget(servers);
        println!(
            "\nkept: try `ip netns exec {} curl`-style requests, edit {}, then remove with \
             `lb-agent cleanup --pin-path {}` and `ip netns del` of {:?}",
            outside.name(),
            manifests.display(),
            pin.display(),
            lab.namespaces()
        );
    }
    Ok(())
}

/// Send new connections until every pod has answered (at least REQUESTS of them) and print how
/// they spread over the pods; fail when a pod never answers, as the README promises they all do.
fn show(from: &Netns, what: &str, to: SocketAddr, udp: bool) -> Result<()> {
    let mut by_pod: BTreeMap<String, usize> = BTreeMap::new();
    let mut sent = 0;
    while sent < REQUESTS || (by_pod.len() < PODS.len() && sent < MAX_REQUESTS) {
        let reply = from
            .request(to, udp, Duration::from_secs(2))
            .map_err(|e| anyhow::anyhow!("{what} {to}: {e:?}"))?;
        *by_pod.entry(reply.name).or_default() += 1;
        sent += 1;
    }
    let spread: Vec<String> = by_pod.iter().map(|(p, n)| format!("{p} ×{n}")).collect();
    println!(
        "{what} {to}: {sent} new connections answered by {}",
        spread.join(", ")
    );
    let silent: Vec<&str> = PODS
        .iter()
        .map(|p| p.0)
        .filter(|p| !by_pod.contains_key(*p))
        .collect();
    if !silent.is_empty() {
        bail!("{what} {to}: {silent:?} never answered in {sent} new connections");
    }
    Ok(())
}
