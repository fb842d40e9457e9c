//! The kube-proxy rulesets the end-to-end benchmark compares lb with (src/kube_proxy.rs) really
//! balance: loaded into a node namespace with iptables-restore (iptables-nft) and with nft -f,
//! a ClusterIP from a pod and a NodePort from an outside client reach both pods, the ClusterIP
//! keeps the pod's address and the NodePort is masqueraded, as under kube-proxy. The partial
//! syncs the control-plane benchmark times (one endpoint changed) take effect the same way.
//!
//! ```text
//!  client 192.0.2.100 ── eth1 192.0.2.1 ┐ node ┌ h1, h2 ── pod-a 10.244.1.5, pod-b 10.244.1.6
//!                                       │      └ h3 ────── cpod 10.244.1.9 (client pod)
//! ```
use lb_tests::{
    cluster_lab::spread,
    kube_proxy::{self, ServicePort},
    lab::{require_privileged, Lab, Netns},
    topology::{client, pod},
};

const CPOD: &str = "10.244.1.9";
/// The node's address on the pods' links (topology::pod), what masquerading rewrites to.
const NODE_POD_SIDE: &str = "10.244.1.1";

fn services() -> Vec<ServicePort> {
    let endpoint = |ip: &str| format!("{ip}:8080").parse().unwrap();
    let svc = |name: &str, ip: &str, node_port, endpoints: Vec<_>| ServicePort {
        namespace: "shop".into(),
        name: name.into(),
        port_name: "http".into(),
        cluster_ip: ip.parse().unwrap(),
        port: 80,
        node_port,
        endpoints,
    };
    vec![
        // Ahead of the tested one in KUBE-SERVICES, so rule order is exercised too.
        svc(
            "other",
            "10.96.0.9",
            Some(30079),
            vec![endpoint("10.245.0.1")],
        ),
        svc(
            "web",
            "10.96.0.10",
            Some(30080),
            vec![endpoint("10.244.1.5"), endpoint("10.244.1.6")],
        ),
    ]
}

/// Before the change: web's second endpoint is an address nothing answers at.
fn services_before() -> Vec<ServicePort> {
    let mut services = services();
    services[1].endpoints[1] = "10.245.0.2:8080".parse().unwrap();
    services
}

fn node() -> kube_proxy::Node {
    kube_proxy::Node {
        cluster_cidr: "10.244.0.0/16".into(),
        service_cidr: "10.96.0.0/12".into(),
    }
}

struct Topology {
    _servers: Vec<lb_tests::lab::ChildGuard>,
    node: Netns,
    client: Netns,
    cpod: Netns,
    lab: Lab,
}

fn topology(test: &str) -> Topology {
    let lab = Lab::new(test).unwrap();
    lab.set_echo_bin(env!("CARGO_BIN_EXE_lb-echo"));
    let node = lab.netns("node").unwrap();
    node.sysctl("net.ipv4.ip_forward", "1").unwrap();
    let mut servers = Vec::new();
    for (name, ip, host_if) in [("pod-a", "10.244.1.5", "h1"), ("pod-b", "10.244.1.6", "h2")] {
        let ns = pod(&lab, &node, name, ip, host_if).unwrap();
        servers.push(ns.serve_echo(name, 8080, false).unwrap());
    }
    let cpod = pod(&lab, &node, "cpod", CPOD, "h3").unwrap();
    let client = client(&lab, &node, "eth1", "192.0.2.1/24", "192.0.2.100/24").unwrap();
    Topology {
        _servers: servers,
        node,
        client,
        cpod,
        lab,
    }
}

fn check_balancing(test: &str, load: impl Fn(&Topology, &std::path::Path)) {
    if !require_privileged(test) {
        return;
    }
    let t = topology(test);
    let node = node();
    let dir = t.lab.log_dir().to_path_buf();
    std::fs::write(
        dir.join("rules.iptables"),
        kube_proxy::iptables_restore(&services(), &node),
    )
    .unwrap();
    std::fs::write(
        dir.join("rules.nft"),
        kube_proxy::nft_script(&services(), &node),
    )
    .unwrap();
    load(&t, &dir);

    let pods = ["pod-a", "pod-b"];
    for r in spread(&t.cpod, "10.96.0.10:80".parse().unwrap(), false, &pods) {
        assert_eq!(
            r.peer.ip().to_string(),
            CPOD,
            "ClusterIP from a pod: not masqueraded"
        );
    }
    for r in spread(&t.client, "192.0.2.1:30080".parse().unwrap(), false, &pods) {
        assert_eq!(
            r.peer.ip().to_string(),
            NODE_POD_SIDE,
            "NodePort: masqueraded"
        );
    }
}

#[test]
fn iptables_ruleset_balances_clusterip_and_nodeport() {
    check_balancing("kube_proxy_rules::iptables", |t, dir| {
        let file = dir.join("rules.iptables");
        t.node.exec("iptables-restore", [&file]).unwrap();
    });
}

#[test]
fn nftables_ruleset_balances_clusterip_and_nodeport() {
    check_balancing("kube_proxy_rules::nftables", |t, dir| {
        let file = dir.join("rules.nft");
        t.node
            .exec("nft", ["-f".as_ref(), file.as_os_str()])
            .unwrap();
    });
}

/// kube-proxy's iptables partial sync: web's endpoint moves with one `iptables-restore
/// --noflush` that rewrites KUBE-SERVICES (not duplicating it) and web's chains only.
#[test]
fn iptables_partial_sync_moves_an_endpoint() {
    check_balancing("kube_proxy_rules::iptables_partial", |t, dir| {
        let before = dir.join("before.iptables");
        std::fs::write(
            &before,
            kube_proxy::iptables_restore(&services_before(), &node()),
        )
        .unwrap();
        t.node.exec("iptables-restore", [&before]).unwrap();
        let partial = dir.join("partial.iptables");
        let web_only = |s: &ServicePort| s.name == "web";
        std::fs::write(
            &partial,
            kube_proxy::iptables_partial(&services(), &node(), &web_only),
        )
        .unwrap();
        let noflush = ["--noflush".as_ref(), partial.as_os_str()];
        t.node.exec("iptables-restore", noflush).unwrap();
        let saved = t.node.run("iptables-save -t nat").unwrap();
        let services = saved.lines().filter(|l| l.starts_with("-A KUBE-SERVICES "));
        assert_eq!(
            services.count(),
            3,
            "two ClusterIPs and the NodePort tail:\n{saved}"
        );
    });
}

/// kube-proxy's nftables partial sync: web's endpoint moves with one `nft -f` transaction.
#[test]
fn nftables_partial_sync_moves_an_endpoint() {
    check_balancing("kube_proxy_rules::nftables_partial", |t, dir| {
        let before = dir.join("before.nft");
        std::fs::write(&before, kube_proxy::nft_script(&services_before(), &node())).unwrap();
        t.node
            .exec("nft", ["-f".as_ref(), before.as_os_str()])
            .unwrap();
        let partial = dir.join("partial.nft");
        let removed = services_before()[1].endpoints[1];
        let text = kube_proxy::nft_endpoints_changed(&services()[1], &[removed], &node());
        std::fs::write(&partial, text).unwrap();
        t.node
            .exec("nft", ["-f".as_ref(), partial.as_os_str()])
            .unwrap();
    });
}
